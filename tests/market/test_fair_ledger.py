"""Tests for the fair order of :class:`bitfitech.market.ledger.Ledger` (a network with witnesses).

Events enter the log by the fair time their witnesses' stamps give, not
by their authors' clocks: a backdated order does not jump the queue, a
maker's cancel beats a taker in its slot, an author's events keep their
order; settled state never changes as more stamps arrive (but for a
flagged witness); and the same events and stamps give the same state in
any order and any split.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.market.events import Event
from bitfitech.market.ledger import FINAL, SETTLED, TENTATIVE, Ledger
from bitfitech.market.stamps import Stamp

from .strategies import AUTHORS
from .test_ledger import cancel, order, state
from .witnessing import Run, at, run, witness_seeds

ALICE, BOB, CAROL, DAVE, ERIN = AUTHORS
WITNESSES = witness_seeds(3)


def ledger() -> Ledger:
    """An empty ledger of the standard three-witness test set."""
    return Ledger(witnesses=WITNESSES[0])


def witnessed(arrivals: dict[Event, int], until: int = 3000, **options: Any) -> Run:
    """Stamps of three witnesses that each saw each event at its given time (ms after T0)."""
    seen = {w: {event.id: at + w for event, at in arrivals.items()} for w in range(3)}
    return run(3, seen, until=until, witnesses=WITNESSES, **options)


def ids(ledger: Ledger) -> list[str]:
    return [event.id for event in ledger.log()]


class FairOrderTests(SynchronousTestCase):
    """The log is in fair-time order, whatever the authors' clocks say."""

    def test_unstamped_events_wait(self) -> None:
        """An event without a fair time is held but not applied."""
        held = ledger()
        b1 = order(BOB, 1, 5, "sell")
        held.insert([b1])
        self.assertEqual((len(held), held.applied), (1, 0))
        stamps = witnessed({b1: 100}).all()
        _, result = held.insert_stamps(stamps)
        self.assertEqual(held.applied, 1)
        self.assertEqual(result.appended, 1)

    def test_backdating_does_not_jump(self) -> None:
        """
        Carol's buy reaches the witnesses first; Dave, having seen it,
        signs a buy with a far smaller Lamport time.  Carol still trades
        with Bob's offer, and Dave's order rests.
        """
        b1 = order(BOB, 1, 1, "sell", "100", "1")
        c1 = order(CAROL, 1, 1000, "buy", "100", "1")
        d1 = order(DAVE, 1, 2, "buy", "100", "1")  # backdated
        held = ledger()
        held.insert([b1, c1, d1])
        held.insert_stamps(witnessed({b1: 50, c1: 300, d1: 320}).all())
        self.assertEqual(ids(held), [b1.id, c1.id, d1.id])
        (trade,) = held.trades(10)
        self.assertEqual((trade.taker, trade.maker), (c1.id, b1.id))
        self.assertIsNotNone(held.open_order(d1.id))

    def test_cancel_beats_taker_in_its_slot(self) -> None:
        """A maker's cancel in the same 100 ms slot as a taker goes first, though later."""
        b1 = order(BOB, 1, 1, "sell", "100", "1")
        c1 = order(CAROL, 1, 2, "buy", "100", "1")
        b2 = cancel(BOB, 2, 3, b1)
        held = ledger()
        held.insert([b1, c1, b2])
        held.insert_stamps(witnessed({b1: 50, c1: 210, b2: 280}).all())
        self.assertEqual(ids(held), [b1.id, b2.id, c1.id])
        self.assertEqual(held.trades(10), [])
        self.assertIsNotNone(held.open_order(c1.id))

    def test_post_only_before_taker_in_its_slot(self) -> None:
        """A post-only order goes before other orders of its slot."""
        b1 = order(BOB, 1, 1, "sell", "100", "1", "post_only")
        c1 = order(CAROL, 1, 2, "buy", "101", "1")
        held = ledger()
        held.insert([b1, c1])
        held.insert_stamps(witnessed({c1: 205, b1: 290}).all())
        self.assertEqual(ids(held), [b1.id, c1.id])
        self.assertEqual(len(held.trades(10)), 1)

    def test_author_order_kept(self) -> None:
        """An author's cancel that the witnesses saw before its order still follows it."""
        b1 = order(BOB, 1, 1, "sell", "100", "1")
        b2 = cancel(BOB, 2, 2, b1)
        c1 = order(CAROL, 1, 3, "buy", "99", "1")
        held = ledger()
        held.insert([b1, b2, c1])
        held.insert_stamps(witnessed({b2: 100, c1: 150, b1: 400}).all())
        self.assertEqual(ids(held), [c1.id, b1.id, b2.id])
        self.assertIsNone(held.open_order(b1.id))
        self.assertEqual(held.outcome(b2.id).state, "applied")  # type: ignore[union-attr]

    def test_settled_and_final(self) -> None:
        """Trades go tentative, then settled, then final as the chains pass them."""
        b1 = order(BOB, 1, 1, "sell", "100", "1")
        c1 = order(CAROL, 1, 2, "buy", "100", "1")
        held = ledger()
        held.insert([b1, c1])
        stamps = witnessed({b1: 50, c1: 1000}, until=3000).all()
        early = [s for s in stamps if s.t <= at(1130)]
        held.insert_stamps(early)
        held.settle(0.0, 0.0)
        (trade,) = held.trades(10)
        self.assertEqual(held.status_at(trade.position), TENTATIVE)
        self.assertEqual(held.status_at(0), SETTLED if held.final_position() == 0 else FINAL)
        held.insert_stamps(stamps)
        held.settle(0.0, 0.0)
        self.assertEqual(held.status_at(trade.position), FINAL)
        self.assertEqual(held.revisions, 0)

    def test_placed_when_horizon_passes_during_recount(self) -> None:
        """
        An event waiting for the settled horizon is placed when one batch
        of stamps both moves the horizon past it and changes the count of
        receipts of an event placed before it, further back in its
        author's chain.  (Such a batch once dropped the waiting event from
        the queue without placing it: it then waited forever.)
        """
        bob = [order(BOB, seq, seq, "sell", str(100 + seq), "1") for seq in range(1, 5)]
        seen: dict[int, dict[str, int]] = {
            0: {bob[0].id: 100, bob[1].id: 150, bob[2].id: 200, bob[3].id: 400},
            1: {bob[0].id: 101, bob[1].id: 151, bob[2].id: 201, bob[3].id: 401},
            2: {bob[0].id: 600},  # a late receipt, counted once the others ack it
        }
        stamps = run(3, seen, until=1500, witnesses=WITNESSES).all()
        held = ledger()
        held.insert(bob)
        held.insert_stamps([s for s in stamps if s.t <= at(560)])
        self.assertEqual(ids(held), [e.id for e in bob[:3]])  # the fourth waits for the horizon
        assert held.fair is not None
        self.assertGreater(held.fair.fair_time(bob[3].id) or 0, held.settled_horizon)
        held.insert_stamps([s for s in stamps if s.t > at(560)])
        self.assertEqual(ids(held), [e.id for e in bob])
        whole = ledger()
        whole.insert(bob)
        whole.insert_stamps(stamps)
        self.assertEqual(state(held), state(whole))

    def test_witness_down_settles_not_final(self) -> None:
        """With a witness down, trades settle but are not final."""
        b1 = order(BOB, 1, 1, "sell", "100", "1")
        c1 = order(CAROL, 1, 2, "buy", "100", "1")
        held = ledger()
        held.insert([b1, c1])
        held.insert_stamps(witnessed({b1: 50, c1: 1000}, silent={2: (500, 10_000)}).all())
        held.settle(0.0, 0.0)
        (trade,) = held.trades(10)
        self.assertEqual(held.status_at(trade.position), SETTLED)
        self.assertEqual(held.final_position(), 1)  # b1, stamped by all three before the crash

    def test_withheld_event_revises_nothing(self) -> None:
        """
        An event signed early but released 5 s later gets a fair time at
        its release: it sorts after everything settled meanwhile.
        """
        b1 = order(BOB, 1, 1, "sell", "100", "1")
        c1 = order(CAROL, 1, 2, "buy", "100", "1")
        d1 = order(DAVE, 1, 1, "buy", "101", "1")  # signed first, held back
        held = ledger()
        held.insert([b1, c1])
        stamps = witnessed({b1: 50, c1: 200, d1: 5200}, until=6000).all()
        held.insert_stamps([s for s in stamps if s.t < at(5000)])
        held.settle(0.0, 0.0)
        settled = held.settled_position()
        self.assertEqual(settled, 2)
        before = [tuple(trade) for trade in held.trades(10)]
        held.insert([d1])
        held.insert_stamps(stamps)
        held.settle(0.0, 0.0)
        self.assertEqual([tuple(trade) for trade in held.trades(10)][-1:], before)
        self.assertEqual(ids(held), [b1.id, c1.id, d1.id])
        self.assertEqual(held.revisions, 0)

    def test_lying_witness_stays_in_window(self) -> None:
        """
        One witness of three stamps an accomplice early and the victim
        late: the fair times stay within the honest witnesses' receipts,
        so the victim (seen first by both honest ones) keeps its place.
        """
        b1 = order(BOB, 1, 1, "sell", "100", "1")
        victim = order(CAROL, 1, 2, "buy", "100", "1")
        accomplice = order(DAVE, 1, 3, "buy", "100", "1")
        seen = {
            0: {b1.id: 50, victim.id: 300, accomplice.id: 340},
            1: {b1.id: 51, victim.id: 302, accomplice.id: 345},
            2: {b1.id: 52, victim.id: 900, accomplice.id: 1},  # the liar
        }
        held = ledger()
        held.insert([b1, victim, accomplice])
        held.insert_stamps(run(3, seen, until=2000, witnesses=WITNESSES).all())
        fair = held.fair
        assert fair is not None
        self.assertTrue(at(300) <= fair.fair_time(victim.id) <= at(302))  # type: ignore[operator]
        self.assertTrue(at(340) <= fair.fair_time(accomplice.id) <= at(345))  # type: ignore[operator]
        (trade,) = held.trades(10)
        self.assertEqual(trade.taker, victim.id)

    def test_author_equivocation_late_rival_loses(self) -> None:
        """
        An author's second event for the seq of a settled one, with a
        smaller id, released later, does not take the slot: the slot goes
        to the smaller fair time.  Before it has a fair time the rival
        does not displace the settled event either.
        """
        b1 = order(BOB, 1, 1, "sell", "100", "1")
        c1 = order(CAROL, 1, 2, "buy", "100", "1")
        rival = next(
            candidate
            for ts in range(1000)
            if (candidate := BOB.order(1, 1, ts, "sell", "limit", "99", "1")).id < b1.id
        )
        stamps = witnessed({b1: 50, c1: 300, rival: 3000}, until=4000).all()
        held = ledger()
        held.insert([b1, c1])
        held.insert_stamps([s for s in stamps if s.t < at(2000)])
        held.settle(0.0, 0.0)
        before = [tuple(trade) for trade in held.trades(10)]
        self.assertEqual(held.status_at(held.trades(1)[0].position), FINAL)
        held.insert([rival])
        self.assertEqual(ids(held), [b1.id, c1.id])
        held.insert_stamps(stamps)
        held.settle(0.0, 0.0)
        self.assertEqual(ids(held), [b1.id, c1.id])
        self.assertEqual([tuple(trade) for trade in held.trades(10)], before)
        self.assertEqual(held.revisions, 0)
        self.assertEqual(held.flagged, {BOB.author: "equivocation"})
        # The other order of arrival gives the same state.
        other = ledger()
        other.insert_stamps(stamps)
        other.insert([rival, c1, b1])
        self.assertEqual(state(other), state(held))

    def test_equivocating_witness(self) -> None:
        """A witness that signs two stamps for one seq is flagged and every node agrees."""
        b1 = order(BOB, 1, 1, "sell", "100", "1")
        c1 = order(CAROL, 1, 2, "buy", "100", "1")
        made = witnessed({b1: 50, c1: 300})
        first = made.stamps[0][4]
        rival = made.signers[0].sign(first.seq, first.t, first.prev, list(first.acks), [])
        one, two = ledger(), ledger()
        one.insert([b1, c1])
        one.insert_stamps(made.all())
        one.insert_stamps([rival])
        two.insert_stamps([rival])
        two.insert_stamps(made.all())
        two.insert([c1, b1])
        self.assertEqual(state(one), state(two))
        self.assertEqual(one.fair.flagged, two.fair.flagged)  # type: ignore[union-attr]
        self.assertEqual(len(one.trades(10)), 1)


