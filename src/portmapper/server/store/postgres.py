"""
The PostgreSQL backend of the store: the SQLite store's tables, interface
and behaviour (:mod:`.sqlite`), on a database several servers can share.

It is :class:`.sqlite.Store` with the database calls replaced.  Everything
on the reactor side is inherited as it is: the one worker thread (so FIFO
order, a query sees every write made before it), fire-and-forget history
in bounded pending lists written in batches, retention after each write,
``stop`` writing what is pending.  What runs in the thread speaks
PostgreSQL through psycopg 3: one connection, made in the thread at
:meth:`Store.start`, in autocommit mode with an explicit transaction where
several statements must go together.

Schema
------
The files in ``schema/postgres/`` are the twins of SQLite's, in
PostgreSQL's dialect and with the same numbers, brought in by the same
:func:`.schema.migrate`.  It runs under a session advisory lock, so servers
starting together on a new database do not race: one creates it, the others
wait and find it made.  A mapping's port is the primary key of
``mappings``: a port taken by one server is taken for all of them.

Mappings shared live
--------------------
A mapping written by :meth:`Store.insert_mapping` (a plain ``INSERT``: a
port another server took already is :class:`~portmapper.errors.MappingExists`),
:meth:`Store.update_mapping` or :meth:`Store.remove_mapping` (no row is
:class:`~portmapper.errors.UnknownMapping`) is announced, in the same
transaction, by a ``NOTIFY`` on :data:`.notify.CHANNEL` carrying the port,
the mapping as written (or null) and the change's *version*: the WAL insert
position read after the write.  Changes of one port are serialised by its
row's lock, so their versions grow in the order they commit; a server
applies a change only if it is newer than what it has, which makes its own
announcements and stale ones harmless.  :meth:`Store.follow` starts the
:class:`.notify.Follower` that hears them.

Credentials shared live
-----------------------
A credential issued (:meth:`~.sqlite.Store.add_credential`) or revoked
(:meth:`Store.revoke_credential`) is announced the same way, in the same
transaction, on :data:`.notify.CREDENTIALS`, with its row as written; the
same follower hears it.  It needs no version: a credential is issued once
and revoked for good.  Its ``last_used_time`` is not announced (each server
knows when its own clients linked).

The database unreachable
------------------------
If the connection breaks (the database restarted or stopped, the
connection was killed, or went silent: see :data:`DEFAULTS`), the call
that finds out fails with :class:`~portmapper.errors.DatabaseUnavailable`
(one sentence; the admin API answers it with 503), and the next call
connects again.  When the server ended the connection itself, though
(``pg_terminate_backend``, a restart: :func:`ended_by_server`), nothing of
the call was done: it is tried once more at once, on a new connection,
and fails only if that fails too.  A connection cut otherwise may have
lost the answer to a commit that was made, so such a call is not tried
again.  Once the follower has lost the database, the next call
tests the connection first, so that the first write after the database
is back does not fail on a connection that died meanwhile.  History is
not lost meanwhile: a batch that failed so goes back into the pending
lists and is tried again every :attr:`~.sqlite.Store.retry_delay` seconds.

Ids and crash notes
-------------------
:meth:`~.sqlite.Store.reserve_ids` takes its block in one ``UPDATE ...
RETURNING``, so servers reserving at once get blocks that do not overlap.
The open-channel and open-client notes say which node (server) wrote them.
:meth:`~.sqlite.Store.close_lost` at a node's start closes its own notes
and those of a node whose heartbeat is :data:`LOST_AFTER` seconds old,
never a live node's, each at its node's last heartbeat.

Nodes
-----
Each node upserts its row of ``nodes`` every second
(:meth:`~.sqlite.Store.beat`), stamped by the database's clock, and reads
every node's back with its age by that same clock: the nodes' clocks need
not agree.

Messages name the database by its URL without the password.
"""

import json
import threading

import psycopg
from psycopg.conninfo import conninfo_to_dict

from portmapper.errors import DatabaseUnavailable, MappingExists, UnknownMapping
from portmapper.server.store import notify, schema, sqlite
from portmapper.server.store.sqlite import (
    CLIENT_KEYS, NODE_KEYS, NODE_ROW_KEYS, NOTE, OPEN_CHANNEL_KEYS, OPEN_CLIENT_KEYS, REFUSAL_KEYS,
)

