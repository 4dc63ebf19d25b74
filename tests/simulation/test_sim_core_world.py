"""World model: lazy consumption, valves, alarms, power, repeaters, ground truth, speed-up."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest
from twisted.internet.task import Clock

from st2000r.config.loader import load
from st2000r.config.model import MeterKind
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.simulation import faults
from st2000r.simulation.meters import DAILY_MEAN, EPOCH, household
from st2000r.simulation.world import VALVE_TRAVEL_S, World

from support.truth import cdt_of, meter_of
from test_sim_core_helpers import START, make_world, repeater_topology

HOUR = 3600.0
LINK = "bus-1"


def test_consumption_is_pure_and_monotonic():
    model = household(1, "l", 3, 2, 1, MeterKind.WATER)
    same = household(1, "l", 3, 2, 1, MeterKind.WATER)
    other = household(2, "l", 3, 2, 1, MeterKind.WATER)
    t0 = (START - EPOCH).total_seconds()
    values = [model.cumulative(t0 + k * 600.0) for k in range(24 * 6 * 8)]
    assert values == [same.cumulative(t0 + k * 600.0) for k in range(24 * 6 * 8)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert (model.scale, model.phase_s) != (other.scale, other.phase_s)


def test_daily_draw_is_household_sized():
    """Over many households the mean daily draw is near the kind's DAILY_MEAN."""
    t0 = (START - EPOCH).total_seconds()
    for kind in MeterKind:
        draws = [
            (lambda c: c.cumulative(t0 + 7 * 86400) - c.cumulative(t0))(household(0, "x", a, 1, 1, kind)) / 7
            for a in range(1, 400)
        ]
        mean = sum(draws) / len(draws)
        assert 0.5 * DAILY_MEAN[kind] < mean < 1.5 * DAILY_MEAN[kind], (kind, mean)


def test_night_is_quieter_than_evening():
    c = household(0, "x", 1, 1, 1, MeterKind.WATER)
    monday = (datetime(2026, 3, 2) - EPOCH).total_seconds()
    night = c.cumulative(monday + 4 * HOUR) - c.cumulative(monday + 2 * HOUR)
    evening = c.cumulative(monday + 21 * HOUR) - c.cumulative(monday + 19 * HOUR)
    assert evening > 5 * night


def test_counts_grow_with_time_and_readings_follow_the_formula():
    world, clock = make_world()
    before = world.snapshot()
    clock.advance(6 * HOUR)
    after = world.snapshot()
    grown = 0
    for lk_b, lk_a in zip(before["links"], after["links"]):
        for cb, ca in zip(lk_b["cdts"], lk_a["cdts"]):
            for mb, ma in zip(cb["meters"], ca["meters"]):
                assert ma["count"] >= mb["count"]
                grown += ma["count"] > mb["count"]
                assert ma["reading"] == ma["initial"] + ma["count"] * ma["pulse_constant"]
    assert grown >= 10


def test_observation_pattern_does_not_change_the_count():
    """Lazy: observing often or once gives the same count (the world is a pure function)."""
    w1, c1 = make_world(seed=3)
    w2, c2 = make_world(seed=3)
    for _ in range(100):
        c1.advance(317.0)
        w1.snapshot()
    c2.advance(31700.0)
    assert w1.snapshot()["links"] == w2.snapshot()["links"]


def test_same_seed_same_snapshot_other_seed_differs():
    a, ca = make_world(seed=11)
    b, cb = make_world(seed=11)
    c, cc = make_world(seed=12)
    for clock in (ca, cb, cc):
        clock.advance(10 * HOUR)
    assert json.dumps(a.snapshot()) == json.dumps(b.snapshot())
    assert a.snapshot()["links"] != c.snapshot()["links"]


