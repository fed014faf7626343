"""Behind a router: ask it to forward the node's ports, and learn its public address.

- :mod:`bitfitech.nat.service`: :class:`~bitfitech.nat.service.PortMappingService`,
  which keeps one mapping (the P2P port over TCP, or the DHT port over UDP:
  one service per protocol), renews it, removes it on stop and reports it;
- :mod:`bitfitech.nat.pmp`: PCP (RFC 6887) and NAT-PMP (RFC 6886) over
  Twisted UDP, on the pure messages of :mod:`bitfitech.nat.portcontrol`;
- :mod:`bitfitech.nat.upnp`: UPnP-IGD through ``miniupnpc``, on a worker
  thread of its own;
- :mod:`bitfitech.nat.gateway`: where NAT-PMP and PCP requests go;
- :mod:`bitfitech.nat.mapping`: the mapping, its errors, the mapper interface.

A mapping says only what the router claims: whether peers can really dial
the external address is for a dial-back check to tell.
"""

from .mapping import TCP, UDP, GatewayRefused, IPortMapper, Mapping, NoGateway
from .service import MappingStatus, PortMappingService, RetryPolicy, build_mappers

__all__ = [
    "GatewayRefused",
    "IPortMapper",
    "Mapping",
    "MappingStatus",
    "NoGateway",
    "PortMappingService",
    "RetryPolicy",
    "TCP",
    "UDP",
    "build_mappers",
]
