"""Tests for :mod:`bitfitech.wire.messages`: frame payloads to typed messages and back."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.address import normalize_host
from bitfitech.wire.framing import MAX_PAYLOAD
from bitfitech.wire.messages import (
    COMMANDS,
    FAIR_ORDER_VERSION,
    MARKETS_VERSION,
    MAX_ADDRS,
    MAX_EVENT_TEXT,
    MAX_EVENTS,
    MAX_INV,
    MAX_MARKETS,
    MAX_PAIR,
    MAX_SEQ,
    MAX_TTL,
    MAX_USER_AGENT,
    MAX_VECTOR,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Addr,
    DialBack,
    DialedBack,
    Events,
    GetAddr,
    GetData,
    Inv,
    Message,
    MessageError,
    NetAddress,
    Ping,
    Pong,
    Prune,
    Stamps,
    Sync,
    Unknown,
    Verack,
    Version,
    decode_message,
    describe,
    encode_message,
    event_fragment,
)

NODE_A = "0123456789abcdef0123456789abcdef01234567"
NODE_B = "f" * 40

WITNESSES = "c" * 64
VERSION = Version(
    protocol_version=3,
    network="main",
    pair="BTC/USD",
    node_id=NODE_A,
    port=3000,
    user_agent="bitfi/0.1.0",
    services=("book",),
    nonce=2**64 - 1,
    time=1_700_000_000,
    witnesses=WITNESSES,
)
#: what a version 1 node sends: no witnesses
VERSION_1 = replace(VERSION, protocol_version=1, witnesses="")
#: what a version 4 node of three markets sends
VERSION_4 = replace(VERSION, protocol_version=4, markets=("BTC/USD", "ETH/USD", "ETH/BTC"))
ADDR = Addr(
    (
        NetAddress("192.0.2.1", 3000, NODE_B, 1_700_000_000),
        NetAddress("2001:db8::1", 3001, None, 0),
        NetAddress("node.example", 1, None, 5),
    )
)
EVENT_A = "0123456789abcdef" * 4
EVENT_B = "f" * 64
SIG = "0123456789abcdef" * 8
TEXT = "example event text"
AUTHOR_A = "a" * 64
AUTHOR_B = "fedcba9876543210" * 4
DIGEST = "d" * 64
PRINTABLE = "".join(map(chr, range(0x20, 0x7F)))
INV = Inv((EVENT_A, EVENT_B), 3)
GETDATA = GetData((EVENT_A,))
EVENTS = Events((("hello world", SIG), (PRINTABLE, "f" * 128), ("x", "0" * 128)), 2, False)
NO_EVENTS = Events((), 0, True)
SYNC = Sync(((AUTHOR_A, 0), (AUTHOR_B, 2**63 - 1)), DIGEST)
SYNC_STAMPS = Sync((), DIGEST, stamps=((AUTHOR_A, 7), (AUTHOR_B, 0)))
STAMPS = Stamps((("bitfi-stamp1 x", SIG), (PRINTABLE, "f" * 128)), True)
MARKET = "ETH/USD"
GossipMessage = Inv | GetData | Events | Sync | Stamps | Prune
"""The messages that may name a market."""
#: the gossip messages of version 4: each names its market
WITH_MARKET: list[GossipMessage] = [
    replace(INV, market=MARKET),
    replace(GETDATA, market=MARKET),
    replace(EVENTS, market=MARKET),
    replace(NO_EVENTS, market="é/€"),
    replace(SYNC_STAMPS, chains=((AUTHOR_B, DIGEST),), market=MARKET),
    replace(STAMPS, market=MARKET),
    Prune(MARKET),
]
EXAMPLES: list[Message] = [
    VERSION,
    VERSION_1,
    VERSION_4,
    Verack(),
    GetAddr(),
    Prune(),
    ADDR,
    Ping(0),
    Pong(2**64 - 1),
    INV,
    GETDATA,
    EVENTS,
    NO_EVENTS,
    SYNC,
    Sync((), DIGEST),
    SYNC_STAMPS,
    STAMPS,
    Stamps((), False),
    *WITH_MARKET,
    replace(VERSION_4, seen_as="203.0.113.9"),
    replace(VERSION, seen_as="2001:db8::7"),
    DialBack(2**64 - 1, 65535),
    DialedBack(1, "[2001:db8::7]:3000", True),
    DialedBack(2, "203.0.113.9:3000", False, "connection refused"),
]


def payload_of(message: Message) -> dict[str, Any]:
    """The JSON object a message encodes to."""
    result: dict[str, Any] = json.loads(encode_message(message)[1])
    return result


def dump(obj: object) -> bytes:
    """Encode a JSON value the lenient way, as a hostile peer might."""
    return json.dumps(obj).encode("utf-8")


text = st.text(st.characters(codec="utf-8"))
node_ids = st.from_regex(r"\A[0-9a-f]{40}\Z")
u64 = st.integers(min_value=0, max_value=2**64 - 1)
times = st.integers(min_value=0, max_value=2**40 - 1)
hostnames = st.from_regex(
    r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?){0,3}\Z"
)
hosts = st.one_of(st.ip_addresses().map(str), hostnames)
hex64 = st.from_regex(r"\A[0-9a-f]{64}\Z")
pairs = st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_PAIR)
market_fields = st.just("") | pairs
"""The ``market`` of a gossip message: none (the sender's pair), or any valid name."""
_version_fields: dict[str, st.SearchStrategy[Any]] = dict(
    network=st.text(st.characters(codec="utf-8"), min_size=1, max_size=64),
    pair=pairs,
    node_id=node_ids,
    port=st.integers(min_value=0, max_value=65535),
    user_agent=st.text(st.characters(codec="utf-8"), max_size=MAX_USER_AGENT),
    services=st.lists(st.from_regex(r"\A[a-z0-9_]{1,32}\Z"), max_size=32).map(tuple),
    nonce=u64,
    time=times,
    seen_as=st.just("") | st.ip_addresses().map(lambda ip: normalize_host(str(ip))),
)
_versions_with_witnesses = st.builds(
    Version,
    protocol_version=st.integers(min_value=FAIR_ORDER_VERSION, max_value=2**32 - 1),
    witnesses=hex64,
    **_version_fields,
)


@st.composite
def _with_markets(draw: st.DrawFn, version: Version) -> Version:
    """``version`` from :data:`MARKETS_VERSION` on, listing its pair and up to 15 other markets."""
    protocol_version = draw(st.integers(min_value=MARKETS_VERSION, max_value=2**32 - 1))
    others = draw(
        st.lists(pairs.filter(lambda m: m != version.pair), max_size=MAX_MARKETS - 1, unique=True)
    )
    return replace(version, protocol_version=protocol_version, markets=(version.pair, *others))


versions = st.one_of(
    _versions_with_witnesses,
    st.builds(Version, protocol_version=st.just(1), witnesses=st.just(""), **_version_fields),
    _versions_with_witnesses.flatmap(_with_markets),
)
net_addresses = st.builds(
    NetAddress,
    host=hosts,
    port=st.integers(min_value=1, max_value=65535),
    node_id=st.none() | node_ids,
    time=times,
)
addrs = st.builds(Addr, st.lists(net_addresses, max_size=20).map(tuple))
ttls = st.integers(min_value=0, max_value=MAX_TTL)
id_tuples = st.lists(hex64, min_size=1, max_size=20).map(tuple)
invs = st.builds(Inv, id_tuples, ttls, market_fields)
getdatas = st.builds(GetData, id_tuples, market_fields)
prunes = st.builds(Prune, market_fields)
event_texts = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=MAX_EVENT_TEXT
)
sigs = st.from_regex(r"\A[0-9a-f]{128}\Z")
events_messages = st.builds(
    Events,
    st.lists(st.tuples(event_texts, sigs), max_size=10).map(tuple),
    ttls,
    st.booleans(),
    market_fields,
)
_keyed = st.tuples(hex64, st.integers(min_value=0, max_value=MAX_SEQ))
syncs = st.builds(
    Sync,
    st.lists(_keyed, max_size=20, unique_by=lambda entry: entry[0]).map(tuple),
    hex64,
    chains=st.lists(st.tuples(hex64, hex64), max_size=3, unique_by=lambda e: e[0]).map(tuple),
    stamps=st.lists(_keyed, max_size=3, unique_by=lambda entry: entry[0]).map(tuple),
    market=market_fields,
)
dialbacks = st.builds(DialBack, u64, st.integers(min_value=1, max_value=65535))
dialed_backs = st.builds(
    DialedBack,
    u64,
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=64),
    st.booleans(),
    st.text(st.characters(codec="utf-8"), max_size=256),
)
stamps_messages = st.builds(
    Stamps,
    st.lists(st.tuples(event_texts, sigs), max_size=5).map(tuple),
    st.booleans(),
    market_fields,
)


