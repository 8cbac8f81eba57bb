"""
The SQLite backend of the store: port mappings, credentials, closed-channel
and client history, in one SQLite file.

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
oldest rows, with a warning that says how many (:attr:`Store.dropped`
counts them all).  Queries, ``last_ids`` and
``stop`` first hand over whatever is pending, so they see every record made
before them.

After each write, history older than ``history_max_age`` seconds (by
``close_time``, against ``reactor.seconds()``) or beyond the
``history_max_rows`` newest rows is deleted.  A write that fails (disk
error, bad record) is logged with the number of rows lost; it never raises
into the reactor and later writes go on.  A backend whose database can be
unreachable for a while (PostgreSQL) says which failures are worth waiting
out (:meth:`Store._retryable`): the rows of such a failed batch go back,
ahead of the newer ones, into the pending lists (within their bound), and
the next try is :attr:`Store.retry_delay` seconds later, until one
succeeds.  SQLite's never are.

The highest ids ever written are kept in a small table of their own, so
:meth:`Store.last_ids` stays right even after pruning has deleted every row.

Mappings
--------
The server writes its mappings with :meth:`Store.insert_mapping`,
:meth:`Store.update_mapping` and :meth:`Store.remove_mapping`, which fire
with the change's *version*: always 0 here, since only a database several
servers share needs to order their changes.  For the same reason
:meth:`Store.follow` has nothing to follow here (mappings nor credentials).

Crash safety
------------
Ids are handed out from blocks reserved on disk first
(:meth:`Store.reserve_ids`), so no id is given twice even if the server
dies.  ``record_channel_open``/``record_client_open`` note a channel or a
client link when it opens, in the same batches as history; the batch that
records its close deletes the note.  What a server that died left noted
is closed by :meth:`Store.close_lost` at the next start, with the time of
the last batch written before the crash.  Each note carries the store's
``node`` name; SQLite serves one node, so it closes every note, whoever
wrote it (the PostgreSQL store closes only its own node's and dead nodes').
So a ``SIGKILL`` loses at most what was recorded since the last batch,
``flush_delay`` seconds (or the write in flight, if the disk is behind).

Nodes
-----
:meth:`Store.beat` is a node's heartbeat (see ``server/nodes.py``): it
upserts the node's row of ``nodes`` and gives back every node known with
the age of its last heartbeat.  On SQLite that is this node alone, timed
by the reactor's clock.

Refusals
--------
A channel record with a ``count`` (see :data:`REFUSAL_KEYS`) sums up
refused connections.  Such rows are pruned within a tenth of
``history_max_rows`` of their own before the rows of real channels, so
refusals cannot push real history out.
"""

import json
import os
import sqlite3

import attr
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from portmapper.server.store import schema

log = Logger()

#: The version of every mapping change in a store no other server shares.
UNVERSIONED = 0

CHANNEL_KEYS = (
    "channel_id", "port", "ip", "user_port", "client_id", "target_ip",
    "target_port", "init_time", "close_time", "recv_bytes", "send_bytes",
    "close_reason",
)
CLIENT_KEYS = (
    "client_id", "ip", "port", "tag", "init_time", "close_time",
    "recv_bytes", "send_bytes", "close_reason",
)

#: A refusal row: a channel row and how many connections it stands for.
REFUSAL_KEYS = CHANNEL_KEYS + ("count",)
OPEN_CHANNEL_KEYS = (
    "channel_id", "port", "ip", "user_port", "client_id", "target_ip",
    "target_port", "init_time",
)
OPEN_CLIENT_KEYS = ("client_id", "ip", "port", "tag", "init_time")
#: An open note's row: the record and the node that wrote it.
NOTE = ("node",)
#: What a node says of itself at each heartbeat (:meth:`Store.beat`).
NODE_KEYS = ("admin_url", "client_port", "version", "started_time", "clients", "channels")
#: A node as :meth:`Store.beat` gives it back.
NODE_ROW_KEYS = ("name",) + NODE_KEYS + ("heartbeat_age",)
CREDENTIAL_KEYS = (
    "credential_id", "name", "tag", "public_key", "created_time", "last_used_time", "revoked",
)


