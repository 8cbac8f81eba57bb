"""
End-to-end tests of graceful drain, over loopback with the services as
production runs them: a stopping client or server lets its users' streams
finish instead of cutting them, and a second client takes the new users.
"""

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase

from tests.e2e import Backend, Running, start_client, wait_for

CHUNK = 32 * 1024
CHUNKS = 24  # 768 KiB per user, over about 1.2 s


class PacedSource(Protocol):
    """Sends CHUNKS chunks, one every 50 ms, then closes: a stream that takes a while."""

    def connectionMade(self):
        self.sent = 0
        self.loop = LoopingCall(self.tick)
        self.loop.start(0.05)

    def tick(self):
        if self.sent == CHUNKS:
            self.loop.stop()
            self.transport.loseConnection()
            return
        self.transport.write(bytes([self.sent % 251]) * CHUNK)
        self.sent += 1

    def connectionLost(self, reason):
        if self.loop.running:
            self.loop.stop()


class User(Protocol):
    """Counts what arrives; ``done`` fires with (bytes, closed cleanly) when it ends."""

    def __init__(self):
        self.received = 0
        self.done = Deferred()

    def dataReceived(self, data):
        self.received += len(data)

    def connectionLost(self, reason):
        self.done.callback((self.received, reason.check(ConnectionDone) is not None))


def start_users(port, count):
    users = []
    for _ in range(count):
        user = User()
        factory = ClientFactory.forProtocol(lambda user=user: user)
        factory.noisy = False
        reactor.connectTCP("127.0.0.1", port, factory)
        users.append(user)
    return users


class DrainTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.data_dir = self.mktemp()
        self.running = yield Running(self, self.data_dir, extra=("--drain-timeout", "20")).start()
        self.server = self.running.server
        self.backend = Backend(PacedSource)
        self.public = yield self.running.map(self.backend.listen(self))

    def linked(self, count):
        return wait_for(lambda: len(self.server.registry.clients) == count,
                        what=f"{count} linked client(s)")

    @inlineCallbacks
    def test_stopping_client_cuts_no_user(self):
        """A client stopped mid-stream lets its 40 users finish; users arriving meanwhile go to the other client."""
        first = start_client(self, self.server.client_port, "--drain-timeout", "20")
        yield self.linked(1)
        (first_id,) = self.server.registry.clients
        early = start_users(self.public, 40)
        yield wait_for(lambda: len(self.backend.connections) == 40, what="40 targets")
        second = start_client(self, self.server.client_port)
        yield self.linked(2)
        stopped = first.stopService()
        yield wait_for(lambda: self.server.registry.clients[first_id].state == "DRAINING",
                       what="the first client to drain")
        late = start_users(self.public, 10)
        results = yield gatherResults([user.done for user in early + late])
        yield stopped
        self.assertEqual(results, [(CHUNK * CHUNKS, True)] * 50)
        code, body = yield self.running.api("GET", "/channel_history", limit="100")
        by_client = {}
        for row in body["history"]:
            by_client.setdefault(row["client_id"], []).append(row["close_reason"])
        self.assertEqual(sorted(by_client[first_id]), ["target closed"] * 40)
        self.assertEqual(sum(len(v) for k, v in by_client.items() if k != first_id), 10)
        self.assertTrue(second.running)

    @inlineCallbacks
    def test_stopping_server_cuts_no_user(self):
        """A server stopped mid-stream lets its 30 users' streams complete; history says 'server stopped'."""
        start_client(self, self.server.client_port)
        yield self.linked(1)
        users = start_users(self.public, 30)
        yield wait_for(lambda: len(self.backend.connections) == 30, what="30 targets")
        stopped = self.running.stop()
        results = yield gatherResults([user.done for user in users])
        yield stopped
        self.assertEqual(results, [(CHUNK * CHUNKS, True)] * 30)
        again = yield Running(self, self.data_dir).start()
        code, body = yield again.api("GET", "/client_history")
        self.assertEqual([row["close_reason"] for row in body["history"]], ["server stopped"])
        code, body = yield again.api("GET", "/channel_history")
        self.assertEqual({row["close_reason"] for row in body["history"]}, {"target closed"})
