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

The mapping's policies are enforced here, at accept: a user outside
``allow`` or beyond ``max_channels`` is closed at once (``denied``,
``limit``) and no client hears of it; with ``proxy_protocol`` the OPEN
carries the PROXY protocol header the client writes to the target first.

Failover: a channel whose client is lost, or answers that it is draining,
before the target answered is opened again, once, on another client of the
tag, and what the user sent meanwhile (at most EARLY_DATA bytes, kept until
the target answers) is sent again.  A client on which an open timed out is
passed by for new channels until it answers a ping (``ClientSession``).
"""

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from portmapper.protocol import frames
from portmapper.protocol.connection import LinkUnavailable
from portmapper.protocol.windows import EARLY_DATA
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
        self._early = []  # what the user sent before the target answered, to replay; None: not kept
        self._early_bytes = 0
        self._failed_over = False  # opened again on another client already (only once)

    def connectionMade(self):
        super().connectionMade()
        server, mapping = self.server, self.mapping
        peer = self.transport.getPeer()
        if not mapping.allows(peer.host):
            self.refuse(DENIED, peer)
            return
        if mapping.max_channels is not None and len(mapping.users) >= mapping.max_channels:
            self.refuse(LIMIT, peer)
            return
        session = server.registry.pick_client(mapping.tag, mapping.balance)
        if session is None:
            self.refuse(NO_CLIENT, peer)
            return
        self.record = record = server.registry.new_channel(
            mapping.public_port, peer.host, peer.port, server.clock.seconds(), user=self)
        if record is None:  # no channel id on disk yet (logged by the registry)
            self.transport.abortConnection()
            return
        self.meter = record.meter
        record.target_ip, record.target_port = mapping.target_ip, mapping.target_port
        mapping.users.add(self)
        if mapping.limiter is not None:
            mapping.limiter.add(self)
        self._open(session)

    def refuse(self, reason, peer):
        """
        Turn this user away at accept (``denied``, ``limit``, ``no client``):
        counted per port and interval, no channel, no id.
        """
        self.server.refused(self.mapping.public_port, reason, peer.host, peer.port)
        self.transport.loseConnection()

    def _open(self, session=None, exclude=None):
        """
        Ask ``session`` (or a client of the mapping's tag that is not
        ``exclude``) to open the channel; ``no client`` if none can.
        """
        server, mapping, record = self.server, self.mapping, self.record
        if session is None:
            session = server.registry.pick_client(mapping.tag, mapping.balance, exclude)
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
        server.channelOpened(record)
        self._open_timer = server.clock.callLater(server.settings.open_timeout, self._openTimedOut)

    def _openTimedOut(self):
        self._open_timer = None
        self.session.open_timed_out()  # passed by for new channels until it answers a ping
        self.close(TIMEOUT)

    def _failover(self):
        """
        The client went (or is draining) before the target answered: open the
        channel again on another client of the tag, once, replaying what the
        user sent so far.  False if it cannot be (already done, more early
        data than was kept, no other client).
        """
        if self._failed_over or self._early is None:
            return False
        lost = self.session
        if self.server.registry.pick_client(self.mapping.tag, self.mapping.balance, lost) is None:
            return False
        log.info("channel {channel_id}: client {client_id} went before the target answered;"
                 " opening it on another client", channel_id=self.record.channel_id,
                 client_id=lost.client_id)
        self._failed_over = True
        self._cancelOpenTimer()
        lost.channels.discard(self.record.channel_id)
        self.link = self.channel_id = None
        self.releaseReading("link")  # the old link's credit is gone with it
        self._open(exclude=lost)
        if self.link is not None:
            for chunk in self._early:
                self.link.channelData(self.channel_id, chunk)
            if self._read_eof:
                self.link.channelEOF(self.channel_id)
        return True

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
        self._early = None

    def openFailed(self, code, reason):
        self._cancelOpenTimer()
        if code == frames.FAIL_DRAINING and self._failover():
            return
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
        if not self.record.opened and self._failover():
            return
        self.record.aborted(self.session.lost_reason())
        super().linkLost()

    # -- from the user's socket ------------------------------------------------

    def dataReceived(self, data):
        if self._early is not None:  # kept until the target answers, for a failover
            self._early_bytes += len(data)
            if self._early_bytes <= EARLY_DATA:
                self._early.append(data)
            else:
                self._early = None  # more than an opener may send: no replay
        self.meter.recv_bytes += len(data)
        self.link.channelData(self.channel_id, data)

    def readConnectionLost(self):
        self.record.ended(USER_CLOSED)
        super().readConnectionLost()

    def connectionLost(self, reason):
        if self.record is None:
            return  # refused at accept: never a channel
        self._cancelOpenTimer()
        if not isinstance(reason.value, ConnectionDone):
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
