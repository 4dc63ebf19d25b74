"""The queued consumer's coalescing index: kept only while the queue is at its limit (built
from the queue when an event finds it full, dropped when the queue empties), with the same
policy as an index kept for every event: a newer change of a point still queued replaces it
in its place, wherever the queue stands, and nothing else is dropped or reordered."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from twisted.internet.task import Clock

from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.drivers.st2000r.reachability import Purpose
from st2000r.supervisor import eventbus
from st2000r.supervisor.eventbus import EventBus
from st2000r.supervisor.events import MeterChanged, MeterId, Quality, Reading, ReadingBatch

AT = datetime(2026, 5, 28, 20, 26, 40, tzinfo=UTC)


def change(point: str, value: int) -> MeterChanged:
    return MeterChanged(MeterId("bus", 1, 1 + "ABCDEF".index(point), 1), value, value, Quality.GOOD, AT, Valve.OPEN,
                        AlarmFlag.NONE, AT, AT)


def seen(events: list) -> list[tuple[str, int]]:
    return [("ABCDEF"[e.meter.module - 1], e.value) if isinstance(e, MeterChanged) else ("batch", e.cdt)
            for e in events]


def turn(clock: Clock) -> None:
    """One reactor turn: the first call due runs, and not those it schedules (``advance`` would)."""
    call = clock.calls.pop(0)
    call.called = 1
    call.func(*call.args, **call.kw)


def test_coalescing_through_partial_drains_and_an_emptied_queue(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(eventbus, "DRAIN_BATCH", 1)  # one event per reactor turn: the queue stays part full
    clock = Clock()
    bus = EventBus(clock)
    got: list = []
    queued = bus.attach(got.append, limit=3, name="image")
    for point in "ABC":
        bus.publish(change(point, 1))
    assert queued._waiting is None  # below the limit so far: no index
    bus.publish(change("A", 2))  # at the limit: A1 replaced in its place
    turn(clock)  # A2 delivered; B1, C1 wait
    assert seen(got) == [("A", 2)]
    bus.publish(change("A", 3))  # below the limit again, but the index is kept while events wait
    bus.publish(change("B", 2))  # at the limit: B1 replaced in its place
    bus.publish(change("A", 4))  # A3 replaced in its place (the last A queued)
    bus.publish(ReadingBatch("bus", 7, AT, Purpose.PLAN, None, (Reading(MeterId("bus", 7, 1, 1), 1, 1, Valve.OPEN,
                                                                              AlarmFlag.NONE),)))  # never dropped
    while queued.depth:
        turn(clock)
    assert seen(got) == [("A", 2), ("B", 2), ("C", 1), ("A", 4), ("batch", 7)]
    assert queued._waiting is None  # emptied: the index is gone
    assert (queued.stats.coalesced, queued.stats.over_limit, queued.stats.delivered) == (3, 1, 5)
    got.clear()
    for point in "DEF":
        bus.publish(change(point, 1))
    bus.publish(change("D", 2))  # the index is rebuilt from the queue as it is
    while queued.depth:
        turn(clock)
    assert seen(got) == [("D", 2), ("E", 1), ("F", 1)]
    assert queued.stats.coalesced == 4 and queued.stats.max_depth == 4
    assert not clock.getDelayedCalls()
