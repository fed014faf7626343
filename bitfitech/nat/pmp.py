"""PCP and NAT-PMP port mappings: one UDP socket to the gateway's port 5351.

Data path: :class:`~bitfitech.nat.service.PortMappingService` ->
:class:`PortControlMapper` (PCP MAP first, NAT-PMP when the router does not
speak PCP) -> :class:`PortControlProtocol` (one request at a time,
retransmitted on the injected clock) -> the gateway; its answer ->
:func:`~bitfitech.nat.portcontrol.decode_response` -> the mapper -> a
:class:`~bitfitech.nat.mapping.Mapping`.

Why our own client.  NAT-PMP (RFC 6886) and PCP's MAP (RFC 6887) need
four fixed-size messages over UDP.  What PyPI offers is unmaintained and
blocking: ``py-natpmp`` (NAT-PMP only, last release 2023) and ``nat-pmp``
(2021) each open a blocking socket with ``select`` in the caller's thread,
so under Twisted they would need a thread per request and still could not
be pointed at a fake clock; neither speaks PCP.  A Twisted
:class:`~twisted.internet.protocol.DatagramProtocol` over the pure codec of
:mod:`bitfitech.nat.portcontrol` is smaller than the glue those would need,
never blocks the reactor, retransmits on a ``Clock`` in tests, and talks
to a fake router on ``127.0.0.1`` as it talks to a real one.

The socket is connected to the gateway, so the kernel drops datagrams from
anyone else, and a gateway with nothing on port 5351 answers with an ICMP
"port unreachable" that Twisted reports at once (``connectionRefused``):
no router there costs no timeout.  A router that is silent costs the
retransmission schedule, :data:`RETRANSMITS` (RFC 6886 §3.1's 250 ms
doubling, cut to four sends), once per protocol.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from ..logs import logger
from .gateway import default_gateway
from .mapping import (
    NATPMP,
    PCP,
    TCP,
    UDP,
    GatewayRefused,
    IPortMapper,
    Mapping,
    NoGateway,
    check_protocol,
)
from .portcontrol import (
    NATPMP_OP_ADDRESS,
    NATPMP_OP_MAP_TCP,
    NATPMP_OP_MAP_UDP,
    NATPMP_RESPONSE,
    NATPMP_VERSION,
    NONCE_SIZE,
    PCP_OP_MAP,
    PCP_VERSION,
    PORT,
    UNSUPPORTED_VERSION,
    PcpMapRequest,
    PcpResponse,
    PmpAddressRequest,
    PmpAddressResponse,
    PmpMapRequest,
    PmpMapResponse,
    PortControlDecodeError,
    Request,
    Response,
    decode_response,
    encode_request,
    result_text,
)
from .portcontrol import TCP as IPPROTO_TCP
from .portcontrol import UDP as IPPROTO_UDP

log = logger(__name__)

RETRANSMITS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
"""Seconds to wait after each send of one request before sending it again (or giving up)."""


PCP_PROTOCOLS = {TCP: IPPROTO_TCP, UDP: IPPROTO_UDP}
"""The IANA protocol number a PCP MAP names each protocol by."""

NATPMP_OPCODES = {TCP: NATPMP_OP_MAP_TCP, UDP: NATPMP_OP_MAP_UDP}
"""The NAT-PMP opcode that maps each protocol."""


class GatewayUnreachable(NoGateway):
    """The gateway's host said nothing listens on its port (ICMP), or the network is down."""


class _FallBack(Exception):
    """The gateway does not speak PCP: ask again with NAT-PMP."""


Accept = Callable[[Response], bool]


