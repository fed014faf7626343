"""
Fault injection on real node processes on loopback: the harness that the
end-to-end test ``tests/integration/test_faults.py`` and the longer
``benchmarks/bench_faults.py`` share.

Data path: a seeded plan of faults (:func:`plan_faults`) -> a
:class:`FaultCluster` of node processes linked only through TCP proxies on
loopback that can be partitioned and healed (:class:`LoopbackProxy`), while
a load of orders and cancels goes through their HTTP APIs
(:class:`OrderLoad`) -> after the last fault and quiescence, the
invariants: equal state hashes, every acknowledged order known everywhere
with the same status, no acknowledged cancel undone, every node up, no
unhandled error in any log (:class:`FaultReport`).
"""

from __future__ import annotations

import json
import os
import random
import re
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, succeed
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from .identity import load_or_create_identity
from .testing import HANG_GUARD, reserved_ports

# -- fault injection: loopback proxies, a fault plan, a load and a cluster of processes
#
# Shared by tests/integration/test_faults.py (trial, real ``twistd`` children
# through tests/integration/processes.py) and benchmarks/bench_faults.py
# (the longer run, through benchmarks/_cluster.py's processes): both hand
# :class:`FaultCluster` a function that spawns one node process.


class _ProxyEnd(Protocol):
    """
    One end of a connection through a :class:`LoopbackProxy`: bytes read
    here are written to the other end, whose reading pauses while this
    end's write buffer is full (each transport is the other's producer).

    :ivar other: the other end, once both are connected.
    """

    def __init__(self, proxy: LoopbackProxy) -> None:
        self.proxy = proxy
        self.other: _ProxyEnd | None = None

    def tcp(self) -> Any:
        """The TCP transport (typed ``Any``: also a producer, and abortable)."""
        return self.transport

    def join(self, other: _ProxyEnd) -> None:
        """Pair with C{other}: copy bytes both ways, each pausing the other."""
        self.other, other.other = other, self
        self.tcp().registerProducer(other.tcp(), True)
        other.tcp().registerProducer(self.tcp(), True)

    def dataReceived(self, data: bytes) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.proxy._end_lost(self)
        if self.other is not None and self.other.transport is not None:
            self.other.transport.loseConnection()


