"""
End-to-end: a flood of connections to a mapped port with no client behind
it, over real loopback, leaves real history in place and adds one counted
history row and one log line per refusal interval.
"""

import socket
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.e2e import Backend, Echo, Running, echo_roundtrip, in_thread, logged, start_client, wait_for

FLOOD = 2000
INTERVAL = 1.0
MAX_ROWS = 100  # far fewer than the flood: one row each would push every real row out


def flood(port, count, deadline):
    """Connect to ``port`` and close at once, ``count`` times (fails past ``deadline``, a
    time.monotonic()); return how many connected."""
    done = 0
    for _ in range(count):
        if time.monotonic() > deadline:
            raise AssertionError(f"the flood took too long: {done} of {count} connected")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            done += 1
    return done


class RefusalFloodTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_flood_keeps_history(self):
        """2,000 refused connections keep every real row and add a few counted rows and log lines."""
        running = yield Running(self, self.mktemp(), extra=[
            "--refusal-interval", str(INTERVAL), "--history-max-rows", str(MAX_ROWS)]).start()
        # stopped here and again at cleanup: a short drain keeps the second stop short
        client = start_client(self, running.server.client_port, "--drain-timeout", "1")
        yield wait_for(lambda: running.server.registry.clients, what="the client")
        public = yield running.map(Backend(Echo).listen(self))
        for i in range(5):
            data = b"real %d" % i
            self.assertEqual((yield in_thread(echo_roundtrip, public, data)), data)
        yield client.stopService()
        yield wait_for(lambda: not running.server.registry.clients, what="the client to go")
        yield wait_for(lambda: not running.server.registry.channels, what="the channels to close")
        code, body = yield running.api("GET", "/channel_history")
        real = body["history"]
        self.assertEqual([row["close_reason"] for row in real], ["user closed"] * 5)

        lines = logged(self, "port {port}: {count} connection(s) refused", "count")
        started = reactor.seconds()
        connected = yield in_thread(flood, public, FLOOD, time.monotonic() + 60)
        self.assertEqual(connected, FLOOD)

        history = []

        def refusals():
            return [row for row in history if "count" in row]

        deadline = reactor.seconds() + 20
        while sum(row["count"] for row in refusals()) < FLOOD:
            self.assertLess(reactor.seconds(), deadline, f"refusals counted: {refusals()}")
            yield deferLater(reactor, INTERVAL / 4, lambda: None)
            code, body = yield running.api("GET", "/channel_history", limit="1000")
            history[:] = body["history"]
        self.assertEqual(sum(row["count"] for row in refusals()), FLOOD)
        elapsed = reactor.seconds() - started
        most = 2 + int(elapsed / INTERVAL)  # the first at once, then one per interval
        self.assertLessEqual(len(refusals()), most)
        self.assertLessEqual(len(lines), most)
        self.assertEqual(sum(lines), FLOOD)
        for row in refusals():
            self.assertEqual((row["port"], row["close_reason"], row["client_id"]),
                             (public, "no client", None))
            self.assertLessEqual(row["init_time"], row["close_time"])
        self.assertEqual([row for row in history if "count" not in row], real)
