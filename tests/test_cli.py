"""
Tests for :mod:`bitfitech.cli`, the ``bitfi`` command.

Most run the command's :func:`~bitfitech.cli.main` against real nodes of a
:class:`~bitfitech.testing.LocalCluster` in this process: ``main`` blocks
on its HTTP requests, so it runs in a thread (``deferToThread``) while the
reactor serves the node.  A few run it against small fake HTTP servers, for
answers a node does not give on demand (a stream that ends, a hang, a page
that is not JSON); the pure parts (the event-stream parser, the tables)
are tested directly.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from importlib.metadata import entry_points
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from bitfitech import __version__, cli, userkey
from bitfitech.node import Node
from bitfitech.testing import (
    HANG_GUARD,
    ClusterTestCase,
    free_ports,
    global_reactor,
    poll_until,
    wait_for,
)

TOKEN = "cli-test-token-0123456789abcdef"


class Run:
    """
    What one run of the command gave.

    :ivar code: the exit status.
    :ivar out: what it wrote to stdout.
    :ivar err: what it wrote to stderr.
    """

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err

    def json(self) -> Any:
        """stdout as JSON."""
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"Run(code={self.code}, out={self.out!r}, err={self.err!r})"


async def bitfi(
    *argv: str, environ: Mapping[str, str] | None = None, stdout: io.StringIO | None = None
) -> Run:
    """Run ``bitfi argv`` in a thread and return what it gave."""
    out = stdout if stdout is not None else io.StringIO()
    err = io.StringIO()
    code = await deferToThread(
        cli.main, list(argv), stdout=out, stderr=err, environ=dict(environ or {})
    )
    return Run(code, out.getvalue(), err.getvalue())


async def watch(url: str, sleep: Callable[[float], None], *argv: str) -> Run:
    """
    Run ``bitfi --node url watch argv`` in a thread, C{sleep} standing in
    for :func:`time.sleep` between reconnections (it raises
    KeyboardInterrupt for Ctrl-C); the exit status is as main() gives it.
    """
    out, err = io.StringIO(), io.StringIO()
    args = cli.build_parser(out, err).parse_args(["--node", url, "watch", *argv])
    console = cli.Console(out, err, as_json=getattr(args, "json", False))

    def run() -> int:
        try:
            return cli.run_watch(cli.NodeClient(url), args, console, sleep)
        except KeyboardInterrupt:
            return cli.EXIT_OK
        except cli.CommandError as error:
            return error.exit_status

    code = await deferToThread(run)
    return Run(code, out.getvalue(), err.getvalue())


def run_local(*argv: str, environ: Mapping[str, str] | None = None) -> Run:
    """Run ``bitfi`` C{argv} in this process (commands that need no node)."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err, environ=dict(environ or {}))
    return Run(code, out.getvalue(), err.getvalue())


def url_of(node: Node) -> str:
    """The base URL of C{node}'s API."""
    assert node.api is not None
    return f"http://127.0.0.1:{node.api.listen_port}"


class InterruptAfter(io.StringIO):
    """
    A stdout that gets Ctrl-C (KeyboardInterrupt) once C{lines} lines were
    written, or with C{kind}, C{lines} lines of ``bitfi watch`` on events
    of that type.
    """

    def __init__(self, lines: int, kind: str | None = None) -> None:
        super().__init__()
        self.lines = lines
        self.kind = kind

    def count(self) -> int:
        """The lines written so far (of the type C{kind}, if given)."""
        lines = self.getvalue().splitlines()
        if self.kind is None:
            return len(lines)
        return sum(line[10:].startswith(f"{self.kind} ") for line in lines)

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.count() >= self.lines:
            raise KeyboardInterrupt
        return written


class EntryPointTests(SynchronousTestCase):
    """The package declares the ``bitfi`` console script."""

    def test_console_script(self) -> None:
        (script,) = entry_points(group="console_scripts", name="bitfi")
        self.assertEqual(script.value, "bitfitech.cli:main")
        self.assertIs(script.load(), cli.main)


class ContractTests(SynchronousTestCase):
    """The command's copies of the API's constants (it does not import twisted.web)."""

    def test_same_as_the_api(self) -> None:
        from bitfitech.api import jsonresource

        self.assertEqual(cli.MAX_LIMIT, jsonresource.MAX_LIMIT)
        self.assertEqual(cli.ORDER_TYPES, jsonresource.ORDER_TYPES)
        self.assertEqual(cli.ORDER_STATES, jsonresource.ORDER_STATES)
        self.assertEqual(userkey.MAX_EVENTS_BATCH, jsonresource.MAX_BATCH)

    def test_no_reactor(self) -> None:
        code = "import sys, bitfitech.cli; print(sorted(m for m in sys.modules if 'twisted' in m))"
        imported = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
        self.assertEqual(imported.stdout, b"[]\n")


class UsageTests(SynchronousTestCase):
    """Usage errors and input checks: exit 2, nothing sent (no node runs here)."""

    def run_cli(self, *argv: str) -> Run:
        out, err = io.StringIO(), io.StringIO()
        # A port nobody listens on: a request sent by mistake would give 3, not 2.
        node = f"http://127.0.0.1:{free_ports(1)[0]}"
        code = cli.main(["--node", node, *argv], stdout=out, stderr=err, environ={})
        return Run(code, out.getvalue(), err.getvalue())

    def test_help(self) -> None:
        run = self.run_cli("--help")
        self.assertEqual(run.code, 0)
        for command in ("status", "markets", "peers", "connect", "book", "trades", "orders",
                        "buy", "sell", "cancel", "watch", "key", "token", "banned",
                        "unban"):  # fmt: skip
            self.assertIn(command, run.out)
        self.assertIn("4 unauthorized", run.out)

    def test_version(self) -> None:
        """``bitfi --version`` prints the version (the one ``/status`` reports)."""
        run = self.run_cli("--version")
        self.assertEqual((run.code, run.out, run.err), (0, f"bitfi {__version__}\n", ""))

    def test_no_command(self) -> None:
        run = self.run_cli()
        self.assertEqual(run.code, 2)
        self.assertIn("usage: bitfi", run.err)

    def test_unknown_command(self) -> None:
        run = self.run_cli("launch")
        self.assertEqual(run.code, 2)
        self.assertIn("invalid choice: 'launch'", run.err)

    def test_one_line_and_a_hint(self) -> None:
        """An argparse error is its line and where to read more, not the usage first."""
        run = self.run_cli("book", "--depth", "0")
        self.assertEqual((run.code, run.out), (2, ""))
        self.assertEqual(run.err, "bitfi book: error: argument --depth: must be a whole number "
                                  "from 1 to 1000\ntry 'bitfi book --help'\n")  # fmt: skip
        for argv in (["launch"], ["--timeout", "soon", "status"], ["cancel"]):
            run = self.run_cli(*argv)
            self.assertEqual(run.code, 2, argv)
            error, hint = run.err.splitlines()
            self.assertRegex(error, r"^bitfi( cancel)?: error: ", argv)
            self.assertRegex(hint, r"^try 'bitfi( cancel)? --help'$", argv)

    def test_bad_decimals(self) -> None:
        for argv in (["buy", "1e3", "100"], ["sell", "0.5", "-1"], ["buy", "0", "100"],
                     ["buy", "0.5", "1,5"], ["sell", "nan", "1"],
                     ["buy", "0.5", ".5"]):  # fmt: skip
            run = self.run_cli(*argv)
            self.assertEqual(run.code, 2, argv)
            self.assertIn("must be a positive decimal such as 0.25", run.err)

    def test_price_and_type_disagree(self) -> None:
        run = self.run_cli("buy", "0.5")
        self.assertEqual(run.code, 2)
        self.assertIn("a limit order needs a PRICE", run.err)
        self.assertIn("bitfi buy 0.5 --type market", run.err)
        run = self.run_cli("sell", "0.5", "100", "--type", "market")
        self.assertEqual(run.code, 2)
        self.assertIn("a market order takes no PRICE", run.err)
        run = self.run_cli("buy", "0.5", "100", "--type", "stop")
        self.assertEqual(run.code, 2)
        self.assertIn("invalid choice: 'stop'", run.err)

    def test_bad_ids_and_addresses(self) -> None:
        run = self.run_cli("cancel", "abc")
        self.assertEqual(run.code, 2)
        self.assertIn("an order id is 64 hex digits, not 'abc'", run.err)
        run = self.run_cli("cancel", "g" * 64)
        self.assertEqual(run.code, 2)
        run = self.run_cli("unban", "banned.example")
        self.assertEqual(run.code, 2)
        self.assertIn("expected an IP address", run.err)
        run = self.run_cli("connect", "127.0.0.1")
        self.assertEqual(run.code, 2)
        self.assertIn("expected host:port", run.err)

    def test_bad_counts(self) -> None:
        for argv in (["book", "--depth", "0"], ["trades", "--limit", "1001"],
                     ["orders", "--limit", "-3"], ["orders", "--state", "half"]):  # fmt: skip
            self.assertEqual(self.run_cli(*argv).code, 2, argv)

    def test_bad_node_url(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["--node", "ftp://x", "status"], stdout=out, stderr=err, environ={})
        self.assertEqual(code, 2)
        self.assertIn("--node must be an http:// or https:// URL", err.getvalue())

    def test_bad_timeout(self) -> None:
        self.assertEqual(self.run_cli("--timeout", "0", "status").code, 2)
        self.assertEqual(self.run_cli("--timeout", "soon", "status").code, 2)

    def test_bad_market(self) -> None:
        """A --market or $BITFI_MARKET that is not a pair: a usage error, nothing sent."""
        run = self.run_cli("--market", "ETHUSD", "book")
        self.assertEqual((run.code, run.out), (2, ""))
        self.assertIn("bitfi: error: argument --market: invalid pair 'ETHUSD'", run.err)
        run = self.run_cli("book", "--market", "ETH/USD/X")
        self.assertEqual(run.code, 2)
        self.assertIn("bitfi book: error: argument --market: invalid pair", run.err)
        out, err = io.StringIO(), io.StringIO()
        node = f"http://127.0.0.1:{free_ports(1)[0]}"
        code = cli.main(["--node", node, "book"], stdout=out, stderr=err,
                        environ={"BITFI_MARKET": "eth-usd"})  # fmt: skip
        self.assertEqual(code, 2)
        self.assertIn("bitfi: error: $BITFI_MARKET: invalid pair 'eth-usd'", err.getvalue())


