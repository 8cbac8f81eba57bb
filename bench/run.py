"""Benchmark portmapper against its peers, side by side, on loopback.

    /tmp/venv/bin/python bench/run.py [--size MiB] [--runs 3]
        [--only direct,socat,portforward,ssh,portmapper] [--quick]
        [--tls] [--delay-ms 50] [--cluster 3]

Starts the backend (``backends.py``, its own process) and every selected
path (``peers.py``), then measures each path with ``loadgen.py``: one-stream
and 8-stream throughput per direction, 64-byte ping-pong RTT, new
connections per second, and the tunnel's memory at rest and holding 1,000
idle connections; with ``--cluster N``, a second table for N portmapper
nodes on one PostgreSQL (``cluster.py``).  Runs are interleaved (run 1 of
every path, then run 2, ...) and the table shows the median of the runs
for each number.  The tables go to stdout; progress goes to stderr.

Everything talks to 127.0.0.0/8 only (the cluster's nodes are on
127.0.0.2 to .4, everything else on 127.0.0.1), every loop is bounded in count and in
time, and every process started is stopped on the way out, also on error,
Ctrl-C or SIGTERM.
"""

import argparse
import contextlib
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import attr  # noqa: E402

import cluster  # noqa: E402
import loadgen  # noqa: E402
import peers  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
# /proc counts CPU in 10 ms ticks: below this, CPU per GiB is mostly noise.
CPU_MIN_BYTES = 128 * MiB
PATH_NAMES = ("direct", "socat", "portforward", "ssh", "portmapper")


@attr.s(frozen=True)
class Settings:
    """How much of each measurement to do."""

    size_mib = attr.ib(default=512)  # one stream; 8 streams move as much
    runs = attr.ib(default=3)
    streams = attr.ib(default=8)
    max_seconds = attr.ib(default=20.0)  # per transfer
    delay_max_seconds = attr.ib(default=5.0)  # per transfer on a delayed path
    rtt_count = attr.ib(default=2000)
    rtt_seconds = attr.ib(default=5.0)
    conn_count = attr.ib(default=2000)
    conn_seconds = attr.ib(default=4.0)
    conn_concurrency = attr.ib(default=8)
    idle_count = attr.ib(default=1000)
    idle_seconds = attr.ib(default=30.0)


QUICK = dict(size_mib=8, runs=1, max_seconds=5.0, delay_max_seconds=2.0,
             rtt_count=200, rtt_seconds=1.0, conn_count=200, conn_seconds=1.0,
             idle_count=100, idle_seconds=5.0)


def log(message):
    print(message, file=sys.stderr, flush=True)


# -- measuring one path -----------------------------------------------------

