"""Tests for :class:`bitfitech.api.control.NodeControl` over a real market, journal and clock."""

from __future__ import annotations

import json
import random
from typing import Any, cast

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.address import PeerAddress
from bitfitech.api.control import MarketControl, NodeControl
from bitfitech.api.resources import api_root
from bitfitech.config import GossipTiming
from bitfitech.interfaces import BatchRejected, KeyRateLimited, ServiceUnavailable
from bitfitech.market.book import ALLOW, BookParams
from bitfitech.market.events import Author
from bitfitech.market.service import MarketService
from bitfitech.peer.addrbook import AddressBook
from bitfitech.peer.dialer import Dialer
from bitfitech.peer.hub import PeerHub
from bitfitech.peer.protocol import PeerProtocol
from bitfitech.peer.service import PeerService
from bitfitech.storage import Storage
from bitfitech.testing import local_node, loopback_config, node_id_of

BUY = ("buy", "100.5", "1", "limit")
SELL = ("sell", "101", "2", "limit")
MARKET_SELL = ("sell", None, "0.5", "market")


class MarketControlCase(SynchronousTestCase):
    """A :class:`NodeControl` over a real market and journal, on a fake clock."""

    params: BookParams | None = None
    changes: dict[str, Any] = {}

    def setUp(self) -> None:
        data_dir = self.mktemp()
        self.clock = Clock()
        self.storage = Storage(data_dir)
        self.storage.open()
        self.addCleanup(self.storage.close)
        config = loopback_config(data_dir, **self.changes)
        self.market = MarketService(config, self.storage, self.clock, self.params)
        self.market.startService()
        self.addCleanup(self.stop_market)
        self.control = NodeControl(config, self.clock, self.storage, [self.market])

    def stop_market(self) -> None:
        if self.market.running:
            self.market.stopService()

    def committed(self, d: Deferred[Any]) -> Any:
        """Let the group commit run and return C{d}'s result."""
        for _ in range(5):
            self.clock.advance(0)
        return self.successResultOf(d)


