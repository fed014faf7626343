"""Tests for the requests of :class:`bitfitech.api.site.ApiSite`: a body is the resource's to read.

Data path under test: bytes on a channel of the site (an in-memory
transport) -> :class:`~bitfitech.api.site.ApiRequest` -> a resource that
records what it was handed.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from bitfitech.api.site import ApiRequest, ApiSite

CLIENT = IPv4Address("TCP", "127.0.0.1", 50000)


class _Recorder(Resource):
    """Answers every POST and records its arguments and body."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[dict[bytes, list[bytes]], bytes]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.seen.append((dict(request.args or {}), request.content.read()))
        return b"ok"


class ApiRequestTests(SynchronousTestCase):
    """twisted.web never parses a POST body as a form on the API's site."""

    def post(self, content_type: bytes, body: bytes) -> tuple[_Recorder, bytes]:
        """POST C{body} to ``/orders?side=buy``; the recorder and what the site wrote."""
        recorder = _Recorder()
        site = ApiSite(recorder, reactor=Clock())
        site.startFactory()
        self.addCleanup(site.stopFactory)
        channel = site.buildProtocol(CLIENT)
        assert channel is not None
        transport = StringTransport(peerAddress=CLIENT)
        channel.makeConnection(transport)
        channel.dataReceived(
            b"POST /orders?side=buy HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        channel.connectionLost(Exception("done"))  # type: ignore[arg-type]
        return recorder, transport.value()

    def test_site_makes_api_requests(self) -> None:
        self.assertIs(ApiSite(Resource()).requestFactory, ApiRequest)

    def test_form_body_stays_in_content(self) -> None:
        """A form-encoded body is not merged into the arguments; the query string still is."""
        body = b"limit=5&side=sell"
        recorder, written = self.post(b"application/x-www-form-urlencoded", body)
        self.assertEqual(recorder.seen, [({b"side": [b"buy"]}, body)])
        self.assertIn(b"200 OK", written)

    def test_multipart_body_stays_in_content(self) -> None:
        """A multipart body is not parsed either (nor refused for being malformed)."""
        body = b"--b\r\nContent-Disposition: form-data; name=side\r\n\r\nsell\r\n--b--\r\n"
        recorder, written = self.post(b"multipart/form-data; boundary=b", body)
        self.assertEqual(recorder.seen, [({b"side": [b"buy"]}, body)])
        self.assertIn(b"200 OK", written)
        recorder, written = self.post(b"multipart/form-data; boundary=b", b"not multipart")
        self.assertEqual(recorder.seen, [({b"side": [b"buy"]}, b"not multipart")])

    def test_json_body(self) -> None:
        """The API's own kind of body reaches the resource as sent."""
        body = b'{"side": "buy", "price": "100", "amount": "1"}'
        recorder, _ = self.post(b"application/json", body)
        self.assertEqual(recorder.seen, [({b"side": [b"buy"]}, body)])
