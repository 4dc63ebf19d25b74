"""Historian drain: how long a 7-day spool of the 12,288-meter community at 15-minute
readings (8,257,536 readings) takes to reach PostgreSQL once the database is back.
Goal: at most 5 minutes.

The spool is built first (what the writer spools during a week without its database:
batches of at most 2,000 readings as the flushes made them, every one fsync'd, its rows
exactly as ``store.event_rows`` makes them), in a throwaway database of the local server
with the schema and the community's topology rows already there.  Then a fresh
``Historian`` opens that spool (timed on its own: reading ~1 GB of segments and their
checksums) and its writer's drain loop runs until the spool is empty (timed: the figure) --
the same code as a real restart after an outage: payloads read back from the segments,
``records_per_transaction`` batches a transaction, the idempotent insert, the commit, the
acknowledgement.  The count in the database is checked afterwards.

Prints the build time, the open time, the drain time, rows/s and the ratio of the drain
time to the 5-minute goal (<= 1.0 meets it).  Takes several minutes and ~3 GB of disk; not
part of the test suite.  Usage: python bench/bench_historian_drain.py [DAYS]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from twisted.internet.task import Clock

from st2000r.config import example_path
from st2000r.config.loader import load
from st2000r.historian import db, store
from st2000r.historian.spool import Spool
from st2000r.historian.writer import Historian
from st2000r.supervisor.events import EventBus

GOAL_S = 300.0
BATCH = 2000
ROUND_S = 15 * 60


def build(folder: str, topo, days: int) -> int:
    """The spool of ``days`` of 15-minute rounds of every meter; returns its rows."""
    meters = [(f"{link.name}/{cdt}/{module}/{channel}", meter) for link in topo.links()
              for cdt, module, channel, meter in link.meters()]
    spool = Spool(folder, max_bytes=1 << 40)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    run, seq, rows, pending = "0123456789abcdef", 0, 0, []
    for k in range(days * 86400 // ROUND_S):
        at = (t0 + timedelta(seconds=k * ROUND_S)).isoformat()
        for meter_id, meter in meters:
            seq += 1
            count = k * 3 + seq % 7
            pending.append([meter_id, at, "plan", meter.initial + count * meter.pulse_constant, count, "good", "open",
                            0, "quarter-hourly", run, seq])
            if len(pending) == BATCH:
                spool.append({"n": BATCH, "at": float(k * ROUND_S), "readings": pending})
                rows += BATCH
                pending = []
    if pending:
        spool.append({"n": len(pending), "at": float(days * 86400), "readings": pending})
        rows += len(pending)
    spool.close()
    return rows


def main() -> int:
    days = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    import psycopg

    name = f"st2000r_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True,
                         connect_timeout=3) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        with tempfile.TemporaryDirectory() as folder:
            topo = load(example_path("community.toml"))
            engine = db.make_engine(url)
            db.upgrade(engine)
            with engine.begin() as conn:
                store.sync_topology(conn, topo, datetime.now(UTC))
            spool_dir = os.path.join(folder, "spool")
            t = time.perf_counter()
            rows = build(spool_dir, topo, days)
            built = time.perf_counter() - t
            size = sum(os.path.getsize(os.path.join(spool_dir, f)) for f in os.listdir(spool_dir))
            print(f"built a spool of {rows:,} readings ({days} days x {rows // max(1, days * 96):,} meters every 15 min), "
                  f"{size / 1e9:.2f} GB, in {built:.0f} s", flush=True)

            clock = Clock()
            h = Historian(topo, url, clock, EventBus(clock), spool_dir, spool_max_bytes=1 << 40)
            t = time.perf_counter()
            h.spool = Spool(spool_dir, 1 << 40)  # what startService opens (not started: its loop would drain at once)
            opened = time.perf_counter() - t
            h._thd_prepare()  # connection, schema check, topology rows: once at the first contact
            assert h.spool is not None and h.spool.rows == rows
            t = time.perf_counter()
            state, problem, committed, quarantined = h._thd_drain()
            drained = time.perf_counter() - t
            h._thd_close()
            assert (state, problem, committed, quarantined) == ("connected", None, rows, 0), (state, problem)
            with engine.connect() as conn:
                stored = conn.execute(text("SELECT count(*) FROM readings")).scalar()
            engine.dispose()
            assert stored == rows, (stored, rows)
            print(f"opened the spool in {opened:.1f} s; drained {rows:,} readings into PostgreSQL in {drained:.0f} s: "
                  f"{rows / drained:,.0f} rows/s; drain time / 5-min goal = {drained / GOAL_S:.2f} "
                  f"({'meets' if drained <= GOAL_S else 'misses'} the goal)", flush=True)
    finally:
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
