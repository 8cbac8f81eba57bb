"""
Settings: built-in defaults, overridden by a ``--config`` INI file, overridden
by command-line options.

``tap.conf`` holds a ``[server]`` and a ``[client]`` section; each key is the
long option's name (``client_port`` or ``client-port``).  Every value is
checked here, so a bad one is reported as one sentence naming the key
(a ``usage.UsageError``, which twistd prints and exits non-zero on) before
anything starts.
"""

import configparser
import ipaddress
import math
import socket
import urllib.parse

import attr
from twisted.python import usage

from portmapper import validate
from portmapper.protocol import auth
from portmapper.protocol.connection import HANDSHAKE_TIMEOUT, PING_INTERVAL, PING_TIMEOUT
from portmapper.protocol.windows import DEFAULT_WINDOW, MAX_WINDOW
from portmapper.transport import endpoints


@attr.s(frozen=True)
class ServerSettings:
    # An endpoints.ServerSpec; a description given here is parsed into one.
    client_port = attr.ib(default="tcp:1111", converter=endpoints.server_spec)
    admin = attr.ib(default="tcp:8080:interface=127.0.0.1")
    public_interface = attr.ib(default="0.0.0.0")
    data_dir = attr.ib(default="portmapper-data")
    database = attr.ib(default="")  # "": SQLite under data_dir; else a postgresql:// URL
    token = attr.ib(default="")
    admin_token = attr.ib(default=None)
    window = attr.ib(default=DEFAULT_WINDOW)
    max_window = attr.ib(default=MAX_WINDOW)
    ping_interval = attr.ib(default=PING_INTERVAL)
    ping_timeout = attr.ib(default=PING_TIMEOUT)
    handshake_timeout = attr.ib(default=HANDSHAKE_TIMEOUT)
    open_timeout = attr.ib(default=15.0)
    half_close_timeout = attr.ib(default=60.0)
    idle_timeout = attr.ib(default=0.0)  # 0: never
    drain_timeout = attr.ib(default=30.0)
    sample_interval = attr.ib(default=1.0)
    refusal_interval = attr.ib(default=10.0)
    history_max_rows = attr.ib(default=100_000)
    history_max_age = attr.ib(default=30 * 86400.0)
    webhook = attr.ib(default=())  # URLs alerts are posted to
    node_name = attr.ib(factory=lambda: _host_name())  # this server's name in its cluster
    node_url = attr.ib(default="")  # "": where the admin API listens


@attr.s(frozen=True)
class ClientSettings:
    # The servers to keep a link to, a tuple of endpoints.ClientSpec, given as
    # server= (the option's name): a spec, specs, or descriptions separated by
    # whitespace, parsed into specs.
    servers = attr.ib(default="tcp:host=127.0.0.1:port=1111", converter=lambda v: _servers(v),
                      alias="server")
    tag = attr.ib(default="default")
    token = attr.ib(default="")
    allow = attr.ib(default=None)  # an AllowList, or None for any target
    window = attr.ib(default=DEFAULT_WINDOW)
    max_window = attr.ib(default=MAX_WINDOW)
    connect_timeout = attr.ib(default=10.0)
    ping_interval = attr.ib(default=PING_INTERVAL)
    ping_timeout = attr.ib(default=PING_TIMEOUT)
    handshake_timeout = attr.ib(default=HANDSHAKE_TIMEOUT)
    drain_timeout = attr.ib(default=30.0)

    @property
    def server(self):
        """The first server (the only one, unless several are given)."""
        return self.servers[0]


@attr.s(frozen=True)
class AllowList:
    """
    Targets a client may open: ``NET:PORTS`` rules separated by spaces or
    semicolons, e.g. ``192.168.0.0/16:22,80 10.0.0.5:*``.  NET is an address
    or network (IPv4 or IPv6 in brackets), or a host name matched exactly;
    PORTS is ``*`` or a comma-separated list of ports and ranges (``8000-8099``).
    """

    rules = attr.ib()  # [(network or host name, [(low, high)] or None)]

    @classmethod
    def parse(cls, text):
        rules = []
        for rule in text.replace(";", " ").split():
            where, sep, ports = rule.rpartition(":")
            if not sep or not where:
                raise ValueError(f"rule {rule!r} is not NET:PORTS")
            where = where.strip("[]")
            try:
                net = validate.network(where)
            except ValueError:
                if not validate.is_host_name(where):
                    raise ValueError(f"{where!r} is not an address, network or host name") from None
                net = where.lower()
            rules.append((net, None if ports == "*" else validate.port_ranges(ports)))
        if not rules:
            raise ValueError("no rules given")
        return cls(rules)

    def allows(self, host, port):
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        for net, ports in self.rules:
            if isinstance(net, str):
                if net != host.lower():
                    continue
            elif address is None or address not in net:
                continue
            if ports is None or any(low <= port <= high for low, high in ports):
                return True
        return False


