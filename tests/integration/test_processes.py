"""
End-to-end tests of the whole program: real ``twistd bitfi`` node processes.

Data path: the test spawns ``twistd -n bitfi`` children -> the nodes link to
each other over 127.0.0.1 -> the test watches them through each node's HTTP
API (``GET /status``, ``GET /peers``) and through their exit statuses.

:class:`NodeProcess` is the reusable part: it starts one node, keeps its
stdout and stderr in memory (every failure message carries them), reads its
API and stops it.  Each test registers cleanups that kill whatever is still
running, so a failing test leaves no process, socket or connection behind.
Waits poll with :func:`~twisted.internet.task.deferLater` under an overall
deadline, a hang guard rather than a speed bound (how fast a node starts,
stops and gives up a busy port is ``benchmarks/bench_lifecycle.py``'s);
the only fixed wait is the one test 3 is about (staying alive).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, TimeoutError, gatherResults, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from bitfitech.config import ENVIRONMENT
from bitfitech.testing import HANG_GUARD, free_ports, global_reactor

#: the checkout's root: its ``bitfitech`` package and ``twisted/plugins``
REPO_ROOT = Path(__file__).resolve().parents[2]

#: ``python -c`` program that is ``twistd`` (``python -m twisted`` is ``twist``,
#: which has no ``-n``/``--pidfile``)
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

#: how often conditions are polled
POLL_INTERVAL = 0.1
#: how long a node may take until its API answers (a hang guard)
API_DEADLINE = HANG_GUARD
#: how long one HTTP request may take
REQUEST_TIMEOUT = 5.0
#: how long a SIGTERMed node may take to exit before the test gives up: a
#: hang guard (the speed, with its 5 s target, is bench_lifecycle's figure)
STOP_DEADLINE = HANG_GUARD
#: how long a node on a busy port may take to exit before the test gives up:
#: a hang guard (the speed, with its 10 s target, is bench_lifecycle's figure)
BUSY_PORT_DEADLINE = HANG_GUARD
#: how long nodes may take to link up (a hang guard)
LINK_DEADLINE = HANG_GUARD
#: exit statuses of a node that shut down cleanly after SIGTERM.  twistd
#: (``app._exitWithSignal``) re-raises the signal that stopped its reactor once
#: the reactor has shut down, so its status says "killed by SIGTERM" (-15
#: here, 143 in a shell) however clean the shutdown was; 0 is accepted too.
CLEAN_TERM_STATUSES = (0, -signal.SIGTERM)
#: lines twistd logs at the end of an orderly shutdown
CLEAN_SHUTDOWN_LINES = ("Received SIGTERM, shutting down.", "Main loop terminated.")


def child_environment() -> dict[str, str]:
    """
    The environment of a node process: ours, minus every variable bitfi
    reads as an option default, with the checkout first on C{PYTHONPATH}.
    """
    env = dict(os.environ)
    for names in ENVIRONMENT.values():
        for name in names:
            env.pop(name, None)
    env.pop("XDG_DATA_HOME", None)
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _OutputCollector(ProcessProtocol):
    """Keeps a child's stdout and stderr (interleaved) and reports its end."""

    def __init__(self, ended: Callable[[int], None]) -> None:
        self.output = bytearray()
        self._ended = ended

    def outReceived(self, data: bytes) -> None:
        self.output.extend(data)

    def errReceived(self, data: bytes) -> None:
        self.output.extend(data)

    def processEnded(self, reason: Failure) -> None:
        signal = getattr(reason.value, "signal", None)
        code = getattr(reason.value, "exitCode", None)
        if signal is not None:
            status = -int(signal)
        elif code is not None:
            status = int(code)
        else:
            status = -1
        self._ended(status)


