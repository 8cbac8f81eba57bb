"""
Tests that ``docs/protocol.rst`` says what the code does: its frame types,
codes, limits and constants are the code's, its rules for the channel of each
frame hold, its formulas give the code's results, and its worked example is
byte for byte what two link cores send each other.  A change to either side
that is not made to the other fails here.
"""

import hashlib
import hmac
import os
import re
import struct

from twisted.trial.unittest import SynchronousTestCase

from portmapper.protocol import auth, connection, frames, windows
from portmapper.protocol.connection import CLIENT, SERVER, Connection
from portmapper.validate import is_tag
from tests.test_docs import ROOT

DOC_PATH = os.path.join(ROOT, "docs", "protocol.rst")

# The constants the doc's table must list, each with the module that owns it.
CONSTANTS = {
    "PROTOCOL_VERSION": frames, "HEADER_SIZE": frames, "MAX_DATA": frames,
    "MAX_CONTROL": frames, "PING_SIZE": frames, "MAX_CHANNEL_ID": frames,
    "MAX_CREDIT": frames, "NONCE_SIZE": auth, "HANDSHAKE_MAX_CONTROL": connection,
    "HANDSHAKE_TIMEOUT": connection, "PING_INTERVAL": connection,
    "PING_TIMEOUT": connection, "MAX_CONTROL_BACKLOG": connection,
    "EARLY_DATA": windows, "DEFAULT_WINDOW": windows, "MAX_WINDOW": windows,
    "WINDOW_GROWTH": windows, "MAX_CREDIT_BATCH": windows, "TRAIN_GAP": windows,
    "TRAIN_MIN": windows,
}
UNITS = {None: 1, "KiB": 1024, "MiB": 1024 * 1024}


def read_doc():
    with open(DOC_PATH, encoding="utf-8") as f:
        return f.read()


def tables(text):
    """
    The reST simple tables in ``text``, as lists of rows (the header row
    first), each a list of stripped cells.  A row whose first cell is empty
    continues the row above.
    """
    rule = re.compile(r"^ *=+( +=+)+ *$")  # two columns at least: not a title's line
    lines = text.splitlines()
    found = []
    i = 0
    while i < len(lines):
        if not rule.match(lines[i]):
            i += 1
            continue
        spans = [m.span() for m in re.finditer(r"=+", lines[i])]
        rows, rules, i = [], 1, i + 1
        while i < len(lines) and rules < 3:
            line = lines[i]
            i += 1
            if rule.match(line):
                rules += 1
                continue
            if not line.strip():
                continue
            bounds = [start for start, _ in spans] + [None]
            cells = [line[bounds[k]:bounds[k + 1]].strip() for k in range(len(spans))]
            if rows and not cells[0]:
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
            else:
                rows.append(cells)
        found.append(rows)
    return found


def table_with(text, header):
    """The one table whose header row starts with the cells ``header``."""
    matches = [t for t in tables(text) if t[0][:len(header)] == header]
    if len(matches) != 1:
        raise AssertionError(f"{len(matches)} tables start with {header}")
    return matches[0][1:]


def number(text):
    return float(text) if "." in text else int(text)


def handshake(now=0.0):
    """A server and a client core, established, with nothing left to read."""
    server = Connection(SERVER, now, token="secret", nonce=bytes(32))
    client = Connection(CLIENT, now, token="secret", tag="office")
    server.start()
    move(server, client, now)
    move(client, server, now)
    server.events()
    server.accept(1)
    move(server, client, now)
    move(client, server, now)
    move(server, client, now)
    server.events()
    client.events()
    return server, client


def move(src, dst, now):
    """Hand everything ``src`` has to send to ``dst``; return it as frames."""
    raw = b"".join(bytes(chunk) for chunk in src.data_to_send())
    if raw:
        dst.receive_data(raw, now)
    out, pos = [], 0
    while pos < len(raw):
        length = frames.HEADER.unpack_from(raw, pos)[2]
        out.append(raw[pos:pos + frames.HEADER_SIZE + length])
        pos += frames.HEADER_SIZE + length
    return out


