"""Benchmark: the HTTP API under load, ``GET /book`` from a probe alone and beside a flood.

One real ``twistd bitfi`` process (no peers, ``--no-mdns --no-dht``, the
API's default limits: 256 connections, 60 s idle timeout), every thread of
it pinned to CPU 0 once it is up, with a book of ``--orders`` resting
orders (buys below the mid, sells above: nothing trades).  Everything
else runs on the other CPUs, in processes of its own, so that the node's
CPU time is its alone (on a machine of two CPUs the probe shares the
second with the flood: its figures under load then include some wait for
that CPU too):

- a probe (this process) asks ``GET /book`` over one keep-alive
  connection, every ``--probe-interval`` seconds, and times each answer;
- first alone for ``--duration`` seconds: the baseline;
- then beside the load: ``--idle`` keep-alive connections opened (each
  makes one request, then stays open without a word), and a flood process
  of ``--flooders`` threads, each with one keep-alive connection, asking
  ``GET /book`` and posting a resting ``POST /orders`` in turn, each as
  soon as the previous one is answered, for as long again.

All the while an honest peer, a second node B linked to the flooded node
A (and pinned with the clients), takes one of A's resting orders every
``--peer-interval`` seconds: a small sell through ``POST /orders`` on B,
which trades as soon as A applies it.  A listener on A's ``GET /stream``
(``types=trade``) notes when each of these trades appears on A: the time
from B's answer to that is how long an honest peer's order takes to
reach A and be matched there, alone and beside the flood.

Figures: the probe's p50 / p99 alone and under load, the peer's order
from B to a trade on A (p50 / p99) alone and under load, what the flood got
answered (and any error: every connection here is under the cap, so
there should be none), the node's CPU, and the connections the node counts
(``bitfi_api_connections`` in ``/metrics``).  Target: the probe's p99 under
load at most 100 ms (the flood's requests queue on the node's one thread;
the idle connections must cost nothing).

Run ``python benchmarks/bench_api_load.py [--quick] [--json PATH]``; full:
two 6 s phases, about 15 s; ``--quick``: two 1.5 s phases, about 7 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from _cluster import (
    MID,
    Api,
    ApiError,
    NodeProcess,
    _die_with_parent,
    child_environment,
    cleanup_on_interrupt,
    machine_info,
    percentile,
    pin,
    print_table,
    three_decimals,
    wait_api,
    wait_until,
)
from _results import Results, add_arguments

from bitfitech.api.jsonresource import MAX_BATCH
from bitfitech.config import DEFAULT_API_MAX_CONNECTIONS
from bitfitech.testing import free_ports

#: the probe's p99 under load must stay at or below this
P99_TARGET_MS = 100.0
#: connections the benchmark holds besides the idle ones and the flood's:
#: the probe, the one that placed the book, the one that reads ``/metrics``,
#: the stream listener
OWN_CONNECTIONS = 4
#: resting prices: this far from the mid at least, and within SPREAD of that
GAP, SPREAD = 100, 1000
#: the honest peer's sells: at the lowest resting buy's price, so each takes
#: the best buy (a small part of it) and trades at once
PEER_SELL = {"side": "sell", "price": str(MID - GAP - SPREAD), "amount": "0.001"}


def resting_order(rng: random.Random) -> dict[str, str]:
    """A limit order that rests: a buy below the mid or a sell above it, never crossing."""
    side = rng.choice(("buy", "sell"))
    offset = GAP + rng.randint(0, SPREAD)
    price = MID - offset if side == "buy" else MID + offset
    return {"side": side, "price": str(price), "amount": three_decimals(rng)}


def place_book(api: Api, orders: int, rng: random.Random) -> None:
    """Place C{orders} resting orders through ``/orders/batch``."""
    while orders > 0:
        batch = [resting_order(rng) for _ in range(min(orders, MAX_BATCH))]
        status, body = api.request("POST", "/orders/batch", {"orders": batch})
        if status != 201:
            raise RuntimeError(f"placing the book: {status} {body}")
        orders -= len(batch)


# -- the flood: its own process, threads of keep-alive clients


def _flood_thread(port: int, deadline: float, seed: int, out: list[dict[str, Any]],
                  lock: threading.Lock) -> None:  # fmt: skip
    rng = random.Random(seed)
    api = Api(port, timeout=30.0)
    answered: dict[str, int] = {}
    failures: dict[str, int] = {}
    ask_book = True
    try:
        while time.time() < deadline:
            try:
                if ask_book:
                    status, _ = api.request("GET", "/book")
                else:
                    status, _ = api.request("POST", "/orders", resting_order(rng))
            except ApiError as e:
                key = type(e.__cause__).__name__
                failures[key] = failures.get(key, 0) + 1
                time.sleep(0.01)
                continue
            key = f"{'GET /book' if ask_book else 'POST /orders'} {status}"
            answered[key] = answered.get(key, 0) + 1
            ask_book = not ask_book
    finally:
        api.close()
        with lock:
            out.append({"answered": answered, "failures": failures})


def flood_main(spec_text: str) -> None:
    """The flood process: C{threads} clients until the deadline; prints what they got, as JSON."""
    spec = json.loads(spec_text)
    deadline = spec["start_at"] + spec["duration"]
    out: list[dict[str, Any]] = []
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_flood_thread, daemon=True,
                         args=(spec["port"], deadline, spec["seed"] + t, out, lock))
        for t in range(spec["threads"])
    ]  # fmt: skip
    time.sleep(max(0.0, spec["start_at"] - time.time()))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals: dict[str, dict[str, int]] = {"answered": {}, "failures": {}}
    for part in out:
        for kind, counts in part.items():
            for key, count in counts.items():
                totals[kind][key] = totals[kind].get(key, 0) + count
    json.dump(totals, sys.stdout)


def start_flood(
    port: int, threads: int, start_at: float, duration: float
) -> subprocess.Popen[bytes]:
    """Start the flood process."""
    spec = {"port": port, "threads": threads, "start_at": start_at, "duration": duration,
            "seed": 7}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, __file__, "--flood", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=child_environment(),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


# -- the probe and the idle connections (this process)


def probe(api: Api, seconds: float, interval: float) -> tuple[list[float], int]:
    """``GET /book`` every C{interval} s for C{seconds} s: each answer's time, and the errors."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            status, _ = api.request("GET", "/book")
        except ApiError:
            status = 0
        if status == 200:
            latencies.append(time.perf_counter() - started)
        else:
            errors += 1
        time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    return latencies, errors


