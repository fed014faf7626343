"""The matching engine: orders in, trades and order updates out.

This is the last step of the data path (``engine.apply(event) --> trades,
book deltas``): the ledger feeds it orders and cancels in their total order,
and everything it returns is a pure function of the operations so far.  No
Twisted, no clock, no I/O, no randomness, no floats.  ``docs/matching.rst``
is the specification; this docstring says how it is built.

Prices are kept as integers of ticks and amounts as integers of lots, parsed
once from decimal strings (:class:`BookParams` does the conversions).  Each
side of the book is a dict from a *key* to a price level plus a heap of the
keys: the key is the price for asks and minus the price for bids, so on both
sides the best level has the smallest key and "the maker is within the
taker's limit" is ``key <= bound``.  A level is a FIFO deque of orders with
its open total and count kept up to date.

Open orders live in one dict by id, in arrival order.  Cancels are lazy: a
cancelled order leaves the dict but stays in its deque, dead (its id no
longer maps to it), until it reaches the front or the deque is compacted;
a level emptied by cancels leaves its key in the heap until it surfaces.
Both keep a cancel O(1), and both are bounded by compaction.  Emptied levels
are recycled, because prices near the spread empty and refill all the time.

Orders and updates are plain tuples: cheap to build, shared by snapshots
(an order never changes; a partial fill replaces it), and ignored by the
garbage collector once it has seen them.  At half a million orders a second
each allocation counts, which is also why :meth:`OrderBook.place` is one
long function rather than several small ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from heapq import heapify, heappop, heappush, nsmallest
from typing import Final, NamedTuple, TypeAlias, TypeGuard

BUY: Final = "buy"
SELL: Final = "sell"

LIMIT: Final = "limit"
IOC: Final = "ioc"
FOK: Final = "fok"
POST_ONLY: Final = "post_only"
MARKET: Final = "market"
ORDER_TYPES: Final = frozenset({LIMIT, IOC, FOK, POST_ONLY, MARKET})

ACCEPTED: Final = "accepted"
RESTED: Final = "rested"
PARTIALLY_FILLED: Final = "partially_filled"
FILLED: Final = "filled"
CANCELLED: Final = "cancelled"
REJECTED: Final = "rejected"
CANCEL_REJECTED: Final = "cancel_rejected"

EXPIRE_MAKER: Final = "expire-maker"
ALLOW: Final = "allow"
SELF_TRADE_POLICIES: Final = (EXPIRE_MAKER, ALLOW)

MAX_ID_LENGTH: Final = 128
"""Longest order id or owner, in characters."""

MAX_DECIMAL_LENGTH: Final = 64
"""Longest decimal string accepted for a price or an amount."""

_PLAIN_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")


TRADE: Final = "trade"
"""The first element of every :data:`Trade`."""

Trade: TypeAlias = tuple[str, int, str, str, str, int, int]
"""``("trade", seq, taker, maker, side, price, amount)``: a match between a
taker and a resting maker at the maker's price.  ``seq`` counts the book's
trades from 1 without gaps; ``side`` is the taker's; ``price`` in ticks,
``amount`` in lots."""

OrderUpdate: TypeAlias = tuple[str, str, int, str]
"""``(state, order_id, remaining, reason)``: a change of one order's state
(or a cancel that did nothing); ``remaining`` is the open amount in lots
after the change, ``reason`` empty unless the state is ``cancelled``,
``rejected`` or ``cancel_rejected``."""

BookUpdate: TypeAlias = Trade | OrderUpdate
"""What operations return: a :data:`Trade` or an :data:`OrderUpdate`.
Updates are plain tuples, whose first element says what they are: four
times cheaper to build than NamedTuples, and that is a fifth of the
engine's time at half a million orders a second."""


def is_trade(update: BookUpdate) -> TypeGuard[Trade]:
    """Whether *update* is a :data:`Trade` (else an :data:`OrderUpdate`)."""
    return update[0] == TRADE


class OpenOrder(NamedTuple):
    """A resting order as queries and snapshots show it."""

    order_id: str
    owner: str
    side: str
    order_type: str
    price: int
    amount: int
    """The amount the order was placed with, in lots."""
    remaining: int


