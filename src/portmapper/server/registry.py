"""
The server's live state: port mappings, connected clients, open channels.

These are plain attrs records plus the lookups the rest of the server
needs; nothing here touches a socket.  ``Registry`` hands out ids that are
never reused for the server's lifetime (and, seeded from the store, across
restarts).
"""

import itertools

import attr

from portmapper.server.meter import Meter

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


@attr.s(slots=True, eq=False)
class Mapping:
    """Public port ``public_port`` is carried to ``target_ip:target_port``
    by a client tagged ``tag``."""

    public_port = attr.ib()
    target_ip = attr.ib()
    target_port = attr.ib()
    tag = attr.ib(default="default")
    listening = attr.ib(default=None, repr=False)  # IListeningPort once bound

    def as_json(self):
        return {"ip": self.target_ip, "port": self.target_port, "tag": self.tag}


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

    @property
    def init_time(self):
        return self.meter.created

    def closing(self, reason):
        """The link is ending because of ``reason`` (the first reason given wins)."""
        if self.close_reason is None:
            self.close_reason = reason

    def lost_reason(self):
        """Why the link (and the channels on it) closed."""
        return self.close_reason or CLIENT_LOST


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


@attr.s(eq=False)
class Registry:
    """Everything alive in one server, keyed by id."""

    mappings = attr.ib(factory=dict)  # public port -> Mapping
    clients = attr.ib(factory=dict)  # client_id -> ClientSession
    channels = attr.ib(factory=dict)  # channel_id -> Channel
    _client_ids = attr.ib(default=attr.Factory(lambda: itertools.count(1)))
    _channel_ids = attr.ib(default=attr.Factory(lambda: itertools.count(1)))
    _round_robin = attr.ib(factory=dict)  # tag -> count of picks so far

    def seed_ids(self, last_client_id, last_channel_id):
        """Continue numbering after ids already used (e.g. found in history),
        and never below an id this registry has already handed out."""
        self._client_ids = itertools.count(max((last_client_id or 0) + 1, next(self._client_ids)))
        self._channel_ids = itertools.count(
            max((last_channel_id or 0) + 1, next(self._channel_ids)))

    def new_client(self, ip, port, tag, now, link=None):
        session = ClientSession(
            client_id=next(self._client_ids), ip=ip, port=port, tag=tag,
            meter=Meter(created=now), link=link,
        )
        self.clients[session.client_id] = session
        return session

    def new_channel(self, public_port, user_ip, user_port, now, user=None):
        channel = Channel(
            channel_id=next(self._channel_ids), public_port=public_port,
            user_ip=user_ip, user_port=user_port, meter=Meter(created=now),
            user=user,
        )
        self.channels[channel.channel_id] = channel
        return channel

    def pick_client(self, tag):
        """A WORKING (not draining) client with ``tag``, round-robin among them; or None."""
        candidates = [c for c in self.clients.values() if c.tag == tag and c.state == WORKING]
        if not candidates:
            return None
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
