"""
Tests for portmapper.server.admin: the admin JSON API, driven in memory with
StubTreq over a fake IPortMapperServer (a real Registry, a task.Clock,
recorded calls).
"""

import json
import os
import time

import treq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from portmapper import errors
from portmapper.server.admin import AdminAPI
from portmapper.server.interfaces import IPortMapperServer
from portmapper.server.registry import WORKING, Credential, Mapping, Registry
from tests.openapi_check import RecordingStubTreq

MiB = 2**20
# 2018-07-04 10:12:38 UTC
EPOCH = 1530699158


@implementer(IPortMapperServer)
class FakeServer:
    """An IPortMapperServer over a Registry the tests fill in, recording the operations asked of it."""

    def __init__(self, clock):
        self.clock = clock
        self.client_port = 1111
        self.registry = Registry()
        self.calls = []
        self.unavailable = {}  # port -> OS reason
        self.pending_add = None  # a Deferred to return from add_mapping instead
        self.channel_rows = []  # newest first
        self.client_rows = []
        self.node_name = "node-1"
        self.other_nodes = []  # what nodes() gives besides this node

    def node(self):
        return {"name": self.node_name, "version": "0.1.0", "started_time": 0.0,
                "client_port": self.client_port}

    def nodes(self):
        return [{**self.node(), "admin_url": "http://127.0.0.1:8080", "heartbeat_age": 0.5,
                 "alive": True, "clients": len(self.registry.clients),
                 "channels": len(self.registry.channels)}] + self.other_nodes

    def mappings(self):
        return self.registry.mappings

    def clients(self):
        return self.registry.clients

    def channels(self):
        return self.registry.channels

    def credentials(self):
        return {i: c for i, c in self.registry.credentials.items() if not c.revoked}

    def issue_credential(self, tag, name=None):
        self.calls.append(("issue_credential", tag, name))
        credential_id = len(self.registry.credentials) + 1
        credential = Credential(credential_id, name, tag, b"k" * 32, self.clock.seconds())
        self.registry.add_credential(credential)
        return succeed((credential, f"pmc_token{credential_id}"))

    def revoke_credential(self, credential_id):
        self.calls.append(("revoke_credential", credential_id))
        credential = self.registry.credentials.get(credential_id)
        if credential is None or credential.revoked:
            return fail(errors.UnknownCredential(credential_id))
        credential.revoked = True
        return succeed(None)

    def add_mapping(self, public_port, target_ip, target_port, tag, policies):
        self.calls.append(("add_mapping", public_port, target_ip, target_port, tag))
        if policies:
            self.calls.append(("policies", policies))
        if public_port in self.registry.mappings:
            return fail(errors.MappingExists(public_port))
        if public_port in self.unavailable:
            return fail(errors.PortUnavailable(public_port, self.unavailable[public_port]))
        mapping = Mapping(public_port, target_ip, target_port, tag, **policies)
        self.registry.mappings[public_port] = mapping
        return self.pending_add or succeed(mapping)

    def change_mapping(self, public_port, changes):
        self.calls.append(("change_mapping", public_port, changes))
        mapping = self.registry.mappings.get(public_port)
        if mapping is None:
            return fail(errors.UnknownMapping(public_port))
        for name, value in changes.items():
            setattr(mapping, name, value)
        return succeed(mapping)

    def remove_mapping(self, public_port):
        self.calls.append(("remove_mapping", public_port))
        if self.registry.mappings.pop(public_port, None) is None:
            return fail(errors.UnknownMapping(public_port))
        return succeed(None)

    def kick_client(self, client_id):
        self.calls.append(("kick_client", client_id))
        if self.registry.clients.pop(client_id, None) is None:
            raise errors.UnknownClient(client_id)

    def close_channel(self, channel_id):
        self.calls.append(("close_channel", channel_id))
        if self.registry.channels.pop(channel_id, None) is None:
            raise errors.UnknownChannel(channel_id)

    def channel_history(self, port=None, client_id=None, channel_id=None, limit=100, before=None):
        self.calls.append(("channel_history", port, client_id, channel_id, before))
        rows = [
            row for row in self.channel_rows
            if (port is None or row["port"] == port)
            and (client_id is None or row["client_id"] == client_id)
            and (channel_id is None or row["channel_id"] == channel_id)
            and (before is None or row["channel_id"] < before)
        ]
        return succeed(rows[:limit])

    def client_history(self, client_id=None, limit=100, before=None):
        self.calls.append(("client_history", client_id, before))
        rows = [
            row for row in self.client_rows
            if (client_id is None or row["client_id"] == client_id)
            and (before is None or row["client_id"] < before)
        ]
        return succeed(rows[:limit])


