"""bitfi's log events: one :mod:`twisted.logger` system, with a level filter.

Every bitfi module logs through a :class:`~twisted.logger.Logger` made by
:func:`logger`, whose events pass a level filter (``--log-level`` /
``$LOG_LEVEL``) and then go to the global log publisher like any other
Twisted event, so twistd's log file, ``EventLoggingObserver`` in tests and
any other observer see them.  Twisted's own events are not filtered.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

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
