"""Examples for the matching engine: every order type, every rejection code,
fills across levels and makers, cancels, self-trade prevention, queries,
snapshots and parameters.  The properties and the differential test against
a reference engine live in test_properties.py and test_differential.py.

Most tests use tick 1 and lot 1, so ticks and lots read as the decimal
strings that went in.
"""

from __future__ import annotations

import random
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.market.book import (
    ACCEPTED,
    CANCEL_REJECTED,
    CANCELLED,
    FILLED,
    PARTIALLY_FILLED,
    REJECTED,
    RESTED,
    TRADE,
    BookParams,
    BookSnapshot,
    OpenOrder,
    OrderBook,
    is_trade,
)


def unit_book(**overrides: str) -> OrderBook:
    """A book where ticks and lots equal the decimal strings placed."""
    return OrderBook(BookParams(**{"tick": "1", "lot": "1", **overrides}))


class OrderTypeTests(SynchronousTestCase):
    """Each order type, on a book with asks 100 x 5 (a1) and 101 x 5 (a2)."""

    def setUp(self) -> None:
        self.book = unit_book()
        self.book.place("a1", "sell", "100", "5", "maker")
        self.book.place("a2", "sell", "101", "5", "maker")

    def test_limit_rests(self) -> None:
        self.assertEqual(
            self.book.place("b1", "buy", "99", "3", "u"),
            [(ACCEPTED, "b1", 3, ""), (RESTED, "b1", 3, "")],
        )
        self.assertEqual(self.book.best_bid(), 99)

    def test_limit_fills_across_levels_then_rests_remainder(self) -> None:
        """The taker walks the book at each maker's price; its remainder
        rests with the remaining amount, not the original."""
        events = self.book.place("b1", "buy", "101", "12", "u")
        self.assertEqual(
            events,
            [
                (ACCEPTED, "b1", 12, ""),
                (TRADE, 1, "b1", "a1", "buy", 100, 5),
                (FILLED, "a1", 0, ""),
                (PARTIALLY_FILLED, "b1", 7, ""),
                (TRADE, 2, "b1", "a2", "buy", 101, 5),
                (FILLED, "a2", 0, ""),
                (PARTIALLY_FILLED, "b1", 2, ""),
                (RESTED, "b1", 2, ""),
            ],
        )
        self.assertEqual(self.book.order("b1"), OpenOrder("b1", "u", "buy", "limit", 101, 12, 2))
        self.assertEqual(self.book.depth(5), ([(101, 2, 1)], []))

    def test_limit_stops_at_its_price(self) -> None:
        events = self.book.place("b1", "buy", "100", "8", "u")
        self.assertEqual(events[-1], (RESTED, "b1", 3, ""))
        self.assertEqual(self.book.best_ask(), 101)
        self.assertEqual(self.book.best_bid(), 100)

    def test_ioc_cancels_the_rest(self) -> None:
        events = self.book.place("b1", "buy", "100", "8", "u", "ioc")
        self.assertEqual(events[1], (TRADE, 1, "b1", "a1", "buy", 100, 5))
        self.assertEqual(events[-1], (CANCELLED, "b1", 3, "unfilled"))
        self.assertIsNone(self.book.order("b1"))
        self.assertIsNone(self.book.best_bid())

    def test_ioc_with_nothing_to_take(self) -> None:
        self.assertEqual(
            self.book.place("b1", "buy", "99", "1", "u", "ioc"),
            [(ACCEPTED, "b1", 1, ""), (CANCELLED, "b1", 1, "unfilled")],
        )

    def test_fok_fills_completely(self) -> None:
        events = self.book.place("b1", "buy", "101", "10", "u", "fok")
        self.assertEqual([e for e in events if is_trade(e)][-1][6], 5)
        self.assertEqual(events[-1], (FILLED, "b1", 0, ""))
        self.assertIsNone(self.book.best_ask())

    def test_fok_that_cannot_fill_changes_nothing(self) -> None:
        before = self.book.state_hash()
        self.assertEqual(
            self.book.place("b1", "buy", "101", "11", "u", "fok"),
            [(ACCEPTED, "b1", 11, ""), (CANCELLED, "b1", 11, "fok_unfillable")],
        )
        self.assertEqual(
            self.book.place("b2", "buy", "100", "6", "u", "fok")[-1],
            (CANCELLED, "b2", 6, "fok_unfillable"),
        )
        self.assertEqual(self.book.state_hash(), before)

    def test_fok_does_not_count_own_makers_under_expire_maker(self) -> None:
        self.assertEqual(
            self.book.place("b1", "buy", "101", "6", "maker", "fok")[-1],
            (CANCELLED, "b1", 6, "fok_unfillable"),
        )
        self.assertEqual(len(self.book), 2)

    def test_post_only_rests_when_it_does_not_cross(self) -> None:
        self.assertEqual(
            self.book.place("b1", "buy", "99", "1", "u", "post_only"),
            [(ACCEPTED, "b1", 1, ""), (RESTED, "b1", 1, "")],
        )
        self.assertEqual(self.book.order("b1").order_type, "post_only")  # type: ignore[union-attr]

    def test_post_only_rejected_when_it_would_take(self) -> None:
        self.assertEqual(
            self.book.place("b1", "buy", "100", "1", "u", "post_only"),
            [(REJECTED, "b1", 0, "would_take")],
        )
        self.assertIsNone(self.book.order("b1"))

    def test_market_takes_at_any_price(self) -> None:
        events = self.book.place("b1", "buy", None, "7", "u", "market")
        self.assertEqual(
            [e for e in events if is_trade(e)],
            [(TRADE, 1, "b1", "a1", "buy", 100, 5), (TRADE, 2, "b1", "a2", "buy", 101, 2)],
        )
        self.assertEqual(events[-1], (FILLED, "b1", 0, ""))

    def test_market_remainder_is_cancelled(self) -> None:
        events = self.book.place("b1", "buy", None, "12", "u", "market")
        self.assertEqual(events[-1], (CANCELLED, "b1", 2, "unfilled"))
        self.assertEqual(len(self.book), 0)

    def test_market_sell_on_empty_side(self) -> None:
        self.assertEqual(
            self.book.place("s1", "sell", None, "1", "u", "market"),
            [(ACCEPTED, "s1", 1, ""), (CANCELLED, "s1", 1, "unfilled")],
        )


