"""Benchmark: how orders replicate between real ``twistd bitfi`` node processes.

Every node is its own process on 127.0.0.1 with its own temporary data
directory; the benchmark talks to them over their HTTP APIs with keep-alive
connections, and stops them and removes their directories at the end (on
error and Ctrl-C too).  Three sections:

a. Propagation: 20 nodes at about 4 links, a light load (about 20 orders/s
   spread over the nodes, crossing buys and sells near one price, about 10%
   cancels).  Per order: the latest ``applied_at`` over all nodes minus the
   entry node's ``applied_at``.  Target p99 <= 50 ms.
b. Duplicates: the same load on 20 nodes at about 4 and about 8 links
   (the 4-link cluster is section a's); from the ``gossip`` counters of
   ``GET /status``, full copies received per node per event
   (``events_received / events_new``) and ``inv`` ids received per node per
   event.  Target <= 1.5 copies.
c. Throughput: 10 nodes at about 4 links; load client processes post orders
   as fast as they are accepted for about 20 s; then the time until every
   node holds every order, loss (orders acknowledged with 201 and missing on
   some node) and the final state hashes.  Target >= 2,000 orders/s.

Run ``python benchmarks/bench_replication.py [--quick] [--json PATH]``;
``--help`` lists the knobs.  With ``--json`` the per-node latencies of
section a are written as the series ``propagation_latency`` (a CDF) and the
copies of section b as ``duplicates_vs_links``.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from _cluster import (
    ApiError,
    ApiPool,
    Cluster,
    busy_seconds,
    cleanup_on_interrupt,
    machine_info,
    percentile,
    print_table,
    random_order,
    report_problems,
    run_clients,
    self_cpu_seconds,
)
from _results import Results, add_arguments, cdf

GOSSIP_KEYS = (
    "events_received", "events_new", "events_duplicate", "inv_received", "getdata_sent",
    "sync_events_sent", "sync_sent",
)  # fmt: skip


@dataclass
class Placed:
    """One event the load placed: an order or a cancel, and where."""

    kind: str
    node: int
    id: str
    status: str  # the order's status in the 201 answer (orders only)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# -- a and b: propagation and duplicates under a light load


def light_load(
    cluster: Cluster, count: int, rate: float, cancel_share: float, seed: int
) -> tuple[list[Placed], int]:
    """
    Place C{count} operations at C{rate} per second, round-robin over the
    nodes: orders, and cancels of resting orders.

    :return: what was placed, and how many operations failed.
    """
    rng = random.Random(seed)
    pool = ApiPool()
    placed: list[Placed] = []
    resting: list[Placed] = []
    lock = threading.Lock()
    failures = 0

    def place_order(node: int, body: dict[str, str]) -> None:
        nonlocal failures
        try:
            status, doc = pool.api(cluster.nodes[node].api_port).request("POST", "/orders", body)
        except ApiError:
            status, doc = 0, None
        with lock:
            if status != 201:
                failures += 1
                return
            entry = Placed("order", node, doc["id"], doc["status"])
            placed.append(entry)
            if doc["status"] == "open":
                resting.append(entry)

    def cancel(target: Placed) -> None:
        nonlocal failures
        api = pool.api(cluster.nodes[target.node].api_port)
        try:
            status, _ = api.request("DELETE", f"/orders/{target.id}")
        except ApiError:
            status = 0
        with lock:
            if status == 200:
                placed.append(Placed("cancel", target.node, "", ""))
            else:
                failures += 1

    futures: list[Future[None]] = []
    with ThreadPoolExecutor(max_workers=16) as executor:
        started = time.monotonic()
        for i in range(count):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            target = None
            if rng.random() < cancel_share:
                with lock:
                    if resting:
                        target = resting.pop(rng.randrange(len(resting)))
            if target is not None:
                futures.append(executor.submit(cancel, target))
            else:
                node = i % len(cluster.nodes)
                futures.append(executor.submit(place_order, node, random_order(rng, spread=5)))
        for future in futures:
            future.result()
    pool.close()
    return placed, failures


def fetch_applied(cluster: Cluster, orders: list[Placed]) -> list[list[float | None]]:
    """``applied_at`` of every order on every node, in seconds (``None`` where missing)."""
    pool = ApiPool()

    def row(order: Placed) -> list[float | None]:
        out: list[float | None] = []
        for node in cluster.nodes:
            status, doc = pool.api(node.api_port).request("GET", f"/orders/{order.id}")
            at = doc.get("applied_at") if status == 200 else None
            out.append(None if at is None else at / 1000)
        return out

    with ThreadPoolExecutor(max_workers=8) as executor:
        rows = list(executor.map(row, orders))
    pool.close()
    return rows


def counters_add_up(statuses: list[dict[str, Any]], own: list[int]) -> str:
    """Check each node's gossip counters against what it holds.

    ``events_received = events_new + events_duplicate + events_invalid``, and
    ``events`` (held) ``= events_new + own events`` (cluster started empty).
    """
    bad = []
    for i, status in enumerate(statuses):
        g = status["gossip"]
        if g["events_received"] != g["events_new"] + g["events_duplicate"] + g["events_invalid"]:
            bad.append(f"node {i}: received != new + duplicate + invalid")
        if status["events"] != g["events_new"] + own[i]:
            bad.append(f"node {i}: held {status['events']} != new {g['events_new']} + own {own[i]}")
    return "yes" if not bad else "NO: " + "; ".join(bad[:3])


def gossip_delta(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, int]]:
    return [
        {key: a["gossip"][key] - b["gossip"][key] for key in GOSSIP_KEYS}
        for b, a in zip(before, after, strict=True)
    ]


def propagation_run(
    args: argparse.Namespace, links: int, seed: int
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """One cluster at about C{links} links: the light load, then its figures."""
    rows: list[tuple[str, str]] = []
    with Cluster(args.nodes, links, name=f"prop{links}", seed=seed) as cluster:
        formed = cluster.start()
        mean_links = cluster.mean_links()
        before = cluster.statuses()
        cpu_before, busy_before, self_before = (
            cluster.cpu_seconds(),
            busy_seconds(),
            self_cpu_seconds(),
        )
        load_started = time.monotonic()
        placed, failures = light_load(cluster, args.orders, args.rate, 0.1, seed)
        load_s = time.monotonic() - load_started
        cpu_nodes = cluster.cpu_seconds() - cpu_before
        cpu_self = self_cpu_seconds() - self_before
        cpu_other = busy_seconds() - busy_before - cpu_nodes - cpu_self
        orders = [p for p in placed if p.kind == "order"]
        cancels = len(placed) - len(orders)
        converge_s, last = cluster.wait_converged(len(placed), 120)
        after = last["statuses"]
        applied = fetch_applied(cluster, orders)
        latencies: list[float] = []
        per_node: list[float] = []
        missing = 0
        for order, times in zip(orders, applied, strict=True):
            entry = times[order.node]
            have = [t for t in times if t is not None]
            missing += len(times) - len(have)
            if entry is None or len(have) < len(times):
                continue
            latencies.append(max(have) - entry)
            per_node.extend(t - entry for i, t in enumerate(have) if i != order.node)
        delta = gossip_delta(before, after)
        copies = [d["events_received"] / d["events_new"] for d in delta if d["events_new"]]
        invs = [d["inv_received"] / d["events_new"] for d in delta if d["events_new"]]
        getdata = [d["getdata_sent"] / d["events_new"] for d in delta if d["events_new"]]
        total = {key: sum(d[key] for d in delta) for key in GOSSIP_KEYS}
        hashes = last["hashes"]
        own = [sum(p.node == i for p in placed) for i in range(len(cluster.nodes))]
        consistent = counters_add_up(after, own)
        rows += [
            ("nodes", f"{args.nodes}"),
            ("--outbound / --max-peers", f"{cluster.outbound} / {cluster.max_peers}"),
            ("links per node, mean (GET /peers)", f"{mean_links:.2f}"),
            ("mesh formed (s); dials the benchmark asked for", f"{formed:.2f}; {cluster.repairs}"),
            ("orders / cancels placed", f"{len(orders)} / {cancels}"),
            ("requests failed", f"{failures}"),
            ("offered rate (ops/s)", f"{args.rate:g}"),
            ("CPU s during the load: nodes / this process / others",
             f"{cpu_nodes:.1f} / {cpu_self:.1f} / {max(0.0, cpu_other):.1f} (of {load_s * sys_cores():.1f})"),  # noqa: E501
            ("latency to last node p50 (ms)", ms(percentile(latencies, 0.5))),
            ("latency to last node p90 (ms)", ms(percentile(latencies, 0.9))),
            ("latency to last node p99 (ms)", ms(percentile(latencies, 0.99))),
            ("latency to last node max (ms)", ms(max(latencies, default=float("nan")))),
            ("latency to each other node p50 (ms)", ms(percentile(per_node, 0.5))),
            ("latency to each other node p99 (ms)", ms(percentile(per_node, 0.99))),
            ("every node has every order", "yes" if missing == 0 else f"NO ({missing} missing)"),
            ("copies received / node / event (avg)", f"{statistics.mean(copies):.3f}"),
            ("copies received / event, cluster", f"{total['events_received'] / max(1, total['events_new']):.3f}"),  # noqa: E501
            ("inv ids received / node / event (avg)", f"{statistics.mean(invs):.3f}"),
            ("getdata sent / node / event (avg)", f"{statistics.mean(getdata):.3f}"),
            ("duplicates received, all nodes", f"{total['events_duplicate']}"),
            ("events in sync answers / event, cluster", f"{total['sync_events_sent'] / max(1, total['events_new']):.3f}"),  # noqa: E501
            ("sync requests sent, all nodes", f"{total['sync_sent']}"),
            ("gossip counters add up", consistent),
            ("state hashes equal", "yes" if len(hashes) == 1 else f"NO ({len(hashes)})"),
            ("state hash", next(iter(hashes))[:16] + "..."),
        ]  # fmt: skip
        figures = {
            "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99),
            "per_node": per_node,
            "latencies": latencies,
            "mean_links": mean_links,
            "copies": statistics.mean(copies),
            "missing": missing,
            "converge_s": converge_s,
            "problems": cluster.problems(),
        }
    return rows, figures


# -- c: throughput


def journal_ids(data_dir: str) -> set[str]:
    """The event ids in a node's journal (read-only; the node may be running)."""
    db = sqlite3.connect(f"file:{data_dir}/bitfi.sqlite3?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT id FROM events")}
    finally:
        db.close()


