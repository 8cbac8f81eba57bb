"""
The server's persistent storage: port mappings, credentials, closed-channel
and client history.

:class:`Store` is the SQLite backend (:mod:`.sqlite`), the default.  The
PostgreSQL backend, for servers that share one database, is
:class:`.postgres.Store`: same interface, imported only when chosen, since
it needs psycopg (the ``postgres`` extra); :mod:`.notify` is how servers
sharing it hear each other's mapping changes.  The schema is versioned:
:mod:`.schema` holds the numbered SQL files (PostgreSQL's in
``schema/postgres/``) and the rule that brings a database of any known
version to the current one.
"""

from portmapper.server.store.sqlite import CHANNEL_KEYS, CLIENT_KEYS, CREDENTIAL_KEYS, Store

__all__ = ["CHANNEL_KEYS", "CLIENT_KEYS", "CREDENTIAL_KEYS", "Store"]
