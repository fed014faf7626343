"""The HTTP API's site: twisted.web's HTTP server, bounded, with bitfi's access log and latency.

Data path: TCP -> :class:`ApiSite` (one :class:`ApiChannel` per connection,
one :class:`ApiRequest` per request) -> the resources of
:mod:`bitfitech.api.resources`; once a request is answered, the site logs
it and, given a metrics registry, observes how long it took in the
histogram ``bitfi_api_request_duration_seconds``
(:func:`bitfitech.api.metrics.api_latency`).  twisted.web's own access log
formats a combined-log line for every request whatever the log level;
:class:`ApiSite` logs one structured event through bitfi's logger at debug
level instead, and builds nothing when debug is filtered out.

What a client may hold of the node is bounded here, before any resource
runs (the figures are in :func:`bitfitech.api.metrics.api_connections`):

- **Connections**: at most ``max_connections`` open at once, live streams
  included.  One more is accepted, its request head read (for at most
  :data:`HEAD_WAIT` seconds), and answered ``503`` with ``Retry-After``
  and the API's JSON error, then closed (:class:`RefusedConnection`); no
  resource runs for it.  Refusing at accept instead (not accepting, or
  closing at once) would tell clients nothing: the kernel's backlog fills
  and connects hang until they time out, or the client sees a reset it
  cannot tell from a crash and retries at once, and an operator cannot
  tell an overloaded node from a dead one.  A 503 costs one accept, a
  header scan and one write, and ``Retry-After`` spaces the retries.
  While :data:`MAX_REFUSING` refusals are in progress (a connection
  flood), one more connection is closed at accept.
- **Request bodies**: a body announced past
  :data:`~bitfitech.api.jsonresource.MAX_BODY` (``Content-Length``) is
  answered 413 before a byte of it is read, even with ``Expect:
  100-continue``; a chunked body is answered 413 as soon as it grows past
  it.  A body is held in memory, never spooled to disk.
- **Time**: a connection idle between requests, or that has not sent one
  whole request within ``idle_timeout`` seconds of its first byte (a
  slowloris), is closed.  A request being answered is never timed out:
  twisted.web stops the idle timer from a request's arrival to its last
  byte, so a live stream (``GET /stream``) stays open while it streams.

An answer given before the request was read whole (a 503 or a 413) is
followed by a bounded *lingering close*: the node shuts down its side of
the connection, then reads and discards what the client still sends for
:data:`LINGER` seconds before it aborts.  Closing at once, with unread
bytes, would make the kernel send a reset that can destroy the answer
before the client reads it.

At stop, :meth:`ApiSite.close_connections` closes every connection, and
aborts those still open after a grace period.
"""

from __future__ import annotations

import re
import weakref
from io import BytesIO
from typing import Any, Final

from prometheus_client import CollectorRegistry, Histogram
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel, Request, datetimeToString
from twisted.web.resource import IResource
from twisted.web.server import Request as ServerRequest
from twisted.web.server import Site

from ..config import DEFAULT_API_IDLE_TIMEOUT, DEFAULT_API_MAX_CONNECTIONS
from ..logs import enabled, logger
from .jsonresource import MAX_BODY, ApiError, body_too_large, json_bytes
from .metrics import ApiConnectionMetrics, api_connections, api_latency, observe_request

log = logger(__name__)
access_log = logger("bitfitech.api.access")

#: a stream ticket in a request's URI: the access log writes ``ticket=-``
_TICKET_RE = re.compile(rb"([?&]ticket=)[^&]*")

RETRY_AFTER: Final = 2
"""Seconds a client refused at the connection cap is told to wait (``Retry-After``)."""
HEAD_WAIT: Final = 1.0
"""Seconds a connection past the cap may take to send its request head before it is answered."""
MAX_HEAD: Final = 16 * 1024
"""Bytes of a request head read, at most, from a connection past the cap (twisted.web's limit)."""
LINGER: Final = 1.0
"""Seconds a connection answered early (503, 413) is read and discarded before it is aborted."""
MAX_REFUSING: Final = 64
"""Refusals in progress at most; a connection past the cap beyond them is closed at accept."""
ABORT_AFTER: Final = 5
"""Seconds a timed-out connection may take to close (its answer unread) before it is aborted."""
CLOSE_GRACE: Final = 1.0
"""Seconds :meth:`ApiSite.close_connections` waits before it aborts what is still open."""


