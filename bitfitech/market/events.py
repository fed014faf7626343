"""Signed events: the orders and cancels that every node's ledger is made of.

Data path: the API (or a peer's ``events`` message) -> :mod:`events` ->
:mod:`bitfitech.market.ledger`.  An event is one line of printable ASCII,
its *text*, signed with its author's Ed25519 key::

    bitfi1 <network> <pair> <author> <seq> <lamport> <ts> order <side> <type> <price> <amount>
    bitfi1 <network> <pair> <author> <seq> <lamport> <ts> cancel <order id>

Fields are separated by one space.  ``author`` is the 32-byte public key in
lowercase hex; ``seq`` numbers the author's events 1, 2, 3, ... without
gaps; ``lamport`` is the author's Lamport clock; ``ts`` the author's wall
clock in unix milliseconds (shown to users, never used for ordering);
``price`` is ``-`` for a market order.  Integers are written without
leading zeros.  The text *is* the canonical encoding: it is what is signed,
its SHA-256 is the event's id, and nodes forward it unchanged.  Binding
network and pair into the text stops an event from being replayed on
another book.

An event's signature is either its own (128 hex digits: Ed25519 over the
text) or a *batch signature*: one Ed25519 signature over the root of a
Merkle tree of many events' ids, with the event's place in the tree and
the sibling hashes that lead from its id to the root::

    b<size>.<index>.<signature: 128 hex><sibling hashes: 64 hex each>

An author that signs many events at once (a node's group commit, a batch
of orders) pays for one signature, and so does every node that checks
them: the root's check is remembered, and each further event of the batch
costs a few SHA-256 hashes.  Every event still carries everything needed
to check it alone, so the rest of the system (journal, relay, sync,
evidence of equivocation) treats the signature as an opaque string.

Pure: no Twisted, no I/O.  :func:`parse_event` checks the form,
:func:`verify_event` the signature (kept apart so a node can drop a
duplicate before paying for a signature check, and check many in threads).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache
from sys import intern
from typing import Final, NamedTuple

import nacl.bindings
import nacl.exceptions

from .book import MARKET, ORDER_TYPES

TAG: Final = "bitfi1"
"""First field of every event text: the format and its version."""

ORDER: Final = "order"
CANCEL: Final = "cancel"

MAX_INT: Final = 2**63 - 1
"""Largest ``seq`` or ``lamport``."""

MAX_TS: Final = 2**53 - 1
"""Largest ``ts`` (unix milliseconds)."""

MAX_TEXT: Final = 400
"""Longest event text, in characters (the wire limit too)."""

MAX_BATCH: Final = 1024
"""Most events under one batch signature (a tree at most 10 levels deep)."""

BATCH_TAG: Final = "bitfi-batch1"
"""First field of the text a batch signature signs: ``bitfi-batch1 <size> <root>``."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
SIGNATURE_LENGTH: Final = 128
"""Characters of an event's own signature (batch signatures are longer)."""

_UNSIGNED: Final = "0" * SIGNATURE_LENGTH
"""A well-formed placeholder signature, for parsing a draft before it is signed."""

_HEX128 = re.compile(r"[0-9a-f]{128}")
_BATCH_SIG = re.compile(r"b([1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})\.[0-9a-f]{128,768}")
"""A batch signature: size, index, then the signature and the path (a
whole number of hashes: see :func:`_is_signature`)."""


def _is_signature(sig: str) -> bool:
    """Whether C{sig} has the shape of an event signature: its own, or a batch signature."""
    if len(sig) == SIGNATURE_LENGTH:
        return _HEX128.fullmatch(sig) is not None
    match = _BATCH_SIG.fullmatch(sig)
    return match is not None and (len(sig) - match.end(2) - 1) % 64 == 0


