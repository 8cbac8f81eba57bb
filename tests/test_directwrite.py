"""
Tests for L{portmapper.transport.directwrite}: writes that go straight to the socket
when the transport queues nothing, and through the transport otherwise,
always in order.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from portmapper.transport.directwrite import direct_writers, lose_write_connection
from tests.e2e import wait_for


@implementer(IHalfCloseableProtocol)
class Collect(Protocol):
    def connectionMade(self):
        self.received = bytearray()
        self.eof = False
        self.factory.connected.callback(self)

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.eof = True

    def writeConnectionLost(self):
        pass


@implementer(IHalfCloseableProtocol)
class Sender(Protocol):
    write_lost = 0  # writeConnectionLost calls

    def connectionMade(self):
        self.factory.connected.callback(self)

    def readConnectionLost(self):
        pass

    def writeConnectionLost(self):
        self.write_lost += 1


class OtherTransportTests(SynchronousTestCase):
    def test_notTcpGetsTransportMethods(self):
        """A transport that is not Twisted's TCP gets its own write and writeSequence back."""
        transport = StringTransport()
        write, writeSequence = direct_writers(transport)
        self.assertEqual((write, writeSequence), (transport.write, transport.writeSequence))

    def test_notTcpHalfClosedByTransport(self):
        """A transport that is not Twisted's TCP is half-closed by its own loseWriteConnection."""
        class HalfClosing(StringTransport):
            write_closed = False

            def loseWriteConnection(self):
                self.write_closed = True

        transport = HalfClosing()
        lose_write_connection(transport)
        self.assertTrue(transport.write_closed)


class DirectWriteTests(TestCase):
    """Over a real loopback connection."""

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        receiving = Factory.forProtocol(Collect)
        receiving.connected = Deferred()
        port = reactor.listenTCP(0, receiving, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sending = ClientFactory.forProtocol(Sender)
        sending.connected = Deferred()
        reactor.connectTCP("127.0.0.1", port.getHost().port, sending)
        self.sender = yield sending.connected
        self.receiver = yield receiving.connected
        self.addCleanup(self.sender.transport.loseConnection)
        self.t = self.sender.transport
        self.write, self.writeSequence = direct_writers(self.t)

    def queued(self):
        return len(self.t.dataBuffer) - self.t.offset + self.t._tempDataLen

    @inlineCallbacks
    def test_idleTransportWritesAtOnce(self):
        """With nothing queued, the bytes go to the socket at once, not into Twisted's queue."""
        self.writeSequence([b"head", b"payload"])
        self.write(b"!")
        self.assertEqual(self.queued(), 0)
        yield wait_for(lambda: bytes(self.receiver.received) == b"headpayload!", what="the bytes")

    @inlineCallbacks
    def test_queuedTransportKeepsOrder(self):
        """While the transport holds queued bytes, writes queue behind them."""
        self.t.write(b"first ")
        self.write(b"second ")
        self.writeSequence([b"third", b"."])
        self.assertEqual(self.queued(), len(b"first second third."))
        yield wait_for(lambda: bytes(self.receiver.received) == b"first second third.",
                       what="the bytes in order")

    @inlineCallbacks
    def test_fullSocketQueuesTheRest(self):
        """What the socket does not take is queued and still arrives, in order."""
        data = os.urandom(32 * 2**20)
        self.writeSequence([b"<", data])
        self.write(b">")
        self.assertGreater(self.queued(), 0)
        yield wait_for(lambda: len(self.receiver.received) == len(data) + 2, what="all the bytes")
        self.assertTrue(bytes(self.receiver.received) == b"<" + data + b">")

    @inlineCallbacks
    def test_closingTransportQueues(self):
        """Once a half-close is asked for, writes go through Twisted's queue, which flushes before the FIN."""
        self.t.loseWriteConnection()
        self.write(b"late")
        self.assertEqual(self.queued(), len(b"late"))
        yield wait_for(lambda: self.t._writeDisconnected, what="the half-close")
        yield wait_for(lambda: bytes(self.receiver.received) == b"late", what="the bytes")

    @inlineCallbacks
    def test_idleHalfCloseAtOnce(self):
        """With nothing queued, the write side is shut at once and the protocol told, then the peer sees EOF."""
        self.write(b"last")
        lose_write_connection(self.t)
        self.assertEqual((self.t._writeDisconnected, self.sender.write_lost), (True, 1))
        yield wait_for(lambda: self.receiver.eof, what="the EOF")
        self.assertEqual(bytes(self.receiver.received), b"last")
        self.assertEqual(self.sender.write_lost, 1)  # not again on a later write event

    @inlineCallbacks
    def test_queuedHalfCloseAfterTheBytes(self):
        """With bytes queued, the half-close waits for Twisted to flush them: all arrive before the EOF."""
        data = os.urandom(32 * 2**20)
        self.write(data)
        self.assertGreater(self.queued(), 0)
        lose_write_connection(self.t)
        self.assertEqual((self.t._writeDisconnected, self.sender.write_lost), (False, 0))
        yield wait_for(lambda: self.receiver.eof, what="the EOF")
        self.assertEqual(len(self.receiver.received), len(data))
        self.assertEqual(self.sender.write_lost, 1)
