"""
The glue between :class:`bitfitech.faultinjection.FaultCluster` and the trial
harness of node processes (:mod:`tests.integration.processes`).

Data path: the cluster asks for a node process for a slot ->
:meth:`FaultTestCase.spawn_slot` starts ``twistd -n bitfi`` through
:meth:`~tests.integration.processes.ProcessTestCase.spawn_node` (killed after
the test, whatever happens; its output kept in memory) -> a
:class:`TrackedNode` hands it to the cluster, and takes it out of the
test's list of nodes expected to keep running as soon as the cluster stops
it on purpose, so that :meth:`~tests.integration.processes.ProcessTestCase.eventually`
still fails at once when a node ends by itself.

The proxies, the plan, the load and the invariants are shared with
``benchmarks/bench_faults.py`` and live in :mod:`bitfitech.faultinjection`.  Not a
test module (no ``test_`` prefix): ``test_faults`` uses it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest

from bitfitech.faultinjection import (
    FaultCluster,
    FaultReport,
    NodeSlot,
    OrderLoad,
    plan_faults,
)
from bitfitech.testing import HANG_GUARD, global_reactor

from .processes import STOP_DEADLINE, NodeProcess, ProcessTestCase

#: lines of each node's output quoted in a failure message (its end)
OUTPUT_TAIL = 30


class TrackedNode:
    """
    A :class:`~tests.integration.processes.NodeProcess` as
    :class:`~bitfitech.faultinjection.FaultCluster` drives it.

    :ivar name: the process's name (``B#2``: node B's second process).
    """

    def __init__(self, test: ProcessTestCase, process: NodeProcess) -> None:
        self.test = test
        self.process = process
        self.name = process.name

    @property
    def running(self) -> bool:
        """Whether the process runs."""
        return self.process.running

    @property
    def output(self) -> str:
        """Its stdout and stderr so far."""
        return self.process.output

    def _ending_on_purpose(self) -> None:
        if self.process in self.test.nodes:
            self.test.nodes.remove(self.process)

    def kill(self) -> Deferred[int]:
        """SIGKILL, expected: the test stops counting on the process."""
        self._ending_on_purpose()
        return self.process.kill()

    def terminate(self) -> Deferred[int]:
        """SIGTERM, expected; fails after the stop hang guard."""
        self._ending_on_purpose()
        return self.process.terminate(within=STOP_DEADLINE)

    async def wait_for_api(self) -> dict[str, Any]:
        """Wait until its API answers (fails at once if the process ends)."""
        return await self.process.wait_for_api()

    def tail(self, lines: int = OUTPUT_TAIL) -> str:
        """The name, state and last C{lines} lines of output, for failure messages."""
        state = "running" if self.running else f"exit status {self.process.status}"
        last = "\n".join(self.output.splitlines()[-lines:])
        return f"----- {self.name} ({state}), last {lines} lines -----\n{last}"


class FaultTestCase(ProcessTestCase):
    """
    A test case that runs a :class:`~bitfitech.faultinjection.FaultCluster` of
    node processes and fails with the seed, the plan, the timeline and
    every broken invariant.
    """

    timeout = 150

    def setUp(self) -> None:
        super().setUp()
        self.tracked: list[TrackedNode] = []

    def spawn_slot(self, slot: NodeSlot) -> TrackedNode:
        """Start a node process for C{slot} (its nth process is named ``NAME#n``)."""
        lives = sum(1 for node in self.tracked if node.name.split("#")[0] == slot.name)
        name = slot.name if not lives else f"{slot.name}#{lives + 1}"
        process = self.spawn_node(name, slot.port, slot.api_port, data_dir=slot.data_dir,
                                  extra_args=slot.arguments())  # fmt: skip
        node = TrackedNode(self, process)
        self.tracked.append(node)
        return node

    def make_cluster(self, seed: int) -> FaultCluster:
        """A cluster of three nodes in a fresh directory, closed after the test."""
        say = print if os.environ.get("BITFI_FAULT_VERBOSE") else None
        base_dir = os.path.abspath(self.mktemp())
        cluster = FaultCluster(global_reactor(), base_dir, self.spawn_slot, seed=seed, say=say)
        self.addCleanup(cluster.close)
        return cluster

    def make_load(self, cluster: FaultCluster, interval: float = 0.03) -> OrderLoad:
        """The load of C{cluster}'s seed on its nodes."""
        ports = [slot.api_port for slot in cluster.slots]
        rng = random.Random(f"{cluster.seed}-load")
        return OrderLoad(global_reactor(), cluster.api, ports, rng, interval=interval)

    async def run_faults(
        self, seed: int, faults: int, *, modes: tuple[str, ...] = ("refuse",),
        hold: tuple[float, float] = (0.5, 2.0), interval: float = 0.03,
    ) -> FaultReport:  # fmt: skip
        """
        Three nodes, once their network runs, C{faults} faults planned from
        C{seed} while the load runs, then quiescence and the invariants.

        :return: the report, once every invariant held (else the test fails).
        """
        cluster = self.make_cluster(seed)
        plan = plan_faults(random.Random(seed), cluster.size, faults, modes=modes, hold=hold)

        async def scenario() -> None:
            await cluster.start()
            await cluster.run(plan, self.make_load(cluster, interval))

        return await self.check_faults(cluster, scenario())

    async def check_faults(
        self, cluster: FaultCluster, scenario: Coroutine[Any, Any, None]
    ) -> FaultReport:
        """
        Run C{scenario} on C{cluster}, wait until every node holds the same
        state and check the invariants; fail with the seed, the timeline,
        every problem and the end of every node's output.
        """
        seed = cluster.seed
        try:
            await scenario
            await self.eventually(cluster.converged, "every node holding the same state",
                                  cluster.details, within=HANG_GUARD)  # fmt: skip
            await self.eventually(cluster.meshed, "every node linked to the others again",
                                  cluster.details, within=HANG_GUARD)  # fmt: skip
            report = await cluster.check()
        except SkipTest:
            raise
        except Exception as e:
            raise self.failureException(
                f"fault run with seed {seed} (rerun: BITFI_FAULT_SEED={seed}) broke off: {e}\n"
                f"{self.outputs()}"
            ) from e
        if report.problems:
            self.fail(f"{report.failure_message()}\n{self.outputs()}")
        return report

    def outputs(self) -> str:
        """The end of every node process's output."""
        return "\n".join(node.tail() for node in self.tracked)
