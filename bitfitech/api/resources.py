"""JSON resources of the HTTP API (``/status``, ``/peers``).

Data path: :class:`~bitfitech.interfaces.INodeControl` -> these resources ->
HTTP client.  Every answer, errors included, is a JSON document; errors are
``{"error": "..."}`` with a 4xx/5xx status.  Unknown paths are a JSON 404
and unsupported methods a JSON 405 with an ``Allow`` header.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..address import is_node_id
from ..interfaces import INodeControl
from ..logs import logger

log = logger(__name__)

MAX_BODY = 64 * 1024


class ApiError(Exception):
    """An error answer: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def write_json(request: Request, status: int, body: object) -> bytes:
    """Set status and headers for a JSON answer and return its bytes."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"


def read_json_object(request: Request) -> dict[str, Any]:
    """
    The request body as a JSON object.

    :raises ApiError: 400 for a missing, oversize or malformed body.
    """
    content = request.content.read(MAX_BODY + 1) if request.content else b""
    if len(content) > MAX_BODY:
        raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
    try:
        body = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


Handler = Callable[[Request], "object | Deferred[object]"]


class JSONResource(Resource):
    """
    Base of every API resource: dispatches ``render_<METHOD>`` methods that
    return a JSON-ready object (or a Deferred of one) and turns
    :class:`ApiError` into a JSON error answer.
    """

    ok_status = http.OK

    def getChild(self, path: bytes, request: Request) -> IResource:
        # A trailing slash (``/``, ``/status/``) is the resource itself; anything else is unknown.
        return self if not path else NotFound()

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        handler: Handler | None = getattr(self, f"render_{method}", None)
        if method == "HEAD":
            handler = getattr(self, "render_GET", None)
        if handler is None:
            allowed = sorted(
                name[len("render_"):] for name in dir(self) if name.startswith("render_")
                and name[len("render_"):].isupper()
            )  # fmt: skip
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return write_json(request, 405, {"error": f"method {method} not allowed"})
        try:
            result = handler(request)
        except ApiError as e:
            return write_json(request, e.status, {"error": e.message})
        if not isinstance(result, Deferred):
            return write_json(request, self.ok_status, result)
        finished: list[object] = []
        request.notifyFinish().addBoth(lambda outcome: finished.append(outcome))

        def done(body: object) -> None:
            if not finished:
                request.write(write_json(request, self.ok_status, body))
                request.finish()

        def failed(failure: Failure) -> None:
            if finished:
                return
            if failure.check(ApiError):
                error = failure.value
                assert isinstance(error, ApiError)
                request.write(write_json(request, error.status, {"error": error.message}))
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


class Peers(JSONResource):
    """``GET /peers``: live links; ``POST /peers {"address": ...}``: dial now."""

    def __init__(self, node: INodeControl) -> None:
        super().__init__()
        self.node = node

    def getChild(self, path: bytes, request: Request) -> IResource:
        if not path:
            return self
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

        def failed(failure: Failure) -> None:
            if failure.check(ValueError):
                raise ApiError(400, failure.getErrorMessage())
            # Twisted's connect errors (refused, timeout, no route) are not OSErrors.
            failure.trap(ConnectionError, OSError, ConnectError)
            raise ApiError(502, f"could not connect to {address}: {failure.getErrorMessage()}")

        d.addErrback(failed)
        return d  # type: ignore[return-value]


class Root(JSONResource):
    """``/``: an index of the API."""

    def __init__(self, node: INodeControl) -> None:
        super().__init__()
        self.putChild(b"status", Status(node))
        self.putChild(b"peers", Peers(node))

    def render_GET(self, request: Request) -> object:
        return {"name": "bitfi", "endpoints": ["/status", "/peers"]}


def api_root(node: INodeControl) -> Resource:
    """The root resource of the API for C{node}."""
    return Root(node)
