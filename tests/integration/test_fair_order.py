"""Integration: real nodes on 127.0.0.1 in fair order, with three witnesses.

Orders entered on two plain nodes get their fair time from the witnesses'
stamps, every node derives the same trade, and it goes tentative, settled,
final; a witness stopped for a while stalls final but not settlement.
Stamps that reach the other witnesses late for a moment leave no order
out of the log for good (its witnesses list it again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from bitfitech.market.ledger import FINAL, SETTLED
from bitfitech.market.stamps import Stamp
from bitfitech.node import Node
from bitfitech.testing import HANG_GUARD, ClusterTestCase, poll_until, wait_for


def status_of_trade(node: Node) -> str | None:
    """The state of the node's newest trade, or ``None`` without one."""
    ledger = node.market.ledger
    trades = ledger.trades(1)
    return ledger.status_at(trades[0].position) if trades else None


class LateStamps:
    """
    Holds back the stamps a witness signs by C{delay} seconds, in order,
    while C{late} is set: its links to the other witnesses are slow.
    """

    def __init__(self, node: Node, delay: float, reactor: Any) -> None:
        self.gossip, self.delay, self.reactor = node.gossip, delay, reactor
        self.late = True
        self._publish = self.gossip.publish_stamps
        self.gossip.publish_stamps = self.publish  # type: ignore[method-assign]

    def publish(self, stamps: Sequence[Stamp]) -> None:
        """The gossip's ``publish_stamps``, which the market calls with each own stamp."""
        if self.late:
            self.reactor.callLater(self.delay, self._publish, stamps)
        else:
            self._publish(stamps)


class FairOrderTests(ClusterTestCase):
    timeout = 90

    async def start(self) -> tuple[list[Node], list[Node]]:
        """Three witnesses and two plain nodes, all linked to one another's witnesses."""
        witnesses, chosen = self.cluster.start_witnesses(3)
        plain = [
            self.cluster.start_node(witnesses=witnesses, bootstrap_to=chosen[:1]) for _ in range(2)
        ]
        nodes = chosen + plain

        def linked() -> bool:
            return all(len(node.peers.hub.links) >= 3 for node in plain) and all(
                len(node.peers.hub.links) >= 2 for node in chosen
            )

        await wait_for(nodes, linked, HANG_GUARD, self.reactor, "links to the witnesses")
        return chosen, plain

    async def test_trade_settles_then_final(self) -> None:
        """A trade between two plain nodes is the same everywhere and becomes final."""
        witnesses, (seller, buyer) = await self.start()
        nodes = witnesses + [seller, buyer]
        await seller.market.submit("sell", "100", "1", "limit")
        await buyer.market.submit("buy", "100", "1", "limit")
        await poll_until(
            self.reactor,
            lambda: all(status_of_trade(node) == FINAL for node in nodes),
            HANG_GUARD,
            "the trade final everywhere",
        )
        hashes = {node.market.ledger.state_hash() for node in nodes}
        self.assertEqual(len(hashes), 1)
        status = buyer.control.status()
        self.assertEqual(status["ordering"], "fair")
        self.assertEqual(status["witnesses"]["n"], 3)
        self.assertEqual(status["witnesses"]["flagged"], {})
        self.assertEqual(status["market"]["revisions"], 0)
        self.assertIsNone(status["witnesses"]["me"])
        self.assertEqual(witnesses[0].control.status()["witnesses"]["me"] is not None, True)

    async def test_witness_down_stalls_final_not_settled(self) -> None:
        """
        With one witness stopped, a new trade settles but is not final;
        restarted (same key, same journal), it catches up and the trade
        becomes final.
        """
        witnesses, (seller, buyer) = await self.start()
        down = witnesses[2]
        await self.cluster.stop_node(down)
        await seller.market.submit("sell", "100", "1", "limit")
        await buyer.market.submit("buy", "100", "1", "limit")
        live = witnesses[:2] + [seller, buyer]
        await poll_until(
            self.reactor,
            lambda: all(status_of_trade(node) == SETTLED for node in live),
            HANG_GUARD,
            "the trade settled with a witness down",
        )
        pause: Deferred[None] = Deferred()
        self.reactor.callLater(1.0, pause.callback, None)
        await pause
        self.assertEqual({status_of_trade(node) for node in live}, {SETTLED})
        again = self.cluster.restart_node(down)
        await poll_until(
            self.reactor,
            lambda: all(status_of_trade(node) == FINAL for node in [*live, again]),
            HANG_GUARD,
            "the trade final once the witness is back",
        )
        self.assertEqual(len({node.market.ledger.state_hash() for node in [*live, again]}), 1)

    async def test_late_stamps_strand_no_order(self) -> None:
        """
        Two of the three witnesses' stamps reach the others 400 ms late for
        a moment (more than the 250 ms window), just as they stamp an
        order: their receipts of it do not count.  Once they are on time
        again, the order still gets a fair time and is placed everywhere.
        """
        witnesses, (seller, buyer) = await self.start()
        nodes = witnesses + [seller, buyer]
        slow = [LateStamps(w, 0.4, self.reactor) for w in witnesses[:2]]
        sell = await seller.market.submit("sell", "100", "1", "limit")
        own = [w.market.witnesses.index(w.storage.identity.node_id) for w in witnesses]

        def stamped() -> bool:
            fair = [w.market.ledger.fair for w in witnesses]
            return all(
                f is not None and i in f.receipts(sell.id) for f, i in zip(fair, own, strict=True)
            )

        await poll_until(self.reactor, stamped, HANG_GUARD, "the sell stamped by every witness")
        pause: Deferred[None] = Deferred()
        self.reactor.callLater(0.5, pause.callback, None)
        await pause
        for late in slow:
            late.late = False
        await buyer.market.submit("buy", "100", "1", "limit")

        def decided() -> bool:
            # placed everywhere, or the settled horizon 2 s past every receipt
            # of the sell on every node: past that, nothing more can count
            for node in nodes:
                ledger = node.market.ledger
                fair = ledger.fair
                assert fair is not None
                held = ledger.get(sell.id)  # this node's copy of the event
                if held is not None and ledger.is_applied(held):
                    continue
                receipts = fair.receipts(sell.id)
                if len(receipts) < 3:
                    return False
                if ledger.settled_horizon < max(at for at, _ in receipts.values()) + 2_000_000:
                    return False
            return True

        await poll_until(self.reactor, decided, HANG_GUARD, "the sell decided everywhere")
        for node in nodes:
            ledger = node.market.ledger
            held = ledger.get(sell.id)
            assert held is not None
            self.assertTrue(ledger.is_applied(held), ledger.fair.receipts(sell.id))  # type: ignore[union-attr]
        # (Whether the buy then trades everywhere is not checked here: in 1
        # of 4 runs it was still unplaced on some node 30 s later, the
        # open "events left out under load" bug of issue 17.)


