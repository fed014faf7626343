"""KRPC messages (BEP 5): bencoded dictionaries to typed queries and replies.

Data path: UDP datagram -> :mod:`~bitfitech.discovery.kademlia.bencode` ->
:func:`decode_message` (this module) -> a typed message ->
:class:`~bitfitech.discovery.kademlia.protocol.DHTProtocol`; and back
through :func:`encode_message`.

A message is a dictionary with a transaction id ``t`` and a type ``y``:
``q`` (a query: method ``q``, arguments ``a``), ``r`` (a response: values
``r``) or ``e`` (an error: ``[code, message]``).  Four methods exist:
``ping``, ``find_node``, ``get_peers`` and ``announce_peer``.  Nodes travel
in "compact node info" (26 bytes: id, IPv4 address, port) and peers in
"compact peer info" (6 bytes: IPv4 address, port).  BEP 32 adds IPv6:
``nodes6`` (38 bytes a node: id, IPv6 address, port), 18-byte IPv6
entries in ``values``, and ``want`` (``n4``, ``n6``) in ``find_node`` and
``get_peers``; the codec reads and writes them all.

Unknown keys are ignored.  A query that cannot be answered raises a
:class:`KRPCError` that carries the transaction id and the error code of
the reply to send; nothing else is ever raised by :func:`decode_message`.
The envelope is checked first (a transaction id over
:data:`MAX_TRANSACTION` bytes, a missing ``q``: 203), then the method: an
unknown one is a 204 "Method Unknown" whatever its arguments (BEP 5's code
for it: what the asker most needs to hear; libtorrent checks ``a.id``
first and answers 203 there), then ``a`` and a 20-byte ``a.id`` and the
known method's arguments (203).  A query without a byte-string ``t``
cannot be answered and is dropped.
Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .bencode import BencodeError, decode, encode_plain
from .ids import ID_SIZE

GENERIC_ERROR = 201
"""Error code: a generic error."""
SERVER_ERROR = 202
"""Error code: the server could not answer (here: too many queries)."""
PROTOCOL_ERROR = 203
"""Error code: a malformed packet, invalid arguments or a bad token."""
METHOD_UNKNOWN = 204
"""Error code: the method is not one of the four of BEP 5."""
KNOWN_METHODS = frozenset({b"ping", b"find_node", b"get_peers", b"announce_peer"})
"""The four methods of BEP 5."""

MAX_DATAGRAM = 1500
"""Largest datagram the DHT sends."""
MAX_INCOMING = 2048
"""Largest datagram the DHT reads; longer ones are dropped unread."""
MAX_TRANSACTION = 32
"""
Longest transaction id answered in full (clients use 2 to 8 bytes).  BEP 5
sets no limit; this bounds what a full answer echoes.  A query with a
longer one is not ignored: it gets a 203 that echoes it, no larger than
the query plus its reason (the datagram size bounds both).
"""
MAX_TOKEN = 64
"""Longest ``announce_peer`` token accepted."""

COMPACT_NODE_SIZE = ID_SIZE + 6
COMPACT_PEER_SIZE = 6
COMPACT_NODE6_SIZE = ID_SIZE + 18
"""Compact IPv6 node info (BEP 32 ``nodes6``): id, 16-byte address, port."""
COMPACT_PEER6_SIZE = 18
"""Compact IPv6 peer info (an 18-byte entry of ``values``, BEP 32)."""

WANT_N4 = "n4"
WANT_N6 = "n6"
WANTS = frozenset({WANT_N4, WANT_N6})
"""The ``want`` entries of BEP 32: IPv4 nodes (``nodes``), IPv6 nodes (``nodes6``)."""

METHODS = ("ping", "find_node", "get_peers", "announce_peer")

Address = tuple[str, int]
"""A UDP or TCP address: an IP literal (IPv4, or IPv6 for BEP 32) and a port."""


class KRPCError(ValueError):
    """
    A datagram is not a KRPC message this node can use.

    :ivar transaction: the message's transaction id, when it could be read.
    :ivar kind: the message type (``b"q"``, ``b"r"``, ``b"e"``) when it
        could be read, else ``None``.
    :ivar code: the error code to answer a query with.
    """

    def __init__(
        self,
        reason: str,
        *,
        transaction: bytes | None = None,
        kind: bytes | None = None,
        code: int = PROTOCOL_ERROR,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transaction = transaction
        self.kind = kind
        self.code = code

    @property
    def answerable(self) -> bool:
        """Whether this was a query we can answer with an error reply."""
        return self.kind == b"q" and self.transaction is not None


@dataclass(frozen=True)
class NodeInfo:
    """
    A DHT node: its id and UDP address.

    :ivar node_id: 20 bytes.
    :ivar host: IPv4 literal (IPv6 in ``nodes6``).
    :ivar port: UDP port (1 to 65535).
    """

    node_id: bytes
    host: str
    port: int

    @property
    def address(self) -> Address:
        """The node's ``(host, port)``."""
        return (self.host, self.port)


