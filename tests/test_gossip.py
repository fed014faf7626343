"""Tests for bitfitech.gossip: push and announce, dedup, verification, anti-entropy.

One :class:`~bitfitech.gossip.Gossip` is driven through fake links that
record what it sends, on a :class:`~twisted.internet.task.Clock`; its store
is a real :class:`~bitfitech.market.ledger.Ledger` behind the
:class:`~bitfitech.interfaces.IEventStore` seam.  :class:`Mesh` wires several
gossips together in memory for the end-to-end tests.

"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from bitfitech import gossip as gossip_module
from bitfitech.config import GossipTiming
from bitfitech.gossip import (
    AHEAD_PATIENCE,
    GAP_CHECK,
    PROMPT_DELAY,
    PULL_INTERVAL,
    REPAIR_AGE,
    Gossip,
    ThreadedVerifier,
)
from bitfitech.interfaces import IGossip, IPeerLink
from bitfitech.market.events import Author, Event, event_id, parse_event
from bitfitech.market.interfaces import IEventPublisher, IEventStore
from bitfitech.simulation import LedgerStore
from bitfitech.testing import TEST_NETWORK, TEST_PAIR, RecordingOwner
from bitfitech.wire.messages import (
    Events,
    GetData,
    Inv,
    Message,
    Ping,
    Prune,
    Sync,
    decode_message,
    encode_message,
)

TIMING = GossipTiming(
    fanout=1,
    push_hops=32,
    ttl=16,
    sync_interval=30.0,
    request_timeout=2.0,
    flush_interval=0.0,
    fetch_delay=0.0,
)
"""Pushes at every hop: most tests here are about one hop; ``PushHopsTests``
covers how far pushes go."""
ZERO_DIGEST = "0" * 64


# -- events


def author(n: int, network: str = TEST_NETWORK) -> Author:
    """A deterministic event author number C{n}."""
    return Author(bytes([n]) * 32, network, TEST_PAIR)


def order(who: Author, seq: int, lamport: int | None = None, *, price: int | None = None) -> Event:
    """
    A signed limit order of C{who}: buys on odd, sells on even C{seq}, at
    prices that cross now and then, so ledgers make trades.
    """
    lamport = seq if lamport is None else lamport
    side = "buy" if seq % 2 else "sell"
    shown = str(100 + (seq * 7 + lamport) % 5) if price is None else str(price)
    return who.order(seq, lamport, 1_700_000_000_000 + lamport, side, "limit", shown, "1")


def chain(who: Author, count: int, first: int = 1) -> list[Event]:
    """C{count} consecutive orders of C{who} from seq C{first}."""
    return [order(who, seq) for seq in range(first, first + count)]


def ids(events: Iterable[Event]) -> list[str]:
    return [event.id for event in events]


# -- fakes


@implementer(IEventStore)
class FakeStore(LedgerStore):
    """
    A :class:`~bitfitech.simulation.LedgerStore` of the test network that
    records what gossip hands it.

    :ivar received: every batch gossip handed to :meth:`receive`.
    """

    network: str = TEST_NETWORK
    pair: str = TEST_PAIR

    def __init__(self, *events: Event) -> None:
        super().__init__()
        self.received: list[list[Event]] = []
        self.ledger.insert(events)

    def add(self, *events: Event) -> None:
        """Insert events as this node's own (not through gossip)."""
        self.ledger.insert(events)

    def receive(self, events: Sequence[Event], arrived: float | None = None) -> None:
        self.received.append(list(events))
        super().receive(events, arrived)


class FakeLink:
    """
    What gossip uses of a peer link (:class:`~bitfitech.interfaces.IPeerLink`):
    ``send``, ``closed``, ``violation`` and ``misbehaved``, which report to
    ``owner.link_misbehaved`` like the real link, and the peer's markets.

    :ivar sent: messages sent and not yet taken.
    :ivar remote: in a :class:`Mesh`, the node index and link that receive
        what this link sends.
    :ivar markets: the peer's markets (the test pair by default).
    :ivar shared_markets: those the test node carries too (the test pair).
    :ivar names_markets: whether the peer reads the ``market`` of messages;
        by default not (a version 3 peer), so messages carry none.
    """

    def __init__(
        self, name: str, *, markets: tuple[str, ...] = (TEST_PAIR,), names_markets: bool = False
    ) -> None:
        self.name = name
        self.node_id = name
        self.markets = markets
        self.shared_markets = tuple(market for market in (TEST_PAIR,) if market in markets)
        self.names_markets = names_markets
        self.owner = RecordingOwner()
        self.sent: list[Message] = []
        self.closed = False
        self.violations: list[str] = []
        self.remote: tuple[int, FakeLink] | None = None

    def __repr__(self) -> str:
        return f"<FakeLink {self.name}>"

    def send(self, message: Message) -> None:
        """Record C{message}; dropped once closed, like the real link."""
        if not self.closed:
            self.sent.append(message)

    def violation(self, reason: str) -> None:
        """Report to the owner and close, like the real link."""
        if self.closed:
            return
        self.violations.append(reason)
        self.owner.link_misbehaved(self, reason, 100)
        self.closed = True

    def misbehaved(self, reason: str, score: int) -> None:
        """Report to the owner, like the real link."""
        self.owner.link_misbehaved(self, reason, score)

    def take(self) -> list[Message]:
        """The messages sent since the last call."""
        out, self.sent = self.sent, []
        return out


def as_link(link: FakeLink) -> IPeerLink:
    """C{link} as the type gossip is annotated with."""
    return cast(IPeerLink, link)


class Node:
    """One gossip with a fake store, fake links and a clock."""

    def __init__(self, peers: int = 0, *events: Event, timing: GossipTiming = TIMING) -> None:
        self.clock = Clock()
        self.store = FakeStore(*events)
        self.gossip = Gossip(self.store, self.clock, timing, random.Random(1))
        self.links = [self.connect(f"peer{n}") for n in range(peers)]

    def connect(self, name: str) -> FakeLink:
        """A new ready link; its handshake ``sync`` is taken."""
        link = FakeLink(name)
        self.gossip.link_ready(as_link(link))
        link.take()
        return link

    def deliver(self, link: FakeLink, *messages: Message) -> None:
        """C{link} received C{messages}."""
        for message in messages:
            handled = self.gossip.link_message(as_link(link), message)
            assert handled, f"{message!r} not handled as gossip"

    def take_all(self) -> list[list[Message]]:
        """What each link was sent since the last call, in link order."""
        return [link.take() for link in self.links]


def full(messages: Iterable[Message]) -> list[str]:
    """Ids of the events carried in full by C{messages}."""
    return [event_id(text) for m in messages if isinstance(m, Events) for text, _ in m.events]


def announced(messages: Iterable[Message]) -> list[str]:
    """Ids announced by the ``inv`` among C{messages}."""
    return [ident for m in messages if isinstance(m, Inv) for ident in m.ids]


def wire_roundtrip(message: Message) -> Message:
    """C{message} encoded and decoded: it must be valid on the wire."""
    return decode_message(*encode_message(message))


class Mesh:
    """
    Several gossips on one clock, linked pairwise in memory by fake links.

    :ivar copies: per node, how many full copies of each event it was sent.
    :ivar delivered: every message delivered, with the receiving node.
    """

    def __init__(self, size: int, timing: GossipTiming = TIMING) -> None:
        self.clock = Clock()
        self.stores = [FakeStore() for _ in range(size)]
        self.gossips = [
            Gossip(store, self.clock, timing, random.Random(n))
            for n, store in enumerate(self.stores)
        ]
        self.links: list[FakeLink] = []
        self.copies: list[Counter[str]] = [Counter() for _ in range(size)]
        self.delivered: list[tuple[int, Message]] = []

    def connect(self, a: int, b: int) -> None:
        """Link nodes C{a} and C{b}: both run ``link_ready``."""
        at_a, at_b = FakeLink(f"{a}->{b}"), FakeLink(f"{b}->{a}")
        at_a.remote, at_b.remote = (b, at_b), (a, at_a)
        self.links += [at_a, at_b]
        self.gossips[a].link_ready(as_link(at_a))
        self.gossips[b].link_ready(as_link(at_b))

    def ring(self) -> None:
        size = len(self.gossips)
        for n in range(size):
            self.connect(n, (n + 1) % size)

    def publish(self, node: int, *events: Event) -> None:
        """Node C{node}'s market applies C{events} and hands them to gossip."""
        self.stores[node].add(*events)
        self.gossips[node].publish(events)

    def pump(self, limit: int = 1000) -> int:
        """
        Run reactor turns and deliver what links sent until nothing moves.

        :return: the rounds it took.
        :raises AssertionError: if still busy after C{limit} rounds.
        """
        for rounds in range(limit):
            self.clock.advance(0)
            moved = False
            for link in self.links:
                assert link.remote is not None
                node, far = link.remote
                for message in link.take():
                    moved = True
                    message = wire_roundtrip(message)
                    self.delivered.append((node, message))
                    if isinstance(message, Events):
                        self.copies[node].update(event_id(text) for text, _ in message.events)
                    self.gossips[node].link_message(as_link(far), message)
            if not moved:
                return rounds
        raise AssertionError(f"gossip still busy after {limit} rounds")


