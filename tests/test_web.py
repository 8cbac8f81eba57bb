"""
Tests of the server's outgoing HTTP (:mod:`portmapper.transport.web`) and
of starting the tunnel's processes without pyOpenSSL
(:mod:`portmapper.transport.lean`).
"""

import json
import os
import socket
import subprocess
import sys
import threading

from hyperlink import URL
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.resource import Resource
from twisted.web.server import Site

from portmapper.server.webhooks import Webhooks
from portmapper.transport import tls
from portmapper.transport.web import EndpointFactory, http_client
from tests.certs import write_certificate
from tests.e2e import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EndpointFactoryTests(SynchronousTestCase):
    """http gets a TCP endpoint; https the same inside the standard library's TLS."""

    def test_schemes(self):
        """http -> HostnameEndpoint, https -> TLSClientEndpoint on it, others refused."""
        factory = EndpointFactory(reactor, context=tls.client_context())
        self.assertIsInstance(factory.endpointForURI(URI.fromBytes(b"http://a.example/")),
                              HostnameEndpoint)
        secure = factory.endpointForURI(URI.fromBytes(b"https://a.example:8443/x"))
        self.assertIsInstance(secure, tls.TLSClientEndpoint)
        self.assertEqual(secure._hostname, "a.example")
        with self.assertRaises(SchemeNotSupported):
            factory.endpointForURI(URI.fromBytes(b"ftp://a.example/"))


class SystemAuthoritiesTests(TestCase):
    """The system's certificate authorities are read off the reactor's thread, once."""

    @inlineCallbacks
    def test_read_in_a_thread(self):
        """An https endpoint reads the authorities in a pool thread when it connects, not before."""
        read_in, real = [], tls.client_context

        def client_context():
            read_in.append(threading.current_thread())
            return real()

        self.patch(tls, "client_context", client_context)
        with socket.socket() as s:  # a port nothing listens on: the dial is refused
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        factory = EndpointFactory(reactor)
        endpoints = [factory.endpointForURI(URI.fromBytes(b"https://127.0.0.1:%d/" % port))
                     for _ in range(2)]
        self.assertEqual(read_in, [])
        for endpoint in endpoints:
            with self.assertRaises(ConnectError):
                yield endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual(len(read_in), 1)
        self.assertIsNot(read_in[0], threading.current_thread())


class _Collect(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.bodies = []

    def render_POST(self, request):
        self.bodies.append(json.loads(request.content.read()))
        return b"{}"


class HTTPSTests(TestCase):
    """A webhook reaches an HTTPS receiver over the standard library's TLS, verified."""

    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        key, cert, self.trust = write_certificate(directory)
        self.receiver = _Collect()
        endpoint = tls.TLSServerEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), tls.server_context(cert, key))
        return endpoint.listen(Site(self.receiver)).addCallback(self._listening)

    def _listening(self, port):
        self.addCleanup(port.stopListening)
        self.url = URL(scheme="https", host="localhost", port=port.getHost().port,
                       path=("hook",)).to_text()

    @inlineCallbacks
    def test_webhook_over_https(self):
        """An alert POSTed to an https URL arrives whole at a receiver with a trusted certificate."""
        hooks = Webhooks([self.url], reactor,
                         http=http_client(reactor, context=tls.client_context(self.trust)))
        hooks.startService()
        self.addCleanup(hooks.stopService)
        hooks.notify("client linked", client_id=7)
        yield wait_for(lambda: self.receiver.bodies, what="the alert")
        self.assertEqual(self.receiver.bodies[0]["event"], "client linked")
        self.assertEqual(self.receiver.bodies[0]["client_id"], 7)

    @inlineCallbacks
    def test_untrusted_certificate_refused(self):
        """With the system's authorities only, a self-signed receiver is refused, nothing sent."""
        client = http_client(reactor, context=tls.client_context())
        with self.assertRaises(Exception):
            yield client.post(self.url, data=b"{}", timeout=10)
        self.assertEqual(self.receiver.bodies, [])


PROBE = """
import sys
from twisted.plugins import portmapper_plugins
maker = getattr(portmapper_plugins, sys.argv[1])
maker.options  # what twistd does first: import the service's module
from twisted.internet import reactor
from twisted.internet import endpoints, tcp
print("loaded" if "OpenSSL" in sys.modules else "absent")
import OpenSSL  # still importable afterwards, for whoever asks
print("importable")
"""


class LeanStartTests(SynchronousTestCase):
    """twistd's entries import the server, the client and the reactor without pyOpenSSL."""

    def probe(self, maker):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [os.path.join(ROOT, "src"), ROOT, os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run([sys.executable, "-c", PROBE, maker], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout.split()

    def test_server(self):
        """`twistd portmapper` loads no pyOpenSSL; OpenSSL stays importable."""
        self.assertEqual(self.probe("portmapper"), ["absent", "importable"])

    def test_client(self):
        """`twistd portmapper-client` loads no pyOpenSSL; OpenSSL stays importable."""
        self.assertEqual(self.probe("portmapper_client"), ["absent", "importable"])
