"""Benchmark: how fast nodes find each other by mDNS, over real multicast on 127.0.0.1.

Three figures, each timed from the start until the condition holds, in
one reactor (the tests in ``tests/discovery/test_mdns_multicast.py`` and
``tests/integration/test_discovery.py`` check the same behaviour with no
time bound):

- three bare mDNS services (no node) until each has found the other two
  (target <= 2 s);
- two nodes with mDNS only (no ``--bootstrap``) until each has found the
  other and they are linked (target <= 2 s);
- three such nodes until each is linked to the other two (target <= 5 s).

Every run uses a free UDP port rather than 5353 and a network name of its
own, so that nothing else on the host hears it.  Where the host cannot
multicast on 127.0.0.1, the figures say why instead.

Run ``python benchmarks/bench_mdns.py [--runs R] [--quick] [--json PATH]``
(``--quick``: 1 run; default 5).
"""

from __future__ import annotations

import argparse
import functools
import random
import secrets
import statistics
import sys
import tempfile
from typing import Any

from _cluster import machine_info, print_table
from _results import Results, add_arguments
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import react

from bitfitech.discovery.mdns import MDNSService
from bitfitech.node import Node
from bitfitech.testing import LocalCluster, free_udp_port, multicast_unavailable, poll_until

#: how long one run may take before the benchmark gives up (a hang guard)
GIVE_UP_S = 60.0
#: how often the conditions are checked
INTERVAL = 0.005

#: (figure, target in seconds)
FIGURES = (
    ("three mDNS services found each other", 2.0),
    ("two nodes found each other and linked", 2.0),
    ("three nodes formed a mesh", 5.0),
)


def _record(seen: list[str], host: str, port: int, node_id: str | None) -> None:
    seen.append(f"{host}:{port}")


async def services(reactor: Any) -> float:
    """Three bare services on 127.0.0.1: seconds from their start until each found the others."""
    port = free_udp_port()
    network = f"bench-{secrets.token_hex(4)}"
    found: list[list[str]] = [[], [], []]
    started = []
    for number in range(3):
        service = MDNSService(
            reactor,
            node_id=secrets.token_hex(20),
            network=network,
            pair="BTC/USD",
            version=1,
            p2p_port=functools.partial(int, 9000 + number),
            found=functools.partial(_record, found[number]),
            interface="127.0.0.1",
            rng=random.Random(number),
            port=port,
        )
        started.append(service)
    for service in started:
        service.startService()
    try:
        return await poll_until(reactor, lambda: all(len(seen) >= 2 for seen in found),
                                GIVE_UP_S, "three services found", INTERVAL)  # fmt: skip
    finally:
        await gatherResults([service.stopService() for service in started])


def _linked_to_all(nodes: list[Node]) -> bool:
    ids = {n.storage.identity.node_id for n in nodes}
    return all(ids - {n.storage.identity.node_id} <= set(n.peers.hub.links) for n in nodes)


async def nodes(reactor: Any, count: int) -> float:
    """C{count} nodes with mDNS only: seconds until each found and linked to every other."""
    network = f"bench-mdns-{secrets.token_hex(4)}"
    port = free_udp_port()
    with tempfile.TemporaryDirectory() as base:
        cluster = LocalCluster(base, reactor)
        try:
            started = reactor.seconds()
            running = [
                cluster.start_node(network=network, mdns_enabled=True,
                                   mdns_interface="127.0.0.1", mdns_port=port)
                for _ in range(count)
            ]  # fmt: skip

            def found_and_linked() -> bool:
                found = [n.control.status()["mdns"]["discovered"] for n in running]
                return min(found) >= count - 1 and _linked_to_all(running)

            await poll_until(reactor, found_and_linked, GIVE_UP_S, f"{count} nodes linked",
                             INTERVAL)  # fmt: skip
            took: float = reactor.seconds() - started
            return took
        finally:
            await cluster.stop()


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="runs of each figure [5; quick 1]")
    add_arguments(parser)
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 5)
    report = Results("bench_mdns", quick=args.quick)
    unavailable = multicast_unavailable()
    if unavailable is not None:
        print(f"mdns: {unavailable}")
        for name, _ in FIGURES:
            report.add(name, unavailable)
        report.write(args.json)
        return
    times: list[list[float]] = [[], [], []]
    for _ in range(runs):
        times[0].append(await services(reactor))
        times[1].append(await nodes(reactor, 2))
        times[2].append(await nodes(reactor, 3))
    rows = [("runs of each", f"{runs}")]
    targets = []
    for (name, target), measured in zip(FIGURES, times, strict=True):
        median, worst = statistics.median(measured), max(measured)
        rows += [(f"{name}, median (ms)", f"{median * 1000:.0f}"),
                 (f"{name}, max (ms)", f"{worst * 1000:.0f}")]  # fmt: skip
        met = worst <= target
        targets.append((f"{name}: max <= {target:g} s",
                        f"{worst:.3f} s: {'met' if met else 'MISSED'}"))  # fmt: skip
        report.add(f"{name}, median of {runs}", round(median * 1000), "ms")
        report.add(f"{name}, max of {runs}", round(worst * 1000), "ms",
                   f"<= {target:g} s", met)  # fmt: skip
    print_table(f"mdns ({'quick; ' if args.quick else ''}{machine_info()})", rows)
    print_table("targets", targets)
    report.write(args.json)


def _run(reactor: Any) -> Deferred[None]:
    return Deferred.fromCoroutine(main(reactor, sys.argv[1:]))


if __name__ == "__main__":
    react(_run)