class RoundTripTests(SynchronousTestCase):
    """Messages survive encoding and decoding."""

    def test_examples(self) -> None:
        """Each kind of message decodes back to an equal message."""
        for message in EXAMPLES:
            with self.subTest(message=describe(message)):
                command, payload = encode_message(message)
                self.assertEqual(command, describe(message))
                self.assertIsInstance(payload, bytes)
                self.assertEqual(decode_message(command, payload), message)

    def test_commands(self) -> None:
        """COMMANDS maps each known command to its class."""
        self.assertEqual(
            dict(COMMANDS),
            {
                "version": Version,
                "verack": Verack,
                "getaddr": GetAddr,
                "addr": Addr,
                "ping": Ping,
                "pong": Pong,
                "inv": Inv,
                "getdata": GetData,
                "prune": Prune,
                "events": Events,
                "sync": Sync,
                "stamps": Stamps,
                "dialback": DialBack,
                "dialedback": DialedBack,
            },
        )
        for message in EXAMPLES:
            self.assertIs(COMMANDS[describe(message)], type(message))

    def test_compact_deterministic_encoding(self) -> None:
        """Payloads are compact JSON with sorted keys and raw UTF-8."""
        self.assertEqual(encode_message(Verack()), ("verack", b"{}"))
        self.assertEqual(encode_message(GetAddr()), ("getaddr", b"{}"))
        self.assertEqual(encode_message(Prune()), ("prune", b"{}"))
        self.assertEqual(encode_message(Ping(7)), ("ping", b'{"nonce":7}'))
        self.assertEqual(
            encode_message(Addr((NetAddress("::1", 5, None, 9),))),
            ("addr", b'{"addrs":[{"host":"::1","node_id":null,"port":5,"time":9}]}'),
        )
        _, payload = encode_message(replace(VERSION, user_agent="bïtfi"))
        self.assertIn("bïtfi".encode(), payload)
        self.assertNotIn(b" ", payload)
        keys = list(json.loads(payload))
        self.assertEqual(keys, sorted(keys))
        self.assertEqual(
            set(keys),
            {
                "protocol_version",
                "network",
                "pair",
                "node_id",
                "port",
                "user_agent",
                "services",
                "nonce",
                "time",
                "witnesses",
            },
        )

    def test_compact_deterministic_encoding_gossip(self) -> None:
        """inv, getdata, events and sync encode as compact JSON with sorted keys."""
        self.assertEqual(
            encode_message(Inv((EVENT_B,), 0)),
            ("inv", b'{"ids":["' + EVENT_B.encode() + b'"],"ttl":0}'),
        )
        self.assertEqual(
            encode_message(GetData((EVENT_A, EVENT_B))),
            ("getdata", f'{{"ids":["{EVENT_A}","{EVENT_B}"]}}'.encode()),
        )
        self.assertEqual(
            encode_message(Events((("a b", SIG),), 1, False)),
            ("events", f'{{"events":[["a b","{SIG}"]],"more":false,"ttl":1}}'.encode()),
        )
        self.assertEqual(
            encode_message(NO_EVENTS), ("events", b'{"events":[],"more":true,"ttl":0}')
        )
        self.assertEqual(
            encode_message(Sync(((AUTHOR_A, 5),), DIGEST)),
            ("sync", f'{{"digest":"{DIGEST}","vector":[["{AUTHOR_A}",5]]}}'.encode()),
        )
        self.assertEqual(
            encode_message(Sync((), DIGEST)),
            ("sync", b'{"digest":"d' + b"d" * 63 + b'","vector":[]}'),
        )

    def test_event_text_escapes(self) -> None:
        """Quotes and backslashes in event text survive JSON escaping; limits count characters."""
        quoted = Events((('"' * MAX_EVENT_TEXT, SIG), ("\\", SIG)), 1, False)
        _, payload = encode_message(quoted)
        self.assertIn(b'\\"' * MAX_EVENT_TEXT, payload)
        self.assertEqual(decode_message("events", payload), quoted)

    def test_host_normalized(self) -> None:
        """Hosts are normalized: brackets dropped, IPv6 compressed, names lowercased."""
        self.assertEqual(NetAddress("[2001:DB8:0::1]", 1, None, 0).host, "2001:db8::1")
        self.assertEqual(NetAddress("Node.Example", 1, None, 0).host, "node.example")
        message = decode_message(
            "addr", dump({"addrs": [{"host": "[::1]", "port": 1, "node_id": None, "time": 0}]})
        )
        self.assertEqual(message, Addr((NetAddress("::1", 1, None, 0),)))

    def test_node_id_absent(self) -> None:
        """An addr entry without node_id decodes with node_id None."""
        message = decode_message("addr", dump({"addrs": [{"host": "h", "port": 1, "time": 0}]}))
        self.assertEqual(message, Addr((NetAddress("h", 1, None, 0),)))

    def test_extra_keys_ignored(self) -> None:
        """Unknown keys, at the top and in addr entries, are ignored."""
        obj = payload_of(VERSION)
        obj["future_field"] = {"nested": [1.5, None]}
        self.assertEqual(decode_message("version", dump(obj)), VERSION)
        obj = payload_of(ADDR)
        obj["addrs"][0]["services"] = ["x"]
        obj["more"] = 1
        self.assertEqual(decode_message("addr", dump(obj)), ADDR)
        self.assertEqual(decode_message("verack", b'{"x":1}'), Verack())
        gossip: list[Message] = [INV, GETDATA, EVENTS, NO_EVENTS, SYNC]
        for message in gossip:
            with self.subTest(message=describe(message)):
                obj = payload_of(message)
                obj["future_field"] = [[1, 2, 3], {"x": None}]
                self.assertEqual(decode_message(describe(message), dump(obj)), message)

    def test_unknown_command(self) -> None:
        """An unknown command is kept unparsed and re-encodes to the same bytes."""
        message = decode_message("mempool", b"\xff not json")
        self.assertEqual(message, Unknown("mempool", b"\xff not json"))
        self.assertEqual(describe(message), "mempool")
        self.assertEqual(encode_message(message), ("mempool", b"\xff not json"))

    def test_unknown_must_be_unknown(self) -> None:
        """Unknown refuses known commands, invalid commands and oversize payloads."""
        self.assertRaises(MessageError, Unknown, "ping", b"")
        for command in ["inv", "getdata", "events", "sync"]:
            self.assertRaises(MessageError, Unknown, command, b"")
        self.assertRaises(MessageError, Unknown, "Mempool", b"")
        self.assertRaises(MessageError, Unknown, "", b"")
        self.assertRaises(MessageError, decode_message, "BAD", b"{}")
        self.assertRaises(MessageError, Unknown, "mempool", bytes(MAX_PAYLOAD + 1))

    @settings(max_examples=200, deadline=None)
    @given(versions)
    def test_version_property(self, message: Version) -> None:
        """Any valid Version round-trips."""
        self.assertEqual(decode_message(*encode_message(message)), message)

    @settings(max_examples=200, deadline=None)
    @given(addrs)
    def test_addr_property(self, message: Addr) -> None:
        """Any valid Addr round-trips."""
        self.assertEqual(decode_message(*encode_message(message)), message)

    @settings(max_examples=200, deadline=None)
    @given(u64)
    def test_ping_pong_property(self, nonce: int) -> None:
        """Any valid Ping and Pong round-trips."""
        self.assertEqual(decode_message(*encode_message(Ping(nonce))), Ping(nonce))
        self.assertEqual(decode_message(*encode_message(Pong(nonce))), Pong(nonce))

    @settings(max_examples=200, deadline=None)
    @given(invs | getdatas)
    def test_inv_getdata_property(self, message: Inv | GetData) -> None:
        """Any valid Inv and GetData round-trips."""
        self.assertEqual(decode_message(*encode_message(message)), message)

    @settings(max_examples=200, deadline=None)
    @given(events_messages)
    def test_events_property(self, message: Events) -> None:
        """Any valid Events round-trips."""
        self.assertEqual(decode_message(*encode_message(message)), message)

    @settings(max_examples=200, deadline=None)
    @given(events_messages)
    def test_prepared_events_property(self, message: Events) -> None:
        """
        An Events prepared from its entries' fragments equals the checked one
        and encodes to the very same bytes (text with quotes and backslashes too).
        """
        fragments = [event_fragment(text, sig) for text, sig in message.events]
        prepared = Events.prepared(
            message.events, fragments, message.ttl, message.more, message.market
        )
        self.assertEqual(prepared, message)
        self.assertEqual(encode_message(prepared), encode_message(message))
        self.assertEqual(decode_message(*encode_message(prepared)), message)

    @settings(max_examples=200, deadline=None)
    @given(syncs)
    def test_sync_property(self, message: Sync) -> None:
        """Any valid Sync round-trips."""
        self.assertEqual(decode_message(*encode_message(message)), message)

    @settings(max_examples=200, deadline=None)
    @given(dialbacks | dialed_backs)
    def test_dialback_property(self, message: DialBack | DialedBack) -> None:
        """Any valid DialBack and DialedBack round-trips."""
        self.assertEqual(decode_message(*encode_message(message)), message)

    @settings(max_examples=200, deadline=None)
    @given(stamps_messages | prunes)
    def test_stamps_prune_property(self, message: Stamps | Prune) -> None:
        """Any valid Stamps and Prune round-trips."""
        self.assertEqual(decode_message(*encode_message(message)), message)

    @settings(max_examples=200, deadline=None)
    @given(st.text(st.characters(codec="utf-8"), max_size=MAX_EVENT_TEXT + 2))
    def test_event_text_property(self, value: str) -> None:
        """An event text is accepted exactly when it is 1 to 400 printable ASCII characters."""
        valid = 1 <= len(value) <= MAX_EVENT_TEXT and all(" " <= ch <= "~" for ch in value)
        payload = dump({"events": [[value, SIG]], "more": False, "ttl": 0})
        try:
            message = decode_message("events", payload)
        except MessageError as error:
            self.assertFalse(valid, str(error))
            self.assertEqual(error.field, "events[0][0]")
        else:
            self.assertTrue(valid)
            self.assertEqual(message, Events(((value, SIG),), 0, False))


