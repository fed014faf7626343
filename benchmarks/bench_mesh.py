"""Benchmark: how fast real nodes on 127.0.0.1 form a mesh.

N nodes start in one reactor, each bootstrapped only to node 0, with the
default outbound target (8).  The clock runs from the first start until
every node has at least 3 links and knows every other node's address.
Prints a table of figures; run ``python benchmarks/bench_mesh.py [--nodes
N] [--runs R] [--quick] [--json PATH]`` (``--quick``: 5 nodes, 2 runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from typing import Any

from _results import Results, add_arguments
from twisted.internet.defer import Deferred
from twisted.internet.task import react

from bitfitech.node import Node
from bitfitech.testing import LocalCluster, connected_components, wait_for


async def one_run(reactor: Any, nodes_wanted: int) -> tuple[float, float]:
    """Form one mesh; return (seconds to form, mean links per node)."""
    with tempfile.TemporaryDirectory() as base:
        cluster = LocalCluster(base, reactor)
        try:
            started = reactor.seconds()
            first = cluster.start_node()
            nodes = [first] + [
                cluster.start_node(bootstrap_to=[first]) for _ in range(nodes_wanted - 1)
            ]
            ports = {n.storage.identity.node_id: n.peers.listen_port for n in nodes}

            def knows_all(node: Node) -> bool:
                book = node.peers.addrbook
                assert book is not None
                me = node.storage.identity.node_id
                return all(
                    book.get("127.0.0.1", p) is not None for i, p in ports.items() if i != me
                )

            def formed() -> bool:
                return all(len(n.peers.hub.links) >= 3 and knows_all(n) for n in nodes)

            await wait_for(nodes, formed, 60, reactor, "mesh")
            took = reactor.seconds() - started
            assert len(connected_components(nodes)) == 1
            links = statistics.mean(len(n.peers.hub.links) for n in nodes)
            return took, links
        finally:
            await cluster.stop()


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, help="nodes [10; quick 5]")
    parser.add_argument("--runs", type=int, help="runs [5; quick 2]")
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.nodes = args.nodes or (5 if args.quick else 10)
    args.runs = args.runs or (2 if args.quick else 5)
    results = [await one_run(reactor, args.nodes) for _ in range(args.runs)]
    times = sorted(t for t, _ in results)
    print(f"{'figure':<40} {'value':>12}")
    print(f"{'-' * 40} {'-' * 12}")
    print(f"{'nodes':<40} {args.nodes:>12}")
    print(f"{'runs':<40} {args.runs:>12}")
    print(f"{'mesh formed, min (ms)':<40} {times[0] * 1000:>12.1f}")
    print(f"{'mesh formed, median (ms)':<40} {statistics.median(times) * 1000:>12.1f}")
    print(f"{'mesh formed, max (ms)':<40} {times[-1] * 1000:>12.1f}")
    mean_links = statistics.mean(links for _, links in results)
    print(f"{'links per node, mean':<40} {mean_links:>12.1f}")
    report = Results("bench_mesh", quick=args.quick)
    report.add("mesh nodes (in one reactor)", args.nodes)
    report.add(f"mesh formed, min of {args.runs}", round(times[0] * 1000, 1), "ms")
    report.add(
        f"mesh formed, median of {args.runs}", round(statistics.median(times) * 1000, 1), "ms"
    )
    report.add(f"mesh formed, max of {args.runs}", round(times[-1] * 1000, 1), "ms")
    report.add("mesh links per node, mean", round(mean_links, 2))
    report.write(args.json)


def _run(reactor: Any) -> Deferred[None]:
    return Deferred.fromCoroutine(main(reactor, sys.argv[1:]))


if __name__ == "__main__":
    react(_run)
