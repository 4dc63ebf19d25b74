"""Point database: value mapping, change-only events, COMM_FAIL, STALE; the event bus."""

from __future__ import annotations

import time
from datetime import UTC, datetime, time as dtime

import pytest
from twisted.internet.task import Clock

from support.builders import T0, Recorder, bulk, cdt_status, make_link, make_topology, status
from st2000r.config import example_path
from st2000r.config.loader import load
from st2000r.config.model import ReadingPlan, SupervisorSettings
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.drivers.st2000r.poller import PollSink
from st2000r.drivers.st2000r.reachability import Purpose, Reachability
from st2000r.supervisor.events import (
    CdtChanged,
    EventBus,
    LinkChanged,
    LinkState,
    ReadingBatch,
    MeterChanged,
    MeterId,
    Quality,
    RoundDone,
)
from st2000r.supervisor.points import PointDatabase, default_stale_after


def db_for(topology=None, **kw):
    clock = Clock()
    clock.advance(T0)
    bus = EventBus()
    rec = Recorder(bus)
    db = PointDatabase(topology or make_topology(), clock, bus, **kw)
    return db, clock, rec


# ---- MeterId and the bus


def test_meter_id_round_trip_and_errors():
    mid = MeterId("bus-1", 3, 2, 1)
    assert str(mid) == "bus-1/3/2/1" and MeterId.parse("bus-1/3/2/1") == mid
    assert mid.channel_no == 4
    for bad, why in [("bus/3/2", "expected LINK/CDT/MODULE/CHANNEL"), ("/3/2/1", "expected"),
                     ("bus/x/2/1", "CDT 'x' is not a number"), ("bus/3/33/1", "module 33 outside 1..32"),
                     ("bus/3/2/4", "channel 4 outside 1..3"), ("bus/0/2/1", "CDT 0 outside")]:
        with pytest.raises(ValueError, match=why):
            MeterId.parse(bad)


def test_event_bus_isolates_a_failing_subscriber_and_keeps_order():
    bus = EventBus()
    seen_a, seen_c = [], []

    def a(event):
        seen_a.append(event)
        if event == 1:
            bus.publish(2)  # published while delivering: queued behind 1

    def b(event):
        raise RuntimeError("subscriber bug")

    bus.subscribe(a)
    bus.subscribe(b)
    unsubscribe = bus.subscribe(seen_c.append)
    bus.publish(1)
    assert seen_a == [1, 2] and seen_c == [1, 2]
    assert bus.failures == 2
    unsubscribe()
    unsubscribe()
    bus.publish(3)
    assert seen_c == [1, 2] and seen_a == [1, 2, 3]


def test_implements_the_poll_sink_protocol():
    db, _, _ = db_for()
    assert callable(db.on_round_done) and hasattr(PollSink, "on_round_done")


# ---- values


def test_bulk_values_in_base_units_mapped_to_module_and_input():
    db, clock, rec = db_for()
    db.on_bulk("bus", 1, bulk(1, [5, 6, 7, 8, 9, 10, 77], statuses=[0, 0, 0, status(Valve.CLOSED), 0, 0, 0]), T0)
    # channel 4 = module 2 input 1 (water, 10 L/pulse, initial 1000)
    p = db.meter(MeterId("bus", 1, 2, 1))
    assert (p.value, p.count, p.quality, p.valve, p.unit) == (1000 + 8 * 10, 8, Quality.GOOD, Valve.CLOSED, "L")
    p = db.meter("bus/1/1/2")  # electricity 1 Wh/pulse, initial 2000
    assert (p.value, p.unit, p.kind) == (2000 + 6, "Wh", "electricity")
    assert p.timestamp == datetime.fromtimestamp(T0, UTC)
    # channel 7 (module 3) is not in the topology: ignored, counted
    assert db.stats.unexpected_channels == 1
    changed = rec.of(MeterChanged)
    assert len(changed) == 6 and {str(e.meter) for e in changed} == {f"bus/1/{mo}/{i}" for mo in (1, 2)
                                                                        for i in (1, 2, 3)}
    (batch,) = rec.of(ReadingBatch)
    assert (batch.link, batch.cdt, batch.source, batch.at) == ("bus", 1, Purpose.PLAN, p.timestamp)
    assert [(str(r.meter), r.value, r.valve) for r in batch.readings][3] == ("bus/1/2/1", 1080, Valve.CLOSED)
    assert len(batch.readings) == 6  # the unknown channel 7 is not a reading
    with pytest.raises(KeyError):
        db.meter("bus/9/1/1")


