"""Historian ingest: rows/s through the writer's path (spool append with fsync, then the
idempotent batched insert, several spool records per transaction) next to a bare SQLAlchemy
Core executemany of the same rows in the same run (plain INSERT, one transaction per batch),
on SQLite and -- when it answers -- the local PostgreSQL (a throwaway database).

The two run interleaved, batch by batch, into the same table (the bare rows carry another
``source``, so their keys never clash): a busy machine slows both alike.

The historian's insert is ``db.write_ignoring``: on PostgreSQL one ``INSERT ... SELECT FROM
unnest(arrays) ... ON CONFLICT DO NOTHING`` per batch, on SQLite the driver's executemany of
``INSERT ... ON CONFLICT DO NOTHING``; the bare reference stays SQLAlchemy's executemany of a
plain INSERT (the issue's yardstick).  Figures and their spread: docs/performance.md.

Both sides start warm: the bare side gets its meter keys before its clock starts, and the
historian its connection, schema check and topology rows (what its writer does once, at its
first contact with the database) -- so the figure is the steady ingest, not the start-up.
The table is emptied between runs (``TRUNCATE`` on PostgreSQL: no dead index entries left
for the next run).

Prints one line per run and database with both rates and their ratio, then the median and
the range of the ratios (goal >= 0.9, bound 0.8).
Usage: python bench/bench_historian_ingest.py [ROWS] [RUNS] [sqlite|postgresql ...]
"""

from __future__ import annotations

import os
import statistics
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


def _empty(engine):
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE readings"))
        else:
            conn.execute(delete(readings))


def run(url, n_rows, folder, runs):
    """``runs`` pairs of (bare rows/s, historian rows/s) on ``url``."""
    engine = db.make_engine(url)
    db.upgrade(engine)
    topo = loads(CONFIG, "bench.toml")
    with engine.begin() as conn:
        keys = store.sync_topology(conn, topo, datetime.now(UTC))
    batches = payloads(topo, n_rows)
    plain = [store.reading_rows(b["readings"], keys)[0] for b in batches]  # conversion not timed for bare
    for rows in plain:  # the bare side's rows differ in the key's source: both go to one table, no clash
        for row in rows:
            row["source"] = "read_now"
    out = []
    for k in range(runs):
        _empty(engine)
        clock = Clock()
        h = Historian(topo, url, clock, EventBus(clock), os.path.join(folder, f"spool-{k}"), batch_rows=BATCH)
        h.startService()
        h._thd_prepare()  # warm: connection, schema check, topology rows
        t_bare = t_ours = 0.0
        for rows, batch in zip(plain, batches):  # interleaved batch by batch: both see the same machine
            t = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(readings.insert(), rows)
            t_bare += time.perf_counter() - t
            t = time.perf_counter()
            h._thd_write(batch, True)  # what the writer thread runs per batch
            t_ours += time.perf_counter() - t
        bare, ours = n_rows / t_bare, n_rows / t_ours
        h.stopService()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM readings")).scalar() == 2 * n_rows
        print(f"{engine.dialect.name:<10} run {k + 1}: {n_rows:,} rows: bare Core executemany {bare:,.0f} rows/s, "
              f"historian (spool+fsync+idempotent insert+ack) {ours:,.0f} rows/s, ratio {ours / bare:.2f}", flush=True)
        out.append((bare, ours))
    engine.dispose()
    return out


def summary(name, results):
    ratios = sorted(ours / bare for bare, ours in results)
    print(f"{name:<10} ratio median {statistics.median(ratios):.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f} over "
          f"{len(ratios)} runs (bound 0.8, goal 0.9); bare median {statistics.median(b for b, _ in results):,.0f} "
          f"rows/s, historian median {statistics.median(o for _, o in results):,.0f} rows/s", flush=True)


def main() -> int:
    n_rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    which = sys.argv[3:] or ["sqlite", "postgresql"]
    if "sqlite" in which:
        with tempfile.TemporaryDirectory() as folder:
            summary("sqlite", run(f"sqlite:///{folder}/h.sqlite", n_rows, folder, runs))
    if "postgresql" not in which:
        return 0
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
            summary("postgresql", run(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", n_rows, folder, runs))
    finally:
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