class NodeTests(ClusterTestCase):
    """Every command against real nodes on 127.0.0.1."""

    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.node = self.cluster.start_node()
        self.url = url_of(self.node)

    def on(self, node: Node, *argv: str) -> Deferred[Run]:
        """Run ``bitfi --node <node's API> argv``."""
        return Deferred.fromCoroutine(bitfi("--node", url_of(node), *argv))

    async def test_status(self) -> None:
        run = await self.on(self.node, "status")
        self.assertEqual((run.code, run.err), (0, ""))
        node_id = self.node.storage.identity.node_id
        self.assertIn(f"node     {node_id}", run.out)
        self.assertIn("network  test  BTC/USD", run.out)
        self.assertIn("peers    0 in, 0 out", run.out)
        self.assertIn("mdns     off", run.out)
        self.assertIn("dht      off", run.out)
        state_hash = self.node.market.ledger.state_hash()
        self.assertIn(f"state    {state_hash[:16]}  nothing settled yet", run.out)
        self.assertIn("order    author clocks (no witnesses): trades settle, never final", run.out)
        self.assertNotIn("witness ", run.out)

        run = await self.on(self.node, "status", "--json")  # global options after the command too
        self.assertEqual(run.code, 0)
        self.assertEqual(run.json()["node_id"], node_id)

    async def test_node_from_environment(self) -> None:
        run = await bitfi("--json", "status", environ={"BITFI_NODE": self.url})
        self.assertEqual(run.code, 0)
        self.assertEqual(run.json()["node_id"], self.node.storage.identity.node_id)

    async def test_two_markets(self) -> None:
        """
        On a node of two markets, --market sends an order to its market and
        reads its book; without it, the first market's; ``bitfi markets``
        lists both; a market the node does not carry is its 404 (exit 1).
        """
        node = self.cluster.start_node(markets=("BTC/USD", "ETH/USD"))
        run = await self.on(node, "--market", "ETH/USD", "buy", "2", "3000")
        self.assertEqual((run.code, run.err), (0, ""))
        self.assertEqual(len(node.markets["ETH/USD"].ledger.book), 1)
        self.assertEqual(len(node.markets["BTC/USD"].ledger.book), 0)
        run = await self.on(node, "--market", "eth/usd", "book", "--json")
        self.assertEqual(run.code, 0, run)
        self.assertEqual([level[0] for level in run.json()["bids"]], ["3000"])
        run = await self.on(node, "book")
        self.assertEqual((run.code, run.out), (0, "the book is empty\n"))
        run = await self.on(node, "--market", "ETH/USD", "orders")
        self.assertEqual(run.code, 0, run)
        self.assertIn("buy", run.out)

        run = await self.on(node, "markets")
        self.assertEqual(run.code, 0, run)
        header, btc, eth = run.out.splitlines()
        self.assertEqual(header.split(), ["MARKET", "BID", "ASK", "LAST", "TRADES", "OPEN",
                                          "STATE"])  # fmt: skip
        self.assertEqual(btc.split()[:6], ["BTC/USD", "-", "-", "-", "0", "0"])
        self.assertEqual(eth.split()[:6], ["ETH/USD", "3000", "-", "-", "0", "1"])
        run = await self.on(node, "markets", "--json")
        self.assertEqual([row["slug"] for row in run.json()], ["BTC-USD", "ETH-USD"])
        run = await self.on(node, "status")
        self.assertIn("network  test  BTC/USD, ETH/USD", run.out)

        run = await self.on(node, "--market", "DOGE/USD", "book")
        self.assertEqual((run.code, run.out), (1, ""))
        self.assertIn("bitfi: 404 unknown market DOGE/USD", run.err)

        # watch --market follows that market's stream.
        run = await bitfi("--node", url_of(node), "--market", "ETH/USD", "watch", "--json",
                          stdout=InterruptAfter(2))  # fmt: skip
        self.assertEqual((run.code, run.err), (0, ""))
        book, status = (json.loads(line)["data"] for line in run.out.splitlines())
        self.assertEqual(book["bids"], [["3000", "2", 1]])
        self.assertEqual((status["market"], status["events"]), ("ETH/USD", 1))

    async def test_connect_and_peers(self) -> None:
        run = await self.on(self.node, "peers")
        self.assertEqual((run.code, run.out), (0, "no peers linked\n"))

        other = self.cluster.start_node()
        other_id = other.storage.identity.node_id
        run = await self.on(self.node, "connect", f"127.0.0.1:{other.peers.listen_port}")
        self.assertEqual((run.code, run.err), (0, ""))
        self.assertIn(f"linked to node {other_id} at 127.0.0.1:{other.peers.listen_port}", run.out)
        self.assertIn("outbound, TLSv1", run.out)

        run = await self.on(self.node, "peers")
        self.assertEqual(run.code, 0)
        header, row = run.out.splitlines()
        self.assertEqual(header.split()[:4], ["NODE", "ID", "ADDRESS", "DIR"])
        self.assertEqual(row.split()[:3], [other_id, f"127.0.0.1:{other.peers.listen_port}",
                                           "outbound"])  # fmt: skip
        self.assertEqual(header.index("ADDRESS"), row.index("127.0.0.1"))  # aligned

        run = await self.on(self.node, "--json", "peers")
        self.assertEqual([p["node_id"] for p in run.json()], [other_id])

    async def test_connect_fails(self) -> None:
        (dead,) = free_ports(1)
        run = await self.on(self.node, "connect", f"127.0.0.1:{dead}")
        self.assertEqual((run.code, run.out), (1, ""))
        self.assertTrue(run.err.startswith(f"bitfi: 502 could not connect to 127.0.0.1:{dead}"),
                        run.err)  # fmt: skip

    async def test_trade_between_two_nodes(self) -> None:
        maker = self.cluster.start_node(bootstrap_to=[self.node])
        taker = self.node
        await wait_for([maker, taker], lambda: len(taker.peers.hub.links) == 1, HANG_GUARD,
                       self.reactor, "a link")  # fmt: skip

        run = await self.on(maker, "sell", "2", "101.5")
        self.assertEqual((run.code, run.err), (0, ""))
        first, second = run.out.splitlines()
        sell_id = first.removeprefix("order ")
        self.assertTrue(cli._ORDER_ID_RE.match(sell_id), first)
        self.assertEqual(second, "sell limit 2 @ 101.5: open; filled 0, remaining 2")
        self.assertEqual((await self.on(maker, "sell", "0.75", "102")).code, 0)
        run = await self.on(taker, "buy", "1", "99.25")
        self.assertEqual(run.code, 0)
        bid_id = run.out.splitlines()[0].removeprefix("order ")
        self.assertEqual((await self.on(taker, "buy", "0.5", "100", "--type", "post_only")).code, 0)
        await poll_until(self.reactor, lambda: taker.market.status()["events"] == 4, HANG_GUARD,
                         "the maker's orders at the taker")  # fmt: skip

        run = await self.on(taker, "buy", "0.5", "--type", "market")
        self.assertEqual((run.code, run.err), (0, ""))
        lines = run.out.splitlines()
        self.assertEqual(lines[1], "buy market 0.5 at market: filled; filled 0.5, remaining 0")
        self.assertRegex(lines[2], r"^  trade [0-9a-f]{12}: 0\.5 @ 101\.5")

        run = await self.on(taker, "book")
        self.assertEqual(run.code, 0)
        self.assertEqual(
            run.out,
            "SIDE  PRICE   AMOUNT  ORDERS\n"
            "ask   102     0.75         1\n"
            "ask   101.5   1.5          1\n"
            "----  spread 1.5 (1.489%)\n"
            "bid   100     0.5          1\n"
            "bid    99.25  1            1\n",
        )
        run = await self.on(taker, "book", "--depth", "1")
        self.assertEqual(run.out.splitlines()[1:], ["ask   101.5  1.5          1",
                                                    "----  spread 1.5 (1.489%)",
                                                    "bid   100    0.5          1"])  # fmt: skip
        run = await self.on(taker, "book", "--json")
        self.assertEqual(run.json()["asks"][0], ["101.5", "1.5", 1])

        run = await self.on(taker, "trades")
        self.assertEqual(run.code, 0)
        header, row = run.out.splitlines()
        self.assertEqual(row.split()[2:6], ["buy", "101.5", "0.5", "tentative"])
        self.assertIn("STATUS", header)
        self.assertIn(sell_id[:12], row)
        trades = (await self.on(taker, "trades", "--json", "--limit", "5")).json()["trades"]
        self.assertEqual((trades[0]["price"], trades[0]["amount"]), ("101.5", "0.5"))

        run = await self.on(taker, "orders")
        self.assertEqual(run.code, 0)
        self.assertEqual(len(run.out.splitlines()), 3)  # the two open bids
        self.assertIn(bid_id, run.out)
        run = await self.on(taker, "orders", "--state", "closed")
        self.assertIn("market", run.out)
        self.assertIn("filled", run.out)
        orders = (await self.on(taker, "orders", "--state", "all", "--json")).json()["orders"]
        self.assertEqual(len(orders), 3)

        run = await self.on(taker, "cancel", bid_id.upper())
        self.assertEqual((run.code, run.err), (0, ""))
        self.assertEqual(run.out, f"order {bid_id}\nbuy limit 1 @ 99.25: cancelled (user); "
                                  "filled 0, remaining 1\n")  # fmt: skip
        run = await self.on(taker, "cancel", sell_id)  # the maker's: not ours to cancel
        self.assertEqual(run.code, 1)
        self.assertEqual(run.err, f"bitfi: 403 order {sell_id} was not placed by this node\n")

    async def test_fair_order(self) -> None:
        """
        On a network with one witness: ``status`` says so and names the
        witness, an order waits for its fair time, and trades go final.
        """
        [address] = self.cluster.witness_addresses(1)
        witness = self.cluster.start_node(port=address.port, witnesses=(address,))
        plain = self.cluster.start_node(witnesses=(address,))
        await wait_for([witness, plain], lambda: len(plain.peers.hub.links) == 1, HANG_GUARD,
                       self.reactor, "a link to the witness")  # fmt: skip
        self.assertEqual((await self.on(witness, "sell", "1", "100")).code, 0)
        await poll_until(self.reactor, lambda: plain.market.status()["events"] == 1, HANG_GUARD,
                         "the sell at the plain node")  # fmt: skip
        run = await self.on(plain, "buy", "0.5", "100")
        self.assertEqual(run.code, 0)
        self.assertIn(run.out.splitlines()[1], [
            "buy limit 0.5 @ 100: pending (not in the book yet: it waits for its fair time)",
            "buy limit 0.5 @ 100: filled; filled 0.5, remaining 0",
        ])  # fmt: skip

        def final() -> bool:
            trades = plain.control.trades(1, 0)
            return bool(trades) and trades[0]["status"] == "final"

        await poll_until(self.reactor, final, HANG_GUARD, "the trade final")
        run = await self.on(plain, "status")
        self.assertEqual((run.code, run.err), (0, ""))
        lines = dict(line.split(None, 1) for line in run.out.splitlines())
        self.assertEqual(
            lines["order"], "fair, 1 witness (no fault tolerated); this node is not one"
        )
        self.assertRegex(lines["state"], r"^[0-9a-f]{16}  settled 2 events through \d{4}-\d\d-\d\d "
                         r"\d\d:\d\d:\d\d\.\d{3} UTC; final 2 through ")  # fmt: skip
        assert address.node_id is not None
        self.assertRegex(lines["witness"], rf"^{address.node_id[:16]}  \d+ stamps, last "
                         r"\d+\.\d s ago, lag -?\d+ ms$")  # fmt: skip
        run = await self.on(witness, "status")
        self.assertIn("order    fair, 1 witness (no fault tolerated); this node is witness 1 of 1",
                      run.out)  # fmt: skip
        run = await self.on(plain, "trades")
        # (Which order is the taker is the fair order's call: events a new
        # witness sees in its first seconds share one receipt time.)
        self.assertEqual(run.out.splitlines()[1].split()[3:6], ["100", "0.5", "final"])

    async def test_order_errors(self) -> None:
        run = await self.on(self.node, "buy", "0.5", "100.001")
        self.assertEqual((run.code, run.out), (1, ""))
        self.assertEqual(run.err, "bitfi: 400 price_not_tick_multiple: price must be a multiple "
                                  "of the tick 0.01\n")  # fmt: skip
        unknown = "ab" * 32
        run = await self.on(self.node, "cancel", unknown)
        self.assertEqual((run.code, run.err), (1, f"bitfi: 404 no order {unknown}\n"))
        run = await self.on(self.node, "--json", "sell", "0.5", "100.001")
        self.assertEqual((run.code, run.out), (1, ""))  # errors go to stderr, even with --json

    async def test_empty_book_trades_orders(self) -> None:
        self.assertEqual((await self.on(self.node, "book")).out, "the book is empty\n")
        self.assertEqual((await self.on(self.node, "trades")).out, "no trades\n")
        self.assertEqual((await self.on(self.node, "orders")).out, "no orders\n")
        self.assertEqual((await self.on(self.node, "banned")).out, "no bans in force\n")
        run = await self.on(self.node, "sell", "1", "100")
        self.assertEqual(run.code, 0)
        run = await self.on(self.node, "book")
        self.assertEqual(run.out.splitlines()[-1], "----  no bids")

    async def test_banned_and_unban(self) -> None:
        node = self.cluster.start_node(plain_tcp=True)
        lost: Deferred[None] = Deferred()

        class Hostile(Protocol):
            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.write(b"\xde\xad\xbe\xef" + b"\x00" * 60)  # not our magic

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                lost.callback(None)

        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", node.peers.listen_port)
        await endpoint.connect(Factory.forProtocol(Hostile))
        await lost

        run = await self.on(node, "banned")
        self.assertEqual((run.code, run.err), (0, ""))
        header, row = run.out.splitlines()
        self.assertTrue(header.startswith("ADDRESS    NODE ID (CLAIMED)"), header)
        self.assertTrue(row.startswith("127.0.0.1  -"), row)
        bans = (await self.on(node, "banned", "--json")).json()
        self.assertEqual([b["address"] for b in bans], ["127.0.0.1"])

        run = await self.on(node, "unban", "127.0.0.1")
        self.assertEqual((run.code, run.err), (0, ""))
        self.assertTrue(run.out.startswith("lifted the ban on 127.0.0.1 ("), run.out)
        run = await self.on(node, "unban", "127.0.0.1")
        self.assertEqual((run.code, run.err), (1, "bitfi: 404 127.0.0.1 is not banned\n"))
        run = await self.on(node, "unban", "2001:DB8::1")
        self.assertEqual((run.code, run.err), (1, "bitfi: 404 2001:db8::1 is not banned\n"))

    async def test_watch(self) -> None:
        # Ctrl-C after the two events sent at connect (the book and the status): exit 0, quiet.
        run = await bitfi("--node", self.url, "watch", stdout=InterruptAfter(2))
        self.assertEqual((run.code, run.err), (0, ""))
        book, status = run.out.splitlines()
        self.assertRegex(book, r"^\d\d:\d\d:\d\d  book    best bid none, best ask none; no asks$")
        node_id = self.node.storage.identity.node_id
        self.assertRegex(status, r"^\d\d:\d\d:\d\d  status  0 events, 0 peers, state [0-9a-f]{16}$")

        run = await bitfi("--node", self.url, "watch", "--json", stdout=InterruptAfter(2))
        self.assertEqual(run.code, 0)
        events = [json.loads(line) for line in run.out.splitlines()]
        self.assertEqual([e["event"] for e in events], ["book", "status"])
        self.assertEqual(events[1]["data"]["node_id"], node_id)

    async def test_watch_orders(self) -> None:
        stdout = InterruptAfter(4)
        watching = Deferred.fromCoroutine(bitfi("--node", self.url, "watch", stdout=stdout))
        await poll_until(self.reactor, lambda: stdout.getvalue().count("\n") >= 2, HANG_GUARD,
                         "events")  # fmt: skip
        self.assertEqual((await self.on(self.node, "sell", "1", "100")).code, 0)
        run = await watching
        self.assertEqual(run.code, 0)
        lines = run.out.splitlines()
        self.assertIn("  order   sell limit 1 @ 100: open, filled 0", "\n".join(lines[2:]))
        self.assertIn("  book    best bid none, best ask 1 @ 100; no bids", "\n".join(lines[2:]))

    async def test_watch_remote_orders(self) -> None:
        """
        One line per change of the book, however often the node sends it
        (on a network with a witness, an order from a peer is sent as it
        arrives, as it gets its fair time, and as it settles).
        """
        [address] = self.cluster.witness_addresses(1)
        witness = self.cluster.start_node(port=address.port, witnesses=(address,))
        remote = self.cluster.start_node(witnesses=(address,))
        await wait_for([witness, remote], lambda: len(remote.peers.hub.links) == 1, HANG_GUARD,
                       self.reactor, "a link to the witness")  # fmt: skip
        stdout = InterruptAfter(3, kind="book")
        watching = Deferred.fromCoroutine(bitfi("--node", url_of(witness), "watch", stdout=stdout))
        await poll_until(self.reactor, lambda: stdout.count() == 1, HANG_GUARD, "the first book")
        self.assertEqual((await self.on(remote, "sell", "1", "100")).code, 0)
        await poll_until(self.reactor, lambda: stdout.count() == 2, HANG_GUARD, "a second book")
        self.assertEqual((await self.on(remote, "sell", "1", "99")).code, 0)
        run = await watching
        self.assertEqual((run.code, run.err), (0, ""))
        lines = [line[10:] for line in run.out.splitlines() if line[10:].startswith("book ")]
        self.assertEqual(lines, ["book    best bid none, best ask none; no asks",
                                 "book    best bid none, best ask 1 @ 100; no bids",
                                 "book    best bid none, best ask 1 @ 99; no bids"])  # fmt: skip

    async def test_token_required(self) -> None:
        node = self.cluster.start_node(api_token=TOKEN)
        run = await self.on(node, "status")
        self.assertEqual((run.code, run.out), (4, ""))
        self.assertTrue(run.err.startswith("bitfi: 401 "), run.err)
        self.assertIn("pass the node's API token with --token or BITFI_API_TOKEN", run.err)
        run = await self.on(node, "--token", "wrong-token-0123456789", "status")
        self.assertEqual(run.code, 4)

        run = await self.on(node, "--token", TOKEN, "status")
        self.assertEqual((run.code, run.err), (0, ""))
        run = await bitfi("--node", url_of(node), "book", environ={"BITFI_API_TOKEN": TOKEN})
        self.assertEqual((run.code, run.err), (0, ""))


