"""
The tunnel link's core, sans I/O: bytes and the time go in, what to do
comes out.

:class:`Connection` is one end of a link (``SERVER`` or ``CLIENT``).  It owns
the handshake, the channel table (each channel's state machine, see
:mod:`~portmapper.protocol.channel`), flow control both ways (credit,
batching and autotuning, see :mod:`~portmapper.protocol.windows`),
keepalive and going away.  It never touches a socket, a reactor or a clock:

- what the peer sent goes in with :meth:`Connection.receive_data`, the
  passing of time with :meth:`Connection.tick` (when
  :meth:`Connection.next_deadline` says), and what the local side does with
  the other methods (a channel's socket read data, reached EOF, filled its
  write buffer, closed; the link's own write buffer filled or drained);
- the bytes to write to the link come out of :meth:`Connection.data_to_send`,
  in order, as a list of chunks to write with one gathered write;
- everything else comes out of :meth:`Connection.events` as the events
  below: deliver bytes to channel X, pause or resume reading channel X's
  socket, channel X opened, failed, ended or was reset, the peer wants to
  authenticate or go away, the link must close.

The Twisted side (:mod:`portmapper.transport.link`) is a thin adapter that
feeds it and applies its events; the tests drive it directly.  The wire
format and its rules are specified in ``docs/protocol.rst``.
"""

import struct

import attr

from portmapper.protocol import auth, frames
from portmapper.protocol.channel import (
    CONNECTING_STATES, GOT_FIN_STATES, OPENING_STATES, PAUSED_CREDIT, PAUSED_EOF, PAUSED_LINK,
    SENT_FIN_STATES, Channel, Input, State,
)
from portmapper.protocol.frames import (
    AUTH, DATA, FIN, GOAWAY, GOAWAY_CLOSING, GOAWAY_DRAINING, HELLO, MAGIC, MAX_CHANNEL_ID,
    MAX_CREDIT, MAX_DATA, OPEN, OPEN_FAIL, OPEN_OK, PING, PING_SIZE, PONG, PROTOCOL_VERSION,
    REFUSE, RESET, WELCOME, WINDOW, ProtocolError,
)
from portmapper.protocol.windows import DEFAULT_WINDOW, EARLY_DATA, MAX_WINDOW, LinkEstimate
from portmapper.validate import is_tag

SERVER = "server"
CLIENT = "client"

PING_INTERVAL = 10.0
PING_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 5.0
HANDSHAKE_MAX_CONTROL = 512  # the largest frame accepted before the handshake is done
# Control frames (PONG, WINDOW, ...) written while the link's write buffer is
# full: past this much, the peer is not reading what it asks for, and goes.
MAX_CONTROL_BACKLOG = 1024 * 1024

_TIMESTAMP = struct.Struct(">d")
_LINK_FRAMES = frozenset({frames.HELLO, AUTH, WELCOME, REFUSE, PING, PONG, GOAWAY})
_KNOWN_FAIL_CODES = frozenset({frames.FAIL_REFUSED, frames.FAIL_TIMEOUT, frames.FAIL_DENIED,
                               frames.FAIL_DRAINING})


# -- events ------------------------------------------------------------------

class Event:
    """Something the owner of a :class:`Connection` must act on (compares by value)."""

    __slots__ = ()


def _event(cls):
    return attr.s(slots=True, eq=True, repr=True)(cls)


@_event
class AuthRequested(Event):
    """Server: a client asks to join with ``tag``; answer accept() or refuse()."""

    method = attr.ib()
    proof = attr.ib()
    tag = attr.ib()
    nonce = attr.ib()


@_event
class Welcomed(Event):
    """Client: the server accepted us as ``client_id``."""

    client_id = attr.ib()


@_event
class Refused(Event):
    """Client: the server refused us; the link closes."""

    reason = attr.ib()


@_event
class GoingAway(Event):
    """The peer sent GOAWAY: closing now, or draining (no new channels)."""

    reason = attr.ib()
    draining = attr.ib()


@_event
class CloseLink(Event):
    """Close the link's connection once data_to_send() is written (at once if
    ``abort``); ``error`` when the link ends because of a fault."""

    reason = attr.ib()
    error = attr.ib()
    abort = attr.ib()


@_event
class OpenRequested(Event):
    """Acceptor: open a connection to host:port, write ``preamble`` to it first, then
    accept_channel() or refuse_channel()."""

    channel_id = attr.ib()
    host = attr.ib()
    port = attr.ib()
    preamble = attr.ib(default=b"")


