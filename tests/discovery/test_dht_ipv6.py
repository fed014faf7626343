"""The DHT over IPv6 (BEP 32) and on both families at once.

Protocol answers on a RecordingUDPTransport (``nodes6``, ``want``, IPv6
``values``), services on a MemoryDatagramNetwork with IPv6 addresses
(``fd00::/8``, never sent anywhere) and :class:`DualStackDHT` on it;
real sockets on ``::1`` and ``127.0.0.1`` last (skipped without ``::1``).
"""

from __future__ import annotations

import errno
import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from bitfitech.discovery.kademlia.bencode import decode, encode
from bitfitech.discovery.kademlia.dualstack import DualStackDHT
from bitfitech.discovery.kademlia.ids import network_info_hash
from bitfitech.discovery.kademlia.krpc import (
    COMPACT_NODE6_SIZE,
    AnnouncePeer,
    FindNode,
    GetPeers,
    NodeInfo,
    Ping,
    Response,
    decode_message,
    encode_message,
)
from bitfitech.discovery.kademlia.protocol import DHTProtocol
from bitfitech.discovery.kademlia.routing import RoutingTable
from bitfitech.discovery.kademlia.service import (
    CONTACTS6_SETTING,
    CONTACTS_SETTING,
    NODE_ID_SETTING,
    DHTService,
    DHTTiming,
)
from bitfitech.discovery.kademlia.store import PeerStore, TokenIssuer
from bitfitech.discovery.service import dht_bind_hosts
from bitfitech.listening import DUAL_STACK
from bitfitech.testing import (
    HANG_GUARD,
    DatagramNetworkReactor,
    MemoryDatagramNetwork,
    RecordingUDPTransport,
    global_reactor,
    has_ipv6_loopback,
    poll_until,
    run_for,
)

from .test_dht_service import MemorySettings

INFO_HASH = network_info_hash("test", "BTC/USD")
TIMING = DHTTiming(check_interval=1.0, min_lookup_gap=5.0, bootstrap_retry=1.0)
OWN = b"\x00" * 20
THEIRS = b"\xf0" + b"\x01" * 19
SOURCE6 = ("fd00::2", 7000)


def confirmed(routing: RoutingTable, count: int, prefix: str, first: int = 0xF0) -> list[bytes]:
    """Put C{count} answering contacts at C{prefix}N into C{routing}; their ids."""
    ids = [bytes([first, n]) + b"\x05" * 18 for n in range(count)]
    for n, node_id in enumerate(ids):
        routing.heard_from(node_id, (f"{prefix}{n + 1}", 6881), 0.0, responded=True)
    return ids


def answer_values(data: bytes) -> dict[bytes, Any]:
    """The ``r`` dictionary of an encoded answer, as on the wire."""
    message = decode(data)
    assert isinstance(message, dict)
    values = message[b"r"]
    assert isinstance(values, dict)
    return values


