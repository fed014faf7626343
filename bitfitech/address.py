"""Peer addresses as users and peers write them: a value every stage that names a peer shares.

``host:port``, ``[v6]:port`` and ``NODEID@host:port`` (an address pinned to
one node id) are parsed here, once, for the command line, the environment,
the HTTP API and the address book alike.  Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

NODE_ID_HEX_LENGTH = 40
_NODE_ID_RE = re.compile(r"\A[0-9a-f]{40}\Z")
_HOSTNAME_RE = re.compile(
    r"\A(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)
#: an IPv6 zone: an interface name (Linux allows 15 characters) or index
_SCOPE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


class AddressError(ValueError):
    """An address string that is not ``host:port`` or ``NODEID@host:port``."""


def is_node_id(value: object) -> bool:
    """
    Tell whether C{value} is a node id: 40 lowercase hex digits.

    :param value: anything.
    :return: ``True`` for a well-formed node id.
    """
    return isinstance(value, str) and _NODE_ID_RE.match(value) is not None


def normalize_host(host: str) -> str:
    """
    Validate a host name or IP literal and return its canonical spelling.

    IPv6 literals lose their brackets and are compressed (``::1``); IPv4
    literals and DNS names are returned as given (names lowercased).

    :raises AddressError: for an empty or malformed host.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise AddressError("empty host")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if ":" in host or not _HOSTNAME_RE.match(host):
            raise AddressError(f"invalid host {host[:80]!r}") from None
        return host.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        # ipaddress accepts any text after "%"; only an interface name or
        # number makes sense, and nothing else may reach logs or the book.
        if _SCOPE_RE.fullmatch(ip.scope_id) is None:
            raise AddressError(f"invalid IPv6 scope in {host[:80]!r}")
    return str(ip)


def is_ip_literal(host: str) -> bool:
    """Tell whether C{host} (already normalized) is an IPv4 or IPv6 literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_port(port: int, *, allow_zero: bool = False) -> int:
    """
    Check a TCP/UDP port number.

    :param allow_zero: accept 0 (let the OS choose) for listening ports.
    :raises AddressError: when out of range.
    """
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise AddressError(f"port must be an integer from {low} to 65535, not {port!r}")
    return port


@dataclass(frozen=True, order=True)
class PeerAddress:
    """
    Where a peer listens, optionally pinned to the node id it must prove.

    :ivar host: normalized host (IPv6 without brackets).
    :ivar port: TCP port, 1-65535.
    :ivar node_id: the node id this address is pinned to, or ``None``.
    """

    host: str
    port: int
    node_id: str | None = None

    @property
    def endpoint(self) -> tuple[str, int]:
        """The ``(host, port)`` pair, without the node id."""
        return (self.host, self.port)

    def __str__(self) -> str:
        text = format_hostport(self.host, self.port)
        return f"{self.node_id}@{text}" if self.node_id else text


def format_hostport(host: str, port: int) -> str:
    """Write ``host:port``, bracketing IPv6 literals (``[::1]:3000``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> PeerAddress:
    """
    Parse ``host:port``, ``[v6]:port`` or ``NODEID@host:port``.

    :raises AddressError: with a message saying what is wrong.
    """
    text = text.strip()
    node_id: str | None = None
    if "@" in text:
        node_id, _, text = text.partition("@")
        node_id = node_id.lower()
        if not is_node_id(node_id):
            raise AddressError(f"invalid node id {node_id!r} (expected 40 hex digits)")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise AddressError(f"invalid address {text!r} (expected [v6]:port)")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise AddressError(f"invalid address {text!r} (expected host:port)")
        if ":" in host:
            raise AddressError(f"invalid address {text!r} (write IPv6 as [addr]:port)")
    if not (port_text.isascii() and port_text.isdigit()):
        raise AddressError(f"invalid port {port_text!r} in {text!r}")
    port = check_port(int(port_text))
    return PeerAddress(normalize_host(host), port, node_id)
