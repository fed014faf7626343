"""Properties of the matching engine that hold for every operation stream.

These tests use no reference engine: a :class:`Tracker` follows each
order's life from the events alone and checks, after every operation, what
``docs/matching.rst`` promises (the book never crossed, quantities
conserved, FIFO within a level, trades at the maker's price and within the
taker's limit, gap-free trade numbers, queries that agree with each other),
then snapshots, restores and state hashes are held to their contract.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import bitfitech
from bitfitech.market.book import (
    ACCEPTED,
    CANCEL_REJECTED,
    CANCELLED,
    FILLED,
    PARTIALLY_FILLED,
    REJECTED,
    RESTED,
    TRADE,
    OpenOrder,
    OrderBook,
    is_trade,
)

from .strategies import (
    OWNERS,
    PROFILES,
    NamedOrderUpdate,
    NamedTrade,
    Op,
    Profile,
    Stream,
    apply,
    book_params,
    named,
    random_stream,
    streams,
)

EXAMPLES = 150
ALL = 10**6  # more levels than any stream makes


def observable(book: OrderBook) -> tuple[object, ...]:
    """What the queries show of a book's state."""
    bids, asks = book.depth(ALL)
    orders = tuple(tuple(tuple(o) for o in book.orders_of(owner)) for owner in OWNERS)
    return (
        tuple(map(tuple, bids)),
        tuple(map(tuple, asks)),
        book.best_bid(),
        book.best_ask(),
        orders,
    )


def changes_state(events: list[tuple[Any, ...]]) -> bool:
    """Whether an operation's events say the book's state changed.

    A trade moves the trade counter; ``rested`` adds an order; a user or
    self-trade cancel removes one.  Rejections and an unfilled IOC, market or
    fill-or-kill order leave everything as it was.
    """
    for event in events:
        if event[0] in (TRADE, RESTED):
            return True
        if event[0] == CANCELLED and event[3] in ("user", "self_trade"):
            return True
    return False


@dataclass
class Record:
    """One accepted order, as far as its events tell."""

    order_id: str
    owner: str
    side: str
    order_type: str
    price: int | None  # ticks; None for a market order
    amount: int  # lots
    filled: int = 0
    cancelled: int = 0
    rested_at: int | None = None  # when it came to rest, on the tracker's clock

    @property
    def open_amount(self) -> int:
        return self.amount - self.filled - self.cancelled


def resting(record: Record) -> tuple[int, int]:
    """A resting order's price and time of rest."""
    assert record.price is not None and record.rested_at is not None
    return record.price, record.rested_at