def test_snapshot_is_json_ready_and_complete():
    world, clock = make_world(repeater_topology())
    snap = json.loads(json.dumps(world.snapshot()))
    assert snap["time"] == START.isoformat()
    link = snap["links"][0]
    assert link["name"] == LINK
    assert {r["name"]: r["failed"] for r in link["repeaters"]} == {"r1": False, "r2": False, "r3": False}
    cdt = link["cdts"][0]
    for key in ("address", "mains", "battery_mv", "battery_low", "online", "silent", "silent_reason", "meters", "alarms"):
        assert key in cdt
    meter = cdt["meters"][0]
    assert set(meter) >= {"serial", "kind", "household", "count", "reading", "base_unit", "valve", "alarms", "channel"}
    assert meter["kind"] == "water" and meter["base_unit"] == "L" and meter["valve"] == "open"
    assert cdt["meters"][1]["base_unit"] == "Wh"


def test_valve_close_stops_consumption_after_the_motor_time():
    world, clock = make_world()
    clock.advance(HOUR)  # 07:00, people are up
    meter = world.link(LINK).cdt(1).channels[4]  # a water meter
    t = world.seconds()
    assert meter.command_valve(t, open_=False)
    assert meter.valve_name(t) == "moving"
    assert meter.valve(t) is Valve.OPEN  # reports the old position while moving
    clock.advance(VALVE_TRAVEL_S - 0.5)
    assert meter.valve(world.seconds()) is Valve.OPEN
    clock.advance(0.5)
    assert meter.valve(world.seconds()) is Valve.CLOSED
    assert meter.valve_name(world.seconds()) == "closed"
    shut = meter.count(world.seconds())
    clock.advance(12 * HOUR)
    assert meter.count(world.seconds()) == shut
    assert meter.rate_per_hour(world.seconds()) == 0.0
    # re-open: flow resumes after the motor time, from where it stopped
    assert meter.command_valve(world.seconds(), open_=True)
    clock.advance(VALVE_TRAVEL_S)
    assert meter.valve(world.seconds()) is Valve.OPEN
    assert meter.count(world.seconds()) == shut
    clock.advance(3 * HOUR)
    assert meter.count(world.seconds()) > shut


def test_closed_meter_lags_an_identical_open_one():
    a, ca = make_world(seed=5)
    b, cb = make_world(seed=5)
    for clock in (ca, cb):
        clock.advance(HOUR)
    ma = a.link(LINK).cdt(2).channels[1]
    ma.command_valve(a.seconds(), open_=False)
    for clock in (ca, cb):
        clock.advance(10 * HOUR)
    mb = b.link(LINK).cdt(2).channels[1]
    assert ma.count(a.seconds()) < mb.count(b.seconds())


def test_valve_jam_reports_fault_and_refuses_commands():
    world, clock = make_world()
    world.apply(faults.ValveJam(link=LINK, cdt=1, channel=1, jammed=True))
    meter = world.link(LINK).cdt(1).channels[1]
    assert meter.valve(world.seconds()) is Valve.FAULT
    assert meter.command_valve(world.seconds(), open_=False) is False
    clock.advance(60)
    assert meter_of(world.snapshot(), LINK, 1, 1)["valve"] == "fault"
    world.apply(faults.ValveJam(link=LINK, cdt=1, channel=1, jammed=False))
    assert meter.valve(world.seconds()) is Valve.OPEN


def test_jam_mid_travel_keeps_the_flow():
    world, clock = make_world()
    clock.advance(HOUR)
    meter = world.link(LINK).cdt(1).channels[4]
    meter.command_valve(world.seconds(), open_=False)
    clock.advance(2)
    world.apply(faults.ValveJam(link=LINK, cdt=1, channel=4))
    clock.advance(10)
    world.apply(faults.ValveJam(link=LINK, cdt=1, channel=4, jammed=False))
    assert meter.valve(world.seconds()) is Valve.OPEN


