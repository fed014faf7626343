"""Tests for bitfitech.peer.protocol: one link over StringTransport and a Clock."""

from __future__ import annotations

import dataclasses

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.address import PeerAddress
from bitfitech.config import LinkTiming
from bitfitech.peer import protocol as protocol_module
from bitfitech.peer.protocol import (
    REASON_SELF,
    REASON_WITNESSES,
    LinkClosed,
    LocalNode,
    PeerProtocol,
)
from bitfitech.testing import (
    NO_WITNESSES,
    RecordingOwner,
    frame_of,
    local_node,
    node_id_of,
    version_of,
)
from bitfitech.wire.framing import NO_CHECKSUM, FrameDecoder, encode_frame, network_magic
from bitfitech.wire.messages import (
    PROTOCOL_VERSION,
    Addr,
    GetAddr,
    Message,
    Ping,
    Pong,
    Unknown,
    Verack,
    Version,
    decode_message,
)
from bitfitech.witnesses import WitnessSet

TIMING = LinkTiming(handshake_timeout=10.0, ping_interval=30.0, ping_timeout=20.0)


class Link:
    """A PeerProtocol connected to a StringTransport, and what it wrote."""

    def __init__(self, direction: str = "outbound", dialed: PeerAddress | None = None,
                 owner: RecordingOwner | None = None,
                 local: LocalNode | None = None) -> None:  # fmt: skip
        self.clock = Clock()
        self.owner = owner or RecordingOwner()
        self.protocol = PeerProtocol(
            local or local_node(1), self.owner, self.clock, direction,  # type: ignore[arg-type]
            dialed=dialed, timing=TIMING, nonce=77,
        )  # fmt: skip
        self.transport = StringTransport(peerAddress=None)
        self.protocol.makeConnection(self.transport)
        self._decoder = FrameDecoder(network_magic("test"))

    def sent(self) -> list[Message]:
        """Messages written since the last call."""
        self._decoder.feed(self.transport.value())
        self.transport.clear()
        out = []
        while (frame := self._decoder.next_frame()) is not None:
            out.append(decode_message(frame.command, frame.payload))
        return out

    def receive(self, *messages: Message) -> None:
        self.protocol.dataReceived(b"".join(frame_of(m) for m in messages))

    def handshake(self, n: int = 2) -> None:
        self.receive(version_of(n), Verack())


