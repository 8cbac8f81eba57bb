"""
Tests of the listen backlog: the client port, the admin API and the public
ports queue ``LISTEN_BACKLOG`` connections unless a description says
otherwise (on a memory reactor, which records the backlog asked for).
"""

import os

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from portmapper.server import tap as server_tap
from portmapper.transport import endpoints
from portmapper.transport.tune import LISTEN_BACKLOG
from tests.certs import write_certificate


def backlog_of(reactor, endpoint):
    """The backlog ``endpoint`` listens with on ``reactor`` (a memory reactor)."""
    endpoint.listen(Factory.forProtocol(Protocol))
    return reactor.tcpServers[-1][2]


class ServerEndpointTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()

    def test_tcpWithoutBacklogGetsLarge(self):
        """A tcp: or tcp6: description without a backlog listens with LISTEN_BACKLOG (1024), not 50."""
        self.assertEqual(LISTEN_BACKLOG, 1024)
        for description in ("tcp:8080", "tcp:8080:interface=127.0.0.1", "tcp:8080:127.0.0.1",
                            r"tcp6:8080:interface=\:\:1"):
            self.assertEqual(backlog_of(self.reactor, endpoints.server_endpoint(
                self.reactor, description)), 1024, description)

    def test_givenBacklogKept(self):
        """A backlog the description gives, by name or in its place, is kept."""
        for description in ("tcp:8080:backlog=10", "tcp:8080:interface=127.0.0.1:backlog=10",
                            "tcp:8080:127.0.0.1:10"):
            self.assertEqual(backlog_of(self.reactor, endpoints.server_endpoint(
                self.reactor, description)), 10, description)

    def test_linkServerEndpoint(self):
        """The client port's tcp: description gets the large backlog, or keeps its own."""
        for description, backlog in (("tcp:1111", 1024), ("tcp:1111:backlog=10", 10)):
            endpoint = endpoints.link_server_endpoint(self.reactor, description)
            self.assertEqual(backlog_of(self.reactor, endpoint), backlog, description)

    def test_sslWithoutBacklogGetsLarge(self):
        """Our ssl: description without a backlog listens with LISTEN_BACKLOG too."""
        directory = self.mktemp()
        os.makedirs(directory)
        key, cert, _ = write_certificate(directory)
        endpoint = endpoints.link_server_endpoint(
            self.reactor, f"ssl:4433:privateKey={key}:certKey={cert}")
        self.assertEqual(backlog_of(self.reactor, endpoint), 1024)

    def test_publicPortsShareIt(self):
        """The one TCP server endpoint (public ports, TLS client port) defaults to LISTEN_BACKLOG."""
        endpoint = endpoints.tcp_server_endpoint(self.reactor, 5433, "127.0.0.1")
        self.assertEqual(backlog_of(self.reactor, endpoint), 1024)


class ServerServiceBacklogTests(SynchronousTestCase):
    def test_clientPortAndAdmin(self):
        """The server's client port and admin API listen with 1024 by default, 10 when asked."""
        options = server_tap.Options()
        options.parseOptions([
            "--data-dir", self.mktemp(),
            "--client-port", "tcp:1111:interface=127.0.0.1",
            "--admin", "tcp:8080:interface=127.0.0.1:backlog=10",
        ])
        reactor = MemoryReactorClock()
        service = server_tap.build(options.settings, reactor)
        for name in ("client-port", "admin"):
            service.getServiceNamed(name).startService()
            self.addCleanup(service.getServiceNamed(name).stopService)
        self.assertEqual([(port, backlog) for port, _, backlog, _ in reactor.tcpServers],
                         [(1111, 1024), (8080, 10)])
