"""Benchmark: how gossip and anti-entropy scale, simulated from 100 to 1,000 nodes.

Every node runs the real gossip, sync and wire code in one process over
in-memory links on a simulated clock (:mod:`bitfitech.simulation`: what is
real and what is modelled).  For each network size N, with a fixed seed,
a random graph of ``--degree`` links a node, one-way latency ``--latency``
plus up to ``--jitter``, and ``--loss`` (each write lost once with that
probability and retransmitted by TCP after 200 ms, holding back what
follows it):

a. Spread: ``--events`` new orders from random nodes, one every
   ``--interval`` s.  Coverage (the share of node x event pairs held 3 s
   after the last one), time until the last node held an event (p50, p99
   over events), and full copies received per node per event.
b. Churn: 10% of the nodes leave once each, for 2 s, while orders keep
   coming; coverage at the end over every node, and the time a rejoined
   node takes to hold everything published before it came back.
c. Partition: the nodes split into two connected halves (a region grown
   from a random node, and the rest); each side takes
   orders for 5 s; the halves are joined again.  Time from healing until
   every node holds every event, and whether every state hash is then
   equal.  Once with every cut link redialled (about 2 N of them), once
   through a single link (the repair then crosses the network hop by hop).

Signatures are not checked at scale (``--verify`` checks them, at 57 µs
per event per node); one row with N = 50 always checks them.  The end
fits each figure against ln N and predicts it for 10,000 nodes.

Run ``python benchmarks/bench_sim.py [--quick] [--nodes 100,300,1000]
[--json PATH]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

from _results import Results, add_arguments

from bitfitech.simulation import (
    ChurnResult,
    PartitionResult,
    SimConfig,
    Simulation,
    SpreadResult,
    measure_churn,
    measure_partition,
    measure_spread,
)

PREDICT_AT = 10_000


@dataclass
class Row:
    """The figures of one network size."""

    nodes: int
    verify: bool
    links: float
    spread: SpreadResult
    churn: ChurnResult
    partition: PartitionResult
    bridge: PartitionResult
    cpu: float


def run_size(args: argparse.Namespace, nodes: int, verify: bool) -> Row:
    """Simulate one network of C{nodes} nodes through the three scenarios."""
    started = time.process_time()
    config = SimConfig(
        nodes=nodes, degree=args.degree, latency=args.latency / 1000,
        jitter=args.jitter / 1000, loss=args.loss, seed=args.seed, verify=verify,
    )  # fmt: skip
    sim = Simulation(config)
    sim.start()
    links = sum(sim.linked(n) for n in range(nodes)) / nodes
    spread = measure_spread(sim, args.events, args.interval)
    churn = measure_churn(sim, args.events // 2, 2 * args.interval, 0.1, 2.0)
    partition = measure_partition(sim, args.partition_events, 5.0)
    bridge = measure_partition(sim, args.partition_events, 5.0, heal_links=1)
    cpu = time.process_time() - started
    misbehaviour = sim.misbehaviour()
    if misbehaviour:
        raise SystemExit(f"honest simulated nodes reported misbehaviour: {misbehaviour[:3]}")
    return Row(nodes, verify, links, spread, churn, partition, bridge, cpu)


def fit_log(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least squares C{y = a + b ln x}: C{(a, b)} (``b`` 0 with one point)."""
    points = [(math.log(x), y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
    if not points:
        return math.nan, math.nan
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return mean_y, 0.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    return mean_y - slope * mean_x, slope


def fit_power(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least squares C{ln y = ln a + k ln x}: C{(a, k)}."""
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
    intercept, slope = fit_log([x for x, _ in points], [math.log(y) for _, y in points])
    return math.exp(intercept), slope


def ms(seconds: float) -> str:
    return "-" if not math.isfinite(seconds) else f"{seconds * 1000:.0f}"


def print_rows(rows: list[Row]) -> None:
    header = (
        f"{'nodes':>7} {'links':>5} {'cover':>6} {'reach p50':>9} {'p99':>6} {'copies':>6} "
        f"{'B/ev':>6} {'churn cover':>11} {'catch-up p99':>12} {'heal':>6} {'heal 1':>7} "
        f"{'hashes':>6} "
        f"{'cpu s':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        s, c, p = row.spread, row.churn, row.partition
        name = f"{row.nodes}{'v' if row.verify else ''}"
        print(
            f"{name:>7} {row.links:5.1f} {s.coverage:6.3f} {ms(s.reach_p50):>9} "
            f"{ms(s.reach_p99):>6} {s.copies:6.2f} {s.bytes:6.0f} {c.coverage:11.3f} "
            f"{ms(c.catch_up_p99):>12} {ms(p.heal_time):>6} {ms(row.bridge.heal_time):>7} "
            f"{'equal' if p.equal_hashes and row.bridge.equal_hashes else 'DIFFER':>6} "
            f"{row.cpu:7.1f}"
        )
    print("(times in simulated ms; v: signatures checked; B/ev: bytes sent per node per event;")
    print(" heal: from rejoining the halves until every node holds every event, heal 1:")
    print(" through one link; hashes: every state hash equal after both heals)\n", flush=True)


def predict(rows: list[Row], results: Results) -> None:
    """Fit the growth with N and print what it predicts for 10,000 nodes."""
    scaled = [row for row in rows if not row.verify]
    if len(scaled) < 3:
        # Two noisy points (the quick run) fit anything: no prediction from them.
        print("(the fits need three sizes or more, as the full run has)")
        return
    xs = [row.nodes for row in scaled]
    print(f"Growth with N (fits over N = {', '.join(map(str, xs))}), and N = {PREDICT_AT:,}:")
    fits = [
        ("time to reach all nodes p50", "ms", [r.spread.reach_p50 * 1000 for r in scaled]),
        ("time to reach all nodes p99", "ms", [r.spread.reach_p99 * 1000 for r in scaled]),
        ("partition heal time", "ms", [r.partition.heal_time * 1000 for r in scaled]),
        ("heal time through one link", "ms", [r.bridge.heal_time * 1000 for r in scaled]),
    ]
    for name, unit, ys in fits:
        a, b = fit_log(xs, ys)
        value = a + b * math.log(PREDICT_AT)
        print(f"  {name:<30} {a:9.2f} + {b:8.2f} ln N  ->  {value:9.2f} {unit}")
        results.add(f"{name}, predicted for {PREDICT_AT} nodes", round(value, 3), unit)
    # Copies cannot fall below one (every node needs the event once): what
    # shrinks with N is the excess, the share of the pushes near the author
    # that land on nodes that have the event already.
    a, k = fit_power(xs, [max(r.spread.copies - 1, 1e-4) for r in scaled])
    copies = 1 + a * PREDICT_AT**k
    name = "copies per node per event"
    print(f"  {name:<30} 1 + {a:9.2f} x N^{k:.2f}   ->  {copies:9.3f}")
    results.add(f"{name}, predicted for {PREDICT_AT} nodes", round(copies, 3), "")
    a, k = fit_power(xs, [row.cpu for row in scaled])
    cpu = a * PREDICT_AT**k
    print(f"  {'simulation CPU':<30} {a:9.4f} x N^{k:.2f}       ->  {cpu:9.0f} s")
    results.add(f"simulation CPU, predicted for {PREDICT_AT} nodes", round(cpu), "s")
    degree = scaled[-1].links
    hops = math.log(PREDICT_AT / xs[-1]) / math.log(degree - 1)
    diameter = math.log(PREDICT_AT) / math.log(degree - 1) + 2
    print(
        f"""
Reading.  Spread: the author and its neighbours push an event to every
peer (two hops of one link delay each); further out it moves by inv,
getdata and answer, three link delays a hop.  A random graph of {degree:.0f} links
a node reaches N nodes in about ln N / ln {degree - 1:.0f} hops, so reach time grows
with ln N: {xs[-1]:,} -> {PREDICT_AT:,} nodes adds about {hops:.1f} hops, which the fit
prices as above.  The ttl (16) is far above the diameter (about {diameter:.0f} hops
at {PREDICT_AT:,}): coverage stays complete.  Copies: the pushes of the second hop
(about {degree * (degree - 1):.0f} of them) are what lands twice, on nodes that two neighbours
of the author share; the share of such nodes falls as N grows, so copies
fall towards 1 (the prunes remove the rest over time).  Heal: a node with
a rejoined link of its own catches up in one exchange (a handshake and a
round trip); the others learn the other side's events from a neighbour
one hop nearer the cut: the neighbour's prompt (0.1 s after its repair)
is a sync showing it is ahead, which the prompted node pulls 0.5 s later
(anti-entropy answers are not relayed).  So heal time is about 0.6 s
plus two round trips per hop from the nearest rejoined link: with every
cut link redialled that depth is the inside of a region and grows slowly
with N; through one link it is the network's radius, ln N / ln {degree - 1:.0f} hops.
CPU: about N x events.
""",
        flush=True,
    )


def record(rows: list[Row], results: Results) -> None:
    for row in rows:
        tag = f"{row.nodes} nodes" + (", signatures checked" if row.verify else "")
        s, c, p = row.spread, row.churn, row.partition
        for name, value, unit in (
            ("coverage", s.coverage, ""),
            ("time to reach all nodes p50", s.reach_p50 * 1000, "ms"),
            ("time to reach all nodes p99", s.reach_p99 * 1000, "ms"),
            ("copies per node per event", s.copies, ""),
            ("bytes sent per node per event", s.bytes, "B"),
            ("coverage under 10% churn", c.coverage, ""),
            ("rejoined node catch-up p99", c.catch_up_p99 * 1000, "ms"),
            ("partition heal time", p.heal_time * 1000, "ms"),
            ("nodes without a rejoined link of their own", p.far_nodes, ""),
            ("heal time through one link", row.bridge.heal_time * 1000, "ms"),
            ("heal time through one link, median node", row.bridge.heal_p50 * 1000, "ms"),
            ("state hashes equal after heal", "yes" if p.equal_hashes else "no", ""),
            (
                "state hashes equal after one-link heal",
                "yes" if row.bridge.equal_hashes else "no",
                "",
            ),
            ("CPU", row.cpu, "s"),
        ):
            shown = round(value, 4) if isinstance(value, float) else value
            results.add(f"{name}, {tag}", shown, unit)
    scaled = [row for row in rows if not row.verify]
    xs: list[float] = [row.nodes for row in scaled]
    for key, label, ys in (
        ("sim_reach_p99", "time to reach all nodes p99 (ms)",
         [row.spread.reach_p99 * 1000 for row in scaled]),
        ("sim_reach_p50", "time to reach all nodes p50 (ms)",
         [row.spread.reach_p50 * 1000 for row in scaled]),
        ("sim_copies", "copies received per node per event",
         [row.spread.copies for row in scaled]),
        ("sim_heal", "partition heal time (ms)",
         [row.partition.heal_time * 1000 for row in scaled]),
        ("sim_heal_one_link", "heal time through one link (ms)",
         [row.bridge.heal_time * 1000 for row in scaled]),
        ("sim_cpu", "CPU seconds", [row.cpu for row in scaled]),
    ):  # fmt: skip
        finite = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
        results.add_series(key, [x for x, _ in finite], [y for _, y in finite], "nodes", label)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--nodes", help="network sizes, comma-separated (default 100,300,1000)")
    parser.add_argument("--degree", type=int, default=8, help="links per node (8)")
    parser.add_argument("--latency", type=float, default=40.0, help="one-way ms (40)")
    parser.add_argument("--jitter", type=float, default=20.0, help="extra ms, up to (20)")
    parser.add_argument("--loss", type=float, default=0.01, help="write loss rate (0.01)")
    parser.add_argument("--events", type=int, help="events of the spread (40; quick 20)")
    parser.add_argument("--interval", type=float, default=0.1, help="s between events (0.1)")
    parser.add_argument("--partition-events", type=int, help="events in a partition (20)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verify", action="store_true", help="check signatures at every size")
    args = parser.parse_args(argv)
    sizes = [50, 100] if args.quick else [100, 300, 1000]
    if args.nodes:
        sizes = [int(part) for part in args.nodes.split(",")]
    args.events = args.events or (20 if args.quick else 40)
    args.partition_events = args.partition_events or (10 if args.quick else 20)
    results = Results("bench_sim", quick=args.quick)
    print(f"bench_sim on {results.machine}")
    print(
        f"degree {args.degree}, latency {args.latency:g} ms + up to {args.jitter:g} ms, "
        f"loss {args.loss:g}, {args.events} events every {args.interval:g} s, seed {args.seed}\n",
        flush=True,
    )
    rows = [run_size(args, 50, True)] if not args.verify else []
    for nodes in sizes:
        rows.append(run_size(args, nodes, args.verify))
        print(f"  N = {nodes}: {rows[-1].cpu:.1f} s CPU", file=sys.stderr, flush=True)
    print_rows(rows)
    record(rows, results)
    predict(rows, results)
    results.write(args.json)
    failed = [
        row.nodes for row in rows if not (row.partition.equal_hashes and row.bridge.equal_hashes)
    ]
    if failed:
        print(f"state hashes did not converge at N = {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
