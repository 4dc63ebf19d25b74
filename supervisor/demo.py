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
meters read, how many equal the simulator's ground truth within the read window, sweep
time / wire bound, bytes on the wire per meter.  Afterwards a status round runs every ``--status-every`` seconds until
Ctrl-C/SIGTERM or ``--for SECONDS``.  ``--baud N`` runs both sides at N baud (8E1 as
configured).  ``--simulator-only`` runs the simulator's own demo (``st2000r.simulation.demo``,
dispatched by name) in this process instead.

**The read window.**  A meter's value is sampled by the simulator while its bulk read is on
the bus: after the master wrote the request, before the reply reached the supervisor.  The
demo fetches ground truth before the round, every ``--truth-every`` seconds during it and
after it; a reading counts as equal when the simulator's reading in the latest snapshot
received *before the request was written* (before the previous reply on the link arrived:
the bus is half-duplex, one transaction at a time) is <= the value <= the reading in the
first snapshot requested *after the reply arrived*.  Meter readings never decrease, so the
check is exact whatever the world does between the two snapshots; its window is the time
between them (the summary gives the widest: up to about twice ``--truth-every``).  A
snapshot costs the simulator about a second of CPU (4.5 MB of JSON), during which a reply on
its bus comes late: the summary counts the snapshots taken during the round and the master's
errors while one was being taken; ``--truth-every 0`` fetches only before and after the
round (the window is then the round).

**Stopping.**  Ctrl-C, SIGTERM and ``--for`` stop the supervisor first, fetch the last
ground truth, print the summary, then stop the simulator with SIGTERM (SIGKILL after
``STOP_TIMEOUT_S``) and wait for it.  The simulator runs in its own process group (Ctrl-C in
a terminal reaches only the demo, which stops it in order) and, on Linux, gets SIGTERM from
the kernel if the demo dies without stopping it (``PR_SET_PDEATHSIG``).

Exit status: 0 after a clean stop; 2 for bad arguments, or with one line on stderr when the
simulator cannot start (a port that is taken) or ends by itself.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from twisted.internet import protocol

from st2000r.config.cliargs import ArgumentParser, baud, fail, non_negative, port, seconds

__all__ = [
    "SimulatorProcess",
    "Snapshot",
    "TruthCheck",
    "build_parser",
    "bytes_per_meter_cjt188",
    "community_resource",
    "community_text",
    "main",
    "simulator_command",
    "wire_bound_s",
]

PROG = "st2000r demo"
DEFAULT_TCP_PORT = 4001
DEFAULT_MODBUS_PORT = 1502
DEFAULT_CONTROL_PORT = 7188  # the simulator's own default (st2000r simulate --control)
SIMULATOR_DEMO = "st2000r.simulation.demo"  # --simulator-only: run by name, as the CLI dispatcher does
READY_TIMEOUT_S = 60.0  # the simulator builds its world and opens its endpoints within this
LINK_TIMEOUT_S = 30.0  # the supervisor's link opens the simulator's pseudo-terminal within this
STOP_TIMEOUT_S = 15.0  # a stopping simulator gets this long after SIGTERM before SIGKILL
TRUTH_TIMEOUT_S = 60.0  # one control-interface request (a /truth answer is ~4.5 MB)
SUMMARY_TIMEOUT_S = 90.0  # stopping waits this long for the last ground truth and the summary
MISMATCHES_SHOWN = 5

#: Runs in the child before the simulator: its own process group (a terminal's Ctrl-C goes
#: to the demo only, which then stops the simulator in order), SIGTERM from the kernel when
#: the demo dies (Linux), then exec of ``python -m st2000r.supervisor.cli ARGS``.
#: argv: [demo pid, cli args...].
LAUNCHER = """\
import os, signal, sys
demo = int(sys.argv[1])
os.setpgid(0, 0)
if sys.platform.startswith("linux"):
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
if os.getppid() != demo:  # the demo died before the line above took effect
    sys.exit(0)
os.execv(sys.executable, [sys.executable, "-m", "st2000r.supervisor.cli"] + sys.argv[2:])
"""


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
                   help=f"run only the simulator demo ({SIMULATOR_DEMO}; its own options follow)")
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
    seconds_ = latency = 0.0
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
            seconds_ += timing.wire_time(size) + timing.gap_s + timing.turnaround_s + 2 * hops
    return seconds_, nbytes, transactions, latency


