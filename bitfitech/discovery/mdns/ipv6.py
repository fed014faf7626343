"""The IPv6 mDNS socket: where ``[ff02::fb]:5353`` datagrams enter and leave the host.

Data path: the network -> this socket -> the IPv6
:class:`~bitfitech.discovery.mdns.service.MDNSProtocol` (and back through
its ``transport.write``).

Twisted's ``listenMulticast`` opens an IPv6 socket when given ``"::"``, but
it cannot be used for mDNS: it binds before any option can be set, so the
socket cannot be made IPv6-only (``IPV6_V6ONLY``: on a host where sockets
are dual-stack, Linux's default, it would also receive the IPv4 mDNS
traffic of port 5353, as ``::ffff:a.b.c.d``), and its ``joinGroup`` packs
an interface *address* where ``IPV6_JOIN_GROUP`` takes an interface
*index*.  So :func:`listen_ipv6` makes the socket itself (shared with the
host's other responders, IPv6 only, hop limit 255 as RFC 6762 §11 asks,
multicast loopback on), binds it to ``[::]:<port>`` and hands it to the
reactor with ``adoptDatagramPort``; :meth:`IPv6Port.join` joins the group
by interface index.  Sending needs no per-interface option: a datagram for
the group names its interface in the destination's scope id,
``(ff02::fb, 5353, 0, <index>)``.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorSocket
from twisted.internet.protocol import DatagramProtocol

MDNS_GROUP6 = "ff02::fb"
"""The IPv6 mDNS multicast group (link-local scope)."""

HOP_LIMIT = 255
"""Hop limit of everything sent (RFC 6762 §11)."""


class IPv6Listening(Protocol):
    """What :class:`~bitfitech.discovery.mdns.service.MDNSService` needs of its IPv6 socket."""

    def join(self, index: int) -> None:
        """
        Join the mDNS group on the interface of index C{index}.

        :raises OSError: when the interface cannot join it.
        """

    def stopListening(self) -> Deferred[None] | None:
        """Close the socket."""


ListenIPv6 = Callable[[int, DatagramProtocol, int], IPv6Listening]
"""C{listen(port, protocol, max_packet_size)}: open the IPv6 mDNS socket
(:func:`listen_ipv6` on a reactor; tests give a fake)."""


class IPv6Port:
    """
    The IPv6 mDNS socket, adopted by the reactor.

    The reactor reads and writes a duplicate of the socket's descriptor;
    this object keeps the original to set options on it (the duplicate is
    the same socket) and closes it with the reactor's.
    """

    def __init__(self, sock: socket.socket, port: Any) -> None:
        """
        :param sock: the bound socket.
        :param port: what the reactor's ``adoptDatagramPort`` returned for it.
        """
        self._socket = sock
        self._port = port

    def join(self, index: int) -> None:
        """
        Join ``ff02::fb`` on the interface of index C{index}.

        :raises OSError: when the interface cannot join it (no IPv6, no
            multicast, gone).
        """
        request = socket.inet_pton(socket.AF_INET6, MDNS_GROUP6) + struct.pack("@I", index)
        self._socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, request)

    def stopListening(self) -> Deferred[None]:
        """Stop the reactor's reading, and close the socket."""
        stopped: Deferred[None] = maybeDeferred(self._port.stopListening)
        self._socket.close()
        return stopped


def listen_ipv6(
    reactor: Any, port: int, protocol: DatagramProtocol, max_packet_size: int
) -> IPv6Port:
    """
    Open the IPv6 mDNS socket on ``[::]:<port>``, joined to no group yet.

    :param reactor: provides ``adoptDatagramPort``
        (:class:`~twisted.internet.interfaces.IReactorSocket`).
    :param port: the UDP port, 5353.
    :param protocol: receives the datagrams.
    :param max_packet_size: the largest datagram read.
    :raises OSError: when the host has no IPv6 or the port cannot be shared.
    :raises CannotListenError: when the reactor cannot adopt a socket.
    """
    if not IReactorSocket.providedBy(reactor):
        raise CannotListenError(
            "::", port, OSError(errno.EOPNOTSUPP, "this reactor cannot adopt a datagram socket")
        )
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            except OSError as error:
                if error.errno != errno.ENOPROTOOPT:
                    raise
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::", port))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, HOP_LIMIT)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, HOP_LIMIT)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
        sock.setblocking(False)
        adopted = reactor.adoptDatagramPort(
            sock.fileno(), socket.AF_INET6, protocol, max_packet_size
        )
    except BaseException:
        sock.close()
        raise
    return IPv6Port(sock, adopted)
