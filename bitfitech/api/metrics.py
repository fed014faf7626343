"""``GET /metrics``: a node's state in the Prometheus text format.

Data path: the node's parts (peer hub, markets, gossip, DHT, mDNS) keep their
own counters -> at each scrape :class:`NodeCollector` reads the node's own
through the API's view of the node
(:meth:`~bitfitech.api.control.NodeControl.status`, the numbers of ``GET
/status``), and each market's from that market's service, ledger and gossip
-> the registry -> :class:`MetricsResource` renders it with
:func:`prometheus_client.exposition.generate_latest`.  Nothing is counted
twice and nothing runs between scrapes, except what the API's site keeps
itself: the request latency, which :class:`~bitfitech.api.site.ApiSite`
observes as requests finish into the histogram of :func:`api_latency`, and
its connections (open, refused at the cap, timed out, bodies refused), in
the metrics of :func:`api_connections`.

Every node has its own :class:`~prometheus_client.CollectorRegistry` (made
by :func:`node_registry` from what it measures), never
``prometheus_client.REGISTRY``: several nodes run in one process in tests
and in ``tac/local-cluster.tac``.

Every family of a market (its book, ledger, journal, fair order and gossip)
has one sample per market the node carries, in the node's order, labelled
``market`` with the pair (``market="BTC/USD"``); the node's own families
(peers, discovery, the API) have no such label.

Counters are totals since the node started (``_total``); rates, such as
orders or trades per second, are PromQL's job: ``rate(bitfi_orders_total[1m])``
(``sum(rate(bitfi_orders_total[1m]))`` for every market).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from twisted.web.resource import Resource
from twisted.web.server import Request

from ..gossip import Gossip
from ..interfaces import ServiceUnavailable
from ..market.ledger import Ledger
from ..market.service import MarketService

#: upper bounds of the API latency buckets, in seconds (an order waits for
#: its journal's group commit: milliseconds)
API_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: HTTP methods kept as label values; any other is counted as ``other``
API_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: gossip counter -> HELP text (``bitfi_gossip_<counter>_total``)
GOSSIP_HELP: Mapping[str, str] = {
    "events_received": "Events received from peers, new or not (pushed, fetched or synced).",
    "events_new": "Events received from peers that were new to this node.",
    "events_duplicate": "Events received from peers that this node held already "
    "(duplicate copies).",
    "events_invalid": "Events received from peers that were malformed or badly signed.",
    "events_rate_limited": "Events from peers refused by the per-author rate limit.",
    "events_pushed": "Events pushed to peers in full.",
    "prunes_sent": "Links made lazy because a peer pushed an event already held (prune).",
    "inv_sent": "Event ids announced to peers (inv).",
    "inv_received": "Event ids announced by peers (inv).",
    "getdata_sent": "Event ids asked of peers (getdata).",
    "sync_sent": "Anti-entropy summaries sent to peers.",
    "sync_received": "Anti-entropy summaries received from peers.",
    "sync_events_sent": "Events sent to peers in answer to their anti-entropy summaries.",
    "requests_expired": "Requests for events (getdata) not answered in time.",
    "requests_dropped": "Requests for events given up (no other peer to ask).",
    "stamps_received": "Witness stamps received from peers, new or not.",
    "stamps_new": "Witness stamps received from peers that were new to this node.",
    "stamps_duplicate": "Witness stamps received from peers that this node held already.",
    "stamps_invalid": "Witness stamps received from peers that were malformed or badly signed.",
    "stamps_sent": "Witness stamps sent to peers.",
}
#: gossip summary entries that are not counters
_GOSSIP_NOT_COUNTERS = frozenset({"requests_in_flight", "fanout"})


def node_registry(
    status: Callable[[], Mapping[str, Any]],
    markets: Mapping[str, MarketService],
    gossips: Mapping[str, Gossip],
) -> CollectorRegistry:
    """
    A new registry of one node: its :class:`NodeCollector`, the API latency
    histogram (:func:`api_latency`) and the API's connection metrics
    (:func:`api_connections`).  Building it opens nothing.

    :param status: the node's status (``GET /status``), read at each scrape.
    :param markets: the node's markets' services, by pair, in the node's
        order; each is read at each scrape.
    :param gossips: each market's gossip layer, by pair.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(status, markets, gossips))
    api_latency(registry)
    api_connections(registry)
    return registry


