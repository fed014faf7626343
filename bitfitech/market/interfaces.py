"""The market's seams: what the gossip layer may ask of it, and where it hands events.

Data path: the gossip layer -> :class:`IEventStore` (the node's set of
events: has, get, receive, anti-entropy summaries) -> the market; and the
market -> :class:`IEventPublisher` -> the gossip layer, which spreads this
node's new events to peers.  The gossip layer comes after the market on the
path, so the market calls it only through :class:`IEventPublisher`, given
to :meth:`IEventStore.add_publisher`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..witnesses import WitnessSet
    from .events import Event
    from .stamps import Stamp


class IEventPublisher(Interface):
    """Where the market hands events to spread to peers (the gossip layer)."""

    def publish(events: Sequence[Event]) -> None:
        """Push C{events} (new, verified, already applied here) to peers."""

    def publish_stamps(stamps: Sequence[Stamp]) -> None:
        """Spread witness stamps (this node's own, or evidence against a witness) to peers."""


class IEventStore(Interface):
    """What the gossip layer may ask of the market: the node's set of events."""

    network: str
    pair: str
    witnesses: WitnessSet
    #: whether this node is one of the witnesses, signing stamps
    witnessing: bool

    def has(event_id: str) -> bool:
        """Whether the event is held (or waiting to be applied)."""

    def get(event_id: str) -> Event | None:
        """A held event by id."""

    def receive(events: Sequence[Event], arrived: float | None = None) -> None:
        """
        Take new events from peers, parsed and verified by the caller.

        :param arrived: when they arrived (clock seconds), if not now: a
            witness states it as when it saw them.
        """

    def vector() -> dict[str, int]:
        """Author -> highest seq held without a gap."""

    def digest() -> str:
        """A hash of the applied log: equal for equal logs."""

    def missing_for(vector: dict[str, int], limit: int) -> tuple[list[Event], bool]:
        """Up to C{limit} events a peer with C{vector} lacks, and whether more remain."""

    def conflicts() -> list[Event]:
        """Every event of every slot claimed twice."""

    def gaps() -> int:
        """How many authors have events held beyond a missing seq."""

    def gap_marks() -> set[tuple[str, int]]:
        """``(author, contiguous seq)`` of every author with events held beyond a gap."""

    def chain_digests() -> dict[str, str]:
        """Author -> a hash of its chain up to its contiguous seq."""

    def add_publisher(publisher: IEventPublisher) -> Callable[[], None]:
        """
        From now on, hand C{publisher} each of this node's new events once
        it is journaled and applied, and the evidence of each equivocation
        found (the gossip layer adds itself when it starts).

        :return: a function that removes C{publisher} again.
        """

    def chain_of(author: str) -> list[Event]:
        """C{author}'s events up to its contiguous seq, and its equivocation evidence."""

    def has_stamp(stamp_id: str) -> bool:
        """Whether the witness stamp is held (or waiting to be applied)."""

    def get_stamp(stamp_id: str) -> Stamp | None:
        """A held (or waiting) witness stamp by id."""

    def receive_stamps(stamps: Sequence[Stamp]) -> None:
        """Take new witness stamps from peers, parsed and verified by the caller."""

    def stamp_gap_marks() -> set[tuple[str, int]]:
        """``(witness, seq held without a gap)`` of every witness with stamps held beyond a gap."""

    def stamp_vector() -> dict[str, int]:
        """Witness key -> highest seq of its stamps held without a gap."""

    def stamps_missing_for(vector: dict[str, int], limit: int) -> tuple[list[Stamp], bool]:
        """Up to C{limit} stamps a peer with C{vector} lacks, and whether more remain."""

    def stamp_evidence() -> list[Stamp]:
        """The stamps that prove witnesses faulty (spread like new ones)."""
