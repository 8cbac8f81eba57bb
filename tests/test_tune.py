"""
Tests for L{portmapper.transport.tune}: the socket settings every link and
channel connection gets, and that transports without them are left alone.
"""

from twisted.internet import tcp
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from portmapper.transport.tune import READ_SIZE, SEND_LIMIT, tune_transport


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
