"""Benchmark: faults on real node processes linked only through loopback proxies.

The longer run of ``tests/integration/test_faults.py``, through the same
harness (:class:`bitfitech.faultinjection.FaultCluster`).  Data path: three
``twistd bitfi`` processes on 127.0.0.1 (:class:`_cluster.NodeProcess`),
each one of the network's three witnesses, dialling nobody but the
witnesses (``--outbound 0``), each at the port of a TCP proxy in this
process (:class:`bitfitech.faultinjection.LoopbackProxy`) -> a load places buys
and sells (some cross) and cancels through the nodes' HTTP APIs -> faults
chosen by ``random.Random(seed)``: SIGKILL and restart on the same data
directory and ports; SIGTERM and restart, also while a node is
partitioned; a partition of one node from the others (``refuse``: its
connections reset; ``blackhole``: accepted and never answered) and its
heal -> after the last heal and restart, the run waits until every node
holds the same state and checks the invariants.

Per run, and over all runs:

- orders and cancels acknowledged (2xx), faults injected by kind;
- lost: acknowledged orders missing on a node, or whose status differs
  between nodes (target 0);
- stranded: acknowledged orders that every node holds and none has
  placed, still waiting for a fair time when the run ends (target 0);
- undone cancels: acknowledged cancels whose order is open again (target 0);
- other problems: an unclean exit, a link around the proxies, an error or
  traceback in a node's log (target 0);
- time to converge: from the last heal or restart until every node holds
  the same state (p50 and max over runs; a run that never converges, within
  its hang guard, counts as missing the target);
- clean stop: SIGTERM to exit, max over every SIGTERM (target <= 5 s, as
  ``bench_lifecycle.py``'s; a node still running after the stop guard is
  killed and counted at the guard).

Run ``python benchmarks/bench_faults.py [--runs R] [--faults N] [--seed S]
[--modes refuse,blackhole] [--quick] [--json PATH]`` (default 1 run of 12
faults, both partition modes; ``--quick``: 3 faults, refuse only).  The
exit status is 1 when an acknowledged order was lost or a cancel undone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from _cluster import NodeProcess, machine_info, print_table
from _results import Results, add_arguments
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react

from bitfitech.faultinjection import (
    FAULT_KINDS,
    PARTITION_MODES,
    FaultCluster,
    FaultReport,
    NodeApi,
    NodeSlot,
    OrderLoad,
    plan_faults,
    wait_until,
)
from bitfitech.testing import HANG_GUARD

#: SIGTERM to exit, the target (``bench_lifecycle.py``'s)
STOP_TARGET_S = 5.0
#: how often a node process is polled for its exit
EXIT_POLL_S = 0.01


class BenchNode:
    """
    One :class:`_cluster.NodeProcess` as :class:`~bitfitech.faultinjection.FaultCluster`
    drives it: started when made; its exit is polled (it is not a child
    the reactor spawned).

    :ivar name: ``A``, then ``A#2`` for its second process...
    """

    def __init__(
        self, reactor: Any, api: NodeApi, slot: NodeSlot, life_dir: str, name: str,
        stop_guard: float,
    ) -> None:  # fmt: skip
        """
        :param life_dir: a directory of this process's own (its log files).
        :param stop_guard: seconds a SIGTERMed process may take to exit.
        """
        self.reactor = reactor
        self.api = api
        self.slot = slot
        self.name = name
        self.stop_guard = stop_guard
        self.process = NodeProcess(slot.index, life_dir, slot.port, slot.api_port, outbound=0,
                                   data_dir=slot.data_dir, log_level="info",
                                   witnesses=slot.witnesses)  # fmt: skip
        self.process.start()

    @property
    def running(self) -> bool:
        """Whether the process runs."""
        return self.process.exited() is None

    @property
    def output(self) -> str:
        """Its log files and its stdout and stderr."""
        parts = [self.process.stderr_text()]
        for path in sorted(os.listdir(self.process.dir)):
            if path.startswith("node.log"):
                with (
                    contextlib.suppress(OSError),
                    open(os.path.join(self.process.dir, path), errors="replace") as log,
                ):
                    parts.append(log.read())
        return "\n".join(parts)

    async def _exit_status(self, within: float | None) -> int:
        started = self.reactor.seconds()
        while (status := self.process.exited()) is None:
            if within is not None and self.reactor.seconds() - started > within:
                raise TimeoutError(f"{self.name} still running {within:g} s after SIGTERM")
            await deferLater(self.reactor, EXIT_POLL_S, lambda: None)
        return status

    def kill(self) -> Deferred[int]:
        """SIGKILL; fires with the exit status (minus the signal)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
        return Deferred.fromCoroutine(self._exit_status(None))

    def terminate(self) -> Deferred[int]:
        """SIGTERM; fires with the exit status, or fails after the stop guard."""
        self.process.terminate()
        return Deferred.fromCoroutine(self._exit_status(self.stop_guard))

    async def wait_for_api(self) -> dict[str, Any]:
        """Poll ``GET /status`` until it answers; fail if the process ends first."""
        answer: dict[str, Any] = {}

        async def answers() -> bool:
            if not self.running:
                raise RuntimeError(f"{self.name} exited:\n{self.output[-2000:]}")
            answer.update(await self.api.get_json(self.slot.api_port, "/status"))
            return True

        await wait_until(self.reactor, answers, HANG_GUARD, f"{self.name}'s API answering",
                         interval=0.05)  # fmt: skip
        return answer


