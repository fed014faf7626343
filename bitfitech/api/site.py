"""The HTTP API's site: twisted.web's HTTP server, with bitfi's access log and latency.

Data path: TCP -> :class:`ApiSite` (HTTP) -> the resources of
:mod:`bitfitech.api.resources`; once a request is answered, the site logs
it and, given a metrics registry, observes how long it took in the
histogram ``bitfi_api_request_duration_seconds``
(:func:`bitfitech.api.metrics.api_latency`).  twisted.web's own access log
formats a combined-log line for every request whatever the log level;
:class:`ApiSite` logs one structured event through bitfi's logger at debug
level instead, and builds nothing when debug is filtered out.
"""

from __future__ import annotations

import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from twisted.logger import LogLevel
from twisted.web.http import Request
from twisted.web.resource import IResource
from twisted.web.server import Request as ServerRequest
from twisted.web.server import Site

from ..logs import enabled, logger
from .metrics import api_latency, observe_request

log = logger("bitfitech.api.access")


class ApiRequest(ServerRequest):
    """
    A request whose body twisted.web never parses as a form: the API takes
    JSON, and its resources read ``request.content`` themselves.  Form
    parsing reads every POST's Content-Type through the email package
    first, whatever the type: that was a fifth of a node's CPU per order
    posted.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, parsePOSTFormSubmission=False, **kwargs)


class ApiSite(Site):
    """
    The API's :class:`~twisted.web.server.Site`: quiet, no tracebacks in
    answers, an access log at debug level, and request latency in a
    Prometheus histogram when given a registry.
    """

    noisy = False
    displayTracebacks = False
    requestFactory = ApiRequest

    def __init__(
        self,
        resource: IResource,
        *args: Any,
        registry: CollectorRegistry | None = None,
        **kwargs: Any,
    ) -> None:
        """
        :param resource: the root resource.
        :param registry: the node's metrics registry, where each answered
            request is observed (its time from arrival to the last byte,
            on the site's reactor clock); ``None``: not measured.

        Other arguments are :class:`~twisted.web.server.Site`'s (``reactor=``).
        """
        super().__init__(resource, *args, **kwargs)
        self.latency: Histogram | None = api_latency(registry) if registry is not None else None
        self._arrived: weakref.WeakKeyDictionary[Request, float] = weakref.WeakKeyDictionary()

    def getResourceFor(self, request: Request) -> IResource:
        """Note when C{request} arrived (complete), then find its resource."""
        if self.latency is not None:
            self._arrived[request] = self.reactor.seconds()
        resource: IResource = super().getResourceFor(request)
        return resource

    def log(self, request: Request) -> None:
        """Measure one answered C{request}, and log it if bitfi logs at debug level."""
        arrived = self._arrived.pop(request, None)
        if self.latency is not None and arrived is not None:
            observe_request(
                self.latency,
                request.method.decode("ascii", "replace"),
                request.code,
                self.reactor.seconds() - arrived,
            )
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
