"""
The Twisted side of a tunnel link: a ``Protocol`` that feeds the sans-IO
core (:class:`portmapper.protocol.connection.Connection`) and applies what it
says, and the ``Protocol`` of each channel's local socket.

:class:`LinkProtocol` owns no rule of the protocol.  It moves bytes: what
the link's socket reads goes to ``Connection.receive_data``; what the core
has to send goes out in one gathered write; its events are applied to the
channel ends (:class:`IChannelEnd`) and to the link's owner
(:class:`ILinkOwner`: the server's or the client's side, which decides who
may join and what a channel connects to).  It also keeps the one timer the
core asks for, and is the streaming producer of its own transport, so that
a full write buffer on the link pauses the channels that write to it.  While
that buffer is full it looks, at each of the core's ticks, whether the
socket took any of it (:func:`~portmapper.transport.directwrite.queued_bytes`
shrank) and tells the core (``link_moving``), which drops a link that takes
nothing for the ping timeout.

:class:`ChannelEnd` is a local TCP connection whose bytes travel over a
channel: the public user's on the server, the target's on the client.  It
is the producer of its own transport too: its write buffer filling holds
back the channel's credit.
"""

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from portmapper.protocol import connection as core
from portmapper.transport.directwrite import (
    direct_writers, lose_write_connection, queued_bytes,
)
from portmapper.transport.tune import tune_channel, tune_transport

log = Logger()


class ILinkOwner(Interface):
    """What a link asks of the side that runs it (server or client)."""

    def authenticate(link, method, proof, tag, nonce):
        """Server: a client asks to join; answer with ``link.accept(id)`` or ``link.refuse(why)``."""

    def welcomed(link, client_id):
        """Client: the server accepted this link as ``client_id``."""

    def openRequested(link, channel_id, host, port, preamble):
        """
        Client: connect to ``host:port`` and write ``preamble`` to it first;
        then ``link.acceptChannel`` or ``link.refuseChannel``.
        """

    def openCancelled(link, channel_id):
        """Client: the channel being connected was reset, or the link lost: stop connecting."""

    def draining(link, reason):
        """The peer takes no new channels and opens none; the open ones carry on."""

    def linkClosing(link, reason, protocol_error):
        """
        The link is closing (``reason``, a sentence; ``protocol_error`` if the
        peer broke the protocol): it takes no new channels; linkLost follows.
        """

    def linkLost(link, reason, protocol_error):
        """The link is gone (``reason``, a sentence; ``protocol_error`` if the peer broke the protocol)."""


class IChannelEnd(Interface):
    """What a link asks of the local end of one of its channels."""

    link = Attribute("The LinkProtocol carrying this channel (set when the channel is added).")
    channel_id = Attribute("The channel's id on that link.")

    def channelAdded():
        """The link carries the channel from now on (``link`` and ``channel_id`` are set)."""

    def deliver(data):
        """Write bytes that arrived on the channel to the local socket."""

    def opened():
        """Opener: the peer reached the target."""

    def openFailed(code, reason):
        """Opener: the peer could not reach the target; the channel is gone."""

    def peerEnded():
        """The peer sent FIN: shut the local socket's write side once written."""

    def peerReset(reason):
        """The peer reset the channel: drop the local socket."""

    def linkLost():
        """The link is gone under the channel: drop the local socket."""

    def pauseReading():
        """Stop reading the local socket (out of credit, or the link is full)."""

    def resumeReading():
        """Read the local socket again."""


