"""
The dashboard end to end, in headless Chromium driven by selenium.

Data path: a real node (:class:`~bitfitech.testing.LocalCluster`) -> its
JSON API behind :class:`~bitfitech.api.dashboard.DashboardRoot` on a
loopback port -> Chromium running ``app.js`` -> the order form -> ``POST
/orders`` -> the node's book -> the page's book and open orders.

Selenium's calls block, so the browser steps run in a thread
(``deferToThread``) while the reactor serves the page and the API.  The
test is skipped, with the reason, where selenium, Chromium or chromedriver
is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory

from bitfitech.api.dashboard import with_dashboard
from bitfitech.api.resources import api_root
from bitfitech.api.site import ApiSite
from bitfitech.node import Node
from bitfitech.testing import HANG_GUARD, ClusterTestCase, poll_until

#: seconds the page may take to show a change (it polls every 2 s)
WAIT = 20.0

PRICE = "123.45"
AMOUNT = "0.5"


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
            "--window-size=1280,1000",
            f"--user-data-dir={self.profile}",
        ]:
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
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

    def script_errors(self) -> list[str]:
        """Severe console messages other than failed loads (the 400 we provoke, no /stream)."""
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
        ]


def browser_steps(url: str, node_id: str) -> dict[str, Any]:
    """
    In a thread: load the dashboard, place an order through the form, see it
    in the book and the open orders, provoke a 400, then cancel the order.

    :return: what the page showed, for the test to check in the reactor thread.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select

    browser = Browser()
    try:
        driver = browser.driver
        wait = browser.waiter()

        def text(element_id: str) -> str:
            return str(driver.find_element(By.ID, element_id).text)

        def read(selector: str) -> str:
            return str(wait.until(lambda _: driver.find_element(By.CSS_SELECTOR, selector).text))

        def click(selector: str) -> None:
            def attempt(_: Any) -> bool:
                driver.find_element(By.CSS_SELECTOR, selector).click()
                return True

            wait.until(attempt, f"could not click {selector}")

        driver.get(url)
        wait.until(
            lambda _: text("node-id") == node_id, "the status panel never showed the node id"
        )
        wait.until(lambda _: text("ordering") != "…", "the ordering never showed")
        shown: dict[str, Any] = {"title": driver.title, "network": text("network")}
        for element_id in ("ordering", "settled-point", "final-point", "witnesses-summary"):
            shown[element_id] = text(element_id)
        shown["witness_rows"] = read("#witnesses tbody")

        def place(side: str, price: str, amount: str) -> None:
            click(f'input[name="side"][value="{side}"]')
            Select(driver.find_element(By.ID, "order-type")).select_by_value("limit")
            for element_id, value in [("order-price", price), ("order-amount", amount)]:
                field = driver.find_element(By.ID, element_id)
                field.clear()
                field.send_keys(value)
            driver.find_element(By.ID, "order-submit").click()

        place("buy", PRICE, AMOUNT)
        book_row = f'#bids tbody tr[data-price="{PRICE}"]'
        order_row = f'#open-orders tbody tr[data-price="{PRICE}"]'
        wait.until(
            lambda _: "open" in text("order-result"),
            f"no confirmation of the order (error shown: {text('order-error')!r})",
        )
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, book_row)),
                   "the order never reached the page's book")  # fmt: skip
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, order_row)),
                   "the order never reached the open orders")  # fmt: skip
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#depth-chart path.depth.bid")),
                   "the depth chart never drew the bid")  # fmt: skip
        shown["book_row"] = read(book_row)
        shown["order_row"] = read(order_row)
        shown["connection"] = driver.find_element(By.ID, "connection").get_attribute("data-mode")

        # The API's reason for a 400 is what the user reads.
        place("sell", "123.456", AMOUNT)
        wait.until(lambda _: text("order-error") != "", "no error shown for a refused order")
        shown["error"] = text("order-error")

        click(f"{order_row} button.cancel")
        wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, order_row)),
                   "the cancelled order stayed among the open orders")  # fmt: skip
        wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, book_row)),
                   "the cancelled order stayed in the page's book")  # fmt: skip
        shown["script_errors"] = browser.script_errors()
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
        driver.find_element(By.CSS_SELECTOR, 'input[name="side"][value="sell"]').click()
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


class BrowserTests(ClusterTestCase):
    """The dashboard in a real browser, against a real node."""

    timeout = 120

    skip = _missing()

    def serve(self, node: Node) -> str:
        """Serve C{node}'s dashboard and API on a loopback port; return its URL."""
        site = ApiSite(with_dashboard(api_root(node.control)), reactor=self.reactor)
        # Track the browser's connections, to close any it leaves open.
        factory = WrappingFactory(site)
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.close_connections, port, factory)
        return f"http://127.0.0.1:{port.getHost().port}/"

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

    async def test_order_through_the_form(self) -> None:
        """An order placed in the form shows in the book and open orders, and cancels."""
        self.node: Node = self.cluster.start_node(api_enabled=False)
        self.url = self.serve(self.node)
        node_id = self.node.storage.identity.node_id
        shown = await deferToThread(browser_steps, self.url, node_id)
        self.assertIn("BTC/USD", shown["network"])
        # A network without witnesses: author clocks, and never final.
        self.assertEqual(shown["ordering"], "author clocks")
        self.assertEqual(shown["settled-point"], "through Lamport 0")
        self.assertEqual(shown["final-point"], "never (no witnesses)")
        self.assertIn("names no witnesses", shown["witnesses-summary"])
        self.assertEqual(shown["witness_rows"], "no witnesses")
        self.assertIn(PRICE, shown["book_row"])
        self.assertIn(PRICE, shown["order_row"])
        self.assertIn(shown["connection"], ("polling", "live"))
        self.assertIn("tick", shown["error"])
        self.assertEqual(shown["script_errors"], [])
        # The node holds exactly the decimal strings typed into the form.
        [order] = self.node.control.orders("all", 10)
        self.assertEqual((order["side"], order["price"], order["amount"]), ("buy", PRICE, AMOUNT))
        self.assertEqual(order["status"], "cancelled")
        self.assertEqual(self.node.control.book(20), {"bids": [], "asks": []})

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
        shown = await deferToThread(fair_steps, self.serve(witness), address.node_id, PRICE)
        self.assertEqual(shown["badge"], "final")
        self.assertIn("every witness", shown["badge_title"])
        self.assertIn(PRICE, shown["trade_row"])
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
