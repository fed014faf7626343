"""Benchmark: a node's memory with a large book of resting orders.

``--orders`` signed orders of ``--authors`` keys that never cross (buys
below the mid, sells above, a few hundred price levels), built before any
clock starts and written into a fresh data directory's journal.  Then
one real ``twistd bitfi`` process (no peers, ``--settle-after 1``):

- started on that directory, it replays the journal: its resident memory
  (``VmRSS`` of ``/proc/PID/status``) once ``GET /status`` holds every
  order, all resting;
- left running until it has written a ledger checkpoint (every 30 s, once
  10,000 more events are settled), stopped with SIGTERM and restarted:
  its memory once it holds the book again, from the checkpoint.

Also the peak (``VmHWM``) of each run, and the memory per resting order.
Target: at most 150 MB with 100,000 resting orders, after the replay and
after the restart.

Run ``python benchmarks/bench_memory.py [--orders N] [--quick] [--json PATH]``;
full: 100,000 orders, about 60 s; ``--quick``: 10,000 orders, no restart,
about 5 s.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from decimal import Decimal

from _cluster import (
    NETWORK,
    NodeProcess,
    cleanup_on_interrupt,
    machine_info,
    print_table,
    wait_api,
)
from _results import Results, add_arguments
from bench_join import write_journal

from bitfitech.market.events import Author, Event
from bitfitech.market.service import CHECKPOINT_FILE, CHECKPOINT_INTERVAL
from bitfitech.testing import free_ports

PAIR = "BTC/USD"
MID = 50_000
TARGET_MB = 150
TARGET_ORDERS = 100_000


def resting_orders(count: int, authors: int, seed: int) -> list[Event]:
    """C{count} orders in Lamport order, none crossing: buys below the mid, sells above."""
    rng = random.Random(seed)
    signers = [Author(rng.randbytes(32), NETWORK, PAIR) for _ in range(authors)]
    seqs = [0] * authors
    ts = int(time.time() * 1000) - count
    events = []
    for lamport in range(1, count + 1):
        a = rng.randrange(authors)
        seqs[a] += 1
        side = rng.choice(("buy", "sell"))
        step = Decimal(rng.randint(1, 400)) / 4
        price = str(MID - step if side == "buy" else MID + step)
        amount = str(Decimal(rng.randint(1, 100_000)) / 1000)
        events.append(
            signers[a].order(seqs[a], lamport, ts + lamport, side, "limit", price, amount)
        )
    return events


def memory_mb(pid: int) -> tuple[float, float]:
    """``VmRSS`` and ``VmHWM`` of process C{pid}, in MB."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def holding(node: NodeProcess, count: int, timeout: float) -> tuple[float, dict[str, int]]:
    """Wait until the node holds C{count} events; the seconds from its start, and its counts."""
    deadline = time.monotonic() + timeout
    while True:
        status = wait_api(node, timeout)
        counts = {"events": status["events"], "open": status["market"]["open_orders"]}
        if counts["events"] >= count:
            return time.monotonic() - node.started_at, counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"the node holds {counts['events']} of {count} events")
        time.sleep(0.1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, help="resting orders [100,000; quick 10,000]")
    parser.add_argument("--authors", type=int, default=200, help="signing keys [200]")
    parser.add_argument(
        "--no-restart", action="store_true",
        help="skip the restart from a checkpoint (it waits for one, about 30 s) [quick: skipped]",
    )  # fmt: skip
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.orders is None:
        args.orders = 10_000 if args.quick else TARGET_ORDERS
    if args.orders < 1 or args.authors < 1:
        parser.error("--orders and --authors at least 1")
    restart = not (args.no_restart or args.quick)
    report = Results("bench_memory", quick=args.quick)
    built = time.monotonic()
    events = resting_orders(args.orders, args.authors, seed=11)
    built = time.monotonic() - built
    base = tempfile.mkdtemp(prefix="bitfi-memory-")
    api_port, port = free_ports(2)
    node = NodeProcess(0, base, port, api_port, outbound=0)
    node.args += ["--settle-after", "1"]
    write_journal(node.data_dir, events)
    rows = [
        ("resting orders; authors; built in (s)", f"{args.orders:,}; {args.authors}; {built:.1f}")
    ]
    runs: dict[str, tuple[float, float, float]] = {}
    with cleanup_on_interrupt():
        try:
            node.start()
            took, counts = holding(node, args.orders, 300)
            if counts["open"] != args.orders:
                raise RuntimeError(f"{counts['open']} of {args.orders} orders rest: some crossed")
            runs["after the replay"] = (took, *memory_mb(node.pid))
            if restart:
                checkpoint = os.path.join(node.data_dir, CHECKPOINT_FILE)
                deadline = time.monotonic() + CHECKPOINT_INTERVAL * 2 + 30
                while not os.path.exists(checkpoint):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the node wrote no checkpoint")
                    time.sleep(0.5)
                node.stop()
                node.start()
                took, counts = holding(node, args.orders, 300)
                runs["after a restart from its checkpoint"] = (took, *memory_mb(node.pid))
            problems = node.log_problems()
        finally:
            node.stop()
    for name, (took, rss, peak) in runs.items():
        rows += [
            (f"{name}: start to holding the book (s)", f"{took:.2f}"),
            (f"{name}: resident / peak (MB)", f"{rss:.1f} / {peak:.1f}"),
            (f"{name}: resident per resting order (bytes)",
             f"{rss * 1024 * 1024 / args.orders:,.0f}"),
        ]  # fmt: skip
    rows.append(("node log: warnings and errors", str(len(problems))))
    print_table(f"memory of one node with a resting book: {machine_info()}", rows)
    for line in problems[:5]:
        print(f"  {line[:200]}")
    verdicts = []
    for name, (_, rss, peak) in runs.items():
        full = args.orders >= TARGET_ORDERS
        target = f"<= {TARGET_MB} MB at {TARGET_ORDERS:,} orders" if full else None
        report.add(f"resident memory {name} ({args.orders:,} resting orders)", round(rss, 1),
                   "MB", target, rss <= TARGET_MB if full else None)  # fmt: skip
        report.add(f"peak memory {name}", round(peak, 1), "MB")
        if full:
            met = "met" if rss <= TARGET_MB else "MISSED"
            verdicts.append((f"RSS {name} <= {TARGET_MB} MB", f"{rss:.0f} MB: {met}"))
    report.write(args.json)
    if verdicts:
        print_table("targets", verdicts)
    if not problems:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
