"""Create and drop the documented views on any of the three databases.

Why compiled from Core selects and not written as SQL text: the same select becomes each
database's own SQL (quoting, window functions, booleans), so the columns a billing system
reads are the same everywhere; ``literal_binds`` because a view cannot hold parameters.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from st2000r.historian.schema import VIEWS, view_selects

__all__ = ["create_views", "drop_views", "view_ddl"]


def view_ddl(dialect: Any) -> list[str]:
    """``CREATE VIEW`` statements of every view, compiled for ``dialect``."""
    out = []
    preparer = dialect.identifier_preparer
    for name, select in view_selects().items():
        body = select.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
        out.append(f"CREATE VIEW {preparer.quote(name)} AS {body}")
    return out


def create_views(bind: Any) -> None:
    for statement in view_ddl(bind.dialect):
        bind.execute(text(statement))


def drop_views(bind: Any) -> None:
    preparer = bind.dialect.identifier_preparer
    for name in reversed(VIEWS):
        bind.execute(text(f"DROP VIEW {preparer.quote(name)}"))
