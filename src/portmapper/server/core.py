"""
The mapping keeper: the server's live state and what can be done to it.

``PortMapperServer`` holds the port mappings, the connected clients and the
open channels (in a :class:`~portmapper.server.registry.Registry`), and
offers the operations of the admin API (:class:`IPortMapperServer`): create
and delete mappings, kick clients, close channels, issue and revoke
credentials, read history.  The links and public ports report to it
(``clientConnected``, ``channelClosed`` ...).

It is one child of the service ``server/tap.py`` composes, started once the
store is open: starting it closes what a server that died left open in
history (``server lost``), reserves the first blocks of ids on disk, and
brings back the stored credentials (all of them are kept in memory, so a
handshake never waits on the disk) and mappings, each listening again;
``whenStarted()`` fires when that is done.  Channels and client links are
noted in the store when they open, so that the next start can do that.
Connections refused at accept are counted, not recorded one by one: see
:meth:`refused`.  Stopping it stops the
public ports and closes every channel and link; the client port and the
admin API have stopped before it, the store stops after it.

Mapping writes go to the store first, and change the live state only once
it took them.  On a database several servers share, the store also tells
of the mapping changes every server makes (``follow``, started once the
stored mappings are back): each is applied here unless this server
already has something newer (each change has a version, growing per port in
the order the database took them), and when the store had lost the
database it hands over every mapping, and what differs is applied.  The
changes of one port, made here or heard, run one at a time.  Credentials
are heard the same way: one issued on any server links clients on every
one, and one revoked drops their links everywhere, as a revocation here
does (a credential is issued once and revoked for good, so these need no
version).
"""

from functools import partial
from types import MappingProxyType

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred, DeferredLock, gatherResults, inlineCallbacks, maybeDeferred, succeed,
)
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from portmapper import __version__, validate
from portmapper.errors import (
    DatabaseUnavailable, MappingExists, PortUnavailable, UnknownChannel, UnknownClient,
    UnknownCredential, UnknownMapping,
)
from portmapper.protocol import auth
from portmapper.server.interfaces import IPortMapperServer
from portmapper.server.link import ILinkServer
from portmapper.server.metrics import ServerMetrics
from portmapper.server.nodes import Heartbeat, listening_url
from portmapper.server.webhooks import CLIENT_LINKED, CLIENT_LOST, Webhooks
from portmapper.server.public import PublicFactory
from portmapper.server.refusals import Refusals
from portmapper.server.ratelimit import RateLimiter
from portmapper.server.registry import (
    CLOSED, CLOSED_BY_ADMIN, CREDENTIAL_REVOKED, DRAINING, MAPPING_DELETED, NO_CLIENT,
    POLICY_NAMES, PROTOCOL_ERROR, SERVER_LOST, SERVER_STOPPED, TARGET_REFUSED, TIMEOUT, Credential,
    IdBlocks, Mapping, Registry,
)
from portmapper.server.store.sqlite import UNVERSIONED
from portmapper.transport.endpoints import tcp_server_endpoint
from portmapper.transport.tune import LISTEN_BACKLOG

log = Logger()

_WORTH_LOGGING = {NO_CLIENT, TARGET_REFUSED, TIMEOUT, PROTOCOL_ERROR}


def _parse_stored(public_port, texts):
    """Stored policy texts as values; one the rules no longer take is logged and left out."""
    policies = {}
    for name, text in texts.items():
        try:
            policies[name] = validate.POLICIES[name][0](text)
        except (KeyError, ValueError) as e:
            log.error("stored policy {name}={text!r} of port {port} is ignored: {why}",
                      name=name, text=text, port=public_port, why=e)
    return policies


def _log_failure(failure, text, **fields):
    """Log ``text`` and why: the one sentence of an unreachable database, else the traceback."""
    if failure.check(DatabaseUnavailable):
        log.warn(text + ": {why}", why=failure.value, **fields)
    else:
        log.failure(text, failure, **fields)


def _state(mapping):
    """What the store keeps of ``mapping``: ``(target_ip, target_port, tag, policy texts)``."""
    return mapping.target_ip, mapping.target_port, mapping.tag, mapping.policy_texts()


