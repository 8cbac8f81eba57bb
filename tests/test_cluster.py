"""
Tests of what a cluster of servers stands on: ``--database`` (a server on
PostgreSQL, which keeps its mappings and history there across a restart)
and a client given several servers (``--server`` repeated, or a list in the
config file), which keeps a link to each on its own.

The end-to-end tests run as tests/test_e2e.py's do: real services on
127.0.0.1, users on blocking sockets in threads; the PostgreSQL ones use the
run's private PostgreSQL (L{tests.pg}) and are skipped where it is absent.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portmapper.client import tap as client_tap
from portmapper.client.agent import LinkService, makeClientService
from portmapper.server import tap as server_tap
from portmapper.server.store import Store as SQLiteStore
from tests import pg
from tests.e2e import (
    Backend, Echo, Running, echo_roundtrip, in_thread, start_client, wait_for,
)

A = "tcp:host=127.0.0.1:port=1111"
B = "tcp:host=127.0.0.1:port=2222"


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
        """Another scheme, a URL libpq refuses, or no psycopg, is one sentence naming database."""
        try:
            import psycopg  # noqa: F401
            refused = 'is not a valid PostgreSQL URL: invalid URI query parameter: "colour".'
        except ImportError:
            refused = ("a PostgreSQL database needs psycopg, which is not installed"
                       " (pip install 'portmapper[postgres]').")
        for url, reason in [
            ("mysql://db/portmapper",
             "must be empty (SQLite under data-dir) or a postgresql:// URL."),
            ("postgresql://db/portmapper?colour=blue", refused),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                parse(server_tap.Options, ["--database", url])
            self.assertEqual(str(caught.exception), f"Bad value {url!r} for database: {reason}")


class ServersOptionTests(SynchronousTestCase):
    """--server repeated, or a list in the config file, gives the client several servers."""

    def test_repeated_option(self):
        """Each --server is kept, in order."""
        settings = parse(client_tap.Options, ["--server", A, "--server", B])
        self.assertEqual([spec.text for spec in settings.servers], [A, B])

    def test_config_file_list(self):
        """A [client] server value with one endpoint per line names them all."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"[client]\nserver = {A}\n    {B}\n")
        settings = parse(client_tap.Options, ["--config", path])
        self.assertEqual([spec.text for spec in settings.servers], [A, B])
        settings = parse(client_tap.Options, ["--config", path, "--server", B])
        self.assertEqual([spec.text for spec in settings.servers], [B])  # options win

    def test_bad_lists_refused(self):
        """A server named twice, or one bad endpoint among several, is refused naming it."""
        with self.assertRaises(usage.UsageError) as caught:
            parse(client_tap.Options, ["--server", A, "--server", A])
        self.assertIn(f"names the server {A!r} twice", str(caught.exception))
        with self.assertRaises(usage.UsageError) as caught:
            parse(client_tap.Options, ["--server", A, "--server", "tcp:host=x"])
        self.assertIn("for server: 'tcp:host=x': ", str(caught.exception))

    def test_one_link_service_per_server(self):
        """Several servers give a MultiService of LinkServices, one per server, named by it."""
        service = makeClientService(parse(client_tap.Options, ["--server", A, "--server", B]),
                                    reactor)
        children = list(service)
        self.assertEqual([child.name for child in children], [A, B])
        for child in children:
            self.assertIsInstance(child, LinkService)
        self.assertEqual([str(child.link_factory.server) for child in children], [A, B])
        self.assertIsInstance(
            makeClientService(parse(client_tap.Options, ["--server", A]), reactor), LinkService)


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


class SeveralServersTests(TestCase):
    """One client linked to two servers carries users of both; losing one keeps the other."""

    timeout = 60

    @inlineCallbacks
    def test_two_servers_one_client(self):
        """Users through each server reach the target byte-exact; stopping one leaves the other link be."""
        one = yield Running(self, self.mktemp()).start()
        two = yield Running(self, self.mktemp()).start()
        service = start_client(
            self, one.server.client_port,
            "--server", f"tcp:host=127.0.0.1:port={one.server.client_port}",
            "--server", f"tcp:host=127.0.0.1:port={two.server.client_port}", "--tag", "lab")
        yield wait_for(lambda: one.server.registry.clients and two.server.registry.clients,
                       what="a link to each server")
        target = Backend(Echo).listen(self)
        ports = []
        for running in (one, two):
            ports.append((yield running.map(target, tag="lab")))
        data = os.urandom(256 * 1024)
        for port in ports:
            self.assertEqual((yield in_thread(echo_roundtrip, port, data)), data)

        factories = [child.link_factory for child in service]
        links = [factory.link for factory in factories]
        lost = [factory.link_lost_deferred(link) for factory, link in zip(factories, links)]
        yield one.stop()
        yield lost[0]
        self.assertFalse(lost[1].called)
        self.assertIs(factories[1].link, links[1])
        self.assertTrue(links[1].connection.established)
        self.assertEqual(len(two.server.registry.clients), 1)
        self.assertEqual((yield in_thread(echo_roundtrip, ports[1], data)), data)

        # The lost link's service stops at once (nothing to drain), the other link stays.
        stopping = list(service)[0].stopService()
        yield wait_for(lambda: stopping.called, timeout=5, what="the idle link service to stop")
        self.assertFalse(lost[1].called)
