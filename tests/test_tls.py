"""
Unit tests of :mod:`portmapper.transport.tls`: parsing the ``ssl:``/``tls:``
descriptions, and :class:`TLSProtocol` between two ``StringTransport``s
(the bytes are carried from one to the other by hand, no sockets).
"""

import os

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from portmapper.transport import tls
from tests.certs import write_certificate


class Recorder(Protocol):
    """A wrapped protocol that keeps what happens to it."""

    def __init__(self):
        self.received = []
        self.lost = None
        self.made_with = None

    def makeConnection(self, transport):
        self.made_with = transport
        super().makeConnection(transport)

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.lost = reason

    def data(self):
        return b"".join(self.received)


class Certificates:
    """One certificate for ``localhost`` and one the client does not trust."""

    def __init__(self, test):
        directory = test.mktemp()
        os.makedirs(directory)
        self.key, self.cert, self.trust = write_certificate(directory)
        self.other_trust = write_certificate(os.path.join(directory, "other"))[2]


class SplitDescriptionTests(TestCase):
    def test_positional_keywords_and_escapes(self):
        """Positional and key=value parts split on colons; a backslash escapes a colon."""
        self.assertEqual(
            tls.split_description(r"ssl:1111:interface=\:\:1:privateKey=a\\b.pem"),
            ("ssl", ["1111"], {"interface": "::1", "privateKey": r"a\b.pem"}))

    def test_value_with_equals(self):
        """Only the first '=' separates a key from its value."""
        self.assertEqual(tls.split_description("tls:host=h:trustRoots=a=b"),
                         ("tls", [], {"host": "h", "trustRoots": "a=b"}))


class ParseTests(TestCase):
    def setUp(self):
        self.certs = Certificates(self)

    def test_other_kinds_are_not_ours(self):
        """Descriptions of other kinds are left to Twisted's parsers."""
        self.assertIsNone(tls.parse_server("tcp:1111"))
        self.assertIsNone(tls.parse_client("tcp:host=127.0.0.1:port=1111"))

    def test_server(self):
        """An ssl: description gives the port, interface, backlog and a loaded context."""
        port, interface, backlog, context = tls.parse_server(
            f"ssl:0:interface=127.0.0.1:backlog=7:privateKey={self.certs.key}"
            f":certKey={self.certs.cert}")
        self.assertEqual((port, interface, backlog), (0, "127.0.0.1", 7))
        self.assertEqual(tls.parse_server(f"ssl:1:interface=\\:\\:0001:privateKey={self.certs.key}"
                                          f":certKey={self.certs.cert}")[1], "::1")
        self.assertTrue(context.check_hostname is False)

    def test_server_errors(self):
        """Each mistake in an ssl: description is named in one sentence."""
        key, cert = self.certs.key, self.certs.cert
        cases = [
            ("ssl:1111", "needs privateKey"),
            (f"ssl:port=abc:privateKey={key}:certKey={cert}", "Bad port 'abc'"),
            (f"ssl:70000:privateKey={key}:certKey={cert}", "Bad port '70000'"),
            (f"ssl:1111:privateKey={key}:certKey={cert}:sslmethod=x",
             "Unsupported option 'sslmethod'"),
            (f"ssl:1111:2222:privateKey={key}", "Too many positional"),
            (f"ssl:1111:privateKey={key}:certKey=/nonexistent.pem",
             "Cannot load the TLS certificate '/nonexistent.pem'"),
            (f"ssl:1111:privateKey={cert}", "Cannot load the TLS certificate"),
            (f"ssl:+1111:privateKey={key}", "Bad port '+1111'"),
            (f"ssl:1111:interface=example.org:privateKey={key}", "Bad interface 'example.org'"),
        ]
        for text, expected in cases:
            with self.assertRaises(ValueError, msg=text) as caught:
                tls.parse_server(text)
            self.assertIn(expected, str(caught.exception))

    def test_client(self):
        """A tls: description gives the host, port, timeout and a verifying context."""
        host, port, timeout, context = tls.parse_client(
            f"tls:host=localhost:port=1111:timeout=5:trustRoots={self.certs.trust}")
        self.assertEqual((host, port, timeout), ("localhost", 1111, 5.0))
        self.assertTrue(context.check_hostname)
        self.assertEqual(len(context.get_ca_certs()), 1)
        self.assertEqual(tls.parse_client("tls:example.org:443")[:2], ("example.org", 443))
        self.assertEqual(tls.parse_client(r"tls:\:\:0001:443")[:2], ("::1", 443))

    def test_client_errors(self):
        """Each mistake in a tls: description is named in one sentence."""
        empty = self.mktemp()
        os.makedirs(empty)
        cases = [
            ("tls:port=1111", "needs host"),
            ("tls:host=h", "needs a port"),
            ("tls:host=h:port=0", "Bad port '0'"),
            ("tls:host=h:port=\u0661", "Bad port '\u0661'"),
            ("tls:host=10.0.0.300:port=1", "Bad host '10.0.0.300'"),
            ("tls:host=bad_host:port=1", "Bad host 'bad_host'"),
            ("tls:host=h:port=1:timeout=-1", "Bad timeout '-1'"),
            ("tls:host=h:port=1:caCertsDir=/x", "Unsupported option 'caCertsDir'"),
            ("tls:host=h:port=1:trustRoots=/nonexistent", "Cannot read the trustRoots"),
            (f"tls:host=h:port=1:trustRoots={empty}", "holds no PEM certificate"),
        ]
        for text, expected in cases:
            with self.assertRaises(ValueError, msg=text) as caught:
                tls.parse_client(text)
            self.assertIn(expected, str(caught.exception))


