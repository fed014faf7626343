"""bitfi's log events: one :mod:`twisted.logger` system, with a level filter.

Every bitfi module logs through a :class:`~twisted.logger.Logger` made by
:func:`logger`, whose events pass a level filter (``--log-level`` /
``$LOG_LEVEL``) and then go to the global log publisher like any other
Twisted event, so twistd's log file, ``EventLoggingObserver`` in tests and
any other observer see them.  Twisted's own events are not filtered.

How events are written is twistd's business: human-readable text by
default, or with ``--log-format json`` one JSON object per line
(:func:`json_line`), written by an observer that the plugin's options hand
to twistd through twistd's own ``--logger`` option
(:func:`use_json_under_twistd`), so that it replaces the text observer and
goes where ``--logfile`` says.

Node tags.  When one process runs several nodes (``tac/local-cluster.tac``,
:class:`bitfitech.testing.LocalCluster`), each node's events carry its tag
(``node2``): a ``node`` field, shown in the text format's brackets
(``[node2 bitfitech.peer.hub#info]``) and as ``"node"`` in JSON lines.
Loggers are made per module, so the tag cannot come from the logger: it is
a context variable (:func:`node_tag`), set while a node's code runs.  Twisted
calls a node's code from its reactor (timers, calls from threads, the
protocols of its connections and ports), and the reactor knows no context,
so each node gets its own view of the reactor, :class:`TaggedReactor`,
which runs every callback it is handed under the node's tag; coroutines
keep the tag they started with (Twisted runs each in a copy of the context
it was started in), and a node's start and stop run under :func:`tagged`.
A process that runs one node sets no tag, and its lines are as before.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, Any

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.python.reflect import safe_repr
from twisted.python.usage import UsageError
from zope.interface import directlyProvides, implementer, providedBy

_NAMESPACE = "bitfitech"
_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)
_predicate.setLogLevelForNamespace(_NAMESPACE, LogLevel.info)

#: the tag of the node whose code runs now (``None``: one node per process)
_node_tag: ContextVar[str | None] = ContextVar("bitfi_node_tag", default=None)


@implementer(ILogObserver)
class _NodeTagging:
    """Adds the current node's tag to each event (``node``, ``log_system``), then passes it on."""

    def __init__(self, observer: ILogObserver) -> None:
        self.observer = observer

    def __call__(self, event: LogEvent) -> None:
        tag = _node_tag.get()
        if tag is not None:
            level = event.get("log_level")
            event["node"] = tag
            event["log_system"] = (
                f"{tag} {event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
            )
        self.observer(event)


_observer = FilteringLogObserver(_NodeTagging(globalLogPublisher), [_predicate])


def logger(namespace: str) -> Logger:
    """
    A logger for one bitfi module, filtered by the configured level.

    :param namespace: the module's ``__name__`` (``bitfitech.peer.hub``).
    """
    return Logger(namespace=namespace, observer=_observer)


def set_log_level(level: LogLevel) -> None:
    """Set the minimum level of bitfi's log events (process-wide)."""
    _predicate.setLogLevelForNamespace(_NAMESPACE, level)


def log_level() -> LogLevel:
    """The minimum level of bitfi's log events."""
    level: LogLevel = _predicate.logLevelForNamespace(_NAMESPACE)
    return level


def enabled(level: LogLevel) -> bool:
    """
    Whether bitfi's events at C{level} pass the filter: ask before building
    an event that is costly to build and often filtered out.
    """
    passes: bool = level >= log_level()
    return passes


# -- Node tags (several nodes in one process)


def node_tag() -> str | None:
    """The tag of the node whose code runs now, or ``None``."""
    return _node_tag.get()


@contextmanager
def tagged(tag: str | None) -> Iterator[None]:
    """
    Run the body under node tag C{tag}: bitfi's events logged meanwhile
    carry it (``None``: the tag, if any, stays as it is).
    """
    if tag is None:
        yield
        return
    token = _node_tag.set(tag)
    try:
        yield
    finally:
        _node_tag.reset(token)


