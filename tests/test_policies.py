"""
Tests for the mapping policies as values: their rules (portmapper.validate),
the admin API's POST and PATCH /port_mapper with them (over test_admin's
fake server), the Mapping record, and the store keeping them.
"""

import ipaddress
import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portmapper import validate
from portmapper.server.meter import MB
from portmapper.server.proxyheader import header as proxy_header
from portmapper.server.ratelimit import WINDOW_CAP, RateLimiter
from portmapper.protocol.windows import LinkEstimate
from portmapper.server.registry import Mapping, Registry
from portmapper.server.store import Store
from tests.test_admin import AdminTestCase


class RuleTests(SynchronousTestCase):
    def test_each_policy_parses(self):
        """Each policy's text parses to its value and shows back as the same text."""
        for name, text, value in [
                ("allow", "10.0.0.0/8,127.0.0.5/32,fd00::/8",
                 tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "127.0.0.5/32", "fd00::/8"))),
                ("proxy_protocol", "v2", "v2"), ("max_channels", "3", 3),
                ("rate_limit", "0.5", 0.5), ("rate_limit", "50", 50.0),
                ("balance", "least_channels", "least_channels")]:
            parse, _ = validate.POLICIES[name]
            self.assertEqual(parse(text), value)
            self.assertEqual(validate.policy_text(name, value), text)

    def test_bad_policies(self):
        """A bad value of each policy is a ValueError saying what it must be."""
        for name, text in [("allow", "10.0.0.0/33"), ("allow", "a,b"),
                           ("allow", ",".join(["10.0.0.1"] * (validate.MAX_NETWORKS + 1))),
                           ("proxy_protocol", "v3"), ("proxy_protocol", "V1"),
                           ("max_channels", "0"), ("max_channels", "-1"), ("max_channels", "1e3"),
                           ("rate_limit", "0"), ("rate_limit", "-5"), ("rate_limit", "1e3"),
                           ("rate_limit", "nan"), ("rate_limit", "200000"), ("rate_limit", "\u0665"),
                           ("balance", "random")]:
            parse, _ = validate.POLICIES[name]
            error = self.assertRaises(ValueError, parse, text)
            self.assertTrue(str(error).startswith("must be"), (name, text, str(error)))

    def test_too_many_networks_says_so(self):
        """An allow-list over the cap says the cap and the count."""
        error = self.assertRaises(ValueError, validate.allow_list, ",".join(["10.0.0.1"] * 65))
        self.assertEqual(str(error), "must be at most 64 networks, not 65")


class MappingTests(SynchronousTestCase):
    def test_shown_only_when_set(self):
        """A mapping without policies shows the original three fields; set ones are added."""
        mapping = Mapping(5433, "10.0.0.1", 22)
        self.assertEqual(mapping.as_json(), {"ip": "10.0.0.1", "port": 22, "tag": "default"})
        mapping.allow = validate.allow_list("127.0.0.5")
        mapping.max_channels, mapping.rate_limit, mapping.proxy_protocol = 3, 5.0, "v1"
        self.assertEqual(mapping.as_json(), {
            "ip": "10.0.0.1", "port": 22, "tag": "default", "allow": "127.0.0.5/32",
            "proxy_protocol": "v1", "max_channels": 3, "rate_limit": 5.0})

    def test_allows(self):
        """allows() checks the user's address against the networks, IPv4-mapped IPv6 as IPv4."""
        mapping = Mapping(5433, "10.0.0.1", 22)
        self.assertTrue(mapping.allows("192.0.2.1"))
        mapping.allow = validate.allow_list("127.0.0.5/32,fd00::/8")
        self.assertTrue(mapping.allows("127.0.0.5"))
        self.assertTrue(mapping.allows("::ffff:127.0.0.5"))
        self.assertTrue(mapping.allows("fd00::7"))
        self.assertFalse(mapping.allows("127.0.0.1"))
        self.assertFalse(mapping.allows("::1"))


