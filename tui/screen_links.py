"""Link diagnostics: each link's kind, state, size, the running round, bus counters, DTU sessions."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label

from st2000r.tui import format as fmt
from st2000r.tui import tables
from st2000r.tui.base import ConsoleScreen, KeyHelp, NavBar, StatusLine
from st2000r.tui.model import LinkInfo

COLUMNS = ("links.col.link", "links.col.kind", "links.col.state", "links.col.cdts", "links.col.meters",
           "links.col.round", "links.col.frames", "links.col.errors", "links.col.rtt", "links.col.sessions")


def round_text(done: int | None, total: int | None) -> str:
    return "—" if total is None else f"{done or 0}/{total}"


class LinksScreen(ConsoleScreen):
    BINDINGS = [Binding("r", "refresh", "key.refresh")]

    def __init__(self) -> None:
        super().__init__()
        self.links: tuple[LinkInfo, ...] = ()
        self.states: dict[str, str] = {}
        self.message = ""

    NAV = "links"

    def compose(self) -> ComposeResult:
        yield NavBar()
        yield Label(id="links-title", classes="title")
        yield DataTable(id="links-table", cursor_type="row")
        yield Label(id="links-info")
        yield StatusLine()
        yield KeyHelp()

    def on_mount(self) -> None:
        self.reload()

    def reload(self) -> None:
        self.run_worker(self._load(), group="links", exclusive=True, exit_on_error=False)

    async def _load(self) -> None:
        try:
            self.links = await self.console.client.links()
            self.states = {ln.name: ln.state or "unknown" for ln in self.links}
            self.message = ""
        except Exception as exc:
            self.message = self.console.api_failed(exc)
        self.relabel()

    def relabel(self) -> None:
        cat = self.cat
        self.query_one("#links-title", Label).update(cat.t("links.title"))
        table = self.query_one(DataTable)

        def n(v: int | None) -> str:
            return "—" if v is None else str(v)

        rows = (((ln.name, fmt.link_kind(cat, ln.kind), fmt.link_state(cat, self.states.get(ln.name)), n(ln.cdts), n(ln.meters),
                  round_text(ln.round_done, ln.round_total), n(ln.requests), n(ln.timeouts), n(ln.rtt_p99_ms), n(ln.sessions)),
                 ln.name) for ln in self.links)
        tables.fill(table, [cat.t(k) for k in COLUMNS], rows)
        self.query_one("#links-info", Label).update(self.message or ("" if self.links else cat.t("links.none")))

    def on_api_events(self, events: list[dict[str, Any]]) -> None:
        changed = False
        for event in events:
            if event.get("type") == "LinkChanged" and isinstance(event.get("link"), str):
                self.states[event["link"]] = str(event.get("state"))
                changed = True
            elif event.get("type") == "RoundDone" and self.is_mounted and self.app.screen is self:
                self.reload()
        if changed and self.is_mounted:
            self.relabel()

    def action_refresh(self) -> None:
        self.reload()
