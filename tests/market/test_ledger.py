"""Tests for :mod:`bitfitech.market.ledger`, by example: the rules of its module docstring.

Chains by seq (gaps wait, a Lamport time that does not increase stops the
chain, the smaller id wins an equivocation), the total order by
``(lamport, author, seq)``, cancels only by the order's author, rollback and
replay from snapshots, derived trades, outcomes, the anti-entropy summary
and settlement.  :mod:`tests.market.test_convergence` checks the same rules
on random event sets.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.market.book import BookParams
from bitfitech.market.events import Author, Event
from bitfitech.market.ledger import APPLIED, NOT_OWNER, Ledger, Outcome, TradeRecord

from .strategies import AUTHORS, random_events

ALICE, BOB, CAROL, DAVE, ERIN = AUTHORS
# Key order among equal Lamport times: by author hex.
assert ERIN.author < BOB.author < ALICE.author < DAVE.author < CAROL.author

TICKS_100 = 10_000  # "100" in ticks of the default 0.01
LOT = 100_000_000  # "1" in lots of the default 0.00000001


def order(
    author: Author,
    seq: int,
    lamport: int,
    side: str,
    price: str | None = "100",
    amount: str = "1",
    order_type: str = "limit",
) -> Event:
    """A signed order of C{author}; its ts is its Lamport time in seconds."""
    return author.order(seq, lamport, lamport * 1000, side, order_type, price, amount)


def cancel(author: Author, seq: int, lamport: int, target: Event | str) -> Event:
    """A signed cancel of C{target} by C{author}."""
    order_id = target if isinstance(target, str) else target.id
    return author.cancel(seq, lamport, lamport * 1000, order_id)


def state(ledger: Ledger) -> tuple[Any, ...]:
    """Everything two ledgers holding the same events must agree on."""
    return (
        ledger.state_hash(),
        ledger.log_hash,
        [tuple(trade) for trade in ledger.trades(10**9)],
        ledger.vector(),
        [event.id for event in ledger.log()],
        len(ledger),
    )


def fed_in_key_order(
    events: list[Event], snapshot_interval: int = 32, max_snapshots: int = 32
) -> Ledger:
    """A fresh ledger given C{events} one at a time in key order."""
    ledger = Ledger(snapshot_interval=snapshot_interval, max_snapshots=max_snapshots)
    for event in sorted(events, key=lambda event: event.key):
        ledger.insert([event])
    return ledger


def trade_id(taker: Event, maker: Event) -> str:
    """The id every node gives the trade of C{taker} with C{maker}."""
    return hashlib.sha256(f"trade {taker.id} {maker.id}".encode("ascii")).hexdigest()


class ConstructionTests(SynchronousTestCase):
    """A new ledger."""

    def test_empty(self) -> None:
        """An empty ledger holds nothing and has no trades."""
        ledger = Ledger()
        self.assertEqual(
            (len(ledger), ledger.applied, ledger.authors, ledger.lamport), (0, 0, 0, 0)
        )
        self.assertEqual(ledger.vector(), {})
        self.assertEqual(ledger.trades(10), [])
        self.assertEqual(ledger.snapshot_positions(), [0])
        self.assertEqual(ledger.state_hash(), Ledger().state_hash())
        self.assertEqual(ledger.log_hash, "00" * 32)

    def test_bad_options(self) -> None:
        """Snapshots need an interval of at least 1 and at least 4 kept."""
        self.assertRaises(ValueError, Ledger, snapshot_interval=0)
        self.assertRaises(ValueError, Ledger, max_snapshots=3)


class ChainTests(SynchronousTestCase):
    """Each author's events apply in seq order, as a chain."""

    def test_in_seq_order(self) -> None:
        """A single author's orders apply in seq order, whatever order they arrive in."""
        events = [order(ALICE, seq, seq, "sell", f"{100 + seq}") for seq in (1, 2, 3)]
        for arrival in (events, events[::-1], [events[1], events[0], events[2]]):
            ledger = Ledger()
            for event in arrival:
                ledger.insert([event])
            self.assertEqual(ledger.log(), events)
            self.assertEqual(len(ledger.book), 3)
            self.assertTrue(all(ledger.is_applied(event) for event in events))
            self.assertEqual(ledger.vector(), {ALICE.author: 3})

    def test_insert_result(self) -> None:
        """An insert reports new events, duplicates and what it appended."""
        a1, a2 = order(ALICE, 1, 1, "sell"), order(ALICE, 2, 2, "sell", "101")
        ledger = Ledger()
        result = ledger.insert([a1, a1, a2])
        self.assertEqual((result.new, result.duplicates), ([a1, a2], 1))
        self.assertEqual((result.appended, result.replayed, result.revised), (2, 0, False))
        again = ledger.insert([a2, a1])
        self.assertEqual((again.new, again.duplicates, again.appended), ([], 2, 0))
        self.assertIn(a1.id, ledger)
        self.assertIs(ledger.get(a2.id), a2)
        self.assertIsNone(ledger.get("0" * 64))

    def test_gap_is_held(self) -> None:
        """seq 2 without seq 1 is held but not applied until seq 1 arrives."""
        a1, a2 = order(ALICE, 1, 1, "sell", "101"), order(ALICE, 2, 2, "sell", "102")
        ledger = Ledger()
        result = ledger.insert([a2])
        self.assertEqual(result.new, [a2])
        self.assertEqual((len(ledger), ledger.applied, ledger.gaps()), (1, 0, 1))
        self.assertFalse(ledger.is_applied(a2))
        self.assertIsNone(ledger.open_order(a2.id))
        self.assertEqual(ledger.vector(), {})  # nothing contiguous: left out
        self.assertEqual(ledger.next_seq(ALICE.author), 3)
        self.assertIs(ledger.chain_event(ALICE.author, 2), a2)
        self.assertIsNone(ledger.chain_event(ALICE.author, 1))
        self.assertEqual(ledger.lamport, 2)
        ledger.insert([a1])
        self.assertEqual(ledger.log(), [a1, a2])
        self.assertEqual((ledger.applied, ledger.gaps()), (2, 0))
        self.assertEqual(ledger.vector(), {ALICE.author: 2})
        self.assertIsNotNone(ledger.open_order(a2.id))

    def test_next_seq(self) -> None:
        """next_seq is 1 for a new author, else one past the highest seq held."""
        ledger = Ledger()
        self.assertEqual(ledger.next_seq(ALICE.author), 1)
        ledger.insert([order(ALICE, 1, 1, "sell"), order(ALICE, 2, 2, "sell")])
        self.assertEqual(ledger.next_seq(ALICE.author), 3)
        ledger.insert([order(ALICE, 5, 5, "sell")])
        self.assertEqual(ledger.next_seq(ALICE.author), 6)
        self.assertEqual(ledger.next_seq(BOB.author), 1)

    def test_lamport_must_increase(self) -> None:
        """A Lamport time that does not increase ends the applied prefix and flags the author."""
        for second in (5, 4):
            a1 = order(ALICE, 1, 5, "sell", "101")
            a2 = order(ALICE, 2, second, "sell", "102")
            a3 = order(ALICE, 3, 9, "sell", "103")
            b1 = order(BOB, 1, 6, "sell", "104")
            for arrival in ([a1, a2, a3, b1], [a3, a2, b1, a1]):
                ledger = Ledger()
                for event in arrival:
                    ledger.insert([event])
                self.assertEqual(ledger.log(), [a1, b1])
                self.assertEqual(ledger.flagged, {ALICE.author: "lamport"})
                self.assertEqual(len(ledger), 4)
                self.assertFalse(ledger.is_applied(a2))
                self.assertFalse(ledger.is_applied(a3))
                self.assertIsNone(ledger.open_order(a3.id))
                # Held, so the anti-entropy summary counts them.
                self.assertEqual(ledger.vector(), {ALICE.author: 3, BOB.author: 1})


