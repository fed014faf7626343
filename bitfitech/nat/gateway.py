"""Where NAT-PMP and PCP requests go: the IPv4 default gateway.

Data path: read once by :class:`~bitfitech.nat.pmp.PortControlMapper`
when no gateway was given, before its first request.  On Linux the kernel's
routing table (``/proc/net/route``) names the default route's gateway; no
maintained, dependency-free library does better across systems (netifaces
is unmaintained; pyroute2 is Linux only and far larger than this).
Elsewhere (macOS, the BSDs, Windows) the gateway is guessed as the first
host of each private IPv4 network this host sits on (``192.168.1.1`` for
``192.168.1.20/24``), from :mod:`ifaddr`, which bitfi depends on already:
that is where home routers sit, and a guess that misses costs one UDP
datagram and a timeout.  ``--nat-gateway`` (see the service's docs) is the
way out when both fail.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence

import ifaddr

PROC_NET_ROUTE = "/proc/net/route"

_RTF_UP = 0x1
_RTF_GATEWAY = 0x2


def parse_proc_net_route(text: str) -> str | None:
    """
    The gateway of the default route in a ``/proc/net/route`` table, or ``None``.

    Several default routes: the one with the lowest metric.  Addresses in
    that file are host-order (little-endian) hex.
    """
    best: tuple[int, str] | None = None
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags = (int(fields[i], 16) for i in (1, 2, 3))
            metric, mask = int(fields[6]), int(fields[7], 16)
        except ValueError:
            continue
        if destination or mask or not (flags & _RTF_UP and flags & _RTF_GATEWAY):
            continue
        address = socket.inet_ntoa(struct.pack("<L", gateway))
        if best is None or metric < best[0]:
            best = (metric, address)
    return None if best is None else best[1]


def guess_gateways(addresses: Iterable[tuple[str, int]]) -> list[str]:
    """
    The first host of each private IPv4 network among C{addresses}.

    :param addresses: ``(IPv4 address, prefix length)`` pairs of this host.
    """
    guesses: list[str] = []
    for address, prefix in addresses:
        try:
            network = ipaddress.IPv4Interface(f"{address}/{prefix}").network
        except ValueError:
            continue
        ip = ipaddress.IPv4Address(address)
        if not ip.is_private or ip.is_loopback or ip.is_link_local or network.num_addresses < 4:
            continue
        first = str(network.network_address + 1)
        if first != address and first not in guesses:
            guesses.append(first)
    return guesses


def _ipv4_adapter_addresses() -> Sequence[tuple[str, int]]:
    return [
        (ip.ip, int(ip.network_prefix))
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str)
    ]


def default_gateway(route_table: str = PROC_NET_ROUTE) -> str | None:
    """
    This host's IPv4 default gateway, or ``None`` when none can be found.

    Where the routing table can be read, it has the last word (a Linux host
    without a default route has no gateway to ask).  Reads a small file or
    the interface list: the mapper calls it before its first request, not
    on the node's start path.
    """
    try:
        with open(route_table, encoding="ascii", errors="replace") as table:
            return parse_proc_net_route(table.read())
    except OSError:
        pass  # not Linux: guess
    guesses = guess_gateways(_ipv4_adapter_addresses())
    return guesses[0] if guesses else None
