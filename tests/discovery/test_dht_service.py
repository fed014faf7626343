"""Tests for :mod:`bitfitech.discovery.kademlia.service`, on a MemoryDatagramNetwork."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.discovery.kademlia.ids import market_info_hash, network_info_hash
from bitfitech.discovery.kademlia.lookup import TRIES, LookupResult
from bitfitech.discovery.kademlia.service import (
    CONTACTS_SETTING,
    NODE_ID_SETTING,
    DHTService,
    DHTTiming,
)
from bitfitech.testing import DatagramNetworkReactor, MemoryDatagramNetwork, run_for

INFO_HASH = network_info_hash("test", "BTC/USD")
TIMING = DHTTiming(check_interval=1.0, min_lookup_gap=5.0, bootstrap_retry=1.0)


class MemorySettings:
    """A SettingsStore in a dict."""

    def __init__(self, **values: str) -> None:
        self.values = dict(values)

    def get_setting(self, key: str) -> str | None:
        return self.values.get(key)

    def set_setting(self, key: str, value: str) -> None:
        self.values[key] = value


class ResolvingReactor(DatagramNetworkReactor):
    """A DatagramNetworkReactor that resolves one host name."""

    def __init__(self, network: MemoryDatagramNetwork, names: dict[str, str]) -> None:
        super().__init__(network)
        self.names = names
        self.resolved: list[str] = []

    def resolve(self, name: str) -> Deferred[str]:
        self.resolved.append(name)
        return succeed(self.names[name])


class DroppingNetwork(MemoryDatagramNetwork):
    """A MemoryDatagramNetwork that loses the next datagrams sent to chosen addresses."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, random.Random(1), latency=0.01)
        self.drop: Counter[tuple[str, int]] = Counter()

    def send(self, packet: bytes, source: tuple[str, int], target: tuple[str, int]) -> None:
        if self.drop[target] > 0:
            self.drop[target] -= 1
            self.sent += 1
            self.lost += 1
            return
        super().send(packet, source, target)


class ServiceTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.network = DroppingNetwork(self.clock)
        self.reactor: Any = self.network.reactor()
        self.found: dict[str, list[tuple[str, int, str | None]]] = {}
        self.services: list[DHTService] = []

    def tearDown(self) -> None:
        for service in self.services:
            if service.running:
                service.stopService()

    def make(
        self,
        host: str,
        *,
        bootstrap: list[tuple[str, int]] | None = None,
        wants: list[bool] | None = None,
        settings: MemorySettings | None = None,
        p2p: int = 9000,
        reactor: Any = None,
        timing: DHTTiming = TIMING,
    ) -> DHTService:
        found = self.found.setdefault(host, [])
        service = DHTService(
            reactor or self.reactor,
            info_hash=INFO_HASH,
            port=6881,
            host=host,
            p2p_port=lambda: p2p,
            found=lambda h, p, n: found.append((h, p, n)),
            wants_peers=lambda _market: bool(wants and wants[0]),
            bootstrap=bootstrap or [],
            settings=settings,
            rng=random.Random(host),
            timing=timing,
        )
        self.services.append(service)
        return service


