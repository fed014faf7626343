"""UPnP-IGD port mappings through miniupnpc, on a worker thread of their own.

Data path: :class:`~bitfitech.nat.service.PortMappingService` ->
:class:`UPnPMapper` -> :class:`BlockingCaller` (one daemon thread) ->
``miniupnpc``: SSDP discovery (or the root description URL it was given),
then the SOAP actions ``AddPortMapping``, ``GetExternalIPAddress`` and
``DeletePortMapping`` over HTTP to the router -> back on the reactor
thread as a :class:`~bitfitech.nat.mapping.Mapping`.

Why miniupnpc.  It is the client half of miniupnpd, the UPnP daemon in
most home routers, kept by the same author; Bitcoin Core and Transmission
have used it for years.  Its PyPI package is a 48 kB C extension with
``manylinux`` wheels for CPython 3.11 and no dependencies, so a fresh
``pip install`` (and ``make test``'s new venv) needs no compiler.  Its API
blocks, but each call releases the GIL and each socket has a timeout
(built with ``MINIUPNPC_SET_SOCKET_TIMEOUT``: 3 s to connect, 3 s per send,
5 s per read), and it can be pointed at a router without multicast:
``selectigd(url)`` takes a root description URL, and ``discover()`` asks a
minissdpd socket before it multicasts, so tests reach a fake IGD on
``127.0.0.1`` through both paths.  The alternative, ``async-upnp-client``
(Home Assistant's, well kept), is asyncio: bitfi runs on Twisted's default
reactor, so it would need the asyncio reactor for the whole node or a
second event loop on a thread of its own (which blocks from our side just
the same), and it brings aiohttp, voluptuous, defusedxml and
python-didl-lite with their compiled parts for four SOAP calls.

Why not ``deferToThread``.  The reactor's pool is joined when the reactor
stops, so a router that stalls a call (each socket wait is bounded, but a
slow router can chain them) would hold up the node's exit.  The mapper's
:class:`BlockingCaller` runs its calls on one daemon thread, one at a time
(a ``miniupnpc.UPnP`` object is not thread-safe), and every call's Deferred
times out on the reactor's clock: the service never waits longer than it
chose to, and the process can exit under a call that is still stuck.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.python.failure import Failure
from zope.interface import implementer

from ..logs import logger
from .mapping import (
    TCP,
    UDP,
    UPNP,
    GatewayRefused,
    IPortMapper,
    Mapping,
    MappingError,
    NoGateway,
    check_protocol,
)

log = logger(__name__)

T = TypeVar("T")

# The SOAP errorCodes miniupnpc names (its upnperrors.c), by the name it
# raises them with: the Python binding raises a bare Exception carrying
# only strupnperror()'s text.
UPNP_ERRORS = {
    401: "Invalid Action",
    402: "Invalid Args",
    501: "Action Failed",
    600: "Argument Value Invalid",
    601: "Argument Value Out of Range",
    602: "Optional Action Not Implemented",
    603: "Out of Memory",
    604: "Human Intervention Required",
    605: "String Argument Too Long",
    606: "Action not authorized",
    713: "SpecifiedArrayIndexInvalid",
    714: "NoSuchEntryInArray",
    715: "WildCardNotPermittedInSrcIP",
    716: "WildCardNotPermittedInExtPort",
    718: "ConflictInMappingEntry",
    724: "SamePortValuesRequired",
    725: "OnlyPermanentLeasesSupported",
    726: "RemoteHostOnlySupportsWildcard",
    727: "ExternalPortOnlySupportsWildcard",
    728: "NoPortMapsAvailable",
    729: "ConflictWithOtherMechanisms",
    730: "PortMappingNotFound",
    731: "ReadOnly",
    732: "WildCardNotPermittedInIntPort",
    733: "InconsistentParameters",
}
_CODES = {text: code for code, text in UPNP_ERRORS.items()}

UPNP_PROTOCOLS = {TCP: "TCP", UDP: "UDP"}
"""``NewProtocol`` of ``AddPortMapping`` and ``DeletePortMapping``, for each protocol."""

CONFLICT = 718
"""``ConflictInMappingEntry``: another host holds that external port."""
CONFLICTS = frozenset({CONFLICT, 729})
"""Errors that say "try another external port"."""
ONLY_PERMANENT = 725
"""``OnlyPermanentLeasesSupported``: ask again with lease 0."""
NO_SUCH_ENTRY = 714
"""``NoSuchEntryInArray``: the mapping to delete is gone already."""

_UNREACHABLE = frozenset(
    {
        "Miniupnpc HTTP error",
        "Miniupnpc Socket error",
        "Miniupnpc Invalid response",
        "Miniupnpc Memory allocation error",
        "No UPnP device discovered",
    }
)
"""miniupnpc's texts for "no router answered" rather than "the router said no"."""


