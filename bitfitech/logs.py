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
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.python.usage import UsageError

_NAMESPACE = "bitfitech"
_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)
_predicate.setLogLevelForNamespace(_NAMESPACE, LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


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


# -- JSON lines under twistd (``--log-format json``)

#: keys bitfi adds to every JSON line (an event's own field of that name is overwritten).
JSON_KEYS = ("time", "level", "namespace", "text")
#: event keys left out of JSON lines: the Logger object itself, never serializable.
_LEFT_OUT = frozenset({"log_logger"})
#: the value of twistd's ``--logger`` option that makes it log JSON lines.
TWISTD_JSON_LOGGER = f"{__name__}.twistd_json_observer"


def json_line(event: LogEvent) -> str:
    """
    One log event as one line of JSON (ending with a newline).

    The object holds what :func:`twisted.logger.eventAsJSON` keeps of the
    event (every field of its format string, ``log_namespace``,
    ``log_level``, ``log_time``, a failure as a dictionary; so Twisted's
    :func:`~twisted.logger.eventsFromJSONLogFile` reads the lines back),
    plus four flat keys for people and log shippers: ``time`` (ISO 8601,
    UTC), ``level`` (``debug`` ... ``critical``), ``namespace`` and
    ``text`` (the message as the text format shows it, with the
    traceback of a failure).
    """
    fields = {key: value for key, value in event.items() if key not in _LEFT_OUT}
    when = event.get("log_time")
    level = getattr(event.get("log_level"), "name", None)
    text = formatEvent(event)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        text = f"{text}\n{failure.getTraceback()}".rstrip("\n")
    fields.update(
        time=(
            datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
            if isinstance(when, int | float)
            else None
        ),
        level=level if isinstance(level, str) else None,
        namespace=event.get("log_namespace"),
        text=text,
    )
    return eventAsJSON(fields) + "\n"


def json_file_observer(out: IO[Any]) -> ILogObserver:
    """An observer writing each event to C{out} as one line of JSON (:func:`json_line`)."""
    observer: ILogObserver = FileLogObserver(out, json_line)
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
