"""
TLS on the tunnel link, with the standard library's ``ssl`` module.

The link's endpoints keep Twisted's syntax: the server's client port may be
``ssl:PORT:privateKey=KEY:certKey=CERT[:interface=IP][:backlog=N]`` and the
client dials ``tls:host=H:port=P[:trustRoots=DIR][:timeout=S]``.  This
module parses those descriptions (:func:`parse_server`, :func:`parse_client`);
:mod:`portmapper.transport.endpoints` builds the endpoints, and sends any
other description to Twisted's own ``serverFromString``/``clientFromString``.

Why not Twisted's TLS (``TLSMemoryBIOProtocol`` over pyOpenSSL): on a link
that moves hundreds of MB/s it copied each chunk several times between
Python and OpenSSL (a join, a slice per 16 KiB record, a zero-filled cffi
buffer per read), which cost more than the encryption itself.
:class:`TLSProtocol` does the same job with ``ssl.SSLObject`` on memory BIOs:
the plaintext is encrypted straight from the caller's buffer, decrypted
straight into one reused buffer, and each side of the BIOs is copied once.
The ciphertext goes to the socket through :mod:`portmapper.transport.directwrite`.

:class:`TLSProtocol` wraps the link's protocol and is its transport: the
wrapped protocol is connected at once (so the link's handshake timeout also
covers the TLS handshake) and what it writes before the TLS handshake is
done waits in a list.  A failed handshake or a corrupt record ends the
connection, and the wrapped protocol's ``connectionLost`` gets the TLS error.
"""

import os
import ssl

from twisted.internet.interfaces import IPushProducer, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from portmapper import validate
from portmapper.transport.directwrite import direct_writers
from portmapper.transport.tune import LISTEN_BACKLOG, READ_SIZE, tune_transport

SERVER_OPTIONS = ("port", "interface", "backlog", "privateKey", "certKey")
CLIENT_OPTIONS = ("host", "port", "timeout", "trustRoots")


# -- endpoint descriptions ---------------------------------------------------

def split_description(text):
    """
    ``"kind:a:k=v"`` -> ``("kind", ["a"], {"k": "v"})``, Twisted's syntax: a
    backslash escapes the next character (``\\:`` is a colon in a value).
    """
    parts, current, chars = [], [], iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    args, kwargs = [], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            kwargs[key] = value
        else:
            args.append(part)
    return parts[0], args, kwargs


def _positional(kind, args, kwargs, names):
    """Fold positional arguments into ``kwargs`` by ``names``; refuse unknown keys."""
    if len(args) > len(names):
        raise ValueError(f"Too many positional arguments in the {kind}: description.")
    for name, value in zip(names, args):
        if name in kwargs:
            raise ValueError(f"{name} is given twice in the {kind}: description.")
        kwargs[name] = value
    return kwargs


def _check_known(kind, kwargs, known):
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(f"Unsupported option {unknown[0]!r} in the {kind}: description; "
                         f"it takes {', '.join(known)}.")


def _port(kind, kwargs, allow_zero):
    text = kwargs.get("port")
    if text is None:
        raise ValueError(f"The {kind}: description needs a port.")
    try:
        return validate.port(text, allow_zero)
    except ValueError as e:
        raise ValueError(f"Bad port {text!r} in the {kind}: description; it {e}.") from None


def server_context(cert_path, key_path):
    """A server ``SSLContext`` with the certificate chain and key from these PEM files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"Cannot load the TLS certificate {cert_path!r} and key "
                         f"{key_path!r}: {e}.") from None
    return context


def client_context(trust_dir=None):
    """
    A client ``SSLContext`` that verifies the server's certificate and name:
    against the PEM certificates in ``trust_dir`` if given (as Twisted's
    ``trustRoots``), else against the system's certificate authorities.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks the name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if trust_dir is None:
        context.load_default_certs()
        return context
    try:
        names = sorted(os.listdir(trust_dir))
    except OSError as e:
        raise ValueError(f"Cannot read the trustRoots directory {trust_dir!r}: "
                         f"{e.strerror}.") from None
    loaded = 0
    for name in names:
        path = os.path.join(trust_dir, name)
        if not os.path.isfile(path):
            continue
        try:
            context.load_verify_locations(cafile=path)
            loaded += 1
        except (OSError, ssl.SSLError):
            continue  # not a certificate: Twisted's trustRoots skips those too
    if not loaded:
        raise ValueError(f"The trustRoots directory {trust_dir!r} holds no PEM certificate.")
    return context


