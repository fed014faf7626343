"""
Users who hold their own keys, on loopback: events a user's key signed
enter one node through its API layer (:class:`~bitfitech.api.control.NodeControl`,
as ``POST /events`` does), travel to every node over real links unchanged,
and no node can alter or cancel them.
"""

from __future__ import annotations

from bitfitech.interfaces import BatchRejected
from bitfitech.market.events import Author
from bitfitech.node import Node
from bitfitech.testing import HANG_GUARD, ClusterTestCase, market_state, poll_until


class UserKeyTests(ClusterTestCase):
    """Three nodes in a line; a user signs with their own key against the first."""

    timeout = 120

    async def line(self) -> list[Node]:
        first = self.cluster.start_node()
        second = self.cluster.start_node(bootstrap_to=[first])
        third = self.cluster.start_node(bootstrap_to=[second])
        nodes = [first, second, third]
        await poll_until(
            self.reactor,
            lambda: len(second.peers.hub.links) == 2,
            HANG_GUARD,
            "the line of three linked",
        )
        return nodes

    async def test_user_order_everywhere_and_only_the_user_cancels(self) -> None:
        nodes = await self.line()
        entry = nodes[0]
        config = entry.config
        user = Author(bytes(range(1, 33)), config.network, config.pair)
        info = entry.control.key(user.author)
        ts = int(self.reactor.seconds() * 1000)
        order = user.order(info["next_seq"], info["lamport"], ts, "buy", "limit", "100", "0.5")

        # A tampered copy is refused, and nothing of it is kept.
        tampered = order.text.replace(" 100 ", " 1000 ")
        with self.assertRaises(BatchRejected) as caught:
            entry.control.submit_events([(tampered, order.sig)])
        self.assertIn("bad_signature", str(caught.exception))

        [taken] = await entry.control.submit_events([(order.text, order.sig)])
        self.assertEqual((taken["status"], taken["order"]["author"]), ("applied", user.author))
        await poll_until(
            self.reactor,
            lambda: all(node.market.ledger.get(order.id) is not None for node in nodes),
            HANG_GUARD,
            "the user's order on every node",
        )
        for node in nodes:
            [listed] = node.control.key_orders(user.author, "open", 10)
            self.assertEqual((listed["id"], listed["author"]), (order.id, user.author))
            held = node.market.ledger.get(order.id)
            assert held is not None
            self.assertEqual((held.text, held.sig), (order.text, order.sig))
            # No node can cancel it: the cancel is refused before it is signed.
            with self.assertRaises(PermissionError):
                node.control.cancel_order(order.id)

        # The user's own cancel, through another node, cancels it everywhere.
        middle = nodes[1]
        info = middle.control.key(user.author)
        self.assertEqual(info["next_seq"], 2)
        cancel = user.cancel(2, info["lamport"], ts, order.id)
        await middle.control.submit_events([(cancel.text, cancel.sig)])
        await poll_until(
            self.reactor,
            lambda: all(node.market.ledger.open_order(order.id) is None for node in nodes),
            HANG_GUARD,
            "the cancel on every node",
        )
        await poll_until(
            self.reactor,
            lambda: len({market_state(node) for node in nodes}) == 1,
            HANG_GUARD,
            "equal states",
        )
