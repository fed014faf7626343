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
(:meth:`refuse`), stops answering while its socket stays open (``mode =
"silent"``), or vanishes (:meth:`vanish`: its socket closes).
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

from bitfitech.nat.mapping import GatewayRefused, IPortMapper, Mapping, NoGateway
from bitfitech.nat.portcontrol import (
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

EXTERNAL_ADDRESS = "203.0.113.7"
"""The fakes' public address (TEST-NET-3: documentation only)."""

ANSWER, SILENT = "answer", "silent"


class FakePortControlRouter(DatagramProtocol):
    """
    A NAT-PMP/PCP server on ``127.0.0.1``.

    :ivar speaks: ``pcp``, ``natpmp`` or both: a request of the other
        version gets "unsupported version", as a real one would answer.
    :ivar mappings: external port -> (client address, internal port, lifetime).
    :ivar taken: external ports another host holds.
    :ivar max_lifetime: the longest lifetime granted.
    :ivar received: every datagram, in order.
    :ivar refusing: the result code every mapping request gets, or ``None``.
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
        self.mappings: dict[int, tuple[str, int, int]] = {}
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

    def refuse(self, code: int) -> None:
        """Refuse every mapping request with result C{code} from now on."""
        self.refusing = code

    def vanish(self) -> Deferred[None]:
        """Close the socket: the host then answers "port unreachable"."""
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        stopped: Deferred[None] = port.stopListening() or succeed(None)
        return stopped

    close = vanish

    def map_requests(self) -> int:
        """How many mapping requests (of either version) came."""
        count = 0
        for datagram in self.received:
            try:
                request = decode_request(datagram)
            except PortControlDecodeError:
                continue
            count += isinstance(request, PmpMapRequest | PcpMapRequest)
        return count

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)
        if self.mode == SILENT or not datagram:
            return
        self.epoch += 1
        response = self._respond(datagram, addr[0])
        if response is not None and self.transport is not None:
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
            if self.refusing is not None:
                return PmpMapResponse(
                    opcode, self.refusing, self.epoch, request.internal_port, 0, 0
                )
            port, lifetime = self._map(
                client, request.internal_port, request.external_port, request.lifetime
            )
            return PmpMapResponse(opcode, 0, self.epoch, request.internal_port, port, lifetime)
        assert isinstance(request, PcpMapRequest)
        data = PcpMapData(
            request.nonce, request.protocol, request.internal_port, request.external_port,
            self.external_address,
        )  # fmt: skip
        if self.refusing is not None:
            return PcpResponse(PCP_VERSION, 1, self.refusing, 30, self.epoch, data)
        port, lifetime = self._map(
            request.client_address, request.internal_port, request.external_port, request.lifetime
        )
        granted = PcpMapData(
            request.nonce, request.protocol, request.internal_port, port, self.external_address
        )
        return PcpResponse(PCP_VERSION, 1, 0, lifetime, self.epoch, granted)

    def _map(self, client: str, internal: int, suggested: int, lifetime: int) -> tuple[int, int]:
        """Map (or with lifetime 0 remove) C{client}'s C{internal} port: (external, lifetime)."""
        existing = next(
            (port for port, (c, i, _) in self.mappings.items() if (c, i) == (client, internal)),
            None,
        )
        if lifetime == 0:
            if existing is not None:
                del self.mappings[existing]
            return 0, 0
        if existing is None:
            free = (
                suggested
                if suggested and suggested not in self.taken and suggested not in self.mappings
                else next(
                    p for p in itertools.count(40000) if p not in self.taken | set(self.mappings)
                )
            )
            existing = free
        granted = min(lifetime, self.max_lifetime)
        self.mappings[existing] = (client, internal, granted)
        return existing, granted


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

    :ivar mappings: external port -> (internal client, internal port, lease, description).
    :ivar taken: external ports another host holds (``ConflictInMappingEntry``).
    :ivar refusing: ``(code, description)`` every ``AddPortMapping`` gets, or ``None``.
    :ivar only_permanent: refuse leases other than 0 (error 725), as old routers do.
    :ivar actions: the SOAP actions asked for, in order.
    :ivar root_url: the root description's URL, once listening.
    """

    def __init__(self, external_address: str = EXTERNAL_ADDRESS) -> None:
        self.external_address = external_address
        self.mode = ANSWER
        self.refusing: tuple[int, str] | None = None
        self.only_permanent = False
        self.mappings: dict[int, tuple[str, int, int, str]] = {}
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

    def refuse(self, code: int, description: str = "Action not authorized") -> None:
        """Refuse every ``AddPortMapping`` with C{code} from now on."""
        self.refusing = (code, description)

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
            port = int(arguments.get("NewExternalPort", "0"))
            if port not in self.mappings:
                return 500, soap_fault(714, "NoSuchEntryInArray")
            del self.mappings[port]
            return 200, soap_response(action, {})
        return 500, soap_fault(401, "Invalid Action")

    def _add(self, arguments: dict[str, str]) -> tuple[int, bytes]:
        if self.refusing is not None:
            return 500, soap_fault(*self.refusing)
        port = int(arguments["NewExternalPort"])
        client = arguments["NewInternalClient"]
        lease = int(arguments.get("NewLeaseDuration") or 0)
        holder = self.mappings.get(port)
        if port in self.taken or (holder is not None and holder[0] != client):
            return 500, soap_fault(718, "ConflictInMappingEntry")
        if self.only_permanent and lease != 0:
            return 500, soap_fault(725, "OnlyPermanentLeasesSupported")
        internal = int(arguments["NewInternalPort"])
        description = arguments.get("NewPortMappingDescription", "")
        self.mappings[port] = (client, internal, lease, description)
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

    def map(self, internal_port: int, external_port: int, lifetime: int) -> Deferred[Mapping]:
        self.maps.append((internal_port, external_port, lifetime))
        other = self._outcome()
        if other is not None:
            return other
        port = external_port
        while port in self.taken:
            port += 1
        granted = lifetime if self.granted is None else self.granted
        return succeed(Mapping(self.method, internal_port, port, self.external_address, granted))

    def unmap(self, mapping: Mapping) -> Deferred[None]:
        other = self._outcome()
        if other is not None:
            return other
        self.unmapped.append(mapping)
        return succeed(None)

    def close(self) -> None:
        self.closed += 1