@_event
class ChannelOpened(Event):
    """Opener: the peer reached the target."""

    channel_id = attr.ib()


@_event
class ChannelOpenFailed(Event):
    """Opener: the peer could not reach the target; the channel is gone."""

    channel_id = attr.ib()
    code = attr.ib()
    reason = attr.ib()


@_event
class DataReceived(Event):
    """Write ``data`` to the channel's local socket."""

    channel_id = attr.ib()
    data = attr.ib()


@_event
class ChannelEnded(Event):
    """The peer sent FIN: shut the local socket's write side once written."""

    channel_id = attr.ib()


@_event
class ChannelReset(Event):
    """The peer reset the channel (or it was still connecting): drop the
    local socket; the channel is gone."""

    channel_id = attr.ib()
    reason = attr.ib()


@_event
class ChannelLost(Event):
    """The link is gone under this channel: drop the local socket."""

    channel_id = attr.ib()


@_event
class PauseReading(Event):
    """Stop reading the channel's socket."""

    channel_id = attr.ib()


@_event
class ResumeReading(Event):
    """Read the channel's socket again."""

    channel_id = attr.ib()


class LinkUnavailable(Exception):
    """No channel can be opened on this link (closed, going away, ids used up)."""


def _finished(ch):
    """Whether channel ``ch`` ended cleanly both ways, with nothing left to send."""
    return ch.state is State.CLOSED and not ch.pending


class ByteCounter:
    """Bytes received and sent on the link (the owner may substitute its own meter)."""

    __slots__ = ("recv_bytes", "send_bytes")

    def __init__(self):
        self.recv_bytes = 0
        self.send_bytes = 0


