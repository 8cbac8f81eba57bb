"""
The client (agent): one link to each server it is given, and a target
connection for each channel a server opens on its link.

The link's core answers the server's HELLO with the HMAC proof of the
token and its tag; ``ClientLinkHandler`` then serves the channels the server
opens: it checks the allow-list, connects to the target (a name is resolved
off the reactor thread) and accepts the channel, or refuses it with the
reason the OS gave.
``makeClientService`` keeps the links up: one ``ClientService`` per server
redials it forever with capped exponential backoff and jitter, on its own,
so losing one server leaves the links to the others alone.  ``ClientService`` counts a
connection as made once TCP connects; a link the server refuses (a wrong
token, say) must back off too, so the retry policy also counts the links
that ended before the server welcomed them.
"""

import random

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.error import ConnectError, TimeoutError
from twisted.internet.protocol import ClientFactory, Factory
from twisted.logger import Logger

from zope.interface import implementer

from portmapper.protocol import frames
from portmapper.protocol.connection import CLIENT, Connection
from portmapper.transport.dial import connect_tcp
from portmapper.transport.link import ChannelEnd, ILinkOwner, LinkProtocol
from portmapper.transport.endpoints import link_client_endpoint

log = Logger()


class TargetProtocol(ChannelEnd):
    """The connection to a mapping's target, carrying one channel."""

    def connectionMade(self):
        super().connectionMade()
        self.factory.connected(self)


class TargetDial(ClientFactory):
    """
    Dialling one channel's target; tells the handler once, either way.

    An address is dialled with ``connectTCP`` (by way of
    :func:`~portmapper.transport.dial.connect_tcp`, which spares it a few
    system calls); a name goes through ``HostnameEndpoint``, which resolves
    it off the reactor thread.  (The endpoint also wraps the protocol, a
    thread hop and an extra call per read that addresses, the common case,
    do without.)
    """

    protocol = TargetProtocol
    noisy = False  # one per channel: too many to log

    def __init__(self, handler, link, channel_id, host, port, preamble=b""):
        self.handler = handler
        self.preamble = preamble  # written to the target before the channel's data
        self.link = link
        self.channel_id = channel_id
        self.host = host
        self.port = port
        self._cancel = None
        self.cancelled = False

    def start(self, reactor, timeout):
        # Twisted's checks (inet_pton) cost a sixth of ipaddress.ip_address, once per channel.
        if isIPAddress(self.host) or isIPv6Address(self.host):
            connector = connect_tcp(reactor, self.host, self.port, self, timeout=timeout)
            self._cancel = connector.stopConnecting
        else:
            d = HostnameEndpoint(reactor, self.host, self.port, timeout=timeout).connect(self)
            d.addErrback(self._failed)
            self._cancel = d.cancel

    def cancel(self):
        """The server gave up on this channel, or the link is gone."""
        self.cancelled = True
        self._cancel()

    def connected(self, target):
        self.handler.targetConnected(self, target)

    def clientConnectionFailed(self, connector, reason):
        self._failed(reason)

    def _failed(self, failure):
        if not self.cancelled:
            self.handler.targetFailed(self, failure)


@implementer(ILinkOwner)
class ClientLinkHandler:
    """
    What the client's link asks of it: connect each channel's target
    (checking the allow-list), and keep count of links that ended before the
    server welcomed them (for the reconnection back-off).
    """

    def __init__(self, factory):
        self.factory = factory
        self.settings = factory.settings
        self.reactor = factory.reactor
        self.client_id = None  # given by the server's WELCOME
        self._dials = {}  # channel id -> TargetDial

    def authenticate(self, link, method, proof, tag, nonce):
        raise NotImplementedError("only the server authenticates")

    def welcomed(self, link, client_id):
        self.client_id = client_id
        log.info("connected to the server as client {client_id} with tag {tag} via {server}",
                 client_id=client_id, tag=self.settings.tag, server=self.factory.server)
        self.factory.unwelcomed = 0

    def draining(self, link, reason):
        pass  # the server opens no new channels here; the open ones carry on

    def linkClosing(self, link, reason, protocol_error):
        pass  # linkLost follows, and cancels what is under way

    def linkLost(self, link, reason, protocol_error):
        for dial in list(self._dials.values()):
            dial.cancel()
        self._dials.clear()
        self.factory.linkLost(link)
        if self.client_id is None:
            self.factory.unwelcomed += 1
            log.warn("could not link up with the server {server}: {why}",
                     server=self.factory.server, why=reason)
        else:
            log.info("link to the server {server} lost: {why}", server=self.factory.server,
                     why=reason)

    # -- channels ---------------------------------------------------------------

    def openRequested(self, link, channel_id, host, port, preamble=b""):
        allow = self.settings.allow
        if allow is not None and not allow.allows(host, port):
            log.warn("refused to open {host}:{port}: not in the allow-list", host=host, port=port)
            link.refuseChannel(channel_id, frames.FAIL_DENIED,
                               f"{host}:{port} is not in this client's allow-list")
            return
        dial = TargetDial(self, link, channel_id, host, port, preamble)
        self._dials[channel_id] = dial
        dial.start(self.reactor, self.settings.connect_timeout)

    def openCancelled(self, link, channel_id):
        dial = self._dials.pop(channel_id, None)
        if dial is not None:
            dial.cancel()

    def targetConnected(self, dial, target):
        del self._dials[dial.channel_id]
        if dial.preamble:
            target.transport.write(dial.preamble)
        dial.link.acceptChannel(dial.channel_id, target)

    def targetFailed(self, dial, failure):
        channel_id, host, port = dial.channel_id, dial.host, dial.port
        del self._dials[channel_id]
        why = failure.getErrorMessage()
        if failure.check(TimeoutError):
            code = frames.FAIL_TIMEOUT
        elif failure.check(ConnectError):
            code = frames.FAIL_REFUSED
        else:
            log.failure("connecting to {host}:{port} failed", failure, host=host, port=port)
            code = frames.FAIL_REFUSED
        dial.link.refuseChannel(channel_id, code, f"{host}:{port}: {why}")


