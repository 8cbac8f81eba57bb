"""
Tests of servers sharing their mappings live through one PostgreSQL: a
change made on any server applied on every one (LISTEN/NOTIFY, and a full
reconcile when a server (re)connects), a port taken on one server a 409 on
all, and a server whose database is unreachable carrying its users on,
answering writes 503 and keeping its history until the database is back.

Pure parts first, on a ``task.Clock`` or a ``MemoryReactorClock``: the
reconcile's differences, the history retry buffer, the versions that order
changes heard.  Then servers in this process, each on its own loopback
address (127.0.0.2, .3 ...), on a database of the run's private PostgreSQL
(L{tests.pg}); those are skipped, saying why, where it is absent.
"""

import os
import shutil
import socket
import tempfile
from urllib.parse import quote, unquote


from twisted.internet import reactor
from twisted.internet.defer import fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger, globalLogPublisher
from twisted.test.proto_helpers import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portmapper.config import ServerSettings
from portmapper.errors import DatabaseUnavailable, UnknownMapping
from portmapper.server import tap as server_tap
from portmapper.server.core import PortMapperServer, differences
from portmapper.server.registry import IdBlocks
from portmapper.server.store import notify, sqlite
from tests import pg
from tests.e2e import (
    TOKEN, Backend, Echo, Running, accepts, in_thread, recv_exactly, start_client, wait_for,
)
from tests.test_store import channel

log = Logger()

#: How soon a change made on one server must listen on the others.
PROPAGATION = 1.0


def logged(testcase, prefix):
    """The log events (dicts) whose format starts with ``prefix``, as they come."""
    found = []

    def observe(event):
        if (event.get("log_format") or "").startswith(prefix):
            found.append(event)

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return found


# -- pure parts ---------------------------------------------------------------

class DifferencesTests(SynchronousTestCase):

    def test_differences(self):
        """Ports only live, only stored or stored otherwise come out with the stored state; equal ones do not."""
        a, b = ("10.0.0.1", 22, "lab", {}), ("10.0.0.2", 80, "web", {"rate_limit": "5"})
        live = {5000: a, 5001: a, 5002: a}
        stored = {5001: a, 5002: b, 5003: b}
        self.assertEqual(differences(live, stored), [(5000, None), (5002, b), (5003, b)])
        self.assertEqual(differences(stored, stored), [])


class FlakyStore(sqlite.Store):
    """A store whose thread answers at once: history writes fail while ``down`` is set."""

    def __init__(self, clock, **kwargs):
        super().__init__("unused.sqlite3", clock, flush_delay=0.5, **kwargs)
        self._running = True  # no thread, no file
        self.down = None
        self.tries = 0
        self.written = []

    def _defer(self, f, *args):
        if f == self._write:
            self.tries += 1
            if self.down is not None:
                return fail(DatabaseUnavailable(self.down))
            self.written.append([row["channel_id"] for row in args[0].channels])
        return succeed(None)

    def _retryable(self, failure):
        return failure.check(DatabaseUnavailable) is not None


class RetryBufferTests(SynchronousTestCase):
    """History that could not be written waits, bounded, and is written when the database is back."""

    def setUp(self):
        self.clock = Clock()
        self.store = FlakyStore(self.clock)
        self.store.down = "The database postgresql:///x is unreachable: connection refused."

    def test_kept_and_retried(self):
        """A failed batch is kept in order, tried again every retry_delay seconds, written once back."""
        waits = logged(self, "{why} History waits")
        back = logged(self, "{path} is reachable again")
        for i in (1, 2, 3):
            self.store.record_channel(channel(i))
        self.clock.advance(0.5)
        self.assertEqual(self.store.tries, 1)
        self.store.record_channel(channel(4))
        self.clock.advance(0.99)  # nothing before the retry is due, even with rows pending
        self.assertEqual(self.store.tries, 1)
        self.clock.advance(0.01)
        self.assertEqual(self.store.tries, 2)
        self.assertEqual([event["why"] for event in waits], [self.store.down])  # one line
        self.store.down = None
        self.clock.advance(self.store.retry_delay)
        self.assertEqual(self.store.written, [[1, 2, 3, 4]])
        self.assertEqual(len(back), 1)
        self.store.record_channel(channel(5))  # and on as usual
        self.clock.advance(0.5)
        self.assertEqual(self.store.written, [[1, 2, 3, 4], [5]])

    def test_overflow_counted(self):
        """Beyond the bound the oldest waiting records are dropped, counted and logged with the count."""
        dropped = logged(self, "History database is not keeping up")
        self.store.max_pending = 10
        for i in range(1, 9):
            self.store.record_channel(channel(i))
        self.clock.advance(0.5)  # 8 fail and wait
        for i in range(9, 14):
            self.store.record_channel(channel(i))
        self.clock.advance(self.store.retry_delay)  # 13 > 10: the oldest go
        self.assertEqual(self.store.dropped, 4)
        self.assertEqual([event["count"] for event in dropped], [2, 2])  # a tenth at a time
        self.store.down = None
        self.clock.advance(self.store.retry_delay)
        self.assertEqual(self.store.written, [list(range(5, 14))])

    def test_sqlite_not_retried(self):
        """A store that does not retry (SQLite) logs a failed batch as lost, as before."""
        self.store._retryable = lambda failure: False
        self.store.record_channel(channel(1))
        self.clock.advance(0.5)
        self.clock.advance(10)
        self.assertEqual(self.store.tries, 1)
        self.assertEqual(len(self.flushLoggedErrors(DatabaseUnavailable)), 1)


