"""Integration: a hostile loopback peer is banned, across a restart too, then let back."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from bitfitech.node import Node, build_node
from bitfitech.testing import HANG_GUARD, ClusterTestCase, loopback_config, poll_until, wait_for

#: not this network's magic: the node's frame decoder refuses it at once
GARBAGE = b"\xde\xad\xbe\xef" + b"\x00" * 60


class _Hostile(Protocol):
    """A raw TCP client that sends C{payload} as soon as it is connected."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.payload:
            assert self.transport is not None
            self.transport.write(self.payload)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class BanTests(ClusterTestCase):
    timeout = 60

    async def connect_raw(self, node: Node, payload: bytes) -> _Hostile:
        """Connect to C{node}'s P2P port over plain TCP and send C{payload}."""
        hostile = _Hostile(payload)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", node.peers.listen_port)
        await endpoint.connect(Factory.forProtocol(lambda: hostile))
        self.addCleanup(self.drop, hostile)
        return hostile

    @staticmethod
    def drop(hostile: _Hostile) -> None:
        if hostile.transport is not None and not hostile.lost.called:
            hostile.transport.abortConnection()  # type: ignore[attr-defined]

    def restart(self, node: Node) -> Node:
        """
        A new node on C{node}'s data directory (C{node} must be stopped).

        It never dials (``outbound=0``): its address book holds the peers
        C{node} knew, and a dial of its own to one of them, at once when a
        ban is lifted, would race that peer's dial to it (one of the two
        links is then closed as a duplicate, whichever the test awaits).
        """
        config = loopback_config(node.config.data_dir, plain_tcp=True, outbound=0)
        again = build_node(config, self.reactor)
        self.cluster.nodes.append(again)
        again.startService()
        return again

    async def test_ban_refuse_restart_and_lift(self) -> None:
        a = self.cluster.start_node(plain_tcp=True)
        b = self.cluster.start_node(bootstrap_to=[a], plain_tcp=True)
        await wait_for([a, b], lambda: len(a.peers.hub.links) == 1 == len(b.peers.hub.links),
                       HANG_GUARD, self.reactor, "a link")  # fmt: skip

        # A violation scores 100: 127.0.0.1 is banned, and every link with it dropped.
        hostile = await self.connect_raw(a, GARBAGE)
        await hostile.lost
        await poll_until(self.reactor, lambda: not a.peers.hub.links and not b.peers.hub.links,
                         HANG_GUARD, "the links from 127.0.0.1 dropped")  # fmt: skip
        [row] = a.control.banned()
        self.assertEqual(row["address"], "127.0.0.1")
        self.assertAlmostEqual(row["until"] - row["banned_at"], 86_400_000, delta=1)
        self.assertIn("magic", row["reason"])
        status = a.control.status()["peers"]
        self.assertEqual((status["bans"], status["protocol_violations"]), (1, 1))
        stored = list(a.storage.connection.execute("SELECT address FROM bans"))
        self.assertEqual(stored, [("127.0.0.1",)])

        # A new connection from the banned address is closed at once, before any byte.
        refused = a.peers.hub.refused_banned
        again = await self.connect_raw(a, b"")
        await again.lost
        self.assertGreater(a.peers.hub.refused_banned, refused)
        self.assertEqual(a.peers.hub.count(), 0)
        # and the API will not dial it
        self.assertRaises(PermissionError, a.control.connect, f"127.0.0.1:{b.peers.listen_port}")

        # The ban survives a restart on the same data directory.
        await self.cluster.stop_node(a)
        a2 = self.restart(a)
        self.assertEqual(a2.control.banned(), [row])
        refused_conn = await self.connect_raw(a2, b"")
        await refused_conn.lost
        self.assertGreaterEqual(a2.peers.hub.refused_banned, 1)

        # Lifting the ban lets the peer link again.
        self.assertEqual(a2.control.unban("127.0.0.1"), row)
        self.assertEqual(a2.control.banned(), [])
        self.assertIsNone(a2.control.unban("127.0.0.1"))
        self.assertEqual(list(a2.storage.connection.execute("SELECT * FROM bans")), [])
        linked = await b.control.connect(f"127.0.0.1:{a2.peers.listen_port}")
        self.assertEqual(linked["node_id"], a2.storage.identity.node_id)
        self.assertEqual(a2.control.status()["peers"]["bans"], 0)

    async def test_per_address_handshake_limit(self) -> None:
        # over TLS: the extra connection is refused before any TLS work
        a = self.cluster.start_node(max_handshakes_per_ip=2, ban_duration=0)
        silent = [await self.connect_raw(a, b"") for _ in range(2)]
        await poll_until(self.reactor, lambda: len(a.peers.hub.pending) == 2, HANG_GUARD,
                         "2 handshakes")  # fmt: skip
        extra = await self.connect_raw(a, b"")
        await extra.lost
        self.assertEqual(a.peers.hub.refused_inbound, 1)
        for conn in silent:
            self.assertFalse(conn.lost.called)
