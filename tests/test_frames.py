"""
Tests for L{portmapper.protocol.frames}: the encoders, the payload parsers
and the streaming L{FrameDecoder}, including its limits and its answer to
malformed input (always L{ProtocolError}, never anything else).
"""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from portmapper.protocol import frames
from portmapper.protocol.frames import (
    AUTH, DATA, FIN, GOAWAY, HELLO, MAX_CONTROL, MAX_DATA, OPEN, OPEN_FAIL,
    OPEN_OK, PING, PONG, REFUSE, RESET, WELCOME, WINDOW, FrameDecoder, ProtocolError,
)
from portmapper.protocol.connection import HANDSHAKE_MAX_CONTROL

CONTROL_TYPES = sorted(set(frames.NAMES) - {DATA})

# Text that encodes to UTF-8 (no lone surrogates).
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
channel_ids = st.integers(min_value=0, max_value=2**32 - 1)
u32s = st.integers(min_value=0, max_value=2**32 - 1)


class Recorder:
    """Collects what a L{FrameDecoder} delivers, in order."""

    def __init__(self, **kwargs):
        self.events = []
        self.decoder = FrameDecoder(self.on_frame, self.on_data, **kwargs)

    def on_frame(self, ftype, channel_id, payload):
        self.events.append((ftype, channel_id, bytes(payload)))

    def on_data(self, channel_id, chunk):
        self.events.append((DATA, channel_id, bytes(chunk)))

    def feed(self, *chunks):
        for chunk in chunks:
            self.decoder.feed(chunk)
        return self.events


def decodeOne(frame):
    """The single (type, channel id, payload) that C{frame} decodes to."""
    events = Recorder().feed(frame)
    assert len(events) == 1, events
    return events[0]


def normalize(events):
    """
    Merge consecutive DATA pieces of one channel and drop empty ones, so that
    streams cut differently compare equal when they carry the same bytes.
    """
    out = []
    for ftype, channel_id, payload in events:
        if ftype == DATA:
            if not payload:
                continue
            if out and out[-1][0] == DATA and out[-1][1] == channel_id:
                out[-1] = (DATA, channel_id, out[-1][2] + payload)
                continue
        out.append((ftype, channel_id, payload))
    return out


def encodeFrame(ftype, channel_id, payload):
    if ftype == DATA:
        return frames.data_header(channel_id, len(payload)) + payload
    return frames.encode(ftype, channel_id, payload)


# One valid frame: DATA of any (modest) size, or a control frame of a known
# type within MAX_CONTROL.
frame_strategy = st.one_of(
    st.tuples(st.just(DATA), channel_ids, st.binary(max_size=300)),
    st.tuples(st.sampled_from(CONTROL_TYPES), channel_ids, st.binary(max_size=64)),
)


@st.composite
def streams_and_cuts(draw):
    """A list of frames, their encoding, and cut points splitting it into chunks."""
    stream = draw(st.lists(frame_strategy, max_size=12))
    data = b"".join(encodeFrame(*f) for f in stream)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    return stream, data, cuts


