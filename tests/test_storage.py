"""Tests for :mod:`bitfitech.storage`: the data directory lock, database and migrations."""

from __future__ import annotations

import os
import sqlite3
import stat

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.identity import KEY_FILE_NAME, IdentityError
from bitfitech.storage import (
    DATABASE_NAME,
    LOCK_FILE_NAME,
    SCHEMA_VERSION,
    Storage,
    StorageError,
    StorageService,
    WriteThrough,
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
