"""The market service: the ledger, its journal, and the node's own orders.

Data path: the API -> :meth:`MarketService.submit` (sign, journal, apply)
-> the publisher (gossip); and gossip -> :meth:`MarketService.receive`
(buffer, journal, apply).  This service is the only writer of book state.

Events from peers wait in a small buffer for ``apply_delay`` seconds and are
inserted into the ledger together: concurrent events often arrive out of
their total order, and one insert of a batch costs at most one rollback.
Under a heavy load the delay grows (see :meth:`MarketService._adapt`).

This node's own orders are drafted at once (so their seq and Lamport time are
fixed in call order), then signed and journaled with the others drafted in
the same reactor turn or during the previous fsync (group commit: one batch
signature, written in the reactor thread, fsynced in a thread of their
own), and only then applied, published to peers and acknowledged.  Peer
events are journaled after they are applied, without an fsync: a lost one
is fetched again from the peers.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from ..config import NodeConfig
from ..interfaces import ServiceUnavailable
from ..logs import logger
from ..storage import HISTORIC_TABLES, JournalTables, Storage
from ..witnesses import WitnessSet
from .book import MARKET, ORDER_TYPES, BookParams, OrderBook
from .events import Author, Event, EventError, parse_event
from .fairtime import NEVER, StampChains
from .interfaces import IEventPublisher, IEventStore
from .journal import (
    EventJournal,
    InlineSyncer,
    JournalError,
    JournalReplay,
    Syncer,
    write_file,
)
from .ledger import InsertResult, Ledger, TradeRecord
from .stamps import MAX_RECEIPTS, NO_PREV, Stamp, StampError, StampSigner, parse_stamp

log = logger(__name__)

#: buffered peer events that force an insert before ``apply_delay`` is up
MAX_BUFFER = 5000

#: the longest :attr:`MarketService.apply_delay` under load
MAX_APPLY_DELAY = 1.0

#: new events a second below which the apply delay never grows (a light load)
LOAD_RATE = 200

#: seconds over which replays are counted to adapt the apply delay
ADAPT_WINDOW = 0.5

#: the ledger checkpoint's file name, in the data directory, of the market
#: that has the historic journal (others: :func:`bitfitech.storage.market_tables`)
CHECKPOINT_FILE = HISTORIC_TABLES.checkpoint

#: seconds between checks for a new checkpoint of the settled log
CHECKPOINT_INTERVAL = 30.0

#: newly settled events that make a new checkpoint worth writing
CHECKPOINT_EVENTS = 10_000

#: seconds before the first retry of a journal that cannot be written
#: (full disk, I/O error, read-only file system); each further retry waits
#: twice as long, up to :data:`JOURNAL_RETRY_MAX`
JOURNAL_RETRY = 1.0

#: the longest seconds between two retries of a journal that cannot be written
JOURNAL_RETRY_MAX = 10.0

#: how far past an author's next seq an event its author signed may come
#: through the API (the events between are on their way from elsewhere)
MAX_SEQ_AHEAD = 100

#: events whose local arrival time is remembered (``applied_at``)
ARRIVALS_KEPT = 65536

#: newest trades looked at, beyond the count of new ones, for trades to announce
TRADE_SCAN = 64

#: trade ids remembered as announced to observers
ANNOUNCED_KEPT = 4096

#: most trades or own orders announced as settled by one settlement step
SETTLED_SCAN = 1000

#: seconds a witness waits after it starts before it signs: its peers'
#: sync answers bring it any stamp of its own chain it signed and spread
#: but lost (the journal keeps stamps without an fsync), and signing that
#: seq again would prove it faulty
WITNESS_START_DELAY = 2.0

#: a witness lists again an event it listed this long ago (in units of
#: the counting window) that still has no fair time: its receipt did not
#: count (its stamp reached too few witnesses in time), and an event
#: nobody's receipts count for would never be ordered
RELIST_WINDOWS = 2

#: most events a witness tracks for listing again
RELIST_KEPT = 100_000

#: a witness waits twice as long before each further listing of one event,
#: up to 2 ** RELIST_BACKOFF times RELIST_WINDOWS: on an overloaded network,
#: where stamps reach the others late, listing everything again every
#: 400 ms would only add to the load (it once made up most of the bytes)
RELIST_BACKOFF = 5

#: the longest seconds stamps from peers wait to be applied
STAMP_APPLY_DELAY = 0.005

#: seconds after the last event or receipt it saw that a witness keeps
#: signing every stamp interval; after that, while nothing happens, it
#: signs a heartbeat every IDLE_STAMP seconds only (stamps are kept
#: forever, and an idle network would otherwise grow by ten a second per
#: witness)
ACTIVE_AFTER = 5.0

#: seconds between a witness's stamps on an idle network
IDLE_STAMP = 1.0

#: seconds within which a witness signs the receipt of an event it saw
#: (but see MIN_STAMP_GAP): the sooner its stamp reaches the others, the
#: surer the receipt counts
RECEIPT_DELAY = 0.01

#: the fewest seconds between two stamps of a witness signed for their
#: receipts: under a heavy load receipts wait for each other a little,
#: rather than every node checking a hundred stamps a second per witness
#: (each costs every node a signature check and a pass of the horizons)
MIN_STAMP_GAP = 0.05

#: seconds a witness's stamp may take to reach another witness and still
#: have its receipts count: older receipts are signed as seen this long
#: less the counting window before the stamp (see :func:`_fit`), or
#: longer when its stamps took longer lately (see :meth:`MarketService._reach`)
REACH = 0.1

#: seconds a witness adds to how long its stamps took lately to reach the
#: others, for the reach of its next stamp's receipts
REACH_MARGIN = 0.02

#: the shortest span, in seconds, that a stamp's receipts are fitted into
#: before its time, however long its stamps take to reach the others
FIT_SPAN = 0.01

#: seconds without a stamp after which a witness's acks say nothing of how
#: long stamps take to reach it now
REACH_FRESH = 2.0

#: seconds over which a witness takes the longest its stamps took to reach
#: the others (it changes from one stamp to the next under load)
REACH_RECENT = 1.0

#: seconds after a slot's settling point (its end plus the counting
#: window) at which a busy witness signs its heartbeat
HEARTBEAT_LEAD = 0.001

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
    book: OrderBook, side: str, price: str | None, amount: str, order_type: str
) -> None:
    """
    Check an order as C{book} would, before it is signed (nothing is placed).

    :raises ValueError: ``"<code>: <explanation>"`` for an order the book
        would reject.
    """
    reason = book.rejection(side, price, amount, order_type)
    if reason is None:
        return
    params = book.params
    detail = _REJECTION_TEXT.get(reason, "rejected by the book")
    if reason == "price_not_tick_multiple":
        detail += f" {params.tick}"
    elif reason == "amount_not_lot_multiple":
        detail += f" {params.lot}"
    elif reason == "price_too_high":
        detail += f" {params.max_price}"
    raise ValueError(f"{reason}: {detail}")


def _follow(done: Deferred[Event]) -> Deferred[Event]:
    """A Deferred that fires as C{done} does, leaving C{done}'s result alone."""
    follower: Deferred[Event] = Deferred()

    def relay(result: Event | Failure) -> Event | Failure:
        if isinstance(result, Failure):
            follower.errback(result)
        else:
            follower.callback(result)
        return result

    done.addBoth(relay)
    return follower


@dataclass(frozen=True)
class MarketChange:
    """
    What one apply or one settlement step changed, told to observers (the
    API's live stream).

    :ivar book: whether the book may have changed.
    :ivar trades: trades that appeared or settled, oldest first.
    :ivar orders: this node's orders created or changed (filled,
        cancelled, settled).
    """

    book: bool
    trades: tuple[TradeRecord, ...] = ()
    orders: tuple[Event, ...] = ()