class EncoderRoundTripTests(SynchronousTestCase):
    """Each encoder's frame decodes and parses back to what was encoded."""

    def test_header(self):
        """The header is 9 bytes: type, channel id and length, big-endian."""
        self.assertEqual(frames.HEADER_SIZE, 9)
        self.assertEqual(frames.encode(PING, 0x01020304, b"ab"),
                         b"\x0c\x01\x02\x03\x04\x00\x00\x00\x02ab")
        self.assertEqual(frames.data_header(7, 5), b"\x08\x00\x00\x00\x07\x00\x00\x00\x05")

    def test_hello(self):
        """HELLO carries the magic, the protocol version and the nonce."""
        nonce = bytes(range(32))
        ftype, channel_id, payload = decodeOne(frames.hello(nonce))
        self.assertEqual((ftype, channel_id), (HELLO, 0))
        self.assertEqual(frames.parse_hello(payload),
                         (frames.MAGIC, frames.PROTOCOL_VERSION, nonce))

    @given(proof=st.binary(min_size=32, max_size=32), tag=texts)
    def test_auth(self, proof, tag):
        """AUTH carries the magic, the version, the proof method, the 32-byte proof and the tag."""
        ftype, channel_id, payload = decodeOne(frames.auth(frames.AUTH_SHARED_TOKEN, proof, tag))
        self.assertEqual((ftype, channel_id), (AUTH, 0))
        self.assertEqual(frames.parse_auth(payload),
                         (frames.MAGIC, frames.PROTOCOL_VERSION, frames.AUTH_SHARED_TOKEN,
                          proof, tag))

    def test_authOfAnotherVersion(self):
        """Of an AUTH of another version, only the magic and the version are read."""
        payload = struct.pack(">4sB32s", frames.MAGIC, 1, b"p" * 32) + b"tag"
        self.assertEqual(frames.parse_auth(payload), (frames.MAGIC, 1, None, None, None))

    def test_authUnknownMethod(self):
        """An AUTH with a proof method this version does not know is refused."""
        payload = frames.auth(frames.AUTH_SHARED_TOKEN, b"p" * 32, "t")[frames.HEADER_SIZE:]
        payload = payload[:5] + b"\x7f" + payload[6:]
        error = self.assertRaises(ProtocolError, frames.parse_auth, payload)
        self.assertIn("method 127", str(error))

    @given(code=st.sampled_from([frames.GOAWAY_CLOSING, frames.GOAWAY_DRAINING]), reason=texts)
    def test_goaway(self, code, reason):
        """GOAWAY carries its code and reason."""
        ftype, channel_id, payload = decodeOne(frames.goaway(code, reason))
        self.assertEqual((ftype, channel_id), (GOAWAY, 0))
        self.assertEqual(frames.parse_goaway(payload), (code, reason))

    def test_goawayUnknownCode(self):
        """A GOAWAY code this version does not know counts as closing."""
        self.assertEqual(frames.parse_goaway(b"\x09bye"), (frames.GOAWAY_CLOSING, "bye"))
        self.assertRaises(ProtocolError, frames.parse_goaway, b"")

    @given(client_id=u32s)
    def test_welcome(self, client_id):
        """WELCOME carries the client id."""
        ftype, channel_id, payload = decodeOne(frames.welcome(client_id))
        self.assertEqual((ftype, channel_id), (WELCOME, 0))
        self.assertEqual(frames.parse_u32(payload, "WELCOME"), client_id)

    @given(ftype=st.sampled_from([REFUSE, RESET, GOAWAY]), channel_id=channel_ids, reason=texts)
    def test_reason(self, ftype, channel_id, reason):
        """REFUSE, RESET and GOAWAY carry their reason as text (GOAWAY after its code)."""
        decoded = decodeOne(frames.reason_frame(ftype, channel_id, reason))
        self.assertEqual(decoded[:2], (ftype, channel_id))
        self.assertEqual(frames.parse_reason(decoded[2]), reason)

    def test_longReasonFitsControlLimit(self):
        """An over-long reason is cut to fit a control frame, and still parses."""
        frame = frames.reason_frame(GOAWAY, 0, "é" * MAX_CONTROL)
        ftype, _, payload = decodeOne(frame)
        self.assertEqual(ftype, GOAWAY)
        self.assertEqual(len(payload), MAX_CONTROL)
        self.assertTrue(frames.parse_reason(payload).startswith("é" * 100))

    @given(channel_id=channel_ids, window=u32s, host=st.text(max_size=63),
           port=st.integers(min_value=0, max_value=65535), preamble=st.binary(max_size=120))
    def test_open(self, channel_id, window, host, port, preamble):
        """OPEN carries the sender's window, the target's host and port, and a preamble."""
        ftype, got_channel, payload = decodeOne(
            frames.open_channel(channel_id, window, host, port, preamble))
        self.assertEqual((ftype, got_channel), (OPEN, channel_id))
        self.assertEqual(frames.parse_open(payload), (window, host, port, preamble))

    def test_openHostCut(self):
        """An OPEN whose host is longer than the rest of the frame is refused."""
        payload = frames.open_channel(1, 1024, "example.org", 22)[frames.HEADER_SIZE:]
        error = self.assertRaises(ProtocolError, frames.parse_open, payload[:-1])
        self.assertIn("too short", str(error))

    @given(channel_id=channel_ids, window=u32s)
    def test_openOk(self, channel_id, window):
        """OPEN_OK carries the opener's window."""
        ftype, got_channel, payload = decodeOne(frames.open_ok(channel_id, window))
        self.assertEqual((ftype, got_channel), (OPEN_OK, channel_id))
        self.assertEqual(frames.parse_u32(payload, "OPEN_OK"), window)

    @given(channel_id=channel_ids,
           code=st.sampled_from([frames.FAIL_REFUSED, frames.FAIL_TIMEOUT, frames.FAIL_DENIED]),
           reason=texts)
    def test_openFail(self, channel_id, code, reason):
        """OPEN_FAIL carries a failure code and the reason."""
        ftype, got_channel, payload = decodeOne(frames.open_fail(channel_id, code, reason))
        self.assertEqual((ftype, got_channel), (OPEN_FAIL, channel_id))
        self.assertEqual(frames.parse_open_fail(payload), (code, reason))

    @given(channel_id=channel_ids, increment=u32s)
    def test_window(self, channel_id, increment):
        """WINDOW carries the credit increment."""
        ftype, got_channel, payload = decodeOne(frames.window_update(channel_id, increment))
        self.assertEqual((ftype, got_channel), (WINDOW, channel_id))
        self.assertEqual(frames.parse_u32(payload, "WINDOW"), increment)

    def test_finAndPing(self):
        """FIN is an empty frame on its channel; PING and PONG carry opaque bytes."""
        self.assertEqual(decodeOne(frames.encode(FIN, 5)), (FIN, 5, b""))
        self.assertEqual(decodeOne(frames.encode(PING, 0, b"12345678")), (PING, 0, b"12345678"))
        self.assertEqual(decodeOne(frames.encode(PONG, 0, b"12345678")), (PONG, 0, b"12345678"))

    @given(channel_id=channel_ids, payload=st.binary(min_size=1, max_size=500))
    def test_data(self, channel_id, payload):
        """A DATA header and its payload decode to the channel's bytes."""
        frame = frames.data_header(channel_id, len(payload)) + payload
        self.assertEqual(decodeOne(frame), (DATA, channel_id, payload))


