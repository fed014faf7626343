"""Listening ports of a node's services, and the error that stops a start.

Not a stage of the data path but what two stages share: the peer layer
(:class:`~bitfitech.peer.service.PeerService`) and the HTTP API
(:class:`~bitfitech.api.service.ApiService`) each own one listening port
(or one per address family), opened in ``startService`` and closed in
``stopService``; the DHT binds its UDP ports with :func:`listen_udp`.  A port that
cannot be opened raises :class:`StartupError` at once, so a busy port
aborts the node's start instead of being logged and ignored (the way
``strports.service`` would).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorSocket,
    IReactorTCP,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import DatagramProtocol, ServerFactory
from twisted.python.failure import Failure

from .address import format_hostport
from .logs import logger

log = logger(__name__)

DUAL_STACK: tuple[str, str] = ("0.0.0.0", "::")
"""The bind addresses of "every address, IPv4 and IPv6": two sockets, the IPv6 one IPv6 only."""

BACKLOG = 50
"""The listen queue of a socket this module opens itself (Twisted's default)."""

_PORT_TRIES = 8
"""Tries at one OS-chosen port free on both families before giving up."""

NO_FAMILY = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})
"""Errors that say the host lacks a family (the dual-stack default then runs on the other)."""


class StartupError(Exception):
    """The node cannot start (a busy port, an unusable data directory or key file)."""


def listen_now(
    endpoint: IStreamServerEndpoint, factory: IProtocolFactory, what: str
) -> IListeningPort:
    """
    Listen on C{endpoint} and return the port, raising at once if that fails
    (so a busy port aborts start-up instead of being logged and ignored).

    :param what: names the listener in the error (``"peers on 0.0.0.0:3000"``).
    :raises StartupError: when the endpoint cannot listen.
    """
    outcome: list[IListeningPort | Failure] = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome:
        raise StartupError(f"cannot listen for {what}: listening did not complete at once")
    result = outcome[0]
    if isinstance(result, Failure):
        reason = result.value
        if isinstance(reason, CannotListenError) and reason.socketError is not None:
            detail = str(reason.socketError.args[-1]) if reason.socketError.args else ""
            raise StartupError(
                f"cannot listen for {what}: {detail or reason.socketError}"
            ) from reason.socketError
        raise StartupError(f"cannot listen for {what}: {result.getErrorMessage()}")
    return result


def tcp_server_endpoint(reactor: IReactorTCP, host: str, port: int) -> IStreamServerEndpoint:
    """A TCP server endpoint on C{host} (IPv4 or IPv6 literal) and C{port}."""
    if ":" in host:
        return TCP6ServerEndpoint(reactor, port, interface=host)
    return TCP4ServerEndpoint(reactor, port, interface=host)


def listen_tcp(
    reactor: IReactorTCP, host: str, port: int, factory: IProtocolFactory, what: str
) -> IListeningPort:
    """
    Listen on C{host} (an IPv4 or IPv6 literal) and C{port}, at once.  An
    IPv6 socket is IPv6 only (``IPV6_V6ONLY``), so an IPv4 socket on the
    same port can stand beside it; Twisted's own IPv6 ports are not, so the
    socket is made here and handed to the reactor (``adoptStreamPort``)
    where the reactor can take one.

    :param what: names the listener in the error (``"peers"``).
    :raises StartupError: when it cannot listen.
    """
    where = f"{what} on {format_hostport(host, port)}"
    if ":" not in host or not IReactorSocket.providedBy(reactor):
        return listen_now(tcp_server_endpoint(reactor, host, port), factory, where)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
        adopted: IListeningPort = reactor.adoptStreamPort(  # type: ignore[attr-defined]
            sock.fileno(), socket.AF_INET6, cast(ServerFactory[Any], factory)
        )
        return adopted
    except OSError as e:
        raise StartupError(f"cannot listen for {where}: {e.strerror or e}") from e
    finally:
        sock.close()  # the reactor holds its own copy


