"""
Tests of servers sharing their credentials live through one PostgreSQL: a
credential issued on any server links clients on every one within a
second, one revoked drops their links everywhere (``credential revoked``)
and is refused from then on, and a server that was away (stopped, or cut
off from the database) knows what changed meanwhile once it is back.

The announcement's format and the server's handling of what it hears
first, without sockets; then servers on loopback addresses on a database
of the run's private PostgreSQL (L{tests.pg}), with the nodes of
L{tests.test_cluster_sync}; those are skipped, saying why, where it is
absent.
"""

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.test.proto_helpers import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from portmapper.config import ServerSettings
from portmapper.server.core import PortMapperServer
from portmapper.server.registry import CREDENTIAL_REVOKED
from tests import pg
from tests.e2e import logged, start_client, wait_for
from tests.test_cluster_sync import PROPAGATION, ClusterCase

try:
    import psycopg

    from portmapper.server.store import notify
except ImportError:  # pg.database() skips the tests that need them, saying why
    psycopg = notify = None

log = Logger()

TAG = "office"


def row(credential_id, revoked=False, key=b"k"):
    """A credential as the store gives it."""
    return {"credential_id": credential_id, "name": "router-1", "tag": TAG,
            "public_key": key * 32, "created_time": 1.0, "last_used_time": None,
            "revoked": revoked}


class PayloadTests(SynchronousTestCase):
    """A credential's announcement carries its row, and fits in a NOTIFY."""

    def setUp(self):
        if notify is None:
            raise SkipTest("PostgreSQL tests skipped: psycopg is not installed.")

    def test_round_trip(self):
        """A row read from the database comes out of its announcement as the store loads it."""
        found = notify.credential((7, "x" * 64, "t" * 64, memoryview(b"\xff" * 32), 1.5, None, 1))
        self.assertEqual(found, {**row(7, revoked=True, key=b"\xff"), "name": "x" * 64,
                                 "tag": "t" * 64, "created_time": 1.5})
        text = notify.credential_payload(found)
        self.assertLess(len(text.encode()), 8000)
        self.assertEqual(notify.parse_credential(text), found)


class Link:
    """Stands in for a client's link: remembers why it was closed."""

    def __init__(self):
        self.closed = None

    def close(self, reason):
        self.closed = reason


class HeardTests(SynchronousTestCase):
    """What a server does with the credentials it hears of."""

    def setUp(self):
        self.server = PortMapperServer(ServerSettings(), MemoryReactorClock(), store=None)
        self.server.running = True

    def linked(self, credential_id):
        """A client session linked with ``credential_id``; its link."""
        session = self.server.registry.new_client("127.0.0.1", 40000, TAG, 0.0, Link())
        session.credential_id = credential_id
        return session

    def test_issued_then_revoked(self):
        """An issue heard is known at once; its revocation drops its links with the local reason."""
        self.server._credential_heard(row(3))
        self.assertEqual(list(self.server.credentials()), [3])
        self.assertIs(self.server.findCredential(b"k" * 32), self.server.registry.credentials[3])
        mine, other = self.linked(3), self.linked(None)
        self.server._credential_heard(row(3, revoked=True))
        self.assertTrue(self.server.registry.credentials[3].revoked)
        self.assertEqual(self.server.credentials(), {})
        self.assertEqual((mine.close_reason, mine.link.closed),
                         (CREDENTIAL_REVOKED, "credential revoked"))
        self.assertEqual((other.close_reason, other.link.closed), (None, None))

    def test_reloaded(self):
        """A reload adds what is new (revoked ones too) and revokes what was revoked meanwhile."""
        self.server._credential_heard(row(1))
        session = self.linked(1)
        self.server._credentials_reloaded([row(1, revoked=True), row(2, key=b"b"),
                                           row(3, revoked=True, key=b"c")])
        self.assertEqual(list(self.server.credentials()), [2])
        self.assertTrue(self.server.findCredential(b"c" * 32).revoked)
        self.assertEqual(session.link.closed, "credential revoked")

    def test_heard_twice(self):
        """Hearing an issue again keeps the credential as it is (its last use, its object)."""
        self.server._credential_heard(row(1))
        known = self.server.registry.credentials[1]
        known.last_used_time = 5.0
        self.server._credentials_reloaded([row(1)])
        self.assertIs(self.server.registry.credentials[1], known)
        self.assertEqual(known.last_used_time, 5.0)

    def test_not_after_stop(self):
        """A server that has stopped applies nothing it hears."""
        self.server.running = False
        self.server._credential_heard(row(1))
        self.server._credentials_reloaded([row(2)])
        self.assertEqual(self.server.registry.credentials, {})


