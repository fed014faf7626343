"""Tests for bitfitech.peer.hub: links admitted, deduplicated and sharing addresses, over iosim."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.address import PeerAddress
from bitfitech.logs import log_level, set_log_level
from bitfitech.peer.addrbook import SHARE_WINDOW, AddressBook
from bitfitech.peer.bans import BanList
from bitfitech.peer.hub import FEELER_TIMEOUT, REASON_NO_SHARED_MARKET, RELAY_FANOUT, PeerHub
from bitfitech.peer.misbehaviour import MALFORMED_EVENT, RATE_EXCEEDED, VIOLATION
from bitfitech.peer.protocol import REASON_DUPLICATE, PeerProtocol
from bitfitech.storage import Storage
from bitfitech.testing import TEST_PAIR, frame_of, local_node, node_id_of, version_of
from bitfitech.wire.framing import FrameDecoder, network_magic
from bitfitech.wire.messages import Addr, GetAddr, Message, NetAddress, Verack, decode_message


class Net:
    """Several hubs on one clock, linked pairwise through iosim pumps."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.hubs: dict[int, PeerHub] = {}
        self.pumps: list[object] = []

    def hub(
        self, n: int, *, max_peers: int = 10, max_inbound: int = 5,
        markets: tuple[str, ...] = (TEST_PAIR,), **options: Any,
    ) -> PeerHub:  # fmt: skip
        hub = PeerHub(AddressBook(), self.clock, max_peers=max_peers, max_inbound=max_inbound,
                      rng=random.Random(n), **options)  # fmt: skip
        hub.start(local_node(n, port=3000 + n, markets=markets))
        self.hubs[n] = hub
        return hub

    def link(
        self, a: int, b: int, *, pump: bool = True, ip: str | None = None
    ) -> tuple[PeerProtocol, PeerProtocol]:
        """
        Node C{a} dials node C{b}; returns (a's outbound link, b's inbound link).

        :param ip: node C{a}'s address (default ``127.0.0.{a}``).
        """
        for n in (a, b):
            if n not in self.hubs:
                self.hub(n)
        a_ip, b_ip = ip or f"127.0.0.{a}", f"127.0.0.{b}"
        client = self.hubs[a].build_link("outbound", PeerAddress(b_ip, 3000 + b), host=b_ip)
        server = self.hubs[b].build_link("inbound", host=a_ip)
        assert client is not None and server is not None
        ct = FakeTransport(client, False, IPv4Address("TCP", a_ip, 50000 + a),
                           IPv4Address("TCP", b_ip, 3000 + b))  # fmt: skip
        st = FakeTransport(server, True, IPv4Address("TCP", b_ip, 3000 + b),
                           IPv4Address("TCP", a_ip, 50000 + a))  # fmt: skip
        p = connect(server, st, client, ct, greet=False)
        self.pumps.append(p)
        if pump:
            self.flush()
        return client, server

    def flush(self) -> None:
        for _ in range(20):
            moved = False
            for p in self.pumps:
                moved = p.pump() or moved  # type: ignore[attr-defined]
            if not moved:
                return


