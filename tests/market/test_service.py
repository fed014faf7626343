"""Tests for :class:`bitfitech.market.service.MarketService`: the journal pipeline.

Own orders are signed at once, written and synced as one group, and only
then applied, published and acknowledged; peer events are buffered and
applied at a tick; a failure of the journal fails the orders it concerns,
refuses new ones until the journal works again and recovers by itself;
stopping journals everything on its way; the apply delay grows under heavy
rollbacks and comes back.  Two markets on one storage keep separate
journals and checkpoints.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

from nacl.bindings import crypto_sign_seed_keypair
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from bitfitech.identity import node_id_from_public_key
from bitfitech.interfaces import ServiceUnavailable
from bitfitech.market import service as service_module
from bitfitech.market.events import Author, Event, verify_event
from bitfitech.market.interfaces import IEventPublisher
from bitfitech.market.journal import (
    EventJournal,
    InlineSyncer,
    JournalError,
    ThreadedSyncer,
    write_file,
)
from bitfitech.market.ledger import InsertResult
from bitfitech.market.service import (
    ACTIVE_AFTER,
    ADAPT_WINDOW,
    HEARTBEAT_LEAD,
    IDLE_STAMP,
    JOURNAL_RETRY,
    JOURNAL_RETRY_MAX,
    LOAD_RATE,
    MAX_APPLY_DELAY,
    MIN_STAMP_GAP,
    REACH_FRESH,
    RECEIPT_DELAY,
    RELIST_WINDOWS,
    WITNESS_START_DELAY,
    MarketService,
)
from bitfitech.market.stamps import NO_PREV, Stamp, StampSigner
from bitfitech.storage import HISTORIC_TABLES, Storage, market_tables
from bitfitech.testing import TEST_NETWORK, TEST_PAIR, loopback_config, node_id_of
from bitfitech.witnesses import WitnessSet


class ManualSyncer:
    """A syncer whose syncs fire when the test says so."""

    def __init__(self) -> None:
        self.calls: list[Deferred[None]] = []
        self.written: list[str] = []
        self.closed = False
        self.flushed = 0

    def sync(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.calls.append(d)
        return d

    def write_file(self, path: str, data: bytes) -> Deferred[None]:
        self.written.append(path)
        write_file(path, data)
        return succeed(None)

    def close(self) -> None:
        self.closed = True

    def wal_flushed(self) -> None:
        self.flushed += 1


@implementer(IEventPublisher)
class Publisher:
    """Records what the market publishes."""

    def __init__(self) -> None:
        self.published: list[Event] = []
        self.stamps: list[Stamp] = []

    def publish(self, events: Sequence[Event]) -> None:
        self.published.extend(events)

    def publish_stamps(self, stamps: Sequence[Stamp]) -> None:
        self.stamps.extend(stamps)


def peer_author(number: int) -> Author:
    return Author(bytes([number]) * 32, TEST_NETWORK, TEST_PAIR)


class MarketTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.clock = Clock()
        self.storage = Storage(self.data_dir)
        self.storage.open()
        self.addCleanup(self.storage.close)
        self.syncer = ManualSyncer()
        self.market = self.make_market()
        self.market.startService()
        self.addCleanup(self.stop)

    def make_market(self) -> MarketService:
        market = MarketService(
            loopback_config(self.data_dir), self.storage, self.clock,
            syncer=lambda storage: self.syncer,
        )  # fmt: skip
        self.publisher = Publisher()
        market.add_publisher(self.publisher)
        return market

    def stop(self) -> None:
        if self.market.running:
            d = self.market.stopService()
            for call in self.syncer.calls:
                if not call.called:
                    call.callback(None)
            self.successResultOf(d)

    def journaled(self) -> list[str]:
        return [text for text, _ in EventJournal(self.storage.connection).load()]

    def submit(self, price: str = "100") -> Deferred[Event]:
        return self.market.submit("buy", price, "1", "limit")


class OwnOrderTests(MarketTestCase):
    def test_group_commit(self) -> None:
        """Orders signed in one reactor turn are written together and synced once."""
        orders = [self.submit(str(100 + n)) for n in range(3)]
        self.assertEqual((self.syncer.calls, self.journaled()), ([], []))
        self.clock.advance(0)
        self.assertEqual(len(self.syncer.calls), 1)
        self.assertEqual(len(self.journaled()), 3)
        self.assertEqual(self.market.journal_writes, 1)
        for d in orders:
            self.assertNoResult(d)

    def test_group_shares_one_signature(self) -> None:
        """
        A group commit signs its events together: one batch signature, each
        event verifiable alone, and the journal holds them as published.
        """
        orders = [self.submit(str(100 + n)) for n in range(3)]
        self.clock.advance(0)
        self.syncer.calls[0].callback(None)
        events = [self.successResultOf(d) for d in orders]
        self.assertEqual([event.sig[:5] for event in events], ["b3.0.", "b3.1.", "b3.2."])
        self.assertEqual(len({event.sig.split(".")[2][:128] for event in events}), 1)
        self.assertTrue(all(verify_event(event) for event in events))
        self.assertEqual(list(EventJournal(self.storage.connection).load()),
                         [event.wire for event in events])  # fmt: skip
        self.assertEqual(self.publisher.published, events)

    def test_single_order_signed_alone(self) -> None:
        """An order alone in its group gets its own plain signature."""
        d = self.submit()
        self.clock.advance(0)
        self.syncer.calls[0].callback(None)
        event = self.successResultOf(d)
        self.assertEqual(len(event.sig), 128)
        self.assertTrue(verify_event(event))

    def test_acknowledged_only_after_sync(self) -> None:
        """Before the fsync: not applied, not published, not acknowledged."""
        d = self.submit()
        self.clock.advance(0)
        self.assertNoResult(d)
        self.assertEqual((len(self.market.ledger), self.publisher.published), (0, []))
        self.syncer.calls[0].callback(None)
        event = self.successResultOf(d)
        self.assertIn(event.id, self.market.ledger)
        self.assertEqual(self.publisher.published, [event])
        self.assertIsNotNone(self.market.ledger.open_order(event.id))

    def test_signed_during_sync_make_next_group(self) -> None:
        first = self.submit("100")
        self.clock.advance(0)
        later = [self.submit("101"), self.submit("102")]
        self.clock.advance(0)
        self.assertEqual(len(self.syncer.calls), 1, "one sync in flight at a time")
        self.syncer.calls[0].callback(None)
        self.assertEqual(self.successResultOf(first).seq, 1)
        self.assertEqual(len(self.syncer.calls), 2)
        self.syncer.calls[1].callback(None)
        self.assertEqual([self.successResultOf(d).seq for d in later], [2, 3])

    def test_sync_failure_fails_the_group_and_refuses_orders(self) -> None:
        """
        A failed fsync fails its group and the orders signed since, and
        orders are refused until the journal works again (JournalFaultTests).
        """
        d = self.submit()
        self.clock.advance(0)
        waiting = self.submit("101")
        self.syncer.calls[0].errback(OSError(5, "Input/output error"))
        for failed in (d, waiting):
            self.failureResultOf(failed, ServiceUnavailable)
        with self.assertRaises(ServiceUnavailable) as caught:
            self.submit()
        self.assertIn("Input/output error", str(caught.exception))
        self.assertEqual(self.market.journal_failures, 1)

    def test_write_failure_reuses_seq(self) -> None:
        """A refused write keeps nothing; the next order takes the failed seq."""
        journal = self.market._journal  # noqa: SLF001
        assert journal is not None

        def refuse(events: Any, *, durable: bool, stamps: Any = ()) -> int:
            raise JournalError("disk full")

        journal.write = refuse  # type: ignore[method-assign]
        d = self.submit()
        self.clock.advance(0)
        self.assertIn("disk full", str(self.failureResultOf(d, ServiceUnavailable).value))
        del journal.write
        self.clock.advance(JOURNAL_RETRY)
        self.syncer.calls[0].callback(None)  # the retry's
        again = self.submit()
        self.clock.advance(0)
        self.syncer.calls[1].callback(None)
        self.assertEqual(self.successResultOf(again).seq, 1)


class JournalFaultTests(MarketTestCase):
    """
    A journal that cannot be written (full disk, I/O error, read-only):
    orders are refused with the reason, reads keep working, peers' events
    are kept and written later, the cause is logged once, and the market
    recovers by itself once the database takes writes again.

    The database is made to refuse writes for real, on demand, with
    ``PRAGMA query_only``.
    """

    def setUp(self) -> None:
        super().setUp()
        self.observer = EventLoggingObserver()
        globalLogPublisher.addObserver(self.observer)
        self.addCleanup(globalLogPublisher.removeObserver, self.observer)

    def refuse_writes(self, refuse: bool = True) -> None:
        self.storage.connection.execute(f"PRAGMA query_only = {int(refuse)}")

    def logged(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.observer if text in e.get("log_format", "")]

    def fail_the_journal(self) -> None:
        self.refuse_writes()
        d = self.submit()
        self.clock.advance(0)
        error = self.failureResultOf(d, ServiceUnavailable).value
        self.assertIn("the journal cannot be written", str(error))
        self.assertIn("readonly", str(error))

    def test_orders_refused_with_the_reason_logged_once(self) -> None:
        self.fail_the_journal()
        for price in ("101", "102", "103"):
            with self.assertRaises(ServiceUnavailable) as caught:
                self.submit(price)
            self.assertIn("the journal cannot be written", str(caught.exception))
        self.clock.pump([1.0] * 30)  # retries
        self.assertEqual(len(self.logged("The journal cannot be written")), 1)
        self.assertGreater(self.market.journal_failures, 3)
        self.assertIn("cannot be written", self.market.status()["market"]["journal_error"])

    def test_reads_work_and_peer_events_are_kept_then_written(self) -> None:
        self.fail_the_journal()
        peer = peer_author(1).order(1, 1, 0, "sell", "limit", "200", "1")
        self.market.receive([peer])
        self.clock.advance(self.market.apply_delay)
        self.assertIn(peer.id, self.market.ledger, "applied, readable")
        self.assertEqual(self.journaled(), [])
        self.refuse_writes(False)
        self.clock.advance(JOURNAL_RETRY)
        self.assertEqual(len(self.syncer.calls), 1, "the retry syncs what it wrote")
        self.assertNoResult(self.syncer.calls[0])
        self.syncer.calls[0].callback(None)
        self.assertEqual(self.journaled(), [peer.text])
        self.assertIsNone(self.market.status()["market"]["journal_error"])
        self.assertEqual(len(self.logged("can be written again")), 1)

    def test_recovers_by_itself_and_takes_orders_again(self) -> None:
        self.fail_the_journal()
        self.clock.pump([JOURNAL_RETRY_MAX] * 5)
        self.assertEqual(self.syncer.calls, [], "no sync while writes fail")
        self.refuse_writes(False)
        self.clock.advance(JOURNAL_RETRY_MAX)
        self.syncer.calls[0].callback(None)
        d = self.submit()
        self.clock.advance(0)
        self.syncer.calls[1].callback(None)
        self.assertEqual(self.successResultOf(d).seq, 1, "the failed order's seq is reused")
        self.assertEqual(len(self.journaled()), 1)

    def test_retries_back_off(self) -> None:
        self.fail_the_journal()
        failures = []
        for _ in range(8):
            self.clock.advance(JOURNAL_RETRY_MAX)
            failures.append(self.market.journal_failures)
        steps = [later - earlier for earlier, later in zip(failures, failures[1:], strict=False)]
        self.assertEqual(steps[-3:], [1, 1, 1], "one retry per JOURNAL_RETRY_MAX at most")

    def test_failed_fsync_copies_the_wal_before_taking_orders(self) -> None:
        """
        After a failed fsync, the retry first copies the write-ahead log
        into the database (what was written may not be on disk), then
        syncs; orders are taken once that sync succeeded.
        """
        first = self.submit()
        self.clock.advance(0)
        self.syncer.calls[0].errback(OSError(5, "Input/output error"))
        self.failureResultOf(first, ServiceUnavailable)
        flushes = []
        journal = self.market._journal  # noqa: SLF001
        assert journal is not None
        real_flush = journal.flush_wal

        def flush_wal() -> None:
            flushes.append(True)
            real_flush()

        journal.flush_wal = flush_wal  # type: ignore[method-assign]
        self.clock.advance(JOURNAL_RETRY)
        self.assertEqual(flushes, [True])
        self.syncer.calls[1].errback(OSError(5, "Input/output error"))
        with self.assertRaises(ServiceUnavailable):
            self.submit()
        self.clock.advance(JOURNAL_RETRY_MAX)
        self.assertEqual(flushes, [True, True], "copied again after another failed fsync")
        self.syncer.calls[2].callback(None)
        d = self.submit()
        self.clock.advance(0)
        self.syncer.calls[3].callback(None)
        self.assertEqual(self.successResultOf(d).seq, 2, "the unsynced order's seq is not reused")

    def test_stop_does_not_wait_for_the_journal(self) -> None:
        self.fail_the_journal()
        peer = peer_author(1).order(1, 1, 0, "sell", "limit", "200", "1")
        self.market.receive([peer])
        self.clock.advance(self.market.apply_delay)
        self.successResultOf(self.market.stopService())
        self.assertEqual(len(self.logged("not journaled")), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_writes_what_waits_if_the_journal_works_again(self) -> None:
        self.fail_the_journal()
        peer = peer_author(1).order(1, 1, 0, "sell", "limit", "200", "1")
        self.market.receive([peer])
        self.clock.advance(self.market.apply_delay)
        self.refuse_writes(False)
        self.successResultOf(self.market.stopService())
        self.assertEqual(self.journaled(), [peer.text])


class ClockTests(MarketTestCase):
    def test_lamport_time_follows_wall_clock(self) -> None:
        """
        Own events take the wall clock (ms) as Lamport time when it is ahead
        of every Lamport time held, and stay strictly increasing.
        """
        self.clock.advance(1_800_000_000)
        first = self.submit()
        second = self.submit()
        self.clock.advance(0)
        self.syncer.calls[0].callback(None)
        lamports = [self.successResultOf(d).lamport for d in (first, second)]
        self.assertEqual(lamports, [1_800_000_000_000, 1_800_000_000_001])

    def test_lamport_time_above_everything_held(self) -> None:
        """A peer's event ahead of the wall clock sets the floor for ours."""
        self.clock.advance(1_800_000_000)
        ahead = 1_800_000_000_000 + 10**9
        self.market.receive([peer_author(3).order(1, ahead, 0, "sell", "limit", "100", "1")])
        d = self.submit()
        self.clock.advance(0)
        self.syncer.calls[0].callback(None)
        self.assertEqual(self.successResultOf(d).lamport, ahead + 1)


