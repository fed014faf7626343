"""The data directory and SQLite database: opened after configuration, before any socket.

A data directory belongs to one running node.  :class:`Storage` takes an
exclusive ``flock`` on ``LOCK`` inside it, loads (or creates) the node's
identity (:mod:`bitfitech.identity`) and opens ``bitfi.sqlite3`` in WAL mode,
bringing its schema up to date.  Every other part that persists state (the
address book, the ban list, the ledger) receives the open connection from
the composition root; each market's journal is kept in the tables that
:meth:`Storage.journal_tables` names for it.  :class:`StorageService` does
the opening and closing in ``startService``/``stopService``, so a node whose
directory is in use or unreadable refuses to start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

from twisted.application.service import Service

from bitfitech.config import coerce_pair
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
    (
        # The journal tables of each market (Storage.journal_tables): the
        # historic events/stamps tables and ledger.checkpoint belong to the
        # market their rows name; each other market has tables of its own.
        """
        CREATE TABLE markets (
            market TEXT PRIMARY KEY NOT NULL,
            events TEXT NOT NULL,
            stamps TEXT NOT NULL,
            checkpoint TEXT NOT NULL,
            added_at REAL NOT NULL
        )
        """,
    ),
    (
        # The markets each known address was last said to carry (by its
        # version, or by discovery), comma-joined; '' when not known
        # (bitfitech.peer.addrbook).
        "ALTER TABLE addresses ADD COLUMN markets TEXT NOT NULL DEFAULT ''",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# A market's own journal tables have exactly the schemas of the historic
# ``events`` (since version 5) and ``stamps`` (since version 4) tables.
# Their names are made of a checked pair's letters and digits only; an
# object of that name already there (not ours) fails the registration.
_CREATE_EVENTS = "CREATE TABLE {} (id TEXT NOT NULL, text TEXT NOT NULL, sig TEXT NOT NULL)"
_CREATE_STAMPS = """
CREATE TABLE {} (
    id TEXT PRIMARY KEY NOT NULL,
    text TEXT NOT NULL,
    sig TEXT NOT NULL
)
"""

# The first field of an event's text and of a stamp's text (the market's
# events and stamps modules, a layer above); the third is the pair.
_EVENT_TAG = "bitfi1"
_STAMP_TAG = "bitfi-stamp1"


@dataclass(frozen=True)
class JournalTables:
    """
    Where one market's journal is kept (see :meth:`Storage.journal_tables`).

    :ivar events: the table of its events.
    :ivar stamps: the table of its witness stamps.
    :ivar checkpoint: its ledger checkpoint's file name, in the data directory.
    """

    events: str
    stamps: str
    checkpoint: str


#: the journal from before markets had tables of their own: a node of one
#: market writes exactly these, and they belong to the market their rows name
HISTORIC_TABLES = JournalTables("events", "stamps", "ledger.checkpoint")


def market_tables(market: str) -> JournalTables:
    """
    The journal tables a market gets when the historic ones belong to
    another: ``events_btc_usd``, ``stamps_btc_usd`` and
    ``ledger.BTC-USD.checkpoint`` for ``BTC/USD``.

    :param market: a pair ``BASE/QUOTE``, as :func:`bitfitech.config.coerce_pair`
        gives it (upper case).
    :raises ValueError: if it is not one: nothing else may reach a table name.
    """
    base, quote = _checked_pair(market).split("/")
    suffix = f"{base.lower()}_{quote.lower()}"
    return JournalTables(
        f"events_{suffix}", f"stamps_{suffix}", f"ledger.{base}-{quote}.checkpoint"
    )


def _checked_pair(market: str) -> str:
    """C{market} if it is a pair in canonical form, else :exc:`ValueError`."""
    if coerce_pair(market) != market:
        raise ValueError(f"invalid pair {market!r} (expected BASE/QUOTE in upper case)")
    return market


def _legacy_market(db: sqlite3.Connection) -> tuple[str | None, str]:
    """
    The pair the historic journal's rows name: field 3 of the first event's
    text, or of the first stamp's if there is no event.

    :return: ``(pair, "")``; ``(None, "")`` when both tables are empty;
        ``(None, why)`` when the first row names no pair.
    """
    for table, tag in (("events", _EVENT_TAG), ("stamps", _STAMP_TAG)):
        row = db.execute(f"SELECT text FROM {table} ORDER BY rowid LIMIT 1").fetchone()
        if row is None:
            continue
        fields = str(row[0]).split(" ", 3)
        if len(fields) < 3 or fields[0] != tag:
            return None, f"its first {table} row is not a {tag} text"
        try:
            return _checked_pair(fields[2]), ""
        except ValueError:
            return None, f"its first {table} row names no valid pair ({fields[2][:40]!r})"
    return None, ""


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

    def journal_tables(self, market: str, now: float | None = None) -> JournalTables:
        """
        The tables and checkpoint file of C{market}'s journal, registered in
        the ``markets`` table at its first start (one transaction).

        The historic journal (:data:`HISTORIC_TABLES`) belongs to the market
        its rows name, adopted as it is: nothing is moved or copied.  When
        it is empty, the first market asked for gets it, so a node of one
        market writes exactly the tables and file it always did.  Every
        other market gets tables of its own (:func:`market_tables`), empty.
        A journal whose first row names no pair goes to C{market} (a
        warning says so): its rows of another market, if any, are skipped
        as unreadable at replay, as they always were.

        :param market: a pair ``BASE/QUOTE`` (upper case).
        :param now: the time of the registration, unix seconds (default: now).
        :raises ValueError: if C{market} is not a pair.
        :raises StorageError: if the database refuses; nothing is registered.
        """
        _checked_pair(market)
        added_at = time.time() if now is None else now
        try:
            return self._journal_tables(market, added_at)
        except sqlite3.Error as e:
            raise StorageError(
                f"cannot find or make the journal tables of {market} in {self.database_path!r}: {e}"
            ) from e

    def _journal_tables(self, market: str, added_at: float) -> JournalTables:
        with self.transaction() as db:
            row = db.execute(
                "SELECT events, stamps, checkpoint FROM markets WHERE market = ?", (market,)
            ).fetchone()
            if row is not None:
                return JournalTables(*row)
            owner = db.execute(
                "SELECT market FROM markets WHERE events = ?", (HISTORIC_TABLES.events,)
            ).fetchone()
            if owner is None:
                legacy, unreadable = _legacy_market(db)
                if legacy is None or legacy == market:
                    if unreadable:
                        log.warn(
                            "The journal in {path} is given to {market}, but {why}: its "
                            "events of another market, if any, are skipped at replay",
                            path=self.database_path, market=market, why=unreadable,
                        )  # fmt: skip
                    else:
                        log.info(
                            "The journal of {market} is kept in the tables {events} and "
                            "{stamps} ({how})",
                            market=market, events=HISTORIC_TABLES.events,
                            stamps=HISTORIC_TABLES.stamps,
                            how="adopted" if legacy else "new",
                        )  # fmt: skip
                    _register(db, market, HISTORIC_TABLES, added_at)
                    return HISTORIC_TABLES
                log.info(
                    "The journal in the tables {events} and {stamps} is of {legacy}: it stays "
                    "that market's; {market} gets tables of its own",
                    events=HISTORIC_TABLES.events, stamps=HISTORIC_TABLES.stamps,
                    legacy=legacy, market=market,
                )  # fmt: skip
                _register(db, legacy, HISTORIC_TABLES, added_at)
            tables = market_tables(market)
            db.execute(_CREATE_EVENTS.format(tables.events))
            db.execute(_CREATE_STAMPS.format(tables.stamps))
            _register(db, market, tables, added_at)
            log.info(
                "New journal of {market} in the tables {events} and {stamps}",
                market=market, events=tables.events, stamps=tables.stamps,
            )  # fmt: skip
            return tables

    def stored_markets(self) -> list[str]:
        """Every market with a journal in the database, in the order they were added."""
        rows = self.connection.execute("SELECT market FROM markets ORDER BY rowid")
        return [str(market) for (market,) in rows]


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


def _register(db: sqlite3.Connection, market: str, tables: JournalTables, now: float) -> None:
    db.execute(
        "INSERT INTO markets (market, events, stamps, checkpoint, added_at) VALUES (?, ?, ?, ?, ?)",
        (market, tables.events, tables.stamps, tables.checkpoint, now),
    )


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
