"""
Tests for L{portmapper.transport.link}: L{LinkProtocol}, the Twisted adapter
of the sans-IO link core, and L{ChannelEnd}, a channel's local socket.

A link is a real L{LinkProtocol} over a real L{Connection} on a
L{LinkTransport} (a L{StringTransport} that records how it is closed), with
a L{task.Clock}.  The peer is played by hand-made frames.  The link's owner
is a L{RecordingOwner} and its channel ends are L{RecordingEnd}s (both
checked with C{verifyObject}), writing what the link asks of them into one
list, so that the order of the calls across them shows; the last tests
carry a real L{ChannelEnd} on an L{EndTransport}.
"""

import struct

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from portmapper.protocol import auth, frames
from portmapper.protocol.connection import (
    CLIENT, MAX_CONTROL_BACKLOG, SERVER, Connection, LinkUnavailable,
)
from portmapper.protocol.frames import (
    AUTH_SHARED_TOKEN, DATA, FIN, GOAWAY, GOAWAY_CLOSING, GOAWAY_DRAINING, OPEN, OPEN_FAIL,
    OPEN_OK, PING, PONG, RESET, WINDOW,
)
from portmapper.protocol.windows import EARLY_DATA
from portmapper.transport.link import ChannelEnd, IChannelEnd, ILinkOwner, LinkProtocol
from tests.linkhelp import written
from tests.linkpair import EndTransport

TOKEN = "s3cret"
TAG = "tag10"
NONCE = b"n" * 32
WINDOW_SIZE = EARLY_DATA  # the smallest window a link may announce
BATCH = WINDOW_SIZE // 4  # credit goes back in batches of a quarter window
PING_INTERVAL = 10.0
PING_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 5.0
CLOSE_GRACE = 2.0
PEER = IPv4Address("TCP", "203.0.113.9", 40000)
CLEAN = Failure(ConnectionDone()).getErrorMessage()  # the reason of a connection closed cleanly
PING_FRAME = frames.encode(PING, 0, b"12345678")
PINGS_OVER_BACKLOG = MAX_CONTROL_BACKLOG // len(PING_FRAME) + 1  # their PONGs overflow it


class LinkTransport(StringTransport):
    """A link's transport that records, in order, the writes and the calls that close it."""

    def __init__(self):
        super().__init__(peerAddress=PEER)
        self.calls = []

    def write(self, data):
        self.calls.append("write")
        super().write(data)

    def writeSequence(self, data):
        self.calls.append("write")
        StringTransport.write(self, b"".join(data))

    def unregisterProducer(self):
        self.calls.append("unregisterProducer")
        super().unregisterProducer()

    def loseConnection(self):
        self.calls.append("loseConnection")
        super().loseConnection()

    def abortConnection(self):
        self.calls.append("abortConnection")
        self.disconnected = True


@implementer(ILinkOwner)
class RecordingOwner:
    """An L{ILinkOwner} that records what the link tells it; it admits every client."""

    def __init__(self, calls, client_id=1):
        self.calls = calls
        self.client_id = client_id

    def authenticate(self, link, method, proof, tag, nonce):
        self.calls.append(("owner", "authenticate", link, method, tag))
        link.accept(self.client_id)

    def welcomed(self, link, client_id):
        self.calls.append(("owner", "welcomed", link, client_id))

    def openRequested(self, link, channel_id, host, port, preamble):
        self.calls.append(("owner", "openRequested", link, channel_id, host, port, preamble))

    def openCancelled(self, link, channel_id):
        self.calls.append(("owner", "openCancelled", link, channel_id))

    def draining(self, link, reason):
        self.calls.append(("owner", "draining", link, reason))

    def linkClosing(self, link, reason, protocol_error):
        self.calls.append(("owner", "linkClosing", link, reason, protocol_error))

    def linkLost(self, link, reason, protocol_error):
        self.calls.append(("owner", "linkLost", link, reason, protocol_error))


