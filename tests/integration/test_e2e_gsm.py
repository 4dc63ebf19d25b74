"""GSM end to end: the supervisor's GSM link service opens the simulator's Hayes modem on a
REAL pseudo-terminal, initialises it, dials, reads a round over the data call, hangs up,
redials and reads again."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from e2e_support import Events, for_supervisor, load_text, truth_readings, within
from st2000r.simulation.service import SimulatorOptions, SimulatorService
from st2000r.supervisor.events import LinkChanged, Quality
from st2000r.supervisor.service import SupervisorService

TEXT = """
[templates.flat]
channels = [ { channel = 1, kind = "water", pulse_constant = 10 }, { channel = 2, kind = "gas", pulse_constant = 10 } ]
[[sites]]
name = "Hill farm"
address = "far away"
[[sites.links]]
name = "farm-gsm"
kind = "gsm"
modem = "/dev/ttyACM0"
number = "+8613800000001"
baud = 9600
[[sites.links.cdt_ranges]]
addresses = "1-2"
modules = "1-3"
template = "flat"
serial = "7{cdt:02}{module:02}{channel}"
"""
LINK = "farm-gsm"


@pytest_twisted.ensureDeferred
async def test_gsm_dial_read_hang_up_redial_read(tmp_path):
    topology = load_text(TEXT)
    sim = SimulatorService(topology, SimulatorOptions(control_port=None, modem_dial_s=0.3), reactor)
    sim.startService()
    modem = sim.modems[LINK]
    service = SupervisorService(for_supervisor(topology, str(tmp_path), devices={LINK: modem.path}), reactor)
    states: list[bool] = []  # connection transitions (a signal-only change is not one)

    def on_link(event) -> None:
        if isinstance(event, LinkChanged) and (not states or states[-1] != event.connected):
            states.append(event.connected)

    service.bus.subscribe(on_link)
    events = Events(service.bus)
    gsm = service.link_services[LINK]
    service.startService()
    try:
        await events.until(lambda: states[-1:] == [True])  # initialised, dialled, CONNECT
        assert gsm.calls == 1 and modem.calls == 1
        signal = service.points.links()[0].signal
        assert signal is not None and 0 <= signal <= 31
        result = await within(service.pollers[LINK].run_plan_now("full"), 30)
        assert result.unreachable == ()
        first = {str(p.id): p.value for p in service.points.meters()}
        gsm.hangup()
        await events.until(lambda: states[-1] is False)
        await events.until(lambda: states[-1] is True)  # kept up: redialled
        assert gsm.calls == 2 and modem.calls == 2 and states[-3:] == [True, False, True]
        result = await within(service.pollers[LINK].run_plan_now("full"), 30)
        assert result.unreachable == ()
        points = {str(p.id): p for p in service.points.meters()}
        truth = truth_readings(sim.world)  # the world runs: read again, never below the first read
        assert all(first[k] <= points[k].value <= truth[k] for k in truth)
        assert {p.quality for p in points.values()} == {Quality.GOOD} and len(points) == 12
    finally:
        await within(service.stopService())
        await within(sim.stopService())
