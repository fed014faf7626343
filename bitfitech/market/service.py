"""The market service: the ledger, its journal, and the node's own orders.

Data path: the API -> :meth:`MarketService.submit` (sign, journal, apply)
-> the publisher (gossip); and gossip -> :meth:`MarketService.receive`
(buffer, journal, apply).  This service is the only writer of book state.

Events from peers wait in a small buffer for ``apply_delay`` seconds and are
inserted into the ledger together: concurrent events often arrive out of
their total order, and one insert of a batch costs at most one rollback.
This node's own orders are signed at once (so their seq and Lamport time are
fixed in call order), journaled together with the buffered events in one
durable commit at the next reactor turn (group commit), and only then
applied, published to peers and acknowledged.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from ..config import NodeConfig
from ..interfaces import IEventPublisher, IEventStore, ServiceUnavailable
from ..logs import logger
from ..storage import Storage
from .book import MARKET, ORDER_TYPES, REJECTED, BookParams, OrderBook
from .events import Author, Event, EventError, parse_event
from .journal import EventJournal, JournalError
from .ledger import InsertResult, Ledger, TradeRecord

log = logger(__name__)

#: buffered peer events that force an insert before ``apply_delay`` is up
MAX_BUFFER = 5000

#: events whose local arrival time is remembered (``applied_at``)
ARRIVALS_KEPT = 65536

_REJECTION_TEXT = {
    "invalid_side": "side must be buy or sell",
    "invalid_type": f"type must be one of {', '.join(sorted(ORDER_TYPES))}",
    "price_not_allowed": "a market order takes no price",
    "missing_price": "a price is required for this order type",
    "invalid_price": 'price must be a plain decimal string such as "50000.5"',
    "price_not_positive": "price must be at least one tick",
    "price_not_tick_multiple": "price must be a multiple of the tick",
    "price_too_high": "price is above the book's maximum",
    "invalid_amount": 'amount must be a plain decimal string such as "0.25"',
    "amount_not_positive": "amount must be positive",
    "amount_not_lot_multiple": "amount must be a multiple of the lot",
    "amount_too_small": "amount is below the book's minimum",
    "amount_too_large": "amount is above the book's maximum",
}


def check_order(
    params: BookParams, side: str, price: str | None, amount: str, order_type: str
) -> None:
    """
    Check an order as the engine would, before it is signed.

    :raises ValueError: ``"<code>: <explanation>"`` for an order the book
        would reject.
    """
    probe = OrderBook(params)
    for item in probe.place("probe", side, price, amount, "probe", order_type):
        if item[0] == REJECTED:
            reason = str(item[3])
            detail = _REJECTION_TEXT.get(reason, "rejected by the book")
            if reason == "price_not_tick_multiple":
                detail += f" {params.tick}"
            elif reason == "amount_not_lot_multiple":
                detail += f" {params.lot}"
            elif reason == "price_too_high":
                detail += f" {params.max_price}"
            raise ValueError(f"{reason}: {detail}")


class _Pending:
    """One of this node's events waiting for the group commit."""

    __slots__ = ("event", "done")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.done: Deferred[Event] = Deferred()


