"""
The server's end of a tunnel link: one ``ServerLink`` per connected client.

It greets the client with a nonce, checks the HMAC proof of the shared token,
admits the client into the registry under its tag, and from then on opens
channels on it for users of the mapped ports (see ``public.py``).
"""

import re

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from portmapper.protocol import auth, frames
from portmapper.protocol.frames import AUTH, MAGIC, PROTOCOL_VERSION, REFUSE, ProtocolError
from portmapper.protocol.mux import Link
from portmapper.server.registry import CLIENT_LOST, CLOSED, PROTOCOL_ERROR

log = Logger()

TAG_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


class ServerLink(Link):
    def __init__(self, server):
        s = server.settings
        super().__init__(server.clock, window=s.window, max_window=s.max_window,
                         ping_interval=s.ping_interval, ping_timeout=s.ping_timeout,
                         handshake_timeout=s.handshake_timeout)
        self.server = server
        self.session = None
        self.nonce = auth.make_nonce()
        # why the channels end if the link does; an operator's kick changes it
        self.channel_close_reason = CLIENT_LOST

    def connectionMade(self):
        super().connectionMade()
        self.sendFrame(frames.hello(self.nonce))

    def handshakeFrameReceived(self, ftype, payload):
        if ftype != AUTH:
            raise ProtocolError(f"expected AUTH, got {frames.NAMES[ftype]}")
        magic, version, proof, tag = frames.parse_auth(payload)
        if magic != MAGIC:
            raise ProtocolError("not a portmapper client")
        if version != PROTOCOL_VERSION:
            return self.refuse(
                f"protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}")
        if not TAG_PATTERN.match(tag):
            return self.refuse("the tag must be 1 to 64 letters, digits or '_.:-'")
        if not auth.verify(self.server.settings.token, self.nonce, tag, proof):
            return self.refuse("wrong token")
        peer = self.transport.getPeer()
        self.session = self.server.clientConnected(self, peer.host, peer.port, tag)
        self.session.meter.recv_bytes += self.meter.recv_bytes
        self.session.meter.send_bytes += self.meter.send_bytes
        self.meter = self.session.meter
        self.sendFrame(frames.welcome(self.session.client_id))
        self.establish()

    def refuse(self, reason):
        self.fail(f"client refused: {reason}", ftype=REFUSE)

    def fail(self, reason, ftype=frames.GOAWAY):
        if self.session is not None:
            self.session.state = CLOSED
        super().fail(reason, ftype)

    def linkClosed(self, reason):
        if self.session is not None:
            self.server.clientDisconnected(self.session, reason)

    def lostReason(self):
        """Why the channels on this link closed with it, for history."""
        return PROTOCOL_ERROR if self.protocol_error else self.channel_close_reason

    def openSucceeded(self, ch):
        ch.end.channelOpened()

    def openFailed(self, ch, code, reason):
        ch.end.channelOpenFailed(code, reason)


class ServerLinkFactory(Factory):
    def __init__(self, server):
        self.server = server

    def buildProtocol(self, addr):
        return ServerLink(self.server)
