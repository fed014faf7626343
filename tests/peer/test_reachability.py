"""Tests for :mod:`bitfitech.peer.reachability`: the dial-back check, on a fake clock and links."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.peer.protocol import PeerProtocol
from bitfitech.peer.reachability import (
    ANSWER_INTERVAL,
    ANSWER_WAIT,
    MAX_PROBES,
    RECHECK_INTERVAL,
    REFUSED_BUSY,
    REFUSED_TOO_SOON,
    RETRY_INTERVAL,
    Reachability,
)
from bitfitech.wire.messages import (
    DIALBACK_SERVICE,
    Addr,
    DialBack,
    DialedBack,
    Message,
    NetAddress,
    Version,
)

OWN = "0" * 40
VERSION = Version(
    protocol_version=4, network="test", pair="BTC/USD", node_id="a" * 40, port=3000,
    user_agent="bitfi", services=(DIALBACK_SERVICE,), nonce=1, time=0, witnesses="c" * 64,
)  # fmt: skip


class Link:
    """What the reachability check uses of a ready link."""

    def __init__(
        self, name: str, direction: str = "outbound", *, seen_as: str = "203.0.113.5",
        services: tuple[str, ...] = (DIALBACK_SERVICE,), host: str = "198.51.100.1",
    ) -> None:  # fmt: skip
        self.node_id = name * 40 if len(name) == 1 else name
        self.direction = direction
        self.remote = replace(VERSION, node_id=self.node_id, seen_as=seen_as, services=services)
        self.peer_host = host
        self.closed = False
        self.sent: list[Message] = []

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def describe(self) -> str:
        return self.node_id[:12]

    def take(self, kind: type[Any]) -> list[Any]:
        taken = [m for m in self.sent if isinstance(m, kind)]
        self.sent = [m for m in self.sent if not isinstance(m, kind)]
        return taken


def link(name: str, **options: Any) -> PeerProtocol:
    return cast(PeerProtocol, Link(name, **options))


def fake(peer: PeerProtocol) -> Link:
    return cast(Link, peer)


class Probes:
    """A probe that records its calls and answers when told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str, Deferred[str | None]]] = []

    def __call__(self, host: str, port: int, node_id: str) -> Deferred[str | None]:
        d: Deferred[str | None] = Deferred()
        self.calls.append((host, port, node_id, d))
        return d


