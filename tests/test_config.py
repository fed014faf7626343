"""Tests for :mod:`bitfitech.config` and :class:`bitfitech.tap.Options`: argv and env to config."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogLevel
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.address import PeerAddress
from bitfitech.config import (
    ENVIRONMENT,
    MAX_MARKETS,
    ConfigError,
    NodeConfig,
    check_markets,
    coerce_flag,
    coerce_markets,
    coerce_outbound,
    config_from_options,
    default_api_port,
    default_data_dir,
    market_slug,
    parse_market_slug,
)
from bitfitech.tap import Options
from bitfitech.witnesses import WitnessSet

XDG = "/xdg-data"
API_TOKEN = "cli-token-0123456789abcdef"
NODE_ID = "ab" * 20
WITNESS_IDS = ("0a" * 20, "0b" * 20, "0c" * 20)
#: files that exist, for the certificate options (parsing only checks that
#: the file exists; the node reads it at start, see tests/integration/test_ca_trust.py)
SOME_FILE = os.path.abspath(__file__)
OTHER_FILE = os.path.join(os.path.dirname(SOME_FILE), "__init__.py")
#: more markets than a node may serve
TOO_MANY = tuple(f"M{i}/USD" for i in range(MAX_MARKETS + 1))


def parse(args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> NodeConfig:
    """Parse C{args} with C{env} as the whole environment (default: only XDG_DATA_HOME)."""
    options = Options()
    options.environ = dict({"XDG_DATA_HOME": XDG} if env is None else env)
    options.parseOptions(list(args))
    assert options.config is not None
    return options.config


def with_xdg(**env: str) -> dict[str, str]:
    """An environment holding C{env} and XDG_DATA_HOME."""
    return {"XDG_DATA_HOME": XDG, **env}


class DefaultTests(SynchronousTestCase):
    """What a node gets when nothing is said."""

    def test_defaults(self) -> None:
        config = parse()
        self.assertEqual(config.port, 3000)
        self.assertEqual(config.api_port, 13000)
        self.assertEqual(config.outbound, 8)
        self.assertEqual(config.max_peers, 50)
        self.assertEqual(config.max_inbound, 42)
        self.assertEqual(config.data_dir, os.path.join(XDG, "bitfi", "main-3000"))
        self.assertEqual((config.host, config.bind_hosts), ("", ("0.0.0.0", "::")))
        self.assertEqual(config.api_host, "127.0.0.1")
        self.assertTrue(config.api_enabled)
        self.assertEqual(config.network, "main")
        self.assertEqual(config.pair, "BTC/USD")
        self.assertEqual(config.bootstrap, ())
        self.assertEqual(config.log_level, LogLevel.info)
        self.assertEqual(config.ban_duration, 86400.0)
        self.assertEqual((config.max_inbound_per_ip, config.max_handshakes_per_ip), (8, 4))
        self.assertEqual((config.api_max_connections, config.api_idle_timeout), (256, 60.0))

    def test_ban_duration_bounds(self) -> None:
        self.assertEqual(parse(["--ban-duration", "2592000"]).ban_duration, 30 * 86400.0)
        self.assertEqual(parse(["--ban-duration", "0.5"]).ban_duration, 0.5)
        self.assertEqual(parse([], with_xdg(BITFI_BAN_DURATION="0")).ban_duration, 0.0)

    def test_default_data_dir_without_xdg(self) -> None:
        config = parse(env={})
        expected = os.path.join(os.path.expanduser("~"), ".local", "share", "bitfi", "main-3000")
        self.assertEqual(config.data_dir, expected)
        self.assertEqual(default_data_dir("main", 3000, {"XDG_DATA_HOME": ""}), expected)

    def test_nodes_on_one_machine_do_not_collide(self) -> None:
        configs = [parse(["--port", str(port)]) for port in (3001, 3002, 3003)]
        self.assertEqual([c.api_port for c in configs], [13001, 13002, 13003])
        self.assertEqual(
            [c.data_dir for c in configs],
            [os.path.join(XDG, "bitfi", f"main-{port}") for port in (3001, 3002, 3003)],
        )
        from_env = [parse(env=with_xdg(P2P_PORT=str(p))) for p in (3001, 3002, 3003)]
        self.assertEqual(from_env, configs)

    def test_network_names_data_dir(self) -> None:
        config = parse(["--network", "testnet", "-p", "3005"])
        self.assertEqual(config.data_dir, os.path.join(XDG, "bitfi", "testnet-3005"))
        self.assertEqual(config.api_port, 13005)

    def test_default_api_port(self) -> None:
        self.assertEqual(default_api_port(0), 0)
        self.assertEqual(default_api_port(3000), 13000)
        self.assertEqual(default_api_port(55535), 65535)
        self.assertEqual(default_api_port(55536), 45536)
        self.assertEqual(default_api_port(65535), 55535)

    def test_explicit_api_port_kept(self) -> None:
        self.assertEqual(parse(["--port", "3001", "--api-port", "8080"]).api_port, 8080)
        self.assertEqual(parse(["--api-port", "0"]).api_port, 0)

    def test_port_zero_needs_data_dir(self) -> None:
        error = self.assertRaises(UsageError, parse, ["--port", "0"])
        self.assertIn("--data-dir", str(error))
        self.assertRaises(UsageError, parse, [], with_xdg(P2P_PORT="0"))

    def test_port_zero_with_data_dir(self) -> None:
        config = parse(["--port", "0", "--data-dir", "/srv/node"])
        self.assertEqual((config.port, config.api_port, config.data_dir), (0, 0, "/srv/node"))
        self.assertEqual(config.dht_listen_port, 0)
        config = parse(env={"P2P_PORT": "0", "BITFI_DATA_DIR": "/srv/node"})
        self.assertEqual(config.data_dir, "/srv/node")


#: environment variable -> (value, NodeConfig field, expected field value)
ENV_CASES: dict[str, tuple[str, str, object]] = {
    "P2P_PORT": ("3007", "port", 3007),
    "P2P_HOST": ("::1", "host", "::1"),
    "BITFI_NAT": ("UPnP", "nat", "upnp"),
    "BITFI_NAT_GATEWAY": ("192.168.1.1", "nat_gateway", "192.168.1.1"),
    "BOOTSTRAP_PEERS": (
        f"127.0.0.1:3000, [::1]:3001,{NODE_ID}@seed.example:3002",
        "bootstrap",
        (
            PeerAddress("127.0.0.1", 3000),
            PeerAddress("::1", 3001),
            PeerAddress("seed.example", 3002, NODE_ID),
        ),
    ),
    "WITNESSES": (
        f"{WITNESS_IDS[1]}@10.0.0.2:3000, {WITNESS_IDS[0]}@[::1]:3001,{WITNESS_IDS[2]}@h.example:1",
        "witnesses",
        (
            PeerAddress("10.0.0.2", 3000, WITNESS_IDS[1]),
            PeerAddress("::1", 3001, WITNESS_IDS[0]),
            PeerAddress("h.example", 1, WITNESS_IDS[2]),
        ),
    ),
    "MAX_PEERS": ("20", "max_peers", 20),
    "OUTBOUND_PEERS": ("3", "outbound", 3),
    "BITFI_DATA_DIR": ("/srv/bitfi", "data_dir", "/srv/bitfi"),
    "PEER_STORAGE_PATH": ("/srv/peers", "data_dir", "/srv/peers"),
    "BITFI_NETWORK": ("testnet", "network", "testnet"),
    "EXCHANGE_PAIR": ("eth/usdt", "pair", "ETH/USDT"),
    "MARKETS": (" xmr/btc, ", "markets", ("XMR/BTC",)),
    "API_PORT": ("8080", "api_port", 8080),
    "API_HOST": ("0.0.0.0", "api_host", "0.0.0.0"),
    "BITFI_API_TOKEN": (API_TOKEN, "api_token", API_TOKEN),
    "BITFI_API_MAX_CONNECTIONS": ("32", "api_max_connections", 32),
    "BITFI_API_IDLE_TIMEOUT": ("7.5", "api_idle_timeout", 7.5),
    "BITFI_NO_API": ("1", "api_enabled", False),
    "LOG_LEVEL": ("DEBUG", "log_level", LogLevel.debug),
    "BITFI_LOG_FORMAT": ("JSON", "log_format", "json"),
    "BITFI_SETTLE_AFTER": ("2.5", "settle_after", 2.5),
    "BITFI_NO_MDNS": ("yes", "mdns_enabled", False),
    "MDNS_INTERFACE": ("127.0.0.1", "mdns_interface", "127.0.0.1"),
    "BITFI_NO_DHT": ("1", "dht_enabled", False),
    "DHT_PORT": ("6881", "dht_port", 6881),
    "DHT_BOOTSTRAP": (
        "127.0.0.1:6881, [::1]:6882,dht.example:6883",
        "dht_bootstrap",
        (("127.0.0.1", 6881), ("::1", 6882), ("dht.example", 6883)),
    ),
    "BITFI_INSECURE_PLAIN_TCP": ("1", "plain_tcp", True),
    "BITFI_BAN_DURATION": ("3600", "ban_duration", 3600.0),
    "BITFI_MAX_INBOUND_PER_IP": ("2", "max_inbound_per_ip", 2),
    "BITFI_MAX_HANDSHAKES_PER_IP": ("1", "max_handshakes_per_ip", 1),
    "BITFI_CA_BUNDLE": (SOME_FILE, "ca_bundle", SOME_FILE),
    "BITFI_CERTIFICATE": (SOME_FILE, "certificate", SOME_FILE),
}

#: option -> (command-line value, field expected from it, environment variable, env value)
CLI_CASES: dict[str, tuple[str, object, str, str]] = {
    "port": ("3009", 3009, "P2P_PORT", "3007"),
    "host": ("127.0.0.2", "127.0.0.2", "P2P_HOST", "::1"),
    "max-peers": ("30", 30, "MAX_PEERS", "20"),
    "outbound": ("4", 4, "OUTBOUND_PEERS", "3"),
    "data-dir": ("/cli/dir", "/cli/dir", "BITFI_DATA_DIR", "/env/dir"),
    "network": ("regtest", "regtest", "BITFI_NETWORK", "testnet"),
    "pair": ("XMR/BTC", "XMR/BTC", "EXCHANGE_PAIR", "ETH/USD"),
    "api-port": ("9090", 9090, "API_PORT", "8080"),
    "api-host": ("::1", "::1", "API_HOST", "0.0.0.0"),
    "api-token": (API_TOKEN, API_TOKEN, "BITFI_API_TOKEN", "env-token-0123456789abcdef"),
    "api-max-connections": ("1000", 1000, "BITFI_API_MAX_CONNECTIONS", "8"),
    "api-idle-timeout": ("1", 1.0, "BITFI_API_IDLE_TIMEOUT", "600"),
    "log-level": ("error", LogLevel.error, "LOG_LEVEL", "debug"),
    "log-format": ("json", "json", "BITFI_LOG_FORMAT", "text"),
    "settle-after": ("0.5", 0.5, "BITFI_SETTLE_AFTER", "30"),
    "mdns-interface": ("10.0.0.5", "10.0.0.5", "MDNS_INTERFACE", "127.0.0.1"),
    "nat": ("off", "off", "BITFI_NAT", "natpmp"),
    "nat-gateway": ("fd00::1", "fd00::1", "BITFI_NAT_GATEWAY", "10.0.0.1"),
    "dht-port": ("0", 0, "DHT_PORT", "6881"),
    "ban-duration": ("0", 0.0, "BITFI_BAN_DURATION", "60"),
    "max-inbound-per-ip": ("64", 64, "BITFI_MAX_INBOUND_PER_IP", "2"),
    "max-handshakes-per-ip": ("32", 32, "BITFI_MAX_HANDSHAKES_PER_IP", "1"),
    "ca-bundle": (SOME_FILE, SOME_FILE, "BITFI_CA_BUNDLE", OTHER_FILE),
    "certificate": (OTHER_FILE, OTHER_FILE, "BITFI_CERTIFICATE", SOME_FILE),
}

#: option -> bad values (each rejected from the command line and the environment)
BAD_VALUES: dict[str, tuple[str, ...]] = {
    "port": ("x", "-1", "65536", "3000.5"),
    "host": ("bad_host", "a:b", ""),
    "max-peers": ("0", "10001", "many"),
    "outbound": ("-1", "10001", "some"),
    "data-dir": ("", "  "),
    "network": ("Main", "", "a b", "-x"),
    "pair": ("BTC", "BTC-USD", "BTC/", "/USD"),
    "market": ("BTC", "BTC-USD", "BTC/USD,ETH", "BTC/USD,btc/usd", "", ",", ",".join(TOO_MANY)),
    "api-port": ("x", "70000"),
    "api-host": ("no_such host",),
    "api-token": ("", "short", "has space in it 0123456789", "x" * 257, "t\u00f6ken-0123456789abc"),
    "api-max-connections": ("0", "10001", "-1", "many", "2.5"),
    "api-idle-timeout": ("0", "0.5", "3601", "-1", "nan", "inf", "soon", ""),
    "log-level": ("loud", ""),
    "nat": ("on", "pcp", ""),
    "nat-gateway": ("router.lan", "10.0.0", ""),
    "log-format": ("xml", "", "json lines"),
    "settle-after": ("-1", "86401", "soon", "nan", "inf", ""),
    "bootstrap": ("nope", "127.0.0.1:0", "::1:3000", "xyz@127.0.0.1:3000"),
    "witness": (
        "127.0.0.1:3000",
        "nope",
        f"{NODE_ID}@127.0.0.1:0",
        f"{NODE_ID}@10.0.0.1:3000,{NODE_ID}@10.0.0.2:3000",
        f"{WITNESS_IDS[0]}@10.0.0.1:3000,{WITNESS_IDS[1]}@10.0.0.1:3000",
        ",".join(f"{i:040x}@10.0.0.1:{3000 + i}" for i in range(32)),
    ),
    "mdns-interface": ("eth0", "all", "", "127.0.0.256", "[::1]:3000", "fe80::1%bad zone"),
    "dht-port": ("x", "65536", "-1"),
    "dht-bootstrap": ("nope", "127.0.0.1:0", f"{NODE_ID}@127.0.0.1:6881"),
    "ban-duration": ("-1", "2592001", "forever", "nan", "inf", ""),
    "max-inbound-per-ip": ("0", "10001", "-1", "lots"),
    "max-handshakes-per-ip": ("0", "10001", "2.5"),
    "ca-bundle": ("", "/no/such/bundle.pem", os.path.dirname(SOME_FILE)),
    "certificate": (" ", "/no/such/node.pem", "/"),
}


class EnvironmentTests(SynchronousTestCase):
    """Each option falls back to its environment variable; the command line wins."""

    def test_every_variable_is_tested(self) -> None:
        variables = {var for names in ENVIRONMENT.values() for var in names}
        self.assertEqual(variables, set(ENV_CASES))

    def test_each_variable(self) -> None:
        for var, (value, field, expected) in ENV_CASES.items():
            config = parse(env=with_xdg(**{var: value}))
            self.assertEqual(getattr(config, field), expected, var)
            # Nothing else moved off its default.
            others = {name for _, name, _ in ENV_CASES.values()} - {field}
            if field in ("port", "network"):
                others -= {"data_dir", "api_port"}
            if field in ("pair", "markets"):
                others -= {"pair", "markets"}  # one follows the other
            for name in others:
                self.assertEqual(getattr(config, name), getattr(parse(), name), (var, name))

    def test_bitfi_data_dir_wins(self) -> None:
        config = parse(env={"BITFI_DATA_DIR": "/a", "PEER_STORAGE_PATH": "/b"})
        self.assertEqual(config.data_dir, "/a")

    def test_data_dir_expanded(self) -> None:
        config = parse(env={"BITFI_DATA_DIR": "~/bitfi-node"})
        self.assertEqual(config.data_dir, os.path.expanduser("~/bitfi-node"))
        config = parse(["--data-dir", "rel/node"])
        self.assertEqual(config.data_dir, os.path.abspath("rel/node"))

    def test_no_api_flag_values(self) -> None:
        for value, enabled in [("1", False), ("true", False), ("YES", False), ("on", False),
                               ("0", True), ("false", True), ("no", True), ("", True)]:  # fmt: skip
            self.assertEqual(parse(env=with_xdg(BITFI_NO_API=value)).api_enabled, enabled, value)
        self.assertFalse(parse(["--no-api"]).api_enabled)
        self.assertFalse(parse(["--no-api"], with_xdg(BITFI_NO_API="0")).api_enabled)
        self.assertRaises(ValueError, coerce_flag, "maybe")

    def test_command_line_wins(self) -> None:
        for option, (cli, expected, var, env_value) in CLI_CASES.items():
            env = with_xdg(**{var: env_value})
            config = parse([f"--{option}", cli], env)
            field = option.replace("-", "_")
            self.assertEqual(getattr(config, field), expected, option)

    def test_command_line_wins_over_bad_env(self) -> None:
        env = with_xdg(P2P_PORT="bogus", BOOTSTRAP_PEERS="bogus", LOG_LEVEL="bogus")
        config = parse(["--port", "3001", "-b", "h:1", "--log-level", "warning"], env)
        self.assertEqual(config.port, 3001)
        self.assertEqual(config.bootstrap, (PeerAddress("h", 1),))
        self.assertEqual(config.log_level, LogLevel.warn)

    def test_bootstrap_command_line_replaces_env(self) -> None:
        config = parse(["--bootstrap", "10.0.0.1:3000"], with_xdg(BOOTSTRAP_PEERS="10.0.0.9:1"))
        self.assertEqual(config.bootstrap, (PeerAddress("10.0.0.1", 3000),))

    def test_bootstrap_repeatable_and_comma_lists(self) -> None:
        config = parse(["-b", "a.example:1,b.example:2", "--bootstrap", "[::1]:3", "-b", "c:4"])
        self.assertEqual(
            config.bootstrap,
            (
                PeerAddress("a.example", 1),
                PeerAddress("b.example", 2),
                PeerAddress("::1", 3),
                PeerAddress("c", 4),
            ),
        )

    def test_dht_bootstrap_repeatable_and_replaces_env(self) -> None:
        env = with_xdg(DHT_BOOTSTRAP="10.0.0.9:1")
        config = parse(["--dht-bootstrap", "a.example:1,[::1]:2", "--dht-bootstrap", "c:3"], env)
        self.assertEqual(config.dht_bootstrap, (("a.example", 1), ("::1", 2), ("c", 3)))

    def test_witnesses(self) -> None:
        w0, w1, w2 = (f"{node_id}@10.0.0.{i}:3000" for i, node_id in enumerate(WITNESS_IDS))
        config = parse(["--witness", w2, "--witness", f"{w0},{w1}"])
        self.assertEqual(
            config.witnesses,
            (
                PeerAddress("10.0.0.2", 3000, WITNESS_IDS[2]),
                PeerAddress("10.0.0.0", 3000, WITNESS_IDS[0]),
                PeerAddress("10.0.0.1", 3000, WITNESS_IDS[1]),
            ),
        )
        self.assertEqual(config.witness_set, WitnessSet.of(WITNESS_IDS))
        self.assertEqual(config.witness_set.ids, WITNESS_IDS)
        from_env = parse([], with_xdg(WITNESSES=f"{w2}, {w0},{w1}"))
        self.assertEqual(from_env, config)

    def test_no_witnesses(self) -> None:
        config = parse()
        self.assertEqual(config.witnesses, ())
        self.assertFalse(config.witness_set)
        self.assertEqual(config.witness_set.ordering, "author")
        self.assertEqual(parse([], with_xdg(WITNESSES="")).witnesses, ())

    def test_witness_command_line_replaces_env(self) -> None:
        env = with_xdg(WITNESSES=f"{WITNESS_IDS[0]}@10.0.0.9:1,bogus")
        config = parse(["--witness", f"{WITNESS_IDS[1]}@10.0.0.1:3000"], env)
        self.assertEqual(config.witnesses, (PeerAddress("10.0.0.1", 3000, WITNESS_IDS[1]),))

    def test_even_number_of_witnesses(self) -> None:
        """Two witnesses are refused once the options are complete (n = 2f + 1)."""
        w0, w1 = (f"{node_id}@10.0.0.{i}:3000" for i, node_id in enumerate(WITNESS_IDS[:2]))
        error = self.assertRaises(UsageError, parse, ["--witness", w0, "--witness", w1])
        self.assertIn("odd number of witnesses", str(error))
        error = self.assertRaises(UsageError, parse, [], with_xdg(WITNESSES=f"{w0},{w1}"))
        self.assertIn("odd number of witnesses", str(error))

    def test_witness_must_be_pinned(self) -> None:
        error = self.assertRaises(UsageError, parse, ["--witness", "10.0.0.1:3000"])
        self.assertIn("--witness: a witness must be pinned to its node id", str(error))
        self.assertIn("NODEID@host:port", str(error))
        error = self.assertRaises(UsageError, parse, [], with_xdg(WITNESSES="10.0.0.1:3000"))
        self.assertIn("--witness (from $WITNESSES): a witness must be pinned", str(error))

    def test_witness_named_twice(self) -> None:
        first, again = f"{NODE_ID}@10.0.0.1:3000", f"{NODE_ID}@10.0.0.2:3000"
        for args in (["--witness", first, "--witness", again], ["--witness", f"{first},{again}"]):
            error = self.assertRaises(UsageError, parse, args)
            self.assertIn(f"--witness: witness {NODE_ID} is named twice", str(error))
        env = with_xdg(WITNESSES=f"{first},{again}")
        error = self.assertRaises(UsageError, parse, [], env)
        self.assertIn(f"witness {NODE_ID} is named twice", str(error))
        error = self.assertRaises(
            ConfigError, NodeConfig, data_dir="/d",
            witnesses=(PeerAddress("10.0.0.1", 1, NODE_ID), PeerAddress("10.0.0.2", 1, NODE_ID)),
        )  # fmt: skip
        self.assertIn("--witness: witness", str(error))
        self.assertRaises(ConfigError, NodeConfig, data_dir="/d",
                          witnesses=(PeerAddress("10.0.0.1", 1),))  # fmt: skip

    def test_discovery_flags(self) -> None:
        config = parse(["--no-mdns", "--no-dht"], with_xdg(BITFI_NO_MDNS="0", BITFI_NO_DHT="0"))
        self.assertFalse(config.mdns_enabled)
        self.assertFalse(config.dht_enabled)

    def test_tls_unless_insecure_plain_tcp(self) -> None:
        self.assertFalse(parse().plain_tcp)
        self.assertFalse(NodeConfig(data_dir="/d").plain_tcp)
        self.assertTrue(parse(["--insecure-plain-tcp"]).plain_tcp)
        env = with_xdg(BITFI_INSECURE_PLAIN_TCP="0")
        self.assertTrue(parse(["--insecure-plain-tcp"], env).plain_tcp)
        self.assertFalse(parse([], env).plain_tcp)

    def test_certificate_options(self) -> None:
        self.assertEqual((parse().ca_bundle, parse().certificate), (None, None))
        config = parse(["--ca-bundle", SOME_FILE, "--certificate", OTHER_FILE])
        self.assertEqual((config.ca_bundle, config.certificate), (SOME_FILE, OTHER_FILE))
        error = self.assertRaises(UsageError, parse, ["--ca-bundle", "/no/such/bundle.pem"])
        self.assertIn("no such file: /no/such/bundle.pem", str(error))

    def test_certificate_options_need_tls(self) -> None:
        for option in ("--ca-bundle", "--certificate"):
            error = self.assertRaises(
                UsageError, parse, [option, SOME_FILE, "--insecure-plain-tcp"]
            )
            self.assertIn(f"{option} needs TLS", str(error))
        env = with_xdg(BITFI_INSECURE_PLAIN_TCP="1", BITFI_CA_BUNDLE=SOME_FILE)
        self.assertRaises(UsageError, parse, [], env)
        self.assertRaises(ConfigError, NodeConfig, data_dir="/d", plain_tcp=True,
                          certificate=SOME_FILE)  # fmt: skip

    def test_nat_off_on_loopback(self) -> None:
        """No router forwards to a loopback address: --nat auto is off there."""
        self.assertEqual(parse([]).nat_mode, "auto")
        self.assertEqual(parse(["--host", "127.0.0.1"]).nat_mode, "off")
        self.assertEqual(parse(["--host", "::1", "--nat", "upnp"]).nat_mode, "upnp")
        self.assertEqual(parse(["--host", "192.0.2.7", "--nat", "natpmp"]).nat_mode, "natpmp")
        self.assertEqual(parse(["--nat", "off"]).nat_mode, "off")
        self.assertRaises(ConfigError, NodeConfig, data_dir="/d", nat="pcp")

    def test_ipv6(self) -> None:
        config = parse(["--host", "::1", "--bootstrap", "[::1]:3000", "--api-host", "[::1]"])
        self.assertEqual((config.host, config.bind_hosts), ("::1", ("::1",)))
        self.assertEqual(config.api_host, "::1")
        self.assertEqual(config.bootstrap, (PeerAddress("::1", 3000),))


def markets_of(
    env: Mapping[str, str], markets: Sequence[str] | None = None, pair: str | None = None
) -> tuple[str, ...]:
    """The markets that C{config_from_options} picks: not held to one, as the options are."""
    given = {"pair": pair, "data-dir": "/d"}
    return config_from_options(given, None, False, env, markets=markets).markets


class MarketOptionTests(SynchronousTestCase):
    """``--market`` and ``$MARKETS``; ``--pair`` and ``$EXCHANGE_PAIR``: their one-market form."""

    def test_default(self) -> None:
        config = parse()
        self.assertEqual((config.pair, config.markets), ("BTC/USD", ("BTC/USD",)))

    def test_market_is_pair(self) -> None:
        """One market given either way makes the same config."""
        config = parse(["--market", "eth/usd"])
        self.assertEqual((config.pair, config.markets), ("ETH/USD", ("ETH/USD",)))
        self.assertEqual(config, parse(["--pair", "ETH/USD"]))
        self.assertEqual(config, parse(["--market=ETH/USD,"]))
        self.assertEqual(config, parse([], with_xdg(MARKETS="ETH/USD")))
        self.assertEqual(config, parse([], with_xdg(EXCHANGE_PAIR="ETH/USD")))
        self.assertEqual(config, parse([], with_xdg(MARKETS="eth/usd", EXCHANGE_PAIR="ETH/USD")))

    def test_precedence(self) -> None:
        """--market, else --pair, else $MARKETS, else $EXCHANGE_PAIR, else the default."""
        both = {"MARKETS": "ltc/usd,eth/usd", "EXCHANGE_PAIR": "ltc/usd"}
        cases: list[tuple[Sequence[str] | None, str | None, dict[str, str], tuple[str, ...]]] = [
            (None, None, {}, ("BTC/USD",)),
            (None, None, {"EXCHANGE_PAIR": "eth/usd"}, ("ETH/USD",)),
            (None, None, {"MARKETS": "xmr/btc, eth/usd"}, ("XMR/BTC", "ETH/USD")),
            (None, None, both, ("LTC/USD", "ETH/USD")),
            (None, "sol/usd", both, ("SOL/USD",)),
            (["sol/usd", "btc/eur"], None, both, ("SOL/USD", "BTC/EUR")),
            # the command line wins over bad variables, which it does not read
            (None, "sol/usd", {"MARKETS": "bogus", "EXCHANGE_PAIR": "bogus"}, ("SOL/USD",)),
            (["sol/usd"], None, {"MARKETS": "bogus", "EXCHANGE_PAIR": "bogus"}, ("SOL/USD",)),
        ]
        for markets, pair, env, expected in cases:
            self.assertEqual(markets_of(env, markets, pair), expected, (markets, pair, env))
            config = config_from_options({"pair": pair, "data-dir": "/d"}, None, False, env,
                                         markets=markets)  # fmt: skip
            self.assertEqual(config.pair, expected[0])

    def test_market_with_pair(self) -> None:
        for args in (["--market", "BTC/USD", "--pair", "BTC/USD"],
                     ["--pair", "ETH/USD", "--market", "BTC/USD"]):  # fmt: skip
            error = self.assertRaises(UsageError, parse, args)
            self.assertEqual(
                str(error), "--pair is the one-market form of --market: give one or the other"
            )

    def test_markets_with_exchange_pair(self) -> None:
        """The two variables may both be set only if they agree on the first market."""
        env = with_xdg(MARKETS="BTC/USD", EXCHANGE_PAIR="ETH/USD")
        error = self.assertRaises(UsageError, parse, [], env)
        self.assertEqual(
            str(error),
            "$EXCHANGE_PAIR is ETH/USD but $MARKETS begins with BTC/USD: "
            "$EXCHANGE_PAIR is the one-market form of $MARKETS; give one or the other",
        )
        env = {"MARKETS": "eth/usd,btc/usd", "EXCHANGE_PAIR": "btc/usd"}
        self.assertRaises(ConfigError, markets_of, env)
        # a bad $EXCHANGE_PAIR is bad beside $MARKETS too
        error = self.assertRaises(UsageError, parse, [], with_xdg(MARKETS="BTC/USD",
                                                                  EXCHANGE_PAIR="BTC"))  # fmt: skip
        self.assertIn("--pair (from $EXCHANGE_PAIR): invalid pair", str(error))

    def test_duplicates(self) -> None:
        for args in (["--market", "BTC/USD", "--market", "btc/usd"],
                     ["--market", "BTC/USD,ETH/USD", "--market", "eth/usd"],
                     ["--market", "BTC/USD,ETH/USD,btc/usd"]):  # fmt: skip
            error = self.assertRaises(UsageError, parse, args)
            self.assertIn("--market: market ", str(error))
            self.assertIn(" is named twice", str(error))
        error = self.assertRaises(UsageError, parse, [], with_xdg(MARKETS="eth/usd,ETH/USD"))
        self.assertEqual(str(error), "--market (from $MARKETS): market ETH/USD is named twice")
        error = self.assertRaises(ValueError, coerce_markets, "a/b,c/d,A/B")
        self.assertEqual(str(error), "market A/B is named twice")
        self.assertRaises(ConfigError, markets_of, {}, ["a/b", "A/B"])

    def test_cap(self) -> None:
        most = TOO_MANY[:MAX_MARKETS]
        self.assertEqual(check_markets(most), most)
        self.assertEqual(coerce_markets(",".join(most)), most)
        self.assertEqual(markets_of({"MARKETS": ",".join(most)}), most)
        error = self.assertRaises(ValueError, check_markets, TOO_MANY)
        self.assertEqual(str(error), f"at most {MAX_MARKETS} markets, not {MAX_MARKETS + 1}")
        # the cap is checked as the options are read
        args = [arg for market in TOO_MANY for arg in ("--market", market)]
        error = self.assertRaises(UsageError, parse, args)
        self.assertEqual(str(error), f"--market: at most {MAX_MARKETS} markets, not 17")
        self.assertEqual(parse(args[:-2]).markets, most)

    def test_several_markets(self) -> None:
        """Several markets, repeated, comma-separated or from $MARKETS: the first is the pair."""
        for args, env in (
            (["--market", "BTC/USD", "--market", "ETH/USD"], with_xdg()),
            (["--market", "BTC/USD,ETH/USD"], with_xdg()),
            ([], with_xdg(MARKETS="BTC/USD,ETH/USD")),
        ):
            options = Options()
            options.environ = env
            options.parseOptions(args)
            assert options.config is not None
            self.assertEqual((options.config.pair, options.config.markets),
                             ("BTC/USD", ("BTC/USD", "ETH/USD")))  # fmt: skip

    def test_no_market_named(self) -> None:
        for value in ("", ",", " , "):
            error = self.assertRaises(UsageError, parse, ["--market", value])
            self.assertIn("--market: no market named", str(error))
        error = self.assertRaises(UsageError, parse, [], with_xdg(MARKETS=""))
        self.assertIn("--market (from $MARKETS): no market named", str(error))


class MarketConfigTests(SynchronousTestCase):
    """``NodeConfig.markets`` and ``pair``, built directly: ``pair`` is the first market."""

    def test_markets_follow_pair(self) -> None:
        self.assertEqual(NodeConfig(data_dir="/d").markets, ("BTC/USD",))
        config = NodeConfig(data_dir="/d", pair="ETH/USD")
        self.assertEqual((config.pair, config.markets), ("ETH/USD", ("ETH/USD",)))

    def test_pair_follows_markets(self) -> None:
        config = NodeConfig(data_dir="/d", markets=("eth/usd", "btc/usd"))
        self.assertEqual((config.pair, config.markets), ("ETH/USD", ("ETH/USD", "BTC/USD")))
        same = NodeConfig(data_dir="/d", pair="ETH/USD", markets=("ETH/USD", "BTC/USD"))
        self.assertEqual(same, config)
        self.assertRaises(AttributeError, setattr, config, "markets", ())

    def test_pair_other_than_first_market(self) -> None:
        error = self.assertRaises(
            ConfigError, NodeConfig, data_dir="/d", pair="XMR/BTC", markets=("ETH/USD",)
        )
        self.assertEqual(
            str(error),
            "--pair is XMR/BTC but the first --market is ETH/USD; "
            "--pair is the one-market form of --market: give one or the other",
        )
        self.assertRaises(ConfigError, NodeConfig, data_dir="/d", pair="BTC/EUR",
                          markets=("ETH/USD", "BTC/EUR"))  # fmt: skip
        # The default pair counts as not given (a dataclass cannot tell).
        config = NodeConfig(data_dir="/d", pair="BTC/USD", markets=("ETH/USD", "BTC/USD"))
        self.assertEqual(config.pair, "ETH/USD")

    def test_bad_markets(self) -> None:
        for markets in (("BTC",), ("BTC/USD", "btc/usd"), TOO_MANY):
            error = self.assertRaises(ConfigError, NodeConfig, data_dir="/d", markets=markets)
            self.assertTrue(str(error).startswith("--market: "), str(error))

    def test_with_changes(self) -> None:
        one = NodeConfig(data_dir="/d", pair="ETH/USD")
        self.assertEqual(one.with_changes(pair="XMR/BTC").markets, ("XMR/BTC",))
        moved = one.with_changes(markets=("XMR/BTC", "ETH/USD"))
        self.assertEqual((moved.pair, moved.markets), ("XMR/BTC", ("XMR/BTC", "ETH/USD")))
        self.assertEqual(moved.with_changes(markets=()).markets, ("BTC/USD",))
        self.assertEqual(moved.with_changes(pair="XMR/BTC"), moved)
        self.assertRaises(ConfigError, moved.with_changes, pair="ETH/USD")
        self.assertEqual(moved.with_changes(port=1).markets, moved.markets)


#: a pair in any case, as a person may type it
PAIRS = st.from_regex(r"\A[A-Za-z0-9]{1,12}/[A-Za-z0-9]{1,12}\Z")


class MarketSlugTests(SynchronousTestCase):
    """A market in a URL or a name: ``BTC-USD``."""

    def test_slug(self) -> None:
        self.assertEqual(market_slug("BTC/USD"), "BTC-USD")
        self.assertEqual(market_slug("eth/usdt"), "ETH-USDT")
        for slug in ("btc-usd", "BTC-USD", "Btc-uSd", "BTC/USD", "btc/usd"):
            self.assertEqual(parse_market_slug(slug), "BTC/USD", slug)

    @given(PAIRS)
    def test_round_trip(self, pair: str) -> None:
        market = pair.upper()
        slug = market_slug(pair)
        self.assertEqual(slug, market.replace("/", "-"))
        self.assertEqual(parse_market_slug(slug), market)
        self.assertEqual(parse_market_slug(slug.lower()), market)
        self.assertEqual(parse_market_slug(pair), market)

    def test_bad_slugs(self) -> None:
        bad = ("", "BTC", "-", "/", "BTC-", "-USD", "BTC--USD", "BTC-USD-EUR", "BTC_USD",
               "BTC/USD-EUR", " BTC-USD", "BTC-USD ", "BTC-USD\n", "BTC%2FUSD", "BTC.USD",
               "\u017fOL-USD", "BTC-\uff35SD", "ABCDEFGHIJKLM-USD", "BTC-USD/")  # fmt: skip
        for text in bad:
            error = self.assertRaises(ValueError, parse_market_slug, text)
            self.assertEqual(
                str(error),
                f"invalid market {text!r} (expected BASE-QUOTE or BASE/QUOTE, like BTC-USD)",
            )
        for text in ("BTC", "BTC-USD", "", "BTC/"):
            self.assertRaises(ValueError, market_slug, text)


class ValidationTests(SynchronousTestCase):
    """Bad values are refused with a message naming the option and its source."""

    def test_bad_values_on_command_line(self) -> None:
        for option, values in BAD_VALUES.items():
            for value in values:
                error = self.assertRaises(UsageError, parse, [f"--{option}", value])
                self.assertIn(f"--{option}", str(error), (option, value))

    def test_bad_values_in_environment(self) -> None:
        flags = ("no-api", "no-mdns", "no-dht", "insecure-plain-tcp")
        cases = {**BAD_VALUES, **{flag: ("maybe", "2") for flag in flags}}
        self.assertEqual(set(cases), set(ENVIRONMENT))
        for option, values in cases.items():
            for var in ENVIRONMENT[option]:
                for value in values:
                    error = self.assertRaises(UsageError, parse, [], with_xdg(**{var: value}))
                    message = str(error)
                    self.assertIn(f"--{option}", message, (var, value))
                    self.assertIn(f"${var}", message, (var, value))

    def test_bad_bitfi_data_dir_not_masked(self) -> None:
        env = {"BITFI_DATA_DIR": "", "PEER_STORAGE_PATH": "/ok"}
        error = self.assertRaises(UsageError, parse, [], env)
        self.assertIn("$BITFI_DATA_DIR", str(error))

    def test_outbound_above_max_peers(self) -> None:
        error = self.assertRaises(UsageError, parse, ["--outbound", "11", "--max-peers", "10"])
        self.assertIn("--outbound", str(error))
        self.assertIn("--max-peers", str(error))
        env = with_xdg(OUTBOUND_PEERS="11", MAX_PEERS="10")
        self.assertRaises(UsageError, parse, [], env)

    def test_small_max_peers_lowers_the_default_outbound_target(self) -> None:
        config = parse(["--max-peers", "4"])
        self.assertEqual((config.outbound, config.max_inbound), (4, 0))
        self.assertEqual(parse([], with_xdg(MAX_PEERS="3")).outbound, 3)

    def test_outbound_limits(self) -> None:
        config = parse(["--outbound", "10", "--max-peers", "10"])
        self.assertEqual((config.outbound, config.max_inbound), (10, 0))
        self.assertEqual(parse(["--outbound", "0"]).outbound, 0)
        self.assertEqual(coerce_outbound("10000"), 10000)
        error = self.assertRaises(ValueError, coerce_outbound, "-1")
        self.assertIn("0 to 10000", str(error))

    def test_extra_arguments(self) -> None:
        self.assertRaises(UsageError, parse, ["3000"])

    def test_unknown_option(self) -> None:
        self.assertRaises(UsageError, parse, ["--peers", "3"])


class NodeConfigTests(SynchronousTestCase):
    """The frozen config, built directly as tests do."""

    def test_direct(self) -> None:
        config = NodeConfig(data_dir="/d")
        self.assertEqual((config.port, config.api_port, config.outbound), (3000, 0, 8))
        self.assertRaises(AttributeError, setattr, config, "port", 1)

    def test_cross_check(self) -> None:
        self.assertRaises(ConfigError, NodeConfig, data_dir="/d", outbound=9, max_peers=8)
        config = NodeConfig(data_dir="/d", outbound=2, max_peers=8)
        self.assertEqual(config.with_changes(max_peers=3).max_inbound, 1)
        self.assertRaises(ConfigError, config.with_changes, max_peers=1)

    def test_config_from_options(self) -> None:
        given: dict[str, str | None] = {"port": "3004", "pair": None}
        config = config_from_options(given, [PeerAddress("h", 1)], True, {"XDG_DATA_HOME": XDG})
        self.assertEqual(config.port, 3004)
        self.assertEqual(config.bootstrap, (PeerAddress("h", 1),))
        self.assertFalse(config.api_enabled)
        self.assertEqual(config.data_dir, os.path.join(XDG, "bitfi", "main-3004"))
        error = self.assertRaises(
            ConfigError, config_from_options, {}, None, False, {"P2P_PORT": "x"}
        )
        self.assertEqual(str(error), "--port (from $P2P_PORT): not an integer: 'x'")


class HelpTests(SynchronousTestCase):
    """``twistd bitfi --help`` documents every option and variable."""

    def test_help_mentions_everything(self) -> None:
        text = Options().getUsage()
        for option in ENVIRONMENT:
            self.assertIn(f"--{option}", text)
        for names in ENVIRONMENT.values():
            for var in names:
                self.assertIn(f"${var}", text)

    def test_help_has_no_docstring_indentation(self) -> None:
        docs = Options().docs
        self.assertIn("bootstrap", docs)
        for option, doc in docs.items():
            if doc:
                self.assertEqual(doc.strip(), " ".join(doc.split()), option)
