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
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import (
    HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, clientFromString,
)
from twisted.internet.error import ConnectError, TimeoutError
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from portmapper.protocol import auth, frames
from portmapper.protocol.frames import HELLO, MAGIC, PROTOCOL_VERSION, REFUSE, WELCOME, ProtocolError
from portmapper.protocol.mux import ChannelEnd, Link

log = Logger()


class TargetProtocol(ChannelEnd):
    """The connection to a mapping's target, carrying one channel."""


class _TargetFactory(Factory):
    protocol = TargetProtocol
    noisy = False  # one per channel: too many to log


def target_endpoint(reactor, host, port, timeout):
    """
    An endpoint for a target: an address is dialled as it is; a name goes
    through ``HostnameEndpoint``, which resolves it off the reactor thread
    (and so costs a thread hop per connection, worth skipping for addresses).
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    endpoint_type = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
    return endpoint_type(reactor, host, port, timeout=timeout)


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
        self._connecting = {}  # channel id -> Deferred of the target connection

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
            self.decoder.stopped = True
            self.transport.loseConnection()
        else:
            raise ProtocolError(f"unexpected {frames.NAMES[ftype]} frame during the handshake")

    def linkClosed(self, reason):
        for d in list(self._connecting.values()):
            d.cancel()
        if self.client_id is None:
            self.factory.unwelcomed += 1
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
        d = target_endpoint(self.reactor, host, port, self.settings.connect_timeout).connect(
            _TargetFactory())
        self._connecting[channel_id] = d
        d.addCallbacks(self._targetConnected, self._targetFailed,
                       callbackArgs=(channel_id, window), errbackArgs=(channel_id, host, port))

    def _targetConnected(self, target, channel_id, window):
        del self._connecting[channel_id]
        self.addChannel(channel_id, target, send_credit=window)
        self.sendFrame(frames.open_ok(channel_id, self.window))

    def _targetFailed(self, failure, channel_id, host, port):
        if failure.check(CancelledError):
            return  # the server gave up on it, or the link is gone
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

    def buildProtocol(self, addr):
        return ClientLink(self)


def makeClientService(settings, reactor):
    """A service that keeps one authenticated link to the server up."""
    factory = ClientLinkFactory(settings, reactor)
    backoff = backoffPolicy(initialDelay=0.5, maxDelay=30.0, factor=2.0, jitter=random.random)

    def retryPolicy(attempt):
        return backoff(max(attempt, factory.unwelcomed))

    return ClientService(clientFromString(reactor, settings.server), factory,
                         retryPolicy=retryPolicy, clock=reactor)
