"""
Tests for the link handshake: the HMAC proof (L{portmapper.protocol.auth})
and the exchange between a server link (L{ServerLinkFactory}, whose owner is
a L{ServerLinkHandler}) and a client link (L{ClientLinkFactory}).

A pair is joined in memory with C{twisted.test.iosim}; a link facing a
misbehaving peer alone is driven over a L{StringTransport} with hand-made
frames.  The server's side sees a L{FakeServer}: an L{ILinkServer} with
settings, a clock, a real L{Registry}, and a record of the clients it
admitted, saw draining and lost.
"""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from portmapper.client.agent import ClientLinkFactory, ClientLinkHandler, LinkService
from portmapper.config import ClientSettings, ServerSettings
from portmapper.protocol import auth, frames
from portmapper.protocol.frames import (
    AUTH, AUTH_CREDENTIAL, AUTH_SHARED_TOKEN, GOAWAY, GOAWAY_CLOSING, GOAWAY_DRAINING, HELLO, PING, PONG,
    REFUSE, WELCOME,
)
from portmapper.server.core import PortMapperServer
from portmapper.server.link import ILinkServer, ServerLinkFactory, ServerLinkHandler
from portmapper.server.registry import (
    CLIENT_LOST, CLOSED, PROTOCOL_ERROR, Credential, MemoryIds, Registry,
)
from portmapper.transport.link import ILinkOwner
from tests.linkhelp import written
from tests.linkpair import connectLinks, queued

TOKEN = "s3cret"
TAG = "tag10"
CLIENT_ID = 7
HANDSHAKE_TIMEOUT = 5.0
PEER = IPv4Address("TCP", "203.0.113.9", 40000)


@implementer(ILinkServer)
class FakeServer:
    """What L{ServerLinkHandler} uses of the server, recording admissions and losses."""

    def __init__(self, clock, token=TOKEN):
        self.settings = ServerSettings(token=token, window=4096, ping_interval=10.0,
                                       ping_timeout=30.0, handshake_timeout=HANDSHAKE_TIMEOUT)
        self.clock = clock
        self.registry = Registry()
        self.registry.use_ids(MemoryIds(CLIENT_ID), MemoryIds())
        self.connected = []  # (ip, port, tag)
        self.draining = []  # sessions
        self.disconnected = []  # (session, reason)
        self.handshake_failures = []  # kinds

    def clientConnected(self, link, ip, port, tag, credential=None):
        self.connected.append((ip, port, tag))
        session = self.registry.new_client(ip, port, tag, self.clock.seconds(), link)
        session.credential_id = credential and credential.credential_id
        return session

    def findCredential(self, public_key):
        return self.registry.credential_by_key(public_key)

    def clientDraining(self, session):
        self.draining.append(session)

    def clientDisconnected(self, session, reason):
        self.registry.clients.pop(session.client_id, None)
        self.disconnected.append((session, reason))

    def handshakeFailed(self, kind):
        self.handshake_failures.append(kind)


def clientSettings(token=TOKEN, tag=TAG):
    return ClientSettings(token=token, tag=tag, handshake_timeout=HANDSHAKE_TIMEOUT)


def connectPair(clock, greet=True, **client):
    """A server link and a client link joined in memory: (server, slink, clink, pump)."""
    server = FakeServer(clock)
    slink, clink, pump = connectLinks(server, clientSettings(**client), clock, PEER, greet)
    return server, slink, clink, pump


def connectServer(clock, token=TOKEN):
    """
    A server link on a StringTransport from PEER, its HELLO read back:
    (server, link, the HELLO's nonce).
    """
    server = FakeServer(clock, token)
    link = ServerLinkFactory(server).buildProtocol(PEER)
    link.makeConnection(StringTransport(peerAddress=PEER))
    [(ftype, _, payload)] = written(link)
    assert ftype == HELLO
    return server, link, frames.parse_hello(payload)[2]


def connectClient(clock, **kwargs):
    """A client link (from its factory) on a StringTransport."""
    link = ClientLinkFactory(clientSettings(**kwargs), clock).buildProtocol(None)
    link.makeConnection(StringTransport())
    return link


def loseConnection(link):
    link.connectionLost(Failure(ConnectionDone()))


