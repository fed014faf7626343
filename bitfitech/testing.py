"""Fakes and helpers for tests of bitfi, shipped with the package.

Nothing here is used by a running node.  It gives tests the pieces every
layer needs: frames of real messages, a link owner that records what a
link reports, an in-process cluster of real nodes on loopback (and
:class:`ClusterTestCase`, a test case holding one), a hostile peer that
sends a node whatever it is told (:class:`HostilePeer`), and for
simulations of many nodes an in-memory UDP network
(:class:`MemoryDatagramNetwork`) timed by a fast fake clock
(:class:`HeapClock`, :func:`run_for`).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import heapq
import os
import random
import secrets
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime, IUDPTransport
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from .address import PeerAddress
from .config import LinkTiming, NodeConfig
from .identity import NodeIdentity, load_or_create_identity
from .interfaces import ILinkOwner
from .market.events import Author, Event
from .node import Node, build_node
from .peer.protocol import LocalNode
from .peer.tls import NodeTLS, TLSLinkFactory
from .wire.framing import encode_frame, network_magic
from .wire.messages import (
    MARKETS_VERSION,
    PROTOCOL_VERSION,
    Events,
    Message,
    Verack,
    Version,
    encode_message,
)
from .witnesses import WitnessSet

TEST_NETWORK = "test"
MDNS_GROUP = "224.0.0.251"
TEST_PAIR = "BTC/USD"

NO_WITNESSES = WitnessSet().digest
"""The witness set digest of a network without witnesses (every test network's)."""

#: How long a test on real sockets, processes or time waits for a
#: condition before it gives up: a hang guard, far above what any machine
#: needs, never a speed bound (speeds are benchmark figures).
HANG_GUARD = 30.0


def frame_of(message: Message, network: str = TEST_NETWORK) -> bytes:
    """The bytes of one framed C{message} on C{network}."""
    command, payload = encode_message(message)
    return encode_frame(network_magic(network), command, payload)


def node_id_of(n: int) -> str:
    """A well-formed, distinct node id for test number C{n}."""
    return f"{n:040x}"


def local_node(
    n: int = 1, *, port: int = 3000, network: str = TEST_NETWORK, witnesses: str = NO_WITNESSES,
    markets: Sequence[str] = (TEST_PAIR,),
) -> LocalNode:  # fmt: skip
    """A :class:`LocalNode` for test node C{n}, carrying C{markets} (the first is its pair)."""
    return LocalNode(network=network, pair=markets[0], node_id=node_id_of(n), listen_port=port,
                     user_agent="bitfi-test/0", witnesses=witnesses,
                     markets=tuple(markets))  # fmt: skip


def version_of(
    n: int, *, port: int = 3000, nonce: int = 0, markets: Sequence[str] | None = None,
    **changes: Any,
) -> Version:  # fmt: skip
    """
    A valid ``version`` as sent by test node C{n}.

    :param markets: the markets it announces; by default, as a node of its
        protocol version says: its pair from
        :data:`~bitfitech.wire.messages.MARKETS_VERSION` on, else none.
    """
    fields: dict[str, Any] = dict(
        protocol_version=PROTOCOL_VERSION, network=TEST_NETWORK, pair=TEST_PAIR,
        node_id=node_id_of(n), port=port, user_agent="bitfi-test/0", services=(),
        nonce=nonce or n + 1000, time=0, witnesses=NO_WITNESSES,
    )  # fmt: skip
    fields.update(changes)
    if markets is None:
        markets = (fields["pair"],) if fields["protocol_version"] >= MARKETS_VERSION else ()
    return Version(**fields, markets=tuple(markets))


@implementer(ILinkOwner)
class RecordingOwner:
    """A link owner that admits every link and records what links report."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.own_nonces: set[int] = set()
        self.ready: list[Any] = []
        self.messages: list[tuple[Any, Message]] = []
        self.closed: list[tuple[Any, str]] = []
        self.misbehaved: list[tuple[Any, str]] = []
        self.scores: list[int] = []

    def is_own_nonce(self, nonce: int) -> bool:
        return nonce in self.own_nonces

    def link_ready(self, link: Any) -> str | None:
        if self.refuse is None:
            self.ready.append(link)
        return self.refuse

    def link_message(self, link: Any, message: Message) -> None:
        self.messages.append((link, message))

    def link_closed(self, link: Any, reason: str) -> None:
        self.closed.append((link, reason))

    def link_misbehaved(self, link: Any, reason: str, score: int) -> None:
        self.misbehaved.append((link, reason))
        self.scores.append(score)


def loopback_config(data_dir: str, **changes: Any) -> NodeConfig:
    """
    A config for a test node on 127.0.0.1 with OS-chosen ports.

    Discovery is off unless a test turns it on (``mdns_interface="127.0.0.1"``
    keeps mDNS on loopback; the DHT binds to the node's host, 127.0.0.1).
    Every node shares 127.0.0.1, so the per-address inbound limits are
    raised to 64.
    """
    fields: dict[str, Any] = dict(
        data_dir=data_dir, port=0, host="127.0.0.1", api_port=0, api_host="127.0.0.1",
        network=TEST_NETWORK, pair=TEST_PAIR, dial_interval=0.25, connect_timeout=2.0,
        timing=LinkTiming(handshake_timeout=5.0, ping_interval=5.0, ping_timeout=5.0),
        mdns_enabled=False, dht_enabled=False, nat="off",
        # every test node shares 127.0.0.1: the per-address limits must not bite
        max_inbound_per_ip=64, max_handshakes_per_ip=64,
    )  # fmt: skip
    fields.update(changes)
    return NodeConfig(**fields)


class LocalCluster:
    """
    Real nodes in one process and reactor, on 127.0.0.1 with OS-chosen ports.

    Each node logs under its data directory's name as node tag (``node0``,
    ``node1``...; see :mod:`bitfitech.logs` and :func:`build_node`'s
    ``log_tag``).

    :ivar nodes: the started nodes, in start order.
    """

    def __init__(self, base_dir: str, reactor: Any) -> None:
        self.base_dir = base_dir
        self.reactor = reactor
        self.nodes: list[Node] = []

    def start_node(self, *, bootstrap_to: Iterable[Node] = (), **changes: Any) -> Node:
        """
        Build and start one more node, bootstrapped to C{bootstrap_to}
        (plus any C{bootstrap} addresses given among the config C{changes}:
        :class:`~bitfitech.config.NodeConfig` fields, such as
        ``markets=("BTC/USD", "ETH/USD")`` for a node of two markets).
        """
        data_dir = os.path.join(self.base_dir, f"node{len(self.nodes)}")
        bootstrap = tuple(changes.pop("bootstrap", ())) + tuple(
            PeerAddress(n.config.host, n.peers.listen_port) for n in bootstrap_to
        )
        node = self._build(loopback_config(data_dir, bootstrap=bootstrap, **changes))
        # Listed first, so that :meth:`stop` also stops a node whose start
        # failed half-way (its running flag is set before its children start).
        self.nodes.append(node)
        node.startService()
        return node

    def _build(self, config: NodeConfig) -> Node:
        """Build a node whose lines carry its tag (:func:`log_tag`)."""
        return build_node(config, self.reactor, log_tag=log_tag(config))

    def witness_addresses(self, count: int) -> tuple[PeerAddress, ...]:
        """
        The addresses of the cluster's next C{count} nodes, on free ports and
        pinned to the keys made for them now in their data directories:
        start them next, in order, with these ports.
        """
        addresses = []
        for i, port in enumerate(free_ports(count)):
            data_dir = os.path.join(self.base_dir, f"node{len(self.nodes) + i}")
            os.makedirs(data_dir, exist_ok=True)
            node_id = load_or_create_identity(data_dir).node_id
            addresses.append(PeerAddress("127.0.0.1", port, node_id))
        return tuple(addresses)

    def start_witnesses(
        self, count: int, **changes: Any
    ) -> tuple[tuple[PeerAddress, ...], list[Node]]:
        """
        Start C{count} witness nodes of one network (a fair-order network),
        each naming them all.

        :return: their addresses (for other nodes' ``witnesses``) and the nodes.
        """
        addresses = self.witness_addresses(count)
        nodes = [
            self.start_node(port=address.port, witnesses=addresses, **changes)
            for address in addresses
        ]
        return addresses, nodes

    def restart_node(self, node: Node) -> Node:
        """Build and start a stopped node again, from the same configuration and data directory."""
        if node.running:
            raise ValueError("stop the node first")
        again = self._build(node.config)
        self.nodes.append(again)
        again.startService()
        return again

    def stop_node(self, node: Node) -> Deferred[Any]:
        """Stop one node (it stays in :attr:`nodes`)."""
        d = node.stopService()
        return d if isinstance(d, Deferred) else Deferred.fromCoroutine(_none())

    def stop(self) -> Deferred[Any]:
        """Stop every running node."""
        return gatherResults([self.stop_node(n) for n in self.nodes if n.running])


async def _none() -> None:
    return None


def log_tag(config: NodeConfig) -> str:
    """The node tag of a :class:`LocalCluster` node: its data directory's name."""
    return os.path.basename(os.path.normpath(config.data_dir))


S = TypeVar("S", str, bytes)

EDITS = ("replace", "insert", "delete", "duplicate", "truncate")
"""The edits :func:`edited` makes to an encoding, as a broken or hostile peer would."""

SPECIAL_BYTES = (
    b"\0",
    b"\xff",
    b'"',
    b"[",
    b"{",
    b"}",
    b"]",
    b",",
    b"1",
    b"-",
    b"e",
    b"\\u",
    b"\x80",
)
"""Bytes that matter to JSON and UTF-8, put in by edits now and then instead of random ones."""


def edited(value: S, edit: str, start: int, end: int, piece: Callable[[], S]) -> S:
    """
    C{value} after one of :data:`EDITS` at C{value[start:end]}: replaced by
    C{piece()}, C{piece()} inserted at C{start}, deleted, repeated, or the
    rest cut off at C{start}.  The fuzz tests draw the edits with
    hypothesis, the decoder benchmark with a seeded random generator.

    :param piece: called only by the edits that put something in.
    """
    if edit == "replace":
        return value[:start] + piece() + value[end:]
    if edit == "insert":
        return value[:start] + piece() + value[start:]
    if edit == "delete":
        return value[:start] + value[end:]
    if edit == "duplicate":
        return value[:end] + value[start:end] + value[end:]
    return value[:start]


def global_reactor() -> Any:
    """
    The global reactor, imported when called and never when a module is
    imported, so that trial (or twistd) installs its reactor first.

    Typed ``Any``: tests use it as several reactor interfaces at once
    (time, TCP, UDP, processes).
    """
    from twisted.internet import reactor

    return reactor


class ClusterTestCase(TestCase):
    """
    A trial test case whose tests start real nodes on 127.0.0.1.

    Each test gets an empty :class:`LocalCluster` on the global reactor, in
    a fresh directory of its own; every node it started is stopped when the
    test ends, pass or fail, so no port or connection outlives it.  A
    subclass that overrides :meth:`setUp` calls this one first.

    :ivar reactor: the global reactor (see :func:`global_reactor`).
    :ivar cluster: this test's cluster; its directory exists.
    """

    def setUp(self) -> None:
        self.reactor = global_reactor()
        base_dir = self.mktemp()
        os.makedirs(base_dir)
        self.cluster = LocalCluster(base_dir, self.reactor)
        self.addCleanup(self.cluster.stop)


def wait_for(
    nodes: Iterable[Node], predicate: Callable[[], bool], timeout: float, reactor: Any,
    what: str = "condition",
) -> Deferred[float]:  # fmt: skip
    """
    Fire when C{predicate()} holds, checked after every link or address
    change on C{nodes}; fail with :class:`TimeoutError` after C{timeout} s.

    :return: a Deferred firing with the seconds it took.
    """
    started = reactor.seconds()
    d: Deferred[float] = Deferred()
    pending: list[Any] = []

    def check() -> None:
        pending.clear()
        if not d.called and predicate():
            timer.cancel()
            d.callback(reactor.seconds() - started)

    def changed() -> None:
        if not pending and not d.called:
            pending.append(reactor.callLater(0, check))

    def expire() -> None:
        for call in pending:
            if call.active():
                call.cancel()
        if not d.called:
            d.errback(TimeoutError(f"{what} not reached in {timeout} s"))

    timer = reactor.callLater(timeout, expire)
    for node in nodes:
        node.peers.hub.subscribe(changed)
    changed()
    return d


def connected_components(nodes: Iterable[Node]) -> list[set[str]]:
    """The groups of C{nodes} (by node id) that reach each other over ready links."""
    by_id = {n.storage.identity.node_id: n for n in nodes if n.running}
    seen: set[str] = set()
    groups = []
    for start in by_id:
        if start in seen:
            continue
        group, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current in group:
                continue
            group.add(current)
            todo.extend(p for p in by_id[current].peers.hub.links if p in by_id)
        seen |= group
        groups.append(group)
    return groups


def poll_until(
    reactor: Any, predicate: Callable[[], bool], timeout: float, what: str = "condition",
    interval: float = 0.02,
) -> Deferred[float]:  # fmt: skip
    """
    Fire when C{predicate()} holds, checked every C{interval} seconds; fail
    with :class:`TimeoutError` after C{timeout} s.

    :return: a Deferred firing with the seconds it took.
    """
    started = reactor.seconds()
    d: Deferred[float] = Deferred()

    def check() -> None:
        if predicate():
            d.callback(reactor.seconds() - started)
        elif reactor.seconds() - started > timeout:
            d.errback(TimeoutError(f"{what} not reached in {timeout} s"))
        else:
            reactor.callLater(interval, check)

    check()
    return d


def market_state(node: Node, market: str | None = None) -> tuple[str, int, int]:
    """
    A node's ``(state hash, events held, trades)`` in C{market} (by
    default its first), with buffered events applied.
    """
    service = node.markets[market] if market is not None else node.market
    service.flush()
    ledger = service.ledger
    return ledger.state_hash(), len(ledger), ledger.trade_count


STRANDED = (
    "a node holds an event that can never be placed: every witness stamped it, too few of "
    "the receipts count (their stamps reached the other witnesses too late: here, the "
    "reactor shared by all in-process nodes stalled), nothing stamps it again, and it "
    "blocks its author's later events; a node bug, shown by "
    "tests/integration/test_fair_order.py, test_late_stamps_strand_no_order"
)
"""Why :func:`poll_placed` skips a test."""


def stranded_events(node: Node, market: str | None = None) -> list[Event]:
    """
    The events, first of their authors, that C{node} holds in C{market}
    (by default its first) and can never place in fair order: every
    witness's receipt of it is held, fewer than f + 1 count, and the
    settled horizon is past them all (so their counting is decided).  See
    :data:`STRANDED`.
    """
    ledger = (node.markets[market] if market is not None else node.market).ledger
    fair = ledger.fair
    if fair is None:
        return []
    witnesses = ledger.witnesses
    stranded = []
    for author, top in ledger.vector().items():
        first = None
        for seq in range(top, 0, -1):
            event = ledger.chain_event(author, seq)
            if event is None or ledger.is_applied(event):
                break
            first = event
        if first is None or fair.fair_time(first.id) is not None:
            continue
        receipts = fair.receipts(first.id)
        if (
            len(receipts) == witnesses.n
            and sum(counted for _, counted in receipts.values()) < witnesses.counted
            and ledger.settled_horizon > max(at for at, _ in receipts.values())
        ):
            stranded.append(first)
    return stranded


async def poll_placed(
    reactor: Any, nodes: Iterable[Node], predicate: Callable[[], bool], timeout: float,
    what: str = "condition",
) -> None:  # fmt: skip
    """
    :func:`poll_until` for tests on a fair-order network that need every
    event placed: skip the test (:data:`STRANDED`) as soon as a node holds
    an event that can never be, instead of waiting C{timeout} to fail.
    """
    nodes = list(nodes)
    stranded: list[Event] = []

    def done() -> bool:
        if predicate():
            return True
        for node in nodes:
            for market in node.markets.names:
                stranded.extend(stranded_events(node, market))
        return bool(stranded)

    await poll_until(reactor, done, timeout, what)
    if stranded and not predicate():
        raise SkipTest(f"{what}: {STRANDED} ({len(stranded)}, {stranded[0].id})")


class ScriptedLink(Protocol):
    """
    A client link that sends its chunks once connected (over TLS: once the
    handshake is done), then only waits to be closed.

    :ivar lost: fires when the connection is lost.
    :ivar closed: whether it was.
    """

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.lost: Deferred[None] = Deferred()
        self.closed = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        for chunk in self.chunks:
            self.transport.write(chunk)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.lost.callback(None)


class _ScriptedFactory(Factory):
    noisy = False

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.built: list[ScriptedLink] = []

    def buildProtocol(self, addr: Any) -> ScriptedLink:
        protocol = ScriptedLink(self.chunks)
        self.built.append(protocol)
        return protocol


class HostilePeer:
    """
    A peer with an address and a key of its own that sends a node what it
    is told, over TLS links it opens from C{host} (all of 127.0.0.0/8 is
    loopback, so banning 127.0.0.3 does not shut out honest test nodes on
    127.0.0.1).

    :ivar author: the key its events are signed with.
    :ivar links: every link it opened.
    """

    def __init__(self, reactor: Any, target: Node, host: str = "127.0.0.3") -> None:
        self.reactor = reactor
        self.host = host
        self.port = target.peers.listen_port
        self.author = Author(secrets.token_bytes(32), TEST_NETWORK, TEST_PAIR)
        self.seq = 0
        self.links: list[ScriptedLink] = []
        self.identity = NodeIdentity.from_seed(secrets.token_bytes(32))

    def hello(self) -> list[bytes]:
        """
        A valid handshake for a fresh key (keys cost nothing), whose
        certificate the next :meth:`connect` presents.
        """
        self.identity = NodeIdentity.from_seed(secrets.token_bytes(32))
        version = Version(PROTOCOL_VERSION, TEST_NETWORK, TEST_PAIR, self.identity.node_id, 0,
                          "hostile/0", (), secrets.randbelow(2**63) + 1,
                          int(self.reactor.seconds()), NO_WITNESSES)  # fmt: skip
        return [frame_of(version), frame_of(Verack())]

    def events(self, count: int, *, forge: bool = False) -> bytes:
        """C{count} events of its own key, at most 1,000 per message; forged if C{forge}."""
        frames = []
        for start in range(0, count, 1000):
            batch = []
            for _ in range(min(1000, count - start)):
                self.seq += 1
                now = int(self.reactor.seconds() * 1000)
                event = self.author.order(self.seq, now + self.seq, now, "sell", "limit",
                                          "90000", "0.001")  # fmt: skip
                sig = event.sig
                if forge:
                    sig = ("0" if sig[0] != "0" else "1") + sig[1:]
                batch.append((event.text, sig))
            frames.append(frame_of(Events(tuple(batch), 3, False)))
        return b"".join(frames)

    async def connect(self, chunks: list[bytes]) -> ScriptedLink | None:
        """Open one TLS link from C{host} that sends C{chunks}; ``None`` if refused."""
        factory = _ScriptedFactory(chunks)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=5,
                                      bindAddress=(self.host, 0))  # fmt: skip
        try:
            tls = NodeTLS(self.identity, self.reactor.seconds())
            await endpoint.connect(TLSLinkFactory(tls, True, factory, clock=self.reactor))
        except Exception:
            return None
        link = factory.built[0]
        self.links.append(link)
        return link

    def close_all(self) -> None:
        """Abort every link still open."""
        for link in self.links:
            if not link.closed and link.transport is not None:
                link.transport.abortConnection()  # type: ignore[attr-defined]


def has_ipv6_loopback() -> bool:
    """Whether this host can bind ``::1`` (tests over IPv6 are skipped, saying so, if not)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_ports(count: int) -> list[int]:
    """
    Pick C{count} distinct TCP ports on 127.0.0.1 that nobody listens on now
    (for nodes run as separate processes, which must be told their ports).

    All sockets are held until every port is picked, so the ports differ.
    """
    with reserved_ports(count) as ports:
        return ports


@contextlib.contextmanager
def reserved_ports(count: int) -> Iterator[list[int]]:
    """
    Pick C{count} distinct TCP ports on 127.0.0.1 and hold them (bound,
    not listening) until the block ends: meanwhile no socket of this
    process or another that asks the OS for a port (a proxy listening on
    port 0) can be given one of them.  Release them just before the
    processes that must listen on them start.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        yield [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _udp_address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("UDP", host, port)
    return IPv4Address("UDP", host, port)


@implementer(IUDPTransport)
class RecordingUDPTransport:
    """
    A UDP transport that records what is written, for protocol unit tests.

    Unlike Twisted's ``twisted.internet.testing.FakeDatagramTransport``, it
    provides :class:`~twisted.internet.interfaces.IUDPTransport` and the
    multicast calls (mDNS joins groups and sets its interface and TTL), and
    refuses to write without an address.

    :ivar written: ``(datagram, (host, port))`` in the order written.
    :ivar groups: multicast groups joined, as ``(group, interface)``.
    :ivar outgoing_interface: the last interface set for multicast sends.
    :ivar loopback_mode: the last multicast loopback mode set.
    :ivar ttl: the last multicast TTL set.
    :ivar listening: ``False`` once ``stopListening`` was called.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 6881) -> None:
        self.host = host
        self.port = port
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.groups: list[tuple[str, str]] = []
        self.outgoing_interface = ""
        self.loopback_mode = 1
        self.ttl = 1
        self.broadcast = False
        self.listening = True

    def write(self, packet: bytes, addr: tuple[str, int] | None = None) -> None:
        if addr is None:
            raise ValueError("a RecordingUDPTransport is never connected: give an address")
        self.written.append((bytes(packet), addr))

    def connect(self, host: str, port: int) -> None:
        raise NotImplementedError("connected UDP is not faked")

    def getHost(self) -> IPv4Address | IPv6Address:
        return _udp_address(self.host, self.port)

    def stopListening(self) -> None:
        self.listening = False

    def loseConnection(self) -> None:
        self.stopListening()

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self.broadcast = enabled

    def getBroadcastAllowed(self) -> bool:
        return self.broadcast

    # IMulticastTransport, for the mDNS protocols.
    def joinGroup(self, addr: str, interface: str = "") -> Deferred[None]:
        self.groups.append((addr, interface))
        return Deferred.fromCoroutine(_none())

    def leaveGroup(self, addr: str, interface: str = "") -> Deferred[None]:
        if (addr, interface) in self.groups:
            self.groups.remove((addr, interface))
        return Deferred.fromCoroutine(_none())

    def setOutgoingInterface(self, addr: str) -> Deferred[None]:
        self.outgoing_interface = addr
        return Deferred.fromCoroutine(_none())

    def getOutgoingInterface(self) -> str:
        return self.outgoing_interface

    def setLoopbackMode(self, mode: int) -> None:
        self.loopback_mode = mode

    def getLoopbackMode(self) -> int:
        return self.loopback_mode

    def setTTL(self, ttl: int) -> None:
        self.ttl = ttl

    def getTTL(self) -> int:
        return self.ttl

    def clear(self) -> list[tuple[bytes, tuple[str, int]]]:
        """Return what was written so far and forget it."""
        written, self.written = self.written, []
        return written


@implementer(IUDPTransport)
class MemoryDatagramPort:
    """One bound UDP port of a :class:`MemoryDatagramNetwork`."""

    def __init__(
        self, network: MemoryDatagramNetwork, protocol: DatagramProtocol, host: str, port: int
    ) -> None:
        self.network = network
        self.protocol = protocol
        self.host = host
        self.port = port
        self.listening = True

    def write(self, packet: bytes, addr: tuple[str, int] | None = None) -> None:
        if addr is None:
            raise ValueError("a MemoryDatagramPort is never connected: give an address")
        if self.listening:
            self.network.send(bytes(packet), (self.host, self.port), addr)

    def connect(self, host: str, port: int) -> None:
        raise NotImplementedError("connected UDP is not simulated")

    def getHost(self) -> IPv4Address | IPv6Address:
        return _udp_address(self.host, self.port)

    def stopListening(self) -> None:
        if self.listening:
            self.listening = False
            self.network.ports.pop((self.host, self.port), None)
            self.protocol.doStop()

    def loseConnection(self) -> None:
        self.stopListening()

    def setBroadcastAllowed(self, enabled: bool) -> None:
        pass

    def getBroadcastAllowed(self) -> bool:
        return False


class MemoryDatagramNetwork:
    """
    UDP between many protocols in one process, timed by a fake clock.

    Each datagram arrives C{latency} seconds after it was sent (plus up to
    C{jitter}), or is lost with probability C{loss}; a datagram to an
    address nobody listens on is dropped, as on a real network.  It
    provides ``listenUDP``, so a service written against a reactor runs on
    it when given an object that combines it with a clock (see
    :meth:`reactor`).

    :ivar ports: listening ports by ``(host, port)``.
    :ivar sent: datagrams sent; :ivar delivered: datagrams delivered;
    :ivar lost: datagrams lost or sent to nobody.
    """

    def __init__(
        self,
        clock: IReactorTime,
        rng: random.Random | None = None,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        loss: float = 0.0,
    ) -> None:
        self.clock = clock
        self.rng = rng or random.Random(0)
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.ports: dict[tuple[str, int], MemoryDatagramPort] = {}
        self.sent = self.delivered = self.lost = 0
        self._next_port = 40000

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> MemoryDatagramPort:
        """Bind C{protocol} to C{interface}:C{port} (0: the next free port)."""
        host = interface or "127.0.0.1"
        if port == 0:
            while (host, self._next_port) in self.ports:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        if (host, port) in self.ports:
            raise CannotListenError(host, port, OSError("address already in use"))
        bound = MemoryDatagramPort(self, protocol, host, port)
        self.ports[(host, port)] = bound
        protocol.makeConnection(bound)
        return bound

    def send(self, packet: bytes, source: tuple[str, int], target: tuple[str, int]) -> None:
        """Carry C{packet} from C{source} to C{target} (called by the ports)."""
        self.sent += 1
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return
        delay = self.latency + (self.rng.random() * self.jitter if self.jitter else 0.0)
        self.clock.callLater(delay, self._deliver, packet, source, (str(target[0]), int(target[1])))

    def _deliver(self, packet: bytes, source: tuple[str, int], target: tuple[str, int]) -> None:
        port = self.ports.get(target)
        if port is None or not port.listening:
            self.lost += 1
            return
        self.delivered += 1
        port.protocol.datagramReceived(packet, source)

    def reactor(self) -> DatagramNetworkReactor:
        """A reactor-like object with this network's ``listenUDP`` and its clock."""
        return DatagramNetworkReactor(self)


class DatagramNetworkReactor:
    """
    What a UDP service needs of a reactor, on a :class:`MemoryDatagramNetwork`:
    ``listenUDP`` from the network, time (``callLater``, ``seconds``,
    ``getDelayedCalls``) from its clock.  Unlike Twisted's
    :class:`twisted.internet.testing.MemoryReactor`, which only records
    listens and connects, it carries datagrams between the services on the
    network.
    """

    def __init__(self, network: MemoryDatagramNetwork) -> None:
        self.network = network
        self.listenUDP = network.listenUDP
        self.callLater = network.clock.callLater
        self.seconds = network.clock.seconds
        self.getDelayedCalls = network.clock.getDelayedCalls


class HeapClock(Clock):
    """
    A :class:`~twisted.internet.task.Clock` with O(log n) ``callLater``.

    ``Clock`` keeps its calls in a list it sorts on every ``callLater``;
    with hundreds or thousands of simulated nodes, each holding a
    housekeeping timer and a timeout per pending query, sorting costs more
    than the code under test.  This one keeps them in a heap.  Cancelled
    and rescheduled calls stay in the heap until they reach its top, where
    they are skipped.
    """

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._sequence = 0

    def _push(self, call: DelayedCall) -> None:
        self._sequence += 1
        heapq.heappush(self._heap, (call.getTime(), self._sequence, call))

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kw: object
    ) -> DelayedCall:
        call = DelayedCall(
            self.seconds() + delay,
            callable,
            args,
            kw,
            lambda c: None,
            self._push,
            seconds=self.seconds,
        )
        self._push(call)
        return call

    def _due(self, entry: tuple[float, int, DelayedCall]) -> bool:
        when, _, call = entry
        return not (call.cancelled or call.called) and when == call.getTime()

    def getDelayedCalls(self) -> list[DelayedCall]:  # type: ignore[override]
        return [entry[2] for entry in self._heap if self._due(entry)]

    def next_time(self) -> float | None:
        """When the next live call is due, or ``None``."""
        while self._heap and not self._due(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        while (when := self.next_time()) is not None and when <= self.rightNow:
            _, _, call = heapq.heappop(self._heap)
            call.called = 1
            call.func(*call.args, **call.kw)


def run_for(clock: Clock, seconds: float) -> None:
    """
    Advance C{clock} by C{seconds}, running every call due on the way, in
    order, each at its own time (so a call sees ``seconds()`` equal to the
    time it was due, and calls it schedules within the span run too).

    :param clock: a :class:`HeapClock` (fast) or a plain
        :class:`~twisted.internet.task.Clock`.
    """
    end = clock.seconds() + seconds

    def next_time() -> float | None:
        if isinstance(clock, HeapClock):
            return clock.next_time()
        return clock.calls[0].getTime() if clock.calls else None

    while (when := next_time()) is not None and when <= end:
        clock.advance(max(0.0, when - clock.seconds()))
    clock.advance(end - clock.seconds())


def free_udp_port() -> int:
    """A UDP port nobody uses on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@functools.cache
def multicast_unavailable() -> str | None:
    """
    Why multicast on 127.0.0.1 does not work here, or ``None`` if it does:
    join 224.0.0.251 on 127.0.0.1 and send one datagram to ourselves.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("", 0))
            port = sock.getsockname()[1]
            loopback = socket.inet_aton("127.0.0.1")
            sock.setsockopt(
                socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(MDNS_GROUP) + loopback
            )
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, loopback)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, struct.pack("B", 1))
            sock.settimeout(1.0)
            sock.sendto(b"bitfi multicast check", (MDNS_GROUP, port))
            data, _ = sock.recvfrom(100)
            if data != b"bitfi multicast check":
                return "multicast on 127.0.0.1 delivered something else"
    except OSError as error:
        return f"no multicast on 127.0.0.1 here: {error}"
    return None