class HubTests(SynchronousTestCase):
    def test_two_peers_link_and_learn_listening_address(self) -> None:
        net = Net()
        a, b = net.hub(1), net.hub(2)
        out, inn = net.link(1, 2)
        self.assertEqual(out.state, "ready")
        self.assertEqual(inn.state, "ready")
        self.assertIs(a.links[node_id_of(2)], out)
        self.assertIs(b.links[node_id_of(1)], inn)
        # b learned a's *listening* address (port from version), not the source port
        entry = b.addrbook.get("127.0.0.1", 3001)
        assert entry is not None
        self.assertEqual((entry.node_id, entry.source), (node_id_of(1), "inbound"))
        self.assertIsNone(b.addrbook.get("127.0.0.1", 50001))
        self.assertEqual(a.ready_count("outbound"), 1)
        self.assertEqual(b.ready_count("inbound"), 1)

    def test_getaddr_answered_with_reached_addresses(self) -> None:
        net = Net()
        a, b = net.hub(1), net.hub(2)
        now = net.clock.seconds()
        for i in range(5):
            b.addrbook.add(f"10.0.0.{i + 1}", 4000, source="addr", now=now,
                           node_id=node_id_of(100 + i))  # fmt: skip
            b.addrbook.record_success(f"10.0.0.{i + 1}", 4000, now, None)
        net.link(1, 2)
        for i in range(5):
            self.assertIsNotNone(a.addrbook.get(f"10.0.0.{i + 1}", 4000))
        # a never stores its own address
        self.assertIsNone(a.addrbook.get("127.0.0.1", 3001))

    def test_getaddr_answer_holds_only_recently_reached_addresses(self) -> None:
        """
        Of the book, only addresses reached within the window and not failed
        since are offered: never those heard of, nor configured ones never reached.
        """
        net = Net()
        a, b = net.hub(1), net.hub(2)
        now = net.clock.seconds()
        book = b.addrbook
        for n, source in enumerate(("addr", "addr", "addr", "addr", "bootstrap", "manual",
                                    "mdns", "dht", "inbound"), start=1):  # fmt: skip
            book.add(f"10.0.0.{n}", 4000, source=source, now=now)  # all heard of just now
        book.record_success("10.0.0.1", 4000, now - 60, node_id_of(101))  # offered
        book.record_success("10.0.0.2", 4000, now - SHARE_WINDOW - 1, None)  # too long ago
        book.record_success("10.0.0.3", 4000, now - 60, None)
        book.record_failure("10.0.0.3", 4000, now - 30)  # reached, failed since
        # 10.0.0.4 to 10.0.0.9: never reached
        net.link(1, 2)  # a learns from b's answer: b's links (a alone) and its book
        self.assertEqual([(e.host, e.port, e.node_id) for e in a.addrbook.entries()],
                         [("10.0.0.1", 4000, node_id_of(101))])  # fmt: skip

    def test_addr_learned_not_relayed_nor_offered_until_reached(self) -> None:
        net = Net()
        hub = net.hub(1)
        links = [net.link(n, 1)[1] for n in range(2, 6)]
        sent: dict[int, list[object]] = {i: [] for i in range(len(links))}
        for i, link in enumerate(links):
            link.send = sent[i].append  # type: ignore[method-assign, assignment]
        now = int(net.clock.seconds())
        for addrs in (
            (NetAddress("10.1.1.1", 5000, node_id_of(50), now),),  # small: an announcement
            tuple(NetAddress(f"10.2.0.{i}", 5000, None, now) for i in range(1, 12)),
        ):
            hub.link_message(links[0], Addr(addrs=addrs))
        self.assertEqual([m for m in sent.values() if m], [])  # nothing relayed
        self.assertEqual(len([e for e in hub.addrbook.entries() if e.source == "addr"]), 12)

        def offered(asker: int) -> set[str]:
            links[asker].getaddr_answered = False
            hub.link_message(links[asker], GetAddr())
            [answer] = sent[asker]
            sent[asker].clear()
            assert isinstance(answer, Addr)
            return {x.host for x in answer.addrs}

        self.assertEqual(offered(1), {"127.0.0.2", "127.0.0.4", "127.0.0.5"})  # the links only
        hub.addrbook.record_success("10.1.1.1", 5000, net.clock.seconds(), node_id_of(50))
        self.assertIn("10.1.1.1", offered(1))
        self.assertEqual([m for m in sent.values() if m], [])  # still nothing sent unasked

    def test_announce_to_at_most_two_other_peers(self) -> None:
        net = Net()
        hub = net.hub(1)
        links = [net.link(n, 1)[1] for n in range(2, 7)]
        sent: dict[int, list[object]] = {i: [] for i in range(len(links))}
        for i, link in enumerate(links):
            link.send = sent[i].append  # type: ignore[method-assign, assignment]
        # the dialer just reached node 2 at another address: not told to node 2 itself
        for _ in range(20):
            hub.announce(PeerAddress("10.1.1.1", 5000, node_id_of(2)))
            receivers = [i for i, msgs in sent.items() if msgs]
            self.assertEqual(len(receivers), RELAY_FANOUT)
            self.assertNotIn(0, receivers)
            for i in receivers:
                [message] = sent[i]
                assert isinstance(message, Addr)
                self.assertEqual([(x.host, x.port, x.node_id) for x in message.addrs],
                                 [("10.1.1.1", 5000, node_id_of(2))])  # fmt: skip
                sent[i].clear()
        # never this node's own address, nor an unspecified one
        hub.announce(PeerAddress("10.1.1.2", 5000, node_id_of(1)))
        hub.announce(PeerAddress("0.0.0.0", 5000, node_id_of(9)))
        self.assertEqual([m for m in sent.values() if m], [])

    def test_inbound_peer_offered_while_linked_unless_our_dials_fail(self) -> None:
        """
        The listening address of a peer linked now is offered (its IP is
        that of the live connection), unless our own dials to it fail.
        """
        net = Net()
        hub = net.hub(1)
        _, from_2 = net.link(2, 1)
        _, from_3 = net.link(3, 1)
        sent: list[object] = []
        from_3.send = sent.append  # type: ignore[method-assign, assignment]

        def offered() -> set[tuple[str, int]]:
            from_3.getaddr_answered = False
            hub.link_message(from_3, GetAddr())
            [answer] = sent
            sent.clear()
            assert isinstance(answer, Addr)
            return {(x.host, x.port) for x in answer.addrs}

        self.assertEqual(offered(), {("127.0.0.2", 3002)})
        hub.addrbook.record_failure("127.0.0.2", 3002, net.clock.seconds())
        self.assertEqual(offered(), set())
        hub.addrbook.record_success("127.0.0.2", 3002, net.clock.seconds(), node_id_of(2))
        self.assertEqual(offered(), {("127.0.0.2", 3002)})
        hub.addrbook.forget("127.0.0.2", 3002)  # aged out, say
        self.assertEqual(offered(), set())
        from_2.close("gone")
        net.flush()
        self.assertEqual(offered(), set())

    def test_getaddr_answered_once_per_link(self) -> None:
        net = Net()
        net.hub(1), net.hub(2)
        out, inn = net.link(1, 2)
        self.assertTrue(inn.getaddr_answered)
        sent: list[object] = []
        inn.send = sent.append  # type: ignore[method-assign, assignment]
        from bitfitech.wire.messages import GetAddr

        net.hubs[2].link_message(inn, GetAddr())
        self.assertEqual(sent, [])

    def test_newcomer_announced_one_hop_only(self) -> None:
        """
        A peer that links in is told to a few peers of the node it dialled
        (it is linked there now), as a candidate they never relay on.
        """
        net = Net()
        a, b, c = net.hub(1), net.hub(2), net.hub(3)
        net.link(1, 2)  # a -> b
        _, from_4 = net.link(4, 1)  # d -> a
        told_d: list[object] = []
        from_4.send = told_d.append  # type: ignore[method-assign, assignment]
        net.link(3, 2)  # the newcomer c -> b
        entry = b.addrbook.get("127.0.0.3", 3003)
        assert entry is not None
        self.assertEqual((entry.source, entry.last_success), ("inbound", None))
        entry = a.addrbook.get("127.0.0.3", 3003)  # b told a
        assert entry is not None
        self.assertEqual((entry.source, entry.node_id, entry.last_success),
                         ("addr", node_id_of(3), None))  # fmt: skip
        self.assertEqual(told_d, [])  # a does not pass it on
        # c learned a's address from b's getaddr answer: a is linked to b now
        entry = c.addrbook.get("127.0.0.1", 3001)
        assert entry is not None
        self.assertEqual((entry.source, entry.node_id), ("addr", node_id_of(1)))

    def test_own_and_unspecified_addresses_ignored(self) -> None:
        net = Net()
        hub = net.hub(1)
        _, link = net.link(2, 1)
        now = int(net.clock.seconds())
        hub.link_message(link, Addr(addrs=(
            NetAddress("10.3.0.1", 5000, node_id_of(1), now),
            NetAddress("0.0.0.0", 5000, None, now),
        )))  # fmt: skip
        self.assertIsNone(hub.addrbook.get("10.3.0.1", 5000))
        self.assertIsNone(hub.addrbook.get("0.0.0.0", 5000))

    def test_inbound_limit_enforced_on_arrival(self) -> None:
        net = Net()
        hub = net.hub(1, max_peers=3, max_inbound=2)
        self.assertIsNotNone(hub.build_link("inbound"))
        self.assertIsNotNone(hub.build_link("inbound"))
        self.assertIsNone(hub.build_link("inbound"))
        self.assertIsNotNone(hub.build_link("outbound"))
        self.assertIsNone(hub.build_link("outbound"))
        self.assertEqual(hub.refused_inbound, 1)

    def test_dial_to_a_witness_admitted_past_max_peers(self) -> None:
        net = Net()
        hub = net.hub(1, max_peers=2, max_inbound=1, witnesses=[node_id_of(7), node_id_of(8)])
        self.assertIsNotNone(hub.build_link("inbound"))
        self.assertIsNotNone(hub.build_link("outbound"))
        self.assertIsNone(hub.build_link("outbound", PeerAddress("10.0.0.9", 3000)))
        self.assertIsNone(hub.build_link("outbound", PeerAddress("10.0.0.9", 3000, node_id_of(9))))
        to_witness = hub.build_link("outbound", PeerAddress("10.0.0.7", 3000, node_id_of(7)))
        assert to_witness is not None
        self.assertTrue(hub.is_witness_link(to_witness))  # pinned, before its handshake
        self.assertEqual((hub.count(), hub.target_count()), (3, 2))
        self.assertIsNone(hub.build_link("inbound"))

    def test_witness_links_known_by_node_id(self) -> None:
        net = Net()
        a = net.hub(1, witnesses=[node_id_of(2)])
        net.hub(2, witnesses=[node_id_of(2)])
        net.hub(3, witnesses=[node_id_of(2)])
        to_witness, _ = net.link(1, 2)  # dialled unpinned: a witness by its version
        at_3, from_3 = net.link(3, 1)
        self.assertEqual((to_witness.state, from_3.state), ("ready", "ready"))
        self.assertTrue(a.is_witness_link(to_witness))
        self.assertFalse(a.is_witness_link(from_3))
        self.assertFalse(net.hubs[3].is_witness_link(at_3))
        self.assertEqual((a.ready_count("outbound"), a.ready_count("inbound")), (1, 1))

    def test_target_counts_outbound_links_and_witness_links_both_ways(self) -> None:
        """
        The outbound target is filled by outbound links, and by links with
        witnesses that the witness dialled; not by other inbound links.
        """
        net = Net()
        witnesses = [node_id_of(2), node_id_of(3)]
        a = net.hub(1, witnesses=witnesses)
        for n in (2, 3, 4, 5):
            net.hub(n, witnesses=witnesses)
        net.link(1, 3)  # to a witness
        net.link(1, 4)  # to another node
        net.link(2, 1)  # from a witness
        net.link(5, 1)  # from another node
        self.assertEqual(len(a.links), 4)
        self.assertEqual((a.ready_count("outbound"), a.ready_count("inbound")), (2, 2))
        self.assertEqual((a.target_count(), a.target_count(ready=True)), (3, 3))
        # a witness's end: its links with the other witness count, whichever end dialled
        self.assertEqual(net.hubs[2].target_count(ready=True), 1)
        self.assertEqual(net.hubs[3].target_count(ready=True), 0)  # a dialled it

    def test_target_counts_links_in_their_handshake_unless_ready_only(self) -> None:
        """A link from a witness counts once its ``version`` says whose it is."""
        net = Net()
        a = net.hub(1, witnesses=[node_id_of(2)])
        net.hub(2, witnesses=[node_id_of(2)])
        net.link(1, 4, pump=False)
        net.link(2, 1, pump=False)
        self.assertEqual((a.target_count(), a.target_count(ready=True)), (1, 0))
        net.flush()
        self.assertEqual((a.target_count(), a.target_count(ready=True)), (2, 2))

    def test_duplicate_links_both_ends_keep_the_same_one(self) -> None:
        net = Net()
        a, b = net.hub(1), net.hub(2)
        a_out, b_in = net.link(1, 2, pump=False)
        b_out, a_in = net.link(2, 1, pump=False)
        net.flush()
        # node 1 has the smaller id: the link it initiated wins on both ends
        self.assertIs(a.links[node_id_of(2)], a_out)
        self.assertIs(b.links[node_id_of(1)], b_in)
        self.assertEqual(a_out.state, "ready")
        self.assertEqual(b_in.state, "ready")
        self.assertEqual(b_out.state, "closed")
        self.assertEqual(a_in.state, "closed")
        self.assertEqual(b_out.close_reason, REASON_DUPLICATE)

    def test_duplicate_same_initiator_keeps_smaller_nonce(self) -> None:
        net = Net()
        a, b = net.hub(1), net.hub(2)
        first = net.link(1, 2)
        second = net.link(1, 2)
        kept_a = a.links[node_id_of(2)]
        kept_b = b.links[node_id_of(1)]
        # the two ends agree on which link survives
        pairs = {id(first[0]): first[1], id(second[0]): second[1]}
        self.assertIs(pairs[id(kept_a)], kept_b)
        self.assertEqual(len(a.links), 1)
        self.assertEqual(sum(1 for lk in (*first, *second) if lk.state == "ready"), 2)

    def test_closed_link_removed_and_subscribers_told(self) -> None:
        net = Net()
        a, _ = net.hub(1), net.hub(2)
        changes: list[None] = []
        a.subscribe(lambda: changes.append(None))
        out, _ = net.link(1, 2)
        self.assertTrue(changes)
        self.assertTrue(a.disconnect(node_id_of(2)))
        net.flush()
        self.assertEqual(a.links, {})
        self.assertFalse(a.disconnect(node_id_of(2)))

    def test_own_nonce_known_until_link_closes(self) -> None:
        net = Net()
        hub = net.hub(1)
        link = hub.build_link("outbound")
        assert link is not None
        self.assertTrue(hub.is_own_nonce(link.nonce))
        hub.link_closed(link, "gone")
        self.assertFalse(hub.is_own_nonce(link.nonce))

    def test_peer_rows(self) -> None:
        net = Net()
        a, _ = net.hub(1), net.hub(2)
        net.link(1, 2)
        [row] = a.link_rows()
        self.assertEqual(row["node_id"], node_id_of(2))
        self.assertEqual(row["address"], "127.0.0.2:3002")
        self.assertEqual(row["direction"], "outbound")
        self.assertEqual(row["user_agent"], "bitfi-test/0")


