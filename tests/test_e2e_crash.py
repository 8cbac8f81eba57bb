"""
End-to-end: a real ``twistd -n portmapper`` process killed with SIGKILL
and started again on the same data directory.  Ids go on above every id
the API showed before the crash, and history has the channels and the
client link that were open, closed as ``server lost``.
"""

import json
import os
import signal
import sqlite3
import sys

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.e2e import (
    POLL, TOKEN, Backend, Echo, connect, echo_roundtrip, free_port, in_thread, start_client,
)
from tests.test_tap import _TWISTD

WAIT = 30.0
READY = b"portmapper server ready"  # logged once everything listens
OUTPUT_KEPT = 64 * 1024  # of the child's output, for failure messages


class Twistd(ProcessProtocol):
    """``twistd -n`` with ``args`` in a child process; ``lineReceived`` sees each line it logs."""

    def __init__(self, testcase, args, cwd):
        self.ended = Deferred()
        self.ready = Deferred()
        self.output = bytearray()
        self._partial = b""
        args = [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "--logfile=-", *args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p)}
        reactor.spawnProcess(self, sys.executable, args, env=env, path=cwd)
        testcase.addCleanup(self.signal, "TERM")
        testcase.addCleanup(self.send, "CONT")  # a stopped process cannot end on TERM

    def childDataReceived(self, fd, data):
        self.output += data[:OUTPUT_KEPT - len(self.output)]
        *lines, self._partial = (self._partial + data).split(b"\n")
        self._partial = self._partial[-OUTPUT_KEPT:]
        for line in lines:
            self.lineReceived(line)

    def lineReceived(self, line):
        """One line the process logged (subclasses fire ``ready`` here)."""

    def processEnded(self, reason):
        self.ended.callback(None)
        if not self.ready.called:
            self.ready.errback(AssertionError(
                f"twistd ended before it was ready: {self.output.decode(errors='replace')}"))

    def send(self, name):
        """Send SIGname, unless the process has ended."""
        if not self.ended.called:
            self.transport.signalProcess(getattr(signal, "SIG" + name))

    def signal(self, name):
        """Send SIGname (unless the process has ended); fire once it has ended."""
        self.send(name)
        return self.ended

    def up(self):
        """Fire with self once the process is ready (fail after WAIT seconds)."""
        return self.ready.addTimeout(WAIT, reactor)


class Server(Twistd):
    """``twistd -n portmapper`` in a child process, on the ports and data dir given."""

    def __init__(self, testcase, data_dir, client_port, admin_port, *extra):
        self.admin = f"http://127.0.0.1:{admin_port}"
        super().__init__(testcase, [
            "portmapper",
            "--client-port", f"tcp:{client_port}:interface=127.0.0.1",
            "--public-interface", "127.0.0.1", "--token", TOKEN,
            "--admin", f"tcp:{admin_port}:interface=127.0.0.1", "--data-dir", data_dir, *extra,
        ], os.path.dirname(data_dir))

    def lineReceived(self, line):
        if not self.ready.called and READY in line:
            self.ready.callback(self)

    @inlineCallbacks
    def api(self, method, path, **params):
        """The decoded JSON answer of the admin API (which must be a 200)."""
        response = yield treq.request(method, self.admin + path, params=params, persistent=False)
        body = json.loads((yield treq.content(response)))
        assert response.code == 200, (method, path, body)
        return body


def noted_open(path):
    """(open channels, open clients) the database at ``path`` has noted."""
    conn = sqlite3.connect(path, timeout=5)
    try:
        return tuple(conn.execute(f"SELECT count(*) FROM open_{kind}").fetchone()[0]
                     for kind in ("channels", "clients"))
    finally:
        conn.close()


def opened_user(port):
    """A user whose channel is open and carrying data (its socket, left open)."""
    s = connect(port, timeout=10)
    s.sendall(b"ping")
    assert s.recv(4) == b"ping"
    return s


class CrashTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_sigkill_and_restart(self):
        """After SIGKILL and restart: ids above all shown before, open channels and link 'server lost'."""
        data_dir = os.path.abspath(os.path.join(self.mktemp(), "data"))
        os.makedirs(data_dir)
        ports = free_port(), free_port()
        first = yield Server(self, data_dir, *ports).up()
        start_client(self, ports[0], "--drain-timeout", "1")
        clients = {}

        @inlineCallbacks
        def client_ids():
            clients.clear()
            clients.update((yield first.api("GET", "/client_connection")))
            return clients

        yield poll(client_ids, "the client")
        (old_client,) = map(int, clients)
        backend = Backend(Echo)
        public = free_port()
        yield first.api("POST", "/port_mapper", port=str(public), mapper_ip="127.0.0.1",
                        mapper_port=str(backend.listen(self)), mapper_tag="default")
        for i in range(3):
            self.assertEqual((yield in_thread(echo_roundtrip, public, b"closed %d" % i)),
                             b"closed %d" % i)
        users = []
        for _ in range(3):
            users.append((yield in_thread(opened_user, public)))
            self.addCleanup(users[-1].close)
        shown_open = [c["channel_id"] for c in (yield first.api("GET", "/channel"))[str(public)]]
        history = (yield first.api("GET", "/channel_history"))["history"]
        shown = shown_open + [row["channel_id"] for row in history]
        self.assertEqual(len(shown_open), 3)
        self.assertEqual(len(history), 3)

        database = os.path.join(data_dir, "portmapper.sqlite3")
        yield poll(lambda: in_thread(noted_open, database), "the open channels on disk",
                   lambda noted: noted == (3, 1))
        yield first.signal("KILL")

        again = yield Server(self, data_dir, *ports).up()
        history = (yield again.api("GET", "/channel_history"))["history"]
        reasons = {row["channel_id"]: row["close_reason"] for row in history}
        self.assertEqual(reasons, {**{i: "user closed" for i in shown if i not in shown_open},
                                   **{i: "server lost" for i in shown_open}})
        lost = (yield again.api("GET", "/client_history", client_id=str(old_client)))["history"]
        self.assertEqual([row["close_reason"] for row in lost], ["server lost"])

        @inlineCallbacks
        def back():
            return (yield again.api("GET", "/client_connection"))

        new_clients = yield poll(back, "the client to come back")
        self.assertGreater(min(map(int, new_clients)), old_client)
        self.assertEqual((yield in_thread(echo_roundtrip, public, b"after")), b"after")

        @inlineCallbacks
        def newest():
            return (yield again.api("GET", "/channel_history", limit="1"))["history"][0]

        row = yield poll(newest, "the new channel in history",
                         lambda row: row["close_reason"] == "user closed")
        self.assertGreater(row["channel_id"], max(shown))


@inlineCallbacks
def poll(fetch, what, ready=bool, timeout=WAIT):
    """Call ``fetch`` (it gives a Deferred) until what it gives is ``ready``; give that."""
    deadline = reactor.seconds() + timeout
    while True:
        value = yield fetch()
        if ready(value):
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {value!r}")
        yield deferLater(reactor, POLL * 10, lambda: None)
