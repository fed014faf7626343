"""Tests for :mod:`bitfitech.market.events`: the signed event text, its parser and signatures.

The text is the canonical encoding (it is signed, hashed into the id and
forwarded unchanged), so its exact form is pinned with literal examples, and
:func:`~bitfitech.market.events.parse_event` must refuse every other form.
"""

from __future__ import annotations

import hashlib
from typing import Any

import nacl.bindings
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.market.events import (
    MAX_BATCH,
    MAX_INT,
    MAX_TEXT,
    MAX_TS,
    Author,
    Event,
    EventError,
    Key,
    _parse_checked,
    _root_signed,
    decode_event,
    event_id,
    parse_event,
    signed_by,
    verify_event,
)

NETWORK = "test"
PAIR = "BTC/USD"
SEED = bytes(range(32))
AUTHOR_HEX = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
"""The public key of :data:`SEED`, as events carry it."""

ANY_SIG = "ab" * 64
"""A well-formed signature (parsing does not check it)."""

TARGET = "ab" * 32
"""A well-formed order id to cancel."""


def order_text(*fields: str, author: str = AUTHOR_HEX) -> str:
    """An event text for :data:`AUTHOR_HEX` with the fields after the author."""
    return " ".join(("bitfi1", NETWORK, PAIR, author, *fields))


VALID_ORDER = order_text("1", "7", "1700000000123", "order", "buy", "limit", "50000.5", "0.25")
VALID_CANCEL = order_text("3", "12", "1700000000789", "cancel", TARGET)


def parse(text: str, sig: str = ANY_SIG) -> Event:
    """Parse C{text} for the test network and pair."""
    return parse_event(text, sig, NETWORK, PAIR)


def flip_hex(text: str, index: int, bit: int = 1) -> str:
    """C{text} (hex) with one bit of the digit at C{index} flipped."""
    digit = format(int(text[index], 16) ^ bit, "x")
    return text[:index] + digit + text[index + 1 :]


