"""
Tests for portmapper.server.metrics and ``GET /metrics``: the collector over
a fake server's registry through StubTreq, parsed back with
prometheus_client's parser; and one scrape of a live server during traffic
over real loopback TCP.
"""

import os
import socket

import treq
from treq.testing import StubTreq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portmapper.server import metrics
from portmapper.server.admin import AdminAPI
from portmapper.server.registry import CLIENT_LOST, DENIED, LIMIT, NO_CLIENT, USER_CLOSED
from tests.e2e import Backend, Echo, Running, connect, in_thread, recv_exactly, start_client, wait_for
from tests.openapi_check import RecordingStubTreq
from tests.test_admin import AdminTestCase


def samples(text):
    """``{(sample name, sorted label items): value}`` of Prometheus ``text``."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found, name, **labels):
    return found[(name, tuple(sorted(labels.items())))]


class MetricsEndpointTests(AdminTestCase):
    """GET /metrics over the in-memory admin app and a fake server."""

    def setUp(self):
        super().setUp()
        self.metrics = metrics.ServerMetrics(self.server)
        self.stub = RecordingStubTreq(
            self, AdminAPI(self.server, admin_token=self.token, metrics=self.metrics).app.resource())

    def scrape(self, headers=None):
        response = self.successResultOf(self.stub.get("http://admin/metrics", headers=headers))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         [metrics.CONTENT_TYPE.decode("ascii")])
        return samples(self.successResultOf(treq.text_content(response)))

    def test_live_gauges(self):
        """Clients count by tag and channels by public port; mapped ports and tags with none show 0."""
        self.add_mapping(5555, tag="office")
        self.add_mapping(6666, tag="lab")
        self.add_client(tag="office")
        self.add_client(tag="office")
        self.add_channel(5555)
        found = self.scrape()
        self.assertEqual(value(found, "portmapper_clients", tag="office"), 2)
        self.assertEqual(value(found, "portmapper_clients", tag="lab"), 0)
        self.assertEqual(value(found, "portmapper_channels", port="5555"), 1)
        self.assertEqual(value(found, "portmapper_channels", port="6666"), 0)

    def test_bytes_survive_a_close(self):
        """A channel's and a client's bytes stay in the totals after they close: counters never go back."""
        self.add_mapping(5555)
        client = self.add_client(tag="office")
        client.meter.recv_bytes, client.meter.send_bytes = 1000, 2000
        channel = self.add_channel(5555)
        channel.meter.recv_bytes, channel.meter.send_bytes = 300, 700
        before = self.scrape()
        self.assertEqual(value(before, "portmapper_channel_bytes_total", port="5555", direction="recv"), 300)
        self.assertEqual(value(before, "portmapper_client_bytes_total", tag="office", direction="send"), 2000)

        del self.server.registry.channels[channel.channel_id]
        self.metrics.channel_closed(channel, USER_CLOSED)
        del self.server.registry.clients[client.client_id]
        self.metrics.client_closed(client)
        second = self.add_channel(5555)
        second.meter.recv_bytes = 5
        after = self.scrape()
        self.assertEqual(value(after, "portmapper_channel_bytes_total", port="5555", direction="recv"), 305)
        self.assertEqual(value(after, "portmapper_channel_bytes_total", port="5555", direction="send"), 700)
        self.assertEqual(value(after, "portmapper_client_bytes_total", tag="office", direction="recv"), 1000)
        self.assertEqual(value(after, "portmapper_client_bytes_total", tag="office", direction="send"), 2000)
        self.assertEqual(value(after, "portmapper_channels_closed_total", reason=USER_CLOSED), 1)
        self.assertEqual(value(after, "portmapper_clients", tag="default"), 0)

    def test_close_reasons_and_handshake_failures(self):
        """Closed channels count by reason; handshake failures by their few kinds, others folded in."""
        self.add_mapping(5555)
        for reason in [USER_CLOSED, CLIENT_LOST, CLIENT_LOST]:
            self.metrics.channel_closed(self.add_channel(5555), reason)
        self.metrics.handshake_failed(metrics.REFUSED)
        self.metrics.handshake_failed("something new")
        found = self.scrape()
        self.assertEqual(value(found, "portmapper_channels_closed_total", reason=CLIENT_LOST), 2)
        self.assertEqual(value(found, "portmapper_handshake_failures_total", reason="refused"), 1)
        self.assertEqual(value(found, "portmapper_handshake_failures_total", reason="disconnected"), 1)
        self.assertEqual(value(found, "portmapper_handshake_failures_total", reason="timeout"), 0)
        reasons = {dict(labels)["reason"] for name, labels in found
                   if name == "portmapper_handshake_failures_total"}
        self.assertEqual(reasons, set(metrics.HANDSHAKE_FAILURES))

    def test_refusals_by_port_and_reason(self):
        """Refused connections count by public port and reason; a mapped port shows each reason at 0."""
        self.add_mapping(5555)
        self.add_mapping(6666)
        for reason in [DENIED, DENIED, LIMIT]:
            self.metrics.refused(5555, reason)
        self.metrics.refused(7777, NO_CLIENT)  # its mapping since deleted: still counted
        self.metrics.refused(5555, "something new")  # not a refusal reason: no new label
        found = self.scrape()
        self.assertEqual(value(found, "portmapper_refusals_total", port="5555", reason=DENIED), 2)
        self.assertEqual(value(found, "portmapper_refusals_total", port="5555", reason=LIMIT), 1)
        self.assertEqual(value(found, "portmapper_refusals_total", port="5555", reason=NO_CLIENT), 0)
        self.assertEqual(value(found, "portmapper_refusals_total", port="6666", reason=DENIED), 0)
        self.assertEqual(value(found, "portmapper_refusals_total", port="7777", reason=NO_CLIENT), 1)
        reasons = {dict(labels)["reason"] for name, labels in found if name == "portmapper_refusals_total"}
        self.assertEqual(reasons, set(metrics.REFUSALS))

    def test_sampler_histogram(self):
        """The sampler tick histogram counts each observed tick in its buckets."""
        self.metrics.sampler_tick.observe(0.002)
        self.metrics.sampler_tick.observe(0.2)
        found = self.scrape()
        self.assertEqual(value(found, "portmapper_sampler_tick_seconds_count"), 2)
        self.assertEqual(value(found, "portmapper_sampler_tick_seconds_bucket", le="0.005"), 1)
        self.assertEqual(value(found, "portmapper_sampler_tick_seconds_bucket", le="+Inf"), 2)

    def test_no_label_by_id(self):
        """No metric is labelled by a client or channel id, however many there are."""
        self.add_mapping(5555)
        for _ in range(5):
            self.add_client()
            self.add_channel(5555)
        labels = {name for _, items in self.scrape() for name, _ in items}
        self.assertEqual(labels, {"tag", "port", "direction", "reason", "le"})

    def test_closed_tags_are_bounded(self):
        """Past MAX_TAGS closed tags, further tags' bytes are counted under OTHER_TAG."""
        self.patch(metrics, "MAX_TAGS", 2)
        for tag in ["a", "b", "c", "d"]:
            client = self.add_client(tag=tag)
            client.meter.recv_bytes = 10
            del self.server.registry.clients[client.client_id]
            self.metrics.client_closed(client)
        found = self.scrape()
        tags = {dict(labels)["tag"] for name, labels in found if name == "portmapper_client_bytes_total"}
        self.assertEqual(tags, {"a", "b", metrics.OTHER_TAG})
        self.assertEqual(value(found, "portmapper_client_bytes_total", tag=metrics.OTHER_TAG,
                               direction="recv"), 20)

    def test_own_registry(self):
        """Two servers' metrics live in registries of their own, apart from the global one."""
        from prometheus_client import REGISTRY
        other = metrics.ServerMetrics(self.server)
        self.assertIsNot(other.registry, self.metrics.registry)
        self.assertIsNot(other.registry, REGISTRY)
        self.assertNotIn("portmapper_sampler_tick_seconds", REGISTRY._names_to_collectors)