_latency: weakref.WeakKeyDictionary[CollectorRegistry, Histogram] = weakref.WeakKeyDictionary()


def api_latency(registry: CollectorRegistry) -> Histogram:
    """
    The histogram ``bitfi_api_request_duration_seconds`` of C{registry},
    made on first use (the API's site is made anew at each start, its
    histogram once).
    """
    histogram = _latency.get(registry)
    if histogram is None:
        histogram = _latency[registry] = Histogram(
            "bitfi_api_request_duration_seconds",
            "HTTP API requests answered, by method and status class (2xx, 4xx...), and the "
            "seconds from the request's arrival to its last byte.",
            labelnames=("method", "status"),
            buckets=API_LATENCY_BUCKETS,
            registry=registry,
        )
    return histogram


#: the ``answer`` of a connection refused at the cap: a 503, or closed at accept
REFUSED_ANSWERS = ("503", "closed")
#: the ``phase`` of a timed-out connection: idle between requests, or in a request
TIMEOUT_PHASES = ("idle", "request")


class ServingSite(Protocol):
    """What :class:`ApiConnectionMetrics` reads of an HTTP site at scrape time."""

    @property
    def serving(self) -> bool:
        """Whether the site is listening (between its factory's start and stop)."""

    @property
    def open_connections(self) -> int:
        """Connections open now, counted against the cap."""

    @property
    def max_connections(self) -> int:
        """The cap (``--api-max-connections``)."""


class ApiConnectionMetrics:
    """
    The HTTP API's connections, a collector of one registry: counters the
    sites (:class:`~bitfitech.api.site.ApiSite`) keep as connections are
    refused or time out, and, read at scrape time from the sites serving
    now, the connections open and the cap.  Like :class:`NodeCollector`'s
    families, these are reported only while a site serves (the node runs).

    :ivar sites: the sites counting here (the API's site is made anew at
        each start, its counters live as long as the registry).
    :ivar refused: connections refused at the cap, by answer
        (:data:`REFUSED_ANSWERS`: a 503, or closed at accept).
    :ivar timed_out: connections closed by the idle timeout, by phase
        (:data:`TIMEOUT_PHASES`).
    :ivar too_large: requests answered 413 before their body was read.
    """

    def __init__(self) -> None:
        self.sites: weakref.WeakSet[ServingSite] = weakref.WeakSet()
        self.refused: dict[str, int] = dict.fromkeys(REFUSED_ANSWERS, 0)
        self.timed_out: dict[str, int] = dict.fromkeys(TIMEOUT_PHASES, 0)
        self.too_large = 0

    def describe(self) -> list[Metric]:
        """Nothing: the families are there only while a site serves."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The connection families, read now; none while no site serves."""
        serving = [site for site in list(self.sites) if site.serving]
        if not serving:
            return
        yield _gauge("bitfi_api_connections",
                     "HTTP API connections open now: keep-alive, in a request or streaming.",
                     sum(site.open_connections for site in serving))  # fmt: skip
        yield _gauge("bitfi_api_connections_max",
                     "Cap on open HTTP API connections (--api-max-connections).",
                     sum(site.max_connections for site in serving))  # fmt: skip
        refused = CounterMetricFamily(
            "bitfi_api_connections_refused",
            "HTTP API connections refused at the cap: answered 503 (answer=503), or closed "
            "at accept while too many refusals were in progress (answer=closed).",
            labels=("answer",),
        )
        for answer, count in self.refused.items():
            refused.add_metric([answer], count)
        yield refused
        timed_out = CounterMetricFamily(
            "bitfi_api_connections_timed_out",
            "HTTP API connections closed by --api-idle-timeout: idle between requests "
            "(phase=idle), or a request not sent whole in time (phase=request).",
            labels=("phase",),
        )
        for phase, count in self.timed_out.items():
            timed_out.add_metric([phase], count)
        yield timed_out
        yield _counter("bitfi_api_requests_too_large",
                       "HTTP API requests answered 413 before their body was read (a body "
                       "past the API's limit).",
                       self.too_large)  # fmt: skip


_connections: weakref.WeakKeyDictionary[CollectorRegistry, ApiConnectionMetrics] = (
    weakref.WeakKeyDictionary()
)


