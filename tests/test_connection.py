"""
Tests for L{portmapper.protocol.connection}: the link core, sans I/O.

Each test drives a L{Connection} by hand: frames made with
L{portmapper.protocol.frames}'s encoders go in through C{receive_data},
the passing of time through C{tick}, and what the local side does through
the other methods; what it sends is read back from C{data_to_send()} with
L{tests.linkhelp.written}, and its events compared with C{==}.  No
transport, no reactor, no clock: the time is a number.

L{pair} builds an established server and client by pumping the real
handshake between them (L{greeted} stops at the server's decision); L{opened} and L{accepted} add an open channel to
one of them.  L{Side} stands in for the local sockets when two connections
talk end to end.
"""

import struct

from twisted.trial.unittest import SynchronousTestCase

from portmapper.protocol import auth, frames
from portmapper.protocol.channel import State
from portmapper.protocol.connection import (
    CLIENT, HANDSHAKE_MAX_CONTROL, HANDSHAKE_TIMEOUT, MAX_CONTROL_BACKLOG, PING_INTERVAL, PING_TIMEOUT, SERVER,
    AuthRequested, ChannelEnded, ChannelLost, ChannelOpened, ChannelOpenFailed, ChannelReset,
    CloseLink, Connection, DataReceived, GoingAway, LinkUnavailable, OpenRequested, PauseReading,
    Refused, ResumeReading, Welcomed,
)
from portmapper.protocol.frames import (
    AUTH, DATA, FIN, GOAWAY, GOAWAY_CLOSING, GOAWAY_DRAINING, HELLO, MAGIC, MAX_CHANNEL_ID,
    MAX_CREDIT, OPEN, OPEN_FAIL, OPEN_OK, PING, PONG, PROTOCOL_VERSION, REFUSE, RESET, WELCOME,
    WINDOW,
)
from portmapper.protocol.windows import EARLY_DATA, WINDOW_GROWTH
from tests.linkhelp import decode, written as sent

T0 = 1000.0
WINDOW_SIZE = 4 * EARLY_DATA
BATCH = WINDOW_SIZE // 4
MAX_WINDOW = WINDOW_GROWTH ** 2 * WINDOW_SIZE
TOKEN = "s3cret"
TAG = "office"
CLIENT_ID = 7
NONCE = b"n" * auth.NONCE_SIZE
RTT = 0.01


def connection(role, **options):
    """A Connection at T0 with small windows and the test's token and tag."""
    settings = dict(window=WINDOW_SIZE, max_window=MAX_WINDOW, token=TOKEN, tag=TAG, nonce=NONCE)
    settings.update(options)
    return Connection(role, T0, **settings)


def move(src, dst, now=T0):
    """Hand ``dst`` what ``src`` has to send; True if there was anything."""
    data = b"".join(src.data_to_send())
    if data:
        dst.receive_data(data, now)
    return bool(data)


def greeted(**options):
    """
    A (server, client) pair whose handshake is pumped up to the server's
    answer: the client has sent AUTH, the server asked to authenticate it.
    """
    server, client = connection(SERVER, **options), connection(CLIENT, **options)
    server.start()
    move(server, client)  # HELLO; the client answers AUTH
    move(client, server)
    proof = auth.proof(TOKEN, NONCE, TAG)
    expected = [AuthRequested(frames.AUTH_SHARED_TOKEN, proof, TAG, NONCE)]
    if events(server) != expected:
        raise AssertionError("the server did not ask to authenticate the client")
    return server, client


def pair(**options):
    """
    An established (server, client) pair: the real handshake pumped between
    them, then their output and events cleared.  The first PINGs are not
    answered, so no round trip is measured.
    """
    server, client = greeted(**options)
    server.accept(CLIENT_ID)
    move(server, client)  # WELCOME and the server's first PING
    if events(client) != [Welcomed(CLIENT_ID)]:
        raise AssertionError("the client was not welcomed")
    client.data_to_send()  # its PONG and first PING
    return server, client


def receive(conn, *frames_, now=T0):
    """Feed ``conn`` whole frames (bytes) as one chunk."""
    conn.receive_data(b"".join(frames_), now)


def data(channel_id, payload):
    """A DATA frame."""
    return frames.data_header(channel_id, len(payload)) + payload


def fin(channel_id):
    return frames.encode(FIN, channel_id)


def reset(channel_id, reason):
    return frames.reason_frame(RESET, channel_id, reason)


def payload(frame):
    """A whole frame's payload."""
    return frame[frames.HEADER_SIZE:]


def u32(n):
    return struct.pack(">I", n)


def opened(server, window=WINDOW_SIZE):
    """A channel the server opened and its peer accepted announcing ``window``; its id."""
    channel_id = server.open_channel("target", 80)
    receive(server, frames.open_ok(channel_id, window))
    server.data_to_send()
    events(server)
    return channel_id


def accepted(client, channel_id=1, window=WINDOW_SIZE):
    """A channel the client was asked to open (the peer announcing ``window``) and accepted."""
    receive(client, frames.open_channel(channel_id, window, "target", 80))
    client.accept_channel(channel_id)
    client.data_to_send()
    events(client)
    return channel_id


def events(conn):
    """The events ``conn`` emitted since the last call, as a list."""
    return list(conn.events())


def data_sent(conn, channel_id=1):
    """All DATA bytes ``conn`` sent on ``channel_id`` since its output was last read."""
    return b"".join(p for t, c, p in sent(conn) if t == DATA and c == channel_id)


def credits(conn):
    """The credit ``conn`` gave back in WINDOW frames since its output was last read."""
    return [struct.unpack(">I", p)[0] for t, _, p in sent(conn) if t == WINDOW]


class LinkCase(SynchronousTestCase):
    """Assertions about how a link ended."""

    def assertProtocolError(self, conn, reason, before=()):
        """
        ``conn`` ended the link because the peer broke the protocol: one
        GOAWAY saying ``reason``, and CloseLink after the events ``before``.
        """
        why = f"protocol error: {reason}"
        self.assertEqual(sent(conn), decode(frames.goaway(GOAWAY_CLOSING, why)))
        self.assertEqual(events(conn), [*before, CloseLink(why, True, False)])
        self.assertTrue(conn.protocol_error)
        self.assertTrue(conn.closed)
        self.assertIsNone(conn.next_deadline())

    def assertGoaway(self, conn, code, reason):
        """``conn`` sent exactly one GOAWAY, with ``code`` and ``reason``."""
        [(ftype, channel_id, payload)] = sent(conn)
        self.assertEqual((ftype, channel_id), (GOAWAY, 0))
        self.assertEqual(frames.parse_goaway(payload), (code, reason))

    def assertUp(self, conn):
        """``conn`` is still up: nothing closed it."""
        self.assertFalse(conn.closed)
        self.assertNotIn(CloseLink, [type(e) for e in events(conn)])


