"""The mDNS sockets and service: where multicast datagrams enter and leave.

Data path: ``224.0.0.251:5353`` and ``[ff02::fb]:5353`` -> one
:class:`MDNSProtocol` per family (size check,
:func:`~bitfitech.discovery.mdns.codec.decode_packet`, RFC 6762 §6/§18
filters) -> :class:`MDNSService` -> the
:class:`~bitfitech.discovery.mdns.responder.Responder` (queries, and
responses that may conflict with our names) and the
:class:`~bitfitech.discovery.mdns.browser.Browser` (responses) -> ``found``.
Outgoing packets take the way back through :meth:`MDNSProtocol.send`: to
the group on every family, to one address on its family's socket.

One responder and one browser serve both families, as if they were one
link: every multicast goes out on both sockets, so an IPv4-only and an
IPv6-only querier both hear every answer, and the one-multicast-a-second
limit of a record holds across families.

The IPv4 socket is Twisted's ``listenMulticast``, the IPv6 one is opened by
:mod:`~bitfitech.discovery.mdns.ipv6` (Twisted's cannot be made IPv6-only
or join by interface index).  Both are shared with the host's other
responders, send with TTL / hop limit 255 and loop their packets back to
the host.  With ``interface=None`` the service joins 224.0.0.251 on every
IPv4 interface address and ff02::fb on every interface with an IPv6
address (the loopback interface only when there is no other), sends each
multicast once per interface, and answers with every address; a family
the host lacks is left off.  With one interface address, IPv4 or IPv6, it
runs in that family only and joins, sends and answers on that interface
only (and ignores packets from outside that interface's networks; for
IPv6, link-local sources are accepted too).
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import ifaddr
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.error import CannotListenError, MessageLengthError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from ...address import is_node_id
from ...logs import logger
from .. import OnePeerFound, PeerFound, reporting
from .browser import Browser, instance_txt
from .codec import (
    MAX_PACKET,
    MDNSDecodeError,
    Packet,
    TXTData,
    decode_packet,
    encode_packet,
)
from .ipv6 import MDNS_GROUP6, IPv6Listening, ListenIPv6, listen_ipv6
from .responder import MDNS_PORT, Responder

log = logger(__name__)

MDNS_GROUP = "224.0.0.251"
"""The IPv4 mDNS multicast group."""

MULTICAST_TTL = 255
"""IP TTL of our multicast packets (RFC 6762 §11)."""

LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")
"""IPv6 link-local addresses: what IPv6 mDNS packets usually come from."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class MDNSError(Exception):
    """The mDNS service cannot start: the socket or the group is unavailable."""


@dataclass(frozen=True)
class Adapter:
    """
    One network adapter.

    :ivar index: its interface index (IPv6 multicast joins by index; 0
        when unknown).
    :ivar ips: its ``(address, prefix length)`` pairs, IPv6 addresses
        without zone.
    :ivar name: its name (``eth0``), an IPv6 zone.
    """

    index: int
    ips: tuple[tuple[str, int], ...]
    name: str = ""


@dataclass(frozen=True)
class LocalAddresses:
    """
    The addresses the service works with.

    :ivar join: IPv4 interface addresses to join 224.0.0.251 on and send from.
    :ivar join6: indexes of the interfaces to join ff02::fb on and send from.
    :ivar advertised: addresses for our A and AAAA records.
    :ivar networks: packets from outside these networks are ignored (empty:
        accept all).
    """

    join: tuple[str, ...]
    advertised: tuple[str, ...]
    networks: tuple[Network, ...] = ()
    join6: tuple[int, ...] = ()