class EquivocationTests(SynchronousTestCase):
    """Two different events in one (author, seq) slot: the smaller id wins everywhere."""

    def setUp(self) -> None:
        self.x = order(ALICE, 1, 5, "sell", "100")
        self.y = order(ALICE, 1, 5, "sell", "101")
        self.winner, self.loser = sorted((self.x, self.y), key=lambda event: event.id)
        self.a2 = order(ALICE, 2, 6, "sell", "102")
        self.b1 = order(BOB, 1, 7, "buy", "101", "2")

    def check(self, ledger: Ledger) -> None:
        self.assertIs(ledger.chain_event(ALICE.author, 1), self.winner)
        self.assertTrue(ledger.is_applied(self.winner))
        self.assertFalse(ledger.is_applied(self.loser))
        self.assertIn(self.loser.id, ledger)
        self.assertEqual(ledger.flagged, {ALICE.author: "equivocation"})
        self.assertEqual(set(ledger.conflicts()), {self.x, self.y})
        self.assertEqual(len(ledger.conflicts()), 2)
        # Later events of the author still apply.
        self.assertTrue(ledger.is_applied(self.a2))
        self.assertEqual(ledger.log(), [self.winner, self.a2, self.b1])

    def test_every_insertion_order(self) -> None:
        """One at a time, in batches, in any order: the same winner and the same state."""
        x, y, a2, b1 = self.x, self.y, self.a2, self.b1
        states = []
        for batches in (
            [[x], [y], [a2], [b1]],
            [[y], [x], [a2], [b1]],
            [[a2], [b1], [x], [y]],
            [[a2], [b1], [y], [x]],
            [[x, y, a2, b1]],
            [[y, x, b1, a2]],
            [[b1, y], [a2, x]],
        ):
            ledger = Ledger()
            seen = []
            for batch in batches:
                seen += ledger.insert(batch).equivocations
            self.assertEqual(seen, [(ALICE.author, 1)])
            self.check(ledger)
            states.append(state(ledger))
        for other in states[1:]:
            self.assertEqual(other, states[0])

    def test_winner_arriving_late_rolls_back(self) -> None:
        """When the smaller id arrives second it replaces the first in the log."""
        ledger = Ledger()
        ledger.insert([self.loser, self.a2, self.b1])
        self.assertTrue(ledger.is_applied(self.loser))
        result = ledger.insert([self.winner])
        self.assertGreater(result.replayed, 0)
        self.assertEqual(ledger.rollbacks, 1)
        self.check(ledger)

    def test_loser_arriving_late_changes_nothing(self) -> None:
        """When the larger id arrives second the log is unchanged (but the author is flagged)."""
        ledger = Ledger()
        ledger.insert([self.winner, self.a2, self.b1])
        before = state(ledger)
        result = ledger.insert([self.loser])
        self.assertEqual((result.replayed, result.appended), (0, 0))
        self.assertEqual(result.equivocations, [(ALICE.author, 1)])
        self.assertEqual(state(ledger)[:3], before[:3])
        self.check(ledger)

    def test_three_claims(self) -> None:
        """A third event in the slot: still the smallest id wins, and all three are evidence."""
        z = order(ALICE, 1, 5, "sell", "99")
        ledger = Ledger()
        ledger.insert([self.x, self.a2])
        ledger.insert([z])
        ledger.insert([self.y])
        smallest = min((self.x, self.y, z), key=lambda event: event.id)
        self.assertIs(ledger.chain_event(ALICE.author, 1), smallest)
        self.assertEqual(set(ledger.conflicts()), {self.x, self.y, z})
        self.assertEqual(ledger.log(), [smallest, self.a2])


