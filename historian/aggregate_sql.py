"""The SQL of the aggregates: every statement the upkeep issues, and the upserts of the
three databases.

Why a module of their own: tests compile each statement for SQL Server (no server runs
here), and the upserts follow the writer's idempotent inserts (``historian/db.py``) --
PostgreSQL one statement of arrays per batch, SQLite the driver's executemany, SQL Server a
``MERGE … WITH (HOLDLOCK)`` that updates a matched row and inserts a missing one.
Statements that take a list of meters accept None for "every meter" (the caller narrows by
day or month and filters: PostgreSQL plans a long ``IN`` list slowly).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.engine import Connection

from st2000r.historian import db
from st2000r.historian.schema import daily_aggregates, installations, readings

__all__ = ["new_readings_stmt", "day_readings_stmt", "day_installations_stmt", "earlier_day_stmt", "later_days_stmt",
           "rows_stmt", "day_ends_stmt", "next_days_stmt", "merge_upsert_sql", "upsert_stmt", "pg_upsert_sql",
           "upsert"]

def new_readings_stmt(watermark: int, limit: int) -> Any:
    r = readings
    return (select(r.c.id, r.c.meter, r.c.read_at, r.c.value, r.c.quality).where(r.c.id > watermark)
            .order_by(r.c.id).limit(limit))


def _of(column: Any, meters: list[int] | None) -> list[Any]:
    return [] if meters is None else [column.in_(meters)]


def day_readings_stmt(meters: list[int] | None, start: datetime, end: datetime) -> Any:
    """Readings of ``meters`` (None: every meter) with ``start < read_at <= end``, per meter
    in time order."""
    r = readings
    return (select(r.c.meter, r.c.id, r.c.read_at, r.c.value, r.c.quality)
            .where(*_of(r.c.meter, meters), r.c.read_at > start, r.c.read_at <= end)
            .order_by(r.c.meter, r.c.read_at, r.c.id))


def day_installations_stmt(meters: list[int] | None, start: datetime, end: datetime) -> Any:
    """Installations of ``meters`` overlapping ``(start, end]`` (as ``queries.installations_stmt``)."""
    i = installations
    return (select(i.c.meter, i.c.installed_at, i.c.removed_at, i.c.start_value, i.c.final_value)
            .where(*_of(i.c.meter, meters), i.c.installed_at <= end,
                   (i.c.removed_at.is_(None)) | (i.c.removed_at > start))
            .order_by(i.c.meter, i.c.installed_at, i.c.id))


def earlier_day_stmt(meter: int, day: date) -> Any:
    """The meter's latest aggregated day before ``day`` that has a reading."""
    d = daily_aggregates
    return (select(d.c.day, d.c.last_at, d.c.last_value)
            .where(d.c.meter == meter, d.c.day < day, d.c.last_at.is_not(None))
            .order_by(d.c.day.desc()).limit(1))


def later_days_stmt(meter: int, day: date) -> Any:
    """The meter's aggregated days after ``day``."""
    d = daily_aggregates
    return select(d.c.day).where(d.c.meter == meter, d.c.day > day).order_by(d.c.day)


def rows_stmt(table: Any, period: str, meters: list[int] | None, when: date) -> Any:
    return select(table).where(*_of(table.c.meter, meters), table.c[period] == when)


def day_ends_stmt(meters: list[int] | None, day: date) -> Any:
    d = daily_aggregates
    return select(d.c.meter, d.c.last_at, d.c.last_value).where(*_of(d.c.meter, meters), d.c.day == day,
                                                                d.c.last_at.is_not(None))


def next_days_stmt(meters: list[int] | None, day: date) -> Any:
    d = daily_aggregates
    return (select(d.c.meter, func.min(d.c.day).label("day")).where(*_of(d.c.meter, meters), d.c.day > day)
            .group_by(d.c.meter))


# ---------------------------------------------------------------- upserts


