"""Fake routers for the port-mapping tests: on loopback, or in memory.

- :class:`FakePortControlRouter`: a NAT-PMP and/or PCP server on a UDP
  port of ``127.0.0.1`` (RFC 6886, RFC 6887's MAP), built on the same codec
  as the client (:mod:`bitfitech.nat.portcontrol`);
- :class:`FakeIGD`: a UPnP Internet Gateway Device on ``127.0.0.1``
  (twisted.web): a root description and a ``WANIPConnection:1`` control URL
  that answers ``GetStatusInfo``, ``GetExternalIPAddress``,
  ``AddPortMapping`` and ``DeletePortMapping``;
- :class:`FakeMiniSSDPD`: what miniupnpc's discovery asks before it
  multicasts (the minissdpd Unix socket), answering with a :class:`FakeIGD`'s
  root description URL, so discovery is tested without SSDP multicast (its
  port 1900 and group are fixed, so a loopback SSDP responder would share
  them with the host);
- :class:`FakeMapper`: an :class:`~bitfitech.nat.mapping.IPortMapper` in
  memory, for the service's tests on a ``Clock``.

Each router answers (``mode = "answer"``), refuses with an error code
(:meth:`refuse`, for every protocol or for one), stops answering while its
socket stays open (``mode = "silent"``), or vanishes (:meth:`vanish`: its
socket closes).  Like a real router, each keeps a table of mappings per
protocol (:attr:`tables`): TCP 3000 and UDP 3000 are two mappings.
"""

from __future__ import annotations

import itertools
from typing import Any
from xml.etree import ElementTree

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from bitfitech.nat.mapping import TCP, UDP, GatewayRefused, IPortMapper, Mapping, NoGateway
from bitfitech.nat.portcontrol import (
    NATPMP_OP_MAP_TCP,
    NATPMP_OP_MAP_UDP,
    NATPMP_RESPONSE,
    NATPMP_VERSION,
    PCP_VERSION,
    UNSUPPORTED_VERSION,
    PcpMapData,
    PcpMapRequest,
    PcpResponse,
    PmpAddressRequest,
    PmpAddressResponse,
    PmpErrorResponse,
    PmpMapRequest,
    PmpMapResponse,
    PortControlDecodeError,
    Response,
    decode_request,
    encode_response,
)
from bitfitech.nat.portcontrol import TCP as IPPROTO_TCP
from bitfitech.nat.portcontrol import UDP as IPPROTO_UDP

EXTERNAL_ADDRESS = "203.0.113.7"
"""The fakes' public address (TEST-NET-3: documentation only)."""

ANSWER, SILENT = "answer", "silent"

_PMP_PROTOCOLS = {NATPMP_OP_MAP_TCP: TCP, NATPMP_OP_MAP_UDP: UDP}
_PMP_OPCODES = {TCP: NATPMP_OP_MAP_TCP, UDP: NATPMP_OP_MAP_UDP}
_PCP_PROTOCOLS = {IPPROTO_TCP: TCP, IPPROTO_UDP: UDP}
_PCP_NUMBERS = {TCP: IPPROTO_TCP, UDP: IPPROTO_UDP}
PCP_UNSUPPORTED_PROTOCOL = 9
"""PCP's ``UNSUPP_PROTOCOL``: the answer to a MAP of a protocol the fake does not map."""