class CancelTests(SynchronousTestCase):
    """Cancels take effect only on an open order of the same author."""

    def test_cancel_by_author(self) -> None:
        """The author's cancel cancels its open order."""
        a1 = order(ALICE, 1, 1, "sell", amount="2")
        a2 = cancel(ALICE, 2, 2, a1)
        ledger = Ledger()
        ledger.insert([a1, a2])
        self.assertIsNone(ledger.open_order(a1.id))
        self.assertEqual(len(ledger.book), 0)
        self.assertEqual(ledger.outcome(a1.id), Outcome("cancelled", "user", 2 * LOT, 1))
        self.assertEqual(ledger.outcome(a2.id), Outcome(APPLIED, "", 0, 1))

    def test_cancel_by_another_author(self) -> None:
        """Another author's cancel does nothing: cancel_rejected, not_owner."""
        a1 = order(ALICE, 1, 1, "sell")
        b1 = cancel(BOB, 1, 2, a1)
        ledger = Ledger()
        ledger.insert([a1, b1])
        self.assertIsNotNone(ledger.open_order(a1.id))
        self.assertIsNone(ledger.outcome(a1.id))
        self.assertEqual(ledger.outcome(b1.id), Outcome("cancel_rejected", NOT_OWNER, 0, 1))

    def test_cancel_not_open(self) -> None:
        """A cancel of an unknown, filled or cancelled order: cancel_rejected, not_open."""
        a1 = order(ALICE, 1, 1, "sell")
        b1 = order(BOB, 1, 2, "buy")  # fills a1
        a2 = cancel(ALICE, 2, 3, a1)
        a3 = cancel(ALICE, 3, 4, "0" * 64)
        a4 = order(ALICE, 4, 5, "sell", "105")
        a5 = cancel(ALICE, 5, 6, a4)
        a6 = cancel(ALICE, 6, 7, a4)
        a7 = cancel(ALICE, 7, 8, a3)  # a cancel is no order
        ledger = Ledger()
        ledger.insert([a1, b1, a2, a3, a4, a5, a6, a7])
        self.assertEqual(ledger.outcome(a1.id), Outcome("filled", "", 0, 1))
        rejected = ("cancel_rejected", "not_open", 0)
        for event in (a2, a3, a6, a7):
            outcome = ledger.outcome(event.id)
            assert outcome is not None
            self.assertEqual(outcome[:3], rejected, event)
        self.assertEqual(ledger.outcome(a5.id), Outcome(APPLIED, "", 0, 5))

    def test_cancel_arriving_first(self) -> None:
        """A cancel inserted before its order ends in the same state as in-order insertion."""
        a1 = order(ALICE, 1, 1, "sell")
        b1 = order(BOB, 1, 2, "sell", "101")
        a2 = cancel(ALICE, 2, 3, a1)
        c1 = order(CAROL, 1, 4, "buy", "101")
        in_order = Ledger()
        in_order.insert([a1, b1, a2, c1])
        for arrival in ([a2, c1, b1, a1], [a2, a1, b1, c1], [c1, a2, b1, a1]):
            ledger = Ledger()
            for event in arrival:
                ledger.insert([event])
            self.assertEqual(state(ledger), state(in_order))
            self.assertEqual(ledger.outcome(a1.id), in_order.outcome(a1.id))
            self.assertEqual(ledger.outcome(a2.id), in_order.outcome(a2.id))
        # c1 traded with b1, not with the cancelled a1.
        (trade,) = in_order.trades(10)
        self.assertEqual((trade.taker, trade.maker), (c1.id, b1.id))


class TradeTests(SynchronousTestCase):
    """Trades are derived from the log."""

    def test_trade_record(self) -> None:
        """A trade's id hashes its taker and maker ids; its fields are the engine's."""
        maker = order(BOB, 1, 1, "sell", "100", "2")
        taker = order(CAROL, 1, 3, "buy", "101", "1")
        ledger = Ledger()
        ledger.insert([taker, maker])
        (trade,) = ledger.trades(10)
        self.assertEqual(
            trade,
            TradeRecord(
                trade_id(taker, maker), 1, TICKS_100, LOT, "buy", taker.id, maker.id, 3, 3000, 1
            ),
        )
        self.assertEqual(ledger.trade_count, 1)
        self.assertEqual(ledger.outcome(taker.id), Outcome("filled", "", 0, 1))
        self.assertIsNone(ledger.outcome(maker.id))
        maker_left = ledger.open_order(maker.id)
        assert maker_left is not None
        self.assertEqual(maker_left.remaining, LOT)

    def test_trades_newest_first(self) -> None:
        """trades(limit) gives the newest C{limit} trades, newest first."""
        makers = [order(BOB, seq, seq, "sell", f"{99 + seq}") for seq in (1, 2, 3)]
        taker = order(CAROL, 1, 4, "buy", "102", "3")
        ledger = Ledger()
        ledger.insert([*makers, taker])
        oldest_first = [trade_id(taker, maker) for maker in makers]
        self.assertEqual([t.id for t in ledger.trades(3)], oldest_first[::-1])
        self.assertEqual([t.id for t in ledger.trades(99)], oldest_first[::-1])
        self.assertEqual([t.id for t in ledger.trades(2)], oldest_first[:0:-1])
        self.assertEqual([t.id for t in ledger.trades(1)], oldest_first[2:])
        self.assertEqual(ledger.trades(0), [])
        self.assertEqual([t.seq for t in ledger.trades(3)], [3, 2, 1])
        self.assertEqual([t.price for t in ledger.trades(3)], [10_200, 10_100, 10_000])

    def test_trades_of(self) -> None:
        """trades_of(order) lists an order's trades, oldest first."""
        maker = order(BOB, 1, 1, "sell", "100", "3")
        takers = [order(CAROL, seq, 1 + seq, "buy", "100") for seq in (1, 2)]
        ledger = Ledger()
        ledger.insert([maker, *takers])
        self.assertEqual(
            [t.id for t in ledger.trades_of(maker.id)],
            [trade_id(taker, maker) for taker in takers],
        )
        self.assertEqual(
            [t.id for t in ledger.trades_of(takers[1].id)], [trade_id(takers[1], maker)]
        )
        self.assertEqual(ledger.trades_of("0" * 64), [])


