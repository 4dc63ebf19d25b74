"""``st2000r db purge CONFIG [--dry-run]``: the aggregates brought up to date, then the raw
readings past ``[historian] keep_raw_days`` deleted (``historian/retention.py``).

Why the command aggregates first: a reading is only deleted once its day's aggregate
holds it, so without a running supervisor nothing would ever be due.  With ``--dry-run``
neither happens: it counts what is due now and what waits for aggregation.
Exit status: 0 done (or nothing to do); 1 the database refused (one line why).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

from st2000r.historian import db

__all__ = ["purge_command"]


def purge_command(engine: Any, topology: Any, args: Any, prog: str, where: str) -> int:
    from st2000r.historian.aggregates import ZoneMismatch, aggregate
    from st2000r.historian.retention import purge

    settings = topology.historian
    keep, zone = settings.keep_raw_days, settings.aggregate_timezone
    with engine.connect() as conn:
        status = db.schema_status(conn)
    problem = status.problem(args.config)
    if problem is not None:
        print(f"{prog}: {where}: {problem}", file=sys.stderr)
        return 1
    if keep <= 0:
        print(f"{where}: [historian] keep_raw_days is 0: raw readings are kept forever, nothing to purge")
        return 0
    now = datetime.now(UTC)
    try:
        if args.dry_run:
            report = purge(engine, zone, keep, now, dry_run=True)
            print(f"{where}: {report.deleted} raw reading(s) at or before {report.cutoff.isoformat()} would be "
                  f"deleted ({keep} day(s) kept, days in {zone}); {report.waiting} more are due once aggregated "
                  "(run without --dry-run: it aggregates first)")
            return 0
        done = aggregate(engine, zone)
        print(f"{where}: {done.readings} reading(s) aggregated into daily and monthly rows")
        report = purge(engine, zone, keep, now)
    except ZoneMismatch as exc:
        print(f"{prog}: {where}: {exc}", file=sys.stderr)
        return 1
    print(f"{where}: {report.deleted} raw reading(s) at or before {report.cutoff.isoformat()} deleted in "
          f"{report.chunks} chunk(s) ({keep} day(s) kept, days in {zone}); {report.waiting} due reading(s) kept "
          "(not aggregated yet, or the newest aggregated one)")
    return 0
