"""
Tests for the server as a node of a cluster: L{portmapper.server.nodes}
(heartbeat, fan-out), the C{nodes} table and per-node open notes of the
stores, C{GET /node}, the C{node} field and C{?scope=cluster} of the admin
API, and the C{--node-name}/C{--node-url} options.  The PostgreSQL tests
run on the run's private instance (L{tests.pg}) and are skipped, saying
why, where it is absent.
"""

import json
import os
import socket
import time

import treq
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH

from portmapper import __version__, validate
from portmapper.config import ServerSettings
from portmapper.server import nodes
from portmapper.server.admin import UNANSWERED, AdminAPI
from portmapper.server.core import PortMapperServer
from portmapper.server.registry import SERVER_LOST
from portmapper.server.store import Store
from portmapper.server.tap import Options, build
from tests import pg
from tests.test_admin import AdminTestCase, FakeServer
from tests.test_ctl import run_ctl
from tests.test_store import channel

try:
    from portmapper.server.store import postgres
except ImportError:  # pg.database() skips the tests, saying why
    postgres = None

INFO = {"admin_url": "http://127.0.0.2:8080", "client_port": 1111, "version": "0.1.0",
        "started_time": 1000.0, "clients": 2, "channels": 3}


def open_note(channel_id):
    """The open note of channel C{channel_id}, as the server records it."""
    row = channel(channel_id)
    return {key: row[key] for key in ("channel_id", "port", "ip", "user_port", "client_id",
                                      "target_ip", "target_port", "init_time")}


class FakeStore:
    """A store whose beats the test answers: C{beats} holds (info, Deferred)."""

    def __init__(self):
        self.beats = []

    def beat(self, info):
        d = Deferred()
        self.beats.append((info, d))
        return d


def row(name, age, **fields):
    """A node as the store gives it back."""
    return {"name": name, **INFO, "heartbeat_age": age, **fields}


