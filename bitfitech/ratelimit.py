"""Token buckets: how fast a peer link, an event author or a DHT querier may go.

Not a stage of the data path but a tool several stages share, so it sits
below all of them: :class:`~bitfitech.peer.protocol.PeerProtocol` counts
the messages and bytes each link receives in two :class:`TokenBucket` (and
stops reading the link while one is in debt); :class:`~bitfitech.gossip.Gossip`
counts the new events of each author in a :class:`BucketTable` (and drops
the excess before checking signatures); the DHT
(:mod:`bitfitech.discovery.kademlia.store`) limits queries per IP address
with one.  Pure: time is passed in as ``now`` (seconds), nothing here
imports Twisted.

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens a second.
:meth:`TokenBucket.take` takes tokens only if they are there (for what can
be refused: an event); :meth:`TokenBucket.spend` takes them in any case and
says how long the debt takes to repay (for what already arrived: bytes read
from a socket, which can only be answered by reading more slowly).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator


class TokenBucket:
    """
    A token bucket with debt.

    :ivar rate: tokens gained a second (> 0).
    :ivar burst: the most tokens held (> 0).
    :ivar level: tokens held at :attr:`stamp`; negative while in debt.
    :ivar stamp: the time :attr:`level` was last brought up to date.
    """

    __slots__ = ("rate", "burst", "level", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        """
        :param rate: tokens gained a second.
        :param burst: the most tokens held; the bucket starts full.
        :param now: the current time, seconds.
        :raises ValueError: if C{rate} or C{burst} is not positive.
        """
        if not rate > 0 or not burst > 0:
            raise ValueError(f"rate and burst must be positive, not {rate!r} and {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.level = self.burst
        self.stamp = now

    def _refill(self, now: float) -> float:
        if now > self.stamp:
            self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
            self.stamp = now
        # A clock that went backwards gains nothing (and costs nothing).
        return self.level

    def available(self, now: float) -> float:
        """Tokens held at C{now} (negative while in debt)."""
        return self._refill(now)

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Take C{amount} tokens if the bucket holds them; ``False`` (and take nothing) if not."""
        if self._refill(now) < amount:
            return False
        self.level -= amount
        return True

    def spend(self, now: float, amount: float) -> float:
        """
        Take C{amount} tokens, going into debt if need be.

        :return: seconds until the bucket is out of debt (0.0 if it is not in debt).
        """
        self.level = self._refill(now) - amount
        return self.wait(now)

    def wait(self, now: float) -> float:
        """Seconds from C{now} until the bucket is out of debt (0.0 if it is not)."""
        level = self._refill(now)
        return 0.0 if level >= 0 else -level / self.rate

    def full(self, now: float) -> bool:
        """Whether the bucket is full: it is then the same as a new one."""
        return self._refill(now) >= self.burst


class BucketTable:
    """
    One :class:`TokenBucket` per key (an event author), bounded.

    A bucket that has filled up again is the same as a new one, so
    :meth:`prune` forgets those; past ``max_keys`` the least recently used
    bucket is forgotten as well (that key then starts afresh, full).
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 65536) -> None:
        """
        :param rate: tokens each bucket gains a second.
        :param burst: the most tokens each bucket holds.
        :param max_keys: the most buckets kept.
        """
        TokenBucket(rate, burst, 0.0)  # check the figures
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._buckets)

    def bucket(self, key: Hashable, now: float) -> TokenBucket:
        """C{key}'s bucket (a new, full one if it has none)."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(buckets) > self.max_keys:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        return bucket

    def take(self, key: Hashable, now: float, amount: float = 1.0) -> bool:
        """Take C{amount} tokens from C{key}'s bucket if it holds them."""
        return self.bucket(key, now).take(now, amount)

    def prune(self, now: float) -> None:
        """Forget the buckets that are full again."""
        buckets = self._buckets
        for key in [key for key, bucket in buckets.items() if bucket.full(now)]:
            del buckets[key]