def error_answer(error: ApiError, now: float, *, retry_after: int | None = None,
                 head: bool = False) -> bytes:  # fmt: skip
    """
    A whole HTTP answer carrying C{error} in the API's error shape
    (``{"error": "..."}``, JSON), for a connection that is closed after
    it (``Connection: close``): what the site writes itself, before any
    resource could run.

    :param now: the time of the ``Date`` header (seconds since the epoch).
    :param retry_after: seconds for a ``Retry-After`` header, if any.
    :param head: the request was a ``HEAD``: the headers only.
    """
    body = json_bytes(error.body())
    reason = RESPONSES.get(error.status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s" % (error.status, reason),
        b"Date: " + datetimeToString(now),
        b"Content-Type: application/json; charset=utf-8",
        b"Content-Length: %d" % len(body),
        b"Cache-Control: no-store",
        b"Connection: close",
    ]
    if retry_after is not None:
        lines.append(b"Retry-After: %d" % retry_after)
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body)


def close_lingering(transport: ITransport, clock: IReactorTime, seconds: float) -> IDelayedCall:
    """
    Close C{transport} after an early answer without losing the answer to a
    TCP reset: shut down the sending side now (the client reads the answer,
    then the end of the stream), and abort the connection after C{seconds}
    unless the client has closed it by then.  A transport that cannot
    half-close is closed at once.

    :return: the pending abort, for the protocol to cancel when the
        connection is gone.
    """
    half_close = getattr(transport, "loseWriteConnection", None)
    if half_close is not None:
        half_close()
    else:
        transport.loseConnection()
    return clock.callLater(seconds, _abort, transport)


def _abort(transport: ITransport) -> None:
    """Abort C{transport} now, dropping what is buffered either way."""
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


def _cancel(call: IDelayedCall | None) -> None:
    """Cancel C{call} if it is still pending."""
    if call is not None and call.active():
        call.cancel()


