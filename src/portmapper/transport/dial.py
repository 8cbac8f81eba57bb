"""
Dialling a TCP address with fewer system calls than Twisted's ``connectTCP``.

The client dials a target for every channel.  Twisted's ``tcp.Client``
makes its new socket non-blocking twice (two ``ioctl``), calls
``getsockopt(SO_ERROR)`` and ``connect()`` each time ``doConnect`` runs
(the second ``connect()`` only to be told ``EISCONN``), and once connected
stops reading and writing and starts reading again (three ``epoll_ctl``).
:func:`connect_tcp` is ``reactor.connectTCP`` with a client that makes the
socket non-blocking as it creates it (where the platform has
``SOCK_NONBLOCK``), calls ``connect()`` once and reads ``SO_ERROR`` only
when the socket is ready, and once connected only stops watching for
writability: five system calls fewer per connection.  An address needs no
resolving, so it goes to ``connect()`` without the two Deferreds Twisted
builds on the way.  And the attempt starts as soon as the connector is set
up (its timeout armed, the factory told ``startedConnecting``), before
``connect_tcp`` returns, rather than from a zero-delay timer on the
reactor's next turn: the timer costs a trip through the reactor's heap of
timers for every channel.  A dial that fails at once (``connect()`` refused
on the spot) so reaches the factory's ``clientConnectionFailed`` before
``connect_tcp`` returns.  Everything else (the connector, its timeout,
``stopConnecting``, the errors and their messages) is Twisted's own.

Leaving the socket registered for reading across the switch from
``doConnect`` to the ordinary ``doRead`` relies on the reactor looking the
method up at each event, as the epoll, poll and select reactors do; any
other reactor (a test's ``MemoryReactor``, say) gets ``connectTCP`` itself.
"""

import errno
import os
import socket

from twisted.internet import error, tcp

_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY)


# The reactors that look doRead/doWrite up at each event, by class (not imported
# here: a process loads only the reactor it runs).
_DYNAMIC_REACTORS = frozenset({
    "twisted.internet.epollreactor.EPollReactor",
    "twisted.internet.pollreactor.PollReactor",
    "twisted.internet.selectreactor.SelectReactor",
})
_dynamic = {}  # reactor class -> whether it or a base is one of _DYNAMIC_REACTORS


def _looks_up_at_each_event(reactor):
    cls = type(reactor)
    known = _dynamic.get(cls)
    if known is None:
        known = _dynamic[cls] = any(f"{c.__module__}.{c.__qualname__}" in _DYNAMIC_REACTORS
                                    for c in cls.__mro__)
    return known


class _Client(tcp.Client):
    """A ``tcp.Client`` that connects with fewer system calls (see the module docstring)."""

    _dialled = False  # connect() was called and is in progress
    _begin = None  # what starts the attempt (or fails it): connect_tcp calls it

    def _finishInit(self, whenDone, skt, error, reactor):
        # Twisted's, but the attempt is kept for connect_tcp to begin rather
        # than put on a timer for the reactor's next turn.
        if whenDone:
            self._commonConnection.__init__(self, skt, None, reactor)
            self._begin = whenDone
        else:
            self._begin = lambda: self.failIfNotConnected(error)

    def createInternetSocket(self):
        sock = socket.socket(self.addressFamily, self.socketType | _NONBLOCK)
        if not _NONBLOCK:
            sock.setblocking(False)
        return sock

    def resolveAddress(self):
        if self._requiresResolution:  # a name: Twisted resolves it
            super().resolveAddress()
            return
        try:
            self._setRealAddress(self.addr)
        except Exception as e:  # as Twisted's errback there would
            self.failIfNotConnected(e)

    def doConnect(self):
        self.doWrite = self.doConnect
        self.doRead = self.doConnect
        if not hasattr(self, "connector"):
            return  # the attempt failed, or was stopped, before this call
        if self._dialled:
            # The socket is ready: connected, unless SO_ERROR says why not.
            err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        else:
            try:
                err = self.socket.connect_ex(self.realAddress)
            except OSError as e:
                err = e.args[0]
            if err in _IN_PROGRESS:
                self._dialled = True
                self.startReading()  # a refusal is seen as readable, with SO_ERROR set
                self.startWriting()
                return
            if err == errno.EISCONN:
                err = 0
        if err:
            self.failIfNotConnected(error.getConnectError((err, os.strerror(err))))
            return
        del self.doWrite
        del self.doRead
        self.stopWriting()  # reading stays on: the reactor finds the new doRead at the next event
        self._connectDone()


class _Connector(tcp.Connector):
    def _makeTransport(self):
        return _Client(self.host, self.port, self.bindAddress, self, self.reactor)


def connect_tcp(reactor, host, port, factory, timeout=30):
    """``reactor.connectTCP(host, port, factory, timeout=timeout)``; see the module docstring."""
    if not _looks_up_at_each_event(reactor):
        return reactor.connectTCP(host, port, factory, timeout=timeout)
    connector = _Connector(host, port, factory, timeout, None, reactor)
    connector.connect()
    if connector.state == "connecting":  # the factory may have stopped it already
        connector.transport._begin()
    return connector
