"""
Tests for the example systemd units in contrib/: they carry the options and
hardening the README promises (read with configparser, always), systemd
accepts them (``systemd-analyze verify`` and ``security``, where systemd is
installed), and their ExecStart lines start the real server and client,
which link up through the one config file and stop cleanly on SIGTERM.
"""

import configparser
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import free_port
from tests.test_tap import _TWISTD

ROOT = Path(__file__).resolve().parents[1]
CONTRIB = ROOT / "contrib"
UNITS = {"portmapper.service": "portmapper", "portmapper-client.service": "portmapper-client"}
TWISTD = "/opt/portmapper/venv/bin/twistd"
CONFIG = "/etc/portmapper/tap.conf"

# [Service] options both units must have, with these values.
REQUIRED = {
    "Restart": "on-failure",
    "TimeoutStopSec": "35",
    "User": "portmapper",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}


def read_unit(name):
    """The unit file ``name`` as a ConfigParser (case kept, a repeated key is an error)."""
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), strict=True)
    parser.optionxform = str
    parser.read_string((CONTRIB / name).read_text(encoding="utf-8"), source=name)
    return parser


def exec_start(name):
    return shlex.split(read_unit(name)["Service"]["ExecStart"])


class UnitOptionTests(SynchronousTestCase):
    """What the units say, read as INI files."""

    def test_required_options(self):
        """Both units restart on failure, drain for 35 s, run as portmapper, and are hardened."""
        for name in UNITS:
            service = read_unit(name)["Service"]
            for key, value in REQUIRED.items():
                self.assertEqual((name, key, service.get(key)), (name, key, value))
            self.assertNotIn("AmbientCapabilities", service)  # only when asked for, see below
            self.assertEqual(read_unit(name)["Install"]["WantedBy"], "multi-user.target")

    def test_exec_start(self):
        """ExecStart runs the venv's twistd in the foreground, logging to stdout, with the config."""
        for name, plugin in UNITS.items():
            argv = exec_start(name)
            self.assertEqual(argv[:5], [TWISTD, "-n", "--pidfile=", "--logfile=-", plugin])
            self.assertEqual(argv[argv.index("--config") + 1], CONFIG)

    def test_state_directory(self):
        """The server keeps its database in the state directory systemd makes for it."""
        service = read_unit("portmapper.service")["Service"]
        self.assertEqual(service["StateDirectory"], "portmapper")
        argv = exec_start("portmapper.service")
        self.assertEqual(argv[argv.index("--data-dir") + 1], "/var/lib/portmapper")

    def test_choices_explained(self):
        """The comments show DynamicUser= and the privileged-port capability as ready lines."""
        for name in UNITS:
            text = (CONTRIB / name).read_text(encoding="utf-8")
            self.assertIn("#   DynamicUser=yes\n", text)
            self.assertIn("#   LoadCredential=tap.conf:/etc/portmapper/tap.conf\n", text)
        text = (CONTRIB / "portmapper.service").read_text(encoding="utf-8")
        self.assertIn("#   CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n", text)
        self.assertIn("#   AmbientCapabilities=CAP_NET_BIND_SERVICE\n", text)


