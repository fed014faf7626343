"""Tests for :mod:`bitfitech.wire.framing`: bytes to frames and back."""

from __future__ import annotations

import hashlib
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.wire.framing import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    NO_CHECKSUM,
    Frame,
    FrameDecoder,
    FramingError,
    encode_frame,
    network_magic,
)

MAGIC = network_magic("main")
OTHER_MAGIC = network_magic("test")


def raw_header(
    command: bytes,
    length: int,
    payload: bytes = b"",
    magic: bytes = MAGIC,
    checksum: bytes | None = None,
) -> bytes:
    """Build a header by hand, bypassing :func:`encode_frame`'s checks."""
    if checksum is None:
        checksum = hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    return magic + command.ljust(12, b"\0") + struct.pack("<I", length) + checksum


def drain(decoder: FrameDecoder) -> list[Frame]:
    """Take every complete frame off a decoder."""
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


commands = st.from_regex(r"\A[a-z0-9_]{1,12}\Z")
frame_lists = st.lists(st.tuples(commands, st.binary(max_size=300)), max_size=8)


class NetworkMagicTests(SynchronousTestCase):
    """Tests for :func:`network_magic`."""

    def test_main(self) -> None:
        """The default network's magic is the documented constant."""
        self.assertEqual(network_magic("main").hex(), "911d3afe")

    def test_derivation(self) -> None:
        """The magic is the first 4 bytes of a SHA-256 of the prefixed UTF-8 name."""
        expected = hashlib.sha256("bitfi-network:tëst".encode()).digest()[:4]
        self.assertEqual(network_magic("tëst"), expected)
        self.assertNotEqual(network_magic("main"), network_magic("test"))


class EncodeFrameTests(SynchronousTestCase):
    """Tests for :func:`encode_frame`."""

    def test_layout(self) -> None:
        """The header is magic, NUL-padded command, LE length, double-SHA-256 checksum."""
        payload = b'{"nonce":1}'
        data = encode_frame(MAGIC, "ping", payload)
        digest = hashlib.sha256(hashlib.sha256(payload).digest()).digest()
        self.assertEqual(data[:4], MAGIC)
        self.assertEqual(data[4:16], b"ping" + b"\0" * 8)
        self.assertEqual(data[16:20], len(payload).to_bytes(4, "little"))
        self.assertEqual(data[20:24], digest[:4])
        self.assertEqual(data[24:], payload)
        self.assertEqual(len(data), HEADER_SIZE + len(payload))

    def test_twelve_character_command(self) -> None:
        """A 12-character command fills the field without padding."""
        data = encode_frame(MAGIC, "abcdefghij_9", b"")
        self.assertEqual(data[4:16], b"abcdefghij_9")

    def test_bad_command(self) -> None:
        """Commands outside 1 to 12 of [a-z0-9_] are refused."""
        for command in ["", "Ping", "abcdefghijklm", "pïng", "a b", "a-b", "a\0", "\0"]:
            with self.subTest(command=command):
                self.assertRaises(FramingError, encode_frame, MAGIC, command, b"")

    def test_max_payload(self) -> None:
        """A payload of exactly MAX_PAYLOAD bytes is allowed, one byte more is not."""
        payload = bytes(MAX_PAYLOAD)
        self.assertEqual(len(encode_frame(MAGIC, "big", payload)), HEADER_SIZE + MAX_PAYLOAD)
        error = self.assertRaises(FramingError, encode_frame, MAGIC, "big", payload + b"\0")
        self.assertIn("exceeds", str(error))

    def test_bad_magic(self) -> None:
        """The magic must be 4 bytes."""
        self.assertRaises(FramingError, encode_frame, b"abc", "ping", b"")


