"""Multicast DNS / DNS-SD discovery (RFC 6762, RFC 6763) of bitfi nodes on the LAN.

Data path, bottom up:

- :mod:`~bitfitech.discovery.mdns.codec`: datagrams <-> typed packets
  (:mod:`twisted.names.dns` underneath, the mDNS class bits on top);
- :mod:`~bitfitech.discovery.mdns.responder`: publishes this node's
  ``<node id>._bitfi._tcp.local.`` instance (probe, announce, answer,
  defend, goodbye);
- :mod:`~bitfitech.discovery.mdns.browser`: finds the other instances and
  hands those of our network that share a market with us to
  ``found(host, port, node_id, markets)``;
- :mod:`~bitfitech.discovery.mdns.service`: the multicast sockets, one per
  family (:class:`MDNSProtocol`; the IPv6 one opened by
  :mod:`~bitfitech.discovery.mdns.ipv6`), and the :class:`MDNSService` the
  node runs.
"""

from __future__ import annotations

from .browser import Browser
from .codec import MDNSDecodeError, Packet, decode_packet, encode_packet
from .ipv6 import MDNS_GROUP6
from .responder import SERVICE_TYPE, Responder
from .service import MDNS_GROUP, MDNSError, MDNSProtocol, MDNSService, local_addresses

__all__ = [
    "MDNS_GROUP",
    "MDNS_GROUP6",
    "SERVICE_TYPE",
    "Browser",
    "MDNSDecodeError",
    "MDNSError",
    "MDNSProtocol",
    "MDNSService",
    "Packet",
    "Responder",
    "decode_packet",
    "encode_packet",
    "local_addresses",
]