@dataclass(frozen=True)
class Ping:
    """A ``ping`` query. :ivar read_only: the sender asked not to be added (BEP 43)."""

    transaction: bytes
    sender: bytes
    read_only: bool = False


@dataclass(frozen=True)
class FindNode:
    """
    A ``find_node`` query: the nodes closest to C{target}.

    :ivar want: the families of nodes asked for (BEP 32: ``n4``, ``n6``);
        empty for the family the query came over.
    """

    transaction: bytes
    sender: bytes
    target: bytes
    read_only: bool = False
    want: frozenset[str] = frozenset()


@dataclass(frozen=True)
class GetPeers:
    """
    A ``get_peers`` query: peers of C{info_hash}, or closer nodes, and a token.

    :ivar want: as :attr:`FindNode.want`.
    """

    transaction: bytes
    sender: bytes
    info_hash: bytes
    read_only: bool = False
    want: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AnnouncePeer:
    """
    An ``announce_peer`` query: the sender's peer listens on C{port} (or,
    with C{implied_port}, on the UDP source port of the query).
    """

    transaction: bytes
    sender: bytes
    info_hash: bytes
    port: int
    token: bytes
    implied_port: bool = False
    read_only: bool = False


@dataclass(frozen=True)
class Response:
    """
    A response (``y = r``): the replying node's id and, depending on the
    query, nodes, peers (``values``) and a token.

    :ivar with_nodes: write ``nodes`` even when C{nodes} is empty.  Answers
        to ``find_node`` and ``get_peers`` set it: BEP 5 gives them a
        ``nodes`` key whatever the routing table holds, and libtorrent sends
        an empty string when it holds nothing.  A decoded response has it
        when the key was there.  Not compared: two responses with the same
        contents are equal.
    :ivar nodes6: IPv6 nodes (BEP 32 ``nodes6``), each with an IPv6 host.
    :ivar with_nodes6: write ``nodes6`` even when empty (asked for by
        ``want``), as :attr:`with_nodes`.
    :ivar values: peers, IPv4 (6 bytes on the wire) or IPv6 (18).
    """

    transaction: bytes
    sender: bytes
    nodes: tuple[NodeInfo, ...] = ()
    values: tuple[Address, ...] = ()
    token: bytes | None = None
    with_nodes: bool = field(default=False, compare=False)
    nodes6: tuple[NodeInfo, ...] = ()
    with_nodes6: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class ErrorReply:
    """An error (``y = e``): a code (201 to 204) and a message."""

    transaction: bytes
    code: int
    message: str


Query = Ping | FindNode | GetPeers | AnnouncePeer
Message = Query | Response | ErrorReply


def method_of(query: Query) -> str:
    """The KRPC method name of C{query}."""
    return _METHOD_NAMES[type(query)]


_METHOD_NAMES: dict[type[Any], str] = {
    Ping: "ping",
    FindNode: "find_node",
    GetPeers: "get_peers",
    AnnouncePeer: "announce_peer",
}


