"""Integration: real nodes on 127.0.0.1 link to their witnesses, and only nodes of one set link."""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from bitfitech.node import Node
from bitfitech.testing import HANG_GUARD, ClusterTestCase, poll_until, wait_for


class WitnessLinkTests(ClusterTestCase):
    timeout = 60

    def linked(self, node: Node, other: Node) -> bool:
        return other.storage.identity.node_id in node.peers.hub.links

    async def test_nodes_link_to_every_witness_and_refuse_another_set(self) -> None:
        """
        Three witnesses and a node with an outbound target of 2,
        bootstrapped to a node that is no witness: each links to the
        others through the witness addresses alone, and the three witness
        links fill the node's target, so it dials no one else and wants no
        more peers.  A node naming another set is refused by a witness it
        bootstraps to.
        """
        witnesses, (w0, w1, w2) = self.cluster.start_witnesses(3)
        bystander = self.cluster.start_node(witnesses=witnesses, outbound=2)
        plain = self.cluster.start_node(witnesses=witnesses, outbound=2, bootstrap_to=[bystander])
        nodes = [w0, w1, w2, plain]

        def linked() -> bool:
            return all(self.linked(a, b) for a in nodes for b in nodes if a is not b)

        await wait_for(nodes, linked, HANG_GUARD, self.reactor, "links to every witness")
        hub, dialer = plain.peers.hub, plain.peers.dialer
        self.assertEqual(len(hub.links), 3)
        self.assertTrue(all(hub.is_witness_link(link) for link in hub.links.values()))
        self.assertEqual(hub.target_count(ready=True), 3)  # whichever end dialled each
        self.assertFalse(plain.peers.wants_peers())
        dials = dialer.dials
        dialer.tick()
        self.assertEqual((dialer.dials, dialer.pending), (dials, {}))
        self.assertFalse(self.linked(plain, bystander))
        self.assertEqual(w0.peers.dialer.witnesses, {w.endpoint: w.node_id for w in witnesses[1:]})

        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        other = self.cluster.start_node(witnesses=witnesses[:1], bootstrap=witnesses[:1])
        await poll_until(self.reactor, lambda: other.peers.dialer.dial_failures >= 2,
                         HANG_GUARD, "the other set's node refused twice")  # fmt: skip
        self.assertEqual(other.peers.hub.links, {})
        self.assertFalse(self.linked(w0, other))
        self.assertEqual(other.peers.hub.misbehaviour_count + w0.peers.hub.misbehaviour_count, 0)
        refusals = [
            e["reason"] for e in events if e.get("log_format") == "Refusing {peer}: {reason}"
        ]
        self.assertTrue(refusals)
        self.assertTrue(all(reason.startswith("wrong witness set") for reason in refusals))