class PeerEventTests(MarketTestCase):
    def test_buffered_then_applied_and_journaled(self) -> None:
        events = [peer_author(1).order(seq, seq, 0, "sell", "limit", "100", "1") for seq in (1, 2)]
        self.market.receive(events)
        self.assertTrue(self.market.has(events[0].id))
        self.assertEqual(len(self.market.ledger), 0)
        self.clock.advance(self.market.apply_delay)
        self.assertEqual(len(self.market.ledger), 2)
        self.assertEqual(len(self.journaled()), 2)
        self.assertEqual(self.syncer.calls, [], "peer events are not synced")

    def test_own_order_sorts_after_buffered_events(self) -> None:
        peer = peer_author(1).order(1, 7, 0, "sell", "limit", "100", "1")
        self.market.receive([peer])
        d = self.submit()
        self.clock.advance(0)
        self.syncer.calls[0].callback(None)
        self.clock.advance(self.market.apply_delay)
        event = self.successResultOf(d)
        self.assertEqual(event.lamport, 8)
        self.assertEqual(self.market.ledger.trade_count, 1)


class StopTests(MarketTestCase):
    def test_stop_journals_everything_on_its_way(self) -> None:
        peer = peer_author(1).order(1, 1, 0, "sell", "limit", "200", "1")
        self.market.receive([peer])
        d = self.submit()
        self.clock.advance(0)
        waiting = self.submit("101")
        stopped = self.market.stopService()
        self.assertNoResult(stopped)
        self.syncer.calls[0].callback(None)
        self.assertNoResult(stopped)
        self.syncer.calls[1].callback(None)
        self.successResultOf(stopped)
        self.successResultOf(d)
        self.successResultOf(waiting)
        self.assertEqual(len(self.journaled()), 3)
        self.assertTrue(self.syncer.closed)
        with self.assertRaises(ServiceUnavailable):
            self.market.ledger  # noqa: B018

    def test_orders_refused_while_stopping(self) -> None:
        self.submit()
        self.clock.advance(0)
        self.market.stopService()
        with self.assertRaises(ServiceUnavailable):
            self.submit()

    def test_restart_loads_journal(self) -> None:
        d = self.submit()
        self.clock.advance(0)
        self.syncer.calls[0].callback(None)
        event = self.successResultOf(d)
        self.stop()
        self.market = self.make_market()
        self.market.startService()
        self.assertIn(event.id, self.market.ledger)
        self.assertEqual(self.market.loaded_events, 1)
        later = self.submit()
        self.clock.advance(0)
        self.syncer.calls[-1].callback(None)
        self.assertEqual(self.successResultOf(later).seq, 2)


