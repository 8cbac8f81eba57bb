"""
Helpers for unit tests of the tunnel link: read back the frames a link
wrote (a ``LinkProtocol`` on a ``StringTransport``, or a sans-IO
``Connection``), and move bytes between two links.
"""

from portmapper.protocol.frames import DATA, FrameDecoder


def decode(data):
    """
    The frames in ``data`` (whole frames only), as (type, channel, payload);
    each DATA frame is one entry.
    """
    out = []
    decoder = FrameDecoder(lambda *f: out.append(f), lambda c, d: out.append((DATA, c, bytes(d))))
    decoder.feed(data)
    return out


def written(link):
    """
    The frames ``link`` wrote since the last call, as (type, channel,
    payload); each DATA frame is one entry.  ``link`` is a protocol on a
    ``StringTransport`` (whose buffer this clears) or a ``Connection``
    (whose ``data_to_send()`` this empties).
    """
    if hasattr(link, "data_to_send"):
        return decode(b"".join(link.data_to_send()))
    out = decode(link.transport.value())
    link.transport.clear()
    return out


def pump(a, b):
    """Move bytes between two links' transports until neither has more to say."""
    while a.transport.value() or b.transport.value():
        for src, dst in ((a, b), (b, a)):
            data = src.transport.value()
            src.transport.clear()
            if data:
                dst.dataReceived(data)
