"""Tests for the per-author rate limit of :class:`bitfitech.gossip.Gossip`.

New events relayed to a node count against their author's token bucket;
the excess is dropped before its signatures are checked and not marked
seen, so that anti-entropy brings it later.  Uses the fakes of
:mod:`tests.test_gossip`.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.gossip import AUTHOR_PRUNE, GAP_CHECK
from bitfitech.peer import misbehaviour
from bitfitech.wire.messages import Events

from .test_gossip import TIMING, Mesh, Node, author, chain, ids

#: 10 new events a second per author, bursts of 20; a peer is scored past 20 + 2 * 10
LIMITED = replace(TIMING, author_rate=10.0, author_burst=20.0)


def relay(events: list, ttl: int = 5) -> Events:  # type: ignore[type-arg]
    return Events(tuple(e.wire for e in events), ttl=ttl, more=False)


def received(node: Node) -> list[str]:
    return [e.id for batch in node.store.received for e in batch]


def rate_reports(node: Node, n: int) -> int:
    owner = node.links[n].owner
    return sum(1 for score in owner.scores if score == misbehaviour.RATE_EXCEEDED)


class AuthorRateTests(SynchronousTestCase):
    def test_flood_of_one_author_cut_at_the_limit_others_pass(self) -> None:
        flood, other = chain(author(1), 50), chain(author(2), 5)
        node = Node(2, timing=LIMITED)
        node.deliver(node.links[0], relay(flood + other))
        self.assertEqual(sorted(received(node)), sorted(ids(flood[:20] + other)))
        self.assertEqual(node.gossip.stats["events_rate_limited"], 30)
        self.assertEqual(node.gossip.stats["events_new"], 25)

    def test_default_limits_take_honest_batch_entry(self) -> None:
        """The defaults pass 2,000 events of one author at once, and 5,000 a second after."""
        node = Node(1)
        events = chain(author(1), 2000)
        node.deliver(node.links[0], relay(events[:1000]), relay(events[1000:]))
        self.assertEqual(node.gossip.stats["events_new"], 2000)
        self.assertEqual(node.gossip.stats["events_rate_limited"], 0)

    def test_dropped_events_not_marked_seen(self) -> None:
        """The dropped events are taken when they come again once the bucket refilled."""
        flood = chain(author(1), 50)
        node = Node(2, timing=LIMITED)
        node.deliver(node.links[0], relay(flood))
        node.clock.advance(2.0)  # 20 tokens, a full bucket
        node.deliver(node.links[1], relay(flood[20:40]))
        node.clock.advance(1.0)
        node.deliver(node.links[1], relay(flood[40:]))
        self.assertEqual(node.gossip.stats["events_duplicate"], 0)
        self.assertEqual(sorted(received(node)), sorted(ids(flood)))

    def test_anti_entropy_answers_are_not_limited(self) -> None:
        flood = chain(author(1), 50)
        node = Node(1, timing=LIMITED)
        node.deliver(node.links[0], relay(flood))
        node.deliver(node.links[0], relay(flood[20:], ttl=0))
        self.assertEqual(sorted(received(node)), sorted(ids(flood)))

    def test_peer_scored_at_most_once_a_second_when_alone_over_the_limit(self) -> None:
        flood = chain(author(1), 200)
        node = Node(1, timing=LIMITED)
        node.deliver(node.links[0], relay(flood[:41]))  # one over burst + slack
        self.assertEqual(rate_reports(node, 0), 1)
        self.assertIn(author(1).author[:16], node.links[0].owner.misbehaved[0][1])
        node.clock.advance(0.5)
        node.deliver(node.links[0], relay(flood[41:100]))
        self.assertEqual(rate_reports(node, 0), 1)
        node.clock.advance(0.6)
        node.deliver(node.links[0], relay(flood[100:]))
        self.assertEqual(rate_reports(node, 0), 2)

    def test_honest_relays_sharing_an_author_are_not_scored(self) -> None:
        """Two peers each relay 30 events of one author: 40 dropped, nobody is to blame."""
        flood = chain(author(1), 60)
        node = Node(2, timing=LIMITED)
        node.deliver(node.links[0], relay(flood[:30]))
        node.deliver(node.links[1], relay(flood[30:]))
        self.assertEqual(node.gossip.stats["events_rate_limited"], 40)
        self.assertEqual(node.links[0].owner.misbehaved + node.links[1].owner.misbehaved, [])

    def test_own_events_never_limited(self) -> None:
        node = Node(2, timing=LIMITED)
        own = chain(author(9), 100)
        node.store.add(*own)
        node.gossip.publish(own)
        node.clock.advance(0)
        self.assertEqual(node.gossip.stats["events_pushed"] + node.gossip.stats["inv_sent"], 200)
        self.assertEqual(node.gossip.stats["events_rate_limited"], 0)

    def test_full_buckets_are_forgotten(self) -> None:
        node = Node(1, timing=LIMITED)
        node.gossip.start()
        self.addCleanup(node.gossip.stop)
        node.deliver(node.links[0], relay(chain(author(1), 5) + chain(author(2), 5)))
        self.assertEqual(len(node.gossip._authors), 2)
        node.clock.advance(AUTHOR_PRUNE)
        self.assertEqual(len(node.gossip._authors), 0)
        self.assertEqual(len(node.gossip.peers[node.links[0]].authors), 0)  # type: ignore[index]

    def test_dropped_events_fetched_later_by_anti_entropy(self) -> None:
        """Two nodes: a burst of one author beyond the limit arrives whole, a little later."""
        mesh = Mesh(2, LIMITED)
        mesh.clock.advance(1_700_000_000)  # the events' own time, so that they age
        mesh.connect(0, 1)
        mesh.pump()
        for gossip in mesh.gossips:
            gossip.start()
            self.addCleanup(gossip.stop)
        events = chain(author(1), 40)  # beyond the burst, within what a peer may relay
        mesh.publish(0, *events)
        mesh.pump()
        self.assertEqual(mesh.gossips[1].stats["events_rate_limited"], 20)
        for _ in range(8):  # four seconds: the events age out of flight, a gap check pulls
            mesh.clock.advance(GAP_CHECK / 2)
            mesh.pump()
        self.assertEqual(mesh.stores[1].vector(), {author(1).author: 40})
        self.assertEqual(mesh.stores[0].digest(), mesh.stores[1].digest())
        self.assertEqual(mesh.links[0].owner.misbehaved + mesh.links[1].owner.misbehaved, [])
