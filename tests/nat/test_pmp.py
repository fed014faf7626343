"""PCP and NAT-PMP mappings: the protocol on a fake clock, the mapper against a fake router.

:class:`ProtocolTests` drive :class:`~bitfitech.nat.pmp.PortControlProtocol`
through a recording transport and a ``Clock`` (retransmissions, answers,
refusals, cancellation).  :class:`MapperTests` run
:class:`~bitfitech.nat.pmp.PortControlMapper` against
:class:`~tests.nat.fakes.FakePortControlRouter` on a UDP port of
127.0.0.1, on the real reactor, with a short retransmission schedule.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bitfitech.nat.gateway import guess_gateways, parse_proc_net_route
from bitfitech.nat.mapping import NATPMP, PCP, TCP, UDP, GatewayRefused, Mapping, NoGateway
from bitfitech.nat.pmp import GatewayUnreachable, PortControlMapper, PortControlProtocol
from bitfitech.nat.portcontrol import (
    NATPMP_OP_MAP_UDP,
    PcpMapRequest,
    PmpAddressRequest,
    PmpAddressResponse,
    PmpMapRequest,
    Response,
    decode_request,
    encode_request,
    encode_response,
)
from bitfitech.nat.portcontrol import TCP as IPPROTO_TCP
from bitfitech.nat.portcontrol import UDP as IPPROTO_UDP
from bitfitech.testing import global_reactor

from .fakes import EXTERNAL_ADDRESS, SILENT, FakePortControlRouter

SHORT = (0.05, 0.1)
"""Two sends, for a router that is silent."""


class ConnectedTransport:
    """A connected UDP transport that records what is written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, datagram: bytes, addr: Any = None) -> None:
        assert addr is None, "the socket is connected"
        self.written.append(datagram)


def take_all(response: Response) -> bool:
    return True


