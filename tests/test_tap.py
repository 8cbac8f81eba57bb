"""
Tests for the twistd plugins: discovery, the services C{makeService} builds
(on a L{MemoryReactorClock}; the store's own thread is real), and a wheel of
the project that carries the plugins into a fresh environment without the
source tree.
"""

import os
import queue
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from pathlib import Path

from twisted.application.internet import ClientService, StreamServerEndpointService
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from zope.interface import implementer
from zope.interface.verify import verifyObject

from portmapper.client import tap as client_tap
from portmapper.config import ClientSettings, ServerSettings
from portmapper.server import tap as server_tap
from portmapper.server.core import PortMapperServer
from portmapper.server.interfaces import IPortMapperServer
from portmapper.server.link import ServerLinkFactory
from portmapper.server.registry import SERVER_STOPPED
from portmapper.server.services import AdminSite
from portmapper.server.store import Store

ROOT = Path(__file__).resolve().parents[1]


def plugins():
    """The IServiceMaker plugins Twisted finds, by tapname."""
    return {p.tapname: p for p in getPlugins(IServiceMaker)}


class PluginTests(SynchronousTestCase):
    """Both plugins are found by Twisted's plugin system."""

    def test_serverPlugin(self):
        """'portmapper' is an IServiceMaker whose options and service come from server/tap.py."""
        plugin = plugins()["portmapper"]
        self.assertTrue(IServiceMaker.providedBy(plugin))
        self.assertIs(plugin.options, server_tap.Options)
        self.assertIn("tunnel server", plugin.description)

    def test_clientPlugin(self):
        """'portmapper-client' is an IServiceMaker whose options come from client/tap.py."""
        plugin = plugins()["portmapper-client"]
        self.assertTrue(IServiceMaker.providedBy(plugin))
        self.assertIs(plugin.options, client_tap.Options)
        self.assertIn("tunnel client", plugin.description)

    def test_pluginOptionsParse(self):
        """The plugin's options class parses the plugin's command line into settings."""
        options = plugins()["portmapper-client"].options()
        options.parseOptions(["--tag", "lab"])
        self.assertEqual(options.settings.tag, "lab")


class StoreThreadReactor(MemoryReactorClock):
    """
    A MemoryReactorClock that also takes the calls the store's worker thread
    makes (``callFromThread``), for L{ServerServiceTests.settle} to run; its
    TCP ports record in C{events} when they stop listening, and a port
    number in C{refuse} fails to listen.
    """

    def __init__(self):
        super().__init__()
        self.fromThreads = queue.Queue()
        self.events = []
        self.refuse = set()

    def callFromThread(self, f, *args, **kwargs):
        self.fromThreads.put((f, args, kwargs))

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port in self.refuse:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        super().listenTCP(port, factory, backlog, interface)
        return RecordingPort(IPv4Address("TCP", interface or "0.0.0.0", port), self.events)


@implementer(IListeningPort)
class RecordingPort:
    """A listening port that records ("stop", port) in C{events} when it stops."""

    def __init__(self, address, events):
        self.address = address
        self.events = events

    def startListening(self):
        pass

    def stopListening(self):
        self.events.append(("stop", self.address.port))

    def getHost(self):
        return self.address


class Recorder:
    """Stands for a channel's user or a client's link (and its transport): records what is done to it."""

    def __init__(self, events, name):
        self.events = events
        self.name = name
        self.transport = self

    def close(self, reason):
        self.events.append((self.name, "close", reason))

    def goAway(self, why):
        self.events.append((self.name, "goAway"))

    def abortConnection(self):
        self.events.append((self.name, "abort"))


CLIENT_PORT, ADMIN_PORT, STORED_PORT = 4321, 8765, 5433


