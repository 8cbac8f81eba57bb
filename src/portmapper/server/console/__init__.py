"""
The operator's dashboard: a static page (``index.html``, ``app.js`` and
``style.css`` beside this file) that the admin API serves at ``/`` and
``/ui/<file>``.

The page holds no data: its JavaScript asks the JSON API for everything,
with the admin token it asks the operator for.  So the page and its files
are served without the token, while every JSON answer, the endpoint index at
``/`` included, still needs it.  The files are read once, when this module
is imported (before the reactor runs), so serving them never touches the
disk.
"""

import importlib.resources

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from portmapper.errors import NotFound

PAGE = "index.html"

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}

# Only this origin's script, style and API; no inline script, no framing.
_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-cache",
}


class UnknownFile(NotFound):
    def __init__(self, name):
        super().__init__(f"The dashboard has no file {name}.")


def _load():
    """``{name: (content type, bytes)}`` of the dashboard's files."""
    files = {}
    for entry in importlib.resources.files(__name__).iterdir():
        suffix = entry.name[entry.name.rfind("."):]
        if suffix in _TYPES:
            files[entry.name] = (_TYPES[suffix], entry.read_bytes())
    return files


FILES = _load()


def wants_json(request):
    """Whether the request's Accept header prefers JSON to HTML (a browser's does not)."""
    accept = parse_accept_header((request.getHeader(b"Accept") or b"").decode("latin-1"), MIMEAccept)
    return accept.best_match(["text/html", "application/json"]) == "application/json"


def serve(request, name):
    """The body of the dashboard's file ``name``, with its headers set; UnknownFile if none."""
    if name not in FILES:
        raise UnknownFile(name)
    content_type, body = FILES[name]
    request.setHeader(b"Content-Type", content_type)
    for header, value in _HEADERS.items():
        request.setHeader(header, value)
    return body


def asset(request, name):
    """Like :func:`serve`, for a file under ``/ui/``: the page's script or
    style, not the page itself (served at ``/``, where its links resolve)."""
    if name == PAGE:
        raise UnknownFile(name)
    return serve(request, name)


def index(url_map):
    """The JSON index of the admin API: every route of ``url_map`` and its methods."""
    endpoints = {}
    for rule in url_map.iter_rules():
        methods = endpoints.setdefault(rule.rule, set())
        methods.update(rule.methods - {"HEAD", "OPTIONS"})
    return {
        "dashboard": "/",
        "endpoints": [{"path": path, "methods": sorted(endpoints[path])} for path in sorted(endpoints)],
    }
