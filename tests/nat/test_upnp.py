"""UPnP-IGD mappings through miniupnpc, against a fake IGD on 127.0.0.1.

The mapper's blocking calls run on its worker thread while the fake IGD
answers on the reactor thread, as a router would: these tests run on the
real reactor, and wait for outcomes with a hang guard only.  No test sends
SSDP multicast: the IGD is named by its root URL, or found through a fake
minissdpd (which miniupnpc asks first), with multicast pinned to loopback
in case it ever fell through.
"""

from __future__ import annotations

import os
import random
import threading
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bitfitech.nat.mapping import TCP, UDP, UPNP, GatewayRefused, Mapping, NoGateway
from bitfitech.nat.upnp import BlockingCaller, UPnPMapper, upnp_error
from bitfitech.testing import free_ports, global_reactor

from .fakes import EXTERNAL_ADDRESS, SILENT, FakeIGD, FakeMiniSSDPD

try:
    import miniupnpc  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401
except ImportError:  # pragma: no cover - install_requires has it
    NO_MINIUPNPC: str | None = "miniupnpc is not installed"
else:
    NO_MINIUPNPC = None


class ErrorTests(SynchronousTestCase):
    """miniupnpc's exception texts become our two errors."""

    def test_soap_error_is_refusal_with_code(self) -> None:
        error = upnp_error(Exception("ConflictInMappingEntry"))
        assert isinstance(error, GatewayRefused)
        self.assertEqual((error.method, error.code), (UPNP, 718))

    def test_unknown_code_is_refusal_without_code(self) -> None:
        error = upnp_error(Exception("UnknownError"))
        assert isinstance(error, GatewayRefused)
        self.assertIsNone(error.code)

    def test_http_error_is_no_gateway(self) -> None:
        self.assertIsInstance(upnp_error(Exception("Miniupnpc HTTP error")), NoGateway)

    def test_anything_in_discovery_is_no_gateway(self) -> None:
        self.assertIsInstance(upnp_error(Exception("Invalid Args"), discovering=True), NoGateway)


class BlockingCallerTests(TestCase):
    """Calls run off the reactor thread, one at a time, within their timeout."""

    def setUp(self) -> None:
        self.caller = BlockingCaller(global_reactor(), "test-caller")
        self.addCleanup(self.caller.close)

    async def _result(self) -> None:
        main = threading.get_ident()
        where = await self.caller.call(5.0, threading.get_ident)
        self.assertNotEqual(where, main)

    def test_runs_on_another_thread(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._result())

    async def _error(self) -> None:
        def broken() -> None:
            raise KeyError("x")

        with self.assertRaises(KeyError):
            await self.caller.call(5.0, broken)

    def test_exception_reaches_the_caller(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._error())

    async def _timeout(self) -> None:
        release = threading.Event()
        self.addCleanup(release.set)
        with self.assertRaises(DeferredTimeout):
            await self.caller.call(0.05, lambda: release.wait(30))
        # The next call waits for the stuck one; it runs once it ends.
        later = self.caller.call(30.0, lambda: "done")
        release.set()
        self.assertEqual(await later, "done")

    def test_times_out_without_waiting_for_the_call(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._timeout())

    def test_close_cancels_waiting_calls(self) -> None:
        release = threading.Event()
        self.addCleanup(release.set)
        stuck = self.caller.call(30.0, lambda: release.wait(30))
        waiting = self.caller.call(30.0, lambda: "never")
        failures: list[Any] = []
        stuck.addErrback(failures.append)
        waiting.addErrback(failures.append)
        self.caller.close()
        self.assertEqual(len(failures), 2)


