"""
End-to-end test of the link over TLS: the server listens on an ``ssl:``
endpoint, the client dials ``tls:`` and verifies the server's certificate.
The certificate is made for the test, for the name ``localhost``.
"""

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.e2e import Backend, Echo, Running, echo_roundtrip, in_thread, start_client, wait_for


def write_certificate(directory, name="localhost"):
    """A self-signed certificate for ``name``: (key path, cert path, trust directory)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(os.path.join(directory, "trust"))
    key_path = os.path.join(directory, "key.pem")
    cert_path = os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    with open(cert_path, "wb") as f:
        f.write(pem)
    with open(os.path.join(directory, "trust", "ca.pem"), "wb") as f:
        f.write(pem)
    return key_path, cert_path, os.path.join(directory, "trust")


class TLSLinkTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def startServer(self):
        directory = self.mktemp()
        os.makedirs(directory)
        key, cert, self.trust = write_certificate(directory)
        self.other_trust = write_certificate(os.path.join(directory, "other"))[2]
        self.running = yield Running(self, os.path.join(directory, "data"), extra=[
            "--client-port", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        ]).start()
        self.server = self.running.server

    def dial(self, trust):
        return ["--server", f"tls:host=localhost:port={self.server.client_port}:trustRoots={trust}"]

    @inlineCallbacks
    def test_carries_data_over_tls(self):
        """A client that trusts the server's certificate links up over TLS and carries data exactly."""
        yield self.startServer()
        start_client(self, self.server.client_port, *self.dial(self.trust))
        yield wait_for(lambda: self.server.registry.clients, what="the TLS client")
        public = yield self.running.map(Backend(Echo).listen(self))
        data = os.urandom(3 * 2**20)
        self.assertTrue((yield in_thread(echo_roundtrip, public, data)) == data)

    @inlineCallbacks
    def test_untrusted_server_refused(self):
        """A client that does not trust the server's certificate never links up."""
        yield self.startServer()
        failures = []

        def observe(event):
            if event.get("log_format", "").startswith("could not link up"):
                failures.append(event["why"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        start_client(self, self.server.client_port, *self.dial(self.other_trust))
        yield wait_for(lambda: failures, what="the verification failure")
        self.assertIn("certificate verify failed", failures[0])
        self.assertEqual(self.server.registry.clients, {})
