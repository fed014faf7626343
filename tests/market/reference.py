"""A reference matching engine, written from ``docs/matching.rst`` alone.

It is slow on purpose: one plain list of open orders, oldest first, scanned
and sorted again for every maker, exact fractions for every number.  Its only
value is being obviously right, so the differential tests can hold the real
engine (:mod:`bitfitech.market.book`) to it.

Updates (what an operation returns) are the documented plain tuples:
``("trade", seq, taker, maker, side, price, amount)`` for a trade and
``(state, order_id, remaining, reason)`` for an order update.

Readings of the specification where it is silent (kept in one place here):

- a ``rejected`` update has a ``remaining`` of 0 (the order never entered
  the book) and carries the order id as given; for an id that is not a
  string the tests also accept its ``str()``, the specification being
  silent;
- a ``cancel_rejected`` update carries the id as given, ``remaining`` 0;
- "a price on a market order" is any price that is not ``None``, even an
  invalid one such as ``""``;
- ``orders_of`` and "oldest first" follow the order in which orders came to
  rest, which is the order they were placed in;
- in the replay tool, a field that is absent is ``None`` (``type`` defaults
  to ``limit``), and a blank line is an empty one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
MAX_DECIMAL_LENGTH = 64
MAX_NAME_LENGTH = 128
SIDES = ("buy", "sell")
TYPES = ("limit", "ioc", "fok", "post_only", "market")

BookUpdate = tuple[Any, ...]


def parse_decimal(value: object) -> Fraction | None:
    """A plain decimal string as an exact fraction, or ``None`` for anything else."""
    if not isinstance(value, str) or len(value) > MAX_DECIMAL_LENGTH:
        return None
    if PLAIN_DECIMAL.fullmatch(value) is None:
        return None
    return Fraction(value)


def canonical(value: Fraction) -> str:
    """An exact, terminating fraction as a canonical decimal string."""
    with localcontext() as context:
        context.prec = 500
        text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def is_name(value: object) -> bool:
    """An id or owner: a string of 1 to 128 characters."""
    return isinstance(value, str) and 1 <= len(value) <= MAX_NAME_LENGTH


@dataclass(eq=False)
class Order:
    """An open order; compared by identity."""

    order_id: str
    owner: str
    side: str
    order_type: str
    price: int  # ticks
    amount: int  # lots
    remaining: int  # lots

    def row(self) -> tuple[str, str, str, str, int, int, int]:
        """The order shaped like the engine's ``OpenOrder``."""
        return (
            self.order_id,
            self.owner,
            self.side,
            self.order_type,
            self.price,
            self.amount,
            self.remaining,
        )


