"""The peer layer's service: where peer links start and stop.

Data path: TCP (and TLS, :class:`~bitfitech.peer.tls.LinkSecurity`) ->
:class:`InboundFactory` or a dial of :class:`TCPConnector` ->
:class:`~bitfitech.peer.hub.PeerHub` (which builds each
:class:`~bitfitech.peer.protocol.PeerProtocol`) -> the gossip layer.

Every part of the layer (address book, ban list, hub, link security,
connector, dialer, and the gossip layer the hub reports to) is built by
:func:`bitfitech.node.build_node` and handed to :class:`PeerService`, which
only starts and stops them, in this order: load the address book and bans
from the now open database, make the TLS certificate from the now known
node key, listen, tell the hub what this node says about itself (its id
and the port it got), start the gossip layer, and start dialling.  Stopping
goes the other way and closes every link.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, cast

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory

from .. import USER_AGENT
from ..address import PeerAddress, format_hostport
from ..config import NodeConfig
from ..interfaces import IGossip
from ..listening import ListeningService, StartupError, listen_all
from ..logs import logger
from ..storage import Storage
from ..wire.framing import network_magic
from ..wire.messages import DIALBACK_SERVICE
from .addrbook import AddressBook
from .bans import BanList
from .dialer import MIN_LINKS_PER_MARKET, Dialer
from .hub import PeerHub
from .protocol import LocalNode, PeerProtocol
from .reachability import Reachability, TCPProbe
from .tls import LinkSecurity, NodeTLS, TLSFileError, TLSLink

log = logger(__name__)

#: seconds links get at stop to close cleanly (sending what is queued)
#: before they are aborted
CLOSE_GRACE = 1.5


def _host_of(addr: IAddress | None) -> str | None:
    """The IP address of a connection's remote end, if it has one."""
    host = getattr(addr, "host", None)
    return host if isinstance(host, str) else None


