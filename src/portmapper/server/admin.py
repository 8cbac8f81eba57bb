"""
The admin JSON API (``docs/api.rst``): port mappings, clients, channels,
credentials, history.

:class:`AdminAPI` is a Klein app over a running server (anything that
provides :class:`~portmapper.server.interfaces.IPortMapperServer`); serve
``AdminAPI(server, admin_token).app.resource()``.  Every answer, failures
included, is a JSON body with ``Content-Type: application/json``: writes
answer ``{"result": "success"}``, failures
``{"result": "failed", "reason": "<one sentence>"}`` with the status of the
:class:`~portmapper.errors.PortMapperError` raised (or 404/405 for a path
or method we do not serve, 500 for a fault of ours, logged).

Parameters come from the query string.  Each is parsed by :func:`_param`
with one of the kinds below, so a missing or malformed one is a 400 naming
it, and nothing is asked of the server before every parameter is good.
The rules are :mod:`portmapper.validate`'s, which the config and the link
use too.
"""

import functools
import hmac
import json
import time

from klein import Klein
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as NoRoute

from portmapper import __version__, validate
from portmapper.errors import (
    BadParameter, PortMapperError, Unauthorized, UnknownChannel, UnknownClient, UnknownMapping,
)
from portmapper.server import console, openapi
from portmapper.server.meter import MB
from portmapper.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from portmapper.server.metrics import ServerMetrics
from portmapper.server.nodes import FanOut
from portmapper.server.webhooks import http_client

log = Logger()

SUCCESS = {"result": "success"}
DEFAULT_LIMIT = 100
MAX_LIMIT = 10000

_REQUIRED = object()
_OPENAPI = openapi.document(__version__)


# -- parameters ---------------------------------------------------------------

def _integer(low, high):
    return lambda text: validate.integer(text, low, high)


# A kind of parameter: (parse text -> value, raising ValueError; what it must be).
PORT = (validate.port, validate.PORT_RULE)
ID = (_integer(1, 2**63 - 1), "a positive integer")
LIMIT = (_integer(1, MAX_LIMIT), f"an integer from 1 to {MAX_LIMIT}")
HOST = (validate.host, validate.HOST_RULE)
TAG = (validate.tag, validate.TAG_RULE)
NAME = (validate.name, validate.NAME_RULE)


def _scope(text):
    """``node`` (this node's live view, the default) or ``cluster`` (every live node's)."""
    if text not in ("node", "cluster"):
        raise ValueError(text)
    return text


SCOPE = (_scope, "'node' or 'cluster'")

#: The header naming the nodes a ``?scope=cluster`` answer lacks.
UNANSWERED = b"Portmapper-Unanswered-Nodes"


def _policies(request, empty_removes):
    """
    The mapping policies the query gives: name -> value.  An empty value
    (``allow=``) is None, "remove it", with ``empty_removes``; else it is as
    if it were not given.
    """
    found = {}
    for name, kind in validate.POLICIES.items():
        values = request.args.get(name.encode("ascii"))
        if values and not values[0]:
            if empty_removes:
                found[name] = None
        elif values:
            found[name] = _param(request, name, kind)
    return found