def merge_upsert_sql(table: Any, keys: tuple[str, ...], dialect: Any) -> str:
    """SQL Server's upsert of one row (every column but the IDENTITY key): a ``MERGE … WITH
    (HOLDLOCK)`` that updates a matched row and inserts a missing one."""
    q = dialect.identifier_preparer.quote
    columns = [c.name for c in table.columns if c.name != "id"]
    source = ", ".join(f":{c} AS {q(c)}" for c in columns)
    on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in keys)
    sets = ", ".join(f"t.{q(c)} = s.{q(c)}" for c in columns if c not in keys)
    return (f"MERGE INTO {q(table.name)} WITH (HOLDLOCK) AS t USING (SELECT {source}) AS s ON {on} "
            f"WHEN MATCHED THEN UPDATE SET {sets} "
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(q(c) for c in columns)}) "
            f"VALUES ({', '.join(f's.{q(c)}' for c in columns)});")


def upsert_stmt(table: Any, keys: tuple[str, ...], dialect: Any) -> Any:
    """Insert-or-update of ``table`` rows by ``keys`` for ``dialect`` (``ON CONFLICT … DO
    UPDATE`` on PostgreSQL and SQLite, the ``MERGE`` on SQL Server); executemany."""
    columns = [c.name for c in table.columns if c.name != "id"]
    if dialect.name in ("postgresql", "sqlite"):
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(table)
        return stmt.on_conflict_do_update(index_elements=list(keys),
                                          set_={c: stmt.excluded[c] for c in columns if c not in keys})
    if dialect.name == "mssql":
        return text(merge_upsert_sql(table, keys, dialect)).bindparams(
            *[bindparam(c, type_=table.c[c].type) for c in columns])
    raise ValueError(f"no upsert for the {dialect.name} dialect")


def pg_upsert_sql(table: Any, keys: tuple[str, ...], dialect: Any) -> str:
    """PostgreSQL's upsert of a whole batch as one statement, one array parameter per
    column (the writer's ``db.unnest_sql``, updating instead of skipping a row that is
    there): psycopg's executemany would send a statement per row."""
    q = dialect.identifier_preparer.quote
    skip = db.unnest_sql(table, keys, dialect)
    assert skip.endswith(" DO NOTHING")
    sets = ", ".join(f"{q(c.name)} = EXCLUDED.{q(c.name)}" for c in table.columns
                     if c.name != "id" and c.name not in keys)
    return skip.removesuffix("DO NOTHING") + f"DO UPDATE SET {sets}"


def upsert(conn: Connection, table: Any, keys: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Insert or update ``rows`` (dicts by column) of ``table`` by ``keys``: one array
    statement on PostgreSQL with psycopg, the driver's executemany on SQLite, SQLAlchemy's
    executemany of :func:`upsert_stmt` (the ``MERGE``) on SQL Server."""
    if not rows:
        return
    dialect = conn.dialect
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        columns = [c.name for c in table.columns if c.name != "id"]
        conn.exec_driver_sql(pg_upsert_sql(table, keys, dialect), {c: [row[c] for row in rows] for c in columns})
        return
    if dialect.name == "sqlite":
        sql, processors = _sqlite_upsert(table, keys, dialect)
        conn.exec_driver_sql(sql, [tuple(row[name] if process is None else process(row[name])
                                         for name, process in processors) for row in rows])
        return
    conn.execute(upsert_stmt(table, keys, dialect), rows)


_SQLITE_UPSERTS: dict[str, tuple[str, list[tuple[str, Any]]]] = {}


def _sqlite_upsert(table: Any, keys: tuple[str, ...], dialect: Any) -> tuple[str, list[tuple[str, Any]]]:
    """:func:`upsert_stmt` compiled once for SQLite with each parameter's column and
    SQLAlchemy's own bind processor, for the driver's executemany (as ``db.write_ignoring``
    does: SQLAlchemy's per-row parameter work was a third of a chunk's upsert)."""
    found = _SQLITE_UPSERTS.get(table.name)
    if found is None:
        names = [c.name for c in table.columns if c.name != "id"]
        compiled = upsert_stmt(table, keys, dialect).compile(dialect=dialect, column_keys=names)
        processors = [(name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
                      for name in compiled.positiontup]
        found = _SQLITE_UPSERTS[table.name] = (str(compiled), processors)
    return found