MAPPING_KEYS = ("public_port", "target_ip", "target_port", "tag", "policies")

#: Seconds to wait for the database to answer a connection.
CONNECT_TIMEOUT = 10

#: Connection settings (libpq's) that a URL may override: a database gone
#: silent (a network cut, no reset) is found out within about ten seconds,
#: by TCP keepalives on an idle connection and a timeout on unacknowledged
#: sends, instead of leaving a call or the follower waiting for minutes.
DEFAULTS = {"connect_timeout": CONNECT_TIMEOUT, "application_name": "portmapper",
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
            "keepalives_count": 3, "tcp_user_timeout": 10_000}

#: Advisory lock keys (any two numbers no other user of the database takes).
SCHEMA_LOCK = 0x706D_0001  # held while the schema is checked or migrated
PRUNE_LOCK = 0x706D_0002  # held by the one server pruning history at a time


def _upsert(table, keys, values=None):
    """
    An INSERT of ``keys`` that replaces the row with the same first key (SQLite's
    INSERT OR REPLACE): of named parameters, or of the rows of ``values`` (a SELECT).
    """
    names = ", ".join(keys)
    values = values or "VALUES (" + ", ".join(f"%({k})s" for k in keys) + ")"
    updates = ", ".join(f"{k} = EXCLUDED.{k}" for k in keys[1:])
    return (f"INSERT INTO {table} ({names}) {values}"
            f" ON CONFLICT ({keys[0]}) DO UPDATE SET {updates}")


#: The database's clock, seconds since the epoch: the time of every heartbeat.
DB_NOW = "EXTRACT(EPOCH FROM now())::float8"

#: Seconds without a heartbeat after which a node's open notes may be closed
#: by another node starting (a node always closes its own, and those of no node).
LOST_AFTER = 60.0

#: The open notes a node starting closes: see :meth:`Store._close_lost`.
LOST_NOTES = (f"node IN (%(node)s, '') OR node IN (SELECT name FROM nodes"
              f" WHERE heartbeat < {DB_NOW} - %(lost_after)s)")


def _lost(table, keys, history):
    """
    The statement that moves the notes of ``table`` that :data:`LOST_NOTES`
    picks into ``history``, closed at their node's last heartbeat (else at
    the last write).
    """
    closed = ("close_time", "recv_bytes", "send_bytes", "close_reason")
    return _upsert(history, keys + closed,
                   f"SELECT {', '.join('o.' + k for k in keys)},"
                   f" GREATEST(o.init_time, COALESCE(n.heartbeat, %(time)s)), 0, 0, %(reason)s"
                   f" FROM {table} o LEFT JOIN nodes n ON n.name = o.node"
                   f" WHERE {LOST_NOTES}")


UPSERT_MAPPING = _upsert("mappings", MAPPING_KEYS)
INSERT_MAPPING = ("INSERT INTO mappings (public_port, target_ip, target_port, tag, policies)"
                  " VALUES (%(public_port)s, %(target_ip)s, %(target_port)s, %(tag)s, %(policies)s)")
UPDATE_MAPPING = ("UPDATE mappings SET target_ip = %(target_ip)s, target_port = %(target_port)s,"
                  " tag = %(tag)s, policies = %(policies)s WHERE public_port = %(public_port)s")
DELETE_MAPPING = "DELETE FROM mappings WHERE public_port = %(public_port)s"
UPSERT_CHANNEL = _upsert("channel_history", REFUSAL_KEYS)
UPSERT_CLIENT = _upsert("client_history", CLIENT_KEYS)
UPSERT_OPEN_CHANNEL = _upsert("open_channels", OPEN_CHANNEL_KEYS + NOTE)
UPSERT_OPEN_CLIENT = _upsert("open_clients", OPEN_CLIENT_KEYS + NOTE)
UPSERT_NODE = _upsert("nodes", ("name",) + NODE_KEYS + ("heartbeat",),
                      "VALUES (" + ", ".join(f"%({k})s" for k in ("name",) + NODE_KEYS)
                      + f", {DB_NOW})")
LOST_CHANNELS = _lost("open_channels", OPEN_CHANNEL_KEYS, "channel_history")
LOST_CLIENTS = _lost("open_clients", OPEN_CLIENT_KEYS, "client_history")