# -- servers on one PostgreSQL ------------------------------------------------

class CredentialCase(ClusterCase):
    """Nodes on one database, and a client of a credential linked to one of them."""

    def setUp(self):
        super().setUp()  # skips where PostgreSQL is absent
        self.refusals = logged(self, "tunnel link to {peer} refused", "reason")

    @inlineCallbacks
    def issue(self, node, *others):
        """POST /credential on ``node``, known to ``others`` once this fires: (id, token, seconds it took)."""
        sent = reactor.seconds()
        code, body = yield node.api("POST", "/credential", tag=TAG, name="router-1")
        self.assertEqual(code, 200, body)
        credential_id = body["credential"]["credential_id"]
        yield wait_for(lambda: all(credential_id in other.server.credentials()
                                   for other in others), timeout=5, what="the credential")
        return credential_id, body["credential"]["token"], reactor.seconds() - sent

    @inlineCallbacks
    def link(self, node, credential_id, token):
        """A client with ``token`` linked to ``node`` alone: its client id there."""
        start_client(self, None, "--server", f"tcp:host={node.host}:port={node.server.client_port}",
                     "--tag", TAG, token=token)
        yield wait_for(lambda: self.linked(node, credential_id), what="the client to link")
        return self.linked(node, credential_id)[0]

    def linked(self, node, credential_id):
        """The ids of the clients linked to ``node`` with ``credential_id``."""
        return [client_id for client_id, session in node.server.registry.clients.items()
                if session.credential_id == credential_id]

    @inlineCallbacks
    def assert_dropped(self, node, client_id):
        """``node``'s client history says ``credential revoked``, and a new link there is refused."""
        deadline = reactor.seconds() + 10
        while True:  # history is written in batches
            code, body = yield node.api("GET", "/client_history", client_id=str(client_id))
            if body["history"] or reactor.seconds() > deadline:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([r["close_reason"] for r in body["history"]], [CREDENTIAL_REVOKED])
        yield wait_for(lambda: CREDENTIAL_REVOKED in self.refusals, timeout=20,
                       what="the client's next link to be refused")
        self.assertEqual(node.server.registry.clients, {})
        code, credentials = yield node.api("GET", "/credential")
        self.assertEqual(code, 200)
        self.assertNotIn(str(self.credential_id), credentials)