class RejectionTests(SynchronousTestCase):
    """Malformed payloads and invalid messages raise MessageError."""

    def assert_rejected(self, command: str, payload: bytes, *words: str) -> MessageError:
        """Assert that decoding fails with a message naming the command and ``words``."""
        error: MessageError = self.assertRaises(MessageError, decode_message, command, payload)
        self.assertTrue(str(error).startswith(command + ":"), str(error))
        for word in words:
            self.assertIn(word, str(error))
        return error

    def assert_field_rejected(self, message: Message, field: str, value: object) -> None:
        """Assert that ``message`` with ``field`` set to ``value`` does not decode."""
        command = describe(message)
        obj = payload_of(message)
        obj[field] = value
        self.assert_rejected(command, dump(obj), field)

    def test_wrong_types(self) -> None:
        """Strings, lists, objects and null are refused where other types are expected."""
        self.assert_field_rejected(VERSION, "port", "3000")
        self.assert_field_rejected(VERSION, "network", 5)
        self.assert_field_rejected(VERSION, "node_id", None)
        self.assert_field_rejected(VERSION, "services", "book")
        self.assert_field_rejected(VERSION, "services", [1])
        self.assert_field_rejected(VERSION, "time", [1])
        self.assert_field_rejected(ADDR, "addrs", {"host": "h"})
        self.assert_field_rejected(ADDR, "addrs", ["h:1"])
        self.assert_field_rejected(Ping(1), "nonce", "1")
        self.assert_field_rejected(Pong(1), "nonce", None)

    def test_bool_for_int(self) -> None:
        """Booleans are not integers, although Python says they are."""
        self.assert_field_rejected(VERSION, "protocol_version", True)
        self.assert_field_rejected(VERSION, "port", True)
        self.assert_field_rejected(VERSION, "nonce", False)
        self.assert_field_rejected(Ping(1), "nonce", True)
        self.assertRaises(MessageError, Ping, True)
        self.assertRaises(MessageError, NetAddress, "h", True, None, 0)

    def test_float_for_int(self) -> None:
        """Floats are refused where integers are expected, even integral ones."""
        self.assert_field_rejected(VERSION, "time", 1.0)
        self.assert_field_rejected(Ping(1), "nonce", 1.5)
        self.assert_rejected("ping", b'{"nonce":1e3}', "nonce")
        self.assert_rejected("ping", b'{"nonce":1e999}', "nonce")

    def test_nan_and_infinity(self) -> None:
        """NaN and Infinity are refused anywhere, even in ignored keys."""
        for constant in [b"NaN", b"Infinity", b"-Infinity"]:
            with self.subTest(constant=constant):
                self.assert_rejected("ping", b'{"nonce":' + constant + b"}")
                self.assert_rejected("ping", b'{"nonce":1,"x":' + constant + b"}")

    def test_duplicate_key(self) -> None:
        """Duplicate keys are refused, at any depth."""
        self.assert_rejected("ping", b'{"nonce":1,"nonce":2}', "duplicate")
        self.assert_rejected("ping", b'{"nonce":1,"x":{"a":1,"a":1}}', "duplicate")

    def test_missing_field(self) -> None:
        """Every required field must be present."""
        for message in EXAMPLES:
            for field in payload_of(message):
                if field in ("market", "markets", "seen_as", "reason") or (
                    isinstance(message, Sync) and field in ("chains", "stamps")
                ):
                    continue  # optional
                with self.subTest(command=describe(message), field=field):
                    obj = payload_of(message)
                    del obj[field]
                    self.assert_rejected(describe(message), dump(obj), field, "missing")
        for field in ["host", "port", "time"]:
            with self.subTest(field=field):
                obj = payload_of(ADDR)
                del obj["addrs"][1][field]
                self.assert_rejected("addr", dump(obj), f"addrs[1].{field}", "missing")

    def test_not_an_object(self) -> None:
        """The top level must be a JSON object."""
        for command in COMMANDS:
            for payload in [b"[]", b"[{}]", b"1", b'"{}"', b"null", b"true"]:
                with self.subTest(command=command, payload=payload):
                    self.assert_rejected(command, payload, "object")

    def test_not_json(self) -> None:
        """Invalid JSON, empty payloads and trailing garbage are refused."""
        for payload in [b"", b"{", b"{}x", b"{'nonce':1}", b'{"nonce":1,}']:
            with self.subTest(payload=payload):
                self.assert_rejected("ping", payload)

    def test_invalid_utf8(self) -> None:
        """The payload must be UTF-8."""
        self.assert_rejected("version", b'{"network":"\xff"}', "UTF-8")
        self.assert_rejected("ping", b"\xc3", "UTF-8")

    def test_lone_surrogate(self) -> None:
        """Escaped lone surrogates, which UTF-8 cannot carry, are refused in text fields."""
        obj = payload_of(VERSION)
        payload = dump(obj).replace(b'"bitfi/0.1.0"', b'"\\ud800"')
        self.assert_rejected("version", payload, "user_agent")

    def test_deeply_nested(self) -> None:
        """Deep nesting is refused, not a crash."""
        self.assert_rejected("ping", b"[" * 100_000, "deep")
        self.assert_rejected("ping", b'{"x":' * 100_000, "deep")

    def test_huge_integer(self) -> None:
        """An integer with thousands of digits is refused."""
        self.assert_rejected("ping", b'{"nonce":' + b"9" * 5000 + b"}")
        self.assert_rejected("ping", b'{"nonce":' + b"9" * 30 + b"}", "nonce")

    def test_too_many_addrs(self) -> None:
        """An addr holds at most MAX_ADDRS entries."""
        entry = {"host": "192.0.2.1", "port": 1, "node_id": None, "time": 0}
        decoded = decode_message("addr", dump({"addrs": [entry] * MAX_ADDRS}))
        assert isinstance(decoded, Addr)
        self.assertEqual(len(decoded.addrs), MAX_ADDRS)
        self.assert_rejected("addr", dump({"addrs": [entry] * (MAX_ADDRS + 1)}), "addrs", "1001")
        entries = (NetAddress("192.0.2.1", 1, None, 0),) * (MAX_ADDRS + 1)
        self.assertRaises(MessageError, Addr, entries)

    def test_bad_node_id(self) -> None:
        """Node ids are 40 lowercase hex digits."""
        for value in ["A" * 40, "0" * 39, "0" * 41, "g" * 40, ""]:
            with self.subTest(value=value):
                self.assert_field_rejected(VERSION, "node_id", value)
                obj = payload_of(ADDR)
                obj["addrs"][0]["node_id"] = value
                self.assert_rejected("addr", dump(obj), "addrs[0].node_id")

    def test_bad_host(self) -> None:
        """Hosts must be host names or IP literals."""
        for value in ["", "a b", "1:2", "[::1", "-bad.example", "x" * 300, 5, None]:
            with self.subTest(value=value):
                obj = payload_of(ADDR)
                obj["addrs"][2]["host"] = value
                self.assert_rejected("addr", dump(obj), "addrs[2].host")

    def test_port_out_of_range(self) -> None:
        """Ports are 0 to 65535 in version (0: not listening), 1 to 65535 in addr."""
        obj = payload_of(VERSION)
        obj["port"] = 0
        self.assertEqual(decode_message("version", dump(obj)), replace(VERSION, port=0))
        for value in [-1, 65536]:
            with self.subTest(value=value):
                self.assert_field_rejected(VERSION, "port", value)
        for value in [0, -1, 65536]:
            with self.subTest(value=value):
                obj = payload_of(ADDR)
                obj["addrs"][0]["port"] = value
                self.assert_rejected("addr", dump(obj), "addrs[0].port")

    def test_nonce_range(self) -> None:
        """Nonces are unsigned 64-bit integers."""
        for value in [2**64, -1]:
            with self.subTest(value=value):
                self.assert_field_rejected(VERSION, "nonce", value)
                self.assert_field_rejected(Ping(1), "nonce", value)
                self.assert_field_rejected(Pong(1), "nonce", value)

    def test_time_range(self) -> None:
        """Times are from 0 to 2**40 - 1."""
        self.assertEqual(replace(VERSION, time=2**40 - 1).time, 2**40 - 1)
        for value in [2**40, -1]:
            with self.subTest(value=value):
                self.assert_field_rejected(VERSION, "time", value)
                obj = payload_of(ADDR)
                obj["addrs"][0]["time"] = value
                self.assert_rejected("addr", dump(obj), "addrs[0].time")

    def test_user_agent_length(self) -> None:
        """The user agent is at most MAX_USER_AGENT characters."""
        self.assertEqual(replace(VERSION, user_agent="ü" * MAX_USER_AGENT).user_agent[-1], "ü")
        self.assert_field_rejected(VERSION, "user_agent", "u" * (MAX_USER_AGENT + 1))

    def test_version_text_fields(self) -> None:
        """Network, pair and services are bounded and non-empty."""
        self.assert_field_rejected(VERSION, "network", "")
        self.assert_field_rejected(VERSION, "network", "n" * 65)
        self.assert_field_rejected(VERSION, "pair", "")
        self.assert_field_rejected(VERSION, "pair", "p" * 33)
        self.assert_field_rejected(VERSION, "protocol_version", 0)
        self.assert_field_rejected(VERSION, "services", ["Book"])
        self.assert_field_rejected(VERSION, "services", [""])
        self.assert_field_rejected(VERSION, "services", ["s" * 33])
        self.assert_field_rejected(VERSION, "services", ["s"] * 33)

    def test_version_witnesses(self) -> None:
        """From protocol version 2 on, the witness set's digest: 64 lowercase hex digits."""
        for value in ["", "C" * 64, "c" * 63, "c" * 65, "g" * 64, " " + "c" * 63, 5, None]:
            with self.subTest(value=value):
                self.assert_field_rejected(VERSION, "witnesses", value)
        self.assert_field_rejected(VERSION, "witnesses", ["c" * 64])
        error = self.assertRaises(MessageError, replace, VERSION, witnesses="")
        self.assertEqual(error.field, "witnesses")
        self.assertIn("witness set digest", str(error))
        obj = payload_of(VERSION)
        del obj["witnesses"]
        self.assert_rejected("version", dump(obj), "witnesses", "missing")

    def test_version_1_has_no_witnesses(self) -> None:
        """
        A version 1 ``version`` decodes without witnesses (the handshake
        refuses the peer, not the codec); a key sent anyway is ignored.
        """
        obj = payload_of(VERSION_1)
        self.assertNotIn("witnesses", obj)
        self.assertEqual(decode_message("version", dump(obj)), VERSION_1)
        obj["witnesses"] = "not a digest"
        self.assertEqual(decode_message("version", dump(obj)), VERSION_1)
        error = self.assertRaises(MessageError, replace, VERSION_1, witnesses=WITNESSES)
        self.assertEqual(error.field, "witnesses")
        obj = payload_of(VERSION)
        obj["protocol_version"] = "2"
        self.assert_rejected("version", dump(obj), "protocol_version")

    def test_event_id_count(self) -> None:
        """inv and getdata hold 1 to MAX_INV event ids."""
        ids = [f"{i:064x}" for i in range(MAX_INV + 1)]
        for command in ["inv", "getdata"]:
            with self.subTest(command=command):
                decoded = decode_message(command, dump({"ids": ids[:MAX_INV], "ttl": 0}))
                assert isinstance(decoded, (Inv, GetData))
                self.assertEqual(len(decoded.ids), MAX_INV)
                self.assert_rejected(command, dump({"ids": ids, "ttl": 0}), "ids", "1001")
                self.assert_rejected(command, dump({"ids": [], "ttl": 0}), "ids", "0")
        self.assertEqual(len(Inv((EVENT_A,), 0).ids), 1)
        self.assertRaises(MessageError, Inv, tuple(ids), 0)
        self.assertRaises(MessageError, Inv, (), 0)
        self.assertRaises(MessageError, GetData, tuple(ids))
        self.assertRaises(MessageError, GetData, ())

    def test_bad_event_id(self) -> None:
        """Event ids are 64 lowercase hex digits."""
        for value in [
            "A" * 64,
            "0" * 63 + "A",
            "0" * 63,
            "0" * 65,
            "g" * 64,
            "",
            " " + "0" * 63,
            "0" * 64 + "\n",
            64,
            None,
            ["0" * 64],
        ]:
            with self.subTest(value=value):
                obj = payload_of(INV)
                obj["ids"][1] = value
                self.assert_rejected("inv", dump(obj), "ids[1]")
                obj = payload_of(GETDATA)
                obj["ids"][0] = value
                self.assert_rejected("getdata", dump(obj), "ids[0]")
        self.assert_field_rejected(INV, "ids", EVENT_A)
        self.assert_field_rejected(GETDATA, "ids", {"0": EVENT_A})

    def test_ttl_range(self) -> None:
        """ttl is an integer from 0 to MAX_TTL in inv and events."""
        with_ttl: list[Inv | Events] = [INV, EVENTS]
        for message in with_ttl:
            with self.subTest(command=describe(message)):
                for value in [0, MAX_TTL]:
                    obj = payload_of(message)
                    obj["ttl"] = value
                    self.assertEqual(
                        decode_message(describe(message), dump(obj)), replace(message, ttl=value)
                    )
                for bad in [MAX_TTL + 1, -1, True, False, 1.0, "1", None, [1]]:
                    self.assert_field_rejected(message, "ttl", bad)
        self.assertRaises(MessageError, Inv, (EVENT_A,), 256)
        self.assertRaises(MessageError, Events, (), True, False)

    def test_events_count(self) -> None:
        """An events message holds 0 to MAX_EVENTS events."""
        entry = ["e", SIG]
        decoded = decode_message(
            "events", dump({"events": [entry] * MAX_EVENTS, "more": True, "ttl": 0})
        )
        assert isinstance(decoded, Events)
        self.assertEqual(len(decoded.events), MAX_EVENTS)
        self.assertEqual(decoded.events[-1], ("e", SIG))
        payload = dump({"events": [entry] * (MAX_EVENTS + 1), "more": True, "ttl": 0})
        self.assert_rejected("events", payload, "events", "1001")
        self.assertRaises(MessageError, Events, (("e", SIG),) * (MAX_EVENTS + 1), 0, False)
        self.assertEqual(decode_message("events", dump(payload_of(NO_EVENTS))), NO_EVENTS)

    def test_event_text(self) -> None:
        """Event text is 1 to MAX_EVENT_TEXT characters, each printable ASCII 0x20 to 0x7e."""
        for value in [" ", "~", PRINTABLE, "~" * MAX_EVENT_TEXT, " " * MAX_EVENT_TEXT]:
            with self.subTest(value=value):
                obj = payload_of(EVENTS)
                obj["events"][0][0] = value
                decoded = decode_message("events", dump(obj))
                assert isinstance(decoded, Events)
                self.assertEqual(decoded.events[0], (value, SIG))
        for bad in [
            "",
            "x" * (MAX_EVENT_TEXT + 1),
            "a\x1f",
            "\x7f",
            "\x00",
            "tab\there",
            "line\n",
            "\r",
            "caf\u00e9",
            "\u2028",
            "\ud800",
            "\U0001f600",
            5,
            None,
            ["text"],
        ]:
            with self.subTest(bad=bad):
                obj = payload_of(EVENTS)
                obj["events"][1][0] = bad
                self.assert_rejected("events", dump(obj), "events[1][0]")
        error = self.assertRaises(MessageError, Events, (("é", SIG),), 0, False)
        self.assertIn("printable ASCII", str(error))
        error = self.assertRaises(MessageError, Events, (("", SIG),), 0, False)
        self.assertIn("1 to 400 characters", str(error))

    def test_event_batch_sig(self) -> None:
        """
        A batch signature passes the wire's shape check (the event module
        checks the rest); anything too long or not of its characters fails.
        """
        good = "b3.2." + SIG + "ab" * 64
        self.assertEqual(Events(((TEXT, good),), 0, False).events[0][1], good)
        longest = "b1024.1023." + SIG + "cd" * 320
        self.assertEqual(len(longest), 779)
        self.assertEqual(Events(((TEXT, longest),), 0, False).events[0][1], longest)
        for bad in [longest + "0", "b3.2." + SIG.upper(), "b3.2 " + SIG, "b" + SIG, "x3.2." + SIG]:
            with self.subTest(bad=bad):
                error = self.assertRaises(MessageError, Events, ((TEXT, bad),), 0, False)
                self.assertIn("or a batch signature", str(error))

    def test_largest_events_fit(self) -> None:
        """The most events, each of the longest text (escaped) and signature, fit one frame."""
        text = '"' * MAX_EVENT_TEXT
        sig = "b1024.1023." + SIG + "cd" * 320
        _, payload = encode_message(Events(((text, sig),) * MAX_EVENTS, 255, True))
        self.assertLessEqual(len(payload), MAX_PAYLOAD)

    def test_event_sig(self) -> None:
        """Signatures are exactly 128 lowercase hex digits, or a batch signature."""
        for bad in [
            "0" * 127,
            "0" * 129,
            "A" * 128,
            "0" * 127 + "F",
            "g" * 128,
            "",
            "0" * 127 + " ",
            128,
            None,
        ]:
            with self.subTest(bad=bad):
                obj = payload_of(EVENTS)
                obj["events"][2][1] = bad
                self.assert_rejected("events", dump(obj), "events[2][1]")

    def test_event_entry_shape(self) -> None:
        """Each event is an array of exactly two strings [text, sig]."""
        for bad in [
            ["x", SIG, "extra"],
            ["x"],
            [],
            "x",
            {"text": "x", "sig": SIG},
            None,
            [["x", SIG]],
        ]:
            with self.subTest(bad=bad):
                obj = payload_of(EVENTS)
                obj["events"][1] = bad
                error = self.assert_rejected("events", dump(obj), "[text, sig]")
                self.assertEqual(error.field, "events[1]")
        self.assert_field_rejected(EVENTS, "events", {"0": ["x", SIG]})
        self.assert_field_rejected(EVENTS, "events", "x")
        self.assertRaises(MessageError, Events, (("x", SIG, "extra"),), 0, False)
        self.assertRaises(MessageError, Events, (["x", SIG],), 0, False)
        self.assertRaises(MessageError, Events, [("x", SIG)], 0, False)
        self.assertRaises(MessageError, Events, ("x",), 0, False)

    def test_more_is_a_bool(self) -> None:
        """more must be a real JSON bool."""
        self.assertEqual(
            decode_message("events", dump({**payload_of(EVENTS), "more": True})),
            replace(EVENTS, more=True),
        )
        for bad in [0, 1, "false", "true", None, [], 1.0]:
            with self.subTest(bad=bad):
                self.assert_field_rejected(EVENTS, "more", bad)
        self.assertRaises(MessageError, Events, (), 0, 1)
        self.assertRaises(MessageError, Events, (), 0, None)

    def test_stamps(self) -> None:
        """A stamps message carries (text, sig) pairs of printable ASCII and a more flag."""
        self.assertEqual(
            payload_of(STAMPS), {"stamps": [list(pair) for pair in STAMPS.stamps], "more": True}
        )
        for bad in ["", "x" * 96_001, "caf\u00e9", "tab\there", 5, None]:
            with self.subTest(bad=bad):
                obj = payload_of(STAMPS)
                obj["stamps"][0][0] = bad
                self.assert_rejected("stamps", dump(obj), "stamps[0][0]")
        obj = payload_of(STAMPS)
        obj["stamps"][1][1] = "F" * 128
        self.assert_rejected("stamps", dump(obj), "stamps[1][1]")
        self.assert_rejected("stamps", dump({"stamps": [], "more": 1}), "more")
        self.assertRaises(MessageError, Stamps, ((("x", SIG),) * 1001), False)

    def test_sync_stamps(self) -> None:
        """A sync's stamps vector: unique witness keys, seqs 0 to 2**63 - 1, omitted when empty."""
        self.assertNotIn("stamps", payload_of(SYNC))
        self.assertEqual(payload_of(SYNC_STAMPS)["stamps"], [[AUTHOR_A, 7], [AUTHOR_B, 0]])
        for bad in [
            [[AUTHOR_A, 1], [AUTHOR_A, 2]],
            [["A" * 64, 1]],
            [[AUTHOR_A, -1]],
            [[AUTHOR_A]],
        ]:
            with self.subTest(bad=bad):
                obj = payload_of(SYNC_STAMPS)
                obj["stamps"] = bad
                with self.assertRaises(MessageError):
                    decode_message("sync", dump(obj))
        too_many = [[f"{i:064x}", 1] for i in range(32)]
        with self.assertRaises(MessageError):
            decode_message("sync", dump({"vector": [], "digest": DIGEST, "stamps": too_many}))

    def test_vector_count(self) -> None:
        """A sync vector holds 0 to MAX_VECTOR entries."""
        vector = [[f"{i:064x}", i] for i in range(MAX_VECTOR + 1)]
        decoded = decode_message("sync", dump({"vector": vector[:MAX_VECTOR], "digest": DIGEST}))
        assert isinstance(decoded, Sync)
        self.assertEqual(len(decoded.vector), MAX_VECTOR)
        self.assertEqual(decoded.vector[-1], (f"{MAX_VECTOR - 1:064x}", MAX_VECTOR - 1))
        self.assert_rejected("sync", dump({"vector": vector, "digest": DIGEST}), "vector", "10001")
        entries = tuple((author, seq) for author, seq in vector)
        self.assertRaises(MessageError, Sync, entries, DIGEST)
        self.assertEqual(Sync((), DIGEST).vector, ())

    def test_vector_seq(self) -> None:
        """Sequence numbers are integers from 0 to 2**63 - 1."""
        for value in [0, MAX_SEQ]:
            obj = payload_of(SYNC)
            obj["vector"][0][1] = value
            decoded = decode_message("sync", dump(obj))
            assert isinstance(decoded, Sync)
            self.assertEqual(decoded.vector[0], (AUTHOR_A, value))
        for bad in [MAX_SEQ + 1, -1, True, False, 1.0, 1.5, "1", None, [1]]:
            with self.subTest(bad=bad):
                obj = payload_of(SYNC)
                obj["vector"][1][1] = bad
                self.assert_rejected("sync", dump(obj), "vector[1][1]")
        self.assertRaises(MessageError, Sync, ((AUTHOR_A, True),), DIGEST)
        self.assertRaises(MessageError, Sync, ((AUTHOR_A, 2**63),), DIGEST)

    def test_vector_author(self) -> None:
        """Authors are 64 lowercase hex digits, unique within the message."""
        for bad in ["A" * 64, "0" * 63, "0" * 65, "0" * 63 + "G", "", 5, None]:
            with self.subTest(bad=bad):
                obj = payload_of(SYNC)
                obj["vector"][0][0] = bad
                self.assert_rejected("sync", dump(obj), "vector[0][0]")
        obj = payload_of(SYNC)
        obj["vector"].append([AUTHOR_A, 7])
        self.assert_rejected("sync", dump(obj), "vector[2][0]", "duplicate")
        self.assertRaises(MessageError, Sync, ((AUTHOR_A, 1), (AUTHOR_A, 1)), DIGEST)

    def test_vector_entry_shape(self) -> None:
        """Each vector entry is an array [author, seq] of exactly two elements."""
        for bad in [[AUTHOR_A, 1, 2], [AUTHOR_A], [], AUTHOR_A, {"author": AUTHOR_A}, None]:
            with self.subTest(bad=bad):
                obj = payload_of(SYNC)
                obj["vector"][1] = bad
                error = self.assert_rejected("sync", dump(obj), "[author, seq]")
                self.assertEqual(error.field, "vector[1]")
        self.assert_field_rejected(SYNC, "vector", {AUTHOR_A: 1})
        self.assertRaises(MessageError, Sync, ((AUTHOR_A, 1, 2),), DIGEST)
        self.assertRaises(MessageError, Sync, ([AUTHOR_A, 1],), DIGEST)
        self.assertRaises(MessageError, Sync, [(AUTHOR_A, 1)], DIGEST)

    def test_bad_digest(self) -> None:
        """The digest is 64 lowercase hex digits."""
        for bad in ["D" * 64, "d" * 63, "d" * 65, "x" * 64, "", 0, None, ["d" * 64]]:
            with self.subTest(bad=bad):
                self.assert_field_rejected(SYNC, "digest", bad)
        self.assertRaises(MessageError, Sync, (), "D" * 64)

    def test_invalid_messages_cannot_be_built(self) -> None:
        """Building an invalid message raises MessageError, so it is never sent."""
        self.assertRaises(MessageError, replace, VERSION, port=70000)
        self.assertRaises(MessageError, replace, VERSION, node_id="nope")
        self.assertRaises(MessageError, replace, VERSION, services=["book"])
        self.assertRaises(MessageError, replace, VERSION, user_agent="\ud800")
        self.assertRaises(MessageError, Pong, 2**64)
        self.assertRaises(MessageError, NetAddress, "", 1, None, 0)
        self.assertRaises(MessageError, Addr, [NetAddress("h", 1, None, 0)])
        self.assertRaises(MessageError, Addr, ("h:1",))

    def test_error_names_command_and_field(self) -> None:
        """A MessageError says which command and which field."""
        obj = payload_of(ADDR)
        obj["addrs"][1]["port"] = "x"
        error = self.assert_rejected("addr", dump(obj))
        self.assertEqual(error.command, "addr")
        self.assertEqual(error.field, "addrs[1].port")
        obj = payload_of(EVENTS)
        obj["events"].append(["x", SIG.upper()])
        error = self.assert_rejected("events", dump(obj), "events[3][1]")
        self.assertEqual(error.command, "events")
        self.assertEqual(error.field, "events[3][1]")

    def test_seen_as(self) -> None:
        """``seen_as`` is an IP address in canonical form, any version; no key when not said."""
        self.assertNotIn("seen_as", payload_of(VERSION))
        said = replace(VERSION_4, seen_as="203.0.113.9")
        self.assertEqual(payload_of(said)["seen_as"], "203.0.113.9")
        for bad in ("example.org", "203.0.113.9:3000", "2001:DB8::7", "2001:db8:0::7",
                    "::ffff:203.0.113.300", "1" * 46, 5, None, ["::1"]):  # fmt: skip
            self.assert_field_rejected(VERSION_4, "seen_as", bad)

    def test_dialback(self) -> None:
        """A ``dialback``'s port is 1 to 65535; a ``dialedback``'s ok a boolean, reason short."""
        self.assert_field_rejected(DialBack(1, 3000), "port", 0)
        self.assert_field_rejected(DialBack(1, 3000), "port", 65536)
        self.assert_field_rejected(DialBack(1, 3000), "nonce", -1)
        answer = DialedBack(1, "203.0.113.9:3000", False, "timed out")
        self.assert_field_rejected(answer, "ok", 1)
        self.assert_field_rejected(answer, "ok", "true")
        self.assert_field_rejected(answer, "reason", "r" * 257)
        self.assert_field_rejected(answer, "address", "")
        self.assertNotIn("reason", payload_of(DialedBack(1, "203.0.113.9:3000", True)))


