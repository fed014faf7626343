"""Tests for :mod:`bitfitech.logs`: one ``twisted.logger`` system, a level filter, JSON, node tags.

Data path under test: ``log.info(...)`` in a bitfi module -> the level
filter -> the node tag (when several nodes share the process) -> the
global publisher -> twistd's observer: text by default, or with
``--log-format json`` the observer the plugin's options name in twistd's
``--logger`` option (checked through twistd's own ``ServerOptions`` and,
end to end, in real ``twistd bitfi`` processes).  Node tags are checked
on fake reactors, and on two real nodes in one process.
"""

from __future__ import annotations

import ast
import io
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from treq.client import HTTPClient
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Factory, Protocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import (
    LogLevel,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions  # type: ignore[attr-defined]
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from bitfitech import logs
from bitfitech.logs import (
    JSON_KEYS,
    TWISTD_JSON_LOGGER,
    TaggedReactor,
    call_tagged,
    json_file_observer,
    json_line,
    logger,
    node_tag,
    set_log_level,
    tagged,
    twistd_json_observer,
)
from bitfitech.node import Node
from bitfitech.testing import ClusterTestCase, free_ports, global_reactor, poll_until, wait_for
from tests.integration.processes import STOP_DEADLINE, NodeProcess

PACKAGE = Path(__file__).resolve().parents[1] / "bitfitech"

#: how long a node may take to write a log event before the test gives up (a hang guard)
LOG_DEADLINE = 30.0

log = logger("bitfitech.test")


def event(**fields: Any) -> dict[str, Any]:
    """A log event as a Logger makes it, with C{fields}."""
    base: dict[str, Any] = {
        "log_format": "Peer {peer} sent {count} events",
        "log_level": LogLevel.warn,
        "log_namespace": "bitfitech.gossip",
        "log_time": 1700000000.25,
        "log_source": None,
        "log_logger": object(),
        "peer": "ab12",
        "count": 3,
    }
    base.update(fields)
    return base


def record_of(line: str) -> dict[str, Any]:
    """The object of one JSON line, read strictly (no NaN or Infinity)."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    record: dict[str, Any] = json.loads(line, parse_constant=refuse)
    return record


class JSONLineTests(TestCase):
    """:func:`json_line`: one event, one line, one lean JSON object."""

    def test_fields(self) -> None:
        line = json_line(event())
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(
            record_of(line),
            {
                "time": "2023-11-14T22:13:20.250Z",
                "level": "warn",
                "system": "bitfitech.gossip",
                "message": "Peer ab12 sent 3 events",
                "peer": "ab12",
                "count": 3,
            },
        )
        self.assertEqual(list(record_of(line))[:4], list(JSON_KEYS))
        self.assertLess(len(line), 200)

    def test_node_after_system(self) -> None:
        record = record_of(json_line(event(node="node2", log_system="node2 x#warn")))
        self.assertEqual(list(record)[:5], ["time", "level", "system", "node", "message"])
        self.assertEqual((record["system"], record["node"]), ("bitfitech.gossip", "node2"))

    def test_failure(self) -> None:
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            failure = Failure()
        record = record_of(json_line(event(log_failure=failure, log_format="It broke")))
        self.assertEqual(record["message"], "It broke")
        self.assertEqual(record["error"], "ZeroDivisionError: division by zero")
        self.assertTrue(record["traceback"].startswith("Traceback"), record["traceback"])
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertEqual(record["level"], "warn")

    def test_failure_of_a_module_exception(self) -> None:
        failure = Failure(json.JSONDecodeError("bad", "x", 0))
        record = record_of(json_line(event(log_failure=failure, error="own")))
        self.assertTrue(record["error"].startswith("json.decoder.JSONDecodeError: bad"))

    def test_legacy_events(self) -> None:
        """Twisted's legacy events: their system, their text, none of their internal keys."""
        observed = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        legacy_log.msg("Starting factory", system="PeerProtocol,3,127.0.0.1", factory=object())
        legacy_log.err(Failure(ZeroDivisionError("division by zero")), "Boom")
        self.flushLoggedErrors(ZeroDivisionError)
        message, error = (record_of(json_line(e)) for e in observed)
        self.assertEqual(
            {key: message[key] for key in ("level", "system", "message")},
            {"level": "info", "system": "PeerProtocol,3,127.0.0.1", "message": "Starting factory"},
        )
        self.assertTrue(message["factory"].startswith("<object object at "))
        self.assertEqual(set(message), {"time", "level", "system", "message", "factory"})
        self.assertEqual(
            {key: error[key] for key in ("level", "system", "message", "error")},
            {"level": "critical", "system": "-", "message": "Boom",
             "error": "ZeroDivisionError: division by zero"},
        )  # fmt: skip
        self.assertIn("ZeroDivisionError", error["traceback"])
        self.assertEqual(set(error), {"time", "level", "system", "message", "error", "traceback"})

    def test_odd_values(self) -> None:
        class Odd:
            def __repr__(self) -> str:
                return "<odd>"

        class Broken:
            def __repr__(self) -> str:
                raise RuntimeError("no repr")

        deep: list[Any] = []
        for _ in range(20):
            deep = [deep]
        record = record_of(json_line(event(
            raw=b"GET \xff", price=Decimal("50000.10"), thing=Odd(), nan=float("nan"),
            inf=float("-inf"), ids={"b", "a"}, by_port={3000: (1, 2.5)}, deep=deep,
            broken=Broken(), text="caf\u00e9 \udcff",
        )))  # fmt: skip
        self.assertEqual(record["raw"], "GET \\xff")
        self.assertEqual(record["price"], "50000.10")
        self.assertEqual(record["thing"], "<odd>")
        self.assertEqual((record["nan"], record["inf"]), ("nan", "-inf"))
        self.assertEqual(record["ids"], ["a", "b"])
        self.assertEqual(record["by_port"], {"3000": [1, 2.5]})
        self.assertIn("[[[]]]", json.dumps(record["deep"]))
        self.assertIn("RuntimeError", record["broken"])
        self.assertEqual(record["text"], "caf\u00e9 \udcff")

    def test_reserved_names(self) -> None:
        """An own field named like a key of the line is left out; ``error`` is kept (no failure)."""
        record = record_of(json_line(event(time=5, level="loud", message="m", error="disk full")))
        self.assertEqual(record["time"], "2023-11-14T22:13:20.250Z")
        self.assertEqual((record["level"], record["message"]), ("warn", "Peer ab12 sent 3 events"))
        self.assertEqual(record["error"], "disk full")
        self.assertNotIn("traceback", record)

    def test_unformattable(self) -> None:
        record = record_of(json_line(event(log_format="{missing} is {0}")))
        self.assertIn("Unable to format event", record["message"])
        record = record_of(json_line({"log_level": "not a level", "log_time": "soon"}))
        self.assertEqual((record["time"], record["level"], record["system"]), (None, None, None))

    def test_never_raises(self) -> None:
        class Unlistable(dict[str, Any]):
            def items(self) -> Any:
                raise RuntimeError("no items")

        line = json_line(event(fields=Unlistable(a=1)))
        record = record_of(line)
        self.assertEqual((record["level"], record["system"]), ("error", "bitfitech.logs"))
        self.assertIn("Cannot write a log event as JSON: RuntimeError", record["message"])

    def test_observer_writes_lines(self) -> None:
        out = io.StringIO()
        observer = json_file_observer(out)
        observer(event())
        observer(event(peer="cd34", log_level=LogLevel.info))
        records = [record_of(line) for line in out.getvalue().splitlines()]
        self.assertEqual([(r["peer"], r["level"]) for r in records],
                         [("ab12", "warn"), ("cd34", "info")])  # fmt: skip


class NodeTagTests(TestCase):
    """bitfi's events logged under a node tag carry it, in text and JSON; others do not."""

    def setUp(self) -> None:
        self.observed = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_untagged(self) -> None:
        self.assertIsNone(node_tag())
        log.info("Hello {who}", who="world")
        [logged] = self.observed
        self.assertNotIn("node", logged)
        self.assertNotIn("log_system", logged)
        text = formatEventAsClassicLogText(logged)
        self.assertIn(" [bitfitech.test#info] Hello world", text)

    def test_tagged(self) -> None:
        with tagged("node2"):
            self.assertEqual(node_tag(), "node2")
            log.warn("Hello {who}", who="world")
        self.assertIsNone(node_tag())
        [logged] = self.observed
        self.assertEqual(logged["node"], "node2")
        self.assertIn(
            " [node2 bitfitech.test#warn] Hello world", formatEventAsClassicLogText(logged)
        )
        record = record_of(json_line(logged))
        self.assertEqual((record["system"], record["node"]), ("bitfitech.test", "node2"))

    def test_nested(self) -> None:
        with tagged("node1"):
            self.assertEqual(call_tagged("node2", node_tag), "node2")
            self.assertEqual(node_tag(), "node1")
        self.assertRaises(ZeroDivisionError, call_tagged, "node3", lambda: 1 / 0)
        self.assertIsNone(node_tag())

    def test_json_observer_tags_twisted_events(self) -> None:
        """Twisted's own events logged by a node's code get its tag in JSON lines."""
        out = io.StringIO()
        observer = json_file_observer(out)
        twisted_event = event(log_namespace="twisted.internet.tcp")
        with tagged("node3"):
            observer(twisted_event)
            observer(event(node="node1"))  # already tagged: kept
        observer(twisted_event)
        records = [record_of(line) for line in out.getvalue().splitlines()]
        self.assertEqual([r.get("node") for r in records], ["node3", "node1", None])
        self.assertNotIn("node", twisted_event)


class _Logging(Protocol):
    """Logs what the reactor calls it with."""

    def connectionMade(self) -> None:
        log.info("made")

    def dataReceived(self, data: bytes) -> None:
        log.info("data")

    def connectionLost(self, reason: Failure | None = None) -> None:
        log.info("lost")


class _LoggingDatagrams(DatagramProtocol):
    def startProtocol(self) -> None:
        log.info("udp started")

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        log.info("datagram")

    def stopProtocol(self) -> None:
        log.info("udp stopped")


class _ThreadsAndDatagrams(MemoryReactorClock):
    """A memory reactor that also takes calls from threads and UDP ports, and keeps them."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[tuple[Any, tuple[Any, ...]]] = []
        self.udp: list[Any] = []

    def callFromThread(self, function: Any, *args: Any) -> None:
        self.from_threads.append((function, args))

    def listenUDP(self, port: int, protocol: Any, interface: str = "") -> None:
        self.udp.append(protocol)

    def listenMulticast(self, port: int, protocol: Any, **kwargs: Any) -> None:
        self.udp.append(protocol)


class TaggedReactorTests(TestCase):
    """Callbacks made through a node's :class:`TaggedReactor` run under its tag."""

    def setUp(self) -> None:
        self.observed = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.reactor = _ThreadsAndDatagrams()
        self.first = TaggedReactor(self.reactor, "node1")
        self.second = TaggedReactor(self.reactor, "node2")

    def logged(self) -> list[tuple[str | None, str]]:
        return [
            (e.get("node"), e["log_format"])
            for e in self.observed
            if e["log_namespace"] == "bitfitech.test"
        ]

    def test_interfaces(self) -> None:
        self.assertTrue(IReactorTime.providedBy(self.first))
        self.assertTrue(IReactorTCP.providedBy(self.first))
        self.assertEqual(self.first.seconds(), self.reactor.seconds())

    def test_timers(self) -> None:
        self.first.callLater(2, log.info, "first {n}", n=1)
        self.second.callLater(1, log.info, "second")
        call = self.first.callLater(3, log.info, "cancelled")
        call.cancel()
        self.reactor.advance(1)
        self.reactor.advance(1)
        self.assertEqual(self.logged(), [("node2", "second"), ("node1", "first {n}")])
        self.assertEqual(self.observed[1]["n"], 1)
        self.assertIsNone(node_tag())

    def test_calls_from_threads(self) -> None:
        self.second.callFromThread(log.info, "from a thread")
        [(function, args)] = self.reactor.from_threads
        function(*args)
        self.assertEqual(self.logged(), [("node2", "from a thread")])

    def test_tcp_server(self) -> None:
        inner = _Logging()
        self.first.listenTCP(3000, Factory.forProtocol(lambda: inner))
        [(port, factory, _, _)] = self.reactor.tcpServers
        self.assertEqual(port, 3000)
        protocol: Any = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"hello")
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.logged(), [("node1", "made"), ("node1", "data"), ("node1", "lost")])
        self.assertIs(inner.transport, transport)  # handed the reactor's own transport

    def test_tcp_client(self) -> None:
        failed: list[str] = []

        class Failing(ClientFactory):
            def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
                failed.append(str(node_tag()))

        self.second.connectTCP("127.0.0.1", 3000, Failing())
        [(_, _, factory, _, _)] = self.reactor.tcpClients
        cast(Any, factory).clientConnectionFailed(None, Failure(Exception("refused")))
        self.assertEqual(failed, ["node2"])

    def test_host_names(self) -> None:
        """The answers of a name resolution reach the node's receiver under its tag."""
        receivers: list[Any] = []

        class Resolver:
            def resolveHostName(self, receiver: Any, host: str, *args: Any) -> str:
                receivers.append(receiver)
                return "resolution"

        class Receiver:
            def resolutionBegan(self, resolution: object) -> None:
                log.info("began")

            def addressResolved(self, address: object) -> None:
                log.info("resolved")

            def resolutionComplete(self) -> None:
                log.info("complete")

        self.reactor.nameResolver = Resolver()  # type: ignore[assignment]
        answer = self.first.nameResolver.resolveHostName(cast(Any, Receiver()), "example.org", 3000)
        self.assertEqual(answer, "resolution")
        [receiver] = receivers
        receiver.resolutionBegan(answer)
        receiver.addressResolved(IPv4Address("TCP", "127.0.0.1", 3000))
        receiver.resolutionComplete()
        self.assertEqual(
            self.logged(), [("node1", "began"), ("node1", "resolved"), ("node1", "complete")]
        )

    def test_udp(self) -> None:
        self.first.listenUDP(3000, _LoggingDatagrams())
        self.second.listenMulticast(5353, _LoggingDatagrams(), listenMultiple=True)
        for protocol in self.reactor.udp:
            protocol.makeConnection(StringTransport())
            protocol.datagramReceived(b"x", ("127.0.0.1", 1))
            protocol.doStop()
        self.assertEqual(
            self.logged(),
            [("node1", "udp started"), ("node1", "datagram"), ("node1", "udp stopped"),
             ("node2", "udp started"), ("node2", "datagram"), ("node2", "udp stopped")],
        )  # fmt: skip


