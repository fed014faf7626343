"""
One market's figures over the last 24 hours: last price, change, high, low
and volume, with the best bid and ask (``GET /ticker``, the dashboard's
header).

Data path: the ledger's trades -> :class:`Ticker` (new trades folded in as
they come; the window recounted from the ledger at most once a
:data:`RECOUNT_MS`, when old trades leave it, and after a rollback) -> the
API.  A trade's time is its taker's timestamp (unix ms, as ``GET /trades``
states it); the window is the trades back to the first one older than 24
hours, in the log's order.  Exact integers throughout (ticks and lots),
written as decimal strings.  Pure: the caller passes the time.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .book import BookParams
    from .ledger import Ledger, TradeRecord

WINDOW_MS: Final = 24 * 3600 * 1000
"""The ticker's window: 24 hours."""

RECOUNT_MS: Final = 1000
"""The longest the window's figures go without a recount from the ledger."""


class Ticker:
    """
    The 24-hour figures of one ledger, kept up to date cheaply: a read
    folds in the trades made since the last one, and recounts the whole
    window only when :data:`RECOUNT_MS` has passed since the last recount
    or the ledger rolled back.
    """

    def __init__(self) -> None:
        self._counted_at: int | None = None
        self._rollbacks = -1
        self._seen = 0
        self._last_id: str | None = None
        self._open: int | None = None
        self._high = 0
        self._low = 0
        self._lots = 0
        self._quote = 0
        self._count = 0

    def read(self, ledger: Ledger, now_ms: int) -> dict[str, Any]:
        """The figures of C{ledger} at unix time C{now_ms} (``GET /ticker`` without the pair)."""
        count = ledger.trade_count
        stale = (
            self._counted_at is None
            or now_ms - self._counted_at >= RECOUNT_MS
            or ledger.rollbacks != self._rollbacks
            or count < self._seen
            or (self._seen and ledger.trades_after(self._seen - 1)[0].id != self._last_id)
        )
        if stale:
            self._recount(ledger, now_ms)
        elif count > self._seen:
            for trade in ledger.trades_after(self._seen):
                self._add(trade)
            self._seen = count
            self._last_id = ledger.trades(1)[0].id
        return self._document(ledger, now_ms)

    def _recount(self, ledger: Ledger, now_ms: int) -> None:
        self._counted_at, self._rollbacks = now_ms, ledger.rollbacks
        self._open, self._lots, self._quote, self._count = None, 0, 0, 0
        for trade in ledger.trades_since(now_ms - WINDOW_MS):
            self._add(trade)
        self._seen = ledger.trade_count
        newest = ledger.trades(1)
        self._last_id = newest[0].id if newest else None

    def _add(self, trade: TradeRecord) -> None:
        price = trade.price
        if self._open is None:
            self._open, self._high, self._low = price, price, price
        else:
            self._high, self._low = max(self._high, price), min(self._low, price)
        self._lots += trade.amount
        self._quote += price * trade.amount
        self._count += 1

    def _document(self, ledger: Ledger, now_ms: int) -> dict[str, Any]:
        params = ledger.params
        newest = ledger.trades(1)
        last = newest[0].price if newest else None
        bid, ask = ledger.book.best_bid(), ledger.book.best_ask()
        opened = self._open
        change = change_pct = high = low = spread = mid = None
        if last is not None and opened is not None:
            change = _signed_price(params, last - opened)
            change_pct = _percent(last - opened, opened)
        if opened is not None:
            high, low = params.format_price(self._high), params.format_price(self._low)
        if bid is not None and ask is not None:
            spread, mid = _signed_price(params, ask - bid), params.format_half_price(bid + ask)
        return {
            "last": _price(params, last),
            "open": _price(params, opened),
            "change": change,
            "change_pct": change_pct,
            "high": high,
            "low": low,
            "volume": params.format_amount(self._lots),
            "quote_volume": params.format_quote(self._quote),
            "trades": self._count,
            "best_bid": _price(params, bid),
            "best_ask": _price(params, ask),
            "spread": spread,
            "mid": mid,
            "window_ms": WINDOW_MS,
            "at": now_ms,
        }


def _price(params: BookParams, ticks: int | None) -> str | None:
    return None if ticks is None else params.format_price(ticks)


def _signed_price(params: BookParams, ticks: int) -> str:
    """A price difference, with a ``-`` when negative (a crossed book's spread, a fall)."""
    return "-" + params.format_price(-ticks) if ticks < 0 else params.format_price(ticks)


def _percent(change: int, base: int) -> str:
    """C{change} as a percentage of C{base}, to two places (``"-1.25"``)."""
    return str((Decimal(change) * 100 / Decimal(base)).quantize(Decimal("0.01")))
