"""
Channels over one tunnel link: the part both ends share.

:class:`Link` is a ``Protocol`` for the link's TCP (or TLS) connection.  It
decodes frames, runs the per-channel flow control and keepalive, and leaves
the handshake and the opening of channels to its subclasses (the server's
and the client's links).  :class:`ChannelEnd` is the ``Protocol`` of a local
TCP connection whose bytes travel over a channel: the public user's
connection on the server, the target connection on the client.

Flow control, per channel and per direction, is credit based: the sender
may have at most ``window`` bytes that the receiver has not yet given back.
The receiver gives credit back (WINDOW frames, in batches of a quarter of
the window, 1 MiB at most, and at once when a whole window is in) once the
bytes are written to the local socket and that socket's write buffer is not
full; while it is full (its transport paused us, the
channel's producer), credit is held back.  A sender out of credit stops
reading from its local socket.  So a reader that never reads holds at most
one window plus socket buffers on the far end, and stalls only its own
channel.  When the link's own write buffer fills, the channels that write to
it stop reading too, until it drains.

Early data: the end that opens a channel may send up to ``EARLY_DATA``
bytes before OPEN_OK, which the other end holds while it connects to the
target and then counts against the window it announces.  A user who speaks
first (a request, a TLS hello) so costs no extra round trip over the link.

Windows tune themselves to the link's bandwidth-delay product.  Each end
measures the round-trip time with PING/PONG, and the link's bandwidth by
timing trains of DATA: a window sent in one go arrives at the speed of the
link's slowest hop.  When a channel's receiver has taken in a whole window
in under two round trips (the window, not the reader, is what limits it),
the window grows to twice the measured bandwidth x RTT, or four times larger
if that is more, up to ``max_window``.  An opener that used all its early
data counts as such a window.  After a growth, the next window is timed from
a round trip later, when the new credit's data can first arrive.  (A window
limits a channel to ``window / rtt``: 16 MiB carries 160 MB/s over a 100 ms
link.)  A grown window idle for a keepalive interval shrinks back to the
initial size, by withholding that much of the credit it would return next,
so idle channels hold little memory.  The bandwidth measurement loses half
its weight every keepalive interval.

Nothing here imports a reactor: time comes from the ``clock`` given.
"""

import struct

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from portmapper.transport.directwrite import direct_writers
from portmapper.transport.tune import READ_SIZE, tune_transport
from portmapper.protocol import frames
from portmapper.protocol.frames import (
    DATA, FIN, GOAWAY, MAX_DATA, OPEN, OPEN_FAIL, OPEN_OK, PING, PONG, RESET,
    WINDOW, ProtocolError,
)

DEFAULT_WINDOW = 256 * 1024
MAX_WINDOW = 16 * 1024 * 1024
EARLY_DATA = 16 * 1024  # what an opener may send before OPEN_OK; no window is smaller
WINDOW_GROWTH = 4  # how much larger a window gets each time it is found too small
MAX_CREDIT_BATCH = 1024 * 1024  # credit goes back in batches of a quarter window, at most this
# Control frames (PONG, WINDOW, ...) written while the link's write buffer is
# full: past this much, the peer is not reading what it asks for, and goes.
MAX_CONTROL_BACKLOG = 1024 * 1024
# The link's bandwidth is measured over trains of DATA: bytes that arrive with
# no gap longer than TRAIN_GAP round trips between them, more than one read.
TRAIN_GAP = 0.1
TRAIN_MIN = READ_SIZE
PING_INTERVAL = 10.0
PING_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 5.0
HANDSHAKE_MAX_CONTROL = 512  # the largest frame accepted before the handshake is done

_TIMESTAMP = struct.Struct(">d")

log = Logger()