class PortControlProtocol(DatagramProtocol):
    """
    Glue between the connected UDP socket and the typed messages.

    A socket that closes under it (see :meth:`stopProtocol`) fails the
    request in flight as :class:`GatewayUnreachable` and leaves the
    protocol :attr:`stopped`.

    Holds at most one request in flight: sends it, sends it again after
    each wait of its schedule, and fires its Deferred with the first
    response its C{accept} takes.  Undecodable datagrams and responses to
    nothing asked are dropped.
    """

    noisy = False

    def __init__(self, clock: IReactorTime, retransmits: Sequence[float] = RETRANSMITS) -> None:
        """
        :param clock: times retransmissions.
        :param retransmits: seconds to wait after each send; one send per item.
        """
        if not retransmits:
            raise ValueError("at least one send")
        self._clock = clock
        self._retransmits = tuple(retransmits)
        self._pending: tuple[Accept, Deferred[Response]] | None = None
        self._timer: IDelayedCall | None = None
        self._what = ""
        self.dropped = 0
        self.stopped = False

    def exchange(self, request: Request, accept: Accept, what: str) -> Deferred[Response]:
        """
        Send C{request} until C{accept} takes a response, or the schedule ends.

        :param what: names the protocol in errors (``pcp``, ``natpmp``).
        :return: a Deferred firing with the response, or failing with
            :class:`NoGateway` (silence) or :class:`GatewayUnreachable`;
            cancelling it stops the retransmissions.
        """
        if self._pending is not None:
            raise RuntimeError("one request at a time")
        datagram = encode_request(request)

        def cancel(_: Deferred[Response]) -> None:
            self._clear()

        d: Deferred[Response] = Deferred(cancel)
        self._pending = (accept, d)
        self._what = what
        self._send(datagram, 0)
        return d

    def _send(self, datagram: bytes, attempt: int) -> None:
        self._timer = None
        pending = self._pending
        if pending is None:
            return
        if attempt >= len(self._retransmits):
            self._fail(NoGateway(self._what, "no answer from the gateway"))
            return
        try:
            cast(Any, self.transport).write(datagram)  # connected: no address
        except OSError as e:
            self._fail(GatewayUnreachable(self._what, f"cannot send: {e.strerror or e}"))
            return
        if self._pending is pending:  # a send can report "refused" at once
            delay = self._retransmits[attempt]
            self._timer = self._clock.callLater(delay, self._send, datagram, attempt + 1)

    def _clear(self) -> tuple[Accept, Deferred[Response]] | None:
        pending, self._pending = self._pending, None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return pending

    def _fail(self, error: Exception) -> None:
        pending = self._clear()
        if pending is not None:
            pending[1].errback(error)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            response = decode_response(datagram)
        except PortControlDecodeError as e:
            self.dropped += 1
            log.debug("NAT-PMP/PCP: dropped a datagram from {addr}: {error}", addr=addr, error=e)
            return
        if self._pending is None or not self._pending[0](response):
            self.dropped += 1
            return
        pending = self._clear()
        if pending is not None:
            pending[1].callback(response)

    def connectionRefused(self) -> None:
        self._fail(GatewayUnreachable(self._what, "nothing listens on the gateway's port"))

    def stopProtocol(self) -> None:
        # The epoll reactor closes a connected UDP port on the socket error
        # an ICMP "port unreachable" leaves (other reactors call
        # connectionRefused): either way, nothing listens there.
        self.stopped = True
        self._fail(GatewayUnreachable(self._what, "nothing listens on the gateway's port"))

    def close(self) -> None:
        """Stop any request in flight (its Deferred is cancelled)."""
        if self._pending is not None:
            self._pending[1].cancel()


