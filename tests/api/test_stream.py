"""Tests for :mod:`bitfitech.api.stream`: the live stream, over a fake node and a real market."""

from __future__ import annotations

import json
from typing import Any, cast

from treq.testing import StubTreq
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyRequest

from bitfitech.api.control import NodeControl
from bitfitech.api.resources import api_root
from bitfitech.api.stream import (
    BOOK_DEPTH,
    MAX_TICKETS,
    STATUS_INTERVAL,
    STREAM_TYPES,
    TICKET_LIFETIME,
    Stream,
    StreamFeed,
    StreamTickets,
    sse_event,
)
from bitfitech.market.book import ALLOW, BookParams
from bitfitech.market.service import MarketService
from bitfitech.storage import Storage
from bitfitech.testing import loopback_config
from tests.api.test_resources import BOOK, NODE_A, NODE_B, ROW_A, URL, FakeNode

STATUS_DOC = {"node_id": NODE_B, "pair": "BTC/USD", "events": 4, "state_hash": "e" * 64,
              "peers": {}}  # fmt: skip


class StreamRequest(DummyRequest):
    """A request that records its streaming producer (DummyRequest drives only pull producers)."""

    def __init__(self, query: bytes = b"") -> None:
        super().__init__([b"stream"])
        self.method = b"GET"
        self.producer: Any = None
        for pair in query.split(b"&") if query else ():
            name, _, value = pair.partition(b"=")
            self.args.setdefault(name, []).append(value)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def events(self) -> list[tuple[str, Any]]:
        """The events written so far, as ``(type, data)``."""
        out = []
        for block in b"".join(self.written).decode("utf-8").split("\n\n"):
            lines = [line for line in block.split("\n") if line and not line.startswith(":")]
            if lines:
                kind = lines[0].removeprefix("event: ")
                data = lines[1].removeprefix("data: ")
                assert len(lines) == 2, lines
                out.append((kind, json.loads(data)))
        return out

    def lose(self) -> None:
        """The client goes away."""
        self.processingFailed(Failure(ConnectionDone()))


def parse_events(data: bytes) -> list[tuple[str, Any]]:
    """The ``(type, data)`` of each event of a stream's bytes."""
    request = StreamRequest()
    request.written = [data]
    return request.events()


