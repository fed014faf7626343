"""Tests for :mod:`bitfitech.market.journal`: events in the node's SQLite database.

A batch is one transaction (durable batches with ``synchronous=FULL``),
events are appended as given, a failed batch leaves nothing behind, and
reading the journal back, after a restart too, rebuilds the same ledger
(a repeated row changes nothing).  Databases of schema version 4, whose
``events`` table had its id as primary key, are migrated in order.  A
journal given a market's own tables reads and writes those only.
"""

from __future__ import annotations

import os
import random
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.market.events import Event, parse_event, verify_event
from bitfitech.market.journal import EventJournal, JournalError
from bitfitech.market.ledger import Ledger
from bitfitech.storage import (
    HISTORIC_TABLES,
    MIGRATIONS,
    SCHEMA_VERSION,
    Storage,
    market_tables,
    schema_version,
)

from .strategies import EVENT_NETWORK, EVENT_PAIR, random_events
from .witnessing import run

SYNCHRONOUS_NORMAL = 1


def some_events(count: int, seed: int = 1) -> list[Event]:
    """C{count} signed events from three authors."""
    return list(random_events(random.Random(seed), 3, count).events)[:count]


def unsigned_events(count: int) -> list[Event]:
    """C{count} well-formed events with a dummy signature (the journal does not verify)."""
    head = f"bitfi1 {EVENT_NETWORK} {EVENT_PAIR} {'ab' * 32}"
    return [
        parse_event(
            f"{head} {seq} {seq} 0 order buy limit 100 1", "cd" * 64, EVENT_NETWORK, EVENT_PAIR
        )
        for seq in range(1, count + 1)
    ]


class MigrationTests(SynchronousTestCase):
    """A version 4 journal (id as primary key) becomes the unindexed one, rows in order."""

    def test_version_4_journal(self) -> None:
        data_dir = self.mktemp()
        storage = Storage(data_dir)
        storage.open()
        path = storage.database_path
        storage.close()
        # Rebuild the database as version 4 left it.
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        db = sqlite3.connect(path, isolation_level=None)
        for statements in MIGRATIONS[:4]:
            for statement in statements:
                db.execute(statement)
        db.execute("INSERT INTO settings (key, value) VALUES ('schema_version', '4')")
        events = some_events(30)[::-1]
        db.executemany(
            "INSERT INTO events (id, text, sig) VALUES (?, ?, ?)",
            [(event.id, event.text, event.sig) for event in events],
        )
        db.close()

        storage = Storage(data_dir)
        storage.open()
        self.addCleanup(storage.close)
        self.assertEqual(schema_version(storage.connection), SCHEMA_VERSION)
        journal = EventJournal(storage.connection)
        self.assertEqual(list(journal.load()), [event.wire for event in events])
        self.assertEqual(storage.connection.execute("PRAGMA index_list(events)").fetchall(), [])
        more = some_events(33)[30:]
        self.assertEqual(journal.write(more, durable=True), 3)
        self.assertEqual(list(journal.load()), [e.wire for e in events + more])


