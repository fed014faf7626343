"""Tests for :mod:`bitfitech.discovery.kademlia.lookup`, against a scripted network."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.discovery.kademlia.ids import distance, int_to_id
from bitfitech.discovery.kademlia.krpc import (
    NodeInfo,
    Query,
    Response,
    decode_message,
    encode_message,
)
from bitfitech.discovery.kademlia.lookup import MAX_IN_FLIGHT, TRIES, Lookup, LookupResult
from bitfitech.discovery.kademlia.protocol import DHTProtocol, QueryTimeout, RemoteError
from bitfitech.discovery.kademlia.routing import RoutingTable
from bitfitech.discovery.kademlia.store import PeerStore, TokenIssuer
from bitfitech.testing import RecordingUDPTransport, run_for


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
        Nodes that time out at every try are passed over; the lookup ends on
        the k closest live ones.
        """
        target = int_to_id(self.rng.getrandbits(160))
        dead = self.network.true_closest(target, 4)
        self.network.dead = set(dead)
        seeds = self.rng.sample(self.network.nodes, 3)
        result = self.successResultOf(self.lookup(target, seeds).run())
        self.assertEqual([n.node_id for n in result.closest], self.network.true_closest(target))
        self.assertEqual([self.network.asked[i] for i in dead], [TRIES] * 4)
        self.assertGreaterEqual(result.failures, 4 * TRIES)
        self.assertGreaterEqual(result.retries, 4 * (TRIES - 1))

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
        """If every query times out the lookup still ends, with no nodes, each asked TRIES times."""
        self.network.dead = {n.node_id for n in self.network.nodes}
        result = self.successResultOf(self.lookup(b"x" * 20, self.network.nodes[:20]).run())
        self.assertEqual(result.closest, [])
        self.assertEqual(
            (result.queries, result.failures, result.retries),
            (20 * TRIES, 20 * TRIES, 20 * (TRIES - 1)),
        )


class TimedNetwork:
    """
    A :class:`ScriptedNetwork` on a Clock, as the protocol shows it to a
    lookup: an answer fires C{rtt} seconds after the query (or C{delay[id]}
    for a slow node); a query the scripted network would time out (a node
    in C{dead}, or one of its C{lost} queries) fails with QueryTimeout at
    C{timeout} seconds, as the protocol's full timeout does.

    :ivar sent: ``(time, node id)`` of every query, in order.
    :ivar awaiting: the queries not answered or timed out yet, by number.
    """

    def __init__(
        self, scripted: ScriptedNetwork, clock: Clock, *, rtt: float = 0.1, timeout: float = 2.0
    ) -> None:
        self.scripted = scripted
        self.clock = clock
        self.rtt = rtt
        self.timeout = timeout
        self.delay: dict[bytes, float] = {}
        self.sent: list[tuple[float, bytes]] = []
        self.awaiting: dict[int, tuple[float, bytes]] = {}

    def send(self, node: NodeInfo, target: bytes) -> Deferred[Response]:
        number = len(self.sent)
        now = self.clock.seconds()
        self.sent.append((now, node.node_id))
        self.awaiting[number] = (now, node.node_id)
        reply = self.scripted.reply(node, target)
        self.scripted.asked[node.node_id] += 1
        d: Deferred[Response] = Deferred()
        if isinstance(reply, QueryTimeout):
            delay = self.timeout
        else:
            delay = self.delay.get(node.node_id, self.rtt)
        self.clock.callLater(delay, self._fire, number, d, reply)
        return d

    def _fire(self, number: int, d: Deferred[Response], reply: Response | Exception) -> None:
        del self.awaiting[number]
        if isinstance(reply, Exception):
            d.errback(reply)
        else:
            d.callback(reply)

    def asked(self, node_id: bytes) -> int:
        """Queries sent to C{node_id} so far."""
        return sum(1 for _, sent_to in self.sent if sent_to == node_id)


STALL = 0.25