def parse_server(text):
    """
    For an ``ssl:`` description: ``(port, interface, backlog, context)``;
    ``None`` for any other kind.  Raises ``ValueError`` with the reason.
    """
    kind, args, kwargs = split_description(text)
    if kind != "ssl":
        return None
    kwargs = _positional(kind, args, kwargs, ("port",))
    _check_known(kind, kwargs, SERVER_OPTIONS)
    port = _port(kind, kwargs, allow_zero=True)
    try:
        backlog = int(kwargs.get("backlog", LISTEN_BACKLOG))
    except ValueError:
        raise ValueError(f"Bad backlog {kwargs['backlog']!r} in the ssl: description.") from None
    if "privateKey" not in kwargs:
        raise ValueError("The ssl: description needs privateKey=PEM file.")
    interface = kwargs.get("interface", "")
    if interface:
        try:
            interface = validate.address(interface)
        except ValueError as e:
            raise ValueError(f"Bad interface {interface!r} in the ssl: description; "
                             f"it {e}.") from None
    key = kwargs["privateKey"]
    context = server_context(kwargs.get("certKey", key), key)
    return port, interface, backlog, context


def parse_client(text):
    """
    For a ``tls:`` description: ``(host, port, timeout, context)``; ``None``
    for any other kind.  Raises ``ValueError`` with the reason.
    """
    kind, args, kwargs = split_description(text)
    if kind != "tls":
        return None
    kwargs = _positional(kind, args, kwargs, ("host", "port"))
    _check_known(kind, kwargs, CLIENT_OPTIONS)
    host = kwargs.get("host")
    if not host:
        raise ValueError("The tls: description needs host=NAME.")
    try:
        host = validate.host(host)
    except ValueError as e:
        raise ValueError(f"Bad host {host!r} in the tls: description; it {e}.") from None
    port = _port(kind, kwargs, allow_zero=False)
    try:
        timeout = float(kwargs.get("timeout", "30"))
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ValueError(f"Bad timeout {kwargs['timeout']!r} in the tls: description.")
    return host, port, timeout, client_context(kwargs.get("trustRoots"))


class TLSServerEndpoint:
    """Listens on ``endpoint`` and runs TLS (server side) on each connection."""

    def __init__(self, endpoint, context):
        self._endpoint = endpoint
        self._context = context

    def listen(self, factory):
        return self._endpoint.listen(TLSFactory(self._context, factory, server_side=True))


class TLSClientEndpoint:
    """Connects with ``endpoint`` and runs TLS (client side), verifying ``hostname``."""

    def __init__(self, endpoint, context, hostname):
        self._endpoint = endpoint
        self._context = context
        self._hostname = hostname

    def connect(self, factory):
        tls_factory = TLSFactory(self._context, factory, server_side=False,
                                 hostname=self._hostname)
        return self._endpoint.connect(tls_factory).addCallback(lambda p: p.wrapped)


class TLSFactory(Factory):
    """Builds the wrapped factory's protocol inside a :class:`TLSProtocol`."""

    def __init__(self, context, wrapped_factory, server_side, hostname=None):
        self.context = context
        self.wrapped_factory = wrapped_factory
        self.server_side = server_side
        self.hostname = hostname

    def doStart(self):
        self.wrapped_factory.doStart()

    def doStop(self):
        self.wrapped_factory.doStop()

    def buildProtocol(self, addr):
        wrapped = self.wrapped_factory.buildProtocol(addr)
        if wrapped is None:
            return None
        return TLSProtocol(self.context, wrapped, self.server_side, self.hostname)


# -- the connection ----------------------------------------------------------