class UPnPMapperTests(TestCase):
    """The mapper against a fake IGD, through miniupnpc."""

    skip = NO_MINIUPNPC

    def setUp(self) -> None:
        self.reactor = global_reactor()
        self.igd = FakeIGD()
        self.root_url = self.igd.listen(self.reactor)
        self.addCleanup(self.igd.close)
        self.mapper = self.make_mapper()

    def make_mapper(self, **options: Any) -> UPnPMapper:
        options.setdefault("root_url", self.root_url)
        options.setdefault("timeout", 10.0)
        options.setdefault("rng", random.Random(7))
        mapper = UPnPMapper(self.reactor, **options)
        self.addCleanup(mapper.close)
        return mapper

    async def _mapped(self) -> None:
        mapping = await self.mapper.map(3000, 3000, 3600)
        self.assertEqual(mapping, Mapping(UPNP, 3000, 3000, EXTERNAL_ADDRESS, 3600))
        self.assertEqual(self.igd.mappings[3000], ("127.0.0.1", 3000, 3600, "bitfi"))

    def test_mapped(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._mapped())

    async def _renewed(self) -> None:
        await self.mapper.map(3000, 3000, 3600)
        again = await self.mapper.map(3000, 3000, 3600)
        self.assertEqual(again.external_port, 3000)
        self.assertEqual(self.igd.actions.count("AddPortMapping"), 2)
        self.assertEqual(list(self.igd.mappings), [3000])

    def test_renewal_asks_again_for_the_same_port(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._renewed())

    async def _removed(self) -> None:
        mapping = await self.mapper.map(3000, 3000, 3600)
        await self.mapper.unmap(mapping)
        self.assertEqual(self.igd.mappings, {})
        await self.mapper.unmap(mapping)  # gone already (714): not an error
        self.assertEqual(self.igd.actions.count("DeletePortMapping"), 2)

    def test_removed(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._removed())

    async def _conflict(self) -> None:
        self.igd.taken.add(3000)
        mapping = await self.mapper.map(3000, 3000, 3600)
        self.assertNotEqual(mapping.external_port, 3000)
        self.assertEqual(self.igd.mappings[mapping.external_port][:2], ("127.0.0.1", 3000))

    def test_port_taken_gets_another(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._conflict())

    async def _refused(self) -> None:
        self.igd.refuse(606, "Action not authorized")
        with self.assertRaises(GatewayRefused) as caught:
            await self.mapper.map(3000, 3000, 3600)
        self.assertEqual(caught.exception.code, 606)
        self.assertIn("Action not authorized", str(caught.exception))

    def test_refused(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._refused())

    async def _permanent(self) -> None:
        self.igd.only_permanent = True
        mapping = await self.mapper.map(3000, 3000, 3600)
        self.assertEqual(mapping.lifetime, 0)
        self.assertEqual(self.igd.mappings[3000][2], 0)

    def test_router_with_permanent_leases_only(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._permanent())

    async def _vanished(self) -> None:
        await self.mapper.map(3000, 3000, 3600)
        await self.igd.vanish()
        with self.assertRaises(NoGateway):
            await self.mapper.map(3000, 3000, 3600)

    def test_router_vanishes(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._vanished())

    async def _silent(self) -> None:
        mapper = self.make_mapper(timeout=0.5)
        self.igd.mode = SILENT  # the description is served; actions are never answered
        with self.assertRaises(NoGateway) as caught:
            await mapper.map(3000, 3000, 3600)
        # The mapper's own timeout ended the call (trial's timeout guards a hang).
        self.assertIn("no answer in 0.5 s", str(caught.exception))
        self.assertEqual(self.igd.actions, ["AddPortMapping"])

    def test_silent_router_times_out(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._silent())

    async def _no_router(self) -> None:
        (port,) = free_ports(1)
        mapper = self.make_mapper(root_url=f"http://127.0.0.1:{port}/rootDesc.xml")
        with self.assertRaises(NoGateway):
            await mapper.map(3000, 3000, 3600)

    def test_no_router(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._no_router())

    async def _discovered(self) -> None:
        ssdpd = FakeMiniSSDPD(self.root_url)
        path = os.path.join(self.mktemp() + ".sock")
        ssdpd.listen(self.reactor, path)
        self.addCleanup(ssdpd.close)
        mapper = self.make_mapper(
            root_url=None, minissdpd_socket=path, multicast_interface="127.0.0.1",
            discover_delay=0.1,
        )  # fmt: skip
        mapping = await mapper.map(3000, 3000, 3600)
        self.assertEqual(mapping.external_port, 3000)
        self.assertTrue(ssdpd.asked)
        self.assertIn("GetStatusInfo", self.igd.actions)  # miniupnpc checked the IGD is up

    def test_discovered_through_minissdpd(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._discovered())


class UPnPProtocolTests(TestCase):
    """UDP mappings on the fake IGD, and TCP and UDP mappings of one port kept apart."""

    skip = NO_MINIUPNPC

    def setUp(self) -> None:
        self.reactor = global_reactor()
        self.igd = FakeIGD()
        self.root_url = self.igd.listen(self.reactor)
        self.addCleanup(self.igd.close)
        self.mapper = UPnPMapper(self.reactor, root_url=self.root_url, timeout=10.0)
        self.addCleanup(self.mapper.close)

    async def _udp(self) -> None:
        mapping = await self.mapper.map(3000, 3000, 3600, protocol=UDP)
        self.assertEqual(mapping, Mapping(UPNP, 3000, 3000, EXTERNAL_ADDRESS, 3600, UDP))
        self.assertEqual(
            self.igd.tables, {TCP: {}, UDP: {3000: ("127.0.0.1", 3000, 3600, "bitfi")}}
        )
        await self.mapper.map(3000, 3000, 3600, protocol=UDP)
        self.assertEqual(list(self.igd.tables[UDP]), [3000])
        await self.mapper.unmap(mapping)
        self.assertEqual(self.igd.tables, {TCP: {}, UDP: {}})

    def test_udp_mapped_renewed_removed(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._udp())

    async def _both(self) -> None:
        tcp = await self.mapper.map(3000, 3000, 3600)
        udp = await self.mapper.map(3000, 3000, 3600, protocol=UDP)
        self.assertEqual((tcp.protocol, udp.protocol), (TCP, UDP))
        self.assertEqual((tcp.external_port, udp.external_port), (3000, 3000))
        self.assertEqual((list(self.igd.tables[TCP]), list(self.igd.tables[UDP])), ([3000], [3000]))
        await self.mapper.unmap(udp)
        self.assertEqual((list(self.igd.tables[TCP]), self.igd.tables[UDP]), ([3000], {}))
        await self.mapper.unmap(tcp)
        self.assertEqual(self.igd.tables, {TCP: {}, UDP: {}})

    def test_tcp_and_udp_of_one_port(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._both())

    async def _udp_refused(self) -> None:
        self.igd.refuse(606, protocol=UDP)
        with self.assertRaises(GatewayRefused) as caught:
            await self.mapper.map(3000, 3000, 3600, protocol=UDP)
        self.assertEqual(caught.exception.code, 606)
        tcp = await self.mapper.map(3000, 3000, 3600)
        self.assertEqual(tcp.protocol, TCP)
        self.assertEqual((list(self.igd.tables[TCP]), self.igd.tables[UDP]), ([3000], {}))

    def test_udp_refused_tcp_granted(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._udp_refused())

    def test_unknown_protocol(self) -> None:
        with self.assertRaises(ValueError):
            self.mapper.map(3000, 3000, 3600, protocol="sctp")
        self.assertEqual(self.igd.actions, [])
