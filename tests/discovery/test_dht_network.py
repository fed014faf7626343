"""A DHT of 200+ DHTService nodes in one process, on a MemoryDatagramNetwork and a Clock."""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.discovery.kademlia.ids import distance, id_to_int, network_info_hash, random_id
from bitfitech.discovery.kademlia.lookup import LookupResult
from bitfitech.discovery.kademlia.routing import Bucket, K
from bitfitech.discovery.kademlia.service import JOIN_REFRESHES, DHTService, DHTTiming
from bitfitech.testing import HeapClock, MemoryDatagramNetwork, run_for

INFO_HASH = network_info_hash("test", "BTC/USD")
OTHER_HASH = network_info_hash("test", "ETH/USD")
NODES = 200
# Lookups of the info-hash every hour: the tests run their own lookups, and
# refreshes, pings and churn are what the long runs exercise.
TIMING = DHTTiming(lookup_interval=3600.0, announce_interval=3600.0)


class Grid:
    """Many DHT services on one in-memory network; node n lives at 10.0.x.y:6881."""

    def __init__(self, seed: int) -> None:
        self.clock = HeapClock()
        self.network = MemoryDatagramNetwork(
            self.clock, random.Random(seed), latency=0.01, jitter=0.02
        )
        self.reactor = self.network.reactor()
        self.rng = random.Random(seed)
        self.services: list[DHTService] = []
        self.found: list[set[tuple[str, int]]] = []
        self.dead: set[int] = set()

    def host(self, n: int) -> str:
        return f"10.0.{n // 250}.{n % 250 + 1}"

    def add(
        self,
        *,
        info_hash: bytes = INFO_HASH,
        settle: float = 0.5,
        before_start: Callable[[DHTService], None] | None = None,
    ) -> DHTService:
        """Start one more node, bootstrapped from a random live node."""
        n = len(self.services)
        live = self.live()
        bootstrap = [(self.host(self.rng.choice(live)), 6881)] if live else []
        found: set[tuple[str, int]] = set()
        service = DHTService(
            self.reactor,
            info_hash=info_hash,
            port=6881,
            host=self.host(n),
            p2p_port=lambda: 9000 + n,
            found=lambda h, p, _: found.add((h, p)),
            wants_peers=lambda _market: False,
            bootstrap=bootstrap,
            rng=random.Random(n),
            timing=TIMING,
        )
        self.services.append(service)
        self.found.append(found)
        if before_start is not None:
            before_start(service)
        service.startService()
        run_for(self.clock, settle)
        return service

    def live(self) -> list[int]:
        return [n for n in range(len(self.services)) if n not in self.dead]

    def crash(self, n: int) -> None:
        """Node n vanishes without a word: its port closes, nothing else."""
        self.dead.add(n)
        self.network.ports[(self.host(n), 6881)].stopListening()

    def stop(self) -> None:
        for service in self.services:
            if service.running:
                service.stopService()

    def true_closest(self, target: bytes, exclude: DHTService) -> list[bytes]:
        ids = [self.services[n].node_id for n in self.live() if self.services[n] is not exclude]
        return sorted((i for i in ids if i), key=lambda i: distance(i, target))[:K]

    def lookup(self, source: DHTService, target: bytes) -> LookupResult:
        results: list[LookupResult] = []
        source.find_node(target).addCallback(results.append)
        run_for(self.clock, 30)
        [result] = results
        return result

    def room(self, service: DHTService, bucket: Bucket) -> int:
        """Contacts C{service}'s C{bucket} could hold: k, or the live nodes in its range."""
        others = (self.services[n].node_id for n in self.live())
        inside = sum(
            1 for i in others if i and i != service.node_id and bucket.covers(id_to_int(i))
        )
        return min(K, inside)

    def dead_contacts(self) -> int:
        dead_ids = {self.services[n].node_id for n in self.dead}
        count = 0
        for n in self.live():
            table = self.services[n].routing_table
            assert table is not None
            count += sum(1 for c in table if c.node_id in dead_ids)
        return count


