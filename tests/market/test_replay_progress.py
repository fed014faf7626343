"""Tests for the replay of the journal at start: the lines that say it starts, goes on, ends.

Data path under test: :meth:`MarketService.startService` -> the journal
read back (:class:`~bitfitech.market.journal.JournalReplay`, told each
event read) -> :meth:`Ledger.load` (which tells it the events applied) ->
the log.  The replay runs before the reactor does anything, so its time
comes from a monotonic clock the market is given: here a fake, so no test
waits or reads the wall clock.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bitfitech.market import journal as journal_module
from bitfitech.market import ledger as ledger_module
from bitfitech.market.book import BookParams
from bitfitech.market.events import Author, Event
from bitfitech.market.journal import (
    REPLAY_PROGRESS_INTERVAL,
    REPLAY_QUIET,
    UNREADABLE_LOGGED,
    EventJournal,
    JournalReplay,
)
from bitfitech.market.ledger import Ledger
from bitfitech.market.service import CHECKPOINT_FILE, MarketService
from bitfitech.storage import Storage
from bitfitech.testing import TEST_NETWORK, TEST_PAIR, loopback_config


class FakeMonotonic:
    """A monotonic clock that moves only by C{step} at each reading, or when told."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 100.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def history(count: int) -> list[Event]:
    """C{count} signed orders of two authors, none of which cross."""
    authors = [Author(bytes([n + 1]) * 32, TEST_NETWORK, TEST_PAIR) for n in range(2)]
    events = []
    for i in range(count):
        author = authors[i % 2]
        side, price = ("buy", "90") if i % 2 else ("sell", "110")
        event = author.draft_order(i // 2 + 1, i + 1, 1_700_000_000_000 + i, side, "limit",
                                   price, "0.001")  # fmt: skip
        author.sign([event])
        events.append(event)
    return events


def messages(observed: EventLoggingObserver, namespace: str) -> list[str]:
    """The text of the events logged in C{namespace}."""
    return [formatEvent(e) for e in observed if e.get("log_namespace") == namespace]


