"""
A cluster for the end-to-end tests: real ``twistd -n portmapper`` nodes on
one PostgreSQL, each on a loopback address of its own (127.0.0.2, .3, .4:
all of 127/8 is local on Linux), and one real ``twistd -n
portmapper-client`` linked to every node.  Every port is the OS's pick
(port 0), read from the node's ready line; a node restarted after a crash
takes back the client port it had, so the client finds it again.

Users are blocking sockets in threads: :class:`StreamUser` streams through
a mapping until told to stop and checks what comes back byte for byte;
:func:`time_until` times how long a mapping change takes to reach every
node.
"""

import hashlib
import json
import os
import re
import select
import socket
import threading
import time

import treq
from twisted.internet.defer import inlineCallbacks

from tests.e2e import TOKEN, connect, recv_exactly
from tests.test_e2e_crash import WAIT, Twistd, poll

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
READY = re.compile(rb"portmapper server ready: clients on port (\d+), admin API on ([\d.]+:\d+)")
CHUNK = 256 * 1024
MAX_CHUNKS = 2000  # 500 MiB: a stream's bound, far above what a test sends
LISTEN_POLL = 0.005
READ_POLL = 0.2  # a stream's reader looks at whether its sender is done this often


class Node(Twistd):
    """``twistd -n portmapper`` on ``address`` and ``database``: client port, admin API on port 0."""

    def __init__(self, testcase, name, address, database, client_port=0):
        self.name = name
        self.address = address
        self.database = database
        home = os.path.abspath(testcase.mktemp())
        os.makedirs(home)
        super().__init__(testcase, [
            "portmapper", "--database", database, "--node-name", name,
            "--public-interface", address, "--token", TOKEN, "--drain-timeout", "1",
            "--client-port", f"tcp:{client_port}:interface={address}",
            "--admin", f"tcp:0:interface={address}", "--data-dir", os.path.join(home, "data"),
        ], home)

    def lineReceived(self, line):
        found = READY.search(line)
        if found and not self.ready.called:
            self.client_port = int(found.group(1))
            self.admin = "http://" + found.group(2).decode()
            self.ready.callback(self)

    @inlineCallbacks
    def api(self, method, path, **params):
        """(status, decoded JSON body) of an admin API call."""
        response = yield treq.request(method, self.admin + path, params=params,
                                      persistent=False, timeout=WAIT)
        return response.code, json.loads((yield treq.content(response)))

    @inlineCallbacks
    def get(self, path, **params):
        """The body of a GET that must answer 200."""
        code, body = yield self.api("GET", path, **params)
        assert code == 200, (self.name, path, code, body)
        return body

    def restart(self, testcase):
        """A new process for this node, on its database and the client port it had."""
        return Node(testcase, self.name, self.address, self.database, self.client_port).up()


class Client(Twistd):
    """``twistd -n portmapper-client`` linked to every node given (one ``--server`` each)."""

    def __init__(self, testcase, nodes):
        home = os.path.abspath(testcase.mktemp())
        os.makedirs(home)
        servers = []
        for node in nodes:
            servers += ["--server", f"tcp:host={node.address}:port={node.client_port}"]
        super().__init__(testcase, ["portmapper-client", *servers, "--token", TOKEN,
                                    "--tag", "default", "--drain-timeout", "1"], home)
        self.ready.callback(self)  # linked is what counts: see linked()


@inlineCallbacks
def start_cluster(testcase, database, count=3):
    """``count`` nodes on ``database`` (started together) and a client linked to each."""
    nodes = [Node(testcase, f"node{i + 1}", address, database)
             for i, address in enumerate(ADDRESSES[:count])]
    for node in nodes:
        yield node.up()
    client = Client(testcase, nodes)
    yield linked(nodes)
    return nodes, client


@inlineCallbacks
def linked(nodes):
    """{node name: the one client id it shows}, once every node shows one client."""
    ids = {}
    for node in nodes:
        clients = yield poll(lambda: node.get("/client_connection"), f"a client on {node.name}",
                             lambda clients: len(clients) == 1)
        (ids[node.name],) = map(int, clients)
    return ids


