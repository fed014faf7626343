"""The NAT-PMP (RFC 6886) and PCP (RFC 6887) messages a port-mapping client needs.

Data path: :class:`~bitfitech.nat.pmp.PortControlMapper` -> these
encoders -> one UDP datagram to the gateway's port 5351; the gateway's
answer -> :func:`decode_response` -> a typed response back to the mapper.
The fake router of the tests decodes requests and encodes responses with
the same functions.  Pure and bounded: fixed-size records read with
``struct``, no Twisted, and a datagram over :data:`MAX_MESSAGE` bytes or of
an unknown version is rejected with :class:`PortControlDecodeError`.

Only what a TCP or UDP mapping needs is here: NAT-PMP's external-address,
UDP-mapping and TCP-mapping requests (version 0, opcodes 0, 1 and 2) and
PCP's MAP opcode (version 2, opcode 1, protocol 6 or 17) without options.
A PCP server that finds a request too new answers ``UNSUPP_VERSION``, and
a NAT-PMP server answers a PCP request with its own "unsupported version"
(RFC 6887 §9): both decode here so the client can fall back to NAT-PMP.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

PORT = 5351
"""The gateway's UDP port for NAT-PMP and PCP requests."""

MAX_MESSAGE = 1100
"""The largest PCP message (RFC 6887 §7); NAT-PMP's are 16 bytes at most."""

NATPMP_VERSION = 0
PCP_VERSION = 2

NATPMP_OP_ADDRESS = 0
NATPMP_OP_MAP_UDP = 1
NATPMP_OP_MAP_TCP = 2
NATPMP_RESPONSE = 128
"""A NAT-PMP response's opcode is the request's plus this."""

PCP_OP_MAP = 1
PCP_RESPONSE_BIT = 0x80
TCP = 6
"""The IANA protocol number PCP names TCP by."""
UDP = 17
"""The IANA protocol number PCP names UDP by."""

NATPMP_RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized or refused",
    3: "network failure",
    4: "out of resources",
    5: "unsupported opcode",
}
"""NAT-PMP result codes (RFC 6886 §3.5)."""

PCP_RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized",
    3: "malformed request",
    4: "unsupported opcode",
    5: "unsupported option",
    6: "malformed option",
    7: "network failure",
    8: "no resources",
    9: "unsupported protocol",
    10: "user exceeded quota",
    11: "cannot provide external",
    12: "address mismatch",
    13: "excessive remote peers",
}
"""PCP result codes (RFC 6887 §7.4)."""

UNSUPPORTED_VERSION = 1
"""The result code of "unsupported version", the same in both protocols."""

_PMP_HEADER = struct.Struct("!BBHI")  # version, opcode, result, epoch
_PMP_ADDRESS = struct.Struct("!BBHI4s")
_PMP_MAP_REQUEST = struct.Struct("!BBHHHI")
_PMP_MAP_RESPONSE = struct.Struct("!BBHIHHI")
_PCP_REQUEST_HEADER = struct.Struct("!BBHI16s")
_PCP_RESPONSE_HEADER = struct.Struct("!BBBBII12x")
_PCP_MAP = struct.Struct("!12sB3xHH16s")
NONCE_SIZE = 12
"""Bytes of a PCP mapping nonce."""


class PortControlDecodeError(ValueError):
    """A datagram that is no NAT-PMP or PCP message this client knows."""


def result_text(version: int, code: int) -> str:
    """A result code's name in the protocol of C{version}."""
    table = PCP_RESULTS if version == PCP_VERSION else NATPMP_RESULTS
    return table.get(code, f"result code {code}")


def mapped_address(address: str) -> bytes:
    """
    The 16 bytes PCP carries an address in: IPv4 as IPv4-mapped IPv6.

    :raises ValueError: for a string that is no IP literal.
    """
    parsed = ipaddress.ip_address(address)
    if parsed.version == 4:
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + parsed.packed).packed
    return parsed.packed


def unmapped_address(packed: bytes) -> str:
    """The literal of a 16-byte PCP address (IPv4-mapped ones as IPv4)."""
    v6 = ipaddress.IPv6Address(packed)
    return str(v6.ipv4_mapped) if v6.ipv4_mapped is not None else str(v6)


# NAT-PMP


@dataclass(frozen=True)
class PmpAddressRequest:
    """NAT-PMP: what is your external address?"""


@dataclass(frozen=True)
class PmpMapRequest:
    """
    NAT-PMP: map (or with C{lifetime} 0, remove) a port.

    :ivar opcode: :data:`NATPMP_OP_MAP_TCP` or :data:`NATPMP_OP_MAP_UDP`.
    """

    opcode: int
    internal_port: int
    external_port: int
    lifetime: int


