"""The paths under test: how to start, probe, account for and stop each one.

A path leads from the load generator to the backend.  ``Direct`` is no
path at all; the others start processes of their own (socat, a private
sshd and an ``ssh -R`` client, ``twistd portforward``, the portmapper server
and client), optionally with ``delay_relay.py`` in the middle to play a
long-distance link.  Every process is started in a new session (its own
process group), on 127.0.0.1 only, with its output in a log file of a
private temporary directory, and is stopped by ``Path.stop()`` -- group
first, then any descendant that left the group (sshd's per-connection
children call setsid), SIGTERM then SIGKILL.

``process_tree``, ``rss_kib``, ``pss_kib`` and ``cpu_seconds`` read /proc to
account a path's memory and CPU over all its processes, forks included.
"""

import json
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import loadgen

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LOCALHOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class PeerUnavailable(Exception):
    """A path could not be started; the message says why, in one line."""


def free_port():
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


# -- /proc accounting -------------------------------------------------------

def _parent_map():
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(entry)] = int(fields[1])
    return parents


def process_tree(roots):
    """``roots`` and all their live descendants."""
    parents = _parent_map()
    children = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found = []
    todo = [pid for pid in roots if pid in parents]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _status_kib(pid, path, field):
    try:
        with open("/proc/%d/%s" % (pid, path)) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def rss_kib(roots):
    """Sum of VmRSS over the process trees, in KiB."""
    return sum(_status_kib(p, "status", "VmRSS:") for p in process_tree(roots))


def pss_kib(roots):
    """Sum of Pss (shared pages divided among sharers), in KiB."""
    return sum(_status_kib(p, "smaps_rollup", "Pss:")
               for p in process_tree(roots))


def cpu_seconds(roots):
    """User+system CPU of the trees, including reaped children of roots."""
    total = 0
    for pid in process_tree(roots):
        try:
            with open("/proc/%d/stat" % pid) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        total += utime + stime
        if pid in roots:
            total += cutime + cstime
    return total / CLOCK_TICKS


# -- processes --------------------------------------------------------------