class _Observing(SynchronousTestCase):
    def observe(self) -> EventLoggingObserver:
        """Record the log events from now on, until the test ends."""
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        return events


class BanTests(_Observing):
    """Misbehaviour scores by remote address; at the threshold, disconnect and a persisted ban."""

    def setUp(self) -> None:
        self.storage = Storage(self.mktemp())
        self.storage.open()
        self.addCleanup(self.storage.close)
        self.net = Net()
        self.bans = BanList()
        self.bans.load(self.storage.connection, self.net.clock.seconds())
        self.hub = self.net.hub(1, bans=self.bans, ban_duration=3600.0)

    def rows(self) -> list[tuple[object, ...]]:
        return list(self.storage.connection.execute("SELECT address, node_id, until FROM bans"))

    def test_scores_add_up_then_ban_disconnects_every_link_of_the_address(self) -> None:
        _, hostile = self.net.link(2, 1)
        own_out, _ = self.net.link(1, 3, ip="127.0.0.1")  # hub 1 dials node 3 (127.0.0.3)
        _, honest = self.net.link(4, 1)
        _, same_ip = self.net.link(5, 1, ip="127.0.0.2")  # another node behind 127.0.0.2
        self.assertEqual(len(self.hub.links), 4)
        for _ in range(4):
            self.hub.link_misbehaved(hostile, "malformed event", MALFORMED_EVENT)
        self.assertAlmostEqual(self.hub.scores.score("127.0.0.2", self.net.clock.seconds()), 80)
        self.assertEqual(self.rows(), [])
        self.assertEqual(hostile.state, "ready")
        events = self.observe()
        self.hub.link_misbehaved(hostile, "malformed event", MALFORMED_EVENT)
        self.net.flush()
        for link in (hostile, same_ip):
            self.assertEqual(link.state, "closed")
            self.assertEqual(link.close_reason, "banned for misbehaviour: malformed event")
        self.assertEqual(set(self.hub.links), {node_id_of(3), node_id_of(4)})
        self.assertEqual(own_out.state, "ready")
        self.assertEqual(honest.state, "ready")
        until = self.net.clock.seconds() + 3600
        self.assertEqual(self.rows(), [("127.0.0.2", node_id_of(2), until)])
        self.assertEqual((self.hub.misbehaviour_count, self.hub.banned_count), (5, 1))
        # the score is spent: after the ban the address starts again from 0
        self.assertEqual(self.hub.scores.score("127.0.0.2", self.net.clock.seconds()), 0)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("Banned", warnings[0]["log_format"])

    def test_outbound_links_to_the_address_dropped_too(self) -> None:
        out, _ = self.net.link(1, 2)
        self.hub.link_misbehaved(out, "bad checksum", VIOLATION)
        self.net.flush()
        self.assertEqual(out.state, "closed")
        self.assertEqual(self.hub.links, {})
        self.assertTrue(self.hub.is_banned("127.0.0.2"))

    def test_scores_decay(self) -> None:
        _, link = self.net.link(2, 1)
        self.hub.link_misbehaved(link, "slow down", 60)
        self.net.clock.advance(3600)
        self.hub.link_misbehaved(link, "slow down", 60)
        self.assertAlmostEqual(self.hub.scores.score("127.0.0.2", self.net.clock.seconds()), 90)
        self.assertEqual(link.state, "ready")
        self.assertEqual(self.rows(), [])

    def test_never_banned_below_the_threshold(self) -> None:
        _, link = self.net.link(2, 1)
        for _ in range(9):
            self.hub.link_misbehaved(link, "rate", RATE_EXCEEDED)
        self.assertEqual(link.state, "ready")
        self.assertFalse(self.hub.is_banned("127.0.0.2"))

    def test_ban_duration_zero_never_bans(self) -> None:
        hub = self.net.hub(9, ban_duration=0)
        _, link = self.net.link(2, 9)
        events = self.observe()
        hub.link_misbehaved(link, "bad magic", VIOLATION)
        self.assertEqual(link.state, "ready")  # the violation itself closes it, not the hub
        self.assertFalse(hub.is_banned("127.0.0.2"))
        self.assertEqual((hub.misbehaviour_count, hub.banned_count), (1, 0))
        self.assertIsNotNone(hub.build_link("inbound", host="127.0.0.2"))
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("bans are off", warning["log_format"])

    def test_banned_inbound_refused_before_anything_else(self) -> None:
        self.hub.ban("192.0.2.1", "test")
        self.assertIsNone(self.hub.build_link("inbound", host="192.0.2.1"))
        self.assertIsNone(self.hub.build_link("inbound", host="::ffff:192.0.2.1"))
        self.assertEqual((self.hub.refused_banned, self.hub.refused_inbound), (2, 0))
        self.assertIsNotNone(self.hub.build_link("inbound", host="192.0.2.2"))
        # nor is a resolved outbound connection to it built
        dialed = PeerAddress("seed.example", 3000)
        self.assertIsNone(self.hub.build_link("outbound", dialed, host="192.0.2.1"))
        self.assertEqual(self.hub.count(), 1)

    def test_loopback_is_not_exempt(self) -> None:
        _, link = self.net.link(2, 1, ip="127.0.0.1")
        self.hub.link_misbehaved(link, "bad magic", VIOLATION)
        self.assertTrue(self.hub.is_banned("127.0.0.1"))
        self.assertIsNone(self.hub.build_link("inbound", host="127.0.0.1"))

    def test_bans_expire(self) -> None:
        self.hub.ban("192.0.2.1", "test")
        self.net.clock.advance(3599)
        self.assertIsNone(self.hub.build_link("inbound", host="192.0.2.1"))
        self.net.clock.advance(1)
        self.assertIsNotNone(self.hub.build_link("inbound", host="192.0.2.1"))
        self.assertEqual(self.rows(), [])

    def test_unban_lets_the_peer_link_again_with_a_fresh_score(self) -> None:
        _, link = self.net.link(2, 1)
        self.hub.link_misbehaved(link, "rate", 50)
        self.hub.ban("127.0.0.2", "test")
        self.hub.link_misbehaved(link, "rate", 50)  # link closed but not yet gone
        changes: list[None] = []
        self.hub.subscribe(lambda: changes.append(None))
        lifted = self.hub.unban("127.0.0.2")
        assert lifted is not None
        self.assertEqual((lifted.address, lifted.reason), ("127.0.0.2", "test"))
        self.assertEqual(changes, [None])  # the dialer looks again
        self.assertEqual(self.hub.scores.score("127.0.0.2", self.net.clock.seconds()), 0)
        self.assertEqual(self.rows(), [])
        self.assertIsNone(self.hub.unban("127.0.0.2"))
        self.net.flush()
        _, again = self.net.link(2, 1)
        self.assertEqual(again.state, "ready")

    def test_unban_expired_or_invalid(self) -> None:
        self.hub.ban("192.0.2.1", "test")
        self.net.clock.advance(3600)
        self.assertIsNone(self.hub.unban("192.0.2.1"))
        self.assertRaises(ValueError, self.hub.unban, "seed.example")


