"""The console's screens by name, made fresh for every login (no state survives a logout)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.screen import Screen

if TYPE_CHECKING:
    from st2000r.tui.app import ConsoleApp


def build_screens(app: ConsoleApp) -> dict[str, Screen]:
    from st2000r.tui.screen_alarms import AlarmsScreen
    from st2000r.tui.screen_dashboard import DashboardScreen
    from st2000r.tui.screen_links import LinksScreen
    from st2000r.tui.screen_meters import MetersScreen
    from st2000r.tui.screen_operators import OperatorsScreen

    return {
        "dashboard": DashboardScreen(),
        "meters": MetersScreen(page_size=app.page_size),
        "alarms": AlarmsScreen(),
        "links": LinksScreen(),
        "operators": OperatorsScreen(),
    }
