"""Daily and monthly aggregates on SQLite and PostgreSQL, with hand-computed values.

A day is (midnight, next midnight] of the aggregates' zone: a reading at exactly midnight
closes the day before.  Consumption follows queries.usage's rule (steps between
consecutive values, rollover at 10^9, replacement through the installations)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select

from st2000r.historian import db
from st2000r.historian.aggregates import ZoneMismatch, aggregate
from st2000r.historian.queries import usage
from st2000r.historian.schema import daily_aggregates, monthly_aggregates, readings

from agg_rig import install, meter, read


def t(day: int, hour: int = 0, minute: int = 0) -> datetime:
    """January 2026 (``day`` 32 is 1 February), UTC."""
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day - 1, hours=hour, minutes=minute)


@pytest.fixture
def engine(db_url):
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def days(engine, key):
    """``{day: (first, last, consumption, rollovers, n_readings)}`` with first/last as
    ``(time, value)``."""
    with engine.connect() as c:
        rows = c.execute(select(daily_aggregates).where(daily_aggregates.c.meter == key)).all()
    return {r.day: ((_utc(r.first_at), r.first_value), (_utc(r.last_at), r.last_value), r.consumption, r.rollovers,
                    r.n_readings) for r in rows}


def months(engine, key):
    with engine.connect() as c:
        rows = c.execute(select(monthly_aggregates).where(monthly_aggregates.c.meter == key)).all()
    return {r.month: ((_utc(r.first_at), r.first_value), (_utc(r.last_at), r.last_value), r.consumption,
                      r.n_readings) for r in rows}


def _utc(value):
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def table(engine, t_):
    with engine.connect() as c:
        return sorted(tuple(r[1:]) for r in c.execute(select(t_)))


def test_a_day_with_a_counter_rollover(engine):
    """Installed 1 Jan 00:00 at 999,999,000 Wh; 06:00 999,999,500; 12:00 999,999,900;
    18:00 300 (wrapped); 2 Jan 06:00 1,300.
    1 Jan: 500 + 400 + (10^9 - 999,999,900 + 300 = 400) = 1,300 Wh, one rollover;
    2 Jan: 300 -> 1,300 = 1,000 Wh.  January: 2,300 Wh."""
    with engine.begin() as c:
        key = meter(c, "bus/1/1/2", kind="electricity")
        install(c, key, "E1", t(1), 999_999_000)
        for at, value in ((t(1, 6), 999_999_500), (t(1, 12), 999_999_900), (t(1, 18), 300), (t(2, 6), 1_300)):
            read(c, key, at, value)
    aggregate(engine, "UTC")
    assert days(engine, key) == {
        date(2026, 1, 1): ((t(1, 6), 999_999_500), (t(1, 18), 300), 1_300, 1, 3),
        date(2026, 1, 2): ((t(2, 6), 1_300), (t(2, 6), 1_300), 1_000, 0, 1),
    }
    assert months(engine, key) == {date(2026, 1, 1): ((t(1, 6), 999_999_500), (t(2, 6), 1_300), 2_300, 4)}
    with engine.connect() as c:
        assert usage(c, "H1", t(1), t(3)).by_kind == {"electricity": 2_300}


def replaced(c):
    """Water meter at bus/1/1/1: S1 installed 1 Jan 00:00 at 1,000 L, read 1 Jan 12:00 1,100,
    2 Jan 06:00 1,200, removed 2 Jan 12:00 with a final reading of 1,250; S2 installed then
    at 0, read 2 Jan 18:00 40 and 3 Jan 06:00 90."""
    key = meter(c, "bus/1/1/1")
    install(c, key, "S1", t(1), 1_000, removed=t(2, 12), final_value=1_250)
    install(c, key, "S2", t(2, 12), 0)
    for at, value in ((t(1, 12), 1_100), (t(2, 6), 1_200), (t(2, 18), 40), (t(3, 6), 90)):
        read(c, key, at, value)
    return key


def test_a_day_with_a_meter_replacement(engine):
    """1 Jan: 1,000 -> 1,100 = 100.  2 Jan: S1 1,100 -> 1,200 -> 1,250 (final) = 150, S2
    0 -> 40 = 40: 190; first reading 06:00 1,200 (S1), last 18:00 40 (S2).  3 Jan: S2
    40 -> 90 = 50.  The days add up to usage: 340 L."""
    with engine.begin() as c:
        key = replaced(c)
    aggregate(engine, "UTC")
    got = days(engine, key)
    assert got == {
        date(2026, 1, 1): ((t(1, 12), 1_100), (t(1, 12), 1_100), 100, 0, 1),
        date(2026, 1, 2): ((t(2, 6), 1_200), (t(2, 18), 40), 190, 0, 2),
        date(2026, 1, 3): ((t(3, 6), 90), (t(3, 6), 90), 50, 0, 1),
    }
    with engine.connect() as c:
        assert usage(c, "H1", t(1), t(4)).by_kind == {"water": 340}
        for n in (1, 2, 3):  # every single day equals usage over it
            assert usage(c, "H1", t(n), t(n + 1)).by_kind == {"water": got[date(2026, 1, n)][2]}


def test_a_late_reading_corrects_its_day_and_the_next(engine):
    """After the replacement case is aggregated, a reading of 1 Jan 18:00 = 1,150 arrives
    (a spool replayed late): 1 Jan 1,000 -> 1,100 -> 1,150 = 150, last 18:00 1,150; 2 Jan
    starts from it: S1 1,150 -> 1,200 -> 1,250 = 100, + S2 40 = 140.  Then 2 Jan 03:00 =
    1,180 arrives: 2 Jan stays 140 (1,150 -> 1,180 -> 1,200 -> 1,250) with 3 readings, first
    03:00.  January stays 340 L throughout."""
    with engine.begin() as c:
        key = replaced(c)
    aggregate(engine, "UTC")
    with engine.begin() as c:
        read(c, key, t(1, 18), 1_150)
    report = aggregate(engine, "UTC")
    assert report.readings == 1
    got = days(engine, key)
    assert got[date(2026, 1, 1)] == ((t(1, 12), 1_100), (t(1, 18), 1_150), 150, 0, 2)
    assert got[date(2026, 1, 2)] == ((t(2, 6), 1_200), (t(2, 18), 40), 140, 0, 2)
    with engine.begin() as c:
        read(c, key, t(2, 3), 1_180)
    aggregate(engine, "UTC")
    got = days(engine, key)
    assert got[date(2026, 1, 2)] == ((t(2, 3), 1_180), (t(2, 18), 40), 140, 0, 3)
    assert months(engine, key) == {date(2026, 1, 1): ((t(1, 12), 1_100), (t(3, 6), 90), 340, 6)}


def test_quality_counts(engine):
    with engine.begin() as c:
        key = meter(c, "bus/1/1/1")
        install(c, key, "S1", t(1), 0)
        for n, quality in enumerate(("good", "good", "stale", "estimated", "substituted", "comm_fail", "odd")):
            read(c, key, t(1, 1 + n), 10 * n, quality=quality)
    aggregate(engine, "UTC")
    with engine.connect() as c:
        row = c.execute(select(daily_aggregates)).one()
        month = c.execute(select(monthly_aggregates)).one()
    for r in (row, month):
        assert (r.n_readings, r.n_good, r.n_stale, r.n_comm_fail, r.n_estimated, r.n_substituted, r.n_other) == (
            7, 2, 1, 1, 1, 1, 1)
    assert row.consumption == 60


def test_month_boundary_midnight_closes_the_day_before(engine):
    """31 Jan 12:00 100 L; 1 Feb 00:00 130 (closes 31 Jan and January); 1 Feb 12:00 170.
    Installed 31 Jan 00:00 at 100: 31 Jan 100 -> 100 -> 130 = 30; 1 Feb 130 -> 170 = 40."""
    with engine.begin() as c:
        key = meter(c, "bus/1/1/1")
        install(c, key, "S1", t(31), 100)
        for at, value in ((t(31, 12), 100), (t(32), 130), (t(32, 12), 170)):
            read(c, key, at, value)
    aggregate(engine, "UTC")
    assert days(engine, key) == {
        date(2026, 1, 31): ((t(31, 12), 100), (t(32), 130), 30, 0, 2),
        date(2026, 2, 1): ((t(32, 12), 170), (t(32, 12), 170), 40, 0, 1),
    }
    assert months(engine, key) == {
        date(2026, 1, 1): ((t(31, 12), 100), (t(32), 130), 30, 2),
        date(2026, 2, 1): ((t(32, 12), 170), (t(32, 12), 170), 40, 1),
    }
    with engine.connect() as c:  # usage agrees at the boundary: January is 30, 1 February 40
        assert usage(c, "H1", t(1), t(32)).by_kind == {"water": 30}
        assert usage(c, "H1", t(32), t(33)).by_kind == {"water": 40}


def test_local_days_of_asia_shanghai(engine):
    """UTC+8: 31 Jan 15:00Z is 23:00 local (31 Jan), 16:00Z is local midnight (closes
    31 Jan), 17:00Z is 1 Feb 01:00 local (1 Feb, February)."""
    with engine.begin() as c:
        key = meter(c, "bus/1/1/1")
        install(c, key, "S1", t(30), 0)
        for at, value in ((t(31, 15), 10), (t(31, 16), 25), (t(31, 17), 45)):
            read(c, key, at, value)
    aggregate(engine, "Asia/Shanghai")
    got = days(engine, key)
    assert got == {
        date(2026, 1, 31): ((t(31, 15), 10), (t(31, 16), 25), 25, 0, 2),
        date(2026, 2, 1): ((t(31, 17), 45), (t(31, 17), 45), 20, 0, 1),
    }
    assert {m: v[2] for m, v in months(engine, key).items()} == {date(2026, 1, 1): 25, date(2026, 2, 1): 20}
    with pytest.raises(ZoneMismatch, match="built in time zone 'Asia/Shanghai'.*aggregate_timezone"):
        aggregate(engine, "UTC")


def test_running_again_changes_nothing_and_chunks_equal_one_pass(engine, db_url):
    """Aggregated one reading per transaction (late readings included) or all at once:
    the same rows; a second run takes nothing and changes nothing."""
    with engine.begin() as c:
        key = replaced(c)
        other = meter(c, "bus/1/1/2", kind="electricity")
        install(c, other, "E1", t(1), 999_999_000)
        for n in range(40):
            read(c, other, t(1, 5 * n + 3), (999_999_000 + 97 * n * n) % 10**9)
        read(c, key, t(1, 18), 1_150)  # late, after the meter's later readings
    aggregate(engine, "UTC", chunk=1)
    daily, monthly = table(engine, daily_aggregates), table(engine, monthly_aggregates)
    assert len(daily) == 3 + 9 and len(monthly) == 2
    assert aggregate(engine, "UTC").readings == 0
    assert (table(engine, daily_aggregates), table(engine, monthly_aggregates)) == (daily, monthly)
    with engine.begin() as c:  # from scratch, in one pass
        c.execute(daily_aggregates.delete())
        c.execute(monthly_aggregates.delete())
        from st2000r.historian.schema import aggregate_state

        c.execute(aggregate_state.update().values(watermark=0, installation_mark=0))
    aggregate(engine, "UTC")
    assert (table(engine, daily_aggregates), table(engine, monthly_aggregates)) == (daily, monthly)
    with engine.connect() as c:
        n = c.execute(select(readings.c.id)).all()
    assert sum(r[-7] for r in monthly) == len(n)  # n_readings: every reading counted once


def test_monthly_rows_equal_the_sum_of_their_days(engine):
    with engine.begin() as c:
        key = meter(c, "bus/1/1/1")
        install(c, key, "S1", t(1), 0)
        for n in range(0, 24 * 70, 7):  # every 7 hours across January, February, March
            read(c, key, t(1, n), 3 * n + (n % 5))
    aggregate(engine, "UTC", chunk=37)
    by_day = days(engine, key)
    for month, (first, last, consumption, n) in months(engine, key).items():
        mine = sorted(v for d, v in by_day.items() if (d.year, d.month) == (month.year, month.month))
        assert consumption == sum(v[2] for v in mine)
        assert n == sum(v[4] for v in mine)
        assert (first, last) == (mine[0][0], mine[-1][1])


@pytest.mark.parametrize("seed", range(4))
def test_incremental_aggregates_equal_usage_day_by_day(engine, seed, monkeypatch):
    """Random readings (some at midnight, some out of order, a counter wrap, a reverse
    step) arrive in random batches with a meter replacement somewhere between them, each
    batch aggregated in random chunks: every day's consumption equals queries.usage over
    that day, the month equals usage over the month, and a from-scratch pass gives the same
    rows.  Odd seeds select without IN lists (as for many meters)."""
    import random

    from st2000r.historian import aggregates

    if seed % 2:
        monkeypatch.setattr(aggregates, "IN_BATCH", 0)
    rnd = random.Random(seed)
    with engine.begin() as c:
        key = meter(c, "bus/1/1/1")
        install(c, key, "S1", t(1), 999_990_000)
    swap = t(6, 13)
    times = sorted({t(1 + rnd.randrange(10), rnd.choice([0, 0, rnd.randrange(24)]), rnd.choice([0, 30]))
                    for _ in range(70)} - {swap, t(1)})
    values, old, new = {}, 999_990_000, 0
    for at in times:
        step = rnd.choice([0, 400, 1_500, 2_900, -30])
        if at < swap:
            old = (old + step) % 10**9
            values[at] = old
        else:
            new = max(0, new + step)
            values[at] = new
    order = list(times)
    rnd.shuffle(order)
    cut = rnd.randrange(1, len(order) - 1)
    batches = [order[:cut], order[cut:]]
    for n, batch in enumerate(batches):
        with engine.begin() as c:
            for at in batch:
                read(c, key, at, values[at])
            if n == 1:  # the replacement is recorded between the two batches
                from st2000r.historian.schema import installations

                c.execute(installations.update().where(installations.c.serial == "S1")
                          .values(removed_at=swap, final_value=(old + 77) % 10**9))
                install(c, key, "S2", swap, 0)
        while aggregate(engine, "UTC", chunk=rnd.randrange(1, 9), max_chunks=1).more:
            pass
    got = days(engine, key)
    with engine.connect() as c:
        for n in range(1, 12):
            expected = usage(c, "H1", t(n), t(n + 1)).by_kind.get("water", 0)
            assert got.get(date(2026, 1, n), (None, None, 0))[2] == expected, (seed, n)
        month = usage(c, "H1", t(1), t(32)).by_kind["water"]
    assert {m: v[2] for m, v in months(engine, key).items()} == {date(2026, 1, 1): month}
    daily, monthly = table(engine, daily_aggregates), table(engine, monthly_aggregates)
    with engine.begin() as c:
        from st2000r.historian.schema import aggregate_state

        c.execute(daily_aggregates.delete())
        c.execute(monthly_aggregates.delete())
        c.execute(aggregate_state.update().values(watermark=0, installation_mark=0))
    aggregate(engine, "UTC")
    assert (table(engine, daily_aggregates), table(engine, monthly_aggregates)) == (daily, monthly)


def test_a_late_reading_and_a_new_one_in_one_chunk(engine):
    """1 Jan 12:00 100, 2 Jan 12:00 300 aggregated (installed 1 Jan at 0: 100 and 200).
    Then in one chunk 1 Jan 18:00 = 160 (late) and 2 Jan 18:00 = 330 (new): 1 Jan 160;
    2 Jan 160 -> 300 -> 330 = 170 -- not 200 + 30 from the row's old start."""
    with engine.begin() as c:
        key = meter(c, "bus/1/1/1")
        install(c, key, "S1", t(1), 0)
        read(c, key, t(1, 12), 100)
        read(c, key, t(2, 12), 300)
    aggregate(engine, "UTC")
    assert {d: v[2] for d, v in days(engine, key).items()} == {date(2026, 1, 1): 100, date(2026, 1, 2): 200}
    with engine.begin() as c:
        read(c, key, t(1, 18), 160)
        read(c, key, t(2, 18), 330)
    aggregate(engine, "UTC")
    assert {d: v[2] for d, v in days(engine, key).items()} == {date(2026, 1, 1): 160, date(2026, 1, 2): 170}
