"""Convergence: ledgers holding the same events hold the same book, however the events came.

The ledger's promise (its module docstring) is that the book and the trade
history are a pure function of the *set* of events held.  Here random event
sets from several authors (crossing orders, cancels of their own and of
others' orders, equivocating twins) are delivered to several ledgers in
different orders, in batches of random sizes, with duplicates and with some
events held back to the end; every ledger must end byte-identical to one fed
everything in a single insert, and to :func:`expected`, a direct reading of
the rules that shares no code with the ledger but the engine.  Then two
ledgers holding parts of a set run anti-entropy as gossip does
(``missing_for`` pages, and the chains that differ when the vectors agree
but the logs do not) until nothing moves, and must agree with a ledger
holding the union.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.market.book import OrderBook, is_trade
from bitfitech.market.events import Event
from bitfitech.market.ledger import Ledger

from .strategies import AUTHORS, EventSet, event_sets

DELIVERY_EXAMPLES = 150
SYNC_EXAMPLES = 120
LEDGERS = 3  # ledgers fed each event set, each in its own way


@dataclass
class Expected:
    """What the rules say a set of events makes."""

    log: list[str]  # event ids in total order
    book_hash: str
    trades: list[tuple[Any, ...]]  # (taker, maker, price, amount, side, lamport), oldest first
    flagged: dict[str, str]


def expected(events: tuple[Event, ...] | list[Event]) -> Expected:
    """
    The log, book, trades and flags the rules make of C{events}, read directly
    from ``bitfitech/market/ledger.py``'s docstring: per slot the smallest id
    wins; each author's applied prefix runs from seq 1 while Lamport times
    strictly increase; the log is sorted by ``(lamport, author, seq)``; a
    cancel acts only on an open order of its own author.
    """
    slots: dict[tuple[str, int], list[Event]] = {}
    for event in set(events):
        slots.setdefault((event.author, event.seq), []).append(event)
    flagged = {author: "equivocation" for (author, _), claims in slots.items() if len(claims) > 1}
    log: list[Event] = []
    for author in {event.author for event in events}:
        seq, previous = 1, 0
        while (author, seq) in slots:
            winner = min(slots[author, seq], key=lambda event: event.id)
            if winner.lamport <= previous:
                flagged.setdefault(author, "lamport")
                break
            log.append(winner)
            previous = winner.lamport
            seq += 1
    log.sort(key=lambda event: (event.lamport, event.author, event.seq))
    book = OrderBook()
    trades = []
    for event in log:
        if event.is_order:
            results = book.place(
                event.id, event.side, event.price, event.amount, event.author, event.order_type
            )
        else:
            target = book.order(event.target)
            results = book.cancel(event.target) if target and target.owner == event.author else []
        for item in results:
            if is_trade(item):
                _, _, taker, maker, side, price, amount = item
                trades.append((taker, maker, price, amount, side, event.lamport))
    return Expected([event.id for event in log], book.state_hash(), trades, flagged)


def observed(ledger: Ledger) -> tuple[Any, ...]:
    """What ledgers whose events make the same log must agree on."""
    return (
        ledger.state_hash(),
        ledger.log_hash,
        [tuple(trade) for trade in ledger.trades(10**9)],
        ledger.vector(),
    )


def deliver(events: tuple[Event, ...], rng: random.Random, ledger: Ledger) -> None:
    """
    Give C{ledger} every event of C{events}: shuffled, in batches of 1 to 8,
    with duplicates, and with about one event in eight held back to the end;
    the clock moves and the ledger settles along the way (which must not
    change what it converges to).
    """
    if not events:
        return
    order = list(events)
    rng.shuffle(order)
    late = [event for event in order if rng.randrange(8) == 0]
    stream = [event for event in order if event not in late]
    for _ in range(rng.randint(0, len(events) // 3 + 1)):
        stream.insert(rng.randint(0, len(stream)), rng.choice(events))
    stream += late
    if late and rng.randrange(2):
        stream.append(rng.choice(late))  # a duplicate of a late event, later still
    now = 0.0
    while stream:
        size = rng.randint(1, 8)
        batch, stream = stream[:size], stream[size:]
        now += rng.choice((0.0, 0.5, 2.0))
        ledger.insert(batch, now)
        if rng.randrange(3) == 0:
            ledger.settle(now, 1.0)


def random_ledger(rng: random.Random) -> Ledger:
    """A ledger with small, random snapshot settings, so rollbacks cross snapshots."""
    return Ledger(
        snapshot_interval=rng.randint(1, 6),
        max_snapshots=rng.randint(4, 8),
        dense_span=rng.choice([0, 0, 8, 40]),
    )


def most_snapshots(ledger: Ledger) -> int:
    """
    The most snapshots C{ledger} may keep: C{max_snapshots}, and those
    within C{dense_span} (at least C{snapshot_interval} apart) beyond half
    of them.
    """
    return ledger.max_snapshots + ledger.dense_span // ledger.snapshot_interval + 1


class ConvergenceTests(SynchronousTestCase):
    """Any delivery of one event set converges to one state: the rules' state."""

    def assertConverged(
        self, ledgers: list[Ledger], reference: Ledger, events: tuple[Event, ...]
    ) -> None:
        """Every ledger agrees with C{reference}, in state, outcomes and evidence."""
        want = observed(reference)
        ids = [event.id for event in events]
        for ledger in ledgers:
            self.assertEqual(observed(ledger), want)
            self.assertEqual(ledger.log(), reference.log())
            self.assertEqual((len(ledger), ledger.lamport), (len(reference), reference.lamport))
            self.assertEqual(ledger.flagged, reference.flagged)
            self.assertEqual(set(ledger.conflicts()), set(reference.conflicts()))
            for event_id in ids:
                self.assertEqual(ledger.outcome(event_id), reference.outcome(event_id))
                self.assertEqual(ledger.open_order(event_id), reference.open_order(event_id))
            self.assertLessEqual(len(ledger.snapshot_positions()), most_snapshots(ledger))

    def assertAsTheRulesSay(self, ledger: Ledger, events: tuple[Event, ...]) -> None:
        """C{ledger} holds what :func:`expected` derives from C{events}."""
        want = expected(events)
        self.assertEqual([event.id for event in ledger.log()], want.log)
        self.assertEqual(ledger.book.state_hash(), want.book_hash)
        trades = [
            (t.taker, t.maker, t.price, t.amount, t.side, t.lamport)
            for t in reversed(ledger.trades(10**9))
        ]
        self.assertEqual(trades, want.trades)
        self.assertEqual(
            [t.seq for t in reversed(ledger.trades(10**9))], list(range(1, len(trades) + 1))
        )
        self.assertEqual(ledger.flagged, want.flagged)

    @settings(max_examples=DELIVERY_EXAMPLES)
    @given(event_sets(min_size=8), st.randoms(use_true_random=False))
    def test_any_delivery_converges(self, event_set: EventSet, rng: random.Random) -> None:
        """Shuffled, batched, duplicated and late deliveries all end in the reference state."""
        events = event_set.events
        reference = Ledger()
        reference.insert(events)
        self.assertAsTheRulesSay(reference, events)
        ledgers = []
        for _ in range(LEDGERS):
            ledger = random_ledger(rng)
            deliver(events, rng, ledger)
            ledgers.append(ledger)
        self.assertConverged(ledgers, reference, events)

    def test_bulk_deliveries(self) -> None:
        """Larger seeded event sets, many rollbacks across snapshots: the same convergence."""
        from .strategies import random_events

        for seed in range(4):
            rng = random.Random(seed)
            events = random_events(rng, 2 + seed, 150).events
            reference = Ledger()
            reference.insert(events)
            self.assertAsTheRulesSay(reference, events)
            ledgers = [random_ledger(rng) for _ in range(2)]
            for ledger in ledgers:
                deliver(events, rng, ledger)
                self.assertGreater(ledger.rollbacks, 0)
            self.assertConverged(ledgers, reference, events)