class Tracker:
    """Follows a stream on an engine and checks every property after each operation."""

    def __init__(self, testcase: SynchronousTestCase, profile: Profile) -> None:
        self.t = testcase
        self.profile = profile
        self.book = OrderBook(book_params(profile))
        self.live: dict[str, Record] = {}  # resting orders, by id
        self.closed: list[Record] = []
        self.trades = 0
        self.clock = 0

    def run(self, ops: tuple[Op, ...]) -> None:
        for op in ops:
            self.step(op)

    def step(self, op: Op) -> list[Any]:
        events = [named(event) for event in apply(self.book, op)]
        self.t.assertTrue(events, op)
        if op[0] == "place":
            self.placed(op, events)
        else:
            self.cancelled(op, events)
        self.check_book()
        return events

    def lots(self, amount: object) -> int:
        assert isinstance(amount, str)
        value = Fraction(amount) / self.profile.lot
        self.t.assertEqual(value.denominator, 1)
        return int(value)

    def ticks(self, price: object) -> int:
        assert isinstance(price, str)
        value = Fraction(price) / self.profile.tick
        self.t.assertEqual(value.denominator, 1)
        return int(value)

    def close(self, record: Record) -> None:
        """An order left the book: every lot is accounted for."""
        self.t.assertEqual(record.amount, record.filled + record.cancelled)
        self.live.pop(record.order_id, None)
        self.closed.append(record)

    def update(self, event: Any, record: Record, states: tuple[str, ...]) -> None:
        """An order update about ``record`` in one of ``states``, with the right remaining."""
        self.t.assertIsInstance(event, NamedOrderUpdate)
        self.t.assertIn(event.state, states)
        self.t.assertEqual(event.order_id, record.order_id)
        self.t.assertEqual(event.remaining, record.open_amount)
        self.t.assertEqual(event.state == FILLED, record.open_amount == 0)
        self.t.assertEqual(event.reason, "")

    def placed(self, op: Op, events: list[Any]) -> None:
        _, order_id, side, price, amount, owner, order_type = op
        first = events[0]
        if first.state == REJECTED:
            self.t.assertEqual(len(events), 1)
            self.t.assertEqual(first.remaining, 0)
            self.t.assertNotEqual(first.reason, "")
            if first.reason == "duplicate_id":
                self.t.assertIn(order_id, self.live)
            return
        self.t.assertEqual(first, (ACCEPTED, order_id, self.lots(amount), ""))
        self.t.assertNotIn(order_id, self.live)
        limit = None if order_type == "market" else self.ticks(price)
        taker = Record(order_id, owner, side, order_type, limit, self.lots(amount))
        rest = events[1:]
        while rest and (isinstance(rest[0], NamedTrade) or rest[0].reason == "self_trade"):
            event, rest = rest[0], rest[1:]
            if isinstance(event, NamedOrderUpdate):
                # Self-trade prevention: the maker, the taker's own, goes.
                self.t.assertEqual(event.state, CANCELLED)
                self.t.assertEqual(self.profile.self_trade, "expire-maker")
                maker = self.live[event.order_id]
                self.t.assertEqual(maker.owner, owner)
                self.t.assertEqual(event.remaining, maker.open_amount)
                maker.cancelled = event.remaining
                self.close(maker)
                continue
            self.trade(event, taker)
            maker = self.live[event.maker]
            self.update(rest[0], maker, (PARTIALLY_FILLED, FILLED))
            self.update(rest[1], taker, (PARTIALLY_FILLED, FILLED))
            if maker.open_amount == 0:
                self.close(maker)
            rest = rest[2:]
        if taker.open_amount == 0:
            self.t.assertEqual(rest, [])
            self.close(taker)
            return
        self.t.assertEqual(len(rest), 1, events)
        last = rest[0]
        if order_type in ("limit", "post_only"):
            self.t.assertEqual(last, (RESTED, order_id, taker.open_amount, ""))
            taker.rested_at = self.clock
            self.clock += 1
            self.live[order_id] = taker
        else:
            reason = "fok_unfillable" if order_type == "fok" else "unfilled"
            self.t.assertEqual(last, (CANCELLED, order_id, taker.open_amount, reason))
            if order_type == "fok":
                self.t.assertEqual(events, [first, last])
            taker.cancelled = last.remaining
            self.close(taker)

    def trade(self, trade: NamedTrade, taker: Record) -> None:
        """Trade numbers, prices, limits and FIFO."""
        self.trades += 1
        self.t.assertEqual(trade.seq, self.trades)
        self.t.assertEqual((trade.taker, trade.side), (taker.order_id, taker.side))
        self.t.assertNotEqual(taker.order_type, "post_only")
        maker = self.live[trade.maker]  # only resting orders make
        self.t.assertNotEqual(maker.side, taker.side)
        if self.profile.self_trade == "expire-maker":
            self.t.assertNotEqual(maker.owner, taker.owner)
        self.t.assertEqual(trade.price, maker.price)
        if taker.price is not None:
            if taker.side == "buy":
                self.t.assertLessEqual(trade.price, taker.price)
            else:
                self.t.assertGreaterEqual(trade.price, taker.price)
        self.t.assertEqual(trade.amount, min(maker.open_amount, taker.open_amount))
        self.t.assertGreater(trade.amount, 0)
        price, time = resting(maker)
        for other in self.live.values():
            other_price, other_time = resting(other)
            if other.side == maker.side and other_price == price:
                self.t.assertGreaterEqual(other_time, time, "FIFO broken")
            if other.side == maker.side == "sell":
                self.t.assertGreaterEqual(other_price, price, "a better ask was skipped")
            if other.side == maker.side == "buy":
                self.t.assertLessEqual(other_price, price, "a better bid was skipped")
        maker.filled += trade.amount
        taker.filled += trade.amount

    def cancelled(self, op: Op, events: list[Any]) -> None:
        order_id = op[1]
        self.t.assertEqual(len(events), 1)
        if isinstance(order_id, str) and order_id in self.live:
            record = self.live[order_id]
            self.t.assertEqual(events[0], (CANCELLED, order_id, record.open_amount, "user"))
            record.cancelled = record.open_amount
            self.close(record)
        else:
            self.t.assertEqual((events[0].state, events[0].reason), (CANCEL_REJECTED, "not_open"))

    def check_book(self) -> None:
        """The book is uncrossed and every query agrees with the tracked orders."""
        book = self.book
        bid, ask = book.best_bid(), book.best_ask()
        if bid is not None and ask is not None:
            self.t.assertLess(bid, ask, "crossed book")
        opens: list[OpenOrder] = []
        for owner in OWNERS:
            mine = book.orders_of(owner)
            times = [self.live[o.order_id].rested_at for o in mine]
            self.t.assertEqual(times, sorted(times), "orders_of is not oldest first")  # type: ignore[type-var]
            opens += mine
        self.t.assertEqual(sorted(o.order_id for o in opens), sorted(self.live))
        levels: dict[tuple[str, int], list[int]] = {}
        for o in opens:
            record = self.live[o.order_id]
            self.t.assertEqual(book.order(o.order_id), o)
            self.t.assertEqual(
                o,
                (
                    record.order_id,
                    record.owner,
                    record.side,
                    record.order_type,
                    record.price,
                    record.amount,
                    record.open_amount,
                ),
            )
            self.t.assertGreater(o.remaining, 0)
            level = levels.setdefault((o.side, o.price), [0, 0])
            level[0] += o.remaining
            level[1] += 1
        bids = sorted(((p, a, n) for (s, p), (a, n) in levels.items() if s == "buy"), reverse=True)
        asks = sorted((p, a, n) for (s, p), (a, n) in levels.items() if s == "sell")
        got_bids, got_asks = book.depth(ALL)
        self.t.assertEqual(
            ([tuple(x) for x in got_bids], [tuple(x) for x in got_asks]), (bids, asks)
        )
        self.t.assertEqual(bid, bids[0][0] if bids else None)
        self.t.assertEqual(ask, asks[0][0] if asks else None)
        for n in (0, 1, 3):
            small_bids, small_asks = book.depth(n)
            self.t.assertEqual([tuple(x) for x in small_bids], bids[:n])
            self.t.assertEqual([tuple(x) for x in small_asks], asks[:n])
        for record in self.closed[-5:]:
            if record.order_id not in self.live:
                self.t.assertIsNone(book.order(record.order_id))


