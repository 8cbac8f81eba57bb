"""
A mapped public port: one ``PublicFactory`` listening per mapping, one
``PublicProtocol`` per user connection.

A user's connection is carried by a client with the mapping's tag: its
first bytes go with the request to open the channel (early data, see
``portmapper.protocol.mux``), the rest once the client has connected to the
target, with the link's flow control both ways.  The protocol keeps
the channel's record in the registry up to date and decides why it closed.
"""

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from portmapper.protocol import frames
from portmapper.protocol.mux import ChannelEnd
from portmapper.server.registry import (
    CLOSING, NO_CLIENT, TARGET_CLOSED, TARGET_REFUSED,
    TIMEOUT, USER_CLOSED, WORKING,
)

log = Logger()

_OPEN_FAIL_REASONS = {frames.FAIL_TIMEOUT: TIMEOUT}


class PublicProtocol(ChannelEnd):
    def __init__(self, server, mapping):
        self.server = server
        self.mapping = mapping
        self.record = None
        self.close_reason = None  # the first reason decided wins
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
        record.client_id = session.client_id
        session.channels.add(record.channel_id)
        session.link.openChannel(record.channel_id, self, mapping.target_ip, mapping.target_port)
        self._open_timer = server.clock.callLater(
            server.settings.open_timeout, self.close, TIMEOUT)

    def _decide(self, reason):
        if self.close_reason is None:
            self.close_reason = reason

    def close(self, reason):
        """Close this channel at both ends now, recording ``reason``."""
        self._decide(reason)
        if self.channel is not None and not self.channel.closed:
            self.link.resetChannel(self.channel, reason)
        else:
            self.transport.loseConnection()  # nothing was written to the user

    # -- from the link ------------------------------------------------------

    def channelOpened(self):
        self._cancelOpenTimer()
        self.record.state = WORKING

    def channelOpenFailed(self, code, reason):
        self._cancelOpenTimer()
        log.info("channel {channel_id} to {target}:{port} failed to open: {reason}",
                 channel_id=self.record.channel_id, target=self.mapping.target_ip,
                 port=self.mapping.target_port, reason=reason)
        self._decide(_OPEN_FAIL_REASONS.get(code, TARGET_REFUSED))
        self.transport.loseConnection()  # nothing was written to the user

    def peerFinished(self):
        self._decide(TARGET_CLOSED)
        self.record.state = CLOSING
        super().peerFinished()

    def peerReset(self, reason):
        self._decide(TARGET_CLOSED)
        super().peerReset(reason)

    def linkLost(self):
        self._decide(self.link.lostReason())
        super().linkLost()

    # -- from the user's socket ------------------------------------------------

    def readConnectionLost(self):
        self._decide(USER_CLOSED)
        self.record.state = CLOSING
        super().readConnectionLost()

    def connectionLost(self, reason):
        self._cancelOpenTimer()
        self._decide(USER_CLOSED)
        super().connectionLost(reason)
        self.server.channelClosed(self.record, self.close_reason)

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