# -- tests


class InterfaceTests(SynchronousTestCase):
    def test_provides_interfaces(self) -> None:
        """Gossip provides what the hub and the market call; the fake store is a full store."""
        node = Node()
        self.assertTrue(verifyObject(IGossip, node.gossip))
        self.assertTrue(verifyObject(IEventPublisher, node.gossip))
        self.assertTrue(verifyObject(IEventStore, node.store))

    def test_other_messages_not_handled(self) -> None:
        """``link_message`` answers ``False`` for a message that is not gossip."""
        node = Node(1)
        self.assertFalse(node.gossip.link_message(as_link(node.links[0]), Ping(nonce=1)))


class LinkReadyTests(SynchronousTestCase):
    def test_sync_with_vector_and_digest(self) -> None:
        """A new link is sent one ``sync`` holding the store's vector and digest."""
        a, b = author(1), author(2)
        node = Node(0, *chain(a, 3), *chain(b, 2))
        link = FakeLink("new")
        node.gossip.link_ready(as_link(link))
        node.clock.advance(0)
        [sync] = link.take()
        assert isinstance(sync, Sync)
        self.assertEqual(dict(sync.vector), {a.author: 3, b.author: 2})
        self.assertEqual(len(sync.vector), 2)
        self.assertEqual(sync.digest, node.store.ledger.log_hash)
        self.assertEqual(node.gossip.stats["sync_sent"], 1)


class PublishTests(SynchronousTestCase):
    def test_push_to_fanout_inv_to_the_rest_next_turn(self) -> None:
        """
        With fanout 1 and 5 peers, one peer gets the event in full and four
        get an ``inv``, all with the full ttl; nothing is sent before the
        next reactor turn.
        """
        event = order(author(1), 1)
        node = Node(5, event)
        node.gossip.publish([event])
        self.assertEqual(node.take_all(), [[]] * 5)
        node.clock.advance(0)
        sent = node.take_all()
        pushed = [msgs for msgs in sent if any(isinstance(m, Events) for m in msgs)]
        self.assertEqual(pushed, [[Events((event.wire,), ttl=TIMING.ttl, more=False)]])
        invs = [msgs for msgs in sent if msgs is not pushed[0]]
        self.assertEqual(invs, [[Inv((event.id,), ttl=TIMING.ttl)]] * 4)
        self.assertEqual(node.gossip.stats["events_pushed"], 1)
        self.assertEqual(node.gossip.stats["inv_sent"], 4)

    def test_published_without_peers_pushed_to_the_first(self) -> None:
        """
        Events published while the node has no peer are pushed, with the
        full ttl, to the first peer that comes, and left out of the answer
        to its ``sync``; later peers do not get them again.
        """
        events = [order(author(1), seq) for seq in (1, 2)]
        node = Node(0, *events)
        node.gossip.publish(events)
        node.clock.advance(0)
        first = node.connect("first")
        node.clock.advance(0)
        self.assertEqual(first.take(), [Events(tuple(e.wire for e in events), 16, False)])
        node.deliver(first, Sync((), ZERO_DIGEST))
        self.assertEqual(full(first.take()), [])
        node.connect("second")
        node.clock.advance(0)
        self.assertEqual(node.gossip.stats["events_pushed"], 2)

    def test_fanout_peers_are_random(self) -> None:
        """The pushed peer is picked at random, event by event, not always the same."""
        node = Node(5)
        for seq in range(1, 21):
            event = order(author(1), seq)
            node.store.add(event)
            node.gossip.publish([event])
        node.clock.advance(0)
        receivers = [n for n, msgs in enumerate(node.take_all()) if full(msgs)]
        self.assertGreater(len(receivers), 1)

    def test_publishes_in_one_turn_batched(self) -> None:
        """Several publishes in one turn make one message per peer, events in order."""
        events = chain(author(1), 3)
        node = Node(3, *events, timing=replace(TIMING, fanout=5))
        for event in events:
            node.gossip.publish([event])
        node.clock.advance(0)
        wires = tuple(event.wire for event in events)
        self.assertEqual(node.take_all(), [[Events(wires, ttl=16, more=False)]] * 3)

    def test_pushed_bytes_as_checked_fragments_bounded(self) -> None:
        """
        Pushed events go out as messages prepared from each event's JSON,
        built once for all peers: byte for byte what a checked Events
        encodes to; the fragments kept stay within FRAGMENTS.
        """
        self.patch(gossip_module, "FRAGMENTS", 4)
        events = chain(author(1), 10)
        node = Node(3, *events, timing=replace(TIMING, fanout=5))
        node.gossip.publish(events)
        node.clock.advance(0)
        wires = tuple(event.wire for event in events)
        for sent in node.take_all():
            self.assertEqual(len(sent), 1)
            self.assertEqual(encode_message(sent[0]), encode_message(Events(wires, 16, False)))
        self.assertEqual(list(node.gossip._fragments), [e.id for e in events[-4:]])

    def test_publishes_batched_per_kind_with_fanout_one(self) -> None:
        """
        With fanout 1, each peer gets at most one ``events`` and one ``inv``
        for a turn's publishes, and every event reaches every peer once.
        """
        events = chain(author(1), 6)
        node = Node(4, *events)
        for event in events:
            node.gossip.publish([event])
        node.clock.advance(0)
        pushes = 0
        for msgs in node.take_all():
            kinds = Counter(type(m) for m in msgs)
            self.assertLessEqual(max(kinds.values()), 1)
            self.assertEqual(sorted(full(msgs) + announced(msgs)), sorted(ids(events)))
            pushes += len(full(msgs))
        self.assertEqual(pushes, len(events))

    def test_not_sent_to_peers_known_to_have_it(self) -> None:
        """A peer that announced an event is neither pushed it nor sent an ``inv`` for it."""
        event = order(author(1), 1)
        node = Node(2)
        holder, other = node.links
        node.deliver(holder, Inv((event.id,), ttl=3))
        node.clock.advance(0)
        node.take_all()
        node.store.add(event)
        node.gossip.publish([event])
        node.clock.advance(0)
        self.assertEqual(holder.take(), [])
        self.assertEqual(other.take(), [Events((event.wire,), ttl=16, more=False)])


