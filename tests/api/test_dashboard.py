"""
Tests for :mod:`bitfitech.api.dashboard`: the dashboard's files in front of
the JSON API, through StubTreq and through raw HTTP bytes into the site (so
that no client tidies a hostile path before the server sees it).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from bitfitech.api.dashboard import (
    CONTENT_TYPES,
    DashboardRoot,
    StaticFiles,
    static_files,
    wants_html,
    with_dashboard,
)
from bitfitech.api.resources import api_root
from bitfitech.api.site import ApiSite

from .test_resources import FakeNode

URL = "http://127.0.0.1:13000"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


class DashboardTestCase(SynchronousTestCase):
    """The dashboard in front of the API of a fake node, in memory."""

    def setUp(self) -> None:
        self.node = FakeNode()
        self.root = with_dashboard(api_root(self.node))
        # StubTreq builds its request methods at run time; mypy cannot see them.
        self.stub: Any = StubTreq(self.root)

    def get(self, path: str, **headers: str) -> tuple[int, bytes, Headers]:
        """GET C{path}: status, body and headers."""
        d: Deferred[Any] = self.stub.get(
            URL + path, headers={name.replace("_", "-"): value for name, value in headers.items()}
        )
        self.stub.flush()
        response = self.successResultOf(d)
        content: bytes = self.successResultOf(response.content())
        return response.code, content, response.headers

    def header(self, headers: Headers, name: str) -> str:
        """The one value of header C{name}."""
        values = headers.getRawHeaders(name)
        assert values is not None, f"no {name} header"
        [value] = values
        return value


class PageTests(DashboardTestCase):
    """``/`` is the page for browsers and the API's index for everyone else."""

    def test_index_for_browser(self) -> None:
        """A browser asking for ``/`` gets index.html, never cached without revalidation."""
        status, body, headers = self.get("/", accept=BROWSER_ACCEPT)
        self.assertEqual(status, 200)
        self.assertEqual(self.header(headers, "content-type"), "text/html; charset=utf-8")
        self.assertEqual(self.header(headers, "cache-control"), "no-cache")
        self.assertEqual(self.header(headers, "x-content-type-options"), "nosniff")
        self.assertIn("script-src 'self'", self.header(headers, "content-security-policy"))
        self.assertIn("Accept", self.header(headers, "vary"))
        self.assertEqual(body, static_files().joinpath("index.html").read_bytes())
        self.assertIn(b'<script src="/static/app.js" defer></script>', body)
        self.assertIn(b'href="/static/style.css"', body)

    def test_page_uses_only_the_node(self) -> None:
        """The page and its script load nothing from elsewhere: no CDN, no fonts."""
        for name in ("index.html", "app.js", "style.css"):
            text = static_files().joinpath(name).read_text("utf-8")
            for marker in ("http://", "https://", "//cdn", "@import", "url("):
                if name == "app.js" and marker == "http://":
                    # the SVG namespace is a name, not a fetch
                    text = text.replace('"http://www.w3.org/2000/svg"', "")
                self.assertNotIn(marker, text, f"{name} refers to {marker}")

    def test_page_shows_the_ordering(self) -> None:
        """
        The page has places for the ordering, its points and the witnesses,
        and styles every trade status the API gives (the browser test,
        tests/integration/test_browser.py, sees them filled).
        """
        page = static_files().joinpath("index.html").read_text("utf-8")
        for element_id in ("ordering", "settled-point", "final-point", "witnesses-summary",
                           "witnesses"):  # fmt: skip
            self.assertIn(f'id="{element_id}"', page)
        script = static_files().joinpath("app.js").read_text("utf-8")
        style = static_files().joinpath("style.css").read_text("utf-8")
        for status in ("tentative", "settled", "final"):
            self.assertIn(f"{status}: ", script)  # a title for its badge
            self.assertIn(f".badge.{status} ", style)
        for name in ("witnesses", "settled_through_ms", "final_through_ms", "chains", "lag_ms"):
            self.assertIn(name, script)

    def test_page_has_a_market_selector(self) -> None:
        """
        The header has a labelled market selector, hidden until the node
        says it carries several markets; the hash names the market shown,
        and every request of a market route goes through ``marketPath``
        (``/markets/{slug}/...`` for a market other than the first; the
        browser test, tests/integration/test_browser.py, switches markets).
        """
        _, body, _ = self.get("/", accept=BROWSER_ACCEPT)
        page = body.decode("utf-8")
        self.assertIn('<span id="market-picker" class="market-picker" hidden>', page)
        self.assertIn('<label for="market" class="visually-hidden">Market</label>', page)
        self.assertIn('<select id="market" name="market"', page)
        self.assertLess(page.index('id="pair"'), page.index('id="market"'))
        self.assertLess(page.index('id="market"'), page.index('id="ticker"'))
        script = static_files().joinpath("app.js").read_text("utf-8")
        for needle in ('"/markets"', '"/markets/"', "location.hash", '"hashchange"'):
            self.assertIn(needle, script)
        code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("//"))
        routes = list(re.finditer(r'"/(book|trades|orders|ticker|stream)\b(?!/ticket)', code))
        self.assertEqual(
            {route[1] for route in routes}, {"book", "trades", "orders", "ticker", "stream"}
        )
        for route in routes:
            before = code[route.start() - len("marketPath(") : route.start()]
            self.assertEqual(before, "marketPath(", code[route.start() - 40 : route.end() + 20])
        style = static_files().joinpath("style.css").read_text("utf-8")
        self.assertIn(".market-picker select", style)

    def test_api_index_for_other_clients(self) -> None:
        """curl (``Accept: */*``) and JSON clients still get the API's JSON index at ``/``."""
        for accept in ("*/*", "application/json"):
            status, body, headers = self.get("/", accept=accept)
            self.assertEqual(status, 200)
            self.assertEqual(
                self.header(headers, "content-type"), "application/json; charset=utf-8"
            )
            self.assertEqual(json.loads(body)["name"], "bitfi")

    def test_api_still_answers(self) -> None:
        """Every other path goes to the API unchanged, errors included."""
        status, body, _ = self.get("/status", accept=BROWSER_ACCEPT)
        self.assertEqual((status, json.loads(body)), (200, self.node.status_doc))
        status, body, _ = self.get("/peers/")
        self.assertEqual((status, json.loads(body)), (200, self.node.rows))
        status, body, _ = self.get("/nothing")
        self.assertEqual((status, json.loads(body)), (404, {"error": "not found"}))

    def test_post_to_root_is_the_api(self) -> None:
        """A POST to ``/`` is the API's 405, even from a browser."""
        d = self.stub.post(URL + "/", data=b"{}", headers={"accept": BROWSER_ACCEPT})
        self.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])

    def test_wants_html(self) -> None:
        """Only an explicit text/html (or XHTML) in ``Accept`` picks the page."""
        self.assertTrue(wants_html(raw_request(b"Accept: text/html")))
        self.assertTrue(wants_html(raw_request(b"Accept: application/json, TEXT/HTML;q=0.5")))
        self.assertFalse(wants_html(raw_request(b"Accept: */*")))
        self.assertFalse(wants_html(raw_request(b"Accept: text/htmlx")))
        self.assertFalse(wants_html(raw_request()))


