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
- :mod:`~bitfitech.discovery.mdns.service`: the multicast socket
  (:class:`MDNSProtocol`) and the :class:`MDNSService` the node runs.
"""

from __future__ import annotations

from .browser import Browser
from .codec import MDNSDecodeError, Packet, decode_packet, encode_packet
from .responder import SERVICE_TYPE, Responder
from .service import MDNS_GROUP, MDNSError, MDNSProtocol, MDNSService, local_addresses

__all__ = [
    "MDNS_GROUP",
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