class HandshakeTests(LinkCase):
    """The core runs the handshake: HELLO, AUTH, then WELCOME or REFUSE."""

    def test_handshake(self):
        """HELLO carries the nonce; AUTH its proof and the tag; WELCOME the client id; both establish."""
        server, client = connection(SERVER), connection(CLIENT)
        client.start()  # the client waits for HELLO
        self.assertEqual(sent(client), [])
        server.start()
        self.assertEqual(sent(server), decode(frames.hello(NONCE)))
        client.receive_data(frames.hello(NONCE), T0)
        proof = auth.proof(TOKEN, NONCE, TAG)
        self.assertEqual(sent(client), decode(frames.auth(frames.AUTH_SHARED_TOKEN, proof, TAG)))
        server.receive_data(frames.auth(frames.AUTH_SHARED_TOKEN, proof, TAG), T0)
        self.assertEqual(events(server),
                         [AuthRequested(frames.AUTH_SHARED_TOKEN, proof, TAG, NONCE)])
        self.assertFalse(server.established)
        server.accept(CLIENT_ID)
        self.assertTrue(server.established)
        welcome, ping = sent(server)
        self.assertEqual(welcome, (WELCOME, 0, u32(CLIENT_ID)))
        self.assertEqual(ping[0], PING)
        client.receive_data(frames.welcome(CLIENT_ID), T0)
        self.assertEqual(events(client), [Welcomed(CLIENT_ID)])
        self.assertEqual((client.established, client.client_id), (True, CLIENT_ID))
        self.assertEqual([f[0] for f in sent(client)], [PING])

    def test_credentialToken(self):
        """A client with a credential token answers HELLO with method 1: its public key and a
        signature of the nonce and tag, which the server hands on as it came."""
        token, public_key = auth.new_credential()
        server, client = connection(SERVER), connection(CLIENT, token=token)
        server.start()
        move(server, client)
        [(ftype, _, payload)] = sent(client)
        self.assertEqual(ftype, AUTH)
        magic, version, method, proof, tag = frames.parse_auth(payload)
        self.assertEqual((method, len(proof), tag), (frames.AUTH_CREDENTIAL, 96, TAG))
        key, signature = auth.split_credential_proof(proof)
        self.assertEqual(key, public_key)
        self.assertTrue(auth.verify_credential(key, NONCE, TAG, signature))
        self.assertNotIn(auth.credential_seed(token), payload)
        server.receive_data(frames.encode(AUTH, 0, payload), T0)
        self.assertEqual(events(server),
                         [AuthRequested(frames.AUTH_CREDENTIAL, proof, TAG, NONCE)])

    def test_sharedTokenWithThePrefix(self):
        """A token that only starts like a credential is proved as the shared token (method 0)."""
        server, client = connection(SERVER), connection(CLIENT, token="pmc_not-a-credential")
        server.start()
        move(server, client)
        [(_, _, payload)] = sent(client)
        self.assertEqual(frames.parse_auth(payload)[2:],
                         (frames.AUTH_SHARED_TOKEN, auth.proof("pmc_not-a-credential", NONCE, TAG),
                          TAG))

    def test_refuse(self):
        """A refused client is told why in REFUSE, and both ends close without a GOAWAY."""
        server, client = greeted()
        server.refuse("bad token")
        [(ftype, channel_id, payload)] = sent(server)
        self.assertEqual((ftype, channel_id, payload), (REFUSE, 0, b"client refused: bad token"))
        self.assertEqual(events(server), [CloseLink("client refused: bad token", False, False)])
        client.receive_data(frames.reason_frame(REFUSE, 0, "client refused: bad token"), T0)
        self.assertEqual(events(client), [Refused("client refused: bad token"),
                                           CloseLink("client refused: bad token", False, False)])
        self.assertEqual(sent(client), [])
        self.assertFalse(client.protocol_error)

    def test_serverRefusesOtherVersion(self):
        """An AUTH of another protocol version is refused with a REFUSE naming both versions."""
        server = connection(SERVER)
        server.start()
        server.data_to_send()
        receive(server, frames.encode(AUTH, 0, struct.pack(">4sBB", MAGIC, 1, 0)))
        why = (f"client refused: protocol version 1 is not supported; "
               f"this server speaks {PROTOCOL_VERSION}")
        self.assertEqual(sent(server), [(REFUSE, 0, why.encode())])
        self.assertEqual(events(server), [CloseLink(why, False, False)])
        self.assertFalse(server.established)

    def test_clientEndsOnOtherVersion(self):
        """A HELLO of another protocol version ends the link with a protocol error naming both."""
        client = connection(CLIENT)
        other = PROTOCOL_VERSION + 1
        receive(client, frames.encode(HELLO, 0, struct.pack(">4sB32s", MAGIC, other, NONCE)))
        self.assertProtocolError(
            client, f"the server speaks protocol version {other}, this client {PROTOCOL_VERSION}")

    def test_badTagRefused(self):
        """A tag outside the allowed characters is refused, saying what a tag may be."""
        server = connection(SERVER)
        server.start()
        server.data_to_send()
        receive(server, frames.auth(frames.AUTH_SHARED_TOKEN, b"p" * 32, "two words"))
        why = "client refused: the tag must be 1 to 64 characters from A-Z a-z 0-9 _ . : -"
        self.assertEqual(sent(server), [(REFUSE, 0, why.encode())])
        self.assertEqual(events(server), [CloseLink(why, False, False)])

    def test_handshakeTimeout(self):
        """A handshake not done by its deadline ends the link; then there is no deadline."""
        server = connection(SERVER)
        server.start()
        server.data_to_send()
        self.assertEqual(server.next_deadline(), T0 + HANDSHAKE_TIMEOUT)
        server.tick(T0 + HANDSHAKE_TIMEOUT - 0.01)
        self.assertEqual((sent(server), events(server)), ([], []))
        server.tick(T0 + HANDSHAKE_TIMEOUT)
        self.assertGoaway(server, GOAWAY_CLOSING, "the handshake did not finish in time")
        self.assertEqual(events(server),
                         [CloseLink("the handshake did not finish in time", True, False)])
        self.assertIsNone(server.next_deadline())

    def test_controlLimitRaisedOnEstablish(self):
        """Before the handshake control frames are held to 512 bytes; after it, to MAX_CONTROL."""
        big_reset = reset(1, "r" * 1000)
        before = connection(CLIENT)
        receive(before, big_reset)
        self.assertProtocolError(before, "RESET frame of 1000 bytes is over the 512-byte limit")

        server, after = pair()
        accepted(after)
        receive(after, big_reset)
        self.assertEqual(events(after), [ChannelReset(1, "r" * 1000)])
        self.assertUp(after)

    def test_handshakeFramesAfterEstablishRefused(self):
        """A handshake frame on an established link, at either end, is a protocol error."""
        handshake = {HELLO: frames.hello(NONCE),
                     AUTH: frames.auth(frames.AUTH_SHARED_TOKEN, b"p" * 32, TAG),
                     WELCOME: frames.welcome(3), REFUSE: frames.reason_frame(REFUSE, 0, "no")}
        for ftype, frame in handshake.items():
            for end in pair():
                receive(end, frame)
                self.assertProtocolError(end, f"{frames.NAMES[ftype]} frame after the handshake")

    def test_roundTripMeasuredFromPong(self):
        """A PONG echoing our PING's timestamp sets the round-trip time."""
        server, client = greeted()
        server.accept(CLIENT_ID)
        [_, (ftype, _, payload)] = sent(server)
        self.assertEqual(ftype, PING)
        self.assertIsNone(server.estimate.rtt)
        receive(server, frames.encode(PONG, 0, payload), now=T0 + 0.05)
        self.assertAlmostEqual(server.estimate.rtt, 0.05)


class SenderWindowTests(LinkCase):
    """A sender stops at its window and goes on when credit returns."""

    def setUp(self):
        self.server, self.client = pair()
        self.cid = opened(self.server)

    def test_sendsUpToWindow(self):
        """Bytes within the credit go out at once, and the local side keeps reading."""
        self.server.send_data(self.cid, b"a" * 600)
        self.assertEqual(sent(self.server), [(DATA, 1, b"a" * 600)])
        self.assertEqual(events(self.server), [])

    def test_stopsAtWindow(self):
        """Exactly ``window`` bytes are sent, then the local side is paused."""
        half = WINDOW_SIZE // 2 + 100
        self.server.send_data(self.cid, b"a" * half)
        self.server.send_data(self.cid, b"b" * half)
        self.assertEqual(data_sent(self.server), b"a" * half + b"b" * (WINDOW_SIZE - half))
        self.assertEqual(events(self.server), [PauseReading(1)])

    def test_exactWindowPauses(self):
        """Using the credit exactly pauses reading, without waiting for more data."""
        self.server.send_data(self.cid, b"a" * WINDOW_SIZE)
        self.assertEqual(len(data_sent(self.server)), WINDOW_SIZE)
        self.assertEqual(events(self.server), [PauseReading(1)])
        self.assertEqual(self.server.channels[1].send_credit, 0)

    def test_resumesOnWindow(self):
        """A WINDOW frame sends the held bytes, and reading resumes once they are out."""
        self.server.send_data(self.cid, b"a" * 600)
        self.server.send_data(self.cid, b"b" * WINDOW_SIZE)
        self.server.data_to_send()
        self.assertEqual(events(self.server), [PauseReading(1)])

        receive(self.server, frames.window_update(1, 100))
        self.assertEqual(data_sent(self.server), b"b" * 100)
        self.assertEqual(events(self.server), [])

        receive(self.server, frames.window_update(1, 1000))
        self.assertEqual(data_sent(self.server), b"b" * 500)
        self.assertEqual(events(self.server), [ResumeReading(1)])
        self.assertEqual(self.server.channels[1].send_credit, 500)

    def test_resumesWhenOutOfCredit(self):
        """A sender paused with nothing held resumes on any credit."""
        self.server.send_data(self.cid, b"a" * WINDOW_SIZE)
        self.server.data_to_send()
        events(self.server)
        receive(self.server, frames.window_update(1, 1))
        self.assertEqual(sent(self.server), [])
        self.assertEqual(events(self.server), [ResumeReading(1)])

    def test_largeWriteSplitAtMaxData(self):
        """Data over MAX_DATA goes out in frames of at most MAX_DATA bytes."""
        receive(self.server, frames.window_update(1, 2 * frames.MAX_DATA))
        self.server.send_data(self.cid, b"x" * (frames.MAX_DATA + 10))
        self.assertEqual([len(p) for t, _, p in sent(self.server)], [frames.MAX_DATA, 10])

    def test_earlyDataThenOpenOk(self):
        """An opened channel sends EARLY_DATA bytes before OPEN_OK, then the rest of the announced window."""
        server, client = pair()
        channel_id = server.open_channel("target", 80)
        self.assertEqual(channel_id, 1)
        [(ftype, cid, payload)] = sent(server)
        self.assertEqual((ftype, cid), (OPEN, 1))
        self.assertEqual(frames.parse_open(payload), (WINDOW_SIZE, "target", 80, b""))
        self.assertEqual(server.channels[1].state, State.OPENING)
        server.send_data(1, b"x" * (EARLY_DATA + 400))
        self.assertEqual(data_sent(server), b"x" * EARLY_DATA)
        self.assertEqual(events(server), [PauseReading(1)])
        receive(server, frames.open_ok(1, EARLY_DATA + 300))
        self.assertEqual(events(server), [ChannelOpened(1)])
        self.assertEqual(server.channels[1].state, State.OPEN)
        self.assertEqual(data_sent(server), b"x" * 300)
        receive(server, frames.window_update(1, 500))
        self.assertEqual(data_sent(server), b"x" * 100)
        self.assertEqual(events(server), [ResumeReading(1)])

    def test_openOkUnderEarlyDataRefused(self):
        """An OPEN_OK announcing a window smaller than the early data allowance ends the link."""
        server, client = pair()
        server.open_channel("target", 80)
        server.data_to_send()
        receive(server, frames.open_ok(1, EARLY_DATA - 1))
        self.assertProtocolError(
            server, f"OPEN_OK window {EARLY_DATA - 1} is under the {EARLY_DATA}-byte minimum")

    def test_windowForUnknownChannel(self):
        """Credit for a channel that is gone is ignored."""
        receive(self.server, frames.window_update(9, 100))
        self.assertEqual(sent(self.server), [])
        self.assertUp(self.server)


