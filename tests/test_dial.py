"""
Tests for L{portmapper.transport.dial}: connect_tcp connects, reads, fails
and is stopped as Twisted's connectTCP is, over real loopback connections,
and hands any other reactor to connectTCP itself.
"""

import socket
from unittest import SkipTest

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionRefusedError, UserError
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portmapper.transport import dial
from portmapper.transport.dial import connect_tcp
from tests.e2e import free_port, wait_for


class Banner(Protocol):
    """Says hello as soon as it is connected, echoes, and closes on 'bye'."""

    def connectionMade(self):
        self.transport.write(b"hello ")

    def dataReceived(self, data):
        if data == b"bye":
            self.transport.loseConnection()
        else:
            self.transport.write(data)


class Collect(Protocol):
    def connectionMade(self):
        self.received = bytearray()
        self.lost = Deferred()
        self.factory.made.callback(self)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback([reason])


class Dial(ClientFactory):
    protocol = Collect

    def __init__(self):
        self.made = Deferred()
        self.failed = Deferred()

    def clientConnectionFailed(self, connector, reason):
        self.failed.callback([reason])  # a list: a Failure given to callback() would errback


class ConnectTests(TestCase):
    """Over real loopback connections, on the reactor the tests run on."""

    timeout = 30

    def listen(self, interface="127.0.0.1"):
        port = reactor.listenTCP(0, Factory.forProtocol(Banner), interface=interface)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def test_connectsReadsAndCloses(self):
        """The connection carries bytes both ways, the first ones sent at once included, and closes."""
        factory = Dial()
        connector = connect_tcp(reactor, "127.0.0.1", self.listen(), factory, timeout=10)
        if dial._looks_up_at_each_event(reactor):
            self.assertIsInstance(connector.transport, dial._Client)
        protocol = yield factory.made
        yield wait_for(lambda: bytes(protocol.received) == b"hello ", what="the banner")
        self.assertEqual(protocol.transport.getPeer().host, "127.0.0.1")
        protocol.transport.write(b"echo")
        yield wait_for(lambda: bytes(protocol.received) == b"hello echo", what="the echo")
        protocol.transport.write(b"bye")
        yield protocol.lost

    @inlineCallbacks
    def test_dialsBeforeReturning(self):
        """The attempt starts within connect_tcp: the listener has the connection before a reactor turn."""
        if not dial._looks_up_at_each_event(reactor):
            self.skipTest("connectTCP's own path on this reactor")
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(5)  # loopback completes the handshake within connect()
        factory = Dial()
        connect_tcp(reactor, "127.0.0.1", listener.getsockname()[1], factory, timeout=10)
        accepted, _ = listener.accept()  # no reactor turn in between
        self.addCleanup(accepted.close)
        protocol = yield factory.made
        protocol.transport.loseConnection()
        yield protocol.lost

    @inlineCallbacks
    def test_ipv6(self):
        """An IPv6 address is dialled too."""
        if not socket.has_ipv6:
            self.skipTest("no IPv6 here")
        try:
            port = self.listen("::1")
        except Exception:
            self.skipTest("no IPv6 loopback here")
        factory = Dial()
        connect_tcp(reactor, "::1", port, factory, timeout=10)
        protocol = yield factory.made
        yield wait_for(lambda: bytes(protocol.received) == b"hello ", what="the banner")
        self.assertEqual(protocol.transport.getPeer().host, "::1")
        protocol.transport.write(b"bye")
        yield protocol.lost

    @inlineCallbacks
    def test_refusedAsTwistedSaysIt(self):
        """A refused connection fails with ConnectionRefusedError and Twisted's own message."""
        port = free_port()
        ours, theirs = Dial(), Dial()
        connect_tcp(reactor, "127.0.0.1", port, ours, timeout=10)
        reactor.connectTCP("127.0.0.1", port, theirs, timeout=10)
        [ours] = yield ours.failed
        [theirs] = yield theirs.failed
        self.assertTrue(ours.check(ConnectionRefusedError))
        self.assertEqual(ours.getErrorMessage(), theirs.getErrorMessage())

    @inlineCallbacks
    def test_stopConnecting(self):
        """A dial stopped before it connected fails with UserError, and never connects."""
        factory = Dial()
        connector = connect_tcp(reactor, "127.0.0.1", self.listen(), factory, timeout=10)
        connector.stopConnecting()
        [reason] = yield factory.failed
        self.assertTrue(reason.check(UserError))
        self.assertFalse(factory.made.called)


class OtherReactorTests(SynchronousTestCase):
    def test_otherReactorGetsConnectTCP(self):
        """A reactor that is not epoll, poll or select (a MemoryReactor) is asked with connectTCP."""
        memory = MemoryReactorClock()
        factory = Dial()
        connect_tcp(memory, "10.0.0.1", 22, factory, timeout=7)
        self.assertEqual(memory.tcpClients, [("10.0.0.1", 22, factory, 7, None)])

    def test_epollReactorKnown(self):
        """The epoll reactor, where there is one, is among those dialled our way."""
        try:
            from twisted.internet.epollreactor import EPollReactor
        except ImportError:
            raise SkipTest("no epoll here")
        self.assertTrue(dial._looks_up_at_each_event(object.__new__(EPollReactor)))  # no epoll fd
