"""Listening TCP ports of a node's services, and the error that stops a start.

Not a stage of the data path but what two stages share: the peer layer
(:class:`~bitfitech.peer.service.PeerService`) and the HTTP API
(:class:`~bitfitech.api.service.ApiService`) each own one listening port,
opened in ``startService`` and closed in ``stopService``.  A port that
cannot be opened raises :class:`StartupError` at once, so a busy port
aborts the node's start instead of being logged and ignored (the way
``strports.service`` would).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTCP,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure


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
            raise StartupError(f"cannot listen for {what}: {detail or reason.socketError}")
        raise StartupError(f"cannot listen for {what}: {result.getErrorMessage()}")
    return result


def tcp_server_endpoint(reactor: IReactorTCP, host: str, port: int) -> IStreamServerEndpoint:
    """A TCP server endpoint on C{host} (IPv4 or IPv6 literal) and C{port}."""
    if ":" in host:
        return TCP6ServerEndpoint(reactor, port, interface=host)
    return TCP4ServerEndpoint(reactor, port, interface=host)


class ListeningService(Service):
    """
    A service that owns one listening port: its subclass opens it in
    ``startService`` (with :func:`listen_now`) and closes it in
    ``stopService`` (with :meth:`stop_listening`).

    :ivar port: the listening port while open, else ``None``.
    """

    def __init__(self) -> None:
        self.port: IListeningPort | None = None

    @property
    def listen_port(self) -> int:
        """The port number actually listened on (useful with port 0), or 0."""
        return self.port.getHost().port if self.port is not None else 0  # type: ignore[attr-defined]

    def stop_listening(self) -> Deferred[Any] | None:
        """Close the port; ``None`` if none is open, else fires once it is closed."""
        if self.port is None:
            return None
        port, self.port = self.port, None
        return Deferred.fromCoroutine(_await(port.stopListening()))


async def _await(value: Any) -> Any:
    """Await C{value} if it is a Deferred (stopListening may return None)."""
    if isinstance(value, Deferred):
        return await value
    return value
