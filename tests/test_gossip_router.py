"""Tests for :class:`bitfitech.gossip.GossipRouter`, and the market Gossip names in what it sends.

The router stands between the hub and one :class:`~bitfitech.gossip.Gossip`
per market: it hands a link to the Gossip of each market both ends carry,
and each gossip message to the Gossip of its market (``docs/protocol.rst``,
"Markets").  Real Gossips over fake links (:class:`FakeLink` with the
peer's markets) on a :class:`~twisted.internet.task.Clock`.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from bitfitech.gossip import GOSSIP_MESSAGES, Gossip, GossipRouter
from bitfitech.interfaces import IGossip, IPeerLink
from bitfitech.market.events import Author
from bitfitech.testing import TEST_NETWORK, TEST_PAIR
from bitfitech.wire.messages import (
    Events,
    GetAddr,
    GetData,
    Inv,
    Message,
    Ping,
    Prune,
    Stamps,
    Sync,
    Unknown,
)

from .market.witnessing import run
from .test_gossip import TIMING, FakeLink, FakeStore, Mesh, as_link, chain, order, wire_roundtrip
from .test_gossip_stamps import WITNESSES, StampStore

BTC, ETH, LTC = TEST_PAIR, "ETH/USD", "LTC/USD"
ID = "ab" * 32


def markets_of(messages: list[Message]) -> set[str]:
    """The markets C{messages} name ("" for none); each must be a gossip message."""
    assert all(isinstance(m, GOSSIP_MESSAGES) for m in messages)
    return {m.market for m in messages if isinstance(m, GOSSIP_MESSAGES)}


class EthStore(FakeStore):
    """A store of the ETH/USD market of the test network."""

    pair = ETH


def eth_author(n: int) -> Author:
    return Author(bytes([n]) * 32, TEST_NETWORK, ETH)


class RecordingGossip(Gossip):
    """A real Gossip that also records the links it was told of, and closed."""

    def __init__(self, store: FakeStore, clock: Clock) -> None:
        super().__init__(store, clock, TIMING, random.Random(1))
        self.ready: list[IPeerLink] = []
        self.closed: list[IPeerLink] = []
        self.messages: list[Message] = []

    def link_ready(self, link: IPeerLink) -> None:
        self.ready.append(link)
        super().link_ready(link)

    def link_closed(self, link: IPeerLink) -> None:
        self.closed.append(link)
        super().link_closed(link)

    def link_message(self, link: IPeerLink, message: Message) -> bool:
        self.messages.append(message)
        return super().link_message(link, message)


class PeerLink(FakeLink):
    """
    A fake link to a peer carrying C{markets} (its pair first), seen from
    a node carrying C{ours}.
    """

    def __init__(
        self, name: str, markets: tuple[str, ...], *, names_markets: bool = True,
        ours: tuple[str, ...] = (BTC, ETH),
    ) -> None:  # fmt: skip
        super().__init__(name, markets=markets, names_markets=names_markets)
        self.shared_markets = tuple(market for market in ours if market in markets)


class Router:
    """A router over the real Gossips of BTC/USD and ETH/USD, on one clock."""

    def __init__(self, markets: tuple[str, ...] = (BTC, ETH)) -> None:
        self.clock = Clock()
        stores = {BTC: FakeStore(), ETH: EthStore()}
        self.stores = {market: stores[market] for market in markets}
        self.gossips = {m: RecordingGossip(store, self.clock) for m, store in self.stores.items()}
        self.router = GossipRouter(self.gossips)

    def link(self, name: str, markets: tuple[str, ...], **options: Any) -> PeerLink:
        link = PeerLink(name, markets, ours=tuple(self.gossips), **options)
        self.router.link_ready(as_link(link))
        link.take()
        return link

    def deliver(self, link: FakeLink, *messages: Message) -> None:
        """C{link} received C{messages} (each through the codec): all handled as gossip."""
        for message in messages:
            handled = self.router.link_message(as_link(link), wire_roundtrip(message))
            assert handled, f"{message!r} not handled as gossip"


class InterfaceTests(SynchronousTestCase):
    def test_provides_igossip(self) -> None:
        self.assertTrue(verifyObject(IGossip, Router().router))

    def test_needs_a_market(self) -> None:
        with self.assertRaises(ValueError):
            GossipRouter({})

    def test_other_messages_not_handled(self) -> None:
        """Not a gossip message: ``False``, as from a Gossip, so the hub handles or ignores it."""
        r = Router()
        link = r.link("peer", (BTC,))
        for message in (Ping(nonce=1), GetAddr(), Unknown(command="future", payload=b"{}")):
            self.assertFalse(r.router.link_message(as_link(link), message))
        self.assertEqual(link.violations, [])

    def test_start_and_stop_every_gossip(self) -> None:
        r = Router()
        r.router.start()
        self.assertEqual([len(g._loops) for g in r.gossips.values()], [5, 5])  # noqa: SLF001
        link = r.link("peer", (BTC, ETH))
        r.router.stop()
        self.assertEqual([len(g._loops) for g in r.gossips.values()], [0, 0])  # noqa: SLF001
        self.assertEqual([dict(g.peers) for g in r.gossips.values()], [{}, {}])
        r.router.link_closed(as_link(link))  # forgotten at stop: nothing to tell
        self.assertEqual([g.closed for g in r.gossips.values()], [[], []])


class WitnessCoverageTests(SynchronousTestCase):
    """A witness must carry every market: one that lacks one of ours is noted, and logged once."""

    def setUp(self) -> None:
        self.r = Router()
        for gossip in self.r.gossips.values():
            gossip.witnesses = frozenset({"w1", "w2"})
        self.observed = EventLoggingObserver()
        globalLogPublisher.addObserver(self.observed)
        self.addCleanup(globalLogPublisher.removeObserver, self.observed)

    @property
    def errors(self) -> list[Any]:
        return [e for e in self.observed if e.get("log_level") == LogLevel.error]

    def missing(self) -> dict[str, set[str]]:
        return {market: set(g.witnesses_missing) for market, g in self.r.gossips.items()}

    def test_witness_without_a_market(self) -> None:
        link = self.r.link("w1", (BTC,))
        self.assertEqual(self.missing(), {BTC: set(), ETH: {"w1"}})
        [error] = self.errors
        self.assertEqual((error["node_id"], error["market"]), ("w1", ETH))
        # Again, or after a reconnection: noted still, not logged again.
        self.r.router.link_closed(as_link(link))
        self.r.link("w1", (BTC,))
        self.assertEqual((self.missing()[ETH], len(self.errors)), ({"w1"}, 1))
        # Back with both markets: no longer missing.
        self.r.link("w1", (ETH, BTC))
        self.assertEqual(self.missing(), {BTC: set(), ETH: set()})

    def test_peers_and_full_witnesses_are_not_noted(self) -> None:
        self.r.link("w2", (BTC, ETH))
        self.r.link("peer", (BTC,))
        self.assertEqual((self.missing(), self.errors), ({BTC: set(), ETH: set()}, []))


class LinkTests(SynchronousTestCase):
    def test_link_handed_to_each_shared_market(self) -> None:
        r = Router()
        both = r.link("both", (ETH, BTC, LTC))
        btc = r.link("btc", (BTC,))
        self.assertEqual(r.gossips[BTC].ready, [both, btc])
        self.assertEqual(r.gossips[ETH].ready, [both])

    def test_gossip_never_told_of_a_link_without_its_market(self) -> None:
        """
        A Gossip never holds a link whose peer does not carry its market:
        not at ready, not at close, and nothing it publishes goes there.
        """
        r = Router()
        btc = r.link("btc", (BTC,))
        self.assertEqual(r.gossips[ETH].ready, [])
        self.assertNotIn(btc, r.gossips[ETH].peers)
        event = order(eth_author(1), 1)
        r.stores[ETH].add(event)
        r.gossips[ETH].publish([event])
        r.clock.advance(0)
        self.assertEqual(btc.take(), [])
        r.router.link_closed(as_link(btc))
        self.assertEqual((r.gossips[BTC].closed, r.gossips[ETH].closed), ([btc], []))

    def test_link_sharing_no_market_reaches_no_gossip(self) -> None:
        """A peer of other markets only: kept for address exchange, no Gossip knows it."""
        r = Router()
        ltc = r.link("ltc", (LTC,))
        self.assertEqual([g.ready for g in r.gossips.values()], [[], []])
        self.assertEqual(ltc.sent, [])  # not even a sync
        r.router.link_closed(as_link(ltc))
        self.assertEqual([g.closed for g in r.gossips.values()], [[], []])

    def test_closed_told_to_each_gossip_that_knew_it(self) -> None:
        r = Router()
        both = r.link("both", (BTC, ETH))
        r.router.link_closed(as_link(both))
        self.assertEqual([g.closed for g in r.gossips.values()], [[both], [both]])
        self.assertEqual([dict(g.peers) for g in r.gossips.values()], [{}, {}])
        r.router.link_closed(as_link(both))  # once only
        self.assertEqual([g.closed for g in r.gossips.values()], [[both], [both]])


class RoutingTests(SynchronousTestCase):
    def test_routes_by_market(self) -> None:
        """Each message goes to the Gossip of the market it names, and only there."""
        r = Router()
        link = r.link("both", (BTC, ETH))
        event = order(eth_author(1), 1)
        r.deliver(link, Inv((ID,), ttl=3, market=ETH), Events((event.wire,), 3, False, market=ETH))
        self.assertEqual([type(m) for m in r.gossips[ETH].messages], [Inv, Events])
        self.assertEqual(r.gossips[BTC].messages, [])
        self.assertEqual(r.stores[ETH].received, [[event]])
        self.assertEqual(r.router.messages_in, {BTC: 0, ETH: 2})
        self.assertEqual((link.violations, link.owner.misbehaved), ([], []))

    def test_without_market_about_the_peers_pair(self) -> None:
        """A message naming no market is about the sender's pair (its first market)."""
        r = Router()
        eth_first = r.link("eth-first", (ETH, BTC))
        r.deliver(eth_first, Inv((ID,), ttl=3))
        self.assertEqual(len(r.gossips[ETH].messages), 1)
        btc_first = r.link("btc-first", (BTC, ETH))
        r.deliver(btc_first, GetData((ID,)))
        self.assertEqual(len(r.gossips[BTC].messages), 1)
        self.assertEqual(r.router.messages_in, {BTC: 1, ETH: 1})

    def test_version_3_peer_of_another_pair_ignored(self) -> None:
        """
        A version 3 peer of a pair we do not carry shares no market: its
        gossip (about its pair) is ignored and counted, never a violation.
        Its ``market`` keys mean nothing in version 3: not trusted either.
        """
        r = Router(markets=(BTC,))
        old = r.link("v3", (ETH,), names_markets=False)
        event = order(eth_author(1), 1)
        r.deliver(old, Sync((), "0" * 64), Events((event.wire,), 3, False))
        r.deliver(old, Inv((ID,), ttl=3, market=BTC))
        self.assertEqual(r.router.ignored, 3)
        self.assertEqual(r.gossips[BTC].messages, [])
        self.assertEqual((old.violations, old.owner.misbehaved, old.closed), ([], [], False))
        self.assertEqual(r.router.summary()["ignored"], 3)

    def test_version_3_peer_of_our_pair_routed(self) -> None:
        r = Router()
        old = r.link("v3", (BTC,), names_markets=False)
        r.deliver(old, Inv((ID,), ttl=3))
        self.assertEqual(len(r.gossips[BTC].messages), 1)
        self.assertEqual(r.router.ignored, 0)

    def test_unannounced_market_is_a_violation(self) -> None:
        """Gossip about a market the peer did not announce breaks the protocol."""
        r = Router()
        link = r.link("btc", (BTC,))
        r.deliver(link, Inv((ID,), ttl=3, market=ETH))
        self.assertEqual(len(link.violations), 1)
        self.assertIn("ETH/USD", link.violations[0])
        self.assertIn("did not announce", link.violations[0])
        self.assertTrue(link.closed)
        self.assertEqual([g.messages for g in r.gossips.values()], [[], []])
        self.assertEqual(r.router.messages_in, {BTC: 0, ETH: 0})

    def test_announced_market_we_do_not_carry_ignored(self) -> None:
        """Gossip about a market the peer announced and we do not carry: ignored, counted."""
        r = Router()
        link = r.link("btc-ltc", (BTC, LTC))
        r.deliver(link, Inv((ID,), ttl=3, market=LTC), Prune(market=LTC))
        self.assertEqual(r.router.ignored, 2)
        self.assertEqual((link.violations, link.closed), ([], False))
        self.assertEqual([g.messages for g in r.gossips.values()], [[], []])

    def test_every_gossip_message_routed(self) -> None:
        r = Router()
        link = r.link("both", (BTC, ETH))
        messages: list[Message] = [
            Inv((ID,), ttl=3, market=ETH),
            GetData((ID,), market=ETH),
            Events((), 0, False, market=ETH),
            Sync((), "0" * 64, market=ETH),
            Prune(market=ETH),
            Stamps((), False, market=ETH),
        ]
        self.assertEqual({type(m) for m in messages}, set(GOSSIP_MESSAGES))
        for message in messages:
            self.assertTrue(r.router.link_message(as_link(link), message))
        self.assertEqual(r.gossips[ETH].messages, messages)
        self.assertEqual(r.router.messages_in[ETH], len(messages))

    def test_summary_and_progress(self) -> None:
        """``/status`` keeps the first market's gossip counters, plus each market's messages."""
        r = Router()
        link = r.link("both", (BTC, ETH))
        r.deliver(link, Inv((ID,), ttl=3, market=ETH), Inv((ID,), ttl=3, market=LTC))
        summary = r.router.summary()
        first = r.gossips[BTC].summary()
        self.assertEqual({k: summary[k] for k in first}, first)
        self.assertEqual(summary["markets"], {BTC: {"messages_in": 0}, ETH: {"messages_in": 1}})
        self.assertEqual(summary["ignored"], 0)  # LTC was not announced: a violation
        self.assertEqual(r.router.progress(), r.gossips[BTC].progress())


