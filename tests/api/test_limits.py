"""Tests for the bounds of :class:`bitfitech.api.site.ApiSite`: connections, bodies, time.

Data path under test: bytes on connections of the site (in-memory
transports, a :class:`~twisted.internet.task.Clock`) -> :class:`ApiChannel`
or, past the cap, :class:`RefusedConnection` -> a resource that records
what reached it.  The same bounds over real sockets, and the service's
stop, are in ``tests/api/test_service.py``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from bitfitech.api.jsonresource import MAX_BATCH, MAX_BODY
from bitfitech.api.metrics import api_connections
from bitfitech.api.resources import api_root, batch_request
from bitfitech.api.site import (
    ABORT_AFTER,
    CLOSE_GRACE,
    HEAD_WAIT,
    LINGER,
    MAX_REFUSING,
    RETRY_AFTER,
    ApiChannel,
    ApiSite,
    RefusedConnection,
)
from bitfitech.api.stream import STATUS_INTERVAL
from bitfitech.market.book import MAX_DECIMAL_LENGTH
from tests.api.test_resources import FakeNode

CLIENT = IPv4Address("TCP", "127.0.0.1", 50000)
IDLE = 60.0
GET = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"


class ClientTransport(StringTransport):
    """
    An in-memory TCP connection as the site sees it: it records how it was
    closed, can half-close, and tells its protocol when it is gone (at
    once on an abort; on ``loseConnection`` only if the client reads what
    was written, C{reads}).

    :ivar half_closed: whether the site shut down its sending side.
    :ivar aborted: whether the site aborted the connection.
    """

    def __init__(self, reads: bool = True) -> None:
        super().__init__(peerAddress=CLIENT)
        self.reads = reads
        self.half_closed = False
        self.aborted = False
        self.gone = False
        self.protocol: IProtocol | None = None

    def loseConnection(self) -> None:
        self.disconnecting = True
        if self.reads:
            self.close(ConnectionDone())

    def loseWriteConnection(self) -> None:
        self.half_closed = True

    def abortConnection(self) -> None:
        self.aborted = self.disconnecting = True
        self.close(ConnectionAborted())

    def close(self, reason: Exception) -> None:
        """The connection is gone: tell the protocol, once."""
        if not self.gone and self.protocol is not None:
            self.gone = True
            self.protocol.connectionLost(Failure(reason))


class Echo(Resource):
    """Answers every request with its method and body; records each one."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        self.bodies.append(body)
        return b"%s %d" % (request.method, len(body))