class AcceptedCase(LinkCase):
    """An established pair, and channel 1 accepted by the client."""

    def setUp(self):
        self.server, self.client = pair()
        self.cid = accepted(self.client)


class ReceiverCreditTests(AcceptedCase):
    """A receiver hands data to its local side and returns credit in batches."""

    def test_deliversData(self):
        """DATA bytes come out as DataReceived, in order."""
        receive(self.client, data(1, b"hello"), data(1, b" world"))
        self.assertEqual(events(self.client),
                         [DataReceived(1, b"hello"), DataReceived(1, b" world")])

    def test_creditInBatches(self):
        """No credit goes back below a quarter window; at a quarter, all of it does."""
        receive(self.client, data(1, b"x" * (BATCH - 1)))
        self.client.delivered()
        self.assertEqual(sent(self.client), [])
        receive(self.client, data(1, b"x" * 10))
        self.client.delivered()
        self.assertEqual(sent(self.client), [(WINDOW, 1, u32(BATCH + 9))])

    def test_creditWaitsForDelivered(self):
        """Credit goes back only once delivered() says the data was written locally."""
        receive(self.client, data(1, b"x" * (2 * BATCH)))
        self.assertEqual(sent(self.client), [])
        self.client.delivered()
        self.assertEqual(sent(self.client), [(WINDOW, 1, u32(2 * BATCH))])
        self.client.delivered()
        self.assertEqual(sent(self.client), [])

    def test_creditHeldWhileLocalFull(self):
        """While the local socket is full, credit is held; its draining returns it."""
        self.client.local_full(1, True)
        receive(self.client, data(1, b"x" * (BATCH * 3)))
        self.assertEqual(events(self.client), [DataReceived(1, b"x" * (BATCH * 3))])
        self.client.delivered()
        self.assertEqual(sent(self.client), [])

        self.client.local_full(1, False)
        self.assertEqual(sent(self.client), [(WINDOW, 1, u32(BATCH * 3))])

    def test_resumeWithSmallCreditReturnsIt(self):
        """The local socket draining returns even less than a batch, so a small remainder is never stuck."""
        receive(self.client, data(1, b"x" * 10))
        self.client.delivered()
        self.client.local_full(1, True)
        self.client.local_full(1, False)
        self.assertEqual(sent(self.client), [(WINDOW, 1, u32(10))])

    def test_fullWindowThenMoreAfterCredit(self):
        """A peer may send a whole window, and more once credit has gone back."""
        receive(self.client, data(1, b"x" * WINDOW_SIZE))
        self.client.delivered()
        self.assertEqual(sent(self.client), [(WINDOW, 1, u32(WINDOW_SIZE))])
        receive(self.client, data(1, b"y" * WINDOW_SIZE))
        self.assertEqual(events(self.client),
                         [DataReceived(1, b"x" * WINDOW_SIZE), DataReceived(1, b"y" * WINDOW_SIZE)])
        self.assertUp(self.client)

    def test_beyondWindowIsProtocolError(self):
        """Data beyond the credit given ends the link with a protocol error."""
        self.client.local_full(1, True)  # no credit goes back
        receive(self.client, data(1, b"x" * WINDOW_SIZE))
        self.client.delivered()
        self.assertEqual(events(self.client), [DataReceived(1, b"x" * WINDOW_SIZE)])
        self.assertFalse(self.client.closed)
        receive(self.client, data(1, b"y"))
        self.assertProtocolError(self.client, "channel 1 sent beyond its window")

    def test_nothingDeliveredAfterFailMidFrame(self):
        """Once the link has failed, the rest of a DATA frame it was reading is not delivered."""
        receive(self.client, frames.data_header(1, 100) + b"a" * 10)
        self.client.fail("going away")
        # A TLS transport goes on reading until the peer closes.
        receive(self.client, b"b" * 90)
        self.assertEqual(events(self.client),
                         [DataReceived(1, b"a" * 10), CloseLink("going away", True, False)])

    def test_dataForUnknownChannelIgnored(self):
        """DATA for a channel this end closed is dropped without ending the link."""
        receive(self.client, data(7, b"late"))
        self.assertEqual(sent(self.client), [])
        self.assertEqual(events(self.client), [])
        self.assertUp(self.client)


class HalfCloseTests(AcceptedCase):
    """FIN carries a half-close; RESET and local loss close the channel."""

    def test_finReachesLocalEnd(self):
        """A FIN from the peer ends the local write side; the other direction goes on."""
        receive(self.client, fin(1))
        self.assertEqual(events(self.client), [ChannelEnded(1)])
        self.assertEqual(self.client.channels[1].state, State.GOT_FIN)
        self.client.send_data(1, b"reply")
        self.assertEqual(sent(self.client), [(DATA, 1, b"reply")])
        self.assertUp(self.client)

    def test_duplicateFinIgnored(self):
        """A second FIN on a channel is not passed on again."""
        receive(self.client, fin(1), fin(1))
        self.assertEqual(events(self.client), [ChannelEnded(1)])
        self.assertUp(self.client)

    def test_localEofSendsFin(self):
        """The local side's EOF sends FIN, and data can still arrive for it."""
        self.client.end_channel(1)
        self.assertEqual(sent(self.client), [(FIN, 1, b"")])
        self.assertEqual(self.client.channels[1].state, State.SENT_FIN)
        receive(self.client, data(1, b"more"))
        self.assertEqual(events(self.client), [DataReceived(1, b"more")])

    def test_nothingSentAfterLocalEof(self):
        """Data or a second EOF from a local side that ended sends nothing."""
        self.client.end_channel(1)
        self.client.data_to_send()
        self.client.send_data(1, b"late")
        self.client.end_channel(1)
        self.assertEqual(sent(self.client), [])

    def test_finWaitsForPendingData(self):
        """FIN follows the data still waiting for credit, never overtakes it; reading stays paused."""
        self.client.send_data(1, b"a" * (WINDOW_SIZE + 50))
        self.client.end_channel(1)
        self.assertEqual(sent(self.client), [(DATA, 1, b"a" * WINDOW_SIZE)])

        receive(self.client, frames.window_update(1, 20))
        self.assertEqual(sent(self.client), [(DATA, 1, b"a" * 20)])
        receive(self.client, frames.window_update(1, 100))
        self.assertEqual(sent(self.client), [(DATA, 1, b"a" * 30), (FIN, 1, b"")])
        self.assertEqual(events(self.client), [PauseReading(1)])  # and never resumed

    def test_resetEndsChannel(self):
        """RESET reports the reason and forgets the channel; its late data is dropped."""
        receive(self.client, reset(1, "target closed"))
        self.assertEqual(events(self.client), [ChannelReset(1, "target closed")])
        self.assertNotIn(1, self.client.channels)

        receive(self.client, data(1, b"late"))
        self.assertEqual(events(self.client), [])
        self.assertUp(self.client)

    def test_noResetBackAfterReset(self):
        """The local socket closing after a RESET sends nothing back."""
        receive(self.client, reset(1, "gone"))
        self.client.reset_channel(1, "connection lost")
        self.assertEqual(sent(self.client), [])

    def endBothWays(self, held=b""):
        """Channel 1 sends ``held`` (beyond its credit: it waits), then FIN; the peer's FIN comes."""
        if held:
            self.client.send_data(1, held)
        self.client.end_channel(1)
        receive(self.client, fin(1))
        self.assertEqual(self.client.channels[1].state, State.CLOSED)
        self.client.data_to_send()

    def test_closeAfterBothFinsSendsNoReset(self):
        """A channel closed after FIN both ways ends quietly: no RESET."""
        self.endBothWays()
        self.client.reset_channel(1, "connection done")
        self.assertEqual(sent(self.client), [])
        self.assertNotIn(1, self.client.channels)

    def test_closeWithDataHeldSendsReset(self):
        """A channel closed after FIN both ways but with data still waiting for credit is RESET."""
        self.endBothWays(held=b"a" * (WINDOW_SIZE + 1))
        self.client.reset_channel(1, "connection lost")
        self.assertEqual(sent(self.client), [(RESET, 1, b"connection lost")])

    def test_forgetFinishedAfterBothFins(self):
        """forget_finished forgets a channel ended both ways, and nothing is sent."""
        self.endBothWays()
        self.assertTrue(self.client.forget_finished(1))
        self.assertEqual(sent(self.client), [])
        self.assertNotIn(1, self.client.channels)

    def test_forgetFinishedLeavesUnfinished(self):
        """forget_finished leaves a channel ended both ways but with data held as it is; nor knows channel 2."""
        self.endBothWays(held=b"a" * (WINDOW_SIZE + 1))
        self.assertFalse(self.client.forget_finished(1))
        self.assertIn(1, self.client.channels)
        self.assertFalse(self.client.forget_finished(2))  # no such channel
        self.assertEqual(sent(self.client), [])

    def test_forgetFinishedLeavesHalfEnded(self):
        """forget_finished leaves a channel that only we ended: the peer may still send."""
        self.client.end_channel(1)
        self.client.data_to_send()
        self.assertFalse(self.client.forget_finished(1))
        self.assertIn(1, self.client.channels)

    def test_closeBeforeFinsSendsReset(self):
        """A channel whose local socket is lost mid-stream is RESET, with the reason."""
        self.client.end_channel(1)  # our FIN only: the peer may still send
        self.client.data_to_send()
        self.client.reset_channel(1, "connection lost: it broke")
        self.assertEqual(sent(self.client), [(RESET, 1, b"connection lost: it broke")])
        self.assertNotIn(1, self.client.channels)

    def test_resetChannel(self):
        """reset_channel on an open channel tells the peer at once and forgets it."""
        self.client.reset_channel(1, "closed by admin")
        self.assertEqual(sent(self.client), [(RESET, 1, b"closed by admin")])
        self.assertNotIn(1, self.client.channels)
        self.assertEqual(events(self.client), [])

    def test_dataAfterFinIsProtocolError(self):
        """DATA on a channel after the peer's FIN is a protocol error."""
        receive(self.client, fin(1), data(1, b"late"))
        self.assertProtocolError(self.client, "DATA on channel 1 after its FIN",
                                 before=[ChannelEnded(1)])