class ClusterTagTests(ClusterTestCase):
    """Two real nodes in one process: each one's lines carry its own tag."""

    timeout = 60

    async def test_two_nodes(self) -> None:
        self.addCleanup(set_log_level, logs.log_level())
        observed = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        first = self.cluster.start_node(log_level=LogLevel.debug)
        second = self.cluster.start_node(bootstrap_to=[first], log_level=LogLevel.debug)
        await wait_for([first, second], lambda: len(first.peers.hub.links) == 1
                       == len(second.peers.hub.links), LOG_DEADLINE, self.reactor,
                       "a link")  # fmt: skip

        # A timer on each node's clock, as every part of a node sets them.
        fired: list[str] = []
        for node, name in ((first, "first"), (second, "second")):
            node.clock.callLater(0.01, log.info, "timer of {name}", name=name)
            node.clock.callLater(0.02, fired.append, name)
        await poll_until(self.reactor, lambda: len(fired) == 2, LOG_DEADLINE, "the timers")
        timers = {e["name"]: e.get("node") for e in observed if e.get("name")}
        self.assertEqual(timers, {"first": "node0", "second": "node1"})

        # Protocol callbacks: each side's hub logs the link once its handshake
        # is done, in the link's data handler.
        def ids(node: Node) -> str:
            return node.storage.identity.node_id[:12]

        connected = {
            e.get("node"): e["peer"] for e in observed
            if e.get("log_namespace") == "bitfitech.peer.hub" and "connected" in e["log_format"]
        }  # fmt: skip
        self.assertEqual(set(connected), {"node0", "node1"})
        self.assertTrue(connected["node0"].startswith(ids(second)), connected)
        self.assertTrue(connected["node1"].startswith(ids(first)), connected)
        self.assertIn("(inbound)", connected["node0"])

        # Start-up lines and the dialer's (its first tick, at start).
        listening = {e.get("node") for e in observed if "listening for peers" in e["log_format"]}
        self.assertEqual(listening, {"node0", "node1"})
        dialling = {e.get("node") for e in observed if e["log_format"].startswith("Dialling")}
        self.assertEqual(dialling, {"node1"})

        # The stop: the other side sees the link go, in its protocol callback.
        await self.cluster.stop_node(second)
        await poll_until(self.reactor, lambda: not first.peers.hub.links, LOG_DEADLINE,
                         "the link closed")  # fmt: skip
        gone = {e.get("node") for e in observed if "disconnected" in e.get("log_format", "")}
        self.assertEqual(gone, {"node0", "node1"})
        self.assertFalse([e for e in observed if e.get("log_namespace", "").startswith(
            "bitfitech.") and "node" not in e])  # fmt: skip


