"""Tests for bitfitech.peer.dialer: outbound target, backoff and circuit breaker on a Clock."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.test.iosim import FakeTransport, IOPump
from twisted.test.iosim import connect as connect_pair
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.address import PeerAddress
from bitfitech.peer.addrbook import NEVER_REACHED_MAX_FAILURES, REACHED_MAX_FAILURES, AddressBook
from bitfitech.peer.dialer import FEELER_INTERVAL, MIN_LINKS_PER_MARKET, Dialer
from bitfitech.peer.hub import RELAY_FANOUT, PeerHub
from bitfitech.peer.protocol import (
    REASON_DUPLICATE,
    REASON_SELF,
    Direction,
    LinkClosed,
    PeerProtocol,
)
from bitfitech.storage import Storage
from bitfitech.testing import TEST_PAIR, local_node, node_id_of, version_of
from bitfitech.wire.messages import Addr, GetAddr


def redial_gaps(clock: Clock, dials: Callable[[], int], count: int = 3) -> list[int]:
    """
    Whole seconds between the next C{count} dials that C{dials} counts,
    the clock stepped a quarter second at a time (for at most 10 s).
    """
    times = [clock.seconds()]
    for _ in range(40):
        before = dials()
        clock.advance(0.25)
        if dials() > before:
            times.append(clock.seconds())
        if len(times) == count + 1:
            break
    return [round(b - a) for a, b in zip(times, times[1:], strict=False)]


class FakeLink:
    """Stands in for a connected PeerProtocol: its handshake outcome is preset."""

    def __init__(self, node_id: str | None, closed: str | None = None) -> None:
        self.node_id = node_id
        self.closed = closed

    def when_ready(self) -> Deferred[object]:
        return fail(LinkClosed(self.closed)) if self.closed else succeed(self)


class Connector:
    """Records dials; each answers with the outcome set for its address (refused by default)."""

    def __init__(self) -> None:
        self.dials: list[PeerAddress] = []
        self.outcomes: dict[tuple[str, int], object] = {}
        self.hold = False
        self.held: list[Deferred[PeerProtocol]] = []

    def __call__(self, address: PeerAddress) -> Deferred[PeerProtocol]:
        self.dials.append(address)
        if self.hold:
            d: Deferred[PeerProtocol] = Deferred()
            self.held.append(d)
            return d
        outcome = self.outcomes.get(address.endpoint, ConnectionRefusedError())
        if isinstance(outcome, Exception):
            return fail(outcome)
        return succeed(outcome)  # type: ignore[arg-type]


class DialerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.book = AddressBook(rng=random.Random(1))
        self.hub = PeerHub(self.book, self.clock, max_peers=10, max_inbound=2)
        self.hub.start(local_node(1))
        self.connector = Connector()

    def dialer(self, target: int = 3, bootstrap: tuple[PeerAddress, ...] = ()) -> Dialer:
        dialer = Dialer(self.hub, self.book, self.connector, self.clock, target=target,
                        bootstrap=bootstrap, interval=1.0)  # fmt: skip
        dialer.startService()
        self.addCleanup(dialer.stopService)
        return dialer

    def dials_to(self, host: str, port: int) -> int:
        return sum(1 for a in self.connector.dials if a.endpoint == (host, port))

    def test_bootstrap_dialled_at_start(self) -> None:
        self.dialer(bootstrap=(PeerAddress("127.0.0.1", 3002),))
        self.assertEqual(self.dials_to("127.0.0.1", 3002), 1)
        entry = self.book.get("127.0.0.1", 3002)
        assert entry is not None
        self.assertEqual(entry.source, "bootstrap")

    def test_refused_dial_backs_off_exponentially(self) -> None:
        self.dialer(bootstrap=(PeerAddress("127.0.0.1", 3002),))
        gaps = redial_gaps(self.clock, lambda: self.dials_to("127.0.0.1", 3002))
        self.assertEqual(gaps, [1, 2, 4])

    def test_circuit_breaker_rests_then_half_open(self) -> None:
        dialer = self.dialer(bootstrap=(PeerAddress("127.0.0.1", 3002),))
        self.clock.pump([1.0] * 40)  # 1+2+4+8 s of backoff: 5 failures by now
        self.assertEqual(self.dials_to("127.0.0.1", 3002), 5)
        cooldown = self.book.policy.cooldown
        self.clock.pump([10.0] * int((cooldown - 60) / 10))
        self.assertEqual(self.dials_to("127.0.0.1", 3002), 5, "dialled while the breaker is open")
        self.clock.pump([10.0] * 10)
        self.assertEqual(self.dials_to("127.0.0.1", 3002), 6, "no half-open retry")
        self.assertEqual(dialer.dial_failures, 6)

    def test_unresolvable_address_is_not_fatal(self) -> None:
        self.connector.outcomes[("no-such-host.invalid", 3000)] = DNSLookupError("nope")
        dialer = self.dialer(bootstrap=(PeerAddress("no-such-host.invalid", 3000),))
        self.assertEqual(dialer.dial_failures, 1)
        self.assertTrue(dialer.running)

    def test_success_recorded_with_node_id(self) -> None:
        self.connector.outcomes[("127.0.0.1", 3002)] = FakeLink(node_id_of(2))
        self.dialer(bootstrap=(PeerAddress("127.0.0.1", 3002),))
        entry = self.book.get("127.0.0.1", 3002)
        assert entry is not None
        self.assertEqual((entry.successes, entry.failures, entry.node_id), (1, 0, node_id_of(2)))

    def test_target_limits_parallel_dials(self) -> None:
        self.connector.hold = True
        for i in range(10):
            self.book.add(f"10.0.0.{i + 1}", 3000, source="addr", now=self.clock.seconds())
        dialer = self.dialer(target=3)
        self.assertEqual(len(self.connector.dials), 3)
        self.clock.advance(5)
        self.assertEqual(len(self.connector.dials), 3)
        self.assertEqual(len(dialer.pending), 3)
        # one fails: one more is dialled (the kick runs on the next clock turn)
        self.connector.held[0].errback(ConnectionRefusedError())
        self.clock.advance(0)
        self.assertEqual(len(self.connector.dials), 4)

    def test_own_address_never_dialled_again(self) -> None:
        self.connector.outcomes[("127.0.0.1", 3001)] = FakeLink(None, closed=REASON_SELF)
        self.dialer(bootstrap=(PeerAddress("127.0.0.1", 3001),))
        self.clock.pump([1.0] * 100)
        self.assertEqual(self.dials_to("127.0.0.1", 3001), 1)
        entry = self.book.get("127.0.0.1", 3001)
        assert entry is not None
        self.assertEqual(entry.node_id, node_id_of(1))

    def test_duplicate_is_not_a_failure(self) -> None:
        self.connector.outcomes[("127.0.0.1", 3002)] = FakeLink(None, closed=REASON_DUPLICATE)
        dialer = self.dialer(bootstrap=(PeerAddress("127.0.0.1", 3002),))
        self.assertEqual(dialer.dial_failures, 0)

    def test_dial_now_ignores_backoff_and_reports(self) -> None:
        dialer = self.dialer(target=0)
        self.book.add("127.0.0.1", 3005, source="manual", now=self.clock.seconds())
        d = dialer.dial(PeerAddress("127.0.0.1", 3005))
        self.failureResultOf(d, ConnectionRefusedError)
        self.connector.outcomes[("127.0.0.1", 3005)] = FakeLink(node_id_of(5))
        d = dialer.dial(PeerAddress("127.0.0.1", 3005))
        self.assertEqual(self.successResultOf(d).node_id, node_id_of(5))

    def test_joining_a_dial_under_way(self) -> None:
        self.connector.hold = True
        dialer = self.dialer(target=0)
        first = dialer.dial(PeerAddress("127.0.0.1", 3005))
        second = dialer.dial(PeerAddress("127.0.0.1", 3005))
        self.assertEqual(len(self.connector.dials), 1)
        self.connector.held[0].callback(FakeLink(node_id_of(5)))  # type: ignore[arg-type]
        self.successResultOf(first)
        self.successResultOf(second)

    def test_rested_node_not_dialled(self) -> None:
        self.book.add("127.0.0.1", 3002, source="addr", now=self.clock.seconds(),
                      node_id=node_id_of(2))  # fmt: skip
        self.connector.hold = True
        dialer = self.dialer(target=0)
        dialer.rest_node(node_id_of(2), 600)
        dialer.target = 3
        self.clock.advance(1)
        self.assertEqual(self.connector.dials, [])
        self.clock.advance(600)
        self.assertEqual(self.dials_to("127.0.0.1", 3002), 1)

    def test_stale_failing_addresses_pruned_hourly(self) -> None:
        self.connector.hold = True
        self.dialer(target=0)
        now = self.clock.seconds()
        self.book.add("10.9.9.9", 3000, source="addr", now=now)
        self.book.record_failure("10.9.9.9", 3000, now)
        self.book.add("10.9.9.8", 3000, source="bootstrap", now=now)
        self.book.record_failure("10.9.9.8", 3000, now)
        self.clock.advance(31 * 86400)  # the hourly pruner has run many times
        self.assertIsNone(self.book.get("10.9.9.9", 3000))
        self.assertIsNotNone(self.book.get("10.9.9.8", 3000))

    def test_stop_cancels_pending_without_recording_failures(self) -> None:
        self.connector.hold = True
        dialer = self.dialer(bootstrap=(PeerAddress("127.0.0.1", 3002),))
        dialer.stopService()
        self.assertEqual(dialer.pending, {})
        entry = self.book.get("127.0.0.1", 3002)
        assert entry is not None
        self.assertEqual(entry.failures, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_banned_address_never_dialled(self) -> None:
        self.connector.hold = True
        self.hub.ban("10.0.0.1", "test")
        self.book.add("10.0.0.1", 3000, source="addr", now=self.clock.seconds())
        self.book.add("10.0.0.2", 3000, source="addr", now=self.clock.seconds())
        dialer = self.dialer(target=3, bootstrap=(PeerAddress("10.0.0.1", 3001),))
        self.clock.advance(10)
        self.assertEqual([a.endpoint for a in self.connector.dials], [("10.0.0.2", 3000)])
        # nor dialled on demand: that fails at once
        d = dialer.dial(PeerAddress("10.0.0.1", 3000))
        self.assertIn("banned", self.failureResultOf(d, LinkClosed).value.reason)
        self.assertEqual(len(self.connector.dials), 1)
        # once the ban is lifted, the dialer looks again
        self.hub.unban("10.0.0.1")
        self.clock.advance(0)
        self.assertEqual(self.dials_to("10.0.0.1", 3000) + self.dials_to("10.0.0.1", 3001), 2)

    def test_banned_address_dialled_again_once_the_ban_expires(self) -> None:
        self.connector.hold = True
        self.hub.ban_duration = 100.0
        self.hub.ban("10.0.0.1", "test")
        self.dialer(target=3, bootstrap=(PeerAddress("10.0.0.1", 3000),))
        self.clock.advance(99)
        self.assertEqual(self.connector.dials, [])
        self.clock.advance(1)
        self.assertEqual(self.dials_to("10.0.0.1", 3000), 1)


#: witnesses 1 (this node, in these tests) to 4, pinned
WITNESSES = tuple(PeerAddress(f"10.0.1.{n}", 3000, node_id_of(n)) for n in (1, 2, 3, 4))


class WitnessDialTests(SynchronousTestCase):
    """Every witness but this node is dialled first, kept linked, and backs off like any address."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.book = AddressBook(rng=random.Random(1))
        self.hub = PeerHub(self.book, self.clock, max_peers=10, max_inbound=2,
                           witnesses=[a.node_id for a in WITNESSES if a.node_id])  # fmt: skip
        self.hub.start(local_node(1))
        self.connector = Connector()

    def dialer(
        self,
        target: int = 2,
        witnesses: tuple[PeerAddress, ...] = WITNESSES,
        connect: Connector | Callable[[PeerAddress], Deferred[PeerProtocol]] | None = None,
    ) -> Dialer:
        dialer = Dialer(self.hub, self.book, connect or self.connector, self.clock,
                        target=target, witnesses=witnesses, interval=1.0)  # fmt: skip
        dialer.startService()
        self.addCleanup(dialer.stopService)
        return dialer

    def link(self, direction: Direction, n: int, dialed: PeerAddress | None = None) -> PeerProtocol:
        """A link to node C{n} that the hub admitted as ready (its handshake skipped)."""
        link = self.hub.build_link(direction, dialed, host=f"10.0.1.{n}")
        assert link is not None
        link.remote = version_of(n)
        self.assertIsNone(self.hub.link_ready(link))
        link.state = "ready"
        return link

    def dials_to(self, address: PeerAddress) -> int:
        return sum(1 for a in self.connector.dials if a.endpoint == address.endpoint)

    def other_dials(self) -> list[PeerAddress]:
        """The dials to addresses that are not witnesses'."""
        return [a for a in self.connector.dials if a not in WITNESSES]

    def add_others(self, count: int) -> None:
        """Put C{count} addresses of other nodes in the address book."""
        for i in range(count):
            self.book.add(f"10.0.0.{i + 1}", 3000, source="addr", now=self.clock.seconds())

    def linking(
        self, down: Collection[PeerAddress] = ()
    ) -> Callable[[PeerAddress], Deferred[PeerProtocol]]:
        """
        A connector: a dial to a witness links at once (a ready outbound
        link in the hub), or is refused while the witness is in C{down}; a
        dial to any other address is held.
        """

        def connect(address: PeerAddress) -> Deferred[PeerProtocol]:
            if address not in WITNESSES:
                return self.connector(address)
            self.connector.dials.append(address)
            if address in down:
                return fail(ConnectionRefusedError())
            assert address.node_id is not None
            return succeed(self.link("outbound", int(address.node_id, 16), address))

        self.connector.hold = True
        return connect

    def test_witnesses_dialled_first_pinned_and_within_the_target(self) -> None:
        self.connector.hold = True
        self.add_others(5)
        dialer = self.dialer(target=2)
        # witnesses 2, 3 and 4, pinned to their ids, all dialled although
        # the target is 2; their dials fill it: no one else is dialled
        self.assertEqual(sorted(self.connector.dials), sorted(WITNESSES[1:]))
        self.assertEqual(dialer.witnesses, {a.endpoint: a.node_id for a in WITNESSES[1:]})
        for address in WITNESSES[1:]:
            entry = self.book.get(address.host, address.port)
            assert entry is not None
            self.assertEqual((entry.source, entry.node_id), ("witness", address.node_id))
        self.clock.advance(5)
        self.assertEqual(len(self.connector.dials), 3)

    def test_more_witnesses_than_the_target_all_linked_no_other(self) -> None:
        self.add_others(5)
        self.dialer(target=2, connect=self.linking())
        self.clock.advance(5)
        self.assertEqual(sorted(self.connector.dials), sorted(WITNESSES[1:]))
        self.assertEqual(len(self.hub.links), 3)
        self.assertEqual(self.hub.target_count(), 3)

    def test_linked_witnesses_fill_the_target(self) -> None:
        """Target 4, three witnesses linked: exactly one other node is dialled."""
        self.add_others(5)
        self.dialer(target=4, connect=self.linking())
        self.assertEqual(sorted(self.connector.dials[:3]), sorted(WITNESSES[1:]))
        self.assertEqual(len(self.other_dials()), 1)
        self.clock.advance(5)
        self.assertEqual(len(self.other_dials()), 1)

    def test_witness_that_dialled_us_fills_the_target(self) -> None:
        """A link from a witness counts as the dialer's own would have: one other dial, not two."""
        self.link("inbound", 2)
        self.add_others(5)
        self.dialer(target=4, connect=self.linking())
        self.clock.advance(5)
        self.assertEqual(sorted(self.connector.dials[:2]), sorted(WITNESSES[2:]))
        self.assertEqual(len(self.other_dials()), 1)
        self.assertEqual(self.dials_to(WITNESSES[1]), 0)

    def test_witness_down_leaves_its_place_to_another_node(self) -> None:
        """
        Target 4, one witness of three refusing: two other nodes are
        dialled, and no more while the witness is retried; once it is back,
        its link comes on top of the target.
        """
        down = {WITNESSES[3]}
        self.add_others(5)
        self.dialer(target=4, connect=self.linking(down))
        self.assertEqual(len(self.hub.links), 2)
        self.assertEqual(len(self.other_dials()), 2)
        self.clock.pump([1.0] * 10)  # 1 + 2 + 4 s of backoff: retried three times
        self.assertEqual(self.dials_to(WITNESSES[3]), 4)
        self.assertEqual(len(self.other_dials()), 2)
        down.clear()  # back: linked at its next retry (8 s later)
        self.clock.pump([1.0] * 10)
        self.assertEqual(self.dials_to(WITNESSES[3]), 5)
        self.assertEqual(len(self.hub.links), 3)
        self.assertEqual(len(self.other_dials()), 2)

    def test_own_witness_address_never_dialled(self) -> None:
        self.connector.hold = True
        dialer = self.dialer()
        self.clock.advance(10)
        self.assertEqual(self.dials_to(WITNESSES[0]), 0)
        self.assertIsNone(self.book.get(WITNESSES[0].host, WITNESSES[0].port))
        self.assertNotIn(WITNESSES[0].endpoint, dialer.witnesses)

    def test_witnesses_dialled_with_target_zero(self) -> None:
        self.connector.hold = True
        self.book.add("10.0.0.1", 3000, source="addr", now=self.clock.seconds())
        self.dialer(target=0)
        self.assertEqual(sorted(self.connector.dials), sorted(WITNESSES[1:]))

    def test_refused_witness_backs_off_exponentially(self) -> None:
        self.dialer(witnesses=WITNESSES[:2])
        gaps = redial_gaps(self.clock, lambda: self.dials_to(WITNESSES[1]))
        self.assertEqual(gaps, [1, 2, 4])

    def test_refused_witness_never_rests_past_the_cap(self) -> None:
        """
        However often a witness refuses, it is dialled again within
        WITNESS_RETRY's 10 s: no circuit breaker rests it (a string of short
        partitions once left two witnesses unlinked for 15 minutes).
        """
        self.dialer(witnesses=WITNESSES[:2])
        self.clock.pump([0.25] * 4 * 120)  # two minutes of refusals
        before = self.dials_to(WITNESSES[1])
        self.clock.pump([0.25] * 4 * 60)
        self.assertEqual(self.dials_to(WITNESSES[1]) - before, 6, "one dial every 10 s")
        entry = self.book.get(WITNESSES[1].host, WITNESSES[1].port)
        assert entry is not None
        self.assertGreater(entry.failures, self.book.policy.breaker_threshold)

    def test_linked_witness_kept_and_redialled_once_lost(self) -> None:
        links: list[PeerProtocol] = []

        def connect(address: PeerAddress) -> Deferred[PeerProtocol]:
            self.connector.dials.append(address)
            assert address.node_id is not None
            links.append(self.link("outbound", int(address.node_id, 16), address))
            return succeed(links[-1])

        dialer = Dialer(self.hub, self.book, connect, self.clock, target=0,
                        witnesses=WITNESSES[:2], interval=1.0)  # fmt: skip
        dialer.startService()
        self.addCleanup(dialer.stopService)
        [link] = links
        self.assertTrue(self.hub.is_witness_link(link))
        self.assertEqual((self.hub.count("outbound"), self.hub.target_count()), (1, 1))
        self.clock.advance(60)
        self.assertEqual(self.dials_to(WITNESSES[1]), 1)
        self.hub.link_closed(link, "gone")
        self.clock.advance(0)
        self.assertEqual(self.dials_to(WITNESSES[1]), 2)

    def test_witness_linked_inbound_not_dialled(self) -> None:
        self.connector.hold = True
        link = self.link("inbound", 2)
        self.assertTrue(self.hub.is_witness_link(link))
        self.dialer()
        self.clock.advance(10)
        self.assertEqual(self.dials_to(WITNESSES[1]), 0)
        self.assertEqual(self.dials_to(WITNESSES[2]), 1)

    def test_banned_witness_not_dialled(self) -> None:
        self.connector.hold = True
        self.hub.ban(WITNESSES[1].host, "test")
        self.dialer()
        self.clock.advance(10)
        self.assertEqual(self.dials_to(WITNESSES[1]), 0)
        self.assertEqual(self.dials_to(WITNESSES[2]), 1)

    def test_forgotten_witness_address_entered_again(self) -> None:
        self.connector.hold = True
        dialer = self.dialer(witnesses=WITNESSES[:2])
        self.connector.held[0].errback(ConnectionRefusedError())
        self.book.forget(WITNESSES[1].host, WITNESSES[1].port)
        dialer.tick()
        self.assertEqual(self.dials_to(WITNESSES[1]), 2)
        entry = self.book.get(WITNESSES[1].host, WITNESSES[1].port)
        assert entry is not None
        self.assertEqual(entry.source, "witness")


