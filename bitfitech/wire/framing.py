"""Bytes to frames: the first step from a peer link's byte stream to messages.

A TCP link carries a stream of frames, Bitcoin style.  Each frame is a
24-byte header followed by the payload::

    magic (4) | command (12, ASCII, NUL padded) | length (uint32 LE) | checksum (4)

The magic names the network (:func:`network_magic`), the command names the
message, the checksum is the first four bytes of ``sha256(sha256(payload))``,
or :data:`NO_CHECKSUM` where the link itself protects every byte (TLS,
after the handshake: see ``docs/protocol.rst``).
:class:`FrameDecoder` cuts a stream into :class:`Frame` objects; what a
payload means is :mod:`bitfitech.wire.messages`' business.

The decoder is bounded: it checks the header (magic, command, length) as
soon as the 24 header bytes are there, so an oversize frame is refused
before its payload is buffered, and it holds at most one frame plus the last
chunk it was fed.  Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

HEADER_SIZE: int = 24
"""Size of a frame header in bytes."""

MAX_PAYLOAD: int = 2 * 1024 * 1024
"""Hard limit on a frame's payload, in bytes."""

MAGIC_SIZE: int = 4
"""Size of the network magic in bytes."""

COMMAND_SIZE: int = 12
"""Size of the NUL-padded command field in bytes."""

CHECKSUM_SIZE: int = 4
"""Size of the payload checksum in bytes."""

NO_CHECKSUM: bytes = bytes(CHECKSUM_SIZE)
"""The checksum field of a frame sent without a checksum."""

_HEADER = struct.Struct("<4s12sI4s")
_COMMAND_RE = re.compile(r"[a-z0-9_]{1,12}")
_COMMAND_BYTES_RE = re.compile(rb"[a-z0-9_]{1,12}")

# While frames are taken off one big chunk, the consumed front of the buffer
# is dropped once it is this large and at least half the buffer (amortized
# linear time, bounded memory).
_COMPACT_THRESHOLD = 64 * 1024


class FramingError(ValueError):
    """A byte stream that is not a well-formed frame sequence; says what is wrong."""


def network_magic(network: str) -> bytes:
    """
    Derive the 4-byte magic that starts every frame on a network.

    :param network: the network name, such as ``"main"``.
    :return: ``sha256(b"bitfi-network:" + network.encode("utf-8")).digest()[:4]``.
    """
    return hashlib.sha256(b"bitfi-network:" + network.encode("utf-8")).digest()[:MAGIC_SIZE]


def checksum(payload: bytes) -> bytes:
    """
    Compute a payload's checksum.

    :param payload: the frame payload.
    :return: the first 4 bytes of ``sha256(sha256(payload))``.
    """
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:CHECKSUM_SIZE]


def is_command(value: object) -> bool:
    """
    Tell whether ``value`` is a valid command name: 1 to 12 of ``[a-z0-9_]``.

    :param value: anything.
    :return: ``True`` for a string that can be sent as a frame command.
    """
    return isinstance(value, str) and _COMMAND_RE.fullmatch(value) is not None


def _check_magic(magic: bytes) -> bytes:
    if not isinstance(magic, bytes) or len(magic) != MAGIC_SIZE:
        raise FramingError(f"magic must be {MAGIC_SIZE} bytes, not {magic!r}")
    return magic


@dataclass(frozen=True)
class Frame:
    """
    One frame taken off the wire, checksum verified.

    :ivar command: the command name, 1 to 12 of ``[a-z0-9_]``.
    :ivar payload: the payload bytes, at most the decoder's limit.
    """

    command: str
    payload: bytes


