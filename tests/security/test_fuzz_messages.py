"""Fuzz tests of :mod:`bitfitech.wire.messages`: hostile payloads to typed messages.

Whatever a frame carries, :func:`decode_message` returns a valid message of
the frame's command or raises :class:`MessageError`, nothing else.
"""

from __future__ import annotations

import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.wire.messages import (
    COMMANDS,
    GetAddr,
    Message,
    MessageError,
    Ping,
    Pong,
    Unknown,
    Verack,
    decode_message,
    encode_message,
)

from ..wire.test_messages import (
    EXAMPLES,
    VERSION_4,
    addrs,
    dialbacks,
    dialed_backs,
    events_messages,
    getdatas,
    invs,
    prunes,
    stamps_messages,
    syncs,
    u64,
    versions,
)
from .strategies import byte_pieces, mutated

known_messages = st.one_of(
    versions,
    addrs,
    invs,
    getdatas,
    events_messages,
    syncs,
    stamps_messages,
    prunes,
    dialbacks,
    dialed_backs,
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.just(Verack()),
    st.just(GetAddr()),
    st.sampled_from(EXAMPLES),
)
commands = (
    st.sampled_from(sorted(COMMANDS)) | st.from_regex(r"\A[a-z0-9_]{1,12}\Z") | st.text(max_size=14)
)


def nested(depth: int) -> bytes:
    """A JSON array nested ``depth`` deep."""
    return b"[" * depth + b"]" * depth


class DecodeTests(SynchronousTestCase):
    """Only MessageError comes out of the codec."""

    def check(self, command: str, payload: bytes) -> Message | None:
        """Decode; a message must be of ``command`` and survive a round trip."""
        try:
            message = decode_message(command, payload)
        except MessageError:
            return None
        self.assertEqual(message.command, command)
        self.assertEqual(decode_message(*encode_message(message)), message)
        return message

    @settings(max_examples=300)
    @given(commands, st.binary(max_size=300))
    def test_arbitrary_payloads(self, command: str, payload: bytes) -> None:
        """Random bytes under any command name, known or not, valid or not."""
        message = self.check(command, payload)
        if command not in COMMANDS and message is not None:
            self.assertEqual(message, Unknown(command, payload))

    @settings(max_examples=300)
    @given(known_messages, st.data())
    def test_mutated_messages(self, message: Message, data: st.DataObject) -> None:
        """A valid message of every type, its encoding damaged by random edits."""
        command, payload = encode_message(message)
        self.check(command, data.draw(mutated(payload, byte_pieces)))

    @settings(max_examples=200)
    @given(known_messages, st.sampled_from(sorted(COMMANDS)))
    def test_payload_under_another_command(self, message: Message, command: str) -> None:
        """A valid payload sent under another (or the same) known command."""
        self.check(command, encode_message(message)[1])

    @settings(max_examples=50)
    @given(
        st.sampled_from(sorted(COMMANDS)),
        st.sampled_from(["nonce", "ttl", "more", "ids", "events", "vector", "digest", "port",
                         "addrs", "services", "network", "protocol_version", "witnesses",
                         "market", "markets", "chains", "stamps"]),
        st.integers(1, 1200),
    )  # fmt: skip
    def test_deep_nesting_in_any_field(self, command: str, field: str, depth: int) -> None:
        """Arrays nested up to past the parser's limit, as the value of any field."""
        self.check(command, b'{"%s":%s}' % (field.encode(), nested(depth)))


class RegressionTests(SynchronousTestCase):
    """Inputs that once raised something other than MessageError."""

    def test_nesting_just_under_the_parser_limit(self) -> None:
        """
        ``{"nonce": [[...]]}`` nested 992 deep (at the top of the stack; the
        depth that fails moves with the caller's stack) parsed, then the
        error message's ``repr`` of the value raised RecursionError, which
        escaped ``dataReceived``.  Every depth near the limit is tried, at
        several stack depths, for each field reported through a ``repr``.
        """
        limit = sys.getrecursionlimit()
        version = encode_message(VERSION_4)[1].replace(b'"ETH/USD"', b"%s")
        templates = [
            ("ping", b'{"nonce":%s}'),
            ("inv", b'{"ids":[%s],"ttl":0}'),
            ("events", b'{"events":[],"ttl":0,"more":%s}'),
            ("addr", b'{"addrs":[{"host":"a","port":%s,"time":0}]}'),
            ("prune", b'{"market":%s}'),
            ("version", version),
        ]

        def at_depth(frames: int, command: str, payload: bytes) -> None:
            if frames:
                at_depth(frames - 1, command, payload)
                return
            with self.assertRaises(MessageError):
                decode_message(command, payload)

        for command, template in templates:
            for depth in range(limit - 120, limit + 5):
                payload = template % nested(depth)
                for frames in (0, 20):
                    at_depth(frames, command, payload)

    def test_port_junk_is_not_repr_by_check_port(self) -> None:
        """A port that is not an integer is refused by the codec itself, briefly."""
        payload = b'{"addrs":[{"host":"a","port":%s,"time":0}]}' % nested(500)
        with self.assertRaises(MessageError) as caught:
            decode_message("addr", payload)
        self.assertEqual(caught.exception.field, "addrs[0].port")
        self.assertLess(len(str(caught.exception)), 200)
