"""Opening a historian database, checking and upgrading its schema, idempotent inserts.

Blocking: every function here does I/O and runs off the reactor (the writer thread, or a
command-line tool).  Why each piece:

- :func:`make_engine` opens every database the same way: SQLite in WAL mode with
  ``synchronous=FULL`` (a commit survives a power cut) and a busy timeout; PostgreSQL with
  a short connect timeout (an unreachable server must fail fast so the writer spools);
  SQL Server through pyodbc with ``fast_executemany`` (else every row is a round trip);
- :func:`schema_status` compares the database's Alembic revision with the newest one
  shipped (``st2000r run`` refuses an older schema and names the command that fixes it);
- :func:`insert_ignoring` is the idempotent insert the spool replay relies on: PostgreSQL
  and SQLite ``ON CONFLICT DO NOTHING``; SQL Server has no such clause, so there it is a
  ``MERGE … WITH (HOLDLOCK)`` (the lock hint closes the race between the match and the
  insert).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.sql.elements import TextClause

__all__ = ["make_engine", "default_url", "SchemaStatus", "schema_status", "upgrade", "head_revision",
           "insert_ignoring", "merge_sql", "UPGRADE_HINT", "describe_url"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
UPGRADE_HINT = "st2000r db upgrade {config}"
CONNECT_TIMEOUT_S = 3


def default_url(state_dir: str | os.PathLike[str]) -> str:
    """The embedded default: ``historian.sqlite`` in the state folder."""
    return "sqlite:///" + os.path.abspath(os.path.join(os.fspath(state_dir), "historian.sqlite"))


def describe_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` set up as the module docstring says.  Raises
    ``sqlalchemy.exc.ArgumentError`` for a malformed URL and ``ModuleNotFoundError`` when
    the driver is not installed (``pip install st2000r[postgresql]`` / ``[mssql]``)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    options: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
    elif backend == "postgresql":
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    elif backend == "mssql":
        options["fast_executemany"] = True
        options["connect_args"] = {"timeout": CONNECT_TIMEOUT_S}
    options.update(kwargs)
    engine = create_engine(parsed, **options)
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema revision shipped with this version."""
    from alembic.script import ScriptDirectory

    config = _alembic_config(None)  # type: ignore[arg-type]
    return ScriptDirectory.from_config(config).get_current_head()


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """``current``: the database's revision (None: no historian schema yet); ``head``: the
    newest shipped.  ``ok``: they match; ``newer``: the database was upgraded by a later
    version of the supervisor (we do not know its revision)."""

    current: str | None
    head: str

    @property
    def ok(self) -> bool:
        return self.current == self.head

    @property
    def newer(self) -> bool:
        from alembic.script import ScriptDirectory

        if self.current is None:
            return False
        script = ScriptDirectory.from_config(_alembic_config(None))  # type: ignore[arg-type]
        try:
            script.get_revision(self.current)
        except Exception:
            return True
        return False

    def problem(self, config: str) -> str | None:
        """Why the supervisor must not write (None: it may), naming the command that fixes it."""
        if self.ok:
            return None
        if self.current is None:
            return f"the historian database has no schema yet: run '{UPGRADE_HINT.format(config=config)}'"
        if self.newer:
            return (f"the historian database has schema revision {self.current}, newer than this version knows "
                    f"({self.head}): upgrade the supervisor")
        return (f"the historian database has schema revision {self.current}, older than {self.head}: run "
                f"'{UPGRADE_HINT.format(config=config)}'")


def schema_status(connection: Connection) -> SchemaStatus:
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(connection).get_current_revision()
    return SchemaStatus(current, head_revision())


def upgrade(engine: Engine, revision: str = "head") -> SchemaStatus:
    """Create or upgrade the schema to ``revision``; returns the status after."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), revision)
    with engine.connect() as connection:
        return schema_status(connection)


def merge_sql(table: Table, keys: tuple[str, ...], dialect: Any) -> str:
    """SQL Server's idempotent insert of one row of ``table`` (every column but an
    autoincrementing key) matched on ``keys``, with named parameters ``:column``."""
    q = dialect.identifier_preparer.quote
    columns = [c.name for c in table.columns if not (c.primary_key and c.autoincrement in (True, "auto"))]
    source = ", ".join(f":{c} AS {q(c)}" for c in columns)
    on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in keys)
    names = ", ".join(q(c) for c in columns)
    values = ", ".join(f"s.{q(c)}" for c in columns)
    return (f"MERGE INTO {q(table.name)} WITH (HOLDLOCK) AS t USING (SELECT {source}) AS s ON {on} "
            f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values});")


def insert_ignoring(table: Table, keys: tuple[str, ...], dialect: Any) -> Any:
    """An insert of ``table`` rows that skips a row whose ``keys`` are already there, for
    ``dialect``; run it with ``connection.execute(stmt, [row, ...])`` (executemany)."""
    name = dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert(table).on_conflict_do_nothing(index_elements=list(keys))
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(keys))
    if name == "mssql":
        clause: TextClause = text(merge_sql(table, keys, dialect))
        return clause
    raise ValueError(f"no idempotent insert for the {name} dialect")
