"""Benchmark: a node starting on a long history, and a fresh node joining it.

A history of 100,000 signed events (orders near one price that cross, and
cancels of the authors' own resting orders; each author's seq runs 1, 2, 3,
... and Lamport times strictly increase over the interleaved authors) is
built offline, before any clock starts, and written into a fresh data
directory's journal.  Then, with real ``twistd bitfi`` processes on
127.0.0.1:

- the source node starts on that directory: the time from its process
  start until ``GET /status`` answers holding every event (a restart costs
  the same), and its ``market.load_ms``;
- a fresh node bootstrapped to it: the time from its process start, and
  from its first ``GET /status`` answer, until its state hash equals the
  source's.  Target <= 3 s;
- that fresh node restarted on what it synced, then killed with SIGKILL
  and restarted again;
- sync time against history size: the fresh node's join (start to state
  hash equal) on prefixes of the history, by default 10,000, 50,000 and
  100,000 events (``--quick``: 10,000 only), written with ``--json`` as
  the series ``sync_time``.

Run ``python benchmarks/bench_join.py [--quick] [--events N] [--authors N]
[--sync-sizes N,N,...] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any

from _cluster import (
    MID,
    NETWORK,
    ApiError,
    NodeProcess,
    add_signed_together,
    busy_seconds,
    cleanup_on_interrupt,
    machine_info,
    print_table,
    report_problems,
    self_cpu_seconds,
    three_decimals,
    wait_api,
)
from _results import Results, add_arguments

from bitfitech.market.book import OrderBook
from bitfitech.market.events import Author, Event
from bitfitech.market.journal import EventJournal
from bitfitech.storage import Storage
from bitfitech.testing import free_ports

PAIR = "BTC/USD"
BATCH = 5000


def build_history(
    count: int, authors: int, seed: int, together: int = 1
) -> tuple[list[Event], OrderBook]:
    """
    C{count} signed events: orders within 20 of the mid and, for about a
    quarter of the events, a cancel of one of the author's resting orders.
    The last event is an order.  Each author signs C{together} of its
    events at a time, under one batch signature (1: each alone).

    :return: the events in Lamport order, and the book they make.
    """
    rng = random.Random(seed)
    signers = [Author(rng.randbytes(32), NETWORK, PAIR) for _ in range(authors)]
    seqs = [0] * authors
    resting: list[list[str]] = [[] for _ in range(authors)]
    book = OrderBook()
    events: list[Event] = []
    ts = int(time.time() * 1000) - count
    for lamport in range(1, count + 1):
        a = rng.randrange(authors)
        signer = signers[a]
        seqs[a] += 1
        target = None
        if lamport < count and rng.random() < 0.25:
            mine = resting[a]
            while mine and target is None:
                candidate = mine.pop(rng.randrange(len(mine)))
                if book.order(candidate) is not None:
                    target = candidate
        if target is not None:
            event = signer.draft_cancel(seqs[a], lamport, ts + lamport, target)
            book.cancel(target)
        else:
            side = rng.choice(("buy", "sell"))
            price = str(MID + rng.randint(-20, 20))
            amount = three_decimals(rng)
            event = signer.draft_order(seqs[a], lamport, ts + lamport, side, "limit", price, amount)
            book.place(event.id, side, price, amount, signer.author, "limit")
            if book.order(event.id) is not None:
                resting[a].append(event.id)
        events.append(event)
    chains: dict[str, list[Event]] = {signer.author: [] for signer in signers}
    for event in events:
        chains[event.author].append(event)
    for signer in signers:
        chain = chains[signer.author]
        for start in range(0, len(chain), together):
            signer.sign(chain[start : start + together])
    return events, book


def write_journal(data_dir: str, events: list[Event]) -> None:
    """Write C{events} into a fresh data directory's journal."""
    storage = Storage(data_dir)
    storage.open()
    try:
        journal = EventJournal(storage.connection)
        for start in range(0, len(events), BATCH):
            journal.write(events[start : start + BATCH], durable=False)
        assert len(journal) == len(events)
    finally:
        storage.close()


