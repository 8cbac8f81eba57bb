"""
The OpenAPI 3.1 document of the admin API, served at ``GET /openapi.json``.

One entry of :data:`OPERATIONS` per route, ``(METHOD, /path)`` -> what
:func:`operation` makes of its summary, query parameters, success answer and
failure statuses; the shared body shapes are in :data:`SCHEMAS`.  Adding an
endpoint to ``server/admin.py`` means adding its entry here (and its section
to ``docs/api.rst``): ``tests/test_openapi.py`` fails until every route has
one, and checks every answer the admin tests see against this document.
"""

# -- parameters: (name, schema) of the query string ------------------------

PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
LIMIT = {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}
HOST = {"type": "string", "description": "An IP address or a host name."}
TAG = {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}

# -- body shapes ------------------------------------------------------------


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties, required=None, **extra):
    """An object with exactly ``properties`` (all required unless ``required`` says otherwise)."""
    return {"type": "object", "properties": properties,
            "required": sorted(properties if required is None else required),
            "additionalProperties": False, **extra}


def _keyed(value):
    """An object keyed by ids or ports (decimal strings), each value ``value``."""
    return {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"}, "additionalProperties": value}


NUMBER = {"type": "number", "minimum": 0}
COUNT = {"type": "integer", "minimum": 0}
TIME = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$",
        "description": "The server's local time."}
NULLABLE_ID = {"type": ["integer", "null"], "minimum": 1}
NODE = {**TAG, "description": "The name of the node (server) it is on (--node-name)."}
SCOPE = {"enum": ["node", "cluster"], "default": "node",
         "description": "cluster: every live node's, merged; a node that did not answer is"
                        " named in the Portmapper-Unanswered-Nodes header."}

_TOTALS = {f"{d}_{k}": v for d in ("recv", "send") for k, v in [
    ("flow_statistics", NUMBER), ("average_speed", NUMBER), ("bytes", COUNT)]}
_LIVE = {"init_time": TIME, "duration_time": COUNT, **_TOTALS,
         "recv_real_time_speed": NUMBER, "send_real_time_speed": NUMBER}
_NODE = {"name": TAG, "version": {"type": "string"}, "started_time": TIME,
         "client_port": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535}}
_CLOSED = {"init_time": TIME, "close_time": TIME, "duration_time": COUNT, **_TOTALS,
           "close_reason": {"type": "string"}}


# A mapping's policies, shown only when set (docs/api.rst, "Mapping policies").
_POLICY_FIELDS = {
    "allow": {"type": "string", "description": "Comma-separated networks of the users allowed."},
    "proxy_protocol": {"enum": ["v1", "v2"]},
    "max_channels": {"type": "integer", "minimum": 1},
    "rate_limit": {"type": "number", "exclusiveMinimum": 0, "description": "MB/s each way."},
    "balance": {"enum": ["round_robin", "least_channels"]},
}
_POLICY_PARAMS = [(name, {"type": "string", "description": "A mapping policy; see docs/api.rst."})
                  for name in _POLICY_FIELDS]


def _history(row, key):
    return _object({"history": {"type": "array", "items": ref(row)},
                    "next_before": {"type": ["integer", "null"],
                                    "description": f"The ``before`` of the next page: the last {key}."}})


