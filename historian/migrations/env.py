"""Alembic environment: runs on the connection ``st2000r.historian.db.upgrade`` hands over.

Why no URL here: the URL comes from the topology file's ``[historian]`` section, and one
code path (``db.upgrade``) opens every database the same way (WAL and fsync settings on
SQLite, timeouts on PostgreSQL, ``fast_executemany`` on SQL Server).
"""

from alembic import context

from st2000r.historian.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through db.upgrade
    raise RuntimeError("run migrations with 'st2000r db upgrade CONFIG'")
context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
