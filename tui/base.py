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
from textual.widgets import Static

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
    keys = {
        key: [replace(b, description=strings[b.description]) if b.description in strings else b for b in bindings]
        for key, bindings in merged.key_to_bindings.items()
    }
    node._bindings = BindingsMap.from_keys(keys)


class StatusLine(Static):
    """Connection state and who is logged in; one line above the key help."""


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

    def update_status(self) -> None:
        for line in self.query(StatusLine):
            line.update(self.console.status_text())


class ConsoleModal(Translatable, ModalScreen):
    def on_mount(self) -> None:
        self._ready = True
        self.retranslate()
