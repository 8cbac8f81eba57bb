"""
Tests for the link handshake: the HMAC proof (L{portmapper.protocol.auth})
and the exchange between L{ServerLink} and L{ClientLink}, driven by feeding
each link what the other wrote to its L{StringTransport}.

The server's side sees a L{FakeServer}: settings, a clock, and a record of
the clients it admitted and lost.
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

from portmapper.client.agent import ClientLinkFactory
from portmapper.config import ClientSettings, ServerSettings
from portmapper.protocol import auth, frames
from portmapper.protocol.frames import (
    AUTH, GOAWAY, HELLO, PING, PONG, REFUSE, WELCOME,
)
from portmapper.server.link import ServerLink
from portmapper.server.meter import Meter
from portmapper.server.registry import CLIENT_LOST, CLOSED, PROTOCOL_ERROR, ClientSession
from tests.linkhelp import pump, written

TOKEN = "s3cret"
TAG = "tag10"
CLIENT_ID = 7
HANDSHAKE_TIMEOUT = 5.0


class FakeServer:
    """What L{ServerLink} uses of the server: settings, clock, client admission."""

    def __init__(self, clock, token=TOKEN):
        self.settings = ServerSettings(token=token, window=4096, ping_interval=10.0,
                                       ping_timeout=30.0, handshake_timeout=HANDSHAKE_TIMEOUT)
        self.clock = clock
        self.connected = []  # (ip, port, tag)
        self.disconnected = []  # (session, reason)

    def clientConnected(self, link, ip, port, tag):
        self.connected.append((ip, port, tag))
        return ClientSession(client_id=CLIENT_ID, ip=ip, port=port, tag=tag,
                             meter=Meter(created=self.clock.seconds()), link=link)

    def clientDisconnected(self, session, reason):
        self.disconnected.append((session, reason))


def clientSettings(token=TOKEN, tag=TAG):
    return ClientSettings(token=token, tag=tag, handshake_timeout=HANDSHAKE_TIMEOUT)


def connectServer(reactor, token=TOKEN):
    """A L{ServerLink} connected to a StringTransport from 203.0.113.9:40000."""
    server = FakeServer(reactor, token)
    link = ServerLink(server)
    link.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "203.0.113.9", 40000)))
    return server, link


def connectClient(reactor, **kwargs):
    """A L{ClientLink} (from its factory) connected to a StringTransport."""
    link = ClientLinkFactory(clientSettings(**kwargs), reactor).buildProtocol(None)
    link.makeConnection(StringTransport())
    return link


def loseConnection(link):
    link.connectionLost(Failure(ConnectionDone()))


def authFrame(nonce, token=TOKEN, tag=TAG, magic=frames.MAGIC, version=frames.PROTOCOL_VERSION):
    """An AUTH frame, any of whose fields may be wrong."""
    payload = struct.pack(">4sB32s", magic, version, auth.proof(token, nonce, tag))
    return frames.encode(AUTH, 0, payload + tag.encode("utf-8"))


def loggedText(events):
    return " ".join(formatEvent(e) for e in events)


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


class HandshakeTests(SynchronousTestCase):
    """A client with the right token is admitted; anything else is not."""

    def setUp(self):
        self.reactor = MemoryReactorClock()

    def test_rightToken(self):
        """The right token gets WELCOME with the client id, and both links are established."""
        server, slink = connectServer(self.reactor)
        clink = connectClient(self.reactor)
        pump(slink, clink)

        self.assertEqual(clink.client_id, CLIENT_ID)
        self.assertEqual(clink.factory.unwelcomed, 0)
        self.assertTrue(slink.established)
        self.assertTrue(clink.established)
        self.assertEqual(server.connected, [("203.0.113.9", 40000, TAG)])
        self.assertIs(slink.meter, slink.session.meter)
        self.assertGreater(slink.meter.recv_bytes, 0)

    def test_messagesInOrder(self):
        """The server says HELLO, the client AUTH, the server WELCOME."""
        server, slink = connectServer(self.reactor)
        clink = connectClient(self.reactor)
        [(ftype, _, payload)] = written(slink)
        self.assertEqual(ftype, HELLO)
        self.assertEqual(frames.parse_hello(payload)[2], slink.nonce)

        clink.dataReceived(frames.hello(slink.nonce))
        [(ftype, _, payload)] = written(clink)
        self.assertEqual(ftype, AUTH)
        magic, version, proof, tag = frames.parse_auth(payload)
        self.assertEqual(tag, TAG)
        self.assertTrue(auth.verify(TOKEN, slink.nonce, TAG, proof))

        slink.dataReceived(frames.auth(proof, tag))
        welcome, *rest = written(slink)
        self.assertEqual(welcome, (WELCOME, 0, struct.pack(">I", CLIENT_ID)))
        self.assertEqual([ftype for ftype, _, _ in rest], [PING])  # timing the round trip

    def test_establishedLinkCarriesFrames(self):
        """After the handshake, each side answers the other's PING."""
        server, slink = connectServer(self.reactor)
        clink = connectClient(self.reactor)
        pump(slink, clink)
        slink.transport.write(frames.encode(PING, 0, b"abcdefgh"))
        clink.dataReceived(slink.transport.value())
        self.assertEqual(written(clink), [(PONG, 0, b"abcdefgh")])

    def test_noTimeoutOnceEstablished(self):
        """A finished handshake cancels the handshake timeout on both sides."""
        server, slink = connectServer(self.reactor)
        clink = connectClient(self.reactor)
        pump(slink, clink)
        self.reactor.advance(HANDSHAKE_TIMEOUT * 2)
        self.assertFalse(slink.transport.disconnecting)
        self.assertFalse(clink.transport.disconnecting)

    def test_wrongToken(self):
        """A wrong token gets REFUSE 'wrong token'; the server closes and admits nobody."""
        server, slink = connectServer(self.reactor)
        clink = connectClient(self.reactor, token="guess")
        clink.dataReceived(slink.transport.value())
        slink.transport.clear()
        slink.dataReceived(clink.transport.value())
        clink.transport.clear()

        refusal = slink.transport.value()
        [(ftype, _, reason)] = written(slink)
        self.assertEqual(ftype, REFUSE)
        self.assertIn(b"wrong token", reason)
        self.assertTrue(slink.transport.disconnecting)
        self.assertFalse(slink.established)
        self.assertEqual(server.connected, [])

        with capturedLogs() as events:
            clink.dataReceived(refusal)
        self.assertIn("wrong token", loggedText(events))
        self.assertTrue(clink.transport.disconnecting)
        self.assertFalse(clink.established)
        self.assertIsNone(clink.client_id)
        loseConnection(clink)
        self.assertEqual(clink.factory.unwelcomed, 1)

        loseConnection(slink)
        self.assertEqual(server.disconnected, [])

    def test_refusedPeerCarriesNothing(self):
        """Frames after a refused AUTH, even a right AUTH, are never acted on."""
        server, slink = connectServer(self.reactor)
        slink.transport.clear()
        slink.dataReceived(authFrame(slink.nonce, token="guess")
                           + frames.open_channel(1, 4096, "10.0.0.1", 22)
                           + frames.data_header(1, 3) + b"abc")
        slink.dataReceived(authFrame(slink.nonce))
        slink.dataReceived(frames.data_header(1, 3) + b"abc")
        self.assertEqual([f[0] for f in written(slink)], [REFUSE])
        self.assertEqual(server.connected, [])
        self.assertEqual(slink.channels, {})

    def test_openBeforeAuth(self):
        """An OPEN before AUTH ends the link as a protocol error, admitting nobody."""
        server, slink = connectServer(self.reactor)
        slink.transport.clear()
        slink.dataReceived(frames.open_channel(1, 4096, "10.0.0.1", 22) + authFrame(slink.nonce))
        [(ftype, _, reason)] = written(slink)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn(b"expected AUTH, got OPEN", reason)
        self.assertTrue(slink.protocol_error)
        self.assertEqual(server.connected, [])

    def test_dataBeforeAuth(self):
        """DATA before AUTH ends the link as a protocol error, admitting nobody."""
        server, slink = connectServer(self.reactor)
        slink.transport.clear()
        slink.dataReceived(frames.data_header(1, 3) + b"abc" + authFrame(slink.nonce))
        [(ftype, _, reason)] = written(slink)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn(b"DATA frame before the handshake", reason)
        self.assertEqual(server.connected, [])

    def test_openBeforeWelcome(self):
        """A client given OPEN before WELCOME ends the link and connects to nothing."""
        clink = connectClient(self.reactor)
        clink.dataReceived(frames.hello(b"n" * 32) + frames.open_channel(1, 4096, "10.0.0.1", 22))
        self.assertEqual([f[0] for f in written(clink)], [AUTH, GOAWAY])
        self.assertTrue(clink.transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(clink.channels, {})
        self.assertIsNone(clink.client_id)

    def test_welcomeBeforeHello(self):
        """A WELCOME the client did not ask for is a protocol error, not a success."""
        clink = connectClient(self.reactor)
        clink.dataReceived(frames.welcome(CLIENT_ID))
        self.assertFalse(clink.established)
        self.assertTrue(clink.protocol_error)
        self.assertIsNone(clink.client_id)
        loseConnection(clink)
        self.assertEqual(clink.factory.unwelcomed, 1)

    def test_lostAfterWelcome(self):
        """An admitted client's link going down is reported to the server."""
        server, slink = connectServer(self.reactor)
        clink = connectClient(self.reactor)
        pump(slink, clink)
        reason = Failure(ConnectionDone())
        slink.connectionLost(reason)
        self.assertEqual(server.disconnected, [(slink.session, reason)])
        loseConnection(clink)
        self.assertEqual(clink.factory.unwelcomed, 0)

    def test_protocolErrorAfterWelcome(self):
        """An admitted client breaking the protocol is closed, and its channels' reason says so."""
        server, slink = connectServer(self.reactor)
        clink = connectClient(self.reactor)
        pump(slink, clink)
        self.assertEqual(slink.lostReason(), CLIENT_LOST)
        slink.dataReceived(b"\xff" * 9)
        self.assertTrue(slink.transport.disconnecting)
        self.assertEqual(slink.session.state, CLOSED)
        self.assertEqual(slink.lostReason(), PROTOCOL_ERROR)


class BadPeerTests(SynchronousTestCase):
    """Garbage, wrong magic, wrong versions and bad tags end the handshake cleanly."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.server, self.slink = connectServer(self.reactor)
        self.slink.transport.clear()

    def assertServerEnded(self, ftype, why):
        [(got_type, _, reason)] = written(self.slink)
        self.assertEqual(got_type, ftype)
        self.assertIn(why, reason.decode())
        self.assertTrue(self.slink.transport.disconnecting)
        self.assertEqual(self.server.connected, [])

    def test_garbage(self):
        """Garbage on the client port closes the link with a logged reason, no exception."""
        with capturedLogs() as events:
            self.slink.dataReceived(b"GET / HTTP/1.1\r\nHost: tunnel\r\n\r\n")
        self.assertServerEnded(GOAWAY, "unknown frame type 71")
        self.assertIn("unknown frame type 71", loggedText(events))
        self.assertIn("203.0.113.9", loggedText(events))

    @settings(max_examples=200)
    @given(st.binary(max_size=120), st.integers(min_value=1, max_value=40))
    def test_anyGarbage(self, garbage, step):
        """Any bytes, in any chunks, never raise out of dataReceived nor admit a client."""
        server, slink = connectServer(self.reactor)
        for i in range(0, len(garbage), step):
            slink.dataReceived(garbage[i:i + step])
        self.assertEqual(server.connected, [])

    def test_oversizedBeforeHandshake(self):
        """A frame over the pre-handshake limit is refused from its header alone."""
        self.slink.dataReceived(struct.pack(">BII", AUTH, 0, 100_000))
        self.assertServerEnded(GOAWAY, "over the 512-byte limit")

    def test_badMagic(self):
        """An AUTH with the wrong magic ends the link: not a portmapper client."""
        self.slink.dataReceived(authFrame(self.slink.nonce, magic=b"SSH-"))
        self.assertServerEnded(GOAWAY, "not a portmapper client")

    def test_badVersion(self):
        """An AUTH of another protocol version is refused, saying which versions."""
        self.slink.dataReceived(authFrame(self.slink.nonce, version=2))
        self.assertServerEnded(REFUSE, "protocol version 2 is not supported; this server speaks 1")

    def test_badTag(self):
        """An AUTH with an unacceptable tag is refused, even with the right token."""
        self.slink.dataReceived(authFrame(self.slink.nonce, tag="no spaces"))
        self.assertServerEnded(REFUSE, "the tag must be")

    def test_truncatedAuth(self):
        """A short AUTH payload ends the link as a protocol error."""
        self.slink.dataReceived(frames.encode(AUTH, 0, b"PMAP\x01"))
        self.assertServerEnded(GOAWAY, "too short")

    def test_clientRefusesBadMagic(self):
        """A client whose server says HELLO with the wrong magic ends the link, sending no proof."""
        clink = connectClient(self.reactor)
        clink.dataReceived(frames.encode(HELLO, 0, struct.pack(">4sB32s", b"HTTP", 1, b"n" * 32)))
        self.assertEqual([f[0] for f in written(clink)], [GOAWAY])
        self.assertTrue(clink.transport.disconnecting)
        self.assertIsNone(clink.client_id)

    def test_clientRefusesBadVersion(self):
        """A client whose server speaks another version ends the link, saying both versions."""
        clink = connectClient(self.reactor)
        clink.dataReceived(frames.encode(HELLO, 0, struct.pack(">4sB32s", frames.MAGIC, 9, b"n" * 32)))
        [(ftype, _, reason)] = written(clink)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn(b"version 9, this client 1", reason)
        self.assertTrue(clink.transport.disconnecting)


    def test_goawayDuringHandshakeToClient(self):
        """A GOAWAY from the server during the handshake closes the client, which logs why."""
        clink = connectClient(self.reactor)
        clink.dataReceived(frames.hello(b"n" * 32))
        written(clink)
        with capturedLogs() as events:
            clink.dataReceived(frames.reason_frame(GOAWAY, 0, "the handshake did not finish in time"))
        self.assertTrue(clink.transport.disconnecting)
        self.assertEqual(written(clink), [])
        self.assertFalse(clink.protocol_error)
        self.assertIn("the handshake did not finish in time", loggedText(events))

    def test_goawayDuringHandshakeToServer(self):
        """A GOAWAY from the client before AUTH closes the server link, which logs why."""
        with capturedLogs() as events:
            self.slink.dataReceived(frames.reason_frame(GOAWAY, 0, "not a portmapper server"))
        self.assertTrue(self.slink.transport.disconnecting)
        self.assertEqual(written(self.slink), [])
        self.assertFalse(self.slink.protocol_error)
        self.assertIn("not a portmapper server", loggedText(events))
        self.assertEqual(self.server.connected, [])


class HandshakeTimeoutTests(SynchronousTestCase):
    """A handshake that does not finish in handshake_timeout is dropped."""

    def setUp(self):
        self.reactor = MemoryReactorClock()

    def test_serverDropsSlowClient(self):
        """A client that never authenticates is told why, then cut off."""
        server, slink = connectServer(self.reactor)
        slink.transport.clear()
        self.reactor.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(slink.transport.disconnecting)

        self.reactor.advance(0.1)
        [(ftype, _, reason)] = written(slink)
        self.assertEqual(ftype, GOAWAY)
        self.assertIn(b"the handshake did not finish in time", reason)
        self.assertTrue(slink.transport.disconnecting)

        self.reactor.advance(HANDSHAKE_TIMEOUT)
        self.assertTrue(slink.transport.disconnected)

    def test_partialAuthStillTimesOut(self):
        """Trickling in part of an AUTH frame does not keep the handshake alive."""
        server, slink = connectServer(self.reactor)
        frame = authFrame(slink.nonce)
        for i in range(4):
            slink.dataReceived(frame[i:i + 1])
            self.reactor.advance(HANDSHAKE_TIMEOUT / 4)
        self.assertTrue(slink.transport.disconnecting)
        self.assertEqual(server.connected, [])

    def test_clientDropsSilentServer(self):
        """A client whose server never says HELLO gives up after handshake_timeout."""
        clink = connectClient(self.reactor)
        self.reactor.advance(HANDSHAKE_TIMEOUT)
        self.assertTrue(clink.transport.disconnecting)
        loseConnection(clink)
        self.assertEqual(clink.factory.unwelcomed, 1)