class OutageLogTests(SynchronousTestCase):
    """What the database being unreachable costs the log: one sentence, never a traceback."""

    def test_id_block_one_line(self):
        """Ids that could not be reserved are one warning with the database's sentence."""
        why = "The database postgresql:///x is unreachable: connection refused."
        answers = [succeed(1)] + [fail(DatabaseUnavailable(why)) for _ in range(3)] + [succeed(9)]
        blocks = IdBlocks("channel ids", lambda size: answers.pop(0), size=4)
        warned = logged(self, "Could not reserve")
        blocks.start()
        self.assertEqual([blocks.take(), blocks.take()], [1, 2])  # half used: the next is asked for
        self.assertEqual([blocks.take(), blocks.take()], [3, 4])  # asked again at each take
        self.assertEqual([str(event["why"]) for event in warned], [why])  # one line
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertIsNone(blocks.take())  # used up: this take asks again, and the database is back
        self.assertEqual(blocks.take(), 9)


class SharedStore:
    """Stands in for a shared store: mapping writes answer growing versions."""

    def __init__(self):
        self.version = 100
        self.fail_with = None

    def _write(self, *args):
        if self.fail_with is not None:
            return fail(self.fail_with)
        self.version += 1
        return succeed(self.version)

    insert_mapping = update_mapping = remove_mapping = _write


class HeardTests(SynchronousTestCase):
    """Changes heard from the database are applied in version order, never undoing newer ones."""

    A = ("10.0.0.1", 22, "lab", {})
    B = ("10.0.0.2", 23, "lab", {"rate_limit": "5"})

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.store = SharedStore()
        self.server = PortMapperServer(ServerSettings(), self.reactor, self.store)
        self.server.running = True

    def state(self, port):
        mapping = self.server.registry.mappings.get(port)
        return None if mapping is None else (mapping.target_ip, mapping.target_port, mapping.tag,
                                             mapping.policy_texts())

    def test_versions_order(self):
        """A change heard is applied if newer than what the server has; an older one is ignored."""
        self.server._heard(5000, 10, self.A)
        self.assertEqual(self.state(5000), self.A)
        self.assertEqual(self.reactor.tcpServers[-1][0], 5000)  # listening
        self.server._heard(5000, 9, self.B)
        self.assertEqual(self.state(5000), self.A)
        self.server._heard(5000, 12, self.B)
        self.assertEqual(self.state(5000), self.B)
        self.assertIsNotNone(self.server.registry.mappings[5000].limiter)
        self.server._heard(5000, 13, None)
        self.assertNotIn(5000, self.server.registry.mappings)
        self.server._heard(5000, 11, self.A)  # a creation older than the deletion
        self.assertNotIn(5000, self.server.registry.mappings)

    def test_own_change_not_undone(self):
        """A change this server made is not undone by an older one heard after it, nor redone by its own."""
        self.server._heard(5000, 10, self.A)
        self.successResultOf(self.server.change_mapping(5000, {"target_port": 23,
                                                                "target_ip": "10.0.0.2"}))
        made = self.store.version
        self.server._heard(5000, 50, ("10.0.0.9", 1, "lab", {}))  # committed before ours
        self.assertEqual(self.state(5000), ("10.0.0.2", 23, "lab", {}))
        self.server._heard(5000, made, ("10.0.0.2", 23, "lab", {}))  # our own
        self.assertEqual(self.state(5000), ("10.0.0.2", 23, "lab", {}))

    def test_failed_write_changes_nothing(self):
        """A PATCH or DELETE the database refuses changes nothing on this server."""
        self.server._heard(5000, 10, self.A)
        self.store.fail_with = DatabaseUnavailable("The database is unreachable: no.")
        self.failureResultOf(self.server.change_mapping(5000, {"target_port": 99}),
                             DatabaseUnavailable)
        self.failureResultOf(self.server.remove_mapping(5000), DatabaseUnavailable)
        self.assertEqual(self.state(5000), self.A)
        self.store.fail_with = UnknownMapping(5000)  # another server deleted it meanwhile
        self.failureResultOf(self.server.remove_mapping(5000), UnknownMapping)

    def test_reloaded(self):
        """A reload applies what differs (created, changed, deleted); a change heard after it is applied."""
        self.server._heard(5000, 10, self.A)
        self.server._heard(5001, 10, self.A)
        self.server._heard(5003, 10, self.A)
        self.server._reloaded([(5000, *self.A), (5001, *self.B), (5002, *self.B)])
        self.assertEqual([self.state(p) for p in (5000, 5001, 5002, 5003)],
                         [self.A, self.B, self.B, None])
        self.server._heard(5001, 5, self.A)  # committed after the reload read, though lower
        self.assertEqual(self.state(5001), self.A)

    def test_not_after_stop(self):
        """A server that has stopped applies nothing it hears."""
        self.server.running = False
        self.server._heard(5000, 10, self.A)
        self.server._reloaded([(5000, *self.A)])
        self.assertEqual(self.server.registry.mappings, {})