def channel_row(channel_id, port=5555, client_id=1):
    return {
        "channel_id": channel_id, "port": port, "ip": "192.168.184.1", "user_port": 57984,
        "client_id": client_id, "target_ip": "192.168.10.15", "target_port": 6666,
        "init_time": float(EPOCH), "close_time": EPOCH + 8.5,
        "recv_bytes": 3721, "send_bytes": 4 * MiB, "close_reason": "user closed",
    }


def client_row(client_id):
    return {
        "client_id": client_id, "ip": "10.0.0.7", "port": 40000, "tag": "default",
        "init_time": float(EPOCH), "close_time": EPOCH + 4.0,
        "recv_bytes": 2 * MiB, "send_bytes": 0, "close_reason": "client lost",
    }


class AdminTestCase(SynchronousTestCase):
    """Shared set-up: a fake server at EPOCH, local time in UTC, a StubTreq."""

    token = None

    def setUp(self):
        old_tz = os.environ.get("TZ")
        os.environ["TZ"] = "UTC"
        time.tzset()
        self.addCleanup(self._restore_tz, old_tz)
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.server = FakeServer(self.clock)
        # Every answer is also checked against the OpenAPI document when the test ends.
        self.stub = RecordingStubTreq(self, AdminAPI(self.server, admin_token=self.token).app.resource())

    @staticmethod
    def _restore_tz(old_tz):
        if old_tz is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old_tz
        time.tzset()

    def call(self, method, path, status=200, headers=None):
        """The JSON body of ``method path``, checking status and content type."""
        response = self.successResultOf(self.stub.request(method, "http://admin" + path, headers=headers))
        self.assertEqual(response.code, status)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        return self.successResultOf(treq.json_content(response))

    def failed(self, method, path, status, headers=None):
        """The reason of a failed ``method path``, checking the failure shape."""
        body = self.call(method, path, status, headers)
        self.assertEqual(set(body), {"result", "reason"})
        self.assertEqual(body["result"], "failed")
        return body["reason"]

    def add_mapping(self, port=5555, ip="192.168.10.15", target_port=6666, tag="default"):
        self.server.registry.mappings[port] = Mapping(port, ip, target_port, tag)

    def add_client(self, ip="10.0.0.7", port=40000, tag="default"):
        return self.server.registry.new_client(ip, port, tag, now=self.clock.seconds())

    def add_channel(self, public_port=5555, user_ip="192.168.184.1", user_port=57984, client_id=None):
        channel = self.server.registry.new_channel(public_port, user_ip, user_port, now=self.clock.seconds())
        channel.client_id, channel.target_ip, channel.target_port = client_id, "192.168.10.15", 6666
        return channel


class FakeServerTests(SynchronousTestCase):

    def test_fake_provides_interface(self):
        """The fake these tests drive AdminAPI over provides all of IPortMapperServer."""
        self.assertTrue(verifyObject(IPortMapperServer, FakeServer(Clock())))


class ClientPortTests(AdminTestCase):

    def test_client_port(self):
        """GET /client_port answers the port clients dial."""
        self.assertEqual(self.call("GET", "/client_port"), {"client_port": 1111})


