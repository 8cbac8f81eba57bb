"""
Tests for L{portmapper.validate}: the one tag, host, address, port, port
list and network rules the config, the admin API and the link share.
"""

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from portmapper import validate

# Not tags: a space, only a space, a snowman, accented letters, a NUL, a
# newline at the end, other punctuation, too long, empty.
NOT_TAGS = ["a b", " ", "\u2603", "\u00e9t\u00e9", "\x00", "%00", "lab\n", "slash/",
            "semi;colon", "a" * 65, ""]


class TagTests(SynchronousTestCase):
    def test_tags(self):
        """1 to 64 ASCII letters, digits and '_.:-' are tags, returned as given."""
        for text in ("default", "a", "a" * 64, "Lab-1.a:b_c", "0", "-", "..."):
            self.assertTrue(validate.is_tag(text), text)
            self.assertEqual(validate.tag(text), text)

    def test_not_tags(self):
        """Spaces, non-ASCII letters, control characters and 65 characters are not tags."""
        for text in NOT_TAGS:
            self.assertFalse(validate.is_tag(text), repr(text))
            error = self.assertRaises(ValueError, validate.tag, text)
            self.assertEqual(str(error), "must be " + validate.TAG_RULE)

    def test_not_text(self):
        """Bytes and None are not tags (the link asks is_tag of what it decoded)."""
        self.assertFalse(validate.is_tag(b"default"))
        self.assertFalse(validate.is_tag(None))

    def test_pattern_is_the_rule(self):
        """The exported pattern, used with fullmatch, agrees with is_tag."""
        for text in NOT_TAGS + ["default", "a" * 64]:
            self.assertEqual(validate.TAG_PATTERN.fullmatch(text) is not None,
                             validate.is_tag(text), repr(text))


class IntegerTests(SynchronousTestCase):
    def test_ports(self):
        """1 to 65535 are ports; 0 only when allowed."""
        self.assertEqual(validate.port("1"), 1)
        self.assertEqual(validate.port("65535"), 65535)
        self.assertEqual(validate.port("0", allow_zero=True), 0)
        self.assertEqual(validate.port("08080"), 8080)
        self.assertRaises(ValueError, validate.port, "0")

    def test_not_ports(self):
        """Anything but ASCII digits in range is refused with the rule."""
        for text in ("", "65536", "-1", "+22", " 22", "22 ", "2_2", "5.0", "0x16",
                     "\u0662\u0662", "\u00b2", "9" * 30):
            error = self.assertRaises(ValueError, validate.port, text)
            self.assertEqual(str(error), "must be " + validate.PORT_RULE)
        error = self.assertRaises(ValueError, validate.port, "x", allow_zero=True)
        self.assertEqual(str(error), "must be an integer from 0 to 65535")

    def test_integer_bounds(self):
        """integer() keeps to its bounds, both inclusive, and says them."""
        self.assertEqual(validate.integer("7", 7, 7), 7)
        self.assertEqual(validate.integer(str(2**63 - 1), 1, 2**63 - 1), 2**63 - 1)
        error = self.assertRaises(ValueError, validate.integer, "8", 1, 7)
        self.assertEqual(str(error), "must be an integer from 1 to 7")


class PortRangeTests(SynchronousTestCase):
    def test_ranges(self):
        """Ports and inclusive ranges, comma-separated, in the order given."""
        self.assertEqual(validate.port_ranges("22,80,8000-8099,9-9"),
                         [(22, 22), (80, 80), (8000, 8099), (9, 9)])

    def test_bad_ranges(self):
        """A bad port, an open or backwards range, an empty item are refused, naming the part."""
        for text, part in [("70000", "70000"), ("22,", "''"), ("80-", "80-"), ("-80", "-80"),
                           ("90-80", "90-80"), ("1-2-3", "1-2-3"), ("22, 80", " 80"), ("", "''")]:
            error = self.assertRaises(ValueError, validate.port_ranges, text)
            self.assertIn(part, str(error))


class HostTests(SynchronousTestCase):
    def test_addresses(self):
        """IPv4 and IPv6 addresses are hosts, in their normal form."""
        for text, normal in [("10.0.0.1", "10.0.0.1"), ("::0001", "::1"),
                             ("FE80::1", "fe80::1"), ("0:0:0:0:0:0:0:0", "::")]:
            self.assertEqual(validate.host(text), normal)
            self.assertEqual(validate.address(text), normal)

    def test_names(self):
        """RFC 1123 host names are hosts, as given (case and final dot kept)."""
        for text in ("localhost", "db-1.internal.example.", "Build-01", "1st.example",
                     "a" * 63 + ".example", "x.y2", ".".join(["a" * 63] * 3) + "." + "a" * 61):
            self.assertEqual(validate.host(text), text)
        self.assertTrue(validate.is_host_name("example.org"))

    def test_not_hosts(self):
        """Numeric last labels (10.0.0.300), bad labels, non-ASCII and overlong names are refused."""
        for text in ("10.0.0.300", "1.2.3", "300", "example.123", "bad_host", "-a.com", "a-.com",
                     "a..b", ".", "", "a" * 64 + ".com", "h\u00e9.com", "a b",
                     ".".join(["a" * 63] * 4), "10.0.0.0/8"):
            self.assertFalse(validate.is_host_name(text), text)
            error = self.assertRaises(ValueError, validate.host, text)
            self.assertEqual(str(error), "must be " + validate.HOST_RULE)

    def test_not_addresses(self):
        """Names and networks are not addresses."""
        for text in ("localhost", "300.1.1.1", "0.0.0.0/0", "", "10.0.0.300"):
            error = self.assertRaises(ValueError, validate.address, text)
            self.assertEqual(str(error), "must be " + validate.ADDRESS_RULE)


class NetworkTests(SynchronousTestCase):
    def test_networks(self):
        """A comma-separated list of IPv4 and IPv6 networks, addresses as /32 or /128."""
        self.assertEqual(validate.networks("10.0.0.0/8,127.0.0.5/32,fd00::/8,::1"), (
            ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.5/32"),
            ipaddress.ip_network("fd00::/8"), ipaddress.ip_network("::1/128")))

    def test_host_bits(self):
        """A network written with host bits set is the network that holds it."""
        self.assertEqual(validate.network("10.1.2.3/8"), ipaddress.ip_network("10.0.0.0/8"))
        self.assertEqual(validate.networks("192.168.1.7/24"),
                         (ipaddress.ip_network("192.168.1.0/24"),))

    def test_bad_networks(self):
        """Names, bad prefixes, empty items and spaces are refused, naming the part."""
        for text, part in [("example.org", "example.org"), ("10.0.0.0/33", "10.0.0.0/33"),
                           ("10.0.0.0/8,", "''"), ("", "''"), ("10.0.0.0/8, ::1", " ::1"),
                           ("10.0.0.300/32", "10.0.0.300")]:
            error = self.assertRaises(ValueError, validate.networks, text)
            self.assertIn(part, str(error))
            self.assertTrue(str(error).startswith("must be "), str(error))
