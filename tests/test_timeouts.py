"""
Tests of the timeouts that end what would otherwise never close, on a clock.

Channels (``--half-close-timeout``, ``--idle-timeout``): the registry's
sweep rule (:meth:`Channel.expire`), the sampler that runs the sweep each
tick, and the server closing expired channels at both ends with the reason
history records (on the in-memory links of ``tests/test_public.py``); and
TCP keepalive on channel sockets.

Links: a link whose peer pings but never reads, so that its write buffer
stays full with nothing taken, is dropped after ``ping_timeout`` (the core's
rule, and the adapter that watches its transport's queue); a slow but moving
one stays.
"""

import socket

import attr
from twisted.internet import tcp
from twisted.internet.error import ConnectionAborted
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from portmapper.protocol import frames
from portmapper.protocol.connection import PING_INTERVAL, PING_TIMEOUT, CloseLink
from portmapper.protocol.frames import GOAWAY
from portmapper.server.meter import Meter, Sampler
from portmapper.server.registry import (
    IDLE_TIMEOUT, TARGET_CLOSED, TIMEOUT, USER_CLOSED, Channel, Registry,
)
from portmapper.transport import link as link_module
from portmapper.transport import tune
from tests.linkhelp import written as sent
from tests.test_connection import T0, events, pair, receive
from tests.test_link import PING_INTERVAL as LINK_PING_INTERVAL
from tests.test_link import PING_TIMEOUT as LINK_PING_TIMEOUT
from tests.test_link import LinkTestCase, serverLink
from tests.test_public import PublicTestCase

HALF_CLOSE = 60.0
IDLE = 300.0
TICK = 1.0


def opened_channel(now=0.0):
    channel = Channel(channel_id=1, public_port=5433, user_ip="198.51.100.7", user_port=50000,
                      meter=Meter(created=now))
    channel.opened = True
    return channel


class ExpireRuleTests(SynchronousTestCase):
    """Channel.expire: which channel a sweep at a given time closes, and why."""

    def sweepUntil(self, channel, end, idle=0.0, start=0.0, traffic=None):
        """Sweep ``channel`` every TICK from ``start`` to ``end``; the first (time, reason) or None."""
        now = start
        while now <= end:
            if traffic is not None:
                traffic(channel, now)
            reason = channel.expire(now, HALF_CLOSE, idle)
            if reason is not None:
                return now, reason
            now += TICK
        return None

    def test_halfClosedSilentExpires(self):
        """A channel half-closed at 10 s that carries nothing is a timeout at 10 + half_close_timeout."""
        channel = opened_channel()
        self.assertIsNone(self.sweepUntil(channel, 9.0))
        channel.ended(USER_CLOSED)
        self.assertEqual(self.sweepUntil(channel, 1000.0, start=10.0), (10.0 + HALF_CLOSE, TIMEOUT))

    def test_eitherSideHalfClosing(self):
        """The target's FIN starts the clock just as the user's does."""
        channel = opened_channel()
        channel.ended(TARGET_CLOSED)
        self.assertEqual(self.sweepUntil(channel, 1000.0), (HALF_CLOSE, TIMEOUT))

    def test_halfClosedMovingStays(self):
        """A half-closed channel still moving bytes (a download after the request's FIN) stays."""
        channel = opened_channel()
        channel.ended(USER_CLOSED)

        def download(channel, now):
            channel.meter.send_bytes += 1

        self.assertIsNone(self.sweepUntil(channel, 10 * HALF_CLOSE, traffic=download))

    def test_halfClosedClockStartsAtLastByte(self):
        """Half-closed, the limit counts from the last byte seen moving, not from the FIN."""
        channel = opened_channel()
        channel.ended(USER_CLOSED)

        def until_20(channel, now):
            if now <= 20.0:
                channel.meter.recv_bytes += 1

        self.assertEqual(self.sweepUntil(channel, 1000.0, traffic=until_20),
                         (20.0 + HALF_CLOSE, TIMEOUT))

    def test_openChannelNeverHalfCloseTimedOut(self):
        """An open channel that nobody half-closed is not a timeout, however silent."""
        self.assertIsNone(self.sweepUntil(opened_channel(), 100 * HALF_CLOSE))

    def test_idleExpires(self):
        """With an idle timeout, a channel silent that long is an idle timeout."""
        channel = opened_channel()
        self.assertEqual(self.sweepUntil(channel, 1000.0, idle=IDLE), (IDLE, IDLE_TIMEOUT))

    def test_idleCountsFromLastByte(self):
        """Bytes either way restart the idle count."""
        channel = opened_channel()

        def until_100(channel, now):
            if now == 100.0:
                channel.meter.send_bytes += 5

        self.assertEqual(self.sweepUntil(channel, 1000.0, idle=IDLE, traffic=until_100),
                         (100.0 + IDLE, IDLE_TIMEOUT))

    def test_idleZeroIsNever(self):
        """idle_timeout 0 never closes an open channel."""
        self.assertIsNone(self.sweepUntil(opened_channel(), 10 * IDLE, idle=0.0))

    def test_shorterLimitWins(self):
        """Half-closed and idle both: whichever limit is shorter gives the reason."""
        channel = opened_channel()
        channel.ended(USER_CLOSED)
        self.assertEqual(self.sweepUntil(channel, 1000.0, idle=HALF_CLOSE / 2),
                         (HALF_CLOSE / 2, IDLE_TIMEOUT))

    def test_connectingNeverExpires(self):
        """A channel still connecting is left to the open timeout."""
        channel = opened_channel()
        channel.opened = False
        channel.ended(USER_CLOSED)
        self.assertIsNone(self.sweepUntil(channel, 10 * IDLE, idle=IDLE))

    def test_registryListsExpired(self):
        """The registry returns the expired channels with their reasons, and only those."""
        registry = Registry()
        quiet = registry.new_channel(5433, "198.51.100.7", 1, now=0.0)
        busy = registry.new_channel(5433, "198.51.100.7", 2, now=0.0)
        for channel in (quiet, busy):
            channel.opened = True
            channel.ended(USER_CLOSED)
        registry.expired_channels(0.0, HALF_CLOSE, 0.0)
        busy.meter.recv_bytes += 1
        self.assertEqual(registry.expired_channels(HALF_CLOSE, HALF_CLOSE, 0.0),
                         [(quiet, TIMEOUT)])