_DECIMAL = re.compile(r"[0-9]{1,64}(?:\.[0-9]{1,63})?")
_INTEGER = re.compile(r"0|[1-9][0-9]{0,18}")
_DEC = r"[0-9]{1,64}(?:\.[0-9]{1,63})?"
_INT = r"(0|[1-9][0-9]{0,18})"
_WELL_FORMED = re.compile(
    rf"{TAG} ([\x21-\x7e]+) ([\x21-\x7e]+) ([0-9a-f]{{64}}) {_INT} {_INT} {_INT} "
    rf"(?:{ORDER} (buy|sell) ({'|'.join(sorted(ORDER_TYPES))}) (-|{_DEC}) ({_DEC})"
    rf"|{CANCEL} ([0-9a-f]{{64}}))"
)
"""A well-formed order or cancel, in one match (values still to range-check)."""


class EventError(ValueError):
    """An event that is malformed or badly signed; the message says why."""


class Key(NamedTuple):
    """An event's place in the total order: Lamport time, then author, then seq."""

    lamport: int
    author: str
    seq: int


class Event:
    """
    One parsed event.  Immutable by convention; compared by :attr:`id`.

    :ivar id: SHA-256 of the text, 64 lowercase hex digits.
    :ivar network: the network it is for (the parser's, shared).
    :ivar pair: the pair it is for (the parser's, shared).
    :ivar sig: the Ed25519 signature of the text, 128 lowercase hex
        digits, or a batch signature (see the module's docstring).
    :ivar author: the author's public key, 64 lowercase hex digits.
    :ivar seq: the author's sequence number, from 1.
    :ivar lamport: the Lamport time, from 1.
    :ivar ts: the author's clock, unix milliseconds.
    :ivar kind: ``"order"`` or ``"cancel"``.
    :ivar side: ``"buy"`` or ``"sell"`` (orders; else empty).
    :ivar order_type: one of the engine's order types (orders; else empty).
    :ivar price: a decimal string, or ``None`` for market orders and cancels.
    :ivar amount: a decimal string (orders; else empty).
    :ivar target: the id of the order to cancel (cancels; else empty).
    :ivar key: the total-order key, ``(lamport, author, seq)``.
    """

    __slots__ = (
        "id", "sig", "network", "pair", "author", "seq", "lamport", "ts", "kind", "side",
        "order_type", "price", "amount", "target", "key", "_text",
    )  # fmt: skip

    id: str
    sig: str
    network: str
    pair: str
    author: str
    seq: int
    lamport: int
    ts: int
    kind: str
    side: str
    order_type: str
    price: str | None
    amount: str
    target: str
    key: Key
    _text: str | None

    @property
    def text(self) -> str:
        """
        The canonical text: the one parsed until :meth:`forget_text`, then
        written again from the fields, exactly the same (the parser takes
        only the canonical form).
        """
        text = self._text
        if text is not None:
            return text
        if self.kind == ORDER:
            price = "-" if self.price is None else self.price
            body = f"{ORDER} {self.side} {self.order_type} {price} {self.amount}"
        else:
            body = f"{CANCEL} {self.target}"
        return (
            f"{TAG} {self.network} {self.pair} {self.author} {self.seq} {self.lamport} "
            f"{self.ts} {body}"
        )

    def forget_text(self) -> None:
        """
        Drop the parsed text (it is journaled): an event held for long keeps
        no second copy of what its fields say, and :attr:`text` writes it
        again when asked (relaying an old event, answering anti-entropy).
        """
        self._text = None

    def __repr__(self) -> str:
        return f"<Event {self.id[:12]} {self.author[:8]}#{self.seq} L{self.lamport} {self.kind}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def is_order(self) -> bool:
        """Whether this event places an order (else it cancels one)."""
        return self.kind == ORDER

    @property
    def wire(self) -> tuple[str, str]:
        """The ``[text, sig]`` pair an ``events`` message carries."""
        return (self.text, self.sig)


def event_id(text: str) -> str:
    """The id of the event whose canonical text is C{text}."""
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _int(token: str, low: int, high: int, name: str) -> int:
    if _INTEGER.fullmatch(token) is None:
        raise EventError(f"{name} must be a decimal integer without leading zeros, not {token!r}")
    value = int(token)
    if not low <= value <= high:
        raise EventError(f"{name} must be from {low} to {high}, not {value}")
    return value