def authFrame(nonce, token=TOKEN, tag=TAG, magic=frames.MAGIC,
              version=frames.PROTOCOL_VERSION, method=AUTH_SHARED_TOKEN):
    """An AUTH frame, any of whose fields may be wrong."""
    payload = struct.pack(">4sBB", magic, version, method) + auth.proof(token, nonce, tag)
    return frames.encode(AUTH, 0, payload + tag.encode("utf-8"))


def loggedText(events):
    return " ".join(formatEvent(e) for e in events)


def failures(events):
    """The logged events that carry a traceback (an unexpected exception)."""
    return [e for e in events if "log_failure" in e]


class ProofTests(SynchronousTestCase):
    """The proof shows the token for one nonce and one tag, and nothing else."""

    def setUp(self):
        self.nonce = auth.make_nonce()
        self.answer = auth.proof(TOKEN, self.nonce, TAG)

    def test_nonce(self):
        """Nonces are NONCE_SIZE random bytes, a new one each time."""
        self.assertEqual(len(self.nonce), auth.NONCE_SIZE)
        self.assertNotEqual(auth.make_nonce(), auth.make_nonce())

    def test_rightToken(self):
        """The proof made with the token verifies for the same nonce and tag."""
        self.assertEqual(len(self.answer), 32)
        self.assertTrue(auth.verify(TOKEN, self.nonce, TAG, self.answer))

    def test_tokenNotSent(self):
        """The proof does not contain the token."""
        self.assertNotIn(TOKEN.encode(), self.answer)

    def test_wrongToken(self):
        """A proof made with another token does not verify."""
        self.assertFalse(auth.verify(TOKEN, self.nonce, TAG, auth.proof("guess", self.nonce, TAG)))

    def test_otherNonce(self):
        """A proof for another nonce (a replay) does not verify."""
        self.assertFalse(auth.verify(TOKEN, auth.make_nonce(), TAG, self.answer))

    def test_otherTag(self):
        """A proof made for another tag does not verify under this one."""
        self.assertFalse(auth.verify(TOKEN, self.nonce, "tag11", self.answer))

    def test_truncatedProof(self):
        """A shortened proof does not verify."""
        self.assertFalse(auth.verify(TOKEN, self.nonce, TAG, self.answer[:16]))


class SeamTests(SynchronousTestCase):
    """The doubles and the real objects provide the interfaces the links use."""

    def test_fakeServerIsTheRealServersShape(self):
        """The fake server and PortMapperServer both provide ILinkServer."""
        clock = MemoryReactorClock()
        self.assertTrue(verifyObject(ILinkServer, FakeServer(clock)))
        self.assertTrue(verifyObject(ILinkServer, PortMapperServer(ServerSettings(), clock, None)))

    def test_handlersAreLinkOwners(self):
        """The server's and the client's handlers provide ILinkOwner."""
        clock = MemoryReactorClock()
        self.assertTrue(verifyObject(ILinkOwner, ServerLinkHandler(FakeServer(clock))))
        factory = ClientLinkFactory(clientSettings(), clock)
        self.assertTrue(verifyObject(ILinkOwner, ClientLinkHandler(factory)))

    def test_factoriesPassTheSettings(self):
        """Each factory builds its link's core with the windows and timeouts of its settings."""
        clock = MemoryReactorClock()
        server = FakeServer(clock)
        s = server.settings
        conn = ServerLinkFactory(server).buildProtocol(PEER).connection
        self.assertEqual((conn.window, conn.ping_interval, conn.ping_timeout),
                         (s.window, s.ping_interval, s.ping_timeout))
        c = ClientSettings(window=65536, max_window=1 << 20, ping_interval=3.0, ping_timeout=9.0)
        link = ClientLinkFactory(c, clock).buildProtocol(None)
        conn = link.connection
        self.assertEqual((conn.window, conn.max_window, conn.ping_interval, conn.ping_timeout),
                         (65536, 1 << 20, 3.0, 9.0))
        self.assertEqual(link.close_grace, c.handshake_timeout)