class Depth(NamedTuple):
    """Aggregated levels, best first: ``(price, total amount, order count)``."""

    bids: list[tuple[int, int, int]]
    asks: list[tuple[int, int, int]]


_new = tuple.__new__


def _is_plain_decimal(text: object) -> bool:
    return (
        type(text) is str
        and len(text) <= MAX_DECIMAL_LENGTH
        and _PLAIN_DECIMAL.fullmatch(text) is not None
    )


def _decimal_param(name: str, text: str) -> Decimal:
    if not _is_plain_decimal(text):
        raise ValueError(f"{name} must be a plain decimal string, not {text!r}")
    value = Decimal(text)
    if not value:
        raise ValueError(f"{name} must be positive, not {text!r}")
    return value


def _scale_of(step: Decimal) -> int:
    """The number of decimal places needed to write *step* exactly."""
    exponent = step.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def _format_units(units: int, scale: int) -> str:
    """Write ``units * 10**-scale`` as a canonical decimal string."""
    if not scale:
        return str(units)
    digits = str(units).rjust(scale + 1, "0")
    fraction = digits[-scale:].rstrip("0")
    return f"{digits[:-scale]}.{fraction}" if fraction else digits[:-scale]


def _canonical(value: Decimal) -> str:
    scale = _scale_of(value)
    return _format_units(int(value.scaleb(scale)), scale)


@dataclass(frozen=True)
class BookParams:
    """One trading pair's parameters; all values are decimal strings.

    Raises :class:`ValueError` for values that are not positive plain
    decimals, or limits that are not multiples of the tick or lot.
    """

    tick: str = "0.01"
    lot: str = "0.00000001"
    min_amount: str | None = None
    """``None`` means one lot."""
    max_amount: str = "1000000000"
    max_price: str = "1000000000"
    self_trade: str = EXPIRE_MAKER

    price_scale: int = field(init=False, repr=False, compare=False)
    tick_units: int = field(init=False, repr=False, compare=False)
    amount_scale: int = field(init=False, repr=False, compare=False)
    lot_units: int = field(init=False, repr=False, compare=False)
    min_lots: int = field(init=False, repr=False, compare=False)
    max_lots: int = field(init=False, repr=False, compare=False)
    max_ticks: int = field(init=False, repr=False, compare=False)

    @property
    def given(self) -> tuple[str, str, str | None, str, str, str]:
        """The parameters as given (the derived ones left out), in a fixed order:
        what a state hash and a checkpoint record of the book's rules."""
        return (self.tick, self.lot, self.min_amount, self.max_amount, self.max_price,
                self.self_trade)  # fmt: skip

    def __post_init__(self) -> None:
        if self.self_trade not in SELF_TRADE_POLICIES:
            raise ValueError(f"self_trade must be one of {', '.join(SELF_TRADE_POLICIES)}")
        tick = _decimal_param("tick", self.tick)
        lot = _decimal_param("lot", self.lot)
        min_amount = (
            lot if self.min_amount is None else _decimal_param("min_amount", self.min_amount)
        )
        max_amount = _decimal_param("max_amount", self.max_amount)
        max_price = _decimal_param("max_price", self.max_price)
        for name, value, step in (
            ("min_amount", min_amount, lot),
            ("max_amount", max_amount, lot),
            ("max_price", max_price, tick),
        ):
            if value % step:
                raise ValueError(f"{name} {value} is not a multiple of {step}")
        if min_amount > max_amount:
            raise ValueError("min_amount is above max_amount")
        price_scale, amount_scale = _scale_of(tick), _scale_of(lot)
        derived: dict[str, object] = {
            "tick": _canonical(tick),
            "lot": _canonical(lot),
            "min_amount": _canonical(min_amount),
            "max_amount": _canonical(max_amount),
            "max_price": _canonical(max_price),
            "price_scale": price_scale,
            "tick_units": int(tick.scaleb(price_scale)),
            "amount_scale": amount_scale,
            "lot_units": int(lot.scaleb(amount_scale)),
            "min_lots": int(min_amount / lot),
            "max_lots": int(max_amount / lot),
            "max_ticks": int(max_price / tick),
        }
        for attribute, setting in derived.items():
            object.__setattr__(self, attribute, setting)

    def format_price(self, ticks: int) -> str:
        """A price in ticks as a canonical decimal string."""
        return _format_units(ticks * self.tick_units, self.price_scale)

    def format_amount(self, lots: int) -> str:
        """An amount in lots as a canonical decimal string."""
        return _format_units(lots * self.lot_units, self.amount_scale)

    def format_quote(self, ticks_lots: int) -> str:
        """A quote amount (a price in ticks times an amount in lots) as a decimal string."""
        units = ticks_lots * self.tick_units * self.lot_units
        return _format_units(units, self.price_scale + self.amount_scale)

    def format_half_price(self, ticks: int) -> str:
        """Half a price in ticks (a mid price) as a canonical decimal string."""
        return _format_units(ticks * self.tick_units * 5, self.price_scale + 1)


