"""
The services the server is composed of, and the order they run in.

``server/tap.py`` builds an :class:`InOrder`, a ``MultiService`` whose
children start one after another and stop in reverse order: the store
must be open before the stored mappings are restored, those must listen
again before the admin API answers, and at the end nothing may be
accepted while channels close, and their history must reach the store
before it closes.  A plain ``MultiService`` starts and stops every child
at once.

A child that takes time to start (opening a file, restoring mappings,
listening) has a ``whenStarted()`` method: the one Deferred of its start,
firing once it is done.  :class:`Listener` and :class:`StoreService` are
two such children; the server itself (``server/core.py``) is another.
"""

import json

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Site
from zope.interface import implementer

log = Logger()


def _when_started(child):
    when = getattr(child, "whenStarted", None)
    return succeed(None) if when is None else when()


class InOrder(MultiService):
    """
    Children start one after another, each once the one before has started
    (see the module docstring), and stop in reverse order, each once the
    one after it has stopped.

    :ivar ready: fires once every child has started, with
        ``{child name: what its whenStarted() gave}`` (a listener gives its
        listening port), or fails with the first child's failure; the
        children after it are not started.  A service stopped before it
        has started never fires it.
    """

    def __init__(self):
        super().__init__()
        self.ready = Deferred()
        self._starting = succeed(None)

    def privilegedStartService(self):
        # Children do all their work in startService, in turn: a listener
        # that bound its port here would take connections too early.
        Service.privilegedStartService(self)

    def startService(self):
        Service.startService(self)
        self._starting = self._start_children()

    @inlineCallbacks
    def _start_children(self):
        started = {}
        try:
            for child in list(self):
                if not self.running:
                    return
                child.startService()
                started[child.name] = yield _when_started(child)
        except Exception:
            self.ready.errback()
        else:
            self.ready.callback(started)

    @inlineCallbacks
    def stopService(self):
        Service.stopService(self)
        yield self._starting  # a start under way finishes (or fails) first
        for child in reversed(list(self)):
            if not child.running:
                continue
            try:
                yield maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {name} failed; stopping the others", name=child.name)


@implementer(IStreamServerEndpoint)
class _Told:
    """An endpoint that hands the outcome of a listen to ``told`` and returns what it gives."""

    def __init__(self, endpoint, told):
        self._endpoint = endpoint
        self._told = told

    def listen(self, factory):
        return maybeDeferred(self._endpoint.listen, factory).addBoth(self._told)


class Listener(StreamServerEndpointService):
    """
    A ``StreamServerEndpointService`` that tells when it listens.

    ``whenStarted()`` fires with the listening port, or fails with why it
    could not listen; the failure goes there only (the base class would log
    it with a traceback and carry on).  ``listening``, if given, is called
    with the listening port before that.
    """

    def __init__(self, endpoint, factory, listening=None):
        super().__init__(_Told(endpoint, self._listened), factory)
        self._listening = listening
        self._started = Deferred()

    def whenStarted(self):
        return self._started

    def _listened(self, result):
        if isinstance(result, Failure):
            self._started.errback(result)
            return None  # what the base class keeps when a listen failed
        if self._listening is not None:
            self._listening(result)
        self._started.callback(result)
        return result


class AdminChannel(HTTPChannel):
    """
    The admin API's HTTP connection: a request Twisted refuses before it
    reaches the API is answered with the JSON failure body too.

    Twisted reads a request line or header line of up to 16 KiB; a longer one
    (``lineLengthExceeded``) it dropped without a word.  Here it is answered
    414 (the request line: the URI is too long) or 431 (a header line), and a
    request it finds malformed 400, each as ``{"result": "failed", ...}``.
    The connection then reads no more requests and closes its sending side;
    the idle timeout ends it if the peer never closes.
    """

    _in_headers = False  # the request line of the current request has been read
    _refused = False  # answered with a refusal: nothing more is read

    def dataReceived(self, data):
        if not self._refused:
            super().dataReceived(data)

    def rawDataReceived(self, data):
        if not self._refused:
            super().rawDataReceived(data)

    def lineReceived(self, line):
        if self._refused:
            return
        if line:  # an empty line before a request line is skipped; one after it ends the headers
            self._in_headers = True
        super().lineReceived(line)

    def allHeadersReceived(self):
        self._in_headers = False  # the next line is the next request's
        super().allHeadersReceived()

    def lineLengthExceeded(self, line):
        if self._in_headers:
            self._refuse(431, b"Request Header Fields Too Large",
                         f"A header line is longer than {self.MAX_LENGTH} bytes.")
        else:
            self._refuse(414, b"URI Too Long",
                         f"The request line is longer than {self.MAX_LENGTH} bytes.")

    def _respondToBadRequestAndDisconnect(self):
        self._refuse(400, b"Bad Request", "The HTTP request is malformed or its headers too large.")

    def _refuse(self, status, phrase, reason):
        body = json.dumps({"result": "failed", "reason": reason}).encode("utf-8")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, phrase, len(body), body))
        self._refused = True
        self.clearLineBuffer()
        self._networkProducer.unregisterProducer()
        # Only our side closes: a close with the peer's bytes unread would be
        # a reset, which may destroy the answer before the peer reads it.
        self.transport.loseWriteConnection()


class AdminSite(Site):
    """
    The admin API's ``Site``: no tracebacks in answers, JSON answers to
    requests refused before they reach the API (:class:`AdminChannel`), and
    its open (kept-alive) connections are dropped when its listener stops,
    so that no request reaches a server that has stopped.
    """

    protocol = AdminChannel  # plain HTTP/1.1: no HTTP/2 wrapper over plain TCP
    displayTracebacks = False
    noisy = False

    def __init__(self, resource):
        super().__init__(resource)
        self.open_channels = set()

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        connection_lost = channel.connectionLost

        def lost(reason):
            self.open_channels.discard(channel)
            connection_lost(reason)

        channel.connectionLost = lost
        self.open_channels.add(channel)
        return channel

    def stopFactory(self):
        for channel in list(self.open_channels):
            # Twisted wraps each HTTPChannel; the wrapped one has the transport.
            transport = getattr(getattr(channel, "_channel", channel), "transport", None)
            if transport is not None:
                transport.abortConnection()
        super().stopFactory()


class StoreService(Service):
    """Opens ``store`` (a :class:`~portmapper.server.store.Store`) when started and
    closes it, once what is pending is written, when stopped."""

    def __init__(self, store):
        self.store = store
        self._started = None

    def startService(self):
        super().startService()
        self._started = self.store.start()

    def whenStarted(self):
        return self._started

    def stopService(self):
        super().stopService()
        return self.store.stop()