def bytes_per_meter_cjt188() -> int:
    """Bytes on the wire to read one meter with CJ/T 188 ReadData (request + reply)."""
    from st2000r.drivers.st2000r import messages as m
    from st2000r.drivers.st2000r.units import M3, Quantity

    q = Quantity(12345678, M3)
    req = m.ReadData(meter_type=0x10, address="00000000012345")
    rep = m.CurrentData(meter_type=0x10, address="00000000012345", total=q, settlement=q,
                        time=datetime(2026, 3, 1, 12, 0), status=m.MeterStatus.of())
    return len(m.encode(req)) + len(m.encode(rep))


def _duration(secs: float) -> str:
    if secs >= 90:
        return f"{secs / 60:.0f} min"
    return f"{secs:.0f} s"


# --------------------------------------------------------------------------- the simulator process


def community_resource():
    """The installed ``community.toml`` (a Traversable of the ``config`` room)."""
    return importlib.resources.files("st2000r.config") / "examples" / "community.toml"


def community_text(text: str, baud_rate: int | None) -> str:
    """``community.toml``'s ``text`` with its one link at ``baud_rate`` (unchanged for None).
    Raises ``ValueError`` if the file's link section is not where this expects it."""
    if baud_rate is None:
        return text
    if re.search(r"(?m)^\s*baud\s*=", text):
        out, n = re.subn(r"(?m)^(\s*)baud\s*=\s*\d+", rf"\g<1>baud = {baud_rate}", text)
    else:
        out, n = re.subn(r"(?m)^(\s*)(device\s*=.*)$", rf"\g<1>\g<2>\n\g<1>baud = {baud_rate}", text)
    if n != 1:
        raise ValueError(f"expected one serial link in community.toml, found {n}")
    return out


def simulator_command(config_path: str, link: str, pty_dir: str, *, tcp_port: int, control: int, seed: int,
                      scenario: bool, quiet: bool) -> list[str]:
    """The ``st2000r`` arguments of the child: ``simulate CONFIG ...``."""
    argv = ["simulate", config_path, "--pty-dir", pty_dir, "--tcp", f"{link}={tcp_port}",
            "--control", str(control), "--seed", str(seed)]
    if scenario:
        argv += ["--scenario", "commissioning"]
    if quiet:
        argv.append("--quiet")
    return argv


class SimulatorFailed(Exception):
    """The simulator could not start or ended by itself; the message is the one line to print."""


class SimulatorProcess(protocol.ProcessProtocol):
    """The simulator child as a ``ProcessProtocol``.

    ``ready`` fires when it printed its ``ready`` line (with ``control_url`` known), or fails
    with :class:`SimulatorFailed` if it ends first; ``ended`` fires with ``(exit code,
    signal)`` when it is gone (reaped).  ``echo(line)``, if given, sees every output line.
    """

    def __init__(self, reactor: Any, echo: Callable[[str], None] | None = None) -> None:
        from twisted.internet import defer

        self.reactor = reactor
        self.echo = echo
        self.ready: Any = defer.Deferred()
        self.ended: Any = defer.Deferred()
        self.control_url: str | None = None
        self.pid: int | None = None
        self.exit: tuple[int | None, int | None] | None = None
        self.errors: deque[str] = deque(maxlen=20)
        self._buf = {1: b"", 2: b""}
        self._kill = None

    @property
    def running(self) -> bool:
        return self.exit is None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd not in self._buf:
            return
        *lines, self._buf[fd] = (self._buf[fd] + data).split(b"\n")
        for raw in lines:
            self._line(fd, raw.decode("utf-8", "replace").rstrip("\r"))

    def _line(self, fd: int, line: str) -> None:
        if self.echo is not None:
            self.echo(f"simulator| {line}")
        if fd == 2:
            if line.strip():
                self.errors.append(line.strip())
            return
        if line.startswith("control: "):
            self.control_url = line.split(None, 1)[1].strip()
        elif line.startswith("ready") and not self.ready.called:
            self.ready.callback(self)

    def processEnded(self, reason: Any) -> None:
        for fd, rest in self._buf.items():
            if rest:
                self._line(fd, rest.decode("utf-8", "replace"))
        self._buf = {1: b"", 2: b""}
        self.exit = (getattr(reason.value, "exitCode", None), getattr(reason.value, "signal", None))
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        if not self.ready.called:
            self.ready.errback(SimulatorFailed(self.why()))
        self.ended.callback(self.exit)

    def why(self) -> str:
        """Why it ended, in one line: its last error line (without its own program name),
        else its exit status or signal."""
        for line in reversed(self.errors):
            if not line.startswith(("Traceback", "File ", "^")):
                return line.removeprefix("st2000r simulate: ")
        code, sig = self.exit or (None, None)
        if sig:
            return f"killed by signal {sig}"
        return f"exit status {code}"

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> Any:
        """SIGTERM now, SIGKILL after ``timeout``; the Deferred fires when it is gone."""
        if self.running:
            self._signal("TERM")
            self._kill = self.reactor.callLater(timeout, self._signal, "KILL")
        return self.ended

    def _signal(self, name: str) -> None:
        from twisted.internet.error import ProcessExitedAlready

        try:
            self.transport.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            pass


