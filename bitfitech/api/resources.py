"""JSON resources of the HTTP API (``/status``, ``/peers``, ``/peers/banned``, ``/orders``, ...).

Data path: :class:`~bitfitech.interfaces.INodeControl` -> these resources ->
HTTP client.  Every answer, errors included, is a JSON document (but the
event stream of :mod:`bitfitech.api.stream`); errors are ``{"error":
"..."}`` with a 4xx/5xx status.  Unknown paths are a JSON 404 and
unsupported methods a JSON 405 with an ``Allow`` header.  An error about one
order of a batch also names its ``index``.  :mod:`bitfitech.api.openapi`
describes every route of :data:`ROUTES`.  Each resource is a
:class:`~bitfitech.api.jsonresource.JSONResource`; that module also holds
the errors (:class:`~bitfitech.api.jsonresource.ApiError`), the query
parameters' readers and the API's limits.

Lists (``/peers``, ``/peers/banned``, ``/orders``, ``/trades``) take
``limit`` and ``offset``; when more follow, the answer has a ``Link: <...>;
rel="next"`` header, and ``X-Total-Count`` where the total is known.

With a token (:mod:`bitfitech.api.token`), every request but ``GET
/openapi.json`` and the public children (the dashboard's files) must carry
``Authorization: Bearer <token>``, or gets a 401.

Prices and amounts travel as JSON strings holding decimals, and reach the
node exactly as the client wrote them: no JSON number is ever read as a
float.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final
from urllib.parse import unquote, urlencode

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectError, NoProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request

from ..address import is_node_id
from ..config import parse_market_slug
from ..interfaces import (
    BatchRejected,
    IMarketControl,
    INodeControl,
    KeyRateLimited,
    ServiceUnavailable,
)
from .jsonresource import (
    DEFAULT_LIMIT,
    MAX_BATCH,
    MAX_OFFSET,
    ORDER_STATES,
    ORDER_TYPES,
    ORDERS_LIMIT,
    SIDES,
    Answer,
    ApiError,
    JSONResource,
    NotFound,
    choice_param,
    int_param,
    query_value,
    read_json_object,
    unavailable_error,
    write_json,
)
from .openapi import MARKET_ROUTES, document
from .stream import Stream, StreamFeeds
from .token import token_matches

ORDER_FIELDS: Final = frozenset({"side", "price", "amount", "type"})
"""The fields of an order in ``POST /orders``."""

ROUTES: Final = (
    "/",
    "/api",
    "/openapi.json",
    "/status",
    "/discovery",
    "/peers",
    "/peers/{node_id}",
    "/peers/banned",
    "/peers/banned/{address}",
    *MARKET_ROUTES,
    "/stream/ticket",
    "/metrics",
    "/static/{name}",
    "/markets",
    *(f"/markets/{{market}}{route}" for route in MARKET_ROUTES),
)
"""Every route the site serves (``/metrics`` and ``/static/{name}`` are
mounted by :func:`bitfitech.api.app.site_root`); :mod:`bitfitech.api.openapi`
documents each.  Each market's routes are under ``/markets/{market}``;
today's paths without the prefix are the first market's."""

_ORDER_ID_RE = re.compile(r"\A[0-9a-f]{64}\Z")


def is_order_id(value: object) -> bool:
    """Tell whether C{value} is an order id: 64 lowercase hex digits."""
    return isinstance(value, str) and _ORDER_ID_RE.match(value) is not None


class Unauthorized(JSONResource):
    """Any request without the API's token: a JSON 401 with a ``WWW-Authenticate`` challenge."""

    def __init__(self, given: bool, ticket: bool = False) -> None:
        """
        :param given: whether the request carried an ``Authorization`` header.
        :param ticket: whether it carried a stream ticket (refused: unknown,
            spent or expired).
        """
        super().__init__()
        self.given = given
        self.ticket = ticket

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self

    def render(self, request: Request) -> bytes:
        challenge = 'Bearer realm="bitfi"'
        if self.given:
            challenge += ', error="invalid_token"'
        request.setHeader(b"www-authenticate", challenge.encode("ascii"))
        if self.ticket:
            error = (
                "this stream ticket is unknown, spent or expired: a ticket is good for one "
                "GET /stream within 30 s; ask POST /stream/ticket for another"
            )
        else:
            error = "this API requires a token: send 'Authorization: Bearer <token>'"
        return write_json(request, 401, {"error": error})