class StallTests(SynchronousTestCase):
    """
    Stall timeouts: a query unanswered after its stall timeout stops
    counting against alpha, and may still be answered until the full one.
    """

    def setUp(self) -> None:
        self.scripted = ScriptedNetwork(120)
        self.clock = Clock()
        self.network = TimedNetwork(self.scripted, self.clock)
        self.rng = random.Random(11)
        self.target = int_to_id(self.rng.getrandbits(160))

    def lookup(self, seeds: list[NodeInfo], **kwargs: Any) -> Lookup:
        return Lookup(
            self.target,
            seeds,
            lambda n: self.network.send(n, self.target),
            clock=self.clock,
            stall_after=lambda n: STALL,
            **kwargs,
        )

    def node(self, node_id: bytes) -> NodeInfo:
        return next(n for n in self.scripted.nodes if n.node_id == node_id)

    def run_to_end(self, d: Deferred[LookupResult]) -> tuple[LookupResult, float]:
        """
        Advance the fake clock in small steps until C{d} fires; the result
        and the fake clock's time it took (simulated: never wall-clock time).
        """
        start = self.clock.seconds()
        while not d.called:
            run_for(self.clock, 0.01)
            self.assertLess(self.clock.seconds() - start, 60.0, "the lookup never ended")
        return self.successResultOf(d), self.clock.seconds() - start

    def test_stall_sends_another_query(self) -> None:
        """
        With one query allowed in flight, a silent node holds it only until
        its stall timeout: another query goes out then, not at the full
        timeout, while the first is still awaited.
        """
        dead = self.scripted.true_closest(self.target, 1)[0]
        self.scripted.dead = {dead}
        seeds = [self.node(dead)] + self.rng.sample(self.scripted.nodes, 3)
        d = self.lookup(seeds, alpha=1).run()
        self.assertEqual(self.network.sent, [(0.0, dead)])
        run_for(self.clock, STALL - 0.01)
        self.assertEqual(len(self.network.sent), 1)
        run_for(self.clock, 0.01)
        self.assertEqual(len(self.network.sent), 2)
        self.assertEqual(len(self.network.awaiting), 2)
        result, simulated = self.run_to_end(d)
        self.assertEqual(
            [n.node_id for n in result.closest], self.scripted.true_closest(self.target)
        )
        self.assertEqual(self.network.asked(dead), TRIES)
        self.assertGreaterEqual(result.stalls, TRIES)

    def test_node_in_doubt_gives_way(self) -> None:
        """
        A node whose query stalled no longer holds a place among the k
        nearest: the next candidate is asked meanwhile, and the dead node
        is asked again in its turn, up to TRIES queries.  The lookup does
        not wait for the full timeouts.
        """
        closest = self.scripted.true_closest(self.target, 9)
        dead = closest[0]
        self.scripted.dead = {dead}
        seeds = [self.node(i) for i in closest]
        d = self.lookup(seeds, k=8).run()
        # The 8 nearest seeds are asked first, 3 at a time; the ninth is
        # asked only once the dead one stalls.
        run_for(self.clock, STALL - 0.01)
        self.assertNotIn(closest[8], [i for _, i in self.network.sent])
        result, simulated = self.run_to_end(d)
        self.assertEqual([n.node_id for n in result.closest], closest[1:9])
        # ... and it was, before the dead node's last try stalled.
        ninth = min(t for t, i in self.network.sent if i == closest[8])
        self.assertLess(ninth, TRIES * STALL)
        self.assertEqual(self.network.asked(dead), TRIES)
        self.assertLess(simulated, self.network.timeout)
        self.assertEqual(result.stalls, TRIES)

    def test_lost_query_retried_at_stall(self) -> None:
        """
        A node whose first query was lost is asked again at its stall
        timeout and ends among the nearest, long before the full timeout.
        """
        closest = self.scripted.true_closest(self.target)
        self.scripted.lost[closest[0]] = 1
        d = self.lookup([self.node(i) for i in closest]).run()
        result, simulated = self.run_to_end(d)
        self.assertEqual([n.node_id for n in result.closest], closest)
        self.assertEqual(self.network.asked(closest[0]), 2)
        self.assertEqual((result.stalls, result.retries, result.late), (1, 1, 0))
        self.assertLess(simulated, 1.0)

    def test_late_answer_used(self) -> None:
        """
        A slow node's answer to a stalled query, arriving while its retry
        is in flight, is used: the node is among the nearest.
        """
        closest = self.scripted.true_closest(self.target)
        slow = closest[0]
        self.network.delay[slow] = STALL * 1.5
        d = self.lookup([self.node(i) for i in closest]).run()
        result, _ = self.run_to_end(d)
        self.assertEqual([n.node_id for n in result.closest], closest)
        self.assertEqual(self.network.asked(slow), 2)
        self.assertEqual((result.stalls, result.late), (1, 1))
        self.assertIn(slow, result.tokens)

    def test_late_answer_of_dropped_node_used(self) -> None:
        """
        A node dropped when its last query stalled comes back when its
        answer arrives while the lookup still runs.
        """
        closest = self.scripted.true_closest(self.target, 9)
        slow = closest[0]
        self.network.delay[slow] = 0.6
        d = self.lookup([self.node(i) for i in closest], alpha=1, tries=1).run()
        run_for(self.clock, STALL + 0.01)
        self.assertEqual(len(self.network.sent), 2)  # the next one went out
        result, _ = self.run_to_end(d)
        self.assertEqual([n.node_id for n in result.closest], closest[:8])
        self.assertEqual((result.stalls, result.late), (1, 1))
        self.assertEqual(self.network.asked(slow), 1)
        self.assertIn(slow, result.tokens)

    def test_in_flight_bounded(self) -> None:
        """
        When every node is silent, at most alpha queries are ever in flight
        and not stalled, at most max_in_flight in all; every candidate is
        asked TRIES times and the lookup ends, empty.
        """
        self.scripted.dead = {n.node_id for n in self.scripted.nodes}
        seeds = self.scripted.nodes[:30]
        d = self.lookup(seeds).run()
        peak = 0
        while not d.called:
            now = self.clock.seconds()
            fresh = [t for t, _ in self.network.awaiting.values() if now - t < STALL - 1e-9]
            self.assertLessEqual(len(fresh), 3)
            self.assertLessEqual(len(self.network.awaiting), MAX_IN_FLIGHT)
            peak = max(peak, len(self.network.awaiting))
            run_for(self.clock, 0.01)
        result = self.successResultOf(d)
        self.assertEqual(peak, MAX_IN_FLIGHT)
        self.assertEqual(result.peak_in_flight, MAX_IN_FLIGHT)
        self.assertEqual(result.closest, [])
        self.assertEqual(result.queries, 30 * TRIES)

    def test_no_timer_left(self) -> None:
        """When a lookup ends, none of its stall timers is left on the clock."""
        d = self.lookup(self.rng.sample(self.scripted.nodes, 3)).run()
        self.run_to_end(d)
        run_for(self.clock, self.network.timeout)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deterministic(self) -> None:
        """Two lookups on the same fake network and clock send the same queries."""
        runs = []
        for _ in range(2):
            self.setUp()
            self.scripted.dead = set(self.scripted.true_closest(self.target, 3)[::2])
            seeds = self.rng.sample(self.scripted.nodes, 3)
            result, simulated = self.run_to_end(self.lookup(seeds).run())
            runs.append((self.network.sent, result, simulated))
        self.assertEqual(runs[0], runs[1])


