"""``st2000r demo``: the field simulator for the packaged community AND the supervisor reading
it, in one process on the asyncio reactor.

The simulator serves ``config/examples/community.toml`` (128 CDTs, 12,288 meters on one
RS485 bus) on a pseudo-terminal, on TCP (``--tcp-port``, default 4001) and with its control
interface (``--control``, default 7188), running the packaged ``commissioning`` scenario
(a tamper alarm at 90 s, a jammed valve, a cut sensor cable, a slow CDT, a noisy line).  The
supervisor's link for the community points at that pseudo-terminal; a full round starts at
once.  Printed: where to connect, one progress line every ``--progress`` seconds (CDTs and
meters read, elapsed time against the wire bound, errors), every alarm as it is raised or
cleared, and at the end of the round a summary: meters read, how many equal the simulator's
ground truth at the moment they were read, sweep time / wire bound, bytes on the wire per
meter.  Afterwards a status round runs every ``--status-every`` seconds until Ctrl-C/SIGTERM
or ``--for SECONDS``.  ``--baud N`` runs both sides at N baud (8E1 as configured).
``--simulator-only`` runs the simulator demo alone (``st2000r.simulation.demo``).

Exit status: 0 after a clean stop; 2 for bad arguments or a port that is taken.
"""

from __future__ import annotations

import argparse
import importlib.resources
import signal
import sys
import tempfile
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

__all__ = ["main", "build_parser", "wire_bound_s", "bytes_per_meter_cjt188"]

PROG = "st2000r demo"
DEFAULT_TCP_PORT = 4001
TRUTH_SLACK_S = 2.0  # world seconds a reading may lag the moment it is checked (reply in transit)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise SystemExit(_fail(f"{message} (see '{PROG} --help')"))


def _fail(message: str, status: int = 2) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return status


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text!r}")
    return int(text)


def _baud(text: str) -> int:
    if not text.isdigit() or not 300 <= int(text) <= 921600:
        raise argparse.ArgumentTypeError(f"expected a baud rate 300..921600, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Run the field simulator for the example community and the supervisor "
                                       "reading it, in one process; print progress, alarms and a summary.")
    p.add_argument("--baud", type=_baud, default=None, metavar="N",
                   help="line speed of both sides (default: the file's 2400 baud; a round then takes ~5 min)")
    p.add_argument("--for", dest="duration", type=_positive, metavar="SECONDS",
                   help="stop after SECONDS (default: run until Ctrl-C)")
    p.add_argument("--tcp-port", type=_port, default=DEFAULT_TCP_PORT, metavar="PORT",
                   help=f"simulator TCP listener for the bus (0: any free port; default {DEFAULT_TCP_PORT})")
    p.add_argument("--control", type=_port, default=None, metavar="PORT",
                   help="simulator control interface port (0: any free port; default 7188)")
    p.add_argument("--progress", type=_positive, default=5.0, metavar="SECONDS",
                   help="seconds between progress lines (default 5)")
    p.add_argument("--status-every", type=_positive, default=30.0, metavar="SECONDS",
                   help="after the full round, a status round every SECONDS (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the consumption models (default 0)")
    p.add_argument("--no-scenario", action="store_true", help="do not run the commissioning scenario")
    p.add_argument("--verbose", action="store_true", help="also print the simulator's and supervisor's log")
    p.add_argument("--simulator-only", action="store_true",
                   help="run only the simulator demo (st2000r.simulation.demo; its own options follow)")
    return p


# --------------------------------------------------------------------------- wire figures


