"""Tests for bitfitech.peer.service: the peer layer's stop, bounded whatever the links do."""

from __future__ import annotations

import random
from typing import cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.interfaces import IGossip
from bitfitech.peer.addrbook import AddressBook
from bitfitech.peer.bans import BanList
from bitfitech.peer.dialer import MIN_LINKS_PER_MARKET, Dialer
from bitfitech.peer.hub import PeerHub
from bitfitech.peer.protocol import PeerProtocol
from bitfitech.peer.service import CLOSE_GRACE, PeerService
from bitfitech.peer.tls import LinkSecurity
from bitfitech.storage import Storage
from bitfitech.testing import local_node, loopback_config


class LinkTransport(StringTransport):
    """A fake connection of one link, to a peer at C{peer}."""

    def __init__(self, peer: str) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 3000))
        self.peer = peer
        self.link: PeerProtocol | None = None

    def lost(self) -> None:
        assert self.link is not None
        self.link.connectionLost()


class StuckTransport(LinkTransport):
    """
    A connection whose close never completes (a peer that reads nothing,
    or a TLS handshake that never ends): only an abort ends it.
    """

    def __init__(self, peer: str) -> None:
        super().__init__(peer)
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.lost()


class ClosingTransport(LinkTransport):
    """A connection that closes as soon as it is asked to."""

    def loseConnection(self) -> None:
        super().loseConnection()
        self.lost()


class _ServiceTestCase(SynchronousTestCase):
    """A peer service on a Clock, not started, with a hub that has."""

    def setUp(self) -> None:
        self.clock = Clock()
        config = loopback_config(self.mktemp())
        hub = PeerHub(AddressBook(), self.clock, max_peers=10, max_inbound=10,
                      rng=random.Random(1))  # fmt: skip
        hub.start(local_node(1))
        self.hub = hub
        dialer = Dialer(hub, hub.addrbook, _never_connects, self.clock, target=0)
        self.service = PeerService(
            config, Storage(config.data_dir), self.clock, hub=hub, addrbook=hub.addrbook,
            bans=BanList(), security=LinkSecurity(plain=True), dialer=dialer,
            gossip=cast(IGossip, _Gossip()), witness_digest="",
        )  # fmt: skip


class StopTests(_ServiceTestCase):
    """:meth:`PeerService.stopService` closes links, aborting those still open after a grace."""

    def link(self, transport: LinkTransport) -> PeerProtocol:
        link = self.hub.build_link("inbound", host=transport.peer)
        assert link is not None
        transport.link = link
        link.makeConnection(transport)
        return link

    def test_links_that_do_not_close_are_aborted_after_the_grace(self) -> None:
        stuck = StuckTransport("127.0.0.2")
        closing = ClosingTransport("127.0.0.3")
        self.link(stuck)
        self.link(closing)
        done = self.service.stopService()
        self.assertNoResult(done)
        self.assertTrue(stuck.disconnecting, "asked to close first")
        self.assertFalse(stuck.aborted)
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(stuck.aborted)
        self.successResultOf(done)
        self.assertEqual(self.service.open_links, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_abort_timer_left_when_every_link_closes(self) -> None:
        closing = ClosingTransport("127.0.0.3")
        self.link(closing)
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_link_closing_within_the_grace_cancels_the_abort(self) -> None:
        stuck = StuckTransport("127.0.0.2")
        link = self.link(stuck)
        done = self.service.stopService()
        self.clock.advance(CLOSE_GRACE / 2)
        link.connectionLost()
        self.successResultOf(done)
        self.assertFalse(stuck.aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FoundTests(_ServiceTestCase):
    """What discovery finds goes into the address book, with the markets it says."""

    def test_found_address_kept_with_its_markets(self) -> None:
        self.service.running = True  # as started: what it learns reaches the book
        found = self.service.found_by("dht")
        found("10.0.0.7", 4000, None, ("ETH/USD", "BTC/USD"))
        found("10.0.0.8", 4000, None, ())
        entry = self.hub.addrbook.get("10.0.0.7", 4000)
        assert entry is not None
        self.assertEqual((entry.source, entry.markets), ("dht", frozenset({"ETH/USD", "BTC/USD"})))
        other = self.hub.addrbook.get("10.0.0.8", 4000)
        assert other is not None
        self.assertEqual(other.markets, frozenset())


def _never_connects(address: object) -> Deferred[PeerProtocol]:
    return Deferred()


class _Gossip:
    """The gossip layer, as far as stopping the peer layer asks it anything."""

    def stop(self) -> None:
        pass


class WantsPeersTests(_ServiceTestCase):
    """:meth:`PeerService.wants_peers`: short of the outbound target, or of one market's links."""

    def set_links(self, target_count: int, by_market: dict[str, int]) -> None:
        self.patch(self.hub, "target_count", lambda *, ready=False: target_count)
        self.patch(self.hub, "links_by_market", lambda: dict(by_market))

    def test_node_and_markets(self) -> None:
        outbound = self.service.config.outbound
        self.set_links(outbound - 1, {"BTC/USD": 5, "ETH/USD": 5})
        self.assertFalse(self.service.wants_peers(), "not running")
        self.service.running = True
        self.assertTrue(self.service.wants_peers())
        self.assertTrue(self.service.wants_peers("ETH/USD"))
        # At the target: only a market short of MIN_LINKS_PER_MARKET wants more.
        self.set_links(outbound, {"BTC/USD": outbound, "ETH/USD": MIN_LINKS_PER_MARKET - 1})
        self.assertFalse(self.service.wants_peers())
        self.assertFalse(self.service.wants_peers("BTC/USD"))
        self.assertTrue(self.service.wants_peers("ETH/USD"))
        self.set_links(outbound, {"BTC/USD": outbound, "ETH/USD": MIN_LINKS_PER_MARKET})
        self.assertFalse(self.service.wants_peers("ETH/USD"))
