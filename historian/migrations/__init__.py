"""Alembic migrations of the historian schema, shipped in the package (``st2000r db upgrade``)."""