async def one_run(
    reactor: Any, seed: int, faults: int, modes: Sequence[str], hold: tuple[float, float],
    lead: tuple[float, float], interval: float, stop_guard: float, keep: bool = False,
) -> FaultReport:  # fmt: skip
    """
    One cluster, one plan of C{faults} faults from C{seed}; its report.

    :param keep: keep the data directories and logs (their path is printed).
    """
    base = tempfile.mkdtemp(prefix="bitfi-faults-")
    lives: dict[str, int] = {}
    cluster: FaultCluster | None = None

    def spawn(slot: NodeSlot) -> BenchNode:
        assert cluster is not None
        lives[slot.name] = lives.get(slot.name, 0) + 1
        count = lives[slot.name]
        name = slot.name if count == 1 else f"{slot.name}#{count}"
        life_dir = os.path.join(base, "logs", f"{slot.name}-{count}")
        return BenchNode(reactor, cluster.api, slot, life_dir, name, stop_guard)

    def say(line: str) -> None:
        print(f"  [seed {seed}] {line}", flush=True)

    cluster = FaultCluster(reactor, os.path.join(base, "data"), spawn, seed=seed, say=say)
    try:
        plan = plan_faults(random.Random(seed), cluster.size, faults, modes=modes, hold=hold,
                           lead=lead)  # fmt: skip
        await cluster.start()
        ports = [slot.api_port for slot in cluster.slots]
        load = OrderLoad(reactor, cluster.api, ports, random.Random(f"{seed}-load"),
                         interval=interval)  # fmt: skip
        await cluster.run(plan, load)
        await cluster.wait_converged(2 * HANG_GUARD)
        return await cluster.check()
    finally:
        await cluster.close()
        if keep:
            print(f"  [seed {seed}] data directories and logs kept in {base}", flush=True)
        else:
            shutil.rmtree(base, ignore_errors=True)