def page_params(request: Request, default: int) -> tuple[int, int]:
    """
    The ``limit`` (1 to :data:`~bitfitech.api.jsonresource.MAX_LIMIT`,
    C{default} if absent) and ``offset`` (0 to
    :data:`~bitfitech.api.jsonresource.MAX_OFFSET`, 0 if absent) of a list
    request.

    :raises ApiError: 400, naming the parameter, for a bad value.
    """
    return (
        int_param(request, "limit", default),
        int_param(request, "offset", 0, low=0, high=MAX_OFFSET),
    )


def page(
    request: Request, body: object, limit: int, offset: int, more: bool, total: int | None
) -> Answer:
    """
    A page of a list: C{body}, with a ``Link: <...>; rel="next"`` header
    when C{more} items follow and ``X-Total-Count`` when C{total} is known.
    """
    headers: dict[str, str] = {}
    if total is not None:
        headers["x-total-count"] = str(total)
    if more and offset + limit <= MAX_OFFSET:
        query = [
            (name, value)
            for name, values in sorted((request.args or {}).items())
            if name not in (b"limit", b"offset")
            for value in values
        ]
        query += [(b"limit", str(limit).encode()), (b"offset", str(offset + limit).encode())]
        path = request.path.decode("utf-8", "replace")
        headers["link"] = f'<{path}?{urlencode(query)}>; rel="next"'
    return Answer(body, http.OK, headers)


def page_of(request: Request, rows: list[Any], default: int) -> Answer:
    """A page of C{rows}, a whole list whose length is the total."""
    limit, offset = page_params(request, default)
    return page(request, rows[offset : offset + limit], limit, offset,
                len(rows) > offset + limit, len(rows))  # fmt: skip


def page_fetched(
    request: Request, name: str, fetch: Callable[[int, int], list[Any]], default: int
) -> Answer:
    """
    A page of a list whose total is not known: ``{name: [...]}`` of what
    C{fetch(limit, offset)} gives, asked for one item more than the page
    holds to learn whether more follow.
    """
    limit, offset = page_params(request, default)
    rows = fetch(limit + 1, offset)
    return page(request, {name: rows[:limit]}, limit, offset, len(rows) > limit, None)


class Status(JSONResource):
    """``GET /status``: what the node is and how it is doing."""

    def __init__(self, node: INodeControl) -> None:
        super().__init__()
        self.node = node

    def render_GET(self, request: Request) -> object:
        return self.node.status()


class Peer(JSONResource):
    """``DELETE /peers/{node_id}``: disconnect a peer and rest its addresses."""

    def __init__(self, node: INodeControl, node_id: str) -> None:
        super().__init__()
        self.node = node
        self.node_id = node_id

    def render_DELETE(self, request: Request) -> object:
        if not is_node_id(self.node_id):
            raise ApiError(400, f"invalid node id {self.node_id!r} (expected 40 hex digits)")
        if not self.node.disconnect(self.node_id):
            raise ApiError(404, f"no link to node {self.node_id}")
        return {"node_id": self.node_id, "status": "disconnected"}

    def render_GET(self, request: Request) -> object:
        for row in self.node.peers():
            if row["node_id"] == self.node_id:
                return row
        raise ApiError(404, f"no link to node {self.node_id}")