def throughput_run(args: argparse.Namespace) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    with Cluster(args.tp_nodes, 4, name="tp", seed=7) as cluster:
        cluster.start()
        mean_links = cluster.mean_links()
        ports = [node.api_port for node in cluster.nodes]
        polls: list[tuple[float, list[int], set[str]]] = []
        stop = threading.Event()

        def monitor() -> None:
            pool = ApiPool()
            while not stop.is_set():
                try:
                    statuses = [pool.api(p).get("/status") for p in ports]
                except ApiError:
                    time.sleep(0.1)
                    continue
                now = time.time()  # when the last node was seen
                polls.append(
                    (now, [s["events"] for s in statuses], {s["state_hash"] for s in statuses})
                )
                time.sleep(0.1)
            pool.close()

        cpu_before = cluster.cpu_seconds()
        busy_before, self_before = busy_seconds(), self_cpu_seconds()
        # Polled only once the push is over: /status hashes the whole book,
        # and ten polls a second on every node would load the nodes measured.
        watcher = threading.Thread(target=monitor, daemon=True)
        try:
            start_at, results = run_clients(
                ports, args.clients, args.threads, args.duration, batch=args.batch
            )
            watcher.start()
            # The push ends with the last acknowledgement.
            pushed_at = max([r["last_ack"] for r in results if r["last_ack"]] or [time.time()])
            acked = [(order_id, node) for r in results for order_id, node in r["acked"]]
            total = len(acked)

            def replicated() -> bool:
                if not polls:
                    return False
                _, counts, hashes = polls[-1]
                return min(counts) >= total and len(set(counts)) == 1 and len(hashes) == 1

            deadline = time.time() + args.replicate_timeout
            while not replicated() and time.time() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            if watcher.is_alive():
                watcher.join()
        cpu_nodes = cluster.cpu_seconds() - cpu_before
        cpu_self = self_cpu_seconds() - self_before
        cpu_busy = busy_seconds() - busy_before
        done = next(
            (t for t, counts, hashes in polls
             if min(counts) >= total and len(set(counts)) == 1 and len(hashes) == 1),
            None,
        )  # fmt: skip
        statuses = cluster.statuses()
        hashes = {s["state_hash"] for s in statuses}
        counts = [s["events"] for s in statuses]
        # Loss: every acknowledged order in every node's journal, and a sample
        # of them in every node's ledger (GET /orders/{id}).
        acked_ids = {order_id for order_id, _ in acked}
        lost_journal = sum(len(acked_ids - journal_ids(n.data_dir)) for n in cluster.nodes)
        sample = random.Random(3).sample(sorted(acked_ids), min(200, len(acked_ids)))
        lost_ledger = 0
        for node in cluster.nodes:
            for order_id in sample:
                status, _ = node.api.request("GET", f"/orders/{order_id}")
                lost_ledger += status != 200
        errors: dict[str, int] = {}
        for r in results:
            for key, count in r["errors"].items():
                errors[key] = errors.get(key, 0) + count
        client_cpu = sum(r["cpu_s"] for r in results)
        wall = (done or time.time()) - start_at
        push_s = pushed_at - start_at
        market = [s["market"] for s in statuses]
        gossip = [s["gossip"] for s in statuses]
        new = sum(g["events_new"] for g in gossip)
        own = [sum(node == i for _, node in acked) for i in range(len(cluster.nodes))]
        consistent = counters_add_up(statuses, own)
        rows = [
            ("nodes", f"{args.tp_nodes}"),
            ("links per node, mean (GET /peers)", f"{mean_links:.2f}"),
            ("client processes x threads, orders per request",
             f"{args.clients} x {args.threads}, {args.batch}"),
            ("push duration (s)", f"{push_s:.1f}"),
            ("orders acknowledged (201)", f"{total:,}"),
            ("requests failed", ", ".join(f"{k}: {v}" for k, v in errors.items()) or "0"),
            ("orders/s accepted", f"{total / push_s:,.0f}"),
            ("POST latency p50 / p99 (ms), worst client",
             f"{ms(max(r['latency_p50'] or 0 for r in results))} / "
             f"{ms(max(r['latency_p99'] or 0 for r in results))}"),
            ("all nodes had all orders after (s)",
             f"{wall:.1f}" if done else f"NOT within {args.replicate_timeout:.0f}s"),
            ("orders/s fully replicated", f"{total / wall:,.0f}" if done else "-"),
            ("lost (acked, missing in a journal)", f"{lost_journal}"),
            (f"lost (acked, sample of {len(sample)}, GET /orders)", f"{lost_ledger}"),
            ("events per node, min / max", f"{min(counts):,} / {max(counts):,}"),
            ("state hashes equal", "yes" if len(hashes) == 1 else f"NO ({len(hashes)})"),
            ("state hash", next(iter(hashes))[:16] + "..."),
            ("copies received / event, cluster",
             f"{sum(g['events_received'] for g in gossip) / max(1, new):.3f}"),
            ("events in sync answers / event, cluster",
             f"{sum(g['sync_events_sent'] for g in gossip) / max(1, new):.3f}"),
            ("sync requests sent, all nodes", f"{sum(g['sync_sent'] for g in gossip):,}"),
            ("gossip counters add up", consistent),
            ("journal writes, all nodes", f"{sum(m['journal_writes'] for m in market):,}"),
            ("apply delay at the end (ms), max", f"{max(m['apply_delay_ms'] for m in market)}"),
            ("ledger rollbacks / events replayed, all nodes",
             f"{sum(m['rollbacks'] for m in market):,} / {sum(m['replayed'] for m in market):,}"),
            ("trades / open orders (node 0)", f"{market[0]['trades']:,} / {market[0]['open_orders']:,}"),  # noqa: E501
            ("CPU s: nodes / load clients / this process",
             f"{cpu_nodes:.1f} / {client_cpu:.1f} / {cpu_self:.1f}"),
            ("CPU s: other processes (noise)",
             f"{max(0.0, cpu_busy - cpu_nodes - client_cpu - cpu_self):.1f}"),
            ("CPU s available (cores x wall)", f"{(sys_cores() * wall):.1f}"),
        ]  # fmt: skip
        figures = {
            "accepted": total / push_s,
            "replicated": total / wall if done else 0.0,
            "lost": lost_journal + lost_ledger,
            "equal": len(hashes) == 1,
            "problems": cluster.problems(),
        }
    return rows, figures


