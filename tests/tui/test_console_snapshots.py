"""Snapshots of the main screens at 80x24 in both languages, with fixed data (the
in-memory API: fixed times and values).  ``ST2000R_UPDATE_SNAPSHOTS=1`` rewrites them."""

from __future__ import annotations

import pytest
import pytest_twisted
from support.console import assert_settled_snapshot, drive, screen_text, until
from support.fake_api import FakeApi, alarm
from test_console_pilot import console, login


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest_twisted.ensureDeferred
async def test_main_screens(language):
    api = FakeApi()
    a = alarm("bus1/1/1/1")
    api.alarms[a["id"]] = a
    api.meters[0]["alarms"] = ["tamper"]
    api.meters[4]["quality"] = "comm_fail"
    marker = {"en": "12 meters loaded", "zh": "已载入 12 块表"}[language]

    async def scenario(pilot):
        await until(pilot, lambda: pilot.app.screen.query("#name"))
        await assert_settled_snapshot(pilot, f"login-{language}")
        await login(pilot)
        await until(pilot, lambda: "bus1" in screen_text(pilot.app) and "%" in screen_text(pilot.app))
        await assert_settled_snapshot(pilot, f"dashboard-{language}")
        await pilot.press("f2")
        await until(pilot, lambda: marker in screen_text(pilot.app))
        await assert_settled_snapshot(pilot, f"meters-{language}")
        await pilot.press("f")
        await until(pilot, lambda: pilot.app.screen.query("#f-household"))
        await assert_settled_snapshot(pilot, f"filter-{language}")
        await pilot.press("escape")
        await pilot.press("enter")
        await until(pilot, lambda: "101010 L" in screen_text(pilot.app) and "┤" in screen_text(pilot.app))
        await assert_settled_snapshot(pilot, f"detail-{language}")
        await pilot.press("v")
        await until(pilot, lambda: pilot.app.screen.query("#valve-reason"))
        await assert_settled_snapshot(pilot, f"valve-{language}")
        await pilot.press("escape")
        await pilot.press("f3")
        await until(pilot, lambda: "bus1/1/1/1" in screen_text(pilot.app))
        await assert_settled_snapshot(pilot, f"alarms-{language}")
        await pilot.press("f4")
        await until(pilot, lambda: "1234" in screen_text(pilot.app))
        await assert_settled_snapshot(pilot, f"links-{language}")

    await drive(console(api, language), scenario, size=(80, 24))