class ClientLinkFactory(Factory):
    noisy = False

    def __init__(self, settings, reactor, server=None):
        self.settings = settings
        self.reactor = reactor
        self.server = server or settings.server  # the ClientSpec this factory's links dial
        self.unwelcomed = 0  # links in a row that ended before WELCOME
        self.link = None  # the link up now (built and not yet lost), or None
        self._lost_waiters = {}  # link -> [Deferred fired when it is lost]

    def link_lost_deferred(self, link):
        """A Deferred that fires when ``link`` is gone."""
        d = Deferred()
        self._lost_waiters.setdefault(link, []).append(d)
        return d

    def linkLost(self, link):
        if self.link is link:
            self.link = None  # a stopping service then has nothing to drain
        for d in self._lost_waiters.pop(link, []):
            if not d.called:
                d.callback(None)

    def buildProtocol(self, addr):
        s = self.settings
        connection = Connection(
            CLIENT, self.reactor.seconds(), window=s.window, max_window=s.max_window,
            ping_interval=s.ping_interval, ping_timeout=s.ping_timeout,
            handshake_timeout=s.handshake_timeout, token=s.token, tag=s.tag)
        self.link = LinkProtocol(connection, ClientLinkHandler(self), self.reactor,
                                 close_grace=s.handshake_timeout)
        return self.link


class LinkService(ClientService):
    """
    ``ClientService`` that, stopping, drains its link: it tells the server it
    takes no new channels (GOAWAY draining), lets the open ones finish for
    up to ``drain_timeout`` seconds, then closes the link.
    """

    def __init__(self, endpoint, factory, drain_timeout, clock, **kwargs):
        super().__init__(endpoint, factory, clock=clock, **kwargs)
        self.link_factory = factory
        self.drain_timeout = drain_timeout
        self.clock = clock

    @inlineCallbacks
    def stopService(self):
        link = self.link_factory.link
        if link is not None and link.connection.established and not link.connection.closed:
            open_channels = len(link.connection.channels)
            if open_channels:
                log.info("draining: {count} channel(s) may finish within {timeout:g} s",
                         count=open_channels, timeout=self.drain_timeout)
            drained = self.link_factory.link_lost_deferred(link)
            link.goAway("the client is stopping")
            timer = self.clock.callLater(self.drain_timeout, drained.cancel)
            try:
                yield drained
            except CancelledError:
                log.warn("drain timed out: closing {count} channel(s)",
                         count=len(link.connection.channels))
                link.close("the client is stopping")
            else:
                timer.cancel()
        yield super().stopService()


def makeClientService(settings, reactor):
    """
    A service that keeps one authenticated link up to each server of
    ``settings.servers``: the :class:`LinkService` of the one server, or a
    ``MultiService`` of them, each named by its server's description.
    """
    services = [_link_service(settings, server, reactor) for server in settings.servers]
    if len(services) == 1:
        return services[0]
    multi = MultiService()
    for server, service in zip(settings.servers, services):
        service.setName(server.text)
        service.setServiceParent(multi)
    return multi


def _link_service(settings, server, reactor):
    """The :class:`LinkService` that keeps a link to ``server`` (a ClientSpec) up."""
    factory = ClientLinkFactory(settings, reactor, server)
    backoff = backoffPolicy(initialDelay=0.5, maxDelay=30.0, factor=2.0, jitter=random.random)

    def retryPolicy(attempt):
        return backoff(max(attempt, factory.unwelcomed))

    return LinkService(link_client_endpoint(reactor, server), factory,
                       settings.drain_timeout, retryPolicy=retryPolicy, clock=reactor)