class CheckpointTests(MarketTestCase):
    def fill(self) -> list[Event]:
        peers = [peer_author(4).order(seq, seq, 0, "sell", "limit", "100", "1") for seq in (1, 2)]
        self.market.receive(peers)
        d = self.submit("100")
        self.clock.advance(0)
        self.syncer.calls[-1].callback(None)
        self.clock.advance(self.market.apply_delay)
        return [*peers, self.successResultOf(d)]

    def restart(self) -> None:
        self.stop()
        self.market = self.make_market()
        self.market.startService()

    def test_restart_resumes_from_checkpoint(self) -> None:
        self.fill()
        before = self.market.ledger.state_hash()
        self.restart()
        self.assertEqual(self.market.resumed_at, 3)
        self.assertEqual(self.market.ledger.state_hash(), before)
        self.assertEqual(self.market.status()["market"]["resumed_at"], 3)

    def test_settled_part_kept_while_running(self) -> None:
        """
        Once enough events are settled, a checkpoint of the settled part is
        written while the node runs: a node killed afterwards resumes from
        it, and ends as a full replay would.
        """
        self.patch(service_module, "CHECKPOINT_EVENTS", 4)
        author = peer_author(6)
        events = [
            author.order(seq, seq, 0, "buy" if seq % 2 else "sell", "limit", "100", "1")
            for seq in range(1, 121)
        ]
        self.market.receive(events[:100])
        self.clock.advance(self.market.config.settle_after + 1)
        self.clock.advance(service_module.CHECKPOINT_INTERVAL)
        self.assertEqual(self.syncer.written, [self.market.checkpoint_path])
        self.market.receive(events[100:])
        self.clock.advance(self.market.apply_delay)
        before = self.market.ledger.state_hash()
        # Killed: no stop, no checkpoint at the end.  A new market on the same storage.
        self.market = self.make_market()
        self.market.startService()
        self.assertGreater(self.market.resumed_at, 0)
        self.assertLessEqual(self.market.resumed_at, 100)
        self.assertEqual(self.market.ledger.state_hash(), before)

    def test_stale_checkpoint_ignored(self) -> None:
        """Events journaled after the checkpoint was written (a crash) still count."""
        self.fill()
        self.stop()
        late = peer_author(5).order(1, 1, 0, "buy", "limit", "100", "1")
        EventJournal(self.storage.connection).write([late], durable=False)
        self.market = self.make_market()
        self.market.startService()
        self.assertEqual(self.market.resumed_at, 0)
        self.assertIn(late.id, self.market.ledger)

    def test_unreadable_checkpoint_ignored(self) -> None:
        self.fill()
        before = self.market.ledger.state_hash()
        self.stop()
        with open(self.market.checkpoint_path, "wb") as f:
            f.write(b"not a checkpoint")
        self.market = self.make_market()
        self.market.startService()
        self.assertEqual((self.market.resumed_at, self.market.ledger.state_hash()), (0, before))


