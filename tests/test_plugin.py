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
from bitfitech.testing import HANG_GUARD
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


class UsageErrorTests(SynchronousTestCase):
    """A bad option: under twistd, one line and a hint; parsed alone, a UsageError."""

    def test_under_twistd(self) -> None:
        from twisted.scripts.twistd import ServerOptions  # type: ignore[attr-defined]

        error = self.assertRaises(
            SystemExit, ServerOptions().parseOptions, ["-n", "bitfi", "--port", "70000"]
        )
        self.assertEqual(str(error.code), "twistd bitfi: error: --port: port must be an integer "
                                          "from 0 to 65535, not 70000\n"
                                          "try 'twistd bitfi --help'")  # fmt: skip

    def test_market_with_pair_under_twistd(self) -> None:
        from twisted.scripts.twistd import ServerOptions  # type: ignore[attr-defined]

        error = self.assertRaises(
            SystemExit,
            ServerOptions().parseOptions,
            ["-n", "bitfi", "--market", "BTC/USD", "--pair", "BTC/USD"],
        )
        self.assertEqual(str(error.code), "twistd bitfi: error: --pair is the one-market form "
                                          "of --market: give one or the other\n"
                                          "try 'twistd bitfi --help'")  # fmt: skip

    def test_alone(self) -> None:
        """Without twistd (a .tac, a test) the options raise, as Twisted's do."""
        options = tap.Options()
        error = self.assertRaises(UsageError, options.parseOptions, ["--max-peers", "x"])
        self.assertEqual(str(error), "--max-peers: not an integer: 'x'")


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
        self.assertEqual(
            child_names(service),
            ["storage", "market", "peers", "nat", "mdns", "dht", "nat-udp", "api"],
        )
        self.assertFalse(service.running)
        self.assertFalse(any(child.running for child in IServiceCollection(service)))
        self.assertFalse(os.path.exists(data_dir))
        assert isinstance(service, Node)
        self.assertEqual(service.config.port, 3001)
        self.assertEqual(service.config.data_dir, data_dir)

    def test_no_api(self) -> None:
        service, data_dir = self.make("--no-api")
        self.assertEqual(
            child_names(service), ["storage", "market", "peers", "nat", "mdns", "dht", "nat-udp"]
        )
        self.assertFalse(os.path.exists(data_dir))

    def test_no_discovery(self) -> None:
        service, _ = self.make("--no-mdns", "--no-dht")
        self.assertEqual(child_names(service), ["storage", "market", "peers", "nat", "api"])

    def test_one_market(self) -> None:
        """``--market`` with one market builds what ``--pair`` builds."""
        service, _ = self.make("--market", "eth/usd")
        assert isinstance(service, Node)
        self.assertEqual((service.config.pair, service.config.markets), ("ETH/USD", ("ETH/USD",)))
        by_pair, _ = self.make("--pair", "ETH/USD")
        assert isinstance(by_pair, Node)
        self.assertEqual(by_pair.config.with_changes(data_dir=service.config.data_dir),
                         service.config)  # fmt: skip
        self.assertEqual(child_names(service), child_names(by_pair))

    def test_several_markets(self) -> None:
        """``--market`` twice builds a node of two markets, one gossip each, the first first."""
        service, _ = self.make("--market", "BTC/USD", "--market", "eth/usd")
        assert isinstance(service, Node)
        self.assertEqual(service.config.markets, ("BTC/USD", "ETH/USD"))
        self.assertEqual(service.markets.names, ("BTC/USD", "ETH/USD"))
        self.assertEqual(list(service.gossips), ["BTC/USD", "ETH/USD"])
        self.assertIs(service.market, service.markets["BTC/USD"])
        self.assertEqual(
            child_names(service),
            ["storage", "market", "peers", "nat", "mdns", "dht", "nat-udp", "api"],
        )

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
        self.assertEqual(
            child_names(node),
            ["storage", "market", "peers", "nat", "mdns", "dht", "nat-udp", "api"],
        )
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

    def test_node_market(self) -> None:
        values = {"BITFI_DATA_DIR": os.path.abspath(self.mktemp()), "MARKETS": "eth/usd"}
        _, [node] = self.load("node.tac", values)
        self.assertEqual((node.config.pair, node.config.markets), ("ETH/USD", ("ETH/USD",)))
        values = {"BITFI_DATA_DIR": os.path.abspath(self.mktemp()), "MARKETS": "BTC/USD,eth/usd"}
        _, [node] = self.load("node.tac", values)
        self.assertEqual(node.markets.names, ("BTC/USD", "ETH/USD"))

    def test_local_cluster_witness_key_unusable(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "node2", KEY_FILE_NAME))  # a directory, not a key
        self.set_environ({"BITFI_DATA_DIR": base})
        path = os.path.join(ROOT, "tac", "local-cluster.tac")
        error = self.assertRaises(SystemExit, loadApplication, path, "python")
        self.assertIn(f"{path}: error: witness node2: ", str(error))

    def test_json_logs(self) -> None:
        for name, keys in (("node.tac", 0), ("local-cluster.tac", 3)):
            values = {"BITFI_DATA_DIR": os.path.abspath(self.mktemp()), "BITFI_LOG_FORMAT": "json"}
            application, _ = self.load(name, values, keys_made=keys)
            observer = application.getComponent(ILogObserver, None)
            self.assertIsInstance(observer, FileLogObserver, name)

    def test_bad_environment(self) -> None:
        """
        A bad variable stops the load: twistd lets the SystemExit through,
        and Python prints its text, the error and a hint, and exits 1.
        """
        cases = [
            ("node.tac", {"P2P_PORT": "not-a-port"}, ("--port", "$P2P_PORT")),
            ("node.tac", {"LOG_LEVEL": "loud"}, ("--log-level", "$LOG_LEVEL")),
            ("local-cluster.tac", {"LOG_LEVEL": "loud"}, ("--log-level", "$LOG_LEVEL")),
            ("local-cluster.tac", {"BASE_PORT": "x"}, ("$BASE_PORT",)),
            ("local-cluster.tac", {"BASE_PORT": "65000"}, ("$BASE_PORT",)),
            ("local-cluster.tac", {"MAX_PEERS": "2", "OUTBOUND_PEERS": "3"},
             ("$MAX_PEERS", "$OUTBOUND_PEERS")),
            ("node.tac", {"MARKETS": "BTC/USD", "EXCHANGE_PAIR": "ETH/USD"},
             ("$MARKETS", "$EXCHANGE_PAIR")),
            ("node.tac", {"MARKETS": "BTC/USD,btc/usd"}, ("--market", "$MARKETS", "twice")),
        ]  # fmt: skip
        for name, values, named in cases:
            self.set_environ({"BITFI_DATA_DIR": self.mktemp(), **values})
            path = os.path.join(ROOT, "tac", name)
            error = self.assertRaises(SystemExit, loadApplication, path, "python")
            first, hint = str(error.code).splitlines()
            self.assertTrue(first.startswith(f"{path}: error: "), first)
            for text in named:
                self.assertIn(text, first, (name, values))
            self.assertIn("'twistd bitfi --help'", hint)

    def test_cross_check_names_the_variables(self) -> None:
        """An error about options only names their variables too, but for the file's own."""
        self.set_environ({"P2P_PORT": "0"})
        path = os.path.join(ROOT, "tac", "node.tac")
        error = self.assertRaises(SystemExit, loadApplication, path, "python")
        self.assertEqual(str(error).splitlines()[0], (
            f"{path}: error: --data-dir is required with --port 0 (no port to name it after); "
            "in a .tac, --data-dir is $BITFI_DATA_DIR or $PEER_STORAGE_PATH, --port is $P2P_PORT"
        ))  # fmt: skip
        message = str(tap.tac_usage_error("x.tac", "--port clashes with --network", ["--port"]))
        self.assertEqual(message.splitlines()[0], "x.tac: error: --port clashes with "
                                                  "--network; in a .tac, --network is "
                                                  "$BITFI_NETWORK")  # fmt: skip


