"""A meter's detail: its live point, a daily consumption chart from the history, actions."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Label, Static
from textual_plotext import PlotextPlot

from st2000r.tui import format as fmt
from st2000r.tui.base import ConsoleScreen, KeyHelp, NavBar, StatusLine
from st2000r.tui.model import HistoryPoint, Meter


class DetailScreen(ConsoleScreen):
    BINDINGS = [
        Binding("escape", "back", "key.back"),
        Binding("v", "valve(False)", "key.close_valve"),
        Binding("o", "valve(True)", "key.open_valve"),
        Binding("r", "read_now", "key.read_now"),
    ]

    def __init__(self, meter_id: str) -> None:
        super().__init__()
        self.meter_id = meter_id
        self.meter: Meter | None = None
        self.history: tuple[HistoryPoint, ...] | None = None
        self.readings: tuple[HistoryPoint, ...] = ()
        self.note: str | None = None

    NAV = "meters"

    def compose(self) -> ComposeResult:
        yield NavBar()
        yield Label(id="detail-title", classes="title")
        yield Static(id="detail-info")
        yield Label(id="chart-title")
        yield PlotextPlot(id="chart")
        yield StatusLine()
        yield KeyHelp()

    def on_mount(self) -> None:
        self.reload()

    def reload(self) -> None:
        self.run_worker(self._load(), group="detail", exclusive=True, exit_on_error=False)

    async def _load(self) -> None:
        client = self.console.client
        try:
            self.meter = await client.meter(self.meter_id)
        except Exception as exc:
            self.note = self.console.api_failed(exc)
            self.relabel()
            return
        self.relabel()
        try:
            self.history, self.readings = await client.history(self.meter_id)
            self.note = None
        except Exception as exc:
            self.history = None
            self.note = self.cat.t("detail.history_error", reason=self.console.api_failed(exc))
        self.relabel()

    def relabel(self) -> None:
        cat, m = self.cat, self.meter
        self.query_one("#detail-title", Label).update(cat.t("detail.title", id=self.meter_id))
        if m is None:
            self.query_one("#detail-info", Static).update(self.note or cat.t("meters.loading"))
            return
        lines = [
            cat.t("detail.household", household=m.household or "—") + "    " + cat.t("detail.kind", kind=fmt.kind(cat, m.kind)),
            cat.t("detail.value", value=fmt.reading(m.value, m.base_unit)) + "    "
            + cat.t("detail.quality", quality=fmt.quality(cat, m.quality)),
            cat.t("detail.read_at", read_at=fmt.when(m.read_at)) + "    " + cat.t("detail.valve", valve=fmt.valve(cat, m.valve)),
            cat.t("detail.alarms", alarms=fmt.alarms(cat, m.alarms)),
        ]
        self.query_one("#detail-info", Static).update("\n".join(lines))
        if self.note:
            title = self.note
        elif self.history:
            title = cat.t("detail.chart", unit=m.base_unit or "")
        elif self.readings:
            title = cat.t("detail.readings", unit=m.base_unit or "")
        else:
            title = cat.t("detail.no_history")
        self.query_one("#chart-title", Label).update(title)
        self.draw_chart()

    def draw_chart(self) -> None:
        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        if self.history:
            days = [p.day[5:] for p in self.history[-14:]]
            plt.bar(days, [p.usage for p in self.history[-14:]])
        elif self.readings:
            last = self.readings[-50:]
            plt.plot(list(range(len(last))), [p.usage for p in last], marker="braille")
            plt.xticks([0, len(last) - 1], [last[0].day, last[-1].day])
        plot.refresh()

    def on_api_events(self, events: list[dict[str, Any]]) -> None:
        if self.meter is None:
            return
        changed = False
        for event in events:
            if event.get("type") == "MeterChanged" and event.get("meter") == self.meter_id:
                self.meter = self.meter.changed(event)
                changed = True
        if changed and self.is_mounted:
            self.relabel()

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_valve(self, open_: bool) -> None:
        from st2000r.tui.dialog_valve import ValveDialog

        if self.meter is None:
            return
        if self.meter.valve == "none":
            self.notify(self.cat.t("valve.no_valve"), severity="warning")
            return
        self.app.push_screen(ValveDialog(self.meter, open=open_))

    def action_read_now(self) -> None:
        self.run_worker(self._read_now(), exit_on_error=False)

    async def _read_now(self) -> None:
        try:
            command = await self.console.client.read_now(self.meter_id)
        except Exception as exc:
            self.notify(self.cat.t("cmd.error", reason=self.console.api_failed(exc)), severity="error")
            return
        self.notify(self.cat.t("valve.submitted", id=command.id))
