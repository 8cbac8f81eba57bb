"""
End-to-end tests of channels that would otherwise never close, and of how
a failed open looks to the user, over loopback with a real server and
client in this process: users who send ``hi`` and close to a target that
never reads or closes (``--half-close-timeout``), a silent open channel
(``--idle-timeout``), and a target that refuses.
"""

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e import Backend, Running, connect, free_port, in_thread, start_client, wait_for

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
        seen_states = set()

        def observe():
            seen_states.update(c.state for c in self.server.registry.channels.values())

        def users():
            for _ in range(USERS):
                s = connect(public)
                s.sendall(b"hi")
                s.close()

        yield in_thread(users)
        yield wait_for(lambda: observe() or len(backend.connections) == USERS,
                       what="every target connection")
        yield wait_for(lambda: observe() or not self.server.registry.channels,
                       what="the channels to time out")
        self.assertNotIn("WORKING", seen_states)  # the users had sent FIN
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