class AuthorTests(SynchronousTestCase):
    """:class:`Author` signs events that parse back and verify."""

    def setUp(self) -> None:
        self.author = Author(SEED, NETWORK, PAIR)

    def test_public_key(self) -> None:
        """The author's hex is its 32-byte public key in lowercase hex."""
        self.assertEqual(self.author.author, AUTHOR_HEX)
        self.assertEqual(self.author.public_key, bytes.fromhex(AUTHOR_HEX))

    def test_limit_order_literal(self) -> None:
        """A limit order's text, signature and id, exactly (Ed25519 is deterministic)."""
        event = self.author.order(1, 7, 1700000000123, "buy", "limit", "50000.5", "0.25")
        self.assertEqual(
            event.text,
            "bitfi1 test BTC/USD 03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
            " 1 7 1700000000123 order buy limit 50000.5 0.25",
        )
        self.assertEqual(
            event.sig,
            "d9c99437953d96d139a2b75b8a45906478d08db94add5a731104cc61d764277c"
            "f348a879a094c4c70cf25ca166b7bd4eedaa3bbf864b3449f2061766dd7cb506",
        )
        self.assertEqual(
            event.id, "ad029289d8fbe22f2b0d5a41689e6229402fe4481fe1e28c13f956262cfaa9a4"
        )
        self.assertEqual(event.text, VALID_ORDER)

    def test_market_order_literal(self) -> None:
        """A market order is written with price ``-`` and parses back to price ``None``."""
        event = self.author.order(2, 9, 1700000000456, "sell", "market", None, "1")
        self.assertEqual(
            event.text,
            "bitfi1 test BTC/USD 03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
            " 2 9 1700000000456 order sell market - 1",
        )
        self.assertEqual(
            event.id, "1cafb30c566cc8f3c2f45d9eaa12890b591fc31827403fbc024f60ae4f4f5d08"
        )
        self.assertIsNone(event.price)

    def test_cancel_literal(self) -> None:
        """A cancel's text names the order id; its signature is fixed too."""
        event = self.author.cancel(3, 12, 1700000000789, TARGET)
        self.assertEqual(event.text, VALID_CANCEL)
        self.assertEqual(
            event.sig,
            "d252d55344df192f92d708b9f7607c0743674a1736b1ce39c85bca4182f8710930ecf6d37a37b165"
            "cd15dde95813654f023ba98e7d454a648de4b9efae34940a",
        )
        self.assertEqual(
            event.id, "2cf0bf697a9bdcd6680b945108be3547f97a62a5d852f8ea03004a8f32c96d93"
        )

    def test_order_fields(self) -> None:
        """An order event carries every field of its text, and the total-order key."""
        event = self.author.order(4, 20, 5, "sell", "post_only", "0.01", "3")
        self.assertEqual(
            (event.author, event.seq, event.lamport, event.ts, event.kind),
            (AUTHOR_HEX, 4, 20, 5, "order"),
        )
        self.assertEqual(
            (event.side, event.order_type, event.price, event.amount, event.target),
            ("sell", "post_only", "0.01", "3", ""),
        )
        self.assertEqual(event.key, Key(20, AUTHOR_HEX, 4))
        self.assertTrue(event.is_order)
        self.assertEqual(event.wire, (event.text, event.sig))

    def test_cancel_fields(self) -> None:
        """A cancel carries its target and no order fields."""
        event = self.author.cancel(2, 3, 0, TARGET)
        self.assertEqual(event.kind, "cancel")
        self.assertFalse(event.is_order)
        self.assertEqual(event.target, TARGET)
        self.assertEqual((event.side, event.order_type, event.amount), ("", "", ""))
        self.assertIsNone(event.price)

    def test_events_parse_and_verify(self) -> None:
        """Every kind of signed event parses back to an equal event and verifies."""
        events = [
            self.author.order(1, 1, 0, "buy", order_type, "100", "1")
            for order_type in ("limit", "ioc", "fok", "post_only")
        ]
        events.append(self.author.order(5, 5, 0, "sell", "market", None, "0.5"))
        events.append(self.author.cancel(6, 6, 0, events[0].id))
        for event in events:
            self.assertTrue(verify_event(event), event)
            again = parse(event.text, event.sig)
            self.assertEqual(again, event)
            for name in Event.__slots__:
                self.assertEqual(getattr(again, name), getattr(event, name), name)
            self.assertTrue(verify_event(again))
            self.assertEqual(decode_event(event.text, event.sig, NETWORK, PAIR), event)

    def test_id_is_sha256_of_text(self) -> None:
        """An event's id is the SHA-256 of its ASCII text, in lowercase hex."""
        for event in (
            self.author.order(1, 1, 0, "buy", "limit", "1", "1"),
            self.author.cancel(2, 2, 0, TARGET),
        ):
            expected = hashlib.sha256(event.text.encode("ascii")).hexdigest()
            self.assertEqual(event.id, expected)
            self.assertEqual(event_id(event.text), expected)

    def test_author_refuses_malformed_fields(self) -> None:
        """The author checks what it signs: a malformed order or cancel raises EventError."""
        self.assertRaises(EventError, self.author.order, 1, 1, 0, "buy", "limit", None, "1")
        self.assertRaises(EventError, self.author.order, 1, 1, 0, "buy", "market", "1", "1")
        self.assertRaises(EventError, self.author.order, 0, 1, 0, "buy", "limit", "1", "1")
        self.assertRaises(EventError, self.author.order, 1, 1, 0, "up", "limit", "1", "1")
        self.assertRaises(EventError, self.author.order, 1, 1, 0, "buy", "limit", "1 1", "1")
        self.assertRaises(EventError, self.author.order, 1, 1, 0, "buy", "limit", "1", "\u0661")
        self.assertRaises(EventError, self.author.cancel, 1, 1, 0, "not an id")
        self.assertRaises(EventError, self.author.cancel, 1, 1, 0, TARGET.upper())

    def test_other_book(self) -> None:
        """An author binds its events to its network and pair: another book refuses them."""
        event = Author(SEED, "main", PAIR).order(1, 1, 0, "buy", "limit", "1", "1")
        self.assertRaises(EventError, parse, event.text, event.sig)
        self.assertIsInstance(parse_event(event.text, event.sig, "main", PAIR), Event)