class NumbersTests(SynchronousTestCase):
    """The doc's tables and numbers are the code's."""

    def setUp(self):
        self.doc = read_doc()

    def test_version(self):
        """The title names the protocol version the code speaks."""
        self.assertIn(f"protocol version {frames.PROTOCOL_VERSION}\n", self.doc.split("\n\n")[0])

    def test_frameTypes(self):
        """The frame type table has every type, by the code's number and name."""
        rows = table_with(self.doc, ["type", "name", "channel"])
        self.assertEqual({int(row[0]): row[1] for row in rows}, frames.NAMES)

    def test_constantsTable(self):
        """Every constant is in the doc's table, with the code's value."""
        rows = table_with(self.doc, ["name", "value"])
        stated = {row[0]: number(row[1]) for row in rows}
        self.assertEqual(set(stated), set(CONSTANTS))
        for name, module in CONSTANTS.items():
            self.assertEqual(stated[name], getattr(module, name), name)

    def test_constantsInProse(self):
        """A number right before a constant's ``NAME`` in the text is its value."""
        checked = set()
        pattern = re.compile(r"(\d[\d.]*)(?: (KiB|MiB))?\b[^\d`]{0,40}``([A-Z_]+)``")
        for m in pattern.finditer(self.doc):
            value, unit, name = m.groups()
            if name in CONSTANTS:
                self.assertEqual(number(value) * UNITS[unit], getattr(CONSTANTS[name], name),
                                 m.group(0))
                checked.add(name)
        self.assertTrue({"MAX_DATA", "MAX_CONTROL", "HANDSHAKE_MAX_CONTROL", "EARLY_DATA",
                         "MAX_CREDIT", "MAX_CREDIT_BATCH", "TRAIN_GAP", "TRAIN_MIN",
                         "PING_SIZE", "PING_INTERVAL", "PING_TIMEOUT", "HANDSHAKE_TIMEOUT",
                         "MAX_CONTROL_BACKLOG"} <= checked, checked)

    def codes(self, first):
        """The code table whose first row is named ``first``, as {name: code}."""
        matches = [t for t in tables(self.doc)
                   if t[0] == ["code", "name", "meaning"] and t[1][1] == first]
        self.assertEqual(len(matches), 1, first)
        return {row[1]: int(row[0]) for row in matches[0][1:]}

    def test_openFailCodes(self):
        """The OPEN_FAIL code table is the code's."""
        self.assertEqual(self.codes("refused"), {
            "refused": frames.FAIL_REFUSED, "timed out": frames.FAIL_TIMEOUT,
            "not allowed": frames.FAIL_DENIED, "draining": frames.FAIL_DRAINING})

    def test_goawayCodes(self):
        """The GOAWAY code table is the code's."""
        self.assertEqual(self.codes("closing"), {
            "closing": frames.GOAWAY_CLOSING, "draining": frames.GOAWAY_DRAINING})

    def test_creditBatch(self):
        """The doc's batch formula gives the code's batch sizes."""
        self.assertIn("``max(1, min(size // 4, %d))``" % windows.MAX_CREDIT_BATCH, self.doc)
        for size in (1, 3, 16384, 262144, 4 * windows.MAX_CREDIT_BATCH, 2**32 - 1):
            self.assertEqual(windows.credit_batch(size),
                             max(1, min(size // 4, windows.MAX_CREDIT_BATCH)))

    def test_rttSmoothing(self):
        """The doc's RTT smoothing weights are the ones the code applies."""
        old, new = map(float, re.search(
            r"``rtt = ([\d.]+) \* rtt \+ ([\d.]+) \* sample``", self.doc).groups())
        estimate = windows.LinkEstimate()
        estimate.round_trip(1.0)
        estimate.round_trip(3.0)
        self.assertAlmostEqual(estimate.rtt, old * 1.0 + new * 3.0)

    def test_tagRule(self):
        """The tag rule's length bounds and characters are the ones the server enforces."""
        low, high = map(int, re.search(r"The tag rule: (\d+) to (\d+) characters",
                                       self.doc).groups())
        self.assertTrue(is_tag("a" * low) and is_tag("a" * high) and is_tag("AZaz09_.:-"))
        for bad in ("a" * (low - 1), "a" * (high + 1), "a b", "a/b", "\u00e9"):
            self.assertFalse(is_tag(bad), bad)

    def test_proof(self):
        """The proof as the doc spells it is the proof the code computes."""
        context = re.search(r'message = "([^"]+)" \|\| nonce \|\| tag', self.doc).group(1)
        nonce = bytes(range(auth.NONCE_SIZE))
        mac = hmac.new(b"secret", context.encode("ascii") + nonce + b"office", hashlib.sha256)
        self.assertEqual(auth.proof("secret", nonce, "office"), mac.digest())
        self.assertEqual(len(mac.digest()), frames.PROOF_SIZES[frames.AUTH_SHARED_TOKEN])


    def test_credentialProof(self):
        """Method 1 as the doc spells it (token form, signed message, sizes) is what the code does."""
        context = re.search(r'signed = "([^"]+)" \|\| nonce \|\| tag', self.doc).group(1)
        length = int(re.search(r"(\d+) characters in all", self.doc).group(1))
        token, public_key = auth.new_credential()
        self.assertEqual(len(token), length)
        self.assertTrue(token.startswith("pmc_") and "``pmc_``" in self.doc)
        nonce = bytes(range(auth.NONCE_SIZE))
        proof = auth.credential_proof(token, nonce, "office")
        self.assertEqual(len(proof), frames.PROOF_SIZES[frames.AUTH_CREDENTIAL])
        self.assertIn("``1`` *credential*, P = %d" % len(proof), " ".join(self.doc.split()))
        self.assertEqual(proof[:32], public_key)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            proof[32:], context.encode("ascii") + nonce + b"office")  # raises if not


class ChannelRuleTests(SynchronousTestCase):
    """The frame table's channel column is the rule the code enforces."""

    def test_wrongChannelIsProtocolError(self):
        """Each type on the kind of channel the table does not give it ends the link."""
        rows = table_with(read_doc(), ["type", "name", "channel"])
        for row in rows:
            ftype = int(row[0])
            self.assertIn(row[2], ("0", "non-zero"))
            wrong = 1 if row[2] == "0" else 0
            for receiver in handshake():
                receiver.receive_data(frames.encode(ftype, wrong, b"x" * 8), 1.0)
                self.assertTrue(receiver.protocol_error, (row[1], receiver.role))


class WorkedExampleTests(SynchronousTestCase):
    """The doc's worked example is what two link cores send each other."""

    def test_example(self):
        """Every frame of the exchange appears in the example, in hex."""
        doc = read_doc()
        example = doc[doc.index("\nWorked example\n"):doc.index("\nConstants\n")]
        hexes = re.sub(r"\s+", "", example)
        start = 1700000000.25
        server = Connection(SERVER, start, token="secret", nonce=bytes(range(32)))
        client = Connection(CLIENT, start, token="secret", tag="office")
        sent = []
        server.start()
        sent += move(server, client, start)  # HELLO
        sent += move(client, server, start)  # AUTH
        [request] = server.events()
        self.assertEqual(request.tag, "office")
        server.accept(7)
        sent += move(server, client, start)  # WELCOME, PING
        sent += move(client, server, start + 0.01)  # PING, PONG
        sent += move(server, client, start + 0.02)  # PONG
        channel_id = server.open_channel("10.0.0.5", 80)
        server.send_data(channel_id, b"GET / HTTP/1.0\r\n\r\n")
        server.end_channel(channel_id)
        sent += move(server, client, start + 1)  # OPEN, DATA, FIN
        client.accept_channel(channel_id)
        client.send_data(channel_id, b"r" * 70000)
        sent += move(client, server, start + 1.01)  # OPEN_OK, DATA
        server.delivered()
        sent += move(server, client, start + 1.02)  # WINDOW
        client.end_channel(channel_id)
        sent += move(client, server, start + 1.03)  # FIN
        self.assertEqual(
            [frames.NAMES[frame[0]] for frame in sent],
            ["HELLO", "AUTH", "WELCOME", "PING", "PING", "PONG", "PONG", "OPEN", "DATA", "FIN",
             "OPEN_OK", "DATA", "WINDOW", "FIN"])
        for frame in sent:
            shown = frame if len(frame) <= frames.HEADER_SIZE + 64 else frame[:frames.HEADER_SIZE]
            self.assertIn(shown.hex(), hexes, frames.NAMES[frame[0]])
        self.assertIn(struct.pack(">d", start).hex(), hexes)
        # Both FINs crossed: closing the sockets sends nothing more.
        server.reset_channel(channel_id, "closed")
        client.reset_channel(channel_id, "closed")
        self.assertFalse(server.data_to_send())
        self.assertFalse(client.data_to_send())
