"""The ``--cluster N`` row of ``bench/run.py``: portmapper as a cluster.

``N`` nodes (``twistd -n portmapper``, up to 3) on one private PostgreSQL
(``tests/pg.py``'s: ``initdb`` into a temporary directory, a unix socket
only), each on a loopback address of its own (127.0.0.2, .3, .4), and one
``twistd -n portmapper-client`` linked to every node (``--server``
repeated).  One mapping, made on the first node, is carried by every node.

Measured, each ``--runs`` times (the median is shown):

* 8 streams through the first node alone (the others idle), up and down;
* ``N`` x 8 streams at once, 8 through each node: the aggregate from the
  first start to the last end, and the slowest and mean stream;
* the time a mapping change takes to reach every node: a ``POST
  /port_mapper`` on one node (each node in turn) until the port accepts on
  every node, and its ``DELETE`` until it refuses on every node.

Every process shares this machine's cores with the load generator and the
backend: on a 2-core machine the row shows what spreading the streams over
nodes costs, not how a cluster of machines scales.
"""

import os
import socket
import statistics
import sys
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

import loadgen
import peers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PROPAGATION_SAMPLES = 7
PROPAGATION_TIMEOUT = 10.0
POLL = 0.005
PRIVATE_TRIES = 50
MiB = 1 << 20


