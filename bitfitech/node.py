"""The one wiring diagram: a node's service tree, built in data-path order.

:func:`build_node` turns a :class:`~bitfitech.config.NodeConfig` into a
:class:`Node` (a ``MultiService``) whose children start in this order and
stop in reverse:

1. ``storage``: the data directory, SQLite database and node key;
2. ``market``: the event journal, the ledger and the book;
3. ``peers``: the P2P listener (TLS bound to the node key, unless
   ``--insecure-plain-tcp``), the hub of live links, the address book,
   the dialer, and the gossip of events between peers;
4. ``mdns`` and ``dht``: discovery, which hands the addresses it finds to
   the address book (each can be switched off);
5. ``api``: the HTTP API on ``api_host:api_port``.

Building opens nothing: sockets, files and timers open in ``startService``.
This module and :mod:`bitfitech.tap` are the only ones that know every part.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Sequence
from typing import Any, cast

from cryptography import x509
from prometheus_client import CollectorRegistry
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    FirstError,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorTCP,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from . import USER_AGENT, __version__
from .address import AddressError, PeerAddress, format_hostport, is_ip_literal, parse_address
from .api.metrics import node_registry
from .config import NodeConfig
from .discovery import PeerFound
from .discovery.kademlia.ids import network_info_hash
from .discovery.kademlia.service import DHTService
from .discovery.mdns import MDNSError, MDNSService
from .gossip import Gossip, ThreadedVerifier
from .identity import IdentityError
from .interfaces import BatchRejected, INodeControl, ServiceUnavailable
from .logs import logger, set_log_level
from .market.events import Event
from .market.journal import ThreadedSyncer
from .market.service import MarketChange, MarketService, check_order
from .peer.addrbook import AddressBook
from .peer.bans import BanList
from .peer.dialer import Dialer
from .peer.hub import PeerHub
from .peer.protocol import LocalNode, PeerProtocol
from .peer.tls import (
    CATrust,
    NodeTLS,
    TLSFileError,
    TLSLink,
    TLSLinkFactory,
    load_certificate_chain,
)
from .storage import Storage, StorageError, StorageService
from .wire.messages import PROTOCOL_VERSION

log = logger(__name__)


class StartupError(Exception):
    """The node cannot start (a busy port, an unusable data directory)."""


def listen_now(
    endpoint: IStreamServerEndpoint, factory: IProtocolFactory, what: str
) -> IListeningPort:
    """
    Listen on C{endpoint} and return the port, raising at once if that fails
    (so a busy port aborts start-up instead of being logged and ignored).

    :param what: names the listener in the error (``"peers on 0.0.0.0:3000"``).
    :raises StartupError: when the endpoint cannot listen.
    """
    outcome: list[IListeningPort | Failure] = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome:
        raise StartupError(f"cannot listen for {what}: listening did not complete at once")
    result = outcome[0]
    if isinstance(result, Failure):
        reason = result.value
        if isinstance(reason, CannotListenError) and reason.socketError is not None:
            detail = str(reason.socketError.args[-1]) if reason.socketError.args else ""
            raise StartupError(f"cannot listen for {what}: {detail or reason.socketError}")
        raise StartupError(f"cannot listen for {what}: {result.getErrorMessage()}")
    return result


def tcp_server_endpoint(reactor: IReactorTCP, host: str, port: int) -> IStreamServerEndpoint:
    """A TCP server endpoint on C{host} (IPv4 or IPv6 literal) and C{port}."""
    if ":" in host:
        return TCP6ServerEndpoint(reactor, port, interface=host)
    return TCP4ServerEndpoint(reactor, port, interface=host)


class _Listener(Service):
    """A service that owns one listening port, opened at start, closed at stop."""

    def __init__(self) -> None:
        self.port: IListeningPort | None = None

    @property
    def listen_port(self) -> int:
        """The port number actually listened on (useful with port 0), or 0."""
        return self.port.getHost().port if self.port is not None else 0  # type: ignore[attr-defined]

    def _stop_listening(self) -> Deferred[Any] | None:
        if self.port is None:
            return None
        port, self.port = self.port, None
        return Deferred.fromCoroutine(_await(port.stopListening()))


def _host_of(addr: IAddress | None) -> str | None:
    """The IP address of a connection's remote end, if it has one."""
    host = getattr(addr, "host", None)
    return host if isinstance(host, str) else None


