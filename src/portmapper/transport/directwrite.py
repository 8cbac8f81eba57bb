"""
Writing to a TCP transport at once, rather than on the reactor's next turn.

Twisted's ``transport.write`` only queues: the bytes go out when the reactor
next finds the socket writable, which costs two ``epoll_ctl`` calls (start
and stop watching for writability) and one more ``epoll_wait`` per write.
On a relay that writes every chunk it reads, that is most of the overhead
per chunk, and a round trip through the tunnel pays it once per hop.

``direct_writers(transport)`` returns ``(write, writeSequence)`` for the
transport.  For a plain TCP transport (``twisted.internet.tcp.Connection``
without TLS) whose write buffer is empty, they hand the bytes straight to the
socket (``sendmsg`` gathers a header and its payload without joining them);
whatever the socket does not take, and every write while the transport still
holds queued bytes, is closing, or runs TLS, goes through the transport's
own ``write``/``writeSequence``, so ordering, producer pausing and error
handling stay Twisted's.  For any other transport they are the transport's
own methods.

``lose_write_connection(transport)`` half-closes the same way: Twisted's
``loseWriteConnection`` waits for the reactor's next write event to shut
the socket's write side; with nothing queued and no producer registered,
it is shut at once (and the protocol's ``writeConnectionLost`` called, as
Twisted does), which spares a channel's end that turn on each side.

This reads a few of Twisted's attributes (``socket``, ``dataBuffer``,
``offset``, ``_tempDataLen``, ``_writeDisconnecting``, ``TLS`` (a class
attribute of every ``tcp.Connection``, true once ``startTLS`` ran); and
``producer``, ``_writeDisconnected``, ``_closeWriteConnection`` to
half-close), checked on
the first transport of each class (Twisted's ``__init__`` gives every
instance the same ones); a Twisted without them gets the ordinary path.

``queued_bytes(transport)`` reads the same queue, plus the kernel's send
queue where the platform tells it (Linux's ``SIOCOUTQ``), to tell how many
written bytes the peer has not acknowledged yet: the link watches it to
tell a slow reader from one that reads nothing.  Twisted's queue alone is
not enough: the socket takes more of it only once half the kernel's send
buffer (megabytes, autotuned) is free, which a slow reader may take longer
to free than the ping timeout.
"""

import struct

from twisted.internet import tcp

try:
    from fcntl import ioctl
    from termios import TIOCOUTQ  # SIOCOUTQ: bytes in a TCP socket's send queue
except ImportError:  # not POSIX
    ioctl = TIOCOUTQ = None

_NEEDED = ("socket", "dataBuffer", "offset", "_tempDataLen", "_writeDisconnecting",
           "disconnecting", "connected", "TLS", "producer", "_writeDisconnected",
           "_closeWriteConnection")
_QUEUE = ("dataBuffer", "offset", "_tempDataLen")


def queued_bytes(transport):
    """
    Bytes written to ``transport`` that the peer has not acknowledged yet:
    Twisted's queue plus the kernel's send queue (where it can be read); or
    None where that cannot be told.  For our TLS transport, the TCP
    transport it writes to is looked at.
    """
    for t in (transport, getattr(transport, "transport", None)):
        if isinstance(t, tcp.Connection) and all(hasattr(t, name) for name in _QUEUE):
            return len(t.dataBuffer) - t.offset + t._tempDataLen + _kernel_queued(t)
    return None


def _kernel_queued(transport):
    """Bytes in the kernel's send queue of ``transport``'s socket (0 where it cannot be read)."""
    if ioctl is None:
        return 0
    try:
        return struct.unpack("i", ioctl(transport.socket.fileno(), TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, AttributeError, ValueError):
        return 0


_direct = {}  # transport class -> whether its instances have every attribute of _NEEDED


def _writes_directly(transport):
    """Whether ``transport`` is plain TCP with the attributes we read (known per class)."""
    cls = type(transport)
    known = _direct.get(cls)
    if known is None:
        known = _direct[cls] = isinstance(transport, tcp.Connection) and all(
            hasattr(transport, name) for name in _NEEDED)
    return known


def _idle(t):
    """
    True when ``t`` (one that _writes_directly) queues nothing and may be
    written to directly.  Twisted empties ``dataBuffer`` once all of it is
    sent; while it holds bytes, sent or not, we write the queued way, which is
    never wrong.
    """
    return (not t._tempDataLen and not t.dataBuffer and t.connected
            and not t.disconnecting and not t._writeDisconnecting and not t.TLS)


def lose_write_connection(transport):
    """``transport.loseWriteConnection()``, at once where it can be (see the module docstring)."""
    if _writes_directly(transport) and _idle(transport) and transport.producer is None:
        # What Twisted's doWrite does once the buffer is empty: the flags first,
        # in case writeConnectionLost calls loseConnection.
        transport._writeDisconnecting = transport._writeDisconnected = True
        transport._closeWriteConnection()
    else:
        transport.loseWriteConnection()


def direct_writers(transport):
    """``(write, writeSequence)`` for ``transport``; see the module docstring."""
    if not _writes_directly(transport):
        return transport.write, transport.writeSequence

    t = transport
    queue_one = t.write
    queue_many = t.writeSequence
    send = t.socket.send
    sendmsg = t.socket.sendmsg

    def write(data):
        # _idle(t), inline: this runs once per chunk relayed
        if (t._tempDataLen or t.dataBuffer or not t.connected
                or t.disconnecting or t._writeDisconnecting or t.TLS):
            queue_one(data)
            return
        try:
            sent = send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            queue_one(data)  # Twisted finds the error on its own write and reports it
            return
        if sent < len(data):
            queue_one(data[sent:])

    def writeSequence(chunks):
        if not _idle(t):
            queue_many(chunks)
            return
        try:
            sent = sendmsg(chunks)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            queue_many(chunks)
            return
        for i, chunk in enumerate(chunks):
            if sent < len(chunk):
                rest = chunks[i:]
                if sent:
                    rest[0] = chunk[sent:]
                queue_many(rest)
                return
            sent -= len(chunk)

    return write, writeSequence
