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
  insert);
- :func:`write_ignoring` runs it for a batch of rows.  On PostgreSQL (psycopg 3, the driver
  of the ``postgresql`` extra) the batch goes as *one*
  statement whose parameters are one array per column (``INSERT … SELECT … FROM
  unnest(…) WITH ORDINALITY … ORDER BY ord ON CONFLICT DO NOTHING``): psycopg's executemany
  sends one statement per row (pipelined), and each row's parameters cost Python work on
  both sides -- measured, the arrays write a batch of 2,000 readings several times faster
  (``docs/performance.md``).  The ordinality keeps the keys in the batch's order (readings
  of one instant are told apart by insertion order).  On SQLite the compiled ``ON CONFLICT``
  insert goes straight to the driver's executemany with the values converted by
  SQLAlchemy's own bind processors (SQLAlchemy's per-row parameter handling cost about a
  fifth of a batch).  SQL Server uses SQLAlchemy's executemany of the ``MERGE`` (pyodbc's
  ``fast_executemany`` already sends one parameter array).
"""

from __future__ import annotations

import os
import re
from operator import itemgetter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.sql.elements import TextClause

__all__ = ["make_engine", "default_url", "SchemaStatus", "schema_status", "upgrade", "head_revision",
           "insert_ignoring", "merge_sql", "unnest_sql", "write_ignoring", "sqlite_compiled_insert", "UPGRADE_HINT",
           "describe_url"]

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
    columns = [c.name for c in _inserted_columns(table)]
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


def _inserted_columns(table: Table) -> list[Any]:
    return [c for c in table.columns if not (c.primary_key and c.autoincrement in (True, "auto"))]


def unnest_sql(table: Table, keys: tuple[str, ...], dialect: Any) -> str:
    """PostgreSQL's idempotent insert of a whole batch of ``table`` rows, as psycopg runs it:
    one parameter per column (``%(column)b``: an array of the batch's values, sent in
    psycopg's binary format -- dumping a list as text quotes every element in Python, about
    four times slower -- and cast to the column's type), rows in array order, those whose
    ``keys`` are already there skipped."""
    q = dialect.identifier_preparer.quote
    types = dialect.type_compiler_instance
    columns = _inserted_columns(table)
    # element types without a length: an explicit cast to VARCHAR(n) would cut a too-long
    # text silently, where the insert's own conversion rejects it (and the row goes to
    # quarantine, as with executemany)
    arrays = ", ".join(f"CAST(%({c.name})b AS {re.sub(r'[(][0-9, ]+[)]', '', types.process(c.type))}[])"
                       for c in columns)
    aliases = [f"c{n}" for n in range(len(columns))]
    return (f"INSERT INTO {q(table.name)} ({', '.join(q(c.name) for c in columns)}) "
            f"SELECT {', '.join(aliases)} FROM unnest({arrays}) WITH ORDINALITY AS u({', '.join(aliases)}, ord) "
            f"ORDER BY ord ON CONFLICT ({', '.join(q(k) for k in keys)}) DO NOTHING")


def write_ignoring(conn: Connection, table: Table, keys: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts by column name) of ``table`` on ``conn``, skipping those whose
    ``keys`` are already there (module docstring: one array statement on PostgreSQL, the
    driver's executemany on SQLite, SQLAlchemy's on SQL Server)."""
    if not rows:
        return
    dialect = conn.dialect
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        params = {c.name: [row.get(c.name) for row in rows] for c in _inserted_columns(table)}
        conn.exec_driver_sql(unnest_sql(table, keys, dialect), params)
        return
    if dialect.name == "sqlite":
        sql, processors = sqlite_compiled_insert(table, keys, dialect)
        conn.exec_driver_sql(sql, _sqlite_params(processors, rows))
        return
    conn.execute(insert_ignoring(table, keys, dialect), rows)


def _sqlite_params(processors: list[tuple[str, Any]], rows: list[dict[str, Any]]) -> list[tuple]:
    """``rows`` as the driver's parameter tuples: one C-level ``itemgetter`` a row, and the
    bind processors run once per distinct value of their column (a batch of readings shares
    a few reply times: measured, a third of the conversion's time went to per-row work)."""
    get = itemgetter(*(name for name, _ in processors))
    try:
        params = [get(row) for row in rows]
    except KeyError:  # rows without some column: as connection.execute would, None for it
        params = [tuple(row.get(name) for name, _ in processors) for row in rows]
    if len(processors) == 1:
        params = [(p,) for p in params]
    converting = [(i, process) for i, (_, process) in enumerate(processors) if process is not None]
    if not converting:
        return params
    done: dict[tuple[int, Any], Any] = {}
    out = []
    for values in params:
        values = list(values)
        for i, process in converting:
            value = values[i]
            if value is None:
                continue
            try:
                values[i] = done[(i, value)]
            except KeyError:
                values[i] = done[(i, value)] = process(value)
            except TypeError:  # unhashable: converted every time
                values[i] = process(value)
        out.append(tuple(values))
    return out


_SQLITE_INSERTS: dict[tuple[str, tuple[str, ...]], tuple[str, list[tuple[str, Any]]]] = {}


def sqlite_compiled_insert(table: Table, keys: tuple[str, ...], dialect: Any) -> tuple[str, list[tuple[str, Any]]]:
    """The ``ON CONFLICT DO NOTHING`` insert compiled once for SQLite (``?`` parameters) and,
    per parameter, its column and SQLAlchemy's own bind processor for that column's type
    (times -> text, booleans -> 0/1; None: passed as is), so rows stored through the
    driver's executemany are byte for byte what ``connection.execute`` would store, without
    SQLAlchemy's per-row parameter work (measured: a batch of 2,000 readings 26 ms instead
    of 33-37 ms)."""
    found = _SQLITE_INSERTS.get((table.name, keys))
    if found is None:
        names = [c.name for c in _inserted_columns(table)]
        compiled = insert_ignoring(table, keys, dialect).compile(dialect=dialect, column_keys=names)
        processors = [(name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
                      for name in compiled.positiontup]
        found = _SQLITE_INSERTS[(table.name, keys)] = (str(compiled), processors)
    return found
