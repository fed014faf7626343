"""The mDNS socket and service: where multicast datagrams enter and leave.

Data path: ``224.0.0.251:5353`` -> :class:`MDNSProtocol` (size check,
:func:`~bitfitech.discovery.mdns.codec.decode_packet`, RFC 6762 §6/§18
filters) -> :class:`MDNSService` -> the
:class:`~bitfitech.discovery.mdns.responder.Responder` (queries, and
responses that may conflict with our names) and the
:class:`~bitfitech.discovery.mdns.browser.Browser` (responses) -> ``found``.
Outgoing packets take the way back through :meth:`MDNSProtocol.send`.

The socket is shared with the host's other responders (``listenMultiple``),
sends with multicast TTL 255 and loops its packets back to the host.  With
``interface=None`` it joins the group on every IPv4 interface address,
sends each multicast once per interface, and answers with every address;
with an interface address it joins, sends and answers there only (and
ignores packets from outside that interface's network).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import ifaddr
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
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
from .responder import MDNS_PORT, Responder

log = logger(__name__)

MDNS_GROUP = "224.0.0.251"
"""The IPv4 mDNS multicast group."""

MULTICAST_TTL = 255
"""IP TTL of our multicast packets (RFC 6762 §11)."""


class MDNSError(Exception):
    """The mDNS service cannot start: the socket or the group is unavailable."""


@dataclass(frozen=True)
class LocalAddresses:
    """
    The addresses the service works with.

    :ivar join: IPv4 interface addresses to join the group on and send from.
    :ivar advertised: addresses for our A and AAAA records.
    :ivar networks: packets from outside these networks are ignored (empty:
        accept all).
    """

    join: tuple[str, ...]
    advertised: tuple[str, ...]
    networks: tuple[ipaddress.IPv4Network, ...] = ()


def _adapter_ips() -> list[list[tuple[str, int]]]:
    """Each adapter's ``(address, prefix length)`` pairs, IPv6 scope ids dropped."""
    adapters = []
    for adapter in ifaddr.get_adapters():
        ips = []
        for ip in adapter.ips:
            address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            ips.append((address, int(ip.network_prefix)))
        adapters.append(ips)
    return adapters