class Process:
    """A child process in its own session, logging to a file."""

    def __init__(self, argv, log_path, cwd=None, stdin=subprocess.DEVNULL,
                 stdout_pipe=False, env=None):
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "wb")
        try:
            self.popen = subprocess.Popen(
                argv, cwd=cwd, stdin=stdin,
                stdout=subprocess.PIPE if stdout_pipe else self.log,
                stderr=self.log, start_new_session=True, env=env)
        except OSError as e:
            self.log.close()
            raise PeerUnavailable("cannot run %s: %s" % (argv[0], e)) from e
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def last_words(self):
        """The last non-empty line of its log, for error messages."""
        self.log.flush()
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read()[-4000:].decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        lines = [line.strip() for line in lines if line.strip()]
        return lines[-1] if lines else ""

    def check_alive(self, what):
        if not self.alive():
            raise PeerUnavailable("%s exited with status %s: %s" % (
                what, self.popen.returncode, self.last_words() or "no output"))

    def read_ready_line(self, prefix, timeout):
        """Wait for a ``prefix ...`` line on the child's stdout pipe."""
        deadline = time.monotonic() + timeout
        pipe = self.popen.stdout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], 0.2)
            if ready:
                line = pipe.readline().decode("utf-8", "replace")
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
                if not line:
                    break
        self.check_alive(self.argv[0])
        raise PeerUnavailable("%s did not say %r in %ss" % (
            os.path.basename(self.argv[-1]), prefix, timeout))

    def stop(self, grace=5.0):
        if self.popen.returncode is not None and not process_tree([self.pid]):
            self.log.close()
            return
        family = process_tree([self.pid])
        self._signal_all(family, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in family):
            time.sleep(0.05)
        survivors = [p for p in family if _alive(p)]
        if survivors or self.popen.poll() is None:
            self._signal_all(survivors + [self.pid], signal.SIGKILL)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if self.popen.stdin:
            self.popen.stdin.close()
        if self.popen.stdout:
            self.popen.stdout.close()
        self.log.close()

    def _signal_all(self, pids, signum):
        try:
            os.killpg(self.pid, signum)  # our session leader's group
        except OSError:
            pass
        for pid in pids:
            try:
                os.kill(pid, signum)
            except OSError:
                pass


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_until_carries(address, timeout, processes=(), what="path"):
    """Poll until a connection to ``address`` gets a byte through."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        for proc in processes:
            proc.check_alive(what)
        try:
            sock = loadgen.connect(address, timeout=2.0)
            try:
                sock.sendall(b"P")
                if sock.recv(1) == b"P":
                    return
                last = "no reply byte"
            finally:
                sock.close()
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise PeerUnavailable("%s on %s:%d carried no byte in %ss (%s)"
                          % (what, address[0], address[1], timeout, last))


# -- the paths --------------------------------------------------------------

class Path:
    """Base class.  ``start()`` sets ``address``; ``stop()`` is idempotent."""

    name = "path"
    #: one-way delay in ms of a delay relay inside the path, or None
    delay_ms = None

    def __init__(self, backend_port):
        self.backend = (LOCALHOST, backend_port)
        self.address = None
        self.processes = []  # the tunnel's own processes
        self.helpers = []  # processes that are not the tunnel (delay relay)
        self.tmp = None

    def start(self):
        raise NotImplementedError

    def extra_lines(self):
        """Lines the path has to add to the report (read before stop())."""
        return []

    def tunnel_pids(self):
        """Root pids whose trees are the path's own cost (RSS, CPU)."""
        return [p.pid for p in self.processes]

    def make_tmp(self):
        self.tmp = tempfile.mkdtemp(prefix="portmapper-bench-%s-" % (
            "".join(c if c.isalnum() else "-" for c in self.name)[:24],))
        return self.tmp

    def spawn(self, argv, log_name, helper=False, **kwargs):
        proc = Process(argv, os.path.join(self.tmp, log_name), **kwargs)
        (self.helpers if helper else self.processes).append(proc)
        return proc

    def delay_relay(self, target_port, delay_ms):
        """Start a delay relay in front of ``target_port``; return its port."""
        proc = self.spawn(
            [sys.executable, os.path.join(HERE, "delay_relay.py"),
             "--listen", "%s:0" % LOCALHOST,
             "--connect", "%s:%d" % (LOCALHOST, target_port),
             "--delay-ms", str(delay_ms)],
            "delay_relay.log", helper=True, stdout_pipe=True)
        return int(proc.read_ready_line("READY ", 10).rpartition(":")[2])

    def until(self, timeout, processes, ask, good, what):
        """Call ``ask`` until ``good`` says yes to its answer (``processes`` alive); that answer."""
        deadline = time.monotonic() + timeout
        answer = None
        while time.monotonic() < deadline:
            for proc in processes:
                proc.check_alive(os.path.basename(proc.log_path)[:-4])
            try:
                answer = ask()
                if good(answer):
                    return answer
            except (OSError, ValueError) as e:
                answer = str(e)
            time.sleep(0.1)
        raise PeerUnavailable("no %s in %ss (last answer: %s)"
                              % (what, timeout, answer))

    def stop(self):
        # The tunnel's client side first (ssh, portmapper-client), so the
        # server side sees its connections close before it is told to go.
        for proc in reversed(self.processes + self.helpers):
            proc.stop()
        self.processes, self.helpers = [], []
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


class Direct(Path):
    """Load generator to backend, nothing between."""

    name = "direct"

    def start(self):
        self.address = self.backend


class DirectViaDelay(Path):
    """Load generator to backend through a delay relay only."""

    def __init__(self, backend_port, delay_ms):
        super().__init__(backend_port)
        self.delay_ms = delay_ms
        self.name = "direct +%gms" % delay_ms

    def start(self):
        self.make_tmp()
        port = self.delay_relay(self.backend[1], self.delay_ms)
        self.address = (LOCALHOST, port)
        wait_until_carries(self.address, 10, self.helpers, "delay relay")


