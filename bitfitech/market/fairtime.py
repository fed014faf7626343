"""Fair time: what the witnesses' stamps say about when each event was first seen.

Data path: stamps (:mod:`bitfitech.market.stamps`) -> :class:`StampChains`
-> the ledger's fair order (:mod:`bitfitech.market.ledger`).
``docs/consistency.rst`` ("Fair order") is the specification; in short,
for a network of n witnesses of which f = (n - 1) // 2 may be faulty:

* **Chains.**  Each witness's stamps form a chain by ``seq``, linked by
  ``prev``, with strictly increasing times.  Only the part held without a
  gap counts.  Two stamps for one ``(witness, seq)``, or a stamp that
  breaks the chain's rules, prove the witness faulty: it is *flagged*, and
  its receipts and acks are ignored from the start of its chain, on every
  node alike.
* **Counted receipts.**  A receipt at time r, in stamp S of witness w,
  counts once f + 1 witnesses knew S by r + W (:data:`~bitfitech.witnesses.WINDOW_MS`):
  w itself at S's time, any other witness at the time its acks say it held
  S.  A stamp withheld and released late is known to too few in time, so
  its receipts never count, and nobody's order changes because of it.
* **Fair time** of an event: the (f + 1)-th smallest counted receipt time,
  taking each witness's earliest counted receipt (a witness lists an event
  again when its first receipt did not count).  An event has none until
  f + 1 witnesses have a counted receipt of it.
* **Horizons.**  :meth:`StampChains.horizon` gives the time T through
  which nothing more can change: with k chains held past T + W, every
  receipt at or before T that will ever count is held and counted, and so
  every fair time at or before T is fixed and no event with one is
  missing.  k = n - f gives the *settled* horizon, all n the *final* one.

Everything here is a function of the set of stamps held (and of which
events are held, for the horizons), never of the order they came in.
Pure: no Twisted, no I/O.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from heapq import merge
from itertools import islice
from typing import Any

from ..witnesses import WitnessSet
from .stamps import Stamp

NEVER = -1
"""A horizon before every time: nothing settled yet."""

EQUIVOCATION = "equivocation"
"""Why a witness was flagged: two stamps for one seq."""

BROKEN_CHAIN = "broken_chain"
"""Why a witness was flagged: a stamp that does not follow its predecessor."""

_INFINITY = 2**63


@dataclass
class StampInsert:
    """
    What one :meth:`StampChains.insert` did.

    :ivar new: stamps not held before, in the order given.
    :ivar duplicates: stamps already held.
    :ivar flagged: witnesses (public keys) newly found faulty.
    :ivar changed: event id -> its fair time now (``None``: it lost its
        last counted receipts to a flagged witness), for every event whose
        fair time, or number of counted receipts, changed.
    """

    new: list[Stamp] = field(default_factory=list)
    duplicates: int = 0
    flagged: list[str] = field(default_factory=list)
    changed: dict[str, int | None] = field(default_factory=dict)


class _Chain:
    """One witness's stamps: the gap-free part held, and what waits beyond a gap."""

    __slots__ = ("stamps", "waiting", "ack_seqs", "ack_times", "done", "witness")

    def __init__(self, n: int) -> None:
        self.witness = ""
        self.stamps: list[Stamp] = []
        self.waiting: dict[int, Stamp] = {}
        # Per witness u: the seqs of u's chain this witness's stamps
        # acknowledged, increasing, and when it held each.
        self.ack_seqs: list[list[int]] = [[] for _ in range(n)]
        self.ack_times: list[list[int]] = [[] for _ in range(n)]
        # How many of the first stamps lie wholly before the last horizon.
        self.done = 0

    @property
    def held_time(self) -> int:
        """The time of the last stamp held without a gap (-1: none)."""
        return self.stamps[-1].t if self.stamps else NEVER

    def ack_time(self, index: int, seq: int) -> int:
        """When this witness first held witness C{index}'s chain through C{seq} (or infinity)."""
        seqs = self.ack_seqs[index]
        at = bisect_left(seqs, seq)
        return self.ack_times[index][at] if at < len(seqs) else _INFINITY


