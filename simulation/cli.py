"""``st2000r simulate CONFIG``: run the field simulator for a topology file.

Prints one ``endpoint:`` line per served link (where the supervisor connects) and one
``control:`` line (the control interface URL), then logs to stdout until SIGINT/SIGTERM
(or ``--for SECONDS``).  Exit status: 0 after a clean stop; 2 with a one-line reason for a
bad configuration, scenario, option, or a port/device that cannot be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime

from st2000r.config.cliargs import ArgumentParser, fail, host_port, port, positive, seconds

__all__ = ["main", "run", "install_reactor", "build_parser", "options_from_args", "UsageError"]

PROG = "st2000r simulate"


class UsageError(Exception):
    """Kept for callers that still catch it: the parser itself now prints its one line and
    exits 2 (``config.cliargs.ArgumentParser``)."""


# the shared parser base and port type under their former names, for callers not yet moved
_Parser = ArgumentParser
_port = port


def install_reactor():
    """Install Twisted's asyncio reactor (if no reactor is installed yet) and return the
    reactor in use."""
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
    from twisted.internet import reactor

    return reactor


def _link_eq(convert: Callable[[str], object]) -> Callable[[str], tuple[str, object]]:
    def parse(text: str):
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise argparse.ArgumentTypeError(f"expected LINK=VALUE, got {text!r}")
        return name, convert(value)

    return parse


#: world start times accepted: the world's clock runs on from the start (months, years at a
#: large --speedup), so the start stays far from the end of the calendar
START_RANGE = (datetime(1970, 1, 2), datetime(9000, 1, 1))


def _when(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO date-time like 2026-01-01T08:00, got {text!r}") from None
    lo, hi = START_RANGE
    if not lo <= when.replace(tzinfo=None) < hi:
        raise argparse.ArgumentTypeError(f"start {text!r} is outside {lo:%Y-%m-%d} .. {hi:%Y-%m-%d}")
    return when


def _interface(text: str) -> str:
    """An IP address to bind (a name would be resolved at listen time, and fail late)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IP address to listen on, e.g. 127.0.0.1, got {text!r}") from None


def add_run_options(parser: argparse.ArgumentParser, *, control_default: int) -> None:
    """Options shared by ``simulate`` and ``demo``."""
    parser.add_argument("--speedup", type=positive, default=1.0, metavar="N",
                        help="run the world clock N times faster (consumption, battery, heartbeats)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the consumption models (default 0)")
    parser.add_argument("--start", type=_when, metavar="ISO", help="world start time (default: now)")
    parser.add_argument("--scenario", metavar="FILE",
                        help="scenario file (a timeline of faults), or the name of a packaged one: commissioning, power-cut")
    parser.add_argument("--control", type=port, default=control_default, metavar="PORT",
                        help=f"control interface port on 127.0.0.1 (0: any free port; default {control_default})")
    parser.add_argument("--no-control", action="store_true", help="no control interface")
    parser.add_argument("--physical-timing", action=argparse.BooleanOptionalAction, default=True,
                        help="bytes take their wire time at the link's baud rate (default: on)")
    parser.add_argument("--for", dest="duration", type=seconds, metavar="SECONDS",
                        help="stop after SECONDS (default: run until Ctrl-C)")
    parser.add_argument("--pty-dir", metavar="DIR", help="also create DIR/<link> symlinks to the pseudo-terminals")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")


def build_parser() -> argparse.ArgumentParser:
    from st2000r.simulation.service import DEFAULT_CONTROL_PORT

    p = ArgumentParser(prog=PROG, description="Run the ST2000R field simulator for a topology file.")
    p.add_argument("config", metavar="CONFIG", help="topology TOML file")
    add_run_options(p, control_default=DEFAULT_CONTROL_PORT)
    p.add_argument("--supervisor", type=host_port, metavar="HOST:PORT", help="where GPRS DTUs dial to")
    p.add_argument("--tcp-base-port", type=port, metavar="P",
                   help="the n-th TCP link listens on P+n instead of its configured port (0: any free port)")
    p.add_argument("--bind", type=_interface, default="127.0.0.1", metavar="ADDR",
                   help="IP address of the TCP listeners' interface (default 127.0.0.1)")
    p.add_argument("--link", action="append", nargs="+", default=[], metavar="NAME",
                   help="serve only these links (repeatable)")
    p.add_argument("--device", action="append", type=_link_eq(str), default=[], metavar="LINK=PATH",
                   help="serve a serial link on a real serial device instead of a pty")
    p.add_argument("--tcp", action="append", type=_link_eq(port), default=[], metavar="LINK=PORT",
                   help="also serve LINK on a TCP listener (0: any free port); for a tcp link: move its listener")
    return p