MarketObserver = Callable[[MarketChange], None]
"""Called with each :class:`MarketChange`; see :meth:`MarketService.watch`."""


class _Pending:
    """
    One event on its way through this node's group commit: signed (unless
    its author signed it: :attr:`presigned`), journaled, applied,
    acknowledged.
    """

    __slots__ = ("event", "done", "presigned")

    def __init__(self, event: Event, presigned: bool = False) -> None:
        self.event = event
        self.done: Deferred[Event] = Deferred()
        self.presigned = presigned


SyncerFactory = Callable[[Storage], Syncer]
"""Makes the syncer at the first durable write."""


def _fit(seen: list[tuple[str, int]], low: int, high: int) -> list[tuple[str, int]]:
    """
    Receipt times C{seen} (sorted by time) within [C{low}, C{high}]: if
    the earliest is before C{low}, all are mapped linearly from [earliest,
    C{high}] onto [C{low}, C{high}], so their order holds.
    """
    if not seen or seen[0][1] >= low:
        return [(event_id, min(at, high)) for event_id, at in seen]
    first = seen[0][1]
    span, room = high - first, high - low
    return [(event_id, low + (min(at, high) - first) * room // span) for event_id, at in seen]


def inline_syncer(storage: Storage) -> Syncer:
    """fsync in the reactor thread (tests, tools)."""
    return InlineSyncer(storage.database_path)


@implementer(IEventStore)
class MarketService(Service):
    """
    Holds the ledger and the journal; signs this node's orders.

    Own orders go through three steps: *drafted* (seq and Lamport time
    fixed, in call order), *journaled* (signed together and written, then
    made durable by an fsync in the syncer's thread; one fsync in flight at
    a time, so the orders drafted meanwhile make the next group), then
    *applied* as soon as the fsync is done: inserted into the ledger,
    published and acknowledged.  Peer events are applied at a tick and
    written right after, without waiting for the disk.

    :ivar pair: the market, ``BASE/QUOTE``: its events and stamps only are
        read, journaled and applied.
    :ivar tables: where its journal is kept (from the start on).
    :ivar ledger: the ledger (only while running).
    :ivar author: this node's event author (only while running).
    :ivar apply_delay: the current delay before buffered events are
        applied: ``config.apply_delay`` under a light load, longer (up to
        :data:`MAX_APPLY_DELAY`) while rollbacks replay more events than
        arrive (see :meth:`_adapt`).
    """

    name = "market"

    def __init__(
        self,
        config: NodeConfig,
        storage: Storage,
        clock: IReactorTime,
        params: BookParams | None = None,
        syncer: SyncerFactory = inline_syncer,
        witnesses: WitnessSet | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        market: str | None = None,
    ) -> None:
        """
        :param syncer: makes the syncer, at its first use (a node passes
            every market the ``open`` of one
            :class:`~bitfitech.market.journal.SharedSyncer`).
        :param witnesses: the network's witnesses (none: author-clock order).
            If this node's id is among them, it signs stamps.
        :param monotonic: the time of the journal's replay at start, which
            runs before any reactor timer can fire (a fake in tests).
        :param market: the market, ``BASE/QUOTE`` (default: ``config.pair``).
            The service of ``config.pair`` is named ``market``, another
            ``market BASE/QUOTE``.
        """
        self.config = config
        self._monotonic = monotonic
        self.witnesses = witnesses if witnesses is not None else WitnessSet()
        self.storage = storage
        self.clock = clock
        self.params = params or BookParams()
        self.network = config.network
        self.pair = market or config.pair
        if self.pair != config.pair:
            self.name = f"market {self.pair}"
        self.tables: JournalTables | None = None
        self._publishers: list[IEventPublisher] = []
        self.apply_delay = config.apply_delay
        self._make_syncer = syncer
        self._syncer: Syncer | None = None
        self._journal: EventJournal | None = None
        # Why the journal cannot be written now ("": it can), since when,
        # and whether it may have lost what it wrote (a failed fsync).
        self._journal_fault = ""
        self._fault_since = 0.0
        self._fsync_failed = False
        self._retry_call: IDelayedCall | None = None
        self._retry_delay = JOURNAL_RETRY
        self._ledger: Ledger | None = None
        self._author: Author | None = None
        self._buffer: dict[str, Event] = {}
        self._buffer_lamport = 0
        self._tick_call: IDelayedCall | None = None
        self._signed: list[_Pending] = []
        self._signed_ids: dict[str, Event] = {}
        # events their authors signed, on their way: (author, seq) -> pending
        self._presigned_slots: dict[tuple[str, int], _Pending] = {}
        self._unjournaled: list[Event] = []
        self._syncing = False
        self._write_call: IDelayedCall | None = None
        self._sync_waiters: list[Deferred[None]] = []
        self._next_seq = 1
        self._own_lamport = 0
        self._settler: LoopingCall | None = None
        self._checkpointer: LoopingCall | None = None
        self._checkpointed = 0
        self._checkpointing = False
        self.loaded_events = 0
        self.load_seconds = 0.0
        self.resumed_at = 0
        self.journal_failures = 0
        self.journal_writes = 0
        self._window_start = 0.0
        self._window_new = 0
        self._window_replayed = 0
        self._arrivals: OrderedDict[str, float] = OrderedDict()
        self._observers: list[MarketObserver] = []
        self._announced: OrderedDict[str, None] = OrderedDict()
        # Fair order: stamps from peers waiting for the next tick, and
        # stamps applied but not journaled yet.
        self._stamp_buffer: dict[str, Stamp] = {}
        self._stamp_arrivals: dict[str, int] = {}
        self._unjournaled_stamps: list[Stamp] = []
        # Per witness: (seq held without a gap, when it was first held, unix us).
        self._held_since: list[tuple[int, int]] = [(0, 0)] * self.witnesses.n
        # Per witness: this node's clock minus the witness's, at its last
        # stamp's arrival (network delay included), ms.
        self.witness_lag: list[int | None] = [None] * self.witnesses.n
        self._signer: StampSigner | None = None
        self._stamp_call: IDelayedCall | None = None
        self._witnessing = False  # signing stamps: from start to stop
        self._catching_up = False  # the first stamp after start lists what waits
        self._stamp_from = 0.0
        self._active_until = 0.0
        self._last_signed: float | None = None
        # This node as a witness: events first seen since its last stamp.
        self._first_seen: dict[str, int] = {}
        self._last_seen = 0
        # This witness's listings: event id -> how many times it listed it,
        # the seq of the stamp that did last and the receipt's time there,
        # and (when due, event id): when to look whether to list it again.
        self._listings: dict[str, tuple[int, int, int]] = {}
        self._relist_due: list[tuple[int, str]] = []
        # (when, us): how long this witness's stamps took lately to reach the others
        self._reach_seen: deque[tuple[int, int]] = deque()
        self.stamps_signed = 0
        self.relisted = 0

    # -- lifecycle

    @property
    def witnessing(self) -> bool:
        """Whether this node is one of the witnesses, signing stamps (while running)."""
        return self._witnessing

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
        """Replay the journal into a new ledger (:class:`JournalReplay`), then start settling."""
        self.tables = self.storage.journal_tables(self.pair, self.clock.seconds())
        identity = self.storage.identity
        self._author = Author(bytes(identity.signing_key), self.network, self.pair)
        self._ledger = Ledger(self.params, witnesses=self.witnesses)
        self._journal = journal = EventJournal(self.storage.connection, self.tables)
        self._journal_fault = ""
        self._fsync_failed = False
        replay = JournalReplay(
            self.storage.database_path, len(journal),
            journal.stamp_count() if self.witnesses else 0, self._monotonic, market=self.pair,
        )  # fmt: skip
        replay.start()
        if self.witnesses:
            self._load_stamps(journal, self._ledger, replay)
        events = []
        for read, (text, sig) in enumerate(journal.load(), 1):
            replay.read(read)
            try:
                event = parse_event(text, sig, self.network, self.pair)
            except EventError as e:
                replay.skip("event", str(e))
                continue
            event.forget_text()  # journaled: written again from its fields if asked
            events.append(event)
        self.resumed_at = self._ledger.load(
            events, self.clock.seconds(), self._read_checkpoint(), progress=replay.applying
        )
        self.loaded_events = len(events)
        self._next_seq = self._ledger.next_seq(self._author.author)
        self.load_seconds = replay.finish(
            loaded=len(events), applied=self._ledger.applied - self.resumed_at,
            resumed=self.resumed_at, orders=len(self._ledger.book),
            trades=self._ledger.trade_count, state_hash=self._ledger.state_hash(),
        )  # fmt: skip
        self._settler = self._repeat(
            self._settle, max(0.05, min(1.0, self.config.settle_after / 4)), "settling"
        )
        if identity.node_id in self.witnesses:
            self._signer = StampSigner(
                bytes(identity.signing_key), self.network, self.pair, self.witnesses
            )
            self._stamp_from = self.clock.seconds() + WITNESS_START_DELAY
            self._witnessing = True
            self._catching_up = True
            self._stamp_by(self._stamp_from)
            log.info("This node is witness {index} of {n}", index=self._signer.index + 1,
                     n=self.witnesses.n)  # fmt: skip
        self._checkpointed = self.resumed_at
        self._checkpointer = self._repeat(
            self._checkpoint_settled, CHECKPOINT_INTERVAL, "checkpointing"
        )
        super().startService()

    def _repeat(self, function: Callable[[], object], interval: float, what: str) -> LoopingCall:
        """
        Call C{function} every C{interval} seconds from now on.  Should it
        ever raise, the loop stops: that is logged as critical, never
        silent.
        """
        loop = LoopingCall(function)
        loop.clock = self.clock
        loop.start(interval, now=False).addErrback(
            lambda failure: log.failure("The market stopped {what}", failure, what=what)
        )
        return loop

    def stopService(self) -> Deferred[None]:
        """Journal and apply everything on its way, close the syncer, then stop."""
        super().stopService()
        for loop in (self._settler, self._checkpointer):
            if loop is not None and loop.running:
                loop.stop()
        self._witnessing = False
        for call in (self._stamp_call, self._retry_call):
            if call is not None and call.active():
                call.cancel()
        self._stamp_call = self._retry_call = None
        return self._drain().addCallback(self._close)

    def _drain(self) -> Deferred[None]:
        """Fires once nothing is buffered, signed, being written or waiting to apply."""
        while self._ledger is not None:
            self._tick()
            if self._syncing:
                waiter: Deferred[None] = Deferred()
                self._sync_waiters.append(waiter)
                return waiter.addCallback(lambda _: self._drain())
            if self._journal_fault:
                self._last_write()
                break
            if not (
                self._buffer
                or self._signed
                or self._unjournaled
                or self._stamp_buffer
                or self._unjournaled_stamps
            ):
                break
        return succeed(None)

    def _last_write(self) -> None:
        """
        At a stop with a journal that cannot be written: try once more to
        write what waits; what cannot be is lost to this node only (its
        peers send it again after the restart).
        """
        journal = self._journal
        if journal is None:
            return
        try:
            self._write_waiting(journal)
        except JournalError as e:
            log.warn(
                "Stopping with {events} peer events and {stamps} stamps not journaled "
                "({error}): peers send them again after the restart",
                events=len(self._unjournaled), stamps=len(self._unjournaled_stamps),
                error=str(e),
            )  # fmt: skip

    @property
    def checkpoint_path(self) -> str:
        """
        Where the ledger's checkpoint is kept, in the data directory (known
        from the start on).
        """
        if self.tables is None:
            raise ServiceUnavailable("the market has not started")
        return os.path.join(self.storage.data_dir, self.tables.checkpoint)

    def _read_checkpoint(self) -> bytes | None:
        try:
            with open(self.checkpoint_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warn("Cannot read the ledger checkpoint of {market}: {error}",
                     market=self.pair, error=str(e))  # fmt: skip
            return None

    def _checkpoint_settled(self) -> None:
        """
        Every :data:`CHECKPOINT_INTERVAL`, once :data:`CHECKPOINT_EVENTS`
        more events are settled, keep a checkpoint of the settled part of
        the log (late events rarely change it), written in the syncer's
        thread: a node killed at any moment then restarts without
        replaying everything.
        """
        ledger = self._ledger
        if ledger is None or self._checkpointing or self._journal_fault:
            return
        settled = ledger.settled_position()
        if settled - self._checkpointed < CHECKPOINT_EVENTS:
            return
        position, data = ledger.checkpoint(settled)
        if position <= self._checkpointed:
            return
        if self._syncer is None:
            self._syncer = self._make_syncer(self.storage)
        self._checkpointing = True

        def written(_: None) -> None:
            self._checkpointed = position

        def failed(failure: Failure) -> None:
            log.warn("Cannot write the ledger checkpoint of {market}: {error}",
                     market=self.pair, error=failure.getErrorMessage())  # fmt: skip

        def done(_: None) -> None:
            self._checkpointing = False

        self._syncer.write_file(self.checkpoint_path, data).addCallbacks(written, failed).addBoth(
            done
        )

    def _write_checkpoint(self, ledger: Ledger) -> None:
        """Keep the whole ledger's state for the next start (at a clean stop)."""
        try:
            write_file(self.checkpoint_path, ledger.checkpoint()[1])
        except OSError as e:
            log.warn("Cannot write the ledger checkpoint of {market}: {error}",
                     market=self.pair, error=str(e))  # fmt: skip

    def _close(self, _: object) -> None:
        if self._ledger is not None and self._ledger.applied:
            self._write_checkpoint(self._ledger)
        syncer, self._syncer = self._syncer, None
        self._ledger = None
        self._journal = None
        if syncer is not None:
            syncer.close()

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

    def receive(self, events: Sequence[Event], arrived: float | None = None) -> None:
        """
        Take verified events from peers; they are applied within :attr:`apply_delay`.

        :param arrived: when they arrived (clock seconds), if not now: this
            node as a witness lists them as seen then.
        """
        if self._ledger is None:
            return
        buffer = self._buffer
        first_seen = self._first_seen if self._signer is not None else None
        now_us = int((self.clock.seconds() if arrived is None else arrived) * 1_000_000)
        for event in events:
            if event.id not in buffer and event.id not in self._ledger:
                buffer[event.id] = event
                if event.lamport > self._buffer_lamport:
                    self._buffer_lamport = event.lamport
                if first_seen is not None and event.id not in first_seen:
                    self._note_seen(event.id, now_us)
        if len(buffer) >= MAX_BUFFER:
            self._tick()
        elif buffer:
            self._schedule(self.apply_delay)

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

    # -- IEventStore: witness stamps

    def has_stamp(self, stamp_id: str) -> bool:
        """Whether the stamp is held (or waiting to be applied)."""
        fair = self._ledger.fair if self._ledger is not None else None
        return stamp_id in self._stamp_buffer or (fair is not None and stamp_id in fair)

    def get_stamp(self, stamp_id: str) -> Stamp | None:
        """A held or waiting stamp."""
        stamp = self._stamp_buffer.get(stamp_id)
        if stamp is None and self._ledger is not None and self._ledger.fair is not None:
            stamp = self._ledger.fair.get(stamp_id)
        return stamp

    def receive_stamps(self, stamps: Sequence[Stamp]) -> None:
        """Take verified stamps from peers; they are applied at the next tick."""
        ledger = self._ledger
        if ledger is None or ledger.fair is None:
            return
        now_us = int(self.clock.seconds() * 1_000_000)
        buffer = self._stamp_buffer
        for stamp in stamps:
            if stamp.id not in buffer and stamp.id not in ledger.fair:
                buffer[stamp.id] = stamp
                self._stamp_arrivals[stamp.id] = now_us
                if stamp.member < len(self.witness_lag):
                    self.witness_lag[stamp.member] = (now_us - stamp.t) // 1000
                if stamp.receipts and self._signer is not None:
                    self._active_until = self.clock.seconds() + ACTIVE_AFTER
                    self._stamp_by(self._next_heartbeat())
        if buffer:
            # Stamps move fair times and horizons: applied soon even when a
            # heavy load has stretched the apply delay.
            self._schedule(min(self.apply_delay, STAMP_APPLY_DELAY))

    def stamp_gap_marks(self) -> set[tuple[str, int]]:
        """Witnesses with stamps held beyond a missing one, and where their gap starts."""
        self.flush()
        fair = self.ledger.fair
        return fair.gap_marks() if fair is not None else set()

    def stamp_vector(self) -> dict[str, int]:
        """Witness key -> highest seq held without a gap."""
        self.flush()
        fair = self.ledger.fair
        return fair.vector() if fair is not None else {}

    def stamps_missing_for(self, vector: dict[str, int], limit: int) -> tuple[list[Stamp], bool]:
        """Stamps a peer with C{vector} lacks, oldest first, and whether more remain."""
        self.flush()
        fair = self.ledger.fair
        return fair.missing_for(vector, limit) if fair is not None else ([], False)

    def stamp_evidence(self) -> list[Stamp]:
        """The stamps that prove witnesses faulty."""
        fair = self.ledger.fair
        return fair.evidence() if fair is not None else []

    def add_publisher(self, publisher: IEventPublisher) -> Callable[[], None]:
        """
        From now on, hand C{publisher} each own event once it is journaled
        and applied, and the evidence of each equivocation found: the
        gossip layer adds itself when it starts (it comes after the market
        on the data path, so the market knows it only as a publisher).

        :return: a function that removes C{publisher} again.
        """
        self._publishers.append(publisher)

        def remove() -> None:
            if publisher in self._publishers:
                self._publishers.remove(publisher)

        return remove

    def flush(self) -> None:
        """Apply buffered peer events and journaled own events now."""
        if self._ledger is not None:
            self._tick()

    # -- this node's orders

    def submit(self, side: str, price: str | None, amount: str, order_type: str) -> Deferred[Event]:
        """
        Draft a new order of this node (signed with its group commit); fires
        once it is journaled and applied.

        :raises ValueError: for an order the book would reject.
        :raises ServiceUnavailable: when the market is not running.
        """
        ledger = self._running_ledger()
        check_order(ledger.book, side, price, amount, order_type)
        if order_type == MARKET:
            price = None
        lamport, ts = self._next_clock()
        event = self.author.draft_order(
            self._next_seq, lamport, ts, side, order_type, price, amount
        )
        return self._queue_own(event)

    def cancel(self, order_id: str) -> Deferred[Event]:
        """
        Draft a cancel of one of this node's orders (signed with its group commit).

        :raises KeyError: for an order this node does not know.
        :raises PermissionError: for another author's order.
        """
        ledger = self._running_ledger()
        target = (
            ledger.get(order_id) or self._buffer.get(order_id) or self._signed_ids.get(order_id)
        )
        if target is None or not target.is_order:
            raise KeyError(order_id)
        if target.author != self.author.author:
            raise PermissionError(order_id)
        lamport, ts = self._next_clock()
        return self._queue_own(self.author.draft_cancel(self._next_seq, lamport, ts, order_id))

    # -- events their authors signed (users' own keys, through the API)

    def check_signed(
        self, event: Event, earlier: Mapping[tuple[str, int], Event] | None = None
    ) -> bool:
        """
        Check an event its author signed (its form, network, pair and
        signature are checked already) against what this node holds.

        :param earlier: events of the same request before this one, by
            ``(author, seq)``: they count as held.

        :return: ``True`` for a new event, ``False`` for one held already.
        :raises ValueError: ``"<code>: <explanation>"`` for an event this
            node will not take: one of its own key's, one whose seq holds
            another event, a seq far past the author's last, a Lamport time
            that does not follow the author's previous event, or an order
            the book would reject.
        :raises ServiceUnavailable: when the market cannot take events now.
        """
        ledger = self._running_ledger()
        author, seq = event.author, event.seq
        earlier = earlier or {}
        if author == self.author.author:
            raise ValueError(
                "own_key: this node signs its own key's events; place them with POST /orders"
            )
        if event.id in ledger or event.id in self._buffer or event.id in self._signed_ids:
            return False
        taken = self._slot(author, seq, earlier)
        if taken is not None and taken.id == event.id:
            return False
        if taken is not None:
            raise ValueError(
                f"seq_taken: event {taken.id} holds seq {seq} of key {author} already; "
                f"this key's next seq is {self.next_seq_of(author)}"
            )
        next_seq = max([self.next_seq_of(author), *(s + 1 for (a, s) in earlier if a == author)])
        if seq > next_seq + MAX_SEQ_AHEAD:
            raise ValueError(
                f"seq_gap: seq {seq} is more than {MAX_SEQ_AHEAD} past this key's next, {next_seq}"
            )
        previous = self._slot(author, seq - 1, earlier)
        if previous is not None and event.lamport <= previous.lamport:
            raise ValueError(
                f"lamport_not_increasing: Lamport time {event.lamport} does not follow "
                f"{previous.lamport}, of this key's seq {seq - 1}"
            )
        if event.is_order:
            check_order(ledger.book, event.side, event.price, event.amount, event.order_type)
        return True

    def submit_signed(self, events: Sequence[Event]) -> Deferred[list[Event]]:
        """
        Take events their authors signed (each passed :meth:`check_signed`):
        journal them durably with this node's next group commit, then apply
        and publish them as this node's own events, never re-signed or
        changed.  Fires once every one is journaled and applied; an event
        held already fires at once.
        """
        self._running_ledger()
        done: list[Deferred[Event]] = []
        for event in events:
            if event.id in self.ledger or event.id in self._buffer:
                done.append(succeed(event))
                continue
            slot = (event.author, event.seq)
            waiting = self._presigned_slots.get(slot)
            if waiting is not None and waiting.event.id == event.id:
                done.append(_follow(waiting.done))
                continue
            pending = _Pending(event, presigned=True)
            self._presigned_slots[slot] = pending
            done.append(self._queue(pending))
        # A failure arrives wrapped in FirstError.
        return gatherResults(done, consumeErrors=True)

    def next_seq_of(self, author: str) -> int:
        """The seq the next event of C{author} must carry, counting those on their way here."""
        in_flight = [seq for (key, seq) in self._presigned_slots if key == author]
        return max([self.ledger.next_seq(author), *(seq + 1 for seq in in_flight)])

    def next_lamport(self) -> int:
        """
        A Lamport time for a new event: above every one held (a hybrid
        logical clock: the wall clock in ms if that is higher).
        """
        ts = int(self.clock.seconds() * 1000)
        held = max(self.ledger.lamport, self._buffer_lamport, self._own_lamport)
        return max(held + 1, ts)

    def _slot(
        self, author: str, seq: int, earlier: Mapping[tuple[str, int], Event]
    ) -> Event | None:
        """The event held, on its way, or in C{earlier} for slot C{(author, seq)}."""
        held = self.ledger.chain_event(author, seq) or earlier.get((author, seq))
        if held is not None:
            return held
        pending = self._presigned_slots.get((author, seq))
        return None if pending is None else pending.event

    def check(self, side: str, price: str | None, amount: str, order_type: str) -> None:
        """
        Check a new order as :meth:`submit` does, without signing it.

        :raises ValueError: for an order the book would reject.
        :raises ServiceUnavailable: when the market is not running.
        """
        check_order(self.ledger.book, side, price, amount, order_type)

    def _running_ledger(self) -> Ledger:
        ledger = self.ledger
        if not self.running:
            raise ServiceUnavailable("the market is stopping")
        if self._journal_fault:
            raise ServiceUnavailable(self._journal_fault)
        return ledger

    def _next_clock(self) -> tuple[int, int]:
        """
        The Lamport time and timestamp of a new own event.

        The Lamport time is above every one held (a hybrid logical clock):
        the highest held plus one, or the wall clock in milliseconds if
        that is higher.  With the wall clock, an order entered on a node
        that is seconds behind its peers (busy, or just reconnected) still
        sorts near the end of everyone else's log, instead of seconds back,
        where applying it would replay everything since on every node.
        """
        ts = int(self.clock.seconds() * 1000)
        lamport = self.next_lamport()
        self._own_lamport = lamport
        return lamport, ts

    def _queue_own(self, event: Event) -> Deferred[Event]:
        self._next_seq += 1
        return self._queue(_Pending(event))

    def _queue(self, pending: _Pending) -> Deferred[Event]:
        """Put C{pending} in the next group commit."""
        event = pending.event
        if self._signer is not None and event.id not in self._first_seen:
            self._note_seen(event.id, int(self.clock.seconds() * 1_000_000))
        self._signed.append(pending)
        self._signed_ids[event.id] = event
        if self._write_call is None and not self._syncing:
            # The group commit: every order signed in this reactor turn.
            self._write_call = self.clock.callLater(0, self._start_write)
        return pending.done

    # -- the pipeline: tick (apply), write (journal)

    def _schedule(self, delay: float) -> None:
        """Make the next tick happen within C{delay} seconds."""
        if not self.running:
            return
        call = self._tick_call
        if call is None:
            self._tick_call = self.clock.callLater(delay, self._tick)
        elif call.getTime() > self.clock.seconds() + delay:
            call.reset(delay)

    def _tick(self) -> None:
        """Apply the buffered peer events, then journal what waits."""
        call, self._tick_call = self._tick_call, None
        if call is not None and call.active():
            call.cancel()
        if self._ledger is None:
            return
        if self._buffer:
            peers = list(self._buffer.values())
            self._buffer.clear()
            self._buffer_lamport = 0
            self._unjournaled.extend(peers)
            self._apply(peers, [])
        if self._stamp_buffer:
            stamps = list(self._stamp_buffer.values())
            self._stamp_buffer.clear()
            self._apply_stamps(stamps)
        self._start_write()

    def _apply(self, peers: list[Event], own: list[_Pending]) -> None:
        """Insert events into the ledger; publish and acknowledge C{own}."""
        ledger = self.ledger
        mine = [pending.event for pending in own]
        now = self.clock.seconds()
        result = ledger.insert(peers + mine, now)
        arrivals = self._arrivals
        for event in result.new:
            arrivals[event.id] = now
        while len(arrivals) > ARRIVALS_KEPT:
            arrivals.popitem(last=False)
        self._report(result)
        if self._observers and result.new:
            self._tell_applied(result)
        self._adapt(result, now)
        if self._publishers:
            evidence: list[Event] = []
            if result.equivocations:
                slots = set(result.equivocations)
                evidence = [e for e in ledger.conflicts() if (e.author, e.seq) in slots]
            for publisher in list(self._publishers):
                if mine:
                    publisher.publish(mine)
                if evidence:
                    publisher.publish(evidence)
        for pending in own:
            event = pending.event
            self._signed_ids.pop(event.id, None)
            self._presigned_slots.pop((event.author, event.seq), None)
            pending.done.callback(event)

    def _apply_stamps(self, stamps: list[Stamp], journaled: bool = False) -> None:
        """
        Insert stamps into the ledger; settle; publish what a witness signed or evidence.

        :param journaled: they are in the journal already (this witness's own).
        """
        ledger = self.ledger
        fair = ledger.fair
        assert fair is not None
        stamped, result = ledger.insert_stamps(stamps)
        if not stamped.new:
            return
        if not journaled:
            self._unjournaled_stamps.extend(stamped.new)
        now_us = int(self.clock.seconds() * 1_000_000)
        held_since = self._held_since
        arrivals = self._stamp_arrivals
        for index, seq in enumerate(fair.acks()):
            if seq > held_since[index][0]:
                # Held without a gap through seq once its last missing stamp
                # arrived; the stamps up to it arrived no later, as a rule.
                last = fair.last(index)
                at = arrivals.get(last.id, now_us) if last is not None else now_us
                held_since[index] = (seq, at)
        for stamp in stamped.new:
            arrivals.pop(stamp.id, None)
        self._report(result)
        for witness in stamped.flagged:
            log.warn(
                "Witness {witness} signed conflicting stamps ({why}): its receipts are "
                "ignored from now on (evidence kept and spread)",
                witness=witness, why=fair.flagged.get(witness, ""),
            )  # fmt: skip
        if self._observers and result.placed:
            self._tell_applied(InsertResult(new=result.placed))
        self._settle()
        if self._publishers:
            evidence = fair.evidence() if stamped.flagged else []
            own = [s for s in stamped.new if self._signer and s.witness == self._signer.witness]
            for publisher in list(self._publishers):
                if own:
                    publisher.publish_stamps(own)
                if evidence:
                    publisher.publish_stamps(evidence)

    # -- this node as a witness: when it signs

    def _stamp_by(self, at: float) -> None:
        """Have this witness sign its next stamp at clock time C{at} at the latest."""
        if not self._witnessing:
            return
        now = self.clock.seconds()
        call = self._stamp_call
        if call is not None and call.active():
            if call.getTime() <= at:
                return
            call.reset(max(0.0, at - now))
        else:
            self._stamp_call = self.clock.callLater(max(0.0, at - now), self._stamp_due)

    def _next_heartbeat(self) -> float:
        """
        When this witness signs its next stamp if it sees nothing new: while
        the network is busy, just after the next slot's settling point (its
        end plus the counting window), when a stamp of n - f witnesses
        settles that slot everywhere; on an idle network, :data:`IDLE_STAMP`
        after its last stamp.
        """
        now = self.clock.seconds()
        if now >= self._active_until and self._last_signed is not None:
            return self._last_signed + IDLE_STAMP
        # In whole microseconds: float division would put the next one
        # at the one just signed now and then.
        period = self.witnesses.stamp_ms * 1000
        phase = (self.witnesses.window_ms * 1000 + int(HEARTBEAT_LEAD * 1_000_000)) % period
        now_us = int(now * 1_000_000)
        return (((now_us - phase) // period + 1) * period + phase) / 1_000_000

    def _stamp_due(self) -> None:
        self._stamp_call = None
        try:
            if self.clock.seconds() >= self._stamp_from:
                if self._catching_up and not self._journal_fault:
                    self._catching_up = False
                    self._list_unordered()
                self._stamp()
        except Exception:
            log.failure("This witness failed to sign a stamp")
        at = max(self._stamp_from, self._next_heartbeat())
        if self._journal_fault:
            # Nothing was signed: try again a stamp interval from now, not
            # at a heartbeat time already past.
            at = max(at, self.clock.seconds() + self.witnesses.stamp_ms / 1000)
        self._stamp_by(at)

    def _stamp(self) -> None:
        """
        This node as a witness: sign the next stamp of its chain, with the
        events it first saw since the last one, and apply and spread it.
        """
        ledger, signer = self._ledger, self._signer
        if ledger is None or signer is None or ledger.fair is None or self._journal_fault:
            # A stamp is journaled before it is sent: none while the journal
            # cannot be written (the events seen wait for the next stamp).
            return
        self._last_signed = self.clock.seconds()
        self.flush()  # stamps from peers first: the acks say what is held
        fair = ledger.fair
        own = signer.index
        last = fair.last(own)
        now_us = int(self.clock.seconds() * 1_000_000)
        window = self.witnesses.window_ms * 1000
        # An event whose fair time is settled needs no receipt: a later one
        # cannot change it (a witness catching up on history sees many).
        settled = ledger.settled_horizon
        first_seen, self._first_seen = self._first_seen, {}
        seen = [
            item
            for item in first_seen.items()
            if (at := fair.fair_time(item[0])) is None or at > settled
        ]
        reach = self._reach(now_us)
        seen.extend(self._relist(ledger, first_seen, now_us, reach))
        seen.sort(key=lambda item: (item[1], item[0]))
        listed = dict(seen)
        stamps = []
        while True:
            prev_t = last.t if last is not None else 0
            t = max(now_us, prev_t + 1)
            # A receipt older than the window less REACH would reach the
            # others too late to count (this witness was busy, or just
            # started): the batch's receipt times are then compressed into
            # that span, keeping their order.
            oldest = max(prev_t + 1, t - (window - reach))
            acks = []
            for index, (held, since) in enumerate(self._held_since):
                old = last.acks[index][0] if last is not None else 0
                if index == own:
                    acks.append(((last.seq if last is not None else 0), 0))
                elif held > old:
                    acks.append((held, t - min(max(since, prev_t + 1), t)))
                else:
                    acks.append((old, 0))
            batch, seen = seen[:MAX_RECEIPTS], seen[MAX_RECEIPTS:]
            receipts = [(event_id, t - at) for event_id, at in _fit(batch, oldest, t)]
            try:
                stamp = signer.sign(
                    (last.seq if last is not None else 0) + 1,
                    t,
                    last.id if last is not None else NO_PREV,
                    acks,
                    receipts,
                )
            except StampError as e:  # pragma: no cover - the fields above are in range
                log.error("Cannot sign a stamp: {error}", error=str(e))
                return
            stamps.append(stamp)
            last = stamp
            if not seen:
                break
        # Journaled before anyone sees them: a witness killed after sending
        # a stamp it had not kept would sign that seq again at its restart
        # and be flagged on every node.  (Written at once, not with the
        # next group: an own order's fsync may be in flight.)
        journal = self._journal
        try:
            if journal is not None:
                journal.write([], durable=False, stamps=stamps)
        except JournalError as e:
            self._journal_failed(str(e))
            # Signed again, with the same seq, at the next tick: with the
            # same receipts.
            self._first_seen = {**listed, **self._first_seen}
            return
        self.stamps_signed += len(stamps)
        listings, due = self._listings, self._relist_due
        for stamp in stamps:
            for event_id, offset in stamp.receipts:
                times = listings.get(event_id, (0, 0, 0))[0] + 1
                listings[event_id] = (times, stamp.seq, stamp.t - offset)
                wait = RELIST_WINDOWS * window << min(times - 1, RELIST_BACKOFF)
                heappush(due, (now_us + wait, event_id))
        while len(listings) > RELIST_KEPT:
            listings.pop(heappop(due)[1], None)
        self._apply_stamps(stamps, journaled=True)

    def _reach(self, now_us: int) -> int:
        """
        How long (in us) this witness expects its next stamp to take to
        reach f other witnesses: the longest its stamps took over the last
        :data:`REACH_RECENT` (see :meth:`StampChains.reach`) plus
        :data:`REACH_MARGIN`; at least :data:`REACH`, at most the window
        less :data:`FIT_SPAN`.  Its receipts are fitted into the window
        less that before the stamp, where they count if it arrives in time.
        """
        ledger = self._ledger
        window = self.witnesses.window_ms * 1000
        least = int(REACH * 1_000_000)
        if ledger is None or ledger.fair is None or self._signer is None:
            return least
        took = ledger.fair.reach(self._signer.index, now_us - int(REACH_FRESH * 1_000_000))
        if took is None:
            return least
        recent = self._reach_seen
        recent.append((now_us, took))
        while recent[0][0] < now_us - int(REACH_RECENT * 1_000_000):
            recent.popleft()
        took = max(seen for _, seen in recent)
        took += int(REACH_MARGIN * 1_000_000)
        return min(window - int(FIT_SPAN * 1_000_000), max(least, took))

    def _list_unordered(self) -> None:
        """
        This node as a witness, at its first stamp after a start: list, as
        seen now, every event held that has no fair time and no counted
        receipt of this witness.  What it saw before it stopped is lost to
        it (it may have stopped before stamping it, or its receipt did not
        count and the record of when to list it again was in memory), and
        an event that f + 1 witnesses' receipts do not count for would
        wait forever, and every later event of its author with it.
        """
        ledger, signer = self._ledger, self._signer
        if ledger is None or signer is None or ledger.fair is None:
            return
        fair, own = ledger.fair, signer.index
        now_us = int(self.clock.seconds() * 1_000_000)
        waiting = [e for e in ledger.unordered() if not fair.counted(e, own)]
        # In the order they came to this node (the journal's): not by id,
        # which an author chooses.
        for event_id in waiting:
            if event_id not in self._first_seen:
                self._note_seen(event_id, now_us)
        if waiting:
            log.info("Listing {count} events that wait for their fair time, as seen now",
                     count=len(waiting))  # fmt: skip

    def _note_seen(self, event_id: str, at: int) -> None:
        """
        This node as a witness first saw C{event_id} at C{at} (unix us).

        Receipt times strictly increase in the order events are taken
        (events of one message in the sender's order): no two tie, and a
        tie would be broken by event id, which an author can choose.
        """
        at = max(at, self._last_seen + 1)
        self._last_seen = at
        self._first_seen[event_id] = at
        now = self.clock.seconds()
        self._active_until = now + ACTIVE_AFTER
        after = self._last_signed + MIN_STAMP_GAP if self._last_signed is not None else now
        self._stamp_by(max(now + RECEIPT_DELAY, after))

    def _relist(
        self, ledger: Ledger, listing: dict[str, int], now_us: int, reach: int
    ) -> list[tuple[str, int]]:
        """
        Events this witness listed whose time to look again has come
        (:data:`RELIST_WINDOWS` after their last listing, twice as long each
        time), that are held and still have no fair time, and whose receipt
        of this witness did not count and never will: list them again, as
        seen now.  Those whose receipt may yet count (the others' acks of
        its stamp are late: listing them again would only add to the load)
        are looked at again a stamp interval later.  Those that have a fair
        time, whose receipt counted (the others' receipts are what they
        wait for), or that are no longer held, are forgotten.  Nothing is
        listed again while this witness's stamps take about the window to
        reach the others (C{reach}, from :meth:`_reach`).
        """
        fair = ledger.fair
        signer = self._signer
        assert fair is not None and signer is not None
        own = signer.index
        listings, due = self._listings, self._relist_due
        later = self.witnesses.stamp_ms * 1000
        # A witness that has not stamped for REACH_FRESH past the window
        # may be down: a receipt its acks could still make count is not
        # waited for longer.
        patience = self.witnesses.window_ms * 1000 + int(REACH_FRESH * 1_000_000)
        again: list[tuple[str, int]] = []
        if reach >= self.witnesses.window_ms * 1000 - int(FIT_SPAN * 1_000_000):
            # This witness's stamps reach the others about too late for any
            # receipt to count (an overloaded network): listing events
            # again would only add to the load.  They wait until stamps are
            # quick again.
            return again
        while due and due[0][0] <= now_us:
            event_id = heappop(due)[1]
            entry = listings.get(event_id)
            if entry is None or event_id in listing:
                continue  # forgotten, or listed in this stamp anyway
            if (
                fair.fair_time(event_id) is not None
                or event_id not in ledger
                or fair.counted(event_id, own)
            ):
                del listings[event_id]
            elif now_us < entry[2] + patience and fair.may_yet_count(own, entry[1], entry[2]):
                heappush(due, (now_us + later, event_id))
            else:
                again.append((event_id, now_us + len(again)))  # no two tie
        self.relisted += len(again)
        return again

    def _load_stamps(self, journal: EventJournal, ledger: Ledger, replay: JournalReplay) -> None:
        """Read the journaled stamps back into a new ledger (before its events)."""
        stamps = []
        for read, (text, sig) in enumerate(journal.load_stamps(), 1):
            replay.read(read, stamps=True)
            try:
                stamps.append(parse_stamp(text, sig, self.network, self.pair, self.witnesses))
            except StampError as e:
                replay.skip("stamp", str(e))
        ledger.insert_stamps(stamps)
        fair = ledger.fair
        assert fair is not None
        self._held_since = [(seq, 0) for seq in fair.acks()]

    def _adapt(self, result: InsertResult, now: float) -> None:
        """
        Every :data:`ADAPT_WINDOW` seconds, double :attr:`apply_delay` if
        more than :data:`LOAD_RATE` new events a second came and rollbacks
        replayed more than twice as many; halve it (down to the configured
        delay) when they replayed no more than the new events, or the load
        fell below half of :data:`LOAD_RATE`.

        Under a heavy load, events from many nodes arrive out of their
        total order all the time, and each insert that holds a late one
        replays everything applied since: fewer, larger inserts replay far
        less in all.  A light load keeps the configured delay.
        """
        self._window_new += len(result.new)
        self._window_replayed += result.replayed
        elapsed = now - self._window_start
        if elapsed < ADAPT_WINDOW:
            return
        new, replayed = self._window_new, self._window_replayed
        base = self.config.apply_delay
        if new >= LOAD_RATE * elapsed and replayed > 2 * new:
            self.apply_delay = min(MAX_APPLY_DELAY, max(self.apply_delay * 2, base, 0.001))
        elif replayed <= new or new < LOAD_RATE * elapsed / 2:
            self.apply_delay = max(base, self.apply_delay / 2)
        self._window_start, self._window_new, self._window_replayed = now, 0, 0

    def _start_write(self) -> None:
        """
        Write what waits; if it holds own events, have it synced (unless a
        sync is in flight: its end starts the next group).
        """
        call, self._write_call = self._write_call, None
        if call is not None and call.active():
            call.cancel()
        journal = self._journal
        if self._syncing or journal is None or self._journal_fault:
            # A journal that cannot be written is retried by its own timer.
            return
        if not (self._signed or self._unjournaled or self._unjournaled_stamps):
            return
        own, self._signed = self._signed, []
        peers, self._unjournaled = self._unjournaled, []
        stamps, self._unjournaled_stamps = self._unjournaled_stamps, []
        mine = [pending.event for pending in own]
        # The group commit signs too: its events share one batch signature,
        # one check for every node that receives them.
        self.author.sign([pending.event for pending in own if not pending.presigned])
        self.journal_writes += 1
        written = peers + mine
        try:
            journal.write(written, durable=False, stamps=stamps)
        except JournalError as e:
            # Nothing of the batch was kept.  Peer events and stamps stay
            # applied, and wait to be written once the journal can be;
            # own orders were not acknowledged: they fail.
            self._unjournaled[:0] = peers
            self._unjournaled_stamps[:0] = stamps
            self._journal_failed(str(e))
            if own:
                self._fail_own(own, self._journal_fault)
            return
        for event in written:
            # Journaled: an event held for long keeps no second copy of its text.
            event.forget_text()
        if not own:
            return
        if self._syncer is None:
            # Made at the first sync, not at start: a node that fails to
            # start has no thread to stop.
            self._syncer = self._make_syncer(self.storage)
        self._syncing = True
        self._syncer.sync().addCallbacks(
            self._synced, self._sync_failed, callbackArgs=(own,), errbackArgs=(own,)
        )

    def _fail_own(self, own: list[_Pending], reason: str) -> None:
        """
        Fail C{own} and every own event signed after them (they would follow
        a gap); the next order is signed with the first failed seq.
        """
        failed, self._signed = own + self._signed, []
        node_signed = [pending for pending in failed if not pending.presigned]
        if node_signed:
            self._next_seq = node_signed[0].event.seq
        error = ServiceUnavailable(reason)
        for pending in failed:
            event = pending.event
            self._signed_ids.pop(event.id, None)
            self._presigned_slots.pop((event.author, event.seq), None)
            pending.done.errback(error)

    def _synced(self, _: None, own: list[_Pending]) -> None:
        """
        Own events are durable: apply them at once, without the buffered
        peer events.  Signed after everything held, they mostly go at the
        end of the log (peer events applied during the fsync may sort
        after them); the next tick brings the buffered peer events.
        """
        self._syncing = False
        if self._ledger is not None:
            self._apply([], own)
        self._sync_done()

    def _sync_failed(self, failure: Failure, own: list[_Pending]) -> None:
        """
        The disk refused an fsync: the group fails, and so does every own
        order signed since, and no order is taken until the journal can be
        written and synced again (see :meth:`_retry_journal`).  The events
        were written (they may still be there after a restart, like any
        order whose answer was lost), so their seqs are not reused.
        """
        self._syncing = False
        self._fsync_failed = True
        self._journal_failed(f"fsync: {failure.getErrorMessage()}")
        failed, self._signed = own + self._signed, []
        error = ServiceUnavailable(self._journal_fault)
        for pending in failed:
            event = pending.event
            self._signed_ids.pop(event.id, None)
            self._presigned_slots.pop((event.author, event.seq), None)
            pending.done.errback(error)
        self._sync_done()

    # -- a journal that cannot be written

    def _journal_failed(self, cause: str) -> None:
        """
        The journal cannot be written: refuse orders until it can, retry on
        a timer, and log the cause once (not once per order or retry).
        """
        self.journal_failures += 1
        if not self._journal_fault:
            self._fault_since = self.clock.seconds()
            self._retry_delay = JOURNAL_RETRY
            log.error(
                "The journal cannot be written ({cause}): new orders and cancels are "
                "refused (503) until it can, retrying every {retry:g}-{most:g} s; "
                "the book and peers' events are kept in memory",
                cause=cause, retry=JOURNAL_RETRY, most=JOURNAL_RETRY_MAX,
            )  # fmt: skip
        self._journal_fault = (
            f"the journal cannot be written ({cause}); orders are refused until it can"
        )
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if not self.running or (self._retry_call is not None and self._retry_call.active()):
            return
        self._retry_call = self.clock.callLater(self._retry_delay, self._retry_journal)
        self._retry_delay = min(JOURNAL_RETRY_MAX, self._retry_delay * 2)

    def _retry_journal(self) -> None:
        """
        Try the journal again: after a failed fsync, copy the write-ahead
        log into the database first (what was written may not have reached
        the disk); write what waits (or a probe, if nothing does); then
        fsync.  Once all that worked, orders are taken again.
        """
        self._retry_call = None
        journal = self._journal
        if journal is None or self._syncing:
            return
        try:
            self._write_waiting(journal)
        except JournalError as e:
            self.journal_failures += 1
            log.debug("The journal still cannot be written: {error}", error=str(e))
            self._schedule_retry()
            return
        if self._syncer is None:
            self._syncer = self._make_syncer(self.storage)
        self._syncing = True
        self._syncer.sync().addCallbacks(self._journal_recovered, self._retry_failed)

    def _write_waiting(self, journal: EventJournal) -> None:
        """
        Write the peer events and stamps that wait (or a probe, if none
        do), after a failed fsync once the write-ahead log is copied.

        :raises JournalError: if the database still refuses.
        """
        if self._fsync_failed:
            journal.flush_wal()
            self._fsync_failed = False
            if self._syncer is not None:
                self._syncer.wal_flushed()
        peers, stamps = self._unjournaled, self._unjournaled_stamps
        if not (peers or stamps):
            journal.probe()
            return
        journal.write(peers, durable=False, stamps=stamps)
        self._unjournaled, self._unjournaled_stamps = [], []
        for event in peers:
            event.forget_text()

    def _journal_recovered(self, _: None) -> None:
        self._syncing = False
        log.info(
            "The journal can be written again after {seconds:.1f} s: taking orders again",
            seconds=self.clock.seconds() - self._fault_since,
        )  # fmt: skip
        self._journal_fault = ""
        self._sync_done()
        self._start_write()

    def _retry_failed(self, failure: Failure) -> None:
        self._syncing = False
        self._fsync_failed = True
        self.journal_failures += 1
        log.debug("The journal still cannot be synced: {error}", error=failure.getErrorMessage())
        self._sync_done()
        self._schedule_retry()

    def _sync_done(self) -> None:
        waiters, self._sync_waiters = self._sync_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self.running and self._signed:
            self._start_write()

    def _report(self, result: InsertResult) -> None:
        for author, seq in result.equivocations:
            log.warn("Author {author} signed two events with seq {seq} (equivocation)",
                     author=author, seq=seq)  # fmt: skip
        if result.revised:
            log.warn(
                "A late event changed settled trades (revision {count}); "
                "{settled} events settled",
                count=self.ledger.revisions, settled=self.ledger.settled_position(),
            )  # fmt: skip

    def _settle(self) -> None:
        ledger = self._ledger
        if ledger is not None:
            before = ledger.settled_position()
            after = ledger.settle(self.clock.seconds(), self.config.settle_after)
            if self._observers and after > before:
                self._tell_settled(ledger, before, after)

    # -- observers (the API's live stream); nothing here runs while none watches

    def watch(self, observer: MarketObserver) -> Callable[[], None]:
        """
        Call C{observer} with a :class:`MarketChange` after each apply that
        held new events and each settlement step that settled something.

        :return: a function that stops the calls.
        """
        if not self._observers and self._ledger is not None:
            # Trades made before anyone watched are not news.
            self._announced.clear()
            for trade in self._ledger.trades(TRADE_SCAN):
                self._announced[trade.id] = None
        self._observers.append(observer)

        def unwatch() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unwatch

    def _tell(self, change: MarketChange) -> None:
        for observer in list(self._observers):
            try:
                observer(change)
            except Exception:
                log.failure("A market observer failed")

    def _tell_applied(self, result: InsertResult) -> None:
        """Tell observers of the trades and own orders an insert of C{result.new} changed."""
        ledger = self.ledger
        me = self.author.author
        announced = self._announced
        fresh = [
            trade
            for trade in ledger.trades(len(result.new) + TRADE_SCAN)
            if trade.id not in announced
        ]
        fresh.reverse()
        for trade in fresh:
            announced[trade.id] = None
        while len(announced) > ANNOUNCED_KEPT:
            announced.popitem(last=False)
        orders: dict[str, Event] = {}
        for event in result.new:
            if event.author != me:
                continue
            target = event if event.is_order else ledger.get(event.target)
            if target is not None and target.is_order:
                orders[target.id] = target
        for trade in fresh:
            for order_id in (trade.taker, trade.maker):
                order = ledger.get(order_id)
                if order is not None and order.author == me:
                    orders[order_id] = order
        self._tell(MarketChange(True, tuple(fresh), tuple(orders.values())))

    def _tell_settled(self, ledger: Ledger, before: int, after: int) -> None:
        """
        Tell observers of the trades and own orders settled when the
        settled part of the log grew from C{before} to C{after} events.
        """
        trades = [t for t in ledger.trades(SETTLED_SCAN) if before <= t.position < after]
        trades.reverse()
        me = self.author.author
        orders: list[Event] = []
        seq = ledger.next_seq(me) - 1
        while seq > 0 and len(orders) < SETTLED_SCAN:
            event = ledger.chain_event(me, seq)
            seq -= 1
            if event is None:
                continue
            position = ledger.position_of(event)
            if position is None:
                continue
            if position < before:
                break
            if event.is_order and position < after:
                orders.append(event)
        orders.reverse()
        if trades or orders:
            self._tell(MarketChange(False, tuple(trades), tuple(orders)))

    # -- what the API reads

    def applied_at(self, event_id: str) -> float | None:
        """
        When this node first applied event C{event_id} (clock seconds; the
        API states it in unix ms), for
        the :data:`ARRIVALS_KEPT` most recent events; ``None`` for others.
        """
        return self._arrivals.get(event_id)

    def own_orders(self, state: str, limit: int) -> list[Event]:
        """This node's orders, newest first: ``open``, ``closed`` or ``all``."""
        return self.orders_of(self.author.author, state, limit)

    def orders_of(self, author: str, state: str, limit: int) -> list[Event]:
        """C{author}'s orders held, newest first: ``open``, ``closed`` or ``all``."""
        ledger = self.ledger
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

    def status(self) -> dict[str, Any]:
        """The market's part of ``GET /status``."""
        ledger = self.ledger
        witnesses = self._witness_status(ledger)
        if ledger.fair is not None:
            settled_ms = witnesses["settled_through_ms"]
        else:
            # Author-clock order: Lamport times follow the authors' clocks (unix ms).
            settled_ms = ledger.settled_through or None
        return {
            "events": len(ledger),
            "authors": ledger.authors,
            "lamport": ledger.lamport,
            "state_hash": ledger.state_hash(),
            "settled_through": ledger.settled_through,
            "settled_through_ms": settled_ms,
            "ordering": ledger.ordering,
            "witnesses": witnesses,
            "market": {
                "applied": ledger.applied,
                "buffered": len(self._buffer),
                "open_orders": len(ledger.book),
                "trades": ledger.trade_count,
                "rollbacks": ledger.rollbacks,
                "replayed": ledger.replayed,
                "revisions": ledger.revisions,
                "flagged_authors": dict(ledger.flagged),
                "settle_after_ms": round(self.config.settle_after * 1000),
                "journal_failures": self.journal_failures,
                "journal_error": self._journal_fault or None,
                "journal_writes": self.journal_writes,
                "apply_delay_ms": round(self.apply_delay * 1000, 1),
                "loaded_events": self.loaded_events,
                "resumed_at": self.resumed_at,
                "load_ms": round(self.load_seconds * 1000),
            },
        }

    def _held_by(self, fair: StampChains) -> dict[str, Any]:
        """What holds the settled point where it is, for ``/status`` (ids and unix ms)."""
        why = dict(fair.horizon_why(self.witnesses.quorum)[1])
        if "witness" in why:
            why["witness"] = self.witnesses.ids[why["witness"]]
        if "t" in why:
            why["t"] = why["t"] // 1000
        return why

    def _witness_status(self, ledger: Ledger) -> dict[str, Any]:
        """The fair order's part of ``GET /status`` (``{}`` without witnesses)."""
        fair = ledger.fair
        if fair is None:
            return {}
        chains = fair.status()
        for chain, lag in zip(chains, self.witness_lag, strict=True):
            chain["lag_ms"] = lag
            if isinstance(t := chain["t"], int):
                chain["t"] = t // 1000  # stamps state microseconds; /status, ms
        settled, final = ledger.settled_horizon, ledger.final_horizon
        return {
            "n": self.witnesses.n,
            "f": self.witnesses.f,
            "digest": self.witnesses.digest,
            "me": self._signer.index if self._signer is not None else None,
            "stamps": len(fair),
            "stamps_signed": self.stamps_signed,
            "relisted": self.relisted,
            "settled_through_ms": settled // 1000 if settled != NEVER else None,
            "final_through_ms": final // 1000 if final != NEVER else None,
            "settled_held_by": self._held_by(fair),
            "settled_events": ledger.settled_position(),
            "final_events": ledger.final_position(),
            "waiting_events": len(ledger) - ledger.applied,
            "flagged": dict(fair.flagged),
            "witness_revisions": ledger.witness_revisions,
            "chains": chains,
        }
