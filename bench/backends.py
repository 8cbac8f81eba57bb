"""The benchmark's backend: one TCP server that every measured path leads to.

It runs as its own process (``python bench/backends.py``) so that it never
shares a GIL with the load generator.  Every path under test (direct, socat,
ssh -R, portmapper, ...) maps one public port to this one backend port; the
first byte a connection sends picks what the backend does with it:

``U`` + 8-byte big-endian N  -- sink: read and discard until N bytes or EOF,
                                then answer the 8-byte count of bytes read.
``D`` + 8-byte big-endian N  -- source: send N bytes as fast as possible, then
                                shut down the write side.
``E``                        -- echo everything back until EOF.
``P``                        -- answer ``P`` and close (connection-rate test).
``I``                        -- answer ``I`` and hold the connection, idle,
                                until the peer closes it.

Bulk transfers (U, D) get a thread each with a blocking socket and 1 MiB
buffers; everything else (including 1,000 idle connections) lives in one
``selectors`` loop, so short connections cost no thread start.

On start it prints ``READY <port>`` on stdout; it exits when its stdin
reaches EOF (the harness closed it or died) or on SIGTERM.
"""

import argparse
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import threading

CHUNK = 1 << 20
HEADER = struct.Struct(">Q")
PAYLOAD = memoryview(bytes(CHUNK))
IO_TIMEOUT = 60.0  # seconds a bulk transfer may stall before it is dropped


def raise_nofile_limit():
    """Raise the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def sink(sock, wanted, already):
    """Read and discard up to ``wanted`` bytes, then report the count."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = already
    try:
        while got < wanted:
            n = sock.recv_into(view, min(CHUNK, wanted - got))
            if not n:
                break
            got += n
        sock.sendall(HEADER.pack(got))
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # wait for the client's close, so it closes first
    except OSError:
        pass
    finally:
        sock.close()


def source(sock, wanted):
    """Send ``wanted`` bytes in 1 MiB writes, then half-close."""
    sent = 0
    try:
        while sent < wanted:
            n = min(CHUNK, wanted - sent)
            sock.sendall(PAYLOAD[:n])
            sent += n
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    except OSError:
        pass  # the client stopped early (time bound) or went away
    finally:
        sock.close()


class Backend:
    """The selector loop: accepts, dispatches, echoes and holds idle sockets."""

    def __init__(self, listener):
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, self.accept)
        self.pending = {}  # socket -> bytes received before the command is known

    def serve(self, stop):
        while not stop.is_set():
            for key, _ in self.selector.select(timeout=0.5):
                key.data(key.fileobj)

    def accept(self, listener):
        for _ in range(64):  # bounded burst per wake-up
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError:
                return  # e.g. EMFILE: leave it in the backlog for later
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            self.pending[sock] = b""
            self.selector.register(sock, selectors.EVENT_READ, self.read_command)

    def drop(self, sock):
        self.pending.pop(sock, None)
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    def receive(self, sock):
        """What ``sock`` has to read; None if nothing yet, or if it closed (then dropped)."""
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.drop(sock)
            return None
        return data

    def read_command(self, sock):
        data = self.receive(sock)
        if data is None:
            return
        data = self.pending[sock] + data
        command = data[:1]
        if command in (b"U", b"D"):
            if len(data) < 1 + HEADER.size:
                self.pending[sock] = data
                return
            (size,) = HEADER.unpack_from(data, 1)
            rest = data[1 + HEADER.size:]
            self.pending.pop(sock)
            self.selector.unregister(sock)
            sock.setblocking(True)
            sock.settimeout(IO_TIMEOUT)
            if command == b"U":
                args = (sock, size, len(rest))
                target = sink
            else:
                args = (sock, size)
                target = source
            threading.Thread(target=target, args=args, daemon=True).start()
        elif command == b"E":
            self.pending.pop(sock)
            self.selector.modify(sock, selectors.EVENT_READ, self.echo)
            if len(data) > 1:
                self.send_small(sock, data[1:])
        elif command == b"P":
            self.send_small(sock, b"P")
            self.drop(sock)
        elif command == b"I":
            self.pending.pop(sock)
            self.selector.modify(sock, selectors.EVENT_READ, self.idle)
            self.send_small(sock, b"I")
        else:
            self.drop(sock)

    def send_small(self, sock, data):
        """Send a few bytes from the loop; fall back to blocking if needed."""
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return
        if sent < len(data):
            sock.setblocking(True)
            sock.settimeout(5.0)
            try:
                sock.sendall(data[sent:])
            except OSError:
                pass
            sock.setblocking(False)

    def echo(self, sock):
        data = self.receive(sock)
        if data is not None:
            self.send_small(sock, data)

    def idle(self, sock):
        self.receive(sock)  # idle connections say nothing; this notices them closing


def watch_stdin(stop):
    """Stop the server when the harness closes our stdin (or dies)."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    stop.set()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-stdin-watch", action="store_true",
                        help="do not exit when stdin reaches EOF")
    args = parser.parse_args(argv)
    raise_nofile_limit()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(4096)
    listener.setblocking(False)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if not args.no_stdin_watch:
        threading.Thread(target=watch_stdin, args=(stop,), daemon=True).start()
    print("READY", listener.getsockname()[1], flush=True)
    try:
        Backend(listener).serve(stop)
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
    os._exit(0)  # don't wait for bulk threads stuck on a vanished peer


if __name__ == "__main__":
    main()