class LifecycleTests(ServiceTestCase):
    """Starting, stopping, persistence."""

    def test_nothing_before_start(self) -> None:
        """__init__ opens nothing; status works before start."""
        service = self.make("10.0.0.1")
        self.assertEqual(self.network.ports, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(service.listen_port, 0)
        self.assertEqual(service.status()["routing_table_size"], 0)

    def test_bad_info_hash(self) -> None:
        """The info-hash must be 20 bytes."""
        with self.assertRaises(ValueError):
            DHTService(
                self.reactor, info_hash=b"short", port=0, p2p_port=lambda: 1,
                found=lambda h, p, n: None, wants_peers=lambda _market: False,
            )  # fmt: skip

    def test_start_stop(self) -> None:
        """Start binds the port; stop closes it and cancels every timer."""
        service = self.make("10.0.0.1")
        service.startService()
        self.assertEqual(service.listen_port, 6881)
        self.assertIn(("10.0.0.1", 6881), self.network.ports)
        status = service.status()
        self.assertEqual(status["port"], 6881)
        self.assertEqual(status["info_hash"], INFO_HASH.hex())
        self.assertEqual(len(bytes.fromhex(status["node_id"])), 20)
        self.assertIsNone(status["announced_at"])
        run_for(self.clock, 10)
        self.successResultOf(service.stopService())
        self.assertEqual(self.network.ports, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(service.listen_port, 0)

    def test_port_busy(self) -> None:
        """A busy port raises CannotListenError and leaves the service stopped."""
        self.make("10.0.0.1").startService()
        second = self.make("10.0.0.1")
        self.assertRaises(CannotListenError, second.startService)
        self.assertFalse(second.running)

    def test_no_bootstrap_sends_nothing(self) -> None:
        """Without bootstrap addresses, nothing is ever sent (no built-in routers)."""
        self.make("10.0.0.1").startService()
        run_for(self.clock, 3600)
        self.assertEqual(self.network.sent, 0)

    def test_node_id_persisted(self) -> None:
        """The node id is drawn once, saved, and reused at the next start."""
        settings = MemorySettings()
        first = self.make("10.0.0.1", settings=settings)
        first.startService()
        saved = settings.values[NODE_ID_SETTING]
        self.assertEqual(first.status()["node_id"], saved)
        first.stopService()
        second = self.make("10.0.0.2", settings=settings)
        second.startService()
        self.assertEqual(second.status()["node_id"], saved)

    def test_bad_saved_values_ignored(self) -> None:
        """An unreadable node id or contact list is replaced or skipped."""
        settings = MemorySettings(
            **{NODE_ID_SETTING: "nothex", CONTACTS_SETTING: '[[1, 2], ["10.0.0.9"], {'}
        )
        service = self.make("10.0.0.1", settings=settings)
        service.startService()
        self.assertNotEqual(settings.values[NODE_ID_SETTING], "nothex")
        run_for(self.clock, 5)
        self.assertEqual(self.network.sent, 0)

    def test_contacts_saved_and_used(self) -> None:
        """Good contacts are saved at stop and bootstrap the next start."""
        a = self.make("10.0.0.1")
        a.startService()
        settings = MemorySettings()
        b = self.make("10.0.0.2", bootstrap=[("10.0.0.1", 6881)], settings=settings)
        b.startService()
        run_for(self.clock, 5)
        self.successResultOf(b.stopService())
        self.assertEqual(json.loads(settings.values[CONTACTS_SETTING]), [["10.0.0.1", 6881]])
        again = self.make("10.0.0.2", settings=settings)
        again.startService()
        run_for(self.clock, 5)
        self.assertEqual(again.status()["routing_table_size"], 1)


class DiscoveryTests(ServiceTestCase):
    """Bootstrap, lookup, announce, hand-over."""

    def test_two_nodes_find_each_other(self) -> None:
        """B joins through A; both announce and each is handed the other's P2P port."""
        a = self.make("10.0.0.1", p2p=9001)
        a.startService()
        b = self.make("10.0.0.2", bootstrap=[("10.0.0.1", 6881)], p2p=9002)
        b.startService()
        run_for(self.clock, 60)
        self.assertIn(("10.0.0.1", 9001, None), self.found["10.0.0.2"])
        self.assertIn(("10.0.0.2", 9002, None), self.found["10.0.0.1"])
        self.assertIsNotNone(a.status()["announced_at"])
        self.assertIsNotNone(b.status()["announced_at"])
        self.assertEqual(b.status()["peers_found"], 1)
        self.assertEqual(a.status()["routing_table_size"], 1)

    def test_started_before_bootstrap_node(self) -> None:
        """A node whose bootstrap node is not up yet retries until it joins."""
        b = self.make("10.0.0.2", bootstrap=[("10.0.0.1", 6881)], p2p=9002)
        b.startService()
        run_for(self.clock, 30)
        self.assertEqual(b.status()["routing_table_size"], 0)
        a = self.make("10.0.0.1", p2p=9001)
        a.startService()
        run_for(self.clock, 120)
        self.assertEqual(b.status()["routing_table_size"], 1)
        self.assertIn(("10.0.0.1", 9001, None), self.found["10.0.0.2"])

    def test_bootstrap_retry_backs_off(self) -> None:
        """While the table stays empty, bootstraps get rarer, up to the maximum."""
        b = self.make("10.0.0.2", bootstrap=[("10.0.0.1", 6881)])
        b.startService()
        run_for(self.clock, 600)
        # 1, 2, 4, 8, ... 256, then every 300 s: about 10 in 600 s, not 600.
        self.assertLess(self.network.sent, 15)
        self.assertGreater(self.network.sent, 5)

    def test_host_names_resolved(self) -> None:
        """Bootstrap host names go through the reactor's resolver; IP literals do not."""
        reactor = ResolvingReactor(self.network, {"seed.example": "10.0.0.1"})
        self.make("10.0.0.1").startService()
        b = self.make("10.0.0.2", bootstrap=[("seed.example", 6881)], reactor=reactor)
        b.startService()
        run_for(self.clock, 5)
        self.assertEqual(reactor.resolved, ["seed.example"])
        self.assertEqual(b.status()["routing_table_size"], 1)

    def test_lookup_cadence(self) -> None:
        """Lookups repeat every lookup_interval, and every min_lookup_gap when peers are wanted."""
        wants = [False]
        # No pings of the nearest contacts: only the lookups are counted.
        timing = replace(TIMING, ping_interval=3600.0)
        self.make("10.0.0.1", timing=timing).startService()
        b = self.make("10.0.0.2", bootstrap=[("10.0.0.1", 6881)], wants=wants, timing=timing)
        b.startService()
        run_for(self.clock, 10)
        protocol = self.network.ports[("10.0.0.1", 6881)].protocol
        before = protocol.counters["queries"]  # type: ignore[attr-defined]
        run_for(self.clock, 200)
        quiet = protocol.counters["queries"] - before  # type: ignore[attr-defined]
        wants[0] = True
        before = protocol.counters["queries"]  # type: ignore[attr-defined]
        run_for(self.clock, 200)
        eager = protocol.counters["queries"] - before  # type: ignore[attr-defined]
        self.assertLessEqual(quiet, 2)
        # One lookup (one get_peers) every 5 s at most: about 40, never 200.
        self.assertGreater(eager, 20)
        self.assertLessEqual(eager, 45)

    def test_reannounce_and_expiry(self) -> None:
        """Announces repeat every announce_interval; a stopped node's announce expires."""
        a = self.make("10.0.0.1", p2p=9001)
        a.startService()
        b = self.make("10.0.0.2", bootstrap=[("10.0.0.1", 6881)], p2p=9002)
        b.startService()
        run_for(self.clock, 10)
        first = b.announced_at
        run_for(self.clock, 15 * 60)
        self.assertGreater(b.announced_at or 0, first or 0)
        store = a.protocol.store  # type: ignore[union-attr]
        self.assertEqual(store.peers(INFO_HASH, self.clock.seconds()), [("10.0.0.2", 9002)])
        b.stopService()
        run_for(self.clock, 31 * 60)
        self.assertEqual(store.peers(INFO_HASH, self.clock.seconds()), [])

    def broken_found(self, host: str, port: int, node_id: str | None) -> None:
        raise ZeroDivisionError("a bug in the node")

    def test_found_errors_contained(self) -> None:
        """A failing found callback is logged, not fatal."""
        a = self.make("10.0.0.1", p2p=9001)
        a.startService()
        b = DHTService(
            self.reactor, info_hash=INFO_HASH, port=6881, host="10.0.0.2",
            p2p_port=lambda: 9002, found=self.broken_found, wants_peers=lambda _market: False,
            bootstrap=[("10.0.0.1", 6881)], timing=TIMING,
        )  # fmt: skip
        self.services.append(b)
        b.startService()
        run_for(self.clock, 60)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIsNotNone(b.announced_at)


class NearestPingTests(ServiceTestCase):
    """Every ping_interval the service pings one of its nearest contacts."""

    def test_dead_contact_found_out(self) -> None:
        """
        A contact that stops abruptly is still good for 15 minutes, but the
        pings of the nearest contacts find it out and drop it within a few
        ping intervals; the live one stays, and the pings stay one per interval.
        """
        self.make("10.0.0.1").startService()
        b = self.make("10.0.0.2", bootstrap=[("10.0.0.1", 6881)])
        c = self.make("10.0.0.3", bootstrap=[("10.0.0.1", 6881)])
        b.startService()
        c.startService()
        run_for(self.clock, 60)
        table = b.routing_table
        assert table is not None and c.node_id is not None and b.protocol is not None
        self.assertIsNotNone(table.get(c.node_id))
        self.network.ports[("10.0.0.3", 6881)].stopListening()
        c.stopService()
        counters = b.protocol.counters
        # Our own queries: what was sent, less the answers to others' queries.
        before = counters["sent"] - counters["queries"]
        run_for(self.clock, 6 * b.timing.ping_interval)
        self.assertIsNone(table.get(c.node_id))
        self.assertEqual(len(table), 1)
        self.assertEqual(counters["sent"] - counters["queries"] - before, 6)


class LossTests(ServiceTestCase):
    """What one lost datagram costs a lookup, and what two do."""

    # No housekeeping pings during the tests: only the lookup meets the losses.
    quiet = DHTTiming(check_interval=3600.0, ping_interval=3600.0)

    def three_nodes(self) -> tuple[DHTService, DHTService]:
        """A, and B and C joined through it; B knows C."""
        self.make("10.0.0.1", timing=self.quiet).startService()
        b = self.make("10.0.0.2", bootstrap=[("10.0.0.1", 6881)], timing=self.quiet)
        c = self.make("10.0.0.3", bootstrap=[("10.0.0.1", 6881)], timing=self.quiet)
        b.startService()
        c.startService()
        run_for(self.clock, 60)
        table = b.routing_table
        assert table is not None and c.node_id is not None
        self.assertIsNotNone(table.get(c.node_id))
        return b, c

    def find_node(self, service: DHTService, target: bytes) -> tuple[LookupResult, float]:
        """Run a lookup to its end: its result and the simulated seconds it took."""
        results: list[LookupResult] = []
        started = self.clock.seconds()
        ended: list[float] = []
        service.find_node(target).addCallback(results.append).addCallback(
            lambda _: ended.append(self.clock.seconds())
        )
        run_for(self.clock, 10)
        [result] = results
        return result, ended[0] - started

    def test_lost_query_retried(self) -> None:
        """
        A lookup asks a node again when its query stalls (well before the
        full timeout): the lookup still ends on it, and when the lost query
        times out the routing table counts no failure against the node, which
        has answered since.
        """
        b, c = self.three_nodes()
        assert c.node_id is not None
        self.network.drop[("10.0.0.3", 6881)] = 1
        result, simulated = self.find_node(b, c.node_id)
        self.assertEqual(result.closest[0].node_id, c.node_id)
        self.assertEqual((result.stalls, result.retries, result.failures), (1, 1, 0))
        self.assertLess(simulated, b.timing.query_timeout)  # on the fake clock
        self.assertEqual(b.protocol.counters["timeouts"], 1)  # type: ignore[union-attr]
        contact = b.routing_table.get(c.node_id)  # type: ignore[union-attr]
        assert contact is not None
        self.assertEqual(contact.failures, 0)
        self.assertTrue(contact.is_good(self.clock.seconds()))

    def test_silent_node_dropped(self) -> None:
        """
        A node that leaves every query of a lookup unanswered is given up at
        its stalls, without waiting for the full timeout; each query then
        counts one failure at the full timeout, and the node is dropped from
        the table.
        """
        b, c = self.three_nodes()
        assert c.node_id is not None
        self.network.drop[("10.0.0.3", 6881)] = TRIES
        result, simulated = self.find_node(b, c.node_id)
        self.assertNotIn(c.node_id, [n.node_id for n in result.closest])
        self.assertEqual((result.stalls, result.retries), (TRIES, TRIES - 1))
        self.assertLess(simulated, b.timing.query_timeout)  # on the fake clock
        self.assertEqual(b.protocol.counters["timeouts"], TRIES)  # type: ignore[union-attr]
        self.assertIsNone(b.routing_table.get(c.node_id))  # type: ignore[union-attr]


BTC = market_info_hash("test", "BTC/USD")
ETH = market_info_hash("test", "ETH/USD")
Found = tuple[str, int, "str | None", "tuple[str, ...]"]


class MarketTests(ServiceTestCase):
    """One info-hash per market: each looked up and announced, peers found by market."""

    def setUp(self) -> None:
        super().setUp()
        self.found_in: dict[str, list[Found]] = {}

    def make_markets(
        self,
        host: str,
        markets: dict[str, bytes],
        *,
        p2p: int,
        bootstrap: list[tuple[str, int]] | None = None,
        wants: list[bool] | None = None,
        wanted: set[str] | None = None,
    ) -> DHTService:
        """:param wanted: the markets whose peers are wanted (else C{wants}: all or none)."""
        found = self.found_in.setdefault(host, [])

        def wants_peers(market: str) -> bool:
            return market in wanted if wanted is not None else bool(wants and wants[0])

        service = DHTService(
            self.reactor, info_hashes=markets, port=6881, host=host, p2p_port=lambda: p2p,
            found=lambda h, p, n, m: found.append((h, p, n, m)),
            wants_peers=wants_peers, bootstrap=bootstrap or [],
            rng=random.Random(host), timing=TIMING,
        )  # fmt: skip
        self.services.append(service)
        service.startService()
        return service

    def lookups_of(self, service: DHTService) -> list[tuple[float, bytes]]:
        """Record (time, info-hash) of each ``get_peers`` lookup C{service} starts."""
        started: list[tuple[float, bytes]] = []
        get_peers = service.get_peers

        def recording(info_hash: bytes) -> Deferred[LookupResult]:
            started.append((self.clock.seconds(), info_hash))
            return get_peers(info_hash)

        self.patch(service, "get_peers", recording)
        return started

    def test_arguments(self) -> None:
        """info_hashes or info_hash, one: 20 bytes each, no two markets with one hash."""
        bad: list[dict[str, Any]] = [
            {},
            {"info_hash": BTC, "info_hashes": {"BTC/USD": BTC}},
            {"info_hashes": {}},
            {"info_hashes": {"BTC/USD": BTC, "ETH/USD": b"short"}},
            {"info_hashes": {"BTC/USD": BTC, "ETH/USD": BTC}},
        ]
        for arguments in bad:
            with self.assertRaises(ValueError, msg=repr(arguments)):
                DHTService(
                    self.reactor, port=0, p2p_port=lambda: 1, found=lambda h, p, n: None,
                    wants_peers=lambda _market: False, **arguments,
                )  # fmt: skip

    def test_status(self) -> None:
        """info_hash is the first market's; info_hashes and peers_found_by_market go by market."""
        service = self.make_markets("10.0.0.1", {"ETH/USD": ETH, "BTC/USD": BTC}, p2p=9001)
        status = service.status()
        self.assertEqual(service.info_hash, ETH)
        self.assertEqual(service.info_hashes, {"ETH/USD": ETH, "BTC/USD": BTC})
        self.assertEqual(status["info_hash"], ETH.hex())
        self.assertEqual(status["info_hashes"], {"ETH/USD": ETH.hex(), "BTC/USD": BTC.hex()})
        self.assertEqual(status["peers_found_by_market"], {"ETH/USD": 0, "BTC/USD": 0})
        # The older form: one info-hash of no named market.
        old = self.make("10.0.0.2").status()
        self.assertEqual(old["info_hashes"], {"": INFO_HASH.hex()})
        self.assertEqual(old["peers_found_by_market"], {"": 0})

    def test_two_hashes_announced_and_looked_up(self) -> None:
        """Two nodes of two markets: each hash looked up and announced, each peer found in both."""
        both = {"BTC/USD": BTC, "ETH/USD": ETH}
        a = self.make_markets("10.0.0.1", both, p2p=9001)
        b = self.make_markets("10.0.0.2", both, p2p=9002, bootstrap=[("10.0.0.1", 6881)])
        lookups = self.lookups_of(b)
        run_for(self.clock, 60)
        self.assertEqual({info_hash for _, info_hash in lookups}, {BTC, ETH})
        self.assertEqual(set(b.last_lookups), {"BTC/USD", "ETH/USD"})
        store = a.protocol.store  # type: ignore[union-attr]
        now = self.clock.seconds()
        self.assertEqual(store.peers(BTC, now), [("10.0.0.2", 9002)])
        self.assertEqual(store.peers(ETH, now), [("10.0.0.2", 9002)])
        self.assertEqual(
            sorted(set(self.found_in["10.0.0.2"])),
            [("10.0.0.1", 9001, None, ("BTC/USD",)), ("10.0.0.1", 9001, None, ("ETH/USD",))],
        )
        self.assertEqual(
            sorted(set(self.found_in["10.0.0.1"])),
            [("10.0.0.2", 9002, None, ("BTC/USD",)), ("10.0.0.2", 9002, None, ("ETH/USD",))],
        )
        status = b.status()
        self.assertIsNotNone(status["announced_at"])
        self.assertEqual(status["peers_found"], 1)
        self.assertEqual(status["peers_found_by_market"], {"BTC/USD": 1, "ETH/USD": 1})

    def test_peers_found_per_market(self) -> None:
        """A node of one market finds only the nodes announced under its market's hash."""
        a = self.make_markets("10.0.0.1", {"BTC/USD": BTC, "ETH/USD": ETH}, p2p=9001)
        seed = [("10.0.0.1", 6881)]
        self.make_markets("10.0.0.2", {"BTC/USD": BTC}, p2p=9002, bootstrap=seed)
        self.make_markets("10.0.0.3", {"ETH/USD": ETH}, p2p=9003, bootstrap=seed)
        run_for(self.clock, 60)
        self.assertEqual(set(self.found_in["10.0.0.2"]), {("10.0.0.1", 9001, None, ("BTC/USD",))})
        self.assertEqual(set(self.found_in["10.0.0.3"]), {("10.0.0.1", 9001, None, ("ETH/USD",))})
        self.assertEqual(
            set(self.found_in["10.0.0.1"]),
            {("10.0.0.2", 9002, None, ("BTC/USD",)), ("10.0.0.3", 9003, None, ("ETH/USD",))},
        )
        status = a.status()
        self.assertEqual(status["peers_found"], 2)
        self.assertEqual(status["peers_found_by_market"], {"BTC/USD": 1, "ETH/USD": 1})

    def test_one_lookup_per_tick(self) -> None:
        """
        Lookups are staggered: at most one starts per housekeeping run, the
        most overdue market first; each market's repeat every lookup_interval,
        or min_lookup_gap while peers are wanted.
        """
        wants = [False]
        both = {"BTC/USD": BTC, "ETH/USD": ETH}
        self.make_markets("10.0.0.1", both, p2p=9001)
        b = self.make_markets(
            "10.0.0.2", both, p2p=9002, bootstrap=[("10.0.0.1", 6881)], wants=wants
        )
        lookups = self.lookups_of(b)
        run_for(self.clock, 650)
        quiet = Counter(info_hash for _, info_hash in lookups)
        # Once at the start, then every 300 s: three each in 650 s.
        self.assertEqual(quiet, {BTC: 3, ETH: 3})
        del lookups[:]
        wants[0] = True
        run_for(self.clock, 100)
        eager = Counter(info_hash for _, info_hash in lookups)
        # One each every 5 s: about 20 each in 100 s, never two in one tick.
        self.assertGreaterEqual(min(eager.values()), 18)
        self.assertLessEqual(max(eager.values()), 21)
        times = [when for when, _ in lookups]
        self.assertEqual(len(times), len(set(times)))
        for market in (BTC, ETH):
            mine = [when for when, info_hash in lookups if info_hash == market]
            self.assertGreaterEqual(min(b - a for a, b in zip(mine, mine[1:], strict=False)), 5)

    def test_a_market_short_of_peers_is_looked_up_sooner(self) -> None:
        """Only the market whose peers are wanted is looked up every min_lookup_gap."""
        wanted: set[str] = set()
        both = {"BTC/USD": BTC, "ETH/USD": ETH}
        self.make_markets("10.0.0.1", both, p2p=9001)
        b = self.make_markets(
            "10.0.0.2", both, p2p=9002, bootstrap=[("10.0.0.1", 6881)], wanted=wanted
        )
        run_for(self.clock, 60)
        lookups = self.lookups_of(b)
        wanted.add("ETH/USD")
        run_for(self.clock, 100)
        counts = Counter(info_hash for _, info_hash in lookups)
        self.assertEqual(counts[BTC], 0)
        self.assertGreaterEqual(counts[ETH], 18)

    def test_discover_looks_up_each_market(self) -> None:
        """discover() looks up every market's hash in turn."""
        both = {"BTC/USD": BTC, "ETH/USD": ETH}
        self.make_markets("10.0.0.1", both, p2p=9001)
        b = self.make_markets("10.0.0.2", both, p2p=9002, bootstrap=[("10.0.0.1", 6881)])
        run_for(self.clock, 60)
        lookups = self.lookups_of(b)
        d = b.discover(announce=False)
        run_for(self.clock, 3)
        self.successResultOf(d)
        self.assertEqual([info_hash for _, info_hash in lookups], [BTC, ETH])
