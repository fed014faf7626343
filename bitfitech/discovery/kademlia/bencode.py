"""Bencoding (BEP 3): the bottom layer of the DHT's wire stack.

Data path: UDP datagram -> :func:`decode` (this module) -> a dict of
``bytes`` keys -> :mod:`~bitfitech.discovery.kademlia.krpc` -> typed KRPC
messages; and back through :func:`encode`.

Four types: integers ``i42e``, byte strings ``4:spam``, lists ``l...e`` and
dictionaries ``d...e`` whose keys are byte strings.  The decoder is strict
where leniency would make two encodings of one value (leading zeros,
``-0``, duplicate keys, trailing bytes) and bounded (nesting depth, integer
digits); dictionary keys out of order are accepted, as several clients
send them.  Whatever the input, it raises nothing but
:class:`BencodeError`.  Pure: no Twisted, no I/O.

Two implementations, one verdict.  This module's own decoder
(:func:`pure_decode`) is the reference; fastbencode's compiled one (Rust,
5 to 12 times faster on KRPC messages) is the fast path of :func:`decode`
and only ever returns what the reference would.  It is as strict on
leading zeros, ``-0``, duplicate keys and trailing bytes; it is given our
depth bound; it never sees a run of more than :data:`MAX_INT_DIGITS`
digits (it would take integers of up to 4,300); and whatever it refuses,
out-of-order keys among it, goes to the reference, which gives the value
or the error.  :func:`encode_plain`, which writes the DHT's messages,
likewise uses fastbencode's encoder (3 times faster) for the types it
shares with :func:`encode`.  Without the compiled extension (not
installed, a platform without a wheel, a version before 0.3.11) this
module does it all; :data:`COMPILED` says which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

MAX_DEPTH = 32
"""Deepest nesting of lists and dictionaries :func:`decode` accepts."""

MAX_INT_DIGITS = 64
"""Most digits of an integer :func:`decode` accepts (far beyond any KRPC field)."""

Value = int | bytes | list[Any] | dict[bytes, Any]
"""What :func:`decode` returns: ``int``, ``bytes``, lists and dicts of them."""


class BencodeError(ValueError):
    """The bytes are not one well-formed bencoded value, or a value cannot be encoded."""


def encode(value: Any) -> bytes:
    """
    Bencode C{value}.

    ``str`` is written as its UTF-8 bytes, tuples as lists, and dictionary
    keys (``bytes`` or ``str``) in sorted order.

    :raise BencodeError: for a value of another type (``bool``, ``float``,
        ``None``...) or a dictionary with two equal keys.
    """
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def encode_plain(value: Value) -> bytes:
    """
    Bencode C{value}, made of ``bytes``, ``int`` and lists and
    ``bytes``-keyed dicts of them, as a KRPC message is: the bytes of
    :func:`encode`, written by fastbencode when it is installed.

    Anything else goes to :func:`encode`, except ``bool``, which
    fastbencode writes as ``i0e`` or ``i1e`` where :func:`encode` refuses
    it: pass none.

    :raise BencodeError: as :func:`encode`.
    """
    if _compiled_encode is not None:
        try:
            data: bytes = _compiled_encode(value, max_depth=MAX_DEPTH)
        except Exception:  # a type it does not take, or too deep: ours decides
            pass
        else:
            return data
    return encode(value)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError("value nested too deeply")
    kind = type(value)
    # Exact types first: they are nearly all a KRPC message holds.
    if kind is bytes:
        out.append(b"%d:%s" % (len(value), value))
    elif kind is int:
        out.append(b"i%de" % value)
    elif kind is list or kind is tuple:
        out.append(b"l")
        for item in value:
            if type(item) is bytes:
                out.append(b"%d:%s" % (len(item), item))
            else:
                _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, bool):
        raise BencodeError("booleans have no bencoding")
    elif isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        out.append(b"%d:%s" % (len(data), data))
    elif isinstance(value, str):
        _encode(value.encode("utf-8"), out, depth)
    elif isinstance(value, Mapping):
        items: dict[bytes, Any] = {}
        for key, item in value.items():
            if isinstance(key, str):
                key = key.encode("utf-8")
            if not isinstance(key, bytes):
                raise BencodeError(f"dictionary key of type {type(key).__name__}")
            if key in items:
                raise BencodeError(f"duplicate dictionary key {key!r}")
            items[key] = item
        out.append(b"d")
        for key in sorted(items):
            out.append(b"%d:%s" % (len(key), key))
            _encode(items[key], out, depth + 1)
        out.append(b"e")
    elif isinstance(value, Sequence):
        _encode(list(value), out, depth)
    else:
        raise BencodeError(f"cannot bencode a {type(value).__name__}")


def decode(data: bytes) -> Value:
    """
    The one bencoded value that is the whole of C{data}: what
    :func:`pure_decode` returns, by fastbencode when it can.

    :raise BencodeError: if C{data} is anything else (and for nothing else).
    """
    if (
        _compiled_decode is not None
        and type(data) is bytes
        and _LONG_DIGITS not in data.translate(_DIGITS_AS_ZERO)
    ):
        try:
            value: Value = _compiled_decode(data, max_depth=MAX_DEPTH)
        except Exception:  # any refusal: the reference gives the verdict
            pass
        else:
            return value
    return pure_decode(data)


def pure_decode(data: bytes) -> Value:
    """
    The one bencoded value that is the whole of C{data}, decoded by this
    module alone: the reference that :func:`decode` agrees with.

    :raise BencodeError: if C{data} is anything else (and for nothing else).
    """
    if not isinstance(data, bytes):
        raise BencodeError(f"bencoded data must be bytes, not {type(data).__name__}")
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} bytes after the value")
    return value


def _decode(data: bytes, index: int, depth: int) -> tuple[Value, int]:
    if index >= len(data):
        raise BencodeError("truncated")
    lead = data[index]
    if lead == 0x69:  # i
        return _decode_int(data, index + 1)
    if 0x30 <= lead <= 0x39:  # a digit: a byte string
        return _decode_bytes(data, index)
    if depth >= MAX_DEPTH:
        raise BencodeError("nested too deeply")
    if lead == 0x6C:  # l
        items: list[Any] = []
        index += 1
        while True:
            if index >= len(data):
                raise BencodeError("truncated list")
            if data[index] == 0x65:  # e
                return items, index + 1
            item, index = _decode(data, index, depth + 1)
            items.append(item)
    if lead == 0x64:  # d
        result: dict[bytes, Any] = {}
        index += 1
        while True:
            if index >= len(data):
                raise BencodeError("truncated dictionary")
            if data[index] == 0x65:
                return result, index + 1
            if not 0x30 <= data[index] <= 0x39:
                raise BencodeError("dictionary key is not a byte string")
            key, index = _decode_bytes(data, index)
            if key in result:
                raise BencodeError(f"duplicate dictionary key {key!r}")
            result[key], index = _decode(data, index, depth + 1)
    raise BencodeError(f"unexpected byte {lead:#04x} at {index}")


def _decode_int(data: bytes, start: int) -> tuple[int, int]:
    end = data.find(b"e", start, start + MAX_INT_DIGITS + 2)
    if end < 0:
        raise BencodeError("unterminated or overlong integer")
    digits = data[start:end]
    body = digits[1:] if digits[:1] == b"-" else digits
    if not body or not body.isdigit() or len(body) > MAX_INT_DIGITS:
        raise BencodeError(f"bad integer {digits!r}")
    if (body[0] == 0x30 and len(body) > 1) or digits == b"-0":
        raise BencodeError(f"non-canonical integer {digits!r}")
    return int(digits), end + 1


def _decode_bytes(data: bytes, start: int) -> tuple[bytes, int]:
    colon = data.find(b":", start, start + MAX_INT_DIGITS + 1)
    if colon < 0:
        raise BencodeError("unterminated or overlong string length")
    digits = data[start:colon]
    if not digits.isdigit():
        raise BencodeError(f"bad string length {digits!r}")
    if digits[0] == 0x30 and len(digits) > 1:
        raise BencodeError(f"non-canonical string length {digits!r}")
    length = int(digits)
    end = colon + 1 + length
    if end > len(data):
        raise BencodeError("truncated string")
    return data[colon + 1 : end], end


def _load_compiled() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """fastbencode's compiled decoder and encoder, if installed and bounded by depth."""
    try:
        from fastbencode import bdecode, bencode  # type: ignore[attr-defined]
    except ImportError:
        return None
    if bdecode.__module__ != "fastbencode._bencode_rs":
        return None  # its pure-Python fallback, looser: int() takes b" 1" and b"1_0"
    try:
        bdecode(b"le", max_depth=1)
        bencode([], max_depth=1)
    except TypeError:
        return None  # before 0.3.11: no max_depth
    return bdecode, bencode


_compiled_decode, _compiled_encode = _load_compiled() or (None, None)
# A run of more digits than an integer may have, found by mapping every digit
# to 0 and searching with bytes' own fast search (a regex takes 8 times as long).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * (MAX_INT_DIGITS + 1)

COMPILED = _compiled_decode is not None
"""Whether fastbencode's compiled codec is the fast path of :func:`decode` and
:func:`encode_plain`."""
