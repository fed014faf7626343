"""The web dashboard: static files for browsers, in front of the JSON API.

Data path: browser -> :class:`DashboardRoot` -> ``index.html`` for ``GET /``
from a browser, a file of ``bitfitech/api/static/`` for ``GET /static/<name>``,
and every other request (the JSON API, ``GET /`` from curl or any client
that does not ask for HTML) -> the API's root resource, unchanged.  The
page's script then reads and steers the node through that same JSON API.

Files are served from a fixed set of suffixes, one path segment deep, whose
names match a strict pattern: ``..``, separators (``%2F`` is decoded into a
segment by twisted.web), hidden files and subdirectories are all a 404, and
there is no directory listing.  Every answer carries ``Cache-Control:
no-cache`` and an ``ETag`` (the files are plain, unversioned names, so a
browser revalidates them; an unchanged file costs a 304), ``nosniff``, and
the page a Content-Security-Policy that allows only the node's own origin.
"""

from __future__ import annotations

import hashlib
import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final

from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from .jsonresource import write_json

STATIC: Final = "static"
"""The package directory of the dashboard's files, and their URL prefix."""

CONTENT_TYPES: Final = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".txt": b"text/plain; charset=utf-8",
}
"""The only suffixes served, and their content types."""

_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\Z")
"""A file name we serve: no separator, no ``..``, no leading dot."""

CONTENT_SECURITY_POLICY: Final = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def static_files() -> Traversable:
    """The directory of the dashboard's files, inside the installed package."""
    return files(__package__ or "bitfitech.api").joinpath(STATIC)


def _not_found(request: Request) -> bytes:
    return write_json(request, http.NOT_FOUND, {"error": "not found"})


def _content_type(name: str) -> bytes | None:
    """The content type of file C{name}, ``None`` if it is not one we serve."""
    if not _NAME_RE.match(name) or len(name) > 100:
        return None
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:].lower()) if dot > 0 else None


def serve_file(request: Request, directory: Traversable, name: str) -> bytes:
    """
    Answer C{request} with file C{name} of C{directory}, a 304 if the
    client's ``If-None-Match`` names its ETag, or a JSON 404.

    :param name: one decoded path segment, as the client gave it.
    """
    content_type = _content_type(name)
    path = directory.joinpath(name) if content_type is not None else None
    if content_type is None or path is None or not path.is_file():
        return _not_found(request)
    if isinstance(path, Path) and isinstance(directory, Path):
        # The name cannot leave the directory; a symbolic link must not either.
        if path.resolve().parent != directory.resolve():
            return _not_found(request)
    content = path.read_bytes()
    etag = b'"' + hashlib.sha256(content).hexdigest()[:32].encode("ascii") + b'"'
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"etag", etag)
    request.setHeader(b"x-content-type-options", b"nosniff")
    if content_type.startswith(b"text/html"):
        request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY)
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-frame-options", b"DENY")
    if request.setETag(etag) == http.CACHED:
        return b""
    return content


def _method_not_allowed(request: Request) -> bytes:
    request.setHeader(b"allow", b"GET, HEAD")
    method = request.method.decode("ascii", "replace")
    return write_json(request, http.NOT_ALLOWED, {"error": f"method {method} not allowed"})


class StaticFiles(Resource):
    """``GET /static/<name>``: one file of the dashboard, never a listing."""

    isLeaf = True

    def __init__(self, directory: Traversable | None = None) -> None:
        """:param directory: where the files are; the package's ``static/`` by default."""
        super().__init__()
        self.directory = directory if directory is not None else static_files()

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _method_not_allowed(request)
        # A leaf: whatever path is left is ours to judge, and only one segment is a file.
        segments = request.postpath or []
        if len(segments) != 1:
            return _not_found(request)
        return serve_file(request, self.directory, segments[0].decode("utf-8", "replace"))


def wants_html(request: Request) -> bool:
    """Tell whether C{request} names ``text/html`` in its ``Accept`` header (a browser)."""
    accept = request.getHeader(b"accept") or b""
    return any(
        part.split(b";", 1)[0].strip().lower() in (b"text/html", b"application/xhtml+xml")
        for part in accept.split(b",")
    )


class IndexPage(Resource):
    """``GET /`` from a browser: the dashboard's ``index.html``."""

    isLeaf = True

    def __init__(self, directory: Traversable | None = None) -> None:
        """:param directory: where the files are; the package's ``static/`` by default."""
        super().__init__()
        self.directory = directory if directory is not None else static_files()

    def render(self, request: Request) -> bytes:
        request.setHeader(b"vary", b"Accept")
        if request.method not in (b"GET", b"HEAD"):
            return _method_not_allowed(request)
        return serve_file(request, self.directory, "index.html")


class DashboardRoot(Resource):
    """
    The site's root: the dashboard for ``GET /`` from a browser and for
    ``/static/*``; the JSON API (C{api}) for everything else, ``GET /`` from
    other clients included.  The dashboard's files are public: whatever
    the API asks of a request (a bearer token) it asks only of its own paths.
    """

    def __init__(self, api: IResource, directory: Traversable | None = None) -> None:
        """
        :param api: the API's root resource (:func:`~bitfitech.api.resources.api_root`).
        :param directory: where the files are; the package's ``static/`` by default.
        """
        super().__init__()
        self.api = api
        self.directory = directory if directory is not None else static_files()
        self.index = IndexPage(self.directory)
        self.static = StaticFiles(self.directory)

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if path == b"" and not request.postpath:
            # ``/`` answers by Accept: caches must keep the page and the JSON apart.
            request.setHeader(b"vary", b"Accept")
            if request.method in (b"GET", b"HEAD") and wants_html(request):
                return self.index
        elif path == STATIC.encode("ascii"):
            return self.static
        child: IResource = self.api.getChildWithDefault(path, request)
        return child

    def render(self, request: Request) -> bytes | int:
        # Reached only for an empty path, which HTTP clients never send.
        answer: bytes | int = self.api.render(request)
        return answer


def with_dashboard(api: IResource) -> DashboardRoot:
    """The site root that serves the dashboard in front of the JSON API C{api}."""
    return DashboardRoot(api)