def _units(text: object, scale: int) -> int | None:
    """Parse a plain decimal into integer units of ``10**-scale``.

    :return: ``None`` when *text* is not a plain decimal, ``-1`` when it has
        a non-zero digit finer than ``10**-scale``, else the units.
    """
    if type(text) is not str or len(text) > MAX_DECIMAL_LENGTH or not text.isascii():
        return None
    whole, point, fraction = text.partition(".")
    if not whole.isdigit():
        return None
    if not point:
        return int(whole) * 10**scale if scale else int(whole)
    if not fraction.isdigit():
        return None
    if len(fraction) > scale:
        if fraction[scale:].strip("0"):
            return -1
        fraction = fraction[:scale]
    return int(whole + fraction.ljust(scale, "0"))


# A resting order is a plain tuple laid out like OpenOrder: immutable, so
# snapshots share it, and untracked by the garbage collector once it has been
# seen once, so a deep book costs the collector nothing.  A partial fill
# replaces the maker's tuple (in its deque and in the open-order dict);
# a cancel only removes it from the dict, and the deque entry is dead from
# then on: an entry is live exactly when the dict maps its id to it.
_Order: TypeAlias = tuple[str, str, str, str, int, int, int]
_ID: Final = 0
_OWNER: Final = 1
_SIDE: Final = 2
_PRICE: Final = 4
_REMAINING: Final = 6


class _Level:
    """The orders at one price, oldest first, with their open total."""

    __slots__ = ("orders", "total", "count")

    def __init__(self) -> None:
        self.orders: deque[_Order] = deque()
        self.total = 0
        self.count = 0