class PostPatchTests(AdminTestCase):
    def test_post_with_policies(self):
        """POST /port_mapper passes the parsed policies and answers the mapping with them."""
        body = self.call("POST", "/port_mapper?port=5433&mapper_ip=10.0.0.1&mapper_port=22"
                                 "&allow=127.0.0.5/32,10.0.0.0/8&proxy_protocol=v2&max_channels=3"
                                 "&rate_limit=5&balance=least_channels")
        self.assertEqual(body["port_mapper"]["5433"], {
            "ip": "10.0.0.1", "port": 22, "tag": "default", "allow": "127.0.0.5/32,10.0.0.0/8",
            "proxy_protocol": "v2", "max_channels": 3, "rate_limit": 5.0,
            "balance": "least_channels"})
        self.assertEqual(self.call("GET", "/port_mapper")["5433"], body["port_mapper"]["5433"])

    def test_post_bad_policy(self):
        """A malformed policy is a 400 naming it and its rule; nothing is created."""
        for query, reason in [
                ("allow=10.0.0.0/33", "Parameter 'allow' must be comma-separated IP networks"),
                ("proxy_protocol=v3", "Parameter 'proxy_protocol' must be v1 or v2."),
                ("max_channels=0", "Parameter 'max_channels' must be an integer from 1 to"),
                ("rate_limit=fast", "Parameter 'rate_limit' must be a number of MB/s above 0"),
                ("balance=random", "Parameter 'balance' must be round_robin or least_channels.")]:
            got = self.failed("POST", "/port_mapper?port=5433&mapper_ip=10.0.0.1&mapper_port=22&"
                              + query, 400)
            self.assertTrue(got.startswith(reason), got)
        self.assertEqual(self.server.calls, [])

    def test_post_empty_policy_is_unset(self):
        """POST with an empty policy value sets nothing."""
        self.call("POST", "/port_mapper?port=5433&mapper_ip=10.0.0.1&mapper_port=22&allow=")
        self.assertEqual(self.server.calls, [("add_mapping", 5433, "10.0.0.1", 22, "default")])

    def test_patch(self):
        """PATCH changes the target, tag and policies given; an empty value removes a policy."""
        self.call("POST", "/port_mapper?port=5433&mapper_ip=10.0.0.1&mapper_port=22&max_channels=3")
        body = self.call("PATCH", "/port_mapper?port=5433&mapper_ip=10.0.0.2&mapper_tag=lab"
                                  "&max_channels=&rate_limit=20")
        self.assertEqual(body, {"result": "success", "port_mapper": {"5433": {
            "ip": "10.0.0.2", "port": 22, "tag": "lab", "rate_limit": 20.0}}})
        self.assertEqual(self.server.calls[-1], ("change_mapping", 5433, {
            "target_ip": "10.0.0.2", "tag": "lab", "max_channels": None, "rate_limit": 20.0}))

    def test_patch_unknown_and_bad(self):
        """PATCH of an unmapped port is a 404; a bad value a 400 that changes nothing."""
        self.assertEqual(self.failed("PATCH", "/port_mapper?port=5999&rate_limit=2", 404),
                         "No port mapper on port 5999.")
        self.add_mapping(5433)
        self.failed("PATCH", "/port_mapper?port=5433&rate_limit=2&mapper_port=0", 400)
        self.failed("PATCH", "/port_mapper?port=5433&mapper_ip=", 400)
        self.assertEqual(self.server.calls, [("change_mapping", 5999, {"rate_limit": 2.0})])


class StoreTests(TestCase):
    @inlineCallbacks
    def test_policies_kept(self):
        """Policies saved with a mapping load back as the texts; a mapping without any has none."""
        path = os.path.join(self.mktemp(), "db.sqlite3")
        store = Store(path, reactor)
        yield store.start()
        yield store.save_mapping(5433, "10.0.0.1", 22, "lab", {"rate_limit": "5", "allow": "10.0.0.0/8"})
        yield store.save_mapping(5434, "10.0.0.1", 23, "lab")
        yield store.stop()
        store = Store(path, reactor)
        yield store.start()
        self.addCleanup(store.stop)
        self.assertEqual((yield store.load_policies()),
                         {5433: {"rate_limit": "5", "allow": "10.0.0.0/8"}})
        self.assertEqual(len((yield store.load_mappings())), 2)