class PortMapperTests(AdminTestCase):

    def test_list_empty(self):
        """GET /port_mapper with no mappings is an empty object."""
        self.assertEqual(self.call("GET", "/port_mapper"), {})

    def test_list(self):
        """GET /port_mapper keys mappings by public port as strings, values keep their types."""
        self.add_mapping(5555)
        self.add_mapping(1234, "127.0.0.1", 3456, "tag10")
        self.assertEqual(self.call("GET", "/port_mapper"), {
            "1234": {"ip": "127.0.0.1", "port": 3456, "tag": "tag10"},
            "5555": {"ip": "192.168.10.15", "port": 6666, "tag": "default"},
        })

    def test_create(self):
        """POST /port_mapper hands parsed values to add_mapping, answers success and the mapping."""
        body = self.call("POST", "/port_mapper?port=5433&mapper_ip=192.168.10.15&mapper_port=22&mapper_tag=tag10")
        self.assertEqual(body, {"result": "success",
                                "port_mapper": {"5433": {"ip": "192.168.10.15", "port": 22, "tag": "tag10"}}})
        self.assertEqual(self.server.calls, [("add_mapping", 5433, "192.168.10.15", 22, "tag10")])
        self.assertIn("5433", self.call("GET", "/port_mapper"))

    def test_create_default_tag(self):
        """POST /port_mapper without mapper_tag uses the tag "default"."""
        self.call("POST", "/port_mapper?port=5433&mapper_ip=10.0.0.1&mapper_port=22")
        self.assertEqual(self.server.calls, [("add_mapping", 5433, "10.0.0.1", 22, "default")])

    def test_create_host_names(self):
        """mapper_ip takes host names and IPv6 addresses (normalised) as well as IPv4."""
        for given, passed in [("localhost", "localhost"), ("db-1.internal.example.", "db-1.internal.example."),
                              ("::0001", "::1"), ("fe80::1", "fe80::1")]:
            self.server.registry.mappings.clear()
            self.call("POST", f"/port_mapper?port=5433&mapper_ip={given}&mapper_port=22")
            self.assertEqual(self.server.calls.pop(), ("add_mapping", 5433, passed, 22, "default"))

    def test_create_ignores_extra_parameters(self):
        """Unknown extra parameters do not stop a POST."""
        self.call("POST", "/port_mapper?port=5433&mapper_ip=10.0.0.1&mapper_port=22&colour=blue")
        self.assertEqual(len(self.server.calls), 1)

    def test_create_waits_for_listening(self):
        """POST /port_mapper answers only once add_mapping's Deferred fires."""
        self.server.pending_add = Deferred()
        response = self.stub.post("http://admin/port_mapper?port=5433&mapper_ip=10.0.0.1&mapper_port=22")
        self.assertNoResult(response)
        self.server.pending_add.callback(Mapping(5433, "10.0.0.1", 22, "default"))
        self.stub.flush()
        self.assertEqual(self.successResultOf(response).code, 200)

    def test_create_duplicate(self):
        """POST for a port already mapped is a 409 with the original's wording."""
        self.add_mapping(5433)
        reason = self.failed("POST", "/port_mapper?port=5433&mapper_ip=10.0.0.1&mapper_port=22", 409)
        self.assertEqual(reason, "Create port mapper failed,port:5433 already exists")

    def test_create_unavailable(self):
        """POST for a port the OS will not bind is a 409 carrying the OS reason."""
        self.server.unavailable[80] = "Permission denied"
        reason = self.failed("POST", "/port_mapper?port=80&mapper_ip=10.0.0.1&mapper_port=22", 409)
        self.assertIn("Permission denied", reason)
        self.assertIn("80", reason)

    def assertRejected(self, query, parameter):
        reason = self.failed("POST", "/port_mapper?" + query, 400)
        self.assertIn(f"'{parameter}'", reason)
        self.assertEqual(self.server.calls, [], "a rejected POST must not reach the server")

    def test_create_bad_port(self):
        """A missing, empty, non-integer or out-of-range port is a 400 naming 'port'."""
        for port in ["", "port=", "port=0", "port=65536", "port=abc", "port=-1", "port=5.0", "port=%2B22", "port=%20 22"]:
            self.assertRejected(f"{port}&mapper_ip=10.0.0.1&mapper_port=22", "port")

    def test_create_port_message(self):
        """The 400 for a bad port says what a port must be."""
        reason = self.failed("POST", "/port_mapper?port=70000&mapper_ip=10.0.0.1&mapper_port=22", 400)
        self.assertEqual(reason, "Parameter 'port' must be an integer from 1 to 65535.")

    def test_create_bad_ip(self):
        """A mapper_ip that is neither an IP address nor a host name is a 400 naming it."""
        for ip in ["", "mapper_ip=", "mapper_ip=10.0.0.300", "mapper_ip=bad_host", "mapper_ip=-a.com",
                   "mapper_ip=a..b", "mapper_ip=" + "a" * 64 + ".com", "mapper_ip=h%C3%A9.com", "mapper_ip=%FF"]:
            self.assertRejected(f"port=5433&{ip}&mapper_port=22", "mapper_ip")

    def test_create_bad_mapper_port(self):
        """A missing or out-of-range mapper_port is a 400 naming it."""
        for mapper_port in ["", "mapper_port=0", "mapper_port=99999", "mapper_port=x"]:
            self.assertRejected(f"port=5433&mapper_ip=10.0.0.1&{mapper_port}", "mapper_port")

    def test_create_bad_tag(self):
        """A mapper_tag no client could announce (space, non-ASCII, control, 65 chars) is a 400 naming it."""
        for tag in ["", "a" * 65, "a%0Ab", "a%20b", "%20", "%E2%98%83", "%C3%A9t%C3%A9", "%00",
                    "a%2Fb", "%FF"]:
            self.assertRejected(f"port=5433&mapper_ip=10.0.0.1&mapper_port=22&mapper_tag={tag}", "mapper_tag")

    def test_create_bad_tag_message(self):
        """The 400 for a bad tag says the one tag rule."""
        reason = self.failed("POST", "/port_mapper?port=5433&mapper_ip=10.0.0.1&mapper_port=22&mapper_tag=a%20b", 400)
        self.assertEqual(reason, "Parameter 'mapper_tag' must be 1 to 64 ASCII letters, digits or any of '_.:-'.")

    def test_create_tag_characters(self):
        """A mapper_tag of 64 characters using every kind the rule allows is accepted as given."""
        tag = ("Az09_.:-" * 8)
        self.call("POST", f"/port_mapper?port=5433&mapper_ip=10.0.0.1&mapper_port=22&mapper_tag={tag}")
        self.assertEqual(self.server.calls, [("add_mapping", 5433, "10.0.0.1", 22, tag)])

    def test_delete(self):
        """DELETE /port_mapper?port= removes the mapping through the server."""
        self.add_mapping(5433)
        self.assertEqual(self.call("DELETE", "/port_mapper?port=5433"), {"result": "success"})
        self.assertEqual(self.server.calls, [("remove_mapping", 5433)])
        self.assertEqual(self.call("GET", "/port_mapper"), {})

    def test_delete_unknown(self):
        """DELETE of a port that is not mapped is a 404."""
        self.assertEqual(self.failed("DELETE", "/port_mapper?port=5433", 404), "No port mapper on port 5433.")

    def test_delete_bad_port(self):
        """DELETE /port_mapper without a valid port is a 400 naming 'port'."""
        for query in ["", "?port=x", "?port=0"]:
            self.assertIn("'port'", self.failed("DELETE", "/port_mapper" + query, 400))
        self.assertEqual(self.server.calls, [])