class OutcomeTests(SynchronousTestCase):
    """outcome() says how an order ended, with the engine's states and reasons."""

    def ledger_of(self, *events: Event) -> Ledger:
        ledger = Ledger()
        ledger.insert(events)
        return ledger

    def test_open_and_unapplied(self) -> None:
        """An open order, a partly filled one, or one not applied has no outcome."""
        a1 = order(ALICE, 1, 1, "sell", amount="2")
        b1 = order(BOB, 1, 2, "buy")
        c2 = order(CAROL, 2, 3, "buy")
        ledger = self.ledger_of(a1, b1, c2)
        self.assertIsNone(ledger.outcome(a1.id))
        self.assertIsNone(ledger.outcome(c2.id))
        self.assertEqual(ledger.outcome(b1.id), Outcome("filled", "", 0, 1))

    def test_self_trade(self) -> None:
        """An author's order meeting its own resting order expires the maker."""
        a1 = order(ALICE, 1, 1, "sell")
        a2 = order(ALICE, 2, 2, "buy")
        ledger = self.ledger_of(a1, a2)
        self.assertEqual(ledger.outcome(a1.id), Outcome("cancelled", "self_trade", LOT, 1))
        self.assertIsNone(ledger.outcome(a2.id))
        self.assertIsNotNone(ledger.open_order(a2.id))
        self.assertEqual(ledger.trades(10), [])

    def test_rejected(self) -> None:
        """An order the engine refuses is rejected with the engine's reason."""
        cases = [
            (order(ALICE, 1, 1, "buy", "100.001"), "price_not_tick_multiple"),
            (order(ALICE, 2, 2, "buy", "0"), "price_not_positive"),
            (order(ALICE, 3, 3, "buy", "1000000000.01"), "price_too_high"),
            (order(ALICE, 4, 4, "buy", "100", "0.000000001"), "amount_not_lot_multiple"),
            (order(ALICE, 5, 5, "buy", "100", "0"), "amount_not_positive"),
            (order(ALICE, 6, 6, "buy", "1" * 64 + ".5"), "invalid_price"),  # > 64 characters
        ]
        ledger = self.ledger_of(*(event for event, _ in cases))
        for position, (event, reason) in enumerate(cases):
            self.assertEqual(ledger.outcome(event.id), Outcome("rejected", reason, 0, position))
        self.assertEqual(len(ledger.book), 0)

    def test_would_take_and_unfilled(self) -> None:
        """post_only that would take, and unfilled ioc, fok and market orders."""
        b1 = order(BOB, 1, 1, "sell", "100")
        a1 = order(ALICE, 1, 2, "buy", "100", order_type="post_only")
        a2 = order(ALICE, 2, 3, "buy", "99", order_type="ioc")
        a3 = order(ALICE, 3, 4, "buy", "100", "2", order_type="fok")
        a4 = order(ALICE, 4, 5, "sell", None, order_type="market")
        ledger = self.ledger_of(b1, a1, a2, a3, a4)
        self.assertEqual(ledger.outcome(a1.id), Outcome("rejected", "would_take", 0, 1))
        self.assertEqual(ledger.outcome(a2.id), Outcome("cancelled", "unfilled", LOT, 2))
        self.assertEqual(ledger.outcome(a3.id), Outcome("cancelled", "fok_unfillable", 2 * LOT, 3))
        self.assertEqual(ledger.outcome(a4.id), Outcome("cancelled", "unfilled", LOT, 4))
        self.assertIsNotNone(ledger.open_order(b1.id))


