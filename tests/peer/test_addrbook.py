"""Tests for :mod:`bitfitech.peer.addrbook`: the address book and its retry policy."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.address import AddressError, PeerAddress
from bitfitech.peer.addrbook import (
    NEVER_REACHED_MAX_FAILURES,
    PROTECTED_SOURCES,
    REACHED_FAILURE_GRACE,
    REACHED_MAX_FAILURES,
    SHARE_WINDOW,
    SOURCES,
    AddressBook,
    AddressEntry,
    RetryPolicy,
)
from bitfitech.storage import Storage

NODE_A = "a" * 40
NODE_B = "b" * 40
NODE_C = "c" * 40


def make_book(**kwargs: object) -> AddressBook:
    """A memory-only book with deterministic randomness."""
    kwargs.setdefault("rng", random.Random(1234))
    return AddressBook(**kwargs)  # type: ignore[arg-type]


def fail(book: AddressBook, host: str, port: int, now: float) -> AddressEntry | None:
    """One dial attempt at C{now} that fails; the entry if that aged it out."""
    book.record_attempt(host, port, now)
    return book.record_failure(host, port, now)


def reach(book: AddressBook, host: str, port: int, now: float, node_id: str | None = None) -> bool:
    """One dial attempt at C{now} whose handshake succeeds; whether it became shareable."""
    book.record_attempt(host, port, now)
    return book.record_success(host, port, now, node_id)


class AddTests(SynchronousTestCase):
    """Adding new and known addresses."""

    def test_new_and_existing(self) -> None:
        book = make_book()
        self.assertTrue(book.add("10.0.0.1", 3000, source="addr", now=100.0))
        self.assertFalse(book.add("10.0.0.1", 3000, source="addr", now=200.0))
        self.assertTrue(book.add("10.0.0.1", 3001, source="addr", now=200.0))
        self.assertEqual(len(book), 2)
        entry = book.get("10.0.0.1", 3000)
        assert entry is not None
        self.assertEqual(entry.first_seen, 100.0)
        self.assertEqual(entry.last_seen, 200.0)
        self.assertEqual(entry.key, ("10.0.0.1", 3000))
        self.assertEqual(entry.address, PeerAddress("10.0.0.1", 3000, None))
        self.assertIn(("10.0.0.1", 3000), book)
        self.assertNotIn(("10.0.0.2", 3000), book)

    def test_last_seen_never_goes_back(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 3000, source="addr", now=100.0)
        book.add("10.0.0.1", 3000, source="addr", now=200.0, seen=50.0)
        entry = book.get("10.0.0.1", 3000)
        assert entry is not None
        self.assertEqual(entry.last_seen, 100.0)

    def test_future_seen_clamped(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 3000, source="addr", now=100.0, seen=1e12)
        entry = book.get("10.0.0.1", 3000)
        assert entry is not None
        self.assertEqual(entry.last_seen, 100.0)
        book.add("10.0.0.1", 3000, source="addr", now=150.0, seen=1e12)
        entry = book.get("10.0.0.1", 3000)
        assert entry is not None
        self.assertEqual(entry.last_seen, 150.0)

    def test_past_seen_kept_for_new(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 3000, source="addr", now=100.0, seen=40.0)
        entry = book.get("10.0.0.1", 3000)
        assert entry is not None
        self.assertEqual((entry.first_seen, entry.last_seen), (100.0, 40.0))

    def test_source_precedence(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 3000, source="addr", now=1.0)
        book.add("10.0.0.1", 3000, source="mdns", now=2.0)
        self.assertEqual(book.get("10.0.0.1", 3000).source, "addr")  # type: ignore[union-attr]
        book.add("10.0.0.1", 3000, source="manual", now=3.0)
        self.assertEqual(book.get("10.0.0.1", 3000).source, "manual")  # type: ignore[union-attr]
        book.add("10.0.0.1", 3000, source="inbound", now=4.0)
        self.assertEqual(book.get("10.0.0.1", 3000).source, "manual")  # type: ignore[union-attr]
        book.add("10.0.0.1", 3000, source="bootstrap", now=5.0)
        self.assertEqual(book.get("10.0.0.1", 3000).source, "bootstrap")  # type: ignore[union-attr]

    def test_node_id_set_and_replaced(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 3000, source="addr", now=1.0)
        book.add("10.0.0.1", 3000, source="addr", now=2.0, node_id=NODE_A)
        self.assertEqual(book.get("10.0.0.1", 3000).node_id, NODE_A)  # type: ignore[union-attr]
        book.add("10.0.0.1", 3000, source="addr", now=3.0)  # no id: keep the old one
        self.assertEqual(book.get("10.0.0.1", 3000).node_id, NODE_A)  # type: ignore[union-attr]
        book.add("10.0.0.1", 3000, source="addr", now=4.0, node_id=NODE_B)
        self.assertEqual(book.get("10.0.0.1", 3000).node_id, NODE_B)  # type: ignore[union-attr]
        self.assertEqual(book.find_node(NODE_A), [])
        self.assertEqual([e.key for e in book.find_node(NODE_B)], [("10.0.0.1", 3000)])

    def test_loopback_and_ipv6(self) -> None:
        book = make_book()
        self.assertTrue(book.add("127.0.0.1", 3000, source="manual", now=1.0))
        self.assertTrue(book.add("::1", 3000, source="manual", now=1.0))
        self.assertFalse(book.add("[::1]", 3000, source="addr", now=2.0))
        self.assertFalse(book.add("0:0:0:0:0:0:0:1", 3000, source="addr", now=2.0))
        self.assertTrue(book.add("Example.COM", 3000, source="addr", now=2.0))
        self.assertEqual(
            sorted(e.key for e in book.entries()),
            [("127.0.0.1", 3000), ("::1", 3000), ("example.com", 3000)],
        )
        self.assertIsNotNone(book.get("[::1]", 3000))
        self.assertEqual(str(book.get("::1", 3000).address), "[::1]:3000")  # type: ignore[union-attr]

    def test_invalid_rejected(self) -> None:
        book = make_book()
        for host in ("", "bad host", "::1::2", "[]", "a" * 300):
            self.assertRaises(AddressError, book.add, host, 3000, source="addr", now=1.0)
        for port in (0, -1, 65536, True):
            self.assertRaises(AddressError, book.add, "10.0.0.1", port, source="addr", now=1.0)
        self.assertRaises(ValueError, book.add, "10.0.0.1", 3000, source="gossip", now=1.0)
        self.assertRaises(
            ValueError, book.add, "10.0.0.1", 3000, source="addr", now=1.0, node_id="A" * 40
        )
        self.assertRaises(
            ValueError, book.add, "10.0.0.1", 3000, source="addr", now=1.0, seen=float("nan")
        )
        self.assertEqual(len(book), 0)

    def test_copies_handed_out(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 3000, source="addr", now=1.0)
        book.entries()[0].failures = 99
        book.get("10.0.0.1", 3000).failures = 99  # type: ignore[union-attr]
        self.assertEqual(book.get("10.0.0.1", 3000).failures, 0)  # type: ignore[union-attr]

    def test_forget(self) -> None:
        book = make_book()
        book.add("::1", 3000, source="bootstrap", now=1.0)
        self.assertTrue(book.forget("[::1]", 3000))
        self.assertFalse(book.forget("::1", 3000))
        self.assertFalse(book.forget("not a host", 3000))
        self.assertEqual(len(book), 0)

    def test_unknown_address_ignored(self) -> None:
        book = make_book()
        book.record_attempt("10.0.0.1", 3000, 1.0)
        book.record_failure("10.0.0.1", 3000, 1.0)
        book.record_success("10.0.0.1", 3000, 1.0, NODE_A)
        self.assertEqual(len(book), 0)
        self.assertIsNone(book.get("bad host", 1))


class EvictionTests(SynchronousTestCase):
    """The book stays bounded and keeps the operator's addresses."""

    def test_bounded_keeps_bootstrap(self) -> None:
        book = make_book(max_entries=3)
        book.add("10.0.0.1", 1, source="bootstrap", now=1.0)
        book.add("10.0.0.2", 1, source="addr", now=2.0)
        book.add("10.0.0.3", 1, source="addr", now=3.0)
        self.assertTrue(book.add("10.0.0.4", 1, source="addr", now=4.0))
        self.assertEqual(len(book), 3)
        # The bootstrap entry is the oldest but stays; the oldest other goes.
        self.assertIsNotNone(book.get("10.0.0.1", 1))
        self.assertIsNone(book.get("10.0.0.2", 1))

    def test_prefers_failing(self) -> None:
        book = make_book(max_entries=2)
        book.add("10.0.0.1", 1, source="addr", now=1.0)
        book.add("10.0.0.2", 1, source="addr", now=2.0)
        fail(book, "10.0.0.2", 1, 3.0)
        book.add("10.0.0.3", 1, source="addr", now=4.0)
        self.assertEqual(sorted(e.host for e in book.entries()), ["10.0.0.1", "10.0.0.3"])

    def test_new_entry_may_be_evicted(self) -> None:
        book = make_book(max_entries=1)
        book.add("10.0.0.1", 1, source="addr", now=100.0)
        # Seen long ago by a peer: older than what we hold, so it goes.
        self.assertFalse(book.add("10.0.0.2", 1, source="addr", now=101.0, seen=5.0))
        self.assertEqual([e.host for e in book.entries()], ["10.0.0.1"])

    def test_protected_may_exceed(self) -> None:
        book = make_book(max_entries=1)
        book.add("10.0.0.1", 1, source="bootstrap", now=1.0)
        book.add("10.0.0.2", 1, source="witness", now=2.0)
        book.keep_manual("10.0.0.3", 1, now=3.0, node_id=None)  # kept once reached
        self.assertEqual(len(book), 3)
        self.assertFalse(book.add("10.0.0.4", 1, source="addr", now=4.0))
        self.assertEqual(len(book), 3)

    def test_manual_never_reached_is_evictable(self) -> None:
        """A manual entry that never worked (left by an older version) is not protected."""
        book = make_book(max_entries=1)
        book.add("10.0.0.1", 1, source="manual", now=1.0)
        self.assertTrue(book.add("10.0.0.2", 1, source="addr", now=2.0))
        self.assertEqual([e.host for e in book.entries()], ["10.0.0.2"])

    def test_never_reached_evicted_before_reached(self) -> None:
        book = make_book(max_entries=2)
        book.add("10.0.0.1", 1, source="addr", now=1.0)
        fail(book, "10.0.0.1", 1, 2.0)
        reach(book, "10.0.0.1", 1, 3.0)  # reached once, then failing again
        fail(book, "10.0.0.1", 1, 4.0)
        fail(book, "10.0.0.1", 1, 5.0)
        book.add("10.0.0.2", 1, source="addr", now=6.0)  # never reached, never failed
        book.add("10.0.0.3", 1, source="addr", now=7.0)
        self.assertEqual(sorted(e.host for e in book.entries()), ["10.0.0.1", "10.0.0.3"])

    @settings(max_examples=100, deadline=None)
    @given(
        max_entries=st.integers(min_value=1, max_value=8),
        adds=st.lists(
            st.tuples(
                st.integers(min_value=1, max_value=20),  # host suffix
                st.sampled_from(SOURCES),
                st.floats(min_value=0.0, max_value=1000.0),  # seen
                st.booleans(),  # fail it afterwards
            ),
            max_size=60,
        ),
    )
    def test_bounded_property(
        self, max_entries: int, adds: list[tuple[int, str, float, bool]]
    ) -> None:
        book = make_book(max_entries=max_entries)
        protected: set[tuple[str, int]] = set()
        for step, (suffix, source, seen, failed) in enumerate(adds):
            host = f"10.0.0.{suffix}"
            now = 1000.0 + step
            book.add(host, 3000, source=source, now=now, seen=seen)
            if source in PROTECTED_SOURCES:
                protected.add((host, 3000))
            if failed:
                fail(book, host, 3000, now)
            keys = {entry.key for entry in book.entries()}
            self.assertLessEqual(len(book), max(max_entries, len(protected)))
            self.assertLessEqual(protected, keys)
            for entry in book.entries():
                self.assertLessEqual(entry.last_seen, now)


