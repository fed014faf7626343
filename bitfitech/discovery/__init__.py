"""Discovery: services that find peers' addresses with no configuration.

- :mod:`bitfitech.discovery.mdns`: multicast DNS / DNS-SD (RFC 6762, 6763)
  on the LAN, service type ``_bitfi._tcp.local.``;
- :mod:`bitfitech.discovery.kademlia`: a BitTorrent BEP 5 DHT, where each
  node announces its P2P port under its network's info-hash.

A discovery service only hands candidate addresses to the node (through a
:data:`PeerFound` callback, which puts them in the address book with source
``mdns`` or ``dht``); the dialer decides whom to call.  Neither service
opens a peer link itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

#: C{found(host, port, node_id)}: a node's P2P listening address (host as an
#: IP literal, TCP port) and its node id when the source tells it, else ``None``.
PeerFound = Callable[[str, int, "str | None"], None]


class SettingsStore(Protocol):
    """Small persistent values: :class:`bitfitech.storage.Storage` provides it."""

    def get_setting(self, key: str) -> str | None:
        """The value stored under C{key}, or ``None``."""

    def set_setting(self, key: str, value: str) -> None:
        """Store C{value} under C{key}, replacing any earlier one."""
