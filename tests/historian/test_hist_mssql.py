"""Every statement the historian issues, compiled for SQL Server (no server runs here).

The compiled SQL is checked for what SQL Server needs: NVARCHAR text, DATETIMEOFFSET
times, BIGINT IDENTITY keys, ``MERGE … WITH (HOLDLOCK)`` as the idempotent insert (SQL
Server has no ``ON CONFLICT``), views that compile with literal values, and paging with
``OFFSET … FETCH``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import mssql
from sqlalchemy.dialects.mssql import pyodbc as mssql_pyodbc
from sqlalchemy.schema import CreateIndex, CreateTable

from st2000r.historian import db, queries
from st2000r.historian.schema import metadata, readings
from st2000r.historian.views import view_ddl

DIALECT = mssql_pyodbc.dialect(paramstyle="qmark")  # what pyodbc uses


@pytest.mark.parametrize("name", sorted(metadata.tables))
def test_ddl_compiles_for_sql_server(name):
    table = metadata.tables[name]
    ddl = str(CreateTable(table).compile(dialect=DIALECT))
    assert "id BIGINT NOT NULL IDENTITY" in ddl
    assert "VARCHAR(" not in ddl.replace("NVARCHAR(", "")  # text is NVARCHAR
    if "_at" in ddl:
        assert "DATETIMEOFFSET" in ddl and "DATETIME " not in ddl
    for index in table.indexes:
        assert str(CreateIndex(index).compile(dialect=DIALECT)).startswith("CREATE INDEX ix_")


def test_views_compile_for_sql_server():
    ddl = view_ddl(DIALECT)
    assert [s.split()[2] for s in ddl] == ["v_readings", "v_latest_readings", "v_alarm_history", "v_command_history",
                                           "v_daily_consumption", "v_monthly_consumption"]
    latest = ddl[1]
    assert "row_number() OVER (PARTITION BY readings.meter ORDER BY readings.read_at DESC, readings.id DESC)" in latest
    assert "WHERE ranked.rn = 1" in latest
    assert "?" not in "".join(ddl) and ":" not in latest.replace("::", "")  # no parameters in a view


def test_idempotent_insert_is_a_merge_with_holdlock():
    stmt = db.insert_ignoring(readings, ("meter", "read_at", "source"), DIALECT)
    sql = str(stmt.compile(dialect=DIALECT))
    assert sql.startswith("MERGE INTO readings WITH (HOLDLOCK) AS t USING (SELECT ? AS meter, ? AS read_at, ")
    assert "ON t.meter = s.meter AND t.read_at = s.read_at AND t.source = s.source" in sql
    assert "WHEN NOT MATCHED THEN INSERT (meter, read_at, source, value," in sql
    assert "[plan]" in sql  # a reserved word, quoted
    assert sql.endswith(";")
    assert sql.count("?") == len(readings.columns) - 1  # every column but the IDENTITY key, one parameter each


def test_batched_insert_uses_fast_executemany():
    engine = db.make_engine("mssql+pyodbc://u:p@dsn")  # made, never connected
    assert engine.dialect.fast_executemany is True
    stmt = db.insert_ignoring(readings, ("meter", "read_at", "source"), engine.dialect)
    assert str(stmt.compile(dialect=engine.dialect)).startswith("MERGE INTO readings WITH (HOLDLOCK) AS t USING "
                                                                "(SELECT ? AS meter")


def test_paging_is_keyset_paging_with_top():
    """Exports page by key (``WHERE id > last ORDER BY id``), which SQL Server runs as TOP."""
    page = select(readings.c.id, readings.c.value).where(readings.c.id > 2000).order_by(readings.c.id).limit(1000)
    sql = str(page.compile(dialect=mssql.dialect(), compile_kwargs={"literal_binds": True}))
    assert " ".join(sql.split()) == ("SELECT TOP 1000 readings.id, readings.value FROM readings "
                                      "WHERE readings.id > 2000 ORDER BY readings.id")


# ---------------------------------------------------------------- billing queries (historian/queries.py)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 2, 1, 8, tzinfo=timezone(timedelta(hours=8)))  # an offset other than UTC
#: what the billing queries may use: plain comparisons, joins, ORDER BY, TOP -- no function
#: that SQL Server lacks (LIMIT, ILIKE, NOW(), ||, GREATEST, ...)
NOT_ON_SQL_SERVER = re.compile(r"\b(LIMIT|OFFSET \d+ ROWS(?! FETCH)|ILIKE|NULLS (FIRST|LAST)|GREATEST|LEAST|NOW|"
                               r"STRFTIME|DATE_TRUNC|RETURNING|ON CONFLICT)\b|\|\|", re.IGNORECASE)

BILLING_SELECTS = {
    "usage: installations of a household": queries.installations_stmt("B001-01", T0, T1),
    "usage: value before the period (installed)": queries.value_before_stmt(7, T0, None, T1),
    "usage: value before the period (removed)": queries.value_before_stmt(7, T0, T1, T1),
    "usage: values inside the period": queries.values_inside_stmt(7, T0, T1, T0, T1),
    "suspicious": queries.suspicious_stmt(T0, T1),
    "export page": queries.export_page_stmt(T0, T1, 20_000, 10_000),
}


def compiled(stmt):
    """The SQL as pyodbc receives it (``render_postcompile``: TOP's number filled in) and
    the parameter values after the dialect's bind processors, in ``?`` order."""
    c = stmt.compile(dialect=DIALECT, compile_kwargs={"render_postcompile": True})
    params = c.construct_params()
    procs = c._bind_processors
    values = [procs[k](params[k]) if k in procs else params[k] for k in c.positiontup]
    return " ".join(str(c).split()), values


@pytest.mark.parametrize("name", sorted(BILLING_SELECTS))
def test_billing_selects_compile_for_sql_server(name):
    sql, values = compiled(BILLING_SELECTS[name])
    assert sql.startswith("SELECT ")
    assert not NOT_ON_SQL_SERVER.search(sql), sql
    assert sql.count("?") == len(values)
    # every time goes out as text with its offset, which SQL Server converts to DATETIMEOFFSET
    # exactly (a naive DATETIME parameter would compare at the server's local time)
    times = [v for v in values if isinstance(v, str) and re.fullmatch(r"\d{4}-\d\d-\d\d .*", v)]
    assert times and all(re.search(r"[+-]\d\d:\d\d$", v) for v in times), values
    assert "2026-02-01 08:00:00.000000+08:00" in values or "2026-01-01 00:00:00.000000+00:00" in values


def test_usage_takes_the_value_before_the_period_with_top_1():
    sql, values = compiled(queries.value_before_stmt(7, T0, T1, T1))
    assert sql == ("SELECT TOP 1 readings.value FROM readings WHERE readings.meter = ? AND readings.read_at >= ? "
                   "AND readings.read_at <= ? AND readings.read_at <= ? ORDER BY readings.read_at DESC, "
                   "readings.id DESC")
    assert values == [7, "2026-01-01 00:00:00.000000+00:00", "2026-02-01 08:00:00.000000+08:00",
                      "2026-02-01 08:00:00.000000+08:00"]


def test_usage_reads_installations_with_open_ones():
    sql, values = compiled(queries.installations_stmt("一号楼-101", T0, T1))
    assert ("WHERE meter_installations.household = ? AND meter_installations.installed_at <= ? AND "
            "(meter_installations.removed_at IS NULL OR meter_installations.removed_at > ?) "
            "ORDER BY meters.meter_id, meter_installations.installed_at") in sql
    assert values[0] == "一号楼-101"  # pyodbc sends str as NVARCHAR: a Chinese household name survives


def test_suspicious_reads_in_meter_and_time_order_without_a_limit():
    sql, _ = compiled(queries.suspicious_stmt(T0, T1))
    assert sql.endswith("ORDER BY meters.meter_id, readings.read_at, readings.id")
    assert "TOP" not in sql


def test_export_pages_by_key_with_top_not_limit():
    sql, values = compiled(queries.export_page_stmt(T0, T1, 20_000, 10_000))
    assert sql.startswith("SELECT TOP 10000 readings.id, meters.meter_id, meters.household,")
    assert sql.endswith("WHERE readings.id > ? AND readings.read_at >= ? AND readings.read_at < ? "
                        "ORDER BY readings.id")
    assert values[0] == 20_000
    # without the key an export would need OFFSET ... FETCH, which SQL Server only accepts
    # with an ORDER BY; keyset paging needs neither and stays an index range scan
    assert "OFFSET" not in sql and "FETCH" not in sql
