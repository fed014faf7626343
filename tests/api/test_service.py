"""Tests for :class:`bitfitech.api.service.ApiService`: its bounds end to end, and its stop.

Data path under test: HTTP clients -> the API's listener -> its
:class:`~bitfitech.api.site.ApiSite` -> the API over a fake node.  First on
a :class:`~twisted.internet.testing.MemoryReactorClock` with in-memory
connections (the stop's timing, exactly), then over real sockets on
127.0.0.1 (what a client actually receives: the 503 and the 413 arrive
whole although the node closes early, and a stop ends every connection).
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bitfitech.api.jsonresource import MAX_BODY
from bitfitech.api.resources import api_root
from bitfitech.api.service import ApiService
from bitfitech.api.site import CLOSE_GRACE, RETRY_AFTER
from bitfitech.testing import global_reactor, loopback_config, poll_until
from tests.api.test_limits import CLIENT, ClientTransport
from tests.api.test_resources import FakeNode

#: how long a real-socket step may take before the test gives up (a hang guard)
HANG_GUARD = 20.0


def api_service(
    test: SynchronousTestCase, reactor: Any, node: FakeNode, **config: Any
) -> ApiService:
    """An API service over C{node} on 127.0.0.1, port 0, in a directory of C{test}'s."""
    data_dir = os.path.abspath(test.mktemp())
    os.makedirs(data_dir)
    root = api_root(node, clock=reactor)
    return ApiService(loopback_config(data_dir, **config), root, reactor)


