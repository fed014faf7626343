"""The ledger: every known event in one total order, and the book it makes.

Data path: :mod:`bitfitech.market.events` -> :class:`Ledger` ->
:class:`~bitfitech.market.book.OrderBook`.  The book is a pure function of
the *set* of events a node holds, so two nodes holding the same events hold
byte-identical books and trade histories, whatever order the events arrived
in.  ``docs/consistency.rst`` is the specification; in short:

* **Chains.**  Each author's events form a chain by ``seq``.  When two
  different events claim one ``(author, seq)`` slot (equivocation), the one
  with the smaller id wins everywhere and the author is flagged.  An
  author's *applied prefix* is the longest run of winners from seq 1 whose
  Lamport times strictly increase; later events wait (a gap) or are never
  applied (a Lamport time that does not increase).
* **Total order.**  The applied prefixes of all authors, sorted by
  ``(lamport, author, seq)``, make the *log*; the book is the engine
  applied to the log from empty.  Cancels take effect only on an open order
  of the same author.
* **Rollback.**  An insert that changes the log anywhere but at its end
  rolls the engine back to the newest snapshot at or before the first
  changed position, and replays from there.  Snapshots are taken every
  ``snapshot_interval`` positions and thinned, so replays stay short and
  memory stays bounded.
* **Trades** are derived here, never taken from the wire; a trade's id is
  the hash of its taker and maker event ids.
* **Settlement.**  ``settled_through`` is the Lamport time the node's clock
  had reached ``horizon`` seconds ago; trades and orders at or below it are
  settled.  A late event that changes settled trades is still applied (the
  ledger never trades convergence away) and counted in :attr:`revisions`.

Pure: no Twisted, no I/O; time is passed in.
"""

from __future__ import annotations

import hashlib
import marshal
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from heapq import heappop, heappush, merge
from itertools import islice
from operator import attrgetter
from typing import Any, Final, NamedTuple

from ..witnesses import WitnessSet
from .book import (
    CANCEL_REJECTED,
    CANCELLED,
    FILLED,
    REJECTED,
    TRADE,
    BookParams,
    BookSnapshot,
    OpenOrder,
    OrderBook,
)
from .events import Event, Key
from .fairtime import NEVER, StampChains, StampInsert
from .stamps import Stamp

APPLIED: Final = "applied"
"""The outcome of a cancel that cancelled its order."""

NOT_OWNER: Final = "not_owner"
"""Why a cancel of another author's order did nothing."""

PROGRESS_EVERY = 4096
"""Events applied between two calls of a :meth:`Ledger.load` progress callback."""

_TERMINAL = frozenset({FILLED, CANCELLED, REJECTED})
_CHECKPOINT_TAG = "bitfi-ledger-checkpoint-2"
_key_of = attrgetter("key")

TENTATIVE: Final = "tentative"
SETTLED: Final = "settled"
FINAL: Final = "final"

POST_ONLY_CLASS, CANCEL_CLASS, OTHER_CLASS = 0, 1, 2
"""Classes within a slot: a maker's post-only order or cancel goes before takers."""


class FairKey(NamedTuple):
    """
    An event's place in the fair order.

    :ivar slot: fair time // slot width.
    :ivar cls: 0 post-only orders, 1 cancels, 2 other orders.
    :ivar fair: the fair time, unix microseconds.
    :ivar anchor: the event's own id; for an event moved after its
        author's previous one, that event's anchor.
    :ivar sub: 0; one more than the previous event's for a moved event.
    """

    slot: int
    cls: int
    fair: int
    anchor: str
    sub: int


def event_class(event: Event) -> int:
    """The class of C{event} within its slot (see :class:`FairKey`)."""
    if not event.is_order:
        return CANCEL_CLASS
    return POST_ONLY_CLASS if event.order_type == "post_only" else OTHER_CLASS


_EMPTY_HASH = b"\0" * 32

DENSE_SPAN: Final = 4096
"""
Log positions behind the newest snapshot within which every snapshot is
kept.  Under load, events from a slower link land hundreds to thousands of
positions back; with snapshots kept only over the last few hundred, each
such one replayed a whole batch or more (up to 8 replays per event in
``bench_ingest``).  Snapshots are at least ``len(book) / 32`` positions
apart, so this many positions hold about 128 of a small book and a few
of a large one: the memory stays bounded whatever the book.
"""

_NO_FAIR_TIME = 2**63
"""Later than every fair time (an event without one; one not queued for placement)."""


class TradeRecord(NamedTuple):
    """
    One trade, as every node derives it.

    :ivar id: ``sha256("trade <taker id> <maker id>")``, hex.
    :ivar seq: the book's trade number, from 1.
    :ivar price: in ticks (the maker's price).
    :ivar amount: in lots.
    :ivar side: the taker's side.
    :ivar taker: the taker order's event id.
    :ivar maker: the maker order's event id.
    :ivar lamport: the taker event's Lamport time.
    :ivar ts: the taker event's timestamp, unix ms.
    :ivar position: the taker event's position in the log (settlement
        compares it).
    """

    id: str
    seq: int
    price: int
    amount: int
    side: str
    taker: str
    maker: str
    lamport: int
    ts: int
    position: int


