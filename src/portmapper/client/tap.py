"""
``twistd portmapper-client``: options and the service they build.
"""

from portmapper.config import CLIENT_KEYS, ClientSettings, make_options


class Options(make_options("client", CLIENT_KEYS, ClientSettings, repeatable=("server",))):
    synopsis = "[options]"
    longdesc = ("Run a portmapper client: keep a link to the server (to each server, when "
                "--server is repeated) and carry its channels to targets in this network.")


def makeService(config, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    from portmapper.client.agent import makeClientService

    return makeClientService(config.settings, reactor)
