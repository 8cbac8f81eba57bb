"""
Tests for portmapper.server.console: the admin API serving the dashboard's
page and files, and its JSON index at ``/``, driven in memory with StubTreq.
(tests/test_console_browser.py runs the page itself in Chromium.)
"""

import json

import treq
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from portmapper.server import console
from portmapper.server.admin import AdminAPI

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
TOKEN = "console-token"


class ConsoleRoutesTests(SynchronousTestCase):
    """``/`` and ``/ui/<file>`` of the admin app."""

    def get(self, path, token=None, accept=BROWSER_ACCEPT, headers=None):
        """GET ``path`` from an admin app (with ``token`` required if given); (response, body)."""
        stub = StubTreq(AdminAPI(object(), token).app.resource())
        sent = {"Accept": accept, **(headers or {})}
        response = self.successResultOf(stub.get(f"http://admin{path}", headers=sent))
        return response, self.successResultOf(treq.content(response))

    def header(self, response, name):
        return response.headers.getRawHeaders(name, [None])[0]

    def test_root_is_the_page_for_a_browser(self):
        """A browser's GET / gets the HTML page, which loads the script and style from ui/."""
        response, body = self.get("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Content-Type"), "text/html; charset=utf-8")
        self.assertEqual(body, console.FILES["index.html"][1])
        self.assertIn(b'src="ui/app.js"', body)
        self.assertIn(b'href="ui/style.css"', body)
        self.assertEqual(self.header(response, "Vary"), "Accept")

    def test_curl_gets_the_page_too(self):
        """Accept */* (curl's) or no Accept at all prefers the page, as a browser would."""
        for accept in ("*/*", ""):
            response, _ = self.get("/", accept=accept)
            self.assertEqual(self.header(response, "Content-Type"), "text/html; charset=utf-8", accept)

    def test_files_with_their_types(self):
        """The script and style under /ui/ come with their content types and their bytes from the package."""
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        self.assertEqual(set(console.FILES), {"index.html", *types})
        for name, kind in types.items():
            response, body = self.get(f"/ui/{name}")
            self.assertEqual(response.code, 200, name)
            self.assertEqual(self.header(response, "Content-Type"), f"{kind}; charset=utf-8")
            self.assertEqual(self.header(response, "X-Content-Type-Options"), "nosniff")
            self.assertTrue(body and body == console.FILES[name][1], name)

    def test_page_allows_only_its_own_scripts(self):
        """The page's Content-Security-Policy admits scripts, styles and fetches from this origin only."""
        response, _ = self.get("/")
        policy = self.header(response, "Content-Security-Policy")
        for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'",
                          "frame-ancestors 'none'"):
            self.assertIn(directive, policy)

    def test_page_needs_no_token(self):
        """With an admin token set, the page and its files are served without it: they hold no data."""
        for path in ("/", "/ui/app.js", "/ui/style.css"):
            response, _ = self.get(path, token=TOKEN)
            self.assertEqual(response.code, 200, path)

    def test_unknown_file_is_a_json_404(self):
        """An unknown file under /ui/, the package's own module, or the page (its home is /) is a JSON 404."""
        for name in ("nope.js", "__init__.py", "index.html"):
            response, body = self.get(f"/ui/{name}", token=TOKEN)
            self.assertEqual(response.code, 404, name)
            self.assertEqual(self.header(response, "Content-Type"), "application/json")
            self.assertEqual(json.loads(body),
                             {"result": "failed", "reason": f"The dashboard has no file {name}."})

    def test_json_index_lists_the_endpoints(self):
        """GET / asking for JSON lists every endpoint with its methods."""
        response, body = self.get("/", accept="application/json")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Content-Type"), "application/json")
        index = json.loads(body)
        endpoints = {e["path"]: e["methods"] for e in index["endpoints"]}
        self.assertEqual(index["dashboard"], "/")
        self.assertEqual(endpoints["/port_mapper"], ["DELETE", "GET", "PATCH", "POST"])
        self.assertEqual(endpoints["/channel"], ["DELETE", "GET"])
        self.assertEqual(endpoints["/channel_history"], ["GET"])
        self.assertEqual(endpoints["/ui/<name>"], ["GET"])

    def test_json_index_needs_the_token(self):
        """The JSON index is part of the API: without the admin token it is a 401; with it, a 200."""
        response, body = self.get("/", token=TOKEN, accept="application/json")
        self.assertEqual(response.code, 401)
        self.assertEqual(json.loads(body)["result"], "failed")
        response, _ = self.get("/", token=TOKEN, accept="application/json",
                               headers={"Authorization": f"Bearer {TOKEN}"})
        self.assertEqual(response.code, 200)

    def test_script_never_writes_html(self):
        """app.js puts nothing into the page as HTML (values from the API go in as text only)."""
        script = console.FILES["app.js"][1].decode("utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            self.assertNotIn(sink, script)
