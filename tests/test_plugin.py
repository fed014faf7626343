"""Tests of the front doors: the ``twistd bitfi`` plugin, ``makeService`` and ``tac/*.tac``."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, cast

from twisted.application.service import (
    IService,
    IServiceCollection,
    IServiceMaker,
    loadApplication,
)
from twisted.logger import FileLogObserver, ILogObserver, LogLevel
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

import twisted.plugins
from bitfitech import tap
from bitfitech.address import PeerAddress
from bitfitech.config import ENVIRONMENT
from bitfitech.identity import KEY_FILE_NAME, load_or_create_identity
from bitfitech.node import Node
from tests.test_config import ENV_CASES

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
        for var in ("XDG_DATA_HOME", "BASE_PORT"):
            os.environ.pop(var, None)
        os.environ.update(values)

    def load(
        self, name: str, values: Mapping[str, str], keys_made: int = 0
    ) -> tuple[Any, list[Node]]:
        """
        Load C{tac/name} with C{values} as the environment; check it opened
        nothing, and made nothing on disk but the keys of the first
        C{keys_made} nodes (witnesses are named by their node ids).
        """
        self.set_environ(values)
        before = reactor_activity()
        application = loadApplication(os.path.join(ROOT, "tac", name), "python")
        self.assertEqual(reactor_activity(), before, name)
        nodes = list(IServiceCollection(application))
        for number, node in enumerate(nodes):
            assert isinstance(node, Node)
            self.assertFalse(node.running, name)
            made = sorted(os.listdir(node.config.data_dir)) if number < keys_made else None
            if made is None:
                self.assertFalse(os.path.exists(node.config.data_dir), name)
            else:
                self.assertEqual(made, [KEY_FILE_NAME], name)
        return application, cast(list[Node], nodes)

    def test_tac_files_exist(self) -> None:
        names = [os.path.basename(path) for path in TAC_FILES]
        self.assertEqual(names, ["local-cluster.tac", "node.tac"])

    def test_node(self) -> None:
        data_dir = os.path.abspath(os.path.join(self.mktemp(), "node"))
        application, [node] = self.load(
            "node.tac",
            {"BITFI_DATA_DIR": data_dir, "P2P_PORT": "3001",
             "BOOTSTRAP_PEERS": "127.0.0.1:3000", "API_PORT": "0", "LOG_LEVEL": "debug"},
        )  # fmt: skip
        self.assertEqual(node.name, "node")
        self.assertEqual(child_names(node), ["storage", "market", "peers", "mdns", "dht", "api"])
        self.assertEqual(node.config.port, 3001)
        self.assertEqual(node.config.data_dir, data_dir)
        self.assertEqual(str(node.config.bootstrap[0]), "127.0.0.1:3000")
        self.assertEqual(node.config.log_level, LogLevel.debug)
        self.assertIsNone(application.getComponent(ILogObserver, None))

    def test_node_honours_every_variable(self) -> None:
        for var, (raw, field, expected) in ENV_CASES.items():
            if var == "PEER_STORAGE_PATH":
                continue  # BITFI_DATA_DIR, set here, wins over it
            values = {"BITFI_DATA_DIR": os.path.abspath(self.mktemp()), var: raw}
            _, [node] = self.load("node.tac", values)
            self.assertEqual(getattr(node.config, field), expected, var)

    def test_local_cluster(self) -> None:
        base = os.path.abspath(self.mktemp())
        application, nodes = self.load(
            "local-cluster.tac", {"BITFI_DATA_DIR": base, "BASE_PORT": "4100"}, keys_made=3
        )
        self.assertEqual([node.name for node in nodes], ["node1", "node2", "node3", "node4"])
        self.assertEqual([n.config.port for n in nodes], [4100, 4101, 4102, 4103])
        self.assertEqual([n.config.api_port for n in nodes], [14100, 14101, 14102, 14103])
        self.assertEqual([n.config.dht_listen_port for n in nodes], [4100, 4101, 4102, 4103])
        self.assertEqual(
            [n.config.data_dir for n in nodes],
            [os.path.join(base, f"node{i}") for i in (1, 2, 3, 4)],
        )
        seed = (PeerAddress("127.0.0.1", 4100),)
        self.assertEqual([n.config.bootstrap for n in nodes], [(), seed, seed, seed])
        dht_seed = (("127.0.0.1", 4100),)
        self.assertEqual(
            [n.config.dht_bootstrap for n in nodes], [(), dht_seed, dht_seed, dht_seed]
        )
        for node in nodes:
            self.assertEqual((node.config.host, node.config.api_host), ("127.0.0.1",) * 2)
            self.assertFalse(node.config.mdns_enabled)
            self.assertEqual(child_names(node), ["storage", "market", "peers", "dht", "api"])
            self.assertEqual(node.config.max_inbound_per_ip, 64)
        self.assertIsNone(application.getComponent(ILogObserver, None))

    def test_local_cluster_witnesses(self) -> None:
        """The first three nodes are the witnesses, named by the keys made in their directories."""
        base = os.path.abspath(self.mktemp())
        env = {"BITFI_DATA_DIR": base, "BASE_PORT": "4100", "WITNESSES": "ignored"}
        _, nodes = self.load("local-cluster.tac", env, keys_made=3)
        witnesses = tuple(
            PeerAddress("127.0.0.1", 4100 + i, load_or_create_identity(n.config.data_dir).node_id)
            for i, n in enumerate(nodes[:3])
        )
        self.assertEqual({n.config.witnesses for n in nodes}, {witnesses})
        self.assertEqual(nodes[0].config.witness_set.n, 3)
        self.assertEqual(nodes[0].config.witness_set.ordering, "fair")
        # Loaded again, the cluster keeps its keys, and so its witness set.
        _, again = self.load("local-cluster.tac", env, keys_made=3)
        self.assertEqual(again[3].config.witnesses, witnesses)

    def test_local_cluster_defaults(self) -> None:
        xdg = os.path.abspath(self.mktemp())
        _, nodes = self.load(
            "local-cluster.tac", {"XDG_DATA_HOME": xdg, "EXCHANGE_PAIR": "eth/usd"}, keys_made=3
        )
        self.assertEqual([n.config.port for n in nodes], [3100, 3101, 3102, 3103])
        self.assertEqual(
            nodes[0].config.data_dir, os.path.join(xdg, "bitfi", "local-cluster-3100", "node1")
        )
        self.assertEqual({n.config.pair for n in nodes}, {"ETH/USD"})

    def test_local_cluster_witness_key_unusable(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "node2", KEY_FILE_NAME))  # a directory, not a key
        self.set_environ({"BITFI_DATA_DIR": base})
        path = os.path.join(ROOT, "tac", "local-cluster.tac")
        error = self.assertRaises(UsageError, loadApplication, path, "python")
        self.assertIn("witness node2: ", str(error))

    def test_json_logs(self) -> None:
        for name, keys in (("node.tac", 0), ("local-cluster.tac", 3)):
            values = {"BITFI_DATA_DIR": os.path.abspath(self.mktemp()), "BITFI_LOG_FORMAT": "json"}
            application, _ = self.load(name, values, keys_made=keys)
            observer = application.getComponent(ILogObserver, None)
            self.assertIsInstance(observer, FileLogObserver, name)

    def test_bad_environment(self) -> None:
        cases = [
            ("node.tac", {"P2P_PORT": "not-a-port"}, ("--port", "$P2P_PORT")),
            ("node.tac", {"LOG_LEVEL": "loud"}, ("--log-level", "$LOG_LEVEL")),
            ("local-cluster.tac", {"LOG_LEVEL": "loud"}, ("--log-level", "$LOG_LEVEL")),
            ("local-cluster.tac", {"BASE_PORT": "x"}, ("$BASE_PORT",)),
            ("local-cluster.tac", {"BASE_PORT": "65000"}, ("$BASE_PORT",)),
        ]
        for name, values, named in cases:
            self.set_environ({"BITFI_DATA_DIR": self.mktemp(), **values})
            path = os.path.join(ROOT, "tac", name)
            error = self.assertRaises(UsageError, loadApplication, path, "python")
            for text in named:
                self.assertIn(text, str(error), (name, values))
