"""
Socket settings for the link and for every channel's local connection.

Twisted reads at most ``bufferSize`` bytes per call (64 KiB by default),
pauses a producer once that much is queued for writing, and hands the socket
at most ``SEND_LIMIT`` bytes (128 KiB) per write event.  A relay that moves
hundreds of MB/s wants fewer, larger calls: :func:`tune_transport` raises
both, and turns Nagle's algorithm off, since a tunnel forwards what it reads
at once and Nagle plus delayed ACK would stall small messages for 40 ms.

Each channel's local connection (a public user's, a target's) also gets TCP
keepalive (:func:`keep_alive`): a peer whose machine vanished without a FIN
or RST is found within about two minutes of silence and the channel closes,
where it would otherwise hold its sockets forever.  The link needs none: it
pings.  :func:`tune_channel` gives a channel's connection both at the cost
of one system call rather than five where it can: on Linux an accepted
socket inherits TCP_NODELAY and the keepalive settings of its listening
socket, so the first connection a port accepts also sets them on the
listener, and each later one only checks that it has them.

Listening sockets get a backlog of ``LISTEN_BACKLOG`` connections (where a
description does not give one): Twisted's default of 50 overflows when many
users or clients connect at once, and each overflow costs the connector a
one-second SYN retry.
"""

import socket
import sys

READ_SIZE = 256 * 1024  # most bytes read per call, and the write buffer's high-water mark
SEND_LIMIT = 4 * READ_SIZE  # most bytes Twisted hands the socket per write event
LISTEN_BACKLOG = 1024  # connections the kernel queues for accept() on a listening socket
KEEPALIVE_IDLE = 60  # seconds of silence before the first keepalive probe
KEEPALIVE_INTERVAL = 10  # seconds between unanswered probes
KEEPALIVE_COUNT = 6  # unanswered probes before the connection is reset

# (option, value) where this platform has the option; macOS names TCP_KEEPIDLE TCP_KEEPALIVE.
_KEEPALIVE_OPTIONS = [
    (option, value) for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None)), KEEPALIVE_IDLE),
        (getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL),
        (getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_COUNT),
    ) if option is not None
]
# What a channel's connection gets, as setsockopt arguments; SO_KEEPALIVE last: a
# socket accepted with it on was accepted after the listener had every other one.
_CHANNEL_OPTIONS = (
    [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    + [(socket.IPPROTO_TCP, option, value) for option, value in _KEEPALIVE_OPTIONS]
    + [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
)
# Linux gives an accepted socket the TCP options of its listening socket.
_INHERITED = sys.platform.startswith("linux")


def tune_transport(transport):
    """
    Turn off Nagle's algorithm, read in large chunks and write in large
    ones, where ``transport`` is TCP underneath (anything else is left as it is).
    """
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):
        pass
    if isinstance(getattr(transport, "bufferSize", None), int):
        transport.bufferSize = READ_SIZE
    if isinstance(getattr(transport, "SEND_LIMIT", None), int):
        transport.SEND_LIMIT = SEND_LIMIT


def keep_alive(transport):
    """
    Turn on TCP keepalive, probing after ``KEEPALIVE_IDLE`` seconds of
    silence, where ``transport`` is TCP underneath (anything else is left as it is).
    """
    try:
        transport.setTcpKeepAlive(True)
        sock = transport.getHandle()
        for option, value in _KEEPALIVE_OPTIONS:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except (AttributeError, OSError):
        pass


def tune_channel(transport):
    """
    :func:`tune_transport` and :func:`keep_alive` for a channel's local
    connection, where ``transport`` is TCP underneath (anything else is left
    as it is).  An accepted connection on Linux inherits the socket options
    from its listening socket (``transport.server``), which the first one
    sets there (see the module docstring).
    """
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket):
        tune_transport(transport)
        keep_alive(transport)
        return
    transport.bufferSize = READ_SIZE
    transport.SEND_LIMIT = SEND_LIMIT
    listener = getattr(getattr(transport, "server", None), "socket", None)
    if _INHERITED and isinstance(listener, socket.socket):
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE):
                return  # accepted after the listener had them all
            for level, option, value in _CHANNEL_OPTIONS:
                listener.setsockopt(level, option, value)  # for the connections after this one
        except OSError:
            pass
    try:
        for level, option, value in _CHANNEL_OPTIONS:
            sock.setsockopt(level, option, value)
    except OSError:
        pass
