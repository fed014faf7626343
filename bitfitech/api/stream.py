"""The live stream: ``GET /stream``, the node's changes as Server-Sent Events.

Data path: a market and the peer hub -> :meth:`IMarketControl.watch
<bitfitech.interfaces.IMarketControl.watch>` and :meth:`INodeControl.watch_links
<bitfitech.interfaces.INodeControl.watch_links>` -> :class:`StreamFeed` (one
per market of the API: fans out, coalesces the book, sends the status) ->
:class:`StreamClient` (one per connection, with a bounded backlog) -> the
HTTP client.  ``GET /stream`` is the first market's; ``GET
/markets/{market}/stream`` any carried market's.

The contract (``text/event-stream``; each event is ``event: <type>`` then
``data: <one line of JSON>`` then a blank line; lines opening with ``:``
are comments)::

    book    {"bids": [[price, amount, orders], ...], "asks": [...]}
            depth 20; once at connect, then on change, at most 10 a second
    trade   a trade document as in GET /trades ("status": "tentative" |
            "settled"); when it appears and again when it settles
    order   an order document as in GET /orders/{id}: this node's own
            orders, when created or changed (filled, cancelled, settled)
    peer    {"event": "joined" | "left", "node_id", "address", "direction"}
    status  {"node_id", "market", "peers", "events", "state_hash"}: the
            market's events and state hash; once at connect, then every
            15 s (the keepalive)

``?types=book,trade`` picks some types (all by default).

A browser's ``EventSource`` cannot send the bearer token, so a client of a
node with a token first asks ``POST /stream/ticket`` (with the token) for a
ticket (:class:`StreamTickets`): random, good for one ``GET
/stream?ticket=...`` (or one market's stream) within :data:`TICKET_LIFETIME` seconds.  The token
itself never goes in a URL; a ticket that does (and may reach an access log
or a browser's history) is spent at once or soon worthless.  At most
:data:`MAX_CLIENTS` clients listen at once (a 503 beyond), over every market's stream; a client that
stops reading while :data:`MAX_BACKLOG` events wait for it is dropped.
The feed watches the node only while a client listens.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Final, cast

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ..interfaces import IMarketControl, INodeControl, unix_ms
from ..logs import logger
from .jsonresource import ApiError, JSONResource, query_value, write_json

log = logger(__name__)

STREAM_TYPES: Final = ("book", "trade", "order", "peer", "status")
"""Every event type of the stream, in the order the contract lists them."""
MAX_CLIENTS: Final = 64
"""Most stream clients at once."""
MAX_BACKLOG: Final = 256
"""Most events held for a client that does not read; one more drops it."""
BOOK_DEPTH: Final = 20
"""Levels a side of a ``book`` event."""
BOOK_INTERVAL: Final = 0.1
"""Least seconds between two ``book`` events (at most 10 a second)."""
STATUS_INTERVAL: Final = 15.0
"""Seconds between two ``status`` events."""

TICKET_LIFETIME: Final = 30.0
"""Seconds a stream ticket may wait for its ``GET /stream``."""

MAX_TICKETS: Final = 256
"""Most tickets waiting at once; a new one beyond drops the oldest."""

CONTENT_TYPE: Final = b"text/event-stream; charset=utf-8"


def sse_event(kind: str, data: object) -> bytes:
    """One Server-Sent Event: ``event: kind``, ``data:`` C{data} as one line of JSON."""
    line = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return f"event: {kind}\ndata: {line}\n\n".encode()


def _abort(request: Request) -> None:
    """Close C{request}'s connection now, dropping what is buffered for it."""
    transport = getattr(getattr(request, "channel", None), "transport", None)
    if transport is not None and hasattr(transport, "abortConnection"):
        transport.abortConnection()
    elif not getattr(request, "finished", False):
        request.finish()


