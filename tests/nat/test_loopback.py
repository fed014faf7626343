"""The whole service against fake routers on 127.0.0.1.

The mappers talk to :class:`~tests.nat.fakes.FakePortControlRouter` (UDP)
and :class:`~tests.nat.fakes.FakeIGD` (HTTP, through miniupnpc on its
worker thread) on the real reactor; the service's own timers run on a
``Clock``, so a renewal is one ``advance`` away.  Outcomes are awaited with
a hang guard, never timed.  UDP services (the DHT port's) map beside TCP
ones on the same fake router, which keeps a table per protocol.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from bitfitech.nat.mapping import NATPMP, TCP, UDP, IPortMapper
from bitfitech.nat.pmp import PortControlMapper
from bitfitech.nat.service import (
    LOST,
    MAPPED,
    NONE,
    OFF,
    REFUSED,
    PortMappingService,
    RetryPolicy,
)
from bitfitech.nat.upnp import UPnPMapper
from bitfitech.testing import HANG_GUARD, free_ports, global_reactor, poll_until

from .fakes import EXTERNAL_ADDRESS, FakeIGD, FakePortControlRouter
from .test_upnp import NO_MINIUPNPC

LEASE = 600


class LoopbackTestCase(TestCase):
    """Fake routers on 127.0.0.1, and a service on a clock of its own."""

    def setUp(self) -> None:
        self.reactor = global_reactor()
        self.clock = Clock()
        self.router = FakePortControlRouter()
        self.router.listen(self.reactor)
        self.addCleanup(self.router.close)
        self.igd = FakeIGD()
        self.root_url = self.igd.listen(self.reactor)
        self.addCleanup(self.igd.close)

    def pmp(self, **options: Any) -> PortControlMapper:
        options.setdefault("retransmits", (10.0,))  # answers are expected
        return PortControlMapper(self.reactor, "127.0.0.1", port=self.router.port, **options)

    def upnp(self, root_url: str | None = None) -> UPnPMapper:
        return UPnPMapper(self.reactor, root_url=root_url or self.root_url, timeout=10.0)

    def service(self, *mappers: IPortMapper, protocol: str = TCP) -> PortMappingService:
        service = PortMappingService(
            self.clock, mappers, 3000, lease=LEASE, retry=RetryPolicy(jitter=0.0),
            protocol=protocol,
        )  # fmt: skip
        service.startService()
        self.addCleanup(self.stopped, service)
        self.clock.advance(0)
        return service

    def stopped(self, service: PortMappingService) -> Deferred[None] | None:
        return service.stopService() if service.running else None

    async def state(self, service: PortMappingService, state: str) -> None:
        await poll_until(
            self.reactor, lambda: service.current.state == state, HANG_GUARD, f"state {state}"
        )

    async def until(self, predicate: Any, what: str) -> None:
        await poll_until(self.reactor, predicate, HANG_GUARD, what)


class PortControlLoopbackTests(LoopbackTestCase):
    """PCP and NAT-PMP, end to end."""

    async def _lifecycle(self) -> None:
        service = self.service(self.pmp())
        await self.state(service, MAPPED)
        status = service.status()
        self.assertEqual(
            (status["method"], status["external_address"], status["external_port"]),
            ("pcp", EXTERNAL_ADDRESS, 3000),
        )
        # Renewed at half the lease.
        self.clock.advance(LEASE / 2)
        await self.until(lambda: self.router.map_requests() >= 2, "a renewal")
        await self.until(lambda: service._work is None, "the renewal's end")
        self.assertEqual(service.current.state, MAPPED)
        # Removed on stop.
        await service.stopService()
        self.assertEqual(self.router.mappings, {})
        self.assertEqual(service.status()["state"], OFF)

    def test_mapped_renewed_removed(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._lifecycle())

    async def _vanishes(self) -> None:
        service = self.service(self.pmp())
        await self.state(service, MAPPED)
        await self.router.vanish()
        self.clock.advance(LEASE / 2)
        await self.state(service, LOST)
        self.assertEqual(service.status()["method"], "pcp")
        self.assertIn("nothing listens", service.status()["error"])
        self.assertIsNotNone(service.status()["retry_at"])

    def test_router_vanishes_mid_lease(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._vanishes())

    async def _refused(self) -> None:
        self.router.refuse(2)
        service = self.service(self.pmp())
        await self.state(service, REFUSED)
        self.assertEqual(service.status()["error"], "pcp: router refused: not authorized (error 2)")

    def test_refused(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._refused())


class UPnPLoopbackTests(LoopbackTestCase):
    """UPnP-IGD through miniupnpc, end to end."""

    skip = NO_MINIUPNPC

    async def _lifecycle(self) -> None:
        service = self.service(self.upnp())
        await self.state(service, MAPPED)
        self.assertEqual(self.igd.mappings, {3000: ("127.0.0.1", 3000, LEASE, "bitfi")})
        self.assertEqual(service.status()["external_address"], EXTERNAL_ADDRESS)
        self.clock.advance(LEASE / 2)
        await self.until(lambda: self.igd.actions.count("AddPortMapping") >= 2, "a renewal")
        await self.until(lambda: service._work is None, "the renewal's end")
        await service.stopService()
        self.assertEqual(self.igd.mappings, {})
        self.assertIn("DeletePortMapping", self.igd.actions)

    def test_mapped_renewed_removed(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._lifecycle())

    async def _vanishes(self) -> None:
        service = self.service(self.upnp())
        await self.state(service, MAPPED)
        await self.igd.vanish()
        self.clock.advance(LEASE / 2)
        await self.state(service, LOST)
        self.assertEqual(service.status()["method"], "upnp")
        await service.stopService()  # nothing to remove, and no wait for it

    def test_router_vanishes_mid_lease(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._vanishes())

    async def _refused(self) -> None:
        self.igd.refuse(606)
        service = self.service(self.upnp())
        await self.state(service, REFUSED)
        self.assertIn("(error 606)", service.status()["error"])

    def test_refused(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._refused())


class BothMethodsTests(LoopbackTestCase):
    """The default order, and no router at all."""

    skip = NO_MINIUPNPC

    async def _order(self) -> None:
        service = self.service(self.pmp(), self.upnp())
        await self.state(service, MAPPED)
        self.assertEqual(service.status()["method"], "pcp")
        self.assertEqual(self.igd.actions, [])

    def test_pcp_first(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._order())

    async def _upnp_when_no_pcp(self) -> None:
        await self.router.vanish()
        service = self.service(self.pmp(), self.upnp())
        await self.state(service, MAPPED)
        self.assertEqual(service.status()["method"], "upnp")

    def test_upnp_when_no_pcp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._upnp_when_no_pcp())

    async def _none(self) -> None:
        self.router.mode = "silent"
        (closed,) = free_ports(1)
        pmp = self.pmp(retransmits=(0.05, 0.1))
        service = self.service(pmp, self.upnp(f"http://127.0.0.1:{closed}/rootDesc.xml"))
        await self.state(service, NONE)
        status = service.status()
        self.assertIsNone(status["method"])
        self.assertIn("natpmp: no answer from the gateway", status["error"])
        self.assertIn("upnp: no UPnP router answered", status["error"])

    def test_no_router(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._none())


class UDPLoopbackTests(LoopbackTestCase):
    """UDP services (the DHT port) end to end, beside TCP ones on the same router."""

    async def _udp_pmp(self, versions: tuple[str, ...], method: str) -> None:
        service = self.service(self.pmp(versions=versions), protocol=UDP)
        await self.state(service, MAPPED)
        status = service.status()
        self.assertEqual(
            (status["protocol"], status["method"], status["external_port"]), (UDP, method, 3000)
        )
        self.assertEqual(self.router.tables[UDP], {3000: ("127.0.0.1", 3000, LEASE)})
        self.assertEqual(self.router.tables[TCP], {})
        self.clock.advance(LEASE / 2)
        await self.until(lambda: self.router.map_requests(UDP) >= 2, "a renewal")
        await self.until(lambda: service._work is None, "the renewal's end")
        self.assertEqual(service.current.state, MAPPED)
        self.assertEqual(self.router.map_requests(TCP), 0)
        await service.stopService()
        self.assertEqual(self.router.tables, {TCP: {}, UDP: {}})
        self.assertEqual((service.status()["state"], service.status()["protocol"]), (OFF, UDP))

    def test_udp_with_pcp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._udp_pmp(("pcp", "natpmp"), "pcp"))

    def test_udp_with_natpmp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._udp_pmp((NATPMP,), "natpmp"))

    async def _both(self) -> None:
        tcp = self.service(self.pmp())
        udp = self.service(self.pmp(), protocol=UDP)
        await self.state(tcp, MAPPED)
        await self.state(udp, MAPPED)
        self.assertEqual((tcp.name, udp.name), ("nat", "nat-udp"))
        self.assertEqual(list(self.router.tables[TCP]), [3000])
        self.assertEqual(list(self.router.tables[UDP]), [3000])
        await udp.stopService()
        self.assertEqual((list(self.router.tables[TCP]), self.router.tables[UDP]), ([3000], {}))
        self.assertEqual(tcp.current.state, MAPPED)
        await tcp.stopService()
        self.assertEqual(self.router.tables, {TCP: {}, UDP: {}})

    def test_tcp_and_udp_of_one_port(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._both())

    async def _udp_refused(self) -> None:
        self.router.refuse(2, protocol=UDP)
        tcp = self.service(self.pmp())
        udp = self.service(self.pmp(), protocol=UDP)
        await self.state(udp, REFUSED)
        await self.state(tcp, MAPPED)
        status = udp.status()
        self.assertEqual((status["protocol"], status["method"]), (UDP, "pcp"))
        self.assertEqual(status["error"], "pcp: router refused: not authorized (error 2)")
        self.assertIsNotNone(status["retry_at"])
        self.assertEqual(tcp.status()["protocol"], TCP)
        self.assertEqual((list(self.router.tables[TCP]), self.router.tables[UDP]), ([3000], {}))

    def test_udp_refused_tcp_mapped(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._udp_refused())


class UDPUPnPLoopbackTests(LoopbackTestCase):
    """UDP services on the fake IGD, beside TCP ones."""

    skip = NO_MINIUPNPC

    async def _udp(self) -> None:
        service = self.service(self.upnp(), protocol=UDP)
        await self.state(service, MAPPED)
        self.assertEqual(
            self.igd.tables, {TCP: {}, UDP: {3000: ("127.0.0.1", 3000, LEASE, "bitfi")}}
        )
        self.assertEqual((service.status()["protocol"], service.status()["method"]), (UDP, "upnp"))
        self.clock.advance(LEASE / 2)
        await self.until(lambda: self.igd.actions.count("AddPortMapping") >= 2, "a renewal")
        await self.until(lambda: service._work is None, "the renewal's end")
        self.assertEqual(service.current.state, MAPPED)
        await service.stopService()
        self.assertEqual(self.igd.tables, {TCP: {}, UDP: {}})

    def test_udp_mapped_renewed_removed(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._udp())

    async def _both(self) -> None:
        tcp = self.service(self.upnp())
        udp = self.service(self.upnp(), protocol=UDP)
        await self.state(tcp, MAPPED)
        await self.state(udp, MAPPED)
        self.assertEqual((list(self.igd.tables[TCP]), list(self.igd.tables[UDP])), ([3000], [3000]))
        await udp.stopService()
        self.assertEqual((list(self.igd.tables[TCP]), self.igd.tables[UDP]), ([3000], {}))
        await tcp.stopService()
        self.assertEqual(self.igd.tables, {TCP: {}, UDP: {}})

    def test_tcp_and_udp_of_one_port(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._both())

    async def _udp_refused(self) -> None:
        self.igd.refuse(606, protocol=UDP)
        tcp = self.service(self.upnp())
        udp = self.service(self.upnp(), protocol=UDP)
        await self.state(udp, REFUSED)
        await self.state(tcp, MAPPED)
        self.assertIn("(error 606)", udp.status()["error"])
        self.assertEqual((list(self.igd.tables[TCP]), self.igd.tables[UDP]), ([3000], {}))

    def test_udp_refused_tcp_mapped(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._udp_refused())