class HeartbeatTests(unittest.SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.store = FakeStore()
        self.events = []
        self.patch(nodes, "log", Logger(observer=self.events.append))
        self.heartbeat = nodes.Heartbeat("a", self.store, self.clock, lambda: dict(INFO))
        self.heartbeat.startService()
        self.addCleanup(self.heartbeat.stopService)

    def warnings(self):
        return [e for e in self.events if e["log_level"].name == "warn"]

    def test_beats_every_second(self):
        """The first beat is at start, the next ones a second apart, each with what describe() gives."""
        self.assertEqual([info for info, _ in self.store.beats], [INFO])
        self.store.beats[0][1].callback([])
        self.clock.advance(1)
        self.store.beats[1][1].callback([])
        self.clock.advance(1)
        self.assertEqual(len(self.store.beats), 3)

    def test_no_beat_while_one_is_on_its_way(self):
        """A slow store gets one beat at a time: ticks while it is busy are skipped."""
        self.clock.pump([1, 1, 1])
        self.assertEqual(len(self.store.beats), 1)
        self.store.beats[0][1].callback([])
        self.clock.advance(1)
        self.assertEqual(len(self.store.beats), 2)

    def test_failure_logged_once_per_outage(self):
        """Failing beats are logged once, the beats go on, and the recovery is logged once."""
        for _ in range(3):
            self.store.beats[-1][1].errback(RuntimeError("database down"))
            self.clock.advance(1)
        self.assertEqual(len(self.store.beats), 4)
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("database down", str(self.warnings()[0]["why"]))
        self.store.beats[-1][1].callback([row("a", 0.0)])
        self.assertEqual([e["log_format"] for e in self.events if e["log_level"].name == "info"],
                         ["node {node}: heartbeat recorded again"])
        self.store.beats[-1:] = []
        self.clock.advance(1)
        self.store.beats[-1][1].errback(RuntimeError("down again"))
        self.assertEqual(len(self.warnings()), 2)

    def test_store_raising_does_not_stop_the_loop(self):
        """A store that raises instead of failing its Deferred is logged; the beats go on."""
        self.store.beats[0][1].callback([])
        self.store.beat = lambda info: 1 / 0
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(len(self.warnings()), 1)
        self.assertTrue(self.heartbeat._loop.running)

    def test_ages_grow_and_alive_ends(self):
        """Nodes' ages grow with the clock between beats; one silent for over 5 s is not alive."""
        self.assertEqual(self.heartbeat.nodes(), [])
        self.store.beats[0][1].callback([row("a", 0.25), row("b", 4.0)])
        self.clock.advance(0.5)  # the next beat is still on its way
        self.store.beats[1:] = []
        self.assertEqual([(n["name"], n["heartbeat_age"], n["alive"]) for n in self.heartbeat.nodes()],
                         [("a", 0.75, True), ("b", 4.5, True)])
        self.clock.advance(1)
        self.assertEqual([n["alive"] for n in self.heartbeat.nodes()], [True, False])

    def test_stop_ends_the_beats(self):
        """A stopped heartbeat beats no more."""
        self.store.beats[0][1].callback([])
        self.heartbeat.stopService()
        self.clock.advance(5)
        self.assertEqual(len(self.store.beats), 1)


class ListeningURLTests(unittest.SynchronousTestCase):

    def test_urls(self):
        """The admin URL is http(s)://host:port of where it listens, loopback for every interface."""
        self.assertEqual(nodes.listening_url(IPv4Address("TCP", "127.0.0.2", 8080), "tcp:8080"),
                         "http://127.0.0.2:8080")
        self.assertEqual(nodes.listening_url(IPv4Address("TCP", "0.0.0.0", 81), "tcp:81"),
                         "http://127.0.0.1:81")
        self.assertEqual(nodes.listening_url(IPv6Address("TCP", "::", 81), "tcp6:81"),
                         "http://[::1]:81")
        self.assertEqual(nodes.listening_url(IPv6Address("TCP", "fd00::5", 443), "ssl:443"),
                         "https://[fd00::5]:443")

    def test_unix_socket_has_no_url(self):
        """An admin API on a UNIX socket has no URL (the server still starts), rather than an error."""
        self.assertIsNone(nodes.listening_url(UNIXAddress(b"/run/pm/admin.sock"),
                                              "unix:/run/pm/admin.sock"))


class Answer:
    """A treq response of C{code} whose JSON body is C{body} (an exception: not JSON)."""

    length = UNKNOWN_LENGTH

    def __init__(self, code, body):
        self.code = code
        self._body = body

    def json(self):
        return fail(self._body) if isinstance(self._body, Exception) else succeed(self._body)

    def deliverBody(self, protocol):
        """The body as a response gives it: the JSON text (not JSON: other bytes), then done."""
        protocol.makeConnection(None)
        text = b"<html>" if isinstance(self._body, Exception) else json.dumps(self._body).encode()
        protocol.dataReceived(text)
        protocol.connectionLost(Failure(ResponseDone()))


class FakeHTTP:
    """The C{get} of a treq HTTPClient; the test answers each request in C{asked}."""

    def __init__(self):
        self.asked = {}  # URL -> (headers, Deferred)

    def get(self, url, headers=None):
        d = Deferred()
        self.asked[url.decode("ascii")] = (headers, d)
        return d

    def answer(self, url, code, body):
        self.asked[url][1].callback(Answer(code, body))


def other(name, url, alive=True):
    return {"name": name, "version": "0.1.0", "started_time": 0.0, "client_port": 1111,
            "admin_url": url, "heartbeat_age": 0.5 if alive else 30.0, "alive": alive,
            "clients": 0, "channels": 0}


class NodeEndpointTests(AdminTestCase):

    def test_node(self):
        """GET /node is this node and every node known, times and ages in API units."""
        self.server.other_nodes = [other("node-2", "http://127.0.0.3:8080", alive=False)]
        self.add_client()
        self.assertEqual(self.call("GET", "/node"), {
            "name": "node-1", "version": "0.1.0", "started_time": "1970-01-01 00:00:00",
            "client_port": 1111, "nodes": [
                {"name": "node-1", "version": "0.1.0", "started_time": "1970-01-01 00:00:00",
                 "client_port": 1111, "admin_url": "http://127.0.0.1:8080", "heartbeat_age": 0.5,
                 "alive": True, "clients": 1, "channels": 0},
                {"name": "node-2", "version": "0.1.0", "started_time": "1970-01-01 00:00:00",
                 "client_port": 1111, "admin_url": "http://127.0.0.3:8080", "heartbeat_age": 30.0,
                 "alive": False, "clients": 0, "channels": 0},
            ]})

    def test_node_field(self):
        """Clients and channels, listed or in detail, name this node."""
        self.add_mapping(5555)
        self.add_client()
        self.add_channel(5555)
        self.assertEqual(self.call("GET", "/client_connection")["1"]["node"], "node-1")
        self.assertEqual(self.call("GET", "/client_connection?client_id=1")["1"]["node"], "node-1")
        self.assertEqual(self.call("GET", "/channel")["5555"][0]["node"], "node-1")
        self.assertEqual(self.call("GET", "/channel?port=5555")["5555"][0]["node"], "node-1")
        self.assertEqual(self.call("GET", "/channel?channel_id=1")["1"]["node"], "node-1")

    def test_bad_scope(self):
        """A scope other than node or cluster is a 400 naming the parameter."""
        self.assertEqual(self.failed("GET", "/channel?scope=world", 400),
                         "Parameter 'scope' must be 'node' or 'cluster'.")
        self.assertEqual(self.failed("GET", "/client_connection?scope=", 400),
                         "Parameter 'scope' must be 'node' or 'cluster'.")


B, C, D = "http://127.0.0.3:8080", "http://127.0.0.4:8080", "http://127.0.0.5:8080"


class ScopeTests(AdminTestCase):
    """?scope=cluster over a fake HTTP client the tests answer."""

    token = "s3cret"

    def setUp(self):
        super().setUp()
        self.http = FakeHTTP()
        api = AdminAPI(self.server, admin_token=self.token, http=self.http)
        self.stub = StubTreq(api.app.resource())
        self.server.other_nodes = [other("node-2", B), other("node-3", C),
                                   other("node-4", D, alive=False)]
        self.auth = {b"Authorization": [b"Bearer s3cret"]}

    def get(self, path):
        """Start GET C{path}; return the Deferred of the response."""
        return self.stub.get("http://admin" + path, headers=self.auth)

    def body(self, d, status=200):
        """The JSON body and the response of C{d}, once the answer is delivered."""
        self.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, status)
        return self.successResultOf(treq.json_content(response)), response

    def test_node_scope_asks_nobody(self):
        """Without scope, or with scope=node, no other node is asked."""
        self.add_client()
        for path in ("/client_connection", "/client_connection?scope=node"):
            self.assertEqual(list(self.body(self.get(path))[0]), ["1"])
        self.assertEqual(self.http.asked, {})

    def test_clients_merged(self):
        """scope=cluster asks every other live node, with the token, and merges the clients by id."""
        self.add_client()
        d = self.get("/client_connection?scope=cluster")
        self.assertEqual(sorted(self.http.asked),
                         [B + "/client_connection", C + "/client_connection"])
        self.assertEqual({headers[b"Authorization"][0] for headers, _ in self.http.asked.values()},
                         {b"Bearer s3cret"})
        self.assertNoResult(d)
        self.http.answer(B + "/client_connection", 200, {"7": {"node": "node-2"}})
        self.http.answer(C + "/client_connection", 200, {"3": {"node": "node-3"}})
        body, response = self.body(d)
        self.assertEqual([(key, value["node"]) for key, value in body.items()],
                         [("1", "node-1"), ("3", "node-3"), ("7", "node-2")])
        self.assertIsNone(response.headers.getRawHeaders(UNANSWERED))

    def test_parameters_passed_on(self):
        """The other nodes get the same parameters, without scope."""
        self.add_mapping(5555)
        self.get("/channel?port=5555&scope=cluster")
        self.assertEqual(sorted(self.http.asked), [B + "/channel?port=5555", C + "/channel?port=5555"])

    def test_channels_merged_by_port(self):
        """Channel lists are joined port by port, in channel_id order."""
        self.add_mapping(5555)
        self.add_mapping(6000)
        self.add_channel(5555)
        d = self.get("/channel?scope=cluster")
        self.http.answer(B + "/channel", 200, {"5555": [{"channel_id": 4}], "6000": []})
        self.http.answer(C + "/channel", 200, {"5555": [{"channel_id": 2}],
                                              "6000": [{"channel_id": 3}]})
        body, _ = self.body(d)
        self.assertEqual({port: [c["channel_id"] for c in cs] for port, cs in body.items()},
                         {"5555": [1, 2, 4], "6000": [3]})

    def test_unanswered_marked(self):
        """A node that times out, refuses or fails is named in the header; the others' answers stay."""
        self.add_client()
        d = self.get("/client_connection?scope=cluster")
        self.http.answer(B + "/client_connection", 500, {"result": "failed", "reason": "x"})
        self.assertNoResult(d)
        self.clock.advance(nodes.TIMEOUT)  # node-3 never answers
        body, response = self.body(d)
        self.assertEqual(list(body), ["1"])
        self.assertEqual(response.headers.getRawHeaders(UNANSWERED), [b"node-2, node-3"])

    def test_oversized_answer_marked(self):
        """An answer longer than MAX_ANSWER is not read whole: the node is marked as not answering."""
        self.patch(nodes, "MAX_ANSWER", 100)
        d = self.get("/client_connection?scope=cluster")
        self.http.answer(B + "/client_connection", 200,
                         {str(i): {"node": "node-2"} for i in range(20)})
        self.http.answer(C + "/client_connection", 200, {"3": {"node": "node-3"}})
        body, response = self.body(d)
        self.assertEqual(list(body), ["3"])
        self.assertEqual(response.headers.getRawHeaders(UNANSWERED), [b"node-2"])

    def test_not_json_and_refused_marked(self):
        """An answer that is not JSON, and a refused connection, mark the node too."""
        d = self.get("/client_connection?scope=cluster")
        self.http.answer(B + "/client_connection", 200, ValueError("not JSON"))
        self.http.asked[C + "/client_connection"][1].errback(ConnectionRefusedError())
        body, response = self.body(d)
        self.assertEqual(body, {})
        self.assertEqual(response.headers.getRawHeaders(UNANSWERED), [b"node-2, node-3"])

    def test_detail_on_another_node(self):
        """A client or channel in detail found on another node is its answer; nowhere, a 404."""
        d = self.get("/client_connection?client_id=7&scope=cluster")
        self.http.answer(B + "/client_connection?client_id=7", 200, {"7": {"node": "node-2"}})
        self.http.answer(C + "/client_connection?client_id=7", 404,
                         {"result": "failed", "reason": "No connected client with client_id 7."})
        self.assertEqual(self.body(d)[0], {"7": {"node": "node-2"}})

        d = self.get("/channel?channel_id=9&scope=cluster")
        for url in (B, C):
            self.http.answer(url + "/channel?channel_id=9", 404, {"result": "failed", "reason": "-"})
        body, response = self.body(d, 404)
        self.assertEqual(body["reason"], "No open channel with channel_id 9.")
        self.assertIsNone(response.headers.getRawHeaders(UNANSWERED))

    def test_through_treq_to_another_admin_api(self):
        """Over treq, a real admin API of another node answers; its clients are merged in."""
        second = FakeServer(self.clock)
        second.node_name = "node-2"
        self.add_client()
        session = second.registry.new_client("10.0.0.9", 4000, "b", now=self.clock.seconds())
        session.client_id = 2  # ids are unique in a cluster
        second.registry.clients = {2: second.registry.clients.pop(1)}
        self.server.other_nodes = [other("node-2", B)]
        api = AdminAPI(self.server, admin_token=self.token,
                       http=StubTreq(AdminAPI(second, admin_token=self.token).app.resource()))
        self.stub = StubTreq(api.app.resource())
        body, _ = self.body(self.get("/client_connection?scope=cluster"))
        self.assertEqual({key: value["node"] for key, value in body.items()},
                         {"1": "node-1", "2": "node-2"})