class ControlClient:
    """JSON GETs on the simulator's control interface with twisted.web's ``Agent``."""

    def __init__(self, reactor: Any, url: str) -> None:
        from twisted.web.client import Agent, HTTPConnectionPool

        self.reactor = reactor
        self.url = url.rstrip("/")
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    def get(self, path: str, timeout: float = TRUTH_TIMEOUT_S) -> Any:
        """Fires with the decoded JSON object of ``GET URL/path``; fails on a non-200 answer."""
        from twisted.web.client import readBody

        d = self.agent.request(b"GET", f"{self.url}{path}".encode("ascii"))

        def got(response):
            return readBody(response).addCallback(decode, response.code)

        def decode(body: bytes, code: int):
            if code != 200:
                raise ValueError(f"GET {path}: HTTP {code}: {body[:200].decode('utf-8', 'replace')}")
            return json.loads(body)

        return d.addCallback(got).addTimeout(timeout, self.reactor)


# --------------------------------------------------------------------------- ground truth


MeterKey = tuple[str, int, int]  # link, CDT address, CDT channel 1..96


def truth_table(doc: dict) -> dict[MeterKey, int]:
    """``(link, cdt, channel) -> reading`` (base units) of a ``/truth`` answer."""
    out: dict[MeterKey, int] = {}
    for lw in doc["links"]:
        name = lw["name"]
        for cdt in lw["cdts"]:
            address = cdt["address"]
            for meter in cdt["meters"]:
                out[(name, address, meter["channel"])] = meter["reading"]
    return out


@dataclass(slots=True)
class Snapshot:
    """One ``/truth``: requested at ``sent``, answered at ``received`` (the demo's clock);
    the simulator took it somewhere between."""

    sent: float
    received: float
    table: dict[MeterKey, int]


@dataclass(slots=True)
class _Pending:
    before: Snapshot
    arrived: float
    readings: tuple


