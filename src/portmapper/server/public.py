"""
A mapped public port: one ``PublicFactory`` listening per mapping, one
``PublicProtocol`` per user connection.

A user's connection is carried by a client with the mapping's tag: its
first bytes go with the request to open the channel (early data, see
``docs/protocol.rst``), the rest once the client has connected to the
target, with the link's flow control both ways.  The protocol reports what
happens to the channel's record in the registry, which decides the reason
history gives for its end.  A channel that fails to open (the target
refused, or it was not reached in time by the client or by our
``open_timeout``) resets the user's connection.
"""

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from portmapper.protocol import frames
from portmapper.protocol.connection import LinkUnavailable
from portmapper.server.registry import NO_CLIENT, TARGET_CLOSED, TARGET_REFUSED, TIMEOUT, USER_CLOSED
from portmapper.transport.link import ChannelEnd

log = Logger()

_OPEN_FAIL_REASONS = {frames.FAIL_TIMEOUT: TIMEOUT}


class PublicProtocol(ChannelEnd):
    def __init__(self, server, mapping):
        self.server = server
        self.mapping = mapping
        self.record = None
        self.session = None  # the client carrying the channel
        self._open_timer = None

    def connectionMade(self):
        super().connectionMade()
        server, mapping = self.server, self.mapping
        peer = self.transport.getPeer()
        self.record = record = server.registry.new_channel(
            mapping.public_port, peer.host, peer.port, server.clock.seconds(), user=self)
        self.meter = record.meter
        record.target_ip, record.target_port = mapping.target_ip, mapping.target_port
        session = server.registry.pick_client(mapping.tag)
        if session is None:
            self.close(NO_CLIENT)
            return
        try:
            session.link.openChannel(self, mapping.target_ip, mapping.target_port)
        except LinkUnavailable:
            self.close(NO_CLIENT)
            return
        self.session = session
        record.client_id = session.client_id
        session.channels.add(record.channel_id)
        self._open_timer = server.clock.callLater(
            server.settings.open_timeout, self.close, TIMEOUT)

    def close(self, reason):
        """Close this channel at both ends now, recording ``reason``."""
        self.record.aborted(reason)
        if self.link is not None:
            self.link.resetChannel(self.channel_id, reason)
        else:
            self.transport.loseConnection()  # nothing was written to the user

    # -- from the link ------------------------------------------------------

    def opened(self):
        self._cancelOpenTimer()
        self.record.opened = True

    def openFailed(self, code, reason):
        self._cancelOpenTimer()
        log.info("channel {channel_id} to {target}:{port} failed to open: {reason}",
                 channel_id=self.record.channel_id, target=self.mapping.target_ip,
                 port=self.mapping.target_port, reason=reason)
        self.record.aborted(_OPEN_FAIL_REASONS.get(code, TARGET_REFUSED))
        self.link = None
        # A reset, as when our own open timeout fires: the user learns the
        # connection failed, where a clean EOF would read as an empty answer.
        self.transport.abortConnection()

    def peerEnded(self):
        self.record.ended(TARGET_CLOSED)
        super().peerEnded()

    def peerReset(self, reason):
        self.record.aborted(TARGET_CLOSED)
        super().peerReset(reason)

    def linkLost(self):
        self.record.aborted(self.session.lost_reason())
        super().linkLost()

    # -- from the user's socket ------------------------------------------------

    def readConnectionLost(self):
        self.record.ended(USER_CLOSED)
        super().readConnectionLost()

    def connectionLost(self, reason):
        self._cancelOpenTimer()
        if not reason.check(ConnectionDone):
            self.record.aborted(USER_CLOSED)  # the user's connection broke
        super().connectionLost(reason)
        self.server.channelClosed(self.record)

    def _cancelOpenTimer(self):
        if self._open_timer is not None and self._open_timer.active():
            self._open_timer.cancel()
        self._open_timer = None


class PublicFactory(Factory):
    noisy = False

    def __init__(self, server, mapping):
        self.server = server
        self.mapping = mapping

    def buildProtocol(self, addr):
        return PublicProtocol(self.server, self.mapping)
