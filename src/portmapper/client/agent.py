"""
The client (agent): one link to the server, and a target connection for
each channel the server opens on it.

``ClientLink`` answers the server's HELLO with the HMAC proof of the token
and its tag, then serves OPEN frames: it checks the allow-list, connects to
the target (a name is resolved off the reactor thread) and answers OPEN_OK,
or OPEN_FAIL with the reason the OS gave.
``makeClientService`` keeps the link up: ``ClientService`` redials forever
with capped exponential backoff and jitter.  ``ClientService`` counts a
connection as made once TCP connects; a link the server refuses (a wrong
token, say) must back off too, so the retry policy also counts the links
that ended before the server welcomed them.
"""

import ipaddress
import random

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectError, TimeoutError
from twisted.internet.protocol import ClientFactory, Factory
from twisted.logger import Logger

from portmapper.protocol import auth, frames
from portmapper.protocol.frames import HELLO, MAGIC, PROTOCOL_VERSION, REFUSE, WELCOME, ProtocolError
from portmapper.protocol.mux import EARLY_DATA, ChannelEnd, Link
from portmapper.transport.tls import link_client_endpoint

log = Logger()


class TargetProtocol(ChannelEnd):
    """The connection to a mapping's target, carrying one channel."""

    def connectionMade(self):
        super().connectionMade()
        self.factory.connected(self)


class TargetDial(ClientFactory):
    """
    Dialling one channel's target; tells the link once, either way.

    An address is dialled with ``connectTCP``; a name goes through
    ``HostnameEndpoint``, which resolves it off the reactor thread.  (The
    endpoint also wraps the protocol, a thread hop and an extra call per
    read that addresses, the common case, do without.)
    """

    protocol = TargetProtocol
    noisy = False  # one per channel: too many to log

    def __init__(self, link, channel_id, window, host, port):
        self.link = link
        self.channel_id = channel_id
        self.window = window
        self.host = host
        self.port = port
        self._cancel = None
        self.cancelled = False
        self.early = []  # data the server sent before the target answered
        self.early_bytes = 0
        self.fin_received = False

    def start(self, reactor, timeout):
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            d = HostnameEndpoint(reactor, self.host, self.port, timeout=timeout).connect(self)
            d.addErrback(self._failed)
            self._cancel = d.cancel
        else:
            connector = reactor.connectTCP(self.host, self.port, self, timeout=timeout)
            self._cancel = connector.stopConnecting

    def cancel(self):
        """The server gave up on this channel, or the link is gone."""
        self.cancelled = True
        self._cancel()

    def connected(self, target):
        self.link._targetConnected(self, target)

    def clientConnectionFailed(self, connector, reason):
        self._failed(reason)

    def _failed(self, failure):
        if not self.cancelled:
            self.link._targetFailed(self, failure)