class JournalTests(SynchronousTestCase):
    """Writing and reading the ``events`` table."""

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.storage = self.open_storage()
        self.journal = EventJournal(self.storage.connection)

    def open_storage(self) -> Storage:
        storage = Storage(self.data_dir)
        storage.open()
        self.addCleanup(storage.close)
        return storage

    def reopen(self) -> EventJournal:
        """Close the storage, open it again, and give its journal."""
        self.storage.close()
        self.storage = self.open_storage()
        return EventJournal(self.storage.connection)

    def rows(self) -> list[tuple[str, str]]:
        return list(self.journal.load())

    def statements(self) -> list[str]:
        """Start recording the SQL the connection runs (until the test ends); the list."""
        recorded: list[str] = []
        connection = self.storage.connection
        connection.set_trace_callback(recorded.append)
        self.addCleanup(connection.set_trace_callback, None)
        return recorded

    def synchronous(self) -> int:
        (value,) = self.storage.connection.execute("PRAGMA synchronous").fetchone()
        return int(value)

    def test_schema(self) -> None:
        """The migrated database has the events table: id, text, sig; no key, no index."""
        db = self.storage.connection
        self.assertEqual(schema_version(db), SCHEMA_VERSION)
        columns = [
            (name, kind, notnull, pk)
            for _, name, kind, notnull, _, pk in db.execute("PRAGMA table_info(events)")
        ]
        self.assertEqual(
            columns, [("id", "TEXT", 1, 0), ("text", "TEXT", 1, 0), ("sig", "TEXT", 1, 0)]
        )
        self.assertEqual(db.execute("PRAGMA index_list(events)").fetchall(), [])
        self.assertEqual(len(self.journal), 0)
        self.assertEqual(self.rows(), [])

    def test_write(self) -> None:
        """A normal write commits the batch in one transaction and says how many it wrote."""
        events = some_events(5)
        recorded = self.statements()
        self.assertEqual(self.journal.write(events, durable=False), 5)
        recorded = recorded[:]
        self.assertEqual(len(self.journal), 5)
        self.assertEqual(self.rows(), [event.wire for event in events])
        self.assertEqual(recorded[0], "BEGIN IMMEDIATE")
        self.assertEqual(recorded[-1], "COMMIT")
        self.assertFalse(any("synchronous" in statement for statement in recorded))
        self.assertFalse(self.storage.connection.in_transaction)

    def test_durable_write(self) -> None:
        """A durable write commits with synchronous=FULL, then goes back to NORMAL."""
        events = some_events(3)
        recorded = self.statements()
        self.assertEqual(self.journal.write(events, durable=True), 3)
        recorded = recorded[:]
        self.assertEqual(recorded[:2], ["PRAGMA synchronous=FULL", "BEGIN IMMEDIATE"])
        self.assertEqual(recorded[-2:], ["COMMIT", "PRAGMA synchronous=NORMAL"])
        self.assertEqual(self.synchronous(), SYNCHRONOUS_NORMAL)
        self.assertEqual(self.rows(), [event.wire for event in events])

    def test_empty_batch(self) -> None:
        """An empty batch writes nothing and touches nothing."""
        recorded = self.statements()
        self.assertEqual(self.journal.write([], durable=True), 0)
        self.assertEqual(self.journal.write(iter(()), durable=False), 0)
        self.assertEqual(recorded, [])

    def test_repeats_written_and_harmless(self) -> None:
        """
        The journal appends what it is given, a repeat too (the market gives
        each event once); a journal holding repeats loads into the same ledger.
        """
        e1, e2, e3 = some_events(3)
        self.assertEqual(self.journal.write([e1, e2], durable=False), 2)
        self.assertEqual(self.journal.write([e2, e3], durable=True), 2)
        self.assertEqual(self.rows(), [e1.wire, e2.wire, e2.wire, e3.wire])
        loaded = Ledger()
        result = loaded.insert(
            parse_event(t, sig, EVENT_NETWORK, EVENT_PAIR) for t, sig in self.rows()
        )
        self.assertEqual(result.duplicates, 1)
        once = Ledger()
        once.insert([e1, e2, e3])
        self.assertEqual(loaded.state_hash(), once.state_hash())
        self.assertEqual(loaded.log_hash, once.log_hash)

    def test_load_in_write_order(self) -> None:
        """load() gives (text, sig) in the order written, not by id or by key."""
        events = some_events(30)[::-1]
        self.assertNotEqual(events, sorted(events, key=lambda event: event.id))
        for start in range(0, 30, 7):
            self.journal.write(events[start : start + 7], durable=start % 2 == 0)
        self.assertEqual(self.rows(), [(event.text, event.sig) for event in events])

    def test_load_pages(self) -> None:
        """load() reads in pages; a journal longer than a page comes back whole."""
        events = unsigned_events(4096 + 5)
        self.assertEqual(self.journal.write(events, durable=False), len(events))
        self.assertEqual(self.rows(), [event.wire for event in events])

    def test_closed_connection(self) -> None:
        """Writing on a closed connection raises JournalError; nothing was written."""
        self.journal.write(some_events(2), durable=False)
        self.storage.close()
        for durable in (False, True):
            self.assertRaises(JournalError, self.journal.write, some_events(4), durable=durable)
        journal = self.reopen()
        self.assertEqual(len(journal), 2)

    def test_failure_mid_batch(self) -> None:
        """A row the database refuses mid-batch rolls the whole batch back."""
        events = some_events(5)
        self.journal.write(events[:1], durable=False)
        db = self.storage.connection
        db.execute(
            "CREATE TEMP TRIGGER refuse AFTER INSERT ON main.events "
            f"WHEN NEW.id = '{events[3].id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        for durable in (False, True):
            with self.assertRaises(JournalError) as caught:
                self.journal.write(events, durable=durable)
            self.assertIn("refused", str(caught.exception))
            self.assertEqual(self.rows(), [events[0].wire])
            self.assertFalse(db.in_transaction)
            self.assertEqual(self.synchronous(), SYNCHRONOUS_NORMAL)
        db.execute("DROP TRIGGER refuse")
        self.assertEqual(self.journal.write(events[1:], durable=True), 4)
        self.assertEqual(self.rows(), [event.wire for event in events])

    def test_disk_full(self) -> None:
        """A batch that does not fit (database full) leaves nothing behind."""
        db = self.storage.connection
        self.journal.write(some_events(2), durable=False)
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        db.execute(f"PRAGMA max_page_count = {pages}")
        batch = unsigned_events(300)
        with self.assertRaises(JournalError) as caught:
            self.journal.write(batch, durable=True)
        self.assertIsInstance(caught.exception.__cause__, sqlite3.Error)
        self.assertEqual(len(self.journal), 2)
        self.assertFalse(db.in_transaction)
        db.execute("PRAGMA max_page_count = 1073741823")
        self.assertEqual(self.journal.write(batch, durable=False), 300)

    def test_commit_failure(self) -> None:
        """
        A batch whose COMMIT fails is not kept, and the journal stays usable:
        no transaction is left open for someone else to commit.  Here a
        deferred foreign key (through a trigger) makes the COMMIT fail.
        """
        db = self.storage.connection
        db.execute("CREATE TABLE parent (id TEXT PRIMARY KEY)")
        db.execute(
            "CREATE TABLE child (id TEXT REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
        )
        db.execute(
            "CREATE TRIGGER orphan AFTER INSERT ON events BEGIN "
            "INSERT INTO child VALUES (NEW.id); END"
        )
        events = some_events(3)
        self.assertRaises(JournalError, self.journal.write, events[:2], durable=True)
        self.assertFalse(db.in_transaction)
        db.execute("DROP TRIGGER orphan")
        self.assertEqual(self.rows(), [])
        self.assertEqual(self.journal.write(events, durable=False), 3)
        self.assertEqual(len(self.reopen()), 3)

    def test_reopen(self) -> None:
        """After a restart the journal loads the same events, in the same order."""
        events = some_events(40)
        for start in range(0, 40, 9):
            self.journal.write(events[start : start + 9], durable=start == 0)
        before = self.rows()
        journal = self.reopen()
        self.assertEqual(list(journal.load()), before)
        self.assertEqual(len(journal), 40)

    def test_rebuilds_ledger(self) -> None:
        """The journal, loaded into a new ledger after a restart, rebuilds the same state."""
        events = some_events(150, seed=5)
        rng = random.Random(5)
        rng.shuffle(events)
        ledger = Ledger()
        start = 0
        while start < len(events):
            batch = events[start : start + rng.randint(1, 12)]
            start += len(batch)
            self.journal.write(batch, durable=rng.randrange(2) == 0)
            ledger.insert(batch)
        self.assertGreater(ledger.trade_count, 0)
        journal = self.reopen()
        loaded = [parse_event(text, sig, EVENT_NETWORK, EVENT_PAIR) for text, sig in journal.load()]
        self.assertTrue(all(verify_event(event) for event in loaded))
        rebuilt = Ledger()
        rebuilt.insert(loaded)
        self.assertEqual(rebuilt.state_hash(), ledger.state_hash())
        self.assertEqual(rebuilt.log_hash, ledger.log_hash)
        self.assertEqual(rebuilt.trades(10**9), ledger.trades(10**9))
        self.assertEqual(rebuilt.vector(), ledger.vector())
        self.assertEqual(len(rebuilt), len(ledger))


class NamedTablesTests(SynchronousTestCase):
    """A journal of a market with tables of its own: every statement goes to them."""

    def setUp(self) -> None:
        self.storage = Storage(self.mktemp())
        self.storage.open()
        self.addCleanup(self.storage.close)
        self.storage.journal_tables("ETH/USD")
        self.tables = self.storage.journal_tables(EVENT_PAIR)
        self.journal = EventJournal(self.storage.connection, self.tables)
        self.historic = EventJournal(self.storage.connection)

    def test_default_is_the_historic_tables(self) -> None:
        self.assertEqual(self.historic.tables, HISTORIC_TABLES)
        self.assertEqual(self.tables, market_tables(EVENT_PAIR))
        self.assertNotEqual(self.tables.events, HISTORIC_TABLES.events)

    def test_reads_and_writes_only_its_tables(self) -> None:
        """Each journal sees its own events and stamps; the SQL names its tables."""
        mine, theirs = some_events(6)[:3], some_events(6)[3:]
        recorded: list[str] = []
        self.storage.connection.set_trace_callback(recorded.append)
        self.addCleanup(self.storage.connection.set_trace_callback, None)
        self.assertEqual(self.journal.write(mine, durable=True), 3)
        self.assertTrue(any(self.tables.events in statement for statement in recorded))
        self.assertFalse(any(" events " in statement for statement in recorded))
        self.assertEqual(self.historic.write(theirs, durable=False), 3)
        self.assertEqual((len(self.journal), len(self.historic)), (3, 3))
        self.assertEqual(list(self.journal.load()), [event.wire for event in mine])
        self.assertEqual(list(self.historic.load()), [event.wire for event in theirs])
        rows = self.storage.connection.execute(f"SELECT id FROM {self.tables.events}").fetchall()
        self.assertEqual(rows, [(event.id,) for event in mine])

    def test_stamps_in_its_table(self) -> None:
        """Stamps go to the market's stamps table (repeats skipped), not the historic one."""
        stamps = run(1, {}, until=250).stamps[0]
        self.assertEqual(self.journal.write([], durable=False, stamps=stamps), len(stamps))
        self.assertEqual(self.journal.write([], durable=False, stamps=stamps[:1]), 0)
        self.assertEqual(self.journal.stamp_count(), len(stamps))
        self.assertEqual(list(self.journal.load_stamps()), [s.wire for s in stamps])
        self.assertEqual((self.historic.stamp_count(), list(self.historic.load_stamps())), (0, []))

    def test_reopen(self) -> None:
        """After a restart the storage gives the same tables, and they hold what was written."""
        events = some_events(10)
        self.journal.write(events, durable=False)
        self.storage.close()
        self.storage.open()
        journal = EventJournal(self.storage.connection, self.storage.journal_tables(EVENT_PAIR))
        self.assertEqual(list(journal.load()), [event.wire for event in events])
        self.assertEqual(len(EventJournal(self.storage.connection)), 0)
