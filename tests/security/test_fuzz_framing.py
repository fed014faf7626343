"""Fuzz tests of :mod:`bitfitech.wire.framing`: hostile bytes to frames.

Whatever a peer sends, :class:`FrameDecoder` returns clean frames or raises
:class:`FramingError`, nothing else; it never holds more than one frame's
worth of bytes once drained; it refuses an oversize frame from its header,
before buffering the payload.
"""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.wire.framing import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FramingError,
    encode_frame,
    is_command,
    network_magic,
)

from .strategies import byte_pieces, chunk_sizes, chunked, mutated

MAGIC = network_magic("test")
SMALL = 512
"""A small payload limit, so that hypothesis reaches it."""

commands = st.from_regex(r"\A[a-z0-9_]{1,12}\Z")
frames = st.lists(st.tuples(commands, st.binary(max_size=SMALL)), max_size=5)
limits = st.sampled_from([0, 1, 64, SMALL, MAX_PAYLOAD])


def stream_of(frames: list[tuple[str, bytes]]) -> bytes:
    """The bytes of these frames, one after the other."""
    return b"".join(encode_frame(MAGIC, command, payload) for command, payload in frames)


class Outcome:
    """What a decoder made of a stream: the frames, and the error if any."""

    def __init__(self, frames: list[Frame], error: FramingError | None, buffered: int) -> None:
        self.frames = frames
        self.error = error
        self.buffered = buffered


def decode(
    test: SynchronousTestCase, data: bytes, sizes: list[int], max_payload: int = SMALL
) -> Outcome:
    """
    Feed ``data`` in chunks, draining after each, as the peer protocol does;
    check after each chunk that only FramingError came out and that the
    decoder holds less than one whole frame.
    """
    decoder = FrameDecoder(MAGIC, max_payload)
    out: list[Frame] = []
    for chunk in chunked(data, sizes):
        decoder.feed(chunk)
        try:
            while (frame := decoder.next_frame()) is not None:
                test.assertTrue(is_command(frame.command))
                test.assertLessEqual(len(frame.payload), max_payload)
                out.append(frame)
        except FramingError as error:
            test.assertEqual(decoder.buffered, 0)
            # Poisoned: later bytes are dropped and every call raises again.
            decoder.feed(b"\0" * 100)
            test.assertEqual(decoder.buffered, 0)
            test.assertRaises(FramingError, decoder.next_frame)
            return Outcome(out, error, 0)
        test.assertLess(decoder.buffered, HEADER_SIZE + max_payload)
    return Outcome(out, None, decoder.buffered)


class ArbitraryBytesTests(SynchronousTestCase):
    """Random bytes, fed in random pieces."""

    @settings(max_examples=300)
    @given(st.binary(max_size=2000), chunk_sizes, limits)
    def test_arbitrary_bytes(self, data: bytes, sizes: list[int], max_payload: int) -> None:
        """Frames or FramingError, and a bad magic is refused as soon as a header is in."""
        outcome = decode(self, data, sizes, max_payload)
        if len(data) >= HEADER_SIZE and data[:4] != MAGIC:
            self.assertIsNotNone(outcome.error)
            self.assertEqual(outcome.frames, [])

    @settings(max_examples=300)
    @given(st.binary(max_size=2000), chunk_sizes)
    def test_arbitrary_bytes_after_magic(self, data: bytes, sizes: list[int]) -> None:
        """Random bytes behind the right magic reach the command, length and checksum checks."""
        decode(self, MAGIC + data, sizes)