class _ProxyDownstream(_ProxyEnd):
    """The end a client opened: forwarded once the upstream end connects."""

    def __init__(self, proxy: LoopbackProxy) -> None:
        super().__init__(proxy)
        self.connecting: Deferred[_ProxyUpstream] | None = None

    def connectionMade(self) -> None:
        self.proxy._accepted(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        super().connectionLost(reason)


class _ProxyUpstream(_ProxyEnd):
    """The end the proxy opened to its target; the target sees C{local_port} as its remote port."""

    local_port = 0

    def connectionMade(self) -> None:
        self.local_port = int(self.tcp().getHost().port)
        self.proxy._upstream_made(self)


class _ProxyFactory(Factory):
    noisy = False

    def __init__(self, proxy: LoopbackProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> _ProxyDownstream:
        return _ProxyDownstream(self.proxy)


#: how a :class:`LoopbackProxy` treats new connections while partitioned
PARTITION_MODES = ("refuse", "blackhole")


class LoopbackProxy:
    """
    A TCP proxy on 127.0.0.1 in front of one port, which a test can cut and mend.

    Data path: a client (a node dialling a peer) connects to :attr:`port`
    -> the proxy connects to 127.0.0.1:C{target} -> bytes are copied both
    ways, with flow control, and the target sees the proxy's address, not
    the client's.  Nothing is parsed: TLS passes through untouched.

    :meth:`partition` aborts every connection through the proxy and, until
    :meth:`heal`, treats new ones as its mode says: ``"refuse"`` aborts
    each as soon as it is accepted (the client sees a reset, as from a
    closed port); ``"blackhole"`` accepts it and never forwards nor
    answers (the client waits for its own timeout; :meth:`heal` aborts
    those held).  :meth:`close` ends everything, for a clean reactor.

    :ivar name: names the proxy in messages (``"A->B"``).
    :ivar target: the port it forwards to.
    :ivar port: its own port, once :meth:`start` has fired.
    :ivar mode: the partition mode in force, ``None`` when healed.
    :ivar accepted: connections accepted.
    :ivar forwarded: connections joined to the target.
    :ivar refused: connections aborted as soon as accepted, while partitioned.
    :ivar held: connections blackholed.
    :ivar cut: joined connections aborted by :meth:`partition`.
    :ivar upstream_ports: the local ports of the proxy's connections to the
        target, live or past: what the target saw as their remote ports.
    """

    def __init__(self, reactor: Any, target: int, name: str = "") -> None:
        self.reactor = reactor
        self.target = target
        self.name = name or f"proxy->{target}"
        self.port = 0
        self.mode: str | None = None
        self.accepted = self.forwarded = self.refused = self.held = self.cut = 0
        self.upstream_ports: set[int] = set()
        self._listening: Any = None
        self._ends: set[_ProxyEnd] = set()
        self._held: set[_ProxyDownstream] = set()
        self._all_lost: list[Deferred[None]] = []

    async def start(self) -> int:
        """Listen on port 0 of 127.0.0.1; return the port the OS chose."""
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self._listening = await endpoint.listen(_ProxyFactory(self))
        self.port = int(self._listening.getHost().port)
        return self.port

    def partition(self, mode: str = "refuse") -> None:
        """Abort every connection through the proxy; refuse or blackhole new ones."""
        if mode not in PARTITION_MODES:
            raise ValueError(f"partition mode {mode!r} is not one of {PARTITION_MODES}")
        self.mode = mode
        joined = [end for end in self._ends if isinstance(end, _ProxyDownstream) and end.other]
        self.cut += len(joined)
        for end in list(self._ends):
            end.tcp().abortConnection()

    def heal(self) -> None:
        """Forward new connections again; abort those held by a blackhole."""
        self.mode = None
        for end in list(self._held):
            end.tcp().abortConnection()

    @property
    def connections(self) -> int:
        """Connections open through the proxy (joined to the target, or not yet)."""
        return sum(1 for end in self._ends if isinstance(end, _ProxyDownstream))

    def close(self) -> Deferred[None]:
        """Stop listening and abort every connection; fire once all are gone."""
        self.mode = "refuse"
        listening, self._listening = self._listening, None
        stopped = listening.stopListening() if listening is not None else None
        for end in list(self._ends):
            end.tcp().abortConnection()

        async def closed() -> None:
            if stopped is not None:
                await stopped
            if self._ends:
                lost: Deferred[None] = Deferred()
                self._all_lost.append(lost)
                await lost

        return Deferred.fromCoroutine(closed())

    # -- the ends report here

    def _accepted(self, end: _ProxyDownstream) -> None:
        self.accepted += 1
        self._ends.add(end)
        if self.mode == "refuse":
            self.refused += 1
            end.tcp().abortConnection()
            return
        end.tcp().pauseProducing()
        if self.mode == "blackhole":
            self.held += 1
            self._held.add(end)
            return
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.target, timeout=5)
        upstream = _ProxyUpstream(self)
        end.connecting = connecting = connectProtocol(endpoint, upstream)

        def joined(_: object) -> None:
            end.connecting = None
            if end.transport is None or end not in self._ends or self.mode is not None:
                upstream.tcp().abortConnection()  # cut meanwhile
                end.tcp().abortConnection()
                return
            self.forwarded += 1
            end.join(upstream)
            end.tcp().resumeProducing()

        def failed(_: Failure) -> None:
            end.connecting = None
            end.tcp().abortConnection()  # the target is down: the client sees a reset

        connecting.addCallbacks(joined, failed)

    def _upstream_made(self, end: _ProxyUpstream) -> None:
        self._ends.add(end)
        self.upstream_ports.add(end.local_port)

    def _end_lost(self, end: _ProxyEnd) -> None:
        self._ends.discard(end)
        if isinstance(end, _ProxyDownstream):
            self._held.discard(end)
        if not self._ends:
            waiters, self._all_lost = self._all_lost, []
            for waiter in waiters:
                waiter.callback(None)


@implementer(IBodyProducer)
class _JSONBody:
    """A request body held in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class ApiAnswerError(Exception):
    """A node's API answered with another status than the one expected."""


class NodeApi:
    """
    A JSON client of nodes' HTTP APIs on 127.0.0.1, with keep-alive
    connections (twisted.web's Agent; no dependency beyond Twisted).

    Data path: a test or benchmark -> ``METHOD http://127.0.0.1:<api
    port><path>`` -> the node's API -> the status and the decoded JSON.
    """

    def __init__(self, reactor: Any, timeout: float = 5.0, per_node: int = 4) -> None:
        """
        :param timeout: how long one request may take, answer included.
        :param per_node: keep-alive connections kept open to each node.
        """
        self.reactor = reactor
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = per_node
        self.agent = Agent(reactor, pool=self.pool)

    def request(
        self, port: int, method: str, path: str, body: object = None
    ) -> Deferred[tuple[int, Any]]:
        """
        One request to the API on C{port}: a new Deferred firing with the
        status and the decoded JSON answer (``None`` for an empty one).
        """

        async def send() -> tuple[int, Any]:
            url = f"http://127.0.0.1:{port}{path}".encode("ascii")
            if body is None:
                response = await self.agent.request(method.encode("ascii"), url)
            else:
                data = json.dumps(body).encode("utf-8")
                headers = Headers({b"content-type": [b"application/json"]})
                response = await self.agent.request(
                    method.encode("ascii"), url, headers, _JSONBody(data)
                )
            raw = await readBody(response)
            return response.code, json.loads(raw) if raw else None

        return Deferred.fromCoroutine(send()).addTimeout(self.timeout, self.reactor)

    async def get_json(self, port: int, path: str) -> Any:
        """C{GET path} from the API on C{port}: the decoded answer of a 200.

        :raises ApiAnswerError: for any other status.
        """
        code, doc = await self.request(port, "GET", path)
        if code != 200:
            raise ApiAnswerError(f"GET {path} on API port {port} answered {code}: {doc}")
        return doc

    def close(self) -> Deferred[None]:
        """Close the kept-alive connections."""
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


async def wait_until(
    reactor: Any, condition: Callable[[], Awaitable[bool]], timeout: float, what: str,
    details: Callable[[], str] = lambda: "", interval: float = 0.1,
) -> float:  # fmt: skip
    """
    Poll the asynchronous C{condition} every C{interval} seconds until it
    holds (an exception counts as not yet).

    :return: the seconds it took.
    :raises TimeoutError: naming C{what}, the last error and C{details()},
        after C{timeout} seconds (a hang guard, not a speed bound).
    """
    started = reactor.seconds()
    last_error = ""
    while True:
        try:
            if await condition():
                return float(reactor.seconds() - started)
            last_error = ""
        except Exception as e:
            last_error = f" (last error: {e!r})"
        if reactor.seconds() - started > timeout:
            raise TimeoutError(f"not {what} after {timeout:g} s{last_error}\n{details()}")
        await deferLater(reactor, interval, lambda: None)


def seed_from_environment(variable: str = "BITFI_FAULT_SEED", default: int = 1) -> int:
    """
    The seed of a fault run: C{$variable} if set (``random`` picks a fresh
    one), else C{default}, so that a CI run repeats itself.

    :raises ValueError: for a value that is neither a whole number nor ``random``.
    """
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    if text == "random":
        return random.SystemRandom().randrange(2**32)
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"${variable} must be a whole number or 'random', not {text!r}") from None