class MetricsTokenTests(AdminTestCase):
    """GET /metrics needs the admin token like the rest of the API."""

    token = "s3cret"

    def test_needs_token(self):
        """Without the bearer token /metrics is a 401 JSON failure; with it, Prometheus text."""
        self.failed("GET", "/metrics", 401)
        response = self.successResultOf(self.stub.get(
            "http://admin/metrics", headers={"Authorization": "Bearer s3cret"}))
        self.assertEqual(response.code, 200)
        self.assertIn(b"portmapper_clients", self.successResultOf(treq.content(response)))


class DefaultMetricsTests(SynchronousTestCase):

    def test_default_metrics_read_the_server(self):
        """An AdminAPI given no metrics serves metrics of its server's live state."""
        from twisted.internet.task import Clock

        from tests.test_admin import FakeServer
        server = FakeServer(Clock())
        server.registry.new_client("10.0.0.1", 4000, "x", now=0.0)
        stub = StubTreq(AdminAPI(server).app.resource())
        response = self.successResultOf(stub.get("http://admin/metrics"))
        found = samples(self.successResultOf(treq.text_content(response)))
        self.assertEqual(value(found, "portmapper_clients", tag="x"), 1)


def upload(port, data, expect):
    """Send ``data`` to ``port`` and read ``expect`` bytes back, keeping the connection open."""
    s = connect(port)
    s.sendall(data)
    return s, recv_exactly(s, expect)


