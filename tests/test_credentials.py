"""
Tests for per-client credentials below the link: the credential token and
its Ed25519 proof (L{portmapper.protocol.auth}), the client's choice of
proof method, the client config's check of a credential token, and the
store's credentials table (L{portmapper.server.store.Store}).

The handshake with credentials is tested in C{test_handshake}, the admin
API's routes in C{test_admin}, and the whole way (issue, link, revoke) in
C{test_e2e_credentials}.
"""

import base64
import os
import sqlite3
import subprocess
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from portmapper.client import tap as client_tap
from portmapper.protocol import auth, frames
from tests.test_store import StoreCase

TAG = "office"
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


class TokenTests(SynchronousTestCase):
    """A credential token is the prefix and a 32-byte seed; damaged ones are told apart."""

    def test_form(self):
        """A new token is pmc_ and the base64url of 32 bytes; its public key is 32 bytes, not in it."""
        token, public_key = auth.new_credential()
        self.assertTrue(token.startswith(auth.CREDENTIAL_PREFIX))
        self.assertEqual(len(auth.credential_seed(token)), auth.SEED_SIZE)
        self.assertEqual(auth.public_key(token), public_key)
        self.assertEqual(len(public_key), auth.PUBLIC_KEY_SIZE)
        self.assertNotEqual(auth.new_credential()[0], token)

    def test_damaged(self):
        """A token cut short, lengthened or with a wrong character is refused with a reason."""
        token, _ = auth.new_credential()
        for bad in (token[:-1], token + "A", token[:10] + "*" + token[11:], "pmc_", "pmc_===="):
            with self.assertRaises(ValueError) as caught:
                auth.credential_seed(bad)
            self.assertIn("damaged or cut short", str(caught.exception))

    def test_clientConfigChecksTheToken(self):
        """The client's --token takes a whole credential or any shared token, but not a damaged credential."""
        token, _ = auth.new_credential()
        for good in (token, "a shared secret"):
            options = client_tap.Options()
            options.parseOptions(["--token", good])
            self.assertEqual(options.settings.token, good)
        with self.assertRaises(usage.UsageError) as caught:
            client_tap.Options().parseOptions(["--token", token[:-3]])
        self.assertIn("damaged or cut short; copy it again.", str(caught.exception))


class ProofTests(SynchronousTestCase):
    """A credential's proof verifies for its own key, nonce and tag, and for nothing else."""

    def setUp(self):
        self.token, self.public_key = auth.new_credential()
        self.nonce = auth.make_nonce()
        method, proof = auth.client_proof(self.token, self.nonce, TAG)
        self.assertEqual(method, frames.AUTH_CREDENTIAL)
        self.assertEqual(len(proof), frames.PROOF_SIZES[frames.AUTH_CREDENTIAL])
        self.key, self.signature = auth.split_credential_proof(proof)

    def test_signAndVerify(self):
        """The proof carries the credential's public key and a signature that verifies."""
        self.assertEqual(self.key, self.public_key)
        self.assertTrue(auth.verify_credential(self.public_key, self.nonce, TAG, self.signature))

    def test_wrongKey(self):
        """Another credential's signature does not verify under this public key."""
        other, _ = auth.new_credential()
        signature = auth.split_credential_proof(auth.credential_proof(other, self.nonce, TAG))[1]
        self.assertFalse(auth.verify_credential(self.public_key, self.nonce, TAG, signature))

    def test_wrongTag(self):
        """A signature for one tag does not verify for another."""
        self.assertFalse(auth.verify_credential(self.public_key, self.nonce, "lab", self.signature))

    def test_otherNonce(self):
        """A signature for one nonce (a replay) does not verify for another."""
        self.assertFalse(auth.verify_credential(
            self.public_key, auth.make_nonce(), TAG, self.signature))

    def test_malformed(self):
        """A cut signature, a cut key or a key that is no curve point is refused, not raised."""
        self.assertFalse(auth.verify_credential(self.public_key, self.nonce, TAG, self.signature[:63]))
        self.assertFalse(auth.verify_credential(self.public_key[:31], self.nonce, TAG, self.signature))
        self.assertFalse(auth.verify_credential(b"\xff" * 32, self.nonce, TAG, self.signature))

    def test_sharedTokenIsMethodZero(self):
        """Any other token, even one with the prefix but not a whole credential, is the shared token's HMAC."""
        for token in ("s3cret", "pmc_short"):
            self.assertEqual(auth.client_proof(token, self.nonce, TAG),
                             (frames.AUTH_SHARED_TOKEN, auth.proof(token, self.nonce, TAG)))

    def test_storedRowCannotProve(self):
        """What the server stores (the public key) holds no secret: nothing made from it verifies."""
        stored = self.public_key
        seed = auth.credential_seed(self.token)
        self.assertNotIn(seed, stored)
        as_token = auth.CREDENTIAL_PREFIX + base64.urlsafe_b64encode(stored).decode().rstrip("=")
        key, signature = auth.split_credential_proof(auth.credential_proof(as_token, self.nonce, TAG))
        self.assertNotEqual(key, stored)  # the server finds no credential for it
        self.assertFalse(auth.verify_credential(stored, self.nonce, TAG, signature))

    def test_sharedTokenNeverLoadsCryptography(self):
        """A client with the shared token computes its proof without importing cryptography."""
        code = ("import sys\n"
                "from portmapper.protocol.connection import CLIENT, SERVER, Connection\n"
                "server, client = Connection(SERVER, 0.0), Connection(CLIENT, 0.0, token='s3cret')\n"
                "server.start()\n"
                "client.receive_data(b''.join(server.data_to_send()), 0.0)\n"
                "assert client.data_to_send(), 'no AUTH'\n"
                "print('cryptography' in sys.modules)\n")
        env = dict(os.environ, PYTHONPATH=SRC)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout
        self.assertEqual(out.strip(), "False")


