"""
The link handshake's proof: the client shows it holds a secret without
sending it.

The server sends a fresh random nonce in HELLO.  The client answers with
one of two proofs, picked by :func:`client_proof` from the form of its token:

- method 0, the *shared token* (any text): ``HMAC-SHA256(token,
  "portmapper-auth-v1" | nonce | tag)``.  The server knows the token too.
- method 1, a *credential* (a token issued by the server, ``pmc_`` and the
  base64url of a 32-byte Ed25519 seed): the credential's public key (32
  bytes) and its Ed25519 signature (64 bytes) of
  ``"portmapper-auth-v2-credential" | nonce | tag``.  The server keeps only
  the public key, from which no proof can be made.

Binding the tag into the proof keeps a captured proof from being replayed
under another tag, and the nonce keeps it from being replayed at all.

Ed25519 comes from ``cryptography``, imported only by the functions that
need it, so a client with the shared token never loads it.
"""

import base64
import binascii
import hashlib
import hmac
import os

from portmapper.protocol.frames import AUTH_CREDENTIAL, AUTH_SHARED_TOKEN

NONCE_SIZE = 32
_CONTEXT = b"portmapper-auth-v1"
CREDENTIAL_CONTEXT = b"portmapper-auth-v2-credential"

#: What a credential token starts with; the rest is the base64url of its seed.
CREDENTIAL_PREFIX = "pmc_"
SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


def make_nonce():
    return os.urandom(NONCE_SIZE)


# -- the shared token ----------------------------------------------------------

def proof(token, nonce, tag):
    """The client's answer to ``nonce`` for ``token`` and ``tag``."""
    message = _CONTEXT + nonce + tag.encode("utf-8")
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).digest()


def verify(token, nonce, tag, answer):
    """True if ``answer`` proves knowledge of ``token`` for this nonce and tag."""
    return hmac.compare_digest(proof(token, nonce, tag), answer)


# -- credentials -----------------------------------------------------------------

def looks_like_credential(token):
    """Whether ``token`` is meant as a credential token (it has the prefix)."""
    return token.startswith(CREDENTIAL_PREFIX)


def credential_seed(token):
    """The 32-byte seed of credential ``token``; ValueError if it is not a whole one."""
    if not looks_like_credential(token):
        raise ValueError(f"a credential token starts with {CREDENTIAL_PREFIX}")
    body = token[len(CREDENTIAL_PREFIX):]
    try:
        seed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != SEED_SIZE or _encode(seed) != token:
        raise ValueError("the credential token is damaged or cut short; copy it again")
    return seed


def _encode(seed):
    return CREDENTIAL_PREFIX + base64.urlsafe_b64encode(seed).decode("ascii").rstrip("=")


def _private_key(seed):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    return Ed25519PrivateKey.from_private_bytes(seed)


def _raw_public(private_key):
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def new_credential():
    """A fresh credential: ``(token, public key)``.  Show the token once; keep the key."""
    seed = os.urandom(SEED_SIZE)
    return _encode(seed), _raw_public(_private_key(seed))


def public_key(token):
    """The 32-byte public key of credential ``token``."""
    return _raw_public(_private_key(credential_seed(token)))


def credential_message(nonce, tag):
    """What a credential signs: the context, the nonce and the tag."""
    return CREDENTIAL_CONTEXT + nonce + tag.encode("utf-8")


def credential_proof(token, nonce, tag):
    """Method 1's proof: the public key and the signature of the nonce and tag (96 bytes)."""
    key = _private_key(credential_seed(token))
    return _raw_public(key) + key.sign(credential_message(nonce, tag))


def split_credential_proof(answer):
    """``(public key, signature)`` of a method-1 proof."""
    return answer[:PUBLIC_KEY_SIZE], answer[PUBLIC_KEY_SIZE:]


def verify_credential(public_key, nonce, tag, signature):
    """True if ``signature`` is ``public_key``'s for this nonce and tag."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, credential_message(nonce, tag))
    except (InvalidSignature, ValueError):
        return False
    return True


# -- the client's choice ---------------------------------------------------------

def client_proof(token, nonce, tag):
    """
    ``(method, proof)`` for ``token``: a credential token proves with its key
    (method 1); any other text is the shared token (method 0).
    """
    if looks_like_credential(token):
        try:
            return AUTH_CREDENTIAL, credential_proof(token, nonce, tag)
        except ValueError:
            pass  # not a whole credential: the client's config refuses it at start
    return AUTH_SHARED_TOKEN, proof(token, nonce, tag)
