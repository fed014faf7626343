"""Real IPv6 multicast: mDNS services, and whole nodes, that find each other over ff02::fb;
and the IPv6 socket they use.

Each test runs mDNS in IPv6 only, on the interface address
:func:`~tests.discovery.ipv6_multicast.probe` found: ``::1`` where the
loopback interface carries IPv6 multicast, else a global or unique-local
address of another interface (Linux's loopback interface has no IPv6
multicast); skipped with the reason where there is none.  The services use
a free port rather than 5353, so that no other responder hears them, and
each test names its own network.  Every wait is a hang guard only.
"""

from __future__ import annotations

import functools
import random
import secrets
import socket

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bitfitech.discovery.mdns import MDNSService, local_addresses
from bitfitech.discovery.mdns.ipv6 import listen_ipv6
from bitfitech.node import Node
from bitfitech.testing import HANG_GUARD, ClusterTestCase, free_udp_port, poll_until

from .ipv6_multicast import ipv6_multicast_unavailable, probe

Found = list[tuple[str, int, str | None]]


def record(seen: Found, host: str, port: int, node_id: str | None) -> None:
    """A ``found`` callback that appends to C{seen}."""
    seen.append((host, port, node_id))


def _no_ipv6_socket() -> str | None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::", 0))
    except OSError as error:
        return f"no IPv6 socket here: {error}"
    return None


class ListenIPv6Tests(SynchronousTestCase):
    """The IPv6 socket :func:`listen_ipv6` makes and hands to the reactor (a real one, port 0)."""

    skip = _no_ipv6_socket()

    def test_socket_options(self) -> None:
        reactor = MemoryReactor()
        protocol = DatagramProtocol()
        port = listen_ipv6(reactor, 0, protocol, 9001)
        [(fileno, family, adopted, size)] = reactor.adoptedPorts
        self.assertEqual((family, adopted, size), (socket.AF_INET6, protocol, 9001))
        # The reactor gets the descriptor of the socket the port keeps.
        sock = port._socket
        self.assertEqual(fileno, sock.fileno())
        options = [
            (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1),
            (socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255),
            (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255),
            (socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1),
            (socket.SOL_SOCKET, socket.SO_REUSEADDR, 1),
        ]
        for level, option, value in options:
            self.assertEqual(sock.getsockopt(level, option), value, option)
        self.assertEqual(sock.getsockname()[0], "::")
        self.assertFalse(sock.getblocking())
        self.assertRaises(OSError, port.join, 2**31)  # no such interface
        self.successResultOf(port.stopListening())
        self.assertEqual(sock.fileno(), -1)

    def test_reactor_without_adoption(self) -> None:
        error = self.assertRaises(CannotListenError, listen_ipv6, Clock(), 0, DatagramProtocol(), 1)
        self.assertIn("cannot adopt", str(error))


class ThreeServicesTests(TestCase):
    """Three services on one IPv6 interface address, on the real reactor."""

    skip = ipv6_multicast_unavailable()

    def test_discover_each_other(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.discover_each_other())

    async def discover_each_other(self) -> None:
        from twisted.internet import reactor

        address = probe().address
        assert address is not None
        port = free_udp_port()
        node_ids = [f"{number:x}" * 40 for number in (10, 11, 12)]
        found: list[Found] = [[], [], []]
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
                interface=address,
                rng=random.Random(number),
                port=port,
            )
            service.startService()
            services.append(service)
        # Each service hands on every address the others advertise: this
        # one, and the same interface's IPv4 address if it has one.
        advertised = local_addresses(address).advertised
        self.assertEqual(advertised[0], address)
        try:
            await poll_until(
                reactor,
                lambda: all(len(seen) >= 2 * len(advertised) for seen in found),
                HANG_GUARD,
                "discovery over IPv6",
            )
            statuses = [service.status() for service in services]
        finally:
            await defer.gatherResults([service.stopService() for service in services])
        for number in range(3):
            expected = {
                (host, 9000 + other, node_ids[other])
                for other in range(3)
                if other != number
                for host in advertised
            }
            self.assertEqual(set(found[number]), expected)
            self.assertEqual(len(found[number]), len(expected), "each address handed on once")
            # IPv6 only: its address comes first.
            self.assertEqual(found[number][0][0], address)
            status = statuses[number]
            self.assertEqual((status["families"], status["discovered"]), (["ipv6"], 2))


class TwoNodesLinkOverIPv6Tests(ClusterTestCase):
    """Two nodes that listen on an IPv6 address only and find each other by mDNS alone."""

    skip = ipv6_multicast_unavailable()
    timeout = 120

    def start_nodes(self, count: int) -> list[Node]:
        address = probe().address
        assert address is not None
        network = f"disc6-{secrets.token_hex(4)}"
        port = free_udp_port()
        return [
            self.cluster.start_node(
                network=network,
                host=address,
                mdns_enabled=True,
                mdns_interface=address,
                mdns_port=port,
            )  # fmt: skip
            for _ in range(count)
        ]

    async def test_two_nodes_link_over_ipv6(self) -> None:
        address = probe().address
        assert address is not None
        nodes = self.start_nodes(2)
        ids = [n.storage.identity.node_id for n in nodes]

        def linked() -> bool:
            discovered = [n.control.status()["mdns"]["discovered"] for n in nodes]
            return discovered == [1, 1] and all(
                ids[1 - i] in n.peers.hub.links for i, n in enumerate(nodes)
            )

        await poll_until(self.reactor, linked, HANG_GUARD, "two nodes linked over IPv6")
        for number, node in enumerate(nodes):
            other = nodes[1 - number]
            status = node.control.status()["mdns"]
            self.assertEqual((status["interface"], status["families"]), (address, ["ipv6"]))
            assert node.peers.addrbook is not None
            entry = node.peers.addrbook.get(address, other.peers.listen_port)
            self.assertIsNotNone(entry)
            assert entry is not None
            self.assertIn(entry.source, ("mdns", "inbound"))
            self.assertEqual(entry.node_id, ids[1 - number])
