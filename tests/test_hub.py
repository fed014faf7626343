"""Tests for bitfitech.peer.hub: links admitted, deduplicated and sharing addresses, over iosim."""

from __future__ import annotations

import random

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.address import PeerAddress
from bitfitech.peer.addrbook import AddressBook
from bitfitech.peer.hub import PeerHub
from bitfitech.peer.protocol import REASON_DUPLICATE, PeerProtocol
from bitfitech.testing import local_node, node_id_of
from bitfitech.wire.messages import Addr, NetAddress


class Net:
    """Several hubs on one clock, linked pairwise through iosim pumps."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.hubs: dict[int, PeerHub] = {}
        self.pumps: list[object] = []

    def hub(self, n: int, *, max_peers: int = 10, max_inbound: int = 5) -> PeerHub:
        hub = PeerHub(local_node(n, port=3000 + n), AddressBook(None), self.clock,
                      max_peers=max_peers, max_inbound=max_inbound,
                      rng=random.Random(n))  # fmt: skip
        self.hubs[n] = hub
        return hub

    def link(self, a: int, b: int, *, pump: bool = True) -> tuple[PeerProtocol, PeerProtocol]:
        """Node C{a} dials node C{b}; returns (a's outbound link, b's inbound link)."""
        for n in (a, b):
            if n not in self.hubs:
                self.hub(n)
        client = self.hubs[a].build_link("outbound", PeerAddress(f"127.0.0.{b}", 3000 + b))
        server = self.hubs[b].build_link("inbound")
        assert client is not None and server is not None
        ct = FakeTransport(client, False, IPv4Address("TCP", f"127.0.0.{a}", 50000 + a),
                           IPv4Address("TCP", f"127.0.0.{b}", 3000 + b))  # fmt: skip
        st = FakeTransport(server, True, IPv4Address("TCP", f"127.0.0.{b}", 3000 + b),
                           IPv4Address("TCP", f"127.0.0.{a}", 50000 + a))  # fmt: skip
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

    def test_getaddr_answered_with_known_addresses(self) -> None:
        net = Net()
        a, b = net.hub(1), net.hub(2)
        for i in range(5):
            b.addrbook.add(f"10.0.0.{i + 1}", 4000, source="addr", now=net.clock.seconds(),
                           node_id=node_id_of(100 + i))  # fmt: skip
        net.link(1, 2)
        for i in range(5):
            self.assertIsNotNone(a.addrbook.get(f"10.0.0.{i + 1}", 4000))
        # a never stores its own address
        self.assertIsNone(a.addrbook.get("127.0.0.1", 3001))

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

    def test_three_peers_newcomer_announced(self) -> None:
        net = Net()
        a, _, c = net.hub(1), net.hub(2), net.hub(3)
        net.link(1, 2)
        net.link(3, 2)
        # b relays c's (new) listening address to a
        entry = a.addrbook.get("127.0.0.3", 3003)
        assert entry is not None
        self.assertEqual(entry.node_id, node_id_of(3))
        # c learned a's address from b's getaddr answer
        self.assertIsNotNone(c.addrbook.get("127.0.0.1", 3001))

    def test_small_addr_relayed_to_at_most_two(self) -> None:
        net = Net()
        hub = net.hub(1)
        links = [net.link(n, 1)[1] for n in range(2, 6)]
        sent: dict[int, list[object]] = {i: [] for i in range(len(links))}
        for i, link in enumerate(links):
            link.send = sent[i].append  # type: ignore[method-assign, assignment]
        now = int(net.clock.seconds())
        hub.link_message(links[0], Addr(addrs=(NetAddress("10.1.1.1", 5000, None, now),)))
        receivers = [i for i, msgs in sent.items() if msgs]
        self.assertEqual(len(receivers), 2)
        self.assertNotIn(0, receivers)
        # the same address again is not new: no relay
        for msgs in sent.values():
            msgs.clear()
        hub.link_message(links[0], Addr(addrs=(NetAddress("10.1.1.1", 5000, None, now),)))
        self.assertEqual([m for m in sent.values() if m], [])

    def test_large_addr_not_relayed(self) -> None:
        net = Net()
        hub = net.hub(1)
        links = [net.link(n, 1)[1] for n in range(2, 5)]
        sent: list[object] = []
        for link in links[1:]:
            link.send = sent.append  # type: ignore[method-assign, assignment]
        now = int(net.clock.seconds())
        addrs = tuple(NetAddress(f"10.2.0.{i}", 5000, None, now) for i in range(1, 12))
        hub.link_message(links[0], Addr(addrs=addrs))
        self.assertEqual(sent, [])
        self.assertEqual(len([e for e in hub.addrbook.entries() if e.host.startswith("10.2.")]), 11)

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
