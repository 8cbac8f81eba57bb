"""
Tests for L{portmapper.server.store}: SQLite storage run in a worker thread,
and its versioned schema.

These use the real reactor (the worker thread reports back through
C{callFromThread}) and wait on Deferreds, never on sleeps.  Where time
matters, L{ClockedReactor} keeps the real reactor's threads but reads time
and schedules calls on a L{task.Clock}.
"""

import os
import sqlite3
import threading
import zipfile
from importlib.resources import files

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from portmapper.server.store import CHANNEL_KEYS, CLIENT_KEYS, Store, schema
from portmapper.server.store.schema import SchemaError
from portmapper.server.store.sqlite import INSERT_CHANNEL, INSERT_CLIENT, OPEN_CHANNEL_KEYS
from tests import test_tap

# Records closed recently enough for the default retention against the real
# reactor's clock (a whole number, so that expected records compare equal).
NOW = float(int(reactor.seconds()))


class ClockedReactor:
    """The real reactor for threads, a L{task.Clock} for time."""

    def __init__(self, now=0.0):
        self.clock = task.Clock()
        self.clock.advance(now)

    def callLater(self, *args, **kwargs):
        return self.clock.callLater(*args, **kwargs)

    def seconds(self):
        return self.clock.seconds()

    def callFromThread(self, f, *args, **kwargs):
        return reactor.callFromThread(f, *args, **kwargs)


def channel(channel_id, **fields):
    """A closed-channel record with every key, overridable."""
    record = {
        "channel_id": channel_id, "port": 5555, "ip": "192.168.184.1",
        "user_port": 57984, "client_id": 1, "target_ip": "192.168.10.15",
        "target_port": 6666, "init_time": NOW - 8.5, "close_time": NOW - 0.25,
        "recv_bytes": 3721, "send_bytes": 10587, "close_reason": "user closed",
    }
    record.update(fields)
    return record


def client(client_id, **fields):
    """A disconnected-client record with every key, overridable."""
    record = {
        "client_id": client_id, "ip": "10.0.0.7", "port": 40000, "tag": "default",
        "init_time": NOW - 1000.0, "close_time": NOW - 0.5, "recv_bytes": 123,
        "send_bytes": 4567, "close_reason": "client lost",
    }
    record.update(fields)
    return record


class StoreCase(unittest.TestCase):
    """A database path of its own, and ways to open a Store on it."""

    #: What the driver raises for a record it cannot write.
    ProgrammingError = sqlite3.ProgrammingError

    def setUp(self):
        self.path = os.path.join(self.mktemp(), "data", "portmapper.sqlite3")

    def make(self, clock=None, **kwargs):
        """A Store (not started) on self.path."""
        return Store(self.path, clock or reactor, **kwargs)

    @inlineCallbacks
    def open(self, clock=None, **kwargs):
        """Start a Store on self.path (stopped at cleanup); return it."""
        store = self.make(clock, **kwargs)
        self.addCleanup(store.stop)
        yield store.start()
        return store

    @inlineCallbacks
    def refused(self):
        """Start a Store on self.path that must fail; return the SchemaError's message."""
        store = self.make()
        self.addCleanup(store.stop)
        error = yield self.assertFailure(store.start(), SchemaError)
        return str(error)


