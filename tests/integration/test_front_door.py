"""
Tests of what a node tells a newcomer at start: real nodes on 127.0.0.1.

Data path: :func:`bitfitech.node.build_node` -> ``startService`` -> the log
line that says where the dashboard is and where the data lives, and the
same in ``GET /status`` (``api``, ``data_dir``, from
:class:`~bitfitech.api.control.NodeControl`); and a node that joins ->
its peers' syncs -> :meth:`bitfitech.gossip.Gossip.progress` (``GET
/status``'s ``sync``) and the log lines while it catches up.
"""

from __future__ import annotations

from twisted.internet.defer import gatherResults
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher

from bitfitech import gossip as gossip_module
from bitfitech.testing import HANG_GUARD, ClusterTestCase, poll_until


class FrontDoorTests(ClusterTestCase):
    """The dashboard's address and the data directory, in the log and in ``/status``."""

    def setUp(self) -> None:
        super().setUp()
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.observer]

    def test_start_says_where_the_dashboard_and_the_data_are(self) -> None:
        node = self.cluster.start_node()
        assert node.api is not None
        url = f"http://127.0.0.1:{node.api.listen_port}/"
        status = node.control.status()
        self.assertEqual(status["api"], {"url": url, "dashboard": url})
        self.assertEqual(status["data_dir"], node.config.data_dir)
        running = [line for line in self.lines() if line.startswith("bitfi is running")]
        self.assertEqual(
            running,
            [f"bitfi is running: open the dashboard at {url} (data directory "
             f"{node.config.data_dir})"],
        )  # fmt: skip

    def test_without_the_api(self) -> None:
        node = self.cluster.start_node(api_enabled=False)
        self.assertIsNone(node.control.status()["api"])
        self.assertIn(
            f"bitfi is running without its HTTP API (data directory {node.config.data_dir})",
            self.lines(),
        )


class SyncProgressTests(ClusterTestCase):
    """A joining node says how far behind it is, in ``/status`` and the log, until synced."""

    async def test_join_progress_then_synced(self) -> None:
        self.patch(gossip_module, "PROGRESS_CHECK", 0.05)
        self.patch(gossip_module, "PROGRESS_INTERVAL", 0.1)
        self.patch(gossip_module, "PROGRESS_LOG_MIN", 100)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        a = self.cluster.start_node()
        self.assertEqual(a.control.status()["sync"]["state"], "waiting for peers")
        for _ in range(2):
            await gatherResults(
                [a.market.submit("buy", str(100 + i % 50), "1", "limit") for i in range(500)]
            )
        b = self.cluster.start_node(bootstrap_to=[a])

        def gossip_lines() -> list[str]:
            return [
                formatEvent(e) for e in observer if e.get("log_namespace") == "bitfitech.gossip"
            ]

        def synced() -> bool:
            sync = b.control.status()["sync"]
            logged = any(line.startswith("Synced:") for line in gossip_lines())
            return bool(sync["state"] == "synced" and sync["events"] == 1000 and logged)

        await poll_until(self.reactor, synced, HANG_GUARD, "B synced")
        sync = b.control.status()["sync"]
        self.assertEqual((sync["known"], sync["behind"], sync["eta_ms"]), (1000, 0, None))
        lines = gossip_lines()
        started = [line for line in lines if line.startswith("Syncing with peers")]
        done = [line for line in lines if line.startswith("Synced:")]
        self.assertEqual(len(started), 1, lines)
        self.assertRegex(started[0], r"^Syncing with peers: \d+ events to fetch, \d+ held$")
        self.assertEqual(len(done), 1, lines)
        self.assertRegex(done[0], r"^Synced: \d+ events in [\d.]+ s; 1000 events held$")