class ApiRequest(ServerRequest):
    """
    A request whose body is bounded and never parsed as a form.

    twisted.web spools a body of unknown or large length to a temporary file
    and hands a request over only once the whole body has arrived; this
    request holds its body in memory and refuses it (413, through its
    :class:`ApiChannel`) as soon as it is known to exceed
    :data:`~bitfitech.api.jsonresource.MAX_BODY`: at the headers for an
    announced length, at the chunk that crosses it for a chunked body.

    The API takes JSON, and its resources read ``request.content``
    themselves: form parsing would read every POST's Content-Type through
    the email package first, whatever the type (that was a fifth of a
    node's CPU per order posted).

    :ivar body_refused: whether the body was refused (nothing more of it is kept).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, parsePOSTFormSubmission=False, **kwargs)
        self.body_refused = False

    def gotLength(self, length: int | None) -> None:
        """
        The channel has read the headers: C{length} is the announced body
        length (``None``: chunked).  Refuse a length past the limit now.
        """
        self.content = BytesIO()
        if length is not None and length > MAX_BODY:
            self._refuse_body()

    def handleContentChunk(self, data: bytes) -> None:
        """Keep one piece of the body, or refuse the body if it grows past the limit."""
        content = self.content
        if self.body_refused or content is None:
            return
        if content.tell() + len(data) > MAX_BODY:
            self._refuse_body()
            return
        content.write(data)

    def _refuse_body(self) -> None:
        self.body_refused = True
        self.content = BytesIO()
        refuse = getattr(self.channel, "refuse_body", None)
        if refuse is not None:
            refuse()
        else:  # a plain HTTPChannel cannot answer early: end the connection
            _abort(_transport(self.channel))


class ApiChannel(HTTPChannel):
    """
    One HTTP connection of the API: twisted.web's channel, counted by its
    :class:`ApiSite`, with a deadline on each request, a 413 answered early
    for a body past the limit, and a graceful close at stop.

    :ivar site: the site that made it (set by :meth:`ApiSite.buildProtocol`).
    :ivar answering: whether a request has arrived whole and is being answered.
    :ivar refusing: whether a request was refused early (413): nothing more is read.
    """

    site: ApiSite
    abortTimeout = ABORT_AFTER

    def __init__(self) -> None:
        super().__init__()
        self.answering = False
        self.refusing = False
        self._request_deadline: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None
        self._released = False
        self._closing = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connection_opened(self)

    def dataReceived(self, data: bytes) -> None:
        """Start the request deadline at a request's first byte; read nothing after a refusal."""
        if self.refusing:
            return
        timeout = self.site.timeOut
        if not self.answering and self._request_deadline is None and timeout:
            self._request_deadline = self.callLater(timeout, self._request_too_slow)
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self.refusing:
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        """The request has arrived whole: stop its deadline, then answer it."""
        if self.refusing:
            return
        _cancel(self._request_deadline)
        self._request_deadline = None
        self.answering = True
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        self.answering = False
        super().requestDone(request)

    def _send100Continue(self) -> None:
        # twisted.web sends "100 Continue" right after gotLength: not for a refused body.
        if not self.refusing:
            super()._send100Continue()

    def refuse_body(self) -> None:
        """
        Answer the request being read 413 now, read nothing more of it, and
        close the connection (lingering: :func:`close_lingering`).
        """
        if self.refusing:
            return
        self.refusing = True
        self.setTimeout(None)
        _cancel(self._request_deadline)
        self._request_deadline = None
        self.site.body_refused()
        if enabled(LogLevel.debug):
            log.debug("Answered 413 to {client}: a request body past {limit} bytes",
                      client=_host(self.transport), limit=MAX_BODY)  # fmt: skip
        transport = _transport(self)
        transport.write(error_answer(body_too_large(), self.site.reactor.seconds()))
        self._release_transport()
        self._closing = True
        self._abort_call = close_lingering(transport, self.site.reactor, LINGER)

    def timeoutConnection(self) -> None:
        """The idle timer fired: close (counted, logged at debug level only)."""
        self._time_out("idle" if self._request_deadline is None else "request")

    def _request_too_slow(self) -> None:
        self._request_deadline = None
        self._time_out("request")

    def _time_out(self, phase: str) -> None:
        self.setTimeout(None)
        _cancel(self._request_deadline)
        self._request_deadline = None
        self.site.connection_timed_out(phase)
        if enabled(LogLevel.debug):
            log.debug("Closed HTTP API connection from {client}: timed out ({phase})",
                      client=_host(self.transport), phase=phase)  # fmt: skip
        self.loseConnection()
        if self._abort_call is None:
            self._abort_call = self.callLater(self.abortTimeout, self.abort)

    def loseConnection(self) -> None:
        """Close once what is written has been sent (idempotent)."""
        if self._closing:
            return
        self._closing = True
        self._release_transport()
        _transport(self).loseConnection()

    def close_gracefully(self) -> None:
        """
        Close without cutting an answer: now if no request is being
        answered, else once its answer is written (``Connection: close``).
        """
        if self.answering and not self._closing:
            self.persistent = False
            for request in self.requests:
                if not request.startedWriting:
                    request.setHeader(b"connection", b"close")
        else:
            self.loseConnection()

    def abort(self) -> None:
        """Drop the connection now, with whatever is buffered for it."""
        self._abort_call = None
        _abort(_transport(self))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        _cancel(self._request_deadline)
        _cancel(self._abort_call)
        self._request_deadline = self._abort_call = None
        try:
            super().connectionLost(reason)
        finally:
            self.site.connection_closed(self)

    def _release_transport(self) -> None:
        """Stop being the transport's producer (twisted.web registers the channel), once."""
        if self._released:
            return
        self._released = True
        transport = _transport(self)
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()


