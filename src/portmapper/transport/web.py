"""
The server's outgoing HTTP (webhooks, a cluster node asking the others):
treq over Twisted's ``Agent``, with HTTPS on the standard library's ``ssl``
(:mod:`portmapper.transport.tls`), as the tunnel link does.

Why not the ``Agent``'s own HTTPS: it runs on pyOpenSSL, and the tunnel's
processes are started without pyOpenSSL loaded (see
:mod:`portmapper.transport.lean`), which keeps about 12 MiB out of each of
them.  :class:`EndpointFactory` gives the ``Agent`` a plain TCP endpoint for
``http`` and the same endpoint wrapped in :class:`~.tls.TLSClientEndpoint`
for ``https``, which verifies the certificate and the host name against the
system's certificate authorities (or the ``context`` given).  Those
authorities are read from disk in a thread of the reactor's pool, once, at
the first HTTPS request: never on the reactor's thread.
"""

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from portmapper.transport import tls

#: Seconds to wait for a TCP connection to an HTTP server.
CONNECT_TIMEOUT = 10


@implementer(IAgentEndpointFactory)
class EndpointFactory:
    """Endpoints for ``http`` and ``https`` URIs; HTTPS verified with ``context``."""

    def __init__(self, reactor, context=None, connect_timeout=CONNECT_TIMEOUT):
        self._reactor = reactor
        self._context = context
        self._timeout = connect_timeout
        self._waiting = []  # Deferreds of connections waiting for the system's authorities

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii")
        tcp = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if uri.scheme == b"http":
            return tcp
        if uri.scheme == b"https":
            if self._context is None:
                return _Verifying(self, tcp, host)
            return tls.TLSClientEndpoint(tcp, self._context, host)
        raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")

    def context(self):
        """
        A Deferred of the client context: the one given, else the system's
        authorities, read in a thread the first time (a failed read is tried
        again at the next request).
        """
        if self._context is not None:
            return succeed(self._context)
        waiter = Deferred()
        self._waiting.append(waiter)
        if len(self._waiting) == 1:  # the first to wait reads them
            deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                              tls.client_context).addBoth(self._read)
        return waiter

    def _read(self, result):
        if not isinstance(result, Failure):
            self._context = result
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            (waiter.errback if isinstance(result, Failure) else waiter.callback)(result)


@implementer(IStreamClientEndpoint)
class _Verifying:
    """HTTPS to ``host`` by ``tcp`` once ``factory`` has the system's authorities."""

    def __init__(self, factory, tcp, host):
        self._factory = factory
        self._tcp = tcp
        self._host = host

    def connect(self, protocol_factory):
        return self._factory.context().addCallback(
            lambda context: tls.TLSClientEndpoint(self._tcp, context, self._host)
            .connect(protocol_factory))


def http_client(reactor, context=None):
    """
    A treq ``HTTPClient`` on ``reactor`` that keeps no connection open
    between requests (so none is left open at stop); HTTPS verified with
    ``context`` (default: the system's certificate authorities).
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent.usingEndpointFactory(reactor, EndpointFactory(reactor, context), pool=pool)
    return HTTPClient(agent)
