"""Tests for :mod:`bitfitech.api.metrics` and the latency measured by :class:`ApiSite`.

Data path under test: real nodes in one reactor (:class:`LocalCluster`) ->
:class:`NodeCollector` at scrape time -> :class:`MetricsResource` -> the
text format, parsed back with ``prometheus_client.parser`` and checked
against the nodes' own state; and HTTP requests -> :class:`ApiSite` ->
the latency histogram (over a fake clock, then over a real node's API).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyRequest

from bitfitech.api.metrics import (
    API_LATENCY_BUCKETS,
    MetricsResource,
    api_latency,
    node_registry,
    observe_request,
)
from bitfitech.api.site import ApiSite
from bitfitech.interfaces import ServiceUnavailable
from bitfitech.node import Node, build_node
from bitfitech.testing import HANG_GUARD, ClusterTestCase, loopback_config, market_state, poll_until

#: seconds a test may wait for nodes to link up or converge (a hang guard)
DEADLINE = HANG_GUARD
#: the markets of the nodes under test (a node's first market is BTC/USD)
BTC, ETH = "BTC/USD", "ETH/USD"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[dict[str, Any], Samples]:
    """Families by name, and every sample's value by ``(sample name, sorted labels)``."""
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples: Samples = {}
    for family in families.values():
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families, samples


