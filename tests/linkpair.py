"""
Helpers for unit tests that run real links in memory: a server link and a
client link built by their factories and joined with ``twisted.test.iosim``,
the frames waiting in an iosim transport, and a transport for a channel's
local socket that records half-closes.
"""

from twisted.internet.testing import StringTransport
from twisted.test import iosim

from portmapper.client.agent import ClientLinkFactory
from portmapper.server.link import ServerLinkFactory
from tests.linkhelp import decode


def connectLinks(server, client_settings, clock, peer=None, greet=True):
    """
    A link built by ``ServerLinkFactory(server)`` and one built by
    ``ClientLinkFactory(client_settings, clock)``, joined in memory; the
    server sees the client at ``peer``.  Returns (server link, client link,
    iosim pump); with ``greet`` the handshake has been pumped through.
    """
    slink = ServerLinkFactory(server).buildProtocol(peer)
    clink = ClientLinkFactory(client_settings, clock).buildProtocol(None)
    io = iosim.connect(slink, iosim.FakeTransport(slink, True, peerAddress=peer),
                       clink, iosim.FakeTransport(clink, False), greet=greet, clock=clock)
    return slink, clink, io


def queued(transport):
    """The frames waiting in an iosim ``FakeTransport``, left where they are."""
    return decode(b"".join(transport.stream))


class EndTransport(StringTransport):
    """
    The transport of a channel's local socket: a StringTransport that also
    records a half-close of its write side and, like a TCP transport,
    accepts pause and resume while closing.
    """

    write_closed = False

    def __init__(self, peerAddress=None):
        super().__init__(peerAddress=peerAddress, lenient=True)

    def loseWriteConnection(self):
        self.write_closed = True