SCHEMAS = {
    "Success": _object({"result": {"const": "success"}}),
    "Failure": _object({"result": {"const": "failed"}, "reason": {"type": "string"}}),
    "Mapping": _object({"ip": HOST, "port": PORT, "tag": TAG, **_POLICY_FIELDS},
                       required=("ip", "port", "tag")),
    "Mappings": _keyed(ref("Mapping")),
    "Created": _object({"result": {"const": "success"}, "port_mapper": ref("Mappings")}),
    "Client": _object({"ip": {"type": "string"}, "port": PORT, "tag": TAG,
                       "state": {"enum": ["WORKING", "DRAINING", "CLOSED"]},
                       "credential_id": {**NULLABLE_ID, "description":
                                         "The credential it linked with; null for the shared token."},
                       "node": NODE, **_LIVE}),
    "Clients": _keyed(ref("Client")),
    "ChannelBrief": _object({"channel_id": ID, "ip": {"type": "string"}, "port": PORT,
                             "state": {"enum": ["CONNECTING", "WORKING", "CLOSING", "CLOSED"]},
                             "node": NODE}),
    "ChannelsByPort": _keyed({"type": "array", "items": ref("ChannelBrief")}),
    "Channel": _object({"channel_id": ID, "public_port": PORT, "ip": {"type": "string"}, "port": PORT,
                        "state": {"enum": ["CONNECTING", "WORKING", "CLOSING", "CLOSED"]},
                        "client_id": NULLABLE_ID, "target_ip": HOST, "target_port": PORT,
                        "node": NODE, **_LIVE}),
    "ChannelById": _keyed(ref("Channel")),
    "ClosedChannel": _object({"channel_id": ID, "port": PORT, "ip": {"type": "string"},
                              "user_port": PORT, "client_id": NULLABLE_ID, "target_ip": HOST,
                              "target_port": PORT, **_CLOSED}),
    "ClosedClient": _object({"client_id": ID, "ip": {"type": "string"}, "port": PORT, "tag": TAG,
                             **_CLOSED}),
    "ChannelHistory": _history("ClosedChannel", "channel_id"),
    "ClientHistory": _history("ClosedClient", "client_id"),
    "Credential": _object({"name": {"type": ["string", "null"]}, "tag": TAG,
                           "created_time": TIME, "last_used_time": {"anyOf": [TIME, {"type": "null"}]},
                           "client_ids": {"type": "array", "items": ID}}),
    "Credentials": _keyed(ref("Credential")),
    "Issued": _object({"result": {"const": "success"}, "credential": _object({
        "credential_id": ID, "name": {"type": ["string", "null"]}, "tag": TAG,
        "token": {"type": "string", "description": "The secret: shown in this answer only."}})}),
    "Node": _object({**_NODE, "admin_url": {"type": "string"},
                     "heartbeat_age": {"type": ["number", "null"], "description":
                                       "Seconds since its last heartbeat reached the database."},
                     "alive": {"type": "boolean",
                               "description": "A heartbeat within 5 s (this node: always)."},
                     "clients": COUNT, "channels": COUNT}),
    "Nodes": _object({**_NODE, "nodes": {"type": "array", "items": ref("Node")}}),
    "Index": _object({"dashboard": {"type": "string"}, "endpoints": {"type": "array", "items": _object(
        {"path": {"type": "string"}, "methods": {"type": "array", "items": {"type": "string"}}})}}),
}

# -- operations -------------------------------------------------------------

_WHEN = {
    400: "A parameter is missing or malformed, or two conflict.",
    401: "The server has an admin token and the request does not carry it.",
    404: "The id, port or file named is not known.",
    409: "The port is already mapped, or cannot be listened on.",
    500: "A fault of the server; details in its log.",
    503: "The server's PostgreSQL database cannot be reached; nothing was changed.",
}


def _json(schema, description="Success."):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(types, description):
    return {"description": description, "content": {t: {"schema": {"type": "string"}} for t in types}}


def operation(summary, params=(), required=(), ok=None, errors=(401, 500), ok_response=None,
              secured=True):
    """
    An OpenAPI operation: query ``params`` ((name, schema) pairs; those in
    ``required`` must be given), a 200 whose JSON body is ``ok`` (or the
    response ``ok_response``), and a Failure body for each status of ``errors``.
    """
    responses = {"200": ok_response or _json(ok)}
    for status in errors:
        responses[str(status)] = {"$ref": f"#/components/responses/{status}"}
    op = {
        "summary": summary,
        "parameters": [{"name": name, "in": "query", "required": name in required, "schema": schema}
                       for name, schema in params],
        "responses": responses,
    }
    if not secured:
        op["security"] = []
    return op


def removal(summary, name, schema, stored=False):
    """An operation that acts on the one thing its required parameter ``name``
    names (``stored``: in the database, so it may answer 503)."""
    return operation(summary, params=[(name, schema)], required=(name,), ok=ref("Success"),
                     errors=(400, 401, 404, 500, 503) if stored else (400, 401, 404, 500))


