"""Integration: a node maps its port on a fake router (PCP on 127.0.0.1), and a peer dials it there.

The node's ``--nat natpmp`` asks :class:`~tests.nat.fakes.FakePortControlRouter`
for a mapping of its P2P port (the fake maps the same port and says its
public address is 203.0.113.7); the peer it dials then dials it back at
that port, so the node says ``mapped``.  On stop, the mapping is removed.
"""

from __future__ import annotations

from typing import Any

from bitfitech import node as node_module
from bitfitech.address import PeerAddress
from bitfitech.discovery.kademlia.ids import market_info_hash
from bitfitech.nat.pmp import PortControlMapper
from bitfitech.node import Node
from bitfitech.peer import reachability
from bitfitech.testing import HANG_GUARD, ClusterTestCase, free_ports, global_reactor, poll_until

from ..nat.fakes import EXTERNAL_ADDRESS, FakePortControlRouter


class MappedNodeTests(ClusterTestCase):
    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.patch(reachability, "RETRY_INTERVAL", 0.2)
        self.router = FakePortControlRouter()
        port = self.router.listen(global_reactor())
        self.addCleanup(self.router.close)

        def mappers(reactor: Any, nat: str, *, gateway: str | None = None) -> list[Any]:
            self.assertEqual((nat, gateway), ("natpmp", "127.0.0.1"))
            return [PortControlMapper(reactor, gateway, port=port, retransmits=(5.0,))]

        self.patch(node_module, "build_mappers", mappers)

    async def test_mapped_and_reached(self) -> None:
        peer = self.cluster.start_node()
        node: Node = self.cluster.start_node(
            nat="natpmp", nat_gateway="127.0.0.1",
            bootstrap=(PeerAddress("127.0.0.1", peer.peers.listen_port),),
        )  # fmt: skip
        assert node.nat is not None

        def status() -> dict[str, Any]:
            reach: dict[str, Any] = node.control.status()["reachability"]
            return reach

        await poll_until(self.reactor, lambda: status()["state"] == "mapped", HANG_GUARD,
                         "the node mapped and reached")  # fmt: skip
        reach = status()
        port = node.peers.listen_port
        self.assertEqual(reach["address"], f"127.0.0.1:{port}")
        nat = reach["nat"]
        self.assertEqual((nat["state"], nat["method"]), ("mapped", "pcp"))
        self.assertEqual((nat["external_address"], nat["external_port"], nat["internal_port"]),
                         (EXTERNAL_ADDRESS, port, port))  # fmt: skip
        self.assertEqual(len(self.router.mappings), 1)
        await self.cluster.stop_node(node)
        self.assertEqual(self.router.mappings, {}, "the mapping is removed on stop")

    async def test_dht_port_mapped_and_announced(self) -> None:
        """
        With the DHT on, its UDP port is mapped too; when the router gives
        another TCP port than ours, the IPv4 DHT announces that one; both
        mappings go at stop.
        """
        [port] = free_ports(1)
        self.router.taken.add(port)  # another host holds it: the router picks another
        node: Node = self.cluster.start_node(
            nat="natpmp", nat_gateway="127.0.0.1", port=port, dht_enabled=True, dht_port=0,
        )  # fmt: skip
        dht_port = node.control.status()["dht"]["port"]

        def nat(key: str) -> dict[str, Any]:
            state: dict[str, Any] = node.control.status()["reachability"][key]
            return state

        await poll_until(
            self.reactor,
            lambda: nat("nat")["state"] == "mapped" and nat("nat_udp")["state"] == "mapped",
            HANG_GUARD,
            "both ports mapped",
        )
        external = nat("nat")["external_port"]
        self.assertNotEqual(external, port)
        self.assertEqual((nat("nat")["protocol"], nat("nat_udp")["protocol"]), ("tcp", "udp"))
        self.assertEqual(nat("nat_udp")["internal_port"], dht_port)
        self.assertEqual([internal for _, internal, _ in self.router.tables["udp"].values()],
                         [dht_port])  # fmt: skip
        # A DHT node bootstrapped to ours is told the router's port, not ours.
        other = self.cluster.start_node(
            dht_enabled=True, dht_bootstrap=(("127.0.0.1", dht_port),), network=node.config.network
        )
        store = other.dht.service.family(4).protocol.store  # type: ignore[union-attr]
        info_hash = market_info_hash(node.config.network, node.config.pair)
        await poll_until(
            self.reactor,
            lambda: ("127.0.0.1", external) in store.peers(info_hash, self.reactor.seconds()),
            HANG_GUARD,
            "our announce of the mapped port",
        )
        self.assertNotIn(("127.0.0.1", port), store.peers(info_hash, self.reactor.seconds()))
        await self.cluster.stop_node(node)
        self.assertEqual(self.router.tables, {"tcp": {}, "udp": {}}, "both removed on stop")
