"""The discovery stage's service: runs one discovery service, required or optional.

Data path: the network (mDNS multicast, DHT datagrams) -> the discovery
service (:class:`~bitfitech.discovery.mdns.MDNSService`,
:class:`~bitfitech.discovery.kademlia.service.DHTService`) -> the
:data:`~bitfitech.discovery.PeerFound` callback it was built with (the peer
layer's address book).  :class:`DiscoveryService` wraps one of them in the
node's service tree and decides what a failed start means.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError

from ..listening import DUAL_STACK, StartupError
from ..logs import logger
from .mdns import MDNSError

log = logger(__name__)


class DiscoveryService(Service):
    """
    Runs one discovery service as a child of the node.

    A discovery service that cannot start is logged and left off when it
    is optional (mDNS: another program may hold the port without sharing
    it), or stops the node's start when the user's settings are at fault
    (the DHT's UDP port is busy).

    :ivar service: the discovery service while it runs, or ``None``.
    """

    def __init__(self, name: str, discovery: IService, *, required: bool, what: str) -> None:
        """
        :param name: ``mdns`` or ``dht``.
        :param discovery: the discovery service (not started).
        :param required: whether failing to start stops the node.
        :param what: names it in messages (``"the DHT on UDP 0.0.0.0:3000"``).
        """
        self.name = name
        self._discovery = discovery
        self._required = required
        self._what = what
        self.service: Any = None

    def startService(self) -> None:
        """Start the discovery service."""
        try:
            self._discovery.startService()
        except (MDNSError, CannotListenError, OSError) as e:
            if self._required:
                raise StartupError(f"cannot start {self._what}: {e}") from None
            log.warn("{what} is off: {error}", what=self._what, error=str(e))
        else:
            self.service = self._discovery
        super().startService()

    def stopService(self) -> Deferred[Any] | None:
        """Stop the discovery service, if it runs."""
        super().stopService()
        service, self.service = self.service, None
        if service is None:
            return None
        stopped: Deferred[Any] = maybeDeferred(service.stopService)
        return stopped

    def status(self) -> dict[str, Any] | None:
        """The discovery service's status, or ``None`` when it does not run."""
        return None if self.service is None else dict(self.service.status())


def dht_bind_hosts(host: str) -> tuple[str, ...]:
    """
    The addresses the DHT binds, given the P2P bind address: both
    families' every address for none, else that one address (``--host``
    narrows the DHT to its family, as it narrows the P2P listener; ``::``
    is IPv6 only for both).
    """
    return (host,) if host else DUAL_STACK
