"""Tests for :mod:`bitfitech.discovery.kademlia.routing`."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.discovery.kademlia.ids import ID_SPACE, distance, id_to_int, int_to_id
from bitfitech.discovery.kademlia.routing import (
    GOOD_FOR,
    STALL_INITIAL,
    STALL_MAX,
    STALL_MIN,
    RoundTrip,
    RoutingTable,
)

OWN = int_to_id(0)


def far(n: int) -> bytes:
    """An id in the upper half of the space (far from OWN = 0), numbered C{n}."""
    return int_to_id((1 << 159) + n)


def near(n: int) -> bytes:
    """An id sharing a long prefix with OWN."""
    return int_to_id(n + 1)


def address(n: int) -> tuple[str, int]:
    return (f"10.0.{n // 250}.{n % 250 + 1}", 6881)


def fill(table: RoutingTable, ids: list[bytes], now: float = 0.0) -> None:
    for n, node_id in enumerate(ids):
        table.heard_from(node_id, address(n), now, responded=True)


class RoutingTableTests(SynchronousTestCase):
    """Tests for :class:`RoutingTable`."""

    def test_own_and_malformed_ids_ignored(self) -> None:
        """Our own id and ids of another length never enter the table."""
        table = RoutingTable(OWN, 0.0)
        table.heard_from(OWN, address(1), 0.0, responded=True)
        table.heard_from(b"short", address(2), 0.0, responded=True)
        self.assertEqual(len(table), 0)

    def test_split_own_bucket(self) -> None:
        """A full bucket holding our id splits; the contacts all stay."""
        table = RoutingTable(OWN, 0.0)
        ids = [far(n) for n in range(4)] + [near(n) for n in range(8)]
        fill(table, ids)
        self.assertEqual(len(table), 12)
        self.assertEqual(len(table.buckets), 2)
        self.assertEqual(table.buckets[0].high, ID_SPACE // 2)
        for bucket in table.buckets:
            for contact in bucket.contacts:
                self.assertTrue(bucket.covers(id_to_int(contact.node_id)))

    def test_full_far_bucket_keeps_old_contacts(self) -> None:
        """A full bucket without our id keeps its good contacts; the newcomer waits."""
        table = RoutingTable(OWN, 0.0)
        fill(table, [near(1)] + [far(n) for n in range(8)])
        to_ping = table.heard_from(far(100), address(100), 1.0, responded=True)
        self.assertEqual(to_ping, [])
        self.assertNotIn(far(100), table)
        self.assertEqual(len(table.bucket_for(far(0)).contacts), 8)
        self.assertEqual([c.node_id for c in table.bucket_for(far(0)).replacements], [far(100)])

    def test_questionable_pinged_then_replaced(self) -> None:
        """
        Questionable contacts are to be pinged; when one fails with a
        replacement waiting, the replacement takes over at once.
        """
        table = RoutingTable(OWN, 0.0)
        fill(table, [near(1)] + [far(n) for n in range(8)])
        later = GOOD_FOR + 1
        for n in range(7):
            table.heard_from(far(n), address(n + 1), later, responded=True)
        to_ping = table.heard_from(far(100), address(100), later, responded=False)
        self.assertEqual([c.node_id for c in to_ping], [far(7)])
        # Asked again at once, it is not pinged twice.
        self.assertEqual(table.heard_from(far(101), address(101), later, responded=False), [])
        table.failed(far(7), address(8), later + 1)
        self.assertNotIn(far(7), table)
        # The freshest replacement took its place.
        self.assertIn(far(101), table)
        self.assertEqual(len(table.bucket_for(far(0)).contacts), 8)

    def test_failure_without_replacement(self) -> None:
        """With no replacement waiting, a contact that has answered goes at its second failure."""
        table = RoutingTable(OWN, 0.0)
        fill(table, [far(1)])
        table.failed(far(1), address(0), 1.0)
        self.assertIn(far(1), table)
        table.failed(far(1), address(0), 2.0)
        self.assertNotIn(far(1), table)

    def test_never_answered_goes_at_first_failure(self) -> None:
        """A contact that only ever queried us goes at its first failure."""
        table = RoutingTable(OWN, 0.0)
        table.heard_from(far(1), address(1), 0.0, responded=False)
        table.failed(far(1), address(1), 1.0)
        self.assertNotIn(far(1), table)

    def test_answered_replacement_promoted_first(self) -> None:
        """The freshest replacement that has answered us goes before fresher unverified ones."""
        table = RoutingTable(OWN, 0.0)
        fill(table, [near(1)] + [far(n) for n in range(8)])
        table.heard_from(far(100), address(100), 1.0, responded=True)
        table.heard_from(far(101), address(101), 2.0, responded=False)
        table.failed(far(3), address(4), 3.0)
        self.assertIn(far(100), table)
        self.assertNotIn(far(101), table)

    def test_unverified_newcomer_to_ping(self) -> None:
        """
        A node that queried us and enters the table is to be pinged once
        (until it answers, answers leave it out); one that answered is not.
        """
        table = RoutingTable(OWN, 0.0)
        to_ping = table.heard_from(far(1), address(1), 0.0, responded=False)
        self.assertEqual([c.node_id for c in to_ping], [far(1)])
        self.assertEqual(table.heard_from(far(1), address(1), 1.0, responded=False), [])
        self.assertEqual(table.heard_from(far(2), address(2), 1.0, responded=True), [])

    def test_closest_confirmed(self) -> None:
        """
        Answers name contacts that answered us and have not failed since;
        an answer makes a failed contact confirmed again.
        """
        table = RoutingTable(OWN, 0.0)
        fill(table, [far(n) for n in range(4)])
        table.heard_from(far(4), address(4), 0.0, responded=False)
        table.failed(far(1), address(1), 1.0)
        confirmed = [c.node_id for c in table.closest_confirmed(far(0))]
        self.assertEqual(confirmed, [far(0), far(2), far(3)])
        self.assertEqual(len(table.closest(far(0))), 5)
        table.heard_from(far(1), address(1), 2.0, responded=True)
        self.assertIn(far(1), [c.node_id for c in table.closest_confirmed(far(0))])

    def test_to_check_nearest_least_recently_seen(self) -> None:
        """
        The contact to check is, of the C{nearest} contacts nearest our
        id, the one least recently heard from or pinged: the checks go round.
        """
        table = RoutingTable(OWN, 0.0)
        for n in range(4):
            table.heard_from(near(n), address(n), float(n), responded=True)
        table.heard_from(far(1), address(10), -5.0, responded=True)
        chosen = [table.to_check(10.0 + i, 4) for i in range(5)]
        self.assertEqual(
            [c.node_id for c in chosen if c is not None],
            [near(0), near(1), near(2), near(3), near(0)],
        )
        self.assertEqual(table.get(near(0)).last_pinged, 14.0)  # type: ignore[union-attr]
        # Heard from since its ping: it waits its turn behind the others.
        table.heard_from(near(1), address(1), 20.0, responded=True)
        self.assertEqual(table.to_check(21.0, 4).node_id, near(2))  # type: ignore[union-attr]
        self.assertIsNone(RoutingTable(OWN, 0.0).to_check(0.0, 4))

    def test_bad_contact_replaced_at_once(self) -> None:
        """With max_failures=1 a failed contact goes at once, and a newcomer takes its place."""
        table = RoutingTable(OWN, 0.0, max_failures=1)
        fill(table, [near(1)] + [far(n) for n in range(8)])
        table.failed(far(3), address(4), 1.0)
        self.assertNotIn(far(3), table)
        table.heard_from(far(100), address(100), 2.0, responded=True)
        self.assertIn(far(100), table)

    def test_answer_resets_failures(self) -> None:
        """An answer clears a contact's failures."""
        table = RoutingTable(OWN, 0.0)
        fill(table, [far(1)])
        table.failed(far(1), address(0), 1.0)
        table.heard_from(far(1), address(0), 2.0, responded=True)
        table.failed(far(1), address(0), 3.0)
        self.assertIn(far(1), table)

    def test_failed_by_address(self) -> None:
        """A timeout to an address whose id we did not know still counts."""
        table = RoutingTable(OWN, 0.0, max_failures=1)
        fill(table, [far(1)])
        table.failed(None, address(0), 1.0)
        self.assertEqual(len(table), 0)

    def test_address_change(self) -> None:
        """A good contact keeps its address against a mere query from elsewhere."""
        table = RoutingTable(OWN, 0.0)
        fill(table, [far(1)])
        table.heard_from(far(1), ("10.9.9.9", 1), 1.0, responded=False)
        self.assertEqual(table.get(far(1)).address, address(0))  # type: ignore[union-attr]
        table.heard_from(far(1), ("10.9.9.9", 1), 2.0, responded=True)
        self.assertEqual(table.get(far(1)).address, ("10.9.9.9", 1))  # type: ignore[union-attr]
        self.assertIsNone(table.at_address(address(0)))

    def test_restarted_node_new_id(self) -> None:
        """A node answering from a known address with a new id replaces the old id."""
        table = RoutingTable(OWN, 0.0)
        fill(table, [far(1)])
        table.heard_from(far(2), address(0), 1.0, responded=True)
        self.assertNotIn(far(1), table)
        self.assertIn(far(2), table)

    def test_loopback_kept(self) -> None:
        """Nodes on 127.0.0.0/8 are ordinary contacts."""
        table = RoutingTable(OWN, 0.0)
        table.heard_from(far(1), ("127.0.0.1", 7001), 0.0, responded=True)
        table.heard_from(far(2), ("127.0.0.1", 7002), 0.0, responded=True)
        self.assertEqual(len(table), 2)

    def test_good_and_questionable(self) -> None:
        """Good means answered and heard from recently; unverified nodes are not good."""
        table = RoutingTable(OWN, 0.0)
        table.heard_from(far(1), address(1), 0.0, responded=True)
        table.heard_from(far(2), address(2), 0.0, responded=False)
        self.assertEqual([c.node_id for c in table.good_contacts(1.0)], [far(1)])
        self.assertEqual(table.good_contacts(GOOD_FOR + 1), [])

    def test_refresh_due(self) -> None:
        """Buckets untouched for the interval are stale; a lookup target touches one."""
        table = RoutingTable(OWN, 0.0)
        fill(table, [far(n) for n in range(4)] + [near(n) for n in range(8)])
        self.assertEqual(table.stale_buckets(100.0, 900.0), [])
        self.assertEqual(len(table.stale_buckets(900.0, 900.0)), 2)
        table.touch(far(50), 900.0)
        stale = table.stale_buckets(901.0, 900.0)
        self.assertEqual(len(stale), 1)
        target = table.random_id_in(stale[0], random.Random(1))
        self.assertTrue(stale[0].covers(id_to_int(target)))

    def test_ranges_to_fill(self) -> None:
        """
        After the self-lookup, the ranges to refresh are those not full
        from our k-th nearest contact's distance out, nearest first.
        """
        table = RoutingTable(OWN, 0.0)
        self.assertEqual(table.ranges_to_fill(), [])
        at = [int_to_id((1 << 149) + n) for n in range(8)]
        full = [int_to_id((1 << 154) + n) for n in range(8)]
        fill(table, at + full + [far(n) for n in range(4)])
        self.assertEqual(len(table), 20)
        wanted = [b for b in range(151, 161) if b != 155]
        self.assertEqual(table.ranges_to_fill(), [table.distance_range(b) for b in wanted])
        self.assertEqual(table.distance_range(151), (1 << 150, 1 << 151))
        self.assertEqual(table.count_between(*table.distance_range(155)), 8)
        self.assertEqual(table.count_between(*table.distance_range(160)), 4)
        self.assertEqual(table.count_between(*table.distance_range(151)), 0)
        self.assertEqual(table.count_between(0, ID_SPACE), 20)

    def test_ranges_to_fill_few_contacts(self) -> None:
        """
        With fewer than k contacts the self-lookup met every node it could:
        only the farthest contact's range is left to fill.
        """
        table = RoutingTable(OWN, 0.0)
        fill(table, [int_to_id((1 << 157) + 5), far(1)])
        self.assertEqual(table.ranges_to_fill(), [table.distance_range(160)])

    @given(st.integers(0, 2**160 - 1), st.integers(1, 160))
    def test_distance_range(self, own: int, bits: int) -> None:
        """Every id of ``distance_range(bits)`` is ``bits`` bits of XOR away from ours."""
        table = RoutingTable(int_to_id(own), 0.0)
        low, high = table.distance_range(bits)
        self.assertEqual(high - low, 1 << (bits - 1))
        for value in (low, high - 1, (low + high) // 2):
            self.assertEqual((value ^ own).bit_length(), bits)

    def test_closest(self) -> None:
        """``closest`` returns the k nearest by XOR, nearest first."""
        rng = random.Random(3)
        own = int_to_id(rng.getrandbits(160))
        table = RoutingTable(own, 0.0)
        ids = [int_to_id(rng.getrandbits(160)) for _ in range(300)]
        fill(table, ids)
        target = int_to_id(rng.getrandbits(160))
        closest = [c.node_id for c in table.closest(target)]
        self.assertEqual(len(closest), 8)
        self.assertEqual(closest, sorted(closest, key=lambda i: distance(i, target)))
        self.assertEqual(table.closest(target, 3), table.closest(target)[:3])

    @given(st.lists(st.integers(0, 2**160 - 1), max_size=200), st.integers(0, 2**160 - 1))
    def test_invariants(self, values: list[int], own: int) -> None:
        """Buckets tile the space, hold at most k contacts in range, and only ours splits."""
        table = RoutingTable(int_to_id(own), 0.0)
        fill(table, [int_to_id(v) for v in values])
        buckets = table.buckets
        self.assertEqual(buckets[0].low, 0)
        self.assertEqual(buckets[-1].high, ID_SPACE)
        for a, b in zip(buckets, buckets[1:], strict=False):
            self.assertEqual(a.high, b.low)
        for bucket in buckets:
            self.assertLessEqual(len(bucket.contacts), table.k)
            self.assertLessEqual(len(bucket.replacements), table.k)
            for contact in bucket.contacts:
                self.assertTrue(bucket.covers(id_to_int(contact.node_id)))
        self.assertEqual(len(table), sum(len(b.contacts) for b in buckets))
        self.assertLessEqual(len(buckets), 161)


class RoundTripTests(SynchronousTestCase):
    """Tests for :class:`RoundTrip`, RFC 6298's estimator."""

    def test_first_sample(self) -> None:
        """The first sample sets the smoothed time, and half of it the deviation."""
        rtt = RoundTrip()
        self.assertIsNone(rtt.timeout(0.0, 10.0))
        rtt.add(0.2)
        self.assertEqual((rtt.srtt, rtt.rttvar, rtt.samples), (0.2, 0.1, 1))
        self.assertAlmostEqual(rtt.timeout(0.0, 10.0) or 0.0, 0.6)

    def test_later_samples(self) -> None:
        """Later samples move the time by 1/8 and the deviation by 1/4 of the error."""
        rtt = RoundTrip()
        rtt.add(0.2)
        rtt.add(0.6)
        self.assertAlmostEqual(rtt.rttvar, 0.75 * 0.1 + 0.25 * 0.4)
        self.assertAlmostEqual(rtt.srtt or 0.0, 0.875 * 0.2 + 0.125 * 0.6)
        self.assertAlmostEqual(rtt.timeout(0.0, 10.0) or 0.0, 0.25 + 4 * 0.175)

    def test_steady_round_trips_converge(self) -> None:
        """Steady samples bring the timeout down towards the round trip itself."""
        rtt = RoundTrip()
        for _ in range(100):
            rtt.add(0.1)
        self.assertAlmostEqual(rtt.srtt or 0.0, 0.1)
        self.assertLess(rtt.rttvar, 1e-6)

    def test_floor_and_ceiling(self) -> None:
        """The timeout stays within the floor and the ceiling."""
        fast, slow = RoundTrip(), RoundTrip()
        fast.add(0.001)
        slow.add(5.0)
        self.assertEqual(fast.timeout(0.25, 1.0), 0.25)
        self.assertEqual(slow.timeout(0.25, 1.0), 1.0)

    def test_negative_sample(self) -> None:
        """A negative sample (a clock stepped back) counts as zero."""
        rtt = RoundTrip()
        rtt.add(-3.0)
        self.assertEqual((rtt.srtt, rtt.rttvar), (0.0, 0.0))


class StallTimeoutTests(SynchronousTestCase):
    """Tests for :meth:`RoutingTable.stall_timeout` and :meth:`RoutingTable.measured`."""

    def test_initial(self) -> None:
        """Before any answer is measured, every node gets the initial timeout."""
        table = RoutingTable(OWN, 0.0)
        fill(table, [far(1)])
        self.assertEqual(table.stall_timeout(far(1)), STALL_INITIAL)
        self.assertEqual(table.stall_timeout(None), STALL_INITIAL)

    def test_own_estimate_then_shared(self) -> None:
        """
        A contact that has answered gets its own timeout; a node not
        measured gets the one of all answers.
        """
        table = RoutingTable(OWN, 0.0)
        fill(table, [far(1), far(2)])
        table.measured(far(1), 0.3)
        self.assertAlmostEqual(table.stall_timeout(far(1)), min(0.3 * 3, STALL_MAX))
        table.measured(far(2), 0.1)
        # far(3) is no contact, far(2) answered fast once: each its own figure.
        self.assertAlmostEqual(table.stall_timeout(far(2)), 0.1 * 3)
        shared = table.round_trip.timeout(STALL_MIN, STALL_MAX)
        self.assertEqual(table.stall_timeout(far(3)), shared)
        self.assertEqual(table.round_trip.samples, 2)

    def test_bounds(self) -> None:
        """The timeout stays within stall_min and stall_max."""
        table = RoutingTable(OWN, 0.0, stall_min=0.2, stall_max=0.8, stall_initial=3.0)
        fill(table, [far(1), far(2)])
        self.assertEqual(table.stall_timeout(far(1)), 0.8)
        table.measured(far(1), 0.01)
        table.measured(far(2), 2.0)
        self.assertEqual(table.stall_timeout(far(1)), 0.2)
        self.assertEqual(table.stall_timeout(far(2)), 0.8)

    def test_new_address_forgets_round_trips(self) -> None:
        """A contact that moves to another address is measured afresh."""
        table = RoutingTable(OWN, 0.0)
        fill(table, [far(1)])
        table.measured(far(1), 0.1)
        table.heard_from(far(1), address(99), 1.0, responded=True)
        self.assertIsNone(table.get(far(1)).round_trip.srtt)  # type: ignore[union-attr]


class FailureAccountingTests(SynchronousTestCase):
    """A timeout counts against a contact only if it has not answered since the query."""

    def test_answered_since_sent(self) -> None:
        """
        A query sent at 1 s times out, but the contact answered another at
        1.5 s (the first datagram was lost): no failure.
        """
        table = RoutingTable(OWN, 0.0)
        fill(table, [far(1)])
        table.heard_from(far(1), address(0), 1.5, responded=True)
        table.failed(far(1), address(0), 3.0, sent=1.0)
        self.assertEqual(table.get(far(1)).failures, 0)  # type: ignore[union-attr]

    def test_silent_since_sent(self) -> None:
        """A query unanswered, the contact silent since it was sent: one failure."""
        table = RoutingTable(OWN, 0.0)
        fill(table, [far(1)])
        table.failed(far(1), address(0), 3.0, sent=1.0)
        self.assertEqual(table.get(far(1)).failures, 1)  # type: ignore[union-attr]
        table.failed(far(1), address(0), 3.25, sent=1.25)
        self.assertNotIn(far(1), table)