OPERATIONS = {
    ("GET", "/"): operation(
        "The dashboard page; with Accept: application/json, an index of the endpoints (needs the token).",
        secured=False, errors=(401,), ok_response={
            "description": "The page, or the JSON index.",
            "content": {"text/html": {"schema": {"type": "string"}},
                        "application/json": {"schema": ref("Index")}}}),
    ("GET", "/ui/{name}"): {
        **operation("A file of the dashboard (its script and style).", secured=False, errors=(404,),
                    ok_response=_text(["text/javascript", "text/css"], "The file.")),
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
    },
    ("GET", "/metrics"): operation(
        "The server's metrics in the Prometheus text format.",
        ok_response=_text(["text/plain"], "Prometheus text format 0.0.4.")),
    ("GET", "/openapi.json"): operation(
        "This document.", secured=False, errors=(),
        ok_response=_json({"type": "object"}, "The OpenAPI document.")),
    ("GET", "/client_port"): operation(
        "The port tunnel clients dial.", ok=_object({"client_port": PORT})),
    ("GET", "/port_mapper"): operation("Every port mapping, keyed by public port.", ok=ref("Mappings")),
    ("POST", "/port_mapper"): operation(
        "Map a public port to a target that a client with the tag can reach; listens at once.",
        params=[("port", PORT), ("mapper_ip", HOST), ("mapper_port", PORT),
                ("mapper_tag", {**TAG, "default": "default"}), *_POLICY_PARAMS],
        required=("port", "mapper_ip", "mapper_port"), ok=ref("Created"), errors=(400, 401, 409, 500, 503)),
    ("PATCH", "/port_mapper"): operation(
        "Change a mapping's target, tag or policies live (an empty value removes a policy);"
        " open channels stay.",
        params=[("port", PORT), ("mapper_ip", HOST), ("mapper_port", PORT), ("mapper_tag", TAG),
                *_POLICY_PARAMS],
        required=("port",), ok=ref("Created"), errors=(400, 401, 404, 409, 500, 503)),
    ("DELETE", "/port_mapper"): removal(
        "Stop listening on a public port, close its channels, forget the mapping.", "port", PORT,
        stored=True),
    ("GET", "/node"): operation(
        "This node (name, version, start, client port) and every node of its cluster.",
        ok=ref("Nodes")),
    ("GET", "/client_connection"): operation(
        "The connected clients, or only the one given; of this node, or with scope=cluster of all.",
        params=[("client_id", ID), ("scope", SCOPE)], ok=ref("Clients"),
        errors=(400, 401, 404, 500)),
    ("DELETE", "/client_connection"): removal(
        "Drop a client's link now; its channels close.", "client_id", ID),
    ("GET", "/client_history"): operation(
        "Closed client links, newest first.",
        params=[("client_id", ID), ("limit", LIMIT), ("before", ID)], ok=ref("ClientHistory"),
        errors=(400, 401, 500, 503)),
    ("POST", "/credential"): operation(
        "Issue a credential for one client and tag; the token is in this answer only.",
        params=[("tag", TAG), ("name", {"type": "string", "minLength": 1, "maxLength": 64})],
        required=("tag",), ok=ref("Issued"), errors=(400, 401, 500, 503)),
    ("GET", "/credential"): operation(
        "Every credential issued (never a token), keyed by credential_id.", ok=ref("Credentials")),
    ("DELETE", "/credential"): removal(
        "Revoke a credential: its clients are dropped now and it is refused from then on.",
        "credential_id", ID, stored=True),
    ("GET", "/channel"): operation(
        "Open channels grouped by public port (or one port's); with channel_id, that channel's"
        " details; of this node, or with scope=cluster of all.",
        params=[("port", PORT), ("channel_id", ID), ("scope", SCOPE)],
        ok={"anyOf": [ref("ChannelsByPort"), ref("ChannelById")]}, errors=(400, 401, 404, 500)),
    ("DELETE", "/channel"): removal("Close an open channel now, both sides.", "channel_id", ID),
    ("GET", "/channel_history"): operation(
        "Closed channels, newest first, filtered by every filter given.",
        params=[("port", PORT), ("client_id", ID), ("channel_id", ID), ("limit", LIMIT), ("before", ID)],
        ok=ref("ChannelHistory"), errors=(400, 401, 500, 503)),
}


def document(version):
    """The OpenAPI document (a JSON-ready dict) of the admin API of portmapper ``version``."""
    paths = {}
    for (method, path), op in OPERATIONS.items():
        paths.setdefault(path, {})[method.lower()] = op
    failure = ref("Failure")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "portmapper admin API",
            "version": version,
            "description": "Port mappings, tunnel clients, channels and their history. "
                           "Parameters come in the query string. Any failure, a 404 for an unknown "
                           "path and a 405 for a wrong method included, is a Failure body.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": {str(status): _json(failure, when) for status, when in _WHEN.items()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Needed when the server has --admin-token."}},
        },
        "security": [{"bearer": []}],
    }
