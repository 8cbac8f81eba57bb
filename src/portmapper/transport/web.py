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
system's certificate authorities (or the ``context`` given).
"""

from treq.client import HTTPClient
from twisted.internet.endpoints import HostnameEndpoint
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

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii")
        tcp = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if uri.scheme == b"http":
            return tcp
        if uri.scheme == b"https":
            if self._context is None:
                self._context = tls.client_context()  # the system's authorities, loaded once
            return tls.TLSClientEndpoint(tcp, self._context, host)
        raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")


def http_client(reactor, persistent=False, context=None):
    """
    A treq ``HTTPClient`` on ``reactor``; ``persistent`` keeps connections
    open between requests; HTTPS verified with ``context`` (default: the
    system's certificate authorities).
    """
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    agent = Agent.usingEndpointFactory(reactor, EndpointFactory(reactor, context), pool=pool)
    return HTTPClient(agent)