class OptionTests(unittest.SynchronousTestCase):

    def parse(self, *argv):
        options = Options()
        options.parseOptions(list(argv))
        return options.settings

    def test_defaults(self):
        """The node name is the host name by default; the node URL is where the admin API listens."""
        settings = self.parse()
        if validate.is_tag(socket.gethostname()):
            self.assertEqual(settings.node_name, socket.gethostname())
        self.assertTrue(validate.is_tag(settings.node_name))
        self.assertEqual(settings.node_url, "")

    def test_given(self):
        """--node-name and --node-url are taken as given (the URL without a trailing slash)."""
        settings = self.parse("--node-name", "edge-1.eu", "--node-url", "http://10.0.0.5:8080/")
        self.assertEqual((settings.node_name, settings.node_url), ("edge-1.eu", "http://10.0.0.5:8080"))

    def test_bad(self):
        """A bad node name or URL is one sentence naming the option."""
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--node-name", "edge 1")
        self.assertEqual(str(caught.exception), "Bad value 'edge 1' for node-name: must be 1 to 64"
                                                " ASCII letters, digits or any of '_.:-'.")
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--node-url", "ftp://x")
        self.assertEqual(str(caught.exception), "Bad value 'ftp://x' for node-url:"
                                                " 'ftp://x' is not an http:// or https:// URL.")