class UnreachableTests(TestCase):
    """No node, or a node that does not answer: exit 3."""

    async def test_connection_refused(self) -> None:
        (port,) = free_ports(1)
        url = f"http://127.0.0.1:{port}"
        for argv in (["status"], ["buy", "1", "100"], ["watch"], ["unban", "192.0.2.7"]):
            run = await bitfi("--node", url, *argv)
            self.assertEqual((run.code, run.out), (3, ""), argv)
            self.assertEqual(run.err, f"bitfi: cannot reach the node at {url}: connection "
                                      "refused; is it running? (make run)\n")  # fmt: skip

    async def test_timeout(self) -> None:
        server = FakeServer(self, {b"/status": lambda request: NOT_DONE_YET})
        run = await bitfi("--node", server.url, "--timeout", "0.3", "status")
        self.assertEqual(run.code, 3)
        self.assertIn("no answer within 0.3 s (--timeout)", run.err)

    async def test_not_http(self) -> None:
        closing = self.reactor_listen_closing()
        run = await bitfi("--node", f"http://127.0.0.1:{closing}", "status")
        self.assertEqual(run.code, 3)
        self.assertIn("closed the connection without answering", run.err)

    def reactor_listen_closing(self) -> int:
        """A port that accepts connections and closes them at once."""

        class Closing(Protocol):
            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.loseConnection()

        port = global_reactor().listenTCP(0, Factory.forProtocol(Closing), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)


