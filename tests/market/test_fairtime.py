"""Tests for :mod:`bitfitech.market.fairtime` and :mod:`bitfitech.market.stamps`.

The stamp format and its checks; fair time as the (f + 1)-th counted
receipt; receipts of stamps that reach too few witnesses in time not
counting; flagged witnesses; the settled and final horizons with a
witness down, withheld or lagging; and independence from arrival order.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.market.fairtime import BROKEN_CHAIN, EQUIVOCATION, NEVER, StampChains
from bitfitech.market.stamps import (
    NO_PREV,
    Stamp,
    StampError,
    StampSigner,
    decode_stamp,
    parse_stamp,
    verify_stamp,
)

from .witnessing import NETWORK, PAIR, T0, at, run, witness_seeds

X, Y, Z = ("a" * 64, "b" * 64, "c" * 64)


def chains(
    stamps: list[Stamp], n: int = 3, held: frozenset[str] = frozenset({X, Y, Z})
) -> StampChains:
    """A StampChains of the standard test set holding C{stamps}."""
    witnesses, _ = witness_seeds(n)
    out = StampChains(witnesses, held.__contains__)
    out.insert(stamps)
    return out


class StampFormatTests(SynchronousTestCase):
    """A stamp's text, its checks and its signature."""

    def setUp(self) -> None:
        self.witnesses, seeds = witness_seeds(3)
        self.signer = StampSigner(seeds[1], NETWORK, PAIR, self.witnesses)

    def test_round_trip(self) -> None:
        """A signed stamp parses back to the same fields and verifies."""
        stamp = self.signer.sign(1, T0, NO_PREV, [(3, 7), (0, 0), (0, 0)], [(X, 5), (Y, 0)])
        again = decode_stamp(stamp.text, stamp.sig, NETWORK, PAIR, self.witnesses)
        self.assertEqual(again, stamp)
        self.assertEqual((stamp.member, stamp.seq, stamp.t), (1, 1, T0))
        self.assertEqual(stamp.receipts, ((X, 5), (Y, 0)))
        self.assertTrue(verify_stamp(stamp))
        self.assertIn(" - ", self.signer.sign(1, T0, NO_PREV, [(0, 0)] * 3, []).text + " ")

    def test_bad_signature(self) -> None:
        """A stamp whose signature is another's does not verify."""
        one = self.signer.sign(1, T0, NO_PREV, [(0, 0)] * 3, [])
        two = self.signer.sign(1, T0 + 1, NO_PREV, [(0, 0)] * 3, [])
        with self.assertRaises(StampError):
            decode_stamp(one.text, two.sig, NETWORK, PAIR, self.witnesses)

    def test_malformed(self) -> None:
        """Each broken field is refused with a reason."""
        good = self.signer.sign(2, T0, "d" * 64, [(0, 0), (1, 0), (0, 0)], [(X, 1)]).text
        fields = good.split(" ")

        def text(index: int, value: str) -> str:
            return " ".join(fields[:index] + [value] + fields[index + 1 :])

        bad = [
            text(0, "bitfi-stamp2"),
            text(1, "othernet"),
            text(3, "e" * 64),  # not a witness's key
            text(4, "01"),
            text(4, "0"),
            text(5, "0"),
            text(6, NO_PREV),  # seq 2 must name its predecessor
            text(7, "0:0,1:0"),  # too few acks
            text(7, "0:0,0:0,0:0"),  # own ack is not seq - 1
            text(7, "0:0,1:0,0:x"),
            text(8, f"{X}:1,{X}:2"),  # an event twice
            text(8, f"{X}:{T0}"),  # an offset at or beyond t
            text(8, "nothex:1"),
            good + " extra",
            good.replace(" ", "  ", 1),
        ]
        for candidate in bad:
            with self.assertRaises(StampError, msg=candidate[:120]):
                parse_stamp(candidate, "0" * 128, NETWORK, PAIR, self.witnesses)

    def test_signer_must_be_witness(self) -> None:
        """A key outside the set cannot sign stamps."""
        with self.assertRaises(ValueError):
            StampSigner(b"\x01" * 32, NETWORK, PAIR, self.witnesses)


