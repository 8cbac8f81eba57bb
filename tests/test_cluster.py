"""
Tests of what a cluster of servers stands on: ``--database`` (a server on
PostgreSQL, which keeps its mappings and history there across a restart).

The end-to-end tests run as tests/test_e2e.py's do: real services on
127.0.0.1, users on blocking sockets in threads; the PostgreSQL ones use the
run's private PostgreSQL (L{tests.pg}) and are skipped where it is absent.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portmapper.server import tap as server_tap
from portmapper.server.store import Store as SQLiteStore
from tests import pg
from tests.e2e import (
    Backend, Echo, Running, echo_roundtrip, in_thread, start_client, wait_for,
)

def parse(options_type, argv):
    options = options_type()
    options.parseOptions(argv)
    return options.settings


class DatabaseOptionTests(SynchronousTestCase):
    """--database: empty for SQLite under --data-dir, or a postgresql:// URL."""

    def test_default_sqlite(self):
        """Without --database the server keeps SQLite under --data-dir."""
        settings = parse(server_tap.Options, ["--data-dir", "/tmp/x"])
        self.assertEqual(settings.database, "")
        store = server_tap.make_store(settings, reactor)
        self.assertIsInstance(store, SQLiteStore)
        self.assertEqual(store._path, os.path.join("/tmp/x", "portmapper.sqlite3"))

    def test_postgresql_url_picks_postgres(self):
        """A postgresql:// URL selects the PostgreSQL store, named without its password."""
        try:
            from portmapper.server.store import postgres
        except ImportError:
            raise self.skipTest("psycopg is not installed") from None
        url = "postgresql://pm:s3cret@db.example:5433/portmapper"
        settings = parse(server_tap.Options, ["--database", url])
        self.assertEqual(settings.database, url)
        store = server_tap.make_store(settings, reactor)
        self.assertIsInstance(store, postgres.Store)
        self.assertEqual(store._path, "postgresql://pm@db.example:5433/portmapper")

    def test_bad_urls_one_sentence(self):
        """Another scheme, or a URL libpq refuses, is one sentence naming database."""
        for url, reason in [
            ("mysql://db/portmapper",
             "must be empty (SQLite under data-dir) or a postgresql:// URL."),
            ("postgresql://db/portmapper?colour=blue",
             'is not a valid PostgreSQL URL: invalid URI query parameter: "colour".'),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                parse(server_tap.Options, ["--database", url])
            self.assertEqual(str(caught.exception), f"Bad value {url!r} for database: {reason}")


class PostgresServerTests(TestCase):
    """A server on PostgreSQL keeps its mappings and history there."""

    timeout = 60

    def setUp(self):
        self.url = pg.database()

    @inlineCallbacks
    def test_restart_on_database(self):
        """A mapping and history made by a server on PostgreSQL are served by a new server on it."""
        extra = ("--database", self.url)
        first = yield Running(self, self.mktemp(), extra=extra).start()
        client_port = first.server.client_port
        start_client(self, client_port)
        yield wait_for(lambda: first.server.registry.clients, what="the client")
        public = yield first.map(Backend(Echo).listen(self))
        self.assertEqual((yield in_thread(echo_roundtrip, public, b"before")), b"before")
        yield wait_for(lambda: not first.server.registry.channels, what="the channel to close")
        code, before = yield first.api("GET", "/channel_history")
        self.assertEqual(before["history"][0]["recv_bytes"], len(b"before"))
        yield first.stop()

        # Another data dir: what comes back can only come from the database.
        second = yield Running(self, self.mktemp(), client_port, extra=extra).start()
        code, mappings = yield second.api("GET", "/port_mapper")
        self.assertIn(str(public), mappings)
        code, after = yield second.api("GET", "/channel_history")
        self.assertEqual(after["history"], before["history"])
        yield wait_for(lambda: second.server.registry.clients, timeout=20,
                       what="the client to come back")
        self.assertEqual((yield in_thread(echo_roundtrip, public, b"after")), b"after")