class _Side:
    """One side of the book: levels by key, and a heap of keys (lazy)."""

    __slots__ = ("sign", "levels", "heap", "open_orders", "spare")

    def __init__(self, sign: int, open_orders: dict[str, _Order]) -> None:
        self.sign = sign
        """Turns a price into a key: +1 for asks, -1 for bids."""
        self.levels: dict[int, _Level] = {}
        self.heap: list[int] = []
        self.open_orders = open_orders
        """The book's open orders by id, shared by both sides."""
        self.spare: list[_Level] = []
        """Emptied levels kept for reuse: prices empty and fill all the time."""

    def best_key(self) -> int | None:
        heap, levels = self.heap, self.levels
        while heap and heap[0] not in levels:
            heappop(heap)
        return heap[0] if heap else None

    def add(self, order: _Order) -> None:
        """Queue an order at the back of its level."""
        key = order[_PRICE] * self.sign
        level = self.levels.get(key)
        if level is None:
            level = self.levels[key] = self.spare.pop() if self.spare else _Level()
            if len(self.heap) > 2 * len(self.levels) + 64:
                self.heap = list(self.levels)
                heapify(self.heap)
            else:
                heappush(self.heap, key)
        level.orders.append(order)
        level.count += 1
        level.total += order[_REMAINING]

    def remove(self, order: _Order) -> None:
        """Account for an order just taken out of the open-order dict."""
        key = order[_PRICE] * self.sign
        level = self.levels[key]
        level.count -= 1
        level.total -= order[_REMAINING]
        if not level.count:
            self.retire(self.levels.pop(key))
        elif len(level.orders) > 2 * level.count + 16:
            open_orders = self.open_orders
            level.orders = deque(o for o in level.orders if open_orders.get(o[_ID]) is o)

    def dump(self) -> _SideDump:
        """The levels, for a snapshot (queues copied, stale entries and all)."""
        return tuple(
            (key, tuple(level.orders), level.total, level.count)
            for key, level in self.levels.items()
        )

    def load(self, dump: _SideDump) -> None:
        """Take the levels of a :meth:`dump` (the open-order dict is restored by the caller)."""
        levels = self.levels
        for key, orders, total, count in dump:
            level = levels[key] = _Level()
            level.orders = deque(orders)
            level.total = total
            level.count = count
        self.heap = list(levels)
        heapify(self.heap)

    def retire(self, level: _Level) -> None:
        """Keep an emptied level (bounded) for :meth:`add` to reuse."""
        if len(self.spare) < 64:
            level.orders.clear()
            self.spare.append(level)

    def available(self, bound: int, limit: int, owner: str | None) -> bool:
        """Whether at least *limit* lots rest at keys up to *bound*.

        Orders of *owner* do not count (they would be expired, not filled).
        """
        open_orders = self.open_orders
        total = 0
        for key, level in self.levels.items():
            if key > bound:
                continue
            if owner is None:
                total += level.total
            else:
                total += sum(
                    o[_REMAINING]
                    for o in level.orders
                    if o[_OWNER] != owner and open_orders.get(o[_ID]) is o
                )
            if total >= limit:
                return True
        return False

    def depth(self, levels: int) -> list[tuple[int, int, int]]:
        sign = self.sign
        return [
            (key * sign, self.levels[key].total, self.levels[key].count)
            for key in nsmallest(levels, self.levels)
        ]


_PARSE_CACHE_SIZE: Final = 1 << 16
"""Most decimal strings remembered per cache (prices, amounts) per book."""


def _remember(cache: dict[str, int], text: object, result: int) -> int:
    """Remember *result* for a string *text*; anything else is not kept."""
    if type(text) is str:
        if len(cache) >= _PARSE_CACHE_SIZE:
            cache.clear()
        cache[text] = result
    return result


_PRICE_CODES: Final = (
    "invalid_price",
    "price_not_positive",
    "price_not_tick_multiple",
    "price_not_positive",  # below one tick: only zero is
    "price_too_high",
)
_AMOUNT_CODES: Final = (
    "invalid_amount",
    "amount_not_positive",
    "amount_not_lot_multiple",
    "amount_too_small",
    "amount_too_large",
)
_CODES: Final = tuple(dict.fromkeys(("", "missing_price", *_PRICE_CODES, *_AMOUNT_CODES)))
"""Rejection codes of prices and amounts, by (minus) their parse result."""


