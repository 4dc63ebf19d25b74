"""The store-and-forward writer on SQLite and PostgreSQL, with an injected clock.

With ``Clock`` the writer's blocking work runs inline, so each test steps time and looks at
the database and the spool directly.
"""

from __future__ import annotations

import json
import os

import pytest
from sqlalchemy import select, text
from twisted.internet.task import Clock

from hist_rig import TcpProxy, batches, topology
from st2000r.historian import db
from st2000r.historian.schema import readings
from st2000r.historian.spool import Spool
from st2000r.historian.writer import QUARANTINE_FILE, Historian
from st2000r.supervisor.events import EventBus, MeterId, Purpose, Reading, ReadingBatch

T0 = 1_780_000_000.0


class Alarms:
    def __init__(self):
        self.raised, self.cleared = {}, []

    def raise_alarm(self, alarm_id, source, kind, text, severity=None):
        self.raised[alarm_id] = text

    def clear_alarm(self, alarm_id, why=""):
        self.cleared.append(alarm_id)
        self.raised.pop(alarm_id, None)


def start(url, tmp_path, *, topo=None, clock=None, **kw):
    clock = clock or Clock()
    if clock.seconds() == 0:
        clock.advance(T0)
    bus = EventBus(clock)
    h = Historian(topo or topology(str(tmp_path)), url, clock, bus, str(tmp_path / "spool"), config_name="hist.toml",
                  **kw)
    h.startService()
    return h, bus, clock


def publish_round(bus, topo, round_no, source=Purpose.PLAN):
    for event in batches(topo, round_no, source):
        bus.publish(event)


def rows(url, sql):
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def upgraded(url):
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    return url


def test_readings_reach_the_views_in_order(db_url, tmp_path):
    upgraded(db_url)
    topo = topology(str(tmp_path))
    h, bus, clock = start(db_url, tmp_path, topo=topo)
    for r in (1, 2, 3):
        publish_round(bus, topo, r)
        clock.advance(0.5)
    h.stopService()
    assert h.status().state == "connected" and h.status().spool_rows == 0
    assert h.written == 3 * 12
    got = rows(db_url, "SELECT meter_id, value, base_unit, quality, source FROM v_readings "
                       "WHERE meter_id = 'bus/2/1/2' ORDER BY read_at")
    # electricity, pulse constant 1, initial 1000; round r counts r * channel
    assert got == [("bus/2/1/2", 1002, "Wh", "good", "plan"), ("bus/2/1/2", 1004, "Wh", "good", "plan"),
                   ("bus/2/1/2", 1006, "Wh", "good", "plan")]
    latest = rows(db_url, "SELECT meter_id, household, kind, value, base_unit, quality FROM v_latest_readings "
                          "ORDER BY meter_id")
    assert len(latest) == 12
    assert ("bus/1/2/3", "B001-02", "gas", 1000 + 3 * 3 * 10, "L", "good") in latest
    seqs = [r[0] for r in rows(db_url, "SELECT seq FROM readings ORDER BY id")]
    assert seqs == sorted(seqs)  # stored in the order they were published


def test_a_replay_after_a_crash_inserts_nothing_twice(db_url, tmp_path):
    """The batch was committed but the process died before the spool's acknowledgement:
    the next start replays it and the idempotent key skips every row."""
    upgraded(db_url)
    topo = topology(str(tmp_path))
    h, bus, clock = start(db_url, tmp_path, topo=topo)
    publish_round(bus, topo, 1)
    clock.advance(0.5)
    ack = (tmp_path / "spool" / "ack").read_text()
    publish_round(bus, topo, 2)
    clock.advance(0.5)
    h.stopService()
    (tmp_path / "spool" / "ack").write_text(ack)  # as if killed between round 2's commit and its ack
    left = Spool(tmp_path / "spool")
    assert left.rows == 12  # round 2 is still in the spool
    left.close()
    h2, bus2, clock2 = start(db_url, tmp_path, topo=topo)  # replays it at start
    publish_round(bus2, topo, 3)
    clock2.advance(0.5)
    h2.stopService()
    assert h2.status().spool_rows == 0
    assert rows(db_url, "SELECT count(*) FROM readings") == [(36,)]
    dup = rows(db_url, "SELECT meter, read_at, source, count(*) FROM readings GROUP BY meter, read_at, source "
                       "HAVING count(*) > 1")
    assert dup == []


@pytest.mark.postgres
def test_unreachable_database_spools_and_replays_in_order(pg_database, pg_schema, tmp_path):
    """The database goes away (a proxy of our own is cut) for several rounds and comes back:
    rows wait in the spool, then arrive once each, in the order they were produced."""
    from hist_rig import PG_UPSTREAM, pg_url

    proxy = TcpProxy(PG_UPSTREAM)
    try:
        url = upgraded(pg_url(pg_database, port=proxy.port, schema=pg_schema))
        topo = topology(str(tmp_path))
        h, bus, clock = start(url, tmp_path, topo=topo)
        publish_round(bus, topo, 1)
        clock.advance(0.5)
        assert h.status().state == "connected"
        proxy.cut()
        for r in (2, 3, 4):
            publish_round(bus, topo, r)
            clock.advance(0.5)
            clock.advance(60)  # past any back-off: every round tries the database again
        status = h.status()
        assert status.state == "unreachable" and status.spool_rows == 36
        assert status.oldest_age_s > 60
        proxy.restore()
        publish_round(bus, topo, 5)
        clock.advance(60)
        clock.advance(0.5)
        assert h.status().state == "connected" and h.status().spool_rows == 0
        h.stopService()
        got = rows(url, "SELECT seq FROM readings ORDER BY id")
        assert len(got) == 60 and [s for (s,) in got] == sorted(s for (s,) in got)
        assert rows(url, "SELECT count(DISTINCT read_at) FROM readings") == [(5,)]
    finally:
        proxy.close()


