"""A TCP relay that adds a fixed one-way delay, like a long fat pipe.

    python bench/delay_relay.py --listen 127.0.0.1:P --connect 127.0.0.1:Q \\
        --delay-ms 50

Every connection accepted on ``--listen`` is relayed to ``--connect``.  Each
chunk read on one side is timestamped and written to the other side at
read time + delay, in each direction, so a round trip through the relay
costs twice the delay.  The delay does not limit throughput: up to
``--max-queue-mib`` (default 64) may be in flight per direction; past that,
the relay stops reading from the sender until the queue drains, so TCP
backpressure still works end to end.  Half-closes (EOF) and closes travel
with the same delay, after the data before them.

Connection setup is not delayed (the SYN handshake costs no extra time);
only data, EOF and close are.

It prints ``READY <host>:<port>`` once listening, and stops on SIGTERM or
Ctrl-C.  Plain asyncio, no dependencies.
"""

import argparse
import asyncio
import collections
import signal
import socket
import sys

EOF = object()
CLOSE = object()


def host_port(text):
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


class Direction:
    """One direction of a relayed connection: a delayed, bounded queue."""

    def __init__(self, loop, delay, limit):
        self.loop = loop
        self.delay = delay
        self.limit = limit
        self.queue = collections.deque()  # (due time, bytes | EOF | CLOSE)
        self.queued = 0
        self.timer = None
        self.source = None  # the Side we read from
        self.sink = None  # the Side we write to
        self.source_paused = False

    def push(self, item):
        due = self.loop.time() + self.delay
        self.queue.append((due, item))
        if isinstance(item, bytes):
            self.queued += len(item)
        if self.timer is None:
            self.timer = self.loop.call_at(due, self.flush)
        self.check_pressure()

    def flush(self):
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, item = self.queue.popleft()
            if item is EOF:
                self.sink.send_eof()
            elif item is CLOSE:
                self.sink.close()
            else:
                self.queued -= len(item)
                self.sink.write(item)
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)
        self.check_pressure()

    def backlog(self):
        return self.queued + self.sink.buffered()

    def check_pressure(self):
        """Pause the source past the limit, resume it below half of it."""
        backlog = self.backlog()
        if not self.source_paused and backlog >= self.limit:
            self.source_paused = True
            self.source.pause_reading()
        elif self.source_paused and backlog <= self.limit // 2:
            self.source_paused = False
            self.source.resume_reading()

    def cancel(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.queued = 0


class Side(asyncio.Protocol):
    """One socket of a relayed pair."""

    def __init__(self, incoming, outgoing, on_connected=None):
        self.incoming = incoming  # Direction that writes to this socket
        self.outgoing = outgoing  # Direction fed by what this socket reads
        self.on_connected = on_connected
        self.transport = None
        self.read_eof = False
        self.wrote_eof = False
        self.closed = False
        self.reading_paused = False

    # asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        limit = self.incoming.limit
        transport.set_write_buffer_limits(high=limit // 4, low=limit // 8)
        if self.on_connected is not None:
            self.on_connected(self)

    def data_received(self, data):
        self.outgoing.push(data)

    def eof_received(self):
        self.read_eof = True
        self.outgoing.push(EOF)
        self.maybe_close()
        return True  # keep the write side open: half-close

    def connection_lost(self, exc):
        self.closed = True
        self.incoming.cancel()
        self.outgoing.push(CLOSE)

    def pause_writing(self):
        pass  # the Direction sees the buffer size and pauses its source

    def resume_writing(self):
        self.incoming.check_pressure()

    # used by Direction
    def buffered(self):
        if self.transport is None or self.closed:
            return 0
        return self.transport.get_write_buffer_size()

    def write(self, data):
        if not self.closed and not self.transport.is_closing():
            self.transport.write(data)

    def send_eof(self):
        if not self.closed and not self.transport.is_closing():
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.wrote_eof = True
                self.maybe_close()
            else:
                self.transport.close()

    def close(self):
        if not self.closed and self.transport is not None:
            self.transport.close()

    def pause_reading(self):
        if not self.closed and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self):
        if not self.closed and not self.transport.is_closing():
            self.transport.resume_reading()

    def maybe_close(self):
        if self.read_eof and self.wrote_eof:
            self.transport.close()


class Relay:
    """Accepts connections and relays each through two delayed Directions."""

    def __init__(self, loop, target, delay, limit):
        self.loop = loop
        self.target = target
        self.delay = delay
        self.limit = limit
        self.tasks = set()

    def accepted(self):
        """Protocol factory for the listening side."""
        up = Direction(self.loop, self.delay, self.limit)  # user -> target
        down = Direction(self.loop, self.delay, self.limit)  # target -> user
        user = Side(incoming=down, outgoing=up,
                    on_connected=lambda side: self.start_dial(side, up, down))
        up.source = down.sink = user
        return user

    def start_dial(self, user, up, down):
        """The user is connected: hold its data until the target is."""
        user.transport.pause_reading()
        task = self.loop.create_task(self.dial(user, up, down))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def dial(self, user, up, down):
        target = Side(incoming=up, outgoing=down)
        up.sink = down.source = target
        try:
            await self.loop.create_connection(lambda: target, *self.target)
        except OSError as e:
            print("delay_relay: connect to %s:%d failed: %s"
                  % (self.target + (e,)), file=sys.stderr)
            user.transport.abort()
            return
        if not user.closed:
            user.transport.resume_reading()


async def serve(listen, target, delay, limit, announce=True):
    loop = asyncio.get_running_loop()
    relay = Relay(loop, target, delay, limit)
    server = await loop.create_server(relay.accepted, *listen, backlog=1024,
                                      reuse_address=True)
    host, port = server.sockets[0].getsockname()[:2]
    if announce:
        print("READY %s:%d" % (host, port), flush=True)
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.cancel)
    try:
        await stop
    except asyncio.CancelledError:
        pass
    finally:
        server.close()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="TCP relay adding a fixed one-way delay.")
    parser.add_argument("--listen", type=host_port, required=True,
                        metavar="HOST:PORT")
    parser.add_argument("--connect", type=host_port, required=True,
                        metavar="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=50.0,
                        help="one-way delay, each direction (default 50)")
    parser.add_argument("--max-queue-mib", type=float, default=64.0,
                        help="bytes in flight per direction before the relay"
                             " stops reading (default 64 MiB)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.connect, args.delay_ms / 1000.0,
                      int(args.max_queue_mib * (1 << 20))))


if __name__ == "__main__":
    main()