class SystemdAnalyzeTests(SynchronousTestCase):
    """systemd's own checks of the units, on copies whose twistd exists."""

    def setUp(self):
        self.analyze = shutil.which("systemd-analyze")
        if self.analyze is None:
            raise self.skipTest("systemd-analyze is not installed (Debian: apt-get install systemd)")
        self.work = Path(tempfile.mkdtemp(prefix="portmapper-units-"))
        self.addCleanup(shutil.rmtree, self.work, ignore_errors=True)
        # verify insists that ExecStart's program exists; a stand-in does.
        twistd = self.work / "twistd"
        twistd.write_text("#!/bin/sh\n")
        twistd.chmod(0o755)
        self.units = []
        for name in UNITS:
            text = (CONTRIB / name).read_text(encoding="utf-8")
            self.assertEqual(text.count(TWISTD), 1)
            self.units.append(self.work / name)
            self.units[-1].write_text(text.replace(TWISTD, str(twistd)))

    def analyze_(self, *args):
        result = subprocess.run([self.analyze, *args], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=120)
        return result.returncode, result.stdout + result.stderr

    def test_verify(self):
        """systemd-analyze verify accepts both units without a single warning."""
        status, output = self.analyze_("verify", "--man=no", *map(str, self.units))
        self.assertEqual((status, output), (0, ""))

    def test_verify_reports_mistakes(self):
        """verify does report a misspelt key and a bad value (so its silence above means something)."""
        bad = self.work / "bad.service"
        bad.write_text(self.units[0].read_text().replace("ProtectSystem=strict", "ProtectSystem=stric")
                       .replace("PrivateTmp=", "PrivateTemp="))
        status, output = self.analyze_("verify", "--man=no", str(bad))
        self.assertIn("stric", output)
        self.assertIn("PrivateTemp", output)

    def test_security_exposure(self):
        """systemd-analyze security rates both units' exposure at 2.0 or less (of 10)."""
        for unit in self.units:
            status, output = self.analyze_("security", "--offline=true", "--threshold=20",
                                           "--no-pager", str(unit))
            if "--offline" in output and "unrecognized option" in output:
                raise self.skipTest("this systemd-analyze has no offline security check")
            self.assertEqual(status, 0, output)
            self.assertIn("OK", output.strip().splitlines()[-1])


class ExecStartTests(SynchronousTestCase):
    """The units' ExecStart lines, run as written but for paths, start and stop the programs."""

    def setUp(self):
        self.work = Path(tempfile.mkdtemp(prefix="portmapper-exec-"))
        self.addCleanup(shutil.rmtree, self.work, ignore_errors=True)
        client_port = free_port()
        self.config = self.work / "tap.conf"
        self.config.write_text(
            "[server]\n"
            f"client_port = tcp:{client_port}:interface=127.0.0.1\n"
            "admin = tcp:0:interface=127.0.0.1\n"
            "public_interface = 127.0.0.1\n"
            "token = unit-test-token\n"
            "[client]\n"
            f"server = tcp:host=127.0.0.1:port={client_port}\n"
            "token = unit-test-token\n")
        self.data_dir = self.work / "state"

    def start(self, name):
        """Start the unit's ExecStart with this test's config, state directory and Python."""
        argv = exec_start(name)
        self.assertEqual(argv[0], TWISTD)
        argv = [sys.executable, "-c", _TWISTD] + [
            {CONFIG: str(self.config), "/var/lib/portmapper": str(self.data_dir)}.get(a, a)
            for a in argv[1:]]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
        process = subprocess.Popen(argv, cwd=str(self.work), env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(self.kill, process)
        process.output = b""
        return process

    def kill(self, process):
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stdout.close()

    def wait_for_output(self, process, text, timeout=60.0):
        """Read ``process``'s output until it holds ``text``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        fd = process.stdout.fileno()
        while text.encode() not in process.output:
            left = deadline - time.monotonic()
            chunk = None
            if left > 0 and select.select([fd], [], [], min(left, 1.0))[0]:
                chunk = os.read(fd, 65536)
                process.output += chunk
            if left <= 0 or chunk == b"":  # out of time, or the process has ended
                self.fail(f"no {text!r} in the output of {process.args}:\n"
                          + process.output.decode(errors="replace"))

    def stop(self, process):
        """SIGTERM, as systemctl stop sends; wait (within TimeoutStopSec) for a clean stop.

        twistd shuts down, then ends itself with the signal it got, which
        systemd counts as a clean exit (so Restart=on-failure does not fire)."""
        process.send_signal(signal.SIGTERM)
        self.assertIn(process.wait(timeout=35), (0, -signal.SIGTERM))
        self.wait_for_output(process, "Server Shut Down.")

    def test_server_and_client(self):
        """The two units' commands start, the client links to the server, and both stop cleanly."""
        server = self.start("portmapper.service")
        self.wait_for_output(server, "portmapper server ready")
        client = self.start("portmapper-client.service")
        self.wait_for_output(client, "connected to the server as client 1 with tag default")
        self.wait_for_output(server, "client 1 connected from 127.0.0.1")
        self.assertTrue((self.data_dir / "portmapper.sqlite3").exists())
        self.stop(client)
        self.wait_for_output(server, "client 1 disconnected")
        self.stop(server)
