"""
Tests for portmapper.server.webhooks: alerts delivered to a receiver in the
test, retried after a 500 or a silence with backoff on a task.Clock, bounded
while the receiver is down, "no client" at most once a minute per port; and
end to end, a server started with --webhook posting to a receiver on
127.0.0.1 when a client links, when a user finds no client, and when the
client goes.
"""

import json

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from twisted.python import usage

from portmapper.server import webhooks
from portmapper.server.tap import Options
from portmapper.server.webhooks import Webhooks
from tests.e2e import Backend, Echo, Running, connect, in_thread, recv_or_reset, start_client, wait_for

URL = "http://receiver/alerts"


class Receiver(Resource):
    """Records each POSTed JSON body; answers the next of ``codes`` (None: never answers), then 200."""

    isLeaf = True

    def __init__(self, codes=()):
        super().__init__()
        self.codes = list(codes)
        self.bodies = []
        self.silent = []  # requests left unanswered

    def render_POST(self, request):
        self.bodies.append(json.loads(request.content.read()))
        code = self.codes.pop(0) if self.codes else 200
        if code is None:
            self.silent.append(request)
            return NOT_DONE_YET
        request.setResponseCode(code)
        return b"ok"


class WebhooksTestCase(SynchronousTestCase):

    def start(self, receiver, **kwargs):
        self.clock = Clock()
        self.clock.advance(1530699158)  # 2018-07-04T10:12:38Z
        self.hooks = Webhooks([URL], self.clock, http=StubTreq(receiver), **kwargs)
        self.hooks.startService()
        self.addCleanup(self.hooks.stopService)
        return self.hooks