class BannedPeer(JSONResource):
    """``DELETE /peers/banned/{address}``: lift the ban on an IP address."""

    def __init__(self, node: INodeControl, address: str) -> None:
        super().__init__()
        self.node = node
        self.address = address

    def render_DELETE(self, request: Request) -> object:
        try:
            row = self.node.unban(self.address)
        except ValueError:
            message = f"invalid address {self.address[:80]!r} (expected an IP address)"
            raise ApiError(400, message) from None
        if row is None:
            raise ApiError(404, f"{self.address} is not banned")
        return row


class BannedPeers(JSONResource):
    """``GET /peers/banned``: the bans in force, newest first."""

    def __init__(self, node: INodeControl) -> None:
        super().__init__()
        self.node = node

    def getChild(self, path: bytes, request: Request) -> IResource:
        if not path:
            return self
        return BannedPeer(self.node, unquote(path.decode("utf-8", "replace")))

    def render_GET(self, request: Request) -> object:
        return page_of(request, self.node.banned(), DEFAULT_LIMIT)


class Peers(JSONResource):
    """``GET /peers``: live links; ``POST /peers {"address": ...}``: dial now."""

    def __init__(self, node: INodeControl) -> None:
        super().__init__()
        self.node = node

    def getChild(self, path: bytes, request: Request) -> IResource:
        if not path:
            return self
        if path == b"banned":
            return BannedPeers(self.node)
        return Peer(self.node, path.decode("utf-8", "replace").lower())

    def render_GET(self, request: Request) -> object:
        return page_of(request, self.node.peers(), DEFAULT_LIMIT)

    def render_POST(self, request: Request) -> Deferred[object]:
        body = read_json_object(request)
        address = body.get("address")
        if not isinstance(address, str):
            raise ApiError(400, 'expected {"address": "host:port"}')
        try:
            d = self.node.connect(address)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        except PermissionError as e:
            raise ApiError(403, str(e)) from None

        def failed(failure: Failure) -> None:
            if failure.check(ValueError):
                raise ApiError(400, failure.getErrorMessage())
            if failure.check(NoProtocol):
                # The hub refused the link it was building: the host name
                # resolved to a banned address, or the node is at its limits.
                raise ApiError(
                    502,
                    f"not linking to {address}: its address is banned or the node is "
                    "at its peer limits (see GET /peers/banned and GET /status)",
                )
            # Twisted's connect errors (refused, timeout, no route) are not OSErrors.
            failure.trap(ConnectionError, OSError, ConnectError)
            raise ApiError(502, f"could not connect to {address}: {failure.getErrorMessage()}")

        d.addErrback(failed)
        return d  # type: ignore[return-value]


def _unavailable(failure: Failure) -> None:
    """Errback: :class:`ServiceUnavailable` becomes a 503; anything else passes on."""
    failure.trap(ServiceUnavailable)
    assert isinstance(failure.value, ServiceUnavailable)
    raise unavailable_error(failure.value)


def _decimal_field(body: dict[str, Any], name: str) -> str:
    """
    Field C{name} of C{body}: a decimal in a JSON string, passed on unchanged.

    :raises ApiError: 400, naming the field, if it is missing or not a string.
    """
    if name not in body or body[name] is None:
        raise ApiError(400, f'{name} is required: a decimal in a JSON string, such as "0.25"')
    value = body[name]
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        raise ApiError(
            400, f'{name} must be a decimal in a JSON string, such as "0.25", not a JSON number'
        )
    if not isinstance(value, str):
        raise ApiError(400, f'{name} must be a decimal in a JSON string, such as "0.25"')
    return value


Placement = tuple[str, str | None, str, str]
"""What one order of a request asks: ``(side, price, amount, order_type)``."""