def scrape(registry: CollectorRegistry | None) -> tuple[DummyRequest, str]:
    """Render ``GET /metrics`` of C{registry} (a node's) through a resource tree."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    request = DummyRequest([b"metrics"])
    request.method = b"GET"
    resource = root.getChildWithDefault(b"metrics", request)
    body = resource.render(request)
    assert isinstance(body, bytes)
    return request, body.decode("utf-8")


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample (fails the test if absent)."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        raise AssertionError(f"no sample {name}{labels} among {sorted(samples)}")
    return samples[key]


class NodeMetricsTests(ClusterTestCase):
    """``/metrics`` of real nodes in one process says what the nodes hold."""

    timeout = 120

    async def trading_pair(self) -> tuple[Node, Node]:
        """Two linked nodes; a sell of the first and a buy of the second crossed (one trade)."""
        first = self.cluster.start_node()
        second = self.cluster.start_node(bootstrap_to=[first])
        first_id = first.storage.identity.node_id
        await poll_until(self.reactor, lambda: first_id in second.peers.hub.links, DEADLINE,
                         "the nodes link")  # fmt: skip
        await first.control.submit_order("sell", "50000", "0.5", "limit")
        await poll_until(self.reactor, lambda: len(second.market.ledger) == 1, DEADLINE,
                         "the second node holds the sell")  # fmt: skip
        await second.control.submit_order("buy", "50000", "0.2", "limit")
        await poll_until(self.reactor,
                         lambda: market_state(second) == market_state(first), DEADLINE,
                         "the second node holds both orders")  # fmt: skip
        return first, second

    async def test_values_match_the_node(self) -> None:
        first, second = await self.trading_pair()
        for node in (first, second):
            request, text = scrape(node.metrics)
            self.assertEqual(
                request.responseHeaders.getRawHeaders(b"content-type"),
                [CONTENT_TYPE_LATEST.encode("ascii")],
            )
            families, samples = parse(text)
            node.market.flush()
            ledger, hub = node.market.ledger, node.peers.hub
            self.assertEqual(value(samples, "bitfi_up"), 1)
            info = value(samples, "bitfi_node_info", node_id=node.storage.identity.node_id,
                         network="test", pair=BTC, markets=BTC,
                         version=node.control.status()["version"], tls="true")  # fmt: skip
            self.assertEqual(info, 1)
            for direction in ("inbound", "outbound"):
                self.assertEqual(value(samples, "bitfi_peers", direction=direction),
                                 hub.ready_count(direction), direction)  # fmt: skip
            self.assertEqual(value(samples, "bitfi_events", market=BTC), len(ledger))
            self.assertEqual(value(samples, "bitfi_events", market=BTC), 2)
            self.assertEqual(value(samples, "bitfi_authors", market=BTC), 2)
            self.assertEqual(value(samples, "bitfi_orders_total", market=BTC), 2)
            self.assertEqual(value(samples, "bitfi_cancels_total", market=BTC), 0)
            self.assertEqual(value(samples, "bitfi_trades_total", market=BTC), 1)
            self.assertEqual(value(samples, "bitfi_trades_total", market=BTC), ledger.trade_count)
            self.assertEqual(value(samples, "bitfi_open_orders", market=BTC), 1)
            self.assertEqual(value(samples, "bitfi_rollbacks_total", market=BTC), ledger.rollbacks)
            self.assertEqual(
                value(samples, "bitfi_replayed_events_total", market=BTC), ledger.replayed
            )
            self.assertEqual(value(samples, "bitfi_sync_buffered_events", market=BTC), 0)
            self.assertEqual(value(samples, "bitfi_bans"), 0)
            self.assertEqual(value(samples, "bitfi_journal_writable", market=BTC), 1)
            self.assertEqual(value(samples, "bitfi_peer_addresses_known"),
                             len(node.peers.addrbook or ()))  # fmt: skip
            self.assertEqual(value(samples, "bitfi_gossip_events_duplicate_total", market=BTC),
                             node.gossip.stats["events_duplicate"])  # fmt: skip
            self.assertEqual(value(samples, "bitfi_discovery_running", service="mdns"), 0)
            self.assertEqual(value(samples, "bitfi_discovery_running", service="dht"), 0)
            self.assertNotIn("bitfi_dht_routing_table_size", families)
            self.assertEqual(families["bitfi_orders"].type, "counter")
            self.assertIn("rate(bitfi_orders_total", families["bitfi_orders"].documentation)
            self.assertEqual(families["bitfi_peers"].type, "gauge")
            # Author-clock order: settled by Lamport time, nothing of the fair order.
            self.assertEqual(value(samples, "bitfi_witnesses", market=BTC), 0)
            self.assertEqual(value(samples, "bitfi_settled_through_lamport", market=BTC),
                             ledger.settled_through)  # fmt: skip
            fair = [name for name in families if name.startswith(("bitfi_fair_", "bitfi_stamps",
                                                                  "bitfi_witness_"))]  # fmt: skip
            self.assertEqual(fair, [])
        # A database that refuses writes: orders are refused, and the gauge says so.
        first.storage.connection.execute("PRAGMA query_only = 1")
        self.addCleanup(first.storage.connection.execute, "PRAGMA query_only = 0")
        with self.assertRaises(ServiceUnavailable):
            await first.market.submit("buy", "100", "1", "limit")
        _, samples = parse(scrape(first.metrics)[1])
        self.assertEqual(value(samples, "bitfi_journal_writable", market=BTC), 0)
        # What each node learned from the other, it learned by gossip.
        for node in (first, second):
            _, samples = parse(scrape(node.metrics)[1])
            self.assertEqual(value(samples, "bitfi_gossip_events_new_total", market=BTC), 1)
        self.assertEqual(value(samples, "bitfi_peers", direction="outbound"), 1)

    async def test_fair_order(self) -> None:
        """
        A network of one witness and a plain node: the fair order's gauges
        say what ``GET /status`` says, per witness too, once a trade is final.
        """
        [address] = self.cluster.witness_addresses(1)
        witness = self.cluster.start_node(port=address.port, witnesses=(address,))
        plain = self.cluster.start_node(witnesses=(address,))
        await poll_until(self.reactor, lambda: address.node_id in plain.peers.hub.links,
                         DEADLINE, "the link to the witness")  # fmt: skip
        await witness.control.submit_order("sell", "50000", "0.5", "limit")
        await poll_until(self.reactor, lambda: len(plain.market.ledger) == 1, DEADLINE,
                         "the sell at the plain node")  # fmt: skip
        await plain.control.submit_order("buy", "50000", "0.2", "limit")

        def final(node: Node) -> bool:
            trades = node.control.trades(1, 0)
            return bool(trades) and trades[0]["status"] == "final"

        await poll_until(self.reactor, lambda: final(plain) and final(witness), DEADLINE,
                         "the trade final on both nodes")  # fmt: skip
        for node, me in ((plain, False), (witness, True)):
            # Stamps keep coming: the scrape and the status, read in one reactor
            # turn, agree.
            families, samples = parse(scrape(node.metrics)[1])
            status = node.control.status()["witnesses"]
            self.assertEqual(value(samples, "bitfi_witnesses", market=BTC), 1)
            self.assertEqual(value(samples, "bitfi_witness_faults_tolerated", market=BTC), 0)
            self.assertNotIn("bitfi_settled_through_lamport", families)
            for name in ("settled_events", "final_events", "waiting_events"):
                self.assertEqual(
                    value(samples, f"bitfi_fair_{name}", market=BTC), status[name], name
                )
            self.assertEqual(value(samples, "bitfi_fair_final_events", market=BTC), 2)
            for name in ("settled_through_ms", "final_through_ms"):
                self.assertEqual(
                    value(samples, f"bitfi_fair_{name}", market=BTC), status[name], name
                )
            self.assertEqual(value(samples, "bitfi_stamps", market=BTC), status["stamps"])
            self.assertEqual(
                value(samples, "bitfi_stamps_signed_total", market=BTC), status["stamps_signed"]
            )
            self.assertEqual(
                value(samples, "bitfi_stamps_relisted_total", market=BTC), status["relisted"]
            )
            self.assertEqual(status["stamps_signed"] > 0, me)
            self.assertEqual(value(samples, "bitfi_witnesses_flagged", market=BTC), 0)
            self.assertEqual(value(samples, "bitfi_witness_revisions_total", market=BTC), 0)
            [chain] = status["chains"]
            label = {"market": BTC, "witness": str(address.node_id)}
            self.assertEqual(value(samples, "bitfi_witness_stamps", **label), chain["seq"])
            self.assertEqual(value(samples, "bitfi_witness_stamps_waiting", **label), 0)
            self.assertEqual(value(samples, "bitfi_witness_flagged", **label), 0)
            self.assertEqual(value(samples, "bitfi_witness_last_stamp_ms", **label), chain["t"])
            if me:  # its own chain: no stamp of it ever arrives
                self.assertEqual(families["bitfi_witness_lag_ms"].samples, [])
            else:
                self.assertEqual(value(samples, "bitfi_witness_lag_ms", **label), chain["lag_ms"])
            self.assertEqual(families["bitfi_stamps_signed"].type, "counter")
            self.assertIn("time() * 1000", families["bitfi_fair_final_through_ms"].documentation)
        self.assertGreater(value(samples, "bitfi_gossip_stamps_sent_total", market=BTC), 0)
        self.assertNotIn("Gossip counter", families["bitfi_gossip_stamps_new"].documentation)

    async def test_counts_follow_the_node(self) -> None:
        first, second = await self.trading_pair()
        order = await first.control.submit_order("buy", "40000", "0.1", "limit")
        await first.control.cancel_order(order["id"])
        await poll_until(self.reactor,
                         lambda: market_state(second) == market_state(first), DEADLINE,
                         "the second node holds the cancel")  # fmt: skip
        _, samples = parse(scrape(second.metrics)[1])
        self.assertEqual(value(samples, "bitfi_events", market=BTC), 4)
        self.assertEqual(value(samples, "bitfi_orders_total", market=BTC), 3)
        self.assertEqual(value(samples, "bitfi_cancels_total", market=BTC), 1)
        self.assertEqual(value(samples, "bitfi_open_orders", market=BTC), 1)

    async def test_two_markets(self) -> None:
        """
        Nodes of two markets, a trade in one of them: every family of a
        market has one sample per market, labelled ``market``, in the
        node's order, each with its own market's figures; the node's own
        families have no ``market`` label; the exposition parses, each
        family in it once.
        """
        first = self.cluster.start_node(markets=(BTC, ETH))
        second = self.cluster.start_node(markets=(BTC, ETH), bootstrap_to=[first])
        first_id = first.storage.identity.node_id
        await poll_until(self.reactor, lambda: first_id in second.peers.hub.links, DEADLINE,
                         "the nodes link")  # fmt: skip
        await first.control.by_name[ETH].submit_order("sell", "3000", "0.5", "limit")
        await poll_until(self.reactor, lambda: len(second.markets[ETH].ledger) == 1, DEADLINE,
                         "the second node holds the sell")  # fmt: skip
        await second.control.by_name[ETH].submit_order("buy", "3000", "0.2", "limit")
        await poll_until(self.reactor,
                         lambda: market_state(second, ETH) == market_state(first, ETH), DEADLINE,
                         "the first node holds the buy")  # fmt: skip
        _, text = scrape(second.metrics)
        families, samples = parse(text)

        node_wide = ("bitfi_up", "bitfi_node", "bitfi_uptime", "bitfi_peer", "bitfi_bans",
                     "bitfi_discovery", "bitfi_mdns", "bitfi_dht", "bitfi_api")  # fmt: skip
        types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
        self.assertEqual(len(types), len(families))
        self.assertEqual(len(set(types)), len(types))
        by_market = set()
        for name, family in families.items():
            labels = [sample.labels.get("market") for sample in family.samples]
            if name.startswith(node_wide):
                self.assertEqual(set(labels) - {None}, set(), name)
            else:
                self.assertEqual(labels, [BTC, ETH], name)
                by_market.add(name)
        self.assertLessEqual(
            {"bitfi_events", "bitfi_authors", "bitfi_lamport_clock", "bitfi_orders",
             "bitfi_trades", "bitfi_open_orders", "bitfi_journal_writable", "bitfi_witnesses",
             "bitfi_sync_gap_authors", "bitfi_sync_requests_in_flight",
             "bitfi_gossip_events_new", "bitfi_gossip_stamps_sent"},
            by_market,
        )  # fmt: skip
        self.assertEqual(families["bitfi_orders"].type, "counter")
        self.assertEqual(families["bitfi_open_orders"].type, "gauge")
        [info] = families["bitfi_node_info"].samples
        self.assertEqual((info.labels["pair"], info.labels["markets"]), (BTC, f"{BTC},{ETH}"))

        # Each market's own figures: the trade is ETH/USD's; BTC/USD holds nothing.
        expected = {
            "bitfi_events": (0, 2),
            "bitfi_authors": (0, 2),
            "bitfi_orders_total": (0, 2),
            "bitfi_cancels_total": (0, 0),
            "bitfi_trades_total": (0, 1),
            "bitfi_open_orders": (0, 1),
            "bitfi_gossip_events_new_total": (0, 1),
        }
        for name, figures in expected.items():
            self.assertEqual((value(samples, name, market=BTC), value(samples, name, market=ETH)),
                             figures, name)  # fmt: skip
        for pair in (BTC, ETH):
            market, gossip = second.markets[pair], second.gossips[pair]
            self.assertEqual(value(samples, "bitfi_lamport_clock", market=pair),
                             market.ledger.lamport, pair)  # fmt: skip
            self.assertEqual(value(samples, "bitfi_journal_writes_total", market=pair),
                             market.journal_writes, pair)  # fmt: skip
            self.assertEqual(value(samples, "bitfi_gossip_events_received_total", market=pair),
                             gossip.stats["events_received"], pair)  # fmt: skip
            self.assertEqual(value(samples, "bitfi_gossip_sync_sent_total", market=pair),
                             gossip.stats["sync_sent"], pair)  # fmt: skip
        self.assertNotEqual(second.markets[BTC].journal_writes,
                            second.markets[ETH].journal_writes)  # fmt: skip

        # An order in BTC/USD only: its figures move, ETH/USD's stay.
        await second.control.by_name[BTC].submit_order("buy", "40000", "0.1", "limit")
        _, samples = parse(scrape(second.metrics)[1])
        for name, figures in {
            "bitfi_orders_total": (1, 2),
            "bitfi_open_orders": (1, 1),
            "bitfi_events": (1, 2),
            "bitfi_trades_total": (0, 1),
        }.items():
            self.assertEqual((value(samples, name, market=BTC), value(samples, name, market=ETH)),
                             figures, name)  # fmt: skip

    async def test_markets_in_the_node_order(self) -> None:
        """The samples come in the node's order of markets; ``pair`` is its first."""
        node = self.cluster.start_node(markets=(ETH, BTC))
        families, _ = parse(scrape(node.metrics)[1])
        for name in ("bitfi_events", "bitfi_orders", "bitfi_gossip_events_new"):
            labels = [sample.labels["market"] for sample in families[name].samples]
            self.assertEqual(labels, [ETH, BTC], name)
        [info] = families["bitfi_node_info"].samples
        self.assertEqual((info.labels["pair"], info.labels["markets"]), (ETH, f"{ETH},{BTC}"))

    async def test_each_node_has_its_own_registry(self) -> None:
        first, second = await self.trading_pair()
        self.assertIsNot(first.metrics, second.metrics)
        ids = set()
        for node in (first, second):
            families, _ = parse(scrape(node.metrics)[1])
            [sample] = families["bitfi_node_info"].samples
            ids.add(sample.labels["node_id"])
        self.assertEqual(ids, {n.storage.identity.node_id for n in (first, second)})
        self.assertNotIn(b"bitfi_", generate_latest(REGISTRY))

    async def test_discovery(self) -> None:
        node = self.cluster.start_node(dht_enabled=True)
        _, samples = parse(scrape(node.metrics)[1])
        self.assertEqual(value(samples, "bitfi_discovery_running", service="dht"), 1)
        self.assertEqual(value(samples, "bitfi_dht_routing_table_size", family="ipv4"),
                         node.control.status()["dht"]["routing_table_size"])  # fmt: skip
        self.assertEqual(value(samples, "bitfi_dht_peers_found_total"), 0)

    async def test_api_latency_of_a_real_node(self) -> None:
        node = self.cluster.start_node(api_enabled=True)
        assert node.api is not None
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        agent = Agent(self.reactor, pool=pool)
        base = f"http://127.0.0.1:{node.api.listen_port}"
        for path in ("/status", "/status", "/no/such/thing"):
            response = await agent.request(b"GET", (base + path).encode("ascii"))
            await readBody(response)
        _, samples = parse(scrape(node.metrics)[1])
        count = "bitfi_api_request_duration_seconds_count"
        self.assertEqual(value(samples, count, method="GET", status="2xx"), 2)
        self.assertEqual(value(samples, count, method="GET", status="4xx"), 1)