class FeedTests(SynchronousTestCase):
    """The feed over a fake node and a fake clock."""

    def setUp(self) -> None:
        self.node = FakeNode()
        self.node.status_doc = STATUS_DOC
        self.clock = Clock()
        self.feed = StreamFeed(self.node, self.clock, max_clients=3, max_backlog=4)
        self.stream = Stream(self.feed, StreamTickets(self.feed))

    def connect(self, query: bytes = b"") -> StreamRequest:
        request = StreamRequest(query)
        self.assertEqual(self.stream.render(cast(Request, request)), NOT_DONE_YET)
        self.assertEqual(request.responseCode, 200)
        return request

    def test_connect(self) -> None:
        request = self.connect()
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"),
            [b"text/event-stream; charset=utf-8"],
        )
        status = {"node_id": NODE_B, "market": "BTC/USD", "peers": 1, "events": 4,
                  "state_hash": "e" * 64}  # fmt: skip
        self.assertEqual(request.events(), [("book", BOOK), ("status", status)])
        self.assertEqual(self.node.queries, [("book", BOOK_DEPTH)])
        self.assertEqual(len(self.node.watchers), 1)

    def test_events_are_one_line(self) -> None:
        event = sse_event("order", {"reason": "a\nb", "x": [1, 2]})
        self.assertEqual(event, b'event: order\ndata: {"reason":"a\\nb","x":[1,2]}\n\n')

    def test_changes(self) -> None:
        request = self.connect()
        [watch] = self.node.watchers
        trade = {"id": "c" * 64, "status": "tentative"}
        peer = {"event": "joined", "node_id": NODE_A, "address": "127.0.0.1:3001",
                "direction": "outbound"}  # fmt: skip
        watch("trade", trade)
        watch("order", {"id": "a" * 64})
        watch("peer", peer)
        self.assertEqual(
            request.events()[2:],
            [("trade", trade), ("order", {"id": "a" * 64}), ("peer", peer)],
        )

    def test_book_coalesced(self) -> None:
        request = self.connect(b"types=book")
        [watch] = self.node.watchers
        self.node.queries.clear()
        for _ in range(5):
            watch("book", None)
        self.clock.advance(0)
        self.assertEqual(self.node.queries, [("book", BOOK_DEPTH)])
        for _ in range(5):
            watch("book", None)
        self.clock.advance(0.05)
        self.assertEqual(len(self.node.queries), 1)  # at most 10 a second
        self.clock.advance(0.05)
        self.assertEqual(len(self.node.queries), 2)
        self.assertEqual([kind for kind, _ in request.events()], ["book"] * 3)
        self.clock.advance(10)
        self.assertEqual(len(self.node.queries), 2)  # no change, no book

    def test_status_keepalive(self) -> None:
        request = self.connect(b"types=status")
        self.clock.advance(STATUS_INTERVAL)
        self.clock.advance(STATUS_INTERVAL)
        self.assertEqual([kind for kind, _ in request.events()], ["status"] * 3)

    def test_types(self) -> None:
        request = self.connect(b"types=trade,peer")
        self.assertEqual(request.events(), [])
        self.assertEqual(b"".join(request.written), b": bitfi live stream\n\n")
        [watch] = self.node.watchers
        watch("book", None)
        watch("order", {"id": "a" * 64})
        watch("trade", {"id": "t"})
        self.clock.advance(STATUS_INTERVAL)
        self.assertEqual(request.events(), [("trade", {"id": "t"})])
        self.assertEqual(self.node.queries, [])

    def test_bad_types(self) -> None:
        for query in (b"types=books", b"types=", b"types=book,,trade", b"types=book&types=trade"):
            request = StreamRequest(query)
            body = self.stream.render(cast(Request, request))
            assert isinstance(body, bytes)
            self.assertEqual(request.responseCode, 400, query)
            self.assertIn("types", json.loads(body)["error"])
        self.assertEqual(self.feed.clients, set())

    def test_every_type_by_default(self) -> None:
        self.connect()
        [client] = self.feed.clients
        self.assertEqual(client.types, frozenset(STREAM_TYPES))

    def test_client_limit(self) -> None:
        for _ in range(3):
            self.connect()
        request = StreamRequest()
        body = self.stream.render(cast(Request, request))
        assert isinstance(body, bytes)
        self.assertEqual(request.responseCode, 503)
        self.assertIn("too many stream clients", json.loads(body)["error"])
        self.assertEqual(len(self.feed.clients), 3)

    def test_disconnect_cleanup(self) -> None:
        first, second = self.connect(), self.connect()
        first.lose()
        self.assertEqual(len(self.feed.clients), 1)
        self.assertEqual(len(self.node.watchers), 1)
        second.lose()
        self.assertEqual(self.feed.clients, set())
        self.assertEqual(self.node.watchers, [])  # nobody listens: nothing is watched
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # A new client starts watching again.
        self.connect()
        self.assertEqual(len(self.node.watchers), 1)

    def test_slow_client_dropped(self) -> None:
        slow, fast = self.connect(b"types=trade"), self.connect(b"types=trade")
        slow.producer.pauseProducing()
        [watch] = self.node.watchers
        for n in range(4):
            watch("trade", {"n": n})
        self.assertEqual(len(slow.events()), 0)
        slow.producer.resumeProducing()
        self.assertEqual([data["n"] for _, data in slow.events()], [0, 1, 2, 3])
        slow.producer.pauseProducing()
        for n in range(5):
            watch("trade", {"n": n})
        self.assertNotIn(slow, [c.request for c in self.feed.clients])
        self.assertEqual(slow.finished, 1)  # no transport here: finished instead of aborted
        self.assertEqual(self.feed.dropped, 1)
        self.assertEqual(len(fast.events()), 9)

    def test_close_all(self) -> None:
        requests = [self.connect(), self.connect()]
        self.feed.close_all()
        self.assertEqual([r.finished for r in requests], [1, 1])
        self.assertEqual(self.feed.clients, set())
        self.assertEqual(self.node.watchers, [])

    def test_head(self) -> None:
        request = StreamRequest()
        request.method = b"HEAD"
        self.assertEqual(self.stream.render(cast(Request, request)), b"")
        self.assertEqual(self.feed.clients, set())


