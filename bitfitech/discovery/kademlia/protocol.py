"""The KRPC protocol: datagrams in, answers out, our queries matched to replies.

Data path: UDP socket -> :meth:`DHTProtocol.datagramReceived` ->
:func:`~bitfitech.discovery.kademlia.krpc.decode_message` -> either a query,
answered from the :class:`~bitfitech.discovery.kademlia.routing.RoutingTable`
and the :class:`~bitfitech.discovery.kademlia.store.PeerStore`, or a reply
that fires the Deferred of one of our queries (:meth:`DHTProtocol.ping`,
:meth:`~DHTProtocol.find_node`, :meth:`~DHTProtocol.get_peers`,
:meth:`~DHTProtocol.announce_peer`), used by lookups and the service.

Glue only; everything is bounded.  Datagrams over
:data:`~bitfitech.discovery.kademlia.krpc.MAX_INCOMING` bytes are dropped
unread, nothing over :data:`~bitfitech.discovery.kademlia.krpc.MAX_DATAGRAM`
is sent (but an error echoing a long transaction id, up to
:data:`MAX_ERROR_REPLY`), queries beyond a per-IP rate are dropped, and at most
``max_pending`` of our queries wait for a reply, each failing with
:class:`QueryTimeout` after ``query_timeout`` seconds.  Bad input never
raises: it is counted in :attr:`DHTProtocol.counters` and dropped, or a
malformed query gets an error reply.  Every node heard from is reported to
the routing table, which may ask us to ping questionable contacts, with the
round trip of each answer (the table's estimates set the lookups' stall
timeouts) and each query unanswered at ``query_timeout`` (a failure).

One protocol serves one address family (BEP 32: the IPv4 and the IPv6 DHT
are two networks): its socket's.  It answers ``want`` (``n4``, ``n6``)
from its own routing table for its family and from the other family's
(``sibling``), when the node runs both; ``values`` hold peers of its
family only, and only nodes of its family enter its table.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from bitfitech.logs import logger

from .krpc import (
    MAX_DATAGRAM,
    MAX_INCOMING,
    PROTOCOL_ERROR,
    SERVER_ERROR,
    WANT_N4,
    WANT_N6,
    Address,
    AnnouncePeer,
    ErrorReply,
    FindNode,
    GetPeers,
    KRPCError,
    Message,
    NodeInfo,
    Ping,
    Query,
    Response,
    decode_message,
    encode_message,
    family_of,
    method_of,
)
from .routing import RoutingTable
from .store import PeerStore, RateLimiter, TokenIssuer

log = logger(__name__)

VERSION = b"BF\x00\x01"
"""The client version sent as ``v``: ``BF`` and a two-byte version."""

MAX_VALUES = 50
"""Most peers in one ``get_peers`` answer (8 bytes each in the datagram)."""

MAX_PENDING = 512
"""Most of our queries waiting for a reply at once."""

MAX_ERROR_REPLY = MAX_INCOMING + 256
"""
Largest error reply sent.  It echoes the query's transaction id, which BEP 5
does not bound: an error to a query we read is at most its reason and a few
bytes longer than the query, so it may pass :data:`MAX_DATAGRAM`, but only
as much as the query itself did.
"""


class DHTQueryError(Exception):
    """A query of ours got no usable answer."""


class QueryTimeout(DHTQueryError):
    """No reply within the query timeout."""


class RemoteError(DHTQueryError):
    """
    The node answered with a KRPC error.

    :ivar code: the error code (201 to 204).
    :ivar message: its text.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"error {code}: {message}")
        self.code = code
        self.message = message


class BadReply(DHTQueryError):
    """The reply could not be decoded."""


class NotRunning(DHTQueryError):
    """The protocol is not listening (not started yet, or stopped)."""


class TooManyPending(DHTQueryError):
    """Too many queries already wait for a reply."""


@dataclass(eq=False)
class _Pending:
    address: Address
    node_id: bytes | None
    method: str
    deferred: Deferred[Response]
    timer: IDelayedCall
    sent: float


