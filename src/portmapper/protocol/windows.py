"""
Flow control of one end of a link: what the link has measured, and each
channel's receive window.  Pure objects: bytes counts and times in, credit
out; nothing here sends a frame or knows a socket.

Credit
------
A sender may have at most ``window`` bytes on a channel that the receiver
has not yet given back.  :class:`ReceiveWindow` is the receiver's side: it
checks that the peer stays within the credit it was given (:meth:`take`),
counts the bytes written to the local socket, and says how much credit to
give back (:meth:`release`): in batches of a quarter of the window (at most
``MAX_CREDIT_BATCH``), and at once when a whole window is in.  The owner
holds the credit back while the local socket's write buffer is full.

Autotuning
----------
:class:`LinkEstimate` measures the link's round-trip time (from PING/PONG)
and its bandwidth towards us (from trains of DATA: a window sent in one go
arrives at the speed of the link's slowest hop).  When a receiver takes in a
whole window in under two round trips, the window, not the reader, is what
limits the channel, so the window grows to twice the bandwidth-delay
product, or ``WINDOW_GROWTH`` times larger if that is more, up to
``max_size``.  The next window is then timed from one round trip later,
when the new credit's data can first arrive.  A grown window that sees no
data for a keepalive interval shrinks back to its initial size, by
withholding that much of the credit it would give back next (:meth:`idle`).
"""

DEFAULT_WINDOW = 256 * 1024
MAX_WINDOW = 16 * 1024 * 1024
EARLY_DATA = 16 * 1024  # what an opener may send before OPEN_OK; no window is smaller
WINDOW_GROWTH = 4  # how much larger a window gets, at least, each time it is found too small
MAX_CREDIT_BATCH = 1024 * 1024  # credit goes back in batches of a quarter window, at most this
# The link's bandwidth is measured over trains of DATA: bytes that arrive with
# no gap longer than TRAIN_GAP round trips between them, TRAIN_MIN bytes or more.
TRAIN_GAP = 0.1
TRAIN_MIN = 256 * 1024


