"""How close a mapping's ``rate_limit`` holds, from 1 to 500 MB/s.

Starts the portmapper server and client as production runs them (twistd,
see ``peers.Portmapper``), a backend in this process, and for each rate
PATCHes the mapping's ``rate_limit``, opens ``--users`` connections and
measures, after a warm-up, the bytes per second the backend receives from
the users (``recv``) and, separately, the users receive from the backend
(``send``).  Prints a table: the limit, what was measured each way, the
error, and each way the smallest user's share of the mean (fairness).

    PYTHONPATH=src python bench/rate_limit.py [--rates 1,5,20,50,100,200,500] [--seconds 3]

(``PYTHONPATH=src`` makes the twistd it starts run this checkout.)

A rate the machine cannot carry at all (the unlimited path is slower)
shows as under the limit: compare with ``--rates 0`` (0 = no limit).
"""

import argparse
import os
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers  # noqa: E402

MB = 2**20
CHUNK = bytes(range(256)) * 4096  # 1 MiB


class Counter:
    """Bytes moved by each connection of one direction, counted by its thread."""

    def __init__(self):
        self.counts = []
        self.lock = threading.Lock()

    def slot(self):
        with self.lock:
            self.counts.append(0)
            return len(self.counts) - 1

    def snapshot(self):
        return list(self.counts)


def sink(conn, counter, stop):
    index = counter.slot()
    buf = bytearray(1 << 20)
    try:
        while not stop.is_set():
            n = conn.recv_into(buf)
            if not n:
                return
            counter.counts[index] += n
    except OSError:
        pass


def echo(conn):
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)
    except OSError:
        pass


def source(conn, stop):
    try:
        while not stop.is_set():
            conn.sendall(CHUNK)
    except OSError:
        pass


class Backend:
    """Accepts on 127.0.0.1: echoes (mode "echo", for the start-up probe), reads
    everything ("recv") or sends without end ("send")."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((peers.LOCALHOST, 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.mode, self.counter, self.stop = "echo", Counter(), threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            conn, _ = self.listener.accept()
            if self.mode == "echo":
                target = echo, (conn,)
            elif self.mode == "recv":
                target = sink, (conn, self.counter, self.stop)
            else:
                target = source, (conn, self.stop)
            threading.Thread(target=target[0], args=target[1], daemon=True).start()


def measure(address, backend, direction, users, warmup, seconds):
    """MB/s of ``direction`` over ``seconds`` after ``warmup``: (total, [per user])."""
    stop = threading.Event()
    backend.mode, backend.counter, backend.stop = direction, Counter(), stop
    counter = backend.counter if direction == "recv" else Counter()
    conns = []
    for _ in range(users):
        conn = socket.create_connection(address, timeout=30)
        conns.append(conn)
        work = (source, (conn, stop)) if direction == "recv" else (sink, (conn, counter, stop))
        threading.Thread(target=work[0], args=work[1], daemon=True).start()
    time.sleep(warmup)  # past the first bucket and windows
    before, start = counter.snapshot(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = counter.snapshot(), time.monotonic() - start
    stop.set()
    for conn in conns:
        conn.close()
    shares = [(a - b) / elapsed / MB for a, b in zip(after, before + [0] * len(after))]
    return sum(shares), shares


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1,5,20,50,100,200,500",
                        help="MB/s, comma-separated; 0 is no limit")
    parser.add_argument("--users", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--twistd", help="the twistd to run (default: found)")
    args = parser.parse_args(argv)
    backend = Backend()
    path = peers.Portmapper(backend.port, peers.find_twistd(args.twistd))
    path.start()
    try:
        public = path.address[1]
        print(f"rate_limit with {args.users} users, {args.seconds:g} s per measurement")
        print("| limit MB/s | recv MB/s | error | fairness | send MB/s | error | fairness |")
        print("|---|---|---|---|---|---|---|")
        for text in args.rates.split(","):
            rate = float(text)
            answer = peers.http_json("PATCH", "%s/port_mapper?port=%d&rate_limit=%s" % (
                path.admin, public, text if rate else ""))
            if answer.get("result") != "success":
                raise SystemExit(f"PATCH rate_limit={text} failed: {answer}")
            cells = ["%g" % rate if rate else "none"]
            for direction in ("recv", "send"):
                total, shares = measure(path.address, backend, direction, args.users,
                                        args.warmup, args.seconds)
                mean = total / len(shares)
                error = "%+.1f%%" % ((total - rate) / rate * 100) if rate else "-"
                cells += ["%.2f" % total, error, "%.2f" % (min(shares) / mean if mean else 0)]
            print("| " + " | ".join(cells) + " |", flush=True)
    finally:
        path.stop()


if __name__ == "__main__":
    main()