@dataclass(slots=True)
class TruthCheck:
    """Readings checked against ground truth snapshots that bracket their read (see the
    module docstring).  Feed it :meth:`snapshot` (in the order they were received) and
    :meth:`batch` (each bulk reply, with the time the previous reply on its link arrived);
    readings wait until a snapshot requested after their reply arrives."""

    snapshots: list[Snapshot] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    verdict: dict[Any, bool] = field(default_factory=dict)  # meter id -> its last reading was within
    mismatches: list[str] = field(default_factory=list)
    widest: float = 0.0
    unbracketed: int = 0  # readings with no snapshot received before their request

    def snapshot(self, snap: Snapshot) -> None:
        self.snapshots.append(snap)
        keep = []
        for p in self.pending:
            if p.arrived <= snap.sent:
                self._check(p, snap)
            else:
                keep.append(p)
        self.pending = keep

    def batch(self, readings: tuple, arrived: float, not_before: float) -> None:
        """``readings`` of one reply that arrived at ``arrived``; its request was written
        after ``not_before`` (the previous reply on the link, or the round's start)."""
        before = None
        for snap in self.snapshots:
            if snap.received <= not_before:
                before = snap
        if before is None:
            self.unbracketed += len(readings)
            return
        # snapshots older than ``before`` can no longer be anyone's "before"
        self.snapshots = [s for s in self.snapshots if s is before or s.received > before.received]
        self.pending.append(_Pending(before, arrived, readings))

    def _check(self, p: _Pending, after: Snapshot) -> None:
        self.widest = max(self.widest, after.received - p.before.sent)
        for r in p.readings:
            mid = r.meter
            key = (mid.link, mid.cdt, mid.channel_no)
            low, high = p.before.table.get(key), after.table.get(key)
            ok = low is not None and high is not None and low <= r.value <= high
            self.verdict[mid] = ok
            if not ok and len(self.mismatches) < MISMATCHES_SHOWN:
                self.mismatches.append(f"{mid}: read {r.value}, ground truth {low}..{high}")

    @property
    def unchecked(self) -> int:
        return sum(len(p.readings) for p in self.pending) + self.unbracketed


# --------------------------------------------------------------------------- the demo