@implementer(IChannelEnd)
class RecordingEnd:
    """An L{IChannelEnd} that records, under its name, what the link asks of it."""

    link = None
    channel_id = None

    def __init__(self, calls, name):
        self.calls = calls
        self.name = name

    def _record(self, *call):
        self.calls.append((self.name,) + call)

    def channelAdded(self):
        self._record("channelAdded", self.link, self.channel_id)

    def deliver(self, data):
        self._record("deliver", data)

    def opened(self):
        self._record("opened")

    def openFailed(self, code, reason):
        self._record("openFailed", code, reason)

    def peerEnded(self):
        self._record("peerEnded")

    def peerReset(self, reason):
        self._record("peerReset", reason)

    def linkLost(self):
        self._record("linkLost")

    def pauseReading(self):
        self._record("pauseReading")

    def resumeReading(self):
        self._record("resumeReading")


class FaultyEnd(RecordingEnd):
    """A channel end with a bug: delivering to it raises."""

    def deliver(self, data):
        raise ZeroDivisionError("a bug")


class EchoEnd(RecordingEnd):
    """A channel end that answers what it is given from inside C{deliver}."""

    def deliver(self, data):
        super().deliver(data)
        self.link.channelData(self.channel_id, data.upper())


def makeLink(role, clock, calls, **kwargs):
    """A LinkProtocol of ``role`` on a LinkTransport, connected, its greeting read back."""
    conn = Connection(role, clock.seconds(), window=WINDOW_SIZE, ping_interval=PING_INTERVAL,
                      ping_timeout=PING_TIMEOUT, handshake_timeout=HANDSHAKE_TIMEOUT,
                      token=TOKEN, tag=TAG, nonce=NONCE)
    link = LinkProtocol(conn, RecordingOwner(calls, **kwargs), clock, close_grace=CLOSE_GRACE)
    link.makeConnection(LinkTransport())
    written(link)
    return link


def serverLink(clock, calls, establish=True):
    """A server link; ``establish``: a client has authenticated and been admitted."""
    link = makeLink(SERVER, clock, calls)
    if establish:
        link.dataReceived(frames.auth(AUTH_SHARED_TOKEN, auth.proof(TOKEN, NONCE, TAG), TAG))
        written(link)
        del calls[:]
    return link


def clientLink(clock, calls):
    """A client link that the server has welcomed."""
    link = makeLink(CLIENT, clock, calls)
    link.dataReceived(frames.hello(NONCE) + frames.welcome(9))
    written(link)
    del calls[:]
    return link


def openChannel(link, end, window=WINDOW_SIZE):
    """Open a channel for ``end`` on server ``link``; the peer answers OPEN_OK. Its id."""
    channel_id = link.openChannel(end, "10.1.2.3", 22)
    link.dataReceived(frames.open_ok(channel_id, window))
    written(link)
    return channel_id


def loseLink(link, failure=None):
    link.connectionLost(failure or Failure(ConnectionDone()))


def goaway(reason, code=GOAWAY_CLOSING):
    return (GOAWAY, 0, frames.goaway(code, reason)[frames.HEADER_SIZE:])


class LinkTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.calls = []

    def callsOf(self, name):
        return [call[1:] for call in self.calls if call[0] == name]

    def assertOwnerToldClosingThenLost(self, link, reason, protocol_error):
        """The owner heard the link was closing, then that it was gone, for ``reason``."""
        self.assertEqual(self.callsOf("owner"), [("linkClosing", link, reason, protocol_error),
                                                 ("linkLost", link, reason, protocol_error)])


class DoubleTests(LinkTestCase):
    """The doubles, and the real channel end, provide the interfaces the link uses."""

    def test_doubles(self):
        """RecordingOwner provides ILinkOwner; RecordingEnd and ChannelEnd provide IChannelEnd."""
        self.assertTrue(verifyObject(ILinkOwner, RecordingOwner(self.calls)))
        self.assertTrue(verifyObject(IChannelEnd, RecordingEnd(self.calls, "end")))
        self.assertTrue(verifyObject(IChannelEnd, ChannelEnd()))

    def test_doublesHaveNothingMore(self):
        """The doubles have no method beyond their interfaces, so the link needs no more."""
        def methods(cls):
            return {name for name, value in vars(cls).items()
                    if callable(value) and not name.startswith("_")}
        self.assertEqual(methods(RecordingOwner), set(ILinkOwner.names()))
        self.assertEqual(methods(RecordingEnd), set(IChannelEnd.names()) - {"link", "channel_id"})


