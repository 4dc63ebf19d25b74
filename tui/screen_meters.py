"""Meters: the virtual table of every meter, filters, and the way to a meter's detail."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Label

from st2000r.tui import format as fmt
from st2000r.tui.base import ConsoleScreen, KeyHelp, NavBar, StatusLine
from st2000r.tui.dialog_filter import FilterDialog
from st2000r.tui.meter_grid import MeterGrid
from st2000r.tui.meter_rows import MeterRows
from st2000r.tui.model import MeterFilter


class MetersScreen(ConsoleScreen):
    BINDINGS = [
        Binding("f", "filter", "key.filter"),
        Binding("c", "clear", "key.clear"),
        Binding("v", "valve(False)", "key.close_valve"),
        Binding("enter", "open", "key.open", show=False),
    ]

    def __init__(self, page_size: int = 500) -> None:
        super().__init__()
        self.rows = MeterRows(page_size)
        self.error: str | None = None

    NAV = "meters"

    def compose(self) -> ComposeResult:
        yield NavBar()
        yield Label(id="meters-header", classes="table-header")
        yield MeterGrid(self.rows, self.app.cat, id="meter-grid")  # type: ignore[attr-defined]
        yield Label(id="meters-info")
        yield StatusLine()
        yield KeyHelp()

    @property
    def grid(self) -> MeterGrid:
        return self.query_one(MeterGrid)

    def on_mount(self) -> None:
        self.grid.focus()
        self.reload()

    def on_resize(self) -> None:
        if self._ready:
            self.relabel()

    def relabel(self) -> None:
        width = self.size.width or 80
        self.query_one("#meters-header", Label).update(fmt.meter_header(self.cat, width, self.rows.id_width))
        self.grid.language_changed()
        self.update_info()

    def update_info(self) -> None:
        cat = self.cat
        flt = self.rows.filter
        if self.error:
            text = self.error
        elif self.rows.complete and not self.rows.rows:
            text = cat.t("meters.empty")
        else:
            text = cat.t("meters.count", shown=len(self.rows), more="" if self.rows.complete else cat.t("meters.more"))
        filters = cat.t("meters.no_filter") if flt.empty else cat.t(
            "meters.filters", filters=" ".join(f"{k}={v}" for k, v in flt.params().items()))
        self.query_one("#meters-info", Label).update(f"{text} · {filters}")

    # -- data ---------------------------------------------------------------------------
    def reload(self) -> None:
        self.rows.reset()
        if self.is_mounted:
            self.grid.rows_changed()
        self.fetch_more()

    def fetch_more(self) -> None:
        if self.rows.loading or self.rows.complete:
            return
        self.rows.loading = True
        self.run_worker(self._fetch(self.rows.generation, self.rows.cursor), group="pages", exit_on_error=False)

    async def _fetch(self, generation: int, cursor: str | None) -> None:
        try:
            page = await self.console.client.meters(self.rows.filter, limit=self.rows.page_size, cursor=cursor)
        except Exception as exc:  # shown on the info line; the next scroll or refresh tries again
            if generation == self.rows.generation:
                self.rows.loading = False
                self.error = self.console.api_failed(exc)
                self.update_info()
            return
        self.error = None
        if self.rows.add_page(page, generation) or generation == self.rows.generation:
            self.grid.rows_changed()
            self.update_info()

    def on_meter_grid_widened(self, message: MeterGrid.Widened) -> None:
        width = self.size.width or 80
        self.query_one("#meters-header", Label).update(fmt.meter_header(self.cat, width, self.rows.id_width))

    def on_meter_grid_need_more(self, message: MeterGrid.NeedMore) -> None:
        self.fetch_more()

    def on_api_events(self, events: list[dict[str, Any]]) -> None:
        grid = self.grid if self.is_mounted else None
        for event in events:
            if event.get("type") == "MeterChanged":
                row = self.rows.apply(event)
                if row is not None and grid is not None:
                    grid.row_updated(row)

    # -- keys ---------------------------------------------------------------------------
    def action_filter(self) -> None:
        self.app.push_screen(FilterDialog(self.rows.filter), self._filtered)

    def _filtered(self, flt: MeterFilter | None) -> None:
        if flt is not None and flt != self.rows.filter:
            self.set_filter(flt)

    def set_filter(self, flt: MeterFilter) -> None:
        self.rows.reset(flt)
        self.grid.cursor = 0
        self.grid.scroll_to(y=0, animate=False, immediate=True)
        self.grid.rows_changed()
        self.update_info()
        self.fetch_more()

    def action_clear(self) -> None:
        self.set_filter(MeterFilter())

    def action_open(self) -> None:
        meter = self.grid.current
        if meter is not None:
            self.open_detail(meter.id)

    def on_meter_grid_chosen(self, message: MeterGrid.Chosen) -> None:
        self.open_detail(message.meter.id)

    def open_detail(self, meter_id: str) -> None:
        from st2000r.tui.screen_detail import DetailScreen

        self.app.push_screen(DetailScreen(meter_id))

    def action_valve(self, open_: bool) -> None:
        from st2000r.tui.dialog_valve import ValveDialog

        meter = self.grid.current
        if meter is not None and meter.valve == "none":
            self.query_one("#meters-info", Label).update(f"{meter.id}: {self.cat.t('valve.no_valve')}")
        elif meter is not None:
            self.app.push_screen(ValveDialog(meter, open=open_))
