"""
End-to-end tests over real loopback TCP: the server and client services as
the twistd plugins build them, backends in the same reactor, users on
blocking sockets in threads.
"""

import hashlib
import os
import socket
import threading

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from portmapper.transport.tune import READ_SIZE
from tests.e2e import (
    Backend, Echo, Running, connect, echo_roundtrip, in_thread,
    recv_all, recv_or_reset, start_client, wait_for,
)

MiB = 2**20


@implementer(IHalfCloseableProtocol)
class ReplyAtEOF(Protocol):
    """Reads until the peer shuts down writing, then answers with a digest."""

    def connectionMade(self):
        self.hash = hashlib.sha256()
        self.count = 0

    def dataReceived(self, data):
        self.hash.update(data)
        self.count += len(data)

    def readConnectionLost(self):
        self.transport.write(b"%d %s" % (self.count, self.hash.hexdigest().encode()))
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class Source(Protocol):
    """Sends ``total`` bytes of a known pattern as fast as the transport takes them."""

    total = 200 * MiB
    chunk = bytes(range(256)) * 1024  # 256 KiB

    def connectionMade(self):
        self.sent = 0
        self.paused = False
        self.transport.registerProducer(self, True)
        self._pump()

    def _pump(self):
        while not self.paused and self.sent < self.total:
            n = min(len(self.chunk), self.total - self.sent)
            self.sent += n
            self.transport.write(self.chunk[:n])
        if self.sent >= self.total and not self.paused:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._pump()

    def stopProducing(self):
        self.paused = True


def buffered(transport):
    """Bytes a Twisted TCP transport holds, not yet written to its socket."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class TunnelTests(TestCase):
    """A server, one client and a mapping, carrying data."""

    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.data_dir = self.mktemp()
        self.running = yield Running(self, self.data_dir).start()
        self.server = self.running.server
        self.client = start_client(self, self.server.client_port)
        yield wait_for(lambda: len(self.server.registry.clients) == 1, what="the client")

    @inlineCallbacks
    def test_bulk_both_ways_exact(self):
        """24 MiB echoed through a mapping come back byte-exact."""
        public = yield self.running.map(Backend(Echo).listen(self))
        data = os.urandom(24 * MiB)
        got = yield in_thread(echo_roundtrip, public, data)
        self.assertEqual(len(got), len(data))
        self.assertTrue(got == data)

    @inlineCallbacks
    def test_target_by_name(self):
        """A mapping whose target is a host name is resolved by the client and carries data."""
        public = yield self.running.map(Backend(Echo).listen(self), target_host="localhost")
        self.assertEqual((yield in_thread(echo_roundtrip, public, b"by name")), b"by name")

    @inlineCallbacks
    def test_half_close(self):
        """A user's shutdown(SHUT_WR) reaches the target as EOF and its reply still comes back."""
        public = yield self.running.map(Backend(ReplyAtEOF).listen(self))
        data = os.urandom(3 * MiB + 5)

        def user():
            s = connect(public)
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                return recv_all(s)
            finally:
                s.close()

        reply = yield in_thread(user)
        self.assertEqual(reply, b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode()))

    @inlineCallbacks
    def test_fifty_concurrent_channels(self):
        """50 channels open at once each carry their own bytes exactly."""
        public = yield self.running.map(Backend(Echo).listen(self))
        payloads = [os.urandom(256 * 1024 + i) for i in range(50)]
        results = [None] * 50
        opened = threading.Barrier(51, timeout=30)

        def user(i):
            s = connect(public)
            try:
                s.sendall(payloads[i][:1])
                results[i] = s.recv(1)
                opened.wait()  # all 50 are open before any carries the rest
                s.sendall(payloads[i][1:])
                rest = bytearray()
                while len(rest) < len(payloads[i]) - 1:
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        break
                    rest += chunk
                results[i] += bytes(rest)
            finally:
                s.close()

        def users():
            threads = [threading.Thread(target=user, args=(i,)) for i in range(50)]
            for t in threads:
                t.start()
            opened.wait()
            return threads

        threads = yield in_thread(users)
        self.assertEqual(len(self.server.registry.channels), 50)
        yield in_thread(lambda: [t.join(60) for t in threads])
        for i in range(50):
            self.assertTrue(results[i] == payloads[i], f"channel {i} differs")

    @inlineCallbacks
    def test_duplicate_mapping_refused(self):
        """A second POST for a mapped port is a 409 with the original wording; the first stays."""
        public = yield self.running.map(Backend(Echo).listen(self))
        code, body = yield self.running.api("POST", "/port_mapper", port=str(public),
                                            mapper_ip="127.0.0.1", mapper_port="9")
        self.assertEqual((code, body), (409, {
            "result": "failed",
            "reason": f"Create port mapper failed,port:{public} already exists"}))
        code, mappings = yield self.running.api("GET", "/port_mapper")
        self.assertNotEqual(mappings[str(public)]["port"], 9)

    @inlineCallbacks
    def test_port_in_use_refused(self):
        """POST for a port another program holds is a 409 with the OS's reason, and maps nothing."""
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            port = holder.getsockname()[1]
            code, body = yield self.running.api("POST", "/port_mapper", port=str(port),
                                                mapper_ip="127.0.0.1", mapper_port="9")
        self.assertEqual(code, 409)
        self.assertIn("in use", body["reason"])
        code, mappings = yield self.running.api("GET", "/port_mapper")
        self.assertEqual(mappings, {})

    @inlineCallbacks
    def test_delete_stops_the_port(self):
        """DELETE /port_mapper closes the public port and its open channels."""
        public = yield self.running.map(Backend(Echo).listen(self))
        user = yield in_thread(connect, public)
        self.addCleanup(user.close)
        yield in_thread(lambda: (user.sendall(b"x"), user.recv(1)))
        code, body = yield self.running.api("DELETE", "/port_mapper", port=str(public))
        self.assertEqual((code, body), (200, {"result": "success"}))
        self.assertEqual((yield in_thread(recv_or_reset, user)), b"")
        with self.assertRaises(ConnectionRefusedError):
            yield in_thread(connect, public)
        code, body = yield self.running.api("GET", "/channel_history")
        self.assertEqual(body["history"][0]["close_reason"], "mapping deleted")

    @inlineCallbacks
    def test_reader_that_never_reads_bounds_server_memory(self):
        """A user that never reads while the target sends 200 MiB holds at most a window in the server."""
        backend = Backend(Source)
        public = yield self.running.map(backend.listen(self))
        user = socket.socket()
        user.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.addCleanup(user.close)
        yield in_thread(user.connect, ("127.0.0.1", public))
        yield wait_for(lambda: self.server.registry.channels, what="the channel")
        (channel,) = self.server.registry.channels.values()
        user_end = channel.user
        ch = user_end.link.connection.channels[user_end.channel_id]
        # The stall: the user's socket buffer is full and the client ran out of credit.
        yield wait_for(lambda: ch.local_full and ch.window.pending > 0, what="the stall")
        # At most the channel's window plus what the transport holds before it
        # pauses and the one read that crossed that mark.
        self.assertLessEqual(ch.window.size, self.server.settings.max_window)
        bound = ch.window.size + 2 * READ_SIZE
        for _ in range(30):
            self.assertLessEqual(buffered(channel.user.transport), bound)
            yield wait_for(lambda: True)
            yield in_thread(lambda: None)
        (source,) = backend.connections
        self.assertLess(source.sent, 20 * MiB)  # the target was held back too
        # Now read it all: every byte arrives, in order.
        got = yield in_thread(_read_count_and_check, user, Source.total, Source.chunk)
        self.assertEqual(got, Source.total)