class ReceiveEventsTests(SynchronousTestCase):
    def test_new_events_stored_and_relayed_with_ttl_minus_one(self) -> None:
        """
        New events go to the store at once and are relayed with ttl - 1 to
        every other peer, in full or announced, and never back to the sender.
        """
        events = chain(author(1), 2)
        node = Node(3)
        sender, b, c = node.links
        node.deliver(sender, Events(tuple(e.wire for e in events), ttl=5, more=False))
        self.assertEqual(node.store.received, [events])
        self.assertEqual(node.take_all(), [[], [], []])
        node.clock.advance(0)
        self.assertEqual(sender.take(), [])
        for msgs in (b.take(), c.take()):
            self.assertEqual({m.ttl for m in msgs if isinstance(m, (Events, Inv))}, {4})
            self.assertEqual(sorted(full(msgs) + announced(msgs)), sorted(ids(events)))
        stats = node.gossip.stats
        self.assertEqual((stats["events_received"], stats["events_new"]), (2, 2))

    def test_never_back_to_sender_even_with_large_fanout(self) -> None:
        """With a fanout above the peer count, every peer but the sender gets the event."""
        event = order(author(1), 1)
        node = Node(3, timing=replace(TIMING, fanout=10))
        sender, b, c = node.links
        node.deliver(sender, Events((event.wire,), ttl=2, more=False))
        node.clock.advance(0)
        self.assertEqual(sender.take(), [])
        self.assertEqual(b.take(), [Events((event.wire,), ttl=1, more=False)])
        self.assertEqual(c.take(), [Events((event.wire,), ttl=1, more=False)])

    def test_ttl_one_relayed_with_ttl_zero(self) -> None:
        """An event received with ttl 1 makes one more hop, with ttl 0."""
        event = order(author(1), 1)
        node = Node(2, timing=replace(TIMING, fanout=10))
        node.deliver(node.links[0], Events((event.wire,), ttl=1, more=False))
        node.clock.advance(0)
        self.assertEqual(node.links[1].take(), [Events((event.wire,), ttl=0, more=False)])

    def test_ttl_zero_not_relayed(self) -> None:
        """Events received with ttl 0 are stored but never relayed."""
        event = order(author(1), 1)
        node = Node(3, timing=replace(TIMING, fanout=10))
        node.deliver(node.links[0], Events((event.wire,), ttl=0, more=False))
        node.clock.advance(0)
        self.assertEqual(node.store.received, [[event]])
        self.assertEqual(node.take_all(), [[], [], []])
        self.assertEqual(node.gossip.stats["events_pushed"] + node.gossip.stats["inv_sent"], 0)

    def test_duplicates_counted_and_not_relayed(self) -> None:
        """
        An event already held, or already received, is counted as a
        duplicate, not stored again and not relayed again.
        """
        held, fresh = order(author(1), 1), order(author(2), 1)
        node = Node(3, held)
        a, b, _ = node.links
        node.deliver(a, Events((held.wire,), ttl=5, more=False))
        node.clock.advance(0)
        self.assertEqual(node.take_all(), [[Prune()], [], []])
        self.assertEqual(node.store.received, [])
        node.deliver(a, Events((fresh.wire,), ttl=5, more=False))
        node.clock.advance(0)
        node.take_all()
        node.deliver(b, Events((fresh.wire, held.wire), ttl=5, more=False))
        node.clock.advance(0)
        self.assertEqual(node.take_all(), [[], [Prune()], []])
        self.assertEqual(node.store.received, [[fresh]])
        stats = node.gossip.stats
        self.assertEqual(stats["events_received"], 4)
        self.assertEqual(stats["events_new"], 1)
        self.assertEqual(stats["events_duplicate"], 3)

    def test_malformed_event_marks_peer_rest_processed(self) -> None:
        """
        A malformed event (here: for another network) marks the peer as
        misbehaving and is skipped; the other events of the message are
        stored and relayed, and the link stays open.
        """
        good1, good2 = order(author(1), 1), order(author(2), 1)
        alien = order(author(3, network="other"), 1)
        node = Node(2, timing=replace(TIMING, fanout=10))
        sender, other = node.links
        node.deliver(sender, Events((good1.wire, alien.wire, good2.wire), ttl=3, more=False))
        self.assertEqual(node.store.received, [[good1, good2]])
        [(link, reason)] = sender.owner.misbehaved
        self.assertIs(link, sender)
        self.assertIn("malformed event", reason)
        self.assertFalse(sender.closed)
        self.assertEqual(sender.violations, [])
        node.clock.advance(0)
        self.assertEqual(full(other.take()), [good1.id, good2.id])
        stats = node.gossip.stats
        self.assertEqual((stats["events_invalid"], stats["events_new"]), (1, 2))

    def test_malformed_event_remembered(self) -> None:
        """A malformed event sent again is dropped as a duplicate, without a new mark."""
        alien = order(author(3, network="other"), 1)
        node = Node(1)
        node.deliver(node.links[0], Events((alien.wire,), ttl=3, more=False))
        node.deliver(node.links[0], Events((alien.wire,), ttl=3, more=False))
        self.assertEqual(len(node.links[0].owner.misbehaved), 1)
        self.assertEqual(node.gossip.stats["events_duplicate"], 1)

    def test_bad_signature_is_a_violation(self) -> None:
        """
        A bad signature calls ``violation`` on the link (which closes it);
        the other events of the message verified and are kept.
        """
        first, forged_of, after = order(author(1), 1), order(author(2), 1), order(author(4), 1)
        forged = (forged_of.text, first.sig)
        node = Node(2)
        sender, _ = node.links
        node.deliver(sender, Events((first.wire, forged, after.wire), ttl=3, more=True))
        self.assertEqual(len(sender.violations), 1)
        self.assertIn(f"bad signature on event {forged_of.id}", sender.violations[0])
        self.assertTrue(sender.closed)
        self.assertEqual(node.store.received, [[first, after]])
        stats = node.gossip.stats
        self.assertEqual(stats["events_received"], 3)
        self.assertEqual((stats["events_invalid"], stats["events_new"]), (1, 2))
        # more=True asks a closed link for nothing
        node.clock.advance(0)
        self.assertEqual(sender.sent, [])
        # the genuine event is taken when another peer sends it
        other = node.connect("honest")
        node.deliver(other, Events((forged_of.wire,), ttl=3, more=False))
        self.assertTrue(node.store.has(forged_of.id))

    def test_forged_copy_does_not_poison_genuine_event(self) -> None:
        """
        After a peer sends an event with a bad signature, the genuine event
        from an honest peer is still stored.
        """
        event = order(author(1), 1)
        forged = (event.text, order(author(2), 1).sig)
        node = Node(2)
        attacker, honest = node.links
        node.deliver(attacker, Events((forged,), ttl=3, more=False))
        self.assertTrue(attacker.closed)
        node.deliver(honest, Events((event.wire,), ttl=3, more=False))
        self.assertTrue(node.store.has(event.id))


class InvTests(SynchronousTestCase):
    def test_unknown_ids_requested_in_one_getdata(self) -> None:
        """Ids not held are asked for in one ``getdata`` at the next turn; held ones are not."""
        held, x, y = order(author(1), 1), order(author(2), 1), order(author(3), 1)
        node = Node(2, held)
        announcer, other = node.links
        node.deliver(announcer, Inv((x.id, held.id, y.id), ttl=4))
        self.assertEqual(announcer.sent, [])
        node.clock.advance(0)
        self.assertEqual(announcer.take(), [GetData((x.id, y.id))])
        self.assertEqual(other.take(), [])
        stats = node.gossip.stats
        self.assertEqual((stats["inv_received"], stats["getdata_sent"]), (3, 2))

    def test_fetch_waits_for_racing_push(self) -> None:
        """
        With ``fetch_delay``, an announced event is asked for only if no
        push of it arrived meanwhile; the others are asked for together.
        """
        pushed, announced = order(author(2), 1), order(author(3), 1)
        node = Node(2, timing=replace(TIMING, fetch_delay=0.01))
        announcer, pusher = node.links
        node.deliver(announcer, Inv((pushed.id, announced.id), ttl=4))
        node.clock.advance(0.005)
        self.assertEqual(announcer.take(), [])
        node.deliver(pusher, Events((pushed.wire,), ttl=4, more=False))
        node.clock.advance(0.005)
        self.assertEqual(announcer.take(), [GetData((announced.id,))])
        self.assertEqual(node.gossip.stats["getdata_sent"], 1)

    def test_fetch_delay_counted_from_each_inv(self) -> None:
        """An event announced later waits its own ``fetch_delay``."""
        early, late = order(author(2), 1), order(author(3), 1)
        node = Node(1, timing=replace(TIMING, fetch_delay=0.01))
        link = node.links[0]
        node.deliver(link, Inv((early.id,), ttl=4))
        node.clock.advance(0.006)
        node.deliver(link, Inv((late.id,), ttl=4))
        node.clock.advance(0.004)
        self.assertEqual(link.take(), [GetData((early.id,))])
        node.clock.advance(0.004)
        self.assertEqual(link.take(), [])
        node.clock.advance(0.003)
        self.assertEqual(link.take(), [GetData((late.id,))])

    def test_several_invs_in_one_turn_batched(self) -> None:
        """Ids from several ``inv`` of one peer in one turn make one ``getdata``."""
        x, y = order(author(2), 1), order(author(3), 1)
        node = Node(1)
        node.deliver(node.links[0], Inv((x.id,), ttl=4), Inv((y.id,), ttl=4))
        node.clock.advance(0)
        self.assertEqual(node.links[0].take(), [GetData((x.id, y.id))])

    def test_second_announcer_not_asked_while_requested(self) -> None:
        """An id announced by a second peer while requested from the first is not asked twice."""
        x = order(author(2), 1)
        node = Node(2)
        first, second = node.links
        node.deliver(first, Inv((x.id,), ttl=4))
        node.clock.advance(0)
        node.deliver(second, Inv((x.id,), ttl=4))
        node.clock.advance(0)
        self.assertEqual(first.take(), [GetData((x.id,))])
        self.assertEqual(second.take(), [])
        self.assertEqual(node.gossip.summary()["requests_in_flight"], 1)

    def test_unanswered_request_goes_to_second_announcer(self) -> None:
        """
        A ``getdata`` unanswered for ``request_timeout`` is sent to the next
        announcer (checked every ``request_timeout``, so within twice that),
        and once answered nobody is asked again.
        """
        x = order(author(2), 1)
        node = Node(2)
        node.gossip.start()
        first, second = node.links
        node.clock.advance(0.5)
        node.deliver(first, Inv((x.id,), ttl=4))
        node.deliver(second, Inv((x.id,), ttl=4))
        node.clock.advance(0)
        self.assertEqual(first.take(), [GetData((x.id,))])
        node.clock.advance(TIMING.request_timeout - 0.1)
        self.assertEqual(node.take_all(), [[], []])
        node.clock.advance(TIMING.request_timeout)
        self.assertEqual(node.take_all(), [[], [GetData((x.id,))]])
        node.deliver(second, Events((x.wire,), ttl=4, more=False))
        self.assertEqual(node.gossip.summary()["requests_in_flight"], 0)
        node.clock.advance(3 * TIMING.request_timeout)
        self.assertEqual([GetData in map(type, msgs) for msgs in node.take_all()], [False, False])
        node.gossip.stop()

    def test_request_dropped_when_no_announcer_left(self) -> None:
        """A request whose only announcer never answered is forgotten after the timeout."""
        x = order(author(2), 1)
        node = Node(1)
        node.gossip.start()
        node.deliver(node.links[0], Inv((x.id,), ttl=4))
        node.clock.advance(0)
        node.links[0].take()
        node.clock.advance(2 * TIMING.request_timeout)
        self.assertEqual(node.gossip.summary()["requests_in_flight"], 0)
        self.assertEqual(node.links[0].take(), [])
        node.gossip.stop()

    def test_request_survives_first_announcer_leaving(self) -> None:
        """When the asked announcer leaves, the next announcer is asked after the timeout."""
        x = order(author(2), 1)
        node = Node(2)
        node.gossip.start()
        first, second = node.links
        node.deliver(first, Inv((x.id,), ttl=4))
        node.deliver(second, Inv((x.id,), ttl=4))
        node.clock.advance(0)
        self.assertEqual(first.take(), [GetData((x.id,))])
        node.gossip.link_closed(as_link(first))
        node.clock.advance(2 * TIMING.request_timeout)
        self.assertEqual(second.take(), [GetData((x.id,))])
        node.gossip.stop()

    def test_getdata_answered_with_held_events(self) -> None:
        """A ``getdata`` is answered with one ``events`` of the held events, unknown ids skipped."""
        x, y, unknown = order(author(1), 1), order(author(2), 1), order(author(3), 1)
        node = Node(1, x, y)
        asker = node.links[0]
        node.deliver(asker, GetData((x.id, unknown.id, y.id)))
        node.clock.advance(0)
        self.assertEqual(asker.take(), [Events((x.wire, y.wire), ttl=0, more=False)])

    def test_getdata_after_inv_answered_with_announced_ttl(self) -> None:
        """The answer to a ``getdata`` after an ``inv`` has the announced ttl: it spreads on."""
        event = order(author(1), 1)
        node = Node(2, event)
        node.gossip.publish([event])
        node.clock.advance(0)
        [asker] = [
            link for link, msgs in zip(node.links, node.take_all(), strict=True) if announced(msgs)
        ]
        node.deliver(asker, GetData((event.id,)))
        node.clock.advance(0)
        self.assertEqual(asker.take(), [Events((event.wire,), ttl=16, more=False)])