class MutatedStreamTests(SynchronousTestCase):
    """Valid frame streams, damaged."""

    @settings(max_examples=300)
    @given(st.data(), frames, chunk_sizes)
    def test_mutated_stream(self, data: st.DataObject, frames: list[tuple[str, bytes]],
                            sizes: list[int]) -> None:  # fmt: skip
        """Random edits: frames or FramingError; the frames are those of a decodable prefix."""
        stream = stream_of(frames)
        damaged = data.draw(mutated(stream, byte_pieces))
        outcome = decode(self, damaged, sizes)
        # Whatever came out re-encodes to the front of the damaged stream.
        self.assertTrue(
            damaged.startswith(stream_of([(f.command, f.payload) for f in outcome.frames]))
        )

    @settings(max_examples=200)
    @given(frames, st.data(), chunk_sizes)
    def test_truncated(self, frames: list[tuple[str, bytes]], data: st.DataObject,
                       sizes: list[int]) -> None:  # fmt: skip
        """A cut stream gives the whole frames before the cut, no error, and keeps the rest."""
        stream = stream_of(frames)
        cut = data.draw(st.integers(0, len(stream)))
        outcome = decode(self, stream[:cut], sizes)
        self.assertIsNone(outcome.error)
        whole = [Frame(c, p) for c, p in frames]
        self.assertEqual(outcome.frames, whole[: len(outcome.frames)])
        self.assertEqual(len(stream_of(frames[: len(outcome.frames)])) + outcome.buffered, cut)

    @settings(max_examples=300)
    @given(
        frames,
        st.data(),
        st.sampled_from(["magic", "length", "checksum", "command"]),
        chunk_sizes,
    )
    def test_broken_header(self, frames: list[tuple[str, bytes]], data: st.DataObject,
                           part: str, sizes: list[int]) -> None:  # fmt: skip
        """
        One frame with a wrong magic, a length over the limit (up to 2**32 - 1),
        a bad checksum or a bad command: the frames before it come out, then
        FramingError, with nothing of the bad frame's payload buffered.
        """
        frames = [*frames, data.draw(st.tuples(commands, st.binary(max_size=SMALL)))]
        index = data.draw(st.integers(0, len(frames) - 1))
        start = len(stream_of(frames[:index]))
        stream = bytearray(stream_of(frames))
        if part == "magic":
            stream[start : start + 4] = data.draw(
                st.binary(min_size=4, max_size=4).filter(lambda m: m != MAGIC)
            )
        elif part == "length":
            huge = data.draw(st.integers(SMALL + 1, 2**32 - 1))
            struct.pack_into("<I", stream, start + 16, huge)
        elif part == "checksum":
            # Any other 4 bytes: the real checksum is known, so no 2**-32 flake.
            old = bytes(stream[start + 20 : start + 24])
            stream[start + 20 : start + 24] = data.draw(
                st.binary(min_size=4, max_size=4).filter(lambda c: c != old)
            )
        else:
            bad = data.draw(
                st.binary(min_size=12, max_size=12).filter(
                    lambda raw: (
                        not is_command(raw.rstrip(b"\0").decode("latin-1"))
                        or b"\0" in raw.rstrip(b"\0")
                    )
                )
            )
            stream[start + 4 : start + 16] = bad
        outcome = decode(self, bytes(stream), sizes)
        self.assertIsNotNone(outcome.error)
        self.assertEqual(outcome.frames, [Frame(c, p) for c, p in frames[:index]])


class BoundTests(SynchronousTestCase):
    """Megabytes of hostile bytes, in 64 KiB chunks, never pile up."""

    CHUNK = 64 * 1024
    TOTAL = 8 * 1024 * 1024

    def chunks(self, seed: int) -> list[bytes]:
        rng = random.Random(seed)
        return [rng.randbytes(self.CHUNK) for _ in range(self.TOTAL // self.CHUNK)]

    def feed_all(self, decoder: FrameDecoder, chunks: list[bytes]) -> int:
        """Feed and drain chunk by chunk; return how many chunks went in before the error."""
        for count, chunk in enumerate(chunks, 1):
            decoder.feed(chunk)
            try:
                while decoder.next_frame() is not None:
                    pass
            except FramingError:
                self.assertEqual(decoder.buffered, 0)
                return count
            self.assertLess(decoder.buffered, HEADER_SIZE + MAX_PAYLOAD)
        self.fail("8 MiB of garbage accepted")

    def test_garbage(self) -> None:
        """Random bytes fail on the first chunk."""
        self.assertEqual(self.feed_all(FrameDecoder(MAGIC), self.chunks(1)), 1)

    def test_largest_frame_with_garbage_payload(self) -> None:
        """A header announcing the largest payload: at most one frame is buffered, then refused."""
        header = struct.pack("<4s12sI4s", MAGIC, b"events", MAX_PAYLOAD, b"\0\0\0\0")
        count = self.feed_all(FrameDecoder(MAGIC), [header, *self.chunks(2)])
        self.assertEqual(count, 1 + -(-MAX_PAYLOAD // self.CHUNK))

    def test_huge_length(self) -> None:
        """A length over the limit is refused from the header alone."""
        for length in (MAX_PAYLOAD + 1, 2**31, 2**32 - 1):
            header = struct.pack("<4s12sI4s", MAGIC, b"events", length, b"\0\0\0\0")
            decoder = FrameDecoder(MAGIC)
            decoder.feed(header)
            self.assertRaises(FramingError, decoder.next_frame)
            self.assertEqual(decoder.buffered, 0)
