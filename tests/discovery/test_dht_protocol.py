"""Tests for :mod:`bitfitech.discovery.kademlia.protocol`, on a RecordingUDPTransport."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.discovery.kademlia.bencode import decode, encode
from bitfitech.discovery.kademlia.krpc import (
    MAX_DATAGRAM,
    MAX_INCOMING,
    MAX_TRANSACTION,
    METHOD_UNKNOWN,
    PROTOCOL_ERROR,
    AnnouncePeer,
    ErrorReply,
    FindNode,
    GetPeers,
    Message,
    NodeInfo,
    Ping,
    Response,
    decode_message,
    encode_message,
)
from bitfitech.discovery.kademlia.protocol import (
    BadReply,
    DHTProtocol,
    NotRunning,
    QueryTimeout,
    RemoteError,
    TooManyPending,
)
from bitfitech.discovery.kademlia.routing import RoutingTable
from bitfitech.discovery.kademlia.store import PeerStore, RateLimiter, TokenIssuer
from bitfitech.testing import RecordingUDPTransport

OWN = b"\x00" * 20
THEIRS = b"\xf0" + b"\x01" * 19
HASH = b"\x80" + b"h" * 19
SOURCE = ("10.0.0.2", 7000)


class ProtocolTestCase(SynchronousTestCase):
    """A DHTProtocol on a fake transport and a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.routing = RoutingTable(OWN, 0.0)
        self.store = PeerStore()
        self.tokens = TokenIssuer(0.0)
        self.protocol = self.make_protocol()

    def make_protocol(self, **kwargs: Any) -> DHTProtocol:
        protocol = DHTProtocol(
            self.clock,
            OWN,
            self.routing,
            self.store,
            self.tokens,
            rng=random.Random(0),
            query_timeout=2.0,
            **kwargs,
        )
        self.transport = RecordingUDPTransport("10.0.0.1", 6881)
        protocol.makeConnection(self.transport)
        return protocol

    def receive(self, message: Message | bytes, source: tuple[str, int] = SOURCE) -> None:
        data = message if isinstance(message, bytes) else encode_message(message)
        self.protocol.datagramReceived(data, source)

    def replies(self) -> list[tuple[Message, tuple[str, int]]]:
        return [(decode_message(data), addr) for data, addr in self.transport.clear()]

    def answers(self) -> list[tuple[Message, tuple[str, int]]]:
        """What was sent, our own pings left out (a new contact is pinged at once)."""
        return [(m, a) for m, a in self.replies() if not isinstance(m, Ping)]

    def reply(self) -> Message:
        [(message, addr)] = self.answers()
        self.assertEqual(addr, SOURCE)
        return message


