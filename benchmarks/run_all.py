"""Run every ``benchmarks/bench_*.py`` and report all their figures in one table.

The runner sits on top of the benchmarks' results protocol
(``benchmarks/_results.py``): each ``bench_*.py`` found next to this file
runs in its own subprocess as ``python bench_x.py --json
RESULTS/bench_x.json [--quick]``, its stdout and stderr going to
``RESULTS/bench_x.log``.  A benchmark that exits with an error, times out
or writes no valid document is reported as failed and the others still
run; the exit status is then 1.

At the end it prints one table (figure, value, target, met; the machine
once in the header), writes ``RESULTS/summary.json`` and draws PNG plots
from the series the benchmarks wrote, when matplotlib is installed (the
``bench`` extra): the propagation latency CDF, copies against links, DHT
lookup rounds against network size and sync time against history size.
A plot whose series no benchmark wrote is skipped with a note.

Run ``python benchmarks/run_all.py [--quick] [--only NAME ...] [--results
DIR] [--no-plots]``; ``make bench`` and ``make bench QUICK=1`` do.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _cluster import child_environment, machine_info
from _results import now_iso, problems

#: the directory holding the benchmarks
BENCHMARKS = Path(__file__).resolve().parent

#: where results go unless ``--results`` says otherwise (git-ignored)
DEFAULT_RESULTS = BENCHMARKS / "results"


@dataclass
class Outcome:
    """
    How one benchmark run went.

    :ivar error: why it failed, or ``""`` when it did not.
    :ivar document: its results document (``None`` when it failed).
    """

    benchmark: str
    seconds: float
    returncode: int | None
    log: Path
    results: Path
    error: str = ""
    document: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """Everything but the document, for ``summary.json``."""
        return {
            "benchmark": self.benchmark,
            "status": "failed" if self.error else "ok",
            "returncode": self.returncode,
            "seconds": round(self.seconds, 2),
            "results": str(self.results),
            "log": str(self.log),
            "error": self.error or None,
        }


@dataclass(frozen=True)
class Plot:
    """
    One PNG drawn from a series, whichever benchmark wrote it.

    :ivar series: the series drawn, by name; the first is required.
    """

    name: str
    title: str
    series: tuple[str, ...]
    log_x: bool = False
    step: bool = False


PLOTS = (
    Plot(
        "propagation_cdf",
        "Propagation latency CDF",
        ("propagation_latency", "propagation_latency_last"),
        step=True,
    ),
    Plot("duplicates_vs_links", "Copies received per node per event", ("duplicates_vs_links",)),
    Plot("dht_rounds", "DHT lookup rounds vs network size", ("dht_rounds",), log_x=True),
    Plot("sync_time", "Fresh node sync time vs history size", ("sync_time",)),
)


def discover(directory: Path, only: list[str]) -> list[Path]:
    """The ``bench_*.py`` scripts in C{directory}, by name; only those named in C{only} if any."""
    scripts = sorted(directory.glob("bench_*.py"))
    if not only:
        return scripts
    wanted = {Path(name).stem for name in only}
    wanted = {name if name.startswith("bench_") else f"bench_{name}" for name in wanted}
    unknown = wanted - {script.stem for script in scripts}
    if unknown:
        raise SystemExit(f"no benchmark named {', '.join(sorted(unknown))}")
    return [script for script in scripts if script.stem in wanted]


def tail(path: Path, lines: int = 5) -> str:
    """The last C{lines} lines of a log file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_one(script: Path, results_dir: Path, quick: bool, timeout: float) -> Outcome:
    """Run one benchmark in a subprocess and read back its document."""
    name = script.stem
    results = results_dir / f"{name}.json"
    log = results_dir / f"{name}.log"
    results.unlink(missing_ok=True)
    command = [sys.executable, str(script), "--json", str(results)]
    if quick:
        command.append("--quick")
    started = time.monotonic()
    returncode: int | None = None
    error = ""
    with log.open("wb") as out:
        try:
            returncode = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_environment(),
                cwd=BENCHMARKS.parent,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s"
    outcome = Outcome(name, time.monotonic() - started, returncode, log, results)
    if not error and returncode != 0:
        error = f"exit status {returncode}"
    if not error:
        try:
            document = json.loads(results.read_text())
        except (OSError, ValueError) as e:
            error = f"no results document: {e}"
        else:
            found = problems(document)
            if found:
                error = "results document: " + "; ".join(found[:3])
            else:
                outcome.document = document
    if error:
        last = tail(log)
        outcome.error = error + (f"; log ends:\n{last}" if last else "")
    return outcome


def format_value(value: Any, unit: str) -> str:
    """A figure's value for the table, with its unit."""
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def format_met(met: Any) -> str:
    """``yes``, ``NO`` or nothing (no target)."""
    return {True: "yes", False: "NO"}.get(met, "") if isinstance(met, bool) else ""


