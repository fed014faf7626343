"""Benchmark: how many rounds and queries a DHT lookup takes at 100 to 5,000 nodes.

Every node is a real :class:`~bitfitech.discovery.kademlia.service.DHTService`
(protocol, routing table, lookups, announces) on one in-memory UDP network
(:class:`~bitfitech.testing.MemoryDatagramNetwork`, 20-80 ms one way, optional
loss) timed by a :class:`~bitfitech.testing.HeapClock`, all in this process.

For each network size N:

1. **Join**: nodes start in waves (each wave up to a quarter of the nodes
   already up); each node bootstraps from three random nodes started
   before it and, as a real node does, looks up its own id, refreshes
   once each bucket farther than its nearest contacts that is not full,
   then looks up and announces the network's info-hash.  M ``find_node``
   lookups of random ids then show what a network just formed does.
2. **Settle**: the routing tables fill.  Each round, every node refreshes
   (a ``find_node`` of a random id in the bucket's range, as the service's
   own bucket refresh does) each bucket holding fewer contacts than it
   could (fewer than k, and fewer than the live nodes in its range; checked
   again just before, as others' refreshes fill buckets too), until the
   tables hold 99% of what they could, or a round gains under 0.5%.  A
   long-running network gets there by its 15-minute refreshes.  The joins'
   refreshes leave little or nothing to do here.
3. **Churn** (``--churn F``, none by default): a fraction F of the nodes
   stops abruptly (its port closes: datagrams to it go nowhere, and it
   says no goodbye), and as many fresh nodes start and join as in step 1,
   bootstrapping from live nodes; the others' tables still hold the
   stopped nodes, as they would a minute after a crash.
4. **Measure**: M ``find_node`` lookups of random ids and M ``get_peers``
   lookups of the announced info-hash, one at a time, from random live
   nodes.

Per N it reports lookup *rounds* (the greatest hop depth queried: seeds
from our own table are depth 1, nodes they name depth 2, ...; the number of
sequential round trips, whatever the concurrency), the depth at which the
nearest node was first queried, queries sent (a node asked again after a
stall counts twice there, but adds no round: the wait shows in the
simulated seconds), queries that stalled (no answer within their stall
timeout) and the most queries one lookup had awaiting an answer at once,
whether the lookup ended on exactly the true k nearest live nodes (stopped
nodes left out), simulated seconds per lookup (mean, p50, p90), CPU
seconds, and the datagrams sent per node per simulated minute while
measuring (the lookups and every node's background pings and answers).  The
target (issue 8) is mean rounds <= log2(N)/4 + 1.  Every node announces
the one info-hash (as bitfi nodes of one network do); ``find_node`` of a
random id is the figure to read, ``get_peers`` of the info-hash takes
about as many rounds.

Cost: the messages themselves (bencode, routing-table answers); the full
run is about 6 minutes of CPU, nearly all at N = 5,000, most of that the
joins' bucket refreshes.  ``--quick`` (N = 100, 300) takes a few seconds.

Run ``python benchmarks/bench_dht.py [--quick] [--nodes N ...] [--lookups M]
[--loss P] [--churn F] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from _cluster import percentile, print_table
from _results import Results, add_arguments
from twisted.internet.defer import Deferred

from bitfitech.discovery.kademlia.ids import id_to_int, network_info_hash, random_id
from bitfitech.discovery.kademlia.lookup import LookupResult
from bitfitech.discovery.kademlia.routing import Bucket, K
from bitfitech.discovery.kademlia.service import DHTService, DHTTiming
from bitfitech.testing import HeapClock, MemoryDatagramNetwork, run_for

INFO_HASH = network_info_hash("bench", "BTC/USD")
DHT_PORT = 6881
BOOTSTRAP_FROM = 3
#: Nothing periodic but housekeeping and pings during the run: the benchmark
#: starts every lookup and refresh itself.
TIMING = DHTTiming(
    lookup_interval=24 * 3600.0,
    announce_interval=24 * 3600.0,
    refresh_interval=24 * 3600.0,
    save_interval=24 * 3600.0,
)
FILL_TARGET = 0.99
FILL_MIN_GAIN = 0.005
MAX_SETTLE_ROUNDS = 6
SETTLE_SPREAD = 20.0
#: Simulated seconds the fresh nodes of the churn phase get to join.
CHURN_JOIN = 20.0
PREDICT_AT = 10_000


def target_rounds(nodes: int) -> float:
    """The issue's target for the mean rounds of a lookup among C{nodes} nodes."""
    return math.log2(nodes) / 4 + 1


