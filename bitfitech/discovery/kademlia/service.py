"""The DHT service: joins the BEP 5 DHT, finds the peers of our markets, announces ours.

One service runs one address family, its bind address's: BEP 5's IPv4
DHT, or BEP 32's IPv6 one (:mod:`~bitfitech.discovery.kademlia.dualstack`
runs one of each).

Data path: :class:`DHTService` owns one UDP port and its
:class:`~bitfitech.discovery.kademlia.protocol.DHTProtocol`; it runs
:class:`~bitfitech.discovery.kademlia.lookup.Lookup`\\ s through it and hands
every peer found under one of our markets' info-hashes
(:func:`~bitfitech.discovery.kademlia.ids.market_info_hash`), with that
market, to the node's :data:`~bitfitech.discovery.PeerFound` callback (and
so to the address book, source ``dht``).  It never dials a peer itself.

Its life:

1. **Start**: load (or draw and save) the node id, bind the UDP port.
2. **Bootstrap**: ``find_node`` of our own id to every bootstrap address
   (given ones, plus contacts saved at the last run), then a lookup of our
   own id through the nodes they name, then one refresh (a lookup of a
   random id in its range) of every bucket farther than our nearest
   contacts that is not full
   (:meth:`~bitfitech.discovery.kademlia.routing.RoutingTable.ranges_to_fill`),
   :data:`JOIN_REFRESHES` at a time: the table fills at once rather than at
   the first bucket refresh.  While the routing table stays empty,
   bootstrap again after a growing delay, so a node started before its
   bootstrap node still joins.
3. **Discover**, one market at a time: a ``get_peers`` lookup of its
   info-hash, every peer found handed on, then ``announce_peer`` of our P2P
   port to the nearest nodes that gave a token.  Each market's lookup
   repeats every ``lookup_interval``, and after ``min_lookup_gap`` when the
   node wants peers; its announce repeats every ``announce_interval``.
   Housekeeping starts at most one lookup per run, of the market most
   overdue, so the load stays one lookup per ``check_interval`` however
   many markets (with more than ``lookup_interval / check_interval``
   markets, each is looked up less often than ``lookup_interval``).
4. **Housekeeping**, every ``check_interval``: expire announced peers,
   ping a few questionable contacts (so dead ones are found out and
   dropped), refresh buckets untouched for ``refresh_interval`` (a lookup
   of a random id in their range), save good contacts every
   ``save_interval``.
   Apart from it, every ``ping_interval``, ping the one contact of the
   :data:`CHECKED_NEAREST` nearest our id least recently heard from, so
   that a dead one among those that answer lookups near us is found out
   (and left out of our answers) within minutes.
5. **Stop**: save contacts, cancel timers and every pending query, close
   the port.

There is no built-in bootstrap list: the DHT only contacts the addresses it
is given, the contacts it saved, and the nodes they lead to.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv6Address
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IResolutionReceiver
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from bitfitech.discovery import OnePeerFound, PeerFound, SettingsStore, reporting
from bitfitech.interfaces import unix_ms
from bitfitech.listening import listen_udp
from bitfitech.logs import logger

from .ids import is_id, parse_hex_id, random_id, random_id_between
from .krpc import Address, NodeInfo, Response, family_of
from .lookup import Lookup, LookupResult
from .protocol import DHTProtocol
from .routing import STALL_INITIAL, STALL_MAX, STALL_MIN, K, RoutingTable
from .store import PeerStore, RateLimiter, TokenIssuer

log = logger(__name__)

NODE_ID_SETTING = "dht.node_id"
"""Settings key of the node id (40 hex digits)."""
CONTACTS_SETTING = "dht.contacts"
"""Settings key of the saved IPv4 contacts (JSON list of ``[host, port]``)."""
CONTACTS6_SETTING = "dht.contacts6"
"""Settings key of the saved IPv6 contacts (as :data:`CONTACTS_SETTING`)."""
MAX_SAVED_CONTACTS = 64
"""Most contacts saved for the next start."""
MAX_BOOTSTRAP = 128
"""Most addresses queried in one bootstrap."""
PINGS_PER_CHECK = 8
"""Questionable contacts pinged at each housekeeping run."""
MAX_FOUND_REMEMBERED = 4096
"""Peers remembered to tell new ones from known ones (for logs and counts)."""
JOIN_REFRESHES = 3
"""Bucket refreshes a join runs at once."""
CHECKED_NEAREST = 2 * K
"""Contacts nearest our own id that :attr:`DHTTiming.ping_interval` pings go round."""


@dataclass(frozen=True)
class DHTTiming:
    """
    Timers and rates of the DHT, in seconds (tests shrink them).

    :ivar query_timeout: how long a query waits for its reply; one
        unanswered by then counts one failure against the node.
    :ivar stall_min: the least *stall timeout*: how long a lookup waits
        for a node's answer before it stops counting that query against
        its concurrency, sends another (and asks the node again), while
        the first may still be answered until ``query_timeout``.  The
        stall timeout is RFC 6298's retransmission timeout (smoothed
        round trip plus four mean deviations) of the node's answers, or
        of all nodes' for a node not yet measured, kept within
        [``stall_min``, ``stall_max``].
    :ivar stall_max: the greatest stall timeout (below ``query_timeout``,
        or queries never stall).
    :ivar stall_initial: the stall timeout before any answer was measured.
    :ivar lookup_interval: seconds between two ``get_peers`` lookups of
        one market's info-hash.
    :ivar min_lookup_gap: least seconds between two lookups of one
        market's info-hash, however much the node wants peers.
    :ivar announce_interval: seconds between two announces under one
        market's info-hash.
    :ivar check_interval: seconds between housekeeping runs (which also
        ask whether the node wants peers).
    :ivar ping_interval: seconds between two pings of the contact, of
        the :data:`CHECKED_NEAREST` nearest our own id, least recently
        heard from (or pinged), so that dead ones among them are found
        out and left out of our answers within minutes, not the 15 a
        contact stays good (libtorrent pings one node every 5 s).
    :ivar refresh_interval: a bucket untouched that long is refreshed.
    :ivar save_interval: seconds between two saves of good contacts.
    :ivar bootstrap_retry: first delay before bootstrapping again while
        the routing table is empty; it doubles up to ``bootstrap_retry_max``.
    :ivar bootstrap_retry_max: the longest delay between bootstraps.
    :ivar token_rotation: seconds between two changes of the token secret.
    :ivar peer_ttl: seconds an announced peer is kept.
    :ivar queries_per_second: queries answered per second per source IP
        (beyond the burst, the rest are dropped).
    :ivar query_burst: queries a source IP may send at once.
    """

    query_timeout: float = 2.0
    stall_min: float = STALL_MIN
    stall_max: float = STALL_MAX
    stall_initial: float = STALL_INITIAL
    lookup_interval: float = 5 * 60.0
    min_lookup_gap: float = 30.0
    announce_interval: float = 15 * 60.0
    check_interval: float = 30.0
    ping_interval: float = 5.0
    refresh_interval: float = 15 * 60.0
    save_interval: float = 10 * 60.0
    bootstrap_retry: float = 5.0
    bootstrap_retry_max: float = 5 * 60.0
    token_rotation: float = 5 * 60.0
    peer_ttl: float = 30 * 60.0
    queries_per_second: float = 50.0
    query_burst: float = 200.0


@dataclass
class _Market:
    """
    One market's info-hash and the state of its lookups and announces.

    :ivar looked_up_at: when its last lookup started (reactor seconds).
    :ivar announced_at: when our port was last announced under it.
    :ivar last_lookup: the result of its last lookup.
    :ivar peers_found: peers found under it (each address once).
    """

    info_hash: bytes
    looked_up_at: float | None = None
    announced_at: float | None = None
    last_lookup: LookupResult | None = None
    peers_found: int = 0


class DHTService(Service):
    """
    A BEP 5 DHT node that finds and announces the info-hash of each market.

    :param reactor: provides ``listenUDP`` and ``IReactorTime`` (and
        ``resolve``, used only for bootstrap host names).
    :param info_hashes: market -> the 20-byte info-hash to find and announce
        (:func:`~bitfitech.discovery.kademlia.ids.market_info_hash`), the
        first market first.
    :param info_hash: the older, one-market form of C{info_hashes}: one
        info-hash, of no named market (give one or the other).
    :param port: UDP port to bind (0: any free port).
    :param host: address to bind, an IPv4 or IPv6 literal: its family is
        the DHT's (BEP 32: IPv4 and IPv6 are two DHTs, and
        :class:`~bitfitech.discovery.kademlia.dualstack.DualStackDHT` runs
        one of each); ``::`` binds an IPv6-only socket.
    :param p2p_port: returns the TCP port peers should dial (announced).
    :param found: called with ``(host, port, None, (market,))`` for every
        peer found under a market's info-hash; built with C{info_hash},
        with ``(host, port, None)``.
    :param wants_peers: called with a market's name (``""`` built with
        C{info_hash}): whether the node would like more peers of that
        market now; its lookup then comes every ``min_lookup_gap`` instead
        of every ``lookup_interval``.
    :param bootstrap: ``(host, port)`` of DHT nodes to join through: the
        literals of our family, and host names resolved in it (the others
        are the other family's DHT's).
    :param settings: where the node id and contacts persist, if anywhere.
    :param rng: randomness for the node id and refresh targets.
    :param timing: timers and rates.
    """

    name = "dht"

    def __init__(
        self,
        reactor: Any,
        *,
        info_hashes: Mapping[str, bytes] | None = None,
        info_hash: bytes | None = None,
        port: int,
        host: str = "0.0.0.0",
        p2p_port: Callable[[], int],
        found: PeerFound | OnePeerFound,
        wants_peers: Callable[[str], bool],
        bootstrap: Sequence[tuple[str, int]] = (),
        settings: SettingsStore | None = None,
        rng: random.Random | None = None,
        timing: DHTTiming = DHTTiming(),
    ) -> None:
        if (info_hashes is None) == (info_hash is None):
            raise ValueError("give info_hashes or info_hash, not both or neither")
        hashes = dict(info_hashes) if info_hashes is not None else {"": info_hash or b""}
        if not hashes:
            raise ValueError("no info-hash to find and announce")
        for value in hashes.values():
            if not is_id(value):
                raise ValueError(f"an info-hash is 20 bytes, not {len(value)}")
        if len(set(hashes.values())) < len(hashes):
            raise ValueError("two markets with one info-hash")
        self._reactor = reactor
        self._markets = {market: _Market(value) for market, value in hashes.items()}
        self._market_of = {value: market for market, value in hashes.items()}
        self._port_number = port
        self._host = host
        family = family_of(host)
        if family is None:
            raise ValueError(f"the DHT binds an IP address, not {host!r}")
        self.family = family
        self._sibling: Callable[[bytes], tuple[NodeInfo, ...]] | None = None
        self._p2p_port = p2p_port
        self._found = reporting(found, markets=info_hashes is not None)
        self._wants_peers = wants_peers
        self._bootstrap = list(bootstrap)
        self._settings = settings
        self._rng = rng or random.Random()
        self.timing = timing
        self._node_id: bytes | None = None
        self._protocol: DHTProtocol | None = None
        # A udp.Port of the reactor (or a MemoryDatagramPort in tests).
        self._listening_port: Any = None
        self._ticker: LoopingCall | None = None
        self._pinger: LoopingCall | None = None
        self._retry: IDelayedCall | None = None
        self._retry_delay = timing.bootstrap_retry
        self._tasks: set[Deferred[None]] = set()
        self._bootstrapping = False
        self._discovering = False
        self._refreshing = False
        self._last_saved_at = 0.0
        self._contacts_unsaved = False
        self._fallback: list[Address] = []
        # Address -> the markets it was found under (bounded, oldest out).
        self._found_peers: OrderedDict[Address, set[str]] = OrderedDict()
        self._peers_found = 0
        self.last_lookup: LookupResult | None = None
        """The result of the last ``get_peers`` lookup, of any market."""

    # What the node reads.

    @property
    def info_hash(self) -> bytes:
        """The first market's info-hash."""
        return next(iter(self._markets.values())).info_hash

    @property
    def info_hashes(self) -> dict[str, bytes]:
        """Market -> its info-hash, the first market first."""
        return {market: state.info_hash for market, state in self._markets.items()}

    @property
    def announced_at(self) -> float | None:
        """When our port was last announced under any market (reactor seconds), if ever."""
        times = [s.announced_at for s in self._markets.values() if s.announced_at is not None]
        return max(times) if times else None

    @property
    def last_lookups(self) -> dict[str, LookupResult]:
        """Market -> the result of its last ``get_peers`` lookup, for those looked up."""
        return {m: s.last_lookup for m, s in self._markets.items() if s.last_lookup is not None}

    @property
    def listen_port(self) -> int:
        """The UDP port bound (useful with port 0), or 0 when not running."""
        if self._listening_port is None:
            return 0
        port: int = self._listening_port.getHost().port
        return port

    @property
    def node_id(self) -> bytes | None:
        """This node's DHT id, once started."""
        return self._node_id

    def share_node_id(self, node_id: bytes) -> None:
        """
        Run with C{node_id} instead of loading or drawing one (before the
        start): the other family's DHT's, as BEP 32 recommends.
        """
        if not is_id(node_id):
            raise ValueError(f"a node id is 20 bytes, not {len(node_id)}")
        self._node_id = node_id

    def set_sibling(self, nodes_near: Callable[[bytes], tuple[NodeInfo, ...]] | None) -> None:
        """
        Answer ``want`` of the other family with C{nodes_near} (the other
        family's DHT's :meth:`nodes_near`, set by a dual-stack DHT once
        both run), or leave that family out of answers (``None``).
        """
        self._sibling = nodes_near
        if self._protocol is not None:
            self._protocol.sibling = nodes_near

    def use_port(self, port: int) -> None:
        """Bind UDP C{port} instead of the one given (before the start)."""
        self._port_number = port

    def nodes_near(self, target: bytes) -> tuple[NodeInfo, ...]:
        """The confirmed nodes of our table nearest C{target} (none when not running)."""
        return self._protocol.nodes_near(target) if self._protocol is not None else ()

    @property
    def routing_table(self) -> RoutingTable | None:
        """The routing table, while running."""
        return self._protocol.routing if self._protocol is not None else None

    @property
    def protocol(self) -> DHTProtocol | None:
        """The KRPC protocol, while running."""
        return self._protocol

    def status(self) -> dict[str, Any]:
        """
        A summary for the API: ids in hex, family (``ipv4``, ``ipv6``),
        bind address, port, table size, announce time, peers found;
        ``info_hash`` is the first market's, ``info_hashes`` and
        ``peers_found_by_market`` go by market.
        """
        routing = self.routing_table
        return {
            "node_id": self._node_id.hex() if self._node_id is not None else None,
            "family": f"ipv{self.family}",
            "host": self._host,
            "port": self.listen_port,
            "info_hash": self.info_hash.hex(),
            "info_hashes": {m: s.info_hash.hex() for m, s in self._markets.items()},
            "routing_table_size": len(routing) if routing is not None else 0,
            "announced_at": unix_ms(self.announced_at),
            "peers_found": self._peers_found,
            "peers_found_by_market": {m: s.peers_found for m, s in self._markets.items()},
        }

    # Service.

    def startService(self) -> None:
        now = self._reactor.seconds()
        node_id = self._node_id = self._load_node_id()
        timing = self.timing
        routing = RoutingTable(
            node_id,
            now,
            stall_min=timing.stall_min,
            stall_max=timing.stall_max,
            stall_initial=timing.stall_initial,
        )
        protocol = DHTProtocol(
            self._reactor,
            node_id,
            routing,
            PeerStore(ttl=timing.peer_ttl),
            TokenIssuer(now, rotate_every=timing.token_rotation),
            rng=self._rng,
            limiter=RateLimiter(timing.queries_per_second, timing.query_burst),
            query_timeout=timing.query_timeout,
            announced=self._announced,
            family=self.family,
            sibling=self._sibling,
        )
        # Raises CannotListenError (port busy, bad interface) before we run.
        self._listening_port = listen_udp(self._reactor, self._host, self._port_number, protocol)
        self._protocol = protocol
        super().startService()
        self._retry_delay = timing.bootstrap_retry
        self._last_saved_at = now
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self._reactor
        self._ticker.start(timing.check_interval, now=False).addErrback(
            lambda f: log.failure("DHT housekeeping stopped", f)
        )
        self._pinger = LoopingCall(self._ping_nearest)
        self._pinger.clock = self._reactor
        self._pinger.start(timing.ping_interval, now=False).addErrback(
            lambda f: log.failure("DHT pings of nearest contacts stopped", f)
        )
        log.info(
            "DHT{over} started on UDP port {port}, node id {node_id}, info-hashes {info_hashes}",
            over=" over IPv6" if self.family == 6 else "",
            port=self.listen_port,
            node_id=node_id.hex(),
            info_hashes=", ".join(
                f"{market} {state.info_hash.hex()}" if market else state.info_hash.hex()
                for market, state in self._markets.items()
            ),
        )
        self._start_bootstrap()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._save_contacts()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._ticker = None
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close()
        for task in list(self._tasks):
            task.cancel()
        port, self._listening_port = self._listening_port, None
        if port is None:
            return succeed(None)
        d: Deferred[Any] = maybeDeferred(port.stopListening)
        return d.addCallback(lambda _: None)

    # Lookups (public for the node's API and benchmarks).

    def find_node(self, target: bytes) -> Deferred[LookupResult]:
        """
        Look up the nodes nearest C{target} (20 bytes).  The result tells
        the rounds and queries it took.  While not running: an empty result.
        """
        return self._lookup(target, peers=False)

    def get_peers(self, info_hash: bytes) -> Deferred[LookupResult]:
        """
        Look up the peers of C{info_hash} (20 bytes) and the nearest nodes'
        tokens.  While not running: an empty result.
        """
        return self._lookup(info_hash, peers=True)

    def discover(self, *, announce: bool = True) -> Deferred[None]:
        """
        Look up each market's info-hash now, one after the other, hand on
        the peers found and (unless C{announce} is false, or the market's
        last announce is recent) announce our port; fires when done, at
        once if a discovery is already running.
        """
        return self._spawn(self._discover(list(self._markets), announce=announce))

    def _lookup(
        self, target: bytes, *, peers: bool, seeds: Sequence[NodeInfo] = ()
    ) -> Deferred[LookupResult]:
        if not is_id(target):
            raise ValueError(f"a lookup target is 20 bytes, not {len(target)}")
        protocol = self._protocol
        if protocol is None:
            return succeed(LookupResult(target))
        routing = protocol.routing
        routing.touch(target, self._reactor.seconds())
        nodes = list(seeds) + [
            NodeInfo(c.node_id, c.host, c.port) for c in routing.closest(target, 2 * K)
        ]
        send: Callable[[NodeInfo], Deferred[Response]]
        if peers:
            send = lambda n: protocol.get_peers(n.address, target, n.node_id)  # noqa: E731
        else:
            send = lambda n: protocol.find_node(n.address, target, n.node_id)  # noqa: E731
        return Lookup(
            target,
            nodes,
            send,
            exclude=protocol.node_id,
            clock=self._reactor,
            stall_after=lambda n: routing.stall_timeout(n.node_id),
            family=self.family,
        ).run()

    # Background work.

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> Deferred[None]:
        d = Deferred.fromCoroutine(coroutine)

        def done(result: Any) -> Any:
            self._tasks.discard(d)
            if isinstance(result, Failure):
                if not result.check(CancelledError):
                    log.failure("DHT task failed", result)
                return None
            return result

        if not d.called:
            self._tasks.add(d)
        d.addBoth(done)
        return d

    def _start_bootstrap(self) -> None:
        self._retry = None
        if self.running and not self._bootstrapping:
            self._spawn(self._run_bootstrap())

    async def _run_bootstrap(self) -> None:
        self._bootstrapping = True
        try:
            await self._join()
        finally:
            self._bootstrapping = False
        protocol = self._protocol
        if not self.running or protocol is None:
            return
        if len(protocol.routing) == 0:
            log.debug(
                "DHT routing table empty: bootstrap again in {delay} s", delay=self._retry_delay
            )
            self._retry = self._reactor.callLater(self._retry_delay, self._start_bootstrap)
            self._retry_delay = min(self._retry_delay * 2, self.timing.bootstrap_retry_max)
            return
        self._retry_delay = self.timing.bootstrap_retry
        log.debug("DHT joined: {size} contacts", size=len(protocol.routing))
        if not self._discovering:
            self._spawn(self._discover(list(self._markets)[:1], announce=True))

    async def _join(self) -> None:
        addresses = await self._bootstrap_addresses()
        protocol = self._protocol
        if protocol is None:
            return
        own = protocol.node_id
        replies = await gatherResults(
            [_quietly(protocol.find_node(address, own)) for address in addresses]
        )
        seeds = [node for reply in replies if reply is not None for node in reply.nodes]
        if seeds or len(protocol.routing):
            await self._lookup(own, peers=False, seeds=seeds)
            await self._fill_table(protocol)

    async def _fill_table(self, protocol: DHTProtocol) -> None:
        """Refresh once each range a node just joined should fill, a few at a time."""
        ranges = protocol.routing.ranges_to_fill()
        if not ranges:
            return
        log.debug("DHT joined: refreshing {count} buckets", count=len(ranges))
        workers = min(JOIN_REFRESHES, len(ranges))
        await gatherResults(
            [Deferred.fromCoroutine(self._refresh_each(protocol, ranges)) for _ in range(workers)],
            consumeErrors=True,
        )

    async def _refresh_each(self, protocol: DHTProtocol, ranges: list[tuple[int, int]]) -> None:
        """Look up a random id in each of C{ranges} in turn (a list other workers share)."""
        while ranges and self._protocol is protocol:
            low, high = ranges.pop(0)
            # Other refreshes, and other nodes' queries, may have filled it.
            if protocol.routing.count_between(low, high) < protocol.routing.k:
                await self.find_node(random_id_between(self._rng, low, high))

    async def _bootstrap_addresses(self) -> list[Address]:
        given = self._bootstrap + self._saved_contacts() + self._fallback
        literal: list[Address] = []
        names: list[Address] = []
        for host, port in given:
            family = family_of(host)
            if family == self.family:
                literal.append((host, port))
            elif family is None:
                names.append((host, port))
        if names:
            resolved = await gatherResults(
                [_quietly(resolve_in(self._reactor, host, self.family)) for host, _ in names]
            )
            literal += [
                (ip, port)
                for ip, (_, port) in zip(resolved, names, strict=True)
                if ip is not None and family_of(ip) == self.family
            ]
        unique = list(dict.fromkeys(a for a in literal if 0 < a[1] < 65536))
        return unique[:MAX_BOOTSTRAP]

    async def _discover(self, markets: list[str], *, announce: bool) -> None:
        """Look up (and announce) C{markets} in turn: one discovery runs at a time."""
        if self._protocol is None or self._discovering:
            return
        self._discovering = True
        try:
            for market in markets:
                protocol = self._protocol
                if protocol is None:
                    return
                await self._discover_market(protocol, market, announce=announce)
        finally:
            self._discovering = False

    async def _discover_market(self, protocol: DHTProtocol, market: str, *, announce: bool) -> None:
        state = self._markets[market]
        state.looked_up_at = self._reactor.seconds()
        result = await self.get_peers(state.info_hash)
        if self._protocol is not protocol:
            return
        state.last_lookup = self.last_lookup = result
        log.debug(
            "DHT lookup{of}: {peers} peers, {nodes} nodes, {rounds} rounds, {queries} queries",
            of=f" of {market}" if market else "",
            peers=len(result.peers),
            nodes=len(result.closest),
            rounds=result.rounds,
            queries=result.queries,
        )
        local = protocol.store.peers(state.info_hash, self._reactor.seconds())
        self._hand_on(result.peers + local, market)
        due = (
            state.announced_at is None
            or self._reactor.seconds() - state.announced_at >= self.timing.announce_interval
        )
        if announce and due:
            await self._announce(protocol, market, result)

    async def _announce(self, protocol: DHTProtocol, market: str, result: LookupResult) -> None:
        state = self._markets[market]
        port = self._p2p_port()
        targets = result.announce_targets()
        replies = await gatherResults(
            [
                _quietly(
                    protocol.announce_peer(
                        node.address, state.info_hash, port, token, node_id=node.node_id
                    )
                )
                for node, token in targets
            ]
        )
        stored = sum(1 for reply in replies if reply is not None)
        if not stored or self._protocol is not protocol:
            log.debug("DHT announce reached no node ({count} tried)", count=len(targets))
            return
        first = state.announced_at is None
        state.announced_at = self._reactor.seconds()
        say = log.info if first else log.debug
        say(
            "DHT announced P2P port {port}{under} to {count} nodes",
            port=port,
            under=f" for {market}" if market else "",
            count=stored,
        )

    def _announced(self, info_hash: bytes, host: str, port: int) -> None:
        # A peer that announces one of our info-hashes to us is one we are looking for.
        market = self._market_of.get(info_hash)
        if market is not None:
            self._hand_on([(host, port)], market)

    def _hand_on(self, peers: list[Address], market: str) -> None:
        own = (self._host, self._p2p_port())
        state = self._markets[market]
        new = new_here = 0
        for host, port in dict.fromkeys(peers):
            if (host, port) == own:
                continue
            markets = self._found_peers.get((host, port))
            if markets is None:
                new += 1
                markets = self._found_peers[(host, port)] = set()
                if len(self._found_peers) > MAX_FOUND_REMEMBERED:
                    self._found_peers.popitem(last=False)
            else:
                self._found_peers.move_to_end((host, port))
            if market not in markets:
                markets.add(market)
                new_here += 1
            try:
                self._found(host, port, None, (market,))
            except Exception:
                log.failure("DHT peer {host}:{port} not taken", host=host, port=port)
        state.peers_found += new_here
        self._peers_found += new
        if new_here:
            log.info(
                "DHT found {new} new peers{of} ({total} in all)",
                new=new_here,
                of=f" of {market}" if market else "",
                total=self._peers_found,
            )

    def _tick(self) -> None:
        try:
            self._housekeeping()
        except Exception:
            log.failure("DHT housekeeping failed")

    def _ping_nearest(self) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        try:
            contact = protocol.routing.to_check(self._reactor.seconds(), CHECKED_NEAREST)
            if contact is not None:
                _quietly(protocol.ping(contact.address, contact.node_id))
        except Exception:
            log.failure("DHT ping of a nearest contact failed")

    def _housekeeping(self) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        now = self._reactor.seconds()
        protocol.store.expire(now)
        routing = protocol.routing
        if len(routing) == 0:
            if not self._bootstrapping and self._retry is None:
                self._start_bootstrap()
            return
        for contact in routing.to_ping(now, PINGS_PER_CHECK):
            _quietly(protocol.ping(contact.address, contact.node_id))
        if not self._discovering:
            market = self._lookup_due(now)
            if market is not None:
                self._spawn(self._discover([market], announce=True))
        if not self._refreshing:
            stale = routing.stale_buckets(now, self.timing.refresh_interval)
            if stale:
                self._spawn(self._refresh(len(stale)))
        if now - self._last_saved_at >= self.timing.save_interval:
            self._save_contacts()

    def _lookup_due(self, now: float) -> str | None:
        """
        The market whose lookup is due, or ``None``: one never looked up;
        else the most overdue past ``lookup_interval``; else the longest
        waiting past ``min_lookup_gap`` of those whose peers are wanted.
        """
        never = [market for market, state in self._markets.items() if state.looked_up_at is None]
        if never:
            return never[0]
        timing = self.timing
        for market in sorted(self._markets, key=lambda m: self._markets[m].looked_up_at or 0.0):
            since = now - (self._markets[market].looked_up_at or 0.0)
            if since >= timing.lookup_interval:
                return market
            if since < timing.min_lookup_gap:
                return None  # the others were looked up later still
            try:
                if self._wants_peers(market):
                    return market
            except Exception:
                log.failure("DHT could not ask whether the node wants peers")
                return None
        return None

    async def _refresh(self, count: int) -> None:
        self._refreshing = True
        try:
            for _ in range(count):
                protocol = self._protocol
                if protocol is None:
                    return
                now = self._reactor.seconds()
                stale = protocol.routing.stale_buckets(now, self.timing.refresh_interval)
                if not stale:
                    return
                target = protocol.routing.random_id_in(stale[0], self._rng)
                log.debug("DHT refreshing bucket of {target}", target=target.hex())
                await self.find_node(target)
        finally:
            self._refreshing = False

    # Persistence.

    def _load_node_id(self) -> bytes:
        if self._node_id is not None:
            return self._node_id
        if self._settings is not None:
            saved = self._settings.get_setting(NODE_ID_SETTING)
            node_id = parse_hex_id(saved) if saved else None
            if node_id is not None:
                return node_id
        node_id = random_id(self._rng)
        if self._settings is not None:
            self._settings.set_setting(NODE_ID_SETTING, node_id.hex())
        return node_id

    @property
    def _contacts_setting(self) -> str:
        return CONTACTS6_SETTING if self.family == 6 else CONTACTS_SETTING

    def _saved_contacts(self) -> list[Address]:
        if self._settings is None:
            return []
        text = self._settings.get_setting(self._contacts_setting)
        if not text:
            return []
        try:
            entries = json.loads(text)
        except ValueError:
            log.debug("DHT saved contacts unreadable: ignored")
            return []
        contacts: list[Address] = []
        for entry in entries if isinstance(entries, list) else []:
            if (
                isinstance(entry, list)
                and len(entry) == 2
                and isinstance(entry[0], str)
                and isinstance(entry[1], int)
                and family_of(entry[0]) == self.family
                and 0 < entry[1] < 65536
            ):
                contacts.append((entry[0], entry[1]))
        return contacts[:MAX_SAVED_CONTACTS]

    def _save_contacts(self) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        now = self._reactor.seconds()
        self._last_saved_at = now
        good = protocol.routing.good_contacts(now)[:MAX_SAVED_CONTACTS]
        if not good:
            return
        self._fallback = [c.address for c in good]
        if self._settings is None:
            return
        try:
            self._settings.set_setting(
                self._contacts_setting, json.dumps([[c.host, c.port] for c in good])
            )
        except Exception:
            # A full or read-only disk: said once, tried again at the next save.
            if not self._contacts_unsaved:
                log.failure("DHT contacts not saved (said once until a save works)")
            self._contacts_unsaved = True
        else:
            self._contacts_unsaved = False