class NodeProcess:
    """
    One ``twistd -n bitfi`` child process and a client for its HTTP API.

    :ivar name: names the node in failure messages.
    :ivar port: its P2P port on 127.0.0.1.
    :ivar api_port: its HTTP API port on 127.0.0.1.
    :ivar data_dir: its data directory.
    :ivar status: the exit status once ended: the exit code, or minus the
        signal number that killed it; ``None`` while running or unstarted.
    """

    def __init__(
        self,
        name: str,
        *,
        port: int,
        api_port: int,
        data_dir: str,
        http: HTTPClient,
        bootstrap: Sequence[int] = (),
        extra_args: Sequence[str] = (),
        dht: bool = False,
    ) -> None:
        """
        :param http: the client for API requests (the test owns its pool).
        :param bootstrap: P2P ports on 127.0.0.1 to pass as ``--bootstrap``.
        :param extra_args: further ``bitfi`` options.
        :param dht: whether the DHT runs (on 127.0.0.1; mDNS never runs,
            so nothing leaves loopback).
        """
        self.name = name
        self.port = port
        self.api_port = api_port
        self.data_dir = data_dir
        self.bootstrap = tuple(bootstrap)
        self.extra_args = tuple(extra_args)
        self.dht = dht
        self.status: int | None = None
        self.environ: dict[str, str] = {}
        """Variables added to the child's environment."""
        self._http = http
        self._transport: IProcessTransport | None = None
        self._collector: _OutputCollector | None = None
        self._waiters: list[Deferred[int]] = []

    def argv(self) -> list[str]:
        """The child's command line."""
        args = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=-", "bitfi"]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--api-host", "127.0.0.1", "--api-port", str(self.api_port)]
        args += ["--data-dir", self.data_dir, "--no-mdns"]
        # every node shares 127.0.0.1: the per-address limits must not bite
        args += ["--max-inbound-per-ip", "64", "--max-handshakes-per-ip", "64"]
        if not self.dht:
            args.append("--no-dht")
        for port in self.bootstrap:
            args += ["--bootstrap", f"127.0.0.1:{port}"]
        return args + list(self.extra_args)

    def start(self) -> None:
        """Spawn the node (once); its working directory is its data directory's parent."""
        if self._transport is not None:
            raise RuntimeError(f"{self.name} was already started")
        self._collector = _OutputCollector(self._ended)
        argv = self.argv()
        self._transport = global_reactor().spawnProcess(
            self._collector,
            argv[0],
            argv,
            env={**child_environment(), **self.environ},
            path=str(Path(self.data_dir).parent),
        )

    @property
    def running(self) -> bool:
        """Whether the process was started and has not ended."""
        return self._transport is not None and self.status is None

    @property
    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        data = self._collector.output if self._collector is not None else b""
        return bytes(data).decode("utf-8", "replace")

    def describe(self) -> str:
        """The node's name, state and output, for failure messages."""
        state = "running" if self.running else f"exit status {self.status}"
        return f"----- {self.name} ({state}) output -----\n{self.output}----- end {self.name} -----"

    def _ended(self, status: int) -> None:
        self.status = status
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(status)

    def when_ended(self) -> Deferred[int]:
        """A new Deferred that fires with the exit status when the process ends."""
        if self.status is not None:
            return succeed(self.status)
        waiter: Deferred[int] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _signal(self, name: str) -> None:
        if self._transport is None or self.status is not None:
            return
        try:
            self._transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def terminate(self, within: float | None = None) -> Deferred[int]:
        """
        Send SIGTERM and wait for the process to end.

        :param within: fail with L{twisted.internet.defer.TimeoutError} if it
            has not ended after this many seconds (it is left running).
        :return: a Deferred firing with the exit status.
        """
        self._signal("TERM")
        d = self.when_ended()
        if within is not None:
            d.addTimeout(within, global_reactor())
        return d

    def kill(self) -> Deferred[int]:
        """Send SIGKILL if still running; fires with the exit status once ended."""
        if self._transport is None:
            return succeed(0)
        self._signal("KILL")
        return self.when_ended()

    async def get_json(self, path: str) -> Any:
        """C{GET path} from the node's API and decode the JSON body (a 200 only)."""
        url = f"http://127.0.0.1:{self.api_port}{path}"
        response = await self._http.get(url, timeout=REQUEST_TIMEOUT)
        body = await treq.content(response)
        if response.code != 200:
            raise AssertionError(f"{self.name}: GET {path} answered {response.code}: {body!r}")
        return json.loads(body)

    async def post_json(self, path: str, body: object) -> tuple[int, Any]:
        """C{POST path} with a JSON body; return the status and the decoded answer."""
        url = f"http://127.0.0.1:{self.api_port}{path}"
        response = await self._http.post(
            url, data=json.dumps(body).encode("utf-8"), timeout=REQUEST_TIMEOUT
        )
        return response.code, json.loads(await treq.content(response))

    async def wait_for_api(self, within: float = API_DEADLINE) -> dict[str, Any]:
        """
        Poll ``GET /status`` until it answers; fail at once if the process ends.

        :return: the first ``/status`` answer.
        """
        reactor = global_reactor()
        give_up = reactor.seconds() + within
        last_error = "no attempt"
        while True:
            if not self.running:
                raise AssertionError(
                    f"{self.name} ended before its API answered\n{self.describe()}"
                )
            try:
                status: dict[str, Any] = await self.get_json("/status")
                return status
            except Exception as e:
                last_error = repr(e)
            if reactor.seconds() >= give_up:
                raise AssertionError(
                    f"{self.name}: API not answering after {within}s (last error: "
                    f"{last_error})\n{self.describe()}"
                )
            await deferLater(reactor, POLL_INTERVAL, lambda: None)


