"""
Integration: peer selection per market, real nodes on loopback (one reactor).

Data path: the dialer picks an address from the address book -> the hub
admits the link -> its ``version`` says the peer's markets.  A link that
shares no market with the node that dialled it fills no outbound target:
it is a feeler, closed once it has answered ``getaddr``, and the dialer
goes on with the addresses it gave, until it reaches a node of its market.
"""

from __future__ import annotations

from bitfitech.node import Node
from bitfitech.testing import HANG_GUARD, TEST_PAIR, ClusterTestCase, poll_until

from .test_pairs import node_id

BTC, ETH = TEST_PAIR, "ETH/USD"


class MarketLinkTests(ClusterTestCase):
    timeout = 60

    async def test_node_dialling_other_markets_first_finds_its_own(self) -> None:
        """
        C carries ETH/USD; A (BTC/USD) reached it once, by a feeler, so it
        vouches for C's address.  E (ETH/USD) is bootstrapped to A and B,
        both BTC/USD only: its first links are feelers, closed without a
        failure once they answered, and E ends up linked to C.
        """
        c = self.cluster.start_node(markets=(ETH,))
        a = self.cluster.start_node(bootstrap_to=[c])
        c_address = ("127.0.0.1", c.peers.listen_port)

        def a_vouches_for_c() -> bool:
            entry = a.peers.addrbook.get(*c_address)
            return entry is not None and entry.successes > 0 and node_id(c) not in a.peers.hub.links

        await poll_until(self.reactor, a_vouches_for_c, HANG_GUARD, "A reached C by a feeler")
        b = self.cluster.start_node(bootstrap_to=[a])
        await poll_until(self.reactor, lambda: node_id(b) in a.peers.hub.links, HANG_GUARD,
                         "B linked to A")  # fmt: skip

        e = self.cluster.start_node(markets=(ETH,), bootstrap_to=[a, b])

        def linked_to_c(node: Node) -> bool:
            return node_id(c) in node.peers.hub.links

        await poll_until(self.reactor, lambda: linked_to_c(e), HANG_GUARD, "E linked to C")
        hub = e.peers.hub
        self.assertGreaterEqual(hub.links_by_market()[ETH], 1)
        self.assertEqual(hub.links[node_id(c)].shared_markets, (ETH,))
        # E's feelers to A and B did their work and closed: no failure, no rest.
        book = e.peers.addrbook
        for other in (a, b):
            entry = book.get("127.0.0.1", other.peers.listen_port)
            assert entry is not None
            self.assertEqual((entry.markets, entry.failures, entry.suspended_until),
                             (frozenset({BTC}), 0, 0.0))  # fmt: skip
            self.assertGreater(entry.successes, 0)
        await poll_until(
            self.reactor,
            lambda: not any(link.direction == "outbound" and not link.shared_markets
                            for link in hub.links.values()),
            HANG_GUARD, "E's feelers closed",
        )  # fmt: skip
        self.assertEqual(e.peers.dialer.dial_failures, 0)
        for node in (a, b, c, e):
            self.assertEqual(node.peers.hub.misbehaviour_count, 0)