class OpenTests(LinkCase):
    """OPEN, OPEN_OK and OPEN_FAIL: checked, then reported as events."""

    def test_openRequested(self):
        """An OPEN for a new channel asks to connect to its target, with the peer's window as credit."""
        server, client = pair()
        receive(client, frames.open_channel(4, WINDOW_SIZE + 5, "192.168.10.15", 6666))
        self.assertEqual(events(client), [OpenRequested(4, "192.168.10.15", 6666)])
        self.assertEqual(client.channels[4].state, State.CONNECTING)
        self.assertEqual(client.channels[4].send_credit, WINDOW_SIZE + 5)
        self.assertEqual(sent(client), [])

    def test_acceptChannel(self):
        """accept_channel answers OPEN_OK with this end's window, and the channel is open."""
        server, client = pair()
        receive(client, frames.open_channel(1, WINDOW_SIZE, "target", 80))
        client.accept_channel(1)
        self.assertEqual(sent(client), [(OPEN_OK, 1, u32(WINDOW_SIZE))])
        self.assertEqual(client.channels[1].state, State.OPEN)

    def test_refuseChannel(self):
        """refuse_channel answers OPEN_FAIL with the code and reason, and forgets the channel."""
        server, client = pair()
        receive(client, frames.open_channel(1, WINDOW_SIZE, "target", 80))
        events(client)
        client.refuse_channel(1, frames.FAIL_TIMEOUT, "timed out")
        self.assertEqual(sent(client), [(OPEN_FAIL, 1, b"\x01timed out")])
        self.assertNotIn(1, client.channels)
        client.accept_channel(1)  # too late: nothing happens
        self.assertEqual(sent(client), [])

    def test_openInUse(self):
        """An OPEN for a channel in use, or channel 0, is a protocol error."""
        server, client = pair()
        accepted(client, 1)
        receive(client, frames.open_channel(1, WINDOW_SIZE, "h", 1))
        self.assertProtocolError(client, "OPEN for channel 1, not above the last one (1)")
        server, client = pair()
        receive(client, frames.open_channel(0, WINDOW_SIZE, "h", 1))
        self.assertProtocolError(client, "OPEN frame on channel 0")

    def test_openNotAccepted(self):
        """The server does not accept OPEN: it ends the link when it gets one."""
        server, client = pair()
        receive(server, frames.open_channel(3, WINDOW_SIZE, "h", 1))
        self.assertProtocolError(server, "this end does not accept OPEN")

    def test_openFail(self):
        """OPEN_FAIL forgets the channel and reports the code and reason."""
        server, client = pair()
        server.open_channel("target", 80)
        server.data_to_send()
        receive(server, frames.open_fail(1, frames.FAIL_DENIED, "not allowed"))
        self.assertEqual(events(server), [ChannelOpenFailed(1, frames.FAIL_DENIED, "not allowed")])
        self.assertNotIn(1, server.channels)

    def test_unknownFailCodeIsRefused(self):
        """An OPEN_FAIL code this end does not know is reported as FAIL_REFUSED."""
        server, client = pair()
        server.open_channel("target", 80)
        receive(server, frames.open_fail(1, 200, "strange"))
        self.assertEqual(events(server), [ChannelOpenFailed(1, frames.FAIL_REFUSED, "strange")])
        self.assertUp(server)

    def test_openOkOrFailForUnknownChannelIgnored(self):
        """OPEN_OK or OPEN_FAIL for a channel already closed here is ignored."""
        server, client = pair()
        server.open_channel("target", 80)
        server.reset_channel(1, "the user left")
        server.data_to_send()
        receive(server, frames.open_ok(1, WINDOW_SIZE), frames.open_fail(1, 0, "late"))
        self.assertEqual((sent(server), events(server)), ([], []))
        self.assertUp(server)

    def test_secondOpenOkIsProtocolError(self):
        """OPEN_OK, or OPEN_FAIL, for a channel already open is a protocol error."""
        for frame in (frames.open_ok(1, WINDOW_SIZE), frames.open_fail(1, 0, "late")):
            server, client = pair()
            opened(server)
            receive(server, frame)
            name = frames.NAMES[frames.HEADER.unpack_from(frame)[0]]
            self.assertProtocolError(server, f"{name} for channel 1, which is open")

    def test_clientRefusesOpenOkAndOpenFail(self):
        """OPEN_OK and OPEN_FAIL are the client's to send: received by it, a protocol error."""
        for frame, name in ((frames.open_ok(1, WINDOW_SIZE), "OPEN_OK"),
                            (frames.open_fail(1, 0, "no"), "OPEN_FAIL")):
            server, client = pair()
            accepted(client)
            receive(client, frame)
            self.assertProtocolError(client, f"this end does not accept {name}")

    def test_openIdsMustRise(self):
        """An OPEN whose id is not above the last one (repeated or lower) is a protocol error."""
        cases = [  # (OPENs before, the OPEN's id, the last id)
            ([5], 5, 5),  # repeated, the first open
            ([5], 3, 5),  # lower
            ([2, 6], 4, 6),  # between two (6 still connecting)
        ]
        for earlier, channel_id, last in cases:
            server, client = pair()
            for previous in earlier:
                receive(client, frames.open_channel(previous, WINDOW_SIZE, "h", 1))
            client.accept_channel(earlier[0])
            client.data_to_send()
            events(client)
            receive(client, frames.open_channel(channel_id, WINDOW_SIZE, "h", 1))
            self.assertProtocolError(
                client, f"OPEN for channel {channel_id}, not above the last one ({last})")

    def test_repeatedOpenWhileConnecting(self):
        """A second OPEN for a channel still connecting is a protocol error, the first unharmed until then."""
        server, client = pair()
        receive(client, frames.open_channel(1, WINDOW_SIZE, "h", 1),
                frames.open_channel(1, WINDOW_SIZE, "h", 1))
        self.assertProtocolError(client, "OPEN for channel 1, not above the last one (1)",
                                 before=[OpenRequested(1, "h", 1)])

    def test_openIdsMayJump(self):
        """Ids need only rise: a gap is allowed (the server's channels that never reached us)."""
        server, client = pair()
        receive(client, frames.open_channel(3, WINDOW_SIZE, "h", 1),
                frames.open_channel(10, WINDOW_SIZE, "h", 2))
        self.assertEqual(events(client), [OpenRequested(3, "h", 1), OpenRequested(10, "h", 2)])

    def test_openWindowUnderEarlyDataRefused(self):
        """An OPEN announcing a window smaller than EARLY_DATA is a protocol error."""
        server, client = pair()
        receive(client, frames.open_channel(1, EARLY_DATA - 1, "h", 1))
        self.assertProtocolError(
            client, f"OPEN window {EARLY_DATA - 1} is under the {EARLY_DATA}-byte minimum")
        self.assertEqual(client.channels, {})

    def test_openWindowOfEarlyDataAccepted(self):
        """An OPEN announcing exactly EARLY_DATA is fine."""
        server, client = pair()
        receive(client, frames.open_channel(1, EARLY_DATA, "h", 1))
        self.assertEqual(events(client), [OpenRequested(1, "h", 1)])

    def test_earlyDataHeldUntilAccepted(self):
        """DATA before the target is connected is held, and handed over after OPEN_OK is sent."""
        server, client = pair()
        receive(client, frames.open_channel(1, WINDOW_SIZE, "h", 1),
                data(1, b"GET /"), data(1, b" HTTP/1.0"))
        self.assertEqual(events(client), [OpenRequested(1, "h", 1)])
        client.accept_channel(1)
        self.assertEqual(sent(client), [(OPEN_OK, 1, u32(WINDOW_SIZE))])
        self.assertEqual(events(client), [DataReceived(1, b"GET /"), DataReceived(1, b" HTTP/1.0")])

    def test_earlyDataDroppedWithRefusal(self):
        """Early data of a channel refused goes with it."""
        server, client = pair()
        receive(client, frames.open_channel(1, WINDOW_SIZE, "h", 1), data(1, b"hello"))
        events(client)
        client.refuse_channel(1, frames.FAIL_REFUSED, "connection refused")
        self.assertEqual(events(client), [])
        self.assertNotIn(1, client.channels)

    def test_earlyDataOverLimitIsProtocolError(self):
        """More than EARLY_DATA bytes before OPEN_OK is a protocol error; exactly that much is fine."""
        server, client = pair()
        receive(client, frames.open_channel(1, WINDOW_SIZE, "h", 1),
                data(1, b"x" * EARLY_DATA))
        self.assertUp(client)
        receive(client, data(1, b"y"))
        self.assertProtocolError(client, f"channel 1 sent over {EARLY_DATA} bytes before OPEN_OK")

    def test_finWhileConnectingReportedAfterAccept(self):
        """A FIN that comes while the target is connecting is reported only after accept_channel, after the early data."""
        server, client = pair()
        receive(client, frames.open_channel(1, WINDOW_SIZE, "h", 1), data(1, b"bye"), fin(1))
        self.assertEqual(events(client), [OpenRequested(1, "h", 1)])
        self.assertEqual(client.channels[1].state, State.CONNECTING_GOT_FIN)
        client.accept_channel(1)
        self.assertEqual(sent(client), [(OPEN_OK, 1, u32(WINDOW_SIZE))])
        self.assertEqual(events(client), [DataReceived(1, b"bye"), ChannelEnded(1)])
        self.assertEqual(client.channels[1].state, State.GOT_FIN)

    def test_dataAfterFinWhileConnectingIsProtocolError(self):
        """Early DATA after an early FIN is a protocol error too."""
        server, client = pair()
        receive(client, frames.open_channel(1, WINDOW_SIZE, "h", 1), fin(1), data(1, b"late"))
        self.assertProtocolError(client, "DATA on channel 1 after its FIN",
                                 before=[OpenRequested(1, "h", 1)])

    def test_openOkAfterLocalEof(self):
        """The opener's local side ending before OPEN_OK sends FIN at once; OPEN_OK then leaves it SENT_FIN."""
        server, client = pair()
        server.open_channel("target", 80)
        server.send_data(1, b"request")
        server.end_channel(1)
        self.assertEqual([f[0] for f in sent(server)], [OPEN, DATA, FIN])
        self.assertEqual(server.channels[1].state, State.OPENING_SENT_FIN)
        receive(server, frames.open_ok(1, WINDOW_SIZE))
        self.assertEqual(events(server), [ChannelOpened(1)])
        self.assertEqual(server.channels[1].state, State.SENT_FIN)
        self.assertEqual(sent(server), [])  # no second FIN

    def test_dataOrFinBeforeOpenOkIsProtocolError(self):
        """The acceptor may not send DATA or FIN before its OPEN_OK."""
        for frame, name in ((data(1, b"x"), "DATA on channel 1"), (fin(1), "FIN on channel 1")):
            server, client = pair()
            server.open_channel("target", 80)
            server.data_to_send()
            receive(server, frame)
            self.assertProtocolError(server, f"{name} before its OPEN_OK")