def wire_bound_s(link: Any) -> tuple[float, int, int, float]:
    """``(seconds, bytes, transactions, latency_s)`` of a full round of ``link`` at the least:
    every bulk read's request and full-length reply (2 wake-up bytes each) on the wire, plus
    the mandated gap and the turnaround per transaction, plus ``latency_s``, the repeater
    latency both ways summed over the transactions."""
    from st2000r.drivers.st2000r import messages as m
    from st2000r.drivers.st2000r.poller import bulk_ranges
    from st2000r.drivers.st2000r.timing import BusTiming, hops_latency_s

    timing = BusTiming.for_link(link)
    seconds = latency = 0.0
    nbytes = transactions = 0
    for cdt in link.cdts:
        hops = hops_latency_s(link, cdt.repeater)
        for first, count in bulk_ranges(cdt):
            req = m.BulkRead(address=cdt.bcd_address, first_channel=first, count=count)
            rep = m.BulkReadReply(address=cdt.bcd_address, first_channel=first,
                                  channels=tuple(m.ChannelReading(0) for _ in range(count)))
            size = len(m.encode(req)) + len(m.encode(rep))
            nbytes += size
            transactions += 1
            latency += 2 * hops
            seconds += timing.wire_time(size) + timing.gap_s + timing.turnaround_s + 2 * hops
    return seconds, nbytes, transactions, latency


def bytes_per_meter_cjt188() -> int:
    """Bytes on the wire to read one meter with CJ/T 188 ReadData (request + reply)."""
    from st2000r.drivers.st2000r import messages as m
    from st2000r.drivers.st2000r.units import M3, Quantity

    q = Quantity(12345678, M3)
    req = m.ReadData(meter_type=0x10, address="00000000012345")
    rep = m.CurrentData(meter_type=0x10, address="00000000012345", total=q, settlement=q,
                        time=datetime(2026, 3, 1, 12, 0), status=m.MeterStatus.of())
    return len(m.encode(req)) + len(m.encode(rep))


def _duration(seconds: float) -> str:
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


# --------------------------------------------------------------------------- the demo


