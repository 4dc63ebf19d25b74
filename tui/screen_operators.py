"""Operators (administrators only): names and roles; others are told they may not see them."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import DataTable, Label

from st2000r.tui import tables
from st2000r.tui.base import ConsoleScreen, KeyHelp, NavBar, StatusLine
from st2000r.tui.client import Forbidden
from st2000r.tui.model import Operator


class OperatorsScreen(ConsoleScreen):
    def __init__(self) -> None:
        super().__init__()
        self.operators: tuple[Operator, ...] = ()
        self.forbidden = False
        self.message = ""

    NAV = "operators"

    def compose(self) -> ComposeResult:
        yield NavBar()
        yield Label(id="ops-title", classes="title")
        yield DataTable(id="ops-table", cursor_type="row")
        yield Label(id="ops-info")
        yield StatusLine()
        yield KeyHelp()

    def on_mount(self) -> None:
        self.reload()

    def reload(self) -> None:
        self.run_worker(self._load(), group="ops", exclusive=True, exit_on_error=False)

    async def _load(self) -> None:
        try:
            self.operators = await self.console.client.operators()
            self.forbidden, self.message = False, ""
        except Forbidden:
            self.operators, self.forbidden = (), True
        except Exception as exc:
            self.message = self.console.api_failed(exc)
        self.relabel()

    def relabel(self) -> None:
        cat = self.cat
        self.query_one("#ops-title", Label).update(cat.t("ops.title"))
        table = self.query_one(DataTable)
        tables.fill(table, [cat.t("ops.col.name"), cat.t("ops.col.role")],
                    (((op.name, op.role), op.name) for op in self.operators))
        self.query_one("#ops-info", Label).update(cat.t("ops.forbidden") if self.forbidden else self.message)