class SQLiteNodeTests(unittest.TestCase):
    """The SQLite store: one node."""

    @inlineCallbacks
    def open(self, node):
        store = Store(os.path.join(self.mktemp(), "portmapper.sqlite3"), reactor, node=node)
        self.addCleanup(store.stop)
        yield store.start()
        return store

    @inlineCallbacks
    def test_beat_gives_own_row(self):
        """A beat stores this node's row and gives it back with the age of its heartbeat."""
        store = yield self.open("solo")
        rows = yield store.beat(INFO)
        self.assertEqual(len(rows), 1)
        self.assertEqual({k: v for k, v in rows[0].items() if k != "heartbeat_age"},
                         {"name": "solo", **INFO})
        self.assertTrue(0 <= rows[0]["heartbeat_age"] < 1)

    @inlineCallbacks
    def test_notes_closed_whatever_node(self):
        """A single node closes every note left in its file, whichever name wrote it."""
        store = yield self.open("old-name")
        store.record_channel_open(open_note(3))
        yield store.stop()
        again = Store(store._path, reactor, node="new-name")
        self.addCleanup(again.stop)
        yield again.start()
        self.assertEqual((yield again.close_lost(SERVER_LOST)), (1, 0))


class PostgresCase(unittest.TestCase):
    """A new database on the run's PostgreSQL."""

    def setUp(self):
        self.url = pg.database()

    @inlineCallbacks
    def open(self, node):
        store = postgres.Store(self.url, reactor, node=node)
        self.addCleanup(store.stop)
        yield store.start()
        return store

    def sql(self, script, *args):
        import psycopg
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(script, args or None)
            return cursor.fetchall() if cursor.description else None


