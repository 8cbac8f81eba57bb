"""
The server's live state: port mappings, connected clients, open channels,
and the credentials clients may link with.

These are plain attrs records plus the lookups the rest of the server
needs; nothing here touches a socket.  ``Registry`` hands out ids that are
never reused: numbered from 1 in memory until the server gives it
:class:`IdBlocks`, which hand out only ids reserved on disk, so that a
server that dies and starts again never shows an id twice.
"""

import ipaddress
import itertools

import attr
from twisted.logger import Logger

from portmapper import validate
from portmapper.errors import DatabaseUnavailable
from portmapper.server.meter import Meter

log = Logger()

#: Ids reserved on disk at a time, at first (see IdBlocks).
ID_BLOCK = 1000
#: The largest block IdBlocks grows to when ids are taken faster than reserved.
MAX_ID_BLOCK = 1_000_000

# Client states
WORKING = "WORKING"
DRAINING = "DRAINING"  # takes no new channels; its open ones carry on
CLOSED = "CLOSED"
# Channel states (plus WORKING and CLOSED)
CONNECTING = "CONNECTING"
CLOSING = "CLOSING"

# Why a channel or a client link closed, as recorded in history (docs/api.rst
# lists them).  A channel's two directions ending normally give ``user
# closed`` or ``target closed`` (whichever side ended first); any other
# reason is an abnormal end, and the first one wins over a normal end.
USER_CLOSED = "user closed"
TARGET_CLOSED = "target closed"
TARGET_REFUSED = "target refused"
NO_CLIENT = "no client"
CLIENT_LOST = "client lost"
CLOSED_BY_ADMIN = "closed by admin"
MAPPING_DELETED = "mapping deleted"
TIMEOUT = "timeout"
IDLE_TIMEOUT = "idle timeout"
PROTOCOL_ERROR = "protocol error"
DENIED = "denied"
LIMIT = "limit"
CREDENTIAL_REVOKED = "credential revoked"
SERVER_STOPPED = "server stopped"
SERVER_LOST = "server lost"


#: A mapping's policies (``validate.POLICIES`` parses them), each None when not set.
POLICY_NAMES = tuple(validate.POLICIES)


@attr.s(slots=True, eq=False)
class Mapping:
    """Public port ``public_port`` is carried to ``target_ip:target_port``
    by a client tagged ``tag``, under the policies that are set (not None):
    ``allow`` (ip_networks), ``proxy_protocol`` ("v1", "v2"),
    ``max_channels``, ``rate_limit`` (MB/s) and ``balance``."""

    public_port = attr.ib()
    target_ip = attr.ib()
    target_port = attr.ib()
    tag = attr.ib(default="default")
    allow = attr.ib(default=None)
    proxy_protocol = attr.ib(default=None)
    max_channels = attr.ib(default=None)
    rate_limit = attr.ib(default=None)
    balance = attr.ib(default=None)
    listening = attr.ib(default=None, repr=False)  # IListeningPort once bound
    users = attr.ib(factory=set, repr=False)  # the PublicProtocols of its open channels
    limiter = attr.ib(default=None, repr=False)  # the RateLimiter while rate_limit is set

    def policies(self):
        """The policies that are set: name -> value."""
        return {name: getattr(self, name) for name in POLICY_NAMES
                if getattr(self, name) is not None}

    def policy_texts(self):
        """The policies that are set, as the text the API takes: name -> text."""
        return {name: validate.policy_text(name, value) for name, value in self.policies().items()}

    def as_json(self):
        shown = {"ip": self.target_ip, "port": self.target_port, "tag": self.tag}
        for name, value in self.policies().items():
            shown[name] = value if name in ("max_channels", "rate_limit") \
                else validate.policy_text(name, value)
        return shown

    def allows(self, ip):
        """Whether a user at ``ip`` (text) may use this mapping."""
        if self.allow is None:
            return True
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allow)


@attr.s(slots=True, eq=False)
class ClientSession:
    """One authenticated tunnel client and its link."""

    client_id = attr.ib()
    ip = attr.ib()
    port = attr.ib()
    tag = attr.ib()
    meter = attr.ib()
    link = attr.ib(default=None, repr=False)  # the server's link protocol
    state = attr.ib(default=WORKING)
    channels = attr.ib(factory=set, repr=False)  # channel ids carried
    close_reason = attr.ib(default=None)  # decided before the link goes: the first wins
    credential_id = attr.ib(default=None)  # the credential it linked with; None: the shared token
    stalled = attr.ib(default=None)  # round trips measured when an open timed out on it

    @property
    def init_time(self):
        return self.meter.created

    def open_timed_out(self):
        """An open timed out on this client: pass it by until it answers a ping again."""
        self.stalled = self._round_trips()

    def answering(self):
        """False from an open timing out on this client until its link next measures a round trip."""
        if self.stalled is not None and self._round_trips() != self.stalled:
            self.stalled = None
        return self.stalled is None

    def _round_trips(self):
        return self.link.connection.estimate.round_trips

    def closing(self, reason):
        """The link is ending because of ``reason`` (the first reason given wins)."""
        if self.close_reason is None:
            self.close_reason = reason

    def lost_reason(self):
        """Why the link (and the channels on it) closed."""
        return self.close_reason or CLIENT_LOST


