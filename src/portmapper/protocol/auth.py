"""
The link handshake's proof: the client shows it knows the shared token
without sending it.

The server sends a fresh random nonce in HELLO; the client answers with
``HMAC-SHA256(token, "portmapper-auth-v1" | nonce | tag)``.  Binding the tag
into the proof keeps a captured proof from being replayed under another tag,
and the nonce keeps it from being replayed at all.
"""

import hashlib
import hmac
import os

NONCE_SIZE = 32
_CONTEXT = b"portmapper-auth-v1"


def make_nonce():
    return os.urandom(NONCE_SIZE)


def proof(token, nonce, tag):
    """The client's answer to ``nonce`` for ``token`` and ``tag``."""
    message = _CONTEXT + nonce + tag.encode("utf-8")
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).digest()


def verify(token, nonce, tag, answer):
    """True if ``answer`` proves knowledge of ``token`` for this nonce and tag."""
    return hmac.compare_digest(proof(token, nonce, tag), answer)