# -- value checkers: text -> value, ValueError with the reason -------------

def _positive_int(text):
    try:
        return validate.integer(text, 1, 2**63 - 1)  # SQLite's largest integer
    except ValueError:
        raise ValueError("must be a positive whole number") from None


def _positive_float(text):
    return _float(text, 0.0, "a positive number", inclusive=False)


def _nonnegative_float(text):
    return _float(text, 0.0, "a number, 0 or more", inclusive=True)


def _float(text, low, what, inclusive):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value >= low if inclusive else value > low)):
        raise ValueError(f"must be {what}")
    return value


def _text(text):
    return text


def _nonempty(text):
    if not text:
        raise ValueError("must not be empty")
    return text


def _client_token(text):
    """The shared token (any text), or a whole credential token (``pmc_...``)."""
    if auth.looks_like_credential(text):
        auth.credential_seed(text)
    return text


def _urls(text):
    """A comma- or space-separated list of http(s) URLs, as a tuple."""
    urls = tuple(text.replace(",", " ").split())
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return urls


def _host_name():
    """This host's name as a node name (its first label if the whole name is not one)."""
    name = socket.gethostname()
    for candidate in (name, name.split(".")[0][:64]):
        if validate.is_tag(candidate):
            return candidate
    return "node"


def _url(text):
    """'' or one http(s) URL, without a trailing slash."""
    if not text:
        return text
    urls = _urls(text)
    if len(urls) != 1:
        raise ValueError("must be one http:// or https:// URL")
    return urls[0].rstrip("/")


def _database(text):
    """'' (SQLite under data-dir) or a postgresql:// URL libpq can parse."""
    if not text:
        return text
    if not text.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be empty (SQLite under data-dir) or a postgresql:// URL")
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise ValueError("a PostgreSQL database needs psycopg, which is not installed"
                         " (pip install 'portmapper[postgres]')") from None
    try:
        conninfo_to_dict(text)
    except psycopg.Error as e:
        raise ValueError(f"is not a valid PostgreSQL URL: {str(e).strip()}") from None
    return text


def _servers(value):
    """
    The client specs of ``value``: a spec, specs, or descriptions separated
    by whitespace (repeated ``--server`` options and the lines of a config
    file's value come joined by newlines).
    """
    if isinstance(value, tuple):
        return value
    descriptions = value.split()
    if not descriptions:
        raise ValueError("must name a server")
    specs = []
    for description in descriptions:
        try:
            specs.append(endpoints.client_spec(description))
        except ValueError as e:
            if len(descriptions) == 1:
                raise
            raise ValueError(f"{description!r}: {e}") from None
        if description in descriptions[:len(specs) - 1]:
            raise ValueError(f"names the server {description!r} twice")
    return tuple(specs)


def _window(text):
    value = _positive_int(text)
    if not 16 * 1024 <= value <= 64 * 1024 * 1024:
        raise ValueError("must be from 16384 to 67108864 bytes")
    return value


def _max_window(text):
    value = _positive_int(text)
    if not 16 * 1024 <= value <= 1024 * 1024 * 1024:
        raise ValueError("must be from 16384 to 1073741824 bytes")
    return value


# name -> (checker, help)
SERVER_KEYS = {
    "client_port": (endpoints.server_spec, "Endpoint tunnel clients connect to."),
    "admin": (endpoints.check_server_description, "Endpoint of the admin JSON API."),
    "public_interface": (validate.address, "Address the mapped public ports listen on."),
    "data_dir": (_text, "Directory for the SQLite database (mappings, history)."),
    "database": (_database, "PostgreSQL URL (postgresql://user@host/dbname) of a database the"
                            " servers of a cluster share, instead of SQLite under data-dir."),
    "token": (_text, "Shared secret clients must prove they know."),
    "admin_token": (_nonempty, "Bearer token the admin API requires (needed off loopback)."),
    "window": (_window, "Per-channel flow-control window to start with, bytes."),
    "max_window": (_max_window, "Largest a channel's window may grow to on a long fat link, bytes."),
    "ping_interval": (_positive_float, "Seconds between pings (round-trip timing, keepalive)."),
    "ping_timeout": (_positive_float, "Seconds of link silence before the link is dropped."),
    "open_timeout": (_positive_float, "Seconds a channel may wait for its target."),
    "half_close_timeout": (_positive_float, "Seconds a channel may stay half-closed."),
    "idle_timeout": (_nonnegative_float,
                     "Seconds a channel may carry no byte either way before it is closed (0: never)."),
    "drain_timeout": (_positive_float,
                      "Seconds a stopping server lets its open channels finish."),
    "sample_interval": (_positive_float, "Seconds between traffic statistics samples."),
    "refusal_interval": (_positive_float,
                         "Seconds over which connections refused on a port are counted"
                         " into one history row and log line."),
    "history_max_rows": (_positive_int, "Closed channels kept in history."),
    "history_max_age": (_positive_float, "Seconds closed channels are kept in history."),
    "webhook": (_urls, "URL to POST JSON alerts to; repeat the option, or list URLs "
                       "separated by commas or spaces."),
    "node_name": (validate.tag, "This server's name among the nodes of a cluster (the host"
                                " name by default)."),
    "node_url": (_url, "URL the other nodes reach this one's admin API at (by default"
                       " http://ADDRESS:PORT of where it listens)."),
}

