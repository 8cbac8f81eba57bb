"""
``portmapper-ctl``: the admin JSON API from a terminal, on treq.

::

    portmapper-ctl [--admin URL] [--admin-token T] COMMAND [options] [--json]

Each command is one function ``(api, args, out) -> Deferred`` and one
subparser in :func:`_add_commands` whose defaults name that function; to add
a command, add both.  Commands print a table (or a sentence, for writes)
for people and, with ``--json``, the API's JSON answer as it came.

:func:`main` runs a command on the reactor it is given and fires with the
exit status: 0, 1 after one sentence on stderr (the server cannot be
reached, or the API refused: its ``reason``), 2 for bad arguments
(argparse's usage error).  :func:`run` is the console script.
"""

import argparse
import contextlib
import json
import os
import sys
import time

from twisted.internet.defer import (
    CancelledError, DeferredSemaphore, FirstError, gatherResults, inlineCallbacks, maybeDeferred,
)
from twisted.internet.error import (
    ConnectError, ConnectionAborted, ConnectionRefusedError, DNSLookupError, TimeoutError,
)
from twisted.internet.task import deferLater, react
from twisted.web.client import (
    Agent, HTTPConnectionPool, RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived,
)
from treq.client import HTTPClient

DEFAULT_ADMIN = "http://127.0.0.1:8080"
ENV_ADMIN = "PORTMAPPER_ADMIN"
ENV_TOKEN = "PORTMAPPER_ADMIN_TOKEN"
DEFAULT_TIMEOUT = 10.0

# Mapping policies: passed through to POST /port_mapper as query parameters
# of the same names.  A policy the server learns is one more line here.
POLICIES = [
    ("allow", "comma-separated CIDRs of user addresses allowed"),
    ("proxy_protocol", "v1 or v2: send a PROXY protocol header to the target"),
    ("max_channels", "open channels allowed at once on the port"),
    ("rate_limit", "MB/s per direction for the whole mapping"),
    ("balance", "round_robin (default) or least_channels: which client takes a channel"),
]

# top: the screen is redrawn from its top-left corner, each line cleared to
# its end, then everything below the frame cleared (no flicker, no curses).
HOME, CLEAR_LINE, CLEAR_BELOW, CLEAR_SCREEN = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[2J"
TOP_CONCURRENCY = 4  # channel detail requests in flight at once


class CtlError(Exception):
    """A failure to show the user as one sentence (exit status 1)."""

    def __init__(self, sentence, status=None):
        super().__init__(sentence)
        self.status = status  # the HTTP status, when the API answered


# -- the admin API over treq ----------------------------------------------------

class AdminClient:
    """Calls to the admin API at ``url``; each answer is its decoded JSON, or a CtlError."""

    def __init__(self, http, reactor, url, token=None, timeout=DEFAULT_TIMEOUT):
        self._http = http
        self.reactor = reactor
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout

    @inlineCallbacks
    def call(self, method, path, **params):
        """``method path?params`` (None values left out); the JSON answer of a 200."""
        params = {name: str(value) for name, value in params.items() if value is not None}
        try:
            response = yield self._http.request(
                method, self.url + path, params=params, headers=self._headers,
                reactor=self.reactor, timeout=self._timeout)
            body = yield response.content()
        except (ConnectError, DNSLookupError, CancelledError, TimeoutError,
                ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed) as e:
            raise CtlError(f"Cannot reach the admin API at {self.url}: {self._why(e)}.") from None
        try:
            answer = json.loads(body)
        except ValueError:
            raise CtlError(
                f"The server at {self.url} answered HTTP {response.code} with something "
                "other than JSON; is that the admin API's address?", response.code) from None
        failed = isinstance(answer, dict) and answer.get("result") == "failed"
        if response.code != 200 or failed:
            reason = answer.get("reason") if isinstance(answer, dict) else None
            reason = str(reason or f"The admin API answered HTTP {response.code}.")
            if response.code == 401:
                reason = f"{reason.rstrip('.')} (give it with --admin-token or ${ENV_TOKEN})."
            raise CtlError(reason, response.code)
        return answer

    def _why(self, error):
        """What went wrong on the way, in words; treq's timeout cancels the request."""
        causes = [f.value for f in getattr(error, "reasons", ())] or [error]
        if any(isinstance(c, (CancelledError, TimeoutError, ConnectionAborted)) for c in causes):
            return f"no answer within {self._timeout:g} seconds"
        if isinstance(error, DNSLookupError):
            return "its host name does not resolve"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, ConnectError):
            return str(error).rstrip(".")
        return f"the connection failed before an answer came ({str(causes[0]).rstrip('.')})"

    def get(self, path, **params):
        return self.call("GET", path, **params)