class RetryPolicyTests(SynchronousTestCase):
    """Backoff and the circuit breaker."""

    def entry(self, failures: int, last_attempt: float | None = 100.0) -> AddressEntry:
        return AddressEntry(
            "10.0.0.1", 1, None, "addr", 0.0, 0.0, last_attempt=last_attempt, failures=failures
        )

    def test_backoff_grows_and_caps(self) -> None:
        policy = RetryPolicy(base_delay=1.0, max_delay=10.0, breaker_threshold=100)
        self.assertEqual(policy.next_attempt_at(self.entry(0)), 0.0)
        delays = [policy.next_attempt_at(self.entry(n)) - 100.0 for n in range(1, 8)]
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0])

    def test_huge_failure_count(self) -> None:
        policy = RetryPolicy(breaker_threshold=10**6)
        self.assertEqual(policy.next_attempt_at(self.entry(10**5)), 100.0 + policy.max_delay)

    def test_suspension_floor(self) -> None:
        policy = RetryPolicy()
        entry = self.entry(0)
        entry.suspended_until = 500.0
        self.assertEqual(policy.next_attempt_at(entry), 500.0)
        entry.failures = 1
        self.assertEqual(policy.next_attempt_at(entry), 500.0)
        entry.suspended_until = 0.0
        self.assertEqual(policy.next_attempt_at(entry), 101.0)

    def test_breaker(self) -> None:
        policy = RetryPolicy(breaker_threshold=5, cooldown=900.0)
        self.assertFalse(policy.breaker_open(self.entry(4), 101.0))
        self.assertEqual(policy.next_attempt_at(self.entry(4)), 108.0)
        self.assertTrue(policy.breaker_open(self.entry(5), 101.0))
        self.assertTrue(policy.breaker_open(self.entry(5), 999.9))
        self.assertFalse(policy.breaker_open(self.entry(5), 1000.0))
        self.assertEqual(policy.next_attempt_at(self.entry(5)), 1000.0)
        self.assertEqual(policy.next_attempt_at(self.entry(6)), 1000.0)