# -- servers on one PostgreSQL ------------------------------------------------

def free_port(*hosts):
    """A port free on every one of ``hosts`` now."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no port free on all of {hosts}")


def roundtrip(host, port, data):
    """Send ``data`` to ``host:port`` and read as much back (blocking: run it in a thread)."""
    with socket.create_connection((host, port), timeout=20) as s:
        s.sendall(data)
        got = recv_exactly(s, len(data))
    return got


class Node(Running):
    """A server as twistd builds it, on loopback address ``host``, on the database at ``url``."""

    def __init__(self, testcase, url, host):  # Running's, on another address
        self.testcase = testcase
        self.host = host
        options = server_tap.Options()
        options.parseOptions([
            "--client-port", f"tcp:0:interface={host}", "--admin", f"tcp:0:interface={host}",
            "--public-interface", host, "--data-dir", testcase.mktemp(), "--token", TOKEN,
            "--database", url,
        ])
        self.service = server_tap.build(options.settings, reactor)
        self.server = self.service.getServiceNamed("server")

    @inlineCallbacks
    def start(self):
        yield super().start()
        self.admin = self.admin.replace("127.0.0.1", self.host, 1)
        return self

    def mapping(self, port):
        """This node's live mapping of ``port`` (None if none)."""
        return self.server.registry.mappings.get(port)

    def listening(self, port):
        mapping = self.mapping(port)
        return mapping is not None and mapping.listening is not None


class ClusterCase(TestCase):
    timeout = 90

    def setUp(self):
        self.url = pg.database()

    @inlineCallbacks
    def nodes(self, *hosts, url=None):
        started = []
        for host in hosts:
            started.append((yield Node(self, url or self.url, host).start()))
        return started