class ThreadedSyncerTests(TestCase):
    """The syncer's thread, with the real reactor."""

    async def test_syncs_in_its_thread_and_stops(self) -> None:
        from twisted.internet import reactor

        storage = Storage(self.mktemp())
        storage.open()
        self.addCleanup(storage.close)
        syncer = ThreadedSyncer(reactor, storage.database_path)
        await syncer.sync()
        await syncer.sync()
        syncer.close()
        self.assertFalse(syncer._thread.is_alive())  # noqa: SLF001

    async def test_failure_reported(self) -> None:
        from twisted.internet import reactor

        syncer = ThreadedSyncer(reactor, self.mktemp())
        self.addCleanup(syncer.close)
        with self.assertRaises(OSError):
            await syncer.sync()


class InlineSyncerTests(SynchronousTestCase):
    def test_syncs_database(self) -> None:
        storage = Storage(self.mktemp())
        storage.open()
        self.addCleanup(storage.close)
        self.successResultOf(InlineSyncer(storage.database_path).sync())

    def test_failure(self) -> None:
        self.failureResultOf(InlineSyncer(self.mktemp()).sync(), OSError)


class AdaptTests(MarketTestCase):
    def feed(self, new: int, replayed: int, seconds: float) -> None:
        """Report inserts of C{new} events replaying C{replayed}, over C{seconds}."""
        result = InsertResult()
        result.new = [None] * new  # type: ignore[list-item]
        result.replayed = replayed
        self.clock.advance(seconds)
        self.market._adapt(result, self.clock.seconds())  # noqa: SLF001

    def test_grows_under_heavy_replays_and_comes_back(self) -> None:
        base = self.market.config.apply_delay
        self.feed(0, 0, 0)
        busy = int(LOAD_RATE * ADAPT_WINDOW * 2)
        self.feed(busy, 3 * busy, ADAPT_WINDOW)
        self.assertEqual(self.market.apply_delay, base * 2)
        for _ in range(20):
            self.feed(busy, 3 * busy, ADAPT_WINDOW)
        self.assertEqual(self.market.apply_delay, MAX_APPLY_DELAY)
        self.feed(busy, int(1.5 * busy), ADAPT_WINDOW)
        self.assertEqual(self.market.apply_delay, MAX_APPLY_DELAY, "between 1 and 2x: kept")
        for _ in range(20):
            self.feed(busy, busy // 2, ADAPT_WINDOW)
        self.assertEqual(self.market.apply_delay, base)

    def test_light_load_keeps_configured_delay(self) -> None:
        """Replays that are many per new event, under a light load, change nothing."""
        base = self.market.config.apply_delay
        self.feed(0, 0, 0)
        for _ in range(10):
            self.feed(int(LOAD_RATE * ADAPT_WINDOW / 4), 10_000, ADAPT_WINDOW)
        self.assertEqual(self.market.apply_delay, base)

    def test_heavy_load_delays_peer_events(self) -> None:
        """The grown delay is what buffered peer events wait."""
        self.market.apply_delay = MAX_APPLY_DELAY
        event = peer_author(2).order(1, 1, 0, "buy", "limit", "100", "1")
        self.market.receive([event])
        self.clock.advance(MAX_APPLY_DELAY / 2)
        self.assertNotIn(event.id, self.market.ledger)
        self.clock.advance(MAX_APPLY_DELAY / 2)
        self.assertIn(event.id, self.market.ledger)


class WitnessTestCase(MarketTestCase):
    """A market that is one of the witnesses, driven by the clock."""

    publisher: Publisher

    def run_until(self, end: float) -> None:
        """Advance the clock to C{end}, stopping at each call due on the way (at its time)."""
        while True:
            due = [c.getTime() for c in self.clock.getDelayedCalls() if c.getTime() <= end]
            if not due:
                break
            self.clock.advance(max(0.0, min(due) - self.clock.seconds()))
        self.clock.advance(max(0.0, end - self.clock.seconds()))

    def start_witnessing(self) -> None:
        """Past the start delay, and the stamp signed then."""
        self.clock.advance(WITNESS_START_DELAY)
        self.clock.advance(0)
        self.publisher.stamps.clear()


class WitnessStampTests(WitnessTestCase):
    """This node as one of three witnesses: its stamps and its journal."""

    def make_market(self) -> MarketService:
        own = self.storage.identity.node_id
        market = MarketService(
            loopback_config(self.data_dir), self.storage, self.clock,
            syncer=lambda storage: self.syncer,
            witnesses=WitnessSet.of([own, node_id_of(1), node_id_of(2)]),
        )  # fmt: skip
        self.publisher = Publisher()
        market.add_publisher(self.publisher)
        return market

    def journaled_stamps(self) -> list[str]:
        return [text for text, _ in EventJournal(self.storage.connection).load_stamps()]

    def test_stamp_journaled_before_published(self) -> None:
        """
        Every stamp the witness has sent out is in its journal, even while
        an own order's fsync is in flight: a witness killed then restarts
        with its whole chain, and does not sign one of its seqs twice
        (which would get it flagged on every node).
        """
        self.clock.advance(WITNESS_START_DELAY + 0.1)
        self.clock.advance(0)
        self.submit()
        self.clock.advance(0)
        self.assertEqual(len(self.syncer.calls), 1)  # the order's fsync, not done yet
        self.clock.advance(0.1)
        self.clock.advance(0)
        self.assertEqual(len(self.publisher.stamps), 2)
        self.assertEqual(
            sorted(self.journaled_stamps()), sorted(stamp.text for stamp in self.publisher.stamps)
        )

    def test_no_stamp_while_the_journal_cannot_be_written(self) -> None:
        """
        A stamp is journaled before it is sent: while the database refuses
        writes the witness signs none (no seq is used twice), and once it
        takes them again the chain goes on from where it was, the events
        seen meanwhile listed.
        """
        self.clock.advance(WITNESS_START_DELAY + 0.1)
        self.clock.advance(0)
        before = len(self.publisher.stamps)
        self.assertGreater(before, 0)
        self.storage.connection.execute("PRAGMA query_only = 1")
        self.clock.pump([0.1] * 5)
        peer = peer_author(1).order(1, 1, 0, "sell", "limit", "200", "1")
        self.market.receive([peer])
        self.clock.pump([0.1] * 5)
        self.assertEqual(len(self.publisher.stamps), before)
        self.assertIsNotNone(self.market.status()["market"]["journal_error"])
        self.storage.connection.execute("PRAGMA query_only = 0")
        self.clock.advance(JOURNAL_RETRY_MAX)
        self.syncer.calls[-1].callback(None)
        self.clock.pump([0.1] * 3)
        stamps = self.publisher.stamps
        self.assertEqual([stamp.seq for stamp in stamps], list(range(1, len(stamps) + 1)))
        listed = {event_id for stamp in stamps[before:] for event_id, _ in stamp.receipts}
        self.assertIn(peer.id, listed)
        self.assertEqual(sorted(self.journaled_stamps()), sorted(stamp.text for stamp in stamps))

    def test_receipt_signed_soon(self) -> None:
        """A witness signs the receipt of an event within RECEIPT_DELAY of seeing it."""
        self.start_witnessing()
        self.clock.advance(MIN_STAMP_GAP + 0.003)
        seen = self.clock.seconds()
        event = peer_author(2).order(1, 1, 0, "buy", "limit", "100", "1")
        self.market.receive([event])
        self.clock.advance(RECEIPT_DELAY)
        (stamp,) = self.publisher.stamps
        self.assertEqual([event_id for event_id, _ in stamp.receipts], [event.id])
        self.assertEqual(stamp.t - dict(stamp.receipts)[event.id], int(seen * 1_000_000))
        self.assertApproximates(stamp.t, int((seen + RECEIPT_DELAY) * 1_000_000), 1)

    def test_busy_heartbeats_at_settling_points(self) -> None:
        """
        While busy, a witness signs a heartbeat every STAMP_MS, just after
        each slot's end plus the counting window: the stamp that settles it.
        """
        self.start_witnessing()
        event = peer_author(2).order(1, 1, 0, "buy", "limit", "100", "1")
        self.market.receive([event])
        self.run_until(self.clock.seconds() + 0.5)
        heartbeats = [s for s in self.publisher.stamps if not s.receipts]
        self.assertGreaterEqual(len(heartbeats), 4)
        witnesses = self.market.witnesses
        phase = (witnesses.window_ms * 1000 + int(HEARTBEAT_LEAD * 1_000_000)) % (
            witnesses.stamp_ms * 1000
        )
        for stamp in heartbeats:  # (the clock's floats may put one a microsecond early)
            self.assertApproximates(stamp.t % (witnesses.stamp_ms * 1000), phase, 1)

    def test_idle_heartbeat(self) -> None:
        """On an idle network a witness signs a heartbeat every IDLE_STAMP only."""
        self.start_witnessing()
        self.clock.advance(ACTIVE_AFTER)
        self.publisher.stamps.clear()
        self.run_until(self.clock.seconds() + 3 * IDLE_STAMP + 0.01)
        times = [stamp.t for stamp in self.publisher.stamps]
        self.assertEqual(len(times), 3)
        for a, b in zip(times, times[1:], strict=False):
            self.assertApproximates(b - a, int(IDLE_STAMP * 1_000_000), 1)

    def test_no_stamp_after_stop(self) -> None:
        """A stopped witness signs nothing more, whatever it saw while stopping."""
        self.start_witnessing()
        self.market.stopService()
        self.publisher.stamps.clear()
        self.clock.advance(IDLE_STAMP * 3)
        self.assertEqual(self.publisher.stamps, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restarted_witness_lists_what_waits(self) -> None:
        """
        A witness stopped before its stamp listed an event (or whose
        receipt did not count) lists, at its first stamp after a restart,
        every held event that has no fair time and no counted receipt of
        its own, as seen then: else an event the other witnesses' receipts
        alone do not order would wait forever.
        """
        author = peer_author(2)
        events = [author.order(seq, seq, 0, "buy", "limit", "100", "1") for seq in (1, 2)]
        self.market.receive(events)
        self.clock.advance(self.market.apply_delay)  # applied and journaled, not stamped yet
        self.market.stopService()
        self.assertEqual(self.publisher.stamps, [])
        self.market = self.make_market()
        self.market.startService()
        self.clock.advance(WITNESS_START_DELAY)  # its first stamp: nothing new seen
        self.clock.advance(0)
        listed = [event_id for stamp in self.publisher.stamps for event_id, _ in stamp.receipts]
        self.assertEqual(listed, [event.id for event in events])

    def test_receipts_under_load_batched(self) -> None:
        """Under a steady stream of events, receipt stamps come MIN_STAMP_GAP apart at the least."""
        self.start_witnessing()
        author = peer_author(2)
        for seq in range(1, 101):
            self.market.receive([author.order(seq, seq, 0, "buy", "limit", "100", "1")])
            self.run_until(self.clock.seconds() + 0.002)
        self.run_until(self.clock.seconds() + MIN_STAMP_GAP)
        stamps = [s for s in self.publisher.stamps if s.receipts]
        self.assertEqual(sum(len(s.receipts) for s in stamps), 100)
        gaps = [b.t - a.t for a, b in zip(stamps, stamps[1:], strict=False)]
        self.assertGreaterEqual(min(gaps), int(MIN_STAMP_GAP * 1_000_000) - 1)
        self.assertLessEqual(len(stamps), 10)

    def test_listed_again_with_backoff(self) -> None:
        """
        An event whose receipt has not counted is listed again
        RELIST_WINDOWS windows later, then twice as long after each
        listing; while a silent witness's stamps could still make it count
        (here no other witness ever stamps), REACH_FRESH past the window.
        """
        self.start_witnessing()
        event = peer_author(2).order(1, 1, 0, "buy", "limit", "100", "1")
        self.market.receive([event])
        self.run_until(self.clock.seconds() + 14.5)
        listed = [s.t for s in self.publisher.stamps if event.id in dict(s.receipts)]
        window = self.market.witnesses.window_ms * 1000
        patience = window + int(REACH_FRESH * 1_000_000)
        gaps = [b - a for a, b in zip(listed, listed[1:], strict=False)]
        self.assertEqual(len(listed), 5)  # at 0, 2.2, 4.4, 7.0 and 11 s, about
        for gap, times in zip(gaps, (1, 2, 4, 8), strict=True):
            # Patience runs from the receipt, up to a window before its
            # stamp; the listing is at the next stamp (once idle, one comes
            # every IDLE_STAMP).
            least = max(patience, RELIST_WINDOWS * window * times)
            self.assertGreaterEqual(gap, least - window)
            self.assertLess(gap, least + IDLE_STAMP * 1_000_000)
        self.assertEqual(self.market.relisted, 4)


class WitnessReachTests(WitnessTestCase):
    """
    This node as one of three witnesses whose co-witnesses sign real
    stamps: how long its stamps take to reach them sets how its receipts
    are fitted, and whether events are listed again.
    """

    def make_market(self) -> MarketService:
        own = self.storage.identity.node_id
        seeds = [hashlib.sha256(f"co-witness {n}".encode()).digest() for n in range(2)]
        ids = [node_id_from_public_key(crypto_sign_seed_keypair(seed)[0]) for seed in seeds]
        witnesses = WitnessSet.of([own, *ids])
        self.others = [StampSigner(seed, TEST_NETWORK, TEST_PAIR, witnesses) for seed in seeds]
        self.chains: list[list[Stamp]] = [[], []]
        market = MarketService(
            loopback_config(self.data_dir), self.storage, self.clock,
            syncer=lambda storage: self.syncer, witnesses=witnesses,
        )  # fmt: skip
        self.publisher = Publisher()
        market.add_publisher(self.publisher)
        return market

    def acknowledge(self, took: float) -> None:
        """
        Both co-witnesses sign a stamp: they held this witness's last
        stamp signed C{took} s ago or before C{took} s after it.
        """
        now = int(self.clock.seconds() * 1_000_000)
        late = now - int(took * 1_000_000)
        mine = [stamp for stamp in self.publisher.stamps if stamp.t <= late][-1]
        for signer, chain in zip(self.others, self.chains, strict=True):
            acks = [(0, 0)] * 3
            acks[mine.member] = (mine.seq, now - (mine.t + int(took * 1_000_000)))
            acks[signer.index] = (len(chain), 0)
            last = chain[-1] if chain else None
            chain.append(signer.sign(len(chain) + 1, now, last.id if last else NO_PREV, acks, []))
        self.market.receive_stamps([chain[-1] for chain in self.chains])
        self.clock.advance(0.006)  # applied (STAMP_APPLY_DELAY)

    def see(self, seq: int) -> Event:
        event = peer_author(2).order(seq, seq, 0, "buy", "limit", "100", "1")
        self.market.receive([event])
        return event

    def test_receipts_fitted_to_reach(self) -> None:
        """
        Once its stamps take 150 ms to reach the others, a witness states
        its receipts at most the window less 170 ms (REACH_MARGIN more)
        before its stamp, where they still count.
        """
        self.start_witnessing()
        self.see(1)
        self.run_until(self.clock.seconds() + 0.2)
        self.acknowledge(0.15)
        self.see(2)
        self.clock.advance(0.001)
        self.see(3)  # its stamp waits MIN_STAMP_GAP
        self.run_until(self.clock.seconds() + 0.2)
        window = self.market.witnesses.window_ms * 1000
        offsets = [offset for stamp in self.publisher.stamps[-3:] for _, offset in stamp.receipts]
        self.assertTrue(offsets)
        self.assertLessEqual(max(offsets), window - 170_000)

    def test_not_listed_again_while_stamps_are_late(self) -> None:
        """
        While its stamps take about the window or longer to reach the
        others, a witness lists nothing again (no receipt would count);
        once they are quick, it lists what waited.
        """
        self.start_witnessing()
        self.see(1)
        self.run_until(self.clock.seconds() + 0.3)
        for _ in range(8):  # its receipt did not count: 250 ms late
            self.run_until(self.clock.seconds() + 0.1)
            self.acknowledge(0.25)
        self.run_until(self.clock.seconds() + 0.5)
        self.assertEqual(self.market.relisted, 0)
        for _ in range(15):
            self.run_until(self.clock.seconds() + 0.1)
            self.acknowledge(0.01)
        self.run_until(self.clock.seconds() + 0.5)
        self.assertEqual(self.market.relisted, 1)


OTHER_PAIR = "ETH/USD"


class TwoMarketsTests(SynchronousTestCase):
    """
    Two markets on one storage: each its own journal tables, checkpoint
    file and ledger; a restart of one leaves the other's history as it
    was, and an event of one market never enters the other's ledger.
    """

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.clock = Clock()
        self.storage = Storage(self.data_dir)
        self.storage.open()
        self.addCleanup(self.storage.close)
        self.config = loopback_config(self.data_dir)
        self.running: list[MarketService] = []
        self.addCleanup(self.stop_all)
        self.observer = EventLoggingObserver()
        globalLogPublisher.addObserver(self.observer)
        self.addCleanup(globalLogPublisher.removeObserver, self.observer)

    def start(self, pair: str | None = None) -> MarketService:
        market = MarketService(self.config, self.storage, self.clock, market=pair)
        market.startService()
        self.running.append(market)
        return market

    def stop(self, market: MarketService) -> None:
        self.successResultOf(market.stopService())

    def stop_all(self) -> None:
        for market in self.running:
            if market.running:
                self.stop(market)

    def trade(self, market: MarketService) -> list[Event]:
        """A peer's sell and this node's buy in C{market}, journaled and applied: a trade."""
        peer = Author(b"\x07" * 32, TEST_NETWORK, market.pair)
        sell = peer.order(1, 1, 0, "sell", "limit", "100", "1")
        market.receive([sell])
        d = market.submit("buy", "100", "1", "limit")
        self.clock.advance(0)
        self.clock.advance(market.apply_delay)
        return [sell, self.successResultOf(d)]

    def journaled(self, market: MarketService) -> list[str]:
        assert market.tables is not None
        return [text for text, _ in EventJournal(self.storage.connection, market.tables).load()]

    def test_separate_journals_and_checkpoints(self) -> None:
        """The first market keeps today's tables, name and file; the other has its own."""
        btc, eth = self.start(), self.start(OTHER_PAIR)
        self.assertEqual((btc.pair, eth.pair), (TEST_PAIR, OTHER_PAIR))
        self.assertEqual((btc.name, eth.name), ("market", f"market {OTHER_PAIR}"))
        self.assertEqual((btc.tables, eth.tables), (HISTORIC_TABLES, market_tables(OTHER_PAIR)))
        self.assertEqual(
            (btc.checkpoint_path, eth.checkpoint_path),
            (
                os.path.join(self.data_dir, "ledger.checkpoint"),
                os.path.join(self.data_dir, "ledger.ETH-USD.checkpoint"),
            ),
        )
        btc_events, eth_events = self.trade(btc), self.trade(eth)
        self.assertEqual(sorted(self.journaled(btc)), sorted(event.text for event in btc_events))
        self.assertEqual(sorted(self.journaled(eth)), sorted(event.text for event in eth_events))
        for market, own, theirs in ((btc, btc_events, eth_events), (eth, eth_events, btc_events)):
            self.assertEqual({event.pair for event in own}, {market.pair})
            self.assertEqual((market.ledger.trade_count, len(market.ledger)), (1, 2))
            self.assertTrue(all(event.id in market.ledger for event in own))
            self.assertFalse(any(event.id in market.ledger for event in theirs))
        self.stop(btc)
        self.assertTrue(os.path.exists(btc.checkpoint_path))
        self.assertFalse(os.path.exists(eth.checkpoint_path), "the running one writes its own")
        self.stop(eth)
        self.assertTrue(os.path.exists(eth.checkpoint_path))
        self.assertEqual(self.storage.stored_markets(), [TEST_PAIR, OTHER_PAIR])

    def test_market_of_the_config_is_named_market(self) -> None:
        market = MarketService(self.config, self.storage, self.clock, market=TEST_PAIR)
        self.assertEqual((market.name, market.pair), ("market", TEST_PAIR))
        self.assertRaises(ServiceUnavailable, lambda: market.checkpoint_path)

    def test_restart_of_one_keeps_the_others_history(self) -> None:
        """
        Each market resumes from its own checkpoint (a checkpoint checks
        itself against its log: another market's would be ignored) to its
        state before; the other, running meanwhile, is untouched.
        """
        btc, eth = self.start(), self.start(OTHER_PAIR)
        self.trade(btc)
        self.trade(eth)
        before = {market.pair: market.ledger.state_hash() for market in (btc, eth)}
        self.stop(eth)
        eth = self.start(OTHER_PAIR)
        self.assertEqual((eth.loaded_events, eth.resumed_at), (2, 2))
        self.assertEqual(eth.ledger.state_hash(), before[OTHER_PAIR])
        self.assertEqual(btc.ledger.state_hash(), before[TEST_PAIR])
        self.assertEqual(len(self.journaled(btc)), 2)
        self.stop(btc)
        btc = self.start()
        self.assertEqual((btc.loaded_events, btc.resumed_at), (2, 2))
        self.assertEqual(btc.ledger.state_hash(), before[TEST_PAIR])
        self.assertEqual(eth.ledger.state_hash(), before[OTHER_PAIR])

    def test_another_markets_event_is_never_replayed(self) -> None:
        """
        An event of ETH/USD found in BTC/USD's journal (it could only be
        put there by a bug) is skipped at replay: each market parses its
        journal with its own pair.
        """
        btc, eth = self.start(), self.start(OTHER_PAIR)
        self.trade(btc)
        [stray, _] = self.trade(eth)
        self.stop(btc)
        assert btc.tables is not None
        EventJournal(self.storage.connection, btc.tables).write([stray], durable=False)
        btc = self.start()
        self.assertEqual(btc.loaded_events, 2)
        self.assertNotIn(stray.id, btc.ledger)
        skipped = [e for e in self.observer if "Skipping unreadable" in e.get("log_format", "")]
        self.assertEqual([e["market"] for e in skipped], [TEST_PAIR])
        self.assertIn(stray.id, eth.ledger)

    def test_journal_of_another_market_kept_under_its_name(self) -> None:
        """
        A journal written before markets had tables, of ETH/USD, on a node
        whose first market is BTC/USD: BTC/USD starts empty in tables of its
        own (nothing skipped), ETH/USD finds its history in the old ones.
        """
        author = Author(b"\x08" * 32, TEST_NETWORK, OTHER_PAIR)
        history = [author.order(seq, seq, 0, "buy", "limit", str(90 + seq), "1")
                   for seq in range(1, 6)]  # fmt: skip
        EventJournal(self.storage.connection).write(history, durable=False)
        btc = self.start()
        self.assertEqual(btc.tables, market_tables(TEST_PAIR))
        self.assertEqual((btc.loaded_events, len(btc.ledger)), (0, 0))
        self.assertEqual(
            btc.checkpoint_path, os.path.join(self.data_dir, "ledger.BTC-USD.checkpoint")
        )
        eth = self.start(OTHER_PAIR)
        self.assertEqual(eth.tables, HISTORIC_TABLES)
        self.assertEqual(eth.loaded_events, 5)
        self.assertTrue(all(event.id in eth.ledger for event in history))
        self.assertEqual([e for e in self.observer if "Skipping" in e.get("log_format", "")], [])
