"""Tests for :mod:`bitfitech.discovery.mdns`, on fakes: a Clock, RecordingUDPTransport
and an in-memory multicast group."""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Collection
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.config import coerce_interface
from bitfitech.discovery.mdns import service as service_module
from bitfitech.discovery.mdns.browser import (
    MAX_INTERVAL,
    TXT_STRING,
    Browser,
    instance_markets,
    instance_txt,
)
from bitfitech.discovery.mdns.codec import (
    MAX_PACKET,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_NSEC,
    TYPE_PTR,
    TYPE_SRV,
    TYPE_TXT,
    AddressData,
    MDNSDecodeError,
    NSECData,
    Packet,
    PTRData,
    Question,
    Record,
    SRVData,
    TXTData,
    decode_packet,
    encode_packet,
    make_txt,
    name_key,
    parse_txt,
)
from bitfitech.discovery.mdns.ipv6 import MDNS_GROUP6
from bitfitech.discovery.mdns.responder import (
    HOST_TTL,
    OTHER_TTL,
    SERVICE_ENUMERATION,
    SERVICE_TYPE,
    Responder,
)
from bitfitech.discovery.mdns.service import (
    MDNS_GROUP,
    Adapter,
    MDNSError,
    MDNSProtocol,
    MDNSService,
    local_addresses,
)
from bitfitech.logs import log_level, set_log_level
from bitfitech.tap import Options
from bitfitech.testing import RecordingUDPTransport

NODE = "a" * 40
PEER = "b" * 40
INSTANCE = f"{NODE}._bitfi._tcp.local."
HOST = f"bitfi-{NODE[:12]}.local."
PEER_INSTANCE = f"{PEER}._bitfi._tcp.local."
PEER_HOST = "peer-host.local."
GROUP = (MDNS_GROUP, 5353)
QUERIER = ("192.0.2.7", 5353)
LEGACY = ("192.0.2.7", 40000)
TXT = make_txt({"id": NODE, "net": "main", "pair": "BTC/USD", "v": "1"})

Sent = list[tuple[Packet, "tuple[str, int] | None"]]


def peer_txt(node_id: str = PEER, net: str = "main", pair: str = "BTC/USD") -> TXTData:
    return make_txt({"id": node_id, "net": net, "pair": pair, "v": "1"})


def announcement(
    instance: str = PEER_INSTANCE,
    host: str = PEER_HOST,
    port: int = 7000,
    address: str = "192.0.2.20",
    txt: TXTData | None = None,
    ttl: int | None = None,
) -> Packet:
    """What another bitfi node's responder multicasts about itself."""

    def t(default: int) -> int:
        return default if ttl is None else ttl

    return Packet(
        response=True,
        answers=(
            Record(SERVICE_TYPE, TYPE_PTR, t(OTHER_TTL), PTRData(instance)),
            Record(instance, TYPE_SRV, t(HOST_TTL), SRVData(0, 0, port, host), True),
            Record(instance, TYPE_TXT, t(OTHER_TTL), txt or peer_txt(), True),
            Record(host, TYPE_A, t(HOST_TTL), AddressData(address), True),
        ),
    )


def records_of(packet: Packet) -> set[tuple[str, int]]:
    return {(name_key(r.name), r.rtype) for r in packet.answers}


class CodecTests(SynchronousTestCase):
    """Typed packets <-> datagrams."""

    def test_round_trip_with_mdns_bits(self) -> None:
        packet = Packet(
            response=True,
            questions=(Question(INSTANCE, TYPE_ANY, unicast=True), Question(HOST, TYPE_A)),
            answers=announcement().answers,
            authority=(Record(HOST, TYPE_AAAA, 120, AddressData("fd00::1"), True),),
            additional=(Record(INSTANCE, TYPE_TXT, 4500, TXTData((b"a=1", b"flag")), True),),
            id=7,
        )
        decoded = decode_packet(encode_packet(packet))
        self.assertEqual(decoded, packet)
        self.assertEqual(decoded.answers[0].cache_flush, False)
        self.assertEqual(decoded.answers[1].cache_flush, True)

    def test_aaaa_both_ways(self) -> None:
        """AAAA records in wire form, as another implementation writes them, and ours."""
        # A response holding AAAA h.local. fd00::1 (cache flush, TTL 120).
        wire = (
            b"\0\0\x84\0\0\0\0\x01\0\0\0\0\x01h\x05local\0\0\x1c\x80\x01\0\0\0x\0\x10"
            + socket.inet_pton(socket.AF_INET6, "fd00::1")
        )
        record = Record("h.local.", TYPE_AAAA, 120, AddressData("fd00::1"), True)
        self.assertEqual(decode_packet(wire).answers, (record,))
        self.assertEqual(encode_packet(Packet(True, answers=(record,))), wire)
        for text in ("::1", "fe80::fc:ff:fe00:1", "2001:db8::8:800:200c:417a"):
            full = Record("h.local.", TYPE_AAAA, 120, AddressData(text), True)
            self.assertEqual(decode_packet(encode_packet(Packet(True, answers=(full,)))).answers,
                             (full,))  # fmt: skip
        # An AAAA record whose data is not 16 bytes is dropped.
        short = wire[:-16].replace(b"\0\x10", b"\0\x04") + b"\0\0\0\x01"
        self.assertEqual(decode_packet(short).answers, ())

    def test_nsec_is_sent_not_read(self) -> None:
        nsec = Record(HOST, TYPE_NSEC, 120, NSECData(HOST, (TYPE_AAAA, TYPE_A)), True)
        datagram = encode_packet(Packet(True, additional=(nsec,)))
        # RFC 4034 §4.1: the next name uncompressed, then window 0 with the
        # bits of types 1 (A) and 28 (AAAA): 26 + 6 bytes of data.
        name = b"\x12bitfi-aaaaaaaaaaaa\x05local\0"
        rdata = name + b"\0\x04\x40\0\0\x08"
        self.assertEqual(datagram[-len(rdata) - 10 :], b"\0\x2f\x80\x01\0\0\0\x78\0\x20" + rdata)
        # Nothing here reads NSEC records: decoding drops them.
        self.assertEqual(decode_packet(datagram).additional, ())
        bad = Record(HOST, TYPE_NSEC, 120, NSECData(HOST, (0,)), True)
        self.assertRaises(ValueError, encode_packet, Packet(True, answers=(bad,)))

    def test_names_compare_without_case(self) -> None:
        self.assertEqual(name_key("Foo._Bitfi._TCP.local"), "foo._bitfi._tcp.local.")
        a = Record("X.local.", TYPE_SRV, 1, SRVData(0, 0, 1, "H.local."))
        b = Record("x.local.", TYPE_SRV, 9, SRVData(0, 0, 1, "h.local"))
        self.assertEqual(a.key(), b.key())

    def test_parse_txt(self) -> None:
        txt = TXTData((b"ID=one", b"id=two", b"flag", b"", b"=x", b"empty="))
        self.assertEqual(parse_txt(txt), {"id": b"one", "flag": None, "empty": b""})
        self.assertEqual(parse_txt(TXT)["pair"], b"BTC/USD")
        self.assertRaises(ValueError, make_txt, {"k": "x" * 300})

    def test_rejects_oversize_and_garbage(self) -> None:
        self.assertRaises(MDNSDecodeError, decode_packet, b"\0" * (MAX_PACKET + 1))
        self.assertRaises(MDNSDecodeError, decode_packet, b"\0\0\0")
        # A compression loop in a name.
        self.assertRaises(
            MDNSDecodeError, decode_packet, b"\0\0\0\0\0\x01\0\0\0\0\0\0\xc0\x0c\0\x01\0\x01"
        )

    def test_unusable_records_are_dropped(self) -> None:
        # An NS record (type 2) and a record of class CH (3) are left out.
        data = bytearray(encode_packet(announcement()))
        packet = decode_packet(bytes(data))
        self.assertEqual(len(packet.answers), 4)
        header = b"\0\0\x84\0\0\0\0\x02\0\0\0\0"
        ns = b"\x01x\0\0\x02\0\x01\0\0\0\x10\0\x02\xc0\x0c"
        ch = b"\x01y\0\0\x01\0\x03\0\0\0\x10\0\x04\x01\x02\x03\x04"
        self.assertEqual(decode_packet(header + ns + ch).answers, ())

    @given(st.binary(max_size=600))
    @settings(max_examples=400)
    def test_arbitrary_bytes_raise_only_decode_error(self, data: bytes) -> None:
        try:
            decode_packet(data)
        except MDNSDecodeError:
            pass

    @given(st.data())
    @settings(max_examples=400)
    def test_mutated_packets_raise_only_decode_error(self, data: st.DataObject) -> None:
        datagram = bytearray(encode_packet(announcement()))
        for _ in range(data.draw(st.integers(1, 8))):
            index = data.draw(st.integers(0, len(datagram) - 1))
            datagram[index] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(datagram)))
        try:
            decode_packet(bytes(datagram[:cut]))
        except MDNSDecodeError:
            pass


def run(clock: Clock, seconds: float, step: float = 0.05) -> None:
    """Let C{seconds} pass in small steps, so that timers set by timers fire."""
    clock.pump([step] * round(seconds / step))


class ResponderTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sent: Sent = []
        self.responder = Responder(
            self.clock,
            lambda packet, destination: self.sent.append((packet, destination)),
            random.Random(1),
            node_id=NODE,
            txt=TXT,
            port=9000,
            addresses=["192.0.2.10", "fd00::10"],
        )

    def take(self) -> Sent:
        sent, self.sent = self.sent, []
        return sent

    def announce(self) -> None:
        """Start, probe and announce, then let a minute pass."""
        self.responder.start()
        run(self.clock, 5)
        self.clock.pump([1.0] * 60)
        self.assertEqual(self.responder.state, "announced")
        self.take()

    def query(self, *questions: Question, source: tuple[str, int] = QUERIER, **kw: Any) -> Sent:
        self.responder.handle_query(Packet(False, questions, **kw), source)
        self.clock.advance(0.2)
        return self.take()


class ProbeAndAnnounceTests(ResponderTestCase):
    def test_schedule_and_content(self) -> None:
        self.responder.start()
        self.assertEqual(self.take(), [])
        self.clock.advance(0.25)
        probes = [self.take()]
        for _ in range(2):
            self.clock.advance(0.2499)
            self.assertEqual(self.take(), [])
            self.clock.advance(0.0001)
            probes.append(self.take())
        for number, sent in enumerate(probes):
            [(probe, destination)] = sent
            self.assertIsNone(destination)
            self.assertFalse(probe.response)
            self.assertEqual(
                [(q.name, q.qtype, q.unicast) for q in probe.questions],
                [(INSTANCE, TYPE_ANY, number == 0), (HOST, TYPE_ANY, number == 0)],
            )
            self.assertEqual(
                {(r.name, r.rtype, r.cache_flush) for r in probe.authority},
                {
                    (INSTANCE, TYPE_SRV, True),
                    (INSTANCE, TYPE_TXT, True),
                    (HOST, TYPE_A, True),
                    (HOST, TYPE_AAAA, True),
                },
            )
        self.assertEqual(self.responder.state, "probing")
        self.clock.advance(0.25)
        [(first, destination)] = self.take()
        self.assertIsNone(destination)
        self.assertEqual(self.responder.state, "announcing")
        ttl = {(r.name, r.rtype): (r.ttl, r.cache_flush, r.data) for r in first.answers}
        self.assertEqual(
            ttl,
            {
                (SERVICE_TYPE, TYPE_PTR): (4500, False, PTRData(INSTANCE)),
                (SERVICE_ENUMERATION, TYPE_PTR): (4500, False, PTRData(SERVICE_TYPE)),
                (INSTANCE, TYPE_SRV): (120, True, SRVData(0, 0, 9000, HOST)),
                (INSTANCE, TYPE_TXT): (4500, True, TXT),
                (HOST, TYPE_A): (120, True, AddressData("192.0.2.10")),
                (HOST, TYPE_AAAA): (120, True, AddressData("fd00::10")),
            },
        )
        self.clock.advance(0.999)
        self.assertEqual(self.take(), [])
        self.clock.advance(0.001)
        self.assertEqual([p.answers for p, _ in self.take()], [first.answers])
        self.clock.advance(2.0)
        self.assertEqual([p.answers for p, _ in self.take()], [first.answers])
        self.clock.advance(3600)
        self.assertEqual(self.take(), [])
        self.assertEqual(self.responder.state, "announced")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_answers_while_probing(self) -> None:
        self.responder.start()
        self.clock.advance(0.3)
        self.take()
        self.assertEqual(self.query(Question(SERVICE_TYPE, TYPE_PTR)), [])

    def test_goodbye_on_stop(self) -> None:
        self.announce()
        self.responder.stop()
        [(goodbye, destination)] = self.take()
        self.assertIsNone(destination)
        self.assertEqual(len(goodbye.answers), 6)
        self.assertEqual({r.ttl for r in goodbye.answers}, {0})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_goodbye_before_announcing(self) -> None:
        self.responder.start()
        self.clock.advance(0.5)
        self.take()
        self.responder.stop()
        self.assertEqual(self.take(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AnswerTests(ResponderTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.announce()

    def test_ptr_answer_is_delayed_with_additionals(self) -> None:
        self.responder.handle_query(Packet(False, (Question(SERVICE_TYPE, TYPE_PTR),)), QUERIER)
        self.clock.advance(0.0199)
        self.assertEqual(self.take(), [])
        self.clock.advance(0.1)
        [(answer, destination)] = self.take()
        self.assertIsNone(destination)
        self.assertEqual(answer.questions, ())
        self.assertEqual(answer.id, 0)
        self.assertEqual(records_of(answer), {(SERVICE_TYPE, TYPE_PTR)})
        self.assertEqual(
            {(r.name, r.rtype) for r in answer.additional},
            {(INSTANCE, TYPE_SRV), (INSTANCE, TYPE_TXT), (HOST, TYPE_A), (HOST, TYPE_AAAA)},
        )

    def test_unique_answers_are_immediate(self) -> None:
        cases = [
            (
                Question(INSTANCE, TYPE_SRV),
                {(INSTANCE, TYPE_SRV)},
                {(HOST, TYPE_A), (HOST, TYPE_AAAA)},
            ),
            (Question(INSTANCE, TYPE_TXT), {(INSTANCE, TYPE_TXT)}, set()),
            # RFC 6762 §6.2: an address of one family brings the other's.
            (Question(HOST, TYPE_A), {(HOST, TYPE_A)}, {(HOST, TYPE_AAAA)}),
            (Question(HOST.upper(), TYPE_AAAA), {(HOST, TYPE_AAAA)}, {(HOST, TYPE_A)}),
            (Question(INSTANCE, TYPE_ANY), {(INSTANCE, TYPE_SRV), (INSTANCE, TYPE_TXT)}, None),
            (Question(HOST, TYPE_ANY), {(HOST, TYPE_A), (HOST, TYPE_AAAA)}, set()),
        ]
        for question, answers, additional in cases:
            self.clock.advance(2)  # past the one-multicast-a-second limit
            self.responder.handle_query(Packet(False, (question,)), QUERIER)
            [(answer, destination)] = self.take()
            self.assertIsNone(destination)
            self.assertEqual(records_of(answer), answers, question)
            if additional is not None:
                self.assertEqual({(r.name, r.rtype) for r in answer.additional}, additional)

    def test_service_enumeration(self) -> None:
        [(answer, _)] = self.query(Question(SERVICE_ENUMERATION, TYPE_PTR))
        self.assertEqual([r.data for r in answer.answers], [PTRData(SERVICE_TYPE)])

    def test_other_names_are_not_answered(self) -> None:
        self.assertEqual(self.query(Question("_http._tcp.local.", TYPE_PTR)), [])
        self.assertEqual(self.query(Question(INSTANCE, TYPE_A)), [])

    def test_one_multicast_a_second(self) -> None:
        self.assertEqual(len(self.query(Question(HOST, TYPE_A))), 1)
        self.assertEqual(self.query(Question(HOST, TYPE_A)), [])
        self.clock.advance(1)
        self.assertEqual(len(self.query(Question(HOST, TYPE_A))), 1)

    def test_known_answer_suppression(self) -> None:
        mine = Record(SERVICE_TYPE, TYPE_PTR, OTHER_TTL, PTRData(INSTANCE))
        question = Question(SERVICE_TYPE, TYPE_PTR)
        self.assertEqual(self.query(question, answers=(mine.with_ttl(2250),)), [])
        [(answer, _)] = self.query(question, answers=(mine.with_ttl(2249),))
        self.assertEqual(records_of(answer), {(SERVICE_TYPE, TYPE_PTR)})
        # Known additionals are left out too.
        self.clock.advance(2)
        srv = self.responder.unique_records()[0]
        [(answer, _)] = self.query(Question(INSTANCE, TYPE_ANY), answers=(srv,))
        self.assertEqual(records_of(answer), {(INSTANCE, TYPE_TXT)})

    def test_qu_question_answered_by_unicast(self) -> None:
        self.query(Question(INSTANCE, TYPE_SRV))  # multicast it now
        self.clock.advance(1)
        [(answer, destination)] = self.query(Question(INSTANCE, TYPE_SRV, unicast=True))
        self.assertEqual(destination, QUERIER)
        self.assertEqual(records_of(answer), {(INSTANCE, TYPE_SRV)})
        # Not multicast for a quarter of its TTL: multicast instead (§5.4).
        self.clock.advance(HOST_TTL / 4)
        [(answer, destination)] = self.query(Question(INSTANCE, TYPE_SRV, unicast=True))
        self.assertIsNone(destination)

    def test_legacy_unicast(self) -> None:
        question = Question(INSTANCE, TYPE_SRV)
        [(answer, destination)] = self.query(question, source=LEGACY, id=4321)
        self.assertEqual(destination, LEGACY)
        self.assertEqual(answer.id, 4321)
        self.assertEqual(answer.questions, (question,))
        self.assertEqual(
            [(r.rtype, r.ttl, r.cache_flush) for r in answer.answers], [(TYPE_SRV, 10, False)]
        )
        self.assertTrue(answer.additional)
        self.assertTrue(all(r.ttl <= 10 and not r.cache_flush for r in answer.additional))
        # Again at once: unicast answers are not rate limited.
        self.assertEqual(len(self.query(question, source=LEGACY, id=4322)), 1)

    def test_probe_for_our_name_is_defended_by_multicast(self) -> None:
        self.query(Question(INSTANCE, TYPE_SRV))
        self.clock.advance(0.3)
        probe = Packet(
            False,
            (Question(INSTANCE, TYPE_ANY, unicast=True),),
            authority=(Record(INSTANCE, TYPE_SRV, 120, SRVData(0, 0, 1, "x.local.")),),
        )
        self.responder.handle_query(probe, QUERIER)
        [(answer, destination)] = self.take()
        self.assertIsNone(destination)
        self.assertIn((INSTANCE, TYPE_SRV), records_of(answer))


class AddressAdditionalTests(SynchronousTestCase):
    """RFC 6762 §6.2: an address record brings the other family's, or an NSEC."""

    def announced(self, addresses: list[str]) -> tuple[Responder, Sent, Clock]:
        clock, sent = Clock(), []
        responder = Responder(
            clock, lambda packet, destination: sent.append((packet, destination)),
            random.Random(1), node_id=NODE, txt=TXT, port=9000, addresses=addresses,
        )  # fmt: skip
        responder.start()
        run(clock, 5)
        return responder, sent, clock

    def test_one_family_host_says_so_with_nsec(self) -> None:
        for addresses, present in ((["192.0.2.10"], TYPE_A), (["fd00::10"], TYPE_AAAA)):
            responder, sent, clock = self.announced(addresses)
            nsec = Record(HOST, TYPE_NSEC, HOST_TTL, NSECData(HOST, (present,)), True)
            # The announcements carry it...
            [first, *_] = [packet for packet, _ in sent if packet.response]
            self.assertEqual(first.additional, (nsec,))
            # ... and so does an answer with the address, or with the SRV.
            clock.pump([1.0] * 10)
            sent.clear()
            for question in (Question(HOST, present), Question(INSTANCE, TYPE_SRV)):
                clock.advance(2)
                responder.handle_query(Packet(False, (question,)), QUERIER)
                [(answer, _)] = sent
                sent.clear()
                self.assertIn(nsec, answer.additional, question)
            # Not with a TXT alone, and not once the querier knows it.
            clock.advance(2)
            responder.handle_query(Packet(False, (Question(INSTANCE, TYPE_TXT),)), QUERIER)
            self.assertEqual(sent.pop()[0].additional, ())
            clock.advance(2)
            responder.handle_query(Packet(False, (Question(HOST, present),), (nsec,)), QUERIER)
            self.assertEqual(sent.pop()[0].additional, ())
            responder.stop()

    def test_dual_stack_host_sends_no_nsec(self) -> None:
        responder, sent, _ = self.announced(["192.0.2.10", "fd00::10"])
        types = {r.rtype for packet, _ in sent for r in (*packet.answers, *packet.additional)}
        self.assertNotIn(TYPE_NSEC, types)
        self.assertIn(TYPE_AAAA, types)
        responder.stop()

    def test_legacy_unicast_answer_for_an_address(self) -> None:
        responder, sent, clock = self.announced(["192.0.2.10", "fd00::10"])
        clock.pump([1.0] * 10)
        sent.clear()
        responder.handle_query(Packet(False, (Question(HOST, TYPE_AAAA),), id=3), LEGACY)
        [(answer, destination)] = sent
        self.assertEqual(destination, LEGACY)
        self.assertEqual([r.data for r in answer.answers], [AddressData("fd00::10")])
        self.assertEqual([r.data for r in answer.additional], [AddressData("192.0.2.10")])
        self.assertEqual({r.ttl for r in answer.additional}, {10})
        responder.stop()


class ConflictTests(ResponderTestCase):
    def probing(self) -> None:
        self.responder.start()
        self.clock.advance(0.25)
        self.take()

    def other_srv(self, name: str = INSTANCE, port: int = 1) -> Record:
        return Record(name, TYPE_SRV, 120, SRVData(0, 0, port, "other.local."), True)

    def test_instance_conflict_while_probing_renames(self) -> None:
        self.probing()
        self.responder.handle_response(Packet(True, answers=(self.other_srv(),)), QUERIER)
        self.assertEqual(self.responder.instance_name, f"{NODE} (2).{SERVICE_TYPE}")
        self.assertEqual(self.responder.host_name, HOST)
        self.assertEqual(self.responder.state, "probing")
        self.clock.advance(0.25)
        [(probe, _)] = self.take()
        self.assertEqual(probe.questions[0].name, f"{NODE} (2).{SERVICE_TYPE}")
        self.responder.handle_response(
            Packet(True, answers=(self.other_srv(f"{NODE} (2).{SERVICE_TYPE}"),)), QUERIER
        )
        self.assertEqual(self.responder.instance_name, f"{NODE} (3).{SERVICE_TYPE}")
        run(self.clock, 5)
        self.assertEqual(self.responder.state, "announced")
        ptrs = [r for p, _ in self.take() for r in p.answers if r.rtype == TYPE_PTR]
        self.assertIn(PTRData(f"{NODE} (3).{SERVICE_TYPE}"), [r.data for r in ptrs])

    def test_host_conflict_renames_host(self) -> None:
        self.probing()
        other = Record(HOST, TYPE_A, 120, AddressData("192.0.2.99"), True)
        self.responder.handle_response(Packet(True, additional=(other,)), QUERIER)
        self.assertEqual(self.responder.host_name, f"bitfi-{NODE[:12]}-2.local.")
        self.assertEqual(self.responder.instance_name, INSTANCE)

    def test_own_records_heard_back_are_no_conflict(self) -> None:
        self.probing()
        records = tuple(self.responder.unique_records())
        self.responder.handle_response(Packet(True, answers=records), QUERIER)
        self.responder.handle_query(Packet(False, authority=records), QUERIER)
        run(self.clock, 2)
        self.assertEqual(self.responder.instance_name, INSTANCE)
        self.assertEqual(self.responder.state, "announcing")

    def their_probe(self, port: int) -> Packet:
        """A probe for our instance name whose SRV names another port."""
        records = [
            Record(r.name, r.rtype, r.ttl, SRVData(0, 0, port, HOST), True)
            if r.rtype == TYPE_SRV
            else r
            for r in self.responder.unique_records()
            if r.name == INSTANCE
        ]
        return Packet(False, (Question(INSTANCE, TYPE_ANY),), authority=tuple(records))

    def test_simultaneous_probe_tie_break_won(self) -> None:
        self.probing()
        # Their data sorts earlier (port 1 < 9000): we win and go on.
        self.responder.handle_query(self.their_probe(1), QUERIER)
        run(self.clock, 1)
        self.assertEqual(self.responder.state, "announcing")
        self.assertEqual(self.responder.instance_name, INSTANCE)

    def test_simultaneous_probe_tie_break_lost(self) -> None:
        self.probing()
        # Their data sorts later: we lose, wait a second and probe again...
        self.responder.handle_query(self.their_probe(65000), QUERIER)
        self.clock.advance(0.999)
        self.assertEqual(self.take(), [])
        self.clock.advance(0.001)
        [(probe, _)] = self.take()
        self.assertTrue(probe.questions[0].unicast)
        self.assertEqual(self.responder.instance_name, INSTANCE)
        # ... and when the winner, now announced, answers: rename.
        winner = self.their_probe(65000).authority
        self.responder.handle_response(Packet(True, answers=winner), QUERIER)
        self.assertEqual(self.responder.instance_name, f"{NODE} (2).{SERVICE_TYPE}")

    def test_conflict_after_announcing_probes_again(self) -> None:
        self.announce()
        self.responder.handle_response(Packet(True, answers=(self.other_srv(),)), QUERIER)
        self.assertEqual(self.responder.state, "probing")
        self.assertEqual(self.responder.instance_name, INSTANCE)
        run(self.clock, 10)
        self.assertEqual(self.responder.state, "announced")
        # A goodbye, or a record of a type we do not hold for the name, is no conflict.
        goodbye = self.other_srv().with_ttl(0)
        other_type = Record(INSTANCE, TYPE_A, 120, AddressData("192.0.2.1"), True)
        self.responder.handle_response(Packet(True, answers=(goodbye, other_type)), QUERIER)
        self.assertEqual(self.responder.state, "announced")

    def test_many_conflicts_slow_probing_down(self) -> None:
        self.probing()
        for _ in range(15):
            self.responder.handle_response(
                Packet(True, answers=(self.other_srv(self.responder.instance_name),)), QUERIER
            )
            self.clock.advance(0.25)
        self.take()
        self.clock.advance(4.7)
        self.assertEqual(self.take(), [])
        self.clock.advance(0.3)
        self.assertEqual(len(self.take()), 1)


class BrowserTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sent: Sent = []
        self.found: list[tuple[str, int, str | None]] = []
        self.browser = Browser(
            self.clock,
            lambda packet, destination: self.sent.append((packet, destination)),
            random.Random(2),
            node_id=NODE,
            network="main",
            pair="BTC/USD",
            found=lambda host, port, node_id: self.found.append((host, port, node_id)),
            max_instances=4,
        )

    def tearDown(self) -> None:
        self.browser.stop()

    def take(self) -> Sent:
        sent, self.sent = self.sent, []
        return sent

    def hear(self, packet: Packet, source: tuple[str, int] = ("192.0.2.20", 5353)) -> None:
        self.browser.handle_response(packet, source)


class BrowseQueryTests(BrowserTestCase):
    def query_times(self, until: float) -> list[float]:
        times: list[float] = []
        while self.clock.seconds() < until:
            self.clock.advance(1.0 if times else 0.01)
            for packet, destination in self.take():
                if Question(SERVICE_TYPE, TYPE_PTR) in packet.questions:
                    self.assertIsNone(destination)
                    times.append(self.clock.seconds())
        return times

    def test_back_off(self) -> None:
        self.browser.start()
        times = self.query_times(3 * 3600 + 7300)
        self.assertTrue(0.02 <= times[0] <= 0.13, times[0])
        gaps = [round(b - a) for a, b in zip(times, times[1:], strict=False)]
        self.assertEqual(gaps[:12], [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048])
        self.assertEqual(gaps[12:], [3600] * len(gaps[12:]))
        self.assertGreaterEqual(len(gaps[12:]), 2)
        self.assertLessEqual(max(gaps), MAX_INTERVAL)

    def test_known_answers(self) -> None:
        self.hear(announcement())
        self.browser.start()
        self.clock.advance(0.2)
        [(query, _)] = self.take()
        self.assertEqual([r.data for r in query.answers], [PTRData(PEER_INSTANCE)])
        self.assertGreater(query.answers[0].ttl, OTHER_TTL / 2)
        # Past half its TTL the PTR is no longer a known answer.
        self.clock.advance(OTHER_TTL / 2)
        queries = [p for p, _ in self.take() if Question(SERVICE_TYPE, TYPE_PTR) in p.questions]
        self.assertEqual(queries[-1].answers, ())

    def test_known_answers_split_with_tc(self) -> None:
        browser = Browser(
            self.clock, lambda p, d: self.sent.append((p, d)), random.Random(0),
            node_id=NODE, network="main", pair="BTC/USD", found=lambda *a: None,
        )  # fmt: skip
        for number in range(100):
            name = f"{number:040x}._bitfi._tcp.local."
            browser.handle_response(
                Packet(True, answers=(Record(SERVICE_TYPE, TYPE_PTR, 4500, PTRData(name)),)),
                QUERIER,
            )
        browser.start()
        self.clock.advance(0.2)
        browser.stop()
        packets = [
            p
            for p, _ in self.take()
            if p.answers or Question(SERVICE_TYPE, TYPE_PTR) in p.questions
        ]
        self.assertGreater(len(packets), 1)
        self.assertTrue(all(p.truncated for p in packets[:-1]))
        self.assertFalse(packets[-1].truncated)
        self.assertEqual(sum(len(p.answers) for p in packets), 100)
        self.assertTrue(all(len(encode_packet(p)) <= 1400 for p in packets))


class LearningTests(BrowserTestCase):
    def test_announcement_is_found_once(self) -> None:
        self.hear(announcement())
        self.assertEqual(self.found, [("192.0.2.20", 7000, PEER)])
        self.assertEqual(self.browser.discovered(), 1)
        self.hear(announcement())
        self.assertEqual(len(self.found), 1)
        self.clock.advance(2)
        self.hear(announcement(port=7001))
        self.assertEqual(self.found[-1], ("192.0.2.20", 7001, PEER))
        self.assertEqual(self.browser.discovered(), 1)

    def test_filters(self) -> None:
        cases = {
            "self": peer_txt(NODE),
            "net": peer_txt(net="test"),
            "pair": peer_txt(pair="ETH/USD"),
            "upper": peer_txt("B" * 40),
            "short": peer_txt("b" * 39),
            "missing": TXTData((b"net=main", b"pair=BTC/USD")),
        }
        for number, txt in enumerate(cases.values()):
            self.hear(announcement(instance=f"i{number}.{SERVICE_TYPE}", txt=txt))
        self.assertEqual(self.found, [])
        self.assertEqual(self.browser.discovered(), 0)
        self.assertEqual(self.take(), [])  # nothing to resolve either

    def test_other_service_types_are_ignored(self) -> None:
        self.hear(
            Packet(
                True,
                answers=(
                    Record("_http._tcp.local.", TYPE_PTR, 4500, PTRData("x._http._tcp.local.")),
                ),
            )
        )
        self.assertEqual(self.browser.instances, {})

    def test_resolve(self) -> None:
        full = announcement().answers
        self.hear(Packet(True, answers=full[:1]))
        [(query, destination)] = self.take()
        self.assertIsNone(destination)
        self.assertEqual(
            set(query.questions),
            {Question(PEER_INSTANCE, TYPE_SRV), Question(PEER_INSTANCE, TYPE_TXT)},
        )
        self.hear(Packet(True, answers=full[1:3]))
        [(query, _)] = self.take()
        self.assertEqual(
            query.questions, (Question(PEER_HOST, TYPE_A), Question(PEER_HOST, TYPE_AAAA))
        )
        self.assertEqual(self.found, [])
        self.hear(Packet(True, answers=full[3:]))
        self.assertEqual(self.found, [("192.0.2.20", 7000, PEER)])

    def test_resolve_gives_up_after_three_tries(self) -> None:
        self.browser.start()
        self.hear(Packet(True, answers=announcement().answers[:1]))
        self.clock.pump([1.0] * 30)
        resolves = [p for p, _ in self.take() if Question(PEER_INSTANCE, TYPE_SRV) in p.questions]
        self.assertEqual(len(resolves), 3)

    def test_address_preference_and_cache_flush(self) -> None:
        both = Packet(
            True,
            answers=(
                *announcement(address="192.0.2.30").answers,
                Record(PEER_HOST, TYPE_A, 120, AddressData("192.0.2.20"), True),
            ),
        )
        self.hear(both, ("192.0.2.20", 5353))
        self.assertEqual(self.found, [("192.0.2.20", 7000, PEER)])
        # A new address with the cache-flush bit replaces the old one after 1 s.
        self.clock.advance(2)
        self.hear(announcement(address="192.0.2.40"), ("192.0.2.40", 5353))
        self.assertEqual(self.found[-1], ("192.0.2.40", 7000, PEER))

    def test_goodbye_forgets(self) -> None:
        self.browser.start()
        self.hear(announcement())
        self.hear(announcement(ttl=0))
        self.clock.advance(2)
        self.assertEqual(self.browser.discovered(), 0)
        self.assertEqual(self.browser.instances, {})
        self.hear(announcement())
        self.assertEqual(len(self.found), 2)

    def test_refresh_then_expiry(self) -> None:
        self.browser.start()
        self.hear(announcement())
        self.clock.advance(0.2)
        self.take()
        self.clock.pump([1.0] * 100)
        refreshed = {q for p, _ in self.take() for q in p.questions}
        self.assertIn(Question(PEER_INSTANCE, TYPE_SRV), refreshed)
        self.assertIn(Question(PEER_HOST, TYPE_A), refreshed)
        self.assertEqual(self.browser.discovered(), 1)
        self.clock.pump([1.0] * 25)
        self.assertEqual(self.browser.discovered(), 0)
        self.assertEqual(self.browser.instances, {})

    def test_refreshed_record_stays(self) -> None:
        self.browser.start()
        self.hear(announcement())
        for _ in range(5):
            self.clock.pump([1.0] * 100)
            self.hear(announcement())
        self.assertEqual(self.browser.discovered(), 1)
        self.assertEqual(len(self.found), 1)

    def test_instance_cap(self) -> None:
        for number in range(10):
            peer = f"{number:040x}"
            self.hear(
                announcement(
                    instance=f"{peer}.{SERVICE_TYPE}", host=f"h{number}.local.", txt=peer_txt(peer)
                )
            )
        self.assertEqual(len(self.browser.instances), 4)
        self.assertEqual(len(self.found), 4)


def with_addresses(*addresses: str, host: str = PEER_HOST, ttl: int = HOST_TTL) -> Packet:
    """A peer's announcement whose host has C{addresses} (A and AAAA records)."""
    records = tuple(
        Record(host, TYPE_AAAA if ":" in a else TYPE_A, ttl, AddressData(a), True)
        for a in addresses
    )
    return Packet(True, answers=(*announcement().answers[:3], *records))


class AddressFamilyTests(BrowserTestCase):
    """Which of an instance's addresses are handed on."""

    def test_one_address_of_each_family(self) -> None:
        self.hear(with_addresses("fd00::20", "192.0.2.20", "2001:db8::20", "fe80::20"))
        self.assertEqual(self.found, [("192.0.2.20", 7000, PEER), ("fd00::20", 7000, PEER)])
        self.assertEqual(self.browser.discovered(), 1)
        # Heard again, over IPv6 this time: nothing new.
        self.hear(with_addresses("fd00::20", "192.0.2.20", "2001:db8::20"), ("fe80::20", 5353))
        self.assertEqual(len(self.found), 2)

    def test_ipv6_only_peer(self) -> None:
        self.hear(with_addresses("2001:db8::20"), ("fe80::20", 5353))
        self.assertEqual(self.found, [("2001:db8::20", 7000, PEER)])

    def test_source_address_preferred_in_each_family(self) -> None:
        both = with_addresses("192.0.2.30", "192.0.2.20", "fd00::30", "fd00::20")
        self.hear(both, ("fd00::20", 5353))
        self.hear(both, ("192.0.2.20", 5353))
        self.assertEqual(self.found, [("192.0.2.30", 7000, PEER), ("fd00::20", 7000, PEER),
                                      ("192.0.2.20", 7000, PEER)])  # fmt: skip

    def test_link_local_only_is_ignored_with_the_reason(self) -> None:
        self.addCleanup(set_log_level, log_level())
        set_log_level(LogLevel.debug)
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.browser.start()
        self.clock.advance(0.2)
        self.take()
        for _ in range(3):
            self.hear(with_addresses("fe80::20"), ("fe80::20", 5353))
        self.assertEqual(self.found, [])
        self.assertEqual(self.browser.discovered(), 0)
        reasons = [e["why"] for e in events if "why" in e]
        self.assertEqual(
            reasons, ["only link-local IPv6 addresses, not dialled without their zone"]
        )
        # Its addresses are known: no use asking for them again.
        self.clock.advance(3)
        asked = {q for p, _ in self.take() for q in p.questions}
        self.assertNotIn(Question(PEER_HOST, TYPE_A), asked)
        # A routable address makes it a candidate.
        self.hear(with_addresses("fe80::20", "fd00::20"), ("fe80::20", 5353))
        self.assertEqual(self.found, [("fd00::20", 7000, PEER)])

    def test_a_new_family_is_handed_on_alone(self) -> None:
        self.hear(with_addresses("192.0.2.20"))
        self.hear(Packet(True, answers=with_addresses("fd00::20").answers[3:]))
        self.assertEqual(self.found, [("192.0.2.20", 7000, PEER), ("fd00::20", 7000, PEER)])
        # An address that goes (cache flush: replaced a second later) is
        # not handed on again when it comes back.
        self.clock.advance(2)
        self.hear(with_addresses("192.0.2.20"))
        self.clock.advance(2)
        self.browser.maintain()
        self.assertEqual(len(self.found), 2)

    def test_prefer_ipv6(self) -> None:
        found: list[tuple[str, int, str | None]] = []
        browser = Browser(
            self.clock, lambda packet, destination: self.sent.append((packet, destination)),
            random.Random(2), node_id=NODE, network="main", pair="BTC/USD",
            found=lambda host, port, node_id: found.append((host, port, node_id)),
            prefer_ipv6=True,
        )  # fmt: skip
        browser.handle_response(Packet(True, answers=announcement().answers[:3]), QUERIER)
        [(query, _)] = self.take()
        self.assertEqual(
            query.questions[-2:], (Question(PEER_HOST, TYPE_AAAA), Question(PEER_HOST, TYPE_A))
        )
        browser.handle_response(with_addresses("192.0.2.20", "fd00::20"), QUERIER)
        self.assertEqual(found, [("fd00::20", 7000, PEER), ("192.0.2.20", 7000, PEER)])


MARKETS16 = tuple(f"{n:012X}/USDTUSDTUSDT" for n in range(16))


class MarketsTXTTests(SynchronousTestCase):
    """TXT ``pair`` + ``markets`` (split at 255 bytes), and reading them back."""

    def test_one_market(self) -> None:
        txt = instance_txt(NODE, "main", ["BTC/USD"], 4)
        self.assertEqual(
            txt.strings,
            (b"id=" + NODE.encode(), b"net=main", b"pair=BTC/USD", b"markets=BTC/USD", b"v=4"),
        )
        self.assertEqual(instance_markets(parse_txt(txt)), ("BTC/USD",))

    def test_without_markets_the_pair(self) -> None:
        """An instance from before markets carries its pair alone; one with neither, nothing."""
        self.assertEqual(instance_markets(parse_txt(peer_txt(pair="ETH/USD"))), ("ETH/USD",))
        self.assertEqual(instance_markets(parse_txt(TXTData((b"net=main",)))), ())
        both = TXTData((b"pair=BTC/USD", b"markets=BTC/USD,ETH/USD,,BTC/USD"))
        self.assertEqual(instance_markets(parse_txt(both)), ("BTC/USD", "ETH/USD"))

    def test_split_at_255_bytes(self) -> None:
        """16 long markets: ``markets`` and ``markets1``, each string at most 255 bytes."""
        txt = instance_txt(NODE, "main", MARKETS16, 4)
        self.assertTrue(all(len(string) <= TXT_STRING for string in txt.strings))
        pairs = parse_txt(txt)
        self.assertEqual(pairs["pair"], MARKETS16[0].encode())
        self.assertEqual([key for key in pairs if key.startswith("markets")],
                         ["markets", "markets1"])  # fmt: skip
        # Packed greedily: the next market would not have fitted in the first string.
        first = (pairs["markets"] or b"").split(b",")
        self.assertGreater(len(b"markets=" + b",".join([*first, b"X" * 25])), TXT_STRING)
        self.assertEqual(instance_markets(pairs), MARKETS16)
        # Encoded and decoded by the codec, as a browser receives it.
        record = Record(PEER_INSTANCE, TYPE_TXT, 4500, txt)
        [decoded] = decode_packet(encode_packet(Packet(True, answers=(record,)))).answers
        assert isinstance(decoded.data, TXTData)
        self.assertEqual(instance_markets(parse_txt(decoded.data)), MARKETS16)

    def test_split_read_in_order_until_a_gap(self) -> None:
        txt = TXTData((b"markets1=B/C", b"markets=A/B", b"markets3=X/Y"))
        self.assertEqual(instance_markets(parse_txt(txt)), ("A/B", "B/C"))

    def test_bad_markets(self) -> None:
        self.assertRaises(ValueError, instance_txt, NODE, "main", [], 4)
        self.assertRaises(ValueError, instance_txt, NODE, "main", ["BTC/USD,ETH/USD"], 4)
        self.assertRaises(ValueError, instance_txt, NODE, "main", ["X" * 250], 4)


def market_txt(markets: str | None, pair: str = "BTC/USD", node_id: str = PEER) -> TXTData:
    """A peer's TXT with C{markets} (none when ``None``) beside C{pair}."""
    listed = {} if markets is None else {"markets": markets}
    return make_txt({"id": node_id, "net": "main", "pair": pair, **listed, "v": "4"})


class MarketBrowserTests(SynchronousTestCase):
    """A browser given our markets: instances are handed on with the markets they share."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.found: list[tuple[str, int, str | None, tuple[str, ...]]] = []
        self.browser = Browser(
            self.clock, lambda packet, destination: None, random.Random(2), node_id=NODE,
            network="main", markets=("ETH/USD", "BTC/USD"),
            found=lambda host, port, node_id, markets: self.found.append(
                (host, port, node_id, markets)
            ),
        )  # fmt: skip

    def hear(self, txt: TXTData, number: int = 0, address: str = "192.0.2.20") -> None:
        node_id = f"{number + 1:040x}"
        self.browser.handle_response(
            announcement(
                instance=f"{node_id}.{SERVICE_TYPE}",
                host=f"h{number}.local.",
                address=address,
                txt=make_txt({**{k: (v or b"").decode() for k, v in parse_txt(txt).items()},
                              "id": node_id}),
            ),
            (address, 5353),
        )  # fmt: skip

    def test_arguments(self) -> None:
        forms: list[dict[str, Any]] = [{}, {"pair": "BTC/USD", "markets": ("BTC/USD",)}]
        for arguments in forms:
            with self.assertRaises(ValueError):
                Browser(self.clock, lambda p, d: None, random.Random(0), node_id=NODE,
                        network="main", found=lambda *a: None, **arguments)  # fmt: skip

    def test_old_style_instance_matched_by_pair(self) -> None:
        self.hear(market_txt(None, pair="BTC/USD"))
        self.assertEqual(self.found, [("192.0.2.20", 7000, f"{1:040x}", ("BTC/USD",))])

    def test_shared_markets_in_our_order(self) -> None:
        self.hear(market_txt("BTC/USD,LTC/USD,ETH/USD"))
        self.assertEqual(self.found, [("192.0.2.20", 7000, f"{1:040x}", ("ETH/USD", "BTC/USD"))])

    def test_no_shared_market_dropped(self) -> None:
        self.hear(market_txt("LTC/USD,XRP/USD", pair="LTC/USD"))
        self.hear(market_txt(None, pair="LTC/USD"), number=1)
        self.assertEqual(self.found, [])
        self.assertEqual(
            {instance.ignored for instance in self.browser.instances.values()},
            {"no shared market"},
        )
        self.assertEqual(self.browser.discovered(), 0)

    def test_markets_listed_win_over_the_pair(self) -> None:
        """With ``markets`` present, ``pair`` is only its first entry, not read again."""
        self.hear(market_txt("LTC/USD", pair="BTC/USD"))
        self.assertEqual(self.found, [])

    def test_split_markets(self) -> None:
        """A market of ours in ``markets1`` is found."""
        self.hear(TXTData((b"id=x", b"net=main", b"pair=A/B",
                           b"markets=A/B,C/D", b"markets1=E/F,BTC/USD")))  # fmt: skip
        self.assertEqual([found[3] for found in self.found], [("BTC/USD",)])

    def test_discovered_by_market(self) -> None:
        self.hear(market_txt("ETH/USD,BTC/USD"), number=0, address="192.0.2.20")
        self.hear(market_txt(None, pair="BTC/USD"), number=1, address="192.0.2.21")
        self.hear(market_txt("LTC/USD"), number=2, address="192.0.2.22")
        self.assertEqual(self.browser.discovered(), 2)
        self.assertEqual(self.browser.discovered_by_market(), {"ETH/USD": 1, "BTC/USD": 2})

    def test_changed_markets_handed_on_again(self) -> None:
        """A TXT whose shared markets change is handed on again; one that shares none is dropped."""
        self.hear(market_txt("BTC/USD"))
        self.clock.advance(2)
        self.hear(market_txt("BTC/USD,ETH/USD"))
        self.assertEqual([found[3] for found in self.found],
                         [("BTC/USD",), ("ETH/USD", "BTC/USD")])  # fmt: skip
        self.clock.advance(2)
        self.hear(market_txt("LTC/USD"))
        self.assertEqual(len(self.found), 2)
        self.assertEqual(self.browser.discovered_by_market(), {"ETH/USD": 0, "BTC/USD": 0})


class FakeIPv6Port(RecordingUDPTransport):
    """The IPv6 mDNS socket, faked: a RecordingUDPTransport that records joins."""

    def __init__(self, port: int, refuse: Collection[int] = ()) -> None:
        super().__init__("::", port)
        self.indexes: list[int] = []
        self.refuse = set(refuse)

    def join(self, index: int) -> None:
        if index in self.refuse:
            raise OSError(errno.ENODEV, "No such device")
        self.indexes.append(index)


class FakeMulticastReactor(Clock):
    """
    A Clock that also listens on multicast, with RecordingUDPTransports;
    :meth:`listen6` stands for :func:`~bitfitech.discovery.mdns.ipv6.listen_ipv6`.
    """

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.fail6: OSError | None = None
        self.refuse6: set[int] = set()
        self.listened: list[tuple[int, Any, dict[str, Any]]] = []
        self.transports: list[RecordingUDPTransport] = []
        self.ipv6: list[FakeIPv6Port] = []
        self.protocols6: list[Any] = []

    def listen6(self, port: int, protocol: Any, max_packet_size: int) -> FakeIPv6Port:
        if self.fail6 is not None:
            raise self.fail6
        transport = FakeIPv6Port(port, self.refuse6)
        self.ipv6.append(transport)
        self.protocols6.append(protocol)
        protocol.makeConnection(transport)
        return transport

    def listenMulticast(self, port: int, protocol: Any, **kw: Any) -> RecordingUDPTransport:
        if self.fail:
            raise CannotListenError("", port, OSError("in use"))
        self.listened.append((port, protocol, kw))
        transport = RecordingUDPTransport("0.0.0.0", port)
        self.transports.append(transport)
        protocol.makeConnection(transport)
        return transport


ADAPTERS = [
    Adapter(1, (("127.0.0.1", 8), ("::1", 128)), "lo"),
    Adapter(2, (("192.0.2.10", 24), ("fd00::10", 64), ("fe80::1", 64)), "eth0"),
]


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(service_module, "_adapters", lambda: ADAPTERS)
        self.reactor = FakeMulticastReactor()
        self.found: list[tuple[str, int, str | None]] = []

    def service(self, interface: str | None = "127.0.0.1", **kw: Any) -> MDNSService:
        return MDNSService(
            self.reactor,
            node_id=NODE,
            network="main",
            pair="BTC/USD",
            version=3,
            p2p_port=lambda: 9000,
            found=lambda *args: self.found.append(args),
            interface=interface,
            rng=random.Random(0),
            listen6=self.reactor.listen6,
            **kw,
        )

    def test_start_and_stop(self) -> None:
        service = self.service()
        self.assertEqual(service.status()["discovered"], 0)
        service.startService()
        [(port, protocol, kw)] = self.reactor.listened
        self.assertEqual((port, kw["listenMultiple"]), (5353, True))
        transport = self.reactor.transports[0]
        self.assertEqual(transport.groups, [(MDNS_GROUP, "127.0.0.1")])
        self.assertEqual((transport.ttl, transport.loopback_mode), (255, 1))
        self.assertEqual(transport.outgoing_interface, "127.0.0.1")
        self.assertEqual(
            service.status(),
            {
                "interface": "127.0.0.1",
                "families": ["ipv4"],
                "instance": INSTANCE,
                "discovered": 0,
                "discovered_by_market": {"BTC/USD": 0},
            },
        )
        self.reactor.pump([0.25] * 20)
        packets = [decode_packet(data) for data, _ in transport.clear()]
        announced = [p for p in packets if p.response]
        addresses = {r.data for p in announced for r in p.answers if r.rtype in (TYPE_A, TYPE_AAAA)}
        self.assertEqual(addresses, {AddressData("127.0.0.1")})
        txt = next(r.data for r in announced[0].answers if r.rtype == TYPE_TXT)
        assert isinstance(txt, TXTData)
        self.assertEqual(
            parse_txt(txt),
            {
                "id": NODE.encode(),
                "net": b"main",
                "pair": b"BTC/USD",
                "markets": b"BTC/USD",
                "v": b"3",
            },
        )
        d = service.stopService()
        self.successResultOf(d)
        [(goodbye, destination)] = transport.clear()
        self.assertEqual(destination, GROUP)
        self.assertEqual({r.ttl for r in decode_packet(goodbye).answers}, {0})
        self.assertFalse(transport.listening)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(service.running)

    def test_all_interfaces(self) -> None:
        """Both families: IPv4 on every address, IPv6 on every interface but loopback."""
        service = self.service(None)
        service.startService()
        transport = self.reactor.transports[0]
        self.assertEqual(transport.groups, [(MDNS_GROUP, "127.0.0.1"), (MDNS_GROUP, "192.0.2.10")])
        [transport6] = self.reactor.ipv6
        self.assertEqual(transport6.indexes, [2])
        self.assertEqual(service.status()["interface"], "all")
        self.assertEqual(service.status()["families"], ["ipv4", "ipv6"])
        self.assertEqual(service.protocol and service.protocol.interfaces, ("192.0.2.10",))
        self.reactor.pump([0.25] * 20)
        for sent in (transport.clear(), transport6.clear()):
            answers = [r for data, _ in sent for r in decode_packet(data).answers]
            addresses = {r.data for r in answers if r.rtype in (TYPE_A, TYPE_AAAA)}
            self.assertEqual(addresses, {AddressData("192.0.2.10"), AddressData("fd00::10")})
        self.successResultOf(service.stopService())
        self.assertFalse(transport6.listening)

    def test_all_interfaces_sends_on_each(self) -> None:
        two = [*ADAPTERS, Adapter(3, (("198.51.100.5", 24),), "eth1")]
        self.patch(service_module, "_adapters", lambda: two)
        service = self.service(None)
        service.startService()
        transport = self.reactor.transports[0]
        self.reactor.pump([0.05] * 20)
        written = [data for data, _ in transport.clear()]
        self.assertTrue(written)
        self.assertEqual(written[0::2], written[1::2], "each datagram sent twice")
        self.assertEqual(transport.outgoing_interface, "198.51.100.5")
        self.successResultOf(service.stopService())

    def test_local_addresses(self) -> None:
        one = local_addresses("192.0.2.10", ADAPTERS)
        self.assertEqual(one.join, ("192.0.2.10",))
        self.assertEqual(one.advertised, ("192.0.2.10", "fd00::10"))
        self.assertEqual([str(n) for n in one.networks], ["192.0.2.0/24"])
        self.assertEqual(one.join6, ())
        lonely = local_addresses(None, [Adapter(1, (("127.0.0.1", 8),), "lo")])
        self.assertEqual((lonely.join, lonely.advertised), (("127.0.0.1",), ("127.0.0.1",)))
        self.assertEqual(lonely.join6, ())
        self.assertRaises(MDNSError, local_addresses, "eth0", ADAPTERS)

    def test_local_addresses_every_interface(self) -> None:
        """IPv6 joins every interface with an IPv6 address, loopback only when alone."""
        every = local_addresses(None, ADAPTERS)
        self.assertEqual(every.join, ("127.0.0.1", "192.0.2.10"))
        self.assertEqual(every.join6, (2,))
        # Global and unique-local IPv6 addresses only: no loopback, no link-local.
        self.assertEqual(every.advertised, ("192.0.2.10", "fd00::10"))
        self.assertEqual(every.networks, ())
        link_only = [ADAPTERS[0], Adapter(3, (("fe80::3", 64),), "wlan0")]
        self.assertEqual(local_addresses(None, link_only).join6, (3,))
        self.assertEqual(local_addresses(None, ADAPTERS[:1]).join6, (1,))

    def test_local_addresses_ipv6_interface(self) -> None:
        """An IPv6 interface address: that interface, in IPv6 only."""
        one = local_addresses("fd00::10", ADAPTERS)
        self.assertEqual((one.join, one.join6), ((), (2,)))
        # The same adapter's IPv4 address is advertised too, as an IPv4
        # interface's IPv6 addresses are.
        self.assertEqual(one.advertised, ("fd00::10", "192.0.2.10"))
        self.assertEqual([str(n) for n in one.networks], ["fd00::/64", "fe80::/10"])
        loopback = local_addresses("::1", ADAPTERS)
        self.assertEqual((loopback.join6, loopback.advertised), ((1,), ("::1",)))
        self.assertEqual(local_addresses("FD00:0::10", ADAPTERS).advertised[0], "fd00::10")
        # A link-local address, with or without its zone (name or index).
        for text in ("fe80::1", "fe80::1%eth0", "fe80::1%2"):
            zoned = local_addresses(text, ADAPTERS)
            self.assertEqual((zoned.join6, zoned.advertised), ((2,), ("fe80::1", "192.0.2.10")))
        self.assertRaises(MDNSError, local_addresses, "fe80::1%wlan0", ADAPTERS)
        error = self.assertRaises(MDNSError, local_addresses, "fd00::99", ADAPTERS)
        self.assertIn("fd00::99", str(error))

    def test_ipv6_interface_runs_ipv6_only(self) -> None:
        service = self.service("fd00::10")
        service.startService()
        self.assertEqual(self.reactor.listened, [])
        [transport6] = self.reactor.ipv6
        self.assertEqual(transport6.indexes, [2])
        self.assertEqual(service.status()["families"], ["ipv6"])
        self.assertEqual(service.status()["interface"], "fd00::10")
        self.reactor.pump([0.25] * 20)
        sent = transport6.clear()
        self.assertTrue(sent)
        # Every multicast goes to ff02::fb on the interface's index.
        self.assertEqual({destination for _, destination in sent}, {(MDNS_GROUP6, 5353, 0, 2)})
        answers = [r for data, _ in sent for r in decode_packet(data).answers]
        addresses = {r.data for r in answers if r.rtype in (TYPE_A, TYPE_AAAA)}
        self.assertEqual(addresses, {AddressData("fd00::10"), AddressData("192.0.2.10")})
        self.successResultOf(service.stopService())
        self.assertFalse(transport6.listening)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_without_ipv6_all_interfaces_runs_ipv4(self) -> None:
        """A host without IPv6: IPv4 only, and said; with an IPv6 interface: an error."""
        self.reactor.fail6 = OSError(errno.EAFNOSUPPORT, "Address family not supported")
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        service = self.service(None)
        service.startService()
        self.assertEqual(service.status()["families"], ["ipv4"])
        [problem] = [e["problem"] for e in events if "problem" in e]
        self.assertIn("cannot open the IPv6 mDNS socket on UDP port 5353", problem)
        self.successResultOf(service.stopService())
        error = self.assertRaises(MDNSError, self.service("fd00::10").startService)
        self.assertIn("IPv6", str(error))

    def test_ipv6_join_failures(self) -> None:
        self.reactor.refuse6 = {2}
        service = self.service("fd00::10")
        error = self.assertRaises(MDNSError, service.startService)
        self.assertIn(MDNS_GROUP6, str(error))
        self.assertFalse(self.reactor.ipv6[0].listening)
        self.assertFalse(service.running)
        # With all interfaces, IPv4 goes on alone.
        dual = self.service(None)
        dual.startService()
        self.assertEqual(dual.status()["families"], ["ipv4"])
        self.successResultOf(dual.stopService())

    def test_sends_on_its_family(self) -> None:
        """Multicasts go out on both sockets; a unicast on its address's family."""
        two = [*ADAPTERS, Adapter(3, (("fd01::3", 64), ("fe80::3", 64)), "eth1")]
        self.patch(service_module, "_adapters", lambda: two)
        service = self.service(None)
        service.startService()
        self.reactor.pump([0.25] * 40)
        transport, transport6 = self.reactor.transports[0], self.reactor.ipv6[0]
        self.assertEqual(transport6.indexes, [2, 3])
        v4, v6 = transport.clear(), transport6.clear()
        self.assertEqual(
            [d for d, _ in v6][0::2], [d for d, _ in v4], "each multicast on both families"
        )
        self.assertEqual(
            [a for _, a in v6][:2], [(MDNS_GROUP6, 5353, 0, 2), (MDNS_GROUP6, 5353, 0, 3)]
        )
        protocol6 = self.reactor.protocols6[0]
        legacy = encode_packet(Packet(False, (Question(INSTANCE, TYPE_SRV),), id=9))
        # A link-local source's zone is lost: the answer is tried on each interface.
        protocol6.datagramReceived(legacy, ("fe80::99", 40000))
        self.assertEqual(
            [a for _, a in transport6.clear()],
            [("fe80::99", 40000, 0, 2), ("fe80::99", 40000, 0, 3)],
        )
        protocol6.datagramReceived(legacy, ("fd00::99", 40000))
        self.assertEqual([a for _, a in transport6.clear()], [("fd00::99", 40000)])
        self.assertEqual(transport.clear(), [])
        self.successResultOf(service.stopService())

    def test_ipv6_protocol_filters(self) -> None:
        """An IPv6 interface's socket takes its networks' packets and link-local ones."""
        handled: list[tuple[str, int]] = []
        protocol = MDNSProtocol(
            lambda packet, source: handled.append(source),
            networks=local_addresses("fd00::10", ADAPTERS).networks,
            ipv6=True,
            indexes=(2,),
        )
        protocol.makeConnection(FakeIPv6Port(5353))
        response = encode_packet(announcement())
        for source in ("fd00::20", "fe80::20", "fd01::20", "2001:db8::1"):
            protocol.datagramReceived(response, (source, 5353))
        self.assertEqual(handled, [("fd00::20", 5353), ("fe80::20", 5353)])
        self.assertEqual(protocol.dropped, 2)

    def test_cannot_listen(self) -> None:
        self.reactor.fail = True
        service = self.service()
        error = self.assertRaises(MDNSError, service.startService)
        self.assertIn("5353", str(error))
        self.assertFalse(service.running)

    def test_rejects_bad_node_id(self) -> None:
        self.assertRaises(
            ValueError,
            MDNSService,
            self.reactor,
            node_id="XYZ",
            network="m",
            pair="p",
            version=1,
            p2p_port=lambda: 1,
            found=lambda *a: None,
        )

    def test_markets_or_pair(self) -> None:
        """markets, or the older pair: one of them."""
        forms: list[dict[str, Any]] = [{}, {"pair": "BTC/USD", "markets": ("BTC/USD",)}]
        for form in forms:
            with self.assertRaises(ValueError):
                MDNSService(self.reactor, node_id=NODE, network="m", version=1,
                            p2p_port=lambda: 1, found=lambda *a: None, **form)  # fmt: skip

    def test_finds_a_peer_and_answers_a_browser(self) -> None:
        service = self.service()
        service.startService()
        protocol = self.reactor.listened[0][1]
        self.reactor.pump([0.25] * 40)
        transport = self.reactor.transports[0]
        transport.clear()
        protocol.datagramReceived(
            encode_packet(announcement(address="127.0.0.2")), ("127.0.0.2", 5353)
        )
        self.assertEqual(self.found, [("127.0.0.2", 7000, PEER)])
        self.assertEqual(service.status()["discovered"], 1)
        query = Packet(False, (Question(SERVICE_TYPE, TYPE_PTR),))
        protocol.datagramReceived(encode_packet(query), ("127.0.0.2", 5353))
        self.reactor.advance(0.2)
        [(data, destination)] = transport.clear()
        self.assertEqual(destination, GROUP)
        self.assertEqual(decode_packet(data).answers[0].data, PTRData(INSTANCE))
        self.successResultOf(service.stopService())

    def test_protocol_filters(self) -> None:
        handled: list[Packet] = []
        protocol = MDNSProtocol(
            lambda packet, source: handled.append(packet),
            networks=local_addresses("127.0.0.1", ADAPTERS).networks,
        )
        protocol.makeConnection(RecordingUDPTransport())
        response = encode_packet(announcement())
        protocol.datagramReceived(response, ("127.0.0.2", 40000))  # response not from 5353
        protocol.datagramReceived(response, ("192.0.2.20", 5353))  # off the interface's network
        protocol.datagramReceived(response + b"\0" * MAX_PACKET, ("127.0.0.2", 5353))
        protocol.datagramReceived(b"\xff" * 12, ("127.0.0.2", 5353))  # opcode 15
        protocol.datagramReceived(b"junk", ("127.0.0.2", 5353))
        self.assertEqual((handled, protocol.dropped), ([], 5))
        protocol.datagramReceived(response, ("127.0.0.2", 5353))
        self.assertEqual(len(handled), 1)

    @given(st.lists(st.tuples(st.binary(max_size=300), st.booleans()), max_size=20), st.data())
    @settings(max_examples=150)
    def test_datagram_received_never_raises(
        self, datagrams: list[tuple[bytes, bool]], data: st.DataObject
    ) -> None:
        reactor = FakeMulticastReactor()
        service = MDNSService(
            reactor, node_id=NODE, network="main", pair="BTC/USD", version=1,
            p2p_port=lambda: 9000, found=lambda *a: None, interface="127.0.0.1",
            rng=random.Random(0),
        )  # fmt: skip
        service.startService()
        protocol = reactor.listened[0][1]
        failures: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if "log_failure" in event:
                failures.append(event)

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        valid = [
            encode_packet(announcement()),
            encode_packet(Packet(False, (Question(INSTANCE, TYPE_ANY),))),
        ]
        for raw, mutate in datagrams:
            if mutate:
                base = bytearray(valid[len(raw) % 2])
                for byte in raw[:8]:
                    base[byte % len(base)] = byte
                raw = bytes(base[: data.draw(st.integers(0, len(base)))])
            source = ("127.0.0.2", 5353 if len(raw) % 3 else 40000)
            protocol.datagramReceived(raw, source)
            reactor.advance(0.2)
        reactor.pump([1.0] * 5)
        self.successResultOf(service.stopService())
        globalLogPublisher.removeObserver(observer)
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(failures, [], "an exception was caught in datagramReceived")


class HubTransport(RecordingUDPTransport):
    """
    A RecordingUDPTransport whose group writes reach every member of a hub
    of its family (the IPv6 one also records the interfaces it joins).
    """

    def __init__(self, hub: MulticastHub, host: str, port: int) -> None:
        super().__init__(host, port)
        self.hub = hub
        self.protocol: Any = None
        self.indexes: list[int] = []

    def write(self, packet: bytes, addr: tuple[str, int] | None = None) -> None:
        super().write(packet, addr)
        assert addr is not None
        self.hub.deliver(packet, (self.host, self.port), addr)

    def join(self, index: int) -> None:
        self.indexes.append(index)


class MulticastHub:
    """
    An in-memory link: each family's group reaches every port of that
    family (the sender's too); a unicast reaches its address.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.members: list[HubTransport] = []

    def deliver(self, packet: bytes, source: tuple[str, int], addr: tuple[Any, ...]) -> None:
        group = {MDNS_GROUP: False, MDNS_GROUP6: True}.get(addr[0])
        for member in list(self.members):
            if not member.listening:
                continue
            if group is not None:
                # Each IPv6 multicast names one interface: each host is on one here.
                reached = (":" in member.host) == group
            else:
                reached = (member.host, member.port) == addr[:2]
            if reached:
                self.clock.callLater(0.001, member.protocol.datagramReceived, packet, source)


class HubReactor(Clock):
    """A Clock with a hub for both families; the next socket opened has C{next_host}(6)."""

    def __init__(self) -> None:
        super().__init__()
        self.hub = MulticastHub(self)
        self.next_host = "127.0.0.1"
        self.next_host6 = "fe80::1"

    def _member(self, host: str, port: int, protocol: Any) -> HubTransport:
        transport = HubTransport(self.hub, host, port)
        transport.protocol = protocol
        self.hub.members.append(transport)
        protocol.makeConnection(transport)
        return transport

    def listenMulticast(self, port: int, protocol: Any, **kw: Any) -> HubTransport:
        return self._member(self.next_host, port, protocol)

    def listen6(self, port: int, protocol: Any, max_packet_size: int) -> HubTransport:
        return self._member(self.next_host6, port, protocol)


class TwoNodeTests(SynchronousTestCase):
    """Two services on one in-memory link."""

    def setUp(self) -> None:
        self.patch(service_module, "_adapters", lambda: [Adapter(1, (("127.0.0.1", 8),), "lo")])
        self.reactor = HubReactor()
        self.found: dict[int, list[tuple[str, int, str | None]]] = {}

    def service(
        self, number: int, node_id: str, markets: tuple[str, ...] | None = None
    ) -> MDNSService:
        found = self.found.setdefault(number, [])
        form: dict[str, Any] = {"pair": "BTC/USD"} if markets is None else {"markets": markets}
        service = MDNSService(
            self.reactor, node_id=node_id, network="main", version=1,
            p2p_port=lambda: 9000 + number, found=lambda *args: found.append(args),
            interface="127.0.0.1", rng=random.Random(number), **form,
        )  # fmt: skip
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_discover_each_other(self) -> None:
        self.service(0, NODE)
        self.service(1, PEER)
        self.reactor.pump([0.05] * 40)
        self.assertEqual(self.found[0], [("127.0.0.1", 9001, PEER)])
        self.assertEqual(self.found[1], [("127.0.0.1", 9000, NODE)])

    def test_same_node_id_twice_renames_the_newcomer(self) -> None:
        first = self.service(0, NODE)
        self.reactor.pump([0.05] * 100)
        second = self.service(1, NODE)
        self.reactor.pump([0.05] * 100)
        self.assertEqual(first.status()["instance"], INSTANCE)
        self.assertEqual(second.status()["instance"], f"{NODE} (2).{SERVICE_TYPE}")
        # Both are ourselves to each other: nobody is handed on.
        self.assertEqual(self.found, {0: [], 1: []})

    def test_markets(self) -> None:
        """Nodes that share a market find each other, with it; a node of another market, nobody."""
        third = "c" * 40
        both = self.service(0, NODE, ("BTC/USD", "ETH/USD"))
        self.service(1, PEER, ("ETH/USD",))
        alone = self.service(2, third, ("LTC/USD",))
        # A node from before markets: TXT ``pair`` only, and found without markets.
        old = self.service(3, "d" * 40)
        self.reactor.pump([0.05] * 40)
        self.assertEqual(
            sorted(self.found[0]),
            [("127.0.0.1", 9001, PEER, ("ETH/USD",)), ("127.0.0.1", 9003, "d" * 40, ("BTC/USD",))],
        )
        self.assertEqual(self.found[1], [("127.0.0.1", 9000, NODE, ("ETH/USD",))])
        self.assertEqual(self.found[2], [])
        self.assertEqual(self.found[3], [("127.0.0.1", 9000, NODE)])
        self.assertEqual(both.status()["discovered_by_market"], {"BTC/USD": 1, "ETH/USD": 1})
        self.assertEqual(alone.status()["discovered"], 0)
        self.assertEqual(old.status()["discovered_by_market"], {"BTC/USD": 1})


def host_adapters(number: int) -> list[Adapter]:
    """Host C{number}'s adapters: loopback, and one on the LAN of both families."""
    return [
        Adapter(1, (("127.0.0.1", 8), ("::1", 128)), "lo"),
        Adapter(2, ((f"192.0.2.{10 + number}", 24), (f"fd00::{10 + number}", 64),
                    (f"fe80::{10 + number}", 64)), "eth0"),
    ]  # fmt: skip


class DualStackTests(SynchronousTestCase):
    """Services on hosts of their own, on one in-memory link of both families."""

    def setUp(self) -> None:
        self.reactor = HubReactor()
        self.found: dict[int, list[tuple[str, int, str | None, tuple[str, ...]]]] = {}

    def service(self, number: int, node_id: str, interface: str | None = None) -> MDNSService:
        """Start host C{number}'s service (C{interface}: ``v4``/``v6`` for its LAN address)."""
        self.patch(service_module, "_adapters", lambda: host_adapters(number))
        self.reactor.next_host = f"192.0.2.{10 + number}"
        self.reactor.next_host6 = f"fe80::{10 + number}"
        address = {None: None, "v4": f"192.0.2.{10 + number}", "v6": f"fd00::{10 + number}"}
        found = self.found.setdefault(number, [])
        service = MDNSService(
            self.reactor, node_id=node_id, network="main", version=1, markets=("BTC/USD",),
            p2p_port=lambda: 9000 + number, found=lambda *args: found.append(args),
            interface=address[interface], rng=random.Random(number),
            listen6=self.reactor.listen6,
        )  # fmt: skip
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_dual_stack_nodes_find_both_addresses(self) -> None:
        services = [self.service(0, NODE), self.service(1, PEER)]
        self.reactor.pump([0.05] * 60)
        market = ("BTC/USD",)
        self.assertEqual(self.found[0], [("192.0.2.11", 9001, PEER, market),
                                         ("fd00::11", 9001, PEER, market)])  # fmt: skip
        self.assertEqual(self.found[1], [("192.0.2.10", 9000, NODE, market),
                                         ("fd00::10", 9000, NODE, market)])  # fmt: skip
        for service in services:
            self.assertEqual(service.status()["families"], ["ipv4", "ipv6"])
            self.assertEqual(service.status()["discovered"], 1)
            assert service.protocol is not None and service.protocol6 is not None
            self.assertGreater(service.protocol.received, 0)
            self.assertGreater(service.protocol6.received, 0)

    def test_one_family_nodes_meet_a_dual_stack_one(self) -> None:
        """An IPv4-only and an IPv6-only node both find the dual-stack one, and it both."""
        self.service(0, NODE)
        self.service(1, PEER, "v4")
        self.service(2, "c" * 40, "v6")
        self.reactor.pump([0.05] * 60)
        market = ("BTC/USD",)
        self.assertEqual(sorted(self.found[0]), [
            ("192.0.2.11", 9001, PEER, market), ("192.0.2.12", 9002, "c" * 40, market),
            ("fd00::11", 9001, PEER, market), ("fd00::12", 9002, "c" * 40, market),
        ])  # fmt: skip
        # IPv6 only: the IPv6 address first.
        self.assertEqual(self.found[2], [("fd00::10", 9000, NODE, market),
                                         ("192.0.2.10", 9000, NODE, market)])  # fmt: skip
        self.assertEqual(self.found[1], [("192.0.2.10", 9000, NODE, market),
                                         ("fd00::10", 9000, NODE, market)])  # fmt: skip

    def test_ipv6_only_nodes(self) -> None:
        first = self.service(0, NODE, "v6")
        self.service(1, PEER, "v6")
        self.reactor.pump([0.05] * 60)
        self.assertEqual([f[0] for f in self.found[0]], ["fd00::11", "192.0.2.11"])
        self.assertEqual([f[0] for f in self.found[1]], ["fd00::10", "192.0.2.10"])
        self.assertIsNone(first.protocol)
        transport6 = self.reactor.hub.members[0]
        self.assertEqual(transport6.indexes, [2])
        self.assertEqual({addr for _, addr in transport6.written}, {(MDNS_GROUP6, 5353, 0, 2)})


class InterfaceOptionTests(SynchronousTestCase):
    """``--mdns-interface`` takes an IPv4 or an IPv6 interface address."""

    def test_coerce_interface(self) -> None:
        cases = {
            "192.0.2.5": "192.0.2.5",
            " 127.0.0.1 ": "127.0.0.1",
            "::1": "::1",
            "FD00:0::5": "fd00::5",
            "[fd00::5]": "fd00::5",
            "fe80::1%eth0": "fe80::1%eth0",
        }
        for text, expected in cases.items():
            self.assertEqual(coerce_interface(text), expected)
            options = Options()
            options.environ = {"XDG_DATA_HOME": "/xdg-data"}
            options.parseOptions(["--mdns-interface", text])
            assert options.config is not None
            self.assertEqual(options.config.mdns_interface, expected)
        for text in ("eth0", "", "fe80::1%bad zone", "[::1]:3000", "192.0.2.5:53"):
            self.assertRaises(ValueError, coerce_interface, text)
