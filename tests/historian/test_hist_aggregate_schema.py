"""Revision 0002 (aggregates) on SQLite and PostgreSQL: an old database upgrades to exactly
the model, and back; every statement of the aggregates and the purge compiled for SQL
Server."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.dialects.mssql import pyodbc as mssql_pyodbc
from sqlalchemy.schema import CreateTable

from st2000r.historian import aggregate_queries, aggregate_sql, db, retention
from st2000r.historian.schema import daily_aggregates, metadata, monthly_aggregates, view_selects

DIALECT = mssql_pyodbc.dialect(paramstyle="qmark")
AGG_VIEWS = ("v_daily_consumption", "v_monthly_consumption")
AGG_TABLES = ("daily_aggregates", "monthly_aggregates", "aggregate_state")
VIEW_COLUMNS = ["meter_id", "household", "kind", "PERIOD", "first_at", "first_value", "last_at", "last_value",
                "consumption", "base_unit", "rollovers", "reversals", "n_readings", "n_good", "n_stale",
                "n_comm_fail", "n_estimated", "n_substituted", "n_other"]


def test_an_old_database_upgrades_to_exactly_the_model_and_back(db_url):
    engine = db.make_engine(db_url)
    try:
        assert db.upgrade(engine, "0001").current == "0001"
        with engine.connect() as conn:
            found = inspect(conn)
            assert not set(AGG_TABLES) & set(found.get_table_names())
            assert not set(AGG_VIEWS) & set(found.get_view_names())
            assert db.schema_status(conn).problem("site.toml") == (
                "the historian database has schema revision 0001, older than 0002: run 'st2000r db upgrade site.toml'")
        assert db.upgrade(engine).current == db.head_revision() == "0002"
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
            assert diff == []
            for view, period in zip(AGG_VIEWS, ("day", "month")):
                keys = list(conn.execute(text(f"SELECT * FROM {view}")).keys())
                assert keys == [period if c == "PERIOD" else c for c in VIEW_COLUMNS]
                assert keys == list(view_selects()[view].selected_columns.keys())
        from alembic import command

        with engine.begin() as conn:
            command.downgrade(db._alembic_config(conn), "0001")
        with engine.connect() as conn:
            found = inspect(conn)
            assert not set(AGG_TABLES) & set(found.get_table_names())
            assert set(found.get_view_names()) >= {"v_readings", "v_latest_readings"}
        assert db.upgrade(engine).ok
    finally:
        engine.dispose()


# ---------------------------------------------------------------- SQL Server

T0, T1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
NOT_ON_SQL_SERVER = re.compile(r"\b(LIMIT|ILIKE|NULLS (FIRST|LAST)|GREATEST|LEAST|NOW|STRFTIME|DATE_TRUNC|RETURNING|"
                               r"ON CONFLICT)\b|\|\|", re.IGNORECASE)

SELECTS = {
    "new readings above the watermark": aggregate_sql.new_readings_stmt(1_000, 10_000),
    "a day's readings": aggregate_sql.day_readings_stmt([1, 2, 3], T0, T1),
    "a day's installations": aggregate_sql.day_installations_stmt([1, 2, 3], T0, T1),
    "the latest earlier day": aggregate_sql.earlier_day_stmt(7, date(2026, 1, 5)),
    "stored days": aggregate_sql.rows_stmt(daily_aggregates, "day", [1, 2], date(2026, 1, 5)),
    "stored months": aggregate_sql.rows_stmt(monthly_aggregates, "month", [1, 2], date(2026, 1, 1)),
    "next aggregated days": aggregate_sql.next_days_stmt([1, 2], date(2026, 1, 5)),
    "next aggregated days, every meter": aggregate_sql.next_days_stmt(None, date(2026, 1, 5)),
    "last readings of a day": aggregate_sql.day_ends_stmt([1, 2], date(2026, 1, 5)),
    "a day's readings, every meter": aggregate_sql.day_readings_stmt(None, T0, T1),
    "later aggregated days": aggregate_sql.later_days_stmt(7, date(2026, 1, 5)),
    "purge: keys of a chunk": retention.purge_ids_stmt(T1, 5_000, 5_000),
    "purge: delete a chunk": retention.purge_delete_stmt(10, 5_009, T1, 5_000),
    "usage: days of a meter": aggregate_queries.days_stmt(7, date(2026, 1, 1), date(2026, 1, 31)),
    "usage: aggregated value before": aggregate_queries.aggregate_before_stmt(7, T0, T1),
    "usage: raw value before": aggregate_queries.reading_before_stmt(7, T0, None, T1),
    "usage: successor": aggregate_queries.successor_stmt(7, T1),
}


@pytest.mark.parametrize("name", sorted(SELECTS))
def test_statements_compile_for_sql_server(name):
    c = SELECTS[name].compile(dialect=DIALECT, compile_kwargs={"render_postcompile": True})
    sql = " ".join(str(c).split())
    assert not NOT_ON_SQL_SERVER.search(sql), sql
    params = c.construct_params()
    procs = c._bind_processors
    values = [procs[k](params[k]) if k in procs else params[k] for k in c.positiontup]
    assert sql.count("?") == len(values)
    for v in values:  # times go out with their offset, days as dates
        if isinstance(v, str) and re.match(r"\d{4}-\d\d-\d\d", v):
            assert re.fullmatch(r"\d{4}-\d\d-\d\d( \d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d)?", v), v


def test_limited_selects_use_top():
    sql = str(retention.purge_ids_stmt(T1, 5_000, 5_000).compile(dialect=DIALECT,
                                                                 compile_kwargs={"render_postcompile": True}))
    assert " ".join(sql.split()).startswith("SELECT TOP 5000 readings.id FROM readings WHERE readings.read_at <= ?")
    sql = str(aggregate_sql.earlier_day_stmt(7, date(2026, 1, 5)).compile(dialect=DIALECT,
                                                                       compile_kwargs={"render_postcompile": True}))
    assert "TOP 1" in sql and "ORDER BY daily_aggregates.day DESC" in sql


def test_upsert_is_a_merge_that_updates_or_inserts():
    stmt = aggregate_sql.upsert_stmt(daily_aggregates, ("meter", "day"), DIALECT)
    compiled = stmt.compile(dialect=DIALECT)
    sql = str(compiled)
    assert sql.startswith("MERGE INTO daily_aggregates WITH (HOLDLOCK) AS t USING (SELECT ? AS meter, ? AS day, ")
    assert "ON t.meter = s.meter AND t.day = s.day WHEN MATCHED THEN UPDATE SET t.first_at = s.first_at," in sql
    assert "t.meter = s.meter," not in sql.split("WHEN MATCHED")[1].split("WHEN NOT MATCHED")[0]  # keys not updated
    assert "WHEN NOT MATCHED THEN INSERT (meter, day, first_at," in sql and sql.endswith(");")
    assert sql.count("?") == len(daily_aggregates.columns) - 1
    # typed parameters: a time goes out with its offset, as everywhere else
    process = compiled._bind_processors["first_at"]
    assert process(datetime(2026, 1, 5, 6, tzinfo=UTC)) == "2026-01-05 06:00:00.000000+00:00"
    engine = db.make_engine("mssql+pyodbc://u:p@dsn")  # made, never connected: fast_executemany for the batch
    assert engine.dialect.fast_executemany is True


def test_aggregate_ddl_and_views_for_sql_server():
    for table in (daily_aggregates, monthly_aggregates):
        ddl = str(CreateTable(table).compile(dialect=DIALECT))
        assert " DATE NOT NULL" in ddl and "DATETIMEOFFSET NULL" in ddl and "id BIGINT NOT NULL IDENTITY" in ddl
    from st2000r.historian.views import view_ddl

    daily, monthly = view_ddl(DIALECT, AGG_VIEWS)
    assert daily.startswith("CREATE VIEW v_daily_consumption AS SELECT meters.meter_id, meters.household, ")
    assert "FROM daily_aggregates JOIN meters ON daily_aggregates.meter = meters.id" in daily
    assert "monthly_aggregates.month" in monthly and "?" not in daily + monthly