class Slow(Resource):
    """Answers only when told: C{pending} holds the requests waiting."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Request] = []

    def render(self, request: Request) -> int:
        self.pending.append(request)
        return NOT_DONE_YET


class SiteTestCase(SynchronousTestCase):
    """A site on a fake clock, with an echo at ``/echo`` and a slow answer at ``/slow``."""

    max_connections = 3

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.echo = Echo()
        self.slow = Slow()
        root = Resource()
        root.putChild(b"echo", self.echo)
        root.putChild(b"slow", self.slow)
        self.site = self.make_site(root)

    def make_site(self, root: Resource) -> ApiSite:
        site = ApiSite(
            root,
            reactor=self.clock,
            registry=self.registry,
            max_connections=self.max_connections,
            idle_timeout=IDLE,
        )
        site.startFactory()
        self.addCleanup(site.stopFactory)
        return site

    def connect(self, reads: bool = True) -> tuple[Any, ClientTransport]:
        """A new connection to the site: its protocol and transport."""
        protocol = self.site.buildProtocol(CLIENT)
        assert protocol is not None
        transport = ClientTransport(reads)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def channel(self, reads: bool = True) -> tuple[ApiChannel, ClientTransport]:
        """A new connection under the cap."""
        protocol, transport = self.connect(reads)
        self.assertIsInstance(protocol, ApiChannel)
        return protocol, transport

    def answers(self, transport: ClientTransport) -> list[bytes]:
        """The status lines written to C{transport}."""
        return re.findall(rb"HTTP/1\.1 [0-9]{3} [^\r]*", transport.value())

    def error_body(self, transport: ClientTransport) -> dict[str, Any]:
        """The JSON body of the one answer on C{transport}."""
        body: dict[str, Any] = json.loads(transport.value().split(b"\r\n\r\n", 1)[1])
        return body


class ConnectionCapTests(SiteTestCase):
    """Past ``max_connections`` a connection is answered 503 and closed; no resource runs."""

    def fill(self) -> list[tuple[ApiChannel, ClientTransport]]:
        """Open connections up to the cap."""
        return [self.channel() for _ in range(self.max_connections)]

    def test_under_the_cap(self) -> None:
        channels = self.fill()
        self.assertEqual(self.site.open_connections, self.max_connections)
        for channel, transport in channels:
            channel.dataReceived(GET)
            self.assertEqual(self.answers(transport), [b"HTTP/1.1 200 OK"])

    def test_past_the_cap(self) -> None:
        """The 503 answers the request head, with Retry-After, and the connection ends."""
        self.fill()
        refused, transport = self.connect()
        self.assertIsInstance(refused, RefusedConnection)
        self.assertEqual(transport.value(), b"")  # the head first
        refused.dataReceived(b"GET /echo HTTP/1.1\r\n")
        self.assertEqual(transport.value(), b"")
        refused.dataReceived(b"Host: x\r\n\r\n")
        head, _ = transport.value().split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 503 Service Unavailable")
        self.assertIn(b"Retry-After: %d" % RETRY_AFTER, lines)
        self.assertIn(b"Connection: close", lines)
        self.assertIn(b"Content-Type: application/json; charset=utf-8", lines)
        body = self.error_body(transport)
        self.assertEqual(set(body), {"error"})
        self.assertIn(f"at most {self.max_connections}", body["error"])
        self.assertEqual(self.echo.bodies, [])
        # Closed, lingering: its side shut down now, aborted unless the client closes first.
        self.assertTrue(transport.half_closed)
        refused.dataReceived(b"more bytes the client sent, discarded")
        self.clock.advance(LINGER)
        self.assertTrue(transport.aborted)
        self.assertEqual(self.site.refusals, set())
        self.assertEqual(self.site.open_connections, self.max_connections)
        self.assertEqual(api_connections(self.registry).refused, {"503": 1, "closed": 0})

    def test_client_closes_first(self) -> None:
        self.fill()
        refused, transport = self.connect()
        refused.dataReceived(GET)
        transport.close(ConnectionDone())
        self.assertEqual(self.site.refusals, set())
        self.clock.advance(LINGER)
        self.assertFalse(transport.aborted)

    def test_silent_client_answered_after_head_wait(self) -> None:
        self.fill()
        refused, transport = self.connect()
        self.clock.advance(HEAD_WAIT - 0.01)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.01)
        self.assertEqual(self.answers(transport), [b"HTTP/1.1 503 Service Unavailable"])

    def test_head_request_has_no_body(self) -> None:
        self.fill()
        refused, transport = self.connect()
        refused.dataReceived(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))
        self.assertIn(b"Content-Length: ", transport.value())

    def test_count_goes_down_when_clients_leave(self) -> None:
        channels = self.fill()
        channels[0][1].close(ConnectionDone())
        self.assertEqual(self.site.open_connections, self.max_connections - 1)
        channel, transport = self.channel()
        channel.dataReceived(GET)
        self.assertEqual(self.answers(transport), [b"HTTP/1.1 200 OK"])

    def test_flood_closed_at_accept(self) -> None:
        """While MAX_REFUSING refusals are in progress, one more is not even answered."""
        self.fill()
        for _ in range(MAX_REFUSING):
            refused, _ = self.connect()
            self.assertIsInstance(refused, RefusedConnection)
        self.assertIsNone(self.site.buildProtocol(CLIENT))
        self.assertEqual(api_connections(self.registry).refused, {"503": MAX_REFUSING, "closed": 1})
        self.clock.advance(HEAD_WAIT)  # answered,
        self.clock.advance(LINGER)  # then aborted
        self.assertEqual(self.site.refusals, set())
        refused, _ = self.connect()
        self.assertIsInstance(refused, RefusedConnection)

    def test_one_log_line_each_way(self) -> None:
        """
        The cap reached and cleared are logged once each, however many are
        refused; cleared once a quarter of the cap is free again.
        """
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        self.site.stopFactory()
        self.max_connections = 8
        self.site = self.make_site(Resource())
        channels = self.fill()
        for _ in range(2):
            for _ in range(10):
                refused, transport = self.connect()
                refused.dataReceived(GET)
                transport.close(ConnectionDone())
            [reached] = [e for e in events if e["log_level"] == LogLevel.warn]
            self.assertIn("--api-max-connections", reached["log_format"])
            self.assertEqual(reached["limit"], 8)
            channels.pop()[1].close(ConnectionDone())  # 7 of 8 open: not clear yet
            channels.append(self.channel())  # 8 again: the same episode
        self.assertEqual(len(events), 1)
        channels.pop()[1].close(ConnectionDone())
        channels.pop()[1].close(ConnectionDone())
        [_, cleared] = events
        self.assertEqual((cleared["refused"], cleared["log_level"]), (20, LogLevel.info))
        channels.append(self.channel())
        channels.append(self.channel())
        self.connect()  # a new episode
        self.assertEqual(len(events), 3)

    def test_metrics(self) -> None:
        """``/metrics`` shows the connections open, the cap and the refusals, while serving."""
        self.fill()
        refused, _ = self.connect()
        refused.dataReceived(GET)
        text = generate_latest(self.registry).decode("utf-8")
        self.assertIn(f"bitfi_api_connections {self.max_connections}.0", text)
        self.assertIn(f"bitfi_api_connections_max {self.max_connections}.0", text)
        self.assertIn('bitfi_api_connections_refused_total{answer="503"} 1.0', text)
        self.assertIn('bitfi_api_connections_refused_total{answer="closed"} 0.0', text)
        self.assertIn('bitfi_api_connections_timed_out_total{phase="idle"} 0.0', text)
        self.assertIn("bitfi_api_requests_too_large_total 0.0", text)
        self.site.stopFactory()  # no longer serving: nothing of the API's connections
        self.assertNotIn("bitfi_api_connections", generate_latest(self.registry).decode("utf-8"))


class BodyLimitTests(SiteTestCase):
    """A body past MAX_BODY is answered 413 before it is read, or as soon as it is past."""

    def post_head(self, headers: bytes) -> bytes:
        return b"POST /echo HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"

    def assert_refused(self, transport: ClientTransport) -> None:
        """One 413 in the API's error shape, the connection closing, nothing answered."""
        self.assertEqual(self.answers(transport), [b"HTTP/1.1 413 Request Entity Too Large"])
        self.assertIn(b"Connection: close", transport.value())
        self.assertEqual(self.error_body(transport),
                         {"error": f"request body larger than {MAX_BODY} bytes"})  # fmt: skip
        self.assertTrue(transport.half_closed)
        self.assertEqual(self.echo.bodies, [])
        self.assertEqual(api_connections(self.registry).too_large, 1)

    def test_content_length_refused_at_the_headers(self) -> None:
        channel, transport = self.channel()
        channel.dataReceived(self.post_head(b"Content-Length: 10000000000\r\n"))
        self.assert_refused(transport)
        [request] = channel.requests
        # What the client still sends is not kept anywhere.
        for _ in range(64):
            channel.dataReceived(b"x" * 65536)
        self.assertEqual(request.content.getvalue(), b"")
        self.assertEqual(len(self.answers(transport)), 1)
        self.assertEqual(self.echo.bodies, [])
        self.clock.advance(LINGER)
        self.assertTrue(transport.aborted)
        self.assertEqual(self.site.open_connections, 0)

    def test_no_100_continue_for_a_refused_body(self) -> None:
        channel, transport = self.channel()
        channel.dataReceived(
            self.post_head(b"Content-Length: %d\r\nExpect: 100-continue\r\n" % (MAX_BODY + 1))
        )
        self.assertNotIn(b"100 Continue", transport.value())
        self.assert_refused(transport)

    def test_100_continue_for_a_body_within_the_limit(self) -> None:
        channel, transport = self.channel()
        channel.dataReceived(self.post_head(b"Content-Length: 2\r\nExpect: 100-continue\r\n"))
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        channel.dataReceived(b"{}")
        self.assertEqual(self.echo.bodies, [b"{}"])

    def test_chunked_body_cut_past_the_limit(self) -> None:
        channel, transport = self.channel()
        channel.dataReceived(self.post_head(b"Transfer-Encoding: chunked\r\n"))
        chunk = b"x" * 16384
        for _ in range(MAX_BODY // len(chunk)):
            channel.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.assertEqual(transport.value(), b"")  # exactly MAX_BODY so far
        channel.dataReceived(b"1\r\nx\r\n")
        self.assert_refused(transport)
        channel.dataReceived(b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))  # and the end
        self.assertEqual(self.echo.bodies, [])
        self.assertEqual(len(self.answers(transport)), 1)

    def test_bodies_at_the_limit(self) -> None:
        """MAX_BODY bytes pass, announced or chunked, and stay in memory."""
        body = b"y" * MAX_BODY
        channel, transport = self.channel()
        channel.dataReceived(self.post_head(b"Content-Length: %d\r\n" % MAX_BODY) + body)
        chunked = b"".join(b"%x\r\n%s\r\n" % (1024, body[i : i + 1024])
                           for i in range(0, MAX_BODY, 1024))  # fmt: skip
        channel.dataReceived(self.post_head(b"Transfer-Encoding: chunked\r\n") + chunked
                             + b"0\r\n\r\n")  # fmt: skip
        self.assertEqual(self.echo.bodies, [body, body])
        self.assertEqual(self.answers(transport), [b"HTTP/1.1 200 OK"] * 2)

    def test_largest_legal_batch_fits(self) -> None:
        """``POST /orders/batch`` with MAX_BATCH orders of the longest fields passes."""
        longest = "9" * (MAX_DECIMAL_LENGTH - 3) + ".99"
        order = {"side": "sell", "price": longest, "amount": longest, "type": "post_only"}
        body = json.dumps({"orders": [order] * MAX_BATCH}, indent=4).encode()
        self.assertEqual(len(batch_request(json.loads(body))), MAX_BATCH)
        self.assertLess(len(body), MAX_BODY / 2)
        channel, transport = self.channel()
        channel.dataReceived(self.post_head(b"Content-Length: %d\r\n" % len(body)) + body)
        self.assertEqual(self.echo.bodies, [body])