def constant(value: int) -> Callable[[], int]:
    """A function that returns C{value}."""
    return lambda: value


def host_of(n: int) -> str:
    """The IPv4 address of node C{n}: 10.a.b.c, 250 nodes per /24."""
    return f"10.{n // 62_500}.{n // 250 % 250}.{n % 250 + 1}"


@dataclass
class LookupFigures:
    """What the lookups of one kind cost at one network size."""

    rounds: list[int] = field(default_factory=list)
    nearest_depth: list[int] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)
    stalls: list[int] = field(default_factory=list)
    peak_in_flight: list[int] = field(default_factory=list)
    exact: list[bool] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, result: LookupResult, exact: bool, seconds: float) -> None:
        """Record one lookup: its C{result}, whether it was exact, its simulated C{seconds}."""
        self.rounds.append(result.rounds)
        self.nearest_depth.append(result.nearest_depth)
        self.queries.append(result.queries)
        self.stalls.append(result.stalls)
        self.peak_in_flight.append(result.peak_in_flight)
        self.exact.append(exact)
        self.seconds.append(seconds)


@dataclass
class SizeFigures:
    """Everything measured at one network size."""

    nodes: int
    join_cpu: float = 0.0
    join_seconds: float = 0.0
    joined_fill: float = 0.0
    joined: LookupFigures = field(default_factory=LookupFigures)
    settle_rounds: int = 0
    refreshes: int = 0
    fill: float = 0.0
    table_size: float = 0.0
    churned: int = 0
    dead_contacts: float = 0.0
    lookup_cpu: float = 0.0
    datagrams: int = 0
    lookup_seconds: float = 0.0
    lost: int = 0
    find_node: LookupFigures = field(default_factory=LookupFigures)
    get_peers: LookupFigures = field(default_factory=LookupFigures)
    peers_found: list[int] = field(default_factory=list)


