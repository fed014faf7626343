"""Benchmark: fair order by witness stamps, against the author-clock order, on 127.0.0.1.

Three networks run, built alike: N - 1 real
``twistd bitfi`` processes (``benchmarks/_cluster.py``; TLS on,
``--outbound 2 --max-peers 16``) and one more node, built by the same
code from the same options, in this process on a reactor thread: the
*local node*.  In a fair network the first three processes are its
witnesses (``--witness``, n = 3, f = 1); the author network has none.
The first fair network runs sections 2 and 1; then a fresh one (a
saturating load leaves a fair network changed: see "never in the log")
and the author network run side by side: the author network's section 2,
then section 3 in both.  The local node is a plain node,
bootstrapped to the *victim* (the first plain process) and told to dial it
at once, as ``POST /peers`` does, so it hears the victim's orders one hop
away (in a fair network its three witness links fill its ``--outbound 2``
and it would not dial the victim by itself).

Observing without disturbing: the processes are never polled while a
figure is measured (``GET /status`` hashes the whole book); every time
comes from the local node.  The benchmark taps its
``MarketService.receive`` (what gossip hands the market once signatures
check) to note each arriving order, and a 5 ms ``LoopingCall`` on its
reactor asks its ledger ``is_applied`` / ``position_of`` /
``status_at``, the calls the API's documents use.  Entry times come from
the load client process (``time.time()`` when a ``POST /orders`` got its
201); the local node's reactor clock is the same wall clock.  Times are
thus good to about 5 ms, the scan period.

1. Latency (fair network; with ``--author-latency`` an author network
   too, after it): a paced client process posts orders
   (crossing buys and sells near one price, round-robin over the
   processes) at a light load (20 orders/s) and at a heavy one
   (``--rate``, 600/s by default: offered and accepted are both
   reported; ``--rate 200,400,600`` runs each in turn).  Per order,
   from entry: *tentative* (in the local node's log: it has a fair time
   there), *settled* and *final* (``status_at`` of
   its position first says so), p50 and p99, over the orders that got
   there; also how many never entered the log (waits that make no
   progress for ``--stall`` seconds are given up), and how many witness
   receipts the local node holds and counts for those.  Target: settled
   p99 <= 300 ms.  By design a receipt counts once f + 1 witnesses knew its
   stamp within W = 200 ms, and the settled horizon must pass the end of
   the order's 100 ms slot: expect settled near slot end + W + delivery
   (the witnesses' heartbeats come 1 ms after each slot's end + W).
   In the author network only arrival and tentative are timed (it settles
   at its fixed horizon): its entry to tentative is what the same load
   costs with no witnesses, the machine's own limit.
2. Front-running: the maker (a process) rests one sell per trial, each at
   its own price (ascending, amount 1).  Per trial the victim posts a buy
   at that price; the moment the local node's tap sees it, the attacker
   there signs a buy at the same price and amount with a fresh key
   (:class:`~bitfitech.market.events.Author`), Lamport time and timestamp
   one below the victim's, hands it to the local market (the original
   ``receive``) and pushes it with ``Gossip.publish`` (to every witness
   first, as a node's own event).  The attacker wins a trial when its buy
   takes the maker's sell, which only the first of the two buys in the log
   can do.  Expected: about 100% in the author network, 0 with witnesses.
   Equal fair times go by event id: ``--grind`` has the attacker re-sign
   until its id sorts first.
   Also: revisions of settled trades (``/status`` ``market.revisions``,
   summed over every node; target 0).
3. Throughput and bytes: the load client processes of
   ``bench_replication`` post as fast as they are answered for the same
   time in both networks (the same offered load), in ``--rounds`` pushes
   per network that take turns (fair, author, author, fair: the machine's
   speed drifts by more than the difference measured, and this order
   favours neither), each once the other network's processes are quiet;
   accepted orders/s (each push's too), and bytes sent per order: the
   ``bytes_sent`` of every established TCP socket of the nodes' P2P ports
   (``ss -ti``, the kernel's count, TLS included), from just before each
   push until every node holds every order, over the orders accepted.
   Target: fair at most 10% below author.

Run ``python benchmarks/bench_fair.py [--quick] [--json PATH]``; ``--help``
lists the knobs.  Full: 10 nodes, 100 + 50 trials, about 100 s;
``--quick``: 5 nodes, 20 + 10 trials and shorter loads, about 30 s.
"""

from __future__ import annotations

import argparse
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from _cluster import (
    ApiError,
    Cluster,
    NodeProcess,
    busy_seconds,
    cleanup_on_interrupt,
    machine_info,
    percentile,
    print_table,
    report_problems,
    run_clients,
    run_paced_client,
    self_cpu_seconds,
    wait_until,
)
from _results import Results, add_arguments
from twisted.internet.task import LoopingCall
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogBeginner
from zope.interface import implementer

from bitfitech.address import PeerAddress
from bitfitech.identity import load_or_create_identity
from bitfitech.market.events import Author, Event
from bitfitech.market.ledger import FINAL, TENTATIVE
from bitfitech.market.service import REACH_RECENT
from bitfitech.node import Node, build_node
from bitfitech.tap import Options
from bitfitech.testing import free_ports, global_reactor

T = TypeVar("T")

#: the attack's prices: one per trial from here up, far below the load's (about 50,000)
ATTACK_BASE = 40_000
#: seconds between two scans of the local node's ledger
SCAN_S = 0.005
#: the settled-latency target
SETTLED_TARGET_S = 0.3


def rates(text: str) -> list[float]:
    """The orders/s of C{text}: one or more positive numbers, comma-separated."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not all(0 < value < float("inf") for value in values):
        raise argparse.ArgumentTypeError("rates must be positive")
    return values


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


# -- the reactor thread and the local node


class ReactorThread:
    """The global reactor, running in a thread of its own while the benchmark drives it."""

    def __init__(self) -> None:
        self.reactor = global_reactor()
        self.thread = threading.Thread(
            target=self.reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run C{function} in the reactor thread; its result (a Deferred's, once fired)."""
        result: T = blockingCallFromThread(self.reactor, function, *args)
        return result

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self.thread.join(10)


