"""Tests for bitfitech.ratelimit: token-bucket arithmetic, pure."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.ratelimit import BucketTable, TokenBucket


class TokenBucketTests(SynchronousTestCase):
    def test_starts_full_and_takes_up_to_burst(self) -> None:
        bucket = TokenBucket(rate=10, burst=5, now=100.0)
        self.assertEqual(bucket.available(100.0), 5)
        self.assertEqual([bucket.take(100.0) for _ in range(6)], [True] * 5 + [False])
        self.assertEqual(bucket.available(100.0), 0)

    def test_refills_at_rate_up_to_burst(self) -> None:
        bucket = TokenBucket(rate=10, burst=5, now=0.0)
        bucket.take(0.0, 5)
        self.assertAlmostEqual(bucket.available(0.2), 2.0)
        self.assertTrue(bucket.take(0.2, 2))
        self.assertFalse(bucket.take(0.2, 0.5))
        self.assertEqual(bucket.available(60.0), 5)

    def test_refused_take_takes_nothing(self) -> None:
        bucket = TokenBucket(rate=1, burst=3, now=0.0)
        self.assertFalse(bucket.take(0.0, 4))
        self.assertEqual(bucket.available(0.0), 3)

    def test_spend_goes_into_debt_and_says_how_long(self) -> None:
        bucket = TokenBucket(rate=100, burst=50, now=0.0)
        self.assertEqual(bucket.spend(0.0, 30), 0.0)
        self.assertAlmostEqual(bucket.spend(0.0, 70), 0.5)  # 50 in debt, 100 a second
        self.assertAlmostEqual(bucket.wait(0.25), 0.25)
        self.assertEqual(bucket.wait(0.5), 0.0)
        self.assertFalse(bucket.take(0.25))
        self.assertAlmostEqual(bucket.available(1.0), 50.0)

    def test_clock_going_backwards_gains_nothing(self) -> None:
        bucket = TokenBucket(rate=10, burst=10, now=5.0)
        bucket.take(5.0, 10)
        self.assertEqual(bucket.available(1.0), 0)
        self.assertAlmostEqual(bucket.available(5.5), 5.0)

    def test_full(self) -> None:
        bucket = TokenBucket(rate=2, burst=4, now=0.0)
        self.assertTrue(bucket.full(0.0))
        bucket.take(0.0)
        self.assertFalse(bucket.full(0.1))
        self.assertTrue(bucket.full(0.5))

    def test_rate_and_burst_must_be_positive(self) -> None:
        for rate, burst in ((0, 1), (1, 0), (-1, 5), (float("nan"), 1)):
            self.assertRaises(ValueError, TokenBucket, rate, burst, 0.0)
        self.assertRaises(ValueError, BucketTable, 0, 1)


class BucketTableTests(SynchronousTestCase):
    def test_one_bucket_per_key(self) -> None:
        table = BucketTable(rate=1, burst=2)
        self.assertEqual([table.take("a", 0.0) for _ in range(3)], [True, True, False])
        self.assertTrue(table.take("b", 0.0))
        self.assertEqual(len(table), 2)

    def test_prune_forgets_full_buckets_only(self) -> None:
        table = BucketTable(rate=1, burst=2)
        table.take("a", 0.0)
        table.take("b", 0.0, 2)
        table.prune(1.0)  # a is full again, b holds 1
        self.assertEqual(list(table), ["b"])
        table.prune(2.0)
        self.assertEqual(len(table), 0)

    def test_bounded_least_recently_used_first(self) -> None:
        table = BucketTable(rate=1, burst=1, max_keys=2)
        table.take("a", 0.0)
        table.take("b", 0.0)
        table.bucket("a", 0.0)  # a used last
        table.take("c", 0.0)
        self.assertEqual(sorted(table), ["a", "c"])
        self.assertFalse(table.take("a", 0.0))
        self.assertTrue(table.take("b", 0.0))  # forgotten: starts afresh
