"""
The tunnel link's endpoints, from descriptions parsed once.

The server's ``--client-port`` and the client's ``--server`` are endpoint
descriptions in Twisted's syntax.  When the options are read, config.py
turns each into a spec (:func:`server_spec`, :func:`client_spec`): the text,
kept for display, plus what building the endpoint needs.  For our own TLS
kinds (``ssl:`` on the server, ``tls:`` on the client, see
:mod:`portmapper.transport.tls`) that is the parsed description with its TLS
context already loaded, so a missing certificate is a start-up error and
the files are read once.  Any other kind is checked by Twisted's parser
then and built by it at start (Twisted binds an endpoint to its reactor
when it parses, so there is nothing to keep but the text).

At start, :func:`link_server_endpoint` and :func:`link_client_endpoint`
build the endpoint from the spec.  :func:`tcp_server_endpoint` is the one
choice between a TCP4 and a TCP6 server endpoint, for the link's TLS port
and the mapped public ports alike.  Every server endpoint built here (the
admin API's too, with :func:`server_endpoint`) listens with a backlog of
``LISTEN_BACKLOG`` unless its description gives one.
"""

import attr
from twisted.internet.endpoints import (
    HostnameEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint, clientFromString,
    serverFromString,
)

from portmapper.transport import tls
from portmapper.transport.tune import LISTEN_BACKLOG

_TCP_KINDS = ("tcp", "tcp6")
_TCP_BACKLOG_ARG = 2  # tcp:PORT:INTERFACE:BACKLOG takes it third when positional


@attr.s(frozen=True)
class _Spec:
    text = attr.ib()  # the description as given; str() of the spec
    tls = attr.ib(default=None, eq=False, repr=False)  # tls.parse_*()'s result, or None

    def __str__(self):
        return self.text


class ServerSpec(_Spec):
    """Where the server listens for tunnel clients: see :func:`server_spec`."""


class ClientSpec(_Spec):
    """Where the client dials the server: see :func:`client_spec`."""


def _twisted(parse, text):
    """Twisted's ``parse`` (reactor None: nothing listens or connects) of ``text``."""
    try:
        parse(None, text)
    except (TypeError, OSError) as e:  # a missing or unknown parameter; an unreadable file
        raise ValueError(str(e)) from e


def check_server_description(text):
    """``text`` if Twisted's ``serverFromString`` parses it; ValueError with its reason."""
    _twisted(serverFromString, text)
    return text


def _spec(spec_type, parse_ours, parse_twisted, description):
    """``description`` as a ``spec_type``: parsed by ``parse_ours``, else checked by Twisted."""
    if isinstance(description, spec_type):
        return description
    parsed = parse_ours(description)
    if parsed is None:
        _twisted(parse_twisted, description)
    return spec_type(description, parsed)


def server_spec(description):
    """
    A :class:`ServerSpec` for a description (a spec is returned as it is):
    our TLS for ``ssl:``, else any Twisted server endpoint.  Raises
    ``ValueError`` with the reason.
    """
    return _spec(ServerSpec, tls.parse_server, serverFromString, description)


def client_spec(description):
    """
    A :class:`ClientSpec` for a description (a spec is returned as it is):
    our TLS for ``tls:``, else any Twisted client endpoint.  Raises
    ``ValueError`` with the reason.
    """
    return _spec(ClientSpec, tls.parse_client, clientFromString, description)


def server_endpoint(reactor, description):
    """
    Twisted's ``serverFromString`` of ``description``, with a backlog of
    ``LISTEN_BACKLOG`` for a ``tcp:`` or ``tcp6:`` one that gives none.
    """
    kind, args, kwargs = tls.split_description(description)
    if kind in _TCP_KINDS and "backlog" not in kwargs and len(args) <= _TCP_BACKLOG_ARG:
        description += f":backlog={LISTEN_BACKLOG}"
    return serverFromString(reactor, description)


def tcp_server_endpoint(reactor, port, interface="", backlog=LISTEN_BACKLOG):
    """A TCP server endpoint on ``interface`` (an IP address; '' for every IPv4 one)."""
    endpoint_type = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
    return endpoint_type(reactor, port, backlog=backlog, interface=interface)


def link_server_endpoint(reactor, spec):
    """The endpoint the server listens on for tunnel clients, from a spec (or a description)."""
    spec = server_spec(spec)
    if spec.tls is None:
        return server_endpoint(reactor, spec.text)
    port, interface, backlog, context = spec.tls
    return tls.TLSServerEndpoint(tcp_server_endpoint(reactor, port, interface, backlog), context)


def link_client_endpoint(reactor, spec):
    """The endpoint the client dials the server on, from a spec (or a description)."""
    spec = client_spec(spec)
    if spec.tls is None:
        return clientFromString(reactor, spec.text)
    host, port, timeout, context = spec.tls
    return tls.TLSClientEndpoint(HostnameEndpoint(reactor, host, port, timeout=timeout),
                                 context, host)
