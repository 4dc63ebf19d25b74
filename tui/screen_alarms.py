"""Alarms: the list with acknowledge, shelve (with a reason and a duration) and unshelve.

The list is the alarms resource; ``AlarmChanged`` events replace an alarm's row with the
snapshot they carry (``removed`` takes it out), so the list follows the supervisor live.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label

from st2000r.tui import format as fmt
from st2000r.tui import tables
from st2000r.tui.base import ConsoleScreen, KeyHelp, NavBar, StatusLine
from st2000r.tui.model import Alarm

COLUMNS = ("alarms.col.source", "alarms.col.kind", "alarms.col.severity", "alarms.col.state", "alarms.col.raised",
           "alarms.col.by")


class AlarmsScreen(ConsoleScreen):
    BINDINGS = [
        Binding("a", "ack", "key.ack"),
        Binding("s", "shelve", "key.shelve"),
        Binding("u", "unshelve", "key.unshelve"),
        Binding("r", "refresh", "key.refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.alarms: dict[str, Alarm] = {}
        self.message = ""

    NAV = "alarms"

    def compose(self) -> ComposeResult:
        yield NavBar()
        yield Label(id="alarms-title", classes="title")
        yield DataTable(id="alarms-table", cursor_type="row", zebra_stripes=True)
        yield Label(id="alarms-info")
        yield StatusLine()
        yield KeyHelp()

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self.reload()

    def reload(self) -> None:
        self.run_worker(self._load(), group="alarms", exclusive=True, exit_on_error=False)

    async def _load(self) -> None:
        try:
            alarms = await self.console.client.alarms()
        except Exception as exc:
            self.message = self.console.api_failed(exc)
            self.relabel()
            return
        self.alarms = {a.id: a for a in alarms}
        self.message = ""
        self.relabel()

    def relabel(self) -> None:
        cat = self.cat
        self.query_one("#alarms-title", Label).update(cat.t("alarms.title"))
        table = self.query_one(DataTable)
        current = self.selected()
        ordered = sorted(self.alarms.values(), key=lambda a: (a.raised_at or "", a.id), reverse=True)
        tables.fill(table, [cat.t(k) for k in COLUMNS], ((fmt.alarm_cells(cat, a), a.id) for a in ordered))
        if current is not None and current.id in self.alarms:
            table.move_cursor(row=table.get_row_index(current.id))
        self.query_one("#alarms-info", Label).update(self.message or ("" if self.alarms else cat.t("alarms.none")))

    def selected(self) -> Alarm | None:
        table = self.query_one(DataTable)
        if not self.alarms or table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        except Exception:
            return None
        return self.alarms.get(key)

    def on_api_events(self, events: list[dict[str, Any]]) -> None:
        changed = False
        for event in events:
            if event.get("type") != "AlarmChanged" or not isinstance(event.get("alarm"), dict):
                continue
            try:
                alarm = Alarm.from_json(event["alarm"])
            except ValueError:
                continue
            if alarm.state == "removed":
                self.alarms.pop(alarm.id, None)
            else:
                self.alarms[alarm.id] = alarm
            changed = True
        if changed and self.is_mounted:
            self.relabel()

    # -- keys ---------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A message on the line under the list (kept until the next one or a reload)."""
        self.message = text
        self.query_one("#alarms-info", Label).update(text)

    def _act(self, done_key: str, call) -> None:
        alarm = self.selected()
        if alarm is None:
            self.say(self.cat.t("alarms.pick"))
            return

        async def work() -> None:
            try:
                await call(alarm)
            except Exception as exc:
                self.say(self.cat.t("alarms.failed", reason=self.console.api_failed(exc)))
                return
            await self._load()
            self.say(self.cat.t(done_key, id=alarm.id))

        self.run_worker(work(), exit_on_error=False)

    def action_ack(self) -> None:
        self._act("alarms.acked", lambda a: self.console.client.ack(a.id))

    def action_unshelve(self) -> None:
        self._act("alarms.unshelved", lambda a: self.console.client.unshelve(a.id))

    def action_shelve(self) -> None:
        from st2000r.tui.dialog_shelve import ShelveDialog

        alarm = self.selected()
        if alarm is None:
            self.say(self.cat.t("alarms.pick"))
            return

        def shelved(answer: tuple[str, int] | None) -> None:
            if answer is not None:
                reason, minutes = answer
                self._act("alarms.shelved", lambda a: self.console.client.shelve(a.id, reason=reason, minutes=minutes))

        self.app.push_screen(ShelveDialog(alarm), shelved)

    def action_refresh(self) -> None:
        self.reload()