class AskingTests(SynchronousTestCase):
    """This node asks its peers to dial it back, and says what they found."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.mapping: tuple[str, int] | None = None
        self.reach = Reachability(
            self.clock, Probes(), listen_port=lambda: 3000, mapped=lambda: self.mapping,
            rng=random.Random(1),
        )  # fmt: skip
        self.reach.start(OWN)
        self.addCleanup(self.reach.stop)

    def request(self, peer: PeerProtocol) -> DialBack:
        [request] = fake(peer).take(DialBack)
        return cast(DialBack, request)

    def test_asks_an_outbound_peer_offering_the_service(self) -> None:
        inbound = link("b", direction="inbound")
        plain = link("c", services=())
        self.reach.link_ready(inbound)
        self.reach.link_ready(plain)
        self.assertEqual((fake(inbound).sent, fake(plain).sent), ([], []))
        peer = link("d")
        self.reach.link_ready(peer)
        self.assertEqual(self.request(peer).port, 3000)
        # One check at a time.
        other = link("e")
        self.reach.link_ready(other)
        self.assertEqual(fake(other).sent, [])
        self.assertTrue(self.reach.status()["checking"])

    def test_reached(self) -> None:
        """A peer reached the node: public, and the address goes to every peer in an ``addr``."""
        peer, other = link("b"), link("c", direction="inbound")
        self.reach.link_ready(other)
        self.reach.link_ready(peer)
        request = self.request(peer)
        self.reach.on_dialed_back(peer, DialedBack(request.nonce, "203.0.113.5:3000", True))
        status = self.reach.status()
        self.assertEqual((status["state"], status["address"]), ("public", "203.0.113.5:3000"))
        expected = Addr((NetAddress("203.0.113.5", 3000, OWN, 0),))
        self.assertEqual(fake(other).take(Addr), [expected])
        self.assertEqual(fake(peer).take(Addr), [expected])
        # A link made later is told too.
        later = link("d")
        self.reach.link_ready(later)
        self.assertEqual(fake(later).take(Addr), [expected])
        self.assertEqual(fake(later).sent, [], "no new check before RECHECK_INTERVAL")

    def test_mapped(self) -> None:
        """With the router's mapping, the mapped port is the one asked for, and reached."""
        self.mapping = ("203.0.113.5", 40000)
        peer = link("b")
        self.reach.link_ready(peer)
        request = self.request(peer)
        self.assertEqual(request.port, 40000)
        self.reach.on_dialed_back(peer, DialedBack(request.nonce, "203.0.113.5:40000", True))
        self.assertEqual(self.reach.status()["state"], "mapped")

    def test_a_new_mapping_is_checked_at_the_next_tick(self) -> None:
        """Public at the listening port, then the router maps another: that one is checked."""
        peer = link("b")
        self.reach.link_ready(peer)
        request = self.request(peer)
        self.reach.on_dialed_back(peer, DialedBack(request.nonce, "203.0.113.5:3000", True))
        self.clock.advance(RETRY_INTERVAL)
        self.assertEqual(fake(peer).take(DialBack), [], "not due yet")
        self.mapping = ("203.0.113.5", 40000)
        self.clock.advance(RETRY_INTERVAL)
        request = self.request(peer)
        self.assertEqual(request.port, 40000)
        self.reach.on_dialed_back(peer, DialedBack(request.nonce, "203.0.113.5:40000", True))
        status = self.reach.status()
        self.assertEqual((status["state"], status["address"]), ("mapped", "203.0.113.5:40000"))

    def test_outbound_only_after_two_peers_fail(self) -> None:
        first, second = link("b"), link("c")
        self.reach.link_ready(first)
        request = self.request(first)
        self.reach.on_dialed_back(first, DialedBack(request.nonce, "203.0.113.5:3000", False,
                                                    "cannot connect: refused"))  # fmt: skip
        self.assertEqual(self.reach.status()["state"], "unknown")  # one peer is not enough
        self.clock.advance(RETRY_INTERVAL)
        request = self.request(first)
        self.reach.on_dialed_back(first, DialedBack(request.nonce, "203.0.113.5:3000", False,
                                                    "cannot connect: refused"))  # fmt: skip
        self.assertEqual(self.reach.status()["state"], "unknown")  # nor one peer twice
        self.reach.link_closed(first)
        self.reach.link_ready(second)
        self.clock.advance(RETRY_INTERVAL)
        request = self.request(second)
        self.reach.on_dialed_back(second, DialedBack(request.nonce, "203.0.113.5:3000", False,
                                                     "timed out"))  # fmt: skip
        status = self.reach.status()
        self.assertEqual((status["state"], status["reason"]), ("outbound-only", "timed out"))
        # A later success makes it reachable again.
        self.clock.advance(RECHECK_INTERVAL)
        request = self.request(second)
        self.reach.on_dialed_back(second, DialedBack(request.nonce, "203.0.113.5:3000", True))
        self.assertEqual(self.reach.status()["state"], "public")

    def test_unanswered_and_unasked(self) -> None:
        """An answer nobody asked for is ignored; an unanswered request ends after ANSWER_WAIT."""
        peer = link("b")
        self.reach.link_ready(peer)
        request = self.request(peer)
        stranger = link("c")
        self.reach.on_dialed_back(stranger, DialedBack(request.nonce, "203.0.113.5:3000", True))
        self.reach.on_dialed_back(peer, DialedBack(request.nonce + 1, "203.0.113.5:3000", True))
        self.assertEqual(self.reach.status()["state"], "unknown")
        self.clock.advance(ANSWER_WAIT)
        self.assertFalse(self.reach.status()["checking"])
        self.clock.advance(RETRY_INTERVAL)
        self.assertEqual(len(fake(peer).take(DialBack)), 1, "asked again")

    def test_refusals_and_closed_links_say_nothing(self) -> None:
        """A refused request (not tried) counts as no failure; a closed link's check is dropped."""
        first, second = link("b"), link("c")
        self.reach.link_ready(first)
        request = self.request(first)
        self.reach.on_dialed_back(first, DialedBack(request.nonce, "203.0.113.5:3000", False,
                                                    "cannot connect: refused"))  # fmt: skip
        self.reach.link_ready(second)
        self.clock.advance(RETRY_INTERVAL)
        self.reach.link_closed(first)
        asked = self.request(second) if fake(second).sent else None
        if asked is None:  # the tick chose the first link, now closed: its check is dropped
            self.assertFalse(self.reach.status()["checking"])
            self.clock.advance(RETRY_INTERVAL)
            asked = self.request(second)
        self.reach.on_dialed_back(second, DialedBack(asked.nonce, "203.0.113.5:3000", False,
                                                     REFUSED_BUSY))  # fmt: skip
        self.assertEqual(self.reach.status()["state"], "unknown")
        self.assertEqual(self.reach.status()["reason"], "cannot connect: refused")

    def test_observed(self) -> None:
        """The addresses peers see this node as, the most said first."""
        for name, seen in (("b", "203.0.113.5"), ("c", "2001:db8::5"), ("d", "203.0.113.5"),
                           ("e", "")):  # fmt: skip
            self.reach.link_ready(link(name, seen_as=seen, direction="inbound"))
        self.assertEqual(self.reach.status()["observed"], ["203.0.113.5", "2001:db8::5"])