def test_alarms_set_and_clear():
    world, _ = make_world()
    world.apply(faults.Alarm(link=LINK, cdt=2, channel=5, flags=("tamper", "open")))
    cdt = world.link(LINK).cdt(2)
    assert cdt.alarm(5) == AlarmFlag.TAMPER | AlarmFlag.OPEN
    assert meter_of(world.snapshot(), LINK, 2, 5)["alarms"] == ["tamper", "open"]
    assert cdt_of(world.snapshot(), LINK, 2)["alarms"] == {"5": ["tamper", "open"]}
    world.apply(faults.Alarm(link=LINK, cdt=2, channel=5, flags=()))
    assert cdt.alarm(5) == AlarmFlag.NONE
    assert meter_of(world.snapshot(), LINK, 2, 5)["alarms"] == []


def test_mains_loss_battery_low_silent_and_recovery():
    """2 modules: battery lasts 36 h x 32 / 2 = 576 h; low below 20 % (after 460.8 h)."""
    world, clock = make_world()
    cdt = world.link(LINK).cdt(3)
    assert cdt.battery_hours() == pytest.approx(576.0)
    world.apply(faults.CdtPower(link=LINK, cdt=3, mains=False))
    snap = cdt_of(world.snapshot(), LINK, 3)
    assert (snap["mains"], snap["battery_mv"], snap["battery_low"], snap["silent"]) == (False, 12600, False, False)
    clock.advance(460 * HOUR)
    snap = cdt_of(world.snapshot(), LINK, 3)
    assert not snap["battery_low"] and 11100 < snap["battery_mv"] < 11200
    clock.advance(1 * HOUR)
    snap = cdt_of(world.snapshot(), LINK, 3)
    assert snap["battery_low"] and not snap["silent"]
    clock.advance(115 * HOUR)  # 576 h: empty
    snap = cdt_of(world.snapshot(), LINK, 3)
    assert snap["silent"] and snap["silent_reason"] == "battery" and snap["battery_mv"] == 10800
    assert not cdt_of(world.snapshot(), LINK, 2)["silent"]
    world.apply(faults.CdtPower(link=LINK, cdt=3, mains=True))
    snap = cdt_of(world.snapshot(), LINK, 3)
    assert snap["mains"] and not snap["silent"] and snap["battery_low"]
    clock.advance(12 * HOUR)  # recharged
    assert cdt_of(world.snapshot(), LINK, 3)["battery_mv"] == 12600


def test_32_module_cdt_lasts_36_hours():
    from test_sim_core_helpers import make_cdt, make_link, make_topology

    world, clock = make_world(make_topology(make_link(cdts=(make_cdt(1, modules=32),))))
    world.apply(faults.CdtPower(link=LINK, cdt=1, mains=False))
    clock.advance(35.9 * HOUR)
    assert not world.link(LINK).cdt(1).silent(world.seconds())
    clock.advance(0.2 * HOUR)
    assert world.link(LINK).cdt(1).silent(world.seconds())


def test_repeater_failure_silences_exactly_the_cdts_behind_it():
    world, _ = make_world(repeater_topology())
    silent = lambda: {c["address"] for c in world.snapshot()["links"][0]["cdts"] if c["silent"]}  # noqa: E731
    assert silent() == set()
    world.apply(faults.RepeaterFault(link=LINK, name="r2", failed=True))
    assert silent() == {4}
    world.apply(faults.RepeaterFault(link=LINK, name="r1", failed=True))
    assert silent() == {2, 3, 4}  # r2 hangs behind r1
    world.apply(faults.RepeaterFault(link=LINK, name="r2", failed=False))
    assert silent() == {2, 3, 4}
    world.apply(faults.RepeaterFault(link=LINK, name="r1", failed=False))
    assert silent() == set()
    reasons = world.snapshot()["links"][0]["repeaters"]
    assert not any(r["failed"] for r in reasons)


def test_repeater_latency_accumulates_along_the_path():
    world, _ = make_world(repeater_topology())
    lw = world.link(LINK)
    assert [lw.cdt(a).latency_s for a in (1, 2, 4, 5)] == pytest.approx([0.0, 0.030, 0.050, 0.010])