def raw_request(*header_lines: bytes) -> Any:
    """A twisted.web request with C{header_lines}, for :func:`wants_html`."""
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b""])
    for line in header_lines:
        name, value = line.split(b":", 1)
        request.requestHeaders.addRawHeader(name.strip(), value.strip())
    return request


class StaticTests(DashboardTestCase):
    """``/static/<name>``: the files with their types, 404 for anything else."""

    def test_files_and_types(self) -> None:
        """app.js and style.css are served whole, typed, revalidated on each use."""
        for name, content_type in [
            ("app.js", "text/javascript; charset=utf-8"),
            ("style.css", "text/css; charset=utf-8"),
            ("index.html", "text/html; charset=utf-8"),
        ]:
            status, body, headers = self.get(f"/static/{name}")
            self.assertEqual(status, 200, name)
            self.assertEqual(self.header(headers, "content-type"), content_type)
            self.assertEqual(self.header(headers, "cache-control"), "no-cache")
            self.assertEqual(self.header(headers, "x-content-type-options"), "nosniff")
            self.assertEqual(body, static_files().joinpath(name).read_bytes())

    def test_etag_revalidation(self) -> None:
        """A browser holding the current copy gets a 304 and no body."""
        _, _, headers = self.get("/static/app.js")
        etag = self.header(headers, "etag")
        status, body, _ = self.get("/static/app.js", if_none_match=etag)
        self.assertEqual((status, body), (304, b""))
        status, body, _ = self.get("/static/app.js", if_none_match='"stale"')
        self.assertEqual(status, 200)
        self.assertTrue(body)

    def test_every_shipped_file_is_served(self) -> None:
        """Every file of the static directory has a content type we serve."""
        names = [entry.name for entry in static_files().iterdir() if entry.is_file()]
        self.assertTrue({"index.html", "app.js", "style.css"} <= set(names))
        for name in names:
            self.assertIn(os.path.splitext(name)[1], CONTENT_TYPES, name)
            status, _, _ = self.get(f"/static/{name}")
            self.assertEqual(status, 200, name)

    def test_unknown_files(self) -> None:
        """Unknown names, no name, a directory and unserved suffixes are a JSON 404."""
        for path in [
            "/static/nope.js",
            "/static/",
            "/static",
            "/static/app.js/",
            "/static/app.js/x",
            "/static/app",
            "/static/APP.JS",
            "/static/app.js.bak",
            "/static/__init__.py",
            "/index.html",
        ]:
            status, body, headers = self.get(path)
            self.assertEqual(status, 404, path)
            self.assertEqual(json.loads(body), {"error": "not found"}, path)

    def test_methods(self) -> None:
        """Files are read-only: other methods are a 405 naming GET and HEAD."""
        d = self.stub.delete(URL + "/static/app.js")
        self.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])
        d = self.stub.head(URL + "/static/style.css")
        self.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(response.content()), b"")


