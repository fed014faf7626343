"""Tests for :mod:`bitfitech.logs`: one ``twisted.logger`` system, its level filter, JSON lines.

Data path under test: ``log.info(...)`` in a bitfi module -> the level
filter -> the global publisher -> twistd's observer: text by default, or
with ``--log-format json`` the observer the plugin's options name in
twistd's ``--logger`` option (checked through twistd's own
``ServerOptions`` and, end to end, in real ``twistd bitfi`` processes).
"""

from __future__ import annotations

import ast
import io
import json
import os
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import (
    LogLevel,
    eventsFromJSONLogFile,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.scripts.twistd import ServerOptions  # type: ignore[attr-defined]
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from bitfitech import logs
from bitfitech.logs import (
    JSON_KEYS,
    TWISTD_JSON_LOGGER,
    json_file_observer,
    json_line,
    logger,
    set_log_level,
    twistd_json_observer,
)
from bitfitech.testing import free_ports, global_reactor, poll_until
from tests.integration.processes import STOP_DEADLINE, NodeProcess

PACKAGE = Path(__file__).resolve().parents[1] / "bitfitech"

#: how long a node may take to write a log event before the test gives up (a hang guard)
LOG_DEADLINE = 30.0


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


class JSONLineTests(SynchronousTestCase):
    """:func:`json_line`: one event, one line, one JSON object."""

    def test_fields(self) -> None:
        line = json_line(event())
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(record["text"], "Peer ab12 sent 3 events")
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["namespace"], "bitfitech.gossip")
        self.assertEqual(record["time"], "2023-11-14T22:13:20.250+00:00")
        self.assertEqual((record["peer"], record["count"]), ("ab12", 3))
        self.assertEqual(record["log_format"], "Peer {peer} sent {count} events")
        self.assertNotIn("log_logger", record)
        self.assertTrue(set(JSON_KEYS) <= set(record))

    def test_failure_traceback_in_text(self) -> None:
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            failure = Failure()
        record = json.loads(json_line(event(log_failure=failure, log_format="It broke")))
        self.assertTrue(record["text"].startswith("It broke\n"))
        self.assertIn("ZeroDivisionError", record["text"])
        self.assertEqual(record["level"], "warn")

    def test_unserializable_values(self) -> None:
        record = json.loads(json_line(event(peer=object(), count=b"\xff")))
        self.assertEqual(record["peer"], {"unpersistable": True})
        self.assertEqual(record["count"], "\xff")

    def test_read_back_by_twisted(self) -> None:
        out = io.StringIO()
        observer = json_file_observer(out)
        observer(event())
        observer(event(peer="cd34", log_level=LogLevel.info))
        out.seek(0)
        events = list(eventsFromJSONLogFile(out))
        self.assertEqual([e["peer"] for e in events], ["ab12", "cd34"])
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn, LogLevel.info])
        self.assertEqual(len(out.getvalue().splitlines()), 2)


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
        cases = [
            (("--syslog",), "--syslog"),
            (("-n", "--logger", TWISTD_JSON_LOGGER), "--logger"),
            (("--logfile=-",), "-n"),
        ]
        for args, named in cases:
            error = self.assertRaises(
                UsageError, self.twistd, *args, bitfi=("--log-format", "json")
            )
            self.assertIn(named, str(error), args)

    def test_bad_format(self) -> None:
        error = self.assertRaises(UsageError, self.twistd, "-n", bitfi=("--log-format", "xml"))
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
        texts = [record["text"] for record in records]
        self.assertTrue(any("starting up" in text for text in texts), node.describe())
        listening = [r for r in records if r["namespace"] == "bitfitech.peer.service"
                     and "listening for peers" in r["text"]]  # fmt: skip
        self.assertEqual(len(listening), 1, node.describe())
        self.assertEqual(listening[0]["level"], "info")
        self.assertEqual(listening[0]["where"], f"127.0.0.1:{node.port}")
        access = [r for r in records if r["namespace"] == "bitfitech.api.access"]
        self.assertTrue(access, node.describe())  # --log-level debug: the access log
        self.assertEqual((access[0]["method"], access[0]["path"]), ("GET", "/status"))
        self.assertTrue(all(set(JSON_KEYS) <= set(record) for record in records))
        self.assertIn("Main loop terminated.", texts)

    async def test_stdout(self) -> None:
        node, records = await self.run_node()
        self.check(node, records)

    async def test_log_file(self) -> None:
        path = os.path.abspath(self.mktemp())
        node, records = await self.run_node(logfile=path)
        self.check(node, records)
        self.assertNotIn("{", node.output)  # nothing went to stdout