@attr.s(slots=True, eq=False)
class Credential:
    """A client's credential: only its public key, never its token."""

    credential_id = attr.ib()
    name = attr.ib()
    tag = attr.ib()
    public_key = attr.ib(repr=False)
    created_time = attr.ib()
    last_used_time = attr.ib(default=None)
    revoked = attr.ib(default=False)


@attr.s(slots=True, eq=False)
class Channel:
    """One public user's connection, carried to a target by a client."""

    channel_id = attr.ib()
    public_port = attr.ib()
    user_ip = attr.ib()
    user_port = attr.ib()
    meter = attr.ib()
    target_ip = attr.ib(default=None)
    target_port = attr.ib(default=None)
    client_id = attr.ib(default=None)
    close_reason = attr.ib(default=None)  # set when the channel has closed
    close_time = attr.ib(default=None)
    user = attr.ib(default=None, repr=False)  # the public-port protocol
    opened = attr.ib(default=False)  # the client reached the target
    first_end = attr.ib(default=None)  # USER_CLOSED or TARGET_CLOSED: who sent FIN first
    abnormal = attr.ib(default=None)  # the first abnormal reason the channel is ending for
    # Noted by each sweep (see expire()): when bytes last moved, the byte
    # count then, and when the channel was first seen half-closed.
    active_at = attr.ib(default=None)
    swept_bytes = attr.ib(default=0)
    half_closed_at = attr.ib(default=None)

    @property
    def init_time(self):
        return self.meter.created

    @property
    def state(self):
        """What the API shows: CONNECTING, WORKING, CLOSING (a side has ended) or CLOSED."""
        if self.close_reason is not None:
            return CLOSED
        if not self.opened:
            return CONNECTING
        return CLOSING if self.first_end is not None else WORKING

    def ended(self, side):
        """One direction ended normally: ``side`` (USER_CLOSED or TARGET_CLOSED) sent FIN."""
        if self.first_end is None:
            self.first_end = side

    def aborted(self, reason):
        """The channel is ending abnormally because of ``reason`` (the first one wins)."""
        if self.abnormal is None:
            self.abnormal = reason

    def decide_close_reason(self):
        """The reason history records: the first abnormal one, else who ended first."""
        return self.abnormal or self.first_end or USER_CLOSED

    def expire(self, now, half_close_timeout, idle_timeout):
        """
        A sweep at ``now``: TIMEOUT if the channel is half-closed and has
        carried no byte for ``half_close_timeout`` seconds, IDLE_TIMEOUT if it
        has carried none for ``idle_timeout`` seconds (0: never), else None.
        Only opened channels expire (the open timeout covers the others);
        times are as the sweeps saw them, so a limit is reached up to one
        sweep interval late.
        """
        if not self.opened or self.close_reason is not None:
            return None
        moved = self.meter.recv_bytes + self.meter.send_bytes
        if self.active_at is None or moved != self.swept_bytes:
            self.active_at, self.swept_bytes = now, moved
        if self.first_end is not None and self.half_closed_at is None:
            self.half_closed_at = now
        if (self.half_closed_at is not None
                and now - max(self.half_closed_at, self.active_at) >= half_close_timeout):
            return TIMEOUT
        if idle_timeout and now - self.active_at >= idle_timeout:
            return IDLE_TIMEOUT
        return None


class IdBlocks:
    """
    Ids of one kind (``name``, e.g. ``channel ids``) handed out from blocks
    that ``reserve(count)`` has made durable: it fires with the first of
    ``count`` consecutive ids no one has had (the store's ``reserve_ids``).

    :meth:`start` reserves the first block.  Then :meth:`take` hands out
    ids from memory, and once half of the current block is used the next
    one is reserved in the background, so the reactor never waits for the
    disk.  If ids are taken faster than a block is written, :meth:`take`
    gives None until it is (the caller refuses what wanted the id: an id
    not yet on disk is never handed out) and every later block is twice
    as large, up to :data:`MAX_ID_BLOCK`.  A restart skips what is left of
    the blocks the last run reserved.
    """

    def __init__(self, name, reserve, size=ID_BLOCK):
        self.name = name
        self._reserve = reserve
        self._size = size
        self._next = self._end = self._half = 0  # the current block: [next, end)
        self._spare = None  # (first, end) of the block reserved ahead
        self._reserving = None  # the reservation in flight
        self._missed = 0  # takes that found no id since the last block arrived
        self._unreachable = False  # the database was unreachable at the last reservation

    def start(self):
        """Reserve the first block; fires once ids can be taken."""
        return self._reserve_next()

    def take(self):
        """The next id, or None if none is reserved on disk yet."""
        if self._next >= self._end and not self._use_spare():
            if not self._missed:
                self._size = min(self._size * 2, MAX_ID_BLOCK)
            self._missed += 1
            if self._reserving is None:
                self._reserve_next()
            return None
        taken, self._next = self._next, self._next + 1
        if self._next >= self._half and self._spare is None and self._reserving is None:
            self._reserve_next()
        return taken

    def _use_spare(self):
        if self._spare is None:
            return False
        (self._next, self._end), self._spare = self._spare, None
        self._half = self._next + (self._end - self._next) // 2
        return True

    def _reserve_next(self):
        size = self._size
        self._reserving = d = self._reserve(size)

        def reserved(first):
            self._reserving = None
            self._unreachable = False
            self._spare = (first, first + size)
            if self._next >= self._end:
                self._use_spare()
            if self._missed:
                log.warn("{missed} new {name} were refused while the database reserved"
                         " the next ids (the disk is slow); reserving {size} at a time now",
                         missed=self._missed, name=self.name, size=self._size)
                self._missed = 0

        def failed(failure):
            self._reserving = None
            if not self._end:
                return failure  # the first block: start() fails
            if failure.check(DatabaseUnavailable):  # its sentence says it all, once
                if not self._unreachable:
                    log.warn("Could not reserve {size} {name}: {why}", size=size, name=self.name,
                             why=failure.value)
                self._unreachable = True
            else:
                log.failure("Could not reserve {size} {name} on disk", failure,
                            size=size, name=self.name)
            return None

        return d.addCallbacks(reserved, failed)


