"""
The PROXY protocol header (HAProxy's proxy-protocol.txt) a mapping with
``proxy_protocol`` sends ahead of the user's bytes, so that the target
learns the user's real address.

:func:`header` builds version 1 (one line of text) or version 2 (binary) for
a TCP connection: the source is the public user, the destination the
server's address and public port it connected to.  The server builds it at
accept and hands it to the client as the OPEN's preamble, which the client
writes to the target before anything else.  Pure Python, no I/O.
"""

import ipaddress
import struct

#: The twelve bytes every version-2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY = 0x21  # version 2, command PROXY
_V2_TCP4 = 0x11  # AF_INET, STREAM
_V2_TCP6 = 0x21  # AF_INET6, STREAM
_PORTS = struct.Struct("!HH")


def _addresses(source_ip, destination_ip):
    """Both addresses in one family: IPv4 (IPv4-mapped IPv6 unmapped) if both
    can be, else both IPv6 (an IPv4 address as IPv4-mapped)."""
    found = []
    for text in (source_ip, destination_ip):
        address = ipaddress.ip_address(text.split("%", 1)[0])  # no zone index
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        found.append(address)
    if found[0].version != found[1].version:
        found = [ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in found]
    return found


def header(version, source, destination):
    """
    The PROXY protocol header, ``version`` ``"v1"`` or ``"v2"``, of a TCP
    connection from ``source`` to ``destination`` (each ``(ip text, port)``).
    """
    (source_port, destination_port) = source[1], destination[1]
    src, dst = _addresses(source[0], destination[0])
    if version == "v1":
        family = "TCP4" if src.version == 4 else "TCP6"
        return (f"PROXY {family} {src.compressed} {dst.compressed}"
                f" {source_port} {destination_port}\r\n").encode("ascii")
    if version == "v2":
        body = src.packed + dst.packed + _PORTS.pack(source_port, destination_port)
        family = _V2_TCP4 if src.version == 4 else _V2_TCP6
        return V2_SIGNATURE + bytes((_V2_PROXY, family)) + struct.pack("!H", len(body)) + body
    raise ValueError(f"PROXY protocol version must be v1 or v2, not {version!r}")
