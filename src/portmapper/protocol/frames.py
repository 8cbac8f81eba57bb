"""
The tunnel link's frames: layout, limits, encoders and an incremental decoder.

Every frame is a 9-byte header followed by its payload::

    +--------+----------------+----------------+=================+
    | type   | channel id     | payload length | payload ...     |
    | 1 byte | 4 bytes, BE    | 4 bytes, BE    | length bytes    |
    +--------+----------------+----------------+=================+

Channel 0 is the link itself (handshake, ping, go-away).  ``docs/protocol.rst``
describes each type's payload and when it may be sent.

The decoder streams DATA payloads: a DATA frame's bytes are handed on as they
arrive (a slice of the chunk read from the socket, or the whole chunk), never
gathered into a frame first.  Control frames are small and are gathered.
Nothing here touches a socket or a reactor.
"""

import struct

PROTOCOL_VERSION = 2
MAGIC = b"PMAP"

HEADER = struct.Struct(">BII")
HEADER_SIZE = HEADER.size  # 9

# Frame types
HELLO = 1  # server -> client: magic, version, nonce
AUTH = 2  # client -> server: magic, version, proof method, proof, tag
WELCOME = 3  # server -> client: client id
REFUSE = 4  # server -> client: reason; the link then closes
OPEN = 5  # server -> client: open channel to host:port
OPEN_OK = 6  # client -> server: the channel's target is connected
OPEN_FAIL = 7  # client -> server: it could not be (code, reason)
DATA = 8  # either way: channel bytes
WINDOW = 9  # either way: credit returned for a channel
FIN = 10  # either way: no more data on this channel from the sender
RESET = 11  # either way: the channel is gone (reason)
PING = 12  # either way: opaque 8 bytes, answered by PONG
PONG = 13
GOAWAY = 14  # either way: the sender closes the link, or drains it (code, reason)

NAMES = {
    HELLO: "HELLO", AUTH: "AUTH", WELCOME: "WELCOME", REFUSE: "REFUSE",
    OPEN: "OPEN", OPEN_OK: "OPEN_OK", OPEN_FAIL: "OPEN_FAIL", DATA: "DATA",
    WINDOW: "WINDOW", FIN: "FIN", RESET: "RESET", PING: "PING", PONG: "PONG",
    GOAWAY: "GOAWAY",
}

# Limits.  A DATA frame carries at most MAX_DATA bytes; a control frame at
# most MAX_CONTROL.  Anything larger ends the link.
MAX_DATA = 1024 * 1024
MAX_CONTROL = 4096

# OPEN_FAIL codes
FAIL_REFUSED = 0  # the target could not be reached (the OS said why)
FAIL_TIMEOUT = 1  # the target did not answer in time
FAIL_DENIED = 2  # the client's allow-list forbids the target
FAIL_DRAINING = 3  # the client is draining: it takes no new channels

# GOAWAY codes
GOAWAY_CLOSING = 0  # the link closes now
GOAWAY_DRAINING = 1  # no new channels either way; open ones carry on, then the link closes

# AUTH proof methods
AUTH_SHARED_TOKEN = 0  # HMAC-SHA256 of the nonce and tag with the shared token (32 bytes)
AUTH_CREDENTIAL = 1  # a credential's Ed25519 public key (32) and signature of the nonce and tag (64)

# Channel ids are uint32; 0 is the link itself.
MAX_CHANNEL_ID = 2**32 - 1
# The most credit a channel may hold: a WINDOW that would go past it is a protocol error.
MAX_CREDIT = 2**32 - 1
PING_SIZE = 8  # PING and PONG payloads: exactly this many bytes