def tests_pg():
    """``tests/pg.py`` of this checkout: its private PostgreSQL serves here too."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from tests import pg
    return pg


def free_port_everywhere(addresses):
    """A port free on every one of ``addresses`` now (the OS's pick on the first)."""
    for _ in range(PRIVATE_TRIES):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = s.getsockname()[1]
            free = True
            for address in addresses[1:]:
                with socket.socket() as other:
                    try:
                        other.bind((address, port))
                    except OSError:
                        free = False
                        break
            if free:
                return port
    raise peers.PeerUnavailable("no port free on all of %s" % (addresses,))


def accepts(address, port):
    try:
        loadgen.connect((address, port), timeout=1.0).close()
        return True
    except OSError:
        return False


def until_every(addresses, port, accepting, started):
    """Seconds from ``started`` until ``port`` accepts (or refuses) on every address."""
    pending = set(addresses)
    deadline = started + PROPAGATION_TIMEOUT
    while pending:
        pending = {a for a in pending if accepts(a, port) != accepting}
        if pending and time.monotonic() > deadline:
            raise loadgen.MeasurementError(
                "port %d %s on %s after %gs" % (port, "not listening" if accepting
                                                else "still listening",
                                                ", ".join(sorted(pending)),
                                                PROPAGATION_TIMEOUT))
        if pending:
            time.sleep(POLL)
    return time.monotonic() - started


class Cluster(peers.Path):
    """``count`` portmapper nodes on a private PostgreSQL and one client linked to each."""

    token = "benchtoken"

    def __init__(self, backend_port, twistd, count, server_args=(), client_args=()):
        super().__init__(backend_port)
        if not 1 <= count <= len(ADDRESSES):
            raise ValueError("--cluster takes 1 to %d nodes" % len(ADDRESSES))
        self.twistd = twistd
        self.addresses = ADDRESSES[:count]
        self.server_args = list(server_args)
        self.client_args = list(client_args)
        self.name = "portmapper cluster x%d" % count
        self.postgres = None
        self.admins = []

    def start(self):
        pg = tests_pg()
        try:
            pg.require()
        except unittest.SkipTest as e:
            raise peers.PeerUnavailable(str(e)) from None
        tmp = self.make_tmp()
        self.postgres = pg.PostgreSQL(pg.find_bindir())
        try:
            self.postgres.start()
        except RuntimeError as e:
            raise peers.PeerUnavailable(str(e).splitlines()[0]) from None
        database = self.postgres.create_database()
        servers = []
        for i, address in enumerate(self.addresses):
            cport, aport = free_port_everywhere([address]), free_port_everywhere([address])
            data_dir = os.path.join(tmp, "data%d" % i)
            os.mkdir(data_dir)
            node = self.spawn(
                self.twistd + ["-n", "--pidfile=", "portmapper", "--database", database,
                               "--node-name", "node%d" % (i + 1),
                               "--client-port", "tcp:%d:interface=%s" % (cport, address),
                               "--admin", "tcp:%d:interface=%s" % (aport, address),
                               "--public-interface", address,
                               "--data-dir", data_dir, "--token", self.token]
                + self.server_args, "node%d.log" % (i + 1), cwd=tmp, env=peers.plugin_env())
            peers.wait_for_listen((address, aport), 20, node, "portmapper node%d" % (i + 1))
            self.admins.append("http://%s:%d" % (address, aport))
            servers += ["--server", "tcp:host=%s:port=%d" % (address, cport)]
        self.spawn(
            self.twistd + ["-n", "--pidfile=", "portmapper-client", *servers,
                           "--token", self.token, "--tag", "default"] + self.client_args,
            "client.log", cwd=tmp, env=peers.plugin_env())
        for admin in self.admins:
            self.until(20, self.processes, lambda: peers.http_json("GET", admin + "/client_connection"),
                       lambda a: isinstance(a, dict) and len(a) >= 1,
                       "a client in %s/client_connection" % admin)
        self.port = self.map(0, self.backend[1])
        for address in self.addresses:
            peers.wait_until_carries((address, self.port), 20, self.processes,
                                     "portmapper node on %s" % address)
        self.address = (self.addresses[0], self.port)

    def map(self, node, target_port, port=None):
        """``POST /port_mapper`` on node number ``node``; the public port."""
        port = port or free_port_everywhere(self.addresses)
        answer = peers.http_json("POST", "%s/port_mapper?port=%d&mapper_ip=%s&mapper_port=%d"
                                 "&mapper_tag=default" % (self.admins[node], port,
                                                          peers.LOCALHOST, target_port))
        if answer.get("result") != "success":
            raise loadgen.MeasurementError("POST /port_mapper on node%d: %s" % (node + 1, answer))
        return port

    def propagation(self, samples):
        """([seconds a new mapping took to listen everywhere], [... a delete to stop])."""
        made, deleted = [], []
        for i in range(samples):
            node = i % len(self.admins)
            port = free_port_everywhere(self.addresses)
            started = time.monotonic()
            self.map(node, self.backend[1], port)
            made.append(until_every(self.addresses, port, True, started))
            started = time.monotonic()
            answer = peers.http_json("DELETE", "%s/port_mapper?port=%d" % (self.admins[node], port))
            if answer.get("result") != "success":
                raise loadgen.MeasurementError("DELETE /port_mapper: %s" % (answer,))
            deleted.append(until_every(self.addresses, port, False, started))
        return made, deleted

    def spread(self, function, streams, nbytes, limit):
        """``streams`` transfers through each node at once, as one Parallel."""
        with ThreadPoolExecutor(len(self.addresses)) as pool:
            groups = list(pool.map(
                lambda address: loadgen.parallel(function, (address, self.port), streams,
                                                 nbytes, limit), self.addresses))
        return loadgen.Parallel([t for group in groups for t in group.transfers])

    def stop(self):
        super().stop()
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None


def measure_run(cluster, s):
    """One run: 8 streams on one node, then N x 8 over every node; (result, notes)."""
    result, notes = {}, []
    nbytes = s.size_mib * MiB // s.streams
    for key, function in (("up", loadgen.upload), ("down", loadgen.download)):
        try:
            result["one_" + key] = loadgen.parallel(function, cluster.address, s.streams,
                                                    nbytes, s.max_seconds)
            result["all_" + key] = cluster.spread(function, s.streams, nbytes, s.max_seconds)
        except loadgen.MeasurementError as e:
            notes.append("%s: %s" % (key, e))
    return result, notes


def row(cluster, runs, made, deleted, streams):
    """The table's header and the cluster's row, from the runs' results."""
    def cell(prefix):
        parts = []
        for key in ("up", "down"):
            values = [r[prefix + key] for r in runs if prefix + key in r]
            if not values:
                parts.append("—")
                continue
            parts.append("%.0f (%.0f/%.0f)" % (
                statistics.median(v.aggregate for v in values),
                statistics.median(v.min_rate for v in values),
                statistics.median(v.mean_rate for v in values)))
        return " / ".join(parts)

    def ms(values):
        return "%.0f" % (statistics.median(values) * 1000) if values else "—"

    nodes = len(cluster.addresses)
    header = ["path", "%d streams on one node up/down MB/s (min/mean)" % streams,
              "%d x %d streams, %d per node, up/down MB/s (min/mean)" % (nodes, streams, streams),
              "mapping change to every node, median ms (create/delete)"]
    return header, [cluster.name, cell("one_"), cell("all_"),
                    "%s / %s" % (ms(made), ms(deleted))]


def run(backend_port, twistd, count, s, log, server_args=(), client_args=()):
    """Start the cluster, measure it, stop it: (header, row, note lines)."""
    cluster = Cluster(backend_port, twistd, count, server_args, client_args)
    notes = []
    runs, made, deleted = [], [], []
    try:
        log("starting %s ..." % cluster.name)
        cluster.start()
        for i in range(s.runs):
            log("run %d/%d: %s ..." % (i + 1, s.runs, cluster.name))
            result, run_notes = measure_run(cluster, s)
            runs.append(result)
            notes += ["%s, run %d: %s" % (cluster.name, i + 1, n) for n in run_notes]
        log("%s: mapping changes ..." % cluster.name)
        try:
            made, deleted = cluster.propagation(PROPAGATION_SAMPLES if s.runs > 1 else 3)
        except loadgen.MeasurementError as e:
            notes.append("%s, mapping changes: %s" % (cluster.name, e))
    except (peers.PeerUnavailable, OSError) as e:
        notes.append("%s: not available (%s)" % (cluster.name, e))
        log(notes[-1])
        return None, None, notes
    finally:
        cluster.stop()
    header, cells = row(cluster, runs, made, deleted, s.streams)
    notes.insert(0, (
        "%s: %d nodes on one PostgreSQL, each on its own loopback address, and one client "
        "linked to every node; all of them, PostgreSQL, the load generator and the backend "
        "share this machine's %d cores, so the row shows what spreading the streams over "
        "nodes costs, not how a cluster of machines scales. Mapping changes: median of %d "
        "(POST on each node in turn until the port accepts on every node; DELETE until it "
        "refuses on every node); slowest %s/%s ms."
        % (cluster.name, count, os.cpu_count() or 0, len(made),
           "%.0f" % (max(made) * 1000) if made else "—",
           "%.0f" % (max(deleted) * 1000) if deleted else "—")))
    return header, cells, notes
