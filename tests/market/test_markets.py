"""Tests for a node's market set (:mod:`bitfitech.market.markets`) and its shared syncer.

A node's markets start in its order (the first adopts a one-market
node's journal), stop together, each journaling what is on its way and
writing its checkpoint, and share one syncer, made once and closed once.
A failed fsync is a fault of the one write-ahead log: every market
refuses orders until the log has been copied into the database.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.interfaces import ServiceUnavailable
from bitfitech.market.events import Author, Event
from bitfitech.market.journal import EventJournal, SharedSyncer
from bitfitech.market.markets import Markets
from bitfitech.market.service import JOURNAL_RETRY, MarketService
from bitfitech.storage import HISTORIC_TABLES, Storage, market_tables
from bitfitech.testing import TEST_NETWORK, TEST_PAIR, loopback_config

from .test_service import ManualSyncer

ETH = "ETH/USD"


class RecordingSyncer(ManualSyncer):
    """A :class:`ManualSyncer` that counts its closes."""

    def __init__(self) -> None:
        super().__init__()
        self.closes = 0

    def close(self) -> None:
        super().close()
        self.closes += 1

    def fire(self) -> None:
        """Fire every sync not fired yet, as done."""
        for call in self.calls:
            if not call.called:
                call.callback(None)


class SharedSyncerTests(SynchronousTestCase):
    """One real syncer, made at the first open, closed at the last close."""

    def setUp(self) -> None:
        self.made: list[RecordingSyncer] = []
        self.shared = SharedSyncer(self.make)
        self.storage = Storage(self.mktemp())

    def make(self, storage: Storage) -> RecordingSyncer:
        self.made.append(RecordingSyncer())
        return self.made[-1]

    def test_made_at_first_open_and_shared(self) -> None:
        self.assertEqual(self.made, [])
        first, second = self.shared.open(self.storage), self.shared.open(self.storage)
        self.assertIs(first, self.shared)
        self.assertIs(second, self.shared)
        self.assertEqual((len(self.made), self.shared.users), (1, 2))
        first.sync()
        second.sync()
        self.assertEqual(len(self.made[0].calls), 2, "both through the one syncer")

    def test_closed_once_by_the_last_user(self) -> None:
        users = [self.shared.open(self.storage) for _ in range(3)]
        for user in users[:-1]:
            user.close()
            self.assertEqual(self.made[0].closes, 0)
        users[-1].close()
        self.assertEqual((self.made[0].closes, self.shared.users), (1, 0))
        self.shared.close()  # one close too many: ignored
        self.assertEqual(self.made[0].closes, 1)

    def test_opened_again_after_the_last_close(self) -> None:
        """A node's markets started again (a restart in one process) get a new syncer."""
        self.shared.open(self.storage).close()
        self.shared.open(self.storage).sync()
        self.assertEqual([s.closes for s in self.made], [1, 0])
        self.assertEqual(len(self.made[1].calls), 1)

    def test_a_failed_sync_fails_every_sync_until_the_log_is_flushed(self) -> None:
        """
        The syncs queued behind a failed one fail too (the disk may report
        them done), and so do the syncs asked later, without reaching the
        disk, until a market has copied the log into the database.
        """
        syncer = self.shared.open(self.storage)
        failing, queued = syncer.sync(), syncer.sync()
        real = self.made[0]
        real.calls[0].errback(OSError(5, "Input/output error"))
        real.calls[1].callback(None)
        error = self.failureResultOf(failing, OSError).getErrorMessage()
        self.assertIn("Input/output error", error)
        self.failureResultOf(queued, OSError)
        self.failureResultOf(syncer.sync(), OSError)
        self.assertEqual(len(real.calls), 2, "not asked of the disk")
        syncer.wal_flushed()
        self.assertEqual(real.flushed, 1)
        later = syncer.sync()
        real.calls[2].callback(None)
        self.assertIsNone(self.successResultOf(later))

    def test_a_sync_done_before_a_failure_stands(self) -> None:
        syncer = self.shared.open(self.storage)
        done, failing = syncer.sync(), syncer.sync()
        self.made[0].calls[0].callback(None)
        self.made[0].calls[1].errback(OSError(5, "Input/output error"))
        self.assertIsNone(self.successResultOf(done))
        self.failureResultOf(failing, OSError)

    def test_write_file_is_not_a_fault_of_the_log(self) -> None:
        syncer = self.shared.open(self.storage)
        path = self.mktemp()
        self.successResultOf(syncer.write_file(path, b"checkpoint"))
        self.assertEqual(self.made[0].written, [path])
        syncer.sync()
        self.assertEqual(len(self.made[0].calls), 1)


