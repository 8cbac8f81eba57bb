"""
Byte counters and the once-a-second sampler that turns them into speeds.

Counting stays on the data path and costs an integer add per chunk
(``meter.recv_bytes += len(data)``); everything else happens once per tick
in :class:`Sampler`, which walks every live meter.

Units: meters count bytes and bytes per second; the admin API converts to MB
(2**20 bytes) at the edge.
"""

import attr
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

MB = float(2**20)

log = Logger()


@attr.s(slots=True, eq=False)
class Meter:
    """
    Traffic of one connection, from the server's point of view.

    ``recv_*`` is what the server received on that connection, ``send_*``
    what it sent on it.
    """

    created = attr.ib()  # clock.seconds() when the connection began
    recv_bytes = attr.ib(default=0)
    send_bytes = attr.ib(default=0)
    # bytes/s over the last sampling interval
    recv_speed = attr.ib(default=0.0)
    send_speed = attr.ib(default=0.0)
    _last_recv = attr.ib(default=0)
    _last_send = attr.ib(default=0)
    _last_time = attr.ib(default=None)

    def sample(self, now):
        """Update the real-time speeds from the bytes counted since the last sample."""
        last = self._last_time if self._last_time is not None else self.created
        elapsed = now - last
        if elapsed <= 0:
            return
        recv, send = self.recv_bytes, self.send_bytes
        self.recv_speed = (recv - self._last_recv) / elapsed
        self.send_speed = (send - self._last_send) / elapsed
        self._last_recv, self._last_send, self._last_time = recv, send, now

    def age(self, now):
        return max(0.0, now - self.created)

    def recv_average(self, now):
        """Bytes/s received since the connection began."""
        age = self.age(now)
        return self.recv_bytes / age if age > 0 else 0.0

    def send_average(self, now):
        """Bytes/s sent since the connection began."""
        age = self.age(now)
        return self.send_bytes / age if age > 0 else 0.0


class Sampler(Service):
    """
    One ``LoopingCall`` for the whole server: every ``interval`` seconds,
    sample every live meter, then call ``sweep(now)`` if given (the server
    closes the channels past their timeouts there, so that no channel needs
    a timer of its own).

    ``meters`` is a zero-argument callable returning the meters to sample
    now (the registry knows which connections are alive).  A failing tick is
    logged and the loop goes on.  ``observe``, if given, is called with the
    seconds each tick took (by ``clock``), e.g. a Prometheus histogram's.
    """

    def __init__(self, meters, clock, interval=1.0, observe=None, sweep=None):
        self._meters = meters
        self._clock = clock
        self.interval = interval
        self._observe = observe
        self._sweep = sweep
        self._loop = None

    def tick(self):
        now = self._clock.seconds()
        try:
            for meter in self._meters():
                meter.sample(now)
            if self._observe is not None:
                self._observe(self._clock.seconds() - now)
        except Exception:
            log.failure("sampling traffic meters failed; will try again next tick")
        if self._sweep is not None:
            try:
                self._sweep(now)
            except Exception:
                log.failure("closing timed-out channels failed; will try again next tick")

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()