class PostgresNodeTests(PostgresCase):

    @inlineCallbacks
    def test_nodes_see_each_other(self):
        """Each node's beat gives every node, by name, aged by the database's clock."""
        a = yield self.open("a")
        b = yield self.open("b")
        yield a.beat(INFO)
        rows = yield b.beat({**INFO, "clients": 9})
        self.assertEqual([(r["name"], r["clients"]) for r in rows], [("a", 2), ("b", 9)])
        self.assertTrue(all(0 <= r["heartbeat_age"] < 5 for r in rows))
        # The database's clock stamps the heartbeat, whatever the node's clock says.
        [(heartbeat,)] = self.sql("SELECT heartbeat FROM nodes WHERE name = 'b'")
        self.assertLess(abs(heartbeat - time.time()), 60)

    @inlineCallbacks
    def test_open_notes_of_a_live_node_survive(self):
        """Node B starting closes its own notes (server lost) and never those of live node A."""
        a = yield self.open("a")
        b = yield self.open("b")
        yield a.beat(INFO)
        yield b.beat(INFO)
        a.record_channel_open(open_note(1))
        b.record_channel_open(open_note(2))
        yield gather_flush(a, b)
        yield b.stop()  # B's note stays, as if B had died
        b_again = yield self.open("b")
        self.assertEqual((yield b_again.close_lost(SERVER_LOST)), (1, 0))
        self.assertEqual(self.sql("SELECT channel_id, node FROM open_channels"), [(1, "a")])
        [closed] = yield b_again.query_channel_history()
        self.assertEqual((closed["channel_id"], closed["close_reason"]), (2, SERVER_LOST))

    @inlineCallbacks
    def test_notes_of_a_dead_node_closed(self):
        """Notes of a node silent for over a minute, and of no node, are closed by any node starting."""
        a = yield self.open("a")
        yield a.beat(INFO)
        a.record_channel_open(open_note(1))
        yield a.last_ids()  # flushes
        self.sql("UPDATE nodes SET heartbeat = heartbeat - 120 WHERE name = 'a'")
        self.sql("INSERT INTO open_clients (client_id, ip, port, tag, init_time)"
                 " VALUES (5, '10.0.0.1', 4000, 'x', 1.0)")  # written before version 6
        c = yield self.open("c")
        self.assertEqual((yield c.close_lost(SERVER_LOST)), (1, 1))
        self.assertEqual(self.sql("SELECT count(*) FROM open_channels"), [(0,)])
        [(close_time,)] = self.sql("SELECT close_time FROM channel_history WHERE channel_id = 1")
        [(heartbeat,)] = self.sql("SELECT heartbeat FROM nodes WHERE name = 'a'")
        self.assertEqual(close_time, max(heartbeat, open_note(1)["init_time"]))


