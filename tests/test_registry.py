"""
Tests for L{portmapper.server.registry}: ids, round-robin client choice and
the lookups the server makes over its live state.
"""

from twisted.trial.unittest import SynchronousTestCase

from portmapper.server.meter import Meter
from portmapper.server.registry import CLOSED, CONNECTING, WORKING, Mapping, Registry


class IdTests(SynchronousTestCase):
    """Client and channel ids increase and are never handed out twice."""

    def test_clientIds(self):
        """Client ids start at 1 and increase by one."""
        registry = Registry()
        ids = [registry.new_client("10.0.0.1", 4000 + i, "default", 0.0).client_id
               for i in range(3)]
        self.assertEqual(ids, [1, 2, 3])

    def test_channelIds(self):
        """Channel ids start at 1 and are counted apart from client ids."""
        registry = Registry()
        registry.new_client("10.0.0.1", 4000, "default", 0.0)
        registry.new_client("10.0.0.1", 4001, "default", 0.0)
        ids = [registry.new_channel(5555, "192.0.2.7", 50000 + i, 0.0).channel_id
               for i in range(3)]
        self.assertEqual(ids, [1, 2, 3])

    def test_notReusedAfterRemoval(self):
        """An id freed by a closed client or channel is not given to the next one."""
        registry = Registry()
        first = registry.new_client("10.0.0.1", 4000, "default", 0.0)
        channel = registry.new_channel(5555, "192.0.2.7", 50000, 0.0)
        del registry.clients[first.client_id]
        del registry.channels[channel.channel_id]
        self.assertEqual(registry.new_client("10.0.0.1", 4001, "default", 1.0).client_id, 2)
        self.assertEqual(registry.new_channel(5555, "192.0.2.7", 50001, 1.0).channel_id, 2)

    def test_seedIds(self):
        """After seed_ids the numbering continues after the ids given."""
        registry = Registry()
        registry.seed_ids(41, 1000)
        self.assertEqual(registry.new_client("10.0.0.1", 4000, "default", 0.0).client_id, 42)
        self.assertEqual(registry.new_client("10.0.0.1", 4001, "default", 0.0).client_id, 43)
        self.assertEqual(registry.new_channel(5555, "192.0.2.7", 50000, 0.0).channel_id, 1001)

    def test_seedIdsNone(self):
        """seed_ids(None, None), an empty history, starts the numbering at 1."""
        registry = Registry()
        registry.seed_ids(None, None)
        self.assertEqual(registry.new_client("10.0.0.1", 4000, "default", 0.0).client_id, 1)
        self.assertEqual(registry.new_channel(5555, "192.0.2.7", 50000, 0.0).channel_id, 1)

    def test_seedIdsNeverGoesBack(self):
        """seed_ids with ids lower than ones already handed out does not reuse them."""
        registry = Registry()
        for i in range(3):
            registry.new_client("10.0.0.1", 4000 + i, "default", 0.0)
            registry.new_channel(5555, "192.0.2.7", 50000 + i, 0.0)
        registry.seed_ids(1, None)
        self.assertEqual(registry.new_client("10.0.0.1", 4100, "default", 0.0).client_id, 4)
        self.assertEqual(registry.new_channel(5555, "192.0.2.7", 50100, 0.0).channel_id, 4)

    def test_registriesAreIndependent(self):
        """Two registries number their ids separately."""
        one, two = Registry(), Registry()
        one.new_client("10.0.0.1", 4000, "default", 0.0)
        self.assertEqual(two.new_client("10.0.0.1", 4000, "default", 0.0).client_id, 1)


class RecordTests(SynchronousTestCase):
    """new_client and new_channel build and keep the records."""

    def test_newClient(self):
        """new_client keeps a WORKING session with its address, tag, link and a fresh meter."""
        registry = Registry()
        link = object()
        session = registry.new_client("10.0.0.7", 40000, "lab", 123.5, link=link)
        self.assertIs(registry.clients[session.client_id], session)
        self.assertEqual((session.ip, session.port, session.tag), ("10.0.0.7", 40000, "lab"))
        self.assertIs(session.link, link)
        self.assertEqual(session.state, WORKING)
        self.assertEqual(session.init_time, 123.5)
        self.assertEqual(session.meter.created, 123.5)
        self.assertEqual(session.channels, set())

    def test_newChannel(self):
        """new_channel keeps a CONNECTING channel on its public port with a meter started now."""
        registry = Registry()
        user = object()
        channel = registry.new_channel(5555, "192.0.2.7", 50000, 9.0, user=user)
        self.assertIs(registry.channels[channel.channel_id], channel)
        self.assertEqual((channel.public_port, channel.user_ip, channel.user_port),
                         (5555, "192.0.2.7", 50000))
        self.assertIs(channel.user, user)
        self.assertEqual(channel.state, CONNECTING)
        self.assertIsNone(channel.client_id)
        self.assertEqual(channel.init_time, 9.0)

    def test_mappingJSON(self):
        """A mapping's JSON form is its target and tag."""
        mapping = Mapping(5555, "192.168.10.15", 22, "lab")
        self.assertEqual(mapping.as_json(), {"ip": "192.168.10.15", "port": 22, "tag": "lab"})


