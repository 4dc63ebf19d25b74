"""Create and drop the documented views on any of the three databases.

Why compiled from Core selects and not written as SQL text: the same select becomes each
database's own SQL (quoting, window functions, booleans), so the columns a billing system
reads are the same everywhere; ``literal_binds`` because a view cannot hold parameters.
Each Alembic revision names the views it creates (``names``), so a later view never
appears in an earlier revision.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import text

from st2000r.historian.schema import VIEWS, view_selects

__all__ = ["create_views", "drop_views", "view_ddl", "compile_view"]


def compile_view(name: str, select: Any, dialect: Any) -> str:
    """``CREATE VIEW name AS select`` for ``dialect``."""
    body = select.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    return f"CREATE VIEW {dialect.identifier_preparer.quote(name)} AS {body}"


def view_ddl(dialect: Any, names: Iterable[str] | None = None) -> list[str]:
    """``CREATE VIEW`` statements of the views ``names`` (default: every view of the model),
    compiled for ``dialect``."""
    selects = view_selects()
    return [compile_view(name, selects[name], dialect) for name in (VIEWS if names is None else names)]


def create_views(bind: Any, names: Iterable[str] | None = None) -> None:
    for statement in view_ddl(bind.dialect, names):
        bind.execute(text(statement))


def drop_views(bind: Any, names: Iterable[str] | None = None) -> None:
    preparer = bind.dialect.identifier_preparer
    for name in reversed(list(VIEWS if names is None else names)):
        bind.execute(text(f"DROP VIEW {preparer.quote(name)}"))