@implementer(IPushProducer)
class LinkProtocol(Protocol):
    """
    A tunnel link's connection (see the module docstring).  ``connection``
    is the core; ``owner`` provides :class:`ILinkOwner`; ``clock`` gives the
    time and the timer; a link that was told to close but does not within
    ``close_grace`` seconds is aborted.
    """

    def __init__(self, connection, owner, clock, close_grace=core.HANDSHAKE_TIMEOUT):
        self.connection = connection
        self.owner = owner
        self.clock = clock
        self.close_grace = close_grace
        self.ends = {}  # channel id -> IChannelEnd
        self._timer = None
        self._abort_timer = None
        self._applying = False
        self._delivered = False  # DataReceived handled: the core's delivered() is due
        self._close_reason = None  # why the link closed, as we know it before it is lost
        self._full = False  # our transport paused us: its write buffer is full
        self._queued = None  # queued_bytes() of the transport when last looked at while full
        self._handlers = {
            core.DataReceived: self._onData,
            core.PauseReading: self._onPause,
            core.ResumeReading: self._onResume,
            core.ChannelEnded: self._onEnded,
            core.ChannelReset: self._onReset,
            core.ChannelLost: self._onLost,
            core.ChannelOpened: self._onOpened,
            core.ChannelOpenFailed: self._onOpenFailed,
            core.OpenRequested: self._onOpenRequested,
            core.AuthRequested: self._onAuth,
            core.Welcomed: self._onWelcomed,
            core.Refused: self._onRefused,
            core.GoingAway: self._onGoingAway,
            core.CloseLink: self._onClose,
        }

    # -- the link's socket -----------------------------------------------------

    def connectionMade(self):
        tune_transport(self.transport)
        self._write, self._writeSequence = direct_writers(self.transport)
        self.transport.registerProducer(self, True)
        self.connection.start()
        self._apply()
        self._schedule()

    def dataReceived(self, data):
        self._step(self.connection.receive_data, data, self.clock.seconds())

    def _step(self, step, *args):
        """Feed the core one step and apply its output; a fault there is logged and ends the link."""
        try:
            step(*args)
            self._apply()
        except Exception:
            log.failure("unexpected error on the tunnel link to {peer}", peer=self.peerText())
            self.connection.fail("internal error")
            self._apply()

    def connectionLost(self, reason):
        for timer in (self._timer, self._abort_timer):
            if timer is not None and timer.active():
                timer.cancel()
        conn = self.connection
        why = self._close_reason or reason.getErrorMessage()
        self.owner.linkLost(self, why, conn.protocol_error)
        conn.connection_lost()
        self._apply()  # every channel end is told

    # IPushProducer for our own transport: its write buffer filled or drained.
    def pauseProducing(self):
        # Twisted calls this again at each write while the buffer is full.
        if not self._full:
            self._full = True
            self._queued = queued_bytes(self.transport)
        self.connection.link_full(True)

    def resumeProducing(self):
        self._full = False
        self.connection.link_full(False)
        self._apply()

    def _lookForProgress(self):
        """The buffer is full: tell the core if the socket took any of it since we last looked."""
        queued = queued_bytes(self.transport)
        if queued is None or self._queued is None or queued < self._queued:
            self.connection.link_moving()  # or we cannot tell: never drop on a guess
        self._queued = queued

    def stopProducing(self):
        self.connection.link_full(True)

    # -- applying the core's output ---------------------------------------------

    def _apply(self):
        """Write what the core has to send, then act on its events, until both are empty."""
        if self._applying:
            return  # the outer call's loop picks up what this one would have
        self._applying = True
        conn = self.connection
        try:
            while True:
                out = conn.data_to_send()
                if out:
                    if len(out) == 1:
                        self._write(out[0])  # send() costs less than sendmsg() for one buffer
                    else:
                        self._writeSequence(out)
                events = conn.events()
                if not events:
                    break
                handlers = self._handlers
                for event in events:
                    handlers[type(event)](event)
                if self._delivered:
                    self._delivered = False
                    conn.delivered()
        finally:
            self._applying = False

    def _onData(self, event):
        end = self.ends.get(event.channel_id)
        if end is not None:
            end.deliver(event.data)
        self._delivered = True

    def _onPause(self, event):
        end = self.ends.get(event.channel_id)
        if end is not None:
            end.pauseReading()

    def _onResume(self, event):
        end = self.ends.get(event.channel_id)
        if end is not None:
            end.resumeReading()

    def _onEnded(self, event):
        end = self.ends.get(event.channel_id)
        if end is not None:
            end.peerEnded()

    def _onReset(self, event):
        end = self.ends.pop(event.channel_id, None)
        if end is not None:
            end.peerReset(event.reason)
        elif self.connection.role == core.CLIENT:
            self.owner.openCancelled(self, event.channel_id)

    def _onLost(self, event):
        end = self.ends.pop(event.channel_id, None)
        if end is not None:
            end.linkLost()
        elif self.connection.role == core.CLIENT:
            self.owner.openCancelled(self, event.channel_id)

    def _onOpened(self, event):
        end = self.ends.get(event.channel_id)
        if end is not None:
            end.opened()

    def _onOpenFailed(self, event):
        end = self.ends.pop(event.channel_id, None)
        if end is not None:
            end.openFailed(event.code, event.reason)

    # A request read together with frames that closed the link is void: a
    # closing link admits nobody and has nothing dialled.

    def _onOpenRequested(self, event):
        if not self.connection.closed:
            self.owner.openRequested(self, event.channel_id, event.host, event.port,
                                     event.preamble)

    def _onAuth(self, event):
        if not self.connection.closed:
            self.owner.authenticate(self, event.method, event.proof, event.tag, event.nonce)

    def _onWelcomed(self, event):
        self.owner.welcomed(self, event.client_id)

    def _onRefused(self, event):
        log.error("the server refused this client: {reason}", reason=event.reason)
        self._close_reason = f"refused: {event.reason}"

    def _onGoingAway(self, event):
        if event.draining:
            log.info("tunnel link to {peer} is draining: {reason}", peer=self.peerText(),
                     reason=event.reason)
            self.owner.draining(self, event.reason)
        else:
            log.info("tunnel link to {peer} closed by the peer: {reason}", peer=self.peerText(),
                     reason=event.reason)
            self._close_reason = f"closed by the peer: {event.reason}"

    def _onClose(self, event):
        if event.error:
            log.warn("tunnel link to {peer} ended: {reason}", peer=self.peerText(),
                     reason=event.reason)
        if self._close_reason is None:
            self._close_reason = event.reason
        self.owner.linkClosing(self, self._close_reason, self.connection.protocol_error)
        out = self.connection.data_to_send()  # the GOAWAY, before the connection closes
        if out:
            self._writeSequence(out)
        if event.abort:
            self.transport.abortConnection()
            return
        # Our producer goes first: a TLS transport does not close while one is registered.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._abort_timer = self.clock.callLater(self.close_grace, self.transport.abortConnection)

    # -- timers ------------------------------------------------------------------

    def _schedule(self):
        deadline = self.connection.next_deadline()
        if deadline is None:
            return
        self._timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._tick)

    def _tick(self):
        self._timer = None
        if self._full:
            self._lookForProgress()
        self._step(self.connection.tick, self.clock.seconds())
        self._schedule()

    # -- for the owner -------------------------------------------------------------

    def peerText(self):
        """The peer's address as text, for logs."""
        try:
            peer = self.transport.getPeer()
            return f"{peer.host}:{peer.port}"
        except Exception:
            return "peer"

    def accept(self, client_id):
        """Server: the client is in, as ``client_id``."""
        self.connection.accept(client_id)
        self._apply()

    def refuse(self, reason):
        """Server: the client is refused, and told ``reason``."""
        log.warn("tunnel link to {peer} refused: {reason}", peer=self.peerText(), reason=reason)
        self.connection.refuse(reason)
        self._apply()

    def openChannel(self, end, host, port, preamble=b""):
        """
        Server: carry ``end`` over a new channel to ``host:port`` (the client
        writes ``preamble`` to the target first); returns the channel id
        (:class:`~portmapper.protocol.connection.LinkUnavailable` if the link
        takes no new channel).  ``end`` may send early data at once.
        """
        channel_id = self.connection.open_channel(host, port, preamble)
        self._addEnd(channel_id, end)
        self._apply()
        return channel_id

    def acceptChannel(self, channel_id, end):
        """Client: ``end`` is connected to the target of ``channel_id``."""
        if channel_id not in self.connection.channels:
            end.peerReset("the channel was closed while connecting")
            return
        self._addEnd(channel_id, end)
        self.connection.accept_channel(channel_id)
        self._apply()

    def refuseChannel(self, channel_id, code, reason):
        """Client: the target of ``channel_id`` cannot be reached."""
        self.connection.refuse_channel(channel_id, code, reason)
        self._apply()

    def resetChannel(self, channel_id, reason):
        """Close a channel at both ends now (an operator's order, a timeout)."""
        end = self.ends.pop(channel_id, None)
        self.connection.reset_channel(channel_id, reason)
        self._apply()
        if end is not None:
            end.peerReset(reason)

    def goAway(self, reason):
        """Drain: no new channels either way; the link closes once the open ones are done."""
        self.connection.go_away(reason)
        self._apply()

    def close(self, reason):
        """Close the link now, telling the peer ``reason``."""
        self.connection.close(reason)
        self._apply()

    def fail(self, reason):
        """End the link because of a fault, telling the peer ``reason``."""
        self.connection.fail(reason)
        self._apply()

    def _addEnd(self, channel_id, end):
        self.ends[channel_id] = end
        end.link = self
        end.channel_id = channel_id
        end.channelAdded()

    # -- for the channel ends --------------------------------------------------------

    def channelData(self, channel_id, data):
        self.connection.send_data(channel_id, data)
        self._apply()

    def channelEOF(self, channel_id):
        self.connection.end_channel(channel_id)
        self._apply()

    def channelClosed(self, channel_id, reason):
        """
        The channel's local socket is gone, because of ``reason`` (a
        Failure).  A channel that had ended cleanly both ways just goes; any
        other is reset, and only then is the reason's text made, for the
        peer.
        """
        if self.ends.pop(channel_id, None) is not None:
            conn = self.connection
            if not conn.forget_finished(channel_id):
                conn.reset_channel(channel_id, f"connection lost: {reason.getErrorMessage()}")
            self._apply()

    def channelWindowCap(self, channel_id, size):
        """Keep the channel's receive window at ``size`` bytes at most (None: no cap)."""
        self.connection.cap_window(channel_id, size)

    def channelFull(self, channel_id, full):
        self.connection.local_full(channel_id, full)
        if not full:
            self._apply()


