"""The meters filter: link, building (CDT), household, kind, quality, alarm."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.widgets import Button, Input, Label, Select

from st2000r.tui import format as fmt
from st2000r.tui.base import ConsoleModal
from st2000r.tui.model import ALARM_KINDS, KINDS, QUALITIES, MeterFilter


class FilterDialog(ConsoleModal):
    BINDINGS = [Binding("escape", "cancel", "filter.cancel")]

    def __init__(self, current: MeterFilter) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        c = self.current
        with Vertical(id="filter-box", classes="dialog"):
            yield Label(id="filter-title", classes="dialog-title")
            with Grid(id="filter-grid"):
                yield Label(id="l-link")
                yield Input(c.link or "", id="f-link")
                yield Label(id="l-cdt")
                yield Input("" if c.cdt is None else str(c.cdt), id="f-cdt")
                yield Label(id="l-household")
                yield Input(c.household or "", id="f-household")
                yield Label(id="l-kind")
                yield Select([], id="f-kind", value=c.kind or Select.NULL, compact=True)
                yield Label(id="l-quality")
                yield Select([], id="f-quality", value=c.quality or Select.NULL, compact=True)
                yield Label(id="l-alarm")
                yield Select([], id="f-alarm", value=c.alarm or Select.NULL, compact=True)
            yield Label(id="filter-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button(id="f-apply", variant="primary")
                yield Button(id="f-cancel")

    def on_mount(self) -> None:
        self.query_one("#f-link", Input).focus()

    def relabel(self) -> None:
        cat = self.cat
        self.query_one("#filter-title", Label).update(cat.t("filter.title"))
        for key in ("link", "cdt", "household", "kind", "quality", "alarm"):
            self.query_one(f"#l-{key}", Label).update(cat.t(f"filter.{key}"))
        options = {
            "kind": [(fmt.kind(cat, k), k) for k in KINDS],
            "quality": [(fmt.quality(cat, q), q) for q in QUALITIES],
            "alarm": [(fmt.alarms(cat, (a,)), a) for a in ALARM_KINDS],
        }
        for key, opts in options.items():
            select = self.query_one(f"#f-{key}", Select)
            value = select.value
            select.prompt = cat.t("filter.any")
            select.set_options(opts)
            if value is not Select.NULL:
                select.value = value
        self.query_one("#f-apply", Button).label = cat.t("filter.apply")
        self.query_one("#f-cancel", Button).label = cat.t("filter.cancel")

    def chosen(self) -> MeterFilter | None:
        text = {k: self.query_one(f"#f-{k}", Input).value.strip() for k in ("link", "cdt", "household")}
        cdt = None
        if text["cdt"]:
            if not text["cdt"].isdigit():
                self.query_one("#filter-error", Label).update(self.cat.t("filter.bad_cdt", value=text["cdt"]))
                return None
            cdt = int(text["cdt"])

        def sel(key: str) -> str | None:
            value = self.query_one(f"#f-{key}", Select).value
            return None if value is Select.NULL else str(value)

        return MeterFilter(link=text["link"] or None, cdt=cdt, household=text["household"] or None,
                           kind=sel("kind"), quality=sel("quality"), alarm=sel("alarm"))

    def on_input_submitted(self) -> None:
        self.apply()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "f-apply":
            self.apply()
        else:
            self.dismiss(None)

    def apply(self) -> None:
        flt = self.chosen()
        if flt is not None:
            self.dismiss(flt)

    def action_cancel(self) -> None:
        self.dismiss(None)
