"""
A mapping's ``rate_limit``: MB/s per direction, shared by all its channels.

One :class:`RateLimiter` per limited mapping holds two token buckets, one
for the bytes read from the users (``recv``) and one for the bytes written
to them (``send``), and one timer, driven by the injected clock.  Nothing
is buffered: when a bucket runs dry, the limiter stops the channels of that
direction at their source and lets the windows hold what is in flight:

- ``recv``: it pauses the reading of the users' sockets;
- ``send``: it holds back the channels' credit, so the client stops
  sending (the bytes already in flight, at most a window, still arrive);
  a limited channel's window is kept small and the same on every channel.

A bucket may go into debt (a read is never cut), and the debt is paid
before the direction resumes, so the rate over time is exact.  The
direction resumes, all its channels at once, when the bucket is a quarter
full again: the timer fires then, not once per read.  Each channel reads at most
a small chunk per turn while limited, and a different channel is resumed
first each time, so the channels share the rate.

A channel end joins with :meth:`RateLimiter.add`, which swaps limited
``dataReceived`` and ``deliver`` in for its own: an unlimited mapping's
channels pay nothing on the data path.  The end provides ``holdReading``,
``releaseReading`` and ``holdCredit`` (see ``server/public.py``).
"""

from portmapper.server.meter import MB
from portmapper.transport.tune import READ_SIZE

#: The bucket holds this many seconds of the rate (at least MIN_BURST bytes).
BURST_SECONDS = 0.1
MIN_BURST = 64 * 1024
#: A paused direction resumes when its bucket is this full again: the rest
#: of the bucket takes the timer's lateness on a busy machine.
RESUME_AT = 0.25
#: While limited, a socket read takes at most this many seconds of the rate
#: (between MIN_READ and READ_SIZE bytes), so no channel takes a turn's worth.
READ_SECONDS = 0.005
MIN_READ = 8 * 1024
#: A limited channel's receive window grows no larger (it shrinks to it if
#: it had grown): what arrives once credit is given back is as much on each
#: channel, so they share the send direction fairly.
WINDOW_CAP = 256 * 1024


class _Bucket:
    """One direction's tokens (bytes it may still move), refilled at ``rate`` bytes/s."""

    __slots__ = ("rate", "burst", "tokens", "last", "paused")

    def __init__(self, rate, now):
        self.paused = False
        self.last = now
        self.tokens = 0.0
        self.set_rate(rate)
        self.tokens = self.burst

    def set_rate(self, rate):
        self.rate = rate
        self.burst = max(rate * BURST_SECONDS, MIN_BURST)
        self.tokens = max(-self.burst, min(self.tokens, self.burst))

    def refill(self, now):
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def wait(self):
        """Seconds until the bucket is a quarter full again (its direction resumes then)."""
        return max(0.0, (self.burst * RESUME_AT - self.tokens) / self.rate)


class RateLimiter:
    """``rate`` MB/s per direction for the channel ends added (see the module docstring)."""

    def __init__(self, clock, rate):
        self.clock = clock
        now = clock.seconds()
        self.recv = _Bucket(rate * MB, now)
        self.send = _Bucket(rate * MB, now)
        self.ends = set()
        self._timer = None
        self._turn = 0  # who is resumed first: the first resumed reads first

    @property
    def read_size(self):
        return int(min(READ_SIZE, max(MIN_READ, self.recv.rate * READ_SECONDS)))

    def set_rate(self, rate):
        """Limit to ``rate`` MB/s from now on (a debt is cut to the new bucket's size)."""
        now = self.clock.seconds()
        for bucket in (self.recv, self.send):
            bucket.refill(now)
            bucket.set_rate(rate * MB)
        for end in self.ends:
            end.transport.bufferSize = self.read_size
        self._reschedule()

    def add(self, end):
        """Limit ``end`` (a PublicProtocol) from now on."""
        self.ends.add(end)
        end.transport.bufferSize = self.read_size
        limiter, recv, send = self, self.recv, self.send
        plain_received, plain_deliver = end.dataReceived, end.deliver

        def dataReceived(data):
            plain_received(data)
            recv.tokens -= len(data)
            if recv.tokens < 0 and not recv.paused:
                limiter._took(recv)

        def deliver(data):
            plain_deliver(data)
            # Credit given before the limit applied (a window grown while
            # unlimited) may still bring more than the limited windows can:
            # that burst cannot be refused, and is not owed for either.
            # Debt beyond what the capped windows can have in flight is forgiven.
            send.tokens = max(send.tokens - len(data),
                              -(send.burst + len(limiter.ends) * WINDOW_CAP))
            if send.tokens < 0 and not send.paused:
                limiter._took(send)

        end.dataReceived, end.deliver = dataReceived, deliver
        end.capWindow(WINDOW_CAP)
        for bucket in (recv, send):
            if bucket.paused:
                self._hold(bucket, end, True)

    def remove(self, end):
        """Stop limiting ``end``: it gets its own methods back and is released."""
        if end not in self.ends:
            return
        self.ends.discard(end)
        del end.dataReceived, end.deliver  # the instance's: the class's show again
        end.releaseReading("rate")
        end.holdCredit("rate", False)
        end.capWindow(None)
        if end.transport is not None:
            end.transport.bufferSize = READ_SIZE
        if not self.ends:
            self._cancel()

    def stop(self):
        """The mapping's limit is removed (or the mapping is): release every end."""
        for end in list(self.ends):
            self.remove(end)
        self._cancel()

    # -- the buckets -----------------------------------------------------------------

    def _took(self, bucket):
        """``bucket`` looked empty after a read or a write: refill it; pause its direction if it is."""
        bucket.refill(self.clock.seconds())
        if bucket.tokens >= 0:
            return
        bucket.paused = True
        for end in self.ends:
            self._hold(bucket, end, True)
        self._reschedule()

    def _tick(self):
        self._timer = None
        now = self.clock.seconds()
        for bucket in (self.recv, self.send):
            if not bucket.paused:
                continue
            bucket.refill(now)
            if bucket.tokens >= bucket.burst * RESUME_AT - 1:
                bucket.paused = False
                for end in self._in_turn():
                    self._hold(bucket, end, False)
        self._reschedule()

    def _hold(self, bucket, end, held):
        """Hold (``held``) or release ``end`` in ``bucket``'s direction."""
        if bucket is self.recv:
            (end.holdReading if held else end.releaseReading)("rate")
        else:
            end.holdCredit("rate", held)

    def _in_turn(self):
        """The ends, each time starting with the next one."""
        ends = list(self.ends)
        self._turn += 1
        k = self._turn % len(ends) if ends else 0
        return ends[k:] + ends[:k]

    def _reschedule(self):
        """One timer: for the paused direction that will be ready first."""
        self._cancel()
        waits = [b.wait() for b in (self.recv, self.send) if b.paused]
        if waits:
            self._timer = self.clock.callLater(min(waits), self._tick)

    def _cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