class ClientConnectionTests(AdminTestCase):

    def test_list_empty(self):
        """GET /client_connection with no clients is an empty object."""
        self.assertEqual(self.call("GET", "/client_connection"), {})

    def test_statistics(self):
        """A client's traffic is in MB and MB/s, its age in whole seconds, its start in local time."""
        client = self.add_client(tag="tag10")
        client.meter.recv_bytes = 3 * MiB
        client.meter.send_bytes = MiB // 2
        self.clock.advance(2)
        client.meter.sample(self.clock.seconds())
        self.clock.advance(0.75)
        self.assertEqual(self.call("GET", "/client_connection"), {"1": {
            "ip": "10.0.0.7", "port": 40000, "tag": "tag10", "state": WORKING,
            "init_time": "2018-07-04 10:12:38", "duration_time": 2,
            "recv_flow_statistics": 3.0, "recv_real_time_speed": 1.5,
            "recv_average_speed": round(3 / 2.75, 6), "recv_bytes": 3 * MiB,
            "send_flow_statistics": 0.5, "send_real_time_speed": 0.25,
            "send_average_speed": round(0.5 / 2.75, 6), "send_bytes": MiB // 2,
            "credential_id": None, "node": "node-1",
        }})

    def test_average(self):
        """3 MiB received over 2 s is a flow of 3.0 MB and an average of 1.5 MB/s."""
        self.add_client().meter.recv_bytes = 3 * MiB
        self.clock.advance(2)
        client = self.call("GET", "/client_connection?client_id=1")["1"]
        self.assertEqual((client["recv_flow_statistics"], client["recv_average_speed"]), (3.0, 1.5))

    def test_no_float_noise(self):
        """Small and awkward amounts come out rounded, not as float noise."""
        client = self.add_client()
        client.meter.recv_bytes = 3
        client.meter.recv_speed = 0.1 + 0.2
        self.clock.advance(3)
        body = self.call("GET", "/client_connection")["1"]
        self.assertEqual((body["recv_flow_statistics"], body["recv_real_time_speed"], body["recv_average_speed"]),
                         (3e-06, 0.0, 1e-06))

    def test_new_client_has_zero_speeds(self):
        """A client connected this instant has zero duration and zero speeds, not a division error."""
        self.add_client()
        body = self.call("GET", "/client_connection")["1"]
        self.assertEqual((body["duration_time"], body["recv_average_speed"]), (0, 0.0))

    def test_one(self):
        """GET /client_connection?client_id= holds only that client."""
        self.add_client()
        self.add_client(ip="10.0.0.8")
        self.assertEqual(list(self.call("GET", "/client_connection")), ["1", "2"])
        body = self.call("GET", "/client_connection?client_id=2")
        self.assertEqual(list(body), ["2"])
        self.assertEqual(body["2"]["ip"], "10.0.0.8")

    def test_one_unknown(self):
        """An unknown client_id is a 404."""
        reason = self.failed("GET", "/client_connection?client_id=7", 404)
        self.assertEqual(reason, "No connected client with client_id 7.")

    def test_bad_id(self):
        """A client_id that is not a positive integer is a 400 naming it."""
        for value in ["0", "x", "-3", "1e3", "9" * 30]:
            self.assertIn("'client_id'", self.failed("GET", "/client_connection?client_id=" + value, 400))

    def test_kick(self):
        """DELETE /client_connection?client_id= drops the client through the server."""
        self.add_client()
        self.assertEqual(self.call("DELETE", "/client_connection?client_id=1"), {"result": "success"})
        self.assertEqual(self.server.calls, [("kick_client", 1)])

    def test_kick_unknown(self):
        """DELETE of an unknown client is a 404."""
        self.assertEqual(self.failed("DELETE", "/client_connection?client_id=3", 404),
                         "No connected client with client_id 3.")

    def test_kick_needs_id(self):
        """DELETE /client_connection without a client_id is a 400 naming it, and kicks nobody."""
        self.add_client()
        reason = self.failed("DELETE", "/client_connection", 400)
        self.assertEqual(reason, "Parameter 'client_id' is required and must be a positive integer.")
        self.assertEqual(self.server.calls, [])