def gather_flush(*stores):
    """Fires once every store has written what it has pending."""
    return gatherResults([store.last_ids() for store in stores])


class TwoNodesTests(PostgresCase):
    """Two real servers on one PostgreSQL: GET /node and ?scope=cluster over loopback."""

    @inlineCallbacks
    def start_node(self, name):
        options = Options()
        options.parseOptions(["--database", self.url, "--node-name", name,
                              "--client-port", "tcp:0:interface=127.0.0.1",
                              "--admin", "tcp:0:interface=127.0.0.1", "--admin-token", "t0ken",
                              "--drain-timeout", "0.1"])
        service = build(options.settings, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        ports = yield service.ready
        return service, f"http://127.0.0.1:{ports['admin'].getHost().port}"

    @inlineCallbacks
    def get(self, url):
        response = yield treq.get(url, headers={"Authorization": "Bearer t0ken"}, persistent=False)
        return response, (yield treq.json_content(response))

    @inlineCallbacks
    def test_two_nodes(self):
        """Each node lists both alive; scope=cluster on one shows the other's client, named."""
        a, url_a = yield self.start_node("node-a")
        b, url_b = yield self.start_node("node-b")
        deadline = time.monotonic() + 10
        while True:
            _, body = yield self.get(url_a + "/node")
            if [n["alive"] for n in body["nodes"]] == [True, True] or time.monotonic() > deadline:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(body["name"], "node-a")
        self.assertEqual([(n["name"], n["admin_url"], n["alive"], n["version"]) for n in body["nodes"]],
                         [("node-a", url_a, True, __version__), ("node-b", url_b, True, __version__)])
        server_b = b.getServiceNamed("server")
        server_b.registry.new_client("10.0.0.9", 4000, "x", now=reactor.seconds())
        self.addCleanup(server_b.registry.clients.clear)  # it has no link to close
        response, merged = yield self.get(url_a + "/client_connection?scope=cluster")
        self.assertEqual({k: v["node"] for k, v in merged.items()},
                         {str(i): "node-b" for i in server_b.registry.clients})
        self.assertIsNone(response.headers.getRawHeaders(UNANSWERED))
        _, alone = yield self.get(url_a + "/client_connection")
        self.assertEqual(alone, {})
        # node-b's next heartbeat carries its count to node-a's list.
        deadline = time.monotonic() + 10
        while True:
            _, body = yield self.get(url_a + "/node")
            if body["nodes"][1]["clients"] == 1 or time.monotonic() > deadline:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([n["clients"] for n in body["nodes"]], [0, 1])


class CtlTests(unittest.SynchronousTestCase):
    """portmapper-ctl nodes, and --cluster on clients and channels."""

    def setUp(self):
        self.clock = Clock()
        self.server = FakeServer(self.clock)
        self.server.other_nodes = [other("node-2", B, alive=False)]
        self.http = FakeHTTP()
        self.stub = StubTreq(AdminAPI(self.server, http=self.http).app.resource())

    def run_ctl(self, *argv):
        d = run_ctl(["--admin", "http://admin", *argv], self.clock, http=self.stub)
        self.stub.flush()
        return self.successResultOf(d)

    def test_nodes(self):
        """`nodes` is a table of every node, the one asked marked, a dead one saying NO."""
        status, out, err = self.run_ctl("nodes")
        self.assertEqual((status, err), (0, ""))
        lines = [line.split() for line in out.splitlines()]
        self.assertEqual(lines[0][:3], ["NODE", "VERSION", "ADMIN"])
        self.assertEqual(lines[1][:3], ["node-1", "*", "0.1.0"])
        self.assertEqual(lines[2][:4], ["node-2", "0.1.0", B, "1111"])
        self.assertIn("NO", lines[2])

    def test_cluster_flag(self):
        """--cluster asks for scope=cluster; without it the view is this node's."""
        self.server.other_nodes = [other("node-2", B)]
        d = run_ctl(["--admin", "http://admin", "clients", "--cluster", "--json"], self.clock,
                    http=self.stub)
        self.http.answer(B + "/client_connection", 200, {"9": {"node": "node-2"}})
        self.stub.flush()
        status, out, _ = self.successResultOf(d)
        self.assertEqual((status, json.loads(out)), (0, {"9": {"node": "node-2"}}))
        self.run_ctl("channels")
        self.assertEqual(list(self.http.asked), [B + "/client_connection"])


class ServerNodeTests(unittest.SynchronousTestCase):
    """What the server says of itself as a node."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = FakeStore()
        settings = ServerSettings(node_name="edge-1", admin="tcp:0:interface=127.0.0.2")
        self.server = PortMapperServer(settings, self.clock, self.store)
        self.server.started_time = 990.0
        self.server.client_port = 1111
        self.server.adminListening(FakePort(IPv4Address("TCP", "127.0.0.2", 18080)))

    def test_before_first_beat(self):
        """Before its first heartbeat is recorded the server lists itself, alive, age unknown."""
        self.server.registry.new_client("10.0.0.1", 4000, "x", now=1000.0)
        self.assertEqual(self.server.nodes(), [{
            "name": "edge-1", "admin_url": "http://127.0.0.2:18080", "client_port": 1111,
            "version": __version__, "started_time": 990.0, "clients": 1, "channels": 0,
            "heartbeat_age": None, "alive": True}])

    def test_own_row_live(self):
        """Its own row has its live counts and its heartbeat's age; the others are as recorded."""
        self.server.heartbeat.startService()
        self.addCleanup(self.server.heartbeat.stopService)
        info, d = self.store.beats[0]
        self.assertEqual(info["admin_url"], "http://127.0.0.2:18080")
        d.callback([row("edge-0", 9.0), row("edge-1", 0.5, clients=0)])
        self.server.registry.new_client("10.0.0.1", 4000, "x", now=1000.0)
        found = self.server.nodes()
        self.assertEqual([(n["name"], n["alive"], n["clients"], n["heartbeat_age"]) for n in found],
                         [("edge-0", False, 2, 9.0), ("edge-1", True, 1, 0.5)])

    def test_node_url_wins(self):
        """--node-url is the admin URL given, wherever the admin API listens."""
        settings = ServerSettings(node_name="edge-1", node_url="http://203.0.113.5:8080")
        server = PortMapperServer(settings, self.clock, self.store)
        server.adminListening(FakePort(IPv4Address("TCP", "0.0.0.0", 8080)))
        self.assertEqual(server.node_info()["admin_url"], "http://203.0.113.5:8080")

    def test_admin_on_unix_socket(self):
        """An admin API on a UNIX socket listens (no error) and gives no URL to ask it at."""
        settings = ServerSettings(node_name="edge-1", admin="unix:/run/pm/admin.sock")
        server = PortMapperServer(settings, self.clock, self.store)
        server.adminListening(FakePort(UNIXAddress(b"/run/pm/admin.sock")))
        self.assertEqual(server.node_info()["admin_url"], "")


class FakePort:
    """An IListeningPort at C{address}."""

    def __init__(self, address):
        self._address = address

    def getHost(self):
        return self._address