class FakeServer:
    """
    A small HTTP server in the reactor: C{routes} maps a path to a function
    of the request that returns the body or ``NOT_DONE_YET``.  Requests left
    open are closed when the test ends.
    """

    def __init__(self, test: TestCase, routes: Mapping[bytes, Callable[[Request], Any]]) -> None:
        self.requests: list[Request] = []
        server = self

        class Route(Resource):
            isLeaf = True

            def render(self, request: Request) -> Any:
                server.requests.append(request)
                handler = routes.get(request.path)
                if handler is None:
                    request.setResponseCode(404)
                    return b'{"error": "no such page"}'
                return handler(request)

        self.port = global_reactor().listenTCP(0, Site(Route()), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        test.addCleanup(self.close)

    async def close(self) -> None:
        for request in self.requests:
            if not request.finished and not request._disconnected:
                request.channel.transport.abortConnection()  # type: ignore[union-attr]
        await self.port.stopListening()


def sse(*events: tuple[str, str]) -> bytes:
    """The bytes of C{events} (type, data) as a server sends them."""
    return b"".join(f"event: {kind}\ndata: {data}\n\n".encode() for kind, data in events)


TRADE = {"id": "c" * 64, "price": "50000.5", "amount": "0.1", "side": "sell", "taker": "d" * 64,
         "maker": "a" * 64, "status": "tentative", "time": 1_700_000_000_500}  # fmt: skip


class FakeServerTests(TestCase):
    """Answers a node gives rarely, from a fake server."""

    async def test_watch_across_reconnections(self) -> None:
        """
        The node ends the stream, is busy once (503), then streams again:
        one line per change, a note on each loss and at the reconnection,
        and a 401 (the node now wants a token) ends the command.
        """
        status = ("status", '{"events": 3, "peers": 1, "state_hash": "' + "e" * 64 + '"}')
        answers: list[Callable[[Request], bytes]] = []

        def first(request: Request) -> bytes:
            request.setHeader(b"content-type", b"text/event-stream")
            return (
                b": hello\r\n\r\n"
                + sse(("trade", json.dumps(TRADE)))
                + b"event: peer\r\ndata: "
                + b'{"event": "joined", "node_id": "' + b"b" * 40 + b'", "address": '
                b'"127.0.0.1:3001", "direction": "inbound"}\r\n\r\n'
                + sse(status, ("surprise", '{"x": 1}'), ("book", "not json"), ("book", "not json"),
                      status)
            )  # fmt: skip

        def busy(request: Request) -> bytes:
            request.setResponseCode(503)
            return b'{"error": "too many stream clients (at most 64)"}'

        def again(request: Request) -> bytes:
            request.setHeader(b"content-type", b"text/event-stream")
            return sse(("book", "not json"), status, ("book", '{"bids": [], "asks": []}'))

        def refuse(request: Request) -> bytes:
            request.setResponseCode(401)
            return b'{"error": "this API requires a token"}'

        answers += [first, busy, again, refuse]
        server = FakeServer(self, {b"/stream": lambda request: answers.pop(0)(request)})
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            if not answers:
                raise KeyboardInterrupt

        run = await watch(server.url, sleep)
        self.assertEqual(run.code, 4)  # the NodeError of the 401, as main() reports it
        lines = [line[10:] for line in run.out.splitlines()]  # without the time
        self.assertEqual(lines, [
            f"trade   sell 0.1 @ 50000.5 tentative (trade {'c' * 12}, taker {'d' * 12}, "
            f"maker {'a' * 12})",
            f"peer    joined {'b' * 40} 127.0.0.1:3001 inbound",
            f"status  3 events, 1 peers, state {'e' * 16}",
            'surprise  {"x":1}',
            "book    not json",
            "book    best bid none, best ask none; no asks",
        ])  # fmt: skip
        self.assertEqual(run.err.splitlines(), [
            "bitfi: stream lost (the node ended it); reconnecting in 1 s",
            "bitfi: cannot reconnect (503 too many stream clients (at most 64)); "
            "trying again in 2 s",
            "bitfi: reconnected",
            "bitfi: stream lost (the node ended it); reconnecting in 1 s",
        ])  # fmt: skip
        self.assertEqual(waits, [1, 2, 1])
        self.assertEqual(server.requests[0].getHeader(b"accept"), b"text/event-stream")

        answers += [first]
        run = await watch(server.url, sleep, "--json")
        self.assertEqual(run.code, 0)  # Ctrl-C in the wait after the first stream
        events = [json.loads(line) for line in run.out.splitlines()]
        self.assertEqual(events[0], {"event": "trade", "data": TRADE})
        self.assertEqual([e["event"] for e in events[2:]], ["status", "surprise", "book"])
        self.assertEqual(events[-1], {"event": "book", "data": "not json"})

    async def test_silent_stream(self) -> None:
        """A stream that sends nothing for too long is lost (the node's keepalive is every 15 s)."""

        def quiet(request: Request) -> object:
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(sse(("book", "not json")))
            return NOT_DONE_YET

        server = FakeServer(self, {b"/stream": quiet})

        def read() -> list[cli.ServerEvent]:
            events: list[cli.ServerEvent] = []
            with contextlib.closing(cli.NodeClient(server.url).open_events("/stream", 0.3)) as s:
                for event in s:
                    events.append(event)
            return events

        error = await self.assertFailure(deferToThread(read), cli.StreamError)
        self.assertEqual(str(error), "nothing heard for 0.3 s")

    async def test_watch_without_a_stream(self) -> None:
        server = FakeServer(self, {})
        run = await bitfi("--node", server.url, "watch")
        self.assertEqual((run.code, run.err), (1, "bitfi: 404 no such page\n"))

    async def test_unauthorized(self) -> None:
        def refuse(request: Request) -> bytes:
            request.setResponseCode(401)
            return b'{"error": "this API requires a token"}\n'

        server = FakeServer(self, {b"/trades": refuse, b"/stream": refuse})
        for argv in (["trades"], ["watch"]):
            run = await bitfi("--node", server.url, "--token", TOKEN, *argv)
            self.assertEqual(run.code, 4)
            self.assertEqual(run.err, "bitfi: 401 this API requires a token; pass the node's "
                                      "API token with --token or BITFI_API_TOKEN\n")  # fmt: skip
        self.assertEqual(server.requests[0].getHeader(b"authorization"), f"Bearer {TOKEN}".encode())

    async def test_not_json(self) -> None:
        def broken(request: Request) -> bytes:
            request.setResponseCode(500)
            return b"<html>oops</html>"

        def garbled(request: Request) -> bytes:
            return b"<html>fine</html>"

        server = FakeServer(self, {b"/status": broken, b"/book": garbled})
        run = await bitfi("--node", server.url, "status")
        self.assertEqual((run.code, run.err), (1, "bitfi: 500 Internal Server Error: "
                                                  "<html>oops</html>\n"))  # fmt: skip
        run = await bitfi("--node", server.url, "book")
        self.assertEqual(run.code, 1)
        self.assertIn("the node's answer is not JSON", run.err)

    async def test_market_paths(self) -> None:
        """
        --market (or $BITFI_MARKET) sends a market's commands to its routes
        under /markets/<slug>; without it, the paths are today's.
        """
        empty = lambda request: b'{"bids": [], "asks": [], "trades": [], "orders": []}'  # noqa: E731
        paths = [b"/book", b"/trades", b"/orders"]
        server = FakeServer(self, {
            path: empty for path in [*paths, *(b"/markets/ETH-USD" + p for p in paths)]
        })  # fmt: skip
        for argv in (["book"], ["trades"], ["orders"]):
            run = await bitfi("--node", server.url, "--market", "eth/usd", *argv)
            self.assertEqual(run.code, 0, run)
        run = await bitfi("--node", server.url, "book", environ={"BITFI_MARKET": "ETH/USD"})
        self.assertEqual((run.code, run.out), (0, "the book is empty\n"))
        run = await bitfi("--node", server.url, "book")
        self.assertEqual(run.code, 0)
        self.assertEqual([request.uri for request in server.requests], [
            b"/markets/ETH-USD/book?depth=20",
            b"/markets/ETH-USD/trades?limit=50",
            b"/markets/ETH-USD/orders?state=open&limit=100",
            b"/markets/ETH-USD/book?depth=20",
            b"/book?depth=20",
        ])  # fmt: skip

    async def test_placed_in_a_market(self) -> None:
        """buy, sell and cancel signed by the node go to the market's routes."""
        order: dict[str, Any] = {
            "id": "a" * 64, "side": "buy", "type": "limit", "price": "100", "amount": "1",
            "remaining": "1", "filled": "0", "status": "open", "reason": None, "trades": [],
        }  # fmt: skip
        bodies: list[bytes] = []

        def answer(request: Request) -> bytes:
            assert request.content is not None
            bodies.append(request.content.read())
            return json.dumps(order).encode()

        server = FakeServer(self, {
            b"/markets/ETH-USD/orders": answer, b"/markets/ETH-USD/orders/" + b"a" * 64: answer,
        })  # fmt: skip
        run = await bitfi("--node", server.url, "--market", "ETH/USD", "buy", "1", "100")
        self.assertEqual(run.code, 0, run)
        run = await bitfi("--node", server.url, "--market", "ETH/USD", "cancel", "a" * 64)
        self.assertEqual(run.code, 0, run)
        self.assertEqual([(r.method, r.uri) for r in server.requests], [
            (b"POST", b"/markets/ETH-USD/orders"),
            (b"DELETE", b"/markets/ETH-USD/orders/" + b"a" * 64),
        ])  # fmt: skip
        body = {"side": "buy", "amount": "1", "type": "limit", "price": "100"}
        self.assertEqual(json.loads(bodies[0]), body)

    async def test_unknown_market(self) -> None:
        """The node's 404 for a market it does not carry: exit 1 with its message."""

        def unknown(request: Request) -> bytes:
            request.setResponseCode(404)
            return b'{"error": "unknown market DOGE/USD; this node carries BTC/USD, ETH/USD"}'

        server = FakeServer(self, {b"/markets/DOGE-USD/book": unknown})
        run = await bitfi("--node", server.url, "--market", "DOGE/USD", "book")
        self.assertEqual((run.code, run.out), (1, ""))
        self.assertEqual(run.err, "bitfi: 404 unknown market DOGE/USD; this node carries "
                                  "BTC/USD, ETH/USD\n")  # fmt: skip

    async def test_markets(self) -> None:
        """``bitfi markets``: a table of GET /markets, or its JSON unchanged."""
        rows = [
            {"market": "BTC/USD", "slug": "BTC-USD", "best_bid": "49999.5", "best_ask": "50001",
             "last": "50000", "state_hash": "e" * 64, "events": 12, "trades": 3,
             "open_orders": 4, "ordering": "lamport"},
            {"market": "ETH/USD", "slug": "ETH-USD", "best_bid": None, "best_ask": None,
             "last": None, "state_hash": "f" * 64, "events": 0, "trades": 0, "open_orders": 0,
             "ordering": "lamport"},
        ]  # fmt: skip
        raw = json.dumps(rows).encode()
        server = FakeServer(self, {b"/markets": lambda request: raw})
        run = await bitfi("--node", server.url, "markets")
        self.assertEqual((run.code, run.err), (0, ""))
        self.assertEqual(run.out.splitlines(), [
            "MARKET   BID      ASK    LAST   TRADES  OPEN  STATE",
            "BTC/USD  49999.5  50001  50000       3     4  " + "e" * 16,
            "ETH/USD      -        -      -       0     0  " + "f" * 16,
        ])  # fmt: skip
        run = await bitfi("--node", server.url, "markets", "--json")
        self.assertEqual((run.code, run.json()), (0, rows))

    async def test_path_prefix(self) -> None:
        server = FakeServer(self, {b"/bitfi/book": lambda request: b'{"bids": [], "asks": []}'})
        run = await bitfi("--node", server.url + "/bitfi/", "book")
        self.assertEqual((run.code, run.out), (0, "the book is empty\n"))


class TokenTests(SynchronousTestCase):
    """``bitfi token`` makes the API token file."""

    def test_token(self) -> None:
        data_dir = os.path.join(self.mktemp(), "node")
        run = run_local("token", "--data-dir", data_dir)
        self.assertEqual(run.code, 0)
        path = os.path.join(os.path.abspath(data_dir), "api.token")
        self.assertIn(f"wrote a new API token to {path} (mode 0600)", run.err)
        with open(path) as token_file:
            self.assertEqual(token_file.read(), run.out)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertGreaterEqual(len(run.out.strip()), 43)

        again = run_local("token", "--data-dir", data_dir)
        self.assertEqual((again.code, again.out), (1, ""))
        self.assertIn("exists already; pass --force", again.err)
        forced = run_local("token", "--force", "--json", environ={"BITFI_DATA_DIR": data_dir})
        self.assertEqual(forced.code, 0)
        self.assertEqual(forced.json()["path"], path)
        self.assertNotEqual(forced.json()["token"], run.out.strip())

    def test_no_data_dir(self) -> None:
        run = run_local("token")
        self.assertEqual(run.code, 2)
        self.assertIn("--data-dir is required", run.err)


class NodeIdTests(SynchronousTestCase):
    """``bitfi node-id`` names a node before it starts, by the key it will use."""

    def test_default_data_dir(self) -> None:
        """The key lands where ``twistd bitfi --port`` looks for it, and is kept."""
        from bitfitech.config import default_data_dir
        from bitfitech.identity import KEY_FILE_NAME, load_or_create_identity

        env = {"XDG_DATA_HOME": os.path.abspath(self.mktemp()), "BITFI_NETWORK": "dev"}
        run = run_local("node-id", "--port", "3001", environ=env)
        self.assertEqual(run.code, 0, run)
        data_dir = default_data_dir("dev", 3001, env)
        self.assertEqual(run.err, f"bitfi: made a new node key in "
                                  f"{os.path.join(data_dir, KEY_FILE_NAME)}\n")  # fmt: skip
        node_id = load_or_create_identity(data_dir).node_id
        self.assertEqual(run.out, node_id + "\n")
        self.assertEqual(stat.S_IMODE(os.stat(data_dir).st_mode), 0o700)

        again = run_local("node-id", "--host", "127.0.0.1", environ={**env, "P2P_PORT": "3001"})
        self.assertEqual((again.code, again.out, again.err), (0, f"{node_id}@127.0.0.1:3001\n", ""))
        as_json = run_local("node-id", "--port", "3001", "--host", "::1", "--json", environ=env)
        self.assertEqual(as_json.json(), {"node_id": node_id, "data_dir": data_dir,
                                          "address": f"{node_id}@[::1]:3001"})  # fmt: skip
        other = run_local("node-id", "--port", "3002", "--network", "main", environ=env)
        self.assertNotEqual(other.out, run.out)

    def test_data_dir(self) -> None:
        data_dir = os.path.abspath(os.path.join(self.mktemp(), "w1"))
        run = run_local("node-id", environ={"BITFI_DATA_DIR": data_dir})
        self.assertEqual(run.code, 0)
        same = run_local("node-id", "--data-dir", data_dir, "--port", "0")
        self.assertEqual((same.out, same.err), (run.out, ""))

    def test_usage_errors(self) -> None:
        data_dir = os.path.abspath(self.mktemp())
        cases = [
            (["--port", "x"], "bitfi node-id: error: --port: not an integer"),
            (["--port", "0"], "--data-dir is required with --port 0"),
            (["--network", "Main"], "--network: invalid network name"),
            (["--data-dir", data_dir, "--port", "0", "--host", "h"], "--host needs the node's"),
            (["--data-dir", data_dir, "--host", "a b"], "bitfi node-id: error: "),
        ]
        for argv, message in cases:
            run = run_local("node-id", *argv)
            self.assertEqual((run.code, run.out), (2, ""), argv)
            self.assertIn(message, run.err, argv)
        self.assertFalse(os.path.exists(data_dir))

    def test_unusable_data_dir(self) -> None:
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w"):
            pass
        run = run_local("node-id", "--data-dir", os.path.join(blocker, "node"))
        self.assertEqual((run.code, run.out), (1, ""))
        self.assertIn("bitfi: cannot create data directory", run.err)


class ProcessTests(TestCase):
    """The command as a process: ``python -m bitfitech.cli`` and the ``bitfi`` script."""

    timeout = 60

    async def run_process(self, executable: str, args: Sequence[str]) -> tuple[bytes, bytes, int]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BITFI_")}
        result: tuple[bytes, bytes, int] = await getProcessOutputAndValue(
            executable, args, env=env, path=os.getcwd()
        )
        return result

    async def test_module(self) -> None:
        (port,) = free_ports(1)
        out, err, code = await self.run_process(
            sys.executable, ["-m", "bitfitech.cli", "--node", f"http://127.0.0.1:{port}", "status"]
        )
        self.assertEqual((code, out), (3, b""))
        self.assertIn(b"connection refused; is it running? (make run)", err)

    async def test_script(self) -> None:
        script = os.path.join(os.path.dirname(sys.executable), "bitfi")
        if not os.path.exists(script):
            self.skipTest(f"no {script}: reinstall the package to make the console script")
        out, err, code = await self.run_process(script, ["--help"])
        self.assertEqual((code, err), (0, b""))
        self.assertIn(b"usage: bitfi", out)


class EventStreamParserTests(SynchronousTestCase):
    """The parser of ``text/event-stream``."""

    def test_events(self) -> None:
        parser = cli.EventStreamParser()
        data = (b": comment\n\nevent: trade\ndata: {\"a\": 1}\n\nid: 7\nretry: 10\n"
                b"data: first\r\ndata:second\r\n\r\n\n")  # fmt: skip
        events = [e for byte in range(len(data)) for e in parser.feed(data[byte : byte + 1])]
        self.assertEqual(events, [cli.ServerEvent("trade", '{"a": 1}'),
                                  cli.ServerEvent("message", "first\nsecond")])  # fmt: skip

    def test_event_without_data(self) -> None:
        parser = cli.EventStreamParser()
        self.assertEqual(
            parser.feed(b"event: book\n\ndata: x\n\n"), [cli.ServerEvent("message", "x")]
        )

    def test_bounded(self) -> None:
        parser = cli.EventStreamParser(max_line=10)
        self.assertEqual(parser.feed(b"data: 1234"), [])
        self.assertRaises(cli.StreamError, parser.feed, b"56789")
        parser = cli.EventStreamParser(max_line=10)
        parser.feed(b"data: 12345\n")
        self.assertRaises(cli.StreamError, parser.feed, b"data: 678901\n")


class FakeStream:
    """A :class:`~bitfitech.cli.LiveEvents` that gives C{events}, then ends or raises C{error}."""

    def __init__(self, *events: cli.ServerEvent, error: Exception | None = None) -> None:
        self.events = events
        self.error = error
        self.closed = False

    def __iter__(self) -> Iterator[cli.ServerEvent]:
        yield from self.events
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True


class FollowStreamTests(SynchronousTestCase):
    """:func:`~bitfitech.cli.follow_stream`: reconnections and their waits, with fakes."""

    def follow(self, *script: FakeStream | Exception) -> tuple[list[str], list[float], list[str]]:
        """
        Follow a stream whose openings give C{script} in turn, until Ctrl-C
        in the first wait after the script; return the events' data, the
        waits and the notes.
        """
        steps = list(script)
        shown: list[str] = []
        waits: list[float] = []
        notes: list[str] = []

        def open_stream() -> FakeStream:
            step = steps.pop(0)
            if isinstance(step, Exception):
                raise step
            return step

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            if not steps:
                raise KeyboardInterrupt

        self.assertRaises(
            KeyboardInterrupt,
            cli.follow_stream, open_stream, lambda e: shown.append(e.data), notes.append, sleep,
        )  # fmt: skip
        return shown, waits, notes

    def test_backoff(self) -> None:
        """1 s, doubling up to 30 s while the node is away; back to 1 s after an event."""
        event = cli.ServerEvent("book", "1")
        away = cli.Unreachable("http://node", "connection refused")
        lost = cli.StreamError("reset")
        streams = [FakeStream(event), FakeStream(), FakeStream(event, error=lost)]
        shown, waits, notes = self.follow(streams[0], *[away] * 6, streams[1], streams[2])
        self.assertEqual(shown, ["1", "1"])
        self.assertEqual(waits, [1, 2, 4, 8, 16, 30, 30, 30, 1])
        self.assertEqual(notes, [
            "stream lost (the node ended it); reconnecting in 1 s",
            *(f"cannot reconnect (connection refused); trying again in {s} s"
              for s in (2, 4, 8, 16, 30, 30)),
            "reconnected",
            "stream lost (the node ended it); reconnecting in 30 s",  # it gave no event
            "reconnected",
            "stream lost (reset); reconnecting in 1 s",
        ])  # fmt: skip
        self.assertTrue(all(stream.closed for stream in streams))

    def test_busy_or_failing_node(self) -> None:
        """429 and 5xx are waited out."""
        _, waits, notes = self.follow(
            FakeStream(), cli.NodeError(503, "too many stream clients"),
            cli.NodeError(429, "slow down"), cli.NodeError(500, "oops"), FakeStream(),
        )  # fmt: skip
        self.assertEqual(waits, [1, 2, 4, 8, 16])
        self.assertEqual(notes[1], "cannot reconnect (503 too many stream clients); "
                                   "trying again in 2 s")  # fmt: skip

    def test_refused(self) -> None:
        """A 401, a 404 or another 4xx will not change by waiting: it ends the command."""
        for status in (401, 404, 400):
            steps: list[FakeStream | Exception] = [FakeStream(), cli.NodeError(status, "no")]
            error = self.assertRaises(
                cli.NodeError, cli.follow_stream, functools.partial(_pop, steps), _ignore,
                _ignore, _ignore,
            )  # fmt: skip
            self.assertEqual(error.status, status)

    def test_first_connection(self) -> None:
        """Before the stream was ever open, every error ends the command (no node: exit 3)."""
        for first in (cli.Unreachable("http://node", "connection refused"),
                      cli.NodeError(503, "busy")):  # fmt: skip
            waits: list[float] = []
            raised = self.assertRaises(
                type(first), cli.follow_stream, functools.partial(_pop, [first]), _ignore,
                _ignore, waits.append,
            )  # fmt: skip
            self.assertIs(raised, first)
            self.assertEqual(waits, [])


def _ignore(value: object) -> None:
    """Take C{value} and do nothing with it."""


def _pop(steps: list[Any]) -> Any:
    """The next of C{steps}: a stream to return, or an exception to raise."""
    step = steps.pop(0)
    if isinstance(step, Exception):
        raise step
    return step


class WatchLinesTests(SynchronousTestCase):
    """:class:`~bitfitech.cli.WatchLines`: a line only when it says something new."""

    BOOK = '{"bids": [["99", "1", 1]], "asks": []}'
    STATUS = '{"events": 3, "peers": 1, "state_hash": "' + "e" * 64 + '"}'

    def lines(self, as_json: bool, *events: tuple[str, str]) -> list[str]:
        out = io.StringIO()
        lines = cli.WatchLines(cli.Console(out, io.StringIO(), as_json), clock=lambda: 0.0)
        for kind, data in events:
            lines.show(cli.ServerEvent(kind, data))
        return out.getvalue().splitlines()

    def test_same_book_and_status_once(self) -> None:
        other_book = '{"bids": [["99", "2", 2]], "asks": []}'
        same_book = '{"asks": [], "bids": [["99", "1", 1]]}'  # says the same, written otherwise
        events = [("book", self.BOOK), ("status", self.STATUS), ("book", same_book),
                  ("book", self.BOOK), ("status", self.STATUS), ("book", other_book),
                  ("book", self.BOOK)]  # fmt: skip
        lines = [line[10:] for line in self.lines(False, *events)]
        self.assertEqual(lines, [
            "book    best bid 1 @ 99, best ask none; no asks",
            f"status  3 events, 1 peers, state {'e' * 16}",
            "book    best bid 2 @ 99, best ask none; no asks",
            "book    best bid 1 @ 99, best ask none; no asks",
        ])  # fmt: skip

    def test_json(self) -> None:
        """With --json, the data must differ, byte for byte."""
        events = [("book", self.BOOK), ("book", self.BOOK), ("status", self.STATUS),
                  ("book", '{"asks": [], "bids": [["99", "1", 1]]}')]  # fmt: skip
        lines = self.lines(True, *events)
        self.assertEqual([json.loads(line)["event"] for line in lines], ["book", "status", "book"])
        self.assertEqual(json.loads(lines[0]), {"event": "book", "data": json.loads(self.BOOK)})


class RenderTests(SynchronousTestCase):
    """The tables: aligned, decimals as written."""

    def test_decimal_alignment(self) -> None:
        lines = cli.table(["P", "NAME"], [["100", "a"], ["99.25", "bb"], ["0.00000001", "c"]], "dl")
        self.assertEqual(lines, ["P             NAME", "100           a", " 99.25        bb",
                                 "  0.00000001  c"])  # fmt: skip

    def test_book_exact(self) -> None:
        book = {"bids": [["0.1", "100000000", 1]], "asks": [["0.30000000000000004", "1", 2]]}
        lines = cli.render_book(book)
        self.assertIn("0.30000000000000004", lines[1])
        self.assertEqual(lines[2], "----  spread 0.20000000000000004 (100.000%)")

    def test_status_in_fair_order(self) -> None:
        """Three witnesses, one of them flagged: the order, the points, each witness."""
        now = 1_700_000_010.0
        chains = [
            {"node_id": "a" * 40, "seq": 120, "t": 1_700_000_009_900, "waiting": 0,
             "flagged": None, "lag_ms": 12},
            {"node_id": "b" * 40, "seq": 80, "t": 1_700_000_000_000, "waiting": 3,
             "flagged": None, "lag_ms": -4},
            {"node_id": "c" * 40, "seq": 0, "t": None, "waiting": 0, "flagged": "equivocation",
             "lag_ms": None},
        ]  # fmt: skip
        status = {
            "node_id": "d" * 40, "state_hash": "e" * 64, "ordering": "fair",
            "witnesses": {
                "n": 3, "f": 1, "me": 0, "settled_through_ms": 1_700_000_009_650,
                "final_through_ms": None, "settled_events": 7, "final_events": 0,
                "waiting_events": 1, "flagged": {"f" * 64: "equivocation"}, "chains": chains,
            },
        }  # fmt: skip
        lines = cli.render_status(status, now)
        self.assertIn(f"state    {'e' * 16}  settled 7 events through 2023-11-14 22:13:29.650 "
                      "UTC; final 0 through none yet", lines)  # fmt: skip
        self.assertIn("order    fair, 3 witnesses (up to 1 may be faulty); this node is witness "
                      "1 of 3; 1 event wait for a fair time; 1 flagged faulty", lines)  # fmt: skip
        witness_lines = [line for line in lines if line.startswith("witness")]
        self.assertEqual(witness_lines, [
            f"witness  {'a' * 16}  120 stamps, last 0.1 s ago, lag 12 ms",
            f"witness  {'b' * 16}  80 stamps, last 10.0 s ago, lag -4 ms, 3 past a gap",
            f"witness  {'c' * 16}  0 stamps, none yet, FLAGGED: equivocation",
        ])  # fmt: skip
        self.assertEqual(lines.index(witness_lines[-1]) + 1, lines.index("mdns     off"))

    def test_status_sync_line(self) -> None:
        """How far the node is behind its peers: syncing with a rate and time left, or synced."""
        syncing = {"state": "syncing", "events": 40_000, "known": 100_000, "behind": 60_000,
                   "rate": Decimal("5000.0"), "eta_ms": 12_400}  # fmt: skip
        lines = cli.render_status({"sync": syncing}, 0.0)
        self.assertIn("sync     syncing: 40,000 of 100,000 events (40 %), 5,000 events/s, "
                      "about 12s left", lines)  # fmt: skip
        synced = {**syncing, "state": "synced", "events": 100_000, "behind": 0, "eta_ms": None}
        self.assertIn("sync     synced (100,000 events)", cli.render_status({"sync": synced}, 0.0))
        self.assertIn("sync     unknown", cli.render_status({}, 0.0))

    def test_status_reach_line(self) -> None:
        """Whether peers can dial the node: reached, or outbound only with why, or not known yet."""
        reach: dict[str, Any] = {"state": "public", "address": "203.0.113.5:3000",
                                 "observed": ["203.0.113.5"]}  # fmt: skip
        self.assertIn("reach    public: peers reach it at 203.0.113.5:3000 (directly)",
                      cli.render_status({"reachability": reach}, 0.0))  # fmt: skip
        reach = {"state": "outbound-only", "reason": "timed out", "observed": ["203.0.113.5"]}
        self.assertIn("reach    outbound-only: peers cannot dial it (timed out); it works over "
                      "the links it dials; peers see it as 203.0.113.5",
                      cli.render_status({"reachability": reach}, 0.0))  # fmt: skip
        reach = {"state": "unknown", "checking": True, "observed": []}
        self.assertIn("reach    unknown (no dial-back answered yet, checking)",
                      cli.render_status({"reachability": reach}, 0.0))  # fmt: skip
        reach = {
            "state": "mapped",
            "address": "203.0.113.5:40000",
            "nat_udp": {"state": "mapped", "external_port": 40001},
        }
        self.assertIn("reach    mapped: peers reach it at 203.0.113.5:40000 (through the router's "
                      "port mapping); the DHT's UDP port is mapped too (40001)",
                      cli.render_status({"reachability": reach}, 0.0))  # fmt: skip

    def test_status_markets_line(self) -> None:
        """The markets carried, then those whose history is stored but not carried."""
        status = {"network": "main", "pair": "ETH/USD", "markets": ["ETH/USD"],
                  "stored_markets": ["BTC/USD", "ETH/USD"]}  # fmt: skip
        self.assertIn("network  main  ETH/USD  (also stored, not carried: BTC/USD)",
                      cli.render_status(status, 0.0))  # fmt: skip
        status["markets"] = ["ETH/USD", "BTC/USD"]
        self.assertIn("network  main  ETH/USD, BTC/USD", cli.render_status(status, 0.0))
        one = {"network": "main", "pair": "BTC/USD"}
        self.assertIn("network  main  BTC/USD", cli.render_status(one, 0.0))

    def test_trade_statuses(self) -> None:
        base = {"id": "c" * 64, "price": "1", "amount": "2", "side": "buy", "taker": "d" * 64,
                "maker": "a" * 64, "time": 1_700_000_000_500}  # fmt: skip
        rows = cli.render_trades([{**base, "status": s} for s in ("final", "settled")]
                                 + [{**base, "settled": False}, base])  # fmt: skip
        self.assertEqual([row.split()[5] for row in rows[1:]],
                         ["final", "settled", "tentative", "-"])  # fmt: skip
        order = {"id": "e" * 64, "side": "buy", "type": "limit", "amount": "2", "price": "1",
                 "status": "filled", "filled": "2", "remaining": "0",
                 "trades": [{**base, "status": "final"}]}  # fmt: skip
        self.assertEqual(cli.render_order(order)[2], f"  trade {'c' * 12}: 2 @ 1 (final)")
        gist = cli.render_event(cli.ServerEvent("trade", json.dumps({**base, "status": "final"})),
                                0.0)  # fmt: skip
        self.assertIn("buy 2 @ 1 final (trade", gist)

    def test_times(self) -> None:
        """Every instant of the API is unix ms (UTC), every duration ms in a field ``..._ms``."""
        status = {"node_id": "d" * 40, "uptime_ms": 3_725_999, "state_hash": "e" * 64,
                  "ordering": "author", "settled_through_ms": 1_796_454_723_120,
                  "dht": {"port": 3000, "announced_at": 1_796_454_700_999}}  # fmt: skip
        lines = cli.render_status(status, 0.0)
        self.assertTrue(lines[0].endswith(", up 1h 2m)"), lines[0])
        self.assertIn(f"state    {'e' * 16}  settled through 2026-12-05 07:12:03.120 UTC", lines)
        self.assertIn("dht      on (UDP port 3000), 0 in the routing table, 0 peers found, "
                      "announced 2026-12-05 07:11:40 UTC", lines)  # fmt: skip
        nothing = cli.render_status({**status, "settled_through_ms": None}, 0.0)
        self.assertIn(f"state    {'e' * 16}  nothing settled yet", nothing)
        both = {
            "port": 3000,
            "announced_at": None,
            "routing_table_size": 12,
            "peers_found": 2,
            "families": {"ipv4": {"routing_table_size": 8}, "ipv6": {"routing_table_size": 4}},
        }
        self.assertIn(
            "dht      on (UDP port 3000), 12 in the routing table (IPv4 8, IPv6 4), "
            "2 peers found, not announced yet",
            cli.render_status({**status, "dht": both}, 0.0),
        )
        six = {**both, "routing_table_size": 4, "families": {"ipv6": {"routing_table_size": 4}}}
        self.assertIn("dht      on (UDP port 3000), 4 in the routing table over IPv6, "
                      "2 peers found, not announced yet",
                      cli.render_status({**status, "dht": six}, 0.0))  # fmt: skip

        peer = {"node_id": "a" * 40, "address": "127.0.0.1:3001", "direction": "inbound",
                "rtt_ms": 3, "connected_since": 1_700_000_000_000}  # fmt: skip
        row = cli.render_peers([peer], 1_700_000_065.5)[1]
        self.assertIn("  3 ms  ", row)
        self.assertIn("  1m 5s  ", row)
        ban = {"address": "192.0.2.7", "node_id": None, "reason": "bad frame",
               "banned_at": 1_700_000_000_000, "until": 1_700_086_400_000}  # fmt: skip
        self.assertIn("2023-11-14 22:13:20  2023-11-15 22:13:20  bad frame",
                      cli.render_bans([ban])[1])  # fmt: skip

    def test_duration(self) -> None:
        self.assertEqual([cli.duration(s) for s in (5, 65, 3700, 90000)],
                         ["5s", "1m 5s", "1h 1m", "1d 1h"])  # fmt: skip