def call_tagged(tag: str, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call C{function(*args, **kwargs)} under node tag C{tag}; return what it returns."""
    token = _node_tag.set(tag)
    try:
        return function(*args, **kwargs)
    finally:
        _node_tag.reset(token)


class TaggedReactor:
    """
    One node's view of a reactor: every callback the node hands it runs
    under the node's tag.

    That is: delayed calls (``callLater``, so ``LoopingCall`` and
    ``deferLater`` on it too), calls from threads (``callFromThread``, so
    the results of ``deferToThreadPool`` on it), calls in threads,
    ``callWhenRunning`` and system event triggers; host name resolutions
    (``nameResolver``, which ``HostnameEndpoint`` uses); and the factories
    and protocols of the TCP connections and ports (adopted ones too), UDP
    ports and multicast ports opened through it (endpoints made on it included),
    whose methods the reactor calls when data comes, a connection is made
    or lost, or a port starts or stops.  A protocol is wrapped, not
    changed: it is still handed the reactor's own transport.  Everything
    else (the time, ``resolve``, other kinds of sockets, processes) is the
    reactor's own, untagged: a node opens none of those other kinds, and
    calls ``resolve`` only from coroutines, which keep their tag.

    It provides every interface the reactor provides.

    :ivar tag: the node's tag.
    """

    def __init__(self, reactor: Any, tag: str) -> None:
        self._reactor = reactor
        self.tag = tag
        directlyProvides(self, providedBy(reactor))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def __repr__(self) -> str:
        return f"<TaggedReactor {self.tag} of {self._reactor!r}>"

    def callLater(
        self, delay: float, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> IDelayedCall:
        call: IDelayedCall = self._reactor.callLater(
            delay, call_tagged, self.tag, function, *args, **kwargs
        )
        return call

    def callFromThread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._reactor.callFromThread(call_tagged, self.tag, function, *args, **kwargs)

    def callInThread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._reactor.callInThread(call_tagged, self.tag, function, *args, **kwargs)

    def callWhenRunning(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._reactor.callWhenRunning(call_tagged, self.tag, function, *args, **kwargs)

    def addSystemEventTrigger(
        self, phase: str, event_type: str, function: Callable[..., Any], *args: Any,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        return self._reactor.addSystemEventTrigger(
            phase, event_type, call_tagged, self.tag, function, *args, **kwargs
        )

    @property
    def nameResolver(self) -> IHostnameResolver:
        resolver: IHostnameResolver = _TaggedResolver(self._reactor.nameResolver, self.tag)
        return resolver

    def listenTCP(self, port: int, factory: Any, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.listenTCP(port, _TaggedFactory(factory, self.tag), *args, **kwargs)

    def connectTCP(self, host: str, port: int, factory: Any, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.connectTCP(
            host, port, _TaggedFactory(factory, self.tag), *args, **kwargs
        )

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: Any, factory: Any) -> Any:
        return self._reactor.adoptStreamPort(
            fileDescriptor, addressFamily, _TaggedFactory(factory, self.tag)
        )

    def adoptDatagramPort(
        self, fileDescriptor: int, addressFamily: Any, protocol: Any, *args: Any, **kwargs: Any
    ) -> Any:
        return self._reactor.adoptDatagramPort(
            fileDescriptor, addressFamily, _TaggedProtocol(protocol, self.tag), *args, **kwargs
        )

    def listenUDP(self, port: int, protocol: Any, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.listenUDP(port, _TaggedProtocol(protocol, self.tag), *args, **kwargs)

    def listenMulticast(self, port: int, protocol: Any, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.listenMulticast(
            port, _TaggedProtocol(protocol, self.tag), *args, **kwargs
        )


@implementer(IHostnameResolver)
class _TaggedResolver:
    """A host name resolver whose answers reach their receiver under a node tag."""

    def __init__(self, resolver: IHostnameResolver, tag: str) -> None:
        self._resolver = resolver
        self._tag = tag

    def resolveHostName(
        self, resolutionReceiver: IResolutionReceiver, hostName: str, portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None, transportSemantics: str = "TCP",
    ) -> IHostResolution:  # fmt: skip
        resolution: IHostResolution = self._resolver.resolveHostName(
            _TaggedReceiver(resolutionReceiver, self._tag), hostName, portNumber, addressTypes,
            transportSemantics,
        )  # fmt: skip
        return resolution


@implementer(IResolutionReceiver)
class _TaggedReceiver:
    """Passes a resolution's answers on to C{receiver}, under a node tag."""

    def __init__(self, receiver: IResolutionReceiver, tag: str) -> None:
        self._receiver = receiver
        self._tag = tag

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        call_tagged(self._tag, self._receiver.resolutionBegan, resolutionInProgress)

    def addressResolved(self, address: IAddress) -> None:
        call_tagged(self._tag, self._receiver.addressResolved, address)

    def resolutionComplete(self) -> None:
        call_tagged(self._tag, self._receiver.resolutionComplete)


class _TaggedFactory:
    """A protocol factory whose methods, and whose protocols', run under a node tag."""

    def __init__(self, factory: Any, tag: str) -> None:
        self._factory = factory
        self._tag = tag
        directlyProvides(self, providedBy(factory))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)

    def __repr__(self) -> str:
        return repr(self._factory)

    def buildProtocol(self, addr: Any) -> Any:
        protocol = call_tagged(self._tag, self._factory.buildProtocol, addr)
        return None if protocol is None else _TaggedProtocol(protocol, self._tag)

    def doStart(self) -> None:
        call_tagged(self._tag, self._factory.doStart)

    def doStop(self) -> None:
        call_tagged(self._tag, self._factory.doStop)

    def startedConnecting(self, connector: Any) -> None:
        call_tagged(self._tag, self._factory.startedConnecting, connector)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        call_tagged(self._tag, self._factory.clientConnectionFailed, connector, reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        call_tagged(self._tag, self._factory.clientConnectionLost, connector, reason)


class _TaggedProtocol:
    """
    A stream or datagram protocol whose methods called by the reactor run
    under a node tag; the protocol itself is handed the reactor's transport.
    """

    def __init__(self, protocol: Any, tag: str) -> None:
        self._protocol = protocol
        self._tag = tag
        directlyProvides(self, providedBy(protocol))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol, name)

    def __repr__(self) -> str:
        return repr(self._protocol)

    def makeConnection(self, transport: Any) -> None:
        call_tagged(self._tag, self._protocol.makeConnection, transport)

    def dataReceived(self, data: bytes) -> None:
        call_tagged(self._tag, self._protocol.dataReceived, data)

    def connectionLost(self, reason: Failure) -> None:
        call_tagged(self._tag, self._protocol.connectionLost, reason)

    def readConnectionLost(self) -> None:
        call_tagged(self._tag, self._protocol.readConnectionLost)

    def writeConnectionLost(self) -> None:
        call_tagged(self._tag, self._protocol.writeConnectionLost)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        call_tagged(self._tag, self._protocol.datagramReceived, datagram, addr)

    def connectionRefused(self) -> None:
        call_tagged(self._tag, self._protocol.connectionRefused)

    def doStop(self) -> None:
        call_tagged(self._tag, self._protocol.doStop)


