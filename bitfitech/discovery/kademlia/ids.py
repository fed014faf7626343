"""Node ids, info-hashes and the XOR metric of the DHT.

Data path: every layer above the codec: the routing table files contacts by
id, lookups walk towards a target by XOR distance, and the service
announces under the info-hash of each of its markets (:func:`market_info_hash`).

Ids and info-hashes are 160-bit values held as 20-byte ``bytes``; distances
and bucket ranges are plain ``int``.  Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import hashlib
import random

ID_SIZE = 20
"""Bytes in a node id or an info-hash."""

ID_BITS = ID_SIZE * 8
"""Bits in a node id: 160."""

ID_SPACE = 1 << ID_BITS
"""Number of possible ids: ids are the integers ``0 <= n < ID_SPACE``."""


def market_info_hash(network: str, market: str) -> bytes:
    """
    The info-hash under which the nodes of one bitfi network that carry one
    market (trading pair) meet.

    The rule: the SHA-1 digest of the ASCII string ``bitfi:<network>:<market>``,
    for instance ``sha1(b"bitfi:main:BTC/USD")``.  Every node announces its
    P2P port under the info-hash of each of its markets and looks them up
    to find the others; a node of one market announces the same hash as
    the nodes did when a node had one pair.

    :param network: the network name (``main``, ``test``...).
    :param market: the market, a pair such as ``BTC/USD``.
    :raise UnicodeEncodeError: if either name is not ASCII.
    """
    return hashlib.sha1(f"bitfi:{network}:{market}".encode("ascii")).digest()


network_info_hash = market_info_hash
"""The older name of :func:`market_info_hash` (``network_info_hash(network, pair)``)."""


def is_id(value: object) -> bool:
    """Whether C{value} is a well-formed id: 20 bytes."""
    return isinstance(value, bytes) and len(value) == ID_SIZE


def id_to_int(node_id: bytes) -> int:
    """An id as an integer (big-endian), for ranges and distances."""
    return int.from_bytes(node_id, "big")


def int_to_id(value: int) -> bytes:
    """The id whose integer value is C{value} (``0 <= value < ID_SPACE``)."""
    return value.to_bytes(ID_SIZE, "big")


def distance(a: bytes, b: bytes) -> int:
    """The XOR distance between two ids, as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def random_id(rng: random.Random) -> bytes:
    """A uniformly random id drawn from C{rng}."""
    return int_to_id(rng.getrandbits(ID_BITS))


def random_id_between(rng: random.Random, low: int, high: int) -> bytes:
    """A uniformly random id in the range ``low <= id < high``."""
    return int_to_id(rng.randrange(low, high))


def parse_hex_id(text: str) -> bytes | None:
    """The id written as 40 hex digits in C{text}, or ``None`` if it is not one."""
    try:
        value = bytes.fromhex(text)
    except (ValueError, TypeError):
        return None
    return value if len(value) == ID_SIZE else None