@implementer(IPushProducer)
class StreamClient:
    """
    One listener of the stream: its request, the types it asked for, and
    the events held while its connection does not take more.

    Registered as the request's streaming producer: the connection pauses it
    when its send buffer is full, and resumes it when the buffer drains.
    """

    def __init__(
        self, request: Request, types: frozenset[str], feed: StreamFeed, max_backlog: int
    ) -> None:
        self.request = request
        self.types = types
        self.feed = feed
        self.max_backlog = max_backlog
        self.paused = False
        self.closed = False
        self.backlog: deque[bytes] = deque()

    def send(self, event: bytes) -> None:
        """Write C{event} now, or hold it while paused; drop the client past its backlog."""
        if self.closed:
            return
        if not self.paused:
            self.request.write(event)
        elif len(self.backlog) < self.max_backlog:
            self.backlog.append(event)
        else:
            self.feed.drop(self, f"more than {self.max_backlog} events waiting")

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self.backlog and not self.paused and not self.closed:
            self.request.write(self.backlog.popleft())

    def stopProducing(self) -> None:
        self.feed.remove(self)


class StreamFeed:
    """
    One market's stream fan-out: watches the market and the links while
    clients listen, sends each change to the clients that asked for its
    type.

    :ivar market: the market's name, or ``None`` for the node's first.
    :ivar clients: the clients listening now.
    """

    def __init__(
        self,
        node: INodeControl,
        clock: IReactorTime | None = None,
        *,
        market: str | None = None,
        max_clients: int = MAX_CLIENTS,
        max_backlog: int = MAX_BACKLOG,
        listening: Callable[[], int] | None = None,
    ) -> None:
        """
        :param clock: the timers' clock; the global reactor, at the first client, if ``None``.
        :param market: the market streamed (``BASE/QUOTE``), ``None`` for the first.
        :param listening: how many clients listen to every feed that
            shares :attr:`max_clients` with this one (this one's alone if ``None``).

        :raises KeyError: if the node does not carry C{market}.
        """
        self.node = node
        self.market = market
        self.source: IMarketControl = node if market is None else node.market(market)
        self._listening = listening
        self._clock = clock
        self.max_clients = max_clients
        self.max_backlog = max_backlog
        self.clients: set[StreamClient] = set()
        self.dropped = 0
        self._unwatch: Callable[[], None] | None = None
        self._status_loop: LoopingCall | None = None
        self._book_call: IDelayedCall | None = None
        self._book_sent_at = float("-inf")

    @property
    def clock(self) -> IReactorTime:
        """The clock of the coalescing and the keepalive."""
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        return self._clock

    def check_room(self) -> None:
        """:raises ApiError: 503 when :attr:`max_clients` listen already."""
        listening = len(self.clients) if self._listening is None else self._listening()
        if listening >= self.max_clients:
            raise ApiError(503, f"too many stream clients (at most {self.max_clients})")

    def add(self, request: Request, types: frozenset[str]) -> StreamClient:
        """
        Start streaming C{types} to C{request}: the book and the status at
        once, then the changes.

        :raises ApiError: 503 when :attr:`max_clients` listen already.
        """
        self.check_room()
        client = StreamClient(request, types, self, self.max_backlog)
        self.clients.add(client)
        request.registerProducer(client, True)
        request.notifyFinish().addBoth(lambda _: self.remove(client))
        if len(self.clients) == 1:
            self._start()
        if "book" in types:
            client.send(sse_event("book", self.source.book(BOOK_DEPTH)))
        if "status" in types:
            status = self._status()
            if status is not None:
                client.send(sse_event("status", status))
        return client

    def remove(self, client: StreamClient) -> None:
        """Forget C{client} (its connection is gone or going)."""
        if client.closed:
            return
        client.closed = True
        client.backlog.clear()
        self.clients.discard(client)
        if not getattr(client.request, "finished", False):
            try:
                client.request.unregisterProducer()
            except Exception:  # the channel may already be gone
                pass
        if not self.clients:
            self._stop()

    def drop(self, client: StreamClient, reason: str) -> None:
        """Close a client that does not keep up."""
        self.dropped += 1
        log.info("Dropped a stream client: {reason}", reason=reason)
        request = client.request
        self.remove(client)
        _abort(request)

    def close_all(self) -> None:
        """End every stream (the API is stopping)."""
        for client in list(self.clients):
            request = client.request
            self.remove(client)
            if not getattr(request, "finished", False):
                request.finish()

    def broadcast(self, kind: str, data: object) -> None:
        """Send one event to every client that asked for its type."""
        event: bytes | None = None
        for client in list(self.clients):
            if kind in client.types:
                if event is None:
                    event = sse_event(kind, data)
                client.send(event)

    # -- watching the node, only while clients listen

    def _start(self) -> None:
        unwatch_market = self.source.watch(self._observe)
        unwatch_links = self.node.watch_links(self._observe)

        def unwatch() -> None:
            unwatch_market()
            unwatch_links()

        self._unwatch = unwatch
        loop = self._status_loop = LoopingCall(self._send_status)
        loop.clock = self.clock
        loop.start(STATUS_INTERVAL, now=False)

    def _stop(self) -> None:
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()
        loop, self._status_loop = self._status_loop, None
        if loop is not None and loop.running:
            loop.stop()
        call, self._book_call = self._book_call, None
        if call is not None and call.active():
            call.cancel()

    def _observe(self, kind: str, document: dict[str, Any] | None) -> None:
        if kind == "book":
            self._book_changed()
        else:
            self.broadcast(kind, document)

    def _book_changed(self) -> None:
        """Send the book soon: at most one ``book`` event each :data:`BOOK_INTERVAL`."""
        if self._book_call is not None or not any("book" in c.types for c in self.clients):
            return
        delay = max(0.0, self._book_sent_at + BOOK_INTERVAL - self.clock.seconds())
        self._book_call = self.clock.callLater(delay, self._send_book)

    def _send_book(self) -> None:
        self._book_call = None
        self._book_sent_at = self.clock.seconds()
        try:
            book = self.source.book(BOOK_DEPTH)
        except Exception:
            log.failure("The stream could not read the book")
            return
        self.broadcast("book", book)

    def _status(self) -> dict[str, Any] | None:
        """The small status of the stream, ``None`` if the node cannot say now."""
        try:
            full = self.node.status()
            peers = len(self.node.peers())
            if self.market is None:
                market: dict[str, Any] = {**full, "market": full.get("pair")}
            else:
                [market] = [row for row in self.node.markets() if row["market"] == self.market]
        except Exception:
            log.failure("The stream could not read the status")
            return None
        return {
            "node_id": full.get("node_id"),
            "market": market.get("market"),
            "peers": peers,
            "events": market.get("events"),
            "state_hash": market.get("state_hash"),
        }

    def _send_status(self) -> None:
        status = self._status()
        if status is not None:
            self.broadcast("status", status)


