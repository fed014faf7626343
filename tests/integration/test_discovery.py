"""Integration: real nodes on 127.0.0.1 that find each other only through discovery.

No node is given a ``--bootstrap`` peer: the mDNS tests use real multicast
on the loopback interface (skipped where the host has none), the DHT tests
real UDP on 127.0.0.1.  Each test names its own network, so nodes of tests
running at the same time in other processes never mix.  How fast nodes
find each other by mDNS is a benchmark figure (``benchmarks/bench_mdns.py``);
every wait here is a hang guard only.
"""

from __future__ import annotations

import secrets
from unittest import SkipTest

from bitfitech.discovery.kademlia.ids import network_info_hash
from bitfitech.node import Node
from bitfitech.testing import (
    HANG_GUARD,
    ClusterTestCase,
    connected_components,
    free_udp_port,
    has_ipv6_loopback,
    multicast_unavailable,
    poll_until,
)


def linked_to_all(nodes: list[Node]) -> bool:
    """Whether every node has a ready link to every other."""
    ids = {n.storage.identity.node_id for n in nodes}
    return all(ids - {n.storage.identity.node_id} <= set(n.peers.hub.links) for n in nodes)


class _DiscoveryTestCase(ClusterTestCase):
    timeout = 120

    def setUp(self) -> None:
        super().setUp()
        self.network = f"disc-{secrets.token_hex(4)}"


class MDNSDiscoveryTests(_DiscoveryTestCase):
    """Nodes with mDNS only, on 127.0.0.1."""

    skip = multicast_unavailable()

    def start_nodes(self, count: int) -> list[Node]:
        port = free_udp_port()
        return [
            self.cluster.start_node(
                network=self.network,
                mdns_enabled=True,
                mdns_interface="127.0.0.1",
                mdns_port=port,
            )
            for _ in range(count)
        ]

    async def test_two_nodes_find_each_other(self) -> None:
        nodes = self.start_nodes(2)

        def found_and_linked() -> bool:
            discovered = [n.control.status()["mdns"]["discovered"] for n in nodes]
            return discovered == [1, 1] and linked_to_all(nodes)

        await poll_until(self.reactor, found_and_linked, HANG_GUARD, "two nodes found and linked")
        for node in nodes:
            other = next(n for n in nodes if n is not node)
            entry = node.peers.addrbook.get("127.0.0.1", other.peers.listen_port)  # type: ignore[union-attr]
            self.assertIsNotNone(entry)
            assert entry is not None
            self.assertIn(entry.source, ("mdns", "inbound"))
            status = node.control.status()["mdns"]
            self.assertEqual(status["interface"], "127.0.0.1")
            self.assertEqual(
                status["instance"], f"{node.storage.identity.node_id}._bitfi._tcp.local."
            )

    async def test_three_nodes_form_a_mesh(self) -> None:
        nodes = self.start_nodes(3)
        await poll_until(self.reactor, lambda: linked_to_all(nodes), HANG_GUARD, "a 3-node mesh")
        self.assertEqual(len(connected_components(nodes)), 1)
        sources = {
            entry.source
            for node in nodes
            for entry in node.peers.addrbook.entries()  # type: ignore[union-attr]
        }
        self.assertIn("mdns", sources)

    async def test_other_networks_are_ignored(self) -> None:
        port = free_udp_port()
        ours = self.cluster.start_node(
            network=self.network, mdns_enabled=True, mdns_interface="127.0.0.1", mdns_port=port
        )
        theirs = self.cluster.start_node(
            network=self.network + "-other",
            mdns_enabled=True,
            mdns_interface="127.0.0.1",
            mdns_port=port,
        )
        company = self.cluster.start_node(
            network=self.network, mdns_enabled=True, mdns_interface="127.0.0.1", mdns_port=port
        )
        await poll_until(self.reactor, lambda: linked_to_all([ours, company]), HANG_GUARD,
                         "linked")  # fmt: skip
        self.assertEqual(len(theirs.peers.addrbook or ()), 0)
        self.assertEqual(theirs.control.status()["mdns"]["discovered"], 0)
        self.assertIsNone(ours.peers.addrbook.get("127.0.0.1", theirs.peers.listen_port))  # type: ignore[union-attr]


class DHTDiscoveryTests(_DiscoveryTestCase):
    """Nodes with the DHT only, on 127.0.0.1."""

    async def test_nodes_find_each_other_through_the_dht(self) -> None:
        first = self.cluster.start_node(network=self.network, dht_enabled=True)
        dht_port = first.control.status()["dht"]["port"]
        self.assertGreater(dht_port, 0)
        others = [
            self.cluster.start_node(
                network=self.network, dht_enabled=True, dht_bootstrap=(("127.0.0.1", dht_port),)
            )
            for _ in range(2)
        ]
        nodes = [first, *others]
        await poll_until(self.reactor, lambda: linked_to_all(nodes), HANG_GUARD,
                         "nodes linked by DHT")  # fmt: skip
        status = others[0].control.status()["dht"]
        self.assertEqual(status["info_hash"], network_info_hash(self.network, "BTC/USD").hex())
        self.assertGreaterEqual(status["routing_table_size"], 1)
        self.assertIsNotNone(status["announced_at"])
        self.assertEqual(len(status["node_id"]), 40)
        sources = {
            entry.source
            for node in nodes
            for entry in node.peers.addrbook.entries()  # type: ignore[union-attr]
        }
        self.assertIn("dht", sources)

    async def test_nodes_link_over_ipv6_through_the_dht_alone(self) -> None:
        """On ::1 the DHT is BEP 32's IPv6 one: nodes find and link through it alone."""
        if not has_ipv6_loopback():
            raise SkipTest("no IPv6 loopback (::1) here")
        first = self.cluster.start_node(network=self.network, host="::1", dht_enabled=True)
        status = first.control.status()["dht"]
        self.assertEqual(list(status["families"]), ["ipv6"])
        dht_port = status["port"]
        others = [
            self.cluster.start_node(
                network=self.network, host="::1", dht_enabled=True,
                dht_bootstrap=(("::1", dht_port),),
            )
            for _ in range(2)
        ]  # fmt: skip
        nodes = [first, *others]
        await poll_until(self.reactor, lambda: linked_to_all(nodes), HANG_GUARD,
                         "nodes linked by the IPv6 DHT")  # fmt: skip
        status = others[0].control.status()["dht"]
        self.assertEqual(status["families"]["ipv6"]["host"], "::1")
        self.assertGreaterEqual(status["families"]["ipv6"]["routing_table_size"], 1)
        self.assertIsNotNone(status["announced_at"])
        found = {
            entry.host
            for node in nodes
            for entry in node.peers.addrbook.entries()  # type: ignore[union-attr]
            if entry.source == "dht"
        }
        self.assertEqual(found, {"::1"})

    async def test_dht_port_defaults_to_the_p2p_port_number(self) -> None:
        port = free_udp_port()
        node = self.cluster.start_node(network=self.network, dht_enabled=True, dht_port=port)
        self.assertEqual(node.control.status()["dht"]["port"], port)
        self.assertIsNone(node.control.status()["mdns"])

    async def test_busy_dht_port_stops_the_start(self) -> None:
        from bitfitech.listening import StartupError

        first = self.cluster.start_node(network=self.network, dht_enabled=True)
        busy = first.control.status()["dht"]["port"]
        error = self.assertRaises(
            StartupError,
            self.cluster.start_node,
            network=self.network,
            dht_enabled=True,
            dht_port=busy,
        )
        self.assertIn(f"the DHT on UDP 127.0.0.1:{busy}", str(error))