def _credit_batch(window):
    """
    How much consumed data to gather before returning its credit: a quarter
    of the window, but no more than MAX_CREDIT_BATCH, so that a large window
    on a slow link does not also wait for a large batch to fill.
    """
    return max(1, min(window // 4, MAX_CREDIT_BATCH))


class _Counter:
    """Byte counts of a link that nobody meters (the client's)."""

    __slots__ = ("recv_bytes", "send_bytes")

    def __init__(self):
        self.recv_bytes = 0
        self.send_bytes = 0


@implementer(IPushProducer)
class ChannelState:
    """
    One channel's flow-control state at one end of the link.

    It is also the streaming producer registered on the local connection's
    transport, which is how the link learns that the local socket's write
    buffer is full (``pauseProducing``) or drained (``resumeProducing``).
    """

    __slots__ = (
        "id", "link", "end", "send_credit", "recv_window", "recv_allowed",
        "credit_pending", "credit_batch", "debt", "epoch_start", "epoch_bytes",
        "idle_mark", "pending", "write_paused", "reading", "credit_blocked",
        "link_blocked", "read_eof", "fin_pending", "fin_sent", "fin_received",
        "closed",
    )

    def __init__(self, channel_id, link, end, recv_window, send_credit=0, reading=True, now=0.0):
        self.id = channel_id
        self.link = link
        self.end = end  # the ChannelEnd (local connection)
        self.send_credit = send_credit  # bytes we may still send
        # receiving: the window we aim for, and what the peer may still send
        self.recv_window = recv_window
        self.recv_allowed = recv_window  # credit given minus bytes received
        self.credit_pending = 0  # written locally, credit not yet sent
        self.credit_batch = _credit_batch(recv_window)
        self.debt = 0  # credit to withhold, shrinking the window
        self.epoch_start = now  # window tuning: when the current window began
        self.epoch_bytes = 0  # bytes credited since then
        self.idle_mark = None  # recv_allowed at the last keepalive tick
        self.pending = []  # data waiting for credit
        self.write_paused = False  # local transport's write buffer is full
        self.reading = reading  # local transport is reading
        self.credit_blocked = False  # reading paused: out of credit
        self.link_blocked = False  # reading paused: link write buffer full
        self.read_eof = False
        self.fin_pending = False  # FIN to send once pending data is out
        self.fin_sent = False
        self.fin_received = False
        self.closed = False

    # IPushProducer, driven by the local transport's write buffer
    def pauseProducing(self):
        self.write_paused = True

    def resumeProducing(self):
        self.write_paused = False
        if self.credit_pending and not self.closed:
            self.link._sendCredit(self)

    def stopProducing(self):
        self.write_paused = True


class Link(Protocol):
    """
    The frame layer, channels, flow control and keepalive of a tunnel link.

    Subclasses implement ``handshakeFrameReceived`` (frames before the link
    is established) and whichever of ``openRequested``, ``openSucceeded`` and
    ``openFailed`` their side accepts, and may override ``linkEstablished``
    and ``linkClosed``.  They call ``establish()`` once the handshake is done.
    """

    def __init__(self, clock, window=DEFAULT_WINDOW, ping_interval=PING_INTERVAL,
                 ping_timeout=PING_TIMEOUT, handshake_timeout=HANDSHAKE_TIMEOUT,
                 max_window=MAX_WINDOW):
        self.clock = clock
        self.window = window
        self.max_window = max(window, max_window)
        self.rtt = None  # seconds, smoothed, from PING/PONG
        self._grown = set()  # channels whose window is above ``window``
        # bandwidth (bytes/s): the fastest train of DATA seen in this keepalive
        # interval, what earlier ones measured, and the train now arriving
        self._rate = self._old_rate = 0.0
        self._train_start = self._train_last = None
        self._train_bytes = 0
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.handshake_timeout = handshake_timeout
        self.channels = {}  # channel id -> ChannelState
        self.established = False
        self.closed = False
        self.protocol_error = False  # the link ended because the peer broke the protocol
        self.meter = _Counter()
        self.decoder = frames.FrameDecoder(
            self._frameReceived, self._dataReceived, max_control=HANDSHAKE_MAX_CONTROL)
        self._paused = False  # our transport's write buffer is full
        self._control_backlog = 0  # control frames written since it filled
        self._link_blocked = []  # channels paused because of that
        self._rx_seen = False
        self._idle = 0.0
        self._timers = {}
        self._handlers = {
            DATA: None, OPEN: self._onOpen, OPEN_OK: self._onOpenOk,
            OPEN_FAIL: self._onOpenFail, WINDOW: self._onWindow, FIN: self._onFin,
            RESET: self._onReset, PING: self._onPing, PONG: self._onPong,
            GOAWAY: self._onGoaway,
        }

    # -- connection life -------------------------------------------------

    def connectionMade(self):
        tune_transport(self.transport)
        self._write, self._writeSequence = direct_writers(self.transport)
        self.transport.registerProducer(self, True)
        self._timers["handshake"] = self.clock.callLater(
            self.handshake_timeout, self.fail, "the handshake did not finish in time")
        self._timers["keepalive"] = self.clock.callLater(self.ping_interval, self._keepalive)

    def establish(self):
        """The handshake is done: accept channel frames from now on."""
        self.established = True
        self.decoder.max_control = frames.MAX_CONTROL
        self._cancelTimer("handshake")
        self._ping()  # a first round-trip time for window tuning
        self.linkEstablished()

    def connectionLost(self, reason):
        self.closed = True
        self.decoder.stopped = True
        for name in list(self._timers):
            self._cancelTimer(name)
        channels, self.channels = self.channels, {}
        for ch in channels.values():
            ch.closed = True
            ch.end.linkLost()
        self.linkClosed(reason)

    def fail(self, reason, ftype=GOAWAY):
        """
        End the link because of ``reason`` (one sentence), telling the peer
        why in a GOAWAY frame (``ftype=REFUSE`` when the server refuses a
        client's AUTH).
        """
        if self.closed:
            return
        log.warn("tunnel link to {peer} ended: {reason}", peer=self._peerText(), reason=reason)
        self.goAway(reason, ftype)

    def goAway(self, reason, ftype=GOAWAY):
        """Close the link in good order, telling the peer ``reason``."""
        if self.closed:
            return
        self.sendFrame(frames.reason_frame(ftype, 0, reason))
        self.close()

    def close(self):
        """
        Close the link's connection once what is written is out.  (Our
        producer is unregistered first: a TLS transport does not close while
        one is registered.)  A peer that never reads is cut off after a grace
        period.
        """
        if self.closed:
            return
        self.decoder.stopped = True
        self.closed = True
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._cancelTimer("keepalive")
        self._timers["abort"] = self.clock.callLater(self.handshake_timeout, self._abort)

    def _abort(self):
        self._timers.pop("abort", None)
        self.transport.abortConnection()

    def _cancelTimer(self, name):
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _peerText(self):
        try:
            peer = self.transport.getPeer()
            return f"{peer.host}:{peer.port}"
        except Exception:
            return "peer"

    # -- hooks for subclasses ---------------------------------------------

    def handshakeFrameReceived(self, ftype, payload):
        raise NotImplementedError

    def linkEstablished(self):
        pass

    def linkClosed(self, reason):
        pass

    def openRequested(self, channel_id, host, port, window):
        raise ProtocolError("this end does not accept OPEN")

    def openSucceeded(self, ch):
        """OPEN_OK arrived for ``ch`` (its credit is added next)."""
        raise ProtocolError("this end does not accept OPEN_OK")

    def openFailed(self, ch, code, reason):
        raise ProtocolError("this end does not accept OPEN_FAIL")

    def unopenedData(self, channel_id, chunk):
        """DATA for a channel not open here: one being opened (early data) or one we closed."""

    def unopenedFin(self, channel_id):
        """FIN for a channel not open here: one being opened or one we closed."""

    # -- keepalive --------------------------------------------------------

    def _keepalive(self):
        if self._rx_seen:
            self._rx_seen = False
            self._idle = 0.0
        else:
            self._idle += self.ping_interval
        if self._idle >= self.ping_timeout:
            self._timers.pop("keepalive", None)
            self.fail(f"nothing heard for {self._idle:g} seconds")
            return
        if self.established:
            self._ping()
            self._shrinkIdleWindows()
            # The measurement fades: half its weight each interval without a faster train.
            self._old_rate, self._rate = max(self._rate, self._old_rate / 2), 0.0
        self._timers["keepalive"] = self.clock.callLater(self.ping_interval, self._keepalive)

    def _ping(self):
        self.sendFrame(frames.encode(PING, 0, _TIMESTAMP.pack(self.clock.seconds())))

    def _shrinkIdleWindows(self):
        """Channels whose grown window saw no traffic since the last tick go back to ``window``."""
        for ch in list(self._grown):
            if ch.closed:
                self._grown.discard(ch)
            elif ch.idle_mark == ch.recv_allowed:
                ch.debt += ch.recv_window - self.window
                ch.recv_window = self.window
                ch.credit_batch = _credit_batch(self.window)
                self._grown.discard(ch)
            else:
                ch.idle_mark = ch.recv_allowed

    # -- receiving --------------------------------------------------------

    def dataReceived(self, data):
        self.meter.recv_bytes += len(data)
        self._rx_seen = True
        try:
            self.decoder.feed(data)
        except ProtocolError as e:
            self.protocol_error = True
            self.fail(f"protocol error: {e}")
        except Exception:
            log.failure("unexpected error handling frames from {peer}", peer=self._peerText())
            self.fail("internal error")

    def _frameReceived(self, ftype, channel_id, payload):
        # GOAWAY may come at any time: a peer ending the handshake says why.
        if not self.established and ftype != GOAWAY:
            self.handshakeFrameReceived(ftype, payload)
            return
        handler = self._handlers.get(ftype)
        if handler is None:
            raise ProtocolError(f"{frames.NAMES[ftype]} frame after the handshake")
        handler(channel_id, payload)

    def _dataReceived(self, channel_id, chunk):
        ch = self.channels.get(channel_id)
        if ch is None:
            if not self.established:
                raise ProtocolError("DATA frame before the handshake")
            self.unopenedData(channel_id, chunk)
            return
        n = len(chunk)
        ch.recv_allowed -= n
        if ch.recv_allowed < 0:
            raise ProtocolError(f"channel {channel_id} sent beyond its window")
        self._measureTrain(n)
        ch.end.deliver(chunk)
        ch.credit_pending += n
        # A batch is due, or a whole window is in (the peer may have no
        # credit left, and the window's tuning is due).
        if ((ch.credit_pending >= ch.credit_batch
             or ch.epoch_bytes + ch.credit_pending >= ch.recv_window)
                and not ch.write_paused):
            self._sendCredit(ch)

    def _onOpen(self, channel_id, payload):
        window, host, port = frames.parse_open(payload)
        if channel_id == 0 or channel_id in self.channels:
            raise ProtocolError(f"OPEN for channel {channel_id}, which is in use")
        self.openRequested(channel_id, host, port, window)

    def _onOpenOk(self, channel_id, payload):
        window = frames.parse_u32(payload, "OPEN_OK")
        if window < EARLY_DATA:
            raise ProtocolError(f"OPEN_OK window {window} is under the {EARLY_DATA}-byte minimum")
        ch = self.channels.get(channel_id)
        if ch is None:
            return  # closed while opening; our RESET tells the peer
        self.openSucceeded(ch)
        self._addCredit(ch, window - EARLY_DATA)  # the early data counts against it

    def _onOpenFail(self, channel_id, payload):
        code, reason = frames.parse_open_fail(payload)
        ch = self.channels.pop(channel_id, None)
        if ch is not None:
            ch.closed = True
            self.openFailed(ch, code, reason)

    def _onWindow(self, channel_id, payload):
        increment = frames.parse_u32(payload, "WINDOW")
        ch = self.channels.get(channel_id)
        if ch is not None:
            self._addCredit(ch, increment)

    def _addCredit(self, ch, increment):
        ch.send_credit += increment
        if ch.pending:
            self._flushPending(ch)
        if ch.credit_blocked and ch.send_credit > 0 and not ch.pending:
            ch.credit_blocked = False
            self._resumeReading(ch)

    def _onFin(self, channel_id, payload):
        ch = self.channels.get(channel_id)
        if ch is None:
            self.unopenedFin(channel_id)
            return
        if ch.fin_received:
            return
        ch.fin_received = True
        ch.end.peerFinished()

    def _onReset(self, channel_id, payload):
        ch = self.channels.pop(channel_id, None)
        if ch is not None:
            ch.closed = True
            ch.end.peerReset(frames.parse_reason(payload))

    def _onPing(self, channel_id, payload):
        self.sendFrame(frames.encode(PONG, 0, payload[:8]))

    def _onPong(self, channel_id, payload):
        if len(payload) != _TIMESTAMP.size:
            return
        sample = self.clock.seconds() - _TIMESTAMP.unpack(payload)[0]
        if 0 <= sample < self.ping_timeout:
            self.rtt = sample if self.rtt is None else 0.75 * self.rtt + 0.25 * sample

    def _onGoaway(self, channel_id, payload):
        log.info("tunnel link to {peer} closed by the peer: {reason}",
                 peer=self._peerText(), reason=frames.parse_reason(payload))
        self.close()

    # -- sending, called by ChannelEnd and subclasses ----------------------

    def sendFrame(self, frame):
        """Write one whole (control) frame to the link, counting its bytes."""
        if self._paused:
            self._control_backlog += len(frame)
            if self._control_backlog > MAX_CONTROL_BACKLOG:
                # No GOAWAY: it would only queue behind the rest.
                if not self.closed:
                    log.warn("tunnel link to {peer} ended: it does not read what it asks for",
                             peer=self._peerText())
                    self.protocol_error = True
                    self.close()
                return
        self.meter.send_bytes += len(frame)
        self._write(frame)

    def addChannel(self, channel_id, end, send_credit=0, reading=True, early=()):
        """
        Start tracking channel ``channel_id`` carried to/from ``end``, and
        deliver the ``early`` data (chunks) received while it was opening.
        """
        ch = ChannelState(channel_id, self, end, self.window, send_credit, reading,
                          self.clock.seconds())
        self.channels[channel_id] = ch
        end.channel = ch
        end.link = self
        end.transport.registerProducer(ch, True)
        for chunk in early:
            ch.recv_allowed -= len(chunk)
            end.deliver(chunk)
            ch.credit_pending += len(chunk)
        if ch.credit_pending >= EARLY_DATA:
            # The opener sent all it could before OPEN_OK: its first window
            # was too small already.
            grow = self._growWindow(ch)
            if grow:
                ch.recv_allowed += grow
                self.sendFrame(frames.window_update(channel_id, grow))
        return ch

    def openChannel(self, channel_id, end, host, port):
        """Ask the peer to open ``channel_id`` to ``host:port``; ``end`` may send early data."""
        ch = self.addChannel(channel_id, end, send_credit=EARLY_DATA)
        self.sendFrame(frames.open_channel(channel_id, self.window, host, port))
        return ch

    def sendData(self, ch, data):
        """Send ``data`` read from ``ch``'s local connection, within its credit."""
        n = len(data)
        if n <= ch.send_credit and not ch.pending and n <= MAX_DATA:
            ch.send_credit -= n
            self.meter.send_bytes += n + 9
            self._writeSequence([frames.data_header(ch.id, n), data])
            if ch.send_credit <= 0:
                ch.credit_blocked = True
                self._pauseReading(ch)
            elif self._paused and not ch.link_blocked:
                ch.link_blocked = True
                self._link_blocked.append(ch)
                self._pauseReading(ch)
        else:
            ch.pending.append(data)
            self._flushPending(ch)
            if ch.pending:
                ch.credit_blocked = True
                self._pauseReading(ch)

    def _flushPending(self, ch):
        """Send as much of ``ch``'s waiting data as its credit allows."""
        pending = ch.pending
        write = self._writeSequence
        while pending and ch.send_credit > 0:
            data = pending[0]
            n = min(len(data), ch.send_credit, MAX_DATA)
            if n == len(data):
                pending.pop(0)
            else:
                pending[0] = data[n:]
                data = data[:n]
            ch.send_credit -= n
            self.meter.send_bytes += n + 9
            write([frames.data_header(ch.id, n), data])
        if not pending and ch.fin_pending:
            self._writeFin(ch)

    def sendFin(self, ch):
        """``ch``'s local connection will send no more (its read side ended)."""
        ch.read_eof = True
        if ch.closed or ch.fin_sent:
            return
        if ch.pending:
            ch.fin_pending = True
        else:
            self._writeFin(ch)

    def _writeFin(self, ch):
        ch.fin_pending = False
        ch.fin_sent = True
        self.sendFrame(frames.encode(FIN, ch.id))

    def localClosed(self, ch, reason):
        """``ch``'s local connection is gone; forget the channel, telling the peer if needed."""
        if ch.closed:
            return
        ch.closed = True
        ch.pending = []
        self.channels.pop(ch.id, None)
        if not (ch.fin_sent and ch.fin_received) and not self.closed:
            self.sendFrame(frames.reason_frame(RESET, ch.id, reason))

    def resetChannel(self, ch, reason):
        """Close ``ch`` at both ends now (e.g. an operator's order)."""
        self.localClosed(ch, reason)
        ch.end.peerReset(reason)

    def _sendCredit(self, ch):
        """Return the credit of the bytes ``ch`` has written locally, tuning its window."""
        n = ch.credit_pending
        ch.credit_pending = 0
        ch.epoch_bytes += n
        if ch.epoch_bytes >= ch.recv_window:
            n += self._tuneWindow(ch)
        if ch.debt:
            withheld = min(ch.debt, n)
            ch.debt -= withheld
            n -= withheld
        if n:
            ch.recv_allowed += n
            self.sendFrame(frames.window_update(ch.id, n))

    def _tuneWindow(self, ch):
        """A whole window has been taken in: grow it if that took under two round trips."""
        now = self.clock.seconds()
        elapsed, ch.epoch_start = now - ch.epoch_start, now
        ch.epoch_bytes = 0
        if self.rtt is not None and elapsed < 2 * self.rtt:
            return self._growWindow(ch)
        return 0

    def _growWindow(self, ch):
        """
        ``ch``'s window is too small: make it twice the link's
        bandwidth-delay product, or WINDOW_GROWTH times larger if that is
        more, up to ``max_window``.  Returns the credit to add.
        """
        rtt = self.rtt
        if rtt is None or ch.recv_window >= self.max_window or ch.debt:
            return 0
        target = max(ch.recv_window * WINDOW_GROWTH, int(2 * self.bandwidth() * rtt))
        grow = min(target, self.max_window) - ch.recv_window
        ch.recv_window += grow
        ch.credit_batch = _credit_batch(ch.recv_window)
        self._grown.add(ch)
        # The data of the new credit starts arriving a round trip from now;
        # until then only what the old window let through does.
        ch.epoch_start = self.clock.seconds() + rtt
        ch.epoch_bytes = 0
        return grow

    def bandwidth(self):
        """The link's measured bandwidth towards us, bytes/s (0 when unknown)."""
        return max(self._rate, self._old_rate)

    def _measureTrain(self, n):
        """
        ``n`` bytes of DATA arrived: time the train they belong to.  A window
        sent in one go arrives as a train at the speed of the link's slowest
        hop, so a train of TRAIN_MIN bytes or more measures the bandwidth even
        while the windows, not the link, still limit each channel.
        """
        now = self.clock.seconds()
        rtt = self.rtt
        if self._train_last is None or rtt is None or now - self._train_last > TRAIN_GAP * rtt:
            self._train_start = now  # the first chunk's bytes arrived before this moment
            self._train_bytes = 0
        else:
            self._train_bytes += n
            if self._train_bytes >= TRAIN_MIN and now > self._train_start:
                self._rate = max(self._rate, self._train_bytes / (now - self._train_start))
        self._train_last = now

    # -- reading on and off ------------------------------------------------

    def _pauseReading(self, ch):
        if ch.reading:
            ch.reading = False
            ch.end.transport.pauseProducing()

    def _resumeReading(self, ch):
        if (not ch.reading and not ch.credit_blocked and not ch.link_blocked
                and not ch.read_eof and not ch.closed):
            ch.reading = True
            ch.end.transport.resumeProducing()

    # IPushProducer for our own transport: its write buffer filled or drained.
    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._control_backlog = 0
        blocked, self._link_blocked = self._link_blocked, []
        for ch in blocked:
            ch.link_blocked = False
            self._resumeReading(ch)

    def stopProducing(self):
        self._paused = True


@implementer(IHalfCloseableProtocol)
class ChannelEnd(Protocol):
    """
    A local TCP connection whose bytes travel over a channel.

    ``link`` and ``channel`` are set by ``Link.addChannel``.  ``meter``
    counts the bytes read from (``recv_bytes``) and written to
    (``send_bytes``) this connection.  Half-close is carried both ways: our
    read side ending sends FIN; the peer's FIN shuts our write side; once
    both are done the connection closes.
    """

    link = None
    channel = None
    meter = None
    _read_eof = False
    _write_eof = False

    def connectionMade(self):
        tune_transport(self.transport)
        self._write = direct_writers(self.transport)[0]
        if self.meter is None:
            self.meter = _Counter()

    def dataReceived(self, data):
        self.meter.recv_bytes += len(data)
        self.link.sendData(self.channel, data)

    def readConnectionLost(self):
        self._read_eof = True
        if self.channel is not None:
            self.link.sendFin(self.channel)
        self._closeIfDone()

    def writeConnectionLost(self):
        self._write_eof = True
        self._closeIfDone()

    def _closeIfDone(self):
        if self._read_eof and self._write_eof:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if self.channel is not None:
            self.link.localClosed(self.channel, f"connection lost: {reason.getErrorMessage()}")

    # -- called by the link -------------------------------------------------

    def deliver(self, data):
        self.meter.send_bytes += len(data)
        self._write(data)

    def peerFinished(self):
        """The far end sent FIN: shut our write side once the buffer is out."""
        self.transport.unregisterProducer()
        self.transport.loseWriteConnection()

    def peerReset(self, reason):
        """The far end is gone: drop the connection now."""
        self.transport.abortConnection()

    def linkLost(self):
        """The link died under this channel."""
        self.transport.abortConnection()
