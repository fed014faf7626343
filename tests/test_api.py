"""Tests for :mod:`bitfitech.api.resources`: the JSON API over a fake node, through StubTreq."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from bitfitech.address import AddressError, parse_address
from bitfitech.api.resources import MAX_BODY, api_root
from bitfitech.interfaces import INodeControl

URL = "http://127.0.0.1:13000"
NODE_A = "0123456789abcdef0123456789abcdef01234567"
NODE_B = "b" * 40
ROW_A = {"node_id": NODE_A, "address": "127.0.0.1:3001", "direction": "outbound"}


@implementer(INodeControl)
class FakeNode:
    """A node the API can steer: canned answers, and a record of what it was asked."""

    def __init__(self) -> None:
        self.status_doc: dict[str, Any] = {"node_id": NODE_B, "network": "main", "peers": {}}
        self.rows: list[dict[str, Any]] = [ROW_A]
        self.linked = {NODE_A}
        self.dials: dict[str, Deferred[dict[str, Any]]] = {}
        self.disconnected: list[str] = []

    def status(self) -> dict[str, Any]:
        return self.status_doc

    def peers(self) -> list[dict[str, Any]]:
        return self.rows

    def connect(self, address: str) -> Deferred[dict[str, Any]]:
        try:
            parse_address(address)
        except AddressError as e:
            raise ValueError(str(e)) from None
        d: Deferred[dict[str, Any]] = Deferred()
        self.dials[address] = d
        return d

    def disconnect(self, node_id: str) -> bool:
        self.disconnected.append(node_id)
        return node_id in self.linked


class APITestCase(SynchronousTestCase):
    """Requests in memory: no socket, no reactor."""

    def setUp(self) -> None:
        self.node = FakeNode()
        # StubTreq builds its request methods at run time; mypy cannot see them.
        self.stub: Any = StubTreq(api_root(self.node))

    def answer(self, d: Deferred[Any]) -> tuple[int, dict[str, Any] | list[Any], Any]:
        """Flush C{d}'s request and return its status, decoded JSON body and headers."""
        self.stub.flush()
        response = self.successResultOf(d)
        content: bytes = self.successResultOf(response.content())
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertEqual(content_type.split(b";")[0], b"application/json")
        return response.code, json.loads(content), response.headers

    def assert_error(self, d: Deferred[Any], code: int, fragment: str = "") -> Any:
        """C{d} answers C{code} with ``{"error": "..."}`` holding C{fragment}; return headers."""
        status, body, headers = self.answer(d)
        self.assertEqual(status, code, body)
        assert isinstance(body, dict)
        self.assertEqual(set(body), {"error"})
        self.assertIsInstance(body["error"], str)
        self.assertIn(fragment, body["error"])
        return headers

    def post_peer(self, body: object) -> Deferred[Any]:
        return self.stub.post(f"{URL}/peers", json=body)  # type: ignore[no-any-return]


class FakeTests(SynchronousTestCase):
    """The fake is a faithful INodeControl."""

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(INodeControl, FakeNode()))


class ReadTests(APITestCase):
    """``GET /``, ``/status`` and ``/peers``."""

    def test_index(self) -> None:
        status, body, _ = self.answer(self.stub.get(f"{URL}/"))
        self.assertEqual(status, 200)
        self.assertEqual(body, {"name": "bitfi", "endpoints": ["/status", "/peers"]})

    def test_status(self) -> None:
        self.node.status_doc = {"node_id": NODE_B, "uptime_s": 1.5, "p2p": {"port": 3000}}
        status, body, headers = self.answer(self.stub.get(f"{URL}/status"))
        self.assertEqual(status, 200)
        self.assertEqual(body, self.node.status_doc)
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])

    def test_head_status(self) -> None:
        self.stub.flush()
        d = self.stub.head(f"{URL}/status")
        self.stub.flush()
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_peers(self) -> None:
        self.node.rows = [ROW_A, {"node_id": NODE_B, "address": "[::1]:3002"}]
        status, body, _ = self.answer(self.stub.get(f"{URL}/peers"))
        self.assertEqual(status, 200)
        self.assertEqual(body, self.node.rows)

    def test_peers_empty(self) -> None:
        self.node.rows = []
        self.assertEqual(self.answer(self.stub.get(f"{URL}/peers"))[1], [])

    def test_one_peer(self) -> None:
        status, body, _ = self.answer(self.stub.get(f"{URL}/peers/{NODE_A}"))
        self.assertEqual((status, body), (200, ROW_A))
        self.assert_error(self.stub.get(f"{URL}/peers/{NODE_B}"), 404, NODE_B)

    def test_unknown_paths(self) -> None:
        for path in ("/nope", "/status/x", f"/peers/{NODE_A}/x", "/static/index.html", "/x/"):
            self.assert_error(self.stub.get(URL + path), 404, "not found")
        self.assert_error(self.stub.delete(f"{URL}/peers/{NODE_A}/x"), 404, "not found")
        self.assertEqual(self.node.disconnected, [])

    def test_trailing_slash(self) -> None:
        self.assertEqual(self.answer(self.stub.get(f"{URL}/status/"))[1], self.node.status_doc)
        self.assertEqual(self.answer(self.stub.get(f"{URL}/peers/"))[1], self.node.rows)

    def test_method_not_allowed(self) -> None:
        headers = self.assert_error(self.stub.put(f"{URL}/status", data=b"{}"), 405, "PUT")
        allowed = headers.getRawHeaders(b"allow")[0].decode("ascii").split(", ")
        self.assertIn("GET", allowed)
        self.assertNotIn("PUT", allowed)
        headers = self.assert_error(self.stub.delete(f"{URL}/peers"), 405, "DELETE")
        self.assertIn("POST", headers.getRawHeaders(b"allow")[0].decode("ascii"))