class PriorityTests(SynchronousTestCase):
    def test_fifo_within_a_level_and_partial_maker_keeps_its_place(self) -> None:
        book = unit_book()
        for name in ("m1", "m2", "m3"):
            book.place(name, "buy", "50", "4", "makers-" + name)
        events = book.place("t1", "sell", "50", "6", "taker")
        self.assertEqual(
            [(e[3], e[6]) for e in events if is_trade(e)],
            [("m1", 4), ("m2", 2)],
        )
        self.assertIn((PARTIALLY_FILLED, "m2", 2, ""), events)
        # m2 is still ahead of m3.
        events = book.place("t2", "sell", "50", "3", "taker")
        self.assertEqual([(e[3], e[6]) for e in events if is_trade(e)], [("m2", 2), ("m3", 1)])

    def test_better_price_first_and_trade_at_maker_price(self) -> None:
        book = unit_book()
        book.place("low", "buy", "10", "1", "a")
        book.place("high", "buy", "12", "1", "b")
        events = book.place("s", "sell", "9", "2", "c")
        self.assertEqual([(e[3], e[5]) for e in events if is_trade(e)], [("high", 12), ("low", 10)])

    def test_trade_seq_counts_across_operations(self) -> None:
        book = unit_book()
        book.place("a", "sell", "1", "1", "x")
        book.place("b", "sell", "1", "1", "x")
        seqs = [e[1] for e in book.place("c", "buy", "1", "1", "y") if is_trade(e)]
        seqs += [e[1] for e in book.place("d", "buy", "1", "1", "y") if is_trade(e)]
        self.assertEqual(seqs, [1, 2])
        self.assertEqual(book.trade_count, 2)


class CancelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.book = unit_book()
        self.book.place("a1", "sell", "100", "5", "maker")

    def test_cancel_untouched(self) -> None:
        self.assertEqual(self.book.cancel("a1"), [(CANCELLED, "a1", 5, "user")])
        self.assertEqual(self.book.depth(1), ([], []))

    def test_cancel_partly_filled_reports_what_was_open(self) -> None:
        self.book.place("b1", "buy", "100", "2", "u")
        self.assertEqual(self.book.cancel("a1"), [(CANCELLED, "a1", 3, "user")])
        self.assertIsNone(self.book.best_ask())

    def test_cancel_unknown_filled_or_cancelled_is_a_no_op(self) -> None:
        self.assertEqual(self.book.cancel("nope"), [(CANCEL_REJECTED, "nope", 0, "not_open")])
        self.book.place("b1", "buy", "100", "5", "u")
        self.assertEqual(self.book.cancel("a1"), [(CANCEL_REJECTED, "a1", 0, "not_open")])
        self.book.place("a2", "sell", "100", "5", "maker")
        self.book.cancel("a2")
        before = self.book.state_hash()
        self.assertEqual(self.book.cancel("a2"), [(CANCEL_REJECTED, "a2", 0, "not_open")])
        self.assertEqual(self.book.state_hash(), before)

    def test_cancel_of_non_string_id(self) -> None:
        self.assertEqual(self.book.cancel(["a1"]), [(CANCEL_REJECTED, "['a1']", 0, "not_open")])

    def test_cancelled_order_is_skipped_by_takers(self) -> None:
        self.book.place("a2", "sell", "100", "5", "maker2")
        self.book.cancel("a1")
        events = self.book.place("b1", "buy", "100", "5", "u")
        self.assertEqual([e[3] for e in events if is_trade(e)], ["a2"])

    def test_id_reusable_after_close(self) -> None:
        """The engine keeps open orders only: a closed id may be placed again."""
        self.book.cancel("a1")
        self.assertEqual(self.book.place("a1", "sell", "100", "1", "m")[-1], (RESTED, "a1", 1, ""))

    def test_many_cancels_in_one_level_stay_bounded(self) -> None:
        book = unit_book()
        book.place("keep", "buy", "10", "1", "k")
        for i in range(1000):
            book.place(f"x{i}", "buy", "10", "1", "k")
            book.cancel(f"x{i}")
        level = book._bids.levels[-10]
        self.assertLess(len(level.orders), 40)
        self.assertEqual((level.count, level.total), (1, 1))


class SelfTradeTests(SynchronousTestCase):
    def test_expire_maker_cancels_resting_and_goes_on(self) -> None:
        book = unit_book()
        book.place("own", "sell", "100", "3", "alice")
        book.place("other", "sell", "100", "3", "bob")
        events = book.place("t", "buy", "100", "3", "alice")
        self.assertEqual(
            events,
            [
                (ACCEPTED, "t", 3, ""),
                (CANCELLED, "own", 3, "self_trade"),
                (TRADE, 1, "t", "other", "buy", 100, 3),
                (FILLED, "other", 0, ""),
                (FILLED, "t", 0, ""),
            ],
        )

    def test_allow_trades_with_itself(self) -> None:
        book = unit_book(self_trade="allow")
        book.place("own", "sell", "100", "3", "alice")
        events = book.place("t", "buy", "100", "3", "alice")
        self.assertEqual(events[1], (TRADE, 1, "t", "own", "buy", 100, 3))

    def test_policy_must_be_known(self) -> None:
        self.assertRaises(ValueError, BookParams, self_trade="cancel-both")


class RejectionTests(SynchronousTestCase):
    """Every rejection code, and the order in which they are checked."""

    def setUp(self) -> None:
        self.book = OrderBook(
            BookParams(
                tick="0.05", lot="0.001", min_amount="0.01", max_amount="100", max_price="1000"
            )
        )

    def reason(self, *args: object) -> str:
        events = self.book.place(*args)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0][0], REJECTED)
        return str(events[0][3])

    def test_codes(self) -> None:
        good = ("o", "buy", "10.05", "1.5", "u", "limit")
        cases: dict[str, list[tuple[object, ...]]] = {
            "invalid_id": [("", *good[1:]), (7, *good[1:]), ("x" * 129, *good[1:])],
            "invalid_side": [("o", "BUY", *good[2:]), ("o", None, *good[2:])],
            "invalid_type": [(*good[:5], "gtc"), (*good[:5], None), (*good[:5], ["limit"])],
            "invalid_owner": [(*good[:4], "", "limit"), (*good[:4], 5, "limit")],
            "missing_price": [("o", "buy", None, "1", "u", "limit")],
            "price_not_allowed": [("o", "buy", "10", "1", "u", "market")],
            "invalid_price": [
                ("o", "buy", p, "1", "u")
                for p in (
                    "2e6",
                    "NaN",
                    "Infinity",
                    "-1",
                    "+1",
                    "",
                    " 1",
                    "1.",
                    ".5",
                    "1_0",
                    "١",
                    "0x10",
                    10,
                    "1" * 65,
                )
            ],
            "price_not_positive": [("o", "buy", p, "1", "u") for p in ("0", "0.00", "000")],
            "price_not_tick_multiple": [("o", "buy", p, "1", "u") for p in ("10.01", "0.001")],
            "price_too_high": [("o", "buy", "1000.05", "1", "u")],
            "invalid_amount": [("o", "buy", "10", a, "u") for a in ("1e1", "-1", "", None, 1)],
            "amount_not_positive": [("o", "buy", "10", "0.000", "u")],
            "amount_not_lot_multiple": [("o", "buy", "10", "1.0001", "u")],
            "amount_too_small": [("o", "buy", "10", "0.009", "u")],
            "amount_too_large": [("o", "buy", "10", "100.001", "u")],
        }
        for code, argsets in cases.items():
            for args in argsets:
                self.assertEqual(self.reason(*args), code, args)
        self.assertEqual(len(self.book), 0)

    def test_trailing_zeros_beyond_precision_are_fine(self) -> None:
        self.assertEqual(self.book.place("o", "buy", "10.0500", "1.5000", "u")[-1][0], RESTED)
        self.assertEqual(self.book.order("o")[4:6], (201, 1500))  # type: ignore[index]

    def test_duplicate_and_would_take(self) -> None:
        self.book.place("o", "sell", "10", "1", "u")
        self.assertEqual(self.reason("o", "sell", "11", "1", "u"), "duplicate_id")
        self.assertEqual(self.reason("p", "buy", "10", "1", "u", "post_only"), "would_take")

    def test_first_failing_check_wins(self) -> None:
        self.assertEqual(self.reason("", "up", "x", "y", "", "z"), "invalid_id")
        self.assertEqual(self.reason("o", "up", "x", "y", "", "z"), "invalid_side")
        self.assertEqual(self.reason("o", "buy", "x", "y", "", "z"), "invalid_type")
        self.assertEqual(self.reason("o", "buy", "x", "y", "", "limit"), "invalid_owner")
        self.assertEqual(self.reason("o", "buy", "x", "y", "u"), "invalid_price")
        self.assertEqual(self.reason("o", "buy", "10", "y", "u"), "invalid_amount")

    def test_cached_parse_gives_the_same_verdict(self) -> None:
        for _ in range(3):
            self.assertEqual(self.reason("o", "buy", "10.01", "1", "u"), "price_not_tick_multiple")
            self.assertEqual(
                self.reason("o", "buy", "10", "1.0001", "u"), "amount_not_lot_multiple"
            )


class QueryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.book = unit_book()
        for i, (side, price, owner) in enumerate(
            [
                ("buy", "10", "a"),
                ("buy", "10", "b"),
                ("buy", "9", "a"),
                ("buy", "8", "c"),
                ("sell", "12", "a"),
                ("sell", "13", "b"),
                ("sell", "13", "b"),
            ]
        ):
            self.book.place(f"o{i}", side, price, str(i + 1), owner)

    def test_depth_is_aggregated_best_first(self) -> None:
        self.assertEqual(self.book.depth(2), ([(10, 3, 2), (9, 3, 1)], [(12, 5, 1), (13, 13, 2)]))
        self.assertEqual(self.book.depth(0), ([], []))
        self.assertEqual(len(self.book.depth(10).bids), 3)

    def test_best_prices(self) -> None:
        self.assertEqual((self.book.best_bid(), self.book.best_ask()), (10, 12))
        self.assertEqual((unit_book().best_bid(), unit_book().best_ask()), (None, None))

    def test_orders_of_owner_oldest_first(self) -> None:
        self.assertEqual([o.order_id for o in self.book.orders_of("a")], ["o0", "o2", "o4"])
        self.assertEqual(self.book.orders_of("nobody"), [])
        self.assertIsNone(self.book.order("missing"))

    def test_best_prices_skip_emptied_levels(self) -> None:
        self.book.cancel("o0")
        self.book.cancel("o1")
        self.book.cancel("o4")
        self.assertEqual((self.book.best_bid(), self.book.best_ask()), (9, 13))


