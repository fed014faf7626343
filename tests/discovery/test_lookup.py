"""Tests for :mod:`bitfitech.discovery.kademlia.lookup`, against a scripted network."""

from __future__ import annotations

import random
from collections import Counter

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.discovery.kademlia.ids import distance, int_to_id
from bitfitech.discovery.kademlia.krpc import NodeInfo, Response
from bitfitech.discovery.kademlia.lookup import Lookup
from bitfitech.discovery.kademlia.protocol import QueryTimeout, RemoteError
from bitfitech.discovery.kademlia.routing import RoutingTable


class ScriptedNetwork:
    """
    Nodes with full routing tables, answering synchronously or on demand.

    A node in C{dead} always times out; one in C{lost} times out as many
    times as the count it maps to, then answers; one in C{refusing}
    answers with an error.
    """

    def __init__(self, count: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.nodes = [
            NodeInfo(int_to_id(rng.getrandbits(160)), f"10.0.{n // 250}.{n % 250 + 1}", 6881)
            for n in range(count)
        ]
        self.tables = {}
        for node in self.nodes:
            table = RoutingTable(node.node_id, 0.0)
            for other in self.nodes:
                table.heard_from(other.node_id, other.address, 0.0, responded=True)
            self.tables[node.node_id] = table
        self.dead: set[bytes] = set()
        self.lost: Counter[bytes] = Counter()
        self.refusing: set[bytes] = set()
        self.asked: Counter[bytes] = Counter()
        self.held: list[tuple[Response | Exception, Deferred[Response]]] = []
        self.hold = False
        self.peers: dict[bytes, tuple[tuple[str, int], ...]] = {}

    def send(self, node: NodeInfo, target: bytes) -> Deferred[Response]:
        self.asked[node.node_id] += 1
        reply = self.reply(node, target)
        if self.hold:
            d: Deferred[Response] = Deferred()
            self.held.append((reply, d))
            return d
        if isinstance(reply, Exception):
            return fail(reply)
        return succeed(reply)

    def reply(self, node: NodeInfo, target: bytes) -> Response | Exception:
        if node.node_id in self.dead:
            return QueryTimeout("dead")
        if self.lost[node.node_id] > 0:
            self.lost[node.node_id] -= 1
            return QueryTimeout("lost")
        if node.node_id in self.refusing:
            return RemoteError(202, "server error")
        nodes = tuple(
            NodeInfo(c.node_id, c.host, c.port) for c in self.tables[node.node_id].closest(target)
        )
        return Response(b"t", node.node_id, nodes, self.peers.get(node.node_id, ()), b"tok")

    def release(self) -> None:
        """Fire the oldest held reply (or timeout)."""
        reply, d = self.held.pop(0)
        if isinstance(reply, Exception):
            d.errback(reply)
        else:
            d.callback(reply)

    def true_closest(self, target: bytes, k: int = 8) -> list[bytes]:
        live = [n.node_id for n in self.nodes if n.node_id not in self.dead]
        return sorted(live, key=lambda i: distance(i, target))[:k]


class LookupTests(SynchronousTestCase):
    """Tests for :class:`Lookup`."""

    def setUp(self) -> None:
        self.network = ScriptedNetwork(120)
        self.rng = random.Random(7)

    def lookup(self, target: bytes, seeds: list[NodeInfo]) -> Lookup:
        return Lookup(target, seeds, lambda n: self.network.send(n, target))

    def test_converges_on_k_closest(self) -> None:
        """From a few far seeds, the lookup ends on the true k closest."""
        for _ in range(10):
            target = int_to_id(self.rng.getrandbits(160))
            seeds = self.rng.sample(self.network.nodes, 3)
            result = self.successResultOf(self.lookup(target, seeds).run())
            self.assertEqual([n.node_id for n in result.closest], self.network.true_closest(target))
            self.assertGreaterEqual(result.rounds, 1)
            self.assertEqual(result.queries, result.responses)
            self.assertEqual(set(result.tokens), {n.node_id for n in result.closest})

    def test_nearest_depth(self) -> None:
        """
        The nearest node's depth counts the hops to it: 1 when it is a
        seed, more when a seed only leads to it; never more than the rounds.
        """
        target = int_to_id(self.rng.getrandbits(160))
        nearest = self.network.true_closest(target, 1)[0]
        seed = next(n for n in self.network.nodes if n.node_id == nearest)
        result = self.successResultOf(self.lookup(target, [seed]).run())
        self.assertEqual(result.nearest_depth, 1)
        far = max(self.network.nodes, key=lambda n: distance(n.node_id, target))
        result = self.successResultOf(self.lookup(target, [far]).run())
        self.assertEqual(result.closest[0].node_id, nearest)
        self.assertGreater(result.nearest_depth, 1)
        self.assertLessEqual(result.nearest_depth, result.rounds)

    def test_dead_nodes_skipped(self) -> None:
        """
        Nodes that time out twice are passed over; the lookup ends on the k
        closest live ones.
        """
        target = int_to_id(self.rng.getrandbits(160))
        dead = self.network.true_closest(target, 4)
        self.network.dead = set(dead)
        seeds = self.rng.sample(self.network.nodes, 3)
        result = self.successResultOf(self.lookup(target, seeds).run())
        self.assertEqual([n.node_id for n in result.closest], self.network.true_closest(target))
        self.assertEqual([self.network.asked[i] for i in dead], [2, 2, 2, 2])
        self.assertGreaterEqual(result.failures, 8)
        self.assertGreaterEqual(result.retries, 4)

    def test_timeout_retried(self) -> None:
        """
        A node whose reply was lost once is asked again, and the lookup
        still ends on the true k closest, that node among them.
        """
        target = int_to_id(self.rng.getrandbits(160))
        closest = self.network.true_closest(target)
        for node_id in closest[:3]:
            self.network.lost[node_id] = 1
        seeds = self.rng.sample(self.network.nodes, 3)
        result = self.successResultOf(self.lookup(target, seeds).run())
        self.assertEqual([n.node_id for n in result.closest], closest)
        self.assertEqual([self.network.asked[i] for i in closest[:3]], [2, 2, 2])
        self.assertEqual((result.failures, result.retries), (3, 3))
        self.assertEqual(result.queries, result.responses + result.failures)
        self.assertEqual(set(result.tokens), set(closest))

    def test_no_retry_when_told(self) -> None:
        """With tries=1 a single timeout drops the node, as an error always does."""
        target = int_to_id(self.rng.getrandbits(160))
        nearest = self.network.true_closest(target, 2)
        self.network.lost[nearest[0]] = 1
        self.network.refusing.add(nearest[1])
        seeds = self.rng.sample(self.network.nodes, 3)
        lookup = Lookup(target, seeds, lambda n: self.network.send(n, target), tries=1)
        result = self.successResultOf(lookup.run())
        found = [n.node_id for n in result.closest]
        self.assertNotIn(nearest[0], found)
        self.assertNotIn(nearest[1], found)
        self.assertEqual([self.network.asked[i] for i in nearest], [1, 1])
        self.assertEqual(result.retries, 0)

    def test_error_not_retried(self) -> None:
        """A node that answers with an error is asked once, then passed over."""
        target = int_to_id(self.rng.getrandbits(160))
        nearest = self.network.true_closest(target, 1)[0]
        self.network.refusing.add(nearest)
        seeds = self.rng.sample(self.network.nodes, 3)
        result = self.successResultOf(self.lookup(target, seeds).run())
        self.assertNotIn(nearest, [n.node_id for n in result.closest])
        self.assertEqual(self.network.asked[nearest], 1)
        self.assertEqual(result.retries, 0)

    def test_retries_within_alpha(self) -> None:
        """
        Retries wait their turn: at most alpha queries are ever outstanding,
        counting them, while timed-out nodes are asked again.
        """
        self.network.hold = True
        target = int_to_id(self.rng.getrandbits(160))
        closest = self.network.true_closest(target)
        for node_id in closest:
            self.network.lost[node_id] = 1
        d = self.lookup(target, self.network.nodes[:10]).run()
        while self.network.held:
            self.assertLessEqual(len(self.network.held), 3)
            self.network.release()
        result = self.successResultOf(d)
        self.assertEqual([n.node_id for n in result.closest], closest)
        self.assertEqual(result.retries, 8)

    def test_alpha_in_flight(self) -> None:
        """At most alpha queries are ever outstanding, and the lookup still converges."""
        self.network.hold = True
        target = int_to_id(self.rng.getrandbits(160))
        seeds = self.network.nodes[:10]
        d = self.lookup(target, seeds).run()
        hops = 0
        while self.network.held:
            self.assertLessEqual(len(self.network.held), 3)
            self.network.release()
            hops += 1
        result = self.successResultOf(d)
        self.assertEqual(result.queries, hops)
        self.assertEqual([n.node_id for n in result.closest], self.network.true_closest(target))

    def test_peers_collected(self) -> None:
        """Peers from all replies are gathered once each."""
        target = int_to_id(self.rng.getrandbits(160))
        for node in self.network.nodes:
            self.network.peers[node.node_id] = (("10.9.0.1", 9000), ("10.9.0.2", 9000))
        result = self.successResultOf(self.lookup(target, self.network.nodes[:3]).run())
        self.assertEqual(result.peers, [("10.9.0.1", 9000), ("10.9.0.2", 9000)])
        self.assertEqual(len(result.announce_targets()), 8)

    def test_no_seeds(self) -> None:
        """Without seeds the lookup ends at once, empty."""
        result = self.successResultOf(Lookup(b"x" * 20, [], lambda n: fail(Exception())).run())
        self.assertEqual((result.closest, result.queries, result.rounds), ([], 0, 0))
        self.assertEqual(result.nearest_depth, 0)

    def test_all_fail(self) -> None:
        """If every query times out the lookup still ends, with no nodes, each asked twice."""
        self.network.dead = {n.node_id for n in self.network.nodes}
        result = self.successResultOf(self.lookup(b"x" * 20, self.network.nodes[:20]).run())
        self.assertEqual(result.closest, [])
        self.assertEqual((result.queries, result.failures, result.retries), (40, 40, 20))