class CredentialTests(AdminTestCase):
    """POST, GET and DELETE /credential: issue (the token shown once), list, revoke."""

    def test_issue(self):
        """POST /credential answers the new credential with its token, asking the server for the tag and name."""
        body = self.call("POST", "/credential?tag=office&name=router-1")
        self.assertEqual(body, {"result": "success", "credential": {
            "credential_id": 1, "name": "router-1", "tag": "office", "token": "pmc_token1"}})
        self.assertEqual(self.server.calls, [("issue_credential", "office", "router-1")])

    def test_issue_without_name(self):
        """The name is optional: without it, the credential's name is null."""
        body = self.call("POST", "/credential?tag=office")
        self.assertIsNone(body["credential"]["name"])

    def test_issue_bad_parameters(self):
        """A missing or bad tag, or a bad name, is a 400 naming it, and nothing is issued."""
        for query, name in [("", "'tag'"), ("?tag=a%20b", "'tag'"), ("?tag=%E2%98%83", "'tag'"),
                            ("?tag=ok&name=" + "n" * 65, "'name'"), ("?tag=ok&name=a%00b", "'name'"),
                            ("?tag=ok&name=%C3%A9t%C3%A9", "'name'")]:
            reason = self.failed("POST", "/credential" + query, 400)
            self.assertIn(name, reason)
            self.assertTrue(reason.startswith("Parameter ") and reason.endswith("."), reason)
        self.assertEqual(self.server.calls, [])

    def test_list_never_shows_the_token(self):
        """GET /credential lists each credential with its times and linked clients, and no token."""
        self.call("POST", "/credential?tag=office&name=router-1")
        self.clock.advance(60)
        self.call("POST", "/credential?tag=lab")
        client = self.add_client(tag="office")
        client.credential_id = 1
        self.server.registry.credentials[1].last_used_time = self.clock.seconds()
        body = self.call("GET", "/credential")
        self.assertEqual(body, {
            "1": {"name": "router-1", "tag": "office", "created_time": "2018-07-04 10:12:38",
                  "last_used_time": "2018-07-04 10:13:38", "client_ids": [client.client_id]},
            "2": {"name": None, "tag": "lab", "created_time": "2018-07-04 10:13:38",
                  "last_used_time": None, "client_ids": []},
        })
        self.assertNotIn("token", json.dumps(body))

    def test_client_shows_credential(self):
        """GET /client_connection shows the credential a client linked with."""
        self.add_client().credential_id = 4
        self.assertEqual(self.call("GET", "/client_connection")["1"]["credential_id"], 4)

    def test_revoke(self):
        """DELETE /credential revokes it: success, and it leaves the list."""
        self.call("POST", "/credential?tag=office")
        self.assertEqual(self.call("DELETE", "/credential?credential_id=1"), {"result": "success"})
        self.assertEqual(self.call("GET", "/credential"), {})

    def test_revoke_unknown(self):
        """Revoking an unknown (or already revoked) credential is a 404; a bad id is a 400."""
        self.assertEqual(self.failed("DELETE", "/credential?credential_id=9", 404),
                         "No credential with credential_id 9 (or it is revoked already).")
        self.assertIn("'credential_id'", self.failed("DELETE", "/credential?credential_id=x", 400))
        self.assertIn("'credential_id'", self.failed("DELETE", "/credential", 400))


