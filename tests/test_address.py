"""Tests for :mod:`bitfitech.address`: peer addresses as users and peers write them."""

from __future__ import annotations

from ipaddress import IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.address import (
    AddressError,
    PeerAddress,
    check_port,
    format_hostport,
    is_ip_literal,
    is_node_id,
    normalize_host,
    parse_address,
)

NODE_ID = "0123456789abcdef0123456789abcdef01234567"

hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    domains(max_length=253),
)
ports = st.integers(min_value=1, max_value=65535)
node_ids = st.none() | st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)


class ParseAddressTests(SynchronousTestCase):
    """``host:port``, ``[v6]:port`` and ``NODEID@host:port``."""

    def test_ipv4(self) -> None:
        self.assertEqual(parse_address("127.0.0.1:3000"), PeerAddress("127.0.0.1", 3000))

    def test_hostname_lowercased(self) -> None:
        self.assertEqual(
            parse_address("Seed.Example.COM:3001"), PeerAddress("seed.example.com", 3001)
        )

    def test_whitespace_stripped(self) -> None:
        self.assertEqual(parse_address("  localhost:3000\n"), PeerAddress("localhost", 3000))

    def test_ipv6_bracketed(self) -> None:
        address = parse_address("[::1]:3000")
        self.assertEqual(address, PeerAddress("::1", 3000))
        self.assertEqual(address.endpoint, ("::1", 3000))

    def test_ipv6_compressed(self) -> None:
        address = parse_address("[2001:DB8:0:0:0:0:0:1]:3000")
        self.assertEqual(address.host, "2001:db8::1")

    def test_ipv6_zone(self) -> None:
        """An interface zone is kept; any other text after ``%`` is refused."""
        self.assertEqual(normalize_host("fe80::1%eth0"), "fe80::1%eth0")
        self.assertEqual(normalize_host("[fe80::1%2]"), "fe80::1%2")
        for bad in ("fe80::1%\x00\n" + "x" * 1000, "fe80::1%a b", "fe80::1%" + "e" * 16):
            error = self.assertRaises(AddressError, normalize_host, bad)
            self.assertLess(len(str(error)), 200)

    def test_node_id(self) -> None:
        address = parse_address(f"{NODE_ID}@10.0.0.2:3002")
        self.assertEqual(address, PeerAddress("10.0.0.2", 3002, NODE_ID))
        self.assertEqual(address.endpoint, ("10.0.0.2", 3002))

    def test_node_id_with_ipv6(self) -> None:
        address = parse_address(f"{NODE_ID}@[fe80::2]:3000")
        self.assertEqual(address, PeerAddress("fe80::2", 3000, NODE_ID))

    def test_uppercase_node_id_normalized(self) -> None:
        address = parse_address(f"{NODE_ID.upper()}@127.0.0.1:3000")
        self.assertEqual(address.node_id, NODE_ID)

    def test_port_bounds(self) -> None:
        self.assertEqual(parse_address("h:1").port, 1)
        self.assertEqual(parse_address("h:65535").port, 65535)

    def assert_rejected(self, text: str, *fragments: str) -> None:
        """C{text} raises AddressError whose message holds every fragment."""
        error = self.assertRaises(AddressError, parse_address, text)
        self.assertIsInstance(error, ValueError)
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_missing_port(self) -> None:
        self.assert_rejected("127.0.0.1", "host:port")
        self.assert_rejected("127.0.0.1:", "port")
        self.assert_rejected("[::1]", "[v6]:port")
        self.assert_rejected("[::1]:", "port")

    def test_port_zero(self) -> None:
        self.assert_rejected("127.0.0.1:0", "1 to 65535")

    def test_port_too_large(self) -> None:
        self.assert_rejected("127.0.0.1:65536", "65536")

    def test_port_not_a_number(self) -> None:
        for text in ("h:abc", "h:-1", "h:+80", "h:3.0", "h: 80"):
            self.assert_rejected(text, "port")

    def test_bad_host(self) -> None:
        for text in ("bad_host:3000", "-lead.example:3000", "exa mple:3000", ":3000", "a..b:1"):
            self.assert_rejected(text)

    def test_bare_ipv6(self) -> None:
        self.assert_rejected("::1:3000", "[addr]:port")
        self.assert_rejected("2001:db8::1:3000", "[addr]:port")

    def test_bad_bracketed(self) -> None:
        self.assert_rejected("[::1:3000", "[v6]:port")
        self.assert_rejected("[::1]3000", "[v6]:port")
        self.assert_rejected("[not-ip:v6]:3000", "invalid host")

    def test_bad_node_id(self) -> None:
        for node_id in ("", "abc", NODE_ID[:-1], NODE_ID + "0", "g" * 40, NODE_ID[:-1] + " "):
            self.assert_rejected(f"{node_id}@127.0.0.1:3000", "node id")

    def test_two_ats(self) -> None:
        self.assert_rejected(f"{NODE_ID}@{NODE_ID}@127.0.0.1:3000")

    def test_non_ascii_digits(self) -> None:
        # str.isdigit() accepts these; int() then reads or chokes on them.
        self.assert_rejected("h:\uff13\uff10\uff10\uff10", "port")  # fullwidth 3000
        self.assert_rejected("h:\u00b2", "port")  # superscript two


