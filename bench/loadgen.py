"""The load generator: each measurement, against one ``(host, port)``.

Every function here talks the small command protocol of ``backends.py``
through whatever path leads to it, and is bounded both in count and in
time: a stalled path ends a measurement with what was measured, never
hangs it.  Sockets are blocking, with TCP_NODELAY and kernel send/receive
timeouts (SO_SNDTIMEO/SO_RCVTIMEO rather than Python timeouts, which would
add a poll() before every call), and bulk transfers use 1 MiB buffers.

MB is 2**20 bytes throughout.
"""

import socket
import struct
import threading
import time

import attr

CHUNK = 1 << 20
MB = float(1 << 20)
HEADER = struct.Struct(">Q")
PAYLOAD = memoryview(bytes(CHUNK))
STALL_TIMEOUT = 30.0  # seconds one socket call may block


class MeasurementError(Exception):
    """A path failed to carry a measurement (refused, reset, short data)."""


@attr.s(frozen=True)
class Transfer:
    """One bulk transfer: bytes that arrived and when it started and ended."""

    nbytes = attr.ib()
    started = attr.ib()  # time.monotonic()
    ended = attr.ib()

    @property
    def seconds(self):
        return max(self.ended - self.started, 1e-9)

    @property
    def rate(self):
        """MB/s."""
        return self.nbytes / MB / self.seconds


def connect(address, timeout=STALL_TIMEOUT):
    """A connected blocking socket with TCP_NODELAY and kernel timeouts."""
    sock = socket.create_connection(address, timeout=min(timeout, 10.0))
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    timeval = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    return sock


