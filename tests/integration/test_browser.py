"""
The dashboard end to end, in headless Chromium driven by selenium.

Data path: real nodes (:class:`~bitfitech.testing.LocalCluster`) -> one
node's JSON API behind :class:`~bitfitech.api.dashboard.DashboardRoot` on a
loopback port -> Chromium running ``app.js`` -> the order form -> ``POST
/orders`` -> the node's book and trades -> the page's ladder, depth chart,
trade tape, header, open orders and own trades, checked against the
node's own ``GET /status``, ``/book`` and ``/trades``.

Selenium's calls block, so the browser steps run in a thread
(``deferToThread``) while the reactor serves the page and the API; the
steps read the API over HTTP from that thread, and act on the other node
with ``blockingCallFromThread``.  Every wait is selenium's WebDriverWait
polling for a condition.  The trading view's screenshots are kept as
artifacts: ``dashboard.png`` (1400x900), ``dashboard-narrow.png`` and
``dashboard-markets.png`` (a node of two markets, the second shown), in
``$BITFI_ARTIFACT_DIR`` or ``_artifacts/`` at the top of the checkout.

The tests are skipped, with the reason, where selenium, Chromium or
chromedriver is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from bitfitech.api.dashboard import with_dashboard
from bitfitech.api.resources import api_root
from bitfitech.api.site import ApiSite
from bitfitech.node import Node
from bitfitech.testing import HANG_GUARD, ClusterTestCase, poll_until

#: seconds the page may take to show a change (it polls every 2 s)
WAIT = 20.0

#: the trading view's window, and the narrow one
WIDE = (1400, 900)
NARROW = (420, 1700)

PRICE = "123.45"
AMOUNT = "0.5"
TOKEN = "dashboard-test-token-0123456789abcdef"

#: the other node's book: (side, price, amount)
OTHER_ORDERS = [
    ("sell", "125.00", "0.2"),
    ("sell", "125.50", "0.35"),
    ("sell", "126.10", "0.6"),
    ("sell", "126.75", "0.5"),
    ("sell", "127.40", "0.25"),
    ("sell", "128.00", "1.2"),
    ("sell", "129.25", "2.4"),
    ("buy", "122.00", "0.4"),
    ("buy", "121.50", "0.8"),
    ("buy", "120.80", "0.3"),
    ("buy", "120.00", "1.5"),
    ("buy", "119.20", "2.1"),
]

#: trades made before the page loads: the other node's order (side, price,
#: amount), which the first node takes whole
EARLIER_TRADES = [
    ("sell", "124.10", "0.15"),
    ("buy", "123.60", "0.3"),
    ("sell", "124.35", "0.05"),
]

BTC, ETH = "BTC/USD", "ETH/USD"

#: each market's book before the page loads: a trade (the other node's
#: order, taken whole by the first) and the other node's resting order,
#: at prices far apart so that the page cannot mix up the markets
MARKET_BOOKS = {
    BTC: {"trade": ("sell", "124.10", "0.15"), "resting": ("buy", "120.00", "1.5")},
    ETH: {"trade": ("sell", "2010.00", "0.2"), "resting": ("sell", "2050.50", "0.4")},
}

#: the bid placed through the form while ETH/USD is shown
ETH_BID = ("2040.25", "0.3")

ARTIFACT_ENV = "BITFI_ARTIFACT_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]


def artifact_dir() -> Path:
    """Where the run keeps its artifacts (created): ``$BITFI_ARTIFACT_DIR`` or ``_artifacts/``."""
    given = os.environ.get(ARTIFACT_ENV)
    path = Path(given) if given else REPO_ROOT / "_artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _find(*names: str, env: str) -> str | None:
    """The first of C{names} on PATH, or the path in environment variable C{env}."""
    given = os.environ.get(env)
    if given:
        return given if os.access(given, os.X_OK) else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = _find("chromium", "chromium-browser", "google-chrome", env="BITFI_CHROMIUM")
CHROMEDRIVER = _find("chromedriver", env="BITFI_CHROMEDRIVER")


def _missing() -> str | None:
    """Why the browser test cannot run here, or ``None`` if it can."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install selenium, in the test extras)")
    if CHROMIUM is None:
        missing.append("chromium (apt-get install chromium, or set BITFI_CHROMIUM)")
    if CHROMEDRIVER is None:
        missing.append("chromedriver (apt-get install chromium-driver, or set BITFI_CHROMEDRIVER)")
    return "no browser to drive: missing " + ", ".join(missing) if missing else None


def number(text: str | None) -> Decimal | None:
    """A figure as the page shows it (``"1,234.50"``) as a Decimal; ``None`` if it is none."""
    if text is None:
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def ledger_holds(node: Node, count: int, market: str | None = None) -> Callable[[], bool]:
    """A predicate: whether C{node}'s ledger of C{market} (its first) holds C{count} events."""
    service = node.market if market is None else node.markets[market]
    return lambda: len(service.ledger) == count


