"""bitfi's DHT and libtorrent's (rasterbar, the BEP 5 reference in practice) find each other.

libtorrent runs in this process, through its Python bindings (the
``libtorrent`` wheel of the ``test`` extra), bootstrapped to bitfi's DHT
node, on each address family: the IPv4 DHT on 127.0.0.1 (BEP 5) and the
IPv6 DHT on ``::1`` (BEP 32).  Skipped when the bindings cannot be
imported, and over IPv6 when this host cannot bind ``::1``.

On each family, both directions: libtorrent's ``announce_peer`` reaches
bitfi and bitfi's ``get_peers`` finds it; bitfi's announce reaches
libtorrent, whose ``get_peers`` finds bitfi's P2P port.  The test also
reads the answers libtorrent sent bitfi's socket: they name bitfi's own
node (so libtorrent took it into its routing table) in the key of the
family, ``nodes`` (26 bytes a node) over IPv4 and ``nodes6`` (38 bytes)
over IPv6, never in the other; and bitfi's routing table holds
libtorrent's node at its address of that family.  Peers of ``values``
are 6 bytes over IPv4 and 18 over IPv6 (BEP 32), which both lookups
finding the other's port at the right address shows.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.trial.unittest import SkipTest, TestCase

from bitfitech.discovery.kademlia.ids import network_info_hash
from bitfitech.discovery.kademlia.krpc import KRPCError, NodeInfo, Response, decode_message
from bitfitech.discovery.kademlia.service import DHTService, DHTTiming
from bitfitech.testing import HANG_GUARD, global_reactor, has_ipv6_loopback, poll_until

INFO_HASH = network_info_hash("test", "BTC/USD")
FAST = DHTTiming(query_timeout=1.0, check_interval=0.2, min_lookup_gap=0.5, bootstrap_retry=0.2)
BITFI_P2P = 9401
LIBTORRENT_P2P = 9402


def libtorrent() -> Any:
    """The bindings, or SkipTest saying why not."""
    try:
        import libtorrent as lt
    except ImportError as e:
        raise SkipTest(f"libtorrent's Python bindings are not installed ({e})") from None
    return lt


def free_udp_port(host: str) -> int:
    """A UDP port free now on C{host}, an IPv4 or IPv6 literal."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def hostport(host: str, port: int) -> str:
    """C{host} and C{port} as libtorrent's settings write them (``[::1]:6881`` over IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Met:
    """What one run of bitfi and libtorrent finding each other leaves to check."""

    host: str
    service: DHTService
    replies: list[Response] = field(default_factory=list)
    """The answers bitfi's socket received from libtorrent's."""

    def named_bitfi(self, key: str) -> bool:
        """Whether a libtorrent answer named bitfi's node in C{key} (``nodes``, ``nodes6``)."""
        ours = NodeInfo(self.service.node_id or b"", self.host, self.service.listen_port)
        return any(ours in getattr(reply, key) for reply in self.replies)


