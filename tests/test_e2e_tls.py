"""
End-to-end test of the link over TLS: the server listens on an ``ssl:``
endpoint, the client dials ``tls:`` and verifies the server's certificate.
The certificate is made for the test, for the name ``localhost``.
"""

import os

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.certs import write_certificate
from tests.e2e import (
    Backend, Echo, Running, echo_roundtrip, in_thread, logged, send_garbage, start_client,
    wait_for,
)


class TLSLinkTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def startServer(self):
        directory = self.mktemp()
        os.makedirs(directory)
        key, cert, self.trust = write_certificate(directory)
        self.other_trust = write_certificate(os.path.join(directory, "other"))[2]
        self.running = yield Running(self, os.path.join(directory, "data"), extra=[
            "--client-port", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        ]).start()
        self.server = self.running.server

    @inlineCallbacks
    def linkUp(self):
        """Start a client that trusts the server; fires with its service once both ends are linked."""
        client = start_client(self, self.server.client_port, *self.dial(self.trust))
        yield wait_for(lambda: self.server.registry.clients, what="the TLS client")
        link = client.link_factory.link
        yield wait_for(lambda: link.connection.established, what="the client to be welcomed")
        return client

    def dial(self, trust):
        return ["--server", f"tls:host=localhost:port={self.server.client_port}:trustRoots={trust}"]

    @inlineCallbacks
    def test_carries_data_over_tls(self):
        """A client that trusts the server's certificate links up over TLS and carries data exactly."""
        yield self.startServer()
        yield self.linkUp()
        public = yield self.running.map(Backend(Echo).listen(self))
        data = os.urandom(3 * 2**20)
        self.assertTrue((yield in_thread(echo_roundtrip, public, data)) == data)

    @inlineCallbacks
    def test_untrusted_server_refused(self):
        """A client that does not trust the server's certificate never links up."""
        yield self.startServer()
        failures = logged(self, "could not link up", "why")
        start_client(self, self.server.client_port, *self.dial(self.other_trust))
        yield wait_for(lambda: failures, what="the verification failure")
        self.assertIn("certificate verify failed", failures[0])
        self.assertEqual(self.server.registry.clients, {})

    @inlineCallbacks
    def test_bulk_both_ways_and_many_channels(self):
        """20 channels at once, 1 MiB each, echoed exactly over one TLS link."""
        yield self.startServer()
        yield self.linkUp()
        public = yield self.running.map(Backend(Echo).listen(self))
        blobs = [os.urandom(2**20) for _ in range(20)]
        echoed = yield gatherResults([in_thread(echo_roundtrip, public, b) for b in blobs])
        self.assertTrue(echoed == blobs)

    @inlineCallbacks
    def test_client_stopping_says_goodbye(self):
        """A stopping client's GOAWAYs (draining, then closing) arrive over TLS before its close."""
        yield self.startServer()
        draining = logged(self, "tunnel link to {peer} is draining", "reason")
        reasons = logged(self, "tunnel link to {peer} closed by the peer", "reason")
        client = yield self.linkUp()
        yield client.stopService()
        yield wait_for(lambda: not self.server.registry.clients, what="the client to go")
        self.assertEqual(draining, ["the client is stopping"])
        self.assertEqual(reasons, ["drained"])

    @inlineCallbacks
    def test_garbage_on_tls_port(self):
        """Bytes that are not TLS end that connection only; a real client still links up."""
        yield self.startServer()

        answer = yield in_thread(send_garbage, self.server.client_port)
        self.assertFalse(answer.startswith(b"\x01"))  # no frame in the clear
        yield self.linkUp()
        public = yield self.running.map(Backend(Echo).listen(self))
        self.assertEqual((yield in_thread(echo_roundtrip, public, b"still here")), b"still here")