def figure_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Every figure of every benchmark that ran, tagged with the benchmark."""
    rows = []
    for outcome in outcomes:
        if outcome.document is not None:
            for figure in outcome.document["figures"]:
                rows.append({"benchmark": outcome.benchmark, **figure})
    return rows


def print_summary(
    outcomes: list[Outcome], rows: list[dict[str, Any]], machine: str, quick: bool, seconds: float
) -> None:
    """The one table: every figure, its target and whether it is met."""
    table = [("figure", "value", "target", "met")]
    for outcome in outcomes:
        mine = [row for row in rows if row["benchmark"] == outcome.benchmark]
        if outcome.error:
            table.append((f"{outcome.benchmark}: FAILED", outcome.error.splitlines()[0], "", ""))
            continue
        for row in mine:
            table.append(
                (
                    f"{outcome.benchmark.removeprefix('bench_')}: {row['figure']}",
                    format_value(row["value"], row["unit"]),
                    row["target"] or "",
                    format_met(row["met"]),
                )
            )
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    print()
    print(f"benchmarks{' (quick)' if quick else ''}: {machine}")
    print(f"{len(outcomes)} benchmark(s) in {seconds:.1f} s")
    print()
    for i, line in enumerate(table):
        print(
            f"{line[0]:<{widths[0]}}  {line[1]:>{widths[1]}}  "
            f"{line[2]:<{widths[2]}}  {line[3]}".rstrip()
        )
        if i == 0:
            print("  ".join("-" * width for width in widths))
    with_target = [row for row in rows if row["met"] is not None]
    met = sum(row["met"] is True for row in with_target)
    print()
    print(f"targets: {met} of {len(with_target)} met")
    failed = [outcome for outcome in outcomes if outcome.error]
    for outcome in failed:
        print(f"FAILED {outcome.benchmark}: {outcome.error}")
        print(f"  (log: {outcome.log})")


def find_series(outcomes: list[Outcome], name: str) -> dict[str, Any] | None:
    """The series C{name} from the first benchmark that wrote it."""
    for outcome in outcomes:
        if outcome.document is not None and name in outcome.document["series"]:
            found: dict[str, Any] = outcome.document["series"][name]
            return found
    return None


def draw_plots(outcomes: list[Outcome], results_dir: Path) -> list[dict[str, Any]]:
    """Draw the PNG plots whose series are there; a note for each one skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        note = "matplotlib is not installed (pip install -e '.[bench]'; make bench does)"
        return [{"plot": plot.name, "path": None, "note": note} for plot in PLOTS]
    drawn: list[dict[str, Any]] = []
    for plot in PLOTS:
        found = [(name, find_series(outcomes, name)) for name in plot.series]
        present = [(name, series) for name, series in found if series is not None]
        if not present or present[0][0] != plot.series[0]:
            note = f"skipped: no benchmark wrote the series {plot.series[0]!r}"
            drawn.append({"plot": plot.name, "path": None, "note": note})
            continue
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for name, series in present:
            if plot.step:
                axes.step(series["x"], series["y"], where="post", label=name)
            else:
                axes.plot(series["x"], series["y"], marker="o", label=name)
        first = present[0][1]
        axes.set_xlabel(str(first["x_label"]))
        axes.set_ylabel(str(first["y_label"]))
        axes.set_title(plot.title)
        if plot.log_x:
            axes.set_xscale("log")
        axes.grid(True, alpha=0.3)
        if len(present) > 1:
            axes.legend()
        path = results_dir / f"{plot.name}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        drawn.append({"plot": plot.name, "path": str(path), "note": ""})
    return drawn


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run every benchmark's --quick")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME",
        help="run only this benchmark (bench_crypto or crypto; repeatable, comma-separated)",
    )  # fmt: skip
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        help=f"results directory [{DEFAULT_RESULTS}]",
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds per benchmark before it is stopped [quick 120; 3600]"
    )
    parser.add_argument("--no-plots", action="store_true", help="draw no PNG plots")
    parser.add_argument(
        "--benchmarks",
        type=Path,
        default=BENCHMARKS,
        help="where the bench_*.py are [this directory]",
    )
    args = parser.parse_args(argv)
    only = [name.strip() for part in args.only for name in part.split(",") if name.strip()]
    timeout = args.timeout or (120.0 if args.quick else 3600.0)
    results_dir: Path = args.results.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    started_at = now_iso()
    started = time.monotonic()
    outcomes: list[Outcome] = []
    for script in discover(args.benchmarks, only):
        print(f"== {script.stem}{' --quick' if args.quick else ''} ...", end=" ", flush=True)
        outcome = run_one(script, results_dir, args.quick, timeout)
        state = f"FAILED ({outcome.error.splitlines()[0]})" if outcome.error else "ok"
        print(f"{state}, {outcome.seconds:.1f} s", flush=True)
        outcomes.append(outcome)
    seconds = time.monotonic() - started
    rows = figure_rows(outcomes)
    print_summary(outcomes, rows, machine, args.quick, seconds)
    if args.no_plots:
        plots: list[dict[str, Any]] = []
    else:
        plots = draw_plots(outcomes, results_dir)
        for plot in plots:
            print(f"plot {plot['plot']}: {plot['path'] or plot['note']}")
    summary = {
        "quick": args.quick,
        "machine": machine,
        "started": started_at,
        "seconds": round(seconds, 2),
        "benchmarks": [outcome.to_json() for outcome in outcomes],
        "figures": rows,
        "plots": plots,
    }
    (results_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {results_dir / 'summary.json'}")
    return 1 if any(outcome.error for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
