"""
Replication on loopback: real nodes in one reactor, in a sparse mesh.

Data path: orders enter each node's API layer (:class:`~bitfitech.api.control.NodeControl`)
-> market -> gossip over real TCP links on 127.0.0.1 -> every other node's
ledger.  The tests check the promise of ``docs/consistency.rst``: nodes that
hold the same events hold the same book and the same trades, whatever the
order events arrived in, including after a late join and a partition.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from bitfitech.address import PeerAddress
from bitfitech.config import GossipTiming
from bitfitech.node import Node
from bitfitech.testing import (
    HANG_GUARD,
    ClusterTestCase,
    market_state,
    poll_placed,
    poll_until,
)

#: seconds a test may wait for nodes to link up or converge (a hang guard)
DEADLINE = HANG_GUARD

#: quick anti-entropy, so that healing does not wait for the 30 s default
GOSSIP = GossipTiming(sync_interval=1.0)

#: links a node may keep to witnesses and, for a witness, from every other
#: node of a test (at most 5 + 1), on top of its place in the line
WITNESS_LINKS = 8


def trades_of(node: Node) -> list[tuple[Any, ...]]:
    """A node's whole trade history, oldest first."""
    ledger = node.market.ledger
    return [tuple(trade) for trade in reversed(ledger.trades(ledger.trade_count))]


