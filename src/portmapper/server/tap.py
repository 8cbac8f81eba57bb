"""
``twistd portmapper``: options and the service they build.
"""

import ipaddress

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from portmapper.config import SERVER_KEYS, ServerSettings, make_options
from portmapper.startup import exit_when_failed

log = Logger()


class Options(make_options("server", SERVER_KEYS, ServerSettings)):
    synopsis = "[options]"
    longdesc = ("Run a portmapper server: tunnel clients dial its client port, the admin API "
                "maps public ports to targets those clients can reach.")

    def postOptions(self):
        super().postOptions()
        s = self.settings
        if s.admin_token is None and not _is_loopback(s.admin):
            raise usage.UsageError(
                f"The admin API endpoint {s.admin!r} is not on a loopback address; "
                "set admin-token so that it needs a bearer token.")


def _is_loopback(description):
    interface = getattr(serverFromString(None, description), "_interface", "")
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False  # '' (every address) or a name: not loopback


def makeService(config, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    from portmapper.server.core import PortMapperServer

    settings = config.settings
    if not settings.token:
        log.warn("no token is set: any client that reaches the client port may serve mappings")
    server = PortMapperServer(settings, reactor)
    exit_when_failed(reactor, server.ready, "the portmapper server could not start")
    return server
