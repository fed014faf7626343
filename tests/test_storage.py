"""Tests for :mod:`bitfitech.storage`: the data directory lock, database and migrations.

Also each market's journal tables: the historic ``events``/``stamps`` tables
and ``ledger.checkpoint`` are adopted by the market their rows name (the
first market asked for, when they are empty); other markets get tables of
their own, registered in ``markets``.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Sequence

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.identity import KEY_FILE_NAME, IdentityError
from bitfitech.storage import (
    DATABASE_NAME,
    HISTORIC_TABLES,
    LOCK_FILE_NAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    JournalTables,
    Storage,
    StorageError,
    StorageService,
    WriteThrough,
    market_tables,
    schema_version,
)


class StorageTests(SynchronousTestCase):
    """Opening, locking, settings and transactions."""

    def setUp(self) -> None:
        self.data_dir = os.path.join(self.mktemp(), "nested", "node")

    def open_storage(self) -> Storage:
        storage = Storage(self.data_dir)
        storage.open()
        self.addCleanup(storage.close)
        return storage

    def test_no_io_in_init(self) -> None:
        Storage(self.data_dir)
        self.assertFalse(os.path.exists(self.data_dir))

    def test_not_open(self) -> None:
        storage = Storage(self.data_dir)
        self.assertRaises(StorageError, lambda: storage.connection)
        self.assertRaises(StorageError, lambda: storage.identity)
        storage.close()  # harmless

    def test_open_creates_everything(self) -> None:
        storage = self.open_storage()
        self.assertTrue(os.path.isdir(self.data_dir))
        self.assertEqual(stat.S_IMODE(os.stat(self.data_dir).st_mode) & 0o077, 0)
        for name in (DATABASE_NAME, KEY_FILE_NAME, LOCK_FILE_NAME):
            self.assertTrue(os.path.exists(os.path.join(self.data_dir, name)), name)
        self.assertEqual(len(storage.identity.node_id), 40)

    def test_identity_stable(self) -> None:
        storage = self.open_storage()
        node_id = storage.identity.node_id
        storage.close()
        storage.open()
        self.assertEqual(storage.identity.node_id, node_id)

    def test_pragmas(self) -> None:
        db = self.open_storage().connection
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(db.execute("PRAGMA foreign_keys").fetchone()[0], 1)
        self.assertEqual(db.execute("PRAGMA synchronous").fetchone()[0], 1)  # NORMAL
        self.assertIsNone(db.isolation_level)

    def test_schema_version(self) -> None:
        storage = self.open_storage()
        self.assertEqual(storage.get_setting("schema_version"), str(SCHEMA_VERSION))
        self.assertEqual(schema_version(storage.connection), SCHEMA_VERSION)
        tables = {
            row[0]
            for row in storage.connection.execute(
                "SELECT name FROM sqlite_master WHERE type='table'"
            )
        }
        self.assertTrue({"settings", "addresses"} <= tables)
        # Reopening runs no migration twice.
        storage.close()
        storage.open()
        self.assertEqual(schema_version(storage.connection), SCHEMA_VERSION)

    def test_newer_schema_refused(self) -> None:
        storage = self.open_storage()
        storage.set_setting("schema_version", str(SCHEMA_VERSION + 1))
        storage.close()
        error = self.assertRaises(StorageError, storage.open)
        self.assertIn("newer", str(error))
        self.assertFalse(storage.is_open)
        # The lock was released on failure: another Storage fails on the
        # schema again, not on the lock.
        error = self.assertRaises(StorageError, Storage(self.data_dir).open)
        self.assertIn("newer", str(error))

    def test_settings_round_trip(self) -> None:
        storage = self.open_storage()
        self.assertIsNone(storage.get_setting("missing"))
        storage.set_setting("greeting", "hello")
        storage.set_setting("greeting", "hello again")
        storage.set_setting("unicode", "\u20ac")
        storage.close()
        storage.open()
        self.assertEqual(storage.get_setting("greeting"), "hello again")
        self.assertEqual(storage.get_setting("unicode"), "\u20ac")

    def test_second_storage_refused(self) -> None:
        self.open_storage()
        other = Storage(self.data_dir)
        error = self.assertRaises(StorageError, other.open)
        self.assertIn("in use by another bitfi node", str(error))
        self.assertIn(self.data_dir, str(error))
        self.assertFalse(other.is_open)

    def test_close_releases_lock(self) -> None:
        storage = self.open_storage()
        storage.close()
        storage.close()  # idempotent
        self.assertRaises(StorageError, lambda: storage.connection)
        other = self.open_storage()
        self.assertEqual(other.get_setting("schema_version"), str(SCHEMA_VERSION))

    def test_open_twice_refused(self) -> None:
        storage = self.open_storage()
        self.assertRaises(StorageError, storage.open)
        self.assertTrue(storage.is_open)

    def test_corrupt_identity_releases_lock(self) -> None:
        storage = self.open_storage()
        storage.close()
        key_path = os.path.join(self.data_dir, KEY_FILE_NAME)
        with open(key_path, "w") as f:
            f.write("garbage\n")
        self.assertRaises(IdentityError, storage.open)
        os.remove(key_path)
        storage.open()  # the lock was released
        self.assertTrue(storage.is_open)

    def test_corrupt_database(self) -> None:
        os.makedirs(self.data_dir)
        with open(os.path.join(self.data_dir, DATABASE_NAME), "wb") as f:
            f.write(b"this is not a database" * 100)
        storage = Storage(self.data_dir)
        error = self.assertRaises(StorageError, storage.open)
        self.assertIn(DATABASE_NAME, str(error))
        self.assertFalse(storage.is_open)

    def test_data_dir_is_a_file(self) -> None:
        os.makedirs(os.path.dirname(self.data_dir))
        with open(self.data_dir, "w") as f:
            f.write("x")
        error = self.assertRaises(StorageError, Storage(self.data_dir).open)
        self.assertIn("cannot create data directory", str(error))

    def test_transaction_commit(self) -> None:
        storage = self.open_storage()
        with storage.transaction() as db:
            self.assertTrue(db.in_transaction)
            storage.set_setting("a", "1")
            storage.set_setting("b", "2")
        self.assertFalse(storage.connection.in_transaction)
        self.assertEqual(storage.get_setting("b"), "2")

    def test_transaction_rollback(self) -> None:
        storage = self.open_storage()
        with self.assertRaises(RuntimeError):
            with storage.transaction():
                storage.set_setting("a", "1")
                raise RuntimeError("boom")
        self.assertFalse(storage.connection.in_transaction)
        self.assertIsNone(storage.get_setting("a"))

    def test_nested_transaction(self) -> None:
        storage = self.open_storage()
        with storage.transaction():
            storage.set_setting("outer", "1")
            with self.assertRaises(RuntimeError):
                with storage.transaction():
                    storage.set_setting("inner", "1")
                    raise RuntimeError("boom")
            with storage.transaction():
                storage.set_setting("inner2", "1")
        self.assertEqual(storage.get_setting("outer"), "1")
        self.assertIsNone(storage.get_setting("inner"))
        self.assertEqual(storage.get_setting("inner2"), "1")

    def test_immediate_transaction_locks_writers(self) -> None:
        storage = self.open_storage()
        other = sqlite3.connect(
            os.path.join(self.data_dir, DATABASE_NAME), isolation_level=None, timeout=0
        )
        self.addCleanup(other.close)
        with storage.transaction():
            self.assertRaises(sqlite3.OperationalError, other.execute, "BEGIN IMMEDIATE")


class StorageServiceTests(SynchronousTestCase):
    """The service opens storage on start and closes it on stop."""

    def test_start_stop(self) -> None:
        storage = Storage(self.mktemp())
        service = StorageService(storage)
        self.assertEqual(service.name, "storage")
        service.startService()
        self.addCleanup(storage.close)
        self.assertTrue(service.running)
        self.assertTrue(storage.is_open)
        service.stopService()
        self.assertFalse(service.running)
        self.assertFalse(storage.is_open)

    def test_start_fails_when_in_use(self) -> None:
        data_dir = self.mktemp()
        holder = Storage(data_dir)
        holder.open()
        self.addCleanup(holder.close)
        service = StorageService(Storage(data_dir))
        self.assertRaises(StorageError, service.startService)
        self.assertFalse(service.running)


class WriteThroughTests(SynchronousTestCase):
    """A mirror's write the database refuses is logged once, never raised, and recovery said."""

    def setUp(self) -> None:
        storage = Storage(self.mktemp())
        storage.open()
        self.addCleanup(storage.close)
        self.connection = storage.connection
        self.table = WriteThrough("the ban list")
        self.table.connection = self.connection
        self.observer = EventLoggingObserver()
        globalLogPublisher.addObserver(self.observer)
        self.addCleanup(globalLogPublisher.removeObserver, self.observer)

    def set(self, key: str) -> None:
        self.table.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, 'v')", (key,))

    def logged(self, text: str) -> int:
        return sum(text in e.get("log_format", "") for e in self.observer)

    def test_refused_writes_logged_once_then_recovery(self) -> None:
        self.connection.execute("PRAGMA query_only = 1")
        for key in ("a", "b", "c"):
            self.set(key)
        self.assertTrue(self.table.failing)
        self.assertEqual(self.logged("Cannot save {what}"), 1)
        self.connection.execute("PRAGMA query_only = 0")
        self.set("d")
        self.assertFalse(self.table.failing)
        self.assertEqual(self.logged("Saving {what} again"), 1)
        rows = self.connection.execute("SELECT key FROM settings WHERE value = 'v'").fetchall()
        self.assertEqual(rows, [("d",)])

    def test_without_a_database_nothing_is_written(self) -> None:
        self.table.connection = None
        self.set("a")
        self.assertFalse(self.table.failing)