@functools.lru_cache(maxsize=4096)
def _packed_ipv4(host: str) -> bytes | None:
    try:
        return ipaddress.IPv4Address(host).packed
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _packed_ipv6(host: str) -> bytes | None:
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return None
    return None if address.scope_id else address.packed


def is_ipv4(host: str) -> bool:
    """Whether C{host} is an IPv4 literal (the addresses BEP 5 carries)."""
    return isinstance(host, str) and _packed_ipv4(host) is not None


def is_ipv6(host: str) -> bool:
    """Whether C{host} is an IPv6 literal without a zone (the addresses BEP 32 carries)."""
    return isinstance(host, str) and ":" in host and _packed_ipv6(host) is not None


def family_of(host: str) -> int | None:
    """4 or 6: the family of the IP literal C{host} as the DHT carries it; ``None`` for neither."""
    if is_ipv4(host):
        return 4
    return 6 if is_ipv6(host) else None


def encode_compact_peer(host: str, port: int) -> bytes:
    """
    The compact form of an address and port: 6 bytes for IPv4, 18 for IPv6.

    :raise ValueError: if C{host} is neither an IPv4 nor an IPv6 literal.
    """
    packed = _packed_ipv4(host) or (_packed_ipv6(host) if ":" in host else None)
    if packed is None:
        raise ValueError(f"not an IP address: {host!r}")
    return packed + port.to_bytes(2, "big")


def decode_compact_peer(data: bytes) -> Address:
    """The address and port in 6 (IPv4) or 18 (IPv6) compact bytes."""
    if len(data) == COMPACT_PEER6_SIZE:
        return (str(ipaddress.IPv6Address(data[:16])), (data[16] << 8) | data[17])
    return (f"{data[0]}.{data[1]}.{data[2]}.{data[3]}", (data[4] << 8) | data[5])


def encode_nodes(nodes: tuple[NodeInfo, ...] | list[NodeInfo]) -> bytes:
    """Compact node info for C{nodes}, leaving out any whose host is not IPv4."""
    return b"".join(
        n.node_id + encode_compact_peer(n.host, n.port)
        for n in nodes
        if len(n.node_id) == ID_SIZE and is_ipv4(n.host) and 0 < n.port < 65536
    )


def encode_nodes6(nodes: tuple[NodeInfo, ...] | list[NodeInfo]) -> bytes:
    """Compact IPv6 node info (``nodes6``) for C{nodes}, leaving out any whose host is not IPv6."""
    return b"".join(
        n.node_id + encode_compact_peer(n.host, n.port)
        for n in nodes
        if len(n.node_id) == ID_SIZE and is_ipv6(n.host) and 0 < n.port < 65536
    )


def decode_nodes(data: bytes) -> tuple[NodeInfo, ...]:
    """
    The nodes in compact node info, leaving out those with port 0.

    :raise KRPCError: if the length is not a multiple of 26.
    """
    return _decode_nodes(data, COMPACT_NODE_SIZE, "nodes")


def decode_nodes6(data: bytes) -> tuple[NodeInfo, ...]:
    """
    The nodes in compact IPv6 node info (``nodes6``), leaving out those with port 0.

    :raise KRPCError: if the length is not a multiple of 38.
    """
    return _decode_nodes(data, COMPACT_NODE6_SIZE, "nodes6")


def _decode_nodes(data: bytes, size: int, what: str) -> tuple[NodeInfo, ...]:
    if len(data) % size:
        raise KRPCError(f"compact {what} of {len(data)} bytes")
    nodes = []
    for offset in range(0, len(data), size):
        chunk = data[offset : offset + size]
        host, port = decode_compact_peer(chunk[ID_SIZE:])
        if port:
            nodes.append(NodeInfo(chunk[:ID_SIZE], host, port))
    return tuple(nodes)


