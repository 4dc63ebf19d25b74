"""Dashboard: links and their health, the reading round's progress, alarm counts, spool.

Counts come from ``GET /summary`` (cheap to poll), read again when events show something
changed (at most once a second) and every few seconds while on view, so a round's
progress moves although the stream does not carry every reading.
"""

from __future__ import annotations

import time
from typing import Any

from textual.app import ComposeResult
from textual.widgets import DataTable, Label, ProgressBar

from st2000r.tui import format as fmt
from st2000r.tui import tables
from st2000r.tui.base import ConsoleScreen, KeyHelp, NavBar, StatusLine
from st2000r.tui.model import LinkInfo, Summary
from st2000r.tui.screen_links import round_text

POLL_SECONDS = 3.0
MIN_GAP_SECONDS = 1.0


def alarm_counts(by_state: dict[str, int]) -> dict[str, int]:
    return {
        "unacked": by_state.get("active-unacked", 0) + by_state.get("cleared-unacked", 0),
        "active": by_state.get("active-unacked", 0) + by_state.get("active-acked", 0),
        "shelved": by_state.get("shelved", 0),
    }


class DashboardScreen(ConsoleScreen):
    def __init__(self, clock=time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.summary: Summary | None = None
        self.links: dict[str, LinkInfo] = {}
        self.link_states: dict[str, str] = {}
        self.message = ""
        self._last_load = float("-inf")

    NAV = "dashboard"

    def compose(self) -> ComposeResult:
        yield NavBar()
        yield Label(id="dash-title", classes="title")
        yield Label(id="dash-meters")
        yield Label(id="dash-round")
        yield ProgressBar(id="round-bar", show_eta=False)
        yield Label(id="dash-alarms")
        yield Label(id="dash-spool")
        yield Label(id="dash-links-title")
        yield DataTable(id="dash-links", cursor_type="row")
        yield Label(id="dash-message", classes="error")
        yield StatusLine()
        yield KeyHelp()

    def on_mount(self) -> None:
        self.reload()
        self.set_interval(POLL_SECONDS, self._tick)

    def _tick(self) -> None:
        if self.app.screen is self:
            self.reload()

    def reload(self) -> None:
        self._last_load = self.clock()
        self.run_worker(self._load(), group="dash", exclusive=True, exit_on_error=False)

    async def _load(self) -> None:
        client = self.console.client
        try:
            summary = await client.summary()
            links = await client.links()
        except Exception as exc:
            self.message = self.console.api_failed(exc)
            if self.is_mounted:
                self.relabel()
            return
        self.message = ""
        self.summary = summary
        self.links = {ln.name: ln for ln in links}
        self.link_states = {ln.name: ln.state or "unknown" for ln in links}
        if self.is_mounted:
            self.relabel()

    def relabel(self) -> None:
        cat, s = self.cat, self.summary
        self.query_one("#dash-title", Label).update(cat.t("dash.title"))
        bar = self.query_one(ProgressBar)
        if s is None:
            for name in ("#dash-meters", "#dash-round", "#dash-alarms", "#dash-spool"):
                self.query_one(name, Label).update("")
            bar.update(total=1, progress=0)
        else:
            self.query_one("#dash-meters", Label).update(
                cat.t("dash.meters", total=s.meters_total, good=s.meters_good, bad=s.meters_total - s.meters_good))
            self.query_one("#dash-round", Label).update(
                cat.t("dash.round_progress", done=s.round_done, total=s.round_total) if s.rounds
                else cat.t("dash.round_idle"))
            bar.update(total=max(s.round_total, 1), progress=s.round_done if s.rounds else 0)
            self.query_one("#dash-alarms", Label).update(cat.t("dash.alarms", **alarm_counts(dict(s.alarms_by_state))))
            if s.historian_state is None:
                spool = cat.t("dash.spool_none")
            else:
                age = cat.t("none") if s.spool_age_s is None else f"{s.spool_age_s:.0f} s"
                spool = cat.t("dash.spool", state=fmt.historian_state(cat, s.historian_state), depth=s.spool_rows or 0,
                              age=age)
            self.query_one("#dash-spool", Label).update(spool)
        self.query_one("#dash-links-title", Label).update(cat.t("dash.links"))
        table = self.query_one(DataTable)
        rows = (((name, fmt.link_state(cat, self.link_states.get(name)), "—" if link.cdts is None else str(link.cdts),
                  round_text(link.round_done, link.round_total)), name) for name, link in self.links.items())
        tables.fill(table, [cat.t(k) for k in ("dash.link", "dash.state", "dash.cdts", "dash.round")], rows)
        self.query_one("#dash-message", Label).update(self.message)

    def on_api_events(self, events: list[dict[str, Any]]) -> None:
        relevant = False
        for event in events:
            kind = event.get("type")
            if kind == "LinkChanged" and isinstance(event.get("link"), str):
                self.link_states[event["link"]] = str(event.get("state"))
                relevant = True
            elif kind in ("AlarmChanged", "RoundDone", "CdtChanged", "MeterChanged"):
                relevant = True
        if not relevant or not self.is_mounted or self.app.screen is not self:
            return
        if self.clock() - self._last_load >= MIN_GAP_SECONDS:
            self.reload()
        else:
            self.relabel()

    def on_screen_resume(self) -> None:
        self.reload()