class HandshakeTests(SynchronousTestCase):
    """A client with the right token is admitted; anything else is not."""

    def setUp(self):
        self.clock = MemoryReactorClock()

    def test_rightToken(self):
        """The right token gets WELCOME with the client id, and both links are established."""
        server, slink, clink, pump = connectPair(self.clock)
        self.assertEqual(clink.owner.client_id, CLIENT_ID)
        self.assertEqual(clink.owner.factory.unwelcomed, 0)
        self.assertTrue(slink.connection.established)
        self.assertTrue(clink.connection.established)
        self.assertEqual(server.connected, [("203.0.113.9", 40000, TAG)])
        session = slink.owner.session
        self.assertIs(server.registry.clients[CLIENT_ID], session)
        # The session meters the link, counting what came before admission too.
        self.assertIs(slink.connection.meter, session.meter)
        self.assertGreater(session.meter.recv_bytes, len(authFrame(b"n" * 32)))
        self.assertGreater(session.meter.send_bytes, len(frames.hello(b"n" * 32)))

    def test_messagesInOrder(self):
        """The server says HELLO, the client AUTH (a proof for that nonce), the server WELCOME."""
        server, slink, clink, pump = connectPair(self.clock, greet=False)
        [(ftype, _, payload)] = queued(slink.transport)
        self.assertEqual(ftype, HELLO)
        magic, version, nonce = frames.parse_hello(payload)
        self.assertEqual((magic, version, len(nonce)), (frames.MAGIC, 2, auth.NONCE_SIZE))

        pump.pump()
        [(ftype, _, payload)] = queued(clink.transport)
        self.assertEqual(ftype, AUTH)
        magic, version, method, proof, tag = frames.parse_auth(payload)
        self.assertEqual((magic, version, method, tag), (frames.MAGIC, 2, AUTH_SHARED_TOKEN, TAG))
        self.assertTrue(auth.verify(TOKEN, nonce, TAG, proof))

        pump.pump()
        welcome, *rest = queued(slink.transport)
        self.assertEqual(welcome, (WELCOME, 0, struct.pack(">I", CLIENT_ID)))
        self.assertEqual([ftype for ftype, _, _ in rest], [PING])  # timing the round trip

    def test_freshNonceEachLink(self):
        """Each server link greets with a nonce of its own."""
        nonces = {connectServer(self.clock)[2] for _ in range(3)}
        self.assertEqual(len(nonces), 3)

    def test_establishedLinkCarriesFrames(self):
        """After the handshake, each side answers the other's PING."""
        server, slink, clink, pump = connectPair(self.clock)
        slink.transport.write(frames.encode(PING, 0, b"abcdefgh"))
        pump.pump()
        self.assertEqual(queued(clink.transport), [(PONG, 0, b"abcdefgh")])
        clink.transport.write(frames.encode(PING, 0, b"12345678"))
        pump.pump()
        self.assertEqual(queued(slink.transport), [(PONG, 0, b"12345678")])

    def test_noTimeoutOnceEstablished(self):
        """A finished handshake disarms the handshake timeout on both sides."""
        server, slink, clink, pump = connectPair(self.clock)
        self.clock.advance(HANDSHAKE_TIMEOUT * 1.5)
        pump.flush()
        self.assertFalse(slink.transport.disconnecting)
        self.assertFalse(clink.transport.disconnecting)
        self.assertEqual(server.disconnected, [])

    def test_wrongToken(self):
        """A wrong token gets REFUSE 'wrong token'; the server closes and admits nobody."""
        server, slink, clink, pump = connectPair(self.clock, greet=False, token="guess")
        pump.pump()  # HELLO
        pump.pump()  # AUTH
        [(ftype, _, reason)] = queued(slink.transport)
        self.assertEqual(ftype, REFUSE)
        self.assertIn(b"wrong token", reason)
        self.assertTrue(slink.transport.disconnecting)
        self.assertFalse(slink.connection.established)
        self.assertEqual(server.connected, [])

        with capturedLogs() as events:
            pump.flush()
        self.assertIn("wrong token", loggedText(events))
        self.assertFalse(clink.connection.established)
        self.assertIsNone(clink.owner.client_id)
        self.assertEqual(clink.owner.factory.unwelcomed, 1)
        self.assertEqual(server.disconnected, [])

    def test_welcomeResetsBackoff(self):
        """A welcomed link clears the factory's count of links that failed to link up."""
        slink, clink, pump = connectLinks(FakeServer(self.clock), clientSettings(), self.clock,
                                          PEER, greet=False)
        clink.owner.factory.unwelcomed = 3
        pump.flush()
        self.assertEqual(clink.owner.factory.unwelcomed, 0)

    def test_refusedPeerCarriesNothing(self):
        """Frames after a refused AUTH, even a right AUTH, are never acted on."""
        server, slink, nonce = connectServer(self.clock)
        slink.dataReceived(authFrame(nonce, token="guess"))
        slink.dataReceived(frames.open_channel(1, 4096, "10.0.0.1", 22)
                           + frames.data_header(1, 3) + b"abc")
        slink.dataReceived(authFrame(nonce))
        slink.dataReceived(frames.data_header(1, 3) + b"abc")
        [(ftype, _, reason)] = written(slink)
        self.assertEqual((ftype, reason), (REFUSE, b"client refused: wrong token"))
        self.assertEqual(server.connected, [])
        self.assertEqual(slink.connection.channels, {})

    def test_refusedPeerPipelining(self):
        """Frames read with a refused AUTH end the link with one frame and admit nobody."""
        server, slink, nonce = connectServer(self.clock)
        slink.dataReceived(authFrame(nonce, token="guess")
                           + frames.open_channel(1, 4096, "10.0.0.1", 22)
                           + frames.data_header(1, 3) + b"abc" + authFrame(nonce))
        [(ftype, _, _)] = written(slink)
        self.assertIn(ftype, (REFUSE, GOAWAY))
        self.assertTrue(slink.transport.disconnecting)
        self.assertEqual(server.connected, [])
        self.assertEqual(slink.connection.channels, {})

    def test_rightAuthWithProtocolError(self):
        """A right AUTH read together with a protocol error admits nobody."""
        server, slink, nonce = connectServer(self.clock)
        slink.dataReceived(authFrame(nonce) + frames.open_channel(1, 4096, "10.0.0.1", 22))
        [(ftype, _, payload)] = written(slink)
        self.assertEqual(frames.parse_goaway(payload),
                         (GOAWAY_CLOSING, "protocol error: expected AUTH, got OPEN"))
        self.assertEqual(server.connected, [])
        self.assertEqual(server.registry.clients, {})

    def test_openBeforeAuth(self):
        """An OPEN before AUTH ends the link as a protocol error, admitting nobody."""
        server, slink, nonce = connectServer(self.clock)
        slink.dataReceived(frames.open_channel(1, 4096, "10.0.0.1", 22) + authFrame(nonce))
        [(ftype, _, payload)] = written(slink)
        self.assertEqual(ftype, GOAWAY)
        self.assertEqual(frames.parse_goaway(payload),
                         (GOAWAY_CLOSING, "protocol error: expected AUTH, got OPEN"))
        self.assertTrue(slink.connection.protocol_error)
        self.assertEqual(server.connected, [])

    def test_dataBeforeAuth(self):
        """DATA before AUTH ends the link as a protocol error, admitting nobody."""
        server, slink, nonce = connectServer(self.clock)
        slink.dataReceived(frames.data_header(1, 3) + b"abc" + authFrame(nonce))
        [(ftype, _, payload)] = written(slink)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn("DATA frame before the handshake", frames.parse_goaway(payload)[1])
        self.assertEqual(server.connected, [])

    def test_openBeforeWelcome(self):
        """A client given OPEN before WELCOME ends the link and connects to nothing."""
        clink = connectClient(self.clock)
        clink.dataReceived(frames.hello(b"n" * 32) + frames.open_channel(1, 4096, "10.0.0.1", 22))
        self.assertEqual([f[0] for f in written(clink)], [AUTH, GOAWAY])
        self.assertTrue(clink.transport.disconnecting)
        self.assertEqual(self.clock.tcpClients, [])
        self.assertEqual(clink.connection.channels, {})
        self.assertIsNone(clink.owner.client_id)

    def test_welcomeBeforeHello(self):
        """A WELCOME the client did not ask for is a protocol error, not a success."""
        clink = connectClient(self.clock)
        clink.dataReceived(frames.welcome(CLIENT_ID))
        self.assertFalse(clink.connection.established)
        self.assertTrue(clink.connection.protocol_error)
        self.assertIsNone(clink.owner.client_id)
        loseConnection(clink)
        self.assertEqual(clink.owner.factory.unwelcomed, 1)

    def test_lostAfterWelcome(self):
        """An admitted client's link going down is reported to the server, with the reason."""
        server, slink, clink, pump = connectPair(self.clock)
        clink.transport.loseConnection()
        pump.flush()
        lost = Failure(ConnectionDone("Connection done")).getErrorMessage()
        self.assertEqual(server.disconnected, [(slink.owner.session, lost)])
        self.assertEqual(slink.owner.session.lost_reason(), CLIENT_LOST)
        self.assertEqual(clink.owner.factory.unwelcomed, 0)

    def test_clientDrainsWhenStopping(self):
        """A client service stopping drains its link: the server sees it draining, then gone."""
        server, slink, clink, pump = connectPair(self.clock)
        session = slink.owner.session
        stopped = LinkService(None, clink.owner.factory, 5.0, self.clock).stopService()
        [(_, _, draining), (_, _, closing)] = queued(clink.transport)
        self.assertEqual(frames.parse_goaway(draining), (GOAWAY_DRAINING, "the client is stopping"))
        self.assertEqual(frames.parse_goaway(closing), (GOAWAY_CLOSING, "drained"))
        pump.flush()
        self.successResultOf(stopped)
        self.assertEqual(server.draining, [session])
        self.assertEqual(server.disconnected, [(session, "closed by the peer: drained")])

    def test_clientStopsAtOnceWhenItsLinkIsGone(self):
        """A client service whose link the server dropped stops at once: nothing to drain."""
        server, slink, clink, pump = connectPair(self.clock)
        slink.close("closed by admin")
        pump.flush()
        self.assertEqual(len(server.disconnected), 1)
        stopped = LinkService(None, clink.owner.factory, 5.0, self.clock).stopService()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_protocolErrorAfterWelcome(self):
        """An admitted client breaking the protocol is closed, and its channels' reason says so."""
        server, slink, clink, pump = connectPair(self.clock)
        session = slink.owner.session
        self.assertEqual(session.lost_reason(), CLIENT_LOST)
        slink.dataReceived(b"\xff" * 9)
        self.assertTrue(slink.transport.disconnecting)
        self.assertTrue(slink.connection.protocol_error)
        # Closing, not yet gone: no longer WORKING, so given no new channel.
        self.assertEqual(session.state, CLOSED)
        self.assertIsNone(server.registry.pick_client(TAG))
        self.assertEqual(session.lost_reason(), PROTOCOL_ERROR)
        pump.flush()
        self.assertEqual(session.lost_reason(), PROTOCOL_ERROR)
        self.assertEqual(server.disconnected,
                         [(session, "protocol error: unknown frame type 255")])

    def test_wrongProofMethod(self):
        """The handler refuses a proof of a method it does not know, right or not."""
        server, slink, nonce = connectServer(self.clock)
        slink.owner.authenticate(slink, AUTH_CREDENTIAL + 1, auth.proof(TOKEN, nonce, TAG),
                                 TAG, nonce)
        [(ftype, _, reason)] = written(slink)
        self.assertEqual((ftype, reason), (REFUSE, b"client refused: wrong token"))
        self.assertEqual(server.connected, [])


