"""Fuzz tests of :mod:`bitfitech.market.events`: hostile event texts and signatures.

:func:`parse_event` raises only :class:`EventError`, and what it accepts is
printable ASCII an ``events`` message can carry; its fast path accepts
exactly what the field-by-field checks accept; and :func:`decode_event`
rejects every change to a real signed event's text or signature.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.market.book import MARKET, ORDER_TYPES
from bitfitech.market.events import (
    MAX_INT,
    MAX_TS,
    Author,
    Event,
    EventError,
    _parse_checked,
    decode_event,
    event_id,
    parse_event,
)
from bitfitech.wire.messages import MAX_EVENT_TEXT

from .strategies import mutated

NETWORK = "test"
PAIR = "BTC/USD"
AUTHORS = [Author(bytes([n]) * 32, NETWORK, PAIR) for n in range(3)]

HEX = "0123456789abcdef"
decimals = st.from_regex(r"\A[0-9]{1,20}(\.[0-9]{1,10})?\Z")
counters = st.integers(1, MAX_INT)


@st.composite
def signed_events(draw: st.DrawFn) -> Event:
    """A real order or cancel, signed by one of :data:`AUTHORS`."""
    author = draw(st.sampled_from(AUTHORS))
    seq, lamport, ts = draw(counters), draw(counters), draw(st.integers(0, MAX_TS))
    if draw(st.booleans()):
        return author.cancel(seq, lamport, ts, draw(st.from_regex(r"\A[0-9a-f]{64}\Z")))
    order_type = draw(st.sampled_from(sorted(ORDER_TYPES)))
    price = None if order_type == MARKET else draw(decimals)
    side = draw(st.sampled_from(["buy", "sell"]))
    return author.order(seq, lamport, ts, side, order_type, price, draw(decimals))


text_pieces = st.text(
    st.sampled_from(HEX + " -.") | st.characters(max_codepoint=0x7F) | st.characters(),
    min_size=1,
    max_size=6,
)
"""What goes into a damaged text: mostly hex, separators and ASCII; any character now and then."""
sig_pieces = st.text(st.sampled_from(HEX) | st.characters(), min_size=1, max_size=4)
tokens = st.sampled_from(
    ["bitfi1", NETWORK, PAIR, AUTHORS[0].author, "0", "1", "01", "-", "1.5", "order", "cancel",
     "buy", "sell", *sorted(ORDER_TYPES), "a" * 64, str(MAX_INT + 1), str(MAX_TS + 1), ""]
) | st.text(max_size=8)  # fmt: skip
sigs = st.from_regex(r"\A[0-9a-f]{128}\Z") | st.text(max_size=130)


class ParseTests(SynchronousTestCase):
    """Only EventError comes out of parse_event, and what it accepts is sound."""

    def check(self, text: str, sig: str) -> Event | None:
        """Parse; an accepted event is printable ASCII, carries its own id, and both paths agree."""
        try:
            event = parse_event(text, sig, NETWORK, PAIR)
        except EventError:
            self.assertRaises(EventError, _parse_checked, text, sig, NETWORK, PAIR)
            return None
        self.assertEqual((event.text, event.sig, event.id), (text, sig, event_id(text)))
        self.assertTrue(text.isascii() and text.isprintable() and len(text) <= MAX_EVENT_TEXT)
        checked = _parse_checked(text, sig, NETWORK, PAIR)
        for name in Event.__slots__:
            self.assertEqual(getattr(event, name), getattr(checked, name), name)
        return event

    @settings(max_examples=200)
    @given(st.text(max_size=450), sigs)
    def test_arbitrary_text(self, text: str, sig: str) -> None:
        """Any text, any signature string."""
        self.check(text, sig)

    @settings(max_examples=200)
    @given(st.lists(tokens, min_size=1, max_size=14), sigs)
    def test_arbitrary_fields(self, fields: list[str], sig: str) -> None:
        """Texts made of plausible fields, to reach past the first checks."""
        self.check(" ".join(fields), sig)

    @settings(max_examples=150)
    @given(signed_events(), st.data())
    def test_mutated_text_parses_soundly(self, event: Event, data: st.DataObject) -> None:
        """Damaged real events: the fast path and the checked path still agree."""
        self.check(data.draw(mutated(event.text, text_pieces)), event.sig)

    def test_non_str(self) -> None:
        """Things that are not strings are refused, not crashed on."""
        event = AUTHORS[0].cancel(1, 1, 0, "a" * 64)
        for bad in (None, 1, b"x", event.text.encode("ascii"), [event.text]):
            self.assertRaises(EventError, parse_event, bad, event.sig, NETWORK, PAIR)
            self.assertRaises(EventError, parse_event, event.text, bad, NETWORK, PAIR)


class DecodeTests(SynchronousTestCase):
    """A real signed event verifies, and no change to it does."""

    def assert_only_original(self, event: Event, text: str, sig: str) -> None:
        """The event is decoded only if unchanged; any change raises EventError."""
        if (text, sig) == event.wire:
            self.assertEqual(decode_event(text, sig, NETWORK, PAIR), event)
        else:
            self.assertRaises(EventError, decode_event, text, sig, NETWORK, PAIR)

    @settings(max_examples=100)
    @given(signed_events())
    def test_valid(self, event: Event) -> None:
        """Every real event decodes to itself."""
        self.assertEqual(decode_event(*event.wire, NETWORK, PAIR), event)

    @settings(max_examples=250)
    @given(signed_events(), st.data())
    def test_mutated_text(self, event: Event, data: st.DataObject) -> None:
        """A damaged text never verifies under the original signature."""
        self.assert_only_original(event, data.draw(mutated(event.text, text_pieces)), event.sig)

    @settings(max_examples=200)
    @given(signed_events(), st.data())
    def test_mutated_signature(self, event: Event, data: st.DataObject) -> None:
        """A damaged signature never verifies (Ed25519 signatures are not malleable)."""
        self.assert_only_original(event, event.text, data.draw(mutated(event.sig, sig_pieces)))

    @settings(max_examples=200)
    @given(signed_events(), signed_events())
    def test_swapped_signature(self, event: Event, other: Event) -> None:
        """One event's signature on another's text never verifies."""
        self.assert_only_original(event, event.text, other.sig)

    @settings(max_examples=200)
    @given(signed_events(), st.integers(0, 127), st.sampled_from(HEX))
    def test_one_signature_digit(self, event: Event, index: int, digit: str) -> None:
        """Each single hex digit of the signature matters."""
        sig = event.sig[:index] + digit + event.sig[index + 1 :]
        self.assert_only_original(event, event.text, sig)

    def test_field_changes_that_stay_well_formed(self) -> None:
        """Well-formed changes (another seq, price, side, author) parse, then fail the signature."""
        event = AUTHORS[0].order(5, 7, 1000, "buy", "limit", "1.5", "2")
        for old, new in [(" 5 7 ", " 6 7 "), (" 7 1000 ", " 7 1001 "), ("buy", "sell"),
                         (" 1.5 ", " 1.50 "), (AUTHORS[0].author, AUTHORS[1].author)]:  # fmt: skip
            text = event.text.replace(old, new)
            parse_event(text, event.sig, NETWORK, PAIR)
            self.assertRaises(EventError, decode_event, text, event.sig, NETWORK, PAIR)
