"""Retention on SQLite and PostgreSQL: only aggregated readings go, in bounded chunks, and
billing over purged periods gives what it gave before the purge."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import event, func, select

from st2000r.historian import db
from st2000r.historian.aggregates import aggregate
from st2000r.historian.queries import usage
from st2000r.historian.retention import cutoff_for, purge
from st2000r.historian.aggregates import Zone
from st2000r.historian.schema import aggregate_state, daily_aggregates, meters, readings

from agg_rig import install, meter, read


def t(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day - 1, hours=hour)


#: "now" of the purges: 10 February 12:00 UTC; with 10 days kept the cutoff is 31 January 00:00
NOW = t(41, 12)


@pytest.fixture
def engine(db_url):
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def community(c):
    """Household H1: a water meter read every 6 hours (midnights included) for 40 days,
    replaced on 15 January 12:00 (S1's final 1,000 + 14.5 days; S2 from 0), and an
    electricity meter that wraps on 8 January.  Household H2: a water meter that stops
    reporting on 20 January."""
    water = meter(c, "bus/1/1/1")
    install(c, water, "S1", t(1), 1_000, removed=t(15, 12), final_value=1_000 + 58 * 25 + 7)
    install(c, water, "S2", t(15, 12), 0)
    power = meter(c, "bus/1/1/2", kind="electricity")
    install(c, power, "E1", t(1), 999_990_000)
    other = meter(c, "bus/1/2/1", household="H2", serial="00000000000002")
    install(c, other, "W2", t(1), 5_000, household="H2")
    for n in range(0, 40 * 4 + 1):
        at = t(1, 6 * n)
        if at < t(15, 12):
            read(c, water, at, 1_000 + n * 25)
        elif at > t(15, 12):
            read(c, water, at, (n - 58) * 30)
        read(c, power, at, (999_990_000 + n * 400) % 10**9)
        if at <= t(20):
            read(c, other, at, 5_000 + n * n)


PERIODS = [(t(1), t(41)), (t(3), t(10)), (t(7), t(9)), (t(10), t(20)), (t(15), t(16)), (t(14), t(17)),
           (t(20), t(35)), (t(25), t(38)), (t(31), t(41)), (t(16), t(31)), (t(21), t(41))]


def bills(engine, periods=PERIODS):
    with engine.connect() as c:
        return {(h, a, b): usage(c, h, a, b).by_kind for h in ("H1", "H2") for a, b in periods}


@pytest.mark.parametrize("zone, shift", [("UTC", 0), ("Asia/Shanghai", -8)])
def test_usage_over_purged_periods_equals_usage_before_the_purge(engine, zone, shift):
    """Periods from local midnight to local midnight of the aggregates' zone (Shanghai's
    midnight is 16:00 UTC the day before)."""
    with engine.begin() as c:
        community(c)
    periods = [(a + timedelta(hours=shift), b + timedelta(hours=shift)) for a, b in PERIODS]
    before = bills(engine, periods)
    if shift == 0:
        assert before[("H1", t(7), t(9))]["electricity"] == 8 * 400  # across the wrap on 8 January
    aggregate(engine, zone)
    assert bills(engine, periods) == before  # nothing purged yet: the raw readings
    report = purge(engine, zone, 10, NOW, chunk=100)
    cutoff = t(31, shift)
    assert report.cutoff == cutoff and report.deleted > 0
    with engine.connect() as c:
        left = c.execute(select(func.count()).select_from(readings).where(readings.c.read_at <= cutoff)).scalar()
    assert left == 0
    assert bills(engine, periods) == before


def test_only_aggregated_readings_go_in_bounded_chunks(engine):
    """Aggregated readings at or before the cutoff go, 50 per DELETE at most; a reading
    that arrives later for a purged day waits until it is aggregated (merged into its day:
    one more reading, an earlier first reading), then goes too."""
    with engine.begin() as c:
        community(c)
    aggregate(engine, "UTC")
    with engine.connect() as c:
        total = c.execute(select(func.count()).select_from(readings)).scalar()
        due = c.execute(select(func.count()).select_from(readings).where(readings.c.read_at <= t(31))).scalar()
    deletes: list[int] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(cursor.rowcount)

    event.listen(engine, "after_cursor_execute", count)
    try:
        dry = purge(engine, "UTC", 10, NOW, dry_run=True)
        assert (dry.deleted, dry.waiting) == (due, 0) and deletes == []
        with engine.connect() as c:
            assert c.execute(select(func.count()).select_from(readings)).scalar() == total
        report = purge(engine, "UTC", 10, NOW, chunk=50)
    finally:
        event.remove(engine, "after_cursor_execute", count)
    assert report.deleted == due and report.waiting == 0
    assert max(deletes) == 50 and len(deletes) == math.ceil(due / 50) == report.chunks
    with engine.begin() as c:  # late, for 5 January 03:00 (between 1,400 at 00:00 and 1,425 at 06:00)
        key = c.execute(select(meters.c.id).where(meters.c.meter_id == "bus/1/1/1")).scalar()
        read(c, key, t(5, 3), 1_000 + 16 * 25 + 10)
        read(c, key, t(41, 6), 9_999)  # and a new one (the reading at the watermark is kept)
    assert purge(engine, "UTC", 10, NOW).waiting == 1  # not aggregated: kept
    with engine.connect() as c:
        row = c.execute(select(daily_aggregates).where(daily_aggregates.c.meter == key,
                                                       daily_aggregates.c.day == date(2026, 1, 5))).one()
    assert row.n_readings == 4
    assert aggregate(engine, "UTC").readings == 2
    with engine.connect() as c:
        merged = c.execute(select(daily_aggregates).where(daily_aggregates.c.meter == key,
                                                          daily_aggregates.c.day == date(2026, 1, 5))).one()
    assert merged.n_readings == 5 and merged.first_value == 1_000 + 16 * 25 + 10
    assert (merged.consumption, merged.last_value) == (row.consumption, row.last_value)
    again = purge(engine, "UTC", 10, NOW)
    assert (again.deleted, again.waiting) == (1, 0)


def test_nothing_unaggregated_is_purged_and_the_horizon_never_goes_back(engine):
    with engine.begin() as c:
        community(c)
    report = purge(engine, "UTC", 10, NOW)  # never aggregated: nothing is due, the horizon stays
    assert report.deleted == 0 and report.waiting > 0 and report.cutoff == t(0)
    aggregate(engine, "UTC")
    purge(engine, "UTC", 10, NOW)
    purge(engine, "UTC", 30, NOW)  # keeping more later does not move the horizon back
    with engine.connect() as c:
        assert db.schema_status(c).ok
        horizon = c.execute(select(aggregate_state.c.purged_through)).scalar()
    assert horizon.replace(tzinfo=None) == t(31).replace(tzinfo=None)


def test_cutoff_is_the_local_midnight_keep_days_before_today():
    shanghai = Zone("Asia/Shanghai")
    # 10 Feb 12:00Z is 20:00 in Shanghai; 10 days before 10 Feb local: 31 Jan 00:00 +08 = 30 Jan 16:00Z
    assert cutoff_for(shanghai, 10, NOW) == datetime(2026, 1, 30, 16, tzinfo=UTC)
    assert cutoff_for(Zone("UTC"), 1, NOW) == t(40)
