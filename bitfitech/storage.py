"""The data directory and SQLite database: opened after configuration, before any socket.

A data directory belongs to one running node.  :class:`Storage` takes an
exclusive ``flock`` on ``LOCK`` inside it, loads (or creates) the node's
identity (:mod:`bitfitech.identity`) and opens ``bitfi.sqlite3`` in WAL mode,
bringing its schema up to date.  Every other part that persists state (the
address book, the ban list, the ledger) receives the open connection from
the composition root.  :class:`StorageService` does the opening and closing in
``startService``/``stopService``, so a node whose directory is in use or
unreadable refuses to start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator

from twisted.application.service import Service

from bitfitech.identity import NodeIdentity, load_or_create_identity
from bitfitech.logs import logger

log = logger(__name__)

DATABASE_NAME = "bitfi.sqlite3"
LOCK_FILE_NAME = "LOCK"

_CREATE_SETTINGS = """
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
)
"""

#: Schema migrations: ``MIGRATIONS[n - 1]`` takes the database from version
#: ``n - 1`` to ``n``.  Append new versions; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        _CREATE_SETTINGS,
        """
        CREATE TABLE addresses (
            host TEXT NOT NULL,
            port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
            node_id TEXT,
            source TEXT NOT NULL,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            last_attempt REAL,
            last_success REAL,
            successes INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            total_failures INTEGER NOT NULL DEFAULT 0,
            suspended_until REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (host, port)
        )
        """,
        "CREATE INDEX addresses_node_id ON addresses (node_id)",
    ),
    (
        # The event journal (bitfitech.market.journal): every event held, in
        # the order it was journaled (rowid).
        """
        CREATE TABLE events (
            id TEXT PRIMARY KEY NOT NULL,
            text TEXT NOT NULL,
            sig TEXT NOT NULL
        )
        """,
    ),
    (
        # Time-limited bans of misbehaving peers' IP addresses
        # (bitfitech.peer.bans), by canonical address; unix seconds.
        """
        CREATE TABLE bans (
            address TEXT PRIMARY KEY NOT NULL,
            node_id TEXT,
            reason TEXT NOT NULL,
            banned_at REAL NOT NULL,
            until REAL NOT NULL
        )
        """,
    ),
    (
        # Witness stamps (bitfitech.market.stamps), journaled with the
        # events: every stamp held, evidence of flagged witnesses included.
        """
        CREATE TABLE stamps (
            id TEXT PRIMARY KEY NOT NULL,
            text TEXT NOT NULL,
            sig TEXT NOT NULL
        )
        """,
    ),
    (
        # The event journal without the index on id: a random 64-digit key
        # made each insert cost 4 to 7 times as much as the row itself.
        # The market journals every event once, and loading skips any
        # repeat; the rows keep their rowids, hence their order.
        "CREATE TABLE events_v5 (id TEXT NOT NULL, text TEXT NOT NULL, sig TEXT NOT NULL)",
        "INSERT INTO events_v5 (rowid, id, text, sig) "
        "SELECT rowid, id, text, sig FROM events ORDER BY rowid",
        "DROP TABLE events",
        "ALTER TABLE events_v5 RENAME TO events",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StorageError(Exception):
    """The data directory or database cannot be used."""


class Storage:
    """
    One node's data directory: its lock, identity and SQLite database.

    Nothing touches the disk until :meth:`open`.

    :ivar data_dir: the data directory.
    """

    def __init__(self, data_dir: str) -> None:
        """
        :param data_dir: the data directory; created by :meth:`open` if missing.
        """
        self.data_dir = data_dir
        self._lock_fd: int | None = None
        self._connection: sqlite3.Connection | None = None
        self._identity: NodeIdentity | None = None

    @property
    def database_path(self) -> str:
        """The path of the SQLite database file."""
        return os.path.join(self.data_dir, DATABASE_NAME)

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` succeeded and :meth:`close` has not been called."""
        return self._connection is not None

    def open(self) -> None:
        """
        Lock the data directory, load the identity and open the database.

        :raises StorageError: if the directory cannot be created, another node
            uses it, or the database cannot be opened or migrated.
        :raises bitfitech.identity.IdentityError: if the identity key is
            unreadable or corrupt.
        """
        if self.is_open:
            raise StorageError(f"storage in {self.data_dir!r} is already open")
        try:
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise StorageError(
                f"cannot create data directory {self.data_dir!r}: {e.strerror or e}"
            ) from e
        self._lock()
        try:
            self._identity = load_or_create_identity(self.data_dir)
            self._connection = self._connect()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        path = os.path.join(self.data_dir, LOCK_FILE_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StorageError(f"cannot open lock file {path!r}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(
                f"data directory {self.data_dir!r} is in use by another bitfi node"
            ) from None
        except OSError as e:
            os.close(fd)
            raise StorageError(f"cannot lock {path!r}: {e.strerror or e}") from e
        self._lock_fd = fd

    def _connect(self) -> sqlite3.Connection:
        path = self.database_path
        try:
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StorageError(f"cannot open database {path!r}: {e}") from e
        try:
            (mode,) = connection.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StorageError(f"database {path!r} cannot use WAL journaling (got {mode!r})")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            _migrate(connection, path)
        except sqlite3.Error as e:
            connection.close()
            raise StorageError(f"cannot use database {path!r}: {e}") from e
        except BaseException:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        """Close the database and release the directory lock; safe to call twice."""
        connection, self._connection = self._connection, None
        self._identity = None
        if connection is not None:
            connection.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @property
    def connection(self) -> sqlite3.Connection:
        """
        The open database connection (autocommit; see :meth:`transaction`).

        :raises StorageError: if the storage is not open.
        """
        if self._connection is None:
            raise StorageError(f"storage in {self.data_dir!r} is not open")
        return self._connection

    @property
    def identity(self) -> NodeIdentity:
        """
        The node's identity.

        :raises StorageError: if the storage is not open.
        """
        if self._identity is None:
            raise StorageError(f"storage in {self.data_dir!r} is not open")
        return self._identity

    def get_setting(self, key: str) -> str | None:
        """
        Read a setting.

        :return: its value, or ``None`` if it was never set.
        """
        row = self.connection.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        """Store a setting, replacing any previous value."""
        _set_setting(self.connection, key, value)

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """
        Group statements atomically: ``with storage.transaction() as db: ...``.

        The outermost block runs ``BEGIN IMMEDIATE`` ... ``COMMIT``; a nested
        block becomes a savepoint.  An exception rolls the block back and
        propagates.  In-memory mirrors (such as the address book) are not
        rolled back with it.
        """
        return _transaction(self.connection)


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    if connection.in_transaction:
        name = f"bitfi_{id(object()):x}"
        connection.execute(f"SAVEPOINT {name}")
        try:
            yield connection
        except BaseException:
            connection.execute(f"ROLLBACK TO {name}")
            connection.execute(f"RELEASE {name}")
            raise
        connection.execute(f"RELEASE {name}")
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        if connection.in_transaction:  # SQLite may already have rolled back
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _set_setting(connection: sqlite3.Connection, key: str, value: str) -> None:
    connection.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


class WriteThrough:
    """
    Writes an in-memory mirror's changes through to its table (the address
    book's, the ban list's).  A write the database refuses (a full disk, a
    read-only file system, an I/O error) is logged once, not raised into
    the network code that made the change: the mirror keeps the change,
    and only a restart before the database takes writes again loses it.

    :ivar connection: the open database, or ``None`` (changes stay in memory).
    :ivar failing: whether the last write was refused.
    """

    def __init__(self, what: str) -> None:
        """:param what: names the table's contents in the log (``"the ban list"``)."""
        self.what = what
        self.connection: sqlite3.Connection | None = None
        self.failing = False

    def execute(self, sql: str, parameters: tuple[object, ...]) -> None:
        """Run one statement that writes, if there is a database; a refusal is logged once."""
        if self.connection is None:
            return
        try:
            self.connection.execute(sql, parameters)
        except sqlite3.Error as e:
            if not self.failing:
                self.failing = True
                log.warn(
                    "Cannot save {what} ({error}): changes are kept in memory until the "
                    "database takes writes again",
                    what=self.what, error=str(e),
                )  # fmt: skip
            return
        if self.failing:
            self.failing = False
            log.info("Saving {what} again", what=self.what)


def schema_version(connection: sqlite3.Connection) -> int:
    """
    Read the schema version recorded in C{connection}'s database.

    :return: the version, 0 for a new, empty database.
    """
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'settings'"
    ).fetchone()
    if exists is None:
        return 0
    row = connection.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()
    return 0 if row is None else int(row[0])


def _migrate(connection: sqlite3.Connection, path: str) -> None:
    """Bring the database at C{path} up to :data:`SCHEMA_VERSION`, one version per transaction."""
    with _transaction(connection):
        try:
            version = schema_version(connection)
        except ValueError:
            raise StorageError(f"database {path!r} has an unreadable schema_version") from None
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"database {path!r} has schema version {version}, newer than this bitfi "
            f"supports ({SCHEMA_VERSION}); upgrade bitfi"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        with _transaction(connection):
            for statement in MIGRATIONS[target - 1]:
                connection.execute(statement)
            _set_setting(connection, "schema_version", str(target))


class StorageService(Service):
    """
    Opens the storage when the node starts and closes it when it stops.

    Errors from :meth:`Storage.open` propagate out of ``startService``, so a
    node whose data directory is unusable refuses to start.
    """

    name = "storage"

    def __init__(self, storage: Storage) -> None:
        """
        :param storage: the (not yet open) storage to manage.
        """
        self.storage = storage

    def startService(self) -> None:
        """Open the storage, then mark the service running."""
        self.storage.open()
        Service.startService(self)  # type: ignore[no-untyped-call]

    def stopService(self) -> None:
        """Close the storage."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        self.storage.close()
