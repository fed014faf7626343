"""Tests of ``benchmarks/run_all.py`` and the benchmarks' results protocol.

They run the runner in a subprocess on the cheapest real benchmark
(``bench_crypto --quick``) and on two stand-in benchmarks, one broken, and
check the JSON documents' shape; never a measured time.  The benchmarks
that start node clusters are only checked to parse their options here
(``make bench QUICK=1`` runs them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "benchmarks" / "run_all.py"
BENCH_FAIR = ROOT / "benchmarks" / "bench_fair.py"
BENCH_INGEST = ROOT / "benchmarks" / "bench_ingest.py"
BENCH_ENTRY = ROOT / "benchmarks" / "bench_entry.py"
BENCH_MEMORY = ROOT / "benchmarks" / "bench_memory.py"
BENCH_API_LOAD = ROOT / "benchmarks" / "bench_api_load.py"
BENCH_FAULTS = ROOT / "benchmarks" / "bench_faults.py"

FIGURE_KEYS = {"figure", "value", "unit", "target", "met"}

#: a stand-in benchmark that follows the protocol without measuring anything
GOOD = """\
import argparse, json
parser = argparse.ArgumentParser()
parser.add_argument("--json")
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()
print("a human table")
document = {
    "benchmark": "bench_good", "quick": args.quick, "machine": "m", "started": "t",
    "figures": [{"figure": "speed", "value": 3, "unit": "x/s", "target": ">= 2 x/s",
                 "met": True}],
    "series": {"sync_time": {"x": [1, 2], "y": [0.5, 1.0], "x_label": "n", "y_label": "s"}},
}
with open(args.json, "w") as f:
    json.dump(document, f)
"""

#: a stand-in benchmark that fails
BROKEN = "import sys\nprint('about to fail')\nsys.exit(3)\n"


def run_script(script: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the Python C{script} with C{args} from the checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_all(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/run_all.py`` with C{args} from the checkout."""
    return run_script(RUN_ALL, *args, timeout=120)


def load(path: Path) -> Any:
    """A JSON file's content."""
    return json.loads(path.read_text())