class PeerProbe:
    """
    The honest peer's orders, placed on B, and their trades seen on A's
    live stream: each trade's delay from B's answer to A's stream event.

    :ivar delays: per phase (``alone``, ``loaded``), the delays seen, seconds.
    :ivar lost: orders B answered whose trade A's stream never showed.
    """

    def __init__(self, peer_api_port: int, stream_port: int, interval: float) -> None:
        self.peer = Api(peer_api_port)
        self.stream_port = stream_port
        self.interval = interval
        self.phase = "alone"
        self.delays: dict[str, list[float]] = {"alone": [], "loaded": []}
        self.lost = 0
        self.errors = 0
        self._answered: dict[str, tuple[str, float]] = {}
        self._seen: dict[str, float] = {}
        self._done: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream: http.client.HTTPConnection | None = None
        self._threads = [
            threading.Thread(target=self._listen, daemon=True),
            threading.Thread(target=self._place, daemon=True),
        ]

    def start(self) -> None:
        """Open A's stream (its first event read), then start placing orders."""
        self._stream = http.client.HTTPConnection("127.0.0.1", self.stream_port, timeout=60)
        self._stream.request("GET", "/stream?types=trade")
        response = self._stream.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET /stream on A: {response.status}")
        self._response = response
        for thread in self._threads:
            thread.start()

    def _listen(self) -> None:
        """Read A's stream until :meth:`stop` closes it (after the last trades came)."""
        event = ""
        while True:
            try:
                line = self._response.readline()
            except (OSError, ValueError, AttributeError, http.client.HTTPException):
                return  # closed by stop(), from the other thread
            if not line:
                return
            text = line.decode("utf-8").rstrip("\n")
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: ") and event == "trade":
                now = time.perf_counter()
                taker = json.loads(text[6:]).get("taker")
                with self._lock:
                    # The first trade of each taker: a trade is announced again
                    # once settled, and a rollback can give a taker a new maker.
                    if taker is not None and taker not in self._seen and taker not in self._done:
                        self._seen[taker] = now
                        self._match(taker)

    def _place(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                status, body = self.peer.request("POST", "/orders", PEER_SELL)
            except ApiError:
                status, body = 0, None
            answered = time.perf_counter()
            if status == 201:
                with self._lock:
                    self._answered[body["id"]] = (self.phase, answered)
                    self._match(body["id"])
            else:
                self.errors += 1
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - started)))

    def _match(self, order_id: str) -> None:
        """Record the delay of C{order_id} once both its answer and its trade are seen."""
        if order_id in self._answered and order_id in self._seen:
            phase, answered = self._answered.pop(order_id)
            self.delays[phase].append(max(0.0, self._seen.pop(order_id) - answered))
            self._done.add(order_id)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def stop(self, settle: float = 2.0) -> None:
        """Stop placing, give the last trades C{settle} s to show, then stop listening."""
        self._stop.set()
        self._threads[1].join()
        deadline = time.monotonic() + settle
        while self._answered and time.monotonic() < deadline:
            time.sleep(0.05)
        self.lost = len(self._answered)
        if self._stream is not None:
            self._stream.close()
        self.peer.close()


