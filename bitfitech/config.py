"""Node configuration: the settings every part is built from (beneath the data path).

Every setting a node has is read here, once, from the command line and the
environment (the command line wins), coerced, validated and frozen into a
:class:`NodeConfig`.  Tests build a ``NodeConfig`` directly.  Nothing here
touches the network, and the disk only to check that a named file exists.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TypeVar

from twisted.logger import LogLevel

from .address import AddressError, PeerAddress, check_port, normalize_host, parse_address
from .witnesses import MAX_WITNESSES, WitnessSet

DEFAULT_PORT = 3000
DEFAULT_NETWORK = "main"
DEFAULT_PAIR = "BTC/USD"
DEFAULT_MARKETS = (DEFAULT_PAIR,)
MAX_MARKETS = 16
"""Most markets one node serves (``--market``)."""
DEFAULT_MAX_PEERS = 50
DEFAULT_OUTBOUND = 8
DEFAULT_HOST = ""
"""No ``--host``: the P2P listener binds every address of both families (``0.0.0.0`` and ``::``)."""
DEFAULT_API_HOST = "127.0.0.1"
API_PORT_OFFSET = 10000
DEFAULT_SETTLE_AFTER = 10.0
DEFAULT_BAN_DURATION = 86400.0
MAX_BAN_DURATION = 30 * 86400
DEFAULT_MAX_INBOUND_PER_IP = 8
DEFAULT_MAX_HANDSHAKES_PER_IP = 4
DEFAULT_API_MAX_CONNECTIONS = 256
"""HTTP API connections open at once, streams included (a 503 beyond)."""
DEFAULT_API_IDLE_TIMEOUT = 60.0
"""Seconds an HTTP API connection may sit idle, or take to send one request, before it is closed."""
MAX_API_IDLE_TIMEOUT = 3600
"""Longest ``--api-idle-timeout``, in seconds."""
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
LOG_FORMATS = ("text", "json")

_NETWORK_RE = re.compile(r"\A[a-z0-9][a-z0-9_.-]{0,63}\Z")
_PAIR_RE = re.compile(r"\A[A-Z0-9]{1,12}/[A-Z0-9]{1,12}\Z")

MIN_TOKEN_LENGTH = 16
"""Shortest API bearer token."""
MAX_TOKEN_LENGTH = 256
"""Longest API bearer token."""
#: what an API bearer token may hold: RFC 6750's b64token characters
_TOKEN_RE = re.compile(r"\A[A-Za-z0-9._~+/=-]+\Z")

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting with a bad value; the message names the option and its source."""


#: option name -> environment variables read for it, first found wins.
ENVIRONMENT: Mapping[str, tuple[str, ...]] = {
    "port": ("P2P_PORT",),
    "host": ("P2P_HOST",),
    "bootstrap": ("BOOTSTRAP_PEERS",),
    "witness": ("WITNESSES",),
    "max-peers": ("MAX_PEERS",),
    "outbound": ("OUTBOUND_PEERS",),
    "data-dir": ("BITFI_DATA_DIR", "PEER_STORAGE_PATH"),
    "network": ("BITFI_NETWORK",),
    "pair": ("EXCHANGE_PAIR",),
    "market": ("MARKETS",),
    "api-port": ("API_PORT",),
    "api-host": ("API_HOST",),
    "api-token": ("BITFI_API_TOKEN",),
    "api-max-connections": ("BITFI_API_MAX_CONNECTIONS",),
    "api-idle-timeout": ("BITFI_API_IDLE_TIMEOUT",),
    "no-api": ("BITFI_NO_API",),
    "log-level": ("LOG_LEVEL",),
    "log-format": ("BITFI_LOG_FORMAT",),
    "settle-after": ("BITFI_SETTLE_AFTER",),
    "no-mdns": ("BITFI_NO_MDNS",),
    "mdns-interface": ("MDNS_INTERFACE",),
    "nat": ("BITFI_NAT",),
    "nat-gateway": ("BITFI_NAT_GATEWAY",),
    "no-dht": ("BITFI_NO_DHT",),
    "dht-port": ("DHT_PORT",),
    "dht-bootstrap": ("DHT_BOOTSTRAP",),
    "insecure-plain-tcp": ("BITFI_INSECURE_PLAIN_TCP",),
    "ban-duration": ("BITFI_BAN_DURATION",),
    "max-inbound-per-ip": ("BITFI_MAX_INBOUND_PER_IP",),
    "max-handshakes-per-ip": ("BITFI_MAX_HANDSHAKES_PER_IP",),
    "ca-bundle": ("BITFI_CA_BUNDLE",),
    "certificate": ("BITFI_CERTIFICATE",),
}


