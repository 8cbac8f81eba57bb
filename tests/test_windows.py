"""
Tests for L{portmapper.protocol.windows}, alone: a channel's
L{ReceiveWindow} (credit in batches, a whole window at once, growth to the
bandwidth-delay product, its cap, idle shrink) and the link's
L{LinkEstimate} (round trip, bandwidth from trains of DATA, fading).

Byte counts and times go in, credit comes out: no link, no frames.
L{WindowCase.deliver} plays the link's part, as
L{portmapper.protocol.connection} does: bytes arrive (C{take}), are timed
(C{arrived}), and their credit goes back once it is due (C{release}).
"""

from twisted.trial.unittest import SynchronousTestCase

from portmapper.protocol.windows import (
    MAX_CREDIT_BATCH, TRAIN_GAP, TRAIN_MIN, WINDOW_GROWTH, LinkEstimate, ReceiveWindow,
    credit_batch,
)

T0 = 100.0
WINDOW = 1024
BATCH = WINDOW // 4
CAP = WINDOW_GROWTH ** 2 * WINDOW


def estimate(rtt=None):
    """A LinkEstimate that has measured ``rtt`` (None: nothing yet)."""
    link = LinkEstimate()
    if rtt is not None:
        link.round_trip(rtt)
    return link


class WindowCase(SynchronousTestCase):
    """A window of WINDOW bytes, growing up to CAP, on a link with a round trip of RTT."""

    RTT = 0.01

    def setUp(self):
        self.link = estimate(self.RTT)
        self.window = ReceiveWindow(WINDOW, CAP, self.link, T0)

    def deliver(self, n, now=T0, window=None):
        """``n`` bytes arrive at ``now`` and are written out; the credit given back (0: none)."""
        window = window or self.window
        self.assertTrue(window.take(n), "beyond the window")
        self.link.arrived(n, now)
        return window.release(now) if window.due() else 0


class CreditTests(WindowCase):
    """Credit goes back in batches of a quarter window, and at once at a window's end."""

    RTT = None  # no growth

    def test_creditBatch(self):
        """A batch is a quarter window, at most MAX_CREDIT_BATCH, at least one byte."""
        self.assertEqual(credit_batch(1024), 256)
        self.assertEqual(credit_batch(4 * MAX_CREDIT_BATCH), MAX_CREDIT_BATCH)
        self.assertEqual(credit_batch(16 * MAX_CREDIT_BATCH), MAX_CREDIT_BATCH)
        self.assertEqual(credit_batch(3), 1)

    def test_creditInBatches(self):
        """No credit goes back below a quarter window; at a quarter, all of it does."""
        self.assertEqual(self.deliver(BATCH - 1), 0)
        self.assertEqual(self.deliver(10), BATCH + 9)
        self.assertEqual(self.window.allowed, WINDOW)

    def test_wholeWindowCreditedAtOnce(self):
        """The end of a window sends its credit even short of a batch."""
        self.assertEqual([self.deliver(300) for _ in range(3)], [300, 300, 300])
        self.assertEqual(self.deliver(124), 124)

    def test_fullWindowThenMoreAfterCredit(self):
        """A peer may send a whole window, and more once its credit has gone back."""
        self.assertEqual(self.deliver(WINDOW), WINDOW)
        self.assertEqual(self.deliver(WINDOW), WINDOW)

    def test_beyondWindowRefused(self):
        """take() says False for bytes beyond the credit given."""
        self.assertTrue(self.window.take(WINDOW))
        self.assertFalse(self.window.take(1))

    def test_heldCreditGoesBackWhole(self):
        """Credit held back (the local socket was full) goes back all at once on release."""
        for _ in range(3):
            self.window.take(BATCH)
        self.assertEqual(self.window.release(T0), 3 * BATCH)
        self.assertEqual(self.window.allowed, WINDOW)

    def test_largeWindowCreditInBoundedBatches(self):
        """A large window returns credit in batches of MAX_CREDIT_BATCH, not a quarter window."""
        window = ReceiveWindow(16 * MAX_CREDIT_BATCH, 16 * MAX_CREDIT_BATCH, self.link, T0)
        self.assertEqual(self.deliver(MAX_CREDIT_BATCH - 1, window=window), 0)
        self.assertEqual(self.deliver(1, window=window), MAX_CREDIT_BATCH)