class Pair:
    """A client and a server TLSProtocol over StringTransports, pumped by hand."""

    def __init__(self, certs, trust=None, hostname="localhost"):
        server_context = tls.server_context(certs.cert, certs.key)
        client_context = tls.client_context(trust or certs.trust)
        self.server_app, self.client_app = Recorder(), Recorder()
        self.server = tls.TLSProtocol(server_context, self.server_app, server_side=True)
        self.client = tls.TLSProtocol(client_context, self.client_app, server_side=False,
                                      hostname=hostname)
        self.server_wire, self.client_wire = StringTransport(), StringTransport()
        self.server.makeConnection(self.server_wire)
        self.client.makeConnection(self.client_wire)

    def pump(self, rounds=20):
        """Carry bytes both ways until none move (at most ``rounds`` times)."""
        for _ in range(rounds):
            moved = False
            for wire, peer in ((self.client_wire, self.server),
                               (self.server_wire, self.client)):
                data = wire.value()
                if data:
                    wire.clear()
                    peer.dataReceived(data)
                    moved = True
            if not moved:
                return

    def lose(self, wire, protocol):
        """What the reactor does once a StringTransport was asked to close."""
        if wire.disconnecting and protocol.wrapped.lost is None:
            protocol.connectionLost(Failure(ConnectionDone()))