def order_request(body: dict[str, Any]) -> Placement:
    """
    Check the body of ``POST /orders`` and return its
    ``(side, price, amount, order_type)``.

    The body is ``{"side": "buy" | "sell", "price": "50000.5", "amount":
    "0.25", "type": "limit"}``: ``type`` defaults to ``limit``; ``price`` is
    required except for a market order, which takes none (absent or
    ``null``).  Whether the decimals suit the book is the node's to say.

    :raises ApiError: 400, naming the field, for unknown, missing or
        mistyped fields.
    """
    unknown = sorted(set(body) - ORDER_FIELDS)
    if unknown:
        names, expected = ", ".join(map(repr, unknown)), ", ".join(sorted(ORDER_FIELDS))
        raise ApiError(400, f"unknown field(s) {names}; expected only {expected}")
    side = body.get("side")
    if not isinstance(side, str) or side not in SIDES:
        raise ApiError(400, 'side must be "buy" or "sell"')
    order_type = body.get("type", "limit")
    if not isinstance(order_type, str) or order_type not in ORDER_TYPES:
        raise ApiError(400, f"type must be one of {', '.join(ORDER_TYPES)}")
    price: str | None = None
    if order_type == "market":
        if body.get("price") is not None:
            raise ApiError(400, "price must be absent or null for a market order")
    elif body.get("price") is None:
        raise ApiError(400, f'price is required for a {order_type} order, such as "50000.5"')
    else:
        price = _decimal_field(body, "price")
    return side, price, _decimal_field(body, "amount"), order_type


def batch_request(body: dict[str, Any]) -> list[Placement]:
    """
    Check the body of ``POST /orders/batch`` and return the
    ``(side, price, amount, order_type)`` of each of its orders.

    The body is ``{"orders": [order, ...]}``: 1 to
    :data:`~bitfitech.api.jsonresource.MAX_BATCH` objects, each what
    :func:`order_request` takes.

    :raises ApiError: 400 for a body without such a list; 400 naming the
        ``index`` of the first order that :func:`order_request` refuses.
    """
    unknown = sorted(set(body) - {"orders"})
    if unknown:
        raise ApiError(
            400, f"unknown field(s) {', '.join(map(repr, unknown))}; expected only orders"
        )
    orders = body.get("orders")
    if not isinstance(orders, list):
        raise ApiError(400, f'expected {{"orders": [order, ...]}} with 1 to {MAX_BATCH} orders')
    if not 1 <= len(orders) <= MAX_BATCH:
        raise ApiError(400, f"orders must hold 1 to {MAX_BATCH} orders, not {len(orders)}")
    placements = []
    for index, entry in enumerate(orders):
        try:
            if not isinstance(entry, dict):
                raise ApiError(400, "an order must be a JSON object")
            placements.append(order_request(entry))
        except ApiError as e:
            raise ApiError(e.status, f"orders[{index}]: {e.message}", {"index": index}) from None
    return placements


class Order(JSONResource):
    """``GET /orders/{id}``: one order; ``DELETE /orders/{id}``: cancel it."""

    def __init__(self, node: IMarketControl, order_id: str) -> None:
        super().__init__()
        self.node = node
        self.order_id = order_id

    def checked_id(self) -> str:
        """
        The order id of the path.

        :raises ApiError: 400 if it is not 64 hex digits.
        """
        if not is_order_id(self.order_id):
            raise ApiError(400, f"invalid order id {self.order_id!r} (expected 64 hex digits)")
        return self.order_id

    def render_GET(self, request: Request) -> object:
        order_id = self.checked_id()
        document = self.node.order(order_id)
        if document is None:
            raise ApiError(404, f"no order {order_id}")
        return document

    def render_DELETE(self, request: Request) -> Deferred[object]:
        order_id = self.checked_id()
        try:
            d = self.node.cancel_order(order_id)
        except KeyError:
            raise ApiError(404, f"no order {order_id}") from None
        except PermissionError:
            raise ApiError(403, f"order {order_id} was not placed by this node") from None
        except ServiceUnavailable as e:
            raise unavailable_error(e) from None
        d.addErrback(_unavailable)
        return d  # type: ignore[return-value]


