"""
A mapped public port: one ``PublicFactory`` listening per mapping, one
``PublicProtocol`` per user connection.

A user's connection is carried by a client with the mapping's tag: its
first bytes go with the request to open the channel (early data, see
``docs/protocol.rst``), the rest once the client has connected to the
target, with the link's flow control both ways.  The protocol reports what
happens to the channel's record in the registry, which decides the reason
history gives for its end.

The mapping's policies are enforced here, at accept: a user outside
``allow`` or beyond ``max_channels`` is closed at once (``denied``,
``limit``) and no client hears of it; with ``proxy_protocol`` the OPEN
carries the PROXY protocol header the client writes to the target first.
"""

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from portmapper.protocol import frames
from portmapper.protocol.connection import LinkUnavailable
from portmapper.server.proxyheader import header as proxy_header
from portmapper.server.registry import (
    DENIED, LIMIT, NO_CLIENT, TARGET_CLOSED, TARGET_REFUSED, TIMEOUT, USER_CLOSED,
)
from portmapper.transport.link import ChannelEnd

log = Logger()

_OPEN_FAIL_REASONS = {frames.FAIL_TIMEOUT: TIMEOUT}


class PublicProtocol(ChannelEnd):
    """
    One public user's connection (see the module docstring).  Its reading
    is held while anything holds it (the link's credit, the mapping's rate
    limit), and so is the channel's credit (its write buffer, the limit).
    """

    def __init__(self, server, mapping):
        self.server = server
        self.mapping = mapping
        self.record = None
        self.session = None  # the client carrying the channel
        self._open_timer = None
        self._reading_held = set()  # why the user's socket is not read: "link", "rate"
        self._credit_held = set()  # why the channel's credit is held back: "buffer", "rate"
        self._window_cap = None  # the most the channel's window may be while rate-limited

    def connectionMade(self):
        super().connectionMade()
        server, mapping = self.server, self.mapping
        peer = self.transport.getPeer()
        self.record = record = server.registry.new_channel(
            mapping.public_port, peer.host, peer.port, server.clock.seconds(), user=self)
        self.meter = record.meter
        record.target_ip, record.target_port = mapping.target_ip, mapping.target_port
        if not mapping.allows(peer.host):
            self.refuse(DENIED)
            return
        if mapping.max_channels is not None and len(mapping.users) >= mapping.max_channels:
            self.refuse(LIMIT)
            return
        mapping.users.add(self)
        if mapping.limiter is not None:
            mapping.limiter.add(self)
        self._open()

    def refuse(self, reason):
        """A policy of the mapping turns this user away at accept (``denied``, ``limit``)."""
        self.close(reason)

    def _open(self):
        """Ask a client of the mapping's tag to open the channel; ``no client`` if none can."""
        server, mapping, record = self.server, self.mapping, self.record
        session = server.registry.pick_client(mapping.tag, mapping.balance)
        if session is None:
            self.close(NO_CLIENT)
            return
        preamble = b""
        if mapping.proxy_protocol is not None:
            peer, host = self.transport.getPeer(), self.transport.getHost()
            preamble = proxy_header(mapping.proxy_protocol, (peer.host, peer.port),
                                    (host.host, host.port))
        try:
            session.link.openChannel(self, mapping.target_ip, mapping.target_port, preamble)
        except LinkUnavailable:
            self.close(NO_CLIENT)
            return
        self.session = session
        record.client_id = session.client_id
        session.channels.add(record.channel_id)
        self._open_timer = server.clock.callLater(
            server.settings.open_timeout, self.close, TIMEOUT)

    def channelAdded(self):
        """A link carries the channel from now on: it learns what we hold back."""
        if getattr(self.transport, "producer", None) is not self:  # not again after a failover
            super().channelAdded()
        if self._window_cap is not None:
            self.link.channelWindowCap(self.channel_id, self._window_cap)
        if self._credit_held:
            self.link.channelFull(self.channel_id, True)

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
        super().openFailed(code, reason)

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
        self.mapping.users.discard(self)
        if self.mapping.limiter is not None:
            self.mapping.limiter.remove(self)
        self.server.channelClosed(self.record)

    # -- holding the reading and the credit -----------------------------------------

    def pauseReading(self):
        self.holdReading("link")

    def resumeReading(self):
        self.releaseReading("link")

    def holdReading(self, why):
        """Stop reading the user's socket because of ``why``, until released."""
        if not self._reading_held:
            self.transport.pauseProducing()
        self._reading_held.add(why)

    def releaseReading(self, why):
        """``why`` no longer holds the reading; read again if nothing else does."""
        if why in self._reading_held:
            self._reading_held.discard(why)
            if not self._reading_held:
                self.transport.resumeProducing()

    def pauseProducing(self):
        self.holdCredit("buffer", True)

    def resumeProducing(self):
        self.holdCredit("buffer", False)

    def holdCredit(self, why, held):
        """Hold back (or, ``held`` false, no longer) the channel's credit because of ``why``."""
        before = bool(self._credit_held)
        if held:
            self._credit_held.add(why)
        else:
            self._credit_held.discard(why)
        if bool(self._credit_held) != before and self.link is not None:
            self.link.channelFull(self.channel_id, not before)

    def capWindow(self, size):
        """Keep the channel's receive window at ``size`` bytes at most (None: no cap)."""
        self._window_cap = size
        if self.link is not None:
            self.link.channelWindowCap(self.channel_id, size)

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
