"""Tests for hubs of different markets (bitfitech.peer.hub with a GossipRouter), over iosim.

Links between nodes that share no market stay up for address exchange and
reach no Gossip; links that share one carry its gossip, naming the market
to a peer that reads it (protocol version 4) and not to one that does not.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.gossip import Gossip, GossipRouter
from bitfitech.peer.addrbook import AddressBook
from bitfitech.peer.hub import REASON_NO_SHARED_MARKET, PeerHub
from bitfitech.peer.protocol import PeerProtocol
from bitfitech.testing import TEST_PAIR, frame_of, local_node, node_id_of, version_of
from bitfitech.wire.framing import FrameDecoder, network_magic
from bitfitech.wire.messages import Message, Sync, Verack, decode_message

from ..test_gossip import TIMING, FakeStore
from ..test_gossip_router import EthStore
from .test_hub import Net

ETH = "ETH/USD"


class MarketNet(Net):
    """Hubs of given markets, each with a router over one real Gossip per market."""

    def __init__(self) -> None:
        super().__init__()
        self.routers: dict[int, GossipRouter] = {}

    def hub(self, n: int, *, markets: tuple[str, ...] = (TEST_PAIR,), **options: Any) -> PeerHub:
        stores = {TEST_PAIR: FakeStore, ETH: EthStore}
        router = GossipRouter({
            market: Gossip(stores[market](), self.clock, TIMING, random.Random(n))
            for market in markets
        })  # fmt: skip
        hub = PeerHub(AddressBook(), self.clock, gossip=router, max_peers=10, max_inbound=5,
                      rng=random.Random(n), **options)  # fmt: skip
        hub.start(local_node(n, port=3000 + n, markets=markets))
        self.hubs[n] = hub
        self.routers[n] = router
        return hub


class NoSharedMarketTests(SynchronousTestCase):
    def test_link_without_shared_market_still_answers_getaddr(self) -> None:
        """
        Nodes of two pairs link, and exchange addresses as any two nodes do;
        then the dialling end closes its link, a feeler, as no market is shared.
        """
        net = MarketNet()
        a, b = net.hub(1), net.hub(2, markets=(ETH,))
        now = net.clock.seconds()
        for i in range(3):
            b.addrbook.add(f"10.0.0.{i + 1}", 4000, source="addr", now=now,
                           node_id=node_id_of(100 + i))  # fmt: skip
            b.addrbook.record_success(f"10.0.0.{i + 1}", 4000, now, None)
        out, inn = net.link(1, 2)
        self.assertEqual((out.state, inn.state), ("closed", "closed"))
        self.assertEqual(out.close_reason, REASON_NO_SHARED_MARKET)
        self.assertEqual((a.links, b.links), ({}, {}))
        self.assertEqual((out.shared_markets, inn.shared_markets), ((), ()))
        self.assertTrue(out.getaddr_answered and inn.getaddr_answered)
        for i in range(3):
            self.assertIsNotNone(a.addrbook.get(f"10.0.0.{i + 1}", 4000))
        self.assertIsNotNone(b.addrbook.get("127.0.0.1", 3001))
        self.assertEqual((a.misbehaviour_count, b.misbehaviour_count), (0, 0))
        # No Gossip heard of the link, and none of them sent a thing on it.
        for router in net.routers.values():
            self.assertEqual([dict(g.peers) for g in router.gossips.values()], [{}])
            self.assertEqual(router.first.stats["sync_sent"], 0)
            self.assertEqual(router.ignored, 0)

    def test_shared_market_carries_gossip_with_its_name(self) -> None:
        """Two nodes sharing one of their markets sync that one, named on the wire."""
        net = MarketNet()
        net.hub(1, markets=(TEST_PAIR, ETH))
        net.hub(2, markets=(ETH,))
        out, _ = net.link(1, 2)
        self.assertEqual(out.shared_markets, (ETH,))
        one, two = net.routers[1], net.routers[2]
        self.assertEqual(one.gossips[TEST_PAIR].stats["sync_sent"], 0)
        self.assertEqual(one.gossips[ETH].stats["sync_received"], 1)
        self.assertEqual(two.first.stats["sync_received"], 1)
        self.assertEqual((one.messages_in, two.messages_in), ({TEST_PAIR: 0, ETH: 1}, {ETH: 1}))
        self.assertEqual((one.ignored, two.ignored), (0, 0))
        self.assertEqual(net.hubs[1].misbehaviour_count + net.hubs[2].misbehaviour_count, 0)

    def test_peer_rows_show_markets(self) -> None:
        net = MarketNet()
        net.hub(1, markets=(TEST_PAIR, ETH))
        net.hub(2, markets=(ETH,))
        net.link(1, 2)
        [row] = net.hubs[1].link_rows()
        self.assertEqual((row["markets"], row["shared_markets"]), ([ETH], [ETH]))


class WireTests(SynchronousTestCase):
    """One real link of a hub, over a StringTransport: what its Gossip writes on the wire."""

    def sent_after_handshake(self, **version: Any) -> list[Message]:
        net = MarketNet()
        hub = net.hub(1)
        link = hub.build_link("inbound", host="127.0.0.2")
        assert isinstance(link, PeerProtocol)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.2", 50002))
        link.makeConnection(transport)
        link.dataReceived(frame_of(version_of(2, **version)) + frame_of(Verack()))
        self.assertEqual(link.state, "ready")
        decoder = FrameDecoder(network_magic("test"))
        decoder.feed(transport.value())
        out = []
        while (frame := decoder.next_frame()) is not None:
            out.append(decode_message(frame.command, frame.payload))
        return out

    def test_version_4_peer_sent_the_market(self) -> None:
        [sync] = [m for m in self.sent_after_handshake() if isinstance(m, Sync)]
        self.assertEqual(sync.market, TEST_PAIR)

    def test_version_3_peer_sent_no_market(self) -> None:
        """A version 3 peer of our pair gets its gossip as version 3 wrote it: no ``market``."""
        [sync] = [m for m in self.sent_after_handshake(protocol_version=3) if isinstance(m, Sync)]
        self.assertEqual(sync.market, "")

    def test_version_3_peer_of_another_pair_sent_no_gossip(self) -> None:
        sent = self.sent_after_handshake(protocol_version=3, pair=ETH)
        self.assertEqual([m for m in sent if isinstance(m, Sync)], [])