class PerAddressLimitTests(_Observing):
    """Inbound links and handshakes in flight from one IP address are capped."""

    def test_handshakes_per_address(self) -> None:
        hub = Net().hub(1, max_peers=50, max_inbound=40, max_handshakes_per_ip=2)
        first = hub.build_link("inbound", host="192.0.2.1")
        self.assertIsNotNone(first)
        self.assertIsNotNone(hub.build_link("inbound", host="192.0.2.1"))
        self.assertIsNone(hub.build_link("inbound", host="192.0.2.1"))
        self.assertIsNone(hub.build_link("inbound", host="::ffff:192.0.2.1"))
        self.assertEqual(hub.refused_inbound, 2)
        # another address, and the node's own dials, are not limited by it
        self.assertIsNotNone(hub.build_link("inbound", host="192.0.2.2"))
        for _ in range(3):
            self.assertIsNotNone(
                hub.build_link("outbound", PeerAddress("192.0.2.1", 3000), host="192.0.2.1")
            )
        # a handshake that ends frees its slot
        assert first is not None
        hub.link_closed(first, "gone")
        self.assertIsNotNone(hub.build_link("inbound", host="192.0.2.1"))

    def test_inbound_links_per_address(self) -> None:
        net = Net()
        hub = net.hub(1, max_peers=50, max_inbound=40, max_inbound_per_ip=3,
                      max_handshakes_per_ip=3)  # fmt: skip
        for n in (2, 3):
            _, link = net.link(n, 1, ip="192.0.2.1")
            self.assertEqual(link.state, "ready")
        self.assertIsNotNone(hub.build_link("inbound", host="192.0.2.1"))  # 2 ready + 1 pending
        self.assertIsNone(hub.build_link("inbound", host="192.0.2.1"))
        self.assertEqual(hub.refused_inbound, 1)
        self.assertIsNotNone(hub.build_link("inbound", host="192.0.2.2"))

    def test_refusal_logged_at_debug(self) -> None:
        hub = Net().hub(1, max_handshakes_per_ip=1)
        hub.build_link("inbound", host="192.0.2.1")
        self.addCleanup(set_log_level, log_level())
        set_log_level(LogLevel.debug)
        events = self.observe()
        self.assertIsNone(hub.build_link("inbound", host="192.0.2.1"))
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertEqual(event["host"], "192.0.2.1")


