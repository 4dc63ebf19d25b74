"""``st2000r history``: billing queries from the command line.

- ``st2000r history usage CONFIG --household H --from D --to D``: a household's consumption
  per kind, with one line per meter installation it is made of (replacements and rollovers
  accounted for: ``historian.queries``);
- ``st2000r history export CONFIG --from D --to D --output FILE.csv [--encoding gbk]``:
  every reading of the period as CSV (UTF-8 with BOM by default);
- ``st2000r history suspicious CONFIG --from D --to D``: readings to look at.

``D``: ``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 time with an offset.  Exit status 0; 2
for bad arguments or configuration; 1 when the database cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from st2000r.config.cliargs import ArgumentParser

__all__ = ["main"]

PROG = "st2000r history"


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected YYYY-MM-DD or an ISO 8601 time") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _parser() -> Any:
    parser = ArgumentParser(prog=PROG, description="Billing queries on the historian of a topology.")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, text in (("usage", "a household's consumption"), ("export", "readings as CSV"),
                       ("suspicious", "readings to look at")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", metavar="CONFIG")
        p.add_argument("--from", dest="start", type=_when, required=True, metavar="D")
        p.add_argument("--to", dest="end", type=_when, required=True, metavar="D")
        if name == "usage":
            p.add_argument("--household", required=True)
        if name == "export":
            p.add_argument("--output", required=True, metavar="FILE.csv")
            p.add_argument("--encoding", choices=("utf-8-sig", "gbk"), default="utf-8-sig")
        if name == "suspicious":
            p.add_argument("--zero-days", type=int, default=7)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    from sqlalchemy import exc as sa_exc

    from st2000r.historian import db, queries
    from st2000r.historian.cli import _load, historian_url

    topology = _load(args.config)
    if topology is None:
        return 2
    url = historian_url(topology)
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            if args.action == "usage":
                result = queries.usage(conn, args.household, args.start, args.end)
                units = {s.kind: s.base_unit for s in result.segments}
                print(f"household {args.household}, {args.start.isoformat()} .. {args.end.isoformat()}")
                for kind, total in sorted(result.by_kind.items()):
                    print(f"  {kind}: {total} {units[kind]}")
                for s in result.segments:
                    notes = "".join([f", {s.rollovers} rollover(s)" if s.rollovers else "",
                                     f", {s.reversals} reverse step(s)" if s.reversals else ""])
                    print(f"    {s.meter_id} serial {s.serial}: {s.start_value} -> {s.end_value} = {s.consumption} "
                          f"{s.base_unit}{notes}")
                if not result.segments:
                    print("  no meter installation of this household in the period")
            elif args.action == "export":
                n = queries.export_readings(conn, args.start, args.end, args.output, encoding=args.encoding)
                print(f"{n} reading(s) written to {args.output} ({args.encoding})")
            else:
                found = queries.suspicious(conn, args.start, args.end, zero_days=args.zero_days)
                for s in found:
                    print(f"{s.meter_id}\t{s.rule}\t{s.at.isoformat()}\t{s.detail}")
                print(f"{len(found)} finding(s)")
    except sa_exc.SQLAlchemyError as exc:
        print(f"{PROG}: {db.describe_url(url)}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0
