"""
Errors an operator or a peer can cause.

Each carries one sentence fit to show as is (``str(error)``) and, for the
admin API, the HTTP status it stands for.  Nothing here is a bug: code that
raises these has already decided the input was bad and changed nothing.
"""


class PortMapperError(Exception):
    """Base of the errors whose message is meant for the operator."""

    status = 400


class BadParameter(PortMapperError):
    """A request parameter is missing or malformed."""

    status = 400


class Unauthorized(PortMapperError):
    """The admin request carries no valid token."""

    status = 401


class NotFound(PortMapperError):
    """An id or port names nothing we know."""

    status = 404


class UnknownMapping(NotFound):
    def __init__(self, port):
        super().__init__(f"No port mapper on port {port}.")
        self.port = port


class UnknownClient(NotFound):
    def __init__(self, client_id):
        super().__init__(f"No connected client with client_id {client_id}.")
        self.client_id = client_id


class UnknownChannel(NotFound):
    def __init__(self, channel_id):
        super().__init__(f"No open channel with channel_id {channel_id}.")
        self.channel_id = channel_id


class UnknownCredential(NotFound):
    def __init__(self, credential_id):
        super().__init__(f"No credential with credential_id {credential_id} (or it is revoked already).")
        self.credential_id = credential_id


class Conflict(PortMapperError):
    status = 409


class MappingExists(Conflict):
    def __init__(self, port):
        super().__init__(f"Create port mapper failed,port:{port} already exists")
        self.port = port


class PortUnavailable(Conflict):
    """The OS (or our own use of the port) will not let us listen there."""

    def __init__(self, port, why):
        super().__init__(f"Create port mapper failed, port {port} cannot be listened on: {why}")
        self.port = port
        self.why = why


class DatabaseUnavailable(PortMapperError):
    """The shared database cannot be reached: a write must wait until it is back."""

    status = 503
