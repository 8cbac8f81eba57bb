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
the few kinds of :data:`HANDSHAKE_FAILURES`; never by connection id.  Tags
are chosen by clients, so at most :data:`MAX_TAGS` closed tags are kept
apart and the rest are counted under :data:`OTHER_TAG`.
"""

from collections import Counter, defaultdict

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest

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
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.sampler_tick = Histogram(
            "portmapper_sampler_tick_seconds", "Seconds each traffic sampler tick took.",
            buckets=TICK_BUCKETS, registry=self.registry)

    # -- told by the server, once per connection ---------------------------------

    def channel_closed(self, record, reason):
        """The channel ``record`` closed for ``reason``: keep what it carried."""
        totals = self._channel_bytes[record.public_port]
        totals[0] += record.meter.recv_bytes
        totals[1] += record.meter.send_bytes
        self._closed[reason] += 1

    def client_closed(self, session):
        """The client ``session``'s link is gone: keep what it carried."""
        tag = session.tag
        if tag not in self._client_bytes and len(self._client_bytes) >= MAX_TAGS:
            tag = OTHER_TAG
        totals = self._client_bytes[tag]
        totals[0] += session.meter.recv_bytes
        totals[1] += session.meter.send_bytes

    def handshake_failed(self, kind):
        """A link ended before its client was admitted, for one of HANDSHAKE_FAILURES."""
        self._handshake_failures[kind if kind in HANDSHAKE_FAILURES else DISCONNECTED] += 1

    # -- scraped -----------------------------------------------------------------

    def exposition(self):
        """The metrics as Prometheus text (bytes); serve with CONTENT_TYPE."""
        return generate_latest(self.registry)

    def collect(self):
        """The custom collector's metrics, from the live state and the closed totals now."""
        mappings = self._server.mappings()
        clients = self._server.clients().values()
        channels = self._server.channels().values()

        live_clients = Counter({mapping.tag: 0 for mapping in mappings.values()})
        client_bytes = defaultdict(lambda: [0, 0], {t: list(v) for t, v in self._client_bytes.items()})
        for client in clients:
            live_clients[client.tag] += 1
            totals = client_bytes[client.tag]
            totals[0] += client.meter.recv_bytes
            totals[1] += client.meter.send_bytes

        open_channels = Counter({port: 0 for port in mappings})
        channel_bytes = defaultdict(lambda: [0, 0], {p: list(v) for p, v in self._channel_bytes.items()})
        for channel in channels:
            open_channels[channel.public_port] += 1
            totals = channel_bytes[channel.public_port]
            totals[0] += channel.meter.recv_bytes
            totals[1] += channel.meter.send_bytes

        gauge = GaugeMetricFamily("portmapper_clients", "Connected tunnel clients, by tag.", labels=["tag"])
        for tag in sorted(live_clients):
            gauge.add_metric([tag], live_clients[tag])
        yield gauge
        gauge = GaugeMetricFamily("portmapper_channels", "Open channels, by public port.", labels=["port"])
        for port in sorted(open_channels):
            gauge.add_metric([str(port)], open_channels[port])
        yield gauge
        yield _bytes("portmapper_channel_bytes",
                     "Bytes carried by channels, by public port; recv from the users, send to them.",
                     "port", {str(port): channel_bytes[port] for port in sorted(channel_bytes)})
        yield _bytes("portmapper_client_bytes",
                     "Bytes on client links, by tag; recv from the clients, send to them.",
                     "tag", {tag: client_bytes[tag] for tag in sorted(client_bytes)})
        yield _counter("portmapper_channels_closed", "Channels closed, by close reason.",
                       "reason", self._closed)
        yield _counter("portmapper_handshake_failures",
                       "Links that ended before their client was admitted, by kind of failure.",
                       "reason", self._handshake_failures)


def _bytes(name, documentation, label, totals):
    counter = CounterMetricFamily(name, documentation, labels=[label, "direction"])
    for value, (recv, send) in totals.items():
        counter.add_metric([value, "recv"], recv)
        counter.add_metric([value, "send"], send)
    return counter


def _counter(name, documentation, label, counts):
    counter = CounterMetricFamily(name, documentation, labels=[label])
    for value in sorted(counts):
        counter.add_metric([value], counts[value])
    return counter