def market_trade_status(node: Node, market: str) -> str | None:
    """The state of the newest trade of C{node}'s C{market}, or ``None`` without one."""
    ledger = node.markets[market].ledger
    trades = ledger.trades(1)
    return ledger.status_at(trades[0].position) if trades else None


class FairMarketsTests(ClusterTestCase):
    """Fair order per market: one witness set stamps each market's events in its own chain."""

    timeout = 90

    async def test_two_markets_each_final(self) -> None:
        """
        Three witnesses and two plain nodes, all carrying BTC/USD and
        ETH/USD: a trade in each market becomes final everywhere, each
        market's state is the same on every node, and neither trade is in
        the other's book.
        """
        markets = ("BTC/USD", "ETH/USD")
        addresses, witnesses = self.cluster.start_witnesses(3, markets=markets)
        plain = [self.cluster.start_node(witnesses=addresses, bootstrap_to=witnesses[:1],
                                         markets=markets) for _ in range(2)]  # fmt: skip
        nodes = witnesses + plain
        await wait_for(nodes, lambda: all(len(n.peers.hub.links) >= 3 for n in plain),
                       HANG_GUARD, self.reactor, "links to the witnesses")  # fmt: skip
        seller, buyer = plain
        for market, price in (("BTC/USD", "100"), ("ETH/USD", "7")):
            await seller.markets[market].submit("sell", price, "1", "limit")
            await buyer.markets[market].submit("buy", price, "1", "limit")
        await poll_until(
            self.reactor,
            lambda: all(market_trade_status(n, m) == FINAL for n in nodes for m in markets),
            HANG_GUARD,
            "both trades final everywhere",
        )
        for market in markets:
            self.assertEqual(len({n.markets[market].ledger.state_hash() for n in nodes}), 1)
            for node in nodes:
                ledger = node.markets[market].ledger
                self.assertEqual(ledger.ordering, "fair")
                self.assertEqual({event.pair for event in ledger.log()}, {market})
                [trade] = ledger.trades(5)
                self.assertTrue(trade.maker in ledger and trade.taker in ledger)
        for row in buyer.control.markets():
            self.assertEqual(row["witnesses_missing"], [], row["market"])

    async def test_witnesses_without_a_market_are_named(self) -> None:
        """
        Witnesses that carry only BTC/USD, and a node of BTC/USD and
        ETH/USD: its ETH/USD row of ``GET /markets`` names every witness as
        missing (none stamps ETH/USD's events); its BTC/USD row none.
        """
        addresses, witnesses = self.cluster.start_witnesses(3, markets=("BTC/USD",))
        node = self.cluster.start_node(witnesses=addresses, bootstrap_to=witnesses[:1],
                                       markets=("BTC/USD", "ETH/USD"))  # fmt: skip
        await wait_for([*witnesses, node], lambda: len(node.peers.hub.links) >= 3, HANG_GUARD,
                       self.reactor, "links to the witnesses")  # fmt: skip
        ids = sorted(w.storage.identity.node_id for w in witnesses)
        btc, eth = node.control.markets()
        self.assertEqual((btc["witnesses_missing"], eth["witnesses_missing"]), ([], ids))