class NodeApi:
    """The node's JSON API over HTTP, for the browser thread (blocking calls)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        """:param url: the API's root URL, ending in ``/``."""
        self.url = url
        self.headers = {"Accept": "application/json"}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str) -> tuple[int, Any]:
        """``(status, JSON body)`` of C{method} C{path}, error answers included."""
        request = urllib.request.Request(self.url + path, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.load(e)

    def get(self, path: str) -> Any:
        """The JSON body of ``GET`` C{path}, which must answer 200."""
        status, body = self.call("GET", path)
        assert status == 200, f"GET /{path}: {status} {body}"
        return body


class Browser:
    """A headless Chromium under chromedriver, with a throwaway profile."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        assert CHROMIUM is not None and CHROMEDRIVER is not None
        self.profile = tempfile.mkdtemp(prefix="bitfi-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in [
            "--headless=new",
            "--no-sandbox",  # CI containers run as root
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--disable-extensions",
            "--no-first-run",
            "--hide-scrollbars",
            f"--window-size={WIDE[0]},{WIDE[1]}",
            f"--user-data-dir={self.profile}",
        ]:
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
            self.driver.set_window_size(*WIDE)
        except BaseException:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise

    def quit(self) -> None:
        """Stop the browser and chromedriver, and remove the profile."""
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def waiter(self) -> Any:
        """
        A WebDriverWait of :data:`WAIT`: the page redraws tables when the
        node's answers change, so an element found a moment ago may be
        gone, and every step retries until then.
        """
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(
            self.driver, WAIT, poll_frequency=0.1,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )  # fmt: skip

    def settle(self, check: Callable[[], str | None], what: str) -> None:
        """
        Wait until C{check} finds nothing wrong (returns ``None``); on
        timeout fail with what it found wrong last.
        """
        from selenium.common.exceptions import TimeoutException

        last: list[str | None] = ["never checked"]

        def attempt(_: Any) -> bool:
            last[0] = check()
            return last[0] is None

        try:
            self.waiter().until(attempt)
        except TimeoutException:
            raise AssertionError(f"{what}: {last[0]}") from None

    def script_errors(self) -> list[str]:
        """Severe console messages other than failed loads (the 400s we provoke)."""
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
        ]


#: What the page shows, read in one go (a redraw between reads cannot split it).
READ_PAGE = """
const text = (node) => (node ? node.textContent.trim() : null);
const one = (selector) => document.querySelector(selector);
const level = (side) => {
  const row = one("#" + side + " .level");
  if (!row) return null;
  const box = row.getBoundingClientRect();
  return {price: text(row.querySelector("button.price")),
          amount: text(row.querySelector(".amount")),
          total: text(row.querySelector(".total")), top: box.top, bottom: box.bottom};
};
const spread = one("#spread-row").getBoundingClientRect();
return {
  loading: document.body.classList.contains("loading"),
  node_id: one("#node-id").dataset.full || null,
  peers: text(one("#peer-count")),
  best_bid: level("bids"),
  best_ask: level("asks"),
  spread_top: spread.top,
  spread_bottom: spread.bottom,
  mid: text(one("#mid-price")),
  spread: text(one("#spread")),
  last: text(one("#last-price")),
  tape: [...document.querySelectorAll("#trades tbody tr.trade")].map((row) => ({
    time: text(row.querySelector("td.time")),
    price: text(row.querySelector("td.price .v")),
    amount: text(row.querySelector("td.amount")),
    side: row.classList.contains("sell") ? "sell" : "buy",
    state: text(row.querySelector(".badge")),
  })),
  my_trades: document.querySelectorAll("#my-trades tbody tr.trade").length,
  peer_families: [...document.querySelectorAll("#peers tbody .fam")].map(text),
  reach: text(one("#reach")),
  connection: one("#connection").dataset.mode,
  connection_text: text(one("#connection-text")),
};
"""


def mismatch(shown: dict[str, Any], status: Any, book: Any, trades: list[Any]) -> str | None:
    """
    What the page shows that the node's ``/status``, ``/book`` and
    ``/trades`` do not say, or ``None`` if it shows just what they say.
    """
    peers = status["peers"]
    count = peers["inbound"] + peers["outbound"]
    if shown["peers"] != str(count):
        return f"peer count {shown['peers']!r}, /status says {count}"
    for side, key in (("bids", "best_bid"), ("asks", "best_ask")):
        level, levels = shown[key], book[side]
        if not levels:
            if level is not None:
                return f"{key} {level} shown, /book has no {side}"
            continue
        price, amount = Decimal(levels[0][0]), Decimal(levels[0][1])
        if level is None or (number(level["price"]), number(level["amount"])) != (price, amount):
            return f"{key} {level}, /book says {levels[0]}"
    got = [
        (number(row["price"]), number(row["amount"]), row["side"], row["state"])
        for row in shown["tape"][: len(trades)]
    ]
    expected = [(Decimal(t["price"]), Decimal(t["amount"]), t["side"], t["status"]) for t in trades]
    if got != expected:
        return f"tape {got}, /trades says {expected}"
    if trades and number(shown["last"]) != Decimal(trades[0]["price"]):
        return f"last price {shown['last']!r}, /trades says {trades[0]['price']}"
    return None


def trading_steps(url: str, node_id: str, reactor: Any, other: Node) -> dict[str, Any]:
    """
    In a thread: load the dashboard, trade through the form against the
    other node's book, and check what the page shows against the API;
    provoke plain-language errors, use the ladder, hover the depth chart,
    take the screenshots, and cancel the order left.

    :return: what the page showed, for the test to check in the reactor thread.
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select

    api = NodeApi(url)
    browser = Browser()
    try:
        driver = browser.driver
        wait = browser.waiter()

        def find(element_id: str) -> Any:
            return driver.find_element(By.ID, element_id)

        def text(element_id: str) -> str:
            return str(find(element_id).text)

        def read(selector: str) -> str:
            return str(wait.until(lambda _: driver.find_element(By.CSS_SELECTOR, selector).text))

        def click(selector: str) -> None:
            def attempt(_: Any) -> bool:
                driver.find_element(By.CSS_SELECTOR, selector).click()
                return True

            wait.until(attempt, f"could not click {selector}")

        def page() -> dict[str, Any]:
            shown: dict[str, Any] = driver.execute_script(READ_PAGE)
            return shown

        def place(side: str, price: str, amount: str) -> str:
            """Fill the form, submit, and return the page's answer (result or error)."""
            click(f'label[for="side-{side}"]')
            Select(find("order-type")).select_by_value("limit")
            for element_id, value in [("order-price", price), ("order-amount", amount)]:
                field = find(element_id)
                field.clear()
                field.send_keys(value)
            driver.execute_script("document.getElementById('order-result').textContent = ''")
            find("order-submit").click()
            return str(wait.until(
                lambda _: text("order-result") or text("order-error")
                or text("order-price-error") or text("order-amount-error"),
                "the form never answered",
            ))  # fmt: skip

        shown: dict[str, Any] = {}
        # While the node does not answer, the page says it is loading, and why it waits.
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/status"]})
        driver.get(url)
        wait.until(
            lambda _: find("banner").is_displayed(), "no banner while the node is unreachable"
        )
        shown["unreachable"] = {
            "loading": page()["loading"],
            "banner": text("banner"),
            "connection": page()["connection"],
            "bids": text("bids"),
            "tape": text("trades"),
        }
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        browser.settle(
            lambda: None if not page()["loading"] and page()["node_id"] == node_id
            else f"loading, node id {page()['node_id']!r}",
            "the page never loaded the node",
        )  # fmt: skip
        wait.until(lambda _: text("ordering") != "…", "the ordering never showed")
        shown.update(title=driver.title, network=text("network"))
        # One market: no selector.
        shown["picker_shown"] = find("market-picker").is_displayed()
        for element_id in ("ordering", "settled-point", "final-point", "witnesses-summary"):
            shown[element_id] = text(element_id)
        shown["witness_rows"] = read("#witnesses tbody")
        shown["state_hash"] = {
            "text": text("state-hash"),
            "title": find("state-hash").get_attribute("title"),
            "lines": driver.execute_script(
                "return document.getElementById('state-hash').getClientRects().length"
            ),
        }

        # A bid of ours, through the form.
        shown["placed"] = place("buy", PRICE, AMOUNT)
        book_row = f'#bids .level[data-price="{PRICE}"]'
        order_row = f'#open-orders tbody tr[data-price="{PRICE}"]'
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, book_row)),
                   "the order never reached the page's book")  # fmt: skip
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, order_row)),
                   "the order never reached the open orders")  # fmt: skip
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#depth-chart path.depth.bid")),
                   "the depth chart never drew the bids")  # fmt: skip
        shown["order_row"] = read(order_row)

        # Two trades: we take the other node's best ask, then it sells into our bid.
        shown["taken"] = place("buy", "125.00", "0.2")

        def sell_into_our_bid() -> Deferred[dict[str, Any]]:
            return other.control.submit_order("sell", PRICE, "0.2", "limit")

        call: Callable[[], Any] | Callable[[], Deferred[Any]] = sell_into_our_bid
        blockingCallFromThread(reactor, call)
        trades = len(EARLIER_TRADES) + 2
        browser.settle(lambda: None if len(page()["tape"]) >= trades else "trades missing",
                       "the trades never reached the tape")  # fmt: skip

        def against_api() -> str | None:
            status, book = api.get("status"), api.get("book?depth=20")
            trades = api.get("trades?limit=10")["trades"]
            found = mismatch(page(), status, book, trades)
            if found is None:
                shown.update(page=page(), api={"status": status, "book": book, "trades": trades})
            return found

        browser.settle(against_api, "the page never showed what the API says")
        browser.settle(lambda: None if page()["my_trades"] >= trades else "own trades missing",
                       "the page never listed our trades")  # fmt: skip
        shown["my_trades"] = read("#my-trades tbody")

        # The ladder: click the second ask to buy at its price.
        click("#asks .level:nth-child(2)")
        shown["ladder_click"] = {
            "price": find("order-price").get_attribute("value"),
            "buy": find("side-buy").is_selected(),
            "level": api.get("book?depth=20")["asks"][1][0],
        }

        # Plain-language errors, with the field highlighted.
        place("buy", PRICE, "0.5x")
        shown["bad_amount"] = {
            "text": text("order-amount-error"),
            "amount_invalid": find("order-amount").get_attribute("aria-invalid"),
            "price_invalid": find("order-price").get_attribute("aria-invalid"),
            "general": text("order-error"),
        }
        place("buy", "123.456", AMOUNT)
        shown["bad_price"] = {
            "text": text("order-price-error"),
            "price_invalid": find("order-price").get_attribute("aria-invalid"),
            "amount_invalid": find("order-amount").get_attribute("aria-invalid"),
        }

        # Typing clears the error; then a hover read-out over the bids, and the screenshots.
        for element_id, value in [("order-price", PRICE), ("order-amount", "0.25")]:
            find(element_id).clear()
            find(element_id).send_keys(value)
        shown["after_typing"] = find("order-price").get_attribute("aria-invalid")
        chart = find("depth-chart")
        width = chart.size["width"]
        ActionChains(driver).move_to_element_with_offset(chart, -width // 5, 0).perform()
        shown["readout"] = str(wait.until(
            lambda _: find("depth-readout").is_displayed() and text("depth-readout"),
            "no read-out over the depth chart",
        ))  # fmt: skip
        directory = artifact_dir()
        wide = directory / "dashboard.png"
        assert driver.save_screenshot(str(wide)), "no screenshot"
        driver.set_window_size(*NARROW)
        browser.settle(
            lambda: None if driver.execute_script(
                "return document.getElementById('depth-chart').viewBox.baseVal.width"
            ) <= NARROW[0] else "the chart is still wide",
            "the chart never fitted the narrow window",
        )  # fmt: skip
        shown["narrow_overflow"] = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        narrow = directory / "dashboard-narrow.png"
        assert driver.save_screenshot(str(narrow)), "no narrow screenshot"
        driver.set_window_size(*WIDE)
        shown["screenshots"] = [str(wide), str(narrow)]

        # Cancel what is left of our bid.
        click(f"{order_row} button.cancel")
        wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, order_row)),
                   "the cancelled order stayed among the open orders")  # fmt: skip
        wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, book_row)),
                   "the cancelled order stayed in the page's book")  # fmt: skip
        shown["script_errors"] = browser.script_errors()
        return shown
    finally:
        browser.quit()