def measure_run(path, s):
    """One run of the throughput, latency and connection measurements."""
    result = {}
    notes = []
    limit = s.delay_max_seconds if path.delay_ms else s.max_seconds
    roots = path.tunnel_pids()
    size = s.size_mib * MiB
    for key, function in (("up", loadgen.upload), ("down", loadgen.download)):
        try:
            cpu = peers.cpu_seconds(roots)
            transfer = function(path.address, size, limit)
            cpu = peers.cpu_seconds(roots) - cpu
            result[key] = transfer.rate
            result["bytes_" + key] = transfer.nbytes
            if roots and transfer.nbytes >= CPU_MIN_BYTES:
                result["cpu_" + key] = cpu / (transfer.nbytes / GiB)
        except loadgen.MeasurementError as e:
            notes.append("1-stream %s: %s" % (key, e))
    for key, function in (("up8", loadgen.upload), ("down8", loadgen.download)):
        try:
            streams = loadgen.parallel(function, path.address, s.streams,
                                       size // s.streams, limit)
            result[key] = streams
            result["bytes_" + key[:-1]] = (result.get("bytes_" + key[:-1], 0)
                                           + sum(t.nbytes for t in streams.transfers))
        except loadgen.MeasurementError as e:
            notes.append("%d-stream %s: %s" % (s.streams, key[:-1], e))
    try:
        samples = loadgen.round_trips(path.address, s.rtt_count, s.rtt_seconds)
        result["p50"] = loadgen.percentile(samples, 0.50)
        result["p99"] = loadgen.percentile(samples, 0.99)
    except loadgen.MeasurementError as e:
        notes.append("RTT: %s" % e)
    rate = loadgen.connection_rate(path.address, s.conn_count, s.conn_seconds,
                                   s.conn_concurrency)
    if rate.connections:
        result["conns"] = rate.rate
    if rate.errors:
        notes.append("conns/s: %d of %d failed (%s)" % (
            rate.errors, rate.errors + rate.connections, rate.first_error))
    return result, notes


def measure_memory(path, s):
    """Tunnel RSS (and PSS) at rest and holding idle connections."""
    roots = path.tunnel_pids()
    if not roots or path.delay_ms:
        return {}
    memory = {"rss_rest": peers.rss_kib(roots), "pss_rest": peers.pss_kib(roots)}
    with loadgen.IdleConnections(path.address, s.idle_count,
                                 s.idle_seconds) as idle:
        time.sleep(0.5)  # let the last ones settle on every hop
        memory["rss_loaded"] = peers.rss_kib(roots)
        memory["pss_loaded"] = peers.pss_kib(roots)
        memory["idle"] = len(idle)
        memory["idle_error"] = idle.error
        memory["procs_loaded"] = len(peers.process_tree(roots))
    settle(roots)
    return memory


def settle(roots, quiet=0.05, period=0.25, timeout=10.0):
    """
    Wait until the path's processes use under ``quiet`` of a core over a
    ``period`` (at most ``timeout`` s): closing thousands of idle
    connections keeps them busy for a while, which the next measurement
    should not pay for.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = peers.cpu_seconds(roots)
        time.sleep(period)
        if peers.cpu_seconds(roots) - before < quiet * period:
            return


# -- the report -------------------------------------------------------------

def median(runs, key, attribute=None):
    values = [r[key] for r in runs if key in r]
    if attribute:
        values = [getattr(v, attribute) for v in values]
    return statistics.median(values) if values else None


def fmt(value, digits=0):
    if value is None:
        return "—"
    return "%.*f" % (digits, value)


def pair(a, b, digits=0):
    return "%s/%s" % (fmt(a, digits), fmt(b, digits))


def row_cells(name, runs, memory, direct):
    up, down = median(runs, "up"), median(runs, "down")

    def streams(key):
        aggregate = median(runs, key, "aggregate")
        if aggregate is None:
            return "—"
        return "%s (%s/%s)" % (fmt(aggregate), fmt(median(runs, key, "min_rate")),
                               fmt(median(runs, key, "mean_rate")))

    if memory:
        rss = "%s → %s" % (fmt(memory["rss_rest"] / 1024, 1),
                           fmt(memory["rss_loaded"] / 1024, 1))
    else:
        rss = "—"
    ratio = "—"
    if direct and up is not None and down is not None:
        ratio = pair(up / direct[0], down / direct[1], 2)
    return [name, pair(up, down), "%s / %s" % (streams("up8"), streams("down8")),
            pair(median(runs, "p50"), median(runs, "p99")),
            fmt(median(runs, "conns")), rss, ratio]


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def first_line(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def machine_line(twistd):
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import twisted
        twisted_version = twisted.__version__
    except ImportError:
        twisted_version = (first_line(twistd + ["--version"]) or "?").split()[-1]
    parts = ["Machine: %s, %d cores, Linux %s, Python %s, Twisted %s" % (
        cpu, os.cpu_count() or 0, platform.release(),
        platform.python_version(), twisted_version)]
    socat = first_line(["sh", "-c", "socat -V 2>&1 | grep 'socat version'"])
    ssh = first_line(["ssh", "-V"])
    tools = [t for t in (socat and " ".join(socat.split()[:3]), ssh and
                         ssh.split(",")[0]) if t]
    if tools:
        parts.append("; ".join(tools))
    return "; ".join(parts) + "."


# -- orchestration ----------------------------------------------------------

def build_paths(args, backend_port, twistd):
    wanted = set(args.only)
    paths = []
    if "direct" in wanted:
        paths.append(peers.Direct(backend_port))
    if "socat" in wanted:
        paths.append(peers.Socat(backend_port))
    if "portforward" in wanted:
        paths.append(peers.Portforward(backend_port, twistd))
    if "ssh" in wanted:
        paths.append(peers.Ssh(backend_port, "gcm-tty"))
        paths.append(peers.Ssh(backend_port, "default"))
    pm = dict(twistd=twistd, server_args=args.portmapper_extra_server_args,
              client_args=args.portmapper_extra_client_args)
    if "portmapper" in wanted:
        paths.append(peers.Portmapper(backend_port, **pm))
        if args.tls:
            paths.append(peers.Portmapper(backend_port, tls=True, **pm))
    if args.delay_ms:
        if "direct" in wanted:
            paths.append(peers.DirectViaDelay(backend_port, args.delay_ms))
        if "ssh" in wanted:
            paths.append(peers.Ssh(backend_port, "default", args.delay_ms))
        if "portmapper" in wanted:
            paths.append(peers.Portmapper(backend_port, delay_ms=args.delay_ms,
                                          **pm))
    return paths


def start_backend(tmp):
    backend = peers.Process(
        [sys.executable, os.path.join(HERE, "backends.py")],
        os.path.join(tmp, "backend.log"), stdin=subprocess.PIPE,
        stdout_pipe=True)
    try:
        port = int(backend.read_ready_line("READY ", 10))
    except BaseException:
        backend.stop()
        raise
    return backend, port


@contextlib.contextmanager
def started_path(prefix, make_path):
    """
    The path ``make_path(backend_port)`` started, on a backend of its own,
    in a temporary directory named with ``prefix``; all stopped and removed
    after.
    """
    tmp = tempfile.mkdtemp(prefix=prefix)
    backend, port = start_backend(tmp)
    path = make_path(port)
    try:
        path.start()
        yield path
    finally:
        path.stop()
        backend.stop()
        peers.shutil.rmtree(tmp, ignore_errors=True)


def raise_nofile_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        log("warning: RLIMIT_NOFILE is %d, under the %d needed" % (soft, needed))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Benchmark portmapper against direct, socat, "
                    "twistd portforward and ssh -R on loopback.")
    parser.add_argument("--size", type=int, metavar="MiB",
                        help="bytes per 1-stream transfer, in MiB "
                             "(default 512; 8 streams move as much in total)")
    parser.add_argument("--runs", type=int, help="runs per path (default 3)")
    parser.add_argument("--only", default=",".join(PATH_NAMES),
                        help="comma-separated subset of: %s"
                             % ",".join(PATH_NAMES))
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and counts: well under a minute")
    parser.add_argument("--tls", action="store_true",
                        help="add a portmapper row with TLS on the link")
    parser.add_argument("--delay-ms", type=float, default=0,
                        help="add rows with a delay relay of this one-way "
                             "delay: direct, ssh and portmapper's link")
    parser.add_argument("--idle", type=int, help="idle connections to hold "
                        "for the memory column (default 1000)")
    parser.add_argument("--no-sampler-cost", action="store_true",
                        help="do not run bench/sampler_cost.py after the "
                             "portmapper rows")
    parser.add_argument("--twistd", help="twistd command line "
                        "(default: the venv's twistd)")
    parser.add_argument("--portmapper-extra-server-args", default="",
                        help="appended to 'twistd portmapper ...'")
    parser.add_argument("--portmapper-extra-client-args", default="",
                        help="appended to 'twistd portmapper-client ...'")
    parser.add_argument("--cluster", type=int, default=0, metavar="N",
                        help="add a table for a cluster of N portmapper nodes "
                             "(1 to 3) on a private PostgreSQL, one client "
                             "linked to each (see bench/cluster.py)")
    args = parser.parse_args(argv)
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(args.only) - set(PATH_NAMES)
    if unknown:
        parser.error("unknown path(s) in --only: %s" % ", ".join(sorted(unknown)))
    overrides = dict(QUICK) if args.quick else {}
    for option, field in (("size", "size_mib"), ("runs", "runs"),
                          ("idle", "idle_count")):
        if getattr(args, option) is not None:
            overrides[field] = getattr(args, option)
    args.settings = Settings(**overrides)
    if args.settings.runs < 1 or args.settings.size_mib < 1:
        parser.error("--runs and --size must be at least 1")
    if not 0 <= args.cluster <= len(cluster.ADDRESSES):
        parser.error("--cluster takes 1 to %d nodes" % len(cluster.ADDRESSES))
    return args


def on_sigterm(signum, frame):
    raise SystemExit("stopped by signal %d" % signum)


def main(argv=None):
    args = parse_args(argv)
    s = args.settings
    # Explicitly: a shell starting us in the background ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)
    raise_nofile_limit(s.idle_count + 200)
    twistd = peers.find_twistd(args.twistd)
    started_at = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="portmapper-bench-")
    backend = None
    running = []
    notes = []
    try:
        backend, backend_port = start_backend(tmp)
        log("backend on 127.0.0.1:%d" % backend_port)
        for path in build_paths(args, backend_port, twistd):
            log("starting %s ..." % path.name)
            running.append(path)  # so that an interrupt here still stops it
            try:
                path.start()
            except (peers.PeerUnavailable, OSError,
                    subprocess.SubprocessError) as e:
                notes.append("%s: not available (%s)" % (path.name, e))
                log(notes[-1])
                running.remove(path)
                path.stop()

        memory = {}
        for path in running:
            log("memory: %s, %d idle connections ..." % (path.name, s.idle_count))
            memory[path.name] = measure_memory(path, s)

        results = {path.name: [] for path in running}
        for run in range(s.runs):
            for path in running:
                log("run %d/%d: %s ..." % (run + 1, s.runs, path.name))
                result, run_notes = measure_run(path, s)
                results[path.name].append(result)
                notes.extend("%s, run %d: %s" % (path.name, run + 1, n)
                             for n in run_notes)
        extra_lines = moved_lines(running, results)
        for path in running:
            extra_lines.extend(path.extra_lines())
        cluster_table = None
        if args.cluster:
            header, row, cluster_notes = cluster.run(
                backend_port, twistd, args.cluster, s, log,
                shlex.split(args.portmapper_extra_server_args),
                shlex.split(args.portmapper_extra_client_args))
            if row:
                cluster_table = markdown_table(header, [row])
            extra_lines.extend(cluster_notes)
    finally:
        for path in reversed(running):
            path.stop()
        if backend is not None:
            backend.stop()
        peers.shutil.rmtree(tmp, ignore_errors=True)

    if "portmapper" in args.only and not args.no_sampler_cost:
        extra_lines.extend(sampler_cost_lines(args.quick))
    report(args, running, results, memory, extra_lines + notes, twistd,
           time.monotonic() - started_at, cluster_table)
    return 0


def moved_lines(paths, results):
    """How much each path carried in the throughput tests, for the meters."""
    moved = []
    for path in paths:
        if not path.name.startswith("portmapper"):
            continue
        up = sum(r.get("bytes_up", 0) for r in results[path.name])
        down = sum(r.get("bytes_down", 0) for r in results[path.name])
        moved.append("%s carried %.0f MB up and %.0f MB down in the throughput "
                     "tests." % (path.name, up / MiB, down / MiB))
    return moved


def sampler_cost_lines(quick):
    """Run the lead's ``sampler_cost.py``, if it is there, and keep its lines."""
    script = os.path.join(HERE, "sampler_cost.py")
    if not os.path.exists(script):
        return []
    log("sampler_cost.py ...")
    argv = [sys.executable, script]
    if quick:
        argv += ["--channels", "1000", "--ticks", "10"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=180,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        return ["sampler_cost.py did not run: %s" % e]
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return ["sampler_cost.py failed (status %d): %s" % (out.returncode, last)]
    return ["Sampler cost (sampler_cost.py): " + line.strip()
            for line in out.stdout.splitlines() if line.strip()]


def report(args, paths, results, memory, notes, twistd, elapsed, cluster_table=None):
    s = args.settings
    baselines = {}  # delay_ms -> direct's (up, down) over the same delay
    for p in paths:
        if isinstance(p, (peers.Direct, peers.DirectViaDelay)):
            up, down = median(results[p.name], "up"), median(results[p.name], "down")
            if up and down:
                baselines[p.delay_ms] = (up, down)
    direct = baselines.get(None)
    header = ["path", "1-stream up/down MB/s",
              "%d-stream up/down MB/s (min/mean per stream)" % s.streams,
              "RTT p50/p99 µs", "conns/s",
              "RSS rest → %s idle MiB" % format(s.idle_count, ","),
              "ratio to direct (1-stream)"]
    rows = [row_cells(p.name, results[p.name], memory.get(p.name),
                      baselines.get(p.delay_ms)) for p in paths]
    print(markdown_table(header, rows))
    if cluster_table:
        print()
        print(cluster_table)
    print()
    print(machine_line(twistd))
    print("Median of %d run(s); %d MiB per 1-stream transfer, %d x %d MiB for "
          "%d streams; MB = 2^20 bytes; %.0f s in all."
          % (s.runs, s.size_mib, s.streams, s.size_mib // s.streams, s.streams,
             elapsed))

    extras = []
    cpu = ["%s %s" % (p.name, pair(median(results[p.name], "cpu_up"),
                                   median(results[p.name], "cpu_down"), 2))
           for p in paths if median(results[p.name], "cpu_up") is not None]
    if cpu:
        extras.append("Tunnel CPU s per GiB, 1-stream up/down (all the path's "
                      "processes): " + "; ".join(cpu) + ".")
    if s.runs > 1:
        spread = []
        for p in paths:
            ups = [r["up"] for r in results[p.name] if "up" in r]
            downs = [r["down"] for r in results[p.name] if "down" in r]
            if ups and downs:
                spread.append("%s %.0f–%.0f/%.0f–%.0f" % (
                    p.name, min(ups), max(ups), min(downs), max(downs)))
        extras.append("Spread of 1-stream up/down MB/s over the runs (this "
                      "machine is noisy): " + "; ".join(spread) + ".")
    pss = ["%s %s → %s" % (p.name, fmt(memory[p.name]["pss_rest"] / 1024, 1),
                           fmt(memory[p.name]["pss_loaded"] / 1024, 1))
           for p in paths if memory.get(p.name)]
    if pss:
        extras.append("PSS rest → loaded MiB (shared pages split between "
                      "processes, fairer to forking socat): " + "; ".join(pss)
                      + ".")
    for p in paths:
        m = memory.get(p.name)
        if m and (m["idle"] < s.idle_count or m["idle_error"]):
            extras.append("%s held only %d of %d idle connections%s." % (
                p.name, m["idle"], s.idle_count,
                " (%s)" % m["idle_error"] if m["idle_error"] else ""))
        if m and m["procs_loaded"] > 4:
            extras.append("%s ran %d processes holding the idle connections."
                          % (p.name, m["procs_loaded"]))
    if args.delay_ms:
        extras.append("Rows marked +%gms pass a delay relay adding %g ms each "
                      "way (RTT +%g ms) on the link; their transfers stop after "
                      "%g s, and their ratio is to direct +%gms."
                      % (args.delay_ms, args.delay_ms, 2 * args.delay_ms,
                         s.delay_max_seconds, args.delay_ms))
        for p in paths:
            if getattr(p, "max_window", None):
                extras.append("%s ran with --max-window %d (%d MiB) at both "
                              "ends." % (p.name, p.max_window, p.max_window // MiB))
    if direct and not args.quick and min(direct) < 2000:
        extras.append("Warning: direct reached only %.0f/%.0f MB/s; the load "
                      "generator or backend may be the bottleneck." % direct)
    extras.extend(notes)
    if extras:
        print()
        for line in extras:
            print("- " + line)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped.")
        sys.exit(130)
