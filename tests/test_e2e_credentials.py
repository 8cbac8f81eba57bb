"""
End-to-end tests of per-client credentials: a server and clients as
production runs them, on loopback.  A credential is issued through the
admin API, a client links with its token and carries a channel, a client
announcing another tag is refused, and revoking the credential drops the
link at once and refuses it from then on.
"""

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.e2e import (
    Backend, Echo, Running, connect, in_thread, logged, recv_exactly, start_client, wait_for,
)

TAG = "office"


class CredentialTests(TestCase):
    """A credential from the API links a client for its tag only, until it is revoked."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.data_dir = self.mktemp()
        self.running = yield Running(self, self.data_dir).start()
        self.server = self.running.server
        self.refusals = logged(self, "tunnel link to {peer} refused", "reason")
        code, body = yield self.running.api("POST", "/credential", tag=TAG, name="router-1")
        self.assertEqual(code, 200, body)
        self.credential_id = body["credential"]["credential_id"]
        self.token = body["credential"]["token"]

    def start(self, tag=TAG):
        return start_client(self, self.server.client_port, "--tag", tag, token=self.token)

    @inlineCallbacks
    def linked(self):
        """Start a client with the credential; wait until it is linked; its client id."""
        self.start()
        clients = self.server.registry.clients
        yield wait_for(lambda: len(clients) == 1, what="the client to link")
        return next(iter(clients))

    @inlineCallbacks
    def test_linksWithItsTag(self):
        """A client with the credential links, carries a channel, and the API shows its credential."""
        client_id = yield self.linked()
        code, clients = yield self.running.api("GET", "/client_connection")
        self.assertEqual(code, 200)
        self.assertEqual((clients[str(client_id)]["credential_id"], clients[str(client_id)]["tag"]),
                         (self.credential_id, TAG))
        code, credentials = yield self.running.api("GET", "/credential")
        listed = credentials[str(self.credential_id)]
        self.assertEqual((listed["name"], listed["tag"], listed["client_ids"]),
                         ("router-1", TAG, [client_id]))
        self.assertIsNotNone(listed["last_used_time"])
        self.assertNotIn(self.token, repr(credentials))

        public = yield self.running.map(Backend(Echo).listen(self), tag=TAG)
        user = yield in_thread(connect, public)
        self.addCleanup(user.close)
        user.sendall(b"hello")
        self.assertEqual((yield in_thread(recv_exactly, user, 5)), b"hello")

    @inlineCallbacks
    def test_otherTagRefused(self):
        """A client announcing a tag the credential is not for is refused, with the reason."""
        self.start(tag="lab")
        reason = f"this credential is for tag {TAG}, not lab"
        yield wait_for(lambda: reason in self.refusals, what="the refusal")
        self.assertEqual(self.server.registry.clients, {})

    @inlineCallbacks
    def test_revokeDropsAndRefuses(self):
        """Revoking drops the linked client at once (history says why) and refuses it from then on."""
        client_id = yield self.linked()
        code, body = yield self.running.api("DELETE", "/credential",
                                            credential_id=str(self.credential_id))
        self.assertEqual((code, body), (200, {"result": "success"}))
        # At once: by the time the API answered, the client is out of service.
        session = self.server.registry.clients.get(client_id)
        self.assertTrue(session is None or session.state == "CLOSED")
        yield wait_for(lambda: client_id not in self.server.registry.clients, timeout=5,
                       what="the link to drop")
        code, history = yield self.running.api("GET", "/client_history", client_id=str(client_id))
        self.assertEqual([row["close_reason"] for row in history["history"]], ["credential revoked"])

        # The client dials again, and is refused.
        yield wait_for(lambda: "credential revoked" in self.refusals, timeout=20,
                       what="the reconnection to be refused")
        self.assertEqual(self.server.registry.clients, {})
        code, credentials = yield self.running.api("GET", "/credential")
        self.assertEqual(credentials, {})
        code, body = yield self.running.api("DELETE", "/credential",
                                            credential_id=str(self.credential_id))
        self.assertEqual(code, 404)

    @inlineCallbacks
    def test_keptAcrossRestart(self):
        """After a restart, a credential still links its client, a revoked one is still refused,
        and ids go on after the highest one."""
        code, body = yield self.running.api("POST", "/credential", tag="lab")
        revoked, revoked_token = body["credential"]["credential_id"], body["credential"]["token"]
        yield self.running.api("DELETE", "/credential", credential_id=str(revoked))
        client_port = self.server.client_port
        yield self.running.stop()

        self.running = yield Running(self, self.data_dir, client_port=client_port).start()
        self.server = self.running.server
        client_id = yield self.linked()
        self.assertEqual(self.server.registry.clients[client_id].credential_id, self.credential_id)
        code, credentials = yield self.running.api("GET", "/credential")
        self.assertEqual(list(credentials), [str(self.credential_id)])
        code, body = yield self.running.api("POST", "/credential", tag="lab")
        self.assertEqual(body["credential"]["credential_id"], revoked + 1)

        start_client(self, client_port, "--tag", "lab", token=revoked_token)
        yield wait_for(lambda: "credential revoked" in self.refusals, what="the refusal")
        self.assertEqual(list(self.server.registry.clients), [client_id])