class ProxyHeaderTests(SynchronousTestCase):
    def test_v1(self):
        """v1 is the spec's text line, TCP4 or TCP6, IPv4-mapped addresses as IPv4."""
        self.assertEqual(proxy_header("v1", ("192.0.2.1", 56324), ("198.51.100.7", 443)),
                         b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n")
        self.assertEqual(proxy_header("v1", ("::ffff:192.0.2.1", 1), ("192.0.2.2", 2)),
                         b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n")
        self.assertEqual(proxy_header("v1", ("2001:db8::1", 56324), ("2001:db8::2", 443)),
                         b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n")

    def test_v2(self):
        """v2 is the signature, 0x21, the family, the length, addresses and ports in network order."""
        self.assertEqual(
            proxy_header("v2", ("192.0.2.1", 56324), ("198.51.100.7", 443)),
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([192, 0, 2, 1, 198, 51, 100, 7])
            + b"\xdc\x04\x01\xbb")
        v6 = proxy_header("v2", ("2001:db8::1", 1), ("192.0.2.2", 2))
        self.assertEqual(v6[12:16], b"\x21\x21\x00\x24")
        self.assertEqual(v6[16:32], ipaddress.ip_address("2001:db8::1").packed)
        self.assertEqual(v6[32:48], ipaddress.ip_address("::ffff:192.0.2.2").packed)
        self.assertEqual(v6[48:], b"\x00\x01\x00\x02")


class _End:
    """A channel end as the rate limiter sees one, recording what it is told."""

    def __init__(self):
        self.transport = type("T", (), {"bufferSize": 0})()
        self.reading_held, self.credit_held, self.cap = set(), set(), None
        self.received = self.delivered = 0

    def dataReceived(self, data):
        self.received += len(data)

    def deliver(self, data):
        self.delivered += len(data)

    def holdReading(self, why):
        self.reading_held.add(why)

    def releaseReading(self, why):
        self.reading_held.discard(why)

    def holdCredit(self, why, held):
        (self.credit_held.add if held else self.credit_held.discard)(why)

    def capWindow(self, size):
        self.cap = size


class RateLimiterTests(SynchronousTestCase):
    def test_pause_and_resume_with_one_timer(self):
        """A dry bucket pauses every end of that direction under one timer, which resumes them."""
        clock = Clock()
        limiter = RateLimiter(clock, 1)  # 1 MB/s
        burst = int(limiter.recv.burst)
        ends = [_End(), _End()]
        for end in ends:
            limiter.add(end)
        ends[0].dataReceived(b"x" * (burst + 1))
        self.assertEqual([e.reading_held for e in ends], [{"rate"}, {"rate"}])
        self.assertEqual([e.credit_held for e in ends], [set(), set()])
        ends[1].deliver(b"y" * (burst + 1))
        self.assertEqual([e.credit_held for e in ends], [{"rate"}, {"rate"}])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0.1)  # the debt and a quarter of the bucket, refilled at 1 MB/s
        self.assertEqual([(e.reading_held, e.credit_held) for e in ends], [(set(), set())] * 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_rate_over_time(self):
        """Bytes taken whenever the ends are not held add up to the rate, with the first bucket."""
        clock = Clock()
        limiter = RateLimiter(clock, 2)
        end = _End()
        limiter.add(end)
        for _ in range(1000):  # 10 s in 10 ms steps, up to 8 reads of 16 KiB in each
            for _ in range(8):
                if not end.reading_held:
                    end.dataReceived(b"z" * 16384)
            clock.advance(0.01)
        expected = 2 * MB * 10 + limiter.recv.burst
        self.assertLess(abs(end.received - expected) / expected, 0.02)

    def test_burst_granted_before_the_limit_is_not_owed(self):
        """8 MiB arriving on credit given while unlimited hold the channel back under a second, not 8 s."""
        clock = Clock()
        limiter = RateLimiter(clock, 1)  # 1 MB/s
        end = _End()
        limiter.add(end)
        end.deliver(b"y" * (8 * 2**20))  # a window grown while unlimited, arriving at once
        self.assertEqual(end.credit_held, {"rate"})
        clock.advance(0.5)
        self.assertEqual(end.credit_held, set())

    def test_removed_end_is_plain(self):
        """An end removed from the limiter has its own methods back, released and uncapped."""
        clock = Clock()
        limiter = RateLimiter(clock, 1)
        end = _End()
        limiter.add(end)
        self.assertIn("dataReceived", vars(end))
        self.assertEqual(end.cap, WINDOW_CAP)
        end.dataReceived(b"x" * (int(limiter.recv.burst) + 1))
        limiter.remove(end)
        self.assertNotIn("dataReceived", vars(end))
        self.assertNotIn("deliver", vars(end))
        self.assertEqual((end.reading_held, end.cap), (set(), None))
        self.assertEqual(clock.getDelayedCalls(), [])


class _Link:
    """What ClientSession.answering() reads of a link: its round trips measured."""

    def __init__(self):
        self.connection = type("C", (), {})()
        self.connection.estimate = LinkEstimate()


class BalanceTests(SynchronousTestCase):
    def clients(self, registry, count):
        return [registry.new_client("10.0.0.%d" % n, 40000, "lab", 0.0, link=_Link())
                for n in range(count)]

    def test_least_channels(self):
        """balance=least_channels picks the client carrying the fewest channels."""
        registry = Registry()
        a, b, c = self.clients(registry, 3)
        a.channels.update({1, 2}), b.channels.update({3}), c.channels.update({4, 5, 6})
        self.assertIs(registry.pick_client("lab", "least_channels"), b)
        b.channels.update({7, 8})
        self.assertIs(registry.pick_client("lab", "least_channels"), a)
        self.assertIs(registry.pick_client("lab", "least_channels", exclude=a), b)

    def test_round_robin_default(self):
        """Without balance the clients take turns."""
        registry = Registry()
        a, b = self.clients(registry, 2)
        self.assertEqual([registry.pick_client("lab") for _ in range(4)], [a, b, a, b])

    def test_timed_out_client_passed_by_until_it_answers(self):
        """A client whose open timed out is passed by while another can serve, until its next PONG."""
        registry = Registry()
        a, b = self.clients(registry, 2)
        a.open_timed_out()
        self.assertEqual({registry.pick_client("lab") for _ in range(4)}, {b})
        b.state = "DRAINING"
        self.assertIs(registry.pick_client("lab"), a)  # the only one left still serves
        b.state = "WORKING"
        a.link.connection.estimate.round_trip(0.01)
        self.assertEqual({registry.pick_client("lab") for _ in range(4)}, {a, b})
