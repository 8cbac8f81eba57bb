"""
Tests for L{portmapper.server.meter}: byte counters turned into speeds, and
the sampler that walks every live meter on a L{task.Clock}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portmapper.server.meter import MB, Meter, Sampler

MiB = 2**20


class MeterTests(SynchronousTestCase):
    """L{Meter} speeds over the last interval and averages since creation."""

    def test_mb(self):
        """MB, the unit the admin API reports in, is 2**20 bytes."""
        self.assertEqual(MB, 1048576.0)

    def test_fresh(self):
        """A new meter has counted nothing and reports no speed."""
        meter = Meter(created=5.0)
        self.assertEqual(
            (meter.recv_bytes, meter.send_bytes, meter.recv_speed, meter.send_speed),
            (0, 0, 0.0, 0.0))

    def test_firstSampleMeasuresFromCreation(self):
        """The first sample divides the bytes counted since creation by the time since creation."""
        meter = Meter(created=0.0)
        meter.recv_bytes += 3 * MiB
        meter.send_bytes += 1 * MiB
        meter.sample(1.0)
        self.assertEqual(meter.recv_speed, 3 * MiB)
        self.assertEqual(meter.send_speed, 1 * MiB)

    def test_firstSampleLongAfterCreation(self):
        """A meter created at t=10 and first sampled at t=12 spreads its bytes over 2 seconds."""
        meter = Meter(created=10.0)
        meter.recv_bytes = 4 * MiB
        meter.sample(12.0)
        self.assertEqual(meter.recv_speed, 2 * MiB)

    def test_laterSamplesCountOnlyTheirInterval(self):
        """Each later sample measures only the bytes counted since the previous one."""
        meter = Meter(created=0.0)
        meter.recv_bytes += 3 * MiB
        meter.send_bytes += 2 * MiB
        meter.sample(1.0)
        meter.recv_bytes += 1 * MiB
        meter.sample(2.0)
        self.assertEqual(meter.recv_speed, 1 * MiB)
        self.assertEqual(meter.send_speed, 0.0)
        meter.recv_bytes += 4 * MiB
        meter.send_bytes += 6 * MiB
        meter.sample(4.0)
        self.assertEqual(meter.recv_speed, 2 * MiB)
        self.assertEqual(meter.send_speed, 3 * MiB)

    def test_sampleAtTheSameTimeChangesNothing(self):
        """A sample with no time elapsed keeps the previous speeds instead of dividing by zero."""
        meter = Meter(created=0.0)
        meter.recv_bytes = 3 * MiB
        meter.sample(1.0)
        meter.recv_bytes += 5 * MiB
        meter.sample(1.0)
        self.assertEqual(meter.recv_speed, 3 * MiB)
        # The bytes of the skipped sample are counted by the next one.
        meter.sample(2.0)
        self.assertEqual(meter.recv_speed, 5 * MiB)

    def test_sampleAtCreationTime(self):
        """Sampling a meter at the instant it was created leaves its speeds at zero."""
        meter = Meter(created=7.0)
        meter.recv_bytes = 100
        meter.sample(7.0)
        self.assertEqual((meter.recv_speed, meter.send_speed), (0.0, 0.0))

    def test_averages(self):
        """The averages are the totals divided by the meter's age."""
        meter = Meter(created=10.0)
        meter.recv_bytes = 4 * MiB
        meter.send_bytes = 2 * MiB
        self.assertEqual(meter.age(14.0), 4.0)
        self.assertEqual(meter.recv_average(14.0), 1 * MiB)
        self.assertEqual(meter.send_average(14.0), 0.5 * MiB)

    def test_averagesIgnoreSampling(self):
        """Sampling does not change the averages, which always cover the whole age."""
        meter = Meter(created=0.0)
        meter.recv_bytes = 8 * MiB
        meter.sample(1.0)
        meter.sample(2.0)
        self.assertEqual(meter.recv_average(4.0), 2 * MiB)

    def test_zeroAge(self):
        """At the creation instant (or a clock behind it) the age is 0 and the averages 0.0."""
        meter = Meter(created=10.0)
        meter.recv_bytes = meter.send_bytes = 1000
        for now in (10.0, 9.0):
            self.assertEqual(meter.age(now), 0.0)
            self.assertEqual(meter.recv_average(now), 0.0)
            self.assertEqual(meter.send_average(now), 0.0)


class Boom(Exception):
    """A failure of the callable that lists the meters."""