class ClientLink(Link):
    def __init__(self, factory):
        settings = factory.settings
        super().__init__(factory.reactor, window=settings.window,
                         ping_interval=settings.ping_interval,
                         ping_timeout=settings.ping_timeout,
                         handshake_timeout=settings.handshake_timeout,
                         max_window=settings.max_window)
        self.factory = factory
        self.settings = settings
        self.reactor = factory.reactor
        self.client_id = None  # given by the server's WELCOME
        self._hello_seen = False
        self._connecting = {}  # channel id -> TargetDial

    # -- handshake ------------------------------------------------------------

    def handshakeFrameReceived(self, ftype, payload):
        if ftype == HELLO and not self._hello_seen:
            magic, version, nonce = frames.parse_hello(payload)
            if magic != MAGIC:
                raise ProtocolError("the server is not a portmapper server")
            if version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"the server speaks protocol version {version}, this client {PROTOCOL_VERSION}")
            self._hello_seen = True
            tag = self.settings.tag
            self.sendFrame(frames.auth(auth.proof(self.settings.token, nonce, tag), tag))
        elif ftype == WELCOME and self._hello_seen:
            self.client_id = frames.parse_u32(payload, "WELCOME")
            self.establish()
            log.info("connected to the server as client {client_id} with tag {tag}",
                     client_id=self.client_id, tag=self.settings.tag)
            self.factory.unwelcomed = 0
        elif ftype == REFUSE:
            reason = frames.parse_reason(payload)
            log.error("the server refused this client: {reason}", reason=reason)
            self.close()
        else:
            raise ProtocolError(f"unexpected {frames.NAMES[ftype]} frame during the handshake")

    def linkClosed(self, reason):
        for dial in list(self._connecting.values()):
            dial.cancel()
        if self.client_id is None:
            self.factory.unwelcomed += 1
            log.warn("could not link up with the server: {why}", why=reason.getErrorMessage())
        else:
            log.info("link to the server lost: {why}", why=reason.getErrorMessage())

    # -- channels ---------------------------------------------------------------

    def openRequested(self, channel_id, host, port, window):
        allow = self.settings.allow
        if allow is not None and not allow.allows(host, port):
            log.warn("refused to open {host}:{port}: not in the allow-list", host=host, port=port)
            self.sendFrame(frames.open_fail(
                channel_id, frames.FAIL_DENIED, f"{host}:{port} is not in this client's allow-list"))
            return
        dial = TargetDial(self, channel_id, window, host, port)
        self._connecting[channel_id] = dial
        dial.start(self.reactor, self.settings.connect_timeout)

    def _targetConnected(self, dial, target):
        del self._connecting[dial.channel_id]
        self.sendFrame(frames.open_ok(dial.channel_id, self.window))
        ch = self.addChannel(dial.channel_id, target, send_credit=dial.window,
                             early=dial.early)
        if ch.credit_pending >= ch.credit_batch:
            self._sendCredit(ch)
        if dial.fin_received:
            self._onFin(dial.channel_id, b"")

    def unopenedData(self, channel_id, chunk):
        dial = self._connecting.get(channel_id)
        if dial is None:
            return  # a channel we closed; its RESET is on its way
        dial.early_bytes += len(chunk)
        if dial.early_bytes > EARLY_DATA:
            raise ProtocolError(f"channel {channel_id} sent over {EARLY_DATA} bytes before OPEN_OK")
        dial.early.append(chunk)

    def unopenedFin(self, channel_id):
        dial = self._connecting.get(channel_id)
        if dial is not None:
            dial.fin_received = True

    def _targetFailed(self, dial, failure):
        channel_id, host, port = dial.channel_id, dial.host, dial.port
        del self._connecting[channel_id]
        why = failure.getErrorMessage()
        if failure.check(TimeoutError):
            code = frames.FAIL_TIMEOUT
        elif failure.check(ConnectError):
            code = frames.FAIL_REFUSED
        else:
            log.failure("connecting to {host}:{port} failed", failure, host=host, port=port)
            code = frames.FAIL_REFUSED
        self.sendFrame(frames.open_fail(channel_id, code, f"{host}:{port}: {why}"))

    def _onReset(self, channel_id, payload):
        connecting = self._connecting.pop(channel_id, None)
        if connecting is not None:
            connecting.cancel()
        else:
            super()._onReset(channel_id, payload)


class ClientLinkFactory(Factory):
    def __init__(self, settings, reactor):
        self.settings = settings
        self.reactor = reactor
        self.unwelcomed = 0  # links in a row that ended before WELCOME
        self.link = None  # the latest link built

    def buildProtocol(self, addr):
        self.link = ClientLink(self)
        return self.link


class LinkService(ClientService):
    """``ClientService`` that, stopping, tells the server it is going (GOAWAY)."""

    def __init__(self, endpoint, factory, **kwargs):
        super().__init__(endpoint, factory, **kwargs)
        self.link_factory = factory

    def stopService(self):
        link = self.link_factory.link
        if link is not None and link.connected:
            link.goAway("the client is shutting down")
        return super().stopService()


def makeClientService(settings, reactor):
    """A service that keeps one authenticated link to the server up."""
    factory = ClientLinkFactory(settings, reactor)
    backoff = backoffPolicy(initialDelay=0.5, maxDelay=30.0, factor=2.0, jitter=random.random)

    def retryPolicy(attempt):
        return backoff(max(attempt, factory.unwelcomed))

    return LinkService(link_client_endpoint(reactor, settings.server), factory,
                       retryPolicy=retryPolicy, clock=reactor)
