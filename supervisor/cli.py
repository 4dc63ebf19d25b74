"""The ``st2000r`` command: a thin dispatcher over each room's own commands.

Each subcommand lives in the room that owns it, is declared as an entry point of the
``st2000r.commands`` group in ``setup.py`` (so this module names no other room's module) and
is imported only when asked for, so
``st2000r frame decode`` never loads Twisted's reactor, the historian or Textual.  A room's
command module exposes ``main(argv: list[str]) -> int``; the exit status contract is
0 = success, 2 = bad input (configuration, frame, arguments) with a one-line reason on stderr.
"""

from __future__ import annotations

import sys
from importlib import metadata

#: the entry-point group of the subcommands (``setup.py``): name -> the owning room's module
GROUP = "st2000r.commands"

#: one line of help per subcommand, in the order ``st2000r --help`` lists them
HELP: dict[str, str] = {
    "config": "check a topology file and print its summary",
    "frame": "decode and encode CJ/T 188 / ST2000R frames",
    "run": "run the supervisor for a topology",
    "db": "historian database: upgrade the schema, status, quarantine, purge",
    "history": "billing queries: household usage, CSV export, suspicious readings",
    "operators": "operators: 'hash' prints the password_hash line of a password",
    "scan": "commissioning scan of a field bus against the topology",
    "registers": "export the Modbus register map (CSV or JSON) for SCADA tag import",
    "console": "the operators' console (Textual; a client of the HTTP API)",
    "simulate": "run the field simulator",
    "simulate-ctl": "control a running simulator",
    "simulate-demo": "the simulator's demo alone (the embedded community; connect your own supervisor)",
    "demo": "run the demo: the supervisor reading the embedded community on the simulator "
            "(--simulator-only: st2000r simulate-demo)",
}


def commands() -> dict[str, metadata.EntryPoint]:
    """The installed subcommands: name -> entry point (its ``value`` is the module)."""
    return {ep.name: ep for ep in metadata.entry_points(group=GROUP)}


def usage(available: dict[str, metadata.EntryPoint] | None = None) -> str:
    """The command list (``available``: the installed commands, default: looked up)."""
    if available is None:
        available = commands()
    names = [n for n in HELP if n in available] + sorted(set(available) - set(HELP))
    width = max(map(len, names), default=0)
    lines = ["usage: st2000r COMMAND [ARGS...]", "", "commands:"]
    for name in names:
        lines.append(f"  {name:<{width}}  {HELP.get(name, '')}".rstrip())
    lines.append("")
    lines.append("Run 'st2000r COMMAND --help' for a command's own options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    available = commands()
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(available))
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in available:
        print(f"st2000r: unknown command {name!r}\n\n{usage(available)}", file=sys.stderr)
        return 2
    entry = available[name]
    try:
        module = entry.load()
    except ModuleNotFoundError as exc:
        if exc.name is not None and entry.value.startswith(exc.name):
            print(f"st2000r: command {name!r} is not available in this build", file=sys.stderr)
            return 2
        raise
    status = module.main(rest)
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