class FrameDecoderTests(SynchronousTestCase):
    """Tests for :class:`FrameDecoder`."""

    def test_without_checksum(self) -> None:
        """
        A frame sent without a checksum carries four zero bytes there; a
        decoder checks it until told the link needs none, then reads any
        checksum field without looking at it.
        """
        unchecked = encode_frame(MAGIC, "ping", b"0123", checksummed=False)
        self.assertEqual(unchecked[20:24], NO_CHECKSUM)
        self.assertEqual(unchecked[24:], b"0123")
        decoder = FrameDecoder(MAGIC)
        decoder.feed(unchecked)
        self.assertRaises(FramingError, decoder.next_frame)
        decoder = FrameDecoder(MAGIC)
        decoder.feed(encode_frame(MAGIC, "verack", b"") + unchecked)
        self.assertEqual(decoder.next_frame(), Frame("verack", b""))
        decoder.checksummed = False
        self.assertEqual(decoder.next_frame(), Frame("ping", b"0123"))
        decoder.feed(raw_header(b"ping", 2, checksum=b"\xff" * 4) + b"ab")
        self.assertEqual(decoder.next_frame(), Frame("ping", b"ab"))

    def test_round_trip(self) -> None:
        """Encoded frames decode to the same command and payload, in order."""
        decoder = FrameDecoder(MAGIC)
        decoder.feed(encode_frame(MAGIC, "version", b"{}") + encode_frame(MAGIC, "verack", b""))
        self.assertEqual(drain(decoder), [Frame("version", b"{}"), Frame("verack", b"")])
        self.assertEqual(decoder.buffered, 0)

    def test_needs_more_bytes(self) -> None:
        """An incomplete frame gives None and stays buffered."""
        data = encode_frame(MAGIC, "ping", b"0123456789")
        decoder = FrameDecoder(MAGIC)
        self.assertIsNone(decoder.next_frame())
        decoder.feed(data[:-1])
        self.assertIsNone(decoder.next_frame())
        self.assertEqual(decoder.buffered, len(data) - 1)
        decoder.feed(data[-1:])
        self.assertEqual(decoder.next_frame(), Frame("ping", b"0123456789"))
        self.assertIsNone(decoder.next_frame())

    def test_every_split_point(self) -> None:
        """A two-frame stream split anywhere in two chunks decodes the same."""
        frames = [Frame("version", b'{"a":1}'), Frame("ping", b"x" * 30)]
        data = b"".join(encode_frame(MAGIC, f.command, f.payload) for f in frames)
        for split in range(len(data) + 1):
            with self.subTest(split=split):
                decoder = FrameDecoder(MAGIC)
                decoder.feed(data[:split])
                got = drain(decoder)
                decoder.feed(data[split:])
                got += drain(decoder)
                self.assertEqual(got, frames)
                self.assertEqual(decoder.buffered, 0)

    def test_one_byte_at_a_time(self) -> None:
        """Feeding one byte at a time yields each frame as its last byte arrives."""
        frames = [Frame("a", b""), Frame("addr", b"p" * 100), Frame("b_2", b"q")]
        data = b"".join(encode_frame(MAGIC, f.command, f.payload) for f in frames)
        ends = set()
        end = 0
        for f in frames:
            end += HEADER_SIZE + len(f.payload)
            ends.add(end)
        decoder = FrameDecoder(MAGIC)
        got = []
        for index in range(len(data)):
            decoder.feed(data[index : index + 1])
            frame = decoder.next_frame()
            self.assertEqual(frame is not None, index + 1 in ends)
            if frame is not None:
                got.append(frame)
        self.assertEqual(got, frames)

    def test_many_small_frames_in_one_chunk(self) -> None:
        """Many frames in one big chunk all decode, and the buffer ends empty."""
        count = 20_000
        data = encode_frame(MAGIC, "ping", b'{"nonce":1}') * count
        decoder = FrameDecoder(MAGIC)
        decoder.feed(data)
        self.assertEqual(len(drain(decoder)), count)
        self.assertEqual(decoder.buffered, 0)

    def test_bad_magic(self) -> None:
        """A frame from another network is refused as soon as its header is there."""
        decoder = FrameDecoder(MAGIC)
        decoder.feed(encode_frame(OTHER_MAGIC, "ping", b"x" * 10)[:HEADER_SIZE])
        error = self.assertRaises(FramingError, decoder.next_frame)
        self.assertIn("magic", str(error))

    def test_bad_checksum(self) -> None:
        """A payload that does not match the header checksum is refused."""
        data = bytearray(encode_frame(MAGIC, "ping", b"hello"))
        data[-1] ^= 1
        decoder = FrameDecoder(MAGIC)
        decoder.feed(bytes(data))
        error = self.assertRaises(FramingError, decoder.next_frame)
        self.assertIn("checksum", str(error))

    def test_bad_checksum_field(self) -> None:
        """A corrupted checksum field is refused too."""
        decoder = FrameDecoder(MAGIC)
        decoder.feed(raw_header(b"ping", 5, checksum=b"\0\0\0\0") + b"hello")
        self.assertRaises(FramingError, decoder.next_frame)

    def test_oversize_rejected_at_header(self) -> None:
        """A length over the limit is refused from the header alone, before the payload."""
        for limit in [MAX_PAYLOAD, 100, 0]:
            with self.subTest(limit=limit):
                decoder = FrameDecoder(MAGIC, max_payload=limit)
                decoder.feed(raw_header(b"addr", limit + 1))
                error = self.assertRaises(FramingError, decoder.next_frame)
                self.assertIn("exceeds", str(error))

    def test_length_at_limit_waits(self) -> None:
        """A length exactly at the limit is accepted and waits for its payload."""
        decoder = FrameDecoder(MAGIC, max_payload=100)
        payload = b"z" * 100
        decoder.feed(raw_header(b"addr", 100, payload))
        self.assertIsNone(decoder.next_frame())
        decoder.feed(payload)
        self.assertEqual(decoder.next_frame(), Frame("addr", payload))

    def test_bad_command_bytes(self) -> None:
        """Command fields other than [a-z0-9_]{1,12} then NULs are refused."""
        for command in [
            b"Ping",
            b"PING",
            b"p\xc3\xafng",
            b"\xff",
            b"pi\0ng",
            b"ping\0\0x",
            b"",
            b"\0" * 12,
            b"a-b",
            b" ping",
            b"ping ",
        ]:
            with self.subTest(command=command):
                decoder = FrameDecoder(MAGIC)
                decoder.feed(raw_header(command, 0))
                error = self.assertRaises(FramingError, decoder.next_frame)
                self.assertIn("command", str(error))

    def test_poisoned_after_error(self) -> None:
        """After an error the decoder drops its buffer and raises on every call."""
        decoder = FrameDecoder(MAGIC)
        decoder.feed(raw_header(b"ping", 0, magic=OTHER_MAGIC))
        self.assertRaises(FramingError, decoder.next_frame)
        self.assertEqual(decoder.buffered, 0)
        decoder.feed(encode_frame(MAGIC, "ping", b""))
        self.assertRaises(FramingError, decoder.next_frame)
        self.assertRaises(FramingError, decoder.next_frame)
        self.assertEqual(decoder.buffered, 0)

    def test_bad_constructor_arguments(self) -> None:
        """The magic must be 4 bytes and the limit from 0 to MAX_PAYLOAD."""
        self.assertRaises(ValueError, FrameDecoder, b"12345")
        self.assertRaises(ValueError, FrameDecoder, MAGIC, MAX_PAYLOAD + 1)
        self.assertRaises(ValueError, FrameDecoder, MAGIC, -1)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets (taken modulo its length + 1)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    chunks = []
    previous = 0
    for point in [*points, len(data)]:
        chunks.append(data[previous:point])
        previous = point
    return chunks