class ChannelTests(AdminTestCase):

    def test_grouped_by_port(self):
        """GET /channel groups open channels by public port and lists every mapped port."""
        self.add_mapping(5555)
        self.add_mapping(6000)
        self.add_channel(5555)
        second = self.add_channel(5555, user_ip="192.168.184.2", user_port=4000)
        second.opened = True
        self.assertEqual(self.call("GET", "/channel"), {
            "5555": [
                {"channel_id": 1, "ip": "192.168.184.1", "port": 57984, "state": "CONNECTING",
                 "node": "node-1"},
                {"channel_id": 2, "ip": "192.168.184.2", "port": 4000, "state": "WORKING",
                 "node": "node-1"},
            ],
            "6000": [],
        })

    def test_by_port(self):
        """GET /channel?port= lists that port only; a mapped port without channels is an empty list."""
        self.add_mapping(5555)
        self.add_mapping(6000)
        self.add_channel(5555)
        self.assertEqual(list(self.call("GET", "/channel?port=5555")), ["5555"])
        self.assertEqual(self.call("GET", "/channel?port=6000"), {"6000": []})

    def test_by_port_unmapped(self):
        """GET /channel?port= for a port that is not mapped is a 404."""
        self.assertEqual(self.failed("GET", "/channel?port=7000", 404), "No port mapper on port 7000.")

    def test_by_port_bad(self):
        """GET /channel?port= with a bad port is a 400 naming 'port'."""
        self.assertIn("'port'", self.failed("GET", "/channel?port=99999", 400))

    def test_detail(self):
        """GET /channel?channel_id= shows one open channel with times and traffic."""
        self.add_mapping(5555)
        channel = self.add_channel(5555, client_id=1)
        channel.opened = True
        channel.meter.recv_bytes = 3 * MiB
        channel.meter.send_bytes = 6 * MiB
        self.clock.advance(2)
        channel.meter.sample(self.clock.seconds())
        self.assertEqual(self.call("GET", "/channel?channel_id=1"), {"1": {
            "channel_id": 1, "public_port": 5555, "ip": "192.168.184.1", "port": 57984,
            "state": "WORKING", "client_id": 1, "target_ip": "192.168.10.15", "target_port": 6666,
            "init_time": "2018-07-04 10:12:38", "duration_time": 2,
            "recv_flow_statistics": 3.0, "recv_real_time_speed": 1.5, "recv_average_speed": 1.5,
            "recv_bytes": 3 * MiB,
            "send_flow_statistics": 6.0, "send_real_time_speed": 3.0, "send_average_speed": 3.0,
            "send_bytes": 6 * MiB, "node": "node-1",
        }})

    def test_detail_unknown(self):
        """GET /channel?channel_id= for no open channel is a 404."""
        self.assertEqual(self.failed("GET", "/channel?channel_id=9", 404), "No open channel with channel_id 9.")

    def test_port_and_id(self):
        """GET /channel with both port and channel_id is a 400 that names both."""
        reason = self.failed("GET", "/channel?port=5555&channel_id=1", 400)
        self.assertIn("'port'", reason)
        self.assertIn("'channel_id'", reason)

    def test_close(self):
        """DELETE /channel?channel_id= closes the channel through the server."""
        self.add_channel()
        self.assertEqual(self.call("DELETE", "/channel?channel_id=1"), {"result": "success"})
        self.assertEqual(self.server.calls, [("close_channel", 1)])

    def test_close_unknown(self):
        """DELETE of an unknown channel is a 404."""
        self.assertEqual(self.failed("DELETE", "/channel?channel_id=4", 404), "No open channel with channel_id 4.")

    def test_close_needs_id(self):
        """DELETE /channel without a valid channel_id is a 400 naming it."""
        for query in ["", "?channel_id=", "?channel_id=abc"]:
            self.assertIn("'channel_id'", self.failed("DELETE", "/channel" + query, 400))
        self.assertEqual(self.server.calls, [])