def resolve_in(reactor: Any, name: str, family: int) -> Deferred[str | None]:
    """
    The first address of C{family} (4 or 6) of the host C{name}, or
    ``None``: IPv4 through the reactor's ``resolve``, IPv6 through its
    name resolver (``AAAA``), where the reactor has them.
    """
    if family == 4:
        resolve = getattr(reactor, "resolve", None)
        if resolve is None:
            return succeed(None)
        return maybeDeferred(resolve, name).addCallback(str)
    resolver = getattr(reactor, "nameResolver", None)
    if resolver is None:
        return succeed(None)
    first = _FirstAddress()
    resolver.resolveHostName(first, name, 0, addressTypes=[IPv6Address])
    return first.done


@implementer(IResolutionReceiver)
class _FirstAddress:
    """Takes the addresses a resolver finds for a name; C{done} fires with the first, or None."""

    def __init__(self) -> None:
        self.done: Deferred[str | None] = Deferred()
        self._found: list[str] = []

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self._found.append(str(address.host))

    def resolutionComplete(self) -> None:
        self.done.callback(self._found[0] if self._found else None)


def _quietly(d: Deferred[Any]) -> Deferred[Any]:
    """C{d}, with any failure turned into ``None`` (for best-effort fan-outs)."""
    return d.addErrback(lambda _: None)