class ParseTests(SynchronousTestCase):
    """:func:`parse_event` accepts exactly the documented form."""

    def assertRejected(self, text: Any, sig: Any = ANY_SIG) -> None:
        """C{text} with C{sig} does not parse."""
        with self.assertRaises(EventError, msg=repr(text)):
            parse_event(text, sig, NETWORK, PAIR)

    def test_valid_examples(self) -> None:
        """The examples the rejections are made from do parse."""
        self.assertEqual(parse(VALID_ORDER).price, "50000.5")
        self.assertEqual(parse(VALID_CANCEL).target, TARGET)

    def test_wrong_tag(self) -> None:
        """The first field must be ``bitfi1`` exactly."""
        for tag in ("bitfi2", "BITFI1", "bitfi", "", " bitfi1"):
            self.assertRejected(VALID_ORDER.replace("bitfi1", tag, 1))

    def test_other_network_or_pair(self) -> None:
        """An event for another network or pair is refused (no replay onto another book)."""
        self.assertRejected(VALID_ORDER.replace(" test ", " main ", 1))
        self.assertRejected(VALID_ORDER.replace("BTC/USD", "ETH/USD", 1))
        self.assertRejected(VALID_ORDER.replace("BTC/USD", "btc/usd", 1))
        self.assertRaises(EventError, parse_event, VALID_ORDER, ANY_SIG, "main", PAIR)
        self.assertRaises(EventError, parse_event, VALID_ORDER, ANY_SIG, NETWORK, "ETH/USD")

    def test_bad_author(self) -> None:
        """The author is 64 lowercase hex digits."""
        fields = ("1", "7", "0", "order", "buy", "limit", "1", "1")
        for author in (
            AUTHOR_HEX.upper(),
            AUTHOR_HEX[:-1],
            AUTHOR_HEX + "0",
            "g" + AUTHOR_HEX[1:],
            "",
        ):
            self.assertRejected(order_text(*fields, author=author))

    def test_integers(self) -> None:
        """seq and lamport run from 1 to 2**63-1 and ts from 0 to 2**53-1, without leading zeros."""

        def text(seq: str, lamport: str, ts: str) -> str:
            return order_text(seq, lamport, ts, "order", "buy", "limit", "1", "1")

        event = parse(text(str(MAX_INT), str(MAX_INT), str(MAX_TS)))
        self.assertEqual((event.seq, event.lamport, event.ts), (MAX_INT, MAX_INT, MAX_TS))
        self.assertEqual(parse(text("1", "1", "0")).ts, 0)
        for seq, lamport, ts in [
            ("0", "1", "0"),  # seq 0
            ("1", "0", "0"),  # lamport 0
            ("01", "1", "0"),  # leading zeros
            ("1", "01", "0"),
            ("1", "1", "00"),
            ("1", "1", "01"),
            ("1", str(MAX_INT + 1), "0"),  # 2**63: 19 digits, out of range
            (str(MAX_INT + 1), "1", "0"),
            ("1", "1" + "0" * 19, "0"),  # 20 digits
            ("1", "1", str(MAX_TS + 1)),  # ts too big
            ("-1", "1", "0"),
            ("+1", "1", "0"),
            ("1", "1", "-1"),
            ("1.0", "1", "0"),
            ("1e3", "1", "0"),
            ("", "1", "0"),
            ("\u0661", "1", "0"),  # an Arabic-Indic one
        ]:
            self.assertRejected(text(seq, lamport, ts))

    def test_unknown_kind(self) -> None:
        """The kind is ``order`` or ``cancel``."""
        for kind in ("Order", "ORDER", "modify", "cancels", ""):
            self.assertRejected(order_text("1", "7", "0", kind, "buy", "limit", "1", "1"))
            self.assertRejected(order_text("1", "7", "0", kind, TARGET))

    def test_field_counts(self) -> None:
        """An order has exactly 12 fields and a cancel 9; spaces are single."""
        head = ("1", "7", "0")
        for text in (
            order_text(*head, "order", "buy", "limit", "1"),
            order_text(*head, "order", "buy", "limit", "1", "1", "1"),
            order_text(*head, "order", "buy", "market", "1"),
            order_text(*head, "cancel"),
            order_text(*head, "cancel", TARGET, TARGET),
            order_text(*head),
            order_text("1", "7"),
            "bitfi1",
            VALID_ORDER + " ",
            " " + VALID_ORDER,
            VALID_ORDER.replace(" buy ", "  buy "),
            VALID_CANCEL + " ",
            VALID_ORDER.replace(" ", "\t"),
        ):
            self.assertRejected(text)

    def test_bad_side_and_type(self) -> None:
        """The side is ``buy`` or ``sell``; the type one of the engine's."""
        for side in ("BUY", "Sell", "b", "bid"):
            self.assertRejected(order_text("1", "7", "0", "order", side, "limit", "1", "1"))
        for order_type in ("LIMIT", "gtc", "stop", "post-only", "-"):
            self.assertRejected(order_text("1", "7", "0", "order", "buy", order_type, "1", "1"))

    def test_price_and_type(self) -> None:
        """A market order has price ``-``; every other type a decimal price."""
        self.assertRejected(order_text("1", "7", "0", "order", "buy", "market", "100", "1"))
        self.assertRejected(order_text("1", "7", "0", "order", "buy", "market", "0", "1"))
        for order_type in ("limit", "ioc", "fok", "post_only"):
            self.assertRejected(order_text("1", "7", "0", "order", "buy", order_type, "-", "1"))

    def test_non_decimal_price_and_amount(self) -> None:
        """Prices and amounts are plain decimals: digits, then optionally a point and digits."""
        bad = (
            "1e5",
            "1E5",
            ".5",
            "1.",
            "-1",
            "+1",
            "1,5",
            "1_000",
            "0x10",
            "1.2.3",
            "NaN",
            "inf",
            "1" * 65,
            "1." + "1" * 64,
            "\u0661",
        )
        for value in bad:
            self.assertRejected(order_text("1", "7", "0", "order", "buy", "limit", value, "1"))
            self.assertRejected(order_text("1", "7", "0", "order", "buy", "limit", "1", value))
        self.assertRejected(order_text("1", "7", "0", "order", "buy", "market", "-", "-"))
        # Zero and long decimals are well-formed; the engine rejects them, not the parser.
        for good in ("0", "0.0", "1" * 64, "1." + "1" * 63):
            event = parse(order_text("1", "7", "0", "order", "buy", "limit", good, good))
            self.assertEqual((event.price, event.amount), (good, good))

    def test_bad_cancel_target(self) -> None:
        """A cancel names an event id: 64 lowercase hex digits."""
        for target in (TARGET.upper(), TARGET[:-1], TARGET + "a", "x" * 64, "-"):
            self.assertRejected(order_text("1", "7", "0", "cancel", target))

    def test_non_ascii(self) -> None:
        """The text is ASCII."""
        self.assertRejected(VALID_ORDER.replace("buy", "b\u00fcy"))
        self.assertRejected(VALID_ORDER + "\u00e9")
        self.assertRejected(VALID_CANCEL.replace(TARGET, "\u0430" + TARGET[1:]))

    def test_length(self) -> None:
        """The text is 1 to 400 characters: a well-formed text of 401 is refused."""
        head = (str(MAX_INT), str(MAX_INT), str(MAX_TS), "order", "buy", "limit")
        # Pad price and amount (each up to 64 digits, a point and 63 digits) to the limit.
        price = "1" * 64 + "." + "1" * 63
        fraction = MAX_TEXT - len(order_text(*head, price, "1" * 64 + "."))
        amount = "1" * 64 + "." + "1" * fraction
        longest = order_text(*head, price, amount)
        self.assertEqual(len(longest), MAX_TEXT)
        self.assertEqual(parse(longest).text, longest)
        too_long = order_text(*head, price, amount + "1")
        self.assertEqual(len(too_long), MAX_TEXT + 1)
        self.assertRejected(too_long)
        self.assertRejected("")

    def test_bad_signature_form(self) -> None:
        """The signature is 128 lowercase hex digits."""
        for sig in (ANY_SIG.upper(), ANY_SIG[:-1], ANY_SIG + "a", "g" * 128, ""):
            self.assertRejected(VALID_ORDER, sig)

    def test_not_strings(self) -> None:
        """Text and signature must be str, not bytes or anything else."""
        self.assertRejected(VALID_ORDER.encode("ascii"))
        self.assertRejected(None)
        self.assertRejected(VALID_ORDER, ANY_SIG.encode("ascii"))
        self.assertRejected(VALID_ORDER, None)