class MarketNamedTests(SynchronousTestCase):
    """A Gossip names its market in every message to a peer that reads it, and in none else."""

    def mesh(self, names_markets: bool) -> Mesh:
        mesh = Mesh(4)
        original = FakeLink.__init__

        def init(link: FakeLink, name: str, **options: Any) -> None:
            original(link, name, names_markets=names_markets, **options)

        self.patch(FakeLink, "__init__", init)
        mesh.ring()
        mesh.connect(0, 2)
        return mesh

    def traffic(self, names_markets: bool) -> list[Message]:
        """Everything a busy mesh sends: syncs, pushes, announcements, requests, prunes."""
        mesh = self.mesh(names_markets)
        mesh.pump()
        for n in range(4):
            mesh.publish(n, *chain(Author(bytes([n + 1]) * 32, TEST_NETWORK, TEST_PAIR), 3))
        mesh.pump()
        # A late node gets an anti-entropy answer (events with ttl 0).
        mesh.stores.append(FakeStore())
        mesh.gossips.append(Gossip(mesh.stores[-1], mesh.clock, TIMING, random.Random(9)))
        mesh.copies.append(type(mesh.copies[0])())
        mesh.connect(3, 4)
        mesh.pump()
        return [message for _, message in mesh.delivered]

    def test_named_to_version_4_peers(self) -> None:
        sent = self.traffic(names_markets=True)
        self.assertEqual({type(m) for m in sent}, {Sync, Events, Inv, GetData, Prune})
        self.assertEqual(markets_of(sent), {TEST_PAIR})
        self.assertIn(0, {m.ttl for m in sent if isinstance(m, Events)})

    def test_not_named_to_version_3_peers(self) -> None:
        sent = self.traffic(names_markets=False)
        self.assertEqual({type(m) for m in sent}, {Sync, Events, Inv, GetData, Prune})
        self.assertEqual(markets_of(sent), {""})

    def test_stamps_named(self) -> None:
        clock = Clock()
        gossip = Gossip(StampStore(), clock, TIMING, random.Random(1))
        new, old = FakeLink("v4", names_markets=True), FakeLink("v3")
        for link in (new, old):
            gossip.link_ready(as_link(link))
        stamps = run(3, {}, until=500, witnesses=WITNESSES).all()[:2]
        gossip.publish_stamps(stamps)
        clock.advance(0)
        [to_new] = [m for m in new.take() if isinstance(m, Stamps)]
        [to_old] = [m for m in old.take() if isinstance(m, Stamps)]
        self.assertEqual((to_new.market, to_old.market), (StampStore.pair, ""))
