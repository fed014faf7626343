"""
End-to-end tests of the whole program: real ``twistd bitfi`` node processes.

Data path: the test spawns ``twistd -n bitfi`` children -> the nodes link to
each other over 127.0.0.1 -> the test watches them through each node's HTTP
API (``GET /status``, ``GET /peers``), through the ``bitfi`` command run
against that API, and through their exit statuses.

The harness (:class:`~tests.integration.processes.NodeProcess`, one node;
:class:`~tests.integration.processes.ProcessTestCase`, which kills whatever
is still running after each test) is in :mod:`tests.integration.processes`.
Waits poll under an overall deadline, a hang guard rather than a speed bound
(how fast a node starts, stops and gives up a busy port is
``benchmarks/bench_lifecycle.py``'s); the only fixed wait is the one test 3
is about (staying alive).

The SIGKILL test runs twice: as written (:class:`SigkillTests`), and in
fair order (:class:`FairSigkillTests`), where the two nodes and a third are
the network's three witnesses and the node killed is a witness.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import treq
from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.http_headers import Headers

from bitfitech.testing import free_ports, global_reactor

from .processes import (
    BUSY_PORT_DEADLINE,
    REPO_ROOT,
    REQUEST_TIMEOUT,
    ClusterTacProcess,
    NodeProcess,
    ProcessTestCase,
    assert_clean_exit,
    child_environment,
    describe_all,
    free_port_run,
    stop_process,
    witness_arguments,
)


class NodeProcessTests(ProcessTestCase):
    """Nodes as separate processes: linking, restart, bad bootstrap, busy port."""

    async def test_three_nodes_link_and_stop_cleanly(self) -> None:
        """
        Three nodes chained by --bootstrap (1 <- 2 <- 3) all link to each
        other, and each shuts down in order on SIGTERM (see
        L{CLEAN_TERM_STATUSES} for the exit status).
        """
        ports = free_ports(6)
        nodes: list[NodeProcess] = []
        ids: dict[str, str] = {}
        for i in range(3):
            node = self.spawn_node(
                f"node{i + 1}",
                ports[2 * i],
                ports[2 * i + 1],
                bootstrap=[nodes[-1].port] if nodes else [],
            )
            api_status = await node.wait_for_api()
            self.assertEqual(api_status["p2p"]["port"], node.port, node.describe())
            ids[node.name] = api_status["node_id"]
            nodes.append(node)
        self.assertEqual(len(set(ids.values())), 3, f"node ids not distinct: {ids}")

        last_peers: dict[str, Any] = {}

        async def all_linked() -> bool:
            for node in nodes:
                last_peers[node.name] = await node.get_json("/peers")
            for node in nodes:
                seen = {row["node_id"] for row in last_peers[node.name]}
                others = {ids[other.name] for other in nodes if other is not node}
                if not others <= seen:
                    return False
            return True

        await self.eventually(
            all_linked,
            "every node sees the other two in GET /peers",
            lambda: f"node ids: {ids}\nlast /peers: {json.dumps(last_peers, indent=1)}",
        )

        statuses = await gatherResults([Deferred.fromCoroutine(stop_process(n)) for n in nodes])
        for node, status in zip(nodes, statuses, strict=True):
            assert_clean_exit(self, node, status)

    async def test_dht_links_nodes_given_no_bootstrap_peer(self) -> None:
        """
        Two nodes with the DHT on and no --bootstrap peer: the second, told
        only the first's DHT address (--dht-bootstrap), finds it under the
        network's info-hash and links to it; /status shows the DHT.
        """
        ports = free_ports(4)
        first = self.spawn_node("first", ports[0], ports[1], dht=True)
        first_status = await first.wait_for_api()
        dht = first_status["dht"]
        self.assertEqual(dht["port"], first.port, "the DHT port defaults to the P2P port's number")
        self.assertIsNone(first_status["mdns"])
        second = self.spawn_node(
            "second", ports[2], ports[3], dht=True,
            extra_args=["--dht-bootstrap", f"127.0.0.1:{dht['port']}"],
        )  # fmt: skip
        await second.wait_for_api()
        first_id = first_status["node_id"]

        async def linked() -> bool:
            rows = await second.get_json("/peers")
            return any(row["node_id"] == first_id for row in rows)

        await self.eventually(linked, "the second node links to the first", lambda: "")
        status = await second.get_json("/status")
        self.assertGreaterEqual(status["dht"]["routing_table_size"], 1, second.describe())
        self.assertEqual(status["dht"]["info_hash"], dht["info_hash"])

    async def test_restart_reconnects_from_address_book(self) -> None:
        """
        A node restarted on its data directory without --bootstrap dials
        the peer it learned before from its persisted address book.

        A never dials (``--outbound 0``), so the new link can only be B's.
        """
        ports = free_ports(4)
        a = self.spawn_node("A", ports[0], ports[1], extra_args=["--outbound", "0"])
        a_id = (await a.wait_for_api())["node_id"]
        b = self.spawn_node("B", ports[2], ports[3], bootstrap=[a.port])
        b_id = (await b.wait_for_api())["node_id"]

        last_peers: dict[str, Any] = {}

        def linked(b_node: NodeProcess) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                last_peers["A"] = await a.get_json("/peers")
                last_peers[b_node.name] = await b_node.get_json("/peers")
                b_rows = [r for r in last_peers[b_node.name] if r["node_id"] == a_id]
                a_sees_b = any(r["node_id"] == b_id for r in last_peers["A"])
                return a_sees_b and any(r["direction"] == "outbound" for r in b_rows)

            return check

        def details() -> str:
            return f"A={a_id} B={b_id}\nlast /peers: {json.dumps(last_peers, indent=1)}"

        await self.eventually(linked(b), "B has an outbound link to A", details)

        self.nodes.remove(b)  # B stopping is expected from here on
        status = await stop_process(b)
        assert_clean_exit(self, b, status)

        b2 = self.spawn_node("B-restarted", b.port, b.api_port, data_dir=b.data_dir)
        self.assertNotIn("--bootstrap", b2.argv())
        b2_status = await b2.wait_for_api()
        self.assertEqual(b2_status["node_id"], b_id, "the node key did not persist")
        await self.eventually(linked(b2), "restarted B has an outbound link to A again", details)

    async def test_sigterm_with_stuck_peers_then_resumes_from_checkpoint(self) -> None:
        """
        SIGTERM stops a node whose peers are stuck (one linked node frozen
        with SIGSTOP, so it reads nothing; one TCP connection that never
        says a word, so its TLS handshake never completes): the links are
        aborted after a grace, the market wrote its checkpoint first, and
        the restarted node resumes from it instead of replaying its journal.

        (The stop's speed, with its 5 s target, is bench_lifecycle's figure.)
        """
        ports = free_ports(4)
        a = self.spawn_node("A", ports[0], ports[1])
        await a.wait_for_api()
        b = self.spawn_node("B", ports[2], ports[3], bootstrap=[a.port])
        await b.wait_for_api()

        async def linked() -> bool:
            return len(await a.get_json("/peers")) >= 1

        await self.eventually(linked, "A and B are linked", lambda: "")
        order = {"side": "buy", "price": "100", "amount": "1"}
        for _ in range(3):
            status, body = await a.post_json("/orders/batch", {"orders": [order] * 50})
            self.assertEqual(status, 201, body)

        silent = socket.create_connection(("127.0.0.1", a.port))
        self.addCleanup(silent.close)
        b.pause()
        self.addCleanup(b.resume)
        for _ in range(3):
            status, body = await a.post_json("/orders/batch", {"orders": [order] * 50})
            self.assertEqual(status, 201, body)

        self.nodes.remove(a)  # A stopping is expected from here on
        assert_clean_exit(self, a, await stop_process(a))
        self.assertIn("Aborting", a.output, a.describe())

        restarted = self.spawn_node("A-restarted", a.port, a.api_port, data_dir=a.data_dir)
        market = (await restarted.wait_for_api())["market"]
        self.assertEqual(market["loaded_events"], 300, restarted.describe())
        self.assertEqual(market["resumed_at"], 300, restarted.describe())

    async def test_refused_bootstrap_keeps_running(self) -> None:
        """
        A node whose only bootstrap address refuses connections stays up and
        keeps serving ``/status`` for at least 3 s.
        """
        reactor = global_reactor()
        dead_port, port, api_port = free_ports(3)
        node = self.spawn_node("lonely", port, api_port, bootstrap=[dead_port])
        first = await node.wait_for_api()
        first_at = reactor.seconds()
        await deferLater(reactor, 3.0, lambda: None)  # the point of the test: time passes
        self.assertTrue(node.running, node.describe())
        second = await node.get_json("/status")
        self.assertTrue(node.running, node.describe())
        self.assertGreaterEqual(reactor.seconds() - first_at, 3.0)
        self.assertEqual(second["node_id"], first["node_id"])
        self.assertGreater(second["uptime_ms"], first["uptime_ms"], node.describe())
        self.assertEqual(second["peers"]["outbound"], 0, node.describe())
        self.assertEqual(await node.get_json("/peers"), [], node.describe())

    async def test_busy_port_exits_nonzero_naming_port(self) -> None:
        """
        A node told to listen on a port already in use exits non-zero, and
        its output names that port.
        """
        reactor = global_reactor()
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        busy = int(holder.getsockname()[1])
        (api_port,) = free_ports(1)

        node = self.spawn_node("busy", busy, api_port)
        d = node.when_ended()
        d.addTimeout(BUSY_PORT_DEADLINE, reactor)
        try:
            status = await d
        except TimeoutError:
            self.fail(
                f"node on busy port {busy} still running after {BUSY_PORT_DEADLINE} s\n"
                f"{node.describe()}"
            )
        self.assertNotEqual(status, 0, f"exited 0 on busy port {busy}\n{node.describe()}")
        self.assertIn(str(busy), node.output, f"output does not name port {busy}")

    async def test_node_as_its_own_witness_then_a_second_node(self) -> None:
        """
        ``make run``'s default, as processes: ``bitfi node-id`` makes a key
        and prints the node's address, the node names itself as the one
        witness (fair order, n = 1); a second node naming the same witness
        links, and a trade between them becomes final on both.
        """
        ports = free_ports(4)
        data_dir = os.path.abspath(self.mktemp())
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "bitfitech.cli", "node-id", "--data-dir", data_dir, "--port", str(ports[0]),
             "--host", "127.0.0.1"],
            env=child_environment(), path=str(REPO_ROOT), reactor=global_reactor(),
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        self.assertIn(b"made a new node key in", err)
        witness_address = out.decode("ascii").strip()
        witness_arg = ["--witness", witness_address]
        witness = self.spawn_node("witness", ports[0], ports[1], data_dir=data_dir,
                                  extra_args=witness_arg)  # fmt: skip
        status = await witness.wait_for_api()
        self.assertEqual(f"{status['node_id']}@127.0.0.1:{ports[0]}", witness_address)
        self.assertEqual(status["ordering"], "fair")
        self.assertEqual((status["witnesses"]["n"], status["witnesses"]["me"]), (1, 0))
        self.assertIn("This node is witness 1 of 1", witness.output)
        plain = self.spawn_node("plain", ports[2], ports[3], extra_args=witness_arg)
        await plain.wait_for_api()
        last: dict[str, Any] = {}

        async def stamps_held() -> bool:
            last["plain"] = await plain.get_json("/status")
            [chain] = last["plain"]["witnesses"]["chains"]
            return bool(chain["seq"] > 0 and last["plain"]["peers"]["outbound"] == 1)

        await self.eventually(stamps_held, "the plain node holds the witness's stamps",
                              lambda: json.dumps(last, indent=1))  # fmt: skip
        code, _ = await witness.post_json("/orders", {"side": "sell", "price": "100",
                                                      "amount": "1"})  # fmt: skip
        self.assertEqual(code, 201)

        async def sell_seen() -> bool:
            return bool((await plain.get_json("/status"))["events"] == 1)

        await self.eventually(sell_seen, "the plain node holds the sell", lambda: "")
        code, _ = await plain.post_json("/orders", {"side": "buy", "price": "100",
                                                    "amount": "0.5"})  # fmt: skip
        self.assertEqual(code, 201)

        async def final() -> bool:
            for node in (witness, plain):
                last[node.name] = await node.get_json("/trades")
            return all([t["status"] for t in last[n]["trades"]] == ["final"] for n in last)

        await self.eventually(final, "the trade final on both nodes",
                              lambda: json.dumps(last, indent=1))  # fmt: skip
        statuses = await gatherResults(
            [Deferred.fromCoroutine(stop_process(n)) for n in self.nodes]
        )
        for node, exit_status in zip(self.nodes, statuses, strict=True):
            assert_clean_exit(self, node, exit_status)

    async def test_two_markets_api_cli_and_dashboard(self) -> None:
        """
        ``twistd -n bitfi --market BTC/USD --market ETH/USD``: ``GET /markets``
        lists both, the first first, and both books answer; ``bitfi --market
        ETH/USD buy`` places an order in ETH/USD's book only, which ``bitfi
        --market ETH/USD book`` prints (``bitfi book``, the first market's,
        stays empty); ``GET /`` from a browser is the dashboard page.
        """
        port, api_port = free_ports(2)
        markets = ["--market", "BTC/USD", "--market", "ETH/USD"]
        node = self.spawn_node("two-markets", port, api_port, extra_args=markets)
        status = await node.wait_for_api()
        self.assertEqual(status["markets"], ["BTC/USD", "ETH/USD"], node.describe())
        rows = await node.get_json("/markets")
        self.assertEqual([(row["market"], row["slug"]) for row in rows],
                         [("BTC/USD", "BTC-USD"), ("ETH/USD", "ETH-USD")])  # fmt: skip
        for slug in ("BTC-USD", "ETH-USD"):
            book = await node.get_json(f"/markets/{slug}/book")
            self.assertEqual(book, {"bids": [], "asks": []}, slug)

        out, err, code = await self.bitfi(node, "--market", "ETH/USD", "buy", "1.5", "2000")
        self.assertEqual(code, 0, f"{out}{err}")
        [order_id] = [line.split()[1] for line in out.splitlines() if line.startswith("order ")]
        eth_book = await node.get_json("/markets/ETH-USD/book")
        self.assertEqual([[Decimal(price), Decimal(amount), count]
                          for price, amount, count in eth_book["bids"]],
                         [[Decimal("2000"), Decimal("1.5"), 1]])  # fmt: skip
        self.assertEqual(await node.get_json("/markets/BTC-USD/book"), {"bids": [], "asks": []})
        order = await node.get_json(f"/markets/ETH-USD/orders/{order_id}")
        self.assertEqual((order["id"], order["side"]), (order_id, "buy"))
        response = await self.http.get(
            f"http://127.0.0.1:{api_port}/markets/BTC-USD/orders/{order_id}",
            timeout=REQUEST_TIMEOUT,
        )
        self.assertEqual(response.code, 404, await treq.content(response))

        out, err, code = await self.bitfi(node, "--market", "ETH/USD", "book")
        self.assertEqual(code, 0, f"{out}{err}")
        [bid] = [line.split() for line in out.splitlines() if line.startswith("bid")]
        self.assertEqual(
            [Decimal(bid[1]), Decimal(bid[2]), bid[3]], [Decimal("2000"), Decimal("1.5"), "1"]
        )
        out, err, code = await self.bitfi(node, "book")
        self.assertEqual((code, out), (0, "the book is empty\n"), err)

        response = await self.http.get(
            f"http://127.0.0.1:{api_port}/", headers=Headers({"Accept": ["text/html"]}),
            timeout=REQUEST_TIMEOUT,
        )  # fmt: skip
        page = await treq.content(response)
        self.assertEqual(response.code, 200, page)
        [content_type] = response.headers.getRawHeaders("content-type")
        self.assertTrue(content_type.startswith("text/html"), content_type)
        self.assertTrue(page.lstrip().lower().startswith(b"<!doctype html"), page[:200])
        self.assertIn(b"/static/app.js", page)
        assert_clean_exit(self, node, await stop_process(node))

    async def bitfi(self, node: NodeProcess, *args: str) -> tuple[str, str, int]:
        """
        Run the ``bitfi`` command on C{node}'s API, none of its ``BITFI_*``
        variables set: its stdout, stderr and exit status.
        """
        env = {k: v for k, v in child_environment().items() if not k.startswith("BITFI_")}
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "bitfitech.cli", "--node", f"http://127.0.0.1:{node.api_port}", *args],
            env=env, path=str(REPO_ROOT), reactor=global_reactor(),
        )  # fmt: skip
        return out.decode("utf-8"), err.decode("utf-8"), code

    async def test_local_cluster_tac(self) -> None:
        """
        ``twistd -ny tac/local-cluster.tac``: the plain node (node 4) links
        to the three witnesses, says ``"ordering": "fair"``, holds every
        witness's stamps and sees its trade go final; the process stops in
        order.
        """
        base = free_port_run(4)
        data_dir = os.path.abspath(self.mktemp())
        cluster = ClusterTacProcess("local-cluster", base_port=base, data_dir=data_dir,
                                    http=self.http)  # fmt: skip
        Path(cluster.data_dir).parent.mkdir(parents=True, exist_ok=True)
        cluster.start()
        self.addCleanup(cluster.kill)
        self.nodes.append(cluster)
        await cluster.wait_for_api()
        last: dict[str, Any] = {}

        async def fair_and_linked() -> bool:
            status = last["status"] = await cluster.get_json("/status")
            chains = status["witnesses"]["chains"]
            return bool(
                status["ordering"] == "fair" and status["witnesses"]["me"] is None
                and len(chains) == 3 and all(c["seq"] > 0 for c in chains)
                and status["peers"]["outbound"] + status["peers"]["inbound"] >= 3
                and status["witnesses"]["final_through_ms"] is not None
            )  # fmt: skip

        await self.eventually(fair_and_linked, "node 4 in fair order, holding 3 witnesses' stamps",
                              lambda: json.dumps(last, indent=1))  # fmt: skip
        code, _ = await cluster.post_json("/orders", {"side": "sell", "price": "100",
                                                      "amount": "1"})  # fmt: skip
        self.assertEqual(code, 201)
        node1 = f"http://127.0.0.1:{base + 10000}"

        async def sell_at_node1() -> bool:
            response = await self.http.get(f"{node1}/status", timeout=REQUEST_TIMEOUT)
            return bool(json.loads(await treq.content(response))["events"] == 1)

        await self.eventually(sell_at_node1, "node 1 holds the sell", lambda: "")
        buy = b'{"side": "buy", "price": "100", "amount": "1"}'
        response = await self.http.post(f"{node1}/orders", data=buy, timeout=REQUEST_TIMEOUT)
        self.assertEqual(response.code, 201, await treq.content(response))

        async def final() -> bool:
            last["trades"] = await cluster.get_json("/trades")
            return bool([t["status"] for t in last["trades"]["trades"]] == ["final"])

        await self.eventually(final, "the trade final at node 4", lambda: json.dumps(last))
        assert_clean_exit(self, cluster, await stop_process(cluster))


class SigkillTests(ProcessTestCase):
    """
    A node killed with SIGKILL loses nothing it acknowledged.

    :cvar witnesses: 0, a network without witnesses (author order); a
        subclass sets 3, and the nodes of the test, with a third one,
        become the network's witnesses.
    """

    witnesses = 0

    def spawn_nodes(self) -> tuple[NodeProcess, NodeProcess, list[NodeProcess]]:
        """
        A, and B bootstrapped to A; with witnesses, A, B and C, each naming
        all three as witnesses.

        :return: A, B, and every node started.
        """
        ports = free_ports(2 * max(2, self.witnesses))
        data_dirs = [os.path.abspath(self.mktemp()) for _ in range(len(ports) // 2)]
        fair = witness_arguments(data_dirs, ports[::2]) if self.witnesses else []
        nodes: list[NodeProcess] = []
        for i, data_dir in enumerate(data_dirs):
            bootstrap = [nodes[0].port] if nodes else []
            node = self.spawn_node("ABC"[i], ports[2 * i], ports[2 * i + 1], data_dir=data_dir,
                                   bootstrap=bootstrap, extra_args=fair)  # fmt: skip
            nodes.append(node)
        return nodes[0], nodes[1], nodes

    async def test_sigkill_loses_no_acknowledged_order(self) -> None:
        """
        A node killed with SIGKILL while orders stream in restarts with every
        order it acknowledged (201), and it and its peers end with the same
        book: acknowledgement waits for the durable journal commit.

        With witnesses, A is a witness: it signs stamps while it streams
        orders, restarts with its chain, and no node finds it faulty.
        """
        a, b, nodes = self.spawn_nodes()
        for node in nodes:
            await node.wait_for_api()
        if self.witnesses:
            await self.linked(nodes)
        acknowledged: list[str] = []
        failures: list[str] = []

        async def place(n: int) -> None:
            side = "buy" if n % 2 else "sell"
            price = f"{100 + n % 7}.{n % 100:02d}"
            try:
                code, doc = await a.post_json(
                    "/orders", {"side": side, "price": price, "amount": "1"}
                )
            except Exception as e:  # killed mid-request: not acknowledged
                failures.append(repr(e))
                return
            if code == 201:
                acknowledged.append(doc["id"])

        async def stream() -> None:
            n = 0
            while a.running:
                await gatherResults([Deferred.fromCoroutine(place(n + k)) for k in range(8)])
                n += 8

        streaming = Deferred.fromCoroutine(stream())
        reactor = global_reactor()
        while len(acknowledged) < 150:
            await deferLater(reactor, 0.02, lambda: None)
        self.nodes.remove(a)  # A ending is the point from here on
        await a.kill()
        await streaming
        self.assertGreaterEqual(len(acknowledged), 150)

        a2 = self.spawn_node("A-restarted", a.port, a.api_port, data_dir=a.data_dir,
                             extra_args=a.extra_args)  # fmt: skip
        status = await a2.wait_for_api()
        self.assertGreaterEqual(status["events"], len(acknowledged), a2.describe())
        for order_id in acknowledged:
            doc = await a2.get_json(f"/orders/{order_id}")
            self.assertEqual(doc["id"], order_id)

        live = [a2, *nodes[1:]]
        last: dict[str, Any] = {}

        async def converged() -> bool:
            for node in live:
                last[node.name] = await node.get_json("/status")
            states = {(doc["state_hash"], doc["events"]) for doc in last.values()}
            # in fair order, also every event placed (none waits for a fair time)
            waiting = sum(doc["witnesses"].get("waiting_events", 0) for doc in last.values())
            return len(states) == 1 and not waiting

        await self.eventually(
            converged, "A and its peers hold the same book", lambda: json.dumps(last, indent=1)
        )
        for order_id in acknowledged[-20:]:
            doc = await b.get_json(f"/orders/{order_id}")
            self.assertEqual(doc["id"], order_id)
        if self.witnesses:
            for name, doc in last.items():
                self.assertEqual(doc["witnesses"]["flagged"], {}, f"{name}: {describe_all(live)}")
                self.assertEqual(doc["market"]["revisions"], 0, name)

    async def linked(self, nodes: list[NodeProcess]) -> None:
        """Wait until each of C{nodes} sees all the others in ``GET /peers``."""
        ids = {node.name: (await node.get_json("/status"))["node_id"] for node in nodes}
        last: dict[str, Any] = {}

        async def all_linked() -> bool:
            for node in nodes:
                last[node.name] = {row["node_id"] for row in await node.get_json("/peers")}
            return all(set(ids.values()) - {ids[name]} <= seen for name, seen in last.items())

        await self.eventually(all_linked, "every node linked to the others", lambda: str(last))


class FairSigkillTests(SigkillTests):
    """:class:`SigkillTests` in fair order: A, B and C are the network's three witnesses."""

    witnesses = 3