class TimeoutTests(SiteTestCase):
    """Idle and slow connections are closed after the idle timeout; answers never are."""

    def assert_closed(self, transport: ClientTransport, phase: str) -> None:
        self.assertTrue(transport.gone)
        self.assertEqual(api_connections(self.registry).timed_out[phase], 1)
        self.assertEqual(self.site.open_connections, 0)

    def test_idle_keep_alive_closed(self) -> None:
        channel, transport = self.channel()
        channel.dataReceived(GET)
        self.clock.advance(IDLE - 1)
        channel.dataReceived(GET)  # used again: the idle time starts over
        self.clock.advance(IDLE - 1)
        self.assertFalse(transport.gone)
        self.clock.advance(1)
        self.assert_closed(transport, "idle")

    def test_silent_connection_closed(self) -> None:
        _, transport = self.channel()
        self.clock.advance(IDLE)
        self.assert_closed(transport, "idle")

    def test_half_sent_request_closed(self) -> None:
        channel, transport = self.channel()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
        self.clock.advance(IDLE)
        self.assert_closed(transport, "request")
        self.assertEqual(self.echo.bodies, [])

    def test_trickled_request_closed(self) -> None:
        """A byte every few seconds keeps a connection busy, not its request alive."""
        channel, transport = self.channel()
        for byte in GET[:11]:
            channel.dataReceived(bytes([byte]))
            self.clock.advance(IDLE / 12)
        self.assertFalse(transport.gone)
        channel.dataReceived(GET[11:12])
        self.clock.advance(IDLE / 12)
        self.assert_closed(transport, "request")

    def test_slow_answer_not_timed_out(self) -> None:
        channel, transport = self.channel()
        channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(IDLE * 10)
        self.assertFalse(transport.gone)
        [request] = self.slow.pending
        request.write(b"late")
        request.finish()
        self.assertEqual(self.answers(transport), [b"HTTP/1.1 200 OK"])
        self.clock.advance(IDLE)
        self.assert_closed(transport, "idle")

    def test_client_that_does_not_read_is_aborted(self) -> None:
        _, transport = self.channel(reads=False)
        self.clock.advance(IDLE)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.gone)
        self.clock.advance(ABORT_AFTER)
        self.assertTrue(transport.aborted)
        self.assertEqual(self.site.open_connections, 0)

    def test_timeouts_not_logged_above_debug(self) -> None:
        """Twisted's "Timing out client" line per connection is not written."""
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        for _ in range(3):
            self.channel()
        self.clock.advance(IDLE)
        self.assertEqual([e for e in events if e["log_level"] > LogLevel.debug], [])
        self.assertEqual(api_connections(self.registry).timed_out["idle"], 3)


