"""Integration: a hostile peer floods a node while two honest nodes trade through it.

Real nodes on loopback, over TLS.  The honest nodes A and B link from
127.0.0.1; the hostile peer connects to A from 127.0.0.3 (all of
127.0.0.0/8 is loopback), so that banning it does not shut out B.  In turn
it storms A with handshakes it never finishes, floods it with valid events
of a key of its own and with messages past the link's rate, sends events
with bad signatures and garbage, and finally a frame announcing an
oversize payload.  All the while A and B keep placing orders: every order
must reach the other node within a bound, and the hostile address must end
up banned, while A and B stay linked and unbanned.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from bitfitech.identity import NodeIdentity
from bitfitech.market.events import Author
from bitfitech.node import Node
from bitfitech.peer.tls import NodeTLS, TLSLinkFactory
from bitfitech.testing import TEST_NETWORK, TEST_PAIR, ClusterTestCase, frame_of, poll_until
from bitfitech.wire.framing import encode_frame, network_magic
from bitfitech.wire.messages import Events, Verack, Version

HOSTILE_HOST = "127.0.0.3"
#: the longest an honest order may take to reach the other node meanwhile
ORDER_BOUND = 3.0


class _Scripted(Protocol):
    """Sends its chunks once connected (over TLS: once the handshake is done)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.connected_at: float | None = None
        self.lost: Deferred[None] = Deferred()
        self.closed = False

    def connectionMade(self) -> None:
        self.connected_at = time.monotonic()
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
        self.built: list[_Scripted] = []

    def buildProtocol(self, addr: Any) -> _Scripted:
        protocol = _Scripted(self.chunks)
        self.built.append(protocol)
        return protocol


class HostilePeer:
    """A peer on 127.0.0.3 with a key of its own, which sends what it is told."""

    def __init__(self, reactor: Any, target: Node) -> None:
        self.reactor = reactor
        self.port = target.peers.listen_port
        self.author = Author(secrets.token_bytes(32), TEST_NETWORK, TEST_PAIR)
        self.seq = 0
        self.links: list[_Scripted] = []
        self.identity = NodeIdentity.from_seed(secrets.token_bytes(32))

    def hello(self) -> list[bytes]:
        """
        A valid handshake for a fresh key (keys cost nothing), whose
        certificate the next :meth:`connect` presents.
        """
        self.identity = NodeIdentity.from_seed(secrets.token_bytes(32))
        version = Version(1, TEST_NETWORK, TEST_PAIR, self.identity.node_id, 0, "hostile/0", (),
                          secrets.randbelow(2**63) + 1, int(self.reactor.seconds()))  # fmt: skip
        return [frame_of(version), frame_of(Verack())]

    def events(self, count: int, *, forge: bool = False) -> bytes:
        """C{count} events of its own key, at most 1,000 per message."""
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

    async def connect(self, chunks: list[bytes]) -> _Scripted | None:
        """Open one TLS link from 127.0.0.3 that sends C{chunks}; ``None`` if refused."""
        factory = _ScriptedFactory(chunks)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=5,
                                      bindAddress=(HOSTILE_HOST, 0))  # fmt: skip
        try:
            tls = NodeTLS(self.identity, self.reactor.seconds())
            await endpoint.connect(TLSLinkFactory(tls, True, factory, clock=self.reactor))
        except Exception:
            return None
        link = factory.built[0]
        self.links.append(link)
        return link

    def close_all(self) -> None:
        for link in self.links:
            if not link.closed and link.transport is not None:
                link.transport.abortConnection()  # type: ignore[attr-defined]


