"""``st2000r config``: check a topology file and print its summary.

``st2000r config check FILE [--json]``

Exit status: 0 the file is valid (summary on stdout); 2 the file is invalid, missing or
unreadable, or the arguments are wrong (every issue on stderr, one line each:
``FILE: KEY.PATH: reason``).  With ``--json`` stdout also carries one JSON document,
``{"ok": true, "file": ..., "summary": {...}, "plans": [...], "sites": [...]}`` or
``{"ok": false, "file": ..., "errors": [{"file", "path", "reason", "line", "column"}]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from st2000r.config.cliargs import ArgumentParser
from st2000r.config.errors import ConfigError
from st2000r.config.loader import load
from st2000r.config.model import LINK_KINDS, MeterKind, Summary, Topology

__all__ = ["main", "summary_dict", "render_summary"]


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _by_kind(counts: dict[Any, int]) -> str:
    parts = [f"{getattr(k, 'value', k)} {n}" for k, n in counts.items() if n]
    return f" ({', '.join(parts)})" if parts else ""


def summary_dict(summary: Summary) -> dict[str, Any]:
    """``Summary`` as JSON-ready data; kinds keyed by their configuration spelling."""
    return {
        "sites": summary.sites,
        "links": summary.links,
        "links_by_kind": {kind: summary.links_by_kind.get(kind, 0) for kind in LINK_KINDS},
        "repeaters": summary.repeaters,
        "cdts": summary.cdts,
        "modules": summary.modules,
        "meters": summary.meters,
        "meters_by_kind": {kind.value: summary.meters_by_kind.get(kind, 0) for kind in MeterKind},
    }


def render_summary(topology: Topology) -> str:
    """The text summary ``config check`` prints: totals, then one line per site."""
    s = topology.summary()
    lines = [
        f"{topology.source}: OK",
        f"  sites      {s.sites}",
        f"  links      {s.links}{_by_kind(s.links_by_kind)}",
        f"  repeaters  {s.repeaters}",
        f"  CDTs       {s.cdts}",
        f"  modules    {s.modules}",
        f"  meters     {s.meters}{_by_kind(s.meters_by_kind)}",
        f"  plans      {'; '.join(f'{p.name} ({p.describe()})' for p in topology.plans) or 'none'}",
    ]
    for site in topology.sites:
        t = site.summary()
        lines.append(
            f"  site {site.name!r}: {_plural(t.links, 'link')}{_by_kind(t.links_by_kind)}, "
            f"{_plural(t.repeaters, 'repeater')}, {_plural(t.cdts, 'CDT')}, "
            f"{_plural(t.modules, 'module')}, {_plural(t.meters, 'meter')}{_by_kind(t.meters_by_kind)}"
        )
    return "\n".join(lines)


def _check(args: argparse.Namespace) -> int:
    try:
        topology = load(args.file)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        if args.json:
            errors = [
                {"file": i.file, "path": i.path, "reason": i.reason, "line": i.line, "column": i.column}
                for i in exc.errors
            ]
            print(json.dumps({"ok": False, "file": args.file, "errors": errors}, indent=2))
        return 2
    if args.json:
        document = {
            "ok": True,
            "file": args.file,
            "summary": summary_dict(topology.summary()),
            "plans": [
                {"name": p.name, "kind": p.kind, "at": [t.isoformat() for t in p.at], "every_s": p.every_s,
                 "links": list(p.links) if p.links is not None else None}
                for p in topology.plans
            ],
            "sites": [
                {"name": site.name, "address": site.address,
                 **{k: v for k, v in summary_dict(site.summary()).items() if k != "sites"}}
                for site in topology.sites
            ],
        }
        print(json.dumps(document, indent=2))
    else:
        print(render_summary(topology))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="st2000r config", description="Topology configuration tools.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = commands.add_parser("check", help="validate a topology file and print its summary",
                                description="Validate a topology file; exit 0 and print a summary, "
                                            "or exit 2 and print every problem.")
    check.add_argument("file", metavar="FILE", help="TOML topology file")
    check.add_argument("--json", action="store_true", help="print the summary (or errors) as JSON on stdout")
    check.set_defaults(run=_check)
    return parser


def main(argv: list[str]) -> int:
    """Run ``st2000r config ARGV``; returns the exit status (0 ok, 2 bad input)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help exits 0; a bad argument exits 2 after one line on stderr
        return int(exc.code or 0)
    return args.run(args)
