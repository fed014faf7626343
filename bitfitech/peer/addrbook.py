"""The address book: where peers listen, between discovery and the outbound dialler.

Addresses arrive from the command line (``bootstrap``, ``witness``), the API
(``manual``, kept only once its dial succeeded), peers' ``addr`` messages,
inbound handshakes, mDNS and the DHT.  The dialler asks
:meth:`AddressBook.candidates` whom to call, reports back with
``record_attempt``/``record_success``/``record_failure``, and a
:class:`RetryPolicy` (exponential backoff plus a circuit breaker) decides
when a failing address may be tried again.

An address is a *candidate* until a handshake with it succeeds.  Only
addresses reached within :data:`SHARE_WINDOW`, and not failed since, are
shared with peers (:meth:`AddressBook.sample`, for ``getaddr`` answers).
Addresses that keep failing are aged out, on the model of Bitcoin Core's
``IsTerrible``: never reached after :data:`NEVER_REACHED_MAX_FAILURES`
failures in a row, or :data:`REACHED_MAX_FAILURES` failures in a row with
the last success over :data:`REACHED_FAILURE_GRACE` ago
(:meth:`AddressEntry.is_terrible`); bootstrap and witness addresses, and
manual ones once reached, never are (:attr:`AddressEntry.protected`).

The book is bounded, keeps an in-memory mirror for reads and writes every
change through to the ``addresses`` table (created by
:mod:`bitfitech.storage`).  It is pure apart from that: time is passed in as
``now``.

Each entry also keeps the markets its node was last said to carry
(:attr:`AddressEntry.markets`): from the peer's own ``version`` once a
handshake succeeds, or from discovery (a DHT lookup of a market's hash, an
mDNS TXT record).  The dialler asks for candidates known to carry its
markets first (:meth:`AddressBook.candidates` with ``prefer``).
"""

from __future__ import annotations

import dataclasses
import math
import random
import sqlite3
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from bitfitech.address import PeerAddress, check_port, is_node_id, normalize_host
from bitfitech.storage import WriteThrough

#: Where an address can come from.
SOURCES = ("bootstrap", "witness", "manual", "addr", "inbound", "mdns", "dht")
#: Sources that record the operator's intent: they take over an entry
#: learned another way, and are dialled before other never-reached addresses.
OPERATOR_SOURCES = frozenset({"bootstrap", "witness", "manual"})
#: Sources from the node's configuration: never evicted, pruned or aged out,
#: however often they fail (a ``manual`` entry is too, once reached:
#: :attr:`AddressEntry.protected`).
PROTECTED_SOURCES = frozenset({"bootstrap", "witness"})

SHARE_WINDOW = 3 * 3600.0
"""
Seconds after a successful handshake during which this node vouches for
an address: of the book's addresses, only one reached this recently, and
whose dials have not failed since (:meth:`AddressEntry.shareable`), goes
into ``getaddr`` answers, and only one just reached is announced to peers.
An address merely heard of (from a peer, mDNS, the DHT, an inbound link or
by hand) is never passed on from the book.  (A ``getaddr`` answer also
names the peers linked at the time: :class:`~bitfitech.peer.hub.PeerHub`.)
"""

NEVER_REACHED_MAX_FAILURES = 3
"""
Failed dials in a row after which an address never reached is forgotten
(Bitcoin Core's ``ADDRMAN_RETRIES``).  With the default backoff that is
about three seconds of trying.
"""

REACHED_MAX_FAILURES = 10
"""
Failed dials in a row after which an address reached before is forgotten,
if its last success is also older than :data:`REACHED_FAILURE_GRACE`
(Bitcoin Core's ``ADDRMAN_MAX_FAILURES``).
"""

REACHED_FAILURE_GRACE = 7 * 86400.0
"""
How long an address that was reached is kept through failures: seven days
after its last success (Bitcoin Core's ``ADDRMAN_MIN_FAIL``).
"""

STALE_AGE = 30 * 86400.0
"""
A failing address not heard of for this long is forgotten by
:meth:`AddressBook.prune` (Bitcoin Core's ``ADDRMAN_HORIZON``).
"""

