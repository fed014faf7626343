"""Interoperability with python-zeroconf, on the real mDNS port: over IPv4 on
127.0.0.1, over IPv6 (zeroconf's ``IPVersion.V6Only``) and in both families
at once (``IPVersion.All``) on the interface where IPv6 multicast works here.

python-zeroconf is another implementation of RFC 6762/6763: it browsing our
instance proves our announcements and answers are well formed, and our
browser finding its service proves we read another implementation's.  The
IPv6 and dual-stack tests multicast on a real interface (``ff02::fb`` never
leaves its link; the dual-stack one also sends IPv4 mDNS there).

Every test uses port 5353, as zeroconf does, so tests running at the same
time in other processes (``trial -j``) hear each other: each test has node
ids and a network of its own, and looks only at its own instances.
Zeroconf runs its own threads; its blocking calls (register, close) run in
the reactor's thread pool and the test polls with ``reactor.callLater``, so
the reactor is never blocked.
"""

from __future__ import annotations

import random
import secrets
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from bitfitech.discovery.mdns import MDNSService, local_addresses
from bitfitech.testing import HANG_GUARD, multicast_unavailable, poll_until

from .ipv6_multicast import ipv6_multicast_unavailable, probe

try:
    import zeroconf
except ImportError:  # pragma: no cover
    zeroconf = None  # type: ignore[assignment]

SERVICE_TYPE = "_bitfi._tcp.local."
NO_ZEROCONF = "python-zeroconf is not installed (pip install zeroconf)"


def _skip() -> str | None:
    if zeroconf is None:
        return NO_ZEROCONF
    return multicast_unavailable()


def _skip6() -> str | None:
    if zeroconf is None:
        return NO_ZEROCONF
    return ipv6_multicast_unavailable()


def _skip_dual() -> str | None:
    if zeroconf is None:
        return NO_ZEROCONF
    return ipv6_multicast_unavailable() or (
        None if probe().ipv4 else "the IPv6 multicast interface has no IPv4 address"
    )


class _ZeroconfTestCase(TestCase):
    """Our service and a python-zeroconf instance, on the real mDNS port."""

    timeout = 120

    def start(self, interface: str | None, interfaces: list[str], ip_version: Any) -> None:
        """Start our service on C{interface}, zeroconf on C{interfaces} in C{ip_version}."""
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.node = secrets.token_hex(20)
        self.other = secrets.token_hex(20)
        self.network = f"zc-{secrets.token_hex(4)}"
        self.found: list[tuple[str, int, str | None, tuple[str, ...]]] = []
        self.service = MDNSService(
            reactor, node_id=self.node, network=self.network, markets=("BTC/USD", "ETH/USD"),
            version=2, p2p_port=lambda: 9100,
            found=lambda host, port, node_id, markets: self.found.append(
                (host, port, node_id, markets)
            ),
            interface=interface, rng=random.Random(6),
        )  # fmt: skip
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.zeroconf = zeroconf.Zeroconf(interfaces=interfaces, ip_version=ip_version)
        # Closing joins zeroconf's threads: do it off the reactor thread.
        self.addCleanup(deferToThread, self.zeroconf.close)

    async def zeroconf_resolves_us(self) -> Any:
        """Browse for bitfi with zeroconf until it resolves our instance; its ServiceInfo."""
        ours = f"{self.node}.{SERVICE_TYPE}"
        infos: list[Any] = []

        def changed(
            zeroconf: Any, service_type: str, name: str, state_change: Any
        ) -> None:  # fmt: skip
            # In zeroconf's browser thread, where blocking calls are allowed.
            if state_change is zeroconf_module.ServiceStateChange.Added and name == ours:
                info = zeroconf.get_service_info(service_type, name, timeout=3000)
                if info is not None:
                    infos.append(info)

        zeroconf_module = zeroconf
        browser = zeroconf.ServiceBrowser(self.zeroconf, SERVICE_TYPE, handlers=[changed])
        self.addCleanup(deferToThread, browser.cancel)
        await poll_until(self.reactor, lambda: bool(infos), HANG_GUARD, "zeroconf resolving us")
        [info] = infos
        self.assertEqual(info.name, ours)
        self.assertEqual(info.port, 9100)
        self.assertEqual(info.server, f"bitfi-{self.node[:12]}.local.")
        self.assertEqual(
            info.properties,
            {
                b"id": self.node.encode(),
                b"net": self.network.encode(),
                b"pair": b"BTC/USD",
                b"markets": b"BTC/USD,ETH/USD",
                b"v": b"2",
            },
        )
        return info

    async def we_find(self, addresses: list[str], markets: dict[str, str]) -> None:
        """
        Register a zeroconf service with C{addresses} and TXT C{markets};
        wait until we have found each address, then until its goodbye.
        """
        info = zeroconf.ServiceInfo(
            SERVICE_TYPE,
            f"{self.other}.{SERVICE_TYPE}",
            parsed_addresses=addresses,
            port=9200,
            properties={"id": self.other, "net": self.network, **markets, "v": "2"},
            server=f"zeroconf-{self.other[:12]}.local.",
        )
        # register_service probes for seconds: in a thread.
        await deferToThread(self.zeroconf.register_service, info)
        await poll_until(self.reactor, lambda: len(self.found) >= len(addresses), HANG_GUARD,
                         "finding zeroconf's service")  # fmt: skip
        self.assertEqual(
            sorted(self.found), sorted((a, 9200, self.other, ("ETH/USD",)) for a in addresses)
        )
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