class Orders(JSONResource):
    """``GET /orders?state=&limit=``: this node's orders; ``POST /orders``: place one."""

    def __init__(self, node: IMarketControl) -> None:
        super().__init__()
        self.node = node

    def getChild(self, path: bytes, request: Request) -> IResource:
        if not path:
            return self
        if path == b"batch":
            return OrderBatch(self.node)
        return Order(self.node, path.decode("utf-8", "replace").lower())

    def render_GET(self, request: Request) -> object:
        state = choice_param(request, "state", ORDER_STATES, "open")

        def fetch(limit: int, offset: int) -> list[Any]:
            return self.node.orders(state, limit, offset)

        return page_fetched(request, "orders", fetch, ORDERS_LIMIT)

    def render_POST(self, request: Request) -> Deferred[object]:
        side, price, amount, order_type = order_request(read_json_object(request))
        try:
            d = self.node.submit_order(side, price, amount, order_type)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        except ServiceUnavailable as e:
            raise unavailable_error(e) from None

        # /orders/{id}, or /markets/{market}/orders/{id}: below the path posted to.
        base = request.path.decode("utf-8", "replace").rstrip("/")

        def created(document: dict[str, Any]) -> Answer:
            return Answer(document, http.CREATED, {"location": f"{base}/{document['id']}"})

        d.addCallbacks(created, _unavailable)
        return d  # type: ignore[return-value]


class OrderBatch(JSONResource):
    """
    ``POST /orders/batch {"orders": [order, ...]}``: place several orders,
    all or none, in one group commit.
    """

    ok_status = http.CREATED

    def __init__(self, node: IMarketControl) -> None:
        super().__init__()
        self.node = node

    def render_POST(self, request: Request) -> Deferred[object]:
        placements = batch_request(read_json_object(request))
        try:
            d = self.node.submit_orders(placements)
        except BatchRejected as e:
            raise ApiError(400, str(e), {"index": e.index}) from None
        except ServiceUnavailable as e:
            raise unavailable_error(e) from None

        def created(documents: list[dict[str, Any]]) -> dict[str, object]:
            return {"orders": documents}

        d.addCallbacks(created, _unavailable)
        return d  # type: ignore[return-value]


SignedEvent = tuple[str, str]
"""One event of ``POST /events``: ``(text, sig)``."""

#: the longest event text or signature ``POST /events`` reads (a batch
#: signature of the largest batch is about 1,300 characters)
MAX_EVENT_FIELD = 4096


def signed_event(body: object) -> SignedEvent:
    """
    Check one event of ``POST /events``: ``{"text": "bitfi1 ...", "sig":
    "..."}``, both strings, nothing else.

    :raises ApiError: 400 naming what is wrong.
    """
    if not isinstance(body, dict):
        raise ApiError(400, 'an event must be a JSON object {"text": "...", "sig": "..."}')
    unknown = sorted(set(body) - {"text", "sig"})
    if unknown:
        raise ApiError(
            400, f"unknown field(s) {', '.join(map(repr, unknown))}; expected text and sig"
        )
    fields = []
    for name in ("text", "sig"):
        value = body.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_EVENT_FIELD:
            raise ApiError(
                400, f"{name} is required: a string of 1 to {MAX_EVENT_FIELD} characters"
            )
        fields.append(value)
    return fields[0], fields[1]


def rate_limited(error: KeyRateLimited) -> Deferred[object]:
    """The 429 answer to a key over its rate, with ``Retry-After`` (whole seconds)."""
    retry = str(max(1, math.ceil(error.retry_after)))
    return succeed(Answer({"error": str(error)}, 429, {"retry-after": retry}))


class Events(JSONResource):
    """
    ``POST /events {"text", "sig"}``: an event its author signed (a user's
    own key), checked as an event from a peer is, then journaled, applied
    and relayed unchanged.
    """

    ok_status = http.CREATED

    def __init__(self, node: IMarketControl) -> None:
        super().__init__()
        self.node = node
        self.putChild(b"batch", EventBatch(node))

    def render_POST(self, request: Request) -> Deferred[object]:
        event = signed_event(read_json_object(request))
        try:
            d = self.node.submit_events([event])
        except BatchRejected as e:
            raise ApiError(400, e.reason) from None
        except KeyRateLimited as e:
            return rate_limited(e)
        except ServiceUnavailable as e:
            raise unavailable_error(e) from None
        d.addCallbacks(lambda documents: documents[0], _unavailable)
        return d  # type: ignore[return-value]