class DiallingTests(SynchronousTestCase):
    """record_* and candidates() driving a dialler through backoff and the breaker."""

    def candidates(self, book: AddressBook, now: float, **kwargs: object) -> list[tuple[str, int]]:
        return [entry.key for entry in book.candidates(now, **kwargs)]  # type: ignore[arg-type]

    def test_backoff_schedule(self) -> None:
        book = make_book(policy=RetryPolicy(base_delay=1.0, max_delay=300.0))
        book.add("10.0.0.1", 1, source="bootstrap", now=0.0)  # protected: never aged out
        now = 0.0
        expected_delays = [1.0, 2.0, 4.0, 8.0]
        for delay in expected_delays:
            self.assertEqual(self.candidates(book, now), [("10.0.0.1", 1)])
            fail(book, "10.0.0.1", 1, now)
            self.assertEqual(self.candidates(book, now + delay - 0.01), [])
            now += delay
        entry = book.get("10.0.0.1", 1)
        assert entry is not None
        self.assertEqual((entry.failures, entry.total_failures), (4, 4))

    def test_breaker_cycle(self) -> None:
        policy = RetryPolicy(base_delay=1.0, max_delay=300.0, breaker_threshold=5, cooldown=900.0)
        book = make_book(policy=policy)
        book.add("10.0.0.1", 1, source="witness", now=0.0)  # protected: never aged out
        now = 0.0
        for _ in range(5):
            now = policy.next_attempt_at(book.get("10.0.0.1", 1))  # type: ignore[arg-type]
            self.assertEqual(self.candidates(book, now), [("10.0.0.1", 1)])
            fail(book, "10.0.0.1", 1, now)
        entry = book.get("10.0.0.1", 1)
        assert entry is not None
        self.assertTrue(policy.breaker_open(entry, now))
        # Resting for the cooldown.
        self.assertEqual(self.candidates(book, now + 899.0), [])
        # Half-open: one try.
        now += 900.0
        self.assertFalse(policy.breaker_open(entry, now))
        self.assertEqual(self.candidates(book, now), [("10.0.0.1", 1)])
        book.record_attempt("10.0.0.1", 1, now)
        self.assertEqual(self.candidates(book, now + 1.0), [])  # only one try
        # It fails: another full cooldown.
        book.record_failure("10.0.0.1", 1, now + 1.0)
        self.assertEqual(self.candidates(book, now + 899.0), [])
        now += 900.0
        self.assertEqual(self.candidates(book, now), [("10.0.0.1", 1)])
        # It succeeds: the breaker closes and backoff restarts.
        book.record_attempt("10.0.0.1", 1, now)
        book.record_success("10.0.0.1", 1, now + 0.5, NODE_A)
        entry = book.get("10.0.0.1", 1)
        assert entry is not None
        self.assertEqual(entry.failures, 0)
        self.assertEqual(entry.total_failures, 6)
        self.assertEqual(entry.successes, 1)
        self.assertEqual(entry.last_success, now + 0.5)
        self.assertEqual(entry.last_seen, now + 0.5)
        self.assertEqual(entry.node_id, NODE_A)
        self.assertFalse(policy.breaker_open(entry, now + 1.0))
        self.assertEqual(self.candidates(book, now + 1.0), [("10.0.0.1", 1)])
        fail(book, "10.0.0.1", 1, now + 2.0)
        self.assertEqual(policy.next_attempt_at(book.get("10.0.0.1", 1)), now + 3.0)  # type: ignore[arg-type]

    def test_failure_without_attempt(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="addr", now=0.0)
        book.record_failure("10.0.0.1", 1, 50.0)
        self.assertEqual(self.candidates(book, 50.5), [])
        self.assertEqual(self.candidates(book, 51.0), [("10.0.0.1", 1)])

    def test_suspend(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="addr", now=0.0, node_id=NODE_A)
        book.add("10.0.0.2", 1, source="addr", now=0.0, node_id=NODE_A)
        book.add("10.0.0.3", 1, source="addr", now=0.0, node_id=NODE_B)
        self.assertEqual(book.suspend(NODE_A, 100.0), 2)
        self.assertEqual(book.suspend(NODE_C, 100.0), 0)
        self.assertEqual(self.candidates(book, 50.0), [("10.0.0.3", 1)])
        self.assertEqual(len(self.candidates(book, 100.0)), 3)
        # A shorter suspension does not cut a longer one short.
        book.suspend(NODE_A, 1000.0)
        book.suspend(NODE_A, 200.0)
        self.assertEqual(book.get("10.0.0.1", 1).suspended_until, 1000.0)  # type: ignore[union-attr]

    def test_candidates_ordering(self) -> None:
        book = make_book()
        for i in range(1, 11):
            book.add(f"10.0.0.{i}", 1, source="addr", now=0.0)
        book.add("10.0.1.1", 1, source="bootstrap", now=0.0)
        book.add("10.0.1.2", 1, source="manual", now=0.0)
        book.record_success("10.0.0.5", 1, 10.0, NODE_A)
        book.record_success("10.0.0.7", 1, 20.0, NODE_B)
        result = self.candidates(book, 30.0)
        self.assertEqual(len(result), 12)
        self.assertEqual(result[:2], [("10.0.0.7", 1), ("10.0.0.5", 1)])
        self.assertEqual(set(result[2:4]), {("10.0.1.1", 1), ("10.0.1.2", 1)})
        rest = result[4:]
        self.assertEqual(len(set(rest)), 8)
        # The rest is shuffled: across several calls the order changes.
        orders = {tuple(self.candidates(book, 30.0)[4:]) for _ in range(10)}
        self.assertGreater(len(orders), 1)

    def test_candidates_exclusions(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="addr", now=0.0, node_id=NODE_A)
        book.add("10.0.0.2", 1, source="addr", now=0.0, node_id=NODE_B)
        book.add("::1", 1, source="addr", now=0.0)
        book.add("10.0.0.4", 1, source="addr", now=0.0)
        result = self.candidates(
            book,
            1.0,
            exclude_node_ids={NODE_A},
            exclude_endpoints=[("[::1]", 1), ("10.0.0.2", 2)],
        )
        self.assertEqual(sorted(result), [("10.0.0.2", 1), ("10.0.0.4", 1)])


