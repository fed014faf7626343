"""Benchmark: order entry into one node, ``POST /orders`` and ``POST /orders/batch``.

One real ``twistd bitfi`` process (TLS on, no peers, ``--no-mdns
--no-dht``), every thread of it pinned to CPU 0 once it is up; the load
client processes of ``bench_replication`` run on the other CPUs and post
as fast as they are answered (``--threads`` threads in ``--clients``
processes, each with one keep-alive connection): first single orders to
``/orders`` for ``--duration`` seconds, then batches of ``--batch``
orders to ``/orders/batch`` as long.  Each order is signed, journaled
(fsynced: a node's own orders are acknowledged once durable), applied
and answered; with no peers nothing is relayed.

Per phase: orders acknowledged per second, the node's CPU time per order
(its user + system time over the phase), and the clients' answer time
p50 / p99.  Targets: ``/orders`` at most 300 us of node CPU per order;
``/orders/batch`` at least 5,000 orders/s.

Run ``python benchmarks/bench_entry.py [--quick] [--json PATH]``; full: two
8 s phases, about 25 s; ``--quick``: two 2 s phases, about 8 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from _cluster import (
    NodeProcess,
    cleanup_on_interrupt,
    machine_info,
    pin,
    print_table,
    run_clients,
    wait_api,
)
from _results import Results, add_arguments

from bitfitech.api.jsonresource import MAX_BATCH
from bitfitech.testing import free_ports

POST_CPU_TARGET_US = 300
BATCH_TARGET = 5_000


def phase(node: NodeProcess, args: argparse.Namespace, batch: int, cpu: int) -> dict[str, Any]:
    """Post for C{args.duration} seconds, C{batch} orders a request; what it did."""
    pin(node.pid, {cpu})
    before = node.cpu_seconds()
    start_at, results = run_clients(
        [node.api_port], args.clients, args.threads, args.duration, start_delay=0.5, batch=batch
    )
    used = node.cpu_seconds() - before
    acked = sum(len(result["acked"]) for result in results)
    errors: dict[str, int] = {}
    for result in results:
        for key, count in result["errors"].items():
            errors[key] = errors.get(key, 0) + count
    p50 = [r["latency_p50"] for r in results if r["latency_p50"] is not None]
    p99 = [r["latency_p99"] for r in results if r["latency_p99"] is not None]
    return {
        "acked": acked,
        "rate": acked / args.duration,
        "cpu_us": used / max(1, acked) * 1e6,
        "busy": used / args.duration,
        "errors": errors,
        "p50_ms": max(p50, default=float("nan")) * 1000,
        "p99_ms": max(p99, default=float("nan")) * 1000,
    }


def rows(name: str, run: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"{name}: orders acknowledged; per second", f"{run['acked']:,}; {run['rate']:,.0f}"),
        (f"{name}: node CPU per order (us); node busy", f"{run['cpu_us']:.0f}; {run['busy']:.0%}"),
        (f"{name}: answer p50 / p99 (ms, worst client)",
         f"{run['p50_ms']:.1f} / {run['p99_ms']:.1f}"),
        (f"{name}: errors", ", ".join(f"{k}: {v}" for k, v in run["errors"].items()) or "0"),
    ]  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, help="seconds per phase [8; quick 2]")
    parser.add_argument("--clients", type=int, default=1, help="load client processes [1]")
    parser.add_argument("--threads", type=int, default=8, help="threads per client [8]")
    parser.add_argument("--batch", type=int, default=100, help="orders per batch request [100]")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 8.0
    if (
        args.duration <= 0
        or args.clients < 1
        or args.threads < 1
        or not 2 <= args.batch <= MAX_BATCH
    ):
        parser.error(
            f"--duration above 0; --clients, --threads at least 1; --batch 2 to {MAX_BATCH}"
        )
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        parser.error(f"needs two CPUs, one for the node and one for the clients; this has {cpus}")
    report = Results("bench_entry", quick=args.quick)
    base = tempfile.mkdtemp(prefix="bitfi-entry-")
    api_port, port = free_ports(2)
    node = NodeProcess(0, base, port, api_port, outbound=0)
    with cleanup_on_interrupt():
        try:
            node.start()
            wait_api(node)
            os.sched_setaffinity(0, set(cpus[1:]))  # the clients inherit it
            single = phase(node, args, 1, cpus[0])
            batched = phase(node, args, args.batch, cpus[0])
            problems = node.log_problems()
        finally:
            node.stop()
    table = [("node threads pinned to CPU; clients", f"CPU {cpus[0]}; CPUs {cpus[1:]}, "
              f"{args.clients} x {args.threads} threads")]  # fmt: skip
    table += rows("POST /orders", single)
    table += rows(f"POST /orders/batch ({args.batch} a request)", batched)
    table.append(("node log: warnings and errors", str(len(problems))))
    print_table(f"order entry into one node: {machine_info()}", table)
    for line in problems[:5]:
        print(f"  {line[:200]}")
    cpu_met = single["cpu_us"] <= POST_CPU_TARGET_US
    batch_met = batched["rate"] >= BATCH_TARGET
    report.add("POST /orders: node CPU per order", round(single["cpu_us"]), "us",
               f"<= {POST_CPU_TARGET_US} us", cpu_met)  # fmt: skip
    report.add("POST /orders: orders/s into one node on one core", round(single["rate"]),
               "orders/s")  # fmt: skip
    report.add("POST /orders/batch: orders/s into one node on one core", round(batched["rate"]),
               "orders/s", f">= {BATCH_TARGET:,} orders/s", batch_met)  # fmt: skip
    report.add("POST /orders/batch: node CPU per order", round(batched["cpu_us"]), "us")
    report.write(args.json)
    print_table("targets", [
        (f"POST /orders CPU per order <= {POST_CPU_TARGET_US} us",
         f"{single['cpu_us']:.0f}: {'met' if cpu_met else 'MISSED'}"),
        (f"POST /orders/batch >= {BATCH_TARGET:,} orders/s",
         f"{batched['rate']:,.0f}: {'met' if batch_met else 'MISSED'}"),
    ])  # fmt: skip
    if not problems:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    failed = single["acked"] == 0 or batched["acked"] == 0 or single["errors"] or batched["errors"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