class SamplerSweepTests(SynchronousTestCase):
    def test_sweepEveryTickAfterSampling(self):
        """The sampler calls sweep(now) once per tick, after sampling, even if sampling failed."""
        clock = Clock()
        calls = []
        meter = Meter(created=0.0)

        def meters():
            calls.append("sample")
            if len(calls) > 3:
                raise RuntimeError("boom")
            return [meter]

        sampler = Sampler(meters, clock, TICK, sweep=lambda now: calls.append(now))
        sampler.startService()
        self.addCleanup(sampler.stopService)
        clock.pump([TICK] * 3)
        self.assertEqual(calls, ["sample", 1.0, "sample", 2.0, "sample", 3.0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ServerSweepTests(PublicTestCase):
    """The server closes expired channels at both ends; history says why."""

    def setUp(self):
        super().setUp()
        self.server.settings = attr.evolve(
            self.server.settings, half_close_timeout=HALF_CLOSE, idle_timeout=IDLE)

    def sweepFor(self, seconds, traffic=None):
        """Advance the clock ``seconds`` in ticks, sweeping (and calling ``traffic()``) at each."""
        for _ in range(int(seconds / TICK)):
            self.clock.advance(TICK)
            if traffic is not None:
                traffic()
            self.server.sweep(self.clock.seconds())
            self.flush()

    def test_lingeringHalfCloseClosed(self):
        """A user's hi+FIN to a target that never reads or closes: both dropped, history says timeout."""
        user, target = self.openChannel()
        user.dataReceived(b"hi")
        user.readConnectionLost()
        self.flush()
        self.sweepFor(HALF_CLOSE - TICK)
        self.assertFalse(user.transport.disconnected)
        self.sweepFor(2 * TICK)
        self.assertTrue(user.transport.disconnected)  # reset, as every abnormal end
        self.assertTrue(target.transport.disconnected)  # the client dropped the target too
        self.assertEqual(self.userGone(user, ConnectionAborted()), TIMEOUT)

    def test_idleChannelClosed(self):
        """An open channel that carries nothing for idle_timeout is closed: idle timeout."""
        user, target = self.openChannel()
        self.sweepFor(IDLE + TICK)
        self.assertTrue(user.transport.disconnected)
        self.assertTrue(target.transport.disconnected)
        self.assertEqual(self.userGone(user, ConnectionAborted()), IDLE_TIMEOUT)

    def test_busyHalfClosedKept(self):
        """A half-closed channel whose target keeps sending is kept past half_close_timeout."""
        user, target = self.openChannel()
        user.readConnectionLost()
        self.flush()
        self.sweepFor(3 * HALF_CLOSE, traffic=lambda: target.dataReceived(b"x"))
        self.assertFalse(user.transport.disconnected)
        self.assertEqual(len(user.transport.value()), int(3 * HALF_CLOSE / TICK))

    def test_idleTimeoutOffByDefault(self):
        """With the default idle_timeout (0), a silent open channel stays open."""
        self.server.settings = attr.evolve(self.server.settings, idle_timeout=0.0)
        user, target = self.openChannel()
        self.sweepFor(10 * IDLE)
        self.assertFalse(user.transport.disconnected)


class KeepAliveTests(SynchronousTestCase):
    """keep_alive turns on TCP keepalive with its timings, where the transport is TCP."""

    def test_tcpSocketGetsKeepAlive(self):
        """A TCP transport's socket gets SO_KEEPALIVE and the probe timings this platform has."""
        sock = socket.socket()
        self.addCleanup(sock.close)

        class Transport(tcp.Connection):
            def __init__(self):  # no connection: the socket's options are what matter
                self.socket = sock

        tune.keep_alive(Transport())
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                             tune.KEEPALIVE_IDLE)
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                             tune.KEEPALIVE_INTERVAL)
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                             tune.KEEPALIVE_COUNT)

    def test_otherTransportsLeftAlone(self):
        """A transport without a socket (StringTransport) is not harmed."""
        tune.keep_alive(StringTransport())


