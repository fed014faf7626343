"""Iterative lookups: walking the DHT towards a target, α queries at a time.

Data path: the service starts a :class:`Lookup` seeded with the contacts of
its routing table nearest the target; the lookup sends ``find_node`` or
``get_peers`` queries through the protocol (any callable returning a
Deferred reply will do) and collects the nodes, peers and tokens of the
replies into a :class:`LookupResult`, from which the service announces.

The algorithm (Kademlia, as BEP 5 uses it): keep the candidates sorted by
XOR distance to the target; keep up to ``alpha`` queries in flight to the
nearest candidates not yet asked among the ``k`` nearest that have not
failed; a reply adds the nodes it names.  A timeout may be one lost
datagram: the candidate is asked once more, in its turn like a candidate
not yet asked (``tries`` queries in all); a second timeout, or an error,
marks it failed, which lets the next one into the ``k`` nearest.  The
lookup ends when the ``k`` nearest live candidates have all answered.

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

TRIES = 2
"""Queries a node gets in one lookup before timeouts drop it."""

_NEW, _PENDING, _ANSWERED, _FAILED = range(4)


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
    :ivar retries: queries sent again to a node after a timeout (counted
        in C{queries} too).
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


class Lookup:
    """
    One iterative lookup; call :meth:`run` once.

    :param target: the id (``find_node``) or info-hash (``get_peers``).
    :param seeds: the nodes to start from.
    :param send: sends the query to a node and returns its reply's Deferred
        (failing with :class:`~bitfitech.discovery.kademlia.protocol.QueryTimeout`
        when no reply came).
    :param tries: queries a node gets before timeouts drop it (1: no retry).
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
    ) -> None:
        self.target = target
        self._send = send
        self._k = k
        self._alpha = alpha
        self._tries = max(tries, 1)
        self._max_candidates = max(max_candidates, k)
        self._exclude = exclude
        self._candidates: dict[bytes, _Candidate] = {}
        self._order: list[tuple[int, bytes]] = []
        self._seen_addresses: set[Address] = set()
        self._in_flight = 0
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
            if candidate is None or candidate.state == _FAILED:
                continue
            live += 1
            if candidate.state == _NEW:
                waiting = True
                if self._in_flight < self._alpha:
                    self._query(candidate)
            if live >= self._k:
                break
        if not waiting and self._in_flight == 0:
            self._finish()

    def _query(self, candidate: _Candidate) -> None:
        candidate.state = _PENDING
        candidate.tries += 1
        self._in_flight += 1
        self.result.queries += 1
        if candidate.tries > 1:
            self.result.retries += 1
        self.result.rounds = max(self.result.rounds, candidate.depth)
        d = self._send(candidate.node)
        d.addCallbacks(self._answered, self._failed, (candidate,), errbackArgs=(candidate,))

    def _answered(self, reply: Response, candidate: _Candidate) -> None:
        self._in_flight -= 1
        self.result.responses += 1
        if reply.sender != candidate.node.node_id:
            # Another node lives at that address now: its distance is not
            # the one we sorted by, so it does not count as a near node.
            candidate.state = _FAILED
        else:
            candidate.state = _ANSWERED
            if reply.token is not None:
                self.result.tokens[candidate.node.node_id] = reply.token
        for node in reply.nodes:
            self._offer(node, candidate.depth + 1)
        for peer in reply.values:
            if len(self._peers) < MAX_PEERS_FOUND:
                self._peers[peer] = None
        self._pump()

    def _failed(self, failure: Failure, candidate: _Candidate) -> None:
        self._in_flight -= 1
        self.result.failures += 1
        if failure.check(QueryTimeout) and candidate.tries < self._tries:
            # Perhaps one lost datagram: ask again when its turn comes.
            candidate.state = _NEW
        else:
            candidate.state = _FAILED
        self._pump()

    def _finish(self) -> None:
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