def split(
    events: tuple[Event, ...], rng: random.Random, lost: int = 0
) -> tuple[list[Event], list[Event]]:
    """
    Share C{events} between two ledgers: each event to one of them or to both
    (twins, too, may end one on each side); with C{lost} > 0, about one event
    in C{lost} reaches neither.
    """
    first: list[Event] = []
    second: list[Event] = []
    for event in events:
        if lost and rng.randrange(lost) == 0:
            continue
        side = rng.randrange(3)  # 0: first, 1: second, 2: both
        if side != 1:
            first.append(event)
        if side != 0:
            second.append(event)
    return first, second


def sync(one: Ledger, other: Ledger, limit: int, rounds: int) -> int:
    """
    Run anti-entropy between two ledgers as ``docs/consistency.rst`` and
    gossip's ``_on_sync`` do: each side answers the other's vector with
    ``missing_for(vector, limit)``; when that is empty, the vectors are equal
    and the log hashes differ, the side shows its chain digests and the
    other sends every chain that differs (``chain_of``).  Until a round
    moves nothing.

    :return: the rounds it took (C{rounds} + 1 if it did not settle).
    """
    for done in range(rounds):
        moved = 0
        for source, sink in ((one, other), (other, one)):
            events, _ = source.missing_for(sink.vector(), limit)
            moved += len(sink.insert(events).new)
            if events or sink.vector() != source.vector() or sink.log_hash == source.log_hash:
                continue
            theirs = sink.chain_digests()
            for author, digest in source.chain_digests().items():
                if theirs.get(author, digest) != digest:
                    moved += len(source.insert(sink.chain_of(author)).new)
        if not moved:
            return done
    return rounds + 1