MIB = 1024 * 1024


@dataclass(frozen=True)
class LinkLimits:
    """
    What one peer link may send this node (token buckets, see
    :mod:`bitfitech.ratelimit`), and what may queue for a peer that
    does not read.

    Past a rate the link is not read for a moment (backpressure: nothing is
    dropped) and the peer is scored ``RATE_EXCEEDED``, at most once a second.

    :ivar msg_rate: messages a second.
    :ivar msg_burst: messages in a burst.
    :ivar byte_rate: bytes a second (on the wire, after TLS).
    :ivar byte_burst: bytes in a burst.
    :ivar max_queued: bytes that may be written to a link while the peer
        does not read (its TCP window and our buffer are full); past that
        the link is dropped at once.
    """

    msg_rate: float = 1000.0
    msg_burst: float = 2000.0
    byte_rate: float = 8 * MIB
    byte_burst: float = 16 * MIB
    max_queued: int = 32 * MIB


@dataclass(frozen=True)
class LinkTiming:
    """
    Timers (in seconds) and limits of one peer link.

    :ivar handshake_timeout: a link must finish ``version``/``verack`` by then.
    :ivar ping_interval: how often a live link is pinged.
    :ivar ping_timeout: how long to wait for the matching ``pong``.
    :ivar stall_timeout: how long a peer may leave what we write unread
        (our write buffer full) before the link is dropped.
    :ivar limits: rate limits and the write cap.
    """

    handshake_timeout: float = 10.0
    ping_interval: float = 30.0
    ping_timeout: float = 20.0
    stall_timeout: float = 30.0
    limits: LinkLimits = field(default_factory=LinkLimits)


@dataclass(frozen=True)
class GossipTiming:
    """
    How events spread (see ``docs/consistency.rst``).

    :ivar fanout: most peers a new event is pushed to in full by one node;
        the others get an ``inv`` and fetch it if they lack it.
    :ivar push_hops: hops from its author within which an event is pushed
        in full; further on it is only announced (there most peers hold it
        already, and pushes would mostly be duplicates).
    :ivar ttl: hops a new event may travel.
    :ivar sync_interval: seconds between anti-entropy exchanges with every peer.
    :ivar request_timeout: seconds to wait for a ``getdata`` answer before
        asking another peer that announced the event.
    :ivar flush_interval: least seconds between two sends of queued
        messages on a busy node, which thus sends fewer, larger messages
        (an idle one sends at once).
    :ivar fetch_delay: seconds an announced event may take to arrive by
        push before it is asked for: a push racing the announcement is
        then not fetched a second time.
    :ivar author_rate: new events of one author relayed to this node a
        second (token bucket); the excess is dropped unverified and not
        marked seen, and anti-entropy brings it later (``docs/security.rst``).
    :ivar author_burst: new events of one author in a burst.
    """

    fanout: int = 8
    push_hops: int = 2
    ttl: int = 16
    sync_interval: float = 30.0
    request_timeout: float = 2.0
    flush_interval: float = 0.005
    fetch_delay: float = 0.006
    author_rate: float = 5000.0
    author_burst: float = 20000.0