def test_identical_reread_publishes_nothing_a_change_publishes_once():
    db, clock, rec = db_for()
    db.on_bulk("bus", 1, bulk(1, [5, 6, 7]), T0)
    rec.clear()
    clock.advance(60)
    db.on_bulk("bus", 1, bulk(1, [5, 6, 7]), T0 + 60, Purpose.READ_NOW)
    (batch,) = rec.events  # no change event, but the reading itself is an event
    assert isinstance(batch, ReadingBatch) and batch.source is Purpose.READ_NOW
    assert [r.count for r in batch.readings] == [5, 6, 7] and batch.at == datetime.fromtimestamp(T0 + 60, UTC)
    rec.clear()
    assert db.meter("bus/1/1/1").timestamp == datetime.fromtimestamp(T0 + 60, UTC)  # refreshed silently
    db.on_bulk("bus", 1, bulk(1, [5, 7, 7], statuses=[status(alarms=AlarmFlag.TAMPER), 0, 0]), T0 + 60)
    events = rec.of(MeterChanged)
    assert [(str(e.meter), e.count, e.alarms) for e in events] == [
        ("bus/1/1/1", 5, AlarmFlag.TAMPER), ("bus/1/1/2", 7, AlarmFlag.NONE)]


def test_absent_channel_is_comm_fail_and_unknown_cdt_is_counted():
    db, clock, rec = db_for()
    db.on_bulk("bus", 1, bulk(1, [5, 0], statuses=[0, status(absent=True)]), T0)
    assert db.meter("bus/1/1/2").quality is Quality.COMM_FAIL and db.stats.absent_channels == 1
    db.on_bulk("bus", 99, bulk(99, [1]), T0)
    assert db.stats.unknown_cdts == 1


def test_sink_methods_never_raise():
    db, _, _ = db_for()
    db.on_bulk("bus", 1, object(), T0)  # garbage instead of a reply
    db.on_alarms("bus", 1, None, T0)
    assert db.stats.sink_errors == 2


# ---- CDT, alarms reply, link state


def test_cdt_status_and_alarm_replies():
    db, clock, rec = db_for()
    db.on_reachability("bus", 2, True, T0)
    db.on_cdt_status("bus", 2, cdt_status(2, mains=False, mv=3500), T0)
    c = db.cdt("bus", 2)
    assert (c.online, c.mains, c.battery_mv, c.modules) == (True, False, 3500, frozenset({1, 2}))
    db.on_cdt_status("bus", 2, cdt_status(2, mains=False, mv=3500), T0 + 1)
    assert len(rec.of(CdtChanged)) == 2  # online, then the status; identical: no third event
    flags = [AlarmFlag.NONE] * 96
    flags[4] = AlarmFlag.SHORT | AlarmFlag.OPEN  # channel 5 = module 2 input 2
    flags[50] = AlarmFlag.TAMPER  # channel 51: not fitted
    db.on_alarms("bus", 2, m.AlarmsReply(meter_type=m.CDT_TYPE, address="2".zfill(14), alarms=tuple(flags)), T0)
    assert db.meter("bus/2/2/2").alarms == AlarmFlag.SHORT | AlarmFlag.OPEN
    assert [str(e.meter) for e in rec.of(MeterChanged)] == ["bus/2/2/2"]
    assert rec.of(MeterChanged)[0].value is None  # never read: no value yet
    assert db.stats.unexpected_channels == 1