class SubmitOrdersTests(MarketControlCase):
    """``NodeControl.submit_orders``: all or none, signed in order, one group commit."""

    def test_batch(self) -> None:
        documents = self.committed(self.control.submit_orders([BUY, SELL, MARKET_SELL]))
        self.assertEqual(
            [(doc["side"], doc["price"], doc["amount"], doc["type"]) for doc in documents],
            [BUY, SELL, MARKET_SELL],
        )
        self.assertEqual([doc["seq"] for doc in documents], [1, 2, 3])
        self.assertEqual(len({doc["id"] for doc in documents}), 3)
        author = self.market.author.author
        self.assertEqual({doc["author"] for doc in documents}, {author})
        self.assertEqual(self.control.orders("all", 10), documents[::-1])
        for document in documents:
            self.assertEqual(self.control.order(document["id"]), document)

    def test_signed_in_call_order(self) -> None:
        single = self.control.submit_order(*BUY)
        batch = self.control.submit_orders([SELL, SELL])
        self.assertNoResult(single)
        self.assertNoResult(batch)
        self.clock.advance(0)
        self.assertEqual(self.committed(single)["seq"], 1)
        self.assertEqual([doc["seq"] for doc in self.committed(batch)], [2, 3])

    def test_same_documents_as_single_orders(self) -> None:
        [batched] = self.committed(self.control.submit_orders([SELL]))
        single = self.committed(self.control.submit_order(*SELL))
        differ = {"id", "seq", "lamport", "created_at", "applied_at"}
        self.assertEqual(
            {key: value for key, value in batched.items() if key not in differ},
            {key: value for key, value in single.items() if key not in differ},
        )

    def test_invalid_order_places_nothing(self) -> None:
        with self.assertRaises(BatchRejected) as caught:
            self.control.submit_orders([BUY, SELL, ("buy", "100.555", "1", "limit"), BUY])
        self.assertEqual(caught.exception.index, 2)
        self.assertTrue(str(caught.exception).startswith("orders[2]: price_not_tick_multiple:"))
        self.assertIsInstance(caught.exception, ValueError)
        self.clock.advance(0)
        self.assertEqual(self.control.orders("all", 10), [])
        # Nothing was signed: the next order takes the first seq.
        self.assertEqual(self.committed(self.control.submit_order(*BUY))["seq"], 1)

    def test_empty(self) -> None:
        self.assertEqual(self.committed(self.control.submit_orders([])), [])

    def test_not_running(self) -> None:
        self.market.stopService()
        self.assertRaises(ServiceUnavailable, self.control.submit_orders, [BUY])

    def test_journal_failure(self) -> None:
        self.storage.connection.execute(
            "CREATE TEMP TRIGGER refuse BEFORE INSERT ON events "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        d = self.control.submit_orders([BUY, SELL])
        for _ in range(5):
            self.clock.advance(0)
        failure = self.failureResultOf(d, ServiceUnavailable)
        self.assertIn("disk full", failure.getErrorMessage())
        self.flushLoggedErrors()


class KeyRateTests(MarketControlCase):
    """A key's events through the API are limited at the rate peers relay an author's."""

    changes = {"gossip": GossipTiming(author_rate=1.0, author_burst=2.0)}

    def signed(self, author: Author, seq: int) -> tuple[str, str]:
        event = author.order(seq, 1000 + seq, 5, "buy", "limit", "100", "1")
        return event.text, event.sig

    def test_over_the_rate(self) -> None:
        config = self.control.config
        user = Author(bytes([7]) * 32, config.network, config.pair)
        other = Author(bytes([8]) * 32, config.network, config.pair)
        with self.assertRaises(KeyRateLimited) as caught:
            self.control.submit_events([self.signed(user, seq) for seq in (1, 2, 3)])
        self.assertAlmostEqual(caught.exception.retry_after, 1.0)
        self.assertIn("rate_limited", str(caught.exception))
        # Nothing was counted: the burst is still there.
        self.committed(self.control.submit_events([self.signed(user, seq) for seq in (1, 2)]))
        with self.assertRaises(KeyRateLimited):
            self.control.submit_events([self.signed(user, 3)])
        # Another key is not limited by this one.
        self.committed(self.control.submit_events([self.signed(other, 1)]))
        self.clock.advance(1.0)
        self.committed(self.control.submit_events([self.signed(user, 3)]))


class TimeConventionTests(MarketControlCase):
    """Every time the API states is integer unix ms; durations are ms under ``_ms`` names."""

    params = BookParams(self_trade=ALLOW)
    changes = {"settle_after": 2.5}

    def test_order_and_status_times(self) -> None:
        self.clock.advance(1_700_000_000.25)
        [document] = self.committed(self.control.submit_orders([BUY]))
        self.assertEqual(document["applied_at"], 1_700_000_000_250)
        self.assertIsInstance(document["created_at"], int)
        status = self.market.status()
        self.assertIsNone(status["settled_through_ms"])
        self.clock.advance(self.market.config.settle_after + 1)
        status = self.market.status()
        self.assertEqual(status["settled_through_ms"], status["settled_through"])
        self.assertGreaterEqual(status["settled_through_ms"], document["created_at"])
        self.assertEqual(status["market"]["settle_after_ms"], 2500)

    def test_ticker(self) -> None:
        self.clock.advance(1_700_000_000)
        self.committed(self.control.submit_orders([BUY, ("sell", "100.5", "0.25", "ioc")]))
        ticker = self.control.ticker()
        self.assertEqual(
            (ticker["pair"], ticker["last"], ticker["volume"], ticker["best_bid"], ticker["at"]),
            ("BTC/USD", "100.5", "0.25", "100.5", 1_700_000_000_000),
        )


class TwoMarketsTests(SynchronousTestCase):
    """A :class:`NodeControl` over two real markets: the first serves today's methods."""

    def setUp(self) -> None:
        data_dir = self.mktemp()
        self.clock = Clock()
        self.storage = Storage(data_dir)
        self.storage.open()
        self.addCleanup(self.storage.close)
        config = loopback_config(data_dir, markets=("BTC/USD", "ETH/USD"))
        self.btc, self.eth = (MarketService(config, self.storage, self.clock, market=pair)
                              for pair in config.markets)  # fmt: skip
        for market in (self.btc, self.eth):
            market.startService()
            self.addCleanup(market.stopService)
        self.control = NodeControl(config, self.clock, self.storage, [self.btc, self.eth])

    def committed(self, d: Deferred[Any]) -> Any:
        for _ in range(5):
            self.clock.advance(0)
        return self.successResultOf(d)

    def test_market(self) -> None:
        eth = self.control.market("ETH/USD")
        self.assertIsInstance(eth, MarketControl)
        self.assertIs(eth.market, self.eth)
        self.assertIs(self.control.market("BTC/USD").market, self.btc)
        self.assertRaises(KeyError, self.control.market, "DOGE/USD")

    def test_orders_stay_in_their_market(self) -> None:
        eth = self.control.market("ETH/USD")
        document = self.committed(eth.submit_order(*BUY))
        self.assertEqual(eth.order(document["id"]), document)
        self.assertIsNone(self.control.order(document["id"]))
        self.assertEqual(self.control.book(5), {"bids": [], "asks": []})
        self.assertEqual(eth.book(5)["bids"], [["100.5", "1", 1]])
        self.assertEqual((eth.ticker()["pair"], self.control.ticker()["pair"]),
                         ("ETH/USD", "BTC/USD"))  # fmt: skip
        self.assertEqual(eth.key("ab" * 32)["pair"], "ETH/USD")

    def test_rows(self) -> None:
        self.committed(self.control.market("ETH/USD").submit_order(*BUY))
        rows = self.control.markets()
        self.assertEqual([(r["market"], r["slug"], r["events"], r["open_orders"], r["best_bid"])
                          for r in rows],
                         [("BTC/USD", "BTC-USD", 0, 0, None),
                          ("ETH/USD", "ETH-USD", 1, 1, "100.5")])  # fmt: skip
        self.assertEqual(rows[1]["state_hash"], self.eth.ledger.state_hash())

    def test_events_of_another_market(self) -> None:
        """An event of ETH/USD is refused on the first market's methods."""
        user = Author(bytes(range(32)), self.eth.config.network, "ETH/USD")
        event = user.order(1, 1, 1_700_000_000_000, "buy", "limit", "1", "1")
        signed = [(event.text, event.sig)]
        error = self.assertRaises(BatchRejected, self.control.submit_events, signed)
        self.assertEqual(
            str(error),
            "events[0]: invalid_event: event is for test ETH/USD, not test BTC/USD; this node "
            "carries ETH/USD: send it to /markets/ETH-USD/events",
        )
        other = Author(bytes(range(32)), self.eth.config.network, "XRP/USD")
        xrp = other.order(1, 1, 1_700_000_000_000, "buy", "limit", "1", "1")
        error = self.assertRaises(BatchRejected, self.control.submit_events,
                                  [(xrp.text, xrp.sig)])  # fmt: skip
        self.assertEqual(str(error), "events[0]: invalid_event: event is for test XRP/USD, not "
                         "test BTC/USD")  # fmt: skip
        taken = self.committed(self.control.market("ETH/USD").submit_events(signed))
        self.assertEqual(taken[0]["id"], event.id)


class _ReadyLink:
    """Stands in for a dialled link whose handshake succeeded."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    def when_ready(self) -> Deferred[_ReadyLink]:
        return succeed(self)


class _PeerLayer:
    """
    What :meth:`NodeControl.connect` uses of a running
    :class:`~bitfitech.peer.service.PeerService`: the real hub, address book
    and dialer, over a connector that answers from a table (refused by default).
    """

    running = True

    def __init__(self, clock: Clock) -> None:
        self.reachable: dict[tuple[str, int], str] = {}
        self.dialled: list[PeerAddress] = []
        self.addrbook = AddressBook(rng=random.Random(1))
        self.hub = PeerHub(self.addrbook, clock, max_peers=10, max_inbound=5)
        self.hub.start(local_node(1))
        self.dialer = Dialer(self.hub, self.addrbook, self.connect, clock, target=3)

    def connect(self, address: PeerAddress) -> Deferred[PeerProtocol]:
        self.dialled.append(address)
        node_id = self.reachable.get(address.endpoint)
        if node_id is None:
            return fail(ConnectionRefusedError("Connection refused"))
        return succeed(cast(PeerProtocol, _ReadyLink(node_id)))


class ConnectTests(SynchronousTestCase):
    """
    ``POST /peers`` (``bitfi connect``): a failed dial is answered 502 and
    leaves nothing behind; a successful one is kept as a manual address.
    """

    def setUp(self) -> None:
        data_dir = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.storage = Storage(data_dir)
        self.storage.open()
        self.addCleanup(self.storage.close)
        config = loopback_config(data_dir)
        market = MarketService(config, self.storage, self.clock)
        self.peers = _PeerLayer(self.clock)
        self.peers.dialer.startService()
        self.addCleanup(self.peers.dialer.stopService)
        control = NodeControl(config, self.clock, self.storage, [market],
                              peers=cast(PeerService, self.peers))  # fmt: skip
        # StubTreq builds its request methods at run time; mypy cannot see them.
        self.stub: Any = StubTreq(api_root(control, clock=self.clock))

    def post_peer(self, address: str) -> tuple[int, dict[str, Any]]:
        d = self.stub.post("http://127.0.0.1:13000/peers", json={"address": address})
        self.stub.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        return response.code, json.loads(content)

    def test_failed_dial_answered_502_and_not_kept(self) -> None:
        status, body = self.post_peer("127.0.0.1:1")
        self.assertEqual(status, 502)
        self.assertEqual(
            body["error"],
            "could not connect to 127.0.0.1:1: Connection was refused by other side: "
            "Connection refused.",
        )
        self.assertIsNone(self.peers.addrbook.get("127.0.0.1", 1))
        self.assertEqual(len(self.peers.addrbook), 0)
        self.clock.pump([10.0] * 400)  # over an hour of dialer ticks: never dialled again
        self.assertEqual([a.endpoint for a in self.peers.dialled], [("127.0.0.1", 1)])

    def test_successful_dial_kept_as_manual(self) -> None:
        self.peers.reachable[("127.0.0.1", 3002)] = node_id_of(2)
        status, body = self.post_peer("127.0.0.1:3002")
        self.assertEqual((status, body["node_id"]), (200, node_id_of(2)))
        entry = self.peers.addrbook.get("127.0.0.1", 3002)
        assert entry is not None
        self.assertEqual((entry.source, entry.successes, entry.node_id),
                         ("manual", 1, node_id_of(2)))  # fmt: skip
        self.assertTrue(entry.protected)