def encode_message(message: Message, *, version: bytes | None = None) -> bytes:
    """
    The bencoded bytes of C{message}.

    :param version: the client version to send as ``v``, if any.
    """
    body: dict[bytes, Any] = {b"t": message.transaction}
    if version is not None:
        body[b"v"] = version
    if isinstance(message, ErrorReply):
        body[b"y"] = b"e"
        body[b"e"] = [message.code, message.message.encode("utf-8")]
    elif isinstance(message, Response):
        values: dict[bytes, Any] = {b"id": message.sender}
        if message.nodes or message.with_nodes:
            values[b"nodes"] = encode_nodes(message.nodes)
        if message.nodes6 or message.with_nodes6:
            values[b"nodes6"] = encode_nodes6(message.nodes6)
        if message.values:
            values[b"values"] = [encode_compact_peer(h, p) for h, p in message.values]
        if message.token is not None:
            values[b"token"] = message.token
        body[b"y"] = b"r"
        body[b"r"] = values
    else:
        args: dict[bytes, Any] = {b"id": message.sender}
        if isinstance(message, FindNode):
            args[b"target"] = message.target
        elif isinstance(message, GetPeers):
            args[b"info_hash"] = message.info_hash
        if isinstance(message, FindNode | GetPeers) and message.want:
            args[b"want"] = [w.encode("ascii") for w in sorted(message.want)]
        elif isinstance(message, AnnouncePeer):
            args[b"info_hash"] = message.info_hash
            args[b"port"] = message.port
            args[b"token"] = message.token
            args[b"implied_port"] = int(message.implied_port)
        if message.read_only:
            body[b"ro"] = 1
        body[b"y"] = b"q"
        body[b"q"] = method_of(message).encode("ascii")
        body[b"a"] = args
    return encode_plain(body)


def decode_message(data: bytes) -> Message:
    """
    The KRPC message in one datagram.

    :raise KRPCError: if it is not one (and for nothing else); see
        :attr:`KRPCError.answerable`.
    """
    try:
        body = decode(data)
    except BencodeError as e:
        raise KRPCError(f"not bencoded: {e}") from None
    if not isinstance(body, dict):
        raise KRPCError("not a dictionary")
    transaction = body.get(b"t")
    if not isinstance(transaction, bytes):
        raise KRPCError("missing or bad transaction id")
    kind = body.get(b"y")
    if not isinstance(kind, bytes):
        raise KRPCError("missing message type", transaction=transaction)
    if len(transaction) > MAX_TRANSACTION:
        # Answerable when a query: a 203 echoing it, never silence.
        raise KRPCError(
            f"transaction id over {MAX_TRANSACTION} bytes", transaction=transaction, kind=kind
        )
    if kind == b"q":
        return _decode_query(body, transaction)
    if kind == b"r":
        return _decode_response(body, transaction)
    if kind == b"e":
        return _decode_error(body, transaction)
    raise KRPCError(f"unknown message type {kind[:8]!r}", transaction=transaction)


def _decode_query(body: dict[bytes, Any], transaction: bytes) -> Query:
    def fail(reason: str, code: int = PROTOCOL_ERROR) -> KRPCError:
        return KRPCError(reason, transaction=transaction, kind=b"q", code=code)

    # An unknown method is a 204 whatever its arguments (BEP 5), before
    # the id is checked (libtorrent checks the id first, and says 203).
    method = body.get(b"q")
    args = body.get(b"a")
    if not isinstance(method, bytes):
        raise fail("missing method")
    if method not in KNOWN_METHODS:
        raise fail(f"method unknown: {method[:32]!r}", METHOD_UNKNOWN)
    if not isinstance(args, dict):
        raise fail("missing arguments")
    sender = args.get(b"id")
    if not isinstance(sender, bytes) or len(sender) != ID_SIZE:
        raise fail("id must be 20 bytes")
    read_only = body.get(b"ro") == 1
    if method == b"ping":
        return Ping(transaction, sender, read_only)
    if method == b"find_node":
        target = args.get(b"target")
        if not isinstance(target, bytes) or len(target) != ID_SIZE:
            raise fail("target must be 20 bytes")
        return FindNode(transaction, sender, target, read_only, _want(args, fail))
    info_hash = args.get(b"info_hash")
    if not isinstance(info_hash, bytes) or len(info_hash) != ID_SIZE:
        raise fail("info_hash must be 20 bytes")
    if method == b"get_peers":
        return GetPeers(transaction, sender, info_hash, read_only, _want(args, fail))
    token = args.get(b"token")
    if not isinstance(token, bytes) or len(token) > MAX_TOKEN:
        raise fail("missing or bad token")
    implied = args.get(b"implied_port", 0)
    implied_port = isinstance(implied, int) and implied != 0
    port = args.get(b"port")
    if not implied_port and (not isinstance(port, int) or not 0 < port < 65536):
        raise fail("missing or bad port")
    return AnnouncePeer(
        transaction,
        sender,
        info_hash,
        port if isinstance(port, int) and 0 < port < 65536 else 0,
        token,
        implied_port,
        read_only,
    )


