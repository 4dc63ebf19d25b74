"""Login: name and password, sent to ``POST /api/v1/login``; errors are shown in place."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Button, Input, Label

from st2000r.tui.base import ConsoleScreen, KeyHelp, StatusLine
from st2000r.tui.client import ApiError, Unreachable
from st2000r.tui.model import BadAnswer


class LoginScreen(ConsoleScreen):
    def __init__(self, message: str | None = None) -> None:
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(id="login-box"):
            yield Label(id="login-title")
            yield Label(id="name-label")
            yield Input(id="name")
            yield Label(id="password-label")
            yield Input(id="password", password=True)
            yield Button(id="login-button", variant="primary")
            yield Label(self.message or "", id="login-error")
        yield StatusLine()
        yield KeyHelp()

    def on_mount(self) -> None:
        self.query_one("#name", Input).focus()

    def relabel(self) -> None:
        self.query_one("#login-title", Label).update(self.cat.t("login.title", url=self.console.url))
        focused = self.focused.id if self.focused is not None else None
        for field in ("name", "password"):  # a mark where typing goes, also without colours
            mark = "▶ " if focused == field else "  "
            self.query_one(f"#{field}-label", Label).update(mark + self.cat.t(f"login.{field}"))
        self.query_one("#login-button", Button).label = self.cat.t("login.submit")

    def on_descendant_focus(self) -> None:
        self.relabel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "name":
            self.query_one("#password", Input).focus()
        else:
            self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.submit()

    def submit(self) -> None:
        name = self.query_one("#name", Input).value.strip()
        password = self.query_one("#password", Input).value
        error = self.query_one("#login-error", Label)
        if not name or not password:
            error.update(self.cat.t("login.empty"))
            return
        error.update(self.cat.t("login.busy"))
        self.run_worker(self._login(name, password), exclusive=True, exit_on_error=False)

    async def _login(self, name: str, password: str) -> None:
        error = self.query_one("#login-error", Label)
        try:
            session = await self.console.client.login(name, password)
        except Unreachable as exc:
            error.update(self.cat.t("conn.unreachable", url=self.console.url, reason=exc.reason))
            return
        except (ApiError, BadAnswer) as exc:
            error.update(self.cat.t("login.failed", reason=getattr(exc, "reason", str(exc))))
            self.query_one("#password", Input).value = ""
            return
        self.console.logged_in(session)
