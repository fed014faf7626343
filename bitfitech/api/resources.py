"""JSON resources of the HTTP API (``/status``, ``/peers``, ``/peers/banned``, ``/orders``, ...).

Data path: :class:`~bitfitech.interfaces.INodeControl` -> these resources ->
HTTP client.  Every answer, errors included, is a JSON document; errors are
``{"error": "..."}`` with a 4xx/5xx status.  Unknown paths are a JSON 404
and unsupported methods a JSON 405 with an ``Allow`` header.  An error about
one order of a batch also names its ``index``.

Prices and amounts travel as JSON strings holding decimals, and reach the
node exactly as the client wrote them: no JSON number is ever read as a
float.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, NoProtocol
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..address import is_node_id
from ..interfaces import BatchRejected, INodeControl, ServiceUnavailable
from ..logs import logger

log = logger(__name__)

MAX_BODY = 64 * 1024

SIDES: Final = ("buy", "sell")
ORDER_TYPES: Final = ("limit", "ioc", "fok", "post_only", "market")
ORDER_STATES: Final = ("open", "closed", "all")
ORDER_FIELDS: Final = frozenset({"side", "price", "amount", "type"})
MAX_LIMIT: Final = 1000
"""Largest ``limit`` or ``depth`` a query may ask for."""
MAX_BATCH: Final = 100
"""Most orders one ``POST /orders/batch`` may place."""

_ORDER_ID_RE = re.compile(r"\A[0-9a-f]{64}\Z")
_DIGITS_RE = re.compile(rb"\A[0-9]{1,10}\Z")


class ApiError(Exception):
    """
    An error answer: HTTP status and message.

    :ivar details: more fields of the error body (``{"index": 3}``).
    """

    def __init__(
        self, status: int, message: str, details: Mapping[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = dict(details or {})

    def body(self) -> dict[str, object]:
        """The JSON-ready error body: ``{"error": message, **details}``."""
        return {**self.details, "error": self.message}


def write_json(request: Request, status: int, body: object) -> bytes:
    """Set status and headers for a JSON answer and return its bytes."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"


def _reject_constant(name: str) -> object:
    """``parse_constant`` hook: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON."""
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: an object, refused (400) if a key repeats."""
    body = dict(pairs)
    if len(body) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ApiError(400, f"key {key!r} given more than once in the request body")
            seen.add(key)
    return body


def read_json_object(request: Request) -> dict[str, Any]:
    """
    The request body as a JSON object; its non-integer numbers are
    :class:`~decimal.Decimal`, never floats.

    :raises ApiError: 413 for an oversize body; 400 for a missing or
        malformed one, one that is not an object, or one with a repeated key.
    """
    content = request.content.read(MAX_BODY + 1) if request.content else b""
    if len(content) > MAX_BODY:
        raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
    try:
        # Decimals, never floats; NaN and Infinity are not JSON; a repeated key is ambiguous.
        body = json.loads(
            content.decode("utf-8"),
            parse_float=Decimal,
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_keys,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


@dataclass(frozen=True)
class Answer:
    """
    What a ``render_<METHOD>`` returns (or a Deferred fires with) to answer
    other than the resource's ``ok_status``, or with extra headers.

    :ivar body: the JSON-ready body.
    :ivar status: the HTTP status.
    :ivar headers: extra headers, name to value.
    """

    body: object
    status: int = http.OK
    headers: Mapping[str, str] = field(default_factory=dict)


def is_order_id(value: object) -> bool:
    """Tell whether C{value} is an order id: 64 lowercase hex digits."""
    return isinstance(value, str) and _ORDER_ID_RE.match(value) is not None


def _query_value(request: Request, name: str) -> bytes | None:
    """
    The one value of query parameter C{name}, ``None`` if absent.

    :raises ApiError: 400 if it is given more than once.
    """
    values = (request.args or {}).get(name.encode("ascii"))
    if values is None:
        return None
    if len(values) != 1:
        raise ApiError(400, f"query parameter {name} given more than once")
    value: bytes = values[0]
    return value


def int_param(
    request: Request, name: str, default: int, low: int = 1, high: int = MAX_LIMIT
) -> int:
    """
    Query parameter C{name} as an int from C{low} to C{high}.

    :param default: the value when the parameter is absent.
    :raises ApiError: 400, naming the parameter, if it is given more than
        once, is not plain decimal digits (no sign, no space) or is out of
        bounds.
    """
    value = _query_value(request, name)
    if value is None:
        return default
    if not _DIGITS_RE.match(value) or not low <= int(value) <= high:
        raise ApiError(400, f"query parameter {name} must be an integer from {low} to {high}")
    return int(value)


def choice_param(request: Request, name: str, choices: tuple[str, ...], default: str) -> str:
    """
    Query parameter C{name} as one of C{choices}.

    :param default: the value when the parameter is absent.
    :raises ApiError: 400, naming the parameter, if it is given more than
        once or is not one of C{choices}.
    """
    value = _query_value(request, name)
    if value is None:
        return default
    text = value.decode("utf-8", "replace")
    if text not in choices:
        raise ApiError(400, f"query parameter {name} must be one of {', '.join(choices)}")
    return text


Handler = Callable[[Request], "object | Deferred[object]"]


class JSONResource(Resource):
    """
    Base of every API resource: dispatches ``render_<METHOD>`` methods that
    return a JSON-ready object or an :class:`Answer` (or a Deferred of one)
    and turns :class:`ApiError` into a JSON error answer.
    """

    ok_status = http.OK

    def answer(self, request: Request, result: object) -> bytes:
        """The bytes of a handler's C{result}, status and headers set on C{request}."""
        if not isinstance(result, Answer):
            return write_json(request, self.ok_status, result)
        for name, value in result.headers.items():
            request.setHeader(name.encode("ascii"), value.encode("utf-8"))
        return write_json(request, result.status, result.body)

    def getChild(self, path: bytes, request: Request) -> IResource:
        # A trailing slash (``/``, ``/status/``) is the resource itself; anything else is unknown.
        return self if not path else NotFound()

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        handler: Handler | None = getattr(self, f"render_{method}", None)
        if method == "HEAD":
            handler = getattr(self, "render_GET", None)
        if handler is None:
            # HEAD is answered as GET: a resource without GET has no HEAD either.
            allowed = sorted(
                name[len("render_"):] for name in dir(self) if name.startswith("render_")
                and name[len("render_"):].isupper()
                and (name != "render_HEAD" or hasattr(self, "render_GET"))
            )  # fmt: skip
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return write_json(request, 405, {"error": f"method {method} not allowed"})
        try:
            result = handler(request)
        except ApiError as e:
            return write_json(request, e.status, e.body())
        if not isinstance(result, Deferred):
            return self.answer(request, result)
        finished: list[object] = []
        request.notifyFinish().addBoth(lambda outcome: finished.append(outcome))

        def done(body: object) -> None:
            if not finished:
                request.write(self.answer(request, body))
                request.finish()

        def failed(failure: Failure) -> None:
            if finished:
                return
            if failure.check(ApiError):
                error = failure.value
                assert isinstance(error, ApiError)
                request.write(write_json(request, error.status, error.body()))
            else:
                log.failure("API request {uri} failed", failure, uri=request.uri)
                request.write(write_json(request, 500, {"error": "internal error"}))
            request.finish()

        result.addCallbacks(done, failed)
        return NOT_DONE_YET


