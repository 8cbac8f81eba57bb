"""
Tests for L{portmapper.transport.endpoints}: endpoint descriptions parsed
once into specs (TLS context loaded then, never again), the endpoints built
from them on an in-memory reactor, and the one TCP4/TCP6 choice.
"""

import os
import shutil

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from portmapper.client.tap import Options as ClientOptions
from portmapper.config import ClientSettings, ServerSettings
from portmapper.server.tap import Options as ServerOptions
from portmapper.transport import endpoints, tls
from tests.certs import write_certificate


class SpecTests(SynchronousTestCase):
    def test_twisted_kinds_keep_their_text(self):
        """A tcp: description is checked and kept as text, shown as itself."""
        spec = endpoints.server_spec("tcp:2222:interface=127.0.0.1")
        self.assertIsInstance(spec, endpoints.ServerSpec)
        self.assertEqual((spec.text, spec.tls), ("tcp:2222:interface=127.0.0.1", None))
        self.assertEqual(str(spec), "tcp:2222:interface=127.0.0.1")
        self.assertEqual(f"[{spec}]", "[tcp:2222:interface=127.0.0.1]")
        client = endpoints.client_spec("tcp:host=example.org:port=1")
        self.assertIsInstance(client, endpoints.ClientSpec)
        self.assertEqual(str(client), "tcp:host=example.org:port=1")

    def test_bad_descriptions(self):
        """A description Twisted or our TLS cannot parse is a ValueError."""
        for bad in ("bogus:1", "tcp:abc", "tcp:1:colour=blue", "ssl:1111"):
            self.assertRaises(ValueError, endpoints.server_spec, bad)
        for bad in ("bogus:host=x:port=1", "tcp:host=x", "tls:host=x", "tls:host=x:port=1:a=b"):
            self.assertRaises(ValueError, endpoints.client_spec, bad)

    def test_equality_and_pass_through(self):
        """Specs are equal by side and text; a spec given for parsing is returned as it is."""
        spec = endpoints.server_spec("tcp:1")
        self.assertEqual(spec, endpoints.server_spec("tcp:1"))
        self.assertNotEqual(spec, endpoints.server_spec("tcp:2"))
        self.assertIs(endpoints.server_spec(spec), spec)
        client = endpoints.client_spec("tcp:host=h:port=1")
        self.assertIs(endpoints.client_spec(client), client)
        self.assertNotEqual(endpoints.ServerSpec("x"), endpoints.ClientSpec("x"))

    def test_settings_convert_text(self):
        """Settings built with a description hold its spec, as the options give them."""
        self.assertEqual(ServerSettings(client_port="tcp:2222").client_port,
                         endpoints.server_spec("tcp:2222"))
        self.assertIsInstance(ClientSettings().server, endpoints.ClientSpec)
        self.assertRaises(ValueError, ServerSettings, client_port="bogus:1")


class TLSParsedOnceTests(SynchronousTestCase):
    """The ssl:/tls: files are read when the options are, and never again."""

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.key, self.cert, self.trust = write_certificate(self.directory)
        self.reactor = MemoryReactorClock()

    def parsedOnce(self, loader, options_class, argv, name):
        """
        Parse ``argv`` with ``options_class``: tls.<loader> runs once; then
        remove the files.  Return the setting ``name`` and the list of loads
        (to see that building the endpoint loads nothing more).
        """
        loads, real = [], getattr(tls, loader)

        def counted(*args):
            loads.append(args)
            return real(*args)

        self.patch(tls, loader, counted)
        options = options_class()
        options.parseOptions(argv)
        self.assertEqual(len(loads), 1)
        shutil.rmtree(self.directory)
        return getattr(options.settings, name), loads

    def test_server(self):
        """--client-port ssl: loads the certificate once; the endpoint is built without the files."""
        spec, loads = self.parsedOnce("server_context", ServerOptions, [
            "--client-port",
            f"ssl:4433:interface=127.0.0.1:backlog=9:privateKey={self.key}:certKey={self.cert}",
        ], "client_port")
        endpoints.link_server_endpoint(self.reactor, spec).listen(Factory.forProtocol(Protocol))
        self.assertEqual(len(loads), 1)
        port, factory, backlog, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, backlog, interface), (4433, 9, "127.0.0.1"))
        self.assertIsInstance(factory, tls.TLSFactory)
        self.assertIs(factory.context, spec.tls[3])
        self.assertTrue(factory.server_side)

    def test_client(self):
        """--server tls: loads the trust roots once; the endpoint dials without the files."""
        spec, loads = self.parsedOnce("client_context", ClientOptions, [
            "--server", f"tls:host=127.0.0.1:port=4321:timeout=7:trustRoots={self.trust}",
        ], "server")
        endpoints.link_client_endpoint(self.reactor, spec).connect(Factory.forProtocol(Protocol))
        self.assertEqual(len(loads), 1)
        host, port, _, timeout, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 4321, 7.0))


class TwistedKindsTests(SynchronousTestCase):
    def test_server_and_client(self):
        """tcp: specs are built by Twisted on the reactor given."""
        reactor = MemoryReactorClock()
        endpoints.link_server_endpoint(reactor, endpoints.server_spec(r"tcp:2222:interface=\:\:1")) \
            .listen(Factory.forProtocol(Protocol))
        self.assertEqual(reactor.tcpServers[0][0], 2222)
        self.assertEqual(reactor.tcpServers[0][3], "::1")
        endpoints.link_client_endpoint(reactor, endpoints.client_spec("tcp:host=h.example:port=9")) \
            .connect(Factory.forProtocol(Protocol))
        self.assertEqual(reactor.tcpClients[0][:2], ("h.example", 9))


class TCPServerEndpointTests(SynchronousTestCase):
    def test_family_by_interface(self):
        """An IPv6 interface gets a TCP6 endpoint; an IPv4 one or every interface a TCP4 one."""
        reactor = MemoryReactorClock()
        self.assertIsInstance(endpoints.tcp_server_endpoint(reactor, 1, "::"), TCP6ServerEndpoint)
        self.assertIsInstance(endpoints.tcp_server_endpoint(reactor, 1, "::1"), TCP6ServerEndpoint)
        self.assertIsInstance(endpoints.tcp_server_endpoint(reactor, 1, "127.0.0.1"),
                              TCP4ServerEndpoint)
        self.assertIsInstance(endpoints.tcp_server_endpoint(reactor, 1), TCP4ServerEndpoint)

    def test_listens_as_asked(self):
        """The endpoint listens on the port, backlog and interface given."""
        reactor = MemoryReactorClock()
        endpoints.tcp_server_endpoint(reactor, 5555, "::1", backlog=1024) \
            .listen(Factory.forProtocol(Protocol))
        port, _, backlog, interface = reactor.tcpServers[0]
        self.assertEqual((port, backlog, interface), (5555, 1024, "::1"))
