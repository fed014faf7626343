"""bitfi's DHT and libtorrent's (rasterbar, the BEP 5 reference in practice) find each other.

libtorrent runs in this process, through its Python bindings (the
``libtorrent`` wheel of the ``test`` extra), on 127.0.0.1, bootstrapped to
bitfi's DHT node; skipped when the bindings cannot be imported.  Both
directions: libtorrent's ``announce_peer`` reaches bitfi and bitfi's
``get_peers`` finds it; bitfi's announce reaches libtorrent, whose
``get_peers`` finds bitfi's P2P port.
"""

from __future__ import annotations

import random
import socket
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.trial.unittest import SkipTest, TestCase

from bitfitech.discovery.kademlia.ids import network_info_hash
from bitfitech.discovery.kademlia.service import DHTService, DHTTiming
from bitfitech.testing import HANG_GUARD, global_reactor, poll_until

INFO_HASH = network_info_hash("test", "BTC/USD")
FAST = DHTTiming(query_timeout=1.0, check_interval=0.2, min_lookup_gap=0.5, bootstrap_retry=0.2)
BITFI_P2P = 9401
LIBTORRENT_P2P = 9402


def libtorrent() -> Any:
    """The bindings, or SkipTest saying why not."""
    try:
        import libtorrent as lt
    except ImportError as e:
        raise SkipTest(f"libtorrent's Python bindings are not installed ({e})") from None
    return lt


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class LibtorrentInteropTests(TestCase):
    timeout = 60

    async def test_both_directions(self) -> None:
        lt = libtorrent()
        reactor = global_reactor()
        found: set[tuple[str, int]] = set()
        service = DHTService(
            reactor, info_hashes={"BTC/USD": INFO_HASH}, port=0, host="127.0.0.1",
            p2p_port=lambda: BITFI_P2P, found=lambda h, p, _, markets: found.add((h, p)),
            wants_peers=lambda _market: True, rng=random.Random(1), timing=FAST,
        )  # fmt: skip
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        ours = service.listen_port
        session = lt.session({
            "listen_interfaces": f"127.0.0.1:{free_udp_port('127.0.0.1')}",
            "enable_dht": True, "enable_lsd": False, "enable_upnp": False,
            "enable_natpmp": False, "enable_incoming_utp": False, "enable_outgoing_utp": False,
            "dht_bootstrap_nodes": f"127.0.0.1:{ours}",
            # Every node here is on 127.0.0.1: libtorrent would keep one per IP.
            "dht_restrict_routing_ips": False, "dht_restrict_search_ips": False,
            "dht_enforce_node_id": False, "dht_prefer_verified_node_ids": False,
            "alert_mask": lt.alert.category_t.dht_notification
            | lt.alert.category_t.dht_operation_notification,
        })  # fmt: skip
        self.addCleanup(session.pause)
        session.add_dht_node(("127.0.0.1", ours))
        target = lt.sha1_hash(INFO_HASH)
        theirs: set[tuple[str, int]] = set()

        def poll() -> None:
            for alert in session.pop_alerts():
                if isinstance(alert, lt.dht_get_peers_reply_alert):
                    theirs.update((host, port) for host, port in alert.peers())

        polling = LoopingCall(poll)
        polling.clock = reactor
        polling.start(0.1)
        self.addCleanup(polling.stop)

        def ask() -> None:
            session.dht_announce(target, LIBTORRENT_P2P)
            session.dht_get_peers(target)
            if not service._discovering:  # noqa: SLF001 - one lookup at a time
                service.discover(announce=True)

        asking = LoopingCall(ask)
        asking.clock = reactor
        asking.start(1.0)
        self.addCleanup(asking.stop)
        await poll_until(
            reactor,
            lambda: ("127.0.0.1", LIBTORRENT_P2P) in found and ("127.0.0.1", BITFI_P2P) in theirs,
            HANG_GUARD,
            "libtorrent and bitfi finding each other's announce",
        )