class StreamTests(SynchronousTestCase):
    """The decoder gives the same result however the stream is cut."""

    @settings(max_examples=300)
    @given(streams_and_cuts())
    def test_anySplitDecodesTheSame(self, example):
        """Any split of valid frames into chunks gives the same frames, DATA bytes and order."""
        stream, data, cuts = example
        bounds = [0] + cuts + [len(data)]
        chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])]
        events = Recorder().feed(*chunks)

        self.assertEqual(normalize(events), normalize(stream))
        control = [e for e in events if e[0] != DATA]
        self.assertEqual(control, [f for f in stream if f[0] != DATA])
        per_channel = {}
        for ftype, channel_id, payload in events:
            if ftype == DATA:
                per_channel[channel_id] = per_channel.get(channel_id, b"") + payload
        expected = {}
        for ftype, channel_id, payload in stream:
            if ftype == DATA and payload:
                expected[channel_id] = expected.get(channel_id, b"") + payload
        self.assertEqual({k: v for k, v in per_channel.items() if v}, expected)

    def test_byteByByte(self):
        """Fed one byte at a time, a DATA frame arrives as its bytes and a control frame whole."""
        stream = (frames.data_header(3, 4) + b"abcd" + frames.window_update(3, 99)
                  + frames.data_header(4, 2) + b"xy")
        events = Recorder().feed(*[stream[i:i + 1] for i in range(len(stream))])
        self.assertEqual(normalize(events), [
            (DATA, 3, b"abcd"), (WINDOW, 3, _u32(99)), (DATA, 4, b"xy")])
        self.assertEqual([e for e in events if e[0] == WINDOW], [(WINDOW, 3, _u32(99))])

    def test_dataStreamedBeforeFrameEnds(self):
        """A DATA frame's bytes are handed on as they arrive, not when the frame is whole."""
        recorder = Recorder()
        recorder.feed(frames.data_header(1, 10) + b"abc")
        self.assertEqual(recorder.events, [(DATA, 1, b"abc")])
        recorder.feed(b"defg")
        self.assertEqual(recorder.events[-1], (DATA, 1, b"defg"))

    def test_dataAtLimit(self):
        """A DATA frame of exactly max_data bytes is accepted."""
        recorder = Recorder(max_data=16)
        recorder.feed(frames.data_header(1, 16) + b"x" * 16)
        self.assertEqual(recorder.events, [(DATA, 1, b"x" * 16)])

    def test_controlAtLimit(self):
        """A control frame of exactly max_control bytes is accepted."""
        recorder = Recorder(max_control=HANDSHAKE_MAX_CONTROL)
        payload = b"p" * HANDSHAKE_MAX_CONTROL
        recorder.feed(frames.encode(PING, 0, payload))
        self.assertEqual(recorder.events, [(PING, 0, payload)])

    def test_stoppedStopsDelivering(self):
        """Once the owner sets C{stopped}, the rest of the chunk is not delivered."""
        recorder = Recorder()
        decoder = recorder.decoder

        def on_frame(ftype, channel_id, payload):
            recorder.on_frame(ftype, channel_id, payload)
            decoder.stopped = True

        decoder.on_frame = on_frame
        decoder.feed(frames.encode(GOAWAY, 0, b"bye") + frames.data_header(1, 3) + b"abc")
        self.assertEqual(recorder.events, [(GOAWAY, 0, b"bye")])

    def test_stoppedMidData(self):
        """A decoder stopped in the middle of a DATA frame delivers none of its rest."""
        recorder = Recorder()
        recorder.feed(frames.data_header(1, 10) + b"abc")
        recorder.decoder.stopped = True
        recorder.feed(b"defghij")
        self.assertEqual(recorder.events, [(DATA, 1, b"abc")])


def _u32(n):
    return struct.pack(">I", n)