class PushHopsTests(SynchronousTestCase):
    """How far pushes go (``push_hops``), and pruned and grafted links."""

    TIMING = replace(TIMING, fanout=10, push_hops=2)

    def test_pushed_within_push_hops_announced_beyond(self) -> None:
        """
        With ``push_hops`` 2, an event from its author (ttl 16: this node is
        one hop away) is pushed on; one from a node one hop from its author
        (ttl 15: this node is two hops away) is only announced.
        """
        near, far = order(author(1), 1), order(author(2), 1)
        node = Node(2, timing=self.TIMING)
        sender, other = node.links
        node.deliver(sender, Events((near.wire,), ttl=16, more=False))
        node.deliver(sender, Events((far.wire,), ttl=15, more=False))
        node.clock.advance(0)
        self.assertEqual(
            other.take(), [Events((near.wire,), ttl=15, more=False), Inv((far.id,), ttl=14)]
        )

    def test_busy_witness_pushes_relays_to_witnesses_only(self) -> None:
        """
        A busy witness relays a peer's event by push to the other
        witnesses only, and announces it to the rest; its own events it
        pushes as any node does.
        """
        relayed, own = order(author(1), 1), order(author(2), 1)
        node = Node(timing=self.TIMING)
        node.gossip = Gossip(
            node.store, node.clock, self.TIMING, random.Random(1), witnesses=("me", "witness")
        )
        sender, witness, plain = (node.connect(name) for name in ("sender", "witness", "plain"))
        node.store.witnessing = True
        node.gossip._busy = True  # noqa: SLF001 (more than BUSY_RATE items sent a second)
        node.deliver(sender, Events((relayed.wire,), ttl=16, more=False))
        node.gossip.publish([own])
        node.clock.advance(0)
        self.assertEqual(sorted(full(witness.take())), sorted([own.id, relayed.id]))
        sent = plain.take()
        self.assertEqual((full(sent), announced(sent)), ([own.id], [relayed.id]))
        # The same relay from a witness that is not busy, or from a node
        # that is no witness, is pushed.
        for busy, witnessing, seq in ((False, True, 2), (True, False, 3)):
            node.gossip._busy = busy  # noqa: SLF001
            node.store.witnessing = witnessing
            later = order(author(1), seq)
            node.deliver(sender, Events((later.wire,), ttl=16, more=False))
            node.clock.advance(0.01)
            self.assertEqual(full(plain.take()), [later.id])

    def test_duplicate_push_prunes_the_pusher_once(self) -> None:
        """
        A push of an event already held sends the pusher one ``prune``
        (more duplicates do not send another) and makes the link lazy:
        relays go to it as ``inv`` only.
        """
        held, other_held, relayed = (order(author(n), 1) for n in (1, 2, 3))
        node = Node(3, held, other_held, timing=self.TIMING)
        pusher, source, _ = node.links
        node.deliver(pusher, Events((held.wire,), ttl=16, more=False))
        node.deliver(pusher, Events((other_held.wire,), ttl=16, more=False))
        self.assertEqual(pusher.take(), [Prune()])
        self.assertEqual(node.gossip.stats["prunes_sent"], 1)
        node.deliver(source, Events((relayed.wire,), ttl=16, more=False))
        node.clock.advance(0)
        self.assertEqual(pusher.take(), [Inv((relayed.id,), ttl=15)])

    def test_prune_received_makes_relays_announcements(self) -> None:
        """
        After a peer's ``prune``, relays go to it as ``inv``; the node's own
        events are still pushed to it.
        """
        own, relayed = order(author(1), 1), order(author(2), 1)
        node = Node(2, own, timing=self.TIMING)
        source, pruner = node.links
        node.deliver(pruner, Prune())
        node.deliver(source, Events((relayed.wire,), ttl=16, more=False))
        node.clock.advance(0)
        self.assertEqual(pruner.take(), [Inv((relayed.id,), ttl=15)])
        node.gossip.publish([own])
        node.clock.advance(0)
        self.assertEqual(pruner.take(), [Events((own.wire,), ttl=16, more=False)])

    def test_getdata_received_grafts(self) -> None:
        """A ``getdata`` from a pruned peer makes its link eager again."""
        asked, relayed = order(author(1), 1), order(author(2), 1)
        node = Node(2, asked, timing=self.TIMING)
        source, peer = node.links
        node.deliver(peer, Prune(), GetData((asked.id,)))
        node.clock.advance(0)
        peer.take()
        node.deliver(source, Events((relayed.wire,), ttl=16, more=False))
        node.clock.advance(0)
        self.assertEqual(peer.take(), [Events((relayed.wire,), ttl=15, more=False)])

    def test_getdata_sent_grafts(self) -> None:
        """Asking a pruned peer for an event it announced makes its link eager again."""
        held, missing, relayed = (order(author(n), 1) for n in (1, 2, 3))
        node = Node(2, held, timing=self.TIMING)
        source, peer = node.links
        node.deliver(peer, Events((held.wire,), ttl=16, more=False))
        self.assertEqual(peer.take(), [Prune()])
        node.deliver(peer, Inv((missing.id,), ttl=16))
        node.clock.advance(0)
        self.assertEqual(peer.take(), [GetData((missing.id,))])
        node.deliver(source, Events((relayed.wire,), ttl=16, more=False))
        node.clock.advance(0)
        self.assertEqual(full(peer.take()), [relayed.id])

    def test_late_answer_does_not_prune(self) -> None:
        """
        The answer to a ``getdata`` that comes after a push brought the
        event is a duplicate, but not a push: the answerer is not pruned.
        """
        event = order(author(1), 1)
        node = Node(2, timing=self.TIMING)
        asked, pusher = node.links
        node.deliver(asked, Inv((event.id,), ttl=16))
        node.clock.advance(0)
        self.assertEqual(asked.take(), [GetData((event.id,))])
        node.deliver(pusher, Events((event.wire,), ttl=16, more=False))
        node.deliver(asked, Events((event.wire,), ttl=16, more=False))
        node.clock.advance(0)
        self.assertEqual(asked.take(), [])
        self.assertEqual(node.gossip.stats["events_duplicate"], 1)
        self.assertEqual(node.gossip.stats["prunes_sent"], 0)

    def test_anti_entropy_duplicates_do_not_prune(self) -> None:
        """Events of an anti-entropy answer (ttl 0) already held prune nothing."""
        held = order(author(1), 1)
        node = Node(1, held, timing=self.TIMING)
        node.deliver(node.links[0], Events((held.wire,), ttl=0, more=False))
        self.assertEqual(node.links[0].take(), [])

    def test_announced_beyond_push_hops_fetched_at_once(self) -> None:
        """
        An ``inv`` from a node more than ``push_hops`` from the author is
        answered with a ``getdata`` at the next turn: every push was sent
        before it.  One from nearer waits ``fetch_delay`` for a racing push.
        """
        far, near = order(author(1), 1), order(author(2), 1)
        node = Node(1, timing=replace(self.TIMING, fetch_delay=0.01))
        link = node.links[0]
        node.deliver(link, Inv((far.id,), ttl=13), Inv((near.id,), ttl=14))
        node.clock.advance(0)
        self.assertEqual(link.take(), [GetData((far.id,))])
        node.clock.advance(0.01)
        self.assertEqual(link.take(), [GetData((near.id,))])


