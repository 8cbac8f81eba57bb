"""
Tests for L{portmapper.client.agent}: how the client serves the channels
the server opens: dialling targets, early data, the allow-list, failures
and cancellation.

The client's link (from L{ClientLinkFactory}) is on a L{StringTransport} and
is linked up by feeding it a server's HELLO and WELCOME; targets are
dialled on a L{MemoryReactorClock} and connected by the test.
"""

import struct

from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portmapper.client.agent import ClientLinkFactory
from portmapper.config import AllowList, ClientSettings
from portmapper.protocol import frames
from portmapper.protocol.frames import (
    AUTH, DATA, FIN, GOAWAY, GOAWAY_DRAINING, OPEN_FAIL, OPEN_OK, RESET,
)
from portmapper.protocol.windows import EARLY_DATA
from tests.linkhelp import written
from tests.linkpair import EndTransport

WINDOW = 256 * 1024
CLIENT_ID = 4


def establishedClient(reactor, **settings):
    """A client link that a server has welcomed, its own frames read back."""
    link = ClientLinkFactory(ClientSettings(**settings), reactor).buildProtocol(None)
    link.makeConnection(StringTransport())
    link.dataReceived(frames.hello(b"n" * 32) + frames.welcome(CLIENT_ID))
    assert link.owner.client_id == CLIENT_ID
    assert [f[0] for f in written(link)][0] == AUTH
    return link


def openFrame(channel_id, host="10.1.2.3", port=6666, window=WINDOW):
    return frames.open_channel(channel_id, window, host, port)