class JournalReplayTests(TestCase):
    """:class:`JournalReplay` on its own: when it logs, and what."""

    def setUp(self) -> None:
        self.observed = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.clock = FakeMonotonic()
        self.replay = JournalReplay("/data/bitfi.sqlite3", 100_000, 0, self.clock)

    def lines(self) -> list[str]:
        return messages(self.observed, "bitfitech.market.journal")

    def test_short_replay_logs_start_and_end_only(self) -> None:
        self.replay.start()
        for done in range(0, 100_001, 1024):
            self.replay.read(done)
        self.clock.now += REPLAY_QUIET - 0.01
        self.replay.applying(50_000, 100_000)
        self.replay.finish(loaded=100_000, applied=100_000, resumed=0, orders=3, trades=7,
                           state_hash="ab" * 32)  # fmt: skip
        self.assertEqual(
            self.lines(),
            [
                "Replaying 100000 events from the journal in /data/bitfi.sqlite3",
                "Replayed 100000 events in 1.99 s (100000 applied, 0 restored from the "
                f"checkpoint): 3 open orders, 7 trades; state hash {'ab' * 32}",
            ],
        )
        self.assertAlmostEqual(self.replay.seconds, REPLAY_QUIET - 0.01)

    def test_long_replay_logs_progress(self) -> None:
        self.replay.start()
        self.clock.now += REPLAY_QUIET
        self.replay.read(40 * 1024)  # 2 s in: the first progress line
        self.clock.now += 1.0
        self.replay.read(41 * 1024)  # too soon for the next
        self.clock.now += REPLAY_PROGRESS_INTERVAL - 1.0
        self.replay.read(60 * 1024)  # read 20 * 1024 in 5 s since the last line
        self.clock.now += 1.0
        self.replay.applying(4096, 100_000)  # a new step, too soon: its start is noted
        self.clock.now += REPLAY_PROGRESS_INTERVAL
        self.replay.applying(64_000, 100_000)  # 59904 applied in 5 s
        self.assertEqual(
            self.lines()[1:],
            [
                "Replaying the journal: reading events, 40960 of 100000 (41 %), 20480/s",
                "Replaying the journal: reading events, 61440 of 100000 (61 %), 4096/s",
                "Replaying the journal: applying events, 64000 of 100000 (64 %), 11981/s",
            ],
        )
        progress = [e for e in self.observed if e.get("step")]
        self.assertEqual([e["log_level"] for e in progress], [LogLevel.info] * 3)
        self.assertEqual((progress[2]["done"], progress[2]["total"]), (64_000, 100_000))

    def test_reads_look_at_the_clock_now_and_then(self) -> None:
        clock = FakeMonotonic(step=1.0)
        replay = JournalReplay("/data/bitfi.sqlite3", 100_000, 0, clock)
        before = clock.now
        for done in range(1, 3 * journal_module.READ_CHECK_EVERY + 1):
            replay.read(done)
        self.assertEqual(clock.now - before, 3.0)

    def test_stamps(self) -> None:
        replay = JournalReplay("/data/bitfi.sqlite3", 10, 4096, self.clock)
        replay.start()
        self.clock.now += REPLAY_QUIET
        replay.read(1024, stamps=True)
        self.assertEqual(
            self.lines(),
            [
                "Replaying 10 events and 4096 witness stamps from the journal in "
                "/data/bitfi.sqlite3",
                "Replaying the journal: reading stamps, 1024 of 4096 (25 %), 512/s",
            ],
        )

    def test_empty_journal_logs_nothing(self) -> None:
        replay = JournalReplay("/data/bitfi.sqlite3", 0, 0, self.clock)
        replay.start()
        replay.finish(loaded=0, applied=0, resumed=0, orders=0, trades=0, state_hash="00")
        self.assertEqual(self.lines(), [])

    def test_unreadable_entries_logged_up_to_a_bound(self) -> None:
        for n in range(UNREADABLE_LOGGED + 5):
            self.replay.skip("event", f"bad {n}")
        self.replay.finish(loaded=0, applied=0, resumed=0, orders=0, trades=0, state_hash="00")
        errors = [e for e in self.observed if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), UNREADABLE_LOGGED)
        self.assertEqual(formatEvent(errors[0]), "Skipping unreadable journaled event: bad 0")
        self.assertEqual(
            formatEvent(self.observed[-1]),
            f"Skipped {UNREADABLE_LOGGED + 5} unreadable journaled events and stamps "
            f"({UNREADABLE_LOGGED} logged above)",
        )
        self.assertEqual(self.observed[-1]["log_level"], LogLevel.warn)


class LedgerProgressTests(SynchronousTestCase):
    """:meth:`Ledger.load` tells its progress callback how many events it applied."""

    def test_progress(self) -> None:
        self.patch(ledger_module, "PROGRESS_EVERY", 4)
        seen: list[tuple[int, int]] = []
        ledger = Ledger(BookParams())
        ledger.load(history(10), 0.0, None, progress=lambda done, of: seen.append((done, of)))
        self.assertEqual(seen, [(4, 10), (8, 10)])
        self.assertEqual(len(ledger), 10)

    def test_resumed_from_a_checkpoint(self) -> None:
        events = history(10)
        source = Ledger(BookParams())
        source.insert(events[:6])
        _, checkpoint = source.checkpoint()
        self.patch(ledger_module, "PROGRESS_EVERY", 2)
        seen: list[tuple[int, int]] = []
        ledger = Ledger(BookParams())
        resumed = ledger.load(events, 0.0, checkpoint, progress=lambda d, of: seen.append((d, of)))
        self.assertEqual(resumed, 6)
        self.assertEqual(seen, [(2, 4), (4, 4)])  # only the events after the checkpoint

    def test_no_progress_after_load(self) -> None:
        self.patch(ledger_module, "PROGRESS_EVERY", 1)
        seen: list[Any] = []
        events = history(6)
        ledger = Ledger(BookParams())
        ledger.load(events[:3], 0.0, None, progress=lambda *args: seen.append(args))
        ledger.insert(events[3:])
        self.assertEqual(len(seen), 3)