class NetworkTests(SynchronousTestCase):
    """Bootstrap chains, exact lookups, announces, churn."""

    def setUp(self) -> None:
        self.grid = Grid(seed=11)
        self.addCleanup(self.grid.stop)
        for _ in range(NODES):
            self.grid.add()
        run_for(self.grid.clock, 10)

    def check_lookups(self, count: int) -> list[LookupResult]:
        grid = self.grid
        results = []
        for _ in range(count):
            source = grid.services[grid.rng.choice(grid.live())]
            target = random_id(grid.rng)
            result = grid.lookup(source, target)
            self.assertEqual([n.node_id for n in result.closest], grid.true_closest(target, source))
            results.append(result)
        return results

    def test_join_lookup_announce(self) -> None:
        """
        Every node joins through a chain of bootstraps, lookups reach the
        true k closest nodes, every node announces and finds peers, and a
        new announcer is found by a later node of its info-hash.
        """
        grid = self.grid
        for service in grid.services:
            self.assertGreater(service.status()["routing_table_size"], K)
            self.assertIsNotNone(service.status()["announced_at"])
        self.assertTrue(all(found for found in grid.found[1:]))
        results = self.check_lookups(20)
        rounds = statistics.mean(r.rounds for r in results)
        queries = statistics.mean(r.queries for r in results)
        # log2(200) / 4 + 1 = 2.9 rounds is the target at this size.
        self.assertLessEqual(rounds, 3.2, f"mean rounds {rounds}, queries {queries}")
        announcer = grid.add(info_hash=OTHER_HASH, settle=30)
        seeker = grid.add(info_hash=OTHER_HASH, settle=30)
        self.assertIn(
            ("10.0.0.201", 9000 + grid.services.index(announcer)),
            grid.found[grid.services.index(seeker)],
        )
        result: list[LookupResult] = []
        grid.services[0].get_peers(OTHER_HASH).addCallback(result.append)
        run_for(grid.clock, 30)
        self.assertIn(("10.0.0.201", 9000 + NODES), result[0].peers)

    def test_churn(self) -> None:
        """
        After a fifth of the nodes crash and new ones join, lookups still
        end on the true k closest live nodes, and dead contacts are evicted.
        """
        grid = self.grid
        for n in grid.rng.sample(range(NODES), NODES // 5):
            grid.crash(n)
        for _ in range(20):
            grid.add()
        self.check_lookups(10)
        dead_before = grid.dead_contacts()
        run_for(grid.clock, 20 * 60)
        self.check_lookups(10)
        dead_after = grid.dead_contacts()
        self.assertLess(dead_after, dead_before / 3, (dead_before, dead_after))


class JoinTests(SynchronousTestCase):
    """A node that joins fills its routing table at once, a few refreshes at a time."""

    def setUp(self) -> None:
        self.grid = Grid(seed=5)
        self.addCleanup(self.grid.stop)
        for _ in range(100):
            self.grid.add()
        run_for(self.grid.clock, 10)

    def test_table_full_after_join(self) -> None:
        """
        Right after joining, every bucket of a new node holds all the
        contacts it could: k, or every live node in its range.
        """
        for _ in range(3):
            service = self.grid.add(settle=30)
            table = service.routing_table
            assert table is not None
            held = [len(b.contacts) for b in table.buckets]
            possible = [self.grid.room(service, b) for b in table.buckets]
            self.assertEqual(held, possible)
            self.assertGreater(len(held), 3)

    def test_join_refreshes_bounded(self) -> None:
        """
        The join refreshes only ranges not full, each once, at most
        JOIN_REFRESHES at a time; nothing more follows in the next minutes.
        """
        calls: list[tuple[float, int, int]] = []
        in_flight = [0, 0]

        def watch(service: DHTService) -> None:
            original = service.find_node

            def find_node(target: bytes) -> Deferred[LookupResult]:
                table = service.routing_table
                assert table is not None and service.node_id is not None
                bits = distance(target, service.node_id).bit_length()
                held = table.count_between(*table.distance_range(bits))
                calls.append((self.grid.clock.seconds(), bits, held))
                in_flight[0] += 1
                in_flight[1] = max(in_flight)

                def done(result: LookupResult) -> LookupResult:
                    in_flight[0] -= 1
                    return result

                return original(target).addCallback(done)

            self.patch(service, "find_node", find_node)

        started = self.grid.clock.seconds()
        self.grid.add(settle=10 * 60, before_start=watch)
        self.assertGreater(len(calls), JOIN_REFRESHES)
        self.assertTrue(all(held < K for _, _, held in calls), calls)
        self.assertEqual(len({bits for _, bits, _ in calls}), len(calls))
        self.assertLess(max(when for when, _, _ in calls) - started, 10)
        self.assertEqual(in_flight, [0, JOIN_REFRESHES])