def differences(live, stored):
    """
    The ports whose mapping ``live`` (this server's) and ``stored`` (the
    database's) disagree on, each with the stored state (None: no mapping):
    ``[(public_port, state), ...]`` by port.  Both map a port to its state.
    """
    return [(port, stored.get(port)) for port in sorted(live.keys() | stored.keys())
            if live.get(port) != stored.get(port)]


@implementer(IPortMapperServer, ILinkServer)
class PortMapperServer(Service):
    """The live state over ``store`` (a started Store), with ``settings`` and ``reactor``;
    alerts go to ``webhooks`` (a :class:`~portmapper.server.webhooks.Webhooks`), if given."""

    def __init__(self, settings, reactor, store, webhooks=None):
        self.settings = settings
        self.reactor = reactor
        self.clock = reactor
        self.store = store
        self.registry = Registry()
        self.metrics = ServerMetrics(self)  # served at GET /metrics
        self.webhooks = webhooks if webhooks is not None else Webhooks((), reactor)
        self.client_port = None  # the port number clients dial, once listening
        self.admin_address = None  # IAddress of the admin API, once listening
        self._creating = set()  # public ports whose creation is under way
        self._port_locks = {}  # public port -> DeferredLock: its changes, one at a time
        self._versions = {}  # public port -> version of its last change applied here
        self._drain_waiters = []  # Deferreds of a stop waiting for the channels to end
        self._refusals = Refusals(reactor, settings.refusal_interval, self._record_refusals)
        self._started = None
        # This server as a node of its cluster (a cluster of one on SQLite).
        self.node_name = settings.node_name
        self.admin_url = settings.node_url or None  # else where the admin API listens
        self.started_time = None  # clock time the service started
        self.heartbeat = Heartbeat(self.node_name, store, reactor, self.node_info)

    # -- life ---------------------------------------------------------------

    def startService(self):
        super().startService()
        self.started_time = self.clock.seconds()
        self._started = self._start()

    def whenStarted(self):
        """Fires once the stored mappings are back (each listening if it can)."""
        return self._started

    @inlineCallbacks
    def _start(self):
        channels, clients = yield self.store.close_lost(SERVER_LOST)
        if channels or clients:
            log.warn("the last run of the server did not stop cleanly: {channels} channel(s)"
                     " and {clients} client link(s) it left open are recorded as closed,"
                     " 'server lost'", channels=channels, clients=clients)
        ids = [IdBlocks(f"{kind} ids", partial(self.store.reserve_ids, f"{kind}_id"))
               for kind in ("client", "channel")]
        yield gatherResults([blocks.start() for blocks in ids], consumeErrors=True)
        self.registry.use_ids(*ids)
        for row in (yield self.store.load_credentials()):
            self.registry.add_credential(Credential(**row))
        policies = yield self.store.load_policies()
        for public_port, target_ip, target_port, tag in (yield self.store.load_mappings()):
            # Listening again; kept (not listening) if it cannot.
            yield self._apply(public_port, (target_ip, target_port, tag,
                                            policies.get(public_port, {})))
        self.store.follow(mappings=(self._heard, self._reloaded),
                          credentials=(self._credential_heard, self._credentials_reloaded))

    def clientPortListening(self, port):
        """The client port listens on ``port`` (an IListeningPort)."""
        self.client_port = port.getHost().port

    def adminListening(self, port):
        """The admin API listens on ``port`` (an IListeningPort)."""
        self.admin_address = port.getHost()
        if not self.settings.node_url:
            self.admin_url = listening_url(self.admin_address, self.settings.admin)

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
        self._refusals.flush()
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

    # -- this node ------------------------------------------------------------

    def node(self):
        """This node: name, version, clock time it started, client port."""
        return {"name": self.node_name, "version": __version__,
                "started_time": self.started_time, "client_port": self.client_port}

    def node_info(self):
        """What this node's heartbeat records (the store's ``NODE_KEYS``)."""
        return {"admin_url": self.admin_url or "", "client_port": self.client_port,
                "version": __version__, "started_time": self.started_time,
                "clients": len(self.registry.clients), "channels": len(self.registry.channels)}

    def nodes(self):
        """
        Every node known, by name (see :meth:`.nodes.Heartbeat.nodes`); this
        one always among them, alive (it answers), with its live counts and
        the age of its last heartbeat recorded (None before the first).
        """
        here = {**self.node_info(), "name": self.node_name, "heartbeat_age": None, "alive": True}
        found = [{**row, **here, "heartbeat_age": row["heartbeat_age"]}
                 if row["name"] == self.node_name else row for row in self.heartbeat.nodes()]
        if not any(row["name"] == self.node_name for row in found):
            found = sorted(found + [here], key=lambda row: row["name"])
        return found

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

    def _update(self, mapping, values):
        """Set the mapping's target, tag or policies: ``values`` maps a name
        to its value (None removes a policy)."""
        for name, value in values.items():
            setattr(mapping, name, value)
        self._limit(mapping)

    def _limit(self, mapping):
        """Give the mapping the rate limiter its ``rate_limit`` asks for (its open channels too)."""
        if mapping.rate_limit is None:
            if mapping.limiter is not None:
                mapping.limiter.stop()
                mapping.limiter = None
        elif mapping.limiter is None:
            mapping.limiter = RateLimiter(self.clock, mapping.rate_limit)
            for user in mapping.users:
                mapping.limiter.add(user)
        else:
            mapping.limiter.set_rate(mapping.rate_limit)

    def _serial(self, public_port, f, *args):
        """Run ``f(*args)`` once every change of ``public_port`` begun before it is done."""
        lock = self._port_locks.setdefault(public_port, DeferredLock())

        def done(result):
            if not lock.locked:
                self._port_locks.pop(public_port, None)
            return result

        return lock.run(f, *args).addBoth(done)

    @inlineCallbacks
    def add_mapping(self, public_port, target_ip, target_port, tag="default", policies=None):
        """Listen on ``public_port`` and persist the mapping, with its
        ``policies`` (name -> value); fires with it."""
        if public_port in self.registry.mappings or public_port in self._creating:
            raise MappingExists(public_port)
        if public_port == self.client_port:
            raise PortUnavailable(public_port, "it is this server's client port")
        if self.admin_address is not None and public_port == getattr(self.admin_address, "port", None):
            raise PortUnavailable(public_port, "it is this server's admin API port")
        mapping = Mapping(public_port, target_ip, target_port, tag)
        self._update(mapping, policies or {})
        self._creating.add(public_port)
        try:
            yield self._serial(public_port, self._create, mapping)
        finally:
            self._creating.discard(public_port)
        log.info("port mapper created: port {port} -> {ip}:{target_port} (tag {tag})",
                 port=public_port, ip=target_ip, target_port=target_port, tag=tag,
                 policies=mapping.policy_texts())
        return mapping

    @inlineCallbacks
    def _create(self, mapping):
        public_port = mapping.public_port
        if public_port in self.registry.mappings:  # another server's, heard meanwhile
            raise MappingExists(public_port)
        mapping.listening = yield self._listen(mapping)
        try:
            version = yield self.store.insert_mapping(public_port, *_state(mapping))
        except Exception:
            yield mapping.listening.stopListening()
            raise
        self._versions[public_port] = version
        self.registry.mappings[public_port] = mapping

    @inlineCallbacks
    def change_mapping(self, public_port, changes):
        """
        Change the mapping of ``public_port`` live: ``changes`` maps
        ``target_ip``, ``target_port``, ``tag`` or a policy's name to its new
        value (None removes a policy).  Open channels stay; new ones follow
        the change.  Persists it (first); fires with the mapping.
        """
        if public_port not in self.registry.mappings:
            raise UnknownMapping(public_port)
        mapping = yield self._serial(public_port, self._change, public_port, changes)
        log.info("port mapper changed: port {port} is now {mapping}", port=public_port,
                 mapping=mapping.as_json())
        return mapping

    @inlineCallbacks
    def _change(self, public_port, changes):
        mapping = self.registry.mappings.get(public_port)
        if mapping is None:  # deleted by another server meanwhile
            raise UnknownMapping(public_port)
        wanted = Mapping(public_port, mapping.target_ip, mapping.target_port, mapping.tag,
                         **mapping.policies())
        for name, value in changes.items():
            setattr(wanted, name, value)
        version = yield self.store.update_mapping(public_port, *_state(wanted))
        self._versions[public_port] = version
        self._update(mapping, changes)
        return mapping

    @inlineCallbacks
    def remove_mapping(self, public_port):
        """Forget the mapping of ``public_port`` (first in the store): stop
        listening on it, close its channels."""
        if public_port not in self.registry.mappings:
            raise UnknownMapping(public_port)
        yield self._serial(public_port, self._remove, public_port)
        log.info("port mapper deleted: port {port}", port=public_port)

    @inlineCallbacks
    def _remove(self, public_port):
        if public_port not in self.registry.mappings:  # deleted by another server meanwhile
            raise UnknownMapping(public_port)
        self._versions[public_port] = yield self.store.remove_mapping(public_port)
        yield self._forget(public_port)

    def _forget(self, public_port):
        """Stop listening on ``public_port``, close its channels, drop its mapping."""
        mapping = self.registry.mappings.pop(public_port)
        for channel in self.registry.channels_on_port(public_port):
            channel.user.close(MAPPING_DELETED)
        if mapping.limiter is not None:
            mapping.limiter.stop()
        if mapping.listening is not None:
            return maybeDeferred(mapping.listening.stopListening)
        return succeed(None)

    # -- mappings changed by other servers on the same database -----------------
    # Every change the store announces is heard, this server's own too; the
    # versions (growing, per port, in the order the changes were committed)
    # keep a change from undoing a newer one this server has already made.

    def _heard(self, public_port, version, state):
        """Another server (or this one) changed ``public_port`` to ``state`` at ``version``."""
        if self.running:
            self._serial(public_port, self._apply_heard, public_port, version, state)

    def _apply_heard(self, public_port, version, state):
        if version <= self._versions.get(public_port, UNVERSIONED):
            return None  # this server has it already, or something newer
        self._versions[public_port] = version
        return self._apply(public_port, state)

    def _reloaded(self, rows):
        """Every mapping in the store (the follower reconnected): apply what differs."""
        if not self.running:
            return
        stored = {row[0]: tuple(row[1:]) for row in rows}
        live = {port: _state(m) for port, m in self.registry.mappings.items()}
        changed = dict(differences(live, stored))
        for port, mapping in self.registry.mappings.items():  # bind again what could not be
            if mapping.listening is None and port in stored:
                changed.setdefault(port, stored[port])
        for public_port in sorted(changed):
            self._serial(public_port, self._apply_reloaded, public_port, changed[public_port])

    def _apply_reloaded(self, public_port, state):
        mapping = self.registry.mappings.get(public_port)
        if mapping is not None and _state(mapping) == state and mapping.listening is not None:
            return None  # made so meanwhile
        self._versions[public_port] = UNVERSIONED  # any change heard after is newer
        return self._apply(public_port, state)

    @inlineCallbacks
    def _apply(self, public_port, state):
        """Make this server's mapping of ``public_port`` ``state`` (``(target_ip,
        target_port, tag, policy texts)``, None for none), as stored; never fails.
        A port it cannot listen on is logged, and the mapping kept, not listening."""
        mapping = self.registry.mappings.get(public_port)
        if not self.running:  # stopped while this waited for the port: listen on nothing new
            return
        try:
            if state is None:
                if mapping is not None:
                    yield self._forget(public_port)
                    log.info("port mapper deleted by another server: port {port}",
                             port=public_port)
                return
            target_ip, target_port, tag, texts = state
            values = {name: None for name in POLICY_NAMES}
            values.update(_parse_stored(public_port, texts))
            values.update(target_ip=target_ip, target_port=target_port, tag=tag)
            if mapping is None:
                mapping = Mapping(public_port, target_ip, target_port, tag)
                self._update(mapping, values)
                self.registry.mappings[public_port] = mapping
            else:
                self._update(mapping, values)
            if mapping.listening is None:
                mapping.listening = yield self._listen(mapping)
            log.info("port mapper on port {port} as the database has it: {mapping}",
                     port=public_port, mapping=mapping.as_json())
        except PortUnavailable as e:
            log.error("port mapper on port {port} is not listening on this server: {why}",
                      port=public_port, why=e.why)
        except Exception:
            log.failure("could not apply the port mapper on port {port} from the database",
                        port=public_port)

    # -- clients and channels -------------------------------------------------

    def clientConnected(self, link, ip, port, tag, credential=None):
        now = self.clock.seconds()
        session = self.registry.new_client(ip, port, tag, now, link)
        if session is None:  # no client id on disk yet (logged by IdBlocks)
            link.refuse("the server is busy, try again")
            return None
        self.store.record_client_open({
            "client_id": session.client_id, "ip": ip, "port": port, "tag": tag,
            "init_time": session.init_time,
        })
        if credential is not None:
            session.credential_id = credential.credential_id
            credential.last_used_time = now
            self.store.credential_used(credential.credential_id, now).addErrback(
                _log_failure, "could not record the use of credential {credential_id}",
                credential_id=credential.credential_id)
        log.info("client {client_id} connected from {ip}:{port} with tag {tag}"
                 " (credential {credential_id})", client_id=session.client_id, ip=ip, port=port,
                 tag=tag, credential_id=session.credential_id)
        self.webhooks.notify(CLIENT_LINKED, client_id=session.client_id, tag=tag, ip=ip, port=port)
        return session

    def findCredential(self, public_key):
        return self.registry.credential_by_key(public_key)

    def clientDraining(self, session):
        """The client takes no new channels (it is stopping); its open ones carry on."""
        session.state = DRAINING
        log.info("client {client_id} is draining", client_id=session.client_id)

    def clientDisconnected(self, session, reason):
        self.registry.clients.pop(session.client_id, None)
        session.state = CLOSED
        why = session.lost_reason()
        self.metrics.client_closed(session)
        meter = session.meter
        self.store.record_client({
            "client_id": session.client_id, "ip": session.ip, "port": session.port,
            "tag": session.tag, "init_time": meter.created, "close_time": self.clock.seconds(),
            "recv_bytes": meter.recv_bytes, "send_bytes": meter.send_bytes, "close_reason": why,
        })
        log.info("client {client_id} disconnected: {why} ({reason})",
                 client_id=session.client_id, why=why, reason=reason)
        self.webhooks.notify(CLIENT_LOST, client_id=session.client_id, tag=session.tag,
                             ip=session.ip, port=session.port, reason=why,
                             duration_time=int(meter.age(self.clock.seconds())))

    def handshakeFailed(self, kind):
        self.metrics.handshake_failed(kind)

    def channelOpened(self, record):
        """A channel is handed to a client: note it, for the next start if the server dies."""
        self.store.record_channel_open({
            "channel_id": record.channel_id, "port": record.public_port,
            "ip": record.user_ip, "user_port": record.user_port,
            "client_id": record.client_id, "target_ip": record.target_ip,
            "target_port": record.target_port, "init_time": record.init_time,
        })

    def refused(self, public_port, reason, ip, user_port):
        """
        A user's connection from ``ip:user_port`` to ``public_port`` was
        closed at accept for ``reason`` (``no client``, ``denied``,
        ``limit``): counted, so that history gets one row (with a ``count``)
        and the log one line per port, reason and ``--refusal-interval``.
        The caller closes the connection; it takes no channel id.
        """
        self._refusals.refused(public_port, reason, ip, user_port)
        self.metrics.refused(public_port, reason)
        if reason == NO_CLIENT:
            mapping = self.registry.mappings.get(public_port)
            if mapping is not None:
                self.webhooks.no_client(public_port, mapping.tag)  # at most once a minute a port

    def _record_refusals(self, tally):
        log.info("port {port}: {count} connection(s) refused: {reason}",
                 port=tally.port, count=tally.count, reason=tally.reason,
                 first_time=tally.first_time, last_time=tally.last_time)
        if tally.reason != NO_CLIENT:  # a policy's refusals: an operator may want to know
            self.webhooks.refusals(tally.port, tally.reason, tally.count)
        channel_id = self.registry.new_channel_id()
        if channel_id is None:
            return  # no id on disk yet (IdBlocks logs it): the log line has to do
        mapping = self.registry.mappings.get(tally.port)
        self.store.record_channel({
            "channel_id": channel_id, "port": tally.port, "ip": tally.ip,
            "user_port": tally.user_port, "client_id": None,
            "target_ip": mapping and mapping.target_ip,
            "target_port": mapping and mapping.target_port,
            "init_time": tally.first_time, "close_time": tally.last_time,
            "recv_bytes": 0, "send_bytes": 0, "close_reason": tally.reason,
            "count": tally.count,
        })

    def channelClosed(self, record):
        self.registry.channels.pop(record.channel_id, None)
        session = self.registry.clients.get(record.client_id)
        if session is not None:
            session.channels.discard(record.channel_id)
        record.close_reason = reason = record.decide_close_reason()
        self.metrics.channel_closed(record, reason)
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
        if reason == NO_CLIENT:
            mapping = self.registry.mappings.get(record.public_port)
            if mapping is not None:
                self.webhooks.no_client(record.public_port, mapping.tag)
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

    # -- credentials ------------------------------------------------------------

    def credentials(self):
        return MappingProxyType(
            {i: c for i, c in self.registry.credentials.items() if not c.revoked})

    @inlineCallbacks
    def issue_credential(self, tag, name=None):
        """A new credential for ``tag``, stored: fires with ``(Credential, token)``."""
        token, public_key = auth.new_credential()
        now = self.clock.seconds()
        credential_id = yield self.store.add_credential(name, tag, public_key, now)
        credential = self.registry.credentials.get(credential_id)  # heard already?
        if credential is None:
            credential = Credential(credential_id, name, tag, public_key, now)
            self.registry.add_credential(credential)
        log.info("credential {credential_id} issued for tag {tag}",
                 credential_id=credential_id, tag=tag)
        return credential, token

    @inlineCallbacks
    def revoke_credential(self, credential_id):
        """Refuse the credential from now on, drop the clients linked with it, store that."""
        credential = self.registry.credentials.get(credential_id)
        if credential is None or credential.revoked:
            raise UnknownCredential(credential_id)
        yield self.store.revoke_credential(credential_id)  # first: it may be unreachable
        if not credential.revoked:  # heard already, else
            self._revoked(credential)
        log.info("credential {credential_id} revoked", credential_id=credential_id)

    def _revoked(self, credential):
        """Refuse ``credential`` from now on; drop the clients linked with it, at once: how many."""
        credential.revoked = True
        linked = [session for session in self.registry.clients.values()
                  if session.credential_id == credential.credential_id]
        for session in linked:
            session.closing(CREDENTIAL_REVOKED)
            session.link.close("credential revoked")
        return len(linked)

    # -- credentials issued or revoked by other servers on the same database ----
    # Heard as the database has them, this server's own too: a credential is
    # issued once and revoked for good, so hearing one again changes nothing.

    def _credential_heard(self, row):
        """A credential was issued or revoked (``row``: a dict of its columns)."""
        if self.running:
            self._credential_as_stored(row)

    def _credentials_reloaded(self, rows):
        """Every credential in the store (the follower reconnected): apply what is new."""
        if self.running:
            for row in rows:
                self._credential_as_stored(row)

    def _credential_as_stored(self, row):
        credential = self.registry.credentials.get(row["credential_id"])
        if credential is None:
            self.registry.add_credential(Credential(**row))
            if not row["revoked"]:
                log.info("credential {credential_id} for tag {tag} is known from the database",
                         credential_id=row["credential_id"], tag=row["tag"])
        elif row["revoked"] and not credential.revoked:
            log.info("credential {credential_id} revoked in the database: {count} client"
                     " link(s) with it dropped", credential_id=credential.credential_id,
                     count=self._revoked(credential))

    # -- history --------------------------------------------------------------

    def channel_history(self, port=None, client_id=None, channel_id=None, limit=100, before=None):
        return self.store.query_channel_history(
            port=port, client_id=client_id, channel_id=channel_id, limit=limit, before=before)

    def client_history(self, client_id=None, limit=100, before=None):
        return self.store.query_client_history(client_id=client_id, limit=limit, before=before)