class WindowTuningTests(WindowCase):
    """Windows grow when a whole one comes in within two round trips, up to a cap."""

    def test_fastWindowGrows(self):
        """A whole window taken in within two round trips grows the window, as extra credit."""
        grown = WINDOW_GROWTH * WINDOW
        self.assertEqual(self.deliver(WINDOW), grown)
        self.assertEqual((self.window.size, self.window.allowed), (grown, grown))
        self.assertEqual(self.window.batch, grown // 4)
        self.assertTrue(self.window.grown)

    def test_wholeWindowCreditedAtOnceWithGrowth(self):
        """A window's last bytes, short of a batch, go back with the growth at once."""
        self.assertEqual([self.deliver(300) for _ in range(3)], [300, 300, 300])
        self.assertEqual(self.deliver(124), 124 + (WINDOW_GROWTH - 1) * WINDOW)
        self.assertEqual(self.window.size, WINDOW_GROWTH * WINDOW)

    def test_slowWindowStays(self):
        """A window taken in over more than two round trips is not what limits: it stays."""
        first = self.deliver(WINDOW // 2)
        second = self.deliver(WINDOW // 2, T0 + 3 * self.RTT)
        self.assertEqual(first + second, WINDOW)
        self.assertEqual(self.window.size, WINDOW)
        self.assertFalse(self.window.grown)

    def test_noGrowthWithoutRoundTrip(self):
        """Before any round trip is measured, windows do not grow."""
        self.link.rtt = None
        self.assertEqual(self.deliver(WINDOW), WINDOW)
        self.assertEqual(self.window.size, WINDOW)

    def test_growthCapped(self):
        """Windows stop growing at max_size, and the peer may then send exactly that much."""
        for _ in range(6):
            self.deliver(self.window.allowed)
        self.assertEqual(self.window.size, CAP)
        self.assertEqual(self.window.allowed, CAP)
        self.assertEqual(self.deliver(CAP), CAP)
        self.assertEqual(self.window.size, CAP)

    def test_grownWindowJudgedFromItsFirstData(self):
        """After growing, the next window is timed from a round trip later, when its data can first come."""
        # So a window taken in 2.5 round trips after the growth still grows.
        self.deliver(WINDOW)
        self.assertEqual(self.window.epoch_start, T0 + self.RTT)
        self.deliver(self.window.allowed, T0 + 2.5 * self.RTT)
        self.assertEqual(self.window.size, WINDOW_GROWTH ** 2 * WINDOW)

    def test_growNow(self):
        """grow_now() grows at once (early data used up) and counts the credit as given."""
        self.window.take(WINDOW // 4)
        grow = self.window.grow_now(T0)
        self.assertEqual(grow, (WINDOW_GROWTH - 1) * WINDOW)
        self.assertEqual(self.window.size, WINDOW_GROWTH * WINDOW)
        self.assertEqual(self.window.allowed, self.window.size - WINDOW // 4)

    def test_growNowWithoutRoundTrip(self):
        """Without a round trip measured, grow_now() does nothing."""
        self.link.rtt = None
        self.assertEqual(self.window.grow_now(T0), 0)
        self.assertEqual((self.window.size, self.window.allowed), (WINDOW, WINDOW))


class IdleTests(WindowCase):
    """A grown window that sees no data for a keepalive interval shrinks back, through debt."""

    def test_idleWindowShrinks(self):
        """A grown window idle for a keepalive interval shrinks back, withholding the difference."""
        self.deliver(WINDOW)
        self.assertEqual(self.window.size, WINDOW_GROWTH * WINDOW)
        self.assertTrue(self.window.idle())  # marks the window
        self.assertFalse(self.window.idle())  # nothing since: shrink
        self.assertEqual(self.window.size, WINDOW)
        self.assertEqual(self.window.batch, BATCH)
        # The peer may still use the credit it holds, but none comes back
        # until the extra window is paid off: it is left with the initial window.
        extra = (WINDOW_GROWTH - 1) * WINDOW
        self.assertEqual(self.deliver(extra, T0 + 20), 0)
        self.assertEqual(self.window.allowed, WINDOW)
        self.assertEqual(self.window.debt, 0)

    def test_noGrowthWhileInDebt(self):
        """A window still paying off its shrink does not grow."""
        self.deliver(WINDOW)
        self.window.idle()
        self.window.idle()
        self.assertEqual(self.deliver(WINDOW), 0)  # a whole window, fast, all withheld
        self.assertEqual(self.window.size, WINDOW)
        self.assertEqual(self.window.debt, (WINDOW_GROWTH - 2) * WINDOW)

    def test_busyWindowKept(self):
        """A grown window that keeps carrying data is not shrunk."""
        self.deliver(WINDOW)
        for _ in range(3):
            self.assertTrue(self.window.idle())
            self.deliver(WINDOW // 4)
        self.assertEqual(self.window.size, WINDOW_GROWTH * WINDOW)

    def test_busyWindowCreditedBetweenTicksKept(self):
        """A grown window whose data came in, and whose credit went back, between two ticks is kept."""
        self.deliver(WINDOW)
        self.assertTrue(self.window.idle())
        batch = self.window.batch
        self.assertEqual(self.deliver(batch), batch)  # credit given back: as much allowed as before
        self.assertTrue(self.window.idle())
        self.assertEqual(self.window.size, WINDOW_GROWTH * WINDOW)
        self.assertEqual(self.window.debt, 0)

    def test_ungrownWindowNotIdle(self):
        """A window at its initial size has nothing to shrink."""
        self.assertFalse(self.window.idle())
        self.assertFalse(self.window.idle())
        self.assertEqual((self.window.size, self.window.debt), (WINDOW, 0))


class LinkEstimateTests(SynchronousTestCase):
    """The round trip is smoothed; nothing is measured before it is known."""

    def test_roundTripSmoothed(self):
        """The first sample is the round trip; later ones move it by a quarter."""
        link = LinkEstimate()
        self.assertIsNone(link.rtt)
        link.round_trip(0.2)
        self.assertEqual(link.rtt, 0.2)
        link.round_trip(0.6)
        self.assertAlmostEqual(link.rtt, 0.3)

    def test_noTrainsWithoutRoundTrip(self):
        """Without a round trip there is no gap to judge trains by: no bandwidth."""
        link = LinkEstimate()
        for i in range(8):
            link.arrived(TRAIN_MIN, T0 + i * 0.0001)
        self.assertEqual(link.bandwidth(), 0)

    def test_shortTrainMeasuresNothing(self):
        """A train under TRAIN_MIN bytes (after its first chunk) says nothing of the link."""
        link = estimate(0.1)
        for i in range(4):
            link.arrived((TRAIN_MIN - 1) // 3, T0 + i * 0.0001)
        self.assertEqual(link.bandwidth(), 0)


class BandwidthTests(WindowCase):
    """The link times trains of DATA, and a window too small jumps to twice the BDP they give."""

    RTT = 0.1
    WINDOW = 512 * 1024
    CHUNK = 64 * 1024
    STEP = 0.0001  # between chunks of a train: 655 MB/s

    def setUp(self):
        self.link = estimate(self.RTT)
        self.window = ReceiveWindow(self.WINDOW, 1 << 30, self.link, T0)

    def feed(self, chunks, step):
        for i in range(chunks):
            self.deliver(self.CHUNK, T0 + i * step)

    def test_windowJumpsToTwiceTheBandwidthDelayProduct(self):
        """A window sent in one go is timed as it arrives; its growth is 2 x rate x RTT."""
        self.feed(self.WINDOW // self.CHUNK, self.STEP)
        # The first chunk arrived before the train's clock started.
        rate = (self.WINDOW - self.CHUNK) / ((self.WINDOW // self.CHUNK - 1) * self.STEP)
        self.assertAlmostEqual(self.link.bandwidth() / rate, 1.0, places=6)
        self.assertEqual(self.window.size, int(2 * self.link.bandwidth() * self.RTT))
        self.assertGreater(self.window.size, WINDOW_GROWTH * self.WINDOW)

    def test_jumpCapped(self):
        """The jump stops at max_size."""
        self.window.max_size = 8 * 1024 * 1024
        self.feed(self.WINDOW // self.CHUNK, self.STEP)
        self.assertEqual(self.window.size, 8 * 1024 * 1024)

    def test_gapsBreakTrains(self):
        """Chunks further apart than TRAIN_GAP round trips make no train: growth is x4."""
        self.feed(self.WINDOW // self.CHUNK, TRAIN_GAP * self.RTT * 1.5)
        self.assertEqual(self.link.bandwidth(), 0)
        self.assertEqual(self.window.size, WINDOW_GROWTH * self.WINDOW)

    def test_measurementFades(self):
        """A measurement halves with each keepalive interval that measures nothing faster."""
        self.feed(self.WINDOW // self.CHUNK, self.STEP)
        measured = self.link.bandwidth()
        self.link.fade()
        self.assertEqual(self.link.bandwidth(), measured)
        self.link.fade()
        self.assertEqual(self.link.bandwidth(), measured / 2)

    def test_fasterTrainWins(self):
        """Within an interval the fastest train counts, over a slower one before or after."""
        self.feed(self.WINDOW // self.CHUNK, self.STEP)
        fast = self.link.bandwidth()
        for i in range(8):
            self.link.arrived(self.CHUNK, T0 + 1 + i * self.STEP * 2)
        self.assertEqual(self.link.bandwidth(), fast)