class ZeroconfTests(_ZeroconfTestCase):
    """Our service and python-zeroconf on 127.0.0.1, over IPv4."""

    skip = _skip()

    def setUp(self) -> None:
        self.start("127.0.0.1", ["127.0.0.1"], zeroconf.IPVersion.V4Only)

    def test_zeroconf_browses_our_instance(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.zeroconf_browses_our_instance())

    async def zeroconf_browses_our_instance(self) -> None:
        info = await self.zeroconf_resolves_us()
        self.assertEqual(info.parsed_addresses(), ["127.0.0.1"])

    def test_we_find_a_zeroconf_service(self) -> Deferred[None]:
        # An instance of a node from before markets: TXT ``pair`` only.
        return Deferred.fromCoroutine(self.we_find(["127.0.0.1"], {"pair": "ETH/USD"}))


class ZeroconfIPv6Tests(_ZeroconfTestCase):
    """
    Our service in IPv6 only and python-zeroconf in ``IPVersion.V6Only``, on
    the interface address where IPv6 multicast works here (``::1`` where
    loopback carries it).
    """

    skip = _skip6()

    def setUp(self) -> None:
        address = probe().address
        assert address is not None
        self.address = address
        self.start(address, [address], zeroconf.IPVersion.V6Only)

    def test_zeroconf_browses_our_instance(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.zeroconf_browses_our_instance())

    async def zeroconf_browses_our_instance(self) -> None:
        info = await self.zeroconf_resolves_us()
        self.assertEqual(info.parsed_addresses(zeroconf.IPVersion.V6Only), [self.address])
        self.assertEqual(self.service.status()["families"], ["ipv6"])

    def test_we_find_a_zeroconf_service(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.we_find([self.address], {"markets": "ETH/USD"}))


class ZeroconfDualStackTests(_ZeroconfTestCase):
    """
    Our service on every interface of both families and python-zeroconf in
    ``IPVersion.All`` on one interface's IPv4 and IPv6 addresses.
    """

    skip = _skip_dual()

    def setUp(self) -> None:
        found = probe()
        assert found.address is not None and found.ipv4 is not None
        self.addresses = [found.ipv4, found.address]
        self.start(None, self.addresses, zeroconf.IPVersion.All)

    def test_zeroconf_browses_our_instance(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.zeroconf_browses_our_instance())

    async def zeroconf_browses_our_instance(self) -> None:
        info = await self.zeroconf_resolves_us()
        # Every address we advertise, of both families.
        self.assertEqual(set(info.parsed_addresses()), set(local_addresses(None).advertised))
        self.assertTrue(set(self.addresses) <= set(info.parsed_addresses()))
        self.assertEqual(self.service.status()["families"], ["ipv4", "ipv6"])

    def test_we_find_a_zeroconf_service(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.we_find(self.addresses, {"markets": "ETH/USD"}))
