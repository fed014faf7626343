"""Benchmark: how fast a node process starts, stops on SIGTERM and gives up a busy port.

Real node processes on 127.0.0.1, with fresh data directories (a node
starting on a long history is ``bench_join.py``'s).  Per run:

- three nodes chained by ``--bootstrap`` (1 <- 2 <- 3): the time from each
  process start until ``GET /status`` answers; once all three are linked,
  SIGTERM to all three at once and the time until each has exited, and
  whether every exit was clean (0, or killed by the SIGTERM twistd
  re-raises once its reactor stopped).  Target: every node exits within
  5 s;
- two linked nodes, A and B, with 300 orders placed on A; then B is
  frozen (SIGSTOP: it reads nothing, a blackholed link) and a client opens
  a TCP connection to A's P2P port and never says a word (its TLS
  handshake never completes).  The time from SIGTERM to A's exit, target
  <= 5 s; and whether A, started again, resumed from the checkpoint it
  wrote at the stop instead of replaying its journal;
- a node told to listen on a P2P port already in use: the time from its
  start until it exits with a non-zero status.  Target <= 10 s.

``tests/integration/test_processes.py`` checks the same behaviour (clean
stop on SIGTERM, non-zero exit on a busy port) with hang guards only.

Run ``python benchmarks/bench_lifecycle.py [--runs R] [--quick] [--json
PATH]`` (``--quick``: 1 run; default 3).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time

from _cluster import (
    NodeProcess,
    cleanup_on_interrupt,
    machine_info,
    print_table,
    report_problems,
    wait_api,
    wait_until,
)
from _results import Results, add_arguments

from bitfitech.testing import free_ports

#: exit statuses of a node that stopped cleanly on SIGTERM (see test_processes)
CLEAN_STATUSES = (0, -signal.SIGTERM)
#: how long any one step may take before the run is given up (a hang guard)
GIVE_UP_S = 60.0
STOP_TARGET_S = 5.0
#: batches of 100 orders placed before the stuck-peer stop
STUCK_BATCHES = 3
BUSY_TARGET_S = 10.0


def three_nodes(base: str, first_index: int) -> tuple[list[float], list[float], bool, list[str]]:
    """
    Start three chained nodes, wait until they are linked, SIGTERM them all.

    :return: seconds from start to ``/status`` and from SIGTERM to exit per
        node, whether every exit was clean, and the nodes' logged problems.
    """
    nodes: list[NodeProcess] = []
    try:
        ports = free_ports(6)
        started_s = []
        for i in range(3):
            bootstrap = [nodes[-1].port] if nodes else []
            node = NodeProcess(first_index + i, base, ports[2 * i], ports[2 * i + 1],
                               bootstrap=bootstrap)  # fmt: skip
            nodes.append(node)
            node.start()
            wait_api(node, timeout=GIVE_UP_S, interval=0.005)
            started_s.append(time.monotonic() - node.started_at)
        ids = {node.node_id for node in nodes}

        def linked() -> bool:
            return all(
                ids - {node.node_id} <= {row["node_id"] for row in node.api.get("/peers")}
                for node in nodes
            )

        wait_until(linked, GIVE_UP_S, "three nodes linked", interval=0.02)
        for node in nodes:
            node.api.close()
        stopping = time.monotonic()
        for node in nodes:
            node.terminate()
        stopped_s, statuses = [], []
        for node in nodes:
            assert node.process is not None
            statuses.append(node.process.wait(GIVE_UP_S))
            stopped_s.append(time.monotonic() - stopping)
        clean = all(status in CLEAN_STATUSES for status in statuses)
        problems = [line for node in nodes for line in node.log_problems()]
        return started_s, stopped_s, clean, problems
    finally:
        for node in nodes:
            node.stop()


def stuck_peers(base: str, first_index: int) -> tuple[float, bool, bool, list[str]]:
    """
    SIGTERM a node whose peers are stuck (one frozen, one silent), then start it again.

    :return: seconds from SIGTERM to exit, whether the exit was clean,
        whether the restart resumed from the checkpoint (every event), and
        the node's logged problems.
    """
    ports = free_ports(4)
    a = NodeProcess(first_index, base, ports[0], ports[1])
    b = NodeProcess(first_index + 1, base, ports[2], ports[3], bootstrap=[a.port])
    silent: socket.socket | None = None
    try:
        for node in (a, b):
            node.start()
            wait_api(node, timeout=GIVE_UP_S, interval=0.005)
        wait_until(lambda: bool(a.api.get("/peers")), GIVE_UP_S, "A and B linked", interval=0.02)
        order = {"side": "buy", "price": "100", "amount": "1"}
        for _ in range(STUCK_BATCHES):
            status, body = a.api.request("POST", "/orders/batch", {"orders": [order] * 100})
            if status != 201:
                raise RuntimeError(f"POST /orders/batch: {status} {body}")
        assert b.process is not None and a.process is not None
        b.process.send_signal(signal.SIGSTOP)
        silent = socket.create_connection(("127.0.0.1", a.port))
        a.api.close()
        stopping = time.monotonic()
        a.terminate()
        status = a.process.wait(GIVE_UP_S)
        took = time.monotonic() - stopping
        problems = a.log_problems()
        a.start()
        market = wait_api(a, timeout=GIVE_UP_S, interval=0.005)["market"]
        events = STUCK_BATCHES * 100
        resumed = market["loaded_events"] == events and market["resumed_at"] == events
        return took, status in CLEAN_STATUSES, resumed, problems
    finally:
        if silent is not None:
            silent.close()
        if b.process is not None and b.process.poll() is None:
            b.process.send_signal(signal.SIGCONT)
        for node in (a, b):
            node.stop()


def busy_port(base: str, index: int) -> tuple[float, bool]:
    """
    Start a node on a P2P port another socket holds.

    :return: seconds from its start until it exited, and whether its status
        was non-zero.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        (api_port,) = free_ports(1)
        node = NodeProcess(index, base, int(holder.getsockname()[1]), api_port)
        try:
            node.start()
            assert node.process is not None
            status = node.process.wait(GIVE_UP_S)
            return time.monotonic() - node.started_at, status != 0
        finally:
            node.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="runs [3; quick 1]")
    add_arguments(parser)
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    started: list[float] = []
    stopped: list[float] = []
    busy: list[float] = []
    stuck: list[float] = []
    clean = refused = stuck_clean = resumed = True
    problems: dict[int, list[str]] = {}
    with cleanup_on_interrupt():
        base = tempfile.mkdtemp(prefix="bitfi-lifecycle-")
        try:
            for run in range(runs):
                up, down, run_clean, run_problems = three_nodes(base, 6 * run)
                started += up
                stopped += down
                clean = clean and run_clean
                if run_problems:
                    problems[run] = run_problems
                took, stuck_exit_clean, run_resumed, run_problems = stuck_peers(base, 6 * run + 3)
                stuck.append(took)
                stuck_clean = stuck_clean and stuck_exit_clean
                resumed = resumed and run_resumed
                if run_problems:
                    problems.setdefault(run, []).extend(run_problems)
                took, nonzero = busy_port(base, 6 * run + 5)
                busy.append(took)
                refused = refused and nonzero
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(base)
    stop_met = max(stopped) <= STOP_TARGET_S
    stuck_met = max(stuck) <= STOP_TARGET_S
    busy_met = max(busy) <= BUSY_TARGET_S
    print_table(f"lifecycle ({'quick; ' if args.quick else ''}{machine_info()})", [
        ("runs (3 linked nodes, 2 with stuck peers, 1 busy port each)", f"{runs}"),
        ("start to /status, median (s)", f"{statistics.median(started):.2f}"),
        ("start to /status, max (s)", f"{max(started):.2f}"),
        ("SIGTERM to exit, median (s)", f"{statistics.median(stopped):.2f}"),
        ("SIGTERM to exit, max (s)", f"{max(stopped):.2f}"),
        ("every exit after SIGTERM clean", "yes" if clean else "NO"),
        ("stuck peers: SIGTERM to exit, max (s)", f"{max(stuck):.2f}"),
        ("stuck peers: exit clean", "yes" if stuck_clean else "NO"),
        ("stuck peers: restart resumed from the checkpoint", "yes" if resumed else "NO"),
        ("busy P2P port: start to exit, max (s)", f"{max(busy):.2f}"),
        ("busy P2P port: exit status non-zero", "yes" if refused else "NO"),
    ])  # fmt: skip
    print_table("targets", [
        (f"SIGTERM to exit <= {STOP_TARGET_S:g} s",
         f"{max(stopped):.2f} s: {'met' if stop_met else 'MISSED'}"),
        (f"stuck peers: SIGTERM to exit <= {STOP_TARGET_S:g} s",
         f"{max(stuck):.2f} s: {'met' if stuck_met else 'MISSED'}"),
        (f"busy port: start to exit <= {BUSY_TARGET_S:g} s",
         f"{max(busy):.2f} s: {'met' if busy_met else 'MISSED'}"),
    ])  # fmt: skip
    report_problems(problems)
    report = Results("bench_lifecycle", quick=args.quick)
    report.add("fresh node: start to /status, median", round(statistics.median(started), 2), "s")
    report.add("SIGTERM to exit, median", round(statistics.median(stopped), 2), "s")
    report.add("SIGTERM to exit, max", round(max(stopped), 2), "s",
               f"<= {STOP_TARGET_S:g} s", stop_met)  # fmt: skip
    report.add("clean exit on SIGTERM", "yes" if clean else "no", "", "yes", clean)
    report.add("stuck peers: SIGTERM to exit, max", round(max(stuck), 2), "s",
               f"<= {STOP_TARGET_S:g} s", stuck_met and stuck_clean)  # fmt: skip
    report.add("stuck peers: restart resumed from the checkpoint", "yes" if resumed else "no",
               "", "yes", resumed)  # fmt: skip
    report.add("busy port, start to non-zero exit, max", round(max(busy), 2), "s",
               f"<= {BUSY_TARGET_S:g} s", busy_met and refused)  # fmt: skip
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