def _want(args: dict[bytes, Any], fail: Any) -> frozenset[str]:
    """
    The ``want`` of a query (BEP 32): the known entries of its list, unknown
    ones ignored (the list is extensible); not a list is a 203.
    """
    want = args.get(b"want")
    if want is None:
        return frozenset()
    if not isinstance(want, list):
        raise fail("want must be a list")
    return frozenset(
        entry.decode("ascii") for entry in want if isinstance(entry, bytes) and entry in _WANTED
    )


_WANTED = frozenset(w.encode("ascii") for w in WANTS)


def _decode_response(body: dict[bytes, Any], transaction: bytes) -> Response:
    def fail(reason: str) -> KRPCError:
        return KRPCError(reason, transaction=transaction, kind=b"r")

    values = body.get(b"r")
    if not isinstance(values, dict):
        raise fail("missing response values")
    sender = values.get(b"id")
    if not isinstance(sender, bytes) or len(sender) != ID_SIZE:
        raise fail("id must be 20 bytes")
    nodes = _nodes_of(values, b"nodes", decode_nodes, fail)
    nodes6 = _nodes_of(values, b"nodes6", decode_nodes6, fail)
    peers_data = values.get(b"values", [])
    if not isinstance(peers_data, list):
        raise fail("values must be a list")
    # IPv4 (6 bytes) and IPv6 (18, BEP 32) peers; entries of other lengths
    # and port 0 are skipped, not errors.
    peers = tuple(
        decode_compact_peer(p)
        for p in peers_data
        if isinstance(p, bytes)
        and len(p) in (COMPACT_PEER_SIZE, COMPACT_PEER6_SIZE)
        and p[-2:] != b"\0\0"
    )
    token = values.get(b"token")
    if token is not None and (not isinstance(token, bytes) or len(token) > MAX_TOKEN):
        raise fail("bad token")
    return Response(
        transaction, sender, nodes, peers, token, with_nodes=b"nodes" in values,
        nodes6=nodes6, with_nodes6=b"nodes6" in values,
    )  # fmt: skip


def _nodes_of(
    values: dict[bytes, Any],
    key: bytes,
    decoder: Callable[[bytes], tuple[NodeInfo, ...]],
    fail: Callable[[str], KRPCError],
) -> tuple[NodeInfo, ...]:
    """The nodes of a response's C{key} (``nodes`` or ``nodes6``), none if absent."""
    data = values.get(key, b"")
    if not isinstance(data, bytes):
        raise fail(f"{key.decode()} must be a byte string")
    try:
        return decoder(data)
    except KRPCError as e:
        raise fail(e.reason) from None


def _decode_error(body: dict[bytes, Any], transaction: bytes) -> ErrorReply:
    error = body.get(b"e")
    if not isinstance(error, list) or not error or not isinstance(error[0], int):
        raise KRPCError("missing error code", transaction=transaction, kind=b"e")
    text = error[1] if len(error) > 1 and isinstance(error[1], bytes) else b""
    return ErrorReply(transaction, error[0], text[:200].decode("utf-8", "replace"))
