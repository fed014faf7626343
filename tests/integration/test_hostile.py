"""Integration: a hostile peer floods a node while two honest nodes trade through it.

Real nodes on loopback, over TLS.  The honest nodes A and B link from
127.0.0.1; the hostile peer connects to A from 127.0.0.3 (all of
127.0.0.0/8 is loopback), so that banning it does not shut out B.  In turn
it storms A with handshakes it never finishes, floods it with valid events
of a key of its own and with messages past the link's rate, sends events
with bad signatures and garbage, and finally a frame announcing an
oversize payload.  All the while A and B keep placing orders: every order
must reach the other node, and the hostile address must end up banned,
while A and B stay linked and unbanned.

How fast orders cross during the flood is a benchmark figure
(``benchmarks/bench_flood.py``), not a test: every wait here is for a
condition, under a hang guard far above what any machine needs.
"""

from __future__ import annotations

import secrets

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from bitfitech.node import Node
from bitfitech.testing import HANG_GUARD, TEST_NETWORK, ClusterTestCase, HostilePeer, poll_until
from bitfitech.wire.framing import encode_frame, network_magic

HOSTILE_HOST = "127.0.0.3"


class HostilePeerTests(ClusterTestCase):
    timeout = 180

    async def trade(self, nodes: tuple[Node, Node], crossed: list[str], stop: list[bool]) -> None:
        """Place orders on both nodes in turn until told to stop; list each that crossed."""
        n = 0
        while not stop[0]:
            source, target = nodes[n % 2], nodes[(n + 1) % 2]
            doc = await source.control.submit_order("buy", f"{40000 + n}", "0.01", "limit")
            order_id = doc["id"]

            def arrived(target: Node = target, order_id: str = order_id) -> bool:
                return target.control.order(order_id) is not None

            await poll_until(self.reactor, arrived, HANG_GUARD, f"order {n} on B or A",
                             interval=0.005)  # fmt: skip
            crossed.append(order_id)
            n += 1
            await deferLater(self.reactor, 0.05, lambda: None)

    async def test_hostile_peer_is_banned_and_honest_orders_flow(self) -> None:
        a = self.cluster.start_node(max_inbound_per_ip=8, max_handshakes_per_ip=4)
        b = self.cluster.start_node(bootstrap_to=[a])
        b_id = b.storage.identity.node_id
        await poll_until(self.reactor, lambda: b_id in a.peers.hub.links, HANG_GUARD,
                         "A and B linked")  # fmt: skip
        hostile = HostilePeer(self.reactor, a, HOSTILE_HOST)
        self.addCleanup(hostile.close_all)
        crossed: list[str] = []
        stop = [False]
        trading = Deferred.fromCoroutine(self.trade((a, b), crossed, stop))
        hub = a.peers.hub

        # 1. A handshake storm: 30 TLS links that never say version.
        refused_before = hub.refused_inbound
        for _ in range(30):
            await hostile.connect([])
        await poll_until(self.reactor, lambda: hub.refused_inbound - refused_before >= 20,
                         HANG_GUARD, "the storm refused past 4 handshakes")  # fmt: skip

        def pending_from_hostile() -> int:
            return sum(link.peer_host == HOSTILE_HOST for link in hub.pending)

        self.assertLessEqual(pending_from_hostile(), 4)
        hostile.close_all()
        await poll_until(self.reactor, lambda: pending_from_hostile() == 0, HANG_GUARD,
                         "storm links gone")  # fmt: skip

        # 2. A flood of valid events of its own key, and messages past the link's rate.
        flood = await hostile.connect(hostile.hello() + [hostile.events(3000)])
        self.assertIsNotNone(flood)
        chatter = encode_frame(network_magic(TEST_NETWORK), "chatter", b"x")
        rate = await hostile.connect(hostile.hello() + [chatter * 6000])
        self.assertIsNotNone(rate)
        # A takes in the whole flood and scores the chatter before the ban
        # below drops every link from the hostile address.
        hostile_key = hostile.author.author

        def flood_taken_in() -> bool:
            held = a.market.ledger.vector().get(hostile_key, 0) >= 3000
            return held and hub.misbehaviour_count >= 1

        await poll_until(self.reactor, flood_taken_in, HANG_GUARD,
                         "the flood held by A and the chatter scored")  # fmt: skip

        # 3. Events with bad signatures: a violation, so the address is banned.
        await hostile.connect(hostile.hello() + [hostile.events(5, forge=True)])
        await poll_until(self.reactor, lambda: any(row["address"] == HOSTILE_HOST
                                                   for row in a.control.banned()),
                         HANG_GUARD, "the hostile address banned")  # fmt: skip

        # 4. Garbage and an oversize frame from the banned address: refused at once.
        oversize = network_magic(TEST_NETWORK) + b"events\x00\x00\x00\x00\x00\x00"
        oversize += (2**31).to_bytes(4, "little") + b"\x00" * 4
        refused_banned = hub.refused_banned
        for chunks in ([secrets.token_bytes(4096)], hostile.hello() + [oversize]):
            link = await hostile.connect(chunks)
            if link is not None:
                await link.lost
        self.assertGreaterEqual(hub.refused_banned - refused_banned, 2)

        # Honest trading went on throughout: one more order crosses after
        # the attack, and five at least in all.
        after_attack = len(crossed) + 1
        await poll_until(self.reactor, lambda: len(crossed) >= max(5, after_attack), HANG_GUARD,
                         "honest orders crossing after the attack")  # fmt: skip
        stop[0] = True
        await trading
        self.assertGreaterEqual(len(crossed), 5)
        # The message flood was throttled and scored; the forged events banned.
        self.assertGreaterEqual(hub.misbehaviour_count, 2)
        self.assertIn("bad signature", a.control.banned()[0]["reason"])
        self.assertIn(b_id, a.peers.hub.links)
        banned = [row["address"] for row in a.control.banned()]
        self.assertEqual(banned, [HOSTILE_HOST])
        self.assertEqual(b.control.banned(), [])
        # The valid events of the hostile key reached B through A like any others.
        await poll_until(self.reactor, lambda: len(b.market.ledger) >= 3000, HANG_GUARD,
                         "the hostile key's valid events on B")  # fmt: skip