class RunAllTests(SynchronousTestCase):
    """``run_all.py`` runs benchmarks, collects their documents and survives failures."""

    def assert_figure(self, figure: dict[str, Any]) -> None:
        """C{figure} has the protocol's keys and types."""
        self.assertTrue(FIGURE_KEYS <= set(figure), figure)
        self.assertIsInstance(figure["figure"], str)
        self.assertTrue(figure["figure"])
        self.assertIsInstance(figure["value"], int | float | str)
        self.assertNotIsInstance(figure["value"], bool)
        self.assertIsInstance(figure["unit"], str)
        self.assertIn(type(figure["target"]), (str, type(None)))
        self.assertIn(figure["met"], (True, False, None))
        if figure["target"] is None:
            self.assertIsNone(figure["met"])

    def test_crypto_quick(self) -> None:
        """``--quick --only bench_crypto`` writes a document following the protocol."""
        results = Path(self.mktemp()).resolve()
        done = run_all("--quick", "--only", "bench_crypto", "--no-plots", "--results", str(results))
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("verify_event, 1 thread", done.stdout)
        self.assertIn("benchmarks (quick): ", done.stdout)

        document = load(results / "bench_crypto.json")
        self.assertEqual(
            set(document), {"benchmark", "quick", "machine", "started", "figures", "series"}
        )
        self.assertEqual(document["benchmark"], "bench_crypto")
        self.assertIs(document["quick"], True)
        self.assertIsInstance(document["machine"], str)
        self.assertIsInstance(document["started"], str)
        self.assertIsInstance(document["series"], dict)
        self.assertTrue(document["figures"])
        for figure in document["figures"]:
            self.assert_figure(figure)
        self.assertIn("verify_event, 1 thread", [f["figure"] for f in document["figures"]])

        summary = load(results / "summary.json")
        self.assertIs(summary["quick"], True)
        self.assertEqual([b["benchmark"] for b in summary["benchmarks"]], ["bench_crypto"])
        self.assertEqual(summary["benchmarks"][0]["status"], "ok")
        self.assertEqual(len(summary["figures"]), len(document["figures"]))
        for figure in summary["figures"]:
            self.assertEqual(figure["benchmark"], "bench_crypto")
            self.assert_figure(figure)
        self.assertEqual(summary["plots"], [])

    def test_failure_tolerated(self) -> None:
        """A failing benchmark is reported, the others still run, the exit status is 1."""
        benchmarks = Path(self.mktemp()).resolve()
        benchmarks.mkdir()
        (benchmarks / "bench_broken.py").write_text(BROKEN)
        (benchmarks / "bench_good.py").write_text(GOOD)
        (benchmarks / "helper.py").write_text("raise SystemExit('not a benchmark')\n")
        results = benchmarks / "results"
        done = run_all("--benchmarks", str(benchmarks), "--results", str(results))
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("FAILED bench_broken: exit status 3", done.stdout)
        self.assertIn("about to fail", done.stdout)

        summary = load(results / "summary.json")
        self.assertIs(summary["quick"], False)
        status = {b["benchmark"]: b["status"] for b in summary["benchmarks"]}
        self.assertEqual(status, {"bench_broken": "failed", "bench_good": "ok"})
        self.assertEqual(
            [(f["benchmark"], f["figure"], f["value"], f["met"]) for f in summary["figures"]],
            [("bench_good", "speed", 3, True)],
        )
        self.assertEqual((results / "bench_good.log").read_text(), "a human table\n")
        # Every plot is accounted for: drawn, or skipped with a note.
        plots = {p["plot"]: p for p in summary["plots"]}
        self.assertEqual(
            set(plots), {"propagation_cdf", "duplicates_vs_links", "dht_rounds", "sync_time"}
        )
        for plot in plots.values():
            self.assertTrue(plot["path"] or plot["note"], plot)
        self.assertIsNone(plots["dht_rounds"]["path"])

    def test_unknown_name(self) -> None:
        """``--only`` with a name no benchmark has is an error, before anything runs."""
        done = run_all("--only", "bench_nonexistent", "--results", os.path.abspath(self.mktemp()))
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("bench_nonexistent", done.stderr)