def test_no_answer_silences_one_cdt():
    world, _ = make_world()
    world.apply(faults.NoAnswer(link=LINK, cdt=2, on=True))
    assert cdt_of(world.snapshot(), LINK, 2)["silent_reason"] == "no_answer"
    world.apply(faults.NoAnswer(link=LINK, cdt=2, on=False))
    assert not cdt_of(world.snapshot(), LINK, 2)["silent"]


@pytest.mark.parametrize(
    "action, message",
    [
        (faults.Alarm(link="nope", cdt=1, channel=1, flags=()), "no link 'nope'"),
        (faults.Alarm(link=LINK, cdt=99, channel=1, flags=()), "has no CDT 99"),
        (faults.Alarm(link=LINK, cdt=1, channel=7, flags=("open",)), "has no module 3 (channel 7)"),
        (faults.ValveJam(link=LINK, cdt=1, channel=9), "has no meter on channel 9"),
        (faults.RepeaterFault(link=LINK, name="rx"), "has no repeater 'rx'"),
        (faults.CdtPower(link=LINK, cdt=4, mains=False), "has no CDT 4"),
    ],
)
def test_apply_rejects_unknown_targets_without_change(action, message):
    world, _ = make_world()
    before = world.snapshot()
    with pytest.raises(faults.FaultError, match=message.replace("(", r"\(").replace(")", r"\)")):
        world.apply(action)
    assert world.snapshot() == before


def test_speedup_runs_world_time_faster():
    fast, cf = make_world(seed=1, speedup=60.0)
    slow, cs = make_world(seed=1)
    cf.advance(60)
    cs.advance(3600)
    assert fast.now() == slow.now() == datetime(2026, 3, 2, 7, 0)
    assert fast.snapshot()["links"] == slow.snapshot()["links"]
    fast.apply(faults.CdtPower(link=LINK, cdt=1, mains=False))
    cf.advance(577 * HOUR / 60)
    assert cdt_of(fast.snapshot(), LINK, 1)["silent"]


def test_settlement_captures_the_reading_at_the_first_of_the_month():
    world, clock = make_world()
    meter = world.link(LINK).cdt(1).channels[2]
    assert meter.settlement_reading(world.seconds()) == meter.initial
    to_april = (datetime(2026, 4, 1) - START).total_seconds()
    clock.advance(to_april - 1)
    at_boundary = meter.reading(world.seconds())
    clock.advance(5 * 86400)
    assert meter.reading(world.seconds()) > at_boundary
    assert abs(meter.settlement_reading(world.seconds()) - at_boundary) <= 2 * meter.pulse_constant


def test_set_count_restarts_the_counter():
    world, clock = make_world()
    clock.advance(10 * HOUR)
    meter = world.link(LINK).cdt(1).channels[2]
    meter.set_count(world.seconds(), 0)
    assert meter.count(world.seconds()) == 0
    clock.advance(5 * HOUR)
    assert meter.count(world.seconds()) > 0


def test_community_world_builds_fast_from_the_example_file():
    topology = load("config/examples/community.toml")
    t0 = time.perf_counter()
    world = World(topology, Clock(), seed=1, start=START)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, elapsed
    assert sum(len(c.channels) for c in world.link("lakeside-bus").cdts) == 12_288


def test_start_defaults_to_the_clock_and_bad_speedup_is_refused():
    clock = Clock()
    clock.advance((datetime(2026, 1, 1) - datetime(1970, 1, 1)).total_seconds())
    world = World(repeater_topology(), clock)
    assert world.now().year in (2025, 2026)  # local time of the clock's instant
    bare = World(repeater_topology(), Clock())  # a fresh Clock reads 1970: still a world
    bare.clock.advance(7 * 86400)
    assert bare.now().year == 1970
    counts = [m["count"] for c in bare.snapshot()["links"][0]["cdts"] for m in c["meters"]]
    assert sum(counts) > 0
    with pytest.raises(ValueError, match="speedup"):
        World(repeater_topology(), clock, speedup=0)