class ServerServiceTests(SynchronousTestCase):
    """
    makeService for 'portmapper' composes the server from named services
    that start, on a memory reactor, in order and where the options say.
    """

    def setUp(self):
        self.reactor = StoreThreadReactor()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.dataDir = self.mktemp()

    def settle(self, d, timeout=10.0):
        """
        Run what the store's thread hands back, and calls due now, until
        C{d} has fired (at most C{timeout} seconds); return its result.
        """
        fired = []
        d.addBoth(lambda result: fired.append(result))
        deadline = time.monotonic() + timeout
        while not fired:
            self.reactor.advance(0)
            if fired:
                break
            try:
                f, args, kwargs = self.reactor.fromThreads.get(timeout=0.05)
            except queue.Empty:
                if time.monotonic() > deadline:
                    self.fail(f"nothing fired {d!r} within {timeout} seconds")
                continue
            f(*args, **kwargs)
        return fired[0]

    def makeServer(self, argv=()):
        options = server_tap.Options()
        options.parseOptions([
            "--data-dir", self.dataDir,
            "--client-port", f"tcp:{CLIENT_PORT}:interface=127.0.0.1",
            "--admin", f"tcp:{ADMIN_PORT}:interface=127.0.0.1",
            *argv,
        ])
        return options, server_tap.makeService(options, reactor=self.reactor)

    def start(self, service):
        """Start C{service} (stopped again at the end of the test) and return what ready gives."""
        self.addCleanup(lambda: service.running and self.settle(service.stopService()))
        service.startService()
        return self.settle(service.ready)

    def storeMapping(self, port):
        """Store a mapping of C{port}, as an earlier run of the server would have."""
        store = Store(os.path.join(self.dataDir, "portmapper.sqlite3"), self.reactor)
        self.settle(store.start())
        self.settle(store.save_mapping(port, "10.0.0.1", 22, "default"))
        self.settle(store.stop())

    def test_children(self):
        """The service is a MultiService of store, webhooks, server, two listeners and sampler, in order."""
        options, service = self.makeServer(["--token", "sekrit", "--sample-interval", "2"])
        self.assertIsInstance(service, MultiService)
        self.assertEqual([child.name for child in service],
                         ["store", "webhooks", "server", "client-port", "admin", "sampler", "heartbeat"])
        server = service.getServiceNamed("server")
        self.assertIsInstance(server, PortMapperServer)
        self.assertIs(server.settings, options.settings)
        self.assertIs(server.reactor, self.reactor)
        self.assertIs(service.getServiceNamed("store").store, server.store)
        self.assertIs(service.getServiceNamed("webhooks"), server.webhooks)
        client_port = service.getServiceNamed("client-port")
        self.assertIsInstance(client_port, StreamServerEndpointService)
        self.assertIsInstance(client_port.factory, ServerLinkFactory)
        self.assertIs(client_port.factory.server, server)
        admin = service.getServiceNamed("admin")
        self.assertIsInstance(admin, StreamServerEndpointService)
        self.assertIsInstance(admin.factory, AdminSite)
        self.assertEqual(service.getServiceNamed("sampler").interval, 2.0)

    def test_settings(self):
        """The server gets exactly the parsed settings."""
        options, service = self.makeServer(["--token", "sekrit", "--window", "32768"])
        settings = service.getServiceNamed("server").settings
        self.assertIsInstance(settings, ServerSettings)
        self.assertEqual((settings.token, settings.window), ("sekrit", 32768))
        self.assertEqual(settings.client_port.text, f"tcp:{CLIENT_PORT}:interface=127.0.0.1")

    def test_serverProvidesInterface(self):
        """The server the admin API is given provides all of IPortMapperServer."""
        _, service = self.makeServer()
        self.assertTrue(verifyObject(IPortMapperServer, service.getServiceNamed("server")))

    def test_nothingBeforeStart(self):
        """Building the service listens on nothing and schedules nothing."""
        _, service = self.makeServer(["--token", "sekrit"])
        self.assertFalse(service.running)
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertNoResult(service.ready)

    def test_listensWhereOptionsSay(self):
        """Started, the client port and the admin API listen on the ports and interface of the options."""
        _, service = self.makeServer()
        ports = self.start(service)
        self.assertEqual(
            [(port, type(factory), interface) for port, factory, _, interface in self.reactor.tcpServers],
            [(CLIENT_PORT, ServerLinkFactory, "127.0.0.1"), (ADMIN_PORT, AdminSite, "127.0.0.1")])
        self.assertEqual((ports["client-port"].getHost().port, ports["admin"].getHost().port),
                         (CLIENT_PORT, ADMIN_PORT))
        server = service.getServiceNamed("server")
        self.assertEqual((server.client_port, server.admin_address.port), (CLIENT_PORT, ADMIN_PORT))

    def test_startOrder(self):
        """Nothing listens before the store is open; stored mappings listen before client port and admin."""
        self.storeMapping(STORED_PORT)
        _, service = self.makeServer()
        service.startService()
        self.addCleanup(lambda: self.settle(service.stopService()))
        self.assertEqual(self.reactor.tcpServers, [])  # the store is opening in its thread
        self.settle(service.ready)
        self.assertEqual([server[0] for server in self.reactor.tcpServers],
                         [STORED_PORT, CLIENT_PORT, ADMIN_PORT])
        self.assertIn(STORED_PORT, service.getServiceNamed("server").mappings())
        # The sampler's next tick and the next heartbeat.
        self.assertEqual([call.getTime() for call in self.reactor.getDelayedCalls()], [1.0, 1.0])

    def test_stopOrder(self):
        """Stopping stops admin, client port, public ports, drains, closes channels and links, then the store."""
        self.storeMapping(STORED_PORT)
        _, service = self.makeServer(["--drain-timeout", "5"])
        self.start(service)
        server = service.getServiceNamed("server")
        events = self.reactor.events
        server.registry.new_client("10.0.0.7", 40000, "default", 0.0, link=Recorder(events, "link"))
        server.registry.new_channel(STORED_PORT, "10.0.0.8", 50000, 0.0, user=Recorder(events, "user"))
        store = service.getServiceNamed("store").store
        stop_store = store.stop
        store.stop = lambda: events.append("store") or stop_store()

        stopped = service.stopService()
        self.reactor.advance(0)
        self.assertEqual(events, [
            ("stop", ADMIN_PORT), ("stop", CLIENT_PORT), ("stop", STORED_PORT), ("link", "goAway"),
        ])
        self.reactor.advance(5)  # the channel did not end within --drain-timeout
        self.settle(stopped)
        self.assertEqual(events[4:], [
            ("user", "close", SERVER_STOPPED), ("link", "close", "the server is stopping"),
            ("link", "abort"), "store",
        ])
        self.assertFalse([child.name for child in service if child.running])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_listenFailure(self):
        """A listener that cannot listen fails ready, logged in one sentence; the process will exit 1."""
        self.reactor.refuse.add(ADMIN_PORT)
        _, service = self.makeServer()
        service.startService()
        self.addCleanup(lambda: self.settle(service.stopService()))
        self.assertIsNone(self.settle(service.ready))  # the exit hook handled the failure
        self.assertEqual([server[0] for server in self.reactor.tcpServers], [CLIENT_PORT])
        self.assertFalse(service.getServiceNamed("sampler").running)
        critical = [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertTrue(critical[0].startswith("the portmapper server could not start: Couldn't listen"),
                        critical[0])
        self.assertIn(f"{ADMIN_PORT}", critical[0])
        self.assertEqual([e for e in self.events if e.get("log_failure")], [])
        self.assertEqual(self.reactor.whenRunningHooks, [(self.reactor.stop, (), {})])
        (exit_call,) = self.reactor.triggers["after"]["shutdown"]
        self.assertEqual(exit_call[1], (1,))

    def test_warnsWithoutToken(self):
        """Without --token, makeService warns that any client may serve mappings."""
        self.makeServer([])
        warnings = [e for e in self.events if "no token is set" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)

    def test_noWarningWithToken(self):
        """With --token, makeService does not warn about it."""
        self.makeServer(["--token", "sekrit"])
        self.assertEqual(
            [e for e in self.events if "no token is set" in e.get("log_format", "")], [])


class ClientServiceTests(SynchronousTestCase):
    """makeService for 'portmapper-client' builds a ClientService that dials --server."""

    def makeClient(self, argv):
        self.reactor = MemoryReactorClock()
        options = client_tap.Options()
        options.parseOptions(argv)
        return options, client_tap.makeService(options, reactor=self.reactor)

    def test_service(self):
        """The service is a ClientService that does not connect before it starts."""
        options, service = self.makeClient(["--server", "tcp:host=tunnel.example.org:port=4321"])
        self.assertIsInstance(service, ClientService)
        self.assertIsInstance(options.settings, ClientSettings)
        self.assertFalse(service.running)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_startConnectsToServer(self):
        """Starting the service dials the host and port of --server; stopping it ends."""
        _, service = self.makeClient([
            "--server", "tcp:host=tunnel.example.org:port=4321", "--tag", "lab",
            "--token", "sekrit"])
        service.startService()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("tunnel.example.org", 4321))
        stopped = service.stopService()
        self.successResultOf(stopped)
        self.assertFalse(service.running)
        # Stopped while dialling: nothing is left to retry.
        self.reactor.advance(3600)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_defaultServer(self):
        """Without --server the client dials 127.0.0.1:1111."""
        _, service = self.makeClient([])
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 1111))


