"""Tests for the KRPC codec (:mod:`bitfitech.discovery.kademlia.krpc`) and ids."""

from __future__ import annotations

import hashlib
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.discovery.kademlia.bencode import decode, encode
from bitfitech.discovery.kademlia.ids import (
    distance,
    market_info_hash,
    network_info_hash,
    parse_hex_id,
)
from bitfitech.discovery.kademlia.krpc import (
    MAX_TRANSACTION,
    METHOD_UNKNOWN,
    PROTOCOL_ERROR,
    AnnouncePeer,
    ErrorReply,
    FindNode,
    GetPeers,
    KRPCError,
    Message,
    NodeInfo,
    Ping,
    Response,
    decode_message,
    encode_message,
)

ID = b"\x01" * 20
OTHER = b"\x02" * 20

ids = st.binary(min_size=20, max_size=20)
transactions = st.binary(min_size=1, max_size=8)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: ".".join(str(b) for b in n.to_bytes(4, "big")))
ports = st.integers(1, 65535)
nodes = st.builds(NodeInfo, ids, ipv4, ports)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, transactions, ids, st.booleans()),
    st.builds(FindNode, transactions, ids, ids, st.booleans()),
    st.builds(GetPeers, transactions, ids, ids, st.booleans()),
    st.builds(
        AnnouncePeer,
        transactions,
        ids,
        ids,
        ports,
        st.binary(max_size=20),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(
        Response,
        transactions,
        ids,
        st.lists(nodes, max_size=8).map(tuple),
        st.lists(st.tuples(ipv4, ports), max_size=20).map(tuple),
        st.none() | st.binary(max_size=20),
        st.booleans(),
    ),
    st.builds(ErrorReply, transactions, st.integers(201, 204), st.text(max_size=30)),
)


def query(method: bytes, **args: object) -> bytes:
    """A query datagram with transaction ``aa`` and the given arguments."""
    return encode({"t": b"aa", "y": b"q", "q": method, "a": {"id": ID, **args}})


class IdsTests(SynchronousTestCase):
    """Tests for :mod:`bitfitech.discovery.kademlia.ids`."""

    def test_network_info_hash(self) -> None:
        """The info-hash is SHA-1 of ``bitfi:<network>:<pair>``."""
        self.assertEqual(
            network_info_hash("main", "BTC/USD"), hashlib.sha1(b"bitfi:main:BTC/USD").digest()
        )
        self.assertNotEqual(
            network_info_hash("main", "BTC/USD"), network_info_hash("test", "BTC/USD")
        )
        self.assertRaises(UnicodeEncodeError, network_info_hash, "mäin", "BTC/USD")

    def test_market_info_hash(self) -> None:
        """One info-hash per market, by today's rule: a one-market node announces today's hash."""
        self.assertIs(market_info_hash, network_info_hash)
        self.assertEqual(
            market_info_hash("main", "ETH/USD"), hashlib.sha1(b"bitfi:main:ETH/USD").digest()
        )
        self.assertNotEqual(
            market_info_hash("main", "BTC/USD"), market_info_hash("main", "ETH/USD")
        )

    def test_distance_and_hex(self) -> None:
        """XOR distance is symmetric and zero to oneself; hex ids parse back."""
        self.assertEqual(distance(ID, ID), 0)
        self.assertEqual(distance(ID, OTHER), distance(OTHER, ID))
        self.assertEqual(parse_hex_id(ID.hex()), ID)
        self.assertIsNone(parse_hex_id("zz"))
        self.assertIsNone(parse_hex_id("00" * 19))