class FakePortControlRouter(DatagramProtocol):
    """
    A NAT-PMP/PCP server on ``127.0.0.1``.

    :ivar speaks: ``pcp``, ``natpmp`` or both: a request of the other
        version gets "unsupported version", as a real one would answer.
    :ivar tables: ``tcp`` and ``udp`` -> external port -> (client address,
        internal port, lifetime).
    :ivar taken: external ports another host holds (in both tables).
    :ivar max_lifetime: the longest lifetime granted.
    :ivar received: every datagram, in order.
    :ivar refusing: the result code every mapping request gets, or ``None``.
    :ivar refusing_protocol: the protocol C{refusing} applies to (``None``: all).
    :ivar cross_answers: before each mapping answer, send a stale one for the
        other protocol (same port and nonce), which a client must not take.
    """

    noisy = False

    def __init__(
        self,
        *,
        speaks: tuple[str, ...] = ("pcp", "natpmp"),
        external_address: str = EXTERNAL_ADDRESS,
        max_lifetime: int = 7200,
    ) -> None:
        self.speaks = speaks
        self.external_address = external_address
        self.max_lifetime = max_lifetime
        self.mode = ANSWER
        self.refusing: int | None = None
        self.refusing_protocol: str | None = None
        self.cross_answers = False
        self.tables: dict[str, dict[int, tuple[str, int, int]]] = {TCP: {}, UDP: {}}
        self.taken: set[int] = set()
        self.received: list[bytes] = []
        self.epoch = 1000
        self._port: Any = None
        self.port = 0

    def listen(self, reactor: Any) -> int:
        """Listen on a free UDP port of ``127.0.0.1``; return it."""
        self._port = reactor.listenUDP(0, self, interface="127.0.0.1")
        self.port = self._port.getHost().port
        return self.port

    @property
    def mappings(self) -> dict[int, tuple[str, int, int]]:
        """The TCP table: external port -> (client address, internal port, lifetime)."""
        return self.tables[TCP]

    def refuse(self, code: int, protocol: str | None = None) -> None:
        """
        Refuse every mapping request (of C{protocol} only, unless ``None``)
        with result C{code} from now on.
        """
        self.refusing = code
        self.refusing_protocol = protocol

    def _refuses(self, protocol: str) -> bool:
        return self.refusing is not None and self.refusing_protocol in (None, protocol)

    def vanish(self) -> Deferred[None]:
        """Close the socket: the host then answers "port unreachable"."""
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        stopped: Deferred[None] = port.stopListening() or succeed(None)
        return stopped

    close = vanish

    def map_requests(self, protocol: str | None = None) -> int:
        """How many mapping requests (of either version; of C{protocol} unless ``None``) came."""
        count = 0
        for datagram in self.received:
            try:
                request = decode_request(datagram)
            except PortControlDecodeError:
                continue
            if isinstance(request, PmpMapRequest):
                asked = _PMP_PROTOCOLS.get(request.opcode)
            elif isinstance(request, PcpMapRequest):
                asked = _PCP_PROTOCOLS.get(request.protocol)
            else:
                continue
            count += protocol is None or asked == protocol
        return count

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)
        if self.mode == SILENT or not datagram:
            return
        self.epoch += 1
        response = self._respond(datagram, addr[0])
        if response is None or self.transport is None:
            return
        if self.cross_answers:
            stale = _other_protocol(response)
            if stale is not None:
                self.transport.write(encode_response(stale), addr)
        self.transport.write(encode_response(response), addr)

    def _respond(self, datagram: bytes, client: str) -> Response | None:
        version = datagram[0]
        opcode = datagram[1] if len(datagram) > 1 else 0
        if version == PCP_VERSION and "pcp" not in self.speaks:
            return PmpErrorResponse(NATPMP_RESPONSE + opcode, UNSUPPORTED_VERSION, self.epoch)
        if version == NATPMP_VERSION and "natpmp" not in self.speaks:
            return PcpResponse(PCP_VERSION, opcode & 0x7F, UNSUPPORTED_VERSION, 0, self.epoch, None)
        try:
            request = decode_request(datagram)
        except PortControlDecodeError:
            return None
        if isinstance(request, PmpAddressRequest):
            return PmpAddressResponse(0, self.epoch, self.external_address)
        if isinstance(request, PmpMapRequest):
            opcode = NATPMP_RESPONSE + request.opcode
            protocol = _PMP_PROTOCOLS[request.opcode]
            if self.refusing is not None and self._refuses(protocol):
                return PmpMapResponse(
                    opcode, self.refusing, self.epoch, request.internal_port, 0, 0
                )
            port, lifetime = self._map(
                protocol, client, request.internal_port, request.external_port, request.lifetime
            )
            return PmpMapResponse(opcode, 0, self.epoch, request.internal_port, port, lifetime)
        assert isinstance(request, PcpMapRequest)
        data = PcpMapData(
            request.nonce, request.protocol, request.internal_port, request.external_port,
            self.external_address,
        )  # fmt: skip
        mapped = _PCP_PROTOCOLS.get(request.protocol)
        if mapped is None:
            return PcpResponse(PCP_VERSION, 1, PCP_UNSUPPORTED_PROTOCOL, 30, self.epoch, data)
        if self.refusing is not None and self._refuses(mapped):
            return PcpResponse(PCP_VERSION, 1, self.refusing, 30, self.epoch, data)
        port, lifetime = self._map(
            mapped, request.client_address, request.internal_port, request.external_port,
            request.lifetime,
        )  # fmt: skip
        granted = PcpMapData(
            request.nonce, request.protocol, request.internal_port, port, self.external_address
        )
        return PcpResponse(PCP_VERSION, 1, 0, lifetime, self.epoch, granted)

    def _map(
        self, protocol: str, client: str, internal: int, suggested: int, lifetime: int
    ) -> tuple[int, int]:
        """
        Map (or with lifetime 0 remove) C{client}'s C{internal} port for
        C{protocol}: (external, lifetime).
        """
        table = self.tables[protocol]
        existing = next(
            (port for port, (c, i, _) in table.items() if (c, i) == (client, internal)),
            None,
        )
        if lifetime == 0:
            if existing is not None:
                del table[existing]
            return 0, 0
        if existing is None:
            free = (
                suggested
                if suggested and suggested not in self.taken and suggested not in table
                else next(p for p in itertools.count(40000) if p not in self.taken | set(table))
            )
            existing = free
        granted = min(lifetime, self.max_lifetime)
        table[existing] = (client, internal, granted)
        return existing, granted


