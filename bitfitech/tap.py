"""``twistd bitfi``: command-line options to a running node (the composition's front door).

:class:`Options` declares, coerces and documents every option with the
environment variable it falls back to; :func:`makeService` turns the
validated :class:`~bitfitech.config.NodeConfig` into the node's service tree
through :func:`bitfitech.node.build_node`.  No side effects happen here: no
socket, file or timer is opened before the service starts.

A bad setting ends the process with two lines on stderr, the error and a
hint, and exit status 1: under twistd (:meth:`Options.parseOptions`) and in
a ``.tac`` file (:func:`tac_options`, :func:`tac_usage_error`).  Left to
itself, twistd would print its whole ``--help`` before a usage error, and a
traceback for an error in a ``.tac``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

from twisted.application.service import IService
from twisted.python import usage

from . import config as cfg
from .address import PeerAddress
from .logs import use_json_under_twistd


def _cli(name: str, coerce: Callable[[str], object]) -> Callable[[str], object]:
    """Check an option's text at parse time; the error names the option.

    The text itself is kept: :func:`~bitfitech.config.config_from_options`
    coerces command line and environment values alike.  The error is a
    :class:`~twisted.python.usage.UsageError` already, so Twisted passes it
    on as it is (a ``ValueError`` would gain "Parameter type enforcement
    failed: " in front).
    """

    def check(text: str) -> str:
        try:
            coerce(text)
        except ValueError as e:
            raise usage.UsageError(f"--{name}: {e}") from None
        return text

    check.coerceDoc = ""  # type: ignore[attr-defined]
    return check


def _env(name: str) -> str:
    return " or ".join(f"${v}" for v in cfg.ENVIRONMENT[name])


_OPTION = re.compile(r"--([a-z][a-z-]*)")
"""An option's name in an error message."""


def usage_exit(where: str, message: str, hint: str) -> SystemExit:
    """
    The exception that ends the process for a usage error.

    Python writes a ``SystemExit`` with a text to stderr and exits with
    status 1 (as twistd does for its own usage errors); twistd catches no
    ``SystemExit``, neither around the options nor around loading a ``.tac``.

    :param where: the command or file, as the error's first word.
    :param message: what is wrong, naming the option or variable.
    :param hint: where to read more, on a line of its own.
    """
    return SystemExit(f"{where}: error: {message}\n{hint}")


class Options(usage.Options):
    """Options of ``twistd bitfi``; each falls back to its environment variable."""

    synopsis = "[options]"
    longdesc = (
        "Run one bitfi node: a peer-to-peer exchange node that keeps a replica of its "
        "network's orderbook. Options given on the command line win over the environment "
        "variables named with each."
    )

    optParameters = [
        ["port", "p", None,
         f"P2P TCP port to listen on; 0 lets the OS choose [default {cfg.DEFAULT_PORT}; "
         f"env {_env('port')}]", _cli("port", cfg.coerce_port)],
        ["host", None, None,
         "P2P bind address, IPv4 or IPv6 (0.0.0.0: every IPv4 address only; :: every "
         f"IPv6 one only) [default: every address of both; env {_env('host')}]",
         _cli("host", cfg.coerce_host)],
        ["max-peers", None, None,
         f"Cap on all peer links, inbound and outbound [default {cfg.DEFAULT_MAX_PEERS}; "
         f"env {_env('max-peers')}]", _cli("max-peers", cfg.coerce_count)],
        ["outbound", None, None,
         "Outbound links to keep, links with witnesses among them (every witness "
         "is dialled, even past this) "
         f"[default {cfg.DEFAULT_OUTBOUND}, at most --max-peers; "
         f"env {_env('outbound')}]",
         _cli("outbound", cfg.coerce_outbound)],
        ["data-dir", "d", None,
         "The node's data directory (database, node key) [default "
         "$XDG_DATA_HOME/bitfi/<network>-<port>, i.e. ~/.local/share/bitfi/main-3000; "
         f"env {_env('data-dir')}]", _cli("data-dir", cfg.coerce_path)],
        ["network", None, None,
         f"Network name; the wire magic derives from it [default {cfg.DEFAULT_NETWORK}; "
         f"env {_env('network')}]", _cli("network", cfg.coerce_network)],
        ["pair", None, None,
         "Trading pair of the book, BASE/QUOTE: the one-market form of --market "
         f"[default {cfg.DEFAULT_PAIR}; env {_env('pair')}]", _cli("pair", cfg.coerce_pair)],
        ["api-port", None, None,
         f"HTTP API port [default --port + {cfg.API_PORT_OFFSET} (13000 for 3000); "
         f"env {_env('api-port')}]", _cli("api-port", cfg.coerce_port)],
        ["api-host", None, None,
         f"HTTP API bind address [default {cfg.DEFAULT_API_HOST}; env {_env('api-host')}]",
         _cli("api-host", cfg.coerce_host)],
        ["api-token", None, None,
         "Bearer token every HTTP API request must carry; required to bind --api-host to a "
         "non-loopback address unless the data directory holds api.token (make one with "
         f"`python -m bitfitech.api.token --data-dir DIR`) [default none; env {_env('api-token')}]",
         _cli("api-token", cfg.coerce_api_token)],
        ["api-max-connections", None, None,
         "HTTP API connections open at once, live streams included; one more is answered "
         "503 with Retry-After and closed "
         f"[default {cfg.DEFAULT_API_MAX_CONNECTIONS}; env {_env('api-max-connections')}]",
         _cli("api-max-connections", cfg.coerce_count)],
        ["api-idle-timeout", None, None,
         "Seconds an HTTP API connection may sit idle between requests, or take to send "
         "one whole request, before it is closed (a live stream is never timed out) "
         f"[default {cfg.DEFAULT_API_IDLE_TIMEOUT:g}, 1 to {cfg.MAX_API_IDLE_TIMEOUT}; "
         f"env {_env('api-idle-timeout')}]",
         _cli("api-idle-timeout", cfg.coerce_idle_timeout)],
        ["log-level", None, None,
         f"Minimum level of bitfi's log events: {', '.join(cfg.LOG_LEVELS)} "
         f"[default info; env {_env('log-level')}]", _cli("log-level", cfg.coerce_log_level)],
        ["log-format", None, None,
         f"How twistd writes log events: {' or '.join(cfg.LOG_FORMATS)} (one JSON object "
         "per line, to --logfile or stdout) "
         f"[default text; env {_env('log-format')}]", _cli("log-format", cfg.coerce_log_format)],
        ["settle-after", None, None,
         "Seconds after which trades and resting orders count as settled "
         f"[default {cfg.DEFAULT_SETTLE_AFTER:g}; env {_env('settle-after')}]",
         _cli("settle-after", cfg.coerce_seconds)],
        ["mdns-interface", None, None,
         "Address of the one network interface mDNS announces and browses on, IPv4 or "
         "IPv6 (mDNS then runs in that family only) "
         f"[default every interface, IPv4 and IPv6; env {_env('mdns-interface')}]",
         _cli("mdns-interface", cfg.coerce_interface)],
        ["nat", None, None,
         "Ask the router to forward the P2P port: auto (PCP/NAT-PMP, then UPnP-IGD), "
         "upnp, natpmp, or off; auto is off on a loopback --host "
         f"[default auto; env {_env('nat')}]",
         _cli("nat", cfg.coerce_nat)],
        ["nat-gateway", None, None,
         "The router to ask by PCP/NAT-PMP [default the default gateway; "
         f"env {_env('nat-gateway')}]", _cli("nat-gateway", cfg.coerce_ip)],
        ["dht-port", None, None,
         "UDP port of the Kademlia DHT (IPv4 and IPv6, or the family of --host); 0 lets "
         "the OS choose "
         f"[default the number of --port; env {_env('dht-port')}]",
         _cli("dht-port", cfg.coerce_port)],
        ["ban-duration", None, None,
         "Seconds a peer's IP address is banned once its misbehaviour score reaches the "
         f"threshold; 0 never bans [default {cfg.DEFAULT_BAN_DURATION:g} (24 h), at most "
         f"{cfg.MAX_BAN_DURATION} (30 days); env {_env('ban-duration')}]",
         _cli("ban-duration", cfg.coerce_ban_duration)],
        ["max-inbound-per-ip", None, None,
         "Inbound links allowed from one IP address, handshaking or ready "
         f"[default {cfg.DEFAULT_MAX_INBOUND_PER_IP}; env {_env('max-inbound-per-ip')}]",
         _cli("max-inbound-per-ip", cfg.coerce_count)],
        ["max-handshakes-per-ip", None, None,
         "Inbound links from one IP address allowed in their handshake at once "
         f"[default {cfg.DEFAULT_MAX_HANDSHAKES_PER_IP}; env {_env('max-handshakes-per-ip')}]",
         _cli("max-handshakes-per-ip", cfg.coerce_count)],
        ["ca-bundle", None, None,
         "PEM file of CA certificates: a bootstrap address given by host name must present "
         "a certificate chain from one of them naming that host, or the link is dropped "
         f"[default none: node keys only; env {_env('ca-bundle')}]",
         _cli("ca-bundle", cfg.coerce_file)],
        ["certificate", None, None,
         "PEM certificate chain for this node's key, issued by a CA (for a bootstrap host "
         "dialled by name), presented instead of a self-signed certificate "
         f"[default self-signed; env {_env('certificate')}]",
         _cli("certificate", cfg.coerce_file)],
    ]  # fmt: skip

    optFlags = [
        ["no-api", None, f"Do not run the HTTP API [env {_env('no-api')}=1]"],
        ["no-mdns", None, f"Do not run mDNS / DNS-SD discovery [env {_env('no-mdns')}=1]"],
        ["no-dht", None, f"Do not run the Kademlia DHT [env {_env('no-dht')}=1]"],
        ["insecure-plain-tcp", None,
         "Run peer links over plain TCP instead of TLS: neither encrypted nor authenticated; "
         f"such a node links only with other plain nodes [env {_env('insecure-plain-tcp')}=1]"],
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self._bootstrap: list[PeerAddress] | None = None
        self._witnesses: list[PeerAddress] | None = None
        self._dht_bootstrap: list[tuple[str, int]] | None = None
        self._markets: list[str] | None = None
        self.config: cfg.NodeConfig | None = None
        self.environ: dict[str, str] = dict(os.environ)

    def opt_bootstrap(self, value: str) -> None:
        """Peer to dial at start, [NODEID@]host:port; repeatable or comma-separated [env $BOOTSTRAP_PEERS]"""  # noqa: E501 (one line: twistd --help prints it as is)
        try:
            peers = cfg.coerce_bootstrap(value)
        except ValueError as e:
            raise usage.UsageError(f"--bootstrap: {e}") from None
        self._bootstrap = [*(self._bootstrap or []), *peers]

    opt_b = opt_bootstrap

    def opt_witness(self, value: str) -> None:
        """Witness of the network, NODEID@host:port: a node that signs stamps of when it saw each event, which give events their fair order; every node links to every witness, and all nodes of a network must name the same set; repeatable or comma-separated; none by default [env $WITNESSES]"""  # noqa: E501 (one line: twistd --help prints it as is)
        try:
            witnesses = cfg.check_witnesses(
                [*(self._witnesses or []), *cfg.coerce_witnesses(value)]
            )
        except ValueError as e:
            raise usage.UsageError(f"--witness: {e}") from None
        self._witnesses = list(witnesses)

    def opt_dht_bootstrap(self, value: str) -> None:
        """DHT node to contact at start, host:port or [v6]:port; repeatable or comma-separated; none by default [env $DHT_BOOTSTRAP]"""  # noqa: E501 (one line: twistd --help prints it as is)
        try:
            nodes = cfg.coerce_dht_bootstrap(value)
        except ValueError as e:
            raise usage.UsageError(f"--dht-bootstrap: {e}") from None
        self._dht_bootstrap = [*(self._dht_bootstrap or []), *nodes]

    def opt_market(self, value: str) -> None:
        """Market (trading pair) the node serves, BASE/QUOTE; repeatable or comma-separated; --pair is the one-market form of --market: give one or the other; the first is the market of the API's paths without /markets/{market} [default BTC/USD; env $MARKETS]"""  # noqa: E501 (one line: twistd --help prints it as is)
        try:
            markets = cfg.check_markets([*(self._markets or []), *cfg.coerce_markets(value)])
        except ValueError as e:
            raise usage.UsageError(f"--market: {e}") from None
        self._markets = list(markets)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse C{options}, then the environment for what they do not give.

        Under twistd (a C{parent}, twistd's own options) a usage error ends
        the process here, with the error and a hint (:func:`usage_exit`):
        twistd would print the whole ``--help`` before it, which ``--help``
        alone still does.  Parsed alone (a ``.tac`` file, a test) the
        options raise the :class:`~twisted.python.usage.UsageError`.

        :raises SystemExit: for a usage error under twistd.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            raise usage_exit("twistd bitfi", str(e), "try 'twistd bitfi --help'") from None

    def postOptions(self) -> None:
        """
        Read the environment for what was not given, cross-check, and freeze
        the config; more than one market is refused until a node can serve
        them (docs/plans/many-markets.md).
        """
        given = {str(row[0]): self[str(row[0])] for row in self.optParameters}
        try:
            config = cfg.config_from_options(
                given, self._bootstrap, bool(self["no-api"]), self.environ,
                witnesses=self._witnesses, dht_bootstrap=self._dht_bootstrap,
                no_mdns=bool(self["no-mdns"]), no_dht=bool(self["no-dht"]),
                insecure_plain_tcp=bool(self["insecure-plain-tcp"]), markets=self._markets,
            )  # fmt: skip
        except cfg.ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self.config = config
        if self.config.log_format == "json" and self.parent is not None:
            # Under twistd: its --logger option, resolved after this, names the JSON observer.
            use_json_under_twistd(self.parent)


def makeService(options: Options, log_tag: str | None = None) -> IService:
    """
    Build the node's service tree from parsed options (no side effects).

    :param log_tag: the tag of the node's log lines, for one of several
        nodes in a process (a ``.tac``'s); see :func:`bitfitech.node.build_node`.
    """
    from .node import build_node

    assert options.config is not None, "parseOptions() was not called"
    # Under twistd, a node that cannot start says why in one line and exits 1.
    return build_node(options.config, exit_on_startup_error=True, log_tag=log_tag)


def tac_options(tac: str, args: Sequence[str] = ()) -> Options:
    """
    The options of one node of a ``.tac`` file: C{args}, then the
    environment, parsed as ``twistd bitfi`` parses them.

    :param tac: the file, as twistd names it (its ``__file__``).
    :param args: the options the file sets itself.
    :raises SystemExit: for a bad setting (:func:`tac_usage_error`).
    """
    options = Options()
    try:
        options.parseOptions(list(args))
    except usage.UsageError as e:
        raise tac_usage_error(tac, str(e), args) from None
    return options


def tac_usage_error(tac: str, message: str, args: Sequence[str] = ()) -> SystemExit:
    """
    The exception that stops loading a ``.tac`` file for a bad setting
    (:func:`usage_exit`).

    A ``.tac`` reads its settings from environment variables, so an error
    that names options only (a cross-check such as ``--data-dir is required
    with --port 0``) gains the variables of those options, except of the
    options the file sets itself (C{args}).
    """
    own = {arg[2:] for arg in args if arg.startswith("--")}
    named = [
        f"--{option} is {_env(option)}"
        for option in dict.fromkeys(_OPTION.findall(message))
        if option in cfg.ENVIRONMENT and option not in own
    ]
    if named and "$" not in message:
        message += "; in a .tac, " + ", ".join(named)
    hint = f"see the top of {tac}, and 'twistd bitfi --help' for the variable of each option"
    return usage_exit(tac, message, hint)