CLIENT_KEYS = {
    "server": (_servers, "Endpoint of a server's client port; repeat the option (or list"
                         " several, one per line, in the config file) to link to each."),
    "tag": (validate.tag, "Tag announced to the server; mappings pick clients by tag."),
    "token": (_client_token,
              "The server's shared --token, or a credential token (pmc_...) it issued."),
    "allow": (AllowList.parse, "Targets this client may open, e.g. '192.168.0.0/16:22,80'."),
    "window": (_window, "Per-channel flow-control window to start with, bytes."),
    "max_window": (_max_window, "Largest a channel's window may grow to on a long fat link, bytes."),
    "connect_timeout": (_positive_float, "Seconds to wait for a target to accept."),
    "ping_interval": (_positive_float, "Seconds between pings (round-trip timing, keepalive)."),
    "ping_timeout": (_positive_float, "Seconds of link silence before the link is dropped."),
    "drain_timeout": (_positive_float,
                      "Seconds a stopping client lets its open channels finish."),
}


def make_options(section, keys, settings_type, repeatable=()):
    """
    A twistd ``usage.Options`` class for ``keys``, building ``settings_type``.
    An option named in ``repeatable`` may be given several times: its values
    reach the checker joined by newlines, as a multi-line config value does.
    """

    defaults = settings_type()

    class Options(usage.Options):
        optParameters = [
            ["config", "c", None, "INI file with a [%s] section; options given here win." % section],
        ] + [
            [name.replace("_", "-"), None, None,
             f"{help} [default: {_show(getattr(defaults, name))}]"]
            for name, (check, help) in keys.items()
        ]

        def postOptions(self):
            self.settings = load_settings(
                section, keys, settings_type, self["config"],
                {name: self[name.replace("_", "-")] for name in keys})

    for name in repeatable:
        setattr(Options, "opt_" + name, _appender(name.replace("_", "-")))
    return Options


def _appender(option):
    """An ``opt_`` handler that adds each value of ``option`` on a line of its own."""

    def append(self, value):
        previous = self.opts.get(option)
        self.opts[option] = value if previous is None else f"{previous}\n{value}"

    return append


def _show(value):
    return "none" if value is None or value == () else value


def load_settings(section, keys, settings_type, config_path, given):
    """
    Merge defaults, the config file's ``[section]`` and ``given`` (option
    values, None where not given) into ``settings_type``; raise
    ``usage.UsageError`` naming the bad key.
    """
    raw = {}
    if config_path:
        raw.update(_read_ini(config_path, section, keys))
    raw.update({name: value for name, value in given.items() if value is not None})
    values = {}
    for name, text in raw.items():
        check = keys[name][0]
        try:
            values[name] = check(text.strip())
        except ValueError as e:
            reason = str(e).rstrip(".")  # some reasons are sentences already
            raise usage.UsageError(
                f"Bad value {text!r} for {name.replace('_', '-')}: {reason}.") from None
    return settings_type(**values)


def _read_ini(path, section, keys):
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise usage.UsageError(f"Cannot read config file {path}: {e.strerror}.") from None
    except (configparser.Error, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0].rstrip(".")
        raise usage.UsageError(f"Config file {path} is not a valid INI file: {first}.") from None
    if not parser.has_section(section):
        return {}
    raw = {}
    for key, value in parser.items(section):
        name = key.replace("-", "_")
        if name not in keys:
            raise usage.UsageError(
                f"Unknown key {key!r} in section [{section}] of {path}; "
                f"known keys: {', '.join(sorted(keys))}.")
        raw[name] = value
    return raw