@dataclass(frozen=True)
class NodeConfig:
    """
    Everything a node is built from; validated, immutable.

    :ivar port: P2P TCP port to listen on (0: the OS chooses).
    :ivar host: P2P bind address; ``""`` (the default) for every address,
        IPv4 and IPv6 (:attr:`bind_hosts`).
    :ivar bootstrap: peers dialled at start (possibly pinned to a node id).
    :ivar witnesses: the network's witnesses (:mod:`bitfitech.witnesses`),
        each pinned to its node id, node ids and addresses unique; every
        node keeps a link to each (but itself), and all nodes of a network
        must name the same set.
    :ivar max_peers: cap on all peer links, inbound and outbound (the links
        this node dials to witnesses may go past it, by at most their number).
    :ivar outbound: how many outbound links the dialer keeps, links with
        witnesses (either direction) counted among them; every witness is
        dialled even when they outnumber it.
    :ivar data_dir: the node's own directory (database, key).
    :ivar network: network name; the wire magic derives from it.
    :ivar pair: the node's first market (:attr:`markets`), ``BASE/QUOTE``:
        what every part that serves one market serves.  Set from
        :attr:`markets` when they are given; a ``pair`` other than the
        default that differs from their first is an error.
    :ivar markets: the markets (trading pairs) the node serves, ``BASE/QUOTE``
        each, in order (the first is :attr:`pair`); unique, at most
        :data:`MAX_MARKETS`.  Left empty, it becomes ``(pair,)``.
    :ivar api_enabled: whether the HTTP API runs.
    :ivar api_host: HTTP API bind address.
    :ivar api_port: HTTP API port (0: the OS chooses).
    :ivar api_token: the bearer token every API request must carry, or
        ``None`` (then the data directory's ``api.token`` is used if it
        exists; a non-loopback :attr:`api_host` requires one).
    :ivar api_max_connections: HTTP API connections open at once, live
        streams included; one more is answered 503 and closed.
    :ivar api_idle_timeout: seconds an HTTP API connection may sit idle
        between requests, and may take to send one whole request, before
        it is closed (never while it is answered: a live stream stays).
    :ivar log_level: minimum level of bitfi's own log events.
    :ivar log_format: how twistd writes log events: ``text`` (human-readable
        lines) or ``json`` (one JSON object per line, :mod:`bitfitech.logs`).
    :ivar timing: peer link timers.
    :ivar dial_interval: how often the dialer checks its outbound target.
    :ivar connect_timeout: TCP connect timeout for outbound dials.
    :ivar settle_after: seconds after which trades and orders count as settled.
    :ivar apply_delay: seconds peers' events wait, batched, before the book
        applies them (fewer rollbacks; 0 applies at the next reactor turn).
    :ivar gossip: how events spread between peers.
    :ivar nat: how the node asks its router for a port mapping of the P2P
        port: ``auto`` (PCP/NAT-PMP, then UPnP-IGD), ``upnp``, ``natpmp``
        or ``off`` (:mod:`bitfitech.nat`).
    :ivar nat_gateway: the router to ask by PCP/NAT-PMP, or ``None`` for
        the default gateway.
    :ivar mdns_enabled: whether the mDNS / DNS-SD service runs.
    :ivar mdns_interface: the address of the one interface mDNS uses, in
        that address's family (IPv4 or IPv6), or ``None`` for every
        interface of both families.
    :ivar mdns_port: the mDNS UDP port: 5353, which every responder uses
        (no option sets it; tests use a free port so that no other
        responder on the host hears them).
    :ivar dht_enabled: whether the Kademlia DHT service runs.
    :ivar dht_port: the DHT's UDP port; ``None`` uses the number of the P2P
        TCP port (so nodes on one machine never collide; 0 stays 0).
    :ivar dht_bootstrap: DHT nodes contacted at start, as ``(host, port)``.
    :ivar plain_tcp: run peer links over plain TCP instead of TLS: neither
        encrypted nor authenticated (a plain node and a TLS node never link).
    :ivar ban_duration: seconds a peer's IP address is banned once its
        misbehaviour score reaches the threshold (0: never ban).
    :ivar max_inbound_per_ip: inbound links (handshaking or ready) allowed
        from one IP address.
    :ivar max_handshakes_per_ip: inbound links from one IP address allowed
        in their handshake at once.
    :ivar ca_bundle: path of a PEM file of CA certificates: a bootstrap
        address given by host name must then present a certificate chain
        from one of them that names the host (read at start).
    :ivar certificate: path of a PEM certificate chain for this node's key,
        issued by a CA, presented instead of a self-signed certificate
        (read at start).
    """

    data_dir: str
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    bootstrap: tuple[PeerAddress, ...] = ()
    witnesses: tuple[PeerAddress, ...] = ()
    max_peers: int = DEFAULT_MAX_PEERS
    outbound: int = DEFAULT_OUTBOUND
    network: str = DEFAULT_NETWORK
    pair: str = DEFAULT_PAIR
    markets: tuple[str, ...] = ()
    api_enabled: bool = True
    api_host: str = DEFAULT_API_HOST
    api_port: int = 0
    api_token: str | None = field(default=None, repr=False)
    api_max_connections: int = DEFAULT_API_MAX_CONNECTIONS
    api_idle_timeout: float = DEFAULT_API_IDLE_TIMEOUT
    log_level: LogLevel = LogLevel.info
    log_format: str = "text"
    timing: LinkTiming = field(default_factory=LinkTiming)
    dial_interval: float = 1.0
    connect_timeout: float = 10.0
    settle_after: float = DEFAULT_SETTLE_AFTER
    apply_delay: float = 0.005
    gossip: GossipTiming = field(default_factory=lambda: GossipTiming())
    mdns_enabled: bool = True
    mdns_interface: str | None = None
    mdns_port: int = 5353
    dht_enabled: bool = True
    dht_port: int | None = None
    dht_bootstrap: tuple[tuple[str, int], ...] = ()
    plain_tcp: bool = False
    ban_duration: float = DEFAULT_BAN_DURATION
    max_inbound_per_ip: int = DEFAULT_MAX_INBOUND_PER_IP
    max_handshakes_per_ip: int = DEFAULT_MAX_HANDSHAKES_PER_IP
    ca_bundle: str | None = None
    certificate: str | None = None
    nat: str = "auto"
    nat_gateway: str | None = None

    @property
    def nat_mode(self) -> str:
        """
        How the node asks its router to map the P2P port (:attr:`nat`):
        ``auto`` is ``off`` for a node bound to a loopback address, which no
        router forwards to (a method named explicitly is tried anyway).
        """
        if self.host and self.nat == "auto":
            try:
                if ipaddress.ip_address(self.host.split("%")[0]).is_loopback:
                    return "off"
            except ValueError:
                pass
        return self.nat

    @property
    def bind_hosts(self) -> tuple[str, ...]:
        """The addresses the P2P listener binds: :attr:`host`, or both families' every address."""
        return (self.host,) if self.host else ("0.0.0.0", "::")

    def __post_init__(self) -> None:
        if self.nat not in NAT_CHOICES:
            raise ConfigError(f"--nat must be one of {', '.join(NAT_CHOICES)}, not {self.nat!r}")
        if self.outbound > self.max_peers:
            raise ConfigError(
                f"--outbound ({self.outbound}) cannot exceed --max-peers ({self.max_peers})"
            )
        if self.plain_tcp and (self.ca_bundle or self.certificate):
            option = "--ca-bundle" if self.ca_bundle else "--certificate"
            raise ConfigError(f"{option} needs TLS: it cannot go with --insecure-plain-tcp")
        try:
            check_witnesses(self.witnesses)
            check_witness_count(self.witnesses)
        except ValueError as e:
            raise ConfigError(f"--witness: {e}") from None
        self._settle_markets()

    def _settle_markets(self) -> None:
        """Make :attr:`markets` and :attr:`pair` agree: ``pair`` is the first market."""
        if not self.markets:
            object.__setattr__(self, "markets", (self.pair,))
            return
        try:
            markets = check_markets(self.markets)
        except ValueError as e:
            raise ConfigError(f"--market: {e}") from None
        if self.pair not in (DEFAULT_PAIR, markets[0]):
            raise ConfigError(
                f"--pair is {self.pair} but the first --market is {markets[0]}; {ONE_MARKET_FORM}"
            )
        object.__setattr__(self, "markets", markets)
        object.__setattr__(self, "pair", markets[0])

    @property
    def witness_set(self) -> WitnessSet:
        """The network's witnesses by node id (empty: events keep the author-clock order)."""
        return WitnessSet.of(address.node_id for address in self.witnesses)

    @property
    def dht_listen_port(self) -> int:
        """The DHT's UDP port: :attr:`dht_port`, else the P2P port's number."""
        return self.port if self.dht_port is None else self.dht_port

    @property
    def max_inbound(self) -> int:
        """Inbound links allowed: what the cap leaves after the outbound target."""
        return self.max_peers - self.outbound

    def with_changes(self, **changes: object) -> NodeConfig:
        """
        Return a copy with some fields replaced (validated again).

        Replacing one of :attr:`pair` and :attr:`markets` makes the other
        follow: new ``markets`` set ``pair`` to their first, and a new
        ``pair`` replaces a one-market ``markets``.
        """
        if "markets" in changes and "pair" not in changes:
            changes["pair"] = DEFAULT_PAIR
        elif "pair" in changes and "markets" not in changes and len(self.markets) == 1:
            changes["markets"] = ()
        return replace(self, **changes)  # type: ignore[arg-type]


