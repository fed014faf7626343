"""Tests for the flow control of :class:`bitfitech.peer.protocol.PeerProtocol`.

Both directions, over StringTransport and a Clock: rate limits on what a
link receives (reading pauses, nothing is dropped, ``RATE_EXCEEDED`` at
most once a second), and a peer that does not read what we write (stall
timeout, write cap).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.config import LinkLimits, LinkTiming
from bitfitech.peer import misbehaviour
from bitfitech.peer.protocol import REASON_STALLED, PeerProtocol, link_info
from bitfitech.testing import RecordingOwner, frame_of, local_node, version_of
from bitfitech.wire.messages import Addr, Message, NetAddress, Verack

#: a message the link hands to its owner
NOTE = Addr(addrs=())


def link_with(limits: LinkLimits | None = None, stall_timeout: float = 30.0) -> Link:
    timing = LinkTiming(handshake_timeout=10.0, ping_interval=3600.0, ping_timeout=20.0,
                        stall_timeout=stall_timeout, limits=limits or LinkLimits())  # fmt: skip
    return Link(timing)


class Link:
    """A ready PeerProtocol on a StringTransport and a Clock."""

    def __init__(self, timing: LinkTiming) -> None:
        self.clock = Clock()
        self.owner = RecordingOwner()
        self.protocol = PeerProtocol(
            local_node(1), self.owner, self.clock, "outbound",  # type: ignore[arg-type]
            timing=timing, nonce=77,
        )  # fmt: skip
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.receive(version_of(2), Verack())
        assert self.protocol.state == "ready"

    def receive(self, *messages: Message) -> None:
        self.protocol.dataReceived(b"".join(frame_of(m) for m in messages))

    @property
    def handled(self) -> int:
        return len(self.owner.messages)

    @property
    def paused(self) -> bool:
        return self.transport.producerState == "paused"

    def rate_reports(self) -> int:
        return sum(1 for score in self.owner.scores if score == misbehaviour.RATE_EXCEEDED)


class ReceiveRateTests(SynchronousTestCase):
    def test_honest_rate_never_pauses(self) -> None:
        """900 messages a second, for ten seconds, under a limit of 1,000: never paused."""
        link = link_with()
        for _ in range(100):
            link.receive(*[NOTE] * 90)
            self.assertFalse(link.paused)
            link.clock.advance(0.1)
        self.assertEqual(link.handled, 9000)
        self.assertEqual(link.owner.misbehaved, [])
        self.assertEqual(link.protocol.throttled, 0)

    def test_default_burst(self) -> None:
        """Nearly 2,000 messages at once pass unpaused (the handshake took two)."""
        link = link_with()
        link.receive(*[NOTE] * 1998)
        self.assertFalse(link.paused)
        self.assertEqual(link.handled, 1998)
        self.assertEqual(link.owner.misbehaved, [])

    def test_message_flood_pauses_reading_without_dropping(self) -> None:
        link = link_with(LinkLimits(msg_rate=10, msg_burst=20))
        link.receive(*[NOTE] * 100)
        self.assertTrue(link.paused)
        self.assertEqual(link.protocol.state, "ready")
        first = link.handled
        self.assertLess(first, 25)
        self.assertEqual(link.rate_reports(), 1)
        self.assertEqual(link.owner.misbehaved[0][1], "rate limit exceeded")
        # Buffered messages wait; they are handled as the bucket refills.
        link.clock.advance(0.5)
        self.assertGreater(link.handled, first)
        for _ in range(200):
            link.clock.advance(0.1)
        self.assertEqual(link.handled, 100)
        self.assertFalse(link.paused)

    def test_reported_at_most_once_a_second(self) -> None:
        """A steady flood: one ``RATE_EXCEEDED`` a second, ten in ten seconds."""
        link = link_with(LinkLimits(msg_rate=10, msg_burst=20))
        for _ in range(100):
            link.receive(*[NOTE] * 20)
            link.clock.advance(0.1)
        self.assertTrue(link.paused)
        self.assertIn(link.rate_reports(), (10, 11))
        self.assertEqual(sum(link.owner.scores), link.rate_reports() * 10)
        self.assertGreater(link.protocol.throttled, link.rate_reports())

    def test_byte_flood_pauses_reading(self) -> None:
        link = link_with(LinkLimits(byte_rate=1000, byte_burst=2000))
        big = Addr(addrs=tuple(NetAddress("10.0.0.1", 3000 + n, None, 0) for n in range(200)))
        size = len(frame_of(big))
        self.assertGreater(size, 2000)
        link.receive(big)
        self.assertTrue(link.paused)
        self.assertEqual(link.handled, 0)  # the bytes were read; the message waits
        link.clock.advance(size / 1000 + 0.01)
        self.assertFalse(link.paused)
        self.assertEqual(link.handled, 1)
        self.assertEqual(link.rate_reports(), 1)
        self.assertEqual(link_info(link.protocol, None)["throttled"], 1)

    def test_closing_while_paused_cancels_the_timer(self) -> None:
        link = link_with(LinkLimits(msg_rate=10, msg_burst=20))
        link.receive(*[NOTE] * 100)
        link.protocol.close("bye")
        self.assertEqual(link.clock.getDelayedCalls(), [])
        link.protocol.connectionLost()


class SlowPeerTests(SynchronousTestCase):
    def test_registered_as_streaming_producer(self) -> None:
        link = link_with()
        self.assertIs(link.transport.producer, link.protocol)
        self.assertTrue(link.transport.streaming)
        link.protocol.close("bye")
        self.assertIsNone(link.transport.producer)  # or the transport would wait for it

    def test_peer_that_does_not_read_is_dropped_after_stall_timeout(self) -> None:
        link = link_with(stall_timeout=30.0)
        link.protocol.pauseProducing()  # our write buffer is full
        self.assertTrue(link.protocol.write_stalled)
        link.clock.advance(29.9)
        self.assertEqual(link.protocol.state, "ready")
        link.clock.advance(0.2)
        self.assertEqual(link.protocol.state, "closed")
        self.assertEqual(link.protocol.close_reason, REASON_STALLED)
        self.assertTrue(link.transport.disconnecting)
        self.assertEqual(link.owner.misbehaved, [])  # slow is not hostile

    def test_peer_that_reads_again_is_kept(self) -> None:
        link = link_with(stall_timeout=30.0)
        for _ in range(5):
            link.protocol.pauseProducing()
            link.clock.advance(20)
            link.protocol.resumeProducing()
            self.assertFalse(link.protocol.write_stalled)
        link.clock.advance(60)
        self.assertEqual(link.protocol.state, "ready")

    def test_writes_beyond_the_cap_abort_at_once(self) -> None:
        link = link_with(LinkLimits(max_queued=10_000))
        link.protocol.send(NOTE)  # not paused: no cap
        link.protocol.pauseProducing()
        big = Addr(addrs=tuple(NetAddress("10.0.0.1", 3000 + n, None, 0) for n in range(100)))
        while link.protocol.state == "ready":
            link.protocol.send(big)
        self.assertEqual(link.protocol.close_reason, REASON_STALLED)
        self.assertTrue(link.transport.disconnecting)
        self.assertLessEqual(len(link.transport.value()), 10_000 + 2 * len(frame_of(big)))

    def test_cap_counts_from_each_pause(self) -> None:
        link = link_with(LinkLimits(max_queued=10_000))
        for _ in range(5):
            link.protocol.pauseProducing()
            for _ in range(10):
                link.protocol.send(Addr(addrs=(NetAddress("10.0.0.1", 3000, None, 0),)))
            link.protocol.resumeProducing()
        self.assertEqual(link.protocol.state, "ready")

    def test_silent_peer_never_finishing_handshake_is_dropped(self) -> None:
        """Already guarded: a peer that trickles half a version is dropped at the timeout."""
        clock = Clock()
        owner = RecordingOwner()
        protocol = PeerProtocol(local_node(1), owner, clock, "inbound",  # type: ignore[arg-type]
                                timing=LinkTiming(handshake_timeout=10.0))  # fmt: skip
        transport = StringTransport()
        protocol.makeConnection(transport)
        frame = frame_of(version_of(2))
        for n in range(9):
            protocol.dataReceived(frame[n : n + 1])
            clock.advance(1.0)
        self.assertEqual(protocol.state, "handshaking")
        clock.advance(1.1)
        self.assertEqual(protocol.close_reason, "handshake timeout")
        self.assertTrue(transport.disconnecting)
