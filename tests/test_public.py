"""
Tests for L{portmapper.server.public}: a user's connection to a mapped port,
carried over a channel to a client, the state the registry shows for it,
and the reason history records for its end.

Everything is real but the sockets and the disk: a L{PortMapperServer}
(never started) whose store keeps history rows in memory, a server link and
a client link joined in memory with iosim, and the user's and the target's
connections on L{EndTransport}s, all on one L{MemoryReactorClock}.  The
test plays the sockets: it connects the target the client dialled, and
reports half-closes and losses as Twisted would.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.error import (
    ConnectionAborted, ConnectionDone, ConnectionLost, ConnectionRefusedError, TimeoutError,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portmapper.config import AllowList, ClientSettings, ServerSettings
from portmapper.server.core import PortMapperServer
from portmapper.server.public import PublicFactory
from portmapper.server.registry import (
    CLIENT_LOST, CLOSED, CLOSED_BY_ADMIN, CLOSING, CONNECTING, DRAINING, NO_CLIENT,
    TARGET_CLOSED, TARGET_REFUSED, TIMEOUT, USER_CLOSED, WORKING, Mapping,
)
from portmapper.server.store import Store
from tests.linkpair import EndTransport, connectLinks

TOKEN = "s3cret"
TAG = "web"
PUBLIC_PORT = 5555
OPEN_TIMEOUT = 3.0
USER = IPv4Address("TCP", "198.51.100.7", 50000)
CLIENT = IPv4Address("TCP", "203.0.113.9", 40000)


class RecordingStore:
    """Stands in for the server's Store: keeps the history rows it is given."""

    def __init__(self):
        self.channels = []
        self.clients = []
        self.opened_channels = []
        self.opened_clients = []

    def record_channel(self, row):
        self.channels.append(row)

    def record_client(self, row):
        self.clients.append(row)

    def record_channel_open(self, row):
        self.opened_channels.append(row)

    def record_client_open(self, row):
        self.opened_clients.append(row)


class PublicTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.store = RecordingStore()
        self.server = PortMapperServer(
            ServerSettings(token=TOKEN, open_timeout=OPEN_TIMEOUT), self.clock, self.store)
        self.mapping = self.addMapping(PUBLIC_PORT, TAG)
        self.slink, self.clink, self.pump = self.connectClient()

    def addMapping(self, port, tag):
        mapping = Mapping(port, "10.1.2.3", 6666, tag)
        self.server.registry.mappings[port] = mapping
        return mapping

    def connectClient(self, tag=TAG, **settings):
        """A client with ``tag`` linked up to the server: (server link, client link, pump)."""
        return connectLinks(self.server, ClientSettings(token=TOKEN, tag=tag, **settings),
                            self.clock, CLIENT)

    def flush(self):
        self.pump.flush()

    def connectUser(self, mapping=None):
        """A user connects to the mapped port; returns its PublicProtocol."""
        user = PublicFactory(self.server, mapping or self.mapping).buildProtocol(USER)
        user.makeConnection(EndTransport(peerAddress=USER))
        self.flush()
        return user

    def connectTarget(self, index=0):
        """The index-th target the client dialled accepts; returns its protocol."""
        host, port, factory, timeout, bind = self.clock.tcpClients[index]
        target = factory.buildProtocol(None)
        target.makeConnection(EndTransport())
        self.flush()
        return target

    def failDial(self, error, index=0):
        """The index-th target the client dialled cannot be reached."""
        factory = self.clock.tcpClients[index][2]
        factory.clientConnectionFailed(self.clock.connectors[index], Failure(error))
        self.flush()

    def openChannel(self):
        """A user carried to a connected target: (user, target)."""
        user = self.connectUser()
        target = self.connectTarget()
        self.assertEqual(user.record.state, WORKING)
        return user, target

    def oneEnded(self, side):
        """A channel opened, then ``side`` ("user" or "target") sent FIN: (user, target)."""
        user, target = self.openChannel()
        ended, other = (user, target) if side == "user" else (target, user)
        ended.readConnectionLost()
        self.flush()
        self.assertTrue(other.transport.write_closed)
        self.assertEqual(user.record.state, CLOSING)
        return user, target

    def bothEnded(self, user, target):
        """Both directions ended: the user's socket closes cleanly. The reason history records."""
        user.writeConnectionLost()
        self.assertTrue(user.transport.disconnecting)
        reason = self.userGone(user, ConnectionDone())
        self.assertFalse(target.transport.disconnected)  # no RESET reached it
        return reason

    def userGone(self, user, error):
        """The user's connection is lost with ``error``: the reason history records for it."""
        user.connectionLost(Failure(error))
        self.flush()
        self.assertEqual(user.record.state, CLOSED)
        self.assertNotIn(user.record.channel_id, self.server.registry.channels)
        [row] = [r for r in self.store.channels if r["channel_id"] == user.record.channel_id]
        self.assertEqual(row["close_reason"], user.record.close_reason)
        return row["close_reason"]