def listen_udp(reactor: Any, host: str, port: int, protocol: DatagramProtocol) -> Any:
    """
    Bind C{protocol} to UDP C{host} (an IPv4 or IPv6 literal) and C{port}.
    A socket on ``::`` is made IPv6 only and handed to the reactor
    (``adoptDatagramPort``), as :func:`listen_tcp` does, so an IPv4 socket
    on ``0.0.0.0`` and the same port can stand beside it; other addresses
    (and reactors that cannot adopt a socket) go through ``listenUDP``.

    :raises CannotListenError: when it cannot bind (its ``socketError``
        says why, as Twisted's).
    """
    if host != "::" or not IReactorSocket.providedBy(reactor):
        return reactor.listenUDP(port, protocol, interface=host)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
        return reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET6, protocol, 8192)
    except OSError as e:
        raise CannotListenError(host, port, e) from e
    finally:
        sock.close()  # the reactor holds its own copy


def listen_all(
    reactor: IReactorTCP,
    hosts: Sequence[str],
    port: int,
    factory: IProtocolFactory,
    what: str,
) -> list[IListeningPort]:
    """
    Listen on every one of C{hosts} at C{port} (the same port on each: with
    0 the OS chooses it for the first, and the others take the same
    number, tried again a few times if that number is taken on another).
    With :data:`DUAL_STACK`, a host with no IPv6 runs on IPv4 alone, with
    a warning.

    :raises StartupError: when a host cannot listen.
    """
    for _ in range(_PORT_TRIES if port == 0 else 1):
        ports: list[IListeningPort] = []
        try:
            for host in hosts:
                number = ports[0].getHost().port if ports else port  # type: ignore[attr-defined]
                try:
                    ports.append(listen_tcp(reactor, host, number, factory, what))
                except StartupError as e:
                    cause = e.__cause__
                    no_family = isinstance(cause, OSError) and cause.errno in NO_FAMILY
                    if tuple(hosts) == DUAL_STACK and no_family and (ports or host != hosts[-1]):
                        family = "IPv6" if ":" in host else "IPv4"
                        log.warn("No {family} here: {what} listen on the other family only "
                                 "({error})", family=family, what=what, error=e)  # fmt: skip
                        continue
                    raise
            return ports
        except StartupError as e:
            for opened in ports:
                opened.stopListening()
            cause = e.__cause__
            if not (port == 0 and ports and isinstance(cause, OSError)
                    and cause.errno == errno.EADDRINUSE):  # fmt: skip
                raise
    raise StartupError(f"cannot listen for {what}: no port free on every address")


class ListeningService(Service):
    """
    A service that owns its listening ports (one, or one per address
    family): its subclass opens them in ``startService`` (with
    :func:`listen_now` or :func:`listen_all`) and closes them in
    ``stopService`` (with :meth:`stop_listening`).

    :ivar ports: the listening ports while open, else empty.
    """

    def __init__(self) -> None:
        self.ports: list[IListeningPort] = []

    @property
    def port(self) -> IListeningPort | None:
        """The first listening port while open, else ``None``."""
        return self.ports[0] if self.ports else None

    @port.setter
    def port(self, port: IListeningPort | None) -> None:
        self.ports = [port] if port is not None else []

    @property
    def listen_port(self) -> int:
        """The port number actually listened on (useful with port 0), or 0."""
        return self.port.getHost().port if self.port is not None else 0  # type: ignore[attr-defined]

    @property
    def listening(self) -> list[str]:
        """Every address listened on, as ``host:port`` (``[::]:3000``)."""
        out = []
        for port in self.ports:
            address: Any = port.getHost()
            out.append(format_hostport(address.host, address.port))
        return out

    def stop_listening(self) -> Deferred[Any] | None:
        """Close the ports; ``None`` if none is open, else fires once they are closed."""
        if not self.ports:
            return None
        ports, self.ports = self.ports, []
        return Deferred.fromCoroutine(_await_all([port.stopListening() for port in ports]))


async def _await_all(values: list[Any]) -> None:
    """Await each of C{values} that is a Deferred (stopListening may return None)."""
    for value in values:
        await _await(value)


async def _await(value: Any) -> Any:
    """Await C{value} if it is a Deferred (stopListening may return None)."""
    if isinstance(value, Deferred):
        return await value
    return value