def _insert(table, keys):
    names = ", ".join(keys)
    params = ", ".join(":" + k for k in keys)
    return f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({params})"


INSERT_CHANNEL = _insert("channel_history", CHANNEL_KEYS)
INSERT_CLIENT = _insert("client_history", CLIENT_KEYS)
INSERT_COUNTED = _insert("channel_history", REFUSAL_KEYS)
INSERT_OPEN_CHANNEL = _insert("open_channels", OPEN_CHANNEL_KEYS + NOTE)
INSERT_OPEN_CLIENT = _insert("open_clients", OPEN_CLIENT_KEYS + NOTE)
INSERT_NODE = _insert("nodes", ("name",) + NODE_KEYS + ("heartbeat",))


def _lost(table, keys, history):
    """The statement that moves every row of ``table`` into ``history``, closed."""
    return (f"INSERT OR REPLACE INTO {history} ({', '.join(keys)}, close_time, recv_bytes,"
            f" send_bytes, close_reason) SELECT {', '.join(keys)}, max(init_time, :time), 0, 0,"
            f" :reason FROM {table}")


LOST_CHANNELS = _lost("open_channels", OPEN_CHANNEL_KEYS, "channel_history")
LOST_CLIENTS = _lost("open_clients", OPEN_CLIENT_KEYS, "client_history")


