"""Benchmark: the extra CPU and memory each market adds to a node.

Real ``twistd bitfi`` node processes on 127.0.0.1, 3 nodes each linked
to each (the benchmark dials a missing link), two runs with the same
total load:

A. every node carries 1 market (BTC/USD); a paced load client posts
   crossing limit orders (buys and sells near one price, so trades
   happen) at a total rate R, round-robin over the nodes (``POST
   /orders``);
B. every node carries 3 markets (BTC/USD, ETH/USD, SOL/USD); the same
   total rate R, R/3 to each market (``POST /markets/{slug}/orders``),
   every node getting every market's orders.

Per node, in each run: the CPU seconds (utime + stime of
``/proc/PID/stat``) over an idle window once the mesh has formed and over
the steady load window (the load's first seconds are left out); the
resident memory (``VmRSS``) idle before the load and at the end of the
window, and the peak (``VmHWM``).  After the load every market must
converge: the same event count and state hash on every node
(``GET /markets``).  The table then gives ``(B - A) / 2``, the extra per
market, for CPU and RSS.

Defaults: R = 200 orders/s for 30 s (the first 5 s a warm-up), 5 s idle;
``--quick``: R = 60 orders/s for 4 s (1 s warm-up), 1 s idle.  Run
``python benchmarks/bench_markets.py [--quick] [--json PATH]``; ``--help``
lists the knobs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from _cluster import (
    Cluster,
    cleanup_on_interrupt,
    machine_info,
    print_table,
    report_problems,
    run_paced_client,
    wait_until,
)
from _results import Results, add_arguments

#: the markets of run B; run A carries the first only
MARKETS = ("BTC/USD", "ETH/USD", "SOL/USD")
NODES = 3


@dataclass
class Run:
    """What one run measured, one entry per node in each list."""

    markets: int
    idle_cpu: list[float] = field(default_factory=list)
    load_cpu: list[float] = field(default_factory=list)
    rss_idle: list[float] = field(default_factory=list)
    rss_end: list[float] = field(default_factory=list)
    peak_end: list[float] = field(default_factory=list)
    links: float = 0.0
    idle_s: float = 0.0
    window_s: float = 0.0
    offered: int = 0
    acked: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    converged: int = 0
    converge_s: float = float("nan")
    events: int = 0
    trades: int = 0


def positive(kind: type[int] | type[float]) -> Any:
    """An argparse type: a positive C{kind}."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    return parse


def market_rows(cluster: Cluster) -> list[dict[str, dict[str, Any]]]:
    """Every node's ``GET /markets``, by market name."""
    return [{row["market"]: row for row in node.api.get("/markets")} for node in cluster.nodes]


def converged_markets(rows: list[dict[str, dict[str, Any]]], markets: tuple[str, ...]) -> int:
    """How many of C{markets} have the same events and state hash on every node."""
    same = 0
    for market in markets:
        held = {(r[market]["events"], r[market]["state_hash"]) for r in rows if market in r}
        same += len(held) == 1 and all(market in r for r in rows)
    return same


def link_every_pair(cluster: Cluster, timeout: float) -> None:
    """Dial the pairs of nodes not yet linked (``POST /peers``) until each links to each.

    Both runs then gossip over the same links: with ``--outbound 1`` three
    nodes make either a line or a triangle, and a line costs less CPU.
    """

    def linked() -> list[set[str]]:
        return [{row.get("node_id", "") for row in rows} for rows in cluster.peer_rows()]

    have = linked()
    for i, node in enumerate(cluster.nodes):
        for peer in cluster.nodes[i + 1 :]:
            if peer.node_id not in have[i]:
                node.api.request("POST", "/peers", {"address": f"127.0.0.1:{peer.port}"})
    others = len(cluster.nodes) - 1
    wait_until(lambda: all(len(ids) == others for ids in linked()), timeout, "a full mesh", 0.1)


