"""Integration: the dial-back check between real nodes on 127.0.0.1 (and ::1).

A node that dials a peer asks it to dial back; the peer dials the node's
own address as it sees it, checks the node id there, and answers.  A node
reached says ``public`` and advertises its address; one that peers cannot
reach says ``outbound-only`` and keeps working over the links it dials.
"""

from __future__ import annotations

from bitfitech.address import PeerAddress
from bitfitech.node import Node
from bitfitech.peer import reachability
from bitfitech.testing import (
    HANG_GUARD,
    ClusterTestCase,
    free_ports,
    has_ipv6_loopback,
    poll_until,
)


def state(node: Node) -> str:
    return str(node.control.status()["reachability"]["state"])


class DialBackTests(ClusterTestCase):
    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.patch(reachability, "RETRY_INTERVAL", 0.2)

    def bootstrap(self, node: Node, host: str = "127.0.0.1") -> PeerAddress:
        return PeerAddress(host, node.peers.listen_port, node.storage.identity.node_id)

    async def test_reached_and_advertised(self) -> None:
        """B dials A; A dials B back: B is public at 127.0.0.1:port, and A holds that address."""
        a = self.cluster.start_node()
        b = self.cluster.start_node(bootstrap=(self.bootstrap(a),))
        await poll_until(self.reactor, lambda: state(b) != "unknown", HANG_GUARD,
                         "B's dial-back answered")  # fmt: skip
        status = b.control.status()["reachability"]
        port = b.peers.listen_port
        self.assertEqual((status["state"], status["address"]), ("public", f"127.0.0.1:{port}"))
        self.assertEqual(status["observed"], ["127.0.0.1"])
        self.assertEqual(a.control.status()["reachability"]["dialbacks_answered"], 1)
        entry = a.peers.addrbook.get("127.0.0.1", port)
        assert entry is not None
        self.assertEqual(entry.node_id, b.storage.identity.node_id)
        for node in (a, b):
            self.assertEqual(node.control.status()["peers"]["protocol_violations"], 0)
            self.assertEqual(len(node.peers.hub.links), 1, "the probe made no link")

    async def test_unreachable_is_outbound_only(self) -> None:
        """
        C asks for a port nothing listens on: A and B cannot reach it; C
        says outbound-only and still links and trades over its own dials.
        """
        a, b = self.cluster.start_node(), self.cluster.start_node()
        c = self.cluster.start_node(bootstrap=(self.bootstrap(a), self.bootstrap(b)))
        [closed] = free_ports(1)
        c.peers.reachability.listen_port = lambda: closed
        await poll_until(self.reactor, lambda: state(c) == "outbound-only", HANG_GUARD,
                         "C found unreachable")  # fmt: skip
        status = c.control.status()["reachability"]
        self.assertIsNone(status["address"])
        self.assertIn("cannot connect", status["reason"])
        self.assertIsNone(a.peers.addrbook.get("127.0.0.1", closed))
        await c.market.submit("sell", "100", "1", "limit")
        await poll_until(self.reactor, lambda: len(a.market.ledger) == 1 == len(b.market.ledger),
                         HANG_GUARD, "C's order everywhere")  # fmt: skip

    async def test_over_ipv6(self) -> None:
        if not has_ipv6_loopback():
            raise self.skipTest("this host has no IPv6 loopback (::1)")
        a = self.cluster.start_node(host="::1")
        b = self.cluster.start_node(host="::1", bootstrap=(self.bootstrap(a, "::1"),))
        await poll_until(self.reactor, lambda: state(b) != "unknown", HANG_GUARD,
                         "B's dial-back answered")  # fmt: skip
        status = b.control.status()["reachability"]
        self.assertEqual((status["state"], status["address"]),
                         ("public", f"[::1]:{b.peers.listen_port}"))  # fmt: skip
        self.assertEqual(status["observed"], ["::1"])