class StoreTests(StoreCase):

    @inlineCallbacks
    def test_mappings_round_trip(self):
        """Mappings are saved, replaced, deleted, loaded by port, and survive a reopen."""
        store = yield self.open()
        self.assertEqual((yield store.load_mappings()), [])
        yield store.save_mapping(6000, "10.0.0.1", 22, "a")
        yield store.save_mapping(5433, "192.168.10.15", 6666, "tag10")
        yield store.save_mapping(7000, "db.local", 5432, "default")
        yield store.save_mapping(6000, "10.0.0.2", 2222, "b")  # replaces
        yield store.delete_mapping(7000)
        yield store.delete_mapping(9999)  # unknown: no error
        expected = [(5433, "192.168.10.15", 6666, "tag10"), (6000, "10.0.0.2", 2222, "b")]
        self.assertEqual((yield store.load_mappings()), expected)
        yield store.stop()

        again = yield self.open()
        self.assertEqual((yield again.load_mappings()), expected)

    @inlineCallbacks
    def test_channel_record_exact(self):
        """A channel record comes back with exactly its keys, values and types."""
        store = yield self.open()
        full = channel(7)
        bare = channel(8, client_id=None, target_ip=None, target_port=None,
                       close_reason="no client", recv_bytes=0, send_bytes=0)
        store.record_channel(dict(full))
        store.record_channel(dict(bare))
        rows = yield store.query_channel_history()
        self.assertEqual(rows, [bare, full])
        for row in rows:
            self.assertEqual(set(row), set(CHANNEL_KEYS))
            self.assertIsInstance(row["init_time"], float)
            self.assertIsInstance(row["close_time"], float)
            self.assertIsInstance(row["recv_bytes"], int)

    @inlineCallbacks
    def test_channel_filters(self):
        """Channel history is newest first and filters by port, client_id, channel_id, combined."""
        store = yield self.open()
        for i in range(1, 11):
            store.record_channel(channel(i, port=5000 + i % 2, client_id=i % 3))
        rows = yield store.query_channel_history()
        self.assertEqual([r["channel_id"] for r in rows], list(range(10, 0, -1)))

        rows = yield store.query_channel_history(port=5001)
        self.assertEqual([r["channel_id"] for r in rows], [9, 7, 5, 3, 1])
        rows = yield store.query_channel_history(client_id=0)
        self.assertEqual([r["channel_id"] for r in rows], [9, 6, 3])
        rows = yield store.query_channel_history(channel_id=4)
        self.assertEqual(rows, [channel(4, port=5000, client_id=1)])
        rows = yield store.query_channel_history(port=5000, client_id=1)
        self.assertEqual([r["channel_id"] for r in rows], [10, 4])
        rows = yield store.query_channel_history(port=5000, channel_id=3)
        self.assertEqual(rows, [])

    @inlineCallbacks
    def test_channel_paging(self):
        """limit and before page through the history with no gap and no repeat."""
        store = yield self.open()
        for i in range(1, 11):
            store.record_channel(channel(i, port=5000 + i % 2))
        rows = yield store.query_channel_history(limit=3)
        self.assertEqual([r["channel_id"] for r in rows], [10, 9, 8])
        rows = yield store.query_channel_history(before=8, limit=3)
        self.assertEqual([r["channel_id"] for r in rows], [7, 6, 5])

        seen, before = [], None
        while True:
            page = yield store.query_channel_history(port=5000, limit=2, before=before)
            if not page:
                break
            self.assertLessEqual(len(page), 2)
            seen += [r["channel_id"] for r in page]
            before = page[-1]["channel_id"]
        self.assertEqual(seen, [10, 8, 6, 4, 2])

    @inlineCallbacks
    def test_client_history(self):
        """Client records come back exactly, newest first, with client_id, before and limit."""
        store = yield self.open()
        for i in range(1, 6):
            store.record_client(client(i, tag=f"t{i}"))
        rows = yield store.query_client_history()
        self.assertEqual(rows, [client(i, tag=f"t{i}") for i in range(5, 0, -1)])
        self.assertEqual(set(rows[0]), set(CLIENT_KEYS))
        self.assertEqual((yield store.query_client_history(client_id=3)), [client(3, tag="t3")])
        rows = yield store.query_client_history(before=4, limit=2)
        self.assertEqual([r["client_id"] for r in rows], [3, 2])

    @inlineCallbacks
    def test_last_ids(self):
        """last_ids is (0, 0) when empty, sees unflushed records and survives a reopen."""
        store = yield self.open(flush_delay=60)
        self.assertEqual((yield store.last_ids()), (0, 0))
        store.record_client(client(4))
        store.record_client(client(2))
        store.record_channel(channel(17))
        store.record_channel(channel(9))
        self.assertEqual((yield store.last_ids()), (4, 17))
        yield store.stop()

        again = yield self.open()
        self.assertEqual((yield again.last_ids()), (4, 17))

    @inlineCallbacks
    def test_last_ids_outlive_pruning(self):
        """last_ids still reports the highest ids after retention deleted every row."""
        clock = ClockedReactor(now=10_000)
        store = yield self.open(clock, history_max_age=100)
        store.record_channel(channel(5, close_time=9_950.0))
        store.record_client(client(3, close_time=9_950.0))
        self.assertEqual(len((yield store.query_channel_history())), 1)
        clock.clock.advance(1000)
        store.record_channel(channel(6, close_time=100.0))  # already too old
        self.assertEqual((yield store.query_channel_history()), [])
        self.assertEqual((yield store.query_client_history()), [])
        self.assertEqual((yield store.last_ids()), (3, 6))

    @inlineCallbacks
    def test_retention_by_rows(self):
        """Only the history_max_rows newest channel and client rows are kept."""
        store = yield self.open(history_max_rows=5)
        for i in range(1, 13):
            store.record_channel(channel(i))
            store.record_client(client(i))
        rows = yield store.query_channel_history()
        self.assertEqual([r["channel_id"] for r in rows], [12, 11, 10, 9, 8])
        rows = yield store.query_client_history()
        self.assertEqual([r["client_id"] for r in rows], [12, 11, 10, 9, 8])

    @inlineCallbacks
    def test_retention_by_age(self):
        """Rows closed more than history_max_age seconds before reactor.seconds() are dropped."""
        clock = ClockedReactor(now=1_000)
        store = yield self.open(clock, history_max_age=100)
        store.record_channel(channel(1, close_time=850.0))
        store.record_channel(channel(2, close_time=950.0))
        store.record_client(client(1, close_time=899.0))
        store.record_client(client(2, close_time=901.0))
        rows = yield store.query_channel_history()
        self.assertEqual([r["channel_id"] for r in rows], [2])
        rows = yield store.query_client_history()
        self.assertEqual([r["client_id"] for r in rows], [2])

        clock.clock.advance(60)  # now 1060: channel 2 (950) is too old
        store.record_channel(channel(3, close_time=1_050.0))
        rows = yield store.query_channel_history()
        self.assertEqual([r["channel_id"] for r in rows], [3])

    @inlineCallbacks
    def test_delayed_flush(self):
        """Records wait flush_delay seconds after the first one, then go to the thread."""
        clock = ClockedReactor()
        store = yield self.open(clock, flush_delay=5)
        store.record_channel(channel(1))
        clock.clock.advance(1)
        store.record_channel(channel(2))
        [call] = clock.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 5)
        clock.clock.advance(3.9)
        self.assertEqual(len(store._pending.channels), 2)
        clock.clock.advance(0.1)
        self.assertEqual(store._pending.channels, [])
        self.assertEqual(clock.clock.getDelayedCalls(), [])
        rows = yield store.query_channel_history()
        self.assertEqual([r["channel_id"] for r in rows], [2, 1])

    @inlineCallbacks
    def test_batch_size_flushes_at_once(self):
        """batch_size pending rows (channels and clients together) flush without waiting."""
        clock = ClockedReactor()
        store = yield self.open(clock, flush_delay=5, batch_size=3)
        store.record_channel(channel(1))
        store.record_client(client(1))
        self.assertEqual(len(clock.clock.getDelayedCalls()), 1)
        store.record_channel(channel(2))
        self.assertEqual((store._pending.channels, store._pending.clients), ([], []))
        self.assertEqual(clock.clock.getDelayedCalls(), [])
        self.assertEqual((yield store.last_ids()), (1, 2))

    @inlineCallbacks
    def test_burst_of_10000(self):
        """10,000 records in one reactor turn land in a few batched writes, all of them."""
        store = yield self.open()
        writes = []
        real_write = store._write

        def counting_write(batch):
            writes.append(len(batch.channels))
            return real_write(batch)

        store._write = counting_write
        for i in range(1, 10_001):
            store.record_channel(channel(i))
        rows = yield store.query_channel_history(limit=10_000)
        self.assertEqual([r["channel_id"] for r in rows], list(range(10_000, 0, -1)))
        self.assertEqual(sum(writes), 10_000)
        self.assertLessEqual(len(writes), 11)

    @inlineCallbacks
    def test_stop_flushes(self):
        """stop() writes pending records and leaves no timer; a reopened store has them."""
        store = yield self.open(flush_delay=3600)
        for i in range(1, 6):
            store.record_channel(channel(i))
        store.record_client(client(1))
        yield store.stop()
        self.assertIsNone(store._timer)
        self.assertFalse(store._pool.started)

        again = yield self.open()
        rows = yield again.query_channel_history()
        self.assertEqual([r["channel_id"] for r in rows], [5, 4, 3, 2, 1])
        self.assertEqual(len((yield again.query_client_history())), 1)

    @inlineCallbacks
    def test_stop_idempotent(self):
        """stop() may be called again, during or after a stop; every call fires."""
        store = yield self.open()
        store.record_channel(channel(1))
        first, second = store.stop(), store.stop()
        yield first
        yield second
        yield store.stop()
        yield self.make().stop()  # never started

    @inlineCallbacks
    def test_failing_write_logged(self):
        """A write that fails is logged, not raised, and later records still land."""
        store = yield self.open()
        real_write = store._write
        failures = []

        def failing_once(*args):
            if not failures:
                failures.append(True)
                raise sqlite3.OperationalError("disk I/O error")
            return real_write(*args)

        store._write = failing_once
        store.record_channel(channel(1))
        store.record_channel(channel(2))
        self.assertEqual((yield store.query_channel_history()), [])
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)

        store.record_channel(channel(3))
        rows = yield store.query_channel_history()
        self.assertEqual([r["channel_id"] for r in rows], [3])

    @inlineCallbacks
    def test_bad_record_logged(self):
        """A record missing a key fails its batch, logged, and the store goes on."""
        store = yield self.open()
        bad = channel(1)
        del bad["close_reason"]
        store.record_channel(bad)
        self.assertEqual((yield store.query_channel_history()), [])
        self.assertEqual(len(self.flushLoggedErrors(self.ProgrammingError)), 1)
        store.record_channel(channel(2))
        rows = yield store.query_channel_history()
        self.assertEqual([r["channel_id"] for r in rows], [2])

    @inlineCallbacks
    def test_stuck_disk_drops_oldest(self):
        """With the disk stuck, pending rows stay bounded: the oldest go, with a counted warning."""
        store = yield self.open(batch_size=10)
        store.max_pending = 100
        warnings = []

        def observe(event):
            if "dropped" in event.get("log_format", ""):
                warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

        release = threading.Event()
        self.addCleanup(release.set)
        real_write = store._write

        def stuck_write(*args):
            release.wait(30)
            return real_write(*args)

        store._write = stuck_write
        for i in range(1, 311):  # 1-10 go to the (stuck) thread, the rest wait
            store.record_channel(channel(i))
        self.assertLessEqual(len(store._pending.channels), 100)
        self.assertTrue(warnings)
        dropped = sum(event["count"] for event in warnings)
        self.assertEqual({event["kind"] for event in warnings}, {"channel"})

        release.set()
        rows = yield store.query_channel_history(limit=1000)
        ids = [r["channel_id"] for r in rows]
        kept = list(range(310, 310 - (300 - dropped), -1))
        self.assertEqual(ids, kept + list(range(10, 0, -1)))