def _param(request, name, kind, default=_REQUIRED):
    """Query parameter ``name`` parsed as ``kind``; BadParameter naming it if missing or bad."""
    parse, what = kind
    values = request.args.get(name.encode("ascii"))
    if not values:
        if default is _REQUIRED:
            raise BadParameter(f"Parameter '{name}' is required and must be {what}.")
        return default
    try:
        return parse(values[0].decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is one too
        raise BadParameter(f"Parameter '{name}' must be {what}.") from None


# -- rendering ----------------------------------------------------------------

def _render(request, body, status=200):
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode("utf-8")


def _failed(request, status, reason):
    return _render(request, {"result": "failed", "reason": reason}, status)


def _mb(amount):
    """Bytes (or bytes/s) as MB (or MB/s), without float noise."""
    return round(amount / MB, 6)


def _local_time(epoch):
    return None if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _traffic(recv_bytes, send_bytes, recv_average, send_average):
    return {
        "recv_flow_statistics": _mb(recv_bytes),
        "recv_average_speed": _mb(recv_average),
        "recv_bytes": recv_bytes,
        "send_flow_statistics": _mb(send_bytes),
        "send_average_speed": _mb(send_average),
        "send_bytes": send_bytes,
    }


def _live(meter, now):
    """Times and traffic of a live connection."""
    return {
        "init_time": _local_time(meter.created),
        "duration_time": int(meter.age(now)),
        **_traffic(meter.recv_bytes, meter.send_bytes, meter.recv_average(now), meter.send_average(now)),
        "recv_real_time_speed": _mb(meter.recv_speed),
        "send_real_time_speed": _mb(meter.send_speed),
    }


def _closed(row):
    """A history row from the store, with its times and traffic in API units."""
    seconds = max(0.0, row["close_time"] - row["init_time"])
    recv, send = row["recv_bytes"], row["send_bytes"]
    return {
        **row,
        "init_time": _local_time(row["init_time"]),
        "close_time": _local_time(row["close_time"]),
        "duration_time": int(seconds),
        **_traffic(recv, send, recv / seconds if seconds else 0.0, send / seconds if seconds else 0.0),
    }


def _page(rows, limit, key):
    """The history answer for ``rows`` fetched with ``limit + 1``: at most ``limit``
    rows, and where the next page starts if there is one."""
    rows = [_closed(row) for row in rows]
    more = len(rows) > limit
    del rows[limit:]
    return {"history": rows, "next_before": rows[-1][key] if more else None}


def _age(seconds):
    return None if seconds is None else round(seconds, 3)


def _merge_by_id(bodies):
    """Answers keyed by client or channel id (unique in the cluster), as one, by id."""
    merged = {}
    for body in bodies:
        merged.update(body)
    return {key: merged[key] for key in sorted(merged, key=int)}


def _merge_by_port(bodies):
    """Channel lists by public port, as one: each port's lists joined, by channel_id."""
    merged = {}
    for body in bodies:
        for port, channels in body.items():
            merged.setdefault(port, []).extend(channels)
    return {port: sorted(merged[port], key=lambda c: c["channel_id"])
            for port in sorted(merged, key=int)}


def _mapping_answer(mapping):
    """What a write of a mapping answers: success, and the mapping as it is now."""
    return {**SUCCESS, "port_mapper": {str(mapping.public_port): mapping.as_json()}}


def _json(route):
    """Check the admin token, run ``route`` and render what it returns (or its
    Deferred fires with) as JSON."""
    @functools.wraps(route)
    def guarded(self, request):
        self._authorize(request)
        result = route(self, request)
        if isinstance(result, Deferred):
            return result.addCallback(lambda body: _render(request, body))
        return _render(request, result)
    return guarded


class AdminAPI:
    """The admin API over ``server``, an
    :class:`~portmapper.server.interfaces.IPortMapperServer` (see the module
    docstring); with ``admin_token`` set, every request needs
    ``Authorization: Bearer <token>``.  ``metrics`` (a
    :class:`~portmapper.server.metrics.ServerMetrics`) is what ``GET
    /metrics`` serves; by default, metrics of the live state alone."""

    app = Klein()

    def __init__(self, server, admin_token=None, metrics=None, http=None):
        if admin_token is not None and not admin_token:
            raise ValueError("An empty admin token would protect nothing; give a token or None.")
        self._server = server
        self._metrics = metrics if metrics is not None else ServerMetrics(server)
        self._token = admin_token.encode("utf-8") if isinstance(admin_token, str) else admin_token
        self._http = http  # asks the other nodes (?scope=cluster); made when first needed
        self._fanout = None

    def _authorize(self, request):
        if self._token is None:
            return
        scheme, _, offered = (request.getHeader(b"Authorization") or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(offered.strip(), self._token):
            raise Unauthorized("This request needs the header 'Authorization: Bearer <admin token>'.")

    # -- errors: Klein tries these in order, and an error raised in one goes to
    # the ones after it (so a routing error without a token ends as a 401) ---

    @app.handle_errors(HTTPException)
    def _routing_error(self, request, failure):
        """An unknown path or a wrong method (werkzeug's routing exceptions)."""
        self._authorize(request)
        error = failure.value
        headers = error.get_response().headers
        for name in ("Allow", "Location"):  # of a 405, of a redirect to the canonical path
            if name in headers:
                request.setHeader(name.encode("ascii"), headers[name].encode("latin-1"))
        method, path = request.method.decode("latin-1"), request.path.decode("latin-1")
        if isinstance(error, NoRoute):
            reason = f"There is no endpoint {path}."
        elif isinstance(error, MethodNotAllowed):
            reason = f"Method {method} is not allowed on {path}; use {', '.join(error.valid_methods)}."
        else:
            reason = f"{error.name}."
        return _failed(request, error.code, reason)

    @app.handle_errors(PortMapperError)
    def _known_error(self, request, failure):
        if failure.check(Unauthorized):
            request.setHeader(b"WWW-Authenticate", b"Bearer")
        return _failed(request, failure.value.status, str(failure.value))

    @app.handle_errors(Exception)
    def _unexpected_error(self, request, failure):
        log.failure(
            "admin request {method} {uri} failed", failure,
            method=request.method.decode("latin-1"), uri=request.uri.decode("latin-1"),
        )
        return _failed(request, 500, "Internal server error; the server log has the details.")

    # -- the dashboard (server/console): the page holds no data, so it needs no
    # token; the index of endpoints is JSON like the rest, so it does ---------

    @app.route("/", methods=["GET"])
    def get_root(self, request):
        request.setHeader(b"Vary", b"Accept")
        if console.wants_json(request):
            self._authorize(request)
            return _render(request, console.index(self.app.url_map))
        return console.serve(request, console.PAGE)

    @app.route("/ui/<name>", methods=["GET"])
    def get_ui(self, request, name):
        return console.asset(request, name)

    # -- observability ----------------------------------------------------------

    @app.route("/metrics", methods=["GET"])
    def get_metrics(self, request):
        """Prometheus text, read from the live state at this moment (server/metrics.py)."""
        self._authorize(request)
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE)
        return self._metrics.exposition()

    @app.route("/openapi.json", methods=["GET"])
    def get_openapi(self, request):
        """This API's OpenAPI document (server/openapi.py); like the page, it holds no data."""
        return _render(request, _OPENAPI)

    # -- the cluster: this node, the others, and views merged from all ----------

    @app.route("/node", methods=["GET"])
    @_json
    def get_node(self, request):
        node = self._server.node()
        return {**node, "started_time": _local_time(node["started_time"]), "nodes": [{
            "name": row["name"], "version": row["version"],
            "started_time": _local_time(row["started_time"]), "client_port": row["client_port"],
            "admin_url": row["admin_url"], "heartbeat_age": _age(row["heartbeat_age"]),
            "alive": row["alive"], "clients": row["clients"], "channels": row["channels"],
        } for row in self._server.nodes()]}

    def _scoped(self, request, local, merge):
        """
        The answer of ``local()`` (a view of this node), or with ``?scope=cluster``
        that of every live node merged by ``merge(answers)`` (answers: bodies,
        this node's first); a node that did not answer is named in the
        :data:`UNANSWERED` header.  ``local()`` raising a 404 error means this
        node has none of what was asked: the others may have it.
        """
        if _param(request, "scope", SCOPE, default="node") == "node":
            return local()
        try:
            here = local()
        except (UnknownClient, UnknownChannel) as e:
            here, missing = None, e
        others = [(row["name"], row["admin_url"]) for row in self._server.nodes()
                  if row["alive"] and row["name"] != self._server.node_name and row["admin_url"]]
        args = [(name.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
                for name, values in request.args.items() if name != b"scope" for value in values]

        def merged(result):
            answers, unanswered = result
            for name, (status, body) in sorted(answers.items()):
                if status not in (200, 404):
                    log.warn("node {node} answered {path} with {status}: {body}", node=name,
                             path=request.path.decode("latin-1"), status=status, body=body)
                    unanswered.append(name)
            bodies = [here] + [body for _, (status, body) in sorted(answers.items()) if status == 200]
            bodies = [body for body in bodies if body is not None]
            if unanswered:
                request.setHeader(UNANSWERED, ", ".join(sorted(unanswered)).encode("utf-8"))
            if not bodies:
                raise missing
            return merge(bodies)

        return self.fanout.gather(others, request.path.decode("latin-1"), args).addCallback(merged)

    @property
    def fanout(self):
        """The :class:`~portmapper.server.nodes.FanOut` that asks the other nodes."""
        if self._fanout is None:
            http = self._http if self._http is not None else http_client(self._server.clock)
            self._fanout = FanOut(http, self._server.clock, self._token)
        return self._fanout

    # -- ports and mappings ---------------------------------------------------

    @app.route("/client_port", methods=["GET"])
    @_json
    def get_client_port(self, request):
        return {"client_port": self._server.client_port}

    @app.route("/port_mapper", methods=["GET"])
    @_json
    def get_port_mapper(self, request):
        mappings = self._server.mappings()
        return {str(port): mappings[port].as_json() for port in sorted(mappings)}

    @app.route("/port_mapper", methods=["POST"])
    @_json
    def post_port_mapper(self, request):
        port = _param(request, "port", PORT)
        target_ip = _param(request, "mapper_ip", HOST)
        target_port = _param(request, "mapper_port", PORT)
        tag = _param(request, "mapper_tag", TAG, default="default")
        policies = _policies(request, empty_removes=False)
        d = maybeDeferred(self._server.add_mapping, port, target_ip, target_port, tag, policies)
        return d.addCallback(_mapping_answer)

    @app.route("/port_mapper", methods=["PATCH"])
    @_json
    def patch_port_mapper(self, request):
        port = _param(request, "port", PORT)
        changes = _policies(request, empty_removes=True)
        for name, attribute, kind in (("mapper_ip", "target_ip", HOST),
                                      ("mapper_port", "target_port", PORT),
                                      ("mapper_tag", "tag", TAG)):
            value = _param(request, name, kind, default=None)
            if value is not None:
                changes[attribute] = value
        d = maybeDeferred(self._server.change_mapping, port, changes)
        return d.addCallback(_mapping_answer)

    @app.route("/port_mapper", methods=["DELETE"])
    @_json
    def delete_port_mapper(self, request):
        port = _param(request, "port", PORT)
        return maybeDeferred(self._server.remove_mapping, port).addCallback(lambda _: SUCCESS)

    # -- clients --------------------------------------------------------------

    def _client_json(self, client, now):
        return {
            "ip": client.ip, "port": client.port, "tag": client.tag, "state": client.state,
            **_live(client.meter, now), "credential_id": client.credential_id,
            "node": self._server.node_name,
        }

    @app.route("/client_connection", methods=["GET"])
    @_json
    def get_client_connection(self, request):
        client_id = _param(request, "client_id", ID, default=None)
        return self._scoped(request, lambda: self._clients(client_id), _merge_by_id)

    def _clients(self, client_id):
        clients = self._server.clients()
        if client_id is None:
            ids = sorted(clients)
        elif client_id in clients:
            ids = [client_id]
        else:
            raise UnknownClient(client_id)
        now = self._server.clock.seconds()
        return {str(i): self._client_json(clients[i], now) for i in ids}

    @app.route("/client_connection", methods=["DELETE"])
    @_json
    def delete_client_connection(self, request):
        client_id = _param(request, "client_id", ID)
        return maybeDeferred(self._server.kick_client, client_id).addCallback(lambda _: SUCCESS)

    @app.route("/client_history", methods=["GET"])
    @_json
    def get_client_history(self, request):
        client_id = _param(request, "client_id", ID, default=None)
        limit = _param(request, "limit", LIMIT, default=DEFAULT_LIMIT)
        before = _param(request, "before", ID, default=None)
        d = self._server.client_history(client_id=client_id, limit=limit + 1, before=before)
        return d.addCallback(_page, limit, "client_id")

    # -- credentials: the token is in the answer to POST only, never again -----

    @app.route("/credential", methods=["POST"])
    @_json
    def post_credential(self, request):
        tag = _param(request, "tag", TAG)
        name = _param(request, "name", NAME, default=None)

        def issued(result):
            credential, token = result
            return {**SUCCESS, "credential": {
                "credential_id": credential.credential_id, "name": credential.name,
                "tag": credential.tag, "token": token}}

        return maybeDeferred(self._server.issue_credential, tag, name).addCallback(issued)

    @app.route("/credential", methods=["GET"])
    @_json
    def get_credential(self, request):
        clients = {}
        for client in self._server.clients().values():
            clients.setdefault(client.credential_id, []).append(client.client_id)
        credentials = self._server.credentials()
        return {str(i): {
            "name": credentials[i].name, "tag": credentials[i].tag,
            "created_time": _local_time(credentials[i].created_time),
            "last_used_time": _local_time(credentials[i].last_used_time),
            "client_ids": sorted(clients.get(i, [])),
        } for i in sorted(credentials)}

    @app.route("/credential", methods=["DELETE"])
    @_json
    def delete_credential(self, request):
        credential_id = _param(request, "credential_id", ID)
        d = maybeDeferred(self._server.revoke_credential, credential_id)
        return d.addCallback(lambda _: SUCCESS)

    # -- channels -------------------------------------------------------------

    @app.route("/channel", methods=["GET"])
    @_json
    def get_channel(self, request):
        port = _param(request, "port", PORT, default=None)
        channel_id = _param(request, "channel_id", ID, default=None)
        if port is not None and channel_id is not None:
            raise BadParameter("Give parameter 'port' or parameter 'channel_id', not both.")
        if channel_id is not None:
            return self._scoped(request, lambda: self._channel_detail(channel_id), _merge_by_id)
        return self._scoped(request, lambda: self._channels(port), _merge_by_port)

    def _channels(self, port):
        mappings = self._server.mappings()
        if port is not None and port not in mappings:
            raise UnknownMapping(port)
        ports = [port] if port is not None else sorted(mappings)
        grouped = {p: [] for p in ports}
        for channel in sorted(self._server.channels().values(), key=lambda c: c.channel_id):
            if port is None or channel.public_port == port:
                grouped.setdefault(channel.public_port, []).append({
                    "channel_id": channel.channel_id, "ip": channel.user_ip,
                    "port": channel.user_port, "state": channel.state,
                    "node": self._server.node_name,
                })
        return {str(p): grouped[p] for p in sorted(grouped)}

    def _channel_detail(self, channel_id):
        channel = self._server.channels().get(channel_id)
        if channel is None:
            raise UnknownChannel(channel_id)
        return {str(channel_id): {
            "channel_id": channel_id, "public_port": channel.public_port,
            "ip": channel.user_ip, "port": channel.user_port, "state": channel.state,
            "client_id": channel.client_id,
            "target_ip": channel.target_ip, "target_port": channel.target_port,
            **_live(channel.meter, self._server.clock.seconds()), "node": self._server.node_name,
        }}

    @app.route("/channel", methods=["DELETE"])
    @_json
    def delete_channel(self, request):
        channel_id = _param(request, "channel_id", ID)
        return maybeDeferred(self._server.close_channel, channel_id).addCallback(lambda _: SUCCESS)

    @app.route("/channel_history", methods=["GET"])
    @_json
    def get_channel_history(self, request):
        filters = {
            "port": _param(request, "port", PORT, default=None),
            "client_id": _param(request, "client_id", ID, default=None),
            "channel_id": _param(request, "channel_id", ID, default=None),
            "before": _param(request, "before", ID, default=None),
        }
        limit = _param(request, "limit", LIMIT, default=DEFAULT_LIMIT)
        d = self._server.channel_history(limit=limit + 1, **filters)
        return d.addCallback(_page, limit, "channel_id")
