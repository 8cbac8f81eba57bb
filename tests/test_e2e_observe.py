"""
End-to-end tests of what an operator sees and does through the admin API:
statistics, kicks, channel closes and history, over real loopback TCP.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase

from tests.e2e import (
    Backend, Echo, Running, connect, echo_roundtrip, in_thread, recv_or_reset,
    start_client, wait_for,
)

MiB = 2**20


class Discard(Protocol):
    def dataReceived(self, data):
        pass


class PacedUpload(Protocol):
    """Writes ``chunk`` bytes every ``period`` seconds of the reactor's clock."""

    chunk = 64 * 1024
    period = 0.025  # 64 KiB / 25 ms = 2.5 MiB/s

    def connectionMade(self):
        self.loop = LoopingCall(self.transport.write, b"u" * self.chunk)
        self.loop.start(self.period)

    def connectionLost(self, reason):
        if self.loop.running:
            self.loop.stop()


class ObserveTests(TestCase):
    """A server, one client and a mapping, looked at through the API."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.data_dir = self.mktemp()
        self.running = yield Running(self, self.data_dir, extra=["--sample-interval", "0.5"]).start()
        self.server = self.running.server
        start_client(self, self.server.client_port)
        yield wait_for(lambda: self.server.registry.clients, what="the client")

    @inlineCallbacks
    def test_history_has_exact_byte_counts(self):
        """After 5 MiB + 7 bytes echoed, the channel's history row counts exactly that both ways."""
        public = yield self.running.map(Backend(Echo).listen(self))
        data = os.urandom(5 * MiB + 7)
        got = yield in_thread(echo_roundtrip, public, data)
        self.assertTrue(got == data)
        yield wait_for(lambda: not self.server.registry.channels, what="the channel to close")
        code, body = yield self.running.api("GET", "/channel_history", port=str(public))
        self.assertEqual(code, 200)
        (row,) = body["history"]
        self.assertEqual((row["recv_bytes"], row["send_bytes"]), (5 * MiB + 7, 5 * MiB + 7))
        self.assertEqual(row["close_reason"], "user closed")
        self.assertEqual(row["recv_flow_statistics"], round((5 * MiB + 7) / MiB, 6))
        (client_id,) = self.server.registry.clients
        self.assertEqual((row["port"], row["client_id"], row["target_port"]),
                         (public, client_id, self.server.registry.mappings[public].target_port))

    @inlineCallbacks
    def test_real_time_speed_tracks_a_steady_upload(self):
        """While 2.5 MiB/s flows up a channel, recv_real_time_speed is within 30% of it."""
        public = yield self.running.map(Backend(Discard).listen(self))
        connector = reactor.connectTCP("127.0.0.1", public, ClientFactory.forProtocol(PacedUpload))
        self.addCleanup(connector.disconnect)
        yield wait_for(lambda: self.server.registry.channels, what="the channel")
        (channel_id,) = self.server.registry.channels
        meter = self.server.registry.channels[channel_id].meter
        # Let the speed settle over a few sampling intervals.
        start = reactor.seconds()
        yield wait_for(lambda: reactor.seconds() - start > 2.2, what="a few samples")
        code, body = yield self.running.api("GET", "/channel", channel_id=str(channel_id))
        rate = PacedUpload.chunk / PacedUpload.period / MiB
        speed = body[str(channel_id)]["recv_real_time_speed"]
        self.assertGreater(meter.recv_bytes, 0)
        self.assertLess(abs(speed - rate) / rate, 0.30, f"speed {speed} MB/s vs {rate} MB/s")
        code, clients = yield self.running.api("GET", "/client_connection")
        (client,) = clients.values()
        self.assertLess(abs(client["send_real_time_speed"] - rate) / rate, 0.30)

    @inlineCallbacks
    def test_delete_channel_closes_the_user(self):
        """DELETE /channel closes the user's socket and the target's, recorded as closed by admin."""
        backend = Backend(Echo)
        public = yield self.running.map(backend.listen(self))
        user = yield in_thread(connect, public)
        self.addCleanup(user.close)
        yield in_thread(lambda: (user.sendall(b"x"), user.recv(1)))
        code, listing = yield self.running.api("GET", "/channel", port=str(public))
        (entry,) = listing[str(public)]
        self.assertEqual(entry["state"], "WORKING")
        code, body = yield self.running.api("DELETE", "/channel", channel_id=str(entry["channel_id"]))
        self.assertEqual((code, body), (200, {"result": "success"}))
        self.assertEqual((yield in_thread(recv_or_reset, user)), b"")
        (target,) = backend.connections
        yield wait_for(lambda: not target.transport.connected, what="the target side to close")
        code, body = yield self.running.api("GET", "/channel_history", channel_id=str(entry["channel_id"]))
        self.assertEqual(body["history"][0]["close_reason"], "closed by admin")

    @inlineCallbacks
    def test_kicked_client_comes_back_with_a_new_id(self):
        """DELETE /client_connection drops the link; the client reconnects with a new id."""
        (old_id,) = self.server.registry.clients
        code, body = yield self.running.api("DELETE", "/client_connection", client_id=str(old_id))
        self.assertEqual((code, body), (200, {"result": "success"}))
        yield wait_for(lambda: old_id not in self.server.registry.clients, what="the kick")
        yield wait_for(lambda: self.server.registry.clients, timeout=20, what="the client to return")
        (new_id,) = self.server.registry.clients
        self.assertGreater(new_id, old_id)
        code, body = yield self.running.api("GET", "/client_history")
        self.assertEqual((body["history"][0]["client_id"], body["history"][0]["close_reason"]),
                         (old_id, "closed by admin"))
        code, body = yield self.running.api("GET", "/client_connection", client_id=str(old_id))
        self.assertEqual(code, 404)

    @inlineCallbacks
    def test_history_survives_restart(self):
        """Channel history written before a restart is served after it."""
        public = yield self.running.map(Backend(Echo).listen(self))
        self.assertEqual((yield in_thread(echo_roundtrip, public, b"remember me")), b"remember me")
        yield wait_for(lambda: not self.server.registry.channels, what="the channel to close")
        code, before = yield self.running.api("GET", "/channel_history")
        yield self.running.stop()
        again = yield Running(self, self.data_dir).start()
        code, after = yield again.api("GET", "/channel_history")
        self.assertEqual(after["history"], before["history"])
        self.assertEqual(after["history"][0]["recv_bytes"], len(b"remember me"))