class Demo:
    """Runs the round and watches the supervisor's events against the simulator's truth;
    prints progress, alarms and the summary.  ``say(line)`` prints one line."""

    def __init__(self, reactor: Any, say: Callable[[str], None], sim: SimulatorProcess, control: ControlClient,
                 service: Any, link: Any, *, progress_s: float, status_every_s: float, truth_every_s: float) -> None:
        from st2000r.supervisor.events import AlarmChanged, ReadingBatch

        self.reactor, self.say, self.sim, self.control = reactor, say, sim, control
        self.service, self.link = service, link
        self.master = service.masters[link.name]
        self.poller = service.pollers[link.name]
        self.progress_s, self.status_every_s, self.truth_every_s = progress_s, status_every_s, truth_every_s
        self.meters = sum(1 for _ in link.meters())
        self.bound_s, _, self.halves, self.latency_s = wire_bound_s(link)
        self.check = TruthCheck()
        self.read: set[Any] = set()
        # (cdt, first channel of its bulk range) -> meters of that range not read yet this round;
        # a range (a "CDT half": 48 channels at most) is read when none is left, however many
        # replies it took (a range spoiled by noise is read again as two shorter ones)
        self.unread = _unread_by_range(link)
        self.range_of = {key: rng for rng, keys in self.unread.items() for key in keys}
        self.halves_read = 0
        self.in_round = False
        self.stopping = False
        self.started = 0.0
        self.last_reply: dict[str, float] = {}
        self.finished: Any = None  # fires after the summary
        self._loops: list[Any] = []
        self._truth_busy: Any = None
        self._truth_failed = False
        self.truth_in_round = 0  # snapshots taken while the round ran
        self.truth_errors = 0  # master errors while one of those was being taken
        self._counts: dict[Callable[[], None], Any] = {}  # pending counts of those -> their timer
        # the longest a transaction may take: its timeout counts from writing the request
        self.grace_s = 2.0 * self.bound_s / max(1, self.halves) + 0.5
        service.bus.subscribe(self._on_batch, types=(ReadingBatch,))
        service.bus.subscribe(self._on_alarm, types=(AlarmChanged,))

    # ---------------------------------------------------------------- events

    def _on_batch(self, event: Any) -> None:
        arrived = event.at.timestamp()
        not_before = self.last_reply.get(event.link, self.started)
        self.last_reply[event.link] = arrived
        if not self.in_round or event.plan != "full" or event.link != self.link.name:
            return
        for r in event.readings:
            mid = r.meter
            self.read.add(mid)
            key = (mid.cdt, mid.channel_no)
            rng = self.range_of.get(key)
            left = self.unread.get(rng)
            if left is not None and key in left:
                left.discard(key)
                if not left:
                    self.halves_read += 1
        self.check.batch(event.readings, arrived, max(not_before, self.started))

    def _on_alarm(self, event: Any) -> None:
        a = event.alarm
        when = f"{event.at:%H:%M:%S} UTC"
        if a.state == "active-unacked":
            self.say(f"{when}  ALARM   {a.severity:<8} {a.id}: {a.text}")
        elif a.state == "cleared-unacked" or (a.state == "removed" and not a.active):
            self.say(f"{when}  cleared {a.severity:<8} {a.id}")

    # ---------------------------------------------------------------- ground truth

    def fetch_truth(self) -> Any:
        """A ground truth snapshot into the check: a new one, or the one in flight."""
        from twisted.internet import defer

        if self._truth_busy is not None:
            return self._truth_busy

        in_round = self.in_round
        errors0 = self._error_count()

        def count_errors() -> None:
            # a reply in flight while the simulator builds the snapshot comes late or broken:
            # count the master's errors from the request until one transaction after the answer
            call = self._counts.pop(count_errors, None)
            if call is not None:
                if call.active():
                    call.cancel()
                self.truth_errors += self._error_count() - errors0

        async def fetch() -> None:
            sent = self.reactor.seconds()
            try:
                doc = await self.control.get("/truth")
                self.check.snapshot(Snapshot(sent, self.reactor.seconds(), truth_table(doc)))
                if in_round:
                    self.truth_in_round += 1
                    self._counts[count_errors] = self.reactor.callLater(self.grace_s, count_errors)
            except Exception as exc:  # the simulator gone or too slow: the summary says so
                if not self._truth_failed and self.sim.running and not self.stopping:
                    self.say(f"ground truth unavailable: {_reason(exc)}")
                self._truth_failed = True
            finally:
                self._truth_busy = None

        d = defer.ensureDeferred(fetch())
        if not d.called:
            self._truth_busy = d
        return d

    def _truth_tick(self) -> None:
        if self.in_round and self._truth_busy is None:
            self.fetch_truth()

    # ---------------------------------------------------------------- round

    async def start(self, timeout: float = LINK_TIMEOUT_S) -> bool:
        """Fetch the ground truth and the wire counters while the bus is idle, start the
        supervisor, and once its link is up run the full round (or join the one the
        supervisor runs on connecting: ``[supervisor] read_on_connect``).  False if it was
        stopped meanwhile.  Raises ``SimulatorFailed`` if the link does not come up."""
        from twisted.internet import defer

        from st2000r.supervisor.events import LinkChanged

        await self.fetch_truth()
        self.stats0 = await self._wire()
        if self.stopping:
            return False
        up: Any = defer.Deferred()

        def link_changed(event: Any) -> None:
            if event.link == self.link.name and event.connected and not up.called:
                up.callback(None)

        unsubscribe = self.service.bus.subscribe(link_changed, types=(LinkChanged,))
        self.requests0 = self.master.stats.requests
        self.started = self.reactor.seconds()  # no request of the round was written before this
        self.in_round = True
        self.service.startService()
        try:
            await up.addTimeout(timeout, self.reactor)
        except defer.TimeoutError:
            raise SimulatorFailed(f"the supervisor's link did not connect to {self.link.endpoint.device} "
                                  f"within {timeout:g} s") from None
        finally:
            if callable(unsubscribe):
                unsubscribe()
        if self.stopping:
            return False
        await _turn(self.reactor)  # the poller hears of the link after the bus does
        self.finished = self.poller.run_plan_now("full")
        self.finished.addCallbacks(lambda r: defer.ensureDeferred(self._round_done(r)), self._round_failed)
        self._every(self.progress_s, self._progress)
        if self.truth_every_s > 0:
            self._every(self.truth_every_s, self._truth_tick)
        return True

    async def _wire(self) -> int | None:
        """Bytes that crossed the simulated wire so far (both directions), or None."""
        try:
            doc = await self.control.get("/stats", 10.0)
            bus = doc["links"][self.link.name]["bus"]
            return int(bus["bytes_in"]) + int(bus["bytes_out"])
        except Exception:
            return None

    def _every(self, period: float, fn: Callable[[], None]) -> None:
        from twisted.internet.task import LoopingCall

        loop = LoopingCall(fn)
        loop.clock = self.reactor
        loop.start(period, now=False)
        self._loops.append(loop)

    def stop(self) -> None:
        """No more progress lines, snapshots or rounds (the round running ends with the
        supervisor)."""
        self.stopping = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()

    def _error_count(self) -> int:
        s = self.master.stats
        return s.timeouts + s.checksum_errors + s.crc_errors

    def _errors(self) -> str:
        s = self.master.stats
        return (f"errors {self._error_count()} (timeouts {s.timeouts}, checksum {s.checksum_errors}, "
                f"CRC {s.crc_errors})")

    def _progress(self) -> None:
        if not self.in_round:
            return
        elapsed = self.reactor.seconds() - self.started
        self.say(f"[{elapsed:7.1f} s] meters {len(self.read):,}/{self.meters:,} read, CDT halves "
                 f"{self.halves_read}/{self.halves}; wire bound of the round {self.bound_s:.1f} s; {self._errors()}")

    async def _round_done(self, result: Any) -> None:
        self.in_round = False
        if not self.sim.running:
            return  # the simulator is gone: nothing to check against (main says why)
        sweep = result.ended - result.started
        requests = self.master.stats.requests - self.requests0
        wire = await self._wire()
        while self._truth_busy is not None:  # a snapshot requested during the round
            await self._truth_busy
        await self.fetch_truth()  # requested after every reply of the round arrived
        for count in list(self._counts):  # the round is over: nothing more to wait for
            count()
        check = self.check
        read = len(self.read)
        equal = sum(1 for ok in check.verdict.values() if ok)
        interrupted = result.aborted is not None
        self.say("")
        if interrupted:
            self.say(f"summary: the round was interrupted after {sweep:.1f} s ({result.aborted}; the full round's "
                     f"wire bound is {self.bound_s:.1f} s)")
        window = (f"ground truth fetched before each request and after its reply; widest window {check.widest:.1f} s"
                  if check.verdict else "no reading could be checked")
        self.say(f"summary: {read} of {self.meters} meters read; {equal} equal the simulator's ground truth within "
                 f"the read window ({window}); {len(result.unreachable)} CDTs unreachable")
        if check.unchecked:
            self.say(f"summary: {check.unchecked} readings not checked (no ground truth on one side of their read)")
        for line in check.mismatches:
            self.say(f"summary: not equal: {line}")
        nbytes = None if wire is None or self.stats0 is None else wire - self.stats0
        if not interrupted and nbytes is not None:
            timing = self.master.timing
            # the bound of what actually went over the wire (retries included), as bench/bench_sweep.py
            bound = timing.wire_time(nbytes) + requests * (timing.gap_s + timing.turnaround_s) + self.latency_s
            self.say(f"summary: sweep {sweep:.1f} s / wire bound {bound:.1f} s = {sweep / bound:.3f} "
                     f"({requests} transactions, {self._errors()})")
            if self.truth_in_round:
                self.say(f"summary: {self.truth_in_round} ground truth snapshots were taken during the round, "
                         f"{self.truth_errors} of the errors while one was being taken (each holds the simulator "
                         f"about a second; --truth-every 0 takes them only before and after the round)")
        if read and nbytes is not None:
            self.say(f"summary: {nbytes / read:.2f} bytes on the wire per meter read with ST2000R bulk reads "
                     f"(CJ/T 188 per-meter reads: {bytes_per_meter_cjt188()} bytes per meter)")
        self.say("")
        if interrupted or self.stopping:
            return  # stopped: nothing comes next
        self.say(f"next: a status round every {self.status_every_s:g} s (alarms print as they come); Ctrl-C stops")
        self._every(self.status_every_s, self._status)

    def _round_failed(self, failure: Any) -> None:
        self.in_round = False
        self.say(f"the full round failed: {failure.getErrorMessage()}")

    def _status(self) -> None:
        if "status" in self.poller.active_rounds():
            return
        self.poller.run_plan_now("status").addErrback(
            lambda f: self.say(f"status round failed: {f.getErrorMessage()}"))


