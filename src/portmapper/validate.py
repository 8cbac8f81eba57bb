"""
The one home of the rules for values a user gives: tags, names, hosts,
addresses, ports, port lists and network lists.

The client's config, the server's config, the admin API and the link's
handshake all check these values with the functions here, so a value one of
them accepts is a value every other one accepts too.  Each checker takes
text and returns the value (normalised where that is said), or raises
``ValueError`` whose message is a short reason, ``"must be ..."``, without
the value's name: the caller knows what the value is called (an option, a
query parameter) and says so.  Every rule is ASCII-only: ``int()`` and
``str.isalnum()`` alone would take ``"١"`` or ``"é"``, which no other part
(nor DNS) would.

Pure Python: no Twisted, nothing that blocks.
"""

import ipaddress
import re

# -- tags ----------------------------------------------------------------------

#: A tag: 1 to 64 ASCII letters, digits, ``_``, ``.``, ``:`` or ``-``; match
#: it with ``fullmatch`` (``match`` with ``$`` would take a trailing newline).
TAG_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
TAG_RULE = "1 to 64 ASCII letters, digits or any of '_.:-'"


def is_tag(text):
    """Whether ``text`` is a tag."""
    return isinstance(text, str) and TAG_PATTERN.fullmatch(text) is not None


def tag(text):
    """``text`` if it is a tag."""
    if not is_tag(text):
        raise ValueError(f"must be {TAG_RULE}")
    return text


# -- names (of credentials) ------------------------------------------------------

NAME_PATTERN = re.compile(r"[ -~]{1,64}")
NAME_RULE = "1 to 64 printable ASCII characters"


def name(text):
    """``text`` if it is a name: 1 to 64 printable ASCII characters (spaces too)."""
    if NAME_PATTERN.fullmatch(text) is None:
        raise ValueError(f"must be {NAME_RULE}")
    return text


# -- whole numbers and ports ---------------------------------------------------

_DIGITS = re.compile(r"[0-9]{1,19}")  # not '+1', ' 1', '1_0', '1.0' nor '١'
PORT_RULE = "an integer from 1 to 65535"


def integer(text, low, high):
    """``text``, ASCII digits only, as an int from ``low`` to ``high`` (below 10**19)."""
    if _DIGITS.fullmatch(text) is None or not low <= int(text) <= high:
        raise ValueError(f"must be an integer from {low} to {high}")
    return int(text)


def port(text, allow_zero=False):
    """``text`` as a port: 1 to 65535, or 0 too ("any free port") with ``allow_zero``."""
    return integer(text, 0 if allow_zero else 1, 65535)


def port_ranges(text):
    """
    ``"22,80,8000-8099"`` as ``[(22, 22), (80, 80), (8000, 8099)]``: ports and
    inclusive ranges, separated by commas, no spaces.
    """
    ranges = []
    for part in text.split(","):
        low, dash, high = part.partition("-")
        try:
            low = port(low)
            high = port(high) if dash else low
        except ValueError as e:
            raise ValueError(f"port {part!r} {e}") from None
        if low > high:
            raise ValueError(f"port range {part!r} is backwards")
        ranges.append((low, high))
    return ranges


# -- hosts, addresses, networks -------------------------------------------------

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
HOST_RULE = "an IP address or a host name"
ADDRESS_RULE = "an IP address"


def address(text):
    """``text`` as an IPv4 or IPv6 address, normalised (``"::0001"`` -> ``"::1"``)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"must be {ADDRESS_RULE}") from None


def is_host_name(text):
    """
    Whether ``text`` is a host name (RFC 1123): dot-separated labels of 1 to
    63 ASCII letters, digits or hyphens, no hyphen at either end, 253
    characters at most, perhaps a final dot.  The last label is not all
    digits, so a mistyped address such as ``10.0.0.300`` is not a name.
    """
    name = text[:-1] if text.endswith(".") else text
    labels = name.split(".")
    return (len(name) <= 253
            and all(_HOST_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit())


def host(text):
    """``text`` as an IP address (normalised) or a host name (as given)."""
    try:
        return address(text)
    except ValueError:
        pass
    if not is_host_name(text):
        raise ValueError(f"must be {HOST_RULE}")
    return text


NETWORK_RULE = "an IP network such as 10.0.0.0/8 or fd00::/8, or an address"


def network(text):
    """
    ``text`` as an ``ip_network``; an address alone is a network of one.
    Host bits may be set: ``10.1.2.3/8`` is ``10.0.0.0/8`` (the network's
    normal form is what callers show back, so the reading is never hidden).
    """
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"must be {NETWORK_RULE}") from None


NETWORKS_RULE = "comma-separated IP networks such as 10.0.0.0/8,127.0.0.5/32"


def networks(text):
    """``"10.0.0.0/8,127.0.0.5/32"`` as a tuple of ``ip_network`` (see :func:`network`)."""
    found = []
    for part in text.split(","):
        try:
            found.append(network(part))
        except ValueError:
            raise ValueError(f"must be {NETWORKS_RULE}; {part!r} is not a network") from None
    return tuple(found)