def parse_range(text: str) -> tuple[float, float]:
    """``LOW,HIGH`` seconds (0 <= LOW <= HIGH)."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be LOW,HIGH seconds, not {text!r}") from None
    if not 0 <= low <= high < 600:
        raise argparse.ArgumentTypeError(f"must be 0 <= LOW <= HIGH < 600, not {text!r}")
    return low, high


def parse_modes(text: str) -> tuple[str, ...]:
    """Comma-separated partition modes."""
    modes = tuple(part.strip() for part in text.split(",") if part.strip())
    if not modes or any(mode not in PARTITION_MODES for mode in modes):
        raise argparse.ArgumentTypeError(
            f"must be some of {', '.join(PARTITION_MODES)}, not {text!r}"
        )
    return modes


def seconds_text(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="runs, each with its own seed [1]")
    parser.add_argument("--faults", type=int, help="faults per run [12; quick 3]")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first run [1]")
    parser.add_argument(
        "--modes",
        type=parse_modes,
        help="partition modes to draw from [refuse,blackhole; quick refuse]",
    )
    parser.add_argument(
        "--hold",
        type=parse_range,
        help="seconds a node stays down or cut off, LOW,HIGH [0.5,4; quick 0.5,1]",
    )
    parser.add_argument(
        "--lead",
        type=parse_range,
        help="seconds of load before each fault, LOW,HIGH [1,3; quick 0.5,1]",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.02,
        help="seconds between one answer and the next request [0.02]",
    )
    parser.add_argument("--stop-guard", type=float, default=HANG_GUARD,
                        help=f"seconds a SIGTERMed node may take before it is killed "
                             f"[{HANG_GUARD:g}]")  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help="keep each run's data directories and node logs"
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else 1
    faults = args.faults if args.faults is not None else (3 if args.quick else 12)
    if runs < 1 or faults < 1 or args.interval <= 0 or args.stop_guard <= 0:
        parser.error("--runs and --faults at least 1; --interval and --stop-guard above 0")
    modes = args.modes or (("refuse",) if args.quick else PARTITION_MODES)
    hold = args.hold or ((0.5, 1.0) if args.quick else (0.5, 4.0))
    lead = args.lead or ((0.5, 1.0) if args.quick else (1.0, 3.0))
    reports = []
    for run in range(runs):
        seed = args.seed + run
        print(f"run {run + 1} of {runs}, seed {seed}: {faults} faults", flush=True)
        reports.append(await one_run(reactor, seed, faults, modes, hold, lead, args.interval,
                                     args.stop_guard, args.keep))  # fmt: skip
    for report in reports:
        if report.problems:
            print(report.failure_message(), file=sys.stderr)
    figures(args, reports, faults, modes)
    if any(report.lost or report.undone for report in reports):
        raise SystemExit(1)


def figures(
    args: argparse.Namespace, reports: list[FaultReport], faults: int, modes: Sequence[str]
) -> None:
    """Print the table and write the results document."""
    kinds = {kind: sum(r.faults.get(kind, 0) for r in reports) for kind in FAULT_KINDS}
    converge = [r.converge_s for r in reports if r.converge_s is not None]
    never = sum(1 for r in reports if r.converge_s is None)
    stops = [s for r in reports for s in r.stop_s]
    stop_max = max(stops, default=float("nan"))
    lost = sum(len(r.lost) for r in reports)
    stranded = sum(len(r.stranded) for r in reports)
    undone = sum(len(r.undone) for r in reports)
    unjournaled = sum(len(r.unjournaled) for r in reports)
    other = sum(
        len(r.problems) - len(r.lost) - len(r.stranded) - len(r.undone) - len(r.unjournaled)
        for r in reports
    )
    orders = sum(r.acked_orders for r in reports)
    cancels = sum(r.acked_cancels for r in reports)
    attempts = sum(r.attempts for r in reports)
    converge_p50 = statistics.median(converge) if converge else None
    converge_max = max(converge) if converge and not never else None
    seeds = ", ".join(str(r.seed) for r in reports)
    print_table(f"faults ({'quick; ' if args.quick else ''}{machine_info()})", [
        ("runs (seeds)", f"{len(reports)} ({seeds})"),
        ("faults per run / partition modes", f"{faults} / {','.join(modes)}"),
        *((f"faults: {kind}", str(count)) for kind, count in kinds.items()),
        ("orders / cancels acknowledged", f"{orders:,} / {cancels:,}"),
        ("requests not acknowledged", f"{attempts - orders - cancels:,}"),
        ("lost acknowledged orders", str(lost)),
        ("  of which missing where acknowledged", str(unjournaled)),
        ("stranded acknowledged orders (never placed)", str(stranded)),
        ("undone cancels", str(undone)),
        ("other problems", str(other)),
        ("runs that never converged", str(never)),
        ("converge after last heal, p50 (s)", seconds_text(converge_p50)),
        ("converge after last heal, max (s)", seconds_text(converge_max)),
        ("SIGTERMs / clean stop, max (s)", f"{len(stops)} / {stop_max:.2f}"),
    ])  # fmt: skip
    if never:
        print(f"{never} run(s) never converged: their lost and undone counts are of a network "
              "still split, not only of orders that will never arrive\n")  # fmt: skip
    stop_met = bool(stops) and stop_max <= STOP_TARGET_S
    print_table("targets", [
        ("lost = 0", "met" if lost == 0 else "MISSED"),
        ("stranded = 0", "met" if stranded == 0 else "MISSED"),
        ("undone cancels = 0", "met" if undone == 0 else "MISSED"),
        ("other problems = 0", "met" if other == 0 else "MISSED"),
        ("every run converged", "met" if not never else "MISSED"),
        (f"clean stop max <= {STOP_TARGET_S:g} s",
         ("met" if stop_met else "MISSED") if stops else "no SIGTERM in the plan"),
    ])  # fmt: skip
    report = Results("bench_faults", quick=args.quick)
    report.add("runs", len(reports), "runs")
    report.add("orders acknowledged", orders, "orders")
    report.add("cancels acknowledged", cancels, "cancels")
    for kind, count in kinds.items():
        report.add(f"faults injected: {kind}", count, "faults")
    report.add("lost acknowledged orders", lost, "orders", "0", lost == 0)
    report.add("lost: missing on the node that acknowledged them", unjournaled, "orders", "0",
               unjournaled == 0)  # fmt: skip
    report.add("stranded acknowledged orders", stranded, "orders", "0", stranded == 0)
    report.add("undone cancels", undone, "cancels", "0", undone == 0)
    report.add("other problems", other, "problems", "0", other == 0)
    report.add("converge after last heal, p50",
               round(converge_p50, 2) if converge_p50 is not None else "never", "s")  # fmt: skip
    report.add("converge after last heal, max",
               round(converge_max, 2) if converge_max is not None else "never", "s",
               "every run converges", not never)  # fmt: skip
    if stops:
        report.add("clean stop (SIGTERM to exit), max", round(stop_max, 2), "s",
                   f"<= {STOP_TARGET_S:g} s", stop_met)  # fmt: skip
    else:
        report.add("clean stop (SIGTERM to exit), max", "no SIGTERM in the plan", "")
    report.write(args.json)


def _run(reactor: Any) -> Deferred[None]:
    return Deferred.fromCoroutine(main(reactor, sys.argv[1:]))


if __name__ == "__main__":
    react(_run)
