"""Integration: real nodes in one reactor on 127.0.0.1 form a mesh (no process, no fake)."""

from __future__ import annotations

from twisted.trial.unittest import SkipTest

from bitfitech.node import Node
from bitfitech.testing import (
    HANG_GUARD,
    ClusterTestCase,
    connected_components,
    has_ipv6_loopback,
    poll_until,
    wait_for,
)

NODES = 10


class MeshTests(ClusterTestCase):
    timeout = 60

    async def test_ten_nodes_bootstrapped_to_one_form_a_mesh(self) -> None:
        """
        10 nodes, each bootstrapped only to node 0, end in one mesh where each
        has at least 3 links and knows all 9 others' addresses; after node 0
        stops the other 9 stay connected.
        """
        first = self.cluster.start_node()
        nodes = [first] + [self.cluster.start_node(bootstrap_to=[first]) for _ in range(NODES - 1)]
        ports = {n.storage.identity.node_id: n.peers.listen_port for n in nodes}

        def knows_everyone(node: Node) -> bool:
            book = node.peers.addrbook
            assert book is not None
            own = node.storage.identity.node_id
            return all(book.get("127.0.0.1", port) is not None
                       for nid, port in ports.items() if nid != own)  # fmt: skip

        def formed() -> bool:
            return all(len(n.peers.hub.links) >= 3 and knows_everyone(n) for n in nodes)

        await wait_for(nodes, formed, HANG_GUARD, self.reactor, "a 10-node mesh")
        self.assertEqual(len(connected_components(nodes)), 1)

        first_id = first.storage.identity.node_id
        await self.cluster.stop_node(first)
        rest = nodes[1:]
        await wait_for(rest, lambda: all(first_id not in n.peers.hub.links for n in rest),
                       HANG_GUARD, self.reactor, "node 0's links closed")  # fmt: skip
        self.assertEqual(len(connected_components(rest)), 1)
        for node in rest:
            self.assertGreaterEqual(len(node.peers.hub.links), 1)
        # and they stay so while their dialers retry node 0 for a while: until
        # they have failed to reach it as many times as there are nodes (a
        # node that just lost node 0 retries at once, then after 1 s, 2 s...;
        # one whose failures reached the circuit breaker rests, so the count
        # is of all nodes together, not of each)
        before = sum(node.peers.dialer.dial_failures for node in rest)

        def retried() -> bool:
            return sum(node.peers.dialer.dial_failures for node in rest) >= before + len(rest)

        await poll_until(self.reactor, retried, HANG_GUARD, "the dialers retried node 0")
        self.assertEqual(len(connected_components(rest)), 1)

    async def test_two_nodes_link_and_exchange_addresses(self) -> None:
        a = self.cluster.start_node()
        b = self.cluster.start_node(bootstrap_to=[a])
        await wait_for([a, b], lambda: len(a.peers.hub.links) == 1 == len(b.peers.hub.links),
                       HANG_GUARD, self.reactor, "a link")  # fmt: skip
        [row] = a.control.peers()
        self.assertEqual(row["node_id"], b.storage.identity.node_id)
        self.assertEqual(row["direction"], "inbound")
        self.assertEqual(row["address"], f"127.0.0.1:{b.peers.listen_port}")
        status = b.control.status()
        self.assertEqual(status["peers"]["outbound"], 1)
        self.assertEqual((status["peers"]["dials"], status["peers"]["dial_failures"]), (1, 0))
        self.assertEqual(status["peers"]["protocol_violations"], 0)


class IPv6Tests(ClusterTestCase):
    timeout = 120

    def setUp(self) -> None:
        if not has_ipv6_loopback():
            raise SkipTest("this host has no IPv6 loopback (::1)")
        super().setUp()

    async def test_nodes_link_over_ipv6(self) -> None:
        from bitfitech.address import PeerAddress, parse_address

        a = self.cluster.start_node(host="::1")
        boot = parse_address(f"[::1]:{a.peers.listen_port}")
        self.assertEqual(boot, PeerAddress("::1", a.peers.listen_port))
        b = self.cluster.start_node(host="::1", bootstrap=(boot,))
        await wait_for([a, b], lambda: len(a.peers.hub.links) == 1 == len(b.peers.hub.links),
                       HANG_GUARD, self.reactor, "an IPv6 link")  # fmt: skip
        [row] = a.control.peers()
        self.assertEqual((row["address"], row["family"]), (f"[::1]:{b.peers.listen_port}", "ipv6"))