class StreamFeeds:
    """
    The API's stream feeds: the first market's (``GET /stream``), and one
    per other market streamed (``GET /markets/{market}/stream``), made at
    its first request.  They share :data:`MAX_CLIENTS` and the tickets.

    :ivar first: the first market's feed.
    :ivar by_market: the feeds of ``/markets/{market}/stream``, by market name.
    """

    def __init__(
        self,
        node: INodeControl,
        clock: IReactorTime | None = None,
        *,
        max_clients: int = MAX_CLIENTS,
        max_backlog: int = MAX_BACKLOG,
    ) -> None:
        self.node = node
        self._clock = clock
        self.max_clients = max_clients
        self.max_backlog = max_backlog
        self.first = self._feed(None)
        self.by_market: dict[str, StreamFeed] = {}
        self.tickets = StreamTickets(self.first)

    def _feed(self, market: str | None) -> StreamFeed:
        return StreamFeed(
            self.node, self._clock, market=market, max_clients=self.max_clients,
            max_backlog=self.max_backlog, listening=self.listening,
        )  # fmt: skip

    def feed(self, market: str) -> StreamFeed:
        """
        The feed of C{market} (``BASE/QUOTE``).

        :raises KeyError: if the node does not carry it.
        """
        feed = self.by_market.get(market)
        if feed is None:
            feed = self.by_market[market] = self._feed(market)
        return feed

    def listening(self) -> int:
        """How many clients listen, to every feed."""
        return len(self.first.clients) + sum(len(f.clients) for f in self.by_market.values())

    def close_all(self) -> None:
        """End every stream (the API is stopping)."""
        for feed in (self.first, *self.by_market.values()):
            feed.close_all()


