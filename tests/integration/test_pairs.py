"""
Integration: real nodes of two different pairs on loopback (one reactor).

Data path: each node's orders go API -> market -> its Gossip -> the
:class:`~bitfitech.gossip.GossipRouter`, which hands a link only to the
Gossip of a market both ends carry.  Nodes of BTC/USD and of ETH/USD link
(no ``wrong pair`` refusal since protocol version 4) and exchange
addresses over that link, and no gossip crosses it either way.
"""

from __future__ import annotations

from twisted.internet.defer import gatherResults

from bitfitech.config import GossipTiming
from bitfitech.gossip import GossipRouter
from bitfitech.node import Node
from bitfitech.testing import HANG_GUARD, TEST_PAIR, ClusterTestCase, market_state, poll_until

ETH = "ETH/USD"

#: quick anti-entropy: a sync round every second
GOSSIP = GossipTiming(sync_interval=1.0)


def router_of(node: Node) -> GossipRouter:
    """The gossip router a node's peer layer reports to."""
    router = node.peers.gossip
    assert isinstance(router, GossipRouter)
    return router


def node_id(node: Node) -> str:
    return node.storage.identity.node_id


class TwoPairsTests(ClusterTestCase):
    timeout = 60

    async def test_nodes_of_two_pairs_link_and_keep_their_books_apart(self) -> None:
        """
        A and C carry BTC/USD, B ETH/USD; B and C are bootstrapped to A.
        B's link to A shares no market: a feeler, it is closed once A has
        answered B's ``getaddr``, as a success, with A's markets noted.  B
        learns C's address through A, and each book holds its own market's
        orders only: A and C replicate theirs, B keeps its own, no gossip
        message crosses a market, and nobody is scored for misbehaviour.
        """
        a = self.cluster.start_node(gossip=GOSSIP)
        c = self.cluster.start_node(bootstrap_to=[a], gossip=GOSSIP)
        await poll_until(self.reactor, lambda: node_id(c) in a.peers.hub.links, HANG_GUARD,
                         "C linked to A")  # fmt: skip
        b = self.cluster.start_node(bootstrap_to=[a], pair=ETH, gossip=GOSSIP)
        self.assertEqual(b.config.markets, (ETH,))
        c_address = ("127.0.0.1", c.peers.listen_port)

        a_address = ("127.0.0.1", a.peers.listen_port)

        def b_told_and_done() -> bool:
            return (
                b.peers.addrbook.get(*c_address) is not None
                and node_id(a) not in b.peers.hub.links
                and node_id(b) not in a.peers.hub.links
            )

        await poll_until(self.reactor, b_told_and_done, HANG_GUARD, "B's feeler to A done")
        entry = b.peers.addrbook.get(*a_address)
        assert entry is not None
        self.assertEqual((entry.markets, entry.failures), (frozenset({TEST_PAIR}), 0))
        self.assertGreater(entry.successes, 0)

        await gatherResults([
            b.control.submit_order("buy", "2000.00", "2", "limit"),
            a.control.submit_order("sell", "100.00", "1", "limit"),
            c.control.submit_order("buy", "99.00", "1", "limit"),
        ])  # fmt: skip
        await poll_until(
            self.reactor,
            lambda: market_state(a) == market_state(c) and market_state(a)[1] == 2,
            HANG_GUARD,
            "A and C hold both BTC/USD orders",
        )
        # A sync round or two later, still nothing crossed between markets.
        synced = a.gossip.stats["sync_sent"] + 2
        await poll_until(self.reactor, lambda: a.gossip.stats["sync_sent"] >= synced,
                         HANG_GUARD, "A's next sync rounds")  # fmt: skip

        self.assertEqual(market_state(b)[1], 1)
        self.assertEqual(a.control.book(10)["bids"], [["99", "1", 1]])
        self.assertEqual(a.control.book(10)["asks"], [["100", "1", 1]])
        self.assertEqual(b.control.book(10), {"bids": [["2000", "2", 1]], "asks": []})
        for node, market in ((a, TEST_PAIR), (b, ETH), (c, TEST_PAIR)):
            ledger = node.market.ledger
            pairs = {event.pair for author in ledger.vector() for event in ledger.chain_of(author)}
            self.assertEqual(pairs, {market})
        # No gossip message went between the two markets, either way.
        self.assertEqual(router_of(b).messages_in, {ETH: 0})
        self.assertEqual(b.gossip.stats["sync_received"], 0)
        self.assertEqual({router_of(n).ignored for n in (a, b, c)}, {0})
        self.assertEqual(len(a.gossip.peers), 1)  # C only
        for node in (a, b, c):
            self.assertEqual(node.peers.hub.misbehaviour_count, 0)
            self.assertEqual(node.control.status()["peers"]["protocol_violations"], 0)