class ConnectTests(APITestCase):
    """``POST /peers {"address": ...}``."""

    def test_connect(self) -> None:
        d = self.post_peer({"address": "127.0.0.1:3001"})
        self.stub.flush()
        self.assertNoResult(d)
        self.assertEqual(list(self.node.dials), ["127.0.0.1:3001"])
        self.node.dials["127.0.0.1:3001"].callback(ROW_A)
        status, body, _ = self.answer(d)
        self.assertEqual((status, body), (200, ROW_A))

    def test_invalid_json(self) -> None:
        d = self.stub.post(f"{URL}/peers", data=b"{not json")
        self.assert_error(d, 400, "JSON object")
        d = self.stub.post(f"{URL}/peers", data=b"\xff\xfe")
        self.assert_error(d, 400, "JSON object")
        self.assert_error(self.stub.post(f"{URL}/peers"), 400, "JSON object")
        self.assertEqual(self.node.dials, {})

    def test_not_an_object(self) -> None:
        for body in (["127.0.0.1:3001"], "127.0.0.1:3001", 3001, None):
            self.assert_error(self.post_peer(body), 400, "JSON object")
        self.assertEqual(self.node.dials, {})

    def test_missing_or_non_string_address(self) -> None:
        for body in ({}, {"addr": "127.0.0.1:3001"}, {"address": 3001}, {"address": None},
                     {"address": ["127.0.0.1:3001"]}):  # fmt: skip
            self.assert_error(self.post_peer(body), 400, "address")
        self.assertEqual(self.node.dials, {})

    def test_bad_address(self) -> None:
        self.assert_error(self.post_peer({"address": "127.0.0.1"}), 400, "host:port")
        self.assert_error(self.post_peer({"address": "::1:3000"}), 400, "[addr]:port")

    def test_body_too_large(self) -> None:
        body = json.dumps({"address": "127.0.0.1:3001", "pad": "x" * MAX_BODY}).encode()
        self.assert_error(self.stub.post(f"{URL}/peers", data=body), 413, str(MAX_BODY))

    def test_connection_error(self) -> None:
        d = self.post_peer({"address": "127.0.0.1:3001"})
        self.stub.flush()
        self.node.dials["127.0.0.1:3001"].errback(ConnectionError("handshake failed"))
        self.assert_error(d, 502, "handshake failed")

    def test_twisted_connect_errors(self) -> None:
        for reason in (ConnectionRefusedError("refused"), TimeoutError("timed out")):
            d = self.post_peer({"address": "127.0.0.1:3001"})
            self.stub.flush()
            self.node.dials.pop("127.0.0.1:3001").errback(reason)
            self.assert_error(d, 502, "127.0.0.1:3001")

    def test_value_error_later(self) -> None:
        self.node.connect = lambda address: fail(ValueError("bad address"))  # type: ignore[method-assign]
        self.assert_error(self.post_peer({"address": "x"}), 400, "bad address")

    def test_unexpected_error(self) -> None:
        d = self.post_peer({"address": "127.0.0.1:3001"})
        self.stub.flush()
        self.node.dials["127.0.0.1:3001"].errback(RuntimeError("bug"))
        self.assert_error(d, 500, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_client_gone(self) -> None:
        d = self.post_peer({"address": "127.0.0.1:3001"})
        self.stub.flush()
        self.assertNoResult(d)
        d.cancel()
        self.stub.flush()
        self.failureResultOf(d)
        self.node.dials["127.0.0.1:3001"].callback(ROW_A)  # must not write to a finished request
        self.stub.flush()


class DisconnectTests(APITestCase):
    """``DELETE /peers/{node_id}``."""

    def test_disconnect(self) -> None:
        status, body, _ = self.answer(self.stub.delete(f"{URL}/peers/{NODE_A}"))
        self.assertEqual((status, body), (200, {"node_id": NODE_A, "status": "disconnected"}))
        self.assertEqual(self.node.disconnected, [NODE_A])

    def test_uppercase_id(self) -> None:
        status, _, _ = self.answer(self.stub.delete(f"{URL}/peers/{NODE_A.upper()}"))
        self.assertEqual(status, 200)
        self.assertEqual(self.node.disconnected, [NODE_A])

    def test_not_linked(self) -> None:
        self.assert_error(self.stub.delete(f"{URL}/peers/{NODE_B}"), 404, NODE_B)
        self.assertEqual(self.node.disconnected, [NODE_B])

    def test_invalid_id(self) -> None:
        for node_id in ("notanid", NODE_A[:-1], "z" * 40):
            self.assert_error(self.stub.delete(f"{URL}/peers/{node_id}"), 400, "node id")
        self.assertEqual(self.node.disconnected, [])
