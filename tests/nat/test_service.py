"""The port-mapping service on a fake clock, with mappers in memory.

Each test drives :class:`~bitfitech.nat.service.PortMappingService` with
:class:`~tests.nat.fakes.FakeMapper` routers that answer, refuse, are
absent or hang, and a ``Clock``: mapping, renewal at half the lease,
removal at stop (bounded), refusal and loss with growing waits, no router
at all with quiet logs, and what observers are told.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.nat.mapping import NATPMP, PCP, TCP, UDP, UPNP
from bitfitech.nat.pmp import PortControlMapper
from bitfitech.nat.service import (
    DEFAULT_LEASE,
    LOST,
    MAPPED,
    NONE,
    OFF,
    REFUSED,
    TRYING,
    MappingStatus,
    PortMappingService,
    RetryPolicy,
    build_mappers,
)
from bitfitech.nat.upnp import UPnPMapper

from .fakes import EXTERNAL_ADDRESS, FakeMapper

LEASE = DEFAULT_LEASE
NO_JITTER = RetryPolicy(initial=30.0, maximum=240.0, jitter=0.0)


class ServiceTestCase(SynchronousTestCase):
    """A service on a clock, its mappers, and what its observer was told."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)  # a plausible wall-clock time
        self.pmp = FakeMapper(NATPMP)
        self.upnp = FakeMapper(UPNP)
        self.told: list[MappingStatus] = []
        self.logged = EventLoggingObserver()
        globalLogPublisher.addObserver(self.logged)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged)

    def make(self, *mappers: FakeMapper, **options: Any) -> PortMappingService:
        options.setdefault("retry", NO_JITTER)
        options.setdefault("rng", random.Random(1))
        service = PortMappingService(
            self.clock, mappers or (self.pmp, self.upnp), options.pop("port", 3000), **options
        )
        service.subscribe(self.told.append)
        return service

    def start(self, *mappers: FakeMapper, **options: Any) -> PortMappingService:
        service = self.make(*mappers, **options)
        service.startService()
        self.clock.advance(0)
        return service

    def stop(self, service: PortMappingService) -> None:
        self.successResultOf(service.stopService())

    def states(self) -> list[str]:
        return [status.state for status in self.told]

    def logs_at(self, level: LogLevel) -> list[dict[str, Any]]:
        return [
            event
            for event in self.logged
            if event["log_level"] is level
            and str(event.get("log_namespace", "")).startswith("bitfitech.nat")
        ]


class MappedTests(ServiceTestCase):
    """A router that answers."""

    def test_starts_off_then_trying_then_mapped(self) -> None:
        service = self.make()
        self.assertEqual(service.status()["state"], OFF)
        service.startService()
        self.assertEqual(service.status()["state"], TRYING)
        self.assertEqual(self.pmp.maps, [])  # no I/O in startService itself
        self.clock.advance(0)
        self.assertEqual(self.states(), [TRYING, MAPPED])
        self.assertEqual(self.pmp.maps, [(3000, 3000, LEASE)])
        self.assertEqual(self.upnp.maps, [])  # the first mapper mapped: the second is not asked
        self.stop(service)

    def test_status_is_json_ready(self) -> None:
        service = self.start()
        now = self.clock.seconds()
        status = service.status()
        self.assertEqual(
            status,
            {
                "method": PCP,
                "protocol": "tcp",
                "state": MAPPED,
                "external_address": EXTERNAL_ADDRESS,
                "external_port": 3000,
                "internal_port": 3000,
                "lease_s": LEASE,
                "expires_at": round((now + LEASE) * 1000),
                "error": None,
                "retry_at": None,
            },
        )
        self.assertEqual(json.loads(json.dumps(status)), status)
        self.stop(service)

    def test_port_taken_is_the_routers_choice(self) -> None:
        self.pmp.taken.add(3000)
        service = self.start()
        self.assertEqual(service.status()["external_port"], 3001)
        self.stop(service)

    def test_internal_port_known_later(self) -> None:
        port: list[int | None] = [None]
        service = self.start(port=lambda: port[0])
        self.assertEqual(service.current.error, "the P2P port is not known yet")
        self.assertEqual(self.pmp.maps, [])
        port[0] = 4000
        self.clock.advance(30)
        self.assertEqual(service.status()["state"], MAPPED)
        self.assertEqual(self.pmp.maps, [(4000, 4000, LEASE)])
        self.stop(service)

    def test_falls_through_to_the_next_mapper(self) -> None:
        self.pmp.mode = "absent"
        service = self.start()
        self.assertEqual(service.status()["method"], UPNP)
        self.assertEqual(len(self.pmp.maps), 1)
        self.stop(service)

    def test_refusal_then_another_method_maps(self) -> None:
        self.pmp.mode = "refuse"
        service = self.start()
        self.assertEqual((service.status()["state"], service.status()["method"]), (MAPPED, UPNP))
        self.stop(service)

    def test_no_mappers_stays_off(self) -> None:
        service = PortMappingService(self.clock, [], 3000)
        service.startService()
        self.clock.advance(0)
        self.assertEqual(service.status()["state"], OFF)
        self.successResultOf(service.stopService())


