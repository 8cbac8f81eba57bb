"""
End-to-end tests of what would otherwise never close, and of how a failed
open looks to the user, over loopback with a real server (and client) in
this process: users who send ``hi`` and close to a target that never reads
or closes (``--half-close-timeout``), a silent open channel
(``--idle-timeout``), a target that refuses, and a raw-socket client that
pings but never reads (or reads slowly) while users send through it.
"""

import os
import socket
import threading
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from portmapper.protocol import frames
from portmapper.protocol.connection import CLIENT, Connection, OpenRequested, Welcomed
from portmapper.transport.directwrite import queued_bytes
from tests.e2e import (
    TOKEN, Backend, Running, connect, free_port, in_thread, recv_exactly, start_client, wait_for,
)

USERS = 100
FD_SLACK = 5  # descriptors the reactor or the store may open on their own meanwhile


class Stuck(Protocol):
    """A target that accepts and then never reads, writes or closes."""

    def connectionMade(self):
        self.transport.pauseProducing()


def open_fds(backend=None):
    """This process's open descriptors, but for those of ``backend``'s connections."""
    fds = set(os.listdir("/proc/self/fd"))
    if backend is not None:
        # The stuck target never reads, so never sees the client's reset:
        # its sockets stay open here, where a real target is another process.
        fds -= {str(c.transport.fileno()) for c in backend.connections}
    return len(fds)


def reset_or_data(s):
    """What the user's socket gives: "reset", "eof", or the bytes read first."""
    try:
        data = s.recv(1024)
    except ConnectionResetError:
        return "reset"
    return data or "eof"


@inlineCallbacks
def wait_for_deferred(check, timeout=10.0, what="condition"):
    """Poll ``check`` (a Deferred of a bool) until it is true, failing after ``timeout`` s."""
    deadline = reactor.seconds() + timeout
    while not (yield check()):
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        yield deferLater(reactor, 0.05, lambda: None)


class TimeoutTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def startWith(self, *server_args):
        self.running = yield Running(self, self.mktemp(), extra=server_args).start()
        self.server = self.running.server
        start_client(self, self.server.client_port)
        yield wait_for(lambda: self.server.registry.clients, what="the client")

    @inlineCallbacks
    def history(self, public):
        code, body = yield self.running.api("GET", "/channel_history", port=str(public),
                                            limit="1000")
        return [row["close_reason"] for row in body["history"]]

    @inlineCallbacks
    def test_lingeringHalfClosedChannelsClosed(self):
        """100 users' hi+close to a target that never reads or closes: all closed, fds given back."""
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("counting open descriptors needs /proc/self/fd")
        yield self.startWith("--half-close-timeout", "1", "--sample-interval", "0.2")
        backend = Backend(Stuck)
        public = yield self.running.map(backend.listen(self))
        before = open_fds()

        def users():
            for _ in range(USERS):
                s = connect(public)
                s.sendall(b"hi")
                s.close()

        def working():
            return [c for c in self.server.registry.channels.values() if c.state == "WORKING"]

        yield in_thread(users)
        yield wait_for(lambda: len(backend.connections) == USERS, what="every target connection")
        # A channel may be WORKING for a moment (its OPEN_OK read before its
        # user's FIN); once the FIN is read it is half-closed, never WORKING again.
        yield wait_for(lambda: not working(), what="every channel half-closed")
        yield wait_for(lambda: not self.server.registry.channels, what="the channels to time out")
        code, body = yield self.running.api("GET", "/channel")
        self.assertEqual(body, {str(public): []})
        reasons = []

        @inlineCallbacks
        def all_recorded():
            reasons[:] = yield self.history(public)
            return len(reasons) == USERS

        yield wait_for_deferred(all_recorded, what="100 history rows")
        self.assertEqual(set(reasons), {"timeout"})
        yield wait_for(lambda: open_fds(backend) <= before + FD_SLACK,
                       what=f"open descriptors back to {before} (+{FD_SLACK})")

    @inlineCallbacks
    def test_idleChannelClosed(self):
        """A user and target both silent: the channel (keepalive on) closes, the user is reset, idle timeout."""
        yield self.startWith("--idle-timeout", "1", "--sample-interval", "0.2")
        backend = Backend(Stuck)
        public = yield self.running.map(backend.listen(self))
        user = yield in_thread(connect, public)
        self.addCleanup(user.close)
        yield wait_for(lambda: backend.connections, what="the target connection")
        [channel] = self.server.registry.channels.values()
        handle = channel.user.transport.getHandle()  # the public socket has TCP keepalive
        self.assertEqual(handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual((yield in_thread(reset_or_data, user)), "reset")
        yield wait_for(lambda: not self.server.registry.channels, what="the channel to close")
        reasons = []

        @inlineCallbacks
        def recorded():
            reasons[:] = yield self.history(public)
            return bool(reasons)

        yield wait_for_deferred(recorded, what="the history row")
        self.assertEqual(reasons, ["idle timeout"])

    @inlineCallbacks
    def test_refusedOpenResetsUser(self):
        """A target the client cannot connect to: the user's connection is reset, not ended cleanly."""
        yield self.startWith()
        public = yield self.running.map(free_port())

        def user():
            with connect(public) as s:
                s.sendall(b"hello")
                return reset_or_data(s)

        self.assertEqual((yield in_thread(user)), "reset")




# -- a client that pings but does not read -----------------------------------------

LINK_USERS = 10
PING_INTERVAL = 0.5
PING_TIMEOUT = 1.5
SLACK = 1.0  # for the reactor and threads on a busy machine


class RawClient:
    """
    A tunnel client on a blocking socket, its bytes made by the core's client
    Connection: it completes the handshake and accepts the channels the
    server opens (it has no targets), then reads only as its test says.
    """

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", port))
        self.conn = Connection(CLIENT, time.monotonic(), token=TOKEN, tag="default",
                               window=16 * 2**20)
        self.conn.start()
        self.read = 0  # bytes read after the channels were accepted
        self.welcomed = threading.Event()
        self.accepted = threading.Event()
        self.stop = threading.Event()

    def _exchange(self):
        """Read once, feed the core, send what it answers; its events."""
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the server closed the link")
        self.conn.receive_data(data, time.monotonic())
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(b"".join(out))
        return self.conn.events()

    def accept(self, count):
        """Handshake, then accept ``count`` channels the server opens."""
        opened = 0
        while opened < count:
            for event in self._exchange():
                if isinstance(event, Welcomed):
                    self.welcomed.set()
                elif isinstance(event, OpenRequested):
                    self.conn.accept_channel(event.channel_id)
                    self.sock.sendall(b"".join(self.conn.data_to_send()))
                    opened += 1
        self.accepted.set()

    def run(self, read_size, count):
        """Accept ``count`` channels; then ping every 0.1 s, reading ``read_size`` bytes each time."""
        try:
            self.accept(count)
            while not self.stop.wait(0.05):
                self.sock.sendall(frames.encode(frames.PING, 0, b"\0" * 8))
                if read_size:
                    self.read += len(self.sock.recv(read_size))
        except OSError:
            pass  # the server dropped us
        finally:
            self.sock.close()


def upload(port, size, results, until_end=False):
    """
    A user sending ``size`` bytes to its target (then, ``until_end``, waiting
    for its connection to end); appends "cut" to ``results`` if it was
    reset, else "sent" or, waiting, "ended".
    """
    try:
        with connect(port) as s:
            s.sendall(b"u" * size)
            results.append("ended" if until_end and not s.recv(1) else "sent")
    except OSError:
        results.append("cut")


class NonReadingClientTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.running = yield Running(self, self.mktemp(), extra=[
            "--ping-interval", str(PING_INTERVAL), "--ping-timeout", str(PING_TIMEOUT)]).start()
        self.server = self.running.server
        self.public = yield self.running.map(free_port())
        self.raw = RawClient(self.server.client_port)
        self.threads = []
        self.addCleanup(self.joinThreads)

    def thread(self, target, *args):
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def joinThreads(self):
        self.raw.stop.set()
        self.raw.sock.close()
        for t in self.threads:
            t.join(20)

    @inlineCallbacks
    def startUploads(self, read_size, size, until_end=False):
        """The raw client up, LINK_USERS users uploading ``size`` bytes each; its link once full."""
        self.thread(self.raw.run, read_size, LINK_USERS)
        yield wait_for(self.raw.welcomed.is_set, what="the handshake")
        self.results = []
        for _ in range(LINK_USERS):
            self.thread(upload, self.public, size, self.results, until_end)
        yield wait_for(self.raw.accepted.is_set, what="the channels")
        [session] = self.server.registry.clients.values()
        yield wait_for(lambda: session.link._full, what="the link's write buffer to fill")
        return session

    @inlineCallbacks
    def test_nonReadingClientDropped(self):
        """A client that pings but never reads, under 10 uploading users: dropped within ping_timeout+interval."""
        yield self.startUploads(read_size=0, size=8 * 2**20, until_end=True)
        full_at = reactor.seconds()
        yield wait_for(lambda: not self.server.registry.clients,
                       timeout=PING_TIMEOUT + PING_INTERVAL + SLACK, what="the link to be dropped")
        self.assertLessEqual(reactor.seconds() - full_at, PING_TIMEOUT + PING_INTERVAL + SLACK)
        yield wait_for(lambda: len(self.results) == LINK_USERS, what="the users to be cut")
        self.assertEqual(self.results, ["cut"] * LINK_USERS)

    @inlineCallbacks
    def test_slowReaderKept(self):
        """A client reading 100 KB/s keeps its link, full far longer than ping_timeout."""
        session = yield self.startUploads(read_size=5000, size=2**20)
        read_before = self.raw.read
        emptied = []

        def watch():
            if not session.link._full:
                emptied.append(reactor.seconds())

        until = reactor.seconds() + 2 * (PING_TIMEOUT + PING_INTERVAL)
        while reactor.seconds() < until:  # bounded: 4 s of polling
            watch()
            self.assertIn(session, self.server.registry.clients.values())
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(emptied, [])  # full all along: pause time alone would have dropped it
        self.assertGreater(self.raw.read - read_before, 100_000)  # and it moved


class QueuedBytesTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_countsWhatThePeerHasNotTaken(self):
        """queued_bytes counts written bytes a non-reading peer has not taken, and 0 once it reads."""
        self.assertIsNone(queued_bytes(StringTransport()))
        backend = Backend(Protocol)
        port = backend.listen(self)
        peer = yield in_thread(connect, port)
        self.addCleanup(peer.close)
        yield wait_for(lambda: backend.connections, what="the connection")
        transport = backend.connections[0].transport
        size = 8 * 2**20
        transport.write(b"q" * size)
        self.assertGreater(queued_bytes(transport), 0)
        self.assertLessEqual(queued_bytes(transport), size)
        got = yield in_thread(lambda: len(recv_exactly(peer, size)))
        self.assertEqual(got, size)
        yield wait_for(lambda: queued_bytes(transport) == 0, what="the queue to empty")