class CodecTests(SynchronousTestCase):
    """Tests for :func:`encode_message` and :func:`decode_message`."""

    def test_bep5_examples(self) -> None:
        """The examples of BEP 5 decode to the expected messages."""
        ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"
        self.assertEqual(decode_message(ping), Ping(b"aa", b"abcdefghij0123456789"))
        self.assertEqual(encode_message(Ping(b"aa", b"abcdefghij0123456789")), ping)
        announce = (
            b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:"
            b"mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer"
            b"1:t2:aa1:y1:qe"
        )
        self.assertEqual(
            decode_message(announce),
            AnnouncePeer(
                b"aa", b"abcdefghij0123456789", b"mnopqrstuvwxyz123456", 6881, b"aoeusnth", True
            ),
        )
        error = b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee"
        self.assertEqual(decode_message(error), ErrorReply(b"aa", 201, "A Generic Error Ocurred"))
        self.assertEqual(encode_message(ErrorReply(b"aa", 201, "A Generic Error Ocurred")), error)

    def test_compact_forms(self) -> None:
        """Nodes are 26 bytes and peers 6, IPv4 in network order."""
        reply = Response(
            b"t", ID, (NodeInfo(OTHER, "127.0.0.1", 6881),), (("10.0.0.2", 9000),), b"tok"
        )
        body = decode(encode_message(reply))
        assert isinstance(body, dict)
        self.assertEqual(body[b"r"][b"nodes"], OTHER + b"\x7f\x00\x00\x01\x1a\xe1")
        self.assertEqual(body[b"r"][b"values"], [b"\x0a\x00\x00\x02\x23\x28"])

    def test_unknown_keys_ignored(self) -> None:
        """Extra keys anywhere are ignored (``v``, ``ip``, ``want``...)."""
        data = encode(
            {"t": b"x", "y": b"q", "q": b"ping", "v": b"LT01", "ip": b"123456",
             "a": {"id": ID, "want": [b"n4"]}}
        )  # fmt: skip
        self.assertEqual(decode_message(data), Ping(b"x", ID))

    def test_read_only(self) -> None:
        """BEP 43's ``ro`` flag is read and written."""
        data = encode_message(Ping(b"x", ID, read_only=True))
        self.assertEqual(decode_message(data), Ping(b"x", ID, True))

    def test_bad_info_hash_is_answerable(self) -> None:
        """An info-hash of another length (a raw Grenache name) is a 203 for the query."""
        for method in (b"get_peers", b"announce_peer"):
            with self.assertRaises(KRPCError) as caught:
                decode_message(query(method, info_hash=b"some-service", port=1, token=b"t"))
            self.assertEqual(caught.exception.code, PROTOCOL_ERROR)
            self.assertEqual(caught.exception.transaction, b"aa")
            self.assertTrue(caught.exception.answerable)

    def test_unknown_method(self) -> None:
        """An unknown method is a 204 for the query."""
        with self.assertRaises(KRPCError) as caught:
            decode_message(query(b"vote", target=ID))
        self.assertEqual(caught.exception.code, METHOD_UNKNOWN)
        self.assertTrue(caught.exception.answerable)

    def test_unknown_method_before_arguments(self) -> None:
        """
        An unknown method is a 204 whatever its arguments, a missing or
        short id included (BEP 5's code for it; libtorrent would say 203);
        a known method with a bad id, or no method, is a 203.
        """
        unknown = [
            encode({"t": b"aa", "y": b"q", "q": b"vote", "a": {"target": ID}}),
            encode({"t": b"aa", "y": b"q", "q": b"vote", "a": {"id": b"short"}}),
            encode({"t": b"aa", "y": b"q", "q": b"vote"}),
        ]
        bad = [
            encode({"t": b"aa", "y": b"q", "a": {"id": ID}}),
            encode({"t": b"aa", "y": b"q", "q": b"ping", "a": {"id": b"short"}}),
            encode({"t": b"aa", "y": b"q", "q": b"find_node"}),
        ]
        for data, code in [(d, METHOD_UNKNOWN) for d in unknown] + [
            (d, PROTOCOL_ERROR) for d in bad
        ]:
            with self.subTest(data=data), self.assertRaises(KRPCError) as caught:
                decode_message(data)
            self.assertEqual(caught.exception.code, code)
            self.assertTrue(caught.exception.answerable)

    def test_long_transaction_answerable(self) -> None:
        """
        BEP 5 does not bound ``t``: a query with one over MAX_TRANSACTION
        bytes is a 203 that echoes it, never silence; one of MAX_TRANSACTION
        bytes is read as usual.
        """
        longest = b"t" * MAX_TRANSACTION
        self.assertEqual(
            decode_message(encode({"t": longest, "y": b"q", "q": b"ping", "a": {"id": ID}})),
            Ping(longest, ID),
        )
        for length in (MAX_TRANSACTION + 1, 200, 1900):
            data = encode({"t": b"t" * length, "y": b"q", "q": b"ping", "a": {"id": ID}})
            with self.subTest(length=length), self.assertRaises(KRPCError) as caught:
                decode_message(data)
            self.assertEqual(caught.exception.code, PROTOCOL_ERROR)
            self.assertEqual(caught.exception.transaction, b"t" * length)
            self.assertTrue(caught.exception.answerable)

    def test_nodes_key(self) -> None:
        """
        A find_node or get_peers answer (``with_nodes``) carries ``nodes``
        even with no node, as an empty string (BEP 5; libtorrent does so);
        other answers carry none.  Decoding tells which was sent.
        """
        for reply, has_nodes in (
            (Response(b"aa", ID, with_nodes=True), True),
            (Response(b"aa", ID, token=b"tok", with_nodes=True), True),
            (Response(b"aa", ID), False),
        ):
            data = encode_message(reply)
            body = decode(data)
            assert isinstance(body, dict)
            self.assertEqual(body[b"r"].get(b"nodes"), b"" if has_nodes else None)
            self.assertEqual(decode_message(data).with_nodes, has_nodes)  # type: ignore[union-attr]

    def test_bad_queries(self) -> None:
        """Missing or malformed arguments are 203s."""
        bad = [
            encode({"t": b"aa", "y": b"q", "q": b"ping", "a": {"id": b"short"}}),
            encode({"t": b"aa", "y": b"q", "q": b"ping"}),
            query(b"find_node"),
            query(b"find_node", target=b"x" * 19),
            query(b"announce_peer", info_hash=OTHER, token=b"t"),
            query(b"announce_peer", info_hash=OTHER, token=b"t", port=70000),
            query(b"announce_peer", info_hash=OTHER, port=80),
        ]
        for data in bad:
            with self.subTest(data=data), self.assertRaises(KRPCError) as caught:
                decode_message(data)
            self.assertEqual(caught.exception.code, PROTOCOL_ERROR)
            self.assertTrue(caught.exception.answerable)

    def test_implied_port_without_port(self) -> None:
        """With implied_port, the port argument may be missing."""
        message = decode_message(
            query(b"announce_peer", info_hash=OTHER, token=b"t", implied_port=1)
        )
        self.assertEqual(message, AnnouncePeer(b"aa", ID, OTHER, 0, b"t", True))

    def test_bad_replies_not_answerable(self) -> None:
        """Malformed replies and non-messages raise, never to be answered."""
        bad = [
            b"i1e",
            b"garbage",
            encode({"y": b"r", "r": {"id": ID}}),
            encode({"t": b"x" * 40, "y": b"r", "r": {"id": ID}}),
            encode({"t": b"aa", "y": b"z"}),
            encode({"t": b"aa", "y": b"r", "r": {"id": ID, "nodes": b"x" * 25}}),
            encode({"t": b"aa", "y": b"r", "r": {"id": ID, "values": b"123456"}}),
            encode({"t": b"aa", "y": b"r"}),
            encode({"t": b"aa", "y": b"e", "e": [b"x"]}),
        ]
        for data in bad:
            with self.subTest(data=data), self.assertRaises(KRPCError) as caught:
                decode_message(data)
            self.assertFalse(caught.exception.answerable)

    def test_odd_peers_skipped(self) -> None:
        """
        Peers of other lengths than 6 (IPv4) and 18 (IPv6, BEP 32) and port 0
        are skipped; port-0 nodes too.
        """
        data = encode(
            {"t": b"aa", "y": b"r", "r": {
                "id": ID,
                "values": [b"\x01" * 18, b"\x7f\0\0\x01\0\0", b"\x7f\0\0\x01\0\x50",
                           b"\x01" * 7, b"\x02" * 16 + b"\0\0"],
                "nodes": OTHER + b"\x7f\0\0\x01\0\0",
            }}
        )  # fmt: skip
        self.assertEqual(
            decode_message(data),
            Response(b"aa", ID, (), (("101:101:101:101:101:101:101:101", 257),
                                     ("127.0.0.1", 80))),
        )  # fmt: skip

    def test_bep32_nodes6_and_ipv6_values(self) -> None:
        """``nodes6`` (38 bytes a node) and 18-byte ``values`` round-trip; IPv4 stays apart."""
        v4 = NodeInfo(OTHER, "192.0.2.1", 6881)
        v6 = NodeInfo(ID, "2001:db8::1", 6882)
        reply = Response(b"aa", ID, (v4,), (("2001:db8::9", 3000), ("192.0.2.9", 3001)), b"tok",
                         nodes6=(v6,))  # fmt: skip
        data = encode_message(reply)
        body = cast(dict[bytes, Any], decode(data))[b"r"]
        self.assertEqual(len(body[b"nodes6"]), 38)
        self.assertEqual(body[b"nodes6"], ID + bytes.fromhex("20010db8" + "00" * 11 + "01")
                         + (6882).to_bytes(2, "big"))  # fmt: skip
        self.assertEqual([len(v) for v in body[b"values"]], [18, 6])
        self.assertEqual(decode_message(data), reply)
        # A node of the wrong family is left out of each list.
        mixed = Response(b"aa", ID, (v4, v6), nodes6=(v4, v6))
        self.assertEqual(decode_message(encode_message(mixed)), Response(b"aa", ID, (v4,),
                                                                         nodes6=(v6,)))  # fmt: skip
        # Asked for (want n6) with none to give: an empty nodes6.
        empty = cast(
            dict[bytes, Any], decode(encode_message(Response(b"aa", ID, with_nodes6=True)))
        )[b"r"]
        self.assertEqual(empty[b"nodes6"], b"")

    def test_bep32_bad_nodes6(self) -> None:
        for bad in (b"\x01" * 37, 5, [b"x"]):
            data = encode({"t": b"aa", "y": b"r", "r": {"id": ID, "nodes6": bad}})
            with self.subTest(bad=bad), self.assertRaises(KRPCError):
                decode_message(data)

    def test_bep32_want(self) -> None:
        """``want`` lists n4 and/or n6; unknown entries are ignored; not a list is a 203."""
        cases = ((b"find_node", {"target": OTHER}), (b"get_peers", {"info_hash": OTHER}))
        for method, extra in cases:
            for want, expected in (([b"n4", b"n6"], {"n4", "n6"}), ([b"n6", b"n9", 3], {"n6"}),
                                   ([], set())):  # fmt: skip
                data = encode({"t": b"aa", "y": b"q", "q": method,
                               "a": {"id": ID, "want": want, **extra}})  # fmt: skip
                query = decode_message(data)
                assert isinstance(query, FindNode | GetPeers)
                self.assertEqual(query.want, frozenset(expected))
                self.assertEqual(decode_message(encode_message(query)), query)
            data = encode({"t": b"aa", "y": b"q", "q": method, "a": {"id": ID, "want": b"n6",
                                                                     **extra}})  # fmt: skip
            with self.assertRaises(KRPCError) as caught:
                decode_message(data)
            self.assertEqual(caught.exception.code, PROTOCOL_ERROR)
        query = FindNode(b"aa", ID, OTHER, want=frozenset({"n6", "n4"}))
        args = cast(dict[bytes, Any], decode(encode_message(query)))[b"a"]
        self.assertEqual(args[b"want"], [b"n4", b"n6"])

    @given(messages)
    def test_round_trip(self, message: Message) -> None:
        """Every message decodes to itself, and encodes again to the same bytes."""
        data = encode_message(message)
        self.assertEqual(decode_message(encode_message(message, version=b"BF01")), message)
        self.assertEqual(encode_message(decode_message(data)), data)

    @settings(max_examples=300)
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Any bytes decode or raise KRPCError, nothing else."""
        try:
            decode_message(data)
        except KRPCError:
            pass

    @settings(max_examples=500)
    @given(messages, st.data())
    def test_mutated_messages(self, message: Message, data: st.DataObject) -> None:
        """A valid message with one byte changed decodes or raises KRPCError."""
        encoded = encode_message(message)
        index = data.draw(st.integers(0, len(encoded) - 1))
        byte = data.draw(st.integers(0, 255))
        mutated = encoded[:index] + bytes([byte]) + encoded[index + 1 :]
        try:
            decode_message(mutated)
        except KRPCError:
            pass
