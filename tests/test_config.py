"""
Tests for L{portmapper.config}: defaults < the C{--config} INI file <
command-line options, every bad value reported as one sentence naming its
key, the server's admin-token rule, and L{AllowList}.
"""

import ipaddress
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from portmapper.client.tap import Options as ClientOptions
from portmapper.config import AllowList, ClientSettings, ServerSettings
from portmapper.protocol.connection import HANDSHAKE_TIMEOUT, PING_INTERVAL, PING_TIMEOUT
from portmapper.protocol.windows import DEFAULT_WINDOW
from portmapper.server.tap import Options as ServerOptions

ROOT = Path(__file__).resolve().parents[1]


def parse(options_class, argv):
    """Parse C{argv} with a new C{options_class}; return the settings built."""
    options = options_class()
    options.parseOptions(argv)
    return options.settings


class ConfigTestCase(SynchronousTestCase):
    def writeConfig(self, text, mode="w"):
        """Write C{text} to a new file and return its path."""
        path = self.mktemp()
        with open(path, mode) as f:
            f.write(text)
        return path

    def assertUsageError(self, options_class, argv, *names):
        """
        Parsing C{argv} fails with one line, one sentence, naming each of
        C{names}; return the message.
        """
        error = self.assertRaises(usage.UsageError, options_class().parseOptions, argv)
        message = str(error)
        for name in names:
            self.assertIn(name, message)
        self.assertNotIn("\n", message)
        self.assertTrue(message.endswith("."), message)
        self.assertFalse(message.endswith(".."), message)
        self.assertTrue(message[:1].isupper(), message)
        return message


