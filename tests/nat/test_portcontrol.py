"""Tests for the NAT-PMP and PCP messages (:mod:`bitfitech.nat.portcontrol`)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.nat.portcontrol import (
    MAX_MESSAGE,
    NATPMP_OP_MAP_TCP,
    NATPMP_OP_MAP_UDP,
    PCP_VERSION,
    TCP,
    UDP,
    PcpMapData,
    PcpMapRequest,
    PcpResponse,
    PmpAddressRequest,
    PmpAddressResponse,
    PmpErrorResponse,
    PmpMapRequest,
    PmpMapResponse,
    PortControlDecodeError,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    result_text,
)

ports = st.integers(0, 0xFFFF)
lifetimes = st.integers(0, 0xFFFFFFFF)
results = st.integers(0, 0xFFFF)
epochs = st.integers(0, 0xFFFFFFFF)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str).filter(lambda a: ipaddress.IPv6Address(a).ipv4_mapped is None)
addresses = st.one_of(ipv4, ipv6)
nonces = st.binary(min_size=12, max_size=12)

requests = st.one_of(
    st.just(PmpAddressRequest()),
    st.builds(PmpMapRequest, st.sampled_from([1, 2]), ports, ports, lifetimes),
    st.builds(PcpMapRequest, lifetimes, addresses, nonces, st.just(TCP), ports, ports, addresses),
)
responses = st.one_of(
    st.builds(PmpAddressResponse, results, epochs, ipv4),
    st.builds(
        PmpMapResponse, st.sampled_from([129, 130]), results, epochs, ports, ports, lifetimes
    ),
    st.builds(PmpErrorResponse, st.integers(128, 255), st.integers(1, 0xFFFF), epochs),
    st.builds(
        PcpResponse,
        st.just(PCP_VERSION),
        st.just(1),
        st.integers(0, 255),
        lifetimes,
        epochs,
        st.builds(PcpMapData, nonces, st.just(TCP), ports, ports, addresses),
    ),
)


class RoundTripTests(SynchronousTestCase):
    """What is encoded decodes to itself."""

    @given(requests)
    def test_requests(self, request: object) -> None:
        self.assertEqual(decode_request(encode_request(request)), request)  # type: ignore[arg-type]

    @given(responses)
    def test_responses(self, response: object) -> None:
        self.assertEqual(decode_response(encode_response(response)), response)  # type: ignore[arg-type]

    @given(st.binary(max_size=MAX_MESSAGE + 10))
    def test_any_datagram_decodes_or_is_rejected(self, datagram: bytes) -> None:
        for decode in (decode_request, decode_response):
            try:
                decode(datagram)
            except PortControlDecodeError:
                pass


class WireFormatTests(SynchronousTestCase):
    """The bytes RFC 6886 and RFC 6887 lay down."""

    def test_natpmp_address_request(self) -> None:
        self.assertEqual(encode_request(PmpAddressRequest()), b"\x00\x00")

    def test_natpmp_tcp_mapping_request(self) -> None:
        datagram = encode_request(PmpMapRequest(NATPMP_OP_MAP_TCP, 3000, 3001, 7200))
        self.assertEqual(datagram, bytes.fromhex("0002 0000 0bb8 0bb9 00001c20"))

    def test_natpmp_udp_mapping_request(self) -> None:
        request = PmpMapRequest(NATPMP_OP_MAP_UDP, 3000, 3001, 7200)
        datagram = encode_request(request)
        self.assertEqual(datagram, bytes.fromhex("0001 0000 0bb8 0bb9 00001c20"))
        self.assertEqual(decode_request(datagram), request)

    def test_natpmp_udp_mapping_response(self) -> None:
        datagram = bytes.fromhex("0081 0000 000003e8 0bb8 0bb9 00001c20")
        self.assertEqual(decode_response(datagram), PmpMapResponse(129, 0, 1000, 3000, 3001, 7200))

    def test_pcp_udp_map_request(self) -> None:
        request = PcpMapRequest(7200, "192.168.1.20", b"N" * 12, UDP, 3000, 3000)
        datagram = encode_request(request)
        self.assertEqual((datagram[36], UDP), (17, 17))
        self.assertEqual(decode_request(datagram), request)

    def test_natpmp_address_response(self) -> None:
        datagram = bytes.fromhex("0080 0000 000003e8 cb007107")
        self.assertEqual(decode_response(datagram), PmpAddressResponse(0, 1000, "203.0.113.7"))

    def test_short_natpmp_error(self) -> None:
        # A NAT-PMP router's "unsupported version" to a PCP request.
        datagram = bytes.fromhex("0081 0001 00000005")
        self.assertEqual(decode_response(datagram), PmpErrorResponse(129, 1, 5))

    def test_pcp_map_request_layout(self) -> None:
        request = PcpMapRequest(7200, "192.168.1.20", b"N" * 12, TCP, 3000, 3000)
        datagram = encode_request(request)
        self.assertEqual(len(datagram), 60)
        self.assertEqual(datagram[:4], bytes.fromhex("02 01 0000"))
        self.assertEqual(datagram[8:24], bytes(10) + b"\xff\xff" + bytes([192, 168, 1, 20]))
        self.assertEqual(datagram[36], TCP)
        self.assertEqual(datagram[44:60], bytes(10) + b"\xff\xff" + bytes(4))

    def test_pcp_error_without_map_data(self) -> None:
        header = bytes.fromhex("02 81 00 01 00000000 00000009") + bytes(12)
        self.assertEqual(decode_response(header), PcpResponse(2, 1, 1, 0, 9, None))


class RejectionTests(SynchronousTestCase):
    """Hostile or foreign datagrams are refused, not half-read."""

    def test_oversize(self) -> None:
        with self.assertRaises(PortControlDecodeError):
            decode_response(b"\x02" + bytes(MAX_MESSAGE))

    def test_unknown_version(self) -> None:
        with self.assertRaises(PortControlDecodeError):
            decode_request(b"\x01\x01" + bytes(58))

    def test_request_is_no_response(self) -> None:
        with self.assertRaises(PortControlDecodeError):
            decode_response(encode_request(PmpMapRequest(2, 1, 1, 1)))

    def test_successful_response_cut_short(self) -> None:
        with self.assertRaises(PortControlDecodeError):
            decode_response(bytes.fromhex("0082 0000 00000001"))

    def test_bad_nonce(self) -> None:
        with self.assertRaises(ValueError):
            encode_request(PcpMapRequest(1, "10.0.0.2", b"short", TCP, 1, 1))

    def test_port_out_of_range(self) -> None:
        with self.assertRaises(ValueError):
            encode_request(PmpMapRequest(2, 70000, 1, 1))

    def test_result_names(self) -> None:
        self.assertEqual(result_text(0, 2), "not authorized or refused")
        self.assertEqual(result_text(2, 8), "no resources")
        self.assertEqual(result_text(2, 99), "result code 99")
