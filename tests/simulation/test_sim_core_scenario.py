"""Fault actions and scenario timelines: parsing errors, the runner on a Clock, examples."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock

from st2000r.config.loader import load
from st2000r.simulation import faults
from st2000r.simulation.faults import FaultError, parse_action
from st2000r.simulation.scenario import Scenario, ScenarioRunner, parse_duration
from st2000r.simulation.world import World

from support.truth import cdt_of, meter_of
from test_sim_core_helpers import START, make_world

SCENARIOS = Path(__file__).resolve().parents[2] / "simulation" / "scenarios"
LINK = "bus-1"


@pytest.mark.parametrize(
    "text, seconds",
    [(30, 30.0), (2.5, 2.5), ("90s", 90.0), ("2h", 7200.0), ("1h30m", 5400.0), ("1.5h", 5400.0),
     ("500ms", 0.5), ("2d", 172800.0), ("10min", 600.0), (" 1m 5s ", 65.0), (0, 0.0)],
)  # fmt: skip
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "90", "5 x", "h", "-3s", -1, True, [1], "400d"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_every_action_round_trips_through_its_document():
    actions = [
        faults.Alarm(link="a", cdt=1, channel=2, flags=("tamper", "open")),
        faults.ValveJam(link="a", cdt=1, channel=2, jammed=False),
        faults.CdtPower(link="a", cdt=3, mains=False),
        faults.RepeaterFault(link="a", name="R1", failed=True),
        faults.NoAnswer(link="a", cdt=4, on=True),
        faults.Late(link="a", cdt=4, ms=250),
        faults.BitErrors(link="a", rate=0.001),
        faults.DropBytes(link="a", rate=0.01),
        faults.LinkDrop(link="a", seconds=12.0),
    ]
    assert {a.KIND for a in actions} == set(faults.ACTIONS)
    for action in actions:
        assert parse_action(action.to_doc()) == action


@pytest.mark.parametrize(
    "doc, message",
    [
        ([], "an action must be a table/object, got list"),
        ({"link": "a"}, "missing key 'action'"),
        ({"action": "explode", "link": "a"}, "unknown action 'explode'"),
        ({"action": "alarm", "cdt": 1, "channel": 1, "flags": []}, "missing key 'link'"),
        ({"action": "alarm", "link": "a", "cdt": 1, "channel": 1, "flags": ["smoke"]}, "key 'flags': unknown alarm flag(s) 'smoke'"),
        ({"action": "alarm", "link": "a", "cdt": 1, "channel": 97, "flags": []}, "key 'channel': must be a channel number"),
        ({"action": "alarm", "link": "a", "cdt": 0, "channel": 1, "flags": []}, "key 'cdt': must be a CDT address"),
        ({"action": "alarm", "link": "a", "cdt": 1, "channel": 1}, "missing key 'flags' for action 'alarm'"),
        ({"action": "cdt_power", "link": "a", "cdt": 1, "mains": "no"}, "key 'mains': must be true or false"),
        ({"action": "late", "link": "a", "cdt": 1, "ms": 1.5}, "key 'ms': must be whole milliseconds"),
        ({"action": "bit_errors", "link": "a", "rate": 2}, "key 'rate': must be a rate per bit between 0 and 0.5"),
        ({"action": "link_drop", "link": "a", "seconds": 0}, "key 'seconds': must be seconds"),
        ({"action": "repeater", "link": "a", "name": "R1", "colour": "red"}, "unknown key 'colour' for action 'repeater'"),
    ],
)
def test_bad_action_documents_name_key_and_reason(doc, message):
    with pytest.raises(FaultError) as err:
        parse_action(doc, "ctl")
    assert message in str(err.value)
    assert str(err.value).startswith("ctl: ")


def test_all_problems_of_one_action_are_reported_together():
    with pytest.raises(FaultError) as err:
        parse_action({"action": "alarm", "link": 3, "cdt": "x", "channel": 0, "flags": "tamper"})
    assert len(err.value.issues) == 4


BAD_SCENARIO = """\
name = "broken"
colour = "red"

[[event]]
at = "90s"
action = "alarm"
link = "bus-1"
cdt = 1
channel = 1
flags = ["smoke"]

[[event]]
action = "cdt_power"
link = "bus-1"
cdt = 2
mains = false

[[event]]
at = "soon"
action = "late"
link = "bus-1"
cdt = 2
ms = 10