def api_connections(registry: CollectorRegistry) -> ApiConnectionMetrics:
    """
    The API's connection metrics of C{registry}, made and registered on
    first use (like :func:`api_latency`).
    """
    metrics = _connections.get(registry)
    if metrics is None:
        metrics = _connections[registry] = ApiConnectionMetrics()
        registry.register(metrics)
    return metrics


def observe_request(histogram: Histogram, method: str, status: int, seconds: float) -> None:
    """
    Count one answered API request in C{histogram}.

    :param method: the HTTP method (an unusual one is counted as ``other``).
    :param status: the HTTP status code (labelled by its class, ``2xx``).
    """
    method = method.upper() if method.upper() in API_METHODS else "other"
    status_class = f"{status // 100}xx" if 100 <= status <= 599 else "other"
    histogram.labels(method=method, status=status_class).observe(max(seconds, 0.0))


class NodeCollector:
    """
    A :class:`prometheus_client` collector reading one node's state at
    scrape time: the node's own families from its status, and those of each
    market, labelled ``market``, from the market's service and gossip.

    While the node is not running (before start, while stopping) only
    ``bitfi_up`` (0) is reported.
    """

    def __init__(
        self,
        status: Callable[[], Mapping[str, Any]],
        markets: Mapping[str, MarketService],
        gossips: Mapping[str, Gossip],
    ) -> None:
        """
        :param status: the node's status (``GET /status``); raises
            :class:`RuntimeError` or :class:`ServiceUnavailable` while the
            node does not run.
        :param markets: the node's markets' services, by pair, in the
            node's order.
        :param gossips: each market's gossip layer, by pair (a market
            without one has no gossip samples).
        """
        self.status = status
        self.markets = markets
        self.gossips = gossips
        #: pair -> (the ledger's id, its log hash, orders, cancels)
        self._orders_cache: dict[str, tuple[int, str, int, int]] = {}

    def describe(self) -> list[Metric]:
        """Nothing: the families depend on what runs (the registry checks no names)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The node's metric families, read now."""
        try:
            status = self.status()
            by_market = [
                (pair, market.status(), market.ledger) for pair, market in self.markets.items()
            ]
        except (RuntimeError, ServiceUnavailable):
            yield _gauge("bitfi_up", "Whether the node runs (1) or not (0).", 0)
            return
        yield _gauge("bitfi_up", "Whether the node runs (1) or not (0).", 1)
        yield from self._node(status)
        yield from self._peers(status["peers"])
        families = _ByMarket()
        for pair, market, ledger in by_market:
            self._market(families, pair, market, ledger)
            self._fair_order(families, pair, market.get("witnesses") or {})
            gossip = self.gossips.get(pair)
            if gossip is not None:
                self._gossip(families, pair, gossip.summary())
        yield from families
        yield from self._discovery(status.get("mdns"), status.get("dht"))

    def _node(self, status: Mapping[str, Any]) -> Iterator[Metric]:
        info = InfoMetricFamily("bitfi_node", "Who this node is: one sample, value 1.")
        info.add_metric(
            [],
            {
                "node_id": str(status["node_id"]),
                "network": str(status["network"]),
                "pair": str(status["pair"]),
                "markets": ",".join(self.markets),
                "version": str(status["version"]),
                "tls": "true" if status["p2p"]["tls"] else "false",
            },
        )
        yield info
        yield _gauge(
            "bitfi_uptime_seconds", "Seconds since the node started.", status["uptime_ms"] / 1000
        )

    def _peers(self, peers: Mapping[str, Any]) -> Iterator[Metric]:
        links = GaugeMetricFamily(
            "bitfi_peers",
            "Peer links past their handshake, by direction.",
            labels=("direction",),
        )
        links.add_metric(["inbound"], peers["inbound"])
        links.add_metric(["outbound"], peers["outbound"])
        yield links
        yield _gauge("bitfi_peers_handshaking", "Peer links in their handshake.",
                     peers["handshaking"])  # fmt: skip
        yield _gauge("bitfi_peers_outbound_target", "Outbound links the node keeps (--outbound).",
                     peers["outbound_target"])  # fmt: skip
        yield _gauge("bitfi_peers_max", "Cap on all peer links (--max-peers).", peers["max_peers"])
        yield _gauge("bitfi_peer_addresses_known", "Addresses in the address book.",
                     peers["known_addresses"])  # fmt: skip
        yield _counter("bitfi_peer_dials", "Outbound dials started.", peers["dials"])
        yield _counter("bitfi_peer_dial_failures", "Outbound dials that failed.",
                       peers["dial_failures"])  # fmt: skip
        yield _counter("bitfi_peer_refused_inbound",
                       "Inbound connections refused (limits, or the address is banned).",
                       peers["refused_inbound"])  # fmt: skip
        yield _counter("bitfi_peer_refused_banned",
                       "Inbound connections refused because their address is banned.",
                       peers["refused_banned"])  # fmt: skip
        yield _counter("bitfi_peer_protocol_violations",
                       "Misbehaviour reports against peers (protocol violations and the like).",
                       peers["protocol_violations"])  # fmt: skip
        yield _gauge("bitfi_bans", "IP addresses banned for misbehaviour now.", peers["bans"])

    def _market(
        self, families: _ByMarket, pair: str, status: Mapping[str, Any], ledger: Ledger
    ) -> None:
        """
        One market's book, ledger and journal into C{families}.

        :param status: the market's part of ``GET /status``
            (:meth:`~bitfitech.market.service.MarketService.status`).
        :param ledger: its ledger (for what the status does not say).
        """
        gauge, counter = families.gauge, families.counter
        market = status["market"]
        orders, cancels = self._order_counts(pair, ledger)
        gauge("bitfi_events", "Signed events (orders and cancels) held.", pair, status["events"])
        gauge("bitfi_events_applied", "Events in the ordered log applied to the book.", pair,
              market["applied"])  # fmt: skip
        gauge("bitfi_authors", "Authors (node keys) with events held.", pair, status["authors"])
        gauge("bitfi_lamport_clock", "The node's Lamport clock.", pair, status["lamport"])
        if status.get("ordering", "author") == "author":
            gauge("bitfi_settled_through_lamport",
                  "Author-clock order: the Lamport time through which the book and "
                  "trades are settled.",
                  pair, status["settled_through"])  # fmt: skip
        counter("bitfi_orders",
                "Order events applied to the book, this node's and its peers' "
                "(orders per second: rate(bitfi_orders_total[1m]) in PromQL).",
                pair, orders)  # fmt: skip
        counter("bitfi_cancels", "Cancel events applied to the book.", pair, cancels)
        counter("bitfi_trades",
                "Trades the book made (trades per second: rate(bitfi_trades_total[1m]) "
                "in PromQL; a late event can undo tentative trades, which shows as a "
                "counter reset).",
                pair, market["trades"])  # fmt: skip
        gauge("bitfi_open_orders", "Orders resting in the book.", pair, market["open_orders"])
        counter("bitfi_rollbacks", "Late events that rolled the book back to replay it.", pair,
                market["rollbacks"])  # fmt: skip
        counter("bitfi_replayed_events", "Events re-applied by rollbacks.", pair,
                market["replayed"])  # fmt: skip
        counter("bitfi_trade_revisions", "Late events that changed settled trades.", pair,
                market["revisions"])  # fmt: skip
        gauge("bitfi_flagged_authors", "Authors seen misbehaving (equivocation, Lamport abuse).",
              pair, len(market["flagged_authors"]))  # fmt: skip
        gauge("bitfi_sync_buffered_events",
              "Sync backlog: events received and waiting to be applied to the book.",
              pair, market["buffered"])  # fmt: skip
        gauge("bitfi_sync_gap_authors",
              "Sync backlog: authors with events held beyond a missing one.",
              pair, ledger.gaps())  # fmt: skip
        counter("bitfi_journal_writes", "Group commits of events to the journal.", pair,
                market["journal_writes"])  # fmt: skip
        counter("bitfi_journal_failures", "Journal writes that failed.", pair,
                market["journal_failures"])  # fmt: skip
        gauge("bitfi_journal_writable",
              "Whether the journal takes writes (1) or orders are refused (0).",
              pair, 0 if market.get("journal_error") else 1)  # fmt: skip

    def _fair_order(self, families: _ByMarket, pair: str, witnesses: Mapping[str, Any]) -> None:
        """
        One market's fair order (its status's ``witnesses``) into
        C{families}: only ``bitfi_witnesses`` (0) on a network without
        witnesses.
        """
        gauge, counter = families.gauge, families.counter
        gauge("bitfi_witnesses",
              "Witnesses the network names (n = 2f + 1); 0: events are in "
              "author-clock order, and no trade is ever final.",
              pair, witnesses.get("n", 0))  # fmt: skip
        if not witnesses:
            return
        gauge("bitfi_witness_faults_tolerated", "Faulty witnesses the fair order tolerates (f).",
              pair, witnesses["f"])  # fmt: skip
        gauge("bitfi_fair_settled_events",
              "Events at the start of the log that are settled: n - f witnesses' "
              "stamps are held past them.",
              pair, witnesses["settled_events"])  # fmt: skip
        gauge("bitfi_fair_final_events",
              "Events at the start of the log that are final: every witness's stamps "
              "are held past them.",
              pair, witnesses["final_events"])  # fmt: skip
        gauge("bitfi_fair_waiting_events",
              "Events held that wait for their fair time (f + 1 counted receipts).",
              pair, witnesses["waiting_events"])  # fmt: skip
        for point in ("settled", "final"):
            through = witnesses[f"{point}_through_ms"]
            if through is not None:
                gauge(f"bitfi_fair_{point}_through_ms",
                      f"The fair time (unix ms) through which state is {point}; "
                      f"how far it lags: time() * 1000 - bitfi_fair_{point}_through_ms.",
                      pair, through)  # fmt: skip
        gauge("bitfi_stamps", "Witness stamps held.", pair, witnesses["stamps"])
        counter("bitfi_stamps_signed", "Stamps this node signed as a witness (0 on other nodes).",
                pair, witnesses["stamps_signed"])  # fmt: skip
        counter("bitfi_stamps_relisted",
                "Events this node, as a witness, listed again in a later stamp because "
                "their first receipt did not count.",
                pair, witnesses.get("relisted", 0))  # fmt: skip
        gauge("bitfi_witnesses_flagged",
              "Witnesses proven faulty (equivocation, a broken chain); above "
              "bitfi_witness_faults_tolerated the order is no longer fair.",
              pair, len(witnesses["flagged"]))  # fmt: skip
        counter("bitfi_witness_revisions",
                "Stamps of a newly flagged witness that changed settled trades.",
                pair, witnesses["witness_revisions"])  # fmt: skip
        per_witness = families.gauge_family
        seq = per_witness("bitfi_witness_stamps",
                          "Per witness: its stamps held without a gap (its chain's length).",
                          "witness")  # fmt: skip
        waiting = per_witness("bitfi_witness_stamps_waiting",
                              "Per witness: its stamps held beyond a gap in its chain.",
                              "witness")  # fmt: skip
        flagged = per_witness("bitfi_witness_flagged",
                              "Per witness: 1 if it is proven faulty, else 0.",
                              "witness")  # fmt: skip
        lag = per_witness("bitfi_witness_lag_ms",
                          "Per witness: this node's clock minus the witness's at its last "
                          "stamp's arrival, in ms (network delay included; absent until a "
                          "stamp arrives, and for this node's own chain).",
                          "witness")  # fmt: skip
        last = per_witness("bitfi_witness_last_stamp_ms",
                           "Per witness: the time (unix ms, the witness's clock) of its last "
                           "stamp held without a gap; how long ago: time() * 1000 - "
                           "bitfi_witness_last_stamp_ms.",
                           "witness")  # fmt: skip
        for chain in witnesses["chains"]:
            labels = [pair, str(chain["node_id"])]
            seq.add_metric(labels, chain["seq"])
            waiting.add_metric(labels, chain["waiting"])
            flagged.add_metric(labels, 1 if chain["flagged"] else 0)
            if chain["lag_ms"] is not None:
                lag.add_metric(labels, chain["lag_ms"])
            if chain["t"] is not None:
                last.add_metric(labels, chain["t"])

    def _gossip(self, families: _ByMarket, pair: str, gossip: Mapping[str, Any]) -> None:
        """One market's gossip counters (:meth:`Gossip.summary`) into C{families}."""
        families.gauge("bitfi_sync_requests_in_flight",
                       "Sync backlog: events asked of peers (getdata) and not yet received.",
                       pair, gossip["requests_in_flight"])  # fmt: skip
        for key, value in gossip.items():
            if key in _GOSSIP_NOT_COUNTERS or not isinstance(value, int):
                continue
            help_text = GOSSIP_HELP.get(key, f"Gossip counter {key}.")
            families.counter(f"bitfi_gossip_{key}", help_text, pair, value)

    def _discovery(
        self, mdns: Mapping[str, Any] | None, dht: Mapping[str, Any] | None
    ) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "bitfi_discovery_running",
            "Whether a discovery service runs (0: switched off or failed to start).",
            labels=("service",),
        )
        running.add_metric(["mdns"], 0 if mdns is None else 1)
        running.add_metric(["dht"], 0 if dht is None else 1)
        yield running
        if mdns is not None:
            yield _gauge("bitfi_mdns_discovered",
                         "Other nodes of this network that share a market with this node, "
                         "known by mDNS now.",
                         mdns["discovered"])  # fmt: skip
        if dht is not None:
            table = GaugeMetricFamily(
                "bitfi_dht_routing_table_size",
                "DHT nodes in the routing table, by address family (ipv4, ipv6).",
                labels=("family",),
            )
            for family, state in (dht.get("families") or {}).items():
                table.add_metric([family], state["routing_table_size"])
            yield table
            yield _counter("bitfi_dht_peers_found", "New peer addresses found through the DHT.",
                           dht["peers_found"])  # fmt: skip

    def _order_counts(self, pair: str, ledger: Ledger) -> tuple[int, int]:
        """
        Order and cancel events in C{ledger}'s log (market C{pair}'s):
        counted again only when the log changed (its running hash differs),
        in one pass over it.
        """
        key = (id(ledger), ledger.log_hash)
        cached = self._orders_cache.get(pair)
        if cached is not None and cached[:2] == key:
            return cached[2], cached[3]
        log = ledger.log()
        orders = sum(1 for event in log if event.is_order)
        self._orders_cache[pair] = (key[0], key[1], orders, len(log) - orders)
        return orders, len(log) - orders