def _parse_steps(
    cache: dict[str, int],
    text: object,
    scale: int,
    step: int,
    least: int,
    most: int,
    codes: tuple[str, str, str, str, str],
) -> int:
    """A decimal in whole steps (ticks or lots) of ``step * 10**-scale``,
    from *least* to *most*; else minus the index of the rejection code from
    *codes* (not a decimal, zero, not a multiple, too small, too large).
    The result is remembered in *cache* for a string *text*."""
    units = _units(text, scale)
    if units is None:
        code = codes[0]
    elif not units:
        code = codes[1]
    elif units < 0 or units % step:
        code = codes[2]
    elif units // step < least:
        code = codes[3]
    elif units // step > most:
        code = codes[4]
    else:
        return _remember(cache, text, units // step)
    return _remember(cache, text, -_CODES.index(code))


def _rejected(order_id: object, reason: str) -> list[BookUpdate]:
    shown = order_id if type(order_id) is str else repr(order_id)
    return [(REJECTED, shown, 0, reason)]


_SideDump: TypeAlias = "tuple[tuple[int, tuple[_Order, ...], int, int], ...]"


@dataclass(frozen=True)
class BookSnapshot:
    """The whole state of a book: restores to an identical engine."""

    params: BookParams
    trade_seq: int
    orders: tuple[_Order, ...]
    """Every open order, in arrival order (which is also queue order), as
    plain tuples laid out like :class:`OpenOrder` and shared with the book."""

    _levels: tuple[_SideDump, _SideDump] | None = field(default=None, compare=False, repr=False)
    """The levels of both sides as they were, queues included: what makes
    :meth:`OrderBook.restore` cost C-level copies instead of re-queueing
    every order (``None`` for a snapshot built by hand)."""

    def open_orders(self) -> list[OpenOrder]:
        """The open orders as :class:`OpenOrder` values, oldest first."""
        return [_new(OpenOrder, order) for order in self.orders]


class OrderBook:
    """A price-time priority order book for one pair.

    :param params: the pair's parameters (:class:`BookParams` defaults).
    """

    def __init__(self, params: BookParams | None = None) -> None:
        self.params = params = params or BookParams()
        self._expire_maker = params.self_trade == EXPIRE_MAKER
        self._max_ticks = params.max_ticks
        self._open: dict[str, _Order] = {}
        self._bids = _Side(-1, self._open)
        self._asks = _Side(1, self._open)
        self._trade_seq = 0
        # Parsing is a pure function of the string; real streams repeat
        # prices and amounts, so both are remembered (bounded).
        self._prices: dict[str, int] = {}
        self._amounts: dict[str, int] = {}

    @property
    def trade_count(self) -> int:
        """How many trades this book has made."""
        return self._trade_seq

    def place(
        self,
        order_id: object,
        side: object,
        price: object,
        amount: object,
        owner: object,
        order_type: object = LIMIT,
    ) -> list[BookUpdate]:
        """Place an order; return the updates it caused, in order.

        :param price: a decimal string, or ``None`` for a market order.
        :param amount: a decimal string, in the base currency.
        """
        # The checks run in the documented order; the common case (a limit
        # order with a price and amount seen before) takes the fewest steps.
        # Parsed decimals are remembered: a positive result is the value in
        # ticks or lots, anything else minus the index of a rejection code.
        if type(order_id) is not str or not 0 < len(order_id) <= MAX_ID_LENGTH:
            return _rejected(order_id, "invalid_id")
        if side == BUY:
            side_name, own, opposite, sign = BUY, self._bids, self._asks, 1
        elif side == SELL:
            side_name, own, opposite, sign = SELL, self._asks, self._bids, -1
        else:
            return _rejected(order_id, "invalid_side")
        if order_type != LIMIT and (type(order_type) is not str or order_type not in ORDER_TYPES):
            return _rejected(order_id, "invalid_type")
        if type(owner) is not str or not 0 < len(owner) <= MAX_ID_LENGTH:
            return _rejected(order_id, "invalid_owner")
        if order_type == MARKET:
            if price is not None:
                return _rejected(order_id, "price_not_allowed")
            ticks = 0
            bound = self._max_ticks  # every resting key is at most this
        else:
            try:
                ticks = self._prices[price]  # type: ignore[index]
            except (KeyError, TypeError):
                ticks = self._parse_price(price)
            if ticks < 1:
                return _rejected(order_id, _CODES[-ticks])
            bound = ticks * sign
        try:
            lots = self._amounts[amount]  # type: ignore[index]
        except (KeyError, TypeError):
            lots = self._parse_amount(amount)
        if lots < 1:
            return _rejected(order_id, _CODES[-lots])
        open_orders = self._open
        if order_id in open_orders:
            return _rejected(order_id, "duplicate_id")
        if order_type != LIMIT:
            if order_type == POST_ONLY:
                best = opposite.best_key()
                if best is not None and best <= bound:
                    return _rejected(order_id, "would_take")
            elif order_type == FOK and not opposite.available(
                bound, lots, owner if self._expire_maker else None
            ):
                return [
                    (ACCEPTED, order_id, lots, ""),
                    (CANCELLED, order_id, lots, "fok_unfillable"),
                ]

        updates: list[BookUpdate] | None = None
        heap = opposite.heap
        if heap and heap[0] <= bound:
            # Match: take makers from the best level while they are within
            # the bound and the taker has an amount left.  A level's count
            # and total are settled once, when the taker leaves it.
            updates = [(ACCEPTED, order_id, lots, "")]
            append = updates.append
            levels = opposite.levels
            expire_maker = self._expire_maker
            remaining = lots
            seq = self._trade_seq
            while heap:
                key = heap[0]
                if key > bound:
                    break
                level = levels.get(key)
                if level is None:
                    heappop(heap)
                    continue
                orders = level.orders
                gone = taken = 0
                while orders:
                    maker = orders[0]
                    maker_id = maker[_ID]
                    if open_orders.get(maker_id) is not maker:
                        orders.popleft()
                        continue
                    left = maker[_REMAINING]
                    if expire_maker and maker[_OWNER] == owner:
                        orders.popleft()
                        del open_orders[maker_id]
                        gone += 1
                        taken += left
                        append((CANCELLED, maker_id, left, "self_trade"))
                        continue
                    seq += 1
                    if left <= remaining:
                        orders.popleft()
                        del open_orders[maker_id]
                        gone += 1
                        taken += left
                        remaining -= left
                        append((TRADE, seq, order_id, maker_id, side_name, maker[_PRICE], left))
                        append((FILLED, maker_id, 0, ""))
                        if remaining:
                            append((PARTIALLY_FILLED, order_id, remaining, ""))
                            continue
                    else:
                        left -= remaining
                        orders[0] = open_orders[maker_id] = maker[:_REMAINING] + (left,)
                        taken += remaining
                        append(
                            (TRADE, seq, order_id, maker_id, side_name, maker[_PRICE], remaining)
                        )
                        append((PARTIALLY_FILLED, maker_id, left, ""))
                        remaining = 0
                    append((FILLED, order_id, 0, ""))
                    break
                level.total -= taken
                level.count -= gone
                if not level.count:
                    opposite.retire(levels.pop(key))
                    heappop(heap)
                if not remaining:
                    break
            self._trade_seq = seq
            if not remaining:
                return updates
        else:
            remaining = lots

        if order_type == LIMIT or order_type == POST_ONLY:
            order = (order_id, owner, side_name, order_type, ticks, lots, remaining)
            level = own.levels.get(-bound)
            if level is None:
                own.add(order)
            else:
                level.orders.append(order)
                level.count += 1
                level.total += remaining
            open_orders[order_id] = order
            last = (RESTED, order_id, remaining, "")
        else:
            last = (CANCELLED, order_id, remaining, "unfilled")
        if updates is None:
            return [(ACCEPTED, order_id, lots, ""), last]
        updates.append(last)
        return updates

    def rejection(
        self, side: object, price: object, amount: object, order_type: object = LIMIT
    ) -> str | None:
        """The code :meth:`place` would reject this order with whatever the book
        holds (its side, type, price or amount), or ``None``.

        These are the checks :meth:`place` runs first, in the same order, on
        the same parse caches; nothing is placed.  A node checks an order
        this way before signing it.  What depends on the book's state
        (``duplicate_id``, ``would_take``) is left to :meth:`place`.
        """
        if side != BUY and side != SELL:
            return "invalid_side"
        if order_type != LIMIT and (type(order_type) is not str or order_type not in ORDER_TYPES):
            return "invalid_type"
        if order_type == MARKET:
            if price is not None:
                return "price_not_allowed"
        else:
            try:
                ticks = self._prices[price]  # type: ignore[index]
            except (KeyError, TypeError):
                ticks = self._parse_price(price)
            if ticks < 1:
                return _CODES[-ticks]
        try:
            lots = self._amounts[amount]  # type: ignore[index]
        except (KeyError, TypeError):
            lots = self._parse_amount(amount)
        if lots < 1:
            return _CODES[-lots]
        return None

    def _parse_price(self, text: object) -> int:
        """Ticks for a price, or minus a rejection code's index."""
        if text is None:
            return -_CODES.index("missing_price")
        params = self.params
        return _parse_steps(
            self._prices,
            text,
            params.price_scale,
            params.tick_units,
            1,
            params.max_ticks,
            _PRICE_CODES,
        )

    def _parse_amount(self, text: object) -> int:
        """Lots for an amount, or minus a rejection code's index."""
        params = self.params
        return _parse_steps(
            self._amounts,
            text,
            params.amount_scale,
            params.lot_units,
            params.min_lots,
            params.max_lots,
            _AMOUNT_CODES,
        )

    def cancel(self, order_id: object) -> list[BookUpdate]:
        """Cancel an open order; a cancel of anything else says it did nothing."""
        order = self._open.pop(order_id, None) if type(order_id) is str else None
        if order is None:
            shown = order_id if type(order_id) is str else repr(order_id)
            return [(CANCEL_REJECTED, shown, 0, "not_open")]
        (self._bids if order[_SIDE] == BUY else self._asks).remove(order)
        return [(CANCELLED, order[_ID], order[_REMAINING], "user")]

    # Queries

    def best_bid(self) -> int | None:
        """The highest bid in ticks, or ``None``."""
        key = self._bids.best_key()
        return None if key is None else -key

    def best_ask(self) -> int | None:
        """The lowest ask in ticks, or ``None``."""
        return self._asks.best_key()

    def depth(self, levels: int) -> Depth:
        """The best *levels* price levels of each side, best first."""
        return Depth(self._bids.depth(levels), self._asks.depth(levels))

    def order(self, order_id: str) -> OpenOrder | None:
        """An open order by id, or ``None``."""
        order = self._open.get(order_id)
        return None if order is None else _new(OpenOrder, order)

    def orders_of(self, owner: str) -> list[OpenOrder]:
        """An owner's open orders, oldest first (a scan of open orders)."""
        return [_new(OpenOrder, order) for order in self._open.values() if order[_OWNER] == owner]

    def __len__(self) -> int:
        """The number of open orders."""
        return len(self._open)

    # Snapshots

    def snapshot(self) -> BookSnapshot:
        """The whole state, in time proportional to the open orders."""
        return BookSnapshot(
            self.params,
            self._trade_seq,
            tuple(self._open.values()),
            (self._bids.dump(), self._asks.dump()),
        )

    @classmethod
    def from_snapshot(cls, snapshot: BookSnapshot) -> OrderBook:
        """A new engine in the state *snapshot* captured."""
        book = cls(snapshot.params)
        book._load(snapshot.orders, snapshot.trade_seq)
        return book

    def restore(self, snapshot: BookSnapshot) -> None:
        """Roll this engine back (or forward) to *snapshot*.

        :raises ValueError: if the snapshot is of a book with other params.
        """
        if snapshot.params != self.params:
            raise ValueError("snapshot is of a book with different parameters")
        orders = snapshot.orders
        if snapshot._levels is None:
            self._open = {}
            self._bids = _Side(-1, self._open)
            self._asks = _Side(1, self._open)
            self._load(orders, snapshot.trade_seq)
            return
        self._open = {order[_ID]: order for order in orders}
        self._bids = _Side(-1, self._open)
        self._asks = _Side(1, self._open)
        self._bids.load(snapshot._levels[0])
        self._asks.load(snapshot._levels[1])
        self._trade_seq = snapshot.trade_seq

    def _load(self, orders: Iterable[_Order], trade_seq: int) -> None:
        open_orders, bids, asks = self._open, self._bids, self._asks
        for order in orders:
            (bids if order[_SIDE] == BUY else asks).add(order)
            open_orders[order[_ID]] = order
        self._trade_seq = trade_seq

    def state_hash(self) -> str:
        """SHA-256 (hex) of the canonical encoding of the whole state."""
        state = [
            "bitfi-book-1",
            list(self.params.given),
            self._trade_seq,
            list(self._open.values()),
        ]
        encoded = json.dumps(state, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(encoded.encode("ascii")).hexdigest()