class PropagationTests(ClusterCase):
    """A mapping made, changed or deleted on one node is applied on the others within a second."""

    @inlineCallbacks
    def test_post_patch_delete(self):
        """POST on A listens on B and C within a second; PATCH on A changes B's target; DELETE closes B's port."""
        a, b, c = yield self.nodes("127.0.0.2", "127.0.0.3", "127.0.0.4")
        port = free_port(a.host, b.host, c.host)
        posted = reactor.seconds()
        code, body = yield a.api("POST", "/port_mapper", port=str(port), mapper_ip="10.0.0.1",
                                 mapper_port="22", mapper_tag="lab")
        self.assertEqual(code, 200, body)
        yield wait_for(lambda: b.listening(port) and c.listening(port), timeout=5,
                       what="the mapping on B and C")
        took = reactor.seconds() - posted
        log.info("a mapping POSTed on one node listened on two others {took:.3f} s after the POST"
                 " was sent", took=took)
        self.assertLess(took, PROPAGATION)
        self.assertTrue((yield in_thread(accepts, b.host, port)))
        self.assertEqual(b.mapping(port).as_json(), {"ip": "10.0.0.1", "port": 22, "tag": "lab"})

        code, body = yield a.api("PATCH", "/port_mapper", port=str(port), mapper_port="23",
                                 rate_limit="5")
        self.assertEqual(code, 200, body)
        yield wait_for(lambda: b.mapping(port).target_port == 23, timeout=PROPAGATION,
                       what="the change on B")
        self.assertEqual(b.mapping(port).rate_limit, 5.0)
        self.assertIsNotNone(b.mapping(port).limiter)
        code, mappings = yield c.api("GET", "/port_mapper")
        self.assertEqual(mappings[str(port)], {"ip": "10.0.0.1", "port": 23, "tag": "lab",
                                               "rate_limit": 5.0})

        code, body = yield a.api("DELETE", "/port_mapper", port=str(port))
        self.assertEqual(code, 200, body)
        yield wait_for(lambda: b.mapping(port) is None and c.mapping(port) is None,
                       timeout=PROPAGATION, what="the deletion on B and C")
        self.assertFalse((yield in_thread(accepts, b.host, port)))

    @inlineCallbacks
    def test_malformed_notification_ignored(self):
        """A notification no server wrote is logged and skipped: no reconnect, the next change still heard."""
        ignored = logged(self, "ignored a malformed notification")
        lost = logged(self, "lost the database")
        a, b = yield self.nodes("127.0.0.2", "127.0.0.3")
        import psycopg  # present: setUp would have skipped
        with psycopg.connect(self.url, autocommit=True) as conn:
            for text in ("not json", "null", '{"port": 1}'):
                conn.execute("SELECT pg_notify(%s, %s)", (notify.CHANNEL, text))
        yield wait_for(lambda: len(ignored) == 6, what="three notifications ignored by each node")
        port = free_port(a.host, b.host)
        code, body = yield a.api("POST", "/port_mapper", port=str(port), mapper_ip="10.0.0.1",
                                 mapper_port="22")
        self.assertEqual(code, 200, body)
        yield wait_for(lambda: b.listening(port), timeout=PROPAGATION, what="the mapping on B")
        self.assertEqual([event["channel"] for event in ignored], [notify.CHANNEL] * 6)
        self.assertEqual(lost, [])

    @inlineCallbacks
    def test_concurrent_posts_one_wins(self):
        """Two nodes POSTing one port at the same moment: one 200, one 409; both end with the winner's."""
        a, b = yield self.nodes("127.0.0.2", "127.0.0.3")
        for attempt in range(5):
            port = free_port(a.host, b.host)
            answers = yield gatherResults([
                node.api("POST", "/port_mapper", port=str(port), mapper_ip="10.0.0.1",
                         mapper_port=str(target))
                for node, target in ((a, 1000 + attempt), (b, 2000 + attempt))])
            codes = sorted(code for code, _ in answers)
            self.assertEqual(codes, [200, 409], answers)
            [(_, lost)] = [answer for answer in answers if answer[0] == 409]
            self.assertEqual(lost, {"result": "failed", "reason":
                                    f"Create port mapper failed,port:{port} already exists"})
            [(_, won)] = [answer for answer in answers if answer[0] == 200]
            target = won["port_mapper"][str(port)]["port"]
            yield wait_for(lambda: all(node.listening(port) and node.mapping(port).target_port
                                       == target for node in (a, b)),
                           timeout=PROPAGATION, what="the winner's mapping on both")

    @inlineCallbacks
    def test_taken_port_stays_mapped(self):
        """A port a node cannot bind is logged in one sentence and kept; it listens after the next reconcile."""
        errors = logged(self, "port mapper on port {port} is not listening on this server")
        a, b = yield self.nodes("127.0.0.2", "127.0.0.3")
        port = free_port(a.host, b.host)
        squatter = socket.socket()
        squatter.bind((b.host, port))
        squatter.listen()
        try:
            code, body = yield a.api("POST", "/port_mapper", port=str(port), mapper_ip="10.0.0.1",
                                     mapper_port="22")
            self.assertEqual(code, 200, body)
            yield wait_for(lambda: errors, timeout=PROPAGATION, what="B's error")
            self.assertEqual(errors[0]["port"], port)
            self.assertIn("in use", errors[0]["why"])
            self.assertIsNone(b.mapping(port).listening)
        finally:
            squatter.close()
        b.server._reloaded([(port, "10.0.0.1", 22, "default", {})])
        yield wait_for(lambda: b.listening(port), timeout=5, what="B to listen after a reconcile")