class HandshakeTests(SynchronousTestCase):
    def test_sends_version_first(self) -> None:
        link = Link()
        [version] = link.sent()
        assert isinstance(version, Version)
        self.assertEqual(version.node_id, node_id_of(1))
        self.assertEqual(version.nonce, 77)
        self.assertEqual(version.port, 3000)

    def test_version_answered_with_verack_and_ready_after_verack(self) -> None:
        link = Link()
        link.sent()
        link.receive(version_of(2))
        self.assertEqual(link.sent(), [Verack()])
        self.assertEqual(link.protocol.state, "handshaking")
        link.receive(Verack())
        self.assertEqual(link.protocol.state, "ready")
        self.assertEqual(link.owner.ready, [link.protocol])
        self.assertEqual(link.protocol.node_id, node_id_of(2))

    def test_verack_then_version_also_completes(self) -> None:
        link = Link()
        link.receive(version_of(2))
        link.receive(Verack())
        self.assertEqual(link.protocol.state, "ready")

    def test_when_ready_fires(self) -> None:
        link = Link()
        d = link.protocol.when_ready()
        link.handshake()
        self.assertIs(self.successResultOf(d), link.protocol)
        self.assertIs(self.successResultOf(link.protocol.when_ready()), link.protocol)

    def test_message_before_handshake_is_violation(self) -> None:
        for early in (Ping(nonce=1), GetAddr(), Addr(addrs=()), Verack()):
            link = Link()
            link.receive(early)
            self.assertEqual(link.protocol.state, "closed")
            self.assertTrue(link.transport.disconnecting)
            self.assertEqual(len(link.owner.misbehaved), 1, early)

    def test_unknown_before_handshake_is_violation(self) -> None:
        link = Link()
        link.receive(Unknown(command="future", payload=b"{}"))
        self.assertEqual(len(link.owner.misbehaved), 1)

    def test_duplicate_version_is_violation(self) -> None:
        link = Link()
        link.receive(version_of(2), version_of(2))
        self.assertEqual(link.protocol.state, "closed")
        self.assertIn("duplicate version", link.owner.misbehaved[0][1])

    def test_version_after_handshake_is_violation(self) -> None:
        link = Link()
        link.handshake()
        link.receive(version_of(2))
        self.assertEqual(link.protocol.state, "closed")

    def test_wrong_network_disconnects(self) -> None:
        link = Link()
        link.receive(version_of(2, network="other"))
        self.assertEqual(link.protocol.state, "closed")
        self.assertIn("wrong network", link.protocol.close_reason or "")
        self.assertEqual(link.owner.ready, [])

    def test_peer_of_another_pair_links_with_no_shared_market(self) -> None:
        """
        A peer of another pair is no longer refused (``wrong pair``): it
        links, for address exchange, and shares no market with us.
        """
        link = Link()
        link.receive(version_of(2, pair="ETH/USD"), Verack())
        self.assertEqual(link.protocol.state, "ready")
        self.assertEqual(link.owner.ready, [link.protocol])
        self.assertEqual(link.protocol.markets, ("ETH/USD",))
        self.assertEqual(link.protocol.shared_markets, ())
        self.assertEqual(link.owner.misbehaved, [])

    def test_connecting_to_self_by_nonce(self) -> None:
        owner = RecordingOwner()
        owner.own_nonces.add(4242)
        link = Link(owner=owner)
        d = link.protocol.when_ready()
        link.receive(version_of(3, nonce=4242))
        self.assertEqual(link.protocol.close_reason, REASON_SELF)
        self.assertEqual(self.failureResultOf(d, LinkClosed).value.reason, REASON_SELF)

    def test_connecting_to_self_by_node_id(self) -> None:
        link = Link()
        link.receive(version_of(1))
        self.assertEqual(link.protocol.close_reason, REASON_SELF)

    def test_pinned_node_id_mismatch(self) -> None:
        link = Link(dialed=PeerAddress("127.0.0.1", 3002, node_id_of(9)))
        link.receive(version_of(2))
        self.assertEqual(link.protocol.state, "closed")
        self.assertIn("pinned", link.protocol.close_reason or "")

    def test_pinned_node_id_match(self) -> None:
        link = Link(dialed=PeerAddress("127.0.0.1", 3002, node_id_of(2)))
        link.handshake(2)
        self.assertEqual(link.protocol.state, "ready")

    def test_owner_refusal_closes(self) -> None:
        link = Link(owner=RecordingOwner(refuse="duplicate link"))
        d = link.protocol.when_ready()
        link.handshake()
        self.assertEqual(link.protocol.state, "closed")
        self.failureResultOf(d, LinkClosed)

    def test_handshake_timeout(self) -> None:
        link = Link()
        d = link.protocol.when_ready()
        link.clock.advance(9.9)
        self.assertEqual(link.protocol.state, "handshaking")
        link.clock.advance(0.2)
        self.assertEqual(link.protocol.state, "closed")
        self.assertEqual(link.protocol.close_reason, "handshake timeout")
        self.failureResultOf(d, LinkClosed)

    def test_no_timeout_after_handshake(self) -> None:
        link = Link()
        link.handshake()
        link.clock.advance(15)
        self.assertEqual(link.protocol.state, "ready")

    def test_lower_protocol_version_is_spoken(self) -> None:
        link = Link()
        link.receive(version_of(2, protocol_version=7), Verack())
        self.assertEqual(link.protocol.protocol_version, PROTOCOL_VERSION)
        self.assertEqual(link.protocol.state, "ready")

    def test_sends_protocol_version_4_with_witnesses(self) -> None:
        link = Link()
        [version] = link.sent()
        assert isinstance(version, Version)
        self.assertEqual((version.protocol_version, PROTOCOL_VERSION), (4, 4))
        self.assertEqual(version.witnesses, NO_WITNESSES)

    def test_version_2_peer_refused_without_misbehaviour(self) -> None:
        """A version 2 node cannot read batch signatures: refused with a clear reason."""
        link = Link()
        link.sent()
        link.receive(version_of(2, protocol_version=2), Verack())
        self.assertEqual(link.protocol.state, "closed")
        reason = link.protocol.close_reason or ""
        self.assertIn("unsupported protocol version 2", reason)
        self.assertIn("cannot read batch signatures", reason)
        self.assertEqual((link.owner.ready, link.owner.misbehaved), ([], []))

    def test_version_1_peer_refused_without_misbehaviour(self) -> None:
        """A version 1 node has no fair order: refused with a clear reason, not scored."""
        link = Link()
        d = link.protocol.when_ready()
        link.sent()
        link.receive(version_of(2, protocol_version=1, witnesses=""), Verack())
        self.assertEqual(link.protocol.state, "closed")
        reason = link.protocol.close_reason or ""
        self.assertIn("unsupported protocol version 1", reason)
        self.assertIn("no fair order", reason)
        self.assertEqual(self.failureResultOf(d, LinkClosed).value.reason, reason)
        self.assertEqual((link.owner.ready, link.owner.misbehaved), ([], []))
        self.assertTrue(link.transport.disconnecting)
        self.assertEqual(link.sent(), [])  # no verack


