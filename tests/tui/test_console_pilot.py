"""The console driven like an operator (Textual's pilot) against the in-memory API:
login, filtering, acknowledging an alarm, a valve command to its outcome, language,
an unreachable supervisor, an expired session."""

from __future__ import annotations

import pytest_twisted
from support.console import drive, screen_text, until
from support.fake_api import FakeApi, alarm

from st2000r.tui.app import ConsoleApp
from st2000r.tui.client import ApiClient


async def no_wait(seconds: float) -> None:
    """The follower's back-off, without waiting (tests never sleep)."""
    import asyncio

    await asyncio.sleep(0)


def console(api: FakeApi, language: str = "en") -> ConsoleApp:
    return ConsoleApp("http://supervisor.test", language=language, sleep=no_wait,
                      client=ApiClient("http://supervisor.test", transport=api.transport()))


async def login(pilot, name: str = "alice", password: str = "s3cret") -> None:
    await until(pilot, lambda: pilot.app.screen.query("#name"), what="the login screen")
    pilot.app.screen.query_one("#name").value = name
    pilot.app.screen.query_one("#password").value = password
    pilot.app.screen.query_one("#password").focus()
    await pilot.press("enter")
    await until(pilot, lambda: pilot.app.session is not None and pilot.app.connected, what="login and live stream")