# -- JSON lines (``--log-format json``)

#: the keys every JSON line starts with (``node`` follows ``system`` on a tagged event)
JSON_KEYS = ("time", "level", "system", "message")
#: keys of Twisted's legacy events (:mod:`twisted.python.log`) that are not fields of their own
_LEGACY_KEYS = frozenset(
    {"message", "time", "system", "isError", "why", "failure", "format", "logLevel", "printed"}
)
#: containers deeper than this are written as their ``repr``
_MAX_DEPTH = 6
#: the value of twistd's ``--logger`` option that makes it log JSON lines.
TWISTD_JSON_LOGGER = f"{__name__}.twistd_json_observer"


def json_line(event: LogEvent) -> str:
    """
    One log event as one line of JSON (ending with a newline), with what
    an operator needs and no more:

    - ``time``: when, as RFC 3339 in UTC with milliseconds
      (``2026-12-05T07:12:03.120Z``): a timestamp people read as it is
      and log tools parse;
    - ``level``: ``debug``, ``info``, ``warn``, ``error`` or ``critical``;
    - ``system``: the logger's namespace (``bitfitech.peer.hub``), or the
      ``system`` of Twisted's legacy events (``-``, or the connection's
      log prefix);
    - ``node``: the node's tag, when several nodes run in the process;
    - ``message``: the text of the event, as the text format shows it;
    - the event's own fields (what the log call passed: ``peer``,
      ``count``...; not Twisted's ``log_*`` keys), a value JSON has no
      type for written as text (bytes decoded as UTF-8 with backslash
      escapes, a decimal as its digits, NaN and infinities as ``"nan"``,
      ``"inf"``, sets as sorted lists, anything else as its ``repr``); a
      field named like one of the keys above is left out (``error`` only
      beside a failure);
    - for a failure: ``error`` (the exception's type and message) and
      ``traceback``.

    The line is ASCII (other characters escaped), so it is valid JSON
    whatever the event holds.  It never raises (an observer must not): an
    event it cannot write becomes a line saying so.
    """
    try:
        return _json_line(event)
    except Exception as e:
        record = {
            "time": _rfc3339(datetime.now(UTC).timestamp()),
            "level": "error",
            "system": __name__,
            "message": f"Cannot write a log event as JSON: {safe_repr(e)}",
        }
        return json.dumps(record, separators=(",", ":")) + "\n"


def _json_line(event: LogEvent) -> str:
    legacy = event.get("log_namespace") == "log_legacy"
    failure = event.get("log_failure")
    if failure is None and legacy and event.get("isError"):
        failure = event.get("failure")
    if not isinstance(failure, Failure):
        failure = None
    if legacy and failure is not None:
        # Its text is the traceback, which has its own key here.
        message = str(event.get("why") or "Unhandled Error")
    else:
        message = formatEvent(event)
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": _rfc3339(when) if isinstance(when, int | float) else None,
        "level": _plain(getattr(event.get("log_level"), "name", None)),
        "system": _plain(event.get("log_system") if legacy else event.get("log_namespace")),
    }
    if "node" in event:
        record["node"] = _plain(event["node"])
    record["message"] = message
    reserved = ("error", "traceback") if failure is not None else ()
    for key, value in event.items():
        if (
            not isinstance(key, str) or key.startswith("log_") or key in record
            or key in reserved or (legacy and key in _LEGACY_KEYS)
        ):  # fmt: skip
            continue
        record[key] = _plain(value)
    if failure is not None:
        record["error"] = f"{_type_name(failure.type)}: {failure.getErrorMessage()}"
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"


