"""Historian upkeep: the daily/monthly aggregation of each 15-minute round of the
12,288-meter community, and the retention purge, next to a bare SQLAlchemy Core
executemany of the same rows in the same run, on SQLite and -- when it answers -- the local
PostgreSQL (a throwaway database).

Per round: the round's readings are inserted by a bare executemany (timed: the peer), then
``aggregates.aggregate`` brings the aggregates up to date (timed), as the upkeep service
does.  The rounds run from 00:15 through midnight into the next day, so the last rounds of
the day -- where recomputing each touched day from its raw readings would read ~96 readings
per meter -- are in the figures.  Then the purge deletes the first day's raw readings
(``retention.purge``, chunks of 5,000) and is timed against the bare insert rate.

Prints per database: the aggregation time as a ratio of the bare insert time of the same
rows (whole run, and the last five rounds of the day), the purge rate as a ratio of the
bare insert rate, and -- the bound -- the slowest of the last five rounds' aggregation as a
share of the upkeep's interval (``upkeep.INTERVAL_S``, 300 s): at most 10 %, so the upkeep
keeps up with a round every 15 minutes with the machine left to the supervisor.
Exit status 1 when the bound is missed.
Usage: python bench/bench_aggregates.py [--meters N] [--rounds R] [--sqlite-only]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

from st2000r.historian import db
from st2000r.historian.aggregates import aggregate
from st2000r.historian.retention import purge
from st2000r.historian.schema import installations, meters, readings
from st2000r.historian.upkeep import INTERVAL_S

T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: the slowest end-of-day round's aggregation, as a share of the upkeep interval
BOUND = 0.10


def populate(engine, n_meters):
    rows = []
    for i in range(n_meters):
        cdt, rest = divmod(i, 96)
        module, channel = divmod(rest, 3)
        rows.append({"meter_id": f"bus/{cdt + 1}/{module + 1}/{channel + 1}", "link": "bus", "cdt": cdt + 1,
                     "module": module + 1, "channel": channel + 1, "kind": "water", "base_unit": "L",
                     "pulse_constant": 10, "serial": f"{i:014d}", "household": f"H{i // 3}"})
    with engine.begin() as c:
        c.execute(meters.insert(), rows)
        keys = [k for (k,) in c.execute(meters.select().with_only_columns(meters.c.id).order_by(meters.c.id))]
        c.execute(installations.insert(), [{"meter": k, "serial": f"{k:014d}", "household": None, "installed_at": T0,
                                            "start_value": 1_000} for k in keys])
    return keys


def round_rows(keys, n):
    at = T0 + timedelta(minutes=15 * n)
    return [{"meter": k, "read_at": at, "source": "plan", "value": 1_000 + n * (k % 7 + 1) * 10, "count": None,
             "quality": "good", "valve": None, "alarms": 0, "plan": "daily", "run": "bench", "seq": n}
            for k in keys]


def run(url, n_meters, n_rounds):
    engine = db.make_engine(url)
    db.upgrade(engine)
    keys = populate(engine, n_meters)
    insert_s = agg_s = 0.0
    tail_insert = tail_agg = worst = 0.0
    rows = 0
    for n in range(1, n_rounds + 1):
        batch = round_rows(keys, n)
        t = time.perf_counter()
        with engine.begin() as c:
            c.execute(readings.insert(), batch)
        ins = time.perf_counter() - t
        t = time.perf_counter()
        report = aggregate(engine, "UTC")
        agg = time.perf_counter() - t
        assert report.readings == len(batch), report
        insert_s, agg_s, rows = insert_s + ins, agg_s + agg, rows + len(batch)
        if 92 <= n <= 96:  # the last rounds of the first day (23:00 .. 24:00)
            tail_insert, tail_agg, worst = tail_insert + ins, tail_agg + agg, max(worst, agg)
    t = time.perf_counter()
    done = purge(engine, "UTC", 1, T0 + timedelta(days=2, hours=1))
    purge_s = time.perf_counter() - t
    engine.dispose()
    return rows, insert_s, agg_s, tail_insert, tail_agg, worst, done.deleted, purge_s


def pg_url():
    try:
        import psycopg

        admin = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True,
                                connect_timeout=3)
    except Exception:
        return None, None
    name = f"st2000r_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", (admin, name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=12_288)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args(argv)
    targets = [("sqlite", "sqlite:///" + os.path.join(tempfile.mkdtemp(), "bench.sqlite"), None)]
    if not args.sqlite_only:
        url, cleanup = pg_url()
        if url is None:
            print("postgresql: not answering at 127.0.0.1:5432, skipped")
        else:
            targets.append(("postgresql", url, cleanup))
    ok = True
    for name, url, cleanup in targets:
        try:
            rows, ins, agg, tail_ins, tail_agg, worst, deleted, purge_s = run(url, args.meters, args.rounds)
        finally:
            if cleanup is not None:
                admin, database = cleanup
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                admin.close()
        ratio = agg / ins
        tail = tail_agg / tail_ins if tail_ins else float("nan")
        purge_ratio = (deleted / purge_s) / (rows / ins)
        share = worst / INTERVAL_S
        ok = ok and share <= BOUND
        print(f"{name:<10} {args.meters:,} meters x {args.rounds} rounds = {rows:,} readings: bare insert "
              f"{rows / ins:,.0f} rows/s; aggregation {rows / agg:,.0f} rows/s = {ratio:.2f} x the insert time "
              f"(rounds 92-96, end of day: {tail:.2f} x); slowest end-of-day round {share:.3f} of the "
              f"{INTERVAL_S:.0f} s upkeep interval (bound {BOUND}); purge {deleted:,} rows "
              f"{deleted / purge_s:,.0f} rows/s = {purge_ratio:.2f} x the insert rate")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