class SampleTests(SynchronousTestCase):
    """Choosing addresses to share in a getaddr answer: only those reached recently."""

    def test_only_recently_reached_shared(self) -> None:
        book = make_book()
        now = 100_000.0
        for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"):
            book.add(host, 1, source="addr", now=now - SHARE_WINDOW - 10)
        book.add("10.0.0.6", 1, source="bootstrap", now=now)  # never reached, even configured
        book.add("10.0.0.7", 1, source="manual", now=now)  # (an older version kept these)
        book.add("10.0.0.8", 1, source="addr", now=now, node_id=NODE_A)
        reach(book, "10.0.0.1", 1, now - SHARE_WINDOW)  # just within the window
        reach(book, "10.0.0.2", 1, now - SHARE_WINDOW - 1)  # just outside it
        reach(book, "10.0.0.3", 1, now - 60)
        fail(book, "10.0.0.3", 1, now - 30)  # reached, then failed: not vouched for
        reach(book, "10.0.0.4", 1, now - 60)
        reach(book, "10.0.0.8", 1, now - 60)  # reached, but the asker's own
        # 10.0.0.5: heard of, never dialled
        result = book.sample(10, now, exclude_node_ids=[NODE_A])
        self.assertEqual(sorted(e.host for e in result), ["10.0.0.1", "10.0.0.4"])
        for entry in result:
            self.assertTrue(entry.shareable(now))
        # reached again, 10.0.0.3 is shared again
        reach(book, "10.0.0.3", 1, now)
        self.assertIn("10.0.0.3", {e.host for e in book.sample(10, now)})

    def test_record_success_says_when_newly_shareable(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="addr", now=0.0)
        self.assertTrue(reach(book, "10.0.0.1", 1, 10.0))
        self.assertFalse(reach(book, "10.0.0.1", 1, 20.0))  # still within the window
        fail(book, "10.0.0.1", 1, 30.0)
        self.assertTrue(reach(book, "10.0.0.1", 1, 40.0))  # failed in between
        self.assertTrue(reach(book, "10.0.0.1", 1, 40.0 + SHARE_WINDOW + 1))
        self.assertFalse(book.record_success("10.0.0.9", 1, 50.0, None))  # not in the book

    def test_sample_count(self) -> None:
        book = make_book()
        for i in range(1, 21):
            book.add(f"10.0.0.{i}", 1, source="addr", now=0.0)
            reach(book, f"10.0.0.{i}", 1, 0.5)
        self.assertEqual(len(book.sample(5, 1.0)), 5)
        self.assertEqual(len({e.key for e in book.sample(5, 1.0)}), 5)
        self.assertEqual(len(book.sample(100, 1.0)), 20)
        self.assertEqual(book.sample(0, 1.0), [])
        self.assertEqual(book.sample(-1, 1.0), [])

    def test_sample_mixes_families(self) -> None:
        """Each family gets up to half of the answer; what one lacks goes to the other."""
        book = make_book()
        for i in range(1, 31):
            book.add(f"10.0.0.{i}", 1, source="addr", now=0.0)
            reach(book, f"10.0.0.{i}", 1, 0.5)
        for i in range(1, 4):
            book.add(f"2001:db8::{i}", 1, source="addr", now=0.0)
            reach(book, f"2001:db8::{i}", 1, 0.5)

        def ipv6(count: int) -> int:
            return sum(":" in entry.host for entry in book.sample(count, 1.0))

        self.assertEqual(ipv6(10), 3, "every IPv6 address, though 3 of 33")
        self.assertEqual(len(book.sample(10, 1.0)), 10)
        self.assertEqual(ipv6(4), 2, "at most half")
        for i in range(4, 31):
            book.add(f"2001:db8::{i}", 1, source="addr", now=0.0)
            reach(book, f"2001:db8::{i}", 1, 0.5)
        self.assertEqual(ipv6(10), 5)


