"""Fuzz tests of :class:`bitfitech.peer.protocol.PeerProtocol`: hostile bytes on one link.

Nothing raises out of ``dataReceived``; a link that receives garbage is
closed (aborted, not left half-open) and reported to its owner as
misbehaved; a closed link ignores what follows; and the link never holds
more than one frame, however much a peer sends.
"""

from __future__ import annotations

import random
import struct
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.config import LinkTiming
from bitfitech.peer.protocol import PeerProtocol
from bitfitech.testing import RecordingOwner, frame_of, local_node, version_of
from bitfitech.wire.framing import HEADER_SIZE, MAX_PAYLOAD, checksum, network_magic
from bitfitech.wire.messages import Message, Verack

from .strategies import byte_pieces, chunk_sizes, chunked, mutated
from .test_fuzz_messages import known_messages

MAGIC = network_magic("test")
TIMING = LinkTiming(handshake_timeout=10.0, ping_interval=30.0, ping_timeout=20.0)


class Link:
    """A PeerProtocol over a StringTransport, optionally past its handshake."""

    def __init__(self, *, handshake: bool) -> None:
        self.owner = RecordingOwner()
        self.protocol = PeerProtocol(
            local_node(1), self.owner, Clock(), "inbound", timing=TIMING, nonce=77,  # type: ignore[arg-type]
        )  # fmt: skip
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        if handshake:
            self.protocol.dataReceived(frame_of(version_of(2)) + frame_of(Verack()))
            assert self.protocol.state == "ready", self.protocol.close_reason

    def feed(self, test: SynchronousTestCase, data: bytes, sizes: list[int]) -> None:
        """Deliver ``data`` in chunks; check the link after each."""
        for chunk in chunked(data, sizes):
            self.protocol.dataReceived(chunk)
            self.check(test)

    def check(self, test: SynchronousTestCase) -> None:
        """Closed exactly when the transport is being dropped; violations reported; bounded."""
        protocol = self.protocol
        test.assertEqual(protocol.closed, self.transport.disconnecting)
        test.assertNotEqual(protocol.close_reason, "internal error")
        violations = [reason for link, reason in self.owner.misbehaved if link is protocol]
        if (protocol.close_reason or "").startswith("protocol violation"):
            test.assertEqual(len(violations), 1)
            test.assertTrue(self.transport.disconnected)  # aborted, not flushed
        else:
            test.assertEqual(violations, [])
        test.assertLess(protocol._decoder.buffered, HEADER_SIZE + MAX_PAYLOAD)

    def assert_violation(self, test: SynchronousTestCase) -> None:
        """The link was closed as a protocol violation, and ignores what follows."""
        test.assertTrue(self.protocol.closed)
        test.assertEqual(len(self.owner.misbehaved), 1)
        written = self.transport.value()
        self.protocol.dataReceived(frame_of(Verack()) + b"\0" * 100)
        test.assertEqual(self.transport.value(), written)
        test.assertEqual(len(self.owner.misbehaved), 1)


class GarbageTests(SynchronousTestCase):
    """Arbitrary bytes, before and after the handshake."""

    @settings(max_examples=200)
    @given(st.booleans(), st.binary(max_size=1000), chunk_sizes)
    def test_arbitrary_bytes(self, handshake: bool, data: bytes, sizes: list[int]) -> None:
        """Random bytes: never raise; a full header's worth of them closes the link."""
        link = Link(handshake=handshake)
        link.feed(self, data, sizes)
        if len(data) >= HEADER_SIZE and data[:4] != MAGIC:
            link.assert_violation(self)

    @settings(max_examples=200)
    @given(st.booleans(), st.binary(min_size=HEADER_SIZE - 4, max_size=1000), chunk_sizes)
    def test_arbitrary_bytes_after_magic(
        self, handshake: bool, data: bytes, sizes: list[int]
    ) -> None:
        """Random bytes behind the right magic: never raise; closed if a frame is bad."""
        link = Link(handshake=handshake)
        link.feed(self, MAGIC + data, sizes)

    @settings(max_examples=200)
    @given(st.booleans(), st.lists(known_messages, min_size=1, max_size=3), st.data(), chunk_sizes)
    def test_mutated_messages(self, handshake: bool, messages: list[Message],
                              data: st.DataObject, sizes: list[int]) -> None:  # fmt: skip
        """Valid frames of every message type, damaged: never raise, never half-open."""
        stream = b"".join(frame_of(message) for message in messages)
        link = Link(handshake=handshake)
        link.feed(self, data.draw(mutated(stream, byte_pieces)), sizes)

    def test_deeply_nested_payload(self) -> None:
        """
        Regression: a ``ping`` whose nonce is an array nested just under the
        JSON parser's limit made the codec raise RecursionError, which escaped
        ``dataReceived``.  Now a violation, at every depth near the limit.
        """
        for depth in range(850, 1000):
            for handshake in (False, True):
                link = Link(handshake=handshake)
                payload = b'{"nonce":' + b"[" * depth + b"]" * depth + b"}"
                link.protocol.dataReceived(frame(b"ping", payload))
                link.check(self)
                link.assert_violation(self)


def frame(command: bytes, payload: bytes) -> bytes:
    """A frame with a correct checksum, whatever its payload."""
    return struct.pack("<4s12sI4s", MAGIC, command, len(payload), checksum(payload)) + payload


class FloodTests(SynchronousTestCase):
    """10 MiB sent to one link in 64 KiB chunks."""

    CHUNK = 64 * 1024
    TOTAL = 10 * 1024 * 1024

    def flood(self, link: Link, first: bytes, seed: int) -> int:
        """
        Send ``first`` then random chunks up to :data:`TOTAL` bytes.

        :return: how many chunks went in before the link closed.
        """
        rng = random.Random(seed)
        chunks_before_close = 0
        link.protocol.dataReceived(first)
        for _ in range(self.TOTAL // self.CHUNK):
            if not link.protocol.closed:
                chunks_before_close += 1
            link.protocol.dataReceived(rng.randbytes(self.CHUNK))
            link.check(self)
        return chunks_before_close

    def test_random_flood(self) -> None:
        """Random bytes close the link on the first chunk; the rest is dropped unbuffered."""
        for handshake in (False, True):
            link = Link(handshake=handshake)
            self.assertEqual(self.flood(link, b"", handshake), 1)
            self.assertEqual(link.protocol._decoder.buffered, 0)
            link.assert_violation(self)

    def test_largest_frame_flood(self) -> None:
        """
        A header announcing the largest payload, then 10 MiB: the link holds
        at most one frame, closes once that frame's checksum fails, and
        allocates no more than a few frames' worth meanwhile.
        """
        header = struct.pack("<4s12sI4s", MAGIC, b"events", MAX_PAYLOAD, b"\0\0\0\0")
        link = Link(handshake=True)
        tracemalloc.start()
        try:
            chunks = self.flood(link, header, 3)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(chunks, -(-MAX_PAYLOAD // self.CHUNK))
        self.assertEqual(link.protocol._decoder.buffered, 0)
        link.assert_violation(self)
        self.assertLess(peak, 4 * (HEADER_SIZE + MAX_PAYLOAD))

    def test_oversize_header(self) -> None:
        """A length over the limit closes the link from the header, before any payload."""
        for handshake in (False, True):
            link = Link(handshake=handshake)
            link.protocol.dataReceived(
                struct.pack("<4s12sI4s", MAGIC, b"events", MAX_PAYLOAD + 1, b"\0\0\0\0")
            )
            link.check(self)
            link.assert_violation(self)
