"""
Helpers for unit tests that drive links over ``StringTransport``s: read back
the frames a link wrote, and move bytes between two links.
"""

from portmapper.protocol.frames import DATA, FrameDecoder


def written(link):
    """
    The frames ``link`` wrote since the last call, as (type, channel,
    payload); each DATA frame is one entry.
    """
    out = []
    decoder = FrameDecoder(lambda *f: out.append(f), lambda c, d: out.append((DATA, c, bytes(d))))
    decoder.feed(link.transport.value())
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
