"""Shelving an alarm: a reason (required, for the audit log) and a duration in minutes."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label

from st2000r.tui.base import ConsoleModal
from st2000r.tui.model import Alarm

MAX_MINUTES = 7 * 24 * 60


def parse_minutes(text: str) -> int | None:
    """Whole minutes from 1 to a week, or None."""
    text = text.strip()
    if not text.isdigit():
        return None
    value = int(text)
    return value if 1 <= value <= MAX_MINUTES else None


class ShelveDialog(ConsoleModal):
    BINDINGS = [Binding("escape", "cancel", "shelve.cancel")]

    def __init__(self, alarm: Alarm) -> None:
        super().__init__()
        self.alarm = alarm

    def compose(self) -> ComposeResult:
        with Vertical(id="shelve-box", classes="dialog"):
            yield Label(id="shelve-title", classes="dialog-title")
            yield Label(id="shelve-reason-label")
            yield Input(id="shelve-reason")
            yield Label(id="shelve-minutes-label")
            yield Input("60", id="shelve-minutes")
            yield Label(id="shelve-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button(id="shelve-confirm", variant="warning")
                yield Button(id="shelve-cancel")

    def on_mount(self) -> None:
        self.query_one("#shelve-reason", Input).focus()

    def relabel(self) -> None:
        cat = self.cat
        self.query_one("#shelve-title", Label).update(cat.t("shelve.title", id=self.alarm.id))
        self.query_one("#shelve-reason-label", Label).update(cat.t("shelve.reason"))
        self.query_one("#shelve-minutes-label", Label).update(cat.t("shelve.minutes"))
        self.query_one("#shelve-confirm", Button).label = cat.t("shelve.confirm")
        self.query_one("#shelve-cancel", Button).label = cat.t("shelve.cancel")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "shelve-reason":
            self.query_one("#shelve-minutes", Input).focus()
        else:
            self.confirm()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "shelve-confirm":
            self.confirm()
        else:
            self.dismiss(None)

    def confirm(self) -> None:
        reason = self.query_one("#shelve-reason", Input).value.strip()
        minutes = parse_minutes(self.query_one("#shelve-minutes", Input).value)
        error = self.query_one("#shelve-error", Label)
        if not reason:
            error.update(self.cat.t("shelve.need_reason"))
        elif minutes is None:
            error.update(self.cat.t("shelve.bad_minutes"))
        else:
            self.dismiss((reason, minutes))

    def action_cancel(self) -> None:
        self.dismiss(None)