class ProcessTests(SynchronousTestCase):
    """
    twistd as a person runs it: a bad option or variable is two lines on
    stderr (the error, naming it, and a hint), exit status 1, no traceback,
    no help; nothing is started.
    """

    def twistd(self, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
        """Run ``twistd -n --pidfile= --logfile=- args`` from a checkout, in a new directory."""
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        ours = {var for names in ENVIRONMENT.values() for var in names} | {"BASE_PORT"}
        env = {k: v for k, v in os.environ.items() if k not in ours}
        env.update(PYTHONPATH=ROOT, XDG_DATA_HOME=home, **environ)
        # (python -m twisted is twist, not twistd)
        run = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
        command = [sys.executable, "-c", run, "-n", "--pidfile=", "--logfile=-", *args]
        return subprocess.run(
            command, cwd=home, env=env, capture_output=True, text=True, timeout=HANG_GUARD
        )

    def assert_brief(self, result: subprocess.CompletedProcess[str], *named: str) -> None:
        """C{result} is the error naming C{named}, and a hint naming ``--help``."""
        self.assertEqual((result.returncode, result.stdout), (1, ""), result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        error, hint = result.stderr.splitlines()
        for text in named:
            self.assertIn(text, error)
        self.assertIn("--help", hint)

    def test_bad_option(self) -> None:
        safe = ["--host", "127.0.0.1", "--api-host", "127.0.0.1", "--no-mdns", "--no-dht"]
        result = self.twistd("bitfi", *safe, "--port", "0")  # and no --data-dir
        self.assert_brief(result, "twistd bitfi: error: ", "--data-dir", "--port")
        self.assertEqual(result.stderr.splitlines()[1], "try 'twistd bitfi --help'")
        self.assert_brief(self.twistd("bitfi", *safe, "--port", "70000"), "--port", "70000")
        self.assert_brief(self.twistd("bitfi", "--frobnicate"), "--frobnicate")
        result = self.twistd("bitfi", *safe, "--market", "BTC/USD", "--market", "btc/usd")
        self.assert_brief(result, "twistd bitfi: error: --market", "named twice")

    def test_help(self) -> None:
        """``--help`` is where the whole help is."""
        result = self.twistd("bitfi", "--help")
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertIn("--max-handshakes-per-ip=", result.stdout)
        self.assertIn("--market=", result.stdout)

    def test_bad_variable_in_a_tac(self) -> None:
        safe = {"P2P_HOST": "127.0.0.1", "BITFI_NO_MDNS": "1", "BITFI_NO_DHT": "1"}
        node = os.path.join(ROOT, "tac", "node.tac")
        result = self.twistd("-y", node, P2P_PORT="x", **safe)
        self.assert_brief(result, f"{node}: error: ", "$P2P_PORT", "--port")
        result = self.twistd("-y", node, P2P_PORT="0", **safe)
        self.assert_brief(result, "$P2P_PORT", "$BITFI_DATA_DIR")
        cluster = os.path.join(ROOT, "tac", "local-cluster.tac")
        self.assert_brief(self.twistd("-y", cluster, BASE_PORT="x"), "$BASE_PORT")
