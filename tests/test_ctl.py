"""
Tests for portmapper.ctl, the ``portmapper-ctl`` command-line client.

Most run the command in-process through ``main(argv, reactor, out, err,
environ)`` against a live server on loopback (``tests.e2e.Running``); the
unit tests drive it with StubTreq or a hand-answered HTTP fake on a
``task.Clock``; a few run it as a program, to show the console script and
its exit statuses are wired.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from treq.testing import StubTreq

from portmapper import ctl
from tests.e2e import (
    Backend, Echo, Running, connect, free_port, in_thread, recv_exactly, start_client, wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "ctl-admin-token"


def run_ctl(argv, reactor, environ=None, http=None):
    """``main(argv)``: a Deferred of (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    d = ctl.main(argv, reactor, out, err, {} if environ is None else environ, http=http)
    return d.addCallback(lambda status: (status, out.getvalue(), err.getvalue()))


def frames(text):
    """The frames ``top`` drew, without its escape sequences."""
    for code in (ctl.CLEAR_SCREEN, ctl.CLEAR_LINE, ctl.CLEAR_BELOW):
        text = text.replace(code, "")
    return text.split(ctl.HOME)[1:]


def rows(text):
    """A table's lines as lists of cells."""
    return [line.split() for line in text.strip().splitlines()]


class Live(TestCase):
    """A live server with one client; ``ctl(...)`` runs portmapper-ctl against it."""

    timeout = 60
    extra = ()

    @inlineCallbacks
    def setUp(self):
        self.running = yield Running(self, self.mktemp(), extra=self.extra).start()
        self.server = self.running.server
        start_client(self, self.server.client_port)
        yield wait_for(lambda: len(self.server.registry.clients) == 1, what="the client")
        self.client_id = next(iter(self.server.registry.clients))
        self.target = Backend(Echo).listen(self)

    def ctl(self, *argv, environ=None):
        return run_ctl(["--admin", self.running.admin, *argv], reactor, environ)

    @inlineCallbacks
    def ok(self, *argv):
        """Run a command that must succeed; its stdout."""
        status, out, err = yield self.ctl(*argv)
        self.assertEqual((status, err), (0, ""), out)
        return out

    @inlineCallbacks
    def failing(self, *argv):
        """Run a command that must fail with status 1 and one line on stderr; that line."""
        status, out, err = yield self.ctl(*argv)
        self.assertEqual((status, out), (1, ""), err)
        self.assertEqual(len(err.splitlines()), 1, err)
        return err

    @inlineCallbacks
    def open_channel(self):
        """A mapping and a user connected through it, echo checked; (public port, channel id)."""
        public = yield self.running.map(self.target)
        user = yield in_thread(connect, public)
        self.addCleanup(user.close)
        user.sendall(b"ping")
        self.assertEqual((yield in_thread(recv_exactly, user, 4)), b"ping")
        channels = self.server.registry.channels
        yield wait_for(lambda: len(channels) == 1, what="the channel")
        return public, next(iter(channels))


class MappingCommandTests(Live):
    """map, mappings and unmap change and show the server's mappings."""

    @inlineCallbacks
    def test_map_then_mappings(self):
        """`map` creates a listening mapping; `mappings` shows it as a table and as the API's JSON."""
        public = free_port()
        out = yield self.ok("map", str(public), f"127.0.0.1:{self.target}", "--tag", "default")
        self.assertEqual(
            out, f"Port {public} now maps to 127.0.0.1:{self.target} through clients tagged default.\n")
        self.assertIn(public, self.server.registry.mappings)
        data = os.urandom(1000)
        user = yield in_thread(connect, public)
        self.addCleanup(user.close)
        user.sendall(data)
        self.assertEqual((yield in_thread(recv_exactly, user, len(data))), data)

        table = rows((yield self.ok("mappings")))
        self.assertEqual(table[0], ["PORT", "TARGET", "TAG", "POLICIES"])
        self.assertEqual(table[1], [str(public), f"127.0.0.1:{self.target}", "default"])
        _, expected = yield self.running.api("GET", "/port_mapper")
        self.assertEqual(json.loads((yield self.ok("mappings", "--json"))), expected)

    @inlineCallbacks
    def test_map_ipv6_target_and_json(self):
        """A bracketed IPv6 target reaches the server as the bare address; --json prints the answer."""
        public = free_port()
        out = yield self.ok("map", str(public), "[::1]:8080", "--tag", "office", "--json")
        self.assertEqual(json.loads(out), {
            "result": "success",
            "port_mapper": {str(public): {"ip": "::1", "port": 8080, "tag": "office"}}})
        mapping = self.server.registry.mappings[public]
        self.assertEqual((mapping.target_ip, mapping.tag), ("::1", "office"))
        self.assertIn("[::1]:8080", (yield self.ok("mappings")))

    @inlineCallbacks
    def test_map_with_policies_today(self):
        """Policy options pass through; a server that does not know them yet still maps."""
        public = free_port()
        yield self.ok("map", str(public), f"127.0.0.1:{self.target}", "--allow", "127.0.0.0/8",
                      "--max-channels", "3", "--rate-limit", "5", "--proxy-protocol", "v1")
        self.assertIn(public, self.server.registry.mappings)

    @inlineCallbacks
    def test_map_existing_port(self):
        """Mapping a port twice fails with status 1 and the API's reason."""
        public = yield self.running.map(self.target)
        err = yield self.failing("map", str(public), "127.0.0.1:1")
        self.assertEqual(err, f"portmapper-ctl: Create port mapper failed,port:{public} already exists\n")

    @inlineCallbacks
    def test_unmap(self):
        """`unmap` stops the mapping; unmapping an unknown port is a 404 reason and status 1."""
        public = yield self.running.map(self.target)
        self.assertEqual((yield self.ok("unmap", str(public))), f"Port {public} is no longer mapped.\n")
        self.assertNotIn(public, self.server.registry.mappings)
        self.assertEqual((yield self.running.api("GET", "/port_mapper"))[1], {})
        err = yield self.failing("unmap", str(public))
        self.assertEqual(err, f"portmapper-ctl: No port mapper on port {public}.\n")

    @inlineCallbacks
    def test_bad_arguments(self):
        """Bad ports and targets are argparse usage errors (status 2) naming the problem."""
        for argv, words in [
            (["map", "0", "127.0.0.1:80"], "'0' is not a port from 1 to 65535"),
            (["map", "5433", "127.0.0.1"], "'127.0.0.1' is not IP:PORT"),
            (["map", "5433", "::1:80"], "write an IPv6 target in brackets, as [::1]:80"),
            (["map", "5433", "127.0.0.1:http"], "'http' is not a port"),
            (["kick", "x"], "'x' is not a positive number"),
            (["history", "--limit", "0"], "'0' is not a positive number"),
            (["frobnicate"], "invalid choice: 'frobnicate'"),
            ([], "the following arguments are required: COMMAND"),
        ]:
            status, out, err = yield self.ctl(*argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertIn("usage: portmapper-ctl", err)
            self.assertIn(words, err)
        self.assertEqual(self.server.registry.mappings, {})


class ClientCommandTests(Live):
    """clients, kick and client-history."""

    @inlineCallbacks
    def test_clients(self):
        """`clients` lists the connected client as a table, and --json as the API answers."""
        table = rows((yield self.ok("clients")))
        self.assertEqual(table[0], ["CLIENT", "TAG", "ADDRESS", "STATE", "UP", "RECV", "MB/s",
                                    "SEND", "MB/s", "RECV", "MB", "SEND", "MB"])
        self.assertEqual(table[1][:4], [str(self.client_id), "default", table[1][2], "WORKING"])
        self.assertTrue(table[1][2].startswith("127.0.0.1:"), table[1])
        answer = json.loads((yield self.ok("clients", "--json")))
        self.assertEqual(list(answer), [str(self.client_id)])
        self.assertEqual(answer[str(self.client_id)]["tag"], "default")
        self.assertIn("recv_real_time_speed", answer[str(self.client_id)])

    @inlineCallbacks
    def test_kick_and_client_history(self):
        """`kick` drops the client's link; `client-history` then lists it, closed by admin."""
        out = yield self.ok("kick", str(self.client_id))
        self.assertEqual(out, f"Client {self.client_id} was disconnected.\n")
        self.assertNotIn(self.client_id, self.server.registry.clients)
        table = rows((yield self.ok("client-history")))
        self.assertEqual(table[0][:4], ["CLIENT", "TAG", "ADDRESS", "CLOSED"])
        self.assertEqual(table[1][:2], [str(self.client_id), "default"])
        self.assertEqual(table[1][-3:], ["closed", "by", "admin"])
        answer = json.loads((yield self.ok("client-history", "--client-id", str(self.client_id),
                                           "--json")))
        self.assertEqual([row["client_id"] for row in answer["history"]], [self.client_id])
        self.assertIsNone(answer["next_before"])

    @inlineCallbacks
    def test_kick_unknown(self):
        """Kicking an unknown client is status 1 with the API's 404 reason."""
        err = yield self.failing("kick", "999")
        self.assertEqual(err, "portmapper-ctl: No connected client with client_id 999.\n")
        self.assertIn(self.client_id, self.server.registry.clients)


class CredentialCommandTests(Live):
    """credentials issue, list and revoke."""

    @inlineCallbacks
    def test_issue_link_list_revoke(self):
        """`issue` prints a token once that links a client; `list` shows it without the token;
        `revoke` drops that client."""
        out = yield self.ok("credentials", "issue", "--tag", "office", "--name", "router 1")
        self.assertTrue(out.startswith("Credential 1 issued for tag office."), out)
        self.assertIn("Keep it secret", out)
        [token] = [word for word in out.split() if word.startswith("pmc_")]
        start_client(self, self.server.client_port, "--tag", "office", token=token)
        clients = self.server.registry.clients
        yield wait_for(lambda: len(clients) == 2, what="the client with the credential")
        [linked] = [c.client_id for c in clients.values() if c.credential_id == 1]

        out = yield self.ok("credentials", "list")
        table = rows(out)
        self.assertEqual(table[0], ["CREDENTIAL", "NAME", "TAG", "CREATED", "LAST", "USED",
                                    "CLIENTS"])
        self.assertEqual(table[1][:4] + table[1][-1:], ["1", "router", "1", "office", str(linked)])
        self.assertNotIn(token, out)
        answer = json.loads((yield self.ok("credentials", "list", "--json")))
        self.assertEqual(answer["1"]["client_ids"], [linked])

        out = yield self.ok("credentials", "revoke", "1")
        self.assertEqual(out, "Credential 1 is revoked; its clients were disconnected.\n")
        yield wait_for(lambda: linked not in clients, timeout=5, what="the client to be dropped")
        self.assertIn(self.client_id, clients)  # the shared token's client stays
        self.assertEqual(rows((yield self.ok("credentials", "list")))[1:], [["(none)"]])

    @inlineCallbacks
    def test_issue_json(self):
        """`issue --json` prints the API's answer, token included."""
        answer = json.loads((yield self.ok("credentials", "issue", "--tag", "lab", "--json")))
        self.assertEqual(answer["result"], "success")
        self.assertEqual((answer["credential"]["tag"], answer["credential"]["name"]), ("lab", None))
        self.assertTrue(answer["credential"]["token"].startswith("pmc_"))

    @inlineCallbacks
    def test_failures(self):
        """A bad tag and an unknown credential are status 1 with the API's reason; no tag is a usage error."""
        err = yield self.failing("credentials", "issue", "--tag", "no spaces")
        self.assertTrue(err.startswith("portmapper-ctl: Parameter 'tag' must be"), err)
        err = yield self.failing("credentials", "revoke", "9")
        self.assertEqual(err, "portmapper-ctl: No credential with credential_id 9"
                              " (or it is revoked already).\n")
        status, out, err = yield self.ctl("credentials", "issue")
        self.assertEqual(status, 2)
        self.assertIn("--tag", err)


class ChannelCommandTests(Live):
    """channels, close and history."""

    @inlineCallbacks
    def test_channels(self):
        """`channels` lists the open channel by port (table and JSON), `--port` filters."""
        public, channel_id = yield self.open_channel()
        other = yield self.running.map(self.target)
        table = rows((yield self.ok("channels")))
        self.assertEqual(table[0], ["PORT", "CHANNEL", "USER", "STATE"])
        self.assertEqual(table[1][:2], [str(public), str(channel_id)])
        self.assertEqual(table[1][3], "WORKING")
        self.assertEqual(len(table), 2)
        self.assertEqual(json.loads((yield self.ok("channels", "--json"))),
                         (yield self.running.api("GET", "/channel"))[1])
        self.assertEqual(json.loads((yield self.ok("channels", "--port", str(other), "--json"))),
                         {str(other): []})
        self.assertEqual(rows((yield self.ok("channels", "--port", str(other))))[1:], [["(none)"]])

    @inlineCallbacks
    def test_channels_unmapped_port(self):
        """`channels --port` on an unmapped port is status 1 with the API's 404 reason."""
        port = free_port()
        err = yield self.failing("channels", "--port", str(port))
        self.assertEqual(err, f"portmapper-ctl: No port mapper on port {port}.\n")

    @inlineCallbacks
    def test_close_and_history(self):
        """`close` ends the channel; `history` shows it closed by admin, filters and pages."""
        public, channel_id = yield self.open_channel()
        self.assertEqual((yield self.ok("close", str(channel_id))), f"Channel {channel_id} was closed.\n")
        self.assertNotIn(channel_id, self.server.registry.channels)
        table = rows((yield self.ok("history", "--port", str(public))))
        self.assertEqual(table[0], ["CHANNEL", "PORT", "USER", "CLIENT", "TARGET", "CLOSED", "TIME",
                                    "RECV", "MB", "SEND", "MB", "REASON"])
        self.assertEqual(table[1][:2], [str(channel_id), str(public)])
        self.assertEqual(table[1][3:5], [str(self.client_id), f"127.0.0.1:{self.target}"])
        self.assertEqual(table[1][-3:], ["closed", "by", "admin"])
        answer = json.loads((yield self.ok("history", "--client-id", str(self.client_id), "--json")))
        [row] = answer["history"]
        self.assertEqual((row["channel_id"], row["recv_bytes"], row["send_bytes"]), (channel_id, 4, 4))

    @inlineCallbacks
    def test_history_paging(self):
        """With more rows than --limit, `history` says which --before gives the next page."""
        ids = []
        for _ in range(2):
            _, channel_id = yield self.open_channel()
            yield self.ok("close", str(channel_id))
            ids.append(channel_id)
        out = yield self.ok("history", "--limit", "1")
        self.assertEqual(rows(out)[1][0], str(ids[1]))
        self.assertEqual(out.splitlines()[-1], f"More: add --before {ids[1]}.")
        out = yield self.ok("history", "--limit", "1", "--before", str(ids[1]))
        self.assertEqual(rows(out)[1][0], str(ids[0]))
        self.assertNotIn("More:", out)

    @inlineCallbacks
    def test_close_unknown(self):
        """Closing an unknown channel is status 1 with the API's 404 reason."""
        err = yield self.failing("close", "999")
        self.assertEqual(err, "portmapper-ctl: No open channel with channel_id 999.\n")


class TopTests(Live):
    """top draws live frames of clients and channels."""

    @inlineCallbacks
    def test_two_frames(self):
        """`top --count 2` draws two frames, each with the client and the channel and their speeds."""
        public, channel_id = yield self.open_channel()
        out = yield self.ok("top", "--count", "2", "--interval", "0.05")
        self.assertTrue(out.startswith(ctl.CLEAR_SCREEN + ctl.HOME))
        drawn = frames(out)
        self.assertEqual(len(drawn), 2)
        for frame in drawn:
            lines = frame.splitlines()
            self.assertTrue(lines[0].startswith(f"portmapper top: {self.running.admin} at "))
            self.assertIn("Clients: 1", lines)
            self.assertIn("Open channels: 1", lines)
            client = next(line.split() for line in lines if line.startswith(f"{self.client_id:>6}"))
            self.assertEqual(client[1:4], ["default", client[2], "WORKING"])
            channel = next(line.split() for line in lines
                           if line.split()[:2] == [str(channel_id), str(public)])
            self.assertEqual(channel[4:6], [f"127.0.0.1:{self.target}", "WORKING"])
            self.assertEqual(len(channel), 11, channel)  # ... UP, two speeds, two totals

    @inlineCallbacks
    def test_json_frames(self):
        """`top --json` prints one JSON object per refresh with the channel's details."""
        _, channel_id = yield self.open_channel()
        out = yield self.ok("top", "--count", "2", "--interval", "0.05", "--json")
        snapshots = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(len(snapshots), 2)
        self.assertEqual(list(snapshots[1]["client_connection"]), [str(self.client_id)])
        self.assertEqual(snapshots[1]["channel_detail"][str(channel_id)]["recv_bytes"], 4)

    @inlineCallbacks
    def test_rows_bound_details(self):
        """`--rows 1` asks for the newest channel's details only and says how many are open."""
        _, older = yield self.open_channel()
        public = yield self.running.map(self.target)
        user = yield in_thread(connect, public)
        self.addCleanup(user.close)
        channels = self.server.registry.channels
        yield wait_for(lambda: len(channels) == 2, what="the second channel")
        newer = max(channels)
        [frame] = frames((yield self.ok("top", "--count", "1", "--rows", "1")))
        self.assertIn("Open channels: 2 (the 1 newest shown)", frame)
        self.assertIn(f"\n{newer:>7}  {public}", frame)
        self.assertNotIn(f"\n{older:>7}  ", frame)

    @inlineCallbacks
    def test_server_goes_away(self):
        """Once running, `top` shows a server that went away in its frame and keeps refreshing."""
        out = io.StringIO()
        d = ctl.main(["--admin", self.running.admin, "top", "--count", "3", "--interval", "0.05"],
                     reactor, out, io.StringIO(), {})
        yield wait_for(lambda: len(frames(out.getvalue())) >= 1, what="the first frame")
        # Stopping the server drops its admin port and its open admin connections.
        yield self.running.stop()
        self.assertEqual((yield d), 0)
        drawn = frames(out.getvalue())
        self.assertEqual(len(drawn), 3)
        self.assertIn("Clients: 1", drawn[0])
        self.assertTrue(drawn[2].startswith(f"Cannot reach the admin API at {self.running.admin}: "),
                        drawn[2])
        self.assertTrue(drawn[2].endswith(". Retrying.\n"), drawn[2])


class ReachTests(Live):
    """Where the admin API is and how the token is given."""

    extra = ("--admin-token", ADMIN_TOKEN)

    @inlineCallbacks
    def test_bad_token(self):
        """A missing or wrong admin token is status 1 with the API's reason and where to give it."""
        for argv in ([], ["--admin-token", "wrong"]):
            err = yield self.failing(*argv, "clients")
            self.assertEqual(
                err, "portmapper-ctl: This request needs the header 'Authorization: Bearer "
                     "<admin token>' (give it with --admin-token or $PORTMAPPER_ADMIN_TOKEN).\n")

    @inlineCallbacks
    def test_token_option(self):
        """With --admin-token the commands work."""
        out = yield self.ok("--admin-token", ADMIN_TOKEN, "clients")
        self.assertEqual(rows(out)[1][0], str(self.client_id))

    @inlineCallbacks
    def test_environment(self):
        """PORTMAPPER_ADMIN and PORTMAPPER_ADMIN_TOKEN stand in for --admin and --admin-token."""
        status, out, err = yield run_ctl(["clients", "--json"], reactor, environ={
            "PORTMAPPER_ADMIN": self.running.admin, "PORTMAPPER_ADMIN_TOKEN": ADMIN_TOKEN})
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(list(json.loads(out)), [str(self.client_id)])
        # The options win over the environment.
        status, out, err = yield run_ctl(
            ["--admin", self.running.admin, "--admin-token", ADMIN_TOKEN, "clients"], reactor,
            environ={"PORTMAPPER_ADMIN": "http://127.0.0.1:1", "PORTMAPPER_ADMIN_TOKEN": "wrong"})
        self.assertEqual((status, err), (0, ""))

    @inlineCallbacks
    def test_unreachable(self):
        """No server at --admin: status 1 and a sentence naming the URL, for a command and for top."""
        url = f"http://127.0.0.1:{free_port()}"
        for command in (["mappings"], ["top", "--count", "2"]):
            status, out, err = yield run_ctl(["--admin", url, *command], reactor)
            self.assertEqual((status, err), (
                1, f"portmapper-ctl: Cannot reach the admin API at {url}: connection refused.\n"))

    @inlineCallbacks
    def test_no_answer(self):
        """A server that never answers: status 1 once --timeout has passed, saying so."""
        silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        url = f"http://127.0.0.1:{silent.getHost().port}"
        status, out, err = yield run_ctl(["--admin", url, "--timeout", "0.2", "clients"], reactor)
        self.assertEqual((status, err), (
            1, f"portmapper-ctl: Cannot reach the admin API at {url}: no answer within 0.2 seconds.\n"))

    @inlineCallbacks
    def test_not_the_admin_api(self):
        """--admin without a scheme is a usage error; a non-JSON answer is status 1 in one sentence."""
        status, out, err = yield run_ctl(["--admin", "127.0.0.1:8080", "clients"], reactor)
        self.assertEqual(status, 2)
        self.assertIn("--admin '127.0.0.1:8080' is not an http:// or https:// URL", err)

        answer = StubTreq(_Answer(b"<html>hello</html>"))
        status, out, err = yield run_ctl(["--admin", "http://x", "clients"], Clock(), http=answer)
        self.assertEqual((status, err), (
            1, "portmapper-ctl: The server at http://x answered HTTP 200 with something other "
               "than JSON; is that the admin API's address?\n"))


# -- without a live server -----------------------------------------------------------

class _Answer(Resource):
    """Answers every request with ``body``; records each request's method, path and arguments."""

    isLeaf = True

    def __init__(self, body):
        super().__init__()
        self.body = body
        self.requests = []

    def render(self, request):
        self.requests.append((request.method, request.path, request.args))
        return self.body


class PolicyPassThroughTests(SynchronousTestCase):
    """The mapping policy options reach the API as query parameters of the same names."""

    def test_policies_sent(self):
        """--allow, --proxy-protocol, --max-channels, --rate-limit become allow, proxy_protocol, ..."""
        api = _Answer(b'{"result": "success"}')
        status, out, err = self.successResultOf(run_ctl(
            ["--admin", "http://admin", "map", "5433", "10.0.0.7:22", "--allow", "10.0.0.0/8,::1/128",
             "--proxy-protocol", "v2", "--max-channels", "5", "--rate-limit", "20"],
            Clock(), http=StubTreq(api)))
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(api.requests, [(b"POST", b"/port_mapper", {
            b"port": [b"5433"], b"mapper_ip": [b"10.0.0.7"], b"mapper_port": [b"22"],
            b"allow": [b"10.0.0.0/8,::1/128"], b"proxy_protocol": [b"v2"],
            b"max_channels": [b"5"], b"rate_limit": [b"20"]})])

    def test_unset_policies_not_sent(self):
        """Without policy options (and --tag) the request carries only the mapping's parameters."""
        api = _Answer(b'{"result": "success"}')
        self.successResultOf(run_ctl(["map", "5433", "[fe80::1]:22"], Clock(), http=StubTreq(api)))
        self.assertEqual(api.requests[0][2], {
            b"port": [b"5433"], b"mapper_ip": [b"fe80::1"], b"mapper_port": [b"22"]})


class _Response:
    def __init__(self, body, code=200):
        self.code = code
        self._body = json.dumps(body).encode("utf-8")

    def content(self):
        return succeed(self._body)


class _HeldHTTP:
    """An HTTP client whose requests wait until the test answers them."""

    def __init__(self):
        self.requests = []  # (url, params, Deferred)

    def request(self, method, url, params, **ignored):
        d = Deferred()
        self.requests.append((url, params, d))
        return d

    def answer(self, body):
        """Answer the oldest request still waiting."""
        url, params, d = next(r for r in self.requests if not r[2].called)
        d.callback(_Response(body))


class TopPacingTests(SynchronousTestCase):
    """top never has two refreshes in flight, and refreshes at its interval."""

    def test_slow_server_is_not_piled_on(self):
        """While a refresh waits for answers, time passes and no new request is made."""
        clock, http = Clock(), _HeldHTTP()
        d = run_ctl(["top", "--count", "2", "--interval", "1"], clock, http=http)
        self.assertEqual(len(http.requests), 1)
        clock.advance(30)  # the server is slow
        self.assertEqual(len(http.requests), 1)
        http.answer({})
        http.answer({})  # the channel listing: no channels, so the frame is drawn
        self.assertEqual(len(http.requests), 2)
        # The refresh took 30 s, longer than the interval: the next starts at once.
        clock.advance(0)
        self.assertEqual(len(http.requests), 3)
        http.answer({})
        http.answer({})
        status, out, err = self.successResultOf(d)
        self.assertEqual((status, len(frames(out))), (0, 2))

    def test_interval(self):
        """A quick refresh is followed by the next one an interval after it began."""
        clock, http = Clock(), _HeldHTTP()
        d = run_ctl(["top", "--count", "2", "--interval", "1"], clock, http=http)
        clock.advance(0.25)
        http.answer({})
        http.answer({})
        clock.advance(0.7)
        self.assertEqual(len(http.requests), 2)
        clock.advance(0.05)
        self.assertEqual(len(http.requests), 3)
        self.assertNoResult(d)

    def test_channel_closed_between_listing_and_detail(self):
        """A channel gone before its details come (404) is left out of the frame."""
        clock, http = Clock(), _HeldHTTP()
        d = run_ctl(["top", "--count", "1"], clock, http=http)
        http.answer({})
        http.answer({"5433": [{"channel_id": 7, "ip": "127.0.0.1", "port": 5, "state": "WORKING"}]})
        url, params, detail = http.requests[2]
        self.assertEqual(params, {"channel_id": "7"})
        detail.callback(_Response({"result": "failed", "reason": "No open channel."}, 404))
        status, out, err = self.successResultOf(d)
        self.assertEqual(status, 0)
        self.assertIn("Open channels: 1 (the 0 newest shown)", frames(out)[0])


class FormatTests(SynchronousTestCase):
    """How numbers and tables look."""

    def test_mb(self):
        """MB keep three decimals below 10, one below 1000, none above; tiny amounts say so."""
        self.assertEqual(
            [ctl._mb(v) for v in (0, 0.0004, 0.0035, 1.23456, 12.345, 999.94, 1234.5)],
            ["0", "<0.001", "0.004", "1.235", "12.3", "999.9", "1234"])

    def test_duration(self):
        """Durations read as seconds, minutes, hours or days, two units at most."""
        self.assertEqual([ctl._duration(s) for s in (0, 59, 61, 3600 + 120, 2 * 86400 + 3 * 3600)],
                         ["0s", "59s", "1m01s", "1h02m", "2d03h"])

    def test_table(self):
        """Columns are aligned, numbers to the right; an empty table says so."""
        columns = [("ID", lambda r: r[0]), ("NAME", lambda r: r[1]), ("MB", lambda r: r[2])]
        self.assertEqual(ctl.table(columns, [(1, "a", "0.5"), (12, "bbb", "<0.001")]),
                         "ID  NAME      MB\n"
                         " 1  a        0.5\n"
                         "12  bbb   <0.001")
        self.assertEqual(ctl.table(columns, []), "ID  NAME  MB\n(none)")


# -- as a program ---------------------------------------------------------------------

def _program(*args, script=None):
    """Run portmapper-ctl as a program (the installed script if given, else `python -m`)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    env.pop(ctl.ENV_ADMIN, None)
    env.pop(ctl.ENV_TOKEN, None)
    command = [str(script)] if script else [sys.executable, "-m", "portmapper.ctl"]
    return subprocess.run(command + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120, env=env)


class ProgramTests(TestCase):
    """portmapper-ctl as a process: the console script and its exit statuses."""

    timeout = 240

    def test_console_script(self):
        """pyproject.toml names ctl.run as portmapper-ctl, and the program prints its help."""
        text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        self.assertIn('[project.scripts]\nportmapper-ctl = "portmapper.ctl:run"\n', text)
        # In an environment where the project is installed (CI), the script itself.
        script = Path(sys.executable).parent / "portmapper-ctl"
        result = _program("--help", script=script if script.exists() else None)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("usage: portmapper-ctl", result.stdout)
        for command in ("mappings", "map", "unmap", "clients", "kick", "channels", "close",
                        "history", "client-history", "top"):
            self.assertIn(f"    {command} ", result.stdout)

    def test_exit_status_unreachable(self):
        """As a program, an unreachable server exits 1 with its one sentence and no traceback."""
        url = f"http://127.0.0.1:{free_port()}"
        result = _program("--admin", url, "mappings")
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertEqual(result.stderr,
                         f"portmapper-ctl: Cannot reach the admin API at {url}: connection refused.\n")

    @inlineCallbacks
    def test_program_against_live_server(self):
        """As a program against a live server, `map --json` succeeds (status 0) and maps the port."""
        running = yield Running(self, self.mktemp()).start()
        public = free_port()
        result = yield in_thread(_program, "--admin", running.admin, "map", str(public),
                                 "127.0.0.1:9", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["result"], "success")
        self.assertIn(public, running.server.registry.mappings)


class PolicyCommandTests(Live):
    """map passes every policy; patch changes a mapping live."""

    @inlineCallbacks
    def test_map_and_patch(self):
        """`map --balance` sets it; `patch` changes the target and policies, an empty value removes one."""
        public = free_port()
        yield self.ok("map", str(public), f"127.0.0.1:{self.target}", "--balance", "least_channels",
                      "--max-channels", "3")
        self.assertEqual(self.server.registry.mappings[public].balance, "least_channels")
        out = yield self.ok("patch", str(public), "--target", "127.0.0.1:9", "--rate-limit", "5",
                            "--max-channels", "")
        self.assertEqual(out, f"Port {public} now maps to 127.0.0.1:9 through clients tagged default;"
                              " rate_limit=5.0 balance=least_channels.\n")
        mapping = self.server.registry.mappings[public]
        self.assertEqual((mapping.target_port, mapping.max_channels, mapping.rate_limit), (9, None, 5.0))
        err = yield self.failing("patch", str(free_port()), "--rate-limit", "5")
        self.assertIn("No port mapper on port", err)
