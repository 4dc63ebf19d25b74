"""``st2000r run CONFIG``: run the supervisor for a topology until stopped.

Exit status: 0 after a clean stop (SIGTERM, SIGINT, or ``--duration`` elapsed); 2 for bad
arguments or an invalid configuration (every issue on stderr, one per line, as ``config
check`` prints them), a topology the supervisor cannot run, or a state folder that cannot be
created or written (one line naming the folder and the reason); 1 if it cannot start (e.g.
the GPRS or Modbus port is taken).  Logs go to stdout, one line per event: text, or one JSON object
per line with ``--log-format json`` (default: ``[supervisor] log_format``).
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from typing import Any

from st2000r.config.cliargs import ArgumentParser, seconds

__all__ = ["main", "build_parser"]

PROG = "st2000r run"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Run the ST2000R supervisor: poll the field links of a topology, "
                                                   "keep the point database, raise alarms, carry valve commands.")
    parser.add_argument("config", metavar="CONFIG", help="TOML topology file (see 'st2000r config check')")
    parser.add_argument("--log-format", choices=("text", "json"), default=None,
                        help="log line format (default: [supervisor] log_format)")
    parser.add_argument("--state-dir", default=None,
                        help="folder for the audit log and the saved state (default: [supervisor] state_dir)")
    parser.add_argument("--duration", type=seconds, default=None, metavar="SECONDS",
                        help="stop after this many seconds (tests, demos)")
    return parser


def _fail(message: str, status: int = 2) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return status


def _observer(log_format: str) -> Any:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        jsonFileLogObserver,
        textFileLogObserver,
    )

    base = jsonFileLogObserver(sys.stdout, recordSeparator="") if log_format == "json" else \
        textFileLogObserver(sys.stdout)
    return FilteringLogObserver(base, [LogLevelFilterPredicate(LogLevel.info)])


def _stop_before_running(reactor: Any, service: Any) -> None:
    """Stop a half-started service: its stop waits for writer threads (audit log, state
    store) that hand their results back through the reactor, so run the reactor until the
    stop is done (bounded), else the process would wait for them forever at exit."""
    from twisted.internet import defer

    def stop() -> None:
        d = defer.maybeDeferred(service.stopService)
        d.addErrback(lambda f: None).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(stop)
    reactor.callLater(10, reactor.stop)
    reactor.run()


def main(argv: list[str] | None = None) -> int:
    """Run ``st2000r run ARGV``; returns the exit status."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    from dataclasses import replace

    from st2000r.config.cliargs import load_topology

    topology = load_topology(args.config)
    if topology is None:
        return 2
    if args.state_dir is not None:
        topology = replace(topology, settings=replace(topology.settings, state_dir=args.state_dir))
    from st2000r.supervisor.state import check_state_dir

    problem = check_state_dir(topology.settings.state_dir)  # state.sqlite and the audit log live there
    if problem is not None:
        return _fail(problem)
    from st2000r.historian.writer import check_at_start  # an older schema: refused, naming the fix

    problem = check_at_start(topology)
    if problem is not None:
        return _fail(problem)
    log_format = args.log_format or topology.settings.log_format

    from st2000r.supervisor.reactor import install_reactor

    reactor = install_reactor()
    from twisted.logger import Logger, globalLogBeginner

    from st2000r.supervisor.service import SupervisorError, SupervisorService

    try:
        service = SupervisorService(topology, reactor)
    except SupervisorError as exc:
        return _fail(str(exc))
    globalLogBeginner.beginLoggingTo([_observer(log_format)], redirectStandardIO=False)
    log = Logger(namespace="st2000r.supervisor.run")
    try:
        service.startService()
        if service.gprs_server is not None:  # a TCP listen fails at once on this reactor
            failed: list = []
            service.gprs_server.when_listening().addErrback(failed.append)
            if failed:
                raise RuntimeError(failed[0].getErrorMessage())
    except Exception as exc:  # cannot listen, device problems at start ...
        _stop_before_running(reactor, service)
        return _fail(f"cannot start: {exc}", 1)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: reactor.callFromThread(reactor.stop))
    summary = topology.summary()
    log.info("supervising {source}: {links} link(s), {cdts} CDTs, {meters} meters; plans: {plans}",
             source=topology.source, links=summary.links, cdts=summary.cdts, meters=summary.meters,
             plans="; ".join(f"{p.name} ({p.describe()})" for p in topology.plans) or "none")
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    status = [0]
    if service.modbus is not None:  # the Modbus server listens once the loop runs
        def cannot_listen(failure: Any) -> None:
            print(f"{PROG}: cannot start: Modbus TCP: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
            status[0] = 1
            reactor.stop()

        service.modbus.when_listening().addErrback(cannot_listen)
    if args.duration is not None:
        reactor.callLater(args.duration, reactor.stop)
    # The topology, points and register image built above live as long as the process:
    # moved out of the collector's view, a full collection no longer walks them every round.
    gc.collect()
    gc.freeze()
    reactor.run()
    log.info("stopped")
    return status[0]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