class ProtocolTests(SynchronousTestCase):
    """One request at a time, retransmitted on the clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.protocol = PortControlProtocol(self.clock, (0.25, 0.5, 1.0))
        self.transport = ConnectedTransport()
        self.protocol.transport = self.transport  # type: ignore[assignment]
        self.request = encode_request(PmpAddressRequest())

    def test_retransmits_then_gives_up(self) -> None:
        d = self.protocol.exchange(PmpAddressRequest(), take_all, NATPMP)
        self.assertEqual(len(self.transport.written), 1)
        self.clock.advance(0.25)
        self.assertEqual(len(self.transport.written), 2)
        self.clock.advance(0.5)
        self.assertEqual(len(self.transport.written), 3)
        self.assertNoResult(d)
        self.clock.advance(1.0)
        failure = self.failureResultOf(d, NoGateway)
        self.assertIn("no answer", str(failure.value))
        self.assertEqual(self.transport.written, [self.request] * 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answer_stops_retransmission(self) -> None:
        d = self.protocol.exchange(PmpAddressRequest(), take_all, NATPMP)
        answer = PmpAddressResponse(0, 5, EXTERNAL_ADDRESS)
        self.protocol.datagramReceived(encode_response(answer), ("127.0.0.1", 5351))
        self.assertEqual(self.successResultOf(d), answer)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unasked_and_undecodable_are_dropped(self) -> None:
        d = self.protocol.exchange(PmpAddressRequest(), lambda r: False, NATPMP)
        self.protocol.datagramReceived(b"\x07garbage", ("127.0.0.1", 5351))
        answer = PmpAddressResponse(0, 5, EXTERNAL_ADDRESS)
        self.protocol.datagramReceived(encode_response(answer), ("127.0.0.1", 5351))
        self.assertNoResult(d)
        self.assertEqual(self.protocol.dropped, 2)
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_port_unreachable_fails_at_once(self) -> None:
        d = self.protocol.exchange(PmpAddressRequest(), take_all, PCP)
        self.protocol.connectionRefused()
        self.failureResultOf(d, GatewayUnreachable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_stops_retransmission(self) -> None:
        d = self.protocol.exchange(PmpAddressRequest(), take_all, NATPMP)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(len(self.transport.written), 1)

    def test_one_request_at_a_time(self) -> None:
        d = self.protocol.exchange(PmpAddressRequest(), take_all, NATPMP)
        with self.assertRaises(RuntimeError):
            self.protocol.exchange(PmpAddressRequest(), take_all, NATPMP)
        self.protocol.close()
        self.failureResultOf(d, CancelledError)


class GatewayTests(SynchronousTestCase):
    """Finding the default gateway."""

    TABLE = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        "eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
    )

    def test_lowest_metric_default_route(self) -> None:
        self.assertEqual(parse_proc_net_route(self.TABLE), "10.0.0.1")

    def test_no_default_route(self) -> None:
        self.assertIsNone(parse_proc_net_route(self.TABLE.splitlines()[0] + "\n"))

    def test_guess_first_host_of_private_networks(self) -> None:
        guesses = guess_gateways(
            [("127.0.0.1", 8), ("192.168.1.20", 24), ("93.184.216.34", 24), ("10.1.2.3", 16)]
        )
        self.assertEqual(guesses, ["192.168.1.1", "10.1.0.1"])


class MapperTestCase(TestCase):
    """A fake NAT-PMP/PCP router on 127.0.0.1, and mappers for it."""

    def setUp(self) -> None:
        self.reactor = global_reactor()
        self.router = self.start_router()

    def start_router(self, **options: Any) -> FakePortControlRouter:
        router = FakePortControlRouter(**options)
        router.listen(self.reactor)
        self.addCleanup(router.close)
        return router

    def mapper_for(self, router: FakePortControlRouter, **options: Any) -> PortControlMapper:
        # Long waits where an answer is expected (a retransmission on a busy
        # machine would change the counts), short ones where silence is.
        options.setdefault("retransmits", (10.0,))
        mapper = PortControlMapper(self.reactor, "127.0.0.1", port=router.port, **options)
        self.addCleanup(mapper.close)
        return mapper


class MapperTests(MapperTestCase):
    """The mapper against a fake NAT-PMP/PCP router on 127.0.0.1."""

    async def _pcp(self) -> None:
        mapper = self.mapper_for(self.router)
        mapping = await mapper.map(3000, 3000, 7200)
        self.assertEqual(mapping, Mapping(PCP, 3000, 3000, EXTERNAL_ADDRESS, 7200))
        self.assertEqual(self.router.mappings, {3000: ("127.0.0.1", 3000, 7200)})
        self.assertEqual(mapper.version, PCP)

    def test_mapped_with_pcp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._pcp())

    async def _natpmp(self) -> None:
        router = self.start_router(speaks=("natpmp",), max_lifetime=3600)
        mapper = self.mapper_for(router)
        mapping = await mapper.map(3000, 3000, 7200)
        self.assertEqual(mapping, Mapping(NATPMP, 3000, 3000, EXTERNAL_ADDRESS, 3600))
        self.assertEqual(mapper.version, NATPMP)
        # Known to speak NAT-PMP only: no PCP request the second time.
        before = len(router.received)
        await mapper.map(3000, 3000, 7200)
        self.assertEqual(len(router.received) - before, 2)  # address, then mapping

    def test_falls_back_to_natpmp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._natpmp())

    async def _pcp_only(self) -> None:
        router = self.start_router(speaks=("pcp",))
        mapping = await self.mapper_for(router, versions=(PCP,)).map(3000, 3000, 60)
        self.assertEqual((mapping.method, router.mappings[3000][1]), (PCP, 3000))
        with self.assertRaises(GatewayRefused) as caught:
            await self.mapper_for(router, versions=(NATPMP,)).map(3001, 3001, 60)
        self.assertEqual(caught.exception.code, 1)
        self.assertIn("unsupported version", str(caught.exception))

    def test_versions_allowed(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._pcp_only())

    async def _taken(self) -> None:
        self.router.taken.add(3000)
        mapping = await self.mapper_for(self.router).map(3000, 3000, 7200)
        self.assertEqual(mapping.external_port, 40000)

    def test_port_taken_gets_the_routers_choice(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._taken())

    async def _renew(self) -> None:
        mapper = self.mapper_for(self.router)
        first = await mapper.map(3000, 3000, 7200)
        again = await mapper.map(3000, first.external_port, 7200)
        self.assertEqual(again, first)
        self.assertEqual(len(self.router.mappings), 1)  # the same nonce: the same mapping

    def test_renewal_keeps_the_mapping(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._renew())

    async def _unmap(self, speaks: tuple[str, ...]) -> None:
        router = self.start_router(speaks=speaks)
        mapper = self.mapper_for(router)
        mapping = await mapper.map(3000, 3000, 7200)
        self.assertEqual(len(router.mappings), 1)
        await mapper.unmap(mapping)
        self.assertEqual(router.mappings, {})

    def test_removed_with_pcp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._unmap(("pcp",)))

    def test_removed_with_natpmp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._unmap(("natpmp",)))

    async def _refused(self, speaks: tuple[str, ...], method: str) -> None:
        router = self.start_router(speaks=speaks)
        router.refuse(2)
        with self.assertRaises(GatewayRefused) as caught:
            await self.mapper_for(router).map(3000, 3000, 7200)
        self.assertEqual((caught.exception.method, caught.exception.code), (method, 2))
        self.assertIn("not authorized", str(caught.exception))

    def test_refused_by_pcp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._refused(("pcp", "natpmp"), PCP))

    def test_refused_by_natpmp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._refused(("natpmp",), NATPMP))

    async def _silent(self) -> None:
        mapper = self.mapper_for(self.router, retransmits=SHORT)
        await mapper.map(3000, 3000, 7200)
        self.router.mode = SILENT
        before = len(self.router.received)
        with self.assertRaises(NoGateway) as caught:
            await mapper.map(3000, 3000, 7200)
        self.assertNotIsInstance(caught.exception, GatewayUnreachable)
        # Heard PCP before: two sends of PCP, no NAT-PMP try.
        self.assertEqual(len(self.router.received) - before, 2)
        self.assertIsNone(mapper.version)  # forgotten: the next try starts afresh

    def test_router_stops_answering(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._silent())

    async def _silent_from_start(self) -> None:
        self.router.mode = SILENT
        with self.assertRaises(NoGateway):
            await self.mapper_for(self.router, retransmits=SHORT).map(3000, 3000, 7200)
        # Never heard: PCP twice, then NAT-PMP's address request twice.
        self.assertEqual([d[0] for d in self.router.received], [2, 2, 0, 0])

    def test_silent_router_asked_both_ways(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._silent_from_start())

    async def _vanished(self) -> None:
        mapper = self.mapper_for(self.router, retransmits=(30.0,))
        await mapper.map(3000, 3000, 7200)
        await self.router.vanish()
        # The host answers "port unreachable": no need to wait out 30 s.
        with self.assertRaises(GatewayUnreachable):
            await mapper.map(3000, 3000, 7200)

    def test_router_vanishes(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._vanished())

    async def _no_gateway(self) -> None:
        mapper = PortControlMapper(self.reactor, find_gateway=lambda: None)
        self.addCleanup(mapper.close)
        with self.assertRaises(NoGateway) as caught:
            await mapper.map(3000, 3000, 7200)
        self.assertIn("no default gateway", str(caught.exception))

    def test_no_default_gateway(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._no_gateway())


class ProtocolMapperTests(MapperTestCase):
    """UDP mappings, and TCP and UDP mappings of one port kept apart."""

    def requests(self, router: FakePortControlRouter) -> list[Any]:
        return [decode_request(datagram) for datagram in router.received]

    async def _udp_pcp(self) -> None:
        mapper = self.mapper_for(self.router)
        mapping = await mapper.map(3000, 3000, 7200, protocol=UDP)
        self.assertEqual(mapping, Mapping(PCP, 3000, 3000, EXTERNAL_ADDRESS, 7200, UDP))
        self.assertEqual(self.router.tables, {TCP: {}, UDP: {3000: ("127.0.0.1", 3000, 7200)}})
        (request,) = self.requests(self.router)
        self.assertIsInstance(request, PcpMapRequest)
        self.assertEqual(request.protocol, IPPROTO_UDP)
        renewed = await mapper.map(3000, 3000, 7200, protocol=UDP)
        self.assertEqual(renewed, mapping)
        self.assertEqual(len(self.router.tables[UDP]), 1)  # the same nonce: the same mapping
        await mapper.unmap(mapping)
        self.assertEqual(self.router.tables, {TCP: {}, UDP: {}})
        self.assertEqual(self.router.map_requests(UDP), 3)

    def test_udp_with_pcp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._udp_pcp())

    async def _udp_natpmp(self) -> None:
        router = self.start_router(speaks=("natpmp",), max_lifetime=3600)
        mapper = self.mapper_for(router)
        mapping = await mapper.map(3000, 3000, 7200, protocol=UDP)
        self.assertEqual(mapping, Mapping(NATPMP, 3000, 3000, EXTERNAL_ADDRESS, 3600, UDP))
        self.assertEqual(router.tables, {TCP: {}, UDP: {3000: ("127.0.0.1", 3000, 3600)}})
        opcodes = [r.opcode for r in self.requests(router) if isinstance(r, PmpMapRequest)]
        self.assertEqual(opcodes, [NATPMP_OP_MAP_UDP])
        await mapper.unmap(mapping)
        self.assertEqual(router.tables, {TCP: {}, UDP: {}})

    def test_udp_with_natpmp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._udp_natpmp())

    async def _both(self, speaks: tuple[str, ...], method: str) -> None:
        router = self.start_router(speaks=speaks)
        mapper = self.mapper_for(router)
        tcp = await mapper.map(3000, 3000, 7200)
        udp = await mapper.map(3000, 3000, 7200, protocol=UDP)
        self.assertEqual(
            (tcp.method, tcp.protocol, udp.method, udp.protocol), (method, TCP, method, UDP)
        )
        self.assertEqual((tcp.external_port, udp.external_port), (3000, 3000))
        self.assertEqual(list(router.tables[TCP]), [3000])
        self.assertEqual(list(router.tables[UDP]), [3000])
        await mapper.unmap(udp)
        self.assertEqual((list(router.tables[TCP]), router.tables[UDP]), ([3000], {}))
        await mapper.unmap(tcp)
        self.assertEqual(router.tables, {TCP: {}, UDP: {}})

    def test_tcp_and_udp_of_one_port_with_pcp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._both(("pcp",), PCP))

    def test_tcp_and_udp_of_one_port_with_natpmp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._both(("natpmp",), NATPMP))

    async def _pcp_nonces(self) -> None:
        mapper = self.mapper_for(self.router)
        await mapper.map(3000, 3000, 7200)
        await mapper.map(3000, 3000, 7200, protocol=UDP)
        tcp, udp = self.requests(self.router)
        self.assertEqual((tcp.protocol, udp.protocol), (IPPROTO_TCP, IPPROTO_UDP))
        self.assertNotEqual(tcp.nonce, udp.nonce)

    def test_a_pcp_nonce_per_protocol(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._pcp_nonces())

    async def _cross(self, speaks: tuple[str, ...], protocol: str) -> None:
        # The router first answers for the other protocol (external port 1,
        # lifetime 1): the mapper takes only the answer to what it asked.
        router = self.start_router(speaks=speaks)
        router.cross_answers = True
        mapper = self.mapper_for(router)
        mapping = await mapper.map(3000, 3000, 7200, protocol=protocol)
        self.assertEqual((mapping.external_port, mapping.lifetime, mapping.protocol),
                         (3000, 7200, protocol))  # fmt: skip
        assert mapper._protocol is not None
        self.assertEqual(mapper._protocol.dropped, 1)

    def test_tcp_answer_does_not_satisfy_udp_pcp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._cross(("pcp",), UDP))

    def test_udp_answer_does_not_satisfy_tcp_pcp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._cross(("pcp",), TCP))

    def test_tcp_answer_does_not_satisfy_udp_natpmp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._cross(("natpmp",), UDP))

    def test_udp_answer_does_not_satisfy_tcp_natpmp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._cross(("natpmp",), TCP))

    async def _udp_refused(self, speaks: tuple[str, ...], method: str) -> None:
        router = self.start_router(speaks=speaks)
        router.refuse(2, protocol=UDP)
        mapper = self.mapper_for(router)
        with self.assertRaises(GatewayRefused) as caught:
            await mapper.map(3000, 3000, 7200, protocol=UDP)
        self.assertEqual((caught.exception.method, caught.exception.code), (method, 2))
        tcp = await mapper.map(3000, 3000, 7200)
        self.assertEqual((tcp.method, tcp.protocol), (method, TCP))
        self.assertEqual((list(router.tables[TCP]), router.tables[UDP]), ([3000], {}))

    def test_udp_refused_tcp_granted_with_pcp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._udp_refused(("pcp", "natpmp"), PCP))

    def test_udp_refused_tcp_granted_with_natpmp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._udp_refused(("natpmp",), NATPMP))

    def test_unknown_protocol(self) -> None:
        mapper = self.mapper_for(self.router)
        with self.assertRaises(ValueError):
            mapper.map(3000, 3000, 7200, protocol="sctp")
        self.assertEqual(self.router.received, [])
