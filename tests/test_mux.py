"""
Tests for L{portmapper.protocol.mux}: channels over one link, their credit
windows, half-close, reset, backpressure from the link's own transport,
ping and keepalive.

A L{BareLink} is a L{Link} whose handshake is skipped: tests call
C{establish()} and drive it with hand-made frames, reading back what it
wrote to its L{StringTransport}.  Channel ends are real L{ChannelEnd}s on a
L{EndTransport} that also records half-closes; L{RecordingEnd} notes which
of the link's calls reached it.
"""

import struct

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portmapper.protocol import frames
from portmapper.protocol.frames import DATA, FIN, GOAWAY, PING, PONG, RESET, WINDOW
from portmapper.protocol.mux import (
    EARLY_DATA, MAX_CONTROL_BACKLOG, MAX_CREDIT_BATCH, TRAIN_GAP,
    WINDOW_GROWTH, ChannelEnd, Link,
)
from portmapper.transport.tune import (
    READ_SIZE, SEND_LIMIT, tune_transport,
)
from tests.linkhelp import pump, written as sent

WINDOW_SIZE = 1024
BATCH = WINDOW_SIZE // 4
PING_INTERVAL = 10.0
PING_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 5.0


class EndTransport(StringTransport):
    """A StringTransport that also records a half-close of its write side."""

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


class RecordingEnd(ChannelEnd):
    """A L{ChannelEnd} that records the link's calls to it."""

    def __init__(self):
        self.calls = []

    def peerFinished(self):
        self.calls.append("peerFinished")
        super().peerFinished()

    def peerReset(self, reason):
        self.calls.append(("peerReset", reason))
        super().peerReset(reason)

    def linkLost(self):
        self.calls.append("linkLost")
        super().linkLost()


class BareLink(Link):
    """A Link with no handshake of its own, recording channel opens."""

    def __init__(self, clock, window=WINDOW_SIZE, max_window=WINDOW_GROWTH ** 2 * WINDOW_SIZE):
        super().__init__(clock, window=window, ping_interval=PING_INTERVAL,
                         ping_timeout=PING_TIMEOUT, handshake_timeout=HANDSHAKE_TIMEOUT,
                         max_window=max_window)
        self.opened = []
        self.failed = []

    def handshakeFrameReceived(self, ftype, payload):
        raise frames.ProtocolError("no handshake here")

    def openRequested(self, channel_id, host, port, window):
        self.opened.append((channel_id, host, port, window))

    def openSucceeded(self, ch):
        self.opened.append(ch.id)

    def openFailed(self, ch, code, reason):
        self.failed.append((ch.id, code, reason))


def makeLink(clock=None, window=WINDOW_SIZE, established=True):
    """A connected L{BareLink} on a StringTransport, established unless told otherwise."""
    link = BareLink(clock if clock is not None else Clock(), window=window)
    link.makeConnection(StringTransport())
    if established:
        link.establish()
        link.transport.clear()  # the first PING, which measures the round trip
    return link


def addEnd(link, channel_id=1, send_credit=WINDOW_SIZE, reading=True):
    """A L{RecordingEnd} carried by C{link} on channel C{channel_id}."""
    end = RecordingEnd()
    end.makeConnection(EndTransport())
    link.addChannel(channel_id, end, send_credit=send_credit, reading=reading)
    return end





def dataSent(link, channel_id=1):
    """All DATA bytes C{link} wrote on C{channel_id} since the last call to L{sent}."""
    return b"".join(p for t, c, p in sent(link) if t == DATA and c == channel_id)


def receive(link, *frames_):
    """Feed C{link} the given (type, channel, payload) frames as one chunk."""
    link.dataReceived(b"".join(
        frames.data_header(c, len(p)) + p if t == DATA else frames.encode(t, c, p)
        for t, c, p in frames_))


def credit(n):
    return struct.pack(">I", n)