class DefaultTests(ConfigTestCase):
    """Without a config file or options, the built-in defaults apply."""

    def test_serverDefaults(self):
        """The server's defaults: client port 1111, admin API on loopback 8080, no tokens."""
        settings = parse(ServerOptions, [])
        self.assertEqual(settings, ServerSettings())
        self.assertEqual(settings.client_port.text, "tcp:1111")
        self.assertEqual(settings.admin, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(settings.public_interface, "0.0.0.0")
        self.assertEqual(settings.data_dir, "portmapper-data")
        self.assertEqual(settings.token, "")
        self.assertIsNone(settings.admin_token)
        self.assertEqual(settings.window, DEFAULT_WINDOW)
        self.assertEqual(settings.ping_interval, PING_INTERVAL)
        self.assertEqual(settings.ping_timeout, PING_TIMEOUT)
        self.assertEqual(settings.handshake_timeout, HANDSHAKE_TIMEOUT)
        self.assertEqual(settings.open_timeout, 15.0)
        self.assertEqual(settings.sample_interval, 1.0)
        self.assertEqual(settings.history_max_rows, 100_000)
        self.assertEqual(settings.history_max_age, 30 * 86400.0)

    def test_clientDefaults(self):
        """The client's defaults: server on loopback 1111, tag 'default', any target allowed."""
        settings = parse(ClientOptions, [])
        self.assertEqual(settings, ClientSettings())
        self.assertEqual(settings.server.text, "tcp:host=127.0.0.1:port=1111")
        self.assertEqual(settings.tag, "default")
        self.assertEqual(settings.token, "")
        self.assertIsNone(settings.allow)
        self.assertEqual(settings.window, DEFAULT_WINDOW)
        self.assertEqual(settings.connect_timeout, 10.0)

    def test_helpShowsDefaults(self):
        """--help lists every option by its dashed name with its default."""
        text = " ".join(ServerOptions().getUsage().split())
        for option in ("--config", "--client-port", "--admin-token", "--history-max-rows",
                       "[default: tcp:1111]", "[default: none]"):
            self.assertIn(option, text)
        text = " ".join(ClientOptions().getUsage().split())
        for option in ("--server", "--tag", "--allow", "--connect-timeout",
                       "[default: tcp:host=127.0.0.1:port=1111]"):
            self.assertIn(option, text)


class CommandLineTests(ConfigTestCase):
    """Options on the command line are checked and converted."""

    def test_serverOptions(self):
        """Server options become settings of the right types."""
        settings = parse(ServerOptions, [
            "--client-port", "tcp:2222", "--admin", "tcp:0:interface=127.0.0.1",
            "--public-interface", "::", "--data-dir", "/var/lib/pm", "--token", "sekrit",
            "--window", "65536", "--ping-interval", "2.5", "--ping-timeout", "7",
            "--open-timeout", "3", "--sample-interval", "0.5",
            "--history-max-rows", "10", "--history-max-age", "60",
        ])
        self.assertEqual(settings, ServerSettings(
            client_port="tcp:2222", admin="tcp:0:interface=127.0.0.1", public_interface="::",
            data_dir="/var/lib/pm", token="sekrit", window=65536, ping_interval=2.5,
            ping_timeout=7.0, open_timeout=3.0, sample_interval=0.5, history_max_rows=10,
            history_max_age=60.0))
        self.assertIsInstance(settings.window, int)
        self.assertIsInstance(settings.ping_timeout, float)

    def test_clientOptions(self):
        """Client options become settings; --allow becomes an AllowList."""
        settings = parse(ClientOptions, [
            "--server", "tcp:host=tunnel.example.org:port=4321", "--tag", "lab-1.a:b_c",
            "--token", "sekrit", "--allow", "10.0.0.0/8:22", "--window", "16384",
            "--connect-timeout", "2",
        ])
        self.assertEqual(settings.server.text, "tcp:host=tunnel.example.org:port=4321")
        self.assertEqual(settings.tag, "lab-1.a:b_c")
        self.assertEqual(settings.token, "sekrit")
        self.assertIsInstance(settings.allow, AllowList)
        self.assertTrue(settings.allow.allows("10.1.2.3", 22))
        self.assertFalse(settings.allow.allows("10.1.2.3", 23))
        self.assertEqual(settings.window, 16384)
        self.assertEqual(settings.connect_timeout, 2.0)

    def test_valuesAreStripped(self):
        """Spaces around a value are ignored."""
        settings = parse(ServerOptions, ["--window", " 32768 ", "--client-port", " tcp:2222 "])
        self.assertEqual((settings.window, settings.client_port.text), (32768, "tcp:2222"))

    def test_windowBounds(self):
        """The window may be anything from 16 KiB to 64 MiB inclusive."""
        self.assertEqual(parse(ServerOptions, ["--window", "16384"]).window, 16384)
        self.assertEqual(parse(ClientOptions, ["--window", "67108864"]).window, 67108864)


class ConfigFileTests(ConfigTestCase):
    """Values from the INI file's section, and the command line over them."""

    SERVER = """\
[server]
client_port = tcp:2222
public_interface = 127.0.0.2
token = from-file
window = 32768
ping_interval = 4

[client]
tag = not-for-the-server
"""

    def test_serverValuesFromFile(self):
        """Keys of the [server] section become settings; others keep their defaults."""
        settings = parse(ServerOptions, ["--config", self.writeConfig(self.SERVER)])
        self.assertEqual(settings.client_port.text, "tcp:2222")
        self.assertEqual(settings.public_interface, "127.0.0.2")
        self.assertEqual(settings.token, "from-file")
        self.assertEqual(settings.window, 32768)
        self.assertEqual(settings.ping_interval, 4.0)
        self.assertEqual(settings.admin, ServerSettings().admin)
        self.assertEqual(settings.data_dir, ServerSettings().data_dir)

    def test_shortOption(self):
        """-c is --config."""
        settings = parse(ServerOptions, ["-c", self.writeConfig(self.SERVER)])
        self.assertEqual(settings.client_port.text, "tcp:2222")

    def test_clientValuesFromFile(self):
        """The client reads only the [client] section of the same file."""
        settings = parse(ClientOptions, ["--config", self.writeConfig(self.SERVER)])
        self.assertEqual(settings.tag, "not-for-the-server")
        self.assertEqual(settings.token, "")
        self.assertEqual(settings.window, DEFAULT_WINDOW)

    def test_commandLineWins(self):
        """An option on the command line overrides the same key in the file."""
        settings = parse(ServerOptions, [
            "--config", self.writeConfig(self.SERVER),
            "--client-port", "tcp:3333", "--window", "16384"])
        self.assertEqual(settings.client_port.text, "tcp:3333")
        self.assertEqual(settings.window, 16384)
        # Keys not given on the command line still come from the file.
        self.assertEqual(settings.token, "from-file")

    def test_commandLineWinsWhateverTheOrder(self):
        """Options before --config still override the file."""
        settings = parse(ServerOptions, [
            "--token", "from-options", "--config", self.writeConfig(self.SERVER)])
        self.assertEqual(settings.token, "from-options")

    def test_dashesAndUnderscores(self):
        """Keys may be written with dashes or underscores."""
        path = self.writeConfig(
            "[server]\nclient-port = tcp:2222\nhistory_max_rows = 5\n"
            "history-max-age = 99\npublic_interface = ::1\n")
        settings = parse(ServerOptions, ["--config", path])
        self.assertEqual(settings.client_port.text, "tcp:2222")
        self.assertEqual(settings.history_max_rows, 5)
        self.assertEqual(settings.history_max_age, 99.0)
        self.assertEqual(settings.public_interface, "::1")

    def test_clientDashes(self):
        """Client keys too may be written with dashes."""
        path = self.writeConfig("[client]\nconnect-timeout = 3\nallow = 10.0.0.5:*\n")
        settings = parse(ClientOptions, ["--config", path])
        self.assertEqual(settings.connect_timeout, 3.0)
        self.assertTrue(settings.allow.allows("10.0.0.5", 1))

    def test_keysAnyCase(self):
        """Keys are not case-sensitive, as in any INI file."""
        settings = parse(ServerOptions, ["--config", self.writeConfig("[server]\nToken = x\n")])
        self.assertEqual(settings.token, "x")

    def test_noSection(self):
        """A file without the program's section leaves every default in place."""
        settings = parse(ClientOptions, ["--config", self.writeConfig("[server]\ntoken = x\n")])
        self.assertEqual(settings, ClientSettings())

    def test_percentIsLiteral(self):
        """A '%' in a value is taken literally (no interpolation)."""
        settings = parse(ServerOptions, ["--config", self.writeConfig("[server]\ntoken = 100%x\n")])
        self.assertEqual(settings.token, "100%x")

    def test_repositoryExampleServer(self):
        """The documented tap.conf gives the server its example settings."""
        settings = parse(ServerOptions, ["--config", str(ROOT / "tap.conf")])
        self.assertEqual(settings.client_port.text, "tcp:1111")
        self.assertEqual(settings.admin, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(settings.public_interface, "0.0.0.0")
        self.assertEqual(settings.data_dir, "portmapper-data")
        self.assertEqual(settings.token, "change-me")

    def test_repositoryExampleClient(self):
        """The documented tap.conf gives the client its example settings."""
        settings = parse(ClientOptions, ["--config", str(ROOT / "tap.conf")])
        self.assertEqual(settings.server.text, "tcp:host=127.0.0.1:port=1111")
        self.assertEqual(settings.tag, "default")
        self.assertEqual(settings.token, "change-me")

    def test_repositoryExampleCommentedAllow(self):
        """The allow rule tap.conf shows in a comment is a valid allow-list."""
        lines = (ROOT / "tap.conf").read_text(encoding="utf-8").splitlines()
        examples = [line.split("=", 1)[1] for line in lines if line.startswith("# allow =")]
        self.assertEqual(len(examples), 1)
        allow = AllowList.parse(examples[0])
        self.assertTrue(allow.allows("192.168.1.1", 22))
        self.assertTrue(allow.allows("127.0.0.1", 5432))


class BadValueTests(ConfigTestCase):
    """Each bad value is a UsageError, one sentence naming the key."""

    def test_badServerEndpoints(self):
        """Endpoint strings that do not parse are refused, naming client-port."""
        missing_key = str(Path(self.mktemp()) / "key.pem")
        for bad in ("bogus:1111", "tcp:abc", "", "tcp", "tcp:1111:colour=blue",
                    "ssl:8443:privateKey=" + missing_key.replace(":", "\\:")):
            self.assertUsageError(ServerOptions, ["--client-port", bad], "client-port")

    def test_badAdminEndpoint(self):
        """A bad admin endpoint is refused, naming admin."""
        message = self.assertUsageError(ServerOptions, ["--admin", "tcp:eighty"], "admin")
        self.assertIn("tcp:eighty", message)

    def test_badClientEndpoints(self):
        """Client endpoint strings that do not parse are refused, naming server."""
        for bad in ("bogus:host=x:port=1", "tcp:host=x:port=abc", "tcp:host=example.org",
                    "tcp:host=x:port=1:colour=blue", "", "tls:host=x:port=1:colour=blue",
                    "tls:port=1", "tls:host=x:port=1:trustRoots=/nonexistent"):
            self.assertUsageError(ClientOptions, ["--server", bad], "server")

    def test_tlsOptionNamed(self):
        """An option our TLS does not take is named in the message."""
        message = self.assertUsageError(ClientOptions, ["--server", "tls:host=x:port=1:sni=y"],
                                        "server")
        self.assertIn("'sni'", message)
        message = self.assertUsageError(
            ServerOptions, ["--client-port", "ssl:1111:privateKey=k.pem:method=x"], "client-port")
        self.assertIn("'method'", message)

    def test_badInterface(self):
        """A public interface that is not an IP address is refused, naming public-interface."""
        for bad in ("example.org", "300.1.1.1", "0.0.0.0/0", ""):
            self.assertUsageError(ServerOptions, ["--public-interface", bad], "public-interface")

    def test_badWindowNumber(self):
        """A window that is not a positive whole number is refused, naming window."""
        for bad in ("abc", "0", "-16384", "65536.5", ""):
            self.assertUsageError(ServerOptions, ["--window", bad], "window")
            self.assertUsageError(ClientOptions, ["--window", bad], "window")

    def test_windowOutOfRange(self):
        """A window under 16 KiB or over 64 MiB is refused with the allowed range."""
        for bad in ("16383", "67108865"):
            message = self.assertUsageError(ServerOptions, ["--window", bad], "window")
            self.assertIn("16384", message)
            self.assertIn("67108864", message)

    def test_badNumbers(self):
        """Timeouts, intervals and history limits must be positive numbers."""
        for key in ("ping-interval", "ping-timeout", "open-timeout", "sample-interval",
                    "history-max-rows", "history-max-age"):
            for bad in ("x", "0", "-1", "nan"):
                self.assertUsageError(ServerOptions, ["--" + key, bad], key)
        self.assertUsageError(ServerOptions, ["--history-max-rows", "1.5"], "history-max-rows")
        self.assertUsageError(ClientOptions, ["--connect-timeout", "0"], "connect-timeout")

    def test_badTag(self):
        """A tag the server would refuse (space, non-ASCII, control, 65 chars) is refused, naming tag."""
        for bad in ("", "a" * 65, "two words", "a b", "slash/", "semi;colon", "\u2603",
                    "\u00e9t\u00e9", "%00", "a\x00b"):
            message = self.assertUsageError(ClientOptions, ["--tag", bad], "tag")
            self.assertIn("1 to 64 ASCII letters, digits or any of '_.:-'", message)
        self.assertEqual(parse(ClientOptions, ["--tag", "a" * 64]).tag, "a" * 64)

    def test_badTagInFile(self):
        """A tag with a space or a non-ASCII letter in tap.conf is a start-up error too."""
        for bad in ("a b", "\u00e9t\u00e9", "\u2603"):
            path = self.mktemp()
            with open(path, "w", encoding="utf-8") as f:
                f.write(f"[client]\ntag = {bad}\n")
            self.assertUsageError(ClientOptions, ["--config", path], "tag")

    def test_unicodeDigits(self):
        """Digits other than ASCII 0-9 are not numbers, as everywhere else."""
        for key, bad in (("window", "\u0661\u0666\u0663\u0668\u0664"),
                         ("history-max-rows", "\u00b2")):
            self.assertUsageError(ServerOptions, ["--" + key, bad], key)

    def test_badAllow(self):
        """An allow rule that does not parse is refused, naming allow."""
        for bad in ("10.0.0.0/8", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:90-80",
                    "bad_host!:22", ":22", "10.0.0.1:x", ";", "10.0.0.300:22"):
            self.assertUsageError(ClientOptions, ["--allow", bad], "allow")

    def test_emptyAdminToken(self):
        """An empty admin token, which would protect nothing, is refused naming admin-token."""
        self.assertUsageError(ServerOptions, ["--admin-token", ""], "admin-token")
        path = self.writeConfig("[server]\nadmin = tcp:8080\nadmin_token =\n")
        self.assertUsageError(ServerOptions, ["--config", path], "admin-token")

    def test_badValueInFile(self):
        """A bad value in the file is named by its key, as an option would be."""
        path = self.writeConfig("[server]\nhistory_max_rows = lots\n")
        message = self.assertUsageError(ServerOptions, ["--config", path], "history-max-rows")
        self.assertIn("lots", message)
        path = self.writeConfig("[client]\nallow = 10.0.0.0/8\n")
        self.assertUsageError(ClientOptions, ["--config", path], "allow")

    def test_badValueInFileOverridden(self):
        """A bad value in the file that the command line overrides is never used."""
        path = self.writeConfig("[server]\nwindow = lots\n")
        self.assertEqual(parse(ServerOptions, ["--config", path, "--window", "16384"]).window,
                         16384)

    def test_unknownKey(self):
        """A key the section does not know is refused, naming it and the section."""
        path = self.writeConfig("[server]\ntoken = x\ncolour = blue\n")
        message = self.assertUsageError(ServerOptions, ["--config", path], "colour", "[server]")
        self.assertIn(path, message)

    def test_clientKeyInServerSection(self):
        """A client-only key in [server] is an unknown key there."""
        path = self.writeConfig("[server]\ntag = lab\n")
        self.assertUsageError(ServerOptions, ["--config", path], "'tag'", "[server]")

    def test_unknownClientKey(self):
        """An unknown key in [client] is refused too."""
        path = self.writeConfig("[client]\nadmin = tcp:8080\n")
        self.assertUsageError(ClientOptions, ["--config", path], "'admin'", "[client]")

    def test_missingFile(self):
        """A config file that does not exist is refused, naming the file."""
        path = self.mktemp()
        message = self.assertUsageError(ServerOptions, ["--config", path], "config", path)
        self.assertIn("No such file", message)
        self.assertUsageError(ClientOptions, ["--config", path], "config", path)

    def test_directory(self):
        """A directory given as the config file is refused, naming it."""
        path = self.mktemp()
        Path(path).mkdir()
        self.assertUsageError(ServerOptions, ["--config", path], "config", path)

    def test_notINI(self):
        """A file that is not INI is refused, naming the file, in one line."""
        for text in ("client_port = tcp:1111\n", "[server\nx\n", "[server]\n[server]\n",
                     "[server]\njust words\n"):
            path = self.writeConfig(text)
            self.assertUsageError(ServerOptions, ["--config", path], "config", path, "INI")

    def test_binaryFile(self):
        """A file that is not text is refused as not INI."""
        path = self.writeConfig(b"\xff\xfe\x00[server]\x80\n", mode="wb")
        self.assertUsageError(ServerOptions, ["--config", path], "config", path, "INI")


class AdminTokenRuleTests(ConfigTestCase):
    """The server refuses an admin API off loopback unless it needs a token."""

    def test_allInterfacesNeedToken(self):
        """An admin endpoint on every interface without admin-token is refused."""
        self.assertUsageError(ServerOptions, ["--admin", "tcp:8080"], "admin-token", "tcp:8080")

    def test_otherAddressNeedsToken(self):
        """An admin endpoint on a non-loopback address or a name without admin-token is refused."""
        for admin in ("tcp:8080:interface=192.0.2.1", "tcp6:8080:interface=\\:\\:",
                      "tcp:8080:interface=localhost", "tcp:8080:interface=0.0.0.0"):
            self.assertUsageError(ServerOptions, ["--admin", admin], "admin-token")

    def test_fromFileNeedsToken(self):
        """The rule applies to an admin endpoint set in the config file too."""
        path = self.writeConfig("[server]\nadmin = tcp:8080:interface=0.0.0.0\n")
        self.assertUsageError(ServerOptions, ["--config", path], "admin-token")

    def test_tokenAllowsAnyInterface(self):
        """With admin-token set, a non-loopback admin endpoint is accepted."""
        settings = parse(ServerOptions, ["--admin", "tcp:8080", "--admin-token", "t0ken"])
        self.assertEqual((settings.admin, settings.admin_token), ("tcp:8080", "t0ken"))
        path = self.writeConfig("[server]\nadmin = tcp:8080:interface=0.0.0.0\n"
                                "admin-token = t0ken\n")
        self.assertEqual(parse(ServerOptions, ["--config", path]).admin_token, "t0ken")

    def test_loopbackNeedsNoToken(self):
        """127.0.0.1, another 127/8 address and ::1 need no admin-token."""
        for admin in ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.2",
                      "tcp6:8080:interface=\\:\\:1", "tcp:0:interface=\\:\\:1"):
            settings = parse(ServerOptions, ["--admin", admin])
            self.assertEqual(settings.admin, admin)
            self.assertIsNone(settings.admin_token)


class AllowListTests(SynchronousTestCase):
    """AllowList.parse and allows()."""

    def test_network(self):
        """A network rule allows its listed ports on any address inside it, nothing else."""
        allow = AllowList.parse("192.168.0.0/16:22,80")
        self.assertTrue(allow.allows("192.168.0.1", 22))
        self.assertTrue(allow.allows("192.168.255.254", 80))
        self.assertFalse(allow.allows("192.168.3.4", 23))
        self.assertFalse(allow.allows("192.169.0.1", 22))
        self.assertFalse(allow.allows("10.0.0.1", 80))

    def test_nonStrictNetwork(self):
        """A network written with host bits set covers the whole network."""
        allow = AllowList.parse("10.1.2.3/8:22")
        self.assertTrue(allow.allows("10.200.0.1", 22))

    def test_singleAddress(self):
        """A single address allows only that address."""
        allow = AllowList.parse("10.0.0.5:22")
        self.assertTrue(allow.allows("10.0.0.5", 22))
        self.assertFalse(allow.allows("10.0.0.6", 22))
        self.assertFalse(allow.allows("10.0.0.4", 22))

    def test_anyPort(self):
        """'*' as the ports allows every port of the address."""
        allow = AllowList.parse("10.0.0.5:*")
        for port in (1, 22, 65535):
            self.assertTrue(allow.allows("10.0.0.5", port))
        self.assertFalse(allow.allows("10.0.0.50", 22))

    def test_range(self):
        """A port range includes both ends and nothing past them."""
        allow = AllowList.parse("10.0.0.0/24:8000-8099,9000")
        self.assertTrue(allow.allows("10.0.0.1", 8000))
        self.assertTrue(allow.allows("10.0.0.1", 8050))
        self.assertTrue(allow.allows("10.0.0.1", 8099))
        self.assertTrue(allow.allows("10.0.0.1", 9000))
        self.assertFalse(allow.allows("10.0.0.1", 7999))
        self.assertFalse(allow.allows("10.0.0.1", 8100))
        self.assertFalse(allow.allows("10.0.0.1", 9001))

    def test_ipv6(self):
        """IPv6 addresses and networks are written in brackets."""
        allow = AllowList.parse("[fd00::/8]:443 [::1]:*")
        self.assertTrue(allow.allows("fd12:3456::1", 443))
        self.assertFalse(allow.allows("fd12:3456::1", 80))
        self.assertFalse(allow.allows("fe80::1", 443))
        self.assertTrue(allow.allows("::1", 5432))
        self.assertTrue(allow.allows("0:0:0:0:0:0:0:1", 5432))
        self.assertFalse(allow.allows("::2", 5432))
        self.assertFalse(allow.allows("127.0.0.1", 5432))

    def test_familiesDoNotMix(self):
        """An IPv4 rule allows no IPv6 address and an IPv6 rule no IPv4 address."""
        allow = AllowList.parse("0.0.0.0/0:*")
        self.assertTrue(allow.allows("198.51.100.1", 80))
        self.assertFalse(allow.allows("2001:db8::1", 80))
        allow = AllowList.parse("[::/0]:*")
        self.assertTrue(allow.allows("2001:db8::1", 80))
        self.assertFalse(allow.allows("198.51.100.1", 80))

    def test_hostName(self):
        """A host name rule matches that name exactly, in any case, not addresses."""
        allow = AllowList.parse("db.internal:5432 Build-01:22")
        self.assertTrue(allow.allows("db.internal", 5432))
        self.assertTrue(allow.allows("DB.Internal", 5432))
        self.assertTrue(allow.allows("build-01", 22))
        self.assertFalse(allow.allows("db.internal", 5433))
        self.assertFalse(allow.allows("www.db.internal", 5432))
        self.assertFalse(allow.allows("internal", 5432))
        self.assertFalse(allow.allows("10.0.0.1", 5432))
        self.assertEqual(allow.rules[1][0], "build-01")

    def test_nameNotInNetwork(self):
        """A host name is never allowed by an address rule, even one that covers everything."""
        allow = AllowList.parse("0.0.0.0/0:* [::/0]:*")
        self.assertFalse(allow.allows("localhost", 22))

    def test_severalRules(self):
        """Rules separated by spaces or semicolons each allow their own targets."""
        allow = AllowList.parse("10.0.0.5:22;192.168.1.0/24:80 ;  db:5432")
        self.assertEqual(len(allow.rules), 3)
        self.assertTrue(allow.allows("10.0.0.5", 22))
        self.assertTrue(allow.allows("192.168.1.9", 80))
        self.assertTrue(allow.allows("db", 5432))
        self.assertFalse(allow.allows("10.0.0.5", 80))
        self.assertFalse(allow.allows("192.168.1.9", 22))

    def test_rules(self):
        """Parsed rules hold networks and inclusive (low, high) port ranges, or None for '*'."""
        allow = AllowList.parse("10.0.0.0/8:22,8000-8099 host:*")
        self.assertEqual(allow.rules, [
            (ipaddress.ip_network("10.0.0.0/8"), [(22, 22), (8000, 8099)]),
            ("host", None),
        ])

    def test_parseErrors(self):
        """Rules that are not NET:PORTS, bad names and bad ports raise ValueError."""
        for bad in ("", " ; ", "10.0.0.0/8", ":22", "10.0.0.1:", "10.0.0.1:0",
                    "10.0.0.1:65536", "10.0.0.1:80-", "10.0.0.1:-80", "10.0.0.1:90-80",
                    "10.0.0.1:x", "10.0.0.1:22,", "bad_host!:22", "-lead.example:22",
                    "a..b:22", ("a" * 64) + ".example:22", "10.0.0.0/33:22",
                    "*:22", "10.0.0.1:22 oops", "10.0.0.300:22", "1.2.3:22", "a-.example:22",
                    "h\u00e9.example:22", "\u0661\u0662.example:\u0662\u0662", "10.0.0.1:\u0662\u0662"):
            self.assertRaises(ValueError, AllowList.parse, bad)

    def test_parseErrorNamesRule(self):
        """The parse error says which part was wrong."""
        error = self.assertRaises(ValueError, AllowList.parse, "10.0.0.1:22 10.0.0.2:70000")
        self.assertIn("70000", str(error))
        error = self.assertRaises(ValueError, AllowList.parse, "bad_host!:22")
        self.assertIn("bad_host!", str(error))

    def test_denyByDefault(self):
        """Whatever no rule allows is denied."""
        allow = AllowList.parse("10.0.0.5:22")
        self.assertFalse(allow.allows("10.0.0.5", 23))
        self.assertFalse(allow.allows("example.org", 22))
        self.assertFalse(allow.allows("", 22))