@implementer(ILogObserver)
class ProblemLog:
    """This process's warnings, errors and tracebacks (the local node's log)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.warn:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            self.lines.append(f"[{level.name}] {text}")


@dataclass
class OrderTimes:
    """When one order reached each state on the local node (reactor clock, seconds)."""

    arrived: float
    tentative: float | None = None
    settled: float | None = None
    final: float | None = None


class StatusWatch:
    """
    Notes when orders arrive at the local node, enter its log, settle and
    become final there: the arrival from the tap, the rest from a scan of
    the ledger every :data:`SCAN_S` seconds (only while recording).
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.times: dict[str, OrderTimes] = {}
        self.recording = False
        self._waiting: set[str] = set()
        self._unsettled: set[str] = set()
        self._unfinal: set[str] = set()
        self._loop = LoopingCall(self.scan)
        self._loop.clock = node.clock

    def start(self) -> None:
        self.recording = True
        if not self._loop.running:
            self._loop.start(SCAN_S, now=False)

    def stop(self) -> None:
        self.recording = False
        if self._loop.running:
            self._loop.stop()

    def arrived(self, events: Sequence[Event], now: float) -> None:
        if not self.recording:
            return
        for event in events:
            if event.is_order and event.id not in self.times:
                self.times[event.id] = OrderTimes(now)
                self._waiting.add(event.id)

    def scan(self) -> None:
        ledger = self.node.market.ledger
        now = self.node.clock.seconds()
        for event_id in list(self._waiting):
            event = ledger.get(event_id)
            if event is not None and ledger.is_applied(event):
                self.times[event_id].tentative = now
                self._waiting.discard(event_id)
                self._unsettled.add(event_id)
        if not (self._unsettled or self._unfinal):
            return
        settled = ledger.settled_position()
        for pending, final_only in ((self._unsettled, False), (self._unfinal, True)):
            for event_id in list(pending):
                event = ledger.get(event_id)
                position = ledger.position_of(event) if event is not None else None
                if position is None:
                    continue
                status = ledger.status_at(position, settled)
                times = self.times[event_id]
                if status != TENTATIVE and not final_only:
                    times.settled = now
                    pending.discard(event_id)
                    self._unfinal.add(event_id)
                if status == FINAL:
                    times.final = now
                    self._unfinal.discard(event_id)

    def not_in_log(self, ids: Sequence[str]) -> int:
        """How many of the orders C{ids} are not in the log here yet (or never arrived)."""
        return sum(1 for i in ids if i not in self.times or self.times[i].tentative is None)

    def not_final(self, ids: Sequence[str]) -> int:
        """How many of the orders C{ids} are not final here yet (or never arrived)."""
        return sum(1 for i in ids if i not in self.times or self.times[i].final is None)


@dataclass
class Trial:
    """
    One front-running trial: its price, the maker's sell, the victim's buy
    and when its POST returned (the attacker's buy is in :attr:`Attacker.attacks`).
    """

    price: str
    sell: str
    buy: str = ""
    entry: float = 0.0


class Attacker:
    """
    On the local node: signs a backdated buy for every buy of the victim's
    at a trial price the moment it arrives, and pushes it.
    """

    def __init__(self, local: LocalNode) -> None:
        self.local = local
        market = local.node.market
        self.author = Author(secrets.token_bytes(32), market.network, market.pair)
        self.seq = 1
        self.victim = ""
        self.prices: set[str] = set()
        self.grind = False
        #: victim's buy id -> (attacker's buy, seen, injected)
        self.attacks: dict[str, tuple[Event, float, float]] = {}

    def arm(self, victim: str, prices: Sequence[str], grind: bool) -> None:
        """Attack C{victim}'s buys at C{prices} (none: stop); with C{grind}, grind the id."""
        self.victim = victim
        self.prices = set(prices)
        self.grind = grind

    def arrived(self, events: Sequence[Event], now: float) -> None:
        for event in events:
            if (
                event.author == self.victim
                and event.is_order
                and event.side == "buy"
                and event.price in self.prices
                and event.id not in self.attacks
            ):
                attack = self.sign(event, 0)
                # Equal fair times go by event id: a grinding attacker re-signs
                # until its id sorts first (two signatures on average).
                tries = 1
                while self.grind and attack.id > event.id and tries < 64:
                    attack = self.sign(event, tries)
                    tries += 1
                self.seq += 1
                self.local.inject(attack)
                self.attacks[event.id] = (attack, now, self.local.node.clock.seconds())

    def sign(self, victim: Event, earlier: int) -> Event:
        """A buy like C{victim}'s, Lamport time one below and timestamp C{earlier} + 1 below."""
        return self.author.order(
            self.seq, victim.lamport - 1, victim.ts - 1 - earlier, "buy", victim.order_type,
            victim.price, victim.amount,
        )  # fmt: skip


