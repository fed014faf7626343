"""Iterative lookups: walking the DHT towards a target, α queries at a time.

Data path: the service starts a :class:`Lookup` seeded with the contacts of
its routing table nearest the target; the lookup sends ``find_node`` or
``get_peers`` queries through the protocol (any callable returning a
Deferred reply will do) and collects the nodes, peers and tokens of the
replies into a :class:`LookupResult`, from which the service announces.

The algorithm (Kademlia, as BEP 5 uses it): keep the candidates sorted by
XOR distance to the target; keep up to ``alpha`` queries in flight to the
nearest candidates not yet asked among the ``k`` nearest that have not
failed; a reply adds the nodes it names.  The lookup ends when the ``k``
nearest live candidates have all answered and no query is in flight.

A query that stalls (no answer after its *stall timeout*, adaptive per
node: see :meth:`~bitfitech.discovery.kademlia.routing.RoutingTable.stall_timeout`)
stops counting against ``alpha``, so another query goes out, as
libtorrent's "short timeout" does; it may still be answered until the
protocol's full timeout, and a late answer is used as any other.  A stall
may be one lost datagram, or a dead node: the candidate is *in doubt*.
It no longer holds a place among the ``k`` nearest (the next candidate
enters them and is asked meanwhile), and it is asked again in its turn,
with the same stall timeout (``tries`` queries in all; each query is a
transaction of its own and none is abandoned, so a back-off would only
add delay).  When its last query stalls too, it is dropped unless a late
answer comes; an error, or a timeout of its last query, marks it failed.
The lookup does not end while a candidate in doubt nearer than the
``k``-th live one still has a query to send or one not stalled.  Without
a clock (or a stall timeout) queries never stall, and a timeout plays
the part of the stall.

Bounds: at most ``alpha`` queries not yet stalled, and at most
``max_in_flight`` queries awaiting an answer, stalled ones included (the
worst case, reached when most nodes asked are silent; without that bound
it would be ``alpha`` times the full timeout over the least stall
timeout).  A candidate is asked at most ``tries`` times.

Each candidate has a *depth*: 1 for a seed, and one more than the node
that named it.  :attr:`LookupResult.rounds` is the greatest depth queried:
the number of sequential round trips the lookup needed, whatever the
concurrency.  Candidates are bounded (``max_candidates``, the farthest
dropped first), and so are the peers collected.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from .ids import distance
from .krpc import Address, NodeInfo, Response
from .protocol import QueryTimeout
from .routing import K

ALPHA = 3
"""Queries a lookup keeps in flight."""

MAX_CANDIDATES = 128
"""Most candidates a lookup remembers."""

MAX_PEERS_FOUND = 1000
"""Most peers a ``get_peers`` lookup collects."""

TRIES = 3
"""Queries a node gets in one lookup before stalls or timeouts drop it."""

MAX_IN_FLIGHT = 16
"""Most queries of one lookup awaiting an answer, stalled ones included."""

# A candidate is _NEW until asked (and again after a stall, while it has
# tries left), _PENDING while its latest query is in flight and not
# stalled, _SILENT when its last try stalled (dropped; a late answer still
# makes it _ANSWERED), _FAILED after an error or when its last query timed
# out.  Its ``stalled`` flag marks it in doubt (see the module docstring).
_NEW, _PENDING, _SILENT, _ANSWERED, _FAILED = range(5)


@dataclass
class LookupResult:
    """
    What a lookup found, and what it cost.

    :ivar target: the id or info-hash looked up.
    :ivar closest: up to ``k`` nodes nearest the target that answered,
        nearest first.
    :ivar tokens: the ``get_peers`` token of each answering node, by id.
    :ivar peers: the peers (``(host, port)``) that replies listed, in the
        order first seen, without repeats.
    :ivar rounds: the greatest depth queried (see the module docstring).
    :ivar nearest_depth: the depth of the nearest node that answered (0 if
        none did): the round trips it took to reach it.
    :ivar queries: queries sent.
    :ivar responses: queries answered.
    :ivar failures: queries that timed out or got an error.
    :ivar retries: queries sent again to a node after a stall or a timeout
        (counted in C{queries} too).
    :ivar stalls: queries that passed their stall timeout unanswered
        (answered late, or timed out, later).
    :ivar late: answers that came after their query stalled.
    :ivar peak_in_flight: the most queries awaiting an answer at once,
        stalled ones included.
    """

    target: bytes
    closest: list[NodeInfo] = field(default_factory=list)
    tokens: dict[bytes, bytes] = field(default_factory=dict)
    peers: list[Address] = field(default_factory=list)
    rounds: int = 0
    nearest_depth: int = 0
    queries: int = 0
    responses: int = 0
    failures: int = 0
    retries: int = 0
    stalls: int = 0
    late: int = 0
    peak_in_flight: int = 0

    def announce_targets(self) -> list[tuple[NodeInfo, bytes]]:
        """The nearest answering nodes that gave a token, with their token."""
        return [(n, self.tokens[n.node_id]) for n in self.closest if n.node_id in self.tokens]


@dataclass(eq=False)
class _Candidate:
    node: NodeInfo
    distance: int
    depth: int
    state: int = _NEW
    tries: int = 0
    timer: IDelayedCall | None = None
    stalled: bool = False


class Lookup:
    """
    One iterative lookup; call :meth:`run` once.

    :param target: the id (``find_node``) or info-hash (``get_peers``).
    :param seeds: the nodes to start from.
    :param send: sends the query to a node and returns its reply's Deferred
        (failing with :class:`~bitfitech.discovery.kademlia.protocol.QueryTimeout`
        when no reply came).
    :param tries: queries a node gets before stalls or timeouts drop it
        (1: no retry).
    :param clock: times the stall timeouts; without it queries never stall.
    :param stall_after: the stall timeout of a query to a node, in
        seconds (without it queries never stall).
    :param max_in_flight: most queries awaiting an answer, stalled ones
        included (at least C{alpha}).
    :param family: 4 or 6: the lookup goes through the nodes of that
        family's DHT, read from answers' ``nodes`` or ``nodes6`` (BEP 32).
    """

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[NodeInfo],
        send: Callable[[NodeInfo], Deferred[Response]],
        *,
        k: int = K,
        alpha: int = ALPHA,
        max_candidates: int = MAX_CANDIDATES,
        exclude: bytes | None = None,
        tries: int = TRIES,
        clock: IReactorTime | None = None,
        stall_after: Callable[[NodeInfo], float] | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        family: int = 4,
    ) -> None:
        self.target = target
        self._family = family
        self._send = send
        self._k = k
        self._alpha = alpha
        self._tries = max(tries, 1)
        self._max_candidates = max(max_candidates, k)
        self._exclude = exclude
        self._clock = clock if stall_after is not None else None
        self._stall_after = stall_after
        self._max_in_flight = max(max_in_flight, alpha)
        self._candidates: dict[bytes, _Candidate] = {}
        self._order: list[tuple[int, bytes]] = []
        self._seen_addresses: set[Address] = set()
        # Queries not stalled (at most alpha), and all awaiting an answer.
        self._in_flight = 0
        self._awaiting = 0
        self._pumping = False
        self._again = False
        self._peers: dict[Address, None] = {}
        self._done: Deferred[LookupResult] | None = None
        self.result = LookupResult(target)
        for node in seeds:
            self._offer(node, 1)

    def run(self) -> Deferred[LookupResult]:
        """Start the lookup; the Deferred fires with its result (it never fails)."""
        if self._done is not None:
            raise RuntimeError("a Lookup runs once")
        self._done = Deferred()
        done = self._done
        self._pump()
        return done

    def _offer(self, node: NodeInfo, depth: int) -> None:
        if node.node_id == self._exclude or node.port <= 0:
            return
        known = self._candidates.get(node.node_id)
        if known is not None:
            if known.state == _NEW and depth < known.depth:
                known.depth = depth
            return
        if node.address in self._seen_addresses:
            return
        key = (distance(node.node_id, self.target), node.node_id)
        if len(self._order) >= self._max_candidates:
            if key >= self._order[-1]:
                return
            # Drop the farthest candidate not yet asked, if there is one.
            for i in range(len(self._order) - 1, -1, -1):
                victim = self._candidates[self._order[i][1]]
                if victim.state == _NEW:
                    del self._order[i]
                    del self._candidates[victim.node.node_id]
                    self._seen_addresses.discard(victim.node.address)
                    break
            else:
                return
        bisect.insort(self._order, key)
        self._candidates[node.node_id] = _Candidate(node, key[0], depth)
        self._seen_addresses.add(node.address)

    def _pump(self) -> None:
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._step()
        finally:
            self._pumping = False

    def _step(self) -> None:
        if self._done is None or self._done.called:
            return
        waiting = False
        live = 0
        # A reply may arrive synchronously and reorder the candidates: walk a copy.
        for _, node_id in list(self._order):
            candidate = self._candidates.get(node_id)
            if candidate is None or candidate.state in (_FAILED, _SILENT):
                continue
            if candidate.stalled and candidate.state != _ANSWERED:
                # In doubt: asked again in its turn, but the next candidate
                # takes its place among the k nearest meanwhile.
                if candidate.state == _NEW:
                    waiting = True
                    if self._in_flight < self._alpha and self._awaiting < self._max_in_flight:
                        self._query(candidate)
                continue
            live += 1
            if candidate.state == _NEW:
                waiting = True
                if self._in_flight < self._alpha and self._awaiting < self._max_in_flight:
                    self._query(candidate)
            if live >= self._k:
                break
        if not waiting and self._in_flight == 0:
            self._finish()

    def _query(self, candidate: _Candidate) -> None:
        candidate.state = _PENDING
        candidate.tries += 1
        attempt = candidate.tries
        self._in_flight += 1
        self._awaiting += 1
        result = self.result
        result.peak_in_flight = max(result.peak_in_flight, self._awaiting)
        result.queries += 1
        if attempt > 1:
            result.retries += 1
        result.rounds = max(result.rounds, candidate.depth)
        if self._clock is not None and self._stall_after is not None:
            delay = self._stall_after(candidate.node)
            candidate.timer = self._clock.callLater(delay, self._stalled, candidate, attempt)
        d = self._send(candidate.node)
        d.addCallbacks(
            self._answered, self._failed, (candidate, attempt), errbackArgs=(candidate, attempt)
        )

    def _release(self, candidate: _Candidate) -> None:
        """The candidate's latest query stops counting against alpha."""
        self._in_flight -= 1
        if candidate.timer is not None:
            if candidate.timer.active():
                candidate.timer.cancel()
            candidate.timer = None

    def _stalled(self, candidate: _Candidate, attempt: int) -> None:
        candidate.timer = None
        if candidate.state != _PENDING or attempt != candidate.tries or self._over():
            return
        self._in_flight -= 1
        self.result.stalls += 1
        candidate.stalled = True
        # Perhaps one lost datagram: ask again when its turn comes; the
        # stalled query may still be answered meanwhile.
        candidate.state = _NEW if candidate.tries < self._tries else _SILENT
        self._pump()

    def _answered(self, reply: Response, candidate: _Candidate, attempt: int) -> None:
        self._awaiting -= 1
        if self._over():
            return
        self.result.responses += 1
        state = candidate.state
        if state in (_ANSWERED, _FAILED):
            return  # the answer to another of its queries came first
        if state == _PENDING:
            self._release(candidate)
            if attempt != candidate.tries:
                self.result.late += 1  # the stalled query won over the retry
        else:
            self.result.late += 1
        if reply.sender != candidate.node.node_id:
            # Another node lives at that address now: its distance is not
            # the one we sorted by, so it does not count as a near node.
            candidate.state = _FAILED
        else:
            candidate.state = _ANSWERED
            if reply.token is not None:
                self.result.tokens[candidate.node.node_id] = reply.token
        for node in reply.nodes6 if self._family == 6 else reply.nodes:
            self._offer(node, candidate.depth + 1)
        for peer in reply.values:
            if len(self._peers) < MAX_PEERS_FOUND:
                self._peers[peer] = None
        self._pump()

    def _failed(self, failure: Failure, candidate: _Candidate, attempt: int) -> None:
        self._awaiting -= 1
        if self._over():
            return
        self.result.failures += 1
        state = candidate.state
        if state in (_ANSWERED, _FAILED):
            pass
        elif not failure.check(QueryTimeout):
            # An error answer (or a query that could not go out): no retry.
            if state == _PENDING:
                self._release(candidate)
            candidate.state = _FAILED
        elif attempt == candidate.tries:
            # The latest query timed out (it stalled before, if it could).
            if state == _PENDING:
                self._release(candidate)
            candidate.stalled = True
            candidate.state = _NEW if candidate.tries < self._tries else _FAILED
        # else: an earlier, stalled query timed out; its retry decides.
        self._pump()

    def _over(self) -> bool:
        return self._done is not None and self._done.called

    def _finish(self) -> None:
        for candidate in self._candidates.values():
            if candidate.timer is not None and candidate.timer.active():
                candidate.timer.cancel()
            candidate.timer = None
        closest: list[NodeInfo] = []
        for _, node_id in self._order:
            candidate = self._candidates[node_id]
            if candidate.state == _ANSWERED:
                if not closest:
                    self.result.nearest_depth = candidate.depth
                closest.append(candidate.node)
                if len(closest) >= self._k:
                    break
        self.result.closest = closest
        self.result.peers = list(self._peers)
        kept = {n.node_id for n in closest}
        self.result.tokens = {i: t for i, t in self.result.tokens.items() if i in kept}
        if self._done is not None:
            self._done.callback(self.result)