class AnswerTests(ProtocolTestCase):
    """The protocol answers each query type."""

    def test_ping(self) -> None:
        """
        A ping is answered with our id; the sender enters the routing table,
        not yet verified, and is pinged in turn.
        """
        self.receive(Ping(b"t1", THEIRS))
        [(answer, to), (ours, again)] = self.replies()
        self.assertEqual((answer, to), (Response(b"t1", OWN), SOURCE))
        self.assertIsInstance(ours, Ping)
        self.assertEqual(again, SOURCE)
        self.assertIn(THEIRS, self.routing)
        self.assertIsNone(self.routing.get(THEIRS).last_response)  # type: ignore[union-attr]
        # Asked again, it is not pinged twice.
        self.receive(Ping(b"t2", THEIRS))
        self.assertEqual(len(self.replies()), 1)

    def test_answers_name_confirmed_contacts(self) -> None:
        """
        find_node and get_peers answers name only contacts that answered
        us and left no query unanswered since; a lookup still starts from
        them all.
        """
        ids = [bytes([0xF0, n]) + b"\x05" * 18 for n in range(4)]
        for n, node_id in enumerate(ids[:3]):
            self.routing.heard_from(node_id, (f"10.1.0.{n + 1}", 6881), 0.0, responded=True)
        self.routing.heard_from(ids[3], ("10.1.0.4", 6881), 0.0, responded=False)
        self.routing.failed(ids[1], ("10.1.0.2", 6881), 1.0)
        self.transport.clear()
        self.receive(FindNode(b"t1", THEIRS, THEIRS))
        reply = self.reply()
        assert isinstance(reply, Response)
        self.assertEqual([n.node_id for n in reply.nodes], [ids[0], ids[2]])
        self.receive(GetPeers(b"t2", THEIRS, THEIRS))
        reply = self.reply()
        assert isinstance(reply, Response)
        self.assertEqual([n.node_id for n in reply.nodes], [ids[0], ids[2]])
        self.assertEqual(len(self.routing.closest(THEIRS)), 5)

    def test_read_only_sender_not_added(self) -> None:
        """A read-only (BEP 43) querier is answered but not added."""
        self.receive(Ping(b"t1", THEIRS, read_only=True))
        self.assertEqual(self.reply(), Response(b"t1", OWN))
        self.assertEqual(len(self.routing), 0)

    def test_find_node(self) -> None:
        """find_node returns the k nearest contacts."""
        for n in range(20):
            node_id = bytes([n * 12]) + b"\x05" * 19
            self.routing.heard_from(node_id, (f"10.1.0.{n + 1}", 6881), 0.0, responded=True)
        self.receive(FindNode(b"t1", THEIRS, THEIRS))
        reply = self.reply()
        assert isinstance(reply, Response)
        expected = [c.node_id for c in self.routing.closest(THEIRS)]
        self.assertEqual([n.node_id for n in reply.nodes], expected)
        self.assertEqual(len(reply.nodes), 8)

    def test_get_peers_then_announce(self) -> None:
        """get_peers gives a token; announce_peer with it stores the peer; get_peers lists it."""
        self.receive(GetPeers(b"t1", THEIRS, HASH))
        reply = self.reply()
        assert isinstance(reply, Response)
        self.assertIsNotNone(reply.token)
        self.assertEqual(reply.values, ())
        self.receive(AnnouncePeer(b"t2", THEIRS, HASH, 9000, reply.token or b""))
        self.assertEqual(self.reply(), Response(b"t2", OWN))
        self.assertEqual(self.store.peers(HASH, 0.0), [("10.0.0.2", 9000)])
        self.receive(GetPeers(b"t3", THEIRS, HASH), ("10.0.0.3", 7000))
        [(again, _)] = self.replies()
        assert isinstance(again, Response)
        self.assertEqual(again.values, (("10.0.0.2", 9000),))
        # The announcer has not answered a query of ours: not named yet.
        self.assertEqual(again.nodes, ())

    def test_implied_port(self) -> None:
        """With implied_port the UDP source port is stored."""
        token = self.tokens.token_for(SOURCE[0], 0.0)
        self.receive(AnnouncePeer(b"t1", THEIRS, HASH, 9000, token, implied_port=True))
        self.assertEqual(self.reply(), Response(b"t1", OWN))
        self.assertEqual(self.store.peers(HASH, 0.0), [SOURCE])

    def test_bad_token(self) -> None:
        """A wrong, foreign or expired token gets error 203 and stores nothing."""
        foreign = self.tokens.token_for("10.9.9.9", 0.0)
        self.receive(AnnouncePeer(b"t1", THEIRS, HASH, 9000, foreign))
        self.receive(AnnouncePeer(b"t2", THEIRS, HASH, 9000, b"made-up"))
        token = self.tokens.token_for(SOURCE[0], 0.0)
        self.clock.advance(601)
        self.receive(AnnouncePeer(b"t3", THEIRS, HASH, 9000, token))
        for message, _ in self.answers():
            assert isinstance(message, ErrorReply)
            self.assertEqual(message.code, PROTOCOL_ERROR)
        self.assertEqual(self.store.peers(HASH, 601.0), [])

    def test_info_hash_of_another_length(self) -> None:
        """A Grenache-style raw name as info-hash gets error 203, not a crash."""
        for method in (b"get_peers", b"announce_peer"):
            self.receive(
                encode({"t": b"xy", "y": b"q", "q": method,
                        "a": {"id": THEIRS, "info_hash": b"rest:net:util", "port": 1,
                              "token": b"t"}})
            )  # fmt: skip
            reply = self.reply()
            self.assertEqual(reply, ErrorReply(b"xy", PROTOCOL_ERROR, "info_hash must be 20 bytes"))
        self.assertEqual(self.protocol.counters["bad_queries"], 2)

    def test_unknown_method(self) -> None:
        """An unknown method gets error 204."""
        self.receive(encode({"t": b"xy", "y": b"q", "q": b"put", "a": {"id": THEIRS}}))
        reply = self.reply()
        assert isinstance(reply, ErrorReply)
        self.assertEqual(reply.code, METHOD_UNKNOWN)

    def test_unknown_method_without_id(self) -> None:
        """With no valid id, an unknown method is still a 204 "Method Unknown" (BEP 5)."""
        self.receive(encode({"t": b"xy", "y": b"q", "q": b"put", "a": {"id": b"short"}}))
        reply = self.reply()
        assert isinstance(reply, ErrorReply)
        self.assertEqual((reply.transaction, reply.code), (b"xy", METHOD_UNKNOWN))

    def test_nodes_with_empty_table(self) -> None:
        """
        With an empty routing table, find_node and get_peers (no values)
        answers still carry ``nodes``: an empty string, as libtorrent sends;
        ping and announce_peer answers carry none.
        """
        token = self.tokens.token_for(SOURCE[0], 0.0)
        for query, has_nodes in (
            (FindNode(b"t1", THEIRS, THEIRS, read_only=True), True),
            (GetPeers(b"t2", THEIRS, HASH, read_only=True), True),
            (Ping(b"t3", THEIRS, read_only=True), False),
            (AnnouncePeer(b"t4", THEIRS, HASH, 9000, token, read_only=True), False),
        ):
            self.assertEqual(len(self.routing), 0)
            self.receive(query)
            [(data, _)] = self.transport.clear()
            body = decode(data)
            assert isinstance(body, dict)
            with self.subTest(query=query):
                self.assertEqual(body[b"y"], b"r")
                self.assertEqual(body[b"r"].get(b"nodes"), b"" if has_nodes else None)
                self.assertNotIn(b"values", body[b"r"])

    def test_long_transaction_answered(self) -> None:
        """
        A transaction id over MAX_TRANSACTION bytes gets a 203 echoing it,
        even one so long that the error is larger than MAX_DATAGRAM.
        """
        for length in (MAX_TRANSACTION + 1, 1900):
            transaction = b"t" * length
            self.receive(
                encode({"t": transaction, "y": b"q", "q": b"find_node",
                        "a": {"id": THEIRS, "target": THEIRS}})
            )  # fmt: skip
            [(data, address)] = self.transport.clear()
            self.assertEqual(address, SOURCE)
            body = decode(data)
            assert isinstance(body, dict)
            self.assertEqual((body[b"t"], body[b"y"]), (transaction, b"e"))
            self.assertEqual(body[b"e"][0], PROTOCOL_ERROR)
        self.assertGreater(len(data), MAX_DATAGRAM)
        self.assertEqual(self.protocol.counters["errors_sent"], 2)

    def test_garbage_dropped(self) -> None:
        """Non-KRPC datagrams are counted and dropped without reply."""
        for data in (b"", b"\xff" * 30, b"d1:t2:aae", b"i1e", b"GET / HTTP/1.1\r\n"):
            self.receive(data)
        self.assertEqual(self.transport.written, [])
        self.assertEqual(self.protocol.counters["malformed"], 5)

    def test_oversize_dropped(self) -> None:
        """A datagram over the size limit is dropped unread, even a valid query."""
        big = encode({"t": b"t1", "y": b"q", "q": b"ping", "a": {"id": THEIRS},
                      "pad": b"x" * MAX_INCOMING})  # fmt: skip
        self.receive(big)
        self.assertEqual(self.transport.written, [])
        self.assertEqual(self.protocol.counters["oversize"], 1)

    def test_replies_fit_a_datagram(self) -> None:
        """A get_peers answer with many peers stays under the size limit."""
        for n in range(100):
            self.store.add(HASH, f"10.2.0.{n}", 9000 + n, 0.0)
        for n in range(20):
            node_id = bytes([n * 12]) + b"\x05" * 19
            self.routing.heard_from(node_id, (f"10.1.0.{n + 1}", 6881), 0.0, responded=True)
        self.receive(GetPeers(b"t1", THEIRS, HASH))
        [(data, _)] = self.transport.written
        self.assertLessEqual(len(data), 1500)
        reply = decode_message(data)
        assert isinstance(reply, Response)
        self.assertEqual(len(reply.values), 50)

    def test_rate_limit(self) -> None:
        """Past its burst, a source's queries are dropped until its bucket refills."""
        self.protocol = self.make_protocol(limiter=RateLimiter(rate=1.0, burst=5.0))
        for n in range(8):
            self.receive(Ping(b"t%d" % n, THEIRS))
        self.assertEqual(len(self.answers()), 5)
        self.assertEqual(self.protocol.counters["rate_limited"], 3)
        self.receive(Ping(b"x", THEIRS), ("10.0.0.3", 7000))
        self.assertEqual(len(self.answers()), 1)
        self.clock.advance(1.0)
        self.receive(Ping(b"y", THEIRS))
        self.assertEqual(len(self.answers()), 1)

    @settings(max_examples=200)
    @given(st.binary(max_size=400))
    def test_any_bytes(self, data: bytes) -> None:
        """Whatever arrives, datagramReceived returns normally."""
        self.protocol.datagramReceived(data, SOURCE)
        self.assertEqual(self.protocol.counters["internal_errors"], 0)