def _other_protocol(response: Response) -> Response | None:
    """
    A stale answer for the same port in the other protocol (external port
    1, lifetime 1), or ``None`` for a response that maps nothing.
    """
    if isinstance(response, PmpMapResponse):
        opcode = response.opcode - NATPMP_RESPONSE
        other = _PMP_OPCODES[UDP if _PMP_PROTOCOLS.get(opcode) == TCP else TCP]
        return PmpMapResponse(
            NATPMP_RESPONSE + other, 0, response.epoch, response.internal_port, 1, 1
        )
    if isinstance(response, PcpResponse) and response.map is not None:
        data = response.map
        other = _PCP_NUMBERS[UDP if _PCP_PROTOCOLS.get(data.protocol) == TCP else TCP]
        stale = PcpMapData(data.nonce, other, data.internal_port, 1, data.external_address)
        return PcpResponse(response.version, response.opcode, 0, 1, response.epoch, stale)
    return None


# UPnP IGD

SERVICE = "urn:schemas-upnp-org:service:WANIPConnection:1"
ROOT_DESCRIPTION = f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
<specVersion><major>1</major><minor>0</minor></specVersion>
<device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<friendlyName>bitfi fake IGD</friendlyName>
<manufacturer>bitfi tests</manufacturer>
<modelName>fake</modelName>
<UDN>uuid:00000000-0000-0000-0000-000000000001</UDN>
<deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<friendlyName>WAN device</friendlyName>
<UDN>uuid:00000000-0000-0000-0000-000000000002</UDN>
<serviceList><service>
<serviceType>urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANCommonIFC1</serviceId>
<controlURL>/ctl/CmnIfCfg</controlURL>
<eventSubURL>/evt/CmnIfCfg</eventSubURL>
<SCPDURL>/WANCfg.xml</SCPDURL>
</service></serviceList>
<deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<friendlyName>WAN connection</friendlyName>
<UDN>uuid:00000000-0000-0000-0000-000000000003</UDN>
<serviceList><service>
<serviceType>{SERVICE}</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>/ctl/IPConn</controlURL>
<eventSubURL>/evt/IPConn</eventSubURL>
<SCPDURL>/WANIPCn.xml</SCPDURL>
</service></serviceList>
</device></deviceList>
</device></deviceList>
</device>
</root>
""".encode()

_ENVELOPE = (
    '<?xml version="1.0"?>\r\n'
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
    's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>{}</s:Body></s:Envelope>'
    "\r\n"
)


def soap_response(action: str, values: dict[str, str]) -> bytes:
    """The SOAP body of a successful C{action}, with C{values}."""
    inner = "".join(f"<{name}>{value}</{name}>" for name, value in values.items())
    return _ENVELOPE.format(
        f'<u:{action}Response xmlns:u="{SERVICE}">{inner}</u:{action}Response>'
    ).encode()


def soap_fault(code: int, description: str) -> bytes:
    """The SOAP fault a UPnP device answers an action it refuses with."""
    return _ENVELOPE.format(
        "<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>"
        '<detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0">'
        f"<errorCode>{code}</errorCode><errorDescription>{description}</errorDescription>"
        "</UPnPError></detail></s:Fault>"
    ).encode()


def _arguments(body: bytes) -> dict[str, str]:
    """The action's arguments: every leaf element of the body, by local name."""
    values: dict[str, str] = {}
    for element in ElementTree.fromstring(body).iter():
        if len(element) == 0:
            values[element.tag.rsplit("}", 1)[-1]] = (element.text or "").strip()
    return values


