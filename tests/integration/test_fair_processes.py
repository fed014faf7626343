"""
End-to-end: a fair-order network of ``twistd bitfi`` processes loses a witness to SIGKILL.

Data path: the test spawns three witness nodes and two plain nodes, each
naming the three witnesses (``--witness``), all on 127.0.0.1 -> orders
enter through the plain nodes' HTTP API (``POST /orders``) -> the
witnesses' stamps give them their fair time -> the test reads each
node's ``GET /trades`` and ``GET /status``.

Harness: real processes (:mod:`tests.integration.processes`), because the
point is a process killed without warning: whatever the witness had not
written is lost, and it must restart from its data directory with its
chain (a witness that signed a seq twice would be flagged).  The attacks
that act inside a node are in-process (``test_fair_attacks``).

A witness is down for 20 s, as the issue asks: that hold is the one fixed
wait; everything else waits for a condition under a hang guard.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.task import deferLater

from bitfitech.testing import free_ports, global_reactor

from .processes import NodeProcess, ProcessTestCase, witness_arguments

#: how long the witness stays dead, seconds
DOWN = 20.0
#: how often the live nodes are checked while it is
CHECK_EVERY = 0.5


class WitnessKilledTests(ProcessTestCase):
    """Three witness processes and two plain ones."""

    timeout = 240

    async def test_witness_killed_stalls_final_not_settled(self) -> None:
        """
        With one of three witnesses SIGKILLed, a new trade settles on every
        live node, and stays settled, not final, for the 20 s the witness is
        down; restarted on its data directory, it catches up, the trade
        becomes final everywhere, and no node finds any witness faulty.
        """
        reactor = global_reactor()
        ports = free_ports(10)
        data_dirs = [os.path.abspath(self.mktemp()) for _ in range(5)]
        fair = witness_arguments(data_dirs[:3], ports[0:6:2])
        names = ["witness0", "witness1", "witness2", "seller", "buyer"]
        nodes = [
            self.spawn_node(
                name, ports[2 * i], ports[2 * i + 1], data_dir=data_dirs[i], extra_args=fair
            )  # fmt: skip
            for i, name in enumerate(names)
        ]
        ids = [(await node.wait_for_api())["node_id"] for node in nodes]
        witnesses, (seller, buyer) = nodes[:3], nodes[3:]
        last: dict[str, Any] = {}

        def details() -> str:
            return json.dumps(last, indent=1)

        async def linked() -> bool:
            for node, own in zip(nodes, ids, strict=True):
                last[node.name] = [row["node_id"] for row in await node.get_json("/peers")]
                if not set(ids[:3]) - {own} <= set(last[node.name]):
                    return False
            return True

        await self.eventually(linked, "every node linked to every witness", details)

        async def stamping() -> bool:
            for node in nodes:
                chains = (await node.get_json("/status"))["witnesses"]["chains"]
                last[node.name] = chains
                if any(chain["seq"] < 1 for chain in chains):
                    return False
            return True

        # A running network loses a witness with a chain to restart from.
        # (Killed before it signs, at a network's start, while stamps
        # signed before the links formed reached the others late, it
        # would hold settlement back: docs/consistency.rst, "A witness
        # down and a late acknowledgement stall settlement".)
        await self.eventually(stamping, "every node holding every witness's stamps", details)

        down = witnesses[2]
        self.nodes.remove(down)  # its end is the point
        await down.kill()
        killed_at = reactor.seconds()
        live = [node for node in nodes if node is not down]
        for node, side in ((seller, "sell"), (buyer, "buy")):
            order = {"side": side, "price": "100", "amount": "1"}
            code, doc = await node.post_json("/orders", order)
            self.assertEqual(code, 201, doc)

        async def trade_is(node: NodeProcess, statuses: tuple[str, ...]) -> bool:
            trades = (await node.get_json("/trades"))["trades"]
            last[node.name] = trades
            return len(trades) == 1 and trades[0]["status"] in statuses

        async def everywhere(among: list[NodeProcess], *statuses: str) -> bool:
            return all([await trade_is(node, statuses) for node in among])

        await self.eventually(lambda: everywhere(live, "settled"),
                              "the trade settled with a witness down", details)  # fmt: skip
        while reactor.seconds() < killed_at + DOWN:
            await deferLater(reactor, CHECK_EVERY, lambda: None)
            self.assertTrue(await everywhere(live, "settled"), f"not settled only\n{details()}")

        again = self.spawn_node(down.name, down.port, down.api_port, data_dir=down.data_dir,
                                extra_args=fair)  # fmt: skip
        await again.wait_for_api()
        everyone = [*live, again]
        await self.eventually(lambda: everywhere(everyone, "final"),
                              "the trade final once the witness is back", details)  # fmt: skip
        for node in everyone:
            last[node.name] = await node.get_json("/status")
        self.assertEqual(len({doc["state_hash"] for doc in last.values()}), 1, details())
        for name, doc in last.items():
            self.assertEqual(doc["witnesses"]["flagged"], {}, name)
            self.assertEqual(doc["market"]["revisions"], 0, name)