class Connection:
    """
    One end of a tunnel link, sans I/O (see the module docstring).

    ``role`` is ``SERVER`` (greets, authenticates, opens channels) or
    ``CLIENT`` (proves the ``token`` for ``tag``, accepts channels; a
    credential token proves with its key, see :mod:`~portmapper.protocol.auth`).
    ``meter`` counts the link's bytes (``recv_bytes``, ``send_bytes``).
    """

    def __init__(self, role, now, *, window=DEFAULT_WINDOW, max_window=MAX_WINDOW,
                 ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT,
                 handshake_timeout=HANDSHAKE_TIMEOUT, token="", tag="default", nonce=None,
                 meter=None):
        if role not in (SERVER, CLIENT):
            raise ValueError(f"role must be {SERVER!r} or {CLIENT!r}")
        self.role = role
        self.window = window
        self.max_window = max(window, max_window)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.meter = meter if meter is not None else ByteCounter()
        self.estimate = LinkEstimate()
        self.channels = {}  # channel id -> Channel
        self.established = False
        self.closed = False  # CloseLink was emitted, or the connection was lost
        self.protocol_error = False  # the link ended because the peer broke the protocol
        self.draining = False  # we sent GOAWAY draining
        self.peer_draining = False  # the peer sent GOAWAY draining
        self.client_id = None
        self._token = token
        self._tag = tag
        self._nonce = nonce if nonce is not None else auth.make_nonce()
        self._hello_seen = False  # client: HELLO received
        self._auth_seen = False  # server: AUTH received
        self._next_id = 1  # opener: the next channel id to use
        self._last_peer_id = 0  # acceptor: the highest channel id the peer opened
        self._out = []
        self._events = []
        self._delivered = []  # channels that received DATA since the last delivered()
        self._link_full = False
        self._control_backlog = 0  # control bytes written while the link is full
        self._link_blocked = []  # channels paused because the link is full
        self._link_moved = False  # the link's write buffer moved since the last keepalive tick
        self._stalled = 0.0  # seconds of keepalive ticks with the buffer full and unmoved
        self._heard = False  # anything received since the last keepalive tick
        self._silent = 0.0  # seconds of keepalive ticks with nothing received
        self._handshake_deadline = now + handshake_timeout
        self._next_keepalive = now + ping_interval
        self._decoder = frames.FrameDecoder(self._on_frame, self._on_data,
                                            max_control=HANDSHAKE_MAX_CONTROL)
        self._now = now
        self._handlers = {
            OPEN: self._on_open, OPEN_OK: self._on_open_ok, OPEN_FAIL: self._on_open_fail,
            WINDOW: self._on_window, FIN: self._on_fin, RESET: self._on_reset,
            PING: self._on_ping, PONG: self._on_pong, GOAWAY: self._on_goaway,
        }

    # -- output ----------------------------------------------------------------

    def data_to_send(self):
        """The bytes to write to the link, in order (a list of chunks); empties it."""
        out = self._out
        if not out:
            return ()
        self._out = []
        return out

    def events(self):
        """The events since the last call, in order; empties the list."""
        events = self._events
        if not events:
            return ()
        self._events = []
        return events

    def _send(self, frame):
        """Queue one whole control frame (none once the link closed: its GOAWAY was the last)."""
        if self.closed:
            return
        if self._link_full:
            self._control_backlog += len(frame)
            if self._control_backlog > MAX_CONTROL_BACKLOG:
                # No GOAWAY: it would only queue behind the rest.
                self.protocol_error = True
                self._close("it does not read what it asks for", error=True, abort=True,
                            goaway=False)
                return
        self.meter.send_bytes += len(frame)
        self._out.append(frame)

    # -- life of the link --------------------------------------------------------

    def start(self):
        """The connection is up: the server greets the client."""
        if self.role == SERVER:
            self._send(frames.hello(self._nonce))

    def next_deadline(self):
        """When :meth:`tick` must next be called (None once closed)."""
        if self.closed:
            return None
        if self.established:
            return self._next_keepalive
        return min(self._next_keepalive, self._handshake_deadline)

    def tick(self, now):
        """
        Time passed: end an overdue handshake, ping, drop a silent link or one
        that takes nothing we send, shrink idle windows.
        """
        self._now = now
        if self.closed:
            return
        if not self.established and now >= self._handshake_deadline:
            self._close("the handshake did not finish in time", error=True)
            return
        if now < self._next_keepalive:
            return
        self._next_keepalive = now + self.ping_interval
        if self._heard:
            self._heard = False
            self._silent = 0.0
        else:
            self._silent += self.ping_interval
        if self._silent >= self.ping_timeout:
            self._close(f"nothing heard for {self._silent:g} seconds", error=True)
            return
        if self._link_full and not self._link_moved:
            self._stalled += self.ping_interval
        else:
            self._stalled = 0.0
        self._link_moved = False
        if self._stalled >= self.ping_timeout:
            # A peer that pings but never reads: our writes would only queue
            # behind the rest, so no GOAWAY.
            self._close(f"it took nothing we sent for {self._stalled:g} seconds", error=True,
                        abort=True, goaway=False)
            return
        if self.established:
            self._ping()
            for ch in self.channels.values():
                ch.window.idle()
            self.estimate.fade()

    def close(self, reason):
        """Close the link in good order, telling the peer ``reason``."""
        self._close(reason, error=False)

    def fail(self, reason):
        """End the link because of ``reason``, a fault (one sentence), telling the peer."""
        self._close(reason, error=True)

    def go_away(self, reason):
        """
        Drain: tell the peer we take no new channels and open none; the link
        closes once the open channels are done (or the owner closes it).
        """
        if self.closed or self.draining:
            return
        self.draining = True
        self._send(frames.goaway(GOAWAY_DRAINING, reason))
        self._close_if_drained()

    def connection_lost(self):
        """The connection is gone: every channel with it."""
        self.closed = True
        self._decoder.stopped = True
        channels, self.channels = self.channels, {}
        for channel_id, ch in channels.items():
            ch.state = State.CLOSED
            self._events.append(ChannelLost(channel_id))

    def _close(self, reason, error, abort=False, goaway=True):
        if self.closed:
            return
        if goaway:
            limit = frames.MAX_CONTROL if self.established else HANDSHAKE_MAX_CONTROL
            self._send(frames.goaway(GOAWAY_CLOSING, reason, limit))
        self.closed = True
        self._decoder.stopped = True
        self._events.append(CloseLink(reason, error, abort))

    def _close_if_drained(self):
        """Draining, and the last channel is gone (however it went): close."""
        if self.draining and not self.channels and not self.closed:
            self._close("drained", error=False)

    # -- handshake -----------------------------------------------------------------

    def accept(self, client_id):
        """Server: let the client in as ``client_id`` (after AuthRequested)."""
        if self.closed:
            return
        self.client_id = client_id
        self._send(frames.welcome(client_id))
        self._establish()

    def refuse(self, reason):
        """Server: refuse the client, telling it ``reason``; the link closes."""
        if self.closed:
            return
        why = f"client refused: {reason}"
        self._send(frames.reason_frame(REFUSE, 0, why, HANDSHAKE_MAX_CONTROL))
        self._close(f"client refused: {reason}", error=False, goaway=False)

    def _establish(self):
        self.established = True
        self._decoder.max_control = frames.MAX_CONTROL
        self._ping()  # a first round-trip time for window tuning

    def _on_handshake_frame(self, ftype, payload):
        if self.role == SERVER:
            if ftype != AUTH or self._auth_seen:
                raise ProtocolError(f"expected AUTH, got {frames.NAMES[ftype]}")
            self._auth_seen = True
            magic, version, method, proof, tag = frames.parse_auth(payload)
            if magic != MAGIC:
                raise ProtocolError("not a portmapper client")
            if version != PROTOCOL_VERSION:
                self.refuse(f"protocol version {version} is not supported; "
                            f"this server speaks {PROTOCOL_VERSION}")
            elif not is_tag(tag):
                self.refuse("the tag must be 1 to 64 characters from A-Z a-z 0-9 _ . : -")
            else:
                self._events.append(AuthRequested(method, proof, tag, self._nonce))
        elif ftype == HELLO and not self._hello_seen:
            magic, version, nonce = frames.parse_hello(payload)
            if magic != MAGIC:
                raise ProtocolError("the server is not a portmapper server")
            if version != PROTOCOL_VERSION:
                raise ProtocolError(f"the server speaks protocol version {version}, "
                                    f"this client {PROTOCOL_VERSION}")
            self._hello_seen = True
            method, proof = auth.client_proof(self._token, nonce, self._tag)
            self._send(frames.auth(method, proof, self._tag))
        elif ftype == WELCOME and self._hello_seen:
            self.client_id = frames.parse_u32(payload, "WELCOME")
            self._establish()
            self._events.append(Welcomed(self.client_id))
        elif ftype == REFUSE:
            reason = frames.parse_reason(payload)
            self._events.append(Refused(reason))
            self._close(reason, error=False, goaway=False)
        else:
            raise ProtocolError(f"unexpected {frames.NAMES[ftype]} frame during the handshake")

    # -- receiving -------------------------------------------------------------------

    def receive_data(self, data, now):
        """Bytes arrived from the peer: decode and act on them."""
        self._now = now
        self.meter.recv_bytes += len(data)
        self._heard = True
        try:
            self._decoder.feed(data)
        except ProtocolError as e:
            self.protocol_error = True
            self._close(f"protocol error: {e}", error=True)

    def delivered(self):
        """
        The DataReceived events handed out so far are written to their local
        sockets (whose write buffers said, by :meth:`local_full`, whether they
        filled): give back the credit now due.
        """
        channels, self._delivered = self._delivered, []
        for ch in channels:
            if not ch.local_full and ch.window.due() and ch.state is not State.CLOSED:
                self._give_credit(ch)

    def _on_frame(self, ftype, channel_id, payload):
        if ftype in _LINK_FRAMES:
            if channel_id != 0:
                raise ProtocolError(f"{frames.NAMES[ftype]} frame on channel {channel_id}, not 0")
        elif channel_id == 0:
            raise ProtocolError(f"{frames.NAMES[ftype]} frame on channel 0")
        # GOAWAY may come at any time: a peer ending the handshake says why.
        if not self.established and ftype != GOAWAY:
            self._on_handshake_frame(ftype, payload)
            return
        handler = self._handlers.get(ftype)
        if handler is None:
            raise ProtocolError(f"{frames.NAMES[ftype]} frame after the handshake")
        handler(channel_id, payload)

    def _on_data(self, channel_id, chunk):
        ch = self.channels.get(channel_id)
        if ch is None:
            if not self.established:
                raise ProtocolError("DATA frame before the handshake")
            if channel_id == 0:
                raise ProtocolError("DATA frame on channel 0")
            return  # a channel we closed; our RESET is on its way
        n = len(chunk)
        state = ch.state
        if state in GOT_FIN_STATES:
            raise ProtocolError(f"DATA on channel {channel_id} after its FIN")
        if not ch.window.take(n):
            raise ProtocolError(f"channel {channel_id} sent beyond its window")
        if state in CONNECTING_STATES:
            ch.early_bytes += n
            if ch.early_bytes > EARLY_DATA:
                raise ProtocolError(
                    f"channel {channel_id} sent over {EARLY_DATA} bytes before OPEN_OK")
            ch.early.append(chunk)  # held until the target is connected
            return
        if state in OPENING_STATES:
            raise ProtocolError(f"DATA on channel {channel_id} before its OPEN_OK")
        self.estimate.arrived(n, self._now)
        self._events.append(DataReceived(channel_id, chunk))
        self._delivered.append(ch)

    def _on_open(self, channel_id, payload):
        window, host, port, preamble = frames.parse_open(payload)
        if self.role != CLIENT:
            raise ProtocolError("this end does not accept OPEN")
        if self.peer_draining:
            raise ProtocolError(f"OPEN for channel {channel_id} after GOAWAY draining")
        if channel_id <= self._last_peer_id:
            raise ProtocolError(f"OPEN for channel {channel_id}, not above the last one "
                                f"({self._last_peer_id})")
        if window < EARLY_DATA:
            raise ProtocolError(f"OPEN window {window} is under the {EARLY_DATA}-byte minimum")
        self._last_peer_id = channel_id
        if self.draining:
            self._send(frames.open_fail(channel_id, frames.FAIL_DRAINING,
                                        "the client is draining"))
            return
        self.channels[channel_id] = Channel(channel_id, State.CONNECTING, window, self.window,
                                            self.max_window, self.estimate, self._now)
        self._events.append(OpenRequested(channel_id, host, port, preamble))

    def _on_open_ok(self, channel_id, payload):
        if self.role != SERVER:
            raise ProtocolError("this end does not accept OPEN_OK")
        window = frames.parse_u32(payload, "OPEN_OK")
        if window < EARLY_DATA:
            raise ProtocolError(f"OPEN_OK window {window} is under the {EARLY_DATA}-byte minimum")
        ch = self.channels.get(channel_id)
        if ch is None:
            return  # closed while opening; our RESET tells the peer
        if ch.state not in OPENING_STATES:
            raise ProtocolError(f"OPEN_OK for channel {channel_id}, which is {ch.state.value}")
        ch.advance(Input.OPENED)
        self._events.append(ChannelOpened(channel_id))
        self._add_credit(ch, window - EARLY_DATA)  # the early data counts against it

    def _on_open_fail(self, channel_id, payload):
        if self.role != SERVER:
            raise ProtocolError("this end does not accept OPEN_FAIL")
        code, reason = frames.parse_open_fail(payload)
        ch = self.channels.get(channel_id)
        if ch is None:
            return
        if ch.state not in OPENING_STATES:
            raise ProtocolError(f"OPEN_FAIL for channel {channel_id}, which is {ch.state.value}")
        if code not in _KNOWN_FAIL_CODES:
            code = frames.FAIL_REFUSED
        self._forget(ch)
        self._events.append(ChannelOpenFailed(channel_id, code, reason))
        self._close_if_drained()

    def _on_window(self, channel_id, payload):
        increment = frames.parse_u32(payload, "WINDOW")
        if increment == 0:
            raise ProtocolError(f"WINDOW of 0 on channel {channel_id}")
        ch = self.channels.get(channel_id)
        if ch is None:
            return
        if ch.state in OPENING_STATES:
            raise ProtocolError(f"WINDOW on channel {channel_id} before its OPEN_OK")
        if ch.send_credit + increment > MAX_CREDIT:
            raise ProtocolError(f"WINDOW on channel {channel_id} overflows its credit")
        self._add_credit(ch, increment)

    def _on_fin(self, channel_id, payload):
        ch = self.channels.get(channel_id)
        if ch is None or ch.state in GOT_FIN_STATES:
            return  # a channel we closed, or a repeated FIN
        if ch.state in OPENING_STATES:
            raise ProtocolError(f"FIN on channel {channel_id} before its OPEN_OK")
        ch.advance(Input.REMOTE_FIN)
        if ch.state is not State.CONNECTING_GOT_FIN:  # else told once the target is connected
            self._events.append(ChannelEnded(channel_id))

    def _on_reset(self, channel_id, payload):
        ch = self.channels.get(channel_id)
        if ch is not None:
            self._forget(ch)
            self._events.append(ChannelReset(channel_id, frames.parse_reason(payload)))
            self._close_if_drained()

    def _on_ping(self, channel_id, payload):
        if len(payload) != PING_SIZE:
            raise ProtocolError(f"PING of {len(payload)} bytes, not {PING_SIZE}")
        self._send(frames.encode(PONG, 0, payload))

    def _on_pong(self, channel_id, payload):
        if len(payload) != PING_SIZE:
            raise ProtocolError(f"PONG of {len(payload)} bytes, not {PING_SIZE}")
        sample = self._now - _TIMESTAMP.unpack(payload)[0]
        if 0 <= sample < self.ping_timeout:
            self.estimate.round_trip(sample)

    def _on_goaway(self, channel_id, payload):
        code, reason = frames.parse_goaway(payload)
        if code == GOAWAY_DRAINING and self.established:
            self.peer_draining = True
            self._events.append(GoingAway(reason, True))
            return
        self._events.append(GoingAway(reason, False))
        self._close(reason, error=False, goaway=False)

    def _ping(self):
        self._send(frames.encode(PING, 0, _TIMESTAMP.pack(self._now)))

    # -- channels: opening -----------------------------------------------------------

    def open_channel(self, host, port, preamble=b""):
        """
        Opener: ask the peer to open a channel to ``host:port``, writing
        ``preamble`` to the target before anything else (a PROXY protocol
        header, say); returns the channel's id.  Up to EARLY_DATA bytes (and
        a FIN) may be sent on it at once.
        Raises :class:`LinkUnavailable` if no channel can be opened here.
        """
        if self.role != SERVER:
            raise LinkUnavailable("only the server opens channels")
        if self.closed or not self.established:
            raise LinkUnavailable("the link is not up")
        if self.draining or self.peer_draining:
            raise LinkUnavailable("the link is draining")
        channel_id = self._next_id
        if channel_id > MAX_CHANNEL_ID:
            self.go_away("channel ids used up")
            raise LinkUnavailable("the link's channel ids are used up")
        self._next_id += 1
        self.channels[channel_id] = Channel(channel_id, State.OPENING, EARLY_DATA, self.window,
                                            self.max_window, self.estimate, self._now)
        self._send(frames.open_channel(channel_id, self.window, host, port, preamble))
        return channel_id

    def accept_channel(self, channel_id):
        """
        Acceptor: the target of ``channel_id`` is connected.  Sends OPEN_OK,
        then hands over what the peer sent while we connected.
        """
        ch = self.channels.get(channel_id)
        if ch is None or ch.state not in CONNECTING_STATES:
            return  # reset while we connected
        ch.advance(Input.OPENED)
        self._send(frames.open_ok(channel_id, self.window))
        early, ch.early = ch.early, []
        for chunk in early:
            self._events.append(DataReceived(channel_id, chunk))
        if early:
            self._delivered.append(ch)
        if ch.early_bytes >= EARLY_DATA:
            # The opener sent all it could before OPEN_OK: its first window
            # was too small already.
            grow = ch.window.grow_now(self._now)
            if grow:
                self._send(frames.window_update(channel_id, grow))
        if ch.state is State.GOT_FIN:
            self._events.append(ChannelEnded(channel_id))

    def refuse_channel(self, channel_id, code, reason):
        """Acceptor: the target of ``channel_id`` cannot be reached (``code``, OS ``reason``)."""
        ch = self.channels.get(channel_id)
        if ch is None or ch.state not in CONNECTING_STATES:
            return
        self._forget(ch)
        self._send(frames.open_fail(channel_id, code, reason))
        self._close_if_drained()

    # -- channels: the local side ----------------------------------------------------

    def send_data(self, channel_id, data):
        """The channel's local socket read ``data``: send it within the channel's credit."""
        ch = self.channels.get(channel_id)
        if ch is None or ch.state in SENT_FIN_STATES or self.closed:
            return
        n = len(data)
        if n <= ch.send_credit and not ch.pending and n <= MAX_DATA:
            ch.send_credit -= n
            self.meter.send_bytes += n + frames.HEADER_SIZE
            self._out.append(frames.data_header(channel_id, n))
            self._out.append(data)
            if ch.send_credit <= 0:
                self._pause(ch, PAUSED_CREDIT)
            elif self._link_full and not ch.paused & PAUSED_LINK:
                self._link_blocked.append(ch)
                self._pause(ch, PAUSED_LINK)
        else:
            ch.pending.append(data)
            self._flush_pending(ch)
            if ch.pending:
                self._pause(ch, PAUSED_CREDIT)

    def end_channel(self, channel_id):
        """The channel's local socket reached EOF: FIN, once the data read before it is out."""
        ch = self.channels.get(channel_id)
        if ch is None or ch.state in SENT_FIN_STATES:
            return
        ch.advance(Input.LOCAL_EOF)
        ch.paused |= PAUSED_EOF  # nothing more to read: never resume it
        if not ch.pending:
            self._send(frames.encode(FIN, channel_id))

    def reset_channel(self, channel_id, reason):
        """
        The channel's local socket is gone (or the owner closes the channel):
        forget it, telling the peer with RESET unless both sides ended cleanly.
        """
        ch = self.channels.get(channel_id)
        if ch is None:
            return
        clean = _finished(ch)
        self._forget(ch)
        if not clean and not self.closed:
            self._send(frames.reason_frame(RESET, channel_id, reason))
        self._close_if_drained()

    def forget_finished(self, channel_id):
        """
        The channel's local socket is gone: if the channel had ended both
        ways with nothing left to send, forget it (the peer needs no RESET)
        and return True.  Otherwise change nothing and return False: the
        owner calls :meth:`reset_channel` with the reason the socket went.
        """
        ch = self.channels.get(channel_id)
        if ch is None or not _finished(ch):
            return False
        self._forget(ch)
        self._close_if_drained()
        return True

    def local_full(self, channel_id, full):
        """The channel's local socket's write buffer filled (True) or drained (False)."""
        ch = self.channels.get(channel_id)
        if ch is None:
            return
        ch.local_full = full
        if not full and ch.window.pending and ch.state is not State.CLOSED:
            self._give_credit(ch)

    def cap_window(self, channel_id, size):
        """
        Keep the channel's receive window at ``size`` bytes at most (None:
        the link's maximum again), e.g. while a rate limit holds its credit,
        so that every limited channel has as much in flight.
        """
        ch = self.channels.get(channel_id)
        if ch is not None:
            ch.window.cap(self.max_window if size is None else size)

    def link_full(self, full):
        """The link's own write buffer filled (True) or drained (False)."""
        if full != self._link_full:  # Twisted says "full" again at each write while it is
            self._link_moved = True  # a change counts as movement for the tick under way
        self._link_full = full
        if full:
            return
        self._control_backlog = 0
        blocked, self._link_blocked = self._link_blocked, []
        for ch in blocked:
            self._unpause(ch, PAUSED_LINK)

    def link_moving(self):
        """
        The link's write buffer is still full, but its socket took some of it
        since the last tick: the peer reads, however slowly.  A buffer full
        with no such news for ``ping_timeout`` ends the link.
        """
        self._link_moved = True

    # -- channels: credit and reading -------------------------------------------------

    def _give_credit(self, ch):
        n = ch.window.release(self._now)
        if n:
            self._send(frames.window_update(ch.id, n))

    def _add_credit(self, ch, increment):
        ch.send_credit += increment
        if ch.pending:
            self._flush_pending(ch)
        if not ch.pending and ch.send_credit > 0:
            self._unpause(ch, PAUSED_CREDIT)

    def _flush_pending(self, ch):
        """Send as much of ``ch``'s waiting data as its credit allows; then its FIN if due."""
        pending, out = ch.pending, self._out
        while pending and ch.send_credit > 0:
            data = pending[0]
            n = min(len(data), ch.send_credit, MAX_DATA)
            if n == len(data):
                pending.pop(0)
            else:
                pending[0] = data[n:]
                data = data[:n]
            ch.send_credit -= n
            self.meter.send_bytes += n + frames.HEADER_SIZE
            out.append(frames.data_header(ch.id, n))
            out.append(data)
        if not pending and ch.state in SENT_FIN_STATES:
            self._send(frames.encode(FIN, ch.id))

    def _pause(self, ch, reason):
        if not ch.paused:
            self._events.append(PauseReading(ch.id))
        ch.paused |= reason

    def _unpause(self, ch, reason):
        if ch.paused & reason:
            ch.paused &= ~reason
            if not ch.paused and ch.state is not State.CLOSED:
                self._events.append(ResumeReading(ch.id))

    def _forget(self, ch):
        ch.state = State.CLOSED
        ch.pending = []
        self.channels.pop(ch.id, None)