# -- coercions: each takes the raw text and raises ValueError with a short reason


def coerce_port(text: str) -> int:
    """A port number, 0 (OS-chosen) to 65535."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None
    try:
        return check_port(value, allow_zero=True)
    except AddressError as e:
        raise ValueError(str(e)) from None


def coerce_host(text: str) -> str:
    """A bind address: an IPv4/IPv6 literal or a host name."""
    try:
        return normalize_host(text.strip())
    except AddressError as e:
        raise ValueError(str(e)) from None


def _whole_number(text: str, low: int, high: int) -> int:
    """A whole number from C{low} to C{high}."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None
    if not low <= value <= high:
        raise ValueError(f"must be from {low} to {high}, not {value}")
    return value


def coerce_count(text: str) -> int:
    """A positive whole number (1 to 10000)."""
    return _whole_number(text, 1, 10000)


def coerce_outbound(text: str) -> int:
    """An outbound target: 0 (dial no one but the witnesses) to 10000."""
    return _whole_number(text, 0, 10000)


def coerce_bootstrap(text: str) -> tuple[PeerAddress, ...]:
    """A comma-separated list of ``host:port`` or ``NODEID@host:port``."""
    try:
        return tuple(parse_address(part) for part in text.split(",") if part.strip())
    except AddressError as e:
        raise ValueError(str(e)) from None


