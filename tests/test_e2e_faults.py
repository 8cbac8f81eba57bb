"""
End-to-end fault tests with real processes: a ``twistd -n
portmapper-client`` killed with SIGKILL mid-transfer, and either end frozen
with SIGSTOP and thawed with SIGCONT.  The other end notices within its
ping timeout, history says ``client lost``, and service comes back with a
new client id.
"""

import os
import re
import socket
import threading

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.protocol import ClientFactory
from twisted.trial.unittest import TestCase

from tests.e2e import (
    TOKEN, Backend, Echo, EchoUser, Running, echo_roundtrip, free_port, in_thread, logged,
    start_client, wait_for,
)
from tests.test_e2e_crash import WAIT, Server, Twistd, opened_user, poll

PING = ("--ping-interval", "0.2", "--ping-timeout", "1")
PING_TIMEOUT = 1.0
DETECT_SLACK = 2.0  # a ping interval, a sweep, a loaded 2-core machine
WELCOMED = re.compile(rb"connected to the server as client (\d+)")
CHUNK = 16 * 1024
STREAM_CHUNKS = 100_000  # a streaming user stops after this many chunks, at most
STREAM_SECONDS = 30.0  # ... or this long


class Client(Twistd):
    """``twistd -n portmapper-client`` linking to the server's client port."""

    def __init__(self, testcase, client_port, *extra):
        self.welcomed = []  # client ids, in the order the server gave them
        super().__init__(testcase, [
            "portmapper-client", "--server", f"tcp:host=127.0.0.1:port={client_port}",
            "--token", TOKEN, *extra,
        ], os.getcwd())

    def lineReceived(self, line):
        found = WELCOMED.search(line)
        if found:
            self.welcomed.append(int(found.group(1)))
            if not self.ready.called:
                self.ready.callback(self)