# -- formatting -------------------------------------------------------------------

def _mb(value):
    """MB or MB/s for people: three decimals below 10, one below 1000, none above."""
    if value == 0:
        return "0"
    if value < 0.001:
        return "<0.001"
    return f"{value:.{3 if value < 10 else 1 if value < 1000 else 0}f}"


def _duration(seconds):
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _address(ip, port):
    return f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"


def _is_number(cell):
    return cell.lstrip("<").replace(".", "", 1).isdigit()


def table(columns, rows):
    """``rows`` as aligned lines under the ``columns`` [(title, row -> text)]
    titles; columns of numbers are right-aligned."""
    cells = [[title for title, _ in columns]]
    cells += [[str(cell(row)) for _, cell in columns] for row in rows]
    lines = []
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    right = [len(cells) > 1 and all(_is_number(line[i]) for line in cells[1:])
             for i in range(len(columns))]
    for line in cells:
        lines.append("  ".join(
            cell.rjust(width) if r else cell.ljust(width)
            for cell, width, r in zip(line, widths, right)).rstrip())
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def _field(name, format=str):
    return lambda row: format(row[name])


TOTALS = [("RECV MB", _field("recv_flow_statistics", _mb)),
          ("SEND MB", _field("send_flow_statistics", _mb))]
SPEEDS = [("RECV MB/s", _field("recv_real_time_speed", _mb)),
          ("SEND MB/s", _field("send_real_time_speed", _mb))]
CLIENT_COLUMNS = [
    ("CLIENT", _field("client_id")), ("TAG", _field("tag")),
    ("ADDRESS", lambda r: _address(r["ip"], r["port"])), ("STATE", _field("state")),
    ("UP", _field("duration_time", _duration)), *SPEEDS, *TOTALS,
]
CHANNEL_COLUMNS = [
    ("CHANNEL", _field("channel_id")), ("PORT", _field("public_port")),
    ("USER", lambda r: _address(r["ip"], r["port"])), ("CLIENT", _field("client_id")),
    ("TARGET", lambda r: _address(r["target_ip"], r["target_port"])),
    ("STATE", _field("state")), ("UP", _field("duration_time", _duration)), *SPEEDS, *TOTALS,
]
CLOSED = [("CLOSED", _field("close_time")), ("TIME", _field("duration_time", _duration)),
          *TOTALS, ("REASON", _field("close_reason"))]


def _keyed(answer, key):
    """``{"1": {...}}`` as rows carrying their key as ``key``."""
    return [{key: int(k), **value} for k, value in answer.items()]


class Output:
    """Where a command writes: tables and sentences, or the API's JSON with ``--json``."""

    def __init__(self, stream, as_json):
        self.stream = stream
        self.as_json = as_json

    def write(self, text):
        self.stream.write(text)
        self.stream.flush()

    def show(self, answer, render):
        """Print ``answer`` as JSON, or ``render(answer)`` for people."""
        self.write((json.dumps(answer, indent=2) if self.as_json else render(answer)) + "\n")


# -- commands: (api, args, out) -> Deferred ----------------------------------------