class RecordingRoot(Resource):
    """The site's root in front of C{inner}, noting every request's URI."""

    def __init__(self, inner: IResource) -> None:
        super().__init__()
        self.inner = inner
        self.uris: list[bytes] = []

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        self.uris.append(request.uri)
        child: IResource = self.inner.getChildWithDefault(path, request)
        return child

    def render(self, request: Request) -> bytes | int:
        self.uris.append(request.uri)
        answer: bytes | int = self.inner.render(request)
        return answer


def stream_tickets(uris: list[bytes], path: str = "/stream") -> list[list[str]]:
    """The ``ticket`` values of each ``GET`` of stream C{path} among C{uris}, in order."""
    found = []
    for uri in uris:
        parts = urlsplit(uri.decode("ascii", "replace"))
        if parts.path.rstrip("/") == path:
            found.append(parse_qs(parts.query).get("ticket", []))
    return found


def token_steps(
    url: str, node_id: str, reactor: Any, feed: Any, root: RecordingRoot
) -> dict[str, Any]:
    """
    In a thread: load the dashboard of a node with an API token, give the
    token in the page's form, and watch the live stream come up with a
    ticket, drop, and come back with a fresh one.

    :return: what the page showed.
    """
    from selenium.webdriver.common.by import By

    browser = Browser()
    try:
        driver = browser.driver
        wait = browser.waiter()

        def find(element_id: str) -> Any:
            return driver.find_element(By.ID, element_id)

        def mode() -> str:
            return str(find("connection").get_attribute("data-mode"))

        driver.get(url)
        wait.until(lambda _: find("token-form").is_displayed(), "the page never asked for a token")
        shown: dict[str, Any] = {"asked": find("token-reason").text}
        find("token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, '#token-form button[type="submit"]').click()
        wait.until(lambda _: find("node-id").get_attribute("title") == node_id,
                   "the page never showed the node with the token")  # fmt: skip
        shown["form_hidden"] = not find("token-form").is_displayed()
        wait.until(lambda _: mode() == "live", "the stream never went live with a ticket")
        # The stream drops: the page must come back with a fresh ticket.
        blockingCallFromThread(reactor, feed.close_all)
        wait.until(lambda _: len(stream_tickets(root.uris)) >= 2 and mode() == "live",
                   "the stream never came back after a drop")  # fmt: skip
        shown.update(mode=mode(), script_errors=browser.script_errors())
        return shown
    finally:
        browser.quit()


#: the sync block of a node a tenth of the way through a join (``GET /status``)
SYNCING = {"state": "syncing", "events": 10_000, "known": 100_000, "behind": 90_000,
           "rate": 15_000.0, "eta_ms": 6_000}  # fmt: skip


def sync_steps(url: str, progress: list[dict[str, Any]]) -> dict[str, Any]:
    """
    In a thread: load the dashboard of a node that says it is syncing, and
    read its sync chip and bars; then let the node say it is synced.

    :param progress: the node's sync block, which this changes.
    :return: what the page showed, syncing and synced.
    """
    from selenium.webdriver.common.by import By

    browser = Browser()
    try:
        driver = browser.driver
        wait = browser.waiter()

        def read() -> dict[str, Any]:
            bars = {
                name: driver.execute_script(
                    "const bar = document.getElementById(arguments[0]);"
                    "return {hidden: bar.hidden, visible: bar.offsetWidth > 0, value: bar.value};",
                    name,
                )
                for name in ("sync-bar", "sync-bar-node")
            }
            chip = driver.find_element(By.ID, "sync-chip")
            return {"chip": chip.text, "state": chip.get_attribute("data-state"),
                    "node": driver.find_element(By.ID, "sync").text, "bars": bars}  # fmt: skip

        driver.get(url)
        wait.until(lambda _: read()["state"] == "busy", "the page never showed the sync")
        shown: dict[str, Any] = {"syncing": read()}
        progress[0] = {**SYNCING, "state": "synced", "events": 100_000, "behind": 0,
                       "eta_ms": None}  # fmt: skip
        wait.until(lambda _: read()["state"] == "ok", "the page never showed the node synced")
        shown.update(synced=read(), script_errors=browser.script_errors())
        return shown
    finally:
        browser.quit()


def fair_steps(url: str, witness_id: str, price: str) -> dict[str, Any]:
    """
    In a thread: load the dashboard of a witness (of a network of one), sell
    through the form into a buy of another node, and watch the trade go final.

    :return: what the page showed.
    """
    from selenium.webdriver.common.by import By

    browser = Browser()
    try:
        driver = browser.driver
        wait = browser.waiter()

        def text(selector: str) -> str:
            return str(driver.find_element(By.CSS_SELECTOR, selector).text)

        driver.get(url)
        wait.until(lambda _: text("#ordering") != "…", "the ordering never showed")
        driver.find_element(By.CSS_SELECTOR, 'label[for="side-sell"]').click()
        for element_id, value in [("order-price", price), ("order-amount", AMOUNT)]:
            driver.find_element(By.ID, element_id).send_keys(value)
        driver.find_element(By.ID, "order-submit").click()
        badge = "#trades tbody tr.trade.final .badge.final"
        wait.until(lambda _: text(badge) != "", "the trade was never shown final")
        witness_row = f'#witnesses tbody tr[data-id="{witness_id}"]'
        wait.until(lambda _: "(this node)" in text(witness_row), "the witness row never showed")
        # The points come from GET /status, polled (every 10 s once the stream is live).
        wait.until(lambda _: "(2 events)" in text("#final-point"), "the final point never moved")
        return {
            "badge": text(badge),
            "badge_title": driver.find_element(By.CSS_SELECTOR, badge).get_attribute("title"),
            "trade_row": text("#trades tbody tr.trade.final"),
            "my_trade": text("#my-trades tbody tr.trade.final"),
            "ordering": text("#ordering"),
            "ordering_kind": driver.find_element(By.CSS_SELECTOR, "#ordering .badge").get_attribute(
                "class"
            ),
            "settled": text("#settled-point"),
            "final": text("#final-point"),
            "summary": text("#witnesses-summary"),
            "witness_row": text(witness_row),
            "script_errors": browser.script_errors(),
        }
    finally:
        browser.quit()


#: What the page shows of the market it shows, read in one go.
READ_MARKET = """
const text = (node) => (node ? node.textContent.trim() : null);
const all = (selector) => [...document.querySelectorAll(selector)];
const select = document.getElementById("market");
const price = document.getElementById("order-price");
return {
  loading: document.body.classList.contains("loading"),
  hash: location.hash,
  options: [...select.options].map((option) => option.value),
  selected: select.value,
  picker_shown: select.getClientRects().length > 0,
  label: text(document.querySelector('label[for="market"]')),
  pair: text(document.getElementById("pair")),
  title: document.title,
  network: text(document.getElementById("network")),
  bases: [...new Set(all('[data-unit="base"]').map(text))],
  quotes: [...new Set(all('[data-unit="quote"]').map(text))],
  submit: text(document.getElementById("order-submit")),
  bids: all("#bids .level").map((row) => row.dataset.price),
  asks: all("#asks .level").map((row) => row.dataset.price),
  tape: all("#trades tbody tr.trade td.price .v").map(text),
  open_orders: all("#open-orders tbody tr[data-id]").map((row) => row.dataset.price),
  price: price.value,
  placeholder: price.placeholder,
  depth: all("#depth-chart path.depth").map((path) => path.getAttribute("class")),
  connection: document.getElementById("connection").dataset.mode,
  banner: document.getElementById("banner").hidden ? "" : text(document.getElementById("banner")),
};
"""


def prices(texts: list[str]) -> list[Decimal | None]:
    """Prices as the page holds them (``data-price``, or shown), as Decimals."""
    return [number(t) for t in texts]


def market_steps(url: str) -> dict[str, Any]:
    """
    In a thread: load the dashboard of a node of two markets (and an API
    token), switch from the first (BTC/USD) to ETH/USD with the selector,
    place a bid through the form, reload, switch back through the hash,
    and load a hash naming a market the node does not carry.

    :return: what the page showed at each step, and the node's books after the bid.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    api = NodeApi(url, TOKEN)
    browser = Browser()
    try:
        driver = browser.driver

        def find(element_id: str) -> Any:
            return driver.find_element(By.ID, element_id)

        def read() -> dict[str, Any]:
            shown: dict[str, Any] = driver.execute_script(READ_MARKET)
            return shown

        def showing(market: str, **extra: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
            """Wait until the page shows C{market}'s book, tape and stream; return what it shows."""
            book = MARKET_BOOKS[market]
            resting_price = Decimal(book["resting"][1])
            trade_price = Decimal(book["trade"][1])

            def check() -> str | None:
                shown = read()
                side = "bids" if book["resting"][0] == "buy" else "asks"
                if shown["loading"] or shown["selected"] != market:
                    return f"loading {shown['loading']}, market {shown['selected']!r}"
                if resting_price not in prices(shown[side]) or trade_price not in prices(
                    shown["tape"]
                ):
                    return f"{shown['bids']} / {shown['asks']} / {shown['tape']}: not {market}'s"
                if shown["connection"] != "live":
                    return f"connection {shown['connection']}"
                for what, test in extra.items():
                    if not test(shown):
                        return f"not {what}: {shown}"
                return None

            browser.settle(check, f"the page never showed {market}")
            return read()

        driver.get(url)
        browser.waiter().until(lambda _: find("token-form").is_displayed(), "no token asked")
        find("token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, '#token-form button[type="submit"]').click()
        shown: dict[str, Any] = {"first": showing(BTC)}

        # A price typed for BTC/USD must not stay in the form of ETH/USD.
        find("order-price").send_keys("99")
        Select(find("market")).select_by_value(ETH)
        shown["switched"] = showing(ETH, hash=lambda page: page["hash"] == "#ETH-USD")

        # A bid through the form: it must land in ETH/USD's book.
        driver.find_element(By.CSS_SELECTOR, 'label[for="side-buy"]').click()
        Select(find("order-type")).select_by_value("limit")
        for element_id, value in zip(("order-price", "order-amount"), ETH_BID, strict=True):
            find(element_id).send_keys(value)
        find("order-submit").click()
        bid = Decimal(ETH_BID[0])
        browser.settle(
            lambda: None if bid in prices(read()["bids"]) and bid in prices(read()["open_orders"])
            else f"bids {read()['bids']}, open orders {read()['open_orders']}",
            "the bid never reached the page's ETH/USD book",
        )  # fmt: skip
        shown["placed"] = find("order-result").text
        shown["books"] = {
            "eth": api.get("markets/ETH-USD/book?depth=20"),
            "btc": api.get("markets/BTC-USD/book?depth=20"),
            "first": api.get("book?depth=20"),
        }
        screenshot = artifact_dir() / "dashboard-markets.png"
        assert driver.save_screenshot(str(screenshot)), "no markets screenshot"
        shown["screenshot"] = str(screenshot)

        # The hash keeps the market across a reload.
        driver.refresh()
        shown["reloaded"] = showing(ETH, bid=lambda page: bid in prices(page["bids"]))

        # The hash changed by hand (or back and forward) switches too, any case.
        driver.execute_script("location.hash = '#btc-usd'")
        shown["by_hash"] = showing(BTC, no_bid=lambda page: bid not in prices(page["bids"]))

        # A market the node does not carry: the first, once, and the hash dropped.
        driver.get("about:blank")
        driver.get(url + "#DOGE-USD")
        shown["unknown"] = showing(BTC, hash=lambda page: page["hash"] == "")
        shown["script_errors"] = browser.script_errors()
        return shown
    finally:
        browser.quit()


class BrowserTests(ClusterTestCase):
    """The dashboard in a real browser, against real nodes."""

    timeout = 180

    skip = _missing()

    def serve(self, resource: IResource) -> str:
        """Serve C{resource} as a site on a loopback port; return its URL."""
        site = ApiSite(resource, reactor=self.reactor)
        # Track the browser's connections, to close any it leaves open.
        factory = WrappingFactory(site)
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.close_connections, port, factory)
        return f"http://127.0.0.1:{port.getHost().port}/"

    def serve_node(self, node: Node) -> str:
        """Serve C{node}'s dashboard and API on a loopback port; return its URL."""
        return self.serve(with_dashboard(api_root(node.control)))

    def close_connections(self, port: Any, factory: WrappingFactory) -> Deferred[float]:
        port.stopListening()
        for protocol in list(factory.protocols):
            protocol.transport.abortConnection()
        return poll_until(
            self.reactor,
            lambda: not factory.protocols,
            HANG_GUARD,
            "browser connections closed",
        )

    async def linked_pair(self) -> tuple[Node, Node]:
        """Two linked nodes: the first, whose dashboard we use, and the other, with a book."""
        node = self.cluster.start_node(api_enabled=False)
        other = self.cluster.start_node(bootstrap_to=[node], api_enabled=False)
        node_id = other.storage.identity.node_id
        await poll_until(self.reactor, lambda: node_id in node.peers.hub.links,
                         HANG_GUARD, "the link between the nodes")  # fmt: skip
        for side, price, amount in EARLIER_TRADES:
            held = ledger_holds(node, len(node.market.ledger) + 1)
            await other.control.submit_order(side, price, amount, "limit")
            await poll_until(self.reactor, held, HANG_GUARD, "the other node's order at the first")
            taker = "buy" if side == "sell" else "sell"
            await node.control.submit_order(taker, price, amount, "ioc")
        for side, price, amount in OTHER_ORDERS:
            await other.control.submit_order(side, price, amount, "limit")
        events = len(OTHER_ORDERS) + 2 * len(EARLIER_TRADES)
        await poll_until(self.reactor, ledger_holds(node, events), HANG_GUARD,
                         "the other node's orders at the first")  # fmt: skip
        return node, other

    async def test_trading_view(self) -> None:
        """
        The trading view shows what the API says (peers, best bid and ask,
        trades, last price), trades through the form, explains refusals in
        plain words at the field, fills the form from the ladder, and is
        kept as a screenshot.
        """
        node, other = await self.linked_pair()
        url = self.serve_node(node)
        node_id = node.storage.identity.node_id
        shown = await deferToThread(trading_steps, url, node_id, self.reactor, other)
        for path in shown["screenshots"]:
            print(f"\ndashboard screenshot: {path}")
            self.assertGreater(Path(path).stat().st_size, 10_000)

        # A loading state until the node answers, not a blank page; then it recovers.
        unreachable = shown["unreachable"]
        self.assertTrue(unreachable["loading"])
        self.assertEqual(unreachable["connection"], "down")
        self.assertIn("Cannot reach this node's API", unreachable["banner"])
        self.assertEqual(unreachable["bids"], "Loading the book…")
        self.assertIn("Loading trades…", unreachable["tape"])
        self.assertIn("BTC/USD", shown["network"])
        self.assertIn("BTC/USD", shown["title"])
        self.assertFalse(shown["picker_shown"])
        # A network without witnesses: author clocks, and never final.
        self.assertEqual(shown["ordering"], "author clocks")
        self.assertRegex(shown["settled-point"], r"^(not yet|through \d\d:\d\d:\d\d\.\d{3})$")
        self.assertEqual(shown["final-point"], "never (no witnesses)")
        self.assertIn("names no witnesses", shown["witnesses-summary"])
        self.assertEqual(shown["witness_rows"], "no witnesses")
        # The state hash: shortened on one line, the whole of it in the title.
        state_hash = shown["state_hash"]
        self.assertRegex(state_hash["title"], r"^[0-9a-f]{64}$")
        self.assertIn("…", state_hash["text"])
        self.assertTrue(state_hash["title"].startswith(state_hash["text"].split("…")[0]))
        self.assertEqual(state_hash["lines"], 1, "the state hash wraps")

        self.assertIn(": open", shown["placed"])
        self.assertIn(": filled", shown["taken"])
        self.assertIn(PRICE, shown["order_row"])

        # The numbers shown are the API's.
        page, api = shown["page"], shown["api"]
        self.assertIsNone(mismatch(page, api["status"], api["book"], api["trades"]))
        self.assertEqual(page["peers"], "1")
        self.assertEqual(page["peer_families"], ["IPv4"])
        self.assertRegex(page["reach"], r"^(yes, at 127\.0\.0\.1:\d+|not known yet)")
        self.assertEqual(number(page["best_bid"]["price"]), Decimal(PRICE))
        self.assertEqual(number(page["best_ask"]["price"]), Decimal("125.50"))
        self.assertEqual(number(page["mid"]), Decimal("124.475"))
        self.assertEqual(number(page["spread"]), Decimal("2.05"))
        tape = page["tape"]
        self.assertEqual(len(tape), 2 + len(EARLIER_TRADES))
        self.assertEqual([(row["side"], number(row["price"])) for row in tape[:2]],
                         [("sell", Decimal(PRICE)), ("buy", Decimal("125.00"))])  # fmt: skip
        for row in tape:
            self.assertRegex(row["time"], r"^\d\d:\d\d:\d\d$")
            self.assertIn(row["state"], ("tentative", "settled"))
        self.assertEqual(number(page["last"]), Decimal(PRICE))
        self.assertIn("maker", shown["my_trades"])
        self.assertIn("taker", shown["my_trades"])
        # One ladder: asks above the spread row, bids below it.
        self.assertLessEqual(page["best_ask"]["bottom"], page["spread_top"])
        self.assertLessEqual(page["spread_bottom"], page["best_bid"]["top"])
        self.assertEqual(page["connection"], "live")

        click = shown["ladder_click"]
        self.assertEqual(click["price"], click["level"])
        self.assertTrue(click["buy"])

        # Refusals in plain words, at the field, never as a code.
        bad = shown["bad_amount"]
        self.assertEqual(bad["amount_invalid"], "true")
        self.assertIsNone(bad["price_invalid"])
        self.assertRegex(bad["text"], r"^The amount must be a number such as 0\.25\b")
        self.assertNotIn("_", bad["text"] + bad["general"])
        bad = shown["bad_price"]
        self.assertEqual(bad["price_invalid"], "true")
        self.assertIsNone(bad["amount_invalid"])
        self.assertEqual(bad["text"], "Prices go in steps of 0.01: try 123.45 or 123.46.")
        self.assertIsNone(shown["after_typing"])
        self.assertRegex(shown["readout"], r"Bids at [\d.,]+ or more")
        self.assertIn("Amount", shown["readout"])
        self.assertEqual(shown["narrow_overflow"], 0, "the narrow page scrolls sideways")
        self.assertEqual(shown["script_errors"], [])

        # The node holds exactly the decimal strings typed into the form.
        orders = node.control.orders("all", 10)
        [bid] = [o for o in orders if o["price"] == PRICE]
        self.assertEqual((bid["side"], bid["amount"], bid["status"]), ("buy", AMOUNT, "cancelled"))

    async def two_market_pair(self) -> tuple[Node, Node]:
        """
        Two linked nodes of BTC/USD and ETH/USD: the first, whose dashboard
        we use, and the other, with a trade and a resting order in each market.
        """
        node = self.cluster.start_node(markets=(BTC, ETH), api_enabled=False)
        other = self.cluster.start_node(markets=(BTC, ETH), bootstrap_to=[node],
                                        api_enabled=False)  # fmt: skip
        node_id = other.storage.identity.node_id
        await poll_until(self.reactor, lambda: node_id in node.peers.hub.links,
                         HANG_GUARD, "the link between the nodes")  # fmt: skip
        for market, book in MARKET_BOOKS.items():
            side, price, amount = book["trade"]
            await other.control.market(market).submit_order(side, price, amount, "limit")
            await poll_until(self.reactor, ledger_holds(node, 1, market), HANG_GUARD,
                             f"the other node's {market} order at the first")  # fmt: skip
            taker = "buy" if side == "sell" else "sell"
            await node.control.market(market).submit_order(taker, price, amount, "ioc")
            await other.control.market(market).submit_order(*book["resting"], "limit")
            await poll_until(self.reactor, ledger_holds(node, 3, market), HANG_GUARD,
                             f"the other node's {market} book at the first")  # fmt: skip
        return node, other

    async def test_market_selector(self) -> None:
        """
        A node of two markets: the selector lists both; choosing ETH/USD
        moves the book, tape, depth chart, units and order form to it and
        streams it; an order placed through the form lands in ETH/USD's
        book only; a reload keeps the market (the hash), the hash switches
        it, and a market the node does not carry falls back to the first.
        """
        node, _ = await self.two_market_pair()
        recording = RecordingRoot(with_dashboard(api_root(node.control, token=TOKEN)))
        shown = await deferToThread(market_steps, self.serve(recording))
        print(f"\ndashboard screenshot: {shown['screenshot']}")
        self.assertGreater(Path(shown["screenshot"]).stat().st_size, 10_000)

        first = shown["first"]
        self.assertEqual(first["options"], [BTC, ETH])
        self.assertTrue(first["picker_shown"])
        self.assertEqual(first["label"], "Market")
        self.assertEqual((first["pair"], first["hash"]), (BTC, ""))
        self.assertEqual((first["bases"], first["quotes"]), (["BTC"], ["USD"]))
        self.assertEqual(first["depth"], ["depth bid"])

        switched = shown["switched"]
        self.assertEqual((switched["pair"], switched["selected"]), (ETH, ETH))
        self.assertIn(ETH, switched["title"])
        self.assertIn(f"/ {ETH} (one of 2 markets)", switched["network"])
        self.assertEqual((switched["bases"], switched["quotes"]), (["ETH"], ["USD"]))
        self.assertEqual(switched["submit"], "Buy ETH")
        # The book, tape and depth chart are ETH/USD's alone; the form forgot the BTC price.
        self.assertEqual(prices(switched["asks"]), [Decimal("2050.50")])
        self.assertEqual((switched["bids"], switched["depth"]), ([], ["depth ask"]))
        self.assertEqual(prices(switched["tape"]), [Decimal("2010.00")])
        self.assertEqual(switched["price"], "")
        self.assertEqual(number(switched["placeholder"]), Decimal("2010.00"))

        self.assertIn(": open", shown["placed"])
        self.assertIn("ETH", shown["placed"])
        books = shown["books"]
        bid = Decimal(ETH_BID[0])
        self.assertIn(bid, [Decimal(level[0]) for level in books["eth"]["bids"]])
        for name in ("btc", "first"):
            self.assertNotIn(bid, [Decimal(level[0]) for level in books[name]["bids"]], name)
        self.assertEqual(books["btc"], books["first"])
        [order] = [o for o in node.control.market(ETH).orders("open", 10) if o["side"] == "buy"]
        self.assertEqual((order["price"], order["amount"]), ETH_BID)
        self.assertEqual(node.control.market(BTC).orders("open", 10), [])

        reloaded = shown["reloaded"]
        self.assertEqual((reloaded["hash"], reloaded["pair"]), ("#ETH-USD", ETH))
        self.assertEqual(reloaded["bases"], ["ETH"])
        self.assertEqual((shown["by_hash"]["pair"], shown["by_hash"]["bases"]), (BTC, ["BTC"]))
        unknown = shown["unknown"]
        self.assertEqual((unknown["selected"], unknown["pair"], unknown["banner"]), (BTC, BTC, ""))
        self.assertEqual(shown["script_errors"], [])

        # ETH/USD streamed from its own path, each stream with a fresh ticket, never the token.
        btc_streams = stream_tickets(recording.uris)
        eth_streams = stream_tickets(recording.uris, "/markets/ETH-USD/stream")
        self.assertGreaterEqual(len(btc_streams), 3)  # at load, by hash, after a bad hash
        self.assertGreaterEqual(len(eth_streams), 2)  # chosen, and after the reload
        streams = btc_streams + eth_streams
        used = [tickets[0] for tickets in streams if len(tickets) == 1]
        self.assertEqual(len(used), len(streams))
        self.assertEqual(len(used), len(set(used)))
        for uri in recording.uris:
            self.assertNotIn(TOKEN.encode(), uri)
            self.assertNotIn(b"/markets/DOGE-USD", uri)

    async def test_token_and_ticket(self) -> None:
        """
        With an API token, the page asks for it, then streams through
        single-use tickets (a fresh one after a drop); no request URL ever
        carries the token.
        """
        node = self.cluster.start_node(api_enabled=False)
        root = api_root(node.control, token=TOKEN)
        recording = RecordingRoot(with_dashboard(root))
        url = self.serve(recording)
        node_id = node.storage.identity.node_id
        shown = await deferToThread(token_steps, url, node_id, self.reactor, root.feed, recording)
        self.assertIn("needs a token", shown["asked"])
        self.assertTrue(shown["form_hidden"])
        self.assertEqual(shown["script_errors"], [])
        for uri in recording.uris:
            self.assertNotIn(TOKEN.encode(), uri)
            self.assertNotIn(quote(TOKEN).encode(), uri)
            self.assertNotIn(b"token=", uri)
        streams = stream_tickets(recording.uris)
        self.assertEqual(shown["mode"], "live")
        self.assertGreaterEqual(len(streams), 2)
        # Every stream request carries one ticket, and no ticket serves twice.
        self.assertTrue(all(len(tickets) == 1 for tickets in streams), streams)
        used = [tickets[0] for tickets in streams]
        self.assertEqual(len(used), len(set(used)))

    async def test_sync_progress(self) -> None:
        """A node catching up shows how far it is, as a share and a bar; synced, no bar."""
        node = self.cluster.start_node(api_enabled=False)
        assert node.gossip is not None
        progress = [dict(SYNCING)]
        node.gossip.progress = lambda: progress[0]  # type: ignore[method-assign]
        shown = await deferToThread(sync_steps, self.serve_node(node), progress)
        syncing, synced = shown["syncing"], shown["synced"]
        self.assertEqual(syncing["chip"], "syncing 10 %, 90,000 events behind")
        self.assertIn("10,000 of 100,000 known events held, 90,000 behind", syncing["node"])
        self.assertIn("about 6 s left", syncing["node"])
        for bar in syncing["bars"].values():
            self.assertEqual(bar, {"hidden": False, "visible": True, "value": 0.1})
        self.assertEqual(synced["chip"], "synced")
        for bar in synced["bars"].values():
            self.assertEqual((bar["hidden"], bar["visible"]), (True, False))
        self.assertEqual(shown["script_errors"], [])

    async def test_fair_order(self) -> None:
        """
        On a network with a witness, the page says so, lists the witness
        (this node), and shows a trade's badge go final.
        """
        [address] = self.cluster.witness_addresses(1)
        witness = self.cluster.start_node(port=address.port, witnesses=(address,),
                                          api_enabled=False)  # fmt: skip
        plain = self.cluster.start_node(witnesses=(address,), api_enabled=False)
        await poll_until(self.reactor, lambda: address.node_id in plain.peers.hub.links,
                         HANG_GUARD, "the link to the witness")  # fmt: skip
        await plain.control.submit_order("buy", PRICE, AMOUNT, "limit")
        await poll_until(self.reactor, lambda: len(witness.market.ledger) == 1, HANG_GUARD,
                         "the buy at the witness")  # fmt: skip
        assert address.node_id is not None
        shown = await deferToThread(fair_steps, self.serve_node(witness), address.node_id, PRICE)
        self.assertEqual(shown["badge"], "final")
        self.assertIn("every witness", shown["badge_title"])
        self.assertIn(PRICE, shown["trade_row"])
        self.assertIn("taker", shown["my_trade"])
        self.assertEqual(shown["ordering"], "fair order, 1 witness")
        self.assertEqual(shown["ordering_kind"], "badge fair")
        self.assertRegex(shown["settled"], r"^through \d\d:\d\d:\d\d\.\d{3} \(2 events\)$")
        self.assertRegex(shown["final"], r"^through \d\d:\d\d:\d\d\.\d{3} \(2 events\)$")
        self.assertIn("n = 1, f = 0: a trade is settled once 1 of 1", shown["summary"])
        # The last stamp's age is measured against the page's clock: "just
        # now" when the stamp is younger than the page's last reading.
        self.assertRegex(shown["witness_row"], rf"^{address.node_id[:12]}… \(this node\) \d+ "
                         r"(\d+\.\d s ago|just now) — 0 ok$")  # fmt: skip
        self.assertEqual(shown["script_errors"], [])
        [trade] = plain.control.trades(1, 0)
        self.assertEqual(trade["status"], "final")