class SenderWindowTests(SynchronousTestCase):
    """A sender stops at its window and goes on when credit returns."""

    def setUp(self):
        self.link = makeLink()
        self.end = addEnd(self.link)

    def test_sendsUpToWindow(self):
        """Bytes within the credit go out at once, and the local side keeps reading."""
        self.end.dataReceived(b"a" * 600)
        self.assertEqual(sent(self.link), [(DATA, 1, b"a" * 600)])
        self.assertEqual(self.end.transport.producerState, "producing")

    def test_stopsAtWindow(self):
        """Exactly C{window} bytes are sent, then the local transport is paused."""
        self.end.dataReceived(b"a" * 600)
        self.end.dataReceived(b"b" * 600)
        self.assertEqual(dataSent(self.link), b"a" * 600 + b"b" * 424)
        self.assertEqual(self.end.transport.producerState, "paused")

    def test_exactWindowPauses(self):
        """Using the credit exactly pauses reading, without waiting for more data."""
        self.end.dataReceived(b"a" * WINDOW_SIZE)
        self.assertEqual(len(dataSent(self.link)), WINDOW_SIZE)
        self.assertEqual(self.end.transport.producerState, "paused")

    def test_resumesOnWindow(self):
        """A WINDOW frame sends the held bytes, and reading resumes once they are out."""
        self.end.dataReceived(b"a" * 600)
        self.end.dataReceived(b"b" * 600)
        sent(self.link)

        receive(self.link, (WINDOW, 1, credit(100)))
        self.assertEqual(dataSent(self.link), b"b" * 100)
        self.assertEqual(self.end.transport.producerState, "paused")

        receive(self.link, (WINDOW, 1, credit(500)))
        self.assertEqual(dataSent(self.link), b"b" * 76)
        self.assertEqual(self.end.transport.producerState, "producing")
        self.assertEqual(self.end.channel.send_credit, 424)

    def test_resumesWhenOutOfCredit(self):
        """A sender paused with nothing held resumes on any credit."""
        self.end.dataReceived(b"a" * WINDOW_SIZE)
        sent(self.link)
        receive(self.link, (WINDOW, 1, credit(1)))
        self.assertEqual(sent(self.link), [])
        self.assertEqual(self.end.transport.producerState, "producing")

    def test_earlyDataThenOpenOk(self):
        """An opened channel sends EARLY_DATA bytes before OPEN_OK, then the rest of the announced window."""
        link = makeLink(window=4 * EARLY_DATA)
        end = RecordingEnd()
        end.makeConnection(EndTransport())
        link.openChannel(2, end, "target", 80)
        [(ftype, channel_id, payload)] = sent(link)
        self.assertEqual((ftype, channel_id), (frames.OPEN, 2))
        self.assertEqual(frames.parse_open(payload), (4 * EARLY_DATA, "target", 80))
        end.dataReceived(b"x" * (EARLY_DATA + 400))
        self.assertEqual(dataSent(link, 2), b"x" * EARLY_DATA)
        self.assertEqual(end.transport.producerState, "paused")
        receive(link, (frames.OPEN_OK, 2, credit(EARLY_DATA + 300)))
        self.assertEqual(link.opened, [2])
        self.assertEqual(dataSent(link, 2), b"x" * 300)
        self.assertEqual(end.transport.producerState, "paused")
        receive(link, (WINDOW, 2, credit(500)))
        self.assertEqual(dataSent(link, 2), b"x" * 100)
        self.assertEqual(end.transport.producerState, "producing")

    def test_openOkUnderEarlyDataRefused(self):
        """An OPEN_OK announcing a window smaller than the early data allowance ends the link."""
        link = makeLink()
        end = RecordingEnd()
        end.makeConnection(EndTransport())
        link.openChannel(2, end, "target", 80)
        sent(link)
        receive(link, (frames.OPEN_OK, 2, credit(EARLY_DATA - 1)))
        [(ftype, _, reason)] = sent(link)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn(b"minimum", reason)

    def test_windowForUnknownChannel(self):
        """Credit for a channel that is gone is ignored."""
        receive(self.link, (WINDOW, 9, credit(100)))
        self.assertEqual(sent(self.link), [])
        self.assertFalse(self.link.transport.disconnecting)