class InvariantTests(SynchronousTestCase):
    """Per-operation invariants, tracked from the events alone."""

    @settings(max_examples=EXAMPLES * 2)
    @given(streams(max_size=60))
    def test_invariants(self, stream: Stream) -> None:
        """Uncrossed, conserved, FIFO, trades at the maker's price within the
        taker's limit, gap-free trade numbers, consistent queries."""
        Tracker(self, stream.profile).run(stream.ops)

    def test_invariants_long(self) -> None:
        """The same on long seeded streams, where books grow deep."""
        for seed in range(8):
            profile = PROFILES[seed % len(PROFILES)]
            stream = random_stream(random.Random(seed), profile, 800)
            Tracker(self, profile).run(stream.ops)


class DeterminismTests(SynchronousTestCase):
    """Same operations, same results, byte for byte."""

    @settings(max_examples=EXAMPLES)
    @given(streams(max_size=50))
    def test_same_stream_twice(self, stream: Stream) -> None:
        runs = []
        for _ in range(2):
            book = OrderBook(book_params(stream.profile))
            outputs = [(apply(book, op), book.state_hash()) for op in stream.ops]
            runs.append((outputs, book.state_hash(), observable(book)))
        self.assertEqual(runs[0], runs[1])


class SnapshotTests(SynchronousTestCase):
    """``snapshot``, ``from_snapshot`` and ``restore``."""

    @settings(max_examples=EXAMPLES)
    @given(streams(max_size=50), st.integers(0, 50))
    def test_continue_from_snapshot(self, stream: Stream, cut: int) -> None:
        """A copy from a snapshot continues exactly like the original; restore rolls back."""
        params = book_params(stream.profile)
        head, tail = stream.ops[:cut], stream.ops[cut:]
        book = OrderBook(params)
        for op in head:
            apply(book, op)
        snap = book.snapshot()
        at_cut = (book.state_hash(), observable(book))
        copy = OrderBook.from_snapshot(snap)
        self.assertEqual((copy.state_hash(), observable(copy)), at_cut)

        original = [apply(book, op) for op in tail]
        continued = [apply(copy, op) for op in tail]
        self.assertEqual(continued, original)
        self.assertEqual(
            (copy.state_hash(), observable(copy)), (book.state_hash(), observable(book))
        )

        # The snapshot did not move with the book it was taken from.
        self.assertEqual(OrderBook.from_snapshot(snap).state_hash(), at_cut[0])
        book.restore(snap)
        self.assertEqual((book.state_hash(), observable(book)), at_cut)
        self.assertEqual([apply(book, op) for op in tail], original)
        # restore also works on a fresh engine with the same parameters.
        fresh = OrderBook(params)
        fresh.restore(snap)
        self.assertEqual((fresh.state_hash(), observable(fresh)), at_cut)
        self.assertEqual([apply(fresh, op) for op in tail], original)

    @settings(max_examples=EXAMPLES // 2)
    @given(streams(max_size=40))
    def test_snapshot_every_step(self, stream: Stream) -> None:
        """At every step, a copy from a snapshot has the same hash and queries."""
        book = OrderBook(book_params(stream.profile))
        for op in stream.ops:
            apply(book, op)
            copy = OrderBook.from_snapshot(book.snapshot())
            self.assertEqual(
                (copy.state_hash(), observable(copy)), (book.state_hash(), observable(book))
            )


def noisy(stream: Stream, seed: int) -> tuple[Op, ...]:
    """The stream with operations that leave the state as it was mixed in."""
    profile = stream.profile
    far_buy = profile.price_text(1)
    far_sell = str(profile.params.get("max_price") or "1000000000")
    amount = profile.amount_text(profile.grid)
    ops: list[Op] = []
    for i, op in enumerate(stream.ops):
        k = (i + seed) % 5
        noise = f"noise{i}"
        if k == 0:  # a post-only order far from the market, then its cancel
            price, side = (far_buy, "buy") if i % 2 else (far_sell, "sell")
            ops += [("place", noise, side, price, amount, "u9", "post_only"), ("cancel", noise)]
        elif k == 1:  # a rejection
            ops.append(("place", noise, "buy", "1e3", amount, "u1", "limit"))
        elif k == 2:  # a cancel that does nothing
            ops.append(("cancel", noise))
        elif k == 3:  # an IOC order with nothing to meet (a buy far below the market)
            ops.append(("place", noise, "buy", far_buy, amount, "u9", "ioc"))
        ops.append(op)
    return tuple(ops)


class StateHashTests(SynchronousTestCase):
    """``state_hash`` is equal exactly when the states are."""

    @settings(max_examples=EXAMPLES)
    @given(streams(max_size=50))
    def test_changes_exactly_with_state(self, stream: Stream) -> None:
        """The hash moves after an operation exactly when its events changed the book."""
        book = OrderBook(book_params(stream.profile))
        before = book.state_hash()
        self.assertRegex(before, r"\A[0-9a-f]{64}\Z")  # SHA-256, in hex
        for op in stream.ops:
            events = apply(book, op)
            after = book.state_hash()
            self.assertEqual(after != before, changes_state(events), (op, events))
            before = after

    @settings(max_examples=EXAMPLES)
    @given(streams(max_size=40), st.integers(0, 4))
    def test_noise_leaves_hash(self, stream: Stream, seed: int) -> None:
        """Operations that change nothing leave the hash as it was."""
        plain = OrderBook(book_params(stream.profile))
        noisy_book = OrderBook(book_params(stream.profile))
        for op in noisy(stream, seed):
            events = apply(noisy_book, op)
            if op[0] == "place" and str(op[1]).startswith("noise") and op[6] == "ioc":
                assume(not changes_state(events))  # an ask at one tick is rare
        for op in stream.ops:
            apply(plain, op)
        self.assertEqual(noisy_book.state_hash(), plain.state_hash())
        self.assertEqual(observable(noisy_book), observable(plain))

    def test_equal_hash_equal_state(self) -> None:
        """Across many states of many streams, equal hashes mean equal queries."""
        seen: dict[str, tuple[object, ...]] = {}
        for seed in range(150):
            rng = random.Random(seed)
            profile = PROFILES[seed % 2]  # few profiles, so streams meet in equal states
            book = OrderBook(book_params(profile))
            for op in random_stream(rng, profile, 25).ops:
                apply(book, op)
                state = (profile.name, observable(book))
                self.assertEqual(seen.setdefault(book.state_hash(), state), state)
        self.assertGreater(len(seen), 1000)

    def test_parameters_in_hash(self) -> None:
        """Empty books with different parameters answer differently, so hash differently."""
        hashes = {OrderBook(book_params(profile)).state_hash() for profile in PROFILES}
        self.assertEqual(len(hashes), len(PROFILES))

    def test_arrival_order_is_state(self) -> None:
        """The state is the open orders in arrival order (what a snapshot
        holds), the trade counter and the parameters: the same two orders
        placed in either order give different snapshots, so different
        hashes, and equal snapshots always give equal hashes."""
        bid = ("place", "x-bid", "buy", "0.01", "0.25", "v1", "limit")
        ask = ("place", "x-ask", "sell", "1000000000", "0.25", "v2", "limit")
        books = []
        for pair in ((bid, ask), (ask, bid), (bid, ask)):
            book = OrderBook()
            for op in pair:
                apply(book, op)
            books.append(book)
        self.assertEqual(observable(books[0]), observable(books[1]))
        self.assertNotEqual(books[0].snapshot(), books[1].snapshot())
        self.assertNotEqual(books[0].state_hash(), books[1].state_hash())
        self.assertEqual(books[0].snapshot(), books[2].snapshot())
        self.assertEqual(books[0].state_hash(), books[2].state_hash())

    @settings(max_examples=EXAMPLES // 2)
    @given(streams(max_size=30), streams(max_size=30))
    def test_hash_equal_exactly_when_snapshots_equal(self, one: Stream, two: Stream) -> None:
        """Across the states two streams pass through, equal hashes mean
        equal snapshots and the reverse."""
        seen: dict[str, object] = {}
        for stream in (one, two):
            book = OrderBook(book_params(stream.profile))
            for op in stream.ops:
                apply(book, op)
                snap = book.snapshot()
                self.assertEqual(seen.setdefault(book.state_hash(), snap), snap)


class RejectionCheckTests(SynchronousTestCase):
    """``OrderBook.rejection`` gives the verdict of ``place`` without placing anything."""

    #: checked by ``place`` only: the order's id and owner, and the book's state
    PLACE_ONLY = frozenset({"invalid_id", "invalid_owner", "duplicate_id", "would_take"})

    @settings(max_examples=EXAMPLES)
    @given(streams(max_size=50))
    def test_rejection_is_the_verdict_of_place(self, stream: Stream) -> None:
        book = OrderBook(book_params(stream.profile))
        for op in stream.ops:
            if op[0] == "place":
                _, _, side, price, amount, _, order_type = op
                before = book.state_hash()
                verdict = book.rejection(side, price, amount, order_type)
                self.assertEqual(book.state_hash(), before, "rejection changed the book")
                updates = apply(book, op)
                code = str(updates[0][3]) if updates[0][0] == REJECTED else None
                if code == "invalid_id":
                    pass  # checked before everything else
                elif code == "invalid_owner":
                    # checked after the side and type, before the price
                    self.assertNotIn(verdict, ("invalid_side", "invalid_type"), op)
                elif code in self.PLACE_ONLY or code is None:
                    self.assertIsNone(verdict, op)
                else:
                    self.assertEqual(verdict, code, op)
            else:
                apply(book, op)


class EventShapeTests(SynchronousTestCase):
    """Events are the documented plain tuples: ``("trade", seq, taker, maker,
    side, price, amount)`` or ``(state, order_id, remaining, reason)``."""

    @settings(max_examples=EXAMPLES // 2)
    @given(streams(max_size=40))
    def test_shapes(self, stream: Stream) -> None:
        book = OrderBook(book_params(stream.profile))
        states = {ACCEPTED, RESTED, PARTIALLY_FILLED, FILLED, CANCELLED, REJECTED, CANCEL_REJECTED}
        for op in stream.ops:
            for event in apply(book, op):
                self.assertIs(type(event), tuple, event)
                self.assertEqual(is_trade(event), event[0] == TRADE, event)
                if is_trade(event):
                    types = [str, int, str, str, str, int, int]
                else:
                    types = [str, str, int, str]
                    self.assertIn(event[0], states)
                self.assertEqual([type(value) for value in event], types, event)


class PurityTests(SynchronousTestCase):
    """The engine is pure Python: no Twisted, no floats."""

    def test_no_twisted(self) -> None:
        """Importing the engine in a fresh interpreter imports no Twisted."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(bitfitech.__file__)))
        code = (
            "import sys, bitfitech.market.book; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))"
        )
        env = dict(os.environ, PYTHONPATH=root)
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        self.assertEqual(out.stdout.strip(), "[]")

    def test_no_float(self) -> None:
        import bitfitech.market.book as book_module

        assert book_module.__file__ is not None
        with open(book_module.__file__, encoding="utf-8") as f:
            source = f.read()
        self.assertNotIn("float(", source)