def _unread_by_range(link: Any) -> dict[tuple[int, int], set[tuple[int, int]]]:
    """``(cdt, first channel) -> {(cdt, channel), ...}``: the meters of each bulk range."""
    from st2000r.drivers.st2000r.messages import channel_number
    from st2000r.drivers.st2000r.poller import bulk_ranges

    out: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for cdt in link.cdts:
        ranges = bulk_ranges(cdt)
        for module, channel, _ in cdt.meters():
            number = channel_number(module, channel)
            first = next(f for f, count in ranges if f <= number < f + count)
            out.setdefault((cdt.address, first), set()).add((cdt.address, number))
    return out


def _turn(reactor: Any) -> Any:
    """A Deferred that fires on the reactor's next turn."""
    from twisted.internet import task

    return task.deferLater(reactor, 0, lambda: None)


def _reason(exc: BaseException) -> str:
    from twisted.internet.defer import TimeoutError as DeferredTimeout

    if isinstance(exc, DeferredTimeout):
        return "no answer in time"
    reasons = getattr(exc, "reasons", None)  # twisted.web's ResponseFailed & co: a list of Failures
    if reasons:
        return "; ".join(r.getErrorMessage() or r.type.__name__ for r in reasons)
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


# --------------------------------------------------------------------------- main