def check_witnesses(addresses: Sequence[PeerAddress]) -> tuple[PeerAddress, ...]:
    """
    Check a list of witness addresses: each pinned to a node id, no node id
    or ``host:port`` named twice, at most :data:`~bitfitech.witnesses.MAX_WITNESSES`
    (the count's parity is checked once the list is complete:
    :func:`check_witness_count`).

    :raises ValueError: with a short reason.
    """
    if len(addresses) > MAX_WITNESSES:
        raise ValueError(f"at most {MAX_WITNESSES} witnesses, not {len(addresses)}")
    ids: set[str] = set()
    endpoints: set[tuple[str, int]] = set()
    for address in addresses:
        if address.node_id is None:
            raise ValueError(
                f"a witness must be pinned to its node id: NODEID@host:port, not {str(address)!r}"
            )
        if address.node_id in ids:
            raise ValueError(f"witness {address.node_id} is named twice")
        if address.endpoint in endpoints:
            raise ValueError(f"two witnesses at one address: {str(address)!r}")
        ids.add(address.node_id)
        endpoints.add(address.endpoint)
    return tuple(addresses)


def check_witness_count(addresses: Sequence[PeerAddress]) -> None:
    """
    A network names an odd number of witnesses, n = 2f + 1 (an even n adds
    one but tolerates no more faults).

    :raises ValueError: for an even number.
    """
    if len(addresses) % 2 == 0 and addresses:
        raise ValueError(
            f"name an odd number of witnesses (n = 2f + 1: 1, 3, 5, ...), not {len(addresses)}"
        )


def coerce_witnesses(text: str) -> tuple[PeerAddress, ...]:
    """A comma-separated list of witnesses, each ``NODEID@host:port``."""
    return check_witnesses(coerce_bootstrap(text))


def coerce_interface(text: str) -> str:
    """
    The address of one local network interface, IPv4 or IPv6 (a link-local
    one may name its zone, ``fe80::1%eth0``): mDNS then runs on that
    interface only, in that address's family.
    """
    text = text.strip()
    try:
        host = normalize_host(text)
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"not an interface address: {text!r} (such as 192.168.1.5, fd00::5 or 127.0.0.1)"
        ) from None
    return host


NAT_CHOICES = ("auto", "upnp", "natpmp", "off")
"""What ``--nat`` may say (:data:`bitfitech.nat.service.NAT_CHOICES`)."""


def coerce_nat(text: str) -> str:
    """One of :data:`NAT_CHOICES`."""
    value = text.strip().lower()
    if value not in NAT_CHOICES:
        raise ValueError(f"must be one of {', '.join(NAT_CHOICES)}, not {text.strip()!r}")
    return value


