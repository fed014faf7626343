"""The composition root: :func:`build_node` builds every part of a node and wires it.

:func:`build_node` turns a :class:`~bitfitech.config.NodeConfig` into a
:class:`~bitfitech.lifecycle.Node` (a ``MultiService``), constructing each part once, top to
bottom in data-path order, and handing each the parts it calls: nothing is
built inside another part's ``startService``, and no link is assigned
after construction.  The children start in this order:

1. ``storage``: the data directory, SQLite database and node key
   (:mod:`bitfitech.storage`);
2. ``market``: per market the node carries, the event journal, the
   ledger and the book (:mod:`bitfitech.market.markets`,
   :mod:`bitfitech.market.service`);
3. ``peers``: the P2P listener, the hub of live links, the address book,
   the bans, the dialer, and the gossip of events between peers, one
   gossip per market behind a router (:mod:`bitfitech.peer.service`,
   :mod:`bitfitech.gossip`);
4. ``nat``: the router's port mapping of the P2P port, which the peer
   layer's dial-back check asks peers to dial (:mod:`bitfitech.nat`; off
   with ``--nat off`` and on a loopback ``--host``);
5. ``mdns`` and ``dht``: discovery, which hands the addresses it finds to
   the peer layer (:mod:`bitfitech.discovery.service`; each can be off);
6. ``api``: the HTTP API, its metrics and dashboard
   (:mod:`bitfitech.api.service`; it can be off).

The :class:`~bitfitech.lifecycle.Node` starts and stops them as a whole;
a stop is bounded in time (:meth:`~bitfitech.lifecycle.Node.stopService`):
the parts facing the network are told to stop first, every market
journals and writes its checkpoint without waiting for them, and the
storage closes last.

What is known only once the node starts (its id, read from the data
directory; the port it got) reaches the parts at start, not at build:
building opens nothing.  This module and :mod:`bitfitech.tap` are the only
ones that know every part; ``docs/reading.rst`` follows an order through
them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import cast

from twisted.internet.interfaces import IReactorCore, IReactorTime

from .address import format_hostport
from .api.app import site_root
from .api.control import NodeControl
from .api.metrics import node_registry
from .api.service import ApiService
from .config import NodeConfig
from .discovery.kademlia.dualstack import DualStackDHT
from .discovery.kademlia.ids import market_info_hash
from .discovery.mdns import MDNSService
from .discovery.service import DiscoveryService, dht_bind_hosts
from .gossip import Gossip, GossipRouter, ThreadedVerifier
from .lifecycle import Node
from .logs import TaggedReactor
from .market.journal import SharedSyncer, ThreadedSyncer
from .market.markets import Markets
from .market.service import MarketService
from .nat import PortMappingService, build_mappers
from .peer.addrbook import AddressBook
from .peer.bans import BanList
from .peer.dialer import Dialer
from .peer.hub import PeerHub
from .peer.service import PeerService, TCPConnector
from .peer.tls import LinkSecurity
from .storage import Storage
from .wire.messages import PROTOCOL_VERSION

__all__ = ["Node", "build_node"]


def build_node(
    config: NodeConfig,
    reactor: IReactorCore | None = None,
    *,
    exit_on_startup_error: bool = False,
    log_tag: str | None = None,
) -> Node:
    """
    Build a node's parts and its service tree; nothing is opened until it starts.

    :param reactor: the reactor to use; the global one when ``None``.
    :param exit_on_startup_error: exit the process with one clear line when
        the node cannot start, instead of raising (for twistd).
    :param log_tag: for one of several nodes in a process: the tag of every
        line it logs (``node2``).  The node then runs on its own view of the
        reactor (:class:`~bitfitech.logs.TaggedReactor`), and starts and
        stops under the tag.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = cast(IReactorCore, global_reactor)
    if log_tag is not None:
        reactor = cast(IReactorCore, TaggedReactor(reactor, log_tag))
    clock = cast(IReactorTime, reactor)
    rng = random.SystemRandom()
    witnesses = config.witness_set

    # The data directory, then the markets, in order: each the only writer
    # of its book state; their journals share the database and its fsync.
    storage = Storage(config.data_dir)
    syncer = SharedSyncer(lambda storage: ThreadedSyncer(reactor, storage.database_path))
    markets = Markets(
        MarketService(config, storage, clock, market=pair, syncer=syncer.open,
                      witnesses=witnesses)
        for pair in config.markets
    )  # fmt: skip

    # Gossip between each market and the peer links, routed by market; the
    # peer layer under it.
    verifier = ThreadedVerifier(reactor)
    gossips = {
        service.pair: Gossip(service, clock, config.gossip, rng, verifier, witnesses=witnesses.ids)
        for service in markets
    }
    router = GossipRouter(gossips)
    addrbook = AddressBook()
    bans = BanList()
    hub = PeerHub(
        addrbook, clock, gossip=router, max_peers=config.max_peers,
        max_inbound=config.max_inbound, timing=config.timing, rng=rng,
        max_inbound_per_ip=config.max_inbound_per_ip,
        max_handshakes_per_ip=config.max_handshakes_per_ip,
        bans=bans, ban_duration=config.ban_duration, witnesses=witnesses.ids,
    )  # fmt: skip
    security = LinkSecurity(
        plain=config.plain_tcp, certificate=config.certificate, ca_bundle=config.ca_bundle,
        bootstrap=config.bootstrap, clock=reactor,
    )  # fmt: skip
    dialer = Dialer(
        hub, addrbook, TCPConnector(reactor, hub, security, config.connect_timeout), clock,
        target=config.outbound, bootstrap=config.bootstrap, witnesses=config.witnesses,
        interval=config.dial_interval,
    )  # fmt: skip
    # The router's port mapping of the P2P port, which the dial-back check asks peers to dial.
    nat: PortMappingService | None = None
    if config.nat_mode != "off":
        mappers = build_mappers(reactor, config.nat_mode, gateway=config.nat_gateway)
        nat = PortMappingService(clock, mappers, lambda: peers.listen_port or None)
    mapped: Callable[[], tuple[str, int] | None] = nat.mapped if nat is not None else lambda: None
    peers = PeerService(
        config, storage, reactor, hub=hub, addrbook=addrbook, bans=bans, security=security,
        dialer=dialer, gossip=router, witness_digest=witnesses.digest, mapped=mapped,
    )  # fmt: skip

    # Discovery: hands the addresses it finds to the peer layer.
    mdns = dht = None
    if config.mdns_enabled:
        mdns = DiscoveryService(
            "mdns",
            MDNSService(
                reactor, node_id=lambda: storage.identity.node_id, network=config.network,
                markets=config.markets, version=PROTOCOL_VERSION,
                p2p_port=lambda: peers.listen_port, found=peers.found_by("mdns"),
                interface=config.mdns_interface, rng=rng, port=config.mdns_port,
            ),
            required=False, what=f"mDNS on {config.mdns_interface or 'all interfaces'}",
        )  # fmt: skip
    nat_udp: PortMappingService | None = None
    if config.dht_enabled:
        hosts = dht_bind_hosts(config.host)
        where = " and ".join(format_hostport(h, config.dht_listen_port) for h in hosts)
        dual = DualStackDHT(
            reactor, port=config.dht_listen_port, hosts=hosts,
            info_hashes={m: market_info_hash(config.network, m) for m in config.markets},
            p2p_port=lambda: peers.listen_port, found=peers.found_by("dht"),
            # behind a router, announce over IPv4 the router's port that forwards to ours
            ipv4_p2p_port=lambda: (mapped() or ("", peers.listen_port))[1],
            wants_peers=peers.wants_peers, bootstrap=config.dht_bootstrap,
            settings=storage, rng=rng,
        )  # fmt: skip
        dht = DiscoveryService("dht", dual, required=True, what=f"the DHT on UDP {where}")
        if config.nat_mode != "off":
            # The IPv4 DHT's UDP port too, with mappers of its own (one call at a time each).
            mappers = build_mappers(reactor, config.nat_mode, gateway=config.nat_gateway)
            nat_udp = PortMappingService(clock, mappers, lambda: dual.port_of(4), protocol="udp")

    # The end of the path: the API's view of the node, its metrics, the HTTP site.
    api: ApiService | None = None
    control = NodeControl(
        config, clock, storage, markets, gossips=gossips, peers=peers, mdns=mdns, dht=dht,
        nat=nat, nat_udp=nat_udp, api_url=lambda: api.url if api is not None else None,
    )  # fmt: skip
    metrics = node_registry(control.status, markets.by_name, gossips)
    if config.api_enabled:
        root = site_root(control, clock=clock, registry=metrics)
        api = ApiService(config, root, reactor, metrics)
    return Node(
        config, clock, storage=storage, markets=markets, gossips=gossips, peers=peers,
        nat=nat, nat_udp=nat_udp, mdns=mdns, dht=dht, control=control, metrics=metrics, api=api,
        exit_on_startup_error=exit_on_startup_error, log_tag=log_tag,
    )  # fmt: skip
