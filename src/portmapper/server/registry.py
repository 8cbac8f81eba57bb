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
CLOSED = "CLOSED"
# Channel states (plus WORKING and CLOSED)
CONNECTING = "CONNECTING"
CLOSING = "CLOSING"

# Why a channel closed, as recorded in history (docs/api.rst lists exactly these).
USER_CLOSED = "user closed"
TARGET_CLOSED = "target closed"
TARGET_REFUSED = "target refused"
NO_CLIENT = "no client"
CLIENT_LOST = "client lost"
CLOSED_BY_ADMIN = "closed by admin"
MAPPING_DELETED = "mapping deleted"
TIMEOUT = "timeout"
PROTOCOL_ERROR = "protocol error"


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

    @property
    def init_time(self):
        return self.meter.created


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
    state = attr.ib(default=CONNECTING)
    close_reason = attr.ib(default=None)
    close_time = attr.ib(default=None)
    user = attr.ib(default=None, repr=False)  # the public-port protocol

    @property
    def init_time(self):
        return self.meter.created


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
        """A WORKING client with ``tag``, round-robin among them; or None."""
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

    def channels_on_port(self, public_port):
        return [c for c in self.channels.values() if c.public_port == public_port]