class CloseReasonTests(PublicTestCase):
    """The reason history gives is the first abnormal one, else who ended first."""

    def test_storeDouble(self):
        """The recording store has the real Store's history methods."""
        for name in ("record_channel", "record_client", "record_channel_open",
                     "record_client_open"):
            self.assertTrue(callable(getattr(Store, name)))

    def test_userFinThenLinkLost(self):
        """A user's FIN then the link's loss: the channel closed because the client was lost."""
        user, target = self.oneEnded("user")
        self.clink.transport.abortConnection()
        self.flush()
        self.assertTrue(user.transport.disconnected)
        self.assertEqual(self.userGone(user, ConnectionAborted()), CLIENT_LOST)
        self.assertEqual([r["close_reason"] for r in self.store.clients], [CLIENT_LOST])

    def test_userFinThenTargetReset(self):
        """A user's FIN then the target's connection breaking: target closed."""
        user, target = self.oneEnded("user")
        target.connectionLost(Failure(ConnectionLost()))
        self.flush()
        self.assertTrue(user.transport.disconnected)
        self.assertEqual(self.userGone(user, ConnectionAborted()), TARGET_CLOSED)

    def test_userFinThenAdminClose(self):
        """A user's FIN then an operator closing the channel: closed by admin, both ends dropped."""
        user, target = self.oneEnded("user")
        self.server.close_channel(user.record.channel_id)
        self.flush()
        self.assertTrue(user.transport.disconnected)
        self.assertTrue(target.transport.disconnected)
        self.assertEqual(self.userGone(user, ConnectionAborted()), CLOSED_BY_ADMIN)

    def test_targetFinThenUserFin(self):
        """The target ends first, then the user, both cleanly: target closed, no RESET."""
        user, target = self.oneEnded("target")
        user.readConnectionLost()
        self.flush()
        self.assertTrue(target.transport.write_closed)
        self.assertEqual(self.bothEnded(user, target), TARGET_CLOSED)

    def test_bothCleanUserFirst(self):
        """The user ends first, then the target, both cleanly: user closed."""
        user, target = self.oneEnded("user")
        target.readConnectionLost()
        self.flush()
        self.assertEqual(self.bothEnded(user, target), USER_CLOSED)

    def test_userBreaks(self):
        """A user's connection breaking is the user's doing; the target is dropped."""
        user, target = self.openChannel()
        self.assertEqual(self.userGone(user, ConnectionLost()), USER_CLOSED)
        self.assertTrue(target.transport.disconnected)

    def test_openTimeout(self):
        """A target not reached within open_timeout: timeout, and the client stops dialling."""
        user = self.connectUser()
        self.clock.advance(OPEN_TIMEOUT - 0.1)
        self.flush()
        self.assertFalse(user.transport.disconnecting)
        self.clock.advance(0.1)
        self.flush()
        self.assertTrue(user.transport.disconnected)
        self.assertTrue(self.clock.connectors[0].stoppedConnecting)
        self.assertEqual(self.userGone(user, ConnectionAborted()), TIMEOUT)

    def test_openedCancelsTimeout(self):
        """A channel that opened in time outlives open_timeout."""
        user, target = self.openChannel()
        self.clock.advance(OPEN_TIMEOUT * 2)
        self.flush()
        self.assertFalse(user.transport.disconnecting)
        self.assertEqual(user.record.state, WORKING)

    def refusedAlone(self, user):
        """``user`` was let go at once, as the one refusal of its port: the row history has."""
        self.assertTrue(user.transport.disconnecting)
        self.assertFalse(user.transport.disconnected)
        self.assertIsNone(user.record)  # never a channel
        user.connectionLost(Failure(ConnectionDone()))
        [row] = [r for r in self.store.channels if "count" in r]
        self.assertEqual((row["port"], row["ip"], row["user_port"], row["count"]),
                         (user.mapping.public_port, USER.host, USER.port, 1))
        return row["close_reason"]

    def test_noClient(self):
        """No client with the mapping's tag: the user is let go at once, counted as refused: no client."""
        user = self.connectUser(self.addMapping(5556, "nobody"))
        self.assertEqual(self.clock.tcpClients, [])
        self.assertEqual(self.refusedAlone(user), NO_CLIENT)
        self.assertEqual(self.server.registry.channels, {})

    def test_openNoted(self):
        """A channel handed to a client and the client's link are noted open in the store."""
        user = self.connectUser()
        [client] = self.store.opened_clients
        self.assertEqual((client["client_id"], client["ip"], client["tag"]),
                         (self.slink.owner.session.client_id, CLIENT.host, TAG))
        self.assertEqual(self.store.opened_channels, [{
            "channel_id": user.record.channel_id, "port": PUBLIC_PORT, "ip": USER.host,
            "user_port": USER.port, "client_id": client["client_id"], "target_ip": "10.1.2.3",
            "target_port": 6666, "init_time": self.clock.seconds()}])

    def test_noClientFlood(self):
        """Many users with no client: one row at once, then one with the rest per refusal interval."""
        mapping = self.addMapping(5556, "nobody")
        users = [self.connectUser(mapping) for _ in range(500)]
        self.clock.advance(self.server.settings.refusal_interval)
        users += [self.connectUser(mapping) for _ in range(100)]
        for user in users:
            user.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([r["count"] for r in self.store.channels], [1, 499])
        self.server.stopService()
        self.assertEqual([r["count"] for r in self.store.channels], [1, 499, 100])
        self.assertEqual([r["channel_id"] for r in self.store.channels], [1, 2, 3])
        self.assertEqual(self.store.opened_channels, [])

    def test_drainingClientTakesNoNewChannel(self):
        """A draining client keeps carrying its channels but is given no new one: no client."""
        user, target = self.openChannel()
        self.clink.goAway("stopping")
        self.flush()
        self.assertEqual(self.slink.owner.session.state, DRAINING)
        late = self.connectUser()
        self.assertEqual(self.refusedAlone(late), NO_CLIENT)
        user.dataReceived(b"still here")
        self.flush()
        self.assertEqual(target.transport.value(), b"still here")

    def test_closingClientTakesNoNewChannel(self):
        """A client whose link is closing but not yet gone is given no new channel; another is."""
        other, _, other_pump = self.connectClient()
        self.server.kick_client(self.slink.owner.session.client_id)
        self.assertEqual(self.slink.owner.session.state, CLOSED)
        user = PublicFactory(self.server, self.mapping).buildProtocol(USER)
        user.makeConnection(EndTransport(peerAddress=USER))
        self.assertEqual(user.record.client_id, other.owner.session.client_id)
        self.assertFalse(user.transport.disconnecting)
        self.flush()
        self.assertEqual([r["close_reason"] for r in self.store.clients], [CLOSED_BY_ADMIN])

    def test_linkTakesNoChannel(self):
        """A client whose link takes no new channel (the server drains it): no client."""
        self.openChannel()
        self.slink.goAway("server stopping")
        late = self.connectUser()
        self.assertEqual(self.userGone(late, ConnectionDone()), NO_CLIENT)

    def test_openFailedTimeout(self):
        """The client timing out on the target: timeout; the user is reset, as by our open timeout."""
        user = self.connectUser()
        self.failDial(TimeoutError())
        self.assertTrue(user.transport.disconnected)
        self.assertEqual(self.userGone(user, ConnectionAborted()), TIMEOUT)

    def test_openFailedRefused(self):
        """The target refusing the client: target refused, and the user is reset."""
        user = self.connectUser()
        self.failDial(ConnectionRefusedError())
        self.assertTrue(user.transport.disconnected)
        self.assertEqual(self.userGone(user, ConnectionAborted()), TARGET_REFUSED)

    def test_openFailedDenied(self):
        """The client's allow-list forbidding the target: target refused."""
        slink, clink, self.pump = self.connectClient(
            tag="locked", allow=AllowList.parse("192.168.0.0/16:22"))
        user = self.connectUser(self.addMapping(5556, "locked"))
        self.assertEqual(self.clock.tcpClients, [])
        self.assertTrue(user.transport.disconnected)
        self.assertEqual(self.userGone(user, ConnectionAborted()), TARGET_REFUSED)