class ReceiverCreditTests(SynchronousTestCase):
    """A receiver hands data to its local side and returns credit in batches."""

    def setUp(self):
        self.link = makeLink()
        self.end = addEnd(self.link)

    def test_deliversData(self):
        """DATA bytes are written to the channel's local transport."""
        receive(self.link, (DATA, 1, b"hello"), (DATA, 1, b" world"))
        self.assertEqual(self.end.transport.value(), b"hello world")

    def test_creditInBatches(self):
        """No credit goes back below a quarter window; at a quarter, all of it does."""
        receive(self.link, (DATA, 1, b"x" * (BATCH - 1)))
        self.assertEqual(sent(self.link), [])
        receive(self.link, (DATA, 1, b"x" * 10))
        self.assertEqual(sent(self.link), [(WINDOW, 1, credit(BATCH + 9))])

    def test_creditHeldWhileLocalPaused(self):
        """While the local transport pauses the channel, credit is held; resuming returns it."""
        producer = self.end.transport.producer
        self.assertIs(producer, self.end.channel)
        producer.pauseProducing()
        receive(self.link, (DATA, 1, b"x" * (BATCH * 3)))
        self.assertEqual(self.end.transport.value(), b"x" * (BATCH * 3))
        self.assertEqual(sent(self.link), [])

        producer.resumeProducing()
        self.assertEqual(sent(self.link), [(WINDOW, 1, credit(BATCH * 3))])

    def test_resumeWithSmallCreditReturnsIt(self):
        """Resuming returns even less than a batch, so a small remainder is never stuck."""
        receive(self.link, (DATA, 1, b"x" * 10))
        self.end.channel.pauseProducing()
        self.end.channel.resumeProducing()
        self.assertEqual(sent(self.link), [(WINDOW, 1, credit(10))])

    def test_fullWindowThenMoreAfterCredit(self):
        """A peer may send a whole window, and more once credit has gone back."""
        receive(self.link, (DATA, 1, b"x" * WINDOW_SIZE))
        self.assertEqual(sent(self.link), [(WINDOW, 1, credit(WINDOW_SIZE))])
        receive(self.link, (DATA, 1, b"y" * WINDOW_SIZE))
        self.assertFalse(self.link.transport.disconnecting)
        self.assertEqual(len(self.end.transport.value()), 2 * WINDOW_SIZE)

    def test_beyondWindowIsProtocolError(self):
        """Data beyond the credit given ends the link with a protocol error."""
        self.end.channel.pauseProducing()  # no credit goes back
        receive(self.link, (DATA, 1, b"x" * WINDOW_SIZE))
        self.assertFalse(self.link.transport.disconnecting)
        receive(self.link, (DATA, 1, b"y"))
        [(ftype, _, reason)] = sent(self.link)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn(b"beyond its window", reason)
        self.assertTrue(self.link.protocol_error)
        self.assertTrue(self.link.transport.disconnecting)
        self.assertEqual(self.end.transport.value(), b"x" * WINDOW_SIZE)

    def test_nothingDeliveredAfterFailMidFrame(self):
        """Once the link has failed, the rest of a DATA frame it was reading is not delivered."""
        self.link.dataReceived(frames.data_header(1, 100) + b"a" * 10)
        self.link.fail("going away")
        # A TLS transport goes on reading until the peer closes.
        self.link.dataReceived(b"b" * 90)
        self.assertEqual(self.end.transport.value(), b"a" * 10)

    def test_dataForUnknownChannelIgnored(self):
        """DATA for a channel this end closed is dropped without ending the link."""
        receive(self.link, (DATA, 7, b"late"))
        self.assertFalse(self.link.transport.disconnecting)
        self.assertEqual(sent(self.link), [])


class HalfCloseTests(SynchronousTestCase):
    """FIN carries a half-close; RESET and local loss close the channel."""

    def setUp(self):
        self.link = makeLink()
        self.end = addEnd(self.link)

    def test_finReachesLocalEnd(self):
        """A FIN from the peer shuts the local write side; the other direction goes on."""
        receive(self.link, (FIN, 1, b""))
        self.assertEqual(self.end.calls, ["peerFinished"])
        self.assertTrue(self.end.transport.write_closed)
        self.assertFalse(self.end.transport.disconnecting)
        self.end.dataReceived(b"reply")
        self.assertEqual(sent(self.link), [(DATA, 1, b"reply")])

    def test_duplicateFinIgnored(self):
        """A second FIN on a channel is not passed on again."""
        receive(self.link, (FIN, 1, b""), (FIN, 1, b""))
        self.assertEqual(self.end.calls, ["peerFinished"])

    def test_localEofSendsFin(self):
        """The local side's read EOF sends FIN, and data can still arrive for it."""
        self.end.readConnectionLost()
        self.assertEqual(sent(self.link), [(FIN, 1, b"")])
        receive(self.link, (DATA, 1, b"more"))
        self.assertEqual(self.end.transport.value(), b"more")

    def test_finWaitsForPendingData(self):
        """FIN follows the data still waiting for credit, never overtakes it."""
        self.end.dataReceived(b"a" * (WINDOW_SIZE + 50))
        self.end.readConnectionLost()
        self.assertEqual(sent(self.link), [(DATA, 1, b"a" * WINDOW_SIZE)])

        receive(self.link, (WINDOW, 1, credit(20)))
        self.assertEqual(sent(self.link), [(DATA, 1, b"a" * 20)])
        receive(self.link, (WINDOW, 1, credit(100)))
        self.assertEqual(sent(self.link), [(DATA, 1, b"a" * 30), (FIN, 1, b"")])

    def test_resetAbortsLocalEnd(self):
        """RESET aborts the local connection and forgets the channel."""
        receive(self.link, (RESET, 1, b"target closed"))
        self.assertEqual(self.end.calls, [("peerReset", "target closed")])
        self.assertTrue(self.end.transport.disconnected)
        self.assertNotIn(1, self.link.channels)

        receive(self.link, (DATA, 1, b"late"))
        self.assertEqual(self.end.transport.value(), b"")

    def test_noResetBackAfterReset(self):
        """The local connection closing after a RESET sends nothing back."""
        receive(self.link, (RESET, 1, b"gone"))
        self.end.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(sent(self.link), [])

    def test_closeAfterBothFinsSendsNoReset(self):
        """A channel closed after FIN both ways ends quietly: no RESET."""
        self.end.readConnectionLost()
        receive(self.link, (FIN, 1, b""))
        sent(self.link)
        self.end.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(sent(self.link), [])
        self.assertNotIn(1, self.link.channels)

    def test_closeBeforeFinsSendsReset(self):
        """A channel whose local connection is lost mid-stream is RESET, with the reason."""
        self.end.readConnectionLost()  # our FIN only: the peer may still send
        sent(self.link)
        self.end.connectionLost(Failure(ConnectionLost("it broke")))
        [(ftype, channel_id, reason)] = sent(self.link)
        self.assertEqual((ftype, channel_id), (RESET, 1))
        self.assertIn(b"it broke", reason)
        self.assertNotIn(1, self.link.channels)

    def test_resetChannel(self):
        """resetChannel closes both ends now: RESET to the peer, abort locally."""
        self.link.resetChannel(self.end.channel, "closed by admin")
        self.assertEqual(sent(self.link), [(RESET, 1, b"closed by admin")])
        self.assertTrue(self.end.transport.disconnected)
        self.assertNotIn(1, self.link.channels)