class _ByMarket:
    """
    The families of the markets, filled one market at a time: each is made
    on its first use, labelled ``market`` (and any other label), and
    collects one sample per market; iterated, they come in the order they
    were made.
    """

    def __init__(self) -> None:
        self._gauges: dict[str, GaugeMetricFamily] = {}
        self._counters: dict[str, CounterMetricFamily] = {}
        self._made: list[Metric] = []

    def gauge_family(self, name: str, documentation: str, *labels: str) -> GaugeMetricFamily:
        """The gauge family C{name}, labelled ``market`` then C{labels}."""
        family = self._gauges.get(name)
        if family is None:
            family = GaugeMetricFamily(name, documentation, labels=("market", *labels))
            self._gauges[name] = family
            self._made.append(family)
        return family

    def gauge(self, name: str, documentation: str, market: str, value: float) -> None:
        """Market C{market}'s sample of gauge C{name}."""
        self.gauge_family(name, documentation).add_metric([market], value)

    def counter(self, name: str, documentation: str, market: str, value: float) -> None:
        """Market C{market}'s sample of counter C{name} (``<name>_total``)."""
        family = self._counters.get(name)
        if family is None:
            family = CounterMetricFamily(name, documentation, labels=("market",))
            self._counters[name] = family
            self._made.append(family)
        family.add_metric([market], value)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._made)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class MetricsResource(Resource):
    """
    ``GET /metrics``: the node's registry in the Prometheus text format
    (``CONTENT_TYPE_LATEST``).  Mount it on the API root::

        root.putChild(b"metrics", MetricsResource(registry))

    :ivar registry: what is rendered, or ``None`` (no metrics, as for a
        fake node in tests: 404 with the API's ``{"error": ...}``).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry | None) -> None:
        """:param registry: the node's registry (:func:`node_registry`), or ``None``."""
        super().__init__()
        self.registry = registry

    def render(self, request: Request) -> bytes:
        """GET (and HEAD): the exposition; any other method: the API's JSON 405."""
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"application/json")
            method = request.method.decode("ascii", "replace")
            return json.dumps({"error": f"method {method} not allowed"}).encode()
        return self.render_GET(request)

    def render_GET(self, request: Request) -> bytes:
        """The exposition, read now."""
        if self.registry is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return b'{"error": "this node has no metrics"}'
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        body: bytes = generate_latest(self.registry)
        return body
