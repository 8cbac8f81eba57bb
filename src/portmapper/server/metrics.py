"""
The server's Prometheus metrics, served by the admin API at ``GET /metrics``.

Nothing here runs on the data path.  At scrape time :class:`ServerMetrics`
reads the live meters of the open channels and connected clients (through
:class:`~portmapper.server.interfaces.IPortMapperServer`) and adds what the
connections that have closed carried, which the server hands over once per
closing connection (:meth:`ServerMetrics.channel_closed`,
:meth:`ServerMetrics.client_closed`): so a byte counter never goes back
when a channel closes, and a chunk of data costs nothing more than the
meter's integer add.

Each server has its own ``CollectorRegistry`` (never the library's global
one), so several servers in one process, or in one test run, do not
collide.  Labels stay bounded: by public port, tag, close reason, or one of
the few kinds of :data:`HANDSHAKE_FAILURES` or :data:`REFUSALS`; never by
connection id.  Tags
are chosen by clients, so at most :data:`MAX_TAGS` closed tags are kept
apart and the rest are counted under :data:`OTHER_TAG`.
"""

from collections import Counter, defaultdict

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from portmapper.server.registry import DENIED, LIMIT, NO_CLIENT

# generate_latest writes the classic text format, which every Prometheus reads.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

MAX_TAGS = 1000
OTHER_TAG = "_other"

# Why a link ended before its client was admitted: the kinds the handshake
# failure counter is labelled by.
REFUSED = "refused"  # the server refused the client's proof or tag
HANDSHAKE_TIMEOUT = "timeout"  # the handshake did not finish in time
HANDSHAKE_PROTOCOL_ERROR = "protocol error"  # the peer broke the protocol
DISCONNECTED = "disconnected"  # the peer went away before it was admitted
HANDSHAKE_FAILURES = (REFUSED, HANDSHAKE_TIMEOUT, HANDSHAKE_PROTOCOL_ERROR, DISCONNECTED)

# Why a user's connection was closed at accept, before it was a channel: the
# reasons the refusal counter is labelled by (the server's refused()).
REFUSALS = (NO_CLIENT, DENIED, LIMIT)

# Seconds one sampler tick may take: a tick walks every live meter.
TICK_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)


class ServerMetrics:
    """The metrics of ``server`` (an IPortMapperServer), in a registry of their own."""

    def __init__(self, server):
        self._server = server
        self._channel_bytes = defaultdict(lambda: [0, 0])  # public port -> [recv, send] of closed channels
        self._client_bytes = defaultdict(lambda: [0, 0])  # tag -> [recv, send] of closed clients
        self._closed = Counter()  # close reason -> channels closed
        self._handshake_failures = Counter({kind: 0 for kind in HANDSHAKE_FAILURES})
        self._refusals = Counter()  # (public port, one of REFUSALS) -> connections refused
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.sampler_tick = Histogram(
            "portmapper_sampler_tick_seconds", "Seconds each traffic sampler tick took.",
            buckets=TICK_BUCKETS, registry=self.registry)

    # -- told by the server, once per connection ---------------------------------

    def channel_closed(self, record, reason):
        """The channel ``record`` closed for ``reason``: keep what it carried."""
        _add(self._channel_bytes[record.public_port], record.meter)
        self._closed[reason] += 1

    def client_closed(self, session):
        """The client ``session``'s link is gone: keep what it carried."""
        tag = session.tag
        if tag not in self._client_bytes and len(self._client_bytes) >= MAX_TAGS:
            tag = OTHER_TAG
        _add(self._client_bytes[tag], session.meter)

    def handshake_failed(self, kind):
        """A link ended before its client was admitted, for one of HANDSHAKE_FAILURES."""
        self._handshake_failures[kind if kind in HANDSHAKE_FAILURES else DISCONNECTED] += 1

    def refused(self, public_port, reason):
        """A user's connection to ``public_port`` was closed at accept for ``reason``, one of REFUSALS."""
        if reason in REFUSALS:
            self._refusals[(public_port, reason)] += 1

    # -- scraped -----------------------------------------------------------------

    def exposition(self):
        """The metrics as Prometheus text (bytes); serve with CONTENT_TYPE."""
        return generate_latest(self.registry)

    def collect(self):
        """The custom collector's metrics, from the live state and the closed totals now."""
        mappings = self._server.mappings()
        clients, client_bytes = _tally(self._server.clients().values(), lambda c: c.tag,
                                       (m.tag for m in mappings.values()), self._client_bytes)
        channels, channel_bytes = _tally(self._server.channels().values(), lambda c: c.public_port,
                                         mappings, self._channel_bytes)
        yield _family(GaugeMetricFamily, "portmapper_clients", "Connected tunnel clients, by tag.",
                      "tag", clients)
        yield _family(GaugeMetricFamily, "portmapper_channels", "Open channels, by public port.",
                      "port", channels)
        yield _bytes("portmapper_channel_bytes",
                     "Bytes carried by channels, by public port; recv from the users, send to them.",
                     "port", channel_bytes)
        yield _bytes("portmapper_client_bytes",
                     "Bytes on client links, by tag; recv from the clients, send to them.",
                     "tag", client_bytes)
        yield _family(CounterMetricFamily, "portmapper_channels_closed",
                      "Channels closed, by close reason.", "reason", self._closed)
        yield _family(CounterMetricFamily, "portmapper_handshake_failures",
                      "Links that ended before their client was admitted, by kind of failure.",
                      "reason", self._handshake_failures)
        refusals = Counter({(port, reason): 0 for port in mappings for reason in REFUSALS})
        refusals.update(self._refusals)
        family = CounterMetricFamily(
            "portmapper_refusals", "Users' connections closed at accept, by public port and reason.",
            labels=["port", "reason"])
        for (port, reason), count in sorted(refusals.items()):
            family.add_metric([str(port), reason], count)
        yield family


def _add(totals, meter):
    totals[0] += meter.recv_bytes
    totals[1] += meter.send_bytes


def _tally(connections, key, known, closed):
    """
    ``(open connections by key, every known key at least 0; [recv, send]
    bytes by key, those of ``closed`` connections added)``.
    """
    counts = Counter(dict.fromkeys(known, 0))
    carried = defaultdict(lambda: [0, 0], {k: list(totals) for k, totals in closed.items()})
    for connection in connections:
        counts[key(connection)] += 1
        _add(carried[key(connection)], connection.meter)
    return counts, carried


def _bytes(name, documentation, label, totals):
    counter = CounterMetricFamily(name, documentation, labels=[label, "direction"])
    for value in sorted(totals):
        recv, send = totals[value]
        counter.add_metric([str(value), "recv"], recv)
        counter.add_metric([str(value), "send"], send)
    return counter


def _family(kind, name, documentation, label, counts):
    """A gauge or counter ``kind`` of ``counts``, one sample per key in order."""
    family = kind(name, documentation, labels=[label])
    for value in sorted(counts):
        family.add_metric([str(value)], counts[value])
    return family