def encode_frame(magic: bytes, command: str, payload: bytes, *, checksummed: bool = True) -> bytes:
    """
    Build the bytes of one frame.

    :param magic: the network magic (:func:`network_magic`), 4 bytes.
    :param command: 1 to 12 of ``[a-z0-9_]``.
    :param payload: at most :data:`MAX_PAYLOAD` bytes.
    :param checksummed: with the payload's checksum; else :data:`NO_CHECKSUM`.
    :return: header and payload, ready to write to the link.
    :raises FramingError: for a bad magic, a bad command or an oversize payload.
    """
    _check_magic(magic)
    if not is_command(command):
        raise FramingError(f"invalid command {command!r} (expected 1 to 12 of [a-z0-9_])")
    if len(payload) > MAX_PAYLOAD:
        raise FramingError(f"{command}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    payload = bytes(payload)
    check = checksum(payload) if checksummed else NO_CHECKSUM
    header = _HEADER.pack(magic, command.encode("ascii"), len(payload), check)
    return header + payload


def _parse_command(raw: bytes) -> str:
    """
    Read the 12-byte command field.

    :raises FramingError: unless it is 1 to 12 of ``[a-z0-9_]`` followed
        only by NUL bytes.
    """
    name = raw.rstrip(b"\0")
    if b"\0" in name:
        raise FramingError(f"command field {raw!r} has a NUL byte before its end")
    if _COMMAND_BYTES_RE.fullmatch(name) is None:
        raise FramingError(f"invalid command field {raw!r} (expected 1 to 12 of [a-z0-9_])")
    return name.decode("ascii")


class FrameDecoder:
    """
    Cut a byte stream, fed in chunks of any size, into frames.

    Feed bytes with :meth:`feed`, then call :meth:`next_frame` until it
    returns ``None``.  After it raised :class:`FramingError` the decoder is
    poisoned: it drops its buffer, ignores further bytes and raises again on
    every call, since the stream can no longer be resynchronised.

    Drained this way, the decoder holds at most ``HEADER_SIZE +
    max_payload`` bytes plus the last chunk fed.

    :ivar checksummed: whether frames carry a checksum to verify (set it
        to ``False`` between two frames once the link's own integrity
        check covers them; the field is then not looked at).
    """

    def __init__(self, magic: bytes, max_payload: int = MAX_PAYLOAD) -> None:
        """
        :param magic: the network magic every frame must start with.
        :param max_payload: the largest payload accepted, from 0 to
            :data:`MAX_PAYLOAD`.
        :raises FramingError: for a magic that is not 4 bytes.
        :raises ValueError: for a ``max_payload`` out of range.
        """
        self._magic = _check_magic(magic)
        if (
            isinstance(max_payload, bool)
            or not isinstance(max_payload, int)
            or not 0 <= max_payload <= MAX_PAYLOAD
        ):
            raise ValueError(f"max_payload must be from 0 to {MAX_PAYLOAD}, not {max_payload!r}")
        self._max_payload = max_payload
        self._buffer = bytearray()
        self._offset = 0
        # (command, length, checksum) of a header checked but whose payload
        # is not complete yet.
        self._pending: tuple[str, int, bytes] | None = None
        self._error: str | None = None
        self.checksummed = True

    @property
    def buffered(self) -> int:
        """The number of bytes received but not yet returned in a frame."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> None:
        """
        Add bytes received from the link.  Only buffers; nothing is parsed.

        :param data: the next chunk of the stream, of any size.
        """
        if self._error is not None:
            return
        self._compact()
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """
        Take the next complete frame off the buffer.

        :return: the frame, or ``None`` if more bytes are needed.
        :raises FramingError: for a bad magic, command, length or checksum,
            and on every call after that.
        """
        if self._error is not None:
            raise FramingError(f"stream already failed: {self._error}")
        try:
            frame = self._next_frame()
        except FramingError as error:
            self._error = str(error)
            self._buffer = bytearray()
            self._offset = 0
            self._pending = None
            raise
        if frame is None:
            self._compact()
        return frame

    def _next_frame(self) -> Frame | None:
        start = self._offset
        if self._pending is None:
            if self.buffered < HEADER_SIZE:
                return None
            self._pending = self._parse_header(start)
        command, length, expected = self._pending
        end = start + HEADER_SIZE + length
        if len(self._buffer) < end:
            return None
        with memoryview(self._buffer) as view:
            payload = bytes(view[start + HEADER_SIZE : end])
        if self.checksummed and checksum(payload) != expected:
            raise FramingError(
                f"{command}: checksum mismatch (header {expected.hex()}, "
                f"payload {checksum(payload).hex()})"
            )
        self._pending = None
        self._offset = end
        if end >= _COMPACT_THRESHOLD and 2 * end >= len(self._buffer):
            self._compact()
        return Frame(command, payload)

    def _parse_header(self, start: int) -> tuple[str, int, bytes]:
        magic, raw_command, length, expected = _HEADER.unpack_from(self._buffer, start)
        if magic != self._magic:
            raise FramingError(f"bad magic {magic.hex()} (expected {self._magic.hex()})")
        command = _parse_command(raw_command)
        if length > self._max_payload:
            raise FramingError(
                f"{command}: payload length {length} exceeds the limit of {self._max_payload}"
            )
        return command, length, expected

    def _compact(self) -> None:
        """Drop the consumed bytes at the front of the buffer."""
        if self._offset:
            del self._buffer[: self._offset]
            self._offset = 0