[[event]]
at = "1h"
action = "repeater"
link = "bus-1"
"""


def test_scenario_errors_name_file_key_path_and_reason():
    with pytest.raises(FaultError) as err:
        Scenario.loads(BAD_SCENARIO, "bad.toml")
    issues = err.value.issues
    assert "bad.toml: unknown key 'colour' (known: name, description, event)" in issues
    assert any(i.startswith("bad.toml: event[0].flags: unknown alarm flag(s) 'smoke'") for i in issues)
    assert any(i.startswith("bad.toml: event[1]: missing key 'at'") for i in issues)
    assert any(i.startswith("bad.toml: event[2].at: 'soon' is not a duration") for i in issues)
    assert "bad.toml: event[3]: missing key 'name' for action 'repeater'" in issues
    assert len(issues) == 5


def test_scenario_file_problems(tmp_path):
    with pytest.raises(FaultError, match="missing.toml: cannot read scenario file"):
        Scenario.load(tmp_path / "missing.toml")
    bad = tmp_path / "syntax.toml"
    bad.write_text("[[event]\nat = 1\n")
    with pytest.raises(FaultError, match=r"syntax.toml: TOML syntax: .*line 1"):
        Scenario.load(bad)
    with pytest.raises(FaultError, match="key 'event': must be an array of tables"):
        Scenario.loads("event = 3", "x.toml")


def test_scenario_targets_are_checked_against_the_world():
    world, clock = make_world()
    scenario = Scenario.loads(
        '[[event]]\nat = 5\naction = "cdt_power"\nlink = "bus-1"\ncdt = 77\nmains = false\n'
        '[[event]]\nat = 6\naction = "bit_errors"\nlink = "other"\nrate = 0.1\n',
        "s.toml",
    )
    with pytest.raises(FaultError) as err:
        ScenarioRunner(world, scenario, clock)
    assert err.value.issues == (
        "s.toml: event at 5 s (cdt_power): link 'bus-1' has no CDT 77",
        "s.toml: event at 6 s (bit_errors): no link 'other' (links: 'bus-1')",
    )


TIMELINE = """\
name = "t"
[[event]]
at = "2h"
action = "cdt_power"
link = "bus-1"
cdt = 1
mains = false

[[event]]
at = "90s"
action = "alarm"
link = "bus-1"
cdt = 2
channel = 4
flags = ["tamper"]

[[event]]
at = "90s"
action = "valve_jam"
link = "bus-1"
cdt = 3
channel = 1
"""


@pytest.mark.parametrize("speedup", [1.0, 60.0])
def test_runner_applies_events_at_world_times(speedup):
    world, clock = make_world(speedup=speedup)
    scenario = Scenario.loads(TIMELINE, "t.toml")
    assert [e.at_s for e in scenario.events] == [90.0, 90.0, 7200.0]
    runner = ScenarioRunner(world, scenario, clock)
    runner.startService()
    assert len(clock.getDelayedCalls()) == 1  # one pending call, not one per event
    clock.advance(89.9 / speedup)
    assert meter_of(world.snapshot(), LINK, 2, 4)["alarms"] == []
    clock.advance(0.2 / speedup)
    assert meter_of(world.snapshot(), LINK, 2, 4)["alarms"] == ["tamper"]
    assert meter_of(world.snapshot(), LINK, 3, 1)["valve"] == "fault"
    assert runner.applied == 2
    clock.advance((7200 - 90.1 - 0.1) / speedup)
    assert cdt_of(world.snapshot(), LINK, 1)["mains"]
    clock.advance(0.2 / speedup)
    assert not cdt_of(world.snapshot(), LINK, 1)["mains"]
    assert runner.applied == 3
    assert clock.getDelayedCalls() == []
    runner.stopService()


def test_stopping_the_runner_cancels_the_timeline():
    world, clock = make_world()
    runner = ScenarioRunner(world, Scenario.loads(TIMELINE, "t.toml"), clock)
    runner.startService()
    clock.advance(100)
    runner.stopService()
    assert clock.getDelayedCalls() == []
    clock.advance(10_000)
    assert cdt_of(world.snapshot(), LINK, 1)["mains"]


def test_a_failing_event_is_logged_not_raised():
    world, clock = make_world()
    scenario = Scenario.loads(TIMELINE, "t.toml")
    runner = ScenarioRunner(world, scenario, clock)
    runner.startService()
    world.apply = None  # every application fails from now on
    clock.advance(100)  # must not raise out of the reactor call
    assert runner.applied == 0
    runner.stopService()


@pytest.mark.parametrize("name", ["commissioning.toml", "power-cut.toml"])
def test_example_scenarios_fit_the_community_example(name):
    world = World(load("config/examples/community.toml"), Clock(), start=START)
    scenario = Scenario.load(SCENARIOS / name)
    scenario.check(world)
    assert scenario.name and len(scenario.events) >= 5
    kinds = {e.action.KIND for e in scenario.events}
    assert kinds & {"alarm", "valve_jam", "cdt_power", "repeater"}


def test_power_cut_scenario_runs_through_at_speed():
    clock = Clock()
    world = World(load("config/examples/community.toml"), clock, start=START, speedup=3600.0)
    runner = ScenarioRunner(world, Scenario.load(SCENARIOS / "power-cut.toml"), clock)
    runner.startService()
    link = world.link("lakeside-bus")
    clock.advance(20 * 60 / 3600)  # 20 world minutes: R3 failed, 33..36 on battery
    assert link.cdt(70).silent_reason(world.seconds()) == "repeater"
    assert not link.cdt(33).mains and not link.cdt(33).silent(world.seconds())
    clock.advance(2 * 3600 / 3600)  # R3 repaired
    assert not link.cdt(70).silent(world.seconds())
    clock.advance(35 * 3600 / 3600)  # ~37 h: 32-module battery (36 h) is empty
    assert link.cdt(33).silent_reason(world.seconds()) == "battery"
    clock.advance(4 * 3600 / 3600)  # 41 h: mains back
    assert link.cdt(33).mains and not link.cdt(33).silent(world.seconds())
    assert runner.applied == len(runner.scenario.events)
