"""
End-to-end tests of what goes wrong: targets that refuse, targets a client
may not open, garbage on the client port, a client that vanishes
mid-transfer.  The server stays up through all of it.
"""

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.e2e import (
    Backend, Echo, Running, connect, echo_roundtrip, free_port, in_thread,
    recv_or_reset, send_garbage, start_client, wait_for,
)


class FailureTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def startWith(self, *client_args):
        self.running = yield Running(self, self.mktemp()).start()
        self.server = self.running.server
        start_client(self, self.server.client_port, *client_args)
        yield wait_for(lambda: self.server.registry.clients, what="the client")

    @inlineCallbacks
    def userIsCutOff(self, public):
        """Connect a user to ``public``; return the history row of its channel."""

        def user():
            # A failed open resets the user, and that may come before our
            # first bytes are even sent: a reset anywhere reads as nothing.
            try:
                s = connect(public)
            except ConnectionResetError:
                return b""
            try:
                s.sendall(b"hello")
                return recv_or_reset(s)
            except (ConnectionResetError, BrokenPipeError):
                return b""
            finally:
                s.close()

        self.assertEqual((yield in_thread(user)), b"")
        yield wait_for(lambda: not self.server.registry.channels, what="the channel to close")
        code, body = yield self.running.api("GET", "/channel_history", port=str(public))
        return body["history"][0]

    @inlineCallbacks
    def test_target_refuses(self):
        """A target that refuses the connection: the user is closed, history says target refused."""
        yield self.startWith()
        public = yield self.running.map(free_port())
        row = yield self.userIsCutOff(public)
        # The user's first bytes went with the open, as early data, unless the
        # refusal came back before they were sent.
        self.assertEqual((row["close_reason"], row["send_bytes"]), ("target refused", 0))
        self.assertIn(row["recv_bytes"], (0, len(b"hello")))

    @inlineCallbacks
    def test_allow_list_denies(self):
        """A client whose allow-list excludes the target never connects to it."""
        backend = Backend(Echo)
        target = backend.listen(self)
        yield self.startWith("--allow", f"127.0.0.1:{target + 1} 10.0.0.0/8:*")
        public = yield self.running.map(target)
        row = yield self.userIsCutOff(public)
        self.assertEqual(row["close_reason"], "target refused")
        self.assertEqual(backend.connections, [])

    @inlineCallbacks
    def test_garbage_on_client_port(self):
        """Random bytes on the client port end that connection only; the tunnel keeps working."""
        yield self.startWith()
        public = yield self.running.map(Backend(Echo).listen(self))

        answer = yield in_thread(send_garbage, self.server.client_port)
        self.assertTrue(answer.startswith(b"\x01"))  # our HELLO, then the link ends
        self.assertEqual(len(self.server.registry.clients), 1)
        self.assertEqual((yield in_thread(echo_roundtrip, public, b"still here")), b"still here")

    @inlineCallbacks
    def test_client_vanishes_mid_transfer(self):
        """A link lost mid-transfer closes its users' connections, recorded as client lost."""
        yield self.startWith()
        public = yield self.running.map(Backend(Echo).listen(self))
        user = yield in_thread(connect, public)
        self.addCleanup(user.close)
        yield in_thread(lambda: (user.sendall(b"x" * 100000), user.recv(1)))
        (session,) = self.server.registry.clients.values()
        session.link.transport.abortConnection()  # as if the client's machine went away
        self.assertEqual((yield in_thread(lambda: user.recv(1 << 20) and recv_or_reset(user))), b"")
        yield wait_for(lambda: not self.server.registry.channels, what="the channel to close")
        code, body = yield self.running.api("GET", "/channel_history")
        self.assertEqual(body["history"][0]["close_reason"], "client lost")
        yield wait_for(lambda: self.server.registry.clients, timeout=20, what="the client to return")