def _rfc3339(when: float) -> str:
    """Unix time C{when} as RFC 3339 in UTC with milliseconds (``...T07:12:03.120Z``)."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _type_name(kind: object) -> str:
    """An exception type's name, with its module unless it is a builtin."""
    if not isinstance(kind, type):
        return str(kind)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _plain(value: object, depth: int = 0) -> object:
    """C{value} as something :func:`json.dumps` writes (see :func:`json_line`)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, Decimal):
        return str(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {
                key if isinstance(key, str) else safe_repr(key): _plain(item, depth + 1)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [_plain(item, depth + 1) for item in value]
        if isinstance(value, set | frozenset):
            return sorted((_plain(item, depth + 1) for item in value), key=repr)
    return safe_repr(value)


class _JSONFileObserver(FileLogObserver):
    """
    Writes each event as a JSON line (:func:`json_line`), with the tag of
    the node whose code logged it (:func:`node_tag`): Twisted's own events
    logged by a node's code (a connection lost, an unhandled error) carry
    it too.
    """

    def __init__(self, out: IO[Any]) -> None:
        super().__init__(out, json_line)

    def __call__(self, event: LogEvent) -> None:
        tag = _node_tag.get()
        if tag is not None and "node" not in event:
            event = {**event, "node": tag}
        super().__call__(event)


def json_file_observer(out: IO[Any]) -> ILogObserver:
    """An observer writing each event to C{out} as one line of JSON (:func:`json_line`)."""
    observer: ILogObserver = _JSONFileObserver(out)
    return observer


class _TwistdDestination:
    """Where twistd would have written its text log: ``None`` for stdout, else a path."""

    path: str | None = None


_twistd_destination = _TwistdDestination()


def use_json_under_twistd(twistd_options: MutableMapping[str, Any]) -> None:
    """
    Make twistd write JSON lines (:func:`json_line`) where it would write text.

    twistd starts logging after ``makeService``, with the observer its
    ``--logger`` option names, else its text observer on ``--logfile``.
    This fills ``--logger`` with :data:`TWISTD_JSON_LOGGER`
    (:func:`twistd_json_observer`) and remembers the destination twistd
    would have chosen: stdout for ``--logfile=-`` (or no ``--logfile`` with
    ``-n``), else the file (``twistd.log`` by default), rotated like
    twistd's own.  twistd's own lines ("twistd ... starting up") are JSON
    too, and twistd removes the observer at shutdown as usual.

    :param twistd_options: twistd's parsed options (the plugin's
        ``Options.parent``), before twistd's own ``postOptions``.
    :raises UsageError: with twistd's ``--logger`` or ``--syslog``, which
        choose another observer, or ``--logfile=-`` without ``-n``.
    """
    if twistd_options.get("logger"):
        raise UsageError("--log-format json cannot go with twistd's --logger")
    if twistd_options.get("syslog"):
        raise UsageError("--log-format json cannot go with twistd's --syslog")
    logfile = twistd_options.get("logfile") or None
    nodaemon = bool(twistd_options.get("nodaemon", True))  # no such option: never a daemon
    if logfile == "-" and not nodaemon:
        raise UsageError("twistd writes logs to stdout (--logfile=-) only with -n (--nodaemon)")
    if logfile == "-" or (logfile is None and nodaemon):
        _twistd_destination.path = None
    else:
        _twistd_destination.path = os.path.abspath(logfile or "twistd.log")
    twistd_options["logger"] = TWISTD_JSON_LOGGER


def twistd_json_observer() -> ILogObserver:
    """
    twistd's ``--logger`` factory for ``--log-format json``: JSON lines to
    the destination :func:`use_json_under_twistd` recorded (stdout if none).

    A log file is a :class:`twisted.python.logfile.LogFile`: rotated at
    1 MB, and on ``SIGUSR1`` as twistd does for its own.
    """
    path = _twistd_destination.path
    if path is None:
        return json_file_observer(sys.stdout)
    log_file = LogFile.fromFullPath(path)
    _rotate_on_sigusr1(log_file)
    return json_file_observer(log_file)


def _rotate_on_sigusr1(log_file: LogFile) -> None:
    """Rotate C{log_file} on ``SIGUSR1`` unless something else handles it (as twistd does)."""
    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is None or signal.getsignal(usr1) not in (None, signal.SIG_DFL):
        return

    def rotate(signum: int, frame: object) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

    signal.signal(usr1, rotate)