def sys_cores() -> int:
    return os.cpu_count() or 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, help="nodes in sections a and b [20; quick 8]")
    parser.add_argument("--orders", type=int, help="operations of the light load [400; quick 40]")
    parser.add_argument("--rate", type=float, default=20.0, help="light load, operations/s [20]")
    parser.add_argument("--tp-nodes", type=int, help="nodes in section c [10; quick 5]")
    parser.add_argument("--duration", type=float, help="section c push seconds [20; quick 3]")
    parser.add_argument("--clients", type=int, default=2, help="load client processes [2]")
    parser.add_argument("--threads", type=int, default=16, help="threads per client [16]")
    parser.add_argument(
        "--batch", type=int, default=1,
        help="orders per request in section c: 1 posts to /orders, more to /orders/batch [1]",
    )  # fmt: skip
    parser.add_argument("--replicate-timeout", type=float, default=180.0)
    parser.add_argument("--sections", default="abc", help="which sections to run [abc]")
    add_arguments(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    args.nodes = args.nodes or (8 if quick else 20)
    args.orders = args.orders or (40 if quick else 400)
    args.tp_nodes = args.tp_nodes or (5 if quick else 10)
    args.duration = args.duration or (3.0 if quick else 20.0)
    report = Results("bench_replication", quick=quick)
    duplicates: tuple[list[float], list[float]] = ([], [])
    header = f"replication ({'quick; ' if quick else ''}{machine_info()})"
    verdicts: list[tuple[str, str]] = []
    problems: dict[str, dict[int, list[str]]] = {}
    with cleanup_on_interrupt():
        if "a" in args.sections or "b" in args.sections:
            for links, seed in ((4, 11), (8, 12)):
                if links == 8 and "b" not in args.sections:
                    break
                rows, fig = propagation_run(args, links, seed)
                title = "a. propagation and b. duplicates" if links == 4 else "b. duplicates"
                print_table(f"{title}, ~{links} links: {header}", rows)
                problems[f"~{links} links"] = fig["problems"]
                if links == 4:
                    report.add(
                        f"propagation to the last node p50 ({args.nodes} nodes, ~4 links)",
                        round(fig["p50"] * 1000, 1),
                        "ms",
                    )
                    report.add(
                        f"propagation to the last node p99 ({args.nodes} nodes, ~4 links)",
                        round(fig["p99"] * 1000, 1),
                        "ms",
                        "p99 <= 50 ms",
                        fig["p99"] <= 0.05,
                    )
                    per_node_ms, share = cdf([t * 1000 for t in fig["per_node"]])
                    report.add_series(
                        "propagation_latency", per_node_ms, share, "ms to each other node",
                        "share of deliveries",
                    )  # fmt: skip
                    last_ms, share = cdf([t * 1000 for t in fig["latencies"]])
                    report.add_series(
                        "propagation_latency_last", last_ms, share, "ms to the last node",
                        "share of orders",
                    )  # fmt: skip
                report.add(
                    f"copies received per node per event, ~{links} links",
                    round(fig["copies"], 3),
                    "copies",
                    "<= 1.5 copies",
                    fig["copies"] <= 1.5,
                )
                duplicates[0].append(round(fig["mean_links"], 2))
                duplicates[1].append(round(fig["copies"], 3))
                if links == 4:
                    verdicts.append(
                        ("a. p99 <= 50 ms", f"{ms(fig['p99'])} ms: "
                         f"{'met' if fig['p99'] <= 0.05 else 'MISSED'}")
                    )  # fmt: skip
                verdicts.append(
                    (f"b. copies <= 1.5 at ~{links} links", f"{fig['copies']:.2f}: "
                     f"{'met' if fig['copies'] <= 1.5 else 'MISSED'}")
                )  # fmt: skip
        if "c" in args.sections:
            rows, fig = throughput_run(args)
            report.add(
                f"orders/s accepted ({args.tp_nodes} nodes, {args.duration:g} s push)",
                round(fig["accepted"]),
                "orders/s",
                ">= 2,000 orders/s",
                fig["accepted"] >= 2000,
            )
            report.add(
                "orders/s fully replicated on every node", round(fig["replicated"]), "orders/s"
            )
            report.add(
                "orders lost (acknowledged, missing on a node)",
                fig["lost"],
                "orders",
                "= 0",
                not fig["lost"],
            )
            report.add(
                "final state hashes equal",
                "yes" if fig["equal"] else "no",
                "",
                "equal",
                fig["equal"],
            )
            print_table(f"c. throughput: {header}", rows)
            problems["throughput"] = fig["problems"]
            verdicts.append(
                ("c. >= 2,000 orders/s accepted", f"{fig['accepted']:,.0f}: "
                 f"{'met' if fig['accepted'] >= 2000 else 'MISSED'}")
            )  # fmt: skip
            verdicts.append(
                ("c. loss = 0", f"{fig['lost']}: {'met' if not fig['lost'] else 'MISSED'}")
            )
            verdicts.append(("c. final state hashes equal", "yes" if fig["equal"] else "NO"))
    if duplicates[0]:
        report.add_series(
            "duplicates_vs_links", duplicates[0], duplicates[1], "links per node (mean)",
            "copies received per node per event",
        )  # fmt: skip
    report.write(args.json)
    print_table("targets", verdicts)
    for name, found in problems.items():
        print(f"{name}: ", end="")
        report_problems(found)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
