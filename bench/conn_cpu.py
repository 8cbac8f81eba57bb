"""
CPU per new connection of the portmapper server and client, each apart.

    python bench/conn_cpu.py [--connections 3000] [--twistd CMD] [--profile DIR]

Starts the backend, server and client as ``bench/run.py`` does, opens
``--connections`` short connections through the mapping (8 threads:
connect, send a byte, read it back, close; ``loadgen.connection_rate``) and
prints the CPU seconds each process spent per 1,000 connections, from
/proc.  CPU time, unlike connections per second, hardly depends on what
else a busy machine is doing.  With ``--profile DIR`` both processes run
under cProfile and write ``DIR/server.prof`` and ``DIR/client.prof``
(read them with ``python -m pstats``); the CPU numbers then include the
profiler's overhead.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import loadgen  # noqa: E402
import peers  # noqa: E402
import run  # noqa: E402


class ProfiledPortmapper(peers.Portmapper):
    """The portmapper path with each twistd under cProfile, into ``profile_dir``."""

    def __init__(self, backend_port, twistd, profile_dir):
        super().__init__(backend_port, twistd)
        self.profile_dir = profile_dir

    def spawn(self, argv, log_name, helper=False, **kwargs):
        if self.profile_dir and argv[:len(self.twistd)] == self.twistd:
            name = os.path.splitext(log_name)[0]
            argv = self.twistd + ["--profile=%s" % os.path.join(
                os.path.abspath(self.profile_dir), name + ".prof"),
                "--profiler=cprofile", "--savestats"] + argv[len(self.twistd):]
        return super().spawn(argv, log_name, helper, **kwargs)


def measure(twistd, connections, profile_dir=None):
    """``({"server": s, "client": s}, rate)``: CPU seconds per 1,000 connections."""
    with run.started_path("portmapper-conn-cpu-",
                          lambda port: ProfiledPortmapper(port, twistd, profile_dir)) as path:
        pids = dict(zip(("server", "client"), (p.pid for p in path.processes)))
        run.settle(list(pids.values()))
        before = {name: peers.cpu_seconds([pid]) for name, pid in pids.items()}
        rate = loadgen.connection_rate(path.address, connections, 600.0)
        time.sleep(0.5)  # the last channels' close reaches both ends
        after = {name: peers.cpu_seconds([pid]) for name, pid in pids.items()}
    done = max(rate.connections, 1)
    return {name: (after[name] - before[name]) * 1000.0 / done for name in pids}, rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--twistd", help="twistd command line (default: the venv's twistd)")
    parser.add_argument("--profile", metavar="DIR",
                        help="run both under cProfile, writing DIR/server.prof, DIR/client.prof")
    args = parser.parse_args(argv)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    cpu, rate = measure(peers.find_twistd(args.twistd), args.connections, args.profile)
    for name, seconds in cpu.items():
        print("%-7s %.3f CPU s per 1,000 connections" % (name, seconds))
    print("%d connections (%d failed) at %.0f/s" % (rate.connections, rate.errors, rate.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