class Outcome(NamedTuple):
    """
    How an order ended (filled, cancelled, rejected), or what a cancel did
    (``applied`` or ``cancel_rejected``).

    :ivar position: the log position of the event that decided it.
    """

    state: str
    reason: str
    remaining: int
    position: int


@dataclass
class InsertResult:
    """
    What one :meth:`Ledger.insert` did.

    :ivar new: events not held before, in the order given.
    :ivar duplicates: events already held.
    :ivar equivocations: ``(author, seq)`` slots found claimed twice.
    :ivar appended: events applied at the end of the log without rollback.
    :ivar replayed: events re-applied after a rollback (0: no rollback).
    :ivar revised: whether settled trades changed.
    :ivar placed: fair order: events that entered the log or moved in it
        (an insert of stamps places events held before).
    """

    new: list[Event] = field(default_factory=list)
    duplicates: int = 0
    equivocations: list[tuple[str, int]] = field(default_factory=list)
    appended: int = 0
    replayed: int = 0
    revised: bool = False
    placed: list[Event] = field(default_factory=list)


class _Chain:
    """One author's events: winners by seq, and the prefix applied in the log."""

    __slots__ = ("winners", "in_log", "contiguous", "max_seq")

    def __init__(self) -> None:
        self.winners: dict[int, Event] = {}
        self.in_log: list[Event] = []
        self.contiguous = 0
        self.max_seq = 0


class _Snapshot(NamedTuple):
    position: int
    book: BookSnapshot
    trade_count: int
    trade_hash: bytes
    log_hash: bytes
    closed_count: int