def event_text(pair: str, seq: int = 1, network: str = "test") -> str:
    """An event's text as the journal holds it (the storage reads only its pair)."""
    return f"bitfi1 {network} {pair} {'ab' * 32} {seq} {seq} 0 order buy limit 100 1"


def stamp_text(pair: str, seq: int = 1) -> str:
    """A witness stamp's text as the journal holds it."""
    return f"bitfi-stamp1 test {pair} {'cd' * 20} {seq} 1000 - - -"


class JournalTablesTests(SynchronousTestCase):
    """
    Which tables and checkpoint file hold each market's journal: the
    version 6 migration, the adoption of the historic journal, and the
    tables of the other markets.
    """

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.observer = EventLoggingObserver()
        globalLogPublisher.addObserver(self.observer)
        self.addCleanup(globalLogPublisher.removeObserver, self.observer)

    def open_storage(self) -> Storage:
        storage = Storage(self.data_dir)
        storage.open()
        self.addCleanup(storage.close)
        return storage

    def legacy(self, events: Sequence[str], stamps: Sequence[str] = (), version: int = 5) -> None:
        """A database as schema C{version} left it, its journal holding these texts."""
        os.makedirs(self.data_dir)
        db = sqlite3.connect(os.path.join(self.data_dir, DATABASE_NAME), isolation_level=None)
        for statements in MIGRATIONS[:version]:
            for statement in statements:
                db.execute(statement)
        db.execute(f"INSERT INTO settings (key, value) VALUES ('schema_version', '{version}')")
        db.executemany(
            "INSERT INTO events (id, text, sig) VALUES (?, ?, 'sig')",
            [(f"e{n}", text) for n, text in enumerate(events)],
        )
        db.executemany(
            "INSERT INTO stamps (id, text, sig) VALUES (?, ?, 'sig')",
            [(f"s{n}", text) for n, text in enumerate(stamps)],
        )
        db.execute(
            "INSERT INTO addresses (host, port, source, first_seen, last_seen) "
            "VALUES ('10.0.0.1', 9000, 'test', 1, 2)"
        )
        db.close()

    def tables(self, storage: Storage) -> set[str]:
        rows = storage.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}

    def texts(self, storage: Storage, table: str) -> list[str]:
        rows = storage.connection.execute(f"SELECT text FROM {table} ORDER BY rowid")
        return [text for (text,) in rows]

    def logged(self, level: LogLevel, since: int = 0) -> list[str]:
        """The storage's lines at C{level}, from the C{since}th event observed on."""
        return [
            formatEvent(e)
            for e in list(self.observer)[since:]
            if e["log_level"] == level and e.get("log_namespace") == "bitfitech.storage"
        ]

    def test_migration_from_version_5_keeps_rows(self) -> None:
        """Version 5 becomes 6: a markets table, empty; every row of before kept, in order."""
        events = [event_text("BTC/USD", seq) for seq in range(1, 6)]
        stamps = [stamp_text("BTC/USD", seq) for seq in range(1, 3)]
        self.legacy(events, stamps)
        storage = self.open_storage()
        db = storage.connection
        self.assertEqual(schema_version(db), SCHEMA_VERSION)
        self.assertEqual(SCHEMA_VERSION, 7)
        columns = [
            (name, kind, notnull, pk)
            for _, name, kind, notnull, _, pk in db.execute("PRAGMA table_info(markets)")
        ]
        self.assertEqual(
            columns,
            [
                ("market", "TEXT", 1, 1),
                ("events", "TEXT", 1, 0),
                ("stamps", "TEXT", 1, 0),
                ("checkpoint", "TEXT", 1, 0),
                ("added_at", "REAL", 1, 0),
            ],
        )
        self.assertEqual(storage.stored_markets(), [])
        self.assertEqual(self.texts(storage, "events"), events)
        self.assertEqual(self.texts(storage, "stamps"), stamps)
        self.assertEqual(db.execute("SELECT host, port, markets FROM addresses").fetchall(),
                         [("10.0.0.1", 9000, "")])  # fmt: skip

    def test_migration_from_version_6_adds_the_markets_of_addresses(self) -> None:
        """Version 6 becomes 7: each address gets its markets, none known; no row lost."""
        self.legacy([event_text("BTC/USD", 1)], version=6)
        storage = self.open_storage()
        db = storage.connection
        self.assertEqual(schema_version(db), 7)
        [markets] = [
            (kind, notnull, default)
            for _, name, kind, notnull, default, _ in db.execute("PRAGMA table_info(addresses)")
            if name == "markets"
        ]
        self.assertEqual(markets, ("TEXT", 1, "''"))
        self.assertEqual(db.execute("SELECT host, port, source, markets FROM addresses").fetchall(),
                         [("10.0.0.1", 9000, "test", "")])  # fmt: skip
        self.assertEqual(self.texts(storage, "events"), [event_text("BTC/USD", 1)])

    def test_fresh_node_writes_the_historic_tables(self) -> None:
        """The first market of a new node gets events, stamps and ledger.checkpoint."""
        storage = self.open_storage()
        before = self.tables(storage)
        self.assertEqual(storage.journal_tables("BTC/USD", now=12.5), HISTORIC_TABLES)
        self.assertEqual(HISTORIC_TABLES, JournalTables("events", "stamps", "ledger.checkpoint"))
        self.assertEqual(self.tables(storage), before, "no table made")
        self.assertEqual(storage.stored_markets(), ["BTC/USD"])
        row = storage.connection.execute("SELECT * FROM markets").fetchall()
        self.assertEqual(row, [("BTC/USD", "events", "stamps", "ledger.checkpoint", 12.5)])
        self.assertEqual(self.logged(LogLevel.warn), [])
        self.assertEqual(
            self.logged(LogLevel.info),
            ["The journal of BTC/USD is kept in the tables events and stamps (new)"],
        )

    def test_same_pair_adopts(self) -> None:
        """A journal of the market asked for is adopted as it is."""
        events = [event_text("BTC/USD", seq) for seq in range(1, 4)]
        self.legacy(events)
        storage = self.open_storage()
        self.assertEqual(storage.journal_tables("BTC/USD"), HISTORIC_TABLES)
        self.assertEqual(storage.stored_markets(), ["BTC/USD"])
        self.assertEqual(self.texts(storage, "events"), events)
        self.assertEqual(
            self.logged(LogLevel.info),
            ["The journal of BTC/USD is kept in the tables events and stamps (adopted)"],
        )

    def test_another_pair_keeps_its_journal(self) -> None:
        """
        A journal of ETH/USD, with BTC/USD asked for first: ETH/USD keeps the
        historic tables and file, BTC/USD gets empty tables of its own.
        """
        events = [event_text("ETH/USD", seq) for seq in range(1, 4)]
        stamps = [stamp_text("ETH/USD")]
        self.legacy(events, stamps)
        storage = self.open_storage()
        btc = storage.journal_tables("BTC/USD")
        self.assertEqual(
            btc, JournalTables("events_btc_usd", "stamps_btc_usd", "ledger.BTC-USD.checkpoint")
        )
        self.assertEqual(storage.stored_markets(), ["ETH/USD", "BTC/USD"])
        self.assertEqual(storage.journal_tables("ETH/USD"), HISTORIC_TABLES)
        self.assertEqual(self.texts(storage, "events"), events)
        self.assertEqual(self.texts(storage, "stamps"), stamps)
        self.assertEqual(self.texts(storage, btc.events), [])
        self.assertEqual(self.texts(storage, btc.stamps), [])
        self.assertEqual(
            self.logged(LogLevel.info),
            [
                "The journal in the tables events and stamps is of ETH/USD: it stays that "
                "market's; BTC/USD gets tables of its own",
                "New journal of BTC/USD in the tables events_btc_usd and stamps_btc_usd",
            ],
        )

    def test_stamps_name_the_pair_when_there_is_no_event(self) -> None:
        """A journal of stamps only (a witness with no order yet) goes by its stamps' pair."""
        self.legacy([], [stamp_text("ETH/USD")])
        storage = self.open_storage()
        self.assertEqual(storage.journal_tables("BTC/USD"), market_tables("BTC/USD"))
        self.assertEqual(storage.journal_tables("ETH/USD"), HISTORIC_TABLES)

    def test_empty_journal_goes_to_the_first_market_asked(self) -> None:
        """An empty historic journal belongs to whichever market is asked for first."""
        self.legacy([])
        storage = self.open_storage()
        self.assertEqual(storage.journal_tables("ETH/USD"), HISTORIC_TABLES)
        self.assertEqual(storage.journal_tables("BTC/USD"), market_tables("BTC/USD"))
        self.assertEqual(storage.stored_markets(), ["ETH/USD", "BTC/USD"])

    def test_unreadable_first_row_goes_to_the_market_asked(self) -> None:
        """A journal whose first row names no pair goes to the market asked for, with a warning."""
        for first in ("garbage", event_text("btc/usd"), stamp_text("BTC/USD")):
            with self.subTest(first=first):
                self.data_dir = self.mktemp()
                self.legacy([first, event_text("ETH/USD")])
                storage = self.open_storage()
                since = len(self.observer)
                self.assertEqual(storage.journal_tables("ETH/USD"), HISTORIC_TABLES)
                self.assertEqual(storage.stored_markets(), ["ETH/USD"])
                warnings = self.logged(LogLevel.warn, since)
                self.assertEqual(len(warnings), 1, warnings)
                self.assertIn("The journal in", warnings[0])
                self.assertIn("is given to ETH/USD, but its first events row", warnings[0])
                storage.close()

    def test_idempotent_across_restarts(self) -> None:
        """Asked again, after a restart too: the same answer, nothing made or logged again."""
        self.legacy([event_text("ETH/USD")])
        storage = self.open_storage()
        first = {pair: storage.journal_tables(pair, now=1.0) for pair in ("BTC/USD", "ETH/USD")}
        rows = storage.connection.execute("SELECT * FROM markets ORDER BY rowid").fetchall()
        tables = self.tables(storage)
        storage.close()
        since = len(self.observer)
        storage = self.open_storage()
        again = {pair: storage.journal_tables(pair, now=2.0) for pair in ("ETH/USD", "BTC/USD")}
        self.assertEqual(again, first)
        self.assertEqual(
            storage.connection.execute("SELECT * FROM markets ORDER BY rowid").fetchall(), rows
        )
        self.assertEqual(self.tables(storage), tables)
        self.assertEqual(storage.stored_markets(), ["ETH/USD", "BTC/USD"])
        self.assertEqual(self.logged(LogLevel.info, since), [])

    def test_new_tables_have_the_historic_schemas(self) -> None:
        """A market's own tables are made exactly like events (no index) and stamps (id key)."""
        storage = self.open_storage()
        storage.journal_tables("BTC/USD")
        tables = storage.journal_tables("ETH2/USDC")
        self.assertEqual(tables, market_tables("ETH2/USDC"))
        self.assertEqual(tables.events, "events_eth2_usdc")
        self.assertEqual(tables.checkpoint, "ledger.ETH2-USDC.checkpoint")
        db = storage.connection

        def indexes(table: str) -> list[tuple[int, str]]:
            """(unique, origin) of each index: ``pk`` for a primary key's."""
            return [(row[2], row[3]) for row in db.execute(f"PRAGMA index_list({table})")]

        for historic, new in (("events", tables.events), ("stamps", tables.stamps)):
            self.assertEqual(
                db.execute(f"PRAGMA table_info({new})").fetchall(),
                db.execute(f"PRAGMA table_info({historic})").fetchall(),
            )
            self.assertEqual(indexes(new), indexes(historic))
        self.assertEqual((indexes(tables.events), indexes(tables.stamps)), ([], [(1, "pk")]))

    def test_only_pairs_make_tables(self) -> None:
        """A market that is not a canonical pair is refused before any SQL: nothing registered."""
        storage = self.open_storage()
        for bad in ("btc/usd", "BTC-USD", "BTC/USD; DROP TABLE events", " BTC/USD", "BTC/", ""):
            with self.subTest(market=bad):
                self.assertRaises(ValueError, storage.journal_tables, bad)
                self.assertRaises(ValueError, market_tables, bad)
        self.assertEqual(storage.stored_markets(), [])
        self.assertIn("events", self.tables(storage))

    def test_registration_is_one_transaction(self) -> None:
        """A market whose tables cannot be made leaves nothing registered, the adoption included."""
        self.legacy([event_text("ETH/USD")])
        storage = self.open_storage()
        storage.connection.execute("CREATE VIEW stamps_btc_usd AS SELECT 1")
        error = self.assertRaises(StorageError, storage.journal_tables, "BTC/USD")
        self.assertIn("cannot find or make the journal tables of BTC/USD", str(error))
        self.assertFalse(storage.connection.in_transaction)
        self.assertEqual(storage.stored_markets(), [])
        self.assertNotIn("events_btc_usd", self.tables(storage))