class StoppedNodeTests(SynchronousTestCase):
    """A node that does not run reports only that."""

    def test_not_running(self) -> None:
        node = build_node(loopback_config(self.mktemp()), Clock())  # type: ignore[arg-type]
        _, samples = parse(scrape(node.metrics)[1])
        self.assertEqual(samples, {("bitfi_up", ()): 0.0})

    def test_fake_node_has_no_metrics(self) -> None:
        request, text = scrape(None)
        self.assertEqual(request.responseCode, 404)

    def test_the_site_serves_the_node_registry(self) -> None:
        node = build_node(loopback_config(self.mktemp()), Clock())  # type: ignore[arg-type]
        assert node.api is not None
        metrics = node.api.root.getStaticEntity(b"metrics")
        self.assertIsInstance(metrics, MetricsResource)
        self.assertIs(metrics.registry, node.metrics)
        self.assertIs(node.api.site.latency, api_latency(node.metrics))
        self.assertIs(api_latency(node.metrics), api_latency(node.metrics))
        self.assertIsNot(
            node_registry(node.control.status, node.markets.by_name, node.gossips), node.metrics
        )


class _Slow(Resource):
    """Answers after C{delay} seconds of C{clock}, with C{code}."""

    isLeaf = True

    def __init__(self, clock: Clock, delay: float, code: int = 200) -> None:
        super().__init__()
        self.clock, self.delay, self.code = clock, delay, code

    def render(self, request: Request) -> Any:
        def answer() -> None:
            request.setResponseCode(self.code)
            request.write(b"done")
            request.finish()

        if not self.delay:
            request.setResponseCode(self.code)
            return b"done"
        self.clock.callLater(self.delay, answer)
        return NOT_DONE_YET


