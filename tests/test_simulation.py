"""Tests for bitfitech.simulation: many real gossips over simulated links.

Small networks (30 nodes) run the real gossip, protocol and ledger over
links with latency, jitter and loss, through churn and a partition, and
must end with every event everywhere and one state hash.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from bitfitech.market.interfaces import IEventStore
from bitfitech.simulation import (
    START,
    PartitionResult,
    SimConfig,
    SimStore,
    Simulation,
    SpreadResult,
    measure_churn,
    measure_partition,
    measure_spread,
    percentile,
    random_graph,
)

LOSSY = SimConfig(nodes=30, degree=6, latency=0.03, jitter=0.02, loss=0.05, seed=7)


def run(
    config: SimConfig,
) -> tuple[SpreadResult, PartitionResult, list[str], list[tuple[str, int]]]:
    """A spread and a healed partition on a new network: every result, and the hashes."""
    sim = Simulation(config)
    sim.start()
    spread = measure_spread(sim, 10, 0.1)
    partition = measure_partition(sim, 10, duration=3.0, limit=40.0)
    return spread, partition, sorted(sim.state_hashes()), sim.misbehaviour()


class TopologyTests(SynchronousTestCase):
    def test_random_graph(self) -> None:
        """The graph is connected, has no self-links, and nearly every node has the degree."""
        edges = random_graph(200, 8, random.Random(3))
        degrees = [0] * 200
        for a, b in edges:
            self.assertLess(a, b)
            degrees[a] += 1
            degrees[b] += 1
        self.assertLessEqual(max(degrees), 8)
        self.assertGreaterEqual(sum(d == 8 for d in degrees), 195)

    def test_small_graph(self) -> None:
        """Fewer nodes than the degree: every node links to every other."""
        self.assertEqual(random_graph(4, 8, random.Random(0)), {
            (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)})  # fmt: skip

    def test_percentile(self) -> None:
        self.assertEqual(percentile([3.0, 1.0, 2.0, 4.0], 0.5), 2.0)
        self.assertEqual(percentile([3.0, 1.0, 2.0, 4.0], 0.99), 4.0)


class NetworkTests(SynchronousTestCase):
    def test_store_is_an_event_store(self) -> None:
        sim = Simulation(SimConfig(nodes=2))
        self.assertIsInstance(sim.nodes[0].store, SimStore)
        self.assertTrue(verifyObject(IEventStore, sim.nodes[0].store))

    def test_links_come_up(self) -> None:
        """Every link of the topology finishes the real handshake."""
        sim = Simulation(SimConfig(nodes=20, degree=4, latency=0.05))
        self.assertEqual(sim.now, START)
        sim.start()
        for n in range(20):
            self.assertEqual(sim.linked(n), len(sim.neighbours(n)))

    def test_leave_and_rejoin(self) -> None:
        """A node that left misses events; back, anti-entropy brings it all."""
        sim = Simulation(SimConfig(nodes=12, degree=4, seed=2))
        sim.start()
        sim.leave(5)
        sim.run_for(1.0)
        for n in sim.neighbours(5):
            self.assertEqual(sim.linked(n), len(sim.neighbours(n)) - 1)
        events = [sim.publish(n) for n in (0, 1, 2)]
        sim.run_for(2.0)
        self.assertFalse(any(sim.nodes[5].store.has(e.id) for e in events))
        sim.rejoin(5)
        sim.run_for(1.0)
        self.assertTrue(all(sim.nodes[5].store.has(e.id) for e in events))
        self.assertEqual(len(sim.state_hashes()), 1)


class ConvergenceTests(SynchronousTestCase):
    def test_lossy_network_converges(self) -> None:
        """
        30 nodes, 5% loss: every event reaches every node, and after a
        healed partition every node holds every event and one state hash.
        """
        spread, partition, hashes, misbehaviour = run(LOSSY)
        self.assertEqual(spread.coverage, 1.0)
        self.assertEqual(spread.reached_all, 1.0)
        self.assertTrue(partition.sides_converged)
        self.assertTrue(partition.converged)
        self.assertTrue(partition.equal_hashes)
        self.assertEqual(len(hashes), 1)
        self.assertEqual(misbehaviour, [])

    def test_deterministic(self) -> None:
        """The same seed gives the same run, to the last figure and hash."""
        self.assertEqual(run(LOSSY), run(LOSSY))

    def test_signatures_checked(self) -> None:
        """With real verification the run is the same as without."""
        self.assertEqual(run(LOSSY), run(SimConfig(**{**LOSSY.__dict__, "verify": True})))

    def test_churn(self) -> None:
        """Nodes that leave and come back catch up; in the end everyone holds everything."""
        sim = Simulation(LOSSY)
        sim.start()
        result = measure_churn(sim, 10, 0.2, 0.2, 1.0)
        self.assertEqual(result.left, 6)
        self.assertEqual(result.coverage, 1.0)
        self.assertEqual(result.caught_up, 1.0)
        self.assertEqual(result.spread.coverage, 1.0)
        self.assertEqual(len(sim.state_hashes()), 1)
