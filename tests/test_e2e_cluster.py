"""
End-to-end: a cluster of three real ``twistd -n portmapper`` nodes on one
PostgreSQL (127.0.0.2, .3 and .4) and one real ``twistd -n
portmapper-client`` linked to all three (see :mod:`tests.cluster`).
Skipped, with the reason, where PostgreSQL or psycopg is absent.
"""

import os

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests import pg
from tests.cluster import common_free_port, start_cluster
from tests.e2e import Backend, Echo, echo_roundtrip, in_thread


class ClusterTests(TestCase):
    """Three nodes on the run's PostgreSQL, one client linked to each."""

    timeout = 120

    def setUp(self):
        self.database = pg.database()

    @inlineCallbacks
    def test_users_through_each_node(self):
        """Users through each node reach the target byte-exact."""
        nodes, client = yield start_cluster(self, self.database)
        target = Backend(Echo).listen(self)
        data = os.urandom(1024 * 1024)
        for node in nodes:
            port = common_free_port()
            code, body = yield node.api("POST", "/port_mapper", port=str(port),
                                        mapper_ip="127.0.0.1", mapper_port=str(target),
                                        mapper_tag="default")
            self.assertEqual(code, 200, body)
            got = yield in_thread(lambda: echo_roundtrip(port, data, host=node.address))
            self.assertEqual(got, data)