@implementer(IPortMapper)
class PortControlMapper:
    """
    Port mappings with PCP, or NAT-PMP where the router speaks no PCP.

    The first :meth:`map` finds the gateway (unless given), opens the
    socket and asks with PCP; a router that answers "unsupported version"
    (or, silent to PCP, answers NAT-PMP) is asked with NAT-PMP from then
    on.  TCP and UDP mappings of the same port are separate mappings
    (their own PCP nonces, their own NAT-PMP opcodes), made and removed
    apart.  What it learned is forgotten when the gateway stops answering, so
    a router replaced by another, or a host moved to another network, is
    found again at the next try.

    :ivar version: ``pcp`` or ``natpmp`` once a router answered, else ``None``.
    """

    name = NATPMP

    def __init__(
        self,
        reactor: Any,
        gateway: str | None = None,
        *,
        port: int = PORT,
        retransmits: Sequence[float] = RETRANSMITS,
        versions: Sequence[str] = (PCP, NATPMP),
        nonce: Callable[[int], bytes] = os.urandom,
        find_gateway: Callable[[], str | None] = default_gateway,
    ) -> None:
        """
        :param reactor: provides ``IReactorUDP`` and ``IReactorTime``.
        :param gateway: the router's address (an IP literal); ``None``: the
            default gateway (:func:`~bitfitech.nat.gateway.default_gateway`).
        :param port: the router's NAT-PMP/PCP port (5351; tests use a fake's).
        :param retransmits: seconds to wait after each send of a request.
        :param versions: the protocols it may use (PCP, when among them, is
            asked first).
        :param nonce: C{nonce(12)} gives a PCP mapping nonce.
        :param find_gateway: finds the default gateway.
        """
        unknown = set(versions) - {PCP, NATPMP}
        if unknown or not versions:
            raise ValueError(f"versions are pcp and natpmp, not {sorted(unknown)}")
        self._reactor = reactor
        self._given_gateway = gateway
        self._port_number = port
        self._retransmits = tuple(retransmits)
        self._versions = tuple(versions)
        self._nonce = nonce
        self._find_gateway = find_gateway
        self._udp: IListeningPort | None = None
        self._protocol: PortControlProtocol | None = None
        self._nonces: dict[tuple[str, int], bytes] = {}
        self.gateway: str | None = gateway
        self.version: str | None = None

    def map(
        self, internal_port: int, external_port: int, lifetime: int, protocol: str = TCP
    ) -> Deferred[Mapping]:
        """
        See :meth:`IPortMapper.map`.

        :raises ValueError: for a protocol other than ``tcp`` or ``udp``.
        """
        check_protocol(protocol)
        return Deferred.fromCoroutine(self._map(internal_port, external_port, lifetime, protocol))

    def unmap(self, mapping: Mapping) -> Deferred[None]:
        """See :meth:`IPortMapper.unmap`."""
        return Deferred.fromCoroutine(self._unmap(mapping))

    def close(self) -> None:
        """See :meth:`IPortMapper.close`."""
        self._reset()

    def _reset(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
        if self._udp is not None:
            self._udp.stopListening()
        self._udp = self._protocol = None
        self.version = None
        self.gateway = self._given_gateway

    def _open(self) -> PortControlProtocol:
        if self._protocol is not None and self._protocol.stopped:
            self._reset()
        if self._protocol is not None:
            return self._protocol
        gateway = self.gateway or self._find_gateway()
        if gateway is None:
            raise NoGateway(self._versions[0], "no default gateway")
        protocol = PortControlProtocol(self._reactor, self._retransmits)
        udp = self._reactor.listenUDP(0, protocol, interface="::" if ":" in gateway else "")
        try:
            udp.connect(gateway, self._port_number)
        except Exception as e:
            udp.stopListening()
            raise GatewayUnreachable(self._versions[0], f"cannot reach {gateway}: {e}") from e
        self.gateway, self._udp, self._protocol = gateway, udp, protocol
        return protocol

    async def _map(
        self, internal_port: int, external_port: int, lifetime: int, protocol: str
    ) -> Mapping:
        try:
            return await self._map_once(internal_port, external_port, lifetime, protocol)
        except NoGateway:
            self._reset()
            raise

    async def _map_once(
        self, internal_port: int, external_port: int, lifetime: int, protocol: str
    ) -> Mapping:
        link = self._open()
        if PCP in self._versions and self.version != NATPMP:
            try:
                mapping = await self._pcp(link, internal_port, external_port, lifetime, protocol)
            except _FallBack:
                log.debug("PCP: {gateway} speaks NAT-PMP only", gateway=self.gateway)
            except GatewayUnreachable:
                raise
            except NoGateway:
                # A router that knows NAT-PMP alone should answer PCP with
                # "unsupported version"; some stay silent.  Unless PCP was
                # heard from before, ask once with NAT-PMP.
                if self.version == PCP or NATPMP not in self._versions:
                    raise
            else:
                self.version = PCP
                return mapping
        if NATPMP not in self._versions:
            raise GatewayRefused(PCP, UNSUPPORTED_VERSION, "the gateway does not speak PCP")
        mapping = await self._natpmp(link, internal_port, external_port, lifetime, protocol)
        self.version = NATPMP
        return mapping

    def _client_address(self) -> str:
        assert self._udp is not None
        return str(self._udp.getHost().host)  # type: ignore[attr-defined]

    def _pcp_request(
        self, internal_port: int, external_port: int, lifetime: int, protocol: str
    ) -> PcpMapRequest:
        key = (protocol, internal_port)
        nonce = self._nonces.get(key)
        if nonce is None:
            nonce = self._nonces[key] = self._nonce(NONCE_SIZE)
        external_address = "::" if ":" in (self.gateway or "") else "0.0.0.0"
        return PcpMapRequest(
            lifetime, self._client_address(), nonce, PCP_PROTOCOLS[protocol], internal_port,
            external_port, external_address,
        )  # fmt: skip

    async def _pcp(
        self,
        link: PortControlProtocol,
        internal_port: int,
        external_port: int,
        lifetime: int,
        protocol: str,
    ) -> Mapping:
        request = self._pcp_request(internal_port, external_port, lifetime, protocol)
        response = await link.exchange(request, _pcp_accepts(request), PCP)
        if not isinstance(response, PcpResponse):
            raise _FallBack()  # a NAT-PMP router's "unsupported version"
        if response.result == UNSUPPORTED_VERSION and NATPMP in self._versions:
            raise _FallBack()
        if response.result != 0 or response.map is None:
            raise GatewayRefused(PCP, response.result, result_text(PCP_VERSION, response.result))
        return Mapping(
            PCP, internal_port, response.map.external_port, response.map.external_address,
            response.lifetime, protocol,
        )  # fmt: skip

    async def _natpmp(
        self,
        link: PortControlProtocol,
        internal_port: int,
        external_port: int,
        lifetime: int,
        protocol: str,
    ) -> Mapping:
        answer = await link.exchange(PmpAddressRequest(), _pmp_accepts(NATPMP_OP_ADDRESS), NATPMP)
        _check_pmp(answer)
        address = answer.address if isinstance(answer, PmpAddressResponse) else None
        opcode = NATPMP_OPCODES[protocol]
        request = PmpMapRequest(opcode, internal_port, external_port, lifetime)
        response = await link.exchange(request, _pmp_accepts(opcode, internal_port), NATPMP)
        _check_pmp(response)
        if not isinstance(response, PmpMapResponse):
            raise GatewayRefused(NATPMP, None, "the gateway's answer has no mapping")
        return Mapping(
            NATPMP, internal_port, response.external_port, address, response.lifetime, protocol
        )

    async def _unmap(self, mapping: Mapping) -> None:
        check_protocol(mapping.protocol)
        link = self._open()
        if mapping.method == PCP:
            request = self._pcp_request(mapping.internal_port, 0, 0, mapping.protocol)
            response = await link.exchange(request, _pcp_accepts(request), PCP)
            if isinstance(response, PcpResponse) and response.result != 0:
                raise GatewayRefused(
                    PCP, response.result, result_text(PCP_VERSION, response.result)
                )
            self._nonces.pop((mapping.protocol, mapping.internal_port), None)
            return
        opcode = NATPMP_OPCODES[mapping.protocol]
        pmp = PmpMapRequest(opcode, mapping.internal_port, 0, 0)
        answer = await link.exchange(pmp, _pmp_accepts(opcode, mapping.internal_port), NATPMP)
        _check_pmp(answer)


def _pcp_accepts(request: PcpMapRequest) -> Accept:
    """
    Takes the PCP answer to C{request} (the same nonce, protocol and
    internal port: a TCP answer never satisfies a UDP request), or a
    NAT-PMP router's "unsupported version".
    """

    def accept(response: Response) -> bool:
        if isinstance(response, PcpResponse):
            if response.opcode != PCP_OP_MAP:
                return False
            data = response.map
            return data is None or (
                data.nonce == request.nonce
                and data.protocol == request.protocol
                and data.internal_port == request.internal_port
            )
        return response.result == UNSUPPORTED_VERSION

    return accept


def _pmp_accepts(opcode: int, internal_port: int | None = None) -> Accept:
    """
    Takes the NAT-PMP answer to a request of C{opcode} (for
    C{internal_port}): the answer's opcode names the protocol, so a TCP
    answer never satisfies a UDP request.
    """

    def accept(response: Response) -> bool:
        if isinstance(response, PcpResponse):  # a PCP-only router's "unsupported version"
            return response.result == UNSUPPORTED_VERSION
        if isinstance(response, PmpAddressResponse):
            return opcode == NATPMP_OP_ADDRESS
        if isinstance(response, PmpMapResponse):
            return response.opcode == NATPMP_RESPONSE + opcode and (
                internal_port is None or response.internal_port == internal_port
            )
        return response.opcode == NATPMP_RESPONSE + opcode

    return accept


def _check_pmp(response: Response) -> None:
    if response.result != 0:
        version = PCP_VERSION if isinstance(response, PcpResponse) else NATPMP_VERSION
        raise GatewayRefused(NATPMP, response.result, result_text(version, response.result))