class AgingTests(SynchronousTestCase):
    """Addresses that keep failing leave the book; protected ones stay."""

    def test_never_reached_forgotten_after_max_failures(self) -> None:
        book = make_book()
        for source in ("addr", "inbound", "mdns", "dht"):
            book.add("10.0.0.1", 1, source=source, now=0.0)
            for attempt in range(1, NEVER_REACHED_MAX_FAILURES):
                self.assertIsNone(fail(book, "10.0.0.1", 1, float(attempt)))
                self.assertIn(("10.0.0.1", 1), book)
            aged_out = fail(book, "10.0.0.1", 1, 10.0)
            assert aged_out is not None
            self.assertEqual(
                (aged_out.source, aged_out.failures, aged_out.last_success),
                (source, NEVER_REACHED_MAX_FAILURES, None),
            )
            self.assertNotIn(("10.0.0.1", 1), book)
            self.assertEqual(book.candidates(1e9), [])

    def test_reached_kept_through_failures_within_the_grace(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="addr", now=0.0)
        reach(book, "10.0.0.1", 1, 100.0)
        now = 100.0
        for _ in range(REACHED_MAX_FAILURES * 3):  # many failures, every breaker cooldown
            now += 900.0
            self.assertIsNone(fail(book, "10.0.0.1", 1, now))
        self.assertLess(now - 100.0, REACHED_FAILURE_GRACE)
        self.assertIn(("10.0.0.1", 1), book)

    def test_reached_forgotten_after_max_failures_once_the_grace_is_over(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="addr", now=0.0)
        reach(book, "10.0.0.1", 1, 0.0)
        after_grace = REACHED_FAILURE_GRACE + 1.0
        # the grace is over, but not enough failures yet
        for i in range(REACHED_MAX_FAILURES - 1):
            self.assertIsNone(fail(book, "10.0.0.1", 1, after_grace + i))
        aged_out = fail(book, "10.0.0.1", 1, after_grace + 100)
        assert aged_out is not None
        self.assertEqual((aged_out.failures, aged_out.successes), (REACHED_MAX_FAILURES, 1))
        self.assertNotIn(("10.0.0.1", 1), book)

    def test_a_success_resets_the_count(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="addr", now=0.0)
        for _ in range(2 * NEVER_REACHED_MAX_FAILURES):
            for _ in range(NEVER_REACHED_MAX_FAILURES - 1):
                fail(book, "10.0.0.1", 1, 1.0)
            reach(book, "10.0.0.1", 1, 2.0)
        self.assertIn(("10.0.0.1", 1), book)

    def test_protected_never_forgotten(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="bootstrap", now=0.0)
        book.add("10.0.0.2", 1, source="witness", now=0.0, node_id=NODE_A)
        book.add("10.0.0.3", 1, source="manual", now=0.0)
        reach(book, "10.0.0.3", 1, 0.0)  # a manual address is kept once reached
        book.add("10.0.0.4", 1, source="addr", now=0.0)
        reach(book, "10.0.0.4", 1, 0.0)
        book.add("10.0.0.4", 1, source="manual", now=0.0)  # connected to by hand: taken over
        years = 3 * 365 * 86400.0
        for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
            for i in range(100):
                self.assertIsNone(fail(book, host, 1, years + i))
        self.assertEqual(book.prune(2 * years), 0)
        self.assertEqual(len(book), 4)
        for entry in book.entries():
            self.assertTrue(entry.protected)
            self.assertTrue(entry.is_terrible(2 * years))

    def test_manual_never_reached_is_not_protected(self) -> None:
        """A manual entry that never worked, as older versions kept them, ages out."""
        book = make_book()
        book.add("127.0.0.1", 1, source="manual", now=0.0)
        self.assertFalse(book.get("127.0.0.1", 1).protected)  # type: ignore[union-attr]
        for i in range(NEVER_REACHED_MAX_FAILURES):
            fail(book, "127.0.0.1", 1, float(i))
        self.assertNotIn(("127.0.0.1", 1), book)

    def test_manual_does_not_replace_configuration(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="bootstrap", now=0.0)
        book.add("10.0.0.2", 1, source="witness", now=0.0)
        for host in ("10.0.0.1", "10.0.0.2"):
            book.add(host, 1, source="manual", now=1.0)
        self.assertEqual([e.source for e in book.entries()], ["bootstrap", "witness"])

    @settings(max_examples=100, deadline=None)
    @given(
        steps=st.lists(
            st.tuples(
                st.integers(min_value=1, max_value=6),  # host suffix
                st.sampled_from(SOURCES),
                st.sampled_from(("add", "success", "failure")),
                st.floats(min_value=0.0, max_value=REACHED_FAILURE_GRACE / 4),  # time step
            ),
            max_size=80,
        ),
    )
    def test_invariants(self, steps: list[tuple[int, str, str, float]]) -> None:
        """
        Whatever happens: no unprotected entry is terrible, protected ones
        stay, and only recently reached addresses, never failed since, are
        shared.
        """
        book = make_book()
        now = 0.0
        kept: set[tuple[str, int]] = set()
        for suffix, source, step, elapsed in steps:
            now += elapsed
            host = f"10.0.0.{suffix}"
            if step == "add":
                book.add(host, 3000, source=source, now=now)
            elif step == "success":
                reach(book, host, 3000, now)
            else:
                fail(book, host, 3000, now)
                entry = book.get(host, 3000)
                # the failure that makes an address terrible removes it
                self.assertTrue(entry is None or entry.protected or not entry.is_terrible(now))
            kept |= {e.key for e in book.entries() if e.protected}
            book.prune(now)  # time alone can make one terrible: the hourly prune drops it
            self.assertLessEqual(kept, {e.key for e in book.entries()})
            for entry in book.entries():
                self.assertTrue(entry.protected or not entry.is_terrible(now), entry)
            for entry in book.sample(100, now):
                self.assertIsNotNone(entry.last_success)
                self.assertLessEqual(now - (entry.last_success or 0.0), SHARE_WINDOW)
                self.assertEqual(entry.failures, 0)