#: the digests of two witness sets
WITNESSES_A = WitnessSet.of([node_id_of(7), node_id_of(8), node_id_of(9)]).digest
WITNESSES_B = WitnessSet.of([node_id_of(7), node_id_of(8), node_id_of(10)]).digest


class WitnessHandshakeTests(SynchronousTestCase):
    """Two protocols in memory (iosim): only nodes naming the same witness set link."""

    def setUp(self) -> None:
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def handshake(
        self, ours: str, theirs: str
    ) -> tuple[PeerProtocol, PeerProtocol, RecordingOwner, RecordingOwner]:
        """Node 1 (witness digest C{ours}) dials node 2 (C{theirs}); both sides handshake."""
        clock = Clock()
        owners = RecordingOwner(), RecordingOwner()
        client = PeerProtocol(local_node(1, witnesses=ours), owners[0], clock, "outbound",
                              timing=TIMING, nonce=1)  # fmt: skip
        server = PeerProtocol(local_node(2, witnesses=theirs), owners[1], clock, "inbound",
                              timing=TIMING, nonce=2)  # fmt: skip
        pump = connect(server, FakeTransport(server, True), client, FakeTransport(client, False))
        pump.flush()
        return client, server, *owners

    def test_same_witnesses_link(self) -> None:
        client, server, client_owner, server_owner = self.handshake(WITNESSES_A, WITNESSES_A)
        self.assertEqual((client.state, server.state), ("ready", "ready"))
        self.assertEqual((client_owner.ready, server_owner.ready), ([client], [server]))
        assert client.remote is not None
        self.assertEqual(client.remote.witnesses, WITNESSES_A)

    def test_other_witnesses_refused_both_ways(self) -> None:
        client, server, client_owner, server_owner = self.handshake(WITNESSES_A, WITNESSES_B)
        sides = [
            (client, client_owner, WITNESSES_B, WITNESSES_A),
            (server, server_owner, WITNESSES_A, WITNESSES_B),
        ]
        for link, owner, theirs, ours in sides:
            self.assertEqual(link.state, "closed")
            reason = link.close_reason or ""
            self.assertTrue(reason.startswith(f"{REASON_WITNESSES} {theirs[:16]}"), reason)
            self.assertIn(f"ours is {ours[:16]}", reason)
            self.assertEqual(owner.ready, [])
            # a configuration mismatch, like another network: not misbehaviour
            self.assertEqual(owner.misbehaved, [])
            self.assertEqual([r for _, r in owner.closed], [reason])
        refusals = [e for e in self.events if e.get("log_format") == "Refusing {peer}: {reason}"]
        self.assertEqual(
            sorted(e["reason"] for e in refusals),
            sorted([client.close_reason, server.close_reason]),
        )
        self.assertEqual({e["log_level"] for e in refusals}, {LogLevel.info})

    def test_no_witnesses_and_witnesses_refused(self) -> None:
        client, server, _, _ = self.handshake(NO_WITNESSES, WITNESSES_A)
        self.assertEqual((client.state, server.state), ("closed", "closed"))
        self.assertIn(REASON_WITNESSES, client.close_reason or "")

    def test_wrong_network_logged_alike(self) -> None:
        link = Link()
        link.receive(version_of(2, network="other"))
        [event] = [e for e in self.events if e.get("log_format") == "Refusing {peer}: {reason}"]
        self.assertEqual(event["reason"], "wrong network 'other'")
        self.assertEqual(link.owner.misbehaved, [])