def _say(line: str) -> None:
    try:
        print(line, flush=True)
    except BrokenPipeError:  # | head: keep running quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _simulator_only(argv: list[str]) -> int:
    try:
        module = importlib.import_module(SIMULATOR_DEMO)
    except ModuleNotFoundError as exc:
        if exc.name is not None and SIMULATOR_DEMO.startswith(exc.name):
            return fail(PROG, "the simulator is not available in this build")
        raise
    return int(module.main(argv) or 0)


def _port_hint(message: str, args: Any) -> str:
    if "(" in message:
        return message
    m = re.search(r":(\d+):", message)
    if m and int(m.group(1)) == args.tcp_port:
        return f"{message} (pass --tcp-port 0 or another port)"
    if m and int(m.group(1)) == args.control:
        return f"{message} (pass --control 0 or another port)"
    return message


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

    from st2000r.config.model import ModbusSettings, ReadingPlan, SerialEndpoint
    from st2000r.supervisor.service import SupervisorService

    level = LogLevel.info if args.verbose else LogLevel.critical
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(sys.stdout),
                                                           [LogLevelFilterPredicate(level)])],
                                     redirectStandardIO=False)

    # plans the demo starts itself: their daily time is 12 h away, never reached in a demo
    far = (datetime.now() + timedelta(hours=12)).time().replace(second=0, microsecond=0)
    sup_link = replace(link, endpoint=SerialEndpoint(os.path.join(pty_dir, link.name)))
    sup_topology = replace(
        topology, sites=(replace(topology.sites[0], links=(sup_link,)),),
        plans=(ReadingPlan("full", "full", (far,), None, None), ReadingPlan("status", "status", (far,), None, None)),
        settings=replace(topology.settings, gprs_listen=None, state_dir=state_dir),
        modbus=ModbusSettings(tcp=("127.0.0.1", args.modbus)),  # read-only Modbus TCP for SCADA/HMI and mbpoll
        historian=replace(topology.historian, url=_historian_url(args.historian)),  # kept after the demo
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
            return failed(f"the simulator cannot start: {_port_hint(str(exc), args)}")
        except defer.TimeoutError:
            return failed(f"the simulator was not ready within {READY_TIMEOUT_S:g} s")
        state["ready"] = True
        if state["stopping"]:
            return
        control = ControlClient(reactor, sim.control_url or f"http://127.0.0.1:{args.control}")
        try:
            where = {(e["link"], e["kind"]): e["where"] for e in (await control.get("/endpoints"))["endpoints"]}
        except Exception as exc:
            return failed(f"the simulator's control interface does not answer: {_reason(exc)}")
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
            _say(f"Modbus TCP is not served: {_reason(exc)}")

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
                _say(f"stopping the supervisor: {_reason(exc)}")
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
