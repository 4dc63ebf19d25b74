"""The console application: screens, global keys, language and the live event stream.

A client of the supervisor's HTTP API only.  After login it follows the event stream in a
worker and hands each batch to every screen, so the one on view redraws within the
batch's turn and the others stay current.  Screens live in their own modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from st2000r.tui.base import Translatable, translate_bindings
from st2000r.tui.client import ApiClient
from st2000r.tui.i18n import Catalogue, language_from_env
from st2000r.tui.model import Session
from st2000r.tui.stream import EventFollower, StreamHandlers

SCREENS = ("dashboard", "meters", "alarms", "links", "operators")


class ConsoleApp(App):
    CSS_PATH = "console.tcss"
    BINDINGS = [
        *(Binding(f"f{n}", f"show('{name}')", f"key.{name}", group=Binding.Group("key.screens", compact=True))
          for n, name in enumerate(SCREENS, 1)),
        Binding("f9", "language", "key.language"),
        Binding("ctrl+q", "quit", "key.quit", priority=True),
    ]

    def __init__(self, url: str, *, language: str | None = None, client: ApiClient | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, page_size: int = 500,
                 ca_file: str | None = None) -> None:
        super().__init__()
        self.cat = Catalogue(language or language_from_env())
        self.client = client or ApiClient(url, ca_file=ca_file)
        self.url = self.client.url
        self.sleep = sleep
        self.page_size = page_size
        self.session: Session | None = None
        self.follower: EventFollower | None = None
        self.connected: bool | None = None
        self.live: dict[str, Screen] = {}

    # -- life ---------------------------------------------------------------------------
    def on_mount(self) -> None:
        self.title = self.cat.t("app.title")
        translate_bindings(self, self.cat)
        self.show_login()

    async def on_unmount(self) -> None:
        await self.client.aclose()

    def show_login(self, message: str | None = None) -> None:
        from st2000r.tui.screen_login import LoginScreen

        self.workers.cancel_group(self, "events")
        self.follower, self.session, self.connected = None, None, None
        while len(self.screen_stack) > 1:
            self.pop_screen()
        for name in list(self.live):
            self.uninstall_screen(name)
        self.live.clear()
        self.push_screen(LoginScreen(message))
        self.refresh_bindings()

    def logged_in(self, session: Session) -> None:
        from st2000r.tui.screens import build_screens

        self.session = session
        self.refresh_bindings()
        self.live = build_screens(self)
        for name, screen in self.live.items():
            self.install_screen(screen, name)
        self.switch_screen("dashboard")
        self.follower = EventFollower(self.client, StreamHandlers(self._events, self._stream_state, self._resync,
                                                                  self._expired), sleep=self.sleep)
        self.run_worker(self.follower.run_forever(), group="events", exclusive=True, exit_on_error=False)

    # -- keys ---------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The screen keys are hidden until login (there is nothing to show before it)."""
        return self.session is not None if action == "show" else True

    def action_show(self, name: str) -> None:
        if self.session is None or name not in self.live:
            return
        while len(self.screen_stack) > 2:
            self.pop_screen()
        if self.screen is not self.live[name]:
            self.switch_screen(name)

    def action_language(self) -> None:
        self.set_language(self.cat.other())

    def set_language(self, language: str) -> None:
        self.cat.language = language
        self.title = self.cat.t("app.title")
        translate_bindings(self, self.cat)
        for screen in self._screens():
            screen.retranslate()
        self.refresh_bindings()

    # -- live ---------------------------------------------------------------------------
    def _screens(self) -> list[Translatable]:
        seen: dict[int, Any] = {id(s): s for s in self.live.values()}
        seen.update({id(s): s for s in self.screen_stack})
        return [s for s in seen.values() if isinstance(s, Translatable)]

    def _events(self, events: list[dict[str, Any]]) -> None:
        for screen in self._screens():
            screen.on_api_events(events)

    def _stream_state(self, connected: bool, reason: str | None) -> None:
        was, self.connected = self.connected, connected
        if not connected:
            self.notify(self.cat.t("conn.unreachable", url=self.url, reason=reason or ""), severity="error",
                        timeout=8)
        elif was is False:
            self.notify(self.cat.t("conn.restored", url=self.url))
            self._reload_all()
        self._update_status()

    def _resync(self) -> None:
        self.notify(self.cat.t("conn.missed"), severity="warning")
        self._reload_all()

    def _expired(self) -> None:
        self.show_login(self.cat.t("conn.expired"))

    def _reload_all(self) -> None:
        for screen in self.live.values():
            screen.reload()  # type: ignore[attr-defined]

    def _update_status(self) -> None:
        for screen in self._screens():
            if hasattr(screen, "update_status"):
                screen.update_status()

    def status_text(self) -> str:
        if self.session is None:
            return self.url
        state = {True: "conn.live", False: "conn.offline", None: "meters.loading"}[self.connected]
        from st2000r.tui.format import role

        who = self.cat.t("dash.user", name=self.session.name, role=role(self.cat, self.session.role))
        return f"{who} · {self.url} · {self.cat.t(state)}"

    def api_failed(self, exc: Exception) -> str:
        """The text to show for a failed API call; an expired session goes back to login."""
        from st2000r.tui.client import Unauthorized

        if isinstance(exc, Unauthorized) and self.session is not None:
            self.call_later(self._expired)
        reason = getattr(exc, "reason", None) or str(exc)
        if exc.__class__.__name__ == "Unreachable":
            return self.cat.t("conn.unreachable", url=self.url, reason=reason)
        return reason
