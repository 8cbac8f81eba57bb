"""
The SQLite backend of the store: port mappings, closed-channel and client
history, in one SQLite file.

Schema
------
At :meth:`Store.start`, in the store's thread, the file is created or
brought to the current schema version by :func:`.schema.migrate` (new
database in one transaction, each upgrade in one transaction).  A file
that cannot be used (newer than this code, not a database, a failed
upgrade) makes ``start()`` fail with a :class:`.schema.SchemaError`
whose message is one sentence.

Threading
---------
SQLite calls block on the disk, so none of them runs on the reactor thread.
A :class:`Store` owns a private thread pool of exactly one thread; every
database call goes through
``deferToThreadPool(reactor, pool, f, ...)`` and answers with a Deferred.
One thread means one connection (created in, and only ever used by, that
thread, which ``check_same_thread`` enforces) and strict FIFO ordering:
a query submitted after a write sees that write.

Batching
--------
History is written fire-and-forget.  ``record_channel``/``record_client``
append the record dict to an in-memory list and return; that append is the
whole cost on the reactor thread.  The pending rows go to the thread as one
``executemany`` in one transaction, either ``flush_delay`` seconds after the
first pending row (a ``callLater``) or at once when ``batch_size`` rows are
pending.  At most one such automatic write is in flight: rows recorded
meanwhile wait and go together in the next one, so a slow disk makes the
batches bigger rather than queueing work without limit.  If the disk is
stuck, a pending list longer than :attr:`Store.max_pending` loses its
oldest rows, with a warning that says how many.  Queries, ``last_ids`` and
``stop`` first hand over whatever is pending, so they see every record made
before them.

After each write, history older than ``history_max_age`` seconds (by
``close_time``, against ``reactor.seconds()``) or beyond the
``history_max_rows`` newest rows is deleted.  A write that fails (disk
error, bad record) is logged with the number of rows lost; it never raises
into the reactor and later writes go on.

The highest ids ever written are kept in a small table of their own, so
:meth:`Store.last_ids` stays right even after pruning has deleted every row.
"""

import os
import sqlite3

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from portmapper.server.store import schema

log = Logger()

CHANNEL_KEYS = (
    "channel_id", "port", "ip", "user_port", "client_id", "target_ip",
    "target_port", "init_time", "close_time", "recv_bytes", "send_bytes",
    "close_reason",
)
CLIENT_KEYS = (
    "client_id", "ip", "port", "tag", "init_time", "close_time",
    "recv_bytes", "send_bytes", "close_reason",
)

def _insert(table, keys):
    names = ", ".join(keys)
    params = ", ".join(":" + k for k in keys)
    return f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({params})"


INSERT_CHANNEL = _insert("channel_history", CHANNEL_KEYS)
INSERT_CLIENT = _insert("client_history", CLIENT_KEYS)


