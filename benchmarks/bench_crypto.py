"""Benchmark: what signing and checking one event costs, and what that bounds.

Every node checks the signature of every event it applies, so with N nodes
on one machine each order costs N signature checks before any other work.
This prints the per-event costs of ``Author.order`` (sign), ``parse_event``
and ``verify_event`` on real events, in one thread and in two (libsodium
releases the GIL), and the ceilings they put on the replication figures of
``bench_replication.py`` and ``bench_join.py``:

- throughput: orders/s through *nodes* processes if checking signatures
  were all the machine did;
- the CPU left, at a target rate, for everything else a node does with an
  event (decode, journal, apply, gossip, and the HTTP entry and the load
  clients, which share the machine);
- join: seconds for a fresh node to check *history* events on all cores,
  before applying any of them.

Run ``python benchmarks/bench_crypto.py [--events N] [--nodes N]
[--history N] [--quick] [--json PATH]`` (``--quick``: 2,000 events).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable

from _results import Results, add_arguments

from bitfitech.market.events import Author, Event, parse_event, verify_event

NETWORK, PAIR = "bench", "BTC/USD"


def per_item_us(items: int, run: Callable[[], None]) -> float:
    """Microseconds per item for one call of *run* over *items* items."""
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) / items * 1e6


def threaded(events: list[Event], threads: int) -> Callable[[], None]:
    """A run that checks *events* split over *threads* threads."""

    def check(part: list[Event]) -> None:
        for event in part:
            if not verify_event(event):
                raise AssertionError(f"bad signature on {event.id}")

    def run() -> None:
        workers = [
            threading.Thread(target=check, args=(events[i::threads],)) for i in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    return run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=int, help="events signed and checked [20,000; quick 2,000]"
    )
    parser.add_argument("--nodes", type=int, default=10, help="processes in the throughput run")
    parser.add_argument("--target", type=int, default=2_000, help="orders/s to budget for")
    parser.add_argument("--history", type=int, default=100_000, help="events in the join run")
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.events = args.events or (2_000 if args.quick else 20_000)
    results = Results("bench_crypto", quick=args.quick)
    cores = os.cpu_count() or 1
    author = Author(bytes(range(32)), NETWORK, PAIR)
    events: list[Event] = []

    def sign() -> None:
        for seq in range(1, args.events + 1):
            price = f"{50_000 + seq % 97}"
            events.append(author.order(seq, seq, seq, "buy", "limit", price, "0.5"))

    sign_us = per_item_us(args.events, sign)

    def parse() -> None:
        for event in events:
            parse_event(event.text, event.sig, NETWORK, PAIR)

    parse_us = per_item_us(args.events, parse)
    verify_us = {n: per_item_us(args.events, threaded(events, n)) for n in (1, 2)}

    # Each second the machine has cores * 1e6 µs; at the target rate every
    # order is signed once and checked on every node.
    spent_us = args.target * (sign_us + args.nodes * verify_us[1])
    budget_us = (cores * 1e6 - spent_us) / (args.target * args.nodes)
    rows = [
        ("sign (Author.order)", f"{sign_us:.1f} µs"),
        ("parse_event", f"{parse_us:.1f} µs"),
        ("verify_event, 1 thread", f"{verify_us[1]:.1f} µs"),
        ("verify_event, 2 threads (wall time per event)", f"{verify_us[2]:.1f} µs"),
        (
            f"throughput ceiling, {args.nodes} nodes on {cores} cores, checks only",
            f"{cores * 1e6 / (args.nodes * verify_us[1]):,.0f} orders/s",
        ),
        (
            f"left per event per node at {args.target:,} orders/s, after sign and checks",
            f"{budget_us:.1f} µs",
        ),
        (
            f"join floor, {args.history:,} events checked on {cores} cores",
            f"{args.history * verify_us[1] / cores / 1e6:.2f} s",
        ),
    ]
    ceiling = cores * 1e6 / (args.nodes * verify_us[1])
    join_floor = args.history * verify_us[1] / cores / 1e6
    results.add("sign (Author.order)", round(sign_us, 2), "µs")
    results.add("parse_event", round(parse_us, 2), "µs")
    results.add("verify_event, 1 thread", round(verify_us[1], 2), "µs")
    results.add("verify_event, 2 threads (wall time per event)", round(verify_us[2], 2), "µs")
    results.add(
        f"throughput ceiling, {args.nodes} nodes on {cores} cores, checks only",
        round(ceiling),
        "orders/s",
        f">= {args.target:,} orders/s",
        ceiling >= args.target,
    )
    results.add(
        f"left per event per node at {args.target:,} orders/s, after sign and checks",
        round(budget_us, 2),
        "µs",
    )
    results.add(
        f"join floor, {args.history:,} events checked on {cores} cores", round(join_floor, 3), "s"
    )
    results.write(args.json)
    width = max(len(name) for name, _ in rows)
    print(f"event signatures: {args.events:,} events, PyNaCl, Python {sys.version.split()[0]}")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value.rjust(16)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
