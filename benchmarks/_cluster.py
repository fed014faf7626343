"""Shared helpers of the benchmarks that run real ``twistd bitfi`` node processes.

- :class:`NodeProcess`: one node process on 127.0.0.1, in its own data
  directory, with its log file; stopped with SIGTERM, then SIGKILL.  On
  Linux every node also gets SIGTERM if the benchmark process dies
  (``PR_SET_PDEATHSIG``), so nothing outlives a killed benchmark.
- :class:`Cluster`: N nodes meshed with about ``links`` links each
  (``--outbound links/2 --max-peers links``); a context manager that stops
  every process and removes its temporary directory, on error and Ctrl-C
  too (:func:`install_signal_handlers` turns SIGTERM/SIGHUP into
  ``KeyboardInterrupt``).
- :class:`Api`: a keep-alive JSON client of one node's HTTP API
  (``http.client``); not thread-safe, use one per thread.
- The load client: ``python benchmarks/_cluster.py --client SPEC`` posts
  orders from several threads until a deadline and prints what was
  acknowledged as JSON (:func:`run_clients` starts and collects them).
- The paced load client: ``python benchmarks/_cluster.py --paced SPEC``
  posts a given number of orders at a given rate and prints when each was
  acknowledged (:func:`run_paced_client`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from bitfitech.identity import NodeIdentity, load_or_create_identity
from bitfitech.market.events import MAX_BATCH
from bitfitech.peer.tls import node_certificate, node_private_key
from bitfitech.testing import free_ports
from bitfitech.wire.framing import encode_frame, network_magic
from bitfitech.wire.messages import Message, encode_message

#: the checkout's root (holds ``bitfitech`` and ``twisted/plugins``)
REPO_ROOT = Path(__file__).resolve().parents[1]

#: ``python -c`` program that is ``twistd``.  ``python -m twisted.scripts.twistd``
#: does nothing: that module has no ``__main__`` block.
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

#: environment variables bitfi reads as option defaults (kept out of the children)
BITFI_ENVIRONMENT = (
    "P2P_PORT", "P2P_HOST", "BOOTSTRAP_PEERS", "MAX_PEERS", "OUTBOUND_PEERS", "BITFI_DATA_DIR",
    "PEER_STORAGE_PATH", "BITFI_NETWORK", "EXCHANGE_PAIR", "API_PORT", "API_HOST",
    "BITFI_NO_API", "LOG_LEVEL", "BITFI_SETTLE_AFTER", "XDG_DATA_HOME", "BITFI_INSECURE_PLAIN_TCP",
)  # fmt: skip

NETWORK = "bench"
MID = 50_000

#: log lines that deserve a look: bitfi's warnings and errors, Twisted's failures
_PROBLEM_RE = re.compile(r"#(warn|error|critical)\]|Traceback|Unhandled", re.IGNORECASE)


# -- machine and table output


def machine_info() -> str:
    """CPU model, core count and Python version, for table headers."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"load average {load_average()} at start"
    )


