"""The base of the HTTP API's resources: JSON answers, errors, query parameters, limits.

Data path: twisted.web -> a :class:`JSONResource` (every resource of
:mod:`bitfitech.api.resources` and :mod:`bitfitech.api.stream`) -> JSON
back to the HTTP client.  This module holds what those resources and the
OpenAPI document (:mod:`bitfitech.api.openapi`) share: :class:`ApiError`
and :func:`write_json` (errors are ``{"error": "..."}`` with a 4xx/5xx
status), the request body as a JSON object (:func:`read_json_object`), the
query-parameter readers (:func:`query_value`, :func:`int_param`,
:func:`choice_param`), and the API's limits and order vocabulary
(:data:`MAX_LIMIT`, :data:`SIDES`, ...).  It imports no other module of
the API, so that the API's modules import one way only: this module <-
stream <- openapi <- resources <- app.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..interfaces import ServiceUnavailable
from ..logs import logger

log = logger(__name__)

MAX_BODY: Final = 64 * 1024
"""
Largest request body, in bytes (a 413 beyond): the API's site answers 413
before reading a body announced larger, and cuts a chunked one that grows
past it.  The largest legal ``POST /orders/batch`` (:data:`MAX_BATCH`
orders, each decimal of the book's longest) is 19 KB of compact JSON, 26
KB indented.
"""

SIDES: Final = ("buy", "sell")
"""The ``side`` of an order."""
ORDER_TYPES: Final = ("limit", "ioc", "fok", "post_only", "market")
"""The ``type`` of an order."""
ORDER_STATES: Final = ("open", "closed", "all")
"""The ``state`` that ``GET /orders`` may ask for."""
MAX_LIMIT: Final = 1000
"""Largest ``limit`` or ``depth`` a query may ask for."""
MAX_BATCH: Final = 100
"""Most orders one ``POST /orders/batch`` may place."""
MAX_OFFSET: Final = 1_000_000_000
"""Largest ``offset`` a query may ask for."""
DEFAULT_LIMIT: Final = 50
"""The ``limit`` of ``/peers``, ``/peers/banned`` and ``/trades`` when none is given."""
ORDERS_LIMIT: Final = 100
"""The ``limit`` of ``/orders`` when none is given."""

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


def json_bytes(body: object) -> bytes:
    """C{body} as the API writes JSON: compact, keys sorted, one line ending in a newline."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"


def write_json(request: Request, status: int, body: object) -> bytes:
    """Set status and headers for a JSON answer and return its bytes."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json_bytes(body)


def body_too_large() -> ApiError:
    """
    The 413 answer to a body past :data:`MAX_BODY`, whether the site
    refuses it before reading it (:class:`~bitfitech.api.site.ApiRequest`)
    or a resource finds it in ``request.content``.
    """
    return ApiError(413, f"request body larger than {MAX_BODY} bytes")


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
        raise body_too_large()
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


def unavailable_error(error: ServiceUnavailable) -> ApiError:
    """The 503 answer to C{error}."""
    reason = f" ({error})" if str(error) else ""
    return ApiError(503, f"the node cannot take orders now{reason}")


def query_value(request: Request, name: str) -> bytes | None:
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
    value = query_value(request, name)
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
    value = query_value(request, name)
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
        except ServiceUnavailable as e:
            return write_json(request, 503, unavailable_error(e).body())
        except Exception:
            log.failure("API request {uri} failed", uri=request.uri)
            return write_json(request, 500, {"error": "internal error"})
        if result is NOT_DONE_YET:
            return NOT_DONE_YET
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
