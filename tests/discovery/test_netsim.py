"""The datagram fakes in bitfitech.testing that the discovery tests build on."""

from __future__ import annotations

import random

from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.testing import MemoryDatagramNetwork, RecordingUDPTransport


class Recorder(DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.stopped = False

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.received.append((datagram, addr))

    def stopProtocol(self) -> None:
        self.stopped = True


class RecordingUDPTransportTests(SynchronousTestCase):
    def test_records_writes_and_groups(self) -> None:
        transport = RecordingUDPTransport("127.0.0.1", 5353)
        transport.write(b"x", ("224.0.0.251", 5353))
        transport.joinGroup("224.0.0.251", "127.0.0.1")
        self.assertEqual(transport.clear(), [(b"x", ("224.0.0.251", 5353))])
        self.assertEqual(transport.written, [])
        self.assertEqual(transport.groups, [("224.0.0.251", "127.0.0.1")])
        self.assertEqual(transport.getHost().port, 5353)
        self.assertRaises(ValueError, transport.write, b"x")


class MemoryDatagramNetworkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.network = MemoryDatagramNetwork(self.clock, random.Random(1), latency=0.01)

    def test_delivers_after_latency_with_source(self) -> None:
        a, b = Recorder(), Recorder()
        port_a = self.network.listenUDP(0, a, "127.0.0.1")
        self.network.listenUDP(7000, b, "127.0.0.2")
        port_a.write(b"hello", ("127.0.0.2", 7000))
        self.assertEqual(b.received, [])
        self.clock.advance(0.01)
        self.assertEqual(b.received, [(b"hello", ("127.0.0.1", port_a.getHost().port))])
        self.assertEqual((self.network.sent, self.network.delivered), (1, 1))

    def test_nobody_listening_and_stopped_ports_drop(self) -> None:
        a, b = Recorder(), Recorder()
        port_a = self.network.listenUDP(0, a)
        port_b = self.network.listenUDP(0, b)
        port_a.write(b"1", ("127.0.0.1", 1))
        port_a.write(b"2", ("127.0.0.1", port_b.getHost().port))
        port_b.stopListening()
        self.clock.advance(1)
        self.assertEqual(b.received, [])
        self.assertTrue(b.stopped)
        self.assertEqual(self.network.lost, 2)

    def test_port_in_use(self) -> None:
        self.network.listenUDP(7000, Recorder())
        self.assertRaises(CannotListenError, self.network.listenUDP, 7000, Recorder())

    def test_loss(self) -> None:
        lossy = MemoryDatagramNetwork(self.clock, random.Random(2), loss=0.5)
        a, b = Recorder(), Recorder()
        port_a = lossy.listenUDP(0, a)
        port_b = lossy.listenUDP(0, b)
        for _ in range(1000):
            port_a.write(b"x", ("127.0.0.1", port_b.getHost().port))
        self.clock.advance(0)
        self.assertTrue(400 < len(b.received) < 600, len(b.received))
