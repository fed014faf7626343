"""The port-mapping service: keeps one of the node's ports mapped on the home router.

One service per protocol: the node's P2P port over TCP (``nat``), and its
DHT port over UDP (``nat-udp``), as BitTorrent clients map both; a router
keeps TCP 3000 and UDP 3000 apart, so the two never touch each other's
mapping.  Give each service mappers of its own (:func:`build_mappers`
twice): a mapper runs one call at a time.

Data path: the port (known once its listener listens) ->
:class:`PortMappingService` -> each :class:`~bitfitech.nat.mapping.IPortMapper`
in turn (PCP/NAT-PMP, then UPnP-IGD) -> the router; the mapping it grants ->
:meth:`PortMappingService.status` and the observers given to
:meth:`PortMappingService.subscribe` (the node's reachability, the address
it advertises).

What it does, on the injected clock: at start, tries the mappers in order
until one maps the port (asking for the same external port first); renews
the mapping at half its lease with the mapper that made it; on stop,
removes it, waiting :attr:`stop_timeout` seconds at most.  When no mapper
maps, the state says why (``refused``: a router answered no; ``lost``: a
mapping we had stopped being renewed; ``none``: nothing answered) and the
next try waits longer each time (:class:`RetryPolicy`), so a refusing or
absent router costs a few packets an hour, never a tight loop.  Logs are
quiet when nothing answers: one line, then debug.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ..config import NAT_CHOICES
from ..interfaces import unix_ms
from ..logs import logger
from .mapping import (
    NATPMP,
    TCP,
    UPNP,
    GatewayRefused,
    IPortMapper,
    Mapping,
    NoGateway,
    check_protocol,
)
from .pmp import PortControlMapper
from .upnp import UPnPMapper

log = logger(__name__)

MAPPED = "mapped"
REFUSED = "refused"
LOST = "lost"
NONE = "none"
OFF = "off"
TRYING = "trying"
STATES = (MAPPED, REFUSED, LOST, NONE, OFF, TRYING)

DEFAULT_LEASE = 3600
"""
Seconds of lease asked for, renewed at half: a node that dies without
removing its mapping leaves it an hour at most, and a new external address
is learned within half an hour (RFC 6886 suggests two hours; routers'
address-change announcements are not listened to).
"""

MIN_RENEW = 5.0
"""Never renew sooner than this, whatever short lease a router grants."""


@dataclass(frozen=True)
class RetryPolicy:
    """
    How long to wait before trying again after a try that mapped nothing:
    C{initial}, times C{factor} after each failure in a row, at most
    C{maximum}, each wait moved by up to C{jitter} of itself at random.
    """

    initial: float = 30.0
    maximum: float = 1800.0
    factor: float = 2.0
    jitter: float = 0.1

    def delay(self, failures: int, rng: random.Random) -> float:
        """The wait after C{failures} (>= 1) failed tries in a row."""
        base = min(self.maximum, self.initial * self.factor ** max(0, failures - 1))
        return base * (1 + rng.uniform(-self.jitter, self.jitter)) if self.jitter else base


@dataclass(frozen=True)
class MappingStatus:
    """
    What the service knows now.  Times are clock seconds here;
    :meth:`as_dict` gives them as unix milliseconds.

    :ivar state: ``mapped``, ``refused``, ``lost``, ``none``, ``off`` or ``trying``.
    :ivar protocol: ``tcp`` or ``udp``: the protocol the service maps.
    :ivar method: ``upnp``, ``natpmp`` or ``pcp``: the mapping's, the
        refusing router's, or the lost mapping's; ``None`` otherwise.
    :ivar internal_port: the node's port, ``None`` until it is known.
    :ivar external_address: the router's public address, as it said.
    :ivar external_port: the mapped port on the router.
    :ivar lease: seconds the router granted (0: no lease).
    :ivar expires_at: when the mapping ends unless renewed (``None``
        without a lease).
    :ivar error: why there is no mapping (or why the last try failed).
    :ivar retry_at: when the next try is due, when one is.
    """

    state: str = OFF
    method: str | None = None
    internal_port: int | None = None
    external_address: str | None = None
    external_port: int | None = None
    lease: int | None = None
    expires_at: float | None = None
    error: str | None = None
    retry_at: float | None = None
    protocol: str = TCP

    def as_dict(self) -> dict[str, Any]:
        """The status as the API shows it (JSON-ready)."""
        return {
            "method": self.method,
            "protocol": self.protocol,
            "state": self.state,
            "external_address": self.external_address,
            "external_port": self.external_port,
            "internal_port": self.internal_port,
            "lease_s": self.lease,
            "expires_at": unix_ms(self.expires_at),
            "error": self.error,
            "retry_at": unix_ms(self.retry_at),
        }

    def _seen(self) -> tuple[str, str | None, str | None, int | None]:
        """What observers are told about when it changes (the protocol never does)."""
        return (self.state, self.method, self.external_address, self.external_port)


Observer = Callable[[MappingStatus], None]


class PortMappingService(Service):
    """
    Keeps one TCP or UDP port mapped on the router, and says how it stands.

    :ivar name: the service's name: ``nat`` for TCP, ``nat-udp`` for UDP.
    :ivar protocol: ``tcp`` or ``udp``, the protocol it maps the port for.
    :ivar mappers: the mappers, in the order they are tried.
    :ivar stop_timeout: seconds :meth:`stopService` waits for the removal.
    """

    def __init__(
        self,
        clock: IReactorTime,
        mappers: Sequence[IPortMapper],
        internal_port: int | Callable[[], int | None],
        *,
        lease: int = DEFAULT_LEASE,
        retry: RetryPolicy = RetryPolicy(),
        stop_timeout: float = 3.0,
        rng: random.Random | None = None,
        protocol: str = TCP,
    ) -> None:
        """
        :param clock: times renewals, retries and the wait at stop (its
            ``seconds()`` is wall-clock time on a real reactor).
        :param mappers: tried in this order at each try; empty: the service
            stays ``off``.
        :param internal_port: the port, or a function that gives it once its
            listener listens (``None`` before).
        :param lease: seconds of lease asked for.
        :param retry: the waits between tries that mapped nothing.
        :param stop_timeout: seconds the stop waits for the router to
            remove the mapping (it lapses with its lease otherwise).
        :param rng: jitters the waits.
        :param protocol: ``tcp`` (the P2P port) or ``udp`` (the DHT port).
        :raises ValueError: for another protocol.
        """
        self.protocol = check_protocol(protocol)
        self.name = "nat" if protocol == TCP else f"nat-{protocol}"
        self._label = protocol.upper()  # "TCP port 3000" in the logs
        # How the status names the port while it is not known (as before, for TCP).
        self._unknown = "the P2P port" if protocol == TCP else f"the {self._label} port"
        self._clock = clock
        self.mappers = tuple(mappers)
        self._port = internal_port if callable(internal_port) else (lambda: internal_port)
        self._lease = lease
        self._retry = retry
        self.stop_timeout = stop_timeout
        self._rng = rng or random.Random()
        self._status = MappingStatus(
            internal_port=internal_port if isinstance(internal_port, int) else None,
            protocol=self.protocol,
        )
        self._observers: list[Observer] = []
        self._timer: IDelayedCall | None = None
        self._work: Deferred[None] | None = None
        self._mapper: IPortMapper | None = None
        self._mapping: Mapping | None = None
        self._failures = 0
        self._was_mapped = False
        self._said: str | None = None  # the last failure logged above debug

    # Reading and observing.

    def status(self) -> dict[str, Any]:
        """The mapping's status, JSON-ready (:meth:`MappingStatus.as_dict`)."""
        return self._status.as_dict()

    @property
    def current(self) -> MappingStatus:
        """The mapping's status, typed."""
        return self._status

    def mapped(self) -> tuple[str, int] | None:
        """``(external address, external port)`` while the router maps the port, else ``None``."""
        status = self._status
        if status.state != MAPPED or status.external_port is None:
            return None
        return status.external_address or "", status.external_port

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """
        Call C{observer} with the new status whenever the state, the method,
        the external address or the external port changes (not at a renewal
        that changes none of them).

        :return: a function that unsubscribes it.
        """
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def _set(self, status: MappingStatus) -> None:
        before, self._status = self._status, status
        if before._seen() == status._seen():
            return
        for observer in list(self._observers):
            try:
                observer(status)
            except Exception:
                log.failure("port mapping: an observer failed")

    # Start and stop.

    def startService(self) -> None:
        """Start trying, at the next turn of the clock (the start does no I/O)."""
        super().startService()
        self._failures = 0
        self._was_mapped = False
        self._said = None
        if not self.mappers:
            return
        self._set(MappingStatus(TRYING, internal_port=self._known_port(), protocol=self.protocol))
        self._schedule(0)

    def stopService(self) -> Deferred[None]:
        """
        Stop trying and remove the mapping, waiting :attr:`stop_timeout`
        seconds at most; never fails.
        """
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        work, self._work = self._work, None
        if work is not None:
            work.cancel()
        mapper, mapping = self._mapper, self._mapping
        self._mapper = self._mapping = None
        if mapper is not None and mapping is not None:
            await self._remove(mapper, mapping)
        for each in self.mappers:
            try:
                each.close()
            except Exception:
                log.failure(
                    "port mapping ({protocol}): closing the {name} mapper failed",
                    protocol=self._label, name=each.name,
                )  # fmt: skip
        self._set(
            MappingStatus(OFF, internal_port=self._status.internal_port, protocol=self.protocol)
        )

    async def _remove(self, mapper: IPortMapper, mapping: Mapping) -> None:
        removing = mapper.unmap(mapping)
        removing.addTimeout(self.stop_timeout, self._clock)
        try:
            await removing
        except DeferredTimeout:
            log.warn(
                "port mapping: the router did not confirm the removal of {protocol} port {port} "
                "in {timeout} s; it lapses with its lease",
                protocol=self._label, port=mapping.external_port, timeout=self.stop_timeout,
            )  # fmt: skip
        except (NoGateway, GatewayRefused) as e:
            log.warn(
                "port mapping: removing {protocol} port {port} failed: {error}",
                protocol=self._label, port=mapping.external_port, error=str(e),
            )  # fmt: skip
        except Exception:
            log.failure(
                "port mapping: removing {protocol} port {port} failed",
                protocol=self._label, port=mapping.external_port,
            )  # fmt: skip
        else:
            log.info(
                "port mapping: removed {protocol} port {port} ({method})",
                protocol=self._label, port=mapping.external_port, method=mapping.method,
            )  # fmt: skip

    # Trying, renewing, waiting.

    def _schedule(self, delay: float) -> None:
        self._timer = self._clock.callLater(delay, self._run)

    def _run(self) -> None:
        self._timer = None
        if not self.running:
            return
        work = Deferred.fromCoroutine(self._renew() if self._mapping else self._try())
        self._work = work

        def finished(result: object) -> None:
            if self._work is work:
                self._work = None
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.failure(
                    "port mapping ({protocol}): a try failed unexpectedly",
                    result, protocol=self._label,
                )  # fmt: skip
                if self.running and self._timer is None:
                    self._wait_after_failure()

        work.addBoth(finished)

    def _known_port(self) -> int | None:
        try:
            return self._port()
        except Exception:
            log.failure(
                "port mapping ({protocol}): {unknown} is not known",
                protocol=self._label, unknown=self._unknown,
            )  # fmt: skip
            return None

    async def _try(self) -> None:
        port = self._known_port()
        if port is None or port <= 0:
            self._failed(TRYING, None, f"{self._unknown} is not known yet")
            return
        wanted = self._status.external_port or port
        refused: list[GatewayRefused] = []
        silent: list[str] = []
        for mapper in self.mappers:
            try:
                mapping = await mapper.map(port, wanted, self._lease, protocol=self.protocol)
            except GatewayRefused as e:
                refused.append(e)
            except NoGateway as e:
                silent.append(str(e))
            except CancelledError:
                raise
            except Exception as e:
                log.failure(
                    "port mapping ({protocol}): the {name} mapper failed",
                    protocol=self._label, name=mapper.name,
                )  # fmt: skip
                silent.append(f"{mapper.name}: {e}")
            else:
                self._mapped(mapper, mapping)
                return
        if refused:
            self._failed(REFUSED, refused[0].method, str(refused[0]))
        elif self._was_mapped:
            self._failed(LOST, self._status.method, "; ".join(silent))
        else:
            self._failed(NONE, None, "no router answered (" + "; ".join(silent) + ")")

    async def _renew(self) -> None:
        mapper, mapping = self._mapper, self._mapping
        assert mapper is not None and mapping is not None
        try:
            renewed = await mapper.map(
                mapping.internal_port, mapping.external_port, self._lease, protocol=self.protocol
            )
        except GatewayRefused as e:
            self._mapper = self._mapping = None
            self._failed(REFUSED, e.method, str(e))
        except NoGateway as e:
            self._mapper = self._mapping = None
            self._failed(LOST, mapping.method, str(e))
        else:
            self._mapped(mapper, renewed)

    def _mapped(self, mapper: IPortMapper, mapping: Mapping) -> None:
        if not self.running:
            return
        before = self._mapping
        self._mapper, self._mapping = mapper, mapping
        self._failures = 0
        self._was_mapped = True
        self._said = None
        now = self._clock.seconds()
        lease = mapping.lifetime
        self._set(
            MappingStatus(
                MAPPED, mapping.method, mapping.internal_port, mapping.external_address,
                mapping.external_port, lease, now + lease if lease else None,
                protocol=self.protocol,
            )
        )  # fmt: skip
        fields = dict(
            protocol=self._label, internal=mapping.internal_port,
            address=mapping.external_address or "?",
            external=mapping.external_port, method=mapping.method, lease=lease,
        )  # fmt: skip
        if before is None or (before.external_port, before.external_address) != (
            mapping.external_port,
            mapping.external_address,
        ):
            log.info(
                "port mapping: {protocol} port {internal} is reachable at {address}:{external} "
                "({method}, lease {lease} s)",
                **fields,
            )
        else:
            log.debug(
                "port mapping: renewed {protocol} port {internal} at {address}:{external} "
                "({method})",
                **fields,
            )
        self._schedule(max(MIN_RENEW, (lease or self._lease) / 2))

    def _failed(self, state: str, method: str | None, error: str) -> None:
        if not self.running:
            return
        self._failures += 1
        delay = self._retry.delay(self._failures, self._rng)
        retry_at = self._clock.seconds() + delay
        status = self._status
        self._set(
            MappingStatus(
                state, method, self._known_port(),
                status.external_address if state == LOST else None,
                status.external_port if state == LOST else None,
                error=error, retry_at=retry_at, protocol=self.protocol,
            )
        )  # fmt: skip
        self._log_failure(state, error, delay)
        self._schedule(delay)

    def _wait_after_failure(self) -> None:
        self._failures += 1
        self._schedule(self._retry.delay(self._failures, self._rng))

    def _log_failure(self, state: str, error: str, delay: float) -> None:
        said = f"{state}: {error}"
        port = self._status.internal_port
        fields = dict(
            protocol=self._label, port="?" if port is None else port, error=error, delay=delay
        )
        if said == self._said:
            log.debug(
                "port mapping of {protocol} port {port}: still {said}; next try in {delay:.0f} s",
                said=said, **fields,
            )  # fmt: skip
            return
        self._said = said
        if state == NONE:
            log.info(
                "port mapping: no UPnP or NAT-PMP/PCP router answered for {protocol} port "
                "{port}; the node is reachable only where its address is public ({error})",
                **fields,
            )
        elif state == LOST:
            log.warn(
                "port mapping of {protocol} port {port} lost: {error}; next try in {delay:.0f} s",
                **fields,
            )
        else:
            log.warn(
                "port mapping of {protocol} port {port} {state}: {error}; next try in "
                "{delay:.0f} s",
                state=state, **fields,
            )  # fmt: skip


def build_mappers(
    reactor: Any,
    nat: str = "auto",
    *,
    gateway: str | None = None,
    upnp_root_url: str | None = None,
) -> list[IPortMapper]:
    """
    The mappers for a ``--nat`` choice, in the order they are tried: PCP
    and NAT-PMP first (one datagram to the gateway, answered or refused at
    once), then UPnP-IGD (SSDP discovery waits seconds for answers).

    :param reactor: the node's reactor (UDP, threads, time).
    :param nat: one of :data:`NAT_CHOICES`.
    :param gateway: the NAT-PMP/PCP gateway; ``None``: the default gateway.
    :param upnp_root_url: the IGD's root description URL; ``None``: SSDP.
    :raises ValueError: for another C{nat}.
    """
    if nat not in NAT_CHOICES:
        raise ValueError(f"--nat is one of {', '.join(NAT_CHOICES)}, not {nat!r}")
    mappers: list[IPortMapper] = []
    if nat in ("auto", NATPMP):
        mappers.append(PortControlMapper(reactor, gateway))
    if nat in ("auto", UPNP):
        mappers.append(UPnPMapper(reactor, root_url=upnp_root_url))
    return mappers