def one_run(args: argparse.Namespace, markets: tuple[str, ...], seed: int) -> Run:
    """Start 3 nodes carrying C{markets}, measure them idle and under the load."""
    run = Run(len(markets))
    node_args = [word for market in markets for word in ("--market", market)]
    prefixes = [""] if len(markets) == 1 else ["/markets/" + m.replace("/", "-") for m in markets]
    name = f"markets{len(markets)}"
    with Cluster(NODES, 2, name=name, seed=seed, node_args=node_args) as cluster:
        cluster.start()
        link_every_pair(cluster, args.timeout)
        run.links = cluster.mean_links()
        rows = market_rows(cluster)
        if any(list(r) != list(markets) for r in rows):
            raise RuntimeError(f"the nodes carry {[list(r) for r in rows]}, not {markets}")
        # Idle: the mesh formed, no orders.
        cpu_before = [n.cpu_seconds() for n in cluster.nodes]
        started = time.monotonic()
        time.sleep(args.idle)
        run.idle_s = time.monotonic() - started
        run.idle_cpu = [n.cpu_seconds() - b for n, b in zip(cluster.nodes, cpu_before, strict=True)]
        run.rss_idle = [n.memory_mb()[0] for n in cluster.nodes]

        # The load, in a thread; measured over its steady window.
        run.offered = round(args.rate * args.duration)
        start_delay = 0.5
        load_at = time.monotonic() + start_delay
        outcome: list[dict[str, Any]] = []
        failure: list[BaseException] = []

        def load() -> None:
            try:
                _, result = run_paced_client(
                    [n.api_port for n in cluster.nodes], args.rate, run.offered, threads=16,
                    start_delay=start_delay, seed=seed, prefixes=prefixes,
                )  # fmt: skip
                outcome.append(result)
            except BaseException as e:  # reported in the main thread
                failure.append(e)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(max(0.0, load_at + args.warmup - time.monotonic()))
        cpu_before = [n.cpu_seconds() for n in cluster.nodes]
        started = time.monotonic()
        time.sleep(max(0.0, load_at + args.duration - time.monotonic()))
        run.window_s = time.monotonic() - started
        run.load_cpu = [n.cpu_seconds() - b for n, b in zip(cluster.nodes, cpu_before, strict=True)]
        memory = [n.memory_mb() for n in cluster.nodes]
        run.rss_end = [rss for rss, _ in memory]
        run.peak_end = [peak for _, peak in memory]
        loader.join()
        if failure:
            raise failure[0]
        result = outcome[0]
        run.acked = len(result["acked"])
        run.errors = result["errors"]

        # Every market converged on every node.
        last: list[dict[str, dict[str, Any]]] = []

        def converged() -> bool:
            last[:] = market_rows(cluster)
            events = sum(last[0][m]["events"] for m in markets)
            return events >= run.acked and converged_markets(last, markets) == len(markets)

        try:
            run.converge_s = wait_until(converged, args.timeout, "every market to converge", 0.1)
        except TimeoutError as e:
            print(f"warning: {e}", file=sys.stderr)
        run.converged = converged_markets(last, markets)
        run.events = sum(last[0][m]["events"] for m in markets)
        run.trades = sum(last[0][m]["trades"] for m in markets)
        problems = cluster.problems()
    report_problems(problems)
    return run


