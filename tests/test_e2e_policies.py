"""
End-to-end tests of the mapping policies over real loopback TCP: a server
and a client as the twistd plugins build them, backends in the same
reactor, users on blocking sockets in threads (bound to 127.0.0.x source
addresses where the address matters).
"""

import ipaddress
import socket
import struct

from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from tests.e2e import (
    Backend, Echo, EchoUser, Running, free_port, in_thread, recv_or_reset, start_client,
    wait_for,
)
from tests.test_metrics import scrape, value

try:
    from proxyprotocol.v1 import ProxyProtocolV1
    from proxyprotocol.v2 import ProxyProtocolV2
except ImportError:  # the test extra installs it
    ProxyProtocolV1 = ProxyProtocolV2 = None


def connect_from(source_ip, port, timeout=20.0):
    """A socket to 127.0.0.1:``port`` whose source address is ``source_ip``."""
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source_ip, 0))
    s.connect(("127.0.0.1", port))
    return s


def roundtrip_from(source_ip, port, data):
    """Send ``data`` from ``source_ip`` and read back as much, or what comes until the close."""
    s = connect_from(source_ip, port)
    try:
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = s.recv(len(data) - len(got))
            if not chunk:
                break
            got += chunk
        return got
    except ConnectionResetError:
        return b""
    finally:
        s.close()


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def parse_proxy_header(data):
    """
    Read a PROXY protocol header as proxy-protocol.txt specifies it:
    ``(version, family, source ip, destination ip, source port,
    destination port, the bytes after it)``.
    """
    if data.startswith(b"PROXY "):
        line, sep, rest = data.partition(b"\r\n")
        assert sep and len(line) + 2 <= 107, "v1: one CRLF-terminated line of at most 107 bytes"
        parts = line.decode("ascii").split(" ")
        assert len(parts) == 6 and parts[1] in ("TCP4", "TCP6"), parts
        for port in parts[4:]:
            assert port == str(int(port)) and 0 <= int(port) <= 65535, port
        family = 4 if parts[1] == "TCP4" else 6
        source, destination = (ipaddress.ip_address(a) for a in parts[2:4])
        assert source.version == destination.version == family
        return ("v1", parts[1], str(source), str(destination), int(parts[4]), int(parts[5]), rest)
    assert data[:12] == V2_SIGNATURE, data[:16]
    version_command, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    assert version_command == 0x21, "version 2, command PROXY"
    body, rest = data[16:16 + length], data[16 + length:]
    if family == 0x11:  # TCP over IPv4
        assert length == 12
        src, dst, ports = body[:4], body[4:8], body[8:12]
        name = "TCP4"
    else:
        assert family == 0x21 and length == 36, "TCP over IPv6"
        src, dst, ports = body[:16], body[16:32], body[32:36]
        name = "TCP6"
    sport, dport = struct.unpack("!HH", ports)
    return ("v2", name, str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)),
            sport, dport, rest)


