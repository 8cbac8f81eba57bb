"""
What the admin API needs from the running server, as a zope interface.

:class:`~portmapper.server.admin.AdminAPI` takes an
:class:`IPortMapperServer` and uses nothing else of it, so its tests can
drive it with a small fake (checked against this interface with
``zope.interface.verify.verifyObject``, as the real server is).
"""

from zope.interface import Attribute, Interface


class IPortMapperServer(Interface):
    """The live state and the operations the admin API offers."""

    clock = Attribute("An IReactorTime: clock.seconds() is now, for durations and speeds.")
    client_port = Attribute("The port number tunnel clients dial; None until it listens.")
    node_name = Attribute("This server's name among the nodes of its cluster.")

    # -- the cluster -----------------------------------------------------------

    def node():
        """This node: ``name``, ``version``, ``started_time`` (clock time), ``client_port``."""

    def nodes():
        """
        Every node known (this one among them), by name: dicts with ``name``,
        ``version``, ``started_time``, ``client_port``, ``admin_url``,
        ``heartbeat_age`` (seconds, or None), ``alive``, ``clients``, ``channels``.
        """

    # -- live state: read-only views, never changed by the caller ------------

    def mappings():
        """The port mappings: public port -> :class:`~portmapper.server.registry.Mapping`."""

    def clients():
        """The connected clients: client_id -> :class:`~portmapper.server.registry.ClientSession`."""

    def channels():
        """The open channels: channel_id -> :class:`~portmapper.server.registry.Channel`."""

    def credentials():
        """The credentials not revoked: credential_id -> :class:`~portmapper.server.registry.Credential`."""

    # -- operations: each fails with a PortMapperError the API turns into a status --

    def add_mapping(public_port, target_ip, target_port, tag, policies):
        """
        Listen on ``public_port`` for ``target_ip:target_port`` over a client
        tagged ``tag`` and store the mapping with its ``policies`` (a dict,
        name -> value as :data:`portmapper.validate.POLICIES` parses it).
        Returns (or a Deferred fires with) the new Mapping once it listens;
        fails with MappingExists or PortUnavailable.
        """

    def change_mapping(public_port, changes):
        """
        Change the mapping of ``public_port`` live (``changes``: ``target_ip``,
        ``target_port``, ``tag`` or a policy's name -> the new value, None
        removing a policy) and store it.  Returns (or a Deferred fires with)
        the Mapping; fails with UnknownMapping.
        """

    def remove_mapping(public_port):
        """Stop listening on ``public_port``, close its channels, forget it; UnknownMapping if none."""

    def kick_client(client_id):
        """Drop a connected client's link; UnknownClient if none."""

    def close_channel(channel_id):
        """Close an open channel; UnknownChannel if none."""

    def issue_credential(tag, name=None):
        """A new credential for clients tagged ``tag``: a Deferred firing with (Credential, token)."""

    def revoke_credential(credential_id):
        """Refuse a credential from now on and drop its clients; UnknownCredential if none."""

    # -- history: Deferreds firing with lists of dicts, newest first ----------

    def channel_history(port=None, client_id=None, channel_id=None, limit=100, before=None):
        """Closed channels matching every filter given (``channel_id < before``), at most ``limit``."""

    def client_history(client_id=None, limit=100, before=None):
        """Disconnected clients (``client_id < before`` if given), at most ``limit``."""