def parse_event(text: str, sig: str, network: str, pair: str) -> Event:
    """
    Parse and check the form of one event (not its signature).

    Well-formed events take one regular expression and a few comparisons;
    anything else goes through the field-by-field checks, which say what
    is wrong.

    :param text: the canonical text.
    :param sig: the signature: 128 lowercase hex digits, or a batch
        signature.
    :param network: this node's network; the event must name it.
    :param pair: this node's pair; the event must name it.
    :raises EventError: for anything malformed, or another network or pair.
    """
    if type(text) is str and type(sig) is str and len(text) <= MAX_TEXT:
        match = _WELL_FORMED.fullmatch(text)
        if match is not None and _is_signature(sig):
            event = _from_match(match, text, sig, network, pair)
            if event is not None:
                return event
    return _parse_checked(text, sig, network, pair)


def _from_match(match: re.Match[str], text: str, sig: str, network: str, pair: str) -> Event | None:
    """The event of a text that matched :data:`_WELL_FORMED`; ``None`` if a value is off."""
    (net, book, author, seq, lamport, ts, side, order_type, price, amount, target) = match.groups()
    seq_n, lamport_n, ts_n = int(seq), int(lamport), int(ts)
    if (
        net != network
        or book != pair
        or not 1 <= seq_n <= MAX_INT
        or not 1 <= lamport_n <= MAX_INT
        or ts_n > MAX_TS
        or (order_type is not None and (order_type == MARKET) != (price == "-"))
    ):
        return None
    event = Event()
    event.id = event_id(text)
    event.sig = sig
    event.network, event.pair = network, pair
    event._text = text
    # An author's key, a side, an order type, a price level: a few values
    # each, held by every event and resting order; one string apiece.
    event.author = author = intern(author)
    event.seq = seq_n
    event.lamport = lamport_n
    event.ts = ts_n
    event.key = Key(lamport_n, author, seq_n)
    if target is None:
        event.kind = ORDER
        event.side, event.order_type = intern(side), intern(order_type)
        event.amount, event.target = amount, ""
        event.price = None if price == "-" else intern(price)
    else:
        event.kind = CANCEL
        event.side = event.order_type = event.amount = ""
        event.price = None
        event.target = target
    return event


def _parse_checked(text: str, sig: str, network: str, pair: str) -> Event:
    """:func:`parse_event` field by field, raising with what is wrong."""
    if type(text) is not str or not 0 < len(text) <= MAX_TEXT or not text.isascii():
        raise EventError(f"event text must be 1 to {MAX_TEXT} ASCII characters")
    if type(sig) is not str or not _is_signature(sig):
        raise EventError(
            "signature must be 128 lowercase hex digits or a batch signature"
            " (b<size>.<index>.<hex>)"
        )
    fields = text.split(" ")
    count = len(fields)
    if count < 8 or fields[0] != TAG:
        raise EventError(f"event text must start with {TAG!r} and have at least 8 fields")
    if fields[1] != network or fields[2] != pair:
        raise EventError(f"event is for {fields[1]} {fields[2]}, not {network} {pair}")
    author = fields[3]
    if _HEX64.fullmatch(author) is None:
        raise EventError("author must be 64 lowercase hex digits")
    event = Event()
    event.id = event_id(text)
    event.sig = sig
    event.network, event.pair = network, pair
    event._text = text
    event.author = author = intern(author)
    event.seq = seq = _int(fields[4], 1, MAX_INT, "seq")
    event.lamport = lamport = _int(fields[5], 1, MAX_INT, "lamport")
    event.ts = _int(fields[6], 0, MAX_TS, "ts")
    event.kind = kind = fields[7]
    event.key = Key(lamport, author, seq)
    if kind == ORDER:
        if count != 12:
            raise EventError("an order has 12 fields")
        side, order_type, price, amount = fields[8:]
        if side != "buy" and side != "sell":
            raise EventError(f"side must be buy or sell, not {side!r}")
        if order_type not in ORDER_TYPES:
            raise EventError(f"unknown order type {order_type!r}")
        if order_type == MARKET:
            if price != "-":
                raise EventError("a market order has price '-'")
            event.price = None
        elif _DECIMAL.fullmatch(price) is None:
            raise EventError(f"price must be a plain decimal, not {price!r}")
        else:
            event.price = intern(price)
        if _DECIMAL.fullmatch(amount) is None:
            raise EventError(f"amount must be a plain decimal, not {amount!r}")
        event.side, event.order_type = intern(side), intern(order_type)
        event.amount, event.target = amount, ""
    elif kind == CANCEL:
        if count != 9:
            raise EventError("a cancel has 9 fields")
        target = fields[8]
        if _HEX64.fullmatch(target) is None:
            raise EventError("the cancelled order id must be 64 lowercase hex digits")
        event.side = event.order_type = event.amount = ""
        event.price = None
        event.target = target
    else:
        raise EventError(f"unknown event kind {kind!r}")
    return event


