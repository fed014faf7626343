"""Discovery: services that find peers' addresses with no configuration.

- :mod:`bitfitech.discovery.mdns`: multicast DNS / DNS-SD (RFC 6762, 6763)
  on the LAN, service type ``_bitfi._tcp.local.``;
- :mod:`bitfitech.discovery.kademlia`: a BitTorrent BEP 5 DHT, where each
  node announces its P2P port under its network's info-hash.

A discovery service only hands candidate addresses to the node (through a
:data:`PeerFound` callback, which puts them in the address book with source
``mdns`` or ``dht``); the dialer decides whom to call.  Neither service
opens a peer link itself.  Both work per market: the DHT looks up and
announces one info-hash per market, and an mDNS instance lists its markets
in its TXT record; each address found comes with the markets of ours the
peer was found to carry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

#: C{found(host, port, node_id, markets)}: a node's P2P listening address
#: (host as an IP literal, TCP port), its node id when the source tells it,
#: else ``None``, and which of our markets the source says it carries (the
#: DHT: the market whose info-hash it was found under; mDNS: the markets its
#: TXT record shares with ours).
PeerFound = Callable[[str, int, "str | None", "tuple[str, ...]"], None]

#: C{found(host, port, node_id)}: the callback of a service built the older,
#: one-market way (a lone ``info_hash``, or ``pair``), which names no market.
OnePeerFound = Callable[[str, int, "str | None"], None]


def reporting(found: PeerFound | OnePeerFound, *, markets: bool) -> PeerFound:
    """
    C{found} as a :data:`PeerFound`: a service given its markets by name
    (C{markets} true) calls it with them; one built the older way calls it
    with three arguments, as it did before there were markets.
    """
    if markets:
        return cast(PeerFound, found)
    one = cast(OnePeerFound, found)

    def without_markets(host: str, port: int, node_id: str | None, _: tuple[str, ...]) -> None:
        one(host, port, node_id)

    return without_markets


class SettingsStore(Protocol):
    """Small persistent values: :class:`bitfitech.storage.Storage` provides it."""

    def get_setting(self, key: str) -> str | None:
        """The value stored under C{key}, or ``None``."""

    def set_setting(self, key: str, value: str) -> None:
        """Store C{value} under C{key}, replacing any earlier one."""