class Socat(Path):
    """``socat TCP-LISTEN:P,fork`` one-hop relay.

    With socat's default listen backlog of 5, eight concurrent connectors
    overflow it and some SYNs wait out a one-second retransmission, which
    measures the backlog rather than the relay; ``backlog`` (128, what
    sshd uses for forwarded ports; Twisted uses 50) takes that away.
    """

    name = "socat"
    backlog = 128

    def start(self):
        socat = shutil.which("socat")
        if not socat:
            raise PeerUnavailable("socat is not installed "
                                  "(apt-get install socat)")
        self.make_tmp()
        port = free_port()
        proc = self.spawn(
            [socat, "TCP-LISTEN:%d,fork,reuseaddr,bind=%s,backlog=%d"
             % (port, LOCALHOST, self.backlog),
             "TCP:%s:%d" % self.backend], "socat.log")
        self.address = (LOCALHOST, port)
        wait_until_carries(self.address, 10, [proc], "socat")


class Portforward(Path):
    """Twisted's own one-hop relay, ``twistd portforward``, for reference."""

    name = "twistd portforward"

    def __init__(self, backend_port, twistd):
        super().__init__(backend_port)
        self.twistd = twistd

    def start(self):
        self.make_tmp()
        port = free_port()
        proc = self.spawn(
            self.twistd + ["-n", "--pidfile=", "portforward",
                           "--port", "tcp:%d:interface=%s" % (port, LOCALHOST),
                           "--host", LOCALHOST,
                           "--dest_port", str(self.backend[1])],
            "portforward.log", cwd=self.tmp)
        self.address = (LOCALHOST, port)
        wait_until_carries(self.address, 15, [proc], "twistd portforward")


SSHD_CONFIG = """\
ListenAddress {host}:{port}
HostKey {tmp}/host_ed25519
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {tmp}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
GatewayPorts no
UseDNS no
PrintMotd no
LogLevel ERROR
"""