class RenewalTests(ServiceTestCase):
    """Renewed at half the lease, with the mapper that mapped."""

    def test_renewed_at_half_the_lease(self) -> None:
        self.pmp.granted = 600
        service = self.start()
        self.clock.advance(299)
        self.assertEqual(len(self.pmp.maps), 1)
        self.clock.advance(1)
        self.assertEqual(self.pmp.maps, [(3000, 3000, LEASE)] * 2)
        expires = service.status()["expires_at"]
        self.assertEqual(expires, round((self.clock.seconds() + 600) * 1000))
        self.clock.advance(300)
        self.assertEqual(len(self.pmp.maps), 3)
        self.assertEqual(self.states(), [TRYING, MAPPED])  # renewals that change nothing: quiet
        self.assertEqual(self.upnp.maps, [])
        self.stop(service)

    def test_lease_less_mapping_is_renewed_too(self) -> None:
        self.upnp.granted = 0
        service = self.start(self.upnp)
        self.assertEqual((service.status()["lease_s"], service.status()["expires_at"]), (0, None))
        self.clock.advance(LEASE / 2)
        self.assertEqual(len(self.upnp.maps), 2)
        self.stop(service)

    def test_tiny_lease_is_not_a_tight_loop(self) -> None:
        self.pmp.granted = 1
        service = self.start(self.pmp)
        self.clock.advance(4.9)
        self.assertEqual(len(self.pmp.maps), 1)
        self.stop(service)

    def test_observer_told_of_a_new_external_address(self) -> None:
        service = self.start()
        self.pmp.external_address = "198.51.100.4"
        self.clock.advance(LEASE / 2)
        self.assertEqual(self.states(), [TRYING, MAPPED, MAPPED])
        self.assertEqual(self.told[-1].external_address, "198.51.100.4")
        self.stop(service)

    def test_observer_failure_is_logged_not_raised(self) -> None:
        service = self.make()

        def broken(status: MappingStatus) -> None:
            raise RuntimeError("observer")

        service.subscribe(broken)
        service.startService()
        self.clock.advance(0)
        self.assertEqual(service.status()["state"], MAPPED)
        self.stop(service)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)  # trying, mapped, off

    def test_unsubscribe(self) -> None:
        service = self.make()
        seen: list[MappingStatus] = []
        unsubscribe = service.subscribe(seen.append)
        unsubscribe()
        service.startService()
        self.clock.advance(0)
        self.assertEqual(seen, [])
        self.stop(service)


