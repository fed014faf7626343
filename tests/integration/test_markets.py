"""
Integration: real nodes of several markets each, on loopback (one reactor).

Data path: an order goes to its market's service on a node
(``node.markets["ETH/USD"].submit``) -> that market's Gossip -> the
:class:`~bitfitech.gossip.GossipRouter` -> the links to peers that carry
the market -> their router -> their Gossip and service of that market.
A and B carry BTC/USD and ETH/USD, C only ETH/USD: each market's book
holds its own events only and converges on every node that carries it,
C never hears of BTC/USD, ETH/USD events cross B between A and C, and a
node started again finds both its markets' histories.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import gatherResults

from bitfitech.node import Node
from bitfitech.testing import HANG_GUARD, TEST_PAIR, ClusterTestCase, market_state, poll_until

from .test_pairs import GOSSIP, node_id, router_of

BTC, ETH = TEST_PAIR, "ETH/USD"
BOTH = (BTC, ETH)


def pairs_held(node: Node, market: str) -> set[str]:
    """The pairs of every event a node's C{market} holds."""
    ledger = node.markets[market].ledger
    return {event.pair for author in ledger.vector() for event in ledger.chain_of(author)}


def trade_ids(node: Node, market: str) -> set[str]:
    ledger = node.markets[market].ledger
    return {trade.id for trade in ledger.trades(ledger.trade_count)}


def tables_of(node: Node) -> list[str]:
    """The tables of a node's database."""
    rows = node.storage.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return sorted(str(name) for (name,) in rows)