class MarketsTests(SynchronousTestCase):
    """Two markets on one storage, held, started and stopped as one service."""

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.clock = Clock()
        self.storage = Storage(self.data_dir)
        self.storage.open()
        self.addCleanup(self.storage.close)
        self.made: list[RecordingSyncer] = []
        self.shared = SharedSyncer(self.make)
        self.observer = EventLoggingObserver()
        globalLogPublisher.addObserver(self.observer)
        self.addCleanup(globalLogPublisher.removeObserver, self.observer)

    def make(self, storage: Storage) -> RecordingSyncer:
        self.made.append(RecordingSyncer())
        return self.made[-1]

    def markets(self, *pairs: str) -> Markets:
        config = loopback_config(self.data_dir, markets=pairs)
        markets = Markets(
            MarketService(config, self.storage, self.clock, market=pair, syncer=self.shared.open)
            for pair in config.markets
        )
        self.addCleanup(self.stop, markets)
        return markets

    def stop(self, markets: Markets) -> None:
        if markets.running:
            d = markets.stopService()
            for syncer in self.made:
                syncer.fire()
            self.successResultOf(d)

    def submit(self, market: MarketService, price: str = "100") -> Deferred[Event]:
        return market.submit("buy", price, "1", "limit")

    def peer_event(self, pair: str) -> Event:
        return Author(b"\x07" * 32, TEST_NETWORK, pair).order(1, 1, 0, "sell", "limit", "200", "1")

    def journaled(self, market: MarketService) -> list[str]:
        assert market.tables is not None
        return [text for text, _ in EventJournal(self.storage.connection, market.tables).load()]

    def test_holds_the_markets_in_order(self) -> None:
        markets = self.markets(TEST_PAIR, ETH)
        self.assertEqual(markets.name, "market")
        self.assertEqual(markets.names, (TEST_PAIR, ETH))
        self.assertEqual([m.pair for m in markets], [TEST_PAIR, ETH])
        self.assertEqual(len(markets), 2)
        self.assertIs(markets.first, markets[TEST_PAIR])
        self.assertEqual(markets[ETH].pair, ETH)
        self.assertIn(ETH, markets)
        self.assertNotIn("LTC/USD", markets)
        self.assertRaises(KeyError, lambda: markets["LTC/USD"])
        self.assertEqual([m.parent for m in markets], [markets, markets])
        self.assertEqual(list(markets.by_name), [TEST_PAIR, ETH])

    def test_refuses_no_market_and_a_market_twice(self) -> None:
        config = loopback_config(self.data_dir)
        self.assertRaises(ValueError, Markets, [])
        twice = [MarketService(config, self.storage, self.clock) for _ in range(2)]
        self.assertRaises(ValueError, Markets, twice)

    def test_start_in_order_the_first_adopts_the_historic_tables(self) -> None:
        """On a fresh database the first market, whichever it is, keeps today's tables."""
        markets = self.markets(ETH, TEST_PAIR)
        markets.startService()
        self.assertTrue(all(m.running for m in markets))
        self.assertEqual(self.storage.stored_markets(), [ETH, TEST_PAIR])
        self.assertEqual(markets[ETH].tables, HISTORIC_TABLES)
        self.assertEqual(markets[TEST_PAIR].tables, market_tables(TEST_PAIR))
        self.assertEqual(self.made, [], "no syncer before the first durable write")

    def test_stop_drains_every_market(self) -> None:
        """
        The stop waits for each market's own orders to be synced, journals
        every peer event on its way, writes both checkpoints, then closes
        the one syncer, once.
        """
        markets = self.markets(TEST_PAIR, ETH)
        markets.startService()
        orders = {}
        for market in markets:
            market.receive([self.peer_event(market.pair)])
            orders[market.pair] = self.submit(market)
        self.clock.advance(0)
        [syncer] = self.made
        self.assertEqual((len(syncer.calls), self.shared.users), (2, 2))
        d = markets.stopService()
        self.assertNoResult(d)
        syncer.calls[0].callback(None)
        self.assertNoResult(d)
        self.assertEqual(syncer.closes, 0, "the other market still syncs")
        syncer.fire()
        self.successResultOf(d)
        self.assertEqual((syncer.closes, self.shared.users), (1, 0))
        for market in markets:
            self.assertFalse(market.running)
            self.assertEqual(self.successResultOf(orders[market.pair]).pair, market.pair)
            self.assertEqual(len(self.journaled(market)), 2, market.pair)
            self.assertTrue(os.path.exists(market.checkpoint_path), market.pair)
        again = self.markets(TEST_PAIR, ETH)
        again.startService()
        self.assertEqual([m.resumed_at for m in again], [2, 2])

    def test_a_failed_stop_is_logged_and_the_others_stop(self) -> None:
        markets = self.markets(TEST_PAIR, ETH)
        markets.startService()
        btc = markets[TEST_PAIR]

        def broken() -> Deferred[None]:
            return fail(RuntimeError("broken"))

        btc.stopService = broken  # type: ignore[method-assign]
        self.successResultOf(markets.stopService())
        self.assertFalse(markets.running)
        self.assertFalse(markets[ETH].running)
        [logged] = [e for e in self.observer if "failed" in e.get("log_format", "")]
        self.assertEqual(logged["market"], TEST_PAIR)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        del btc.stopService
        btc.stopService()

    def test_a_failed_fsync_stops_every_market_until_the_log_is_flushed(self) -> None:
        """
        BTC/USD's fsync fails; ETH/USD's, queued behind it, is reported
        done, but may not be: both markets' orders fail and both refuse new
        ones, and each takes orders again once it has copied the log into
        the database and synced.
        """
        markets = self.markets(TEST_PAIR, ETH)
        markets.startService()
        btc, eth = markets[TEST_PAIR], markets[ETH]
        first, second = self.submit(btc), self.submit(eth)
        self.clock.advance(0)
        [syncer] = self.made
        syncer.calls[0].errback(OSError(5, "Input/output error"))
        syncer.calls[1].callback(None)
        for d in (first, second):
            error = self.failureResultOf(d, ServiceUnavailable).value
            self.assertIn("Input/output error", str(error))
        for market in markets:
            self.assertRaises(ServiceUnavailable, self.submit, market, "101")
        self.clock.advance(JOURNAL_RETRY)
        self.assertEqual(syncer.flushed, 2, "each market copied the log")
        self.assertEqual(len(syncer.calls), 4, "the retries sync")
        syncer.fire()
        again = [self.submit(market, "102") for market in markets]
        self.clock.advance(0)
        syncer.fire()
        self.assertEqual([self.successResultOf(d).pair for d in again], [TEST_PAIR, ETH])

    def test_replayed_in_order(self) -> None:
        """Started again, each market replays its own journal, in the node's order."""
        markets = self.markets(TEST_PAIR, ETH)
        markets.startService()
        for market in markets:
            market.receive([self.peer_event(market.pair)])
        self.stop(markets)
        before = len(self.observer)
        again = self.markets(TEST_PAIR, ETH)
        again.startService()
        replayed = [
            (e["market"], e["loaded"])
            for e in list(self.observer)[before:]
            if e.get("log_format", "").startswith("Replayed")
        ]
        self.assertEqual(replayed, [(TEST_PAIR, 1), (ETH, 1)])