class FastPathTests(SynchronousTestCase):
    """The one-match path of :func:`parse_event` agrees with the field-by-field checks."""

    FIELDS = ("id", "text", "sig", "author", "seq", "lamport", "ts", "kind", "side",
              "order_type", "price", "amount", "target", "key")  # fmt: skip

    def assertSameAsChecked(self, text: str) -> None:
        try:
            checked = _parse_checked(text, ANY_SIG, NETWORK, PAIR)
        except EventError as e:
            with self.assertRaises(EventError) as caught:
                parse(text)
            self.assertEqual(str(caught.exception), str(e))
            return
        fast = parse(text)
        for name in self.FIELDS:
            self.assertEqual(getattr(fast, name), getattr(checked, name), (text, name))

    def test_valid_events(self) -> None:
        for order_type, price in (("limit", "1"), ("ioc", "0.5"), ("fok", "10"),
                                  ("post_only", "3.25"), ("market", "-")):  # fmt: skip
            for side in ("buy", "sell"):
                self.assertSameAsChecked(
                    order_text("1", "1", "0", "order", side, order_type, price, "0.001")
                )
        self.assertSameAsChecked(VALID_ORDER)
        self.assertSameAsChecked(VALID_CANCEL)
        self.assertSameAsChecked(order_text(str(MAX_INT), str(MAX_INT), str(MAX_TS), "cancel",
                                            TARGET))  # fmt: skip

    def test_invalid_events_give_the_checked_errors(self) -> None:
        for fields in (
            ("0", "1", "0", "cancel", TARGET),
            ("1", "0", "0", "cancel", TARGET),
            ("1", "1", str(MAX_TS + 1), "cancel", TARGET),
            ("1", str(MAX_INT + 1), "0", "cancel", TARGET),
            ("01", "1", "0", "cancel", TARGET),
            ("1", "1", "0", "order", "buy", "market", "5", "1"),
            ("1", "1", "0", "order", "buy", "limit", "-", "1"),
            ("1", "1", "0", "order", "buy", "limit", "1e5", "1"),
            ("1", "1", "0", "order", "hold", "limit", "1", "1"),
            ("1", "1", "0", "cancel", TARGET.upper()),
            ("1", "1", "0", "cancel", TARGET, "extra"),
        ):
            self.assertSameAsChecked(order_text(*fields))
        self.assertSameAsChecked(VALID_ORDER.replace(NETWORK, "other", 1))
        self.assertSameAsChecked(VALID_ORDER.replace(" ", "  ", 1))