class ClusterTacProcess(NodeProcess):
    """
    ``twistd -ny tac/local-cluster.tac``: its four nodes in one process, on
    ``base_port`` to ``base_port + 3``; the API client talks to the last
    one, the plain node.
    """

    def __init__(self, name: str, *, base_port: int, data_dir: str, http: HTTPClient) -> None:
        super().__init__(name, port=base_port + 3, api_port=base_port + 10003,
                         data_dir=data_dir, http=http)  # fmt: skip
        self.environ = {"BASE_PORT": str(base_port), "BITFI_DATA_DIR": data_dir}

    def argv(self) -> list[str]:
        tac = str(REPO_ROOT / "tac" / "local-cluster.tac")
        return [sys.executable, "-c", TWISTD, "-ny", tac, "--pidfile=", "--logfile=-"]


def free_port_run(count: int, tries: int = 50) -> int:
    """
    The first of C{count} consecutive ports free on 127.0.0.1 for TCP and
    UDP, whose numbers + 10000 are free for TCP too (``local-cluster.tac``'s
    P2P, DHT and API ports); a hang guard of C{tries} random bases.
    """
    for _ in range(tries):
        base = random.randrange(20000, 30000)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                for number, kind in ((port, socket.SOCK_STREAM), (port, socket.SOCK_DGRAM),
                                     (port + 10000, socket.SOCK_STREAM)):  # fmt: skip
                    sock = socket.socket(socket.AF_INET, kind)
                    held.append(sock)
                    sock.bind(("127.0.0.1", number))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports in {tries} tries")


def _describe_all(nodes: Iterable[NodeProcess]) -> str:
    return "\n".join(node.describe() for node in nodes)


async def _stop(node: NodeProcess) -> int:
    """SIGTERM C{node}; return its exit status once it exited."""
    try:
        return await node.terminate(within=STOP_DEADLINE)
    except TimeoutError:
        raise AssertionError(
            f"{node.name} still running {STOP_DEADLINE}s after SIGTERM\n{node.describe()}"
        ) from None


def assert_clean_exit(test: TestCase, node: NodeProcess, status: int) -> None:
    """Assert that C{node} shut down in order after SIGTERM."""
    test.assertIn(status, CLEAN_TERM_STATUSES, f"unexpected exit status\n{node.describe()}")
    for line in CLEAN_SHUTDOWN_LINES:
        test.assertIn(line, node.output, f"no {line!r} in the output\n{node.describe()}")
    for sign in ("Traceback", "Unhandled error"):
        test.assertNotIn(sign, node.output, f"{sign!r} in the output\n{node.describe()}")