class ArbitraryPayloadTests(SynchronousTestCase):
    """Hostile payloads only ever raise MessageError."""

    def check(self, command: str, payload: bytes) -> None:
        """Decode, allowing only MessageError; a result must re-encode."""
        try:
            message = decode_message(command, payload)
        except MessageError:
            return
        self.assertEqual(describe(message), command)
        self.assertEqual(decode_message(*encode_message(message)), message)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(sorted(COMMANDS)), st.binary(max_size=200))
    def test_arbitrary_bytes(self, command: str, payload: bytes) -> None:
        """Random bytes as a payload of any known command."""
        self.check(command, payload)

    @settings(max_examples=200, deadline=None)
    @given(
        st.sampled_from(sorted(COMMANDS)),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | text,
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "nonce",
                            "addrs",
                            "host",
                            "port",
                            "node_id",
                            "time",
                            "services",
                            "ids",
                            "ttl",
                            "events",
                            "more",
                            "vector",
                            "digest",
                            "market",
                            "markets",
                            "x",
                        ]
                    )
                    | text,
                    children,
                    max_size=5,
                )
            ),
            max_leaves=20,
        ),
    )
    def test_arbitrary_json(self, command: str, value: object) -> None:
        """Random JSON values, with plausible keys, as a payload of any known command."""
        self.check(command, json.dumps(value).encode("ascii"))