class SignatureTests(SynchronousTestCase):
    """:func:`verify_event` and :func:`decode_event` accept only the author's signature."""

    def setUp(self) -> None:
        self.author = Author(SEED, NETWORK, PAIR)
        self.event = self.author.order(1, 7, 1700000000123, "buy", "limit", "50000.5", "0.25")

    def test_flipped_signature_bit(self) -> None:
        """Flipping any one of several bits of the signature breaks it."""
        for index in (0, 31, 63, 64, 100, 127):
            for bit in (1, 8):
                forged = parse(self.event.text, flip_hex(self.event.sig, index, bit))
                self.assertFalse(verify_event(forged), (index, bit))

    def test_changed_text(self) -> None:
        """The signature does not cover a changed text."""
        for text in (
            self.event.text.replace("0.25", "0.26"),
            self.event.text.replace(" buy ", " sell "),
            self.event.text.replace(" 7 ", " 8 "),
        ):
            self.assertFalse(verify_event(parse(text, self.event.sig)), text)

    def test_another_authors_signature(self) -> None:
        """A signature by another key over this author's text does not verify."""
        _, other_secret = nacl.bindings.crypto_sign_seed_keypair(b"\x07" * 32)
        signed = nacl.bindings.crypto_sign(self.event.text.encode("ascii"), other_secret)
        forged = parse(self.event.text, signed[:64].hex())
        self.assertFalse(verify_event(forged))
        # The other key's own event, with its author field swapped in, fails too.
        other = Author(b"\x07" * 32, NETWORK, PAIR).order(1, 7, 0, "buy", "limit", "1", "1")
        swapped = other.text.replace(other.author, AUTHOR_HEX)
        self.assertFalse(verify_event(parse(swapped, other.sig)))

    def test_author_not_a_key(self) -> None:
        """An author field that is no valid public key makes verification fail, not raise."""
        for author in ("00" * 32, "ff" * 32, "01" + "00" * 31):
            text = order_text("1", "1", "0", "order", "buy", "limit", "1", "1", author=author)
            self.assertFalse(verify_event(parse(text, self.event.sig)))

    def test_decode_event(self) -> None:
        """decode_event returns the event when the signature is good, else raises EventError."""
        self.assertEqual(decode_event(self.event.text, self.event.sig, NETWORK, PAIR), self.event)
        bad_sig = flip_hex(self.event.sig, 5)
        with self.assertRaises(EventError) as caught:
            decode_event(self.event.text, bad_sig, NETWORK, PAIR)
        self.assertIn(self.event.id, str(caught.exception))
        self.assertRaises(EventError, decode_event, self.event.text, ANY_SIG, NETWORK, PAIR)
        self.assertRaises(EventError, decode_event, "bitfi1", self.event.sig, NETWORK, PAIR)
        self.assertRaises(EventError, decode_event, self.event.text, self.event.sig, "main", PAIR)


