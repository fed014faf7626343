"""bitfi's DHT and webtorrent's ``bittorrent-dht`` (node.js) find each other's announce.

Needs ``node`` on PATH and the npm package ``bittorrent-dht`` in the
directory named by ``$BITFI_NODE_MODULES`` or in
``tests/discovery/interop/node_modules`` (``npm install --prefix
tests/discovery/interop``, from its ``package.json``, as ``.ci/run``
does); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from bitfitech.discovery.kademlia.ids import network_info_hash
from bitfitech.discovery.kademlia.service import DHTService, DHTTiming
from bitfitech.testing import HANG_GUARD, poll_until

INTEROP = Path(__file__).parent / "interop"
SCRIPT = INTEROP / "dht_peer.mjs"
INFO_HASH = network_info_hash("test", "BTC/USD")
FAST = DHTTiming(query_timeout=1.0, check_interval=0.2, min_lookup_gap=0.5, bootstrap_retry=0.2)
BITFI_P2P = 9201
JS_P2P = 9202


def node_modules() -> Path | None:
    """The node_modules directory holding bittorrent-dht, if any."""
    candidates = [os.environ.get("BITFI_NODE_MODULES"), str(INTEROP / "node_modules")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "bittorrent-dht" / "package.json").is_file():
            return Path(candidate)
    return None


class JSPeer(ProcessProtocol):
    """The node.js child: its JSON lines, and a Deferred for its end."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._buffer = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self.events.append(json.loads(line))

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        reason.trap(ProcessDone, ProcessTerminated)
        self.ended.callback(None)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]


class InteropTests(TestCase):
    """Both directions of announce and lookup against bittorrent-dht."""

    timeout = 120

    def setUp(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise SkipTest("node.js is not on PATH")
        self.node = node
        modules = node_modules()
        if modules is None:
            raise SkipTest(
                "npm package bittorrent-dht not found: set $BITFI_NODE_MODULES or run "
                "npm install --prefix tests/discovery/interop bittorrent-dht"
            )
        self.modules = modules

    def spawn(self, bitfi_port: int) -> JSPeer:
        from twisted.internet import reactor

        peer = JSPeer()
        argv = [self.node, str(SCRIPT), str(self.modules), str(bitfi_port), INFO_HASH.hex(),
                str(JS_P2P)]  # fmt: skip
        transport = reactor.spawnProcess(peer, self.node, argv, env=dict(os.environ))  # type: ignore[attr-defined]

        async def cleanup() -> None:
            if not peer.ended.called:
                transport.closeStdin()
                try:
                    transport.signalProcess("KILL")
                except Exception:
                    pass  # already gone
                await peer.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
        return peer

    async def test_both_directions(self) -> None:
        """
        bittorrent-dht finds bitfi's announce, and bitfi finds bittorrent-dht's:
        ping, find_node, get_peers (tokens, values, nodes) and announce_peer
        both ways.
        """
        from twisted.internet import reactor

        found: set[tuple[str, int]] = set()
        service = DHTService(
            reactor,
            info_hashes={"BTC/USD": INFO_HASH},
            port=0,
            host="127.0.0.1",
            p2p_port=lambda: BITFI_P2P,
            found=lambda h, p, _, markets: found.add((h, p)),
            wants_peers=lambda _market: True,
            rng=random.Random(1),
            timing=FAST,
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        peer = self.spawn(service.listen_port)

        def done() -> bool:
            last = service.last_lookup
            return (
                # bittorrent-dht's announce_peer reached bitfi (token accepted).
                ("127.0.0.1", JS_P2P) in found
                # bitfi's announce_peer reached bittorrent-dht (token accepted).
                and {"event": "peer", "host": "127.0.0.1", "port": BITFI_P2P} in peer.events
                # bittorrent-dht read the values of bitfi's get_peers answer.
                and {"event": "peer", "host": "127.0.0.1", "port": JS_P2P} in peer.events
                # bitfi read the values of bittorrent-dht's get_peers answer.
                and last is not None
                and ("127.0.0.1", BITFI_P2P) in last.peers
                and bool(peer.of("announced"))
            )

        try:
            await poll_until(reactor, done, timeout=HANG_GUARD, what="both announces found")
        except TimeoutError:
            self.fail(
                f"bitfi found {sorted(found)}; bittorrent-dht said {peer.events}; "
                f"stderr {peer.stderr[-2000:]!r}; bitfi {service.status()}, "
                f"counters {dict(service.protocol.counters) if service.protocol else None}"
            )
        self.assertIsNone(peer.of("announced")[0]["error"])
        self.assertIsNotNone(service.status()["announced_at"])