class ReferenceBook:
    """The reference engine; same answers as ``OrderBook``, none of its speed."""

    def __init__(
        self,
        tick: str = "0.01",
        lot: str = "0.00000001",
        min_amount: str | None = None,
        max_amount: str = "1000000000",
        max_price: str = "1000000000",
        self_trade: str = "expire-maker",
    ) -> None:
        self.tick = Fraction(tick)
        self.lot = Fraction(lot)
        self.min_amount = self.lot if min_amount is None else Fraction(min_amount)
        self.max_amount = Fraction(max_amount)
        self.max_price = Fraction(max_price)
        self.self_trade = self_trade
        self.orders: list[Order] = []  # every open order, oldest first
        self.trades = 0

    # Numbers out.

    def format_price(self, ticks: int) -> str:
        return canonical(ticks * self.tick)

    def format_amount(self, lots: int) -> str:
        return canonical(lots * self.lot)

    # Operations.

    def rejection(
        self,
        order_id: object,
        side: object,
        price: object,
        amount: object,
        owner: object,
        order_type: object,
    ) -> str:
        """The first rejection code that applies, or ``""``."""
        if not is_name(order_id):
            return "invalid_id"
        if not (isinstance(side, str) and side in SIDES):
            return "invalid_side"
        if not (isinstance(order_type, str) and order_type in TYPES):
            return "invalid_type"
        if not is_name(owner):
            return "invalid_owner"
        if price is None and order_type != "market":
            return "missing_price"
        if price is not None and order_type == "market":
            return "price_not_allowed"
        if order_type != "market":
            value = parse_decimal(price)
            if value is None:
                return "invalid_price"
            if value == 0:
                return "price_not_positive"
            if (value / self.tick).denominator != 1:
                return "price_not_tick_multiple"
            if value > self.max_price:
                return "price_too_high"
        value = parse_decimal(amount)
        if value is None:
            return "invalid_amount"
        if value == 0:
            return "amount_not_positive"
        if (value / self.lot).denominator != 1:
            return "amount_not_lot_multiple"
        if value < self.min_amount:
            return "amount_too_small"
        if value > self.max_amount:
            return "amount_too_large"
        if any(order.order_id == order_id for order in self.orders):
            return "duplicate_id"
        if order_type == "post_only" and self.makers(side, self.ticks(price)):
            return "would_take"
        return ""

    def ticks(self, price: object) -> int:
        """A valid price string in ticks."""
        return int(Fraction(str(price)) / self.tick)

    def makers(self, side: str, limit: int | None) -> list[Order]:
        """The resting orders a taker on ``side`` may meet, in priority order.

        ``sorted`` is stable, so within a price the oldest order stays first.
        """
        if side == "buy":
            asks = [o for o in self.orders if o.side == "sell"]
            return sorted(
                [o for o in asks if limit is None or o.price <= limit], key=lambda o: o.price
            )
        bids = [o for o in self.orders if o.side == "buy"]
        return sorted(
            [o for o in bids if limit is None or o.price >= limit], key=lambda o: -o.price
        )

    def place(
        self,
        order_id: object,
        side: object,
        price: object,
        amount: object,
        owner: object,
        order_type: object = "limit",
    ) -> list[BookUpdate]:
        reason = self.rejection(order_id, side, price, amount, owner, order_type)
        if reason:
            return [("rejected", order_id, 0, reason)]
        assert isinstance(order_id, str) and isinstance(owner, str)
        assert isinstance(side, str) and isinstance(order_type, str)
        limit = None if price is None else self.ticks(price)
        lots = int(Fraction(str(amount)) / self.lot)
        remaining = lots
        events: list[BookUpdate] = [("accepted", order_id, lots, "")]

        expire = self.self_trade == "expire-maker"
        if order_type == "fok":
            makers = self.makers(side, limit)
            if sum(m.remaining for m in makers if not (expire and m.owner == owner)) < lots:
                return events + [("cancelled", order_id, lots, "fok_unfillable")]

        while remaining > 0 and order_type != "post_only":
            makers = self.makers(side, limit)
            if not makers:
                break
            maker = makers[0]
            if expire and maker.owner == owner:
                self.orders.remove(maker)
                events.append(("cancelled", maker.order_id, maker.remaining, "self_trade"))
                continue
            size = min(remaining, maker.remaining)
            self.trades += 1
            events.append(("trade", self.trades, order_id, maker.order_id, side, maker.price, size))
            maker.remaining -= size
            if maker.remaining == 0:
                self.orders.remove(maker)
                events.append(("filled", maker.order_id, 0, ""))
            else:
                events.append(("partially_filled", maker.order_id, maker.remaining, ""))
            remaining -= size
            state = "filled" if remaining == 0 else "partially_filled"
            events.append((state, order_id, remaining, ""))

        if remaining > 0 and limit is not None and order_type in ("limit", "post_only"):
            self.orders.append(Order(order_id, owner, side, order_type, limit, lots, remaining))
            events.append(("rested", order_id, remaining, ""))
        elif remaining > 0:
            events.append(("cancelled", order_id, remaining, "unfilled"))
        return events

    def cancel(self, order_id: object) -> list[BookUpdate]:
        for order in self.orders:
            if order.order_id == order_id:
                self.orders.remove(order)
                return [("cancelled", order.order_id, order.remaining, "user")]
        return [("cancel_rejected", order_id, 0, "not_open")]

    # Queries.

    def levels(self, side: str) -> list[tuple[int, int, int]]:
        """Every level of one side, best first: (price, total remaining, count)."""
        orders = [o for o in self.orders if o.side == side]
        prices = sorted({o.price for o in orders}, reverse=side == "buy")
        return [
            (
                price,
                sum(o.remaining for o in orders if o.price == price),
                sum(1 for o in orders if o.price == price),
            )
            for price in prices
        ]

    def depth(self, n: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        return self.levels("buy")[:n], self.levels("sell")[:n]

    def best_bid(self) -> int | None:
        bids = self.levels("buy")
        return bids[0][0] if bids else None

    def best_ask(self) -> int | None:
        asks = self.levels("sell")
        return asks[0][0] if asks else None

    def open_orders(self) -> list[tuple[str, str, str, str, int, int, int]]:
        """Every open order, oldest first, shaped like ``OpenOrder``."""
        return [order.row() for order in self.orders]

    def orders_of(self, owner: str) -> list[tuple[str, str, str, str, int, int, int]]:
        return [order.row() for order in self.orders if order.owner == owner]


def not_json(constant: str) -> object:
    """``NaN`` and ``Infinity`` are not JSON: a line holding one is a bad line."""
    raise ValueError(constant)


def replay(
    lines: Iterable[str],
    tick: str = "0.01",
    lot: str = "0.00000001",
    min_amount: str | None = None,
    max_amount: str = "1000000000",
    max_price: str = "1000000000",
    self_trade: str = "expire-maker",
    summary_only: bool = False,
) -> tuple[list[dict[str, Any]], list[int]]:
    """What ``python -m bitfitech.replay`` should write, from its input lines.

    Returns the output objects (the summary last, without its
    ``state_hash``, which only the engine can compute) and the numbers of
    the lines that should be reported on standard error.
    """
    book = ReferenceBook(tick, lot, min_amount, max_amount, max_price, self_trade)
    output: list[dict[str, Any]] = []
    bad: list[int] = []
    volume = 0
    for number, line in enumerate(lines, 1):
        if line.strip("\n") == "":
            continue  # blank lines are skipped silently
        try:
            obj = json.loads(line, parse_float=Decimal, parse_int=Decimal, parse_constant=not_json)
        except ValueError:
            bad.append(number)
            continue
        if (
            not isinstance(obj, dict)
            or obj.get("op") not in ("order", "cancel")
            or not isinstance(obj.get("id"), str)
        ):
            bad.append(number)
            continue
        if obj["op"] == "order":
            events = book.place(
                obj["id"],
                obj.get("side"),
                obj.get("price"),
                obj.get("amount"),
                obj.get("owner"),
                obj.get("type", "limit"),
            )
        else:
            events = book.cancel(obj["id"])
        for event in events:
            if event[0] == "trade":
                _, seq, taker, maker, side, price, amount = event
                volume += amount
                output.append(
                    {
                        "trade": seq,
                        "taker": taker,
                        "maker": maker,
                        "side": side,
                        "price": book.format_price(price),
                        "amount": book.format_amount(amount),
                    }
                )
            elif event[0] in ("rejected", "cancel_rejected"):
                output.append({"reject": event[1], "reason": event[3]})

    def level_rows(levels: list[tuple[int, int, int]]) -> list[list[object]]:
        return [[book.format_price(p), book.format_amount(a), n] for p, a, n in levels]

    summary = {
        "book": {"bids": level_rows(book.levels("buy")), "asks": level_rows(book.levels("sell"))},
        "trades": book.trades,
        "volume": book.format_amount(volume),
    }
    return ([summary] if summary_only else [*output, summary]), bad
