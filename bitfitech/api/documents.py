"""The API's JSON documents of orders, trades and the book, made from the market's objects.

Data path: the market (:class:`~bitfitech.market.service.MarketService`:
its ledger's events, trades and book) -> these functions -> the API's view
of the node (:class:`~bitfitech.api.control.NodeControl`) -> the
resources and the live stream.  The market exposes domain objects only;
what a client sees (decimal strings, statuses, ``settled``) is decided
here.  The shapes are documented in
:meth:`~bitfitech.interfaces.INodeControl.submit_order` and in the OpenAPI
document.
"""

from __future__ import annotations

from typing import Any

from ..interfaces import unix_ms
from ..market.events import Event
from ..market.ledger import TENTATIVE, Ledger, TradeRecord
from ..market.service import MarketService


def _fair_time(ledger: Ledger, event_id: str) -> int | None:
    """An event's fair time in unix ms (the ledger keeps microseconds), or ``None``."""
    fair = ledger.fair
    at = fair.fair_time(event_id) if fair is not None else None
    return None if at is None else at // 1000


def trade_doc(ledger: Ledger, trade: TradeRecord) -> dict[str, Any]:
    """
    The API's view of one trade of C{ledger}: its ``status`` is
    ``tentative``, ``settled`` or (with witnesses) ``final``.
    """
    params = ledger.params
    status = ledger.status_at(trade.position)
    return {
        "id": trade.id,
        "price": params.format_price(trade.price),
        "amount": params.format_amount(trade.amount),
        "side": trade.side,
        "taker": trade.taker,
        "maker": trade.maker,
        "lamport": trade.lamport,
        "time": trade.ts,
        "fair_time": _fair_time(ledger, trade.taker),
        "settled": status != TENTATIVE,
        "status": status,
    }


def order_doc(market: MarketService, event: Event) -> dict[str, Any]:
    """The API's view of one order event held by C{market}."""
    ledger = market.ledger
    params = ledger.params
    trades = ledger.trades_of(event.id)
    filled = sum(trade.amount for trade in trades)
    open_order = ledger.open_order(event.id)
    outcome = ledger.outcome(event.id)
    position = ledger.position_of(event)
    reason: str | None = None
    if open_order is not None:
        status, remaining = "open", open_order.remaining
    elif outcome is not None:
        status, remaining, reason = outcome.state, outcome.remaining, outcome.reason or None
    else:
        status, remaining = "pending", 0
    return {
        "id": event.id,
        "side": event.side,
        "type": event.order_type,
        "price": event.price,
        "amount": event.amount,
        "remaining": params.format_amount(remaining),
        "filled": params.format_amount(filled),
        "status": status,
        "reason": reason,
        "author": event.author,
        "seq": event.seq,
        "lamport": event.lamport,
        "created_at": event.ts,
        "applied_at": unix_ms(market.applied_at(event.id)),
        "fair_time": _fair_time(ledger, event.id),
        "settled": position is not None and ledger.status_at(position) != TENTATIVE,
        "trades": [trade_doc(ledger, trade) for trade in trades],
    }


def event_doc(market: MarketService, event: Event) -> dict[str, Any]:
    """
    The API's answer for one event its author signed (``POST /events``):
    whether it is applied or waits for an earlier event of its author, and
    the order it is or cancels (``None`` if this node does not hold it).
    """
    ledger = market.ledger
    order = event if event.is_order else ledger.get(event.target)
    return {
        "id": event.id,
        "author": event.author,
        "seq": event.seq,
        "kind": "order" if event.is_order else "cancel",
        "status": "applied" if ledger.is_applied(event) else "pending",
        "order": None if order is None or not order.is_order else order_doc(market, order),
    }


def book_doc(ledger: Ledger, depth: int) -> dict[str, Any]:
    """``GET /book``: the best C{depth} levels of each side of C{ledger}'s book."""
    params = ledger.params
    bids, asks = ledger.book.depth(depth)

    def rows(levels: list[tuple[int, int, int]]) -> list[list[Any]]:
        return [
            [params.format_price(price), params.format_amount(total), count]
            for price, total, count in levels
        ]

    return {"bids": rows(bids), "asks": rows(asks)}
