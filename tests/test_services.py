"""
Tests for portmapper.server.services: children that start one after another
and stop in reverse order, listeners that say when they listen, and the
store as a service.
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from portmapper.server.services import InOrder, Listener, StoreService


class Child(Service):
    """A child whose start and stop end when the test says; records them in C{events}."""

    def __init__(self, name, events, slow=False):
        self.setName(name)
        self.events = events
        self.started = Deferred() if slow else None
        self.stopped = None

    def startService(self):
        super().startService()
        self.events.append(("start", self.name))

    def whenStarted(self):
        return self.started if self.started is not None else succeed(self.name)

    def stopService(self):
        super().stopService()
        self.events.append(("stop", self.name))
        self.stopped = Deferred()
        return self.stopped


class Boom(Exception):
    """A failure of a child."""


class InOrderTests(SynchronousTestCase):
    """InOrder starts children one after another and stops them in reverse order."""

    def setUp(self):
        self.events = []
        self.service = InOrder()
        self.first = Child("first", self.events, slow=True)
        self.second = Child("second", self.events, slow=True)
        self.plain = Service()
        self.plain.setName("plain")
        for child in (self.first, self.second, self.plain):
            child.setServiceParent(self.service)

    def startAll(self):
        self.service.startService()
        self.first.started.callback("one")
        self.second.started.callback("two")

    def test_startWaitsForTheOneBefore(self):
        """A child starts only once the one before it has started."""
        self.service.startService()
        self.assertEqual(self.events, [("start", "first")])
        self.first.started.callback("one")
        self.assertEqual(self.events, [("start", "first"), ("start", "second")])
        self.assertFalse(self.plain.running)
        self.assertNoResult(self.service.ready)

    def test_ready(self):
        """ready fires once all have started, with what each one's start gave by name."""
        self.startAll()
        self.assertTrue(self.plain.running)
        self.assertEqual(self.successResultOf(self.service.ready),
                         {"first": "one", "second": "two", "plain": None})

    def test_failedStart(self):
        """A child that fails to start fails ready, and the children after it do not start."""
        self.service.startService()
        self.first.started.errback(Boom("no disk"))
        self.failureResultOf(self.service.ready, Boom)
        self.assertEqual(self.events, [("start", "first")])
        self.assertFalse(self.second.running)

    def test_noPrivilegedStart(self):
        """privilegedStartService leaves the children alone: a listener would listen out of turn."""
        reactor = MemoryReactorClock()
        Listener(TCP4ServerEndpoint(reactor, 4321), Factory()).setServiceParent(self.service)
        self.service.privilegedStartService()
        self.assertEqual((self.events, reactor.tcpServers), ([], []))

    def test_stopInReverse(self):
        """Children stop last first, each once the one after it has stopped."""
        self.startAll()
        del self.events[:]
        stopping = self.service.stopService()
        self.assertEqual(self.events, [("stop", "second")])
        self.second.stopped.callback(None)
        self.assertEqual(self.events, [("stop", "second"), ("stop", "first")])
        self.assertNoResult(stopping)
        self.first.stopped.callback(None)
        self.successResultOf(stopping)
        self.assertFalse(any(child.running for child in self.service))

    def test_stopWaitsForStartUnderWay(self):
        """Stopped while a child is starting, the service waits for it, then stops it and starts no more."""
        self.service.startService()
        stopping = self.service.stopService()
        self.assertEqual(self.events, [("start", "first")])
        self.first.started.callback("one")
        self.assertEqual(self.events, [("start", "first"), ("stop", "first")])
        self.first.stopped.callback(None)
        self.successResultOf(stopping)
        self.assertFalse(self.second.running)
        self.assertNoResult(self.service.ready)

    def test_failedStopGoesOn(self):
        """A child whose stop fails is logged, and the ones before it still stop."""
        self.startAll()
        stopping = self.service.stopService()
        self.second.stopped.errback(Boom("stuck"))
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        self.assertFalse(self.first.running)
        self.first.stopped.callback(None)
        self.successResultOf(stopping)


class ListenerTests(SynchronousTestCase):
    """Listener is a StreamServerEndpointService that says when it listens, or why it cannot."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.factory = Factory()

    def test_listening(self):
        """Started, it listens; `listening` is told the port, then whenStarted fires with it."""
        told = []
        listener = Listener(TCP4ServerEndpoint(self.reactor, 4321, interface="127.0.0.1"),
                            self.factory, told.append)
        started = listener.whenStarted()
        listener.startService()
        port = self.successResultOf(started)
        self.assertEqual(told, [port])
        self.assertEqual(port.getHost().port, 4321)
        self.assertEqual(self.reactor.tcpServers, [(4321, self.factory, 50, "127.0.0.1")])
        self.successResultOf(listener.stopService())
        self.assertFalse(listener.running)

    def test_cannotListen(self):
        """A failed listen fails whenStarted only: nothing logged, `listening` not told, stopping works."""
        error = CannotListenError("127.0.0.1", 4321, OSError(98, "Address already in use"))

        class Refusing:
            def listen(self, factory):
                return fail(error)

        told = []
        listener = Listener(Refusing(), self.factory, told.append)
        listener.startService()
        self.assertIs(self.failureResultOf(listener.whenStarted(), CannotListenError).value, error)
        self.assertEqual(told, [])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.successResultOf(listener.stopService())


class StoreServiceTests(SynchronousTestCase):
    """StoreService opens the store when started and closes it when stopped."""

    def test_startAndStop(self):
        """whenStarted is the store's start; stopping returns the store's stop."""

        class FakeStore:
            def __init__(self):
                self.opening, self.closing = Deferred(), Deferred()

            def start(self):
                return self.opening

            def stop(self):
                return self.closing

        store = FakeStore()
        service = StoreService(store)
        service.startService()
        started = service.whenStarted()
        self.assertNoResult(started)
        store.opening.callback(None)
        self.successResultOf(started)
        stopping = service.stopService()
        self.assertFalse(service.running)
        self.assertNoResult(stopping)
        store.closing.callback(None)
        self.successResultOf(stopping)