class AntiEntropyTests(SynchronousTestCase):
    """Two ledgers exchanging what the other lacks end equal to one holding the union."""

    def assertSynced(
        self, first: Ledger, second: Ledger, union: Ledger, limit: int, lost: bool = False
    ) -> None:
        """
        Anti-entropy settles, and both ledgers then agree with C{union}.

        :param lost: some events reached neither ledger; then events held
            beyond a gap are not passed on, and only the ledgers holding
            them know their authors.
        """
        rounds = 2 * len(union) + 4
        self.assertLessEqual(sync(first, second, limit, rounds), rounds)

        def view(ledger: Ledger) -> tuple[Any, ...]:
            seen = observed(ledger)
            if not lost:
                return seen
            return (*seen[:3], {author: seq for author, seq in seen[3].items() if seq})

        want = view(union)
        self.assertEqual(view(first), want)
        self.assertEqual(view(second), want)
        self.assertEqual(first.log(), union.log())
        self.assertEqual(first.missing_for(second.vector(), limit), ([], False))
        self.assertEqual(second.missing_for(first.vector(), limit), ([], False))

    @settings(max_examples=SYNC_EXAMPLES)
    @given(event_sets(min_size=8), st.randoms(use_true_random=False), st.integers(1, 6))
    def test_exchange_converges(self, event_set: EventSet, rng: random.Random, limit: int) -> None:
        """After anti-entropy in both directions, both ledgers equal the union's ledger."""
        first_part, second_part = split(event_set.events, rng)
        first, second = random_ledger(rng), random_ledger(rng)
        deliver(tuple(first_part), rng, first)
        deliver(tuple(second_part), rng, second)
        union = Ledger()
        union.insert({*first_part, *second_part})
        self.assertSynced(first, second, union, limit)

    def test_split_twins(self) -> None:
        """
        Twins held one by each ledger: the vectors agree, the log hashes do
        not, and the chain exchange gives each side the other's twin.  (At
        89de34a, without chain digests, this never converged.)
        """
        alice, bob = AUTHORS[0], AUTHORS[1]
        twin_a = alice.order(1, 1, 0, "sell", "limit", "100", "1")
        twin_b = alice.order(1, 1, 1, "sell", "limit", "101", "1")
        taker = bob.order(1, 2, 0, "buy", "limit", "101", "1")
        first, second = Ledger(), Ledger()
        first.insert([twin_a, taker])
        second.insert([twin_b, taker])
        self.assertEqual(first.vector(), second.vector())
        self.assertNotEqual(first.log_hash, second.log_hash)
        union = Ledger()
        union.insert([twin_a, twin_b, taker])
        self.assertSynced(first, second, union, 1)
        self.assertEqual(set(first.conflicts()), {twin_a, twin_b})
        self.assertEqual(set(second.conflicts()), {twin_a, twin_b})

    def test_many_equivocations(self) -> None:
        """However many slots an author equivocates in, the whole chain goes across."""
        alice = AUTHORS[0]
        first, second = Ledger(), Ledger()
        for seq in range(1, 41):
            one, two = (alice.order(seq, seq, ts, "sell", "limit", "100", "1") for ts in (0, 1))
            first.insert([one] if seq % 3 else [one, two])
            second.insert([two])
        union = Ledger()
        union.insert([*first.log(), *first.conflicts(), *second.log()])
        self.assertSynced(first, second, union, 3)

    def test_lost_event_and_twins(self) -> None:
        """
        A chain whose seq 1 nobody holds must not stop the repair of an
        equivocation in another chain.
        """
        alice, bob, carol = AUTHORS[0], AUTHORS[1], AUTHORS[2]
        orphan = alice.order(2, 5, 0, "sell", "limit", "100", "1")  # ALICE's seq 1 is lost
        twin_a = bob.order(1, 1, 0, "sell", "limit", "100", "1")
        twin_b = bob.order(1, 1, 1, "sell", "limit", "101", "1")
        taker = carol.order(1, 2, 0, "buy", "limit", "101", "1")
        first, second = Ledger(), Ledger()
        first.insert([orphan, twin_a, taker])
        second.insert([twin_b, taker])
        self.assertEqual(first.vector(), {bob.author: 1, carol.author: 1})
        self.assertEqual(second.vector(), {bob.author: 1, carol.author: 1})
        union = Ledger()
        union.insert([orphan, twin_a, twin_b, taker])
        self.assertSynced(first, second, union, 100, lost=True)

    @settings(max_examples=SYNC_EXAMPLES // 3)
    @given(event_sets(min_size=8), st.randoms(use_true_random=False), st.integers(1, 6))
    def test_exchange_with_lost_events(
        self, event_set: EventSet, rng: random.Random, limit: int
    ) -> None:
        """With some events lost to both ledgers and no equivocation, they still converge."""
        claims = Counter((event.author, event.seq) for event in event_set.events)
        events = tuple(e for e in event_set.events if claims[e.author, e.seq] == 1)
        first_part, second_part = split(events, rng, lost=10)
        first, second = random_ledger(rng), random_ledger(rng)
        deliver(tuple(first_part), rng, first)
        deliver(tuple(second_part), rng, second)
        union = Ledger()
        union.insert({*first_part, *second_part})
        self.assertSynced(first, second, union, limit, lost=True)