class ChannelIdTests(LinkCase):
    """The server numbers channels from 1 up; when ids run out, the link drains."""

    def test_idsRise(self):
        """Each channel opened gets the next id."""
        server, client = pair()
        self.assertEqual([server.open_channel("h", 1) for _ in range(3)], [1, 2, 3])

    def test_onlyServerOpens(self):
        """The client cannot open channels."""
        server, client = pair()
        self.assertRaises(LinkUnavailable, client.open_channel, "h", 1)

    def test_notBeforeEstablished(self):
        """No channel opens before the handshake is done."""
        server = connection(SERVER)
        server.start()
        self.assertRaises(LinkUnavailable, server.open_channel, "h", 1)

    def test_idsUsedUp(self):
        """Past MAX_CHANNEL_ID, open_channel raises LinkUnavailable and the link drains."""
        server, client = pair()
        server._next_id = MAX_CHANNEL_ID
        self.assertEqual(server.open_channel("h", 1), MAX_CHANNEL_ID)
        server.data_to_send()
        self.assertRaises(LinkUnavailable, server.open_channel, "h", 1)
        self.assertGoaway(server, GOAWAY_DRAINING, "channel ids used up")
        self.assertTrue(server.draining)
        self.assertUp(server)  # the last channel carries on
        server.reset_channel(MAX_CHANNEL_ID, "done")
        self.assertEqual([f[0] for f in sent(server)], [RESET, GOAWAY])
        self.assertEqual(events(server), [CloseLink("drained", False, False)])

    def test_idsUsedUpWithNoChannelClosesAtOnce(self):
        """With no channel left when ids run out, the drained link closes at once."""
        server, client = pair()
        server._next_id = MAX_CHANNEL_ID + 1
        self.assertRaises(LinkUnavailable, server.open_channel, "h", 1)
        self.assertEqual(
            sent(server),
            decode(frames.goaway(GOAWAY_DRAINING, "channel ids used up")
                   + frames.goaway(GOAWAY_CLOSING, "drained")))
        self.assertEqual(events(server), [CloseLink("drained", False, False)])


class FrameRuleTests(LinkCase):
    """Frames on the wrong channel, or with wrong payloads, are protocol errors."""

    def test_channelFramesOnChannelZero(self):
        """A channel's frame on channel 0 is a protocol error."""
        cases = {
            OPEN_OK: frames.open_ok(0, WINDOW_SIZE), OPEN_FAIL: frames.open_fail(0, 0, "x"),
            WINDOW: frames.window_update(0, 10), FIN: fin(0), RESET: reset(0, "x"),
        }
        for ftype, frame in cases.items():
            for end in pair():
                receive(end, frame)
                self.assertProtocolError(end, f"{frames.NAMES[ftype]} frame on channel 0")

    def test_dataOnChannelZero(self):
        """DATA on channel 0 is a protocol error."""
        for end in pair():
            receive(end, data(0, b"x"))
            self.assertProtocolError(end, "DATA frame on channel 0")

    def test_linkFramesOnAChannel(self):
        """A link frame (PING, PONG, GOAWAY, HELLO, ...) on a channel other than 0 is a protocol error."""
        cases = {
            PING: b"\0" * 8, PONG: b"\0" * 8, GOAWAY: b"\0bye", HELLO: payload(frames.hello(NONCE)),
            AUTH: payload(frames.auth(frames.AUTH_SHARED_TOKEN, b"p" * 32, TAG)),
            WELCOME: u32(1), REFUSE: b"no",
        }
        for ftype, body in cases.items():
            for end in pair():
                receive(end, frames.encode(ftype, 3, body))
                self.assertProtocolError(end, f"{frames.NAMES[ftype]} frame on channel 3, not 0")

    def test_linkFrameOnAChannelDuringHandshake(self):
        """The channel rule holds before the handshake is done too."""
        client = connection(CLIENT)
        receive(client, frames.encode(HELLO, 1, payload(frames.hello(NONCE))))
        self.assertProtocolError(client, "HELLO frame on channel 1, not 0")

    def test_windowOfZero(self):
        """A WINDOW of 0 is a protocol error, for a known channel or not."""
        for channel_id in (1, 9):
            server, client = pair()
            opened(server)
            receive(server, frames.window_update(channel_id, 0))
            self.assertProtocolError(server, f"WINDOW of 0 on channel {channel_id}")

    def test_windowOverflow(self):
        """A WINDOW that takes a channel's credit past MAX_CREDIT is a protocol error; up to it is fine."""
        server, client = pair()
        opened(server)
        receive(server, frames.window_update(1, MAX_CREDIT - WINDOW_SIZE))
        self.assertEqual(server.channels[1].send_credit, MAX_CREDIT)
        self.assertUp(server)
        receive(server, frames.window_update(1, 1))
        self.assertProtocolError(server, "WINDOW on channel 1 overflows its credit")

    def test_pingPongSize(self):
        """PING and PONG payloads of other than 8 bytes are protocol errors."""
        for ftype in (PING, PONG):
            for size in (0, 7, 9):
                server, client = pair()
                receive(server, frames.encode(ftype, 0, b"\0" * size))
                self.assertProtocolError(
                    server, f"{frames.NAMES[ftype]} of {size} bytes, not {frames.PING_SIZE}")

    def test_garbageEndsLinkWithReason(self):
        """Garbage on an established link ends it with a protocol error saying what was wrong."""
        server, client = pair()
        receive(server, b"\xff" * 20)
        self.assertProtocolError(server, "unknown frame type 255")