class EventBatch(JSONResource):
    """``POST /events/batch {"events": [event, ...]}``: several events, all or none."""

    ok_status = http.CREATED

    def __init__(self, node: IMarketControl) -> None:
        super().__init__()
        self.node = node

    def render_POST(self, request: Request) -> Deferred[object]:
        body = read_json_object(request)
        events = body.get("events")
        if set(body) != {"events"} or not isinstance(events, list):
            raise ApiError(400, f'expected {{"events": [event, ...]}} with 1 to {MAX_BATCH} events')
        if not 1 <= len(events) <= MAX_BATCH:
            raise ApiError(400, f"events must hold 1 to {MAX_BATCH} events, not {len(events)}")
        signed = []
        for index, entry in enumerate(events):
            try:
                signed.append(signed_event(entry))
            except ApiError as e:
                raise ApiError(400, f"events[{index}]: {e.message}", {"index": index}) from None
        try:
            d = self.node.submit_events(signed)
        except BatchRejected as e:
            raise ApiError(400, str(e), {"index": e.index}) from None
        except KeyRateLimited as e:
            return rate_limited(e)
        except ServiceUnavailable as e:
            raise unavailable_error(e) from None
        d.addCallbacks(lambda documents: {"events": documents}, _unavailable)
        return d  # type: ignore[return-value]


class Keys(JSONResource):
    """``/keys/{key}``: what this node holds of one author's key."""

    def __init__(self, node: IMarketControl) -> None:
        super().__init__()
        self.node = node

    def getChild(self, path: bytes, request: Request) -> IResource:
        if not path:
            return NotFound()
        return Key(self.node, path.decode("utf-8", "replace").lower())

    def render(self, request: Request) -> bytes:
        # /keys itself lists nothing.
        return NotFound().render(request)


def checked_key(key: str) -> str:
    """
    The key of a path: an Ed25519 public key in hex.

    :raises ApiError: 400 if it is not 64 hex digits.
    """
    if _ORDER_ID_RE.match(key) is None:
        raise ApiError(400, f"invalid key {key[:80]!r} (expected 64 hex digits)")
    return key


class Key(JSONResource):
    """
    ``GET /keys/{key}``: what a client signing for the key needs (its next
    seq, a Lamport time); ``/orders`` and ``/trades`` below it.
    """

    def __init__(self, node: IMarketControl, key: str) -> None:
        super().__init__()
        self.node = node
        self.key = key

    def getChild(self, path: bytes, request: Request) -> IResource:
        if not path:
            return self
        if path == b"orders":
            return KeyOrders(self.node, self.key)
        if path == b"trades":
            return KeyTrades(self.node, self.key)
        return NotFound()

    def render_GET(self, request: Request) -> object:
        return self.node.key(checked_key(self.key))


class KeyOrders(JSONResource):
    """``GET /keys/{key}/orders?state=&limit=&offset=``: the key's orders, newest first."""

    def __init__(self, node: IMarketControl, key: str) -> None:
        super().__init__()
        self.node = node
        self.key = key

    def render_GET(self, request: Request) -> object:
        key, state = checked_key(self.key), choice_param(request, "state", ORDER_STATES, "open")

        def fetch(limit: int, offset: int) -> list[Any]:
            return self.node.key_orders(key, state, limit, offset)

        return page_fetched(request, "orders", fetch, ORDERS_LIMIT)