OWN = int_to_id(1)
LIVE = int_to_id((1 << 159) + 7)
SILENT = int_to_id((1 << 159) + 5)
LIVE_AT = ("10.0.0.2", 6881)
SILENT_AT = ("10.0.0.3", 6881)


class OverProtocolTests(SynchronousTestCase):
    """
    A lookup through a real :class:`DHTProtocol` and :class:`RoutingTable`
    on a Clock: stalls are no failures; a query unanswered at the full
    timeout is one; a slow answer is none, and is measured.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.routing = RoutingTable(OWN, 0.0, stall_initial=0.5)
        self.protocol = DHTProtocol(
            self.clock,
            OWN,
            self.routing,
            PeerStore(),
            TokenIssuer(0.0),
            rng=random.Random(0),
            query_timeout=2.0,
        )
        self.transport = RecordingUDPTransport("10.0.0.1", 6881)
        self.protocol.makeConnection(self.transport)
        for node_id, address in ((LIVE, LIVE_AT), (SILENT, SILENT_AT)):
            self.routing.heard_from(node_id, address, 0.0, responded=True)
        run_for(self.clock, 10.0)
        self.start = self.clock.seconds()

    def lookup(self) -> Deferred[LookupResult]:
        seeds = [NodeInfo(LIVE, *LIVE_AT), NodeInfo(SILENT, *SILENT_AT)]
        return Lookup(
            SILENT,
            seeds,
            lambda n: self.protocol.find_node(n.address, SILENT, n.node_id),
            exclude=OWN,
            clock=self.clock,
            stall_after=lambda n: self.routing.stall_timeout(n.node_id),
        ).run()

    def queries_to(self, address: tuple[str, int]) -> list[Query]:
        """The queries sent to C{address} since the last call (all are read)."""
        sent = [(decode_message(data), to) for data, to in self.transport.clear()]
        self.pending = [q for q, to in sent if to != address] + getattr(self, "pending", [])
        return [q for q, to in sent if to == address and isinstance(q, Query)]

    def answer(self, query: Query, after: float) -> None:
        """Have LIVE answer C{query} C{after} seconds from now."""
        data = encode_message(Response(query.transaction, LIVE, ()))
        self.clock.callLater(after, self.protocol.datagramReceived, data, LIVE_AT)

    def failures(self, node_id: bytes) -> int | None:
        contact = self.routing.get(node_id)
        return contact.failures if contact is not None else None

    def test_silent_node_one_failure_per_query_at_full_timeout(self) -> None:
        """
        The lookup gives a silent node up after its stalls, long before the
        full timeout, without counting them as failures; each of its
        queries counts one failure at the full timeout (two evict it).
        """
        d = self.lookup()
        for query in self.queries_to(LIVE_AT):
            self.answer(query, 0.1)
        # Stalls after 0.5 s (no round trip known yet), then after 0.3 s
        # (LIVE's 0.1 s answer measured: 0.1 + 4 * 0.05).
        run_for(self.clock, 0.5 + (TRIES - 1) * 0.3)
        result = self.successResultOf(d)
        self.assertEqual([n.node_id for n in result.closest], [LIVE])
        self.assertEqual(result.stalls, TRIES)
        self.assertEqual(self.failures(SILENT), 0)
        run_for(self.clock, self.start + 2.0 - 0.01 - self.clock.seconds())
        self.assertEqual(self.failures(SILENT), 0)
        run_for(self.clock, 0.01)
        self.assertEqual(self.failures(SILENT), 1)
        self.assertEqual(self.protocol.counters["timeouts"], 1)
        run_for(self.clock, 0.5)
        self.assertIsNone(self.failures(SILENT))

    def test_slow_answer_no_failure(self) -> None:
        """
        An answer after the stall timeout is used, counts no failure, and
        is measured: the node's stall timeout then follows its round trip.
        """
        d = self.lookup()
        [first] = self.queries_to(LIVE_AT)
        self.answer(first, 0.8)
        run_for(self.clock, 0.5)
        [retry] = self.queries_to(LIVE_AT)  # asked again at the stall
        self.answer(retry, 0.8)
        run_for(self.clock, 5.0)
        result = self.successResultOf(d)
        self.assertIn(LIVE, [n.node_id for n in result.closest])
        self.assertGreaterEqual(result.late, 1)
        self.assertEqual(self.failures(LIVE), 0)
        contact = self.routing.get(LIVE)
        assert contact is not None
        self.assertEqual(contact.round_trip.samples, 2)
        self.assertAlmostEqual(contact.round_trip.srtt or 0.0, 0.8)
        self.assertEqual(self.routing.stall_timeout(LIVE), 1.0)  # 0.8 + 4 * 0.4, at the ceiling

    def test_lost_query_no_failure(self) -> None:
        """
        A first query lost, its retry answered: when the first times out the
        node has answered since it was sent, and no failure counts.
        """
        d = self.lookup()
        self.queries_to(LIVE_AT)  # lost
        run_for(self.clock, 0.5)
        [retry] = self.queries_to(LIVE_AT)
        self.answer(retry, 0.1)
        run_for(self.clock, 5.0)
        result = self.successResultOf(d)
        self.assertIn(LIVE, [n.node_id for n in result.closest])
        self.assertEqual(self.protocol.counters["timeouts"], 1 + TRIES)  # the lost one, SILENT's
        self.assertEqual(self.failures(LIVE), 0)
        self.assertTrue(self.routing.get(LIVE).is_good(self.clock.seconds()))  # type: ignore[union-attr]