class TicketTests(SynchronousTestCase):
    """:class:`StreamTickets`: single use, short-lived, bounded."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.tickets = StreamTickets(StreamFeed(FakeNode(), self.clock))

    def test_single_use(self) -> None:
        ticket = self.tickets.issue()["ticket"]
        self.assertFalse(self.tickets.redeem(ticket + "x"))
        self.assertTrue(self.tickets.redeem(ticket))
        self.assertFalse(self.tickets.redeem(ticket))

    def test_lifetime(self) -> None:
        ticket = self.tickets.issue()["ticket"]
        self.clock.advance(TICKET_LIFETIME)
        self.assertFalse(self.tickets.redeem(ticket))

    def test_bounded(self) -> None:
        """Past :data:`MAX_TICKETS` waiting, the oldest is dropped."""
        first = self.tickets.issue()["ticket"]
        issued = [self.tickets.issue()["ticket"] for _ in range(MAX_TICKETS)]
        self.assertEqual(len(set(issued)), MAX_TICKETS)
        self.assertFalse(self.tickets.redeem(first))
        self.assertTrue(all(self.tickets.redeem(ticket) for ticket in issued))


class StubTreqTests(SynchronousTestCase):
    """``GET /stream`` through the whole resource tree and an HTTP connection in memory."""

    def test_stream(self) -> None:
        node = FakeNode()
        node.status_doc = STATUS_DOC
        node.rows = [ROW_A]
        root = api_root(node, clock=Clock())
        stub: Any = StubTreq(root)
        received: list[bytes] = []
        d = stub.get(f"{URL}/stream?types=book,peer", unbuffered=True)
        stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"]
        )
        from treq import collect

        collect(response, received.append)
        [watch] = node.watchers
        watch("peer", {"event": "left", "node_id": NODE_A, "address": None,
                       "direction": "inbound"})  # fmt: skip
        stub.flush()
        kinds = [kind for kind, _ in parse_events(b"".join(received))]
        self.assertEqual(kinds, ["book", "peer"])
        root.streams.close_all()
        stub.flush()


class MarketFeedTests(SynchronousTestCase):
    """``GET /markets/{market}/stream``: one market's changes, the node's links, a shared cap."""

    def setUp(self) -> None:
        self.node = FakeNode()
        self.node.status_doc = STATUS_DOC
        self.eth = FakeNode()
        self.eth.book_doc = {"bids": [["5", "1", 1]], "asks": []}
        self.node.carried["ETH/USD"] = self.eth
        self.root = api_root(self.node, clock=Clock())
        self.stub: Any = StubTreq(self.root)
        self.addCleanup(self.root.streams.close_all)

    def open(self, path: str) -> tuple[int, list[bytes]]:
        received: list[bytes] = []
        d = self.stub.get(f"{URL}{path}", unbuffered=True)
        self.stub.flush()
        response = self.successResultOf(d)
        if response.code == 200:
            from treq import collect

            collect(response, received.append)
        else:
            received.append(self.successResultOf(response.content()))
        return response.code, received

    def test_one_market(self) -> None:
        code, received = self.open("/markets/eth-usd/stream")
        self.assertEqual(code, 200)
        status = {"node_id": NODE_B, "market": "ETH/USD", "peers": 1, "events": 0,
                  "state_hash": "0" * 64}  # fmt: skip
        self.assertEqual(parse_events(b"".join(received)),
                         [("book", self.eth.book_doc), ("status", status)])  # fmt: skip
        # It watches ETH/USD and the links, never the first market.
        self.assertEqual((len(self.eth.watchers), self.node.watchers), (1, []))
        [links] = self.node.link_watchers
        [watch] = self.eth.watchers
        del received[:]
        watch("trade", {"n": 1})
        links("peer", {"event": "joined", "node_id": NODE_A, "address": None,
                       "direction": "outbound"})  # fmt: skip
        self.stub.flush()
        self.assertEqual([k for k, _ in parse_events(b"".join(received))], ["trade", "peer"])
        self.assertEqual(self.eth.queries, [("book", BOOK_DEPTH)])
        self.root.streams.close_all()
        self.stub.flush()
        self.assertEqual((self.eth.watchers, self.node.link_watchers), ([], []))

    def test_unknown_market(self) -> None:
        code, received = self.open("/markets/XRP-USD/stream")
        self.assertEqual(code, 404)
        self.assertIn("this node carries BTC/USD, ETH/USD", json.loads(received[0])["error"])

    def test_one_cap_for_every_market(self) -> None:
        """MAX_CLIENTS counts the clients of every market's stream."""
        streams = self.root.streams
        streams.max_clients = streams.first.max_clients = 2
        self.assertEqual(self.open("/stream")[0], 200)
        self.assertEqual(self.open("/markets/ETH-USD/stream")[0], 200)
        self.assertIs(streams.feed("ETH/USD"), streams.by_market["ETH/USD"])
        streams.by_market["ETH/USD"].max_clients = 2
        code, received = self.open("/markets/ETH-USD/stream")
        self.assertEqual(code, 503)
        self.assertIn("too many stream clients", json.loads(received[0])["error"])
        self.assertEqual(streams.listening(), 2)