def _policies(mapping):
    """A mapping's other keys (its policies, once the server has them) as ``key=value``."""
    return " ".join(f"{key}={value}" for key, value in mapping.items()
                    if key not in ("public_port", "ip", "port", "tag"))


def cmd_mappings(api, args, out):
    def render(answer):
        return table([("PORT", _field("public_port")),
                      ("TARGET", lambda r: _address(r["ip"], r["port"])),
                      ("TAG", _field("tag")), ("POLICIES", _policies)],
                     _keyed(answer, "public_port"))
    return api.get("/port_mapper").addCallback(out.show, render)


def cmd_map(api, args, out):
    ip, port = args.target
    policies = {name: getattr(args, name) for name, _ in POLICIES}
    d = api.call("POST", "/port_mapper", port=args.port, mapper_ip=ip, mapper_port=port,
                 mapper_tag=args.tag, **policies)
    return d.addCallback(out.show, lambda _: (
        f"Port {args.port} now maps to {_address(ip, port)} through clients tagged "
        f"{args.tag or 'default'}."))


def cmd_patch(api, args, out):
    ip, port = args.target or (None, None)
    policies = {name: getattr(args, name) for name, _ in POLICIES}
    d = api.call("PATCH", "/port_mapper", port=args.port, mapper_ip=ip, mapper_port=port,
                 mapper_tag=args.tag, **policies)

    def render(answer):
        mapping = answer["port_mapper"][str(args.port)]
        policies = _policies(mapping)
        return (f"Port {args.port} now maps to {_address(mapping['ip'], mapping['port'])} through"
                f" clients tagged {mapping['tag']}{'; ' + policies if policies else ''}.")
    return d.addCallback(out.show, render)


def cmd_unmap(api, args, out):
    d = api.call("DELETE", "/port_mapper", port=args.port)
    return d.addCallback(out.show, lambda _: f"Port {args.port} is no longer mapped.")


def _scope(args):
    """The ``scope`` parameter of a live view: the whole cluster's with ``--cluster``."""
    return "cluster" if args.cluster else None


def cmd_nodes(api, args, out):
    def render(answer):
        return table([
            ("NODE", lambda r: r["name"] + (" *" if r["name"] == answer["name"] else "")),
            ("VERSION", _field("version")), ("ADMIN", _field("admin_url")),
            ("CLIENT PORT", _field("client_port")),
            ("HEARTBEAT", lambda r: "-" if r["heartbeat_age"] is None else f"{r['heartbeat_age']:.1f}s"),
            ("ALIVE", lambda r: "yes" if r["alive"] else "NO"),
            ("CLIENTS", _field("clients")), ("CHANNELS", _field("channels")),
            ("STARTED", _field("started_time")),
        ], answer["nodes"])
    return api.get("/node").addCallback(out.show, render)


def cmd_clients(api, args, out):
    d = api.get("/client_connection", scope=_scope(args))
    return d.addCallback(out.show, lambda answer: table(CLIENT_COLUMNS, _keyed(answer, "client_id")))


def cmd_kick(api, args, out):
    d = api.call("DELETE", "/client_connection", client_id=args.client_id)
    return d.addCallback(out.show, lambda _: f"Client {args.client_id} was disconnected.")


def cmd_channels(api, args, out):
    def render(answer):
        rows = [{"public_port": port, **channel}
                for port, channels in answer.items() for channel in channels]
        return table([("PORT", _field("public_port")), ("CHANNEL", _field("channel_id")),
                      ("USER", lambda r: _address(r["ip"], r["port"])),
                      ("STATE", _field("state"))], rows)
    return api.get("/channel", port=args.port, scope=_scope(args)).addCallback(out.show, render)


def cmd_close(api, args, out):
    d = api.call("DELETE", "/channel", channel_id=args.channel_id)
    return d.addCallback(out.show, lambda _: f"Channel {args.channel_id} was closed.")