def common_free_port(addresses=ADDRESSES, tries=50):
    """A port nothing listens on at any of ``addresses`` now (the OS's pick on the first)."""
    for _ in range(tries):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = s.getsockname()[1]
            if all(_bindable(address, port) for address in addresses[1:]):
                return port
    raise AssertionError(f"no port free on all of {addresses} in {tries} tries")


def _bindable(address, port):
    with socket.socket() as s:
        try:
            s.bind((address, port))
            return True
        except OSError:
            return False


def time_until(addresses, ready, started, timeout=WAIT):
    """
    {address: seconds from ``started`` (time.monotonic) until
    ``ready(address)`` first said yes}; addresses where it never did within
    ``timeout`` are left out.  Runs in a thread.
    """
    found = {}
    deadline = started + timeout
    while len(found) < len(addresses) and time.monotonic() < deadline:
        for address in addresses:
            if address not in found and ready(address):
                found[address] = time.monotonic() - started
        threading.Event().wait(LISTEN_POLL)  # a poll interval, bounded by the deadline
    return found


def first_answer(address, port):
    """The first byte a user sending one byte through ``port`` on ``address`` gets back (b"" if none)."""
    try:
        with socket.create_connection((address, port), timeout=5) as s:
            s.sendall(b"?")
            return s.recv(1)
    except OSError:
        return b""


class StreamUser:
    """
    A user streaming random bytes through an echo mapping until :meth:`stop`
    (or MAX_CHUNKS), reading back as it goes.  :attr:`received` is its
    progress; :meth:`run` (in a thread) gives (sent, received, intact, cut).
    """

    def __init__(self, host, port):
        self.host = host
        self.port = port
        self.received = 0
        self.sockname = None  # (ip, port) the server sees, once connected
        self._stop = threading.Event()

    def stop(self):
        self._stop.set()

    def run(self):
        s = connect(self.port, timeout=WAIT, host=self.host)
        self.sockname = s.getsockname()
        sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
        sent = 0
        done = threading.Event()
        failed = []

        def read():
            deadline = None
            try:
                while not (done.is_set() and self.received >= sent):
                    if done.is_set():
                        deadline = deadline or time.monotonic() + WAIT
                        if time.monotonic() > deadline:
                            failed.append(f"{sent - self.received} bytes never came back")
                            return
                    if not select.select([s], [], [], READ_POLL)[0]:
                        continue
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        failed.append("closed")
                        return
                    got_hash.update(chunk)
                    self.received += len(chunk)
            except OSError as e:
                failed.append(str(e))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            for _ in range(MAX_CHUNKS):
                if self._stop.is_set() or failed:
                    break
                chunk = os.urandom(CHUNK)
                sent_hash.update(chunk)
                s.sendall(chunk)
                sent += len(chunk)
        except OSError as e:
            failed.append(str(e))
        done.set()
        reader.join(WAIT)
        s.close()
        return sent, self.received, sent_hash.digest() == got_hash.digest(), bool(failed)


def noted_open_channels(database):
    """The ids of the channels ``database`` notes open, for crash recovery.  Runs in a thread."""
    import psycopg
    with psycopg.connect(database, connect_timeout=5) as conn:
        return {row[0] for row in conn.execute("SELECT channel_id FROM open_channels")}


def held_user(host, port):
    """A user whose channel is open and has carried a ping (its socket, left open)."""
    s = connect(port, timeout=WAIT, host=host)
    s.sendall(b"ping")
    assert recv_exactly(s, 4) == b"ping"
    return s


def echo_user(host, port, size):
    """A user sending ``size`` random bytes through an echo mapping: (its (ip, port), byte-exact)."""
    data = os.urandom(size)
    s = connect(port, timeout=WAIT, host=host)
    try:
        s.sendall(data)  # small enough to sit in the socket buffers while it comes back
        return s.getsockname(), recv_exactly(s, size) == data
    finally:
        s.close()