class TLSProtocolTests(TestCase):
    def setUp(self):
        self.certs = Certificates(self)

    def test_wrapped_protocol_connected_at_once(self):
        """The wrapped protocol is connected before the TLS handshake, with the TLS layer as transport."""
        pair = Pair(self.certs)
        self.assertIs(pair.client_app.made_with, pair.client)
        self.assertIs(pair.server_app.made_with, pair.server)
        self.assertFalse(pair.client.handshake_done)

    def test_data_both_ways_exact(self):
        """Writes before and after the handshake arrive whole and in order, both ways."""
        pair = Pair(self.certs)
        pair.client.write(b"early ")
        pair.client.writeSequence([b"hdr", memoryview(b"payload")])
        pair.pump()
        self.assertTrue(pair.client.handshake_done and pair.server.handshake_done)
        big = os.urandom(3 * tls.READ_SIZE + 12345)
        pair.server.writeSequence([b"x" * 9, big])
        pair.client.write(b" late")
        pair.pump()
        self.assertEqual(pair.server_app.data(), b"early hdrpayload late")
        self.assertEqual(pair.client_app.data(), b"x" * 9 + big)
        self.assertNotIn(big[:64], pair.server_wire.value() + pair.client_wire.value())

    def test_ciphertext_is_not_plaintext(self):
        """What goes on the wire does not contain the plaintext."""
        pair = Pair(self.certs)
        pair.pump()
        secret = b"a secret that must not be seen" * 10
        pair.client.write(secret)
        self.assertTrue(pair.client_wire.value())
        self.assertNotIn(secret[:30], pair.client_wire.value())

    def test_untrusted_certificate(self):
        """A server the client does not trust: both wrapped protocols learn why, nothing is delivered."""
        pair = Pair(self.certs, trust=self.certs.other_trust)
        pair.client.write(b"never")
        pair.pump()
        self.assertTrue(pair.client_wire.disconnecting)
        pair.lose(pair.client_wire, pair.client)
        self.assertIn("certificate verify failed", pair.client_app.lost.getErrorMessage())
        self.assertEqual(pair.server_app.data(), b"")

    def test_wrong_hostname(self):
        """A certificate for another name is refused."""
        pair = Pair(self.certs, hostname="other.example")
        pair.pump()
        pair.lose(pair.client_wire, pair.client)
        self.assertIn("certificate verify failed", pair.client_app.lost.getErrorMessage())

    def test_garbage_from_peer(self):
        """Bytes that are not TLS end the connection with the TLS error, and nothing is delivered."""
        pair = Pair(self.certs)
        pair.server.dataReceived(b"GET / HTTP/1.1\r\n\r\n" * 4)
        self.assertTrue(pair.server_wire.disconnecting)
        pair.lose(pair.server_wire, pair.server)
        self.assertEqual(pair.server_app.received, [])
        self.assertIn("SSL", pair.server_app.lost.getErrorMessage())

    def test_corrupt_record_after_good_data(self):
        """Good records are delivered; a corrupt one after them ends the connection."""
        pair = Pair(self.certs)
        pair.pump()
        pair.client.write(b"good")
        good = pair.client_wire.value()
        pair.client_wire.clear()
        pair.client.write(b"evil")
        bad = bytearray(pair.client_wire.value())
        bad[-1] ^= 0xFF
        pair.server.dataReceived(good + bytes(bad))
        self.assertEqual(pair.server_app.data(), b"good")
        self.assertTrue(pair.server_wire.disconnecting)
        pair.lose(pair.server_wire, pair.server)
        self.assertIsNotNone(pair.server_app.lost)
        self.assertNotIsInstance(pair.server_app.lost.value, ConnectionDone)

    def test_close_notify(self):
        """loseConnection sends close_notify after the data; the peer delivers it all, then closes."""
        pair = Pair(self.certs)
        pair.pump()
        pair.client.write(b"last words")
        pair.client.loseConnection()
        self.assertTrue(pair.client_wire.disconnecting)
        pair.client.write(b"ignored after close")
        pair.pump()
        self.assertEqual(pair.server_app.data(), b"last words")
        self.assertTrue(pair.server_wire.disconnecting)
        pair.lose(pair.server_wire, pair.server)
        self.assertIsInstance(pair.server_app.lost.value, ConnectionDone)

    def test_close_before_handshake(self):
        """A close asked for during the handshake happens after it, once what was written is sent."""
        pair = Pair(self.certs)
        pair.server.write(b"goodbye")
        pair.server.loseConnection()
        self.assertFalse(pair.server_wire.disconnecting)
        pair.pump()
        self.assertTrue(pair.server_wire.disconnecting)
        self.assertEqual(pair.client_app.data(), b"goodbye")

    def test_producer_and_tcp_calls_go_to_the_socket(self):
        """Producer registration, pausing and TCP options reach the TCP transport."""
        pair = Pair(self.certs)
        producer = Recorder()
        pair.client.registerProducer(producer, True)
        self.assertIs(pair.client_wire.producer, producer)
        pair.client.pauseProducing()
        self.assertEqual(pair.client_wire.producerState, "paused")
        pair.client.resumeProducing()
        self.assertEqual(pair.client_wire.producerState, "producing")
        pair.client.unregisterProducer()
        self.assertIsNone(pair.client_wire.producer)
        self.assertEqual(pair.client.getPeer(), pair.client_wire.getPeer())
        self.assertEqual(pair.client.getHost(), pair.client_wire.getHost())
        pair.client.abortConnection()
        self.assertTrue(pair.client_wire.disconnecting)
