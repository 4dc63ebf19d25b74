"""The round of ``st2000r demo``: :class:`Demo` runs the supervisor's full round on the
simulator's bus and watches its events: a progress line every ``--progress`` seconds (meters
read and CDT halves -- bulk ranges of up to 48 channels, read when all their meters are --
counted as each reply arrives; elapsed time against the wire bound; errors), every alarm as it
is raised or cleared, ground truth snapshots every ``--truth-every`` seconds, and at the end
of the round the summary checked against the simulator's ground truth (the read window: see
:mod:`st2000r.supervisor.demo_truth`); then a status round every ``--status-every`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from st2000r.supervisor.demo_sim import ControlClient, SimulatorFailed, SimulatorProcess, why_failed
from st2000r.supervisor.demo_truth import (
    Snapshot,
    TruthCheck,
    bytes_per_meter_cjt188,
    truth_table,
    unread_by_range,
    wire_bound_s,
)

__all__ = ["Demo"]

LINK_TIMEOUT_S = 30.0  # the supervisor's link opens the simulator's pseudo-terminal within this


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
        self.unread = unread_by_range(link)
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
                    self.say(f"ground truth unavailable: {why_failed(exc)}")
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


def _turn(reactor: Any) -> Any:
    """A Deferred that fires on the reactor's next turn."""
    from twisted.internet import task

    return task.deferLater(reactor, 0, lambda: None)