class KeepManualTests(SynchronousTestCase):
    """An address dialled by hand enters the book only once reached, protected at once."""

    def test_kept_and_protected_in_a_full_book(self) -> None:
        book = make_book(max_entries=2)
        for host in ("10.0.0.1", "10.0.0.2"):
            book.add(host, 1, source="addr", now=0.0)
            reach(book, host, 1, 0.0)
        self.assertTrue(book.keep_manual("10.0.0.3", 1, now=1.0, node_id=NODE_A))
        entry = book.get("10.0.0.3", 1)
        assert entry is not None
        self.assertEqual(
            (entry.source, entry.successes, entry.last_success, entry.node_id),
            ("manual", 1, 1.0, NODE_A),
        )
        self.assertTrue(entry.protected)
        self.assertEqual(len(book), 2)  # a learned address made room

    def test_takes_over_learned_addresses_not_configured_ones(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="addr", now=0.0)
        book.add("10.0.0.2", 1, source="bootstrap", now=0.0)
        self.assertTrue(book.keep_manual("10.0.0.1", 1, now=1.0, node_id=None))
        self.assertTrue(book.keep_manual("10.0.0.2", 1, now=1.0, node_id=None))
        self.assertFalse(book.keep_manual("10.0.0.1", 1, now=2.0, node_id=None))
        self.assertEqual([e.source for e in book.entries()], ["manual", "bootstrap"])
        self.assertRaises(AddressError, book.keep_manual, "bad host", 1, now=1.0, node_id=None)


class PruneTests(SynchronousTestCase):
    """Dropping stale and terrible addresses."""

    def test_prune(self) -> None:
        book = make_book()
        day = 86400.0
        book.add("10.0.0.1", 1, source="addr", now=0.0)  # old, failing: pruned
        fail(book, "10.0.0.1", 1, 1.0)
        book.add("10.0.0.2", 1, source="addr", now=0.0)  # old, never failed: kept
        book.add("10.0.0.3", 1, source="bootstrap", now=0.0)  # protected
        fail(book, "10.0.0.3", 1, 1.0)
        book.add("10.0.0.4", 1, source="addr", now=20 * day)  # recent, failing: kept
        fail(book, "10.0.0.4", 1, 20 * day)
        self.assertEqual(book.prune(31 * day), 1)
        self.assertEqual(
            sorted(e.host for e in book.entries()), ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
        )
        self.assertEqual(book.prune(31 * day, max_age=5 * day), 1)
        self.assertEqual(book.prune(31 * day), 0)

    def test_prune_drops_terrible_entries(self) -> None:
        """Reached long ago and failing since: pruned, even if heard of recently."""
        book = make_book()
        book.add("10.0.0.1", 1, source="addr", now=0.0)
        reach(book, "10.0.0.1", 1, 0.0)
        for i in range(REACHED_MAX_FAILURES):
            fail(book, "10.0.0.1", 1, 3600.0 * (i + 1))
        book.add("10.0.0.1", 1, source="addr", now=REACHED_FAILURE_GRACE)  # a peer names it
        self.assertEqual(book.prune(REACHED_FAILURE_GRACE), 0)
        self.assertEqual(book.prune(REACHED_FAILURE_GRACE + 1), 1)
        self.assertEqual(len(book), 0)