def poll(condition: Any, timeout: float, what: str, interval: float = 0.01) -> float:
    """Poll until C{condition()} is true; return ``time.monotonic()`` then."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def has_order(node: NodeProcess, order_id: str) -> bool:
    try:
        status, _ = node.api.request("GET", f"/orders/{order_id}")
    except ApiError:
        node.api.close()
        return False
    return status == 200


def join_time(
    base: str, index: int, events: list[Event], timeout: float, nodes: list[NodeProcess]
) -> float:
    """
    Seconds from a fresh node's process start until its state hash equals
    that of a source node started on C{events}; both are stopped after.
    """
    source_dir = os.path.join(base, f"source-data-{len(events)}")
    write_journal(source_dir, events)
    port, api_port = free_ports(2)
    source = NodeProcess(index, base, port, api_port, data_dir=source_dir)
    nodes.append(source)
    source.start()
    target_hash = wait_api(source, timeout=timeout, interval=0.005)["state_hash"]
    port, api_port = free_ports(2)
    fresh = NodeProcess(index + 1, base, port, api_port, bootstrap=[source.port])
    nodes.append(fresh)
    fresh.start()
    wait_api(fresh, timeout=timeout, interval=0.005)
    synced = poll(
        lambda: fresh.api.get("/status")["state_hash"] == target_hash,
        timeout,
        "the state hash",
        interval=0.02,
    )
    took = synced - fresh.started_at
    fresh.stop()
    source.stop()
    return took


def sizes_list(text: str) -> list[int]:
    """``"10000,50000"`` as ``[10000, 50000]``."""
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 events (well under a minute)")
    parser.add_argument("--events", type=int, help="history length [100,000; quick 10,000]")
    parser.add_argument("--authors", type=int, default=50, help="authors [50]")
    add_signed_together(parser)
    parser.add_argument("--timeout", type=float, default=300.0, help="per wait, seconds [300]")
    parser.add_argument(
        "--sync-sizes", type=sizes_list,
        help="history sizes of the sync-time series [10000,50000,100000; quick 10000]",
    )  # fmt: skip
    add_arguments(parser, quick=False)
    args = parser.parse_args(argv)
    count = args.events or (10_000 if args.quick else 100_000)
    sync_sizes = sorted(
        set(args.sync_sizes or ([10_000] if args.quick else [10_000, 50_000, 100_000]))
    )
    report = Results("bench_join", quick=args.quick)
    sync_points: dict[int, float] = {}
    rows: list[tuple[str, str]] = []
    with cleanup_on_interrupt():
        base = tempfile.mkdtemp(prefix="bitfi-join-")
        nodes: list[NodeProcess] = []
        try:
            started = time.perf_counter()
            events, book = build_history(count, args.authors, seed=5, together=args.signed_together)
            built = time.perf_counter() - started
            source_dir = os.path.join(base, "source-data")
            started = time.perf_counter()
            write_journal(source_dir, events)
            written = time.perf_counter() - started
            cancels = sum(not e.is_order for e in events)
            last_order = events[-1].id
            rows += [
                ("events (orders / cancels)", f"{count:,} ({count - cancels:,} / {cancels:,})"),
                ("authors; events per signature", f"{args.authors}; {args.signed_together}"),
                ("trades / open orders at the end", f"{book.trade_count:,} / {len(book):,}"),
                ("history signed, offline (s)", f"{built:.2f}"),
                ("journal written, offline (s)", f"{written:.2f}"),
            ]

            # The source node on the prepared journal.
            port, api_port = free_ports(2)
            source = NodeProcess(0, base, port, api_port, data_dir=source_dir)
            nodes.append(source)
            source.start()
            status = wait_api(source, timeout=args.timeout, interval=0.005)
            answered = time.monotonic() - source.started_at
            if status["events"] != count:
                raise RuntimeError(f"source holds {status['events']} events, not {count}")
            target_hash = status["state_hash"]
            source_status_load_s = status["market"]["load_ms"] / 1000
            rows += [
                ("source: start to /status with all events (s)", f"{answered:.2f}"),
                ("source: market.load_ms", f"{status['market']['load_ms']:,}"),
                ("source: events loaded/s", f"{count / source_status_load_s:,.0f}"),
            ]

            # A fresh node bootstrapped to the source.
            port, api_port = free_ports(2)
            fresh = NodeProcess(1, base, port, api_port, bootstrap=[source.port])
            nodes.append(fresh)
            busy_before, self_before = busy_seconds(), self_cpu_seconds()
            source_before = source.cpu_seconds()
            fresh.start()
            wait_api(fresh, timeout=args.timeout, interval=0.005)
            first_answer = time.monotonic()
            # GET /orders/{id} of the last order is cheap: the source sends
            # its history in Lamport order, so that order comes last; then
            # the state hash (GET /status) is checked.
            poll(lambda: has_order(fresh, last_order), args.timeout, "the last order")
            synced = poll(
                lambda: fresh.api.get("/status")["state_hash"] == target_hash,
                args.timeout,
                "the state hash",
            )
            fresh_cpu, source_cpu = fresh.cpu_seconds(), source.cpu_seconds() - source_before
            other_cpu = busy_seconds() - busy_before - fresh_cpu - source_cpu
            other_cpu -= self_cpu_seconds() - self_before
            from_start = synced - fresh.started_at
            from_answer = synced - first_answer
            status = fresh.api.get("/status")
            gossip = status["gossip"]
            rows += [
                ("fresh: start to first /status (s)", f"{first_answer - fresh.started_at:.2f}"),
                ("fresh: start to state hash equal (s)", f"{from_start:.2f}"),
                ("fresh: first /status to state hash equal (s)", f"{from_answer:.2f}"),
                ("fresh: events/s from first /status", f"{count / from_answer:,.0f}"),
                ("fresh: events received / new / duplicate",
                 f"{gossip['events_received']:,} / {gossip['events_new']:,} / "
                 f"{gossip['events_duplicate']:,}"),
                ("fresh: sync requests sent", f"{gossip['sync_sent']:,}"),
                ("CPU s until synced: fresh / source / others",
                 f"{fresh_cpu:.1f} / {source_cpu:.1f} / {max(0.0, other_cpu):.1f}"),
                ("fresh: rollbacks / events replayed",
                 f"{status['market']['rollbacks']:,} / {status['market']['replayed']:,}"),
                ("state hashes equal", "yes" if status["state_hash"] == target_hash else "NO"),
                ("state hash", target_hash[:16] + "..."),
            ]  # fmt: skip
            sync_points[count] = from_start

            # The fresh node restarted on the history it synced.
            fresh.stop()
            port, api_port = free_ports(2)
            again = NodeProcess(2, base, port, api_port, data_dir=fresh.data_dir)
            nodes.append(again)
            again.start()
            status = wait_api(again, timeout=args.timeout, interval=0.005)
            restarted = time.monotonic() - again.started_at
            rows += [
                ("fresh, restarted: start to /status (s)", f"{restarted:.2f}"),
                ("fresh, restarted: market.load_ms", f"{status['market']['load_ms']:,}"),
                ("fresh, restarted: events / hash equal",
                 f"{status['events']:,} / "
                 f"{'yes' if status['state_hash'] == target_hash else 'NO'}"),
            ]  # fmt: skip

            # Killed with SIGKILL (no clean shutdown), then started again.
            assert again.process is not None
            again.process.kill()
            again.wait_stopped(time.monotonic() + 10.0)
            port, api_port = free_ports(2)
            killed = NodeProcess(3, base, port, api_port, data_dir=fresh.data_dir)
            nodes.append(killed)
            killed.start()
            status = wait_api(killed, timeout=args.timeout, interval=0.005)
            after_kill = time.monotonic() - killed.started_at
            killed_equal = status["events"] == count and status["state_hash"] == target_hash
            rows += [
                ("fresh, after SIGKILL: start to /status (s)", f"{after_kill:.2f}"),
                ("fresh, after SIGKILL: market.load_ms", f"{status['market']['load_ms']:,}"),
                ("fresh, after SIGKILL: events / hash equal",
                 f"{status['events']:,} / {'yes' if killed_equal else 'NO'}"),
            ]  # fmt: skip
            killed.stop()
            source_load_s: float = source_status_load_s
            report.add("history for the join figures", count, "events")
            report.add("source node: start to /status holding the history", round(answered, 2), "s")
            report.add("source node: events loaded/s", round(count / source_load_s), "events/s")
            report.add(
                "fresh node synced (start to state hash equal)",
                round(from_start, 2),
                "s",
                "<= 3 s",
                from_start <= 3.0,
            )
            report.add(
                "fresh node: events/s from first /status", round(count / from_answer), "events/s"
            )
            report.add("restart after SIGTERM: start to /status", round(restarted, 2), "s")
            report.add("restart after SIGKILL: start to /status", round(after_kill, 2), "s")
            report.add(
                "restart after SIGKILL: same events and state hash",
                "yes" if killed_equal else "no",
                "",
                "equal",
                killed_equal,
            )

            # Sync time against history size: one fresh join per other size.
            for k, size in enumerate(s for s in sync_sizes if s not in sync_points):
                sized, _ = build_history(size, args.authors, seed=5, together=args.signed_together)
                sync_points[size] = join_time(base, 10 + 2 * k, sized, args.timeout, nodes)
            sizes = sorted(sync_points)
            report.add_series(
                "sync_time", [float(n) for n in sizes], [round(sync_points[n], 3) for n in sizes],
                "history (events)", "fresh node start to state hash equal (s)",
            )  # fmt: skip
            rows += [(f"sync time at {n:,} events (s)", f"{sync_points[n]:.2f}") for n in sizes]
            verdict = "met" if from_start <= 3.0 else "MISSED"
        finally:
            for node in nodes:
                node.terminate()
            deadline = time.monotonic() + 10.0
            for node in nodes:
                node.wait_stopped(deadline)
            problems = {n.index: n.log_problems() for n in nodes}
            shutil.rmtree(base, ignore_errors=True)
    print_table(f"join ({'quick; ' if args.quick else ''}{machine_info()})", rows)
    print_table(
        "targets", [("fresh node synced <= 3 s from start", f"{from_start:.2f} s: {verdict}")]
    )
    report_problems({i: lines for i, lines in problems.items() if lines})
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
