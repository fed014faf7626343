"""Where IPv6 multicast works on this host: the guard of the real-network IPv6 mDNS tests.

IPv6 multicast needs an interface that can carry it.  Linux's loopback
interface has no ``MULTICAST`` flag and no ``ff00::/8`` route, so a
datagram sent to ``ff02::fb`` on it fails with ``ENETUNREACH``; an
Ethernet interface loops a host's own multicast back to it.  So the tests
use ``::1`` where it works (other systems); else, only when
``$BITFI_TEST_LAN_MULTICAST`` is ``1`` (tests touch nothing but loopback
unless asked), a global or unique-local address of another interface (the
link-local scope of ``ff02::fb`` keeps it on that link, but it does reach
the LAN); else they are skipped with the reason.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

import ifaddr

GROUP = "ff02::fb"


@dataclass(frozen=True)
class Probe:
    """
    The outcome of :func:`probe`.

    :ivar address: an interface address where IPv6 multicast reaches this
        host, or ``None``.
    :ivar index: that interface's index.
    :ivar ipv4: an IPv4 address of the same interface, if it has one.
    :ivar reason: why there is none, when C{address} is ``None``.
    """

    address: str | None
    index: int = 0
    ipv4: str | None = None
    reason: str = ""


LAN_OPT_IN = "BITFI_TEST_LAN_MULTICAST"
"""Set to ``1`` to let the IPv6 mDNS tests multicast on a LAN interface when ``::1`` cannot."""


def _candidates() -> list[tuple[str, int, str | None]]:
    """
    ``::1``, then (only with :data:`LAN_OPT_IN`) every global or
    unique-local IPv6 address, each with its index.
    """
    loopback, others = [], []
    for adapter in ifaddr.get_adapters():
        ipv4 = next((ip.ip for ip in adapter.ips if isinstance(ip.ip, str)), None)
        for ip in adapter.ips:
            if isinstance(ip.ip, str) or not adapter.index:
                continue
            parsed = ipaddress.IPv6Address(ip.ip[0])
            if parsed.is_loopback:
                loopback.append((ip.ip[0], adapter.index, None))
            elif not parsed.is_link_local:
                others.append((ip.ip[0], adapter.index, ipv4))
    return loopback + (others if os.environ.get(LAN_OPT_IN) == "1" else [])


def _self_send(index: int) -> None:
    """Join ff02::fb on interface C{index} and hear a datagram sent to it; OSError if not."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::", 0))
        port = sock.getsockname()[1]
        group = socket.inet_pton(socket.AF_INET6, GROUP)
        sock.setsockopt(
            socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group + struct.pack("@I", index)
        )
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
        sock.settimeout(1.0)
        sock.sendto(b"bitfi ipv6 multicast check", (GROUP, port, 0, index))
        data, _ = sock.recvfrom(100)
        if data != b"bitfi ipv6 multicast check":
            raise OSError("IPv6 multicast delivered something else")


@functools.cache
def probe() -> Probe:
    """Find an interface address where IPv6 multicast to ff02::fb comes back to this host."""
    if not socket.has_ipv6:
        return Probe(None, reason="Python was built without IPv6")
    failures = []
    for address, index, ipv4 in _candidates():
        try:
            _self_send(index)
        except OSError as error:
            failures.append(f"{address}: {error}")
        else:
            return Probe(address, index, ipv4)
    lan = (
        ""
        if os.environ.get(LAN_OPT_IN) == "1"
        else (
            f"; set {LAN_OPT_IN}=1 to run these tests on a LAN interface (they then send "
            "mDNS on that link)"
        )
    )
    if not failures:
        return Probe(None, reason=f"no IPv6 multicast here: no usable address{lan}")
    return Probe(None, reason=f"no IPv6 multicast here ({'; '.join(failures)}){lan}")


def ipv6_multicast_unavailable() -> str | None:
    """Why these tests cannot multicast over IPv6 here, or ``None`` if they can."""
    found = probe()
    return None if found.address is not None else found.reason