class MalformedInputTests(SynchronousTestCase):
    """Malformed or over-limit input is refused with ProtocolError."""

    def assertRejected(self, data, *, match, **kwargs):
        error = self.assertRaises(ProtocolError, Recorder(**kwargs).feed, data)
        self.assertIn(match, str(error))

    def test_unknownType(self):
        """A frame type outside the protocol is refused, from the header alone."""
        for ftype in (0, 15, 255):
            self.assertRejected(struct.pack(">BII", ftype, 0, 0), match=f"unknown frame type {ftype}")

    def test_oversizedData(self):
        """A DATA header over max_data is refused before any payload arrives."""
        self.assertRejected(frames.data_header(1, MAX_DATA + 1), match="over the")
        self.assertRejected(frames.data_header(1, 17), match="17 bytes", max_data=16)

    def test_oversizedControl(self):
        """A control header over MAX_CONTROL is refused before any payload arrives."""
        self.assertRejected(struct.pack(">BII", WINDOW, 1, MAX_CONTROL + 1), match="WINDOW frame")
        self.assertRejected(struct.pack(">BII", PING, 0, 2**32 - 1), match="limit")

    def test_loweredControlLimit(self):
        """A control frame over a lowered limit is refused, and accepted once it is raised."""
        payload = b"t" * (HANDSHAKE_MAX_CONTROL + 1)
        frame = frames.encode(AUTH, 0, payload)
        self.assertRejected(frame, match=f"over the {HANDSHAKE_MAX_CONTROL}-byte limit",
                            max_control=HANDSHAKE_MAX_CONTROL)

        recorder = Recorder(max_control=HANDSHAKE_MAX_CONTROL)
        recorder.decoder.max_control = MAX_CONTROL
        self.assertEqual(recorder.feed(frame), [(AUTH, 0, payload)])

    def test_truncatedHello(self):
        """A HELLO payload of the wrong size is refused."""
        good = frames.hello(b"n" * 32)[frames.HEADER_SIZE:]
        self.assertRaises(ProtocolError, frames.parse_hello, good[:-1])
        self.assertRaises(ProtocolError, frames.parse_hello, good + b"x")
        self.assertRaises(ProtocolError, frames.parse_hello, b"")

    def test_truncatedAuth(self):
        """An AUTH payload shorter than magic, version, method and proof is refused."""
        good = frames.auth(frames.AUTH_SHARED_TOKEN, b"p" * 32, "")[frames.HEADER_SIZE:]
        self.assertEqual(len(good), 38)
        error = self.assertRaises(ProtocolError, frames.parse_auth, good[:-1])
        self.assertIn("too short", str(error))

    def test_truncatedOpen(self):
        """An OPEN payload shorter than window and port is refused."""
        self.assertRaises(ProtocolError, frames.parse_open, b"\0" * 6)

    def test_truncatedOpenFail(self):
        """An OPEN_FAIL payload without its code is refused."""
        self.assertRaises(ProtocolError, frames.parse_open_fail, b"")

    def test_wrongSizeU32(self):
        """WELCOME, OPEN_OK and WINDOW payloads must be exactly 4 bytes."""
        for payload in (b"", b"\0" * 3, b"\0" * 5):
            error = self.assertRaises(ProtocolError, frames.parse_u32, payload, "WINDOW")
            self.assertIn("WINDOW", str(error))

    def test_badUtf8Tag(self):
        """An AUTH tag that is not UTF-8 is refused."""
        payload = frames.auth(frames.AUTH_SHARED_TOKEN, b"p" * 32, "")[frames.HEADER_SIZE:]
        payload += b"\xff\xfe"
        error = self.assertRaises(ProtocolError, frames.parse_auth, payload)
        self.assertIn("UTF-8", str(error))

    def test_badUtf8Host(self):
        """An OPEN host that is not UTF-8 is refused."""
        payload = struct.pack(">IHB", 1024, 22, 2) + b"\xc3("
        error = self.assertRaises(ProtocolError, frames.parse_open, payload)
        self.assertIn("UTF-8", str(error))

    def test_badUtf8Reason(self):
        """Reasons are only shown to people: bad UTF-8 in one is replaced, not refused."""
        self.assertEqual(frames.parse_reason(b"bad \xff"), "bad \ufffd")
        self.assertEqual(frames.parse_open_fail(b"\x00no \xff"), (0, "no \ufffd"))

    @given(st.binary(max_size=200), st.integers(min_value=1, max_value=50))
    def test_garbageRaisesOnlyProtocolError(self, garbage, step):
        """Arbitrary bytes, cut anywhere, either decode or raise ProtocolError, nothing else."""
        recorder = Recorder()
        try:
            for i in range(0, len(garbage), step):
                recorder.feed(garbage[i:i + step])
        except ProtocolError:
            pass