class BatchTests(SynchronousTestCase):
    def test_answer_with_ttl_zero_does_not_stop_pushes(self) -> None:
        """
        A ``getdata`` answer for an event learned by anti-entropy (ttl 0)
        goes in its own message: the pushes of the same flush keep their
        ttl and spread on.
        """
        old, new = order(author(1), 1), order(author(2), 1)
        node = Node(1)
        link = node.links[0]
        node.clock.advance(old.ts / 1000 + REPAIR_AGE + 1)
        node.deliver(node.connect("answerer"), Events((old.wire,), ttl=0, more=False))
        node.clock.advance(0)
        link.take()
        node.deliver(link, GetData((old.id,)))
        node.gossip.publish([new])
        node.clock.advance(0)
        self.assertEqual(
            sorted(link.take(), key=lambda m: getattr(m, "ttl", -1)),
            [Events((old.wire,), ttl=0, more=False), Events((new.wire,), ttl=16, more=False)],
        )

    def test_answers_keep_their_own_ttl(self) -> None:
        """``getdata`` answers for events held with different ttls go in one message per ttl."""
        old, fresh = order(author(1), 1), order(author(2), 1)
        node = Node(1)
        link = node.links[0]
        source = node.connect("source")
        node.clock.advance(old.ts / 1000 + REPAIR_AGE + 1)
        node.deliver(source, Events((old.wire,), ttl=0, more=False))
        node.deliver(source, Events((fresh.wire,), ttl=9, more=False))
        node.clock.advance(0)
        link.take()
        node.deliver(link, GetData((old.id, fresh.id)))
        node.clock.advance(0)
        self.assertEqual(
            sorted(link.take(), key=lambda m: getattr(m, "ttl", -1)),
            [Events((old.wire,), ttl=0, more=False), Events((fresh.wire,), ttl=8, more=False)],
        )

    def test_pushes_batched_with_smallest_ttl(self) -> None:
        """Pushes queued in one flush go in one message with the smallest ttl."""
        first, second = order(author(1), 1), order(author(2), 1)
        node = Node(1)
        source = node.connect("source")
        node.deliver(source, Events((first.wire,), ttl=9, more=False))
        node.deliver(source, Events((second.wire,), ttl=5, more=False))
        node.clock.advance(0)
        self.assertEqual(
            node.links[0].take(), [Events((first.wire, second.wire), ttl=4, more=False)]
        )

    def test_idle_node_sends_at_once(self) -> None:
        """However close together, the flushes of an idle node are not delayed."""
        node = Node(1, timing=GossipTiming(flush_interval=0.01, fetch_delay=0.0))
        link = node.links[0]
        for n in range(1, 4):
            node.gossip.publish([order(author(n), 1)])
            node.clock.advance(0)
            self.assertEqual(len(link.take()), 1)

    def test_busy_node_flushes_at_most_every_flush_interval(self) -> None:
        """Once it sent more than ``BUSY_RATE`` items a second, a node batches its sends."""
        self.patch(gossip_module, "BUSY_RATE", 2)
        node = Node(1, timing=GossipTiming(flush_interval=0.01, fetch_delay=0.0))
        link = node.links[0]
        for n in range(1, 5):
            node.gossip.publish([order(author(n), 1)])
            node.clock.advance(0)
            node.clock.advance(0.3)
        self.assertEqual(len(link.take()), 4, "not busy yet: sent at once")
        node.gossip.publish([order(author(5), 1)])
        node.clock.advance(0)
        self.assertEqual(len(link.take()), 1, "the first flush after a while goes at once")
        later = order(author(6), 1)
        node.gossip.publish([later])
        node.clock.advance(0.004)
        self.assertEqual(link.take(), [])
        node.clock.advance(0.007)
        self.assertEqual(link.take(), [Events((later.wire,), ttl=16, more=False)])


