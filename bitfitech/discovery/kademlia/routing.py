"""The routing table: k-buckets of the DHT nodes this node knows (BEP 5).

Data path: the protocol reports every node heard from
(:meth:`RoutingTable.heard_from`) and every query that timed out
(:meth:`RoutingTable.failed`); the table answers ``find_node`` and
``get_peers`` queries and seeds lookups (:meth:`RoutingTable.closest`), and
tells the service which buckets to refresh (:meth:`RoutingTable.stale_buckets`,
and :meth:`RoutingTable.ranges_to_fill` just after joining).

The id space is split into buckets of at most ``k`` contacts, each covering
a range of ids.  A full bucket that covers our own id splits in two; any
other full bucket keeps its contacts, because long-lived nodes are the
likeliest to stay: a newcomer waits in the bucket's small replacement cache,
and the table asks the caller to ping the bucket's questionable contacts
(:meth:`heard_from` returns them, and a newcomer that only queried us,
to verify it).  A contact that fails ``max_failures`` queries in a row is
bad: it is dropped, and the freshest replacement takes its place; it goes
at its first failure if a replacement is waiting or it never answered us
(libtorrent's rule).

Answers to ``find_node`` and ``get_peers`` name only *confirmed* contacts
(:meth:`RoutingTable.closest_confirmed`): answered us, and no failure
since; lookups start from every contact (:meth:`RoutingTable.closest`).
The service pings, at a fixed rate, the contact nearest our id least
recently heard from (:meth:`RoutingTable.to_check`), so a dead one there
is found out in minutes rather than the 15 it would stay good.

States, as in BEP 5: a contact is *good* if it has answered one of our
queries and has been heard from within ``good_for`` seconds (an answer, or
a query of its own); otherwise *questionable*; *bad* after repeated
failures.  A query counts as a failure only when it got no answer at all
within the protocol's query timeout, and only if the contact has not
answered another query since that one was sent: a slow answer, or a lost
datagram whose resend was answered, is no failure.

The table also keeps round-trip times (:class:`RoundTrip`, as TCP does,
RFC 6298): one per contact and one over every answer, which serves for
nodes not yet measured.  :meth:`RoutingTable.stall_timeout` turns them
into how long a lookup waits for a node before it stops counting the
query against its concurrency.  Pure: time is passed in as ``now``, round
trips as seconds measured by the caller.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from .ids import ID_BITS, ID_SIZE, ID_SPACE, id_to_int, random_id_between

K = 8
"""Contacts per bucket, and nodes a lookup converges on."""

GOOD_FOR = 15 * 60.0
"""Seconds a contact stays good without being heard from."""

MAX_FAILURES = 2
"""Consecutive unanswered queries that make a contact bad."""

PING_AGAIN_AFTER = 60.0
"""Seconds before a questionable contact may be pinged again."""

STALL_MIN = 0.25
"""Least seconds a stall timeout lasts, however fast a node answers."""

STALL_MAX = 1.0
"""Most seconds a stall timeout lasts, however slow a node answers."""

STALL_INITIAL = 1.0
"""The stall timeout before any answer was measured (as RFC 6298's first RTO)."""


@dataclass
class RoundTrip:
    """
    A smoothed round-trip time and its mean deviation, updated as RFC 6298
    has TCP do it (gains 1/8 and 1/4; the first sample sets the time, and
    half of it the deviation).

    :ivar srtt: the smoothed round trip in seconds, ``None`` before any sample.
    :ivar rttvar: its mean deviation in seconds.
    :ivar samples: samples taken.
    """

    srtt: float | None = None
    rttvar: float = 0.0
    samples: int = 0

    def add(self, seconds: float) -> None:
        """Take one measured round trip of C{seconds} (negative ones count as 0)."""
        sample = max(seconds, 0.0)
        if self.srtt is None:
            self.srtt = sample
            self.rttvar = sample / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
            self.srtt = 0.875 * self.srtt + 0.125 * sample
        self.samples += 1

    def timeout(self, floor: float, ceiling: float) -> float | None:
        """
        RFC 6298's retransmission timeout, ``srtt + 4 * rttvar``, kept
        within [C{floor}, C{ceiling}]; ``None`` before any sample.
        """
        if self.srtt is None:
            return None
        return min(max(self.srtt + 4 * self.rttvar, floor), ceiling)


@dataclass(eq=False)
class Contact:
    """
    A node in the routing table.

    :ivar node_id: its id (20 bytes).
    :ivar host: its IPv4 address.
    :ivar port: its UDP port.
    :ivar first_seen: when it entered the table.
    :ivar last_seen: when it was last heard from (answer or query).
    :ivar last_response: when it last answered one of our queries, if ever.
    :ivar failures: our queries it has left unanswered since its last answer.
    :ivar last_pinged: when the table last asked for it to be pinged.
    :ivar round_trip: the round trips of its answers to our queries.
    """

    node_id: bytes
    host: str
    port: int
    first_seen: float
    last_seen: float
    last_response: float | None = None
    failures: int = 0
    last_pinged: float | None = None
    round_trip: RoundTrip = field(default_factory=RoundTrip)

    @property
    def address(self) -> tuple[str, int]:
        """The contact's ``(host, port)``."""
        return (self.host, self.port)

    def is_confirmed(self) -> bool:
        """
        Whether the contact has answered one of our queries and left none
        unanswered since: the contacts our answers name.
        """
        return self.last_response is not None and self.failures == 0

    def is_good(self, now: float, good_for: float = GOOD_FOR) -> bool:
        """Whether the contact has answered us and is recently heard from."""
        return (
            self.failures == 0
            and self.last_response is not None
            and now - self.last_seen < good_for
        )


@dataclass(eq=False)
class Bucket:
    """
    The contacts whose ids fall in ``low <= id < high``.

    :ivar contacts: at most ``k``, least recently seen first.
    :ivar replacements: nodes waiting for a place, most recent last.
    :ivar changed: when a contact was last added, replaced or heard from,
        or a lookup targeted the range.
    """

    low: int
    high: int
    changed: float
    contacts: list[Contact] = field(default_factory=list)
    replacements: list[Contact] = field(default_factory=list)

    def covers(self, value: int) -> bool:
        """Whether the integer id C{value} falls in the bucket's range."""
        return self.low <= value < self.high


class RoutingTable:
    """
    The k-buckets around one node id.

    :ivar own_id: the id of this node, never stored as a contact.
    :ivar k: contacts per bucket.
    :ivar round_trip: the round trips of every answer measured, from any
        node: the estimate for nodes not measured yet.
    :param stall_min: the least stall timeout, in seconds.
    :param stall_max: the greatest stall timeout, in seconds.
    :param stall_initial: the stall timeout before any round trip is known.
    """

    def __init__(
        self,
        own_id: bytes,
        now: float,
        *,
        k: int = K,
        good_for: float = GOOD_FOR,
        max_failures: int = MAX_FAILURES,
        ping_again_after: float = PING_AGAIN_AFTER,
        stall_min: float = STALL_MIN,
        stall_max: float = STALL_MAX,
        stall_initial: float = STALL_INITIAL,
    ) -> None:
        self.own_id = own_id
        self.k = k
        self._own = id_to_int(own_id)
        self._good_for = good_for
        self._max_failures = max_failures
        self._ping_again_after = ping_again_after
        self._stall_min = stall_min
        self._stall_max = max(stall_max, stall_min)
        self._stall_initial = min(max(stall_initial, stall_min), self._stall_max)
        self.round_trip = RoundTrip()
        self._buckets = [Bucket(0, ID_SPACE, now)]
        self._lows = [0]
        self._by_id: dict[bytes, Contact] = {}
        self._by_address: dict[tuple[str, int], Contact] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Contact]:
        return iter(list(self._by_id.values()))

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._by_id

    @property
    def buckets(self) -> list[Bucket]:
        """The buckets, in id order (a copy of the list)."""
        return list(self._buckets)

    def get(self, node_id: bytes) -> Contact | None:
        """The contact with id C{node_id}, if any."""
        return self._by_id.get(node_id)

    def at_address(self, address: tuple[str, int]) -> Contact | None:
        """The contact at C{address}, if any."""
        return self._by_address.get(address)

    def bucket_for(self, node_id: bytes) -> Bucket:
        """The bucket whose range holds C{node_id}."""
        value = id_to_int(node_id)
        return self._buckets[bisect.bisect_right(self._lows, value) - 1]

    def good_contacts(self, now: float) -> list[Contact]:
        """The good contacts, most recently answering first."""
        good = [c for c in self._by_id.values() if c.is_good(now, self._good_for)]
        good.sort(key=lambda c: -(c.last_response or 0.0))
        return good

    def heard_from(
        self, node_id: bytes, address: tuple[str, int], now: float, *, responded: bool
    ) -> list[Contact]:
        """
        Record a message from C{node_id} at C{address}.

        :param responded: ``True`` for an answer to our query, ``False`` for
            a query of its own (the node is then not yet verified).
        :return: questionable contacts the caller should ping (the bucket is
            full and the node waits as a replacement); often empty.
        """
        if node_id == self.own_id or len(node_id) != ID_SIZE:
            return []
        holder = self._by_address.get(address)
        if holder is not None and holder.node_id != node_id:
            # A node at a known address has a new id (it restarted): believe
            # it if it answered a query we sent there, or the old id went quiet.
            if not responded and holder.is_good(now, self._good_for):
                return []
            self.remove(holder.node_id)
        contact = self._by_id.get(node_id)
        if contact is not None and contact.address != address:
            # Another address claims a known id: the same rule.
            if not responded and contact.is_good(now, self._good_for):
                return []
            self._forget_address(contact)
            contact.host, contact.port = address
            contact.round_trip = RoundTrip()
            self._by_address[address] = contact
        if contact is not None:
            contact.last_seen = now
            if responded:
                contact.last_response = now
                contact.failures = 0
                bucket = self.bucket_for(node_id)
                bucket.changed = now
                bucket.contacts.remove(contact)
                bucket.contacts.append(contact)
            return []
        return self._add(Contact(node_id, address[0], address[1], now, now), now, responded)

    def _add(self, contact: Contact, now: float, responded: bool) -> list[Contact]:
        if responded:
            contact.last_response = now
        value = id_to_int(contact.node_id)
        while True:
            index = bisect.bisect_right(self._lows, value) - 1
            bucket = self._buckets[index]
            if len(bucket.contacts) < self.k:
                self._insert(bucket, contact, now)
                return self._to_verify(contact, now)
            if bucket.covers(self._own) and bucket.high - bucket.low > 1:
                self._split(index)
                continue
            break
        bad = [c for c in bucket.contacts if c.failures >= self._max_failures]
        if bad:
            self.remove(bad[0].node_id)
            self._insert(bucket, contact, now)
            return self._to_verify(contact, now)
        for i, waiting in enumerate(bucket.replacements):
            if waiting.node_id == contact.node_id or waiting.address == contact.address:
                del bucket.replacements[i]
                break
        bucket.replacements.append(contact)
        if len(bucket.replacements) > self.k:
            del bucket.replacements[0]
        to_ping = [
            c
            for c in bucket.contacts
            if not c.is_good(now, self._good_for)
            and (c.last_pinged is None or now - c.last_pinged >= self._ping_again_after)
        ]
        for c in to_ping:
            c.last_pinged = now
        return to_ping

    def _to_verify(self, contact: Contact, now: float) -> list[Contact]:
        # A contact that only queried us is pinged once at once: until it
        # answers, our answers leave it out.
        if contact.last_response is not None:
            return []
        contact.last_pinged = now
        return [contact]

    def _insert(self, bucket: Bucket, contact: Contact, now: float) -> None:
        bucket.contacts.append(contact)
        bucket.changed = now
        self._by_id[contact.node_id] = contact
        self._by_address[contact.address] = contact

    def _split(self, index: int) -> None:
        bucket = self._buckets[index]
        middle = (bucket.low + bucket.high) // 2
        lower = Bucket(bucket.low, middle, bucket.changed)
        upper = Bucket(middle, bucket.high, bucket.changed)
        for c in bucket.contacts:
            (lower if id_to_int(c.node_id) < middle else upper).contacts.append(c)
        for c in bucket.replacements:
            (lower if id_to_int(c.node_id) < middle else upper).replacements.append(c)
        self._buckets[index : index + 1] = [lower, upper]
        self._lows[index : index + 1] = [lower.low, upper.low]

    def failed(
        self,
        node_id: bytes | None,
        address: tuple[str, int],
        now: float,
        *,
        sent: float | None = None,
    ) -> None:
        """
        A query to C{node_id} (or, if unknown, to whoever is at C{address})
        went unanswered.  A contact that becomes bad is dropped and the
        freshest replacement of its bucket takes its place; so is, at its
        first failure, a contact whose bucket has a replacement waiting or
        that never answered us (as libtorrent does).

        :param sent: when the query was sent, if known: a contact that has
            answered another query since then is alive (that datagram was
            lost), and the query does not count against it.
        """
        contact = self._by_id.get(node_id) if node_id is not None else None
        if contact is None:
            contact = self._by_address.get(address)
        if contact is None:
            if node_id is not None and len(node_id) == ID_SIZE:
                bucket = self.bucket_for(node_id)
                bucket.replacements = [c for c in bucket.replacements if c.node_id != node_id]
            return
        if sent is not None and contact.last_response is not None and contact.last_response > sent:
            return
        contact.failures += 1
        if (
            contact.failures >= self._max_failures
            or contact.last_response is None
            or self.bucket_for(contact.node_id).replacements
        ):
            self.remove(contact.node_id)

    def measured(self, node_id: bytes, seconds: float) -> None:
        """
        Node C{node_id} answered one of our queries C{seconds} after we sent
        it: one sample for its contact (if it is one) and for the estimate
        of every node.
        """
        self.round_trip.add(seconds)
        contact = self._by_id.get(node_id)
        if contact is not None:
            contact.round_trip.add(seconds)

    def stall_timeout(self, node_id: bytes | None) -> float:
        """
        Seconds after which a query to C{node_id} has probably gone
        unanswered: the contact's own RFC 6298 timeout if it has answered
        before, else that of every answer measured, else ``stall_initial``;
        always within [``stall_min``, ``stall_max``].
        """
        contact = self._by_id.get(node_id) if node_id is not None else None
        if contact is not None:
            own = contact.round_trip.timeout(self._stall_min, self._stall_max)
            if own is not None:
                return own
        shared = self.round_trip.timeout(self._stall_min, self._stall_max)
        return shared if shared is not None else self._stall_initial

    def remove(self, node_id: bytes) -> None:
        """
        Drop a contact, promoting the freshest replacement of its bucket
        that has answered us, else the freshest.
        """
        contact = self._by_id.pop(node_id, None)
        if contact is None:
            return
        self._forget_address(contact)
        bucket = self.bucket_for(node_id)
        bucket.contacts.remove(contact)
        while bucket.replacements and len(bucket.contacts) < self.k:
            answered = [i for i, c in enumerate(bucket.replacements) if c.last_response is not None]
            waiting = bucket.replacements.pop(answered[-1] if answered else -1)
            if waiting.node_id in self._by_id or waiting.address in self._by_address:
                continue
            self._insert(bucket, waiting, bucket.changed)

    def _forget_address(self, contact: Contact) -> None:
        if self._by_address.get(contact.address) is contact:
            del self._by_address[contact.address]

    def closest(self, target: bytes, count: int | None = None) -> list[Contact]:
        """The C{count} (default ``k``) contacts nearest to C{target} by XOR."""
        value = id_to_int(target)
        return heapq.nsmallest(
            count or self.k,
            self._by_id.values(),
            key=lambda c: id_to_int(c.node_id) ^ value,
        )

    def closest_confirmed(self, target: bytes, count: int | None = None) -> list[Contact]:
        """
        The C{count} (default ``k``) confirmed contacts nearest to
        C{target} (:meth:`Contact.is_confirmed`): those a ``find_node`` or
        ``get_peers`` answer names.  A contact that never answered us, or
        left a query unanswered since its last answer, is left out, as
        libtorrent leaves out nodes not pinged or failed.
        """
        value = id_to_int(target)
        return heapq.nsmallest(
            count or self.k,
            (c for c in self._by_id.values() if c.is_confirmed()),
            key=lambda c: id_to_int(c.node_id) ^ value,
        )

    def to_check(self, now: float, nearest: int) -> Contact | None:
        """
        The contact to ping now to learn whether it is still there: of our
        C{nearest} contacts nearest our own id, the one least recently
        heard from or pinged (marked as pinged), if any.  Called at a fixed
        rate, this finds out a dead contact among them within
        C{nearest} calls, well before it turns questionable.
        """
        chosen = min(
            self.closest(self.own_id, nearest),
            key=lambda c: max(c.last_seen, c.last_pinged or c.last_seen),
            default=None,
        )
        if chosen is not None:
            chosen.last_pinged = now
        return chosen

    def to_ping(self, now: float, limit: int) -> list[Contact]:
        """
        Up to C{limit} questionable contacts to ping now, least recently seen
        first (each marked as pinged): how dead contacts in quiet buckets
        are found out and dropped.
        """
        waiting = [
            c
            for c in self._by_id.values()
            if not c.is_good(now, self._good_for)
            and (c.last_pinged is None or now - c.last_pinged >= self._ping_again_after)
        ]
        chosen = heapq.nsmallest(limit, waiting, key=lambda c: c.last_seen)
        for c in chosen:
            c.last_pinged = now
        return chosen

    def touch(self, target: bytes, now: float) -> None:
        """A lookup for C{target} refreshes the bucket holding it."""
        self.bucket_for(target).changed = now

    def stale_buckets(self, now: float, interval: float) -> list[Bucket]:
        """Buckets not changed for C{interval} seconds: due for a refresh."""
        return [b for b in self._buckets if now - b.changed >= interval]

    def ranges_to_fill(self) -> list[tuple[int, int]]:
        """
        The id ranges a node that has just looked up its own id refreshes
        once each (Kademlia's join), nearest first, as ``(low, high)``.

        Kademlia refreshes every bucket farther than the nearest contact,
        a bucket there being the ids that share exactly ``i`` leading bits
        with ours, for each ``i`` (here the bucket holding our own id spans
        several of those: it splits as they fill).  A range is kept if it
        holds fewer than k contacts and reaches farther than our k-th
        nearest contact, the self-lookup having found every node nearer
        than that.
        """
        if not self._by_id:
            return []
        reach = self._distance_bits(self.closest(self.own_id)[-1].node_id)
        held = Counter(self._distance_bits(c.node_id) for c in self._by_id.values())
        return [self.distance_range(b) for b in range(reach, ID_BITS + 1) if held[b] < self.k]

    def _distance_bits(self, node_id: bytes) -> int:
        return (id_to_int(node_id) ^ self._own).bit_length()

    def distance_range(self, bits: int) -> tuple[int, int]:
        """
        The ids whose XOR distance to ours is C{bits} bits long (``1 <=
        bits <= 160``), as ``(low, high)``: those that share exactly
        ``160 - bits`` leading bits with our id.
        """
        size = 1 << (bits - 1)
        low = (self._own ^ size) & ~(size - 1)
        return low, low + size

    def count_between(self, low: int, high: int) -> int:
        """How many contacts have an id in ``low <= id < high``."""
        first = max(bisect.bisect_right(self._lows, low) - 1, 0)
        count = 0
        for bucket in self._buckets[first:]:
            if bucket.low >= high:
                break
            count += sum(1 for c in bucket.contacts if low <= id_to_int(c.node_id) < high)
        return count

    def random_id_in(self, bucket: Bucket, rng: random.Random) -> bytes:
        """A random id in C{bucket}'s range: the target of its refresh."""
        return random_id_between(rng, bucket.low, bucket.high)