def test_link_state_events_only_on_change():
    db, clock, rec = db_for()
    db.on_link_state("bus", "connected", {})
    db.on_link_state("bus", "connected", {})
    db.on_link_state("bus", "device_down", {"address": "x"})
    db.on_link_state("bus", "signal", {"csq": 17})
    db.on_link_state("bus", "signal", {"csq": 17})
    db.on_link_state("bus", "disconnected", {"reason": "cable"})
    assert [(e.connected, e.signal) for e in rec.of(LinkChanged)] == [(True, None), (True, 17), (False, 17)]
    (link,) = db.links()
    assert (link.name, link.connected, link.signal) == ("bus", False, 17)
    db.on_link_state("bus", "connected", {})
    db.on_link_state("bus", "stopped", {})
    db.on_link_state("bus", "disconnected", {"reason": "hung up"})  # the pipe closing after the stop
    assert [e.state for e in rec.of(LinkChanged)][-2:] == [LinkState.CONNECTED, LinkState.STOPPED]


# ---- COMM_FAIL and STALE


def test_unreachable_cdt_keeps_values_with_comm_fail():
    db, clock, rec = db_for()
    db.on_reachability("bus", 1, True, T0)
    db.on_bulk("bus", 1, bulk(1, [5, 6, 7, 8, 9, 10]), T0)
    rec.clear()
    db.on_reachability("bus", 1, False, T0 + 300, "no answer")
    assert rec.of(CdtChanged)[0].online is False
    events = rec.of(MeterChanged)
    assert len(events) == 6 and all(e.quality is Quality.COMM_FAIL for e in events)
    # when it happened, not when the values were last read
    assert {(e.quality_since, e.at, e.timestamp) for e in events} == {
        (datetime.fromtimestamp(T0 + 300, UTC), datetime.fromtimestamp(T0 + 300, UTC), datetime.fromtimestamp(T0, UTC))}
    assert db.meter("bus/1/1/1").value == 1050  # the last good value stays
    rec.clear()
    db.on_reachability("bus", 1, False, T0 + 600, "no answer")
    assert rec.events == []  # nothing changed
    db.on_reachability("bus", 1, True, T0 + 900)
    db.on_bulk("bus", 1, bulk(1, [5, 6, 7, 8, 9, 10]), T0 + 900)
    assert db.meter("bus/1/1/1").quality is Quality.GOOD and rec.of(CdtChanged)[-1].online is True
    assert db.meter("bus/1/1/1").quality_since == datetime.fromtimestamp(T0 + 900, UTC)


def test_values_become_stale_by_one_periodic_check():
    db, clock, rec = db_for(stale_after_s=3600)
    db.startService()
    assert len(clock.getDelayedCalls()) == 1  # one check, not a timer per meter
    db.on_bulk("bus", 1, bulk(1, [5, 6, 7]), T0)
    clock.advance(1800)
    db.on_bulk("bus", 2, bulk(2, [1]), T0 + 1800)
    rec.clear()
    for _ in range(31):
        clock.advance(60)
    assert {str(e.meter) for e in rec.of(MeterChanged)} == {"bus/1/1/1", "bus/1/1/2", "bus/1/1/3"}
    assert db.meter("bus/1/1/1").quality is Quality.STALE and db.meter("bus/2/1/1").quality is Quality.GOOD
    rec.clear()
    clock.advance(1800)
    assert [str(e.meter) for e in rec.of(MeterChanged)] == ["bus/2/1/1"]
    db.stopService()
    assert clock.getDelayedCalls() == []


def test_stale_after_defaults():
    daily = ReadingPlan("d", "full", (dtime(2, 0),), None, None)
    assert default_stale_after((daily,)) == 2 * 86400
    twice = ReadingPlan("t", "full", (dtime(2, 0), dtime(14, 0)), None, None)
    assert default_stale_after((twice,)) == 86400
    fast = ReadingPlan("f", "full", (), 600, None)
    assert default_stale_after((fast,)) == 3600  # at least 1 h
    status_only = ReadingPlan("s", "status", (), 300, None)
    assert default_stale_after((status_only,)) == 3600
    topo = make_topology(settings=SupervisorSettings(gprs_listen=None, retries=2, log_format="text", state_dir="var", stale_after_s=7200))
    assert db_for(topo)[0].stale_after_s == 7200


