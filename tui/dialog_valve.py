"""Valve control: confirm, give a reason, then watch the command to its outcome.

The outcome is followed from the event stream (``CommandChanged``) and, so that a lost
stream never leaves the operator guessing, by reading the command's URL once a second
until it is final.  The dialog stays until the operator closes it.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import Button, Input, Label

from st2000r.tui import format as fmt
from st2000r.tui.base import ConsoleModal
from st2000r.tui.model import Command, Meter

POLL_SECONDS = 1.0


class ValveDialog(ConsoleModal):
    BINDINGS = [Binding("escape", "close", "valve.cancel")]

    def __init__(self, meter: Meter, *, open: bool) -> None:
        super().__init__()
        self.meter, self.open = meter, open
        self.command: Command | None = None
        self.error: str | None = None
        self._poll: Timer | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="valve-box", classes="dialog"):
            yield Label(id="valve-title", classes="dialog-title")
            yield Label(id="valve-household")
            yield Label(id="valve-reason-label")
            yield Input(id="valve-reason")
            yield Label(id="valve-outcome")
            with Horizontal(classes="buttons"):
                yield Button(id="valve-confirm", variant="error")
                yield Button(id="valve-cancel")

    def on_mount(self) -> None:
        self.query_one("#valve-reason", Input).focus()

    def relabel(self) -> None:
        cat = self.cat
        key = "valve.open_title" if self.open else "valve.close_title"
        self.query_one("#valve-title", Label).update(cat.t(key, id=self.meter.id))
        self.query_one("#valve-household", Label).update(
            cat.t("valve.household", household=self.meter.household or "—") + " · "
            + cat.t("detail.valve", valve=fmt.valve(cat, self.meter.valve)))
        self.query_one("#valve-reason-label", Label).update(cat.t("valve.reason"))
        self.query_one("#valve-confirm", Button).label = cat.t("valve.confirm")
        self.query_one("#valve-cancel", Button).label = cat.t("valve.done" if self.command else "valve.cancel")
        self.show_outcome()

    def show_outcome(self) -> None:
        cat = self.cat
        label = self.query_one("#valve-outcome", Label)
        if self.error:
            label.update(self.error)
            label.set_class(True, "error")
        elif self.command is not None:
            c = self.command
            text = cat.t("cmd.state", id=c.id, state=fmt.command_state(cat, c.state))
            if c.detail:
                text += " — " + cat.t("cmd.detail", detail=c.detail)
            label.update(text)
            label.set_class(c.state not in ("pending", "sent", "succeeded"), "error")
            label.set_class(c.state == "succeeded", "ok")
        else:
            label.update("")

    def on_input_submitted(self) -> None:
        self.confirm()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "valve-confirm":
            self.confirm()
        else:
            self.action_close()

    def confirm(self) -> None:
        if self.command is not None:
            return
        reason = self.query_one("#valve-reason", Input).value.strip()
        if not reason:
            self.error = self.cat.t("valve.need_reason")
            self.show_outcome()
            return
        self.error = None
        self.query_one("#valve-confirm", Button).disabled = True
        self.run_worker(self._submit(reason), exclusive=True, exit_on_error=False)

    async def _submit(self, reason: str) -> None:
        try:
            command = await self.console.client.valve(self.meter.id, open=self.open, reason=reason)
        except Exception as exc:
            self.error = self.cat.t("cmd.error", reason=self.console.api_failed(exc))
            self.query_one("#valve-confirm", Button).disabled = False
            self.show_outcome()
            return
        self.update_command(command)
        self.query_one("#valve-reason", Input).disabled = True
        self.query_one("#valve-cancel", Button).label = self.cat.t("valve.done")
        self.query_one("#valve-cancel", Button).focus()
        if not command.final:
            self._poll = self.set_interval(POLL_SECONDS, self._poll_state)

    def update_command(self, command: Command) -> None:
        if self.command is not None and self.command.final:
            return  # an outcome is never replaced by an older state that arrives late
        if self.command is not None and command.url is None:
            command = Command(command.id, command.kind, command.state, command.detail, command.target,
                              self.command.url)
        self.command = command
        self.show_outcome()
        if command.final and self._poll is not None:
            self._poll.stop()

    async def _poll_state(self) -> None:
        if self.command is None or self.command.final:
            return
        try:
            self.update_command(await self.console.client.command(self.command))
        except Exception:  # the stream may still bring it; the next tick tries again
            pass

    def on_api_events(self, events: list[dict[str, Any]]) -> None:
        if self.command is None:
            return
        for event in events:
            cmd = event.get("command")
            if event.get("type") == "CommandChanged" and isinstance(cmd, dict) and str(cmd.get("id")) == self.command.id:
                try:
                    self.update_command(Command.from_json(cmd))
                except ValueError:
                    pass

    def action_close(self) -> None:
        if self._poll is not None:
            self._poll.stop()
        self.dismiss(self.command)
