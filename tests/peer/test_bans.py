"""Tests for :mod:`bitfitech.peer.bans` and the scoreboard of :mod:`bitfitech.peer.misbehaviour`."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.peer.bans import Ban, BanList, ban_address
from bitfitech.peer.misbehaviour import (
    BAN_THRESHOLD,
    MALFORMED_EVENT,
    RATE_EXCEEDED,
    VIOLATION,
    ScoreBoard,
)
from bitfitech.storage import Storage

NOW = 1_700_000_000.0
NODE = "ab" * 20


class ScoreBoardTests(SynchronousTestCase):
    """Scores add up per address, halve every hour, and are bounded."""

    def test_scores_add_up_per_address(self) -> None:
        board = ScoreBoard()
        self.assertEqual(board.add("192.0.2.1", MALFORMED_EVENT, NOW), 20)
        self.assertEqual(board.add("192.0.2.1", RATE_EXCEEDED, NOW), 30)
        self.assertEqual(board.add("192.0.2.2", RATE_EXCEEDED, NOW), 10)
        self.assertEqual(board.score("192.0.2.1", NOW), 30)
        self.assertEqual(board.score("192.0.2.9", NOW), 0)
        self.assertEqual(len(board), 2)

    def test_one_violation_reaches_the_threshold(self) -> None:
        self.assertGreaterEqual(ScoreBoard().add("192.0.2.1", VIOLATION, NOW), BAN_THRESHOLD)

    def test_scores_halve_every_hour(self) -> None:
        board = ScoreBoard()
        board.add("192.0.2.1", 80, NOW)
        self.assertAlmostEqual(board.score("192.0.2.1", NOW + 3600), 40)
        self.assertAlmostEqual(board.score("192.0.2.1", NOW + 7200), 20)
        # what decayed does not come back: 40 + 50 stays below the threshold
        self.assertAlmostEqual(board.add("192.0.2.1", 50, NOW + 3600), 90)
        self.assertAlmostEqual(board.score("192.0.2.1", NOW + 7200), 45)

    def test_spread_out_slips_never_reach_the_threshold(self) -> None:
        board = ScoreBoard()
        scores = [board.add("192.0.2.1", RATE_EXCEEDED, NOW + 1800 * i) for i in range(200)]
        self.assertLess(max(scores), BAN_THRESHOLD)

    def test_bounded_lru(self) -> None:
        board = ScoreBoard(max_addresses=3)
        for i in range(1, 4):
            board.add(f"192.0.2.{i}", 10, NOW)
        board.add("192.0.2.1", 10, NOW + 1)  # 1 is now the most recent
        board.add("192.0.2.4", 10, NOW + 2)  # evicts 2, the least recent
        self.assertEqual(len(board), 3)
        self.assertEqual(board.score("192.0.2.2", NOW + 2), 0)
        self.assertGreater(board.score("192.0.2.1", NOW + 2), 0)

    def test_reset(self) -> None:
        board = ScoreBoard()
        board.add("192.0.2.1", 90, NOW)
        board.reset("192.0.2.1")
        board.reset("192.0.2.9")
        self.assertEqual(board.score("192.0.2.1", NOW), 0)

    def test_bad_parameters(self) -> None:
        self.assertRaises(ValueError, ScoreBoard, half_life=0)
        self.assertRaises(ValueError, ScoreBoard, max_addresses=0)


class BanAddressTests(SynchronousTestCase):
    """Bans are keyed by the canonical text of an IP address."""

    def test_canonical(self) -> None:
        cases = {
            "192.0.2.1": "192.0.2.1",
            " 192.0.2.1 ": "192.0.2.1",
            "2001:DB8:0::1": "2001:db8::1",
            "[2001:db8::1]": "2001:db8::1",
            "::ffff:192.0.2.1": "192.0.2.1",
            "fe80::1%eth0": "fe80::1",
            "::1": "::1",
        }
        for given, expected in cases.items():
            self.assertEqual(ban_address(given), expected, given)

    def test_not_an_address(self) -> None:
        for bad in ("", "seed.example", "192.0.2.1:3000", "300.0.0.1", "[::1]:3000"):
            self.assertRaises(ValueError, ban_address, bad)


class BanListTests(SynchronousTestCase):
    """Bans persist in the ``bans`` table, expire, and are listed newest first."""

    def setUp(self) -> None:
        self.storage = Storage(self.mktemp())
        self.storage.open()
        self.addCleanup(self.storage.close)

    def rows(self) -> list[tuple[object, ...]]:
        return list(self.storage.connection.execute("SELECT * FROM bans ORDER BY address"))

    def persisted(self, **options: int) -> BanList:
        """A ban list loaded from (and so written through to) the database, at NOW."""
        bans = BanList(**options)
        bans.load(self.storage.connection, NOW)
        return bans

    def test_add_get_and_persist(self) -> None:
        bans = self.persisted()
        ban = bans.add("::ffff:192.0.2.1", reason="bad magic", now=NOW, until=NOW + 60,
                       node_id=NODE)  # fmt: skip
        self.assertEqual(ban, Ban("192.0.2.1", NODE, "bad magic", NOW, NOW + 60))
        self.assertEqual(bans.get("192.0.2.1", NOW + 59), ban)
        self.assertEqual(bans.get("::ffff:192.0.2.1", NOW), ban)
        self.assertIsNone(bans.get("192.0.2.2", NOW))
        self.assertIsNone(bans.get("seed.example", NOW))
        self.assertEqual(self.rows(), [("192.0.2.1", NODE, "bad magic", NOW, NOW + 60)])
        self.assertEqual(
            ban.row(),
            {"address": "192.0.2.1", "node_id": NODE, "reason": "bad magic",
             "banned_at": NOW * 1000, "until": (NOW + 60) * 1000},
        )  # fmt: skip

    def test_reloaded_from_the_database(self) -> None:
        self.persisted().add("192.0.2.1", reason="x", now=NOW, until=NOW + 60)
        self.persisted().add("192.0.2.2", reason="y", now=NOW, until=NOW + 10)
        bans = BanList()
        bans.load(self.storage.connection, NOW + 30)
        self.assertEqual([b.address for b in bans.active(NOW + 30)], ["192.0.2.1"])
        # the expired ban was deleted on load
        self.assertEqual([row[0] for row in self.rows()], ["192.0.2.1"])

    def test_expiry(self) -> None:
        bans = self.persisted()
        bans.add("192.0.2.1", reason="x", now=NOW, until=NOW + 60)
        self.assertIsNone(bans.get("192.0.2.1", NOW + 60))
        self.assertEqual(len(bans), 0)
        self.assertEqual(self.rows(), [])

    def test_newest_first_and_prune(self) -> None:
        bans = self.persisted()
        bans.add("192.0.2.1", reason="x", now=NOW, until=NOW + 100)
        bans.add("2001:db8::1", reason="y", now=NOW + 1, until=NOW + 10)
        bans.add("192.0.2.3", reason="z", now=NOW + 2, until=NOW + 100)
        self.assertEqual([b.address for b in bans.active(NOW + 5)],
                         ["192.0.2.3", "2001:db8::1", "192.0.2.1"])  # fmt: skip
        self.assertEqual(bans.prune(NOW + 50), 1)
        self.assertEqual([b.address for b in bans.active(NOW + 50)], ["192.0.2.3", "192.0.2.1"])
        self.assertEqual(len(self.rows()), 2)

    def test_ban_again_replaces(self) -> None:
        bans = self.persisted()
        bans.add("192.0.2.1", reason="x", now=NOW, until=NOW + 10)
        bans.add("192.0.2.1", reason="y", now=NOW + 5, until=NOW + 100)
        self.assertEqual(self.rows(), [("192.0.2.1", None, "y", NOW + 5, NOW + 100)])

    def test_remove(self) -> None:
        bans = self.persisted()
        bans.add("2001:db8::1", reason="x", now=NOW, until=NOW + 10)
        removed = bans.remove("[2001:DB8::1]")
        assert removed is not None
        self.assertEqual(removed.address, "2001:db8::1")
        self.assertIsNone(bans.remove("2001:db8::1"))
        self.assertEqual(self.rows(), [])
        self.assertRaises(ValueError, bans.remove, "seed.example")
        self.assertRaises(ValueError, bans.add, "seed.example", reason="x", now=NOW, until=NOW)

    def test_bounded(self) -> None:
        bans = self.persisted(max_bans=2)
        bans.add("192.0.2.1", reason="x", now=NOW, until=NOW + 30)
        bans.add("192.0.2.2", reason="x", now=NOW, until=NOW + 10)
        bans.add("192.0.2.3", reason="x", now=NOW, until=NOW + 20)
        self.assertEqual({b.address for b in bans.active(NOW)}, {"192.0.2.1", "192.0.2.3"})
        self.assertEqual(len(self.rows()), 2)

    def test_long_reason_truncated(self) -> None:
        ban = BanList().add("192.0.2.1", reason="x" * 1000, now=NOW, until=NOW + 1)
        self.assertEqual(len(ban.reason), 200)