_COLUMNS = (
    "host",
    "port",
    "node_id",
    "source",
    "first_seen",
    "last_seen",
    "last_attempt",
    "last_success",
    "successes",
    "failures",
    "total_failures",
    "suspended_until",
    "markets",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM addresses"
_UPSERT = (
    f"INSERT INTO addresses ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (host, port) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in _COLUMNS[2:])
)
_DELETE = "DELETE FROM addresses WHERE host = ? AND port = ?"
# 2**64 times any sane base delay is far beyond any max_delay.
_MAX_BACKOFF_EXPONENT = 64


@dataclass
class AddressEntry:
    """
    One known listening address and what happened when we dialled it.

    :ivar host: normalized host (IPv6 without brackets).
    :ivar port: TCP port.
    :ivar node_id: the node id believed to listen there, or ``None``.
    :ivar source: one of :data:`SOURCES`: how we learned the address.
    :ivar first_seen: when the address entered the book.
    :ivar last_seen: when the address was last heard of or reached.
    :ivar last_attempt: when we last started dialling it.
    :ivar last_success: when a connection last completed its handshake.
    :ivar successes: successful connections, ever.
    :ivar failures: consecutive failures since the last success.
    :ivar total_failures: failures, ever.
    :ivar suspended_until: not to be dialled before this time.
    :ivar markets: the markets the node there was last said to carry
        (empty if not known).
    """

    host: str
    port: int
    node_id: str | None
    source: str
    first_seen: float
    last_seen: float
    last_attempt: float | None = None
    last_success: float | None = None
    successes: int = 0
    failures: int = 0
    total_failures: int = 0
    suspended_until: float = 0.0
    markets: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple[str, int]:
        """The ``(host, port)`` pair that identifies the entry."""
        return (self.host, self.port)

    @property
    def address(self) -> PeerAddress:
        """The entry as a :class:`~bitfitech.address.PeerAddress`, pinned to its node id."""
        return PeerAddress(self.host, self.port, self.node_id)

    def carries(self, markets: Collection[str]) -> bool | None:
        """
        Whether the node at this address carries one of C{markets}:
        ``None`` if its markets are not known.
        """
        if not self.markets:
            return None
        return not self.markets.isdisjoint(markets)

    @property
    def protected(self) -> bool:
        """
        Whether the entry stays whatever happens: never evicted, pruned nor
        aged out.  Bootstrap and witness addresses always are; a manual one
        once a handshake with it succeeded (the API keeps a manual address
        only then; one that never worked, left by an older version, ages
        out like a learned one).
        """
        if self.source in PROTECTED_SOURCES:
            return True
        return self.source == "manual" and self.last_success is not None

    def shareable(self, now: float) -> bool:
        """
        Whether this node vouches for the address at C{now}: a handshake
        with it succeeded within :data:`SHARE_WINDOW` and no dial has failed
        since.
        """
        return (
            self.last_success is not None
            and now - self.last_success <= SHARE_WINDOW
            and self.failures == 0
        )

    def is_terrible(self, now: float) -> bool:
        """
        Whether the address failed too often to be worth keeping (Bitcoin
        Core's ``IsTerrible``): never reached and
        :data:`NEVER_REACHED_MAX_FAILURES` failures in a row, or
        :data:`REACHED_MAX_FAILURES` failures in a row and no success for
        :data:`REACHED_FAILURE_GRACE`.  Protection is not considered.
        """
        if self.last_success is None:
            return self.failures >= NEVER_REACHED_MAX_FAILURES
        return (
            self.failures >= REACHED_MAX_FAILURES
            and now - self.last_success > REACHED_FAILURE_GRACE
        )


@dataclass(frozen=True)
class RetryPolicy:
    """
    When a failing address may be dialled again: exponential backoff and a circuit breaker.

    After the first consecutive failure an address waits C{base_delay}, then
    twice as long after each further failure, up to C{max_delay}.  At
    C{breaker_threshold} consecutive failures the breaker opens: the address
    rests for C{cooldown}, then gets one half-open try.  A failure re-opens
    the breaker for another cooldown; a success closes it.

    :ivar base_delay: seconds to wait after the first failure.
    :ivar max_delay: the longest backoff below the threshold.
    :ivar breaker_threshold: consecutive failures that open the breaker.
    :ivar cooldown: how long an open breaker rests.
    """

    base_delay: float = 1.0
    max_delay: float = 300.0
    breaker_threshold: int = 5
    cooldown: float = 900.0

    def next_attempt_at(self, entry: AddressEntry) -> float:
        """
        The earliest time C{entry} may be dialled.

        :return: 0.0 for an address without failures (unless suspended);
            never earlier than C{entry.suspended_until}.
        """
        if entry.failures <= 0:
            return max(0.0, entry.suspended_until)
        last_attempt = entry.last_attempt if entry.last_attempt is not None else 0.0
        if entry.failures >= self.breaker_threshold:
            delay = self.cooldown
        else:
            exponent = min(entry.failures - 1, _MAX_BACKOFF_EXPONENT)
            delay = min(self.base_delay * 2.0**exponent, self.max_delay)
        return max(last_attempt + delay, entry.suspended_until)

    def breaker_open(self, entry: AddressEntry, now: float) -> bool:
        """
        Whether C{entry}'s breaker is open (resting) at C{now}.

        Once the cooldown has passed the breaker is half-open and this
        returns ``False``; suspension is not considered.
        """
        if entry.failures < self.breaker_threshold:
            return False
        last_attempt = entry.last_attempt if entry.last_attempt is not None else 0.0
        return now < last_attempt + self.cooldown


DEFAULT_RETRY_POLICY = RetryPolicy()


class AddressBook:
    """
    The bounded set of known peer addresses, keyed by ``(host, port)``.

    Reads come from memory; once :meth:`load` has given it a database,
    every change is written through to its ``addresses`` table (before, the
    book is kept in memory only).  Entries handed out are copies:
    change them through the book's methods.  Methods given an address that
    is not in the book (it may have been evicted meanwhile) do nothing.
    """

    def __init__(
        self,
        *,
        max_entries: int = 2000,
        policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        rng: random.Random | None = None,
    ) -> None:
        """
        :param max_entries: how many entries to keep (protected entries,
            :attr:`AddressEntry.protected`, are never evicted, so there can be
            more of those).
        :param policy: the retry policy for failing addresses.
        :param rng: randomness for ordering and sampling.
        """
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self._table = WriteThrough("the address book")
        self._max_entries = max_entries
        self.policy = policy
        self._rng = rng if rng is not None else random.Random()
        self._entries: dict[tuple[str, int], AddressEntry] = {}

    # -- persistence ---------------------------------------------------------

    def load(self, connection: sqlite3.Connection | None) -> None:
        """
        Replace the in-memory mirror with the contents of C{connection}'s
        ``addresses`` table, and write every change through to it from now
        on (the node calls this at start, once its database is open).

        :param connection: the database, or ``None`` to keep the book in
            memory only (it is emptied).
        """
        self._table.connection = connection
        self._entries.clear()
        if connection is None:
            return
        for row in connection.execute(_SELECT + " ORDER BY first_seen, host, port"):
            fields = dict(zip(_COLUMNS, row, strict=True))
            fields["markets"] = _split_markets(fields["markets"])
            entry = AddressEntry(**fields)
            self._entries[entry.key] = entry

    def _save(self, entry: AddressEntry) -> None:
        row = [getattr(entry, column) for column in _COLUMNS[:-1]]
        self._table.execute(_UPSERT, (*row, _join_markets(entry.markets)))

    def _delete(self, key: tuple[str, int]) -> None:
        self._table.execute(_DELETE, key)

    # -- lookups -------------------------------------------------------------

    def _find(self, host: str, port: int) -> AddressEntry | None:
        try:
            return self._entries.get((normalize_host(host), port))
        except ValueError:
            return None

    def get(self, host: str, port: int) -> AddressEntry | None:
        """
        Look up an address.

        :return: a copy of its entry, or ``None`` if unknown.
        """
        entry = self._find(host, port)
        return None if entry is None else dataclasses.replace(entry)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        host, port = key
        return (
            isinstance(host, str) and isinstance(port, int) and self._find(host, port) is not None
        )

    def entries(self) -> list[AddressEntry]:
        """Copies of every entry, oldest first."""
        return _copies(self._entries.values())

    def find_node(self, node_id: str) -> list[AddressEntry]:
        """Copies of the entries believed to belong to C{node_id}."""
        return _copies(entry for entry in self._entries.values() if entry.node_id == node_id)

    # -- changes -------------------------------------------------------------

    def add(
        self,
        host: str,
        port: int,
        *,
        source: str,
        now: float,
        node_id: str | None = None,
        seen: float | None = None,
        markets: Collection[str] = (),
    ) -> bool:
        """
        Learn of an address, or refresh one already known.

        For a known address, C{last_seen} moves forward to C{seen} (or
        C{now}); a given C{node_id} replaces the recorded one (the address
        now belongs to that node); the source changes only to one of
        :data:`OPERATOR_SOURCES`, and ``manual`` never replaces ``bootstrap``
        or ``witness``.  C{seen} (a peer's claim) is clamped to C{now}.

        Adding an address makes it a candidate to dial, nothing more: it is
        shared with peers only once a handshake with it succeeded
        (:meth:`AddressEntry.shareable`).

        When the book overflows, one entry is evicted: never a protected one
        (:attr:`AddressEntry.protected`); a never-reached one before one
        reached, then the one with the most consecutive failures, then the
        oldest C{last_seen}.  That can be the new entry itself.

        :param source: one of :data:`SOURCES`.
        :param now: the current time.
        :param node_id: the node id said to listen there.
        :param seen: when the address was last heard of, if not C{now}.
        :param markets: the markets the node there is said to carry (by
            discovery); they replace those recorded, unless empty.
        :return: ``True`` if the address was new and is now in the book.
        :raises ValueError: for an invalid host, port, source, node id or
            C{seen} (:class:`~bitfitech.address.AddressError` for the first two).
        """
        entry, new = self._upsert(
            host, port, source=source, now=now, node_id=node_id, seen=seen, markets=markets
        )
        if not new:
            return False
        self._evict_overflow()
        return entry.key in self._entries

    def keep_manual(self, host: str, port: int, *, now: float, node_id: str | None) -> bool:
        """
        Keep an address the user dialled by hand once its handshake
        succeeded: entered (or taken over, unless it is a bootstrap or
        witness address) as ``manual`` and recorded as reached in one step,
        so that it is protected before the book makes room for it.

        :param node_id: the node id the peer proved.
        :return: as :meth:`record_success`: whether it is newly shareable.
        :raises ValueError: as :meth:`add`.
        """
        entry, _ = self._upsert(host, port, source="manual", now=now, node_id=node_id)
        newly_shareable = self.record_success(entry.host, entry.port, now, node_id)
        self._evict_overflow()
        return newly_shareable

    def _upsert(
        self,
        host: str,
        port: int,
        *,
        source: str,
        now: float,
        node_id: str | None,
        seen: float | None = None,
        markets: Collection[str] = (),
    ) -> tuple[AddressEntry, bool]:
        """
        :meth:`add` without the eviction: the entry (the book's own) and
        whether it is new.
        """
        host = normalize_host(host)
        check_port(port)
        if source not in SOURCES:
            raise ValueError(f"unknown address source {source!r}; expected one of {SOURCES}")
        if node_id is not None and not is_node_id(node_id):
            raise ValueError(f"invalid node id {node_id!r} (expected 40 lowercase hex digits)")
        if seen is not None and not math.isfinite(seen):
            raise ValueError(f"invalid seen time {seen!r}")
        seen_at = now if seen is None else min(seen, now)
        key = (host, port)
        entry = self._entries.get(key)
        if entry is not None:
            entry.last_seen = max(entry.last_seen, seen_at)
            if node_id is not None:
                entry.node_id = node_id
            if markets:
                entry.markets = frozenset(markets)
            if source in OPERATOR_SOURCES and not (
                source == "manual" and entry.source in PROTECTED_SOURCES
            ):
                entry.source = source
            self._save(entry)
            return entry, False
        entry = AddressEntry(host, port, node_id, source, first_seen=now, last_seen=seen_at,
                             markets=frozenset(markets))  # fmt: skip
        self._entries[key] = entry
        self._save(entry)
        return entry, True

    def _evict_overflow(self) -> None:
        while len(self._entries) > self._max_entries:
            evictable = [e for e in self._entries.values() if not e.protected]
            if not evictable:
                return
            victim = max(
                evictable, key=lambda e: (e.last_success is None, e.failures, -e.last_seen)
            )
            del self._entries[victim.key]
            self._delete(victim.key)

    def record_attempt(self, host: str, port: int, now: float) -> None:
        """Note that dialling C{host}:C{port} started at C{now}."""
        entry = self._find(host, port)
        if entry is not None:
            entry.last_attempt = now
            self._save(entry)

    def record_success(
        self,
        host: str,
        port: int,
        now: float,
        node_id: str | None,
        markets: Collection[str] = (),
    ) -> bool:
        """
        Note a completed handshake: it closes the breaker and resets backoff,
        and makes the address shareable (:meth:`AddressEntry.shareable`).

        :param node_id: the node id the peer proved, recorded if given.
        :param markets: the markets the peer's ``version`` announced,
            recorded if given.
        :return: ``True`` if the address was not shareable before and is
            now: news worth announcing to peers.
        """
        entry = self._find(host, port)
        if entry is None:
            return False
        newly_shareable = not entry.shareable(now)
        entry.successes += 1
        entry.failures = 0
        entry.last_success = now
        entry.last_seen = max(entry.last_seen, now)
        if node_id is not None:
            entry.node_id = node_id
        if markets:
            entry.markets = frozenset(markets)
        self._save(entry)
        return newly_shareable

    def record_markets(self, host: str, port: int, markets: Collection[str]) -> None:
        """
        Note the markets a peer linked at C{host}:C{port} announced in its
        ``version`` (an inbound link's listening address, or a dial's).
        """
        entry = self._find(host, port)
        if entry is not None and markets and entry.markets != frozenset(markets):
            entry.markets = frozenset(markets)
            self._save(entry)

    def record_failure(self, host: str, port: int, now: float) -> AddressEntry | None:
        """
        Note a failed connection; backoff runs from the last attempt (C{now} if none).

        An unprotected address that has now failed too often
        (:meth:`AddressEntry.is_terrible`) is removed from the book.

        :return: a copy of the entry if this failure aged it out (it is no
            longer in the book), else ``None``.
        """
        entry = self._find(host, port)
        if entry is None:
            return None
        entry.failures += 1
        entry.total_failures += 1
        if entry.last_attempt is None:
            entry.last_attempt = now
        if not entry.protected and entry.is_terrible(now):
            del self._entries[entry.key]
            self._delete(entry.key)
            return dataclasses.replace(entry)
        self._save(entry)
        return None

    def suspend(self, node_id: str, until: float) -> int:
        """
        Keep every address of C{node_id} from being dialled before C{until}.

        A longer suspension already in place is kept.

        :return: how many entries belong to C{node_id}.
        """
        count = 0
        for entry in self._entries.values():
            if entry.node_id == node_id:
                count += 1
                if until > entry.suspended_until:
                    entry.suspended_until = until
                    self._save(entry)
        return count

    def forget(self, host: str, port: int) -> bool:
        """
        Remove an address, whatever its source.

        :return: ``True`` if it was in the book.
        """
        entry = self._find(host, port)
        if entry is None:
            return False
        del self._entries[entry.key]
        self._delete(entry.key)
        return True

    def prune(self, now: float, *, max_age: float = STALE_AGE) -> int:
        """
        Drop the unprotected addresses that failed too often
        (:meth:`AddressEntry.is_terrible`, such as ones loaded from a book
        kept by an older version), and the failing ones not heard of for
        C{max_age}.

        :return: how many entries were dropped.
        """
        stale = [
            entry
            for entry in self._entries.values()
            if not entry.protected
            and (entry.is_terrible(now) or (entry.failures > 0 and now - entry.last_seen > max_age))
        ]
        for entry in stale:
            del self._entries[entry.key]
            self._delete(entry.key)
        return len(stale)

    # -- choosing ------------------------------------------------------------

    def candidates(
        self,
        now: float,
        *,
        exclude_node_ids: Collection[str] = (),
        exclude_endpoints: Collection[tuple[str, int]] = (),
        prefer: Collection[str] = (),
    ) -> list[AddressEntry]:
        """
        The addresses that may be dialled at C{now}, best first.

        Addresses that worked before come first (most recent success first),
        then bootstrap, witness and manual ones (:data:`OPERATOR_SOURCES`),
        then the rest; within the last two groups the order is random, to
        spread load.  With C{prefer}, that order holds within each of three
        groups, in turn: the addresses known to carry one of those markets,
        those whose markets are not known, and those known to carry none.

        :param exclude_node_ids: node ids we are already connected to.
        :param exclude_endpoints: ``(host, port)`` pairs already connected or
            being dialled.
        :param prefer: markets whose carriers come first.
        """
        excluded_node_ids = set(exclude_node_ids)
        excluded_endpoints = {_normalize_endpoint(endpoint) for endpoint in exclude_endpoints}
        succeeded: list[AddressEntry] = []
        operator: list[AddressEntry] = []
        rest: list[AddressEntry] = []
        for entry in self._entries.values():
            if self.policy.next_attempt_at(entry) > now or entry.suspended_until > now:
                continue
            if entry.node_id is not None and entry.node_id in excluded_node_ids:
                continue
            if entry.key in excluded_endpoints:
                continue
            if entry.last_success is not None:
                succeeded.append(entry)
            elif entry.source in OPERATOR_SOURCES:
                operator.append(entry)
            else:
                rest.append(entry)
        succeeded.sort(key=lambda e: e.last_success or 0.0, reverse=True)
        self._rng.shuffle(operator)
        self._rng.shuffle(rest)
        ordered = succeeded + operator + rest
        if prefer:
            rank = {True: 0, None: 1, False: 2}
            ordered.sort(key=lambda entry: rank[entry.carries(prefer)])  # stable
        return _copies(ordered)

    def sample(
        self,
        count: int,
        now: float,
        *,
        exclude_node_ids: Collection[str] = (),
    ) -> list[AddressEntry]:
        """
        Up to C{count} random addresses worth sharing, for a ``getaddr`` answer.

        Only shareable addresses are chosen (:meth:`AddressEntry.shareable`:
        reached within :data:`SHARE_WINDOW` and not failed since), whatever
        their source: an address this node never reached is never passed on.
        IPv4 and IPv6 addresses are mixed fairly: each family gets up to
        half of the answer (host names count as IPv4), and what one cannot
        fill goes to the other.

        :param exclude_node_ids: node ids not to share (such as the asker's).
        :return: copies of the chosen entries.
        """
        if count <= 0:
            return []
        excluded_node_ids = set(exclude_node_ids)
        eligible = [
            entry
            for entry in self._entries.values()
            if entry.shareable(now)
            and not (entry.node_id is not None and entry.node_id in excluded_node_ids)
        ]
        families: tuple[list[AddressEntry], list[AddressEntry]] = ([], [])
        for entry in eligible:
            families[":" in entry.host].append(entry)
        for family in families:
            self._rng.shuffle(family)
        ipv4, ipv6 = families
        half = count // 2
        take6 = min(len(ipv6), max(half, count - len(ipv4)))
        chosen = ipv6[:take6] + ipv4[: count - take6]
        self._rng.shuffle(chosen)
        return _copies(chosen)


def _copies(entries: Iterable[AddressEntry]) -> list[AddressEntry]:
    return [dataclasses.replace(entry) for entry in entries]


def _join_markets(markets: frozenset[str]) -> str:
    """C{markets} as the ``markets`` column keeps them: sorted, comma-joined."""
    return ",".join(sorted(markets))


def _split_markets(text: str) -> frozenset[str]:
    """The markets of a ``markets`` column ('' for none known)."""
    return frozenset(market for market in text.split(",") if market)


def _normalize_endpoint(endpoint: tuple[str, int]) -> tuple[str, int]:
    host, port = endpoint
    try:
        return (normalize_host(host), port)
    except ValueError:
        return (host, port)
