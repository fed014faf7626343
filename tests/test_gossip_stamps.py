"""Tests for how :mod:`bitfitech.gossip` carries witness stamps.

A witness's own stamps (and evidence) go in full to every peer; a stamp
from a peer is announced and fetched on demand; form and signature are
checked first; ``sync`` carries a stamp vector and is answered with the
stamps the asker lacks.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.gossip import GAP_CHECK, Gossip
from bitfitech.market.stamps import stamp_id
from bitfitech.peer import misbehaviour
from bitfitech.simulation import LedgerStore
from bitfitech.wire.messages import GetData, Inv, Message, Stamps, Sync

from .market.witnessing import NETWORK, PAIR, run, witness_seeds
from .test_gossip import TIMING, FakeLink, as_link, wire_roundtrip

WITNESSES = witness_seeds(3)


class StampStore(LedgerStore):
    """A ledger store of the witnesses' test network."""

    network = NETWORK
    pair = PAIR

    def __init__(self) -> None:
        super().__init__(WITNESSES[0])


def stamps_sent(messages: list[Message]) -> list[str]:
    return [stamp_id(text) for m in messages if isinstance(m, Stamps) for text, _ in m.stamps]


def announced(messages: list[Message]) -> list[str]:
    return [ident for m in messages if isinstance(m, Inv) for ident in m.ids]


class StampGossipTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = StampStore()
        self.gossip = Gossip(self.store, self.clock, TIMING, random.Random(1))
        self.links = [FakeLink(f"peer{n}") for n in range(2)]
        for link in self.links:
            self.gossip.link_ready(as_link(link))
            link.take()
        self.stamps = run(3, {}, until=500, witnesses=WITNESSES).all()

    def deliver(self, link: FakeLink, message: Message) -> None:
        self.assertTrue(self.gossip.link_message(as_link(link), wire_roundtrip(message)))

    def test_own_stamps_in_full(self) -> None:
        """Stamps this node publishes go in full to every peer."""
        self.store.ledger.insert_stamps(self.stamps[:2])
        self.gossip.publish_stamps(self.stamps[:2])
        self.clock.advance(0)
        expected = [s.id for s in self.stamps[:2]]
        for link in self.links:
            self.assertEqual(stamps_sent(link.take()), expected)

    def test_relayed_stamps_announced(self) -> None:
        """A new stamp from one peer is taken, and announced (not pushed) to the others."""
        first, other = self.links
        self.deliver(first, Stamps(tuple(s.wire for s in self.stamps[:3]), more=False))
        self.clock.advance(0)
        self.assertTrue(all(self.store.has_stamp(s.id) for s in self.stamps[:3]))
        sent = other.take()
        self.assertEqual(stamps_sent(sent), [])
        self.assertEqual(announced(sent), [s.id for s in self.stamps[:3]])
        self.assertEqual(first.take(), [])
        self.assertEqual(self.gossip.stats["stamps_new"], 3)
        self.deliver(other, Stamps(tuple(s.wire for s in self.stamps[:3]), more=False))
        self.assertEqual(self.gossip.stats["stamps_duplicate"], 3)

    def test_announced_stamp_fetched_and_served(self) -> None:
        """An announced stamp is asked for, and a getdata for one is answered."""
        first, other = self.links
        stamp = self.stamps[0]
        self.deliver(first, Inv((stamp.id,), TIMING.ttl))
        self.clock.advance(0)
        self.assertEqual(first.take(), [GetData((stamp.id,))])
        self.deliver(first, Stamps((stamp.wire,), more=False))
        self.assertTrue(self.store.has_stamp(stamp.id))
        self.deliver(other, GetData((stamp.id,)))
        self.clock.advance(0)
        self.assertEqual(stamps_sent(other.take()), [stamp.id])

    def test_malformed_and_forged(self) -> None:
        """A malformed stamp marks the peer; a forged signature closes its link."""
        first, other = self.links
        stamp = self.stamps[0]
        self.deliver(
            first, Stamps(((stamp.text.replace("bitfi-stamp1", "bitfi-stamp9"), stamp.sig),), False)
        )
        self.assertEqual(first.owner.scores, [misbehaviour.MALFORMED_EVENT])
        self.assertFalse(first.closed)
        self.deliver(other, Stamps(((stamp.text, self.stamps[1].sig),), False))
        self.assertTrue(other.closed)
        self.assertFalse(self.store.has_stamp(stamp.id))
        # The forged copy did not shut the genuine one out.
        self.deliver(first, Stamps((stamp.wire,), False))
        self.assertTrue(self.store.has_stamp(stamp.id))

    def test_sync_carries_and_answers_stamps(self) -> None:
        """A sync names the stamps held; the answer brings those the asker lacks."""
        first, _ = self.links
        self.store.ledger.insert_stamps(self.stamps)
        self.gossip._pull(self.gossip.peers[as_link(first)])  # noqa: SLF001
        (sync,) = [m for m in first.take() if isinstance(m, Sync)]
        self.assertEqual(dict(sync.stamps), self.store.stamp_vector())
        behind = {w: 2 for w in dict(sync.stamps)}
        self.deliver(first, Sync((), sync.digest, stamps=tuple(behind.items())))
        answer = stamps_sent(first.take())
        expected = [s.id for s in self.stamps if s.seq > 2]
        self.assertEqual(sorted(answer), sorted(expected))

    def test_stamp_gap_pulls(self) -> None:
        """A stamp missing behind others held makes the node sync with a peer after a gap check."""
        self.gossip.start()
        self.addCleanup(self.gossip.stop)
        first, _ = self.links
        chain = [s for s in self.stamps if s.member == 0]
        self.deliver(first, Stamps(tuple(s.wire for s in chain[:1] + chain[2:]), more=False))
        self.clock.advance(0)
        self.assertEqual(self.store.stamp_gap_marks(), {(chain[0].witness, 1)})
        for link in self.links:
            link.take()
        self.clock.advance(GAP_CHECK)
        self.clock.advance(GAP_CHECK)
        syncs = [m for link in self.links for m in link.take() if isinstance(m, Sync)]
        self.assertEqual(len(syncs), 1)
        self.assertIn((chain[0].witness, 1), syncs[0].stamps)