_U32 = struct.Struct(">I")
_OPEN = struct.Struct(">IHB")  # window, port, host length; then host (UTF-8), preamble
_FAIL = struct.Struct(">B")  # code; then reason (UTF-8)
_HELLO = struct.Struct(">4sB32s")  # magic, version, nonce
_AUTH = struct.Struct(">4sBB")  # magic, version, proof method; then proof, tag (UTF-8)
_GOAWAY = struct.Struct(">B")  # code; then reason (UTF-8)
PROOF_SIZES = {AUTH_SHARED_TOKEN: 32, AUTH_CREDENTIAL: 32 + 64}


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow; the link must end."""


def encode(ftype, channel_id=0, payload=b""):
    """One whole frame as bytes (for control frames; DATA uses ``data_header``)."""
    return HEADER.pack(ftype, channel_id, len(payload)) + payload


def data_header(channel_id, length):
    return HEADER.pack(DATA, channel_id, length)


def _text(payload, what):
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not valid UTF-8") from None


def _unpack(fmt, payload, what):
    if len(payload) < fmt.size:
        raise ProtocolError(f"{what} frame is too short ({len(payload)} bytes)")
    return fmt.unpack_from(payload), payload[fmt.size:]


# Payload encoders and decoders, one pair per structured frame type.

def hello(nonce):
    return encode(HELLO, 0, _HELLO.pack(MAGIC, PROTOCOL_VERSION, nonce))


def parse_hello(payload):
    """Return (magic, version, nonce)."""
    if len(payload) != _HELLO.size:
        raise ProtocolError(f"HELLO frame has {len(payload)} bytes, not {_HELLO.size}")
    return _HELLO.unpack(payload)


def auth(method, proof, tag, version=PROTOCOL_VERSION):
    return encode(AUTH, 0, _AUTH.pack(MAGIC, version, method) + proof + tag.encode("utf-8"))


def parse_auth(payload):
    """
    Return (magic, version, method, proof, tag).  Only the magic and version
    are read from a payload whose version is not ours (its layout may differ):
    method, proof and tag are then None.
    """
    (magic, version, method), rest = _unpack(_AUTH, payload, "AUTH")
    if magic != MAGIC or version != PROTOCOL_VERSION:
        return magic, version, None, None, None
    size = PROOF_SIZES.get(method)
    if size is None:
        raise ProtocolError(f"AUTH proof method {method} is unknown")
    if len(rest) < size:
        raise ProtocolError(f"AUTH frame is too short ({len(payload)} bytes)")
    return magic, version, method, rest[:size], _text(rest[size:], "the tag")


def welcome(client_id):
    return encode(WELCOME, 0, _U32.pack(client_id))


def parse_u32(payload, what):
    if len(payload) != 4:
        raise ProtocolError(f"{what} frame has {len(payload)} bytes, not 4")
    return _U32.unpack(payload)[0]


def reason_frame(ftype, channel_id, reason, limit=MAX_CONTROL):
    """REFUSE or RESET with a human-readable reason (cut to ``limit`` bytes)."""
    return encode(ftype, channel_id, reason.encode("utf-8")[:limit])


def goaway(code, reason, limit=MAX_CONTROL):
    """GOAWAY with its code and reason (the payload cut to ``limit`` bytes)."""
    return encode(GOAWAY, 0, _GOAWAY.pack(code) + reason.encode("utf-8")[:limit - 1])


def parse_goaway(payload):
    """Return (code, reason); an unknown code counts as GOAWAY_CLOSING."""
    (code,), rest = _unpack(_GOAWAY, payload, "GOAWAY")
    if code not in (GOAWAY_CLOSING, GOAWAY_DRAINING):
        code = GOAWAY_CLOSING
    return code, rest.decode("utf-8", "replace")


def parse_reason(payload):
    return payload.decode("utf-8", "replace")


def open_channel(channel_id, window, host, port, preamble=b""):
    host = host.encode("utf-8")
    return encode(OPEN, channel_id, _OPEN.pack(window, port, len(host)) + host + preamble)


def parse_open(payload):
    """Return (window, host, port, preamble)."""
    (window, port, host_length), rest = _unpack(_OPEN, payload, "OPEN")
    if len(rest) < host_length:
        raise ProtocolError(f"OPEN frame is too short ({len(payload)} bytes)")
    return window, _text(rest[:host_length], "the target host"), port, rest[host_length:]


def open_ok(channel_id, window):
    return encode(OPEN_OK, channel_id, _U32.pack(window))


def open_fail(channel_id, code, reason):
    return encode(OPEN_FAIL, channel_id, _FAIL.pack(code) + reason.encode("utf-8")[:1024])


def parse_open_fail(payload):
    """Return (code, reason)."""
    (code,), rest = _unpack(_FAIL, payload, "OPEN_FAIL")
    return code, rest.decode("utf-8", "replace")


def window_update(channel_id, increment):
    return encode(WINDOW, channel_id, _U32.pack(increment))


class FrameDecoder:
    """
    Turn a byte stream into calls of ``on_frame(type, channel_id, payload)``
    for control frames and ``on_data(channel_id, chunk)`` for DATA bytes.

    DATA payloads are delivered in pieces as they arrive; the pieces of one
    frame add up to its length.  ``max_control`` may be lowered (e.g. before
    the handshake is done) by setting the attribute.  ``feed`` raises
    :class:`ProtocolError` on anything malformed; after that the decoder must
    not be fed again.
    """

    def __init__(self, on_frame, on_data, max_control=MAX_CONTROL, max_data=MAX_DATA):
        self.on_frame = on_frame
        self.on_data = on_data
        self.max_control = max_control
        self.max_data = max_data
        self.stopped = False  # set by the owner to stop delivering mid-chunk
        self._partial = b""  # an incomplete header or control frame
        self._data_left = 0  # bytes still to come of the current DATA frame
        self._data_channel = 0

    def feed(self, data):
        if self.stopped:
            return
        end = len(data)
        pos = 0
        if self._data_left:
            take = self._data_left if self._data_left < end else end
            self._data_left -= take
            self.on_data(self._data_channel, data if take == end else data[:take])
            pos = take
        elif self._partial:
            data = self._partial + data
            self._partial = b""
            end = len(data)
        unpack = HEADER.unpack_from
        while pos < end and not self.stopped:
            if end - pos < HEADER_SIZE:
                self._partial = data[pos:]
                return
            ftype, channel_id, length = unpack(data, pos)
            if ftype == DATA:
                if length > self.max_data:
                    raise ProtocolError(
                        f"DATA frame of {length} bytes is over the {self.max_data}-byte limit")
                pos += HEADER_SIZE
                avail = end - pos
                if avail >= length:
                    if length:
                        self.on_data(channel_id, data[pos:pos + length])
                    pos += length
                else:
                    self._data_left = length - avail
                    self._data_channel = channel_id
                    self.on_data(channel_id, data[pos:])
                    return
            else:
                if ftype not in NAMES:
                    raise ProtocolError(f"unknown frame type {ftype}")
                if length > self.max_control:
                    raise ProtocolError(
                        f"{NAMES[ftype]} frame of {length} bytes is over the {self.max_control}-byte limit")
                stop = pos + HEADER_SIZE + length
                if stop > end:
                    self._partial = data[pos:]
                    return
                self.on_frame(ftype, channel_id, data[pos + HEADER_SIZE:stop])
                pos = stop
