"""Historian ingest: rows/s through the writer's path (spool append with fsync, then the
idempotent batched insert, several spool records per transaction) next to a bare SQLAlchemy
Core executemany of the same rows in the same run (plain INSERT, one transaction per batch),
on SQLite and -- when it answers -- the local PostgreSQL (a throwaway database).

The historian's insert is ``db.write_ignoring``: on PostgreSQL one ``INSERT ... SELECT FROM
unnest(arrays) ... ON CONFLICT DO NOTHING`` per batch, on SQLite the driver's executemany of
``INSERT ... ON CONFLICT DO NOTHING``; the bare reference stays SQLAlchemy's executemany of a
plain INSERT (the issue's yardstick).  The historian runs second, on the table the bare run
filled and emptied.  Figures and their spread: docs/performance.md.

Prints one line per database with both rates and their ratio (goal >= 0.9, bound 0.8).
Usage: python bench/bench_historian_ingest.py [ROWS]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, text
from twisted.internet.task import Clock

from st2000r.config.loader import loads
from st2000r.historian import db, store
from st2000r.historian.schema import readings
from st2000r.historian.writer import Historian
from st2000r.supervisor.events import EventBus

BATCH = 2000
CONFIG = """
[templates.flat]
channels = [{ channel = 1, kind = "water", pulse_constant = 10 }, { channel = 2, kind = "electricity", pulse_constant = 1 },
            { channel = 3, kind = "gas", pulse_constant = 10 }]
[[sites]]
name = "bench"
address = "here"
[[sites.links]]
name = "bus"
kind = "serial"
device = "/dev/null"
[[sites.links.cdt_ranges]]
addresses = "1-128"
modules = "1-32"
template = "flat"
serial = "{cdt:03}{module:02}{channel}"
"""


def payloads(topo, n_rows):
    """Spool payloads of ``BATCH`` readings each: every meter once per 15-minute round."""
    ids = [f"bus/{c}/{m}/{ch}" for c, m, ch, _ in next(topo.links()).meters()]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(n_rows):
        at = (t0 + timedelta(minutes=15 * (i // len(ids)))).isoformat()
        rows.append([ids[i % len(ids)], at, "plan", i, i, "good", "open", 0, "daily", "bench", i])
    return [{"n": len(rows[k:k + BATCH]), "at": 0, "readings": rows[k:k + BATCH]} for k in range(0, n_rows, BATCH)]


def run(url, n_rows, folder):
    engine = db.make_engine(url)
    db.upgrade(engine)
    topo = loads(CONFIG, "bench.toml")
    with engine.begin() as conn:
        keys = store.sync_topology(conn, topo, datetime.now(UTC))
    batches = payloads(topo, n_rows)
    plain = [store.reading_rows(b["readings"], keys)[0] for b in batches]  # conversion not timed for bare
    t = time.perf_counter()
    for rows in plain:
        with engine.begin() as conn:
            conn.execute(readings.insert(), rows)
    bare = n_rows / (time.perf_counter() - t)
    with engine.begin() as conn:
        conn.execute(delete(readings))
    clock = Clock()
    h = Historian(topo, url, clock, EventBus(clock), os.path.join(folder, "spool"), batch_rows=BATCH)
    h.startService()
    t = time.perf_counter()
    for batch in batches:
        h._thd_write(batch, True)  # what the writer thread runs per batch
    ours = n_rows / (time.perf_counter() - t)
    h.stopService()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM readings")).scalar() == n_rows
    engine.dispose()
    return bare, ours


def main() -> int:
    n_rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as folder:
        bare, ours = run(f"sqlite:///{folder}/h.sqlite", n_rows, folder)
        print(f"sqlite     {n_rows:,} rows: bare Core executemany {bare:,.0f} rows/s, historian (spool+fsync+idempotent "
              f"insert) {ours:,.0f} rows/s, ratio {ours / bare:.2f}")
    try:
        import psycopg

        name = f"st2000r_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True,
                             connect_timeout=2) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        print(f"postgresql skipped: {exc}")
        return 0
    try:
        with tempfile.TemporaryDirectory() as folder:
            bare, ours = run(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", n_rows, folder)
            print(f"postgresql {n_rows:,} rows: bare Core executemany {bare:,.0f} rows/s, historian {ours:,.0f} rows/s, "
                  f"ratio {ours / bare:.2f}")
    finally:
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