class Recorder(Protocol):
    """A target that keeps every byte it reads."""

    def connectionMade(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data


class PolicyTestCase(TestCase):
    """A server, one client; mappings made with policies."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.running = yield Running(self, self.mktemp()).start()
        self.server = self.running.server
        self.client = start_client(self, self.server.client_port)
        yield wait_for(lambda: len(self.server.registry.clients) == 1, what="the client")

    @inlineCallbacks
    def map(self, target_port, **policies):
        public = free_port()
        code, body = yield self.running.api(
            "POST", "/port_mapper", port=str(public), mapper_ip="127.0.0.1",
            mapper_port=str(target_port), **policies)
        self.assertEqual(code, 200, body)
        return public

    @inlineCallbacks
    def history(self, public):
        code, body = yield self.running.api("GET", "/channel_history", port=str(public))
        return [(row["ip"], row["close_reason"]) for row in body["history"]]

    @inlineCallbacks
    def refusals(self, public, reason):
        """The live server's ``portmapper_refusals_total`` of ``public`` and ``reason``, scraped."""
        return value((yield scrape(self.running)), "portmapper_refusals_total",
                     port=str(public), reason=reason)


class AllowTests(PolicyTestCase):
    @inlineCallbacks
    def test_allow(self):
        """With allow=127.0.0.5/32 a user from 127.0.0.5 is carried, one from 127.0.0.1 denied."""
        public = yield self.map(Backend(Echo).listen(self), allow="127.0.0.5/32")
        self.assertEqual((yield in_thread(roundtrip_from, "127.0.0.5", public, b"in")), b"in")
        self.assertEqual((yield in_thread(roundtrip_from, "127.0.0.1", public, b"out")), b"")
        yield wait_for(lambda: not self.server.registry.channels, what="both channels to close")
        self.assertEqual((yield self.history(public)),
                         [("127.0.0.1", "denied"), ("127.0.0.5", "user closed")])
        self.assertEqual((yield self.refusals(public, "denied")), 1)
        self.assertEqual((yield self.refusals(public, "limit")), 0)


class ProxyProtocolTests(PolicyTestCase):
    @inlineCallbacks
    def carried_header(self, version):
        backend = Backend(Recorder)
        public = yield self.map(backend.listen(self), proxy_protocol=version)
        user = yield in_thread(connect_from, "127.0.0.5", public)
        self.addCleanup(user.close)
        user_port = user.getsockname()[1]
        payload = bytes(range(256)) * 64
        yield in_thread(user.sendall, payload)
        yield wait_for(lambda: backend.connections
                       and len(backend.connections[0].received) >= len(payload),
                       what="the header and the payload at the target")
        received = backend.connections[0].received
        parsed = parse_proxy_header(received)
        self.assertEqual(parsed[:6], (version, "TCP4", "127.0.0.5", "127.0.0.1", user_port, public))
        self.assertEqual(parsed[6], payload)
        return received, user_port, public

    @inlineCallbacks
    def test_v1(self):
        """proxy_protocol=v1: the target reads the spec's text line, then the user's bytes unchanged."""
        received, user_port, public = yield self.carried_header("v1")
        self.assertTrue(received.startswith(
            b"PROXY TCP4 127.0.0.5 127.0.0.1 %d %d\r\n" % (user_port, public)))
        if ProxyProtocolV1 is not None:
            line = received[:received.index(b"\r\n") + 2]
            result = ProxyProtocolV1().unpack(line)
            self.assertEqual((str(result.source[0]), result.source[1], result.dest[1]),
                             ("127.0.0.5", user_port, public))

    @inlineCallbacks
    def test_v2(self):
        """proxy_protocol=v2: the target reads the spec's binary header, then the user's bytes unchanged."""
        received, user_port, public = yield self.carried_header("v2")
        self.assertEqual(received[:28], V2_SIGNATURE + b"\x21\x11\x00\x0c"
                         + socket.inet_aton("127.0.0.5") + socket.inet_aton("127.0.0.1")
                         + struct.pack("!HH", user_port, public))
        if ProxyProtocolV2 is not None:
            result = ProxyProtocolV2().unpack(received[:28])
            self.assertEqual((str(result.source[0]), result.source[1], result.dest[1]),
                             ("127.0.0.5", user_port, public))


class MaxChannelsTests(PolicyTestCase):
    @inlineCallbacks
    def test_max_channels(self):
        """max_channels=3: a fourth user is closed at once ('limit'); a fifth gets in after one closes."""
        public = yield self.map(Backend(Echo).listen(self), max_channels="3")
        users = []
        for n in range(3):
            user = yield in_thread(connect_from, "127.0.0.1", public)
            self.addCleanup(user.close)
            users.append(user)
            yield in_thread(lambda: (user.sendall(b"%d" % n), user.recv(1)))
        fourth = yield in_thread(connect_from, "127.0.0.4", public)
        self.addCleanup(fourth.close)
        self.assertEqual((yield in_thread(recv_or_reset, fourth)), b"")
        self.assertIn(("127.0.0.4", "limit"), (yield self.history(public)))
        self.assertEqual((yield self.refusals(public, "limit")), 1)
        users[0].close()
        yield wait_for(lambda: len(self.server.registry.channels) == 3 - 1, what="one to close")
        self.assertEqual((yield in_thread(roundtrip_from, "127.0.0.6", public, b"fifth")), b"fifth")


class KeptTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_policies_survive_restart(self):
        """Policies set by POST and PATCH are shown after a restart and still enforced."""
        data_dir = self.mktemp()
        first = yield Running(self, data_dir).start()
        public = free_port()
        yield first.api("POST", "/port_mapper", port=str(public), mapper_ip="127.0.0.1",
                        mapper_port="9", allow="127.0.0.5", max_channels="3")
        code, body = yield first.api("PATCH", "/port_mapper", port=str(public),
                                     max_channels="", proxy_protocol="v2", rate_limit="2.5")
        self.assertEqual(code, 200, body)
        yield first.stop()
        second = yield Running(self, data_dir).start()
        code, mappings = yield second.api("GET", "/port_mapper")
        self.assertEqual(mappings[str(public)], {
            "ip": "127.0.0.1", "port": 9, "tag": "default", "allow": "127.0.0.5/32",
            "proxy_protocol": "v2", "rate_limit": 2.5})
        self.assertEqual((yield in_thread(roundtrip_from, "127.0.0.1", public, b"x")), b"")
        yield wait_for(lambda: not second.server.registry.channels, what="the denied channel")
        code, body = yield second.api("GET", "/channel_history", port=str(public))
        self.assertEqual(body["history"][0]["close_reason"], "denied")


MB = 2**20


class Flood(Protocol):
    """Sends a pattern as fast as the transport takes it (if ``sends``), and counts what it reads."""

    chunk = bytes(range(256)) * 256  # 64 KiB

    def __init__(self, sends=True):
        self.sends = sends

    def connectionMade(self):
        self.received = 0
        self.paused = False
        if self.sends:
            self.transport.registerProducer(self, True)
            self.resumeProducing()

    def dataReceived(self, data):
        self.received += len(data)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        for _ in range(64):  # bounded: the transport pauses us long before
            if self.paused:
                break
            self.transport.write(self.chunk)

    def stopProducing(self):
        self.paused = True


class RateLimitTests(PolicyTestCase):
    timeout = 60

    @inlineCallbacks
    def flood(self, public, users=2):
        """``users`` Flood users on ``public``; fires with (users, targets) once all are carried."""
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", public)
        found = []
        for _ in range(users):
            protocol = yield connectProtocol(endpoint, Flood())
            self.addCleanup(protocol.transport.abortConnection)
            found.append(protocol)
        yield wait_for(lambda: len(self.targets.connections) == users, what="the targets")
        return found, self.targets.connections

    @inlineCallbacks
    def rates(self, users, targets, seconds):
        """MB/s over ``seconds`` per user: (received by its target, received by the user)."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater
        before = [(t.received, u.received) for u, t in zip(users, targets)]
        yield deferLater(reactor, seconds, lambda: None)  # the measuring interval
        after = [(t.received, u.received) for u, t in zip(users, targets)]
        return [((a[0] - b[0]) / seconds / MB, (a[1] - b[1]) / seconds / MB)
                for a, b in zip(after, before)]

    def assertWithin(self, rates, limit, tolerance, what):
        for direction, name in ((0, "recv"), (1, "send")):
            shares = [r[direction] for r in rates]
            total = sum(shares)
            self.assertLess(abs(total - limit) / limit, tolerance,
                            f"{what}: {name} at {total:.2f} MB/s for a limit of {limit}")
            mean = total / len(shares)
            self.assertGreater(min(shares), mean / 2, f"{what}: {name} shares {shares}")

    @inlineCallbacks
    def test_rates(self):
        """rate_limit at 5 and at 50 MB/s holds within 10% each way at once over 3 s, shared fairly by two channels."""
        for limit in (5, 50):
            self.targets = Backend(Flood)
            public = yield self.map(self.targets.listen(self), rate_limit=str(limit))
            users, targets = yield self.flood(public)
            yield self.rates(users, targets, 0.5)  # past the first bucket and windows
            rates = yield self.rates(users, targets, 3.0)
            self.assertWithin(rates, limit, 0.10, f"rate_limit={limit}")
            for user in users:
                user.transport.abortConnection()

    @inlineCallbacks
    def test_patch_rate(self):
        """PATCH to another rate_limit holds the open channels to it within a second."""
        self.targets = Backend(Flood)
        public = yield self.map(self.targets.listen(self), rate_limit="40")
        users, targets = yield self.flood(public)
        yield self.rates(users, targets, 0.5)
        code, body = yield self.running.api("PATCH", "/port_mapper", port=str(public),
                                            rate_limit="4")
        self.assertEqual(code, 200, body)
        yield self.rates(users, targets, 1.0)  # the change takes effect within this second
        rates = yield self.rates(users, targets, 1.5)
        self.assertWithin(rates, 4, 0.15, "after PATCH to 4")


class FailoverTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_client_lost_mid_open(self):
        """With 200 users mid-open, the first client's link cut: every channel it had not opened is carried by the second."""
        from twisted.internet import reactor
        from twisted.internet.defer import gatherResults
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        running = yield Running(self, self.mktemp()).start()
        server = running.server
        for _ in range(2):
            start_client(self, server.client_port)
        yield wait_for(lambda: len(server.registry.clients) == 2, what="two clients")
        first, second = (server.registry.clients[i] for i in sorted(server.registry.clients))
        public = free_port()
        yield running.api("POST", "/port_mapper", port=str(public), mapper_ip="127.0.0.1",
                          mapper_port=str(Backend(Echo).listen(self)))
        first.link.transport.pauseProducing()  # its OPEN_OKs go unread: its opens hang

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", public)
        users = []
        for n in range(200):
            user = yield connectProtocol(endpoint, EchoUser(b"user %d\n" % n))
            self.addCleanup(user.transport.abortConnection)
            users.append(user)
        yield wait_for(lambda: len(server.registry.channels) == 200, what="200 channels")
        yield wait_for(lambda: sum(c.opened for c in server.registry.channels.values()) >= 100,
                       what="the second client's channels to open")
        stalled = {c.channel_id for c in server.registry.channels.values()
                   if c.client_id == first.client_id and not c.opened}
        self.assertGreaterEqual(len(stalled), 90)

        first.link.transport.abortConnection()
        got = yield gatherResults([user.done for user in users])
        self.assertEqual(got, [b"user %d\n" % n for n in range(200)])
        self.assertEqual({c.client_id for c in server.registry.channels.values()},
                         {second.client_id})
        self.assertTrue(all(server.registry.channels[i].opened for i in stalled))
        for user in users:
            user.transport.loseConnection()
        yield wait_for(lambda: not server.registry.channels, what="the channels to close")