class AddressHygieneTests(SynchronousTestCase):
    """What dials leave in the address book, and what peers are told of it."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.book = AddressBook(rng=random.Random(1))
        self.hub = PeerHub(self.book, self.clock, max_peers=10, max_inbound=5,
                           rng=random.Random(2))  # fmt: skip
        self.hub.start(local_node(1))
        self.connector = Connector()
        self.sent: dict[int, list[object]] = {}
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def dialer(self, target: int = 3) -> Dialer:
        dialer = Dialer(self.hub, self.book, self.connector, self.clock, target=target,
                        interval=1.0)  # fmt: skip
        dialer.startService()
        self.addCleanup(dialer.stopService)
        return dialer

    def peer(self, n: int) -> PeerProtocol:
        """A ready inbound link from node C{n}; what it is sent goes to C{self.sent[n]}."""
        link = self.hub.build_link("inbound", host=f"10.0.9.{n}")
        assert link is not None
        link.remote = version_of(n)
        self.assertIsNone(self.hub.link_ready(link))
        link.state = "ready"
        self.sent[n] = []
        link.send = self.sent[n].append  # type: ignore[method-assign, assignment]
        return link

    def announced(self, host: str, port: int) -> int:
        """How many ``addr`` messages sent so far carry C{host}:C{port}."""
        return sum(
            1
            for messages in self.sent.values()
            for message in messages
            if isinstance(message, Addr) and any((a.host, a.port) == (host, port)
                                                 for a in message.addrs)
        )  # fmt: skip

    def getaddr_answer(self, link: PeerProtocol) -> set[tuple[str, int]]:
        """The addresses this node answers C{link}'s ``getaddr`` with."""
        assert link.node_id is not None
        sent = self.sent[int(link.node_id, 16)]
        link.getaddr_answered = False
        before = len(sent)
        self.hub.link_message(link, GetAddr())
        [answer] = sent[before:]
        del sent[before:]
        assert isinstance(answer, Addr)
        return {(a.host, a.port) for a in answer.addrs}

    def log_lines(self, fragment: str) -> list[str]:
        return [formatEvent(e) for e in self.events if fragment in formatEvent(e)]

    def dials_to(self, host: str, port: int) -> int:
        return sum(1 for a in self.connector.dials if a.endpoint == (host, port))

    def test_failed_manual_dial_leaves_nothing_and_is_never_passed_on(self) -> None:
        """The reported bug: ``bitfi connect 127.0.0.1:1`` must not be kept nor spread."""
        peers = [self.peer(2), self.peer(3)]
        dialer = self.dialer(target=3)
        d = dialer.dial(PeerAddress("127.0.0.1", 1), manual=True)
        self.failureResultOf(d, ConnectionRefusedError)
        self.assertIsNone(self.book.get("127.0.0.1", 1))
        self.assertEqual(len(self.book), 0)
        self.clock.pump([10.0] * 400)  # over an hour: the dialer never tries it again
        self.assertEqual(self.dials_to("127.0.0.1", 1), 1)
        self.assertEqual((dialer.dials, dialer.dial_failures), (1, 1))
        self.assertEqual(self.announced("127.0.0.1", 1), 0)
        for link in peers:
            self.assertNotIn(("127.0.0.1", 1), self.getaddr_answer(link))
        [line] = self.log_lines("127.0.0.1:1")
        self.assertIn("Dial to 127.0.0.1:1 failed, not kept", line)
        self.assertIn("not kept in the address book", line)

    def test_manual_dial_that_succeeds_is_kept_protected_and_announced(self) -> None:
        peers = [self.peer(2), self.peer(3), self.peer(4)]
        self.connector.outcomes[("10.0.0.7", 3007)] = FakeLink(node_id_of(7))
        dialer = self.dialer(target=0)
        d = dialer.dial(PeerAddress("10.0.0.7", 3007), manual=True)
        self.assertEqual(self.successResultOf(d).node_id, node_id_of(7))
        entry = self.book.get("10.0.0.7", 3007)
        assert entry is not None
        self.assertEqual((entry.source, entry.successes, entry.node_id),
                         ("manual", 1, node_id_of(7)))  # fmt: skip
        self.assertTrue(entry.protected)
        self.assertEqual(self.announced("10.0.0.7", 3007), RELAY_FANOUT)
        self.assertIn(("10.0.0.7", 3007), self.getaddr_answer(peers[0]))
        # it goes down for good: redialled behind the breaker, and kept
        del self.connector.outcomes[("10.0.0.7", 3007)]
        dialer.target = 3
        self.clock.pump([900.0] * (8 * 96))  # eight days
        entry = self.book.get("10.0.0.7", 3007)
        assert entry is not None
        self.assertGreater(entry.failures, REACHED_MAX_FAILURES)
        self.assertNotIn(("10.0.0.7", 3007), self.getaddr_answer(peers[0]))

    def test_failed_manual_dial_of_a_known_address_counts_one_failure(self) -> None:
        self.book.add("10.0.0.8", 3000, source="addr", now=self.clock.seconds())
        dialer = self.dialer(target=0)
        self.failureResultOf(dialer.dial(PeerAddress("10.0.0.8", 3000), manual=True))
        entry = self.book.get("10.0.0.8", 3000)
        assert entry is not None
        self.assertEqual((entry.source, entry.failures), ("addr", 1))

    def test_learned_address_that_keeps_failing_is_forgotten(self) -> None:
        self.peer(2)
        now = self.clock.seconds()
        self.book.add("10.0.0.9", 3000, source="addr", now=now)
        self.book.add("10.0.0.10", 3000, source="bootstrap", now=now)
        self.dialer(target=3)
        self.clock.pump([0.25] * 40)
        self.assertEqual(self.dials_to("10.0.0.9", 3000), NEVER_REACHED_MAX_FAILURES)
        self.assertIsNone(self.book.get("10.0.0.9", 3000))
        [line] = self.log_lines("forgotten")
        self.assertIn("10.0.0.9:3000", line)
        self.assertIn("never reached", line)
        self.clock.pump([60.0] * 60)
        self.assertEqual(self.dials_to("10.0.0.9", 3000), NEVER_REACHED_MAX_FAILURES)
        # a bootstrap address is kept, and retried, however often it fails
        self.assertGreater(self.dials_to("10.0.0.10", 3000), NEVER_REACHED_MAX_FAILURES)
        self.assertIsNotNone(self.book.get("10.0.0.10", 3000))
        self.assertEqual(self.announced("10.0.0.9", 3000), 0)

    def test_learned_address_announced_once_reached(self) -> None:
        link = self.peer(2)
        self.peer(3)
        self.peer(4)
        self.book.add("10.0.0.5", 3000, source="addr", now=self.clock.seconds())
        self.assertNotIn(("10.0.0.5", 3000), self.getaddr_answer(link))
        self.connector.outcomes[("10.0.0.5", 3000)] = FakeLink(node_id_of(5))
        dialer = self.dialer(target=3)
        self.assertEqual(self.dials_to("10.0.0.5", 3000), 1)
        self.assertEqual(self.announced("10.0.0.5", 3000), RELAY_FANOUT)
        self.assertIn(("10.0.0.5", 3000), self.getaddr_answer(link))
        # reached again within the window: no news, no announcement
        self.successResultOf(dialer.dial(PeerAddress("10.0.0.5", 3000)))
        self.assertEqual(self.announced("10.0.0.5", 3000), RELAY_FANOUT)

    def test_duplicate_link_counts_as_reached(self) -> None:
        self.book.add("10.0.0.6", 3000, source="addr", now=self.clock.seconds())
        self.connector.outcomes[("10.0.0.6", 3000)] = FakeLink(None, closed=REASON_DUPLICATE)
        dialer = self.dialer(target=3)
        entry = self.book.get("10.0.0.6", 3000)
        assert entry is not None
        self.assertEqual((entry.successes, entry.failures), (1, 0))
        self.assertTrue(entry.shareable(self.clock.seconds()))
        self.assertEqual(dialer.dial_failures, 0)

    def test_failing_entries_of_an_older_version_pruned_before_any_dial(self) -> None:
        storage = Storage(self.mktemp())
        storage.open()
        self.addCleanup(storage.close)
        storage.connection.execute(
            "INSERT INTO addresses (host, port, node_id, source, first_seen, last_seen, "
            "last_attempt, last_success, successes, failures, total_failures, suspended_until) "
            "VALUES ('127.0.0.1', 1, NULL, 'manual', 1.0, 1.0, 2.0, NULL, 0, 5, 5, 0.0)"
        )
        self.book.load(storage.connection)
        self.dialer(target=3)
        self.clock.advance(10)
        self.assertEqual(self.connector.dials, [])
        self.assertEqual(len(self.book), 0)
        self.assertEqual(len(self.log_lines("Pruned 1 addresses")), 1)