def _history_page(columns):
    def render(answer):
        text = table(columns, answer["history"])
        if answer.get("next_before") is not None:
            text += f"\nMore: add --before {answer['next_before']}."
        return text
    return render


def cmd_history(api, args, out):
    d = api.get("/channel_history", port=args.port, client_id=args.client_id,
                limit=args.limit, before=args.before)
    return d.addCallback(out.show, _history_page([
        ("CHANNEL", _field("channel_id")), ("PORT", _field("port")),
        ("USER", lambda r: _address(r["ip"], r["user_port"])), ("CLIENT", _field("client_id")),
        ("TARGET", lambda r: _address(r["target_ip"], r["target_port"])), *CLOSED]))


def cmd_client_history(api, args, out):
    d = api.get("/client_history", client_id=args.client_id, limit=args.limit, before=args.before)
    return d.addCallback(out.show, _history_page([
        ("CLIENT", _field("client_id")), ("TAG", _field("tag")),
        ("ADDRESS", lambda r: _address(r["ip"], r["port"])), *CLOSED]))


# -- credentials ------------------------------------------------------------------------

def cmd_credential_issue(api, args, out):
    def render(answer):
        c = answer["credential"]
        return "\n".join([
            f"Credential {c['credential_id']} issued for tag {c['tag']}. Its token, shown this once:",
            "",
            f"    {c['token']}",
            "",
            "Keep it secret: give it to that one client (portmapper-client --token ...) and store",
            "it nowhere else. The server keeps no copy; if it is lost, issue another and revoke",
            "this one."])
    d = api.call("POST", "/credential", tag=args.tag, name=args.name)
    return d.addCallback(out.show, render)


def cmd_credential_list(api, args, out):
    def render(answer):
        return table([("CREDENTIAL", _field("credential_id")), ("NAME", _field("name", _or_dash)),
                      ("TAG", _field("tag")), ("CREATED", _field("created_time")),
                      ("LAST USED", _field("last_used_time", _or_dash)),
                      ("CLIENTS", lambda r: ",".join(map(str, r["client_ids"])) or "-")],
                     _keyed(answer, "credential_id"))
    return api.get("/credential").addCallback(out.show, render)


def cmd_credential_revoke(api, args, out):
    d = api.call("DELETE", "/credential", credential_id=args.credential_id)
    return d.addCallback(out.show, lambda _: (
        f"Credential {args.credential_id} is revoked; its clients were disconnected."))


def _or_dash(value):
    return "-" if value is None else str(value)


# -- top ------------------------------------------------------------------------------

