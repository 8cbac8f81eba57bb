"""
The mapping keeper: the server's live state and what can be done to it.

``PortMapperServer`` holds the port mappings, the connected clients and the
open channels (in a :class:`~portmapper.server.registry.Registry`), and
offers the operations of the admin API (:class:`IPortMapperServer`): create
and delete mappings, kick clients, close channels, read history.  The links
and public ports report to it (``clientConnected``, ``channelClosed`` ...).

It is one child of the service ``server/tap.py`` composes, started once the
store is open: starting it brings back the stored mappings, each listening
again, and ``whenStarted()`` fires when that is done.  Stopping it stops the
public ports and closes every channel and link; the client port and the
admin API have stopped before it, the store stops after it.
"""

from types import MappingProxyType

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from portmapper.errors import MappingExists, PortUnavailable, UnknownChannel, UnknownClient, UnknownMapping
from portmapper.server.interfaces import IPortMapperServer
from portmapper.server.link import ILinkServer
from portmapper.server.public import PublicFactory
from portmapper.server.registry import (
    CLOSED, CLOSED_BY_ADMIN, DRAINING, MAPPING_DELETED, NO_CLIENT, PROTOCOL_ERROR,
    SERVER_STOPPED, TARGET_REFUSED, TIMEOUT, Mapping, Registry,
)
from portmapper.transport.endpoints import tcp_server_endpoint
from portmapper.transport.tune import LISTEN_BACKLOG

log = Logger()

_WORTH_LOGGING = {NO_CLIENT, TARGET_REFUSED, TIMEOUT, PROTOCOL_ERROR}