class ProtocolTests(SynchronousTestCase):
    """One protocol's answers by family and ``want``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.routing = RoutingTable(OWN, 0.0)
        self.store = PeerStore()

    def make(self, family: int, **kwargs: Any) -> DHTProtocol:
        protocol = DHTProtocol(
            self.clock, OWN, self.routing, self.store, TokenIssuer(0.0),
            rng=random.Random(0), family=family, **kwargs,
        )  # fmt: skip
        host = "fd00::1" if family == 6 else "10.0.0.1"
        self.transport = RecordingUDPTransport(host, 6881)
        protocol.makeConnection(self.transport)
        return protocol

    def ask(self, protocol: DHTProtocol, query: Any, source: tuple[str, int]) -> bytes:
        """Send C{query}; the raw datagram of the answer (our own pings left out)."""
        protocol.datagramReceived(encode_message(query), source)
        answers = [
            (data, to)
            for data, to in self.transport.clear()
            if not isinstance(decode_message(data), Ping)
        ]
        [(data, to)] = answers
        self.assertEqual(to, source)
        return data

    def test_family_checked(self) -> None:
        """A protocol is of family 4 or 6."""
        self.assertRaises(ValueError, self.make, 5)

    def test_ipv6_answers_with_nodes6(self) -> None:
        """
        Over IPv6 with no ``want``, find_node is answered with ``nodes6``
        only: 38 bytes a node, the IPv6 contacts of the table.
        """
        protocol = self.make(6)
        ids = confirmed(self.routing, 3, "fd00::1:")
        data = self.ask(protocol, FindNode(b"t1", THEIRS, THEIRS), SOURCE6)
        values = answer_values(data)
        self.assertNotIn(b"nodes", values)
        self.assertEqual(len(values[b"nodes6"]), 3 * COMPACT_NODE6_SIZE)
        reply = decode_message(data)
        assert isinstance(reply, Response)
        self.assertEqual(
            sorted((n.node_id, n.host) for n in reply.nodes6),
            sorted((node_id, f"fd00::1:{n + 1}") for n, node_id in enumerate(ids)),
        )

    def test_want_both_families(self) -> None:
        """``want`` n4 and n6 over IPv4: ``nodes`` from our table, ``nodes6`` from the sibling's."""
        sibling_nodes = (NodeInfo(b"\xe0" + b"\x06" * 19, "fd00::9", 6881),)
        asked: list[bytes] = []

        def sibling(target: bytes) -> tuple[NodeInfo, ...]:
            asked.append(target)
            return sibling_nodes

        protocol = self.make(4, sibling=sibling)
        confirmed(self.routing, 2, "10.1.0.")
        query = FindNode(b"t1", THEIRS, THEIRS, want=frozenset({"n4", "n6"}))
        reply = decode_message(self.ask(protocol, query, ("10.0.0.2", 7000)))
        assert isinstance(reply, Response)
        self.assertEqual({n.host for n in reply.nodes}, {"10.1.0.1", "10.1.0.2"})
        self.assertEqual(reply.nodes6, sibling_nodes)
        self.assertEqual(asked, [THEIRS])
        # want n4 only, over IPv6: nodes, and no nodes6.
        protocol6 = self.make(6, sibling=lambda target: (NodeInfo(THEIRS, "10.9.9.9", 6881),))
        get_peers = GetPeers(b"t2", THEIRS, INFO_HASH, want=frozenset({"n4"}))
        values = answer_values(self.ask(protocol6, get_peers, SOURCE6))
        self.assertNotIn(b"nodes6", values)
        self.assertEqual(len(values[b"nodes"]), 26)
        self.assertIn(b"token", values)

    def test_other_family_not_run(self) -> None:
        """
        ``want`` n6 of a node without IPv6: ``nodes`` (empty, BEP 5 always
        has it) and no ``nodes6``.
        """
        protocol = self.make(4)
        query = FindNode(b"t1", THEIRS, THEIRS, want=frozenset({"n6"}))
        values = answer_values(self.ask(protocol, query, ("10.0.0.2", 7000)))
        self.assertEqual(values[b"nodes"], b"")
        self.assertNotIn(b"nodes6", values)

    def test_ipv6_values_and_announce(self) -> None:
        """
        An announce over IPv6 stores the IPv6 address; get_peers over IPv6
        returns IPv6 peers only (18 bytes each), over IPv4 IPv4 ones.
        """
        protocol = self.make(6)
        self.store.add(INFO_HASH, "10.5.5.5", 9000, 0.0)
        data = self.ask(protocol, GetPeers(b"t1", THEIRS, INFO_HASH), SOURCE6)
        reply = decode_message(data)
        assert isinstance(reply, Response) and reply.token is not None
        self.assertEqual(reply.values, ())
        announce = AnnouncePeer(b"t2", THEIRS, INFO_HASH, 9001, reply.token)
        answer = decode_message(self.ask(protocol, announce, SOURCE6))
        self.assertEqual(answer, Response(b"t2", OWN))
        data = self.ask(protocol, GetPeers(b"t3", THEIRS, INFO_HASH), SOURCE6)
        reply = decode_message(data)
        assert isinstance(reply, Response)
        self.assertEqual(reply.values, (("fd00::2", 9001),))
        self.assertEqual([len(v) for v in answer_values(data)[b"values"]], [18])

    @settings(max_examples=200)
    @given(
        st.sampled_from([4, 6]),
        st.sampled_from([FindNode, GetPeers]),
        st.lists(st.sampled_from([b"n4", b"n6", b"n5", b"", b"x" * 40]), max_size=4),
        st.sampled_from([SOURCE6, ("10.0.0.2", 7000), ("::ffff:10.0.0.2", 7000)]),
        st.binary(max_size=64),
    )
    def test_any_want_from_anywhere(
        self,
        family: int,
        kind: type[FindNode] | type[GetPeers],
        want: list[bytes],
        source: tuple[str, int],
        garbage: bytes,
    ) -> None:
        """
        Whatever ``want`` a query carries, from whichever family, the
        answer decodes and names only nodes of each family in its key;
        garbage never raises.
        """
        self.routing = RoutingTable(OWN, 0.0)
        protocol = self.make(family, sibling=lambda target: ())
        confirmed(self.routing, 2, "fd00::1:" if family == 6 else "10.1.0.")
        query = encode(
            {b"t": b"t1", b"y": b"q", b"q": b"find_node" if kind is FindNode else b"get_peers",
             b"a": {b"id": THEIRS, b"target": THEIRS, b"info_hash": THEIRS, b"want": want}}
        )  # fmt: skip
        protocol.datagramReceived(query, source)
        protocol.datagramReceived(garbage, source)
        self.assertEqual(protocol.counters["internal_errors"], 0)
        for data, _ in self.transport.clear():
            reply = decode_message(data)
            if isinstance(reply, Response):
                self.assertTrue(all(":" not in n.host for n in reply.nodes))
                self.assertTrue(all(":" in n.host for n in reply.nodes6))

    def test_only_own_family_enters_the_table(self) -> None:
        """A query from an address of the other family is answered, its sender not added."""
        protocol = self.make(6)
        protocol.datagramReceived(encode_message(Ping(b"t1", THEIRS)), ("10.0.0.2", 7000))
        self.assertEqual(len(self.routing), 0)
        protocol.datagramReceived(encode_message(Ping(b"t2", THEIRS)), SOURCE6)
        self.assertIn(THEIRS, self.routing)


class ServiceTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.network = MemoryDatagramNetwork(self.clock, random.Random(1), latency=0.01)
        self.reactor: Any = self.network.reactor()
        self.found: dict[str, list[tuple[str, int]]] = {}
        self.services: list[Any] = []

    def tearDown(self) -> None:
        for service in self.services:
            if service.running:
                service.stopService()

    def options(self, name: str, p2p: int, **changes: Any) -> dict[str, Any]:
        found = self.found.setdefault(name, [])
        options: dict[str, Any] = dict(
            info_hashes={"BTC/USD": INFO_HASH},
            p2p_port=lambda: p2p,
            found=lambda h, p, _n, _markets: found.append((h, p)),
            wants_peers=lambda _market: False,
            rng=random.Random(name),
            timing=TIMING,
        )
        options.update(changes)
        return options

    def make(self, host: str, *, p2p: int = 9000, **changes: Any) -> DHTService:
        service = DHTService(
            changes.pop("reactor", self.reactor), port=6881, host=host,
            **self.options(host, p2p, **changes),
        )  # fmt: skip
        self.services.append(service)
        return service

    def make_dual(
        self, name: str, hosts: tuple[str, ...], *, p2p: int = 9000, **changes: Any
    ) -> DualStackDHT:
        dual = DualStackDHT(
            changes.pop("reactor", self.reactor), hosts=hosts, port=changes.pop("port", 6881),
            **self.options(name, p2p, **changes),
        )  # fmt: skip
        self.services.append(dual)
        return dual