class StoreCredentialTests(StoreCase):
    """The store keeps credentials (public keys only) and never reuses an id."""

    @inlineCallbacks
    def test_roundTrip(self):
        """Credentials are added, marked used and revoked, and load back after a reopen."""
        store = yield self.open()
        self.assertEqual((yield store.load_credentials()), [])
        first = yield store.add_credential("router-1", "office", b"a" * 32, 100.0)
        second = yield store.add_credential(None, "lab", b"b" * 32, 200.0)
        self.assertEqual((first, second), (1, 2))
        yield store.credential_used(first, 150.0)
        yield store.revoke_credential(second)
        yield store.stop()
        store = yield self.open()
        self.assertEqual((yield store.load_credentials()), [
            {"credential_id": 1, "name": "router-1", "tag": "office", "public_key": b"a" * 32,
             "created_time": 100.0, "last_used_time": 150.0, "revoked": False},
            {"credential_id": 2, "name": None, "tag": "lab", "public_key": b"b" * 32,
             "created_time": 200.0, "last_used_time": None, "revoked": True},
        ])
        yield store.stop()

    @inlineCallbacks
    def test_idsNeverReused(self):
        """An id once handed out is not handed out again, even if its row is gone."""
        store = yield self.open()
        yield store.add_credential(None, "office", b"a" * 32, 1.0)
        last = yield store.add_credential(None, "office", b"b" * 32, 2.0)
        yield store.stop()
        conn = sqlite3.connect(self.path)
        with conn:
            conn.execute("DELETE FROM credentials WHERE id = ?", (last,))
        conn.close()
        store = yield self.open()
        self.assertEqual((yield store.add_credential(None, "office", b"c" * 32, 3.0)), last + 1)
        yield store.stop()

    @inlineCallbacks
    def test_noSecretStored(self):
        """The database file holds the public key of an issued credential, never its seed."""
        token, public_key = auth.new_credential()
        store = yield self.open()
        yield store.add_credential("router-1", "office", public_key, 1.0)
        yield store.stop()
        with open(self.path, "rb") as f:
            raw = f.read()
        wal = self.path + "-wal"
        if os.path.exists(wal):
            with open(wal, "rb") as f:
                raw += f.read()
        self.assertIn(public_key, raw)
        self.assertNotIn(auth.credential_seed(token), raw)
        self.assertNotIn(token.encode(), raw)
