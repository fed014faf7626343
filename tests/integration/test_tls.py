"""Integration: peer links over TLS on 127.0.0.1, bound to the node key; and plain TCP."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from bitfitech.identity import NodeIdentity
from bitfitech.node import Node
from bitfitech.peer.protocol import LinkClosed, LocalNode, PeerProtocol
from bitfitech.peer.tls import NodeTLS, TLSLink, TLSLinkFactory
from bitfitech.testing import (
    HANG_GUARD,
    NO_WITNESSES,
    TEST_NETWORK,
    TEST_PAIR,
    ClusterTestCase,
    RecordingOwner,
    loopback_config,
    poll_until,
    wait_for,
)

IMPOSTOR = NodeIdentity.from_seed(b"\x07" * 32)


def _node_id(node: Node) -> str:
    return node.storage.identity.node_id


async def _closed(d: Deferred[Any]) -> LinkClosed:
    """The :class:`LinkClosed` C{d} fails with (any other outcome fails the test)."""
    try:
        result = await d
    except LinkClosed as e:
        return e
    raise AssertionError(f"expected the link to close, got {result!r}")


class _Impostor(Factory):
    """Builds links that claim C{claimed} in ``version`` (over the impostor's own TLS key)."""

    def __init__(self, reactor: Any, claimed: str) -> None:
        self.reactor = reactor
        self.claimed = claimed
        self.owner = RecordingOwner()
        self.links: list[PeerProtocol] = []

    def buildProtocol(self, addr: IAddress) -> PeerProtocol:  # type: ignore[override]
        config = loopback_config("unused")
        local = LocalNode(network=TEST_NETWORK, pair=TEST_PAIR, node_id=self.claimed,
                          listen_port=0, user_agent="impostor/0",
                          witnesses=NO_WITNESSES)  # fmt: skip
        link = PeerProtocol(local, self.owner, self.reactor, "outbound", timing=config.timing)
        self.links.append(link)
        return link


class TLSLinkTests(ClusterTestCase):
    timeout = 120

    async def linked(self, a: Node, b: Node) -> None:
        await wait_for([a, b], lambda: len(a.peers.hub.links) == 1 == len(b.peers.hub.links),
                       HANG_GUARD, self.reactor, "a link")  # fmt: skip

    async def test_two_nodes_link_over_tls_1_3(self) -> None:
        a = self.cluster.start_node()
        b = self.cluster.start_node(bootstrap_to=[a])
        await self.linked(a, b)
        [row_a] = a.control.peers()
        [row_b] = b.control.peers()
        self.assertEqual((row_a["node_id"], row_a["tls"]), (_node_id(b), "TLSv1.3"))
        self.assertEqual((row_b["node_id"], row_b["tls"]), (_node_id(a), "TLSv1.3"))
        self.assertIs(a.control.status()["p2p"]["tls"], True)
        link = a.peers.hub.links[_node_id(b)]
        self.assertIsInstance(link.transport, TLSLink)

    async def test_impostor_claiming_another_id_is_dropped_and_counted(self) -> None:
        a = self.cluster.start_node()
        b = self.cluster.start_node()
        impostor = _Impostor(self.reactor, claimed=_node_id(b))
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", a.peers.listen_port)
        tls = NodeTLS(IMPOSTOR, self.reactor.seconds())
        tls_link = await endpoint.connect(TLSLinkFactory(tls, True, impostor, clock=self.reactor))
        link = cast(TLSLink, tls_link).wrappedProtocol
        assert isinstance(link, PeerProtocol)
        self.addCleanup(link.close, "test over", abort=True)
        await link.when_lost()
        self.assertEqual(a.peers.hub.misbehaviour_count, 1)
        self.assertEqual(a.peers.hub.links, {})
        self.assertEqual(impostor.owner.ready, [])

    async def test_pinned_dial_to_another_key_is_dropped(self) -> None:
        a = self.cluster.start_node()
        c = self.cluster.start_node()
        # a real node, but not the pinned one
        d = c.control.connect(f"{'cd' * 20}@127.0.0.1:{a.peers.listen_port}")
        self.assertIn("not the pinned", (await _closed(d)).reason)
        # an impostor that claims the pinned node's id over its own key
        b = self.cluster.start_node()
        impostor = _Impostor(self.reactor, claimed=_node_id(b))
        tls = NodeTLS(IMPOSTOR, self.reactor.seconds())
        server = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        port = await server.listen(TLSLinkFactory(tls, False, impostor, clock=self.reactor))
        self.addCleanup(port.stopListening)
        d = c.control.connect(f"{_node_id(b)}@127.0.0.1:{port.getHost().port}")  # type: ignore[attr-defined]
        self.assertIn("certificate proves", (await _closed(d)).reason)
        self.assertEqual(c.peers.hub.misbehaviour_count, 1)
        await poll_until(self.reactor, lambda: all(lk.connection_lost for lk in impostor.links),
                         HANG_GUARD, "the impostor's link closed")  # fmt: skip
        self.assertEqual(c.peers.hub.links, {})

    async def tls_and_plain_never_link(self, plain_dials: bool) -> None:
        listener = self.cluster.start_node(plain_tcp=not plain_dials)
        dialer = self.cluster.start_node(bootstrap_to=[listener], plain_tcp=plain_dials)
        await poll_until(self.reactor, lambda: dialer.peers.dialer.dial_failures >= 2, HANG_GUARD,
                         "failed dials")  # fmt: skip
        for node in (listener, dialer):
            self.assertEqual(node.peers.hub.links, {})
        self.assertEqual(listener.control.status()["p2p"]["tls"], plain_dials)

    def test_plain_node_never_links_to_tls_node(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.tls_and_plain_never_link(plain_dials=True))

    def test_tls_node_never_links_to_plain_node(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.tls_and_plain_never_link(plain_dials=False))

    async def test_two_plain_nodes_link_with_a_warning(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        a = self.cluster.start_node(plain_tcp=True)
        b = self.cluster.start_node(bootstrap_to=[a], plain_tcp=True)
        await self.linked(a, b)
        [row] = a.control.peers()
        self.assertIsNone(row["tls"])
        self.assertIs(a.control.status()["p2p"]["tls"], False)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn
                    and "neither encrypted nor authenticated" in e["log_format"]]  # fmt: skip
        self.assertEqual(len(warnings), 2)
