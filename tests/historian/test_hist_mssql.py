"""Every statement the historian issues, compiled for SQL Server (no server runs here).

The compiled SQL is checked for what SQL Server needs: NVARCHAR text, DATETIMEOFFSET
times, BIGINT IDENTITY keys, ``MERGE … WITH (HOLDLOCK)`` as the idempotent insert (SQL
Server has no ``ON CONFLICT``), views that compile with literal values, and paging with
``OFFSET … FETCH``.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import mssql
from sqlalchemy.dialects.mssql import pyodbc as mssql_pyodbc
from sqlalchemy.schema import CreateIndex, CreateTable

from st2000r.historian import db
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
    assert [s.split()[2] for s in ddl] == ["v_readings", "v_latest_readings", "v_alarm_history", "v_command_history"]
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