class OpenTests(SynchronousTestCase):
    """OPEN, OPEN_OK and OPEN_FAIL reach the subclass's hooks, checked first."""

    def test_openRequested(self):
        """An OPEN for a new channel reaches openRequested with its target and window."""
        link = makeLink()
        link.dataReceived(frames.open_channel(4, 5000, "192.168.10.15", 6666))
        self.assertEqual(link.opened, [(4, "192.168.10.15", 6666, 5000)])

    def test_openInUse(self):
        """An OPEN for a channel in use, or channel 0, is a protocol error."""
        for channel_id in (0, 1):
            link = makeLink()
            addEnd(link, channel_id=1)
            link.dataReceived(frames.open_channel(channel_id, 5000, "h", 1))
            self.assertEqual(link.opened, [])
            self.assertTrue(link.protocol_error)
            self.assertEqual(sent(link)[0][0], GOAWAY)

    def test_openNotAccepted(self):
        """An end that does not accept OPEN ends the link when it gets one."""
        link = Link(Clock())
        link.makeConnection(StringTransport())
        link.establish()
        link.transport.clear()
        link.dataReceived(frames.open_channel(3, 5000, "h", 1))
        [(ftype, _, reason)] = sent(link)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn(b"does not accept OPEN", reason)

    def test_openFail(self):
        """OPEN_FAIL forgets the channel and passes the code and reason on."""
        link = makeLink()
        addEnd(link, channel_id=2, send_credit=0, reading=False)
        link.dataReceived(frames.open_fail(2, frames.FAIL_DENIED, "not allowed"))
        self.assertEqual(link.failed, [(2, frames.FAIL_DENIED, "not allowed")])
        self.assertNotIn(2, link.channels)


class LinkBackpressureTests(SynchronousTestCase):
    """When the link's own write buffer fills, the channels writing to it stop reading."""

    def setUp(self):
        self.link = makeLink()
        self.writer = addEnd(self.link, channel_id=1)
        self.idle = addEnd(self.link, channel_id=2)

    def test_linkIsProducerOfItsTransport(self):
        """The link registers itself as its transport's streaming producer."""
        self.assertIs(self.link.transport.producer, self.link)
        self.assertTrue(self.link.transport.streaming)

    def test_pausesChannelsThatWrite(self):
        """A channel that writes while the link is paused stops reading; an idle one does not."""
        self.link.pauseProducing()
        self.writer.dataReceived(b"abc")
        self.assertEqual(sent(self.link), [(DATA, 1, b"abc")])
        self.assertEqual(self.writer.transport.producerState, "paused")
        self.assertEqual(self.idle.transport.producerState, "producing")

    def test_resumesOnDrain(self):
        """When the link's buffer drains, the channels it paused read again."""
        self.link.pauseProducing()
        self.writer.dataReceived(b"abc")
        self.link.resumeProducing()
        self.assertEqual(self.writer.transport.producerState, "producing")

    def test_drainDoesNotOverrideCredit(self):
        """A channel also out of credit stays paused when the link drains."""
        self.link.pauseProducing()
        self.writer.dataReceived(b"a" * 10)
        self.writer.dataReceived(b"b" * WINDOW_SIZE)  # beyond the credit
        self.link.resumeProducing()
        self.assertEqual(self.writer.transport.producerState, "paused")


