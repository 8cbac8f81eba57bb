"""
Tests for ``GET /openapi.json`` (portmapper.server.openapi): the document is
valid OpenAPI 3.1, names exactly the routes the admin app serves and
``docs/api.rst`` documents, and the checker that holds every admin test's
answers against it (tests/openapi_check.py) catches drift.
"""

import re

import treq
from openapi_spec_validator import validate
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portmapper import __version__
from portmapper.server import openapi
from portmapper.server.admin import AdminAPI
from tests.openapi_check import DOCUMENT, RecordingStubTreq, problems
from tests.test_admin import FakeServer
from tests.test_docs import API_DOC, documented_endpoints, served_endpoints


def document_endpoints(document):
    """Every "METHOD /path" of ``document``, written as Klein writes paths (``<name>``)."""
    return {method.upper() + " " + re.sub(r"{([^}]+)}", r"<\1>", path)
            for path, operations in document["paths"].items() for method in operations}


class DocumentTests(SynchronousTestCase):

    def test_valid_openapi(self):
        """The document is a valid OpenAPI 3.1 document (openapi-spec-validator)."""
        document = openapi.document(__version__)
        self.assertEqual(document["openapi"], "3.1.0")
        validate(document)

    def test_every_route_has_an_operation(self):
        """Each METHOD /path the admin app routes has an operation in the document, and no other."""
        self.assertEqual(document_endpoints(DOCUMENT), served_endpoints())

    def test_same_routes_as_api_rst(self):
        """docs/api.rst has a section for exactly the document's operations."""
        with open(API_DOC, encoding="utf-8") as f:
            self.assertEqual(documented_endpoints(f.read()), document_endpoints(DOCUMENT))

    def test_refs_resolve(self):
        """Every $ref in the document points at a component that exists."""
        text = repr(DOCUMENT)
        for kind, name in re.findall(r"#/components/(\w+)/(\w+)", text):
            self.assertIn(name, DOCUMENT["components"][kind])


class ServedTests(SynchronousTestCase):

    def test_served_without_token(self):
        """GET /openapi.json answers the document as JSON, without the admin token (it holds no data)."""
        stub = RecordingStubTreq(self, AdminAPI(FakeServer(Clock()), admin_token="s3cret").app.resource())
        response = self.successResultOf(stub.get("http://admin/openapi.json"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(self.successResultOf(treq.json_content(response)), openapi.document(__version__))


class CheckerTests(SynchronousTestCase):
    """The checker the admin tests run finds answers that differ from the document."""

    def test_right_answer(self):
        """An answer as documented has no problem."""
        self.assertEqual(problems("GET", "/client_port", 200, "application/json", {"client_port": 1111}), [])

    def test_extra_field(self):
        """A field the document does not list is a problem (so new fields must be documented)."""
        found = problems("GET", "/client_port", 200, "application/json", {"client_port": 1, "node": "a"})
        self.assertEqual(len(found), 1)
        self.assertIn("node", found[0])

    def test_wrong_type(self):
        """A value of the wrong type is a problem."""
        self.assertTrue(problems("GET", "/port_mapper", 200, "application/json",
                                 {"5555": {"ip": "10.0.0.1", "port": "22", "tag": "default"}}))

    def test_undocumented_status(self):
        """A status the operation does not document is a problem."""
        self.assertTrue(problems("GET", "/client_port", 404, "application/json",
                                 {"result": "failed", "reason": "No."}))

    def test_failure_shape(self):
        """A documented failure status must carry the failure body."""
        self.assertEqual(problems("DELETE", "/channel", 404, "application/json",
                                  {"result": "failed", "reason": "There is no channel 9."}), [])
        self.assertTrue(problems("DELETE", "/channel", 404, "application/json", {"error": "no"}))

    def test_unknown_path_and_method(self):
        """An unknown path may answer 404 (or 401), a known path with a wrong method 405."""
        failure = {"result": "failed", "reason": "x."}
        self.assertEqual(problems("GET", "/nothing", 404, "application/json", failure), [])
        self.assertEqual(problems("PUT", "/port_mapper", 405, "application/json", failure), [])
        self.assertTrue(problems("PUT", "/port_mapper", 200, "application/json", failure))

    def test_path_templates(self):
        """A path with a parameter matches its template; its content type is checked."""
        self.assertEqual(problems("GET", "/ui/app.js", 200, "text/javascript; charset=utf-8", None), [])
        self.assertTrue(problems("GET", "/ui/app.js", 200, "text/html", None))

    def test_recorder_fails_the_test(self):
        """The recording StubTreq raises at the end of a test that saw an undocumented answer."""
        recorder = RecordingStubTreq(self, AdminAPI(FakeServer(Clock())).app.resource())
        recorder.seen.append(("GET", "/client_port", 200, "application/json", {"client_port": "x"}))
        self.assertRaises(AssertionError, recorder.check)
        recorder.seen.clear()
