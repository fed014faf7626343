"""Time-limited bans of remote IP addresses, persisted in the node's database.

Data path: a peer's misbehaviour score reaches the threshold
(:class:`~bitfitech.peer.misbehaviour.ScoreBoard`, kept by the
:class:`~bitfitech.peer.hub.PeerHub`) -> :meth:`BanList.add` -> the ``bans``
table (created by :mod:`bitfitech.storage`).  The hub asks
:meth:`BanList.get` before it builds an inbound link, the dialer before it
dials, and the API lists and lifts bans (``GET /peers/banned``, ``DELETE
/peers/banned/{address}``).

A ban is keyed by the canonical text of an IP address (:func:`ban_address`:
IPv4-mapped IPv6 addresses count as their IPv4 address).  The list keeps an
in-memory mirror for reads and writes every change through; expired bans
are dropped when they are met, and when the list is loaded.  It is pure
apart from that: time is passed in as ``now``.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

from ..interfaces import unix_ms
from ..storage import WriteThrough

#: most bans kept; past it the ban that ends soonest is dropped
MAX_BANS = 10_000

_COLUMNS = ("address", "node_id", "reason", "banned_at", "until")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM bans"
_UPSERT = (
    f"INSERT INTO bans ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (address) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in _COLUMNS[1:])
)
_DELETE = "DELETE FROM bans WHERE address = ?"
#: longest reason stored (a reason may quote a peer's bytes)
_MAX_REASON = 200


def ban_address(host: str) -> str:
    """
    The canonical text of an IP address, as bans are keyed.

    Brackets around an IPv6 literal are dropped; an IPv4-mapped IPv6
    address (``::ffff:192.0.2.1``, as a dual-stack listener sees IPv4
    peers) becomes its IPv4 address.

    :raises ValueError: if C{host} is not an IP literal (bans are of
        addresses, never of host names).
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"not an IP address: {host[:80]!r}") from None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip.scope_id is not None:
            ip = ipaddress.IPv6Address(text.split("%", 1)[0])
    return str(ip)


@dataclass(frozen=True)
class Ban:
    """
    One banned address.

    :ivar address: the canonical IP address (:func:`ban_address`).
    :ivar node_id: the node id the peer claimed when it was banned, if any.
    :ivar reason: the misbehaviour that crossed the threshold.
    :ivar banned_at: when the ban began (unix seconds).
    :ivar until: when it ends (unix seconds).
    """

    address: str
    node_id: str | None
    reason: str
    banned_at: float
    until: float

    def row(self) -> dict[str, Any]:
        """The JSON-ready ``GET /peers/banned`` row (times in unix ms, as the API's)."""
        return {**asdict(self), "banned_at": unix_ms(self.banned_at), "until": unix_ms(self.until)}


class BanList:
    """
    The bounded set of banned addresses, written through to the ``bans``
    table once :meth:`load` has given it a database (before, kept in memory
    only).
    """

    def __init__(self, *, max_bans: int = MAX_BANS) -> None:
        """
        :param max_bans: how many bans to keep.
        """
        self._table = WriteThrough("the ban list")
        self._max_bans = max_bans
        self._bans: dict[str, Ban] = {}

    def load(self, connection: sqlite3.Connection | None, now: float) -> None:
        """
        Replace the in-memory mirror with the unexpired rows of C{connection}'s
        ``bans`` table (deleting the rest), and write every change through to
        it from now on (the node calls this at start, once its database is
        open).

        :param connection: the database, or ``None`` to keep the list in
            memory only (it is emptied).
        """
        self._table.connection = connection
        self._bans.clear()
        if connection is None:
            return
        self._table.execute("DELETE FROM bans WHERE until <= ?", (now,))
        for row in connection.execute(_SELECT + " ORDER BY banned_at"):
            ban = Ban(*row)
            self._bans[ban.address] = ban

    def __len__(self) -> int:
        return len(self._bans)

    def get(self, address: str, now: float) -> Ban | None:
        """
        The ban in force on C{address} at C{now}, or ``None`` (an expired
        one is deleted).  C{address} need not be canonical; a host name is
        never banned.
        """
        try:
            key = ban_address(address)
        except ValueError:
            return None
        ban = self._bans.get(key)
        if ban is not None and ban.until <= now:
            self._remove(key)
            return None
        return ban

    def add(
        self, address: str, *, reason: str, now: float, until: float, node_id: str | None = None
    ) -> Ban:
        """
        Ban C{address} from C{now} to C{until}, replacing any ban on it.

        :raises ValueError: if C{address} is not an IP address.
        """
        ban = Ban(ban_address(address), node_id, reason[:_MAX_REASON], now, until)
        self._bans.pop(ban.address, None)
        self._bans[ban.address] = ban
        self._table.execute(_UPSERT, tuple(getattr(ban, c) for c in _COLUMNS))
        while len(self._bans) > self._max_bans:
            self._remove(min(self._bans.values(), key=lambda b: b.until).address)
        return ban

    def remove(self, address: str) -> Ban | None:
        """
        Lift the ban on C{address}.

        :return: the ban lifted, or ``None`` if there was none.
        :raises ValueError: if C{address} is not an IP address.
        """
        key = ban_address(address)
        ban = self._bans.get(key)
        if ban is not None:
            self._remove(key)
        return ban

    def _remove(self, key: str) -> None:
        del self._bans[key]
        self._table.execute(_DELETE, (key,))

    def active(self, now: float) -> list[Ban]:
        """The bans in force at C{now}, newest first (expired ones are deleted)."""
        self.prune(now)
        return sorted(self._bans.values(), key=lambda b: (b.banned_at, b.address), reverse=True)

    def prune(self, now: float) -> int:
        """Delete the bans that ended by C{now}; return how many."""
        expired = [ban.address for ban in self._bans.values() if ban.until <= now]
        for key in expired:
            self._remove(key)
        return len(expired)
