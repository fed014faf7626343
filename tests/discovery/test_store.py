"""Tests for :mod:`bitfitech.discovery.kademlia.store`: peers, tokens, rates."""

from __future__ import annotations

import itertools
import random

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.discovery.kademlia.store import PeerStore, RateLimiter, TokenIssuer

HASH = b"h" * 20


class PeerStoreTests(SynchronousTestCase):
    """Tests for :class:`PeerStore`."""

    def test_add_and_expire(self) -> None:
        """Peers live 30 minutes after their last announce."""
        store = PeerStore()
        store.add(HASH, "10.0.0.1", 9000, 0.0)
        store.add(HASH, "10.0.0.2", 9000, 600.0)
        self.assertEqual(store.peers(HASH, 1.0), [("10.0.0.2", 9000), ("10.0.0.1", 9000)])
        self.assertEqual(store.peers(HASH, 1800.0), [("10.0.0.2", 9000)])
        store.add(HASH, "10.0.0.2", 9000, 1700.0)
        store.expire(2500.0)
        self.assertEqual(store.peers(HASH, 2500.0), [("10.0.0.2", 9000)])
        store.expire(3500.0)
        self.assertEqual(len(store), 0)
        self.assertEqual(store.peers(HASH, 3500.0), [])

    def test_by_family(self) -> None:
        """A get_peers over IPv6 is answered with IPv6 peers, over IPv4 with IPv4 ones (BEP 32)."""
        store = PeerStore()
        store.add(HASH, "192.0.2.1", 3000, 0.0)
        store.add(HASH, "2001:db8::1", 3000, 1.0)
        store.add(HASH, "192.0.2.2", 3000, 2.0)
        ipv4 = [("192.0.2.2", 3000), ("192.0.2.1", 3000)]
        self.assertEqual(store.peers(HASH, 3.0, family=4), ipv4)
        self.assertEqual(store.peers(HASH, 3.0, family=6), [("2001:db8::1", 3000)])
        self.assertEqual(len(store.peers(HASH, 3.0)), 3)

    def test_loopback_ports_distinct(self) -> None:
        """Several peers on one loopback address are kept apart by port."""
        store = PeerStore()
        for port in (9000, 9001, 9002):
            store.add(HASH, "127.0.0.1", port, 0.0)
        self.assertEqual(len(store.peers(HASH, 0.0)), 3)

    def test_bounds(self) -> None:
        """At most max_peers per info-hash (oldest go) and max_info_hashes (least recent go)."""
        store = PeerStore(max_peers=3, max_info_hashes=2)
        for n in range(5):
            store.add(HASH, f"10.0.0.{n}", 9000, float(n))
        self.assertEqual(
            store.peers(HASH, 5.0), [("10.0.0.4", 9000), ("10.0.0.3", 9000), ("10.0.0.2", 9000)]
        )
        store.add(b"a" * 20, "10.0.0.1", 1, 6.0)
        store.add(HASH, "10.0.0.9", 1, 7.0)
        store.add(b"b" * 20, "10.0.0.1", 1, 8.0)
        self.assertEqual(len(store), 2)
        self.assertEqual(store.peers(b"a" * 20, 8.0), [])
        self.assertEqual(store.count(HASH), 3)

    def test_sample(self) -> None:
        """With a limit and an rng, a random sample is returned."""
        store = PeerStore()
        for n in range(100):
            store.add(HASH, f"10.0.0.{n}", 9000, 0.0)
        sample = store.peers(HASH, 0.0, 10, random.Random(1))
        self.assertEqual(len(set(sample)), 10)
        self.assertEqual(len(store.peers(HASH, 0.0, 10)), 10)


class TokenIssuerTests(SynchronousTestCase):
    """Tests for :class:`TokenIssuer`."""

    def setUp(self) -> None:
        counter = itertools.count()
        self.tokens = TokenIssuer(0.0, secret=lambda: b"secret%d" % next(counter))

    def test_bound_to_ip(self) -> None:
        """A token is valid for the IP it was given to only."""
        token = self.tokens.token_for("10.0.0.1", 0.0)
        self.assertTrue(self.tokens.check(token, "10.0.0.1", 1.0))
        self.assertFalse(self.tokens.check(token, "10.0.0.2", 1.0))
        self.assertFalse(self.tokens.check(b"forged", "10.0.0.1", 1.0))

    def test_rotation(self) -> None:
        """Tokens outlive one rotation (5 minutes) but not two."""
        token = self.tokens.token_for("10.0.0.1", 299.0)
        self.assertTrue(self.tokens.check(token, "10.0.0.1", 300.0))
        self.assertTrue(self.tokens.check(token, "10.0.0.1", 599.0))
        newer = self.tokens.token_for("10.0.0.1", 599.0)
        self.assertNotEqual(newer, token)
        self.assertFalse(self.tokens.check(token, "10.0.0.1", 600.0))
        self.assertTrue(self.tokens.check(newer, "10.0.0.1", 600.0))

    def test_long_idle(self) -> None:
        """After two idle periods no earlier token is valid."""
        token = self.tokens.token_for("10.0.0.1", 0.0)
        self.assertFalse(self.tokens.check(token, "10.0.0.1", 700.0))


class RateLimiterTests(SynchronousTestCase):
    """Tests for :class:`RateLimiter`."""

    def test_burst_then_rate(self) -> None:
        """A source gets its burst, then C{rate} per second; others are independent."""
        limiter = RateLimiter(rate=2.0, burst=3.0)
        self.assertEqual([limiter.allow("a", 0.0) for _ in range(4)], [True] * 3 + [False])
        self.assertTrue(limiter.allow("b", 0.0))
        self.assertTrue(limiter.allow("a", 0.5))
        self.assertFalse(limiter.allow("a", 0.5))
        self.assertEqual([limiter.allow("a", 10.0) for _ in range(4)], [True] * 3 + [False])

    def test_bounded(self) -> None:
        """Only max_sources are remembered."""
        limiter = RateLimiter(rate=1.0, burst=1.0, max_sources=2)
        for source in "abc":
            limiter.allow(source, 0.0)
        self.assertEqual(len(limiter._buckets), 2)
        # "a" was forgotten: it starts with a full bucket again.
        self.assertTrue(limiter.allow("a", 0.0))
