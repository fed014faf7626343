"""The DHT on both address families: one BEP 5 DHT over IPv4 and one over IPv6 (BEP 32).

Data path: as :class:`~bitfitech.discovery.kademlia.service.DHTService`,
twice: :class:`DualStackDHT` runs one per family, on the same UDP port
number, with the same node id (BEP 32 recommends it) and the same
callbacks, so peers found over either reach the address book alike.  The
two are separate networks with their own sockets, routing tables, peer
stores, lookups and announces; they meet only in answers, where a query
whose ``want`` asks for the other family's nodes is answered from the
other's table.

A host without one of the families runs the other alone, with a warning
(as the P2P listener does); any other error of either stops the start.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError

from bitfitech.interfaces import unix_ms
from bitfitech.listening import DUAL_STACK, NO_FAMILY
from bitfitech.logs import logger

from .service import DHTService

log = logger(__name__)


class DualStackDHT(Service):
    """
    One :class:`~bitfitech.discovery.kademlia.service.DHTService` per
    address family of C{hosts}, started and stopped together.

    :ivar services: the DHT of each host, in the order of C{hosts}.
    :ivar running: those that started (a family the host lacks is left out).
    """

    name = "dht"

    def __init__(
        self,
        reactor: Any,
        *,
        hosts: Sequence[str],
        port: int,
        ipv4_p2p_port: Callable[[], int] | None = None,
        **options: Any,
    ) -> None:
        """
        :param hosts: the addresses to bind, one per family at most:
            :data:`~bitfitech.listening.DUAL_STACK` for both families'
            every address (``0.0.0.0``, and ``::`` IPv6 only).
        :param port: the UDP port of both (0: the OS chooses the first's,
            and the second takes the same number if it is free).
        :param ipv4_p2p_port: the P2P port to announce over IPv4, when it
            is not ``p2p_port``'s: behind a home router, the router's port
            that forwards to ours (IPv6 has no NAT, and announces
            ``p2p_port``).
        :param options: the other arguments of
            :class:`~bitfitech.discovery.kademlia.service.DHTService`,
            given to each.
        """
        if not hosts:
            raise ValueError("the DHT needs an address to bind")
        self._hosts = tuple(hosts)
        self._port = port
        self.services = []
        for host in hosts:
            own = dict(options)
            if ipv4_p2p_port is not None and ":" not in host:
                own["p2p_port"] = ipv4_p2p_port
            self.services.append(DHTService(reactor, host=host, port=port, **own))
        families = [service.family for service in self.services]
        if len(set(families)) < len(families):
            raise ValueError(f"one DHT per address family, not {list(hosts)}")
        self.running_services: list[DHTService] = []

    # What the node reads.

    def family(self, family: int) -> DHTService | None:
        """The running DHT of C{family} (4 or 6), if any."""
        return next((s for s in self.running_services if s.family == family), None)

    def port_of(self, family: int) -> int | None:
        """The UDP port of the running DHT of C{family} (4 or 6), or ``None``."""
        service = self.family(family)
        return service.listen_port if service is not None else None

    @property
    def listen_port(self) -> int:
        """The UDP port of the first running DHT, or 0."""
        return self.running_services[0].listen_port if self.running_services else 0

    @property
    def node_id(self) -> bytes | None:
        """The node id both families share, once started."""
        return self.running_services[0].node_id if self.running_services else None

    def status(self) -> dict[str, Any]:
        """
        The DHT's summary for the API: that of
        :meth:`~bitfitech.discovery.kademlia.service.DHTService.status`
        summed over the families (``port`` is the first's), and
        ``families``: each running family's ``host``, ``port``,
        ``routing_table_size``, ``announced_at`` and ``peers_found``.
        """
        running = self.running_services or self.services[:1]
        statuses = [service.status() for service in running]
        total = dict(statuses[0])
        total.pop("family", None)
        total.pop("host", None)
        announced = [s.announced_at for s in running if s.announced_at is not None]
        by_market: Counter[str] = Counter()
        for status in statuses:
            by_market.update(status["peers_found_by_market"])
        total.update(
            routing_table_size=sum(s["routing_table_size"] for s in statuses),
            announced_at=unix_ms(max(announced)) if announced else None,
            peers_found=sum(s["peers_found"] for s in statuses),
            peers_found_by_market={m: by_market[m] for m in total["peers_found_by_market"]},
            families={
                status["family"]: {
                    key: status[key]
                    for key in ("host", "port", "routing_table_size", "announced_at", "peers_found")
                }
                for status in (statuses if self.running_services else [])
            },
        )
        return total

    # Service.

    def startService(self) -> None:
        """
        Start each family's DHT, the second with the first's node id and
        port number.

        :raises CannotListenError: when a DHT cannot bind, unless the host
            lacks that family and the other runs.
        """
        started: list[DHTService] = []
        try:
            for service in self.services:
                if started:
                    service.share_node_id(started[0].node_id or b"")
                    if self._port == 0:
                        service.use_port(started[0].listen_port)
                try:
                    self._start_one(service)
                except CannotListenError as e:
                    if not self._family_missing(e, service, started):
                        raise
                    log.warn(
                        "No IPv{family} here: the DHT runs over IPv{other} only ({error})",
                        family=service.family,
                        other=6 if service.family == 4 else 4,
                        error=e.socketError,
                    )
                    continue
                started.append(service)
        except BaseException:
            for service in started:
                service.stopService()
            raise
        self.running_services = started
        if len(started) == 2:
            first, second = started
            first.set_sibling(second.nodes_near)
            second.set_sibling(first.nodes_near)
        super().startService()

    def _start_one(self, service: DHTService) -> None:
        try:
            service.startService()
        except CannotListenError:
            if self._port != 0 or service is self.services[0]:
                raise
            # The first's number is taken on this family: any port will do.
            service.use_port(0)
            service.startService()

    def _family_missing(
        self, error: CannotListenError, service: DHTService, started: list[DHTService]
    ) -> bool:
        """Whether C{error} says the host lacks C{service}'s family, and the other can run."""
        cause = error.socketError
        if self._hosts != DUAL_STACK or not isinstance(cause, OSError):
            return False
        if cause.errno not in NO_FAMILY:
            return False
        return bool(started) or service is not self.services[-1]

    def stopService(self) -> Deferred[Any]:
        """Stop every running DHT (each saves its contacts)."""
        super().stopService()
        running, self.running_services = self.running_services, []
        for service in running:
            service.set_sibling(None)
        return gatherResults(
            [maybeDeferred(service.stopService) for service in reversed(running)],
            consumeErrors=True,
        ).addCallback(lambda _: None)
