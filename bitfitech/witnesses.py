"""A network's witnesses: the nodes whose signed stamps give events their fair time.

A network names n witnesses by node id (``--witness NODEID@host:port``,
repeatable).  They tolerate ``f = (n - 1) // 2`` faulty ones: an event's
*fair time* is the (f + 1)-th smallest of the witnesses' receipt times
(the median for n = 2f + 1), state is *settled* once n - f witnesses'
stamp chains are held past it and *final* once all n are.  The set, with
the timing constants every node must share, is part of the network's
identity: ``version`` carries :attr:`WitnessSet.digest`, and a peer with
another digest is refused (another set would give another book).
``docs/consistency.rst`` ("Fair order") is the specification.

Pure: no Twisted, no I/O.  The empty set is a network without witnesses,
where the author-clock order of earlier versions still applies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

from .address import is_node_id

SLOT_MS: Final = 100
"""Width of an ordering slot, in milliseconds (the key's first field is fair time // this)."""

STAMP_MS: Final = 100
"""
How often a busy witness signs a stamp at the least, in milliseconds
(a *heartbeat*, timed just after each slot's end plus :data:`WINDOW_MS`,
when its stamp settles that slot); it signs sooner when it has receipts.
"""

WINDOW_MS: Final = 200
"""
How long after a receipt time its stamp may reach f + 1 witnesses (itself
included) and still count: a stamp released later, however it was
timed, moves nothing (``docs/consistency.rst``, "Counted receipts").
"""

MAX_WITNESSES: Final = 31
"""Most witnesses a network may name."""

_DIGEST_TAG = "bitfi-witnesses-1"


@dataclass(frozen=True)
class WitnessSet:
    """
    The witnesses of one network and the timing they stamp by.

    :ivar ids: their node ids, sorted and unique (the index of an id here is
        its place in every stamp's acknowledgement list).
    :ivar slot_ms: :data:`SLOT_MS`.
    :ivar stamp_ms: :data:`STAMP_MS`.
    :ivar window_ms: :data:`WINDOW_MS`.
    """

    ids: tuple[str, ...] = ()
    slot_ms: int = SLOT_MS
    stamp_ms: int = STAMP_MS
    window_ms: int = WINDOW_MS
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """:raises ValueError: for a malformed, repeated or unsorted id, or too many."""
        if len(self.ids) > MAX_WITNESSES:
            raise ValueError(f"at most {MAX_WITNESSES} witnesses, not {len(self.ids)}")
        for node_id in self.ids:
            if not is_node_id(node_id):
                raise ValueError(f"a witness is named by its node id, not {node_id!r}")
        if len(self.ids) % 2 == 0 and self.ids:
            raise ValueError(
                f"a network names an odd number of witnesses (2f + 1), not {len(self.ids)}"
            )
        if list(self.ids) != sorted(set(self.ids)):
            raise ValueError("witness ids must be sorted and unique (use WitnessSet.of)")
        for name in ("slot_ms", "stamp_ms", "window_ms"):
            if not 1 <= getattr(self, name) <= 60_000:
                raise ValueError(f"{name} must be from 1 to 60000")
        object.__setattr__(self, "_index", {node_id: i for i, node_id in enumerate(self.ids)})

    @classmethod
    def of(cls, ids: object, **timing: int) -> WitnessSet:
        """The set of C{ids} (any order; repeats are an error)."""
        given = list(ids)  # type: ignore[call-overload]
        unique = sorted(set(given))
        if len(unique) != len(given):
            raise ValueError("a witness is named twice")
        return cls(tuple(unique), **timing)

    @property
    def n(self) -> int:
        """How many witnesses."""
        return len(self.ids)

    @property
    def f(self) -> int:
        """How many may be faulty: ``(n - 1) // 2``."""
        return (len(self.ids) - 1) // 2 if self.ids else 0

    @property
    def counted(self) -> int:
        """Receipts that give an event its fair time: f + 1."""
        return self.f + 1

    @property
    def quorum(self) -> int:
        """Chains held past a point that settle it: n - f."""
        return self.n - self.f

    def __bool__(self) -> bool:
        """Whether the network has witnesses (else events keep the author-clock order)."""
        return bool(self.ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def index(self, node_id: str) -> int:
        """The place of C{node_id} in the set.  :raises KeyError: if it is no witness."""
        return self._index[node_id]

    @property
    def ordering(self) -> str:
        """``"fair"`` with witnesses, ``"author"`` without (as ``/status`` says)."""
        return "fair" if self.ids else "author"

    @property
    def digest(self) -> str:
        """
        SHA-256 (hex) naming the set and its timing, as ``version`` carries it.

        ``sha256("bitfi-witnesses-1 <f> <slot_ms> <stamp_ms> <window_ms> <id> <id> ...")``;
        a network without witnesses has the digest of the empty list, so it
        is refused by networks with witnesses and the other way round.
        """
        text = " ".join(
            [_DIGEST_TAG, str(self.f), str(self.slot_ms), str(self.stamp_ms), str(self.window_ms)]
            + list(self.ids)
        )
        return hashlib.sha256(text.encode("ascii")).hexdigest()