class Demo:
    """Watches the supervisor's event stream against the simulator's world; prints progress,
    alarms and the summary.  ``say(line)`` prints one line."""

    def __init__(self, sim: Any, sup: Any, link: Any, reactor: Any, say, *, progress_s: float,
                 status_every_s: float) -> None:
        from st2000r.supervisor.events import AlarmChanged, MeterChanged, Quality

        self._AlarmChanged, self._MeterChanged, self._good = AlarmChanged, MeterChanged, Quality.GOOD
        self.sim, self.sup, self.link, self.reactor, self.say = sim, sup, link, reactor, say
        self.world = sim.world
        self.lw = sim.world.link(link.name)
        self.sim_bus = sim.buses[link.name]
        self.master = sup.masters[link.name]
        self.poller = sup.pollers[link.name]
        self.progress_s, self.status_every_s = progress_s, status_every_s
        self.meters = sum(1 for _ in link.meters())
        self.bound_s, _, _, self.latency_s = wire_bound_s(link)
        self.matches: dict[Any, bool] = {}
        self.read: set[Any] = set()
        self.cdt_left: dict[int, int] = {c.address: sum(1 for _ in c.meters()) for c in link.cdts}
        self.started = 0.0
        self.in_round = False
        self._loops: list[Any] = []
        sup.bus.subscribe(self._on_event)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, self._MeterChanged):
            if event.value is None or event.quality is not self._good:
                return
            mid = event.meter
            state = self.lw.cdt(mid.cdt).channels[mid.channel_no]
            t = self.world.seconds()
            low = state.reading(t - TRUTH_SLACK_S * self.world.speedup)
            high = state.reading(t)
            self.matches[mid] = low <= event.value <= high
            if self.in_round and mid not in self.read:
                self.read.add(mid)
                self.cdt_left[mid.cdt] -= 1
        elif isinstance(event, self._AlarmChanged):
            a = event.alarm
            if a.state == "active-unacked":
                self.say(f"ALARM   {a.severity:<8} {a.id}: {a.text}")
            elif a.state in ("cleared-unacked",) or (a.state == "removed" and not a.active):
                self.say(f"cleared {a.severity:<8} {a.id}")

    def start(self) -> None:
        from twisted.internet.task import LoopingCall

        stats = self.sim_bus.stats
        self.bytes0 = stats.bytes_in + stats.bytes_out
        self.requests0 = self.master.stats.requests
        self.started = self.reactor.seconds()
        self.in_round = True
        d = self.poller.run_plan_now("full")
        d.addCallbacks(self._round_done, self._round_failed)
        loop = LoopingCall(self._progress)
        loop.clock = self.reactor
        loop.start(self.progress_s, now=False)
        self._loops.append(loop)

    def stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()

    def _errors(self) -> str:
        s = self.master.stats
        total = s.timeouts + s.checksum_errors + s.crc_errors
        return f"errors {total} (timeouts {s.timeouts}, checksum {s.checksum_errors}, CRC {s.crc_errors})"

    def _progress(self) -> None:
        if not self.in_round:
            return
        done = sum(1 for left in self.cdt_left.values() if left <= 0)
        elapsed = self.reactor.seconds() - self.started
        # the poller reads the first range of every CDT before the second ones (fairness),
        # so whole CDTs complete only in the second half of the round
        self.say(f"[{elapsed:7.1f} s] meters {len(self.read)}/{self.meters}, CDTs complete "
                 f"{done}/{len(self.cdt_left)}; wire bound of the round {self.bound_s:.1f} s; {self._errors()}")

    def _round_done(self, result: Any) -> None:
        self.in_round = False
        stats = self.sim_bus.stats
        nbytes = stats.bytes_in + stats.bytes_out - self.bytes0
        requests = self.master.stats.requests - self.requests0
        timing = self.master.timing
        # the bound of what actually went over the wire (retries included), as bench/bench_sweep.py
        bound = timing.wire_time(nbytes) + requests * (timing.gap_s + timing.turnaround_s) + self.latency_s
        sweep = result.ended - result.started
        equal = sum(1 for ok in self.matches.values() if ok)
        read = len(self.read)
        interrupted = result.aborted is not None
        self.say("")
        if interrupted:
            self.say(f"summary: the round was interrupted after {sweep:.1f} s (the full round's wire bound "
                     f"is {self.bound_s:.1f} s)")
        self.say(f"summary: {read} of {self.meters} meters read; {equal} equal the simulator's ground "
                 f"truth (at the moment each was read); {len(result.unreachable)} CDTs unreachable")
        if not interrupted:
            self.say(f"summary: sweep {sweep:.1f} s / wire bound {bound:.1f} s = {sweep / bound:.3f} "
                     f"({requests} transactions, {self._errors()})")
        if read:
            self.say(f"summary: {nbytes / read:.2f} bytes on the wire per meter read with ST2000R bulk reads "
                     f"(CJ/T 188 per-meter reads: {bytes_per_meter_cjt188()} bytes per meter)")
        self.say("")
        if interrupted:
            return  # stopped mid-round: nothing comes next
        self.say(f"next: a status round every {self.status_every_s:g} s (alarms print as they come); Ctrl-C stops")
        from twisted.internet.task import LoopingCall

        loop = LoopingCall(self._status)
        loop.clock = self.reactor
        loop.start(self.status_every_s, now=False)
        self._loops.append(loop)

    def _round_failed(self, failure: Any) -> None:
        self.in_round = False
        self.say(f"the full round failed: {failure.getErrorMessage()}")

    def _status(self) -> None:
        if "status" in self.poller.active_rounds():
            return
        self.poller.run_plan_now("status").addErrback(lambda f: self.say(f"status round failed: {f.getErrorMessage()}"))