class ProducerTests(LinkTestCase):
    """The link is its transport's streaming producer: a full write buffer pauses the writers."""

    def test_registersAsProducer(self):
        """A link registers itself as its transport's streaming producer once connected."""
        link = serverLink(self.clock, self.calls, establish=False)
        self.assertIs(link.transport.producer, link)
        self.assertTrue(link.transport.streaming)

    def test_fullLinkPausesWriters(self):
        """While the link's buffer is full, the ends that write to it are paused, then resumed."""
        link = serverLink(self.clock, self.calls)
        writer, idle = RecordingEnd(self.calls, "writer"), RecordingEnd(self.calls, "idle")
        wid, _ = openChannel(link, writer), openChannel(link, idle)
        del self.calls[:]
        link.pauseProducing()
        link.channelData(wid, b"abc")
        self.assertEqual(written(link), [(DATA, wid, b"abc")])  # it goes to the buffer all the same
        self.assertEqual(self.calls, [("writer", "pauseReading")])
        link.resumeProducing()
        self.assertEqual(self.calls, [("writer", "pauseReading"), ("writer", "resumeReading")])

    def test_stoppedLinkPausesWriters(self):
        """A link whose transport stops producing counts as full."""
        link = serverLink(self.clock, self.calls)
        end = RecordingEnd(self.calls, "end")
        channel_id = openChannel(link, end)
        link.stopProducing()
        link.channelData(channel_id, b"abc")
        self.assertEqual(self.callsOf("end")[-1], ("pauseReading",))

    def test_unreadControlAborts(self):
        """A peer that asks for more control frames than a full link holds is aborted at once."""
        link = serverLink(self.clock, self.calls)
        link.pauseProducing()
        link.dataReceived(PING_FRAME * PINGS_OVER_BACKLOG)
        self.assertEqual(link.transport.calls[-1], "abortConnection")
        self.assertNotIn("loseConnection", link.transport.calls)
        self.assertEqual({f[0] for f in written(link)}, {PONG})  # no GOAWAY queued behind them
        loseLink(link, Failure(ConnectionLost()))
        self.assertOwnerToldClosingThenLost(link, "it does not read what it asks for", True)

    def test_drainedLinkStartsAfresh(self):
        """Control frames written before the link's buffer drained do not count after it."""
        link = serverLink(self.clock, self.calls)
        half = PINGS_OVER_BACKLOG // 2 + 1
        link.pauseProducing()
        link.dataReceived(PING_FRAME * half)
        link.resumeProducing()
        link.pauseProducing()
        link.dataReceived(PING_FRAME * half)
        self.assertNotIn("abortConnection", link.transport.calls)
        self.assertEqual(len(written(link)), 2 * half)


