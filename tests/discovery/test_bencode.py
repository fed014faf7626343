"""Tests for :mod:`bitfitech.discovery.kademlia.bencode`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bitfitech.discovery.kademlia.bencode import (
    COMPILED,
    MAX_DEPTH,
    MAX_INT_DIGITS,
    BencodeError,
    Value,
    decode,
    encode,
    encode_plain,
    pure_decode,
)

values = st.recursive(
    st.integers() | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.binary(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """C{data} with one byte changed, removed or inserted, or cut short."""
    n = len(data)
    return st.one_of(
        st.tuples(st.integers(0, n - 1), st.integers(0, 255)).map(
            lambda p: data[: p[0]] + bytes([p[1]]) + data[p[0] + 1 :]
        ),
        st.integers(0, n - 1).map(lambda i: data[:i] + data[i + 1 :]),
        st.tuples(st.integers(0, n), st.integers(0, 255)).map(
            lambda p: data[: p[0]] + bytes([p[1]]) + data[p[0] :]
        ),
        st.integers(0, n).map(lambda i: data[:i]),
    )


SAMPLE = encode(
    {
        "t": b"aa",
        "y": "r",
        "r": {"id": b"x" * 20, "nodes": b"n" * 26, "values": [b"123456"], "token": b"tok"},
    }
)

REJECTED = [
    b"",
    b"i",
    b"ie",
    b"i-e",
    b"i-0e",
    b"i03e",
    b"i1.5e",
    b"i 1e",
    b"i1_0e",
    b"i" + b"9" * 100 + b"e",
    b"5:abc",
    b"03:abc",
    b"-1:a",
    b"x",
    b"l",
    b"li1e",
    b"d",
    b"d1:a",
    b"di1ei2ee",
    b"d1:ai1e1:ai2ee",
    b"i1ei2e",
    b"4:spamx",
    b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1),
]
"""Inputs that are not one canonical bencoded value."""


class EncodeTests(SynchronousTestCase):
    """Tests for :func:`encode`."""

    def test_types(self) -> None:
        """Integers, strings, lists and dicts have their BEP 3 forms."""
        self.assertEqual(encode(42), b"i42e")
        self.assertEqual(encode(-3), b"i-3e")
        self.assertEqual(encode(0), b"i0e")
        self.assertEqual(encode(b"spam"), b"4:spam")
        self.assertEqual(encode("é"), b"2:\xc3\xa9")
        self.assertEqual(encode([b"a", 1, ()]), b"l1:ai1elee")
        self.assertEqual(encode({}), b"de")

    def test_keys_sorted(self) -> None:
        """Dictionary keys are written in byte order, whatever the insertion order."""
        self.assertEqual(encode({b"b": 1, "a": 2, b"\xff": 3}), b"d1:ai2e1:bi1e1:\xffi3ee")

    def test_unencodable(self) -> None:
        """Booleans, floats, None, other key types and duplicate keys are refused."""
        for value in (True, 1.5, None, {1: b"x"}, {"a": 1, b"a": 2}, object()):
            self.assertRaises(BencodeError, encode, value)


class DecodeTests(SynchronousTestCase):
    """Tests for :func:`decode`."""

    def test_values(self) -> None:
        """Each type decodes; strings come back as bytes."""
        self.assertEqual(decode(b"i-42e"), -42)
        self.assertEqual(decode(b"0:"), b"")
        self.assertEqual(decode(b"l4:spami3ee"), [b"spam", 3])
        self.assertEqual(decode(b"d3:cow3:moo4:spaml1:aee"), {b"cow": b"moo", b"spam": [b"a"]})

    def test_unsorted_keys_accepted(self) -> None:
        """Several clients misorder keys: accepted."""
        self.assertEqual(decode(b"d1:bi1e1:ai2ee"), {b"a": 2, b"b": 1})

    def test_rejections(self) -> None:
        """Malformed, non-canonical, truncated or trailing input raises BencodeError."""
        for data in REJECTED:
            with self.subTest(data=data):
                self.assertRaises(BencodeError, decode, data)

    def test_depth_limit(self) -> None:
        """Nesting up to the limit is fine."""
        data = b"l" * MAX_DEPTH + b"e" * MAX_DEPTH
        self.assertIsInstance(decode(data), list)

    def test_not_bytes(self) -> None:
        """Only bytes are decoded."""
        self.assertRaises(BencodeError, decode, "i1e")  # type: ignore[arg-type]

    @given(values)
    def test_round_trip(self, value: Any) -> None:
        """Whatever is encoded decodes to the same value, and re-encodes identically."""
        data = encode(value)
        self.assertEqual(decode(data), value)
        self.assertEqual(encode(decode(data)), data)

    @settings(max_examples=500)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Any bytes decode or raise BencodeError, nothing else."""
        try:
            decode(data)
        except BencodeError:
            pass

    @settings(max_examples=500)
    @given(mutations(SAMPLE))
    def test_mutated_messages(self, data: bytes) -> None:
        """A valid message with one byte changed decodes or raises BencodeError."""
        try:
            value = decode(data)
        except BencodeError:
            return
        self.assertEqual(decode(encode(value)), value)