ETH, SOL = "ETH/USD", "SOL/USD"


class MarketTargetTests(_Observing):
    """Only links sharing a market fill the target; an outbound link sharing none is a feeler."""

    def setUp(self) -> None:
        super().setUp()
        self.net = Net()
        self.hub = self.net.hub(1, markets=(TEST_PAIR, ETH))
        self.observer = self.observe()

    def feeler_timers(self) -> list[object]:
        """The hub's timers waiting for a feeler's answer."""
        return [
            call
            for call in self.net.clock.getDelayedCalls()
            if getattr(call, "func", None) == self.hub._feeler_done
        ]

    def wired(
        self, direction: str, n: int, markets: tuple[str, ...]
    ) -> tuple[PeerProtocol, StringTransport]:
        """
        A link of the hub with node C{n} of C{markets} over a StringTransport,
        its handshake done; an outbound one dials an address in the book.
        """
        host = f"10.0.0.{n}"
        dialed = None
        if direction == "outbound":
            dialed = PeerAddress(host, 3000 + n)
            self.hub.addrbook.add(host, 3000 + n, source="addr", now=self.net.clock.seconds())
        link = self.hub.build_link(direction, dialed, host=host)  # type: ignore[arg-type]
        assert link is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 3000 + n))
        link.makeConnection(transport)
        version = version_of(n, port=3000 + n, pair=markets[0], markets=markets)
        link.dataReceived(frame_of(version) + frame_of(Verack()))
        self.assertEqual(link.state, "ready")
        return link, transport

    def sent(self, transport: StringTransport) -> list[Message]:
        decoder = FrameDecoder(network_magic("test"))
        decoder.feed(transport.value())
        out = []
        while (frame := decoder.next_frame()) is not None:
            out.append(decode_message(frame.command, frame.payload))
        return out

    def addr_answer(self) -> bytes:
        now = int(self.net.clock.seconds())
        return frame_of(Addr(addrs=(NetAddress("10.0.9.9", 4000, node_id_of(99), now),)))

    def test_target_counts_only_links_sharing_a_market(self) -> None:
        self.wired("outbound", 2, (TEST_PAIR,))
        self.wired("outbound", 3, (ETH, SOL))
        feeler, _ = self.wired("outbound", 4, (SOL,))
        self.wired("inbound", 5, (TEST_PAIR, ETH))
        self.wired("inbound", 6, (SOL,))
        self.assertEqual(len(self.hub.links), 5)
        self.assertEqual(self.hub.target_count(ready=True), 2)
        self.assertEqual(self.hub.target_count(), 2)
        self.assertEqual(self.hub.links_by_market(), {TEST_PAIR: 2, ETH: 2})
        self.assertTrue(self.hub.is_feeler(feeler))

    def test_link_in_its_handshake_counts(self) -> None:
        link = self.hub.build_link("outbound", PeerAddress("10.0.0.2", 3002), host="10.0.0.2")
        assert link is not None
        self.assertEqual(self.hub.target_count(), 1)
        self.assertEqual(self.hub.links_by_market(), {TEST_PAIR: 0, ETH: 0})

    def test_feeler_closed_after_its_addr_answer_with_no_failure(self) -> None:
        """
        The outbound link to a node of other markets is asked for addresses,
        closed once they came, and nothing counts against it: no
        misbehaviour, no failure, no rest; its markets are noted.
        """
        link, transport = self.wired("outbound", 4, (SOL,))
        self.assertIn(GetAddr(), self.sent(transport))
        self.assertEqual(link.state, "ready")
        link.dataReceived(frame_of(GetAddr()))  # its own getaddr, answered
        self.assertEqual(len([m for m in self.sent(transport) if isinstance(m, Addr)]), 1)
        self.assertEqual(link.state, "ready")
        link.dataReceived(self.addr_answer())
        self.assertEqual((link.state, link.close_reason), ("closed", REASON_NO_SHARED_MARKET))
        self.assertTrue(transport.disconnecting)
        link.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.hub.links, {})
        self.assertIsNotNone(self.hub.addrbook.get("10.0.9.9", 4000))
        entry = self.hub.addrbook.get("10.0.0.4", 3004)
        assert entry is not None
        self.assertEqual((entry.failures, entry.suspended_until), (0, 0.0))
        self.assertEqual(entry.markets, frozenset({SOL}))
        self.assertEqual(self.hub.misbehaviour_count, 0)
        self.assertEqual(self.feeler_timers(), [])
        shown = [e for e in self.observer if e["log_level"] >= LogLevel.info
                 and REASON_NO_SHARED_MARKET in str(e.get("reason", ""))]  # fmt: skip
        self.assertEqual(shown, [])

    def test_feeler_that_never_answers_closed_after_a_while(self) -> None:
        link, _ = self.wired("outbound", 4, (SOL,))
        self.assertEqual(len(self.feeler_timers()), 1)
        self.net.clock.advance(FEELER_TIMEOUT - 1)
        self.assertEqual(link.state, "ready")
        self.net.clock.advance(1)
        self.assertEqual((link.state, link.close_reason), ("closed", REASON_NO_SHARED_MARKET))

    def test_inbound_link_sharing_no_market_stays(self) -> None:
        link, _ = self.wired("inbound", 6, (SOL,))
        link.dataReceived(self.addr_answer())
        self.assertEqual(link.state, "ready")
        self.assertFalse(self.hub.is_feeler(link))
        self.assertEqual(self.feeler_timers(), [])
        entry = self.hub.addrbook.get("10.0.0.6", 3006)
        assert entry is not None
        self.assertEqual(entry.markets, frozenset({SOL}))

    def test_outbound_link_sharing_a_market_stays(self) -> None:
        link, _ = self.wired("outbound", 3, (ETH, SOL))
        link.dataReceived(self.addr_answer())
        self.assertEqual(link.state, "ready")
        entry = self.hub.addrbook.get("10.0.0.3", 3003)
        assert entry is not None
        self.assertEqual(entry.markets, frozenset({ETH, SOL}))

    def test_link_to_a_witness_of_other_markets_is_no_feeler(self) -> None:
        self.hub.witnesses = frozenset({node_id_of(4)})
        link, _ = self.wired("outbound", 4, (SOL,))
        link.dataReceived(self.addr_answer())
        self.assertEqual(link.state, "ready")