def opened_channel(channel_id, **fields):
    """An open-channel note, overridable."""
    record = {key: channel(channel_id)[key] for key in OPEN_CHANNEL_KEYS}
    record.update(fields)
    return record


class CrashSafetyTests(StoreCase):
    """Ids reserved on disk, open channels and clients noted, and closed after a crash."""

    @inlineCallbacks
    def test_reserve_ids(self):
        """Reserved blocks follow each other per kind, and a reopened store goes on after them."""
        store = yield self.open()
        self.assertEqual((yield store.reserve_ids("channel_id", 1000)), 1)
        self.assertEqual((yield store.reserve_ids("channel_id", 1000)), 1001)
        self.assertEqual((yield store.reserve_ids("client_id", 10)), 1)
        yield store.stop()
        again = yield self.open()
        self.assertEqual((yield again.reserve_ids("channel_id", 5)), 2001)
        self.assertEqual((yield again.reserve_ids("client_id", 5)), 11)

    @inlineCallbacks
    def test_reserve_above_history(self):
        """A block starts above every id in history, even one written past the blocks."""
        store = yield self.open()
        self.assertEqual((yield store.reserve_ids("channel_id", 10)), 1)
        store.record_channel(channel(2085))
        self.assertEqual((yield store.last_ids()), (0, 2085))
        self.assertEqual((yield store.reserve_ids("channel_id", 10)), 2086)

    @inlineCallbacks
    def test_lost_closed_at_next_start(self):
        """Channels and clients noted open and not closed are closed as lost, at the last batch's time."""
        clock = ClockedReactor(now=NOW)
        store = yield self.open(clock, flush_delay=1)
        store.record_client_open({"client_id": 3, "ip": "10.0.0.7", "port": 40000,
                                  "tag": "lab", "init_time": NOW - 5})
        for i in (7, 8, 9):
            store.record_channel_open(opened_channel(i, init_time=NOW - i))
        store.record_channel(channel(8))  # closed in the same batch as its note
        clock.clock.advance(1)
        self.assertEqual((yield store.query_channel_history()), [channel(8)])
        store.record_channel(channel(9))  # closed in a later batch
        clock.clock.advance(1)
        yield store.query_channel_history()
        store.record_channel_open(opened_channel(10))  # pending, never written: lost
        store._running = False  # the process dies: nothing more is written
        yield store._defer(store._close)
        store._pool.stop()

        again = yield self.open()
        self.assertEqual((yield again.close_lost("server lost")), (1, 1))
        self.assertEqual((yield again.close_lost("server lost")), (0, 0))
        rows = yield again.query_channel_history()
        self.assertEqual([r["channel_id"] for r in rows], [9, 8, 7])
        lost = channel(7, init_time=NOW - 7, close_time=NOW + 2, recv_bytes=0, send_bytes=0,
                       close_reason="server lost")
        self.assertEqual(rows[2], lost)
        self.assertEqual((yield again.query_client_history()), [{
            "client_id": 3, "ip": "10.0.0.7", "port": 40000, "tag": "lab",
            "init_time": NOW - 5, "close_time": NOW + 2, "recv_bytes": 0, "send_bytes": 0,
            "close_reason": "server lost"}])

    @inlineCallbacks
    def test_clean_stop_leaves_nothing_open(self):
        """Notes closed before a clean stop leave nothing for close_lost."""
        store = yield self.open(flush_delay=60)
        store.record_channel_open(opened_channel(1))
        store.record_client_open({"client_id": 1, "ip": "10.0.0.7", "port": 40000,
                                  "tag": "lab", "init_time": NOW})
        yield store.query_channel_history()
        store.record_channel(channel(1))
        store.record_client(client(1))
        yield store.stop()
        again = yield self.open()
        self.assertEqual((yield again.close_lost("server lost")), (0, 0))


