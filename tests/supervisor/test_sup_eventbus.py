"""The event bus: numbering, type filters, queued consumers that cannot stall anyone, the
queue policy when one falls behind, and the one JSON form of every event type."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from support.builders import T0, bulk, make_topology, status
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.drivers.st2000r.reachability import Purpose
from st2000r.supervisor.alarms import AlarmManager
from st2000r.supervisor.eventbus import EventBus
from st2000r.supervisor.events import (
    EVENT_TYPES,
    Alarm,
    AlarmChanged,
    CdtChanged,
    CommandChanged,
    CommandKind,
    CommandRecord,
    CommandState,
    HistorianChanged,
    LinkChanged,
    LinkState,
    MeterChanged,
    MeterId,
    Quality,
    Reading,
    ReadingBatch,
    RoundDone,
    to_json,
)
from st2000r.supervisor.points import PointDatabase

AT = datetime(2026, 5, 28, 20, 26, 40, tzinfo=UTC)


def meter_changed(channel=1, value=100):
    return MeterChanged(MeterId("bus", 1, 1, channel), value, value, Quality.GOOD, AT, Valve.OPEN, AlarmFlag.NONE,
                        AT, AT)


def batch(cdt=1):
    return ReadingBatch("bus", cdt, AT, Purpose.PLAN, "daily", (Reading(MeterId("bus", cdt, 1, 1), 10, 1, Valve.OPEN,
                                                                         AlarmFlag.NONE),))


def test_seq_is_strictly_increasing_across_every_event_type_with_one_run_id():
    clock = Clock()
    clock.advance(T0)
    bus = EventBus(clock)
    seen = []
    bus.subscribe(seen.append)
    points = PointDatabase(make_topology(), clock, bus)
    AlarmManager(make_topology(), clock, bus)
    points.on_link_state("bus", "connected")
    points.on_reachability("bus", 1, True, T0)
    points.on_bulk("bus", 1, bulk(1, [5, 6], statuses=[status(alarms=AlarmFlag.TAMPER), 0]), T0)  # + an alarm
    points.on_round_done("bus", "daily", "full", T0, T0 + 1)
    kinds = {type(e) for e in seen}
    assert {LinkChanged, CdtChanged, MeterChanged, ReadingBatch, AlarmChanged, RoundDone} <= kinds
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert {e.run for e in seen} == {bus.run_id} and len(bus.run_id) == 16
    assert EventBus(clock).run_id != bus.run_id


def test_subscribe_filters_by_type():
    bus = EventBus()
    meters, batches = [], []
    bus.subscribe(meters.append, MeterChanged)
    bus.subscribe(batches.append, (ReadingBatch, RoundDone))
    bus.publish(meter_changed())
    bus.publish(batch())
    assert [type(e) for e in meters] == [MeterChanged] and [type(e) for e in batches] == [ReadingBatch]


def test_a_failing_subscriber_is_isolated_and_order_is_kept():
    bus = EventBus()
    seen_a, seen_c = [], []

    def a(event):
        seen_a.append(event.seq)
        if event.seq == 1:
            bus.publish(batch())  # published while delivering: queued behind the first

    def b(event):
        raise RuntimeError("subscriber bug")

    bus.subscribe(a)
    bus.subscribe(b)
    unsubscribe = bus.subscribe(lambda e: seen_c.append(e.seq))
    bus.publish(meter_changed())
    assert seen_a == [1, 2] and seen_c == [1, 2] and bus.failures == 2
    unsubscribe()
    unsubscribe()
    bus.publish(batch())
    assert seen_c == [1, 2] and seen_a == [1, 2, 3]


def test_a_consumer_stuck_for_ten_seconds_delays_neither_the_poller_nor_another_subscriber():
    """A full round on the simulator with one queued consumer that takes 10 s (fake clock)
    per event: the round ends when it would without it, the synchronous subscriber saw
    every event at once, and the slow consumer catches up afterwards, in order."""
    from support.simrig import sim_supervisor_parts

    baseline = sim_supervisor_parts().round_time()  # the same round without the slow consumer
    parts = sim_supervisor_parts()
    clock, bus = parts.clock, parts.bus
    slow_seen, fast_seen = [], []

    def slow(event):
        slow_seen.append(event.seq)
        d = defer.Deferred()
        clock.callLater(10, d.callback, None)
        return d

    queued = bus.attach(slow, (ReadingBatch, MeterChanged), limit=100_000, name="slow")
    bus.subscribe(lambda e: fast_seen.append(e.seq), (ReadingBatch, MeterChanged))
    took = parts.round_time()
    assert took == pytest.approx(baseline, rel=1e-9)
    assert len(fast_seen) > 10 and queued.depth > 0  # the slow one is still behind
    for _ in range(len(fast_seen) + 5):
        clock.advance(10)
    assert slow_seen == [s for s in fast_seen if s >= slow_seen[0]] and queued.depth == 0
    assert queued.stats.delivered == len(slow_seen) and queued.stats.max_depth > 1


def test_a_full_queue_coalesces_changes_per_point_and_never_drops_a_reading_batch():
    clock = Clock()
    bus = EventBus(clock)
    got, spooled = [], []
    queued = bus.attach(got.append, limit=3, name="image")
    spool = bus.attach(got.append, (ReadingBatch,), limit=1, overflow=spooled.append, name="historian")
    for value in (1, 2, 3):
        bus.publish(meter_changed(channel=1, value=value))  # fills the queue (limit 3)
    bus.publish(meter_changed(channel=1, value=4))  # same point: replaces the waiting one
    bus.publish(meter_changed(channel=2, value=9))  # a new point: queued beyond the limit
    b1, b2 = batch(1), batch(2)
    bus.publish(b1)
    bus.publish(b2)
    assert queued.stats.coalesced == 1 and queued.stats.over_limit == 2
    assert spool.stats.overflowed == 1 and spooled == [b2]  # handed to the spool at once
    clock.advance(0)
    meters = [(e.meter.channel, e.value) for e in got if isinstance(e, MeterChanged)]
    assert meters == [(1, 1), (1, 2), (1, 4), (2, 9)]  # the newest of point 1 in its place
    assert [e for e in got if isinstance(e, ReadingBatch)].count(b1) == 2  # both consumers got it
    queued.close()
    bus.publish(batch())
    clock.advance(0)
    assert queued.depth == 0 and len(bus.consumers()) == 1


def test_a_consumer_whose_deferred_fails_is_counted_and_goes_on():
    clock = Clock()
    bus = EventBus(clock)
    seen = []

    def consumer(event):
        seen.append(event.seq)
        return defer.fail(RuntimeError("disk full")) if event.seq == 1 else None

    queued = bus.attach(consumer)
    bus.publish(batch())
    bus.publish(batch())
    clock.advance(0)
    clock.advance(0)
    assert seen == [1, 2] and queued.stats.failures == 1


def test_attach_needs_a_clock():
    with pytest.raises(ValueError, match="clock"):
        EventBus().attach(print)


def _examples():
    alarm = Alarm(id="meter:bus/1/1/1:tamper", source="bus/1/1/1", kind="tamper", severity="major",
                  text="meter bus/1/1/1: tamper alarm on the channel", state="active-unacked", active=True,
                  raised_at=AT)
    record = CommandRecord(id="3f2a9c1e-000001", kind=CommandKind.VALVE, target="bus/1/1/1", action="close",
                           who="alice", source="api", peer="192.0.2.7", reason="unpaid bill", requested_at=AT,
                           state=CommandState.SENT, detail="frame on the wire", sent_at=AT)
    return [batch(), meter_changed(),
            CdtChanged("bus", 1, True, True, False, 3600, frozenset({1, 2}), AT),
            LinkChanged("bus", LinkState.CONNECTED, None, AT), RoundDone("bus", "daily", "full", AT, AT, AT),
            AlarmChanged(alarm, AT), CommandChanged(record, AT),
            HistorianChanged("unreachable", "connection refused", 12288, 1572864, 1 << 30, 900, 0, 36864, 0, AT)]


def test_every_event_type_has_the_documented_json_form():
    """docs/events.md shows one example of each type; they are exactly what to_json makes."""
    from pathlib import Path

    examples = _examples()
    assert {type(e) for e in examples} == set(EVENT_TYPES)
    bus = EventBus(run_id="3f2a9c1e5d7b4a60")
    for e in examples:
        bus.publish(e)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text(encoding="utf-8")
    blocks = [json.loads(b.split("```", 1)[0]) for b in doc.split("```json\n")[1:]]
    by_type = {b["type"]: b for b in blocks}
    for e in examples:
        assert to_json(e) == by_type[type(e).__name__], type(e).__name__
        json.dumps(to_json(e))


def test_drained_fires_when_everything_queued_was_delivered():
    clock = Clock()
    bus = EventBus(clock)
    pending = []

    def slow(event):
        d = defer.Deferred()
        pending.append(d)
        return d

    queued = bus.attach(slow)
    assert queued.drained().called  # nothing queued
    bus.publish(batch())
    bus.publish(batch())
    done = queued.drained()
    clock.advance(0)
    assert not done.called and len(pending) == 1
    pending[0].callback(None)
    clock.advance(0)
    assert not done.called  # the second is being delivered
    pending[1].callback(None)
    assert done.called and queued.depth == 0
