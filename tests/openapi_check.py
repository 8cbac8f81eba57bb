"""
Checking answers against the admin API's OpenAPI document: a StubTreq that
records every answer a test sees and, when the test ends, checks each one
against ``server/openapi.py``'s document (status, content type, JSON body),
so the document cannot drift from the code.
"""

import json
import re
from urllib.parse import urlsplit

import jsonschema
import treq
from treq.testing import StubTreq

from portmapper.server import openapi

DOCUMENT = openapi.document("test")
_TEMPLATE = re.compile(r"\{[^}]+\}")


def _match(path):
    """The document's path template that ``path`` is, or None."""
    for template in DOCUMENT["paths"]:
        if re.fullmatch(_TEMPLATE.sub("[^/]+", template), path):
            return template
    return None


def _schema_of(response):
    """The response object, with a $ref to components/responses followed."""
    target = response.get("$ref")
    if target:
        return DOCUMENT["components"]["responses"][target.rsplit("/", 1)[1]]
    return response


def problems(method, path, status, content_type, body):
    """What is wrong with this answer by the document: a list of sentences (empty if nothing)."""
    template = _match(path)
    failure = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Failure"}}}}
    if template is None:  # the token is checked before the path
        expected = {"404": failure, "401": failure}
    elif method.lower() not in DOCUMENT["paths"][template]:
        expected = {"405": failure, "401": failure}
    elif method.lower() == "head":
        return []
    else:
        expected = DOCUMENT["paths"][template][method.lower()]["responses"]
    where = f"{method} {path} -> {status}"
    if str(status) not in expected:
        return [f"{where}: status not in the document (it has {sorted(expected)})"]
    content = _schema_of(expected[str(status)])["content"]
    media = (content_type or "").split(";")[0].strip()
    if media not in content:
        return [f"{where}: content type {media!r} not in the document (it has {sorted(content)})"]
    if media != "application/json":
        return []
    schema = {**content[media]["schema"], "components": DOCUMENT["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{where}: {error.message} at {list(error.absolute_path)}"
            for error in validator.iter_errors(body)]


class RecordingStubTreq:
    """A StubTreq over ``resource`` whose every answer is checked against the
    document once ``testcase`` ends (a mismatch fails that test)."""

    def __init__(self, testcase, resource):
        self._stub = StubTreq(resource)
        self.seen = []  # (method, path, status, content type, JSON body or None)
        testcase.addCleanup(self.check)

    def request(self, method, url, **kwargs):
        d = self._stub.request(method, url, **kwargs)
        return d.addCallback(self._record, method, urlsplit(url).path)

    def get(self, url, **kwargs):
        return self.request("GET", url, **kwargs)

    def post(self, url, **kwargs):
        return self.request("POST", url, **kwargs)

    def delete(self, url, **kwargs):
        return self.request("DELETE", url, **kwargs)

    def flush(self):
        self._stub.flush()

    def _record(self, response, method, path):
        (content_type,) = response.headers.getRawHeaders("content-type") or [None]

        def seen(body):
            is_json = (content_type or "").startswith("application/json") and method != "HEAD"
            self.seen.append((method, path, response.code, content_type,
                              json.loads(body) if is_json else None))

        treq.content(response).addCallback(seen)
        return response

    def check(self):
        found = [p for answer in self.seen for p in problems(*answer)]
        if found:
            raise AssertionError("answers that differ from the OpenAPI document:\n" + "\n".join(found))
