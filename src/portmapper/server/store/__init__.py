"""
The server's persistent storage: port mappings, credentials, closed-channel
and client history.

:class:`Store` is the SQLite backend (:mod:`.sqlite`), the only one so far.
Its schema is versioned: :mod:`.schema` holds the numbered SQL files and
the rule that brings a database of any known version to the current one.
"""

from portmapper.server.store.sqlite import CHANNEL_KEYS, CLIENT_KEYS, CREDENTIAL_KEYS, Store

__all__ = ["CHANNEL_KEYS", "CLIENT_KEYS", "CREDENTIAL_KEYS", "Store"]