@pytest_twisted.ensureDeferred
async def test_login_with_a_wrong_password_says_so_and_a_right_one_opens_the_dashboard():
    api = FakeApi()

    async def scenario(pilot):
        await until(pilot, lambda: pilot.app.screen.query("#name"))
        pilot.app.screen.query_one("#name").value = "alice"
        pilot.app.screen.query_one("#password").value = "wrong"
        await pilot.click("#login-button")
        await until(pilot, lambda: "Login failed" in screen_text(pilot.app), what="the failure message")
        assert "bad name or password" in screen_text(pilot.app)
        assert pilot.app.session is None
        await login(pilot)
        await until(pilot, lambda: "Reading round: 1 of 2 CDTs read" in screen_text(pilot.app))
        text = screen_text(pilot.app)
        assert "Meters: 12 (12 good, 0 not good)" in text
        assert "alice (operator)" in text

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_filtering_the_meters_asks_the_api_and_shows_only_matches():
    api = FakeApi()

    async def scenario(pilot):
        await login(pilot)
        await pilot.press("f2")
        await until(pilot, lambda: "bus1/2/2/3" in screen_text(pilot.app), what="all meters")
        await pilot.press("f")
        await until(pilot, lambda: pilot.app.screen.query("#f-household"))
        pilot.app.screen.query_one("#f-household").value = "B002-*"
        pilot.app.screen.query_one("#f-kind").value = "water"
        await pilot.click("#f-apply")
        await until(pilot, lambda: "household=B002-*" in screen_text(pilot.app), what="the filter line")
        await until(pilot, lambda: "2 meters loaded" in screen_text(pilot.app))
        text = screen_text(pilot.app)
        assert "bus1/2/1/1" in text and "bus1/2/2/1" in text
        assert "bus1/1/1/1" not in text and "bus1/2/1/2" not in text
        assert ("GET", "/api/v1/meters", {"household": "B002-*", "kind": "water", "limit": "500"}) in api.requests
        await pilot.press("c")
        await until(pilot, lambda: "12 meters loaded" in screen_text(pilot.app))

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_a_bad_building_number_is_named_and_nothing_is_asked():
    api = FakeApi()

    async def scenario(pilot):
        await login(pilot)
        await pilot.press("f2")
        await pilot.press("f")
        await until(pilot, lambda: pilot.app.screen.query("#f-cdt"))
        pilot.app.screen.query_one("#f-cdt").value = "3a"
        await pilot.click("#f-apply")
        await until(pilot, lambda: "must be a number, not '3a'" in screen_text(pilot.app))
        assert not any(p.get("cdt") for _, _, p in api.requests)

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_acknowledging_an_alarm_posts_it_and_the_list_follows_the_event():
    api = FakeApi()
    a = alarm("bus1/1/1/1")
    api.alarms[a["id"]] = a

    async def scenario(pilot):
        await login(pilot)
        await pilot.press("f3")
        await until(pilot, lambda: "active, unacknowledged" in screen_text(pilot.app))
        await pilot.press("a")
        await until(pilot, lambda: "active, acknowledged" in screen_text(pilot.app), what="the acknowledged state")
        assert ("POST", "/api/v1/alarms/acknowledge", {}) in api.requests
        assert "alice" in screen_text(pilot.app)

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_shelving_needs_a_reason_and_sends_it_with_the_duration():
    api = FakeApi()
    a = alarm("bus1/1/1/1")
    api.alarms[a["id"]] = a

    async def scenario(pilot):
        await login(pilot)
        await pilot.press("f3")
        await until(pilot, lambda: "active, unacknowledged" in screen_text(pilot.app))
        await pilot.press("s")
        await until(pilot, lambda: pilot.app.screen.query("#shelve-reason"))
        await pilot.click("#shelve-confirm")
        await until(pilot, lambda: "Give a reason" in screen_text(pilot.app))
        pilot.app.screen.query_one("#shelve-reason").value = "sensor replaced"
        pilot.app.screen.query_one("#shelve-minutes").value = "30"
        pilot.app.screen.query_one("#shelve-minutes").focus()
        await pilot.press("enter")
        await until(pilot, lambda: "shelved" in screen_text(pilot.app) and api.alarms[a["id"]]["state"] == "shelved")
        assert api.alarms[a["id"]]["shelved_reason"] == "sensor replaced"

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_closing_a_valve_confirms_asks_a_reason_and_shows_the_live_outcome():
    api = FakeApi()

    async def scenario(pilot):
        await login(pilot)
        await pilot.press("f2")
        await until(pilot, lambda: "bus1/1/1/1" in screen_text(pilot.app))
        await pilot.press("enter")
        await until(pilot, lambda: "Value: 101010 L" in screen_text(pilot.app), what="the detail")
        await pilot.press("v")
        await until(pilot, lambda: "Close the valve of meter bus1/1/1/1?" in screen_text(pilot.app))
        await pilot.click("#valve-confirm")
        await until(pilot, lambda: "Give a reason" in screen_text(pilot.app))
        assert api.commands == {}
        pilot.app.screen.query_one("#valve-reason").value = "unpaid bill"
        pilot.app.screen.query_one("#valve-reason").focus()
        await pilot.press("enter")
        await until(pilot, lambda: api.commands, what="the command")
        (cid, cmd), = api.commands.items()
        assert (cmd["kind"], cmd["target"], cmd["action"], cmd["reason"]) == ("valve", "bus1/1/1/1", "close",
                                                                               "unpaid bill")
        await until(pilot, lambda: f"Command {cid}: pending" in screen_text(pilot.app))
        api.set_command(cid, "sent", "frame on the wire")
        await until(pilot, lambda: "sent to the field" in screen_text(pilot.app))
        api.set_command(cid, "succeeded", "valve closed (read back)")
        api.change_meter("bus1/1/1/1", valve="closed")
        await until(pilot, lambda: "succeeded — valve closed (read back)" in screen_text(pilot.app))
        await pilot.click("#valve-cancel")
        await until(pilot, lambda: "Valve: closed" in screen_text(pilot.app), what="the detail following the event")

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_a_viewer_is_told_the_valve_command_was_refused():
    api = FakeApi()

    async def scenario(pilot):
        await login(pilot, "vera", "viewpass")
        await pilot.press("f2")
        await until(pilot, lambda: "bus1/1/1/1" in screen_text(pilot.app))
        await pilot.press("v")
        await until(pilot, lambda: pilot.app.screen.query("#valve-reason"))
        pilot.app.screen.query_one("#valve-reason").value = "try"
        await pilot.click("#valve-confirm")
        await until(pilot, lambda: "Command refused: needs role operator" in screen_text(pilot.app))
        assert api.commands == {}

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_switching_language_at_run_time_changes_every_text_and_the_key_help():
    api = FakeApi()

    async def scenario(pilot):
        await login(pilot)
        await pilot.press("f2")
        await until(pilot, lambda: "12 meters loaded" in screen_text(pilot.app))
        assert "Household" in screen_text(pilot.app) and "Filter" in screen_text(pilot.app)
        await pilot.press("f9")
        await until(pilot, lambda: "已载入 12 块表" in screen_text(pilot.app))
        text = screen_text(pilot.app)
        assert "住户" in text and "筛选" in text and "水" in text and "正常" in text
        assert "Household" not in text
        await pilot.press("f9")
        await until(pilot, lambda: "12 meters loaded" in screen_text(pilot.app))

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_chinese_locale_starts_in_chinese(monkeypatch):
    monkeypatch.setenv("LC_ALL", "")
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    api = FakeApi()
    app = ConsoleApp("http://supervisor.test", sleep=no_wait,
                     client=ApiClient("http://supervisor.test", transport=api.transport()))

    async def scenario(pilot):
        await until(pilot, lambda: "登录监控服务" in screen_text(pilot.app))

    await drive(app, scenario)