class ReconcileTests(ClusterCase):
    """What a node missed while it was away is applied when it comes."""

    @inlineCallbacks
    def test_start_picks_up_changes(self):
        """Mappings made and deleted on A while B was down are as A has them once B starts again."""
        a, b = yield self.nodes("127.0.0.2", "127.0.0.3")
        gone, kept = free_port(a.host, b.host), free_port(a.host, b.host)
        for port in (gone, kept):
            code, body = yield a.api("POST", "/port_mapper", port=str(port), mapper_ip="10.0.0.1",
                                     mapper_port="22")
            self.assertEqual(code, 200, body)
        yield wait_for(lambda: b.listening(gone) and b.listening(kept), timeout=5, what="B")
        yield b.stop()
        made = free_port(a.host, b.host)
        yield a.api("DELETE", "/port_mapper", port=str(gone))
        yield a.api("PATCH", "/port_mapper", port=str(kept), mapper_port="80")
        yield a.api("POST", "/port_mapper", port=str(made), mapper_ip="10.0.0.2", mapper_port="23")
        (b,) = yield self.nodes("127.0.0.3")
        self.assertIsNone(b.mapping(gone))
        self.assertEqual(b.mapping(kept).target_port, 80)
        self.assertTrue(b.listening(made))
        self.assertTrue((yield in_thread(accepts, b.host, made)))


class OutageCase(ClusterCase):
    """Servers whose database goes away for a while, and comes back."""

    @inlineCallbacks
    def carried(self, node):
        """A client linked to ``node``, an echo backend mapped on it, a credential: (public port, credential id)."""
        start_client(self, None, "--server", f"tcp:host={node.host}:port={node.server.client_port}")
        yield wait_for(lambda: node.server.registry.clients, what="the client")
        echo = Backend(Echo).listen(self)
        port = free_port("127.0.0.2", "127.0.0.3")
        code, body = yield node.api("POST", "/port_mapper", port=str(port), mapper_ip="127.0.0.1",
                                    mapper_port=str(echo))
        self.assertEqual(code, 200, body)
        code, body = yield node.api("POST", "/credential", tag="office")
        self.assertEqual(code, 200, body)
        return port, body["credential"]["credential_id"]

    @inlineCallbacks
    def through_outage(self, node, port, credential_id):
        """
        With ``node``'s database unreachable: its API writes are refused, a
        user is carried on ``port``, whose history waits in memory.  Returns
        how many bytes the user sent.
        """
        yield self.assert_writes_refused(node, port, credential_id, node.server.store._path)
        data = os.urandom(1 << 20)
        self.assertEqual((yield in_thread(roundtrip, node.host, port, data)), data)
        yield wait_for(lambda: not node.server.registry.channels, what="the channel to close")
        yield wait_for(lambda: node.server.store.unreachable, what="a history write to fail")
        self.assertTrue(node.server.store._pending.channels)  # waiting in memory, for the retry
        return len(data)

    @inlineCallbacks
    def assert_writes_refused(self, node, port, credential_id, where):
        """Every write through ``node``'s API is a 503 naming the database; nothing changes."""
        before = node.mapping(port).as_json()
        for method, path, params in [
            ("POST", "/port_mapper", {"port": str(free_port(node.host)), "mapper_ip": "10.0.0.1",
                                      "mapper_port": "22"}),
            ("PATCH", "/port_mapper", {"port": str(port), "mapper_port": "1"}),
            ("DELETE", "/port_mapper", {"port": str(port)}),
            ("POST", "/credential", {"tag": "office"}),
            ("DELETE", "/credential", {"credential_id": str(credential_id)}),
        ]:
            code, body = yield node.api(method, path, **params)
            self.assertEqual(code, 503, (method, path, body))
            self.assertEqual(body["result"], "failed")
            self.assertTrue(body["reason"].startswith(f"The database {where} is unreachable: "),
                            body["reason"])
            self.assertTrue(body["reason"].endswith("."), body["reason"])
            self.assertNotIn("\n", body["reason"])
        self.assertEqual(node.mapping(port).as_json(), before)
        self.assertIn(credential_id, node.server.credentials())

    @inlineCallbacks
    def poll_history(self, node, size, timeout=20):
        """The history row of the channel that carried ``size`` bytes, once the API shows it."""
        deadline = reactor.seconds() + timeout
        while True:
            code, body = yield node.api("GET", "/channel_history")
            rows = [row for row in body.get("history", []) if row["recv_bytes"] == size]
            if code == 200 and rows:
                return rows[0]
            if reactor.seconds() > deadline:
                raise AssertionError(f"no history row of {size} bytes after {timeout} s: {body}")
            yield deferLater(reactor, 0.1, lambda: None)


