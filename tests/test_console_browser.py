"""
The dashboard in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) against a live server and client on
loopback, as production runs them.

The server runs on the trial reactor in this process; every Selenium call
blocks, so each runs in a thread (``deferToThread``) while the reactor keeps
serving the page and the tunnel.  Waits poll with deadlines (WebDriverWait).
Skipped only where selenium, chromium or chromedriver is missing.
"""

import os
import shutil
import subprocess
import sys

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectError
from twisted.internet.protocol import ClientFactory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.e2e import POLL, Backend, Echo, Running, free_port, in_thread, start_client, wait_for
from tests.test_e2e_policies import roundtrip_from
from tests.test_e2e_observe import Discard, PacedUpload
from tests.test_tap import _TWISTD

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
ADMIN_TOKEN = "dashboard-admin-token"
# Without the background-networking flags Chromium dials out to Google, and
# this closed network refuses it.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
WIDTH = 1320
WAIT = 30.0
OUTPUT_KEPT = 64 * 1024  # of a twistd child's output, for the failure message


MISSING = [name for name, there in (("selenium (pip)", webdriver), ("chromium", CHROMIUM),
                                     ("chromedriver (chromium-driver)", CHROMEDRIVER)) if not there]


class Page:
    """One Chromium showing the dashboard; every method blocks (call it in a thread)."""

    def __init__(self, profile_dir):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile_dir}")
        options.add_argument(f"--window-size={WIDTH},1000")
        service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
        self.driver = webdriver.Chrome(options=options, service=service)

    def quit(self):
        self.driver.quit()

    def wait(self, predicate, what, timeout=WAIT):
        """Poll ``predicate()`` until it is truthy; return that value, or fail naming ``what``."""
        return WebDriverWait(
            self.driver, timeout, poll_frequency=0.05,
            ignored_exceptions=(StaleElementReferenceException,),
        ).until(lambda driver: predicate(), message=f"timed out after {timeout}s waiting for {what}")

    def find(self, css):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def one(self, css):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def cell(self, table, key, column):
        """The text of a table's cell, or None while that row is not there."""
        cells = self.find(f'#{table} tr[data-key="{key}"] td[data-col="{column}"]')
        return cells[0].text if cells else None

    def wait_cell(self, table, key, column, check=lambda text: True, what=None):
        """Wait for the cell to be there with text that passes ``check``; return the text."""
        def ready():
            text = self.cell(table, key, column)
            return text if text is not None and check(text) else None
        return self.wait(ready, what or f"{table} row {key} column {column}")

    def wait_gone(self, table, key):
        self.wait(lambda: not self.find(f'#{table} tr[data-key="{key}"]'), f"{table} row {key} to go")

    def click(self, css):
        self.one(css).click()

    def fill(self, form, values):
        for name, value in values.items():
            field = self.one(f'{form} [name="{name}"]')
            field.clear()
            field.send_keys(str(value))

    def shown(self, css):
        return any(e.is_displayed() for e in self.find(css))

    def text(self, css):
        return self.one(css).text

    def screenshot(self, path):
        """Save the whole page as a PNG at ``path``, the pointer out of the way."""
        ActionChains(self.driver).move_to_element(self.one("h1")).perform()
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        metrics = {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        try:
            assert self.driver.save_screenshot(path), path
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _positive_speed(text):
    """Whether a speed cell such as "2.41 MiB/s" shows more than nothing."""
    number = text.split()[0]
    return number.replace(".", "", 1).isdigit() and float(number) > 0


class Idle(Protocol):
    """A user who connects and sends nothing: the channel stays open."""


class DashboardTests(TestCase):
    """The dashboard page, in Chromium, over a live server and client."""

    timeout = 120
    if MISSING:
        skip = f"the browser test needs {' and '.join(MISSING)}, missing here"

    @inlineCallbacks
    def open_page(self, url):
        """A fresh Chromium (its profile in this test's directory) showing ``url``."""
        profile = os.path.abspath(self.mktemp())
        os.makedirs(profile)
        page = yield in_thread(Page, profile)
        self.addCleanup(in_thread, page.quit)
        yield in_thread(page.driver.get, url)
        return page

    @inlineCallbacks
    def start(self, *extra):
        """A live server (with ``extra`` options), one linked client, and a page at its admin URL."""
        self.running = yield Running(self, self.mktemp(), extra=["--sample-interval", "0.5", *extra]).start()
        self.server = self.running.server
        start_client(self, self.server.client_port)
        yield wait_for(lambda: self.server.registry.clients, what="the client")
        self.page = yield self.open_page(self.running.admin + "/")

    def user(self, port, protocol):
        connector = reactor.connectTCP("127.0.0.1", port, ClientFactory.forProtocol(protocol))
        self.addCleanup(connector.disconnect)

    @inlineCallbacks
    def test_live_channel_closed_from_the_page(self):
        """A mapping made in the form carries users; the page shows their speeds, closes one, lists it in history."""
        yield self.start()
        page = self.page
        (client_id,) = self.server.registry.clients
        yield in_thread(page.wait_cell, "clients", client_id, "state", lambda text: "WORKING" in text)

        public = free_port()
        backend = Backend(Echo).listen(self)
        form = {"port": public, "mapper_ip": "127.0.0.1", "mapper_port": backend}
        yield in_thread(page.fill, "#map-form", form)
        yield in_thread(page.click, "#map-form button[type=submit]")
        target = yield in_thread(page.wait_cell, "mappings", public, "target")
        self.assertEqual(target, f"127.0.0.1:{backend}")
        self.assertEqual(self.server.registry.mappings[public].target_port, backend)

        self.user(public, PacedUpload)
        self.user(public, PacedUpload)
        yield wait_for(lambda: len(self.server.registry.channels) == 2, what="the users' channels")
        closed, kept = sorted(self.server.registry.channels)
        for channel_id in (closed, kept):
            for column in ("recv_speed", "send_speed"):  # up from the user, and echoed back
                yield in_thread(page.wait_cell, "channels", channel_id, column, _positive_speed,
                                f"a non-zero {column} on channel {channel_id}")

        yield in_thread(page.click, f'#channels tr[data-key="{closed}"] button[data-action="close"]')
        yield in_thread(page.wait_gone, "channels", closed)
        self.assertEqual(list(self.server.registry.channels), [kept])
        reason = yield in_thread(page.wait_cell, "channel-history", closed, "reason")
        self.assertEqual(reason, "closed by admin")

        # Some history on the client's sparkline makes a telling screenshot.
        yield in_thread(page.wait, lambda: int(page.one(
            f'#clients tr[data-key="{client_id}"] svg').get_attribute("data-samples") or 0) >= 12,
            "twelve sparkline samples")
        shot = os.path.join(os.path.abspath(self.mktemp()), "dashboard.png")
        os.makedirs(os.path.dirname(shot))
        yield in_thread(page.screenshot, shot)
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    @inlineCallbacks
    def test_close_several_and_delete_with_confirmation(self):
        """Ticked channels close at once; a taken port is refused in words; delete asks first."""
        yield self.start()
        page = self.page
        public = yield self.running.map(Backend(Discard).listen(self))
        self.user(public, Idle)
        self.user(public, Idle)
        yield wait_for(lambda: len(self.server.registry.channels) == 2, what="two channels")
        ids = sorted(self.server.registry.channels)
        for channel_id in ids:
            yield in_thread(page.wait_cell, "channels", channel_id, "state")
            yield in_thread(page.click, f'#channels tr[data-key="{channel_id}"] input[type=checkbox]')
        yield in_thread(page.wait, lambda: page.text("#close-selected") == "Close 2 selected", "the count")
        yield in_thread(page.click, "#close-selected")
        yield in_thread(page.wait, lambda: page.text("#channels-message") == "Closed 2 channels.", "the result")
        for channel_id in ids:
            yield in_thread(page.wait_cell, "channel-history", channel_id, "reason",
                            lambda text: text == "closed by admin")
        self.assertEqual(self.server.registry.channels, {})

        yield in_thread(page.fill, "#map-form", {"port": public, "mapper_ip": "127.0.0.1", "mapper_port": 1})
        yield in_thread(page.click, "#map-form button[type=submit]")
        message = yield in_thread(page.wait, lambda: page.text("#map-message"), "the refusal")
        self.assertEqual(message, f"Create port mapper failed,port:{public} already exists")

        row = f'#mappings tr[data-key="{public}"]'
        yield in_thread(page.click, f'{row} button[data-action="delete"]')
        self.assertIn(public, self.server.registry.mappings)  # only asked so far
        question = yield in_thread(page.text, f"{row} .confirm")
        self.assertIn(f"Stop listening on {public}", question)
        yield in_thread(page.click, f'{row} button[data-action="yes"]')
        yield in_thread(page.wait_gone, "mappings", public)
        self.assertNotIn(public, self.server.registry.mappings)

    @inlineCallbacks
    def test_history_pages_and_kick(self):
        """History filters and pages as the API does; a client kicked from the page shows in client history."""
        yield self.start()
        page = self.page
        public = yield self.running.map(Backend(Discard).listen(self))
        for _ in range(3):
            self.user(public, Idle)
        yield wait_for(lambda: len(self.server.registry.channels) == 3, what="three channels")
        newest, middle, oldest = sorted(self.server.registry.channels, reverse=True)
        for channel_id in (oldest, middle, newest):
            code, body = yield self.running.api("DELETE", "/channel", channel_id=str(channel_id))
            self.assertEqual(code, 200, body)

        def rows(table):
            return [row.get_attribute("data-key") for row in page.find(f"#{table} tr[data-key]")]

        def shows(table, keys):
            return lambda: rows(table) == [str(key) for key in keys]

        yield in_thread(page.wait, shows("channel-history", [newest, middle, oldest]), "three rows")
        yield in_thread(page.fill, "#history-form", {"port": public, "limit": 1})
        yield in_thread(page.click, "#history-form button")
        yield in_thread(page.wait, shows("channel-history", [newest]), "the first page")
        for channel_id in (middle, oldest):
            yield in_thread(page.click, "#older")
            yield in_thread(page.wait, shows("channel-history", [channel_id]), f"the page of {channel_id}")
        self.assertFalse((yield in_thread(page.one("#older").is_enabled)))
        yield in_thread(page.click, "#newer")
        yield in_thread(page.wait, shows("channel-history", [middle]), "the page before")

        (client_id,) = self.server.registry.clients
        yield in_thread(page.click, f'#clients tr[data-key="{client_id}"] button[data-action="kick"]')
        yield wait_for(lambda: client_id not in self.server.registry.clients, what="the kick")
        yield in_thread(page.click, '#history-panel [data-kind="client"]')
        reason = yield in_thread(page.wait_cell, "client-history", client_id, "reason")
        code, body = yield self.running.api("GET", "/client_history", client_id=str(client_id))
        self.assertEqual(reason, body["history"][0]["close_reason"])

    @inlineCallbacks
    def test_credential_issued_shown_once_and_revoked(self):
        """A credential issued in the form shows its token once; it links a client; revoking asks first, then drops it."""
        yield self.start()
        page = self.page
        yield in_thread(page.fill, "#credential-form", {"tag": "office", "name": "router-1"})
        yield in_thread(page.click, "#credential-form button[type=submit]")
        yield in_thread(page.wait, lambda: page.shown("#new-token"), "the new token")
        token = yield in_thread(lambda: page.one("#new-token-value").get_attribute("value"))
        self.assertTrue(token.startswith("pmc_"), token)
        self.assertEqual((yield in_thread(page.text, "#new-token-id")), "1")
        self.assertIn("shown this once", (yield in_thread(page.text, "#new-token")))
        self.assertEqual((yield in_thread(page.wait_cell, "credentials", 1, "used")), "never")

        start_client(self, self.server.client_port, "--tag", "office", token=token)
        clients = self.server.registry.clients
        yield wait_for(lambda: len(clients) == 2, what="the client with the credential")
        [linked] = [c.client_id for c in clients.values() if c.credential_id == 1]
        yield in_thread(page.wait_cell, "credentials", 1, "clients", lambda text: text == str(linked))
        yield in_thread(page.wait_cell, "clients", linked, "credential", lambda text: text == "1")

        yield in_thread(page.click, "#new-token-done")
        self.assertFalse((yield in_thread(page.shown, "#new-token")))
        value = yield in_thread(lambda: page.one("#new-token-value").get_attribute("value"))
        self.assertEqual(value, "")  # the page holds the token no longer
        self.assertNotIn(token, (yield in_thread(page.text, "#credentials-panel")))

        row = '#credentials tr[data-key="1"]'
        yield in_thread(page.click, f'{row} button[data-action="revoke"]')
        self.assertIn(linked, clients)  # only asked so far
        self.assertIn("Revoke credential 1", (yield in_thread(page.text, f"{row} .confirm")))
        yield in_thread(page.click, f'{row} button[data-action="yes"]')
        yield in_thread(page.wait_gone, "credentials", 1)
        yield wait_for(lambda: linked not in clients, what="the client to be dropped")
        self.assertEqual(len(clients), 1)  # the shared token's client stays

    @inlineCallbacks
    def test_policies_shown_refusals_counted_and_patched(self):
        """A mapping's policies read in words with its refused users counted; the edit form PATCHes them live."""
        yield self.start()
        page = self.page
        public = free_port()
        code, body = yield self.running.api(
            "POST", "/port_mapper", port=str(public), mapper_ip="127.0.0.1",
            mapper_port=str(Backend(Echo).listen(self)), allow="127.0.0.5/32", proxy_protocol="v1")
        self.assertEqual(code, 200, body)
        policies = yield in_thread(page.wait_cell, "mappings", public, "policies", lambda t: "PROXY" in t)
        self.assertIn("users from 127.0.0.5/32", policies)
        self.assertIn("PROXY protocol v1", policies)
        self.assertEqual((yield in_thread(roundtrip_from, "127.0.0.1", public, b"out")), b"")
        yield in_thread(page.wait_cell, "mappings", public, "refused", lambda t: t == "1 denied")

        yield in_thread(page.click, f'#mappings tr[data-key="{public}"] button[data-action="edit"]')
        yield in_thread(page.wait, lambda: page.shown("#edit-form"), "the edit form")
        yield in_thread(page.fill, "#edit-form", {"max_channels": "none"})
        yield in_thread(page.click, "#edit-form button[type=submit]")
        refusal = yield in_thread(page.wait, lambda: page.text("#edit-message"), "the refusal")
        self.assertIn("max_channels", refusal)
        self.assertNotIn("max_channels", self.server.registry.mappings[public].policies())

        yield in_thread(page.fill, "#edit-form", {"rate_limit": "5", "max_channels": "", "allow": ""})
        yield in_thread(page.click, "#edit-form button[type=submit]")
        policies = yield in_thread(page.wait_cell, "mappings", public, "policies", lambda t: "MB/s" in t)
        self.assertIn("5 MB/s each way", policies)
        self.assertNotIn("users from", policies)  # emptied: removed
        self.assertEqual(self.server.registry.mappings[public].policies(),
                         {"rate_limit": 5.0, "proxy_protocol": "v1"})
        self.assertIn("allow removed", (yield in_thread(page.text, "#edit-message")))

    @inlineCallbacks
    def test_admin_token_asked_once(self):
        """With --admin-token the page asks for it, says so when it is wrong, and keeps it across a reload."""
        yield self.start("--admin-token", ADMIN_TOKEN)
        page = self.page
        (client_id,) = self.server.registry.clients
        yield in_thread(page.wait, lambda: page.shown("#token-panel"), "the token prompt")
        self.assertFalse((yield in_thread(page.shown, "#main")))

        yield in_thread(page.one("#token-input").send_keys, "not-the-token")
        yield in_thread(page.click, "#token-form button")
        refusal = yield in_thread(page.wait, lambda: page.text("#token-error"), "the refusal")
        self.assertIn("refused", refusal)

        yield in_thread(page.one("#token-input").send_keys, ADMIN_TOKEN)
        yield in_thread(page.click, "#token-form button")
        yield in_thread(page.wait_cell, "clients", client_id, "state")
        self.assertFalse((yield in_thread(page.shown, "#token-panel")))

        yield in_thread(page.driver.refresh)
        yield in_thread(page.wait_cell, "clients", client_id, "state")
        self.assertFalse((yield in_thread(page.shown, "#token-panel")))

    @inlineCallbacks
    def test_server_away_and_back(self):
        """When the server process exits the page says so in a banner, and recovers by itself when it is back."""
        admin_port = free_port()
        data_dir = os.path.abspath(self.mktemp())
        first = yield Twistd(self, admin_port, data_dir).up()
        page = yield self.open_page(first.admin + "/")
        port = str(first.client_port)
        yield in_thread(page.wait, lambda: page.text("#client-port") == port, "the client port")
        self.assertFalse((yield in_thread(page.shown, "#banner")))

        yield first.stop()
        banner = yield in_thread(page.wait, lambda: page.shown("#banner") and page.text("#banner"), "the banner")
        self.assertIn("not answering", banner)
        self.assertIn("server not answering", (yield in_thread(page.text, "#status")))

        again = yield Twistd(self, admin_port, data_dir).up()
        port = str(again.client_port)
        yield in_thread(page.wait, lambda: page.text("#client-port") == port, "the new client port")
        self.assertFalse((yield in_thread(page.shown, "#banner")))


class Twistd(ProcessProtocol):
    """``twistd -n portmapper`` in a child process, its admin API on ``admin_port``."""

    def __init__(self, testcase, admin_port, data_dir):
        self.testcase = testcase
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.ended = Deferred()
        self.output = bytearray()
        args = [
            sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "--logfile=-", "portmapper",
            "--client-port", "tcp:0:interface=127.0.0.1", "--public-interface", "127.0.0.1",
            "--admin", f"tcp:{admin_port}:interface=127.0.0.1", "--data-dir", data_dir,
        ]
        # The child imports what this process imports (trial runs in _trial_temp).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p)}
        reactor.spawnProcess(self, sys.executable, args, env=env, path=os.path.dirname(data_dir))
        testcase.addCleanup(self.stop)

    def childDataReceived(self, fd, data):
        self.output += data[:OUTPUT_KEPT - len(self.output)]

    def processEnded(self, reason):
        self.ended.callback(None)

    @inlineCallbacks
    def up(self):
        """Wait until the admin API answers; fire with self, its client_port known."""
        deadline = reactor.seconds() + WAIT
        while True:
            if self.ended.called or reactor.seconds() > deadline:
                raise AssertionError(f"twistd did not come up: {self.output.decode(errors='replace')}")
            try:
                response = yield treq.get(self.admin + "/client_port", persistent=False)
                self.client_port = (yield treq.json_content(response))["client_port"]
                return self
            except ConnectError:
                yield deferLater(reactor, POLL, lambda: None)

    def stop(self):
        """Stop the process (SIGTERM: twistd shuts down and exits); fire when it has."""
        if not self.ended.called:
            self.transport.signalProcess("TERM")
        return self.ended