class RefusalRowTests(StoreCase):
    """Refusal rows carry a count, and keep to a tenth of the row budget."""

    @inlineCallbacks
    def test_count_only_on_refusal_rows(self):
        """A row recorded with a count shows it; a channel row has exactly its keys."""
        store = yield self.open()
        store.record_channel(channel(1))
        store.record_channel(channel(2, client_id=None, close_reason="no client", count=2000))
        refusal, real = yield store.query_channel_history()
        self.assertEqual(set(real), set(CHANNEL_KEYS))
        self.assertEqual(refusal["count"], 2000)
        self.assertEqual(refusal["close_reason"], "no client")

    @inlineCallbacks
    def test_refusals_cannot_push_history_out(self):
        """However many refusal rows come, real rows keep nine tenths of history_max_rows."""
        store = yield self.open(history_max_rows=20)
        for i in range(1, 6):
            store.record_channel(channel(i))
        for i in range(6, 106):
            store.record_channel(channel(i, close_reason="no client", count=1))
            if i % 10 == 0:
                yield store.query_channel_history()  # several batches
        rows = yield store.query_channel_history(limit=100)
        self.assertEqual([r["channel_id"] for r in rows], [105, 104, 5, 4, 3, 2, 1])


def sql(path, script=""):
    """A plain connection to the database at C{path}, after running C{script} on it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(script)
    return conn


def inspect(path):
    """(schema version rows, table names, id_blocks) of the database at C{path}."""
    conn = sql(path)
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    versions = conn.execute("SELECT version FROM schema_version").fetchall()
    blocks = None
    if "id_blocks" in tables:
        blocks = dict(conn.execute("SELECT name, next_free FROM id_blocks"))
    conn.close()
    return versions, tables, blocks


def schema_of(path):
    """Every table and index of the database at C{path}, with its SQL."""
    conn = sql(path)
    rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    return rows


READ = schema.read  # the real schema files


def failing(version, folder=""):
    """A stand-in for schema.read whose upgrade to C{version} fails after doing some work."""

    def read(name):
        text = READ(name)
        if name == f"{folder}upgrade-{version}.sql":
            text += "\nINSERT INTO no_such_table VALUES (1);\n"
        return text

    return read


LATEST_TABLES = schema.V1_TABLES | {
    "schema_version", "id_blocks", "credentials", "sqlite_sequence",
    "open_channels", "open_clients", "last_write", "nodes"}


class SchemaTests(StoreCase):
    @inlineCallbacks
    def refused_after(self, script):
        """Create a database at the latest version, run C{script} on it; return why it is refused."""
        yield (yield self.open()).stop()
        sql(self.path, script).close()
        return (yield self.refused())

    @inlineCallbacks
    def test_new_database_latest(self):
        """A new database is created at the latest version, id_blocks seeded with 1."""
        store = yield self.open()
        yield store.stop()
        self.assertEqual(schema.LATEST, 6)
        self.assertEqual(inspect(self.path),
                         ([(schema.LATEST,)], LATEST_TABLES, {"client_id": 1, "channel_id": 1}))

    @inlineCallbacks
    def test_v1_upgraded_rows_intact(self):
        """A version-1 database (no version table) is upgraded to the latest and keeps every row."""
        conn = sql(self.path, schema.read("v1.sql"))
        with conn:
            conn.execute("INSERT INTO mappings VALUES (6000, '10.0.0.1', 22, 'lab')")
            conn.execute(INSERT_CHANNEL, channel(17))
            conn.execute(INSERT_CLIENT, client(4))
            conn.execute("UPDATE last_ids SET value = 4 WHERE name = 'client_id'")
            conn.execute("UPDATE last_ids SET value = 17 WHERE name = 'channel_id'")
        conn.close()

        store = yield self.open()
        self.assertEqual((yield store.load_mappings()), [(6000, "10.0.0.1", 22, "lab")])
        self.assertEqual((yield store.query_channel_history()), [channel(17)])
        self.assertEqual((yield store.query_client_history()), [client(4)])
        self.assertEqual((yield store.last_ids()), (4, 17))
        yield store.stop()
        self.assertEqual(inspect(self.path),
                         ([(schema.LATEST,)], LATEST_TABLES, {"client_id": 5, "channel_id": 18}))

        # Upgraded or created new, a database ends with the same schema.
        upgraded, self.path = self.path, os.path.join(self.mktemp(), "new.sqlite3")
        yield (yield self.open()).stop()
        self.assertEqual(schema_of(upgraded), schema_of(self.path))

    @inlineCallbacks
    def test_future_version_refused(self):
        """A database newer than the code is refused with one sentence, and left untouched."""
        newer = schema.LATEST + 1
        message = yield self.refused_after(f"UPDATE schema_version SET version = {newer}")
        self.assertEqual(message, f"{self.path} has schema version {newer}, but this portmapper"
                                  f" knows versions up to {schema.LATEST} only: run a newer"
                                  " portmapper, or use another data directory.")
        self.assertEqual(inspect(self.path)[0], [(newer,)])

    @inlineCallbacks
    def test_failed_upgrade_rolled_back(self):
        """An upgrade that fails midway is rolled back: the database stays at version 1, usable."""
        sql(self.path, schema.read("v1.sql")
            + "UPDATE last_ids SET value = 9 WHERE name = 'channel_id';").close()
        self.patch(schema, "read", failing(2))
        message = yield self.refused()
        self.assertEqual(message, f"Could not upgrade {self.path} from schema version 1 to 2"
                                  " (no such table: no_such_table), so it is left at version 1.")
        self.assertEqual(inspect(self.path), ([(1,)], schema.V1_TABLES | {"schema_version"}, None))

        self.patch(schema, "read", READ)
        store = yield self.open()
        self.assertEqual((yield store.last_ids()), (0, 9))
        yield store.stop()
        self.assertEqual(inspect(self.path),
                         ([(schema.LATEST,)], LATEST_TABLES, {"client_id": 1, "channel_id": 10}))

    @inlineCallbacks
    def test_failed_creation_leaves_nothing(self):
        """A new database whose creation fails gets no table at all, and is created at the next start."""
        self.patch(schema, "read", failing(2))
        message = yield self.refused()
        self.assertEqual(message, f"Could not create the database {self.path}:"
                                  " no such table: no_such_table.")
        self.assertEqual(schema_of(self.path), [])

        self.patch(schema, "read", READ)
        yield (yield self.open()).stop()
        self.assertEqual(inspect(self.path)[:2], ([(schema.LATEST,)], LATEST_TABLES))

    @inlineCallbacks
    def test_foreign_database_refused(self):
        """A database with other tables and no version is refused, and left untouched."""
        sql(self.path, "CREATE TABLE mappings (x); CREATE TABLE notes (y);").close()
        message = yield self.refused()
        self.assertEqual(message, f"{self.path} is not a portmapper database: it has the tables"
                                  " mappings, notes but no schema_version table.")
        self.assertEqual([name for _, name, _ in schema_of(self.path)], ["mappings", "notes"])

    @inlineCallbacks
    def test_damaged_version_refused(self):
        """A schema_version table without its one row is refused with one sentence."""
        message = yield self.refused_after("DELETE FROM schema_version")
        self.assertEqual(message, f"{self.path} has a damaged schema_version table:"
                                  " it should hold one version number.")

    @inlineCallbacks
    def test_not_a_database_refused(self):
        """A file that is not SQLite is refused with one sentence, not a traceback."""
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "wb") as f:
            f.write(b"portmapper mappings, as text?\n" * 100)
        message = yield self.refused()
        self.assertEqual(message, f"Cannot open the database {self.path}: file is not a database.")

    def test_files_numbered(self):
        """The schema files are v1.sql and upgrade-2.sql up to upgrade-LATEST.sql, none more."""
        expected = {"v1.sql"} | {f"upgrade-{n}.sql" for n in range(2, schema.LATEST + 1)}
        self.assertEqual(schema_files(), expected)


def schema_files():
    """The names of the .sql files in the schema package."""
    return {p.name for p in files(schema.__name__).iterdir() if p.name.endswith(".sql")}


class WheelTests(unittest.SynchronousTestCase):
    """The schema files reach the wheel, built (once per run) as L{test_tap} builds it."""

    setUp = test_tap.WheelTests.setUp
    buildWheel = test_tap.WheelTests.buildWheel

    def test_schema_files_in_wheel(self):
        """The wheel carries every schema file the store reads, SQLite's and PostgreSQL's."""
        with zipfile.ZipFile(self.buildWheel()) as wheel:
            names = set(wheel.namelist())
        self.assertIn("portmapper/server/store/schema/__init__.py", names)
        for name in schema_files():
            self.assertIn(f"portmapper/server/store/schema/{name}", names)
            self.assertIn(f"portmapper/server/store/schema/postgres/{name}", names)
