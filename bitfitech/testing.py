"""Fakes and helpers for tests of bitfi, shipped with the package.

Nothing here is used by a running node.  It gives tests the pieces every
layer needs: frames of real messages, a link owner that records what a
link reports, and an in-process cluster of real nodes on loopback.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from zope.interface import implementer

from .address import PeerAddress
from .config import LinkTiming, NodeConfig
from .interfaces import ILinkOwner
from .node import Node, build_node
from .peer.protocol import LocalNode
from .wire.framing import encode_frame, network_magic
from .wire.messages import Message, Version, encode_message

TEST_NETWORK = "test"
TEST_PAIR = "BTC/USD"


def frame_of(message: Message, network: str = TEST_NETWORK) -> bytes:
    """The bytes of one framed C{message} on C{network}."""
    command, payload = encode_message(message)
    return encode_frame(network_magic(network), command, payload)


def node_id_of(n: int) -> str:
    """A well-formed, distinct node id for test number C{n}."""
    return f"{n:040x}"


def local_node(n: int = 1, *, port: int = 3000, network: str = TEST_NETWORK) -> LocalNode:
    """A :class:`LocalNode` for test node C{n}."""
    return LocalNode(network=network, pair=TEST_PAIR, node_id=node_id_of(n), listen_port=port,
                     user_agent="bitfi-test/0")  # fmt: skip


def version_of(n: int, *, port: int = 3000, nonce: int = 0, **changes: Any) -> Version:
    """A valid ``version`` as sent by test node C{n}."""
    fields: dict[str, Any] = dict(
        protocol_version=1, network=TEST_NETWORK, pair=TEST_PAIR, node_id=node_id_of(n),
        port=port, user_agent="bitfi-test/0", services=(), nonce=nonce or n + 1000, time=0,
    )  # fmt: skip
    fields.update(changes)
    return Version(**fields)


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

    def link_misbehaved(self, link: Any, reason: str) -> None:
        self.misbehaved.append((link, reason))


def loopback_config(data_dir: str, **changes: Any) -> NodeConfig:
    """A config for a test node on 127.0.0.1 with OS-chosen ports."""
    fields: dict[str, Any] = dict(
        data_dir=data_dir, port=0, host="127.0.0.1", api_port=0, api_host="127.0.0.1",
        network=TEST_NETWORK, pair=TEST_PAIR, dial_interval=0.25, connect_timeout=2.0,
        timing=LinkTiming(handshake_timeout=5.0, ping_interval=5.0, ping_timeout=5.0),
    )  # fmt: skip
    fields.update(changes)
    return NodeConfig(**fields)


class LocalCluster:
    """
    Real nodes in one process and reactor, on 127.0.0.1 with OS-chosen ports.

    :ivar nodes: the started nodes, in start order.
    """

    def __init__(self, base_dir: str, reactor: Any) -> None:
        self.base_dir = base_dir
        self.reactor = reactor
        self.nodes: list[Node] = []

    def start_node(self, *, bootstrap_to: Iterable[Node] = (), **changes: Any) -> Node:
        """
        Build and start one more node, bootstrapped to C{bootstrap_to}
        (plus any C{bootstrap} addresses given among the config C{changes}).
        """
        data_dir = os.path.join(self.base_dir, f"node{len(self.nodes)}")
        bootstrap = tuple(changes.pop("bootstrap", ())) + tuple(
            PeerAddress(n.config.host, n.peers.listen_port) for n in bootstrap_to
        )
        node = build_node(loopback_config(data_dir, bootstrap=bootstrap, **changes), self.reactor)
        node.startService()
        self.nodes.append(node)
        return node

    def stop_node(self, node: Node) -> Deferred[Any]:
        """Stop one node (it stays in :attr:`nodes`)."""
        d = node.stopService()
        return d if isinstance(d, Deferred) else Deferred.fromCoroutine(_none())

    def stop(self) -> Deferred[Any]:
        """Stop every running node."""
        return gatherResults([self.stop_node(n) for n in self.nodes if n.running])


async def _none() -> None:
    return None


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


def market_state(node: Node) -> tuple[str, int, int]:
    """A node's ``(state hash, events held, trades)``, with buffered events applied."""
    market = node.market
    market.flush()
    ledger = market.ledger
    return ledger.state_hash(), len(ledger), ledger.trade_count


def free_ports(count: int) -> list[int]:
    """
    Pick C{count} distinct TCP ports on 127.0.0.1 that nobody listens on now
    (for nodes run as separate processes, which must be told their ports).

    All sockets are held until every port is picked, so the ports differ.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