class LibtorrentInteropTests(TestCase):
    timeout = 60

    def start_bitfi(self, host: str, found: set[tuple[str, int]]) -> DHTService:
        """bitfi's DHT on C{host} and a free port, adding the peers it finds to C{found}."""
        service = DHTService(
            global_reactor(), info_hashes={"BTC/USD": INFO_HASH}, port=0, host=host,
            p2p_port=lambda: BITFI_P2P, found=lambda h, p, _, markets: found.add((h, p)),
            wants_peers=lambda _market: True, rng=random.Random(1), timing=FAST,
        )  # fmt: skip
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    def start_libtorrent(self, lt: Any, host: str, bitfi_port: int) -> tuple[Any, int]:
        """
        A libtorrent session whose DHT runs on C{host} alone, joined
        through bitfi's node on C{host} and UDP C{bitfi_port}; and its port.
        """
        port = free_udp_port(host)
        session = lt.session({
            "listen_interfaces": hostport(host, port),
            "enable_dht": True, "enable_lsd": False, "enable_upnp": False,
            "enable_natpmp": False, "enable_incoming_utp": False, "enable_outgoing_utp": False,
            # No router: bitfi's node comes through add_dht_node, so it may
            # enter libtorrent's routing table (a router node never does).
            "dht_bootstrap_nodes": "",
            # Every node here is on one loopback address: libtorrent would
            # keep one node per IP, want ids derived from the IP (BEP 42),
            # and after 4 s ban the address for sending over 5 packets a
            # second (its own queries to itself count).
            "dht_restrict_routing_ips": False, "dht_restrict_search_ips": False,
            "dht_enforce_node_id": False, "dht_prefer_verified_node_ids": False,
            "dht_block_ratelimit": 1_000_000,
            "alert_mask": lt.alert.category_t.dht_notification
            | lt.alert.category_t.dht_operation_notification,
        })  # fmt: skip
        self.addCleanup(session.pause)
        session.add_dht_node((host, bitfi_port))
        return session, port

    def repeat(self, seconds: float, work: Any) -> None:
        """Call C{work} every C{seconds} on the reactor until the test ends."""
        loop = LoopingCall(work)
        loop.clock = global_reactor()
        loop.start(seconds)
        self.addCleanup(loop.stop)

    def tap(self, service: DHTService, source: tuple[str, int], replies: list[Response]) -> None:
        """Add to C{replies} each answer C{service}'s socket receives from C{source}."""
        protocol = service.protocol
        assert protocol is not None
        received = protocol.datagramReceived

        def datagram_received(datagram: bytes, addr: Any) -> None:
            if (addr[0], addr[1]) == source:
                try:
                    message = decode_message(datagram)
                except KRPCError:
                    pass
                else:
                    if isinstance(message, Response):
                        replies.append(message)
            received(datagram, addr)

        self.patch(protocol, "datagramReceived", datagram_received)

    async def find_each_other(self, host: str, nodes_key: str) -> Met:
        """
        bitfi and libtorrent, both on C{host}, announce and look up the
        same info-hash until each has found the other's P2P port at
        C{host}, and an answer of libtorrent's has named bitfi's node in
        C{nodes_key} (``nodes`` or ``nodes6``).
        """
        lt = libtorrent()
        found: set[tuple[str, int]] = set()
        service = self.start_bitfi(host, found)
        session, port = self.start_libtorrent(lt, host, service.listen_port)
        met = Met(host, service)
        self.tap(service, (host, port), met.replies)
        target = lt.sha1_hash(INFO_HASH)
        theirs: set[tuple[str, int]] = set()

        def poll() -> None:
            for alert in session.pop_alerts():
                if isinstance(alert, lt.dht_get_peers_reply_alert):
                    theirs.update((h, p) for h, p in alert.peers())

        def ask() -> None:
            session.dht_announce(target, LIBTORRENT_P2P)
            session.dht_get_peers(target)
            if not service._discovering:  # noqa: SLF001 - one lookup at a time
                service.discover(announce=True)

        self.repeat(0.1, poll)
        self.repeat(1.0, ask)
        await poll_until(
            global_reactor(),
            lambda: (
                (host, LIBTORRENT_P2P) in found
                and (host, BITFI_P2P) in theirs
                and met.named_bitfi(nodes_key)
            ),
            HANG_GUARD,
            f"libtorrent and bitfi finding each other's announce on {host},"
            f" and libtorrent naming bitfi's node in {nodes_key}",
        )
        routing = service.routing_table
        assert routing is not None
        self.assertIn((host, port), [contact.address for contact in routing])
        return met

    async def test_both_directions(self) -> None:
        met = await self.find_each_other("127.0.0.1", "nodes")
        self.assertEqual(met.service.family, 4)
        self.assertEqual([r for r in met.replies if r.nodes6 or r.with_nodes6], [])

    async def test_both_directions_ipv6(self) -> None:
        """BEP 32: the same over the IPv6 DHT, whose answers name nodes in ``nodes6``."""
        libtorrent()
        if not has_ipv6_loopback():
            raise SkipTest("this host cannot bind ::1 (no IPv6 loopback), for the IPv6 DHT")
        met = await self.find_each_other("::1", "nodes6")
        self.assertEqual(met.service.family, 6)
        self.assertEqual([r for r in met.replies if r.nodes or r.with_nodes], [])