class HistoryTests(AdminTestCase):

    def test_channel_row(self):
        """A channel history row has formatted times, a whole-second duration, MB and MB/s."""
        self.server.channel_rows = [channel_row(2)]
        self.assertEqual(self.call("GET", "/channel_history"), {"history": [{
            "channel_id": 2, "port": 5555, "ip": "192.168.184.1", "user_port": 57984,
            "client_id": 1, "target_ip": "192.168.10.15", "target_port": 6666,
            "init_time": "2018-07-04 10:12:38", "close_time": "2018-07-04 10:12:46",
            "duration_time": 8,
            "recv_flow_statistics": 0.003549, "send_flow_statistics": 4.0,
            "recv_bytes": 3721, "send_bytes": 4 * MiB,
            "recv_average_speed": round(3721 / MiB / 8.5, 6), "send_average_speed": round(4 / 8.5, 6),
            "close_reason": "user closed",
        }], "next_before": None})

    def test_channel_filters(self):
        """port, client_id, channel_id and before go to the server as integers."""
        self.server.channel_rows = [channel_row(3, port=6000, client_id=2), channel_row(2), channel_row(1)]
        body = self.call("GET", "/channel_history?port=5555&client_id=1&before=3&channel_id=2")
        self.assertEqual([row["channel_id"] for row in body["history"]], [2])
        self.assertEqual(self.server.calls, [("channel_history", 5555, 1, 2, 3)])

    def test_channel_paging(self):
        """next_before leads page by page to the oldest row, then is null."""
        self.server.channel_rows = [channel_row(i) for i in range(5, 0, -1)]
        pages, before = [], ""
        while True:
            body = self.call("GET", "/channel_history?limit=2" + before)
            pages.append([row["channel_id"] for row in body["history"]])
            if body["next_before"] is None:
                break
            before = f"&before={body['next_before']}"
        self.assertEqual(pages, [[5, 4], [3, 2], [1]])

    def test_channel_last_full_page(self):
        """A last page that is exactly full says there is no next page."""
        self.server.channel_rows = [channel_row(i) for i in range(4, 0, -1)]
        body = self.call("GET", "/channel_history?limit=2&before=3")
        self.assertEqual(([row["channel_id"] for row in body["history"]], body["next_before"]), ([2, 1], None))

    def test_channel_default_limit(self):
        """Without limit, a page holds 100 rows."""
        self.server.channel_rows = [channel_row(i) for i in range(150, 0, -1)]
        body = self.call("GET", "/channel_history")
        self.assertEqual((len(body["history"]), body["next_before"]), (100, 51))

    def test_bad_limit(self):
        """limit outside 1..10000 (or not an integer) is a 400 naming 'limit'."""
        for path in ["/channel_history", "/client_history"]:
            for limit in ["0", "10001", "ten"]:
                reason = self.failed("GET", f"{path}?limit={limit}", 400)
                self.assertEqual(reason, "Parameter 'limit' must be an integer from 1 to 10000.")
        self.assertEqual(self.server.calls, [])

    def test_bad_filters(self):
        """A malformed history filter is a 400 naming it."""
        for query in ["port=0", "client_id=x", "channel_id=-1", "before=1.5"]:
            name = query.split("=")[0]
            self.assertIn(f"'{name}'", self.failed("GET", "/channel_history?" + query, 400))

    def test_client_history(self):
        """GET /client_history lists closed clients with times, traffic and paging."""
        self.server.client_rows = [client_row(i) for i in range(3, 0, -1)]
        body = self.call("GET", "/client_history?limit=2")
        self.assertEqual(body["next_before"], 2)
        self.assertEqual(body["history"][0], {
            "client_id": 3, "ip": "10.0.0.7", "port": 40000, "tag": "default",
            "init_time": "2018-07-04 10:12:38", "close_time": "2018-07-04 10:12:42", "duration_time": 4,
            "recv_flow_statistics": 2.0, "recv_average_speed": 0.5, "recv_bytes": 2 * MiB,
            "send_flow_statistics": 0.0, "send_average_speed": 0.0, "send_bytes": 0,
            "close_reason": "client lost",
        })
        body = self.call("GET", "/client_history?limit=2&before=2&client_id=1")
        self.assertEqual(([row["client_id"] for row in body["history"]], body["next_before"]), ([1], None))
        self.assertEqual(self.server.calls[-1], ("client_history", 1, 2))