class Streamer:
    """A user that sends and reads at once through an echo path until cut or bounded."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sent = self.received = 0
        self.errors = []
        self.threads = [threading.Thread(target=self._send), threading.Thread(target=self._recv)]
        for t in self.threads:
            t.start()

    def _send(self):
        chunk = os.urandom(CHUNK)
        deadline = reactor.seconds() + STREAM_SECONDS
        try:
            for _ in range(STREAM_CHUNKS):
                if reactor.seconds() > deadline:
                    return
                self.sock.sendall(chunk)
                self.sent += CHUNK
        except OSError as e:
            self.errors.append(e)

    def _recv(self):
        try:
            for _ in range(STREAM_CHUNKS * 4):
                data = self.sock.recv(1 << 20)
                if not data:
                    return self.errors.append("eof")
                self.received += len(data)
        except OSError as e:
            self.errors.append(e)

    def join(self):
        """Wait (bounded) for both directions to end; whether both did."""
        for t in self.threads:
            t.join(STREAM_SECONDS)
        self.sock.close()
        return not any(t.is_alive() for t in self.threads)


class ClientProcessFaultTests(TestCase):
    """A client process killed or stopped under an in-process server with short pings."""

    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.running = yield Running(self, self.mktemp(), extra=PING).start()
        self.server = self.running.server
        self.public = yield self.running.map(Backend(Echo).listen(self))

    @inlineCallbacks
    def linkedClient(self, *extra):
        client = yield Client(self, self.server.client_port, *extra).up()
        yield wait_for(lambda: client.welcomed[-1] in self.server.registry.clients,
                       timeout=WAIT, what="the client in the registry")
        return client

    @inlineCallbacks
    def reasons(self):
        code, body = yield self.running.api("GET", "/channel_history", limit="1000")
        return {row["channel_id"]: row["close_reason"] for row in body["history"]}

    @inlineCallbacks
    def test_client_sigkill_mid_transfer(self):
        """A client SIGKILLed mid-transfer: users cut, link lost at once, 'client lost', next client serves."""
        client = yield self.linkedClient()
        streamers = [Streamer(self.public) for _ in range(3)]
        yield wait_for(lambda: all(s.received > 4 * CHUNK for s in streamers),
                       timeout=WAIT, what="every user's echo flowing")
        channel_ids = set(self.server.registry.channels)
        self.assertEqual(len(channel_ids), 3)
        killed_at = reactor.seconds()
        yield client.signal("KILL")
        yield wait_for(lambda: not self.server.registry.clients, timeout=WAIT,
                       what="the server to notice the link lost")
        detected = reactor.seconds() - killed_at
        self.assertLess(detected, PING_TIMEOUT + DETECT_SLACK)
        self.assertTrue((yield in_thread(lambda: all(s.join() for s in streamers))))
        for s in streamers:
            self.assertTrue(s.errors)  # cut: the stream did not run to its bound
            self.assertLess(s.received, STREAM_CHUNKS * CHUNK)
        yield wait_for(lambda: not self.server.registry.channels, what="the channels to close")
        reasons = {}

        @inlineCallbacks
        def recorded():
            reasons.update((yield self.reasons()))
            return channel_ids <= set(reasons)

        yield poll(recorded, "the channels in history")
        self.assertEqual({reasons[i] for i in channel_ids}, {"client lost"})

        second = yield self.linkedClient()
        self.assertGreater(second.welcomed[0], client.welcomed[0])
        self.assertEqual((yield in_thread(echo_roundtrip, self.public, b"second")), b"second")
        print(f"\n  client SIGKILL: link lost after {detected:.3f} s; "
              f"users cut after {[s.received for s in streamers]} bytes echoed")

    @inlineCallbacks
    def test_client_sigstop_then_sigcont(self):
        """A SIGSTOPped client is dropped within the ping timeout; after SIGCONT it relinks anew."""
        client = yield self.linkedClient()
        user = yield in_thread(opened_user, self.public)
        self.addCleanup(user.close)
        (channel_id,) = self.server.registry.channels
        stopped_at = reactor.seconds()
        client.send("STOP")
        yield wait_for(lambda: not self.server.registry.clients, timeout=WAIT,
                       what="the server to drop the stopped client")
        detected = reactor.seconds() - stopped_at
        self.assertGreaterEqual(detected, PING_TIMEOUT * 0.9)  # silence, not a closed socket
        self.assertLess(detected, PING_TIMEOUT + DETECT_SLACK)
        yield wait_for(lambda: not self.server.registry.channels, what="the channel to close")
        reasons = {}

        @inlineCallbacks
        def recorded():
            reasons.update((yield self.reasons()))
            return channel_id in reasons

        yield poll(recorded, "the channel in history")
        self.assertEqual(reasons[channel_id], "client lost")

        continued_at = reactor.seconds()
        client.send("CONT")
        yield wait_for(lambda: len(client.welcomed) == 2 and client.welcomed[1] in
                       self.server.registry.clients, timeout=WAIT, what="the client to relink")
        relinked = reactor.seconds() - continued_at
        self.assertGreater(client.welcomed[1], client.welcomed[0])
        self.assertEqual((yield in_thread(echo_roundtrip, self.public, b"thawed")), b"thawed")
        print(f"\n  client SIGSTOP: dropped after {detected:.3f} s; "
              f"relinked {relinked:.3f} s after SIGCONT as client {client.welcomed[1]} "
              f"(was {client.welcomed[0]})")


class ServerProcessFaultTests(TestCase):
    """A server process stopped under an in-process client with short pings."""

    timeout = 120

    @inlineCallbacks
    def test_server_sigstop_then_sigcont(self):
        """A client drops a SIGSTOPped server's link within its ping timeout and relinks after SIGCONT."""
        data_dir = os.path.abspath(os.path.join(self.mktemp(), "data"))
        os.makedirs(data_dir)
        ports = free_port(), free_port()
        server = yield Server(self, data_dir, *ports).up()
        lost = logged(self, "link to the server {server} lost", "why")
        welcomed = logged(self, "connected to the server as client", "client_id")
        start_client(self, ports[0], *PING)
        yield wait_for(lambda: welcomed, timeout=WAIT, what="the client's link")
        public = free_port()
        yield server.api("POST", "/port_mapper", port=str(public), mapper_ip="127.0.0.1",
                         mapper_port=str(Backend(Echo).listen(self)), mapper_tag="default")
        self.assertEqual((yield in_thread(echo_roundtrip, public, b"before")), b"before")

        stopped_at = reactor.seconds()
        server.send("STOP")
        yield wait_for(lambda: lost, timeout=WAIT, what="the client to drop the link")
        detected = reactor.seconds() - stopped_at
        self.assertGreaterEqual(detected, PING_TIMEOUT * 0.9)
        self.assertLess(detected, PING_TIMEOUT + DETECT_SLACK)

        continued_at = reactor.seconds()
        server.send("CONT")
        yield wait_for(lambda: len(welcomed) >= 2, timeout=WAIT, what="the client to relink")
        relinked = reactor.seconds() - continued_at
        self.assertGreater(welcomed[-1], welcomed[0])
        clients = yield server.api("GET", "/client_connection")
        self.assertEqual(list(map(int, clients)), [welcomed[-1]])
        old = yield poll(lambda: server.api("GET", "/client_history", client_id=str(welcomed[0])),
                         "the old link in history", lambda body: body["history"])
        self.assertEqual([row["close_reason"] for row in old["history"]], ["client lost"])
        self.assertEqual((yield in_thread(echo_roundtrip, public, b"after")), b"after")
        print(f"\n  server SIGSTOP: client dropped the link after {detected:.3f} s "
              f"({lost[0]}); relinked {relinked:.3f} s after SIGCONT")


class FailoverTests(TestCase):
    """Failover when a client process dies between a user's accept and the target's answer."""

    timeout = 120
    setUp = ClientProcessFaultTests.setUp
    linkedClient = ClientProcessFaultTests.linkedClient

    @inlineCallbacks
    def test_sigkill_mid_open_fails_over(self):
        """200 users, the first client frozen then SIGKILLed mid-open: every user is carried by the second."""
        first = yield self.linkedClient()
        start_client(self, self.server.client_port)
        yield wait_for(lambda: len(self.server.registry.clients) == 2, what="two clients")
        failovers = logged(self, "channel {channel_id}: client {client_id} went before", "channel_id")
        first.send("STOP")  # its opens go unanswered: they stay mid-open
        users = []
        for n in range(200):
            user = EchoUser(b"user %03d " % n * 8)
            factory = ClientFactory.forProtocol(lambda user=user: user)
            factory.noisy = False
            reactor.connectTCP("127.0.0.1", self.public, factory)
            users.append(user)
            self.addCleanup(lambda user=user: user.transport and user.transport.abortConnection())
        first_id = first.welcomed[0]
        session = self.server.registry.clients[first_id]
        yield wait_for(lambda: len(self.server.registry.channels) == 200,
                       timeout=WAIT, what="all 200 users accepted")
        mid_open = len(session.channels)
        killed_at = reactor.seconds()
        yield first.signal("KILL")
        got = yield gatherResults([user.done for user in users])
        self.assertEqual(got, [user.line for user in users])  # every user carried, byte-exact
        self.assertEqual(len(failovers), mid_open)
        print(f"\n  failover: {mid_open} of 200 users were mid-open on the killed client; "
              f"all 200 carried, the last {reactor.seconds() - killed_at:.3f} s after the kill")