class LocalNode:
    """
    One more node of the cluster, in this process: built by ``build_node``
    from the same plugin options as the processes, with a tap on its
    market's ``receive`` for the watch and the attacker.
    """

    def __init__(self, cluster: Cluster, bootstrap: Sequence[int]) -> None:
        port, api_port = free_ports(2)
        self.twin = NodeProcess(
            len(cluster.nodes), cluster.base, port, api_port, bootstrap=bootstrap,
            outbound=cluster.outbound, max_peers=cluster.max_peers, witnesses=cluster.witnesses,
        )  # fmt: skip
        self.port = port
        options = Options()
        options.environ = {}
        options.parseOptions(self.twin.args[self.twin.args.index("bitfi") + 1 :])
        assert options.config is not None
        self.config = options.config
        self.node: Node
        self.watch: StatusWatch
        self.attacker: Attacker

    def start(self, reactor: Any) -> None:
        """Build and start the node (in the reactor thread)."""
        self.node = build_node(self.config, reactor)
        self.node.startService()
        market = self.node.market
        self._receive = market.receive
        market.receive = self._tapped  # type: ignore[method-assign]
        self.watch = StatusWatch(self.node)
        self.attacker = Attacker(self)

    def _tapped(self, events: Sequence[Event], arrived: float | None = None) -> None:
        now = self.node.clock.seconds()
        self.watch.arrived(events, now)
        self._receive(events, arrived)
        self.attacker.arrived(events, now)

    def inject(self, event: Event) -> None:
        """Take C{event} into the local market and push it to the peers, as a node's own."""
        self._receive([event])
        self.node.gossip.publish([event])

    def stop(self) -> Any:
        self.watch.stop()
        return self.node.stopService()

    def dial(self, port: int) -> None:
        """Link to the node listening on C{port} now, past the outbound target."""
        d = self.node.peers.dialer.dial(PeerAddress("127.0.0.1", port))
        d.addErrback(lambda _: None)  # the wait for the links says so if it never links

    def linked_to(self, node_ids: Sequence[str]) -> bool:
        linked = {link.node_id for link in self.node.peers.hub.links.values()}
        return all(node_id in linked for node_id in node_ids)

    def status(self) -> dict[str, Any]:
        return self.node.control.status()

    def receipts_of(self, ids: Sequence[str]) -> list[tuple[tuple[int, int], int]]:
        """
        How many witness receipts the local node holds for each event of
        C{ids}, and how many of them count: (held, counted) -> events, most first.
        """
        fair = self.node.market.ledger.fair
        if fair is None:
            return []
        found = Counter(
            (len(receipts), sum(counts for _, counts in receipts.values()))
            for receipts in map(fair.receipts, ids)
        )
        return found.most_common()


# -- the bytes on the wire


_SS_BYTES = re.compile(r"\bbytes_sent:(\d+)")