def test_round_done_forwarded_and_snapshot_json_ready():
    import json

    db, clock, rec = db_for()
    db.on_round_done("bus", "status", "status", T0, T0 + 5)
    (done,) = rec.of(RoundDone)
    assert (done.link, done.plan, done.kind, (done.ended - done.started).total_seconds()) == ("bus", "status",
                                                                                             "status", 5)
    db.on_bulk("bus", 1, bulk(1, [5]), T0)
    snap = json.loads(json.dumps(db.snapshot()))
    assert snap["meters"][0] == {"id": "bus/1/1/1", "link": "bus", "cdt": 1, "module": 1, "channel": 1,
                                 "kind": "water", "serial": "00000001001001", "household": "H1-1", "unit": "L",
                                 "value": 1050, "count": 5, "quality": "good",
                                 "timestamp": "2026-05-28T20:26:40+00:00",
                                 "quality_since": "2026-05-28T20:26:40+00:00", "valve": "open", "alarms": []}
    assert snap["cdts"][0]["online"] is None  # never tried: the reachability has not spoken
    assert snap["links"][0]["connected"] is False and snap["links"][0]["state"] == "disconnected"


def test_attach_master_reports_link_events_and_stats():
    class Master:
        name = "bus"
        connected = True

        def __init__(self):
            self.observers = []
            self.reachability = Reachability(make_link())

        def add_observer(self, fn):
            self.observers.append(fn)

        class stats:  # noqa: N801
            @staticmethod
            def as_dict():
                return {"requests": 3}

    db, clock, rec = db_for()
    master = Master()
    db.attach_master(master)
    assert db.links()[0].connected is True and db.links()[0].stats == {"requests": 3}
    master.observers[0]("disconnected", {"reason": "x"})
    assert rec.of(LinkChanged)[-1].connected is False


# ---- speed


def test_a_full_community_sweep_applies_fast():
    """12,288 meters = 256 bulk replies of 48 channels; measured against a bound that is
    generous (1 s) — the figure is in docs/performance.md."""
    topology = load(example_path("community.toml"))
    db, clock, rec = db_for(topology)
    link = next(topology.links()).name
    replies = [(cdt.address, bulk(cdt.address, list(range(first, first + 48)), first=first))
               for cdt in next(topology.links()).cdts for first in (1, 49)]
    started = time.perf_counter()
    for address, reply in replies:
        db.on_bulk(link, address, reply, T0)
    first_sweep = time.perf_counter() - started
    assert len(rec.of(MeterChanged)) == 12288
    rec.clear()
    started = time.perf_counter()
    for address, reply in replies:
        db.on_bulk(link, address, reply, T0 + 60)
    same_sweep = time.perf_counter() - started
    assert len(rec.events) == 256 and not rec.of(MeterChanged)  # one ReadingBatch per reply, no change
    assert first_sweep < 1.0 and same_sweep < 1.0, (first_sweep, same_sweep)


def measure(repeats: int = 5) -> None:  # pragma: no cover - the figure in docs/performance.md
    """Print the best-of-``repeats`` time to apply one 12,288-meter sweep (256 bulk replies of
    48 channels): first read, a read where every count changed, an identical re-read; alone and
    with the alarm manager and one more subscriber on the bus."""
    from st2000r.supervisor.alarms import AlarmManager

    topology = load(example_path("community.toml"))
    link = next(topology.links())
    for label, extras in (("point DB alone", False), ("with alarm manager + 1 subscriber", True)):
        best: dict[str, float] = {}
        for _ in range(repeats):
            clock = Clock()
            bus = EventBus()
            db = PointDatabase(topology, clock, bus)
            if extras:
                AlarmManager(topology, clock, bus)
                bus.subscribe(lambda event: None)
            for name, base in (("first sweep", 0), ("every count changed", 1), ("identical re-read", 1)):
                replies = [(c.address, bulk(c.address, list(range(base + f, base + f + 48)), first=f))
                           for c in link.cdts for f in (1, 49)]
                started = time.perf_counter()
                for address, reply in replies:
                    db.on_bulk(link.name, address, reply, 0.0)
                best[name] = min(best.get(name, 1e9), time.perf_counter() - started)
        for name, seconds in best.items():
            print(f"{label}: {name}: {seconds * 1000:.1f} ms per 12,288-meter sweep (best of {repeats})")


if __name__ == "__main__":  # pragma: no cover
    measure()