class DHTProtocol(DatagramProtocol):
    """
    One DHT node's KRPC endpoint on a UDP port, of one address family.

    :ivar node_id: this node's id.
    :ivar routing: the routing table it reports nodes to and answers from.
    :ivar store: the announced peers it keeps.
    :param announced: called with C{(info_hash, host, port)} for every
        peer announced to us (after it is stored).
    :param family: 4 or 6, the family of the socket (and of every node in
        C{routing}).
    :param sibling: the other family's confirmed nodes nearest an id
        (``nodes6`` of an IPv4 answer, ``nodes`` of an IPv6 one, when
        ``want`` asks for them); ``None`` when the node runs one family.
    :ivar counters: what happened to datagrams (``received``, ``sent``,
        ``oversize``, ``malformed``, ``rate_limited``, ``unexpected``,
        ``queries``, ``errors_sent``, ``timeouts``...).
    """

    noisy = False  # the service logs its own start and stop

    def __init__(
        self,
        clock: IReactorTime,
        node_id: bytes,
        routing: RoutingTable,
        store: PeerStore,
        tokens: TokenIssuer,
        *,
        rng: random.Random | None = None,
        limiter: RateLimiter | None = None,
        query_timeout: float = 2.0,
        max_pending: int = MAX_PENDING,
        announced: Callable[[bytes, str, int], None] | None = None,
        family: int = 4,
        sibling: Callable[[bytes], tuple[NodeInfo, ...]] | None = None,
    ) -> None:
        if family not in (4, 6):
            raise ValueError(f"an address family is 4 or 6, not {family!r}")
        self._clock = clock
        self.family = family
        self.sibling = sibling
        self.node_id = node_id
        self.routing = routing
        self.store = store
        self.tokens = tokens
        self._limiter = limiter
        self._query_timeout = query_timeout
        self._max_pending = max_pending
        self._rng = rng or random.Random()
        self._next_transaction = self._rng.randrange(1 << 16)
        self._pending: dict[bytes, _Pending] = {}
        self._listening = False
        self._announced = announced
        self.counters: Counter[str] = Counter()

    # Twisted callbacks.

    def startProtocol(self) -> None:
        self._listening = True

    def stopProtocol(self) -> None:
        self.close()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            self._received(datagram, (str(addr[0]), int(addr[1])))
        except Exception:
            self.counters["internal_errors"] += 1
            log.failure("DHT datagram from {address} could not be handled", address=addr)

    # Our queries.

    @property
    def pending(self) -> int:
        """How many of our queries wait for a reply."""
        return len(self._pending)

    def ping(self, address: Address, node_id: bytes | None = None) -> Deferred[Response]:
        """Ping the node at C{address} (whose id is C{node_id}, if known)."""
        return self._query(address, node_id, lambda t: Ping(t, self.node_id))

    def find_node(
        self, address: Address, target: bytes, node_id: bytes | None = None
    ) -> Deferred[Response]:
        """Ask the node at C{address} for the nodes closest to C{target}."""
        return self._query(address, node_id, lambda t: FindNode(t, self.node_id, target))

    def get_peers(
        self, address: Address, info_hash: bytes, node_id: bytes | None = None
    ) -> Deferred[Response]:
        """Ask the node at C{address} for peers of C{info_hash} (or closer nodes) and a token."""
        return self._query(address, node_id, lambda t: GetPeers(t, self.node_id, info_hash))

    def announce_peer(
        self,
        address: Address,
        info_hash: bytes,
        port: int,
        token: bytes,
        *,
        implied_port: bool = False,
        node_id: bytes | None = None,
    ) -> Deferred[Response]:
        """Tell the node at C{address} that our peer of C{info_hash} listens on C{port}."""
        return self._query(
            address,
            node_id,
            lambda t: AnnouncePeer(t, self.node_id, info_hash, port, token, implied_port),
        )

    def close(self) -> None:
        """
        Refuse new queries and fail every query waiting for a reply with
        :class:`NotRunning` (the port itself may close later).
        """
        self._listening = False
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if entry.timer.active():
                entry.timer.cancel()
        for entry in pending.values():
            entry.deferred.errback(NotRunning("the DHT protocol stopped"))

    def _query(
        self, address: Address, node_id: bytes | None, make: Callable[[bytes], Query]
    ) -> Deferred[Response]:
        if not self._listening or self.transport is None:
            return fail(NotRunning("the DHT protocol is not listening"))
        if len(self._pending) >= self._max_pending:
            return fail(TooManyPending(f"{len(self._pending)} queries pending"))
        transaction = self._new_transaction()
        query = make(transaction)
        if not self._send(query, address):
            return fail(DHTQueryError(f"could not send {method_of(query)} to {address}"))
        d: Deferred[Response] = Deferred(lambda _: self._forget(transaction))
        timer = self._clock.callLater(self._query_timeout, self._timed_out, transaction)
        self._pending[transaction] = _Pending(
            address, node_id, method_of(query), d, timer, self._clock.seconds()
        )
        return d

    def _new_transaction(self) -> bytes:
        while True:
            self._next_transaction = (self._next_transaction + 1) & 0xFFFF
            transaction = self._next_transaction.to_bytes(2, "big")
            if transaction not in self._pending:
                return transaction

    def _forget(self, transaction: bytes) -> None:
        entry = self._pending.pop(transaction, None)
        if entry is not None and entry.timer.active():
            entry.timer.cancel()

    def _timed_out(self, transaction: bytes) -> None:
        entry = self._pending.pop(transaction, None)
        if entry is None:
            return
        self.counters["timeouts"] += 1
        # One failure per query unanswered at the full timeout (none if the
        # node answered another query meanwhile: see RoutingTable.failed).
        self.routing.failed(entry.node_id, entry.address, self._clock.seconds(), sent=entry.sent)
        entry.deferred.errback(QueryTimeout(f"{entry.method} to {entry.address} timed out"))

    def _send(self, message: Message, address: Address, limit: int = MAX_DATAGRAM) -> bool:
        data = encode_message(message, version=VERSION)
        if len(data) > limit:
            self.counters["oversize_not_sent"] += 1
            return False
        if self.transport is None:
            return False
        try:
            self.transport.write(data, address)
        except OSError as e:
            self.counters["send_errors"] += 1
            log.debug("DHT send to {address} failed: {error}", address=address, error=e)
            return False
        self.counters["sent"] += 1
        return True

    # Their datagrams.

    def _received(self, datagram: bytes, address: Address) -> None:
        self.counters["received"] += 1
        if len(datagram) > MAX_INCOMING:
            self.counters["oversize"] += 1
            return
        now = self._clock.seconds()
        try:
            message = decode_message(datagram)
        except KRPCError as e:
            self._bad_message(e, address, now)
            return
        if isinstance(message, Response | ErrorReply):
            self._reply_received(message, address, now)
            return
        if self._limiter is not None and not self._limiter.allow(address[0], now):
            self.counters["rate_limited"] += 1
            return
        self.counters["queries"] += 1
        try:
            answer = self._answer(message, address, now)
        except Exception:
            log.failure("DHT could not answer a {method} query", method=method_of(message))
            answer = ErrorReply(message.transaction, SERVER_ERROR, "server error")
        self._send(answer, address)
        if not message.read_only and family_of(address[0]) == self.family and address[1] > 0:
            self._heard_from(message.sender, address, now, responded=False)

    def _bad_message(self, error: KRPCError, address: Address, now: float) -> None:
        if error.answerable and error.transaction is not None:
            if self._limiter is not None and not self._limiter.allow(address[0], now):
                self.counters["rate_limited"] += 1
                return
            self.counters["bad_queries"] += 1
            self.counters["errors_sent"] += 1
            reply = ErrorReply(error.transaction, error.code, error.reason)
            self._send(reply, address, limit=MAX_ERROR_REPLY)
            return
        entry = self._pending.get(error.transaction) if error.transaction is not None else None
        if entry is not None and entry.address == address and error.kind in (b"r", b"e"):
            self._forget(error.transaction or b"")
            self.counters["bad_replies"] += 1
            entry.deferred.errback(BadReply(error.reason))
            return
        self.counters["malformed"] += 1

    def _reply_received(self, reply: Response | ErrorReply, address: Address, now: float) -> None:
        entry = self._pending.get(reply.transaction)
        if entry is None or entry.address != address:
            self.counters["unexpected"] += 1
            return
        self._forget(reply.transaction)
        if isinstance(reply, ErrorReply):
            self.counters["errors_received"] += 1
            entry.deferred.errback(RemoteError(reply.code, reply.message))
            return
        self.counters["responses"] += 1
        self._heard_from(reply.sender, address, now, responded=True)
        self.routing.measured(reply.sender, now - entry.sent)
        entry.deferred.callback(reply)

    def _heard_from(self, node_id: bytes, address: Address, now: float, *, responded: bool) -> None:
        for contact in self.routing.heard_from(node_id, address, now, responded=responded):
            self.ping(contact.address, contact.node_id).addErrback(_ignore)

    def _answer(self, query: Query, address: Address, now: float) -> Message:
        host, port = address
        if isinstance(query, Ping):
            return Response(query.transaction, self.node_id)
        if isinstance(query, FindNode):
            return self._with_nodes(query.want, query.target, query.transaction, (), None)
        if isinstance(query, GetPeers):
            token = self.tokens.token_for(host, now)
            values = self.store.peers(
                query.info_hash, now, MAX_VALUES, self._rng, family=self.family
            )
            return self._with_nodes(
                query.want, query.info_hash, query.transaction, tuple(values), token
            )
        if not self.tokens.check(query.token, host, now):
            self.counters["bad_tokens"] += 1
            return ErrorReply(query.transaction, PROTOCOL_ERROR, "bad token")
        peer_port = port if query.implied_port else query.port
        if not 0 < peer_port < 65536 or family_of(host) != self.family:
            return ErrorReply(query.transaction, PROTOCOL_ERROR, "bad port")
        self.store.add(query.info_hash, host, peer_port, now)
        self.counters["announces"] += 1
        if self._announced is not None:
            self._announced(query.info_hash, host, peer_port)
        return Response(query.transaction, self.node_id)

    def nodes_near(self, target: bytes) -> tuple[NodeInfo, ...]:
        """The confirmed nodes of our table nearest C{target}: what an answer names."""
        nodes = self.routing.closest_confirmed(target)
        return tuple(NodeInfo(c.node_id, c.host, c.port) for c in nodes)

    def _with_nodes(
        self,
        want: frozenset[str],
        target: bytes,
        transaction: bytes,
        values: tuple[Address, ...],
        token: bytes | None,
    ) -> Response:
        """
        An answer (with C{values} and C{token}, for ``get_peers``) naming
        the nodes nearest C{target} of each family in C{want} (BEP 32;
        none: our own family's): ``nodes`` always over IPv4 (empty when not
        asked for, as BEP 5 has it) and over IPv6 when asked for,
        ``nodes6`` when asked for (or by default over IPv6) and the node
        runs IPv6.  A family the node does not run is left out.
        """
        if not want:  # nearly every query: our own family's nodes
            nodes = self.nodes_near(target)
            if self.family == 4:
                return Response(transaction, self.node_id, nodes, values, token, with_nodes=True)
            return Response(
                transaction, self.node_id, (), values, token, nodes6=nodes, with_nodes6=True
            )
        own = WANT_N6 if self.family == 6 else WANT_N4
        by_family: dict[str, tuple[NodeInfo, ...]] = {}
        for entry in (WANT_N4, WANT_N6):
            if entry not in want:
                continue
            if entry == own:
                by_family[entry] = self.nodes_near(target)
            elif self.sibling is not None:
                by_family[entry] = self.sibling(target)
        nodes6 = by_family.get(WANT_N6)
        return Response(
            transaction,
            self.node_id,
            by_family.get(WANT_N4, ()),
            values,
            token,
            with_nodes=self.family == 4 or WANT_N4 in by_family,
            nodes6=nodes6 or (),
            with_nodes6=nodes6 is not None,
        )


def _ignore(failure: Failure) -> None:
    failure.trap(DHTQueryError, CancelledError)
