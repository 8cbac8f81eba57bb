"""
Alerts: a JSON POST to each ``--webhook`` URL on the events an operator acts on.

The server (``server.webhooks``) calls :meth:`Webhooks.notify` (``client
linked``, ``client lost``), :meth:`Webhooks.no_client` (a mapping asked for
with no client for its tag, at most once per :data:`NO_CLIENT_INTERVAL` per
port) and :meth:`Webhooks.refusals` (a burst of users refused by a policy).
Each URL has its own :class:`_Sink`: a bounded queue (the oldest alert is
dropped when it is full, and the drops are counted in the log), one POST in
flight at a time with a timeout, retried with exponential backoff on a failure or a non-2xx status, then given up.  Nothing here blocks or
raises into the caller: a slow, failing or silent receiver costs the tunnel
at most ``max_queue`` small dicts per URL.

Every body is ``{"event": ..., "time": "<ISO 8601, UTC>", ...fields}``;
``README.rst`` lists the events and their fields.  Times come from the
clock given, so tests drive backoff and rate limits with ``task.Clock``.
"""

import collections
import datetime

from treq import content
from twisted.application.service import Service
from twisted.logger import Logger

from portmapper.transport.web import http_client

log = Logger()

CLIENT_LINKED = "client linked"
CLIENT_LOST = "client lost"
NO_CLIENT = "no client"
REFUSALS = "refusals"

NO_CLIENT_INTERVAL = 60.0  # seconds between two "no client" alerts for one port


class Webhooks(Service):
    """
    Alerts to ``urls`` (none: every call does nothing), posted with ``http``
    (a treq HTTPClient; by default one on ``clock``, which must then be a
    reactor), at most ``max_queue`` waiting per URL, each POST given
    ``timeout`` seconds and ``retries`` more tries ``backoff`` * 2**n seconds
    apart (at most ``max_backoff``).
    """

    def __init__(self, urls, clock, http=None, max_queue=1000, timeout=10.0, retries=5,
                 backoff=1.0, max_backoff=300.0):
        self.clock = clock
        self._http = http
        self._sinks = [_Sink(self, url) for url in urls]
        self.max_queue = max_queue
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._no_client_last = {}  # public port -> clock time of its last "no client" alert

    @property
    def http(self):
        if self._http is None:
            self._http = http_client(self.clock)
        return self._http

    def notify(self, event, **fields):
        """Queue the alert ``event`` with ``fields`` (JSON values) for every URL; never raises."""
        if not self._sinks or not self.running:
            return
        now = self.clock.seconds()
        when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        body = {"event": event, "time": when.isoformat(timespec="seconds"), **fields}
        for sink in self._sinks:
            sink.put(body)

    def no_client(self, port, tag):
        """A user came to ``port`` and no client with ``tag`` was there to carry it."""
        now = self.clock.seconds()
        last = self._no_client_last.get(port)
        if last is not None and now - last < NO_CLIENT_INTERVAL:
            return
        # Ports are at most 65535, but forget the quiet ones anyway.
        for old in [p for p, t in self._no_client_last.items() if now - t >= NO_CLIENT_INTERVAL]:
            del self._no_client_last[old]
        self._no_client_last[port] = now
        self.notify(NO_CLIENT, port=port, tag=tag)

    def refusals(self, port, reason, count):
        """A mapping's policy refused ``count`` users of ``port`` for ``reason`` in a burst
        (the policies' refusal counting decides what a burst is)."""
        self.notify(REFUSALS, port=port, reason=reason, count=count)

    def stopService(self):
        for sink in self._sinks:
            sink.stop()
        return super().stopService()


class _Sink:
    """The queue and the one delivery in flight of one URL."""

    def __init__(self, hooks, url):
        self.hooks = hooks
        self.url = url
        self.queue = collections.deque()
        self.dropped = 0  # alerts dropped since the last one logged
        self.current = None  # the alert being delivered
        self.attempts = 0  # failed tries of the current one
        self._request = None  # the POST in flight
        self._retry = None  # the timer of the next try

    def put(self, body):
        if len(self.queue) >= self.hooks.max_queue:
            self.queue.popleft()
            if not self.dropped:
                log.warn("webhook {url} is behind: dropping its oldest alerts", url=self.url)
            self.dropped += 1
        self.queue.append(body)
        self._next()

    def _next(self):
        if self.current is not None or not self.queue:
            return
        if self.dropped:
            log.warn("webhook {url}: {count} alert(s) dropped while it was behind",
                     url=self.url, count=self.dropped)
            self.dropped = 0
        self.current, self.attempts = self.queue.popleft(), 0
        self._send()

    def _send(self):
        self._retry = None
        hooks = self.hooks
        try:
            d = hooks.http.post(self.url, json=self.current,
                                headers={b"User-Agent": [b"portmapper-webhook"]})
        except Exception as e:  # e.g. a URL the client cannot use
            self._failed(str(e))
            return
        d.addCallback(self._answered)
        d.addTimeout(hooks.timeout, hooks.clock)
        d.addCallbacks(self._done, lambda failure: self._failed(failure.getErrorMessage()))
        self._request = d

    def _answered(self, response):
        # Read (and drop) the body, so the connection is done with.
        return content(response).addCallback(lambda _: response.code)

    def _done(self, code):
        self._request = None
        if 200 <= code < 300:
            self.current = None
            self._next()
        else:
            self._failed(f"HTTP status {code}")

    def _failed(self, why):
        self._request = None
        if self.current is None:  # stopped meanwhile
            return
        hooks = self.hooks
        self.attempts += 1
        if self.attempts > hooks.retries:
            log.warn("webhook {url}: gave up on a {event!r} alert after {tries} tries: {why}",
                     url=self.url, event=self.current["event"], tries=self.attempts, why=why)
            self.current = None
            self._next()
            return
        delay = min(hooks.max_backoff, hooks.backoff * 2 ** (self.attempts - 1))
        log.info("webhook {url} failed ({why}); trying again in {delay:g} s",
                 url=self.url, why=why, delay=delay)
        self._retry = hooks.clock.callLater(delay, self._send)

    def stop(self):
        """Stop delivering: cancel the POST in flight and the next try; drop what waits."""
        waiting = len(self.queue) + (self.current is not None)
        self.current = None
        self.queue.clear()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._request is not None:
            self._request.cancel()
        if waiting:
            log.info("webhook {url}: {count} alert(s) not delivered at stop", url=self.url, count=waiting)