class Ssh(Path):
    """A private sshd and ``ssh -R`` from a client, as people tunnel today.

    ``variant`` is ``"gcm-tty"`` (``-c aes128-gcm@openssh.com -tt sleep``) or
    ``"default"`` (default cipher, ``-N``).
    """

    def __init__(self, backend_port, variant, delay_ms=None):
        super().__init__(backend_port)
        self.variant = variant
        self.delay_ms = delay_ms
        if variant == "gcm-tty":
            self.name = "ssh -R (aes128-gcm, -tt)"
        else:
            self.name = "ssh -R (%s)" % default_ssh_cipher()
        if delay_ms:
            self.name += " +%gms" % delay_ms

    def start(self):
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        ssh = shutil.which("ssh")
        keygen = shutil.which("ssh-keygen")
        if not (os.path.exists(sshd) and ssh and keygen):
            raise PeerUnavailable("OpenSSH is not installed (apt-get install "
                                  "openssh-server openssh-client)")
        tmp = self.make_tmp()
        for key in ("host_ed25519", "client_ed25519"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "",
                            "-f", os.path.join(tmp, key)],
                           check=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.copy(os.path.join(tmp, "client_ed25519.pub"),
                    os.path.join(tmp, "authorized_keys"))
        sshd_port = free_port()
        config = os.path.join(tmp, "sshd_config")
        with open(config, "w") as f:
            f.write(SSHD_CONFIG.format(host=LOCALHOST, port=sshd_port, tmp=tmp))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privsep dir
        server = self.spawn([sshd, "-f", config, "-D", "-e"], "sshd.log")
        wait_for_listen((LOCALHOST, sshd_port), 10, server, "sshd")

        dial_port = sshd_port
        if self.delay_ms:
            dial_port = self.delay_relay(sshd_port, self.delay_ms)
        public = free_port()
        argv = [ssh, "-F", "/dev/null",
                "-R", "%s:%d:%s:%d" % (LOCALHOST, public, LOCALHOST,
                                       self.backend[1]),
                "-p", str(dial_port), "-i", os.path.join(tmp, "client_ed25519"),
                "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                "-o", "LogLevel=ERROR"]
        if self.variant == "gcm-tty":
            argv += ["-c", "aes128-gcm@openssh.com", "-tt",
                     "root@%s" % LOCALHOST, "sleep", "3600"]
            # -tt wants a stdin that stays open: a pipe we hold.
            client = self.spawn(argv, "ssh.log", stdin=subprocess.PIPE)
        else:
            argv += ["-N", "root@%s" % LOCALHOST]
            client = self.spawn(argv, "ssh.log")
        self.address = (LOCALHOST, public)
        wait_until_carries(self.address, 20, [server, client], "ssh -R")


def default_ssh_cipher():
    """The first cipher ssh would offer, e.g. chacha20-poly1305."""
    try:
        out = subprocess.run(["ssh", "-F", "/dev/null", "-G", LOCALHOST],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "default cipher"
    for line in out.splitlines():
        if line.startswith("ciphers "):
            return line.split()[1].split(",")[0].replace("@openssh.com", "")
    return "default cipher"


def wait_for_listen(address, timeout, proc, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive(what)
        try:
            socket.create_connection(address, timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise PeerUnavailable("%s did not listen on %s:%d in %ss"
                          % (what, address[0], address[1], timeout))


def find_twistd(override=None):
    """The twistd command line: ``--twistd``, the venv's, or ``-c run()``."""
    if override:
        return shlex.split(override)
    candidates = [os.path.join(os.path.dirname(sys.executable), "twistd"),
                  "/tmp/venv/bin/twistd", shutil.which("twistd")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return [candidate]
    return [sys.executable, "-c",
            "from twisted.scripts.twistd import run; run()"]


def plugin_env():
    """Environment for twistd that finds the checkout's twistd plugins.

    An editable install (``pip install -e .``) makes ``portmapper``
    importable but does not put the checkout's ``twisted/plugins`` on
    ``twisted.plugins.__path__``, so ``twistd`` would not list the
    ``portmapper`` commands; with the checkout root on PYTHONPATH it does
    (a ``twisted`` folder without ``__init__.py`` never shadows the real
    package).  The checkout's ``src`` goes there too, so that twistd runs
    this checkout's code even when the venv has another checkout installed
    in editable mode (a git worktree next to the main one).  Nothing
    changes when the plugin file is not there.
    """
    env = dict(os.environ)
    if os.path.exists(os.path.join(REPO, "twisted", "plugins",
                                   "portmapper_plugins.py")):
        env["PYTHONPATH"] = os.pathsep.join(
            [REPO, os.path.join(REPO, "src")]
            + [p for p in [env.get("PYTHONPATH")] if p])
    return env


#: the window cap of a portmapper with a delay relay on its link: above
#: the bandwidth-delay product of this machine's relay (~900 MB/s x 0.1 s)
DELAY_MAX_WINDOW = 128 * 1024 * 1024


def http_json(method, url, timeout=3.0):
    request = urllib.request.Request(
        url, data=b"" if method == "POST" else None, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        try:
            return json.loads(body)
        except ValueError:
            return {"result": "failed", "reason": "HTTP %d: %s"
                    % (e.code, body[:200])}


class Portmapper(Path):
    """The portmapper server and client as production runs them (twistd).

    ``tls`` puts the link on ``ssl:``/``tls:`` endpoints with a self-signed
    certificate; ``delay_ms`` puts a delay relay on the link, and then both
    ends get ``--max-window DELAY_MAX_WINDOW`` unless the extra arguments
    set ``--max-window`` themselves: the default cap (16 MiB) allows at most
    160 MB/s per channel over the relay's 100 ms round trip.  The extra
    argument strings are appended to the server and client command lines.
    """

    token = "benchtoken"

    def __init__(self, backend_port, twistd, tls=False, delay_ms=None,
                 server_args="", client_args=""):
        super().__init__(backend_port)
        self.twistd = twistd
        self.tls = tls
        self.delay_ms = delay_ms
        self.server_args = shlex.split(server_args)
        self.client_args = shlex.split(client_args)
        #: the --max-window this path added to both ends, or None
        self.max_window = None
        if delay_ms and not any(a.startswith("--max-window")
                                for a in self.server_args + self.client_args):
            self.max_window = DELAY_MAX_WINDOW
            self.server_args += ["--max-window", str(DELAY_MAX_WINDOW)]
            self.client_args += ["--max-window", str(DELAY_MAX_WINDOW)]
        self.name = "portmapper" + (" (TLS)" if tls else "")
        if delay_ms:
            self.name += " +%gms" % delay_ms

    def make_certificate(self):
        openssl = shutil.which("openssl")
        if not openssl:
            raise PeerUnavailable("openssl is not installed")
        trust = os.path.join(self.tmp, "trust")
        os.mkdir(trust)
        cert = os.path.join(trust, "cert.pem")
        key = os.path.join(self.tmp, "key.pem")
        result = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-keyout", key, "-out", cert, "-days", "2",
             "-subj", "/CN=%s" % LOCALHOST,
             "-addext", "subjectAltName=IP:%s" % LOCALHOST],
            capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL)
        if result.returncode:
            raise PeerUnavailable("openssl failed: %s"
                                  % result.stderr.strip().splitlines()[-1:])
        return key, cert, trust

    def start(self):
        tmp = self.make_tmp()
        data_dir = os.path.join(tmp, "data")
        os.mkdir(data_dir)
        cport, aport, public = free_port(), free_port(), free_port()
        if self.tls:
            key, cert, trust = self.make_certificate()
            client_port = "ssl:%d:interface=%s:privateKey=%s:certKey=%s" % (
                cport, LOCALHOST, key, cert)
        else:
            client_port = "tcp:%d:interface=%s" % (cport, LOCALHOST)
        server = self.spawn(
            self.twistd + ["-n", "--pidfile=", "portmapper",
                           "--client-port", client_port,
                           "--admin", "tcp:%d:interface=%s" % (aport, LOCALHOST),
                           "--public-interface", LOCALHOST,
                           "--data-dir", data_dir, "--token", self.token]
            + self.server_args, "server.log", cwd=tmp, env=plugin_env())
        wait_for_listen((LOCALHOST, aport), 20, server, "portmapper server")

        dial_port = cport
        if self.delay_ms:
            dial_port = self.delay_relay(cport, self.delay_ms)
        if self.tls:
            dial = "tls:host=%s:port=%d:trustRoots=%s" % (
                LOCALHOST, dial_port, trust)
        else:
            dial = "tcp:host=%s:port=%d" % (LOCALHOST, dial_port)
        client = self.spawn(
            self.twistd + ["-n", "--pidfile=", "portmapper-client",
                           "--server", dial, "--token", self.token,
                           "--tag", "default"] + self.client_args,
            "client.log", cwd=tmp, env=plugin_env())

        admin = self.admin = "http://%s:%d" % (LOCALHOST, aport)
        mapping = ("%s/port_mapper?port=%d&mapper_ip=%s&mapper_port=%d"
                   "&mapper_tag=default" % (admin, public, LOCALHOST,
                                            self.backend[1]))
        self.until(20, [server], lambda: http_json("POST", mapping),
                   lambda a: a.get("result") == "success",
                   "success from POST /port_mapper")
        self.until(20, [server, client],
                   lambda: http_json("GET", admin + "/client_connection"),
                   lambda a: isinstance(a, dict) and len(a) >= 1,
                   "a client in GET /client_connection")
        self.address = (LOCALHOST, public)
        wait_until_carries(self.address, 20, [server, client], "portmapper")

    def extra_lines(self):
        """What the server's own meters (its sampler) say about the link."""
        try:
            clients = http_json("GET", self.admin + "/client_connection")
            (client,) = clients.values()
            return ["%s, the server's own counters for the client link after "
                    "the runs: received %.0f MB, sent %.0f MB; average "
                    "%.1f/%.1f MB/s over %s s." % (
                        self.name, client["recv_flow_statistics"],
                        client["send_flow_statistics"],
                        client["recv_average_speed"],
                        client["send_average_speed"],
                        client["duration_time"])]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return ["%s: GET /client_connection gave no usable answer (%s)."
                    % (self.name, e)]