@dataclass(frozen=True)
class PmpAddressResponse:
    """NAT-PMP: the external address (meaningful when C{result} is 0)."""

    result: int
    epoch: int
    address: str


@dataclass(frozen=True)
class PmpMapResponse:
    """NAT-PMP: the mapping granted (meaningful when C{result} is 0)."""

    opcode: int
    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


@dataclass(frozen=True)
class PmpErrorResponse:
    """A short NAT-PMP error: a header only, as "unsupported version" may come."""

    opcode: int
    result: int
    epoch: int


# PCP


@dataclass(frozen=True)
class PcpMapRequest:
    """
    PCP MAP: map (or with C{lifetime} 0, remove) a port.

    :ivar nonce: 12 bytes that name the mapping; a renewal or removal
        repeats them.
    :ivar client_address: our address as the gateway sees the packet come
        from (the server answers ``ADDRESS_MISMATCH`` otherwise).
    :ivar protocol: the IANA protocol number (:data:`TCP` or :data:`UDP`).
    :ivar external_address: the address we would like (``0.0.0.0``: any).
    """

    lifetime: int
    client_address: str
    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_address: str = "0.0.0.0"


@dataclass(frozen=True)
class PcpMapData:
    """What a PCP MAP response says of the mapping."""

    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_address: str


@dataclass(frozen=True)
class PcpResponse:
    """
    A PCP response.

    :ivar lifetime: the mapping's lifetime on success; on an error, how
        long the error is expected to last.
    :ivar map: the MAP data, or ``None`` when the response has none (an
        error about a request the server could not read).
    """

    version: int
    opcode: int
    result: int
    lifetime: int
    epoch: int
    map: PcpMapData | None


Request = PmpAddressRequest | PmpMapRequest | PcpMapRequest
Response = PmpAddressResponse | PmpMapResponse | PmpErrorResponse | PcpResponse


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")


def _check_lifetime(lifetime: int) -> None:
    if not 0 <= lifetime <= 0xFFFFFFFF:
        raise ValueError(f"lifetime out of range: {lifetime}")


def encode_request(request: Request) -> bytes:
    """
    The datagram of C{request}.

    :raises ValueError: for a field out of range.
    """
    if isinstance(request, PmpAddressRequest):
        return bytes((NATPMP_VERSION, NATPMP_OP_ADDRESS))
    if isinstance(request, PmpMapRequest):
        _check_port(request.internal_port)
        _check_port(request.external_port)
        _check_lifetime(request.lifetime)
        return _PMP_MAP_REQUEST.pack(
            NATPMP_VERSION, request.opcode, 0, request.internal_port,
            request.external_port, request.lifetime,
        )  # fmt: skip
    _check_port(request.internal_port)
    _check_port(request.external_port)
    _check_lifetime(request.lifetime)
    if len(request.nonce) != NONCE_SIZE:
        raise ValueError("a PCP nonce is 12 bytes")
    header = _PCP_REQUEST_HEADER.pack(
        PCP_VERSION, PCP_OP_MAP, 0, request.lifetime, mapped_address(request.client_address)
    )
    return header + _PCP_MAP.pack(
        request.nonce, request.protocol, request.internal_port, request.external_port,
        mapped_address(request.external_address),
    )  # fmt: skip


def encode_response(response: Response) -> bytes:
    """
    The datagram of C{response} (the fake router's side).

    :raises ValueError: for a field out of range.
    """
    if isinstance(response, PmpAddressResponse):
        packed = ipaddress.IPv4Address(response.address).packed
        return _PMP_ADDRESS.pack(
            NATPMP_VERSION, NATPMP_RESPONSE + NATPMP_OP_ADDRESS, response.result,
            response.epoch, packed,
        )  # fmt: skip
    if isinstance(response, PmpMapResponse):
        return _PMP_MAP_RESPONSE.pack(
            NATPMP_VERSION, response.opcode, response.result, response.epoch,
            response.internal_port, response.external_port, response.lifetime,
        )  # fmt: skip
    if isinstance(response, PmpErrorResponse):
        return _PMP_HEADER.pack(NATPMP_VERSION, response.opcode, response.result, response.epoch)
    header = _PCP_RESPONSE_HEADER.pack(
        response.version, PCP_RESPONSE_BIT | response.opcode, 0, response.result,
        response.lifetime, response.epoch,
    )  # fmt: skip
    if response.map is None:
        return header
    data = response.map
    return header + _PCP_MAP.pack(
        data.nonce, data.protocol, data.internal_port, data.external_port,
        mapped_address(data.external_address),
    )  # fmt: skip