def each(values: list[float], digits: int = 2) -> str:
    """Per-node values and their mean: ``1.0 / 1.1 / 1.2 (mean 1.1)``."""
    shown = " / ".join(f"{v:.{digits}f}" for v in values)
    return f"{shown} (mean {statistics.mean(values):.{digits}f})"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rate", type=positive(float), help="total orders/s over all nodes [200; quick 60]"
    )
    parser.add_argument(
        "--duration", type=positive(float), help="seconds of load per run [30; quick 4]"
    )
    parser.add_argument(
        "--warmup", type=float, help="first seconds of the load left out of the window [5; quick 1]"
    )
    parser.add_argument("--idle", type=positive(float), help="idle seconds measured [5; quick 1]")
    parser.add_argument(
        "--timeout", type=positive(float), default=60.0, help="seconds to converge [60]"
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.rate = args.rate or (60.0 if args.quick else 200.0)
    args.duration = args.duration or (4.0 if args.quick else 30.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 5.0)
    args.idle = args.idle or (1.0 if args.quick else 5.0)
    if not 0 <= args.warmup < args.duration:
        parser.error("--warmup must be from 0 to less than --duration")

    with cleanup_on_interrupt():
        a = one_run(args, MARKETS[:1], seed=1)
        b = one_run(args, MARKETS, seed=2)

    def extra(values_a: list[float], values_b: list[float]) -> float:
        return (statistics.mean(values_b) - statistics.mean(values_a)) / (b.markets - a.markets)

    extra_load = extra(a.load_cpu, b.load_cpu)
    extra_idle = extra(a.idle_cpu, b.idle_cpu)
    extra_rss_idle = extra(a.rss_idle, b.rss_idle)
    extra_rss_end = extra(a.rss_end, b.rss_end)
    load_share = extra_load / statistics.mean(a.load_cpu) * 100 if any(a.load_cpu) else 0.0
    rows: list[tuple[str, str]] = [
        ("nodes; links per node, mean, A / B (each to each)",
         f"{NODES}; {a.links:.2f} / {b.links:.2f}"),
        ("load: total rate (orders/s); seconds; window (s)",
         f"{args.rate:g}; {args.duration:g}; {a.window_s:.1f} / {b.window_s:.1f}"),
        ("A: markets; orders acked / offered", f"1; {a.acked} / {a.offered}"),
        ("B: markets; orders acked / offered", f"{b.markets}; {b.acked} / {b.offered}"),
        ("A / B: request errors", f"{sum(a.errors.values())} / {sum(b.errors.values())}"),
        ("A / B: events; trades (all markets)",
         f"{a.events}; {a.trades} / {b.events}; {b.trades}"),
        ("A / B: markets converged (equal state hash)",
         f"{a.converged}/{a.markets} / {b.converged}/{b.markets}"),
        ("A / B: converged after the load (s)", f"{a.converge_s:.2f} / {b.converge_s:.2f}"),
        ("A: CPU s per node, idle window", each(a.idle_cpu)),
        ("B: CPU s per node, idle window", each(b.idle_cpu)),
        ("A: CPU s per node, load window", each(a.load_cpu)),
        ("B: CPU s per node, load window", each(b.load_cpu)),
        ("A: RSS idle per node (MB)", each(a.rss_idle, 1)),
        ("B: RSS idle per node (MB)", each(b.rss_idle, 1)),
        ("A: RSS end per node (MB)", each(a.rss_end, 1)),
        ("B: RSS end per node (MB)", each(b.rss_end, 1)),
        ("A / B: peak RSS per node, mean (MB)",
         f"{statistics.mean(a.peak_end):.1f} / {statistics.mean(b.peak_end):.1f}"),
        ("extra per market: CPU s per node, idle", f"{extra_idle:+.3f}"),
        ("extra per market: CPU s per node, load",
         f"{extra_load:+.3f} ({load_share:+.1f}% of A)"),
        ("extra per market: RSS idle per node (MB)", f"{extra_rss_idle:+.1f}"),
        ("extra per market: RSS end per node (MB)", f"{extra_rss_end:+.1f}"),
    ]  # fmt: skip
    print_table(f"markets ({'quick; ' if args.quick else ''}{machine_info()})", rows)

    report = Results("bench_markets", quick=args.quick)
    report.add("markets: total load rate", args.rate, "orders/s")
    report.add("markets: load window", round(a.window_s, 2), "s")
    for run, name in ((a, "A (1 market)"), (b, f"B ({b.markets} markets)")):
        figures = (
            ("CPU per node, idle", run.idle_cpu, 3, "s"),
            ("CPU per node, load", run.load_cpu, 3, "s"),
            ("RSS idle per node", run.rss_idle, 1, "MB"),
            ("RSS end per node", run.rss_end, 1, "MB"),
        )
        for figure, values, digits, unit in figures:
            mean = round(statistics.mean(values), digits)
            report.add(f"markets {name}: {figure}, mean", mean, unit)
        report.add(f"markets {name}: trades", run.trades)
        report.add(
            f"markets {name}: markets converged", run.converged, "",
            f"= {run.markets}", run.converged == run.markets,
        )  # fmt: skip
    report.add("markets: extra CPU per market per node, idle", round(extra_idle, 3), "s")
    report.add("markets: extra CPU per market per node, load", round(extra_load, 3), "s")
    report.add("markets: extra RSS per market per node, idle", round(extra_rss_idle, 1), "MB")
    report.add("markets: extra RSS per market per node, end", round(extra_rss_end, 1), "MB")
    report.write(args.json)
    return 0 if a.converged == a.markets and b.converged == b.markets else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
