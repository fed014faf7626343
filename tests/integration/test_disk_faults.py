"""
End-to-end tests of a node whose disk fails under it: a real ``twistd bitfi``
process with its data directory on a tiny file system of its own.

Data path: the test mounts a small tmpfs (it needs root and ``mount``; the
test is skipped, with the reason, where it cannot) -> a node process keeps
its data directory there -> orders through the HTTP API fill the file
system (``database or disk is full``), then the test makes it bigger.

What must hold: order entry answers 503 with the reason while the journal
cannot be written, reads keep working, the cause is logged once (not once
per order), the node takes orders again by itself once the disk does, and
every acknowledged order is still there after a restart.  The same
behaviour on a database that refuses writes on demand (as a read-only
one does) is unit-tested in ``tests/market/test_service.py``
(``JournalFaultTests``).  (Linux does not remount a file system read-only
while a process has files open on it for writing, short of an emergency
remount after a disk error, so no test here turns it read-only.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet.task import deferLater

from bitfitech.testing import free_ports, global_reactor

from .processes import ProcessTestCase, assert_clean_exit, stop_process

#: the tiny file system's size at first: room for a fresh node and a few
#: thousand orders
SMALL = "1m"
#: its size once "the operator made room"
LARGE = "64m"
#: orders per POST /orders/batch
BATCH = 100
#: the most batches posted to fill the file system (a hang guard)
MOST_BATCHES = 200
#: the line the node logs once when its journal cannot be written
FAULT_LINE = "The journal cannot be written"
#: the line it logs once it can again
RECOVERED_LINE = "The journal can be written again"


def _mount(*args: str) -> str | None:
    """Run ``mount`` with C{args}; the error text, or ``None`` if it worked."""
    try:
        done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if done.returncode == 0 else (done.stderr.strip() or f"status {done.returncode}")


class TinyFileSystemTests(ProcessTestCase):
    """A node on a file system that fills up, and gets room again."""

    def setUp(self) -> None:
        super().setUp()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            self.skipTest("needs root and mount(8) to make a tiny file system")
        self.mountpoint = os.path.abspath(self.mktemp())
        os.makedirs(self.mountpoint)
        error = _mount("-t", "tmpfs", "-o", f"size={SMALL},mode=0700", "tmpfs", self.mountpoint)
        if error is not None:
            self.skipTest(f"cannot mount a tmpfs here: {error}")
        self.addCleanup(self.unmount)
        ports = free_ports(2)
        self.node = self.spawn_node(
            "tiny", ports[0], ports[1], data_dir=os.path.join(self.mountpoint, "data")
        )
        self.acknowledged: list[str] = []

    async def unmount(self) -> None:
        await self.node.kill()
        subprocess.run(["umount", "-l", self.mountpoint], capture_output=True, timeout=10)

    def remount(self, options: str) -> None:
        error = _mount("-o", f"remount,{options}", self.mountpoint)
        self.assertIsNone(error, f"remount,{options}: {error}")

    async def post_batch(self, price: int) -> tuple[int, Any]:
        order = {"side": "buy", "price": str(price), "amount": "1"}
        status, body = await self.node.post_json("/orders/batch", {"orders": [order] * BATCH})
        if status == 201:
            self.acknowledged += [row["id"] for row in body["orders"]]
        return status, body

    async def until_refused(self) -> str:
        """Post batches until one is refused; its error message."""
        for batch in range(MOST_BATCHES):
            status, body = await self.post_batch(100 + batch % 50)
            if status != 201:
                self.assertEqual(status, 503, f"{body}\n{self.node.describe()}")
                return str(body["error"])
        self.fail(f"never refused after {MOST_BATCHES} batches\n{self.node.describe()}")

    async def until_taken(self) -> None:
        """Post a batch every 0.5 s until one is taken (the node recovered by itself)."""

        async def taken() -> bool:
            status, body = await self.post_batch(90)
            self.assertIn(status, (201, 503), body)
            return status == 201

        await self.eventually(taken, "orders are taken again", lambda: "")

    async def check_refusal_and_reads(self, error: str, cause: str) -> None:
        self.assertIn("the journal cannot be written", error)
        self.assertIn(cause, error)
        for _ in range(3):
            status, body = await self.post_batch(95)
            self.assertEqual(status, 503, body)
        book = await self.node.get_json("/book")
        self.assertTrue(book["bids"], "reads keep working")
        status = await self.node.get_json("/status")
        self.assertIn(cause, status["market"]["journal_error"])
        await deferLater(global_reactor(), 0.2, lambda: None)  # a retry or two
        self.assertEqual(self.node.output.count(FAULT_LINE), 1, self.node.describe())

    async def test_full_disk_then_room_made(self) -> None:
        await self.node.wait_for_api()
        error = await self.until_refused()
        self.assertGreater(len(self.acknowledged), 0, "some orders fit")
        await self.check_refusal_and_reads(error, "full")
        self.remount(f"size={LARGE}")
        await self.until_taken()
        self.assertEqual(self.node.output.count(RECOVERED_LINE), 1, self.node.describe())
        await self.check_every_acknowledged_order_kept()

    async def check_every_acknowledged_order_kept(self) -> None:
        """Stop the node cleanly, start it again: every acknowledged order is there."""
        node = self.node
        self.nodes.remove(node)
        assert_clean_exit(self, node, await stop_process(node))
        again = self.spawn_node("tiny-restarted", node.port, node.api_port, data_dir=node.data_dir)
        self.node = again
        await again.wait_for_api()
        missing = []
        for order_id in self.acknowledged:
            try:
                await again.get_json(f"/orders/{order_id}")
            except Exception:
                missing.append(order_id)
        self.assertEqual(missing, [], again.describe())
        self.assertTrue(Path(again.data_dir).is_dir())