def _adapters() -> list[Adapter]:
    """The system's network adapters, read with ``ifaddr``."""
    adapters = []
    for adapter in ifaddr.get_adapters():
        ips = tuple(
            (ip.ip if isinstance(ip.ip, str) else ip.ip[0], int(ip.network_prefix))
            for ip in adapter.ips
        )
        adapters.append(Adapter(int(adapter.index or 0), ips, adapter.name))
    return adapters


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP literal without its zone (``fe80::1%eth0`` -> ``fe80::1``)."""
    return ipaddress.ip_address(text.partition("%")[0])


def _advertisable(address: str) -> bool:
    """Whether an interface address goes in our A/AAAA records when all interfaces are used."""
    parsed = _ip(address)
    return not (parsed.is_loopback or (parsed.version == 6 and parsed.is_link_local))


def local_addresses(
    interface: str | None, adapters: Sequence[Adapter] | None = None
) -> LocalAddresses:
    """
    Choose the addresses to join on and to advertise.

    With one interface address, the other family's advertisable addresses
    of the same adapter are advertised too (an IPv4 interface's global and
    unique-local IPv6 addresses, say): a peer that reads the records over
    one family may dial the other.

    :param interface: ``None`` for all interfaces of both families, or one
        IPv4 or IPv6 interface address (a link-local one may carry its zone,
        ``fe80::1%eth0``).
    :param adapters: the network adapters; read from the system (with
        ``ifaddr``) when ``None``.
    :raises MDNSError: for an interface that is not an IP address, or an
        IPv6 address no adapter has.
    """
    if adapters is None:
        adapters = _adapters()
    if interface is None:
        return _every_interface(adapters)
    try:
        wanted = _ip(interface)
    except ValueError:
        raise MDNSError(
            f"mDNS interface must be an IPv4 or IPv6 address, not {interface!r}"
        ) from None
    zone = interface.partition("%")[2]
    for adapter in adapters:
        if zone and zone not in (adapter.name, str(adapter.index)):
            continue
        for address, prefix in adapter.ips:
            if _ip(address) != wanted:
                continue
            network = ipaddress.ip_network(f"{wanted}/{prefix}", strict=False)
            others = tuple(
                other
                for other, _ in adapter.ips
                if _ip(other).version != wanted.version and _advertisable(other)
            )
            if wanted.version == 4:
                return LocalAddresses((str(wanted),), (str(wanted), *others), (network,))
            return LocalAddresses(
                (), (str(wanted), *others), (network, LINK_LOCAL6), (adapter.index,)
            )
    if wanted.version == 4:
        # Joining the group on it fails if it is not ours: say so then.
        return LocalAddresses((str(wanted),), (str(wanted),))
    raise MDNSError(f"no network interface has the IPv6 address {interface}")


def _every_interface(adapters: Sequence[Adapter]) -> LocalAddresses:
    join: list[str] = []
    v4: list[str] = []
    v6: list[str] = []
    join6: list[int] = []
    loopback6: list[int] = []
    for adapter in adapters:
        for address, _ in adapter.ips:
            parsed = _ip(address)
            if parsed.version == 6:
                if _advertisable(address) and address not in v6:
                    v6.append(address)
                indexes = loopback6 if parsed.is_loopback else join6
                if adapter.index and adapter.index not in indexes:
                    indexes.append(adapter.index)
            elif address not in join:
                join.append(address)
                if not parsed.is_loopback:
                    v4.append(address)
    if not v4:
        v4 = list(join)
    return LocalAddresses(tuple(join), tuple(v4 + v6), (), tuple(join6 or loopback6))


Handler = Callable[[Packet, "tuple[str, int]"], None]


class MDNSProtocol(DatagramProtocol):
    """
    Glue between one family's multicast socket and the typed packets.

    Drops datagrams over :data:`~bitfitech.discovery.mdns.codec.MAX_PACKET`
    bytes, undecodable ones, those with a non-zero opcode or rcode (§18.3,
    §18.11), responses not from the mDNS port (§6) and packets from outside
    C{networks}; hands the others to C{handle}.  Nothing raised by decoding
    or by C{handle} escapes :meth:`datagramReceived`.

    :ivar received: datagrams handed on; :ivar dropped: datagrams dropped.
    """

    noisy = False  # the service logs its own start and stop

    def __init__(
        self,
        handle: Handler,
        *,
        port: int = MDNS_PORT,
        interfaces: Sequence[str] = (),
        networks: Sequence[Network] = (),
        ipv6: bool = False,
        indexes: Sequence[int] = (),
    ) -> None:
        """
        :param handle: called with each packet and its source address.
        :param port: the mDNS port (responses from other ports are dropped).
        :param interfaces: IPv4 interface addresses to send each multicast
            from, in turn (empty: the system's choice).
        :param networks: accept packets from these networks only (empty: all).
        :param ipv6: whether the socket is the IPv6 one (group ``ff02::fb``).
        :param indexes: on IPv6, the indexes of the interfaces to send each
            multicast on, in turn.
        """
        self.handle = handle
        self.port = port
        self.interfaces = tuple(interfaces)
        self.networks = tuple(networks)
        self.ipv6 = ipv6
        self.indexes = tuple(indexes)
        self.received = 0
        self.dropped = 0

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        try:
            packet = self._accept(datagram, addr)
            if packet is None:
                self.dropped += 1
                return
            self.received += 1
            self.handle(packet, addr)
        except Exception:
            log.failure("mDNS: error handling a datagram from {addr}", addr=addr)

    def _accept(self, datagram: bytes, addr: tuple[str, int]) -> Packet | None:
        if len(datagram) > MAX_PACKET:
            return None
        if self.networks:
            try:
                source = _ip(addr[0])
            except ValueError:
                return None
            if not any(source in network for network in self.networks):
                return None
        try:
            packet = decode_packet(datagram)
        except MDNSDecodeError:
            return None
        if packet.opcode != 0 or packet.rcode != 0:
            return None
        if packet.response and addr[1] != self.port:
            return None
        return packet

    def send(self, packet: Packet, destination: tuple[str, int] | None) -> None:
        """
        Send C{packet} to C{destination}, or to the group when ``None`` (once
        per interface).  Send errors are logged and dropped: mDNS repeats itself.
        """
        transport: Any = self.transport
        if transport is None:
            return
        try:
            datagram = encode_packet(packet)
        except ValueError:
            log.failure("mDNS: cannot encode {packet!r}", packet=packet)
            return
        if self.ipv6:
            # Scope ids name the interface: of the group, and of a
            # link-local source (whose zone Twisted does not pass on).
            host, port = destination or (MDNS_GROUP6, self.port)
            if destination is not None and _ip(host) not in LINK_LOCAL6:
                self._write(datagram, destination)
            else:
                for index in self.indexes:
                    self._write(datagram, (host, port, 0, index))
        elif destination is not None:
            self._write(datagram, destination)
        elif len(self.interfaces) > 1:
            for interface in self.interfaces:
                transport.setOutgoingInterface(interface)
                self._write(datagram, (MDNS_GROUP, self.port))
        else:
            self._write(datagram, (MDNS_GROUP, self.port))

    def _write(self, datagram: bytes, destination: tuple[Any, ...]) -> None:
        transport: Any = self.transport
        try:
            transport.write(datagram, destination)
        except (OSError, MessageLengthError) as error:
            log.debug(
                "mDNS: cannot send to {destination}: {error}", destination=destination, error=error
            )


class MDNSService(Service):
    """
    Multicast DNS / DNS-SD discovery of bitfi nodes on the local link, over
    IPv4 and IPv6.

    It publishes this node's P2P listener as ``<node_id>._bitfi._tcp.local.``
    with its markets in the TXT record, and hands other nodes of the same
    network that share a market with it to C{found}.

    :ivar protocol: the IPv4 socket's protocol while it runs, else ``None``.
    :ivar protocol6: the IPv6 socket's protocol while it runs, else ``None``.
    """

    name = "mdns"

    def __init__(
        self,
        reactor: Any,
        *,
        node_id: str | Callable[[], str],
        network: str,
        markets: Sequence[str] | None = None,
        pair: str | None = None,
        version: int,
        p2p_port: Callable[[], int],
        found: PeerFound | OnePeerFound,
        interface: str | None = None,
        rng: random.Random | None = None,
        port: int = MDNS_PORT,
        listen6: ListenIPv6 | None = None,
    ) -> None:
        """
        :param reactor: provides C{listenMulticast} (the IPv4 socket),
            C{adoptDatagramPort} (the IPv6 one) and
            L{IReactorTime <twisted.internet.interfaces.IReactorTime>}.
        :param node_id: this node's id, 40 lowercase hex digits, or what
            gives it at start (a node's id is read from its data directory
            as it starts).
        :param network: the network name, published in TXT ``net``.
        :param markets: the node's markets, the first published in TXT
            ``pair`` and all in TXT ``markets`` (see
            :func:`~bitfitech.discovery.mdns.browser.instance_txt`).
        :param pair: the older, one-market form of C{markets} (give one or
            the other).
        :param version: the protocol version, published in TXT ``v``.
        :param p2p_port: gives the node's TCP P2P port, read at start.
        :param found: called with C{(host, port, node_id, markets)} for each
            peer address found, C{markets} being those of ours it carries;
            built with C{pair}, with C{(host, port, node_id)}.
        :param interface: ``None`` for all interfaces of both families, or
            one IPv4 or IPv6 interface address (mDNS then runs in that
            family only).
        :param rng: draws the random delays (tests pass a seeded one).
        :param port: the mDNS UDP port (5353; tests may use another).
        :param listen6: opens the IPv6 socket; by default
            :func:`~bitfitech.discovery.mdns.ipv6.listen_ipv6` on C{reactor}
            (tests give a fake).
        :raises ValueError: for a malformed node id, TXT values too long, or
            both or neither of C{markets} and C{pair}.
        """
        if (markets is None) == (pair is None):
            raise ValueError("give markets or pair, not both or neither")
        self._reactor = reactor
        self._node_id_of = node_id if callable(node_id) else None
        self._node_id = ""
        self._txt = TXTData(())
        self._version = version
        self._network = network
        self._markets = tuple(markets) if markets is not None else (pair or "",)
        self._p2p_port = p2p_port
        self._found = reporting(found, markets=markets is not None)
        self._interface = interface
        self._rng = rng if rng is not None else random.Random()
        self._port = port
        self._listen6: ListenIPv6 = (
            listen6 if listen6 is not None else functools.partial(listen_ipv6, reactor)
        )
        self._listening: list[Any] = []
        self.protocol: MDNSProtocol | None = None
        self.protocol6: MDNSProtocol | None = None
        self.responder: Responder | None = None
        self.browser: Browser | None = None
        if isinstance(node_id, str):
            self._identify(node_id)

    def _identify(self, node_id: str) -> None:
        """
        Take C{node_id} as this node's and make the TXT record.

        :raises ValueError: for a malformed node id, or TXT values too long.
        """
        if not is_node_id(node_id):
            raise ValueError(f"node id must be 40 lowercase hex digits, not {node_id!r}")
        self._txt = instance_txt(node_id, self._network, self._markets, self._version)
        self._node_id = node_id

    def startService(self) -> None:
        """
        Open the sockets, join the groups, probe and announce, start browsing.

        With all interfaces, a family whose socket cannot be opened or whose
        group cannot be joined anywhere is left off, and logged.

        :raises MDNSError: when no family's socket can be opened and its
            group joined (with one interface: that interface's family).
        :raises ValueError: for a malformed node id given at start.
        """
        if self._node_id_of is not None:
            self._identify(self._node_id_of())
        addresses = local_addresses(self._interface)
        problems = []
        starts = [self._start_ipv4] if addresses.join else []
        starts += [self._start_ipv6] if addresses.join6 else []
        for start in starts:
            try:
                start(addresses)
            except MDNSError as error:
                problems.append(str(error))
        if not self._listening:
            raise MDNSError("; ".join(problems) or "no network interface to run mDNS on")
        for problem in problems:
            log.info("mDNS runs in one family only: {problem}", problem=problem)
        clock = cast(IReactorTime, self._reactor)
        self.responder = Responder(
            clock,
            self._send,
            self._rng,
            node_id=self._node_id,
            txt=self._txt,
            port=self._p2p_port(),
            addresses=addresses.advertised,
            mdns_port=self._port,
        )
        self.browser = Browser(
            clock,
            self._send,
            self._rng,
            node_id=self._node_id,
            network=self._network,
            markets=self._markets,
            found=self._found,
            prefer_ipv6=self.protocol is None,
        )
        Service.startService(self)
        self.responder.start()
        self.browser.start()
        log.info(
            "mDNS started on {interface} ({families}) as {instance}",
            interface=self._interface or "all interfaces",
            families=", ".join(self.families()),
            instance=self.responder.instance_name,
        )

    def _start_ipv4(self, addresses: LocalAddresses) -> None:
        """
        Open the IPv4 socket and join 224.0.0.251.

        :raises MDNSError: when the socket cannot be opened or the group
            cannot be joined on any interface.
        """
        protocol = MDNSProtocol(
            self._handle,
            port=self._port,
            interfaces=addresses.join if self._interface is None else (),
            networks=addresses.networks,
        )
        try:
            listening = self._reactor.listenMulticast(
                self._port, protocol, listenMultiple=True, maxPacketSize=MAX_PACKET + 1
            )
        except CannotListenError as error:
            raise MDNSError(
                f"cannot open the IPv4 mDNS socket on UDP port {self._port}: {error}"
            ) from error
        listening.setTTL(MULTICAST_TTL)
        listening.setLoopbackMode(1)
        joined = []
        for address in addresses.join:
            failures: list[Failure] = []
            listening.joinGroup(MDNS_GROUP, address).addErrback(failures.append)
            if failures:
                log.debug(
                    "mDNS: cannot join {group} on {address}: {error}",
                    group=MDNS_GROUP,
                    address=address,
                    error=failures[0].getErrorMessage(),
                )
            else:
                joined.append(address)
        if not joined:
            listening.stopListening()
            raise MDNSError(f"cannot join the mDNS group {MDNS_GROUP} on {addresses.join}")
        if self._interface is not None:
            listening.setOutgoingInterface(self._interface)
        else:
            # Loopback sends only when there is nothing else: packets sent
            # on the other interfaces loop back to this host anyway.
            protocol.interfaces = tuple(
                address for address in joined if not ipaddress.IPv4Address(address).is_loopback
            ) or tuple(joined)
        self._listening.append(listening)
        self.protocol = protocol

    def _start_ipv6(self, addresses: LocalAddresses) -> None:
        """
        Open the IPv6 socket and join ff02::fb.

        :raises MDNSError: when the socket cannot be opened (a host without
            IPv6, say) or the group cannot be joined on any interface.
        """
        protocol = MDNSProtocol(
            self._handle, port=self._port, networks=addresses.networks, ipv6=True
        )
        try:
            listening: IPv6Listening = self._listen6(self._port, protocol, MAX_PACKET + 1)
        except (OSError, CannotListenError) as error:
            raise MDNSError(
                f"cannot open the IPv6 mDNS socket on UDP port {self._port}: {error}"
            ) from error
        joined = []
        for index in addresses.join6:
            try:
                listening.join(index)
            except OSError as error:
                log.debug(
                    "mDNS: cannot join {group} on interface {index}: {error}",
                    group=MDNS_GROUP6,
                    index=index,
                    error=error,
                )
            else:
                joined.append(index)
        if not joined:
            listening.stopListening()
            raise MDNSError(
                f"cannot join the mDNS group {MDNS_GROUP6} on interfaces {addresses.join6}"
            )
        protocol.indexes = tuple(joined)
        self._listening.append(listening)
        self.protocol6 = protocol

    def families(self) -> list[str]:
        """The families mDNS runs on now: ``ipv4``, ``ipv6``, both or none."""
        return [
            family
            for family, protocol in (("ipv4", self.protocol), ("ipv6", self.protocol6))
            if protocol is not None
        ]

    def _send(self, packet: Packet, destination: tuple[str, int] | None) -> None:
        """Send C{packet} to the group on every family, or to one address on its family's."""
        if destination is None:
            for protocol in (self.protocol, self.protocol6):
                if protocol is not None:
                    protocol.send(packet, None)
            return
        protocol = self.protocol6 if ":" in destination[0] else self.protocol
        if protocol is not None:
            protocol.send(packet, destination)

    def _handle(self, packet: Packet, source: tuple[str, int]) -> None:
        if not self.running or self.responder is None or self.browser is None:
            return
        if packet.response:
            self.responder.handle_response(packet, source)
            self.browser.handle_response(packet, source)
        else:
            self.responder.handle_query(packet, source)

    def stopService(self) -> Deferred[None]:
        """Send goodbyes, cancel every timer and close the sockets."""
        Service.stopService(self)
        if self.responder is not None:
            self.responder.stop()
        if self.browser is not None:
            self.browser.stop()
        listening, self._listening = self._listening, []
        self.protocol = self.protocol6 = None
        if not listening:
            return succeed(None)
        stopped = gatherResults([maybeDeferred(port.stopListening) for port in listening])
        return stopped.addCallback(lambda _: None)

    def status(self) -> dict[str, Any]:
        """
        What the status endpoint shows: ``interface`` (``"all"`` or the
        address), ``families`` (``["ipv4", "ipv6"]``, or the one family
        running), ``instance`` (the full instance name in use),
        ``discovered`` (other instances of our network that share a market
        with us, known now) and ``discovered_by_market`` (each of our
        markets -> how many of them carry it).
        """
        if self.responder is not None:
            instance = self.responder.instance_name
        else:
            instance = f"{self._node_id}._bitfi._tcp.local."
        return {
            "interface": self._interface or "all",
            "families": self.families(),
            "instance": instance,
            "discovered": self.browser.discovered() if self.browser is not None else 0,
            "discovered_by_market": (
                self.browser.discovered_by_market()
                if self.browser is not None
                else dict.fromkeys(self._markets, 0)
            ),
        }