@inlineCallbacks
def scrape(running):
    """The samples of a live server's GET /metrics."""
    response = yield treq.get(running.admin + "/metrics", persistent=False)
    return samples((yield treq.text_content(response)))


def channel_bytes(found, port):
    """(recv, send) of ``port``'s channel byte counter."""
    return tuple(value(found, "portmapper_channel_bytes_total", port=str(port), direction=direction)
                 for direction in ("recv", "send"))


class ScrapeDuringTrafficTests(TestCase):
    """A live server scraped while a channel carries data, and after it closed."""

    timeout = 60

    @inlineCallbacks
    def test_byte_counters_follow_traffic(self):
        """The channel byte counters show what was sent while open, and exactly that once closed."""
        running = yield Running(self, self.mktemp()).start()
        server = running.server
        start_client(self, server.client_port)
        yield wait_for(lambda: server.registry.clients, what="the client")
        public = yield running.map(Backend(Echo).listen(self))

        data = os.urandom(256 * 1024 + 3)
        sock, got = yield in_thread(upload, public, data, len(data))
        self.addCleanup(sock.close)
        self.assertEqual(len(got), len(data))

        during = yield scrape(running)
        self.assertEqual(value(during, "portmapper_channels", port=str(public)), 1)
        self.assertEqual(channel_bytes(during, public), (len(data), len(data)))
        self.assertEqual(value(during, "portmapper_clients", tag="default"), 1)
        link_recv = value(during, "portmapper_client_bytes_total", tag="default", direction="recv")
        self.assertGreater(link_recv, len(data))  # the echo came back over the link, framed

        sock.shutdown(socket.SHUT_WR)
        yield wait_for(lambda: not server.registry.channels, what="the channel to close")
        after = yield scrape(running)
        self.assertEqual(value(after, "portmapper_channels", port=str(public)), 0)
        self.assertEqual(channel_bytes(after, public), (len(data), len(data)))
        self.assertEqual(value(after, "portmapper_channels_closed_total", reason=USER_CLOSED), 1)
        self.assertGreaterEqual(
            value(after, "portmapper_client_bytes_total", tag="default", direction="recv"), link_recv)