def _advertisable_v6(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    return parsed.version == 6 and not (parsed.is_loopback or parsed.is_link_local)


def local_addresses(
    interface: str | None, adapters: Sequence[Sequence[tuple[str, int]]] | None = None
) -> LocalAddresses:
    """
    Choose the addresses to join on and to advertise.

    :param interface: ``None`` for all interfaces, or one IPv4 interface address.
    :param adapters: each network adapter's ``(address, prefix length)``
        pairs; read from the system (with ``ifaddr``) when ``None``.
    :raises MDNSError: for an interface that is not an IPv4 address.
    """
    if adapters is None:
        adapters = _adapter_ips()
    if interface is not None:
        try:
            ipaddress.IPv4Address(interface)
        except ValueError:
            raise MDNSError(f"mDNS interface must be an IPv4 address, not {interface!r}") from None
        for ips in adapters:
            if any(address == interface for address, _ in ips):
                prefix = next(length for address, length in ips if address == interface)
                network = ipaddress.IPv4Network(f"{interface}/{prefix}", strict=False)
                same = [address for address, _ in ips if ":" in address]
                extra = tuple(address for address in same if _advertisable_v6(address))
                return LocalAddresses((interface,), (interface, *extra), (network,))
        return LocalAddresses((interface,), (interface,))
    join: list[str] = []
    v4: list[str] = []
    v6: list[str] = []
    for ips in adapters:
        for address, _ in ips:
            if ":" in address:
                if _advertisable_v6(address) and address not in v6:
                    v6.append(address)
            elif address not in join:
                join.append(address)
                if not ipaddress.IPv4Address(address).is_loopback:
                    v4.append(address)
    if not v4:
        v4 = [address for address in join]
    return LocalAddresses(tuple(join), tuple(v4 + v6))


Handler = Callable[[Packet, "tuple[str, int]"], None]


class MDNSProtocol(DatagramProtocol):
    """
    Glue between the multicast socket and the typed packets.

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
        networks: Sequence[ipaddress.IPv4Network] = (),
    ) -> None:
        """
        :param handle: called with each packet and its source address.
        :param port: the mDNS port (responses from other ports are dropped).
        :param interfaces: interface addresses to send each multicast from, in
            turn (empty: the system's choice).
        :param networks: accept packets from these networks only (empty: all).
        """
        self.handle = handle
        self.port = port
        self.interfaces = tuple(interfaces)
        self.networks = tuple(networks)
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
                source = ipaddress.ip_address(addr[0])
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
        if destination is not None:
            self._write(datagram, destination)
        elif len(self.interfaces) > 1:
            for interface in self.interfaces:
                transport.setOutgoingInterface(interface)
                self._write(datagram, (MDNS_GROUP, self.port))
        else:
            self._write(datagram, (MDNS_GROUP, self.port))

    def _write(self, datagram: bytes, destination: tuple[str, int]) -> None:
        transport: Any = self.transport
        try:
            transport.write(datagram, destination)
        except (OSError, MessageLengthError) as error:
            log.debug(
                "mDNS: cannot send to {destination}: {error}", destination=destination, error=error
            )


class MDNSService(Service):
    """
    Multicast DNS / DNS-SD discovery of bitfi nodes on the local link.

    It publishes this node's P2P listener as ``<node_id>._bitfi._tcp.local.``
    with its markets in the TXT record, and hands other nodes of the same
    network that share a market with it to C{found}.
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
    ) -> None:
        """
        :param reactor: provides C{listenMulticast} and
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
            peer found, C{markets} being those of ours it carries; built
            with C{pair}, with C{(host, port, node_id)}.
        :param interface: ``None`` for all interfaces, or an IPv4 interface address.
        :param rng: draws the random delays (tests pass a seeded one).
        :param port: the mDNS UDP port (5353; tests may use another).
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
        self._listening: Any = None
        self.protocol: MDNSProtocol | None = None
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
        Open the socket, join the group, probe and announce, start browsing.

        :raises MDNSError: when the socket cannot be opened or the group
            cannot be joined on any interface.
        :raises ValueError: for a malformed node id given at start.
        """
        if self._node_id_of is not None:
            self._identify(self._node_id_of())
        addresses = local_addresses(self._interface)
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
                f"cannot open the mDNS socket on UDP port {self._port}: {error}"
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
        clock = cast(IReactorTime, self._reactor)
        self._listening = listening
        self.protocol = protocol
        self.responder = Responder(
            clock,
            protocol.send,
            self._rng,
            node_id=self._node_id,
            txt=self._txt,
            port=self._p2p_port(),
            addresses=addresses.advertised,
            mdns_port=self._port,
        )
        self.browser = Browser(
            clock,
            protocol.send,
            self._rng,
            node_id=self._node_id,
            network=self._network,
            markets=self._markets,
            found=self._found,
        )
        Service.startService(self)
        self.responder.start()
        self.browser.start()
        log.info(
            "mDNS started on {interface} as {instance}",
            interface=self._interface or "all interfaces",
            instance=self.responder.instance_name,
        )

    def _handle(self, packet: Packet, source: tuple[str, int]) -> None:
        if not self.running or self.responder is None or self.browser is None:
            return
        if packet.response:
            self.responder.handle_response(packet, source)
            self.browser.handle_response(packet, source)
        else:
            self.responder.handle_query(packet, source)

    def stopService(self) -> Deferred[None]:
        """Send goodbyes, cancel every timer and close the socket."""
        Service.stopService(self)
        if self.responder is not None:
            self.responder.stop()
        if self.browser is not None:
            self.browser.stop()
        listening, self._listening = self._listening, None
        if listening is None:
            return succeed(None)
        stopped: Deferred[None] = maybeDeferred(listening.stopListening)
        return stopped

    def status(self) -> dict[str, Any]:
        """
        What the status endpoint shows: ``interface`` (``"all"`` or the
        address), ``instance`` (the full instance name in use),
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
            "instance": instance,
            "discovered": self.browser.discovered() if self.browser is not None else 0,
            "discovered_by_market": (
                self.browser.discovered_by_market()
                if self.browser is not None
                else dict.fromkeys(self._markets, 0)
            ),
        }