def _bounded(datagram: bytes) -> None:
    if len(datagram) > MAX_MESSAGE:
        raise PortControlDecodeError(f"{len(datagram)} bytes is over {MAX_MESSAGE}")
    if len(datagram) < 2:
        raise PortControlDecodeError("shorter than any message")


def decode_response(datagram: bytes) -> Response:
    """
    The response in C{datagram}, as the client reads it.

    :raises PortControlDecodeError: for anything else.
    """
    _bounded(datagram)
    version = datagram[0]
    if version == NATPMP_VERSION:
        return _decode_pmp_response(datagram)
    if len(datagram) < _PCP_RESPONSE_HEADER.size:
        raise PortControlDecodeError("a PCP response is at least 24 bytes")
    version, opcode, _, result, lifetime, epoch = _PCP_RESPONSE_HEADER.unpack_from(datagram)
    if not opcode & PCP_RESPONSE_BIT:
        raise PortControlDecodeError("a PCP request, not a response")
    opcode &= ~PCP_RESPONSE_BIT
    data = None
    if opcode == PCP_OP_MAP and len(datagram) >= _PCP_RESPONSE_HEADER.size + _PCP_MAP.size:
        nonce, protocol, internal, external, address = _PCP_MAP.unpack_from(
            datagram, _PCP_RESPONSE_HEADER.size
        )
        data = PcpMapData(nonce, protocol, internal, external, unmapped_address(address))
    elif result == 0 and version == PCP_VERSION:
        raise PortControlDecodeError("a successful PCP response without its MAP data")
    return PcpResponse(version, opcode, result, lifetime, epoch, data)


def _decode_pmp_response(datagram: bytes) -> Response:
    if len(datagram) < _PMP_HEADER.size:
        raise PortControlDecodeError("a NAT-PMP response is at least 8 bytes")
    _, opcode, result, epoch = _PMP_HEADER.unpack_from(datagram)
    if opcode < NATPMP_RESPONSE:
        raise PortControlDecodeError("a NAT-PMP request, not a response")
    op = opcode - NATPMP_RESPONSE
    if op == NATPMP_OP_ADDRESS and len(datagram) >= _PMP_ADDRESS.size:
        address = _PMP_ADDRESS.unpack_from(datagram)[4]
        return PmpAddressResponse(result, epoch, str(ipaddress.IPv4Address(address)))
    if op in (NATPMP_OP_MAP_UDP, NATPMP_OP_MAP_TCP) and len(datagram) >= _PMP_MAP_RESPONSE.size:
        _, _, _, _, internal, external, lifetime = _PMP_MAP_RESPONSE.unpack_from(datagram)
        return PmpMapResponse(opcode, result, epoch, internal, external, lifetime)
    if result == 0:
        raise PortControlDecodeError("a successful NAT-PMP response cut short")
    return PmpErrorResponse(opcode, result, epoch)


def decode_request(datagram: bytes) -> Request:
    """
    The request in C{datagram}, as a router reads it (the fake router's side).

    :raises PortControlDecodeError: for anything else, including a
        version this module does not speak (the caller answers "unsupported
        version" to those, as a router would).
    """
    _bounded(datagram)
    version, opcode = datagram[0], datagram[1]
    if version == NATPMP_VERSION:
        if opcode == NATPMP_OP_ADDRESS:
            return PmpAddressRequest()
        if opcode in (NATPMP_OP_MAP_UDP, NATPMP_OP_MAP_TCP) and len(datagram) >= 12:
            _, _, _, internal, external, lifetime = _PMP_MAP_REQUEST.unpack_from(datagram)
            return PmpMapRequest(opcode, internal, external, lifetime)
        raise PortControlDecodeError(f"unknown NAT-PMP request opcode {opcode}")
    if version != PCP_VERSION:
        raise PortControlDecodeError(f"unknown version {version}")
    if opcode != PCP_OP_MAP or len(datagram) < _PCP_REQUEST_HEADER.size + _PCP_MAP.size:
        raise PortControlDecodeError(f"unknown or short PCP request (opcode {opcode})")
    _, _, _, lifetime, client = _PCP_REQUEST_HEADER.unpack_from(datagram)
    nonce, protocol, internal, external, address = _PCP_MAP.unpack_from(
        datagram, _PCP_REQUEST_HEADER.size
    )
    return PcpMapRequest(
        lifetime, unmapped_address(client), nonce, protocol, internal, external,
        unmapped_address(address),
    )  # fmt: skip