class SamplerTests(SynchronousTestCase):
    """L{Sampler} samples every meter the callable returns, once per interval."""

    def setUp(self):
        self.clock = Clock()
        self.meters = [Meter(created=0.0), Meter(created=0.0)]
        self.calls = 0

    def listMeters(self):
        self.calls += 1
        return list(self.meters)

    def startSampler(self, meters=None, interval=1.0):
        sampler = Sampler(meters or self.listMeters, self.clock, interval)
        sampler.startService()
        self.addCleanup(lambda: sampler.running and sampler.stopService())
        return sampler

    def test_notSampledAtStart(self):
        """Starting the sampler samples nothing: the first tick is one interval later."""
        self.startSampler()
        self.assertEqual(self.calls, 0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_tickSamplesEveryMeter(self):
        """Each tick samples every meter the callable returns, at the clock's time."""
        self.startSampler()
        self.meters[0].recv_bytes = 3 * MiB
        self.meters[1].send_bytes = 5 * MiB
        self.clock.advance(1)
        self.assertEqual(self.calls, 1)
        self.assertEqual(self.meters[0].recv_speed, 3 * MiB)
        self.assertEqual(self.meters[1].send_speed, 5 * MiB)
        self.meters[0].recv_bytes += 1 * MiB
        self.clock.advance(1)
        self.assertEqual(self.calls, 2)
        self.assertEqual(self.meters[0].recv_speed, 1 * MiB)
        self.assertEqual(self.meters[1].send_speed, 0.0)

    def test_callableAskedEveryTick(self):
        """The meters are asked for on every tick, so a meter added later is sampled too."""
        self.startSampler()
        self.clock.advance(1)
        late = Meter(created=1.0)
        late.recv_bytes = 2 * MiB
        self.meters.append(late)
        self.clock.advance(1)
        self.assertEqual(late.recv_speed, 2 * MiB)

    def test_interval(self):
        """With an interval of 5 seconds nothing is sampled before t=5, then once at t=5."""
        self.startSampler(interval=5)
        self.clock.advance(4.9)
        self.assertEqual(self.calls, 0)
        self.clock.advance(0.1)
        self.assertEqual(self.calls, 1)

    def test_failingTickIsLoggedAndLoopGoesOn(self):
        """A tick whose callable raises is logged, and the next second's tick still samples."""
        results = [Boom("no meters today"), self.meters]

        def meters():
            result = results.pop(0)
            if isinstance(result, Exception):
                raise result
            return result

        sampler = self.startSampler(meters)
        self.meters[0].recv_bytes = 2 * MiB
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        self.assertTrue(sampler.running)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1)
        self.assertEqual(results, [])
        # Measured from creation (t=0) to the tick at t=2.
        self.assertEqual(self.meters[0].recv_speed, 1 * MiB)

    def test_failingMeterIsLoggedAndLoopGoesOn(self):
        """A meter whose sampling raises is logged, and later ticks still run."""

        class BadMeter:
            def sample(self, now):
                raise Boom("broken meter")

        meters = [BadMeter()]
        self.startSampler(lambda: meters)
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        meters[:] = self.meters
        self.meters[0].recv_bytes = 2 * MiB
        self.clock.advance(1)
        self.assertEqual(self.meters[0].recv_speed, 1 * MiB)

    def test_stopService(self):
        """After stopService nothing is left on the clock and no more ticks happen."""
        sampler = self.startSampler()
        self.clock.advance(1)
        sampler.stopService()
        self.assertFalse(sampler.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.calls, 1)

    def test_restart(self):
        """A stopped sampler can be started again and ticks again."""
        sampler = self.startSampler()
        sampler.stopService()
        sampler.startService()
        self.clock.advance(1)
        self.assertEqual(self.calls, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_stopBeforeStart(self):
        """Stopping a sampler that never started leaves nothing on the clock."""
        sampler = Sampler(self.listMeters, self.clock)
        sampler.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])



class SamplerObserveTests(SynchronousTestCase):
    """L{Sampler} reports how long each tick took, by its clock."""

    def test_observesTickDuration(self):
        """Each tick hands the seconds it took (clock time after minus before) to observe."""
        clock = Clock()
        took = []

        def slowMeters():
            clock.rightNow += 0.25  # walking the meters takes a quarter second
            return [Meter(created=0.0)]

        sampler = Sampler(slowMeters, clock, 1.0, observe=took.append)
        sampler.startService()
        self.addCleanup(sampler.stopService)
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(took, [0.25, 0.25])