class FairTimeTests(SynchronousTestCase):
    """An event's fair time is the (f + 1)-th smallest counted receipt."""

    def test_median(self) -> None:
        """Three witnesses, three receipts: the middle one."""
        made = run(3, {0: {X: 50}, 1: {X: 20}, 2: {X: 35}}, until=1000)
        held = chains(made.all())
        self.assertEqual(held.fair_time(X), at(35))

    def test_counted_per_witness(self) -> None:
        """Which witnesses' receipts of an event count (witness 0's stamp reaches none in time)."""
        made = run(
            3, {0: {X: 10}, 1: {X: 20}, 2: {X: 30}}, until=1000, slow={(0, 1): 400, (0, 2): 400}
        )
        held = chains(made.all())
        self.assertEqual([held.counted(X, w) for w in range(3)], [False, True, True])
        self.assertFalse(held.counted(Y, 1))

    def test_needs_f_plus_one(self) -> None:
        """One receipt of three is not enough."""
        held = chains(run(3, {0: {X: 50}}, until=1000).all())
        self.assertIsNone(held.fair_time(X))
        self.assertEqual(held.receipts(X), {0: (at(50), True)})

    def test_five_witnesses(self) -> None:
        """n = 5, f = 2: the third smallest receipt; two liars cannot go below the honest ones."""
        seen = {0: {X: 10}, 1: {X: 30}, 2: {X: 50}, 3: {X: 1}, 4: {X: 2}}
        held = chains(run(5, seen, until=1000).all(), n=5)
        self.assertEqual(held.fair_time(X), at(10))

    def test_one_witness(self) -> None:
        """A network with one witness orders by its receipts alone."""
        held = chains(run(1, {0: {X: 42}}, until=500).all(), n=1)
        self.assertEqual(held.fair_time(X), at(42))
        self.assertGreater(held.horizon(1), at(42))

    def test_any_order(self) -> None:
        """Stamps inserted in any order, in any batches, give the same fair times and horizons."""
        seen = {
            w: {e: random.Random(w * 7 + i).randrange(1, 900) for i, e in enumerate((X, Y, Z))}
            for w in range(3)
        }
        stamps = run(3, seen, until=1500).all()
        whole = chains(stamps)
        rng = random.Random(3)
        for _ in range(20):
            shuffled = stamps[:]
            rng.shuffle(shuffled)
            witnesses, _ = witness_seeds(3)
            part = StampChains(witnesses, frozenset({X, Y, Z}).__contains__)
            while shuffled:
                cut = rng.randrange(1, len(shuffled) + 1)
                part.insert(shuffled[:cut])
                del shuffled[:cut]
            for event_id in (X, Y, Z):
                self.assertEqual(part.fair_time(event_id), whole.fair_time(event_id))
            self.assertEqual(part.horizon(2), whole.horizon(2))
            self.assertEqual(part.horizon(3), whole.horizon(3))

    def test_withheld_stamps_do_not_count(self) -> None:
        """
        A witness that keeps its stamps back and releases them later
        (claiming it saw X first) moves no fair time: its stamps reached
        nobody else in time.
        """
        seen = {0: {X: 300}, 1: {X: 400}, 2: {X: 5}}
        made = run(3, seen, until=2000, withheld={2: 1500})
        held = chains(made.all())
        self.assertEqual(held.fair_time(X), at(400))
        self.assertEqual(held.receipts(X)[2], (at(5), False))


class ReachTests(SynchronousTestCase):
    """How long stamps take to reach the others, and receipts whose counting is open."""

    def test_reach_is_the_f_th_shortest(self) -> None:
        """With n = 3 (f = 1): the quicker of the two others' latest acks."""
        made = run(3, {}, until=1000, slow={(0, 1): 40, (0, 2): 90})
        held = chains(made.all())
        self.assertEqual(held.reach(0, NEVER), 45_000)  # delay 5 ms + 40 ms, in us
        self.assertEqual(held.reach(1, NEVER), 5_000)
        self.assertEqual(chains(made.all(), n=3).reach(2, NEVER), 5_000)

    def test_reach_leaves_out_silent_witnesses(self) -> None:
        """A witness whose chain is not held past C{since} says nothing of the reach now."""
        made = run(3, {}, until=1500, slow={(0, 2): 90}, silent={1: (500, 10_000)})
        held = chains(made.all())
        self.assertEqual(held.reach(0, NEVER), 5_000)
        self.assertEqual(held.reach(0, at(600)), 95_000)
        self.assertIsNone(held.reach(0, at(1500)))

    def test_may_yet_count(self) -> None:
        """
        A receipt late to one live witness may yet count while another has
        not stamped past it; not once every chain is past it, nor once it
        counts.
        """
        seen = {0: {X: 1500}, 1: {X: 1500}, 2: {}}
        down = run(3, seen, until=3000, silent={2: (1000, 10_000)}, slow={(0, 1): 400})
        late = run(3, seen, until=3000, slow={(0, 1): 400, (0, 2): 400})
        quick = run(3, seen, until=3000)
        for made, expected in ((down, True), (late, False), (quick, False)):
            (stamp,) = [s for s in made.stamps[0] if s.receipts]
            ((event_id, offset),) = stamp.receipts
            held = chains(made.all())
            self.assertEqual(held.may_yet_count(0, stamp.seq, stamp.t - offset), expected)
        self.assertTrue(chains(quick.all()).counted(X, 0))
        self.assertFalse(chains(late.all()).counted(X, 0))