class NodeProcessTests(TestCase):
    """Nodes as separate processes: linking, restart, bad bootstrap, busy port."""

    timeout = 180

    def setUp(self) -> None:
        """An HTTP client whose pooled connections are closed after the test."""
        reactor = global_reactor()
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.nodes: list[NodeProcess] = []

    def spawn_node(
        self,
        name: str,
        port: int,
        api_port: int,
        *,
        bootstrap: Sequence[int] = (),
        data_dir: str | None = None,
        extra_args: Sequence[str] = (),
        dht: bool = False,
    ) -> NodeProcess:
        """Start a node whose process is killed after the test, whatever happens."""
        node = NodeProcess(
            name,
            port=port,
            api_port=api_port,
            data_dir=data_dir if data_dir is not None else self.mktemp(),
            http=self.http,
            bootstrap=bootstrap,
            extra_args=extra_args,
            dht=dht,
        )
        Path(node.data_dir).parent.mkdir(parents=True, exist_ok=True)
        node.start()
        self.addCleanup(node.kill)
        self.nodes.append(node)
        return node

    async def eventually(
        self,
        condition: Callable[[], Awaitable[bool]],
        what: str,
        details: Callable[[], str],
        within: float = LINK_DEADLINE,
    ) -> None:
        """
        Poll C{condition} until it holds; fail after C{within} seconds, or at
        once if a node process ends, with C{details()} and every node's output.
        """
        reactor = global_reactor()
        give_up = reactor.seconds() + within
        last_error = ""
        while True:
            ended = [node for node in self.nodes if not node.running]
            if ended:
                self.fail(
                    f"{', '.join(n.name for n in ended)} ended while waiting until {what}\n"
                    f"{details()}\n{_describe_all(self.nodes)}"
                )
            try:
                if await condition():
                    return
                last_error = ""
            except Exception as e:
                last_error = f"last error: {e!r}\n"
            if reactor.seconds() >= give_up:
                self.fail(
                    f"not {what} after {within}s\n{last_error}{details()}\n"
                    f"{_describe_all(self.nodes)}"
                )
            await deferLater(reactor, POLL_INTERVAL, lambda: None)

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

        statuses = await gatherResults([Deferred.fromCoroutine(_stop(n)) for n in nodes])
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
        status = await _stop(b)
        assert_clean_exit(self, b, status)

        b2 = self.spawn_node("B-restarted", b.port, b.api_port, data_dir=b.data_dir)
        self.assertNotIn("--bootstrap", b2.argv())
        b2_status = await b2.wait_for_api()
        self.assertEqual(b2_status["node_id"], b_id, "the node key did not persist")
        await self.eventually(linked(b2), "restarted B has an outbound link to A again", details)

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
        self.assertGreater(second["uptime_s"], first["uptime_s"], node.describe())
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

    async def test_sigkill_loses_no_acknowledged_order(self) -> None:
        """
        A node killed with SIGKILL while orders stream in restarts with every
        order it acknowledged (201), and it and its peer end with the same
        book: acknowledgement waits for the durable journal commit.
        """
        ports = free_ports(4)
        a = self.spawn_node("A", ports[0], ports[1])
        await a.wait_for_api()
        b = self.spawn_node("B", ports[2], ports[3], bootstrap=[a.port])
        await b.wait_for_api()
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

        a2 = self.spawn_node("A-restarted", a.port, a.api_port, data_dir=a.data_dir)
        status = await a2.wait_for_api()
        self.assertGreaterEqual(status["events"], len(acknowledged), a2.describe())
        for order_id in acknowledged:
            doc = await a2.get_json(f"/orders/{order_id}")
            self.assertEqual(doc["id"], order_id)

        last: dict[str, Any] = {}

        async def converged() -> bool:
            last["A"] = await a2.get_json("/status")
            last["B"] = await b.get_json("/status")
            same: bool = last["A"]["state_hash"] == last["B"]["state_hash"]
            return same and last["A"]["events"] == last["B"]["events"]

        await self.eventually(
            converged, "A and B hold the same book", lambda: json.dumps(last, indent=1)
        )
        for order_id in acknowledged[-20:]:
            doc = await b.get_json(f"/orders/{order_id}")
            self.assertEqual(doc["id"], order_id)

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
        statuses = await gatherResults([Deferred.fromCoroutine(_stop(n)) for n in self.nodes])
        for node, exit_status in zip(self.nodes, statuses, strict=True):
            assert_clean_exit(self, node, exit_status)

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
        assert_clean_exit(self, cluster, await _stop(cluster))
