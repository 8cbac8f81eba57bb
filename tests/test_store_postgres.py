"""
Tests for L{portmapper.server.store.postgres}: every behaviour of the
SQLite store's tests (L{tests.test_store.StoreTests}) run again on the
PostgreSQL store, then what is PostgreSQL's own: its schema files and
migrations, servers sharing one database, a lost connection.

Each test gets a new database on the run's private PostgreSQL
(L{tests.pg}); where PostgreSQL or psycopg is absent they are skipped,
saying which.
"""

import inspect
import re
from importlib.resources import files

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from portmapper.errors import DatabaseUnavailable
from portmapper.server.store import schema, sqlite
from tests import pg, test_credentials, test_store
from tests.test_store import READ, channel, client, failing

try:
    import psycopg

    from portmapper.server.store import postgres
except ImportError:  # pg.database() skips the tests, saying why
    psycopg = postgres = None

LATEST_TABLES = test_store.LATEST_TABLES - {"sqlite_sequence"}  # SQLite's own


class PostgresCase(test_store.StoreCase):
    """A new database of its own on the run's PostgreSQL, and Stores on it."""

    def setUp(self):
        self.url = pg.database()
        self.where = postgres.describe(self.url)
        self.ProgrammingError = psycopg.ProgrammingError

    def make(self, clock=None, **kwargs):
        return postgres.Store(self.url, clock or reactor, **kwargs)

    def sql(self, script, *args):
        """Run C{script} on the test's database (autocommit); return its rows, if any."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(script, args or None)
            return cursor.fetchall() if cursor.description else None

    def inspect(self):
        """(schema version rows, table names, id_blocks) of the test's database."""
        tables = {name for (name,) in self.sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        versions = self.sql("SELECT version FROM schema_version")
        blocks = None
        if "id_blocks" in tables:
            blocks = dict(self.sql("SELECT name, next_free FROM id_blocks"))
        return versions, tables, blocks

    def columns(self):
        """Every column of the test's database: (table, column, type, nullable, default)."""
        return self.sql(
            "SELECT table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = current_schema()"
            " ORDER BY table_name, column_name")


class PostgresStoreTests(PostgresCase, test_store.StoreTests):
    """Every behaviour of the SQLite store's tests, on PostgreSQL."""


class PostgresCrashSafetyTests(PostgresCase, test_store.CrashSafetyTests):
    """Ids reserved, open channels and clients noted and closed after a crash, on PostgreSQL."""


class PostgresRefusalRowTests(PostgresCase, test_store.RefusalRowTests):
    """Refusal rows with a count, pruned within their share, on PostgreSQL."""


class PostgresCredentialTests(PostgresCase):
    """Credentials and policies, kept as the SQLite store keeps them."""

    test_roundTrip = test_credentials.StoreCredentialTests.test_roundTrip

    @inlineCallbacks
    def test_ids_never_reused(self):
        """A credential id once handed out is not handed out again, even if its row is gone."""
        store = yield self.open()
        yield store.add_credential(None, "office", b"a" * 32, 1.0)
        last = yield store.add_credential(None, "office", b"b" * 32, 2.0)
        self.sql("DELETE FROM credentials WHERE id = %s", last)
        self.assertEqual((yield store.add_credential(None, "office", b"c" * 32, 3.0)), last + 1)

    @inlineCallbacks
    def test_policies_kept(self):
        """Policies saved with a mapping load back as the texts; a mapping without any has none."""
        store = yield self.open()
        yield store.save_mapping(5433, "10.0.0.1", 22, "lab", {"rate_limit": "5"})
        yield store.save_mapping(5434, "10.0.0.1", 23, "lab")
        yield store.save_mapping(5434, "10.0.0.2", 23, "lab", {"allow": "10.0.0.0/8"})
        self.assertEqual((yield store.load_policies()),
                         {5433: {"rate_limit": "5"}, 5434: {"allow": "10.0.0.0/8"}})
        self.assertEqual((yield store.load_mappings()),
                         [(5433, "10.0.0.1", 22, "lab"), (5434, "10.0.0.2", 23, "lab")])


class PostgresSchemaTests(PostgresCase):

    @inlineCallbacks
    def test_new_database_latest(self):
        """A new database is created at the latest version, id_blocks seeded with 1."""
        yield (yield self.open()).stop()
        self.assertEqual(self.inspect(),
                         ([(schema.LATEST,)], LATEST_TABLES, {"client_id": 1, "channel_id": 1}))

    @inlineCallbacks
    def test_upgrade_keeps_rows(self):
        """A database at version 1 is upgraded to the latest, keeping its rows and seeding id_blocks."""
        self.sql(READ("postgres/v1.sql") + schema.VERSION_TABLE
                 + "INSERT INTO mappings VALUES (6000, '10.0.0.1', 22, 'lab');"
                 + "UPDATE last_ids SET value = 4 WHERE name = 'client_id';"
                 + "UPDATE last_ids SET value = 17 WHERE name = 'channel_id';")
        store = yield self.open()
        self.assertEqual((yield store.load_mappings()), [(6000, "10.0.0.1", 22, "lab")])
        self.assertEqual((yield store.last_ids()), (4, 17))
        yield store.stop()
        self.assertEqual(self.inspect(),
                         ([(schema.LATEST,)], LATEST_TABLES, {"client_id": 5, "channel_id": 18}))
        # Upgraded or created new, a database ends with the same columns.
        upgraded = self.columns()
        self.url = pg.database()
        yield (yield self.open()).stop()
        self.assertEqual(upgraded, self.columns())

    @inlineCallbacks
    def test_future_version_refused(self):
        """A database newer than the code is refused with one sentence, and left untouched."""
        yield (yield self.open()).stop()
        newer = schema.LATEST + 1
        self.sql("UPDATE schema_version SET version = %s", newer)
        message = yield self.refused()
        self.assertEqual(message, f"{self.where} has schema version {newer}, but this portmapper"
                                  f" knows versions up to {schema.LATEST} only: run a newer"
                                  " portmapper, or use another data directory.")
        self.assertEqual(self.inspect()[0], [(newer,)])

    @inlineCallbacks
    def test_failed_upgrade_rolled_back(self):
        """An upgrade that fails midway is rolled back, with a one-line reason; the next start completes it."""
        self.sql(READ("postgres/v1.sql") + schema.VERSION_TABLE)
        self.patch(schema, "read", failing(2, "postgres/"))
        message = yield self.refused()
        self.assertEqual(message, f"Could not upgrade {self.where} from schema version 1 to 2"
                                  ' (relation "no_such_table" does not exist),'
                                  " so it is left at version 1.")
        self.assertEqual(self.inspect(), ([(1,)], schema.V1_TABLES | {"schema_version"}, None))

        self.patch(schema, "read", READ)
        yield (yield self.open()).stop()
        self.assertEqual(self.inspect()[0], [(schema.LATEST,)])

    @inlineCallbacks
    def test_failed_creation_leaves_nothing(self):
        """A new database whose creation fails gets no table at all."""
        self.patch(schema, "read", failing(2, "postgres/"))
        message = yield self.refused()
        self.assertEqual(message, f"Could not create the database {self.where}:"
                                  ' relation "no_such_table" does not exist.')
        self.assertEqual(self.sql("SELECT tablename FROM pg_tables"
                                  " WHERE schemaname = current_schema()"), [])

    @inlineCallbacks
    def test_foreign_database_refused(self):
        """A database with other tables and no version is refused, and left untouched."""
        self.sql("CREATE TABLE notes (y TEXT)")
        message = yield self.refused()
        self.assertEqual(message, f"{self.where} is not a portmapper database: it has the tables"
                                  " notes but no schema_version table.")

    @inlineCallbacks
    def test_unreachable_refused(self):
        """A database that cannot be reached is refused with one line saying why."""
        self.url = self.url.rsplit("/", 1)[0] + "/no_such_database"
        message = yield self.refused()
        self.assertTrue(message.startswith(
            f"Cannot connect to the database {postgres.describe(self.url)}: "), message)
        self.assertIn('database "no_such_database" does not exist', message)
        self.assertNotIn("\n", message)

    def test_files_twin_sqlite(self):
        """postgres/ has v1.sql and an upgrade-N.sql for every one of SQLite's, none more."""
        folder = files(schema.__name__).joinpath("postgres")
        names = {p.name for p in folder.iterdir() if p.name.endswith(".sql")}
        self.assertEqual(names, test_store.schema_files())


class SharedDatabaseTests(PostgresCase):
    """Several stores (as several servers) on one database."""

    @inlineCallbacks
    def start_together(self, count):
        """Start C{count} stores at once on the test's database (stopped at cleanup); return them."""
        stores = [self.make() for _ in range(count)]
        for store in stores:
            self.addCleanup(store.stop)
        yield gatherResults([store.start() for store in stores])
        return stores

    @inlineCallbacks
    def test_start_together_share(self):
        """Three stores starting at once on a new database all start; each sees the others' writes."""
        stores = yield self.start_together(3)
        yield stores[0].save_mapping(6000, "10.0.0.1", 22, "lab")
        stores[1].record_channel(channel(7))
        stores[2].record_client(client(3))
        yield gatherResults([stores[1].last_ids(), stores[2].last_ids()])
        self.assertEqual((yield stores[2].load_mappings()), [(6000, "10.0.0.1", 22, "lab")])
        self.assertEqual((yield stores[0].query_channel_history()), [channel(7)])
        self.assertEqual((yield stores[0].last_ids()), (3, 7))
        self.assertEqual(self.inspect()[0], [(schema.LATEST,)])

    @inlineCallbacks
    def test_reserve_together(self):
        """Stores reserving ids at once on one database get blocks that do not overlap."""
        stores = yield self.start_together(3)
        firsts = yield gatherResults([store.reserve_ids("channel_id", 100)
                                      for store in stores for _ in range(4)])
        self.assertEqual(sorted(firsts), list(range(1, 1201, 100)))

    @inlineCallbacks
    def test_port_is_unique(self):
        """A mapping's port is the primary key: a second row for a taken port is refused."""
        yield (yield self.open()).save_mapping(6000, "10.0.0.1", 22, "lab")
        with self.assertRaises(psycopg.errors.UniqueViolation):
            self.sql("INSERT INTO mappings VALUES (6000, '10.0.0.2', 80, 'other')")

    def kill_connections(self):
        """Terminate every connection to the test's database but this one; how many."""
        [(killed,)] = self.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return killed

    @inlineCallbacks
    def test_reconnects_after_loss(self):
        """A connection the server killed is replaced by the call that finds out, which is done once."""
        store = yield self.open()
        yield store.save_mapping(6000, "10.0.0.1", 22, "lab")
        self.assertEqual(self.kill_connections(), 1)
        self.assertEqual((yield store.load_mappings()), [(6000, "10.0.0.1", 22, "lab")])
        self.assertEqual(self.kill_connections(), 1)
        first = yield store.add_credential(None, "office", b"k" * 32, 1.0)  # a write: done once
        self.assertEqual(self.sql("SELECT id FROM credentials"), [(first,)])

    @inlineCallbacks
    def test_unreachable_after_loss(self):
        """A killed connection whose replacement cannot be made either fails the call with one sentence."""
        store = yield self.open()
        store._conninfo = {**store._conninfo, "dbname": "no_such_database"}
        self.assertEqual(self.kill_connections(), 1)
        failure = yield self.assertFailure(store.load_mappings(), DatabaseUnavailable)
        self.assertTrue(str(failure).startswith(f"The database {self.where} is unreachable: "))


# SQLite Store methods whose SQL is the same in PostgreSQL's dialect (with PARAM).
SHARED = {"_load_mappings", "_load_policies", "_load_credentials", "_last_ids", "_close",
          "_select"}


class DialectTests(unittest.SynchronousTestCase):

    def setUp(self):
        if postgres is None:
            raise unittest.SkipTest("PostgreSQL tests skipped: psycopg is not installed.")

    def test_every_sql_method_covered(self):
        """Each SQLite Store method with SQL in it is overridden for PostgreSQL or known to be shared."""
        sql = re.compile(r"self\._conn\b|\"(SELECT|INSERT|UPDATE|DELETE|CREATE)\b")
        uncovered = [
            name for name, f in vars(sqlite.Store).items()
            if inspect.isfunction(f) and sql.search(inspect.getsource(f))
            and name not in vars(postgres.Store) and name not in SHARED]
        self.assertEqual(uncovered, [])

    def test_describe_hides_password(self):
        """Messages name the database without its password."""
        self.assertEqual(postgres.describe("postgresql://pm:s3cret@db.example:5433/portmapper"),
                         "postgresql://pm@db.example:5433/portmapper")
        self.assertEqual(postgres.describe("postgresql://%2Fvar%2Frun%2Fpostgresql/pm"),
                         "postgresql:///var/run/postgresql/pm")
