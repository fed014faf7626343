"""Tests for the markets of the handshake (bitfitech.peer.protocol), protocol version 4 on.

A node says every market it carries in its ``version``; a peer that says
none (a version 3 node) carries its pair alone.  Peers of other markets
link (for address exchange); what each link shares is ours ∩ theirs, in
our order (``docs/protocol.rst``, "Markets").
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.peer.protocol import LocalNode, PeerProtocol, link_info
from bitfitech.testing import TEST_PAIR, RecordingOwner, local_node, version_of
from bitfitech.wire.messages import MARKETS_VERSION, Verack, Version

from .test_protocol import TIMING, Link

ETH = "ETH/USD"
LTC = "LTC/USD"


class LocalNodeTests(SynchronousTestCase):
    def test_no_markets_means_the_pair(self) -> None:
        """A node given no markets carries its pair alone."""
        local = LocalNode(network="test", pair=ETH, node_id="0" * 40, listen_port=0,
                          user_agent="x", witnesses="")  # fmt: skip
        self.assertEqual(local.markets, (ETH,))

    def test_first_market_is_the_pair(self) -> None:
        """Markets that do not start with the pair are refused, as ``version`` would."""
        with self.assertRaises(ValueError):
            LocalNode(network="test", pair=TEST_PAIR, node_id="0" * 40, listen_port=0,
                      user_agent="x", witnesses="", markets=(ETH, TEST_PAIR))  # fmt: skip


class VersionSentTests(SynchronousTestCase):
    def test_one_market_announced(self) -> None:
        """Our ``version`` names our one market: a version 4 peer then knows it for sure."""
        [version] = Link().sent()
        assert isinstance(version, Version)
        self.assertEqual((version.pair, version.markets), (TEST_PAIR, (TEST_PAIR,)))
        self.assertGreaterEqual(version.protocol_version, MARKETS_VERSION)

    def test_every_market_announced_pair_first(self) -> None:
        [version] = Link(local=local_node(1, markets=(TEST_PAIR, ETH))).sent()
        assert isinstance(version, Version)
        self.assertEqual((version.pair, version.markets), (TEST_PAIR, (TEST_PAIR, ETH)))


class PeerMarketsTests(SynchronousTestCase):
    def test_version_3_peer_links_for_its_pair(self) -> None:
        """
        A version 3 peer (no ``markets``) handshakes with our version 4
        node: it carries its pair, which we share, and reads no market.
        """
        link = Link()
        link.receive(version_of(2, protocol_version=3), Verack())
        protocol = link.protocol
        self.assertEqual(protocol.state, "ready")
        self.assertEqual(protocol.protocol_version, 3)
        self.assertEqual(protocol.markets, (TEST_PAIR,))
        self.assertEqual(protocol.shared_markets, (TEST_PAIR,))
        self.assertFalse(protocol.names_markets)
        self.assertEqual(link.owner.misbehaved, [])

    def test_version_4_peer_without_markets_carries_its_pair(self) -> None:
        link = Link()
        link.receive(version_of(2, markets=()), Verack())
        self.assertEqual(link.protocol.markets, (TEST_PAIR,))
        self.assertTrue(link.protocol.names_markets)

    def test_shared_markets_in_our_order(self) -> None:
        link = Link(local=local_node(1, markets=(TEST_PAIR, ETH, LTC)))
        link.receive(version_of(2, pair="XRP/USD", markets=("XRP/USD", ETH, TEST_PAIR)), Verack())
        protocol = link.protocol
        self.assertEqual(protocol.state, "ready")
        self.assertEqual(protocol.markets, ("XRP/USD", ETH, TEST_PAIR))
        self.assertEqual(protocol.shared_markets, (TEST_PAIR, ETH))
        self.assertTrue(protocol.names_markets)

    def test_no_markets_before_the_version(self) -> None:
        link = Link()
        self.assertEqual((link.protocol.markets, link.protocol.shared_markets), ((), ()))
        self.assertFalse(link.protocol.names_markets)

    def test_peer_row_shows_markets(self) -> None:
        """``GET /peers`` rows say what the peer carries and what the link shares."""
        link = Link(local=local_node(1, markets=(TEST_PAIR, ETH)))
        link.receive(version_of(2, pair=ETH, markets=(ETH, LTC)), Verack())
        row = link_info(link.protocol, None)
        self.assertEqual((row["markets"], row["shared_markets"]), ([ETH, LTC], [ETH]))
        link = Link()
        link.receive(version_of(2, pair=LTC), Verack())
        row = link_info(link.protocol, None)
        self.assertEqual((row["markets"], row["shared_markets"]), ([LTC], []))


class TwoPairsTests(SynchronousTestCase):
    def test_nodes_of_two_pairs_link_both_ways(self) -> None:
        """Two nodes of different pairs (in memory, iosim) both become ready, sharing nothing."""
        clock = Clock()
        owners = RecordingOwner(), RecordingOwner()
        client = PeerProtocol(local_node(1), owners[0], clock, "outbound",
                              timing=TIMING, nonce=1)  # fmt: skip
        server = PeerProtocol(local_node(2, markets=(ETH,)), owners[1], clock, "inbound",
                              timing=TIMING, nonce=2)  # fmt: skip
        pump = connect(server, FakeTransport(server, True), client, FakeTransport(client, False))
        pump.flush()
        self.assertEqual((client.state, server.state), ("ready", "ready"))
        self.assertEqual((client.markets, server.markets), ((ETH,), (TEST_PAIR,)))
        self.assertEqual((client.shared_markets, server.shared_markets), ((), ()))
        self.assertEqual((owners[0].misbehaved, owners[1].misbehaved), ([], []))
