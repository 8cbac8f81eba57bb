"""
Hearing the mapping changes of every server on a shared PostgreSQL.

The PostgreSQL store announces each mapping it writes with a ``NOTIFY`` on
:data:`CHANNEL`, in the write's transaction, with :func:`payload`: the
port, the change's version and the mapping as written (null once deleted).
A :class:`MappingFollower` hears them: it ``LISTEN``s on a connection of
its own, in a thread of its own (psycopg blocks), and hands each change to
the reactor with ``callFromThread``.

Notifications sent while a follower is not connected are lost to it.  So
each time it connects (at start, and again after it lost the database,
trying every ``retry_delay`` seconds), once it listens it reads every
mapping and hands them over as a whole, so that what was missed is made up
for.  Changes committed meanwhile arrive after that reload, in commit
order, so the last word on each port is always the newest.
"""

import json
import os
import threading

from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger()

#: The channel of the mapping announcements.
CHANNEL = "portmapper_mappings"

#: Seconds one wait for notifications lasts before the stop flag is looked at.
POLL = 1.0

LOAD = ("SELECT public_port, target_ip, target_port, tag, policies FROM mappings"
        " ORDER BY public_port")


def payload(public_port, version, mapping):
    """
    The announcement of a change: JSON text of the port, the version and
    ``mapping`` (``(target_ip, target_port, tag, policies)``, or None once
    deleted).  At most 64 networks of policy and a host name: well within
    NOTIFY's 8000 bytes.
    """
    return json.dumps({"port": public_port, "version": version,
                       "mapping": None if mapping is None else list(mapping)})


def parse(text):
    """``(public_port, version, mapping)`` of a :func:`payload` (mapping a tuple or None)."""
    found = json.loads(text)
    mapping = found["mapping"]
    return found["port"], found["version"], None if mapping is None else tuple(mapping)


class MappingFollower:
    """
    Follows :data:`CHANNEL` on connections made by ``connect()`` (psycopg,
    autocommit) in a thread of its own: ``changed(public_port, version,
    mapping)`` for each change, ``reloaded(rows)`` with every mapping
    (``(public_port, target_ip, target_port, tag, policies)``) each time it
    connects.  Both are called in the reactor thread, and not once
    :meth:`stop` is called.  ``lost()`` is called in its thread each time
    it loses the database (or cannot reach it).
    """

    def __init__(self, connect, reactor, changed, reloaded, retry_delay=1.0, poll=POLL,
                 lost=lambda: None):
        self._connect = connect
        self._reactor = reactor
        self._changed = changed
        self._reloaded = reloaded
        self._retry_delay = retry_delay
        self._poll = poll
        self._lost_hook = lost
        #: A channel only this follower listens on: a NOTIFY there ends its wait at once.
        self.wake_channel = f"portmapper_wake_{os.getpid()}_{id(self):x}"
        self._stopping = threading.Event()
        self._stopped = Deferred()
        self._thread = threading.Thread(target=self._run, name="portmapper-follower", daemon=True)
        self._lost = None  # why the database was lost, while it is (reactor thread)

    def start(self):
        self._thread.start()

    def stop(self):
        """Stop (within ``poll`` seconds, at once if woken); fires when the thread has ended."""
        self._stopping.set()
        return self._stopped

    # -- in the thread --------------------------------------------------------

    def _run(self):
        try:
            while not self._stopping.is_set():
                try:
                    self._follow()
                except Exception as e:  # psycopg's mostly; whatever it is, start again
                    self._lost_hook()
                    text = str(e).strip()
                    self._tell(self._disconnected, text.splitlines()[0] if text else repr(e))
                    self._stopping.wait(self._retry_delay)
        finally:
            self._reactor.callFromThread(self._stopped.callback, None)

    def _follow(self):
        with self._connect() as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            conn.execute(f"LISTEN {self.wake_channel}")
            rows = [(*row[:4], json.loads(row[4])) for row in conn.execute(LOAD)]
            self._tell(self._connected, rows)
            while not self._stopping.is_set():
                for notice in conn.notifies(timeout=self._poll):
                    if self._stopping.is_set():
                        return
                    if notice.channel == CHANNEL:
                        self._tell(self._changed, *parse(notice.payload))

    def _tell(self, f, *args):
        self._reactor.callFromThread(self._deliver, f, args)

    # -- in the reactor thread -------------------------------------------------

    def _deliver(self, f, args):
        if self._stopping.is_set():
            return
        try:
            f(*args)
        except Exception:
            log.failure("applying a mapping change from the database failed")

    def _connected(self, rows):
        if self._lost is not None:
            log.info("following mapping changes again: the database is back")
            self._lost = None
        self._reloaded(rows)

    def _disconnected(self, why):
        if self._lost is None:
            log.warn("lost the database, so mapping changes made by other servers are not"
                     " heard until it is back ({why}); trying every {delay:g} s",
                     why=why, delay=self._retry_delay)
        self._lost = why
