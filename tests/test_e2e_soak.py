"""
End-to-end soak: thousands of channels through an in-process server and a
real ``twistd portmapper-client`` process to an echo target, each user
doing one of a seeded random mix of full transfers, half-closes, early
closes and resets.  Every completed transfer comes back byte-exact, and
at the end nothing is left: no open channel, the server's descriptors back
to where they were, every channel in history with a reason its case allows.
"""

import os
import random
import socket
import struct
import time
from collections import defaultdict

from twisted.internet import reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from tests.e2e import Backend, Echo, Running, connect, in_thread, recv_all, recv_exactly, wait_for
from tests.test_e2e_crash import WAIT, poll
from tests.test_e2e_faults import Client
from tests.test_e2e_timeouts import FD_SLACK, open_fds

# 2,000 channels run in about 5 s on the 2-core test machine; enough for
# each case to occur hundreds of times while the test stays well under a minute.
CHANNELS = 2000
WORKERS = 8  # users at once (threads of the reactor's pool, which has 10)
SEED = 20240911
MAX_SIZE = 64 * 1024
PAGE = 10000  # the API's largest page of history

# The reasons history may give each case: the user ends first in every one
# (the echo target only ever ends after it), cleanly or by a broken connection.
EXPECTED = {
    "full": {"user closed"},  # sends, reads it all back, closes
    "half": {"user closed"},  # sends, half-closes, reads to the end
    "early": {"user closed"},  # sends part, closes without reading
    "reset": {"user closed"},  # sends part, closes with SO_LINGER 0 (RST)
}


@implementer(IHalfCloseableProtocol)
class HalfCloseEcho(Echo):
    """An echo target that, told the user is done sending, closes once all is echoed."""

    def readConnectionLost(self):
        self.transport.loseConnection()  # after what is buffered has gone

    def writeConnectionLost(self):
        pass


def user(port, case, data):
    """One user of ``case`` on ``port``: (its source port, whether it ended as it should)."""
    s = connect(port)
    try:
        # A source port is used again once its user is gone: the connect
        # time tells apart the users that had it, in the order of their channels.
        source = s.getsockname()[1], time.monotonic()
        if case == "full":
            s.sendall(data)
            return source, recv_exactly(s, len(data)) == data
        if case == "half":
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            return source, recv_all(s) == data
        s.sendall(data[:len(data) // 2])
        if case == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return source, True
    finally:
        s.close()


def worker(port, plan):
    """Run ``plan`` (a list of (case, data)) one user after another; their results."""
    return [(case, len(data), *user(port, case, data)) for case, data in plan]


class SoakTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def test_soak(self):
        """2,000 channels of mixed endings: byte-exact transfers, no leak, a fitting reason for each."""
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("counting open descriptors needs /proc/self/fd")
        running = yield Running(self, self.mktemp()).start()
        server = running.server
        client = yield Client(self, server.client_port).up()
        yield wait_for(lambda: client.welcomed[-1] in server.registry.clients, timeout=WAIT,
                       what="the client in the registry")
        public = yield running.map(Backend(HalfCloseEcho).listen(self))
        fds_before = open_fds()

        rng = random.Random(SEED)
        plans = [[] for _ in range(WORKERS)]
        for i in range(CHANNELS):
            data = rng.randbytes(rng.randint(1, MAX_SIZE))
            plans[i % WORKERS].append((rng.choice(sorted(EXPECTED)), data))
        started = reactor.seconds()
        results = yield gatherResults([in_thread(worker, public, plan) for plan in plans])
        results = [r for rs in results for r in rs]
        ran = reactor.seconds() - started
        self.assertEqual([r for r in results if not r[3]], [])  # every transfer byte-exact

        yield wait_for(lambda: not server.registry.channels, timeout=WAIT,
                       what="every channel to close")
        code, body = yield running.api("GET", "/channel")
        self.assertEqual(body, {str(public): []})
        fds = []
        yield wait_for(lambda: fds.append(open_fds()) or fds[-1] <= fds_before + FD_SLACK,
                       timeout=WAIT, what="the descriptors given back")

        @inlineCallbacks
        def history():
            code, body = yield running.api("GET", "/channel_history", port=str(public),
                                           limit=str(PAGE))
            return body["history"]

        rows = yield poll(history, "every channel in history", lambda rows: len(rows) == CHANNELS)
        by_source = defaultdict(list)
        for row in sorted(rows, key=lambda row: row["channel_id"]):
            by_source[row["user_port"]].append(row)
        unexpected = []
        for case, size, (source, _), _ in sorted(results, key=lambda r: r[2][1]):
            row = by_source[source].pop(0)
            if row["close_reason"] not in EXPECTED[case]:
                unexpected.append((case, row["close_reason"]))
            if case in ("full", "half"):
                self.assertEqual((row["recv_bytes"], row["send_bytes"]), (size, size))
        self.assertEqual(unexpected, [])
        self.assertEqual([rows for rows in by_source.values() if rows], [])
        counts = {case: sum(r[0] == case for r in results) for case in EXPECTED}
        print(f"\n  soak: {CHANNELS} channels in {ran:.1f} s {counts}; "
              f"server fds {fds_before} before, {fds[-1]} after")