class LevelTests(TestCase):
    """bitfi's events pass the level filter (``--log-level``); Twisted's are not filtered."""

    def test_level(self) -> None:
        self.addCleanup(set_log_level, logs.log_level())
        observed = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        log = logger("bitfitech.test")
        set_log_level(LogLevel.warn)
        log.info("hidden")
        log.warn("shown")
        set_log_level(LogLevel.debug)
        log.debug("shown too")
        self.assertEqual([e["log_format"] for e in observed], ["shown", "shown too"])
        self.assertTrue(logs.enabled(LogLevel.info))


class NoOtherLoggingTests(SynchronousTestCase):
    """
    bitfitech logs only through twisted.logger: no stdlib logging, and no
    print() outside command-line tools (modules run with ``python -m``,
    whose output is their answer, not a log).
    """

    def test_no_print_or_logging(self) -> None:
        offenders = []
        for path in sorted(PACKAGE.rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            tool = 'if __name__ == "__main__":' in source
            tree = ast.parse(source, str(path))
            for node in ast.walk(tree):
                is_print = isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
                if is_print and not tool:
                    offenders.append(f"{path}:{getattr(node, 'lineno', 0)} print()")
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(name == "logging" or name.startswith("logging.") for name in names):
                    offenders.append(f"{path}:{getattr(node, 'lineno', 0)} stdlib logging")
        self.assertEqual(offenders, [])


class TwistdOptionsTests(SynchronousTestCase):
    """``--log-format json`` fills twistd's ``--logger`` with the JSON observer."""

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        self.environ: dict[str, str] = {}
        self.patch(os, "environ", self.environ)
        destination = logs._twistd_destination.path
        self.addCleanup(setattr, logs._twistd_destination, "path", destination)

    def twistd(self, *twistd_args: str, bitfi: tuple[str, ...] = ()) -> ServerOptions:
        """Parse a twistd command line running bitfi, as twistd does."""
        options = ServerOptions()
        options.parseOptions(
            [*twistd_args, "bitfi", "--data-dir", self.data_dir, "--no-mdns", *bitfi]
        )
        return options

    def test_text_by_default(self) -> None:
        options = self.twistd("-n", "--logfile=-")
        self.assertIsNone(options["logger"])
        self.assertEqual(options.subOptions.config.log_format, "text")

    def test_json_to_stdout(self) -> None:
        for args in (("-n", "--logfile=-"), ("-n",)):
            options = self.twistd(*args, bitfi=("--log-format", "json"))
            self.assertIs(options["logger"], twistd_json_observer, args)
            self.assertIsNone(logs._twistd_destination.path, args)

    def test_json_from_environment(self) -> None:
        self.environ["BITFI_LOG_FORMAT"] = "JSON"
        options = self.twistd("-n", "--logfile=-")
        self.assertIs(options["logger"], twistd_json_observer)

    def test_json_to_file(self) -> None:
        path = os.path.abspath(self.mktemp())
        options = self.twistd("-n", "--logfile", path, bitfi=("--log-format", "json"))
        self.assertEqual(logs._twistd_destination.path, path)
        observer = options["logger"]()
        observer(event())
        observer(event(peer="cd34"))
        observer._outFile.close()
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        self.assertEqual([json.loads(line)["peer"] for line in lines], ["ab12", "cd34"])

    def test_daemon_default_file(self) -> None:
        self.twistd(bitfi=("--log-format", "json"))
        self.assertEqual(logs._twistd_destination.path, os.path.abspath("twistd.log"))

    def test_conflicts(self) -> None:
        """Under twistd a usage error ends the process with one message (see ``tap.usage_exit``)."""
        cases = [
            (("--syslog",), "--syslog"),
            (("-n", "--logger", TWISTD_JSON_LOGGER), "--logger"),
            (("--logfile=-",), "-n"),
        ]
        for args, named in cases:
            error = self.assertRaises(
                SystemExit, self.twistd, *args, bitfi=("--log-format", "json")
            )
            self.assertIn(named, str(error), args)

    def test_bad_format(self) -> None:
        error = self.assertRaises(SystemExit, self.twistd, "-n", bitfi=("--log-format", "xml"))
        self.assertIn("--log-format", str(error))


class JSONProcess(NodeProcess):
    """A ``twistd bitfi`` node with ``--log-format json``, logging to stdout or a file."""

    def __init__(self, *args: Any, logfile: str = "-", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logfile = logfile

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--logfile=-")] = f"--logfile={self.logfile}"
        return [*argv, "--log-format", "json", "--log-level", "debug"]


class TwistdJSONTests(TestCase):
    """Real ``twistd bitfi --log-format json`` processes write only JSON lines."""

    timeout = 60

    async def run_node(self, logfile: str = "-") -> tuple[JSONProcess, list[dict[str, Any]]]:
        """Start a node, ask its API once, stop it; return it and the records of its log."""
        reactor = global_reactor()
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        port, api_port = free_ports(2)
        data_dir = os.path.abspath(os.path.join(self.mktemp(), "node"))
        os.makedirs(os.path.dirname(data_dir))
        node = JSONProcess(
            "json", port=port, api_port=api_port, data_dir=data_dir,
            http=HTTPClient(Agent(reactor, pool=pool)), logfile=logfile,
        )  # fmt: skip
        self.addCleanup(node.kill)
        node.start()
        await node.wait_for_api()

        def log_text() -> str:
            if logfile == "-":
                return node.output
            return Path(logfile).read_text(encoding="utf-8") if os.path.exists(logfile) else ""

        # the access log event of that request is written
        await poll_until(reactor, lambda: "bitfitech.api.access" in log_text(), LOG_DEADLINE,
                         "the access log event")  # fmt: skip
        status = await node.terminate(within=STOP_DEADLINE)
        self.assertIsNotNone(status)
        text = log_text()
        records = []
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                self.fail(f"not a JSON line: {line!r}\n{node.describe()}")
        return node, records

    def check(self, node: JSONProcess, records: list[dict[str, Any]]) -> None:
        texts = [record["message"] for record in records]
        self.assertTrue(any("starting up" in text for text in texts), node.describe())
        listening = [r for r in records if r["system"] == "bitfitech.peer.service"
                     and "listening for peers" in r["message"]]  # fmt: skip
        self.assertEqual(len(listening), 1, node.describe())
        self.assertEqual(listening[0]["level"], "info")
        self.assertEqual(listening[0]["where"], f"127.0.0.1:{node.port}")
        access = [r for r in records if r["system"] == "bitfitech.api.access"]
        self.assertTrue(access, node.describe())  # --log-level debug: the access log
        self.assertEqual((access[0]["method"], access[0]["path"]), ("GET", "/status"))
        self.assertTrue(all(list(record)[:3] == list(JSON_KEYS)[:3] for record in records))
        self.assertTrue(all("message" in record and "node" not in record for record in records))
        self.assertFalse([key for record in records for key in record if key.startswith("log_")])
        self.assertIn("Main loop terminated.", texts)

    async def test_stdout(self) -> None:
        node, records = await self.run_node()
        self.check(node, records)

    async def test_log_file(self) -> None:
        path = os.path.abspath(self.mktemp())
        node, records = await self.run_node(logfile=path)
        self.check(node, records)
        self.assertNotIn("{", node.output)  # nothing went to stdout
