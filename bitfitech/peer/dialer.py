"""Keeping the outbound links: from the address book to new peer links.

Data path: address book -> :class:`Dialer` -> a connector (TLS, or plain TCP)
-> :class:`~bitfitech.peer.protocol.PeerProtocol` registered with the hub.
The dialer keeps the outbound target: it picks the best candidates the
address book offers (addresses that worked before first; failing ones wait
out their exponential backoff, and an address that failed too often in a
row rests behind its circuit breaker), dials them, and records each outcome.
An address the hub has banned is never dialled.
A refused, timed-out or unresolvable dial is logged and retried later, never
fatal.  Time comes from an injected clock.

The outcomes keep the book clean: a dial that fails too often removes an
address (:meth:`~bitfitech.peer.addrbook.AddressEntry.is_terrible`; never
a bootstrap, witness or reached manual one), an hourly prune drops the
rest, and an address reached for the first time in
:data:`~bitfitech.peer.addrbook.SHARE_WINDOW` is announced to a few peers
(:meth:`~bitfitech.peer.hub.PeerHub.announce`).  A dial the user
asked for (:meth:`Dialer.dial` with ``manual``, the API's ``POST /peers``)
keeps its address in the book, as ``manual``, only if it succeeds: one that
fails is reported to the caller and leaves nothing to redial or share.

Witnesses come first: the dialer keeps a link to every witness of the
network (but this node), whatever the outbound target.  Each tick dials
each witness that has no link (in either direction) and no dial under
way, once its address is past its backoff (the same
:class:`~bitfitech.peer.addrbook.RetryPolicy` as any address), before it
looks at the target.  The hub admits those dials past ``max_peers``, and
there is no eviction of links that could drop them.

Links to witnesses count within the target: the links that fill it are
the outbound ones and those with witnesses, whichever end dialled them
(:meth:`~bitfitech.peer.hub.PeerHub.target_count`; a witness that dialled
this node is not dialled back, so its link stands for the one the dialer
would have made), and every dial under way, a witness's included.  Other
peers are dialled only while those are below the target: with as many
witnesses as the target, or more, a node dials no one else.  Only links
that exist count, not the witnesses configured: a witness that is down
holds a place only while a dial to it is under way, and once that fails
the next tick dials another peer in its stead.  Nothing is closed to make
room: a witness linked again later comes on top of the target.

Markets: only links sharing a market with this node fill the target
(:meth:`~bitfitech.peer.hub.PeerHub.target_count`), and the candidates
known to carry one of its markets are dialled first.  An address known to
carry none is dialled at most every :data:`FEELER_INTERVAL`: such a link
is a feeler, closed by the hub once it has given us addresses.  A node of
several markets also keeps :data:`MIN_LINKS_PER_MARKET` links to each
(no more than the target): a market with fewer, dials under way to its
carriers included, gets dials to addresses known to carry it even when the
target is met, within ``max_peers``.  A node of one market dials as if
this rule did not exist: its target is that market's.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from ..address import PeerAddress, format_hostport
from ..logs import logger
from .addrbook import AddressBook, AddressEntry, RetryPolicy
from .hub import PeerHub
from .protocol import REASON_DUPLICATE, REASON_SELF, LinkClosed, PeerProtocol

log = logger(__name__)

#: dial one address, returning the connected link (before its handshake)
Connector = Callable[[PeerAddress], "Deferred[PeerProtocol]"]

#: how long a node the user disconnected is not redialled
USER_DISCONNECT_REST = 600.0

#: how a witness without a link is retried: backoff doubling up to 10 s,
#: and no circuit breaker (the network's order waits for its witnesses, and
#: a string of short partitions, each failing a few dials, would otherwise
#: rest the address for the breaker's 15 minutes)
WITNESS_RETRY = RetryPolicy(max_delay=10.0, breaker_threshold=2**31)

#: how often addresses that kept failing are pruned from the address book
PRUNE_INTERVAL = 3600.0

#: the links a node of several markets keeps to each of them, beyond the target if need be
MIN_LINKS_PER_MARKET = 2

#: least seconds between two dials to an address known to carry none of our markets
FEELER_INTERVAL = 300.0


class Dialer(Service):
    """
    Keeps C{target} outbound links open, dialling from the address book.

    :ivar pending: dials under way, by ``(host, port)``.
    :ivar pinned: node ids that addresses given as ``NODEID@host:port`` must prove.
    :ivar witnesses: the node id of each witness to keep a link to, by
        ``(host, port)`` (this node left out; filled at start).
    """

    name = "dialer"

    def __init__(
        self,
        hub: PeerHub,
        addrbook: AddressBook,
        connect: Connector,
        clock: IReactorTime,
        *,
        target: int,
        bootstrap: tuple[PeerAddress, ...] = (),
        witnesses: tuple[PeerAddress, ...] = (),
        interval: float = 1.0,
    ) -> None:
        """
        :param target: outbound links to keep, links with witnesses included
            (either direction), but all the witnesses are dialled even when
            they outnumber it.
        :param bootstrap: addresses entered in the address book at start.
        :param witnesses: the network's witnesses, each pinned to its node
            id: a link to each is kept (this node's own is skipped).
        :param interval: seconds between two checks.
        """
        self.hub = hub
        self.addrbook = addrbook
        self._connect = connect
        self.clock = clock
        self.target = target
        self.bootstrap = bootstrap
        self._witness_addresses = witnesses
        self.interval = interval
        self.pending: dict[tuple[str, int], Deferred[PeerProtocol]] = {}
        self.pinned: dict[tuple[str, int], str] = {}
        self.witnesses: dict[tuple[str, int], str] = {}
        self._waiters: dict[tuple[str, int], list[Deferred[PeerProtocol]]] = {}
        self._manual: set[tuple[str, int]] = set()
        self._loop: LoopingCall | None = None
        self._pruner: LoopingCall | None = None
        self._kick: IDelayedCall | None = None
        self.dials = 0
        self.dial_failures = 0

    def startService(self) -> None:
        """
        Enter the bootstrap and witness addresses, prune the book, dial at
        once, then check every C{interval} (and prune every
        :data:`PRUNE_INTERVAL`).
        """
        super().startService()
        now = self.clock.seconds()
        for address in self.bootstrap:
            self.addrbook.add(address.host, address.port, source="bootstrap", now=now,
                              node_id=address.node_id)  # fmt: skip
            if address.node_id:
                self.pinned[address.endpoint] = address.node_id
        own = self.hub.local.node_id
        for address in self._witness_addresses:
            if address.node_id is None or address.node_id == own:
                continue  # unpinned: refused by the config; own: this node is a witness
            self.addrbook.add(address.host, address.port, source="witness", now=now,
                              node_id=address.node_id)  # fmt: skip
            self.pinned[address.endpoint] = address.node_id
            self.witnesses[address.endpoint] = address.node_id
        self.hub.subscribe(self.kick)
        # Pruned first: what an older version kept, failing, is not dialled again.
        self._pruner = LoopingCall(self.prune)
        self._pruner.clock = self.clock
        self._pruner.start(PRUNE_INTERVAL, now=True)
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        """Stop dialling; dials under way are cancelled."""
        super().stopService()
        for loop in (self._loop, self._pruner):
            if loop is not None and loop.running:
                loop.stop()
        if self._kick is not None and self._kick.active():
            self._kick.cancel()
        self._kick = None
        for d in list(self.pending.values()):
            d.cancel()
        return None

    def kick(self) -> None:
        """Check the target soon (once, however often it is kicked before then)."""
        if not self.running or (self._kick is not None and self._kick.active()):
            return
        self._kick = self.clock.callLater(0, self._kicked)

    def _kicked(self) -> None:
        self._kick = None
        self.tick()

    def tick(self) -> None:
        """
        Dial every witness without a link, then as many other candidates as
        the outbound target is short of, counting the links with witnesses
        and every dial under way within it; then, for a node of several
        markets, carriers of each market short of :data:`MIN_LINKS_PER_MARKET`.
        """
        now = self.clock.seconds()
        connected = self.hub.connected_endpoints()
        if self.witnesses:
            self._dial_witnesses(now, connected)
        missing = self.target - self.hub.target_count() - len(self.pending)
        if self.hub.count() + len(self.pending) >= self.hub.max_peers:
            return
        markets = self.hub.local.markets
        if missing > 0:
            allowed = self._candidates(now, connected, markets)
            for entry in allowed[:missing]:
                self._start_dial(PeerAddress(entry.host, entry.port, self.pinned.get(entry.key)))
        if len(markets) > 1:
            self._dial_starved_markets(now, connected)

    def _candidates(
        self, now: float, connected: set[tuple[str, int]], markets: tuple[str, ...]
    ) -> list[AddressEntry]:
        """
        The address book's candidates (carriers of C{markets} first), less
        those linked, being dialled, witnesses, banned, or known to carry
        none of C{markets} and tried within :data:`FEELER_INTERVAL`.
        """
        exclude_ids = set(self.hub.links) | {self.hub.local.node_id}
        exclude_endpoints = connected | set(self.pending) | set(self.witnesses)
        candidates = self.addrbook.candidates(
            now, exclude_node_ids=exclude_ids, exclude_endpoints=exclude_endpoints, prefer=markets
        )
        return [
            entry
            for entry in candidates
            if not self.hub.is_banned(entry.host)
            and not (
                entry.carries(markets) is False
                and entry.last_attempt is not None
                and now - entry.last_attempt < FEELER_INTERVAL
            )
        ]

    def _dial_starved_markets(self, now: float, connected: set[tuple[str, int]]) -> None:
        """
        Dial addresses known to carry each market of ours that has fewer
        than :data:`MIN_LINKS_PER_MARKET` ready links (at most the target),
        dials under way to its carriers counted, while ``max_peers`` allows.
        """
        floor = min(MIN_LINKS_PER_MARKET, self.target)
        by_market = self.hub.links_by_market()
        for market in self.hub.local.markets:
            dialling = 0
            for host, port in self.pending:
                entry = self.addrbook.get(host, port)
                if entry is not None and entry.carries((market,)):
                    dialling += 1
            short = floor - by_market.get(market, 0) - dialling
            room = self.hub.max_peers - self.hub.count() - len(self.pending)
            if short <= 0 or room <= 0:
                continue
            carriers = [
                entry
                for entry in self._candidates(now, connected, (market,))
                if entry.carries((market,))
            ]
            for entry in carriers[: min(short, room)]:
                log.debug("Dialling {address} for {market}, which has {count} links",
                          address=format_hostport(entry.host, entry.port), market=market,
                          count=by_market.get(market, 0))  # fmt: skip
                self._start_dial(PeerAddress(entry.host, entry.port, self.pinned.get(entry.key)))

    def _dial_witnesses(self, now: float, connected: set[tuple[str, int]]) -> None:
        """
        Dial each witness not linked nor being dialled, once its backoff
        allows (:data:`WITNESS_RETRY`: at most 10 s, never the breaker's rest).
        """
        for (host, port), node_id in self.witnesses.items():
            if node_id in self.hub.links or (host, port) in self.pending:
                continue
            if (host, port) in connected or self.hub.is_banned(host):
                continue  # a link with it is in its handshake; or banned for misbehaviour
            entry = self.addrbook.get(host, port)
            if entry is None:  # forgotten meanwhile: a witness is always known
                self.addrbook.add(host, port, source="witness", now=now, node_id=node_id)
            elif WITNESS_RETRY.next_attempt_at(entry) > now:
                continue
            self._start_dial(PeerAddress(host, port, node_id))

    def dial(self, address: PeerAddress, *, manual: bool = False) -> Deferred[PeerProtocol]:
        """
        Dial C{address} now, whatever its backoff (joining a dial under way).

        :param manual: the user asked for this dial: if its handshake
            succeeds, the address is kept in the book as ``manual`` (never
            aged out); if it fails, nothing new is kept (an address already
            in the book just counts one more failure).
        :return: a new Deferred that fires with the ready link, or fails
            with the reason the dial failed (:class:`LinkClosed` at once
            for a banned address).
        """
        if self.hub.is_banned(address.host):
            return fail(LinkClosed(f"{address.host} is banned"))
        waiter: Deferred[PeerProtocol] = Deferred()
        self._waiters.setdefault(address.endpoint, []).append(waiter)
        if manual:
            self._manual.add(address.endpoint)
        if address.endpoint not in self.pending:
            self._start_dial(address)
        return waiter

    def _start_dial(self, address: PeerAddress) -> None:
        key = address.endpoint
        if address.node_id:
            self.pinned[key] = address.node_id
        self.dials += 1
        self.addrbook.record_attempt(address.host, address.port, self.clock.seconds())
        log.debug("Dialling {address}", address=str(address))
        d = self._connect(address)
        d.addCallback(lambda link: link.when_ready())
        self.pending[key] = d
        d.addBoth(self._dialed, address)

    def _dialed(self, result: PeerProtocol | Failure, address: PeerAddress) -> None:
        self.pending.pop(address.endpoint, None)
        manual = address.endpoint in self._manual
        self._manual.discard(address.endpoint)
        if self.running:  # else stopping: the dial was cancelled, nothing to learn
            # Recorded before the waiters hear: a manual address is in the
            # book, as such, by the time the API shows the new link's row.
            self._record(result, address, manual=manual)
        for waiter in self._waiters.pop(address.endpoint, []):
            waiter.errback(result) if isinstance(result, Failure) else waiter.callback(result)
        if self.running:
            self.kick()

    def _record(
        self, result: PeerProtocol | Failure, address: PeerAddress, *, manual: bool
    ) -> None:
        """Write the outcome of a dial into the address book, and log a failure."""
        now = self.clock.seconds()
        where = format_hostport(address.host, address.port)
        closed = result.value.reason if isinstance(result, Failure) and isinstance(
            result.value, LinkClosed) else None  # fmt: skip
        if not isinstance(result, Failure):
            self._reached(address, now, result.node_id, manual=manual)
            if isinstance(result, PeerProtocol):  # its version said which markets it carries
                self.addrbook.record_markets(address.host, address.port, result.markets)
        elif closed == REASON_SELF:
            # Our own address: remember it as ours so it is never dialled again.
            self.addrbook.add(address.host, address.port, source="addr", now=now,
                              node_id=self.hub.local.node_id)  # fmt: skip
            self.addrbook.record_success(address.host, address.port, now, self.hub.local.node_id)
        elif closed == REASON_DUPLICATE:
            # Already linked to that node through another connection: the
            # handshake went through, so the address works.
            self._reached(address, now, None, manual=False)
        else:
            self.dial_failures += 1
            known = (address.host, address.port) in self.addrbook
            aged_out = self.addrbook.record_failure(address.host, address.port, now)
            reason = result.getErrorMessage()
            if manual and not known:
                log.info("Dial to {address} failed, not kept in the address book (given by "
                         "hand, never reached): {reason}", address=where,
                         reason=reason)  # fmt: skip
            elif aged_out is not None and aged_out.last_success is None:
                log.info("Dial to {address} failed, address forgotten (never reached, "
                         "{failures} failures in a row; source {source}): {reason}",
                         address=where, failures=aged_out.failures, source=aged_out.source,
                         reason=reason)  # fmt: skip
            elif aged_out is not None:
                log.info("Dial to {address} failed, address forgotten ({failures} failures in "
                         "a row since it was last reached, at {last_success:.0f}; source "
                         "{source}): {reason}", address=where, failures=aged_out.failures,
                         last_success=aged_out.last_success, source=aged_out.source,
                         reason=reason)  # fmt: skip
            else:
                log.info("Dial to {address} failed: {reason}", address=where,
                         reason=reason)  # fmt: skip

    def _reached(
        self, address: PeerAddress, now: float, node_id: str | None, *, manual: bool
    ) -> None:
        """
        Record a handshake with C{address} (keeping it as ``manual`` if the
        user asked for the dial); announce the address to a few peers if it
        has just become shareable.
        """
        if manual:
            newly_shareable = self.addrbook.keep_manual(
                address.host, address.port, now=now, node_id=node_id
            )
        else:
            newly_shareable = self.addrbook.record_success(address.host, address.port, now, node_id)
        if not newly_shareable:
            return
        entry = self.addrbook.get(address.host, address.port)
        if entry is not None:
            self.hub.announce(entry.address)

    def prune(self) -> None:
        """
        Drop the addresses that failed too often, and the failing ones not
        heard of for a long time (never bootstrap, witness or reached manual ones).
        """
        dropped = self.addrbook.prune(self.clock.seconds())
        if dropped:
            log.info("Pruned {count} addresses that kept failing", count=dropped)

    def rest_node(self, node_id: str, seconds: float = USER_DISCONNECT_REST) -> int:
        """Do not dial C{node_id} for C{seconds}; returns how many addresses rest."""
        return self.addrbook.suspend(node_id, self.clock.seconds() + seconds)
