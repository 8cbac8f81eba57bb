"""
Tests for L{portmapper.server.refusals}: refused connections counted into
one report per port, reason and interval, on a L{task.Clock}.
"""

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from portmapper.server.refusals import Refusals, Tally

INTERVAL = 10.0


class RefusalsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.reports = []
        self.refusals = Refusals(self.clock, INTERVAL, self.reports.append)

    def refuse(self, count, port=5555, reason="no client", ip="192.0.2.1"):
        for i in range(count):
            self.refusals.refused(port, reason, ip, 40000 + i)

    def test_loneRefusalAtOnce(self):
        """The first refusal is reported at once, with a count of 1 and its user."""
        self.clock.advance(100)
        self.refuse(1)
        self.assertEqual(self.reports, [Tally(5555, "no client", "192.0.2.1", 40000, 100, 100, 1)])

    def test_floodOneReportPerInterval(self):
        """A flood gives one report per interval, with the count and time span of its refusals."""
        self.refuse(1)
        for second in range(35):  # 35 s of 100 refusals a second
            self.clock.advance(1)
            self.refuse(100)
        self.clock.pump([1] * int(INTERVAL * 2))
        self.assertEqual([t.count for t in self.reports], [1, 900, 1000, 1000, 600])
        self.assertEqual(sum(t.count for t in self.reports), 3501)
        self.assertEqual([(t.first_time, t.last_time) for t in self.reports[1:3]],
                         [(1, 9), (10, 19)])
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the quiet interval ended the series

    def test_afterQuietIntervalAtOnceAgain(self):
        """After an interval without refusals the next one is reported at once again."""
        self.refuse(1)
        self.clock.advance(INTERVAL)
        self.assertEqual(len(self.clock.getDelayedCalls()), 0)
        self.refuse(1)
        self.assertEqual([t.count for t in self.reports], [1, 1])

    def test_portsAndReasonsApart(self):
        """Each port and reason is counted apart."""
        self.refuse(3, port=5555)
        self.refuse(2, port=6666)
        self.refuse(4, port=5555, reason="denied")
        self.clock.advance(INTERVAL)
        self.assertEqual(sorted((t.port, t.reason, t.count) for t in self.reports), [
            (5555, "denied", 1), (5555, "denied", 3), (5555, "no client", 1),
            (5555, "no client", 2), (6666, "no client", 1), (6666, "no client", 1)])

    def test_flushReportsAndStops(self):
        """flush() reports what is counted and leaves no timer; nothing more is reported after."""
        self.refuse(5)
        self.refusals.flush()
        self.assertEqual([t.count for t in self.reports], [1, 4])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(INTERVAL)
        self.assertEqual(len(self.reports), 2)