class SyncTests(SynchronousTestCase):
    def test_missing_events_sent_in_key_order_chunked(self) -> None:
        """
        A peer lacking events gets them with ttl 0, in key order, at most
        ``SYNC_CHUNK`` per message, with ``more`` while more remain.
        """
        self.patch(gossip_module, "SYNC_CHUNK", 3)
        self.patch(gossip_module, "SYNC_BURST", 1)
        a, b = author(1), author(2)
        events = [order(a, 1, 1), order(b, 1, 2), order(a, 2, 4), order(b, 2, 3), order(a, 3, 9)]
        node = Node(1, *reversed(events))
        link = node.links[0]
        by_key = sorted(events, key=lambda e: e.key)
        node.deliver(link, Sync(vector=(), digest=ZERO_DIGEST))
        node.clock.advance(0)
        wires = tuple(e.wire for e in by_key)
        self.assertEqual(link.take(), [Events(wires[:3], ttl=0, more=True)])
        # the first chunk took a1 b1 b2 (key order), so the peer now has a:1 b:2
        node.deliver(link, Sync(vector=((a.author, 1), (b.author, 2)), digest=ZERO_DIGEST))
        node.clock.advance(0)
        self.assertEqual(link.take(), [Events(wires[3:], ttl=0, more=False)])
        stats = node.gossip.stats
        self.assertEqual((stats["sync_received"], stats["sync_events_sent"]), (2, 5))

    def test_answer_is_a_burst_of_chunks(self) -> None:
        """
        One answer holds up to ``SYNC_BURST`` messages of ``SYNC_CHUNK``
        events, in key order; only the last says ``more``.
        """
        self.patch(gossip_module, "SYNC_CHUNK", 2)
        self.patch(gossip_module, "SYNC_BURST", 2)
        events = chain(author(1), 5)
        node = Node(1, *events)
        link = node.links[0]
        node.deliver(link, Sync(vector=(), digest=ZERO_DIGEST))
        wires = [e.wire for e in events]
        self.assertEqual(
            link.take(),
            [
                Events(tuple(wires[:2]), ttl=0, more=False),
                Events(tuple(wires[2:4]), ttl=0, more=True),
            ],
        )

    def test_answer_leaves_out_what_is_on_its_way(self) -> None:
        """
        Events recently pushed or announced to the asking peer are left out
        of the answer; older ones, and ones the peer was never sent, are not.
        """
        a = author(1)
        events = chain(a, 3)
        node = Node(1, *events[:2])
        link = node.links[0]
        node.clock.advance(events[2].ts / 1000)
        node.deliver(node.connect("source"), Events((events[2].wire,), ttl=5, more=False))
        node.clock.advance(0)
        self.assertEqual([type(m) for m in link.take()], [Events])  # pushed to the peer
        node.deliver(link, Sync(vector=(), digest=ZERO_DIGEST))
        self.assertEqual(link.take(), [Events((events[0].wire, events[1].wire), ttl=0, more=False)])
        node.clock.advance(REPAIR_AGE + 1)
        node.deliver(link, Sync(vector=((a.author, 2),), digest=ZERO_DIGEST))
        self.assertEqual(link.take(), [Events((events[2].wire,), ttl=0, more=False)])

    def test_nothing_sent_when_in_sync(self) -> None:
        """A peer with the same vector and digest is sent nothing."""
        events = chain(author(1), 3)
        node = Node(1, *events)
        vector = tuple(node.store.vector().items())
        node.deliver(node.links[0], Sync(vector=vector, digest=node.store.digest()))
        node.clock.advance(0)
        self.assertEqual(node.links[0].take(), [])

    def test_more_asks_again(self) -> None:
        """Receiving ``events`` with ``more`` makes us send our updated ``sync`` to that peer."""
        events = chain(author(1), 2)
        node = Node(2)
        link, other = node.links
        node.deliver(link, Events(tuple(e.wire for e in events), ttl=0, more=True))
        node.clock.advance(0)
        [sync] = link.take()
        assert isinstance(sync, Sync)
        self.assertEqual(dict(sync.vector), {events[0].author: 2})
        self.assertEqual(other.take(), [])

    def test_no_more_no_sync(self) -> None:
        """Receiving ``events`` without ``more`` asks the sender for nothing right away."""
        node = Node(1)
        node.deliver(node.links[0], Events((order(author(1), 1).wire,), ttl=0, more=False))
        node.clock.advance(0)
        self.assertEqual(node.links[0].take(), [])

    def test_pull_when_peer_stays_ahead(self) -> None:
        """
        A peer whose ``sync`` shows events we lack is sent our ``sync`` if
        we still lack them a while later, and not at once: under load they
        are usually on their way.
        """
        a = author(1)
        node = Node(1, order(a, 1))
        link = node.links[0]
        node.gossip.start()
        node.clock.advance(10 * GAP_CHECK)
        node.deliver(link, Sync(vector=((a.author, 5),), digest=ZERO_DIGEST))
        node.clock.advance(0)
        self.assertEqual(link.take(), [])
        node.clock.advance(GAP_CHECK)
        self.assertEqual(link.take(), [Sync(vector=((a.author, 1),), digest=node.store.digest())])
        node.clock.advance(GAP_CHECK)
        self.assertEqual(link.take(), [], "asked again without a new sync")
        node.gossip.stop()

    def test_ahead_peer_pulled_after_ahead_patience(self) -> None:
        """
        On a quiet network the pull comes ``AHEAD_PATIENCE`` after the
        peer's ``sync``, not at the next gap check: a node prompted by
        repairs passes them on within half a second.
        """
        a = author(1)
        node = Node(1, order(a, 1))
        link = node.links[0]
        node.gossip.start()
        node.clock.advance(10 * GAP_CHECK + 0.1)
        link.take()
        node.deliver(link, Sync(vector=((a.author, 5),), digest=ZERO_DIGEST))
        node.clock.advance(AHEAD_PATIENCE - 0.01)
        self.assertEqual(link.take(), [])
        node.clock.advance(0.01)
        self.assertEqual(link.take(), [Sync(vector=((a.author, 1),), digest=node.store.digest())])
        node.gossip.stop()

    def test_ahead_peer_not_pulled_while_our_pull_is_unanswered(self) -> None:
        """
        A peer ahead of us that we asked less than a gap check ago, and
        whose answer has not begun, is not asked again early: a large
        answer (a node joining) may take a while to start.
        """
        a = author(1)
        node = Node(0, order(a, 1))
        node.gossip.start()
        node.clock.advance(10 * GAP_CHECK + 0.1)
        link = node.connect("new")  # its handshake sync is our pull
        node.deliver(link, Sync(vector=((a.author, 5),), digest=ZERO_DIGEST))
        node.clock.advance(AHEAD_PATIENCE)
        self.assertEqual(link.take(), [])
        node.clock.advance(GAP_CHECK)
        self.assertEqual(len(link.take()), 1)
        node.gossip.stop()

    def test_pull_when_peer_stays_ahead_waits_pull_interval(self) -> None:
        """A check within ``PULL_INTERVAL`` of our last pull leaves it to the next check."""
        a = author(1)
        node = Node(0, order(a, 1))
        node.gossip.start()
        node.clock.advance(10 * GAP_CHECK - PULL_INTERVAL / 2)
        link = node.connect("late")  # its handshake sync is our last pull
        node.deliver(link, Sync(vector=((a.author, 5),), digest=ZERO_DIGEST))
        node.clock.advance(PULL_INTERVAL / 2)
        self.assertEqual(link.take(), [])
        node.clock.advance(GAP_CHECK)
        self.assertEqual(len(link.take()), 1)
        node.gossip.stop()

    def test_no_pull_while_answers_still_come(self) -> None:
        """A peer still sending anti-entropy answers is not asked again meanwhile."""
        a = author(1)
        events = chain(a, 6)
        node = Node(1, events[0])
        link = node.links[0]
        node.gossip.start()
        node.clock.advance(10 * GAP_CHECK)
        node.deliver(link, Sync(vector=((a.author, 6),), digest=ZERO_DIGEST))
        for event in events[1:4]:
            node.deliver(link, Events((event.wire,), ttl=0, more=False))
            node.clock.advance(GAP_CHECK / 2)
        self.assertEqual([m for m in link.take() if isinstance(m, Sync)], [])
        node.clock.advance(2 * GAP_CHECK)
        self.assertEqual(len([m for m in link.take() if isinstance(m, Sync)]), 1)
        node.gossip.stop()

    def test_no_pull_when_gossip_caught_up(self) -> None:
        """Events that arrive before the next gap check make no ``sync``."""
        a = author(1)
        node = Node(1, order(a, 1))
        link = node.links[0]
        node.gossip.start()
        node.clock.advance(10 * GAP_CHECK)
        node.deliver(link, Sync(vector=((a.author, 2),), digest=ZERO_DIGEST))
        node.store.add(order(a, 2))
        node.clock.advance(GAP_CHECK)
        self.assertEqual(link.take(), [])
        node.gossip.stop()

    def test_no_pull_right_after_handshake_sync(self) -> None:
        """The peer's handshake ``sync`` does not make us pull again: ours just went out."""
        a = author(1)
        node = Node(1)
        node.deliver(node.links[0], Sync(vector=((a.author, 5),), digest=ZERO_DIGEST))
        node.clock.advance(0)
        self.assertEqual(node.links[0].take(), [])

    def test_no_pull_when_peer_has_nothing_new(self) -> None:
        """A peer that holds less than we do is answered but not asked."""
        a = author(1)
        events = chain(a, 2)
        node = Node(1, *events)
        node.clock.advance(10)
        node.deliver(node.links[0], Sync(vector=((a.author, 1),), digest=ZERO_DIGEST))
        node.clock.advance(0)
        self.assertEqual(node.links[0].take(), [Events((events[1].wire,), ttl=0, more=False)])

    def test_equal_vectors_different_digest_exchanges_chains(self) -> None:
        """
        A peer with our vector but another digest is sent our chain digests;
        a peer whose chain digests differ from ours is sent those chains,
        with the evidence of their equivocations.
        """
        a = author(1)
        one, rival = order(a, 1, price=100), order(a, 1, price=101)
        node = Node(1, one, rival)
        link = node.links[0]
        vector = ((a.author, 1),)
        node.deliver(link, Sync(vector=vector, digest=node.store.digest()))
        self.assertEqual(link.take(), [])
        node.deliver(link, Sync(vector=vector, digest=ZERO_DIGEST))
        node.clock.advance(0)
        [answer] = link.take()
        assert isinstance(answer, Sync)
        self.assertEqual(answer.chains, tuple(node.store.chain_digests().items()))
        node.deliver(
            link, Sync(vector=vector, digest=ZERO_DIGEST, chains=((a.author, ZERO_DIGEST),))
        )
        node.clock.advance(0)
        events = [m for m in link.take() if isinstance(m, Events)]
        self.assertEqual(len(events), 1)
        self.assertEqual(sorted(events[0].events), sorted([one.wire, rival.wire]))
        self.assertEqual((events[0].ttl, events[0].more), (0, False))

    def test_split_equivocation_converges(self) -> None:
        """Two nodes holding rival events for one slot end with the same ledger after syncing."""
        a = author(1)
        one, rival = order(a, 1, price=100), order(a, 1, price=101)
        mesh = Mesh(2)
        mesh.stores[0].add(one)
        mesh.stores[1].add(rival)
        mesh.connect(0, 1)
        mesh.pump()
        for gossip in mesh.gossips:
            gossip.start()
        mesh.clock.advance(TIMING.sync_interval)
        mesh.pump()
        for gossip in mesh.gossips:
            gossip.stop()
        self.assertEqual(mesh.stores[0].digest(), mesh.stores[1].digest())

    def test_sync_with_shared_gap_terminates(self) -> None:
        """Two nodes that both miss the same seq of an author stop syncing after a few rounds."""
        self.patch(gossip_module, "SYNC_CHUNK", 4)
        beyond_gap = chain(author(1), 10, first=2)
        mesh = Mesh(2)
        for store in mesh.stores:
            store.add(*beyond_gap)
        mesh.connect(0, 1)
        mesh.pump(limit=50)