class Ledger:
    """
    The ordered set of a node's events and the book they make.

    :ivar book: the engine, holding the state after the whole log (read it,
        never call it).
    :ivar lamport: the highest Lamport time of any event held.
    :ivar flagged: authors seen misbehaving, with why
        (``equivocation``, ``lamport``).
    :ivar revisions: how many inserts changed settled trades.
    :ivar rollbacks: how many inserts rolled the engine back.
    :ivar replayed: events re-applied by rollbacks, in total.
    :ivar settled_through: the Lamport time through which state is settled.
    """

    def __init__(
        self,
        params: BookParams | None = None,
        *,
        snapshot_interval: int = 32,
        max_snapshots: int = 32,
        dense_span: int = DENSE_SPAN,
        witnesses: WitnessSet | None = None,
    ) -> None:
        """
        :param params: the pair's book parameters.
        :param witnesses: the network's witnesses: events are then in fair
            order (``docs/consistency.rst``, "Fair order"); without, in
            author-clock order.
        :param snapshot_interval: the fewest log positions between snapshots
            (more apart as the book grows: see :meth:`_apply_from`).
        :param max_snapshots: snapshots kept (older ones are thinned out),
            besides those within C{dense_span} of the newest.
        :param dense_span: log positions behind the newest snapshot within
            which every snapshot is kept (:data:`DENSE_SPAN`).
        """
        if snapshot_interval < 1 or max_snapshots < 4 or dense_span < 0:
            raise ValueError(
                "snapshot_interval must be >= 1, max_snapshots >= 4 and dense_span >= 0"
            )
        self.book = OrderBook(params)
        self.params = self.book.params
        self.snapshot_interval = snapshot_interval
        self.max_snapshots = max_snapshots
        self.dense_span = dense_span
        self.lamport = 0
        self.flagged: dict[str, str] = {}
        self.revisions = 0
        self.rollbacks = 0
        self.replayed = 0
        self.settled_through = 0
        self._by_id: dict[str, Event] = {}
        self._chains: dict[str, _Chain] = {}
        self._conflicts: dict[tuple[str, int], list[Event]] = {}
        self._log: list[Event] = []
        self._keys: list[Key] = []
        self._trades: list[TradeRecord] = []
        self._trades_of: dict[str, list[int]] = {}
        self._trade_hash = _EMPTY_HASH
        self._log_hash = _EMPTY_HASH
        self._closed: dict[str, Outcome] = {}
        self._closed_log: list[str] = []
        self._snapshots: list[_Snapshot] = [self._snapshot(0)]
        self._clock: deque[tuple[float, int]] = deque()
        self._hash_cache: tuple[int, str] | None = None
        self._version = 0
        self._checkpoint: bytes | None = None
        self._progress: Callable[[int, int], None] | None = None
        self.checkpoint_position = 0
        self.witnesses = witnesses if witnesses is not None else WitnessSet()
        self.fair: StampChains | None = None
        self._fair_keys: dict[str, FairKey] = {}
        self._slot = self.witnesses.slot_ms * 1000  # fair times are in microseconds
        self.settled_horizon = NEVER
        self.final_horizon = NEVER
        self.witness_revisions = 0
        # Fair order: slot winners with a fair time, waiting to be placed
        # (see _placeable), as (fair time, event id) in a heap, and the
        # fair time each was queued at (a fair time that falls later queues
        # the event again; the older entry is then passed over).
        self._unplaced: list[tuple[int, str]] = []
        self._waiting: dict[str, int] = {}
        self._horizon_at_start = NEVER
        # Fair order: whether stamps or events came that may move the horizons.
        self._horizons_stale = True
        if self.witnesses:
            self.fair = StampChains(self.witnesses, self._by_id.__contains__)
            self._key = self._fair_key  # type: ignore[method-assign]

    # -- order

    def _key(self, event: Event) -> Any:
        """C{event}'s place in the total order (author-clock order; see :meth:`_fair_key`)."""
        return event.key

    def _fair_key(self, event: Event) -> Any:
        return self._fair_keys[event.id]

    def _rank(self, event: Event) -> tuple[int, str]:
        """
        Which of two events claiming one slot wins: the smaller rank.

        Author-clock order: the smaller id.  Fair order: the smaller fair
        time, then the smaller id; an event without a fair time yet ranks
        after every one with.  So a rival released late never displaces a
        settled event: its fair time comes after the settled horizon.
        """
        fair = self.fair
        if fair is None:
            return (0, event.id)
        at = fair.fair_time(event.id)
        return (_NO_FAIR_TIME if at is None else at, event.id)

    def _rerank(
        self, event_ids: Iterable[str], changed: dict[str, int], until: dict[str, int]
    ) -> None:
        """Fair order: slots claimed twice whose fair times changed may have a new winner."""
        conflicts, by_id = self._conflicts, self._by_id
        for event_id in event_ids:
            event = by_id.get(event_id)
            if event is None:
                continue
            rivals = conflicts.get((event.author, event.seq))
            if rivals is None:
                continue
            winner = min(rivals, key=self._rank)
            chain = self._chains[event.author]
            if chain.winners[event.seq] is not winner:
                chain.winners[event.seq] = winner
                _mark(changed, until, event.author, event.seq)

    @property
    def ordering(self) -> str:
        """``"fair"`` (witness-stamped fair time) or ``"author"`` (author clocks)."""
        return self.witnesses.ordering

    # -- queries

    def __len__(self) -> int:
        """How many events are held (applied or not)."""
        return len(self._by_id)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._by_id

    def get(self, event_id: str) -> Event | None:
        """A held event by id."""
        return self._by_id.get(event_id)

    @property
    def applied(self) -> int:
        """How many events the log holds (the rest wait for a gap or are invalid)."""
        return len(self._log)

    @property
    def authors(self) -> int:
        """How many authors have events here."""
        return len(self._chains)

    @property
    def log_hash(self) -> str:
        """A running hash of the log's event ids in order: equal logs, equal hashes."""
        return self._log_hash.hex()

    def log(self) -> list[Event]:
        """The applied events in total order (a copy)."""
        return list(self._log)

    def vector(self) -> dict[str, int]:
        """
        Author -> highest seq held with no gap below it (the anti-entropy
        summary); authors with nothing contiguous (only events beyond a gap)
        are left out, as a peer could not tell them from unknown ones.
        """
        return {
            author: chain.contiguous for author, chain in self._chains.items() if chain.contiguous
        }

    def gaps(self) -> int:
        """How many authors have events held beyond a missing seq."""
        return sum(1 for chain in self._chains.values() if chain.max_seq > chain.contiguous)

    def gap_marks(self) -> set[tuple[str, int]]:
        """``(author, contiguous seq)`` of every author with events held beyond a gap."""
        return {
            (author, chain.contiguous)
            for author, chain in self._chains.items()
            if chain.max_seq > chain.contiguous
        }

    def chain_event(self, author: str, seq: int) -> Event | None:
        """The event holding C{author}'s slot C{seq} (the winner, if claimed twice)."""
        chain = self._chains.get(author)
        return None if chain is None else chain.winners.get(seq)

    def next_seq(self, author: str) -> int:
        """The seq the next event of C{author} must carry."""
        chain = self._chains.get(author)
        return 1 if chain is None else chain.max_seq + 1

    def missing_for(self, vector: dict[str, int], limit: int) -> tuple[list[Event], bool]:
        """
        Events a peer with version C{vector} lacks, at most C{limit}, in key order.

        For each author, the events above the peer's seq up to this
        ledger's own contiguous seq: what fills the peer's gaps.  Events
        held beyond a gap of this ledger's are not offered (the peer could
        not apply them either, and two peers missing the same seq would
        otherwise offer each other the same events forever).

        :return: the events and whether more remain.
        """
        streams = []
        for author, chain in self._chains.items():
            have = vector.get(author, 0)
            if have < chain.contiguous:
                streams.append(_chain_from(chain, have + 1, chain.contiguous))
        taken = list(islice(merge(*streams, key=_key_of), limit + 1))
        return taken[:limit], len(taken) > limit

    def chain_digests(self) -> dict[str, str]:
        """
        Author -> SHA-256 over the ids of its winners from seq 1 to its
        contiguous seq: two ledgers with equal vectors differ exactly in the
        chains whose digests differ (one saw the other side of an
        equivocation).  Computed on demand, in time proportional to the events.
        """
        out = {}
        for author, chain in self._chains.items():
            digest = hashlib.sha256()
            winners = chain.winners
            for seq in range(1, chain.contiguous + 1):
                digest.update(winners[seq].id.encode("ascii"))
            out[author] = digest.hexdigest()
        return out

    def chain_of(self, author: str) -> list[Event]:
        """C{author}'s winners up to its contiguous seq, then its equivocation evidence."""
        chain = self._chains.get(author)
        if chain is None:
            return []
        events = [chain.winners[seq] for seq in range(1, chain.contiguous + 1)]
        for (rival_author, _), rivals in self._conflicts.items():
            if rival_author == author:
                events.extend(rival for rival in rivals if rival not in events)
        return events

    def conflicts(self) -> list[Event]:
        """Every event of every slot claimed twice: the evidence of equivocations."""
        return [event for rivals in self._conflicts.values() for event in rivals]

    def outcome(self, event_id: str) -> Outcome | None:
        """How an order ended or what a cancel did; ``None`` while open or not applied."""
        return self._closed.get(event_id)

    def is_applied(self, event: Event) -> bool:
        """Whether C{event} (this ledger's copy or another with its id) is in the log."""
        chain = self._chains.get(event.author)
        return (
            chain is not None
            and event.seq <= len(chain.in_log)
            and chain.in_log[event.seq - 1].id == event.id
        )

    def open_order(self, order_id: str) -> OpenOrder | None:
        """An open order by id."""
        return self.book.order(order_id)

    @property
    def trade_count(self) -> int:
        """How many trades the log made."""
        return len(self._trades)

    def trades(self, limit: int) -> list[TradeRecord]:
        """The newest C{limit} trades, newest first."""
        return self._trades[: -limit - 1 if limit < len(self._trades) else None : -1]

    def trades_after(self, count: int) -> list[TradeRecord]:
        """The trades after the first C{count}, oldest first."""
        return self._trades[count:]

    def trades_since(self, ts: int) -> list[TradeRecord]:
        """
        The newest trades back to the first older than C{ts} (unix ms),
        oldest first: the trades of a time window, as the log orders them.
        """
        trades = self._trades
        start = len(trades)
        while start and trades[start - 1].ts >= ts:
            start -= 1
        return trades[start:]

    def trades_of(self, order_id: str) -> list[TradeRecord]:
        """The trades an order took part in, oldest first."""
        return [self._trades[index] for index in self._trades_of.get(order_id, ())]

    def state_hash(self) -> str:
        """
        SHA-256 (hex) over the book's state hash and the trade history.

        Cached until the next change; the book's part costs time in
        proportion to its open orders.
        """
        cached = self._hash_cache
        if cached is not None and cached[0] == self._version:
            return cached[1]
        digest = hashlib.sha256(
            b"bitfi-state-1" + bytes.fromhex(self.book.state_hash()) + self._trade_hash
        ).hexdigest()
        self._hash_cache = (self._version, digest)
        return digest

    # -- settlement

    def observe(self, now: float) -> None:
        """Record that the clock is at :attr:`lamport` at time C{now}."""
        clock = self._clock
        if not clock or clock[-1][1] < self.lamport:
            clock.append((now, self.lamport))

    def settle(self, now: float, horizon: float) -> int:
        """
        Author-clock order: advance :attr:`settled_through` to the Lamport
        time reached C{horizon} seconds before C{now}.  Fair order: advance
        :attr:`settled_horizon` and :attr:`final_horizon` to what the
        witnesses' stamps held fix (C{now} and C{horizon} play no part).

        :return: how many events at the start of the log are settled.
        """
        fair = self.fair
        if fair is not None:
            self._horizon_at_start = self.settled_horizon
            changed: dict[str, int] = {}
            self._advance(changed)
            if changed:
                self._refresh(changed, InsertResult())
            return self.settled_position()
        clock = self._clock
        while clock and clock[0][0] <= now - horizon:
            self.settled_through = max(self.settled_through, clock.popleft()[1])
        return self.settled_position()

    def _revision_position(self) -> int:
        """
        How many events at the start of the log were settled when the
        current insert began: trades there must not change.  (In fair
        order the horizon may advance during an insert, and the events it
        then places are new to the settled part, not revisions of it.)
        """
        if self.fair is None:
            return self.settled_position()
        horizon = self._horizon_at_start
        return 0 if horizon == NEVER else bisect_left(self._keys, self._bound(horizon))

    def _bound(self, horizon: int) -> FairKey:
        """The smallest fair key an event with a fair time after C{horizon} can have."""
        after = horizon + 1
        return FairKey(after // self._slot, POST_ONLY_CLASS, after, "", 0)

    def final_position(self) -> int:
        """How many events at the start of the log are final (0 without witnesses)."""
        if self.fair is None or self.final_horizon == NEVER:
            return 0
        return bisect_left(self._keys, self._bound(self.final_horizon))

    def status_at(self, position: int, settled: int | None = None) -> str:
        """
        ``"final"``, ``"settled"`` or ``"tentative"``: the state of the
        event at log C{position} and of the trades it made.

        :param settled: :meth:`settled_position`, if the caller has it.
        """
        if settled is None:
            settled = self.settled_position()
        if position >= settled:
            return TENTATIVE
        return FINAL if position < self.final_position() else SETTLED

    def position_of(self, event: Event) -> int | None:
        """C{event}'s position in the log, or ``None`` if it is not applied."""
        if not self.is_applied(event):
            return None
        return bisect_left(self._keys, self._key(event))

    # -- checkpoints

    def checkpoint(self, limit: int | None = None) -> tuple[int, bytes]:
        """
        The state the log made (book, trades, outcomes, hashes), as bytes
        for :meth:`load`: a restart that finds the same log prefix resumes
        from it instead of replaying every event.

        :param limit: take the state at the newest snapshot at or before this
            log position (say, the settled part of the log, which late
            events are unlikely to change); ``None``: at the end of the log.
        :return: the log position the checkpoint is at (0: nothing worth
            keeping) and its bytes.
        """
        if limit is None:
            snap = self._snapshot(len(self._log))
        else:
            snap = self._snapshots[0]
            for candidate in self._snapshots:
                if candidate.position <= limit:
                    snap = candidate
        if not snap.position:
            return 0, b""
        book = snap.book
        closed = self._closed
        outcomes = [
            (order_id, *closed[order_id]) for order_id in self._closed_log[: snap.closed_count]
        ]
        return snap.position, marshal.dumps(
            (
                _CHECKPOINT_TAG,
                self.params.given,
                snap.position,
                snap.log_hash,
                snap.trade_hash,
                book.trade_seq,
                book.orders,
                book._levels,
                [tuple(trade) for trade in self._trades[: snap.trade_count]],
                outcomes,
            )  # fmt: skip
        )

    def unordered(self) -> list[str]:
        """
        Fair order: the ids of the events held that have no fair time yet
        (too few witnesses' receipts of them count), in the order they came.
        """
        fair = self.fair
        if fair is None:
            return []
        return [event_id for event_id in self._by_id if fair.fair_time(event_id) is None]

    def settled_position(self) -> int:
        """
        How many events at the start of the log are settled: with Lamport
        time at most :attr:`settled_through` (author-clock order), or a key
        below every key a fair time after :attr:`settled_horizon` can give.
        """
        if self.fair is None:
            return bisect_left(self._keys, (self.settled_through + 1,))
        if self.settled_horizon == NEVER:
            return 0
        return bisect_left(self._keys, self._bound(self.settled_horizon))

    def load(
        self,
        events: Iterable[Event],
        now: float,
        checkpoint: bytes | None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """
        Fill an empty ledger with C{events} (a journal read back), resuming
        from C{checkpoint} if it was taken on the same log prefix.

        A checkpoint that does not fit (unreadable, other book parameters,
        or a log that differs before its position: an event came late or
        was lost) is ignored, and every event is replayed: the result is
        the same either way, only slower.

        :param progress: called with the events applied so far and the
            events to apply, every :data:`PROGRESS_EVERY` events applied.
        :return: the log position resumed from (0: full replay).
        """
        if self._by_id:
            raise ValueError("load fills an empty ledger")
        self._checkpoint, self._progress = checkpoint, progress
        try:
            self.insert(events, now)
        finally:
            self._checkpoint, self._progress = None, None
        return self.checkpoint_position

    def _resume(self, checkpoint: bytes) -> int:
        """Restore the state of C{checkpoint} if it fits the log; its position, or 0."""
        try:
            (tag, params, position, log_hash, trade_hash, trade_seq, orders, levels, trades,
             closed) = marshal.loads(checkpoint)  # fmt: skip
        except (EOFError, ValueError, TypeError):
            return 0
        if (
            tag != _CHECKPOINT_TAG
            or tuple(params) != self.params.given
            or not 0 < position <= len(self._log)
        ):  # fmt: skip
            return 0
        sha256 = hashlib.sha256
        running = _EMPTY_HASH
        for event in self._log[:position]:
            running = sha256(running + bytes.fromhex(event.id)).digest()
        if running != log_hash:
            return 0
        self.book.restore(BookSnapshot(self.params, trade_seq, orders, levels))
        self._trades = [TradeRecord(*trade) for trade in trades]
        trades_of = self._trades_of
        for index, trade in enumerate(self._trades):
            trades_of.setdefault(trade.taker, []).append(index)
            trades_of.setdefault(trade.maker, []).append(index)
        self._closed = {entry[0]: Outcome(*entry[1:]) for entry in closed}
        self._closed_log = [entry[0] for entry in closed]
        self._log_hash, self._trade_hash = log_hash, trade_hash
        self._add_snapshot(self._snapshot(position))
        return int(position)

    # -- inserting

    def insert(self, events: Iterable[Event], now: float = 0.0) -> InsertResult:
        """
        Add events (checked and verified by the caller) and bring the book
        up to date: one rollback at most, however many events.
        """
        result = InsertResult()
        changed: dict[str, int] = {}
        by_id, chains = self._by_id, self._chains
        self._horizon_at_start = self.settled_horizon
        for event in events:
            if event.id in by_id:
                result.duplicates += 1
                continue
            by_id[event.id] = event
            result.new.append(event)
            if event.lamport > self.lamport:
                self.lamport = event.lamport
            author, seq = event.author, event.seq
            chain = chains.get(author)
            if chain is None:
                chain = chains[author] = _Chain()
            current = chain.winners.get(seq)
            if current is None:
                chain.winners[seq] = event
                if seq > chain.max_seq:
                    chain.max_seq = seq
                while chain.contiguous + 1 in chain.winners:
                    chain.contiguous += 1
            else:
                slot = (author, seq)
                self._conflicts.setdefault(slot, [current]).append(event)
                self.flagged[author] = "equivocation"
                result.equivocations.append(slot)
                if self._rank(event) > self._rank(current):
                    continue
                chain.winners[seq] = event
            _mark(changed, None, author, seq)
        fair = self.fair
        if fair is not None:
            if fair.arrived([event.id for event in result.new]):
                self._horizons_stale = True
                self._advance(changed)
            if changed:
                self._refresh(changed, result)
        elif changed:
            removed, added = self._recompute_prefixes(changed)
            if removed or added:
                self._update_log(removed, added, result)
        self.observe(now)
        return result

    def insert_stamps(self, stamps: Iterable[Stamp]) -> tuple[StampInsert, InsertResult]:
        """
        Add witness stamps (checked and verified by the caller): events whose
        fair time they change move in the log, and the book follows.

        :raises ValueError: on a ledger without witnesses.
        """
        fair = self.fair
        if fair is None:
            raise ValueError("this network has no witnesses")
        self._horizon_at_start = self.settled_horizon
        stamped = fair.insert(stamps)
        self._horizons_stale = True
        result = InsertResult()
        changed: dict[str, int] = {}
        until: dict[str, int] = {}
        if self._conflicts:
            self._rerank(stamped.changed, changed, until)
        by_id = self._by_id
        for event_id in stamped.changed:
            event = by_id.get(event_id)
            if event is not None and self._chains[event.author].winners.get(event.seq) is event:
                _mark(changed, until, event.author, event.seq)
        self._advance(changed, until)
        if changed:
            self._refresh(changed, result, None if stamped.flagged else until)
        if stamped.flagged and result.revised:
            self.witness_revisions += 1
        return stamped, result

    def _advance(self, changed: dict[str, int], until: dict[str, int] | None = None) -> None:
        """
        Fair order: bring the horizons up to date, and add to C{changed}
        (and C{until}, for :meth:`_refresh`) the authors of events that
        wait to be placed and now may be.

        An event is placed in the log once every witness not flagged has a
        counted receipt of it, or once the settled horizon passes its fair
        time: until then a receipt still to count could lower its fair
        time, and each move of an applied event is a rollback.
        """
        fair = self.fair
        assert fair is not None
        if not self._horizons_stale:
            return
        self._horizons_stale = False
        settled = fair.horizon(self.witnesses.quorum)
        if settled > self.settled_horizon:
            self.settled_horizon = settled
            fair.advance(settled)
        final = fair.horizon(max(fair.live, self.witnesses.quorum))
        if final > self.final_horizon:
            self.final_horizon = final
        unplaced, by_id = self._unplaced, self._by_id
        waiting = self._waiting
        while unplaced and unplaced[0][0] <= self.settled_horizon:
            at, event_id = heappop(unplaced)
            if waiting.get(event_id) != at:
                continue  # queued again since, at an earlier fair time
            del waiting[event_id]
            event = by_id.get(event_id)
            if event is not None and not self.is_applied(event):
                # Its walk must reach it: taken off the queue, it is placed
                # now or queued again, never left behind.
                _mark(changed, until, event.author, event.seq)

    def _refresh(
        self, changed: dict[str, int], result: InsertResult, until: dict[str, int] | None = None
    ) -> None:
        """
        Fair order: recompute the C{changed} authors' prefixes and keys
        (from the seq given), and update the log.

        :param until: per author, the highest seq whose fair time may have
            changed: past it, the walk stops at the first event that keeps
            its place and key (the rest of the prefix cannot change).
        """
        fair = self.fair
        assert fair is not None
        fair_keys = self._fair_keys
        slot = self._slot
        unplaced, waiting = self._unplaced, self._waiting
        removed: list[Event] = []
        added: list[Event] = []
        new_keys: dict[str, FairKey] = {}
        for author, low in changed.items():
            chain = self._chains[author]
            prefix = chain.in_log
            if low > len(prefix) + 1:
                continue  # behind a gap: nothing changes yet
            last = until.get(author, low) if until is not None else None
            previous = fair_keys[prefix[low - 2].id] if low > 1 else None
            winners = chain.winners
            tail: list[Event] = []
            keys: list[FairKey] = []
            seq = low
            end = len(prefix) + 1
            while (event := winners.get(seq)) is not None:
                at = fair.fair_time(event.id)
                if at is None:
                    break
                if not (fair.complete(event.id) or at <= self.settled_horizon):
                    if waiting.get(event.id, _NO_FAIR_TIME) > at:
                        waiting[event.id] = at
                        heappush(unplaced, (at, event.id))
                    break
                key = FairKey(at // slot, event_class(event), at, event.id, 0)
                if previous is not None and key <= previous:
                    key = previous._replace(sub=previous.sub + 1)
                if (
                    last is not None
                    and seq > last
                    and seq < end
                    and prefix[seq - 1] is event
                    and fair_keys[event.id] == key
                ):
                    end = seq  # this one and the rest of the prefix stay
                    break
                tail.append(event)
                keys.append(key)
                previous = key
                seq += 1
            old = prefix[low - 1 : end - 1]
            same = 0
            while (
                same < len(old)
                and same < len(tail)
                and old[same] is tail[same]
                and fair_keys[old[same].id] == keys[same]
            ):
                same += 1
            removed.extend(old[same:])
            added.extend(tail[same:])
            for event, key in zip(tail[same:], keys[same:], strict=True):
                new_keys[event.id] = key
                waiting.pop(event.id, None)
            prefix[low - 1 : end - 1] = tail
        if removed or added:
            result.placed = added
            self._update_log(removed, added, result, new_keys)

    def _recompute_prefixes(self, changed: dict[str, int]) -> tuple[list[Event], list[Event]]:
        """New applied prefixes of the C{changed} authors: what leaves and joins the log."""
        removed: list[Event] = []
        added: list[Event] = []
        for author, low in changed.items():
            chain = self._chains[author]
            if low > len(chain.in_log) + 1:
                continue  # behind a gap: nothing changes yet
            prefix = chain.in_log
            previous = prefix[low - 2].lamport if low > 1 else 0
            winners = chain.winners
            tail: list[Event] = []
            seq = low
            while (event := winners.get(seq)) is not None:
                if event.lamport <= previous:
                    self.flagged.setdefault(author, "lamport")
                    break
                tail.append(event)
                previous = event.lamport
                seq += 1
            old = prefix[low - 1 :]
            same = 0
            while same < len(old) and same < len(tail) and old[same] is tail[same]:
                same += 1
            removed.extend(old[same:])
            added.extend(tail[same:])
            prefix[low - 1 :] = tail
        return removed, added

    def _update_log(
        self,
        removed: list[Event],
        added: list[Event],
        result: InsertResult,
        new_keys: dict[str, FairKey] | None = None,
    ) -> None:
        """
        Take C{removed} out of the log and put C{added} in, then bring the book up to date.

        :param new_keys: fair order: the keys C{added} go in with (an event
            whose key changes is in both lists).
        """
        key = self._key
        removed_low = min(map(key, removed)) if removed else None
        if new_keys is not None:
            fair_keys = self._fair_keys
            for event in removed:
                del fair_keys[event.id]
            fair_keys.update(new_keys)
        added.sort(key=key)
        keys = self._keys
        settled = self._revision_position()
        if removed_low is None and (not keys or key(added[0]) > keys[-1]):
            start = len(self._log)
            first_trade = len(self._trades)
            self._log.extend(added)
            keys.extend(map(key, added))
            if start == 0 and self._checkpoint is not None:
                start = self.checkpoint_position = self._resume(self._checkpoint)
            self._apply_from(start)
            result.appended = len(added)
            # Even without a rollback, a late event may add settled trades
            # (when the log ended below the settled point).
            trades = self._trades
            if first_trade < len(trades) and trades[first_trade].position < (
                self._revision_position()
            ):
                result.revised = True
                self.revisions += 1
            return
        lows = [key(added[0])] if added else []
        if removed_low is not None:
            lows.append(removed_low)
        position = bisect_left(keys, min(lows))
        gone = {event.id for event in removed}
        tail = [event for event in self._log[position:] if event.id not in gone]
        tail.extend(added)
        tail.sort(key=key)
        self._log[position:] = tail
        keys[position:] = map(key, tail)
        result.replayed, result.revised = self._rollback(position, settled)

    def _rollback(self, position: int, settled: int) -> tuple[int, bool]:
        """
        Restore the newest snapshot at or before C{position} and replay the log from it.

        :param settled: how many events at the start of the log were
            settled before the change (trades of theirs must not change).
        """
        snapshots = self._snapshots
        while snapshots[-1].position > position:
            snapshots.pop()
        snap = snapshots[-1]
        before = _settled_part(self._trades[snap.trade_count :], settled)
        self.book.restore(snap.book)
        for trade in self._trades[snap.trade_count :]:
            self._trades_of[trade.taker].pop()
            self._trades_of[trade.maker].pop()
        del self._trades[snap.trade_count :]
        self._trade_hash = snap.trade_hash
        self._log_hash = snap.log_hash
        closed = self._closed
        for event_id in self._closed_log[snap.closed_count :]:
            del closed[event_id]
        del self._closed_log[snap.closed_count :]
        self._apply_from(snap.position)
        replayed = len(self._log) - snap.position
        self.rollbacks += 1
        self.replayed += replayed
        after = _settled_part(self._trades[snap.trade_count :], self._revision_position())
        revised = before != after
        if revised:
            self.revisions += 1
        return replayed, revised

    def _apply_from(self, start: int) -> None:
        """Apply ``log[start:]`` to the book, which holds the state at C{start}."""
        book = self.book
        log = self._log
        trades, trades_of = self._trades, self._trades_of
        closed, closed_log = self._closed, self._closed_log
        sha256 = hashlib.sha256
        log_hash, trade_hash = self._log_hash, self._trade_hash
        interval = self.snapshot_interval
        end = len(log)
        # Snapshots are taken only near the end (older ones would be thinned
        # anyway), and further apart as the book grows: a snapshot costs time
        # in proportion to the open orders, so at least 32 events apart per
        # open order keeps its cost per event constant.
        snapshot_from = end - max(interval * (self.max_snapshots // 2), self.dense_span)
        last_snapshot = self._snapshots[-1].position
        progress, every = self._progress, PROGRESS_EVERY
        for position in range(start, end):
            event = log[position]
            event_id = event.id
            if event.kind == "order":
                results = book.place(
                    event_id, event.side, event.price, event.amount, event.author, event.order_type
                )
            else:
                target = book.order(event.target)
                if target is None:
                    results = [(CANCEL_REJECTED, event_id, 0, "not_open")]
                elif target.owner != event.author:
                    results = [(CANCEL_REJECTED, event_id, 0, NOT_OWNER)]
                else:
                    results = book.cancel(event.target)
                    results.append((APPLIED, event_id, 0, ""))
            for item in results:
                if item[0] == TRADE:
                    _, seq, taker, maker, side, price, amount = item  # type: ignore[misc]
                    trade_id = sha256(f"trade {taker} {maker}".encode("ascii")).hexdigest()
                    index = len(trades)
                    trades.append(
                        TradeRecord(
                            trade_id,
                            seq,
                            price,
                            amount,
                            side,
                            taker,
                            maker,
                            event.lamport,
                            event.ts,
                            position,
                        )  # fmt: skip
                    )
                    trades_of.setdefault(taker, []).append(index)
                    trades_of.setdefault(maker, []).append(index)
                    trade_hash = sha256(
                        trade_hash + f"{trade_id} {seq} {price} {amount} {side}".encode("ascii")
                    ).digest()
                elif item[0] in _TERMINAL or item[0] == CANCEL_REJECTED or item[0] == APPLIED:
                    state, order_id, remaining, reason = item  # type: ignore[misc]
                    if order_id not in closed:
                        closed[order_id] = Outcome(state, reason, remaining, position)
                        closed_log.append(order_id)
            log_hash = sha256(log_hash + bytes.fromhex(event_id)).digest()
            done = position + 1
            if progress is not None and not (done - start) % every:
                progress(done - start, end - start)
            if done - last_snapshot >= interval and done >= snapshot_from:
                if done - last_snapshot >= len(book) >> 5:
                    self._log_hash, self._trade_hash = log_hash, trade_hash
                    self._add_snapshot(self._snapshot(done))
                    last_snapshot = done
        self._log_hash, self._trade_hash = log_hash, trade_hash
        self._version += 1

    def _snapshot(self, position: int) -> _Snapshot:
        return _Snapshot(
            position, self.book.snapshot(), len(self._trades), self._trade_hash, self._log_hash,
            len(self._closed_log),
        )  # fmt: skip

    def _add_snapshot(self, snap: _Snapshot) -> None:
        snapshots = self._snapshots
        if snap.position <= snapshots[-1].position:
            return
        snapshots.append(snap)
        # Keep the empty book, the newest half and every snapshot within
        # dense_span of the newest (where late events land); once the older
        # ones fill the other half, drop every other one of them.
        half = self.max_snapshots // 2
        dense_from = snap.position - self.dense_span
        dense = len(snapshots) - bisect_left(snapshots, dense_from, 1, key=_position)
        keep_recent = max(half, dense)
        if len(snapshots) > keep_recent + self.max_snapshots - half:
            older = snapshots[1:-keep_recent]
            snapshots[1:-keep_recent] = older[::2]

    def snapshot_positions(self) -> list[int]:
        """Log positions of the snapshots kept (for tests and metrics)."""
        return [snap.position for snap in self._snapshots]


def _position(snap: _Snapshot) -> int:
    return snap.position


def _settled_part(trades: list[TradeRecord], settled: int) -> list[tuple[str, int, int]]:
    """What a revision compares: id, price, amount of the trades of the first C{settled} events."""
    return [(t.id, t.price, t.amount) for t in trades if t.position < settled]


def _chain_from(chain: _Chain, seq: int, last: int) -> Iterator[Event]:
    """C{chain}'s held events from C{seq} to C{last}, in seq order, skipping gaps."""
    winners = chain.winners
    for number in range(seq, last + 1):
        event = winners.get(number)
        if event is not None:
            yield event


def _mark(changed: dict[str, int], until: dict[str, int] | None, author: str, seq: int) -> None:
    """
    Note that C{author}'s prefix must be walked again from C{seq} at the
    latest (C{changed}), and at least through C{seq} (C{until}, when
    given: see :meth:`Ledger._refresh`).
    """
    low = changed.get(author)
    if low is None or seq < low:
        changed[author] = seq
    if until is not None and seq > until.get(author, 0):
        until[author] = seq