class LinkBackpressureTests(LinkCase):
    """When the link's own write buffer fills, the channels writing to it stop reading."""

    def setUp(self):
        self.server, self.client = pair()
        self.writer = opened(self.server)
        self.idle = opened(self.server)

    def test_pausesChannelsThatWrite(self):
        """A channel that writes while the link is full stops reading; an idle one does not."""
        self.server.link_full(True)
        self.server.send_data(self.writer, b"abc")
        self.assertEqual(sent(self.server), [(DATA, self.writer, b"abc")])
        self.assertEqual(events(self.server), [PauseReading(self.writer)])

    def test_pausedOnce(self):
        """A channel writing again while the link is still full is not paused twice."""
        self.server.link_full(True)
        self.server.send_data(self.writer, b"abc")
        self.server.send_data(self.writer, b"def")
        self.assertEqual(events(self.server), [PauseReading(self.writer)])
        self.server.link_full(False)
        self.assertEqual(events(self.server), [ResumeReading(self.writer)])

    def test_resumesOnDrain(self):
        """When the link's buffer drains, the channels it paused read again."""
        self.server.link_full(True)
        self.server.send_data(self.writer, b"abc")
        self.server.link_full(False)
        self.assertEqual(events(self.server),
                         [PauseReading(self.writer), ResumeReading(self.writer)])

    def test_drainDoesNotOverrideCredit(self):
        """A channel also out of credit stays paused when the link drains."""
        self.server.link_full(True)
        self.server.send_data(self.writer, b"a" * 10)
        self.server.send_data(self.writer, b"b" * WINDOW_SIZE)  # beyond the credit
        self.server.link_full(False)
        self.assertEqual(events(self.server), [PauseReading(self.writer)])
        receive(self.server, frames.window_update(self.writer, 100))
        self.assertEqual(events(self.server), [ResumeReading(self.writer)])

    def test_drainDoesNotResumeEndedChannel(self):
        """A channel whose local side ended while the link was full is not resumed."""
        self.server.link_full(True)
        self.server.send_data(self.writer, b"abc")
        self.server.end_channel(self.writer)
        self.server.link_full(False)
        self.assertEqual(events(self.server), [PauseReading(self.writer)])

    def test_drainDoesNotResumeResetChannel(self):
        """A channel reset while the link was full is not resumed."""
        self.server.link_full(True)
        self.server.send_data(self.writer, b"abc")
        receive(self.server, reset(self.writer, "gone"))
        self.server.link_full(False)
        self.assertEqual(events(self.server),
                         [PauseReading(self.writer), ChannelReset(self.writer, "gone")])


class PingTests(LinkCase):
    """PING is answered; a silent link is pinged, then dropped; tick() runs when next_deadline() says."""

    def setUp(self):
        self.server, self.client = pair()

    def test_pingAnswered(self):
        """A PING is answered by a PONG with the same 8 bytes."""
        receive(self.server, frames.encode(PING, 0, b"12345678"))
        self.assertEqual(sent(self.server), [(PONG, 0, b"12345678")])

    def test_silentLinkPinged(self):
        """A link pings every ping_interval, when next_deadline() says."""
        self.assertEqual(self.server.next_deadline(), T0 + PING_INTERVAL)
        self.server.tick(T0 + PING_INTERVAL - 0.1)
        self.assertEqual(sent(self.server), [])
        self.server.tick(T0 + PING_INTERVAL)
        [(ftype, _, payload)] = sent(self.server)
        self.assertEqual((ftype, payload), (PING, struct.pack(">d", T0 + PING_INTERVAL)))
        self.assertEqual(self.server.next_deadline(), T0 + 2 * PING_INTERVAL)

    def test_silentLinkDropped(self):
        """A link that hears nothing for ping_timeout after its last tick is ended with a GOAWAY."""
        # The first tick finds the handshake heard since the link began; the
        # three after it hear nothing.
        ticks = [T0 + n * PING_INTERVAL for n in range(1, 5)]
        for now in ticks[:3]:
            self.server.tick(now)
            self.assertEqual([f[0] for f in sent(self.server)], [PING])
            self.assertUp(self.server)
        self.server.tick(ticks[3])
        self.assertGoaway(self.server, GOAWAY_CLOSING,
                          f"nothing heard for {PING_TIMEOUT:g} seconds")
        self.assertEqual(events(self.server),
                         [CloseLink(f"nothing heard for {PING_TIMEOUT:g} seconds", True, False)])
        self.assertFalse(self.server.protocol_error)
        self.assertIsNone(self.server.next_deadline())
        self.server.tick(ticks[3] + PING_INTERVAL)
        self.assertEqual((sent(self.server), events(self.server)), ([], []))

    def test_busyLinkKept(self):
        """A link that keeps hearing from its peer is not dropped; it only pings to time the round trip."""
        now = T0
        types = set()
        for _ in range(20):
            now += PING_INTERVAL / 2
            receive(self.server, frames.encode(PONG, 0, b"\0" * 8), now=now)
            if now >= self.server.next_deadline():
                self.server.tick(now)
            types.update(f[0] for f in sent(self.server))
        self.assertEqual(types, {PING})
        self.assertUp(self.server)

    def test_pongCountsAsHeard(self):
        """Answering our PINGs keeps a link up however long it is otherwise idle."""
        now = T0
        for _ in range(10):
            now = self.server.next_deadline()
            self.server.tick(now)
            for ftype, _, payload in sent(self.server):
                if ftype == PING:
                    receive(self.server, frames.encode(PONG, 0, payload), now=now + RTT)
        self.assertUp(self.server)
        self.assertAlmostEqual(self.server.estimate.rtt, RTT)

    def test_bogusPongIgnored(self):
        """A PONG whose time is in the future or too far back measures nothing."""
        for stamp in (T0 + 1, T0 - PING_TIMEOUT):
            receive(self.server, frames.encode(PONG, 0, struct.pack(">d", stamp)))
        self.assertIsNone(self.server.estimate.rtt)
        self.assertUp(self.server)