def signed_by(sig: str, text: str, key: str) -> bool:
    """
    Whether C{sig} (128 hex digits) is the Ed25519 signature of C{text}'s
    ASCII bytes by the public key C{key} (64 hex digits): events and
    witness stamps are both checked so.
    """
    try:
        nacl.bindings.crypto_sign_open(
            bytes.fromhex(sig) + text.encode("ascii"), bytes.fromhex(key)
        )
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def verify_event(event: Event) -> bool:
    """Whether C{event}'s signature (its own or its batch's) is its author's."""
    sig = event.sig
    if len(sig) == SIGNATURE_LENGTH:
        return signed_by(sig, event.text, event.author)
    return _batch_signed(sig, event.id, event.author)


def _node(left: bytes, right: bytes) -> bytes:
    """An inner node of a batch's Merkle tree (RFC 9162's, with ids as leaves)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The size of a tree's left part: the largest power of two below C{size}."""
    return 1 << ((size - 1).bit_length() - 1)


def _tree(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root of a Merkle tree of C{leaves}, and each leaf's path to it (leaf first)."""
    size = len(leaves)
    if size == 1:
        return leaves[0], [[]]
    k = _split(size)
    left, left_paths = _tree(leaves[:k])
    right, right_paths = _tree(leaves[k:])
    for path in left_paths:
        path.append(right)
    for path in right_paths:
        path.append(left)
    return _node(left, right), left_paths + right_paths


def _root(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """
    The root that C{path} leads to from C{leaf} at C{index} of a tree of
    C{size} leaves (RFC 9162, 2.1.3.2); ``None`` if the path has the
    wrong length for that place.
    """
    fn, sn, node = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            node = _node(sibling, node)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            node = _node(node, sibling)
        fn >>= 1
        sn >>= 1
    return node if sn == 0 else None


def batch_text(size: int, root: bytes) -> str:
    """The text a batch signature signs, for a tree of C{size} ids with C{root}."""
    return f"{BATCH_TAG} {size} {root.hex()}"


def _batch_signed(sig: str, event_id: str, author: str) -> bool:
    """Whether the batch signature C{sig} puts C{event_id} under C{author}'s key."""
    match = _BATCH_SIG.fullmatch(sig)
    if match is None:
        return False
    size, index = int(match[1]), int(match[2])
    start = match.end(2) + 1
    if not index < size <= MAX_BATCH or (len(sig) - start) % 64:
        return False
    hashes = bytes.fromhex(sig[start + 128 :])
    path = [hashes[i : i + 32] for i in range(0, len(hashes), 32)]
    root = _root(bytes.fromhex(event_id), index, size, path)
    return root is not None and _root_signed(sig[start : start + 128], size, root, author)


@lru_cache(maxsize=8192)
def _root_signed(sig: str, size: int, root: bytes, key: str) -> bool:
    """
    Whether C{sig} is C{key}'s signature of the batch C{size}, C{root};
    remembered: the events of one batch share it, checked once (the
    answer depends only on the arguments, so a remembered one is as good
    as a new check).
    """
    return signed_by(sig, batch_text(size, root), key)


def decode_event(text: str, sig: str, network: str, pair: str) -> Event:
    """
    :func:`parse_event` and :func:`verify_event` in one.

    :raises EventError: for a malformed or badly signed event.
    """
    event = parse_event(text, sig, network, pair)
    if not verify_event(event):
        raise EventError(f"bad signature on event {event.id}")
    return event


class Author:
    """
    Signs events for one key: the node's, for orders entered on this node.

    :ivar public_key: the author's 32-byte public key.
    :ivar author: its lowercase hex, as events carry it.
    """

    def __init__(self, seed: bytes, network: str, pair: str) -> None:
        """
        :param seed: the 32-byte Ed25519 seed.
        :param network: the network events are bound to.
        :param pair: the pair events are bound to.
        """
        self.public_key, self._secret = nacl.bindings.crypto_sign_seed_keypair(seed)
        self.author = self.public_key.hex()
        self.network = network
        self.pair = pair

    def _draft(self, body: str, seq: int, lamport: int, ts: int) -> Event:
        text = f"{TAG} {self.network} {self.pair} {self.author} {seq} {lamport} {ts} {body}"
        if not text.isascii():
            raise EventError("event fields must be ASCII")
        # The parse checks the form; the placeholder signature is replaced by sign().
        event = parse_event(text, _UNSIGNED, self.network, self.pair)
        event.sig = ""
        return event

    def draft_order(
        self,
        seq: int,
        lamport: int,
        ts: int,
        side: str,
        order_type: str,
        price: str | None,
        amount: str,
    ) -> Event:
        """
        An order event with its id but no signature yet: :meth:`sign` gives
        it one (alone or with others).  Until then it must not leave the
        author.

        :raises EventError: if the fields do not make a well-formed order.
        """
        shown_price = "-" if price is None else price
        return self._draft(f"{ORDER} {side} {order_type} {shown_price} {amount}", seq, lamport, ts)

    def draft_cancel(self, seq: int, lamport: int, ts: int, order_id: str) -> Event:
        """
        A cancel of the order C{order_id}, not signed yet (see :meth:`draft_order`).

        :raises EventError: if C{order_id} is not an event id.
        """
        return self._draft(f"{CANCEL} {order_id}", seq, lamport, ts)

    def sign(self, events: Sequence[Event]) -> None:
        """
        Sign this author's drafts C{events}: one alone gets its own
        signature; two or more (up to :data:`MAX_BATCH` per signature)
        share batch signatures.
        """
        for start in range(0, len(events), MAX_BATCH):
            part = events[start : start + MAX_BATCH]
            if len(part) == 1:
                event = part[0]
                event.sig = self._signature(event.text)
                continue
            root, paths = _tree([bytes.fromhex(event.id) for event in part])
            size = len(part)
            head = self._signature(batch_text(size, root))
            for index, (event, path) in enumerate(zip(part, paths, strict=True)):
                event.sig = f"b{size}.{index}.{head}{b''.join(path).hex()}"

    def _signature(self, text: str) -> str:
        return nacl.bindings.crypto_sign(text.encode("ascii"), self._secret)[:64].hex()

    def order(
        self,
        seq: int,
        lamport: int,
        ts: int,
        side: str,
        order_type: str,
        price: str | None,
        amount: str,
    ) -> Event:
        """
        A signed order event.

        :raises EventError: if the fields do not make a well-formed order.
        """
        event = self.draft_order(seq, lamport, ts, side, order_type, price, amount)
        self.sign([event])
        return event

    def cancel(self, seq: int, lamport: int, ts: int, order_id: str) -> Event:
        """
        A signed cancel of the order C{order_id}.

        :raises EventError: if C{order_id} is not an event id.
        """
        event = self.draft_cancel(seq, lamport, ts, order_id)
        self.sign([event])
        return event
