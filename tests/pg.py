"""
A private PostgreSQL for the tests that need one: Debian's server binaries,
an ``initdb`` into a temporary directory, and ``postgres`` on a unix socket
in that directory, so nothing outside the test run can reach it or get in
its way.  It listens on no TCP port at all (``listen_addresses`` is empty):
``-p`` only names the socket file (``.s.PGSQL.<port>``) in the private
directory, so no port can collide with anything.

One instance serves the whole test run: :func:`database` starts it the
first time a test asks (in ``setUp``, on the main thread), gives each
caller a new empty database and a ``postgresql://`` URL for it, and the
instance is stopped, its directory removed, when the test process exits.
PostgreSQL refuses to run as root, so under root it runs as the
``postgres`` system user; it is also told to die with the test process
(``PR_SET_PDEATHSIG``), so a killed run leaves no server behind.

Where PostgreSQL or psycopg is absent, :func:`database` raises
``SkipTest`` with what is missing; ``.ci/run`` installs both, so CI never
skips.  A PostgreSQL that is present but fails to start fails the test,
with the server's log.
"""

import atexit
import ctypes
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from urllib.parse import quote

from twisted.trial.unittest import SkipTest

try:
    import psycopg
except ImportError:  # the tests that need it are skipped
    psycopg = None

#: Names the socket file only: the server listens on no TCP port.
SOCKET_PORT = 5432
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL = 0.02
PR_SET_PDEATHSIG = 1


def find_bindir():
    """The directory of ``initdb`` and ``postgres``: Debian's newest, else PATH's; None if absent."""
    found = glob.glob("/usr/lib/postgresql/[0-9]*/bin/initdb")
    if found:
        return os.path.dirname(max(found, key=lambda path: int(path.split("/")[-3])))
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _missing():
    """Why the PostgreSQL tests cannot run here (None if they can)."""
    if psycopg is None:
        return "psycopg is not installed (pip install 'psycopg[binary]'; .ci/run installs it)"
    if find_bindir() is None:
        return ("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on"
                " PATH; apt-get install postgresql, as .ci/run does)")
    if os.getuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user for PostgreSQL to run as"
    return None


class PostgreSQL:
    """One private server: :meth:`start`, :meth:`create_database`, :meth:`stop`."""

    def __init__(self, bindir):
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="portmapper-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "postgres.log")
        self.process = None
        self._databases = 0
        self._as = {}
        if os.getuid() == 0:  # PostgreSQL refuses root: run it as postgres
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def url(self, dbname):
        """A ``postgresql://`` URL for ``dbname``, the socket directory as host."""
        return f"postgresql://postgres@{quote(self.dir, safe='')}:{SOCKET_PORT}/{dbname}"

    def _run(self, *args, **kwargs):
        return subprocess.Popen([os.path.join(self.bindir, args[0]), *args[1:]],
                                cwd=self.dir, stdin=subprocess.DEVNULL, **self._as, **kwargs)

    def start(self):
        """initdb, start ``postgres``, and wait (at most START_TIMEOUT s) until it answers."""
        with open(self.log, "ab") as log:
            initdb = self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                               "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
                               stdout=log, stderr=subprocess.STDOUT)
            if initdb.wait(START_TIMEOUT) != 0:
                self._fail("initdb failed")
        self.serve()

    def serve(self):
        """Run ``postgres`` on the data :meth:`start` made; wait (START_TIMEOUT s) until it answers."""
        with open(self.log, "ab") as log:
            die_with_us = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
            self.process = self._run(
                "postgres", "-D", self.data, "-k", self.dir, "-p", str(SOCKET_PORT),
                "-c", "listen_addresses=", "-F",  # no TCP; no fsync: a throwaway database
                stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=lambda: die_with_us(PR_SET_PDEATHSIG, signal.SIGQUIT))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=5).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None:
                    self._fail(f"postgres exited with status {self.process.returncode}")
                if time.monotonic() > deadline:
                    self._fail(f"postgres did not answer within {START_TIMEOUT:g} s")
                time.sleep(POLL)

    def _fail(self, what):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            log = f.read()[-4000:]
        self.stop()
        raise RuntimeError(f"The tests' PostgreSQL could not start: {what}. Its log:\n{log}")

    def create_database(self):
        """A new empty database; its URL."""
        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self):
        """Stop the server (fast shutdown, then kill) and remove its directory."""
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)

    def halt(self):
        """Stop the server (fast shutdown, then kill), keeping its data for :meth:`serve`."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)


_server = None
_start_error = None  # why the run's PostgreSQL did not start: every later test fails with it


def require():
    """Raise ``SkipTest`` saying what is missing where PostgreSQL or psycopg is absent."""
    missing = _missing()
    if missing:
        raise SkipTest(f"PostgreSQL tests skipped: {missing}.")


def database():
    """
    The URL of a new, empty database on the run's PostgreSQL (started on
    first use, from the main thread); ``SkipTest`` where it is absent.
    """
    global _server, _start_error
    require()
    if _start_error is not None:
        raise RuntimeError(_start_error)
    if _server is None:
        server = PostgreSQL(find_bindir())
        atexit.register(server.stop)
        try:
            server.start()
        except RuntimeError as e:
            _start_error = str(e)
            raise
        _server = server
    return _server.create_database()


def server():
    """The run's PostgreSQL (after :func:`database` started it), to stop or inspect it."""
    return _server
