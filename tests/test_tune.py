"""
Tests for L{portmapper.transport.tune}: the socket settings every link and
channel connection gets (an accepted one by inheriting them from its
listener, on Linux), and that transports without them are left alone.
"""

import socket
import sys
from unittest import SkipTest

from twisted.internet import tcp
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from portmapper.transport.tune import (
    KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, READ_SIZE, SEND_LIMIT, tune_channel,
    tune_transport,
)


class TuneTransportTests(SynchronousTestCase):
    """tune_transport sets what a TCP transport has, and nothing else."""

    def test_tcpTransportTuned(self):
        """A TCP transport gets Nagle off, large reads, and large sends per write event."""
        class Tuned(tcp.Connection):
            def __init__(self):  # no socket: only the attributes matter here
                self.nodelay = None

            def setTcpNoDelay(self, enabled):
                self.nodelay = enabled

        transport = Tuned()
        tune_transport(transport)
        self.assertEqual((transport.nodelay, transport.bufferSize, transport.SEND_LIMIT),
                         (True, READ_SIZE, SEND_LIMIT))
        self.assertGreater(SEND_LIMIT, tcp.Connection.SEND_LIMIT)

    def test_otherTransportsLeftAlone(self):
        """A transport without those knobs (StringTransport) is not harmed."""
        transport = StringTransport()
        tune_transport(transport)
        self.assertFalse(hasattr(transport, "SEND_LIMIT"))


class _Counting(socket.socket):
    """A socket that counts its setsockopt calls."""

    calls = 0

    def setsockopt(self, *args):
        self.calls += 1
        return super().setsockopt(*args)


def _options(sock):
    """The options tune_channel gives, as this socket has them."""
    got = {"nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
           "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0}
    if hasattr(socket, "TCP_KEEPIDLE"):
        got["timings"] = tuple(sock.getsockopt(socket.IPPROTO_TCP, option) for option in (
            socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT))
    return got


_TUNED = {"nodelay": True, "keepalive": True}
if hasattr(socket, "TCP_KEEPIDLE"):
    _TUNED["timings"] = (KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)


class _Transport(tcp.Connection):
    def __init__(self, sock, server=None):  # no reactor: the socket's options are what matter
        self.socket = sock
        if server is not None:
            self.server = server


class TuneChannelTests(SynchronousTestCase):
    """tune_channel gives a channel's connection Nagle off, large buffers and keepalive."""

    def setUp(self):
        self.listener = _Counting()
        self.addCleanup(self.listener.close)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = type("Port", (), {"socket": self.listener})()

    def accepted(self):
        """A connection to the listener: (connecting socket, accepted socket that counts calls)."""
        client = socket.create_connection(self.listener.getsockname())
        self.addCleanup(client.close)
        sock, _ = self.listener.accept()
        counting = _Counting(fileno=sock.detach())
        self.addCleanup(counting.close)
        return client, counting

    def test_connectedSocketTuned(self):
        """A connection we dialled (no listener) gets every option and the buffer sizes."""
        client, _ = self.accepted()
        transport = _Transport(client)
        tune_channel(transport)
        self.assertEqual(_options(client), _TUNED)
        self.assertEqual((transport.bufferSize, transport.SEND_LIMIT), (READ_SIZE, SEND_LIMIT))

    def test_acceptedSocketTuned(self):
        """An accepted connection gets every option, whether or not it inherits them."""
        for _ in range(2):
            _, sock = self.accepted()
            transport = _Transport(sock, self.port)
            tune_channel(transport)
            self.assertEqual(_options(sock), _TUNED)
            self.assertEqual((transport.bufferSize, transport.SEND_LIMIT), (READ_SIZE, SEND_LIMIT))

    def test_laterConnectionsInherit(self):
        """On Linux the first accepted connection tunes the listener; later ones cost no setsockopt."""
        if not sys.platform.startswith("linux"):
            raise SkipTest("only Linux is relied on to pass a listener's TCP options on")
        _, first = self.accepted()
        tune_channel(_Transport(first, self.port))
        self.assertEqual(_options(self.listener), _TUNED)
        _, later = self.accepted()
        tune_channel(_Transport(later, self.port))
        self.assertEqual(_options(later), _TUNED)
        self.assertEqual((first.calls > 0, later.calls), (True, 0))

    def test_queuedBeforeTuningStillTuned(self):
        """A connection queued before the listener was tuned (no inherited options) gets them set."""
        _, first = self.accepted()
        client = socket.create_connection(self.listener.getsockname())  # queued, not accepted yet
        self.addCleanup(client.close)
        tune_channel(_Transport(first, self.port))
        sock, _ = self.listener.accept()
        self.addCleanup(sock.close)
        tune_channel(_Transport(sock, self.port))
        self.assertEqual(_options(sock), _TUNED)

    def test_otherTransportsLeftAlone(self):
        """A transport without a socket (StringTransport) is not harmed."""
        transport = StringTransport()
        tune_channel(transport)
        self.assertFalse(hasattr(transport, "SEND_LIMIT"))
