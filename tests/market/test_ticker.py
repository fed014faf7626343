"""Tests for :mod:`bitfitech.market.ticker`: the 24-hour figures of a real ledger."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.market.ledger import Ledger
from bitfitech.market.ticker import RECOUNT_MS, WINDOW_MS, Ticker

from .test_ledger import ALICE, BOB, CAROL, DAVE, ERIN, order


def two_trades() -> Ledger:
    """
    A ledger with a trade of 1 at 100 (time 2000) and one of 0.5 at 102
    (time 4000), an ask of 0.5 at 102 and a bid of 1 at 99 left.
    """
    ledger = Ledger()
    ledger.insert([order(ALICE, 1, 1, "sell", "100"), order(BOB, 1, 2, "buy", "100")])
    ledger.insert([order(ALICE, 2, 3, "sell", "102"), order(BOB, 2, 4, "buy", "102", "0.5")])
    ledger.insert([order(CAROL, 1, 5, "buy", "99")])
    return ledger


class TickerTests(SynchronousTestCase):
    """What ``GET /ticker`` states, and that folding in agrees with counting afresh."""

    def test_empty(self) -> None:
        document = Ticker().read(Ledger(), 1_000)
        self.assertEqual(
            document,
            {"last": None, "open": None, "change": None, "change_pct": None, "high": None,
             "low": None, "volume": "0", "quote_volume": "0", "trades": 0, "best_bid": None,
             "best_ask": None, "spread": None, "mid": None, "window_ms": WINDOW_MS,
             "at": 1_000},
        )  # fmt: skip

    def test_figures(self) -> None:
        document = Ticker().read(two_trades(), 5_000)
        self.assertEqual(
            {key: document[key] for key in document if key not in ("window_ms", "at")},
            {"last": "102", "open": "100", "change": "2", "change_pct": "2.00", "high": "102",
             "low": "100", "volume": "1.5", "quote_volume": "151", "trades": 2,
             "best_bid": "99", "best_ask": "102", "spread": "3", "mid": "100.5"},
        )  # fmt: skip

    def test_new_trades_fold_in(self) -> None:
        ledger, ticker = two_trades(), Ticker()
        ticker.read(ledger, 5_000)
        ledger.insert([order(DAVE, 1, 6, "sell", "99")])
        document = ticker.read(ledger, 5_000 + RECOUNT_MS - 1)
        self.assertEqual(
            (document["last"], document["low"], document["trades"], document["change"],
             document["change_pct"], document["volume"], document["best_bid"]),
            ("99", "99", 3, "-1", "-1.00", "2.5", None),
        )  # fmt: skip
        self.assertEqual(document, Ticker().read(ledger, 5_000 + RECOUNT_MS - 1))

    def test_old_trades_leave_the_window(self) -> None:
        ledger, ticker = two_trades(), Ticker()
        ticker.read(ledger, 5_000)
        # The first trade (time 2000) is older than 24 h; the last price stays.
        document = ticker.read(ledger, 2_001 + WINDOW_MS)
        self.assertEqual(
            (document["last"], document["open"], document["trades"], document["volume"],
             document["change"]),
            ("102", "102", 1, "0.5", "0"),
        )  # fmt: skip
        document = ticker.read(ledger, 4_001 + WINDOW_MS)
        self.assertEqual(
            (document["last"], document["open"], document["high"], document["trades"],
             document["volume"], document["change"]),
            ("102", None, None, 0, "0", None),
        )  # fmt: skip

    def test_rollback_recounts(self) -> None:
        """An event that sorts before the trades changes them: the next read recounts."""
        ledger, ticker = two_trades(), Ticker()
        ticker.read(ledger, 5_000)
        # ERIN's buy at Lamport 2 sorts before BOB's: it takes ALICE's ask at
        # 100, and BOB's buy rests instead.
        ledger.insert([order(ERIN, 1, 2, "buy", "100", "0.25")])
        self.assertGreater(ledger.rollbacks, 0)
        document = ticker.read(ledger, 5_001)
        self.assertEqual(document, Ticker().read(ledger, 5_001))
        self.assertEqual(document["volume"], "1.5")
        self.assertEqual(document["trades"], 3)
