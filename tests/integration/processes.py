"""
The harness of the end-to-end tests: real ``twistd bitfi`` node processes.

Data path: a test spawns ``twistd -n bitfi`` children -> the nodes link to
each other over 127.0.0.1 -> the test watches them through each node's HTTP
API (``GET /status``, ``GET /peers``, ``GET /trades``) and through their
exit statuses.

:class:`NodeProcess` starts one node, keeps its stdout and stderr in memory
(every failure message carries them), reads its API and stops it.
:class:`ProcessTestCase` gives each test an HTTP client and a cleanup that
kills whatever node it started is still running, so a failing test leaves
no process, socket or connection behind.  Waits poll with
:func:`~twisted.internet.task.deferLater` under an overall deadline, a hang
guard rather than a speed bound.  Not a test module (no ``test_`` prefix):
``test_processes`` and ``test_fair_processes`` use it.
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
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from bitfitech.address import PeerAddress
from bitfitech.config import ENVIRONMENT
from bitfitech.identity import load_or_create_identity
from bitfitech.testing import HANG_GUARD, global_reactor

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

    def _signal(self, name: str | int) -> None:
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

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): its sockets stay open, nothing is read or answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused process run again (SIGCONT)."""
        self._signal(signal.SIGCONT)

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


def describe_all(nodes: Iterable[NodeProcess]) -> str:
    return "\n".join(node.describe() for node in nodes)


async def stop_process(node: NodeProcess) -> int:
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


def witness_arguments(data_dirs: Sequence[str], ports: Sequence[int]) -> list[str]:
    """
    The ``--witness`` options naming the nodes to be started on C{ports}
    in C{data_dirs} (each pinned to the key made for it now, in its data
    directory, which the node then loads).
    """
    args = []
    for data_dir, port in zip(data_dirs, ports, strict=True):
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        node_id = load_or_create_identity(data_dir).node_id
        args += ["--witness", str(PeerAddress("127.0.0.1", port, node_id))]
    return args


class ProcessTestCase(TestCase):
    """
    A test case whose tests start ``twistd bitfi`` processes.

    :ivar http: the HTTP client for the nodes' APIs (its pooled connections
        are closed after the test).
    :ivar nodes: the processes started and expected to keep running (a test
        removes one it ends on purpose).
    """

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
                    f"{details()}\n{describe_all(self.nodes)}"
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
                    f"{describe_all(self.nodes)}"
                )
            await deferLater(reactor, POLL_INTERVAL, lambda: None)
