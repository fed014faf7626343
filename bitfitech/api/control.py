"""The API's view of the node: what a user may read and do, over the node's parts.

Data path: the HTTP resources and the live stream
(:class:`~bitfitech.interfaces.INodeControl`) -> :class:`NodeControl` ->
down the path: each market (orders, the book, trades; one
:class:`MarketControl` each, the first market's serving today's paths),
the peer layer (links, dials, bans), the gossip layer and discovery (their
counters).
Nothing here climbs back up: :func:`bitfitech.node.build_node` hands
:class:`NodeControl` each part it reads, and the JSON documents of orders,
trades and the book are made here, from the market's objects, by
:mod:`bitfitech.api.documents`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import USER_AGENT, __version__
from ..address import AddressError, parse_address
from ..config import NodeConfig, market_slug
from ..discovery.service import DiscoveryService
from ..gossip import Gossip
from ..interfaces import (
    BatchRejected,
    IMarketControl,
    INodeControl,
    KeyRateLimited,
    ServiceUnavailable,
    unix_ms,
)
from ..market.events import Event, EventError, parse_event, verify_event
from ..market.service import MarketChange, MarketService
from ..market.ticker import Ticker
from ..nat import PortMappingService
from ..peer.hub import PeerHub
from ..peer.protocol import PeerProtocol
from ..peer.service import PeerService
from ..ratelimit import BucketTable
from ..storage import Storage
from .documents import book_doc, event_doc, order_doc, trade_doc

Observer = Callable[[str, "dict[str, Any] | None"], None]
"""C{observer(kind, document)}: see :meth:`INodeControl.watch`."""


@implementer(IMarketControl)
class MarketControl:
    """
    What the API may see and do in one market of the node
    (``/markets/{market}/...``).

    :ivar market: the market's service.
    :ivar gossip: its gossip layer, or ``None`` (a market alone, in tests).
    """

    def __init__(
        self,
        config: NodeConfig,
        clock: IReactorTime,
        market: MarketService,
        *,
        gossip: Gossip | None = None,
        key_buckets: BucketTable | None = None,
    ) -> None:
        """
        :param key_buckets: each key's rate of ``POST /events``, shared by
            every market of the node (one author's rate is the node's); a
            table of this market's own if ``None``.
        """
        self.config = config
        self.clock = clock
        self.market = market
        self.gossip = gossip
        self._ticker = Ticker()
        self.siblings: frozenset[str] = frozenset()
        """The markets of the node this market is one of (named in errors)."""
        if key_buckets is None:
            timing = config.gossip
            key_buckets = BucketTable(timing.author_rate, timing.author_burst)
        self._key_buckets = key_buckets

    @property
    def pair(self) -> str:
        """The market's name (``BASE/QUOTE``)."""
        return self.market.pair

    def row(self) -> dict[str, Any]:
        """The market's row of ``GET /markets``."""
        market = self._market()
        market.flush()
        ledger = market.ledger
        figures = self._ticker.read(ledger, unix_ms(self.clock.seconds()))
        return {
            "market": market.pair,
            "slug": market_slug(market.pair),
            "best_bid": figures["best_bid"],
            "best_ask": figures["best_ask"],
            "last": figures["last"],
            "state_hash": ledger.state_hash(),
            "events": len(ledger),
            "trades": ledger.trade_count,
            "open_orders": len(ledger.book),
            "ordering": ledger.ordering,
            "witnesses_missing": self._witnesses_missing(),
        }

    def _witnesses_missing(self) -> list[str]:
        """The witnesses seen linked without this market (:attr:`Gossip.witnesses_missing`)."""
        return sorted(self.gossip.witnesses_missing) if self.gossip is not None else []

    def _market(self) -> MarketService:
        market = self.market
        if not market.running:
            raise ServiceUnavailable("the market is not running")
        return market

    def submit_order(
        self, side: str, price: str | None, amount: str, order_type: str
    ) -> Deferred[dict[str, Any]]:
        """``POST /orders``."""
        market = self._market()
        placed = market.submit(side, price, amount, order_type)
        return placed.addCallback(lambda event: order_doc(market, event))

    def submit_orders(
        self, orders: Sequence[tuple[str, str | None, str, str]]
    ) -> Deferred[list[dict[str, Any]]]:
        """``POST /orders/batch``: check every order, then submit each; all or none."""
        market = self._market()
        for index, (side, price, amount, order_type) in enumerate(orders):
            try:
                market.check(side, price, amount, order_type)
            except ValueError as e:
                raise BatchRejected(index, str(e)) from None
        # Submitted in one reactor turn, they are signed in order and share one group commit.
        placed = [self.submit_order(*order) for order in orders]
        return gatherResults(placed, consumeErrors=True).addErrback(_first_failure)

    def cancel_order(self, order_id: str) -> Deferred[dict[str, Any]]:
        """``DELETE /orders/{id}``."""
        market = self._market()

        def target_doc(_: Event) -> dict[str, Any]:
            target = market.ledger.get(order_id)
            assert target is not None
            return order_doc(market, target)

        return market.cancel(order_id).addCallback(target_doc)

    def order(self, order_id: str) -> dict[str, Any] | None:
        """``GET /orders/{id}``: any order this node holds, its own or a peer's."""
        market = self._market()
        market.flush()
        event = market.ledger.get(order_id)
        return None if event is None or not event.is_order else order_doc(market, event)

    def orders(self, state: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """``GET /orders``: this node's own orders, newest first."""
        market = self._market()
        market.flush()
        events = market.own_orders(state, limit + offset)[offset:]
        return [order_doc(market, event) for event in events]

    def book(self, depth: int) -> dict[str, Any]:
        """``GET /book``."""
        market = self._market()
        market.flush()
        return book_doc(market.ledger, depth)

    def submit_events(self, signed: Sequence[tuple[str, str]]) -> Deferred[list[dict[str, Any]]]:
        """``POST /events`` and ``POST /events/batch``: all or none."""
        market = self._market()
        config = self.config
        events: list[Event] = []
        for index, (text, sig) in enumerate(signed):
            try:
                event = parse_event(text, sig, config.network, market.pair)
            except EventError as e:
                raise BatchRejected(index, f"invalid_event: {e}{self._elsewhere(text)}",
                                    "events") from None  # fmt: skip
            if not verify_event(event):
                raise BatchRejected(
                    index, f"bad_signature: not key {event.author}'s signature over this event",
                    "events",
                )  # fmt: skip
            earlier = {(e.author, e.seq): e for e in events}
            try:
                market.check_signed(event, earlier)
            except ValueError as e:
                raise BatchRejected(index, str(e), "events") from None
            events.append(event)
        self._admit_keys(events)

        def documents(taken: list[Event]) -> list[dict[str, Any]]:
            return [event_doc(market, event) for event in taken]

        return market.submit_signed(events).addCallbacks(documents, _first_failure)

    def _elsewhere(self, text: str) -> str:
        """A hint naming the path for C{text}'s market if it is another this node carries."""
        fields = text.split(" ", 3)
        other = fields[2] if len(fields) > 2 else ""
        if other == self.market.pair or other not in self.siblings:
            return ""
        return f"; this node carries {other}: send it to /markets/{market_slug(other)}/events"

    def _admit_keys(self, events: Sequence[Event]) -> None:
        """
        Count C{events} against their keys' rates: the rate at which peers
        relay one author's new events (``GossipTiming.author_rate``), so
        that this node never relays more of a key than its peers take, and
        is not taken for the key's flood.

        :raises KeyRateLimited: if a key is over; nothing is counted then.
        """
        now = self.clock.seconds()
        counts: dict[str, int] = {}
        for event in events:
            counts[event.author] = counts.get(event.author, 0) + 1
        for key, count in counts.items():
            bucket = self._key_buckets.bucket(key, now)
            held = bucket.available(now)
            if held < count:
                raise KeyRateLimited(key, max(0.1, (count - held) / bucket.rate))
        for key, count in counts.items():
            self._key_buckets.take(key, now, count)

    def key(self, key: str) -> dict[str, Any]:
        """``GET /keys/{key}``."""
        market = self._market()
        market.flush()
        return {
            "key": key,
            "network": self.config.network,
            "pair": market.pair,
            "next_seq": market.next_seq_of(key),
            "lamport": market.next_lamport(),
            "events": market.ledger.next_seq(key) - 1,
        }

    def key_orders(self, key: str, state: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """``GET /keys/{key}/orders``: newest first."""
        market = self._market()
        market.flush()
        events = market.orders_of(key, state, limit + offset)[offset:]
        return [order_doc(market, event) for event in events]

    def key_trades(self, key: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """``GET /keys/{key}/trades``: newest first."""
        market = self._market()
        market.flush()
        ledger = market.ledger
        trades = {
            trade.id: trade
            for event in market.orders_of(key, "all", ledger.next_seq(key))
            for trade in ledger.trades_of(event.id)
        }
        newest = sorted(trades.values(), key=lambda trade: trade.seq, reverse=True)
        return [trade_doc(ledger, trade) for trade in newest[offset : offset + limit]]

    def ticker(self) -> dict[str, Any]:
        """``GET /ticker``."""
        market = self._market()
        market.flush()
        now = unix_ms(self.clock.seconds())
        return {"pair": market.pair, **self._ticker.read(market.ledger, now)}

    def trades(self, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """``GET /trades``: newest first."""
        market = self._market()
        market.flush()
        records = market.ledger.trades(limit + offset)[offset:]
        return [trade_doc(market.ledger, trade) for trade in records]

    def trade_count(self) -> int:
        """The total of ``GET /trades``."""
        market = self._market()
        market.flush()
        return market.ledger.trade_count

    def watch(self, observer: Observer) -> Callable[[], None]:
        """Tell C{observer} of the market's changes (its live stream)."""
        market = self.market

        def changed(change: MarketChange) -> None:
            if change.book:
                observer("book", None)
            for trade in change.trades:
                observer("trade", trade_doc(market.ledger, trade))
            for event in change.orders:
                observer("order", order_doc(market, event))

        return market.watch(changed)


@implementer(INodeControl)
class NodeControl:
    """What the API may see and do, over the node's parts."""

    def __init__(
        self,
        config: NodeConfig,
        clock: IReactorTime,
        storage: Storage,
        markets: Iterable[MarketService],
        *,
        gossips: Mapping[str, Gossip] | None = None,
        peers: PeerService | None = None,
        mdns: DiscoveryService | None = None,
        nat: PortMappingService | None = None,
        nat_udp: PortMappingService | None = None,
        dht: DiscoveryService | None = None,
        api_url: Callable[[], str | None] = lambda: None,
    ) -> None:
        """
        :param storage: the node's storage (its identity, once open).
        :param markets: the services of the markets the node carries, the
            first first (a :class:`~bitfitech.market.markets.Markets`).
        :param gossips: each market's gossip layer, by pair, whose counters
            ``/status`` shows; ``None`` for markets alone (in tests).
        :param peers: the peer layer; ``None`` for a node without one (the
            market's side alone, in tests): no links, no status.
        :param mdns: mDNS discovery, or ``None`` when it is off.
        :param nat: the router's port mapping of the P2P port, or ``None``
            when it is off.
        :param nat_udp: that of the IPv4 DHT's UDP port, or ``None``.
        :param dht: the DHT, or ``None`` when it is off.
        :param api_url: the HTTP API's address while it listens (its
            dashboard for browsers), else ``None`` (``--no-api``).
        """
        self.config = config
        self.clock = clock
        self.storage = storage
        self.peer_layer = peers
        self.mdns = mdns
        self.nat = nat
        self.nat_udp = nat_udp
        self.dht = dht
        self.api_url = api_url
        timing = config.gossip
        # One rate per key for the whole node, whatever market its events are of.
        key_buckets = BucketTable(timing.author_rate, timing.author_burst)
        gossips = gossips or {}
        self.by_name: dict[str, MarketControl] = {
            market.pair: MarketControl(config, clock, market, gossip=gossips.get(market.pair),
                                       key_buckets=key_buckets)
            for market in markets
        }  # fmt: skip
        if not self.by_name:
            raise ValueError("a node carries at least one market")
        for control in self.by_name.values():
            control.siblings = frozenset(self.by_name)
        self.first = next(iter(self.by_name.values()))
        self.gossip = self.first.gossip
        self._link_observers: list[Observer] = []
        self._watched_hub: PeerHub | None = None
        self._known_links: dict[str, tuple[str | None, str]] = {}

    def _peers(self) -> PeerService:
        peers = self.peer_layer
        if peers is None or not peers.running:
            raise ServiceUnavailable("the peer layer is not running")
        return peers

    def status(self) -> dict[str, Any]:
        """``GET /status``."""
        config = self.config
        peers = self._peers()
        hub = peers.hub
        now = self.clock.seconds()
        return {
            "node_id": self.storage.identity.node_id,
            "network": config.network,
            "pair": config.pair,
            "version": __version__,
            "user_agent": USER_AGENT,
            "p2p": {
                "host": config.host,
                "port": peers.listen_port,
                "listening": peers.listening,
                "tls": peers.tls is not None,
            },
            "peers": {
                "inbound": hub.ready_count("inbound"),
                "outbound": hub.ready_count("outbound"),
                "handshaking": len(hub.pending),
                "known_addresses": len(peers.addrbook),
                "max_peers": config.max_peers,
                "outbound_target": config.outbound,
                "dials": peers.dialer.dials,
                "dial_failures": peers.dialer.dial_failures,
                "refused_inbound": hub.refused_inbound,
                "refused_banned": hub.refused_banned,
                "protocol_violations": hub.misbehaviour_count,
                "bans": len(hub.bans.active(now)),
            },
            "reachability": {
                **peers.reachability.status(),
                "nat": self.nat.status() if self.nat is not None else None,
                "nat_udp": self.nat_udp.status() if self.nat_udp is not None else None,
            },
            "uptime_ms": round((now - (peers.started_at or now)) * 1000),
            "api": {"url": api, "dashboard": api} if (api := self.api_url()) else None,
            "data_dir": config.data_dir,
            **self.discovery(),
            **self.first.market.status(),
            "gossip": self.gossip.summary() if self.gossip is not None else {},
            "sync": self.gossip.progress() if self.gossip is not None else None,
            "markets": list(self.by_name),
            "stored_markets": self.storage.stored_markets(),
        }

    def peers(self) -> list[dict[str, Any]]:
        """``GET /peers``."""
        return self._peers().hub.link_rows()

    def connect(self, address: str) -> Deferred[dict[str, Any]]:
        """
        ``POST /peers``: dial now and answer with the peer's row.

        The address enters the address book, as ``manual`` (kept for good),
        only once the handshake succeeded.  A dial that fails fails the
        Deferred with its reason (a :class:`ConnectionError` or one of
        Twisted's connect errors: the API answers 502) and leaves nothing
        behind: the node neither redials the address nor tells peers of it.

        :raises ValueError: for an address that does not parse.
        :raises PermissionError: for a banned address.
        :raises ServiceUnavailable: if the peer layer is not running.
        """
        try:
            parsed = parse_address(address)
        except AddressError as e:
            raise ValueError(str(e)) from None
        peers = self._peers()
        ban = peers.hub.bans.get(parsed.host, self.clock.seconds())
        if ban is not None:
            raise PermissionError(
                f"{ban.address} is banned until {_utc(ban.until)}: {ban.reason}; "
                f"lift the ban with DELETE /peers/banned/{ban.address}"
            )
        d = peers.dialer.dial(parsed, manual=True)

        def row(link: PeerProtocol) -> dict[str, Any]:
            for entry in peers.hub.link_rows():
                if entry["node_id"] == link.node_id:
                    return entry
            return {"node_id": link.node_id, "address": str(parsed)}

        return d.addCallback(row)

    def disconnect(self, node_id: str) -> bool:
        """``DELETE /peers/{node_id}``."""
        peers = self._peers()
        rested = peers.dialer.rest_node(node_id)
        closed = peers.hub.disconnect(node_id)
        return closed or rested > 0

    def banned(self) -> list[dict[str, Any]]:
        """``GET /peers/banned``: the bans in force, newest first."""
        hub = self._peers().hub
        return [ban.row() for ban in hub.bans.active(self.clock.seconds())]

    def unban(self, address: str) -> dict[str, Any] | None:
        """``DELETE /peers/banned/{address}``: lift a ban; ``None`` if there was none."""
        ban = self._peers().hub.unban(address)
        return None if ban is None else ban.row()

    def discovery(self) -> dict[str, Any]:
        """``GET /discovery``."""
        return {
            "mdns": self.mdns.status() if self.mdns is not None else None,
            "dht": self.dht.status() if self.dht is not None else None,
        }

    def markets(self) -> list[dict[str, Any]]:
        """``GET /markets``: one row per market, the first first."""
        return [control.row() for control in self.by_name.values()]

    def market(self, name: str) -> MarketControl:
        """The control of market C{name}; :class:`KeyError` if the node does not carry it."""
        return self.by_name[name]

    # The market methods of today's paths: the first market's.

    def submit_order(
        self, side: str, price: str | None, amount: str, order_type: str
    ) -> Deferred[dict[str, Any]]:
        """``POST /orders``: in the first market."""
        return self.first.submit_order(side, price, amount, order_type)

    def submit_orders(
        self, orders: Sequence[tuple[str, str | None, str, str]]
    ) -> Deferred[list[dict[str, Any]]]:
        """``POST /orders/batch``: in the first market."""
        return self.first.submit_orders(orders)

    def cancel_order(self, order_id: str) -> Deferred[dict[str, Any]]:
        """``DELETE /orders/{id}``: in the first market."""
        return self.first.cancel_order(order_id)

    def order(self, order_id: str) -> dict[str, Any] | None:
        """``GET /orders/{id}``: in the first market."""
        return self.first.order(order_id)

    def orders(self, state: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """``GET /orders``: in the first market."""
        return self.first.orders(state, limit, offset)

    def book(self, depth: int) -> dict[str, Any]:
        """``GET /book``: the first market's."""
        return self.first.book(depth)

    def submit_events(self, signed: Sequence[tuple[str, str]]) -> Deferred[list[dict[str, Any]]]:
        """``POST /events``: events of the first market."""
        return self.first.submit_events(signed)

    def key(self, key: str) -> dict[str, Any]:
        """``GET /keys/{key}``: in the first market."""
        return self.first.key(key)

    def key_orders(self, key: str, state: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """``GET /keys/{key}/orders``: in the first market."""
        return self.first.key_orders(key, state, limit, offset)

    def key_trades(self, key: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """``GET /keys/{key}/trades``: in the first market."""
        return self.first.key_trades(key, limit, offset)

    def ticker(self) -> dict[str, Any]:
        """``GET /ticker``: the first market's."""
        return self.first.ticker()

    def trades(self, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """``GET /trades``: the first market's."""
        return self.first.trades(limit, offset)

    def trade_count(self) -> int:
        """The total of ``GET /trades``: the first market's."""
        return self.first.trade_count()

    def watch(self, observer: Observer) -> Callable[[], None]:
        """Tell C{observer} of the first market's and the links' changes."""
        unwatch_market = self.first.watch(observer)
        unwatch_links = self.watch_links(observer)

        def unwatch() -> None:
            unwatch_market()
            unwatch_links()

        return unwatch

    def watch_links(self, observer: Observer) -> Callable[[], None]:
        """Tell C{observer} of the links' changes (``peer`` events of the streams)."""
        self._watch_links()
        self._link_observers.append(observer)

        def unwatch() -> None:
            if observer in self._link_observers:
                self._link_observers.remove(observer)

        return unwatch

    def _watch_links(self) -> None:
        """Subscribe once to the running hub; links are then diffed at each change."""
        peers = self.peer_layer
        if peers is None or not peers.running:
            return
        if peers.hub is not self._watched_hub:
            self._watched_hub = peers.hub
            peers.hub.subscribe(self._links_changed)
        if not self._link_observers:
            self._known_links = self._link_table(peers.hub)

    @staticmethod
    def _link_table(hub: PeerHub) -> dict[str, tuple[str | None, str]]:
        return {
            node_id: (
                str(link.listen_address) if link.listen_address is not None else None,
                link.direction,
            )
            for node_id, link in hub.links.items()
        }

    def _links_changed(self) -> None:
        hub = self._watched_hub
        if hub is None or not self._link_observers:
            return
        before, after = self._known_links, self._link_table(hub)
        self._known_links = after
        events = [("left", node_id, row) for node_id, row in before.items()
                  if after.get(node_id) != row]  # fmt: skip
        events += [("joined", node_id, row) for node_id, row in after.items()
                   if before.get(node_id) != row]  # fmt: skip
        for event, node_id, (address, direction) in events:
            document = {"event": event, "node_id": node_id, "address": address,
                        "direction": direction}  # fmt: skip
            for observer in list(self._link_observers):
                observer("peer", document)


def _utc(seconds: float) -> str:
    """Clock time C{seconds} as an RFC 3339 UTC time, to the second, for messages."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_failure(failure: Failure) -> Failure:
    """Errback of ``gatherResults``: the failure of the first Deferred that failed."""
    failure.trap(FirstError)
    assert isinstance(failure.value, FirstError)
    first: Failure = failure.value.subFailure
    return first