@inlineCallbacks
def _snapshot(api, rows):
    """Clients, open channels, and details of the ``rows`` newest channels."""
    clients = yield api.get("/client_connection")
    channels = yield api.get("/channel")
    ids = sorted((c["channel_id"] for listed in channels.values() for c in listed), reverse=True)
    limit = DeferredSemaphore(TOP_CONCURRENCY)

    def detail(channel_id):
        d = limit.run(api.get, "/channel", channel_id=channel_id)
        return d.addErrback(_gone)  # closed since the listing

    try:
        details = yield gatherResults([detail(i) for i in ids[:rows]], consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()
    merged = {}
    for answer in details:
        merged.update(answer or {})
    return {"client_connection": clients, "channel": channels, "channel_detail": merged,
            "open_channels": len(ids)}


def _gone(failure):
    failure.trap(CtlError)
    if failure.value.status != 404:
        return failure
    return None


def _frame(api, snapshot, now):
    clients = _keyed(snapshot["client_connection"], "client_id")
    channels = sorted(snapshot["channel_detail"].values(), key=lambda c: -c["channel_id"])
    total = snapshot["open_channels"]
    shown = f" (the {len(channels)} newest shown)" if total > len(channels) else ""
    return "\n".join([
        f"portmapper top: {api.url} at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}"
        "  (Ctrl-C quits)",
        "",
        f"Clients: {len(clients)}",
        table(CLIENT_COLUMNS, clients),
        "",
        f"Open channels: {total}{shown}",
        table(CHANNEL_COLUMNS, channels),
    ])


@inlineCallbacks
def cmd_top(api, args, out):
    """Redraw clients and channels every ``--interval`` seconds; the next
    refresh starts only after the last one's answers are in, so a slow
    server is never asked twice at once.  A failure on the first refresh
    ends the command; later ones are shown and retried."""
    reactor, frames = api.reactor, 0
    if not out.as_json:
        out.write(CLEAR_SCREEN)
    while args.count is None or frames < args.count:
        started = reactor.seconds()
        try:
            snapshot = yield _snapshot(api, args.rows)
        except CtlError as e:
            if not frames:
                raise
            text, snapshot = f"{e} Retrying.", {"error": str(e)}
        else:
            text = _frame(api, snapshot, started)
        frames += 1
        if out.as_json:
            out.write(json.dumps(snapshot) + "\n")
        else:
            out.write(HOME + "".join(line + CLEAR_LINE + "\n" for line in text.split("\n"))
                      + CLEAR_BELOW)
        if args.count is None or frames < args.count:
            wait = max(0.0, args.interval - (reactor.seconds() - started))
            yield deferLater(reactor, wait, lambda: None)


# -- arguments ------------------------------------------------------------------------

def _port(text):
    if not (text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 1 to 65535")
    return int(text)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
        return value
    return parse


def _target(text):
    """``IP:PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` as (host, port)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write an IPv6 target in brackets, as [{host}]:{port}")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not IP:PORT")
    return host, _port(port)


def _add_commands(commands, common):
    """One subparser per command; ``run`` names its function."""

    def command(name, function, help):
        parser = commands.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(run=function)
        return parser

    command("mappings", cmd_mappings, "List the port mappings.")

    p = command("map", cmd_map, "Map a public port to a target the clients can reach.")
    p.add_argument("port", type=_port, help="public port on the server")
    p.add_argument("target", type=_target, metavar="IP:PORT",
                   help="target address as the client sees it ([::1]:80 for IPv6)")
    p.add_argument("--tag", help="clients that carry it (default: default)")
    for name, help in POLICIES:
        p.add_argument("--" + name.replace("_", "-"), dest=name, metavar="VALUE", help=help)

    p = command("patch", cmd_patch, "Change a mapping live: its target, tag or policies"
                " (an empty value removes a policy); open channels stay.")
    p.add_argument("port", type=_port, help="public port on the server")
    p.add_argument("--target", type=_target, metavar="IP:PORT", help="a new target")
    p.add_argument("--tag", help="a new tag")
    for name, help in POLICIES:
        p.add_argument("--" + name.replace("_", "-"), dest=name, metavar="VALUE", help=help)

    p = command("unmap", cmd_unmap, "Stop listening on a public port and close its channels.")
    p.add_argument("port", type=_port)

    command("nodes", cmd_nodes, "List the nodes of the cluster (* marks the one asked).")

    cluster = "every live node's, not only the one asked"
    command("clients", cmd_clients, "List the connected clients.").add_argument(
        "--cluster", action="store_true", help=cluster)

    p = command("kick", cmd_kick, "Disconnect a client now (it closes its channels).")
    p.add_argument("client_id", type=_positive(int), metavar="CLIENT_ID")

    p = command("channels", cmd_channels, "List the open channels by public port.")
    p.add_argument("--port", type=_port, help="only this public port")
    p.add_argument("--cluster", action="store_true", help=cluster)

    p = command("close", cmd_close, "Close an open channel now.")
    p.add_argument("channel_id", type=_positive(int), metavar="CHANNEL_ID")

    def paging(parser):
        parser.add_argument("--client-id", type=_positive(int), help="only this client's")
        parser.add_argument("--limit", type=_positive(int), help="at most this many (default 100)")
        parser.add_argument("--before", type=_positive(int), help="only older than this id")

    p = command("history", cmd_history, "List closed channels, newest first.")
    p.add_argument("--port", type=_port, help="only this public port's")
    paging(p)

    paging(command("client-history", cmd_client_history,
                   "List disconnected clients, newest first."))

    credentials = commands.add_parser(
        "credentials", help="Issue, list and revoke per-client credentials.",
        description="Issue, list and revoke per-client credentials.").add_subparsers(
        title="credential commands", metavar="COMMAND", dest="credential_command")
    credentials.required = True

    def credential_command(name, function, help):
        parser = credentials.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(run=function)
        return parser

    p = credential_command("issue", cmd_credential_issue,
                           "Issue a credential for clients tagged TAG; prints its token once.")
    p.add_argument("--tag", required=True, help="the one tag the credential's client may announce")
    p.add_argument("--name", help="a name to tell it by (router-1, say)")
    credential_command("list", cmd_credential_list, "List the credentials (never their tokens).")
    p = credential_command("revoke", cmd_credential_revoke,
                           "Revoke a credential: its clients are dropped and refused from now on.")
    p.add_argument("credential_id", type=_positive(int), metavar="CREDENTIAL_ID")

    p = command("top", cmd_top, "Show clients and channels with their speeds, live.")
    p.add_argument("--interval", type=_positive(float), default=1.0,
                   help="seconds between refreshes (default 1)")
    p.add_argument("--count", type=_positive(int), help="stop after this many refreshes")
    # With --json: one line of JSON per refresh, {"client_connection", "channel",
    # "channel_detail", "open_channels"}, or {"error"} when a refresh failed.
    p.add_argument("--rows", type=_positive(int), default=20,
                   help="channels shown, newest first (default 20)")


def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")
    parser = argparse.ArgumentParser(
        prog="portmapper-ctl",
        description="Drive a portmapper server through its admin API.",
        epilog=f"--admin and --admin-token default to ${ENV_ADMIN} and ${ENV_TOKEN}.")
    parser.add_argument("--admin", metavar="URL",
                        help=f"the admin API's address (default {DEFAULT_ADMIN})")
    parser.add_argument("--admin-token", metavar="T", help="the server's --admin-token")
    parser.add_argument("--timeout", type=_positive(float), default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT:g})")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    commands.required = True
    _add_commands(commands, common)
    return parser


def _parse(argv, out, err, environ):
    """The parsed arguments, or the exit status argparse chose (help, usage error)."""
    parser = _parser()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            return e.code
        args.admin = args.admin or environ.get(ENV_ADMIN) or DEFAULT_ADMIN
        args.admin_token = args.admin_token or environ.get(ENV_TOKEN) or None
        if not args.admin.startswith(("http://", "https://")):
            try:
                parser.error(f"--admin {args.admin!r} is not an http:// or https:// URL")
            except SystemExit as e:
                return e.code
    return args


# -- entry points ---------------------------------------------------------------------

@inlineCallbacks
def main(argv, reactor, out=None, err=None, environ=None, http=None):
    """Run ``portmapper-ctl argv`` on ``reactor``; fire with the exit status.
    ``http`` (a treq HTTPClient or StubTreq) replaces the real one in tests."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    args = _parse(argv, out, err, os.environ if environ is None else environ)
    if not isinstance(args, argparse.Namespace):
        return args
    pool = None
    if http is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = TOP_CONCURRENCY
        http = HTTPClient(Agent(reactor, pool=pool))
    api = AdminClient(http, reactor, args.admin, args.admin_token, args.timeout)
    try:
        yield maybeDeferred(args.run, api, args, Output(out, args.json))
    except CtlError as e:
        err.write(f"portmapper-ctl: {e}\n")
        return 1
    finally:
        if pool is not None:
            yield pool.closeCachedConnections()
    return 0


def run():
    """The ``portmapper-ctl`` console script."""
    def go(reactor):
        return main(sys.argv[1:], reactor).addCallback(_exit)
    react(go)


def _exit(status):
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    run()