def describe(url):
    """``url`` as messages name it: ``postgresql://user@host:port/dbname``, no password."""
    info = conninfo_to_dict(url)
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host', '')}{port}/{info.get('dbname', '')}"


def unreachable(error):
    """Whether a psycopg error means the database cannot be reached (not that a query is bad)."""
    state = getattr(error, "sqlstate", None)
    return isinstance(error, psycopg.OperationalError) and (
        state is None or state.startswith(("08", "57P")))  # connection; shutdown


def ended_by_server(error, conn):
    """
    Whether ``error`` says the server ended ``conn`` before the statement
    took effect: ``57P01`` (``pg_terminate_backend``, a fast or smart
    shutdown), which the server sends only between statements or instead
    of finishing one, never after a commit it has not answered.
    """
    return (isinstance(error, psycopg.OperationalError) and conn is not None and conn.closed
            and getattr(error, "sqlstate", None) == "57P01")


def sentence(error):
    """The first line of a psycopg error's message (the rest points into the SQL)."""
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


class Store(sqlite.Store):
    """
    The store on the PostgreSQL database at ``url`` (a ``postgresql://``
    URL, as libpq takes it); otherwise as :class:`.sqlite.Store`.
    """

    PARAM = "%s"

    def __init__(self, url, reactor, **kwargs):
        super().__init__(describe(url), reactor, **kwargs)
        self._conninfo = {**DEFAULTS, **conninfo_to_dict(url)}
        self._follower = None
        self._suspect = threading.Event()  # set when the follower loses the database

    def _defer(self, f, *args):
        return super()._defer(self._call, f, *args)

    def _call(self, f, *args):
        # In the thread.
        try:
            try:
                return self._attempt(f, args)
            except psycopg.OperationalError as e:
                if f == self._close or not ended_by_server(e, self._conn):
                    raise
                return self._attempt(f, args)  # once more, on a new connection
        except psycopg.Error as e:
            if not unreachable(e):
                raise
            raise DatabaseUnavailable(
                f"The database {self._path} is unreachable: {sentence(e)}.") from e

    def _attempt(self, f, args):
        # In the thread: a connection psycopg found broken is replaced first.
        if self._suspect.is_set() and f != self._close:
            self._suspect.clear()
            self._probe()
        if self._conn is not None and self._conn.closed and f != self._close:
            self._conn = self._connect()
        return f(*args)

    def _probe(self):
        # In the thread: the follower lost the database, so this connection may
        # be dead without knowing it yet; a failed probe marks it closed.
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.execute("SELECT 1")
            except psycopg.Error:
                pass

    def _retryable(self, failure):
        return failure.check(DatabaseUnavailable) is not None

    def _connect(self):
        return psycopg.connect(autocommit=True, **self._conninfo)

    def _open(self):
        try:
            conn = self._connect()
        except psycopg.Error as e:
            raise schema.SchemaError(
                f"Cannot connect to the database {self._path}: {sentence(e)}.") from e
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
            versions = schema.migrate(_Schema(conn), self._path, folder="postgres/")
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
        except BaseException as e:
            conn.close()
            if isinstance(e, psycopg.Error):
                raise schema.SchemaError(
                    f"Cannot use the database {self._path}: {sentence(e)}.") from e
            raise
        self._conn = conn
        return versions

    # -- mappings ------------------------------------------------------------

    def save_mapping(self, public_port, target_ip, target_port, tag, policies=None):
        """Insert or replace the mapping of ``public_port``, with its ``policies``."""
        row = dict(zip(MAPPING_KEYS, (public_port, target_ip, target_port, tag,
                                      json.dumps(policies or {}, sort_keys=True))))
        return self._defer(self._execute, UPSERT_MAPPING, row)

    def delete_mapping(self, public_port):
        """Forget the mapping of ``public_port`` (nothing if there is none)."""
        return self._defer(self._execute, "DELETE FROM mappings WHERE public_port = %s",
                           (public_port,))

    def _execute(self, sql, args):
        self._conn.execute(sql, args)  # autocommit: one statement, one transaction

    def insert_mapping(self, public_port, target_ip, target_port, tag, policies=None):
        """Store the new mapping of ``public_port`` and announce it; fire with
        its version, or fail with MappingExists if the port has a mapping."""
        return self._defer(self._write_mapping, INSERT_MAPPING, public_port,
                           (target_ip, target_port, tag, policies or {}))

    def update_mapping(self, public_port, target_ip, target_port, tag, policies=None):
        """Store the changed mapping of ``public_port`` and announce it; fire with
        its version, or fail with UnknownMapping if the port has none."""
        return self._defer(self._write_mapping, UPDATE_MAPPING, public_port,
                           (target_ip, target_port, tag, policies or {}))

    def remove_mapping(self, public_port):
        """Delete the mapping of ``public_port`` and announce it; fire with the
        version, or fail with UnknownMapping if the port has none."""
        return self._defer(self._write_mapping, DELETE_MAPPING, public_port, None)

    def _write_mapping(self, sql, public_port, mapping):
        row = {"public_port": public_port}
        if mapping is not None:
            row.update(zip(MAPPING_KEYS[1:], (*mapping[:3], json.dumps(mapping[3], sort_keys=True))))
        with self._conn.transaction(), self._conn.cursor() as cursor:
            try:
                cursor.execute(sql, row)
            except psycopg.errors.UniqueViolation:
                raise MappingExists(public_port) from None
            if cursor.rowcount == 0:
                raise UnknownMapping(public_port)
            # After the write, under its row lock: later changes of the port read more.
            (version,) = cursor.execute(
                "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint").fetchone()
            cursor.execute("SELECT pg_notify(%s, %s)",
                           (notify.CHANNEL, notify.payload(public_port, version, mapping)))
        return version

    def follow(self, mappings, credentials):
        """
        Start hearing the mapping and credential changes of every server on
        the database (this one's too) on a connection and a thread of their
        own, until :meth:`stop`.  ``mappings`` is ``(changed, reloaded)``:
        ``changed(public_port, version, mapping)``, with ``mapping``
        ``(target_ip, target_port, tag, policies)`` or None, and
        ``reloaded(rows)`` with every mapping as :meth:`load_mappings` gives
        them, with their policies, each time it (re)connects.
        ``credentials`` is ``(changed, reloaded)`` too: ``changed(credential)``
        for each credential issued or revoked, ``reloaded(credentials)``
        with every one, as :meth:`load_credentials` gives them, each time it
        (re)connects (before the mappings).  All are called in the reactor
        thread.
        """
        self._follower = notify.Follower(
            self._connect, self._reactor, mappings, credentials, self.retry_delay,
            lost=self._suspect.set)
        self._follower.start()

    def stop(self):
        """Stop following changes, then as :meth:`.sqlite.Store.stop`."""
        follower, self._follower = self._follower, None
        if follower is None:
            return super().stop()
        if self._running:  # wake the follower's wait on its connection at once
            self._defer(self._execute, "SELECT pg_notify(%s, '')",
                        (follower.wake_channel,)).addErrback(lambda f: None)
        d = follower.stop()
        return d.addCallback(lambda _: super(Store, self).stop())

    # -- credentials -----------------------------------------------------------

    def revoke_credential(self, credential_id):
        """Mark the credential revoked, for good, and announce it."""
        return self._defer(self._announce_credential,
                           "UPDATE credentials SET revoked = 1 WHERE id = %s"
                           f" RETURNING {notify.CREDENTIAL_COLUMNS}", (credential_id,))

    def credential_used(self, credential_id, when):
        """Record that the credential linked a client at ``when``."""
        return self._defer(self._execute,
                           "UPDATE credentials SET last_used_time = %s WHERE id = %s",
                           (when, credential_id))

    def _add_credential(self, name, tag, public_key, created_time):
        return self._announce_credential(
            "INSERT INTO credentials (name, tag, public_key, created_time)"
            f" VALUES (%s, %s, %s, %s) RETURNING {notify.CREDENTIAL_COLUMNS}",
            (name, tag, public_key, created_time))

    def _announce_credential(self, sql, args):
        # The write, and its announcement in the same transaction: its id, or
        # None if no row was written.
        with self._conn.transaction(), self._conn.cursor() as cursor:
            row = cursor.execute(sql, args).fetchone()
            if row is None:
                return None
            found = notify.credential(row)
            cursor.execute("SELECT pg_notify(%s, %s)",
                           (notify.CREDENTIALS, notify.credential_payload(found)))
        return found["credential_id"]

    # -- ids -----------------------------------------------------------------

    def _reserve_ids(self, name, count):
        # One statement, so servers reserving at once each get a block of their own.
        return self._conn.execute(
            "UPDATE id_blocks b SET next_free = GREATEST(b.next_free, l.value + 1) + %s"
            " FROM last_ids l WHERE l.name = b.name AND b.name = %s"
            " RETURNING b.next_free - %s", (count, name, count)).fetchone()[0]

    def _close_lost(self, reason):
        # This node's notes and those of no node (written before nodes were
        # known), and those of a node silent for LOST_AFTER seconds: never a
        # live node's.  now() is the same for every statement of a transaction.
        with self._conn.transaction(), self._conn.cursor() as cursor:
            (last,) = cursor.execute("SELECT time FROM last_write").fetchone()
            args = {"time": last, "reason": reason, "node": self.node, "lost_after": LOST_AFTER}
            closed = []
            for table, move in (("open_channels", LOST_CHANNELS),
                                ("open_clients", LOST_CLIENTS)):
                cursor.execute(move, args)
                closed.append(cursor.rowcount)
                cursor.execute(f"DELETE FROM {table} WHERE {LOST_NOTES}", args)
        return tuple(closed)

    # -- nodes ---------------------------------------------------------------

    def _beat(self, row, now):
        # The database's clock, not the nodes': heartbeats and ages all agree.
        with self._conn.transaction(), self._conn.cursor() as cursor:
            cursor.execute(UPSERT_NODE, row)
            cursor.execute(f"SELECT name, {', '.join(NODE_KEYS)},"
                           f" {DB_NOW} - heartbeat FROM nodes ORDER BY name")
            return [dict(zip(NODE_ROW_KEYS, r)) for r in cursor.fetchall()]

    # -- history -------------------------------------------------------------

    def _write(self, batch):
        with self._conn.transaction(), self._conn.cursor() as cursor:
            for rows, upsert in ((batch.open_channels, UPSERT_OPEN_CHANNEL),
                                 (batch.open_clients, UPSERT_OPEN_CLIENT)):
                if rows:
                    cursor.executemany(upsert, rows)
            channels = [{"count": None, **row} for row in batch.channels]
            for rows, upsert, opened, key in (
                (channels, UPSERT_CHANNEL, "open_channels", "channel_id"),
                (batch.clients, UPSERT_CLIENT, "open_clients", "client_id"),
            ):
                if rows:
                    cursor.executemany(upsert, rows)
                    cursor.executemany(f"DELETE FROM {opened} WHERE {key} = %s",
                                       [(row[key],) for row in rows])
                    cursor.execute("UPDATE last_ids SET value = GREATEST(value, %s)"
                                   " WHERE name = %s", (max(row[key] for row in rows), key))
            # Servers sharing the database prune in turn, not over each other.
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", (PRUNE_LOCK,))
            if cursor.fetchone()[0]:
                for table, key in (("channel_history", "channel_id"),
                                   ("client_history", "client_id")):
                    cursor.execute(f"DELETE FROM {table} WHERE close_time < %s", (batch.cutoff,))
                    cursor.execute(
                        f"DELETE FROM {table} WHERE {key} <= (SELECT {key} FROM {table}"
                        f" ORDER BY {key} DESC LIMIT 1 OFFSET %s)", (self._max_rows,))
                cursor.execute(
                    "DELETE FROM channel_history WHERE count IS NOT NULL AND channel_id <="
                    " (SELECT channel_id FROM channel_history WHERE count IS NOT NULL"
                    " ORDER BY channel_id DESC LIMIT 1 OFFSET %s)", (self._max_refusal_rows,))
            cursor.execute("UPDATE last_write SET time = GREATEST(time, %s)", (batch.now,))


class _Schema:
    """What :func:`.schema.migrate` needs of a PostgreSQL connection."""

    class Error(Exception):
        """A script failed; the message is the first line of PostgreSQL's."""

    def __init__(self, conn):
        self._conn = conn

    def tables(self):
        return {name for (name,) in self._conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}

    def rows(self, sql):
        return self._conn.execute(sql).fetchall()

    def transaction(self, script):
        # A statement with no parameters may hold several, as a script does.
        try:
            with self._conn.transaction():
                self._conn.execute(script)
        except psycopg.Error as e:
            raise self.Error(sentence(e)) from e