def _say(line: str) -> None:
    try:
        print(line, flush=True)
    except BrokenPipeError:  # | head: keep running quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    """Run ``st2000r demo ARGV``; returns the exit status."""
    args_in = sys.argv[1:] if argv is None else list(argv)
    if "--simulator-only" in args_in:
        from st2000r.simulation import demo as sim_demo

        return sim_demo.main([a for a in args_in if a != "--simulator-only"])
    try:
        args = build_parser().parse_args(args_in)
    except SystemExit as exc:
        return int(exc.code or 0)

    from st2000r.config.errors import ConfigError
    from st2000r.config.loader import load
    from st2000r.config.model import ReadingPlan, SerialEndpoint, SupervisorSettings
    from st2000r.simulation.cli import scenario_path
    from st2000r.simulation.demo import community_path
    from st2000r.simulation.service import DEFAULT_CONTROL_PORT, SimulatorOptions, SimulatorService

    try:
        with importlib.resources.as_file(community_path()) as path:
            topology = load(path)
    except (ConfigError, FileNotFoundError) as exc:
        return _fail(f"the packaged example community.toml cannot be loaded: {exc}")
    link = next(topology.links())
    if args.baud is not None:
        link = replace(link, line=replace(link.line, baud=args.baud))
        site = replace(topology.sites[0], links=(link,))
        topology = replace(topology, sites=(site,))
    line = link.line
    control = DEFAULT_CONTROL_PORT if args.control is None else args.control
    options = SimulatorOptions(seed=args.seed, scenario=None if args.no_scenario else scenario_path("commissioning"),
                               tcp_ports=((link.name, args.tcp_port),), control_port=control)

    from st2000r.supervisor.reactor import install_reactor

    reactor = install_reactor()
    from twisted.internet.error import CannotListenError
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from st2000r.supervisor.service import SupervisorService

    sim = SimulatorService(topology, options, reactor)
    level = LogLevel.info if args.verbose else LogLevel.critical
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(sys.stdout),
                                                           [LogLevelFilterPredicate(level)])],
                                     redirectStandardIO=False)
    try:
        sim.startService()
    except CannotListenError as exc:
        try:
            sim.stopService()
        except Exception:  # pragma: no cover - best effort
            pass
        hint = " (pass --control 0 / --tcp-port 0 or another port)"
        return _fail(f"cannot listen on {exc.interface or '*'}:{exc.port}: {exc.socketError}{hint}")
    pty = next(e.where for e in sim.endpoints() if e.kind == "pty")
    tcp = next(e.where for e in sim.endpoints() if e.kind == "tcp")
    url = sim.control.url if sim.control is not None else None

    # plans the demo starts itself: their daily time is 12 h away, never reached in a demo
    far = (datetime.now() + timedelta(hours=12)).time().replace(second=0, microsecond=0)
    state_dir = tempfile.mkdtemp(prefix="st2000r-demo-")
    sup_link = replace(link, endpoint=SerialEndpoint(pty))
    sup_topology = replace(
        topology, sites=(replace(topology.sites[0], links=(sup_link,)),),
        plans=(ReadingPlan("full", "full", (far,), None, None), ReadingPlan("status", "status", (far,), None, None)),
        settings=SupervisorSettings(None, 2, "text", state_dir),
    )
    service = SupervisorService(sup_topology, reactor, audit_path=False)
    bound = wire_bound_s(sup_link)[0]
    demo = Demo(sim, service, sup_link, reactor, _say, progress_s=args.progress, status_every_s=args.status_every)
    summary = topology.summary()
    _say(f"st2000r demo: the field simulator and the supervisor for {summary.cdts} CDTs, {summary.meters:,} meters "
         f"(community.toml, link {link.name}) in one process")
    _say(f"a full round at {line.baud} baud {line.bytesize}{line.parity}{line.stopbits} takes about "
         f"{_duration(bound)} (wire bound {bound:.1f} s)"
         + ("; --baud 115200 runs both sides faster" if line.baud < 115200 else ""))
    _say("")
    _say("Where to connect (simulator):")
    _say(f"  serial (pseudo-terminal): {pty}   (the supervisor reads it; {line.baud} baud on the field side)")
    _say(f"  TCP serial-device server: {tcp}")
    if url:
        _say(f"  control interface:        {url}")
    ctl = f"st2000r simulate-ctl --url {url}" if url else "st2000r simulate-ctl"
    _say("How to query and disturb it:")
    _say(f"  {ctl} truth | less          # ground truth of every meter")
    _say(f"  {ctl} fault alarm link={link.name} cdt=1 channel=2 flags=tamper")
    _say(f"  {ctl} fault repeater link={link.name} name=R2 failed=true")
    _say("  (scenario 'commissioning' runs: a tamper alarm at 90 s, a jammed valve at 2 min, a cut cable at 3 min ...)"
         if not args.no_scenario else "  (no scenario)")
    _say("")
    _say("full round started" + (f"; stopping after {args.duration:g} s" if args.duration else "; Ctrl-C stops"))

    def stop_all():
        demo.stop()
        d = service.stopService()
        return d.addBoth(lambda _: sim.stopService())

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.addSystemEventTrigger("before", "shutdown", stop_all)
    service.startService()
    demo.start()
    if args.duration is not None:
        reactor.callLater(args.duration, reactor.stop)
    reactor.run()
    _say("stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
