"""Filling Textual ``DataTable``s with columns as wide as their widest cell.

``DataTable`` sizes an auto-width column from the cells present when it is added; the
console rebuilds its small tables (alarms, links, operators) on every change and in two
languages, so the widths are computed here, in terminal cells (a Chinese character is two).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.cells import cell_len
from textual.widgets import DataTable


def fill(table: DataTable, headers: Sequence[str], rows: Iterable[tuple[Sequence[str], str | None]]) -> None:
    """Replace ``table``'s columns and rows; ``rows`` are (cells, key)."""
    rows = list(rows)
    widths = [cell_len(h) for h in headers]
    for cells, _ in rows:
        widths = [max(w, cell_len(str(c))) for w, c in zip(widths, cells)]
    table.clear(columns=True)
    for header, width in zip(headers, widths):
        table.add_column(header, width=width)
    for cells, key in rows:
        table.add_row(*cells, key=key)