class SiteLatencyTests(SynchronousTestCase):
    """:class:`ApiSite` observes each answered request in the registry's histogram."""

    CLIENT = IPv4Address("TCP", "127.0.0.1", 50000)

    def make_site(self, registry: CollectorRegistry | None) -> tuple[ApiSite, Clock]:
        clock = Clock()
        root = Resource()
        root.putChild(b"slow", _Slow(clock, 0.03))
        root.putChild(b"fast", _Slow(clock, 0))
        root.putChild(b"gone", _Slow(clock, 0.2, code=503))
        site = ApiSite(root, reactor=clock, registry=registry)
        site.startFactory()
        self.addCleanup(site.stopFactory)
        return site, clock

    def request(
        self, site: ApiSite, clock: Clock, method: bytes, path: bytes, wait: float = 0.0
    ) -> bytes:
        """Send one request, let C{wait} seconds pass, and return what the site wrote."""
        channel = site.buildProtocol(self.CLIENT)
        assert channel is not None
        transport = StringTransport(peerAddress=self.CLIENT)
        channel.makeConnection(transport)
        channel.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        clock.advance(wait)
        channel.connectionLost(Exception("done"))  # type: ignore[arg-type]
        written: bytes = transport.value()
        return written

    def test_latency_by_method_and_status_class(self) -> None:
        registry = CollectorRegistry()
        site, clock = self.make_site(registry)
        self.assertIn(b"200 OK", self.request(site, clock, b"GET", b"/slow", 0.03))
        self.request(site, clock, b"GET", b"/fast")
        self.request(site, clock, b"POST", b"/gone", 0.2)
        self.request(site, clock, b"GET", b"/missing")
        self.request(site, clock, b"BREW", b"/fast")
        _, samples = parse(generate_latest(registry).decode("utf-8"))
        name = "bitfi_api_request_duration_seconds"
        self.assertEqual(value(samples, f"{name}_count", method="GET", status="2xx"), 2)
        self.assertAlmostEqual(value(samples, f"{name}_sum", method="GET", status="2xx"), 0.03)
        self.assertEqual(value(samples, f"{name}_bucket", method="GET", status="2xx", le="0.025"),
                         1)  # fmt: skip
        self.assertEqual(value(samples, f"{name}_bucket", method="GET", status="2xx", le="0.05"), 2)
        self.assertEqual(value(samples, f"{name}_count", method="POST", status="5xx"), 1)
        self.assertAlmostEqual(value(samples, f"{name}_sum", method="POST", status="5xx"), 0.2)
        self.assertEqual(value(samples, f"{name}_count", method="GET", status="4xx"), 1)
        self.assertEqual(value(samples, f"{name}_count", method="other", status="2xx"), 1)
        buckets = {key[1] for key in samples if key[0] == f"{name}_bucket"}
        self.assertEqual(len(buckets), 4 * (len(API_LATENCY_BUCKETS) + 1))

    def test_restarted_site_shares_the_histogram(self) -> None:
        registry = CollectorRegistry()
        for _ in range(2):
            site, clock = self.make_site(registry)
            self.request(site, clock, b"GET", b"/fast")
        _, samples = parse(generate_latest(registry).decode("utf-8"))
        count = value(samples, "bitfi_api_request_duration_seconds_count",
                      method="GET", status="2xx")  # fmt: skip
        self.assertEqual(count, 2)

    def test_without_registry(self) -> None:
        site, clock = self.make_site(None)
        self.assertIsNone(site.latency)
        self.assertIn(b"200 OK", self.request(site, clock, b"GET", b"/slow", 0.03))

    def test_observe_request(self) -> None:
        registry = CollectorRegistry()
        histogram = api_latency(registry)
        observe_request(histogram, "delete", 204, -1.0)
        observe_request(histogram, "GET", 999, 0.5)
        _, samples = parse(generate_latest(registry).decode("utf-8"))
        name = "bitfi_api_request_duration_seconds"
        self.assertEqual(value(samples, f"{name}_sum", method="DELETE", status="2xx"), 0)
        self.assertEqual(value(samples, f"{name}_count", method="GET", status="other"), 1)
