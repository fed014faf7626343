"""Tests for :mod:`bitfitech.api`: the JSON API over a fake node, through StubTreq, and its site."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import (
    ConnectionDone,
    ConnectionRefusedError,
    NoProtocol,
    TimeoutError,
)
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from bitfitech.address import AddressError, parse_address
from bitfitech.api.jsonresource import MAX_BATCH, MAX_BODY, ORDER_TYPES, NotFound
from bitfitech.api.resources import api_root
from bitfitech.api.site import ApiSite
from bitfitech.interfaces import BatchRejected, INodeControl, KeyRateLimited, ServiceUnavailable
from bitfitech.logs import enabled, log_level, set_log_level
from bitfitech.market.book import ORDER_TYPES as BOOK_ORDER_TYPES
from bitfitech.peer.bans import ban_address

URL = "http://127.0.0.1:13000"
NODE_A = "0123456789abcdef0123456789abcdef01234567"
NODE_B = "b" * 40
ROW_A = {"node_id": NODE_A, "address": "127.0.0.1:3001", "direction": "outbound"}
ORDER_A = "a1" * 32
ORDER_F = "f0" * 32
"""An order of another node: ours to read, not to cancel."""
FIRST_SEQ = 3
"""The seq the fake gives the first new order; the next ones follow."""


def new_order_id(seq: int) -> str:
    """The id the fake gives the new order with C{seq}."""
    return f"{seq:064x}"


ORDER_NEW = new_order_id(FIRST_SEQ)
"""The id the fake gives the first new order."""
TICK = Decimal("0.01")
TRADE_A = {
    "id": "c" * 64,
    "price": "50000.5",
    "amount": "0.1",
    "side": "sell",
    "taker": "d" * 64,
    "maker": ORDER_A,
    "lamport": 8,
    "time": 1_700_000_000_500,
    "settled": False,
}


def order_doc(
    order_id: str,
    side: str,
    order_type: str,
    price: str | None,
    amount: str,
    status: str = "open",
    seq: int = FIRST_SEQ,
) -> dict[str, Any]:
    """An order document as the node would give it."""
    return {
        "id": order_id,
        "side": side,
        "type": order_type,
        "price": price,
        "amount": amount,
        "remaining": amount,
        "filled": "0",
        "status": status,
        "reason": None,
        "seq": seq,
        "lamport": 7,
        "created_at": 1_700_000_000_000,
        "settled": False,
        "trades": [],
    }


DOC_A = order_doc(ORDER_A, "buy", "limit", "50000.5", "0.25") | {
    "remaining": "0.15",
    "filled": "0.1",
    "trades": [TRADE_A],
}
DOC_F = order_doc(ORDER_F, "sell", "limit", "50001", "1")
BAN_A = {"address": "192.0.2.7", "node_id": NODE_B, "reason": "bad checksum",
         "banned_at": 1_700_000_000_500, "until": 1_700_086_400_500}  # fmt: skip
BAN_B = {"address": "2001:db8::1", "node_id": None, "reason": "malformed event",
         "banned_at": 1_700_000_100_000, "until": 1_700_086_500_000}  # fmt: skip
BOOK = {"bids": [["50000.5", "0.15", 1]], "asks": [["50001", "1", 1], ["50002.25", "3.5", 2]]}


@implementer(INodeControl)
class FakeNode:
    """A node the API can steer: canned answers, and a record of what it was asked."""

    def __init__(self) -> None:
        self.status_doc: dict[str, Any] = {"node_id": NODE_B, "network": "main", "peers": {}}
        self.rows: list[dict[str, Any]] = [ROW_A]
        self.linked = {NODE_A}
        self.dials: dict[str, Deferred[dict[str, Any]]] = {}
        self.disconnected: list[str] = []
        self.documents: dict[str, dict[str, Any]] = {ORDER_A: DOC_A, ORDER_F: DOC_F}
        self.foreign = {ORDER_F}
        self.submitted: list[tuple[str, str | None, str, str]] = []
        self.next_seq = FIRST_SEQ
        self.cancelled: list[str] = []
        self.queries: list[tuple[str, object]] = []
        self.book_doc: dict[str, Any] = BOOK
        self.trade_docs: list[dict[str, Any]] = [TRADE_A]
        self.ticker_doc: dict[str, Any] = {"pair": "BTC/USD", "last": None}
        self.submitted_events: list[tuple[str, str]] = []
        self.journal: Deferred[None] | None = None
        """When set, submits and cancels answer once it fires (or fail with it)."""
        self.bans: dict[str, dict[str, Any]] = {"192.0.2.7": BAN_A, "2001:db8::1": BAN_B}
        self.unbanned: list[str] = []
        self.discovery_doc: dict[str, Any] = {"mdns": None, "dht": None}
        self.watchers: list[Callable[[str, dict[str, Any] | None], None]] = []
        self.link_watchers: list[Callable[[str, dict[str, Any] | None], None]] = []
        self.carried: dict[str, Any] = {"BTC/USD": self}
        """The markets, by name: this node (the first market's), and any other fake."""

    def status(self) -> dict[str, Any]:
        return self.status_doc

    def peers(self) -> list[dict[str, Any]]:
        return self.rows

    def connect(self, address: str) -> Deferred[dict[str, Any]]:
        try:
            parsed = parse_address(address)
        except AddressError as e:
            raise ValueError(str(e)) from None
        if parsed.host in self.bans:
            raise PermissionError(f"{parsed.host} is banned until 1700086400")
        d: Deferred[dict[str, Any]] = Deferred()
        self.dials[address] = d
        return d

    def disconnect(self, node_id: str) -> bool:
        self.disconnected.append(node_id)
        return node_id in self.linked

    def banned(self) -> list[dict[str, Any]]:
        return sorted(self.bans.values(), key=lambda row: row["banned_at"], reverse=True)

    def unban(self, address: str) -> dict[str, Any] | None:
        self.unbanned.append(address)
        try:
            key = ban_address(address)
        except ValueError:
            raise ValueError(f"not an IP address: {address!r}") from None
        return self.bans.pop(key, None)

    def journaled(self, result: Any) -> Deferred[Any]:
        if self.journal is None:
            return succeed(result)
        return self.journal.addCallback(lambda _: result)

    def check(self, price: str | None) -> None:
        """Refuse a price as the book would."""
        if price is not None:
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", price):
                raise ValueError(f"invalid_price: {price!r} is not a plain decimal")
            if Decimal(price) % TICK:
                raise ValueError(
                    f"invalid_price: price {price} is not a multiple of the tick {TICK}"
                )

    def place(self, side: str, price: str | None, amount: str, order_type: str) -> dict[str, Any]:
        """Sign a new order: the next seq, and an id of its own."""
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        document = order_doc(new_order_id(seq), side, order_type, price, amount, seq=seq)
        self.documents[document["id"]] = document
        return document

    def submit_order(
        self, side: str, price: str | None, amount: str, order_type: str
    ) -> Deferred[dict[str, Any]]:
        self.submitted.append((side, price, amount, order_type))
        self.check(price)
        return self.journaled(self.place(side, price, amount, order_type))

    def submit_orders(
        self, orders: Sequence[tuple[str, str | None, str, str]]
    ) -> Deferred[list[dict[str, Any]]]:
        for index, (_, price, _, _) in enumerate(orders):
            try:
                self.check(price)
            except ValueError as e:
                raise BatchRejected(index, str(e)) from None
        self.submitted.extend(orders)
        return self.journaled([self.place(*order) for order in orders])

    def cancel_order(self, order_id: str) -> Deferred[dict[str, Any]]:
        self.cancelled.append(order_id)
        document = self.documents[order_id]
        if order_id in self.foreign:
            raise PermissionError(order_id)
        return self.journaled(document | {"status": "cancelled", "remaining": "0"})

    def order(self, order_id: str) -> dict[str, Any] | None:
        return self.documents.get(order_id)

    def orders(self, state: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        self.queries.append(("orders", (state, limit, offset)))
        own = [doc for doc in self.documents.values() if doc["id"] not in self.foreign]
        return own[offset : offset + limit]

    def book(self, depth: int) -> dict[str, Any]:
        self.queries.append(("book", depth))
        return self.book_doc

    def trades(self, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        self.queries.append(("trades", (limit, offset)))
        return self.trade_docs[offset : offset + limit]

    def trade_count(self) -> int:
        return len(self.trade_docs)

    def ticker(self) -> dict[str, Any]:
        self.queries.append(("ticker", None))
        return self.ticker_doc

    def submit_events(self, signed: Sequence[tuple[str, str]]) -> Deferred[list[dict[str, Any]]]:
        for index, (text, _) in enumerate(signed):
            if text.endswith(" flood"):
                raise KeyRateLimited("a" * 64, 1.5)
            if not text.startswith("bitfi1 "):
                raise BatchRejected(index, "invalid_event: not an event", "events")
        self.submitted_events.extend(signed)
        documents = [{"id": "e" * 64, "author": "a" * 64, "seq": 1, "kind": "order",
                      "status": "applied", "order": None} for _ in signed]  # fmt: skip
        return self.journaled(documents)

    def key(self, key: str) -> dict[str, Any]:
        self.queries.append(("key", key))
        return {"key": key, "network": "test", "pair": "BTC/USD", "next_seq": 1,
                "lamport": 1, "events": 0}  # fmt: skip

    def key_orders(self, key: str, state: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        self.queries.append(("key_orders", (key, state, limit, offset)))
        return []

    def key_trades(self, key: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        self.queries.append(("key_trades", (key, limit, offset)))
        return self.trade_docs[offset : offset + limit]

    def discovery(self) -> dict[str, Any]:
        return self.discovery_doc

    def markets(self) -> list[dict[str, Any]]:
        return [{"market": name, "slug": name.replace("/", "-"), "best_bid": None,
                 "best_ask": None, "last": None, "state_hash": "0" * 64, "events": 0,
                 "trades": 0, "open_orders": 0, "ordering": "author", "witnesses_missing": []}
                for name in self.carried]  # fmt: skip

    def market(self, name: str) -> Any:
        return self.carried[name]

    def watch(self, observer: Callable[[str, dict[str, Any] | None], None]) -> Callable[[], None]:
        self.watchers.append(observer)
        return lambda: self.watchers.remove(observer)

    def watch_links(
        self, observer: Callable[[str, dict[str, Any] | None], None]
    ) -> Callable[[], None]:
        self.link_watchers.append(observer)
        return lambda: self.link_watchers.remove(observer)


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

    def post_order(self, body: object) -> Deferred[Any]:
        return self.stub.post(f"{URL}/orders", json=body)  # type: ignore[no-any-return]

    def post_batch(self, body: object) -> Deferred[Any]:
        return self.stub.post(f"{URL}/orders/batch", json=body)  # type: ignore[no-any-return]

    def allowed(self, headers: Any) -> list[str]:
        """The methods of an ``Allow`` header."""
        [allow] = headers.getRawHeaders(b"allow")
        return allow.decode("ascii").split(", ")  # type: ignore[no-any-return]


class FakeTests(SynchronousTestCase):
    """The fake is a faithful INodeControl."""

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(INodeControl, FakeNode()))


class ReadTests(APITestCase):
    """``GET /``, ``/status`` and ``/peers``."""

    def test_index(self) -> None:
        status, body, _ = self.answer(self.stub.get(f"{URL}/api"))
        self.assertEqual(status, 200)
        assert isinstance(body, dict)
        self.assertEqual((body["name"], body["openapi"]), ("bitfi", "/openapi.json"))
        for path in ("/status", "/discovery", "/peers", "/peers/banned", "/orders",
                     "/orders/batch", "/book", "/trades", "/stream", "/openapi.json",
                     "/markets", "/markets/{market}/orders"):  # fmt: skip
            self.assertIn(path, body["endpoints"])
        # Programs still get the index at /; browsers get the dashboard once it is mounted.
        self.assertEqual(self.answer(self.stub.get(f"{URL}/"))[1], body)
        html = {"accept": "text/html,application/xhtml+xml"}
        self.assertEqual(self.answer(self.stub.get(f"{URL}/", headers=html))[1], body)

    def test_discovery(self) -> None:
        status, body, _ = self.answer(self.stub.get(f"{URL}/discovery"))
        self.assertEqual((status, body), (200, {"mdns": None, "dht": None}))

    def test_status(self) -> None:
        self.node.status_doc = {"node_id": NODE_B, "uptime_ms": 1500, "p2p": {"port": 3000}}
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

    def test_refused_link(self) -> None:
        """The hub refusing the link (a banned address behind a host name) is a 502 that says so."""
        d = self.post_peer({"address": "seed.example:3001"})
        self.stub.flush()
        self.node.dials["seed.example:3001"].errback(NoProtocol())
        self.assert_error(d, 502, "banned")

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


class BanTests(APITestCase):
    """``GET /peers/banned``, ``DELETE /peers/banned/{address}``, and dials to banned ones."""

    def test_list_newest_first(self) -> None:
        status, body, _ = self.answer(self.stub.get(f"{URL}/peers/banned"))
        self.assertEqual((status, body), (200, [BAN_B, BAN_A]))
        self.assertEqual(self.answer(self.stub.get(f"{URL}/peers/banned/"))[1], [BAN_B, BAN_A])

    def test_list_empty(self) -> None:
        self.node.bans = {}
        self.assertEqual(self.answer(self.stub.get(f"{URL}/peers/banned"))[1], [])

    def test_lift(self) -> None:
        status, body, _ = self.answer(self.stub.delete(f"{URL}/peers/banned/192.0.2.7"))
        self.assertEqual((status, body), (200, BAN_A))
        self.assertEqual(self.answer(self.stub.get(f"{URL}/peers/banned"))[1], [BAN_B])
        self.assert_error(self.stub.delete(f"{URL}/peers/banned/192.0.2.7"), 404, "not banned")

    def test_lift_ipv6(self) -> None:
        for path in ("2001:db8::1", "%5B2001:db8::1%5D", "2001%3Adb8%3A%3A1"):
            self.node.bans["2001:db8::1"] = BAN_B
            status, body, _ = self.answer(self.stub.delete(f"{URL}/peers/banned/{path}"))
            self.assertEqual((status, body), (200, BAN_B), path)

    def test_lift_not_banned(self) -> None:
        self.assert_error(self.stub.delete(f"{URL}/peers/banned/198.51.100.1"), 404, "not banned")

    def test_lift_invalid_address(self) -> None:
        for address in ("nope", "seed.example", "300.1.1.1", "1.2.3.4:3000"):
            self.assert_error(
                self.stub.delete(f"{URL}/peers/banned/{address}"), 400, "invalid address"
            )
        self.assertEqual(self.node.bans.keys(), {"192.0.2.7", "2001:db8::1"})

    def test_methods(self) -> None:
        headers = self.assert_error(self.stub.delete(f"{URL}/peers/banned"), 405, "DELETE")
        self.assertEqual(self.allowed(headers), ["GET", "HEAD"])
        headers = self.assert_error(self.stub.get(f"{URL}/peers/banned/192.0.2.7"), 405, "GET")
        self.assertEqual(self.allowed(headers), ["DELETE"])
        self.assert_error(self.stub.get(f"{URL}/peers/banned/192.0.2.7/x"), 404, "not found")

    def test_dial_to_banned_address_refused(self) -> None:
        self.assert_error(self.post_peer({"address": "192.0.2.7:3000"}), 403, "banned")
        self.assertEqual(self.node.dials, {})


class SubmitTests(APITestCase):
    """``POST /orders``."""

    def test_submit(self) -> None:
        body = {"side": "buy", "price": "50000.5", "amount": "0.25", "type": "limit"}
        status, answer, headers = self.answer(self.post_order(body))
        self.assertEqual(status, 201)
        self.assertEqual(answer, order_doc(ORDER_NEW, "buy", "limit", "50000.5", "0.25"))
        self.assertEqual(headers.getRawHeaders(b"location"), [f"/orders/{ORDER_NEW}".encode()])
        self.assertEqual(self.node.submitted, [("buy", "50000.5", "0.25", "limit")])

    def test_type_defaults_to_limit(self) -> None:
        status, answer, _ = self.answer(
            self.post_order({"side": "sell", "price": "1", "amount": "2"})
        )
        self.assertEqual(status, 201)
        assert isinstance(answer, dict)
        self.assertEqual(answer["type"], "limit")
        self.assertEqual(self.node.submitted, [("sell", "1", "2", "limit")])

    def test_decimals_reach_the_node_unchanged(self) -> None:
        body = {"side": "buy", "price": "050000.50", "amount": "0.25000000000000000001"}
        self.assertEqual(self.answer(self.post_order(body))[0], 201)
        self.assertEqual(
            self.node.submitted, [("buy", "050000.50", "0.25000000000000000001", "limit")]
        )

    def test_every_type(self) -> None:
        self.assertEqual(set(ORDER_TYPES), set(BOOK_ORDER_TYPES))
        bodies: list[dict[str, str | None]] = [
            {"side": "sell", "price": "3.5", "amount": "1", "type": order_type}
            for order_type in ("limit", "ioc", "fok", "post_only")
        ]
        bodies.append({"side": "buy", "amount": "1", "type": "market"})
        bodies.append({"side": "sell", "price": None, "amount": "2", "type": "market"})
        for body in bodies:
            self.assertEqual(self.answer(self.post_order(body))[0], 201)
        self.assertEqual(
            self.node.submitted,
            [
                ("sell", "3.5", "1", "limit"),
                ("sell", "3.5", "1", "ioc"),
                ("sell", "3.5", "1", "fok"),
                ("sell", "3.5", "1", "post_only"),
                ("buy", None, "1", "market"),
                ("sell", None, "2", "market"),
            ],
        )

    def test_numbers_are_refused(self) -> None:
        for body, name in (
            ({"side": "buy", "price": 50000.5, "amount": "0.25"}, "price"),
            ({"side": "buy", "price": 50000, "amount": "0.25"}, "price"),
            ({"side": "buy", "price": "50000.5", "amount": 0.25}, "amount"),
            ({"side": "buy", "price": "50000.5", "amount": 1}, "amount"),
            ({"side": "sell", "amount": 0.1, "type": "market"}, "amount"),
        ):
            message = (
                f'{name} must be a decimal in a JSON string, such as "0.25", not a JSON number'
            )
            self.assert_error(self.post_order(body), 400, message)
        # Numbers no float can hold are refused the same way, not crashed on.
        for raw in (b"0.1000000000000000055511151231257827", b"1e400", b"-0.0", b"1" * 4000):
            data = b'{"side": "buy", "price": "1", "amount": ' + raw + b"}"
            self.assert_error(self.stub.post(f"{URL}/orders", data=data), 400, "amount")
        data = b'{"side": "buy", "price": "1", "amount": ' + b"1" * 5000 + b"}"
        self.assert_error(self.stub.post(f"{URL}/orders", data=data), 400)
        self.assertEqual(self.node.submitted, [])

    def test_wrong_types(self) -> None:
        for value in (True, False, ["1"], {"value": "1"}):
            body = {"side": "buy", "price": value, "amount": "1"}
            self.assert_error(self.post_order(body), 400, "price")
            body = {"side": "buy", "price": "1", "amount": value}
            self.assert_error(self.post_order(body), 400, "amount")
        self.assertEqual(self.node.submitted, [])

    def test_missing_fields(self) -> None:
        for body, name in (
            ({"price": "1", "amount": "1"}, "side"),
            ({"side": "buy", "price": "1"}, "amount"),
            ({"side": "buy", "price": "1", "amount": None}, "amount"),
            ({"side": "buy", "amount": "1"}, "price"),
            ({"side": "buy", "price": None, "amount": "1"}, "price"),
            ({"side": "buy", "amount": "1", "type": "ioc"}, "price"),
            ({"side": "buy", "type": "market"}, "amount"),
            ({}, "side"),
        ):
            self.assert_error(self.post_order(body), 400, name)
        self.assertEqual(self.node.submitted, [])

    def test_limit_without_price(self) -> None:
        self.assert_error(
            self.post_order({"side": "buy", "amount": "1"}),
            400,
            "price is required for a limit order",
        )

    def test_bad_side(self) -> None:
        for side in ("BUY", "bid", "", 1, None, ["buy"]):
            body = {"side": side, "price": "1", "amount": "1"}
            self.assert_error(self.post_order(body), 400, "side")
        self.assertEqual(self.node.submitted, [])

    def test_bad_type(self) -> None:
        for order_type in ("LIMIT", "stop", "", 1, None, ["limit"]):
            body = {"side": "buy", "price": "1", "amount": "1", "type": order_type}
            self.assert_error(self.post_order(body), 400, "type must be one of")
        self.assertEqual(self.node.submitted, [])

    def test_market_with_price(self) -> None:
        for price in ("50000", "0", 50000, ""):
            body = {"side": "buy", "price": price, "amount": "1", "type": "market"}
            self.assert_error(self.post_order(body), 400, "price must be absent or null")
        self.assertEqual(self.node.submitted, [])

    def test_unknown_keys(self) -> None:
        body = {"side": "buy", "price": "1", "amount": "1", "owner": "x", "id": ORDER_A}
        self.assert_error(self.post_order(body), 400, "unknown field(s) 'id', 'owner'")
        self.assert_error(self.post_order({"qty": "1"}), 400, "'qty'")
        self.assertEqual(self.node.submitted, [])

    def test_not_an_object(self) -> None:
        for body in ([{"side": "buy", "price": "1", "amount": "1"}], "buy", 1.5, None):
            self.assert_error(self.post_order(body), 400, "JSON object")
        for data in (
            b"",
            b"{not json",
            b"\xff",
            b'{"side": NaN}',
            b'{"amount": Infinity}',
            b"[" * 100_000,
        ):
            self.assert_error(
                self.stub.post(f"{URL}/orders", data=data[:MAX_BODY]), 400, "JSON object"
            )
        self.assertEqual(self.node.submitted, [])

    def test_repeated_key(self) -> None:
        data = b'{"side": "buy", "price": "1", "price": "100", "amount": "1"}'
        self.assert_error(self.stub.post(f"{URL}/orders", data=data), 400, "'price'")
        self.assertEqual(self.node.submitted, [])

    def test_body_too_large(self) -> None:
        body = {"side": "buy", "price": "1", "amount": "1" + "0" * MAX_BODY}
        self.assert_error(self.post_order(body), 413, str(MAX_BODY))
        self.assertEqual(self.node.submitted, [])

    def test_refused_by_the_book(self) -> None:
        body = {"side": "buy", "price": "50000.555", "amount": "0.25"}
        self.assert_error(
            self.post_order(body),
            400,
            "invalid_price: price 50000.555 is not a multiple of the tick 0.01",
        )
        self.assert_error(self.post_order(body | {"price": "1e3"}), 400, "invalid_price")
        self.assertEqual(
            self.node.submitted,
            [("buy", "50000.555", "0.25", "limit"), ("buy", "1e3", "0.25", "limit")],
        )

    def test_answers_once_journaled(self) -> None:
        self.node.journal = Deferred()
        d = self.post_order({"side": "buy", "price": "1", "amount": "1"})
        self.stub.flush()
        self.assertNoResult(d)
        self.node.journal.callback(None)
        self.assertEqual(self.answer(d)[0], 201)

    def test_unavailable(self) -> None:
        self.node.journal = Deferred()
        d = self.post_order({"side": "buy", "price": "1", "amount": "1"})
        self.stub.flush()
        self.node.journal.errback(ServiceUnavailable("journal failed"))
        self.assert_error(d, 503, "journal failed")

    def test_unavailable_at_once(self) -> None:
        def refuse(*args: object) -> Deferred[dict[str, Any]]:
            raise ServiceUnavailable()

        self.node.submit_order = refuse  # type: ignore[method-assign,assignment]
        self.assert_error(
            self.post_order({"side": "buy", "price": "1", "amount": "1"}), 503, "cannot take orders"
        )

    def test_unexpected_error(self) -> None:
        self.node.journal = Deferred()
        d = self.post_order({"side": "buy", "price": "1", "amount": "1"})
        self.stub.flush()
        self.node.journal.errback(RuntimeError("bug"))
        self.assert_error(d, 500, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_method_not_allowed(self) -> None:
        headers = self.assert_error(self.stub.put(f"{URL}/orders", data=b"{}"), 405, "PUT")
        self.assertEqual(self.allowed(headers), ["GET", "HEAD", "POST"])
        headers = self.assert_error(self.stub.delete(f"{URL}/orders"), 405, "DELETE")
        self.assertEqual(self.allowed(headers), ["GET", "HEAD", "POST"])


LIMIT_BUY = {"side": "buy", "price": "50000.5", "amount": "0.25", "type": "limit"}
LIMIT_SELL = {"side": "sell", "price": "50001", "amount": "1"}
MARKET_SELL = {"side": "sell", "amount": "0.1", "type": "market"}


class BatchTests(APITestCase):
    """``POST /orders/batch``."""

    def assert_rejected(self, d: Deferred[Any], index: int, fragment: str) -> None:
        """C{d} answers 400 naming order C{index}, and nothing was placed."""
        status, body, _ = self.answer(d)
        self.assertEqual(status, 400, body)
        self.assertEqual(set(body), {"error", "index"})
        assert isinstance(body, dict)
        self.assertEqual(body["index"], index)
        self.assertTrue(body["error"].startswith(f"orders[{index}]: "), body["error"])
        self.assertIn(fragment, body["error"])
        self.assertEqual(self.node.submitted, [])

    def test_batch(self) -> None:
        status, body, headers = self.answer(
            self.post_batch({"orders": [LIMIT_BUY, LIMIT_SELL, MARKET_SELL]})
        )
        self.assertEqual(status, 201)
        self.assertEqual(headers.getRawHeaders(b"location"), None)
        assert isinstance(body, dict)
        self.assertEqual(set(body), {"orders"})
        documents = body["orders"]
        self.assertEqual(
            self.node.submitted,
            [
                ("buy", "50000.5", "0.25", "limit"),
                ("sell", "50001", "1", "limit"),
                ("sell", None, "0.1", "market"),
            ],
        )
        self.assertEqual(
            [(doc["side"], doc["type"], doc["price"]) for doc in documents],
            [("buy", "limit", "50000.5"), ("sell", "limit", "50001"), ("sell", "market", None)],
        )
        self.assertEqual(len({doc["id"] for doc in documents}), 3)
        self.assertEqual(
            [doc["seq"] for doc in documents], [FIRST_SEQ, FIRST_SEQ + 1, FIRST_SEQ + 2]
        )
        for document in documents:
            self.assertEqual(
                self.answer(self.stub.get(f"{URL}/orders/{document['id']}"))[1], document
            )

    def test_same_documents_as_single_orders(self) -> None:
        single = self.answer(self.post_order(LIMIT_BUY))[1]
        self.node.next_seq = FIRST_SEQ
        self.assertEqual(
            self.answer(self.post_batch({"orders": [LIMIT_BUY]}))[1], {"orders": [single]}
        )

    def test_largest_batch(self) -> None:
        status, body, _ = self.answer(self.post_batch({"orders": [LIMIT_SELL] * MAX_BATCH}))
        self.assertEqual(status, 201)
        assert isinstance(body, dict)
        self.assertEqual(len(body["orders"]), MAX_BATCH)
        self.assertEqual(len(self.node.submitted), MAX_BATCH)

    def test_trailing_slash(self) -> None:
        d = self.stub.post(f"{URL}/orders/batch/", json={"orders": [LIMIT_SELL]})
        self.assertEqual(self.answer(d)[0], 201)

    def test_refused_by_the_book(self) -> None:
        bad = LIMIT_BUY | {"price": "50000.555"}
        d = self.post_batch({"orders": [LIMIT_SELL, bad, LIMIT_BUY]})
        self.assert_rejected(
            d, 1, "invalid_price: price 50000.555 is not a multiple of the tick 0.01"
        )
        self.assertEqual(self.answer(self.stub.get(f"{URL}/orders"))[1], {"orders": [DOC_A]})

    def test_first_bad_order_named(self) -> None:
        bad = LIMIT_BUY | {"price": "1.001"}
        self.assert_rejected(self.post_batch({"orders": [LIMIT_SELL] * 3 + [bad, bad]}), 3, "tick")

    def test_malformed_order(self) -> None:
        for order, fragment in (
            ({"price": "1", "amount": "1"}, "side must be"),
            (LIMIT_BUY | {"amount": 0.25}, "not a JSON number"),
            (LIMIT_BUY | {"owner": "x"}, "unknown field(s) 'owner'"),
            (MARKET_SELL | {"price": "1"}, "price must be absent or null"),
            (LIMIT_BUY | {"type": "stop"}, "type must be one of"),
        ):
            self.assert_rejected(self.post_batch({"orders": [LIMIT_SELL, order]}), 1, fragment)

    def test_order_not_an_object(self) -> None:
        for entry in ("buy", 1, None, [LIMIT_BUY], True):
            d = self.post_batch({"orders": [entry, LIMIT_BUY]})
            self.assert_rejected(d, 0, "an order must be a JSON object")

    def test_not_a_list(self) -> None:
        bodies: list[dict[str, object]] = [
            {},
            {"orders": None},
            {"orders": LIMIT_BUY},
            {"orders": "x"},
            {"order": []},
        ]
        for body in bodies:
            self.assert_error(self.post_batch(body), 400, "orders")
        self.assert_error(
            self.post_batch({"orders": [LIMIT_BUY], "atomic": True}),
            400,
            "unknown field(s) 'atomic'",
        )
        self.assert_error(self.post_batch([LIMIT_BUY]), 400, "JSON object")
        self.assertEqual(self.node.submitted, [])

    def test_size(self) -> None:
        self.assert_error(self.post_batch({"orders": []}), 400, f"1 to {MAX_BATCH} orders, not 0")
        body = {"orders": [LIMIT_SELL] * (MAX_BATCH + 1)}
        self.assert_error(self.post_batch(body), 400, f"not {MAX_BATCH + 1}")
        self.assertEqual(self.node.submitted, [])

    def test_answers_once_journaled(self) -> None:
        self.node.journal = Deferred()
        d = self.post_batch({"orders": [LIMIT_BUY, LIMIT_SELL]})
        self.stub.flush()
        self.assertNoResult(d)
        self.node.journal.callback(None)
        self.assertEqual(self.answer(d)[0], 201)

    def test_unavailable(self) -> None:
        self.node.journal = Deferred()
        d = self.post_batch({"orders": [LIMIT_BUY, LIMIT_SELL]})
        self.stub.flush()
        self.node.journal.errback(ServiceUnavailable("the journal failed"))
        self.assert_error(d, 503, "the journal failed")

    def test_unavailable_at_once(self) -> None:
        def refuse(orders: object) -> Deferred[list[dict[str, Any]]]:
            raise ServiceUnavailable("the market is not running")

        self.node.submit_orders = refuse  # type: ignore[method-assign,assignment]
        self.assert_error(
            self.post_batch({"orders": [LIMIT_BUY]}), 503, "cannot take orders now (the market"
        )

    def test_method_not_allowed(self) -> None:
        for d, method in (
            (self.stub.get(f"{URL}/orders/batch"), "GET"),
            (self.stub.head(f"{URL}/orders/batch"), "HEAD"),
            (self.stub.put(f"{URL}/orders/batch", json={"orders": [LIMIT_BUY]}), "PUT"),
            (self.stub.delete(f"{URL}/orders/batch"), "DELETE"),
        ):
            self.stub.flush()
            response = self.successResultOf(d)
            self.assertEqual(response.code, 405, method)
            self.assertEqual(self.allowed(response.headers), ["POST"])
        self.assertEqual(self.node.submitted, [])

    def test_below_batch(self) -> None:
        self.assert_error(self.stub.post(f"{URL}/orders/batch/x", json={}), 404, "not found")


class OrderTests(APITestCase):
    """``GET /orders/{id}`` and ``DELETE /orders/{id}``."""

    def test_get(self) -> None:
        status, body, _ = self.answer(self.stub.get(f"{URL}/orders/{ORDER_A}"))
        self.assertEqual((status, body), (200, DOC_A))
        status, body, _ = self.answer(self.stub.get(f"{URL}/orders/{ORDER_F.upper()}"))
        self.assertEqual((status, body), (200, DOC_F))
        self.assertEqual(self.answer(self.stub.get(f"{URL}/orders/{ORDER_A}/"))[1], DOC_A)

    def test_get_unknown(self) -> None:
        self.assert_error(self.stub.get(f"{URL}/orders/{ORDER_NEW}"), 404, ORDER_NEW)

    def test_invalid_ids(self) -> None:
        for order_id in (
            "notanid",
            ORDER_A[:-1],
            ORDER_A + "0",
            "g" * 64,
            "0x" + "0" * 62,
            NODE_A,
            "%20" + ORDER_A[3:],
        ):
            self.assert_error(self.stub.get(f"{URL}/orders/{order_id}"), 400, "order id")
            self.assert_error(self.stub.delete(f"{URL}/orders/{order_id}"), 400, "order id")
        self.assertEqual(self.node.cancelled, [])

    def test_below_an_order(self) -> None:
        self.assert_error(self.stub.get(f"{URL}/orders/{ORDER_A}/x"), 404, "not found")
        self.assert_error(self.stub.delete(f"{URL}/orders/{ORDER_A}/x"), 404, "not found")
        self.assertEqual(self.node.cancelled, [])

    def test_cancel(self) -> None:
        status, body, _ = self.answer(self.stub.delete(f"{URL}/orders/{ORDER_A}"))
        self.assertEqual(status, 200)
        self.assertEqual(body, DOC_A | {"status": "cancelled", "remaining": "0"})
        self.assertEqual(self.node.cancelled, [ORDER_A])

    def test_cancel_uppercase_id(self) -> None:
        self.assertEqual(self.answer(self.stub.delete(f"{URL}/orders/{ORDER_A.upper()}"))[0], 200)
        self.assertEqual(self.node.cancelled, [ORDER_A])

    def test_cancel_without_effect(self) -> None:
        self.node.cancel_order = lambda order_id: succeed(DOC_A)  # type: ignore[method-assign]
        status, body, _ = self.answer(self.stub.delete(f"{URL}/orders/{ORDER_A}"))
        self.assertEqual((status, body), (200, DOC_A))

    def test_cancel_once_journaled(self) -> None:
        self.node.journal = Deferred()
        d = self.stub.delete(f"{URL}/orders/{ORDER_A}")
        self.stub.flush()
        self.assertNoResult(d)
        self.node.journal.callback(None)
        self.assertEqual(self.answer(d)[0], 200)

    def test_cancel_unknown(self) -> None:
        self.assert_error(self.stub.delete(f"{URL}/orders/{ORDER_NEW}"), 404, ORDER_NEW)
        self.assertEqual(self.node.cancelled, [ORDER_NEW])

    def test_cancel_not_ours(self) -> None:
        self.assert_error(
            self.stub.delete(f"{URL}/orders/{ORDER_F}"), 403, "not placed by this node"
        )
        self.assertEqual(self.node.cancelled, [ORDER_F])

    def test_cancel_unavailable(self) -> None:
        self.node.journal = fail(ServiceUnavailable("stopping"))
        self.assert_error(self.stub.delete(f"{URL}/orders/{ORDER_A}"), 503, "stopping")

    def test_method_not_allowed(self) -> None:
        headers = self.assert_error(
            self.stub.post(f"{URL}/orders/{ORDER_A}", data=b"{}"), 405, "POST"
        )
        self.assertEqual(self.allowed(headers), ["DELETE", "GET", "HEAD"])


class QueryTests(APITestCase):
    """``GET /orders``, ``/book`` and ``/trades``, and their query parameters."""

    BAD_INTS = (
        "0",
        "1001",
        "-1",
        "%2B5",
        "+5",
        "abc",
        "5.0",
        "",
        "%205",
        "5%20",
        "1e3",
        "0x10",
        "99999999999999999999",
        "%EF%BC%95",
        "%C2%B2",
    )

    def assert_bad_ints(self, path: str, name: str) -> None:
        for value in self.BAD_INTS:
            self.assert_error(self.stub.get(f"{URL}{path}?{name}={value}"), 400, name)
        self.assert_error(self.stub.get(f"{URL}{path}?{name}=5&{name}=5"), 400, name)
        self.assertEqual(self.node.queries, [])

    def test_orders(self) -> None:
        status, body, _ = self.answer(self.stub.get(f"{URL}/orders"))
        self.assertEqual((status, body), (200, {"orders": [DOC_A]}))
        # One more than the limit is asked for, to know whether more follow.
        self.assertEqual(self.node.queries, [("orders", ("open", 101, 0))])

    def test_orders_params(self) -> None:
        for query, expected in (
            ("state=closed&limit=5", ("closed", 6, 0)),
            ("state=all&limit=1000", ("all", 1001, 0)),
            ("state=open&limit=1&offset=3", ("open", 2, 3)),
            ("limit=007", ("open", 8, 0)),
            ("state=all&other=x", ("all", 101, 0)),
        ):
            self.assertEqual(self.answer(self.stub.get(f"{URL}/orders?{query}"))[0], 200)
            self.assertEqual(self.node.queries.pop(), ("orders", expected))

    def test_orders_bad_state(self) -> None:
        for value in ("OPEN", "", "filled", "open%00"):
            self.assert_error(self.stub.get(f"{URL}/orders?state={value}"), 400, "state")
        self.assert_error(self.stub.get(f"{URL}/orders?state=open&state=all"), 400, "state")
        self.assertEqual(self.node.queries, [])

    def test_orders_bad_limit(self) -> None:
        self.assert_bad_ints("/orders", "limit")

    def test_book(self) -> None:
        status, body, _ = self.answer(self.stub.get(f"{URL}/book"))
        self.assertEqual((status, body), (200, BOOK))
        self.assertEqual(self.answer(self.stub.get(f"{URL}/book?depth=1000"))[0], 200)
        self.assertEqual(self.answer(self.stub.get(f"{URL}/book/?depth=1"))[0], 200)
        self.assertEqual(self.node.queries, [("book", 20), ("book", 1000), ("book", 1)])

    def test_book_empty(self) -> None:
        self.node.book_doc = {"bids": [], "asks": []}
        self.assertEqual(self.answer(self.stub.get(f"{URL}/book"))[1], {"bids": [], "asks": []})

    def test_book_bad_depth(self) -> None:
        self.assert_bad_ints("/book", "depth")

    def test_trades(self) -> None:
        status, body, _ = self.answer(self.stub.get(f"{URL}/trades"))
        self.assertEqual((status, body), (200, {"trades": [TRADE_A]}))
        self.node.trade_docs = []
        self.assertEqual(self.answer(self.stub.get(f"{URL}/trades?limit=3"))[1], {"trades": []})
        self.assertEqual(self.node.queries, [("trades", (50, 0)), ("trades", (3, 0))])

    def test_trades_bad_limit(self) -> None:
        self.assert_bad_ints("/trades", "limit")

    def test_head(self) -> None:
        for path in ("/orders", "/book", "/trades", f"/orders/{ORDER_A}"):
            d = self.stub.head(URL + path)
            self.stub.flush()
            self.assertEqual(self.successResultOf(d).code, 200)

    def test_method_not_allowed(self) -> None:
        for path in ("/book", "/trades"):
            headers = self.assert_error(self.stub.post(URL + path, data=b"{}"), 405, "POST")
            self.assertEqual(self.allowed(headers), ["GET", "HEAD"])
            self.assert_error(self.stub.delete(URL + path), 405, "DELETE")
        self.assertEqual(self.node.queries, [])

    def test_unknown_paths(self) -> None:
        for path in ("/book/x", "/trades/x", "/orders/x/y"):
            self.assert_error(self.stub.get(URL + path), 404, "not found")


class PaginationTests(APITestCase):
    """``limit`` and ``offset`` of the lists, and the ``Link`` and ``X-Total-Count`` headers."""

    def setUp(self) -> None:
        super().setUp()
        self.node.rows = [{"node_id": f"{n:040x}", "address": None} for n in range(7)]
        self.node.trade_docs = [TRADE_A | {"id": f"{n:064x}"} for n in range(5)]
        for _ in range(3):
            self.node.place("buy", "1", "1", "limit")

    def link(self, headers: Any) -> str | None:
        values = headers.getRawHeaders(b"link")
        return None if values is None else values[0].decode("ascii")  # type: ignore[no-any-return]

    def total(self, headers: Any) -> int | None:
        values = headers.getRawHeaders(b"x-total-count")
        return None if values is None else int(values[0])

    def test_peers(self) -> None:
        status, body, headers = self.answer(self.stub.get(f"{URL}/peers?limit=3"))
        self.assertEqual((status, body), (200, self.node.rows[:3]))
        self.assertEqual(self.total(headers), 7)
        self.assertEqual(self.link(headers), '</peers?limit=3&offset=3>; rel="next"')
        _, body, headers = self.answer(self.stub.get(f"{URL}/peers?limit=3&offset=6"))
        self.assertEqual(body, self.node.rows[6:])
        self.assertIsNone(self.link(headers))
        _, body, headers = self.answer(self.stub.get(f"{URL}/peers?offset=100"))
        self.assertEqual((body, self.total(headers)), ([], 7))
        # Without a limit: the default (50) holds them all.
        _, body, headers = self.answer(self.stub.get(f"{URL}/peers"))
        self.assertEqual((body, self.link(headers)), (self.node.rows, None))

    def test_banned(self) -> None:
        _, body, headers = self.answer(self.stub.get(f"{URL}/peers/banned?limit=1"))
        self.assertEqual((body, self.total(headers)), ([BAN_B], 2))
        self.assertEqual(self.link(headers), '</peers/banned?limit=1&offset=1>; rel="next"')
        _, body, headers = self.answer(self.stub.get(f"{URL}/peers/banned?limit=1&offset=1"))
        self.assertEqual((body, self.link(headers)), ([BAN_A], None))

    def test_orders_keep_other_parameters(self) -> None:
        _, body, headers = self.answer(self.stub.get(f"{URL}/orders?state=all&limit=2"))
        assert isinstance(body, dict)
        self.assertEqual(len(body["orders"]), 2)
        self.assertEqual(self.link(headers), '</orders?state=all&limit=2&offset=2>; rel="next"')
        self.assertIsNone(self.total(headers))
        _, body, headers = self.answer(self.stub.get(f"{URL}/orders?state=all&limit=2&offset=2"))
        assert isinstance(body, dict)
        self.assertEqual((len(body["orders"]), self.link(headers)), (2, None))

    def test_trades(self) -> None:
        _, body, headers = self.answer(self.stub.get(f"{URL}/trades?limit=2&offset=2"))
        self.assertEqual(body, {"trades": self.node.trade_docs[2:4]})
        self.assertEqual(self.total(headers), 5)
        self.assertEqual(self.link(headers), '</trades?limit=2&offset=4>; rel="next"')

    def test_bad_offsets(self) -> None:
        for path in ("/peers", "/peers/banned", "/orders", "/trades"):
            for value in ("-1", "x", "1000000001", "1.5"):
                self.assert_error(self.stub.get(f"{URL}{path}?offset={value}"), 400, "offset")
            self.assert_error(self.stub.get(f"{URL}{path}?limit=0"), 400, "limit")


class ErrorTests(APITestCase):
    """Every failure is a JSON error body."""

    def test_market_not_running(self) -> None:
        def unavailable(*args: object) -> Any:
            raise ServiceUnavailable("the market is not running")

        for name in ("orders", "book", "trades", "trade_count", "order"):
            setattr(self.node, name, unavailable)
        for path in ("/orders", "/book", "/trades", f"/orders/{ORDER_A}"):
            self.assert_error(self.stub.get(URL + path), 503, "not running")

    def test_unexpected_exception(self) -> None:
        def broken() -> Any:
            raise RuntimeError("boom")

        self.node.status = broken  # type: ignore[method-assign]
        self.assert_error(self.stub.get(f"{URL}/status"), 500, "internal error")
        self.flushLoggedErrors(RuntimeError)


TOKEN = "s3cret-token-0123456789"


class EventTests(APITestCase):
    """``POST /events`` and ``/events/batch``: the body's checks and the answers."""

    def post(self, path: str, body: object) -> Deferred[Any]:
        d: Deferred[Any] = self.stub.post(f"{URL}{path}", json=body)
        return d

    def test_taken(self) -> None:
        status, body, _ = self.answer(self.post("/events", {"text": "bitfi1 x", "sig": "ab"}))
        assert isinstance(body, dict)
        self.assertEqual((status, body["status"]), (201, "applied"))
        self.assertEqual(self.node.submitted_events, [("bitfi1 x", "ab")])

    def test_bad_bodies(self) -> None:
        bodies: list[object] = [
            {"text": "bitfi1 x"}, {"text": "bitfi1 x", "sig": 5}, [],
            {"text": "bitfi1 x", "sig": "ab", "extra": 1}, {"text": "x" * 5000, "sig": "ab"},
        ]  # fmt: skip
        for body in bodies:
            self.assert_error(self.post("/events", body), 400)
        self.assert_error(self.post("/events", {"text": "nope", "sig": "ab"}), 400, "invalid_event")
        d = self.post("/events/batch", {"events": [{"text": "bitfi1 x", "sig": "a"}, {}]})
        status, error, _ = self.answer(d)
        assert isinstance(error, dict)
        self.assertEqual((status, error["index"]), (400, 1))
        self.assertIn("events[1]: ", error["error"])
        self.assert_error(self.post("/events/batch", {"events": []}), 400)
        self.assertEqual(self.node.submitted_events, [])

    def test_rate_limited(self) -> None:
        d = self.post("/events", {"text": "bitfi1 flood", "sig": "ab"})
        status, body, headers = self.answer(d)
        assert isinstance(body, dict)
        self.assertEqual(status, 429)
        self.assertIn("rate_limited", body["error"])
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"2"])


class TokenTests(SynchronousTestCase):
    """With a token, every request but the public ones must carry it."""

    def setUp(self) -> None:
        self.node = FakeNode()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.root = api_root(self.node, clock=self.clock, token=TOKEN)
        self.stub: Any = StubTreq(self.root)

    def get(
        self, path: str, authorization: str | None = None, method: str = "GET"
    ) -> tuple[int, Any, Any]:
        headers = {} if authorization is None else {"authorization": authorization}
        d = self.stub.request(method, URL + path, headers=headers)
        self.stub.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        body = json.loads(content) if method != "HEAD" else None
        return response.code, body, response.headers

    def test_refused_without_token(self) -> None:
        for path in ("/", "/api", "/status", "/peers", "/orders", "/nope", "/stream"):
            status, body, headers = self.get(path)
            self.assertEqual(status, 401, path)
            self.assertIn("Bearer", body["error"])
            self.assertEqual(headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="bitfi"'])
        self.assertEqual(self.node.queries, [])

    def test_wrong_token(self) -> None:
        for value in ("Bearer wrong-token-0123456789", f"Basic {TOKEN}", TOKEN, "Bearer",
                      f"Bearer {TOKEN}x"):  # fmt: skip
            status, _, headers = self.get("/status", value)
            self.assertEqual(status, 401, value)
            [challenge] = headers.getRawHeaders(b"www-authenticate")
            self.assertIn(b'error="invalid_token"', challenge)

    def test_right_token(self) -> None:
        status, body, _ = self.get("/status", f"Bearer {TOKEN}")
        self.assertEqual((status, body), (200, self.node.status_doc))
        self.assertEqual(self.get("/peers", f"bearer  {TOKEN}")[0], 200)
        self.assertEqual(self.get("/nope", f"Bearer {TOKEN}")[0], 404)

    def ticket(self) -> str:
        status, body, headers = self.get("/stream/ticket", f"Bearer {TOKEN}", "POST")
        self.assertEqual(status, 201)
        expires_at = round((self.clock.seconds() + 30) * 1000)
        self.assertEqual((body["expires_in_ms"], body["expires_at"]), (30_000, expires_at))
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        ticket: str = body["ticket"]
        return ticket

    def test_stream_ticket(self) -> None:
        """A ticket lets one GET /stream in without the header (a bad ``types`` shows it got in)."""
        self.assertEqual(self.get("/stream/ticket", method="POST")[0], 401)
        ticket = self.ticket()
        status, body, _ = self.get(f"/stream?types=nope&ticket={ticket}")
        self.assertEqual(status, 400, body)
        status, body, headers = self.get(f"/stream?types=nope&ticket={ticket}")
        self.assertEqual(status, 401)
        self.assertIn("spent or expired", body["error"])
        self.assertEqual(headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="bitfi"'])

    def test_ticket_opens_nothing_else(self) -> None:
        """A ticket admits GET /stream only, and is not spent by other requests."""
        ticket = self.ticket()
        for method, path in (("GET", "/status"), ("POST", "/stream/ticket"),
                             ("GET", "/stream/ticket"), ("HEAD", "/stream")):  # fmt: skip
            self.assertEqual(self.get(f"{path}?ticket={ticket}", method=method)[0], 401, path)
        self.assertEqual(self.get(f"/stream?ticket={ticket}&ticket={ticket}")[0], 401)
        self.assertEqual(self.get(f"/stream?ticket={ticket}", "Bearer wrong-token-0123")[0], 401)
        self.assertEqual(self.get(f"/stream?types=nope&ticket={ticket}")[0], 400)
        self.assertEqual(self.node.queries, [])

    def test_ticket_for_a_market_stream(self) -> None:
        """A ticket admits one GET /markets/{market}/stream, and nothing else of the market."""
        self.node.carried["ETH/USD"] = FakeNode()
        ticket = self.ticket()
        for path in ("/markets/ETH-USD/book", "/markets/ETH-USD", "/markets/ETH-USD/stream/x",
                     "/markets/stream", "/markets/ETH-USD/trades/stream"):  # fmt: skip
            self.assertEqual(self.get(f"{path}?ticket={ticket}")[0], 401, path)
        status, body, _ = self.get(f"/markets/ETH-USD/stream?types=nope&ticket={ticket}")
        self.assertEqual(status, 400, body)
        self.assertEqual(self.get(f"/markets/ETH-USD/stream?types=nope&ticket={ticket}")[0], 401)

    def test_ticket_expires(self) -> None:
        first = self.ticket()
        self.clock.advance(29.9)
        second = self.ticket()
        self.clock.advance(0.1)
        self.assertEqual(self.get(f"/stream?types=nope&ticket={first}")[0], 401)
        self.assertEqual(self.get(f"/stream?types=nope&ticket={second}")[0], 400)

    def test_public(self) -> None:
        status, body, _ = self.get("/openapi.json")
        self.assertEqual((status, body["openapi"]), (200, "3.1.0"))
        self.root.mount_public(b"assets", NotFound())
        self.assertEqual(self.get("/assets/app.js")[0], 404)

    def test_browser_index(self) -> None:
        self.root.browser_index = NotFound()
        d = self.stub.get(f"{URL}/", headers={"accept": "text/html"})
        self.stub.flush()
        self.assertEqual(self.successResultOf(d).code, 404)
        self.assertEqual(self.get("/")[0], 401)


class AccessLogTests(SynchronousTestCase):
    """:class:`ApiSite` logs each answered request at debug level, and only then."""

    CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)

    def setUp(self) -> None:
        self.addCleanup(set_log_level, log_level())
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)
        self.site = ApiSite(api_root(FakeNode()), reactor=Clock())
        self.site.startFactory()
        self.addCleanup(self.site.stopFactory)

    def request(self, data: bytes) -> bytes:
        """Send C{data} over one HTTP connection and return what the site wrote back."""
        channel = self.site.buildProtocol(self.CLIENT)
        assert channel is not None
        transport = StringTransport(peerAddress=self.CLIENT)
        channel.makeConnection(transport)
        channel.dataReceived(data)
        channel.connectionLost(Failure(ConnectionDone()))
        return transport.value()  # type: ignore[no-any-return]

    def test_info_logs_nothing(self) -> None:
        set_log_level(LogLevel.info)
        response = self.request(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
        self.assertEqual(list(self.events), [])

    def test_debug_logs_one_event(self) -> None:
        set_log_level(LogLevel.debug)
        response = self.request(b"GET /orders/x/y?limit=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(response.startswith(b"HTTP/1.1 404 "), response)
        [event] = self.events
        self.assertEqual(event["log_namespace"], "bitfitech.api.access")
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertEqual(
            (event["client"], event["method"], event["path"], event["uri"], event["status"]),
            ("127.0.0.1", "GET", "/orders/x/y", "/orders/x/y?limit=5", 404),
        )
        self.assertGreater(event["length"], 0)
        self.assertEqual(
            formatEvent(event), f'127.0.0.1 "GET /orders/x/y?limit=5" 404 {event["length"]}'
        )

    def test_ticket_not_logged(self) -> None:
        """A stream ticket in a URI is left out of the access log."""
        set_log_level(LogLevel.debug)
        self.request(b"GET /stream?types=nope&ticket=s3cr3t&x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        [event] = self.events
        self.assertEqual(event["uri"], "/stream?types=nope&ticket=-&x=1")
        self.assertNotIn("s3cr3t", formatEvent(event))

    def test_enabled(self) -> None:
        set_log_level(LogLevel.warn)
        self.assertEqual(
            [enabled(level) for level in LogLevel.iterconstants()],
            [False, False, True, True, True],
        )
        set_log_level(LogLevel.debug)
        self.assertTrue(enabled(LogLevel.debug))
        self.assertEqual(log_level(), LogLevel.debug)


class MarketsTests(APITestCase):
    """``GET /markets`` and the routes of one market under ``/markets/{market}``."""

    def setUp(self) -> None:
        super().setUp()
        self.eth = FakeNode()
        self.eth.book_doc = {"bids": [["5", "1", 1]], "asks": []}
        self.eth.ticker_doc = {"pair": "ETH/USD", "last": None}
        self.node.carried["ETH/USD"] = self.eth

    def test_list(self) -> None:
        status, body, _ = self.answer(self.stub.get(f"{URL}/markets"))
        self.assertEqual(status, 200)
        assert isinstance(body, list)
        self.assertEqual([(r["market"], r["slug"]) for r in body],
                         [("BTC/USD", "BTC-USD"), ("ETH/USD", "ETH-USD")])  # fmt: skip

    def test_slug_forms(self) -> None:
        """BASE-QUOTE in any case, and percent-encoded BASE/QUOTE, name the market."""
        for form in ("ETH-USD", "eth-usd", "Eth-Usd", "ETH%2FUSD", "eth%2fusd"):
            status, body, _ = self.answer(self.stub.get(f"{URL}/markets/{form}/book"))
            self.assertEqual((status, body), (200, self.eth.book_doc), form)
        self.assertEqual(self.node.queries, [])

    def test_root_is_first_market(self) -> None:
        """Today's paths and /markets/BTC-USD are the first market's."""
        for path in ("/book", "/markets/BTC-USD/book"):
            self.assertEqual(self.answer(self.stub.get(f"{URL}{path}"))[1], BOOK)
        self.assertEqual(self.eth.queries, [])

    def test_orders_in_market(self) -> None:
        """An order placed under /markets/ETH-USD goes to that market; its Location is there."""
        d = self.stub.post(f"{URL}/markets/ETH-USD/orders",
                           json={"side": "buy", "price": "100", "amount": "1"})  # fmt: skip
        status, body, headers = self.answer(d)
        self.assertEqual(status, 201)
        assert isinstance(body, dict)
        self.assertEqual(headers.getRawHeaders(b"location"),
                         [f"/markets/ETH-USD/orders/{body['id']}".encode()])  # fmt: skip
        self.assertEqual((self.eth.submitted, self.node.submitted),
                         ([("buy", "100", "1", "limit")], []))  # fmt: skip

    def test_unknown_market(self) -> None:
        for method in ("get", "post", "delete"):
            d = getattr(self.stub, method)(f"{URL}/markets/DOGE-USD/orders")
            self.assert_error(d, 404, "unknown market DOGE/USD; this node carries BTC/USD, ETH/USD")

    def test_bad_market(self) -> None:
        for form in ("nope", "BTC-USD-EUR", "b%C3%A9-usd"):
            self.assert_error(self.stub.get(f"{URL}/markets/{form}/book"), 400, "invalid market")

    def test_market_root(self) -> None:
        """/markets/{market} itself lists nothing."""
        self.assert_error(self.stub.get(f"{URL}/markets/ETH-USD"), 404)
        self.assert_error(self.stub.get(f"{URL}/markets/ETH-USD/nope"), 404)

    def test_unavailable(self) -> None:
        def down() -> list[dict[str, Any]]:
            raise ServiceUnavailable("the market is not running")

        self.node.markets = down  # type: ignore[method-assign]
        self.assert_error(self.stub.get(f"{URL}/markets"), 503, "not running")
        self.assert_error(self.stub.get(f"{URL}/markets/DOGE-USD/book"), 404, "unknown market")
