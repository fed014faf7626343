"""
Tests of what a node tells a newcomer at start: real nodes on 127.0.0.1.

Data path: :func:`bitfitech.node.build_node` -> ``startService`` -> the log
line that says where the dashboard is and where the data lives, and the
same in ``GET /status`` (``api``, ``data_dir``, from
:class:`~bitfitech.api.control.NodeControl`).
"""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher

from bitfitech.testing import ClusterTestCase


class FrontDoorTests(ClusterTestCase):
    """The dashboard's address and the data directory, in the log and in ``/status``."""

    def setUp(self) -> None:
        super().setUp()
        self.observer = EventLoggingObserver()
        globalLogPublisher.addObserver(self.observer)
        self.addCleanup(globalLogPublisher.removeObserver, self.observer)

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
