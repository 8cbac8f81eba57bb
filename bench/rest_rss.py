"""
Memory at rest of the portmapper server and client, each on its own line.

    python bench/rest_rss.py [--twistd CMD] [--settle 1.0]

Starts the benchmark's backend, then ``twistd -n portmapper`` and ``twistd
-n portmapper-client`` as ``bench/run.py`` does (linked, one mapping, one
byte carried end to end), waits ``--settle`` seconds, and prints VmRSS and
Pss of each process and their sum, in MiB.  Unlike throughput, these
numbers hardly depend on what else the machine is doing, so they can be
compared between two checkouts on a busy machine.

Twisted's ``tcp`` module imports pyOpenSSL whenever it is installed; the
twistd plugins start both processes without it (about 12 MiB each; see
``portmapper.transport.lean``).  ``--twistd`` points the script at another
venv's twistd, e.g. an older checkout's, to compare.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import peers  # noqa: E402
import run  # noqa: E402

MiB = 1024.0  # /proc counts KiB


def measure(twistd, settle):
    """``{"server": (rss, pss), "client": (rss, pss)}`` in KiB."""
    with run.started_path("portmapper-rest-rss-", lambda port: peers.Portmapper(port, twistd)) as path:
        time.sleep(settle)
        server, client = (p.pid for p in path.processes)
        return {name: (peers.rss_kib([pid]), peers.pss_kib([pid]))
                for name, pid in (("server", server), ("client", client))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--twistd", help="twistd command line (default: the venv's twistd)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to wait at rest before reading /proc")
    args = parser.parse_args(argv)
    twistd = peers.find_twistd(args.twistd)
    memory = measure(twistd, args.settle)
    for name, (rss, pss) in memory.items():
        print("%-7s RSS %5.1f MiB  PSS %5.1f MiB" % (name, rss / MiB, pss / MiB))
    print("%-7s RSS %5.1f MiB  PSS %5.1f MiB" % (
        "sum", sum(r for r, _ in memory.values()) / MiB,
        sum(p for _, p in memory.values()) / MiB))
    return 0


if __name__ == "__main__":
    sys.exit(main())
