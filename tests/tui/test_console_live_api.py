"""The console against the real HTTP API on a loopback port, in this process, on the same
loop (the supervisor's parts from the API test rig: points, alarms, the command path and a
fake bus master the test answers).  Login, filtering, acknowledging an alarm, a valve
command to its outcome and the language switch, as an operator does them."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from support.apirig import ApiRig
from support.builders import status
from support.console import drive, screen_text, until
from twisted.internet import task

from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.tui.app import ConsoleApp

TAMPER = "meter:bus/1/1/1:tamper"


@pytest.fixture
def rig():
    rig = ApiRig(cdts=3)
    rig.start()
    rig.read(1, [5, 6, 7, 8, 9, 10], statuses=[status(Valve.OPEN, AlarmFlag.TAMPER), 0, 0, 0, 0, 0])
    rig.read(2, [1, 2, 3, 4, 5, 6])
    rig.read(3, [7, 7, 7, 7, 7, 7])
    pump = task.LoopingCall(rig.drain)  # queued consumers (the event stream) drain on the rig's clock
    pump.start(0.02)
    yield rig
    pump.stop()
    pytest_twisted.blockon(rig.stop())


def console(rig, language="en") -> ConsoleApp:
    return ConsoleApp(f"http://127.0.0.1:{rig.api.port}", language=language)


async def login(pilot, name: str) -> None:
    await until(pilot, lambda: pilot.app.screen.query("#name"), what="the login screen")
    pilot.app.screen.query_one("#name").value = name
    pilot.app.screen.query_one("#password").value = name
    pilot.app.screen.query_one("#password").focus()
    await pilot.press("enter")
    await until(pilot, lambda: pilot.app.session is not None and pilot.app.connected, what="login and live stream")


@pytest_twisted.ensureDeferred
async def test_login_dashboard_meters_filter_and_language(rig):
    async def scenario(pilot):
        pilot.app.screen.query_one("#name").value = "operator"
        pilot.app.screen.query_one("#password").value = "wrong"
        pilot.app.screen.query_one("#password").focus()
        await pilot.press("enter")
        await until(pilot, lambda: "Login failed" in screen_text(pilot.app))
        await login(pilot, "operator")
        await until(pilot, lambda: "Meters: 18 (18 good, 0 not good)" in screen_text(pilot.app), what="summary")
        assert "Alarms: 1 unacknowledged, 1 active, 0 shelved" in screen_text(pilot.app)
        await pilot.press("f2")
        await until(pilot, lambda: "18 meters loaded" in screen_text(pilot.app))
        text = screen_text(pilot.app)
        assert "bus/1/1/1" in text and "1050 L" in text and "tamper" in text
        await pilot.press("f")
        await until(pilot, lambda: pilot.app.screen.query("#f-cdt"))
        pilot.app.screen.query_one("#f-cdt").value = "2"
        pilot.app.screen.query_one("#f-cdt").focus()
        await pilot.press("enter")
        await until(pilot, lambda: "6 meters loaded" in screen_text(pilot.app), what="the filtered page")
        text = screen_text(pilot.app)
        assert "bus/2/1/1" in text and "bus/1/1/1" not in text and "bus/3/1/1" not in text
        await pilot.press("f9")
        await until(pilot, lambda: "已载入 6 块表" in screen_text(pilot.app))
        assert "筛选：cdt=2" in screen_text(pilot.app)

    await drive(console(rig), scenario)


@pytest_twisted.ensureDeferred
async def test_acknowledging_the_tamper_alarm(rig):
    async def scenario(pilot):
        await login(pilot, "operator")
        await pilot.press("f3")
        await until(pilot, lambda: "active, unacknowledged" in screen_text(pilot.app))
        await pilot.press("a")
        await until(pilot, lambda: "active, acknowledged" in screen_text(pilot.app), what="acknowledged")
        assert rig.alarms.alarm(TAMPER).acked_by == "operator"
        assert "operator" in screen_text(pilot.app)

    await drive(console(rig), scenario)


@pytest_twisted.ensureDeferred
async def test_closing_a_valve_shows_the_outcome_read_back_from_the_field(rig):
    async def scenario(pilot):
        await login(pilot, "operator")
        await pilot.press("f2")
        await until(pilot, lambda: "bus/1/1/1" in screen_text(pilot.app))
        await pilot.press("enter")
        await until(pilot, lambda: "Value: 1050 L" in screen_text(pilot.app), what="the meter's detail")
        await pilot.press("v")
        await until(pilot, lambda: pilot.app.screen.query("#valve-reason"))
        pilot.app.screen.query_one("#valve-reason").value = "unpaid bill"
        pilot.app.screen.query_one("#valve-reason").focus()
        await pilot.press("enter")
        await until(pilot, lambda: rig.master.calls, what="the valve frame")
        rig.reply_valve()
        rig.clock.advance(3)  # the dispatcher reads the valve back
        rig.reply_read(Valve.CLOSED, count=5)
        await until(pilot, lambda: "succeeded" in screen_text(pilot.app), what="the outcome")
        assert "Command " in screen_text(pilot.app)
        record = rig.commands.last_for("bus/1/1/1")
        assert (record.who, record.source, record.reason) == ("operator", "console", "unpaid bill")
        await pilot.press("escape")
        await until(pilot, lambda: "Valve: closed" in screen_text(pilot.app), what="the detail following the field")

    await drive(console(rig), scenario)


@pytest_twisted.ensureDeferred
async def test_a_viewer_is_refused_a_valve_command_by_the_supervisor(rig):
    async def scenario(pilot):
        await login(pilot, "viewer")
        await pilot.press("f2")
        await until(pilot, lambda: "bus/1/1/1" in screen_text(pilot.app))
        await pilot.press("v")
        await until(pilot, lambda: pilot.app.screen.query("#valve-reason"))
        pilot.app.screen.query_one("#valve-reason").value = "try"
        pilot.app.screen.query_one("#valve-reason").focus()
        await pilot.press("enter")
        await until(pilot, lambda: "Command refused" in screen_text(pilot.app))
        assert rig.master.calls == []

    await drive(console(rig), scenario)


@pytest_twisted.ensureDeferred
async def test_a_reading_reaches_the_screen_within_a_second(rig):
    async def scenario(pilot):
        await login(pilot, "viewer")
        await pilot.press("f2")
        await until(pilot, lambda: "1050 L" in screen_text(pilot.app))
        started = time.monotonic()
        rig.read(1, [77, 6, 7, 8, 9, 10], statuses=[status(Valve.OPEN, AlarmFlag.TAMPER), 0, 0, 0, 0, 0])
        await until(pilot, lambda: "1770 L" in screen_text(pilot.app), timeout=1.0, what="the new value within 1 s")
        assert time.monotonic() - started < 1.0

    await drive(console(rig), scenario)


@pytest_twisted.ensureDeferred
async def test_an_expired_token_returns_to_login_with_the_reason():
    rig = ApiRig(ttl_s=60)
    rig.start()
    try:
        async def scenario(pilot):
            await login(pilot, "operator")
            rig.clock.advance(61)  # the token's lifetime is over on the supervisor's clock
            await pilot.press("f3")
            await until(pilot, lambda: "Your session has expired" in screen_text(pilot.app), what="the login screen")
            assert pilot.app.session is None

        await drive(console(rig), scenario)
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_a_valve_command_the_interlock_refuses_shows_refused_with_the_reason():
    rig = ApiRig(protected=("H1-1",))
    rig.start()
    try:
        async def scenario(pilot):
            await login(pilot, "operator")
            await pilot.press("f2")
            await until(pilot, lambda: "bus/1/1/1" in screen_text(pilot.app))
            await pilot.press("v")
            await until(pilot, lambda: pilot.app.screen.query("#valve-reason"))
            pilot.app.screen.query_one("#valve-reason").value = "unpaid bill"
            pilot.app.screen.query_one("#valve-reason").focus()
            await pilot.press("enter")
            await until(pilot, lambda: ": refused" in screen_text(pilot.app), what="the refusal")
            assert "protected" in screen_text(pilot.app), screen_text(pilot.app)
            assert rig.master.calls == []

        await drive(console(rig), scenario)
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_a_supervisor_restart_is_said_while_down_and_ends_in_the_login_screen():
    """The API goes away (the console says so and keeps trying), then a new one answers on
    the same port: tokens lived in the old one's memory, so the console asks for a login
    again and says why."""
    import asyncio
    import dataclasses
    import socket

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from st2000r.supervisor.api.service import ApiService

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rig = ApiRig()
    rig.topology = dataclasses.replace(rig.topology, api=dataclasses.replace(rig.topology.api,
                                                                             listen=("127.0.0.1", port)))
    rig.api = ApiService(rig.topology, reactor, rig, clock=rig.clock)
    rig.start()

    async def scenario(pilot):
        await login(pilot, "operator")
        await Deferred.asFuture(rig.api.stopService(), asyncio.get_running_loop())
        await until(pilot, lambda: pilot.app.connected is False, what="offline")
        await until(pilot, lambda: "Supervisor unreachable" in screen_text(pilot.app))
        rig.api = ApiService(rig.topology, reactor, rig, clock=rig.clock)  # the restarted supervisor
        rig.api.startService()
        await until(pilot, lambda: "Your session has expired" in screen_text(pilot.app), timeout=15,
                    what="the login screen after the restart")
        assert pilot.app.session is None

    try:
        await drive(console(rig), scenario)
    finally:
        await rig.stop()
