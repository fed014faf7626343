"""Tests for :class:`bitfitech.api.control.NodeControl` over a real market, journal and clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.api.control import NodeControl
from bitfitech.interfaces import BatchRejected, ServiceUnavailable
from bitfitech.market.service import MarketService
from bitfitech.storage import Storage
from bitfitech.testing import loopback_config

BUY = ("buy", "100.5", "1", "limit")
SELL = ("sell", "101", "2", "limit")
MARKET_SELL = ("sell", None, "0.5", "market")


class SubmitOrdersTests(SynchronousTestCase):
    """``NodeControl.submit_orders``: all or none, signed in order, one group commit."""

    def setUp(self) -> None:
        data_dir = self.mktemp()
        self.clock = Clock()
        self.storage = Storage(data_dir)
        self.storage.open()
        self.addCleanup(self.storage.close)
        config = loopback_config(data_dir)
        self.market = MarketService(config, self.storage, self.clock)
        self.market.startService()
        self.addCleanup(self.stop_market)
        self.control = NodeControl(config, self.clock, self.storage, self.market)

    def stop_market(self) -> None:
        if self.market.running:
            self.market.stopService()

    def committed(self, d: Deferred[Any]) -> Any:
        """Let the group commit run and return C{d}'s result."""
        for _ in range(5):
            self.clock.advance(0)
        return self.successResultOf(d)

    def test_batch(self) -> None:
        documents = self.committed(self.control.submit_orders([BUY, SELL, MARKET_SELL]))
        self.assertEqual(
            [(doc["side"], doc["price"], doc["amount"], doc["type"]) for doc in documents],
            [BUY, SELL, MARKET_SELL],
        )
        self.assertEqual([doc["seq"] for doc in documents], [1, 2, 3])
        self.assertEqual(len({doc["id"] for doc in documents}), 3)
        author = self.market.author.author
        self.assertEqual({doc["author"] for doc in documents}, {author})
        self.assertEqual(self.control.orders("all", 10), documents[::-1])
        for document in documents:
            self.assertEqual(self.control.order(document["id"]), document)

    def test_signed_in_call_order(self) -> None:
        single = self.control.submit_order(*BUY)
        batch = self.control.submit_orders([SELL, SELL])
        self.assertNoResult(single)
        self.assertNoResult(batch)
        self.clock.advance(0)
        self.assertEqual(self.committed(single)["seq"], 1)
        self.assertEqual([doc["seq"] for doc in self.committed(batch)], [2, 3])

    def test_same_documents_as_single_orders(self) -> None:
        [batched] = self.committed(self.control.submit_orders([SELL]))
        single = self.committed(self.control.submit_order(*SELL))
        differ = {"id", "seq", "lamport", "created_at", "applied_at"}
        self.assertEqual(
            {key: value for key, value in batched.items() if key not in differ},
            {key: value for key, value in single.items() if key not in differ},
        )

    def test_invalid_order_places_nothing(self) -> None:
        with self.assertRaises(BatchRejected) as caught:
            self.control.submit_orders([BUY, SELL, ("buy", "100.555", "1", "limit"), BUY])
        self.assertEqual(caught.exception.index, 2)
        self.assertTrue(str(caught.exception).startswith("orders[2]: price_not_tick_multiple:"))
        self.assertIsInstance(caught.exception, ValueError)
        self.clock.advance(0)
        self.assertEqual(self.control.orders("all", 10), [])
        # Nothing was signed: the next order takes the first seq.
        self.assertEqual(self.committed(self.control.submit_order(*BUY))["seq"], 1)

    def test_empty(self) -> None:
        self.assertEqual(self.committed(self.control.submit_orders([])), [])

    def test_not_running(self) -> None:
        self.market.stopService()
        self.assertRaises(ServiceUnavailable, self.control.submit_orders, [BUY])

    def test_journal_failure(self) -> None:
        self.storage.connection.execute(
            "CREATE TEMP TRIGGER refuse BEFORE INSERT ON events "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        d = self.control.submit_orders([BUY, SELL])
        for _ in range(5):
            self.clock.advance(0)
        failure = self.failureResultOf(d, ServiceUnavailable)
        self.assertIn("disk full", failure.getErrorMessage())
        self.flushLoggedErrors()
