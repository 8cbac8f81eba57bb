"""
The server's side of a tunnel link: one ``ServerLinkHandler`` per connected
client, the :class:`~portmapper.transport.link.ILinkOwner` of its link.

It checks the client's proof (of the shared token, or of a credential the
server issued: known, not revoked, for the tag announced), admits the client
into the registry under its tag, takes it out of service once its link starts
closing, and tells the server when the link is gone.
Channels are opened on the link by the public ports (``public.py``).
What it asks of the server is :class:`ILinkServer`.
"""

from twisted.internet.protocol import Factory
from zope.interface import Attribute, Interface, implementer

from portmapper.protocol import auth
from portmapper.protocol.connection import SERVER, Connection
from portmapper.protocol.frames import AUTH_CREDENTIAL, AUTH_SHARED_TOKEN
from portmapper.server import metrics
from portmapper.server.registry import CLOSED, PROTOCOL_ERROR
from portmapper.transport.link import ILinkOwner, LinkProtocol


class ILinkServer(Interface):
    """What the links of tunnel clients ask of the server."""

    settings = Attribute("The ServerSettings: token, windows, keepalive and handshake timeouts.")
    clock = Attribute("The IReactorTime the links take the time and their timers from.")

    def clientConnected(link, ip, port, tag, credential=None):
        """
        A client at ``ip:port`` proved the token (or ``credential``, a
        registry Credential) for ``tag``: admit it; returns its
        ClientSession, or None if the server refused the link instead.
        """

    def findCredential(public_key):
        """The credential (revoked or not) with this Ed25519 public key, or None."""

    def clientDraining(session):
        """The client takes no new channels; its open ones carry on."""

    def clientDisconnected(session, reason):
        """The client's link is gone (``reason``, a sentence)."""

    def handshakeFailed(kind):
        """A link ended before its client was admitted, for ``kind``, one of
        :data:`~portmapper.server.metrics.HANDSHAKE_FAILURES`."""


@implementer(ILinkOwner)
class ServerLinkHandler:
    """What one client's link asks of the server (an :class:`ILinkServer`)."""

    def __init__(self, server):
        self.server = server
        self.session = None  # the registry's ClientSession, once admitted
        self.refused = False  # the server refused the client

    def authenticate(self, link, method, proof, tag, nonce):
        credential = None
        if method == AUTH_CREDENTIAL:
            credential, why = self._check_credential(proof, tag, nonce)
        elif method == AUTH_SHARED_TOKEN and auth.verify(
                self.server.settings.token, nonce, tag, proof):
            why = None
        else:
            why = "wrong token"
        if why is not None:
            self.refused = True
            link.refuse(why)
            return
        peer = link.transport.getPeer()
        self.session = self.server.clientConnected(link, peer.host, peer.port, tag, credential)
        if self.session is None:
            return  # the server refused the link
        meter, conn = self.session.meter, link.connection
        meter.recv_bytes += conn.meter.recv_bytes
        meter.send_bytes += conn.meter.send_bytes
        conn.meter = meter
        link.accept(self.session.client_id)

    def _check_credential(self, proof, tag, nonce):
        """``(credential, None)`` if the proof is good for ``tag``, else ``(None, why)``."""
        public_key, signature = auth.split_credential_proof(proof)
        credential = self.server.findCredential(public_key)
        if credential is None:
            return None, "unknown credential"
        if not auth.verify_credential(public_key, nonce, tag, signature):
            return None, "wrong credential proof"
        if credential.revoked:
            return None, "credential revoked"
        if credential.tag != tag:
            return None, f"this credential is for tag {credential.tag}, not {tag}"
        return credential, None

    def welcomed(self, link, client_id):
        raise NotImplementedError("only a client is welcomed")

    def openRequested(self, link, channel_id, host, port, preamble):
        raise NotImplementedError("the server opens channels; it accepts none")

    def openCancelled(self, link, channel_id):
        pass

    def draining(self, link, reason):
        if self.session is not None:
            self.server.clientDraining(self.session)

    def linkClosing(self, link, reason, protocol_error):
        if self.session is not None:
            if protocol_error:
                self.session.closing(PROTOCOL_ERROR)
            self.session.state = CLOSED  # given no new channel while the connection goes

    def linkLost(self, link, reason, protocol_error):
        if self.session is not None:
            self.server.clientDisconnected(self.session, reason)
        else:
            self.server.handshakeFailed(_handshake_failure(self.refused, reason, protocol_error))


def _handshake_failure(refused, reason, protocol_error):
    """The kind of handshake failure (metrics.HANDSHAKE_FAILURES) a link's end before admission was."""
    if refused:
        return metrics.REFUSED
    if protocol_error:
        return metrics.HANDSHAKE_PROTOCOL_ERROR
    if "handshake did not finish in time" in reason:
        return metrics.HANDSHAKE_TIMEOUT
    return metrics.DISCONNECTED


class ServerLinkFactory(Factory):
    """Builds the link of each client that dials the client port."""

    noisy = False

    def __init__(self, server):
        self.server = server

    def buildProtocol(self, addr):
        s, clock = self.server.settings, self.server.clock
        connection = Connection(
            SERVER, clock.seconds(), window=s.window, max_window=s.max_window,
            ping_interval=s.ping_interval, ping_timeout=s.ping_timeout,
            handshake_timeout=s.handshake_timeout)
        return LinkProtocol(connection, ServerLinkHandler(self.server), clock,
                            close_grace=s.handshake_timeout)