class MarketTests(SynchronousTestCase):
    """
    Protocol version 4: a ``version`` lists the sender's markets and each
    gossip message may name its market; version 3 payloads have neither.
    """

    def test_constants(self) -> None:
        """Version 4 speaks markets; version 3 peers are still talked to."""
        self.assertEqual(
            (PROTOCOL_VERSION, MARKETS_VERSION, MIN_PROTOCOL_VERSION, MAX_MARKETS), (4, 4, 3, 16)
        )

    def test_version_3_payloads(self) -> None:
        """
        A payload without the new keys (all a version 3 node sends) decodes
        with no markets and no market, and today's messages encode to the
        very same bytes as before.
        """
        obj = payload_of(VERSION)
        self.assertNotIn("markets", obj)
        decoded = decode_message("version", dump(obj))
        assert isinstance(decoded, Version)
        self.assertEqual(decoded.markets, ())
        old: list[tuple[GossipMessage, bytes]] = [
            (Inv((EVENT_B,), 0), b'{"ids":["%s"],"ttl":0}' % EVENT_B.encode()),
            (GetData((EVENT_A,)), b'{"ids":["%s"]}' % EVENT_A.encode()),
            (NO_EVENTS, b'{"events":[],"more":true,"ttl":0}'),
            (Sync((), DIGEST), b'{"digest":"%s","vector":[]}' % DIGEST.encode()),
            (Stamps((), False), b'{"more":false,"stamps":[]}'),
            (Prune(), b"{}"),
        ]
        for message, payload in old:
            with self.subTest(message=describe(message)):
                self.assertEqual(encode_message(message), (describe(message), payload))
                decoded = decode_message(describe(message), payload)
                self.assertEqual(decoded, message)
                self.assertEqual(getattr(decoded, "market", None), "")

    def test_market_round_trip(self) -> None:
        """Each gossip message names its market in a ``market`` key, in sorted place."""
        self.assertEqual(
            {describe(message) for message in WITH_MARKET},
            {"inv", "getdata", "events", "sync", "stamps", "prune"},
        )
        for message in WITH_MARKET:
            with self.subTest(message=describe(message)):
                command, payload = encode_message(message)
                self.assertEqual(decode_message(command, payload), message)
                keys = list(json.loads(payload))
                self.assertEqual(keys, sorted(keys))
                self.assertEqual(json.loads(payload)["market"], message.market)
                plain = replace(message, market="")  # type: ignore[call-arg]
                self.assertNotIn("market", payload_of(plain))
        self.assertEqual(
            encode_message(Inv((EVENT_B,), 2, "ETH/USD")),
            ("inv", b'{"ids":["%s"],"market":"ETH/USD","ttl":2}' % EVENT_B.encode()),
        )
        self.assertEqual(encode_message(Prune("BTC/USD")), ("prune", b'{"market":"BTC/USD"}'))
        self.assertEqual(
            encode_message(Events((), 0, False, "é/€")),
            ("events", '{"events":[],"market":"é/€","more":false,"ttl":0}'.encode()),
        )

    def test_market_empty_key(self) -> None:
        """An explicit empty ``market`` means the same as none."""
        for message in WITH_MARKET:
            with self.subTest(message=describe(message)):
                obj = payload_of(message)
                obj["market"] = ""
                plain = replace(message, market="")  # type: ignore[call-arg]
                self.assertEqual(decode_message(describe(message), dump(obj)), plain)

    def test_bad_market(self) -> None:
        """A market is a string of 1 to 32 characters, valid Unicode; anything else is refused."""
        for message in WITH_MARKET:
            for bad in ["p" * (MAX_PAIR + 1), 5, True, None, ["BTC/USD"], {"pair": "BTC/USD"}]:
                with self.subTest(message=describe(message), bad=bad):
                    obj = payload_of(message)
                    obj["market"] = bad
                    error = self.assertRaises(
                        MessageError, decode_message, describe(message), dump(obj)
                    )
                    self.assertEqual((error.command, error.field), (describe(message), "market"))
                    self.assertRaises(
                        MessageError,
                        replace,
                        message,
                        market=bad,  # type: ignore[call-arg]
                    )
            with self.subTest(message=describe(message), bad="lone surrogate"):
                payload = dump({**payload_of(message), "market": "SURROGATE"})
                payload = payload.replace(b'"SURROGATE"', b'"\\ud800"')
                error = self.assertRaises(MessageError, decode_message, describe(message), payload)
                self.assertEqual(error.field, "market")
        self.assertEqual(Inv((EVENT_A,), 0, "p" * MAX_PAIR).market, "p" * MAX_PAIR)

    def test_prepared_events_with_market(self) -> None:
        """
        A prepared ``events`` encodes to the same bytes as the checked
        message, with a market and without; a bad market is refused.
        """
        for market in ["", "BTC/USD", "é/€", 'quo"te\\']:
            for message in [replace(EVENTS, market=market), replace(NO_EVENTS, market=market)]:
                with self.subTest(market=market, events=len(message.events)):
                    fragments = [event_fragment(text, sig) for text, sig in message.events]
                    prepared = Events.prepared(
                        message.events, fragments, message.ttl, message.more, market
                    )
                    self.assertEqual(prepared, message)
                    self.assertEqual(encode_message(prepared), encode_message(message))
                    self.assertEqual(decode_message(*encode_message(prepared)), message)
        fragments = [event_fragment(text, sig) for text, sig in EVENTS.events]
        for bad in ["p" * (MAX_PAIR + 1), "\ud800"]:
            with self.subTest(bad=bad):
                self.assertRaises(
                    MessageError, Events.prepared, EVENTS.events, fragments, 0, False, bad
                )

    def test_version_markets(self) -> None:
        """A version 4 ``version`` lists its markets, the pair first; no key when there are none."""
        obj = payload_of(VERSION_4)
        self.assertEqual(obj["markets"], ["BTC/USD", "ETH/USD", "ETH/BTC"])
        self.assertEqual(decode_message("version", dump(obj)), VERSION_4)
        one = replace(VERSION_4, markets=())
        self.assertNotIn("markets", payload_of(one))
        obj["markets"] = []
        self.assertEqual(decode_message("version", dump(obj)), one)
        most = tuple(f"M{i}" for i in range(1, MAX_MARKETS))
        full = replace(VERSION_4, markets=("BTC/USD", *most))
        self.assertEqual(decode_message(*encode_message(full)), full)
        only = replace(VERSION_4, markets=("BTC/USD",))
        self.assertEqual(decode_message(*encode_message(only)), only)

    def test_bad_version_markets(self) -> None:
        """
        Markets are refused when repeated, too many, not led by the pair, or
        not each a valid pair name, naming the field at fault.
        """
        cases: list[tuple[object, str, str]] = [
            (["BTC/USD", "ETH/USD", "BTC/USD"], "markets[2]", "duplicate"),
            (["BTC/USD", "ETH/USD", "ETH/USD"], "markets[2]", "duplicate"),
            (["BTC/USD", *(f"M{i}" for i in range(MAX_MARKETS))], "markets", "0 to 16"),
            (["ETH/USD", "BTC/USD"], "markets[0]", "pair"),
            (["ETH/USD"], "markets[0]", "pair"),
            (["BTC/USD", ""], "markets[1]", "1 to 32"),
            (["BTC/USD", "p" * (MAX_PAIR + 1)], "markets[1]", "1 to 32"),
            (["BTC/USD", 5], "markets[1]", "string"),
            (["BTC/USD", None], "markets[1]", "string"),
            (["BTC/USD", ["ETH/USD"]], "markets[1]", "string"),
            ("BTC/USD", "markets", "list"),
            ({"BTC/USD": 1}, "markets", "list"),
            (None, "markets", "list"),
        ]
        for bad, field, word in cases:
            with self.subTest(bad=bad):
                obj = payload_of(VERSION_4)
                obj["markets"] = bad
                error = self.assert_rejected_version(dump(obj), word)
                self.assertEqual(error.field, field)
                if isinstance(bad, list):
                    self.assertRaises(MessageError, replace, VERSION_4, markets=tuple(bad))
        payload = dump(payload_of(VERSION_4)).replace(b'"ETH/BTC"', b'"\\ud800"')
        self.assertEqual(self.assert_rejected_version(payload, "Unicode").field, "markets[2]")
        self.assertRaises(MessageError, replace, VERSION_4, markets=["BTC/USD"])

    def test_no_markets_below_version_4(self) -> None:
        """
        Below version 4 ``version`` has no markets: a key sent anyway is
        ignored (those versions know no such field), and none can be built.
        """
        for old in [VERSION, VERSION_1, replace(VERSION, protocol_version=MARKETS_VERSION - 1)]:
            with self.subTest(protocol_version=old.protocol_version):
                obj = payload_of(old)
                obj["markets"] = ["BTC/USD", "ETH/USD"]
                self.assertEqual(decode_message("version", dump(obj)), old)
                obj["markets"] = "junk"
                self.assertEqual(decode_message("version", dump(obj)), old)
                error = self.assertRaises(
                    MessageError, replace, old, markets=("BTC/USD", "ETH/USD")
                )
                self.assertEqual(error.field, "markets")

    def assert_rejected_version(self, payload: bytes, word: str) -> MessageError:
        """Assert that a ``version`` payload is refused with ``word`` in the error."""
        error: MessageError = self.assertRaises(MessageError, decode_message, "version", payload)
        self.assertEqual(error.command, "version")
        self.assertIn(word, str(error))
        return error