class SnapshotTests(SynchronousTestCase):
    def build(self) -> OrderBook:
        book = unit_book()
        book.place("a", "sell", "10", "5", "x")
        book.place("b", "sell", "11", "5", "y")
        book.place("c", "buy", "9", "5", "z")
        book.place("d", "buy", "10", "2", "z")  # partly fills a
        return book

    def test_from_snapshot_is_identical_and_independent(self) -> None:
        book = self.build()
        snap = book.snapshot()
        copy = OrderBook.from_snapshot(snap)
        self.assertEqual(copy.state_hash(), book.state_hash())
        self.assertEqual(copy.snapshot(), snap)
        self.assertEqual(
            copy.place("e", "buy", "11", "9", "w"), book.place("e", "buy", "11", "9", "w")
        )
        self.assertEqual(copy.state_hash(), book.state_hash())
        # The snapshot did not move with either book.
        self.assertEqual(OrderBook.from_snapshot(snap).order("a").remaining, 3)  # type: ignore[union-attr]

    def test_restore_rolls_back(self) -> None:
        book = self.build()
        snap, before = book.snapshot(), book.state_hash()
        book.place("e", "buy", "11", "9", "w")
        book.cancel("c")
        self.assertNotEqual(book.state_hash(), before)
        book.restore(snap)
        self.assertEqual(book.state_hash(), before)
        self.assertEqual(book.trade_count, 1)
        self.assertEqual([o.order_id for o in snap.open_orders()], ["a", "b", "c"])

    def test_restore_of_levels_same_as_requeueing(self) -> None:
        """
        Restoring a snapshot's level dumps (queues with cancelled orders
        still in them) leaves the engine exactly as re-queueing its open
        orders one by one does: same hash, same answers afterwards.
        """
        rng = random.Random(5)
        book = unit_book()

        def churn(target: OrderBook, count: int, start: int) -> list[object]:
            answers: list[object] = []
            for n in range(start, start + count):
                if n % 4 == 3 and len(target):
                    victim = sorted(o.order_id for o in target.orders_of("x"))[n % len(target)]
                    answers.append(target.cancel(victim))
                else:
                    side = rng.choice(["buy", "sell"])
                    price = str(rng.randrange(95, 106))
                    answers.append(
                        target.place(f"o{n}", side, price, str(rng.randrange(1, 6)), "x")
                    )
            return answers

        churn(book, 300, 0)
        snap = book.snapshot()
        by_hand = BookSnapshot(snap.params, snap.trade_seq, snap.orders)
        churn(book, 50, 300)
        fast, slow = unit_book(), unit_book()
        fast.restore(snap)
        slow.restore(by_hand)
        self.assertEqual(fast.state_hash(), slow.state_hash())
        state = rng.getstate()
        fast_answers = churn(fast, 200, 400)
        rng.setstate(state)
        self.assertEqual(fast_answers, churn(slow, 200, 400))
        self.assertEqual(fast.state_hash(), slow.state_hash())
        self.assertEqual(fast.depth(50), slow.depth(50))

    def test_restore_refuses_other_params(self) -> None:
        snap = self.build().snapshot()
        self.assertRaises(ValueError, OrderBook().restore, snap)

    def test_hash_tells_states_apart(self) -> None:
        one, two = self.build(), self.build()
        self.assertEqual(one.state_hash(), two.state_hash())
        two.cancel("b")
        self.assertNotEqual(one.state_hash(), two.state_hash())
        self.assertNotEqual(OrderBook().state_hash(), unit_book().state_hash())
        # Same open orders, one more trade in the past: a different state.
        three, four = unit_book(), unit_book()
        three.place("x", "sell", "1", "1", "a")
        three.place("y", "buy", "1", "1", "b")
        self.assertEqual(len(three), len(four))
        self.assertNotEqual(three.state_hash(), four.state_hash())


class ParamsTests(SynchronousTestCase):
    def test_defaults_and_canonical_values(self) -> None:
        params = BookParams(tick="0.010", lot="0.00000001", max_price="1000000.00")
        self.assertEqual(params, BookParams(tick="0.01", max_price="1000000"))
        self.assertEqual(params.min_amount, "0.00000001")

    def test_invalid(self) -> None:
        for bad in (
            {"tick": "0"},
            {"tick": "1e-2"},
            {"lot": "-1"},
            {"min_amount": "0.5", "lot": "1"},
            {"max_price": "10.001"},
            {"min_amount": "5", "max_amount": "4", "lot": "1"},
        ):
            self.assertRaises(ValueError, BookParams, **bad)

    def test_formatting_is_canonical(self) -> None:
        params = BookParams()
        self.assertEqual(params.format_price(5000000), "50000")
        self.assertEqual(params.format_price(5000050), "50000.5")
        self.assertEqual(params.format_price(1), "0.01")
        self.assertEqual(params.format_amount(125000000), "1.25")
        self.assertEqual(params.format_amount(1), "0.00000001")
        odd = BookParams(tick="0.25", lot="5")
        self.assertEqual(odd.format_price(3), "0.75")
        self.assertEqual(odd.format_amount(3), "15")

    def test_non_unit_tick(self) -> None:
        book = OrderBook(BookParams(tick="0.25", lot="5"))
        self.assertEqual(book.place("o", "buy", "1.5", "10", "u")[-1], (RESTED, "o", 2, ""))
        self.assertEqual(book.best_bid(), 6)
        self.assertEqual(book.place("p", "buy", "1.3", "10", "u")[0][3], "price_not_tick_multiple")
        self.assertEqual(book.place("p", "buy", "1.5", "12", "u")[0][3], "amount_not_lot_multiple")


class PurityTests(SynchronousTestCase):
    def test_engine_imports_no_twisted(self) -> None:
        code = (
            "import sys, bitfitech.market.book, bitfitech.replay\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('twisted', 'random')]\n"
            "assert not bad, bad\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