class StopTests(SynchronousTestCase):
    """At stop: no more listening, streams ended, every connection closed within the grace."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = api_service(self, self.reactor, FakeNode())
        self.service.startService()

    def connect(self, reads: bool = True) -> tuple[Any, ClientTransport]:
        protocol = self.service.site.buildProtocol(CLIENT)
        assert protocol is not None
        transport = ClientTransport(reads)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def test_stop(self) -> None:
        _, idle = self.connect()
        stream_channel, stream = self.connect(reads=False)  # a stream client that never reads
        stream_channel.dataReceived(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"event: book", stream.value())
        self.assertEqual(len(self.service.root.feed.clients), 1)
        [port] = self.reactor.tcpServers
        done = self.service.stopService()
        self.assertEqual(self.service.port, None)
        self.assertEqual(self.service.root.feed.clients, set())
        self.assertTrue(stream.value().endswith(b"0\r\n\r\n"))  # the stream's last chunk
        self.assertTrue(idle.gone)
        self.assertFalse(idle.aborted)
        self.assertTrue(stream.disconnecting)
        self.reactor.advance(CLOSE_GRACE - 0.01)
        self.assertNoResult(done)
        self.reactor.advance(0.01)
        self.assertTrue(stream.aborted)
        self.successResultOf(done)
        self.assertEqual(self.service.site.open_connections, 0)

    def test_stop_bounded_whatever_the_clients_do(self) -> None:
        """A connection whose end is never reported holds the stop no longer than 2 x grace."""
        channel = self.service.site.buildProtocol(CLIENT)
        assert channel is not None
        channel.makeConnection(StringTransport(peerAddress=CLIENT))
        done = self.service.stopService()
        self.reactor.advance(2 * CLOSE_GRACE - 0.01)
        self.assertNoResult(done)
        self.reactor.advance(0.01)
        self.successResultOf(done)

    def test_limits_from_the_config(self) -> None:
        service = api_service(self, self.reactor, FakeNode(), api_max_connections=7,
                              api_idle_timeout=12.5)  # fmt: skip
        self.assertEqual((service.site.max_connections, service.site.timeOut), (7, 12.5))


class RawClient(Protocol):
    """
    An HTTP client of raw bytes over a real socket: it sends what it is
    given and keeps what it receives.

    :ivar received: every byte received so far.
    :ivar lost: fires once the connection is gone.
    :ivar reason: why it is gone, once it is.
    """

    def __init__(self, send: bytes = b"") -> None:
        self.send = send
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        if self.send:
            self.transport.write(self.send)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)

    def answers(self) -> int:
        """Whole answers received (every answer here has a Content-Length)."""
        return self.received.count(b"HTTP/1.1 ")

    def body(self) -> dict[str, Any]:
        """The JSON body of the last answer."""
        parsed: dict[str, Any] = json.loads(self.received.rsplit(b"\r\n\r\n", 1)[1])
        return parsed


class LoopbackTests(TestCase):
    """The bounds over real sockets on 127.0.0.1."""

    def setUp(self) -> None:
        self.reactor = global_reactor()
        self.node = FakeNode()
        self.clients: list[RawClient] = []

    def start(self, **config: Any) -> ApiService:
        service = api_service(self, self.reactor, self.node, **config)
        service.startService()
        self.addCleanup(self.stop_clients)
        self.addCleanup(service.stopService)
        return service

    def stop_clients(self) -> None:
        for client in self.clients:
            if client.reason is None and client.transport is not None:
                client.transport.abortConnection()  # type: ignore[attr-defined]

    async def connect(self, service: ApiService, send: bytes = b"") -> RawClient:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", service.listen_port)
        client = RawClient(send)
        self.clients.append(client)
        await connectProtocol(endpoint, client)
        return client

    async def until(self, predicate: Any, what: str) -> None:
        await poll_until(self.reactor, predicate, HANG_GUARD, what, interval=0.01)

    async def test_cap(self) -> None:
        """Past the cap a client receives the whole 503 and the end of the connection."""
        service = self.start(api_max_connections=2)
        get = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"
        held = [await self.connect(service, get) for _ in range(2)]
        await self.until(lambda: all(c.answers() == 1 for c in held), "two answers")
        refused = await self.connect(service, get)
        await refused.lost
        self.assertTrue(refused.received.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertIn(b"\r\nRetry-After: %d\r\n" % RETRY_AFTER, refused.received)
        self.assertIn("at most 2", refused.body()["error"])
        self.assertEqual(service.site.metrics.refused["503"], 1)
        # One leaves: the next client is served.
        held[0].transport.loseConnection()  # type: ignore[union-attr]
        await self.until(lambda: service.site.open_connections == 1, "one connection left")
        served = await self.connect(service, get)
        await self.until(lambda: served.answers() == 1, "an answer")
        self.assertIn(b"HTTP/1.1 200 OK", served.received)

    async def test_oversize_body(self) -> None:
        """A client that sends a huge body receives the 413, sent before the body was read."""
        service = self.start()
        head = b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n"
        client = await self.connect(service, head + b"x" * (4 * MAX_BODY))
        await client.lost
        self.assertTrue(client.received.startswith(b"HTTP/1.1 413 "))
        self.assertEqual(client.body(), {"error": f"request body larger than {MAX_BODY} bytes"})
        self.assertEqual(self.node.submitted, [])
        self.assertEqual(service.site.metrics.too_large, 1)

    async def test_stop(self) -> None:
        """A stop closes an idle client and aborts one that does not read its answer."""
        service = self.start()
        big = [{"price": "1", "amount": "1", "orders": 1}] * 400_000  # tens of MB of JSON
        self.node.book_doc = {"bids": big, "asks": []}
        idle = await self.connect(service, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        await self.until(lambda: idle.answers() == 1, "an answer")
        stuck = await self.connect(service)
        stuck.transport.pauseProducing()  # type: ignore[union-attr]  # reads nothing
        stuck.transport.write(b"GET /book HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[union-attr]
        await self.until(lambda: any(q[0] == "book" for q in self.node.queries), "the book asked")
        await service.stopService()
        self.assertEqual(service.site.open_connections, 0)
        await idle.lost
        stuck.transport.resumeProducing()  # type: ignore[union-attr]  # it reads again: gone
        await stuck.lost
        self.assertLess(len(stuck.received), len(json.dumps(self.node.book_doc)))
