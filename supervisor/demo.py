"""``st2000r demo``: the supervisor reading the field simulator of the packaged community.

Two processes, as in the field: the simulator is a **child process** (``python -m
st2000r.supervisor.cli simulate``) serving ``config/examples/community.toml`` (128 CDTs,
12,288 meters on one RS485 bus) on a pseudo-terminal, on TCP (``--tcp-port``, default 4001)
and with its HTTP control interface (``--control``, default 7188), running the packaged
``commissioning`` scenario (a tamper alarm at 90 s, a jammed valve, a cut sensor cable, a
slow CDT, a noisy line).  The supervisor runs in this process on the asyncio reactor, its
link on that pseudo-terminal, and never imports the simulator: ground truth and the wire's
byte counters come from the control interface (``GET /truth``, ``/stats``, ``/endpoints``)
over HTTP.  A full round starts as soon as the link is up (the round the supervisor starts
on connecting, ``read_on_connect``, is joined).

Printed: where to connect; a progress line every ``--progress`` seconds (meters read and CDT
halves -- bulk ranges of up to 48 channels, read when all their meters are -- counted as
each reply arrives; elapsed time against the wire bound; errors); every alarm as it is
raised or cleared, with the UTC time of day it happened; at the end of the round a summary:
meters read, how many equal the simulator's ground truth within the read window (see
:mod:`st2000r.supervisor.demo_truth`), sweep time / wire bound, bytes on the wire per meter.
Afterwards a status round runs every ``--status-every`` seconds until Ctrl-C/SIGTERM or
``--for SECONDS``.  ``--baud N`` runs both sides at N baud (8E1 as configured).
``--simulator-only ARGS`` replaces this process with ``st2000r simulate-demo ARGS`` (the
simulator's own demo, a command of the CLI dispatcher).

This module is the command: its options, the two processes and their wiring, where to
connect, stopping in order.  The round with its progress, alarms and summary is
:class:`~st2000r.supervisor.demo_round.Demo`; the simulator child and its control interface
are in :mod:`st2000r.supervisor.demo_sim`; ground truth and the wire bound in
:mod:`st2000r.supervisor.demo_truth`.

**Stopping.**  Ctrl-C, SIGTERM and ``--for`` stop the supervisor first, fetch the last
ground truth, print the summary, then stop the simulator with SIGTERM (SIGKILL after
``STOP_TIMEOUT_S``) and wait for it.  The simulator runs in its own process group (Ctrl-C in
a terminal reaches only the demo, which stops it in order) and, on Linux, gets SIGTERM from
the kernel if the demo dies without stopping it (``PR_SET_PDEATHSIG``).

Exit status: 0 after a clean stop; 2 for bad arguments, or with one line on stderr when the
simulator cannot start (a port that is taken) or ends by itself.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import tempfile
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from st2000r.config.cliargs import ArgumentParser, baud, fail, non_negative, port, seconds
from st2000r.supervisor.demo_round import Demo
from st2000r.supervisor.demo_sim import (
    LAUNCHER,
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    ControlClient,
    SimulatorFailed,
    SimulatorProcess,
    community_resource,
    community_text,
    port_hint,
    simulator_command,
    why_failed,
)
from st2000r.supervisor.demo_truth import Snapshot, TruthCheck, bytes_per_meter_cjt188, truth_table, wire_bound_s

__all__ = [
    "ControlClient",
    "Demo",
    "SimulatorFailed",
    "SimulatorProcess",
    "Snapshot",
    "TruthCheck",
    "build_parser",
    "bytes_per_meter_cjt188",
    "community_resource",
    "community_text",
    "main",
    "simulator_command",
    "truth_table",
    "wire_bound_s",
]

PROG = "st2000r demo"
DEFAULT_TCP_PORT = 4001
DEFAULT_MODBUS_PORT = 1502
DEFAULT_API_PORT = 0  # the HTTP API: any free port unless --api names one
DEMO_OPERATOR = "demo"  # the demo's operator (role admin); its password is made at each start
DEFAULT_CONTROL_PORT = 7188  # the simulator's own default (st2000r simulate --control)
#: --simulator-only: the CLI dispatcher's command for the simulator's own demo (run by exec, never imported)
SIMULATOR_DEMO_COMMAND = "simulate-demo"
SUMMARY_TIMEOUT_S = 90.0  # stopping waits this long for the last ground truth and the summary

#: the demo's historian: an embedded SQLite file kept after the demo, so its readings can be queried
DEMO_HISTORIAN = os.path.join("var", "demo-historian.sqlite")
LATEST_SQL = ("SELECT meter_id, household, kind, value, base_unit, quality, read_at FROM v_latest_readings "
              "ORDER BY read_at DESC, meter_id LIMIT 20;")


def _historian_url(path: str) -> str:
    """Create or upgrade the demo's SQLite historian (blocking, a fraction of a second);
    returns its URL."""
    from st2000r.historian import db

    url = "sqlite:///" + os.path.abspath(path)
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()
    return url


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Run the field simulator for the example community as a child process "
                                              "and the supervisor reading it; print progress, alarms and a summary "
                                              "checked against the simulator's ground truth.")
    p.add_argument("--baud", type=baud, default=None, metavar="N",
                   help="line speed of both sides (default: the file's 2400 baud; a round then takes ~5 min)")
    p.add_argument("--for", dest="duration", type=seconds, metavar="SECONDS",
                   help="stop after SECONDS (default: run until Ctrl-C)")
    p.add_argument("--tcp-port", type=port, default=DEFAULT_TCP_PORT, metavar="PORT",
                   help=f"simulator TCP listener for the bus (0: any free port; default {DEFAULT_TCP_PORT})")
    p.add_argument("--modbus", type=port, default=DEFAULT_MODBUS_PORT, metavar="PORT",
                   help=f"Modbus TCP port of the bridge on 127.0.0.1 (0: any free port; default {DEFAULT_MODBUS_PORT})")
    p.add_argument("--api", type=port, default=DEFAULT_API_PORT, metavar="PORT",
                   help="HTTP API port on 127.0.0.1 (default 0: any free port)")
    p.add_argument("--control", type=port, default=DEFAULT_CONTROL_PORT, metavar="PORT",
                   help=f"simulator control interface port (0: any free port; default {DEFAULT_CONTROL_PORT})")
    p.add_argument("--progress", type=seconds, default=5.0, metavar="SECONDS",
                   help="seconds between progress lines (default 5)")
    p.add_argument("--status-every", type=seconds, default=30.0, metavar="SECONDS",
                   help="after the full round, a status round every SECONDS (default 30)")
    p.add_argument("--truth-every", type=non_negative, default=60.0, metavar="SECONDS",
                   help="ground truth snapshots during the round every SECONDS (default 60; 0: only before and "
                        "after the round); each costs the simulator about a second")
    p.add_argument("--seed", type=int, default=0, help="seed of the consumption models (default 0)")
    p.add_argument("--historian", default=DEMO_HISTORIAN, metavar="FILE",
                   help=f"the SQLite historian the demo writes (kept after the demo; default {DEMO_HISTORIAN})")
    p.add_argument("--no-scenario", action="store_true", help="do not run the commissioning scenario")
    p.add_argument("--verbose", action="store_true",
                   help="also print the supervisor's log and the simulator's output (prefixed 'simulator| ')")
    p.add_argument("--simulator-only", action="store_true",
                   help=f"run only the simulator's own demo (st2000r {SIMULATOR_DEMO_COMMAND}; its own options "
                        "follow)")
    return p


def _duration(secs: float) -> str:
    if secs >= 90:
        return f"{secs / 60:.0f} min"
    return f"{secs:.0f} s"


# --------------------------------------------------------------------------- main


def _say(line: str) -> None:
    try:
        print(line, flush=True)
    except BrokenPipeError:  # | head: keep running quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _simulator_only(argv: list[str]) -> int:
    """Replace this process with ``st2000r simulate-demo ARGV``: the simulator's own demo is
    a command of the one CLI dispatcher, so this room never imports the simulator.  The exit
    status is that command's; returns only if the exec fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    command = [sys.executable, "-m", "st2000r.supervisor.cli", SIMULATOR_DEMO_COMMAND, *argv]
    try:
        os.execv(sys.executable, command)
    except OSError as exc:
        return fail(PROG, f"cannot run st2000r {SIMULATOR_DEMO_COMMAND}: {exc}")
    return 2  # pragma: no cover - execv does not return