class MemoryIds:
    """Ids from ``first`` up, in memory only: a registry's ids until it is given IdBlocks."""

    def __init__(self, first=1):
        self._count = itertools.count(first)

    def take(self):
        return next(self._count)


@attr.s(eq=False)
class Registry:
    """Everything alive in one server, keyed by id."""

    mappings = attr.ib(factory=dict)  # public port -> Mapping
    clients = attr.ib(factory=dict)  # client_id -> ClientSession
    channels = attr.ib(factory=dict)  # channel_id -> Channel
    credentials = attr.ib(factory=dict)  # credential_id -> Credential, revoked ones too
    _credential_keys = attr.ib(factory=dict)  # public key -> Credential
    _client_ids = attr.ib(factory=MemoryIds)  # anything with take(): an id, or None
    _channel_ids = attr.ib(factory=MemoryIds)
    _round_robin = attr.ib(factory=dict)  # tag -> count of picks so far

    def use_ids(self, client_ids, channel_ids):
        """Take ids from these (started :class:`IdBlocks`, or :class:`MemoryIds`) from now on."""
        self._client_ids, self._channel_ids = client_ids, channel_ids

    def new_client(self, ip, port, tag, now, link=None):
        """A new WORKING session, or None if no client id is on disk yet (see IdBlocks)."""
        client_id = self._client_ids.take()
        if client_id is None:
            return None
        session = ClientSession(
            client_id=client_id, ip=ip, port=port, tag=tag,
            meter=Meter(created=now), link=link,
        )
        self.clients[session.client_id] = session
        return session

    def new_channel(self, public_port, user_ip, user_port, now, user=None):
        """A new channel, or None if no channel id is on disk yet (see IdBlocks)."""
        channel_id = self.new_channel_id()
        if channel_id is None:
            return None
        channel = Channel(
            channel_id=channel_id, public_port=public_port,
            user_ip=user_ip, user_port=user_port, meter=Meter(created=now),
            user=user,
        )
        self.channels[channel.channel_id] = channel
        return channel

    def new_channel_id(self):
        """A channel id for a history row that is no live channel (refusals), or None."""
        return self._channel_ids.take()

    def add_credential(self, credential):
        self.credentials[credential.credential_id] = credential
        self._credential_keys[credential.public_key] = credential

    def credential_by_key(self, public_key):
        """The credential (revoked or not) whose public key this is; or None."""
        return self._credential_keys.get(public_key)

    def pick_client(self, tag, balance=None, exclude=None):
        """
        A WORKING (not draining) client with ``tag``, not ``exclude``; or
        None.  Clients whose opens timed out (not ``answering()``) are passed
        by while another can take the channel.  Round-robin among them, or
        the one carrying the fewest channels if ``balance`` is
        ``"least_channels"``.
        """
        candidates = [c for c in self.clients.values()
                      if c.tag == tag and c.state == WORKING and c is not exclude]
        candidates = [c for c in candidates if c.answering()] or candidates
        if not candidates:
            return None
        if balance == "least_channels":
            return min(candidates, key=lambda c: len(c.channels))
        n = self._round_robin.get(tag, 0)
        self._round_robin[tag] = n + 1
        return candidates[n % len(candidates)]

    def meters(self):
        """Every live meter, for the sampler."""
        for client in self.clients.values():
            yield client.meter
        for channel in self.channels.values():
            yield channel.meter

    def expired_channels(self, now, half_close_timeout, idle_timeout):
        """The open channels past a limit at ``now``, as (channel, reason): see Channel.expire."""
        expired = []
        for channel in self.channels.values():
            reason = channel.expire(now, half_close_timeout, idle_timeout)
            if reason is not None:
                expired.append((channel, reason))
        return expired

    def channels_on_port(self, public_port):
        return [c for c in self.channels.values() if c.public_port == public_port]
