"""The HTTP API's site: twisted.web's HTTP server, with bitfi's access log.

Data path: TCP -> :class:`ApiSite` (HTTP) -> the resources of
:mod:`bitfitech.api.resources`; once a request is answered, the site logs
it.  twisted.web's own access log formats a combined-log line for every
request whatever the log level; :class:`ApiSite` logs one structured event
through bitfi's logger at debug level instead, and builds nothing when debug
is filtered out.
"""

from __future__ import annotations

from twisted.logger import LogLevel
from twisted.web.http import Request
from twisted.web.server import Site

from ..logs import enabled, logger

log = logger("bitfitech.api.access")


class ApiSite(Site):
    """
    The API's :class:`~twisted.web.server.Site`: quiet, no tracebacks in
    answers, and an access log at debug level.
    """

    noisy = False
    displayTracebacks = False

    def log(self, request: Request) -> None:
        """Log one answered C{request}, if bitfi logs at debug level."""
        if not enabled(LogLevel.debug):
            return
        address = request.getClientAddress()
        log.debug(
            '{client} "{method} {uri}" {status} {length}',
            client=getattr(address, "host", "-"),
            method=request.method.decode("ascii", "backslashreplace"),
            uri=request.uri.decode("ascii", "backslashreplace"),
            path=request.path.decode("ascii", "backslashreplace"),
            status=request.code,
            length=request.sentLength,
        )
