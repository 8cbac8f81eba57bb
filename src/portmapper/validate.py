"""
The one home of the rules for values a user gives: tags, names, hosts,
addresses, ports, port lists, network lists and the policies of a port mapping.

The client's config, the server's config, the admin API (mapping
policies included) and the link's handshake all check these values with the functions here, so a value one of
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


#: The most networks one allow-list may hold: it is checked at every accept.
MAX_NETWORKS = 64


def allow_list(text):
    """``text`` as :func:`networks`, at most :data:`MAX_NETWORKS` of them."""
    found = networks(text)
    if len(found) > MAX_NETWORKS:
        raise ValueError(f"must be at most {MAX_NETWORKS} networks, not {len(found)}")
    return found


# -- mapping policies ---------------------------------------------------------

def _one_of(choices):
    """A checker of text that must be one of ``choices``, and its rule ("a or b")."""
    rule = " or ".join(choices)

    def check(text):
        if text not in choices:
            raise ValueError(f"must be {rule}")
        return text
    return check, rule


#: A PROXY protocol version: ``"v1"`` (text) or ``"v2"`` (binary).
proxy_protocol, PROXY_PROTOCOL_RULE = _one_of(("v1", "v2"))


MAX_CHANNELS = 1_000_000
MAX_CHANNELS_RULE = f"an integer from 1 to {MAX_CHANNELS}"


def max_channels(text):
    """``text`` as a number of channels open at once: 1 to :data:`MAX_CHANNELS`."""
    return integer(text, 1, MAX_CHANNELS)


_DECIMAL = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")  # ASCII only, no sign, no exponent
MAX_RATE = 100_000  # MB/s
RATE_RULE = f"a number of MB/s above 0 and at most {MAX_RATE}, such as 5 or 0.5"


def rate(text):
    """``text`` as MB/s: a decimal number above 0 and at most :data:`MAX_RATE`."""
    if _DECIMAL.fullmatch(text) is None or not 0 < float(text) <= MAX_RATE:
        raise ValueError(f"must be {RATE_RULE}")
    return float(text)


#: How a new channel picks its client: ``"round_robin"`` or ``"least_channels"``.
balance, BALANCE_RULE = _one_of(("round_robin", "least_channels"))


#: A mapping's optional policies: name -> (parse text, what it must be).
POLICIES = {
    "allow": (allow_list, f"{NETWORKS_RULE}, at most {MAX_NETWORKS}"),
    "proxy_protocol": (proxy_protocol, PROXY_PROTOCOL_RULE),
    "max_channels": (max_channels, MAX_CHANNELS_RULE),
    "rate_limit": (rate, RATE_RULE),
    "balance": (balance, BALANCE_RULE),
}


def policy_text(name, value):
    """A parsed policy ``value`` as the text :data:`POLICIES` parses back to it."""
    if name == "allow":
        return ",".join(str(n) for n in value)
    if name == "rate_limit":
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)