def credit_batch(size):
    """
    How much consumed data to gather before giving its credit back: a quarter
    of the window, but no more than MAX_CREDIT_BATCH, so that a large window
    on a slow link does not also wait for a large batch to fill.
    """
    return max(1, min(size // 4, MAX_CREDIT_BATCH))


class LinkEstimate:
    """The link's round-trip time and bandwidth towards us, as measured so far."""

    __slots__ = ("rtt", "round_trips", "_rate", "_old_rate", "_train_start", "_train_last",
                 "_train_bytes")

    def __init__(self):
        self.rtt = None  # seconds, smoothed; None until the first PONG
        self.round_trips = 0  # PONGs measured so far: the peer answered a ping this many times
        # bandwidth (bytes/s): the fastest train seen in this keepalive
        # interval, and what earlier intervals measured (fading)
        self._rate = self._old_rate = 0.0
        self._train_start = self._train_last = None
        self._train_bytes = 0

    def round_trip(self, sample):
        """A PONG came back ``sample`` seconds after its PING."""
        self.rtt = sample if self.rtt is None else 0.75 * self.rtt + 0.25 * sample
        self.round_trips += 1

    def bandwidth(self):
        """Bytes/s towards us (0 when unknown)."""
        return max(self._rate, self._old_rate)

    def arrived(self, n, now):
        """
        ``n`` bytes of DATA arrived at ``now``: time the train they belong to.
        A train of TRAIN_MIN bytes or more measures the bandwidth even while
        the windows, not the link, still limit each channel.
        """
        rtt = self.rtt
        if self._train_last is None or rtt is None or now - self._train_last > TRAIN_GAP * rtt:
            self._train_start = now  # the first chunk's bytes arrived before this moment
            self._train_bytes = 0
        else:
            self._train_bytes += n
            if self._train_bytes >= TRAIN_MIN and now > self._train_start:
                self._rate = max(self._rate, self._train_bytes / (now - self._train_start))
        self._train_last = now

    def fade(self):
        """A keepalive interval passed: the measurement loses half its weight."""
        self._old_rate, self._rate = max(self._rate, self._old_rate / 2), 0.0


class ReceiveWindow:
    """
    One channel's receive window at one end of the link (see the module
    docstring).  ``allowed`` is what the peer may still send.
    """

    __slots__ = ("initial", "max_size", "link", "size", "allowed", "pending", "batch",
                 "debt", "epoch_start", "epoch_bytes", "received", "idle_mark", "grown")

    def __init__(self, initial, max_size, link, now):
        self.initial = initial
        self.max_size = max(initial, max_size)
        self.link = link  # the LinkEstimate shared by the link's channels
        self.size = initial  # the window we aim for
        self.allowed = initial  # credit given minus bytes received
        self.pending = 0  # bytes written locally whose credit is not given back yet
        self.batch = credit_batch(initial)
        self.debt = 0  # credit to withhold, shrinking the window
        self.epoch_start = now  # when the current window began (tuning)
        self.epoch_bytes = 0  # bytes credited since then
        self.received = 0  # bytes taken in, ever
        self.idle_mark = None  # ``received`` at the last keepalive tick
        self.grown = False

    def take(self, n):
        """``n`` bytes arrived and go to the local socket; False if beyond the credit given."""
        self.allowed -= n
        self.pending += n
        self.received += n
        return self.allowed >= 0

    def due(self):
        """True when a batch of credit (or a whole window's) is ready to go back."""
        return self.pending >= self.batch or self.epoch_bytes + self.pending >= self.size

    def release(self, now):
        """The credit to give back now (0 for none), tuning the window as it goes."""
        n = self.pending
        self.pending = 0
        self.epoch_bytes += n
        if self.epoch_bytes >= self.size:
            n += self._tune(now)
        if self.debt:
            withheld = min(self.debt, n)
            self.debt -= withheld
            n -= withheld
        self.allowed += n
        return n

    def _tune(self, now):
        """A whole window has been taken in: grow it if that took under two round trips."""
        elapsed, self.epoch_start = now - self.epoch_start, now
        self.epoch_bytes = 0
        rtt = self.link.rtt
        if rtt is not None and elapsed < 2 * rtt:
            return self.grow(now)
        return 0

    def grow(self, now):
        """
        The window is too small: make it twice the link's bandwidth-delay
        product, or WINDOW_GROWTH times larger if that is more, up to
        ``max_size``.  Returns the credit to add.
        """
        rtt = self.link.rtt
        if rtt is None or self.size >= self.max_size or self.debt:
            return 0
        target = max(self.size * WINDOW_GROWTH, int(2 * self.link.bandwidth() * rtt))
        grow = min(target, self.max_size) - self.size
        self.size += grow
        self.batch = credit_batch(self.size)
        self.grown = True
        # The data of the new credit starts arriving a round trip from now;
        # until then only what the old window let through does.
        self.epoch_start = now + rtt
        self.epoch_bytes = 0
        return grow

    def grow_now(self, now):
        """Grow at once (an opener used all its early data); the credit to give back."""
        grow = self.grow(now)
        self.allowed += grow
        return grow

    def cap(self, size):
        """
        Let the window grow to ``size`` at most (never below its initial
        size) from now on; a larger one shrinks to it as its credit comes back.
        """
        size = max(self.initial, size)
        self.max_size = size
        if self.size > size:
            self.debt += self.size - size
            self.size = size
            self.batch = credit_batch(size)

    def idle(self):
        """
        A keepalive tick: a grown window that saw no data since the last tick
        goes back to its initial size.  True while it is still grown.
        """
        if not self.grown:
            return False
        if self.idle_mark == self.received:
            self.debt += self.size - self.initial
            self.size = self.initial
            self.batch = credit_batch(self.initial)
            self.grown = False
            return False
        self.idle_mark = self.received
        return True