class PartitionTests(OutageCase):
    """Node A alone loses the database (its socket path goes, its connections are cut)."""

    @inlineCallbacks
    def test_partitioned_node(self):
        """A carries users, answers writes 503, keeps history, and reconciles B's changes once back."""
        real = self.url.split("@", 1)[1].split(":", 1)[0]  # the quoted socket directory
        linkdir = tempfile.mkdtemp(prefix="portmapper-pg-link-")  # short: a socket path is <108
        self.addCleanup(shutil.rmtree, linkdir, True)
        link = os.path.join(linkdir, f".s.PGSQL.{pg.SOCKET_PORT}")
        os.symlink(os.path.join(unquote(real), f".s.PGSQL.{pg.SOCKET_PORT}"), link)
        dbname = self.url.rsplit("/", 1)[1]
        url_a = (f"postgresql://postgres@{quote(linkdir, safe='')}:{pg.SOCKET_PORT}/{dbname}"
                 "?application_name=portmapper_node_a")
        (a,) = yield self.nodes("127.0.0.2", url=url_a)
        (b,) = yield self.nodes("127.0.0.3")
        port, credential_id = yield self.carried(a)
        yield wait_for(lambda: b.listening(port), what="the mapping on B")

        os.remove(link)  # A cannot connect again, and its connections are cut
        killed = self.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                          " WHERE application_name = 'portmapper_node_a'")
        self.assertEqual(killed, 2)  # the store's and the follower's
        size = yield self.through_outage(a, port, credential_id)

        # B changes a mapping and makes one: A hears neither now.
        code, body = yield b.api("PATCH", "/port_mapper", port=str(port), mapper_port="1")
        self.assertEqual(code, 200, body)
        made = free_port(a.host, b.host)
        code, body = yield b.api("POST", "/port_mapper", port=str(made), mapper_ip="10.0.0.3",
                                 mapper_port="80")
        self.assertEqual(code, 200, body)
        self.assertNotEqual(a.mapping(port).target_port, 1)
        self.assertIsNone(a.mapping(made))

        os.symlink(os.path.join(unquote(real), f".s.PGSQL.{pg.SOCKET_PORT}"), link)
        yield wait_for(lambda: a.listening(made) and a.mapping(port).target_port == 1,
                       timeout=10, what="A to reconcile")
        row = yield self.poll_history(a, size)
        self.assertEqual(row["send_bytes"], size)
        code, body = yield a.api("POST", "/port_mapper", port=str(free_port(a.host, b.host)),
                                 mapper_ip="10.0.0.1", mapper_port="22")
        self.assertEqual(code, 200, body)

    def sql(self, script):
        import psycopg  # present: setUp would have skipped
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(script).fetchone()[0]


class StoppedDatabaseTests(OutageCase):
    """The database itself stops, then starts again, under two nodes."""

    def setUp(self):
        super().setUp()  # skips where PostgreSQL is absent
        self.pg = pg.PostgreSQL(pg.find_bindir())
        self.addCleanup(self.pg.stop)
        self.pg.start()
        self.url = self.pg.create_database()

    @inlineCallbacks
    def test_stopped_and_started(self):
        """Users carried while it is down, writes 503, history and other nodes' changes there once back."""
        a, b = yield self.nodes("127.0.0.2", "127.0.0.3")
        port, credential_id = yield self.carried(a)
        yield wait_for(lambda: b.mapping(port), what="B to hear of the mapping")

        yield in_thread(self.pg.halt)
        size = yield self.through_outage(a, port, credential_id)

        yield in_thread(self.pg.serve)
        row = yield self.poll_history(a, size)
        self.assertEqual(row["send_bytes"], size)
        self.assertIsNone(a.server.store.unreachable)
        code, body = yield b.api("PATCH", "/port_mapper", port=str(port), mapper_port="7")
        self.assertEqual(code, 200, body)
        yield wait_for(lambda: a.mapping(port).target_port == 7, timeout=10,
                       what="B's change on A")


