"""
Tests for :mod:`bitfitech.api.openapi`: the document is valid, names every
route the resources serve (and no other), and real answers of real nodes
over real sockets match it.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool

from bitfitech.api.app import site_root
from bitfitech.api.openapi import document
from bitfitech.api.resources import ROUTES
from bitfitech.market.events import Author
from bitfitech.node import Node
from bitfitech.testing import HANG_GUARD, TEST_PAIR, ClusterTestCase, poll_until, wait_for
from tests.api.test_resources import URL, FakeNode

DOC = document()
METHODS = ("get", "post", "delete", "put", "patch")
TOKEN = "openapi-test-token-0123456789"
SAMPLES = {"{market}": "btc-usd", "{node_id}": "ab" * 20, "{address}": "192.0.2.1",
           "{order_id}": "cd" * 32, "{key}": "ef" * 32}  # fmt: skip
_REGISTRY: Registry[Any] = Registry().with_resource(
    "urn:bitfi", Resource.from_contents(DOC, default_specification=DRAFT202012)
)


def resolve(item: dict[str, Any]) -> dict[str, Any]:
    """C{item}, or what its local ``$ref`` names."""
    while "$ref" in item:
        node: Any = DOC
        for part in item["$ref"].removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        item = node
    return item


def validate(schema: dict[str, Any], instance: object) -> None:
    """Validate C{instance} against C{schema}, a schema of the document."""
    text = json.dumps(schema).replace('"#/components/', '"urn:bitfi#/components/')
    Draft202012Validator(json.loads(text), registry=_REGISTRY).validate(instance)


def sample(template: str) -> str:
    """A concrete path of C{template}."""
    for name, value in SAMPLES.items():
        template = template.replace(name, value)
    return template


class DocumentTests(SynchronousTestCase):
    """The document itself."""

    def test_version(self) -> None:
        self.assertEqual(DOC["openapi"], "3.1.0")
        self.assertEqual(DOC["jsonSchemaDialect"], "https://json-schema.org/draft/2020-12/schema")

    def test_schemas_are_valid(self) -> None:
        for name, schema in DOC["components"]["schemas"].items():
            Draft202012Validator.check_schema(schema)
            self.assertIsInstance(name, str)

    def test_every_reference_resolves(self) -> None:
        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if "$ref" in node:
                    resolve(node)
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(DOC)

    def test_every_operation_answers_errors_as_json(self) -> None:
        for path, item in DOC["paths"].items():
            for method in METHODS:
                if method not in item:
                    continue
                responses = item[method]["responses"]
                for status, response in responses.items():
                    if int(status) >= 400:
                        schema = resolve(response)["content"]["application/json"]["schema"]
                        self.assertEqual(schema, {"$ref": "#/components/schemas/Error"})
                if item[method].get("security") != [{}]:
                    self.assertIn("401", responses, (path, method))

    def test_stream_events(self) -> None:
        events = DOC["paths"]["/stream"]["get"]["x-sse-events"]
        self.assertEqual(set(events), {"book", "trade", "order", "peer", "status"})

    def test_witnesses_block(self) -> None:
        """``witnesses`` is ``{}`` without witnesses, else the whole block, nothing between."""
        from jsonschema.exceptions import ValidationError  # type: ignore[import-untyped]

        from bitfitech.market.fairtime import BROKEN_CHAIN, EQUIVOCATION

        schema = DOC["components"]["schemas"]["Status"]["properties"]["witnesses"]
        chain = {"node_id": "ab" * 20, "seq": 3, "t": 1_700_000_000_000, "waiting": 1,
                 "flagged": EQUIVOCATION, "lag_ms": -2}  # fmt: skip
        block = {
            "n": 3, "f": 1, "digest": "cd" * 32, "me": None, "stamps": 9, "stamps_signed": 0,
            "relisted": 0,
            "settled_through_ms": 1_700_000_000_000, "final_through_ms": None,
            "settled_held_by": {"by": "receipt", "event": "12" * 32, "witness": "ab" * 20,
                                "t": 1_700_000_000_000},
            "settled_events": 4, "final_events": 0, "waiting_events": 1,
            "flagged": {"ef" * 32: BROKEN_CHAIN}, "witness_revisions": 0, "chains": [chain] * 3,
        }  # fmt: skip
        validate(schema, {})
        validate(schema, block)
        for bad in ({"n": 3}, {**block, "extra": 1}, {**block, "flagged": {"x": EQUIVOCATION}},
                    {**block, "chains": [{**chain, "flagged": "lazy"}]},
                    {**block, "settled_held_by": {"by": "weather"}}):  # fmt: skip
            self.assertRaises(ValidationError, validate, schema, bad)
        fault = DOC["components"]["schemas"]["WitnessFault"]["enum"]
        self.assertEqual(set(fault), {EQUIVOCATION, BROKEN_CHAIN})

    def test_served(self) -> None:
        stub: Any = StubTreq(site_root(FakeNode()))
        d = stub.get(f"{URL}/openapi.json")
        stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(json.loads(self.successResultOf(response.content())), DOC)


class RouteTests(SynchronousTestCase):
    """Every route the resources serve is in the document, and every documented route is served."""

    def setUp(self) -> None:
        self.root = site_root(FakeNode())
        self.stub: Any = StubTreq(self.root)

    def allowed(self, path: str) -> set[str]:
        """The methods C{path} answers, from the ``Allow`` header of a 405."""
        d = self.stub.request("PATCH", URL + path)
        self.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 405, path)
        body = json.loads(self.successResultOf(response.content()))
        validate(resolve({"$ref": "#/components/responses/MethodNotAllowed"})["content"]
                 ["application/json"]["schema"], body)  # fmt: skip
        [allow] = response.headers.getRawHeaders(b"allow")
        return set(allow.decode("ascii").split(", ")) - {"HEAD"}

    def test_routes_match_document(self) -> None:
        self.assertEqual(set(DOC["paths"]), set(ROUTES))
        for template in ROUTES:
            documented = {m.upper() for m in DOC["paths"][template] if m in METHODS}
            self.assertEqual(self.allowed(sample(template)), documented, template)

    def test_every_child_is_a_route(self) -> None:
        firsts = {route.split("/")[1] for route in ROUTES}
        children = {name.decode() for name in self.root.children} | {
            name.decode() for name in self.root.public
        }
        self.assertEqual(children, firsts - {""})

    def test_unknown_paths(self) -> None:
        schema = resolve({"$ref": "#/components/responses/NotFound"})["content"]
        for path in ("/nope", "/api/x", "/openapi.json/x", "/stream/x", "/discovery/x"):
            d = self.stub.get(URL + path)
            self.stub.flush()
            response = self.successResultOf(d)
            self.assertEqual(response.code, 404, path)
            body = json.loads(self.successResultOf(response.content()))
            validate(schema["application/json"]["schema"], body)


class _SSEClient(Protocol):
    """A raw HTTP client of ``GET /stream``: collects the bytes, fires when C{until} is in them."""

    def __init__(self, request: bytes, until: bytes) -> None:
        self.request = request
        self.until = until
        self.data = b""
        self.arrived: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.arrived.called and all(part in self.data for part in self.until.split(b"|")):
            self.arrived.callback(self.data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class RealNodeTests(ClusterTestCase):
    """Two real nodes on 127.0.0.1; every endpoint of one, answers checked against the document."""

    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.pool = HTTPConnectionPool(self.reactor, persistent=False)
        self.checked: set[tuple[str, str, int]] = set()

    async def call(
        self, method: str, template: str, path: str | None = None, *, body: object = None,
        token: str | None = TOKEN, expect: int = 200,
    ) -> Any:  # fmt: skip
        """Send a request to node a; check its status and answer against the document."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        url = f"http://127.0.0.1:{self.port}{path or sample(template)}"
        kwargs: dict[str, Any] = {"headers": headers, "pool": self.pool}
        if body is not None:
            kwargs["json"] = body
        response = await treq.request(method, url, **kwargs)
        content = await treq.content(response)
        self.assertEqual(response.code, expect, (method, url, content))
        [content_type] = response.headers.getRawHeaders(b"content-type")
        operation = DOC["paths"][template][method.lower()]
        if response.code < 400 and not content_type.startswith(b"application/json"):
            # Metrics and dashboard files: the media type must be documented.
            media = content_type.split(b";")[0].decode("ascii")
            documented_types = resolve(operation["responses"][str(response.code)])["content"]
            self.assertIn(media, documented_types, (method, template))
            self.checked.add((method, template, response.code))
            return content
        self.assertEqual(content_type, b"application/json; charset=utf-8")
        data = json.loads(content)
        self.assertIn(str(response.code), operation["responses"], (method, template))
        documented = resolve(operation["responses"][str(response.code)])
        validate(documented["content"]["application/json"]["schema"], data)
        headers_documented = {name.lower() for name in documented.get("headers", {})}
        for name in ("link", "x-total-count", "location", "allow", "www-authenticate"):
            if response.headers.hasHeader(name.encode()):
                self.assertIn(name, headers_documented, (method, template, name))
        self.checked.add((method, template, response.code))
        return data

    async def test_every_endpoint(self) -> None:
        a = self.cluster.start_node(plain_tcp=True, api_token=TOKEN, settle_after=0.5)
        b = self.cluster.start_node(bootstrap_to=[a], plain_tcp=True)
        assert a.api is not None
        self.port = a.api.listen_port
        await wait_for([a, b], lambda: len(a.peers.hub.links) == 1 == len(b.peers.hub.links),
                       HANG_GUARD, self.reactor, "a link")  # fmt: skip
        b_id = b.storage.identity.node_id

        # Index, document, status, discovery.
        for template in ("/", "/api", "/status", "/discovery"):
            await self.call("GET", template)
        await self.call("GET", "/openapi.json", token=None)
        for template in ("/status", "/", "/peers", "/orders"):
            await self.call("GET", template, token=None, expect=401)
        await self.call("GET", "/status", token="wrong-token-0123456789", expect=401)

        # Metrics (behind the token) and the dashboard's files (public).
        metrics = await self.call("GET", "/metrics")
        self.assertIn(b"bitfi_up 1.0", metrics)
        await self.call("GET", "/metrics", token=None, expect=401)
        for name in ("index.html", "app.js", "style.css"):
            await self.call("GET", "/static/{name}", f"/static/{name}", token=None)
        await self.call("GET", "/static/{name}", "/static/nope.txt", token=None, expect=404)

        # Orders: place, batch, read, cancel, and their errors.
        buy = await self.call("POST", "/orders", body={"side": "buy", "price": "100",
                                                       "amount": "1"}, expect=201)  # fmt: skip
        await self.call("POST", "/orders", body={"side": "buy", "price": 100, "amount": "1"},
                        expect=400)  # fmt: skip
        batch = await self.call(
            "POST", "/orders/batch", expect=201,
            body={"orders": [{"side": "buy", "price": "90", "amount": "1"},
                             {"side": "sell", "price": "200", "amount": "1", "type": "post_only"}]},
        )  # fmt: skip
        await self.call("POST", "/orders/batch", body={"orders": [{"side": "up"}]}, expect=400)
        await self.call("POST", "/orders/batch", body={"orders": [{"side": "buy", "price": "1.001",
                        "amount": "1"}]}, expect=400)  # fmt: skip
        await self.call("GET", "/orders/{order_id}", f"/orders/{buy['id']}")
        await self.call("GET", "/orders/{order_id}", expect=404)
        await self.call("GET", "/orders/{order_id}", "/orders/xyz", expect=400)
        await self.call("DELETE", "/orders/{order_id}", f"/orders/{batch['orders'][0]['id']}")
        await self.call("DELETE", "/orders/{order_id}", expect=404)
        await self.call("DELETE", "/orders/{order_id}", "/orders/xyz", expect=400)
        await self.call("GET", "/orders", "/orders?state=all&limit=1")
        await self.call("GET", "/orders", "/orders?state=nope", expect=400)

        # A trade with the other node's order, seen by both.
        sell = await b.control.submit_order("sell", "100", "0.25", "ioc")
        await poll_until(self.reactor, lambda: a.control.trade_count() == 1, HANG_GUARD,
                         "a trade")  # fmt: skip
        await self.call("DELETE", "/orders/{order_id}", f"/orders/{sell['id']}", expect=403)
        trades = await self.call("GET", "/trades", "/trades?limit=1&offset=0")
        self.assertEqual(len(trades["trades"]), 1)
        await self.call("GET", "/trades", "/trades?limit=0", expect=400)
        order = await self.call("GET", "/orders/{order_id}", f"/orders/{buy['id']}")
        self.assertEqual(order["filled"], "0.25")
        await self.call("GET", "/book")
        await self.call("GET", "/book", "/book?depth=x", expect=400)
        ticker = await self.call("GET", "/ticker")
        self.assertEqual(
            (ticker["last"], ticker["volume"], ticker["trades"], ticker["best_bid"]),
            ("100", "0.25", 1, "100"),
        )

        # Events a user's own key signed, and what the node holds of that key.
        user = Author(bytes(range(32)), a.config.network, a.config.pair)
        info = await self.call("GET", "/keys/{key}", f"/keys/{user.author}")
        self.assertEqual((info["next_seq"], info["events"]), (1, 0))
        ts = int(self.reactor.seconds() * 1000)
        own = user.order(1, info["lamport"], ts, "sell", "limit", "101", "0.5")
        taken = await self.call("POST", "/events", body={"text": own.text, "sig": own.sig},
                                expect=201)  # fmt: skip
        self.assertEqual((taken["id"], taken["status"], taken["order"]["author"]),
                         (own.id, "applied", user.author))  # fmt: skip
        tampered = own.text.replace(" 0.5", " 5")
        refused = await self.call("POST", "/events", body={"text": tampered, "sig": own.sig},
                                  expect=400)  # fmt: skip
        self.assertIn("bad_signature", refused["error"])
        cancel = user.cancel(2, info["lamport"] + 1, ts, own.id)
        batch_taken = await self.call(
            "POST", "/events/batch", body={"events": [{"text": cancel.text, "sig": cancel.sig}]},
            expect=201,
        )  # fmt: skip
        self.assertEqual(batch_taken["events"][0]["order"]["status"], "cancelled")
        await self.call("POST", "/events/batch", body={"events": []}, expect=400)
        orders = await self.call(
            "GET", "/keys/{key}/orders", f"/keys/{user.author}/orders?state=all"
        )
        self.assertEqual([o["id"] for o in orders["orders"]], [own.id])
        await self.call("GET", "/keys/{key}/trades", f"/keys/{user.author}/trades")
        await self.call("GET", "/keys/{key}", "/keys/xyz", expect=400)
        await self.call("GET", "/keys/{key}/orders", "/keys/xyz/orders", expect=400)
        await self.call("GET", "/keys/{key}/trades", f"/keys/{user.author}/trades?limit=0",
                        expect=400)  # fmt: skip

        # Peers and bans.
        rows = await self.call("GET", "/peers", "/peers?limit=1")
        self.assertEqual([r["node_id"] for r in rows], [b_id])
        await self.call("GET", "/peers", "/peers?offset=-1", expect=400)
        await self.call("GET", "/peers/{node_id}", f"/peers/{b_id}")
        await self.call("GET", "/peers/{node_id}", expect=404)
        await self.call("POST", "/peers", body={"address": "nope"}, expect=400)
        await self.call("POST", "/peers", body={"address": "127.0.0.1:1"}, expect=502)
        c = self.cluster.start_node(plain_tcp=True)
        row = await self.call(
            "POST", "/peers", body={"address": f"127.0.0.1:{c.peers.listen_port}"}
        )
        self.assertEqual(row["node_id"], c.storage.identity.node_id)
        a.peers.hub.ban("192.0.2.9", "test ban")
        await self.call("POST", "/peers", body={"address": "192.0.2.9:3000"}, expect=403)
        await self.call("GET", "/peers/banned")
        await self.call("GET", "/peers/banned", "/peers/banned?limit=1001", expect=400)
        await self.call("DELETE", "/peers/banned/{address}", "/peers/banned/192.0.2.9")
        await self.call("DELETE", "/peers/banned/{address}", "/peers/banned/192.0.2.9", expect=404)
        await self.call("DELETE", "/peers/banned/{address}", "/peers/banned/nope", expect=400)
        await self.call("GET", "/stream", "/stream?types=nope", expect=400)

        # The live stream over a real connection: with the token, then with a ticket.
        await self.check_stream(a, b"/stream?types=book,status", TOKEN)
        await self.call("POST", "/stream/ticket", token=None, expect=401)
        ticket = (await self.call("POST", "/stream/ticket", expect=201))["ticket"]
        await self.check_stream(a, f"/stream?types=book,status&ticket={ticket}".encode(), None)
        refused = await self.call("GET", "/stream", f"/stream?ticket={ticket}", token=None,
                                  expect=401)  # fmt: skip
        self.assertIn("ticket", refused["error"])

        await self.call("DELETE", "/peers/{node_id}", "/peers/xyz", expect=400)
        await self.call("DELETE", "/peers/{node_id}", f"/peers/{b_id}")

        documented = {
            (method.upper(), path, int(status))
            for path, item in DOC["paths"].items() for method in METHODS if method in item
            for status in item[method]["responses"]
        }  # fmt: skip
        missing = documented - self.checked - {("GET", "/stream", 200)}
        missing = {(m, path, s) for m, path, s in missing if not path.startswith("/markets")}
        # 503s, a 404 for an unknown peer to disconnect and a key's 429 are
        # checked with a fake node (tests.api.test_resources); the routes
        # under /markets by test_markets.
        self.assertLessEqual({s for _, _, s in missing}, {503, 404, 401, 429}, sorted(missing))

    async def test_markets(self) -> None:
        """
        A node of two markets: ``GET /markets``, and every route of one
        market under ``/markets/{market}``, which sees that market only;
        today's paths are the first market's.
        """
        eth = "ETH/USD"
        a = self.cluster.start_node(markets=(TEST_PAIR, eth), plain_tcp=True, api_token=TOKEN)
        assert a.api is not None
        self.port = a.api.listen_port
        m = "/markets/{market}"
        root = "/markets/ETH-USD"

        # Orders in ETH/USD land there, not in BTC/USD (today's paths).
        buy = await self.call("POST", m + "/orders", f"{root}/orders",
                              body={"side": "buy", "price": "100", "amount": "1"},
                              expect=201)  # fmt: skip
        await self.call("POST", m + "/orders", f"{root}/orders", body={"side": "up"},
                        expect=400)  # fmt: skip
        batch = await self.call(
            "POST", m + "/orders/batch", f"{root}/orders/batch", expect=201,
            body={"orders": [{"side": "buy", "price": "90", "amount": "1"},
                             {"side": "sell", "price": "200", "amount": "1", "type": "post_only"}]},
        )  # fmt: skip
        await self.call("POST", m + "/orders/batch", f"{root}/orders/batch",
                        body={"orders": []}, expect=400)  # fmt: skip

        # Events a user's own key signed for ETH/USD (one trades with the
        # node's buy); one of BTC/USD is refused there, and one of ETH/USD
        # on today's path.
        user = Author(bytes(range(32)), a.config.network, eth)
        info = await self.call("GET", m + "/keys/{key}", f"{root}/keys/{user.author}")
        self.assertEqual((info["pair"], info["next_seq"]), (eth, 1))
        await self.call("GET", m + "/keys/{key}", f"{root}/keys/xyz", expect=400)
        ts = int(self.reactor.seconds() * 1000)
        taker = user.order(1, info["lamport"], ts, "sell", "limit", "100", "0.25")
        await self.call("POST", m + "/events", f"{root}/events",
                        body={"text": taker.text, "sig": taker.sig}, expect=201)  # fmt: skip
        own = user.order(2, info["lamport"] + 1, ts, "sell", "limit", "150", "0.5")
        await self.call("POST", "/events", body={"text": own.text, "sig": own.sig}, expect=400)
        btc = Author(bytes(range(32)), a.config.network, TEST_PAIR).order(
            2, info["lamport"] + 1, ts, "sell", "limit", "150", "0.5"
        )
        await self.call("POST", m + "/events", f"{root}/events",
                        body={"text": btc.text, "sig": btc.sig}, expect=400)  # fmt: skip
        cancel = user.cancel(3, info["lamport"] + 2, ts, own.id)
        await self.call("POST", m + "/events/batch", f"{root}/events/batch",
                        body={"events": [{"text": own.text, "sig": own.sig},
                                         {"text": cancel.text, "sig": cancel.sig}]},
                        expect=201)  # fmt: skip
        await self.call("POST", m + "/events/batch", f"{root}/events/batch",
                        body={"events": []}, expect=400)  # fmt: skip
        orders = await self.call("GET", m + "/keys/{key}/orders",
                                 f"{root}/keys/{user.author}/orders?state=all")  # fmt: skip
        self.assertEqual([o["id"] for o in orders["orders"]], [own.id, taker.id])
        await self.call("GET", m + "/keys/{key}/orders", f"{root}/keys/xyz/orders", expect=400)
        key_trades = await self.call("GET", m + "/keys/{key}/trades",
                                     f"{root}/keys/{user.author}/trades")  # fmt: skip
        self.assertEqual(len(key_trades["trades"]), 1)
        await self.call("GET", m + "/keys/{key}/trades", f"{root}/keys/xyz/trades", expect=400)

        self.assertEqual(a.markets[eth].ledger.trade_count, 1)
        self.assertEqual(len(a.markets[TEST_PAIR].ledger), 0)
        self.assertEqual(await self.call("GET", "/book"), {"bids": [], "asks": []})
        self.assertEqual((await self.call("GET", "/orders", "/orders?state=all"))["orders"], [])
        book = await self.call("GET", m + "/book", f"{root}/book?depth=5")
        self.assertEqual(book["bids"], [["100", "0.75", 1], ["90", "1", 1]])
        await self.call("GET", m + "/book", f"{root}/book?depth=x", expect=400)
        order = await self.call("GET", m + "/orders/{order_id}", f"{root}/orders/{buy['id']}")
        self.assertEqual(order["filled"], "0.25")
        await self.call("GET", m + "/orders/{order_id}", f"{root}/orders/{'cd' * 32}", expect=404)
        await self.call("GET", m + "/orders/{order_id}", f"{root}/orders/xyz", expect=400)
        await self.call("GET", "/orders/{order_id}", f"/orders/{buy['id']}", expect=404)
        await self.call("DELETE", m + "/orders/{order_id}",
                        f"{root}/orders/{batch['orders'][0]['id']}")  # fmt: skip
        await self.call("DELETE", m + "/orders/{order_id}", f"{root}/orders/{'cd' * 32}",
                        expect=404)  # fmt: skip
        await self.call("DELETE", m + "/orders/{order_id}", f"{root}/orders/xyz", expect=400)
        mine = await self.call("GET", m + "/orders", f"{root}/orders?state=all")
        self.assertEqual(len(mine["orders"]), 3)
        await self.call("GET", m + "/orders", f"{root}/orders?state=nope", expect=400)
        trades = await self.call("GET", m + "/trades", f"{root}/trades")
        self.assertEqual(len(trades["trades"]), 1)
        await self.call("GET", m + "/trades", f"{root}/trades?limit=0", expect=400)
        self.assertEqual((await self.call("GET", "/trades"))["trades"], [])
        ticker = await self.call("GET", m + "/ticker", f"{root}/ticker")
        self.assertEqual((ticker["pair"], ticker["last"]), (eth, "100"))
        self.assertEqual((await self.call("GET", "/ticker"))["pair"], TEST_PAIR)

        # The markets, with their state; slug forms; a market not carried, a bad one.
        rows = await self.call("GET", "/markets")
        self.assertEqual([(r["market"], r["slug"]) for r in rows],
                         [(TEST_PAIR, "BTC-USD"), (eth, "ETH-USD")])  # fmt: skip
        self.assertEqual(rows[1]["state_hash"], a.markets[eth].ledger.state_hash())
        self.assertEqual(rows[0]["state_hash"], a.markets[TEST_PAIR].ledger.state_hash())
        self.assertEqual((rows[1]["trades"], rows[1]["last"], rows[0]["events"]), (1, "100", 0))
        for form in ("eth-usd", "ETH%2FUSD", "Eth-Usd"):
            same = await self.call("GET", m + "/ticker", f"/markets/{form}/ticker")
            self.assertEqual(same["pair"], eth)
        await self.call("GET", "/markets", token=None, expect=401)
        status = await self.call("GET", "/status")
        self.assertEqual((status["pair"], status["markets"], status["stored_markets"]),
                         (TEST_PAIR, [TEST_PAIR, eth], [TEST_PAIR, eth]))  # fmt: skip

        # One market's live stream, with a ticket: that market's book and status.
        ticket = (await self.call("POST", "/stream/ticket", expect=201))["ticket"]
        read = await self.check_stream(
            a, f"/markets/ETH-USD/stream?types=book,status&ticket={ticket}".encode(), None, eth
        )
        status = dict(read)["status"]
        self.assertEqual((status["market"], status["state_hash"]), (eth, rows[1]["state_hash"]))
        self.assertEqual(dict(read)["book"], a.control.market(eth).book(20))
        self.checked.add(("GET", m + "/stream", 200))
        await self.call("GET", m + "/stream", f"{root}/stream?types=nope", expect=400)
        for template in ROUTES:
            if template.startswith(m):
                for method in DOC["paths"][template]:
                    if method in METHODS:
                        path = sample(template)
                        unknown = await self.call(method.upper(), template,
                                                  path.replace("btc-usd", "DOGE-USD"),
                                                  expect=404)  # fmt: skip
                        self.assertEqual(unknown["error"], "unknown market DOGE/USD; this node "
                                         "carries BTC/USD, ETH/USD")  # fmt: skip
                        bad = await self.call(
                            method.upper(), template, path.replace("btc-usd", "nope"), expect=400
                        )
                        self.assertIn("invalid market", bad["error"])
                        await self.call(method.upper(), template, token=None, expect=401)

        documented = {
            (method.upper(), path, int(status))
            for path, item in DOC["paths"].items() for method in METHODS if method in item
            for status in item[method]["responses"]
            if path.startswith("/markets")
        }  # fmt: skip
        missing = documented - self.checked
        # 503s and a key's 429 are checked on today's paths (test_every_endpoint)
        # and with a fake node; so is the 403 of a peer's order.
        self.assertLessEqual({s for _, _, s in missing}, {503, 429, 403}, sorted(missing))

    async def test_fair_order(self) -> None:
        """
        A node of a network with one witness: its status (with the
        ``witnesses`` block), trades (final) and orders (pending, then
        filled) match the document, as do the witness's own.
        """
        [address] = self.cluster.witness_addresses(1)
        witness = self.cluster.start_node(port=address.port, witnesses=(address,),
                                          plain_tcp=True, api_token=TOKEN)  # fmt: skip
        plain = self.cluster.start_node(witnesses=(address,), plain_tcp=True, api_token=TOKEN)
        await poll_until(self.reactor, lambda: address.node_id in plain.peers.hub.links,
                         HANG_GUARD, "the link to the witness")  # fmt: skip
        await witness.control.submit_order("sell", "100", "1", "limit")
        await poll_until(self.reactor, lambda: len(plain.market.ledger) == 1, HANG_GUARD,
                         "the sell at the plain node")  # fmt: skip
        for node in (witness, plain):
            assert node.api is not None
            self.port = node.api.listen_port
            status = await self.call("GET", "/status")
            self.assertEqual(status["ordering"], "fair")
            self.assertEqual(status["witnesses"]["n"], 1)
        buy = await self.call("POST", "/orders", body={"side": "buy", "price": "100",
                                                       "amount": "0.5"}, expect=201)  # fmt: skip
        self.assertIn(buy["status"], ("pending", "filled"))

        def final() -> bool:
            trades = plain.control.trades(1, 0)
            return bool(trades) and trades[0]["status"] == "final"

        await poll_until(self.reactor, final, HANG_GUARD, "the trade final")
        [trade] = (await self.call("GET", "/trades"))["trades"]
        self.assertEqual(trade["status"], "final")
        self.assertIsInstance(trade["fair_time"], int)
        order = await self.call("GET", "/orders/{order_id}", f"/orders/{buy['id']}")
        self.assertEqual((order["status"], order["trades"][0]["status"]), ("filled", "final"))
        status = await self.call("GET", "/status")
        block = status["witnesses"]
        self.assertEqual((block["final_events"], block["me"], block["flagged"]), (2, None, {}))
        [chain] = block["chains"]
        self.assertEqual(chain["node_id"], address.node_id)

    async def check_stream(
        self, a: Node, target: bytes, token: str | None, market: str | None = None
    ) -> list[tuple[str, Any]]:
        """
        ``GET`` C{target} (a stream of C{market}, the first if ``None``) over
        a raw connection: headers, first events, cleanup.

        :return: the events read, ``(type, data)`` each.
        """
        request = b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if token is not None:
            request += b"Authorization: Bearer " + token.encode() + b"\r\n"
        request += b"\r\n"
        client = _SSEClient(request, b"event: book|event: status")
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port)
        await endpoint.connect(Factory.forProtocol(lambda: client))
        data = await client.arrived
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"))
        self.assertIn(b"content-type: text/event-stream", head.lower())
        events = DOC["paths"]["/stream"]["get"]["x-sse-events"]
        read: list[tuple[str, Any]] = []
        for line in body.split(b"\n"):
            if line.startswith(b"event: "):
                kind = line[len(b"event: ") :].decode()
            elif line.startswith(b"data: "):
                data = json.loads(line[len(b"data: ") :])
                validate(events[kind], data)
                read.append((kind, data))
        assert a.api is not None and a.api.root is not None
        streams = a.api.root.streams
        feed = streams.first if market is None else streams.feed(market)
        self.assertEqual(len(feed.clients), 1)
        assert client.transport is not None
        client.transport.loseConnection()
        await client.lost
        await poll_until(self.reactor, lambda: not feed.clients, HANG_GUARD, "stream cleanup")
        return read
