"""What every console screen shares: the catalogue, translated key help, the status line.

Bindings are declared with catalogue keys as their descriptions; ``translate_bindings``
gives each screen (and the app) its own copy in the current language, so the footer's key
help follows a language switch.  A screen shows live data by overriding ``on_api_events``
(batches of event dicts, docs/events.md) and ``reload`` (after a resync or login).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from textual.binding import BindingsMap
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static

from st2000r.tui.i18n import CATALOGUES, Catalogue

if TYPE_CHECKING:
    from st2000r.tui.app import ConsoleApp


def translate_bindings(node: DOMNode, cat: Catalogue) -> None:
    """Replace ``node``'s bindings with copies whose descriptions are translated.

    Textual keeps a node's bindings in ``_bindings``, copied from the class's merged map at
    construction; there is no public setter for descriptions, so the copy is rebuilt from
    the class map (whose descriptions are catalogue keys) every time."""
    strings = CATALOGUES[cat.language]
    merged = type(node)._merged_bindings
    if merged is None:
        return

    def translated(b):
        if b.description in strings:
            b = replace(b, description=strings[b.description])
        if b.group is not None and b.group.description in strings:
            b = replace(b, group=replace(b.group, description=strings[b.group.description]))
        return b

    keys = {key: [translated(b) for b in bindings] for key, bindings in merged.key_to_bindings.items()}
    node._bindings = BindingsMap.from_keys(keys)


class StatusLine(Static):
    """Connection state and who is logged in; one line above the key help."""


class NavBar(Static):
    """The screens and their keys (F1…F5), the one on view marked: the key help groups
    F1–F5 as one entry to fit 80 columns, so their names are shown here."""


def nav_text(cat: Catalogue, current: str | None) -> str:
    from st2000r.tui.app import SCREENS

    parts = []
    for n, name in enumerate(SCREENS, 1):
        label = f"F{n} {cat.t('key.' + name)}"
        parts.append(f"[reverse] {label} [/reverse]" if name == current else f" {label} ")
    return "".join(parts)


def KeyHelp() -> Footer:  # noqa: N802 - reads as a widget in compose()
    """The visible key help: Textual's footer, compact so more keys fit in 80 columns."""
    return Footer(compact=True)


class Translatable:
    """Mixin of screens: ``cat``, ``relabel`` on a language switch, live-data hooks."""

    @property
    def console(self) -> ConsoleApp:
        return self.app  # type: ignore[attr-defined,return-value]

    @property
    def cat(self) -> Catalogue:
        return self.console.cat

    _ready = False  # set once the screen's widgets exist (on mount)

    def retranslate(self) -> None:
        translate_bindings(self, self.cat)  # type: ignore[arg-type]
        if self._ready:
            self.relabel()
            if hasattr(self, "update_status"):
                self.update_status()
            self.refresh_bindings()  # type: ignore[attr-defined]

    def relabel(self) -> None:
        """Set every text of the screen from the catalogue (called on mount and switch)."""

    def on_api_events(self, events: list[dict[str, Any]]) -> None:
        """Live events from the supervisor (already in order)."""

    def reload(self) -> None:
        """Fetch what the screen shows again (after login, a resync or a refresh key)."""


class ConsoleScreen(Translatable, Screen):
    def on_mount(self) -> None:
        self._ready = True
        self.retranslate()
        self.update_status()

    def on_screen_resume(self) -> None:
        self.retranslate()
        self.update_status()

    NAV: str | None = None  # which screen of the navigation bar this is

    def update_status(self) -> None:
        for line in self.query(StatusLine):
            line.update(self.console.status_text())
        for bar in self.query(NavBar):
            bar.update(nav_text(self.cat, self.NAV))


class ConsoleModal(Translatable, ModalScreen):
    def on_mount(self) -> None:
        self._ready = True
        self.retranslate()