def bencode_like() -> st.SearchStrategy[bytes]:
    """Bytes made of bencode's own tokens, to reach every branch of both decoders."""
    tokens = [b"i", b"e", b"l", b"d", b":", b"-", b"0", b"1", b"9", b"1:a", b"2:ab", b"i0e",
              b"i-1e", b"de", b"le", b"x", b"9" * 64, b"9" * 65]  # fmt: skip
    return st.lists(st.sampled_from(tokens), max_size=40).map(b"".join)


def verdict(decoder: Callable[[bytes], Value], data: bytes) -> Value | type[BencodeError]:
    """What C{decoder} makes of C{data}: its value, or BencodeError."""
    try:
        return decoder(data)
    except BencodeError:
        return BencodeError


class CompiledPathTests(SynchronousTestCase):
    """
    :func:`decode` and :func:`encode_plain` go through fastbencode when its
    compiled extension is installed: they must agree with :func:`pure_decode`
    and :func:`encode` on every input.  (Without it, they are those.)
    """

    def test_compiled_in_use(self) -> None:
        """With fastbencode's compiled extension installed, the fast path is on."""
        try:
            from fastbencode import bdecode  # type: ignore[attr-defined]
        except ImportError:
            raise SkipTest("fastbencode is not installed") from None
        if bdecode.__module__ != "fastbencode._bencode_rs":
            raise SkipTest("fastbencode has no compiled extension here")
        self.assertTrue(COMPILED)

    def test_rejections_by_the_reference(self) -> None:
        """Each rejected input is rejected by the reference too, not only by the fast path."""
        for data in REJECTED:
            with self.subTest(data=data):
                self.assertRaises(BencodeError, pure_decode, data)

    def test_bounds(self) -> None:
        """At and just past each bound, and on fastbencode's refusals, one verdict."""
        cases = [
            b"l" * MAX_DEPTH + b"e" * MAX_DEPTH,
            b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1),
            b"d1:a" * MAX_DEPTH + b"0:" + b"e" * MAX_DEPTH,
            b"d1:a" * (MAX_DEPTH + 1) + b"0:" + b"e" * (MAX_DEPTH + 1),
            b"i" + b"9" * MAX_INT_DIGITS + b"e",
            b"i-" + b"9" * MAX_INT_DIGITS + b"e",
            b"i" + b"9" * (MAX_INT_DIGITS + 1) + b"e",
            b"i-" + b"9" * (MAX_INT_DIGITS + 1) + b"e",
            b"%d:" % (MAX_INT_DIGITS + 1) + b"9" * (MAX_INT_DIGITS + 1),
            b"d1:bi1e1:ai2ee",
            b"d1:ai1e1:ai2ee",
        ]
        for data in cases:
            with self.subTest(data=data[:20]):
                self.assertEqual(verdict(decode, data), verdict(pure_decode, data))
        self.assertEqual(decode(b"i-" + b"9" * MAX_INT_DIGITS + b"e"), -int(b"9" * MAX_INT_DIGITS))
        self.assertRaises(BencodeError, decode, b"i" + b"9" * (MAX_INT_DIGITS + 1) + b"e")
        self.assertRaises(BencodeError, pure_decode, b"i" + b"9" * (MAX_INT_DIGITS + 1) + b"e")
        self.assertEqual(decode(b"d1:bi1e1:ai2ee"), {b"b": 1, b"a": 2})

    @settings(max_examples=1000)
    @given(bencode_like())
    def test_agree_on_token_soup(self, data: bytes) -> None:
        """Both decoders give the same value, or both BencodeError, on near-bencode."""
        self.assertEqual(verdict(decode, data), verdict(pure_decode, data))

    @settings(max_examples=500)
    @given(mutations(SAMPLE))
    def test_agree_on_mutated_messages(self, data: bytes) -> None:
        """Both decoders agree on a KRPC reply with one byte changed."""
        self.assertEqual(verdict(decode, data), verdict(pure_decode, data))

    @given(values)
    def test_agree_on_values(self, value: Any) -> None:
        """Both decoders decode every encoding alike, and encode_plain writes what encode does."""
        data = encode(value)
        self.assertEqual(decode(data), pure_decode(data))
        self.assertEqual(encode_plain(value), data)

    def test_encode_plain_other_types(self) -> None:
        """What fastbencode does not take, encode_plain hands to encode."""
        self.assertEqual(encode_plain({"a": [bytearray(b"x"), "é"]}), b"d1:al1:x2:\xc3\xa9ee")  # type: ignore[dict-item]
        for value in (1.5, None, {1: b"x"}, {"a": 1, b"a": 2}, object()):
            self.assertRaises(BencodeError, encode_plain, value)
        deep: list[Any] = []
        for _ in range(MAX_DEPTH + 2):
            deep = [deep]
        self.assertRaises(BencodeError, encode_plain, deep)