class KeyTrades(JSONResource):
    """``GET /keys/{key}/trades?limit=&offset=``: the trades of the key's orders, newest first."""

    def __init__(self, node: IMarketControl, key: str) -> None:
        super().__init__()
        self.node = node
        self.key = key

    def render_GET(self, request: Request) -> object:
        key = checked_key(self.key)
        return page_fetched(
            request, "trades", lambda limit, offset: self.node.key_trades(key, limit, offset),
            DEFAULT_LIMIT,
        )  # fmt: skip


class Book(JSONResource):
    """``GET /book?depth=``: the aggregated book, best levels first."""

    def __init__(self, node: IMarketControl) -> None:
        super().__init__()
        self.node = node

    def render_GET(self, request: Request) -> object:
        return self.node.book(int_param(request, "depth", 20))


class Ticker(JSONResource):
    """``GET /ticker``: the market over the last 24 hours, with its best bid and ask."""

    def __init__(self, node: IMarketControl) -> None:
        super().__init__()
        self.node = node

    def render_GET(self, request: Request) -> object:
        return self.node.ticker()


class Trades(JSONResource):
    """``GET /trades?limit=&offset=``: the trades, newest first."""

    def __init__(self, node: IMarketControl) -> None:
        super().__init__()
        self.node = node

    def render_GET(self, request: Request) -> object:
        limit, offset = page_params(request, DEFAULT_LIMIT)
        total = self.node.trade_count()
        documents = self.node.trades(limit, offset)
        return page(request, {"trades": documents}, limit, offset, total > offset + limit, total)


class Discovery(JSONResource):
    """``GET /discovery``: the mDNS and DHT services' state (``null`` when off)."""

    def __init__(self, node: INodeControl) -> None:
        super().__init__()
        self.node = node

    def render_GET(self, request: Request) -> object:
        return self.node.discovery()


class Refusal(JSONResource):
    """Any request below a path that cannot be: a JSON error, whatever the method or child."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self

    def render(self, request: Request) -> bytes:
        return write_json(request, self.status, {"error": self.message})


def mount_market(resource: JSONResource, market: IMarketControl) -> None:
    """Mount the routes of one market (``orders``, ``book``, ...) on C{resource}."""
    resource.putChild(b"orders", Orders(market))
    resource.putChild(b"book", Book(market))
    resource.putChild(b"ticker", Ticker(market))
    resource.putChild(b"events", Events(market))
    resource.putChild(b"keys", Keys(market))
    resource.putChild(b"trades", Trades(market))


class MarketRoot(JSONResource):
    """``/markets/{market}``: the routes of one market; itself, a 404 (it lists nothing)."""

    def __init__(self, market: IMarketControl, stream: IResource) -> None:
        """:param stream: the market's ``stream`` resource."""
        super().__init__()
        mount_market(self, market)
        self.putChild(b"stream", stream)

    def render(self, request: Request) -> bytes:
        return NotFound().render(request)


class Markets(JSONResource):
    """
    ``GET /markets``: the markets the node carries; ``/markets/{market}/...``
    one market's routes, ``{market}`` as ``BTC-USD`` (any case) or
    ``BTC%2FUSD``.
    """

    def __init__(self, node: INodeControl, streams: StreamFeeds) -> None:
        super().__init__()
        self.node = node
        self.streams = streams

    def getChild(self, path: bytes, request: Request) -> IResource:
        if not path:
            return self
        # Twisted unquotes each segment after splitting: BTC%2FUSD is BTC/USD here.
        text = path.decode("utf-8", "replace")
        try:
            name = parse_market_slug(text)
        except ValueError as e:
            return Refusal(400, str(e))
        try:
            market = self.node.market(name)
        except KeyError:
            try:
                carried = ", ".join(row["market"] for row in self.node.markets())
            except ServiceUnavailable:
                return Refusal(404, f"unknown market {name}")
            return Refusal(404, f"unknown market {name}; this node carries {carried}")
        streams = self.streams
        return MarketRoot(market, Stream(streams.feed(name), streams.tickets))

    def render_GET(self, request: Request) -> object:
        return self.node.markets()


