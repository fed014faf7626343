"""The event journal: every event a node holds, in its SQLite database.

Data path: :class:`~bitfitech.market.service.MarketService` ->
:class:`EventJournal` -> its market's events table (``events`` on a node
of one market; see :meth:`bitfitech.storage.Storage.journal_tables`).  An
event is stored as the text and signature it travels as, with its id;
reading the journal back in the order it was written and inserting it
into a fresh ledger rebuilds the same book, because the book depends only
on the set of events.

The journal is append-only and has no index on the event id (an index on
a random key made every insert cost several times the row): it writes
what it is given.  The market hands it each event once, when the event
is new to it; an event journaled twice all the same (a bug) would cost a
row, nothing more, since loading skips repeats like any duplicate.

A batch is one transaction, committed with the database's
``synchronous=NORMAL``: it survives a killed process at once.  To survive a
power cut too, a node's own orders (acknowledged to the user only
afterwards) wait for a :class:`Syncer` to fsync the write-ahead log, off the
reactor thread; one fsync covers every batch written before it (group
commit).  Peer events are not waited for: a lost one is fetched again from
the peers.  (:meth:`EventJournal.write` with ``durable=True`` commits with
``synchronous=FULL`` instead, in the calling thread.)

At start the market reads the whole journal back and replays it into a
new ledger, before the node does anything else (the reactor waits, and
the HTTP API is not listening yet).  :class:`JournalReplay` says so in the
log: a line as the replay starts, a progress line now and then while a
long one runs (its time read from a monotonic clock the market is given,
since no reactor timer can fire meanwhile), and a line at the end.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from ..logs import logger
from ..storage import HISTORIC_TABLES, JournalTables, Storage
from .events import Event
from .stamps import Stamp

log = logger(__name__)

#: seconds a replay of the journal runs before its progress is logged
REPLAY_QUIET = 2.0

#: seconds between two progress lines of a long replay
REPLAY_PROGRESS_INTERVAL = 5.0

#: events or stamps read between two looks at the clock
READ_CHECK_EVERY = 1024

#: unreadable journaled events or stamps logged one by one at start; the
#: rest are only counted (a journal of another network would log them all)
UNREADABLE_LOGGED = 10


class JournalError(Exception):
    """The journal could not be written; nothing of the batch was kept."""


class EventJournal:
    """
    Append-only storage of one market's events and witness stamps.

    :param connection: the node's open database (autocommit mode).
    :param tables: the market's tables, as the storage gives them (trusted:
        their names go into the SQL as they are); by default the historic
        ``events`` and ``stamps``.
    :ivar tables: the market's tables.
    """

    def __init__(
        self, connection: sqlite3.Connection, tables: JournalTables = HISTORIC_TABLES
    ) -> None:
        self.connection = connection
        self.tables = tables
        events, stamps = tables.events, tables.stamps
        # Built once: the write path runs them for every batch.
        self._count_events = f"SELECT count(*) FROM {events}"
        self._load_events = f"SELECT text, sig FROM {events} ORDER BY rowid"
        self._insert_events = f"INSERT INTO {events} (id, text, sig) VALUES (?, ?, ?)"
        self._count_stamps = f"SELECT count(*) FROM {stamps}"
        self._load_stamps = f"SELECT text, sig FROM {stamps} ORDER BY rowid"
        self._insert_stamps = f"INSERT OR IGNORE INTO {stamps} (id, text, sig) VALUES (?, ?, ?)"

    def __len__(self) -> int:
        """How many events are journaled."""
        (count,) = self.connection.execute(self._count_events).fetchone()
        return int(count)

    def load(self) -> Iterator[tuple[str, str]]:
        """Every journaled event as ``(text, sig)``, in the order written."""
        cursor = self.connection.execute(self._load_events)
        while rows := cursor.fetchmany(4096):
            yield from rows

    def stamp_count(self) -> int:
        """How many witness stamps are journaled."""
        (count,) = self.connection.execute(self._count_stamps).fetchone()
        return int(count)

    def load_stamps(self) -> Iterator[tuple[str, str]]:
        """Every journaled witness stamp as ``(text, sig)``, in the order written."""
        cursor = self.connection.execute(self._load_stamps)
        while rows := cursor.fetchmany(4096):
            yield from rows

    def write(self, events: Iterable[Event], *, durable: bool, stamps: Iterable[Stamp] = ()) -> int:
        """
        Journal C{events} and C{stamps} in one transaction.  Events are
        appended as given (the caller gives each once); stamps already
        there are skipped.

        :param durable: commit with ``synchronous=FULL`` (an fsync of the WAL).
        :return: how many rows were written.
        :raises JournalError: if the database refuses; the batch is rolled back.
        """
        rows = [(event.id, event.text, event.sig) for event in events]
        stamp_rows = [(stamp.id, stamp.text, stamp.sig) for stamp in stamps]
        if not rows and not stamp_rows:
            return 0
        db = self.connection
        try:
            if durable:
                db.execute("PRAGMA synchronous=FULL")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    before = db.total_changes
                    db.executemany(self._insert_events, rows)
                    if stamp_rows:
                        db.executemany(self._insert_stamps, stamp_rows)
                    written = db.total_changes - before
                    db.execute("COMMIT")
                except BaseException:
                    # Also when COMMIT itself fails: nothing of the batch may
                    # stay pending, to be committed later by someone else.
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            finally:
                if durable:
                    db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as e:
            raise JournalError(
                f"cannot journal {len(rows)} events and {len(stamp_rows)} stamps: {e}"
            ) from e
        return written

    def probe(self) -> None:
        """
        Write one row (the time of this probe, in the ``settings`` table) to
        see whether the database takes writes again.

        :raises JournalError: if it does not.
        """
        try:
            self.connection.execute(
                "INSERT INTO settings (key, value) VALUES ('journal_probe', datetime('now')) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            )
        except sqlite3.Error as e:
            raise JournalError(f"cannot write to the database: {e}") from e

    def flush_wal(self) -> None:
        """
        Copy the whole write-ahead log into the database, sync it, and empty
        the log (``PRAGMA wal_checkpoint(TRUNCATE)``).

        After a failed fsync, the kernel may have dropped pages of the log
        it could not write, while SQLite believes them written: copying the
        log through SQLite (which still reads it whole, from the page cache)
        and syncing the database makes every commit durable again, before
        any order is acknowledged on top of them.

        :raises JournalError: if the database refuses, or another
            connection keeps the copy from completing.
        """
        try:
            busy, _, _ = self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as e:
            raise JournalError(f"cannot copy the write-ahead log into the database: {e}") from e
        if busy:
            raise JournalError("cannot copy the write-ahead log into the database: busy")


class JournalReplay:
    """
    The log lines of one replay of the journal into a new ledger, at start.

    The replay reads the journaled stamps and events (:meth:`read`), then
    applies the events to the book (:meth:`applying`, called by
    :meth:`~bitfitech.market.ledger.Ledger.load`).  The whole replay runs
    in one go, before the reactor runs anything else, so its time comes
    from C{monotonic}: a replay that takes :data:`REPLAY_QUIET` seconds
    or more logs where it is every :data:`REPLAY_PROGRESS_INTERVAL`
    seconds (the step, how many of how many, the percentage, events a
    second since the previous line); a shorter one logs its start and its
    end only.

    :param path: the database the journal is in (named in the log).
    :param events: how many events the journal holds.
    :param stamps: how many witness stamps it holds.
    :param monotonic: seconds from a monotonic clock (``time.monotonic``;
        a fake in tests).
    :param market: the market whose journal it is (a field of every line).
    :ivar skipped: unreadable events and stamps skipped (see :meth:`skip`).
    """

    def __init__(
        self, path: str, events: int, stamps: int, monotonic: Callable[[], float], market: str = ""
    ) -> None:
        self.path = path
        self.market = market
        self.events = events
        self.stamps = stamps
        self._monotonic = monotonic
        self.skipped = 0
        self._started = self._mark = monotonic()
        self._next_line = self._started + REPLAY_QUIET
        # The step under way, how far it was and when, at the last line (or its start).
        self._step = "reading stamps" if stamps else "reading events"
        self._step_done = 0

    @property
    def seconds(self) -> float:
        """Seconds since the replay started."""
        return self._monotonic() - self._started

    def start(self) -> None:
        """Log that the replay starts (nothing for an empty journal)."""
        if self.stamps:
            log.info(
                "Replaying {events} events and {stamps} witness stamps from the journal in {path}",
                events=self.events, stamps=self.stamps, path=self.path, market=self.market,
            )  # fmt: skip
        elif self.events:
            log.info("Replaying {events} events from the journal in {path}",
                     events=self.events, path=self.path, market=self.market)  # fmt: skip

    def read(self, done: int, stamps: bool = False) -> None:
        """
        C{done} events (or stamps) of the journal have been read so far.
        Cheap: it looks at the clock every :data:`READ_CHECK_EVERY` only.
        """
        if done % READ_CHECK_EVERY:
            return
        if stamps:
            self._report("reading stamps", done, self.stamps)
        else:
            self._report("reading events", done, self.events)

    def applying(self, done: int, total: int) -> None:
        """C{done} of the C{total} events to apply have been applied to the book."""
        self._report("applying events", done, total)

    def skip(self, what: str, error: str) -> None:
        """
        Skip an unreadable journaled C{what} (``event`` or ``stamp``): the
        first :data:`UNREADABLE_LOGGED` are logged, the rest only counted
        (:meth:`finish` says how many in all).
        """
        self.skipped += 1
        if self.skipped <= UNREADABLE_LOGGED:
            log.error("Skipping unreadable journaled {what}: {error}",
                      what=what, error=error, market=self.market)  # fmt: skip

    def _report(self, step: str, done: int, total: int) -> None:
        now = self._monotonic()
        if step != self._step:
            # A new step: its rate is measured from here, its first line comes next time.
            self._step, self._step_done, self._mark = step, done, now
            return
        if now < self._next_line:
            return
        elapsed = now - self._mark
        rate = (done - self._step_done) / elapsed if elapsed > 0 else 0.0
        self._mark, self._step_done = now, done
        self._next_line = now + REPLAY_PROGRESS_INTERVAL
        log.info(
            "Replaying the journal: {step}, {done} of {total} ({percent:.0f} %), {rate:.0f}/s",
            step=step, done=done, total=total,
            percent=100 * done / total if total else 100.0, rate=rate, market=self.market,
        )  # fmt: skip

    def finish(
        self, *, loaded: int, applied: int, resumed: int, orders: int, trades: int,
        state_hash: str,
    ) -> float:  # fmt: skip
        """
        Log the end of the replay (nothing if the journal held nothing),
        and how many unreadable entries were skipped, if any.

        :param loaded: events read back (unreadable ones left out).
        :param applied: events applied to the book.
        :param resumed: events restored from the ledger checkpoint instead.
        :return: the seconds the replay took.
        """
        seconds = self.seconds
        if self.events or self.stamps:
            log.info(
                "Replayed {loaded} events in {seconds:.2f} s ({applied} applied, {resumed} "
                "restored from the checkpoint): {orders} open orders, {trades} trades; "
                "state hash {state_hash}",
                loaded=loaded, seconds=seconds, applied=applied, resumed=resumed,
                orders=orders, trades=trades, state_hash=state_hash, market=self.market,
            )  # fmt: skip
        if self.skipped:
            log.warn(
                "Skipped {skipped} unreadable journaled events and stamps ({logged} logged above)",
                skipped=self.skipped, logged=min(self.skipped, UNREADABLE_LOGGED),
                market=self.market,
            )  # fmt: skip
        return seconds


class Syncer(Protocol):
    """Makes what the journal wrote so far survive a power cut; writes files durably."""

    def sync(self) -> Deferred[None]:
        """Fires once everything committed before the call is on disk."""

    def write_file(self, path: str, data: bytes) -> Deferred[None]:
        """Replace the file at C{path} with C{data}, durably (see :func:`write_file`)."""

    def close(self) -> None:
        """Release the syncer once nothing is in flight."""

    def wal_flushed(self) -> None:
        """
        The write-ahead log was copied into the database and synced
        (:meth:`EventJournal.flush_wal`) after a failed sync: everything
        committed before is on disk, and a sync may be trusted again.
        """


def write_file(path: str, data: bytes) -> None:
    """
    Replace the file at C{path} with C{data}: written aside, fsynced, then
    renamed over it, so that a crash leaves the old file or the new one,
    whole.

    :raises OSError: if the disk refuses.
    """
    partial = path + ".partial"
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def sync_files(path: str) -> None:
    """
    fsync the database's write-ahead log (or the database, if it has none).

    With ``synchronous=NORMAL`` a WAL commit is written to the WAL file but
    not synced; the WAL is synced before every checkpoint and the database
    after it.  So once the WAL file is synced, every commit made before is
    durable: either its frames are still in the WAL, or a checkpoint
    copied them into the database and synced it.

    :raises OSError: if the disk refuses, or there is no database.
    """
    try:
        fd = os.open(path + "-wal", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InlineSyncer:
    """Syncs in the calling thread: the returned Deferred has already fired."""

    def __init__(self, path: str) -> None:
        self.path = path

    def sync(self) -> Deferred[None]:
        try:
            sync_files(self.path)
        except OSError as e:
            return fail(e)
        return succeed(None)

    def write_file(self, path: str, data: bytes) -> Deferred[None]:
        try:
            write_file(path, data)
        except OSError as e:
            return fail(e)
        return succeed(None)

    def close(self) -> None:
        pass

    def wal_flushed(self) -> None:
        pass


_Job = tuple[Callable[..., None], tuple[Any, ...], Deferred[None]]


class ThreadedSyncer:
    """
    Syncs in one thread of its own, so the reactor keeps working while the
    disk does.

    Only the fsync happens there (it releases the GIL): the journal's
    SQLite writes stay in the reactor thread, where they cost little with
    ``synchronous=NORMAL``.  A durable commit that waited in the reactor
    thread stalled a busy node for a third of its time, with ten nodes
    sharing one disk.  The thread is a plain one fed by a
    :class:`queue.SimpleQueue`: a busy node syncs a hundred times a second,
    and a thread pool's bookkeeping cost more than the fsync's wait.
    """

    def __init__(self, reactor: Any, path: str) -> None:
        self.reactor = reactor
        self.path = path
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="bitfi-fsync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        call = self.reactor.callFromThread
        while (job := self._queue.get()) is not None:
            work, args, done = job
            try:
                work(*args)
            except OSError as e:
                call(done.errback, e)
            else:
                call(done.callback, None)

    def _submit(self, work: Callable[..., None], *args: Any) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        self._queue.put((work, args, done))
        return done

    def sync(self) -> Deferred[None]:
        return self._submit(sync_files, self.path)

    def write_file(self, path: str, data: bytes) -> Deferred[None]:
        return self._submit(write_file, path, data)

    def close(self) -> None:
        """Stop the thread once the syncs queued before are done."""
        self._queue.put(None)
        self._thread.join()

    def wal_flushed(self) -> None:
        pass


class SharedSyncer:
    """
    The one syncer of every market of a node.

    All the markets journal into one SQLite database, so into one
    write-ahead log: one fsync makes every market's commits before it
    durable, and one thread does them all, in turn.  Each market is given
    :meth:`open` as its syncer factory: the real syncer is made at the
    first call (the first market that needs it, at its first durable write
    or checkpoint), every call returns this same object, and the real
    syncer is closed when the last market that opened it closes it (each
    closes it once, at its stop).

    A failed fsync is a fault of the whole log, not of the market that
    asked: the kernel may have dropped pages of the log that other markets
    wrote, and SQLite would stop reading the log at the first lost frame,
    taking every later commit with it.  So from a failure on, every sync
    fails (those queued behind it, which the disk may wrongly report
    done, and those asked later), and each market refuses orders as for a
    failure of its own, until one of them has copied the whole log into
    the database (:meth:`wal_flushed`).

    :param factory: makes the real syncer (a node's makes a
        :class:`ThreadedSyncer`).
    :ivar users: the markets that opened it and have not closed it yet.
    """

    def __init__(self, factory: Callable[[Storage], Syncer]) -> None:
        self._factory = factory
        self._syncer: Syncer | None = None
        self._fault: BaseException | None = None
        self.users = 0

    def open(self, storage: Storage) -> Syncer:
        """A market's syncer factory: this object, the real syncer made at the first call."""
        if self._syncer is None:
            self._syncer = self._factory(storage)
        self.users += 1
        return self

    def _real(self) -> Syncer:
        if self._syncer is None:
            raise RuntimeError("the shared syncer is not open")
        return self._syncer

    def sync(self) -> Deferred[None]:
        """Fires once everything committed before is on disk; fails while the log is at fault."""
        if self._fault is not None:
            return fail(self._fault)
        return self._real().sync().addCallbacks(self._synced, self._failed)

    def _synced(self, _: None) -> None:
        if self._fault is not None:
            raise self._fault

    def _failed(self, failure: Failure) -> Failure:
        if self._fault is None:
            self._fault = failure.value
        return failure

    def write_file(self, path: str, data: bytes) -> Deferred[None]:
        """Replace the file at C{path} with C{data}, durably, in the shared thread."""
        return self._real().write_file(path, data)

    def wal_flushed(self) -> None:
        """The log was copied into the database: syncs are trusted again."""
        self._fault = None
        self._real().wal_flushed()

    def close(self) -> None:
        """
        One market is done with it; the last one closes the real syncer
        (once the syncs queued before are done).
        """
        if self.users == 0:
            return
        self.users -= 1
        if self.users == 0:
            syncer, self._syncer, self._fault = self._real(), None, None
            syncer.close()
