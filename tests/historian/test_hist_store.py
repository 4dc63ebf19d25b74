"""The batched idempotent insert (``db.write_ignoring`` through ``store.write_batch``) on
SQLite and PostgreSQL: order kept, duplicates skipped inside a batch and across batches,
NULLs, every event table, and on PostgreSQL (one array statement per batch) a too-long text
rejected rather than cut."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.dialects import postgresql

from hist_rig import topology
from st2000r.historian import db, store
from st2000r.historian.schema import alarm_events, command_events, health_samples, readings

T = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def setup(db_url, tmp_path):
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    with engine.begin() as conn:
        keys = store.sync_topology(conn, topology(str(tmp_path)), T)
    yield engine, keys
    engine.dispose()


def reading(meter_id, minute, value, source="plan", valve="open", plan="daily", count=None, seq=0):
    return [meter_id, (T + timedelta(minutes=minute)).isoformat(), source, value, count, "good", valve, 0, plan,
            "r1", seq]


def test_a_batch_keeps_its_order_and_skips_what_is_there(setup):
    engine, keys = setup
    first = [reading("bus/1/1/1", 0, 1000, seq=1), reading("bus/1/1/1", 0, 1000, "read_now", valve=None, plan=None,
                                                             seq=2),
             reading("bus/2/2/3", 1, 7000, count=3, seq=3), reading("bus/1/1/1", 0, 1000, seq=4)]  # last: duplicate
    second = [reading("bus/1/1/1", 0, 1000, seq=5), reading("bus/1/1/2", 2, 5, seq=6)]  # first: already stored
    with engine.begin() as conn:
        assert store.write_batch(conn, {"n": 4, "readings": first}, keys) == []
    with engine.begin() as conn:
        assert store.write_batch(conn, {"n": 2, "readings": second}, keys) == []
    with engine.connect() as conn:
        got = [tuple(r) for r in conn.execute(select(readings.c.meter, readings.c.source, readings.c.value,
                                                     readings.c.count, readings.c.valve, readings.c.plan,
                                                     readings.c.seq).order_by(readings.c.id))]
        at = [r[0] for r in conn.execute(select(readings.c.read_at).order_by(readings.c.id))]
    k = keys
    assert got == [(k["bus/1/1/1"], "plan", 1000, None, "open", "daily", 1),
                   (k["bus/1/1/1"], "read_now", 1000, None, None, None, 2),
                   (k["bus/2/2/3"], "plan", 7000, 3, "open", "daily", 3),
                   (k["bus/1/1/2"], "plan", 5, None, "open", "daily", 6)]
    assert [a.replace(tzinfo=UTC) if a.tzinfo is None else a.astimezone(UTC) for a in at] == [
        T, T, T + timedelta(minutes=1), T + timedelta(minutes=2)]


def test_event_tables_take_batches_with_nulls_and_replays(setup):
    engine, keys = setup
    at = T.isoformat()
    payload = {
        "alarms": [{"run": "r1", "seq": n, "at": at, "alarm_id": f"meter:bus/1/1/1:tamper{n}", "source": "bus/1/1/1",
                    "kind": "tamper", "severity": "high", "state": "active-unacked", "active": n % 2 == 0,
                    "text": "外壳被打开", "raised_at": at, "cleared_at": None, "acked_by": None, "acked_at": None,
                    "ack_note": None, "shelved_by": None, "shelved_reason": None, "shelved_until": None}
                   for n in range(3)],
        "commands": [{"run": "r1", "seq": 10, "at": at, "command_id": "c1", "kind": "valve", "target": "bus/1/1/1",
                      "action": "close", "who": "op", "via": "api", "peer": None, "reason": "unpaid",
                      "requested_at": at, "state": "pending", "detail": "", "sent_at": None, "finished_at": None,
                      "late": False}],
        "health": [{"run": "r1", "seq": 20, "at": at, "link": "bus", "cdt": 1, "state": None, "online": True,
                    "mains": None, "battery_low": False, "signal": None}],
    }
    for _ in range(2):  # the second time is a replay: nothing new
        with engine.begin() as conn:
            assert store.write_batch(conn, payload, keys) == []
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(select(alarm_events.c.seq, alarm_events.c.active, alarm_events.c.text,
                                                      alarm_events.c.cleared_at).order_by(alarm_events.c.id))] == [
            (0, True, "外壳被打开", None), (1, False, "外壳被打开", None), (2, True, "外壳被打开", None)]
        assert conn.execute(select(command_events.c.late, command_events.c.peer)).all() == [(False, None)]
        assert conn.execute(select(health_samples.c.online, health_samples.c.mains, health_samples.c.battery_low)
                            ).all() == [(True, None, False)]


@pytest.mark.postgres
def test_postgresql_rejects_a_too_long_text_rather_than_cutting_it(pg_database, pg_schema, tmp_path):
    from hist_rig import pg_url

    engine = db.make_engine(pg_url(pg_database, schema=pg_schema))
    db.upgrade(engine)
    try:
        with engine.begin() as conn:
            keys = store.sync_topology(conn, topology(str(tmp_path)), T)
        with pytest.raises(sa_exc.DataError), engine.begin() as conn:  # the writer quarantines such a row
            store.write_batch(conn, {"readings": [reading("bus/1/1/1", 0, 1, valve="x" * 9)]}, keys)
        with engine.connect() as conn:
            assert conn.execute(select(readings.c.id)).all() == []
    finally:
        engine.dispose()


def test_postgresql_statement_is_one_array_insert_in_batch_order():
    sql = db.unnest_sql(readings, ("meter", "read_at", "source"), postgresql.psycopg.dialect())
    assert sql.startswith("INSERT INTO readings (meter, read_at, source, value, count, quality, valve, alarms, plan, "
                          "run, seq) SELECT c0, c1, ")
    assert ("unnest(CAST(%(meter)b AS BIGINT[]), CAST(%(read_at)b AS TIMESTAMP WITH TIME ZONE[]), "
            "CAST(%(source)b AS VARCHAR[])") in sql  # arrays in psycopg's binary format
    assert "VARCHAR(" not in sql  # no length in a cast: it would cut a too-long text silently
    assert sql.endswith("WITH ORDINALITY AS u(c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, ord) ORDER BY ord "
                        "ON CONFLICT (meter, read_at, source) DO NOTHING")


def test_sqlite_batch_stores_what_core_would_store(tmp_path):
    """The SQLite batch goes to the driver directly: its times and booleans must be stored
    exactly as SQLAlchemy's own insert stores them (text times compare as text)."""
    from sqlalchemy import text

    engine = db.make_engine(f"sqlite:///{tmp_path / 'h.sqlite'}")
    db.upgrade(engine)
    try:
        with engine.begin() as conn:
            keys = store.sync_topology(conn, topology(str(tmp_path)), T)
            at = T + timedelta(seconds=1, microseconds=5)
            conn.execute(readings.insert().values(meter=keys["bus/1/1/1"], read_at=at, source="read_now", value=1,
                                                  count=None, quality="good", valve=None, alarms=0, plan=None,
                                                  run="r", seq=1))
            store.write_batch(conn, {"readings": [[("bus/1/1/1"), at.isoformat(), "plan", 1, None, "good", None, 0,
                                                   None, "r", 2]],
                                     "health": [{"run": "r", "seq": 3, "at": at.isoformat(), "link": "bus", "cdt": 1,
                                                 "state": None, "online": True, "mains": False, "battery_low": None,
                                                 "signal": None}]}, keys)
            conn.execute(health_samples.insert().values(run="r", seq=4, at=at, link="bus", cdt=1, online=True,
                                                        mains=False))
            stored = conn.execute(text("SELECT read_at FROM readings ORDER BY id")).scalars().all()
            health = conn.execute(text("SELECT at, online, mains, battery_low FROM health_samples ORDER BY id")).all()
        assert stored == ["2026-06-01 00:00:01.000005"] * 2
        assert [tuple(r) for r in health] == [("2026-06-01 00:00:01.000005", 1, 0, None)] * 2
    finally:
        engine.dispose()


def test_readings_spooled_before_the_database_first_heard_of_a_meter_are_billed(setup):
    """The database first hears of the topology at T (it was away before, or upgraded late);
    readings taken an hour earlier, replayed from the spool, belong to the meter's first
    installation and count in a household's usage."""
    from st2000r.historian import queries

    engine, keys = setup
    early = [reading("bus/1/1/1", -60, 1000, seq=1), reading("bus/1/1/1", -30, 1400, seq=2),
             reading("bus/1/1/1", 30, 1500, seq=3)]
    with engine.begin() as conn:
        assert store.write_batch(conn, {"n": 3, "readings": early}, keys) == []
    with engine.connect() as conn:
        household = conn.execute(select(store.meters.c.household).where(store.meters.c.meter_id == "bus/1/1/1")).scalar()
        before = queries.usage(conn, household, T - timedelta(minutes=45), T - timedelta(minutes=1))
        across = queries.usage(conn, household, T - timedelta(minutes=45), T + timedelta(hours=1))
    # from the last reading at or before the start (1000) to 1400 (then 1500)
    assert before.by_kind.get("water") == 400
    assert across.by_kind.get("water") == 500
