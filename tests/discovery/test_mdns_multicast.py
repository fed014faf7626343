"""Real multicast on 127.0.0.1: three mDNS services find each other through the kernel.

Skipped where the host cannot multicast on the loopback interface (checked
by joining 224.0.0.251 on 127.0.0.1 and sending one datagram to ourselves).
The services use a free port rather than 5353, so that no other responder
on the host hears them.  How fast they find each other is a benchmark
figure (``benchmarks/bench_mdns.py``); here the wait is a hang guard only.
"""

from __future__ import annotations

import functools
import random

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from bitfitech.discovery.mdns import MDNSService
from bitfitech.testing import HANG_GUARD, free_udp_port, multicast_unavailable, poll_until


def record(
    seen: list[tuple[str, int, str | None]], host: str, port: int, node_id: str | None
) -> None:
    """A ``found`` callback that appends to C{seen}."""
    seen.append((host, port, node_id))


class ThreeNodesTests(TestCase):
    """Three services on 127.0.0.1, on the real reactor."""

    skip = multicast_unavailable()

    def test_discover_each_other(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.discover_each_other())

    async def discover_each_other(self) -> None:
        from twisted.internet import reactor

        port = free_udp_port()
        node_ids = [f"{number:x}" * 40 for number in (10, 11, 12)]
        found: list[list[tuple[str, int, str | None]]] = [[], [], []]
        services = []
        for number, node_id in enumerate(node_ids):
            service = MDNSService(
                reactor,
                node_id=node_id,
                network="main",
                pair="BTC/USD",
                version=1,
                p2p_port=functools.partial(int, 9000 + number),
                found=functools.partial(record, found[number]),
                interface="127.0.0.1",
                rng=random.Random(number),
                port=port,
            )
            service.startService()
            services.append(service)
        try:
            await poll_until(
                reactor, lambda: all(len(seen) >= 2 for seen in found), HANG_GUARD, "discovery"
            )
        finally:
            await defer.gatherResults([service.stopService() for service in services])
        for number in range(3):
            expected = {
                ("127.0.0.1", 9000 + other, node_ids[other])
                for other in range(3)
                if other != number
            }
            self.assertEqual(set(found[number]), expected)
            self.assertEqual(len(found[number]), 2, "each peer handed on once")
            self.assertEqual(services[number].status()["discovered"], 2)