def load_average() -> str:
    """The 1-minute load average, to tell a busy machine (other jobs skew the figures)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "?"


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (``/proc/stat``); 0 if unknown."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    """CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def print_table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    """Print a two-column table of figures under C{title}."""
    width = max([40, *(len(name) for name, _ in rows)])
    value_width = max([14, *(len(value) for _, value in rows)])
    print(title)
    print(f"{'figure':<{width}} {'value':>{value_width}}")
    print(f"{'-' * width} {'-' * value_width}")
    for name, value in rows:
        print(f"{name:<{width}} {value:>{value_width}}")
    print(flush=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The C{fraction} quantile of C{values} (nearest rank); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[rank]


# -- signals and cleanup


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP raise ``KeyboardInterrupt``, so cleanups run.

    (SIGINT too, explicitly: a shell starts background jobs with it ignored.)
    """
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the benchmark process dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_environment() -> dict[str, str]:
    """Our environment minus bitfi's option variables, the checkout first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in BITFI_ENVIRONMENT}
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- HTTP


class ApiError(Exception):
    """A request to a node's API failed (no answer, or not JSON)."""


class Api:
    """
    A keep-alive JSON client of one node's API; one per thread.

    :ivar port: the API port on 127.0.0.1.
    """

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """
        One request; returns ``(status, decoded JSON body)``.

        A request on a reused connection that the node had closed is sent
        again once on a new connection (the node did not read it).

        :raises ApiError: when the node does not answer.
        """
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"content-type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=self.timeout
                )
            try:
                self._conn.request(method, path, body=data, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.close()
                if attempt == 0 and reused:
                    continue
                raise ApiError(f"{method} {path} on port {self.port}: {e!r}") from e
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise ApiError(f"{method} {path} on port {self.port}: {e!r}") from e
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError as e:
                raise ApiError(f"{method} {path}: not JSON: {raw[:200]!r}") from e
        raise AssertionError("unreachable")

    def get(self, path: str) -> Any:
        """GET C{path}; the body of a 200 answer.

        :raises ApiError: for no answer or another status.
        """
        status, body = self.request("GET", path)
        if status != 200:
            raise ApiError(f"GET {path} on port {self.port}: {status} {body}")
        return body


class ApiPool:
    """One :class:`Api` per (thread, port): share it between worker threads."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[Api] = []
        self._lock = threading.Lock()

    def api(self, port: int) -> Api:
        """This thread's client of the node whose API listens on C{port}."""
        clients: dict[int, Api] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(port)
        if client is None:
            client = clients[port] = Api(port)
            with self._lock:
                self._all.append(client)
        return client

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            for client in self._all:
                client.close()
            self._all.clear()


# -- orders


def three_decimals(rng: random.Random) -> str:
    """An amount from 0.001 to 1.000 with 3 decimals."""
    thousandths = rng.randint(1, 1000)
    return f"{thousandths // 1000}.{thousandths % 1000:03d}"


def random_order(rng: random.Random, spread: int = 10) -> dict[str, str]:
    """A limit order body priced within C{spread} of the mid: buys and sells cross."""
    return {
        "side": rng.choice(("buy", "sell")),
        "price": str(MID + rng.randint(-spread, spread)),
        "amount": three_decimals(rng),
    }


# -- node processes


class NodeProcess:
    """
    One ``twistd bitfi`` process on 127.0.0.1.

    :ivar index: its number in the cluster.
    :ivar data_dir: its data directory.
    :ivar log_path: its twistd log file (rotated copies: ``log_path.N``).
    :ivar started_at: ``time.monotonic()`` when the process was spawned.
    """

    def __init__(
        self,
        index: int,
        base: str,
        port: int,
        api_port: int,
        *,
        bootstrap: Sequence[int] = (),
        outbound: int = 8,
        max_peers: int = 50,
        data_dir: str | None = None,
        log_level: str = "warn",
        witnesses: Sequence[str] = (),
        extra_args: Sequence[str] = (),
    ) -> None:
        """
        :param witnesses: the network's witnesses, each ``NODEID@host:port``
            (``--witness``); none: author-clock order.
        :param extra_args: more ``bitfi`` options, after the others
            (``["--market", "ETH/USD"]``).
        """
        self.index = index
        self.port = port
        self.api_port = api_port
        self.dir = os.path.join(base, f"node{index}")
        os.makedirs(self.dir, exist_ok=True)
        self.data_dir = data_dir or os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "node.log")
        self.stderr_path = os.path.join(self.dir, "stderr.txt")
        self.args = [
            sys.executable, "-c", TWISTD, "-n", "--pidfile=", f"--logfile={self.log_path}",
            "bitfi", "--port", str(port), "--host", "127.0.0.1", "--api-port", str(api_port),
            "--data-dir", self.data_dir, "--network", NETWORK, "--log-level", log_level,
            "--outbound", str(outbound), "--max-peers", str(max_peers), "--no-mdns", "--no-dht",
            # every node shares 127.0.0.1: the per-address limits must not bite
            "--max-inbound-per-ip", "10000", "--max-handshakes-per-ip", "10000",
        ]  # fmt: skip
        for peer in bootstrap:
            self.args += ["--bootstrap", f"127.0.0.1:{peer}"]
        for witness in witnesses:
            self.args += ["--witness", witness]
        self.args += extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.node_id = ""
        self.api = Api(api_port)

    def start(self) -> None:
        """Spawn the process."""
        with open(self.stderr_path, "wb") as stderr:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                env=child_environment(),
                cwd=self.dir,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the nodes
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.process is not None
        return self.process.pid

    def exited(self) -> int | None:
        """The exit status, or ``None`` while running."""
        return None if self.process is None else self.process.poll()

    def stderr_text(self) -> str:
        """What the process wrote to stdout and stderr."""
        with contextlib.suppress(OSError):
            return Path(self.stderr_path).read_text(errors="replace")
        return ""

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds used so far (Linux ``/proc``); 0 if unknown."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError, AssertionError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mb(self) -> tuple[float, float]:
        """Resident and peak resident memory (``VmRSS``, ``VmHWM``) in MB; NaN if unknown."""
        fields = {"VmRSS": float("nan"), "VmHWM": float("nan")}
        with contextlib.suppress(OSError, AssertionError), open(f"/proc/{self.pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in fields:
                    fields[name] = int(value.split()[0]) / 1024
        return fields["VmRSS"], fields["VmHWM"]

    def terminate(self) -> None:
        """Send SIGTERM (if running)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()

    def wait_stopped(self, deadline: float) -> None:
        """Wait for the exit until C{deadline} (monotonic), then SIGKILL."""
        self.api.close()
        if self.process is None:
            return
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after C{timeout} seconds."""
        self.terminate()
        self.wait_stopped(time.monotonic() + timeout)

    def log_problems(self) -> list[str]:
        """Warning, error and traceback lines of its log files (rotated ones too)."""
        lines: list[str] = []
        for path in sorted(Path(self.dir).glob("node.log*")):
            with contextlib.suppress(OSError), path.open(errors="replace") as f:
                lines.extend(line.rstrip("\n") for line in f if _PROBLEM_RE.search(line))
        return lines


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll C{condition} until true; return the seconds it took.

    :raises TimeoutError: naming C{what}.
    """
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_api(node: NodeProcess, timeout: float = 60.0, interval: float = 0.02) -> dict[str, Any]:
    """Wait until the node's ``GET /status`` answers; return that status.

    :raises RuntimeError: if the process exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        status = node.exited()
        if status is not None:
            raise RuntimeError(
                f"node {node.index} exited with status {status}:\n{node.stderr_text()[-2000:]}"
            )
        try:
            answer: dict[str, Any] = node.api.get("/status")
            node.node_id = answer["node_id"]
            return answer
        except ApiError:
            node.api.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {node.index} API did not answer in {timeout:.0f}s")
        time.sleep(interval)


class Cluster:
    """
    C{size} node processes in a temporary directory, meshed with about
    C{links} links each; a context manager that always cleans up.
    """

    def __init__(
        self,
        size: int,
        links: int,
        name: str = "bench",
        seed: int = 1,
        slack: int = 2,
        *,
        witnesses: int = 0,
        max_peers: int | None = None,
        node_args: Sequence[str] = (),
    ) -> None:
        """
        :param slack: inbound slots beyond C{links/2}.  With exactly
            ``--max-peers links`` every inbound slot is needed for the
            outbound targets, and the last nodes to start find every peer
            full: they get refused and, never having linked, never learn
            another address.  A little slack lets every node reach its
            outbound target; the mean stays about C{links}.
        :param witnesses: how many of the nodes, the first ones, are the
            network's witnesses (fair order); 0: author-clock order.
        :param max_peers: ``--max-peers`` instead of C{links} plus
            C{slack}: a witness takes a link from every node.
        :param node_args: more ``bitfi`` options for every node
            (``["--market", "BTC/USD", "--market", "ETH/USD"]``).
        """
        self.size = size
        self.links = links
        self.outbound = max(1, links // 2)
        self.max_peers = max_peers or max(links, self.outbound) + slack
        self.witness_count = witnesses
        self.node_args = list(node_args)
        #: ``NODEID@127.0.0.1:port`` of each witness, once :meth:`start` chose them
        self.witnesses: list[str] = []
        self.repairs = 0
        self.base = tempfile.mkdtemp(prefix=f"bitfi-{name}-")
        self.nodes: list[NodeProcess] = []
        self.rng = random.Random(seed)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, **kwargs: Any) -> NodeProcess:
        """Create (not start) one more node in this cluster's directory."""
        port, api_port = free_ports(2)
        node = NodeProcess(len(self.nodes), self.base, port, api_port, **kwargs)
        self.nodes.append(node)
        return node

    def start(self, mesh_timeout: float = 60.0, settle: float = 3.0) -> float:
        """
        Start every node, each bootstrapped to up to 3 random earlier ones,
        then wait until every node has its outbound links and the mesh is
        connected; return the seconds that took.  Nodes still short of
        links after C{settle} quiet seconds are told to dial a node with
        room (``POST /peers``; counted in :attr:`repairs`).
        """
        ports = free_ports(2 * self.size)
        started = time.monotonic()
        # A witness is named by its node id: make its key before it starts.
        for i in range(self.witness_count):
            data_dir = os.path.join(self.base, f"node{i}", "data")
            os.makedirs(data_dir, exist_ok=True)
            node_id = load_or_create_identity(data_dir).node_id
            self.witnesses.append(f"{node_id}@127.0.0.1:{ports[2 * i]}")
        for i in range(self.size):
            earlier = [n.port for n in self.nodes]
            bootstrap = self.rng.sample(earlier, min(3, len(earlier)))
            node = NodeProcess(
                i, self.base, ports[2 * i], ports[2 * i + 1], bootstrap=bootstrap,
                outbound=self.outbound, max_peers=self.max_peers, witnesses=self.witnesses,
                extra_args=self.node_args,
            )  # fmt: skip
            self.nodes.append(node)
            node.start()
        for node in self.nodes:
            wait_api(node)
        # Each pair of nodes makes one link at most: small clusters need less.
        want = min(self.outbound, (self.size - 1) // 2) if self.size > 2 else 1
        last_change = [time.monotonic(), -1]

        def meshed() -> bool:
            for node in self.nodes:
                if node.exited() is not None:
                    raise RuntimeError(f"node {node.index} exited:\n{node.stderr_text()[-2000:]}")
            rows = self.peer_rows()
            outbound = [
                sum(r.get("direction") == "outbound" for r in node_rows) for node_rows in rows
            ]
            total = sum(len(node_rows) for node_rows in rows)
            now = time.monotonic()
            if total != last_change[1]:
                last_change[:] = [now, total]
            full = min(self.max_peers, self.size - 1)
            satisfied = all(
                out >= want or len(node_rows) >= full
                for out, node_rows in zip(outbound, rows, strict=True)
            )
            if satisfied and self.components(rows) == 1:
                return True
            if now - last_change[0] >= settle:
                # Stuck: dial for the nodes short of links, as an operator would.
                self._repair(rows, outbound, want)
                last_change[:] = [now, -1]
            return False

        try:
            wait_until(meshed, mesh_timeout, "the mesh", interval=0.2)
        except TimeoutError:
            if self.components() != 1:
                raise
            print(f"warning: not every node has {want} outbound links", file=sys.stderr)
        return time.monotonic() - started

    def _repair(self, rows: list[list[dict[str, Any]]], outbound: list[int], want: int) -> None:
        """``POST /peers`` from each node short of outbound links to one with room."""
        max_inbound = self.max_peers - self.outbound
        inbound = [len(node_rows) - out for node_rows, out in zip(rows, outbound, strict=True)]
        for i, node in enumerate(self.nodes):
            if outbound[i] >= want or len(rows[i]) >= self.max_peers:
                continue
            linked = {r.get("node_id") for r in rows[i]}
            for j in self.rng.sample(range(self.size), self.size):
                peer = self.nodes[j]
                if j != i and peer.node_id not in linked and inbound[j] < max_inbound:
                    inbound[j] += 1
                    self.repairs += 1
                    with contextlib.suppress(ApiError):
                        node.api.request("POST", "/peers", {"address": f"127.0.0.1:{peer.port}"})
                    break

    def peer_rows(self) -> list[list[dict[str, Any]]]:
        """Every node's ``GET /peers``."""
        return [node.api.get("/peers") for node in self.nodes]

    def components(self, rows: list[list[dict[str, Any]]] | None = None) -> int:
        """How many connected components the links make."""
        rows = rows if rows is not None else self.peer_rows()
        ids = [node.node_id for node in self.nodes]
        index = {node_id: i for i, node_id in enumerate(ids)}
        neighbours: list[set[int]] = [set() for _ in ids]
        for i, node_rows in enumerate(rows):
            for row in node_rows:
                j = index.get(row.get("node_id", ""))
                if j is not None:
                    neighbours[i].add(j)
                    neighbours[j].add(i)
        seen: set[int] = set()
        count = 0
        for start in range(len(ids)):
            if start in seen:
                continue
            count += 1
            stack = [start]
            seen.add(start)
            while stack:
                for j in neighbours[stack.pop()]:
                    if j not in seen:
                        seen.add(j)
                        stack.append(j)
        return count

    def mean_links(self) -> float:
        """The mean number of live links per node (``GET /peers``)."""
        return statistics.mean(len(rows) for rows in self.peer_rows())

    def statuses(self) -> list[dict[str, Any]]:
        """Every node's ``GET /status``."""
        return [node.api.get("/status") for node in self.nodes]

    def cpu_seconds(self) -> float:
        """CPU seconds used by all node processes so far."""
        return sum(node.cpu_seconds() for node in self.nodes)

    def wait_converged(self, at_least: int, timeout: float) -> tuple[float, dict[str, Any]]:
        """
        Wait until every node holds the same number of events (at least
        C{at_least}) and the same state hash.

        :return: the seconds it took and the last statuses' summary.
        """
        last: dict[str, Any] = {}

        def converged() -> bool:
            statuses = self.statuses()
            counts = [s["events"] for s in statuses]
            hashes = {s["state_hash"] for s in statuses}
            last.update(counts=counts, hashes=hashes, statuses=statuses)
            return min(counts) >= at_least and len(set(counts)) == 1 and len(hashes) == 1

        took = wait_until(converged, timeout, "the nodes to converge", interval=0.1)
        return took, last

    def problems(self) -> dict[int, list[str]]:
        """Each node's problem log lines (only nodes with some)."""
        found = {node.index: node.log_problems() for node in self.nodes}
        return {index: lines for index, lines in found.items() if lines}

    def close(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and remove the directory."""
        try:
            for node in self.nodes:
                node.terminate()
            deadline = time.monotonic() + 10.0
            for node in self.nodes:
                node.wait_stopped(deadline)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def report_problems(problems: dict[int, list[str]], shown: int = 5) -> None:
    """Print a summary of the nodes' problem log lines."""
    if not problems:
        print("node logs: no warnings, errors or tracebacks")
        return
    total = sum(len(lines) for lines in problems.values())
    print(f"node logs: {total} warning/error/traceback lines on {len(problems)} node(s)")
    kinds: dict[str, int] = {}
    examples: dict[str, str] = {}
    for lines in problems.values():
        for line in lines:
            # Strip the timestamp and numbers so similar lines group together.
            text = line.split(" ", 1)[1] if line[:4].isdigit() and " " in line else line
            kind = re.sub(r"[0-9a-f]{16,}|\d+(\.\d+)?", "#", text)[:160]
            kinds[kind] = kinds.get(kind, 0) + 1
            examples.setdefault(kind, line)
    for kind, count in sorted(kinds.items(), key=lambda item: -item[1])[:shown]:
        print(f"  {count:6d} x {examples[kind][:220]}")


# -- the load client processes


def _client_thread(
    port: int,
    node: int,
    deadline: float,
    seed: int,
    out: list[Any],
    lock: threading.Lock,
    batch: int = 1,
) -> None:
    rng = random.Random(seed)
    api = Api(port, timeout=30.0)
    acked: list[tuple[str, int]] = []
    latencies: list[float] = []
    errors: dict[str, int] = {}
    last_ack = 0.0
    try:
        while time.time() < deadline:
            started = time.perf_counter()
            try:
                if batch == 1:
                    status, body = api.request("POST", "/orders", random_order(rng))
                    documents = [body] if status == 201 else []
                else:
                    orders = [random_order(rng) for _ in range(batch)]
                    status, body = api.request("POST", "/orders/batch", {"orders": orders})
                    documents = body["orders"] if status == 201 else []
            except ApiError as e:
                key = type(e.__cause__).__name__
                errors[key] = errors.get(key, 0) + 1
                time.sleep(0.01)
                continue
            if status == 201:
                acked.extend((document["id"], node) for document in documents)
                latencies.append(time.perf_counter() - started)
                last_ack = time.time()
            else:
                key = f"HTTP {status}"
                errors[key] = errors.get(key, 0) + 1
    finally:
        api.close()
        with lock:
            out.append(
                {"acked": acked, "latencies": latencies, "errors": errors, "last_ack": last_ack}
            )


def client_main(spec_text: str) -> None:
    """One load client process: post orders from threads until the deadline, print JSON."""
    spec = json.loads(spec_text)
    ports: list[int] = spec["ports"]
    start_at: float = spec["start_at"]
    deadline = start_at + spec["duration"]
    out: list[Any] = []
    lock = threading.Lock()
    threads = []
    for t in range(spec["threads"]):
        slot = spec["first_slot"] + t
        node = slot % len(ports)
        threads.append(
            threading.Thread(
                target=_client_thread,
                args=(
                    ports[node],
                    node,
                    deadline,
                    spec["seed"] * 1000 + t,
                    out,
                    lock,
                    spec.get("batch", 1),
                ),  # fmt: skip
                daemon=True,
            )
        )
    time.sleep(max(0.0, start_at - time.time()))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    latencies = sorted(x for part in out for x in part["latencies"])
    errors: dict[str, int] = {}
    for part in out:
        for key, count in part["errors"].items():
            errors[key] = errors.get(key, 0) + count
    result = {
        "acked": [pair for part in out for pair in part["acked"]],
        "errors": errors,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "last_ack": max(part["last_ack"] for part in out) if out else 0.0,
        "latency_p50": percentile(latencies, 0.5) if latencies else None,
        "latency_p99": percentile(latencies, 0.99) if latencies else None,
    }
    json.dump(result, sys.stdout)


def run_clients(
    ports: Sequence[int],
    processes: int,
    threads: int,
    duration: float,
    start_delay: float = 1.0,
    batch: int = 1,
) -> tuple[float, list[dict[str, Any]]]:
    """
    Run C{processes} load client processes of C{threads} threads each,
    spread over the nodes at C{ports}, for C{duration} seconds.

    :param batch: orders per request: 1 posts to ``/orders``, more to
        ``/orders/batch``.

    :return: the wall-clock start time (``time.time()``) and each client's result.
    """
    start_at = time.time() + start_delay
    children: list[subprocess.Popen[bytes]] = []
    try:
        for p in range(processes):
            spec = {
                "ports": list(ports), "threads": threads, "first_slot": p * threads,
                "start_at": start_at, "duration": duration, "seed": p + 1, "batch": batch,
            }  # fmt: skip
            children.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--client", json.dumps(spec)],
                    stdout=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            )
        results = []
        for child in children:
            out, _ = child.communicate(timeout=duration + start_delay + 120)
            if child.returncode != 0:
                raise RuntimeError(f"load client exited with status {child.returncode}")
            results.append(json.loads(out))
        return start_at, results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def paced_client_main(spec_text: str) -> None:
    """
    The paced load client: post C{count} orders, order i due at
    ``start_at + i / rate`` on node ``i % len(ports)``, from C{threads}
    threads (an order is posted late when every thread is busy); print JSON.

    Each acknowledged order is ``[id, node, due, acknowledged]``, both
    times ``time.time()`` in this process.  With several path prefixes
    (``/markets/ETH-USD``) order i goes to prefix
    ``(i // len(ports)) % len(prefixes)``: every node gets every prefix.
    """
    spec = json.loads(spec_text)
    ports: list[int] = spec["ports"]
    prefixes: list[str] = spec.get("prefixes", [""])
    rate: float = spec["rate"]
    count: int = spec["count"]
    start_at: float = spec["start_at"]
    lock = threading.Lock()
    taken = [0]
    acked: list[list[Any]] = []
    errors: dict[str, int] = {}

    def worker(t: int) -> None:
        rng = random.Random(spec["seed"] * 1000 + t)
        apis: dict[int, Api] = {}
        try:
            while True:
                with lock:
                    i = taken[0]
                    if i >= count:
                        return
                    taken[0] += 1
                due = start_at + i / rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                node = i % len(ports)
                path = prefixes[(i // len(ports)) % len(prefixes)] + "/orders"
                api = apis.get(node)
                if api is None:
                    api = apis[node] = Api(ports[node])
                try:
                    status, body = api.request("POST", path, random_order(rng))
                except ApiError as e:
                    with lock:
                        key = type(e.__cause__).__name__
                        errors[key] = errors.get(key, 0) + 1
                    continue
                done = time.time()
                with lock:
                    if status == 201:
                        acked.append([body["id"], node, due, done])
                    else:
                        errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
        finally:
            for api in apis.values():
                api.close()

    threads = [
        threading.Thread(target=worker, args=(t,), daemon=True) for t in range(spec["threads"])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    json.dump(
        {"acked": acked, "errors": errors, "cpu_s": usage.ru_utime + usage.ru_stime}, sys.stdout
    )


def run_paced_client(
    ports: Sequence[int],
    rate: float,
    count: int,
    threads: int = 16,
    start_delay: float = 0.5,
    seed: int = 1,
    prefixes: Sequence[str] = ("",),
) -> tuple[float, dict[str, Any]]:
    """
    Post C{count} orders at C{rate} a second, round-robin over the nodes
    whose APIs listen on C{ports}, from one paced client process.

    :param prefixes: path prefixes the orders go to, in turn per round of
        the nodes (``""``: ``/orders``; ``"/markets/ETH-USD"``).

    :return: the wall-clock start time (``time.time()``) and the client's
        result (see :func:`paced_client_main`).
    """
    start_at = time.time() + start_delay
    spec = {
        "ports": list(ports), "rate": rate, "count": count, "threads": threads,
        "start_at": start_at, "seed": seed, "prefixes": list(prefixes),
    }  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, __file__, "--paced", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        out, _ = child.communicate(timeout=count / rate + start_delay + 120)
        if child.returncode != 0:
            raise RuntimeError(f"paced load client exited with status {child.returncode}")
        result: dict[str, Any] = json.loads(out)
        return start_at, result
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@contextlib.contextmanager
def cleanup_on_interrupt() -> Iterator[None]:
    """Install the signal handlers; print a line instead of a traceback on Ctrl-C."""
    install_signal_handlers()
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted: nodes stopped, temporary directories removed", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bitfi benchmark load client")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--client", help="JSON spec: post as fast as acknowledged")
    mode.add_argument("--paced", help="JSON spec: post at a given rate")
    options = parser.parse_args()
    if options.client is not None:
        client_main(options.client)
    else:
        paced_client_main(options.paced)


# -- speaking to a node as a peer, and pinning it to a CPU


def add_signed_together(parser: argparse.ArgumentParser) -> None:
    """Add ``--signed-together N``: events each author signs under one batch signature."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if not 1 <= value <= MAX_BATCH:
            raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_BATCH}, not {value}")
        return value

    parser.add_argument(
        "--signed-together", type=count, default=1, metavar="N",
        help="events each author signs at once, under one batch signature [1: each alone]",
    )  # fmt: skip


def frame(message: Message) -> bytes:
    """The bytes of C{message} framed for the benchmark network (:data:`NETWORK`)."""
    command, payload = encode_message(message)
    return encode_frame(network_magic(NETWORK), command, payload)


def client_tls_context(directory: str, rng: random.Random) -> tuple[ssl.SSLContext, str]:
    """
    A client TLS context with a certificate for a fresh node key (written
    into C{directory}), as a peer presents; and that key's node id.
    """
    identity = NodeIdentity.from_seed(rng.randbytes(32))
    cert_path = os.path.join(directory, f"{identity.node_id}.crt")
    key_path = os.path.join(directory, f"{identity.node_id}.key")
    with open(cert_path, "wb") as f:
        f.write(node_certificate(identity, time.time()).public_bytes(Encoding.PEM))
    with open(key_path, "wb") as f:
        key = node_private_key(identity)
        f.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(cert_path, key_path)
    return context, identity.node_id


def pin(pid: int, cpus: set[int]) -> int:
    """Pin every thread of process C{pid} to C{cpus}; how many threads it has."""
    tasks = os.listdir(f"/proc/{pid}/task")
    for task in tasks:
        os.sched_setaffinity(int(task), cpus)
    return len(tasks)