class NonReadingPeerTests(LinkCase):
    """A peer that keeps asking (PING) but never reads the answers is dropped, not buffered for."""

    PING = frames.encode(PING, 0, b"\0" * 8)

    def test_pingFloodWhileNotReading(self):
        """Past MAX_CONTROL_BACKLOG of answers queued behind a full buffer, the link is aborted."""
        server, client = pair()
        server.link_full(True)  # our write buffer is full: the peer is not reading
        pings = MAX_CONTROL_BACKLOG // len(self.PING) + 2
        receive(server, self.PING * pings)
        out = b"".join(server.data_to_send())
        self.assertLessEqual(len(out), MAX_CONTROL_BACKLOG)
        self.assertNotIn(GOAWAY, [f[0] for f in sent(server)])
        self.assertEqual(events(server),
                         [CloseLink("it does not read what it asks for", True, True)])
        self.assertTrue(server.protocol_error)

    def test_answersFlowOnceItReads(self):
        """A full buffer that drains resets the count: a reading peer is never dropped."""
        server, client = pair()
        for _ in range(4):
            server.link_full(True)
            receive(server, self.PING * (MAX_CONTROL_BACKLOG // len(self.PING) // 2))
            server.link_full(False)
        self.assertUp(server)


class GoAwayTests(LinkCase):
    """GOAWAY closing ends the link; GOAWAY draining stops new channels, then the link ends."""

    def test_goawayClosesLink(self):
        """GOAWAY closing closes the link, and nothing after it in the same chunk is acted on."""
        server, client = pair()
        accepted(client)
        receive(client, frames.goaway(GOAWAY_CLOSING, "shutting down"), data(1, b"late"),
                frames.open_channel(5, WINDOW_SIZE, "h", 1))
        self.assertEqual(events(client), [GoingAway("shutting down", False),
                                           CloseLink("shutting down", False, False)])
        self.assertEqual(sent(client), [])
        self.assertFalse(client.protocol_error)

    def test_goawayDuringHandshake(self):
        """A GOAWAY, even draining, ends a link still in its handshake."""
        client = connection(CLIENT)
        receive(client, frames.goaway(GOAWAY_DRAINING, "restarting"))
        self.assertEqual(events(client), [GoingAway("restarting", False),
                                           CloseLink("restarting", False, False)])
        self.assertEqual(sent(client), [])

    def test_peerDraining(self):
        """GOAWAY draining: no new channels, the open ones carry on."""
        server, client = pair()
        channel_id = opened(server)
        receive(server, frames.goaway(GOAWAY_DRAINING, "client stopping"))
        self.assertEqual(events(server), [GoingAway("client stopping", True)])
        self.assertTrue(server.peer_draining)
        self.assertRaises(LinkUnavailable, server.open_channel, "h", 1)
        server.send_data(channel_id, b"still")
        self.assertEqual(sent(server), [(DATA, channel_id, b"still")])
        self.assertUp(server)

    def test_goAway(self):
        """go_away() sends GOAWAY draining, refuses OPENs, and closes once the last channel is reset."""
        server, client = pair()
        accepted(client)
        client.go_away("client stopping")
        self.assertGoaway(client, GOAWAY_DRAINING, "client stopping")
        self.assertTrue(client.draining)
        receive(client, frames.open_channel(2, WINDOW_SIZE, "h", 1))
        self.assertEqual(sent(client),
                         [(OPEN_FAIL, 2, bytes([frames.FAIL_DRAINING]) + b"the client is draining")])
        self.assertEqual(events(client), [])
        client.go_away("again")  # once is enough
        self.assertEqual(sent(client), [])
        client.reset_channel(1, "done")
        self.assertEqual(sent(client),
                         decode(reset(1, "done") + frames.goaway(GOAWAY_CLOSING, "drained")))
        self.assertEqual(events(client), [CloseLink("drained", False, False)])

    def test_drainedByPeerReset(self):
        """A draining link also closes when its last channel is reset by the peer."""
        server, client = pair()
        accepted(client)
        client.go_away("client stopping")
        client.data_to_send()
        receive(client, reset(1, "user left"))
        self.assertEqual(events(client),
                         [ChannelReset(1, "user left"), CloseLink("drained", False, False)])
        self.assertGoaway(client, GOAWAY_CLOSING, "drained")

    def test_drainedByRefusal(self):
        """A draining client also closes when it refuses the last channel, after its OPEN_FAIL."""
        server, client = pair()
        receive(client, frames.open_channel(1, WINDOW_SIZE, "h", 1))
        events(client)
        client.go_away("client stopping")
        client.data_to_send()
        client.refuse_channel(1, frames.FAIL_REFUSED, "connection refused")
        self.assertEqual([f[0] for f in sent(client)], [OPEN_FAIL, GOAWAY])
        self.assertEqual(events(client), [CloseLink("drained", False, False)])

    def test_drainedByOpenFail(self):
        """A draining server also closes when its last channel fails to open."""
        server, client = pair()
        server.open_channel("target", 80)
        server.go_away("server stopping")
        server.data_to_send()
        receive(server, frames.open_fail(1, frames.FAIL_REFUSED, "connection refused"))
        self.assertEqual(events(server),
                         [ChannelOpenFailed(1, frames.FAIL_REFUSED, "connection refused"),
                          CloseLink("drained", False, False)])
        self.assertGoaway(server, GOAWAY_CLOSING, "drained")

    def test_serverGoAwayRefusesNewChannels(self):
        """A server draining opens no channel itself."""
        server, client = pair()
        opened(server)
        server.go_away("server stopping")
        self.assertRaises(LinkUnavailable, server.open_channel, "h", 1)

    def test_goAwayWithoutChannelsClosesAtOnce(self):
        """go_away() with no channel open closes the link at once."""
        server, client = pair()
        server.go_away("server stopping")
        self.assertEqual([frames.parse_goaway(p) for _, _, p in sent(server)],
                         [(GOAWAY_DRAINING, "server stopping"), (GOAWAY_CLOSING, "drained")])
        self.assertEqual(events(server), [CloseLink("drained", False, False)])


class LinkEndTests(LinkCase):
    """Connection loss ends every channel; a closed link sends nothing more."""

    def test_connectionLostReachesEveryChannel(self):
        """Losing the link reports every channel lost and forgets them; no deadline is left."""
        server, client = pair()
        channels = [opened(server) for _ in range(3)]
        kept = [server.channels[c] for c in channels]
        server.connection_lost()
        self.assertEqual(events(server), [ChannelLost(c) for c in channels])
        self.assertEqual(server.channels, {})
        self.assertEqual({ch.state for ch in kept}, {State.CLOSED})
        self.assertIsNone(server.next_deadline())

    def test_connectingChannelLost(self):
        """A channel still connecting is reported lost too."""
        server, client = pair()
        receive(client, frames.open_channel(1, WINDOW_SIZE, "h", 1))
        events(client)
        client.connection_lost()
        self.assertEqual(events(client), [ChannelLost(1)])

    def test_channelClosingAfterLinkLostIsQuiet(self):
        """A channel's local socket closing after the link died sends nothing."""
        server, client = pair()
        accepted(client)
        client.connection_lost()
        events(client)
        client.reset_channel(1, "connection lost")
        self.assertEqual(sent(client), [])
        self.assertEqual(events(client), [])

    def test_nothingReceivedAfterLost(self):
        """Bytes that come after the connection is lost are not acted on."""
        server, client = pair()
        accepted(client)
        client.connection_lost()
        events(client)
        receive(client, data(1, b"late"), frames.encode(PING, 0, b"\0" * 8))
        self.assertEqual((sent(client), events(client)), ([], []))

    def test_failOnlyOnce(self):
        """A second failure, or a close, on a closed link sends nothing more."""
        server, client = pair()
        server.fail("first")
        self.assertGoaway(server, GOAWAY_CLOSING, "first")
        self.assertEqual(events(server), [CloseLink("first", True, False)])
        server.fail("second")
        server.close("third")
        self.assertEqual((sent(server), events(server)), ([], []))

    def test_nothingSentAfterClose(self):
        """Once the link closed (its GOAWAY is the last frame), nothing more is queued to send."""
        server, client = pair()
        accepted(client)
        receive(client, frames.open_channel(2, WINDOW_SIZE, "h", 1))
        client.local_full(1, True)
        receive(client, data(1, b"x" * 10))
        client.delivered()
        client.fail("stopping")
        client.data_to_send()
        before = client.meter.send_bytes
        client.send_data(1, b"late")
        client.local_full(1, False)  # credit due
        client.accept_channel(2)
        client.end_channel(1)
        client.tick(T0 + PING_INTERVAL)
        self.assertEqual(sent(client), [])
        self.assertEqual(client.meter.send_bytes, before)

    def test_close(self):
        """close() says why in a GOAWAY, and is no error."""
        server, client = pair()
        server.close("server stopping")
        self.assertGoaway(server, GOAWAY_CLOSING, "server stopping")
        self.assertEqual(events(server), [CloseLink("server stopping", False, False)])


class Side:
    """
    One Connection with stand-ins for its channels' local sockets: what
    was written to them, which are paused, which had their write side
    ended; and every event seen.
    """

    def __init__(self, conn):
        self.conn = conn
        self.received = {}  # channel id -> bytes written to its local socket
        self.paused = set()
        self.ended = set()
        self.events = []

    def apply(self):
        """Act on the Connection's events as the Twisted adapter would."""
        new = events(self.conn)
        for event in new:
            if isinstance(event, DataReceived):
                self.received[event.channel_id] = self.received.get(event.channel_id, b"") + event.data
            elif isinstance(event, PauseReading):
                self.paused.add(event.channel_id)
            elif isinstance(event, ResumeReading):
                self.paused.discard(event.channel_id)
            elif isinstance(event, ChannelEnded):
                self.ended.add(event.channel_id)
        if any(isinstance(e, DataReceived) for e in new):
            self.conn.delivered()
        self.events.extend(new)


def shuttle(a, b):
    """Move bytes between two Sides, applying events, until neither has more to say."""
    for _ in range(1000):
        a.apply()
        b.apply()
        if not (move(a.conn, b.conn) | move(b.conn, a.conn)):
            return
    raise AssertionError("the two ends never went quiet")


class EndToEndTests(LinkCase):
    """Two connections back to back carry a channel both ways with flow control."""

    def setUp(self):
        server, client = pair()
        self.a, self.b = Side(server), Side(client)
        self.cid = server.open_channel("target", 80)
        shuttle(self.a, self.b)
        self.assertEqual(self.b.events, [OpenRequested(self.cid, "target", 80)])
        client.accept_channel(self.cid)
        shuttle(self.a, self.b)
        self.assertEqual(self.a.events, [ChannelOpened(self.cid)])

    def test_bytesBothWays(self):
        """Bytes read on one end are delivered at the other, both ways."""
        self.a.conn.send_data(self.cid, b"ping")
        self.b.conn.send_data(self.cid, b"pong")
        shuttle(self.a, self.b)
        self.assertEqual(self.b.received, {self.cid: b"ping"})
        self.assertEqual(self.a.received, {self.cid: b"pong"})

    def test_stalledReaderHoldsOneWindow(self):
        """A far side that stops writing receives one window; the near side stops reading."""
        self.b.conn.local_full(self.cid, True)  # b's socket buffer is full
        for _ in range(4):
            self.a.conn.send_data(self.cid, b"z" * (WINDOW_SIZE // 2))
            shuttle(self.a, self.b)
        self.assertEqual(len(self.b.received[self.cid]), WINDOW_SIZE)
        self.assertEqual(self.a.paused, {self.cid})

        self.b.conn.local_full(self.cid, False)
        shuttle(self.a, self.b)
        self.assertEqual(len(self.b.received[self.cid]), 2 * WINDOW_SIZE)
        self.assertEqual(self.a.paused, set())

    def test_halfCloseCarried(self):
        """One side's EOF reaches the other as ChannelEnded; the reply still flows."""
        self.a.conn.end_channel(self.cid)
        shuttle(self.a, self.b)
        self.assertEqual(self.b.ended, {self.cid})
        self.b.conn.send_data(self.cid, b"answer")
        self.b.conn.end_channel(self.cid)
        shuttle(self.a, self.b)
        self.assertEqual(self.a.received, {self.cid: b"answer"})
        self.assertEqual(self.a.ended, {self.cid})
        self.assertEqual(self.a.conn.channels[self.cid].state, State.CLOSED)
        self.assertEqual(self.b.conn.channels[self.cid].state, State.CLOSED)

    def test_earlyDataAndFinCarried(self):
        """Data and EOF from the opener before the channel is accepted reach the target after it is."""
        channel_id = self.a.conn.open_channel("target", 81)
        self.a.conn.send_data(channel_id, b"hello")
        self.a.conn.end_channel(channel_id)
        shuttle(self.a, self.b)
        self.assertNotIn(channel_id, self.b.received)
        self.b.conn.accept_channel(channel_id)
        shuttle(self.a, self.b)
        self.assertEqual(self.b.received[channel_id], b"hello")
        self.assertIn(channel_id, self.b.ended)
        self.assertEqual(self.a.conn.channels[channel_id].state, State.SENT_FIN)


class TuningTests(LinkCase):
    """The link measures its round trip and bandwidth and tunes its channels' windows."""

    def setUp(self):
        self.server, self.client = pair()
        self.cid = accepted(self.client)
        self.client.estimate.rtt = RTT
        self.window = self.client.channels[self.cid].window

    def test_fastWindowGrows(self):
        """A whole window taken in within two round trips is credited back with the growth."""
        receive(self.client, data(1, b"x" * WINDOW_SIZE))
        self.client.delivered()
        self.assertEqual(credits(self.client), [WINDOW_GROWTH * WINDOW_SIZE])
        self.assertEqual(self.window.size, WINDOW_GROWTH * WINDOW_SIZE)

    def test_idleWindowShrinksOnTicks(self):
        """A grown window with no data over a keepalive interval shrinks back on the ticks."""
        receive(self.client, data(1, b"x" * WINDOW_SIZE))
        self.client.delivered()
        self.client.data_to_send()
        for n in (1, 2):
            self.client.tick(T0 + n * PING_INTERVAL)
        self.assertEqual(self.window.size, WINDOW_SIZE)
        extra = (WINDOW_GROWTH - 1) * WINDOW_SIZE
        receive(self.client, data(1, b"x" * extra), now=T0 + 21)
        self.client.delivered()
        self.assertEqual(credits(self.client), [])
        self.assertUp(self.client)

    def test_bandwidthFromDataAndFadesOnTicks(self):
        """DATA is timed as it arrives; each keepalive tick halves what an earlier interval measured."""
        chunk = 64 * 1024
        for i in range(8):
            receive(self.client, data(1, b"x" * chunk), now=T0 + i * 0.0001)
            self.client.delivered()
        measured = self.client.estimate.bandwidth()
        self.assertAlmostEqual(measured / (7 * chunk / 0.0007), 1.0, places=6)
        self.client.tick(T0 + PING_INTERVAL)
        self.assertEqual(self.client.estimate.bandwidth(), measured)
        self.client.tick(T0 + 2 * PING_INTERVAL)
        self.assertEqual(self.client.estimate.bandwidth(), measured / 2)

    def newChannel(self, early):
        """A channel on a fresh client with an RTT, opened with ``early`` early data chunks."""
        server, client = pair(window=4 * EARLY_DATA, max_window=64 * EARLY_DATA)
        client.estimate.rtt = RTT
        receive(client, frames.open_channel(1, WINDOW_SIZE, "h", 1), *[data(1, c) for c in early])
        events(client)
        client.accept_channel(1)
        return client

    def test_fullEarlyDataGrowsWindowAtOnce(self):
        """An opener that sent all the early data it may was held back already: the window grows at once."""
        client = self.newChannel([b"x" * (EARLY_DATA // 2)] * 2)
        grow = (WINDOW_GROWTH - 1) * 4 * EARLY_DATA
        self.assertEqual(sent(client), [(OPEN_OK, 1, u32(4 * EARLY_DATA)), (WINDOW, 1, u32(grow))])
        window = client.channels[1].window
        self.assertEqual(window.size, WINDOW_GROWTH * 4 * EARLY_DATA)
        self.assertEqual(window.allowed, window.size - EARLY_DATA)

    def test_partialEarlyDataKeepsWindow(self):
        """Early data short of the allowance says nothing of the window: it stays."""
        client = self.newChannel([b"x" * (EARLY_DATA - 1)])
        self.assertEqual(sent(client), [(OPEN_OK, 1, u32(4 * EARLY_DATA))])
        self.assertEqual(client.channels[1].window.size, 4 * EARLY_DATA)


class MeterTests(SynchronousTestCase):
    """The link counts the bytes it receives and sends."""

    def test_bytesCounted(self):
        """Every byte in and out is counted, DATA headers included."""
        server, client = pair()
        server.meter.recv_bytes = server.meter.send_bytes = 0
        channel_id = opened(server)
        server.meter.send_bytes = 0
        server.send_data(channel_id, b"abc")
        receive(server, data(channel_id, b"hello"))
        self.assertEqual(server.meter.send_bytes, frames.HEADER_SIZE + 3)
        self.assertEqual(server.meter.recv_bytes,
                         len(frames.open_ok(1, WINDOW_SIZE)) + frames.HEADER_SIZE + 5)


class PreambleTests(SynchronousTestCase):
    def test_preambleCarriedToAcceptor(self):
        """A preamble given to open_channel reaches the acceptor's OpenRequested, byte for byte."""
        server, client = pair()
        channel_id = server.open_channel("target", 80, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
        receive(client, b"".join(server.data_to_send()))
        self.assertEqual(events(client), [OpenRequested(
            channel_id, "target", 80, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")])

    def test_openAfterPeerDrainingIsProtocolError(self):
        """An OPEN after the opener announced it drains ends the link."""
        server, client = pair()
        receive(client, frames.goaway(frames.GOAWAY_DRAINING, "stopping"))
        events(client)
        receive(client, frames.open_channel(1, WINDOW_SIZE, "target", 80))
        self.assertTrue(client.protocol_error)
        self.assertIn("after GOAWAY draining", events(client)[-1].reason)

    def test_windowBeforeOpenOkIsProtocolError(self):
        """A WINDOW for a channel the peer has not confirmed yet ends the link."""
        server, client = pair()
        server.open_channel("target", 80)
        server.data_to_send()
        receive(server, frames.window_update(1, 1024))
        self.assertTrue(server.protocol_error)
        self.assertIn("before its OPEN_OK", events(server)[-1].reason)

    def test_refusalFitsTheHandshakeLimit(self):
        """A REFUSE with a long reason is cut to what the peer accepts before the handshake."""
        server = Connection(SERVER, 0.0)
        server.start()
        server.data_to_send()
        server.refuse("x" * 5000)
        [(ftype, _, payload)] = decode(b"".join(server.data_to_send()))
        self.assertLessEqual(len(payload), HANDSHAKE_MAX_CONTROL)
