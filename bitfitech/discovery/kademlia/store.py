"""What the DHT keeps for others: announced peers, announce tokens, query rates.

Data path: the protocol stores the peers of ``announce_peer`` queries in a
:class:`PeerStore` and answers ``get_peers`` from it; it hands out and
checks the tokens of a :class:`TokenIssuer`; and a :class:`RateLimiter`
decides, per source IP, which queries it answers at all.

* **Peers** expire ``ttl`` seconds (30 minutes) after their last announce.
  At most ``max_peers`` per info-hash (the oldest announce makes room) and
  ``max_info_hashes`` info-hashes (the one least recently announced makes
  room).
* **Tokens** follow BEP 5: a token is a hash of the querying IP and a
  secret; the secret changes every ``rotate_every`` seconds (5 minutes) and
  tokens of the current and the previous secret are accepted, so a token
  lives between 5 and 10 minutes.
* **Rates**: a token bucket per source IP (``rate`` queries per second,
  bursts of ``burst``), for at most ``max_sources`` IPs at once.

All pure: time is passed in as ``now``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
from collections import OrderedDict
from collections.abc import Callable

from ...ratelimit import BucketTable

PEER_TTL = 30 * 60.0
"""Seconds an announced peer is kept after its last announce."""
MAX_PEERS = 100
"""Peers kept per info-hash."""
MAX_INFO_HASHES = 1000
"""Info-hashes kept."""
TOKEN_ROTATION = 5 * 60.0
"""Seconds between two changes of the token secret."""
TOKEN_SIZE = 8
"""Bytes of a token."""


class PeerStore:
    """Peers announced to this node, by info-hash, with expiry and bounds."""

    def __init__(
        self,
        *,
        ttl: float = PEER_TTL,
        max_peers: int = MAX_PEERS,
        max_info_hashes: int = MAX_INFO_HASHES,
    ) -> None:
        self.ttl = ttl
        self.max_peers = max_peers
        self.max_info_hashes = max_info_hashes
        # info-hash -> (host, port) -> expiry; both least recently announced first.
        self._peers: OrderedDict[bytes, OrderedDict[tuple[str, int], float]] = OrderedDict()

    def __len__(self) -> int:
        """The number of info-hashes with peers."""
        return len(self._peers)

    def add(self, info_hash: bytes, host: str, port: int, now: float) -> None:
        """Record (or renew) that C{host}:C{port} is a peer of C{info_hash}."""
        peers = self._peers.get(info_hash)
        if peers is None:
            peers = self._peers[info_hash] = OrderedDict()
            while len(self._peers) > self.max_info_hashes:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(info_hash)
        peers[(host, port)] = now + self.ttl
        peers.move_to_end((host, port))
        while len(peers) > self.max_peers:
            peers.popitem(last=False)

    def peers(
        self,
        info_hash: bytes,
        now: float,
        limit: int | None = None,
        rng: random.Random | None = None,
        *,
        family: int | None = None,
    ) -> list[tuple[str, int]]:
        """
        The live peers of C{info_hash}, most recently announced first; with
        C{limit} and C{rng}, a random sample of C{limit} of them (so that
        nodes asking again see different peers of a crowded info-hash).

        :param family: 4 or 6 for the peers of that address family only (a
            ``get_peers`` over IPv6 is answered with IPv6 peers, BEP 32);
            ``None`` for all.
        """
        peers = self._peers.get(info_hash)
        if peers is None:
            return []
        live = [
            address
            for address, expiry in reversed(peers.items())
            if expiry > now and (family is None or (":" in address[0]) == (family == 6))
        ]
        if limit is None or len(live) <= limit:
            return live
        return rng.sample(live, limit) if rng is not None else live[:limit]

    def count(self, info_hash: bytes) -> int:
        """How many peers are held for C{info_hash}, expired ones included."""
        return len(self._peers.get(info_hash, ()))

    def expire(self, now: float) -> None:
        """Forget the peers whose last announce is older than the ttl."""
        for info_hash in list(self._peers):
            peers = self._peers[info_hash]
            for address in [a for a, expiry in peers.items() if expiry <= now]:
                del peers[address]
            if not peers:
                del self._peers[info_hash]


class TokenIssuer:
    """
    The tokens of ``get_peers`` answers, checked on ``announce_peer``.

    :param secret: makes a fresh secret (by default 16 bytes of ``os.urandom``).
    """

    def __init__(
        self,
        now: float,
        *,
        rotate_every: float = TOKEN_ROTATION,
        secret: Callable[[], bytes] | None = None,
    ) -> None:
        self.rotate_every = rotate_every
        self._new_secret = secret or (lambda: os.urandom(16))
        self._current = self._new_secret()
        self._previous = self._new_secret()
        self._since = now

    def _rotate(self, now: float) -> None:
        elapsed = now - self._since
        if elapsed < self.rotate_every:
            return
        if elapsed >= 2 * self.rotate_every:
            # Idle for two periods: no token given out then may still be valid.
            self._previous = self._new_secret()
        else:
            self._previous = self._current
        self._current = self._new_secret()
        self._since = now

    def token_for(self, host: str, now: float) -> bytes:
        """The token to give to a node querying from C{host}."""
        self._rotate(now)
        return _token(self._current, host)

    def check(self, token: bytes, host: str, now: float) -> bool:
        """Whether C{token} was given to C{host} in the last one or two periods."""
        self._rotate(now)
        return any(
            hmac.compare_digest(token, _token(secret, host))
            for secret in (self._current, self._previous)
        )


def _token(secret: bytes, host: str) -> bytes:
    return hashlib.sha1(host.encode("ascii", "replace") + secret).digest()[:TOKEN_SIZE]


class RateLimiter(BucketTable):
    """
    A token bucket per source address: C{rate} queries per second, bursts
    of C{burst} (a :class:`~bitfitech.ratelimit.BucketTable` keyed by IP).

    Only the C{max_sources} most recently active sources are tracked; a
    source forgotten for room starts again with a full bucket.
    """

    def __init__(self, rate: float, burst: float, *, max_sources: int = 4096) -> None:
        super().__init__(rate, burst, max_keys=max_sources)

    def allow(self, source: str, now: float) -> bool:
        """Take one token from C{source}'s bucket: ``False`` if it is empty."""
        return self.take(source, now)