class IPv6ServiceTests(ServiceTestCase):
    """One family: the IPv6 DHT alone."""

    def test_family_of_the_host(self) -> None:
        """The bind address sets the family; a host name is refused."""
        self.assertEqual(self.make("fd00::1").family, 6)
        self.assertEqual(self.make("10.0.0.1").family, 4)
        self.assertRaises(ValueError, self.make, "example.org")

    def test_three_nodes_find_each_other(self) -> None:
        """Through a bootstrap node over IPv6, announces and lookups carry IPv6 addresses."""
        sent_to: list[tuple[str, int]] = []
        send = self.network.send

        def recording(packet: bytes, source: tuple[str, int], target: tuple[str, int]) -> None:
            sent_to.append(target)
            send(packet, source, target)

        self.network.send = recording  # type: ignore[method-assign]
        a = self.make("fd00::1", p2p=9001)
        a.startService()
        b = self.make("fd00::2", p2p=9002, bootstrap=[("fd00::1", 6881), ("10.0.0.1", 6881)])
        b.startService()
        c = self.make("fd00::3", p2p=9003, bootstrap=[("fd00::1", 6881)])
        c.startService()
        run_for(self.clock, 60)
        self.assertIn(("fd00::3", 9003), self.found["fd00::2"])
        self.assertIn(("fd00::2", 9002), self.found["fd00::3"])
        # c learned b from a's nodes6 and b from c: the lookups went over IPv6 alone.
        assert c.routing_table is not None
        self.assertEqual({contact.host for contact in c.routing_table.closest(OWN, 8)},
                         {"fd00::1", "fd00::2"})  # fmt: skip
        # The IPv4 bootstrap address is the IPv4 DHT's: never sent to.
        self.assertNotIn(("10.0.0.1", 6881), sent_to)
        self.assertIn(("fd00::1", 6881), sent_to)
        status = b.status()
        self.assertEqual((status["family"], status["host"]), ("ipv6", "fd00::2"))
        self.assertEqual(status["routing_table_size"], 2)

    def test_contacts_saved_per_family(self) -> None:
        """IPv6 contacts are saved under their own key and bootstrap the next start."""
        self.make("fd00::1").startService()
        settings = MemorySettings()
        b = self.make("fd00::2", bootstrap=[("fd00::1", 6881)], settings=settings)
        b.startService()
        run_for(self.clock, 5)
        self.successResultOf(b.stopService())
        self.assertEqual(json.loads(settings.values[CONTACTS6_SETTING]), [["fd00::1", 6881]])
        self.assertNotIn(CONTACTS_SETTING, settings.values)
        # An IPv4 DHT with those settings does not take IPv6 contacts.
        settings.values[CONTACTS_SETTING] = json.dumps([["fd00::1", 6881]])
        again = self.make("fd00::2", settings=settings)
        again.startService()
        run_for(self.clock, 5)
        self.assertEqual(again.status()["routing_table_size"], 1)

    def test_host_names_resolved_to_ipv6(self) -> None:
        """A bootstrap host name is resolved to its IPv6 address (AAAA) for the IPv6 DHT."""
        reactor = ResolvingReactor(self.network, {"seed.example": "fd00::1"})
        self.make("fd00::1").startService()
        b = self.make("fd00::2", bootstrap=[("seed.example", 6881)], reactor=reactor)
        b.startService()
        run_for(self.clock, 5)
        self.assertEqual(reactor.resolved, [("seed.example", "IPv6Address")])
        self.assertEqual(b.status()["routing_table_size"], 1)


class ResolvingReactor(DatagramNetworkReactor):
    """A DatagramNetworkReactor whose name resolver knows some IPv6 names."""

    def __init__(self, network: MemoryDatagramNetwork, names: dict[str, str]) -> None:
        super().__init__(network)
        self.names = names
        self.resolved: list[tuple[str, str]] = []
        self.nameResolver = self

    def resolveHostName(
        self, receiver: Any, name: str, port: int = 0, addressTypes: Any = None, **_: Any
    ) -> Any:
        from twisted.internet.address import IPv6Address

        self.resolved.append((name, ",".join(t.__name__ for t in addressTypes or ())))
        receiver.resolutionBegan(None)
        if name in self.names:
            receiver.addressResolved(IPv6Address("UDP", self.names[name], port))
        receiver.resolutionComplete()
        return None