# -- packaging ---------------------------------------------------------------

# What a copy of the work tree leaves out (as .gitignore does).
_IGNORE = shutil.ignore_patterns(
    ".git", "_trial_temp*", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
    ".venv", "venv", "dropin.cache", "*.sqlite3", ".hypothesis")

# One subprocess never runs longer than this (seconds).
_TIMEOUT = 300

# Run inside the fresh environment: where portmapper came from, and the
# IServiceMaker plugins Twisted finds there.
_PROBE = """\
import portmapper
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
print(portmapper.__file__)
print(" ".join(sorted(p.tapname for p in getPlugins(IServiceMaker))))
"""

# `twistd ARGS...`, without relying on a `twistd` script being installed.
_TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def _run(args, **kwargs):
    """Run C{args}; return (exit status, stdout and stderr together)."""
    result = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=_TIMEOUT, **kwargs)
    return result.returncode, result.stdout


def _dependencyPaths():
    """
    The directories this interpreter imports Twisted and the other
    dependencies from, without the source tree.
    """
    import attr
    import twisted

    candidates = [Path(twisted.__file__).resolve().parents[1],
                  Path(attr.__file__).resolve().parents[1]]
    candidates += [Path(p) for p in site.getsitepackages()]
    excluded = {ROOT, ROOT / "src"}
    paths = []
    for path in candidates:
        path = path.resolve()
        if path.is_dir() and path not in excluded and str(path) not in paths:
            paths.append(str(path))
    return paths