class ManyMarketsTests(ClusterTestCase):
    """A, B (BTC/USD and ETH/USD) and C (ETH/USD), in a line and in a triangle."""

    timeout = 120

    def setUp(self) -> None:
        super().setUp()
        self.carriers: dict[str, list[Node]] = {}

    def start(self, markets: tuple[str, ...], **changes: Any) -> Node:
        node = self.cluster.start_node(markets=markets, gossip=GOSSIP, **changes)
        self.assertEqual(node.markets.names, markets)
        self.assertEqual(list(node.gossips), list(markets))
        for market in markets:
            self.carriers.setdefault(market, []).append(node)
        return node

    async def linked(self, links: list[tuple[Node, Node]], what: str) -> None:
        await poll_until(
            self.reactor,
            lambda: all(node_id(y) in x.peers.hub.links and node_id(x) in y.peers.hub.links
                        for x, y in links),
            HANG_GUARD, what,
        )  # fmt: skip

    async def converged(self, events: dict[str, int], what: str) -> None:
        """Wait until each market holds C{events} events and one state on every node carrying it."""

        def same() -> bool:
            for market, count in events.items():
                states = {market_state(node, market) for node in self.carriers[market]}
                if len(states) != 1 or next(iter(states))[1] != count:
                    return False
            return True

        try:
            await poll_until(self.reactor, same, HANG_GUARD, what)
        except TimeoutError:
            self.fail(f"{what}: {self.states()}")

    def states(self) -> dict[str, list[tuple[str, int, int]]]:
        return {
            market: [market_state(node, market) for node in nodes]
            for market, nodes in self.carriers.items()
        }

    async def sync_rounds(self, node: Node, market: str, rounds: int = 2) -> None:
        """Wait for C{rounds} more anti-entropy rounds of C{node}'s C{market}."""
        gossip = node.gossips[market]
        until = gossip.stats["sync_sent"] + rounds
        await poll_until(self.reactor, lambda: gossip.stats["sync_sent"] >= until, HANG_GUARD,
                         f"{market} sync rounds")  # fmt: skip

    def check_apart(self, a: Node, b: Node, c: Node) -> None:
        """
        Each market's ledger holds only its own events and trades, C knows
        nothing of BTC/USD, and nobody broke the protocol.
        """
        for market, nodes in self.carriers.items():
            for node in nodes:
                self.assertEqual(pairs_held(node, market), {market}, market)
        for node in (a, b):
            self.assertFalse(trade_ids(node, BTC) & trade_ids(node, ETH))
            self.assertEqual(node.storage.stored_markets(), [BTC, ETH])
        # C never received a BTC/USD message, and holds no table of it.
        self.assertEqual(list(router_of(c).messages_in), [ETH])
        self.assertEqual(c.storage.stored_markets(), [ETH])
        self.assertFalse([t for t in tables_of(c) if "btc" in t.lower()], tables_of(c))
        for node in (a, b):
            btc_links = [link.node_id for link in node.gossips[BTC].peers]
            self.assertNotIn(node_id(c), btc_links)
        for node in (a, b, c):
            self.assertEqual(router_of(node).ignored, 0)
            self.assertEqual(node.peers.hub.misbehaviour_count, 0)
            self.assertEqual(node.control.status()["peers"]["protocol_violations"], 0)
            for market, gossip in node.gossips.items():
                self.assertEqual(gossip.stats["events_invalid"], 0, market)

    async def test_line_relays_each_market_through_the_middle(self) -> None:
        """
        A - B - C in a line (A and C cannot link: their links are full).
        Orders on both markets at A and B: both converge on A and B, and
        A's ETH/USD order reaches C through B; C's order reaches A the same
        way.  B, started again, finds both histories.
        """
        a = self.start(BOTH, max_peers=1, outbound=0)
        b = self.start(BOTH, bootstrap_to=[a], max_peers=2, outbound=1)
        c = self.start((ETH,), bootstrap_to=[b], max_peers=1, outbound=1)
        await self.linked([(a, b), (b, c)], "the line is linked")

        await gatherResults([
            a.markets[BTC].submit("sell", "100", "1", "limit"),
            a.markets[ETH].submit("sell", "2000", "1", "limit"),
            b.markets[BTC].submit("buy", "100", "1", "limit"),
            b.markets[ETH].submit("buy", "1990", "1", "limit"),
        ])  # fmt: skip
        await self.converged({BTC: 2, ETH: 2}, "both markets, A's ETH/USD at C")
        await gatherResults([c.markets[ETH].submit("buy", "2000", "1", "limit")])
        await self.converged({BTC: 2, ETH: 3}, "C's ETH/USD order at A")
        await self.sync_rounds(b, BTC)
        await self.sync_rounds(b, ETH)

        self.assertNotIn(node_id(c), a.peers.hub.links, "still a line")
        self.assertEqual(a.markets[BTC].ledger.trade_count, 1)
        self.assertEqual(a.markets[ETH].ledger.trade_count, 1)
        self.assertGreater(router_of(c).messages_in[ETH], 0)
        self.check_apart(a, b, c)

        before = {market: market_state(b, market) for market in BOTH}
        await self.cluster.stop_node(b)
        again = self.cluster.restart_node(b)
        self.assertEqual({market: market_state(again, market) for market in BOTH}, before)
        self.assertEqual([again.markets[m].loaded_events for m in BOTH], [2, 3])

    async def test_triangle_keeps_btc_off_the_links_to_c(self) -> None:
        """
        A, B and C all linked: C's links to A and B carry ETH/USD only, and
        each market converges on the nodes that carry it.
        """
        a = self.start(BOTH)
        b = self.start(BOTH, bootstrap_to=[a])
        c = self.start((ETH,), bootstrap_to=[a, b])
        await self.linked([(a, b), (b, c), (a, c)], "the triangle is linked")
        for node in (a, b):
            [row] = [r for r in node.control.peers() if r["node_id"] == node_id(c)]
            self.assertEqual((row["markets"], row["shared_markets"]), ([ETH], [ETH]))

        await gatherResults([
            a.markets[BTC].submit("sell", "100", "2", "limit"),
            a.markets[ETH].submit("sell", "2000", "1", "limit"),
            b.markets[BTC].submit("buy", "100", "1", "limit"),
            b.markets[ETH].submit("sell", "2010", "1", "limit"),
            c.markets[ETH].submit("buy", "2005", "2", "limit"),
        ])  # fmt: skip
        await self.converged({BTC: 2, ETH: 3}, "both markets converge")
        await self.sync_rounds(a, BTC)
        await self.sync_rounds(c, ETH)

        self.assertEqual(len(a.gossips[BTC].peers), 1, "B only")
        self.assertEqual(len(a.gossips[ETH].peers), 2)
        self.assertEqual(b.markets[BTC].ledger.trade_count, 1)
        self.assertEqual(c.markets[ETH].ledger.trade_count, 1)
        self.check_apart(a, b, c)