class OptionsTestCase(SynchronousTestCase):
    """A benchmark script that refuses bad options with status 2 before it starts anything."""

    def assertHelpLists(self, script: Path, options: Sequence[str]) -> None:
        """C{script}'s ``--help`` exits with 0 and names each of C{options}."""
        done = run_script(script, "--help", timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        for option in options:
            self.assertIn(option, done.stdout)

    def assertRefused(self, script: Path, cases: Sequence[Sequence[str]], says: str) -> None:
        """Each of C{cases} (its options) makes C{script} exit with 2, saying C{says}."""
        for args in cases:
            done = run_script(script, *args, "--json", os.path.abspath(self.mktemp()), timeout=60)
            self.assertEqual(done.returncode, 2, f"{args}: {done.stdout}{done.stderr}")
            self.assertIn(says, done.stderr)


class BenchMemoryTests(OptionsTestCase):
    """``bench_memory.py`` checks its options before it signs anything."""

    def test_bad_options(self) -> None:
        self.assertRefused(
            BENCH_MEMORY,
            [("--orders", "0"), ("--authors", "0")],
            "--orders and --authors at least 1",
        )

    def test_resting_orders_never_cross(self) -> None:
        """The history is all resting orders: no buy at or above any sell."""
        sys.path.insert(0, str(ROOT / "benchmarks"))
        self.addCleanup(sys.path.remove, str(ROOT / "benchmarks"))
        from bench_memory import resting_orders

        from bitfitech.market.book import OrderBook

        events = resting_orders(2000, 20, seed=3)
        book = OrderBook()
        for event in events:
            book.place(event.id, event.side, event.price, event.amount, event.author, "limit")
        self.assertEqual(len(book), 2000)
        self.assertEqual([e.lamport for e in events], list(range(1, 2001)))


class BenchEntryTests(OptionsTestCase):
    """``bench_entry.py`` checks its options before it starts a node."""

    def test_bad_options(self) -> None:
        """No time, no clients or a batch the API refuses are refused."""
        cases = [("--duration", "0"), ("--clients", "0"), ("--batch", "1"), ("--batch", "101")]
        self.assertRefused(BENCH_ENTRY, cases, "--batch 2 to 100")


class BenchApiLoadTests(OptionsTestCase):
    """``bench_api_load.py`` checks its options before it starts a node."""

    def test_help(self) -> None:
        """``--help`` lists the results protocol's options and the load's knobs, not --flood."""
        options = ("--quick", "--json", "--duration", "--orders", "--idle", "--flooders",
                   "--probe-interval", "--peer-interval")  # fmt: skip
        self.assertHelpLists(BENCH_API_LOAD, options)
        self.assertNotIn("--flood ", run_script(BENCH_API_LOAD, "--help", timeout=60).stdout)

    def test_bad_options(self) -> None:
        """No time, no flood, or more connections than the node's cap leaves room for."""
        cases = [("--duration", "0"), ("--flooders", "0"), ("--idle", "-1"), ("--orders", "0"),
                 ("--peer-interval", "0"),
                 ("--idle", "240", "--flooders", "20")]  # fmt: skip
        self.assertRefused(BENCH_API_LOAD, cases, "--idle + --flooders at most 252")


class BenchIngestTests(OptionsTestCase):
    """``bench_ingest.py`` checks its options before it signs or starts anything."""

    def test_help(self) -> None:
        """``--help`` lists the results protocol's options and the feed's knobs."""
        options = ("--quick", "--json", "--events", "--links", "--per-message", "--trace",
                   "--signed-together")  # fmt: skip
        self.assertHelpLists(BENCH_INGEST, options)

    def test_bad_feed(self) -> None:
        """A feed of no events, no links or oversized messages is refused."""
        cases = [("--events", "0"), ("--links", "0"), ("--per-message", "101")]
        self.assertRefused(BENCH_INGEST, cases, "--per-message 1 to 100")

    def test_bad_signed_together(self) -> None:
        """No events per signature, or more than one batch signature covers, is refused."""
        for count in ("0", "1025", "x"):
            self.assertRefused(BENCH_INGEST, [("--signed-together", count)], "--signed-together")


class BenchFairTests(OptionsTestCase):
    """``bench_fair.py`` imports and checks its options before it starts any node."""

    def run_bench(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_script(BENCH_FAIR, *args, timeout=60)

    def test_help(self) -> None:
        """``--help`` lists the results protocol's options and the attack's knobs."""
        options = (
            "--quick", "--json", "--trials", "--baseline-trials", "--rate", "--grind",
            "--author-latency",
        )  # fmt: skip
        self.assertHelpLists(BENCH_FAIR, options)

    def test_bad_rates(self) -> None:
        """``--rate`` takes positive orders/s, comma-separated; anything else is refused."""
        cases = [("--rate", rates) for rates in ("600,", "fast", "200,-1", "0", "inf")]
        self.assertRefused(BENCH_FAIR, cases, "--rate")

    def test_too_few_nodes(self) -> None:
        """A network too small for three witnesses, a victim and the local node is refused."""
        done = self.run_bench("--nodes", "4", "--json", os.path.abspath(self.mktemp()))
        self.assertEqual(done.returncode, 2, done.stdout + done.stderr)
        self.assertIn("--nodes: at least 5", done.stderr)


class BenchFaultsTests(OptionsTestCase):
    """``bench_faults.py`` imports and checks its options before it starts any node."""

    def test_help(self) -> None:
        """``--help`` lists the results protocol's options and the fault plan's knobs."""
        options = ("--quick", "--json", "--runs", "--faults", "--seed", "--modes", "--hold",
                   "--lead", "--stop-guard", "--keep")  # fmt: skip
        self.assertHelpLists(BENCH_FAULTS, options)

    def test_bad_options(self) -> None:
        """No faults, an unknown partition mode or an empty range of holds is refused."""
        self.assertRefused(BENCH_FAULTS, [("--faults", "0"), ("--runs", "0")], "at least 1")
        self.assertRefused(BENCH_FAULTS, [("--modes", "sometimes")], "--modes")
        self.assertRefused(BENCH_FAULTS, [("--hold", "3,1"), ("--hold", "x")], "--hold")