@attr.s(slots=True)
class _Batch:
    """What one write hands to the thread: records, and the times it writes with."""

    now = attr.ib()  # reactor time of the write: the last time known alive
    cutoff = attr.ib()  # rows closed before this are too old
    channels = attr.ib(factory=list)
    clients = attr.ib(factory=list)
    open_channels = attr.ib(factory=list)
    open_clients = attr.ib(factory=list)
    # Records Store._queue added: what decides when to flush, counted as they
    # come rather than summed at each one.  Rows a failed write puts back are
    # not counted: a retry is due, and it takes them all.
    queued = attr.ib(default=0)

    def __len__(self):
        return (len(self.channels) + len(self.clients) + len(self.open_channels)
                + len(self.open_clients))


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

    #: Seconds between tries to write history whose write could be retried.
    retry_delay = 1.0

    def __init__(self, path, reactor, history_max_rows=100_000,
                 history_max_age=30 * 86400, flush_delay=0.5, batch_size=1000, node=""):
        self._path = os.fspath(path)
        self.node = node  # this server's node name: on its open notes and its heartbeat
        self._reactor = reactor
        self._max_rows = history_max_rows
        self._max_refusal_rows = max(1, history_max_rows // 10)
        self._max_age = history_max_age
        self._flush_delay = flush_delay
        self._batch_size = batch_size
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="portmapper-store")
        self._conn = None  # touched only in the worker thread
        self._running = False
        self._stop_waiters = []  # stop() callers while the stop is in progress
        self._pending = _Batch(None, None)  # records not yet handed to the thread
        self._timer = None  # DelayedCall of the next automatic flush
        self._writing = 0  # history writes handed to the thread, not yet done
        self._retry = None  # DelayedCall of the next try after a failure worth retrying
        self._unreachable = None  # why the last write failed in a way worth retrying
        self.dropped = 0  # history records dropped because the pending lists were full

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

    def save_mapping(self, public_port, target_ip, target_port, tag, policies=None):
        """Insert or replace the mapping of ``public_port``, with its ``policies``
        (a dict of name -> text, as the admin API takes them)."""
        return self._defer(
            self._execute,
            "INSERT OR REPLACE INTO mappings (public_port, target_ip, target_port, tag, policies)"
            " VALUES (?, ?, ?, ?, ?)",
            (public_port, target_ip, target_port, tag, json.dumps(policies or {}, sort_keys=True)))

    def load_policies(self):
        """Fire with ``{public_port: {name: text}}`` for the mappings that have policies."""
        return self._defer(self._load_policies)

    def _load_policies(self):
        rows = self._conn.execute("SELECT public_port, policies FROM mappings WHERE policies != '{}'")
        return {port: json.loads(text) for port, text in rows}

    def delete_mapping(self, public_port):
        """Forget the mapping of ``public_port`` (nothing if there is none)."""
        return self._defer(self._execute, "DELETE FROM mappings WHERE public_port = ?",
                           (public_port,))

    def insert_mapping(self, public_port, target_ip, target_port, tag, policies=None):
        """Store the new mapping of ``public_port``; fire with the change's version."""
        d = self.save_mapping(public_port, target_ip, target_port, tag, policies)
        return d.addCallback(lambda _: UNVERSIONED)

    def update_mapping(self, public_port, target_ip, target_port, tag, policies=None):
        """Store the changed mapping of ``public_port``; fire with the change's version."""
        d = self.save_mapping(public_port, target_ip, target_port, tag, policies)
        return d.addCallback(lambda _: UNVERSIONED)

    def remove_mapping(self, public_port):
        """Forget the mapping of ``public_port``; fire with the change's version."""
        return self.delete_mapping(public_port).addCallback(lambda _: UNVERSIONED)

    def follow(self, mappings, credentials):
        """
        Have the ``(changed, reloaded)`` pairs ``mappings`` and
        ``credentials`` called for every mapping and credential change
        other servers make, and with every one when they may have been
        missed.  No other server writes this database, so there is nothing
        to follow.
        """

    def _load_mappings(self):
        return self._conn.execute(
            "SELECT public_port, target_ip, target_port, tag FROM mappings"
            " ORDER BY public_port").fetchall()

    def _execute(self, sql, args):
        with self._conn:
            self._conn.execute(sql, args)

    # -- credentials -----------------------------------------------------------
    # Only public keys are stored (see upgrade-3.sql); ids come from SQLite's
    # AUTOINCREMENT, so a revoked credential's id is never handed out again.

    def load_credentials(self):
        """Fire with every credential, revoked ones too: dicts with :data:`CREDENTIAL_KEYS`, by id."""
        return self._defer(self._load_credentials)

    def add_credential(self, name, tag, public_key, created_time):
        """Store a new credential; fire with its id."""
        return self._defer(self._add_credential, name, tag, public_key, created_time)

    def revoke_credential(self, credential_id):
        """Mark the credential revoked, for good."""
        return self._defer(self._execute, "UPDATE credentials SET revoked = 1 WHERE id = ?",
                           (credential_id,))

    def credential_used(self, credential_id, when):
        """Record that the credential linked a client at ``when``."""
        return self._defer(self._execute, "UPDATE credentials SET last_used_time = ? WHERE id = ?",
                           (when, credential_id))

    def _load_credentials(self):
        rows = self._conn.execute(
            "SELECT id, name, tag, public_key, created_time, last_used_time, revoked"
            " FROM credentials ORDER BY id")
        return [dict(zip(CREDENTIAL_KEYS, (*row[:3], bytes(row[3]), *row[4:6], bool(row[6]))))
                for row in rows]

    def _add_credential(self, name, tag, public_key, created_time):
        with self._conn:
            cursor = self._conn.execute(
                "INSERT INTO credentials (name, tag, public_key, created_time) VALUES (?, ?, ?, ?)",
                (name, tag, public_key, created_time))
        return cursor.lastrowid

    # -- ids -----------------------------------------------------------------

    def last_ids(self):
        """Fire with ``(highest client_id, highest channel_id)`` ever recorded, 0 if none."""
        self._flush()
        return self._defer(self._last_ids)

    def _last_ids(self):
        ids = dict(self._conn.execute("SELECT name, value FROM last_ids"))
        return ids["client_id"], ids["channel_id"]

    def reserve_ids(self, name, count):
        """
        Reserve ``count`` ids of kind ``name`` (``client_id`` or
        ``channel_id``) on disk; fire with the first one, once committed.
        Ids reserved are never given by another call, in this run or any
        later one, and are above any id recorded in history.
        """
        return self._defer(self._reserve_ids, name, count)

    def _reserve_ids(self, name, count):
        with self._conn:
            (next_free,) = self._conn.execute(
                "SELECT max(b.next_free, l.value + 1) FROM id_blocks b JOIN last_ids l"
                " ON l.name = b.name WHERE b.name = ?", (name,)).fetchone()
            self._conn.execute("UPDATE id_blocks SET next_free = ? WHERE name = ?",
                               (next_free + count, name))
        return next_free

    def close_lost(self, reason):
        """
        Close, with ``reason``, the channels and client links noted open by a
        server that died (none after a clean stop): each gets the time of
        that server's last batch as its close time and no traffic.  Fires
        with ``(channels, clients)``, how many were closed.  Call it at
        start, before anything new is recorded.
        """
        return self._defer(self._close_lost, reason)

    def _close_lost(self, reason):
        with self._conn:
            (last,) = self._conn.execute("SELECT time FROM last_write").fetchone()
            closed = []
            for table, move in (("open_channels", LOST_CHANNELS),
                                ("open_clients", LOST_CLIENTS)):
                closed.append(self._conn.execute(move, {"time": last, "reason": reason}).rowcount)
                self._conn.execute(f"DELETE FROM {table}")
        return tuple(closed)

    # -- nodes ---------------------------------------------------------------
    # SQLite serves one node: its row is the only one it writes or reads back.

    def beat(self, info):
        """
        This node's heartbeat: upsert its row (``info``, a dict with
        :data:`NODE_KEYS`), stamped with the time now; fire with every node
        known, dicts with :data:`NODE_ROW_KEYS` (``heartbeat_age``: seconds
        since that node's last heartbeat), by name.
        """
        return self._defer(self._beat, {**info, "name": self.node}, self._reactor.seconds())

    def _beat(self, row, now):
        with self._conn:
            self._conn.execute(INSERT_NODE, {**row, "heartbeat": now})
        rows = self._conn.execute(
            f"SELECT name, {', '.join(NODE_KEYS)}, ? - heartbeat FROM nodes WHERE name = ?",
            (now, self.node))
        return [dict(zip(NODE_ROW_KEYS, row)) for row in rows]

    # -- history: recording --------------------------------------------------

    def record_channel(self, record):
        """Queue a closed channel's record (a dict with :data:`CHANNEL_KEYS`; a
        refusal row also has ``count``); it ends the channel's open note."""
        self._queue(self._pending.channels, record, "channel")

    def record_client(self, record):
        """Queue a disconnected client's record (a dict with :data:`CLIENT_KEYS`);
        it ends the client's open note."""
        self._queue(self._pending.clients, record, "client")

    def record_channel_open(self, record):
        """Note a channel that has opened (a dict with :data:`OPEN_CHANNEL_KEYS`)."""
        self._queue(self._pending.open_channels, {**record, "node": self.node}, "open channel")

    def record_client_open(self, record):
        """Note a client link that has opened (a dict with :data:`OPEN_CLIENT_KEYS`)."""
        self._queue(self._pending.open_clients, {**record, "node": self.node}, "open client")

    def _queue(self, rows, record, kind):
        rows.append(record)
        self._pending.queued += 1
        if len(rows) > self.max_pending:
            self._drop(rows, kind)
        self._schedule()

    def _drop(self, rows, kind):
        # Drop a tenth at once so that the cost of the ``del`` is amortised.
        count = len(rows) - self.max_pending * 9 // 10
        del rows[:count]
        self.dropped += count
        log.warn("History database is not keeping up: dropped the {count} oldest"
                 " pending {kind} records", count=count, kind=kind)

    def _schedule(self):
        """Flush now, later, or after the write in flight: whichever applies."""
        if not self._running or self._writing or self._retry is not None:
            return
        pending = self._pending.queued
        if pending >= self._batch_size:
            self._flush()
        elif pending and self._timer is None:
            self._timer = self._reactor.callLater(self._flush_delay, self._flush)

    def _flush(self):
        """Hand every pending record to the thread, as one transaction."""
        for timer in (self._timer, self._retry):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._retry = None
        if not self._running or not len(self._pending):
            return
        now = self._reactor.seconds()
        batch, self._pending = self._pending, _Batch(None, None)
        batch.now, batch.cutoff = now, now - self._max_age
        self._writing += 1
        d = self._defer(self._write, batch)
        d.addCallbacks(self._wrote, self._write_failed, errbackArgs=(batch,))
        d.addBoth(self._written)

    def _wrote(self, _):
        if self._unreachable is not None:
            self._unreachable = None
            log.info("{path} is reachable again: the history that waited for it is written"
                     " ({dropped} record(s) dropped since this server started, for want of room)",
                     path=self._path, dropped=self.dropped)

    def _write_failed(self, failure, batch):
        if not (self._running and self._retryable(failure)):
            log.failure("Could not write {channels} channel and {clients} client history records"
                        " to {path}", failure, channels=len(batch.channels),
                        clients=len(batch.clients), path=self._path)
            return
        for kind, rows in (("channel", "channels"), ("client", "clients"),
                           ("open channel", "open_channels"), ("open client", "open_clients")):
            merged = getattr(batch, rows) + getattr(self._pending, rows)  # oldest first
            if len(merged) > self.max_pending:
                self._drop(merged, kind)
            setattr(self._pending, rows, merged)
        if self._unreachable is None:
            log.warn("{why} History waits in memory (at most {bound} records of each kind)"
                     " and is written when the database is back; trying every {delay:g} s.",
                     why=str(failure.value), bound=self.max_pending, delay=self.retry_delay)
        self._unreachable = str(failure.value)
        self._retry = self._reactor.callLater(self.retry_delay, self._flush)

    @property
    def unreachable(self):
        """Why the last history write failed in a way worth retrying (the
        database is unreachable), or None once one has succeeded since."""
        return self._unreachable

    def _retryable(self, failure):
        """Whether a history write that failed so should be tried again (never, for SQLite)."""
        return False

    def _written(self, _):
        self._writing -= 1
        self._schedule()

    def _write(self, batch):
        conn = self._conn
        with conn:  # one transaction: commit, or roll back on error
            conn.executemany(INSERT_OPEN_CHANNEL, batch.open_channels)
            conn.executemany(INSERT_OPEN_CLIENT, batch.open_clients)
            channels = [{"count": None, **row} for row in batch.channels]
            for rows, insert, table, opened, key in (
                (channels, INSERT_COUNTED, "channel_history", "open_channels", "channel_id"),
                (batch.clients, INSERT_CLIENT, "client_history", "open_clients", "client_id"),
            ):
                if rows:
                    conn.executemany(insert, rows)
                    conn.executemany(f"DELETE FROM {opened} WHERE {key} = ?",
                                     [(row[key],) for row in rows])
                    conn.execute(
                        "UPDATE last_ids SET value = max(value, ?) WHERE name = ?",
                        (max(row[key] for row in rows), key))
                conn.execute(f"DELETE FROM {table} WHERE close_time < ?", (batch.cutoff,))
                conn.execute(
                    f"DELETE FROM {table} WHERE {key} <= (SELECT {key} FROM {table}"
                    f" ORDER BY {key} DESC LIMIT 1 OFFSET ?)", (self._max_rows,))
            conn.execute(
                "DELETE FROM channel_history WHERE count IS NOT NULL AND channel_id <="
                " (SELECT channel_id FROM channel_history WHERE count IS NOT NULL"
                " ORDER BY channel_id DESC LIMIT 1 OFFSET ?)", (self._max_refusal_rows,))
            conn.execute("UPDATE last_write SET time = max(time, ?)", (batch.now,))

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
        d = self._defer(self._select, "channel_history", REFUSAL_KEYS, "channel_id",
                        filters, limit, before)
        return d.addCallback(_without_empty_count)

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


def _without_empty_count(rows):
    """Channel rows as the API shows them: ``count`` only on refusal rows."""
    for row in rows:
        if row["count"] is None:
            del row["count"]
    return rows


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