class InProcessMesh:
    """
    Nodes 1 to C{size} in one process on one clock: real hubs, books and
    dialers, whose dials connect the two hubs through iosim (node C{n}
    listens on 127.0.0.C{n}, port 3000 + C{n}).  No socket.
    """

    def __init__(self, size: int, *, target: int = 8, seed: int = 0) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.pumps: list[IOPump] = []
        self.hubs: dict[int, PeerHub] = {}
        self.dialers: dict[int, Dialer] = {}
        first = (PeerAddress("127.0.0.1", 3001),)
        for n in range(1, size + 1):
            book = AddressBook(rng=random.Random(seed * 1000 + n))
            hub = PeerHub(book, self.clock, max_peers=50, max_inbound=40,
                          rng=random.Random(seed * 1000 + n))  # fmt: skip
            hub.start(local_node(n, port=3000 + n))
            self.hubs[n] = hub
            self.dialers[n] = Dialer(hub, book, self.connector(n), self.clock, target=target,
                                     bootstrap=first if n > 1 else (), interval=1.0)  # fmt: skip

    def connector(self, a: int) -> Callable[[PeerAddress], Deferred[PeerProtocol]]:
        """Node C{a}'s dials: a link to the node listening at the address, or refused."""

        def connect(address: PeerAddress) -> Deferred[PeerProtocol]:
            b = address.port - 3000
            if b not in self.hubs or address.host != f"127.0.0.{b}":
                return fail(ConnectionRefusedError())
            a_ip, b_ip = f"127.0.0.{a}", address.host
            client = self.hubs[a].build_link("outbound", address, host=b_ip)
            server = self.hubs[b].build_link("inbound", host=a_ip)
            if client is None or server is None:
                return fail(ConnectionRefusedError())
            client_transport = FakeTransport(client, False, IPv4Address("TCP", a_ip, 40000),
                                             IPv4Address("TCP", b_ip, address.port))  # fmt: skip
            server_transport = FakeTransport(server, True, IPv4Address("TCP", b_ip, address.port),
                                             IPv4Address("TCP", a_ip, 40000))  # fmt: skip
            self.pumps.append(connect_pair(server, server_transport, client, client_transport,
                                           greet=False))  # fmt: skip
            return succeed(client)

        return connect

    def start(self) -> None:
        for dialer in self.dialers.values():
            dialer.startService()

    def stop(self) -> None:
        for dialer in self.dialers.values():
            dialer.stopService()
        for hub in self.hubs.values():
            hub.close_all()
        self.flush()

    def flush(self) -> None:
        for _ in range(50):
            if not any([pump.pump() for pump in self.pumps]):
                return

    def run(self, seconds: float) -> None:
        """Let C{seconds} pass, a quarter of a second at a time, delivering every write."""
        for _ in range(int(seconds * 4)):
            self.clock.advance(0.25)
            self.flush()

    def known(self, n: int) -> set[int]:
        """The other nodes whose listening address node C{n}'s book holds."""
        book = self.hubs[n].addrbook
        return {m for m in self.hubs if m != n and (f"127.0.0.{m}", 3000 + m) in book}