def _read_count_and_check(s, total, pattern):
    """Read ``total`` bytes of the repeating ``pattern``; return how many matched."""
    s.settimeout(60)
    count = 0
    while count < total:
        data = s.recv(1 << 20)
        if not data:
            break
        offset = count % len(pattern)
        expected = (pattern[offset:] + pattern * (1 + len(data) // len(pattern)))[:len(data)]
        if data != expected:
            return -count
        count += len(data)
    return count


class AuthTests(TestCase):
    """What a client with the wrong token can do: nothing."""

    timeout = 60

    @inlineCallbacks
    def test_wrong_token_carries_nothing(self):
        """A client with a wrong token is refused; a user of its mapping is cut off and the target sees nothing."""
        running = yield Running(self, self.mktemp()).start()
        refused = []

        def observe(event):
            if "wrong token" in str(event.get("reason", "")):
                refused.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        start_client(self, running.server.client_port, token="not-the-token")
        yield wait_for(lambda: refused, what="the refusal")
        backend = Backend(Echo)
        public = yield running.map(backend.listen(self))
        self.assertEqual(running.server.registry.clients, {})

        def user():
            s = connect(public)
            try:
                s.sendall(b"hello")
                return recv_all(s)
            except ConnectionResetError:
                return b""
            finally:
                s.close()

        self.assertEqual((yield in_thread(user)), b"")
        self.assertEqual(backend.connections, [])
        code, body = yield running.api("GET", "/channel_history")
        self.assertEqual(body["history"][0]["close_reason"], "no client")


class RestartTests(TestCase):
    """A restarted server brings its mappings back; the client comes back by itself."""

    timeout = 60

    @inlineCallbacks
    def test_restart(self):
        """After a restart on the same data dir, the mapping listens and carries data via the reconnected client."""
        data_dir = self.mktemp()
        first = yield Running(self, data_dir).start()
        client_port = first.server.client_port
        start_client(self, client_port)
        yield wait_for(lambda: first.server.registry.clients, what="the client")
        (old_id,) = first.server.registry.clients
        public = yield first.map(Backend(Echo).listen(self))
        self.assertEqual((yield in_thread(echo_roundtrip, public, b"before")), b"before")
        yield first.stop()

        second = yield Running(self, data_dir, client_port=client_port).start()
        code, mappings = yield second.api("GET", "/port_mapper")
        self.assertIn(str(public), mappings)
        yield wait_for(lambda: second.server.registry.clients, timeout=20, what="the client to come back")
        (new_id,) = second.server.registry.clients
        self.assertGreater(new_id, old_id)
        self.assertEqual((yield in_thread(echo_roundtrip, public, b"after")), b"after")