class Store:
    """
    SQLite storage driven from the reactor, executed in one worker thread.

    Call :meth:`start` before anything else and :meth:`stop` at shutdown.
    Records made while the store is not running wait (bounded) for
    :meth:`start`.
    """

    #: Pending rows of one kind beyond which the oldest are dropped.
    max_pending = 100_000

    #: The query parameter mark of the database's driver.
    PARAM = "?"

    def __init__(self, path, reactor, history_max_rows=100_000,
                 history_max_age=30 * 86400, flush_delay=0.5, batch_size=1000):
        self._path = os.fspath(path)
        self._reactor = reactor
        self._max_rows = history_max_rows
        self._max_age = history_max_age
        self._flush_delay = flush_delay
        self._batch_size = batch_size
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="portmapper-store")
        self._conn = None  # touched only in the worker thread
        self._running = False
        self._stop_waiters = []  # stop() callers while the stop is in progress
        self._channels = []  # pending channel records
        self._clients = []  # pending client records
        self._timer = None  # DelayedCall of the next automatic flush
        self._writing = 0  # history writes handed to the thread, not yet done

    def _defer(self, f, *args):
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    # -- life cycle ----------------------------------------------------------

    def start(self):
        """
        Start the thread; open (or create, or upgrade) the database. Fires
        when ready, or fails with :class:`.schema.SchemaError`; either way,
        :meth:`stop` ends the thread.
        """
        self._pool.start()
        self._running = True
        d = self._defer(self._open)
        d.addCallback(self._opened)
        self._schedule()  # records made before start() queue behind _open
        return d

    def _opened(self, versions):
        found, latest = versions
        if found is None:
            log.info("Created {path} at schema version {version}", path=self._path, version=latest)
        elif found != latest:
            log.info("Upgraded {path} from schema version {found} to {version}",
                     path=self._path, found=found, version=latest)

    def stop(self):
        """Write what is pending, close the database, stop the thread. Idempotent."""
        done = Deferred()
        if self._running:
            self._flush()
            self._running = False
            self._stop_waiters.append(done)
            d = self._defer(self._close)
            d.addErrback(lambda f: log.failure("Could not close {path}", f, path=self._path))
            d.addBoth(self._closed)
        elif self._stop_waiters:
            self._stop_waiters.append(done)
        else:
            done.callback(None)
        return done

    def _closed(self, _):
        # The thread has finished its last job, so this join is immediate.
        self._pool.stop()
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _open(self):
        os.makedirs(os.path.dirname(os.path.abspath(self._path)), exist_ok=True)
        conn = None
        try:
            conn = sqlite3.connect(self._path)
            conn.execute("PRAGMA journal_mode=WAL")
            versions = schema.migrate(_Schema(conn), self._path)
        except BaseException as e:
            if conn is not None:
                conn.close()
            if isinstance(e, sqlite3.Error):
                raise schema.SchemaError(f"Cannot open the database {self._path}: {e}.") from e
            raise
        self._conn = conn
        return versions

    def _close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- mappings ------------------------------------------------------------

    def load_mappings(self):
        """Fire with ``[(public_port, target_ip, target_port, tag), ...]`` by port."""
        return self._defer(self._load_mappings)

    def save_mapping(self, public_port, target_ip, target_port, tag):
        """Insert or replace the mapping of ``public_port``."""
        return self._defer(self._execute, "INSERT OR REPLACE INTO mappings VALUES (?, ?, ?, ?)",
                           (public_port, target_ip, target_port, tag))

    def delete_mapping(self, public_port):
        """Forget the mapping of ``public_port`` (nothing if there is none)."""
        return self._defer(self._execute, "DELETE FROM mappings WHERE public_port = ?",
                           (public_port,))

    def _load_mappings(self):
        return self._conn.execute(
            "SELECT public_port, target_ip, target_port, tag FROM mappings"
            " ORDER BY public_port").fetchall()

    def _execute(self, sql, args):
        with self._conn:
            self._conn.execute(sql, args)

    # -- ids -----------------------------------------------------------------

    def last_ids(self):
        """Fire with ``(highest client_id, highest channel_id)`` ever recorded, 0 if none."""
        self._flush()
        return self._defer(self._last_ids)

    def _last_ids(self):
        ids = dict(self._conn.execute("SELECT name, value FROM last_ids"))
        return ids["client_id"], ids["channel_id"]

    # -- history: recording --------------------------------------------------

    def record_channel(self, record):
        """Queue a closed channel's record (a dict with :data:`CHANNEL_KEYS`)."""
        self._channels.append(record)
        if len(self._channels) > self.max_pending:
            self._drop(self._channels, "channel")
        self._schedule()

    def record_client(self, record):
        """Queue a disconnected client's record (a dict with :data:`CLIENT_KEYS`)."""
        self._clients.append(record)
        if len(self._clients) > self.max_pending:
            self._drop(self._clients, "client")
        self._schedule()

    def _drop(self, rows, kind):
        # Drop a tenth at once so that the cost of the ``del`` is amortised.
        count = len(rows) - self.max_pending * 9 // 10
        del rows[:count]
        log.warn("History database is not keeping up: dropped the {count} oldest"
                 " pending {kind} records", count=count, kind=kind)

    def _schedule(self):
        """Flush now, later, or after the write in flight: whichever applies."""
        if not self._running or self._writing:
            return
        pending = len(self._channels) + len(self._clients)
        if pending >= self._batch_size:
            self._flush()
        elif pending and self._timer is None:
            self._timer = self._reactor.callLater(self._flush_delay, self._flush)

    def _flush(self):
        """Hand every pending record to the thread, as one transaction."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._running or not (self._channels or self._clients):
            return
        channels, self._channels = self._channels, []
        clients, self._clients = self._clients, []
        self._writing += 1
        cutoff = self._reactor.seconds() - self._max_age
        d = self._defer(self._write, channels, clients, cutoff)
        d.addErrback(lambda f: log.failure(
            "Could not write {channels} channel and {clients} client history records"
            " to {path}", f, channels=len(channels), clients=len(clients), path=self._path))
        d.addBoth(self._written)

    def _written(self, _):
        self._writing -= 1
        self._schedule()

    def _write(self, channels, clients, cutoff):
        with self._conn:  # one transaction: commit, or roll back on error
            for rows, insert, table, key in (
                (channels, INSERT_CHANNEL, "channel_history", "channel_id"),
                (clients, INSERT_CLIENT, "client_history", "client_id"),
            ):
                if rows:
                    self._conn.executemany(insert, rows)
                    self._conn.execute(
                        "UPDATE last_ids SET value = max(value, ?) WHERE name = ?",
                        (max(row[key] for row in rows), key))
                self._conn.execute(f"DELETE FROM {table} WHERE close_time < ?", (cutoff,))
                self._conn.execute(
                    f"DELETE FROM {table} WHERE {key} <= (SELECT {key} FROM {table}"
                    f" ORDER BY {key} DESC LIMIT 1 OFFSET ?)", (self._max_rows,))

    # -- history: queries ----------------------------------------------------

    def query_channel_history(self, port=None, client_id=None, channel_id=None,
                              limit=100, before=None):
        """
        Fire with closed-channel records, newest first: dicts with
        :data:`CHANNEL_KEYS`, matching every filter given, ``channel_id <
        before`` if given, at most ``limit`` of them.
        """
        self._flush()
        filters = {"port": port, "client_id": client_id, "channel_id": channel_id}
        return self._defer(self._select, "channel_history", CHANNEL_KEYS, "channel_id",
                           filters, limit, before)

    def query_client_history(self, client_id=None, limit=100, before=None):
        """Like :meth:`query_channel_history`, for disconnected clients (:data:`CLIENT_KEYS`)."""
        self._flush()
        return self._defer(self._select, "client_history", CLIENT_KEYS, "client_id",
                           {"client_id": client_id}, limit, before)

    def _select(self, table, keys, key, filters, limit, before):
        mark = self.PARAM
        where = [f"{column} = {mark}" for column, value in filters.items() if value is not None]
        args = [value for value in filters.values() if value is not None]
        if before is not None:
            where.append(f"{key} < {mark}")
            args.append(before)
        sql = f"SELECT {', '.join(keys)} FROM {table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {key} DESC LIMIT {mark}"
        args.append(limit)
        return [dict(zip(keys, row)) for row in self._conn.execute(sql, args)]


class _Schema:
    """What :func:`.schema.migrate` needs of an SQLite connection."""

    Error = sqlite3.Error

    def __init__(self, conn):
        self._conn = conn

    def tables(self):
        return {name for (name,) in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}

    def rows(self, sql):
        return self._conn.execute(sql).fetchall()

    def transaction(self, script):
        # executescript runs the statements as written, so the script carries
        # its own BEGIN and COMMIT; a failure leaves that transaction open.
        try:
            self._conn.executescript(f"BEGIN;\n{script}\nCOMMIT;")
        except BaseException:
            self._conn.rollback()
            raise