class PersistenceTests(SynchronousTestCase):
    """The book survives a restart through the storage's ``addresses`` table."""

    def setUp(self) -> None:
        self.storage = Storage(self.mktemp())
        self.storage.open()
        self.addCleanup(self.storage.close)

    def reopen(self) -> AddressBook:
        self.storage.close()
        self.storage.open()
        book = AddressBook()
        book.load(self.storage.connection)
        return book

    def test_all_fields_survive(self) -> None:
        book = AddressBook(rng=random.Random(1))
        book.load(self.storage.connection)
        book.add("10.0.0.1", 3000, source="bootstrap", now=10.0)
        book.add("::1", 3001, source="addr", now=11.0, node_id=NODE_A, seen=5.5)
        book.add("127.0.0.1", 3002, source="inbound", now=12.0)
        book.add("example.com", 3003, source="dht", now=13.0)
        book.add("10.0.0.9", 3009, source="mdns", now=13.0)
        fail(book, "10.0.0.1", 3000, 20.0)
        fail(book, "10.0.0.1", 3000, 21.0)
        book.record_attempt("::1", 3001, 30.0)
        book.record_success("::1", 3001, 31.25, NODE_B)
        fail(book, "::1", 3001, 40.0)
        book.suspend(NODE_B, 99.5)
        book.forget("10.0.0.9", 3009)
        before = sorted(book.entries(), key=lambda e: e.key)

        reloaded = self.reopen()
        after = sorted(reloaded.entries(), key=lambda e: e.key)
        self.assertEqual(after, before)
        entry = reloaded.get("::1", 3001)
        assert entry is not None
        self.assertEqual(
            entry,
            AddressEntry(
                host="::1",
                port=3001,
                node_id=NODE_B,
                source="addr",
                first_seen=11.0,
                last_seen=31.25,
                last_attempt=40.0,
                last_success=31.25,
                successes=1,
                failures=1,
                total_failures=1,
                suspended_until=99.5,
            ),
        )
        self.assertIsNone(reloaded.get("10.0.0.9", 3009))

    def test_eviction_and_prune_persist(self) -> None:
        book = AddressBook(max_entries=2)
        book.load(self.storage.connection)
        book.add("10.0.0.1", 1, source="manual", now=1.0)
        reach(book, "10.0.0.1", 1, 1.0)  # protected once reached
        book.add("10.0.0.2", 1, source="addr", now=2.0)
        book.add("10.0.0.3", 1, source="addr", now=3.0)
        fail(book, "10.0.0.3", 1, 4.0)
        self.assertEqual(book.prune(1e9), 1)
        reloaded = self.reopen()
        self.assertEqual([e.host for e in reloaded.entries()], ["10.0.0.1"])

    def test_aging_out_persists(self) -> None:
        book = AddressBook()
        book.load(self.storage.connection)
        book.add("10.0.0.1", 1, source="addr", now=1.0)
        book.add("10.0.0.2", 1, source="bootstrap", now=1.0)
        for i in range(NEVER_REACHED_MAX_FAILURES):
            fail(book, "10.0.0.1", 1, 2.0 + i)
            fail(book, "10.0.0.2", 1, 2.0 + i)
        reloaded = self.reopen()
        self.assertEqual([e.host for e in reloaded.entries()], ["10.0.0.2"])

    def test_terrible_entries_of_an_older_version_pruned(self) -> None:
        """
        Older versions kept a manual address whatever its dial did, and
        never aged anything out: such rows are dropped by the first prune.
        """
        rows = [
            ("127.0.0.1", 1, None, "manual", 1.0, 1.0, 50.0, None, 0, 5, 5, 0.0),
            ("10.0.0.1", 3000, None, "addr", 1.0, 1.0, 50.0, None, 0, 7, 7, 0.0),
            ("10.0.0.2", 3000, None, "bootstrap", 1.0, 1.0, 50.0, None, 0, 9, 9, 0.0),
            ("10.0.0.3", 3000, NODE_A, "manual", 1.0, 40.0, 50.0, 40.0, 1, 2, 2, 0.0),
            ("10.0.0.4", 3000, None, "addr", 1.0, 1.0, 50.0, None, 0, 2, 2, 0.0),
        ]
        self.storage.connection.executemany(
            "INSERT INTO addresses (host, port, node_id, source, first_seen, last_seen, "
            "last_attempt, last_success, successes, failures, total_failures, suspended_until) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        book = self.reopen()
        self.assertEqual(len(book), 5)
        self.assertEqual(book.prune(100.0), 2)
        self.assertEqual(
            sorted(e.host for e in self.reopen().entries()), ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
        )

    def test_load_replaces_memory(self) -> None:
        book = AddressBook()
        book.load(self.storage.connection)
        book.add("10.0.0.1", 1, source="addr", now=1.0)
        self.storage.connection.execute("DELETE FROM addresses")
        book.load(self.storage.connection)
        self.assertEqual(len(book), 0)

    def test_memory_only_load(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="addr", now=1.0)
        book.load(None)
        self.assertEqual(len(book), 0)

    def test_rejects_bad_max_entries(self) -> None:
        self.assertRaises(ValueError, AddressBook, max_entries=0)


ETH, SOL = "ETH/USD", "SOL/USD"


class MarketsTests(SynchronousTestCase):
    """The markets known of each address: learned, kept, persisted and preferred."""

    def test_learned_from_a_handshake_and_from_discovery(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="addr", now=1.0)
        self.assertEqual(book.get("10.0.0.1", 1).markets, frozenset())  # type: ignore[union-attr]
        book.record_success("10.0.0.1", 1, 2.0, NODE_A, markets=("BTC/USD", ETH))
        self.assertEqual(book.get("10.0.0.1", 1).markets,  # type: ignore[union-attr]
                         frozenset({"BTC/USD", ETH}))  # fmt: skip
        book.record_markets("10.0.0.1", 1, (SOL,))
        self.assertEqual(book.get("10.0.0.1", 1).markets, frozenset({SOL}))  # type: ignore[union-attr]
        # discovery says so for a new address, and for a known one; silence keeps them
        book.add("10.0.0.2", 1, source="dht", now=3.0, markets=(ETH,))
        book.add("10.0.0.1", 1, source="mdns", now=3.0, markets=(ETH,))
        book.add("10.0.0.1", 1, source="addr", now=4.0)
        book.record_success("10.0.0.1", 1, 5.0, NODE_A)
        for host in ("10.0.0.1", "10.0.0.2"):
            self.assertEqual(book.get(host, 1).markets, frozenset({ETH}))  # type: ignore[union-attr]
        book.record_markets("10.0.0.9", 1, (ETH,))  # unknown: nothing
        self.assertIsNone(book.get("10.0.0.9", 1))

    def test_carries(self) -> None:
        entry = AddressEntry("10.0.0.1", 1, None, "addr", 1.0, 1.0)
        self.assertIsNone(entry.carries((ETH,)))
        entry.markets = frozenset({ETH, SOL})
        self.assertTrue(entry.carries(("BTC/USD", ETH)))
        self.assertFalse(entry.carries(("BTC/USD",)))

    def test_candidates_prefer_carriers_then_unknown_then_others(self) -> None:
        book = make_book()
        book.add("10.0.0.1", 1, source="addr", now=1.0, markets=(SOL,))
        reach(book, "10.0.0.1", 1, 2.0)  # reached: first without a preference
        book.add("10.0.0.2", 1, source="addr", now=1.0)
        book.add("10.0.0.3", 1, source="addr", now=1.0, markets=(SOL, ETH))
        book.add("10.0.0.4", 1, source="bootstrap", now=1.0)
        book.add("10.0.0.5", 1, source="addr", now=1.0, markets=(ETH,))
        reach(book, "10.0.0.5", 1, 3.0)  # reached last: first of all without a preference
        hosts = [e.host for e in book.candidates(10.0)]
        self.assertEqual(hosts[:2], ["10.0.0.5", "10.0.0.1"])
        hosts = [e.host for e in book.candidates(10.0, prefer=(ETH,))]
        self.assertEqual(hosts[:2], ["10.0.0.5", "10.0.0.3"])
        self.assertEqual(hosts[2:4], ["10.0.0.4", "10.0.0.2"])  # unknown, operator first
        self.assertEqual(hosts[4:], ["10.0.0.1"])

    def test_persisted(self) -> None:
        storage = Storage(self.mktemp())
        storage.open()
        self.addCleanup(storage.close)
        book = make_book()
        book.load(storage.connection)
        book.add("10.0.0.1", 1, source="addr", now=1.0)
        book.add("10.0.0.2", 1, source="dht", now=1.0, markets=(ETH,))
        book.record_success("10.0.0.1", 1, 2.0, NODE_A, markets=(SOL, "BTC/USD"))
        book.add("10.0.0.3", 1, source="addr", now=1.0)
        self.assertEqual(
            sorted(storage.connection.execute("SELECT host, markets FROM addresses")),
            [("10.0.0.1", "BTC/USD,SOL/USD"), ("10.0.0.2", "ETH/USD"), ("10.0.0.3", "")],
        )
        storage.close()
        storage.open()
        reloaded = make_book()
        reloaded.load(storage.connection)
        self.assertEqual(sorted(reloaded.entries(), key=lambda e: e.key),
                         sorted(book.entries(), key=lambda e: e.key))  # fmt: skip
        self.assertEqual(reloaded.get("10.0.0.1", 1).markets,  # type: ignore[union-attr]
                         frozenset({"BTC/USD", SOL}))  # fmt: skip

    def test_book_of_schema_6_loads_with_no_markets_known(self) -> None:
        """A schema 6 database (before markets) keeps every address, its markets not known."""
        import os
        import sqlite3

        from bitfitech.storage import DATABASE_NAME, MIGRATIONS, schema_version

        data_dir = self.mktemp()
        os.makedirs(data_dir)
        db = sqlite3.connect(os.path.join(data_dir, DATABASE_NAME), isolation_level=None)
        for statements in MIGRATIONS[:6]:
            for statement in statements:
                db.execute(statement)
        db.execute("INSERT INTO settings (key, value) VALUES ('schema_version', '6')")
        db.executemany(
            "INSERT INTO addresses (host, port, node_id, source, first_seen, last_seen, "
            "last_attempt, last_success, successes, failures, total_failures, suspended_until) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [("10.0.0.1", 3000, NODE_A, "addr", 1.0, 5.0, 4.0, 4.0, 2, 0, 1, 0.0),
             ("10.0.0.2", 3000, None, "bootstrap", 1.0, 1.0, None, None, 0, 0, 0, 0.0)],
        )  # fmt: skip
        db.close()
        storage = Storage(data_dir)
        storage.open()
        self.addCleanup(storage.close)
        self.assertEqual(schema_version(storage.connection), 7)
        book = make_book()
        book.load(storage.connection)
        self.assertEqual(
            book.entries(),
            [
                AddressEntry("10.0.0.1", 3000, NODE_A, "addr", 1.0, 5.0, 4.0, 4.0, 2, 0, 1, 0.0),
                AddressEntry("10.0.0.2", 3000, None, "bootstrap", 1.0, 1.0),
            ],
        )
        book.record_success("10.0.0.2", 3000, 9.0, NODE_B, markets=(ETH,))
        self.assertEqual(
            storage.connection.execute(
                "SELECT markets FROM addresses WHERE host = '10.0.0.2'"
            ).fetchone(),
            (ETH,),
        )