#: the faults a plan is made of: SIGKILL and restart; SIGTERM and restart; a
#: partition and its heal; SIGTERM and restart of a node while one is partitioned
FAULT_KINDS = ("sigkill", "sigterm", "partition", "sigterm-partitioned")


@dataclass(frozen=True)
class Fault:
    """
    One fault of a plan.

    :ivar kind: one of :data:`FAULT_KINDS`.
    :ivar node: the node struck: stopped, or partitioned from the others.
    :ivar lead_s: seconds of load before it.
    :ivar hold_s: how long the node stays stopped, or cut off.
    :ivar mode: the partition's mode (:data:`PARTITION_MODES`).
    :ivar stopped: for ``sigterm-partitioned``, the node stopped and
        restarted while C{node} is cut off (C{node} itself, or another).
    """

    kind: str
    node: int
    lead_s: float
    hold_s: float
    mode: str = "refuse"
    stopped: int | None = None

    def describe(self, names: Sequence[str]) -> str:
        """The fault in words, naming nodes by C{names}."""
        who = names[self.node]
        if self.kind == "sigkill":
            what = f"SIGKILL {who}, restart it {self.hold_s:g} s later"
        elif self.kind == "sigterm":
            what = f"SIGTERM {who}, restart it {self.hold_s:g} s after it exited"
        elif self.kind == "partition":
            what = f"partition {who} ({self.mode}) for {self.hold_s:g} s, then heal"
        else:
            stopped = names[self.stopped if self.stopped is not None else self.node]
            what = (
                f"partition {who} ({self.mode}); SIGTERM {stopped}, restart it "
                f"{self.hold_s:g} s after it exited, still partitioned; then heal"
            )
        return f"after {self.lead_s:g} s of load: {what}"


def plan_faults(
    rng: random.Random, size: int, count: int, *, modes: Sequence[str] = ("refuse",),
    hold: tuple[float, float] = (0.5, 2.0), lead: tuple[float, float] = (0.5, 1.5),
) -> list[Fault]:  # fmt: skip
    """
    C{count} faults on a cluster of C{size} nodes, all chosen by C{rng}:
    every kind of :data:`FAULT_KINDS` once, in a random order, while the
    count allows, then kinds at random.

    :param modes: the partition modes to choose from.
    :param hold: the range of :attr:`Fault.hold_s` (tenths of a second).
    :param lead: the range of :attr:`Fault.lead_s`.
    """
    kinds = list(FAULT_KINDS)
    rng.shuffle(kinds)
    chosen = kinds[:count] + [rng.choice(FAULT_KINDS) for _ in range(count - len(kinds))]
    faults = []
    for kind in chosen:
        node = rng.randrange(size)
        stopped = rng.randrange(size)
        mode = rng.choice(list(modes))
        lead_s = round(rng.uniform(*lead), 1)
        hold_s = round(rng.uniform(*hold), 1)
        faults.append(Fault(kind, node, lead_s, hold_s, mode,
                            stopped if kind == "sigterm-partitioned" else None))  # fmt: skip
    return faults


#: the load's prices: a few ticks either side of the mid, so that buys and sells cross
LOAD_MID = Decimal("100")
LOAD_TICK = Decimal("0.5")
LOAD_LOT = Decimal("0.01")


@dataclass(frozen=True)
class AckedOrder:
    """An order a node's API acknowledged (2xx), as placed."""

    id: str
    node: int
    side: str
    price: str
    amount: str