class PeriodicTests(SynchronousTestCase):
    def test_sync_every_interval(self) -> None:
        """Every ``sync_interval`` each peer is sent a ``sync``, and not in between."""
        node = Node(3)
        node.gossip.start()
        node.clock.advance(TIMING.sync_interval - 0.01)
        self.assertEqual(node.take_all(), [[], [], []])
        node.clock.advance(0.01)
        for msgs in node.take_all():
            self.assertEqual([type(m) for m in msgs], [Sync])
        node.clock.advance(TIMING.sync_interval)
        for msgs in node.take_all():
            self.assertEqual([type(m) for m in msgs], [Sync])
        node.gossip.stop()

    def test_lasting_gap_makes_one_peer_asked_in_turn(self) -> None:
        """
        A gap still there at the next check makes a ``sync`` go to one
        peer, another at each check while it lasts; a gap seen at one check
        only (events overtaking each other) makes none.
        """
        a = author(1)
        node = Node(2, order(a, 1), order(a, 3))
        node.gossip.start()
        node.clock.advance(GAP_CHECK)
        self.assertEqual(node.take_all(), [[], []])
        sync = Sync(vector=((a.author, 1),), digest=node.store.digest())
        node.clock.advance(GAP_CHECK)
        first = node.take_all()
        node.clock.advance(GAP_CHECK)
        second = node.take_all()
        self.assertEqual(sorted([first, second]), [[[], [sync]], [[sync], []]])
        node.gossip.stop()

    def test_gap_waits_for_slow_network(self) -> None:
        """
        While pushed events arrive late (a busy network), a gap must last
        twice their usual age before anyone is asked.
        """
        a, b = author(1), author(2)
        node = Node(1, order(a, 1), order(a, 3), timing=replace(TIMING, sync_interval=1e10))
        link = node.links[0]
        node.gossip.start()
        late = chain(b, 300)
        node.clock.advance(late[-1].ts / 1000 + 5)  # they arrive 5 s after they were signed
        for event in late:
            node.deliver(link, Events((event.wire,), ttl=5, more=False))
        link.take()
        node.clock.advance(GAP_CHECK * 5)
        self.assertEqual([m for m in link.take() if isinstance(m, Sync)], [])
        node.clock.advance(GAP_CHECK * 6)
        self.assertEqual(len([m for m in link.take() if isinstance(m, Sync)]), 1)
        node.gossip.stop()

    def test_gap_filled_before_next_check_asks_nobody(self) -> None:
        """A gap filled before the next check makes no ``sync``."""
        a = author(1)
        node = Node(2, order(a, 1), order(a, 3))
        node.gossip.start()
        node.clock.advance(GAP_CHECK)
        node.store.add(order(a, 2))
        node.clock.advance(GAP_CHECK)
        self.assertEqual(node.take_all(), [[], []])
        node.gossip.stop()

    def test_no_gaps_no_gap_sync(self) -> None:
        """Without gaps, nothing is sent before the ``sync_interval``."""
        node = Node(2, *chain(author(1), 3))
        node.gossip.start()
        node.clock.advance(GAP_CHECK * 5)
        self.assertEqual(node.take_all(), [[], []])
        node.gossip.stop()

    def test_events_learned_by_anti_entropy_prompt_the_other_peers(self) -> None:
        """
        Events learned from ttl-0 answers make a ``sync`` go to every other
        peer after ``PROMPT_DELAY`` (one for several answers), not to the
        peer that answered.
        """
        node = Node(3)
        sender = node.links[0]
        first = order(author(1), 1)
        node.clock.advance(first.ts / 1000 + REPAIR_AGE + 1)
        node.deliver(sender, Events((first.wire,), ttl=0, more=False))
        node.clock.advance(PROMPT_DELAY / 2)
        node.deliver(sender, Events((order(author(2), 1).wire,), ttl=0, more=False))
        self.assertEqual(node.take_all(), [[], [], []])
        node.clock.advance(PROMPT_DELAY / 2)
        sent = node.take_all()
        self.assertEqual(sent[0], [])
        for msgs in sent[1:]:
            [sync] = msgs
            assert isinstance(sync, Sync)
            self.assertEqual(len(sync.vector), 2)
        node.clock.advance(PROMPT_DELAY * 10)
        self.assertEqual(node.take_all(), [[], [], []])

    def test_recent_events_do_not_prompt(self) -> None:
        """
        Events younger than ``REPAIR_AGE`` in an answer prompt nobody: they
        are most likely on their way to the other peers by gossip.
        """
        node = Node(3)
        event = order(author(1), 1)
        node.clock.advance(event.ts / 1000 + REPAIR_AGE / 2)
        node.deliver(node.links[0], Events((event.wire,), ttl=0, more=False))
        node.clock.advance(PROMPT_DELAY * 10)
        self.assertEqual(node.take_all(), [[], [], []])
        self.assertTrue(node.store.has(event.id))

    def test_duplicates_do_not_prompt(self) -> None:
        """Answers holding nothing new prompt no ``sync``."""
        event = order(author(1), 1)
        node = Node(2, event)
        node.deliver(node.links[0], Events((event.wire,), ttl=0, more=False))
        node.clock.advance(PROMPT_DELAY)
        self.assertEqual(node.take_all(), [[], []])


class LifecycleTests(SynchronousTestCase):
    def test_link_closed_removes_peer(self) -> None:
        """A closed link is sent nothing more, not even what was queued for it."""
        node = Node(2, timing=replace(TIMING, fanout=10))
        kept, gone = node.links
        first, second = order(author(1), 1), order(author(2), 1)
        node.store.add(first, second)
        node.gossip.publish([first])
        node.gossip.link_closed(as_link(gone))
        node.clock.advance(0)
        node.gossip.publish([second])
        node.gossip.start()
        node.clock.advance(TIMING.sync_interval)
        self.assertEqual(gone.take(), [])
        self.assertEqual(full(kept.take()), [first.id, second.id])
        self.assertNotIn(as_link(gone), node.gossip.peers)
        node.gossip.stop()

    def test_messages_of_unknown_links_ignored(self) -> None:
        """Gossip from a link that is not (or no longer) ready is accepted and ignored."""
        node = Node(1)
        stranger = FakeLink("stranger")
        event = order(author(1), 1)
        self.assertTrue(
            node.gossip.link_message(as_link(stranger), Events((event.wire,), 5, False))
        )
        self.assertTrue(node.gossip.link_message(as_link(stranger), Sync((), ZERO_DIGEST)))
        node.clock.advance(0)
        self.assertEqual((node.store.received, stranger.sent), ([], []))

    def test_stop_cancels_every_timer(self) -> None:
        """``stop`` leaves no delayed call: loops, a pending flush and a pending prompt."""
        event = order(author(1), 1)
        node = Node(2, event)
        answered = order(author(2), 1)
        node.clock.advance(answered.ts / 1000 + REPAIR_AGE + 1)
        node.gossip.start()
        node.gossip.publish([event])
        node.deliver(node.links[0], Events((answered.wire,), ttl=0, more=False))
        self.assertGreaterEqual(len(node.clock.getDelayedCalls()), 5)
        node.gossip.stop()
        self.assertEqual(node.clock.getDelayedCalls(), [])
        self.assertEqual(node.gossip.peers, {})