def coerce_ip(text: str) -> str:
    """An IPv4 or IPv6 address."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"not an IP address: {text.strip()!r}") from None


def coerce_dht_bootstrap(text: str) -> tuple[tuple[str, int], ...]:
    """A comma-separated list of DHT nodes as ``host:port`` (``[v6]:port`` for IPv6)."""
    nodes = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            address = parse_address(part)
        except AddressError as e:
            raise ValueError(str(e)) from None
        if address.node_id is not None:
            raise ValueError(f"a DHT node is host:port, without a node id: {part.strip()!r}")
        nodes.append((address.host, address.port))
    return tuple(nodes)


def coerce_network(text: str) -> str:
    """A network name: lowercase letters, digits, ``-``, ``_``, ``.``; 1-64 chars."""
    text = text.strip()
    if not _NETWORK_RE.match(text):
        raise ValueError(
            f"invalid network name {text!r} (lowercase letters, digits, '.', '_', '-'; 1-64)"
        )
    return text


def coerce_pair(text: str) -> str:
    """A trading pair ``BASE/QUOTE`` such as ``BTC/USD`` (case-insensitive)."""
    value = text.strip().upper()
    if not _PAIR_RE.match(value):
        raise ValueError(f"invalid pair {text!r} (expected BASE/QUOTE, like BTC/USD)")
    return value


ONE_MARKET_FORM = "--pair is the one-market form of --market: give one or the other"


def check_markets(pairs: Sequence[str]) -> tuple[str, ...]:
    """
    Check a list of markets: at least one, each a pair (:func:`coerce_pair`,
    which also upper-cases it), none named twice, at most :data:`MAX_MARKETS`.

    :return: the markets, upper-cased, in their order (the first is the node's
        first market, :attr:`NodeConfig.pair`).
    :raises ValueError: with a short reason.
    """
    if not pairs:
        raise ValueError("no market named (expected BASE/QUOTE, like BTC/USD)")
    if len(pairs) > MAX_MARKETS:
        raise ValueError(f"at most {MAX_MARKETS} markets, not {len(pairs)}")
    markets: list[str] = []
    for text in pairs:
        market = coerce_pair(text)
        if market in markets:
            raise ValueError(f"market {market} is named twice")
        markets.append(market)
    return tuple(markets)


def coerce_markets(text: str) -> tuple[str, ...]:
    """A comma-separated list of markets, ``BASE/QUOTE`` each (:func:`check_markets`)."""
    return check_markets([part for part in text.split(",") if part.strip()])


def market_slug(pair: str) -> str:
    """
    A market as one URL path segment or name part: ``BTC/USD`` -> ``BTC-USD``.

    ``-`` is not in a pair, so :func:`parse_market_slug` reads it back.

    :raises ValueError: for text that is not a pair (:func:`coerce_pair`).
    """
    return coerce_pair(pair).replace("/", "-")


def parse_market_slug(text: str) -> str:
    """
    A market from its slug: ``btc-usd`` or ``BTC-USD`` -> ``BTC/USD``; the
    pair itself (``BTC/USD``) is taken too.  Case-insensitive; nothing
    around it (no spaces), ASCII only.

    :raises ValueError: with a short reason.
    """
    value = text.upper() if text.isascii() else ""
    if "/" not in value and value.count("-") == 1:
        value = value.replace("-", "/")
    if not _PAIR_RE.match(value):
        raise ValueError(
            f"invalid market {text!r} (expected BASE-QUOTE or BASE/QUOTE, like BTC-USD)"
        )
    return value


def coerce_log_level(text: str) -> LogLevel:
    """One of debug, info, warn, error, critical (``warning`` is accepted for warn)."""
    name = text.strip().lower()
    name = "warn" if name == "warning" else name
    if name not in LOG_LEVELS:
        raise ValueError(f"invalid log level {text!r} (one of {', '.join(LOG_LEVELS)})")
    level: LogLevel = LogLevel.levelWithName(name)
    return level


def coerce_log_format(text: str) -> str:
    """One of ``text`` (human-readable lines) or ``json`` (one JSON object per line)."""
    name = text.strip().lower()
    if name not in LOG_FORMATS:
        raise ValueError(f"invalid log format {text!r} (one of {', '.join(LOG_FORMATS)})")
    return name


def coerce_seconds(text: str) -> float:
    """A duration in seconds, 0 to 86400, decimals allowed (``2.5``)."""
    try:
        value = Decimal(text.strip())
    except ArithmeticError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not value.is_finite() or not 0 <= value <= 86400:
        raise ValueError(f"must be from 0 to 86400 seconds, not {text.strip()!r}")
    return float(value)


def coerce_ban_duration(text: str) -> float:
    """A ban duration in seconds, 0 (never ban) to 30 days (2592000), decimals allowed."""
    try:
        value = Decimal(text.strip())
    except ArithmeticError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not value.is_finite() or not 0 <= value <= MAX_BAN_DURATION:
        raise ValueError(f"must be from 0 to {MAX_BAN_DURATION} seconds, not {text.strip()!r}")
    return float(value)


def coerce_idle_timeout(text: str) -> float:
    """An idle timeout in seconds, 1 to 3600, decimals allowed (``2.5``)."""
    try:
        value = Decimal(text.strip())
    except ArithmeticError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not value.is_finite() or not 1 <= value <= MAX_API_IDLE_TIMEOUT:
        raise ValueError(f"must be from 1 to {MAX_API_IDLE_TIMEOUT} seconds, not {text.strip()!r}")
    return float(value)


def coerce_flag(text: str) -> bool:
    """A boolean from the environment: 1/true/yes/on or 0/false/no/off."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"invalid boolean {text!r} (use 1/0, true/false)")