class CertificateAuthority:
    """
    A certificate authority made in memory for tests of ``--ca-bundle`` and
    ``--certificate``: a P-256 key and a self-signed CA certificate, valid
    from a day before to a day after now.

    :ivar certificate: the CA certificate.
    """

    def __init__(
        self, name: str = "bitfi test CA", issuer: CertificateAuthority | None = None
    ) -> None:
        """
        :param issuer: the CA that certifies this one (an intermediate), or
            ``None`` for a self-signed root.
        """
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        signer = issuer or self
        self.certificate = (
            signer._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer._key, hashes.SHA256())
        )

    def _builder(self, subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        """A certificate issued by this CA, valid from a day ago to a day from now."""
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self._name)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )  # fmt: skip

    def issue(self, public_key: Any, *host_names: str) -> x509.Certificate:
        """A leaf certificate for C{public_key} naming C{host_names} (DNS SANs)."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bitfi node")])
        builder = self._builder(subject, public_key).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        if host_names:
            sans = x509.SubjectAlternativeName([x509.DNSName(h) for h in host_names])
            builder = builder.add_extension(sans, critical=False)
        return builder.sign(self._key, hashes.SHA256())


def write_pem(path: str, *certificates: x509.Certificate) -> str:
    """Write C{certificates} to C{path} as PEM, and return the path."""
    with open(path, "wb") as pem_file:
        for certificate in certificates:
            pem_file.write(certificate.public_bytes(Encoding.PEM))
    return path