class OrderLoad:
    """
    Orders and cancels through the nodes' HTTP APIs, chosen by a seeded
    random generator, one request at a time, whatever the nodes' state (a
    request to a stopped node fails and is counted, never retried).

    Data path: this load -> ``POST /orders`` (limit buys and sells a few
    ticks around :data:`LOAD_MID`: some cross) and ``DELETE /orders/<id>``
    (of an order acknowledged by that same node) -> the nodes.  What was
    acknowledged (2xx) is what the invariants are checked against.

    :ivar acked: the orders acknowledged, by id.
    :ivar cancelled: ids of orders whose cancel was acknowledged, with the
        node whose API acknowledged it.
    :ivar attempts: requests made.
    :ivar failures: requests not acknowledged, by reason (an exception's
        class or ``HTTP <status>``).
    """

    def __init__(
        self, reactor: Any, api: NodeApi, api_ports: Sequence[int], rng: random.Random, *,
        interval: float = 0.03, cancel_share: float = 0.15, spread: int = 6,
    ) -> None:  # fmt: skip
        """
        :param interval: seconds between one answer and the next request.
        :param cancel_share: the share of requests that are cancels.
        :param spread: prices range over this many ticks either side of the mid.
        """
        if not api_ports:
            raise ValueError("a load needs at least one node's API port")
        self.reactor = reactor
        self.api = api
        self.api_ports = list(api_ports)
        self.rng = rng
        self.interval = interval
        self.cancel_share = cancel_share
        self.spread = spread
        self.acked: dict[str, AckedOrder] = {}
        self.cancelled: dict[str, int] = {}
        self.attempts = 0
        self.failures: dict[str, int] = {}
        self._cancellable: list[list[str]] = [[] for _ in self.api_ports]
        self._stopping = False
        self._running: Deferred[None] | None = None

    @property
    def acked_events(self) -> int:
        """Events acknowledged: orders and cancels."""
        return len(self.acked) + len(self.cancelled)

    def start(self) -> None:
        """Start placing."""
        self._stopping = False
        self._running = Deferred.fromCoroutine(self._run())

    async def stop(self) -> None:
        """Stop placing; return once the request under way is answered or failed."""
        self._stopping = True
        if self._running is not None:
            running, self._running = self._running, None
            await running

    def order_body(self) -> dict[str, str]:
        """The next order: side, price and amount as exact decimal strings."""
        side = self.rng.choice(("buy", "sell"))
        price = LOAD_MID + LOAD_TICK * self.rng.randint(-self.spread, self.spread)
        amount = LOAD_LOT * self.rng.randint(1, 100)
        return {"side": side, "price": str(price), "amount": str(amount)}

    async def _run(self) -> None:
        while not self._stopping:
            node = self.rng.randrange(len(self.api_ports))
            cancellable = self._cancellable[node]
            if cancellable and self.rng.random() < self.cancel_share:
                await self._cancel(node, cancellable.pop(self.rng.randrange(len(cancellable))))
            else:
                await self._place(node, self.order_body())
            await deferLater(self.reactor, self.interval, lambda: None)

    def _failed(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    async def _place(self, node: int, body: dict[str, str]) -> None:
        self.attempts += 1
        try:
            code, doc = await self.api.request(self.api_ports[node], "POST", "/orders", body)
        except Exception as e:
            self._failed(type(e).__name__)
            return
        if not 200 <= code < 300:
            self._failed(f"HTTP {code}")
            return
        order = AckedOrder(doc["id"], node, body["side"], body["price"], body["amount"])
        self.acked[order.id] = order
        self._cancellable[node].append(order.id)

    async def _cancel(self, node: int, order_id: str) -> None:
        self.attempts += 1
        try:
            code, _ = await self.api.request(self.api_ports[node], "DELETE", f"/orders/{order_id}")
        except Exception as e:
            self._failed(type(e).__name__)
            return
        if 200 <= code < 300:
            self.cancelled[order_id] = node
        else:
            self._failed(f"HTTP {code}")


class FaultNode(typing.Protocol):
    """
    One node process as :class:`FaultCluster` drives it: started when made,
    stopped once (a restart is a new one).
    """

    name: str

    @property
    def running(self) -> bool:
        """Whether the process runs."""

    @property
    def output(self) -> str:
        """What the process logged so far (stdout, stderr, its log file)."""

    def kill(self) -> Deferred[int]:
        """SIGKILL; fire with the exit status once it ended."""

    def terminate(self) -> Deferred[int]:
        """SIGTERM; fire with the exit status once it ended (fail after a hang guard)."""

    async def wait_for_api(self) -> dict[str, Any]:
        """Wait until ``GET /status`` answers; return that status."""


@dataclass(frozen=True)
class NodeSlot:
    """
    One node of a :class:`FaultCluster`, whichever process runs it.

    :ivar port: its P2P port, on 127.0.0.1.
    :ivar api_port: its HTTP API port, on 127.0.0.1.
    :ivar node_id: the id of the key made in C{data_dir} before it starts.
    :ivar witnesses: ``NODEID@127.0.0.1:PORT`` of every node, this one's
        view: every other node at the port of the proxy from this node to it.
    """

    index: int
    name: str
    port: int
    api_port: int
    data_dir: str
    node_id: str
    witnesses: tuple[str, ...]

    def arguments(self) -> list[str]:
        """
        The ``bitfi`` options beyond ports, data directory and discovery:
        dial nobody but the witnesses (``--outbound 0``), at the proxies.
        """
        args = ["--outbound", "0"]
        for witness in self.witnesses:
            args += ["--witness", witness]
        return args


#: lines of a node's output that show a failure: Twisted's unhandled errors
#: and tracebacks, and log events at the critical level
LOG_PROBLEM = re.compile(r"Unhandled Error|Unhandled error|Traceback|#critical\]|CRITICAL")

#: exit statuses of a node that stopped cleanly on SIGTERM (twistd re-raises
#: the signal once its reactor has stopped: -15; 0 is accepted too)
CLEAN_EXIT_STATUSES = (0, -15)

#: the line twistd logs at the end of an orderly shutdown
CLEAN_EXIT_LINE = "Main loop terminated."


def log_problems(output: str) -> list[str]:
    """The lines of C{output} matching :data:`LOG_PROBLEM`."""
    return [line for line in output.splitlines() if LOG_PROBLEM.search(line)]


@dataclass
class FaultReport:
    """
    What a :class:`FaultCluster` run did and found.

    :ivar lost: acknowledged orders missing on a node, or whose status
        (status, filled, remaining) differs between nodes; one line each.
    :ivar stranded: acknowledged orders held by every node and placed by
        none (``pending`` everywhere: no fair time); one line each.
    :ivar lost_by: how many lost or stranded orders each node had acknowledged.
    :ivar unjournaled: acknowledged orders missing on the very node that
        acknowledged them (a broken durability promise), one line each.
    :ivar undone: acknowledged cancels whose order is open on some node.
    :ivar converge_s: seconds from the last heal or restart until every
        node held the same state (``None``: not measured, or never).
    :ivar stop_s: seconds from each SIGTERM to the process's exit.
    :ivar problems: every broken invariant, in words (empty: all held).
    """

    seed: int
    plan: list[str]
    timeline: list[str]
    acked_orders: int
    acked_cancels: int
    attempts: int
    failures: dict[str, int]
    faults: dict[str, int]
    lost: list[str]
    stranded: list[str]
    lost_by: dict[str, int]
    unjournaled: list[str]
    undone: list[str]
    converge_s: float | None
    stop_s: list[float]
    problems: list[str]

    def failure_message(self) -> str:
        """The seed, the plan, what happened and every problem, for a failing test."""
        lines = [
            f"fault run with seed {self.seed} (rerun: BITFI_FAULT_SEED={self.seed}) found "
            f"{len(self.problems)} problem(s):",
            *(f"  - {problem}" for problem in self.problems[:40]),
            "plan:",
            *(f"  {i + 1}. {fault}" for i, fault in enumerate(self.plan)),
            "timeline:",
            *(f"  {line}" for line in self.timeline),
            f"acknowledged: {self.acked_orders} orders, {self.acked_cancels} cancels of "
            f"{self.attempts} requests; not acknowledged: {self.failures}",
            f"lost: {len(self.lost)} (missing on the node that acknowledged them: "
            f"{len(self.unjournaled)}), stranded: {len(self.stranded)}, by the node that "
            f"acknowledged them: {self.lost_by}",
        ]
        return "\n".join(lines)


class FaultCluster:
    """
    Node processes on 127.0.0.1 linked only through :class:`LoopbackProxy`
    proxies, a load, and a plan of faults; then the invariants.

    Data path: :class:`OrderLoad` -> each node's HTTP API -> the node
    journals, stamps and gossips -> its links, every one through a proxy
    of this object (``A->B``: what A dials to reach B) -> the other nodes;
    the faults act on the processes (signals) and the proxies (partitions);
    :meth:`check` reads every node's API.

    Wiring: each node is one of the network's witnesses (fair order, n =
    the nodes) and dials nobody else (``--outbound 0``); it names each
    other node at the port of its own proxy to it, so every dial goes
    through the proxy from it to the peer.  Addresses that nodes learn from
    each other (``addr``, inbound links) are never dialled, so they cannot
    bypass a proxy; :meth:`meshed` checks each link's remote port against
    the proxies all the same.  Partitioning node X cuts every proxy from
    and to X.

    The processes come from C{spawn}: the test's (trial children that keep
    their output) or the benchmark's.  Fixed waits are only the plan's own
    durations (load before a fault, time down or cut off); every other wait
    polls for a condition under a hang guard.

    :ivar nodes: the process of each node now.
    :ivar lives: every process started, with its node's name (their
        output is scanned for problems at the end).
    """

    def __init__(
        self, reactor: Any, base_dir: str, spawn: Callable[[NodeSlot], FaultNode], *,
        size: int = 3, seed: int = 1, say: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        """
        :param base_dir: where the nodes' data directories are made.
        :param spawn: starts a node process for a slot.
        :param say: told each line of the timeline as it happens.
        """
        if size < 3 or size % 2 == 0:
            raise ValueError(f"a fault cluster has an odd number of nodes, 3 or more: {size}")
        self.reactor = reactor
        self.base_dir = base_dir
        self.spawn = spawn
        self.size = size
        self.seed = seed
        self.say = say
        self.names = [chr(ord("A") + i) for i in range(size)]
        self.api = NodeApi(reactor)
        self.slots: list[NodeSlot] = []
        self.proxies: dict[tuple[int, int], LoopbackProxy] = {}
        self.nodes: list[FaultNode] = []
        self.lives: list[tuple[str, FaultNode]] = []
        self.load: OrderLoad | None = None
        self.plan: list[Fault] = []
        self.timeline: list[str] = []
        self.problems: list[str] = []
        self.stop_s: list[float] = []
        self.last_mend: float | None = None
        self.converged_at: float | None = None
        self.last_seen: dict[str, Any] = {}
        self._index: dict[str, int] = {}
        self._started = reactor.seconds()

    # -- what happened

    def note(self, text: str) -> None:
        """Add a line to the timeline (seconds since the cluster was made)."""
        line = f"{self.reactor.seconds() - self._started:7.2f} s  {text}"
        self.timeline.append(line)
        if self.say is not None:
            self.say(line)

    def details(self) -> str:
        """The timeline and the last statuses and links seen, for a failure message."""
        load = self.load
        placed = (
            f"load: {len(load.acked)} orders and {len(load.cancelled)} cancels acknowledged "
            f"of {load.attempts} requests; not acknowledged: {load.failures}"
            if load is not None
            else "no load"
        )
        return "\n".join(
            [f"seed {self.seed}", *self.timeline, placed, json.dumps(self.last_seen, indent=1)]
        )

    # -- start

    async def start(self, *, running: bool = True) -> None:
        """
        Make the keys, the proxies and the nodes; return once every node
        is linked to every other through its proxies and, if C{running},
        holds stamps of every witness (:meth:`stamping`).

        :param running: wait for the stamps: faults then strike a running
            network, not one whose witnesses have yet to sign their first
            stamps (where a witness stopped before its first stamp leaves
            events stranded: ``tests/integration/test_faults.py``).
        """
        # The nodes' ports stay held while the proxies start: a proxy asks the
        # OS for a port, and must not be given one a node is about to take.
        with reserved_ports(2 * self.size) as ports:
            data_dirs = [os.path.join(self.base_dir, name) for name in self.names]
            ids = []
            for data_dir in data_dirs:
                os.makedirs(data_dir, exist_ok=True)
                ids.append(load_or_create_identity(data_dir).node_id)
            self._index = {node_id: i for i, node_id in enumerate(ids)}
            for i in range(self.size):
                for j in range(self.size):
                    if i != j:
                        proxy = LoopbackProxy(self.reactor, ports[2 * j],
                                              f"{self.names[i]}->{self.names[j]}")  # fmt: skip
                        self.proxies[(i, j)] = proxy
                        await proxy.start()
            for i, name in enumerate(self.names):
                witnesses = tuple(
                    f"{ids[j]}@127.0.0.1:{ports[2 * j] if i == j else self.proxies[(i, j)].port}"
                    for j in range(self.size)
                )
                slot = NodeSlot(i, name, ports[2 * i], ports[2 * i + 1], data_dirs[i], ids[i],
                                witnesses)  # fmt: skip
                self.slots.append(slot)
        self.nodes = [self._spawn(slot) for slot in self.slots]
        for node in self.nodes:
            await node.wait_for_api()
        await wait_until(self.reactor, self.meshed, HANG_GUARD,
                         "every node linked to the others through the proxies",
                         self.details)  # fmt: skip
        self.note(f"{self.size} nodes linked through {len(self.proxies)} proxies")
        if running:
            await wait_until(self.reactor, self.stamping, HANG_GUARD,
                             "every node holding every witness's stamps", self.details)  # fmt: skip
            self.note("every node holds every witness's stamps")

    def _spawn(self, slot: NodeSlot) -> FaultNode:
        node = self.spawn(slot)
        self.lives.append((slot.name, node))
        return node

    # -- the faults

    async def hold(self, seconds: float) -> None:
        """Let C{seconds} pass: a fault's planned duration."""
        await deferLater(self.reactor, seconds, lambda: None)

    async def kill(self, i: int) -> None:
        """SIGKILL node C{i}."""
        self.note(f"SIGKILL {self.names[i]}")
        status = await self.nodes[i].kill()
        self.note(f"{self.names[i]} killed (status {status})")

    async def terminate(self, i: int) -> None:
        """SIGTERM node C{i}; note how long it took to exit and whether it exited cleanly."""
        node, name = self.nodes[i], self.names[i]
        self.note(f"SIGTERM {name}")
        started = self.reactor.seconds()
        try:
            status = await node.terminate()
        except (TimeoutError, DeferTimeoutError):
            took = self.reactor.seconds() - started
            self.problems.append(f"{name} still running {took:.1f} s after SIGTERM: killed")
            self.stop_s.append(took)
            await node.kill()
            return
        took = self.reactor.seconds() - started
        self.stop_s.append(took)
        self.note(f"{name} exited {took:.2f} s after SIGTERM (status {status})")
        if status not in CLEAN_EXIT_STATUSES:
            self.problems.append(f"{name} exited with status {status} after SIGTERM")
        elif CLEAN_EXIT_LINE not in node.output:
            self.problems.append(f"{name} exited after SIGTERM without {CLEAN_EXIT_LINE!r}")

    async def restart(self, i: int) -> None:
        """Start node C{i} again, on its data directory and ports; wait for its API."""
        slot = self.slots[i]
        node = self.nodes[i] = self._spawn(slot)
        status = await node.wait_for_api()
        self.last_mend = self.reactor.seconds()
        self.note(f"{slot.name} restarted, API answering")
        if status.get("node_id") != slot.node_id:
            self.problems.append(f"{slot.name} restarted as {status.get('node_id')}, "
                                 f"not {slot.node_id}")  # fmt: skip

    def _proxies_of(self, i: int) -> list[LoopbackProxy]:
        return [proxy for (a, b), proxy in self.proxies.items() if i in (a, b)]

    async def partition(self, i: int, mode: str) -> None:
        """Cut node C{i} off from the others; wait until its API shows no link left."""
        for proxy in self._proxies_of(i):
            proxy.partition(mode)
        self.note(f"{self.names[i]} partitioned ({mode})")
        if not self.nodes[i].running:
            return

        async def isolated() -> bool:
            rows = await self.api.get_json(self.slots[i].api_port, "/peers")
            self.last_seen[f"{self.names[i]} /peers"] = rows
            return not rows

        try:
            await wait_until(self.reactor, isolated, HANG_GUARD, "isolated")
        except TimeoutError:
            self.problems.append(
                f"{self.names[i]} kept links {HANG_GUARD:g} s into its partition: a path "
                f"around the proxies? {self.last_seen.get(f'{self.names[i]} /peers')}"
            )

    def heal(self, i: int) -> None:
        """Mend the proxies from and to node C{i}."""
        for proxy in self._proxies_of(i):
            proxy.heal()
        self.last_mend = self.reactor.seconds()
        self.note(f"{self.names[i]} healed")

    async def inject(self, fault: Fault) -> None:
        """Carry out one fault, its hold included."""
        self.note(fault.describe(self.names))
        i = fault.node
        if fault.kind == "sigkill":
            await self.kill(i)
            await self.hold(fault.hold_s)
            await self.restart(i)
        elif fault.kind == "sigterm":
            await self.terminate(i)
            await self.hold(fault.hold_s)
            await self.restart(i)
        elif fault.kind == "partition":
            await self.partition(i, fault.mode)
            await self.hold(fault.hold_s)
            self.heal(i)
        elif fault.kind == "sigterm-partitioned":
            stopped = fault.stopped if fault.stopped is not None else i
            await self.partition(i, fault.mode)
            await self.terminate(stopped)
            await self.hold(fault.hold_s)
            await self.restart(stopped)
            self.heal(i)
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")

    async def run(self, plan: Sequence[Fault], load: OrderLoad) -> None:
        """
        Start C{load}, inject each fault of C{plan} after its lead, stop the
        load after the last one.  Every node runs and every proxy is healed
        at the end.
        """
        self.plan = list(plan)
        self.load = load
        load.start()
        self.note(f"load started; {len(plan)} faults to come")
        try:
            for fault in plan:
                await self.hold(fault.lead_s)
                await self.inject(fault)
        finally:
            await load.stop()
        for (i, _), proxy in self.proxies.items():
            if proxy.mode is not None:
                self.heal(i)
        if self.last_mend is None:
            self.last_mend = self.reactor.seconds()
        self.note(f"load stopped: {len(load.acked)} orders and {len(load.cancelled)} cancels "
                  f"acknowledged of {load.attempts} requests")  # fmt: skip

    # -- the checks

    async def meshed(self) -> bool:
        """
        Whether every node is linked to every other, and every link runs
        through the proxy it must (a link that does not is a problem).
        """
        missing = []
        for i, slot in enumerate(self.slots):
            rows = await self.api.get_json(slot.api_port, "/peers")
            self.last_seen[f"{slot.name} /peers"] = rows
            seen = set()
            for row in rows:
                j = self._index.get(row["node_id"])
                if j is None or j == i:
                    self._problem(f"{slot.name} linked to an unknown node: {row}")
                    continue
                seen.add(j)
                remote = int(str(row["remote"]).rsplit(":", 1)[1])
                if row["direction"] == "outbound":
                    through = remote == self.proxies[(i, j)].port
                else:  # a port the proxy used, now or before (a link may outlive it a moment)
                    through = remote in self.proxies[(j, i)].upstream_ports
                if not through:
                    self._problem(f"{slot.name}'s {row['direction']} link with "
                                  f"{self.names[j]} ({row['remote']}) passes no proxy of "
                                  f"theirs: a path around the proxies")  # fmt: skip
            missing += [f"{slot.name}-{self.names[j]}" for j in range(self.size)
                        if j != i and j not in seen]  # fmt: skip
        self.last_seen["links missing"] = missing
        return not missing

    async def status(self, i: int) -> dict[str, Any]:
        """Node C{i}'s ``GET /status``."""
        status: dict[str, Any] = await self.api.get_json(self.slots[i].api_port, "/status")
        return status

    async def stamping(self) -> bool:
        """Whether every node holds at least one stamp of every witness."""
        for i, slot in enumerate(self.slots):
            chains = (await self.status(i))["witnesses"]["chains"]
            self.last_seen[f"{slot.name} chains"] = chains
            if any(chain["seq"] < 1 for chain in chains):
                return False
        return True

    def _problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    async def converged(self) -> bool:
        """
        Whether every node holds the same state (state hash and event
        count), with no event waiting for its fair time and at least every
        event the load had acknowledged.  The first time it holds is kept
        (:attr:`converged_at`).  Links are :meth:`meshed`'s.
        """
        statuses = [await self.status(i) for i in range(self.size)]
        for slot, status in zip(self.slots, statuses, strict=True):
            self.last_seen[f"{slot.name} /status"] = {
                key: status.get(key) for key in ("state_hash", "events", "peers", "witnesses")
            }
        at_least = self.load.acked_events if self.load is not None else 0
        same = len({(s["state_hash"], s["events"]) for s in statuses}) == 1
        placed = all(s["witnesses"].get("waiting_events", 0) == 0 for s in statuses)
        if not (same and placed and statuses[0]["events"] >= at_least):
            return False
        if self.converged_at is None:
            self.converged_at = self.reactor.seconds()
        return True

    async def wait_converged(self, timeout: float) -> float | None:
        """
        Wait until :meth:`converged`, then until :meth:`meshed`; a wait
        that times out is a problem of the run (:attr:`problems`).

        :return: the seconds from the last heal or restart until the nodes
            held the same state; ``None`` if they never did in C{timeout}.
        """
        try:
            await wait_until(self.reactor, self.converged, timeout,
                             "every node holding the same state", self.details)  # fmt: skip
        except TimeoutError:
            self.problems.append(f"not every node holding the same state {timeout:g} s after "
                                 f"the last heal or restart: {self._summary()}")  # fmt: skip
            return None
        try:
            await wait_until(self.reactor, self.meshed, HANG_GUARD,
                             "every node linked to the others", self.details)  # fmt: skip
        except TimeoutError:
            missing = ", ".join(self.last_seen.get("links missing", []))
            self.problems.append(f"links not back {HANG_GUARD:g} s after the nodes converged: "
                                 f"{missing} missing")  # fmt: skip
        assert self.converged_at is not None and self.last_mend is not None
        return float(self.converged_at - self.last_mend)

    def _summary(self) -> str:
        """Each node's state hash, events and events waiting, as last seen."""
        parts = []
        for slot in self.slots:
            seen = self.last_seen.get(f"{slot.name} /status") or {}
            waiting = (seen.get("witnesses") or {}).get("waiting_events")
            parts.append(f"{slot.name} {str(seen.get('state_hash'))[:12]} "
                         f"{seen.get('events')} events, {waiting} waiting")  # fmt: skip
        return "; ".join(parts)

    async def check(self) -> FaultReport:
        """Check every invariant on every node; the report lists what broke."""
        problems = list(self.problems)
        statuses: dict[str, Any] = {}
        for slot, node in zip(self.slots, self.nodes, strict=True):
            if not node.running:
                problems.append(f"{slot.name} is not running")
            try:
                statuses[slot.name] = await self.api.get_json(slot.api_port, "/status")
            except Exception as e:
                problems.append(f"{slot.name}'s API does not answer: {e!r}")
        hashes = {name: status["state_hash"] for name, status in statuses.items()}
        if len(set(hashes.values())) > 1:
            problems.append(f"state hashes differ: {hashes}")
        load = self.load
        lost: list[str] = []
        stranded: list[str] = []
        lost_by: dict[str, int] = {}
        unjournaled: list[str] = []
        undone: list[str] = []
        if load is not None:
            views = await self._order_views([*load.acked])
            for order_id, order in load.acked.items():
                seen = views[order_id]
                if len(set(seen)) > 1 or any(v[0] == "missing" for v in seen):
                    found = lost
                elif seen[0][0] == "pending":
                    found = stranded
                else:
                    continue
                found.append(f"order {order_id} ({order.side} {order.amount} at {order.price}, "
                             f"acknowledged by {self.names[order.node]}): "
                             f"{self._views_text(seen)}")  # fmt: skip
                by_name = self.names[order.node]
                lost_by[by_name] = lost_by.get(by_name, 0) + 1
                if seen[order.node][0] == "missing":
                    unjournaled.append(f"order {order_id}, acknowledged by {by_name}, is "
                                       f"missing on {by_name}")  # fmt: skip
            for order_id, by in load.cancelled.items():
                seen = views[order_id]
                if any(v[0] == "open" for v in seen):
                    undone.append(f"order {order_id}, its cancel acknowledged by "
                                  f"{self.names[by]}, is open: "
                                  f"{self._views_text(seen)}")  # fmt: skip
        problems += [f"unjournaled: {line}" for line in unjournaled]
        problems += [f"lost: {line}" for line in lost]
        problems += [f"stranded: {line}" for line in stranded]
        problems += [f"cancel undone: {line}" for line in undone]
        for name, node in self.lives:
            for line in log_problems(node.output):
                problems.append(f"{name} logged: {line}")
        faults: dict[str, int] = {}
        for fault in self.plan:
            faults[fault.kind] = faults.get(fault.kind, 0) + 1
        converge_s = None
        if self.converged_at is not None and self.last_mend is not None:
            converge_s = float(self.converged_at - self.last_mend)
        return FaultReport(
            seed=self.seed, plan=[fault.describe(self.names) for fault in self.plan],
            timeline=list(self.timeline),
            acked_orders=len(load.acked) if load else 0,
            acked_cancels=len(load.cancelled) if load else 0,
            attempts=load.attempts if load else 0, failures=dict(load.failures) if load else {},
            faults=faults, lost=lost, stranded=stranded, lost_by=lost_by,
            unjournaled=unjournaled, undone=undone,
            converge_s=converge_s, stop_s=list(self.stop_s), problems=problems,
        )  # fmt: skip

    def _views_text(self, views: list[tuple[str, str, str]]) -> str:
        """``A status/filled/remaining, B ...``: one order as each node sees it."""
        return ", ".join(f"{name} {'/'.join(v)}" for name, v in zip(self.names, views, strict=True))

    async def _order_views(self, order_ids: list[str]) -> dict[str, list[tuple[str, str, str]]]:
        """Each order's (status, filled, remaining) on each node; ``missing`` where unknown."""
        views: dict[str, list[tuple[str, str, str]]] = {
            order_id: [("missing", "", "")] * self.size for order_id in order_ids
        }
        gate = DeferredSemaphore(8)

        async def fetch(order_id: str, i: int) -> None:
            code, doc = await self.api.request(self.slots[i].api_port, "GET",
                                               f"/orders/{order_id}")  # fmt: skip
            if code == 200:
                views[order_id][i] = (str(doc["status"]), str(doc["filled"]),
                                      str(doc["remaining"]))  # fmt: skip

        def fetcher(order_id: str, i: int) -> Callable[[], Deferred[None]]:
            return lambda: Deferred.fromCoroutine(fetch(order_id, i))

        await gatherResults(
            [gate.run(fetcher(order_id, i)) for order_id in order_ids for i in range(self.size)]
        )
        return views

    async def close(self) -> None:
        """Kill every node process still running; close the proxies and HTTP connections."""
        for _, node in self.lives:
            if node.running:
                await node.kill()
        await gatherResults([proxy.close() for proxy in self.proxies.values()])
        await self.api.close()