class ViolationTests(SynchronousTestCase):
    def assertViolation(self, data: bytes, reason: str) -> Link:
        link = Link()
        link.protocol.dataReceived(data)
        self.assertEqual(link.protocol.state, "closed")
        self.assertTrue(link.transport.disconnecting)
        self.assertEqual(len(link.owner.misbehaved), 1)
        self.assertIn(reason, link.owner.misbehaved[0][1])
        # further bytes are ignored and raise nothing
        link.protocol.dataReceived(frame_of(Ping(nonce=1)))
        self.assertEqual(len(link.owner.misbehaved), 1)
        return link

    def test_bad_magic(self) -> None:
        self.assertViolation(frame_of(version_of(2), network="other"), "magic")

    def test_bad_checksum(self) -> None:
        data = bytearray(frame_of(version_of(2)))
        data[-1] ^= 0xFF
        self.assertViolation(bytes(data), "checksum")

    def test_oversize_frame(self) -> None:
        header = bytearray(frame_of(Verack())[:24])
        header[16:20] = (64 * 1024 * 1024).to_bytes(4, "little")
        self.assertViolation(bytes(header), "")

    def test_malformed_json(self) -> None:
        from bitfitech.wire.framing import encode_frame

        self.assertViolation(encode_frame(network_magic("test"), "version", b"{nope"), "")

    def test_wrong_field_type(self) -> None:
        from bitfitech.wire.framing import encode_frame

        payload = b'{"nonce":"x"}'
        link = Link()
        link.handshake()
        link.protocol.dataReceived(encode_frame(network_magic("test"), "ping", payload))
        self.assertEqual(link.protocol.state, "closed")
        self.assertEqual(len(link.owner.misbehaved), 1)

    def test_frames_after_violation_in_same_chunk_are_not_handled(self) -> None:
        link = Link()
        link.protocol.dataReceived(frame_of(Ping(nonce=1)) + frame_of(version_of(2)))
        self.assertIsNone(link.protocol.remote)

    def test_chunked_delivery(self) -> None:
        link = Link()
        data = frame_of(version_of(2)) + frame_of(Verack())
        for i in range(len(data)):
            link.protocol.dataReceived(data[i : i + 1])
        self.assertEqual(link.protocol.state, "ready")


class ChecksumTests(SynchronousTestCase):
    """On TLS links frames after each side's ``verack`` carry no checksum; on plain ones they do."""

    def link(self, tls: bool) -> tuple[PeerProtocol, StringTransport, RecordingOwner]:
        self.patch(protocol_module, "proven_node_id", lambda transport: node_id_of(2))
        owner = RecordingOwner()
        local = dataclasses.replace(local_node(1), tls=tls)
        protocol = PeerProtocol(
            local, owner, Clock(), "outbound", timing=TIMING, nonce=77,  # type: ignore[arg-type]
        )  # fmt: skip
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport, owner

    def checksums(self, data: bytes) -> list[tuple[str, bytes]]:
        """(command, checksum field) of each frame in C{data}."""
        decoder = FrameDecoder(network_magic("test"))
        decoder.checksummed = False
        decoder.feed(data)
        out = []
        offset = 0
        while (frame := decoder.next_frame()) is not None:
            out.append((frame.command, data[offset + 20 : offset + 24]))
            offset += 24 + len(frame.payload)
        return out

    def test_tls_link_drops_checksums_after_verack(self) -> None:
        protocol, transport, owner = self.link(tls=True)
        protocol.dataReceived(frame_of(version_of(2)))
        bad_ping = encode_frame(network_magic("test"), "ping", b'{"nonce":5}', checksummed=False)
        protocol.dataReceived(frame_of(Verack()) + bad_ping)
        self.assertEqual((protocol.state, owner.misbehaved), ("ready", []))
        sent = self.checksums(transport.value())
        self.assertEqual([command for command, _ in sent[:2]], ["version", "verack"])
        self.assertTrue(all(check != NO_CHECKSUM for _, check in sent[:2]))
        self.assertIn("pong", [command for command, _ in sent[2:]])
        self.assertEqual({check for _, check in sent[2:]}, {NO_CHECKSUM})

    def test_tls_link_checks_the_handshake(self) -> None:
        """Before the peer's verack a frame's checksum is still checked."""
        protocol, _, owner = self.link(tls=True)
        version = encode_frame(network_magic("test"), "version", frame_of(version_of(2))[24:],
                               checksummed=False)  # fmt: skip
        protocol.dataReceived(version)
        self.assertEqual(protocol.state, "closed")
        self.assertIn("checksum", owner.misbehaved[0][1])

    def test_plain_link_keeps_checksums(self) -> None:
        protocol, transport, owner = self.link(tls=False)
        protocol.dataReceived(frame_of(version_of(2)) + frame_of(Verack()) + frame_of(Ping(5)))
        self.assertEqual(protocol.state, "ready")
        self.assertNotIn(NO_CHECKSUM, [check for _, check in self.checksums(transport.value())])
        bad_ping = encode_frame(network_magic("test"), "ping", b'{"nonce":6}', checksummed=False)
        protocol.dataReceived(bad_ping)
        self.assertIn("checksum", owner.misbehaved[0][1])


