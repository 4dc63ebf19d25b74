"""The ``st2000r`` command: a thin dispatcher over each room's own commands.

Each subcommand lives in the room that owns it and is imported only when asked for, so
``st2000r frame decode`` never loads Twisted's reactor, the historian or Textual.  A room's
command module exposes ``main(argv: list[str]) -> int``; the exit status contract is
0 = success, 2 = bad input (configuration, frame, arguments) with a one-line reason on stderr.
"""

from __future__ import annotations

import importlib
import sys

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("st2000r.config.cli", "check a topology file and print its summary"),
    "frame": ("st2000r.drivers.st2000r.cli", "decode and encode CJ/T 188 / ST2000R frames"),
    "run": ("st2000r.supervisor.run", "run the supervisor for a topology"),
    "db": ("st2000r.historian.cli", "historian database: upgrade the schema, status, quarantine"),
    "history": ("st2000r.historian.history_cli", "billing queries: household usage, CSV export, suspicious readings"),
    "operators": ("st2000r.supervisor.api.operators_cli", "operators: 'hash' prints the password_hash line of a "
                                                         "password"),
    "scan": ("st2000r.supervisor.scan", "commissioning scan of a field bus against the topology"),
    "registers": ("st2000r.bridge.cli", "export the Modbus register map (CSV or JSON) for SCADA tag import"),
    "console": ("st2000r.tui.cli", "the operators' console (Textual; a client of the HTTP API)"),
    "simulate": ("st2000r.simulation.cli", "run the field simulator"),
    "simulate-ctl": ("st2000r.simulation.ctl", "control a running simulator"),
    "simulate-demo": ("st2000r.simulation.demo", "the simulator's demo alone (the embedded community; connect "
                                                 "your own supervisor)"),
    "demo": ("st2000r.supervisor.demo", "run the demo: the supervisor reading the embedded community on the "
                                         "simulator (--simulator-only: st2000r simulate-demo)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: st2000r COMMAND [ARGS...]", "", "commands:"]
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {text}")
    lines.append("")
    lines.append("Run 'st2000r COMMAND --help' for a command's own options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"st2000r: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            print(f"st2000r: command {name!r} is not available in this build", file=sys.stderr)
            return 2
        raise
    status = module.main(rest)
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
