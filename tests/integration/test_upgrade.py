"""
Integration: a data directory of the last one-market release, upgraded.

Data path: a schema-5 database, its ``events`` table and ``ledger.checkpoint``
written as that release wrote them (:func:`release_5_data_dir`) ->
:class:`~bitfitech.storage.Storage` migrates it to
:data:`~bitfitech.storage.SCHEMA_VERSION` -> ``journal_tables`` gives the
historic tables and checkpoint to the market their rows name -> that
market's service replays them, resuming from the checkpoint; every other
market gets tables of its own, empty.

Real nodes on 127.0.0.1 in one reactor (:class:`ClusterTestCase`), started
again and again on the one data directory with other markets: adding a
market or dropping one loses no history, and the journal of a market the
node was not started with stays that market's, never replayed into another.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from bitfitech.identity import load_or_create_identity
from bitfitech.market.events import Author, Event
from bitfitech.market.journal import write_file
from bitfitech.market.ledger import Ledger
from bitfitech.node import Node, build_node
from bitfitech.storage import (
    DATABASE_NAME,
    HISTORIC_TABLES,
    MIGRATIONS,
    SCHEMA_VERSION,
    market_tables,
    schema_version,
)
from bitfitech.testing import (
    TEST_NETWORK,
    TEST_PAIR,
    ClusterTestCase,
    log_tag,
    loopback_config,
    market_state,
)

BTC, ETH = TEST_PAIR, "ETH/USD"
BOTH = (BTC, ETH)

#: the schema of the last release that served one market
RELEASE_5 = 5

#: when the history's orders were placed, unix ms
HISTORY_TS = 1_700_000_000_000


def history(pair: str) -> list[Event]:
    """
    Two authors' signed events in C{pair}: eight sells, five buys that
    cross some of them (trades, partial fills), and a cancel of the
    highest sell; orders rest on both sides.
    """
    maker = Author(b"\x11" * 32, TEST_NETWORK, pair)
    taker = Author(b"\x22" * 32, TEST_NETWORK, pair)
    sells = [maker.order(seq, seq, HISTORY_TS + seq, "sell", "limit", str(100 + seq), "2")
             for seq in range(1, 9)]  # fmt: skip
    buys = [taker.order(seq, 10 + seq, HISTORY_TS + 10 + seq, "buy", "limit", str(98 + seq), "3")
            for seq in range(1, 6)]  # fmt: skip
    cancel = maker.cancel(9, 20, HISTORY_TS + 20, sells[-1].id)
    return [*sells, *buys, cancel]


def reference_ledger(events: Sequence[Event]) -> Ledger:
    """The ledger C{events} make, built apart from any node."""
    ledger = Ledger()
    ledger.insert(events)
    return ledger


def release_5_data_dir(data_dir: str, events: Sequence[Event]) -> Ledger:
    """
    Make C{data_dir} as the last one-market release (schema 5) left it:
    its node key; a database of schema 5 whose ``events`` table holds
    C{events}, in order, as ``(id, text, sig)`` rows; and the checkpoint
    of their ledger in ``ledger.checkpoint``, as a node writes it at a
    clean stop.

    :return: the reference ledger of C{events}.
    """
    os.makedirs(data_dir)
    load_or_create_identity(data_dir)
    db = sqlite3.connect(os.path.join(data_dir, DATABASE_NAME), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN")
        for statements in MIGRATIONS[:RELEASE_5]:
            for statement in statements:
                db.execute(statement)
        db.execute("INSERT INTO settings (key, value) VALUES ('schema_version', ?)", (RELEASE_5,))
        db.executemany(
            "INSERT INTO events (id, text, sig) VALUES (?, ?, ?)",
            [(event.id, event.text, event.sig) for event in events],
        )
        db.execute("COMMIT")
    finally:
        db.close()
    ledger = reference_ledger(events)
    position, checkpoint = ledger.checkpoint()
    assert position == len(events), (position, len(events))
    write_file(os.path.join(data_dir, HISTORIC_TABLES.checkpoint), checkpoint)
    return ledger


def trade_ids(ledger: Ledger) -> list[str]:
    """The ids of every trade in C{ledger}, oldest first."""
    return [trade.id for trade in reversed(ledger.trades(ledger.trade_count))]


def journal_rows(data_dir: str, table: str) -> int:
    """How many rows C{table} of the database in C{data_dir} holds (read with the node stopped)."""
    db = sqlite3.connect(os.path.join(data_dir, DATABASE_NAME))
    try:
        (count,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    finally:
        db.close()
    return int(count)


class UpgradeTests(ClusterTestCase):
    """One data directory of schema 5, started with other markets, again and again."""

    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.data_dir = os.path.join(self.cluster.base_dir, "upgraded")
        self.observer = EventLoggingObserver()
        globalLogPublisher.addObserver(self.observer)
        self.addCleanup(globalLogPublisher.removeObserver, self.observer)

    def start(self, markets: tuple[str, ...]) -> Node:
        """Start a node of C{markets} on the data directory; it is stopped after the test."""
        config = loopback_config(self.data_dir, markets=markets)
        node = build_node(config, self.reactor, log_tag=log_tag(config))
        # Listed before it starts, so that the cluster also stops a node
        # whose start failed half-way.
        self.cluster.nodes.append(node)
        node.startService()
        self.assertEqual(node.markets.names, markets)
        self.assertEqual(schema_version(node.storage.connection), SCHEMA_VERSION)
        return node

    def check_history(self, node: Node, market: str, reference: Ledger) -> None:
        """
        C{node}'s C{market} holds the history of C{reference}: the same
        state, events and trades, resumed from the checkpoint instead of
        replayed.
        """
        service = node.markets[market]
        self.assertEqual(
            market_state(node, market),
            (reference.state_hash(), len(reference), reference.trade_count),
        )
        self.assertEqual(trade_ids(service.ledger), trade_ids(reference))
        self.assertEqual((service.loaded_events, service.resumed_at), (len(reference),) * 2)

    def check_empty(self, node: Node, market: str) -> None:
        """C{node}'s C{market} holds nothing: no event loaded or held, no order, no trade."""
        service = node.markets[market]
        self.assertEqual(market_state(node, market)[1:], (0, 0))
        self.assertEqual((service.loaded_events, service.resumed_at), (0, 0))
        self.assertEqual(len(service.ledger.book), 0)

    def skipped(self) -> list[object]:
        """The lines of journaled events or stamps skipped at replay."""
        return [e for e in self.observer if "Skipping" in e.get("log_format", "")]

    async def test_adding_and_dropping_markets_loses_nothing(self) -> None:
        """
        A BTC/USD directory of schema 5, started with BTC/USD and ETH/USD:
        BTC/USD adopts the old journal and checkpoint (same state hash and
        trades as the reference ledger, resumed at the checkpoint), ETH/USD
        starts empty in tables of its own.  Started with ETH/USD alone, then
        with both again: each market's history is as it was, and the
        storage knows BTC/USD is kept while the node does not carry it.
        """
        events = history(BTC)
        reference = release_5_data_dir(self.data_dir, events)
        self.assertGreater(reference.trade_count, 1)
        self.assertGreater(len(reference.book), 1)

        # 1. Both markets: BTC/USD adopts the old journal, ETH/USD is new.
        node = self.start(BOTH)
        self.check_history(node, BTC, reference)
        self.check_empty(node, ETH)
        self.assertEqual(node.storage.stored_markets(), [BTC, ETH])
        self.assertEqual(
            (node.markets[BTC].tables, node.markets[ETH].tables),
            (HISTORIC_TABLES, market_tables(ETH)),
        )
        status = node.control.status()
        self.assertEqual(status["markets"], list(BOTH))
        self.assertEqual(
            (status["state_hash"], status["market"]["resumed_at"]),
            (reference.state_hash(), len(events)),
        )
        rows = {row["market"]: row for row in node.control.markets()}
        self.assertEqual(
            (rows[BTC]["state_hash"], rows[BTC]["events"], rows[BTC]["trades"]),
            (reference.state_hash(), len(events), reference.trade_count),
        )
        self.assertEqual((rows[ETH]["events"], rows[ETH]["trades"]), (0, 0))
        await node.markets[ETH].submit("sell", "2000", "1", "limit")
        eth_before = market_state(node, ETH)
        self.assertEqual(eth_before[1], 1)
        await self.cluster.stop_node(node)
        self.assertEqual(journal_rows(self.data_dir, HISTORIC_TABLES.events), len(events))
        self.assertEqual(journal_rows(self.data_dir, market_tables(ETH).events), 1)

        # 2. ETH/USD alone: its history is kept; BTC/USD stays stored, untouched.
        with open(os.path.join(self.data_dir, HISTORIC_TABLES.checkpoint), "rb") as f:
            btc_checkpoint = f.read()
        node = self.start((ETH,))
        self.assertEqual(market_state(node, ETH), eth_before)
        self.assertEqual((node.markets[ETH].loaded_events, node.markets[ETH].resumed_at), (1, 1))
        status = node.control.status()
        self.assertEqual((status["markets"], status["stored_markets"]), ([ETH], [BTC, ETH]))
        await node.markets[ETH].submit("buy", "1990", "1", "limit")
        eth_before = market_state(node, ETH)
        self.assertEqual(eth_before[1], 2)
        await self.cluster.stop_node(node)
        self.assertEqual(journal_rows(self.data_dir, HISTORIC_TABLES.events), len(events))
        with open(os.path.join(self.data_dir, HISTORIC_TABLES.checkpoint), "rb") as f:
            self.assertEqual(f.read(), btc_checkpoint, "BTC/USD's checkpoint was rewritten")

        # 3. Both again: BTC/USD's history as the reference's, ETH/USD's as it was.
        node = self.start(BOTH)
        self.check_history(node, BTC, reference)
        self.assertEqual(market_state(node, ETH), eth_before)
        self.assertEqual(node.markets[ETH].resumed_at, 2)
        self.assertEqual(node.storage.stored_markets(), [BTC, ETH])
        self.assertEqual(self.skipped(), [])

    async def test_journal_of_another_market_stays_its_own(self) -> None:
        """
        An ETH/USD directory of schema 5, started with the default market
        (BTC/USD): BTC/USD starts empty in tables of its own, nothing is
        skipped or replayed into it, and the old journal and checkpoint are
        registered to ETH/USD, left as they were.  Started with ETH/USD
        too, the node finds ETH/USD's history there, resumed from the
        old checkpoint.
        """
        events = history(ETH)
        reference = release_5_data_dir(self.data_dir, events)
        with open(os.path.join(self.data_dir, HISTORIC_TABLES.checkpoint), "rb") as f:
            eth_checkpoint = f.read()

        node = self.start((BTC,))
        self.assertEqual(node.config.markets, (TEST_PAIR,))
        self.check_empty(node, BTC)
        self.assertEqual(node.markets[BTC].tables, market_tables(BTC))
        self.assertEqual(node.storage.stored_markets(), [ETH, BTC])
        self.assertEqual(self.skipped(), [])
        await self.cluster.stop_node(node)
        self.assertEqual(journal_rows(self.data_dir, HISTORIC_TABLES.events), len(events))
        self.assertEqual(journal_rows(self.data_dir, market_tables(BTC).events), 0)
        with open(os.path.join(self.data_dir, HISTORIC_TABLES.checkpoint), "rb") as f:
            self.assertEqual(f.read(), eth_checkpoint, "ETH/USD's checkpoint was rewritten")

        node = self.start(BOTH)
        self.check_history(node, ETH, reference)
        self.check_empty(node, BTC)
        self.assertEqual(node.markets[ETH].tables, HISTORIC_TABLES)
        self.assertEqual(node.storage.stored_markets(), [ETH, BTC])
        self.assertEqual(self.skipped(), [])
