"""
Tests of a node's stop with stuck connections: real nodes on 127.0.0.1.

Data path: a client on loopback connects to a node's P2P port and never
says a word (its TLS handshake never completes, so a polite close would
wait for it forever) -> :meth:`bitfitech.node.Node.stopService`.  The
market must have journaled and written its checkpoint before the links
are gone, the links are aborted after a grace, and the whole stop ends
by its deadline whatever is still open.  The speed of a real process's
stop is ``benchmarks/bench_lifecycle.py``'s figure.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from bitfitech import lifecycle
from bitfitech.node import Node
from bitfitech.peer import service as peer_service
from bitfitech.testing import ClusterTestCase

ORDERS = 20


class Silent(Protocol):
    """
    A client that connects and never says a word; when its connection is
    lost, it notes what the node had done by then.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.lost: Deferred[None] = Deferred()
        self.checkpoint_at_loss: bool | None = None
        self.market_running_at_loss: bool | None = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.checkpoint_at_loss = os.path.exists(self.node.market.checkpoint_path)
        self.market_running_at_loss = bool(self.node.market.running)
        self.lost.callback(None)


class StopTests(ClusterTestCase):
    """A node stops in bounded time, its checkpoint written first, whatever its peers do."""

    async def place_orders(self, node: Node) -> None:
        for i in range(ORDERS):
            await node.market.submit("buy", str(100 + i), "1", "limit")

    async def silent_client(self, node: Node) -> Silent:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", node.peers.listen_port)
        client: Silent = await connectProtocol(endpoint, Silent(node))
        self.addCleanup(_abort, client)

        def accepted() -> bool:
            return node.peers.open_links == 1

        while not accepted():
            await _later(self.reactor)
        return client

    async def test_checkpoint_before_links_close_then_resume(self) -> None:
        """
        The silent client's connection is aborted after the grace, once the
        market had stopped and written its checkpoint; the node started
        again resumes from it.
        """
        self.patch(peer_service, "CLOSE_GRACE", 0.2)
        node = self.cluster.start_node()
        await self.place_orders(node)
        client = await self.silent_client(node)
        await node.stopService()
        await client.lost
        self.assertIs(client.checkpoint_at_loss, True)
        self.assertIs(client.market_running_at_loss, False)
        again = self.cluster.restart_node(node)
        self.assertEqual(again.market.loaded_events, ORDERS)
        self.assertEqual(again.market.resumed_at, ORDERS)

    async def test_stop_ends_by_its_deadline(self) -> None:
        """
        With links that would be given longer than the stop's deadline, the
        stop still ends by it: the storage is closed, and the warning says
        how many links were left.
        """
        self.patch(peer_service, "CLOSE_GRACE", 30.0)
        self.patch(lifecycle, "STOP_DEADLINE", 0.3)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        node = self.cluster.start_node()
        await self.place_orders(node)
        client = await self.silent_client(node)
        await node.stopService()
        self.assertFalse(node.storage.is_open)
        self.assertTrue(os.path.exists(node.market.checkpoint_path))
        self.assertFalse(client.lost.called, "the link was given its grace, not waited for")
        warnings = [e for e in observer if "without waiting longer" in e.get("log_format", "")]
        self.assertEqual([e["links"] for e in warnings], [1])


def _abort(client: Silent) -> Deferred[None]:
    """Drop the client's connection if it is still open; fires once it is gone."""
    if not client.lost.called and client.transport is not None:
        client.transport.abortConnection()  # type: ignore[attr-defined]
    return client.lost


def _later(reactor: Any) -> Deferred[None]:
    return deferLater(reactor, 0.01, lambda: None)
