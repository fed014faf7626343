"""Tests for :mod:`bitfitech.listening`: ports on one or both address families, on 127.0.0.1/::1."""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bitfitech import listening
from bitfitech.listening import (
    ListeningService,
    StartupError,
    listen_all,
    listen_tcp,
    listen_udp,
)
from bitfitech.testing import HANG_GUARD, global_reactor, has_ipv6_loopback, poll_until

FACTORY = Factory.forProtocol(Protocol)


class ListenTests(TestCase):
    """Real ports on loopback, closed after each test."""

    def setUp(self) -> None:
        if not has_ipv6_loopback():
            raise self.skipTest("no IPv6 loopback (::1) on this machine")
        self.reactor = global_reactor()
        self.service = ListeningService()
        self.addCleanup(self.service.stop_listening)

    def connect(self, family: socket.AddressFamily, host: str, port: int) -> None:
        with socket.socket(family, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect((host, port))

    def test_both_families_on_one_port(self) -> None:
        """IPv4 and IPv6 loopback on the one OS-chosen port; each socket takes its own family."""
        self.service.ports = listen_all(self.reactor, ("127.0.0.1", "::1"), 0, FACTORY, "tests")
        port = self.service.listen_port
        self.assertEqual(self.service.listening, [f"127.0.0.1:{port}", f"[::1]:{port}"])
        self.connect(socket.AF_INET, "127.0.0.1", port)
        self.connect(socket.AF_INET6, "::1", port)

    def test_ipv6_socket_is_ipv6_only(self) -> None:
        """An IPv6 port leaves the IPv4 port of the same number free (IPV6_V6ONLY)."""
        self.service.port = listen_tcp(self.reactor, "::", 0, FACTORY, "tests")
        number = self.service.listen_port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as beside:
            beside.bind(("0.0.0.0", number))

    async def test_udp_ipv6_socket_is_ipv6_only(self) -> None:
        """
        The DHT's IPv6 UDP socket on ``::`` leaves the IPv4 port of its
        number free, and receives over IPv6 (a datagram to ``::1``).
        """
        received: list[tuple[bytes, str]] = []

        class Receiver(DatagramProtocol):
            def datagramReceived(self, datagram: bytes, addr: Any) -> None:
                received.append((datagram, addr[0]))

        port = listen_udp(self.reactor, "::", 0, Receiver())
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        self.assertEqual(port.getHost().host, "::")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as beside:
            beside.bind(("0.0.0.0", number))
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"hello", ("::1", number))
        await poll_until(self.reactor, lambda: bool(received), HANG_GUARD, "the datagram")
        self.assertEqual(received, [(b"hello", "::1")])

    async def test_busy_port_is_a_startup_error(self) -> None:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as holder:
            holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            holder.bind(("::1", 0))
            holder.listen(1)
            busy = holder.getsockname()[1]
            with self.assertRaises(StartupError) as caught:
                listen_all(self.reactor, ("127.0.0.1", "::1"), busy, FACTORY, "peers")
        self.assertIn(f"cannot listen for peers on [::1]:{busy}", str(caught.exception))
        # The IPv4 port opened first was closed again (at the next turn): the number is free.
        await deferLater(self.reactor, 0, lambda: None)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as again:
            again.bind(("127.0.0.1", busy))

    def test_no_ipv6_runs_on_ipv4_alone(self) -> None:
        """Both families by default; a host without IPv6 listens on IPv4, with a warning."""
        real = listening.listen_tcp

        def no_ipv6(reactor: object, host: str, port: int, factory: object, what: str) -> object:
            if ":" in host:
                error = OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
                raise StartupError(f"cannot listen for {what}: no IPv6") from error
            return real(reactor, host, port, factory, what)  # type: ignore[arg-type]

        self.patch(listening, "listen_tcp", no_ipv6)
        self.service.ports = listen_all(self.reactor, listening.DUAL_STACK, 0, FACTORY, "peers")
        self.assertEqual(len(self.service.ports), 1)
        self.assertEqual(self.service.listening, [f"0.0.0.0:{self.service.listen_port}"])
        # Asked for IPv6 alone, no IPv6 is an error.
        with self.assertRaises(StartupError):
            listen_all(self.reactor, ("::",), 0, FACTORY, "peers")

    def test_no_ipv4_runs_on_ipv6_alone(self) -> None:
        """A host without IPv4: the dual-stack default listens on IPv6, with a warning."""
        real = listening.listen_tcp

        def no_ipv4(reactor: object, host: str, port: int, factory: object, what: str) -> object:
            if ":" not in host:
                error = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
                raise StartupError(f"cannot listen for {what}: no IPv4") from error
            return real(reactor, "::1", port, factory, what)  # type: ignore[arg-type]

        self.patch(listening, "listen_tcp", no_ipv4)
        self.service.ports = listen_all(self.reactor, listening.DUAL_STACK, 0, FACTORY, "peers")
        self.assertEqual(self.service.listening, [f"[::1]:{self.service.listen_port}"])

    async def test_stop_closes_every_port(self) -> None:
        self.service.ports = listen_all(self.reactor, ("127.0.0.1", "::1"), 0, FACTORY, "tests")
        port = self.service.listen_port
        stopped = self.service.stop_listening()
        assert stopped is not None
        await stopped
        self.assertEqual(self.service.ports, [])
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family, socket.SOCK_STREAM) as again:
                again.bind((host, port))
