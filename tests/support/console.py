"""Driving the Textual console in tests under the asyncio reactor, and screen snapshots.

Textual's pilot (``app.run_test()``) is a coroutine on the running asyncio loop; under
pytest-twisted it is awaited as ``Deferred.fromFuture(asyncio.ensure_future(...))``
(``drive``), so the same test can also run a real supervisor on that loop.  ``until``
waits for a condition with a bounded deadline, letting the app's workers run.

Snapshots are the screen's text (what an operator reads, also in Chinese) at a fixed
size, stored under ``tests/tui/snapshots/NAME.txt``; ``ST2000R_UPDATE_SNAPSHOTS=1``
rewrites them.  A mismatch fails with a unified diff.
"""

from __future__ import annotations

import asyncio
import difflib
import io
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from twisted.internet.defer import Deferred

SNAPSHOTS = Path(__file__).parents[1] / "tui" / "snapshots"


def drive(app, scenario: Callable[[object], Awaitable[None]], *, size: tuple[int, int] = (100, 30)) -> Deferred:
    """Run ``app`` headless at ``size`` and ``await scenario(pilot)`` inside it."""

    async def go() -> None:
        async with app.run_test(size=size) as pilot:
            await scenario(pilot)

    return Deferred.fromFuture(asyncio.ensure_future(go()))


async def until(pilot, predicate: Callable[[], object], *, timeout: float = 10.0, what: str = "") -> None:
    """Let the app run until ``predicate()`` is true; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}\n"
                                 f"screen:\n{screen_text(pilot.app)}")
        await pilot.pause(0.02)


def screen_text(app) -> str:
    """The current screen as plain text, one line per terminal row, trailing blanks cut."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return "\n".join(line.rstrip() for line in console.export_text(styles=False).splitlines())


async def assert_settled_snapshot(pilot, name: str) -> None:
    """``assert_snapshot`` once the app has handled every pending message (key help and
    labels follow state changes a message later; a loaded machine shows that gap)."""
    await pilot.pause()
    await pilot.pause()
    assert_snapshot(pilot.app, name)


def assert_snapshot(app, name: str) -> None:
    text = screen_text(app) + "\n"
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("ST2000R_UPDATE_SNAPSHOTS") == "1" or not path.exists():
        if not path.exists() and os.environ.get("CI") == "true":
            raise AssertionError(f"snapshot {path.name} is missing (make it with ST2000R_UPDATE_SNAPSHOTS=1)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    want = path.read_text(encoding="utf-8")
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), f"{name} (stored)",
                                            f"{name} (now)"))
        raise AssertionError(f"screen differs from snapshot {path.name} "
                             f"(ST2000R_UPDATE_SNAPSHOTS=1 to accept):\n{diff}")
