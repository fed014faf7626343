"""Interoperability with python-zeroconf, on 127.0.0.1 and the real mDNS port.

python-zeroconf is another implementation of RFC 6762/6763: it browsing our
instance proves our announcements and answers are well formed, and our
browser finding its service proves we read another implementation's.
Zeroconf runs its own threads; its blocking calls (register, close) run in
the reactor's thread pool and the test polls with ``reactor.callLater``, so
the reactor is never blocked.
"""

from __future__ import annotations

import random
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from bitfitech.discovery.mdns import MDNSService
from bitfitech.testing import HANG_GUARD, multicast_unavailable, poll_until

try:
    import zeroconf
except ImportError:  # pragma: no cover
    zeroconf = None  # type: ignore[assignment]

NODE = "ab" * 20
OTHER = "cd" * 20
SERVICE_TYPE = "_bitfi._tcp.local."


def _skip() -> str | None:
    if zeroconf is None:
        return "python-zeroconf is not installed (pip install zeroconf)"
    return multicast_unavailable()


class ZeroconfTests(TestCase):
    """Our service and a python-zeroconf instance on 127.0.0.1:5353."""

    skip = _skip()
    timeout = 120

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.found: list[tuple[str, int, str | None, tuple[str, ...]]] = []
        self.service = MDNSService(
            reactor,
            node_id=NODE,
            network="main",
            markets=("BTC/USD", "ETH/USD"),
            version=2,
            p2p_port=lambda: 9100,
            found=lambda host, port, node_id, markets: self.found.append(
                (host, port, node_id, markets)
            ),
            interface="127.0.0.1",
            rng=random.Random(5),
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.zeroconf = zeroconf.Zeroconf(interfaces=["127.0.0.1"])
        # Closing joins zeroconf's threads: do it off the reactor thread.
        self.addCleanup(deferToThread, self.zeroconf.close)

    def test_zeroconf_browses_our_instance(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.zeroconf_browses_our_instance())

    async def zeroconf_browses_our_instance(self) -> None:
        infos: list[Any] = []

        def changed(
            zeroconf: Any, service_type: str, name: str, state_change: Any
        ) -> None:  # fmt: skip
            # In zeroconf's browser thread, where blocking calls are allowed.
            if state_change is zeroconf_module.ServiceStateChange.Added:
                info = zeroconf.get_service_info(service_type, name, timeout=3000)
                if info is not None:
                    infos.append(info)

        zeroconf_module = zeroconf
        browser = zeroconf.ServiceBrowser(self.zeroconf, SERVICE_TYPE, handlers=[changed])
        self.addCleanup(deferToThread, browser.cancel)
        await poll_until(self.reactor, lambda: bool(infos), HANG_GUARD, "zeroconf resolving us")
        [info] = infos
        self.assertEqual(info.name, f"{NODE}.{SERVICE_TYPE}")
        self.assertEqual(info.port, 9100)
        self.assertEqual(info.server, f"bitfi-{NODE[:12]}.local.")
        self.assertEqual(info.parsed_addresses(), ["127.0.0.1"])
        self.assertEqual(
            info.properties,
            {
                b"id": NODE.encode(),
                b"net": b"main",
                b"pair": b"BTC/USD",
                b"markets": b"BTC/USD,ETH/USD",
                b"v": b"2",
            },
        )

    def test_we_find_a_zeroconf_service(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.we_find_a_zeroconf_service())

    async def we_find_a_zeroconf_service(self) -> None:
        # An instance of a node from before markets: TXT ``pair`` only.
        info = zeroconf.ServiceInfo(
            SERVICE_TYPE,
            f"{OTHER}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton("127.0.0.1")],
            port=9200,
            properties={"id": OTHER, "net": "main", "pair": "ETH/USD", "v": "2"},
            server="zeroconf-test.local.",
        )
        # register_service probes for seconds: in a thread.
        await deferToThread(self.zeroconf.register_service, info)
        await poll_until(self.reactor, lambda: bool(self.found), HANG_GUARD,
                         "finding zeroconf's service")  # fmt: skip
        self.assertEqual(self.found, [("127.0.0.1", 9200, OTHER, ("ETH/USD",))])
        self.assertEqual(self.service.status()["discovered"], 1)
        self.assertEqual(
            self.service.status()["discovered_by_market"], {"BTC/USD": 0, "ETH/USD": 1}
        )
        await deferToThread(self.zeroconf.unregister_service, info)
        await poll_until(
            self.reactor,
            lambda: self.service.status()["discovered"] == 0,
            HANG_GUARD,
            "the goodbye to be heard",
        )