def reference_root(ids: list[bytes]) -> bytes:
    """RFC 9162's Merkle tree hash with the ids as leaf hashes, written plainly."""
    if len(ids) == 1:
        return ids[0]
    k = 1
    while k * 2 < len(ids):
        k *= 2
    left, right = reference_root(ids[:k]), reference_root(ids[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


class BatchSignatureTests(SynchronousTestCase):
    """Events signed together share one signature over a Merkle root of their ids."""

    SIZES = (*range(2, 34), 63, 64, 65, 100)

    def setUp(self) -> None:
        self.author = Author(SEED, NETWORK, PAIR)

    def drafts(self, count: int, first_seq: int = 1) -> list[Event]:
        return [
            self.author.draft_order(seq, seq, 1700000000000, "buy", "limit", str(seq), "1")
            for seq in range(first_seq, first_seq + count)
        ]

    def signed(self, count: int, first_seq: int = 1) -> list[Event]:
        events = self.drafts(count, first_seq)
        self.author.sign(events)
        return events

    def test_draft_has_no_signature(self) -> None:
        """A draft has its id and fields but no signature, and does not verify."""
        draft = self.drafts(1)[0]
        self.assertEqual(draft.sig, "")
        self.assertEqual(draft.id, event_id(draft.text))
        self.assertFalse(verify_event(draft))

    def test_one_draft_gets_its_own_signature(self) -> None:
        """Signed alone, an event gets the plain 128-digit signature, as order() gives."""
        (event,) = self.signed(1)
        self.assertEqual(event.sig, self.author.order(1, 1, 1700000000000, "buy", "limit", "1",
                                                      "1").sig)  # fmt: skip

    def test_every_event_of_a_batch_verifies(self) -> None:
        """For many sizes, every event verifies, and all share one signature of the root."""
        for size in self.SIZES:
            events = self.signed(size)
            heads = set()
            for index, event in enumerate(events):
                self.assertTrue(event.sig.startswith(f"b{size}.{index}."), (size, index))
                head = event.sig.split(".", 2)[2][:128]
                heads.add(head)
                self.assertTrue(verify_event(event), (size, index))
                self.assertEqual(decode_event(event.text, event.sig, NETWORK, PAIR), event)
            self.assertEqual(len(heads), 1)
            root = reference_root([bytes.fromhex(event.id) for event in events])
            self.assertTrue(signed_by(heads.pop(), f"bitfi-batch1 {size} {root.hex()}",
                                      AUTHOR_HEX))  # fmt: skip

    def test_path_lengths(self) -> None:
        """Each event carries only its path: about log2(size) sibling hashes."""
        for size in self.SIZES:
            for event in self.signed(size):
                path = event.sig.split(".", 2)[2][128:]
                self.assertEqual(len(path) % 64, 0)
                self.assertLessEqual(len(path) // 64, (size - 1).bit_length())

    def test_one_signature_check_per_batch(self) -> None:
        """A node checks the root's signature once, not once per event of the batch."""
        events = self.signed(50, first_seq=1000)
        _root_signed.cache_clear()
        self.assertTrue(all(verify_event(event) for event in events))
        self.assertEqual(_root_signed.cache_info().misses, 1)

    def test_large_batches_split(self) -> None:
        """More than MAX_BATCH drafts take more than one signature, each verifiable."""
        events = self.signed(MAX_BATCH + 2)
        self.assertTrue(events[0].sig.startswith(f"b{MAX_BATCH}.0."))
        self.assertTrue(events[MAX_BATCH].sig.startswith("b2.0."))
        self.assertTrue(verify_event(events[0]))
        self.assertTrue(verify_event(events[-1]))

    def test_tampered(self) -> None:
        """Any change of the place, the path, the signature or the text fails the check."""
        events = self.signed(11)
        other = self.signed(11, first_seq=100)
        event = events[5]
        size, index, rest = event.sig.split(".", 2)
        forged = [
            f"{size}.4.{rest}",
            f"{size}.6.{rest}",
            f"b12.{index}.{rest}",
            f"b10.{index}.{rest}",
            f"{size}.{index}.{flip_hex(rest, 3)}",
            f"{size}.{index}.{flip_hex(rest, 130)}",
            f"{size}.{index}.{flip_hex(rest, len(rest) - 1)}",
            f"{size}.{index}.{rest[:-64]}",
            f"{size}.{index}.{rest}{'ab' * 32}",
            other[5].sig,
            events[4].sig,
        ]
        for sig in forged:
            self.assertFalse(verify_event(parse(event.text, sig)), sig)
        changed = event.text[:-1] + "2"  # the amount
        self.assertFalse(verify_event(parse(changed, event.sig)))

    def test_another_authors_batch(self) -> None:
        """A batch signed by another key does not put events under this author."""
        other = Author(b"\x07" * 32, NETWORK, PAIR)
        drafts = [other.draft_order(seq, seq, 0, "buy", "limit", "1", "1") for seq in (1, 2, 3)]
        other.sign(drafts)
        for draft in drafts:
            swapped = draft.text.replace(other.author, AUTHOR_HEX)
            self.assertFalse(verify_event(parse(swapped, draft.sig)))

    def test_batch_signature_form(self) -> None:
        """The parser takes only well-formed batch signatures."""
        head, hashes = "ab" * 64, "cd" * 32
        self.assertEqual(parse(VALID_ORDER, f"b2.1.{head}{hashes}").sig, f"b2.1.{head}{hashes}")
        self.assertEqual(parse(VALID_ORDER, f"b1.0.{head}").sig, f"b1.0.{head}")
        for sig in (
            f"b0.0.{head}",
            f"b02.1.{head}{hashes}",
            f"b2.01.{head}{hashes}",
            f"b10000.1.{head}{hashes}",
            f"b2.1.{head}{hashes[:-1]}",
            f"b2.1.{head}{hashes.upper()}",
            f"b2.1.{head}{hashes * 11}",
            f"b2.1{head}{hashes}",
            f"B2.1.{head}{hashes}",
        ):
            self.assertRaises(EventError, parse, VALID_ORDER, sig)

    def test_place_out_of_range_does_not_verify(self) -> None:
        """An index at or past the size, or a size above MAX_BATCH, never verifies."""
        event = self.signed(2)[1]
        _, _, rest = event.sig.split(".", 2)
        for sig in (f"b2.2.{rest}", f"b{MAX_BATCH + 1}.1.{rest}"):
            self.assertFalse(verify_event(parse(event.text, sig)), sig)


integers = st.integers(min_value=0, max_value=MAX_INT).map(str)
decimals = st.from_regex(r"\A[0-9]{1,8}(\.[0-9]{1,8})?\Z")
order_bodies = st.tuples(
    st.sampled_from(["buy", "sell"]),
    st.sampled_from(["limit", "ioc", "fok", "post_only", "market"]),
    decimals,
    decimals,
).map(lambda f: f"order {f[0]} {f[1]} {'-' if f[1] == 'market' else f[2]} {f[3]}")
cancel_bodies = st.from_regex(r"\A[0-9a-f]{64}\Z").map(lambda target: f"cancel {target}")
well_formed = st.tuples(integers, integers, integers, order_bodies | cancel_bodies).map(
    lambda f: order_text(*f[:3], *f[3].split(" "))
)


class TextTests(SynchronousTestCase):
    """An event keeps no copy of its text: it writes it again from its fields, exactly."""

    @given(well_formed)
    def test_text_written_again_is_the_text(self, text: str) -> None:
        try:
            event = parse(text)
        except EventError:
            return  # a zero seq or Lamport time, or a ts out of range
        self.assertEqual(event.text, text)
        self.assertEqual(event.id, event_id(text))
        self.assertEqual(_parse_checked(text, ANY_SIG, NETWORK, PAIR).text, text)

    @given(st.text(alphabet=" 0123456789abf.-ordeyulimtcnsk_p", max_size=80))
    def test_any_text_that_parses_is_written_again_exactly(self, tail: str) -> None:
        text = order_text() + " " + tail
        try:
            event = parse(text)
        except EventError:
            return
        self.assertEqual(event.text, text)

    def test_examples(self) -> None:
        for text in (VALID_ORDER, VALID_CANCEL):
            self.assertEqual(parse(text).text, text)
        event = Author(SEED, NETWORK, PAIR).order(1, 2, 3, "sell", "market", None, "0.5")
        self.assertEqual(event.text, order_text("1", "2", "3", "order", "sell", "market", "-",
                                                "0.5"))  # fmt: skip


class EqualityTests(SynchronousTestCase):
    """Events are equal, and hash, by id alone."""

    def test_equal_by_id(self) -> None:
        """The same text parsed twice, even with another signature, is one event."""
        author = Author(SEED, NETWORK, PAIR)
        event = author.order(1, 1, 0, "buy", "limit", "1", "1")
        same = parse(event.text, event.sig)
        other_sig = parse(event.text, ANY_SIG)
        self.assertIsNot(same, event)
        self.assertEqual(same, event)
        self.assertEqual(other_sig, event)
        self.assertEqual(hash(same), hash(event))
        self.assertEqual(hash(event), hash(event.id))
        self.assertEqual(len({event, same, other_sig}), 1)

    def test_different_events_differ(self) -> None:
        """Events with different texts differ, and an event is not equal to its id."""
        author = Author(SEED, NETWORK, PAIR)
        first = author.order(1, 1, 0, "buy", "limit", "1", "1")
        second = author.order(1, 1, 1, "buy", "limit", "1", "1")
        self.assertNotEqual(first, second)
        self.assertEqual(len({first, second}), 2)
        self.assertNotEqual(first, first.id)
        self.assertNotEqual(first, first.text)
        self.assertIn(first.id[:12], repr(first))