class StateTests(PublicTestCase):
    """The state shown goes CONNECTING, WORKING, CLOSING, and a FIN before OPEN_OK skips WORKING."""

    def test_states(self):
        """CONNECTING until the target is reached, WORKING, CLOSING after a FIN, then CLOSED."""
        user = self.connectUser()
        self.assertEqual(user.record.state, CONNECTING)
        target = self.connectTarget()
        self.assertEqual(user.record.state, WORKING)
        user.dataReceived(b"abc")
        target.dataReceived(b"wxyz")
        self.flush()
        self.assertEqual((target.transport.value(), user.transport.value()), (b"abc", b"wxyz"))
        self.assertEqual((user.record.meter.recv_bytes, user.record.meter.send_bytes), (3, 4))
        user.readConnectionLost()
        self.flush()
        self.assertEqual(user.record.state, CLOSING)
        target.readConnectionLost()
        self.flush()
        self.assertEqual(self.bothEnded(user, target), USER_CLOSED)

    def test_finBeforeOpenOk(self):
        """A user's data and FIN before OPEN_OK reach the target, and the channel shows CLOSING."""
        user = self.connectUser()
        user.dataReceived(b"GET /")
        user.readConnectionLost()
        self.flush()
        self.assertEqual(user.record.state, CONNECTING)
        target = self.connectTarget()
        self.assertEqual(user.record.state, CLOSING)
        self.assertEqual(target.transport.value(), b"GET /")
        self.assertTrue(target.transport.write_closed)
        target.dataReceived(b"200 OK")
        target.readConnectionLost()
        self.flush()
        self.assertEqual(user.transport.value(), b"200 OK")
        self.assertEqual(self.bothEnded(user, target), USER_CLOSED)