class InboundFactory(Factory):
    """
    Builds inbound links through the hub, which refuses banned addresses
    and connections past the limits (before any TLS work), while the peer
    service runs.
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


class TCPConnector:
    """
    Dials one peer address over TCP (and TLS), building the link through
    the hub: the dialer's :data:`~bitfitech.peer.dialer.Connector`.
    """

    def __init__(self, reactor: Any, hub: PeerHub, security: LinkSecurity, timeout: float) -> None:
        """
        :param reactor: resolves and connects (``IReactorTCP``, ``IReactorTime``).
        :param timeout: seconds a connection attempt may take.
        """
        self.reactor = reactor
        self.hub = hub
        self.security = security
        self.timeout = timeout

    def __call__(self, address: PeerAddress) -> Deferred[PeerProtocol]:
        """Connect to C{address}; fires with the link (before its handshake)."""
        endpoint = HostnameEndpoint(self.reactor, address.host, address.port, timeout=self.timeout)
        factory = self.security.wrap(
            _OutboundFactory(self.hub, address), client=True, address=address
        )
        d: Deferred[Any] = endpoint.connect(factory)
        if self.security.tls is not None:
            d.addCallback(_wrapped_protocol)
        return cast("Deferred[PeerProtocol]", d)


def _wrapped_protocol(tls_link: TLSLink) -> PeerProtocol:
    """The peer link inside the TLS layer of a connection."""
    return cast(PeerProtocol, tls_link.wrappedProtocol)


class PeerService(ListeningService):
    """
    The peer layer of a node: starts and stops its listener, hub, address
    book, ban list, link security, gossip and dialer (all built outside).

    :ivar started_at: clock time of the last start, or ``None``.
    """

    name = "peers"

    def __init__(
        self,
        config: NodeConfig,
        storage: Storage,
        reactor: Any,
        *,
        hub: PeerHub,
        addrbook: AddressBook,
        bans: BanList,
        security: LinkSecurity,
        dialer: Dialer,
        gossip: IGossip,
        witness_digest: str,
        mapped: Callable[[], tuple[str, int] | None] = lambda: None,
    ) -> None:
        """
        :param storage: the node's storage, open by the time this starts
            (the address book and bans are read from it, and the node key).
        :param reactor: listens (``IReactorTCP``) and tells the time.
        :param witness_digest: the digest of the network's witness set,
            said in every ``version`` (peers naming another are refused).
        :param mapped: the router's port mapping of the listening port,
            ``(external host, external port)``, or ``None`` (no mapping).
        """
        super().__init__()
        self.config = config
        self.storage = storage
        self.reactor = reactor
        self.clock = cast(IReactorTime, reactor)
        self.hub = hub
        self.addrbook = addrbook
        self.bans = bans
        self.security = security
        self.dialer = dialer
        self.gossip = gossip
        self.witness_digest = witness_digest
        self.started_at: float | None = None
        magic = network_magic(config.network)
        self.reachability = Reachability(
            self.clock, TCPProbe(reactor, security, magic), listen_port=lambda: self.listen_port,
            mapped=mapped,
        )  # fmt: skip
        hub.reachability = self.reachability

    @property
    def tls(self) -> NodeTLS | None:
        """The node's TLS settings while it runs over TLS, else ``None``."""
        return self.security.tls

    def startService(self) -> None:
        """
        Load what the layer persists, make the TLS certificate, listen, then
        start the hub, the gossip and the dialling.

        :raises StartupError: for an unusable certificate or CA file, or a
            port that cannot be listened on.
        """
        config = self.config
        now = self.clock.seconds()
        self.addrbook.load(self.storage.connection)
        self.bans.load(self.storage.connection, now)
        if len(self.bans):
            log.info("{count} IP addresses are banned", count=len(self.bans))
        identity = self.storage.identity
        try:
            self.security.load(identity, now)
        except TLSFileError as e:
            raise StartupError(str(e)) from None
        self.ports = listen_all(
            self.reactor, config.bind_hosts, config.port,
            self.security.wrap(InboundFactory(self), client=False), "peers",
        )  # fmt: skip
        local = LocalNode(
            network=config.network,
            pair=config.pair,
            markets=config.markets,
            node_id=identity.node_id,
            listen_port=self.listen_port,
            user_agent=USER_AGENT,
            witnesses=self.witness_digest,
            tls=self.tls is not None,
            services=(DIALBACK_SERVICE,),
        )
        self.hub.start(local)
        self.reachability.start(local.node_id)
        self.gossip.start()
        self.started_at = now
        super().startService()
        self.dialer.startService()
        log.info(
            "Node {node_id} listening for peers on {where} over {transport} "
            "(network {network}, markets {markets})",
            node_id=local.node_id, where=" and ".join(self.listening),
            transport="TLS" if self.tls is not None else "plain TCP",
            network=config.network, markets=", ".join(local.markets),
        )  # fmt: skip

    @property
    def open_links(self) -> int:
        """How many connections the layer holds: links, and connections in their handshake."""
        return len(self.hub.links) + len(self.hub.pending)

    def stopService(self) -> Deferred[Any]:
        """
        Stop dialling and listening, and ask every link to close; fires
        once every link is gone.  A link still open after
        :data:`CLOSE_GRACE` (a peer that reads nothing, or a TLS handshake
        that never completes: its close would wait for it) is aborted.
        """
        super().stopService()
        if self.dialer.running:
            self.dialer.stopService()
        self.gossip.stop()
        self.reachability.stop()
        waits: list[Deferred[Any]] = []
        stopped = self.stop_listening()
        if stopped is not None:
            waits.append(stopped)
        links = list(self.hub.links.values()) + list(self.hub.pending)
        lost = [link.when_lost() for link in links]
        self.hub.close_all()
        if any(not d.called for d in lost):
            abort = self.clock.callLater(CLOSE_GRACE, self._abort_links, links)

            def all_closed(_: object) -> None:
                if abort.active():
                    abort.cancel()

            DeferredList(lost).addCallback(all_closed)
        return DeferredList(waits + lost, consumeErrors=True)

    def _abort_links(self, links: list[PeerProtocol]) -> None:
        """Drop the links that did not close within the grace."""
        left = [link for link in links if not link.connection_lost]
        log.info("Aborting {count} peer links that did not close within {grace:g} s",
                 count=len(left), grace=CLOSE_GRACE)  # fmt: skip
        for link in left:
            link.abort()

    def learn(
        self,
        host: str,
        port: int,
        node_id: str | None,
        *,
        source: str,
        markets: Collection[str] = (),
    ) -> bool:
        """
        Put an address a discovery service found in the address book, and
        have the dialer look at it soon if it is new.  This node's own
        address and invalid ones are skipped.

        :param source: ``mdns`` or ``dht``.
        :param markets: the markets discovery says the node there carries
            (kept in the book, where the dialer prefers the carriers of its
            own; empty if not said).
        :return: ``True`` if the address was new.
        """
        if not self.running:
            return False
        if port == self.listen_port and host in (self.config.host, "127.0.0.1", "::1"):
            return False
        new = self.hub.learn(PeerAddress(host, port, node_id), source, markets=markets)
        if new:
            log.debug("Learned {where} from {source}", where=format_hostport(host, port),
                      source=source)  # fmt: skip
            self.dialer.kick()
        return new

    def found_by(self, source: str) -> Callable[[str, int, str | None, tuple[str, ...]], None]:
        """
        The callback a discovery service hands addresses to (see :meth:`learn`;
        a :data:`bitfitech.discovery.PeerFound`), with the markets it may
        say the peer carries.
        """

        def found(host: str, port: int, node_id: str | None, markets: tuple[str, ...] = ()) -> None:
            self.learn(host, port, node_id, source=source, markets=markets)

        return found

    def wants_peers(self, market: str = "") -> bool:
        """
        Whether the node has fewer ready links than its outbound target,
        counted as the dialer counts them: outbound links and links with
        witnesses, inbound ones included (:meth:`PeerHub.target_count`);
        or, given C{market}, fewer ready links sharing that market than
        the dialer keeps for each (:data:`~bitfitech.peer.dialer.MIN_LINKS_PER_MARKET`,
        at most the target).  Links in their handshake and dials under
        way, which the dialer also counts, are not links yet: they do not
        satisfy the wish.

        :param market: one of the node's markets, or ``""`` for the node.
        """
        if not self.running:
            return False
        target = self.config.outbound
        if self.hub.target_count(ready=True) < target:
            return True
        if not market:
            return False
        floor = min(MIN_LINKS_PER_MARKET, target)
        return self.hub.links_by_market().get(market, 0) < floor
