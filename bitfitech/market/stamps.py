"""Witness stamps: signed, chained statements of when a witness first saw which events.

Data path: a witness's :class:`StampSigner` -> gossip -> every node's
:mod:`bitfitech.market.fairtime` -> the ledger's fair order.  A stamp is
one line of printable ASCII, its *text*, signed with the witness's
Ed25519 key (the key of its node id)::

    bitfi-stamp1 <network> <pair> <witness> <seq> <t> <prev> <acks> <receipts>

``witness`` is the witness's public key (64 lowercase hex digits; its node
id, ``sha256(key)[:20]``, must be in the network's
:class:`~bitfitech.witnesses.WitnessSet`); ``seq`` numbers its stamps 1,
2, 3, ...; ``t`` is its clock in unix milliseconds, strictly increasing
along the chain (every time a stamp states is in unix *microseconds*:
events that reach a witness within one millisecond still get distinct
times); ``prev`` is the id of stamp ``seq - 1`` (64 zeros for
the first).  ``acks`` has one entry per witness of the set, in the set's
order: ``<seq>:<offset>`` says that at time ``t - offset`` this witness
held that witness's chain without gaps through ``seq`` (its own entry is
``<seq - 1>:0``).  ``receipts`` is ``-`` or up to :data:`MAX_RECEIPTS`
entries ``<event id>:<offset>``: the witness first saw that event at
``t - offset``.  Every offset of a stamp after the first is less than
``t`` minus the previous stamp's ``t``, so each time a stamp states lies
in the interval it covers; an entry of ``acks`` that did not change since
the previous stamp has offset 0.  Those rules, which need the previous
stamp, are the chain's (:mod:`bitfitech.market.fairtime`); this module
checks everything one stamp can show.

As for events, the text *is* the canonical encoding: its SHA-256 is the
stamp's id, the signature is Ed25519 over it, and nodes forward it
unchanged.  Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final, NamedTuple

import nacl.bindings
import nacl.exceptions

from ..identity import node_id_from_public_key
from ..witnesses import WitnessSet
from .events import signed_by

TAG: Final = "bitfi-stamp1"
"""First field of every stamp text: the format and its version."""

MAX_RECEIPTS: Final = 1000
"""Most receipts one stamp lists (a witness that saw more stamps again at once)."""

MAX_STAMP_TEXT: Final = 96_000
"""Longest stamp text, in characters (a full stamp of 31 witnesses' acks fits)."""

MAX_SEQ: Final = 2**63 - 1
MAX_T: Final = 2**53 - 1
NO_PREV: Final = "0" * 64
"""The ``prev`` of a witness's first stamp."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_INT = re.compile(r"0|[1-9][0-9]{0,18}")
_RECEIPT = re.compile(r"([0-9a-f]{64}):(0|[1-9][0-9]{0,15})")
_ACK = re.compile(r"(0|[1-9][0-9]{0,18}):(0|[1-9][0-9]{0,15})")


class StampError(ValueError):
    """A stamp that is malformed, from no witness of the set, or badly signed."""


class Stamp(NamedTuple):
    """
    One parsed stamp.

    :ivar id: SHA-256 of the text, hex.
    :ivar text: the canonical text.
    :ivar sig: the Ed25519 signature of the text, 128 hex digits.
    :ivar witness: the witness's public key, hex.
    :ivar member: the witness's place in the set.
    :ivar seq: its place in the witness's chain, from 1.
    :ivar t: the witness's clock when it signed, unix microseconds.
    :ivar prev: the id of the witness's previous stamp (:data:`NO_PREV` for seq 1).
    :ivar acks: per witness of the set, ``(seq, offset)``.
    :ivar receipts: ``(event id, offset)`` pairs, ids unique.
    """

    id: str
    text: str
    sig: str
    witness: str
    member: int
    seq: int
    t: int
    prev: str
    acks: tuple[tuple[int, int], ...]
    receipts: tuple[tuple[str, int], ...]

    def __repr__(self) -> str:
        receipts = len(self.receipts)
        return f"<Stamp {self.id[:12]} w{self.member}#{self.seq} t={self.t} {receipts} receipts>"

    @property
    def wire(self) -> tuple[str, str]:
        """The ``[text, sig]`` pair a ``stamps`` message carries."""
        return (self.text, self.sig)


def stamp_id(text: str) -> str:
    """The id of the stamp whose canonical text is C{text}."""
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _int(token: str, high: int, name: str) -> int:
    if _INT.fullmatch(token) is None or int(token) > high:
        raise StampError(f"{name} must be an integer from 0 to {high}, not {token[:24]!r}")
    return int(token)


def parse_stamp(text: str, sig: str, network: str, pair: str, witnesses: WitnessSet) -> Stamp:
    """
    Parse and check the form of one stamp (not its signature).

    :raises StampError: for anything malformed, another network or pair, a
        signer that is no witness of C{witnesses}, or an offset beyond ``t``.
    """
    if type(text) is not str or not 0 < len(text) <= MAX_STAMP_TEXT or not text.isascii():
        raise StampError(f"stamp text must be 1 to {MAX_STAMP_TEXT} ASCII characters")
    if type(sig) is not str or _HEX128.fullmatch(sig) is None:
        raise StampError("signature must be 128 lowercase hex digits")
    fields = text.split(" ")
    if len(fields) != 9 or fields[0] != TAG:
        raise StampError(f"a stamp is {TAG!r} and 8 fields separated by single spaces")
    _, net, book, witness, seq_text, t_text, prev, ack_text, receipt_text = fields
    if net != network or book != pair:
        raise StampError(f"stamp is for {net[:64]} {book[:32]}, not {network} {pair}")
    if _HEX64.fullmatch(witness) is None:
        raise StampError("witness must be a public key, 64 lowercase hex digits")
    node_id = node_id_from_public_key(bytes.fromhex(witness))
    if node_id not in witnesses:
        raise StampError(f"stamp signer {node_id} is not a witness of this network")
    seq = _int(seq_text, MAX_SEQ, "seq")
    t = _int(t_text, MAX_T, "t")
    if seq < 1 or t < 1:
        raise StampError("seq and t start at 1")
    if _HEX64.fullmatch(prev) is None or (seq == 1) != (prev == NO_PREV):
        raise StampError("prev must be the previous stamp's id (64 zeros for the first)")
    index = witnesses.index(node_id)
    entries = ack_text.split(",")
    if len(entries) != witnesses.n:
        raise StampError(f"acks must have {witnesses.n} entries, not {len(entries)}")
    acks = []
    for entry in entries:
        match = _ACK.fullmatch(entry)
        if match is None:
            raise StampError(f"an ack is <seq>:<offset>, not {entry[:40]!r}")
        acks.append((int(match[1]), int(match[2])))
    if acks[index] != (seq - 1, 0):
        raise StampError(f"a witness's own ack is {seq - 1}:0")
    receipts: list[tuple[str, int]] = []
    if receipt_text != "-":
        entries = receipt_text.split(",")
        if len(entries) > MAX_RECEIPTS:
            raise StampError(f"at most {MAX_RECEIPTS} receipts, not {len(entries)}")
        for entry in entries:
            match = _RECEIPT.fullmatch(entry)
            if match is None:
                raise StampError(f"a receipt is <event id>:<offset>, not {entry[:80]!r}")
            receipts.append((match[1], int(match[2])))
        if len({event_id for event_id, _ in receipts}) != len(receipts):
            raise StampError("a stamp lists an event twice")
    if any(offset >= t for _, offset in acks) or any(offset >= t for _, offset in receipts):
        raise StampError("an offset must be less than t")
    return Stamp(
        stamp_id(text), text, sig, witness, index, seq, t, prev, tuple(acks), tuple(receipts)
    )


def verify_stamp(stamp: Stamp) -> bool:
    """Whether C{stamp}'s signature is its witness's over its text."""
    return signed_by(stamp.sig, stamp.text, stamp.witness)


def decode_stamp(text: str, sig: str, network: str, pair: str, witnesses: WitnessSet) -> Stamp:
    """
    :func:`parse_stamp` and :func:`verify_stamp` in one.

    :raises StampError: for a malformed or badly signed stamp.
    """
    stamp = parse_stamp(text, sig, network, pair, witnesses)
    if not verify_stamp(stamp):
        raise StampError(f"bad signature on stamp {stamp.id}")
    return stamp


class StampSigner:
    """
    Signs one witness's chain of stamps.

    It knows nothing of time or of what it stamps: the witness service
    hands it the time, the acks and the receipts, and keeps them within
    the chain's rules.
    """

    def __init__(self, seed: bytes, network: str, pair: str, witnesses: WitnessSet) -> None:
        """
        :param seed: the witness's 32-byte Ed25519 seed (its node key).
        :raises ValueError: if the key's node id is no witness of C{witnesses}.
        """
        self.public_key, self._secret = nacl.bindings.crypto_sign_seed_keypair(seed)
        self.witness = self.public_key.hex()
        self.node_id = node_id_from_public_key(self.public_key)
        if self.node_id not in witnesses:
            raise ValueError(f"node {self.node_id} is not a witness of this network")
        self.index = witnesses.index(self.node_id)
        self.network, self.pair, self.witnesses = network, pair, witnesses

    def sign(
        self,
        seq: int,
        t: int,
        prev: str,
        acks: list[tuple[int, int]],
        receipts: list[tuple[str, int]],
    ) -> Stamp:
        """
        The signed stamp with these fields.

        :raises StampError: if they do not make a well-formed stamp.
        """
        ack_text = ",".join(f"{seq_}:{offset}" for seq_, offset in acks)
        receipt_text = ",".join(f"{event_id}:{offset}" for event_id, offset in receipts) or "-"
        text = (
            f"{TAG} {self.network} {self.pair} {self.witness} {seq} {t} {prev} "
            f"{ack_text} {receipt_text}"
        )
        signed = nacl.bindings.crypto_sign(text.encode("ascii"), self._secret)
        return parse_stamp(text, signed[:64].hex(), self.network, self.pair, self.witnesses)
