"""
``twistd portmapper``: options and the service they build.

:func:`makeService` composes the server from Twisted services, children of
one :class:`~portmapper.server.services.InOrder` that start in this order
and stop in the reverse one:

``store``
    the store (SQLite under ``--data-dir``, or PostgreSQL at
    ``--database``), opened first and closed last;
``webhooks``
    the alerts to ``--webhook`` URLs (:mod:`~portmapper.server.webhooks`),
    started before the server so that none of its events is missed;
``server``
    the mapping keeper (:class:`~portmapper.server.core.PortMapperServer`),
    which restores the stored mappings when it starts;
``client-port``
    a ``StreamServerEndpointService`` for the tunnel clients;
``admin``
    a ``StreamServerEndpointService`` for the admin API, which therefore
    answers only once the stored mappings listen again and the client port
    is known;
``sampler``
    the once-a-second traffic sampler, which also has the server close the
    channels past their half-close or idle timeout;
``heartbeat``
    this node's row in the store's ``nodes`` table, upserted every second
    (:mod:`~portmapper.server.nodes`), started once the admin API listens,
    so that it has the admin URL to give.

Stopping thus stops the admin API and the client port, then the public
ports, closes every channel and link, and closes the store last.
"""

import ipaddress
import os

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from portmapper.config import SERVER_KEYS, ServerSettings, make_options
from portmapper.server.admin import AdminAPI
from portmapper.server.core import PortMapperServer
from portmapper.server.link import ServerLinkFactory
from portmapper.server.meter import Sampler
from portmapper.server.services import AdminSite, InOrder, Listener, StoreService
from portmapper.server.store import Store
from portmapper.server.webhooks import Webhooks
from portmapper.startup import exit_when_failed
from portmapper.transport.endpoints import link_server_endpoint, server_endpoint

log = Logger()


class Options(make_options("server", SERVER_KEYS, ServerSettings, repeatable=("webhook",))):
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
    """The server's service (see the module docstring); a start that fails ends the process."""
    if reactor is None:
        from twisted.internet import reactor

    settings = config.settings
    if not settings.token:
        log.warn("no token is set: any client that reaches the client port may serve mappings")
    service = build(settings, reactor)
    exit_when_failed(reactor, service.ready, "the portmapper server could not start")
    return service


def make_store(settings, reactor):
    """The store ``settings`` name: PostgreSQL at ``database`` if given, else SQLite under ``data_dir``."""
    options = {"history_max_rows": settings.history_max_rows,
               "history_max_age": settings.history_max_age, "node": settings.node_name}
    if settings.database:
        from portmapper.server.store.postgres import Store as PostgresStore  # needs psycopg
        return PostgresStore(settings.database, reactor, **options)
    return Store(os.path.join(settings.data_dir, "portmapper.sqlite3"), reactor, **options)


def build(settings, reactor):
    """
    The :class:`~portmapper.server.services.InOrder` of the server's services
    for ``settings``; its ``ready`` fires once every one has started, with
    ``{"client-port": port, "admin": port, ...}`` (IListeningPorts).
    """
    store = make_store(settings, reactor)
    webhooks = Webhooks(settings.webhook, reactor)
    server = PortMapperServer(settings, reactor, store, webhooks)
    site = AdminSite(AdminAPI(server, settings.admin_token, metrics=server.metrics).app.resource())

    service = InOrder()
    for name, child in [
        ("store", StoreService(store)),
        ("webhooks", webhooks),
        ("server", server),
        ("client-port", Listener(link_server_endpoint(reactor, settings.client_port),
                                 ServerLinkFactory(server), server.clientPortListening)),
        ("admin", Listener(server_endpoint(reactor, settings.admin), site, server.adminListening)),
        ("sampler", Sampler(server.registry.meters, reactor, settings.sample_interval,
                            observe=server.metrics.sampler_tick.observe, sweep=server.sweep)),
        ("heartbeat", server.heartbeat),
    ]:
        child.setName(name)
        child.setServiceParent(service)

    def started(ports):
        admin = ports["admin"].getHost()
        log.info("portmapper server ready: clients on port {client_port}, admin API on {admin}, "
                 "{count} mapping(s)", client_port=server.client_port,
                 admin=f"{admin.host}:{admin.port}", count=len(server.registry.mappings))
        return ports

    service.ready.addCallback(started)
    return service