class EndToEndTests(SynchronousTestCase):
    def spread(self, mesh: Mesh, count: int) -> list[Event]:
        """
        Publish C{count} events, one author per node, in rounds of one event
        per node with the network pumped between rounds.
        """
        size = len(mesh.gossips)
        authors = [author(10 + n) for n in range(size)]
        events = []
        for start in range(0, count, size):
            for index in range(start, min(start + size, count)):
                node = index % size
                event = order(authors[node], index // size + 1, index + 1)
                events.append(event)
                mesh.publish(node, event)
            mesh.pump()
        return events

    def assertConverged(self, mesh: Mesh, events: list[Event]) -> None:
        for store in mesh.stores:
            self.assertEqual(store.ledger.log(), sorted(events, key=lambda e: e.key))
            self.assertEqual(len(store.ledger), len(events))
        self.assertEqual(len({store.ledger.state_hash() for store in mesh.stores}), 1)
        self.assertGreater(mesh.stores[0].ledger.trade_count, 0)

    def copies_per_node(self, mesh: Mesh, events: list[Event]) -> list[int]:
        """
        How many full copies of each event each node that did not publish it
        was sent (events are published round-robin: see :meth:`spread`).
        """
        size = len(mesh.gossips)
        counts = [
            mesh.copies[n][event.id]
            for event in events
            for n in range(size)
            if n != (event.key.lamport - 1) % size
        ]  # fmt: skip
        self.assertGreaterEqual(min(counts), 1)
        return counts

    def test_ring_of_six_converges(self) -> None:
        """
        50 events published on the nodes of a ring of 6 reach every node by
        push and announce alone (no timer runs) and every ledger ends in the
        same state.  Each node is sent at most one full copy per link (2) of
        an event, 1.4 on average: only the two nodes where the pushed and the
        fetched waves meet get two.
        """
        mesh = Mesh(6)
        mesh.ring()
        mesh.pump()
        events = self.spread(mesh, 50)
        self.assertConverged(mesh, events)
        counts = self.copies_per_node(mesh, events)
        self.assertLessEqual(max(counts), 2)
        self.assertLess(sum(counts) / len(counts), 1.5)
        self.assertEqual(sum(g.stats["events_invalid"] for g in mesh.gossips), 0)
        self.assertEqual(sum(g.stats["sync_events_sent"] for g in mesh.gossips), 0)

    def full_mesh(self, timing: GossipTiming) -> tuple[Mesh, list[Event]]:
        """A full mesh of 6 (5 links a node) after 50 events were published."""
        mesh = Mesh(6, timing)
        for a in range(6):
            for b in range(a + 1, 6):
                mesh.connect(a, b)
        mesh.pump()
        events = self.spread(mesh, 50)
        self.assertConverged(mesh, events)
        return mesh, events

    def test_full_mesh_pushes_pruned_to_one_copy(self) -> None:
        """
        In a full mesh of 6 with the default timing, an author pushes its
        event to all 5 peers, which then push it to one another (hop 2):
        duplicates, so they prune those links.  Once pruned, each node gets
        exactly one copy: the last 10 of 50 events, from every author in
        turn, reach each node once, and over all 50 it is under 1.5.  With
        fanout 1 and pushes at every hop (``TIMING``), about 2 copies.
        """
        defaults = GossipTiming(flush_interval=0.0, fetch_delay=0.0)
        mesh, events = self.full_mesh(defaults)
        counts = self.copies_per_node(mesh, events)
        self.assertLess(sum(counts) / len(counts), 1.5)
        self.assertEqual(counts[-50:], [1] * 50)
        self.assertGreater(sum(g.stats["prunes_sent"] for g in mesh.gossips), 0)
        random_walk, walk_events = self.full_mesh(TIMING)
        walk = self.copies_per_node(random_walk, walk_events)
        self.assertLessEqual(sum(walk) / len(walk), 2.0)
        self.assertGreater(sum(walk[-50:]), 50)

    def test_new_node_catches_up_by_sync_alone(self) -> None:
        """
        A node joining a ring that holds 300 events catches up through
        anti-entropy alone: chunks of ``SYNC_CHUNK`` with ``more`` set, each
        answered with a new ``sync``; nothing is pushed, and the existing
        nodes do not learn anything twice.
        """
        self.patch(gossip_module, "SYNC_CHUNK", 25)
        authors = [author(20 + n) for n in range(10)]
        events = [order(authors[i % 10], i // 10 + 1, i + 1) for i in range(300)]
        mesh = Mesh(4)
        for store in mesh.stores[:3]:
            store.add(*events)
        for n in range(3):
            mesh.connect(n, (n + 1) % 3)
        mesh.pump()
        self.assertEqual({type(m) for _, m in mesh.delivered}, {Sync})
        mesh.delivered.clear()
        mesh.connect(3, 0)
        mesh.pump()
        mesh.clock.advance(PROMPT_DELAY)
        mesh.pump()
        joined = mesh.stores[3].ledger
        self.assertEqual(len(joined), 300)
        self.assertEqual(joined.state_hash(), mesh.stores[0].ledger.state_hash())
        answers = [m for node, m in mesh.delivered if node == 3 and isinstance(m, Events)]
        self.assertEqual([len(m.events) for m in answers], [25] * 12)
        # bursts of SYNC_BURST messages; the last of each says more, but not the final one
        bursts = len(answers) // gossip_module.SYNC_BURST
        self.assertEqual(
            [m.more for m in answers],
            ([False] * (gossip_module.SYNC_BURST - 1) + [True]) * (bursts - 1)
            + [False] * gossip_module.SYNC_BURST,
        )
        self.assertEqual({m.ttl for m in answers}, {0})
        self.assertEqual(mesh.gossips[3].stats["events_duplicate"], 0)
        self.assertEqual(
            sum(g.stats["events_pushed"] + g.stats["inv_sent"] for g in mesh.gossips), 0
        )
        self.assertEqual(sum(g.stats["events_new"] for g in mesh.gossips[:3]), 0)


def slow_checks(node: Node) -> list[Deferred[list[bool]]]:
    """
    Give C{node} a verifier whose checks end when the test fires them: the
    returned list gets one Deferred per message checked, in order.
    """
    pending: list[Deferred[list[bool]]] = []

    def verifier(events: list[Event]) -> Deferred[list[bool]]:
        pending.append(Deferred())
        return pending[-1]

    node.gossip = Gossip(node.store, node.clock, TIMING, random.Random(1), verifier)
    return pending


class InOrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = Node(1)
        self.pending = slow_checks(self.node)
        self.link = self.node.connect("source")
        self.events = chain(author(1), 3)

    def send(self, event: Event) -> None:
        self.node.deliver(self.link, Events((event.wire,), ttl=0, more=False))

    def test_messages_of_a_peer_handled_in_order(self) -> None:
        """
        When the signatures of a later message are checked first, its events
        still wait for the earlier message's: a peer's messages are handled
        in the order they came.
        """
        first, second, third = self.events
        self.send(first)
        self.send(second)
        self.pending[1].callback([True])
        self.assertEqual(self.node.store.received, [])
        self.send(third)
        self.pending[2].callback([True])
        self.assertEqual(self.node.store.received, [])
        self.pending[0].callback([True])
        self.assertEqual(self.node.store.received, [[first], [second], [third]])

    def test_message_after_a_paused_one_waits(self) -> None:
        """A message arriving while an earlier one waits for its checks waits too."""
        first, second, third = self.events
        self.send(first)
        self.send(second)
        self.pending[0].callback([True])
        self.assertEqual(self.node.store.received, [[first]])
        self.send(third)
        self.pending[2].callback([True])
        self.assertEqual(self.node.store.received, [[first]])
        self.pending[1].callback([True])
        self.assertEqual(self.node.store.received, [[first], [second], [third]])

    def test_failed_check_lets_the_events_come_again(self) -> None:
        """If checking a message fails, its events are not shut out as duplicates."""
        first = self.events[0]
        self.send(first)
        self.pending[0].errback(RuntimeError("thread pool gone"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.send(first)
        self.pending[1].callback([True])
        self.assertEqual(self.node.store.received, [[first]])


class ThreadedVerifierTests(TestCase):
    """Signatures checked in the reactor's thread pool, split over threads."""

    async def test_large_batch_in_threads_small_batch_inline(self) -> None:
        """
        A batch at the threshold is checked in threads with one result per
        event in order (a forged one is ``False``); a smaller one at once.
        """
        from twisted.internet import reactor

        events = chain(author(1), 70)
        forged = parse_event(events[5].text, events[6].sig, TEST_NETWORK, TEST_PAIR)
        batch = [*events[:5], forged, *events[6:]]
        verifier = ThreadedVerifier(reactor, threads=2, threshold=64)
        small = verifier(batch[:10])
        self.assertTrue(small.called)  # inline: no thread hop
        self.assertEqual(self.successResultOf(small), [True] * 5 + [False] + [True] * 4)
        results = await verifier(batch)
        self.assertEqual(results, [True] * 5 + [False] + [True] * 64)

    def test_batch_signed_inline(self) -> None:
        """
        Batch-signed events are checked at once however many: a few hashes
        each, not worth a thread; a forged one is still ``False``.
        """
        from twisted.internet import reactor

        signer = author(1)
        drafts = [signer.draft_order(n, n, 0, "buy", "limit", "1", "1") for n in range(1, 101)]
        signer.sign(drafts)
        forged = parse_event(drafts[5].text, drafts[6].sig, TEST_NETWORK, TEST_PAIR)
        batch = [*drafts[:5], forged, *drafts[6:]]
        checked = ThreadedVerifier(reactor, threads=2, threshold=64)(batch)
        self.assertTrue(checked.called)
        self.assertEqual(self.successResultOf(checked), [True] * 5 + [False] + [True] * 94)