class AgentTests(SynchronousTestCase):
    """A welcomed client serves OPEN by dialling, refusing or cancelling as the frames say."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.link = establishedClient(self.reactor)

    def connectTarget(self, index=0):
        """Complete the index-th dial the client started; return the target's protocol."""
        host, port, factory, timeout, bind = self.reactor.tcpClients[index]
        target = factory.buildProtocol(None)
        target.makeConnection(EndTransport())
        return target

    def test_dialsTheTargetNamed(self):
        """OPEN makes the client dial exactly the host and port named, with its connect timeout."""
        self.link.dataReceived(openFrame(3, "10.1.2.3", 6666))
        [(host, port, factory, timeout, bind)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("10.1.2.3", 6666, 10.0))

    def test_openOkOnConnect(self):
        """Once the target accepts, OPEN_OK carries the client's window; DATA then flows both ways."""
        self.link.dataReceived(openFrame(3))
        self.assertEqual(written(self.link), [])
        target = self.connectTarget()
        self.assertEqual(written(self.link), [(OPEN_OK, 3, struct.pack(">I", WINDOW))])
        self.link.dataReceived(frames.data_header(3, 5) + b"hello")
        self.assertEqual(target.transport.value(), b"hello")
        target.dataReceived(b"world")
        self.assertEqual(written(self.link), [(DATA, 3, b"world")])
        target.readConnectionLost()
        self.assertEqual(written(self.link), [(FIN, 3, b"")])

    def test_earlyDataHeldUntilConnected(self):
        """DATA and FIN that arrive while the target is dialled reach it, in order, once it accepts."""
        self.link.dataReceived(openFrame(3) + frames.data_header(3, 3) + b"GET"
                               + frames.data_header(3, 2) + b" /" + frames.encode(FIN, 3))
        target = self.connectTarget()
        self.assertEqual(target.transport.value(), b"GET /")
        self.assertTrue(target.transport.write_closed)
        self.assertEqual(self.link.connection.channels[3].window.allowed, WINDOW - 5)

    def test_earlyDataOverAllowanceRefused(self):
        """More than EARLY_DATA bytes before OPEN_OK is a protocol error."""
        self.link.dataReceived(openFrame(3) + frames.data_header(3, EARLY_DATA + 1)
                               + b"x" * (EARLY_DATA + 1))
        [(ftype, _, payload)] = written(self.link)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn("before OPEN_OK", frames.parse_goaway(payload)[1])
        self.assertTrue(self.link.transport.disconnecting)

    def test_openWithProtocolError(self):
        """An OPEN read together with a protocol error dials nothing."""
        self.link.dataReceived(openFrame(3) + b"\xff" * 9)
        self.assertEqual([f[0] for f in written(self.link)], [GOAWAY])
        self.assertEqual(self.reactor.tcpClients, [])

    def test_allowListDenies(self):
        """A target outside the allow-list is refused with code DENIED and never dialled."""
        link = establishedClient(self.reactor, allow=AllowList.parse("192.168.0.0/16:22"))
        link.dataReceived(openFrame(4, "192.168.1.1", 80))
        [(ftype, channel_id, payload)] = written(link)
        self.assertEqual((ftype, channel_id), (OPEN_FAIL, 4))
        code, reason = frames.parse_open_fail(payload)
        self.assertEqual(code, frames.FAIL_DENIED)
        self.assertIn("192.168.1.1:80", reason)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(link.connection.channels, {})

    def test_allowListAllows(self):
        """A target inside the allow-list is dialled."""
        link = establishedClient(self.reactor, allow=AllowList.parse("192.168.0.0/16:22"))
        link.dataReceived(openFrame(4, "192.168.1.1", 22))
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("192.168.1.1", 22)])
        self.assertEqual(written(link), [])

    def test_refusedTarget(self):
        """A refused connection answers OPEN_FAIL with code REFUSED and the OS's reason."""
        self.link.dataReceived(openFrame(5))
        connector = self.reactor.connectors[0]
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError("Connection refused")))
        [(ftype, channel_id, payload)] = written(self.link)
        code, reason = frames.parse_open_fail(payload)
        self.assertEqual((ftype, channel_id, code), (OPEN_FAIL, 5, frames.FAIL_REFUSED))
        self.assertIn("10.1.2.3:6666", reason)
        self.assertIn("refused", reason)
        self.assertEqual(self.link.connection.channels, {})

    def test_timedOutTarget(self):
        """A connect that times out answers OPEN_FAIL with code TIMEOUT."""
        self.link.dataReceived(openFrame(6))
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(self.reactor.connectors[0], Failure(TimeoutError()))
        [(ftype, _, payload)] = written(self.link)
        self.assertEqual(frames.parse_open_fail(payload)[0], frames.FAIL_TIMEOUT)

    def test_unexpectedDialFailure(self):
        """A dial failing in an unforeseen way is logged and answered REFUSED, not raised."""
        self.link.dataReceived(openFrame(6))
        factory = self.reactor.tcpClients[0][2]
        with capturedLogs() as events:
            factory.clientConnectionFailed(self.reactor.connectors[0],
                                           Failure(ZeroDivisionError("surprise")))
        [(ftype, _, payload)] = written(self.link)
        self.assertEqual((ftype, frames.parse_open_fail(payload)),
                         (OPEN_FAIL, (frames.FAIL_REFUSED, "10.1.2.3:6666: surprise")))
        self.assertEqual(len([e for e in events if "log_failure" in e]), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_resetWhileDialling(self):
        """A RESET for a channel still being dialled stops the dial and sends nothing back."""
        self.link.dataReceived(openFrame(7))
        connector = self.reactor.connectors[0]
        self.link.dataReceived(frames.reason_frame(RESET, 7, "user closed"))
        self.assertTrue(connector.stoppedConnecting)
        self.assertEqual(written(self.link), [])
        self.assertEqual(self.link.connection.channels, {})

    def test_linkLostStopsDials(self):
        """Losing the link stops every dial under way."""
        self.link.dataReceived(openFrame(8) + openFrame(9))
        self.link.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual([c.stoppedConnecting for c in self.reactor.connectors], [True, True])

    def test_linkLostDropsTargets(self):
        """Losing the link drops the connected targets' connections."""
        self.link.dataReceived(openFrame(8))
        target = self.connectTarget()
        self.link.connectionLost(Failure(ConnectionRefusedError()))
        self.assertTrue(target.transport.disconnected)

    def test_nameGoesThroughResolver(self):
        """A target given as a name is not passed to connectTCP as is (it is resolved first)."""
        self.link.dataReceived(openFrame(10, "db.internal", 5432))
        self.assertNotIn("db.internal", [c[0] for c in self.reactor.tcpClients])

    def test_serverDraining(self):
        """A server's draining GOAWAY leaves the link and its channels up."""
        self.link.dataReceived(openFrame(3))
        target = self.connectTarget()
        written(self.link)
        self.link.dataReceived(frames.goaway(GOAWAY_DRAINING, "server stopping"))
        self.assertFalse(self.link.transport.disconnecting)
        self.link.dataReceived(frames.data_header(3, 2) + b"hi")
        self.assertEqual(target.transport.value(), b"hi")