class StopTests(ServiceTestCase):
    """The mapping is removed at stop, and the stop never waits long."""

    def test_removed_on_stop(self) -> None:
        service = self.start()
        self.stop(service)
        self.assertEqual([m.external_port for m in self.pmp.unmapped], [3000])
        self.assertEqual((self.pmp.closed, self.upnp.closed), (1, 1))
        self.assertEqual(service.status()["state"], OFF)
        self.assertEqual(self.states()[-1], OFF)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_waits_a_bounded_time(self) -> None:
        service = self.start(stop_timeout=2.0)
        self.pmp.mode = "hang"
        stopped = service.stopService()
        self.assertNoResult(stopped)
        self.clock.advance(2.0)
        self.successResultOf(stopped)
        self.assertTrue(self.pmp.hanging[0].called)  # cancelled
        self.assertEqual(len(self.logs_at(LogLevel.warn)), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_while_trying(self) -> None:
        self.pmp.mode = "hang"
        service = self.start()
        self.assertEqual(service.status()["state"], TRYING)
        self.stop(service)
        self.assertEqual(self.pmp.unmapped, [])
        self.assertEqual(self.upnp.maps, [])  # the cancelled try went no further
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failed_removal_is_logged(self) -> None:
        service = self.start()
        self.pmp.mode = "absent"
        self.stop(service)
        self.assertEqual(len(self.logs_at(LogLevel.warn)), 1)

    def test_restart(self) -> None:
        service = self.start()
        self.stop(service)
        service.startService()
        self.clock.advance(0)
        self.assertEqual(service.status()["state"], MAPPED)
        self.stop(service)


class RefusedTests(ServiceTestCase):
    """A router that says no: the status says so, and tries slow down."""

    def test_refused(self) -> None:
        self.pmp.mode = "refuse"
        service = self.start(self.pmp)
        status = service.status()
        self.assertEqual((status["state"], status["method"]), (REFUSED, PCP))
        self.assertEqual(status["error"], "pcp: router refused: not authorized (error 2)")
        self.assertEqual(status["retry_at"], round((self.clock.seconds() + 30) * 1000))
        self.assertIsNone(status["external_port"])
        self.stop(service)

    def test_backoff_grows_to_its_maximum(self) -> None:
        self.pmp.mode = "refuse"
        service = self.start(self.pmp)
        tries = [self.clock.seconds()]
        for _ in range(6):
            self.clock.advance(1)
            while len(self.pmp.maps) == len(tries):
                self.clock.advance(1)
            tries.append(self.clock.seconds())
        waits = [round(b - a) for a, b in zip(tries, tries[1:], strict=False)]
        self.assertEqual(waits, [30, 60, 120, 240, 240, 240])
        self.stop(service)

    def test_logs_once_per_new_error(self) -> None:
        self.pmp.mode = "refuse"
        service = self.start(self.pmp)
        self.clock.pump([1.0] * (30 + 60 + 120))
        self.assertEqual(len(self.pmp.maps), 4)
        self.assertEqual(len(self.logs_at(LogLevel.warn)), 1)
        self.stop(service)

    def test_mapped_once_the_router_agrees(self) -> None:
        self.pmp.mode = "refuse"
        service = self.start(self.pmp)
        self.pmp.mode = "answer"
        self.clock.advance(30)
        self.assertEqual(self.states(), [TRYING, REFUSED, MAPPED])
        self.assertIsNone(service.status()["error"])
        self.stop(service)

    def test_refused_at_renewal(self) -> None:
        service = self.start(self.pmp)
        self.pmp.mode = "refuse"
        self.clock.advance(LEASE / 2)
        self.assertEqual(service.status()["state"], REFUSED)
        self.stop(service)
        self.assertEqual(self.pmp.unmapped, [])  # nothing left to remove


class LostTests(ServiceTestCase):
    """A router that vanishes mid-lease."""

    def test_router_vanishes(self) -> None:
        service = self.start(self.pmp)
        self.pmp.mode = "absent"
        self.clock.advance(LEASE / 2)
        status = service.status()
        self.assertEqual((status["state"], status["method"]), (LOST, PCP))
        self.assertIn("no answer", status["error"])
        self.assertEqual(self.states(), [TRYING, MAPPED, LOST])
        self.assertEqual(len(self.logs_at(LogLevel.warn)), 1)
        # Tried again, from every mapper, after a growing wait; lost stays lost.
        self.clock.advance(30)
        self.assertEqual(len(self.pmp.maps), 3)
        self.assertEqual(service.status()["state"], LOST)
        self.clock.advance(59)
        self.assertEqual(len(self.pmp.maps), 3)
        self.pmp.mode = "answer"
        self.clock.advance(1)
        self.assertEqual(service.status()["state"], MAPPED)
        self.assertEqual(self.pmp.maps[-1], (3000, 3000, LEASE))  # the same port asked back
        self.stop(service)

    def test_stop_after_loss_removes_nothing(self) -> None:
        service = self.start(self.pmp)
        self.pmp.mode = "absent"
        self.clock.advance(LEASE / 2)
        self.stop(service)
        self.assertEqual(self.pmp.unmapped, [])


class NoRouterTests(ServiceTestCase):
    """No router at all: state none, one quiet line, rare tries."""

    def test_none(self) -> None:
        self.pmp.mode = self.upnp.mode = "absent"
        service = self.start()
        status = service.status()
        self.assertEqual((status["state"], status["method"]), (NONE, None))
        self.assertIn("no router answered", status["error"])
        self.assertIn("pcp: no answer", status["error"])
        self.clock.pump([1.0] * (30 + 60 + 120 + 240))
        self.assertEqual(len(self.pmp.maps), 5)
        self.assertEqual(self.logs_at(LogLevel.warn), [])
        self.assertEqual(len(self.logs_at(LogLevel.info)), 1)
        self.assertEqual(self.states(), [TRYING, NONE])
        self.stop(service)

    def test_jittered_waits(self) -> None:
        self.pmp.mode = self.upnp.mode = "absent"
        service = self.start(retry=RetryPolicy(initial=100.0, jitter=0.1))
        retry_in = service.current.retry_at - self.clock.seconds()  # type: ignore[operator]
        self.assertTrue(90 <= retry_in <= 110, retry_in)
        self.stop(service)


class BuildTests(SynchronousTestCase):
    """The mappers for each ``--nat`` choice (built, not started: no I/O)."""

    def test_choices(self) -> None:
        reactor = Clock()
        kinds = {
            nat: [type(m) for m in build_mappers(reactor, nat)]
            for nat in ("auto", "upnp", "natpmp", "off")
        }
        self.assertEqual(
            kinds,
            {
                "auto": [PortControlMapper, UPnPMapper],
                "upnp": [UPnPMapper],
                "natpmp": [PortControlMapper],
                "off": [],
            },
        )

    def test_unknown_choice(self) -> None:
        with self.assertRaises(ValueError):
            build_mappers(Clock(), "stun")


class ProtocolTests(ServiceTestCase):
    """One service per protocol: a UDP service maps, renews, removes and reports UDP."""

    def test_default_is_tcp(self) -> None:
        service = self.start(self.pmp)
        self.assertEqual((service.protocol, service.name), (TCP, "nat"))
        self.assertEqual(service.status()["protocol"], TCP)
        self.assertEqual(self.pmp.protocols, [TCP])
        self.stop(service)
        self.assertEqual(self.pmp.unmapped[0].protocol, TCP)

    def test_udp_mapped_renewed_removed(self) -> None:
        service = self.start(self.pmp, protocol=UDP)
        self.assertEqual((service.protocol, service.name), (UDP, "nat-udp"))
        self.assertEqual(service.status()["state"], MAPPED)
        self.clock.advance(LEASE / 2)
        self.assertEqual(self.pmp.maps, [(3000, 3000, LEASE)] * 2)
        self.assertEqual(self.pmp.protocols, [UDP, UDP])
        self.stop(service)
        self.assertEqual([(m.protocol, m.external_port) for m in self.pmp.unmapped], [(UDP, 3000)])
        self.assertEqual(service.status()["protocol"], UDP)
        self.assertEqual(self.told[-1], MappingStatus(OFF, internal_port=3000, protocol=UDP))

    def test_udp_status(self) -> None:
        service = self.start(self.pmp, protocol=UDP)
        now = self.clock.seconds()
        self.assertEqual(
            service.status(),
            {
                "method": PCP,
                "protocol": UDP,
                "state": MAPPED,
                "external_address": EXTERNAL_ADDRESS,
                "external_port": 3000,
                "internal_port": 3000,
                "lease_s": LEASE,
                "expires_at": round((now + LEASE) * 1000),
                "error": None,
                "retry_at": None,
            },
        )
        self.assertEqual([status.protocol for status in self.told], [UDP, UDP])
        self.stop(service)

    def test_logs_name_the_protocol(self) -> None:
        tcp = self.start(FakeMapper(NATPMP))
        udp = self.start(FakeMapper(NATPMP), protocol=UDP)
        self.stop(udp)
        self.stop(tcp)
        reachable = f"is reachable at {EXTERNAL_ADDRESS}:3000 (pcp, lease {LEASE} s)"
        self.assertEqual(
            [formatEvent(event) for event in self.logs_at(LogLevel.info)],
            [
                f"port mapping: TCP port 3000 {reachable}",
                f"port mapping: UDP port 3000 {reachable}",
                "port mapping: removed UDP port 3000 (pcp)",
                "port mapping: removed TCP port 3000 (pcp)",
            ],
        )

    def test_refusal_logs_name_the_protocol(self) -> None:
        self.pmp.mode = "refuse"
        service = self.start(self.pmp, protocol=UDP)
        self.assertEqual(service.status()["state"], REFUSED)
        (warning,) = self.logs_at(LogLevel.warn)
        self.assertIn("UDP port 3000 refused", formatEvent(warning))
        self.stop(service)

    def test_udp_port_not_known_yet(self) -> None:
        service = self.start(port=lambda: None, protocol=UDP)
        self.assertEqual(service.current.error, "the UDP port is not known yet")
        self.stop(service)

    def test_unknown_protocol(self) -> None:
        with self.assertRaises(ValueError):
            PortMappingService(self.clock, [self.pmp], 3000, protocol="sctp")
