"""
Helpers for the end-to-end tests: a server and a client as production runs
them (the services the twistd plugins build), backends to map to, and
blocking users run in threads, all on 127.0.0.1 with ports the OS picks.
"""

import json
import os
import socket

import treq
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from portmapper.client import tap as client_tap
from portmapper.server import tap as server_tap

TOKEN = "e2e-token"
POLL = 0.01


def free_port():
    """A port nothing listens on now (the OS's pick for a port-0 bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@inlineCallbacks
def wait_for(predicate, timeout=10.0, what="condition"):
    """Poll ``predicate`` until it is true, failing after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        yield deferLater(reactor, POLL, lambda: None)


def server_options(data_dir, client_port=0, *extra):
    options = server_tap.Options()
    options.parseOptions([
        "--client-port", f"tcp:{client_port}:interface=127.0.0.1",
        "--admin", "tcp:0:interface=127.0.0.1",
        "--public-interface", "127.0.0.1",
        "--data-dir", data_dir,
        "--token", TOKEN,
        *extra,
    ])
    return options


def client_options(client_port, *extra, token=TOKEN):
    """A client's options: the plain client port at C{client_port} unless C{extra} names servers."""
    server = [] if "--server" in extra else ["--server", f"tcp:host=127.0.0.1:port={client_port}"]
    options = client_tap.Options()
    options.parseOptions([*server, "--token", token, *extra])
    return options


class Running:
    """A started server (the services makeService composes, without its
    exit-on-failure hook), its admin URL, and helpers to drive it."""

    def __init__(self, testcase, data_dir, client_port=0, extra=()):
        self.testcase = testcase
        settings = server_options(data_dir, client_port, *extra).settings
        self.service = server_tap.build(settings, reactor)
        self.server = self.service.getServiceNamed("server")

    @inlineCallbacks
    def start(self):
        self.testcase.addCleanup(self.stop)
        self.service.startService()
        ports = yield self.service.ready
        self.admin = f"http://127.0.0.1:{ports['admin'].getHost().port}"
        return self

    def stop(self):
        if self.service.running:
            return self.service.stopService()

    @inlineCallbacks
    def api(self, method, path, **params):
        """Call the admin API; return (status, decoded JSON body)."""
        response = yield treq.request(method, self.admin + path, params=params, persistent=False)
        body = yield treq.content(response)
        return response.code, json.loads(body)

    @inlineCallbacks
    def map(self, target_port, tag="default", public_port=None, target_host="127.0.0.1"):
        public_port = public_port or free_port()
        code, body = yield self.api("POST", "/port_mapper", port=str(public_port),
                                    mapper_ip=target_host, mapper_port=str(target_port),
                                    mapper_tag=tag)
        assert code == 200, body
        return public_port


def logged(testcase, prefix, key):
    """A list that collects ``event[key]`` of each log event whose format starts with ``prefix``."""
    found = []

    def observe(event):
        if event.get("log_format", "").startswith(prefix):
            found.append(event[key])

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return found


def start_client(testcase, client_port, *extra, token=TOKEN):
    service = client_tap.makeService(client_options(client_port, *extra, token=token), reactor)
    service.startService()
    testcase.addCleanup(service.stopService)
    return service


# -- backends ---------------------------------------------------------------

class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Backend:
    """A listening backend on 127.0.0.1 with the protocol given; tracks connections."""

    def __init__(self, protocol_factory):
        self.connections = []
        backend = self

        class _Factory(Factory):
            noisy = False

            def buildProtocol(self, addr):
                p = protocol_factory()
                backend.connections.append(p)
                return p

        self.factory = _Factory()

    def listen(self, testcase):
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)
        return self.port.getHost().port


class EchoUser(Protocol):
    """Sends a line at once and fires ``done`` with what comes back once it is all there (or closed)."""

    def __init__(self, line):
        self.line = line
        self.got = b""
        self.done = Deferred()

    def connectionMade(self):
        self.transport.write(self.line)

    def dataReceived(self, data):
        self.got += data
        if len(self.got) >= len(self.line) and not self.done.called:
            self.done.callback(self.got)

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(self.got)


# -- users: blocking sockets in a thread --------------------------------------

def in_thread(f, *args):
    return threads.deferToThread(f, *args)


def accepts(host, port):
    """Whether ``port`` accepts a TCP connection on ``host`` now (blocking: run it in a thread)."""
    try:
        socket.create_connection((host, port), timeout=5).close()
        return True
    except OSError:
        return False


def connect(port, timeout=20.0, host="127.0.0.1"):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = s.recv_into(view[got:], min(n - got, 1 << 20))
        if not k:
            break
        got += k
    return bytes(buf[:got])


def recv_all(s):
    chunks = []
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def recv_or_reset(s):
    """What arrives until the connection closes (b"" if it is reset)."""
    try:
        return recv_all(s)
    except ConnectionResetError:
        return b""


def send_garbage(port, size=4096):
    """Connect to ``port``, send random bytes, and return what comes back until it closes."""
    s = connect(port)
    try:
        s.sendall(os.urandom(size))
        return recv_or_reset(s)
    finally:
        s.close()


def echo_roundtrip(port, data, host="127.0.0.1"):
    """Send ``data`` through an echo path while reading it back; return what came back."""
    s = connect(port, host=host)
    try:
        result = {}

        def reader():
            result["got"] = recv_exactly(s, len(data))

        import threading
        t = threading.Thread(target=reader)
        t.start()
        s.sendall(data)
        t.join(60)
        return result.get("got", b"")
    finally:
        s.close()
