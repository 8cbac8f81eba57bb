"""
Socket settings for the link and for every channel's local connection.

Twisted reads at most ``bufferSize`` bytes per call (64 KiB by default),
pauses a producer once that much is queued for writing, and hands the socket
at most ``SEND_LIMIT`` bytes (128 KiB) per write event.  A relay that moves
hundreds of MB/s wants fewer, larger calls: :func:`tune_transport` raises
both, and turns Nagle's algorithm off, since a tunnel forwards what it reads
at once and Nagle plus delayed ACK would stall small messages for 40 ms.

Listening sockets get a backlog of ``LISTEN_BACKLOG`` connections (where a
description does not give one): Twisted's default of 50 overflows when many
users or clients connect at once, and each overflow costs the connector a
one-second SYN retry.
"""

READ_SIZE = 256 * 1024  # most bytes read per call, and the write buffer's high-water mark
SEND_LIMIT = 4 * READ_SIZE  # most bytes Twisted hands the socket per write event
LISTEN_BACKLOG = 1024  # connections the kernel queues for accept() on a listening socket


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