class PickClientTests(SynchronousTestCase):
    """pick_client chooses among the WORKING clients of one tag, in turn."""

    def setUp(self):
        self.registry = Registry()
        add = self.registry.new_client
        self.a1 = add("10.0.0.1", 4001, "a", 0.0)
        self.b1 = add("10.0.0.2", 4002, "b", 0.0)
        self.a2 = add("10.0.0.3", 4003, "a", 0.0)
        self.a2.state = CLOSED
        self.a3 = add("10.0.0.4", 4004, "a", 0.0)
        self.a4 = add("10.0.0.5", 4005, "a", 0.0)

    def test_roundRobin(self):
        """Picks cycle through the tag's WORKING clients, skipping closed ones and other tags."""
        picks = [self.registry.pick_client("a") for _ in range(6)]
        self.assertEqual(picks, [self.a1, self.a3, self.a4, self.a1, self.a3, self.a4])

    def test_onlyTag(self):
        """The only client of a tag is picked every time."""
        self.assertEqual([self.registry.pick_client("b") for _ in range(3)], [self.b1] * 3)

    def test_tagsTakeTurnsSeparately(self):
        """Picking for one tag does not move another tag's turn."""
        self.assertIs(self.registry.pick_client("a"), self.a1)
        self.registry.pick_client("b")
        self.registry.pick_client("b")
        self.assertIs(self.registry.pick_client("a"), self.a3)

    def test_unknownTag(self):
        """A tag no client has gives None."""
        self.assertIsNone(self.registry.pick_client("c"))

    def test_noWorkingClient(self):
        """A tag whose clients are all closed gives None."""
        self.b1.state = CLOSED
        self.assertIsNone(self.registry.pick_client("b"))

    def test_removedClient(self):
        """A client removed from the registry is no longer picked."""
        del self.registry.clients[self.b1.client_id]
        self.assertIsNone(self.registry.pick_client("b"))

    def test_empty(self):
        """An empty registry gives None."""
        self.assertIsNone(Registry().pick_client("default"))

    def test_tagIsExact(self):
        """Tags match exactly: 'A' is not 'a'."""
        self.assertIsNone(self.registry.pick_client("A"))


class LookupTests(SynchronousTestCase):
    """channels_on_port and meters."""

    def setUp(self):
        self.registry = Registry()
        self.client = self.registry.new_client("10.0.0.1", 4000, "default", 0.0)
        self.c1 = self.registry.new_channel(5555, "192.0.2.7", 50000, 0.0)
        self.c2 = self.registry.new_channel(6666, "192.0.2.7", 50001, 0.0)
        self.c3 = self.registry.new_channel(5555, "192.0.2.8", 50002, 0.0)

    def test_channelsOnPort(self):
        """channels_on_port lists exactly the channels of that public port."""
        self.assertEqual(self.registry.channels_on_port(5555), [self.c1, self.c3])
        self.assertEqual(self.registry.channels_on_port(6666), [self.c2])

    def test_channelsOnUnusedPort(self):
        """A port without channels gives an empty list."""
        self.assertEqual(self.registry.channels_on_port(7777), [])

    def test_meters(self):
        """meters() yields the meter of every live client and channel, once each."""
        meters = list(self.registry.meters())
        self.assertEqual(len(meters), 4)
        self.assertTrue(all(isinstance(m, Meter) for m in meters))
        expected = [self.client.meter, self.c1.meter, self.c2.meter, self.c3.meter]
        self.assertEqual({id(m) for m in meters}, {id(m) for m in expected})

    def test_metersAfterRemoval(self):
        """Meters of removed clients and channels are no longer yielded."""
        del self.registry.channels[self.c2.channel_id]
        del self.registry.clients[self.client.client_id]
        self.assertEqual({id(m) for m in self.registry.meters()},
                         {id(self.c1.meter), id(self.c3.meter)})

    def test_metersIsFresh(self):
        """Each call to meters() sees the registry as it is then."""
        before = list(self.registry.meters())
        channel = self.registry.new_channel(5555, "192.0.2.9", 50003, 1.0)
        after = list(self.registry.meters())
        self.assertEqual(len(after), len(before) + 1)
        self.assertIn(id(channel.meter), {id(m) for m in after})
