"""
End-to-end: a cluster of three real ``twistd -n portmapper`` nodes on one
PostgreSQL (127.0.0.2, .3 and .4) and one real ``twistd -n
portmapper-client`` linked to all three (see :mod:`tests.cluster`): a
mapping made on one node reaches the others within a second, users through
every node reach the target, a node SIGKILLed costs only its own users, and
a database stopped for ten seconds costs none.  Skipped, with the reason,
where PostgreSQL or psycopg is absent.

The figures (propagation, failover, outage) are logged to the test log.
"""

import time
from collections import Counter

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from tests import pg
from tests.cluster import (
    StreamUser, accepts, common_free_port, echo_user, first_answer, linked, start_cluster,
    time_until,
)
from tests.e2e import Backend, Echo, in_thread, wait_for
from tests.test_e2e_crash import WAIT, poll

log = Logger()

PROPAGATION = 1.0  # seconds a mapping change may take to reach every node
PROGRESS = 1024 * 1024  # bytes a stream moves to show it is moving
OUTAGE = 10.0  # seconds the database is down
ROUND_PAUSE = 0.2  # seconds between rounds of new users during the outage
MAX_ROUNDS = 200
MiB = 1024 * 1024


class Answer(Protocol):
    """A target that answers each read with one byte of its own (not an echo)."""

    ANSWER = b"!"

    def dataReceived(self, data):
        self.transport.write(self.ANSWER)


class ClusterTestCase(TestCase):
    timeout = 120

    @inlineCallbacks
    def mapped(self, nodes):
        """An echo target mapped on the first node, once every node listens: (port, target port)."""
        target = Backend(Echo).listen(self)
        port = common_free_port()
        code, body = yield nodes[0].api("POST", "/port_mapper", port=str(port),
                                        mapper_ip="127.0.0.1", mapper_port=str(target),
                                        mapper_tag="default")
        self.assertEqual(code, 200, body)
        addresses = [node.address for node in nodes]
        listening = yield in_thread(time_until, addresses, lambda a: accepts(a, port),
                                    time.monotonic())
        self.assertEqual(sorted(listening), addresses)
        return port, target

    def streams(self, nodes, port):
        """A StreamUser through each node, started; (users, a Deferred of their results)."""
        users = [StreamUser(node.address, port) for node in nodes]
        ended = gatherResults([in_thread(user.run) for user in users])
        self.addCleanup(lambda: ended)
        for user in users:
            self.addCleanup(user.stop)
        return users, ended

    def moving(self, users, what):
        """Fire once each of ``users`` has moved PROGRESS bytes more than now."""
        marks = [user.received + PROGRESS for user in users]
        return wait_for(lambda: all(user.received >= mark for user, mark in zip(users, marks)),
                        timeout=WAIT, what=what)

    def assertIntact(self, result, what):
        """A StreamUser result: every byte came back as sent, and the stream was not cut."""
        sent, received, intact, cut = result
        self.assertFalse(cut, what)
        self.assertEqual(received, sent, what)
        self.assertTrue(intact, what)


class ClusterTests(ClusterTestCase):
    """Three nodes on the run's PostgreSQL, one client linked to each."""

    def setUp(self):
        self.database = pg.database()

    @inlineCallbacks
    def test_mapping_change_reaches_every_node(self):
        """A mapping made on node 1 listens on nodes 2 and 3 within a second, patched or deleted anywhere applies everywhere; 409 on its port."""
        nodes, client = yield start_cluster(self, self.database)
        target = Backend(Echo).listen(self)
        port = common_free_port()
        others = [node.address for node in nodes[1:]]
        started = time.monotonic()
        code, body = yield nodes[0].api("POST", "/port_mapper", port=str(port),
                                        mapper_ip="127.0.0.1", mapper_port=str(target),
                                        mapper_tag="default")
        self.assertEqual(code, 200, body)
        listening = yield in_thread(time_until, others, lambda a: accepts(a, port), started)
        log.info("figure: a mapping made on node1 listened on nodes 2 and 3 after {seconds}",
                 seconds=listening)
        self.assertEqual(sorted(listening), others)
        self.assertLess(max(listening.values()), PROPAGATION)

        code, body = yield nodes[2].api("POST", "/port_mapper", port=str(port),
                                        mapper_ip="127.0.0.1", mapper_port=str(target + 1),
                                        mapper_tag="default")
        self.assertEqual((code, body["result"]), (409, "failed"), body)
        mappings = yield nodes[1].get("/port_mapper")
        self.assertEqual(mappings[str(port)]["port"], target)

        everywhere = [node.address for node in nodes]
        other_target = Backend(Answer).listen(self)
        started = time.monotonic()
        code, body = yield nodes[2].api("PATCH", "/port_mapper", port=str(port),
                                        mapper_port=str(other_target))
        self.assertEqual(code, 200, body)
        patched = yield in_thread(time_until, everywhere,
                                  lambda a: first_answer(a, port) == Answer.ANSWER, started)
        log.info("figure: a mapping patched on node3 took users of every node to its new"
                 " target after {seconds}", seconds=patched)
        self.assertEqual(sorted(patched), everywhere)
        self.assertLess(max(patched.values()), PROPAGATION)

        started = time.monotonic()
        code, body = yield nodes[1].api("DELETE", "/port_mapper", port=str(port))
        self.assertEqual(code, 200, body)
        gone = yield in_thread(time_until, everywhere, lambda a: not accepts(a, port), started)
        log.info("figure: a mapping deleted on node2 stopped listening on every node after"
                 " {seconds}", seconds=gone)
        self.assertEqual(sorted(gone), everywhere)
        self.assertLess(max(gone.values()), PROPAGATION)

    @inlineCallbacks
    def test_users_through_each_node(self):
        """Users through each node reach the target byte-exact, each carried by the link to that node."""
        nodes, client = yield start_cluster(self, self.database)
        ids = yield linked(nodes)
        port, target = yield self.mapped(nodes)
        for node in nodes:
            sockname, exact = yield in_thread(echo_user, node.address, port, MiB)
            self.assertTrue(exact, node.name)
            clients = yield node.get("/client_connection")
            self.assertGreaterEqual(clients[str(ids[node.name])]["recv_bytes"], MiB, node.name)