class DHTGrid:
    """
    N DHT services on one in-memory network.

    :param seed: seeds node ids, bootstrap choices, latency and loss.
    """

    def __init__(self, seed: int, *, latency: float, jitter: float, loss: float) -> None:
        self.clock = HeapClock()
        self.network = MemoryDatagramNetwork(
            self.clock, random.Random(seed), latency=latency, jitter=jitter, loss=loss
        )
        self.reactor = self.network.reactor()
        self.seed = seed
        self.rng = random.Random(seed)
        self.services: list[DHTService] = []
        self._sorted_ids: list[int] = []

    def start(self, count: int) -> None:
        """Start C{count} more nodes at once, each bootstrapped from earlier live ones."""
        earlier = [i for i, s in enumerate(self.services) if s.running]
        for _ in range(count):
            n = len(self.services)
            chosen = self.rng.sample(earlier, min(BOOTSTRAP_FROM, len(earlier)))
            service = DHTService(
                self.reactor,
                info_hash=INFO_HASH,
                port=DHT_PORT,
                host=host_of(n),
                p2p_port=constant(9000 + n % 50_000),
                found=lambda host, port, node_id: None,
                wants_peers=lambda _market: False,
                bootstrap=[(host_of(i), DHT_PORT) for i in chosen],
                rng=random.Random(self.seed * 1_000_003 + n),
                timing=TIMING,
            )
            self.services.append(service)
            service.startService()
        self._sorted_ids = sorted(id_to_int(s.node_id or b"") for s in self.live())

    def live(self) -> list[DHTService]:
        """The services still running."""
        return [s for s in self.services if s.running]

    def churn(self, fraction: float) -> int:
        """
        Stop C{fraction} of the live nodes abruptly and start as many fresh
        ones, letting them join.

        :return: the nodes replaced.
        """
        live = [n for n, s in enumerate(self.services) if s.running]
        count = round(fraction * len(live))
        for n in self.rng.sample(live, count):
            # The port first: datagrams on their way to it now go nowhere,
            # and stopping the service then sends nothing (BEP 5 has no goodbye).
            self.network.ports[(host_of(n), DHT_PORT)].stopListening()
            self.services[n].stopService()
        self.start(count)
        run_for(self.clock, CHURN_JOIN)
        return count

    def dead_contacts(self) -> float:
        """The share of the live nodes' contacts that are stopped nodes."""
        dead = {s.node_id for s in self.services if not s.running}
        held = stale = 0
        for service in self.live():
            for contact in service.routing_table or ():
                held += 1
                stale += contact.node_id in dead
        return stale / held if held else 0.0

    def join(self, nodes: int) -> None:
        """Start C{nodes} nodes in waves, letting each wave finish its joins."""
        while len(self.services) < nodes:
            wave = max(1, min(nodes - len(self.services), len(self.services) // 4))
            self.start(wave)
            run_for(self.clock, 8.0)
        run_for(self.clock, 10.0)

    def room(self, low: int, high: int, own: int) -> int:
        """Contacts a table could hold in the bucket [C{low}, C{high})."""
        ids = self._sorted_ids
        live = bisect.bisect_left(ids, high) - bisect.bisect_left(ids, low)
        if low <= own < high:
            live -= 1
        return min(K, live)

    def fill(self) -> tuple[float, list[tuple[DHTService, Bucket]]]:
        """
        How full the routing tables are (contacts held over contacts they
        could hold), and the (service, bucket) pairs short of contacts.
        """
        held = possible = 0
        short: list[tuple[DHTService, Bucket]] = []
        for service in self.live():
            table = service.routing_table
            assert table is not None
            own = id_to_int(table.own_id)
            for bucket in table.buckets:
                room = self.room(bucket.low, bucket.high, own)
                have = len(bucket.contacts)
                held += min(have, room)
                possible += room
                if have < room:
                    short.append((service, bucket))
        return (held / possible if possible else 1.0), short

    def settle(self) -> tuple[int, float, int]:
        """
        Refresh short buckets until the tables are (nearly) full.

        :return: refresh rounds, the fill reached, refreshes run.
        """
        fill, short = self.fill()
        rounds = refreshes = 0
        while fill < FILL_TARGET and rounds < MAX_SETTLE_ROUNDS:
            rounds += 1
            self.rng.shuffle(short)
            # Spread the refreshes over some seconds, as timers would; each
            # checks its bucket again first (others' refreshes fill it too).
            ran: list[None] = []
            for i, (service, bucket) in enumerate(short):
                table = service.routing_table
                assert table is not None
                target = table.random_id_in(bucket, self.rng)
                delay = i * SETTLE_SPREAD / len(short)
                self.clock.callLater(delay, self._refresh_if_short, service, target, ran)
            run_for(self.clock, SETTLE_SPREAD + 10.0)
            refreshes += len(ran)
            before = fill
            fill, short = self.fill()
            if fill - before < FILL_MIN_GAIN:
                break
        return rounds, fill, refreshes

    def _refresh_if_short(self, service: DHTService, target: bytes, ran: list[None]) -> None:
        table = service.routing_table
        if table is None:
            return
        bucket = table.bucket_for(target)
        if len(bucket.contacts) < self.room(bucket.low, bucket.high, id_to_int(table.own_id)):
            ran.append(None)
            service.find_node(target)

    def true_closest(self, target: bytes, source: DHTService) -> list[bytes]:
        """The ids of the k live nodes nearest C{target}, C{source} left out."""
        value = id_to_int(target)
        ids = (s.node_id for s in self.live() if s is not source and s.node_id)
        return sorted(ids, key=lambda i: id_to_int(i) ^ value)[:K]

    def lookup(
        self, start: Callable[[bytes], Deferred[LookupResult]], target: bytes
    ) -> tuple[LookupResult, float]:
        """Run C{start(target)} to its end; return its result and simulated seconds."""
        results: list[LookupResult] = []
        started = self.clock.seconds()
        ended: list[float] = []

        def done(result: LookupResult) -> None:
            results.append(result)
            ended.append(self.clock.seconds())

        start(target).addCallback(done)
        while not results:
            run_for(self.clock, 0.05)
        return results[0], ended[0] - started

    def stop(self) -> None:
        """Stop every service."""
        for service in self.services:
            if service.running:
                service.stopService()


def find_nodes(grid: DHTGrid, lookups: int, figures: LookupFigures) -> None:
    """Time C{lookups} lookups of random ids from random nodes into C{figures}."""
    for _ in range(lookups):
        source = grid.rng.choice(grid.live())
        target = random_id(grid.rng)
        result, seconds = grid.lookup(source.find_node, target)
        exact = [n.node_id for n in result.closest] == grid.true_closest(target, source)
        figures.add(result, exact, seconds)


def measure(
    nodes: int,
    lookups: int,
    seed: int,
    latency: float,
    jitter: float,
    loss: float,
    churn: float = 0.0,
) -> SizeFigures:
    """
    Build, join and settle a network of C{nodes}, replace a fraction
    C{churn} of them, then time C{lookups} lookups of each kind.
    """
    figures = SizeFigures(nodes)
    cpu = time.process_time()
    grid = DHTGrid(seed, latency=latency, jitter=jitter, loss=loss)
    grid.join(nodes)
    figures.joined_fill, _ = grid.fill()
    joined_cpu = time.process_time()
    find_nodes(grid, lookups, figures.joined)
    cpu += time.process_time() - joined_cpu
    figures.settle_rounds, figures.fill, figures.refreshes = grid.settle()
    figures.join_cpu = time.process_time() - cpu
    figures.join_seconds = grid.clock.seconds()
    figures.table_size = statistics.mean(len(s.routing_table or ()) for s in grid.services)
    if churn:
        figures.churned = grid.churn(churn)
        figures.dead_contacts = grid.dead_contacts()
    cpu = time.process_time()
    sent = grid.network.sent
    lost = grid.network.lost
    started = grid.clock.seconds()
    find_nodes(grid, lookups, figures.find_node)
    for _ in range(lookups):
        source = grid.rng.choice(grid.live())
        result, seconds = grid.lookup(source.get_peers, INFO_HASH)
        exact = [n.node_id for n in result.closest] == grid.true_closest(INFO_HASH, source)
        figures.get_peers.add(result, exact, seconds)
        figures.peers_found.append(len(result.peers))
    figures.lookup_cpu = time.process_time() - cpu
    figures.datagrams = grid.network.sent - sent
    figures.lookup_seconds = grid.clock.seconds() - started
    figures.lost = grid.network.lost - lost
    grid.stop()
    return figures


def report(figures: SizeFigures, lookups: int, results: Results) -> list[tuple[str, str]]:
    """The table rows of one network size; its figures go into C{results}."""
    n = figures.nodes
    goal = target_rounds(n)
    joined = figures.joined
    rows = [
        (
            "join + settle: simulated s / CPU s",
            f"{figures.join_seconds:.0f} / {figures.join_cpu:.1f}",
        ),
        ("just joined: routing table fill", f"{figures.joined_fill:.3f}"),
        (
            "just joined: find_node rounds / queries / exact",
            f"{statistics.mean(joined.rounds):.2f} / {statistics.mean(joined.queries):.1f} / "
            f"{sum(joined.exact) / len(joined.exact):.3f}",
        ),
        ("settle: rounds / bucket refreshes", f"{figures.settle_rounds} / {figures.refreshes}"),
        (
            "routing tables: fill / mean contacts",
            f"{figures.fill:.3f} / {figures.table_size:.1f}",
        ),
    ]
    results.add(f"N={n} join + settle CPU", round(figures.join_cpu, 2), "s")
    results.add(f"N={n} just joined: routing table fill", round(figures.joined_fill, 4), "")
    results.add(
        f"N={n} just joined: find_node rounds mean",
        round(statistics.mean(joined.rounds), 3),
        "rounds",
    )
    results.add(
        f"N={n} just joined: find_node queries mean",
        round(statistics.mean(joined.queries), 2),
        "queries",
    )
    results.add(f"N={n} routing table fill", round(figures.fill, 4), "")
    if figures.churned:
        rows += [
            ("churn: nodes stopped, fresh nodes started", f"{figures.churned}"),
            ("churn: stopped nodes among live contacts", f"{figures.dead_contacts:.3f}"),
        ]
        results.add(f"N={n} churn: nodes replaced", figures.churned, "nodes")
        results.add(
            f"N={n} churn: stopped nodes among live contacts",
            round(figures.dead_contacts, 4),
            "",
        )
    for kind, lf in (("find_node", figures.find_node), ("get_peers", figures.get_peers)):
        mean_rounds = statistics.mean(lf.rounds)
        met = mean_rounds <= goal
        p50, p90 = percentile(lf.rounds, 0.5), percentile(lf.rounds, 0.9)
        exact = sum(lf.exact) / len(lf.exact)
        rows += [
            (f"{kind}: rounds mean / p50 / p90", f"{mean_rounds:.2f} / {p50:.0f} / {p90:.0f}"),
            (
                f"{kind}: target mean rounds <= log2(N)/4+1",
                f"{goal:.2f} {'met' if met else 'MISSED'}",
            ),
            (f"{kind}: depth of nearest node, mean", f"{statistics.mean(lf.nearest_depth):.2f}"),
            (
                f"{kind}: queries mean / p90",
                f"{statistics.mean(lf.queries):.1f} / {percentile(lf.queries, 0.9):.0f}",
            ),
            (
                f"{kind}: stalled queries mean / in flight max",
                f"{statistics.mean(lf.stalls):.1f} / {max(lf.peak_in_flight)}",
            ),
            (f"{kind}: ended on the true k nearest", f"{exact:.3f}"),
            (
                f"{kind}: simulated s mean / p50 / p90",
                f"{statistics.mean(lf.seconds):.3f} / {percentile(lf.seconds, 0.5):.3f} / "
                f"{percentile(lf.seconds, 0.9):.3f}",
            ),
        ]
        results.add(
            f"N={n} {kind} rounds mean", round(mean_rounds, 3), "rounds", f"<= {goal:.2f}", met
        )
        results.add(f"N={n} {kind} rounds p50", p50, "rounds")
        results.add(f"N={n} {kind} rounds p90", p90, "rounds")
        results.add(
            f"N={n} {kind} nearest-node depth mean",
            round(statistics.mean(lf.nearest_depth), 3),
            "rounds",
        )
        results.add(f"N={n} {kind} queries mean", round(statistics.mean(lf.queries), 2), "queries")
        results.add(f"N={n} {kind} ended on the true k nearest", round(exact, 4), "")
        results.add(f"N={n} {kind} simulated time mean", round(statistics.mean(lf.seconds), 4), "s")
        results.add(f"N={n} {kind} simulated time p50", round(percentile(lf.seconds, 0.5), 4), "s")
        results.add(f"N={n} {kind} simulated time p90", round(percentile(lf.seconds, 0.9), 4), "s")
        results.add(
            f"N={n} {kind} stalled queries mean", round(statistics.mean(lf.stalls), 2), "queries"
        )
        results.add(f"N={n} {kind} queries in flight max", max(lf.peak_in_flight), "queries")
    peers = statistics.mean(figures.peers_found)
    rows += [
        ("get_peers: peers found, mean", f"{peers:.1f}"),
        ("lookups: datagrams sent / lost", f"{figures.datagrams} / {figures.lost}"),
        (
            "lookups: datagrams sent per node per minute",
            f"{per_node_minute(figures.datagrams, n, figures.lookup_seconds):.1f}",
        ),
        (f"lookups ({2 * lookups}): CPU s", f"{figures.lookup_cpu:.1f}"),
    ]
    results.add(f"N={n} get_peers peers found mean", round(peers, 1), "peers")
    results.add(f"N={n} lookups CPU", round(figures.lookup_cpu, 2), "s")
    results.add(
        f"N={n} datagrams sent per node per minute while measuring",
        round(per_node_minute(figures.datagrams, n, figures.lookup_seconds), 1),
        "datagrams",
    )
    return rows


def per_node_minute(datagrams: int, nodes: int, seconds: float) -> float:
    """
    C{datagrams} sent by C{nodes} nodes over C{seconds} simulated seconds,
    per node per minute: lookups and every node's background traffic
    (pings, answers) alike.
    """
    return datagrams / nodes / (seconds / 60) if seconds > 0 else 0.0


def predict(measured: list[SizeFigures], results: Results) -> None:
    """
    Fit mean ``find_node`` rounds and queries against log2 N (a lookup
    halves the distance to its target about every round) and print what
    they give at :data:`PREDICT_AT` nodes, against the target there.
    """
    if len({f.nodes for f in measured}) < 3:
        print("(the fits need three sizes or more, as the full run has)")
        return
    xs = [math.log2(f.nodes) for f in measured]
    print(f"Growth with N (fits over N = {', '.join(str(f.nodes) for f in measured)}):")
    for name, unit, ys in (
        ("find_node rounds", "rounds", [statistics.mean(f.find_node.rounds) for f in measured]),
        ("find_node queries", "queries", [statistics.mean(f.find_node.queries) for f in measured]),
    ):
        slope, intercept = statistics.linear_regression(xs, ys)
        value = intercept + slope * math.log2(PREDICT_AT)
        line = f"{intercept:6.2f} + {slope:5.2f} log2 N  ->  {value:6.2f} at {PREDICT_AT:,}"
        print(f"  {name:<18} {line}")
        results.add(f"{name} mean, predicted for {PREDICT_AT} nodes", round(value, 2), unit)
    print(f"  (target at {PREDICT_AT:,}: mean rounds <= {target_rounds(PREDICT_AT):.2f})\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--nodes", type=int, nargs="+", help="sizes (default 100 1000 5000)")
    parser.add_argument(
        "--lookups", type=int, help="lookups of each kind per size (default 200; quick 50)"
    )
    parser.add_argument("--latency", type=float, default=0.02, help="least one-way delay, s")
    parser.add_argument("--jitter", type=float, default=0.06, help="extra random delay up to, s")
    parser.add_argument("--loss", type=float, default=0.0, help="datagram loss probability")
    parser.add_argument(
        "--churn",
        type=float,
        default=0.0,
        help="fraction of the nodes replaced after settling (default 0)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0.0 <= args.churn < 1.0:
        parser.error("--churn is a fraction: 0 <= F < 1")
    sizes = args.nodes or ([100, 300] if args.quick else [100, 1000, 5000])
    lookups = args.lookups or (50 if args.quick else 200)
    results = Results("bench_dht", quick=args.quick)
    print(f"bench_dht on {results.machine}")
    print(
        f"latency {args.latency * 1000:.0f}-{(args.latency + args.jitter) * 1000:.0f} ms, "
        f"loss {args.loss:.1%}, churn {args.churn:.0%}, k={K}, "
        f"{lookups} lookups of each kind per size, "
        f"seed {args.seed}\n",
        flush=True,
    )
    measured: list[SizeFigures] = []
    for nodes in sizes:
        figures = measure(
            nodes, lookups, args.seed, args.latency, args.jitter, args.loss, args.churn
        )
        measured.append(figures)
        print_table(f"N = {nodes} nodes", report(figures, lookups, results))
    predict(measured, results)
    x: list[float] = [f.nodes for f in measured]
    results.add_series(
        "dht_rounds",
        x,
        [round(statistics.mean(f.find_node.rounds), 3) for f in measured],
        "nodes",
        "mean lookup rounds",
    )
    results.add_series(
        "dht_rpcs",
        x,
        [round(statistics.mean(f.find_node.queries), 2) for f in measured],
        "nodes",
        "mean queries per lookup",
    )
    results.add_series(
        "dht_rounds_target",
        x,
        [round(target_rounds(f.nodes), 3) for f in measured],
        "nodes",
        "target mean lookup rounds",
    )
    results.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