class DualStackTests(ServiceTestCase):
    """Both families at once."""

    def test_bind_hosts(self) -> None:
        """No host: both families' every address; a host narrows to its family."""
        self.assertEqual(dht_bind_hosts(""), DUAL_STACK)
        self.assertEqual(dht_bind_hosts("::"), ("::",))
        self.assertEqual(dht_bind_hosts("0.0.0.0"), ("0.0.0.0",))
        self.assertEqual(dht_bind_hosts("127.0.0.1"), ("127.0.0.1",))
        self.assertEqual(dht_bind_hosts("::1"), ("::1",))

    def test_one_dht_per_family(self) -> None:
        """Two hosts of one family are refused."""
        self.assertRaises(ValueError, self.make_dual, "x", ("10.0.0.1", "10.0.0.2"))
        self.assertRaises(ValueError, self.make_dual, "x", ())

    def test_both_families_find_each_other(self) -> None:
        """
        Two dual-stack nodes bootstrapped over both families find each
        other's announce in each; both families share one node id, and a
        query's ``want`` is answered from the other family's table.
        """
        settings = MemorySettings()
        a = self.make_dual("a", ("10.0.0.1", "fd00::1"), p2p=9001, settings=settings)
        a.startService()
        b = self.make_dual("b", ("10.0.0.2", "fd00::2"), p2p=9002,
                           bootstrap=[("10.0.0.1", 6881), ("fd00::1", 6881)])  # fmt: skip
        b.startService()
        run_for(self.clock, 60)
        self.assertEqual(set(self.found["b"]), {("10.0.0.1", 9001), ("fd00::1", 9001)})
        self.assertEqual(set(self.found["a"]), {("10.0.0.2", 9002), ("fd00::2", 9002)})
        four, six = a.family(4), a.family(6)
        assert four is not None and six is not None
        self.assertEqual(four.node_id, six.node_id)
        self.assertEqual(settings.values[NODE_ID_SETTING], a.node_id.hex())  # type: ignore[union-attr]
        status = a.status()
        self.assertEqual(set(status["families"]), {"ipv4", "ipv6"})
        self.assertEqual(status["routing_table_size"], 2)
        self.assertEqual(status["families"]["ipv6"]["routing_table_size"], 1)
        self.assertEqual(status["peers_found"], 2)
        self.assertEqual(status["peers_found_by_market"], {"BTC/USD": 2})
        self.assertEqual(status["port"], 6881)
        self.assertIsNotNone(status["announced_at"])
        # Asked over IPv4 for both families' nodes, a names b in each.
        asker = Recorder()
        port = self.network.listenUDP(7000, asker, interface="10.0.0.3")
        want = FindNode(b"t1", THEIRS, OWN, read_only=True, want=frozenset({"n4", "n6"}))
        port.write(encode_message(want), ("10.0.0.1", 6881))
        run_for(self.clock, 1)
        [(data, source)] = asker.received
        self.assertEqual(source, ("10.0.0.1", 6881))
        reply = decode_message(data)
        assert isinstance(reply, Response)
        self.assertEqual([n.host for n in reply.nodes], ["10.0.0.2"])
        self.assertEqual([n.host for n in reply.nodes6], ["fd00::2"])

    def test_ipv4_announces_the_mapped_port(self) -> None:
        """
        Behind a router, the IPv4 DHT announces the router's port that
        forwards to ours; the IPv6 one announces ours (no NAT).
        """
        a = self.make_dual("a", ("10.0.0.1", "fd00::1"))
        a.startService()
        b = self.make_dual("b", ("10.0.0.2", "fd00::2"), p2p=9002, ipv4_p2p_port=lambda: 40002,
                           bootstrap=[("10.0.0.1", 6881), ("fd00::1", 6881)])  # fmt: skip
        b.startService()
        run_for(self.clock, 60)
        self.assertEqual(set(self.found["a"]), {("10.0.0.2", 40002), ("fd00::2", 9002)})

    def test_stop(self) -> None:
        """Stopping stops both families and closes both ports."""
        a = self.make_dual("a", ("10.0.0.1", "fd00::1"))
        a.startService()
        self.assertEqual(len(self.network.ports), 2)
        self.successResultOf(a.stopService())
        self.assertEqual(self.network.ports, {})
        self.assertEqual(a.running_services, [])
        self.assertEqual(a.listen_port, 0)

    def test_second_family_takes_the_first_port_number(self) -> None:
        """With port 0 the IPv6 DHT binds the number the OS gave IPv4, or any if it is taken."""
        a = self.make_dual("a", ("10.0.0.1", "fd00::1"), port=0)
        a.startService()
        four, six = a.family(4), a.family(6)
        assert four is not None and six is not None
        self.assertEqual(four.listen_port, six.listen_port)
        taken = self.network.listenUDP(0, Recorder(), interface="fd00::2")
        self.network._next_port = taken.port  # the next port the OS gives IPv4
        b = self.make_dual("b", ("10.0.0.2", "fd00::2"), port=0)
        b.startService()
        b4, b6 = b.family(4), b.family(6)
        assert b4 is not None and b6 is not None
        self.assertEqual(b4.listen_port, taken.port)
        self.assertNotEqual(b6.listen_port, taken.port)


