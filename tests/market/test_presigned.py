"""
Tests for events their authors signed, taken by :class:`MarketService`
(``submit_signed``, ``check_signed``): a user's own key, through the API.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, FirstError

from bitfitech.interfaces import ServiceUnavailable
from bitfitech.market.events import Author, Event
from bitfitech.market.service import MAX_SEQ_AHEAD

from .test_service import MarketTestCase, peer_author


class PresignedTests(MarketTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.user = peer_author(9)

    def order(self, seq: int, price: str = "100", side: str = "buy", author: Author | None = None
              ) -> Event:  # fmt: skip
        author = author or self.user
        return author.order(seq, 1000 + seq, 5, side, "limit", price, "1")

    def take(self, *events: Event) -> Deferred[list[Event]]:
        for event in events:
            self.market.check_signed(event)
        return self.market.submit_signed(events)

    def sync(self) -> None:
        """Let the group commit write, and its fsync finish."""
        self.clock.advance(0)
        self.syncer.calls[-1].callback(None)

    def test_journaled_applied_and_relayed_unchanged(self) -> None:
        event = self.order(1)
        text, sig = event.text, event.sig
        d = self.take(event)
        self.clock.advance(0)
        self.assertNoResult(d)  # acknowledged only once durable
        self.assertIn(text, self.journaled())
        self.syncer.calls[-1].callback(None)
        [taken] = self.successResultOf(d)
        self.assertEqual((taken.text, taken.sig, taken.author), (text, sig, self.user.author))
        self.assertTrue(self.market.ledger.is_applied(taken))
        self.assertEqual([e.id for e in self.publisher.published], [event.id])

    def test_node_seq_unaffected(self) -> None:
        """The node's own orders keep their seqs; the user's never take the node's key."""
        self.take(self.order(1), self.order(2, "101"))
        own = self.submit("99")
        self.sync()
        self.assertEqual(self.successResultOf(own).seq, 1)
        self.assertEqual(self.market.orders_of(self.user.author, "all", 10)[0].seq, 2)

    def test_node_cannot_cancel(self) -> None:
        event = self.order(1)
        self.take(event)
        self.sync()
        with self.assertRaises(PermissionError):
            self.market.cancel(event.id)
        cancel = self.user.cancel(2, 1010, 5, event.id)
        d = self.take(cancel)
        self.sync()
        self.successResultOf(d)
        self.assertIsNone(self.market.ledger.open_order(event.id))

    def test_refused(self) -> None:
        first = self.order(1)
        self.take(first)
        own_key = self.market.author.order(1, 5, 5, "buy", "limit", "100", "1")
        cases = {
            "own_key": own_key,
            "seq_taken": self.order(1, "101"),
            "seq_gap": self.order(2 + MAX_SEQ_AHEAD + 1),
            "lamport_not_increasing": self.user.order(2, 1000, 5, "buy", "limit", "100", "1"),
            "price_not_tick_multiple": self.order(2, "100.001"),
        }
        for code, event in cases.items():
            with self.assertRaises(ValueError) as caught:
                self.market.check_signed(event)
            self.assertTrue(str(caught.exception).startswith(code + ": "), caught.exception)

    def test_batch_checks_against_earlier_events(self) -> None:
        """In one request, a seq taken by an earlier event of it counts as taken."""
        first, rival = self.order(1), self.order(1, "101")
        self.assertTrue(self.market.check_signed(first))
        with self.assertRaises(ValueError):
            self.market.check_signed(rival, {(first.author, first.seq): first})
        second = self.order(2, "101")
        self.assertTrue(self.market.check_signed(second, {(first.author, first.seq): first}))

    def test_again_is_idempotent(self) -> None:
        """The same event sent again while on its way, or once held, is the same answer."""
        event = self.order(1)
        first = self.take(event)
        self.assertFalse(self.market.check_signed(event))
        again = self.market.submit_signed([event])
        self.sync()
        self.assertEqual(self.successResultOf(first), self.successResultOf(again))
        self.assertFalse(self.market.check_signed(event))
        self.assertEqual(self.successResultOf(self.market.submit_signed([event])), [event])

    def test_journal_failure_frees_the_slot(self) -> None:
        self.storage.connection.execute("PRAGMA query_only = 1")
        event = self.order(1)
        d = self.take(event)
        self.clock.advance(0)
        failure = self.failureResultOf(d, FirstError)
        failure.value.subFailure.trap(ServiceUnavailable)
        self.assertEqual(self.market.next_seq_of(self.user.author), 1)
        self.flushLoggedErrors()

    def test_survives_a_restart(self) -> None:
        event = self.order(1)
        self.take(event)
        self.sync()
        self.restart()
        self.assertTrue(self.market.ledger.is_applied(event))
        self.assertEqual(self.market.next_seq_of(self.user.author), 2)

    def restart(self) -> None:
        self.stop()
        self.market = self.make_market()
        self.market.startService()