class MeshTests(SynchronousTestCase):
    """
    Address exchange still spreads the network although only vouched-for
    addresses are passed on: ten nodes bootstrapped to one come to know and
    link to each other (the in-process twin of ``tests.integration.test_mesh``).
    """

    def formed(self, mesh: InProcessMesh) -> None:
        for n, hub in mesh.hubs.items():
            self.assertEqual(mesh.known(n), set(mesh.hubs) - {n}, f"node {n}")
            self.assertGreaterEqual(len(hub.links), 3, f"node {n}")
        for hub in mesh.hubs.values():
            for entry in hub.addrbook.entries():  # every address in a book is a real node's
                self.assertEqual(entry.host, f"127.0.0.{entry.port - 3000}")
        self.assertEqual(sum(d.dial_failures for d in mesh.dialers.values()), 0)

    def test_ten_nodes_started_together(self) -> None:
        mesh = InProcessMesh(10)
        mesh.start()
        self.addCleanup(mesh.stop)
        mesh.run(30)
        self.formed(mesh)

    def test_ten_nodes_started_one_after_another(self) -> None:
        """The later nodes are told of by the nodes they link to: one hop is enough."""
        for seed in range(5):
            mesh = InProcessMesh(10, seed=seed)
            self.addCleanup(mesh.stop)
            for dialer in mesh.dialers.values():
                dialer.startService()
                mesh.run(0.5)
            mesh.run(30)
            self.formed(mesh)


