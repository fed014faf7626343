"""The event journal: every event a node holds, in its SQLite database.

Data path: :class:`~bitfitech.market.service.MarketService` ->
:class:`EventJournal` -> the ``events`` table.  An event is stored as the
text and signature it travels as, keyed by its id; reading the journal back
in the order it was written and inserting it into a fresh ledger rebuilds
the same book, because the book depends only on the set of events.

A batch is one transaction.  :meth:`EventJournal.write` with
``durable=True`` (for batches holding this node's own orders, which are
acknowledged to the user only afterwards) commits with
``PRAGMA synchronous=FULL``, so the commit survives a power cut, not only a
killed process; other batches commit with the database's NORMAL setting,
because a lost peer event is fetched again from the peers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

from .events import Event


class JournalError(Exception):
    """The journal could not be written; nothing of the batch was kept."""


class EventJournal:
    """
    Append-only storage of events.

    :param connection: the node's open database (autocommit mode).
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __len__(self) -> int:
        """How many events are journaled."""
        (count,) = self.connection.execute("SELECT count(*) FROM events").fetchone()
        return int(count)

    def load(self) -> Iterator[tuple[str, str]]:
        """Every journaled event as ``(text, sig)``, in the order written."""
        cursor = self.connection.execute("SELECT text, sig FROM events ORDER BY rowid")
        while rows := cursor.fetchmany(4096):
            yield from rows

    def write(self, events: Iterable[Event], *, durable: bool) -> int:
        """
        Journal C{events} in one transaction; events already there are skipped.

        :param durable: commit with ``synchronous=FULL`` (an fsync of the WAL).
        :return: how many rows were written.
        :raises JournalError: if the database refuses; the batch is rolled back.
        """
        rows = [(event.id, event.text, event.sig) for event in events]
        if not rows:
            return 0
        db = self.connection
        try:
            if durable:
                db.execute("PRAGMA synchronous=FULL")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    before = db.total_changes
                    db.executemany(
                        "INSERT OR IGNORE INTO events (id, text, sig) VALUES (?, ?, ?)", rows
                    )
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
            raise JournalError(f"cannot journal {len(rows)} events: {e}") from e
        return written
