"""How values look on screen: translated names, exact integer readings, fixed-width cells.

Readings are shown as the integer of their base unit the supervisor sends (``12345 L``),
digits grouped with thin spaces never being used: an operator compares them with a meter's
register, and a test with the simulator's ground truth.  Cells are padded by terminal cell
width, so Chinese text (two cells a character) lines up with English.
"""

from __future__ import annotations

from rich.cells import cell_len, set_cell_size

from st2000r.tui.i18n import CATALOGUES, Catalogue
from st2000r.tui.model import Alarm, Meter


def _name(cat: Catalogue, prefix: str, value: str | None, unknown: str) -> str:
    if value is None:
        return cat.t(unknown)
    key = f"{prefix}.{value}"
    return cat.t(key) if key in CATALOGUES[cat.language] else value


def kind(cat: Catalogue, value: str | None) -> str:
    return _name(cat, "kind", value, "none")


def quality(cat: Catalogue, value: str | None) -> str:
    return _name(cat, "quality", value, "quality.unknown")


def valve(cat: Catalogue, value: str | None) -> str:
    return _name(cat, "valve.state", value, "valve.state.unknown")


def link_state(cat: Catalogue, value: str | None) -> str:
    return _name(cat, "link.state", value, "link.state.unknown")


def command_state(cat: Catalogue, value: str) -> str:
    return _name(cat, "state", value, "none")


def alarm_state(cat: Catalogue, value: str) -> str:
    return _name(cat, "alarm.state", value, "none")


def link_kind(cat: Catalogue, value: str | None) -> str:
    return _name(cat, "linkkind", value, "none")


def role(cat: Catalogue, value: str | None) -> str:
    return _name(cat, "role", value, "none")


def severity(cat: Catalogue, value: str | None) -> str:
    return _name(cat, "severity", value, "none")


def historian_state(cat: Catalogue, value: str | None) -> str:
    return _name(cat, "hist", value, "none")


def alarms(cat: Catalogue, values: tuple[str, ...]) -> str:
    return ", ".join(_name(cat, "alarm", a, "none") for a in values) if values else cat.t("none")


def reading(value: int | None, unit: str | None) -> str:
    if value is None:
        return "—"
    return f"{value} {unit}" if unit else str(value)


def when(iso: str | None) -> str:
    """``2026-05-28T20:26:40+00:00`` → ``05-28 20:26:40`` (UTC, as sent); ``—`` when never."""
    if not iso:
        return "—"
    if len(iso) >= 19 and iso[10] in "T ":
        return f"{iso[5:10]} {iso[11:19]}"
    return iso


def cell(text: str, width: int, *, right: bool = False) -> str:
    """``text`` cut or padded to exactly ``width`` terminal cells."""
    if cell_len(text) > width:
        return set_cell_size(text, width - 1) + "…" if width > 1 else set_cell_size(text, width)
    pad = " " * (width - cell_len(text))
    return pad + text if right else text + pad


# (catalogue key, width, right-aligned); the last column takes what is left
# at 80 columns the alarms column keeps 15 cells
METER_COLUMNS = (
    ("meters.col.id", 16, False),
    ("meters.col.household", 9, False),
    ("meters.col.kind", 5, False),
    ("meters.col.value", 14, True),
    ("meters.col.quality", 9, False),
    ("meters.col.valve", 6, False),
    ("meters.col.alarms", 12, False),
)


def meter_cells(cat: Catalogue, m: Meter) -> tuple[str, ...]:
    return (m.id, m.household or "—", _name(cat, "kshort", m.kind, "none"), reading(m.value, m.base_unit),
            quality(cat, m.quality), "—" if m.valve == "none" else valve(cat, m.valve),
            alarms(cat, m.alarms) if m.alarms else "")


def table_line(cells: tuple[str, ...], columns, width: int) -> str:
    """One row of a fixed-column table, exactly ``width`` cells wide."""
    parts = []
    used = 0
    for n, (text, (_, w, right)) in enumerate(zip(cells, columns)):
        last = n == len(columns) - 1
        w = max(1, width - used) if last else w
        parts.append(cell(text, w, right=right))
        used += w + 1
        if used >= width:
            break
    return cell(" ".join(parts), width)


def meter_columns(id_width: int, width: int) -> tuple:
    """The columns with the id column as wide as the longest id loaded, but leaving the
    alarms column at least 8 cells (ids are cut with an ellipsis beyond that)."""
    rest = sum(w + 1 for _, w, _ in METER_COLUMNS[1:-1]) + 1
    idw = max(METER_COLUMNS[0][1], min(id_width, width - rest - 8))
    return (("meters.col.id", idw, False), *METER_COLUMNS[1:])


def meter_header(cat: Catalogue, width: int, id_width: int = 0) -> str:
    columns = meter_columns(id_width, width)
    return table_line(tuple(cat.t(key) for key, _, _ in columns), columns, width)


def meter_line(cat: Catalogue, m: Meter, width: int, id_width: int = 0) -> str:
    return table_line(meter_cells(cat, m), meter_columns(id_width, width), width)


def alarm_cells(cat: Catalogue, a: Alarm) -> tuple[str, ...]:
    return (a.source, _name(cat, "alarm", a.kind, "none"), severity(cat, a.severity), alarm_state(cat, a.state),
            when(a.raised_at), a.acked_by or "")