@implementer(ITransport, IPushProducer)
class TLSProtocol(Protocol):
    """
    TLS over ``self.transport`` (a TCP transport) for the ``wrapped``
    protocol, to which this object is the transport.
    """

    def __init__(self, context, wrapped, server_side, hostname=None):
        self.context = context
        self.wrapped = wrapped
        self.server_side = server_side
        self.hostname = None if server_side else hostname
        self.handshake_done = False
        self.disconnecting = False  # loseConnection was called
        self._pending = []  # plaintext written before the handshake was done
        self._error = None  # the TLS error that ended the connection
        self._lost = False
        self._buffer = memoryview(bytearray(READ_SIZE))

    # -- the TCP side -------------------------------------------------------

    def makeConnection(self, transport):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = self.context.wrap_bio(self._incoming, self._outgoing,
                                          server_side=self.server_side,
                                          server_hostname=self.hostname)
        self._send, _ = direct_writers(transport)
        tune_transport(transport)
        super().makeConnection(transport)

    def connectionMade(self):
        self.wrapped.makeConnection(self)
        if not self._lost:
            self._handshake()

    def dataReceived(self, data):
        if self._error is not None or self._lost:
            return
        self._incoming.write(data)
        if not self.handshake_done:
            self._handshake()
        if self.handshake_done:
            self._decrypt()

    def connectionLost(self, reason):
        self._lost = True
        self.wrapped.connectionLost(Failure(self._error) if self._error is not None else reason)

    def _handshake(self):
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError) as e:
            self._fail(e)
            return
        self.handshake_done = True
        pending, self._pending = self._pending, []
        self._encrypt(pending)
        if self.disconnecting:
            self._close()

    def _decrypt(self):
        """Hand the wrapped protocol all the plaintext the received records hold."""
        read, view, size = self._tls.read, self._buffer, len(self._buffer)
        while not (self._lost or self.disconnecting or self._error is not None):
            got = 0
            peer_closed, error = False, None
            try:
                while got < size:
                    n = read(size - got, view[got:])
                    if not n:  # the peer's close_notify: a clean end
                        peer_closed = True
                        break
                    got += n
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:  # the same, as some versions say it
                peer_closed = True
            except ssl.SSLError as e:
                error = e  # a corrupt record: ends the link, after the good plaintext
            if got:
                self.wrapped.dataReceived(bytes(view[:got]))
            if error is not None:
                self._fail(error)
                return
            if peer_closed:
                self.transport.loseConnection()
                return
            if got < size:
                return

    def _flush(self):
        data = self._outgoing.read()
        if data:
            self._send(data)

    def _fail(self, error):
        """End the connection because of a TLS ``error``; the wrapped protocol is told it."""
        if self._error is None:
            self._error = error
            self._flush()  # the alert, if OpenSSL made one
            self.transport.abortConnection()

    def _close(self):
        try:
            self._tls.unwrap()  # our close_notify; we do not wait for the peer's
        except ssl.SSLError:
            pass
        self._flush()
        self.transport.loseConnection()

    def _encrypt(self, chunks):
        """Encrypt ``chunks`` (one record or more each) and send the records."""
        write = self._tls.write
        try:
            for chunk in chunks:
                if chunk:
                    write(chunk)
        except ssl.SSLError as e:
            self._fail(e)
            return
        self._flush()

    # -- the transport the wrapped protocol sees ------------------------------

    def write(self, data):
        self.writeSequence((data,))

    def writeSequence(self, chunks):
        if self.disconnecting or self._error is not None:
            return
        if not self.handshake_done:
            self._pending.extend(chunks)
            return
        self._encrypt(chunks)

    def loseConnection(self):
        if self.disconnecting:
            return
        self.disconnecting = True
        if self._lost or self._error is not None:
            return
        if self.handshake_done:
            self._close()
        # else: _handshake closes once it is done; the link's timeout covers a stall

    def abortConnection(self):
        self.disconnecting = True
        self.transport.abortConnection()

    def getPeer(self):
        return self.transport.getPeer()

    def getHost(self):
        return self.transport.getHost()

    def setTcpNoDelay(self, enabled):
        self.transport.setTcpNoDelay(enabled)

    def registerProducer(self, producer, streaming):
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.transport.unregisterProducer()

    def pauseProducing(self):
        self.transport.pauseProducing()

    def resumeProducing(self):
        self.transport.resumeProducing()

    def stopProducing(self):
        self.transport.stopProducing()