class _Description(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b'text/xml; charset="utf-8"')
        return ROOT_DESCRIPTION


class _Control(Resource):
    isLeaf = True

    def __init__(self, igd: FakeIGD) -> None:
        super().__init__()
        self.igd = igd

    def render_POST(self, request: Request) -> bytes | int:
        header = request.getHeader(b"soapaction") or b""
        action = header.decode().strip('"').rsplit("#", 1)[-1]
        self.igd.actions.append(action)
        if self.igd.mode == SILENT:
            self.igd.held.append(request)
            return NOT_DONE_YET
        assert request.content is not None
        arguments = _arguments(request.content.read())
        code, body = self.igd.answer(action, arguments)
        request.setResponseCode(code)
        request.setHeader(b"content-type", b'text/xml; charset="utf-8"')
        return body


class FakeIGD:
    """
    A UPnP IGD (``WANIPConnection:1``) on ``127.0.0.1``, over twisted.web.

    :ivar tables: ``tcp`` and ``udp`` (``NewProtocol``, lower-cased) ->
        external port -> (internal client, internal port, lease, description).
    :ivar taken: external ports another host holds (``ConflictInMappingEntry``),
        in both tables.
    :ivar refusing: ``(code, description)`` every ``AddPortMapping`` gets, or ``None``.
    :ivar refusing_protocol: the protocol C{refusing} applies to (``None``: all).
    :ivar only_permanent: refuse leases other than 0 (error 725), as old routers do.
    :ivar actions: the SOAP actions asked for, in order.
    :ivar root_url: the root description's URL, once listening.
    """

    def __init__(self, external_address: str = EXTERNAL_ADDRESS) -> None:
        self.external_address = external_address
        self.mode = ANSWER
        self.refusing: tuple[int, str] | None = None
        self.refusing_protocol: str | None = None
        self.only_permanent = False
        self.tables: dict[str, dict[int, tuple[str, int, int, str]]] = {TCP: {}, UDP: {}}
        self.taken: set[int] = set()
        self.actions: list[str] = []
        self.held: list[Request] = []
        self._connections: WrappingFactory | None = None
        self._port: Any = None
        self._reactor: Any = None
        self.root_url = ""

    def listen(self, reactor: Any) -> str:
        """Listen on a free TCP port of ``127.0.0.1``; return the root description URL."""
        root = Resource()
        root.putChild(b"rootDesc.xml", _Description())
        ctl = Resource()
        ctl.putChild(b"IPConn", _Control(self))
        root.putChild(b"ctl", ctl)
        self._reactor = reactor
        site = Site(root)
        site.noisy = False
        self._connections = WrappingFactory(site)  # keeps the open connections
        self._connections.noisy = False
        self._port = reactor.listenTCP(0, self._connections, interface="127.0.0.1")
        port = self._port.getHost().port
        self.root_url = f"http://127.0.0.1:{port}/rootDesc.xml"
        return self.root_url

    @property
    def mappings(self) -> dict[int, tuple[str, int, int, str]]:
        """The TCP table: external port -> (internal client, internal port, lease, description)."""
        return self.tables[TCP]

    def refuse(
        self, code: int, description: str = "Action not authorized", protocol: str | None = None
    ) -> None:
        """
        Refuse every ``AddPortMapping`` (of C{protocol} only, unless ``None``)
        with C{code} from now on.
        """
        self.refusing = (code, description)
        self.refusing_protocol = protocol

    def vanish(self) -> Deferred[None]:
        """Stop listening and cut every connection (a router switched off)."""
        return Deferred.fromCoroutine(self._vanish())

    async def _vanish(self) -> None:
        if self._connections is not None:
            for wrapper in list(self._connections.protocols):
                wrapper.transport.abortConnection()
        self.held.clear()
        port, self._port = self._port, None
        if port is not None:
            await (port.stopListening() or succeed(None))
        # An aborted connection is gone at the next turn of the reactor.
        await deferLater(self._reactor, 0, lambda: None)

    close = vanish

    def answer(self, action: str, arguments: dict[str, str]) -> tuple[int, bytes]:
        """The HTTP status and SOAP body for C{action}."""
        if action == "GetStatusInfo":
            values = {
                "NewConnectionStatus": "Connected",
                "NewLastConnectionError": "ERROR_NONE",
                "NewUptime": "1000",
            }
            return 200, soap_response(action, values)
        if action == "GetExternalIPAddress":
            return 200, soap_response(action, {"NewExternalIPAddress": self.external_address})
        if action == "AddPortMapping":
            return self._add(arguments)
        if action == "DeletePortMapping":
            table = self.tables.get(arguments.get("NewProtocol", "").lower())
            if table is None:
                return 500, soap_fault(402, "Invalid Args")
            port = int(arguments.get("NewExternalPort", "0"))
            if port not in table:
                return 500, soap_fault(714, "NoSuchEntryInArray")
            del table[port]
            return 200, soap_response(action, {})
        return 500, soap_fault(401, "Invalid Action")

    def _add(self, arguments: dict[str, str]) -> tuple[int, bytes]:
        protocol = arguments.get("NewProtocol", "").lower()
        table = self.tables.get(protocol)
        if table is None:
            return 500, soap_fault(402, "Invalid Args")
        if self.refusing is not None and self.refusing_protocol in (None, protocol):
            return 500, soap_fault(*self.refusing)
        port = int(arguments["NewExternalPort"])
        client = arguments["NewInternalClient"]
        lease = int(arguments.get("NewLeaseDuration") or 0)
        holder = table.get(port)
        if port in self.taken or (holder is not None and holder[0] != client):
            return 500, soap_fault(718, "ConflictInMappingEntry")
        if self.only_permanent and lease != 0:
            return 500, soap_fault(725, "OnlyPermanentLeasesSupported")
        internal = int(arguments["NewInternalPort"])
        description = arguments.get("NewPortMappingDescription", "")
        table[port] = (client, internal, lease, description)
        return 200, soap_response("AddPortMapping", {})