@implementer(IChannelEnd, IHalfCloseableProtocol, IPushProducer)
class ChannelEnd(Protocol):
    """
    A local TCP connection whose bytes travel over a channel.

    ``meter`` counts the bytes read from (``recv_bytes``) and written to
    (``send_bytes``) this connection.  Half-close is carried both ways: our
    read side ending sends FIN; the peer's FIN shuts our write side; once
    both are done the connection closes.  Subclasses add what their side
    does when the channel opens, fails or ends.
    """

    link = None
    channel_id = None
    meter = None
    _read_eof = False
    _write_eof = False

    def connectionMade(self):
        tune_channel(self.transport)
        self._write = direct_writers(self.transport)[0]
        if self.meter is None:
            self.meter = core.ByteCounter()

    def channelAdded(self):
        """The link carries us from now on: its credit follows our write buffer."""
        self.transport.registerProducer(self, True)

    def dataReceived(self, data):
        self.meter.recv_bytes += len(data)
        self.link.channelData(self.channel_id, data)

    def readConnectionLost(self):
        self._read_eof = True
        if self.link is not None:
            self.link.channelEOF(self.channel_id)
        self._closeIfDone()

    def writeConnectionLost(self):
        self._write_eof = True
        self._closeIfDone()

    def _closeIfDone(self):
        if self._read_eof and self._write_eof:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if self.link is not None:
            self.link.channelClosed(self.channel_id, reason)

    # IPushProducer, driven by our transport's write buffer
    def pauseProducing(self):
        if self.link is not None:
            self.link.channelFull(self.channel_id, True)

    def resumeProducing(self):
        if self.link is not None:
            self.link.channelFull(self.channel_id, False)

    def stopProducing(self):
        self.pauseProducing()

    # -- IChannelEnd ---------------------------------------------------------------

    def deliver(self, data):
        self.meter.send_bytes += len(data)
        self._write(data)

    def opened(self):
        pass

    def openFailed(self, code, reason):
        self.transport.loseConnection()  # nothing was written to the user

    def peerEnded(self):
        self.transport.unregisterProducer()
        lose_write_connection(self.transport)

    def peerReset(self, reason):
        self.transport.abortConnection()

    def linkLost(self):
        self.transport.abortConnection()

    def pauseReading(self):
        self.transport.pauseProducing()

    def resumeReading(self):
        self.transport.resumeProducing()