class HostilePeerTests(ClusterTestCase):
    timeout = 60

    async def trade(
        self, nodes: tuple[Node, Node], latencies: list[float], stop: list[bool]
    ) -> None:
        """Place orders on both nodes in turn until told to stop; time each arrival."""
        n = 0
        while not stop[0]:
            source, target = nodes[n % 2], nodes[(n + 1) % 2]
            started = self.reactor.seconds()
            doc = await source.control.submit_order("buy", f"{40000 + n}", "0.01", "limit")
            order_id = doc["id"]

            def arrived(target: Node = target, order_id: str = order_id) -> bool:
                return target.control.order(order_id) is not None

            await poll_until(self.reactor, arrived, ORDER_BOUND * 3, f"order {n} on B or A",
                             interval=0.005)  # fmt: skip
            latencies.append(self.reactor.seconds() - started)
            n += 1
            await deferLater(self.reactor, 0.05, lambda: None)

    async def test_hostile_peer_is_banned_and_honest_orders_flow(self) -> None:
        a = self.cluster.start_node(max_inbound_per_ip=8, max_handshakes_per_ip=4)
        b = self.cluster.start_node(bootstrap_to=[a])
        b_id = b.storage.identity.node_id
        await poll_until(self.reactor, lambda: b_id in a.peers.hub.links, 10, "A and B linked")
        hostile = HostilePeer(self.reactor, a)
        self.addCleanup(hostile.close_all)
        latencies: list[float] = []
        stop = [False]
        trading = Deferred.fromCoroutine(self.trade((a, b), latencies, stop))
        hub = a.peers.hub

        # 1. A handshake storm: 30 TLS links that never say version.
        refused_before = hub.refused_inbound
        for _ in range(30):
            await hostile.connect([])
        await poll_until(self.reactor, lambda: hub.refused_inbound - refused_before >= 20, 10,
                         "the storm refused past 4 handshakes")  # fmt: skip

        def pending_from_hostile() -> int:
            return sum(link.peer_host == HOSTILE_HOST for link in hub.pending)

        self.assertLessEqual(pending_from_hostile(), 4)
        hostile.close_all()
        await poll_until(self.reactor, lambda: pending_from_hostile() == 0, 5, "storm links gone")

        # 2. A flood of valid events of its own key, and messages past the link's rate.
        flood = await hostile.connect(hostile.hello() + [hostile.events(3000)])
        self.assertIsNotNone(flood)
        chatter = encode_frame(network_magic(TEST_NETWORK), "chatter", b"x")
        rate = await hostile.connect(hostile.hello() + [chatter * 6000])
        self.assertIsNotNone(rate)

        # 3. Events with bad signatures: a violation, so the address is banned.
        await deferLater(self.reactor, 0.5, lambda: None)
        await hostile.connect(hostile.hello() + [hostile.events(5, forge=True)])
        await poll_until(self.reactor, lambda: any(row["address"] == HOSTILE_HOST
                                                   for row in a.control.banned()),
                         10, "the hostile address banned")  # fmt: skip

        # 4. Garbage and an oversize frame from the banned address: refused at once.
        oversize = network_magic(TEST_NETWORK) + b"events\x00\x00\x00\x00\x00\x00"
        oversize += (2**31).to_bytes(4, "little") + b"\x00" * 4
        refused_banned = hub.refused_banned
        for chunks in ([secrets.token_bytes(4096)], hostile.hello() + [oversize]):
            link = await hostile.connect(chunks)
            if link is not None:
                await link.lost
        self.assertGreaterEqual(hub.refused_banned - refused_banned, 2)

        # Honest trading went on throughout, within the bound.
        await deferLater(self.reactor, 0.5, lambda: None)
        stop[0] = True
        await trading
        self.assertGreaterEqual(len(latencies), 5)
        self.assertLess(max(latencies), ORDER_BOUND, latencies)
        # The message flood was throttled and scored; the forged events banned.
        self.assertGreaterEqual(hub.misbehaviour_count, 2)
        self.assertIn("bad signature", a.control.banned()[0]["reason"])
        self.assertIn(b_id, a.peers.hub.links)
        banned = [row["address"] for row in a.control.banned()]
        self.assertEqual(banned, [HOSTILE_HOST])
        self.assertEqual(b.control.banned(), [])
        # The valid events of the hostile key reached B through A like any others.
        await poll_until(self.reactor, lambda: len(b.market.ledger) >= 3000, 20,
                         "the hostile key's valid events on B")  # fmt: skip
