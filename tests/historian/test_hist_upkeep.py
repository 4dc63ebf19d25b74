"""The upkeep service on a Clock: aggregates every interval, a chunk per reactor turn,
then the purge; nothing before its time; nothing left scheduled after stop; an older
schema waits (logged once) until it is upgraded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest_twisted
from sqlalchemy import func, select
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from st2000r.historian import db
from st2000r.historian.schema import daily_aggregates, readings
from st2000r.historian.upkeep import Upkeep

from agg_rig import install, meter, read

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def now_at(clock: Clock, at: datetime) -> None:
    clock.advance(at.timestamp() - clock.seconds())


def turns(clock: Clock) -> int:
    """Run what is due now (chunks scheduled for the next reactor turn); how many turns."""
    n = 0
    while any(call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()):
        clock.advance(0)
        n += 1
    return n


def count(engine, table, *where):
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(table).where(*where)).scalar()


def test_aggregates_and_purges_on_the_clock(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    with engine.begin() as c:
        key = meter(c, "bus/1/1/1")
        install(c, key, "S1", T0, 0)
        for n in range(20 * 24):  # hourly for 20 days: 480 readings
            read(c, key, T0 + timedelta(hours=n + 1), n)
    clock = Clock()
    now_at(clock, T0 + timedelta(days=20, hours=12))
    upkeep = Upkeep(url, clock, keep_raw_days=5, interval_s=300, chunk=100, purge_chunk=50)
    upkeep.startService()
    try:
        clock.advance(299)
        assert upkeep.rounds == 0 and count(engine, daily_aggregates) == 0
        clock.advance(1)  # the first round: five chunks of 100 (each its own call), then the purge
        turns(clock)
        assert upkeep.aggregated == 480 and upkeep.rounds == 1
        assert count(engine, daily_aggregates) == 20
        # 5 days kept before 21 Jan: readings up to 16 Jan 00:00 (15 days x 24) went
        assert upkeep.purged == 15 * 24
        assert count(engine, readings) == 480 - 15 * 24
        with engine.begin() as c:
            read(c, key, T0 + timedelta(days=20, hours=6), 999)
        clock.advance(299)
        assert upkeep.aggregated == 480
        clock.advance(1)
        turns(clock)
        assert upkeep.aggregated == 481 and upkeep.rounds == 2
    finally:
        d = upkeep.stopService()
    assert d.called
    assert clock.getDelayedCalls() == []
    engine.dispose()


def test_an_older_schema_waits_and_is_logged_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    engine = db.make_engine(url)
    db.upgrade(engine, "0001")
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    clock = Clock()
    upkeep = Upkeep(url, clock, interval_s=60, config_name="site.toml")
    upkeep.startService()
    try:
        for _ in range(3):
            clock.advance(60)
        waits = [e for e in seen if "aggregates and retention wait" in e.get("log_format", "")]
        assert len(waits) == 1 and upkeep.rounds == 3
        assert "older than" in waits[0]["problem"] and "st2000r db upgrade site.toml" in waits[0]["problem"]
        db.upgrade(engine)
        clock.advance(60)
        assert any("running again" in e.get("log_format", "") for e in seen)
        assert count(engine, daily_aggregates) == 0 and upkeep.rounds == 4
    finally:
        globalLogPublisher.removeObserver(seen.append)
        upkeep.stopService()
    assert clock.getDelayedCalls() == []
    engine.dispose()


@pytest_twisted.ensureDeferred
async def test_on_the_reactor_the_work_runs_on_its_own_thread(tmp_path):
    """With the real reactor the rounds run on the upkeep's thread; stopping waits for a
    round in progress and leaves nothing behind."""
    import threading

    from twisted.internet import reactor, task

    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    with engine.begin() as c:
        key = meter(c, "bus/1/1/1")
        install(c, key, "S1", T0, 0)
        for n in range(48):
            read(c, key, T0 + timedelta(hours=n + 1), n)
    threads = set()
    upkeep = Upkeep(url, reactor, interval_s=0.05, chunk=10)
    real = upkeep._thd_aggregate

    def spy():
        threads.add(threading.current_thread().name)
        return real()

    upkeep._thd_aggregate = spy
    upkeep.startService()
    try:
        deadline = reactor.seconds() + 20
        while upkeep.aggregated < 48 and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        assert upkeep.aggregated == 48
    finally:
        await upkeep.stopService()
    assert threads == {"PoolThread-st2000r-historian-upkeep-0"}
    assert not upkeep.worker.threaded
    assert count(engine, daily_aggregates) == 2
    engine.dispose()