class RollbackTests(SynchronousTestCase):
    """A late event rolls the engine back and replays; the result is as if in order."""

    def test_late_event(self) -> None:
        """An event with a smaller Lamport time, arriving late, takes its place in the order."""
        b1 = order(BOB, 1, 1, "sell")
        c1 = order(CAROL, 1, 3, "buy")
        a1 = order(ALICE, 1, 2, "buy")  # late: it should have taken b1 before c1
        ledger = Ledger()
        ledger.insert([b1])
        ledger.insert([c1])
        (before,) = ledger.trades(10)
        self.assertEqual(before.taker, c1.id)
        result = ledger.insert([a1])
        self.assertEqual((result.appended, result.replayed), (0, 3))
        self.assertEqual((ledger.rollbacks, ledger.replayed), (1, 3))
        (after,) = ledger.trades(10)
        self.assertEqual((after.taker, after.maker), (a1.id, b1.id))
        self.assertIsNotNone(ledger.open_order(c1.id))
        self.assertIsNone(ledger.outcome(c1.id))
        self.assertEqual(ledger.outcome(a1.id), Outcome("filled", "", 0, 1))
        self.assertEqual(state(ledger), state(fed_in_key_order([b1, c1, a1])))

    def test_equal_lamport_goes_by_author(self) -> None:
        """Among equal Lamport times the author decides the order, not arrival."""
        b1 = order(BOB, 1, 1, "sell")
        a1 = order(ALICE, 1, 2, "buy")
        c1 = order(CAROL, 1, 2, "buy")
        for arrival in ([b1, c1, a1], [b1, a1, c1], [c1, a1, b1]):
            ledger = Ledger()
            for event in arrival:
                ledger.insert([event])
            (trade,) = ledger.trades(10)
            self.assertEqual(trade.taker, a1.id)  # ALICE sorts before CAROL

    def test_rollback_across_snapshots(self) -> None:
        """Late events replay from a kept snapshot; the result equals in-order feeding."""
        events = list(random_events(random.Random(7), 3, 300, twins=False).events)
        events.sort(key=lambda event: event.key)
        top = events[-1].lamport
        # A large resting sell below every price, early: every later buy trades with it.
        early = order(DAVE, 1, 1, "sell", "98", "50")
        middle = order(ERIN, 1, top // 2, "buy", "101.5", "5")
        ledger = Ledger(snapshot_interval=3, max_snapshots=6, dense_span=0)
        for event in events:
            ledger.insert([event])
            self.assertLessEqual(len(ledger.snapshot_positions()), 6)
        trades_before = ledger.trades(10**9)
        positions = ledger.snapshot_positions()
        self.assertEqual(positions[0], 0)
        self.assertEqual(positions, sorted(set(positions)))
        self.assertGreater(len(positions), 2)

        result = ledger.insert([middle])
        # Replayed from a snapshot after the start, not from the empty book.
        self.assertGreater(result.replayed, 0)
        self.assertLess(result.replayed, ledger.applied - 1)
        result = ledger.insert([early])
        self.assertEqual(result.replayed, ledger.applied)
        self.assertEqual(ledger.rollbacks, 2)
        self.assertNotEqual(ledger.trades(10**9), trades_before)
        self.assertLessEqual(len(ledger.snapshot_positions()), 6)

        everything = [*events, middle, early]
        for fresh in (
            fed_in_key_order(everything),
            fed_in_key_order(everything, snapshot_interval=1, max_snapshots=4),
        ):
            self.assertEqual(state(ledger), state(fresh))
            for event in everything:
                self.assertEqual(ledger.outcome(event.id), fresh.outcome(event.id))
                self.assertEqual(ledger.trades_of(event.id), fresh.trades_of(event.id))
        one_insert = Ledger()
        one_insert.insert(everything)
        self.assertEqual(state(ledger), state(one_insert))

    def test_snapshots_bounded(self) -> None:
        """However many events, the snapshots kept stay within max_snapshots."""
        events = random_events(random.Random(3), 4, 400, twins=False).events
        for interval, kept in ((1, 4), (2, 5), (5, 8)):
            ledger = Ledger(snapshot_interval=interval, max_snapshots=kept, dense_span=0)
            most = 0
            for event in sorted(events, key=lambda event: event.key):
                ledger.insert([event])
                positions = ledger.snapshot_positions()
                most = max(most, len(positions))
                self.assertEqual(positions[0], 0)
                self.assertEqual(positions, sorted(set(positions)))
                self.assertLessEqual(positions[-1], ledger.applied)
            self.assertLessEqual(most, kept)
            self.assertGreaterEqual(most, 3)

    def test_dense_span_kept(self) -> None:
        """
        Every snapshot within dense_span of the newest stays, so an event
        that far back replays from just before it; older ones are thinned
        as before, and the count stays bounded.
        """
        events = sorted(
            random_events(random.Random(5), 4, 600, twins=False, stale=False).events,
            key=lambda e: e.key,
        )
        dense = Ledger(snapshot_interval=2, max_snapshots=6, dense_span=60)
        thin = Ledger(snapshot_interval=2, max_snapshots=6, dense_span=0)
        for event in events:
            for ledger in (dense, thin):
                ledger.insert([event])
        newest = dense.snapshot_positions()[-1]
        kept = [p for p in dense.snapshot_positions() if p >= newest - 60]
        self.assertEqual(kept, list(range(kept[0], newest + 1, 2)))
        self.assertLessEqual(kept[0], newest - 58)
        self.assertLessEqual(len(dense.snapshot_positions()), 6 + 60 // 2 + 1)
        self.assertEqual(dense.snapshot_positions()[0], 0)
        self.assertLess(len(thin.snapshot_positions()), len(dense.snapshot_positions()))

        # A late event 50 positions back: the dense ledger replays about
        # 50 events, the thin one from a snapshot further back.
        late = events[-50]
        twin = order(ERIN, 1, late.lamport, "sell", "98", "1")
        for ledger in (dense, thin):
            ledger.insert([twin])
        self.assertLessEqual(dense.replayed, 53)
        self.assertGreater(thin.replayed, dense.replayed)
        self.assertEqual(state(dense), state(thin))

    def test_dense_span_checked(self) -> None:
        """A negative dense span is refused."""
        self.assertRaises(ValueError, Ledger, dense_span=-1)


class AntiEntropyTests(SynchronousTestCase):
    """vector(), missing_for() and the chain digests: what a peer lacks, in key order."""

    def setUp(self) -> None:
        self.a = [order(ALICE, seq, 2 * seq, "sell", f"{100 + seq}") for seq in (1, 2, 3)]
        self.b1 = order(BOB, 1, 3, "buy", "90")
        self.b3 = order(BOB, 3, 7, "buy", "91")  # beyond a gap: BOB's seq 2 is missing
        self.ledger = Ledger()
        self.ledger.insert([*self.a, self.b1, self.b3])

    def test_vector(self) -> None:
        """The vector says, per author, the highest seq held without a gap below it."""
        self.assertEqual(self.ledger.vector(), {ALICE.author: 3, BOB.author: 1})
        self.assertEqual(self.ledger.gaps(), 1)

    def test_everything_for_an_empty_peer(self) -> None:
        """An empty peer gets every event up to each chain's gap, in key order."""
        events, more = self.ledger.missing_for({}, 100)
        self.assertEqual(events, [self.a[0], self.b1, self.a[1], self.a[2]])
        self.assertEqual([event.lamport for event in events], [2, 3, 4, 6])
        self.assertFalse(more)

    def test_not_beyond_own_gap(self) -> None:
        """
        Events held beyond a gap of this ledger's are not offered (the peer could
        not apply them either); once the gap is filled they are.
        """
        self.assertEqual(self.ledger.missing_for(self.ledger.vector(), 100), ([], False))
        b2 = order(BOB, 2, 5, "buy", "89")
        self.ledger.insert([b2])
        self.assertEqual(
            self.ledger.missing_for({ALICE.author: 3, BOB.author: 1}, 100), ([b2, self.b3], False)
        )

    def test_fills_peer_gap(self) -> None:
        """Everything above the peer's seq is offered, events the peer holds beyond its gap too."""
        peer = Ledger()
        peer.insert([self.a[0], self.a[2]])  # lacks ALICE's seq 2
        events, more = self.ledger.missing_for(peer.vector(), 100)
        self.assertEqual(events, [self.b1, self.a[1], self.a[2]])
        peer.insert(events)
        self.assertEqual(peer.vector(), {ALICE.author: 3, BOB.author: 1})

    def test_only_what_is_missing(self) -> None:
        """Events at or below the peer's seq are left out; unknown authors are ignored."""
        events, more = self.ledger.missing_for(
            {ALICE.author: 2, BOB.author: 1, CAROL.author: 5}, 100
        )
        self.assertEqual((events, more), ([self.a[2]], False))
        self.assertEqual(
            self.ledger.missing_for({ALICE.author: 9, BOB.author: 3}, 100), ([], False)
        )

    def test_limit(self) -> None:
        """At most C{limit} events, the first in key order, and whether more remain."""
        everything, _ = self.ledger.missing_for({}, 100)
        for limit in range(len(everything)):
            events, more = self.ledger.missing_for({}, limit)
            self.assertEqual(events, everything[:limit])
            self.assertTrue(more)
        self.assertEqual(self.ledger.missing_for({}, len(everything)), (everything, False))

    def test_paging_past_a_shared_gap(self) -> None:
        """
        A peer paging through missing_for with a small C{limit} gets every event,
        even when both miss the same seq of an author whose later events sort
        first.  (At 89de34a events beyond the gap filled every page forever.)
        """
        x2, x3 = order(ALICE, 2, 1, "sell", "101"), order(ALICE, 3, 2, "sell", "102")
        y = [order(BOB, seq, 100 + seq, "buy", "90") for seq in (1, 2, 3)]
        source, peer = Ledger(), Ledger()
        source.insert([x2, x3, *y])
        peer.insert([x2, x3])
        for _ in range(10):
            events, more = source.missing_for(peer.vector(), 2)
            peer.insert(events)
            if not more:
                break
        self.assertTrue(all(event.id in peer for event in y))
        self.assertEqual(peer.vector(), source.vector())

    def test_chain_digests(self) -> None:
        """Chain digests hash each author's winners up to its contiguous seq."""
        digests = self.ledger.chain_digests()
        self.assertEqual(set(digests), {ALICE.author, BOB.author})
        ids = "".join(event.id for event in self.a)
        self.assertEqual(digests[ALICE.author], hashlib.sha256(ids.encode("ascii")).hexdigest())
        # BOB's seq 3 lies beyond the gap: it is not part of the digest.
        self.assertEqual(digests[BOB.author], hashlib.sha256(self.b1.id.encode()).hexdigest())
        other = Ledger()
        other.insert([*self.a, self.b1])
        self.assertEqual(other.chain_digests(), digests)

    def test_chain_digests_tell_twins_apart(self) -> None:
        """Ledgers holding different sides of an equivocation differ in that chain only."""
        twin = order(ALICE, 2, 4, "sell", "150")
        other = Ledger()
        other.insert([self.a[0], twin, self.a[2], self.b1])
        self.assertEqual(other.vector(), self.ledger.vector())
        mine, theirs = self.ledger.chain_digests(), other.chain_digests()
        self.assertNotEqual(mine[ALICE.author], theirs[ALICE.author])
        self.assertEqual(mine[BOB.author], theirs[BOB.author])

    def test_chain_of(self) -> None:
        """chain_of gives an author's winners up to its gap, then its equivocation evidence."""
        self.assertEqual(self.ledger.chain_of(ALICE.author), self.a)
        self.assertEqual(self.ledger.chain_of(BOB.author), [self.b1])
        self.assertEqual(self.ledger.chain_of(CAROL.author), [])
        twin = order(ALICE, 2, 4, "sell", "150")
        self.ledger.insert([twin])
        winner, loser = sorted((self.a[1], twin), key=lambda event: event.id)
        chain = self.ledger.chain_of(ALICE.author)
        self.assertEqual(chain[:3], [self.a[0], winner, self.a[2]])
        self.assertEqual(chain[3:], [loser])
        # What a peer holding the other side needs to converge.
        other = Ledger()
        other.insert([self.a[0], loser, self.a[2], self.b1, self.b3])
        other.insert(chain)
        self.assertEqual(state(other), state(self.ledger))


class SettlementTests(SynchronousTestCase):
    """observe/settle move settled_through; late changes to settled trades are revisions."""

    def setUp(self) -> None:
        self.b1 = order(BOB, 1, 1, "sell", "100")
        self.c1 = order(CAROL, 1, 5, "buy", "100")  # trade at Lamport 5
        self.b2 = order(BOB, 2, 20, "sell", "101")
        self.a1 = order(ALICE, 1, 30, "buy", "101")  # trade at Lamport 30
        self.ledger = Ledger()
        for now, event in ((0.0, self.b1), (10.0, self.c1), (20.0, self.b2), (30.0, self.a1)):
            self.ledger.insert([event], now)

    def test_settle(self) -> None:
        """settled_through is the Lamport time reached C{horizon} seconds before C{now}."""
        ledger = self.ledger
        self.assertEqual(ledger.settled_through, 0)
        ledger.settle(9.9, 10.0)
        self.assertEqual(ledger.settled_through, 0)
        ledger.settle(10.0, 10.0)
        self.assertEqual(ledger.settled_through, 1)  # time 0 had Lamport 1
        ledger.settle(19.9, 10.0)
        self.assertEqual(ledger.settled_through, 1)
        ledger.settle(20.0, 10.0)
        self.assertEqual(ledger.settled_through, 5)
        ledger.settle(20.0, 10.0)
        self.assertEqual(ledger.settled_through, 5)
        ledger.settle(45.0, 10.0)
        self.assertEqual(ledger.settled_through, 30)
        ledger.settle(0.0, 10.0)
        self.assertEqual(ledger.settled_through, 30)  # never goes back
        self.assertEqual(ledger.settled_through, 30)

    def test_observe(self) -> None:
        """observe records the clock only when the Lamport time has moved on."""
        ledger = Ledger()
        ledger.observe(0.0)  # Lamport 0: nothing to settle
        ledger.insert([order(BOB, 1, 4, "sell")], now=1.0)
        ledger.observe(50.0)  # still Lamport 4: not recorded again
        ledger.settle(11.0, 10.0)
        self.assertEqual(ledger.settled_through, 4)
        ledger.insert([order(BOB, 2, 9, "sell")], now=60.0)
        ledger.settle(65.0, 10.0)
        self.assertEqual(ledger.settled_through, 4)
        ledger.settle(70.0, 10.0)
        self.assertEqual(ledger.settled_through, 9)

    def test_revision(self) -> None:
        """A late event that changes settled trades is applied and counted as a revision."""
        ledger = self.ledger
        ledger.settle(25.0, 10.0)
        self.assertEqual(ledger.settled_through, 5)
        d1 = order(DAVE, 1, 3, "buy", "100")  # takes b1 before c1: a settled trade changes
        result = ledger.insert([d1], now=40.0)
        self.assertTrue(result.revised)
        self.assertEqual(ledger.revisions, 1)
        trades = ledger.trades(10)
        self.assertEqual(
            [(t.taker, t.maker) for t in trades], [(self.a1.id, self.b2.id), (d1.id, self.b1.id)]
        )
        self.assertEqual(
            state(ledger), state(fed_in_key_order([self.b1, self.c1, self.b2, self.a1, d1]))
        )

    def test_no_revision(self) -> None:
        """A late event that leaves settled trades alone rolls back but is no revision."""
        ledger = self.ledger
        ledger.settle(25.0, 10.0)
        # Changes only the unsettled trade at Lamport 30: c2 (25) takes b2 before a1.
        c2 = order(CAROL, 2, 25, "buy", "101")
        result = ledger.insert([c2], now=40.0)
        self.assertGreater(result.replayed, 0)
        self.assertFalse(result.revised)
        self.assertEqual([t.taker for t in ledger.trades(10)], [c2.id, self.c1.id])
        # Below settled_through, but trading with nobody.
        e1 = order(ERIN, 1, 2, "sell", "110")
        result = ledger.insert([e1], now=41.0)
        self.assertGreater(result.replayed, 0)
        self.assertFalse(result.revised)
        self.assertEqual((ledger.revisions, ledger.rollbacks), (0, 2))

    def test_new_settled_trade_by_rollback(self) -> None:
        """A late event that adds a settled trade, through a rollback, is a revision."""
        b1 = order(BOB, 1, 1, "sell", "100")
        c1 = order(CAROL, 1, 7, "sell", "200")
        ledger = Ledger()
        ledger.insert([b1], now=0.0)
        ledger.insert([c1], now=1.0)
        ledger.settle(20.0, 10.0)
        self.assertEqual(ledger.settled_through, 7)
        a1 = order(ALICE, 1, 5, "buy", "100")  # late, sorts before c1
        result = ledger.insert([a1], now=21.0)
        self.assertGreater(result.replayed, 0)
        (trade,) = ledger.trades(10)
        self.assertLessEqual(trade.lamport, ledger.settled_through)
        self.assertTrue(result.revised)
        self.assertEqual(ledger.revisions, 1)

    def test_new_settled_trade_without_rollback(self) -> None:
        """
        A late event that adds a trade at or below settled_through is a
        revision, even when it lands at the end of the log (no rollback):
        here the log ends below settled_through because the newest event
        held waits behind a gap.
        """
        b1 = order(BOB, 1, 1, "sell", "100")
        a2 = order(ALICE, 2, 10, "sell", "105")  # waits for ALICE's seq 1
        ledger = Ledger()
        ledger.insert([b1, a2], now=0.0)
        ledger.settle(20.0, 10.0)
        self.assertEqual(ledger.settled_through, 10)
        c1 = order(CAROL, 1, 5, "buy", "100")  # after b1, below settled_through
        result = ledger.insert([c1], now=21.0)
        self.assertEqual((result.replayed, result.appended), (0, 1))
        (trade,) = ledger.trades(10)
        self.assertLessEqual(trade.lamport, ledger.settled_through)
        self.assertTrue(result.revised)
        self.assertEqual(ledger.revisions, 1)


class CheckpointTests(SynchronousTestCase):
    """A restart resumes from a checkpoint of the same log prefix, and only then."""

    def setUp(self) -> None:
        self.events = list(random_events(random.Random(11), 5, 400).events)
        self.full = Ledger()
        self.full.insert(self.events)

    def outcomes(self, ledger: Ledger) -> list[Outcome | None]:
        return [ledger.outcome(event.id) for event in self.events]

    def test_resumes_at_the_end(self) -> None:
        resumed = Ledger()
        position = resumed.load(self.events, 0.0, self.full.checkpoint()[1])
        self.assertEqual(position, self.full.applied)
        self.assertEqual(state(resumed), state(self.full))
        self.assertEqual(self.outcomes(resumed), self.outcomes(self.full))
        some = self.events[7]
        self.assertEqual(resumed.trades_of(some.id), self.full.trades_of(some.id))

    def test_later_events_and_rollbacks_as_without(self) -> None:
        """Events after the checkpoint, late ones included, end as with a full replay."""
        rng = random.Random(3)
        more = list(random_events(rng, 5, 600).events)
        head = [event for event in more if event.id not in {e.id for e in self.events}]
        # A prefix of the whole set: the checkpoint is taken on part of it.
        early, late = head[: len(head) // 2], head[len(head) // 2 :]
        first = Ledger()
        first.insert(self.events + early)
        resumed, plain = Ledger(), Ledger()
        self.assertEqual(
            resumed.load(self.events + early, 0.0, first.checkpoint()[1]), first.applied
        )
        plain.insert(self.events + early)
        rng.shuffle(late)
        for start in range(0, len(late), 25):
            resumed.insert(late[start : start + 25])
            plain.insert(late[start : start + 25])
        self.assertEqual(state(resumed), state(plain))

    def test_resumes_mid_log(self) -> None:
        """Events journaled after the checkpoint that sort after it: only they are replayed."""
        later = [
            order(ALICE, 1000 + n, 10**6 + n, "buy" if n % 2 else "sell", str(99 + n % 3))
            for n in range(1, 30)
        ]
        base = [e for e in self.events if e.author != ALICE.author]
        first = Ledger()
        first.insert(base)
        alice = [order(ALICE, n, 10**6 - 100 + n, "buy") for n in range(1, 1000)]
        expected, resumed = Ledger(), Ledger()
        expected.insert(base + alice + later)
        position = resumed.load(base + alice + later, 0.0, first.checkpoint()[1])
        self.assertEqual(position, first.applied)
        self.assertLess(position, resumed.applied)
        self.assertEqual(state(resumed), state(expected))

    def test_checkpoint_at_a_snapshot_before_a_limit(self) -> None:
        """A checkpoint of a log prefix is taken at the newest snapshot at or before it."""
        limit = self.full.applied // 2
        position, blob = self.full.checkpoint(limit)
        self.assertEqual(position, max(p for p in self.full.snapshot_positions() if p <= limit))
        self.assertGreater(position, 0)
        resumed = Ledger()
        self.assertEqual(resumed.load(self.events, 0.0, blob), position)
        self.assertEqual(state(resumed), state(self.full))
        self.assertEqual(self.full.checkpoint(0), (0, b""))

    def test_settled_position(self) -> None:
        self.assertEqual(self.full.settled_position(), 0)
        self.full.settled_through = self.full.log()[9].lamport
        self.assertEqual(
            self.full.settled_position(),
            sum(1 for event in self.full.log() if event.lamport <= self.full.settled_through),
        )

    def test_log_differing_before_the_checkpoint_replays_all(self) -> None:
        """A journal that lost an event the checkpoint saw: full replay, same result."""
        applied = self.full.log()
        kept = [event for event in self.events if event is not applied[len(applied) // 2]]
        expected, resumed = Ledger(), Ledger()
        expected.insert(kept)
        self.assertEqual(resumed.load(kept, 0.0, self.full.checkpoint()[1]), 0)
        self.assertEqual(state(resumed), state(expected))

    def test_unusable_checkpoints_ignored(self) -> None:
        blob = self.full.checkpoint()[1]
        for bad in (b"", b"junk", blob[: len(blob) // 2]):
            resumed = Ledger()
            self.assertEqual(resumed.load(self.events, 0.0, bad), 0)
            self.assertEqual(state(resumed), state(self.full))
        other = Ledger(BookParams(tick="0.5"))
        self.assertEqual(other.load(self.events, 0.0, blob), 0)

    def test_only_into_an_empty_ledger(self) -> None:
        self.assertRaises(ValueError, self.full.load, self.events, 0.0, None)