class PingTests(SynchronousTestCase):
    """PING is answered; a silent link is pinged, then dropped."""

    def setUp(self):
        self.clock = Clock()
        self.link = makeLink(self.clock)

    def test_pingAnswered(self):
        """A PING is answered by a PONG with the same 8 bytes."""
        receive(self.link, (PING, 0, b"12345678"))
        self.assertEqual(sent(self.link), [(PONG, 0, b"12345678")])

    def test_silentLinkPinged(self):
        """A link that hears nothing for ping_interval sends a PING."""
        self.clock.advance(PING_INTERVAL - 0.1)
        self.assertEqual(sent(self.link), [])
        self.clock.advance(0.1)
        self.assertEqual([f[0] for f in sent(self.link)], [PING])

    def test_silentLinkDropped(self):
        """A link silent for ping_timeout is ended with a GOAWAY, then aborted."""
        self.clock.pump([PING_INTERVAL, PING_INTERVAL])
        self.assertEqual([f[0] for f in sent(self.link)], [PING, PING])
        self.assertFalse(self.link.transport.disconnecting)

        with capturedLogs() as events:
            self.clock.advance(PING_INTERVAL)
        [(ftype, _, reason)] = sent(self.link)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn(b"nothing heard for 30 seconds", reason)
        self.assertTrue(self.link.transport.disconnecting)
        self.assertIn("nothing heard", " ".join(formatEvent(e) for e in events))

        self.assertFalse(self.link.transport.disconnected)
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertTrue(self.link.transport.disconnected)

    def test_busyLinkKept(self):
        """A link that keeps hearing from its peer is not dropped; it only pings to time the round trip."""
        for _ in range(20):
            self.clock.advance(PING_INTERVAL / 2)
            receive(self.link, (PONG, 0, b"\0" * 8))
        self.assertEqual({ftype for ftype, _, _ in sent(self.link)}, {PING})
        self.assertFalse(self.link.transport.disconnecting)

    def test_pongCountsAsHeard(self):
        """Answering our PINGs keeps a link up however long it is otherwise idle."""
        for _ in range(10):
            self.clock.advance(PING_INTERVAL)
            pings = [f for f in sent(self.link) if f[0] == PING]
            if pings:
                receive(self.link, (PONG, 0, pings[0][2]))
        self.assertFalse(self.link.transport.disconnecting)