class DeliveryTests(WebhooksTestCase):

    def test_delivered(self):
        """An alert is POSTed as JSON: its event, the time in UTC, and its fields."""
        receiver = Receiver()
        self.start(receiver).notify("client linked", client_id=3, tag="office")
        self.assertEqual(receiver.bodies, [{"event": "client linked", "time": "2018-07-04T10:12:38+00:00",
                                            "client_id": 3, "tag": "office"}])

    def test_refusals(self):
        """The policies' hook posts a 'refusals' alert with the port, reason and count."""
        receiver = Receiver()
        self.start(receiver).refusals(5555, "denied", 12)
        self.assertEqual(receiver.bodies, [{"event": "refusals", "time": "2018-07-04T10:12:38+00:00",
                                            "port": 5555, "reason": "denied", "count": 12}])

    def test_in_order(self):
        """Alerts reach the receiver in the order they were raised."""
        receiver = Receiver()
        hooks = self.start(receiver)
        for n in range(5):
            hooks.refusals(5555, "denied", n)
        self.assertEqual([body["count"] for body in receiver.bodies], [0, 1, 2, 3, 4])

    def test_retried_after_500(self):
        """A 500 is tried again after the backoff, doubling each time, and then delivered."""
        receiver = Receiver(codes=[500, 500])
        hooks = self.start(receiver, backoff=1.0)
        hooks.notify("client lost", client_id=1)
        self.assertEqual(len(receiver.bodies), 1)
        self.clock.advance(0.9)
        self.assertEqual(len(receiver.bodies), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(receiver.bodies), 2)  # the second 500
        self.clock.advance(1.9)
        self.assertEqual(len(receiver.bodies), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(receiver.bodies), 3)  # 200
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual({body["client_id"] for body in receiver.bodies}, {1})

    def test_gives_up(self):
        """After ``retries`` more tries an alert is given up, logged, and the next one goes."""
        receiver = Receiver(codes=[500] * 3)
        hooks = self.start(receiver, retries=2, backoff=1.0)
        with capturedLogs() as events:
            hooks.notify("client lost", client_id=1)
            hooks.notify("client lost", client_id=2)
            self.clock.advance(1)
            self.clock.advance(2)
        self.assertEqual([body["client_id"] for body in receiver.bodies], [1, 1, 1, 2])
        self.assertTrue(any("gave up" in e.get("log_format", "") for e in events))

    def test_silent_receiver_times_out(self):
        """A receiver that never answers is given up on after the timeout, then tried again."""
        receiver = Receiver(codes=[None])
        hooks = self.start(receiver, timeout=10.0, backoff=1.0)
        hooks.notify("client linked", client_id=1)
        self.clock.advance(9.9)
        self.assertEqual(len(receiver.bodies), 1)
        self.clock.advance(0.1)  # timed out; the next try in 1 s
        self.clock.advance(1.0)
        self.assertEqual(len(receiver.bodies), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bounded_while_down(self):
        """While the receiver is silent, at most max_queue alerts wait; the oldest are dropped and counted."""
        receiver = Receiver(codes=[None])
        hooks = self.start(receiver, max_queue=10, timeout=10.0, backoff=1.0)
        with capturedLogs() as events:
            for n in range(1000):
                hooks.notify("refusals", port=5555, count=n)
            (sink,) = hooks._sinks
            self.assertEqual(len(sink.queue), 10)
            self.assertEqual(sink.dropped, 989)  # the first is in flight, the last 10 wait
            self.clock.advance(10)  # time out, then retry the first: it is answered now
            self.clock.advance(1)
        self.assertEqual([body["count"] for body in receiver.bodies[2:]], list(range(990, 1000)))
        self.assertTrue(any(e.get("count") == 989 for e in events))

    def test_no_urls_or_not_running(self):
        """Without URLs, or before the service starts, notify does nothing."""
        receiver = Receiver()
        idle = Webhooks([], Clock(), http=StubTreq(receiver))
        idle.startService()
        idle.notify("client linked")
        stopped = Webhooks([URL], Clock(), http=StubTreq(receiver))
        stopped.notify("client linked")
        self.assertEqual(receiver.bodies, [])

    def test_stop_cancels(self):
        """Stopping cancels the POST in flight and the retry timer; nothing is left scheduled."""
        receiver = Receiver(codes=[500])
        hooks = self.start(receiver, backoff=1.0)
        hooks.notify("client linked", client_id=1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        hooks.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        hooks.notify("client linked", client_id=2)
        self.assertEqual(len(receiver.bodies), 1)


class NoClientTests(WebhooksTestCase):

    def test_once_a_minute_per_port(self):
        """'no client' is sent at most once a minute for a port; other ports have their own minute."""
        receiver = Receiver()
        hooks = self.start(receiver)
        hooks.no_client(5555, "office")
        hooks.no_client(5555, "office")
        hooks.no_client(6666, "lab")
        self.clock.advance(webhooks.NO_CLIENT_INTERVAL - 1)
        hooks.no_client(5555, "office")
        self.clock.advance(1)
        hooks.no_client(5555, "office")
        self.assertEqual([(b["event"], b["port"], b["tag"]) for b in receiver.bodies], [
            ("no client", 5555, "office"), ("no client", 6666, "lab"), ("no client", 5555, "office")])


class OptionTests(SynchronousTestCase):

    def test_repeatable(self):
        """--webhook may be given several times, each a URL or a list of them."""
        options = Options()
        options.parseOptions(["--webhook", "http://a.example/x",
                              "--webhook", "https://b.example:8443/y, http://127.0.0.1:9/z"])
        self.assertEqual(options.settings.webhook,
                         ("http://a.example/x", "https://b.example:8443/y", "http://127.0.0.1:9/z"))

    def test_config_file_list(self):
        """In the config file, webhook is a list separated by commas or spaces."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server]\nwebhook = http://a.example/x,http://b.example/y http://c.example/z\n")
        options = Options()
        options.parseOptions(["--config", path])
        self.assertEqual(len(options.settings.webhook), 3)

    def test_default_none(self):
        """Without the option there is no webhook."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options.settings.webhook, ())

    def test_bad_url(self):
        """A URL that is not http(s) is refused with one sentence naming the option."""
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--webhook", "ftp://x/y"])
        self.assertEqual(str(error), "Bad value 'ftp://x/y' for webhook: 'ftp://x/y' is not an "
                                     "http:// or https:// URL.")


def listen_receiver(testcase, receiver):
    port = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}/alerts"


class LoopbackTests(TestCase):
    """Alerts over real HTTP on 127.0.0.1."""

    timeout = 60

    @inlineCallbacks
    def test_real_http(self):
        """The default treq client posts to a receiver listening on loopback."""
        receiver = Receiver()
        hooks = Webhooks([listen_receiver(self, receiver)], reactor)
        hooks.startService()
        self.addCleanup(hooks.stopService)
        hooks.notify("client linked", client_id=9)
        yield wait_for(lambda: receiver.bodies, what="the alert")
        self.assertEqual(receiver.bodies[0]["client_id"], 9)

    @inlineCallbacks
    def test_server_alerts(self):
        """A server with --webhook alerts when a client links, a user finds no client, the client is dropped."""
        receiver = Receiver()
        running = yield Running(self, self.mktemp(),
                                extra=["--webhook", listen_receiver(self, receiver)]).start()
        server = running.server
        start_client(self, server.client_port)
        yield wait_for(lambda: receiver.bodies, what="'client linked'")
        (client_id,) = server.registry.clients
        linked = receiver.bodies[0]
        self.assertEqual((linked["event"], linked["client_id"], linked["tag"]),
                         ("client linked", client_id, "default"))

        public = yield running.map(Backend(Echo).listen(self), tag="nobody")
        for _ in range(3):
            s = yield in_thread(connect, public)
            yield in_thread(recv_or_reset, s)
            s.close()
        yield wait_for(lambda: len(receiver.bodies) >= 2, what="'no client'")

        code, _ = yield running.api("DELETE", "/client_connection", client_id=str(client_id))
        self.assertEqual(code, 200)
        yield wait_for(lambda: any(b["event"] == "client lost" for b in receiver.bodies),
                       what="'client lost'")
        events = [(b["event"], b.get("port")) for b in receiver.bodies]
        self.assertEqual(events[1], ("no client", public))
        self.assertEqual([e for e, _ in events].count("no client"), 1)  # three users, one alert
        # The client links again (a client being stopped while it waits to retry is slow to stop).
        yield wait_for(lambda: [b["event"] for b in receiver.bodies].count("client linked") == 2,
                       what="the client to link again")
        (lost,) = [b for b in receiver.bodies if b["event"] == "client lost"]
        self.assertEqual((lost["client_id"], lost["tag"], lost["reason"]),
                         (client_id, "default", "closed by admin"))
