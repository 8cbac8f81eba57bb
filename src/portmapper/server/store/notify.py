"""
Hearing the mapping and credential changes of every server on a shared
PostgreSQL.

The PostgreSQL store announces each mapping it writes with a ``NOTIFY`` on
:data:`CHANNEL`, in the write's transaction, with :func:`payload`: the
port, the change's version and the mapping as written (null once deleted).
Each credential it issues or revokes it announces the same way on
:data:`CREDENTIALS`, with :func:`credential_payload`: the credential's row
as written.  A :class:`Follower` hears both: it ``LISTEN``s on a connection
of its own, in a thread of its own (psycopg blocks), and hands each change
to the reactor with ``callFromThread``.

Notifications sent while a follower is not connected are lost to it.  So
each time it connects (at start, and again after it lost the database,
trying every ``retry_delay`` seconds), once it listens it reads every
credential and every mapping and hands them over as a whole, so that what
was missed is made up for.  Changes committed meanwhile arrive after that
reload, in commit order, so the last word on each port is always the
newest.  A credential needs no version: it is issued once and revoked for
good, so hearing it again, or late, changes nothing.
"""

import json
import os
import threading

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from portmapper.server.store.sqlite import CREDENTIAL_KEYS

log = Logger()

#: The channel of the mapping announcements.
CHANNEL = "portmapper_mappings"

#: The channel of the credential announcements (issued, revoked).
CREDENTIALS = "portmapper_credentials"

#: Seconds one wait for notifications lasts before the stop flag is looked at.
POLL = 1.0

LOAD = ("SELECT public_port, target_ip, target_port, tag, policies FROM mappings"
        " ORDER BY public_port")

#: A credential's columns, in the order of :data:`.sqlite.CREDENTIAL_KEYS`.
CREDENTIAL_COLUMNS = "id, name, tag, public_key, created_time, last_used_time, revoked"

LOAD_CREDENTIALS = f"SELECT {CREDENTIAL_COLUMNS} FROM credentials ORDER BY id"


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


def credential(row):
    """A row of :data:`CREDENTIAL_COLUMNS` as a dict of :data:`.sqlite.CREDENTIAL_KEYS`."""
    found = dict(zip(CREDENTIAL_KEYS, row))
    return {**found, "public_key": bytes(found["public_key"]), "revoked": bool(found["revoked"])}


def credential_payload(found):
    """
    The announcement of a credential issued or revoked: JSON text of
    ``found`` (a :func:`credential` dict), its public key in hex.  Its name
    and tag are at most 64 characters each: well within NOTIFY's 8000 bytes.
    """
    return json.dumps({**found, "public_key": found["public_key"].hex()})


def parse_credential(text):
    """The :func:`credential` dict of a :func:`credential_payload`."""
    found = json.loads(text)
    return {**found, "public_key": bytes.fromhex(found["public_key"])}


class Follower:
    """
    Follows :data:`CHANNEL` and :data:`CREDENTIALS` on connections made by
    ``connect()`` (psycopg, autocommit) in a thread of its own.
    ``mappings`` is a pair of callables: ``changed(public_port, version,
    mapping)`` for each mapping change, ``reloaded(rows)`` with every
    mapping (``(public_port, target_ip, target_port, tag, policies)``) each
    time it connects.  ``credentials`` is the same pair for credentials:
    ``changed(credential)`` for each one issued or revoked,
    ``reloaded(credentials)`` with every one, revoked ones too (each a
    :func:`credential` dict).  They are called in the reactor thread, and
    not once :meth:`stop` is called; on a connection, the credentials'
    ``reloaded`` first.  ``lost()`` is called in its thread each time it
    loses the database (or cannot reach it).
    """

    def __init__(self, connect, reactor, mappings, credentials, retry_delay=1.0, poll=POLL,
                 lost=lambda: None):
        self._connect = connect
        self._reactor = reactor
        self._mapping_changed, self._mappings_reloaded = mappings
        self._credential_changed, self._credentials_reloaded = credentials
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
            for channel in (CHANNEL, CREDENTIALS, self.wake_channel):
                conn.execute(f"LISTEN {channel}")
            credentials = [credential(row) for row in conn.execute(LOAD_CREDENTIALS)]
            mappings = [(*row[:4], json.loads(row[4])) for row in conn.execute(LOAD)]
            self._tell(self._connected, credentials, mappings)
            while not self._stopping.is_set():
                for notice in conn.notifies(timeout=self._poll):
                    if self._stopping.is_set():
                        return
                    self._hear(notice)

    def _hear(self, notice):
        """Hand one notification over; one this module did not write is logged and skipped."""
        try:
            if notice.channel == CHANNEL:
                change = (self._mapping_changed, *parse(notice.payload))
            elif notice.channel == CREDENTIALS:
                change = (self._credential_changed, parse_credential(notice.payload))
            else:
                return  # the wake-up call
        except (ValueError, KeyError, TypeError) as e:
            log.warn("ignored a malformed notification on {channel}: {why!r}",
                     channel=notice.channel, why=e)
            return
        self._tell(*change)

    def _tell(self, f, *args):
        self._reactor.callFromThread(self._deliver, f, args)

    # -- in the reactor thread -------------------------------------------------

    def _deliver(self, f, args):
        if self._stopping.is_set():
            return
        try:
            f(*args)
        except Exception:
            log.failure("applying a change from the database failed")

    def _connected(self, credentials, mappings):
        if self._lost is not None:
            log.info("following mapping and credential changes again: the database is back")
            self._lost = None
        self._deliver(self._credentials_reloaded, (credentials,))
        self._deliver(self._mappings_reloaded, (mappings,))

    def _disconnected(self, why):
        if self._lost is None:
            log.warn("lost the database, so mapping and credential changes made by other"
                     " servers are not heard until it is back ({why}); trying every {delay:g} s",
                     why=why, delay=self._retry_delay)
        self._lost = why