class StreamTickets:
    """
    The stream's tickets: each good for one ``GET /stream`` within
    :data:`TICKET_LIFETIME` seconds of being issued.  Held in memory only,
    at most :data:`MAX_TICKETS` (the oldest dropped first), and compared in
    constant time.
    """

    def __init__(self, feed: StreamFeed) -> None:
        self.feed = feed
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def issue(self) -> dict[str, Any]:
        """A new ticket: ``{"ticket", "expires_at" (unix ms), "expires_in_ms"}``."""
        now = self.feed.clock.seconds()
        self._prune(now)
        while len(self._expiry) >= MAX_TICKETS:
            self._expiry.popitem(last=False)
        ticket = secrets.token_urlsafe(24)
        self._expiry[ticket] = now + TICKET_LIFETIME
        return {"ticket": ticket, "expires_at": unix_ms(now + TICKET_LIFETIME),
                "expires_in_ms": round(TICKET_LIFETIME * 1000)}  # fmt: skip

    def redeem(self, ticket: str) -> bool:
        """Spend C{ticket}: whether it was issued, unspent and unexpired."""
        now = self.feed.clock.seconds()
        self._prune(now)
        for held in self._expiry:
            if secrets.compare_digest(held, ticket):
                del self._expiry[held]
                return True
        return False

    def _prune(self, now: float) -> None:
        expiry = self._expiry
        while expiry and next(iter(expiry.values())) <= now:
            expiry.popitem(last=False)


class StreamTicket(JSONResource):
    """``POST /stream/ticket``: a ticket for one ``GET /stream`` (:class:`StreamTickets`)."""

    ok_status = 201

    def __init__(self, tickets: StreamTickets) -> None:
        super().__init__()
        self.tickets = tickets

    def render_POST(self, request: Request) -> object:
        request.setHeader(b"cache-control", b"no-store")
        return self.tickets.issue()


def types_param(request: Request) -> frozenset[str]:
    """
    The ``types`` query parameter: a comma-separated list of stream types
    (every type if absent).

    :raises ApiError: 400 for an unknown or empty type, or a repeated parameter.
    """
    value = query_value(request, "types")
    if value is None:
        return frozenset(STREAM_TYPES)
    names = value.decode("utf-8", "replace").split(",")
    unknown = [name for name in names if name.strip() not in STREAM_TYPES]
    if unknown:
        raise ApiError(
            400, f"query parameter types must list some of {', '.join(STREAM_TYPES)} "
            f"(comma-separated), not {unknown[0][:40]!r}",
        )  # fmt: skip
    return frozenset(name.strip() for name in names)


class Stream(JSONResource):
    """``GET /stream?types=``: the live stream (Server-Sent Events)."""

    def __init__(self, feed: StreamFeed, tickets: StreamTickets) -> None:
        super().__init__()
        self.feed = feed
        self.putChild(b"ticket", StreamTicket(tickets))

    def render(self, request: Request) -> bytes | int:
        if request.method == b"HEAD":
            try:
                types_param(request)
            except ApiError as e:
                return write_json(request, e.status, e.body())
            self._stream_headers(request)
            return b""
        return super().render(request)

    @staticmethod
    def _stream_headers(request: Request) -> None:
        request.setResponseCode(200)
        request.setHeader(b"content-type", CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")

    def render_GET(self, request: Request) -> object:
        types = types_param(request)
        self.feed.check_room()
        self._stream_headers(request)
        request.write(b": bitfi live stream\n\n")
        self.feed.add(request, types)
        return NOT_DONE_YET