class QueryTests(ProtocolTestCase):
    """Our queries: replies, errors, timeouts, bounds."""

    def sent(self) -> tuple[Message, tuple[str, int]]:
        [(message, addr)] = self.replies()
        return message, addr

    def test_reply_fires_deferred(self) -> None:
        """The matching reply fires the query's Deferred, and the node enters the table."""
        d = self.protocol.find_node(SOURCE, HASH)
        query, addr = self.sent()
        self.assertEqual(addr, SOURCE)
        assert isinstance(query, FindNode)
        self.assertEqual((query.sender, query.target), (OWN, HASH))
        node = NodeInfo(b"\x11" * 20, "10.0.0.9", 6881)
        self.receive(Response(query.transaction, THEIRS, (node,)))
        self.assertEqual(self.successResultOf(d).nodes, (node,))
        self.assertIsNotNone(self.routing.get(THEIRS).last_response)  # type: ignore[union-attr]
        self.assertEqual(self.protocol.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reply_from_elsewhere_ignored(self) -> None:
        """A reply with the right transaction from another address does not count."""
        d = self.protocol.ping(SOURCE)
        query, _ = self.sent()
        self.receive(Response(query.transaction, THEIRS), ("10.6.6.6", 7000))
        self.assertNoResult(d)
        self.assertEqual(self.protocol.counters["unexpected"], 1)
        self.clock.advance(2.0)
        self.failureResultOf(d, QueryTimeout)

    def test_error_reply(self) -> None:
        """An error reply fails the Deferred with RemoteError."""
        d = self.protocol.get_peers(SOURCE, HASH)
        query, _ = self.sent()
        self.receive(ErrorReply(query.transaction, 202, "busy"))
        failure = self.failureResultOf(d, RemoteError)
        self.assertEqual(failure.value.code, 202)

    def test_bad_reply(self) -> None:
        """A malformed reply to a pending query fails it with BadReply."""
        d = self.protocol.ping(SOURCE)
        query, _ = self.sent()
        self.receive(encode({"t": query.transaction, "y": b"r", "r": {"id": b"short"}}))
        self.failureResultOf(d, BadReply)

    def test_timeout(self) -> None:
        """No reply within the timeout fails the Deferred and counts against the contact."""
        self.routing.heard_from(THEIRS, SOURCE, 0.0, responded=True)
        d = self.protocol.ping(SOURCE, THEIRS)
        self.sent()
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, QueryTimeout)
        self.assertEqual(self.routing.get(THEIRS).failures, 1)  # type: ignore[union-attr]

    def test_announce_arguments(self) -> None:
        """announce_peer sends the port, token and implied_port flag."""
        self.protocol.announce_peer(SOURCE, HASH, 9000, b"tok", implied_port=True)
        query, _ = self.sent()
        assert isinstance(query, AnnouncePeer)
        self.assertEqual((query.port, query.token, query.implied_port), (9000, b"tok", True))

    def test_pending_bounded(self) -> None:
        """Past max_pending, queries fail at once."""
        self.protocol = self.make_protocol(max_pending=2)
        self.protocol.ping(SOURCE)
        self.protocol.ping(SOURCE)
        self.failureResultOf(self.protocol.ping(SOURCE), TooManyPending)

    def test_cancel(self) -> None:
        """Cancelling a query forgets it and its timer."""
        d = self.protocol.ping(SOURCE)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.protocol.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close(self) -> None:
        """Closing fails pending queries, cancels timers and refuses new ones."""
        d = self.protocol.ping(SOURCE)
        self.protocol.close()
        self.failureResultOf(d, NotRunning)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.failureResultOf(self.protocol.ping(SOURCE), NotRunning)

    def test_questionable_contacts_pinged(self) -> None:
        """When a newcomer finds a bucket full of questionable contacts, they are pinged."""
        far = [b"\x80" + bytes([n]) * 19 for n in range(8)]
        self.routing.heard_from(b"\x00" * 19 + b"\x01", ("10.3.0.1", 1), 0.0, responded=True)
        for n, node_id in enumerate(far):
            self.routing.heard_from(node_id, (f"10.4.0.{n + 1}", 6881), 0.0, responded=True)
        self.clock.advance(16 * 60)
        self.receive(Ping(b"t1", b"\x80" + b"\xee" * 19))
        sent = self.replies()
        pings = [(m, a) for m, a in sent if isinstance(m, Ping)]
        self.assertEqual(len(pings), 8)
        # Nobody answers.  The first to fail gives way at once to the
        # newcomer waiting; the others, with no replacement left, count a failure.
        self.clock.advance(2.0)
        self.assertIsNone(self.routing.get(far[0]))
        self.assertIn(b"\x80" + b"\xee" * 19, self.routing)
        self.assertEqual(self.routing.get(far[1]).failures, 1)  # type: ignore[union-attr]


class ServerErrorTests(ProtocolTestCase):
    """A bug while answering becomes error 202, not an exception."""

    def test_server_error(self) -> None:
        """If building the answer raises, the query gets 202 and the error is logged."""

        def broken(*args: object, **kwargs: object) -> list[tuple[str, int]]:
            raise RuntimeError("boom")

        self.store.peers = broken  # type: ignore[method-assign,assignment]
        self.receive(GetPeers(b"t1", THEIRS, HASH))
        reply = self.reply()
        assert isinstance(reply, ErrorReply)
        self.assertEqual(reply.code, 202)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
