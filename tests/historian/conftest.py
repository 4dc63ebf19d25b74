"""Fixtures of the historian tests: the same tests on SQLite and on the local PostgreSQL.

``db_url`` is parametrised: a SQLite file in the test's folder, and a fresh schema in a
throwaway PostgreSQL database made for this test session (dropped at the end, with
``WITH (FORCE)``).  PostgreSQL cases carry the ``postgres`` mark: tests/conftest.py skips
them when the server does not answer, and fails them when CI=true.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from hist_rig import PG_HOST, PG_PORT, PG_USER, pg_url


def _admin():
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True,
                           connect_timeout=3)


@pytest.fixture(scope="session")
def pg_database():
    """A throwaway database for this session; yields its name."""
    try:
        socket.create_connection((PG_HOST, PG_PORT), timeout=2).close()
    except OSError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true: the PostgreSQL server at 127.0.0.1:5432 does not answer", pytrace=False)
        pytest.skip("the PostgreSQL server at 127.0.0.1:5432 does not answer")
    name = f"st2000r_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_schema(pg_database):
    """A fresh schema in the session's database; yields its name."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=pg_database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """An empty database: SQLite in ``tmp_path`` or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'historian.sqlite'}"
    database = request.getfixturevalue("pg_database")
    schema = request.getfixturevalue("pg_schema")
    return pg_url(database, schema=schema)