class NotFound(JSONResource):
    """Any unknown path: a JSON 404."""

    def render(self, request: Request) -> bytes:
        return write_json(request, 404, {"error": "not found"})


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
        return self.node.banned()


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
        return self.node.peers()

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


def _unavailable_error(error: ServiceUnavailable) -> ApiError:
    """The 503 answer to C{error}."""
    reason = f" ({error})" if str(error) else ""
    return ApiError(503, f"the node cannot take orders now{reason}")


def _unavailable(failure: Failure) -> None:
    """Errback: :class:`ServiceUnavailable` becomes a 503; anything else passes on."""
    failure.trap(ServiceUnavailable)
    assert isinstance(failure.value, ServiceUnavailable)
    raise _unavailable_error(failure.value)


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

    The body is ``{"orders": [order, ...]}``: 1 to :data:`MAX_BATCH`
    objects, each what :func:`order_request` takes.

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

    def __init__(self, node: INodeControl, order_id: str) -> None:
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
            raise _unavailable_error(e) from None
        d.addErrback(_unavailable)
        return d  # type: ignore[return-value]


class Orders(JSONResource):
    """``GET /orders?state=&limit=``: this node's orders; ``POST /orders``: place one."""

    def __init__(self, node: INodeControl) -> None:
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
        limit = int_param(request, "limit", 100)
        return {"orders": self.node.orders(state, limit)}

    def render_POST(self, request: Request) -> Deferred[object]:
        side, price, amount, order_type = order_request(read_json_object(request))
        try:
            d = self.node.submit_order(side, price, amount, order_type)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        except ServiceUnavailable as e:
            raise _unavailable_error(e) from None

        def created(document: dict[str, Any]) -> Answer:
            return Answer(document, http.CREATED, {"location": f"/orders/{document['id']}"})

        d.addCallbacks(created, _unavailable)
        return d  # type: ignore[return-value]


class OrderBatch(JSONResource):
    """
    ``POST /orders/batch {"orders": [order, ...]}``: place several orders,
    all or none, in one group commit.
    """

    ok_status = http.CREATED

    def __init__(self, node: INodeControl) -> None:
        super().__init__()
        self.node = node

    def render_POST(self, request: Request) -> Deferred[object]:
        placements = batch_request(read_json_object(request))
        try:
            d = self.node.submit_orders(placements)
        except BatchRejected as e:
            raise ApiError(400, str(e), {"index": e.index}) from None
        except ServiceUnavailable as e:
            raise _unavailable_error(e) from None

        def created(documents: list[dict[str, Any]]) -> dict[str, object]:
            return {"orders": documents}

        d.addCallbacks(created, _unavailable)
        return d  # type: ignore[return-value]


class Book(JSONResource):
    """``GET /book?depth=``: the aggregated book, best levels first."""

    def __init__(self, node: INodeControl) -> None:
        super().__init__()
        self.node = node

    def render_GET(self, request: Request) -> object:
        return self.node.book(int_param(request, "depth", 20))


class Trades(JSONResource):
    """``GET /trades?limit=``: the last trades, newest first."""

    def __init__(self, node: INodeControl) -> None:
        super().__init__()
        self.node = node

    def render_GET(self, request: Request) -> object:
        return {"trades": self.node.trades(int_param(request, "limit", 50))}


class Root(JSONResource):
    """``/``: an index of the API."""

    def __init__(self, node: INodeControl) -> None:
        super().__init__()
        self.putChild(b"status", Status(node))
        self.putChild(b"peers", Peers(node))
        self.putChild(b"orders", Orders(node))
        self.putChild(b"book", Book(node))
        self.putChild(b"trades", Trades(node))

    def render_GET(self, request: Request) -> object:
        return {
            "name": "bitfi",
            "endpoints": [
                "/status",
                "/peers",
                "/peers/banned",
                "/orders",
                "/orders/batch",
                "/book",
                "/trades",
            ],
        }


def api_root(node: INodeControl) -> Resource:
    """The root resource of the API for C{node}."""
    return Root(node)
