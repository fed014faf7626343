"""Benchmark: the matching engine's throughput and memory.

Two workloads, generated from a fixed seed before the clock starts, each run
three times in a fresh child process (so peak RSS belongs to that workload):

- A: 100,000 limit orders that never cross, over 1,000 price levels per
  side; it ends with 100,000 resting orders.
- B: 200,000 limit orders priced around a mid so that about 43% of them
  trade as takers, amounts with 3 decimals, plus a cancel after about 10%
  of the orders, aimed at a random one of the last 1,000 orders.

The timed loop is ``OrderBook.place``/``cancel`` with decimal strings, as
the replay tool and the ledger call them: parsing and validation included.
Also measured on the 100,000 resting orders of A: ``snapshot()``,
``from_snapshot()`` and ``state_hash()``.  Run ``python
benchmarks/bench_matching.py [--runs N] [--scale F] [--quick] [--json PATH]``
(``--quick``: one run at scale 0.2).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from _results import Results, add_arguments

from bitfitech.market.book import OrderBook, is_trade

Op = tuple[str, ...]

MID = 50_000


def three_decimals(rng: random.Random) -> str:
    """An amount from 0.001 to 2.000 with exactly 3 decimals, as a string."""
    thousandths = rng.randint(1, 2000)
    return f"{thousandths // 1000}.{thousandths % 1000:03d}"


def workload_a(count: int, rng: random.Random) -> list[Op]:
    """Limit orders that never cross: bids below the mid, asks above."""
    ops: list[Op] = []
    for i in range(count):
        level = rng.randint(1, 1000)
        if i % 2:
            ops.append(
                ("o", f"a{i}", "buy", f"{MID - level}.00", three_decimals(rng), f"u{i % 100}")
            )
        else:
            ops.append(
                ("o", f"a{i}", "sell", f"{MID + level}.00", three_decimals(rng), f"u{i % 100}")
            )
    return ops


def workload_b(count: int, rng: random.Random) -> list[Op]:
    """Limit orders around the mid, and a cancel after about 10% of them."""
    ops: list[Op] = []
    for i in range(count):
        side = "buy" if rng.random() < 0.5 else "sell"
        # Both sides priced uniformly within 100 of the mid: about 43% cross.
        price = str(MID + rng.randint(-100, 100))
        ops.append(("o", f"b{i}", side, price, three_decimals(rng), f"u{i % 1000}"))
        if rng.random() < 0.10:
            ops.append(("c", f"b{rng.randint(max(0, i - 1000), i)}"))
    return ops


def run_ops(book: OrderBook, ops: list[Op]) -> float:
    """Apply *ops*; return the seconds it took."""
    place, cancel = book.place, book.cancel
    started = time.perf_counter()
    for op in ops:
        if op[0] == "o":
            place(op[1], op[2], op[3], op[4], op[5])
        else:
            cancel(op[1])
    return time.perf_counter() - started


def taker_fraction(ops: list[Op]) -> float:
    """The share of orders that traded at least once as the taker."""
    book = OrderBook()
    orders = took = 0
    for op in ops:
        if op[0] != "o":
            book.cancel(op[1])
            continue
        orders += 1
        updates = book.place(op[1], op[2], op[3], op[4], op[5])
        took += any(is_trade(update) for update in updates)
    return took / orders


def worker(name: str, runs: int, scale: float) -> dict[str, Any]:
    """Run one workload *runs* times in this process; return its figures."""
    rng = random.Random(f"bitfi-bench-{name}")
    ops = (workload_a if name == "A" else workload_b)(
        int(100_000 * scale * (2 if name == "B" else 1)), rng
    )
    orders = sum(op[0] == "o" for op in ops)
    times = []
    for _ in range(runs):
        book = OrderBook()
        times.append(run_ops(book, ops))
    result: dict[str, Any] = {
        "workload": name,
        "orders": orders,
        "cancels": len(ops) - orders,
        "trades": book.trade_count,
        "resting": len(book),
        "min_s": min(times),
        "median_s": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if name == "A":
        started = time.perf_counter()
        snap = book.snapshot()
        result["snapshot_ms"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        OrderBook.from_snapshot(snap)
        result["restore_ms"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        book.state_hash()
        result["hash_ms"] = (time.perf_counter() - started) * 1000
    else:
        result["taker_share"] = taker_fraction(ops)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="runs per workload [3; quick 1]")
    parser.add_argument("--scale", type=float, help="workload size factor [1; quick 0.2]")
    parser.add_argument("--worker", choices=["A", "B"], help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.scale = args.scale or (0.2 if args.quick else 1.0)
    if args.worker:
        print(json.dumps(worker(args.worker, args.runs, args.scale)))
        return 0
    results = []
    for name in ("A", "B"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--runs",
                str(args.runs),
                "--scale",
                str(args.scale),
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        results.append(json.loads(out.stdout))
    columns = [
        ("workload", lambda r: r["workload"]),
        ("orders", lambda r: f"{r['orders']:,}"),
        ("cancels", lambda r: f"{r['cancels']:,}"),
        ("trades", lambda r: f"{r['trades']:,}"),
        ("resting", lambda r: f"{r['resting']:,}"),
        ("fastest s", lambda r: f"{r['min_s']:.3f}"),
        ("median s", lambda r: f"{r['median_s']:.3f}"),
        ("orders/s, fastest run", lambda r: f"{r['orders'] / r['min_s']:,.0f}"),
        ("orders/s, median run", lambda r: f"{r['orders'] / r['median_s']:,.0f}"),
        ("peak RSS MB", lambda r: f"{r['peak_rss_mb']:.1f}"),
    ]
    rows = [[cell(r) for _, cell in columns] for r in results]
    widths = [max(len(name), *(len(row[i]) for row in rows)) for i, (name, _) in enumerate(columns)]
    print(f"matching engine: min and median of {args.runs} runs, Python {sys.version.split()[0]}")
    print("  ".join(name.rjust(w) for (name, _), w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    a, b = results
    report = Results("bench_matching", quick=args.quick)
    for r in results:
        name = r["workload"]
        report.add(
            f"{name}: orders/s, median of {args.runs} run(s) ({r['orders']:,} orders)",
            round(r["orders"] / r["median_s"]),
            "orders/s",
        )
        report.add(f"{name}: peak RSS", round(r["peak_rss_mb"], 1), "MB")
    report.add("B: orders traded as takers", round(b["taker_share"] * 100, 1), "%")
    report.add(f"A: snapshot of {a['resting']:,} resting orders", round(a["snapshot_ms"], 1), "ms")
    report.add(f"A: from_snapshot of {a['resting']:,} orders", round(a["restore_ms"], 1), "ms")
    report.add(f"A: state_hash of {a['resting']:,} orders", round(a["hash_ms"], 1), "ms")
    report.write(args.json)
    print(f"B: {b['taker_share']:.1%} of orders traded as takers")
    print(
        f"A, {a['resting']:,} resting orders: snapshot {a['snapshot_ms']:.1f} ms, "
        f"from_snapshot {a['restore_ms']:.1f} ms, state_hash {a['hash_ms']:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