def recv_exactly(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise MeasurementError(
                "connection closed after %d of %d bytes" % (got, n))
        got += k
    return bytes(buf)


def upload(address, nbytes, max_seconds):
    """Send ``nbytes`` (or as many as fit in ``max_seconds``) to the sink.

    The transfer ends when the backend confirms how many bytes it read, so
    bytes still queued inside the path are not counted as moved.
    """
    started = time.monotonic()
    deadline = started + max_seconds
    sock = connect(address)
    try:
        sock.sendall(b"U" + HEADER.pack(nbytes))
        sent = 0
        while sent < nbytes:
            n = min(CHUNK, nbytes - sent)
            sock.sendall(PAYLOAD[:n])
            sent += n
            if time.monotonic() > deadline:
                sock.shutdown(socket.SHUT_WR)  # the sink counts what arrived
                break
        (received,) = HEADER.unpack(recv_exactly(sock, HEADER.size))
        ended = time.monotonic()
    except OSError as e:
        raise MeasurementError("upload failed: %s" % (e,)) from e
    finally:
        sock.close()
    return Transfer(received, started, ended)


def download(address, nbytes, max_seconds):
    """Receive ``nbytes`` (or as many as arrive in ``max_seconds``)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    started = time.monotonic()
    deadline = started + max_seconds
    sock = connect(address)
    got = 0
    try:
        sock.sendall(b"D" + HEADER.pack(nbytes))
        while got < nbytes:
            n = sock.recv_into(view)
            if not n:
                raise MeasurementError(
                    "download closed after %d of %d bytes" % (got, nbytes))
            got += n
            if time.monotonic() > deadline:
                break
        ended = time.monotonic()
    except OSError as e:
        raise MeasurementError("download failed: %s" % (e,)) from e
    finally:
        sock.close()
    return Transfer(got, started, ended)


def _run_threads(target, count, args):
    """Run ``target(*args)`` in ``count`` threads started together.

    Returns the list of results; re-raises the first exception.
    """
    barrier = threading.Barrier(count)
    results = [None] * count
    errors = []

    def worker(i):
        try:
            barrier.wait(timeout=10)
            results[i] = target(*args)
        except Exception as e:  # noqa: BLE001 -- reported to the caller
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@attr.s(frozen=True)
class Parallel:
    """Several simultaneous transfers."""

    transfers = attr.ib()

    @property
    def aggregate(self):
        """Total MB/s from the first start to the last end."""
        start = min(t.started for t in self.transfers)
        end = max(t.ended for t in self.transfers)
        return sum(t.nbytes for t in self.transfers) / MB / max(end - start, 1e-9)

    @property
    def min_rate(self):
        return min(t.rate for t in self.transfers)

    @property
    def mean_rate(self):
        return sum(t.rate for t in self.transfers) / len(self.transfers)


def parallel(function, address, streams, nbytes_each, max_seconds):
    """``streams`` simultaneous uploads or downloads, one thread each."""
    return Parallel(_run_threads(
        function, streams, (address, nbytes_each, max_seconds)))


def round_trips(address, count, max_seconds, size=64, warmup=3):
    """Ping-pong ``size`` bytes up to ``count`` times; sorted RTTs in µs.

    The first ``warmup`` round trips are not counted: on a tunnel the first
    one also waits for the channel to open, which is the connection-rate
    test's business, not latency's.
    """
    message = bytes(size)
    buf = bytearray(size)
    view = memoryview(buf)
    samples = []
    sock = connect(address, timeout=min(STALL_TIMEOUT, max(max_seconds, 1)))
    try:
        sock.sendall(b"E")
        deadline = time.monotonic() + max_seconds
        clock = time.perf_counter_ns
        for i in range(warmup + count):
            t0 = clock()
            sock.sendall(message)
            got = 0
            while got < size:
                n = sock.recv_into(view[got:])
                if not n:
                    raise MeasurementError("echo closed the connection")
                got += n
            if i >= warmup:
                samples.append((clock() - t0) / 1000.0)
            if time.monotonic() > deadline:
                break
    except OSError as e:
        raise MeasurementError("round trips failed: %s" % (e,)) from e
    finally:
        sock.close()
    samples.sort()
    return samples


def percentile(sorted_samples, fraction):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_samples:
        return float("nan")
    index = min(len(sorted_samples) - 1,
                max(0, int(round(fraction * len(sorted_samples))) - 1))
    return sorted_samples[index]


@attr.s(frozen=True)
class ConnectionRate:
    connections = attr.ib()
    seconds = attr.ib()
    errors = attr.ib()
    first_error = attr.ib(default=None)

    @property
    def rate(self):
        return self.connections / max(self.seconds, 1e-9)


def connection_rate(address, count, max_seconds, concurrency=8):
    """New connections per second: connect, send 1 byte, read 1, close.

    ``concurrency`` threads share a budget of ``count`` connections and a
    deadline of ``max_seconds``; the rate is completed connections over the
    time from the start to the last completion.
    """
    lock = threading.Lock()
    state = {"left": count, "done": 0, "errors": 0, "last": None,
             "first_error": None}
    started = time.monotonic()
    deadline = started + max_seconds

    def one_thread():
        while time.monotonic() < deadline:
            with lock:
                if state["left"] <= 0:
                    return
                state["left"] -= 1
            try:
                sock = connect(address, timeout=5.0)
                try:
                    sock.sendall(b"P")
                    if sock.recv(1) != b"P":
                        raise MeasurementError("no reply byte")
                finally:
                    sock.close()
            except (OSError, MeasurementError) as e:
                with lock:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or str(e)
                    if state["errors"] > max(10, count // 10):
                        return  # a broken path: stop early
                continue
            now = time.monotonic()
            with lock:
                state["done"] += 1
                state["last"] = now

    _run_threads(one_thread, concurrency, ())
    ended = state["last"] or time.monotonic()
    return ConnectionRate(state["done"], ended - started, state["errors"],
                          state["first_error"])


class IdleConnections:
    """Open up to ``count`` idle connections and hold them until closed.

    Each one is confirmed end to end (``I`` answered by the backend), so the
    path has set up whatever per-connection state it keeps.  Use as a
    context manager; ``len()`` says how many were opened.
    """

    def __init__(self, address, count, max_seconds):
        self.address = address
        self.count = count
        self.max_seconds = max_seconds
        self.sockets = []
        self.error = None

    def __enter__(self):
        deadline = time.monotonic() + self.max_seconds
        try:
            while len(self.sockets) < self.count and time.monotonic() < deadline:
                sock = connect(self.address, timeout=10.0)
                self.sockets.append(sock)
                sock.sendall(b"I")
                if sock.recv(1) != b"I":
                    raise MeasurementError(
                        "idle connection %d not answered" % len(self.sockets))
        except (OSError, MeasurementError) as e:
            self.error = str(e)
        return self

    def __len__(self):
        return len(self.sockets)

    def __exit__(self, *exc_info):
        for sock in self.sockets:
            sock.close()
        self.sockets = []