class TimerTests(LinkTestCase):
    """One timer follows the core's next deadline: handshake timeout, keepalive, silence."""

    def assertOneTimerAtDeadline(self, link):
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), link.connection.next_deadline())

    def test_oneTimer(self):
        """The link keeps exactly one timer, at the core's next deadline."""
        link = serverLink(self.clock, self.calls, establish=False)
        self.assertOneTimerAtDeadline(link)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), HANDSHAKE_TIMEOUT)
        link.dataReceived(frames.auth(AUTH_SHARED_TOKEN, auth.proof(TOKEN, NONCE, TAG), TAG))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertOneTimerAtDeadline(link)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), PING_INTERVAL)
        self.clock.advance(PING_INTERVAL - HANDSHAKE_TIMEOUT)
        self.assertOneTimerAtDeadline(link)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 2 * PING_INTERVAL)

    def test_handshakeTimeout(self):
        """A handshake not done by the deadline ends the link, and the owner is told why."""
        link = serverLink(self.clock, self.calls, establish=False)
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertEqual(written(link), [])
        self.assertFalse(link.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertEqual(written(link), [goaway("the handshake did not finish in time")])
        self.assertTrue(link.transport.disconnecting)
        self.assertEqual(self.callsOf("owner"),
                         [("linkClosing", link, "the handshake did not finish in time", False)])
        loseLink(link)
        self.assertOwnerToldClosingThenLost(link, "the handshake did not finish in time", False)

    def test_keepalivePings(self):
        """An established link pings every interval, stamped with the time, and stays up."""
        link = serverLink(self.clock, self.calls)
        for _ in range(4):
            self.clock.advance(PING_INTERVAL)
            stamp = struct.pack(">d", self.clock.seconds())
            self.assertEqual(written(link), [(PING, 0, stamp)])
            link.dataReceived(frames.encode(PONG, 0, stamp))
        self.assertFalse(link.transport.disconnecting)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_silentLinkDropped(self):
        """A link that hears nothing for the ping timeout is closed, and the owner is told."""
        link = serverLink(self.clock, self.calls)
        deadline = PING_INTERVAL + PING_TIMEOUT  # heard up to the first tick, silent after
        while self.clock.seconds() + PING_INTERVAL < deadline:
            self.clock.advance(PING_INTERVAL)
            self.assertEqual([f[0] for f in written(link)], [PING])
            self.assertFalse(link.transport.disconnecting)
        self.clock.advance(PING_INTERVAL)
        self.assertEqual(written(link), [goaway("nothing heard for 30 seconds")])
        self.assertTrue(link.transport.disconnecting)
        loseLink(link, Failure(ConnectionLost()))
        self.assertOwnerToldClosingThenLost(link, "nothing heard for 30 seconds", False)

    def test_lossCancelsTimers(self):
        """Once the link is lost no timer of it is left, the close's abort included."""
        link = serverLink(self.clock, self.calls)
        link.close("bye")
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        loseLink(link)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CloseTests(LinkTestCase):
    """Closing writes the GOAWAY, lets go of the transport, and aborts a link that stays."""

    def test_closeOrder(self):
        """Close writes the GOAWAY, then unregisters the producer, then loses the connection."""
        link = serverLink(self.clock, self.calls)
        link.transport.calls.clear()
        link.close("bye")
        self.assertEqual(link.transport.calls, ["write", "unregisterProducer", "loseConnection"])
        self.assertEqual(written(link), [goaway("bye")])
        self.assertIsNone(link.transport.producer)

    def test_abortAfterGrace(self):
        """A link that does not close within close_grace is aborted."""
        link = serverLink(self.clock, self.calls)
        link.close("bye")
        self.clock.advance(CLOSE_GRACE - 0.1)
        self.assertNotIn("abortConnection", link.transport.calls)
        self.clock.advance(0.1)
        self.assertEqual(link.transport.calls[-1], "abortConnection")

    def test_noAbortOnceClosed(self):
        """A link that closes within close_grace is not aborted."""
        link = serverLink(self.clock, self.calls)
        link.close("bye")
        loseLink(link)
        self.clock.advance(CLOSE_GRACE)
        self.assertNotIn("abortConnection", link.transport.calls)

    def test_fail(self):
        """Failing the link tells the peer why, logs it, and the owner gets that reason."""
        link = serverLink(self.clock, self.calls)
        with capturedLogs() as events:
            link.fail("the sky fell")
        self.assertEqual(written(link), [goaway("the sky fell")])
        self.assertIn("203.0.113.9:40000", " ".join(formatEvent(e) for e in events))
        loseLink(link)
        self.assertOwnerToldClosingThenLost(link, "the sky fell", False)

    def test_peerCloses(self):
        """A closing GOAWAY from the peer closes the link with no answer; the owner gets its reason."""
        link = serverLink(self.clock, self.calls)
        link.dataReceived(frames.goaway(GOAWAY_CLOSING, "bye"))
        self.assertEqual(written(link), [])
        self.assertTrue(link.transport.disconnecting)
        loseLink(link)
        self.assertOwnerToldClosingThenLost(link, "closed by the peer: bye", False)

    def test_peerDrains(self):
        """A draining GOAWAY from the peer is passed to the owner; the link stays up."""
        link = serverLink(self.clock, self.calls)
        link.dataReceived(frames.goaway(GOAWAY_DRAINING, "stopping"))
        self.assertEqual(self.callsOf("owner"), [("draining", link, "stopping")])
        self.assertFalse(link.transport.disconnecting)

    def test_refused(self):
        """A client the server refuses closes, logs the reason and gives it to the owner."""
        link = makeLink(CLIENT, self.clock, self.calls)
        with capturedLogs() as events:
            link.dataReceived(frames.hello(NONCE)
                              + frames.reason_frame(frames.REFUSE, 0, "client refused: wrong token"))
        self.assertIn("wrong token", " ".join(formatEvent(e) for e in events))
        self.assertTrue(link.transport.disconnecting)
        loseLink(link)
        self.assertOwnerToldClosingThenLost(link, "refused: client refused: wrong token", False)

    def test_lostWithoutClose(self):
        """A link lost with no close of its own gives the owner the transport's reason."""
        link = serverLink(self.clock, self.calls)
        failure = Failure(ConnectionLost("reset by peer"))
        loseLink(link, failure)
        self.assertEqual(self.callsOf("owner"),
                         [("linkLost", link, failure.getErrorMessage(), False)])


class DrainTests(LinkTestCase):
    """A draining link takes no new channel and closes once its last one is gone, however it went."""

    def drainingLink(self, opened=True):
        """A server link with one channel (``opened`` or not), told to drain: (link, channel id)."""
        link = serverLink(self.clock, self.calls)
        end = RecordingEnd(self.calls, "end")
        channel_id = openChannel(link, end) if opened else link.openChannel(end, "10.1.2.3", 22)
        written(link)
        link.goAway("stopping")
        self.assertEqual(written(link), [goaway("stopping", GOAWAY_DRAINING)])
        self.assertRaises(LinkUnavailable, link.openChannel, RecordingEnd(self.calls, "late"),
                          "10.1.2.3", 22)
        self.assertFalse(link.transport.disconnecting)
        return link, channel_id

    def assertDrained(self, link):
        self.assertEqual(written(link)[-1:], [goaway("drained")])
        self.assertTrue(link.transport.disconnecting)

    def test_drainedByOwnReset(self):
        """The last channel reset here closes the draining link."""
        link, channel_id = self.drainingLink()
        link.resetChannel(channel_id, "timeout")
        self.assertDrained(link)

    def test_drainedByCleanEnd(self):
        """The last channel ending cleanly both ways closes the draining link."""
        link, channel_id = self.drainingLink()
        link.channelEOF(channel_id)
        link.dataReceived(frames.encode(FIN, channel_id))
        link.channelClosed(channel_id, Failure(ConnectionDone()))
        self.assertDrained(link)

    def test_drainedByPeerReset(self):
        """The last channel reset by the peer closes the draining link."""
        link, channel_id = self.drainingLink()
        link.dataReceived(frames.reason_frame(RESET, channel_id, "target gone"))
        self.assertDrained(link)

    def test_drainedByOpenFail(self):
        """The last channel failing to open closes the draining link."""
        link, channel_id = self.drainingLink(opened=False)
        link.dataReceived(frames.open_fail(channel_id, frames.FAIL_REFUSED, "no"))
        self.assertDrained(link)

    def test_drainedByRefusal(self):
        """A draining client refusing its last channel closes the link."""
        link = clientLink(self.clock, self.calls)
        link.dataReceived(frames.open_channel(3, WINDOW_SIZE, "10.1.2.3", 22))
        link.goAway("stopping")
        written(link)
        link.refuseChannel(3, frames.FAIL_REFUSED, "no")
        self.assertDrained(link)


class LossTests(LinkTestCase):
    """A lost link tells its owner first, then every channel end."""

    def test_ownerFirstThenEnds(self):
        """connectionLost tells the owner, then each channel end, and forgets the ends."""
        link = serverLink(self.clock, self.calls)
        openChannel(link, RecordingEnd(self.calls, "one"))
        openChannel(link, RecordingEnd(self.calls, "two"))
        del self.calls[:]
        loseLink(link)
        self.assertEqual(self.calls, [("owner", "linkLost", link, CLEAN, False),
                                      ("one", "linkLost"), ("two", "linkLost")])
        self.assertEqual(link.ends, {})

    def test_connectingChannelsCancelled(self):
        """A client's lost link cancels, through the owner, the channels still connecting."""
        link = clientLink(self.clock, self.calls)
        link.dataReceived(frames.open_channel(3, WINDOW_SIZE, "10.1.2.3", 22)
                          + frames.open_channel(5, WINDOW_SIZE, "10.1.2.3", 23))
        link.acceptChannel(5, RecordingEnd(self.calls, "five"))
        del self.calls[:]
        loseLink(link)
        self.assertEqual(self.calls, [("owner", "linkLost", link, CLEAN, False),
                                      ("owner", "openCancelled", link, 3), ("five", "linkLost")])


class ChannelEventTests(LinkTestCase):
    """The core's channel events reach the right channel end."""

    def test_openChannel(self):
        """Opening a channel sends OPEN and adds the end, which learns its link and id."""
        link = serverLink(self.clock, self.calls)
        end = RecordingEnd(self.calls, "end")
        channel_id = link.openChannel(end, "10.1.2.3", 22)
        [(ftype, got_id, payload)] = written(link)
        self.assertEqual((ftype, got_id, frames.parse_open(payload)),
                         (OPEN, channel_id, (WINDOW_SIZE, "10.1.2.3", 22, b"")))
        self.assertEqual(self.calls, [("end", "channelAdded", link, channel_id)])
        self.assertIs(link.ends[channel_id], end)

    def test_openChannelBeforeWelcome(self):
        """No channel opens on a link not yet established; no end is added."""
        link = serverLink(self.clock, self.calls, establish=False)
        self.assertRaises(LinkUnavailable, link.openChannel, RecordingEnd(self.calls, "end"),
                          "10.1.2.3", 22)
        self.assertEqual((link.ends, self.calls), ({}, []))

    def test_opened(self):
        """OPEN_OK tells the end that the channel opened."""
        link = serverLink(self.clock, self.calls)
        openChannel(link, RecordingEnd(self.calls, "end"))
        self.assertEqual(self.callsOf("end")[1:], [("opened",)])

    def test_openFailed(self):
        """OPEN_FAIL tells the end, with code and reason, and forgets it."""
        link = serverLink(self.clock, self.calls)
        channel_id = link.openChannel(RecordingEnd(self.calls, "end"), "10.1.2.3", 22)
        link.dataReceived(frames.open_fail(channel_id, frames.FAIL_TIMEOUT, "slow"))
        self.assertEqual(self.callsOf("end")[1:], [("openFailed", frames.FAIL_TIMEOUT, "slow")])
        self.assertEqual(link.ends, {})

    def test_deliverAndEnd(self):
        """DATA is delivered to the end, and FIN tells it the peer ended."""
        link = serverLink(self.clock, self.calls)
        channel_id = openChannel(link, RecordingEnd(self.calls, "end"))
        link.dataReceived(frames.data_header(channel_id, 3) + b"abc" + frames.encode(FIN, channel_id))
        self.assertEqual(self.callsOf("end")[2:], [("deliver", b"abc"), ("peerEnded",)])

    def test_peerReset(self):
        """RESET tells the end with the reason and forgets it; its later close sends nothing."""
        link = serverLink(self.clock, self.calls)
        end = RecordingEnd(self.calls, "end")
        channel_id = openChannel(link, end)
        link.dataReceived(frames.reason_frame(RESET, channel_id, "target gone"))
        self.assertEqual(self.callsOf("end")[2:], [("peerReset", "target gone")])
        self.assertEqual(link.ends, {})
        link.channelClosed(channel_id, Failure(ConnectionLost()))
        self.assertEqual(written(link), [])

    def test_resetChannel(self):
        """The owner resetting a channel sends RESET and tells the end."""
        link = serverLink(self.clock, self.calls)
        channel_id = openChannel(link, RecordingEnd(self.calls, "end"))
        link.resetChannel(channel_id, "timeout")
        self.assertEqual(written(link), [(RESET, channel_id, b"timeout")])
        self.assertEqual(self.callsOf("end")[2:], [("peerReset", "timeout")])
        self.assertEqual(link.ends, {})

    def test_openRequested(self):
        """A client's OPEN asks the owner to connect to the host and port named."""
        link = clientLink(self.clock, self.calls)
        link.dataReceived(frames.open_channel(3, WINDOW_SIZE, "10.1.2.3", 22))
        self.assertEqual(self.calls, [("owner", "openRequested", link, 3, "10.1.2.3", 22, b"")])

    def test_acceptAndRefuse(self):
        """The client accepts a channel with OPEN_OK and refuses one with OPEN_FAIL."""
        link = clientLink(self.clock, self.calls)
        link.dataReceived(frames.open_channel(3, WINDOW_SIZE, "10.1.2.3", 22)
                          + frames.open_channel(5, WINDOW_SIZE, "10.1.2.3", 23))
        link.acceptChannel(3, RecordingEnd(self.calls, "three"))
        link.refuseChannel(5, frames.FAIL_REFUSED, "10.1.2.3:23: refused")
        self.assertEqual(written(link), [
            (OPEN_OK, 3, struct.pack(">I", WINDOW_SIZE)),
            (OPEN_FAIL, 5, frames.open_fail(5, frames.FAIL_REFUSED, "10.1.2.3:23: refused")[frames.HEADER_SIZE:]),
        ])
        self.assertEqual(list(link.ends), [3])

    def test_resetWhileConnecting(self):
        """A RESET while the client connects cancels the open; an accept after it resets the end."""
        link = clientLink(self.clock, self.calls)
        link.dataReceived(frames.open_channel(3, WINDOW_SIZE, "10.1.2.3", 22)
                          + frames.reason_frame(RESET, 3, "user gone"))
        self.assertEqual(self.callsOf("owner")[1:], [("openCancelled", link, 3)])
        link.acceptChannel(3, RecordingEnd(self.calls, "late"))
        self.assertEqual(self.callsOf("late"), [("peerReset", "the channel was closed while connecting")])
        self.assertEqual((written(link), link.ends), ([], {}))

    def test_endAnswersFromDeliver(self):
        """An end that writes from inside deliver has its answer sent in the same pass."""
        link = serverLink(self.clock, self.calls)
        channel_id = openChannel(link, EchoEnd(self.calls, "echo"))
        link.dataReceived(frames.data_header(channel_id, 3) + b"abc")
        self.assertEqual(written(link), [(DATA, channel_id, b"ABC")])


class InternalErrorTests(LinkTestCase):
    """A bug in handling an event fails the link instead of escaping into the reactor."""

    def test_faultyEnd(self):
        """An end raising in deliver is logged, and the link fails with 'internal error'."""
        link = serverLink(self.clock, self.calls)
        openChannel(link, FaultyEnd(self.calls, "faulty"))
        with capturedLogs() as events:
            link.dataReceived(frames.data_header(1, 3) + b"abc")
        self.assertEqual(written(link), [goaway("internal error")])
        self.assertTrue(link.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIn("203.0.113.9:40000", " ".join(formatEvent(e) for e in events))
        loseLink(link)
        self.assertOwnerToldClosingThenLost(link, "internal error", False)

    def test_faultyOwner(self):
        """An owner raising while it authenticates fails the link the same way."""
        link = serverLink(self.clock, self.calls, establish=False)
        link.owner.authenticate = lambda *args: 1 / 0
        link.dataReceived(frames.auth(AUTH_SHARED_TOKEN, auth.proof(TOKEN, NONCE, TAG), TAG))
        self.assertEqual(written(link), [goaway("internal error")])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


    def test_faultOnTick(self):
        """A fault met on a timer tick is logged and fails the link; it does not reach the reactor."""
        link = serverLink(self.clock, self.calls)
        link.connection.tick = lambda now: 1 / 0
        self.clock.advance(PING_INTERVAL)
        self.assertEqual(written(link), [goaway("internal error")])
        self.assertTrue(link.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ChannelEndTests(LinkTestCase):
    """A real ChannelEnd: its socket's reads, EOF, buffer and loss drive its channel."""

    def setUp(self):
        super().setUp()
        self.link = serverLink(self.clock, self.calls)
        self.end = ChannelEnd()
        self.end.makeConnection(EndTransport())
        self.channel_id = openChannel(self.link, self.end)

    def test_producerOnceAdded(self):
        """An end becomes its transport's streaming producer when its channel is added."""
        end = ChannelEnd()
        end.makeConnection(EndTransport())
        self.assertIsNone(end.transport.producer)
        self.link.openChannel(end, "10.1.2.3", 22)
        self.assertIs(end.transport.producer, end)
        self.assertTrue(end.transport.streaming)

    def test_readGoesToLink(self):
        """What the end's socket reads goes over its channel, and is counted."""
        self.end.dataReceived(b"abc")
        self.assertEqual(written(self.link), [(DATA, self.channel_id, b"abc")])
        self.assertEqual(self.end.meter.recv_bytes, 3)

    def test_eofSendsFin(self):
        """The socket's read side ending sends FIN; the socket stays open for writing."""
        self.end.readConnectionLost()
        self.assertEqual(written(self.link), [(FIN, self.channel_id, b"")])
        self.assertFalse(self.end.transport.disconnecting)

    def test_deliverWrites(self):
        """DATA from the peer is written to the socket, and counted."""
        self.link.dataReceived(frames.data_header(self.channel_id, 3) + b"xyz")
        self.assertEqual(self.end.transport.value(), b"xyz")
        self.assertEqual(self.end.meter.send_bytes, 3)

    def test_peerFinShutsWriteSide(self):
        """The peer's FIN shuts the socket's write side and unregisters the end as producer."""
        self.link.dataReceived(frames.encode(FIN, self.channel_id))
        self.assertTrue(self.end.transport.write_closed)
        self.assertIsNone(self.end.transport.producer)
        self.assertFalse(self.end.transport.disconnecting)

    def test_bothEndedCloses(self):
        """Once both directions have ended the socket closes, and its loss sends no RESET."""
        self.end.readConnectionLost()
        self.link.dataReceived(frames.encode(FIN, self.channel_id))
        self.assertFalse(self.end.transport.disconnecting)
        self.end.writeConnectionLost()
        self.assertTrue(self.end.transport.disconnecting)
        self.end.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(written(self.link), [(FIN, self.channel_id, b"")])
        self.assertEqual(self.link.ends, {})

    def test_lossResets(self):
        """The socket lost while its channel is open resets the channel, saying why."""
        self.end.connectionLost(Failure(ConnectionLost("gone")))
        [(ftype, channel_id, reason)] = written(self.link)
        self.assertEqual((ftype, channel_id), (RESET, self.channel_id))
        self.assertIn(b"connection lost: ", reason)
        self.assertIn(b"gone", reason)
        self.assertEqual(self.link.ends, {})

    def test_lossAfterOwnEofResets(self):
        """A socket lost after only its own EOF still resets the channel."""
        self.end.readConnectionLost()
        self.end.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([f[0] for f in written(self.link)], [FIN, RESET])

    def test_fullBufferHoldsCredit(self):
        """While the socket's write buffer is full no credit goes back; once it drains, it does."""
        self.end.pauseProducing()
        self.link.dataReceived(frames.data_header(self.channel_id, BATCH) + b"x" * BATCH)
        self.assertEqual(written(self.link), [])
        self.end.resumeProducing()
        self.assertEqual(written(self.link), [(WINDOW, self.channel_id, struct.pack(">I", BATCH))])

    def test_creditGoesBack(self):
        """With room in the socket's buffer, a batch of data gives its credit back at once."""
        self.link.dataReceived(frames.data_header(self.channel_id, BATCH) + b"x" * BATCH)
        self.assertEqual(written(self.link), [(WINDOW, self.channel_id, struct.pack(">I", BATCH))])

    def test_outOfCreditPausesReading(self):
        """Out of credit, the socket's reading pauses; credit from the peer resumes it."""
        self.end.dataReceived(b"x" * WINDOW_SIZE)
        self.assertEqual(self.end.transport.producerState, "paused")
        self.link.dataReceived(frames.window_update(self.channel_id, 10))
        self.assertEqual(self.end.transport.producerState, "producing")

    def test_peerResetAborts(self):
        """The peer's RESET aborts the socket."""
        self.link.dataReceived(frames.reason_frame(RESET, self.channel_id, "gone"))
        self.assertTrue(self.end.transport.disconnected)

    def test_linkLostAborts(self):
        """The link's loss aborts the socket."""
        loseLink(self.link)
        self.assertTrue(self.end.transport.disconnected)

    def test_openFailedCloses(self):
        """A channel that fails to open closes the socket, which has had nothing written."""
        end = ChannelEnd()
        end.makeConnection(EndTransport())
        channel_id = self.link.openChannel(end, "10.1.2.3", 22)
        self.link.dataReceived(frames.open_fail(channel_id, frames.FAIL_REFUSED, "no"))
        self.assertTrue(end.transport.disconnecting)
        self.assertFalse(end.transport.disconnected)