class AnsweringTests(SynchronousTestCase):
    """This node dials its peers back at their own IP, bounded."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.probes = Probes()
        self.reach = Reachability(self.clock, self.probes, listen_port=lambda: 3000)
        self.reach.start(OWN)
        self.addCleanup(self.reach.stop)

    def answer(self, peer: PeerProtocol) -> DialedBack:
        [answer] = fake(peer).take(DialedBack)
        return cast(DialedBack, answer)

    def test_dials_the_requesters_own_address(self) -> None:
        peer = link("b", direction="inbound", host="2001:db8::9")
        self.reach.on_dialback(peer, DialBack(7, 4000))
        [(host, port, node_id, d)] = self.probes.calls
        self.assertEqual((host, port, node_id), ("2001:db8::9", 4000, "b" * 40))
        self.assertEqual(fake(peer).sent, [])
        d.callback(None)
        self.assertEqual(self.answer(peer), DialedBack(7, "[2001:db8::9]:4000", True))
        self.assertEqual(self.reach.status()["dialbacks_answered"], 1)

    def test_failure_is_answered_with_its_reason(self) -> None:
        peer = link("b")
        self.reach.on_dialback(peer, DialBack(7, 4000))
        self.probes.calls[0][3].callback("cannot connect: Connection refused")
        self.assertEqual(
            self.answer(peer),
            DialedBack(7, "198.51.100.1:4000", False, "cannot connect: Connection refused"),
        )

    def test_one_per_link_per_interval(self) -> None:
        peer = link("b")
        self.reach.on_dialback(peer, DialBack(1, 4000))
        self.probes.calls[0][3].callback(None)
        self.answer(peer)
        self.reach.on_dialback(peer, DialBack(2, 4000))
        self.assertEqual(len(self.probes.calls), 1)
        refused = self.answer(peer)
        self.assertFalse(refused.ok)
        self.assertEqual(refused.reason, REFUSED_TOO_SOON)
        self.clock.advance(ANSWER_INTERVAL)
        self.reach.on_dialback(peer, DialBack(3, 4000))
        self.assertEqual(len(self.probes.calls), 2)

    def test_at_most_max_probes_at_once(self) -> None:
        peers = [link(f"{n:040x}") for n in range(MAX_PROBES + 1)]
        for n, peer in enumerate(peers):
            self.reach.on_dialback(peer, DialBack(n, 4000))
        self.assertEqual(len(self.probes.calls), MAX_PROBES)
        self.assertEqual(self.answer(peers[-1]).reason, REFUSED_BUSY)

    def test_stop_cancels_probes_under_way(self) -> None:
        peer = link("b")
        self.reach.on_dialback(peer, DialBack(1, 4000))
        d = self.probes.calls[0][3]
        self.reach.stop()
        self.assertTrue(d.called, "cancelled")
        self.assertEqual(fake(peer).sent, [], "no answer while stopping")


class ProbeSucceedTests(SynchronousTestCase):
    def test_succeed_type(self) -> None:
        """A probe may answer at once (a fired Deferred)."""
        reach = Reachability(Clock(), lambda h, p, n: succeed(None), listen_port=lambda: 1)
        peer = link("b")
        reach.on_dialback(peer, DialBack(1, 4000))
        self.assertTrue(fake(peer).take(DialedBack)[0].ok)
