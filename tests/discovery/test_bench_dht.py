"""Tests of ``benchmarks/bench_dht.py``'s options: a tiny network, run in a subprocess.

They check what the benchmark reports and under which names, never how
fast the DHT is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.discovery.kademlia.lookup import MAX_IN_FLIGHT

ROOT = Path(__file__).resolve().parents[2]
BENCH_DHT = ROOT / "benchmarks" / "bench_dht.py"

#: figures every run reports (``run_all.py`` and the docs read them by name)
ALWAYS = (
    "N=40 just joined: routing table fill",
    "N=40 routing table fill",
    "N=40 find_node rounds mean",
    "N=40 find_node queries mean",
    "N=40 find_node ended on the true k nearest",
    "N=40 get_peers rounds mean",
    "N=40 get_peers ended on the true k nearest",
    "N=40 find_node simulated time mean",
    "N=40 find_node simulated time p50",
    "N=40 find_node simulated time p90",
    "N=40 find_node stalled queries mean",
    "N=40 find_node queries in flight max",
    "N=40 get_peers simulated time p90",
    "N=40 datagrams sent per node per minute while measuring",
)


def bench_dht(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/bench_dht.py`` on 40 nodes with C{args}."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(BENCH_DHT), "--nodes", "40", "--lookups", "5", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


class ChurnOptionTests(SynchronousTestCase):
    """``--churn F`` replaces a fraction of the nodes before the lookups are measured."""

    def figures(self, *args: str) -> dict[str, Any]:
        path = Path(self.mktemp()).resolve()
        done = bench_dht("--json", str(path), *args)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        document = json.loads(path.read_text())
        return {f["figure"]: f["value"] for f in document["figures"]}

    def test_churn_reported(self) -> None:
        """With churn, the replaced nodes are reported besides the usual figures."""
        figures = self.figures("--churn", "0.25")
        self.assertEqual(figures["N=40 churn: nodes replaced"], 10)
        self.assertGreater(figures["N=40 churn: stopped nodes among live contacts"], 0)
        for name in ALWAYS:
            self.assertIsInstance(figures[name], int | float)
        for kind in ("find_node", "get_peers"):
            self.assertTrue(0 <= figures[f"N=40 {kind} ended on the true k nearest"] <= 1)
            self.assertLessEqual(figures[f"N=40 {kind} queries in flight max"], MAX_IN_FLIGHT)

    def test_no_churn_by_default(self) -> None:
        """Without C{--churn} nothing is replaced and no churn figure appears."""
        figures = self.figures()
        for name in ALWAYS:
            self.assertIn(name, figures)
        self.assertEqual([name for name in figures if "churn" in name], [])

    def test_churn_is_a_fraction(self) -> None:
        """A churn outside [0, 1) is a usage error."""
        done = bench_dht("--churn", "1.5")
        self.assertEqual(done.returncode, 2)
        self.assertIn("--churn", done.stderr)