class FrameDecoderPropertyTests(SynchronousTestCase):
    """Property tests for :class:`FrameDecoder`."""

    @settings(max_examples=200, deadline=None)
    @given(frame_lists, st.lists(st.integers(min_value=0), max_size=20))
    def test_any_split_round_trips(self, frames: list[tuple[str, bytes]], cuts: list[int]) -> None:
        """Frames cut into chunks anywhere decode back to the same frames."""
        data = b"".join(encode_frame(MAGIC, command, payload) for command, payload in frames)
        decoder = FrameDecoder(MAGIC)
        got = []
        for chunk in split(data, cuts):
            decoder.feed(chunk)
            got += drain(decoder)
        self.assertEqual(got, [Frame(command, payload) for command, payload in frames])
        self.assertEqual(decoder.buffered, 0)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=100),
                st.binary(max_size=40).map(lambda tail: MAGIC + tail),
                st.builds(
                    lambda command, length, tail: raw_header(command, length) + tail,
                    st.binary(max_size=12),
                    st.integers(min_value=0, max_value=2**32 - 1),
                    st.binary(max_size=100),
                ),
            ),
            max_size=10,
        )
    )
    def test_arbitrary_bytes(self, chunks: list[bytes]) -> None:
        """Arbitrary bytes only ever raise FramingError and stay bounded in memory."""
        limit = 64
        decoder = FrameDecoder(MAGIC, max_payload=limit)
        failed = False
        for chunk in chunks:
            decoder.feed(chunk)
            try:
                frames = drain(decoder)
            except FramingError:
                failed = True
                frames = []
            for frame in frames:
                self.assertLessEqual(len(frame.payload), limit)
            self.assertLessEqual(decoder.buffered, HEADER_SIZE + limit)
        if failed:
            self.assertRaises(FramingError, decoder.next_frame)