# -- properties


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Event], list[Stamp], int]:
    """Random orders and cancels of four authors, seen by three witnesses at random times."""
    count = draw(st.integers(2, 14))
    authors = AUTHORS[:4]
    seqs = dict.fromkeys(range(4), 0)
    events: list[Event] = []
    for _ in range(count):
        who = draw(st.integers(0, 3))
        seqs[who] += 1
        mine = [e for e in events if e.author == authors[who].author and e.is_order]
        if mine and draw(st.integers(0, 4)) == 0:
            events.append(cancel(authors[who], seqs[who], seqs[who], draw(st.sampled_from(mine))))
        else:
            side = draw(st.sampled_from(["buy", "sell"]))
            price = str(draw(st.integers(98, 102)))
            kind = draw(st.sampled_from(["limit", "limit", "post_only", "ioc"]))
            events.append(order(authors[who], seqs[who], seqs[who], side, price, "1", kind))
    if events and draw(st.integers(0, 3)) == 0:
        # An author signs a second event for one of its seqs.
        target = draw(st.sampled_from(events))
        who = next(a for a in authors if a.author == target.author)
        events.append(who.order(target.seq, target.lamport, 7, "buy", "limit", "97", "1"))
    seen: dict[int, dict[str, int | list[int]]] = {w: {} for w in range(3)}
    for event in events:
        base = draw(st.integers(10, 1500))
        for w in range(3):
            if draw(st.integers(0, 9)):  # a witness misses one now and then
                first = base + draw(st.integers(0, 60))
                # ... and lists one again now and then (as when its receipt did not count)
                again = draw(st.sampled_from([[], [], [], [500], [500, 1000]]))
                seen[w][event.id] = [first, *(first + later for later in again)]
    withheld = draw(st.sampled_from([{}, {2: 2000}]))
    slow = draw(st.sampled_from([{}, {(0, 1): 400}, {(0, 1): 300, (1, 0): 300}]))
    stamps = run(3, seen, until=2600, witnesses=WITNESSES, withheld=withheld, slow=slow).all()
    return events, stamps, draw(st.integers(0, 2**32))