class DatabaseOutageTests(ClusterTestCase):
    """Three nodes on a PostgreSQL of the test's own, stopped for OUTAGE seconds under traffic."""

    timeout = 180

    def setUp(self):
        pg.require()
        self.postgres = pg.PostgreSQL(pg.find_bindir())
        self.addCleanup(in_thread, self.postgres.stop)
        return in_thread(self.postgres.start)

    @inlineCallbacks
    def test_database_stopped_during_traffic(self):
        """Database down 10 s under traffic: no user cut, writes 503, history complete once it is back."""
        database = yield in_thread(self.postgres.create_database)
        nodes, client = yield start_cluster(self, database)
        before = yield linked(nodes)
        port, target = yield self.mapped(nodes)
        users, ended = self.streams(nodes, port)
        yield self.moving(users, "every stream moving")

        yield in_thread(self.postgres.halt)
        down = reactor.seconds()
        for node in nodes:
            code, body = yield node.api("POST", "/port_mapper", port=str(common_free_port()),
                                        mapper_ip="127.0.0.1", mapper_port=str(target),
                                        mapper_tag="default")
            self.assertEqual((code, body["result"]), (503, "failed"), body)
            self.assertTrue(body["reason"], body)
        code, body = yield nodes[1].api("DELETE", "/port_mapper", port=str(port))
        self.assertEqual((code, body["result"]), (503, "failed"), body)

        marks = [user.received for user in users]
        carried = []
        while reactor.seconds() < down + OUTAGE and len(carried) < MAX_ROUNDS * len(nodes):
            for node in nodes:
                sockname, exact = yield in_thread(echo_user, node.address, port, 64 * 1024)
                self.assertTrue(exact, f"a user through {node.name} during the outage")
                carried.append(sockname)
            yield deferLater(reactor, ROUND_PAUSE, lambda: None)  # pacing, not waiting
        streamed = sum(user.received for user in users) - sum(marks)
        self.assertTrue(all(user.received > mark for user, mark in zip(users, marks)))

        yield in_thread(self.postgres.serve)
        up = reactor.seconds()

        @inlineCallbacks
        def write():
            code, body = yield nodes[2].api("POST", "/port_mapper", port=str(common_free_port()),
                                            mapper_ip="127.0.0.1", mapper_port=str(target),
                                            mapper_tag="default")
            return code == 200

        yield poll(write, "a write to succeed once the database is back")
        writable = reactor.seconds()
        for user in users:
            user.stop()
        results = yield ended
        for node, result in zip(nodes, results):
            self.assertIntact(result, f"the stream through {node.name}")
        self.assertEqual((yield linked(nodes)), before)

        expected = Counter([(tuple(user.sockname), result[0])
                            for user, result in zip(users, results)]
                           + [(tuple(sockname), 64 * 1024) for sockname in carried])

        @inlineCallbacks
        def history():
            rows = (yield nodes[0].get("/channel_history", port=str(port), limit="10000"))
            return Counter(((row["ip"], row["user_port"]), row["recv_bytes"])
                           for row in rows["history"] if row["close_reason"] == "user closed")

        yield poll(history, "every channel in history",
                              lambda found: not expected - found)
        log.info("figure: database down {down:.1f} s: {users} new users and {mib:.0f} MiB of"
                 " streams carried meanwhile, none cut; writes 503 meanwhile, back {writable:.2f}"
                 " s after the database; history complete {complete:.2f} s after it",
                 down=up - down, users=len(carried), mib=streamed / MiB,
                 writable=writable - up, complete=reactor.seconds() - up)