@implementer(IPortMapperServer, ILinkServer)
class PortMapperServer(Service):
    """The live state over ``store`` (a started Store), with ``settings`` and ``reactor``."""

    def __init__(self, settings, reactor, store):
        self.settings = settings
        self.reactor = reactor
        self.clock = reactor
        self.store = store
        self.registry = Registry()
        self.client_port = None  # the port number clients dial, once listening
        self.admin_address = None  # IAddress of the admin API, once listening
        self._creating = set()  # public ports whose creation is under way
        self._drain_waiters = []  # Deferreds of a stop waiting for the channels to end
        self._started = None

    # -- life ---------------------------------------------------------------

    def startService(self):
        super().startService()
        self._started = self._start()

    def whenStarted(self):
        """Fires once the stored mappings are back (each listening if it can)."""
        return self._started

    @inlineCallbacks
    def _start(self):
        last_client_id, last_channel_id = yield self.store.last_ids()
        self.registry.seed_ids(last_client_id, last_channel_id)
        for public_port, target_ip, target_port, tag in (yield self.store.load_mappings()):
            yield self._restore(Mapping(public_port, target_ip, target_port, tag))

    @inlineCallbacks
    def _restore(self, mapping):
        """Listen again on a stored mapping; keep it (not listening) if we can't."""
        self.registry.mappings[mapping.public_port] = mapping
        try:
            mapping.listening = yield self._listen(mapping)
        except PortUnavailable as e:
            log.error("stored port mapper on port {port} is not listening: {why}",
                      port=mapping.public_port, why=e.why)

    def clientPortListening(self, port):
        """The client port listens on ``port`` (an IListeningPort)."""
        self.client_port = port.getHost().port

    def adminListening(self, port):
        """The admin API listens on ``port`` (an IListeningPort)."""
        self.admin_address = port.getHost()

    @inlineCallbacks
    def stopService(self):
        """
        Stop the public ports, let the open channels finish (the clients are
        told the server is draining) for up to ``drain_timeout`` seconds, then
        close what is left and every link.
        """
        super().stopService()
        listening = [m.listening for m in self.registry.mappings.values() if m.listening is not None]
        yield gatherResults([maybeDeferred(port.stopListening) for port in listening])
        if self.registry.channels:
            log.info("draining: {count} channel(s) may finish within {timeout:g} s",
                     count=len(self.registry.channels), timeout=self.settings.drain_timeout)
            for session in list(self.registry.clients.values()):
                session.closing(SERVER_STOPPED)
                session.link.goAway("the server is stopping")
            yield self._drained(self.settings.drain_timeout)
        if self.registry.channels:
            log.warn("drain timed out: closing {count} channel(s)",
                     count=len(self.registry.channels))
        for channel in list(self.registry.channels.values()):
            channel.user.close(SERVER_STOPPED)
        for session in list(self.registry.clients.values()):
            session.closing(SERVER_STOPPED)
            session.link.close("the server is stopping")
            session.link.transport.abortConnection()
        # Connections lost by abortConnection report it on the next turn.
        yield deferLater(self.clock, 0, lambda: None)

    def _drained(self, timeout):
        """A Deferred that fires once no channel is open, or after ``timeout`` seconds."""
        done = Deferred()
        self._drain_waiters.append(done)
        timer = self.clock.callLater(timeout, lambda: done.called or done.callback(None))
        return done.addBoth(lambda result: timer.active() and timer.cancel())

    # -- live state (read-only views) -------------------------------------------

    def mappings(self):
        return MappingProxyType(self.registry.mappings)

    def clients(self):
        return MappingProxyType(self.registry.clients)

    def channels(self):
        return MappingProxyType(self.registry.channels)

    # -- mappings -----------------------------------------------------------

    def _listen(self, mapping):
        endpoint = tcp_server_endpoint(self.reactor, mapping.public_port,
                                       self.settings.public_interface, LISTEN_BACKLOG)
        d = endpoint.listen(PublicFactory(self, mapping))

        def cannot(failure):
            failure.trap(CannotListenError)
            error = failure.value.socketError
            why = getattr(error, "strerror", None) or str(error)
            raise PortUnavailable(mapping.public_port, why)

        return d.addErrback(cannot)

    @inlineCallbacks
    def add_mapping(self, public_port, target_ip, target_port, tag="default"):
        """Listen on ``public_port`` and persist the mapping; fires with it."""
        if public_port in self.registry.mappings or public_port in self._creating:
            raise MappingExists(public_port)
        if public_port == self.client_port:
            raise PortUnavailable(public_port, "it is this server's client port")
        if self.admin_address is not None and public_port == getattr(self.admin_address, "port", None):
            raise PortUnavailable(public_port, "it is this server's admin API port")
        mapping = Mapping(public_port, target_ip, target_port, tag)
        self._creating.add(public_port)
        try:
            mapping.listening = yield self._listen(mapping)
            try:
                yield self.store.save_mapping(public_port, target_ip, target_port, tag)
            except Exception:
                yield mapping.listening.stopListening()
                raise
        finally:
            self._creating.discard(public_port)
        self.registry.mappings[public_port] = mapping
        log.info("port mapper created: port {port} -> {ip}:{target_port} (tag {tag})",
                 port=public_port, ip=target_ip, target_port=target_port, tag=tag)
        return mapping

    @inlineCallbacks
    def remove_mapping(self, public_port):
        """Stop listening on ``public_port``, close its channels, forget it."""
        mapping = self.registry.mappings.pop(public_port, None)
        if mapping is None:
            raise UnknownMapping(public_port)
        for channel in self.registry.channels_on_port(public_port):
            channel.user.close(MAPPING_DELETED)
        if mapping.listening is not None:
            yield mapping.listening.stopListening()
        yield self.store.delete_mapping(public_port)
        log.info("port mapper deleted: port {port}", port=public_port)

    # -- clients and channels -------------------------------------------------

    def clientConnected(self, link, ip, port, tag):
        session = self.registry.new_client(ip, port, tag, self.clock.seconds(), link)
        log.info("client {client_id} connected from {ip}:{port} with tag {tag}",
                 client_id=session.client_id, ip=ip, port=port, tag=tag)
        return session

    def clientDraining(self, session):
        """The client takes no new channels (it is stopping); its open ones carry on."""
        session.state = DRAINING
        log.info("client {client_id} is draining", client_id=session.client_id)

    def clientDisconnected(self, session, reason):
        self.registry.clients.pop(session.client_id, None)
        session.state = CLOSED
        why = session.lost_reason()
        meter = session.meter
        self.store.record_client({
            "client_id": session.client_id, "ip": session.ip, "port": session.port,
            "tag": session.tag, "init_time": meter.created, "close_time": self.clock.seconds(),
            "recv_bytes": meter.recv_bytes, "send_bytes": meter.send_bytes, "close_reason": why,
        })
        log.info("client {client_id} disconnected: {why} ({reason})",
                 client_id=session.client_id, why=why, reason=reason)

    def channelClosed(self, record):
        self.registry.channels.pop(record.channel_id, None)
        session = self.registry.clients.get(record.client_id)
        if session is not None:
            session.channels.discard(record.channel_id)
        record.close_reason = reason = record.decide_close_reason()
        if not self.registry.channels:
            waiters, self._drain_waiters = self._drain_waiters, []
            for done in waiters:
                if not done.called:
                    done.callback(None)
        record.close_time = self.clock.seconds()
        meter = record.meter
        self.store.record_channel({
            "channel_id": record.channel_id, "port": record.public_port,
            "ip": record.user_ip, "user_port": record.user_port,
            "client_id": record.client_id, "target_ip": record.target_ip,
            "target_port": record.target_port, "init_time": meter.created,
            "close_time": record.close_time, "recv_bytes": meter.recv_bytes,
            "send_bytes": meter.send_bytes, "close_reason": reason,
        })
        if reason in _WORTH_LOGGING:
            log.info("channel {channel_id} on port {port} closed: {reason}",
                     channel_id=record.channel_id, port=record.public_port, reason=reason)

    def sweep(self, now):
        """
        Close the open channels past ``--half-close-timeout`` or
        ``--idle-timeout`` (the sampler calls this once per tick), at both
        ends: history records ``timeout`` or ``idle timeout``.
        """
        s = self.settings
        for channel, reason in self.registry.expired_channels(
                now, s.half_close_timeout, s.idle_timeout):
            channel.user.close(reason)

    def kick_client(self, client_id):
        session = self.registry.clients.get(client_id)
        if session is None:
            raise UnknownClient(client_id)
        session.closing(CLOSED_BY_ADMIN)
        session.link.close("closed by admin")

    def close_channel(self, channel_id):
        channel = self.registry.channels.get(channel_id)
        if channel is None:
            raise UnknownChannel(channel_id)
        channel.user.close(CLOSED_BY_ADMIN)

    # -- history --------------------------------------------------------------

    def channel_history(self, port=None, client_id=None, channel_id=None, limit=100, before=None):
        return self.store.query_channel_history(
            port=port, client_id=client_id, channel_id=channel_id, limit=limit, before=before)

    def client_history(self, client_id=None, limit=100, before=None):
        return self.store.query_client_history(client_id=client_id, limit=limit, before=before)
