"""
Cost on the reactor thread of the statistics sampler and of history writes.

    python bench/sampler_cost.py [--channels 10000] [--ticks 50]

Builds a server registry holding N open channels (and a client per 100
channels), then times ``Sampler.tick()`` over all of them, and the reactor
side of recording N channel closes in the store (the SQLite work itself
happens in the store's thread and is timed separately).  Prints the median
and the worst tick in milliseconds.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from twisted.internet import task  # noqa: E402

from portmapper.server.meter import Sampler  # noqa: E402
from portmapper.server.registry import Registry  # noqa: E402


def sampler_ticks(channels, ticks):
    clock = task.Clock()
    registry = Registry()
    for i in range(channels // 100 + 1):
        registry.new_client("127.0.0.1", 40000 + i, "default", clock.seconds())
    for i in range(channels):
        registry.new_channel(5433, "127.0.0.1", 10000 + i % 50000, clock.seconds())
    sampler = Sampler(registry.meters, clock, 1.0)
    times = []
    for n in range(ticks):
        for channel in registry.channels.values():  # some traffic to turn into speeds
            channel.meter.recv_bytes += 1000 + n
            channel.meter.send_bytes += 2000 + n
        clock.advance(1)
        start = time.perf_counter()
        sampler.tick()
        times.append(time.perf_counter() - start)
    return times


def history_burst(channels):
    """Reactor-thread seconds to record ``channels`` closes, and the thread's flush time."""
    from twisted.internet import reactor

    from portmapper.server.store import Store

    result = {}

    def run():
        path = os.path.join(tempfile.mkdtemp(), "bench.sqlite3")
        store = Store(path, reactor)
        d = store.start()

        def burst(_):
            start = time.perf_counter()
            for i in range(1, channels + 1):
                store.record_channel({
                    "channel_id": i, "port": 5433, "ip": "127.0.0.1", "user_port": 10000 + i % 50000,
                    "client_id": 1, "target_ip": "127.0.0.1", "target_port": 6666,
                    "init_time": 0.0, "close_time": 1.0, "recv_bytes": i, "send_bytes": i,
                    "close_reason": "user closed"})
            result["reactor"] = time.perf_counter() - start
            result["flush_start"] = time.perf_counter()
            return store.query_channel_history(limit=1)

        def flushed(_):
            result["flush"] = time.perf_counter() - result["flush_start"]
            return store.stop()

        d.addCallback(burst).addCallback(flushed).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--channels", type=int, default=10000)
    parser.add_argument("--ticks", type=int, default=50)
    args = parser.parse_args()
    times = sampler_ticks(args.channels, args.ticks)
    print(f"sampler tick over {args.channels} channels (+{args.channels // 100 + 1} clients): "
          f"median {statistics.median(times) * 1000:.2f} ms, max {max(times) * 1000:.2f} ms "
          f"over {args.ticks} ticks")
    burst = history_burst(args.channels)
    print(f"history: {args.channels} channel closes cost the reactor {burst['reactor'] * 1000:.1f} ms "
          f"in all; the store's thread wrote them in {burst['flush'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