# The wheel built by the first WheelTests test: {"wheel": (name, bytes)} or
# {"wheel": None, "why": reason}.
_BUILT = {}


def _buildWheel():
    """Build a wheel from a copy of the work tree with pip; see L{_BUILT}."""
    with tempfile.TemporaryDirectory(prefix="portmapper-build-") as work:
        work = Path(work)
        source = work / "source"
        shutil.copytree(ROOT, source, ignore=_IGNORE)
        dist = work / "dist"
        attempts = [
            # Offline: setuptools and wheel from this environment.
            ["--no-build-isolation", "--no-index"],
            # The build requirements from pip's configured index.
            ["--timeout", "20", "--retries", "1"],
        ]
        output = ""
        for extra in attempts:
            try:
                status, output = _run(
                    [sys.executable, "-m", "pip", "wheel", "--no-deps",
                     "--disable-pip-version-check", "-w", str(dist)] + extra + [str(source)],
                    cwd=str(work))
            except subprocess.TimeoutExpired:
                output = f"timed out after {_TIMEOUT} seconds"
                continue
            wheels = list(dist.glob("portmapper-*.whl"))
            if status == 0 and len(wheels) == 1:
                return {"wheel": (wheels[0].name, wheels[0].read_bytes())}
    last = " | ".join(output.strip().splitlines()[-3:])
    return {"wheel": None,
            "why": "cannot build a wheel here (pip wheel failed both with this environment's "
                   f"setuptools and with build isolation): {last}"}