def check_token(text: str) -> str:
    """
    C{text} as an API bearer token: 16 to 256 characters of ``A-Z a-z 0-9
    . _ ~ + / = -``.  The option, the environment and the data directory's
    token file (:mod:`bitfitech.api.token`) all hold tokens of this form.

    :raises ValueError: with a short reason.
    """
    if not MIN_TOKEN_LENGTH <= len(text) <= MAX_TOKEN_LENGTH:
        raise ValueError(
            f"a token must be {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} characters long"
        )
    if not _TOKEN_RE.match(text):
        raise ValueError("a token may hold only letters, digits and . _ ~ + / = -")
    return text


def coerce_api_token(text: str) -> str:
    """An API bearer token: 16 to 256 of ``A-Z a-z 0-9 . _ ~ + / = -``."""
    return check_token(text.strip())


def coerce_path(text: str) -> str:
    """A directory path; ``~`` is expanded."""
    text = text.strip()
    if not text:
        raise ValueError("empty path")
    return os.path.abspath(os.path.expanduser(text))


def coerce_file(text: str) -> str:
    """The path of an existing file (its contents are read when the node starts)."""
    path = coerce_path(text)
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    return path


def default_api_port(port: int) -> int:
    """
    The HTTP API port for a node whose P2P port is C{port}.

    ``port + 10000`` (``port - 10000`` above 55535), so nodes on 3001, 3002,
    3003 get 13001, 13002, 13003 and never collide; 0 stays 0 (OS-chosen).
    """
    if port == 0:
        return 0
    return port + API_PORT_OFFSET if port + API_PORT_OFFSET <= 65535 else port - API_PORT_OFFSET


def default_data_dir(network: str, port: int, env: Mapping[str, str]) -> str:
    """
    The data directory of a node: ``$XDG_DATA_HOME/bitfi/<network>-<port>``.

    ``XDG_DATA_HOME`` defaults to ``~/.local/share``.  The port is part of the
    name so nodes started on one machine with different ports never share.
    """
    base = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "bitfi", f"{network}-{port}")


def _pick(
    name: str,
    given: Mapping[str, str | None],
    env: Mapping[str, str],
    coerce: Callable[[str], T],
    default: T,
) -> T:
    """Take an option from the command line, else its environment variable, else the default."""
    raw = given.get(name)
    source = f"--{name}"
    if raw is None:
        for var in ENVIRONMENT.get(name, ()):
            if var in env:
                raw, source = env[var], f"--{name} (from ${var})"
                break
    if raw is None:
        return default
    try:
        return coerce(raw)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


def _pick_markets(
    given: Mapping[str, str | None], markets: Sequence[str] | None, env: Mapping[str, str]
) -> tuple[str, ...]:
    """
    The node's markets: the command line's ``--market`` list, else its
    ``--pair``, else ``$MARKETS``, else ``$EXCHANGE_PAIR``, else the default.

    :param markets: the command line's ``--market`` list, or ``None``.
    :raises ConfigError: for a bad value, ``--market`` with ``--pair``, or
        ``$EXCHANGE_PAIR`` that is not the first of ``$MARKETS``.
    """
    if markets is not None:
        if given.get("pair") is not None:
            raise ConfigError(ONE_MARKET_FORM)
        try:
            return check_markets(markets)
        except ValueError as e:
            raise ConfigError(f"--market: {e}") from None
    if given.get("pair") is not None:
        return (_pick("pair", given, env, coerce_pair, DEFAULT_PAIR),)
    no_markets: tuple[str, ...] = ()
    from_env = _pick("market", {}, env, coerce_markets, no_markets)
    no_pair: str | None = None
    pair = _pick("pair", {}, env, coerce_pair, no_pair)
    if not from_env:
        return DEFAULT_MARKETS if pair is None else (pair,)
    if pair is not None and pair != from_env[0]:
        raise ConfigError(
            f"$EXCHANGE_PAIR is {pair} but $MARKETS begins with {from_env[0]}: "
            "$EXCHANGE_PAIR is the one-market form of $MARKETS; give one or the other"
        )
    return from_env