class HelperTests(SynchronousTestCase):
    """The small validators parse_address is built from."""

    def test_is_node_id(self) -> None:
        self.assertTrue(is_node_id(NODE_ID))
        for value in (NODE_ID.upper(), NODE_ID[:-1], None, 7, b"0" * 40, "0" * 41):
            self.assertFalse(is_node_id(value), value)

    def test_normalize_host(self) -> None:
        self.assertEqual(normalize_host("[::1]"), "::1")
        self.assertEqual(normalize_host("0:0:0:0:0:0:0:1"), "::1")
        self.assertEqual(normalize_host("10.1.2.3"), "10.1.2.3")
        self.assertEqual(normalize_host("Node-1.Local."), "node-1.local.")
        for bad in ("", "[]", "a_b", "a:b", "x" * 64):
            self.assertRaises(AddressError, normalize_host, bad)

    def test_is_ip_literal(self) -> None:
        self.assertTrue(is_ip_literal("::1"))
        self.assertTrue(is_ip_literal("192.0.2.1"))
        self.assertFalse(is_ip_literal("localhost"))

    def test_check_port(self) -> None:
        self.assertEqual(check_port(1), 1)
        self.assertEqual(check_port(0, allow_zero=True), 0)
        for bad in (0, -1, 65536, True):
            self.assertRaises(AddressError, check_port, bad)
        self.assertRaises(AddressError, check_port, 65536, allow_zero=True)

    def test_format_hostport(self) -> None:
        self.assertEqual(format_hostport("::1", 3000), "[::1]:3000")
        self.assertEqual(format_hostport("2001:db8::1", 80), "[2001:db8::1]:80")
        self.assertEqual(format_hostport("127.0.0.1", 3000), "127.0.0.1:3000")
        self.assertEqual(format_hostport("example.com", 443), "example.com:443")

    def test_str(self) -> None:
        self.assertEqual(str(PeerAddress("::1", 3000)), "[::1]:3000")
        self.assertEqual(str(PeerAddress("h", 1, NODE_ID)), f"{NODE_ID}@h:1")


class RoundTripTests(SynchronousTestCase):
    """What ``str`` writes, ``parse_address`` reads back."""

    @settings(max_examples=300, deadline=None)
    @given(hosts, ports, node_ids)
    def test_str_round_trip(self, host: str, port: int, node_id: str | None) -> None:
        address = PeerAddress(normalize_host(host), port, node_id)
        self.assertEqual(parse_address(str(address)), address)

    @settings(max_examples=300, deadline=None)
    @given(st.ip_addresses(v=6), ports)
    def test_ipv6_any_spelling(self, ip: IPv6Address, port: int) -> None:
        address = parse_address(f"[{ip.exploded.upper()}]:{port}")
        self.assertEqual(address, PeerAddress(str(ip), port))
        self.assertEqual(str(address), format_hostport(str(ip), port))
