"""
Refused connections, counted: at most one history row and one log line per
public port, reason and interval, however many connections are refused.

A user's connection closed at accept (no client serves the port, an
address not allowed, too many channels) is not a channel: it gets no
channel id and no row of its own.  Otherwise anyone who can reach a
public port could write a row and a log line per connection, pushing
real history out and filling the log.

:class:`Refusals` reports the first refusal of a port and reason at once
(a count of 1, as a lone refusal was always shown), then counts the ones
in the next ``interval`` seconds and reports them together when it ends,
and so on while they go on; an interval with none ends the series.
"""

import attr


@attr.s(slots=True)
class Tally:
    """``count`` connections to ``port`` refused for ``reason`` between
    ``first_time`` and ``last_time``; ``ip:user_port`` is the first one's user."""

    port = attr.ib()
    reason = attr.ib()
    ip = attr.ib()
    user_port = attr.ib()
    first_time = attr.ib()
    last_time = attr.ib()
    count = attr.ib(default=1)


@attr.s(slots=True)
class _Window:
    timer = attr.ib()  # DelayedCall ending the interval
    tally = attr.ib(default=None)  # refusals counted in it so far


class Refusals:
    """Counts refusals per (port, reason) and hands ``report`` one Tally per interval."""

    def __init__(self, clock, interval, report):
        self._clock = clock
        self._interval = interval
        self._report = report
        self._windows = {}  # (port, reason) -> _Window; at most one per mapped port and reason

    def refused(self, port, reason, ip, user_port):
        """A connection from ``ip:user_port`` to ``port`` was refused for ``reason``."""
        now = self._clock.seconds()
        key = (port, reason)
        window = self._windows.get(key)
        if window is None:
            self._windows[key] = _Window(self._clock.callLater(self._interval, self._end, key))
            self._report(Tally(port, reason, ip, user_port, now, now))
        elif window.tally is None:
            window.tally = Tally(port, reason, ip, user_port, now, now)
        else:
            window.tally.count += 1
            window.tally.last_time = now

    def _end(self, key):
        window = self._windows[key]
        if window.tally is None:
            del self._windows[key]
            return
        tally, window.tally = window.tally, None
        window.timer = self._clock.callLater(self._interval, self._end, key)
        self._report(tally)

    def flush(self):
        """Report what is counted now and stop every timer (the server is stopping)."""
        windows, self._windows = self._windows, {}
        for window in windows.values():
            window.timer.cancel()
            if window.tally is not None:
                self._report(window.tally)
