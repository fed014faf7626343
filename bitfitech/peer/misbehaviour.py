"""Misbehaviour scores: how much each kind of bad behaviour counts against a peer.

Data path: a link or the gossip notices bad behaviour -> the link owner's
``link_misbehaved(link, reason, score)`` (:class:`~bitfitech.peer.hub.PeerHub`)
-> the peer's score; past :data:`BAN_THRESHOLD`, disconnect and a
time-limited ban (``docs/security.rst``).  :class:`ScoreBoard` keeps the
scores, by remote IP address.
"""

from __future__ import annotations

from collections import OrderedDict

#: the score at which a peer is disconnected and banned
BAN_THRESHOLD = 100

#: a protocol violation: a malformed frame or message, an event with a bad
#: signature, a certificate that does not prove the node id claimed.  No
#: honest peer sends these, so one is enough for a ban.
VIOLATION = 100

#: an event that is malformed (but came in a well-formed message)
MALFORMED_EVENT = 20

#: one time a peer went past a rate limit (messages, bytes, or events of one author)
RATE_EXCEEDED = 10

#: a score halves every this many seconds (exponential decay)
SCORE_HALF_LIFE = 3600.0

#: how many addresses the scoreboard remembers (least recently scored go first)
MAX_SCORED_ADDRESSES = 4096


class ScoreBoard:
    """
    Misbehaviour scores by remote IP address, decaying, in a bounded LRU.

    Scores are kept per address, not per node id: a hostile peer makes new
    keys for free, new addresses it does not.  A score halves every
    C{half_life} seconds (``score * 0.5 ** (elapsed / half_life)``), so
    occasional slips fade and only a burst of misbehaviour reaches
    :data:`BAN_THRESHOLD`.  At most C{max_addresses} addresses are kept;
    the one scored least recently is forgotten first.  Pure: time is
    passed in as ``now``.
    """

    def __init__(
        self, *, half_life: float = SCORE_HALF_LIFE, max_addresses: int = MAX_SCORED_ADDRESSES
    ) -> None:
        """
        :param half_life: seconds in which a score halves (positive).
        :param max_addresses: how many addresses to remember (at least 1).
        """
        if half_life <= 0 or max_addresses < 1:
            raise ValueError("half_life must be positive and max_addresses at least 1")
        self.half_life = half_life
        self.max_addresses = max_addresses
        self._scores: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._scores)

    def _decayed(self, score: float, since: float, now: float) -> float:
        factor: float = 0.5 ** (max(0.0, now - since) / self.half_life)
        return score * factor

    def score(self, address: str, now: float) -> float:
        """The score of C{address} at C{now} (0 for an unknown address)."""
        entry = self._scores.get(address)
        return 0.0 if entry is None else self._decayed(entry[0], entry[1], now)

    def add(self, address: str, score: float, now: float) -> float:
        """
        Count C{score} against C{address} at C{now}.

        :return: its score now, decayed old score plus C{score}.
        """
        total = self.score(address, now) + score
        self._scores[address] = (total, now)
        self._scores.move_to_end(address)
        while len(self._scores) > self.max_addresses:
            self._scores.popitem(last=False)
        return total

    def reset(self, address: str) -> None:
        """Forget the score of C{address} (after a ban, or when the operator lifts one)."""
        self._scores.pop(address, None)
