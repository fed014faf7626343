"""Tests for :mod:`bitfitech.discovery.kademlia.service`, on a MemoryDatagramNetwork."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.discovery.kademlia.ids import network_info_hash
from bitfitech.discovery.kademlia.lookup import LookupResult
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
            wants_peers=lambda: bool(wants and wants[0]),
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
                found=lambda h, p, n: None, wants_peers=lambda: False,
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
        self.make("10.0.0.1").startService()
        b = self.make("10.0.0.2", bootstrap=[("10.0.0.1", 6881)], wants=wants)
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
            p2p_port=lambda: 9002, found=self.broken_found, wants_peers=lambda: False,
            bootstrap=[("10.0.0.1", 6881)], timing=TIMING,
        )  # fmt: skip
        self.services.append(b)
        b.startService()
        run_for(self.clock, 60)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIsNotNone(b.announced_at)


class LossTests(ServiceTestCase):
    """What one lost datagram costs a lookup, and what two do."""

    # No housekeeping pings during the tests: only the lookup meets the losses.
    quiet = DHTTiming(check_interval=3600.0)

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

    def find_node(self, service: DHTService, target: bytes) -> LookupResult:
        results: list[LookupResult] = []
        service.find_node(target).addCallback(results.append)
        run_for(self.clock, 10)
        [result] = results
        return result

    def test_lost_query_retried(self) -> None:
        """
        A lookup asks a node again when its query is lost: the lookup still
        ends on it, and the routing table holds no failure against it.
        """
        b, c = self.three_nodes()
        assert c.node_id is not None
        self.network.drop[("10.0.0.3", 6881)] = 1
        result = self.find_node(b, c.node_id)
        self.assertEqual(result.closest[0].node_id, c.node_id)
        self.assertEqual((result.failures, result.retries), (1, 1))
        contact = b.routing_table.get(c.node_id)  # type: ignore[union-attr]
        assert contact is not None
        self.assertEqual(contact.failures, 0)
        self.assertTrue(contact.is_good(self.clock.seconds()))

    def test_silent_node_dropped(self) -> None:
        """A node that leaves both queries of a lookup unanswered is dropped from the table."""
        b, c = self.three_nodes()
        assert c.node_id is not None
        self.network.drop[("10.0.0.3", 6881)] = 2
        result = self.find_node(b, c.node_id)
        self.assertNotIn(c.node_id, [n.node_id for n in result.closest])
        self.assertEqual((result.failures, result.retries), (2, 1))
        self.assertIsNone(b.routing_table.get(c.node_id))  # type: ignore[union-attr]
