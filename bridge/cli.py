"""``st2000r registers export CONFIG --format csv|json [--output FILE]``: the whole map for tag import.

JSON: a list of objects with the fields of :class:`~st2000r.bridge.regmap.Row` (``unit``,
``port``, ``table``, ``address``, ``type``, ``word_order``, ``point``, ``source``,
``unit_of_measure``, ``description``, ``description_zh``); CSV: the same columns, one header
line.  ``--format ignition``: a CSV of tag paths and Modbus addresses in the
``[unit]IR<address+1>`` / ``[unit]C<address+1>`` spelling OPC servers use (1-based).

Exporting makes the map as ``st2000r run`` would: the lock file beside the configuration is
read and, when new CDTs or links were given slots, written (``--no-lock-update`` only
reads it).  Exit status: 0 written; 2 bad arguments, an invalid configuration, or a map that
cannot be made (the reason on stderr, one line).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from st2000r.config.cliargs import ArgumentParser

__all__ = ["main", "build_parser", "render"]

PROG = "st2000r registers"
FIELDS = ("unit", "port", "table", "address", "type", "word_order", "point", "source", "unit_of_measure",
          "description", "description_zh")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="The Modbus register map of a topology.")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write the whole register map (CSV or JSON) for SCADA tag import")
    export.add_argument("config", metavar="CONFIG", help="TOML topology file")
    export.add_argument("--format", choices=("csv", "json", "ignition"), default="csv")
    export.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
    export.add_argument("--no-lock-update", action="store_true",
                        help="read the map lock file but do not write new assignments to it")
    return parser


def render(rows: list, fmt: str) -> str:
    """The rows (``Row`` objects) as text in ``fmt`` (``csv``, ``json``, ``ignition``)."""
    if fmt == "json":
        return json.dumps([r.as_dict() for r in rows], ensure_ascii=False, indent=1) + "\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(FIELDS)
        for r in rows:
            writer.writerow(["" if getattr(r, f) is None else getattr(r, f) for f in FIELDS])
    else:
        writer.writerow(("Path", "Address", "DataType", "Description"))
        types = {"uint16": "UInt16", "uint32": "UInt32BE", "uint64": "UInt64BE", "int16": "Int16", "bit": "Boolean"}
        for r in rows:
            prefix = "C" if r.table == "coil" else "IR"
            path = f"{r.source.replace('/', '_')}/{r.point}"
            writer.writerow((path, f"[{r.unit}]{prefix}{r.address + 1}", types[r.type], r.description))
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    from st2000r.bridge.regmap import MapError, load_map
    from st2000r.config.cliargs import load_topology

    topology = load_topology(args.config)
    if topology is None:
        return 2
    try:
        regmap = load_map(topology, write=not args.no_lock_update)
    except MapError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    text = render(list(regmap.rows()), args.format)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as exc:
        print(f"{PROG}: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
