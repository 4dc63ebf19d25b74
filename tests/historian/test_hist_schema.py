"""Schema and migrations on SQLite and PostgreSQL; the refusal of an older schema."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from st2000r.historian import db
from st2000r.historian.schema import VIEWS, metadata

VIEW_COLUMNS = {
    "v_readings": ["meter_id", "read_at", "value", "base_unit", "quality", "source"],
    "v_latest_readings": ["meter_id", "household", "kind", "value", "base_unit", "quality", "read_at"],
}


def test_upgrade_creates_every_table_and_view(db_url):
    engine = db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert db.schema_status(conn).current is None
            assert "has no schema yet: run 'st2000r db upgrade site.toml'" in db.schema_status(conn).problem("site.toml")
        status = db.upgrade(engine)
        assert status.ok and status.current == db.head_revision()
        with engine.connect() as conn:
            found = inspect(conn)
            assert set(metadata.tables) <= set(found.get_table_names())
            assert set(VIEWS) <= set(found.get_view_names())
            for view, columns in VIEW_COLUMNS.items():
                result = conn.execute(text(f"SELECT * FROM {view}"))
                assert list(result.keys()) == columns
            # the idempotent key of a reading is a unique constraint
            uniques = {tuple(u["column_names"]) for u in found.get_unique_constraints("readings")}
            assert ("meter", "read_at", "source") in uniques
            assert any(ix["column_names"] == ["read_at"] for ix in found.get_indexes("readings"))
        assert db.upgrade(engine).ok  # a second upgrade changes nothing
    finally:
        engine.dispose()


def test_an_older_schema_is_refused_with_the_command_that_fixes_it(db_url):
    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
        with engine.connect() as conn:
            status = db.schema_status(conn)
        assert not status.ok
        assert status.newer  # an unknown revision: written by a later version
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM alembic_version"))
        with engine.connect() as conn:
            assert db.schema_status(conn).problem("/etc/st2000r/site.toml") == (
                "the historian database has no schema yet: run 'st2000r db upgrade /etc/st2000r/site.toml'")
    finally:
        engine.dispose()


def test_models_types_are_portable():
    """Text is Unicode (NVARCHAR on SQL Server), times are timezone-aware, surrogate keys
    BIGINT except on SQLite."""
    from sqlalchemy import DateTime, String, Unicode
    from sqlalchemy.dialects import mssql, postgresql, sqlite

    for table in metadata.tables.values():
        for column in table.columns:
            if isinstance(column.type, String):
                assert isinstance(column.type, Unicode), f"{table.name}.{column.name}"
            if isinstance(column.type, DateTime):
                assert column.type.timezone, f"{table.name}.{column.name}"
        key = table.c.id
        assert key.type.compile(dialect=postgresql.dialect()) == "BIGINT"
        assert key.type.compile(dialect=mssql.dialect()) == "BIGINT"
        assert key.type.compile(dialect=sqlite.dialect()) == "INTEGER"


def test_describe_url_hides_the_password():
    assert "secret" not in db.describe_url("postgresql+psycopg://u:secret@h/d")
    assert "secret" not in db.describe_url("mssql+pyodbc://u:secret@dsn")