class ReplicationTests(ClusterTestCase):
    """
    Several real nodes in a line: orders anywhere end up identical everywhere.

    :cvar witnesses: how many witnesses the network names: 0 here (author
        order); :class:`FairReplicationTests` sets 3.
    """

    timeout = 120
    witnesses = 0

    def setUp(self) -> None:
        super().setUp()
        self.rng = random.Random(4)
        self.witness_addresses: tuple[PeerAddress, ...] = ()

    def start_node(self, **changes: Any) -> Node:
        """
        Start one more node of the test's network.  With witnesses, every
        node names them, and the first ones started are them.

        A witness takes a link from every node (``docs/operations.rst``:
        give it a ``max_peers`` to match), and a plain node's links to the
        witnesses count towards its own ``max_peers``: so, with witnesses,
        C{max_peers} (when given) stays the number of links a node keeps
        besides them.
        """
        if self.witnesses and not self.cluster.nodes:
            self.witness_addresses = self.cluster.witness_addresses(self.witnesses)
        started = len(self.cluster.nodes)
        if self.witness_addresses:
            changes["witnesses"] = self.witness_addresses
            if "max_peers" in changes:
                changes["max_peers"] += WITNESS_LINKS
            if started < len(self.witness_addresses):
                changes["port"] = self.witness_addresses[started].port
        return self.cluster.start_node(**changes)

    def start_line(self, count: int, max_peers: int = 2) -> list[Node]:
        """
        Start C{count} nodes, each dialing the previous one: a line, or a
        ring once the first node, which has no bootstrap, dials the last.
        """
        nodes: list[Node] = []
        for _ in range(count):
            nodes.append(
                self.start_node(
                    bootstrap_to=nodes[-1:], outbound=1, max_peers=max_peers, gossip=GOSSIP
                )
            )
        return nodes

    def line_links(self, count: int) -> list[tuple[int, int]]:
        """
        The pairs of a line of C{count} nodes (indexes) that link: each node
        and the one before it.  With witnesses, each node and every witness
        started before it: a node links to every witness, and its links with
        them fill its outbound target of 1, so a plain node dials no other.
        """
        if not self.witnesses:
            return [(i, i - 1) for i in range(1, count)]
        return [(i, w) for i in range(1, count) for w in range(min(i, self.witnesses))]

    async def linked(self, nodes: list[Node], links: list[tuple[int, int]]) -> None:
        """Wait until each pair in C{links} (indexes into C{nodes}) is linked."""
        ids = [node.storage.identity.node_id for node in nodes]
        await poll_until(
            self.reactor,
            lambda: all(ids[b] in nodes[a].peers.hub.links for a, b in links),
            DEADLINE,
            "the line is linked",
        )

    async def converged(self, nodes: list[Node], events: int) -> None:
        """
        Wait until every node holds C{events} events and the same state
        (with witnesses: every event also placed in the log, none waiting
        for its fair time).
        """

        def same() -> bool:
            states = {market_state(node) for node in nodes}
            if self.witnesses and any(node.market.ledger.applied != events for node in nodes):
                return False
            return len(states) == 1 and next(iter(states))[1] == events

        try:
            if self.witnesses:  # skipped if an event can never be placed (a node bug)
                await poll_placed(self.reactor, nodes, same, DEADLINE, "convergence")
            else:
                await poll_until(self.reactor, same, DEADLINE, "convergence")
        except TimeoutError:
            self.fail(f"no convergence: {[market_state(node) for node in nodes]}")
        first = trades_of(nodes[0])
        for node in nodes[1:]:
            self.assertEqual(trades_of(node), first)

    async def trade(self, nodes: list[Node], count: int) -> list[str]:
        """
        Enter C{count} crossing orders and some cancels on random nodes,
        several in flight at once; return the ids of the orders.
        """
        placed: dict[int, list[str]] = {i: [] for i in range(len(nodes))}
        ids: list[str] = []
        in_flight: list[Deferred[Any]] = []
        for n in range(count):
            i = self.rng.randrange(len(nodes))
            control = nodes[i].control
            if placed[i] and self.rng.random() < 0.2:
                target = placed[i].pop(self.rng.randrange(len(placed[i])))
                in_flight.append(control.cancel_order(target))
            else:
                side = self.rng.choice(["buy", "sell"])
                price = f"{self.rng.randint(95, 105)}.{self.rng.choice(['00', '50'])}"
                d = control.submit_order(side, price, str(self.rng.randint(1, 3)), "limit")

                def record(doc: dict[str, Any], i: int = i) -> None:
                    placed[i].append(doc["id"])
                    ids.append(doc["id"])

                in_flight.append(d.addCallback(record))
            if n % 16 == 15:
                await gatherResults(in_flight)
                in_flight = []
                await deferLater(self.reactor, 0.001, lambda: None)
        await gatherResults(in_flight)
        return ids

    async def test_concurrent_orders_converge(self) -> None:
        """
        500 orders and cancels entered concurrently on the five nodes of a
        line give every node the same state hash and the same trades.
        """
        nodes = self.start_line(5)
        await self.linked(nodes, self.line_links(5))
        await self.trade(nodes, 500)
        await self.converged(nodes, 500)
        self.assertGreater(nodes[0].market.ledger.trade_count, 50)
        # The line forces events through several hops, and arrivals out of
        # key order: in author order some node must have rolled back.  (In
        # fair order an event is placed once its receipts are all in, and
        # rollbacks are rare.)
        if not self.witnesses:
            self.assertTrue(any(node.market.ledger.rollbacks for node in nodes))

    async def test_late_joiner_catches_up(self) -> None:
        """A node that joins after 300 orders reaches the same state by anti-entropy."""
        nodes = self.start_line(3, max_peers=3)
        await self.linked(nodes, self.line_links(3))
        await self.trade(nodes, 300)
        await self.converged(nodes, 300)
        late = self.start_node(bootstrap_to=[nodes[2]], outbound=1, max_peers=2, gossip=GOSSIP)
        await self.converged([*nodes, late], 300)
        self.assertGreater(late.gossip.stats["sync_received"] + late.gossip.stats["sync_sent"], 0)

    async def test_partition_heals(self) -> None:
        """
        Two halves cut apart trade on their own (their books differ), and
        converge once one link joins them again.
        """
        nodes = self.start_line(4)
        await self.linked(nodes, self.line_links(4))
        await self.trade(nodes, 50)
        await self.converged(nodes, 50)
        left, right = nodes[:2], nodes[2:]
        ids = {node: node.storage.identity.node_id for node in nodes}
        for side, other in ((left, right), (right, left)):
            for node in side:
                for peer in other:
                    node.peers.dialer.rest_node(ids[peer])
        for node in left:
            for peer in right:
                node.control.disconnect(ids[peer])
                peer.control.disconnect(ids[node])
        await poll_until(
            self.reactor,
            lambda: not any(ids[peer] in node.peers.hub.links for node in left for peer in right),
            DEADLINE,
            "the halves are cut",
        )
        await self.trade(left, 60)
        await self.trade(right, 60)
        await self.converged(left, 110)
        if self.witnesses:
            # Fair order: the left half (witnesses 0 and 1) is n - f = 2
            # witnesses, and settles everything it holds.
            await poll_until(
                self.reactor,
                lambda: all(node.market.ledger.settled_position() == 110 for node in left),
                DEADLINE,
                "the left half settled",
            )
            # The right half (witness 2 and node 3) has one witness of three,
            # short of the f + 1 = 2 receipts a fair time needs.  It holds
            # its 60 events but cannot place them: they wait, on both of its
            # nodes, until the halves meet again.
            await self.held(right, 110, placed=50)
        else:
            await self.converged(right, 110)
        self.assertNotEqual(market_state(left[0]), market_state(right[0]))

        # Node 2 dialed node 1 at first; its outbound slot is the free one.
        await nodes[2].control.connect(f"127.0.0.1:{nodes[1].peers.listen_port}")
        await self.converged(nodes, 170)
        if self.witnesses:
            # The right half's events get their fair times at the heal, after
            # everything the left half settled: nothing settled is revised.
            self.assertEqual([node.market.ledger.revisions for node in nodes], [0] * 4)

    async def held(self, nodes: list[Node], events: int, placed: int) -> None:
        """Wait until every node holds C{events} events, of which C{placed} are in the log."""

        def held() -> bool:
            for node in nodes:
                node.market.flush()
                ledger = node.market.ledger
                if (len(ledger), ledger.applied) != (events, placed):
                    return False
            return True

        await poll_until(self.reactor, held, DEADLINE, f"{events} events held, {placed} placed")


class FairReplicationTests(ReplicationTests):
    """:class:`ReplicationTests` with three witnesses, the first three nodes of each test."""

    witnesses = 3