ETH, SOL = "ETH/USD", "SOL/USD"


class MarketDialTests(SynchronousTestCase):
    """A node of several markets keeps links to each; a node of one dials as it always did."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.book = AddressBook(rng=random.Random(1))
        self.connector = Connector()
        self.connector.hold = True

    def hub(self, markets: tuple[str, ...], max_peers: int = 10) -> PeerHub:
        self.hub_ = PeerHub(self.book, self.clock, max_peers=max_peers, max_inbound=2)
        self.hub_.start(local_node(1, markets=markets))
        return self.hub_

    def dialer(self, target: int = 2) -> Dialer:
        dialer = Dialer(self.hub_, self.book, self.connector, self.clock, target=target,
                        interval=1.0)  # fmt: skip
        dialer.startService()
        self.addCleanup(dialer.stopService)
        return dialer

    def linked(self, n: int, markets: tuple[str, ...]) -> PeerProtocol:
        """A ready outbound link to node C{n} of C{markets} (its handshake skipped)."""
        address = PeerAddress(f"10.0.1.{n}", 3000, node_id_of(n))
        self.book.add(address.host, address.port, source="addr", now=self.clock.seconds())
        link = self.hub_.build_link("outbound", address, host=address.host)
        assert link is not None
        link.remote = version_of(n, pair=markets[0], markets=markets)
        self.assertIsNone(self.hub_.link_ready(link))
        link.state = "ready"
        return link

    def known(self, n: int, markets: tuple[str, ...] = ()) -> None:
        """Put node C{n}'s address in the book, carrying C{markets} (not known if empty)."""
        self.book.add(f"10.0.0.{n}", 3000, source="addr", now=self.clock.seconds(),
                      markets=markets)  # fmt: skip

    def dialled(self) -> list[str]:
        return [a.host for a in self.connector.dials]

    def test_starved_market_dialled_beyond_the_target(self) -> None:
        """
        Target 2, met by two links of BTC/USD: ETH/USD has none, so its
        known carriers are dialled (two at most), and no one else.
        """
        self.hub((TEST_PAIR, ETH))
        self.linked(2, (TEST_PAIR,))
        self.linked(3, (TEST_PAIR,))
        for n, markets in ((4, (TEST_PAIR,)), (5, ()), (6, (ETH,)), (7, (SOL, ETH)), (8, (ETH,))):
            self.known(n, markets)
        self.assertEqual(self.hub_.target_count(), 2)
        self.assertEqual(self.hub_.links_by_market(), {TEST_PAIR: 2, ETH: 0})
        self.dialer(target=2)
        self.assertEqual(len(self.dialled()), MIN_LINKS_PER_MARKET)
        self.assertLessEqual(set(self.dialled()), {"10.0.0.6", "10.0.0.7", "10.0.0.8"})
        self.clock.advance(5)  # the dials under way count: no more
        self.assertEqual(len(self.dialled()), MIN_LINKS_PER_MARKET)

    def test_market_with_enough_links_dials_no_more(self) -> None:
        self.hub((TEST_PAIR, ETH))
        self.linked(2, (TEST_PAIR, ETH))
        self.linked(3, (ETH, TEST_PAIR))
        self.known(6, (ETH,))
        self.known(4, (TEST_PAIR,))
        self.dialer(target=2)
        self.clock.advance(5)
        self.assertEqual(self.dialled(), [])

    def test_starved_market_dials_bounded_by_max_peers(self) -> None:
        self.hub((TEST_PAIR, ETH), max_peers=3)
        self.linked(2, (TEST_PAIR,))
        self.linked(3, (TEST_PAIR,))
        self.known(6, (ETH,))
        self.known(7, (ETH,))
        self.dialer(target=2)
        self.clock.advance(5)
        self.assertEqual(len(self.dialled()), 1)

    def test_starved_market_unknown_carriers_not_dialled(self) -> None:
        """Only addresses known to carry the market get its dials."""
        self.hub((TEST_PAIR, ETH))
        self.linked(2, (TEST_PAIR,))
        self.linked(3, (TEST_PAIR,))
        self.known(5)
        self.dialer(target=2)
        self.clock.advance(5)
        self.assertEqual(self.dialled(), [])

    def test_one_market_node_dials_only_for_its_target(self) -> None:
        """With one market, a target met is all: its carriers known are not dialled."""
        self.hub((TEST_PAIR,))
        self.linked(2, (TEST_PAIR,))
        self.linked(3, (TEST_PAIR,))
        self.known(4, (TEST_PAIR,))
        self.dialer(target=2)
        self.clock.advance(5)
        self.assertEqual(self.dialled(), [])

    def test_links_of_other_markets_leave_the_target_short(self) -> None:
        """
        A one-market node whose links go to other markets dials for its
        target, its market's carriers first.
        """
        self.hub((TEST_PAIR,))
        self.linked(2, (ETH,))
        self.linked(3, (ETH,))
        self.known(4)
        self.known(5, (TEST_PAIR,))
        self.assertEqual(self.hub_.target_count(), 0)
        self.dialer(target=2)
        self.assertEqual(self.dialled(), ["10.0.0.5", "10.0.0.4"])

    def test_address_of_other_markets_felt_at_most_every_feeler_interval(self) -> None:
        self.hub((TEST_PAIR,))
        self.known(4, (SOL,))
        self.book.record_attempt("10.0.0.4", 3000, self.clock.seconds())
        self.book.record_success("10.0.0.4", 3000, self.clock.seconds(), node_id_of(4))
        self.dialer(target=2)
        self.clock.advance(FEELER_INTERVAL - 2)
        self.assertEqual(self.dialled(), [])
        self.clock.advance(3)
        self.assertEqual(self.dialled(), ["10.0.0.4"])

    def test_markets_of_a_peer_reached_by_hand_noted(self) -> None:
        self.hub((TEST_PAIR, ETH))
        self.connector.hold = False
        link = self.hub_.build_link("outbound", PeerAddress("10.0.0.4", 3000), host="10.0.0.4")
        assert link is not None
        link.remote = version_of(4, markets=(TEST_PAIR, SOL))
        link.state = "ready"
        self.connector.outcomes[("10.0.0.4", 3000)] = link
        dialer = self.dialer(target=0)
        self.successResultOf(dialer.dial(PeerAddress("10.0.0.4", 3000), manual=True))
        entry = self.book.get("10.0.0.4", 3000)
        assert entry is not None
        self.assertEqual((entry.successes, entry.markets), (1, frozenset({TEST_PAIR, SOL})))
