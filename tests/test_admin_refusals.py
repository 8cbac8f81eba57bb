"""
Tests of requests the admin API's HTTP layer refuses before they reach the
API (:class:`~portmapper.server.services.AdminChannel`): a request line or
header line over 16 KiB, headers too large in all, each answered with the
JSON failure body; on a StringTransport, then once over a real socket.
"""

import json

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.static import Data

from portmapper.server.services import AdminChannel, AdminSite
from tests.e2e import Running, connect, in_thread, recv_all
from tests.linkpair import EndTransport

LONG = b"a" * (AdminChannel.MAX_LENGTH + 100)


def answer(raw):
    """(status, headers as a dict, decoded JSON body) of one raw HTTP answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, headers, json.loads(body)


class AdminChannelTests(SynchronousTestCase):
    def setUp(self):
        root = Resource()
        root.putChild(b"ok", Data(b'{"result": "success"}', "application/json"))
        site = AdminSite(root)
        site.reactor = Clock()  # the connection's idle timeout runs on it
        self.channel = site.buildProtocol(None)
        self.transport = EndTransport()
        self.channel.makeConnection(self.transport)

    def refused(self, status):
        """The one answer written is ``status`` with a JSON failure; the sending side is closed."""
        code, headers, body = answer(self.transport.value())
        self.assertEqual(code, status)
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(body["result"], "failed")
        self.assertTrue(self.transport.write_closed)
        return body["reason"]

    def test_longRequestLine(self):
        """A request line over 16 KiB is answered 414 with the JSON failure body."""
        self.channel.dataReceived(b"GET /" + LONG + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.refused(414),
                         f"The request line is longer than {AdminChannel.MAX_LENGTH} bytes.")

    def test_longRequestLineInPieces(self):
        """A request line that grows past 16 KiB over several reads, with no end yet, gets 414 too."""
        for _ in range(3):
            self.channel.dataReceived(b"GET /" + b"b" * 8000)
        self.refused(414)

    def test_nothingReadAfterRefusal(self):
        """After the refusal the connection reads no more requests."""
        self.channel.dataReceived(b"GET /" + LONG)
        written = self.transport.value()
        self.channel.dataReceived(b" HTTP/1.1\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.transport.value(), written)

    def test_longHeaderLine(self):
        """A header line over 16 KiB is answered 431."""
        self.channel.dataReceived(b"GET /ok HTTP/1.1\r\nX-Big: " + LONG + b"\r\n\r\n")
        self.assertIn("header line", self.refused(431))

    def test_headersTooLargeInAll(self):
        """Headers over 16 KiB in all (each line short) are a JSON 400, not Twisted's bare one."""
        headers = b"".join(b"X-%d: %s\r\n" % (i, b"c" * 1000) for i in range(20))
        self.channel.dataReceived(b"GET /ok HTTP/1.1\r\n" + headers + b"\r\n")
        self.refused(400)

    def test_normalRequestsStillAnswered(self):
        """Requests within the limits are answered as before, twice on one connection."""
        for _ in range(2):
            self.channel.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = self.transport.value()
        self.assertEqual(raw.count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(self.transport.write_closed)


class AdminRefusalOverSocketTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_longRequestLineAnswered(self):
        """Over a real socket, a 20 KiB request line gets its 414 JSON answer before the close."""
        running = yield Running(self, self.mktemp()).start()
        port = int(running.admin.rsplit(":", 1)[1])

        def ask():
            s = connect(port)
            try:
                s.sendall(b"GET /channel?x=" + LONG + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                return recv_all(s)
            finally:
                s.close()

        status, _, body = answer((yield in_thread(ask)))
        self.assertEqual((status, body["result"]), (414, "failed"))