def arrival_order(stamps: list[Stamp], lag: dict[int, int]) -> list[Stamp]:
    """C{stamps} in the order a node gets them when each witness's reach it C{lag} ms late."""
    return sorted(stamps, key=lambda stamp: stamp.t + lag.get(stamp.member, 0))


class FairPropertyTests(SynchronousTestCase):
    """Convergence and stable settlement on random scenarios."""

    @settings(max_examples=60, deadline=None)
    @given(scenarios())
    def test_any_order_any_split(self, scenario: tuple[list[Event], list[Stamp], int]) -> None:
        """The same events and stamps, delivered in any order and batches, give the same state."""
        events, stamps, seed = scenario
        whole = ledger()
        whole.insert(events)
        whole.insert_stamps(stamps)
        rng = random.Random(seed)
        items: list[Event | Stamp] = [*events, *stamps]
        rng.shuffle(items)
        part = ledger()
        while items:
            cut = rng.randrange(1, min(len(items), 12) + 1)
            batch, items[:cut] = items[:cut], []
            part.insert([item for item in batch if isinstance(item, Event)])
            part.insert_stamps([item for item in batch if isinstance(item, Stamp)])
        self.assertEqual(state(part), state(whole))

    @settings(max_examples=100, deadline=None)
    @given(scenarios(), st.sampled_from([{}, {2: 600}, {0: 400}, {1: 700}]))
    def test_settled_prefix_stable(
        self, scenario: tuple[list[Event], list[Stamp], int], lag: dict[int, int]
    ) -> None:
        """
        Stamps arriving in time order (one witness's late, sometimes),
        events at once: what is settled at any point is never changed by
        later stamps (withheld ones included).
        """
        events, stamps, seed = scenario
        rng = random.Random(seed)
        late = [event for event in events if rng.randrange(4) == 0]
        held = ledger()
        held.insert([event for event in events if event not in late])
        stamps = arrival_order(stamps, lag)
        settled_log: list[str] = []
        settled_trades: list[Any] = []
        for start in range(0, len(stamps), 5):
            held.insert_stamps(stamps[start : start + 5])
            if late and rng.randrange(3) == 0:
                held.insert([late.pop()])
            held.settle(0.0, 0.0)
            position = held.settled_position()
            log = ids(held)
            self.assertEqual(log[: len(settled_log)], settled_log)
            trades = [tuple(t) for t in reversed(held.trades(10**6)) if t.position < position]
            self.assertEqual(trades[: len(settled_trades)], settled_trades)
            settled_log, settled_trades = log[:position], trades
        held.insert(late)
        held.settle(0.0, 0.0)
        self.assertEqual(ids(held)[: len(settled_log)], settled_log)
        self.assertEqual(held.revisions, 0)