class OpenAPIDocument(JSONResource):
    """``GET /openapi.json``: the OpenAPI 3.1 description of this API."""

    def render_GET(self, request: Request) -> object:
        return document()


def api_index() -> dict[str, object]:
    """The body of ``GET /api``: the API's routes."""
    return {"name": "bitfi", "endpoints": list(ROUTES[1:]), "openapi": "/openapi.json"}


class ApiIndex(JSONResource):
    """``GET /api``: an index of the API."""

    def render_GET(self, request: Request) -> object:
        return api_index()


def wants_html(request: Request) -> bool:
    """Whether the request's ``Accept`` header names ``text/html`` (a browser)."""
    accept = request.getHeader(b"accept") or b""
    return b"text/html" in accept.lower()


class Root(JSONResource):
    """
    ``/``: the API's index for programs; the dashboard for browsers, once
    one is set as :attr:`browser_index`.

    :ivar token: the bearer token every request must carry, or ``None``.
    :ivar public: children served without the token (the dashboard's files).
    :ivar browser_index: what ``GET /`` answers to a request that accepts
        ``text/html`` (served without the token), or ``None``.
    :ivar streams: the live streams' fan-outs (``GET /stream``, ``GET
        /markets/{market}/stream``) and their tickets.
    """

    def __init__(
        self, node: INodeControl, *, clock: IReactorTime | None = None, token: str | None = None
    ) -> None:
        super().__init__()
        self.token = token
        self.public: dict[bytes, IResource] = {b"openapi.json": OpenAPIDocument()}
        self.browser_index: IResource | None = None
        self.streams = StreamFeeds(node, clock)
        self.feed = self.streams.first
        self.tickets = self.streams.tickets
        self.putChild(b"api", ApiIndex())
        self.putChild(b"status", Status(node))
        self.putChild(b"discovery", Discovery(node))
        self.putChild(b"peers", Peers(node))
        # Today's paths: the first market's.
        mount_market(self, node)
        self.putChild(b"markets", Markets(node, self.streams))
        self.putChild(b"stream", Stream(self.feed, self.tickets))

    def mount_public(self, name: bytes, resource: IResource) -> None:
        """Serve C{resource} at ``/name`` without asking for the token."""
        self.public[name] = resource

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        public = self.public.get(path)
        if public is not None:
            return public
        if not path and self.browser_index is not None and wants_html(request):
            return self.browser_index
        if self.token is not None:
            authorization = request.getHeader(b"authorization")
            if not token_matches(self.token, authorization) and not (
                authorization is None and self._ticket_admits(path, request)
            ):
                ticket = self._stream_path(path, request) and b"ticket" in (request.args or {})
                return Unauthorized(authorization is not None, ticket)
        child: IResource = super().getChildWithDefault(path, request)
        return child

    @staticmethod
    def _stream_path(path: bytes, request: Request) -> bool:
        """Whether C{request} asks for ``/stream`` or ``/markets/{market}/stream``."""
        rest = request.postpath or []
        if path == b"markets" and len(rest) >= 2 and rest[1] == b"stream":
            rest = rest[2:]
        elif path != b"stream":
            return False
        return rest in ([], [b""])

    def _ticket_admits(self, path: bytes, request: Request) -> bool:
        """Whether C{request} is a ``GET`` of a stream with a ticket, and spends it."""
        if request.method != b"GET" or not self._stream_path(path, request):
            return False
        try:
            ticket = query_value(request, "ticket")
        except ApiError:
            return False
        return ticket is not None and self.tickets.redeem(ticket.decode("ascii", "replace"))

    def render_GET(self, request: Request) -> object:
        return api_index()


def api_root(
    node: INodeControl, *, clock: IReactorTime | None = None, token: str | None = None
) -> Root:
    """
    The root resource of the API for C{node}.

    :param clock: the live stream's timers (the global reactor if ``None``).
    :param token: the bearer token requests must carry, or ``None``.
    """
    return Root(node, clock=clock, token=token)