class RefusedConnection(Protocol):
    """
    A connection past the cap: its request head is read (at most
    :data:`MAX_HEAD` bytes for at most :data:`HEAD_WAIT` seconds), answered
    503 with ``Retry-After``, and the connection closed, lingering.  No
    resource runs for it.
    """

    def __init__(self, site: ApiSite) -> None:
        self.site = site
        self.received = b""
        self.answered = False
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.site.refusal_started(self)
        self._timer = self.site.reactor.callLater(HEAD_WAIT, self.answer)

    def dataReceived(self, data: bytes) -> None:
        """Read up to the end of the request head, then answer; discard the rest."""
        if self.answered:
            return
        self.received += data[: MAX_HEAD - len(self.received)]
        if (
            b"\r\n\r\n" in self.received
            or b"\n\n" in self.received
            or len(self.received) >= MAX_HEAD
        ):
            self.answer()

    def answer(self) -> None:
        """Write the 503 and close, lingering (once)."""
        if self.answered:
            return
        self.answered = True
        _cancel(self._timer)
        error = ApiError(
            503,
            f"too many HTTP connections to this node (at most {self.site.max_connections} at "
            f"once); retry in {RETRY_AFTER} s",
        )
        now = self.site.reactor.seconds()
        head = self.received.startswith(b"HEAD ")
        transport = _transport(self)
        transport.write(error_answer(error, now, retry_after=RETRY_AFTER, head=head))
        self._timer = close_lingering(transport, self.site.reactor, LINGER)

    def abort(self) -> None:
        """Drop the connection now."""
        _abort(_transport(self))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        _cancel(self._timer)
        self._timer = None
        self.site.refusal_ended(self)


def _transport(protocol: Protocol | HTTPChannel) -> Any:
    """
    The transport of a connected C{protocol}: a TCP transport, or a fake in
    tests (typed loosely: twisted's transports are partly annotated).
    """
    transport = protocol.transport
    assert transport is not None, "not connected"
    return transport


def _host(transport: ITransport | None) -> str:
    """The client's host, or ``-``."""
    peer = transport.getPeer() if transport is not None else None
    return str(getattr(peer, "host", "-"))