class CredentialHandshakeTests(SynchronousTestCase):
    """A client with a credential token is admitted for the credential's tag only, while it
    is not revoked; the shared token still works beside it."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.server = FakeServer(self.clock)
        self.token, public_key = auth.new_credential()
        self.credential = Credential(3, "router-1", TAG, public_key, 0.0)
        self.server.registry.add_credential(self.credential)

    def link(self, token=None, tag=TAG):
        """A pair whose client holds ``token`` (the credential's by default), pumped through."""
        with capturedLogs() as events:
            slink, clink, pump = connectLinks(self.server, clientSettings(
                token=self.token if token is None else token, tag=tag), self.clock, PEER)
            pump.flush()
        self.logged = loggedText(events)
        return slink, clink

    def assertRefused(self, clink, reason):
        """The client was refused, and logged the server's ``reason``."""
        self.assertFalse(clink.connection.established)
        self.assertEqual(clink.owner.factory.unwelcomed, 1)
        self.assertEqual(self.server.connected, [])
        self.assertIn(f"the server refused this client: client refused: {reason}", self.logged)

    def test_accepted(self):
        """The credential's token for its own tag is welcomed; the session records the credential."""
        slink, clink = self.link()
        self.assertEqual(clink.owner.client_id, CLIENT_ID)
        self.assertEqual(self.server.connected, [("203.0.113.9", 40000, TAG)])
        self.assertEqual(slink.owner.session.credential_id, 3)

    def test_sharedTokenStillWorks(self):
        """A client with the shared token is welcomed beside credentials, with no credential."""
        slink, clink = self.link(token=TOKEN)
        self.assertEqual(clink.owner.client_id, CLIENT_ID)
        self.assertIsNone(slink.owner.session.credential_id)

    def test_otherTagRefused(self):
        """A credential announcing another tag is refused, the reason naming both tags."""
        slink, clink = self.link(tag="tag11")
        self.assertRefused(clink, f"this credential is for tag {TAG}, not tag11")

    def test_revokedRefused(self):
        """A revoked credential is refused as such."""
        self.credential.revoked = True
        slink, clink = self.link()
        self.assertRefused(clink, "credential revoked")

    def test_unknownRefused(self):
        """A credential the server never issued is refused."""
        slink, clink = self.link(token=auth.new_credential()[0])
        self.assertRefused(clink, "unknown credential")

    def test_wrongKeyRefused(self):
        """A known public key with a signature made by another key is refused."""
        other, _ = auth.new_credential()
        server, slink, nonce = connectServer(self.clock)
        server.registry.add_credential(self.credential)
        forged = self.credential.public_key + auth.credential_proof(other, nonce, TAG)[32:]
        slink.dataReceived(frames.auth(AUTH_CREDENTIAL, forged, TAG))
        [(ftype, _, reason)] = written(slink)
        self.assertEqual((ftype, reason), (REFUSE, b"client refused: wrong credential proof"))
        self.assertEqual(server.connected, [])

    def test_replayRefused(self):
        """A credential's proof captured on one link does not admit anyone on another."""
        server, slink, nonce = connectServer(self.clock)
        captured = auth.credential_proof(self.token, nonce, TAG)
        server2, slink2, _ = connectServer(self.clock)
        server2.registry.add_credential(self.credential)
        slink2.dataReceived(frames.auth(AUTH_CREDENTIAL, captured, TAG))
        [(ftype, _, reason)] = written(slink2)
        self.assertEqual((ftype, reason), (REFUSE, b"client refused: wrong credential proof"))


class BadPeerTests(SynchronousTestCase):
    """Garbage, wrong magic, wrong versions and bad tags end the handshake cleanly."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.server, self.slink, self.nonce = connectServer(self.clock)

    def assertServerEnded(self, ftype, why):
        [(got_type, _, payload)] = written(self.slink)
        self.assertEqual(got_type, ftype)
        reason = frames.parse_goaway(payload)[1] if ftype == GOAWAY else payload.decode()
        self.assertIn(why, reason)
        self.assertTrue(self.slink.transport.disconnecting)
        self.assertEqual(self.server.connected, [])

    def test_garbage(self):
        """Garbage on the client port closes the link with a logged reason, no exception."""
        with capturedLogs() as events:
            self.slink.dataReceived(b"GET / HTTP/1.1\r\nHost: tunnel\r\n\r\n")
        self.assertServerEnded(GOAWAY, "unknown frame type 71")
        self.assertIn("unknown frame type 71", loggedText(events))
        self.assertIn("203.0.113.9", loggedText(events))
        self.assertEqual(failures(events), [])

    @settings(max_examples=200)
    @given(st.binary(max_size=120), st.integers(min_value=1, max_value=40))
    def test_anyGarbage(self, garbage, step):
        """Any bytes, in any chunks, never fault the server link nor admit a client."""
        server, slink, nonce = connectServer(self.clock)
        with capturedLogs() as events:
            for i in range(0, len(garbage), step):
                slink.dataReceived(garbage[i:i + step])
        self.assertEqual(server.connected, [])
        self.assertEqual(failures(events), [])

    @settings(max_examples=200)
    @given(st.binary(max_size=120), st.integers(min_value=1, max_value=40))
    def test_anyGarbageToClient(self, garbage, step):
        """Any bytes from a server, in any chunks, never fault a client, welcome it or dial."""
        clink = connectClient(self.clock)
        with capturedLogs() as events:
            for i in range(0, len(garbage), step):
                clink.dataReceived(garbage[i:i + step])
        self.assertIsNone(clink.owner.client_id)
        self.assertEqual(self.clock.tcpClients, [])
        self.assertEqual(failures(events), [])

    def test_oversizedBeforeHandshake(self):
        """A frame over the pre-handshake limit is refused from its header alone."""
        self.slink.dataReceived(struct.pack(">BII", AUTH, 0, 100_000))
        self.assertServerEnded(GOAWAY, "over the 512-byte limit")

    def test_badMagic(self):
        """An AUTH with the wrong magic ends the link: not a portmapper client."""
        self.slink.dataReceived(authFrame(self.nonce, magic=b"SSH-"))
        self.assertServerEnded(GOAWAY, "not a portmapper client")

    def test_oldVersion(self):
        """An AUTH of protocol version 1 is refused, saying which version the server speaks."""
        self.slink.dataReceived(authFrame(self.nonce, version=1))
        self.assertServerEnded(REFUSE, "protocol version 1 is not supported; this server speaks 2")

    def test_newerVersion(self):
        """An AUTH of a later version is refused too, whatever its layout."""
        self.slink.dataReceived(frames.encode(AUTH, 0, b"PMAP\x03\x00"))
        self.assertServerEnded(REFUSE, "protocol version 3 is not supported; this server speaks 2")

    def test_unknownProofMethod(self):
        """An AUTH with a proof method the server does not know ends the link."""
        self.slink.dataReceived(authFrame(self.nonce, method=9))
        self.assertServerEnded(GOAWAY, "AUTH proof method 9 is unknown")

    def test_badTag(self):
        """An AUTH with an unacceptable tag is refused, even with the right token."""
        self.slink.dataReceived(authFrame(self.nonce, tag="no spaces"))
        self.assertServerEnded(REFUSE, "the tag must be")

    def test_truncatedAuth(self):
        """A short AUTH payload ends the link as a protocol error."""
        self.slink.dataReceived(frames.encode(AUTH, 0, b"PMAP\x02"))
        self.assertServerEnded(GOAWAY, "too short")

    def test_truncatedProof(self):
        """An AUTH whose proof is cut short ends the link as a protocol error."""
        self.slink.dataReceived(frames.encode(AUTH, 0, b"PMAP\x02\x00" + b"p" * 31))
        self.assertServerEnded(GOAWAY, "too short")

    def test_clientRefusesBadMagic(self):
        """A client whose server says HELLO with the wrong magic ends the link, sending no proof."""
        clink = connectClient(self.clock)
        clink.dataReceived(frames.encode(HELLO, 0, struct.pack(">4sB32s", b"HTTP", 2, b"n" * 32)))
        [(ftype, _, payload)] = written(clink)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn("not a portmapper server", frames.parse_goaway(payload)[1])
        self.assertTrue(clink.transport.disconnecting)
        self.assertIsNone(clink.owner.client_id)

    def test_clientRefusesBadVersion(self):
        """A client whose server speaks another version ends the link, saying both versions."""
        clink = connectClient(self.clock)
        clink.dataReceived(frames.encode(HELLO, 0, struct.pack(">4sB32s", frames.MAGIC, 9, b"n" * 32)))
        [(ftype, _, payload)] = written(clink)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn("version 9, this client 2", frames.parse_goaway(payload)[1])
        self.assertTrue(clink.transport.disconnecting)

    def test_goawayDuringHandshakeToClient(self):
        """A GOAWAY from the server during the handshake closes the client, which logs why."""
        clink = connectClient(self.clock)
        clink.dataReceived(frames.hello(b"n" * 32))
        written(clink)
        with capturedLogs() as events:
            clink.dataReceived(frames.goaway(GOAWAY_CLOSING, "the handshake did not finish in time"))
        self.assertTrue(clink.transport.disconnecting)
        self.assertEqual(written(clink), [])
        self.assertFalse(clink.connection.protocol_error)
        self.assertIn("the handshake did not finish in time", loggedText(events))

    def test_goawayDuringHandshakeToServer(self):
        """A GOAWAY from the client before AUTH closes the server link, which logs why."""
        with capturedLogs() as events:
            self.slink.dataReceived(frames.goaway(GOAWAY_CLOSING, "not a portmapper server"))
        self.assertTrue(self.slink.transport.disconnecting)
        self.assertEqual(written(self.slink), [])
        self.assertFalse(self.slink.connection.protocol_error)
        self.assertIn("not a portmapper server", loggedText(events))
        self.assertEqual(self.server.connected, [])

    def test_drainingDuringHandshake(self):
        """A draining GOAWAY before the handshake is done closes the link all the same."""
        self.slink.dataReceived(frames.goaway(GOAWAY_DRAINING, "stopping"))
        self.assertTrue(self.slink.transport.disconnecting)
        self.assertEqual(written(self.slink), [])
        self.assertEqual(self.server.draining, [])


class HandshakeTimeoutTests(SynchronousTestCase):
    """A handshake that does not finish in handshake_timeout is dropped."""

    def setUp(self):
        self.clock = MemoryReactorClock()

    def test_serverDropsSlowClient(self):
        """A client that never authenticates is told why, then cut off."""
        server, slink, nonce = connectServer(self.clock)
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(slink.transport.disconnecting)

        self.clock.advance(0.1)
        [(ftype, _, payload)] = written(slink)
        self.assertEqual(ftype, GOAWAY)
        self.assertEqual(frames.parse_goaway(payload),
                         (GOAWAY_CLOSING, "the handshake did not finish in time"))
        self.assertTrue(slink.transport.disconnecting)
        self.assertFalse(slink.transport.disconnected)

        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertTrue(slink.transport.disconnected)

    def test_partialAuthStillTimesOut(self):
        """Trickling in part of an AUTH frame does not keep the handshake alive."""
        server, slink, nonce = connectServer(self.clock)
        frame = authFrame(nonce)
        for i in range(4):
            slink.dataReceived(frame[i:i + 1])
            self.clock.advance(HANDSHAKE_TIMEOUT / 4)
        self.assertTrue(slink.transport.disconnecting)
        self.assertEqual(server.connected, [])

    def test_clientDropsSilentServer(self):
        """A client whose server never says HELLO gives up after handshake_timeout."""
        clink = connectClient(self.clock)
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(clink.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(clink.transport.disconnecting)
        loseConnection(clink)
        self.assertEqual(clink.owner.factory.unwelcomed, 1)

    def test_pairTimesOutWithoutWelcome(self):
        """A client whose AUTH is never answered is dropped by both ends, neither admitted."""
        server, slink, clink, pump = connectPair(self.clock, greet=False)
        slink.owner.authenticate = lambda *args: None  # a server that never decides
        pump.flush()
        self.assertFalse(clink.connection.established)
        self.clock.advance(HANDSHAKE_TIMEOUT)
        pump.flush()
        self.assertTrue(slink.transport.disconnected)
        self.assertEqual(clink.owner.factory.unwelcomed, 1)
        self.assertEqual(server.disconnected, [])


class HandshakeFailureKindTests(SynchronousTestCase):
    """A link that ends before its client is admitted is reported with a bounded kind."""

    def setUp(self):
        self.clock = MemoryReactorClock()

    def test_refused(self):
        """A wrong token is reported as 'refused' once the link is gone."""
        server, slink, nonce = connectServer(self.clock)
        slink.dataReceived(authFrame(nonce, token="guess"))
        loseConnection(slink)
        self.assertEqual(server.handshake_failures, ["refused"])

    def test_timeout(self):
        """A handshake that did not finish in time is reported as 'timeout'."""
        server, slink, nonce = connectServer(self.clock)
        self.clock.advance(HANDSHAKE_TIMEOUT)
        loseConnection(slink)
        self.assertEqual(server.handshake_failures, ["timeout"])

    def test_protocolError(self):
        """An OPEN before AUTH is reported as 'protocol error'."""
        server, slink, nonce = connectServer(self.clock)
        slink.dataReceived(frames.open_channel(1, 4096, "10.0.0.1", 22))
        loseConnection(slink)
        self.assertEqual(server.handshake_failures, ["protocol error"])

    def test_disconnected(self):
        """A peer that hangs up before authenticating is reported as 'disconnected'."""
        server, slink, nonce = connectServer(self.clock)
        loseConnection(slink)
        self.assertEqual(server.handshake_failures, ["disconnected"])

    def test_admittedIsNoFailure(self):
        """A client admitted and later lost is a disconnection, not a handshake failure."""
        server, slink, clink, pump = connectPair(self.clock)
        loseConnection(slink)
        self.assertEqual(server.handshake_failures, [])
        self.assertEqual(len(server.disconnected), 1)