def upnp_error(error: Exception, *, discovering: bool = False) -> MappingError:
    """
    The :class:`MappingError` for an exception miniupnpc raised.

    :param discovering: the error came from discovery, where anything means
        that no router was found.
    """
    text = str(error)
    if discovering or text in _UNREACHABLE:
        return NoGateway(UPNP, f"no UPnP router answered ({text})")
    return GatewayRefused(UPNP, _CODES.get(text), text)


class BlockingCaller:
    """
    Runs blocking calls one at a time on a daemon thread of its own.

    The thread starts with the first call and ends at :meth:`close` (after
    the call it is in, if any).  A call whose Deferred timed out or was
    cancelled before its turn is skipped; one that finishes after it is
    dropped.
    """

    def __init__(self, reactor: Any, name: str) -> None:
        """
        :param reactor: provides ``IReactorThreads`` (``callFromThread``)
            and ``IReactorTime`` (for the timeouts).
        :param name: the thread's name.
        """
        self._reactor = reactor
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Deferred[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._waiting: set[Deferred[Any]] = set()

    def call(self, timeout: float, function: Callable[[], T]) -> Deferred[T]:
        """
        Run C{function()} on the thread.

        :return: a Deferred with its result or exception, failing with
            :class:`twisted.internet.defer.TimeoutError` after C{timeout}
            seconds.
        """
        d: Deferred[T] = Deferred()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        self._queue.put((function, d))
        d.addTimeout(timeout, self._reactor)
        self._waiting.add(d)

        def done(result: object) -> object:
            self._waiting.discard(d)
            return result

        d.addBoth(done)
        return d

    def close(self) -> None:
        """
        Cancel the calls not answered yet and let the thread end after the
        call it is in; a later call starts a new thread.
        """
        for d in list(self._waiting):
            d.cancel()
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            function, d = item
            if d.called:  # timed out or cancelled while it waited
                continue
            try:
                result = function()
            except BaseException as e:  # handed to the reactor thread, not lost
                self._reactor.callFromThread(_deliver, d, Failure(e))
            else:
                self._reactor.callFromThread(_deliver, d, result)


def _deliver(d: Deferred[Any], result: Any) -> None:
    if not d.called:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


@implementer(IPortMapper)
class UPnPMapper:
    """
    TCP and UDP port mappings on a UPnP Internet Gateway Device, with miniupnpc.

    The first :meth:`map` finds the router (SSDP discovery, or the root
    description URL given) and keeps its control URL; a router that stops
    answering is forgotten, so the next try discovers it again (miniupnpd
    picks a new HTTP port at each boot).  An external port another host
    holds (``ConflictInMappingEntry``) is traded for a random one, a few
    times; a router that grants permanent mappings only gets lease 0.

    All ``miniupnpc`` calls run on the mapper's :class:`BlockingCaller`.
    """

    name = UPNP

    def __init__(
        self,
        reactor: Any,
        *,
        root_url: str | None = None,
        minissdpd_socket: str | None = None,
        multicast_interface: str | None = None,
        discover_delay: float = 2.0,
        timeout: float = 20.0,
        description: str = "bitfi",
        alternatives: int = 3,
        rng: random.Random | None = None,
    ) -> None:
        """
        :param reactor: provides ``IReactorThreads`` and ``IReactorTime``.
        :param root_url: the IGD's root description URL; ``None``: discover
            it (SSDP multicast, after asking minissdpd).
        :param minissdpd_socket: the minissdpd socket discovery asks first
            (``None``: miniupnpc's default, ``/var/run/minissdpd.sock``).
        :param multicast_interface: the interface address SSDP searches go
            out on (``None``: the system's choice).
        :param discover_delay: seconds SSDP discovery waits for answers, per
            search (miniupnpc searches for up to four device types).
        :param timeout: seconds one operation (discovery and a mapping, or a
            removal) may take before it counts as unanswered.
        :param description: the mapping's description on the router's page.
        :param alternatives: external ports tried at random after a conflict.
        :param rng: picks those ports.
        """
        self._caller = BlockingCaller(reactor, "bitfi-upnp")
        self._root_url = root_url
        self._minissdpd_socket = minissdpd_socket
        self._multicast_interface = multicast_interface
        self._discover_delay_ms = max(0, round(discover_delay * 1000))
        self._timeout = timeout
        self._description = description
        self._alternatives = alternatives
        self._rng = rng or random.Random()
        self._device: Any = None  # a miniupnpc.UPnP, touched on the worker thread only
        self._stale = False  # a call timed out: rediscover before the next one

    def map(
        self, internal_port: int, external_port: int, lifetime: int, protocol: str = TCP
    ) -> Deferred[Mapping]:
        """
        See :meth:`IPortMapper.map`.

        :raises ValueError: for a protocol other than ``tcp`` or ``udp``.
        """
        check_protocol(protocol)
        alternatives = [self._rng.randrange(1024, 65536) for _ in range(self._alternatives)]
        ports = [external_port, *alternatives]
        return self._call(lambda: self._map_blocking(internal_port, ports, lifetime, protocol))

    def unmap(self, mapping: Mapping) -> Deferred[None]:
        """
        See :meth:`IPortMapper.unmap`.

        :raises ValueError: for a mapping of another protocol than ``tcp`` or ``udp``.
        """
        check_protocol(mapping.protocol)
        return self._call(lambda: self._unmap_blocking(mapping.external_port, mapping.protocol))

    def close(self) -> None:
        """See :meth:`IPortMapper.close`."""
        self._caller.close()

    def _call(self, function: Callable[[], T]) -> Deferred[T]:
        d = self._caller.call(self._timeout, function)

        def unanswered(failure: Failure) -> Failure:
            if failure.check(DeferredTimeout):
                self._stale = True  # read on the worker thread before its next call
                return Failure(NoGateway(UPNP, f"no answer in {self._timeout:g} s"))
            return failure

        d.addErrback(unanswered)
        return d

    # On the worker thread from here on.

    def _select(self) -> Any:
        if self._stale:
            self._device, self._stale = None, False
        if self._device is not None:
            return self._device
        try:
            import miniupnpc  # type: ignore[import-not-found,import-untyped,unused-ignore]
        except ImportError as e:
            raise NoGateway(UPNP, f"miniupnpc is not installed ({e})") from None
        device = miniupnpc.UPnP(
            multicastif=self._multicast_interface,
            minissdpdsocket=self._minissdpd_socket,
            discoverdelay=self._discover_delay_ms,
        )
        try:
            if self._root_url is None:
                device.discover()
                device.selectigd()
            else:
                device.selectigd(self._root_url)
        except Exception as e:
            if type(e) is not Exception:
                raise
            raise upnp_error(e, discovering=True) from None
        self._device = device
        return device

    def _run(self, action: Callable[[], T]) -> T:
        """Run one miniupnpc action; a router that stops answering is forgotten."""
        try:
            return action()
        except Exception as e:
            if type(e) is not Exception:  # a bug of ours (TypeError...), not the router
                raise
            error = upnp_error(e)
            if isinstance(error, NoGateway):
                self._device = None
            raise error from None

    def _map_blocking(
        self, internal_port: int, ports: list[int], lifetime: int, protocol: str
    ) -> Mapping:
        device = self._select()
        lan = device.lanaddr
        conflict: GatewayRefused | None = None
        for port in ports:
            try:
                granted = self._add(device, port, lan, internal_port, lifetime, protocol)
            except GatewayRefused as e:
                if e.code not in CONFLICTS:
                    raise
                conflict = e
                continue
            address = self._external_address(device)
            return Mapping(UPNP, internal_port, port, address, granted, protocol)
        assert conflict is not None
        raise conflict

    def _add(
        self, device: Any, port: int, lan: str, internal_port: int, lifetime: int, protocol: str
    ) -> int:
        def add(lease: int) -> Callable[[], Any]:
            return lambda: device.addportmapping(
                port, UPNP_PROTOCOLS[protocol], lan, internal_port, self._description, "", lease
            )

        try:
            self._run(add(lifetime))
        except GatewayRefused as e:
            if e.code != ONLY_PERMANENT or lifetime == 0:
                raise
            self._run(add(0))
            return 0
        return lifetime

    def _external_address(self, device: Any) -> str | None:
        try:
            address = self._run(device.externalipaddress)
        except GatewayRefused as e:
            log.debug("UPnP: the router does not tell its address: {error}", error=e.reason)
            return None
        return str(address) or None

    def _unmap_blocking(self, external_port: int, protocol: str) -> None:
        device = self._select()
        try:
            self._run(lambda: device.deleteportmapping(external_port, UPNP_PROTOCOLS[protocol]))
        except GatewayRefused as e:
            if e.code != NO_SUCH_ENTRY:
                raise