class RoutingAndFaultTests(AdminTestCase):

    def test_wrong_method(self):
        """A method a known path does not serve is a 405 JSON failure with an Allow header."""
        response = self.successResultOf(self.stub.request("PUT", "http://admin/port_mapper"))
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(set(response.headers.getRawHeaders("allow")[0].split(", ")),
                         {"GET", "HEAD", "POST", "PATCH", "DELETE"})
        body = self.successResultOf(treq.json_content(response))
        self.assertEqual(body["result"], "failed")
        self.assertIn("PUT", body["reason"])

    def test_wrong_method_read_only(self):
        """DELETE on /client_port is a 405 JSON failure."""
        self.assertIn("/client_port", self.failed("DELETE", "/client_port", 405))

    def test_unknown_path(self):
        """An unknown path is a 404 JSON failure."""
        self.assertEqual(self.failed("GET", "/nothing/here", 404), "There is no endpoint /nothing/here.")

    def test_unexpected_error(self):
        """An unexpected exception is a logged 500 with the JSON failure shape, no traceback."""
        def broken(client_id):
            raise ZeroDivisionError("boom")
        self.server.kick_client = broken
        reason = self.failed("DELETE", "/client_connection?client_id=1", 500)
        self.assertNotIn("boom", reason)
        self.assertNotIn("Traceback", reason)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_unexpected_error_in_deferred(self):
        """A server Deferred failing with an unexpected error is a logged 500 as well."""
        self.server.channel_history = lambda **kw: fail(RuntimeError("store is gone"))
        self.failed("GET", "/channel_history", 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class TokenTests(AdminTestCase):

    token = "s3cret"

    def test_no_token(self):
        """Without an Authorization header every request is a 401 JSON failure."""
        for method, path in [("GET", "/port_mapper"), ("DELETE", "/channel?channel_id=1"),
                             ("GET", "/nothing"), ("PUT", "/port_mapper")]:
            self.assertIn("Authorization", self.failed(method, path, 401))
        self.assertEqual(self.server.calls, [])

    def test_wrong_token(self):
        """A wrong token or scheme is a 401, and a mapping is not created."""
        for value in ["Bearer nope", "Basic s3cret", "s3cret", "Bearer s3cret2", "Bearer"]:
            self.failed("POST", "/port_mapper?port=5433&mapper_ip=10.0.0.1&mapper_port=22", 401,
                        headers={"Authorization": value})
        self.assertEqual(self.server.calls, [])

    def test_www_authenticate(self):
        """A 401 names the Bearer scheme in WWW-Authenticate."""
        response = self.successResultOf(self.stub.get("http://admin/client_port"))
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ["Bearer"])

    def test_right_token(self):
        """The right bearer token lets requests through, errors included."""
        auth = {"Authorization": "Bearer s3cret"}
        self.assertEqual(self.call("GET", "/client_port", headers=auth), {"client_port": 1111})
        self.failed("GET", "/nothing", 404, headers=auth)
        self.failed("PUT", "/client_port", 405, headers=auth)

    def test_empty_token_refused(self):
        """An empty admin token is refused at construction rather than protecting nothing."""
        self.assertRaises(ValueError, AdminAPI, self.server, admin_token="")
