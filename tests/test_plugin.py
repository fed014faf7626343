"""Tests of the front doors: the ``twistd bitfi`` plugin, ``makeService`` and ``tac/*.tac``."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from collections.abc import Mapping

from twisted.application.service import (
    IService,
    IServiceCollection,
    IServiceMaker,
    loadApplication,
)
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

import twisted.plugins
from bitfitech import tap
from bitfitech.config import ENVIRONMENT
from bitfitech.node import Node

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAC_FILES = sorted(glob.glob(os.path.join(ROOT, "tac", "*.tac")))


def child_names(service: IService) -> list[str | None]:
    """The names of C{service}'s children, in start order."""
    return [child.name for child in IServiceCollection(service)]


def reactor_activity() -> tuple[int, int, int]:
    """How many readers, writers and delayed calls the global reactor has."""
    from twisted.internet import reactor

    return (
        len(reactor.getReaders()),  # type: ignore[attr-defined]
        len(reactor.getWriters()),  # type: ignore[attr-defined]
        len(reactor.getDelayedCalls()),  # type: ignore[attr-defined]
    )


class PluginTests(SynchronousTestCase):
    """``twistd`` finds ``bitfi`` and the plugin stays lazy."""

    def test_found(self) -> None:
        makers = [p for p in getPlugins(IServiceMaker, twisted.plugins) if p.tapname == "bitfi"]
        self.assertEqual(len(makers), 1)
        maker = makers[0]
        self.assertIs(maker.options, tap.Options)
        self.assertIs(maker.makeService, tap.makeService)
        self.assertTrue(maker.description)

    def test_lazy(self) -> None:
        code = (
            "import sys, twisted.plugins.bitfi_plugin as p\n"
            "print(sorted(m for m in sys.modules\n"
            "      if m.startswith('bitfitech') or m == 'twisted.internet.reactor'))\n"
        )
        env = {**os.environ, "PYTHONPATH": ROOT}
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")


class MakeServiceTests(SynchronousTestCase):
    """Options to a service tree, with no side effects."""

    def make(self, *args: str) -> tuple[IService, str]:
        """Build a node from C{args}; return it and its (not yet created) data dir."""
        data_dir = os.path.abspath(os.path.join(self.mktemp(), "node"))
        options = tap.Options()
        options.environ = {"BITFI_DATA_DIR": data_dir}
        options.parseOptions(list(args))
        before = reactor_activity()
        service = tap.makeService(options)
        self.assertEqual(reactor_activity(), before)
        return service, data_dir

    def test_tree(self) -> None:
        service, data_dir = self.make("--port", "3001", "--api-port", "0")
        self.assertTrue(IService.providedBy(service))
        self.assertEqual(child_names(service), ["storage", "market", "peers", "mdns", "dht", "api"])
        self.assertFalse(service.running)
        self.assertFalse(any(child.running for child in IServiceCollection(service)))
        self.assertFalse(os.path.exists(data_dir))
        assert isinstance(service, Node)
        self.assertEqual(service.config.port, 3001)
        self.assertEqual(service.config.data_dir, data_dir)

    def test_no_api(self) -> None:
        service, data_dir = self.make("--no-api")
        self.assertEqual(child_names(service), ["storage", "market", "peers", "mdns", "dht"])
        self.assertFalse(os.path.exists(data_dir))

    def test_no_discovery(self) -> None:
        service, _ = self.make("--no-mdns", "--no-dht")
        self.assertEqual(child_names(service), ["storage", "market", "peers", "api"])

    def test_unparsed(self) -> None:
        self.assertRaises(AssertionError, tap.makeService, tap.Options())


class TacTests(SynchronousTestCase):
    """Every ``tac/*.tac`` loads through the plugin's Options and starts nothing."""

    def set_environ(self, values: Mapping[str, str]) -> None:
        """Make C{values} the only bitfi settings in os.environ until the test ends."""
        saved = dict(os.environ)

        def restore() -> None:
            os.environ.clear()
            os.environ.update(saved)

        self.addCleanup(restore)
        for names in ENVIRONMENT.values():
            for var in names:
                os.environ.pop(var, None)
        os.environ.pop("XDG_DATA_HOME", None)
        os.environ.update(values)

    def test_tac_files_exist(self) -> None:
        self.assertIn(os.path.join(ROOT, "tac", "node.tac"), TAC_FILES)

    def test_load(self) -> None:
        for path in TAC_FILES:
            data_dir = os.path.abspath(os.path.join(self.mktemp(), "node"))
            self.set_environ(
                {"BITFI_DATA_DIR": data_dir, "P2P_PORT": "3001",
                 "BOOTSTRAP_PEERS": "127.0.0.1:3000", "API_PORT": "0"}
            )  # fmt: skip
            before = reactor_activity()
            application = loadApplication(path, "python")
            self.assertEqual(reactor_activity(), before, path)
            services = list(IServiceCollection(application))
            self.assertEqual([s.name for s in services], ["node"], path)
            node = IServiceCollection(application).getServiceNamed("node")
            self.assertEqual(
                child_names(node), ["storage", "market", "peers", "mdns", "dht", "api"], path
            )
            self.assertFalse(node.running, path)
            self.assertFalse(os.path.exists(data_dir), path)
            assert isinstance(node, Node)
            self.assertEqual(node.config.port, 3001)
            self.assertEqual(str(node.config.bootstrap[0]), "127.0.0.1:3000")

    def test_bad_environment(self) -> None:
        for path in TAC_FILES:
            self.set_environ({"BITFI_DATA_DIR": self.mktemp(), "P2P_PORT": "not-a-port"})
            error = self.assertRaises(UsageError, loadApplication, path, "python")
            self.assertIn("--port", str(error), path)
            self.assertIn("$P2P_PORT", str(error), path)