def test_an_older_schema_stops_writing_raises_an_alarm_and_spools(db_url, tmp_path):
    topo = topology(str(tmp_path))
    alarms = Alarms()
    h, bus, clock = start(db_url, tmp_path, topo=topo, alarms=alarms)  # no schema at all yet
    publish_round(bus, topo, 1)
    clock.advance(0.5)
    status = h.status()
    assert status.state == "schema" and "run 'st2000r db upgrade hist.toml'" in status.problem
    assert "historian:schema" in alarms.raised and status.spool_rows == 12
    upgraded(db_url)
    clock.advance(60)
    assert h.status().state == "connected" and h.status().spool_rows == 0
    assert "historian:schema" in alarms.cleared
    h.stopService()
    assert rows(db_url, "SELECT count(*) FROM v_readings") == [(12,)]


def test_readings_of_a_meter_no_longer_configured_go_to_quarantine(db_url, tmp_path):
    upgraded(db_url)
    topo = topology(str(tmp_path))
    h, bus, clock = start(db_url, tmp_path, topo=topo)
    ghost = ReadingBatch("bus", 9, batches(topo, 1)[0].at, Purpose.READ_NOW, None,
                         (Reading(MeterId("bus", 9, 1, 1), 5, 5, 0, 0),))
    bus.publish(ghost)
    publish_round(bus, topo, 1)
    clock.advance(0.5)
    h.stopService()
    assert h.quarantined == 1 and h.written == 12
    lines = (tmp_path / "spool" / QUARANTINE_FILE).read_text().splitlines()
    item = json.loads(lines[0])
    assert item["kind"] == "readings" and item["row"][0] == "bus/9/1/1"
    assert "not in the meters table" in item["reason"]


def test_a_reading_batch_is_never_dropped_when_the_queue_is_full(tmp_path):
    url = upgraded(f"sqlite:///{tmp_path / 'h.sqlite'}")
    topo = topology(str(tmp_path))
    h, bus, clock = start(url, tmp_path, topo=topo)
    h._consumer.limit = 1  # the queue takes one event; the rest overflow into the writer
    for r in range(1, 11):
        publish_round(bus, topo, r)
    assert h._consumer.stats.overflowed > 0
    clock.advance(0.5)
    h.stopService()
    assert rows(url, "SELECT count(*) FROM readings") == [(120,)]


def test_a_spool_near_its_bound_raises_an_alarm(tmp_path):
    topo = topology(str(tmp_path))
    alarms = Alarms()
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # a port nothing answers
    h, bus, clock = start(url, tmp_path, topo=topo, alarms=alarms, spool_max_bytes=8000)
    r = 0
    while "historian:spool" not in alarms.raised:
        r += 1
        assert r < 50
        publish_round(bus, topo, r)
        clock.advance(0.5)
    assert h.status().spool_bytes >= 0.8 * 8000
    for extra in range(r + 1, r + 6):  # beyond the bound: kept in memory, not dropped
        publish_round(bus, topo, extra)
        clock.advance(0.5)
    status = h.status()
    assert status.spool_bytes <= 8000 and status.memory_rows > 0
    assert status.spool_rows + status.memory_rows == (r + 5) * 12
    h.stopService()


def test_a_backlog_is_visible_in_status_and_logged_once_a_minute(tmp_path):
    """Database away: the spool's depth, its oldest row's age and the write rate are in
    ``status()`` and logged once a minute, the first time after a minute of backlog; once
    the rows are written nothing more is logged."""
    from twisted.logger import globalLogPublisher

    topo = topology(str(tmp_path))
    seen = []

    def observe(event):
        if "status" in event and event.get("log_namespace", "").endswith("historian.writer"):
            seen.append((event["status"].spool_rows, round(event["status"].oldest_age_s)))

    globalLogPublisher.addObserver(observe)
    try:
        h, bus, clock = start("postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path, topo=topo)
        publish_round(bus, topo, 1)
        for _ in range(int(150 / 0.5)):  # 150 s in flush steps
            clock.advance(0.5)
        status = h.status()
        assert (status.state, status.spool_rows, status.written, status.rate) == ("unreachable", 12, 0, 0.0)
        assert 149 <= status.oldest_age_s <= 151
        assert seen == [(12, 60), (12, 120)]
        h.stopService()
        seen.clear()
        url = upgraded(f"sqlite:///{tmp_path / 'h.sqlite'}")
        h, bus, clock = start(url, tmp_path, topo=topo, clock=clock)  # the same spool, a database that answers
        for _ in range(int(130 / 0.5)):
            clock.advance(0.5)
        status = h.status()
        assert (status.state, status.spool_rows, status.written, status.oldest_age_s) == ("connected", 0, 12, 0.0)
        assert seen == []
        h.stopService()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert rows(url, "SELECT count(*) FROM readings") == [(12,)]