@implementer(IEventStore)
class MarketService(Service):
    """
    Holds the ledger and the journal; signs this node's orders.

    :ivar ledger: the ledger (only while running).
    :ivar author: this node's event author (only while running).
    :ivar publisher: where new own events and equivocation evidence go.
    """

    name = "market"

    def __init__(
        self,
        config: NodeConfig,
        storage: Storage,
        clock: IReactorTime,
        params: BookParams | None = None,
    ) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self.params = params or BookParams()
        self.network = config.network
        self.pair = config.pair
        self.publisher: IEventPublisher | None = None
        self._ledger: Ledger | None = None
        self._journal: EventJournal | None = None
        self._author: Author | None = None
        self._buffer: dict[str, Event] = {}
        self._buffer_lamport = 0
        self._flush_call: IDelayedCall | None = None
        self._own: list[_Pending] = []
        self._commit_call: IDelayedCall | None = None
        self._next_seq = 1
        self._own_lamport = 0
        self._settler: LoopingCall | None = None
        self.loaded_events = 0
        self.load_seconds = 0.0
        self.journal_failures = 0
        self._arrivals: OrderedDict[str, float] = OrderedDict()

    # -- lifecycle

    @property
    def ledger(self) -> Ledger:
        """The ledger (only while running)."""
        if self._ledger is None:
            raise ServiceUnavailable("the market is not running")
        return self._ledger

    @property
    def author(self) -> Author:
        """This node's author (only while running)."""
        if self._author is None:
            raise ServiceUnavailable("the market is not running")
        return self._author

    def startService(self) -> None:
        """Load the journal into a new ledger, then start settling."""
        identity = self.storage.identity
        self._author = Author(bytes(identity.signing_key), self.network, self.pair)
        self._journal = EventJournal(self.storage.connection)
        self._ledger = Ledger(self.params)
        started = time.perf_counter()
        events = []
        for text, sig in self._journal.load():
            try:
                events.append(parse_event(text, sig, self.network, self.pair))
            except EventError as e:
                log.error("Skipping unreadable journaled event: {error}", error=str(e))
        self._ledger.insert(events, self.clock.seconds())
        self.loaded_events = len(events)
        self.load_seconds = time.perf_counter() - started
        self._next_seq = self._ledger.next_seq(self._author.author)
        if events:
            log.info(
                "Loaded {count} events from the journal in {seconds:.3f}s "
                "({orders} open orders, {trades} trades)",
                count=len(events), seconds=self.load_seconds, orders=len(self._ledger.book),
                trades=self._ledger.trade_count,
            )  # fmt: skip
        self._settler = LoopingCall(self._settle)
        self._settler.clock = self.clock
        self._settler.start(max(0.05, min(1.0, self.config.settle_after / 4)), now=False)
        super().startService()

    def stopService(self) -> None:
        """Journal and apply what is buffered, then stop."""
        super().stopService()
        if self._settler is not None and self._settler.running:
            self._settler.stop()
        if self._ledger is not None:
            self._commit()
        self._ledger = None
        self._journal = None

    # -- IEventStore (what gossip sees)

    def has(self, event_id: str) -> bool:
        """Whether the event is held or buffered."""
        return event_id in self._buffer or (self._ledger is not None and event_id in self._ledger)

    def get(self, event_id: str) -> Event | None:
        """A held or buffered event."""
        event = self._buffer.get(event_id)
        if event is None and self._ledger is not None:
            event = self._ledger.get(event_id)
        return event

    def receive(self, events: Sequence[Event]) -> None:
        """Take verified events from peers; they are applied within ``apply_delay``."""
        if self._ledger is None:
            return
        buffer = self._buffer
        for event in events:
            if event.id not in buffer and event.id not in self._ledger:
                buffer[event.id] = event
                if event.lamport > self._buffer_lamport:
                    self._buffer_lamport = event.lamport
        if len(buffer) >= MAX_BUFFER:
            self.flush()
        elif buffer and self._flush_call is None:
            self._flush_call = self.clock.callLater(self.config.apply_delay, self.flush)

    def vector(self) -> dict[str, int]:
        """The anti-entropy summary, with buffered events applied first."""
        self.flush()
        return self.ledger.vector()

    def digest(self) -> str:
        """The ledger's running log hash."""
        self.flush()
        return self.ledger.log_hash

    def missing_for(self, vector: dict[str, int], limit: int) -> tuple[list[Event], bool]:
        """Events a peer with C{vector} lacks, in key order."""
        self.flush()
        return self.ledger.missing_for(vector, limit)

    def gap_marks(self) -> set[tuple[str, int]]:
        """Which authors have gaps, and where (see :meth:`Ledger.gap_marks`)."""
        self.flush()
        return self.ledger.gap_marks()

    def chain_digests(self) -> dict[str, str]:
        """Author -> digest of its chain (see :meth:`Ledger.chain_digests`)."""
        self.flush()
        return self.ledger.chain_digests()

    def chain_of(self, author: str) -> list[Event]:
        """An author's chain and its equivocation evidence."""
        return self.ledger.chain_of(author)

    def gaps(self) -> int:
        """How many authors have events held beyond a missing seq."""
        self.flush()
        return self.ledger.gaps()

    def conflicts(self) -> list[Event]:
        """Evidence of every equivocation seen."""
        return self.ledger.conflicts()

    def flush(self) -> None:
        """Journal and apply buffered peer events now."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self._buffer and self._ledger is not None:
            self._commit()

    # -- this node's orders

    def submit(self, side: str, price: str | None, amount: str, order_type: str) -> Deferred[Event]:
        """
        Sign a new order of this node; fires once it is journaled and applied.

        :raises ValueError: for an order the book would reject.
        :raises ServiceUnavailable: when the market is not running.
        """
        ledger = self.ledger
        check_order(ledger.params, side, price, amount, order_type)
        if order_type == MARKET:
            price = None
        lamport, ts = self._next_clock()
        event = self.author.order(self._next_seq, lamport, ts, side, order_type, price, amount)
        return self._queue_own(event)

    def cancel(self, order_id: str) -> Deferred[Event]:
        """
        Sign a cancel of one of this node's orders.

        :raises KeyError: for an order this node does not know.
        :raises PermissionError: for another author's order.
        """
        target = self.ledger.get(order_id) or self._buffer.get(order_id)
        if target is None or not target.is_order:
            raise KeyError(order_id)
        if target.author != self.author.author:
            raise PermissionError(order_id)
        lamport, ts = self._next_clock()
        return self._queue_own(self.author.cancel(self._next_seq, lamport, ts, order_id))

    def _next_clock(self) -> tuple[int, int]:
        lamport = max(self.ledger.lamport, self._buffer_lamport, self._own_lamport) + 1
        self._own_lamport = lamport
        return lamport, int(self.clock.seconds() * 1000)

    def _queue_own(self, event: Event) -> Deferred[Event]:
        pending = _Pending(event)
        self._own.append(pending)
        self._next_seq += 1
        if self._commit_call is None:
            self._commit_call = self.clock.callLater(0, self._commit)
        return pending.done

    def _commit(self) -> None:
        """The group commit: journal buffered and own events, apply, publish, acknowledge."""
        if self._commit_call is not None:
            if self._commit_call.active():
                self._commit_call.cancel()
            self._commit_call = None
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        ledger, journal = self._ledger, self._journal
        own, self._own = self._own, []
        peers = list(self._buffer.values())
        self._buffer.clear()
        self._buffer_lamport = 0
        if ledger is None or journal is None:
            for pending in own:
                pending.done.errback(ServiceUnavailable("the market is stopping"))
            return
        mine = [pending.event for pending in own]
        try:
            journal.write(peers + mine, durable=bool(mine))
        except JournalError as e:
            self.journal_failures += 1
            log.error("Journal write failed: {error}", error=str(e))
            if own:
                self._next_seq = own[0].event.seq
            for pending in own:
                pending.done.errback(ServiceUnavailable(f"the journal failed: {e}"))
            # Peer events are applied anyway: they can be fetched again after a restart.
            mine = []
            own = []
        now = self.clock.seconds()
        result = ledger.insert(peers + mine, now)
        arrivals = self._arrivals
        for event in result.new:
            arrivals[event.id] = now
        while len(arrivals) > ARRIVALS_KEPT:
            arrivals.popitem(last=False)
        self._report(result)
        if self.publisher is not None:
            if mine:
                self.publisher.publish(mine)
            if result.equivocations:
                slots = set(result.equivocations)
                self.publisher.publish(
                    [e for e in ledger.conflicts() if (e.author, e.seq) in slots]
                )
        for pending in own:
            pending.done.callback(pending.event)

    def _report(self, result: InsertResult) -> None:
        for author, seq in result.equivocations:
            log.warn("Author {author} signed two events with seq {seq} (equivocation)",
                     author=author, seq=seq)  # fmt: skip
        if result.revised:
            log.warn(
                "A late event changed settled trades (revision {count}); "
                "settled through Lamport time {settled}",
                count=self.ledger.revisions, settled=self.ledger.settled_through,
            )  # fmt: skip

    def _settle(self) -> None:
        if self._ledger is not None:
            self._ledger.settle(self.clock.seconds(), self.config.settle_after)

    # -- documents for the API

    def trade_doc(self, trade: TradeRecord) -> dict[str, Any]:
        """The API's view of one trade."""
        params = self.ledger.params
        return {
            "id": trade.id,
            "price": params.format_price(trade.price),
            "amount": params.format_amount(trade.amount),
            "side": trade.side,
            "taker": trade.taker,
            "maker": trade.maker,
            "lamport": trade.lamport,
            "time": trade.ts,
            "settled": trade.lamport <= self.ledger.settled_through,
        }

    def order_doc(self, event: Event) -> dict[str, Any]:
        """The API's view of one order event."""
        ledger = self.ledger
        params = ledger.params
        trades = ledger.trades_of(event.id)
        filled = sum(trade.amount for trade in trades)
        open_order = ledger.open_order(event.id)
        outcome = ledger.outcome(event.id)
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
            "applied_at": self._arrivals.get(event.id),
            "settled": event.lamport <= ledger.settled_through,
            "trades": [self.trade_doc(trade) for trade in trades],
        }

    def own_orders(self, state: str, limit: int) -> list[Event]:
        """This node's orders, newest first: ``open``, ``closed`` or ``all``."""
        ledger = self.ledger
        author = self.author.author
        out: list[Event] = []
        for seq in range(ledger.next_seq(author) - 1, 0, -1):
            if len(out) >= limit:
                break
            event = ledger.chain_event(author, seq)
            if event is None or not event.is_order:
                continue
            is_open = ledger.open_order(event.id) is not None
            if state == "all" or (state == "open") == is_open:
                out.append(event)
        return out

    def book_doc(self, depth: int) -> dict[str, Any]:
        """``GET /book``: the best C{depth} levels of each side."""
        self.flush()
        params = self.ledger.params
        bids, asks = self.ledger.book.depth(depth)

        def rows(levels: list[tuple[int, int, int]]) -> list[list[Any]]:
            return [
                [params.format_price(price), params.format_amount(total), count]
                for price, total, count in levels
            ]

        return {"bids": rows(bids), "asks": rows(asks)}

    def status(self) -> dict[str, Any]:
        """The market's part of ``GET /status``."""
        ledger = self.ledger
        return {
            "events": len(ledger),
            "authors": ledger.authors,
            "lamport": ledger.lamport,
            "state_hash": ledger.state_hash(),
            "settled_through": ledger.settled_through,
            "market": {
                "applied": ledger.applied,
                "buffered": len(self._buffer),
                "open_orders": len(ledger.book),
                "trades": ledger.trade_count,
                "rollbacks": ledger.rollbacks,
                "replayed": ledger.replayed,
                "revisions": ledger.revisions,
                "flagged_authors": dict(ledger.flagged),
                "settle_after_s": self.config.settle_after,
                "journal_failures": self.journal_failures,
                "loaded_events": self.loaded_events,
                "load_s": round(self.load_seconds, 3),
            },
        }
