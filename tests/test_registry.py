"""
Tests for L{portmapper.server.registry}: ids, round-robin client choice and
the lookups the server makes over its live state.
"""

from twisted.internet.defer import Deferred, fail
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from portmapper.server.meter import Meter
from portmapper.server.registry import (
    CLOSED, CONNECTING, MAX_ID_BLOCK, WORKING, IdBlocks, Mapping, Registry,
)


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

    def test_registriesAreIndependent(self):
        """Two registries number their ids separately."""
        one, two = Registry(), Registry()
        one.new_client("10.0.0.1", 4000, "default", 0.0)
        self.assertEqual(two.new_client("10.0.0.1", 4000, "default", 0.0).client_id, 1)


class FakeDisk:
    """Stands for the store's reserve_ids: each reservation waits until the test writes it."""

    def __init__(self, next_free=1):
        self.next_free = next_free
        self.pending = []  # (count, Deferred) not yet written

    def reserve(self, count):
        d = Deferred()
        self.pending.append((count, d))
        return d

    def write(self):
        """The oldest reservation reaches the disk."""
        count, d = self.pending.pop(0)
        first, self.next_free = self.next_free, self.next_free + count
        d.callback(first)


class IdBlocksTests(SynchronousTestCase):
    """Ids are handed out only from blocks reserved on disk, the next reserved ahead."""

    def started(self, size=10, next_free=1):
        disk = FakeDisk(next_free)
        ids = IdBlocks("channel ids", disk.reserve, size)
        d = ids.start()
        disk.write()
        self.successResultOf(d)
        return disk, ids

    def test_nothingBeforeTheFirstBlock(self):
        """Before the first block is on disk take() gives None; then ids start where the disk says."""
        disk = FakeDisk(2085)
        ids = IdBlocks("channel ids", disk.reserve, 10)
        ids.start()
        self.assertIsNone(ids.take())
        disk.write()
        self.assertEqual(ids.take(), 2085)

    def test_nextBlockReservedAtHalf(self):
        """Half of a block used reserves the next one, once; ids run on into it without a gap."""
        disk, ids = self.started(size=10)
        self.assertEqual([ids.take() for _ in range(4)], [1, 2, 3, 4])
        self.assertEqual(disk.pending, [])
        self.assertEqual(ids.take(), 5)
        self.assertEqual(len(disk.pending), 1)
        self.assertEqual([ids.take() for _ in range(5)], [6, 7, 8, 9, 10])
        self.assertEqual(len(disk.pending), 1)  # only one reservation in flight
        disk.write()
        self.assertEqual([ids.take() for _ in range(3)], [11, 12, 13])

    def test_fasterThanTheDisk(self):
        """Ids wanted before the next block is on disk get None, then blocks double."""
        disk, ids = self.started(size=10)
        taken = [ids.take() for _ in range(12)]
        self.assertEqual(taken, list(range(1, 11)) + [None, None])
        warnings = []
        globalLogPublisher.addObserver(warnings.append)
        self.addCleanup(globalLogPublisher.removeObserver, warnings.append)
        disk.write()
        self.assertEqual([e["missed"] for e in warnings if "missed" in e], [2])
        self.assertEqual(ids.take(), 11)
        self.assertEqual([ids.take() for _ in range(4)], [12, 13, 14, 15])
        self.assertEqual([count for count, _ in disk.pending], [20])
        disk.write()
        self.assertEqual(disk.next_free, 41)

    def test_neverAboveMaximum(self):
        """Blocks grow no larger than MAX_ID_BLOCK."""
        disk, ids = self.started(size=MAX_ID_BLOCK)
        ids._next = ids._end  # the block is used up
        self.assertIsNone(ids.take())
        self.assertEqual([count for count, _ in disk.pending], [MAX_ID_BLOCK])

    def test_failedReservationRetried(self):
        """A reservation that fails is logged, and the next take past half tries again."""
        disk, ids = self.started(size=4)
        self.assertEqual([ids.take(), ids.take()], [1, 2])
        _, d = disk.pending.pop(0)
        d.errback(OSError("disk full"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(ids.take(), 3)
        self.assertEqual(len(disk.pending), 1)
        disk.write()
        self.assertEqual([ids.take() for _ in range(3)], [4, 1 + 4, 1 + 5])

    def test_registryUsesBlocks(self):
        """A registry given IdBlocks numbers clients and channels from them, None when out."""
        disk, channel_ids = self.started(size=2, next_free=500)
        client_disk, client_ids = self.started(size=2, next_free=7)
        registry = Registry()
        registry.use_ids(client_ids, channel_ids)
        self.assertEqual(registry.new_client("10.0.0.1", 4000, "default", 0.0).client_id, 7)
        self.assertEqual(registry.new_channel(5555, "192.0.2.7", 50000, 0.0).channel_id, 500)
        self.assertEqual(registry.new_channel_id(), 501)
        self.assertIsNone(registry.new_channel(5555, "192.0.2.7", 50001, 0.0))
        self.assertEqual(list(registry.channels), [500])


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
