"""
Tests that the docs keep up with the code: ``docs/api.rst`` has a section
for every route the admin API serves (and none for a route it does not), and
no tracked file cites design documents that live outside the repo.
"""

import os
import re
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from portmapper.server.admin import AdminAPI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_DOC = os.path.join(ROOT, "docs", "api.rst")

# A section title "METHOD /path" and its reStructuredText underline.
_TITLE = re.compile(r"^([A-Z]+ /\S*)\n(([=\-~^\"'`#*+])\3+)$", re.MULTILINE)

# The names of the outside design documents (what ``git grep -E`` would look for),
# spelt so that this file does not match.
_OUTSIDE_DOCS = re.compile(r"(?:API|DESIGN|STYLE)\.md")


def served_endpoints():
    """Every "METHOD /path" the admin app routes (HEAD goes with GET, so it is left out)."""
    endpoints = set()
    for rule in AdminAPI.app.url_map.iter_rules():
        methods = set(rule.methods)
        if "GET" in methods:
            methods.discard("HEAD")
        endpoints.update(f"{method} {rule.rule}" for method in methods)
    return endpoints


def documented_endpoints(text):
    """The "METHOD /path" section titles of ``text``."""
    return {title for title, underline, _ in _TITLE.findall(text) if len(underline) >= len(title)}


class ApiDocTests(SynchronousTestCase):

    def setUp(self):
        with open(API_DOC, encoding="utf-8") as f:
            self.text = f.read()

    def test_finds_titles(self):
        """The title pattern finds a "METHOD /path" section and ignores the same words in prose."""
        sample = ("GET /channel\n------------\n\nSee ``GET /channel_history`` too.\n\n"
                  "DELETE /channel\n---\n")  # an underline shorter than its title is no title
        self.assertEqual(documented_endpoints(sample), {"GET /channel"})

    def test_routes_are_found(self):
        """The app's routes are read from Klein: the ones every server has are among them."""
        self.assertTrue({"GET /client_port", "POST /port_mapper", "DELETE /channel"} <= served_endpoints())

    def test_every_endpoint_documented(self):
        """Each METHOD /path the admin API serves has a section titled so in docs/api.rst."""
        missing = served_endpoints() - documented_endpoints(self.text)
        self.assertEqual(missing, set(), "add a section for each of these to docs/api.rst")

    def test_no_endpoint_documented_that_is_not_served(self):
        """Each "METHOD /path" section of docs/api.rst is a route the admin API serves."""
        extra = documented_endpoints(self.text) - served_endpoints()
        self.assertEqual(extra, set(), "docs/api.rst documents routes the server does not have")


class CitationTests(SynchronousTestCase):

    def test_pattern(self):
        """The citation pattern matches each document's name, and not the repo's own docs."""
        for name in ["API", "DESIGN", "STYLE"]:
            self.assertTrue(_OUTSIDE_DOCS.search(f"see {name}.md here"))
        self.assertFalse(_OUTSIDE_DOCS.search("see docs/api.rst and README.rst"))

    def test_no_outside_design_documents(self):
        """No tracked file names the design documents kept outside the repo."""
        try:
            listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                    check=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            raise SkipTest("not a git checkout") from None
        names = listed.decode("utf-8").split("\0")
        self.assertIn("README.rst", names)
        citing = []
        for name in names:
            path = os.path.join(ROOT, name)
            if not name or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            citing += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1)
                       if _OUTSIDE_DOCS.search(line)]
        self.assertEqual(citing, [])