class _InboundFactory(Factory):
    """
    Builds inbound links through the hub, which refuses banned addresses
    and connections past the limits (before any TLS work).
    """

    noisy = False

    def __init__(self, peers: PeerService) -> None:
        self.peers = peers

    def buildProtocol(self, addr: IAddress) -> PeerProtocol | None:  # type: ignore[override]
        if not self.peers.running:
            return None
        return self.peers.hub.build_link("inbound", host=_host_of(addr))


class _OutboundFactory(Factory):
    """Builds the link for one dial."""

    noisy = False

    def __init__(self, hub: PeerHub, dialed: PeerAddress) -> None:
        self.hub = hub
        self.dialed = dialed

    def buildProtocol(self, addr: IAddress) -> PeerProtocol | None:  # type: ignore[override]
        return self.hub.build_link("outbound", dialed=self.dialed, host=_host_of(addr))


class PeerService(_Listener):
    """
    The peer layer of a node: listener, hub, address book, ban list and dialer.

    Built from the config and the storage it reads from at start.
    """

    name = "peers"

    def __init__(
        self, config: NodeConfig, storage: Storage, reactor: Any, gossip: Gossip | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.storage = storage
        self.reactor = reactor
        self.gossip = gossip
        self._hub: PeerHub | None = None
        self._dialer: Dialer | None = None
        self.addrbook: AddressBook | None = None
        self.started_at: float | None = None
        self.tls: NodeTLS | None = None
        self.ca_trust: CATrust | None = None
        self._ca_named: frozenset[tuple[str, int]] = frozenset()

    @property
    def hub(self) -> PeerHub:
        """The live-link registry (only while running)."""
        if self._hub is None:
            raise RuntimeError("the peer service is not running")
        return self._hub

    @property
    def dialer(self) -> Dialer:
        """The outbound dialer (only while running)."""
        if self._dialer is None:
            raise RuntimeError("the peer service is not running")
        return self._dialer

    def startService(self) -> None:
        """Listen, then wire hub, address book and dialer and start dialling."""
        config = self.config
        clock = cast(IReactorTime, self.reactor)
        self.addrbook = AddressBook(self.storage.connection)
        self.addrbook.load()
        bans = BanList(self.storage.connection)
        bans.load(clock.seconds())
        if len(bans):
            log.info("{count} IP addresses are banned", count=len(bans))
        if config.plain_tcp:
            self.tls = None
            log.warn(
                "Peer links run over plain TCP (--insecure-plain-tcp): they are neither "
                "encrypted nor authenticated, and this node links only with other plain nodes"
            )
        else:
            self._load_tls(clock.seconds())
        endpoint = tcp_server_endpoint(self.reactor, config.host, config.port)
        self.port = listen_now(
            endpoint, self._with_tls(_InboundFactory(self), client=False),
            f"peers on {format_hostport(config.host, config.port)}",
        )  # fmt: skip
        local = LocalNode(
            network=config.network,
            pair=config.pair,
            node_id=self.storage.identity.node_id,
            listen_port=self.listen_port,
            user_agent=USER_AGENT,
            tls=self.tls is not None,
        )
        rng = random.SystemRandom()
        self._hub = PeerHub(
            local, self.addrbook, clock, max_peers=config.max_peers,
            max_inbound=config.max_inbound, timing=config.timing, rng=rng,
            max_inbound_per_ip=config.max_inbound_per_ip,
            max_handshakes_per_ip=config.max_handshakes_per_ip,
            bans=bans, ban_duration=config.ban_duration,
        )  # fmt: skip
        if self.gossip is not None:
            self._hub.gossip = self.gossip
            self.gossip.start()
        self._dialer = Dialer(
            self._hub, self.addrbook, self._connect, clock, target=config.outbound,
            bootstrap=config.bootstrap, interval=config.dial_interval,
        )  # fmt: skip
        self.started_at = clock.seconds()
        super().startService()
        self._dialer.startService()
        log.info(
            "Node {node_id} listening for peers on {where} over {transport} "
            "(network {network}, pair {pair})",
            node_id=local.node_id, where=format_hostport(config.host, self.listen_port),
            transport="TLS" if self.tls is not None else "plain TCP",
            network=config.network, pair=config.pair,
        )  # fmt: skip

    def stopService(self) -> Deferred[Any]:
        """Stop dialling, stop listening, close every link and wait for them to go."""
        super().stopService()
        waits: list[Deferred[Any]] = []
        if self._dialer is not None:
            self._dialer.stopService()
        if self.gossip is not None:
            self.gossip.stop()
        stopped = self._stop_listening()
        if stopped is not None:
            waits.append(stopped)
        if self._hub is not None:
            links = list(self._hub.links.values()) + list(self._hub.pending)
            for link in links:
                waits.append(link.when_lost())
            self._hub.close_all()
        return DeferredList(waits, consumeErrors=True)

    def learn(self, host: str, port: int, node_id: str | None, *, source: str) -> bool:
        """
        Put an address a discovery service found in the address book, and
        have the dialer look at it soon if it is new.  This node's own
        address and invalid ones are skipped.

        :param source: ``mdns`` or ``dht``.
        :return: ``True`` if the address was new.
        """
        if not self.running or self._hub is None:
            return False
        if port == self.listen_port and host in (self.config.host, "127.0.0.1", "::1"):
            return False
        new = self._hub.learn(PeerAddress(host, port, node_id), source)
        if new:
            log.debug("Learned {where} from {source}", where=format_hostport(host, port),
                      source=source)  # fmt: skip
            self.dialer.kick()
        return new

    def found_by(self, source: str) -> PeerFound:
        """The callback a discovery service hands addresses to (see :meth:`learn`)."""

        def found(host: str, port: int, node_id: str | None) -> None:
            self.learn(host, port, node_id, source=source)

        return found

    def wants_peers(self) -> bool:
        """Whether the node has fewer outbound links than its target."""
        return self._hub is not None and self._hub.ready_count("outbound") < self.config.outbound

    def _load_tls(self, now: float) -> None:
        """
        Make the node's TLS settings: its certificate (``--certificate``, else
        self-signed) and the CA trust of bootstrap host names (``--ca-bundle``).

        :raises StartupError: naming a file that cannot be used.
        """
        config, identity = self.config, self.storage.identity
        chain: list[x509.Certificate] = []
        try:
            if config.certificate:
                chain = load_certificate_chain(config.certificate, identity)
            self.ca_trust = CATrust.from_file(config.ca_bundle) if config.ca_bundle else None
        except TLSFileError as e:
            raise StartupError(str(e)) from None
        self.tls = NodeTLS(identity, now, chain)
        if self.ca_trust is None:
            return
        named = [a.endpoint for a in config.bootstrap if not is_ip_literal(a.host)]
        self._ca_named = frozenset(named)
        if not named:
            log.warn("--ca-bundle applies to no bootstrap address: none is given by host name")
        else:
            log.info("Bootstrap hosts {hosts} must present a certificate from {path} naming them",
                     hosts=", ".join(format_hostport(*e) for e in named),
                     path=config.ca_bundle)  # fmt: skip

    def _with_tls(
        self, factory: Factory, *, client: bool, address: PeerAddress | None = None
    ) -> IProtocolFactory:
        """
        C{factory} wrapped in this node's TLS, or as it is on a plain node.

        :param address: the address dialled; a bootstrap host name under
            ``--ca-bundle`` gets the CA-checking settings.
        """
        if self.tls is None:
            return factory
        if address is not None and self.ca_trust is not None and address.endpoint in self._ca_named:
            verifying = self.tls.for_named_host(address.host, self.ca_trust)
            return TLSLinkFactory(verifying, client, factory, clock=self.reactor)
        return TLSLinkFactory(self.tls, client, factory, clock=self.reactor)

    def _connect(self, address: PeerAddress) -> Deferred[PeerProtocol]:
        endpoint = HostnameEndpoint(
            self.reactor, address.host, address.port, timeout=self.config.connect_timeout
        )
        d: Deferred[Any] = endpoint.connect(
            self._with_tls(_OutboundFactory(self.hub, address), client=True, address=address)
        )
        if self.tls is not None:
            d.addCallback(_wrapped_protocol)
        return cast("Deferred[PeerProtocol]", d)


def _wrapped_protocol(tls_link: TLSLink) -> PeerProtocol:
    """The peer link inside the TLS layer of a connection."""
    return cast(PeerProtocol, tls_link.wrappedProtocol)


class DiscoveryService(Service):
    """
    Runs one discovery service, built when the node starts: it needs the
    node id (from storage) and the P2P port (from the peer listener).

    A discovery service that cannot start is logged and left off when it
    is optional (mDNS: another program may hold the port without sharing
    it), or stops the node's start when the user's settings are at fault
    (the DHT's UDP port is busy).

    :ivar service: the running service, or ``None``.
    """

    def __init__(
        self,
        name: str,
        build: Callable[[], Any],
        *,
        required: bool,
        what: str,
    ) -> None:
        """
        :param name: ``mdns`` or ``dht``.
        :param build: makes the service (called in ``startService``).
        :param required: whether failing to start stops the node.
        :param what: names it in messages (``"the DHT on UDP 0.0.0.0:3000"``).
        """
        self.name = name
        self._build = build
        self._required = required
        self._what = what
        self.service: Any = None

    def startService(self) -> None:
        """Build the service and start it."""
        service = self._build()
        try:
            service.startService()
        except (MDNSError, CannotListenError, OSError) as e:
            if self._required:
                raise StartupError(f"cannot start {self._what}: {e}") from None
            log.warn("{what} is off: {error}", what=self._what, error=str(e))
        else:
            self.service = service
        super().startService()

    def stopService(self) -> Deferred[Any] | None:
        """Stop the service, if it runs."""
        super().stopService()
        service, self.service = self.service, None
        if service is None:
            return None
        stopped: Deferred[Any] = maybeDeferred(service.stopService)
        return stopped

    def status(self) -> dict[str, Any] | None:
        """The service's status, or ``None`` when it does not run."""
        return None if self.service is None else dict(self.service.status())


def dht_bind_host(host: str) -> str:
    """
    The IPv4 address the DHT binds to, given the P2P bind address: the
    same when it is IPv4, else loopback for an IPv6 loopback and every
    interface otherwise (BEP 5 is IPv4).
    """
    if ":" not in host:
        return host
    return "127.0.0.1" if ipaddress.ip_address(host).is_loopback else "0.0.0.0"


async def _await(value: Any) -> Any:
    """Await C{value} if it is a Deferred (stopListening may return None)."""
    if isinstance(value, Deferred):
        return await value
    return value


class ApiService(_Listener):
    """The HTTP API listener."""

    name = "api"

    def __init__(
        self,
        config: NodeConfig,
        control: INodeControl,
        reactor: Any,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """:param registry: the node's metrics, where the site observes request latency."""
        super().__init__()
        self.config = config
        self.control = control
        self.reactor = reactor
        self.registry = registry
        self.token: str | None = None
        self.root: Any = None

    def startService(self) -> None:
        """
        Listen for HTTP on the API address.

        :raises StartupError: for a non-loopback address without a token
            (``--api-token`` or the data directory's ``api.token``).
        """
        from .api.app import site_root
        from .api.site import ApiSite
        from .api.token import TokenError, api_token

        try:
            self.token = api_token(self.config)
        except TokenError as e:
            raise StartupError(str(e)) from None
        self.root = site_root(self.control, clock=self.reactor, token=self.token)
        site = ApiSite(self.root, reactor=self.reactor, registry=self.registry)
        where = format_hostport(self.config.api_host, self.config.api_port)
        self.port = listen_now(
            tcp_server_endpoint(self.reactor, self.config.api_host, self.config.api_port),
            site,
            f"the HTTP API on {where}",
        )
        super().startService()
        log.info("HTTP API on http://{where}/", where=format_hostport(
            self.config.api_host, self.listen_port))  # fmt: skip

    def stopService(self) -> Deferred[Any] | None:
        """End the live streams and stop listening."""
        super().stopService()
        if self.root is not None:
            self.root.feed.close_all()
        return self._stop_listening()


@implementer(INodeControl)
class NodeControl:
    """What the API may see and do, over the node's parts."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._link_observers: list[Callable[[str, dict[str, Any] | None], None]] = []
        self._watched_hub: PeerHub | None = None
        self._known_links: dict[str, tuple[str | None, str]] = {}

    def status(self) -> dict[str, Any]:
        """``GET /status``."""
        node = self.node
        peers = node.peers
        hub = peers.hub
        now = node.clock.seconds()
        return {
            "node_id": node.storage.identity.node_id,
            "network": node.config.network,
            "pair": node.config.pair,
            "version": __version__,
            "user_agent": USER_AGENT,
            "p2p": {
                "host": node.config.host,
                "port": peers.listen_port,
                "tls": peers.tls is not None,
            },
            "peers": {
                "inbound": hub.ready_count("inbound"),
                "outbound": hub.ready_count("outbound"),
                "handshaking": len(hub.pending),
                "known_addresses": len(peers.addrbook or ()),
                "max_peers": node.config.max_peers,
                "outbound_target": node.config.outbound,
                "dials": peers.dialer.dials,
                "dial_failures": peers.dialer.dial_failures,
                "refused_inbound": hub.refused_inbound,
                "refused_banned": hub.refused_banned,
                "protocol_violations": hub.misbehaviour_count,
                "bans": len(hub.bans.active(now)),
            },
            "uptime_s": round(now - (peers.started_at or now), 3),
            "mdns": node.mdns.status() if node.mdns is not None else None,
            "dht": node.dht.status() if node.dht is not None else None,
            **node.market.status(),
            "gossip": node.gossip.summary(),
        }

    def peers(self) -> list[dict[str, Any]]:
        """``GET /peers``."""
        return self.node.peers.hub.link_rows()

    def connect(self, address: str) -> Deferred[dict[str, Any]]:
        """``POST /peers``: dial now and answer with the peer's row."""
        try:
            parsed = parse_address(address)
        except AddressError as e:
            raise ValueError(str(e)) from None
        peers = self.node.peers
        ban = peers.hub.bans.get(parsed.host, self.node.clock.seconds())
        if ban is not None:
            raise PermissionError(
                f"{ban.address} is banned until {ban.until:.0f} (unix time): {ban.reason}; "
                f"lift the ban with DELETE /peers/banned/{ban.address}"
            )
        assert peers.addrbook is not None
        peers.addrbook.add(parsed.host, parsed.port, source="manual",
                           now=self.node.clock.seconds(), node_id=parsed.node_id)  # fmt: skip
        d = peers.dialer.dial(parsed)

        def row(link: PeerProtocol) -> dict[str, Any]:
            for entry in peers.hub.link_rows():
                if entry["node_id"] == link.node_id:
                    return entry
            return {"node_id": link.node_id, "address": str(parsed)}

        return d.addCallback(row)

    def disconnect(self, node_id: str) -> bool:
        """``DELETE /peers/{node_id}``."""
        peers = self.node.peers
        rested = peers.dialer.rest_node(node_id)
        closed = peers.hub.disconnect(node_id)
        return closed or rested > 0

    def banned(self) -> list[dict[str, Any]]:
        """``GET /peers/banned``: the bans in force, newest first."""
        hub = self.node.peers.hub
        return [ban.row() for ban in hub.bans.active(self.node.clock.seconds())]

    def unban(self, address: str) -> dict[str, Any] | None:
        """``DELETE /peers/banned/{address}``: lift a ban; ``None`` if there was none."""
        ban = self.node.peers.hub.unban(address)
        return None if ban is None else ban.row()

    def _market(self) -> MarketService:
        market = self.node.market
        if not market.running:
            raise ServiceUnavailable("the market is not running")
        return market

    def submit_order(
        self, side: str, price: str | None, amount: str, order_type: str
    ) -> Deferred[dict[str, Any]]:
        """``POST /orders``."""
        market = self._market()
        return market.submit(side, price, amount, order_type).addCallback(market.order_doc)

    def submit_orders(
        self, orders: Sequence[tuple[str, str | None, str, str]]
    ) -> Deferred[list[dict[str, Any]]]:
        """``POST /orders/batch``: check every order, then submit each; all or none."""
        params = self._market().ledger.params
        for index, (side, price, amount, order_type) in enumerate(orders):
            try:
                check_order(params, side, price, amount, order_type)
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
            return market.order_doc(target)

        return market.cancel(order_id).addCallback(target_doc)

    def order(self, order_id: str) -> dict[str, Any] | None:
        """``GET /orders/{id}``: any order this node holds, its own or a peer's."""
        market = self._market()
        market.flush()
        event = market.ledger.get(order_id)
        return None if event is None or not event.is_order else market.order_doc(event)

    def orders(self, state: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """``GET /orders``: this node's own orders, newest first."""
        market = self._market()
        market.flush()
        events = market.own_orders(state, limit + offset)[offset:]
        return [market.order_doc(event) for event in events]

    def book(self, depth: int) -> dict[str, Any]:
        """``GET /book``."""
        return self._market().book_doc(depth)

    def trades(self, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """``GET /trades``: newest first."""
        market = self._market()
        market.flush()
        records = market.ledger.trades(limit + offset)[offset:]
        return [market.trade_doc(trade) for trade in records]

    def trade_count(self) -> int:
        """The total of ``GET /trades``."""
        market = self._market()
        market.flush()
        return market.ledger.trade_count

    def discovery(self) -> dict[str, Any]:
        """``GET /discovery``."""
        node = self.node
        return {
            "mdns": node.mdns.status() if node.mdns is not None else None,
            "dht": node.dht.status() if node.dht is not None else None,
        }

    def watch(self, observer: Callable[[str, dict[str, Any] | None], None]) -> Callable[[], None]:
        """Tell C{observer} of market and link changes (the API's live stream)."""
        market = self.node.market

        def changed(change: MarketChange) -> None:
            if change.book:
                observer("book", None)
            for trade in change.trades:
                observer("trade", market.trade_doc(trade))
            for event in change.orders:
                observer("order", market.order_doc(event))

        unwatch_market = market.watch(changed)
        self._watch_links()
        self._link_observers.append(observer)

        def unwatch() -> None:
            unwatch_market()
            if observer in self._link_observers:
                self._link_observers.remove(observer)

        return unwatch

    def _watch_links(self) -> None:
        """Subscribe once to the running hub; links are then diffed at each change."""
        peers = getattr(self.node, "peers", None)
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


def _first_failure(failure: Failure) -> Failure:
    """Errback of ``gatherResults``: the failure of the first Deferred that failed."""
    failure.trap(FirstError)
    assert isinstance(failure.value, FirstError)
    first: Failure = failure.value.subFailure
    return first


class Node(MultiService):
    """
    One bitfi node: the service tree with handles on its parts.

    :ivar config: what it was built from.
    :ivar storage: the data directory and database.
    :ivar market: the ledger, journal and book.
    :ivar gossip: how events travel between this node and its peers.
    :ivar peers: the peer layer.
    :ivar mdns: mDNS / DNS-SD discovery, or ``None`` with ``--no-mdns``.
    :ivar dht: the Kademlia DHT, or ``None`` with ``--no-dht``.
    :ivar api: the HTTP API service, or ``None`` with ``--no-api``.
    :ivar metrics: the node's own Prometheus registry, read at each scrape
        of ``GET /metrics`` (:mod:`bitfitech.api.metrics`).
    """

    def __init__(self, config: NodeConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.clock = cast(IReactorTime, reactor)
        self.storage = Storage(config.data_dir)
        StorageService(self.storage).setServiceParent(self)
        self.market = MarketService(
            config, self.storage, self.clock,
            syncer=lambda storage: ThreadedSyncer(reactor, storage.database_path),
        )  # fmt: skip
        self.market.setServiceParent(self)
        self.gossip = Gossip(
            self.market, self.clock, config.gossip, random.SystemRandom(),
            ThreadedVerifier(reactor),
        )  # fmt: skip
        self.market.publisher = self.gossip
        self.peers = PeerService(config, self.storage, reactor, self.gossip)
        self.peers.setServiceParent(self)
        self.mdns: DiscoveryService | None = None
        if config.mdns_enabled:
            self.mdns = DiscoveryService(
                "mdns", lambda: self._build_mdns(reactor), required=False,
                what=f"mDNS on {config.mdns_interface or 'all interfaces'}",
            )  # fmt: skip
            self.mdns.setServiceParent(self)
        self.dht: DiscoveryService | None = None
        if config.dht_enabled:
            where = format_hostport(dht_bind_host(config.host), config.dht_listen_port)
            self.dht = DiscoveryService(
                "dht", lambda: self._build_dht(reactor), required=True,
                what=f"the DHT on UDP {where}",
            )  # fmt: skip
            self.dht.setServiceParent(self)
        self.control = NodeControl(self)
        self.metrics = node_registry(self)
        self.exit_on_startup_error = False
        self.api: ApiService | None = None
        if config.api_enabled:
            self.api = ApiService(config, self.control, reactor, self.metrics)
            self.api.setServiceParent(self)

    def _build_mdns(self, reactor: Any) -> MDNSService:
        config, peers = self.config, self.peers
        return MDNSService(
            reactor, node_id=self.storage.identity.node_id, network=config.network,
            pair=config.pair, version=PROTOCOL_VERSION, p2p_port=lambda: peers.listen_port,
            found=peers.found_by("mdns"),
            interface=config.mdns_interface, rng=random.SystemRandom(), port=config.mdns_port,
        )  # fmt: skip

    def _build_dht(self, reactor: Any) -> DHTService:
        config, peers = self.config, self.peers
        return DHTService(
            reactor, info_hash=network_info_hash(config.network, config.pair),
            port=config.dht_listen_port, host=dht_bind_host(config.host),
            p2p_port=lambda: peers.listen_port,
            found=peers.found_by("dht"),
            wants_peers=peers.wants_peers, bootstrap=config.dht_bootstrap,
            settings=self.storage, rng=random.SystemRandom(),
        )  # fmt: skip

    def stopService(self) -> Deferred[None]:
        """
        Stop the children one after the other, in reverse order: the API
        and the peers first, then the market (which journals what is on
        its way), and the storage last, once nothing writes to it.
        """
        Service.stopService(self)
        done: Deferred[None] = succeed(None)
        for service in reversed(list(self)):
            done.addCallback(_stop_child, service)
            done.addErrback(self._stop_failed, service)
        return done

    @staticmethod
    def _stop_failed(failure: Failure, service: IService) -> None:
        log.failure("Stopping the {name} service failed", failure, name=service.name)

    def startService(self) -> None:
        """
        Apply the log level, then start the children in order.

        A child that cannot start (busy port, data directory in use, bad key
        file) stops the start: :class:`StartupError` is raised, or with
        :attr:`exit_on_startup_error` (set for twistd) the process exits
        with status 1 and one clear line instead of a traceback.
        """
        set_log_level(self.config.log_level)
        try:
            super().startService()
        except (StartupError, StorageError, IdentityError) as e:
            log.critical("bitfi cannot start: {error}", error=str(e))
            if self.exit_on_startup_error:
                raise SystemExit(f"bitfi: {e}") from None
            raise


def _stop_child(_: object, service: IService) -> Deferred[None]:
    return maybeDeferred(service.stopService)


def build_node(config: NodeConfig, reactor: IReactorCore | None = None) -> Node:
    """
    Build a node's service tree; nothing is opened until it starts.

    :param reactor: the reactor to use; the global one when ``None``.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = cast(IReactorCore, global_reactor)
    return Node(config, reactor)