def raw_get(root: DashboardRoot, target: bytes) -> tuple[int, bytes]:
    """
    Send ``GET target`` as raw bytes to a site on C{root} and return the
    status and body: the path reaches the server exactly as written.
    """
    site = ApiSite(root)
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET " + target + b" HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    protocol.connectionLost(Failure(ConnectionDone()))
    status = int(head.split(b" ", 2)[1])
    return status, body


class TraversalTests(SynchronousTestCase):
    """No path reaches a file outside the static directory."""

    def setUp(self) -> None:
        # A static directory with a secret beside it, a hidden file, a
        # subdirectory, and a link out of the directory.
        base = Path(self.mktemp())
        self.static = base / "static"
        (self.static / "sub").mkdir(parents=True)
        (base / "secret.js").write_text("secret")
        (self.static / "app.js").write_text("app")
        (self.static / ".hidden.js").write_text("hidden")
        (self.static / "sub" / "deep.js").write_text("deep")
        (self.static / "link.js").symlink_to(base / "secret.js")
        self.root = DashboardRoot(api_root(FakeNode()), self.static)

    def test_serves_own_file(self) -> None:
        """The harness is sound: a file of the directory is served."""
        self.assertEqual(raw_get(self.root, b"/static/app.js"), (200, b"app"))

    def test_traversal_refused(self) -> None:
        """``..`` in any spelling, hidden files, subdirectories and links out: 404."""
        for target in [
            b"/static/../secret.js",
            b"/static/..%2Fsecret.js",
            b"/static/..%2fsecret.js",
            b"/static/%2e%2e/secret.js",
            b"/static/%2E%2E%2Fsecret.js",
            b"/static/..%5Csecret.js",
            b"/static/sub/../../secret.js",
            b"/static/%2Fetc%2Fpasswd",
            b"/static//etc/passwd",
            b"/static/.hidden.js",
            b"/static/sub",
            b"/static/sub/deep.js",
            b"/static/sub%2Fdeep.js",
            b"/static/link.js",
            b"/static/app.js%00.css",
        ]:
            status, body = raw_get(self.root, target)
            self.assertEqual(status, 404, target)
            self.assertNotIn(b"secret", body, target)
            self.assertNotIn(b"deep", body, target)

    def test_real_package_traversal(self) -> None:
        """In the shipped directory, the module beside ``static/`` is out of reach."""
        root = with_dashboard(api_root(FakeNode()))
        for target in [
            b"/static/../dashboard.py",
            b"/static/..%2Fdashboard.py",
            b"/static/%2e%2e%2fresources.py",
        ]:
            status, body = raw_get(root, target)
            self.assertEqual(status, 404, target)
            self.assertNotIn(b"import", body)

    def test_static_files_default(self) -> None:
        """StaticFiles without a directory serves the package's own files."""
        self.assertEqual(
            StaticFiles().directory.joinpath("app.js").read_bytes(),
            static_files().joinpath("app.js").read_bytes(),
        )