def _code_length(n: int) -> bytes:
    """minissdpd's length prefix: 7 bits a byte, most significant first."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


class _MiniSSDPDAnswer(Protocol):
    def __init__(self, devices: list[tuple[str, str, str]], asked: list[bytes]) -> None:
        self.devices = devices
        self.asked = asked

    def dataReceived(self, data: bytes) -> None:
        self.asked.append(data)
        reply = bytes([len(self.devices)])
        for url, st, usn in self.devices:
            for field in (url, st, usn):
                raw = field.encode()
                reply += _code_length(len(raw)) + raw
        assert self.transport is not None
        self.transport.write(reply)
        self.transport.loseConnection()


class FakeMiniSSDPD:
    """
    A minissdpd on a Unix socket that lists one IGD, at C{root_url}.

    :ivar asked: each request received (type byte, length, search target).
    """

    def __init__(self, root_url: str) -> None:
        self.devices = [
            (
                root_url,
                "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
                "uuid:00000000-0000-0000-0000-000000000001::"
                "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
            )
        ]
        self.asked: list[bytes] = []
        self._port: Any = None

    def listen(self, reactor: Any, path: str) -> str:
        """Listen on the Unix socket C{path}; return it."""
        factory = Factory.forProtocol(lambda: _MiniSSDPDAnswer(self.devices, self.asked))
        factory.noisy = False
        self._port = reactor.listenUNIX(path, factory)
        return path

    def close(self) -> Deferred[None]:
        """Stop listening."""
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        stopped: Deferred[None] = port.stopListening() or succeed(None)
        return stopped


# In memory, for the service


@implementer(IPortMapper)
class FakeMapper:
    """
    A mapper in memory whose router answers, refuses, is absent, or hangs.

    :ivar mode: ``answer``, ``refuse``, ``absent`` or ``hang`` (never answers).
    :ivar granted: the lifetime the router grants (``None``: what was asked).
    :ivar external_address: what the router says its address is.
    :ivar taken: external ports the router will not give (it picks the next free).
    :ivar maps: each ``(internal, external, lifetime)`` asked for.
    :ivar protocols: the protocol of each of C{maps}.
    :ivar unmapped: each mapping removed.
    :ivar hanging: the Deferreds of calls that hang.
    """

    def __init__(self, name: str = "natpmp", method: str | None = None) -> None:
        self.name = name
        self.method = method or ("pcp" if name == "natpmp" else name)
        self.mode = "answer"
        self.code = 2
        self.granted: int | None = None
        self.external_address = EXTERNAL_ADDRESS
        self.taken: set[int] = set()
        self.maps: list[tuple[int, int, int]] = []
        self.protocols: list[str] = []
        self.unmapped: list[Mapping] = []
        self.hanging: list[Deferred[Any]] = []
        self.closed = 0

    def _outcome(self) -> Deferred[Any] | None:
        if self.mode == "refuse":
            return fail(GatewayRefused(self.method, self.code, "not authorized"))
        if self.mode == "absent":
            return fail(NoGateway(self.method, "no answer from the gateway"))
        if self.mode == "hang":
            d: Deferred[Any] = Deferred()
            self.hanging.append(d)
            return d
        return None

    def map(
        self, internal_port: int, external_port: int, lifetime: int, protocol: str = TCP
    ) -> Deferred[Mapping]:
        self.maps.append((internal_port, external_port, lifetime))
        self.protocols.append(protocol)
        other = self._outcome()
        if other is not None:
            return other
        port = external_port
        while port in self.taken:
            port += 1
        granted = lifetime if self.granted is None else self.granted
        return succeed(
            Mapping(self.method, internal_port, port, self.external_address, granted, protocol)
        )

    def unmap(self, mapping: Mapping) -> Deferred[None]:
        other = self._outcome()
        if other is not None:
            return other
        self.unmapped.append(mapping)
        return succeed(None)

    def close(self) -> None:
        self.closed += 1