@pytest_twisted.ensureDeferred
async def test_live_meter_change_reaches_the_table():
    api = FakeApi()

    async def scenario(pilot):
        await login(pilot)
        await pilot.press("f2")
        await until(pilot, lambda: "101010 L" in screen_text(pilot.app))
        api.change_meter("bus1/1/1/1", value=101999, quality="stale")
        await until(pilot, lambda: "101999 L" in screen_text(pilot.app), what="the live value")
        assert "stale" in screen_text(pilot.app)

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_unreachable_supervisor_is_said_and_the_stream_resumes_with_last_event_id():
    api = FakeApi()

    async def scenario(pilot):
        await login(pilot)
        event = api.change_meter("bus1/1/1/1", value=101011)
        await until(pilot, lambda: pilot.app.follower.last_id == str(event["seq"]))
        api.down = True
        api.drop_streams()
        await until(pilot, lambda: pilot.app.connected is False, what="offline")
        await until(pilot, lambda: "unreachable" in screen_text(pilot.app), what="the message")
        assert "offline" in screen_text(pilot.app)
        api.down = False
        await until(pilot, lambda: pilot.app.connected, what="reconnected")
        assert api.last_event_ids[0] is None
        assert api.last_event_ids[-1] == str(event["seq"])
        assert "live" in screen_text(pilot.app)

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_unreachable_at_login_is_a_clear_message():
    api = FakeApi(down=True)

    async def scenario(pilot):
        await until(pilot, lambda: pilot.app.screen.query("#name"))
        pilot.app.screen.query_one("#name").value = "alice"
        pilot.app.screen.query_one("#password").value = "s3cret"
        await pilot.click("#login-button")
        await until(pilot, lambda: "Supervisor unreachable at http://supervisor.test" in screen_text(pilot.app))

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_an_expired_session_goes_back_to_login_and_says_why():
    api = FakeApi()

    async def scenario(pilot):
        await login(pilot)
        api.tokens.clear()  # the supervisor forgot the token (expired or restarted)
        await pilot.press("f2")
        await until(pilot, lambda: "Your session has expired" in screen_text(pilot.app), what="back at login")
        assert pilot.app.session is None

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_operators_screen_for_an_admin_and_refused_for_an_operator():
    api = FakeApi()

    async def scenario(pilot):
        await login(pilot)
        await pilot.press("f5")
        await until(pilot, lambda: "Only administrators may see the operators" in screen_text(pilot.app))

    await drive(console(api), scenario)
    api2 = FakeApi()

    async def admin(pilot):
        await login(pilot, "root", "rootpass")
        await pilot.press("f5")
        await until(pilot, lambda: "vera" in screen_text(pilot.app) and "viewer" in screen_text(pilot.app))

    await drive(console(api2), admin)


@pytest_twisted.ensureDeferred
async def test_a_meter_without_a_valve_is_said_and_no_dialog_opens():
    api = FakeApi()

    async def scenario(pilot):
        await login(pilot)
        await pilot.press("f2")
        await until(pilot, lambda: "bus1/1/1/2" in screen_text(pilot.app))
        await pilot.press("down")  # bus1/1/1/2: electricity, no valve fitted
        await pilot.press("v")
        await until(pilot, lambda: "This meter has no valve" in screen_text(pilot.app))
        assert not pilot.app.screen.query("#valve-reason") and api.commands == {}

    await drive(console(api), scenario)


@pytest_twisted.ensureDeferred
async def test_a_viewer_acknowledging_is_told_the_role_needed_and_nothing_changes():
    api = FakeApi()
    a = alarm("bus1/1/1/1")
    api.alarms[a["id"]] = a

    async def scenario(pilot):
        await login(pilot, "vera", "viewpass")
        await pilot.press("f3")
        await until(pilot, lambda: "active, unacknowledged" in screen_text(pilot.app))
        await pilot.press("a")
        await until(pilot, lambda: "Not done: needs role operator" in screen_text(pilot.app))
        assert api.alarms[a["id"]]["state"] == "active-unacked"

    await drive(console(api), scenario)