def config_from_options(
    given: Mapping[str, str | None],
    bootstrap: Sequence[PeerAddress] | None,
    no_api: bool,
    env: Mapping[str, str],
    *,
    witnesses: Sequence[PeerAddress] | None = None,
    dht_bootstrap: Sequence[tuple[str, int]] | None = None,
    no_mdns: bool = False,
    no_dht: bool = False,
    insecure_plain_tcp: bool = False,
    markets: Sequence[str] | None = None,
) -> NodeConfig:
    """
    Build a config from command-line values (``None`` when not given) and the environment.

    :param given: raw text of each option by its long name.
    :param bootstrap: bootstrap peers from the command line, or ``None`` when none were given.
    :param no_api: whether ``--no-api`` was given.
    :param witnesses: witnesses from the command line, or ``None`` when none were given.
    :param dht_bootstrap: DHT nodes from the command line, or ``None`` when none were given.
    :param no_mdns: whether ``--no-mdns`` was given.
    :param no_dht: whether ``--no-dht`` was given.
    :param insecure_plain_tcp: whether ``--insecure-plain-tcp`` was given.
    :param markets: markets from the command line (``--market``), or ``None``
        when none were given; see :func:`_pick_markets` for how they, ``--pair``
        and the environment combine.
    :param env: the process environment.
    :raises ConfigError: naming the first bad option.
    """
    port = _pick("port", given, env, coerce_port, DEFAULT_PORT)
    network = _pick("network", given, env, coerce_network, DEFAULT_NETWORK)
    data_dir = _pick("data-dir", given, env, coerce_path, "")
    if not data_dir:
        if port == 0:
            raise ConfigError("--data-dir is required with --port 0 (no port to name it after)")
        data_dir = default_data_dir(network, port, env)
    if bootstrap is None:
        no_peers: tuple[PeerAddress, ...] = ()
        bootstrap = _pick("bootstrap", {}, env, coerce_bootstrap, no_peers)
    if witnesses is None:
        no_witnesses: tuple[PeerAddress, ...] = ()
        witnesses = _pick("witness", {}, env, coerce_witnesses, no_witnesses)
    api_off = no_api or _pick("no-api", {}, env, coerce_flag, False)
    max_peers = _pick("max-peers", given, env, coerce_count, DEFAULT_MAX_PEERS)
    node_markets = _pick_markets(given, markets, env)
    if dht_bootstrap is None:
        no_nodes: tuple[tuple[str, int], ...] = ()
        dht_bootstrap = _pick("dht-bootstrap", {}, env, coerce_dht_bootstrap, no_nodes)
    no_port: int | None = None
    no_file: str | None = None
    return NodeConfig(
        data_dir=data_dir,
        port=port,
        host=_pick("host", given, env, coerce_host, DEFAULT_HOST),
        bootstrap=tuple(bootstrap),
        witnesses=tuple(witnesses),
        max_peers=max_peers,
        outbound=_pick("outbound", given, env, coerce_outbound, min(DEFAULT_OUTBOUND, max_peers)),
        network=network,
        pair=node_markets[0],
        markets=node_markets,
        api_enabled=not api_off,
        api_host=_pick("api-host", given, env, coerce_host, DEFAULT_API_HOST),
        api_port=_pick("api-port", given, env, coerce_port, default_api_port(port)),
        api_token=_pick("api-token", given, env, coerce_api_token, no_file),
        api_max_connections=_pick(
            "api-max-connections", given, env, coerce_count, DEFAULT_API_MAX_CONNECTIONS
        ),
        api_idle_timeout=_pick(
            "api-idle-timeout", given, env, coerce_idle_timeout, DEFAULT_API_IDLE_TIMEOUT
        ),
        log_level=_pick("log-level", given, env, coerce_log_level, LogLevel.info),
        log_format=_pick("log-format", given, env, coerce_log_format, "text"),
        settle_after=_pick("settle-after", given, env, coerce_seconds, DEFAULT_SETTLE_AFTER),
        mdns_enabled=not (no_mdns or _pick("no-mdns", {}, env, coerce_flag, False)),
        mdns_interface=_pick("mdns-interface", given, env, coerce_interface, None),
        dht_enabled=not (no_dht or _pick("no-dht", {}, env, coerce_flag, False)),
        dht_port=_pick("dht-port", given, env, coerce_port, no_port),
        dht_bootstrap=tuple(dht_bootstrap),
        plain_tcp=insecure_plain_tcp or _pick("insecure-plain-tcp", {}, env, coerce_flag, False),
        ban_duration=_pick("ban-duration", given, env, coerce_ban_duration, DEFAULT_BAN_DURATION),
        max_inbound_per_ip=_pick(
            "max-inbound-per-ip", given, env, coerce_count, DEFAULT_MAX_INBOUND_PER_IP
        ),
        max_handshakes_per_ip=_pick(
            "max-handshakes-per-ip", given, env, coerce_count, DEFAULT_MAX_HANDSHAKES_PER_IP
        ),
        ca_bundle=_pick("ca-bundle", given, env, coerce_file, no_file),
        nat=_pick("nat", given, env, coerce_nat, "auto"),
        nat_gateway=_pick("nat-gateway", given, env, coerce_ip, None),
        certificate=_pick("certificate", given, env, coerce_file, no_file),
    )