class LiveTests(CredentialCase):
    """Issued or revoked on one node, on the others within a second."""

    @inlineCallbacks
    def test_issued_links_elsewhere(self):
        """A credential issued on A is known to B and C within a second, and links a client to B."""
        a, b, c = yield self.nodes("127.0.0.2", "127.0.0.3", "127.0.0.4")
        self.credential_id, token, took = yield self.issue(a, b, c)
        log.info("a credential issued on one node was known to two others {took:.3f} s after"
                 " the POST was sent", took=took)
        self.assertLess(took, PROPAGATION)
        started = reactor.seconds()
        client_id = yield self.link(b, self.credential_id, token)
        log.info("a client linked to another node with it {took:.3f} s after it was started",
                 took=reactor.seconds() - started)
        code, credentials = yield b.api("GET", "/credential")
        self.assertEqual(credentials[str(self.credential_id)]["client_ids"], [client_id])
        self.assertEqual(self.refusals, [])  # linked at its first try

    @inlineCallbacks
    def test_revoked_drops_elsewhere(self):
        """A credential revoked on A drops its client's link to B within a second; B refuses it after."""
        a, b = yield self.nodes("127.0.0.2", "127.0.0.3")
        self.credential_id, token, _ = yield self.issue(a, b)
        client_id = yield self.link(b, self.credential_id, token)
        sent = reactor.seconds()
        code, body = yield a.api("DELETE", "/credential", credential_id=str(self.credential_id))
        self.assertEqual((code, body), (200, {"result": "success"}))
        yield wait_for(lambda: client_id not in b.server.registry.clients, timeout=5,
                       what="B to drop the link")
        took = reactor.seconds() - sent
        log.info("a credential revoked on one node dropped its client's link to another"
                 " {took:.3f} s after the DELETE was sent", took=took)
        self.assertLess(took, PROPAGATION)
        yield self.assert_dropped(b, client_id)
        code, body = yield b.api("DELETE", "/credential", credential_id=str(self.credential_id))
        self.assertEqual(code, 404, body)


class AwayTests(CredentialCase):
    """What a node missed while away is applied when it is back."""

    @inlineCallbacks
    def test_cut_off_then_back(self):
        """B, cut off while A issues one credential and revokes another, has both right once back."""
        url_b = self.url + "?application_name=portmapper_node_b"
        (a,) = yield self.nodes("127.0.0.2")
        (b,) = yield self.nodes("127.0.0.3", url=url_b)
        (witness,) = yield self.nodes("127.0.0.4")
        self.credential_id, token, _ = yield self.issue(a, b)
        client_id = yield self.link(b, self.credential_id, token)

        lost = logged(self, "lost the database", "why")
        self.allow_connections(False)
        self.addCleanup(self.allow_connections, True)
        self.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                 " WHERE application_name = 'portmapper_node_b'")
        yield wait_for(lambda: not self.sql("SELECT pid FROM pg_stat_activity"
                                            " WHERE application_name = 'portmapper_node_b'")
                       and lost, timeout=10, what="B to be cut off")
        new, _, _ = yield self.issue(a, witness)
        code, body = yield a.api("DELETE", "/credential", credential_id=str(self.credential_id))
        self.assertEqual(code, 200, body)
        yield wait_for(lambda: self.credential_id not in witness.server.credentials(),
                       what="the witness to hear the revocation")
        # Announced to every listener by now: B, not listening, missed both.
        self.assertNotIn(new, b.server.registry.credentials)
        self.assertIn(client_id, b.server.registry.clients)

        self.allow_connections(True)
        yield wait_for(lambda: client_id not in b.server.registry.clients
                       and new in b.server.credentials(), timeout=10, what="B to reload")
        yield self.assert_dropped(b, client_id)

    @inlineCallbacks
    def test_restarted(self):
        """B, stopped while A issues one credential and revokes another, starts with both right."""
        a, b = yield self.nodes("127.0.0.2", "127.0.0.3")
        self.credential_id, _, _ = yield self.issue(a, b)
        yield b.stop()
        new, token, _ = yield self.issue(a)
        code, body = yield a.api("DELETE", "/credential", credential_id=str(self.credential_id))
        self.assertEqual(code, 200, body)
        (b,) = yield self.nodes("127.0.0.3")
        self.assertEqual(list(b.server.credentials()), [new])
        self.assertTrue(b.server.registry.credentials[self.credential_id].revoked)
        yield self.link(b, new, token)

    def sql(self, script):
        """Rows of ``script``, on the server's own database (the test's may refuse connections)."""
        with psycopg.connect(pg.server().url("postgres"), autocommit=True) as conn:
            cursor = conn.execute(script)
            return cursor.fetchall() if cursor.description else None

    def allow_connections(self, allowed):
        """Let new connections to the test's database be made, or refuse them all."""
        self.sql(f"ALTER DATABASE {self.url.rsplit('/', 1)[1]}"
                 f" ALLOW_CONNECTIONS {'true' if allowed else 'false'}")