class Recorder(DatagramProtocol):
    """A datagram protocol that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, Any]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, addr))


class FailingReactor(DatagramNetworkReactor):
    """Binding one family fails with C{error}."""

    def __init__(self, network: MemoryDatagramNetwork, family: int, error: int) -> None:
        super().__init__(network)
        self.family = family
        self.error = error
        self.listenUDP = self._listen  # type: ignore[assignment]

    def _listen(self, port: int, protocol: Any, interface: str = "", **kwargs: Any) -> Any:
        if (":" in interface) == (self.family == 6):
            raise CannotListenError(interface, port, OSError(self.error, "refused here"))
        return self.network.listenUDP(port, protocol, interface, **kwargs)


class MissingFamilyTests(ServiceTestCase):
    """A host without one family."""

    def test_no_ipv6_runs_ipv4(self) -> None:
        """Without IPv6 the dual-stack DHT runs over IPv4 alone, with a warning."""
        reactor = FailingReactor(self.network, 6, errno.EAFNOSUPPORT)
        dual = self.make_dual("a", DUAL_STACK, reactor=reactor)
        dual.startService()
        self.assertEqual([s.family for s in dual.running_services], [4])
        self.assertEqual(list(dual.status()["families"]), ["ipv4"])
        # Asked for IPv6 nodes, it leaves nodes6 out: it runs no IPv6 DHT.
        asker = Recorder()
        port = self.network.listenUDP(7000, asker, interface="10.0.0.3")
        want = FindNode(b"t1", THEIRS, OWN, read_only=True, want=frozenset({"n6"}))
        port.write(encode_message(want), ("0.0.0.0", 6881))
        run_for(self.clock, 1)
        [(data, _)] = asker.received
        self.assertEqual(answer_values(data)[b"nodes"], b"")
        self.assertNotIn(b"nodes6", answer_values(data))

    def test_no_ipv4_runs_ipv6(self) -> None:
        """An IPv6-only host runs the IPv6 DHT alone."""
        reactor = FailingReactor(self.network, 4, errno.EADDRNOTAVAIL)
        dual = self.make_dual("a", DUAL_STACK, reactor=reactor)
        dual.startService()
        self.assertEqual([s.family for s in dual.running_services], [6])

    def test_busy_port_stops_the_start(self) -> None:
        """A busy port of either family stops the start, and nothing stays bound."""
        reactor = FailingReactor(self.network, 6, errno.EADDRINUSE)
        dual = self.make_dual("a", DUAL_STACK, reactor=reactor)
        self.assertRaises(CannotListenError, dual.startService)
        self.assertEqual(self.network.ports, {})
        self.assertFalse(dual.running)

    def test_asked_family_missing(self) -> None:
        """A family the user named (``--host ::1``) that cannot bind stops the start."""
        reactor = FailingReactor(self.network, 6, errno.EAFNOSUPPORT)
        dual = self.make_dual("a", ("::1",), reactor=reactor)
        self.assertRaises(CannotListenError, dual.startService)


class RealSocketTests(TestCase):
    """Real UDP on ``::1`` and ``127.0.0.1``: the IPv6 socket stands beside the IPv4 one."""

    timeout = 60

    def setUp(self) -> None:
        if not has_ipv6_loopback():
            raise SkipTest("no IPv6 loopback (::1) here")

    async def test_two_dual_stack_nodes(self) -> None:
        """Two dual-stack DHTs on loopback, one bootstrapped over IPv6 only, find each other."""
        reactor = global_reactor()
        found: dict[str, set[tuple[str, int]]] = {"a": set(), "b": set()}
        fast = DHTTiming(query_timeout=1.0, check_interval=0.2, min_lookup_gap=0.5,
                         bootstrap_retry=0.2)  # fmt: skip

        def make(name: str, p2p: int, bootstrap: list[tuple[str, int]]) -> DualStackDHT:
            dual = DualStackDHT(
                reactor, hosts=("127.0.0.1", "::1"), port=0, info_hashes={"BTC/USD": INFO_HASH},
                p2p_port=lambda: p2p, found=lambda h, p, _n, _m: found[name].add((h, p)),
                wants_peers=lambda _market: True, bootstrap=bootstrap, rng=random.Random(name),
                timing=fast,
            )  # fmt: skip
            dual.startService()
            self.addCleanup(dual.stopService)
            return dual

        a = make("a", 9001, [])
        six = a.family(6)
        assert six is not None
        self.assertEqual(six.status()["host"], "::1")
        make("b", 9002, [("::1", six.listen_port)])
        await poll_until(
            reactor,
            lambda: ("::1", 9002) in found["a"] and ("::1", 9001) in found["b"],
            HANG_GUARD,
            "both found over IPv6",
        )
        self.assertNotIn(("127.0.0.1", 9001), found["b"])  # no IPv4 bootstrap: no IPv4 DHT link
