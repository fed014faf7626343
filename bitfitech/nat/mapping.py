"""What every port-mapping method shares: the mapping, its errors, the mapper's interface.

Data path: :class:`~bitfitech.nat.service.PortMappingService` asks one
:class:`IPortMapper` after another (PCP/NAT-PMP in
:mod:`bitfitech.nat.pmp`, UPnP-IGD in :mod:`bitfitech.nat.upnp`) for a
:class:`Mapping` of one of the node's ports (the P2P port over TCP, the DHT
port over UDP: one service per protocol); each answers with one, or fails
with :class:`GatewayRefused` (a router answered no) or :class:`NoGateway`
(nothing answered).  The service decides what each outcome means for its
state, so a mapper never retries on its own beyond one protocol exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

UPNP = "upnp"
NATPMP = "natpmp"
PCP = "pcp"
METHODS = (UPNP, NATPMP, PCP)
"""The methods a mapping can be made with, as :meth:`status` names them."""

TCP = "tcp"
UDP = "udp"
PROTOCOLS = (TCP, UDP)
"""The transport protocols a port can be mapped for; a router keeps TCP 3000 and UDP 3000 apart."""


def check_protocol(protocol: str) -> str:
    """
    C{protocol} when it is one of :data:`PROTOCOLS`.

    :raises ValueError: otherwise.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"the protocol is tcp or udp, not {protocol!r}")
    return protocol


@dataclass(frozen=True)
class Mapping:
    """
    One port mapping of a TCP or UDP port that the router granted.

    :ivar method: ``upnp``, ``natpmp`` or ``pcp``.
    :ivar internal_port: the node's port on this host.
    :ivar external_port: the router's port that forwards to it (the one we
        asked for when it was free, else the router's choice).
    :ivar external_address: the router's public address as it reports it
        (an IPv4 literal), or ``None`` when it did not say.
    :ivar lifetime: seconds the router keeps the mapping without a renewal;
        0 for a mapping without a lease (a UPnP router that only grants
        permanent ones), which the service still renews, to notice a
        router that lost it.
    :ivar protocol: :data:`TCP` or :data:`UDP`, the transport the mapping
        forwards (a removal names it too).
    """

    method: str
    internal_port: int
    external_port: int
    external_address: str | None
    lifetime: int
    protocol: str = TCP


class MappingError(Exception):
    """
    A mapper could not make, renew or remove a mapping.

    :ivar method: the method that failed (``upnp``, ``natpmp``, ``pcp``).
    :ivar reason: what happened, for the status and the log.
    """

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(f"{method}: {reason}")
        self.method = method
        self.reason = reason


class NoGateway(MappingError):
    """Nothing answered: no router speaks the method, or it stopped answering."""


class GatewayRefused(MappingError):
    """
    The router answered, and refused (an error code).

    :ivar code: the protocol's error code (a NAT-PMP or PCP result code, a
        UPnP SOAP ``errorCode``), or ``None`` when the library did not tell.
    """

    def __init__(self, method: str, code: int | None, reason: str) -> None:
        detail = reason if code is None else f"{reason} (error {code})"
        super().__init__(method, f"router refused: {detail}")
        self.code = code


class IPortMapper(Interface):
    """
    One way of asking the router for a port mapping of a TCP or UDP port.

    A mapper holds whatever it learned of the router (the gateway address,
    the UPnP control URL, the protocol version) between calls; its calls
    never run at once (the service waits for each).  Each call's Deferred
    fires within the mapper's own time bound, so the service can wait on it.
    """

    name = Attribute("The mapper's family for logs: ``upnp``, or ``natpmp`` for NAT-PMP/PCP.")

    def map(
        internal_port: int,  # noqa: N805
        external_port: int,
        lifetime: int,
        protocol: str = TCP,
    ) -> Deferred[Mapping]:
        """
        Ask for (or renew) the mapping of C{external_port} to C{internal_port}
        on this host for C{lifetime} seconds, for C{protocol}.

        :param protocol: :data:`TCP` or :data:`UDP`; the mapping granted
            carries it.
        :return: a Deferred firing with the :class:`Mapping` granted (its
            external port may differ), or failing with :class:`NoGateway`
            or :class:`GatewayRefused`.
        """

    def unmap(mapping: Mapping) -> Deferred[None]:  # noqa: N805
        """Remove C{mapping} (for its C{protocol}); fails like :meth:`map`."""

    def close() -> None:
        """Release sockets and threads; the mapper is not used again."""
