"""The rooms of DESIGN.md §2 import only what they may.

Checked statically (every ``import`` in every module, including function-local ones), so a
forbidden import fails here even if no test happens to execute it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
ROOMS = {
    "config": "config",
    "drivers": "drivers",
    "supervisor": "supervisor",
    "bridge": "bridge",
    "historian": "historian",
    "tui": "tui",
    "simulation": "simulation",
}
# room -> rooms of ours it may import (besides itself)
ALLOWED = {
    "config": set(),
    "drivers": {"config"},
    "supervisor": {"config", "drivers", "bridge", "historian"},  # never the simulator: it is the field twin
    "bridge": {"supervisor", "config"},
    "historian": {"supervisor", "config"},
    "tui": set(),
    "simulation": {"config", "drivers"},
}
# modules of the codec that must stay sans-I/O
SANS_IO = [
    "frame", "messages", "msgbase", "standard", "vendor", "units", "bcd", "crc", "errors",
    "describe", "cli", "registration", "registration_errors",
    "registration_ddp", "registration_formats", "registration_auth",
]  # fmt: skip
# sans-I/O parts of the driver's own engines (not shared with the simulator)
SANS_IO_ENGINES = ["gprs_throttle", "gsm_dialer", "master_queue", "master_policy"]
# the simulator plays the device role: it shares the sans-I/O codec and packet formats with
# the driver, never the driver's master, poller or links
SIMULATION_MAY_USE = {f"st2000r.drivers.st2000r.{m}" for m in SANS_IO} | {"st2000r.drivers.st2000r"}
IO_MODULES = {"twisted", "socket", "asyncio", "serial", "select", "selectors", "pymodbus"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def modules(room: str):
    return sorted((ROOT / room).rglob("*.py"))


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_room_imports_only_allowed_rooms(room):
    bad = []
    for path in modules(room):
        for name in imports(path):
            parts = name.split(".")
            if parts[0] in ROOMS:
                bad.append(f"{path.relative_to(ROOT)}: bare import {name!r} (use st2000r.…)")
            if parts[0] == "st2000r" and len(parts) > 1:
                other = parts[1]
                if other != ROOMS[room] and other not in ALLOWED[room]:
                    bad.append(f"{path.relative_to(ROOT)}: imports {name}")
            if room == "simulation" and name.startswith("st2000r.drivers") and name not in SIMULATION_MAY_USE:
                bad.append(f"{path.relative_to(ROOT)}: the simulator may use only the codec, not {name}")
            if parts[0] == "textual" and room != "tui":
                bad.append(f"{path.relative_to(ROOT)}: only tui/ may import Textual")
    assert bad == []


@pytest.mark.parametrize("module", SANS_IO + SANS_IO_ENGINES)
def test_codec_is_sans_io(module):
    path = ROOT / "drivers" / "st2000r" / f"{module}.py"
    found = {n.split(".")[0] for n in imports(path)} & IO_MODULES
    assert found == set(), f"{path.name} imports {found}"


def test_tui_never_imports_twisted():
    """The console is a client of the HTTP API on Textual's own loop: no Twisted at all."""
    bad = [f"{p.relative_to(ROOT)}: {n}" for p in modules("tui") for n in imports(p)
           if n == "twisted" or n.startswith("twisted.")]
    assert bad == []


def test_console_command_loads_no_daemon_module():
    """``st2000r console`` (tui.cli and the app it starts) imports nothing of the daemon's
    rooms and no Twisted, checked in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys; import st2000r.tui.cli, st2000r.tui.app, st2000r.tui.screens\n"
        "from st2000r.tui.screens import build_screens\n"
        "import st2000r.tui.screen_meters, st2000r.tui.screen_detail, st2000r.tui.screen_alarms\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'twisted' or\n"
        "             m.split('.')[:2] in (['st2000r', r] for r in ('supervisor', 'drivers', 'bridge', 'historian')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_no_room_names_a_module_it_may_not_import():
    """Not even as a string for a lazy import: the ``st2000r`` dispatcher finds the rooms'
    commands through the ``st2000r.commands`` entry points, so the supervisor names no
    simulator module."""
    offenders = []
    for room, folder in ROOMS.items():
        forbidden = [f"st2000r.{r}" for r in ROOMS if r != room and r not in ALLOWED[room]]
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in forbidden if f"{name}." in text
                          or f'"{name}"' in text]
    assert offenders == []


def test_every_installed_command_has_help_and_every_help_a_command():
    from st2000r.supervisor import cli

    assert set(cli.commands()) == set(cli.HELP)


def test_the_checker_sees_a_violation(tmp_path):
    """The checks above would fail on a violation (guards against a vacuous pass)."""
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    import twisted.internet.reactor\n    from textual.app import App\n")
    assert {"twisted.internet.reactor", "textual.app"} <= imports(bad)


# the one write path (DESIGN.md §2): only the command module builds frames that change the field
WRITE_MESSAGES = {"ValveControl", "SetBase", "TimeSync", "WriteAddress"}
WRITERS = {Path("supervisor/commands.py")}
NORTH_ROOMS = ("bridge", "historian", "tui")
NO_MASTER = {f"st2000r.drivers.st2000r.{m}" for m in ("master", "poller", "links", "gprs", "gsm")}


def write_frames_built(path: Path) -> list[int]:
    """Lines where ``path`` calls a write message's constructor (``m.ValveControl(...)``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in WRITE_MESSAGES:
                lines.append(node.lineno)
    return lines


def test_only_the_command_module_builds_write_frames():
    bad = []
    for room in ("supervisor", *NORTH_ROOMS):
        for path in sorted((ROOT / room).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel not in WRITERS and write_frames_built(path):
                bad.append(f"{rel}: builds a write frame at line(s) {write_frames_built(path)}")
    assert bad == []
    assert all(write_frames_built(ROOT / w) for w in WRITERS)  # the rule still sees the real writer


def test_north_side_never_reaches_a_bus_master():
    """Bridge, historian, console and the HTTP API talk to the command dispatcher and the
    event bus, never to a master, poller or link."""
    bad = []
    paths = [p for room in NORTH_ROOMS for p in sorted((ROOT / room).rglob("*.py"))]
    paths += sorted((ROOT / "supervisor").glob("api*.py")) + sorted((ROOT / "supervisor" / "api").rglob("*.py"))
    for path in paths:
        for name in imports(path):
            if any(name == n or name.startswith(n + ".") for n in NO_MASTER):
                bad.append(f"{path.relative_to(ROOT)}: imports {name}")
    assert bad == []


def test_the_write_frame_detector_sees_calls(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from st2000r.drivers.st2000r import messages as m\nm.ValveControl(open=False)\nSetBase()\n")
    assert write_frames_built(bad) == [2, 3]
