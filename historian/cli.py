"""``st2000r db``: the historian database from the command line.

- ``st2000r db upgrade CONFIG``: create or upgrade the schema of ``[historian] url`` (or the
  embedded default) to this version's newest revision;
- ``st2000r db status CONFIG``: the schema revision, the spool depth and the quarantine;
- ``st2000r db quarantine CONFIG [--export FILE.csv] [--retry]``: list the rows the
  database rejected, export them, or put them back into the spool (they are written at the
  next start, or refused again with their reason);
- ``st2000r db purge CONFIG [--dry-run]``: bring the daily and monthly aggregates up to
  date, then delete the raw readings older than ``[historian] keep_raw_days`` (only those
  aggregated, in bounded chunks); ``--dry-run`` counts them and changes nothing.

Exit status: 0 success; 2 bad arguments, configuration or URL; 1 the database cannot be
reached or refused the upgrade (one line naming the database without its password).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import Any

from st2000r.config.cliargs import ArgumentParser

__all__ = ["main", "historian_url", "spool_dir"]

PROG = "st2000r db"


def historian_url(topology: Any) -> str:
    """The database URL of a topology: ``[historian] url`` or the embedded default."""
    from st2000r.historian.db import default_url

    return topology.historian.url or default_url(topology.settings.state_dir)


def spool_dir(topology: Any) -> str:
    return os.path.join(topology.settings.state_dir, "historian-spool")


def _parser() -> Any:
    parser = ArgumentParser(prog=PROG, description="Manage the historian database of a topology.")
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("upgrade", help="create or upgrade the schema")
    up.add_argument("config", metavar="CONFIG")
    st = sub.add_parser("status", help="schema revision, spool and quarantine")
    st.add_argument("config", metavar="CONFIG")
    qu = sub.add_parser("quarantine", help="list, export or retry rows the database rejected")
    qu.add_argument("config", metavar="CONFIG")
    qu.add_argument("--export", metavar="FILE.csv", default=None)
    qu.add_argument("--retry", action="store_true", help="put the rows back into the spool")
    pu = sub.add_parser("purge", help="aggregate, then delete raw readings older than keep_raw_days")
    pu.add_argument("config", metavar="CONFIG")
    pu.add_argument("--dry-run", action="store_true", help="count what would be deleted, change nothing")
    return parser


def _load(path: str) -> Any:
    from st2000r.config.cliargs import load_topology

    return load_topology(path)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    topology = _load(args.config)
    if topology is None:
        return 2
    if args.action == "quarantine":
        return _quarantine(topology, args)
    from sqlalchemy import exc as sa_exc

    from st2000r.historian import db

    url = historian_url(topology)
    where = db.describe_url(url)
    try:
        engine = db.make_engine(url)
    except (sa_exc.ArgumentError, ModuleNotFoundError) as exc:
        print(f"{PROG}: {where}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.action == "purge":
            from st2000r.historian.retention_cli import purge_command

            return purge_command(engine, topology, args, PROG, where)
        if args.action == "upgrade":
            before = None
            with engine.connect() as conn:
                before = db.schema_status(conn)
            if before.newer:
                print(f"{PROG}: {where}: {before.problem(args.config)}", file=sys.stderr)
                return 1
            after = db.upgrade(engine)
            print(f"{where}: schema {before.current or 'none'} -> {after.current}")
            return 0
        with engine.connect() as conn:
            status = db.schema_status(conn)
        print(f"{where}: schema {status.current or 'none'} (this version: {status.head})")
    except sa_exc.SQLAlchemyError as exc:
        print(f"{PROG}: {where}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    from st2000r.historian.spool import Spool

    folder = spool_dir(topology)
    if os.path.isdir(folder):
        spool = Spool(folder)
        print(f"spool {folder}: {spool.rows} row(s), {spool.bytes:,} bytes waiting")
        spool.close()
    print(f"quarantine: {len(_quarantined(topology))} row(s)")
    return 0


def _quarantined(topology: Any) -> list[dict]:
    from st2000r.historian.writer import QUARANTINE_FILE

    path = os.path.join(spool_dir(topology), QUARANTINE_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _quarantine(topology: Any, args: Any) -> int:
    from st2000r.historian.writer import QUARANTINE_FILE

    rows = _quarantined(topology)
    if args.export:
        with open(args.export, "w", encoding="utf-8-sig", newline="") as f:
            out = csv.writer(f)
            out.writerow(["kind", "reason", "row"])
            for item in rows:
                out.writerow([item["kind"], item["reason"], json.dumps(item["row"], ensure_ascii=False)])
        print(f"{len(rows)} row(s) written to {args.export}")
    elif args.retry:
        if rows:
            from st2000r.historian.spool import Spool

            batch: dict[str, Any] = {"n": len(rows), "at": 0}
            for item in rows:
                batch.setdefault(item["kind"], []).append(item["row"])
            spool = Spool(spool_dir(topology))
            spool.append(batch)
            spool.close()
            os.unlink(os.path.join(spool_dir(topology), QUARANTINE_FILE))
        print(f"{len(rows)} row(s) back in the spool; the supervisor writes them at its next start")
    else:
        for item in rows:
            print(f"{item['kind']}\t{item['reason']}\t{json.dumps(item['row'], ensure_ascii=False)}")
        print(f"{len(rows)} row(s) in quarantine")
    return 0