def open_idle(port: int, count: int) -> list[http.client.HTTPConnection]:
    """C{count} keep-alive connections, each after one answered request, left idle."""
    connections = []
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/status")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"an idle connection's request: {response.status}")
        connections.append(connection)
    return connections


def open_connections(port: int) -> float:
    """
    ``bitfi_api_connections`` of the node's ``/metrics`` (asked over a
    connection of its own, which it counts); NaN if absent.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode("utf-8")
    finally:
        connection.close()
    found = re.search(r"^bitfi_api_connections ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


def milliseconds(latencies: list[float], fraction: float) -> float:
    return percentile(latencies, fraction) * 1000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, help="seconds per phase [6; quick 1.5]")
    parser.add_argument(
        "--orders", type=int, default=1000, help="resting orders in the book [1000]"
    )
    parser.add_argument("--idle", type=int, default=200, help="idle keep-alive connections [200]")
    parser.add_argument("--flooders", type=int, default=20, help="flood client threads [20]")
    parser.add_argument("--probe-interval", type=float, default=0.005,
                        help="seconds between two probe requests [0.005]")  # fmt: skip
    parser.add_argument("--peer-interval", type=float, default=0.05,
                        help="seconds between two of the honest peer's orders [0.05]")  # fmt: skip
    parser.add_argument("--flood", metavar="SPEC", help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.flood is not None:
        flood_main(args.flood)
        return 0
    if args.duration is None:
        args.duration = 1.5 if args.quick else 6.0
    room = DEFAULT_API_MAX_CONNECTIONS - OWN_CONNECTIONS
    if (
        args.duration <= 0
        or args.orders < 1
        or args.idle < 0
        or args.flooders < 1
        or args.probe_interval < 0
        or args.peer_interval <= 0
        or args.idle + args.flooders > room
    ):
        parser.error(
            "--duration, --peer-interval above 0; --orders, --flooders at least 1; --idle, "
            f"--probe-interval at least 0; --idle + --flooders at most {room} (the node's "
            f"connection cap, {DEFAULT_API_MAX_CONNECTIONS}, less {OWN_CONNECTIONS} of the "
            "benchmark's own)"
        )
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        parser.error(f"needs two CPUs, one for the node and one for the clients; this has {cpus}")
    report = Results("bench_api_load", quick=args.quick)
    base = tempfile.mkdtemp(prefix="bitfi-api-load-")
    api_port, port, peer_api_port, peer_port = free_ports(4)
    node = NodeProcess(0, base, port, api_port, outbound=0)
    peer = NodeProcess(1, base, peer_port, peer_api_port, bootstrap=[port])
    rng = random.Random(1)
    with cleanup_on_interrupt():
        flood: subprocess.Popen[bytes] | None = None
        idle: list[http.client.HTTPConnection] = []
        probe_api = Api(api_port)
        peer_probe: PeerProbe | None = None
        try:
            node.start()
            peer.start()
            wait_api(node)
            wait_api(peer)
            place_book(node.api, args.orders, rng)
            wait_until(lambda: len(peer.api.get("/book")["bids"]) > 0, 60, "B holds A's book")
            pin(node.pid, {cpus[0]})
            pin(peer.pid, set(cpus[1:]))
            os.sched_setaffinity(0, set(cpus[1:]))  # the flood inherits it
            peer_probe = PeerProbe(peer_api_port, api_port, args.peer_interval)
            peer_probe.start()
            alone, alone_errors = probe(probe_api, args.duration, args.probe_interval)
            peer_probe.phase = "loaded"

            idle = open_idle(api_port, args.idle)
            start_at = time.time() + 0.5  # the flood process starts up meanwhile
            flood = start_flood(api_port, args.flooders, start_at, args.duration + 1.0)
            time.sleep(max(0.0, start_at + 0.5 - time.time()))  # the flood under way
            cpu_before = node.cpu_seconds()
            loaded, loaded_errors = probe(probe_api, args.duration, args.probe_interval)
            busy = (node.cpu_seconds() - cpu_before) / args.duration
            counted = open_connections(api_port)
            peer_probe.stop()
            out, _ = flood.communicate(timeout=args.duration + 120)
            if flood.returncode != 0:
                raise RuntimeError(f"the flood process exited with status {flood.returncode}")
            totals = json.loads(out)
            problems = node.log_problems() + peer.log_problems()
        finally:
            if peer_probe is not None and not peer_probe.stopped:
                peer_probe.stop(settle=0)
            for connection in idle:
                connection.close()
            probe_api.close()
            if flood is not None and flood.poll() is None:
                flood.kill()
                flood.wait()
            node.stop()
            peer.stop()
    answered: dict[str, int] = totals["answered"]
    assert peer_probe is not None
    peer_alone, peer_loaded = peer_probe.delays["alone"], peer_probe.delays["loaded"]
    flood_ok = sum(n for key, n in answered.items() if key.endswith((" 200", " 201")))
    flood_errors = {**{k: n for k, n in answered.items() if not k.endswith((" 200", " 201"))},
                    **totals["failures"]}  # fmt: skip
    flood_seconds = args.duration + 1.0
    p99_loaded = milliseconds(loaded, 0.99)
    met = p99_loaded <= P99_TARGET_MS
    errors = (
        alone_errors + loaded_errors + sum(flood_errors.values())
        + peer_probe.errors + peer_probe.lost
    )  # fmt: skip
    print_table(f"the HTTP API under load ({'quick; ' if args.quick else ''}{machine_info()})", [
        ("node threads pinned to CPU; probe and flood", f"CPU {cpus[0]}; CPUs {cpus[1:]}"),
        ("resting orders in the book at start", f"{args.orders:,}"),
        ("probe GET /book alone: answers", f"{len(alone):,}"),
        ("probe GET /book alone: p50 / p99 (ms)",
         f"{milliseconds(alone, 0.5):.2f} / {milliseconds(alone, 0.99):.2f}"),
        ("load: idle keep-alive connections; flooders", f"{args.idle}; {args.flooders}"),
        ("probe GET /book under load: answers", f"{len(loaded):,}"),
        ("probe GET /book under load: p50 / p99 (ms)",
         f"{milliseconds(loaded, 0.5):.2f} / {p99_loaded:.2f}"),
        ("peer's order, B to a trade on A, alone: orders; p50 / p99 (ms)",
         f"{len(peer_alone)}; {milliseconds(peer_alone, 0.5):.1f} / "
         f"{milliseconds(peer_alone, 0.99):.1f}"),
        ("peer's order, B to a trade on A, under load: orders; p50 / p99 (ms)",
         f"{len(peer_loaded)}; {milliseconds(peer_loaded, 0.5):.1f} / "
         f"{milliseconds(peer_loaded, 0.99):.1f}"),
        ("peer's orders: errors on B; trades never seen on A",
         f"{peer_probe.errors}; {peer_probe.lost}"),
        ("flood: answers; per second", f"{flood_ok:,}; {flood_ok / flood_seconds:,.0f}"),
        ("flood: GET /book; POST /orders answered",
         f"{answered.get('GET /book 200', 0):,}; {answered.get('POST /orders 201', 0):,}"),
        ("node CPU busy under load", f"{busy:.0%}"),
        ("node's open API connections under load", f"{counted:.0f}"),
        ("errors: probe; flood", f"{alone_errors + loaded_errors}; "
         + (", ".join(f"{k}: {v}" for k, v in flood_errors.items()) or "0")),
        ("node log: warnings and errors", str(len(problems))),
    ])  # fmt: skip
    for line in problems[:5]:
        print(f"  {line[:200]}")
    print_table("targets", [(f"probe p99 under load <= {P99_TARGET_MS:g} ms",
                             f"{p99_loaded:.2f} ms: {'met' if met else 'MISSED'}")])  # fmt: skip
    report.add("GET /book alone, p50", round(milliseconds(alone, 0.5), 2), "ms")
    report.add("GET /book alone, p99", round(milliseconds(alone, 0.99), 2), "ms")
    report.add("GET /book under load, p50", round(milliseconds(loaded, 0.5), 2), "ms")
    report.add("GET /book under load, p99", round(p99_loaded, 2), "ms",
               f"<= {P99_TARGET_MS:g} ms", met)  # fmt: skip
    report.add("peer's order to a trade on A, alone, p99",
               round(milliseconds(peer_alone, 0.99), 1), "ms")  # fmt: skip
    report.add("peer's order to a trade on A, under load, p99",
               round(milliseconds(peer_loaded, 0.99), 1), "ms")  # fmt: skip
    report.add("flood answers per second", round(flood_ok / flood_seconds), "requests/s")
    report.add("node CPU busy under load", round(busy * 100), "%")
    report.add("open API connections under load", counted, "connections")
    report.add("errors", errors, "requests", "0", errors == 0)
    report.write(args.json)
    if not problems:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if not alone or not loaded or not peer_alone or not peer_loaded or errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