class StampChains:
    """
    Every witness stamp a node holds, and the fair times they give.

    :ivar witnesses: the network's witness set.
    :ivar flagged: witness public key -> why it is flagged.
    """

    def __init__(self, witnesses: WitnessSet, held: Callable[[str], bool]) -> None:
        """
        :param witnesses: the network's set (not empty).
        :param held: whether an event (by id) is held: a fair time of an
            event not held keeps the horizons before it.
        """
        if not witnesses:
            raise ValueError("fair time needs at least one witness")
        self.witnesses = witnesses
        self.flagged: dict[str, str] = {}
        self._held = held
        self._window = witnesses.window_ms * 1000  # stamps state microseconds
        self._counted = witnesses.counted
        self._by_id: dict[str, Stamp] = {}
        self._evidence: dict[tuple[int, int], list[Stamp]] = {}
        self._flagged_index: set[int] = set()
        self._reset()

    def _reset(self) -> None:
        n = self.witnesses.n
        self._chains = [_Chain(n) for _ in range(n)]
        # (witness index, seq) -> counting threshold: receipts at or after it count
        self._threshold: dict[tuple[int, int], int] = {}
        self._fair: dict[str, int] = {}
        # event id -> witness index -> its earliest counted receipt
        self._earliest: dict[str, dict[int, int]] = {}
        self._unseen: set[str] = set()
        # (witness index, seq) of stamps whose every receipt is decided:
        # it counts, or can no longer count (both stay so: see horizon_why)
        self._decided: set[tuple[int, int]] = set()

    # -- queries

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, stamp_id: object) -> bool:
        return stamp_id in self._by_id

    @property
    def live(self) -> int:
        """How many witnesses are not flagged."""
        return self.witnesses.n - len(self._flagged_index)

    def get(self, stamp_id: str) -> Stamp | None:
        """A held stamp by id (evidence included)."""
        return self._by_id.get(stamp_id)

    def fair_time(self, event_id: str) -> int | None:
        """C{event_id}'s fair time, or ``None`` while fewer than f + 1 receipts count."""
        return self._fair.get(event_id)

    def complete(self, event_id: str) -> bool:
        """Whether every witness not flagged has a counted receipt of C{event_id}."""
        return len(self._earliest.get(event_id, ())) >= self.live

    def receipts(self, event_id: str) -> dict[int, tuple[int, bool]]:
        """
        Witness index -> (receipt time, whether it counts) for C{event_id}:
        the witness's earliest counted receipt, or its first if none counts.
        """
        earliest = self._earliest.get(event_id, {})
        out = {index: (at, True) for index, at in earliest.items()}
        # The first listing of a witness none of whose receipts counts: a
        # walk of the chains (a diagnostic, not kept per receipt).
        for index, chain in enumerate(self._chains):
            if index in out:
                continue
            for stamp in chain.stamps:
                offset = next((o for e, o in stamp.receipts if e == event_id), None)
                if offset is not None:
                    out[index] = (stamp.t - offset, False)
                    break
        return out

    def counted(self, event_id: str, index: int) -> bool:
        """Whether witness C{index} has a counted receipt of C{event_id}."""
        return index in self._earliest.get(event_id, {})

    def may_yet_count(self, index: int, seq: int, receipt: int) -> bool:
        """
        Whether witness C{index}'s receipt at C{receipt} in its stamp C{seq}
        does not count yet but still may: too few witnesses' acks of that
        stamp are held to tell.  (Once it counts, or cannot any more, that
        stays so.)
        """
        chain = self._chains[index]
        if index in self._flagged_index or not 0 < seq <= len(chain.stamps):
            return False
        if receipt >= self._threshold.get((index, seq), _INFINITY):
            return False  # it counts
        live = [
            (other, other_chain)
            for other, other_chain in enumerate(self._chains)
            if other not in self._flagged_index
        ]
        return self._could_count(index, chain.stamps[seq - 1], receipt + self._window, live)

    def reach(self, index: int, since: int) -> int | None:
        """
        How long witness C{index}'s stamps took lately to reach the others:
        per other witness not flagged whose chain is held past C{since},
        the time its acks say it took to hold the last stamp of C{index} it
        acknowledged; the f-th shortest of those (a stamp's receipts count
        once f others held it in time).  ``None`` while fewer than f tell.
        """
        stamps = self._chains[index].stamps
        times: list[int] = []
        for other, chain in enumerate(self._chains):
            if other == index or other in self._flagged_index or chain.held_time <= since:
                continue
            seqs = chain.ack_seqs[index]
            if seqs and seqs[-1] <= len(stamps):
                times.append(chain.ack_times[index][-1] - stamps[seqs[-1] - 1].t)
        f = self._counted - 1
        if f < 1:
            return 0
        return sorted(times)[f - 1] if len(times) >= f else None

    def vector(self) -> dict[str, int]:
        """Witness public key -> the highest seq held without a gap (the anti-entropy summary)."""
        return {chain.witness: len(chain.stamps) for chain in self._chains if chain.stamps}

    def gap_marks(self) -> set[tuple[str, int]]:
        """``(witness, seq held without a gap)`` of each witness with stamps waiting past a gap."""
        return {
            (chain.witness, len(chain.stamps))
            for index, chain in enumerate(self._chains)
            if chain.waiting and index not in self._flagged_index
        }

    def acks(self) -> list[int]:
        """Per witness of the set, the seq held without a gap: what a witness's stamp acks."""
        return [len(chain.stamps) for chain in self._chains]

    def chain(self, index: int) -> list[Stamp]:
        """Witness C{index}'s stamps held without a gap, in order (a copy)."""
        return list(self._chains[index].stamps)

    def last(self, index: int) -> Stamp | None:
        """Witness C{index}'s last stamp held without a gap."""
        stamps = self._chains[index].stamps
        return stamps[-1] if stamps else None

    def missing_for(self, vector: dict[str, int], limit: int) -> tuple[list[Stamp], bool]:
        """
        Stamps a peer with C{vector} lacks, oldest first (by time), at most C{limit}.

        :return: the stamps and whether more remain.
        """
        streams: list[Iterator[Stamp]] = []
        for chain in self._chains:
            have = vector.get(chain.witness, 0) if chain.witness else 0
            if have < len(chain.stamps):
                streams.append(iter(chain.stamps[have:]))
        taken = list(islice(merge(*streams, key=lambda stamp: stamp.t), limit + 1))
        return taken[:limit], len(taken) > limit

    def evidence(self) -> list[Stamp]:
        """Every stamp of every seq claimed twice, and every chain-breaking stamp."""
        return [stamp for rivals in self._evidence.values() for stamp in rivals]

    def status(self) -> list[dict[str, object]]:
        """Per witness: its node id's index, seq and last time held, and whether flagged."""
        out: list[dict[str, object]] = []
        for index, chain in enumerate(self._chains):
            last = chain.stamps[-1] if chain.stamps else None
            out.append(
                {
                    "node_id": self.witnesses.ids[index],
                    "seq": len(chain.stamps),
                    "t": last.t if last else None,
                    "waiting": len(chain.waiting),
                    "flagged": self.flagged.get(chain.witness) if chain.witness else None,
                }
            )
        return out

    # -- inserting

    def insert(self, stamps: Iterable[Stamp]) -> StampInsert:
        """Add stamps (parsed and verified by the caller); see :class:`StampInsert`."""
        result = StampInsert()
        rebuild = False
        for stamp in stamps:
            if stamp.id in self._by_id:
                result.duplicates += 1
                continue
            self._by_id[stamp.id] = stamp
            result.new.append(stamp)
            chain = self._chains[stamp.member]
            chain.witness = stamp.witness
            if stamp.member in self._flagged_index:
                continue
            rival = (
                chain.stamps[stamp.seq - 1]
                if stamp.seq <= len(chain.stamps)
                else chain.waiting.get(stamp.seq)
            )
            if rival is not None:
                self._flag(stamp.member, EQUIVOCATION, [rival, stamp], result)
                rebuild = True
                continue
            chain.waiting[stamp.seq] = stamp
            if not rebuild and not self._extend(stamp.member, result.changed):
                self._flag(stamp.member, BROKEN_CHAIN, self._breakers(stamp.member), result)
                rebuild = True
        if rebuild:
            before = dict(self._fair)
            while not self._rebuild(result):
                pass
            result.changed = {
                event_id: self._fair.get(event_id)
                for event_id in before.keys() | self._fair.keys()
                if before.get(event_id) != self._fair.get(event_id)
            }
        return result

    def _flag(self, index: int, why: str, evidence: list[Stamp], result: StampInsert) -> None:
        witness = evidence[0].witness
        self._flagged_index.add(index)
        self.flagged[witness] = why
        self._evidence[(index, evidence[-1].seq)] = evidence
        result.flagged.append(witness)

    def _breakers(self, index: int) -> list[Stamp]:
        """The stamp that failed to follow the chain, and the one it failed to follow."""
        chain = self._chains[index]
        bad = chain.waiting[len(chain.stamps) + 1]
        return [chain.stamps[-1], bad] if chain.stamps else [bad]

    def _rebuild(self, result: StampInsert) -> bool:
        """
        Recompute everything from the stamps held, leaving flagged witnesses out.

        :return: ``False`` if a stamp broke its chain (its witness is now
            flagged, and the rebuild must start again).
        """
        held = [s for s in self._by_id.values() if s.member not in self._flagged_index]
        self._reset()
        for stamp in self._by_id.values():
            self._chains[stamp.member].witness = stamp.witness
        for stamp in held:
            self._chains[stamp.member].waiting[stamp.seq] = stamp
        for index in range(self.witnesses.n):
            if self._chains[index].waiting and not self._extend(index, {}):
                self._flag(index, BROKEN_CHAIN, self._breakers(index), result)
                return False
        return True

    def _extend(self, index: int, changed: dict[str, int | None]) -> bool:
        """
        Move witness C{index}'s waiting stamps that follow its chain into it.

        :return: ``False`` if the next one breaks the chain's rules.
        """
        chain = self._chains[index]
        while (stamp := chain.waiting.get(len(chain.stamps) + 1)) is not None:
            if not _follows(chain.stamps[-1] if chain.stamps else None, stamp):
                return False
            del chain.waiting[stamp.seq]
            chain.stamps.append(stamp)
            self._take_acks(index, stamp, changed)
            self._recount(index, stamp, changed)  # its receipts, once it is known in time
        return True

    def _take_acks(self, index: int, stamp: Stamp, changed: dict[str, int | None]) -> None:
        """Record what C{stamp} acknowledges, and count receipts it makes count."""
        chain = self._chains[index]
        for other, (seq, offset) in enumerate(stamp.acks):
            if other == index:
                continue
            seqs = chain.ack_seqs[other]
            low = seqs[-1] if seqs else 0
            if seq <= low:
                continue
            seqs.append(seq)
            chain.ack_times[other].append(stamp.t - offset)
            if other in self._flagged_index:
                continue
            acked = self._chains[other].stamps
            for acked_seq in range(low + 1, min(seq, len(acked)) + 1):
                self._recount(other, acked[acked_seq - 1], changed)

    def _knower_times(self, index: int, stamp: Stamp) -> list[int]:
        """When each witness that did knew C{stamp} (its own at its time), sorted."""
        times = [stamp.t]
        for other, chain in enumerate(self._chains):
            if other != index and other not in self._flagged_index:
                at = chain.ack_time(index, stamp.seq)
                if at < _INFINITY:
                    times.append(at)
        times.sort()
        return times

    def _recount(self, index: int, stamp: Stamp, changed: dict[str, int | None]) -> None:
        """Update C{stamp}'s counting threshold and the fair times it changes."""
        times = self._knower_times(index, stamp)
        if len(times) < self._counted:
            return
        threshold = times[self._counted - 1] - self._window
        key = (index, stamp.seq)
        old = self._threshold.get(key, _INFINITY)
        if threshold >= old:
            return
        self._threshold[key] = threshold
        t = stamp.t
        for event_id, offset in stamp.receipts:
            at = t - offset
            if threshold <= at < old:
                self._count(event_id, index, at, changed)

    def _count(self, event_id: str, index: int, at: int, changed: dict[str, int | None]) -> None:
        """
        Witness C{index}'s receipt of C{event_id} at C{at} now counts: its
        fair time may fall, or appear, and one more witness may count.
        (Counting only grows, so a fair time never goes away here.)
        """
        per_witness = self._earliest.setdefault(event_id, {})
        current = per_witness.get(index)
        if current is not None and current <= at:
            return  # it has an earlier counted receipt: nothing moves
        per_witness[index] = at
        counted = sorted(per_witness.values())
        if len(counted) < self._counted:
            if current is None:
                changed[event_id] = None  # one more witness counts; no fair time yet
            return
        fair = counted[self._counted - 1]
        if fair != self._fair.get(event_id):
            self._fair[event_id] = fair
            if not self._held(event_id):
                self._unseen.add(event_id)
            changed[event_id] = fair
        elif current is None:
            changed[event_id] = fair  # one more witness counts: complete() may change

    def arrived(self, event_ids: Iterable[str]) -> bool:
        """
        Tell that these events are now held (their fair times no longer hold horizons back).

        :return: whether one of them had a fair time already (the horizons may move).
        """
        unseen = self._unseen
        if not unseen:
            return False
        before = len(unseen)
        unseen.difference_update(event_ids)
        return len(unseen) < before

    # -- horizons

    def horizon(self, chains: int) -> int:
        """
        The time through which every fair time is fixed and held.

        :param chains: how many witnesses' chains must be held past it:
            :attr:`WitnessSet.quorum` (n - f) for the settled horizon, n
            for the final one.
        :return: a time in unix microseconds, or :data:`NEVER`.
        """
        return self.horizon_why(chains)[0]

    def horizon_why(self, chains: int) -> tuple[int, dict[str, Any]]:
        """
        :meth:`horizon`, and what holds it where it is (for ``/status``):
        ``{"by": "chains"}`` (the C{chains}-th chain held, less the window),
        ``{"by": "receipt", "event", "witness", "t"}`` (a receipt, at t
        unix us, of the witness of that index, that may yet count),
        ``{"by": "stamp", "witness", "seq"}`` (a stamp others acknowledged
        and this node lacks) or ``{"by": "event", "event"}`` (an event with
        a fair time, not held).
        """
        window, counted = self._window, self._counted
        live = [
            (index, chain)
            for index, chain in enumerate(self._chains)
            if index not in self._flagged_index
        ]
        held = sorted((chain.held_time for _, chain in live), reverse=True)
        if len(held) < chains or chains < 1 or held[chains - 1] == NEVER:
            return NEVER, {"by": "chains"}
        base = held[chains - 1] - window
        horizon = base
        why: dict[str, Any] = {"by": "chains"}
        # Receipts held whose counting could still change.  A receipt that
        # counts keeps counting (thresholds only fall), and one that cannot
        # count any more never will (the chains that did not know its stamp
        # in time are held past that time, and later acks are later): a
        # stamp whose receipts are all one or the other is not looked at
        # again.
        decided = self._decided
        for index, chain in live:
            stamps = chain.stamps
            for position in range(chain.done, len(stamps)):
                if position and stamps[position - 1].t >= horizon:
                    break  # its receipts, and later ones, are after the horizon
                stamp = stamps[position]
                key = (index, stamp.seq)
                if not stamp.receipts or key in decided:
                    continue
                threshold = self._threshold.get(key, _INFINITY)
                if threshold <= stamp.t - max(offset for _, offset in stamp.receipts):
                    decided.add(key)  # every receipt counts (the usual case)
                    continue
                done = True
                for event_id, offset in stamp.receipts:
                    receipt = stamp.t - offset
                    if receipt >= threshold:
                        continue
                    if receipt > horizon:
                        done = False
                        continue
                    if self._could_count(index, stamp, receipt + window, live):
                        done = False
                        horizon = receipt - 1
                        why = {
                            "by": "receipt",
                            "event": event_id,
                            "witness": index,
                            "t": receipt,
                        }
                if done:
                    decided.add(key)
        # Stamps acknowledged by others that this node does not hold yet.
        for index, chain in live:
            if chain.held_time >= base + window:
                continue
            missing = len(chain.stamps) + 1
            could = sum(
                1
                for other, other_chain in live
                if other_chain.held_time < base + window
                or (other != index and other_chain.ack_time(index, missing) <= base + window)
            )
            if could >= counted and chain.held_time < horizon:
                horizon = chain.held_time
                why = {"by": "stamp", "witness": index, "seq": missing}
        # Events with a fair time that are not held yet.
        for event_id in self._unseen:
            fair = self._fair[event_id]
            if fair <= horizon:
                horizon = fair - 1
                why = {"by": "event", "event": event_id}
        return max(horizon, NEVER), why

    def _could_count(
        self, index: int, stamp: Stamp, by: int, live: list[tuple[int, _Chain]]
    ) -> bool:
        """Whether C{stamp} may yet be known to f + 1 witnesses by C{by}."""
        could = 1 if stamp.t <= by else 0
        for other, chain in live:
            if other == index:
                continue
            if chain.ack_time(index, stamp.seq) <= by or chain.held_time < by:
                could += 1
        return could >= self._counted

    def advance(self, horizon: int) -> None:
        """Note that everything through C{horizon} is settled (speeds up later horizons)."""
        for chain in self._chains:
            stamps = chain.stamps
            done = chain.done
            while done < len(stamps) and stamps[done].t <= horizon:
                done += 1
            chain.done = done


def _follows(previous: Stamp | None, stamp: Stamp) -> bool:
    """Whether C{stamp} may follow C{previous} in one witness's chain."""
    if previous is None:
        return stamp.seq == 1  # parse_stamp checked the rest
    span = stamp.t - previous.t
    if stamp.prev != previous.id or span <= 0:
        return False
    for (seq, offset), (old_seq, _) in zip(stamp.acks, previous.acks, strict=True):
        if seq < old_seq or offset >= span or (seq == old_seq and offset):
            return False
    return all(offset < span for _, offset in stamp.receipts)