class StreamTimeoutTests(SiteTestCase):
    """A live stream is never timed out while it streams."""

    def test_stream_kept(self) -> None:
        node = FakeNode()
        node.status_doc = {"node_id": "b" * 40, "events": 4, "state_hash": "e" * 64}
        root = api_root(node, clock=self.clock)
        self.site.stopFactory()
        self.site = self.make_site(root)
        channel, transport = self.channel()
        channel.dataReceived(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(int(IDLE * 10 / STATUS_INTERVAL)):
            self.clock.advance(STATUS_INTERVAL)
        self.assertFalse(transport.disconnecting)
        statuses = transport.value().count(b"event: status\n")
        self.assertEqual(statuses, 1 + int(IDLE * 10 / STATUS_INTERVAL))
        root.feed.close_all()  # the stream ends: an idle keep-alive connection now
        self.clock.advance(IDLE)
        self.assertTrue(transport.gone)


class CloseConnectionsTests(SiteTestCase):
    """:meth:`ApiSite.close_connections`: idle ones now, answers finished, the rest aborted."""

    def test_nothing_open(self) -> None:
        self.successResultOf(self.site.close_connections())

    def test_idle_closed_at_once(self) -> None:
        transports = [self.channel()[1] for _ in range(2)]
        self.successResultOf(self.site.close_connections())
        self.assertTrue(all(t.gone and not t.aborted for t in transports))
        # Nothing of the site's own is left pending (twisted.web's log clock ticks on).
        pending = [call for call in self.clock.getDelayedCalls()
                   if getattr(call, "func", None) != self.site._updateLogDateTime]  # fmt: skip
        self.assertEqual(pending, [])

    def test_answer_finished_first(self) -> None:
        channel, transport = self.channel()
        channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        done = self.site.close_connections()
        self.assertNoResult(done)
        self.assertFalse(transport.disconnecting)
        [request] = self.slow.pending
        request.write(b"done")
        request.finish()
        self.assertIn(b"Connection: close", transport.value())
        self.assertTrue(transport.gone)
        self.successResultOf(done)

    def test_client_that_does_not_read_aborted_after_the_grace(self) -> None:
        _, idle = self.channel()
        _, stuck = self.channel(reads=False)
        done = self.site.close_connections()
        self.assertTrue(idle.gone)
        self.clock.advance(CLOSE_GRACE - 0.01)
        self.assertNoResult(done)
        self.clock.advance(0.01)
        self.assertTrue(stuck.aborted)
        self.successResultOf(done)

    def test_gives_up_at_twice_the_grace(self) -> None:
        """A connection that never reports its end does not hold the stop."""
        protocol = self.site.buildProtocol(CLIENT)
        assert protocol is not None
        protocol.makeConnection(StringTransport(peerAddress=CLIENT))  # never says it is gone
        done = self.site.close_connections()
        self.clock.advance(2 * CLOSE_GRACE - 0.01)
        self.assertNoResult(done)
        self.clock.advance(0.01)
        self.successResultOf(done)

    def test_refusals_aborted_too(self) -> None:
        for _ in range(self.max_connections):
            self.channel(reads=False)
        refused, transport = self.connect()
        done = self.site.close_connections()
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(transport.aborted)
        self.successResultOf(done)
        self.assertEqual(self.site.refusals, set())