class WheelTests(SynchronousTestCase):
    """
    A wheel of the project, installed into a fresh environment that cannot
    see the source tree, gives twistd both plugins (projects have shipped
    wheels without their twisted/plugins file).
    """

    def setUp(self):
        self.work = Path(tempfile.mkdtemp(prefix="portmapper-wheel-"))
        self.addCleanup(shutil.rmtree, self.work, ignore_errors=True)

    def buildWheel(self):
        """
        A wheel of the work tree in this test's directory (built once per
        test run, from a copy of the tree so the build leaves nothing in it),
        or skip if no wheel can be built here.
        """
        if "wheel" not in _BUILT:
            _BUILT.update(_buildWheel())
        if _BUILT["wheel"] is None:
            raise self.skipTest(_BUILT["why"])
        name, data = _BUILT["wheel"]
        wheel = self.work / name
        wheel.write_bytes(data)
        return wheel

    def install(self, wheel):
        """Install C{wheel} (without dependencies) into a new directory; return it."""
        target = self.work / "target"
        status, output = _run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
             "--disable-pip-version-check", "--target", str(target), str(wheel)],
            cwd=str(self.work))
        self.assertEqual(status, 0, output)
        return target

    def freshPython(self, target):
        """
        A new venv's python and the environment that lets it import the
        installed wheel and this interpreter's dependencies, but not src/.
        """
        env_dir = self.work / "venv"
        venv.EnvBuilder(with_pip=False, symlinks=(os.name != "nt")).create(env_dir)
        python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH",
                            "VIRTUAL_ENV")}
        paths = [str(target)] + _dependencyPaths()
        for path in paths:
            self.assertFalse(Path(path) == ROOT or (ROOT / "src") in Path(path).parents
                             or Path(path) == ROOT / "src", path)
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONNOUSERSITE"] = "1"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        run_dir = self.work / "run"
        run_dir.mkdir()

        def run(*args):
            return _run([str(python)] + list(args), cwd=str(run_dir), env=env)

        return run

    def test_wheelContents(self):
        """The wheel holds the plugin file and the packages, and no twisted/ __init__.py."""
        with zipfile.ZipFile(self.buildWheel()) as wheel:
            names = set(wheel.namelist())
            metadata = next(wheel.read(n).decode("utf-8") for n in names
                            if n.endswith(".dist-info/METADATA"))
        self.assertIn("twisted/plugins/portmapper_plugins.py", names)
        # Either would hide Twisted's own packages once installed.
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/dropin.cache", names)
        for module in ("portmapper/__init__.py", "portmapper/config.py",
                       "portmapper/server/tap.py", "portmapper/server/core.py",
                       "portmapper/client/tap.py", "portmapper/client/agent.py",
                       "portmapper/protocol/connection.py",
                       # the dashboard's package data
                       "portmapper/server/console/index.html",
                       "portmapper/server/console/app.js",
                       "portmapper/server/console/style.css"):
            self.assertIn(module, names)
        self.assertFalse([n for n in names if n.startswith("tests/")])
        self.assertIn("Requires-Dist: twisted", metadata)

    def test_installedWheelRunsUnderTwistd(self):
        """Installed from the wheel alone, twistd lists and runs both plugins' --help."""
        target = self.install(self.buildWheel())
        run = self.freshPython(target)

        status, output = run("-c", _PROBE)
        self.assertEqual(status, 0, output)
        origin, tapnames = output.strip().splitlines()[-2:]
        # portmapper came from the installed wheel, not from the source tree.
        self.assertTrue(Path(origin).resolve().is_relative_to(target.resolve()), origin)
        self.assertIn("portmapper", tapnames.split())
        self.assertIn("portmapper-client", tapnames.split())

        status, output = run("-c", _TWISTD, "--help")
        self.assertEqual(status, 0, output)
        self.assertIn("portmapper-client", output)
        self.assertIn("reverse TCP tunnel server", " ".join(output.split()))

        status, output = run("-c", _TWISTD, "portmapper", "--help")
        self.assertEqual(status, 0, output)
        for option in ("--config", "--client-port", "--admin", "--admin-token", "--window",
                       "--data-dir"):
            self.assertIn(option, output)

        status, output = run("-c", _TWISTD, "portmapper-client", "--help")
        self.assertEqual(status, 0, output)
        for option in ("--config", "--server", "--tag", "--allow", "--connect-timeout"):
            self.assertIn(option, output)

    def test_installedWheelUnderTwist(self):
        """`python -m twisted portmapper --help` (twist) works from the installed wheel too."""
        run = self.freshPython(self.install(self.buildWheel()))
        status, output = run("-m", "twisted", "portmapper", "--help")
        self.assertEqual(status, 0, output)
        self.assertIn("--client-port", output)

    def test_installedWheelRefusesBadValue(self):
        """twistd prints the bad value's one sentence and exits non-zero."""
        run = self.freshPython(self.install(self.buildWheel()))
        status, output = run("-c", _TWISTD, "portmapper", "--window", "0")
        self.assertNotEqual(status, 0, output)
        self.assertIn("Bad value '0' for window: must be a positive whole number.", output)


# -- a real twistd process ----------------------------------------------------

class ServerStartFailureTests(SynchronousTestCase):
    """A twistd server that cannot start says why in one sentence and exits with status 1."""

    def test_clientPortInUse(self):
        """With its client port taken, `twistd -n portmapper` logs one line naming the port and exits 1."""
        work = Path(self.mktemp())
        work.mkdir(parents=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            status, output = _run(
                [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "portmapper",
                 "--client-port", f"tcp:{port}:interface=127.0.0.1",
                 "--admin", "tcp:0:interface=127.0.0.1",
                 "--data-dir", str(work / "data"), "--token", "sekrit"],
                cwd=str(work), env=env)
        self.assertEqual(status, 1, output)
        lines = [line for line in output.splitlines() if "could not start" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertIn(f"Couldn't listen on 127.0.0.1:{port}", lines[0])
        self.assertNotIn("Traceback", output)