def socket_bytes(ports: Sequence[int]) -> dict[tuple[str, str], int] | None:
    """
    ``bytes_sent`` of every established TCP socket with a port in C{ports}
    at either end, by (local, peer) address; ``None`` without ``ss``.
    """
    wanted = " or ".join(f"sport = :{p} or dport = :{p}" for p in ports)
    try:
        out = subprocess.run(
            ["ss", "-tinH", "state", "established", f"( {wanted} )"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    found: dict[tuple[str, str], int] = {}
    key: tuple[str, str] | None = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            fields = line.split()
            key = (fields[2], fields[3]) if len(fields) >= 4 else None
            if key is not None:
                found[key] = 0
        elif key is not None:
            match = _SS_BYTES.search(line)
            if match:
                found[key] = int(match.group(1))
    return found


def bytes_between(
    before: dict[tuple[str, str], int] | None, after: dict[tuple[str, str], int] | None
) -> tuple[int, int] | None:
    """Bytes sent between two :func:`socket_bytes`, and how many sockets closed meanwhile."""
    if before is None or after is None:
        return None
    sent = sum(count - before.get(key, 0) for key, count in after.items())
    return sent, len(set(before) - set(after))


# -- waiting


def wait_steady(
    probe: Callable[[], tuple[bool, object]], timeout: float, stall: float, interval: float = 0.2
) -> tuple[bool, float]:
    """
    Poll C{probe}, which says whether the wait is over and how far along
    things are, until it is over; give up after C{timeout} seconds, or once
    things have not moved for C{stall} seconds.

    :return: whether the wait ended with C{probe} done, and the seconds it took.
    """
    started = time.monotonic()
    last: object = None
    since = started
    while True:
        done, progress = probe()
        now = time.monotonic()
        if done:
            return True, now - started
        if progress != last:
            last, since = progress, now
        elif now - since >= stall or now - started >= timeout:
            return False, now - started
        time.sleep(interval)


# -- the networks


@dataclass
class Network:
    """One network under test: its processes, the local node and the roles."""

    mode: str
    cluster: Cluster
    local: LocalNode
    rt: ReactorThread
    victim: NodeProcess
    maker: NodeProcess
    formed_s: float
    mean_links: float

    @property
    def api_ports(self) -> list[int]:
        return [node.api_port for node in self.cluster.nodes]

    @property
    def p2p_ports(self) -> list[int]:
        return [node.port for node in self.cluster.nodes] + [self.local.port]

    def statuses(self) -> list[dict[str, Any]]:
        """Every node's ``GET /status``, the local node's last."""
        return [*self.cluster.statuses(), self.rt.call(self.local.status)]

    def converged(self, at_least: int) -> tuple[bool, object]:
        """Whether every node holds the same events (at least C{at_least}) and state hash."""
        statuses = self.statuses()
        counts = tuple(s["events"] for s in statuses)
        hashes = {s["state_hash"] for s in statuses}
        done = min(counts) >= at_least and len(set(counts)) == 1 and len(hashes) == 1
        return done, (counts, tuple(sorted(hashes)))


def start_network(mode: str, rt: ReactorThread, cluster: Cluster) -> Network:
    """Start the processes, then the local node; wait until it links to the witnesses and victim."""
    witnesses = 3 if mode == "fair" else 0
    started = time.monotonic()
    cluster.start()
    plain = cluster.nodes[witnesses:]
    victim = plain[0]
    maker = plain[1] if len(plain) > 1 else cluster.nodes[0]
    local = LocalNode(cluster, [victim.port, cluster.nodes[0].port])
    rt.call(local.start, rt.reactor)
    rt.call(local.dial, victim.port)
    want = [node.node_id for node in cluster.nodes[:witnesses]] + [victim.node_id]
    wait_until(lambda: rt.call(local.linked_to, want), 60, "the local node's links")
    formed = time.monotonic() - started
    if witnesses:
        # A witness fits its receipts to the longest delay its stamps showed
        # over the last REACH_RECENT; while the witnesses link up, that is
        # their start-up, not gossip (the first order waited 0.4 to 1.3 s).
        # Measure from stamps signed once that has passed.
        steady_ms = (time.time() + REACH_RECENT + 0.5) * 1000

        def steady() -> bool:
            chains = rt.call(local.status)["witnesses"]["chains"]
            return all(isinstance(c["t"], int) and c["t"] >= steady_ms for c in chains)

        wait_until(steady, 30, "the witnesses' stamps")
    rows = cluster.peer_rows()
    local_links = rt.call(lambda: len(local.node.peers.hub.links))
    mean_links = (sum(len(r) for r in rows) + local_links) / (len(rows) + 1)
    return Network(mode, cluster, local, rt, victim, maker, formed, mean_links)


def witnessing(statuses: list[dict[str, Any]]) -> tuple[int, int]:
    """Stamps the witnesses signed, and events they listed again, since they started."""
    blocks = [s["witnesses"] for s in statuses if s["witnesses"]]
    return sum(b["stamps_signed"] for b in blocks), sum(b["relisted"] for b in blocks)


def held_without_fair_time(statuses: list[dict[str, Any]]) -> int:
    """The most events any node holds without a fair time (``waiting_events``)."""
    return max(int((s["witnesses"] or {}).get("waiting_events", 0)) for s in statuses)


# -- 1. latency


def latency_run(
    net: Network, rate: float, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Post C{rate} orders/s for C{seconds} over the processes; time each on the local node."""
    rt, watch = net.rt, net.local.watch
    count = max(1, round(rate * seconds))
    rt.call(watch.start)
    try:
        start_at, result = run_paced_client(net.api_ports, rate, count, threads=24, seed=int(rate))
        acked = result["acked"]
        ids = [row[0] for row in acked]

        # The author order never calls a trade final: there, wait for the log.
        waiting = watch.not_final if net.mode == "fair" else watch.not_in_log

        def probe() -> tuple[bool, object]:
            left = rt.call(waiting, ids)
            return left == 0, left

        complete, _ = wait_steady(probe, args.wait, args.stall)
    finally:
        rt.call(watch.stop)
    times = dict(watch.times)
    never = [row[0] for row in acked if row[0] not in times or times[row[0]].tentative is None]
    stages: dict[str, list[float]] = {"arrived": [], "tentative": [], "settled": [], "final": []}
    missing = dict.fromkeys(stages, 0)
    for order_id, _node, _due, entry in acked:
        seen = times.get(order_id)
        for stage in stages:
            at = getattr(seen, stage) if seen is not None else None
            if at is None:
                missing[stage] += 1
            else:
                stages[stage].append(at - entry)
    post = [done - due for _, _, due, done in acked]
    last = max((row[3] for row in acked), default=start_at)
    return {
        "mode": net.mode,
        "offered": rate,
        "count": count,
        "acked": len(acked),
        "accepted": len(acked) / max(1e-9, last - start_at),
        "errors": result["errors"],
        "post_p50": percentile(post, 0.5),
        "post_p99": percentile(post, 0.99),
        "stages": stages,
        "missing": missing,
        "complete": complete,
        "stuck": held_without_fair_time(net.statuses()),
        "receipts": rt.call(net.local.receipts_of, never),
    }


def latency_rows(name: str, run: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        (f"{name}: offered / accepted orders/s",
         f"{run['offered']:g} / {run['accepted']:.0f}"),
        (f"{name}: orders posted / acknowledged", f"{run['count']} / {run['acked']}"),
        (f"{name}: requests failed",
         ", ".join(f"{k}: {v}" for k, v in run["errors"].items()) or "0"),
        (f"{name}: due to acknowledged p50 / p99 (ms)",
         f"{ms(run['post_p50'])} / {ms(run['post_p99'])}"),
    ]  # fmt: skip
    # The author order settles at a fixed horizon and is never final: its
    # run waits for the log only.
    stages = ("arrived", "tentative", "settled", "final")[: 4 if run["mode"] == "fair" else 2]
    for stage in stages:
        values = run["stages"][stage]
        rows.append(
            (f"{name}: entry to {stage} p50 / p99 / max (ms)",
             f"{ms(percentile(values, 0.5))} / {ms(percentile(values, 0.99))} / "
             f"{ms(max(values, default=float('nan')))}")
        )  # fmt: skip
    missing = run["missing"]
    rows.append(
        (f"{name}: never {' / '.join(stages)}", " / ".join(str(missing[s]) for s in stages))
    )
    if run["mode"] == "fair":
        rows.append(
            (f"{name}: events held without a fair time after, max per node", f"{run['stuck']}")
        )
    if run["receipts"]:
        rows.append(
            (f"{name}: never in the log: receipts held, counted (orders)",
             "; ".join(f"{held}, {counted} ({n})" for (held, counted), n in run["receipts"]))
        )  # fmt: skip
    return rows


# -- 2. front-running


def attack_run(
    net: Network, trials: int, spacing: float, args: argparse.Namespace
) -> dict[str, Any]:
    """The maker's sells, then C{trials} victim buys, each front-run by the local attacker."""
    rt, local = net.rt, net.local
    prices = [str(ATTACK_BASE + i) for i in range(trials)]
    sells: list[str] = []
    for start in range(0, trials, 100):
        chunk = [{"side": "sell", "price": p, "amount": "1"} for p in prices[start : start + 100]]
        status, body = net.maker.api.request("POST", "/orders/batch", {"orders": chunk})
        if status != 201:
            raise RuntimeError(f"the maker's sells were refused: {status} {body}")
        sells += [doc["id"] for doc in body["orders"]]
    runs = [Trial(price, sell) for price, sell in zip(prices, sells, strict=True)]

    def unsettled(ids: Sequence[str]) -> int:
        """How many of C{ids} the local node does not hold settled (author order: applied)."""
        ledger = local.node.market.ledger
        at = ledger.settled_position()
        left = 0
        for event_id in ids:
            event = ledger.get(event_id)
            position = ledger.position_of(event) if event is not None else None
            if position is None or (
                ledger.fair is not None and ledger.status_at(position, at) == TENTATIVE
            ):
                left += 1
        return left

    def probe(ids: Callable[[], list[str]]) -> Callable[[], tuple[bool, object]]:
        def check() -> tuple[bool, object]:
            left = rt.call(lambda: unsettled(ids()))
            return left == 0, left

        return check

    done, _ = wait_steady(probe(lambda: sells), args.wait, args.stall)
    if not done:
        raise RuntimeError("the maker's sells did not settle on the local node")
    victim_author = load_or_create_identity(net.victim.data_dir).public_key.hex()
    rt.call(local.attacker.arm, victim_author, prices, args.grind)
    started = time.monotonic()
    for i, run in enumerate(runs):
        delay = started + i * spacing - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            status, body = net.victim.api.request(
                "POST", "/orders", {"side": "buy", "price": run.price, "amount": "1"}
            )
        except ApiError:
            continue
        if status == 201:
            run.buy, run.entry = body["id"], time.time()

    def trial_ids() -> list[str]:
        ids = [run.buy for run in runs if run.buy]
        ids += [attack.id for attack, _, _ in local.attacker.attacks.values()]
        return ids

    complete, _ = wait_steady(probe(trial_ids), args.wait, args.stall)

    def judge() -> dict[str, Any]:
        ledger = local.node.market.ledger
        fair = ledger.fair
        won = lost = undecided = not_attacked = 0
        gaps: list[int] = []
        reactions: list[float] = []
        for run in runs:
            found = local.attacker.attacks.get(run.buy)
            if not run.buy or found is None:
                not_attacked += 1
                continue
            attack, seen, injected = found
            reactions.append(injected - seen)
            trades = ledger.trades_of(run.sell)
            parties = {t.taker for t in trades} | {t.maker for t in trades}
            if attack.id in parties:
                won += 1
            elif run.buy in parties:
                lost += 1
            else:
                undecided += 1
            if fair is not None:
                a, b = fair.fair_time(attack.id), fair.fair_time(run.buy)
                if a is not None and b is not None:
                    gaps.append(a - b)  # microseconds
        return {
            "won": won, "lost": lost, "undecided": undecided, "not_attacked": not_attacked,
            "gaps_ms": gaps, "reactions": reactions,
        }  # fmt: skip

    outcome = rt.call(judge)
    outcome["trials"] = trials
    outcome["complete"] = complete
    outcome["seen_before_ack"] = sum(
        1
        for run in runs
        if run.buy in local.attacker.attacks and local.attacker.attacks[run.buy][1] < run.entry
    )
    rt.call(local.attacker.arm, "", [], False)
    return outcome


def attack_rows(name: str, run: dict[str, Any]) -> list[tuple[str, str]]:
    decided = run["won"] + run["lost"]
    rate = run["won"] / decided if decided else float("nan")
    rows = [
        (f"{name}: trials / attacked / decided",
         f"{run['trials']} / {run['trials'] - run['not_attacked']} / {decided}"),
        (f"{name}: attacker traded first", f"{run['won']} ({rate:.0%})"),
        (f"{name}: victim traded first", f"{run['lost']}"),
        (f"{name}: neither took the maker's sell", f"{run['undecided']}"),
        (f"{name}: victim's buy reached the attacker before its POST returned",
         f"{run['seen_before_ack']}"),
        (f"{name}: attacker's reaction p50 / max (ms)",
         f"{percentile(run['reactions'], 0.5) * 1000:.2f} / "
         f"{max(run['reactions'], default=float('nan')) * 1000:.2f}"),
        (f"{name}: every trial settled", "yes" if run["complete"] else "NO"),
    ]  # fmt: skip
    if run["gaps_ms"]:
        gaps = run["gaps_ms"]
        rows += [
            (f"{name}: attacker's fair time minus victim's min / p50 / max (ms)",
             f"{min(gaps) / 1000:.3f} / {percentile(gaps, 0.5) / 1000:.3f} / "
             f"{max(gaps) / 1000:.3f}"),
            (f"{name}: attacker's fair time earlier / equal / later",
             f"{sum(g < 0 for g in gaps)} / {sum(g == 0 for g in gaps)} / "
             f"{sum(g > 0 for g in gaps)}"),
        ]  # fmt: skip
    return rows


# -- 3. throughput and bytes


def throughput_run(net: Network, args: argparse.Namespace) -> dict[str, Any]:
    ports = net.p2p_ports
    idle_before = socket_bytes(ports)
    time.sleep(args.idle)
    before = socket_bytes(ports)
    idle = bytes_between(idle_before, before)
    held_before = min(s["events"] for s in net.statuses())
    cpu_before, busy_before, self_before = (
        net.cluster.cpu_seconds(), busy_seconds(), self_cpu_seconds(),
    )  # fmt: skip
    start_at, results = run_clients(net.api_ports, args.clients, args.threads, args.duration)
    pushed_at = max([r["last_ack"] for r in results if r["last_ack"]] or [time.time()])
    total = sum(len(r["acked"]) for r in results)
    push_s = max(1e-9, pushed_at - start_at)
    converged, converge_s = wait_steady(
        lambda: net.converged(held_before + total), args.wait, args.stall
    )
    after = socket_bytes(ports)
    sent = bytes_between(before, after)
    cpu_nodes = net.cluster.cpu_seconds() - cpu_before
    cpu_self = self_cpu_seconds() - self_before
    cpu_clients = sum(r["cpu_s"] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for key, count in r["errors"].items():
            errors[key] = errors.get(key, 0) + count
    return {
        "accepted": total / push_s,
        "pushes": [total / push_s],
        "push_s": push_s,
        "orders": total,
        "errors": errors,
        "converged": converged,
        "converge_s": converge_s,
        "window_s": time.time() - start_at,
        "bytes": sent,
        "idle_bytes_s": idle[0] / args.idle if idle is not None else None,
        "stuck": held_without_fair_time(net.statuses()),
        "witnessing": witnessing(net.statuses()),
        "cpu_nodes": cpu_nodes,
        "cpu_self": cpu_self,
        "cpu_clients": cpu_clients,
        "cpu_other": busy_seconds() - busy_before - cpu_nodes - cpu_self - cpu_clients,
    }


def wait_quiet(cluster: Cluster, timeout: float, busy: float = 0.05) -> None:
    """
    Wait until C{cluster}'s processes together use under C{busy} of a core
    (over half a second), at most C{timeout} seconds: a fair network signs
    stamps for a few seconds after its last order, and another network's
    push must not share the machine with that.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cluster.cpu_seconds()
        time.sleep(0.5)
        if cluster.cpu_seconds() - before < busy * 0.5:
            return


def combine_pushes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One network's pushes as one: orders and seconds, bytes and CPU added up."""
    if len(runs) == 1:
        return runs[0]
    total = sum(r["orders"] for r in runs)
    push_s = sum(r["push_s"] for r in runs)
    sent = [r["bytes"] for r in runs]
    idle = [r["idle_bytes_s"] for r in runs]
    errors: Counter[str] = Counter()
    for r in runs:
        errors.update(r["errors"])
    added = ("converge_s", "window_s", "cpu_nodes", "cpu_self", "cpu_clients", "cpu_other")
    return {
        "accepted": total / push_s,
        "pushes": [p for r in runs for p in r["pushes"]],
        "push_s": push_s,
        "orders": total,
        "errors": dict(errors),
        "converged": all(r["converged"] for r in runs),
        **{key: sum(r[key] for r in runs) for key in added},
        "bytes": None if None in sent else (sum(b[0] for b in sent), sum(b[1] for b in sent)),
        "idle_bytes_s": None if None in idle else max(idle),
        "stuck": max(r["stuck"] for r in runs),
        "witnessing": runs[-1]["witnessing"],
    }


def throughput_rows(name: str, run: dict[str, Any]) -> list[tuple[str, str]]:
    sent = run["bytes"]
    per_order = f"{sent[0] / max(1, run['orders']):,.0f}" if sent is not None else "n/a (no ss)"
    converged = f"{run['converge_s']:.1f}"
    if not run["converged"]:
        converged = f"NO (gave up after {converged})"
    return [
        (f"{name}: orders/s accepted", f"{run['accepted']:,.0f}"),
        (f"{name}: orders/s accepted, each push",
         ", ".join(f"{p:,.0f}" for p in run["pushes"])),
        (f"{name}: orders acknowledged; requests failed",
         f"{run['orders']:,}; " + (", ".join(f"{k}: {v}" for k, v in run["errors"].items())
                                   or "0")),
        (f"{name}: every node held every order, s after the push", converged),
        (f"{name}: bytes sent per order, all nodes", per_order),
        (f"{name}: over (s), P2P sockets closed meanwhile",
         f"{run['window_s']:.1f}, {sent[1] if sent else 'n/a'}"),
        (f"{name}: idle P2P traffic before, all nodes (B/s)",
         f"{run['idle_bytes_s']:,.0f}" if run["idle_bytes_s"] is not None else "n/a"),
        (f"{name}: events held without a fair time after, max per node", f"{run['stuck']}"),
        (f"{name}: stamps signed; events listed again (all witnesses)",
         "{:,}; {:,}".format(*run["witnessing"])),
        (f"{name}: CPU s: nodes / load clients / this process / others",
         f"{run['cpu_nodes']:.1f} / {run['cpu_clients']:.1f} / {run['cpu_self']:.1f} / "
         f"{max(0.0, run['cpu_other']):.1f}"),
    ]  # fmt: skip


# -- the runs


@contextmanager
def network(mode: str, args: argparse.Namespace, rt: ReactorThread) -> Iterator[Network]:
    """A running network (``fair`` or ``author``), stopped on the way out."""
    witnesses = 3 if mode == "fair" else 0
    with Cluster(
        args.nodes - 1, 4, name=f"fair-{mode}", seed=5, witnesses=witnesses, max_peers=16
    ) as cluster:
        net = start_network(mode, rt, cluster)
        try:
            yield net
        finally:
            rt.call(net.local.stop)


def network_rows(net: Network) -> list[tuple[str, str]]:
    witnesses = 3 if net.mode == "fair" else 0
    return [
        ("nodes: processes + local; witnesses", f"{len(net.cluster.nodes)} + 1; {witnesses}"),
        ("links per node, mean; started and linked (s)",
         f"{net.mean_links:.1f}; {net.formed_s:.1f}"),
    ]  # fmt: skip


def closing_checks(net: Network, out: dict[str, Any]) -> None:
    """
    Wait (at most 15 s) until every node holds as many events as any (the
    last ones may be on their way), then note revisions, state hashes and
    the problems logged into C{out}.
    """
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        statuses = net.statuses()
        counts = {s["events"] for s in statuses}
        if len(counts) == 1 and len({s["state_hash"] for s in statuses}) == 1:
            break
        time.sleep(0.5)
    out["revisions"] = sum(s["market"]["revisions"] for s in statuses)
    out["hashes"] = len({s["state_hash"] for s in statuses})
    out["counts"] = sorted({s["events"] for s in statuses})
    witness_revisions = sum((s["witnesses"] or {}).get("witness_revisions", 0) for s in statuses)
    flagged = sum(len(s["market"]["flagged_authors"]) for s in statuses)
    rows = out["rows"]
    rows += [
        ("revisions of settled trades, all nodes", f"{out['revisions']}"),
        ("witness revisions / authors flagged, all nodes", f"{witness_revisions} / {flagged}"),
        ("state hashes equal at the end (within 15 s)",
         "yes" if out["hashes"] == 1
         else f"NO ({out['hashes']} hashes; events held {out['counts']})"),
    ]  # fmt: skip
    for index, status in enumerate(statuses):
        block = status["witnesses"] or {}
        if block.get("waiting_events"):
            chains = "; ".join(f"{c['seq']}+{c['waiting']} t={c['t']}" for c in block["chains"])
            rows.append((f"node {index}: events waiting; settled held by; chains",
                         f"{block['waiting_events']}; {block.get('settled_held_by')}; "
                         f"{chains}"))  # fmt: skip
    out["problems"] = net.cluster.problems()


def run_network(
    mode: str, sections: str, args: argparse.Namespace, rt: ReactorThread
) -> dict[str, Any]:
    """
    Start a network (``fair`` or ``author``), run sections 2 and 1 (those
    of them in C{sections}), stop it; its figures and table rows.
    """
    with network(mode, args, rt) as net:
        out: dict[str, Any] = {"rows": network_rows(net)}
        rows = out["rows"]
        if "2" in sections:
            trials = args.trials if mode == "fair" else args.baseline_trials
            out["attack"] = attack_run(net, trials, args.spacing, args)
            rows += attack_rows("2. front-running", out["attack"])
        if "1" in sections:
            out["loads"] = loads = {}
            loads["light"] = latency_run(net, args.light_rate, args.light_s, args)
            rows += latency_rows("1. light load", loads["light"])
            for rate in args.rate:
                name = "heavy" if len(args.rate) == 1 else f"{rate:g}/s"
                wait_quiet(net.cluster, args.wait)
                loads[name] = run = latency_run(net, rate, args.heavy_s, args)
                rows += latency_rows(f"1. {name} load", run)
        closing_checks(net, out)
    return out


def run_side_by_side(
    sections: str, args: argparse.Namespace, rt: ReactorThread
) -> dict[str, dict[str, Any]]:
    """
    Start a fresh fair network and the author network side by side; run
    the author network's section 2, then section 3 in both, their pushes
    taking turns (fair, author, author, fair, ...: a machine whose speed
    drifts during the run favours neither), each once the other network is
    quiet.  Per mode: its figures and table rows.
    """
    with network("fair", args, rt) as fair, network("author", args, rt) as author:
        nets = {"fair": fair, "author": author}
        outs: dict[str, dict[str, Any]] = {
            mode: {"rows": network_rows(net)} for mode, net in nets.items()
        }
        if "2" in sections:
            outs["author"]["attack"] = attack_run(author, args.baseline_trials, args.spacing, args)
            outs["author"]["rows"] += attack_rows("2. front-running", outs["author"]["attack"])
        if "3" in sections:
            pushes: dict[str, list[dict[str, Any]]] = {"fair": [], "author": []}
            for turn in range(args.rounds):
                order = ("fair", "author") if turn % 2 == 0 else ("author", "fair")
                for mode in order:
                    other = nets["author" if mode == "fair" else "fair"]
                    wait_quiet(other.cluster, args.wait)
                    pushes[mode].append(throughput_run(nets[mode], args))
            for mode, runs in pushes.items():
                outs[mode]["throughput"] = run = combine_pushes(runs)
                outs[mode]["rows"] += throughput_rows("3. throughput", run)
        for mode, net in nets.items():
            closing_checks(net, outs[mode])
    return outs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nodes", type=int, help="nodes per network, the local one too [10; quick 5]"
    )  # noqa: E501
    parser.add_argument("--light-rate", type=float, default=20.0, help="light load, orders/s [20]")
    parser.add_argument("--light-s", type=float, help="light load seconds [10; quick 3]")
    parser.add_argument(
        "--rate", type=rates, default=[600.0],
        help="heavy load offered, orders/s; several, comma-separated, run one after another [600]",
    )  # fmt: skip
    parser.add_argument(
        "--author-latency", action="store_true",
        help="run section 1 in an author-clock network too, after the fair one: its entry to "
             "tentative (into the log) is the time the same load takes without witnesses",
    )  # fmt: skip
    parser.add_argument("--heavy-s", type=float, help="heavy load seconds [5; quick 2]")
    parser.add_argument(
        "--trials", type=int, help="front-running trials with witnesses [100; quick 20]"
    )  # noqa: E501
    parser.add_argument(
        "--baseline-trials", type=int, help="trials without witnesses [50; quick 10]"
    )  # noqa: E501
    parser.add_argument("--spacing", type=float, default=0.2, help="seconds between trials [0.2]")
    parser.add_argument(
        "--grind", action="store_true",
        help="the attacker re-signs (timestamp one lower each time) until its event id sorts "
             "below the victim's, the tie-break of equal fair times",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=float, help="seconds of each throughput push [5; quick 3]"
    )
    parser.add_argument(
        "--rounds", type=int,
        help="throughput pushes per network, taking turns with the other [2; quick 1]",
    )  # fmt: skip
    parser.add_argument("--clients", type=int, default=2, help="load client processes [2]")
    parser.add_argument("--threads", type=int, default=8, help="threads per client [8]")
    parser.add_argument(
        "--idle", type=float, default=1.0, help="seconds of idle traffic measured [1]"
    )  # noqa: E501
    parser.add_argument(
        "--wait", type=float, default=30.0, help="longest wait for a catch-up, s [30]"
    )  # noqa: E501
    parser.add_argument(
        "--stall", type=float, default=3.0,
        help="a catch-up that makes no progress for this long is given up, s [3]",
    )  # fmt: skip
    parser.add_argument("--sections", default="123", help="which sections to run [123]")
    add_arguments(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    args.nodes = args.nodes or (5 if quick else 10)
    args.light_s = args.light_s or (3.0 if quick else 10.0)
    args.heavy_s = args.heavy_s or (2.0 if quick else 5.0)
    args.trials = args.trials or (20 if quick else 100)
    args.baseline_trials = args.baseline_trials or (10 if quick else 50)
    args.duration = args.duration or (3.0 if quick else 5.0)
    args.rounds = args.rounds or (1 if quick else 2)
    if args.nodes < 5:
        parser.error("--nodes: at least 5 (3 witnesses, the victim, the local node)")
    report = Results("bench_fair", quick=quick)
    header = f"{'quick; ' if quick else ''}{machine_info()}"
    problems = ProblemLog()
    globalLogBeginner.beginLoggingTo([problems], redirectStandardIO=False)
    rt = ReactorThread()
    rt.start()
    runs: dict[str, dict[str, Any]] = {}
    titles = (
        "fair network, sections 2 and 1",
        "fresh fair network, section 3",
        "author-clock network, sections 2 and 3",
        "author-clock network, section 1",
    )
    try:
        with cleanup_on_interrupt():
            wanted = "".join(c for c in "21" if c in args.sections)
            if wanted:
                runs[titles[0]] = run_network("fair", wanted, args, rt)
                print_table(f"{titles[0]}: {header}", runs[titles[0]]["rows"])
            if "1" in args.sections and args.author_latency:
                runs[titles[3]] = run_network("author", "1", args, rt)
                print_table(f"{titles[3]}: {header}", runs[titles[3]]["rows"])
            wanted = "".join(c for c in "23" if c in args.sections)
            if wanted:
                pair = run_side_by_side(wanted, args, rt)
                if "3" in wanted:
                    runs[titles[1]] = pair["fair"]
                runs[titles[2]] = pair["author"]
                for title in titles[1:]:
                    if title in runs:
                        print_table(f"{title}: {header}", runs[title]["rows"])
    finally:
        rt.stop()
    fair = runs.get(titles[0], {})
    fair3 = runs.get(titles[1], {})
    author = runs.get(titles[2], {})
    verdicts: list[tuple[str, str]] = []

    for name, run in fair.get("loads", {}).items():
        where = f"{args.nodes} nodes, 3 witnesses, {run['offered']:g} orders/s offered"
        for stage in ("tentative", "settled", "final"):
            values = run["stages"][stage]
            p99 = percentile(values, 0.99)
            report.add(f"entry to {stage} p50, {name} load ({where})",
                       round(percentile(values, 0.5) * 1000), "ms")  # fmt: skip
            if stage == "settled":
                met = p99 <= SETTLED_TARGET_S and not run["missing"]["settled"]
                report.add(f"entry to settled p99, {name} load ({where})", round(p99 * 1000), "ms",
                           "p99 <= 300 ms", met)  # fmt: skip
                verdicts.append((f"1. settled p99 <= 300 ms, {name} load",
                                 f"{ms(p99)} ms: {'met' if met else 'MISSED'}"))  # fmt: skip
            else:
                report.add(f"entry to {stage} p99, {name} load ({where})", round(p99 * 1000), "ms")
        report.add(f"orders/s accepted, {name} load ({run['offered']:g} offered)",
                   round(run["accepted"]), "orders/s")  # fmt: skip
        never = run["missing"]["tentative"]
        report.add(f"orders never in the log, {name} load", never, "orders", "0", never == 0)
        verdicts.append((f"1. every order in the log, {name} load",
                         f"{never} of {run['acked']} never: {'met' if not never else 'MISSED'}"))  # fmt: skip  # noqa: E501
    for name, run in runs.get(titles[3], {}).get("loads", {}).items():
        where = f"{args.nodes} nodes, {run['offered']:g} orders/s offered"
        for q in (0.5, 0.99):
            report.add(f"entry to tentative p{q * 100:.0f}, author order, {name} load ({where})",
                       round(percentile(run["stages"]["tentative"], q) * 1000), "ms")  # fmt: skip
        report.add(f"orders/s accepted, author order, {name} load ({run['offered']:g} offered)",
                   round(run["accepted"]), "orders/s")  # fmt: skip
    for mode, network in (("fair", fair), ("author", author)):
        if "attack" not in network:
            continue
        run = network["attack"]
        decided = run["won"] + run["lost"]
        share = run["won"] / decided if decided else float("nan")
        label = "with witnesses" if mode == "fair" else "without witnesses (baseline)"
        figure = f"front-running success {label}, {decided} trials"
        if mode == "fair":
            met = run["won"] == 0 and decided > 0
            report.add(figure, round(share * 100, 1), "%", "0%", met)
        else:
            report.add(figure, round(share * 100, 1), "%")
        verdicts.append((f"2. front-running success {label}",
                         f"{run['won']} of {decided} ({share:.0%})"))  # fmt: skip
    revised = [n["revisions"] for n in (fair, fair3) if "revisions" in n]
    if revised:
        report.add("revisions of settled trades, fair networks (all nodes)", sum(revised),
                   "revisions", "0", sum(revised) == 0)  # fmt: skip
        verdicts.append(("2. revisions of settled trades = 0 (fair)",
                         f"{sum(revised)}: {'met' if not sum(revised) else 'MISSED'}"))  # fmt: skip
    if "throughput" in fair3 and "throughput" in author:
        tf, ta = fair3["throughput"], author["throughput"]
        ratio = tf["accepted"] / ta["accepted"] if ta["accepted"] else float("nan")
        report.add("orders/s accepted, fair order", round(tf["accepted"]), "orders/s")
        report.add("orders/s accepted, author order (same load)", round(ta["accepted"]), "orders/s")
        report.add("fair / author throughput", round(ratio, 3), "", ">= 0.9", ratio >= 0.9)
        verdicts.append(("3. fair throughput >= 90% of author",
                         f"{ratio:.0%}: {'met' if ratio >= 0.9 else 'MISSED'}"))  # fmt: skip
        for mode, run in (("fair", tf), ("author", ta)):
            if run["bytes"] is not None:
                report.add(f"bytes sent per order, {mode} order (all nodes)",
                           round(run["bytes"][0] / max(1, run["orders"])), "B")  # fmt: skip
    report.write(args.json)
    print_table("targets", verdicts)
    for title, run in runs.items():
        print(f"{title}: ", end="")
        report_problems(run["problems"])
    print(f"this process (the local nodes): {len(problems.lines)} warning/error lines")
    for line in problems.lines[:5]:
        print(f"  {line[:220]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
