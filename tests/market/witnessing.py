"""A deterministic run of witnesses for the fair-order tests: who saw what when, and their stamps.

:func:`run` plays n witnesses on one timeline in milliseconds (stamps
state times in microseconds: :func:`at` converts): each first sees events at
the times given, signs a stamp every ``stamp_ms`` (from its own phase),
and holds another witness's stamp ``delay`` ms after that one was signed,
which its next stamp then acknowledges.  Withheld stamps reach nobody
until released.  The stamps are exactly what real witnesses following the
same timeline would sign.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import nacl.bindings

from bitfitech.identity import node_id_from_public_key
from bitfitech.market.stamps import NO_PREV, Stamp, StampSigner
from bitfitech.witnesses import WitnessSet

NETWORK, PAIR = "testnet", "BTC/USD"
T0 = 1_700_000_000_000
"""A start time, unix ms."""


def at(ms: int) -> int:
    """The time C{ms} milliseconds after :data:`T0`, in unix microseconds (as stamps state it)."""
    return (T0 + ms) * 1000


def witness_seeds(n: int, tag: str = "w") -> tuple[WitnessSet, list[bytes]]:
    """A set of C{n} witnesses and their seeds, in the set's order."""
    seeds = [hashlib.sha256(f"{tag}{i}".encode()).digest() for i in range(n)]
    ids = [node_id_from_public_key(nacl.bindings.crypto_sign_seed_keypair(s)[0]) for s in seeds]
    witnesses = WitnessSet.of(ids)
    ordered = sorted(zip(ids, seeds, strict=True))
    return witnesses, [seed for _, seed in ordered]


@dataclass
class Run:
    """
    What :func:`run` made.

    :ivar stamps: per witness, its chain in order.
    :ivar signers: per witness, its signer.
    """

    witnesses: WitnessSet
    stamps: list[list[Stamp]] = field(default_factory=list)
    signers: list[StampSigner] = field(default_factory=list)

    def all(self) -> list[Stamp]:
        """Every stamp, in the order they were signed."""
        return sorted((s for chain in self.stamps for s in chain), key=lambda s: (s.t, s.member))


def run(
    n: int,
    seen: Mapping[int, Mapping[str, int | Sequence[int]]],
    *,
    until: int,
    delay: int = 5,
    phases: Mapping[int, int] | None = None,
    silent: Mapping[int, tuple[int, int]] | None = None,
    withheld: Mapping[int, int] | None = None,
    slow: Mapping[tuple[int, int], int] | None = None,
    stamp_ms: int = 100,
    witnesses: tuple[WitnessSet, list[bytes]] | None = None,
) -> Run:
    """
    Play C{n} witnesses from T0 to T0 + C{until}.

    :param seen: witness index -> event id -> when (ms after T0) it first
        saw it, or when it listed it, each time (a witness lists an event
        again when its receipt did not count).
    :param delay: ms from a stamp's signing to every other witness holding it.
    :param phases: witness -> ms after T0 of its first stamp (default: 10 * index + 1).
    :param silent: witness -> (from, to): it signs nothing between these times
        (a crash: what it saw meanwhile is forgotten).
    :param withheld: witness -> time (ms after T0) before which nobody else
        holds any of its stamps (they are all released then).
    :param slow: (from, to) -> ms added to C{delay} for one witness's stamps to reach another.
    """
    witnesses_, seeds = witnesses or witness_seeds(n)
    signers = [StampSigner(seed, NETWORK, PAIR, witnesses_) for seed in seeds]
    result = Run(witnesses_, [[] for _ in range(n)], signers)
    phases = phases or {}
    silent = silent or {}
    withheld = withheld or {}
    slow = slow or {}
    ticks = sorted(
        (T0 + phases.get(w, 10 * w + 1) + k * stamp_ms, w)
        for w in range(n)
        for k in range((until - phases.get(w, 10 * w + 1)) // stamp_ms + 1)
    )
    stamped: list[set[tuple[str, int]]] = [set() for _ in range(n)]
    last_acks: list[list[tuple[int, int]]] = [[(0, 0)] * n for _ in range(n)]
    for t, w in ticks:
        off = silent.get(w)
        if off is not None and T0 + off[0] <= t < T0 + off[1]:
            continue
        chain = result.stamps[w]
        prev = chain[-1] if chain else None
        prev_t = prev.t // 1000 if prev else 0
        acks: list[tuple[int, int]] = []
        for u in range(n):
            if u == w:
                acks.append((len(chain), 0))
                continue
            release = T0 + withheld.get(u, 0)
            held_seq, held_at = 0, 0
            for s in result.stamps[u]:
                arrival = max(s.t // 1000 + delay + slow.get((u, w), 0), release)
                if arrival <= t:
                    held_seq, held_at = s.seq, arrival
            old = last_acks[w][u]
            if held_seq > old[0]:
                offset = t - max(held_at, prev_t + 1)
                acks.append((held_seq, offset * 1000))
            else:
                acks.append((old[0], 0))
        last_acks[w] = acks
        receipts = []
        for event_id, times in seen.get(w, {}).items():
            for at in (times,) if isinstance(times, int) else times:
                when = T0 + at
                if prev_t < when <= t and (event_id, at) not in stamped[w]:
                    if off is not None and T0 + off[0] <= when < T0 + off[1]:
                        continue
                    receipts.append((event_id, (t - when) * 1000))
                    stamped[w].add((event_id, at))
                    break  # one receipt of an event per stamp
        receipts.sort()
        stamp = signers[w].sign(
            len(chain) + 1, t * 1000, prev.id if prev else NO_PREV, acks, receipts[:1000]
        )
        chain.append(stamp)
    return result
