"""The meters the table holds, fetched page by page as the operator scrolls (no Textual).

The API pages with an opaque cursor, so rows are loaded in order: the table asks for the
next page when its visible window comes within half a page of the last loaded row.  A
``MeterChanged`` event updates a loaded row in place (found by id in a dict, O(1)); a
meter not loaded yet is left for its page to bring.  ``generation`` changes with every
filter, so a page that arrives for an old filter is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from st2000r.tui.model import Meter, MeterFilter, MeterPage


class MeterRows:
    def __init__(self, page_size: int = 500) -> None:
        self.page_size = page_size
        self.filter = MeterFilter()
        self.rows: list[Meter] = []
        self.index: dict[str, int] = {}
        self.cursor: str | None = None
        self.complete = False
        self.loading = False
        self.generation = 0
        self.id_width = 0  # the longest id loaded (cells), for the table's id column

    def reset(self, flt: MeterFilter | None = None) -> None:
        if flt is not None:
            self.filter = flt
        self.rows, self.index = [], {}
        self.cursor, self.complete, self.loading = None, False, False
        self.generation += 1
        self.id_width = 0

    def __len__(self) -> int:
        return len(self.rows)

    def needs_more(self, last_visible: int) -> bool:
        """Whether the next page should be fetched now that row ``last_visible`` shows."""
        return not self.complete and not self.loading and last_visible >= len(self.rows) - self.page_size // 2

    def add_page(self, page: MeterPage, generation: int) -> range:
        """Append ``page`` (if it belongs to the current filter); the rows it added."""
        self.loading = False
        if generation != self.generation:
            return range(0)
        start = len(self.rows)
        for meter in page.items:
            if meter.id in self.index:  # a page boundary moved under a live update: keep one row
                self.rows[self.index[meter.id]] = meter
                continue
            self.index[meter.id] = len(self.rows)
            self.rows.append(meter)
            self.id_width = max(self.id_width, len(meter.id))
        self.cursor = page.next
        self.complete = page.next is None
        return range(start, len(self.rows))

    def apply(self, event: Mapping[str, Any]) -> int | None:
        """Apply a ``MeterChanged`` event; the row it changed, or None."""
        row = self.index.get(event.get("meter"))  # type: ignore[arg-type]
        if row is None:
            return None
        self.rows[row] = self.rows[row].changed(event)
        return row