class ReadyTests(SynchronousTestCase):
    def test_ping_answered_with_pong(self) -> None:
        link = Link()
        link.handshake()
        link.sent()
        link.receive(Ping(nonce=99))
        self.assertEqual(link.sent(), [Pong(nonce=99)])

    def test_periodic_ping_and_rtt(self) -> None:
        link = Link()
        link.handshake()
        link.sent()
        link.clock.advance(30)
        [ping] = link.sent()
        assert isinstance(ping, Ping)
        link.clock.advance(0.25)
        link.receive(Pong(nonce=ping.nonce))
        self.assertEqual(link.protocol.rtt, 0.25)
        link.clock.advance(30)
        self.assertIsInstance(link.sent()[0], Ping)

    def test_pong_timeout_disconnects(self) -> None:
        link = Link()
        link.handshake()
        link.clock.advance(30)
        link.clock.advance(19.9)
        self.assertEqual(link.protocol.state, "ready")
        link.clock.advance(0.2)
        self.assertEqual(link.protocol.state, "closed")
        self.assertEqual(link.protocol.close_reason, "ping timeout")

    def test_wrong_pong_ignored(self) -> None:
        link = Link()
        link.handshake()
        link.clock.advance(30)
        link.receive(Pong(nonce=12345))
        self.assertIsNone(link.protocol.rtt)
        self.assertEqual(link.protocol.state, "ready")

    def test_other_messages_go_to_owner(self) -> None:
        link = Link()
        link.handshake()
        link.receive(GetAddr(), Unknown(command="future", payload=b"{}"))
        self.assertEqual([m for _, m in link.owner.messages],
                         [GetAddr(), Unknown(command="future", payload=b"{}")])  # fmt: skip

    def test_connection_lost_reported_once_and_timers_stopped(self) -> None:
        link = Link()
        link.handshake()
        lost = link.protocol.when_lost()
        link.protocol.connectionLost()
        self.assertEqual(len(link.owner.closed), 1)
        self.successResultOf(lost)
        self.assertEqual(link.clock.getDelayedCalls(), [])

    def test_owner_error_does_not_escape(self) -> None:
        link = Link()
        link.handshake()

        def broken(lk: object, message: object) -> None:
            raise RuntimeError("bug")

        link.owner.link_message = broken  # type: ignore[method-assign, assignment]
        link.receive(GetAddr())
        self.assertEqual(link.protocol.close_reason, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_decoder_error_does_not_escape(self) -> None:
        """A decoder bug (an exception other than its own) costs the link, not the node."""
        link = Link()
        link.handshake()

        def broken(command: str, payload: bytes) -> object:
            raise RecursionError("bug")

        self.patch(protocol_module, "decode_message", broken)
        link.receive(GetAddr())
        self.assertEqual(link.protocol.close_reason, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(RecursionError)), 1)
        self.assertEqual(link.owner.misbehaved, [])

    def test_send_after_close_is_dropped(self) -> None:
        link = Link()
        link.protocol.close("bye")
        link.transport.clear()
        link.protocol.send(Ping(nonce=1))
        self.assertEqual(link.transport.value(), b"")
