"""Two DHTService nodes on real UDP sockets of 127.0.0.1 find each other's announce."""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from bitfitech.discovery.kademlia.ids import network_info_hash
from bitfitech.discovery.kademlia.service import DHTService, DHTTiming
from bitfitech.testing import HANG_GUARD, poll_until

INFO_HASH = network_info_hash("test", "BTC/USD")
FAST = DHTTiming(query_timeout=1.0, check_interval=0.1, min_lookup_gap=0.2, bootstrap_retry=0.1)


class LoopbackTests(TestCase):
    """The real reactor, real sockets, port 0."""

    timeout = 120

    def make(
        self, p2p: int, found: set[tuple[str, int]], bootstrap: list[tuple[str, int]]
    ) -> DHTService:
        from twisted.internet import reactor

        service = DHTService(
            reactor,
            info_hash=INFO_HASH,
            port=0,
            host="127.0.0.1",
            p2p_port=lambda: p2p,
            found=lambda h, p, _: found.add((h, p)),
            wants_peers=lambda _market: True,
            bootstrap=bootstrap,
            rng=random.Random(p2p),
            timing=FAST,
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    async def test_find_each_other(self) -> None:
        """B bootstraps from A; each is handed the other's P2P port, and both announce."""
        from twisted.internet import reactor

        found_a: set[tuple[str, int]] = set()
        found_b: set[tuple[str, int]] = set()
        a = self.make(9101, found_a, [])
        self.assertGreater(a.listen_port, 0)
        b = self.make(9102, found_b, [("127.0.0.1", a.listen_port)])
        self.assertNotEqual(a.listen_port, b.listen_port)
        await poll_until(
            reactor,
            lambda: (
                ("127.0.0.1", 9101) in found_b
                and ("127.0.0.1", 9102) in found_a
                and a.announced_at is not None
                and b.announced_at is not None
            ),
            timeout=HANG_GUARD,
            what="both nodes found and announced",
        )
        self.assertEqual(a.status()["routing_table_size"], 1)
        self.assertEqual(b.status()["routing_table_size"], 1)
        stopped: list[Deferred[None]] = [a.stopService(), b.stopService()]
        await gatherResults(stopped)
        self.assertEqual((a.listen_port, b.listen_port), (0, 0))
