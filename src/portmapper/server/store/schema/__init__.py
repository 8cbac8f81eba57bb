"""
The store's versioned schema: numbered SQL files, and :func:`migrate`, which
brings a database of any known version to :data:`LATEST`.

Files (package data, next to this module):

- ``v1.sql``: the schema of the first release, which kept no version
  number.  Never edited.
- ``upgrade-N.sql``: takes a database from version N-1 to version N.  It
  must not contain ``BEGIN``/``COMMIT``: :func:`migrate` wraps it, together
  with the update of the version number, in one transaction.

The version lives in the one-row table ``schema_version``.  A database with
no table at all is new: it gets ``v1.sql``, the version table and every
upgrade in one transaction, so it exists at :data:`LATEST` or not at all.
A database with the version-1 tables and no ``schema_version`` was made by
the first release: it is version 1.  Then each missing upgrade runs in a
transaction of its own, in order; one that fails is rolled back and leaves
the database at the version before it.  A database newer than
:data:`LATEST` is refused.

:func:`migrate` never touches a database itself: a backend hands it an
object that lists tables, reads rows and runs a script as one transaction
(see :func:`migrate`), so every backend follows the same rules.

Other backends keep their own files, in their SQL dialect, in a folder of
their own (``postgres/`` for PostgreSQL) with the same names and the same
numbering: version N means the same tables and columns in every backend.

To change the schema: add ``upgrade-N.sql`` for N = :data:`LATEST` + 1 to
this folder and to every backend's folder, and raise :data:`LATEST`.
"""

from importlib.resources import files

#: The version this code creates, and the newest it can use.
LATEST = 6

#: The tables of version 1: with them and no ``schema_version``, a database
#: was made by the first release.
V1_TABLES = frozenset({"mappings", "channel_history", "client_history", "last_ids"})

VERSION_TABLE = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES (1);
"""


class SchemaError(Exception):
    """The database cannot be used as it is; the message is one sentence for the operator."""


def read(name):
    """The text of the schema file ``name`` (``v1.sql``, ``upgrade-2.sql``...)."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


def upgrade(version, folder=""):
    """The script that takes a database from ``version - 1`` to ``version``, version update included."""
    return f"{read(folder + f'upgrade-{version}.sql')}\nUPDATE schema_version SET version = {version};\n"


def migrate(db, where, folder=""):
    """
    Bring the database behind ``db`` to :data:`LATEST`; return ``(found,
    LATEST)`` where ``found`` is the version it had (``None`` if it was new).

    ``db`` offers ``tables()`` (the set of table names), ``rows(sql)`` (the
    rows of a query, as tuples), ``transaction(script)`` (run the SQL
    statements of ``script`` in one transaction: all or nothing) and
    ``Error`` (the base of the errors these raise).  ``where`` names the
    database in messages.  ``folder`` is where the backend's files are
    (``""`` for SQLite's, ``"postgres/"``).  Raises :class:`SchemaError`.
    """
    tables = db.tables()
    if not tables:
        script = read(folder + "v1.sql") + VERSION_TABLE + "".join(
            upgrade(version, folder) for version in range(2, LATEST + 1))
        try:
            db.transaction(script)
        except db.Error as e:
            raise SchemaError(f"Could not create the database {where}: {e}.") from e
        return None, LATEST

    if "schema_version" in tables:
        found = _version(db, where)
    elif V1_TABLES <= tables:
        db.transaction(VERSION_TABLE)
        found = 1
    else:
        raise SchemaError(
            f"{where} is not a portmapper database: it has the tables"
            f" {', '.join(sorted(tables))} but no schema_version table.")
    if found > LATEST:
        raise SchemaError(
            f"{where} has schema version {found}, but this portmapper knows versions"
            f" up to {LATEST} only: run a newer portmapper, or use another data directory.")
    for version in range(found + 1, LATEST + 1):
        script = upgrade(version, folder)
        try:
            db.transaction(script)
        except db.Error as e:
            raise SchemaError(
                f"Could not upgrade {where} from schema version {version - 1} to {version}"
                f" ({e}), so it is left at version {version - 1}.") from e
    return found, LATEST


def _version(db, where):
    rows = db.rows("SELECT version FROM schema_version")
    if len(rows) != 1 or not isinstance(rows[0][0], int) or rows[0][0] < 1:
        raise SchemaError(
            f"{where} has a damaged schema_version table: it should hold one version number.")
    return rows[0][0]
