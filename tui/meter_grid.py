"""The meters table: a Line API widget that draws only the rows on screen.

With 24,576 meters a widget per row (or Textual's ``DataTable``, which measures every
cell of every row) is too slow to redraw in 50 ms; this widget keeps the rows in a
``MeterRows`` and renders each visible line on demand, so the cost of a redraw depends on
the terminal's height, not on the number of meters.  A live update refreshes its one
line if it is on screen and nothing otherwise.  Scrolling near the end posts
``NeedMore``; Enter posts ``Chosen``.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from st2000r.tui import format as fmt
from st2000r.tui.i18n import Catalogue
from st2000r.tui.meter_rows import MeterRows
from st2000r.tui.model import Meter


class MeterGrid(ScrollView, can_focus=True):
    BINDINGS = [
        Binding("up", "move(-1)", show=False),
        Binding("down", "move(1)", show=False),
        Binding("pageup", "page(-1)", show=False),
        Binding("pagedown", "page(1)", show=False),
        Binding("home", "edge(0)", show=False),
        Binding("end", "edge(1)", show=False),
        Binding("enter", "choose", show=False),
    ]
    COMPONENT_CLASSES = {"meter-grid--cursor", "meter-grid--alarm", "meter-grid--bad"}

    cursor = reactive(0, always_update=True, repaint=False)

    class NeedMore(Message):
        """The visible window is near the last loaded row: fetch the next page."""

    class Widened(Message):
        """Rows were added or replaced: the id column may have changed width."""

    class Chosen(Message):
        def __init__(self, meter: Meter) -> None:
            super().__init__()
            self.meter = meter

    def __init__(self, rows: MeterRows, catalogue: Catalogue, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows = rows
        self.catalogue = catalogue
        self._line_cache: dict[int, str] = {}
        self._cache_width = 0

    # -- data ---------------------------------------------------------------------------
    def rows_changed(self) -> None:
        """Rows were added or the whole set replaced: resize and redraw."""
        self._line_cache.clear()
        self.post_message(self.Widened())
        self.virtual_size = Size(self.size.width or 80, len(self.rows))
        if self.cursor >= len(self.rows):
            self.cursor = max(0, len(self.rows) - 1)
        self.refresh()
        self._check_more()

    def row_updated(self, row: int) -> bool:
        """Row ``row`` changed; redraws its line only if it is on screen (True then)."""
        self._line_cache.pop(row, None)
        top = self.scroll_offset.y
        if top <= row < top + self.size.height:
            self.refresh(Region(0, row - top, self.size.width, 1))
            return True
        return False

    def language_changed(self) -> None:
        self._line_cache.clear()
        self.refresh()

    @property
    def current(self) -> Meter | None:
        return self.rows.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    # -- rendering ----------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if width != self._cache_width:
            self._line_cache.clear()
            self._cache_width = width
        row = self.scroll_offset.y + y
        if row >= len(self.rows):
            text = self.catalogue.t("meters.loading") if row == len(self.rows) and not self.rows.complete else ""
            return Strip([Segment(fmt.cell(text, width), self.rich_style)], width)
        line = self._line_cache.get(row)
        if line is None:
            line = fmt.meter_line(self.catalogue, self.rows.rows[row], width, self.rows.id_width)
            self._line_cache[row] = line
        meter = self.rows.rows[row]
        if row == self.cursor and self.has_focus:
            style = self.get_component_rich_style("meter-grid--cursor")
        elif meter.alarms:
            style = self.get_component_rich_style("meter-grid--alarm")
        elif meter.quality not in (None, "good"):
            style = self.get_component_rich_style("meter-grid--bad")
        else:
            style = self.rich_style
        return Strip([Segment(line, style)], width)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.rows))

    # -- moving -------------------------------------------------------------------------
    def watch_cursor(self, old: int, new: int) -> None:
        top = self.scroll_offset.y
        height = max(1, self.size.height)
        if new < top:
            self.scroll_to(y=new, animate=False, immediate=True)
        elif new >= top + height:
            self.scroll_to(y=new - height + 1, animate=False, immediate=True)
        for row in (old, new):
            self.row_updated(row)
        self._check_more()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._check_more()

    def _check_more(self) -> None:
        last = self.scroll_offset.y + max(self.size.height, self.cursor - self.scroll_offset.y + 1)
        if self.rows.needs_more(last):
            self.post_message(self.NeedMore())

    def _move_to(self, row: int) -> None:
        if self.rows:
            self.cursor = max(0, min(len(self.rows) - 1, row))

    def action_move(self, step: int) -> None:
        self._move_to(self.cursor + step)

    def action_page(self, step: int) -> None:
        self._move_to(self.cursor + step * max(1, self.size.height - 1))

    def action_edge(self, end: int) -> None:
        self._move_to(len(self.rows) - 1 if end else 0)

    def action_choose(self) -> None:
        if self.current is not None:
            self.post_message(self.Chosen(self.current))

    def on_focus(self) -> None:
        self.row_updated(self.cursor)

    def on_blur(self) -> None:
        self.row_updated(self.cursor)
