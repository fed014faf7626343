"""A node's start and stop, as a whole: the line that says it runs, and a stop bounded in time.

Not a stage of the data path but what :class:`Node` (the service tree
:func:`bitfitech.node.build_node` wires) does with all of them at once: a
child that cannot start stops the start with one clear line; once every
service has started,
:func:`announce_running` says in one line where the dashboard and the data
directory are; at stop, :func:`stop_in_order` stops the services so that
no peer or client can hold the stop, nor keep the markets from writing
their checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from .api.control import NodeControl
from .api.service import ApiService
from .config import NodeConfig
from .discovery.service import DiscoveryService
from .gossip import Gossip
from .identity import IdentityError
from .listening import StartupError
from .logs import logger, set_log_level, tagged
from .market.markets import Markets
from .market.service import MarketService
from .nat import PortMappingService
from .peer.service import PeerService
from .storage import Storage, StorageError, StorageService

log = logger(__name__)

#: seconds a stop may wait for peer links and API clients to close, from
#: SIGTERM (or ``stopService``); the markets' journals and checkpoints are
#: written before, and the storage closed after, whatever is still open
STOP_DEADLINE = 4.0


def announce_running(url: str | None, data_dir: str) -> None:
    """
    Log the one line a newcomer needs once the node runs: the dashboard's
    address (C{url}, ``None`` without the HTTP API) and the data directory.
    """
    if url is not None:
        log.info("bitfi is running: open the dashboard at {url} (data directory {data_dir})",
                 url=url, data_dir=data_dir)  # fmt: skip
    else:
        log.info("bitfi is running without its HTTP API (data directory {data_dir})",
                 data_dir=data_dir)  # fmt: skip


async def stop_in_order(
    clock: IReactorTime,
    *,
    facing: Sequence[IService],
    disk: IService,
    last: IService,
    still_open: Callable[[], dict[str, int]],
) -> None:
    """
    Stop a node's services in a bounded time, whatever peers and clients do.

    1. The services C{facing} the network are told to stop at once, and not
       waited for yet (the API drops its clients, the peer layer asks every
       link to close and aborts those still open after a grace).
    2. C{disk} (the markets) journals what is on its way and writes the
       checkpoints: it waits on the disk only, never on the network, so a
       stuck peer cannot cost the next start a full replay.
    3. The C{facing} services get what is left of :data:`STOP_DEADLINE` to
       finish; what has not is logged and left behind.
    4. C{last} (the storage) stops, once nothing writes to it.

    :param still_open: the ``links`` and API ``clients`` still open, for
        the log line of a stop that did not wait for them.
    """
    deadline = clock.seconds() + STOP_DEADLINE
    closing = DeferredList([_stopped(service) for service in facing], consumeErrors=True)
    await _stopped(disk)
    if not await _within(closing, deadline - clock.seconds(), clock):
        log.warn(
            "Stopping without waiting longer for {links} peer links and {clients} API "
            "connections to close ({seconds:g} s deadline)",
            seconds=STOP_DEADLINE, **still_open(),
        )  # fmt: skip
    await _stopped(last)


def _stopped(service: IService) -> Deferred[None]:
    """Stop C{service}; fires once it has stopped (a failure is logged, not passed on)."""
    d: Deferred[None] = maybeDeferred(service.stopService)
    d.addErrback(_stop_failed, service)
    return d


def _stop_failed(failure: Failure, service: IService) -> None:
    log.failure("Stopping the {name} service failed", failure, name=service.name)


def _within(waited: Deferred[Any], seconds: float, clock: IReactorTime) -> Deferred[bool]:
    """
    Fires with ``True`` once C{waited} fires, or with ``False`` after
    C{seconds} if it has not (C{waited} is left alone: a Deferred that
    cannot be cancelled would complain when it fires later).
    """
    result: Deferred[bool] = Deferred()

    def expired() -> None:
        if not result.called:
            result.callback(False)

    timer = clock.callLater(max(0.0, seconds), expired)

    def finished(_: object) -> None:
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(True)

    waited.addBoth(finished)
    return result


class Node(MultiService):
    """
    One bitfi node: the service tree, with handles on its parts.

    :ivar config: what it was built from.
    :ivar clock: its reactor's clock.
    :ivar storage: the data directory and database.
    :ivar markets: each market's ledger, journal and book, in order.
    :ivar gossips: each market's gossip (how its events travel between
        this node and its peers), by market, in order.
    :ivar peers: the peer layer.
    :ivar nat: the router's port mapping of the P2P port (TCP), or ``None`` when off.
    :ivar nat_udp: that of the IPv4 DHT's port (UDP), or ``None`` when
        off or without the DHT.
    :ivar mdns: mDNS / DNS-SD discovery, or ``None`` with ``--no-mdns``.
    :ivar dht: the Kademlia DHT, or ``None`` with ``--no-dht``.
    :ivar control: the API's view of the node.
    :ivar metrics: the node's own Prometheus registry, read at each scrape
        of ``GET /metrics`` (:mod:`bitfitech.api.metrics`).
    :ivar api: the HTTP API service, or ``None`` with ``--no-api``.
    :ivar exit_on_startup_error: exit the process with one clear line
        when a child cannot start (set for twistd), instead of raising.
    :ivar log_tag: the tag of every line the node logs, when one process
        runs several nodes (:mod:`bitfitech.logs`), else ``None``.
    """

    def __init__(
        self,
        config: NodeConfig,
        clock: IReactorTime,
        *,
        storage: Storage,
        markets: Markets,
        gossips: Mapping[str, Gossip],
        peers: PeerService,
        nat: PortMappingService | None,
        mdns: DiscoveryService | None,
        dht: DiscoveryService | None,
        control: NodeControl,
        metrics: CollectorRegistry,
        api: ApiService | None,
        exit_on_startup_error: bool = False,
        log_tag: str | None = None,
        nat_udp: PortMappingService | None = None,
    ) -> None:
        """Hold the parts and make the services among them children, in start order."""
        super().__init__()
        self.config = config
        self.clock = clock
        self.storage = storage
        self.markets = markets
        self.gossips = dict(gossips)
        self.peers = peers
        self.nat = nat
        self.nat_udp = nat_udp
        self.mdns = mdns
        self.dht = dht
        self.control = control
        self.metrics = metrics
        self.api = api
        self.exit_on_startup_error = exit_on_startup_error
        self.log_tag = log_tag
        self._storage_service = StorageService(storage)
        children: list[IService] = [self._storage_service, markets, peers]
        # The DHT's mapping after the DHT, whose port it maps.
        children += [s for s in (nat, mdns, dht, nat_udp, api) if s is not None]
        for child in children:
            child.setServiceParent(self)

    @property
    def market(self) -> MarketService:
        """The first market's service (``config.pair``'s)."""
        return self.markets.first

    @property
    def gossip(self) -> Gossip:
        """The first market's gossip."""
        return self.gossips[self.markets.first.pair]

    def privilegedStartService(self) -> None:
        with tagged(self.log_tag):
            super().privilegedStartService()

    def startService(self) -> None:
        """
        Apply the log level, then start the children in order.

        A child that cannot start (busy port, data directory in use, bad key
        file) stops the start: :class:`StartupError` is raised, or with
        :attr:`exit_on_startup_error` the process exits with status 1 and
        one clear line instead of a traceback.
        """
        with tagged(self.log_tag):
            set_log_level(self.config.log_level)
            try:
                super().startService()
            except (StartupError, StorageError, IdentityError) as e:
                log.critical("bitfi cannot start: {error}", error=str(e))
                if self.exit_on_startup_error:
                    raise SystemExit(f"bitfi: {e}") from None
                raise
            announce_running(self.api.url if self.api is not None else None, self.config.data_dir)

    def stopService(self) -> Deferred[None]:
        """
        Stop in a bounded time, whatever peers and clients do
        (:func:`~bitfitech.lifecycle.stop_in_order`): the API, discovery and
        the peers are told to stop at once, every market journals and writes
        its checkpoint without waiting for them, and the storage stops last.
        """
        Service.stopService(self)
        facing = [s for s in reversed(list(self)) if s not in (self.markets, self._storage_service)]
        with tagged(self.log_tag):
            return Deferred.fromCoroutine(
                stop_in_order(
                    self.clock, facing=facing, disk=self.markets, last=self._storage_service,
                    still_open=self._still_open,
                )
            )  # fmt: skip

    def _still_open(self) -> dict[str, int]:
        api = self.api
        return {
            "links": self.peers.open_links,
            "clients": api.site.open_connections if api is not None else 0,
        }