class MarketStartTests(TestCase):
    """A market replaying its journal at start logs it, with its time from the given clock."""

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.storage = Storage(self.data_dir)
        self.storage.open()
        self.addCleanup(self.storage.close)
        self.observed = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def start(self, monotonic: FakeMonotonic) -> MarketService:
        market = MarketService(loopback_config(self.data_dir), self.storage, Clock(),
                               monotonic=monotonic)  # fmt: skip
        market.startService()
        self.addCleanup(lambda: self.successResultOf(market.stopService()))
        return market

    def test_replay_lines(self) -> None:
        EventJournal(self.storage.connection).write(history(40), durable=False)
        self.patch(journal_module, "READ_CHECK_EVERY", 8)
        self.patch(ledger_module, "PROGRESS_EVERY", 8)
        # Each reading of the clock is a second later: progress every 5 readings.
        market = self.start(FakeMonotonic(step=1.0))
        lines = messages(self.observed, "bitfitech.market.journal")
        path = self.storage.database_path
        self.assertEqual(lines[0], f"Replaying 40 events from the journal in {path}")
        self.assertEqual(
            lines[1:-1],
            [
                "Replaying the journal: reading events, 16 of 40 (40 %), 8/s",
                "Replaying the journal: applying events, 16 of 40 (40 %), 8/s",
            ],
        )
        self.assertTrue(
            lines[-1].startswith("Replayed 40 events in 11.00 s (40 applied, 0 restored from "
                                 "the checkpoint): 40 open orders, 0 trades; state hash "),
            lines[-1],
        )  # fmt: skip
        self.assertEqual(self.observed[-1]["state_hash"], market.ledger.state_hash())
        self.assertEqual((market.loaded_events, market.load_seconds), (40, 11.0))

    def test_quick_replay(self) -> None:
        EventJournal(self.storage.connection).write(history(40), durable=False)
        market = self.start(FakeMonotonic())
        lines = messages(self.observed, "bitfitech.market.journal")
        self.assertEqual(len(lines), 2, lines)
        self.assertEqual(market.load_seconds, 0.0)

    def test_resumed_from_the_checkpoint(self) -> None:
        events = history(12)
        EventJournal(self.storage.connection).write(events, durable=False)
        ledger = Ledger(BookParams())
        ledger.insert(events[:10])
        position, checkpoint = ledger.checkpoint()
        with open(os.path.join(self.storage.data_dir, CHECKPOINT_FILE), "wb") as f:
            f.write(checkpoint)
        market = self.start(FakeMonotonic())
        self.assertEqual(market.resumed_at, position)
        self.assertIn(
            f"({12 - position} applied, {position} restored from the checkpoint)",
            messages(self.observed, "bitfitech.market.journal")[-1],
        )

    def test_unreadable_events(self) -> None:
        good = history(3)
        other = Author(b"\x09" * 32, "another-network", TEST_PAIR)
        bad = [other.draft_order(n, n, n, "buy", "limit", "90", "0.001")
               for n in range(1, UNREADABLE_LOGGED + 3)]  # fmt: skip
        other.sign(bad)
        EventJournal(self.storage.connection).write(good + bad, durable=False)
        market = self.start(FakeMonotonic())
        self.assertEqual(market.loaded_events, 3)
        errors = [e for e in self.observed if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), UNREADABLE_LOGGED)
        self.assertTrue(formatEvent(self.observed[-2]).startswith("Replayed 3 events"))
        self.assertIn("Skipped 12 unreadable", formatEvent(self.observed[-1]))

    def test_empty_journal(self) -> None:
        self.start(FakeMonotonic(step=1.0))
        self.assertEqual(messages(self.observed, "bitfitech.market.journal"), [])