class NonReadingPeerTests(SynchronousTestCase):
    """A peer that keeps asking (PING) but never reads the answers is dropped, not buffered for."""

    def test_pingFloodWhileNotReading(self):
        """Past MAX_CONTROL_BACKLOG of answers queued behind a full buffer, the link ends."""
        link = makeLink()
        link.pauseProducing()  # our write buffer is full: the peer is not reading
        ping = frames.encode(PING, 0, b"\0" * 8)
        pings = MAX_CONTROL_BACKLOG // len(ping) + 2
        link.dataReceived(ping * pings)
        written = link.transport.value()
        self.assertLess(len(written), MAX_CONTROL_BACKLOG + 1024)
        self.assertTrue(link.transport.disconnecting)
        self.assertTrue(link.protocol_error)

    def test_answersFlowOnceItReads(self):
        """A full buffer that drains resets the count: a reading peer is never dropped."""
        link = makeLink()
        ping = frames.encode(PING, 0, b"\0" * 8)
        for _ in range(4):
            link.pauseProducing()
            link.dataReceived(ping * (MAX_CONTROL_BACKLOG // len(ping) // 2))
            link.resumeProducing()
        self.assertFalse(link.transport.disconnecting)


class LinkEndTests(SynchronousTestCase):
    """GOAWAY and connection loss end the link and every channel on it."""

    def test_goawayClosesLink(self):
        """GOAWAY closes the link, and nothing after it in the same chunk is acted on."""
        link = makeLink()
        end = addEnd(link)
        link.dataReceived(frames.reason_frame(GOAWAY, 0, "shutting down")
                          + frames.data_header(1, 4) + b"late"
                          + frames.open_channel(5, 100, "h", 1))
        self.assertTrue(link.transport.disconnecting)
        self.assertEqual(end.transport.value(), b"")
        self.assertEqual(link.opened, [])

    def test_connectionLostReachesEveryChannel(self):
        """Losing the link calls linkLost on every channel end and forgets them."""
        clock = Clock()
        link = makeLink(clock)
        ends = [addEnd(link, channel_id=i) for i in (1, 2, 3)]
        link.connectionLost(Failure(ConnectionLost()))
        for end in ends:
            self.assertEqual(end.calls, ["linkLost"])
            self.assertTrue(end.transport.disconnected)
            self.assertTrue(end.channel.closed)
        self.assertEqual(link.channels, {})
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_channelClosingAfterLinkLostIsQuiet(self):
        """A channel end closing after the link died writes nothing to the link."""
        link = makeLink()
        end = addEnd(link)
        link.connectionLost(Failure(ConnectionLost()))
        link.transport.clear()
        end.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(link.transport.value(), b"")

    def test_garbageEndsLinkWithReason(self):
        """Garbage on an established link ends it with a logged reason, no exception."""
        link = makeLink()
        with capturedLogs() as events:
            link.dataReceived(b"\xff" * 20)
        self.assertTrue(link.transport.disconnecting)
        [(ftype, _, reason)] = sent(link)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn(b"unknown frame type 255", reason)
        self.assertIn("unknown frame type 255", " ".join(formatEvent(e) for e in events))

    def test_failOnlyOnce(self):
        """A second failure on a closed link writes nothing more."""
        link = makeLink()
        link.fail("first")
        sent(link)
        link.fail("second")
        self.assertEqual(sent(link), [])

    def test_controlLimitRaisedOnEstablish(self):
        """Before the handshake control frames are held to 512 bytes; after it, to MAX_CONTROL."""
        reset = frames.reason_frame(RESET, 1, "r" * 1000)
        before = makeLink(established=False)
        before.dataReceived(reset)
        self.assertIn(b"over the 512-byte limit", sent(before)[0][2])

        after = makeLink(established=False)
        end = addEnd(after)
        after.establish()
        after.dataReceived(reset)
        self.assertEqual(end.calls, [("peerReset", "r" * 1000)])
        self.assertFalse(after.transport.disconnecting)

    def test_handshakeFramesAfterEstablishRefused(self):
        """A handshake frame on an established link is a protocol error."""
        link = makeLink()
        link.dataReceived(frames.hello(b"n" * 32))
        [(ftype, _, reason)] = sent(link)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn(b"HELLO frame after the handshake", reason)


class EndToEndTests(SynchronousTestCase):
    """Two links back to back carry a channel both ways with flow control."""

    def setUp(self):
        clock = Clock()
        self.left, self.right = makeLink(clock), makeLink(clock)
        self.a = addEnd(self.left)
        self.b = addEnd(self.right)

    def test_bytesBothWays(self):
        """Bytes read on one end are written on the other, both ways."""
        self.a.dataReceived(b"ping")
        self.b.dataReceived(b"pong")
        pump(self.left, self.right)
        self.assertEqual(self.b.transport.value(), b"ping")
        self.assertEqual(self.a.transport.value(), b"pong")

    def test_stalledReaderHoldsOneWindow(self):
        """A far side that stops writing receives one window; the near side stops reading."""
        self.b.channel.pauseProducing()  # b's socket buffer is full
        for _ in range(4):
            self.a.dataReceived(b"z" * (WINDOW_SIZE // 2))
            pump(self.left, self.right)
        self.assertEqual(len(self.b.transport.value()), WINDOW_SIZE)
        self.assertEqual(self.a.transport.producerState, "paused")

        self.b.channel.resumeProducing()
        pump(self.left, self.right)
        self.assertEqual(len(self.b.transport.value()), 2 * WINDOW_SIZE)
        self.assertEqual(self.a.transport.producerState, "producing")

    def test_halfCloseCarried(self):
        """One side's EOF reaches the other as a write shutdown; the reply still flows."""
        self.a.readConnectionLost()
        pump(self.left, self.right)
        self.assertTrue(self.b.transport.write_closed)
        self.b.dataReceived(b"answer")
        pump(self.left, self.right)
        self.assertEqual(self.a.transport.value(), b"answer")


class WindowTuningTests(SynchronousTestCase):
    """Windows grow to the link's bandwidth-delay product, up to a cap, and shrink when idle."""

    RTT = 0.01

    def setUp(self):
        self.clock = Clock()
        self.link = makeLink(self.clock)
        self.link.rtt = self.RTT
        self.end = addEnd(self.link)
        self.ch = self.link.channels[1]

    def credits(self):
        return [struct.unpack(">I", payload)[0] for ftype, _, payload in sent(self.link) if ftype == WINDOW]

    def test_roundTripMeasuredFromPong(self):
        """A PONG echoing our PING's timestamp sets the round-trip time."""
        link = makeLink(self.clock, established=False)
        link.establish()
        [(ftype, _, payload)] = sent(link)
        self.assertEqual(ftype, PING)
        self.clock.advance(0.05)
        receive(link, (PONG, 0, payload))
        self.assertAlmostEqual(link.rtt, 0.05)

    def test_fastWindowGrows(self):
        """A whole window taken in within two round trips grows the window, as extra credit."""
        receive(self.link, (DATA, 1, b"x" * WINDOW_SIZE))
        grown = WINDOW_GROWTH * WINDOW_SIZE
        self.assertEqual(sum(self.credits()), grown)
        self.assertEqual(self.ch.recv_window, grown)
        self.assertEqual(self.ch.recv_allowed, grown)

    def test_slowWindowStays(self):
        """A window taken in over more than two round trips is not what limits: it stays."""
        receive(self.link, (DATA, 1, b"x" * (WINDOW_SIZE // 2)))
        self.clock.advance(3 * self.RTT)
        receive(self.link, (DATA, 1, b"x" * (WINDOW_SIZE // 2)))
        self.assertEqual(sum(self.credits()), WINDOW_SIZE)
        self.assertEqual(self.ch.recv_window, WINDOW_SIZE)

    def test_noGrowthWithoutRoundTrip(self):
        """Before any round trip is measured, windows do not grow."""
        self.link.rtt = None
        receive(self.link, (DATA, 1, b"x" * WINDOW_SIZE))
        self.assertEqual(self.ch.recv_window, WINDOW_SIZE)

    def test_growthCapped(self):
        """Windows stop growing at max_window, and the peer may then send exactly that much."""
        for _ in range(6):
            receive(self.link, (DATA, 1, b"x" * self.ch.recv_allowed))
        cap = WINDOW_GROWTH ** 2 * WINDOW_SIZE
        self.assertEqual(self.ch.recv_window, cap)
        receive(self.link, (DATA, 1, b"x" * cap))
        self.assertFalse(self.link.transport.disconnecting)
        self.assertEqual(self.ch.recv_window, cap)

    def test_idleWindowShrinks(self):
        """A grown window idle for a keepalive interval shrinks back, withholding the difference."""
        receive(self.link, (DATA, 1, b"x" * WINDOW_SIZE))
        self.assertEqual(self.ch.recv_window, WINDOW_GROWTH * WINDOW_SIZE)
        self.credits()
        self.clock.advance(PING_INTERVAL)  # marks the channel
        self.clock.advance(PING_INTERVAL)  # nothing since: shrink
        self.assertEqual(self.ch.recv_window, WINDOW_SIZE)
        # The peer may still use the credit it holds, but none comes back
        # until the extra window is paid off: it is left with the initial window.
        extra = (WINDOW_GROWTH - 1) * WINDOW_SIZE
        receive(self.link, (DATA, 1, b"x" * extra))
        self.assertEqual(self.credits(), [])
        self.assertEqual(self.ch.recv_allowed, WINDOW_SIZE)
        self.assertFalse(self.link.transport.disconnecting)

    def test_largeWindowCreditInBoundedBatches(self):
        """A large window returns credit in batches of MAX_CREDIT_BATCH, not a quarter window."""
        clock = Clock()
        link = BareLink(clock, window=16 * MAX_CREDIT_BATCH, max_window=16 * MAX_CREDIT_BATCH)
        link.makeConnection(StringTransport())
        link.establish()
        link.transport.clear()
        addEnd(link)
        receive(link, (DATA, 1, b"x" * (MAX_CREDIT_BATCH - 1)))
        self.assertEqual(sent(link), [])
        receive(link, (DATA, 1, b"x"))
        self.assertEqual(sent(link), [(WINDOW, 1, credit(MAX_CREDIT_BATCH))])

    def test_busyWindowKept(self):
        """A grown window that keeps carrying data is not shrunk."""
        receive(self.link, (DATA, 1, b"x" * WINDOW_SIZE))
        for _ in range(3):
            self.clock.advance(PING_INTERVAL)
            receive(self.link, (DATA, 1, b"x" * (WINDOW_SIZE // 4)))
        self.assertEqual(self.ch.recv_window, WINDOW_GROWTH * WINDOW_SIZE)

    def test_grownWindowJudgedFromItsFirstData(self):
        """
        After growing, the next window is timed from a round trip later, when
        the new credit's data can first arrive: taken in 2.5 round trips after
        the growth, it still grows.
        """
        receive(self.link, (DATA, 1, b"x" * WINDOW_SIZE))
        self.clock.advance(2.5 * self.RTT)
        receive(self.link, (DATA, 1, b"x" * self.ch.recv_allowed))
        self.assertEqual(self.ch.recv_window, WINDOW_GROWTH ** 2 * WINDOW_SIZE)

    def test_wholeWindowCreditedAtOnce(self):
        """
        The end of a window sends its credit (and growth) even short of a
        batch: the peer may have no credit left to fill the batch with.
        """
        receive(self.link, (DATA, 1, b"x" * 300), (DATA, 1, b"x" * 300), (DATA, 1, b"x" * 300))
        self.assertEqual(self.credits(), [300, 300, 300])
        receive(self.link, (DATA, 1, b"x" * 124))
        self.assertEqual(self.credits(), [124 + (WINDOW_GROWTH - 1) * WINDOW_SIZE])
        self.assertEqual(self.ch.recv_window, WINDOW_GROWTH * WINDOW_SIZE)

    def smallWindowLink(self):
        """An established link with windows of four times the early data, and an RTT."""
        link = BareLink(self.clock, window=4 * EARLY_DATA, max_window=64 * EARLY_DATA)
        link.makeConnection(StringTransport())
        link.establish()
        link.rtt = self.RTT
        link.transport.clear()
        return link

    def newEnd(self):
        end = RecordingEnd()
        end.makeConnection(EndTransport())
        return end

    def test_fullEarlyDataGrowsWindowAtOnce(self):
        """
        An opener that sent all the early data it may was held back by its
        window already: the window grows as the channel is added.
        """
        link = self.smallWindowLink()
        ch = link.addChannel(1, self.newEnd(), early=[b"x" * (EARLY_DATA // 2)] * 2)
        grow = (WINDOW_GROWTH - 1) * 4 * EARLY_DATA
        self.assertEqual(sent(link), [(WINDOW, 1, credit(grow))])
        self.assertEqual(ch.recv_window, WINDOW_GROWTH * 4 * EARLY_DATA)
        self.assertEqual(ch.recv_allowed, ch.recv_window - EARLY_DATA)

    def test_partialEarlyDataKeepsWindow(self):
        """Early data short of the allowance says nothing of the window: it stays."""
        link = self.smallWindowLink()
        ch = link.addChannel(1, self.newEnd(), early=[b"x" * (EARLY_DATA - 1)])
        self.assertEqual(sent(link), [])
        self.assertEqual(ch.recv_window, 4 * EARLY_DATA)


class BandwidthTests(SynchronousTestCase):
    """The link times trains of DATA, and a window too small jumps to twice the BDP they give."""

    RTT = 0.1
    WINDOW = 512 * 1024
    CHUNK = 64 * 1024
    STEP = 0.0001  # between chunks of a train: 655 MB/s

    def setUp(self):
        self.clock = Clock()
        self.link = BareLink(self.clock, window=self.WINDOW, max_window=1 << 30)
        self.link.makeConnection(StringTransport())
        self.link.establish()
        self.link.rtt = self.RTT
        self.link.transport.clear()
        self.end = addEnd(self.link)
        self.ch = self.link.channels[1]

    def feed(self, chunks, step):
        for _ in range(chunks):
            receive(self.link, (DATA, 1, b"x" * self.CHUNK))
            self.clock.advance(step)

    def test_windowJumpsToTwiceTheBandwidthDelayProduct(self):
        """A window sent in one go is timed as it arrives; its growth is 2 x rate x RTT."""
        self.feed(self.WINDOW // self.CHUNK, self.STEP)
        # The first chunk arrived before the train's clock started.
        rate = (self.WINDOW - self.CHUNK) / ((self.WINDOW // self.CHUNK - 1) * self.STEP)
        self.assertAlmostEqual(self.link.bandwidth(), rate, delta=rate * 1e-6)
        self.assertEqual(self.ch.recv_window, int(2 * self.link.bandwidth() * self.RTT))
        self.assertGreater(self.ch.recv_window, WINDOW_GROWTH * self.WINDOW)

    def test_jumpCapped(self):
        """The jump stops at max_window."""
        self.link.max_window = 8 * 1024 * 1024
        self.feed(self.WINDOW // self.CHUNK, self.STEP)
        self.assertEqual(self.ch.recv_window, 8 * 1024 * 1024)

    def test_gapsBreakTrains(self):
        """Chunks further apart than TRAIN_GAP round trips make no train: growth is x4."""
        self.feed(self.WINDOW // self.CHUNK, TRAIN_GAP * self.RTT * 1.5)
        self.assertEqual(self.link.bandwidth(), 0)
        self.assertEqual(self.ch.recv_window, WINDOW_GROWTH * self.WINDOW)

    def test_measurementFades(self):
        """A measurement halves with each keepalive interval that measures nothing faster."""
        self.feed(self.WINDOW // self.CHUNK, self.STEP)
        measured = self.link.bandwidth()
        self.clock.advance(PING_INTERVAL)
        self.assertEqual(self.link.bandwidth(), measured)
        self.clock.advance(PING_INTERVAL)
        self.assertEqual(self.link.bandwidth(), measured / 2)


class TuneTransportTests(SynchronousTestCase):
    def test_tcpTransportTuned(self):
        """A TCP transport gets Nagle off, large reads, and large sends per write event."""
        class Tuned(tcp.Connection):
            def __init__(self):  # no socket: only the attributes matter here
                self.nodelay = None

            def setTcpNoDelay(self, enabled):
                self.nodelay = enabled

        transport = Tuned()
        tune_transport(transport)
        self.assertEqual((transport.nodelay, transport.bufferSize, transport.SEND_LIMIT),
                         (True, READ_SIZE, SEND_LIMIT))
        self.assertGreater(SEND_LIMIT, tcp.Connection.SEND_LIMIT)

    def test_otherTransportsLeftAlone(self):
        """A transport without those knobs (StringTransport) is not harmed."""
        transport = StringTransport()
        tune_transport(transport)
        self.assertFalse(hasattr(transport, "SEND_LIMIT"))

