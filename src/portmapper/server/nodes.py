"""
The server as one node of a cluster: its heartbeat, what it knows of the
other nodes, and asking them for their live state.

Several servers on one PostgreSQL database are the nodes of a cluster,
each named by ``--node-name``.  :class:`Heartbeat`, the service the
server makes as ``server.heartbeat`` (``tap.py`` starts it last, once the
admin API listens, beside the server rather than under it), upserts this
node's row of the store's ``nodes`` table every second (its admin URL,
client port, version, start time and live counts) and reads every node's
back with the age of its last heartbeat, measured by the database's
clock.  A beat that fails is logged once per outage, and the beats go on.
A single server on SQLite is a cluster of one.

:class:`FanOut` asks the other live nodes' admin APIs for the same view at
once (``?scope=cluster`` on ``GET /client_connection`` and ``GET
/channel``), each with a timeout, and says which did not answer.
"""

import json
import urllib.parse

from treq import collect
from twisted.application.internet import TimerService
from twisted.internet.defer import DeferredList, TimeoutError, succeed
from twisted.logger import Logger

log = Logger()

#: Seconds between two heartbeats.
INTERVAL = 1.0

#: A node whose last heartbeat is at most this many seconds old is alive.
ALIVE_WITHIN = 5.0

#: Seconds a node asked by :class:`FanOut` has to answer.
TIMEOUT = 2.0

#: The most of another node's answer :class:`FanOut` reads (the whole list of
#: a busy node's channels is a few MB); a longer one counts as not answered.
MAX_ANSWER = 64 << 20


def listening_url(address, admin_description):
    """
    The URL of an admin API listening on ``address`` (an IPv4Address or
    IPv6Address) by the endpoint ``admin_description``: ``https`` for
    ``ssl:``, else ``http``.  An admin API on every interface (``0.0.0.0``,
    ``::``) is given as the loopback address: a node reachable from others
    on another address says so with ``--node-url``.  Any other address (a
    UNIX socket's) has no URL: None, and the other nodes do not ask this one.
    """
    host = getattr(address, "host", None)
    if host is None:
        return None
    scheme = "https" if admin_description.startswith("ssl:") else "http"
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{address.port}"


class Heartbeat(TimerService):
    """
    This node's heartbeat: every ``interval`` seconds of ``clock``, hand
    ``describe()`` (a dict with the store's ``NODE_KEYS``) to
    ``store.beat`` and keep what it gives back, every node known.  A beat
    is skipped while the one before is still on its way.
    """

    def __init__(self, name, store, clock, describe, interval=INTERVAL):
        super().__init__(interval, self._beat)  # the first beat at start, then one per interval
        self.clock = clock
        self.node = name  # (a service's name is its name among its siblings)
        self._store = store
        self._describe = describe
        self._beating = None  # the Deferred of the beat on its way
        self._failing = False  # the last beat failed: logged, not again until one succeeds
        self._rows = []  # every node, as the last good beat gave them
        self._read = None  # clock time of the last good beat

    # Stopping stops the beats; a beat on its way ends in the store's thread
    # before the store (stopped after this service) closes.

    def _beat(self):
        if self._beating is not None:
            return
        try:
            d = self._store.beat(self._describe())
        except Exception as e:  # a store not running, a bad description: the loop must go on
            self._failed(e)
            return
        self._beating = d
        d.addCallbacks(self._beaten, self._failed)
        d.addBoth(self._done)

    def _done(self, _):
        self._beating = None

    def _beaten(self, rows):
        self._rows, self._read = rows, self.clock.seconds()
        if self._failing:
            self._failing = False
            log.info("node {node}: heartbeat recorded again", node=self.node)

    def _failed(self, why):
        if not self._failing:
            self._failing = True
            log.warn("node {node}: could not record its heartbeat ({why}); trying every"
                     " {interval:g} s, logged again when it succeeds",
                     node=self.node, why=getattr(why, "value", why), interval=self.step)

    def nodes(self):
        """
        Every node known, by name: the dicts the store gave (``NODE_ROW_KEYS``),
        ``heartbeat_age`` brought up to now, and ``alive`` (a heartbeat within
        :data:`ALIVE_WITHIN` seconds).  Empty before the first good beat.
        """
        since = 0.0 if self._read is None else self.clock.seconds() - self._read
        return [{**row, "heartbeat_age": row["heartbeat_age"] + since,
                 "alive": row["heartbeat_age"] + since <= ALIVE_WITHIN} for row in self._rows]


class FanOut:
    """
    Asks other nodes' admin APIs, all at once, with ``http`` (a treq
    HTTPClient, or anything with its ``get``), each answer within
    ``timeout`` seconds of ``clock``; with ``token``, as the admin API
    expects it (``Authorization: Bearer``).
    """

    def __init__(self, http, clock, token=None, timeout=TIMEOUT):
        self._http = http
        self._clock = clock
        self._headers = {} if token is None else {b"Authorization": [b"Bearer " + token]}
        self.timeout = timeout

    def gather(self, nodes, path, args):
        """
        GET ``path`` with the query ``args`` ((name, value) pairs of text) from
        each of ``nodes`` ((name, admin URL) pairs).  Fires with ``(answers,
        unanswered)``: ``{name: (status, JSON body)}`` of the nodes that
        answered with JSON, and the names of the others (refused, timed out,
        not JSON), sorted.  Never fails.
        """
        if not nodes:
            return succeed(({}, []))
        query = urllib.parse.urlencode(args)
        names = [name for name, _ in nodes]
        asked = [self._ask(f"{url.rstrip('/')}{path}{'?' + query if query else ''}")
                 for _, url in nodes]

        def gathered(results):
            answers, unanswered = {}, []
            for name, (ok, result) in zip(names, results):
                if ok:
                    answers[name] = result
                else:
                    unanswered.append(name)
                    log.warn("node {node} did not answer {path}: {why}", node=name, path=path,
                             why=result.getErrorMessage() or type(result.value).__name__)
            return answers, sorted(unanswered)

        return DeferredList(asked, consumeErrors=True).addCallback(gathered)

    def _ask(self, url):
        d = self._http.get(url.encode("utf-8"), headers=self._headers)
        d.addCallback(self._read)
        return d.addTimeout(self.timeout, self._clock, onTimeoutCancel=_timed_out)

    def _read(self, response):
        """``(status, JSON body)`` of ``response``, read up to :data:`MAX_ANSWER` bytes."""
        chunks = []
        size = 0

        def take(data):
            nonlocal size
            size += len(data)
            if size > MAX_ANSWER:
                raise ValueError(f"its answer is over {MAX_ANSWER >> 20} MiB")
            chunks.append(data)

        def parsed(_):
            return response.code, json.loads(b"".join(chunks))

        return collect(response, take).addCallback(parsed)


def _timed_out(result, timeout):
    raise TimeoutError(f"no answer within {timeout:g} s")