# -- a link whose peer pings but does not read (the link's stall timeout) -------

PING = frames.encode(frames.PING, 0, b"\0" * 8)


class StalledLinkCoreTests(SynchronousTestCase):
    """The core drops a link whose full write buffer takes nothing for ping_timeout."""

    def setUp(self):
        self.server, _ = pair()
        self.now = T0

    def intervals(self, count, moving=False, full=True):
        """``count`` keepalive ticks, the peer pinging before each (never silent)."""
        for _ in range(count):
            self.now += PING_INTERVAL
            receive(self.server, PING, now=self.now)
            if full:
                self.server.link_full(True)  # as Twisted says again at each write while full
            if moving:
                self.server.link_moving()
            self.server.tick(self.now)

    def closeEvents(self):
        return [e for e in events(self.server) if isinstance(e, CloseLink)]

    def test_fullAndUnmovedDropped(self):
        """Full with no byte taken: the tick after ping_timeout of whole intervals aborts, no GOAWAY."""
        self.server.link_full(True)
        whole = int(PING_TIMEOUT / PING_INTERVAL)
        self.intervals(whole)  # the first interval saw the buffer fill: it counts as moving
        self.assertEqual(self.closeEvents(), [])
        self.intervals(1)
        reason = f"it took nothing we sent for {PING_TIMEOUT:g} seconds"
        self.assertEqual(self.closeEvents(), [CloseLink(reason, True, True)])
        self.assertNotIn(GOAWAY, [f[0] for f in sent(self.server)])
        self.assertFalse(self.server.protocol_error)

    def test_slowButMovingKept(self):
        """Full the whole time, but the socket takes some bytes every interval: kept."""
        self.server.link_full(True)
        self.intervals(10 * int(PING_TIMEOUT / PING_INTERVAL), moving=True)
        self.assertEqual(self.closeEvents(), [])

    def test_drainingNowAndThenKept(self):
        """A buffer that drains now and then, however briefly, starts the count afresh."""
        for _ in range(10):
            self.server.link_full(True)
            self.intervals(int(PING_TIMEOUT / PING_INTERVAL))
            self.server.link_full(False)
        self.assertEqual(self.closeEvents(), [])

    def test_notFullNeverStalled(self):
        """A link whose buffer is not full is never dropped for taking nothing."""
        self.intervals(10 * int(PING_TIMEOUT / PING_INTERVAL), full=False)
        self.assertEqual(self.closeEvents(), [])


class StalledLinkAdapterTests(LinkTestCase):
    """The adapter looks at its transport's queue at each tick while paused and tells the core."""

    def setUp(self):
        super().setUp()
        self.queued = 500_000
        self.patch(link_module, "queued_bytes", lambda transport: self.queued)
        self.link = serverLink(self.clock, self.calls)

    def advance(self, intervals, drain=0):
        """Advance ``intervals`` ping intervals, the peer pinging; the socket takes ``drain`` each."""
        for _ in range(intervals):
            self.link.dataReceived(PING)
            self.link.pauseProducing()  # as Twisted calls it again at each write while full
            if drain:
                self.queued -= drain
            self.clock.advance(LINK_PING_INTERVAL)

    def test_pausedWithoutProgressAborted(self):
        """Paused, queue never shrinking: aborted within ping_timeout + one interval; owner told."""
        self.link.pauseProducing()
        self.advance(int(LINK_PING_TIMEOUT / LINK_PING_INTERVAL))
        self.assertNotIn("abortConnection", self.link.transport.calls)
        self.advance(1)
        self.assertEqual(self.link.transport.calls[-1], "abortConnection")
        reason = f"it took nothing we sent for {LINK_PING_TIMEOUT:g} seconds"
        self.assertEqual(self.callsOf("owner")[0], ("linkClosing", self.link, reason, False))

    def test_pausedButDrainingKept(self):
        """Paused the whole time, but the queue shrinks between ticks: kept."""
        self.link.pauseProducing()
        self.advance(10 * int(LINK_PING_TIMEOUT / LINK_PING_INTERVAL), drain=1)
        self.assertNotIn("abortConnection", self.link.transport.calls)

    def test_resumedNowAndThenKept(self):
        """A transport that resumes us now and then (its buffer drained) keeps the link."""
        for _ in range(10):
            self.link.pauseProducing()
            self.advance(int(LINK_PING_TIMEOUT / LINK_PING_INTERVAL))
            self.link.resumeProducing()
        self.assertNotIn("abortConnection", self.link.transport.calls)

    def test_unknownQueueNeverDropped(self):
        """A transport whose queue cannot be read is never dropped on a guess."""
        self.queued = None
        self.link.pauseProducing()
        self.advance(10 * int(LINK_PING_TIMEOUT / LINK_PING_INTERVAL))
        self.assertNotIn("abortConnection", self.link.transport.calls)