class MarketStreamTests(SynchronousTestCase):
    """Events from a real market, ledger and journal, through NodeControl."""

    def setUp(self) -> None:
        data_dir = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.storage = Storage(data_dir)
        self.storage.open()
        self.addCleanup(self.storage.close)
        config = loopback_config(data_dir, settle_after=1.0)
        params = BookParams(self_trade=ALLOW)
        self.market = MarketService(config, self.storage, self.clock, params)
        self.market.startService()
        self.addCleanup(self.stop_market)
        self.control = _Control(config, self.clock, self.storage, [self.market])
        self.feed = StreamFeed(self.control, self.clock)
        self.stream = Stream(self.feed, StreamTickets(self.feed))

    def stop_market(self) -> None:
        self.feed.close_all()
        if self.market.running:
            self.market.stopService()

    def commit(self) -> None:
        for _ in range(5):
            self.clock.advance(0)

    def test_order_and_trade(self) -> None:
        request = StreamRequest()
        self.stream.render(cast(Request, request))
        buy = self.control.submit_order("buy", "100.5", "1", "limit")
        self.commit()
        buy_id = self.successResultOf(buy)["id"]
        self.clock.advance(0.1)
        events = request.events()
        self.assertEqual([kind for kind, _ in events][:2], ["book", "status"])
        orders = [data for kind, data in events if kind == "order"]
        self.assertEqual([(o["id"], o["status"]) for o in orders], [(buy_id, "open")])
        books = [data for kind, data in events if kind == "book"]
        self.assertEqual(books[-1]["bids"], [["100.5", "1", 1]])

        del request.written[:]
        sell = self.control.submit_order("sell", "100.5", "0.25", "ioc")
        self.commit()
        sell_id = self.successResultOf(sell)["id"]
        self.clock.advance(0.1)
        events = request.events()
        [(_, trade)] = [(k, d) for k, d in events if k == "trade"]
        self.assertEqual(
            (trade["price"], trade["amount"], trade["side"]), ("100.5", "0.25", "sell")
        )
        self.assertEqual((trade["status"], trade["settled"]), ("tentative", False))
        by_id = {data["id"]: data for kind, data in events if kind == "order"}
        self.assertEqual(by_id[buy_id]["filled"], "0.25")
        self.assertEqual(by_id[sell_id]["status"], "filled")
        self.assertEqual([d["bids"] for k, d in events if k == "book"], [[["100.5", "0.75", 1]]])

        # Settled: the trade and both orders again.
        del request.written[:]
        self.clock.advance(2.0)
        events = request.events()
        [(_, settled)] = [(k, d) for k, d in events if k == "trade"]
        self.assertEqual((settled["id"], settled["status"]), (trade["id"], "settled"))
        settled_orders = {d["id"] for k, d in events if k == "order" and d["settled"]}
        self.assertEqual(settled_orders, {buy_id, sell_id})
        # Once settled, nothing more is said.
        del request.written[:]
        self.clock.advance(5.0)
        self.assertEqual([k for k, _ in request.events() if k != "status"], [])

    def test_cancel(self) -> None:
        buy = self.control.submit_order("buy", "99", "1", "limit")
        self.commit()
        buy_id = self.successResultOf(buy)["id"]
        request = StreamRequest(b"types=order")
        self.stream.render(cast(Request, request))
        self.control.cancel_order(buy_id)
        self.commit()
        self.assertEqual(
            [(d["id"], d["status"]) for _, d in request.events()], [(buy_id, "cancelled")]
        )

    def test_no_observer_when_nobody_listens(self) -> None:
        request = StreamRequest()
        self.stream.render(cast(Request, request))
        self.assertEqual(len(self.market._observers), 1)
        request.lose()
        self.assertEqual(self.market._observers, [])

    def test_old_trades_are_not_news(self) -> None:
        self.control.submit_order("buy", "100", "1", "limit")
        self.commit()
        self.control.submit_order("sell", "100", "1", "limit")
        self.commit()
        request = StreamRequest(b"types=trade")
        self.stream.render(cast(Request, request))
        self.control.submit_order("buy", "90", "1", "limit")
        self.commit()
        self.assertEqual(request.events(), [])


class _Control(NodeControl):
    """NodeControl without a peer layer: no links, and the market's part of the status."""

    def status(self) -> dict[str, Any]:
        return {"node_id": NODE_B, **self.first.market.status()}

    def peers(self) -> list[dict[str, Any]]:
        return []