def main(argv: list[str] | None = None) -> int:
    """Run ``st2000r demo ARGV``; returns the exit status."""
    args_in = sys.argv[1:] if argv is None else list(argv)
    if "--simulator-only" in args_in:
        return _simulator_only([a for a in args_in if a != "--simulator-only"])
    try:
        args = build_parser().parse_args(args_in)
    except SystemExit as exc:
        return int(exc.code or 0)

    workdir = tempfile.mkdtemp(prefix="st2000r-demo-")  # the simulator's config copy, pty links, state
    try:
        return _run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args: Any, workdir: str) -> int:
    from st2000r.config.errors import ConfigError
    from st2000r.config.loader import load

    try:
        text = community_resource().read_text(encoding="utf-8")
        sim_config = os.path.join(workdir, "community.toml")
        with open(sim_config, "w", encoding="utf-8") as f:
            f.write(community_text(text, args.baud))
        topology = load(sim_config)
    except (ConfigError, OSError, ValueError) as exc:
        return fail(PROG, f"the packaged example community.toml cannot be loaded: {exc}")
    link = next(topology.links())
    if args.baud is not None and link.line.baud != args.baud:
        return fail(PROG, f"community.toml at {args.baud} baud came out at {link.line.baud} baud")
    line = link.line
    pty_dir = os.path.join(workdir, "pty")
    state_dir = os.path.join(workdir, "state")
    os.makedirs(state_dir)

    from st2000r.supervisor.reactor import install_reactor

    reactor = install_reactor()
    from twisted.internet import defer
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    import secrets

    from st2000r.config.model import ApiSettings, ModbusSettings, Operator, ReadingPlan, SerialEndpoint
    from st2000r.supervisor.api.sessions import hash_password
    from st2000r.supervisor.service import SupervisorService

    level = LogLevel.info if args.verbose else LogLevel.critical
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(sys.stdout),
                                                           [LogLevelFilterPredicate(level)])],
                                     redirectStandardIO=False)

    demo_password = secrets.token_urlsafe(9)  # a new one each start: the API listens only on 127.0.0.1 anyway
    # plans the demo starts itself: their daily time is 12 h away, never reached in a demo
    far = (datetime.now() + timedelta(hours=12)).time().replace(second=0, microsecond=0)
    sup_link = replace(link, endpoint=SerialEndpoint(os.path.join(pty_dir, link.name)))
    sup_topology = replace(
        topology, sites=(replace(topology.sites[0], links=(sup_link,)),),
        plans=(ReadingPlan("full", "full", (far,), None, None), ReadingPlan("status", "status", (far,), None, None)),
        settings=replace(topology.settings, gprs_listen=None, state_dir=state_dir),
        modbus=ModbusSettings(tcp=("127.0.0.1", args.modbus)),  # read-only Modbus TCP for SCADA/HMI and mbpoll
        historian=replace(topology.historian, url=_historian_url(args.historian)),  # kept after the demo
        api=ApiSettings(listen=("127.0.0.1", args.api)),  # for the console and curl
        operators=(*topology.operators, Operator(DEMO_OPERATOR, "admin", hash_password(demo_password))),
    )
    bound = wire_bound_s(sup_link)[0]
    summary = topology.summary()
    cli_args = simulator_command(sim_config, link.name, pty_dir, tcp_port=args.tcp_port, control=args.control,
                                 seed=args.seed, scenario=not args.no_scenario, quiet=not args.verbose)
    sim = SimulatorProcess(reactor, echo=_say if args.verbose else None)
    state: dict[str, Any] = {"status": 0, "stopping": False, "ready": False, "service": None, "demo": None}

    def failed(message: str) -> None:
        if state["status"] == 0:
            fail(PROG, message)
        state["status"] = 2
        if reactor.running and not state["stopping"]:
            reactor.stop()

    async def start() -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        reactor.spawnProcess(sim, sys.executable, [sys.executable, "-c", LAUNCHER, str(os.getpid()), *cli_args],
                             env=env)
        _say(f"st2000r demo: the field simulator for {summary.cdts} CDTs, {summary.meters:,} meters "
             f"(community.toml, link {link.name}) in process {sim.pid}, the supervisor reading it in this one "
             f"(process {os.getpid()})")
        _say(f"a full round at {line.baud} baud {line.bytesize}{line.parity}{line.stopbits} takes about "
             f"{_duration(bound)} (wire bound {bound:.1f} s)"
             + ("; --baud 115200 runs both sides faster" if line.baud < 115200 else ""))
        sim.ended.addCallback(ended)
        try:
            await sim.ready.addTimeout(READY_TIMEOUT_S, reactor)
        except SimulatorFailed as exc:
            if state["stopping"]:  # stopped by the demo (Ctrl-C, --for) before it was ready
                return None
            return failed(f"the simulator cannot start: {port_hint(str(exc), args)}")
        except defer.TimeoutError:
            return failed(f"the simulator was not ready within {READY_TIMEOUT_S:g} s")
        state["ready"] = True
        if state["stopping"]:
            return
        control = ControlClient(reactor, sim.control_url or f"http://127.0.0.1:{args.control}")
        try:
            where = {(e["link"], e["kind"]): e["where"] for e in (await control.get("/endpoints"))["endpoints"]}
        except Exception as exc:
            return failed(f"the simulator's control interface does not answer: {why_failed(exc)}")
        pty = where.get((link.name, "pty"), "?")
        tcp = where.get((link.name, "tcp"), "?")
        url = control.url
        _say("")
        _say("Where to connect (simulator):")
        _say(f"  serial (pseudo-terminal): {pty}   (the supervisor reads it; {line.baud} baud on the field side)")
        _say(f"  TCP serial-device server: {tcp}")
        _say(f"  control interface:        {url}")
        ctl = f"st2000r simulate-ctl --url {url}"
        _say("How to query and disturb it:")
        _say(f"  {ctl} truth | less          # ground truth of every meter")
        _say(f"  {ctl} fault alarm link={link.name} cdt=1 channel=2 flags=tamper")
        _say(f"  {ctl} fault repeater link={link.name} name=R2 failed=true")
        _say("  (scenario 'commissioning' runs: a tamper alarm at 90 s, a jammed valve at 2 min, a cut cable at "
             "3 min ...)" if not args.no_scenario else "  (no scenario)")
        _say(f"Historian (SQLite, kept after the demo): {os.path.abspath(args.historian)}; the latest readings:")
        _say(f"  sqlite3 -header -column {shlex.quote(os.path.abspath(args.historian))} \"{LATEST_SQL}\"")
        _say("")
        service = SupervisorService(sup_topology, reactor)  # audit log and state: in the temporary state folder
        state["service"] = service
        demo = Demo(reactor, _say, sim, control, service, sup_link, progress_s=args.progress,
                    status_every_s=args.status_every, truth_every_s=args.truth_every)
        state["demo"] = demo
        try:
            if not await demo.start():
                return None
        except SimulatorFailed as exc:
            return failed(str(exc))
        _say("full round started" + (f"; stopping after {args.duration:g} s" if args.duration else "; Ctrl-C stops"))
        try:  # the Modbus bridge: how to read the first meter with a third-party client
            mb_port = await service.modbus.when_listening()
            mid, (unit, address) = next(iter(service.modbus.map.meters.items()))
            _say(f"Modbus TCP on 127.0.0.1:{mb_port}; meter {mid} (value, 32 bits, most significant word first):")
            _say(f"  mbpoll -m tcp -p {mb_port} -a {unit} -t 3:int -B -0 -r {address} -c 1 -1 127.0.0.1")
            _say("  the whole map: st2000r registers export CONFIG --format csv (docs/modbus-map.md)")
        except Exception as exc:
            _say(f"Modbus TCP is not served: {why_failed(exc)}")
        if service.api is not None and service.api.port is not None:  # the console, over the HTTP API
            api_url = service.api.url
            _say(f"HTTP API on {api_url}/api/v1 (docs/api.md); operator '{DEMO_OPERATOR}' (admin), password "
                 f"'{demo_password}'. The operators' console:")
            _say(f"  .venv/bin/st2000r console --url {api_url}")
            _say(f"  curl -s {api_url}/api/v1/login -H 'Content-Type: application/json' "
                 f"-d '{{\"name\": \"{DEMO_OPERATOR}\", \"password\": \"{demo_password}\"}}'")

    def ended(exit_: Any) -> Any:
        if not state["stopping"] and state["ready"]:
            failed(f"the simulator (process {sim.pid}) ended by itself: {sim.why()}")
        return exit_

    async def shutdown() -> None:
        state["stopping"] = True
        demo, service = state["demo"], state["service"]
        if demo is not None:
            demo.stop()
        if service is not None and service.running:
            try:
                await service.stopService()
            except Exception as exc:  # pragma: no cover - reported, the child still stops
                _say(f"stopping the supervisor: {why_failed(exc)}")
        if demo is not None and demo.finished is not None:
            done: Any = defer.Deferred()
            demo.finished.addBoth(lambda r: done.called or done.callback(None))
            try:
                await done.addTimeout(SUMMARY_TIMEOUT_S, reactor)
            except defer.TimeoutError:
                _say("the summary did not come in time")
        if sim.pid is not None:
            await sim.terminate(STOP_TIMEOUT_S)

    def started(d: Any) -> None:
        d.addErrback(lambda f: failed(f"cannot run the demo: {f.getErrorMessage()}"))

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(shutdown()))
    reactor.callWhenRunning(lambda: started(defer.ensureDeferred(start())))
    if args.duration is not None:
        reactor.callLater(args.duration, reactor.stop)
    try:
        reactor.run()
    finally:
        if sim.running and sim.pid is not None:  # never leave it behind, whatever happened here
            try:
                os.kill(sim.pid, signal.SIGTERM)
            except OSError:
                pass
    if state["status"] == 0:
        _say("stopped")
    return state["status"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