def scenario_path(name: str | None) -> str | None:
    """``name`` as given if it is a file; else the packaged scenario ``name`` (with or
    without ``.toml``) from ``st2000r.simulation/scenarios/`` if there is one; else ``name``
    unchanged (loading it then reports the missing file)."""
    if name is None or os.path.exists(name) or os.sep in name:
        return name
    import importlib.resources

    stem = name.removesuffix(".toml")
    packaged = importlib.resources.files("st2000r.simulation") / "scenarios" / f"{stem}.toml"
    return str(packaged) if packaged.is_file() else name


def options_from_args(args: argparse.Namespace, **extra):
    from st2000r.simulation.service import SimulatorOptions

    return SimulatorOptions(
        speedup=args.speedup,
        seed=args.seed,
        start=args.start,
        physical_timing=args.physical_timing,
        scenario=scenario_path(args.scenario),
        links=tuple(name for group in getattr(args, "link", []) for name in group),
        devices=tuple(getattr(args, "device", [])),
        bind=getattr(args, "bind", "127.0.0.1"),
        tcp_base_port=getattr(args, "tcp_base_port", None),
        tcp_ports=tuple(getattr(args, "tcp", [])) + tuple(extra.pop("tcp_ports", ())),
        supervisor=getattr(args, "supervisor", None),
        control_port=None if args.no_control else args.control,
        pty_dir=args.pty_dir,
        **extra,
    )


def _fail(prog: str, message: str) -> int:
    return fail(prog, message)


def run(
    topology,
    options,
    *,
    prog: str = PROG,
    duration: float | None = None,
    quiet: bool = False,
    banner: Callable[[object], Sequence[str]] | None = None,
) -> int:
    """Build, start and run the simulator until stopped; the exit status.

    ``banner(service)`` returns extra lines printed after the endpoint lines.
    """
    reactor = install_reactor()
    from twisted.internet.error import CannotListenError
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from st2000r.simulation.faults import FaultError
    from st2000r.simulation.service import SimulatorError, SimulatorService

    try:
        service = SimulatorService(topology, options, reactor)
    except (SimulatorError, FaultError) as exc:
        return _fail(prog, str(exc).replace("\n", "; "))
    predicate = LogLevelFilterPredicate(LogLevel.warn if quiet else LogLevel.info)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stdout), [predicate])],
        redirectStandardIO=False,
    )
    try:
        service.startService()
    except CannotListenError as exc:
        _stop_quietly(service)
        blame_control = (service.control is not None and exc.port == options.control_port and exc.port != 0
                         and exc.interface == options.control_host)
        return _fail(prog, f"cannot listen on {exc.interface or '*'}:{exc.port}: {exc.socketError}"
                     + (" (pass --control 0 or another port)" if blame_control else ""))
    except OSError as exc:
        _stop_quietly(service)
        return _fail(prog, str(exc))
    # SIGINT/SIGTERM stop cleanly even before reactor.run() installs its own handlers
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: reactor.callFromThread(reactor.stop))
    summary = topology.summary()
    _say(f"simulating {topology.source}: {len(service.buses)} link(s), {summary.cdts} CDTs, "
          f"{summary.meters} meters; speedup {options.speedup:g}x, seed {options.seed}")
    for info in service.endpoints():
        _say(f"endpoint: {info.line()}")
    if service.control is not None:
        _say(f"control: {service.control.url}")
    for line in banner(service) if banner else ():
        _say(line)
    _say("ready (Ctrl-C stops)" if duration is None else f"ready (stopping after {duration:g} s)")

    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    if duration is not None:
        reactor.callLater(duration, reactor.stop)
    reactor.run()
    _say("stopped")
    return 0


def _say(line: str) -> None:
    """Print one line now; a closed stdout (``| head``) must not stop the simulator."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _stop_quietly(service) -> None:
    try:
        service.stopService()
    except Exception:  # pragma: no cover - best effort after a failed start
        pass


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(args_in)
    except SystemExit as exc:  # --help exits 0; a bad argument exits 2 after one line on stderr
        return int(exc.code or 0)
    from st2000r.config.errors import ConfigError
    from st2000r.config.loader import load

    try:
        topology = load(args.config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        options = options_from_args(args)
    except ValueError as exc:
        return _fail(PROG, str(exc))
    return run(topology, options, duration=args.duration, quiet=args.quiet)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