class FlaggedWitnessTests(SynchronousTestCase):
    """Provably faulty witnesses lose all their receipts, everywhere alike."""

    def test_equivocation(self) -> None:
        """Two stamps for one seq flag the witness; fair times fall back to the others."""
        made = run(3, {0: {X: 10}, 1: {X: 20}, 2: {X: 30}}, until=600)
        held = chains(made.all())
        self.assertEqual(held.fair_time(X), at(20))
        first = made.stamps[0][2]
        rival = made.signers[0].sign(first.seq, first.t, first.prev, list(first.acks), [(Y, 1)])
        result = held.insert([rival])
        self.assertEqual(held.flagged, {rival.witness: EQUIVOCATION})
        self.assertEqual(result.flagged, [rival.witness])
        self.assertEqual(held.fair_time(X), at(30))
        self.assertEqual(result.changed, {X: at(30)})
        self.assertEqual(set(held.evidence()), {first, rival})

    def test_broken_chain(self) -> None:
        """A stamp that does not name its predecessor flags its witness."""
        made = run(3, {0: {X: 10}, 1: {X: 20}, 2: {X: 30}}, until=600)
        good = made.stamps[1][:3]
        bad = made.signers[1].sign(4, good[-1].t + 100, "e" * 64, [(0, 0), (3, 0), (0, 0)], [])
        held = chains(made.stamps[0] + made.stamps[2] + good + [bad])
        self.assertEqual(held.flagged, {bad.witness: BROKEN_CHAIN})
        self.assertIsNone(held.receipts(X).get(1))

    def test_same_result_whichever_side_came_first(self) -> None:
        """Equivocation evidence in either order gives the same state."""
        made = run(3, {0: {X: 10}, 1: {X: 20}, 2: {X: 30}}, until=600)
        first = made.stamps[0][2]
        rival = made.signers[0].sign(first.seq, first.t, first.prev, list(first.acks), [])
        one = chains(made.all() + [rival])
        two = chains([rival] + made.all())
        self.assertEqual(one.fair_time(X), two.fair_time(X))
        self.assertEqual(one.horizon(2), two.horizon(2))


class HorizonTests(SynchronousTestCase):
    """Settled needs n - f chains held past a point; final needs all n."""

    def test_all_live(self) -> None:
        """With every chain held, settled and final are W behind the slowest chains."""
        made = run(3, {0: {X: 10}, 1: {X: 20}, 2: {X: 30}}, until=2000)
        held = chains(made.all())
        settled, final = held.horizon(2), held.horizon(3)
        self.assertGreater(settled, at(1500))
        self.assertLessEqual(final, settled)
        self.assertGreater(final, at(1500))

    def test_witness_down(self) -> None:
        """A witness down stalls final but not settled; final resumes when it is back."""
        seen = {0: {X: 1500}, 1: {X: 1500}, 2: {}}
        down = run(3, seen, until=3000, silent={2: (1000, 10_000)})
        held = chains(down.all())
        self.assertGreater(held.horizon(2), at(2500))
        self.assertLess(held.horizon(3), at(1000))
        self.assertEqual(held.horizon_why(2)[1], {"by": "chains"})
        self.assertEqual(held.fair_time(X), at(1500))
        back = run(3, seen, until=4000, silent={2: (1000, 3000)})
        again = chains(back.all())
        self.assertGreater(again.horizon(3), at(3500))
        self.assertEqual(again.fair_time(X), at(1500))

    def test_unseen_event_holds_back(self) -> None:
        """A fair time of an event not held keeps the horizons before it."""
        made = run(3, {0: {X: 500}, 1: {X: 500}, 2: {X: 500}}, until=2000)
        held = chains(made.all(), held=frozenset())
        self.assertEqual(held.horizon_why(2), (at(500) - 1, {"by": "event", "event": X}))
        held.arrived([X])
        self.assertGreater(held.horizon(2), at(1500))

    def test_nothing_yet(self) -> None:
        """No stamps, no horizon."""
        self.assertEqual(chains([]).horizon(2), NEVER)

    def test_lagging_chain_acknowledged(self) -> None:
        """
        A stamp others acknowledged but this node lacks keeps the horizon
        at its witness's last stamp held: its receipts may count.
        """
        made = run(3, {0: {X: 10}, 1: {X: 20}, 2: {X: 1005}}, until=2000)
        partial = [s for s in made.all() if s.member != 2 or s.t < at(1000)]
        held = chains(partial)
        last_2 = held.last(2)
        assert last_2 is not None
        self.assertLessEqual(held.horizon(2), last_2.t)
        self.assertEqual(
            held.horizon_why(2)[1], {"by": "stamp", "witness": 2, "seq": last_2.seq + 1}
        )

    def test_receipt_that_may_count(self) -> None:
        """
        With a witness down, a receipt the other live witness acknowledged
        too late may still count (the witness down may have known its
        stamp in time): the settled horizon waits before it, and says so.
        """
        seen = {0: {X: 1500}, 1: {X: 1500}, 2: {}}
        down = run(3, seen, until=3000, silent={2: (1000, 10_000)}, slow={(0, 1): 400})
        held = chains(down.all())
        horizon, why = held.horizon_why(2)
        self.assertEqual(why["by"], "receipt")
        self.assertEqual((why["event"], why["witness"]), (X, 0))
        self.assertEqual(horizon, why["t"] - 1)