class ApiSite(Site):
    """
    The API's :class:`~twisted.web.server.Site`: quiet, no tracebacks in
    answers, an access log at debug level, request latency in a Prometheus
    histogram when given a registry, and bounded connections.

    :ivar max_connections: the cap on :attr:`connections`.
    :ivar connections: the connections open now (past the cap: none).
    :ivar refusals: the connections past the cap being answered 503.
    :ivar metrics: the counts of refused and timed-out connections (the
        registry's, or the site's own without one).
    :ivar serving: whether the site listens (between its factory's start and stop).
    """

    noisy = False
    displayTracebacks = False
    requestFactory = ApiRequest
    protocol = ApiChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        *args: Any,
        registry: CollectorRegistry | None = None,
        max_connections: int = DEFAULT_API_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_API_IDLE_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        """
        :param resource: the root resource.
        :param registry: the node's metrics registry, where each answered
            request is observed (its time from arrival to the last byte,
            on the site's reactor clock) and the connections counted;
            ``None``: not measured.
        :param max_connections: connections open at once; one more is
            answered 503.
        :param idle_timeout: seconds a connection may sit idle between
            requests, or take to send one whole request.

        Other arguments are :class:`~twisted.web.server.Site`'s (``reactor=``).
        """
        super().__init__(resource, *args, timeout=idle_timeout, **kwargs)
        self.latency: Histogram | None = api_latency(registry) if registry is not None else None
        self.metrics = api_connections(registry) if registry is not None else ApiConnectionMetrics()
        self.metrics.sites.add(self)
        self.serving = False
        self.max_connections = max_connections
        self.connections: set[ApiChannel] = set()
        self.refusals: set[RefusedConnection] = set()
        self._arrived: weakref.WeakKeyDictionary[Request, float] = weakref.WeakKeyDictionary()
        self._cap_reached_at: float | None = None
        self._refused_at_cap = 0
        self._all_closed: list[Deferred[None]] = []

    # -- connections

    def startFactory(self) -> None:
        """The site listens (its first port opened)."""
        super().startFactory()
        self.serving = True

    def stopFactory(self) -> None:
        """The site no longer listens (its last port closed)."""
        self.serving = False
        super().stopFactory()

    @property
    def open_connections(self) -> int:
        """Connections open now, counted against the cap."""
        return len(self.connections)

    def buildProtocol(self, addr: IAddress) -> Protocol | None:  # type: ignore[override]
        """
        A channel for a new connection; past the cap a
        :class:`RefusedConnection`, or ``None`` (closed at accept) while
        :data:`MAX_REFUSING` refusals are in progress.
        """
        if len(self.connections) < self.max_connections:
            channel: Protocol | None = super().buildProtocol(addr)
            return channel
        self._count_refusal()
        if len(self.refusals) >= MAX_REFUSING:
            self.metrics.refused["closed"] += 1
            return None
        self.metrics.refused["503"] += 1
        return RefusedConnection(self)

    def _count_refusal(self) -> None:
        """Count one connection refused; log when a refusal episode begins."""
        self._refused_at_cap += 1
        if self._cap_reached_at is None:
            self._cap_reached_at = self.reactor.seconds()
            log.warn(
                "The HTTP API is at its cap of {limit} open connections "
                "(--api-max-connections): new connections are answered 503 until some close",
                limit=self.max_connections,
            )

    def connection_opened(self, channel: ApiChannel) -> None:
        """Count C{channel} as open."""
        self.connections.add(channel)

    def connection_closed(self, channel: ApiChannel) -> None:
        """
        Forget C{channel}; end a refusal episode (logged) once a quarter of
        the cap is free again, so that a count hovering at the cap logs once.
        """
        self.connections.discard(channel)
        below = self.max_connections - max(1, self.max_connections // 4)
        if self._cap_reached_at is not None and len(self.connections) <= below:
            log.info(
                "The HTTP API is below its connection cap again: {refused} connections "
                "refused in {seconds:.1f} s",
                refused=self._refused_at_cap,
                seconds=self.reactor.seconds() - self._cap_reached_at,
                limit=self.max_connections,
            )
            self._cap_reached_at = None
            self._refused_at_cap = 0
        self._check_all_closed()

    def refusal_started(self, refusal: RefusedConnection) -> None:
        """Hold C{refusal} until its connection is gone."""
        self.refusals.add(refusal)

    def refusal_ended(self, refusal: RefusedConnection) -> None:
        """Forget C{refusal}."""
        self.refusals.discard(refusal)
        self._check_all_closed()

    def connection_timed_out(self, phase: str) -> None:
        """Count a connection closed by the idle timeout in C{phase} (``idle``, ``request``)."""
        self.metrics.timed_out[phase] += 1

    def body_refused(self) -> None:
        """Count a request answered 413 before its body was read."""
        self.metrics.too_large += 1

    def close_connections(self, grace: float = CLOSE_GRACE) -> Deferred[None]:
        """
        Close every connection: an idle one now, one being answered once
        its answer is written; after C{grace} seconds (on the site's
        reactor clock) abort what is still open.

        :return: fires once every connection is gone, or at twice C{grace}
            at the latest, whatever the clients do.
        """
        for channel in list(self.connections):
            channel.close_gracefully()
        if not self.connections and not self.refusals:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._all_closed.append(done)
        aborting = self.reactor.callLater(grace, self._abort_all)
        giving_up = self.reactor.callLater(2 * grace, self._fire_all_closed)

        def stop_timers(result: None) -> None:
            _cancel(aborting)
            _cancel(giving_up)

        done.addCallback(stop_timers)
        return done

    def _abort_all(self) -> None:
        still_open = len(self.connections) + len(self.refusals)
        if still_open:
            log.info("Aborting {count} HTTP API connections still open", count=still_open)
        for channel in list(self.connections):
            channel.abort()
        for refusal in list(self.refusals):
            refusal.abort()

    def _check_all_closed(self) -> None:
        if self._all_closed and not self.connections and not self.refusals:
            self._fire_all_closed()

    def _fire_all_closed(self) -> None:
        waiting, self._all_closed = self._all_closed, []
        for done in waiting:
            done.callback(None)

    # -- requests

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
        access_log.debug(
            '{client} "{method} {uri}" {status} {length}',
            client=getattr(address, "host", "-"),
            method=request.method.decode("ascii", "backslashreplace"),
            uri=_TICKET_RE.sub(rb"\1-", request.uri).decode("ascii", "backslashreplace"),
            path=request.path.decode("ascii", "backslashreplace"),
            status=request.code,
            length=request.sentLength,
        )
