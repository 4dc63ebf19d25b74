"""The poll scheduler of one link: reading plans, rounds, fairness and demotion.

A :class:`Poller` runs the reading plans (``config.model.ReadingPlan``) that apply to its
link over the link's :class:`~st2000r.drivers.st2000r.master.BusMaster`.  It schedules; it
does not interpret: every reply reaches the point database through the master's
:class:`~st2000r.drivers.st2000r.reachability.Reachability` (one path for rounds, on-demand
reads and command read-backs), and whether a CDT answers is read from there too.  The
:class:`PollSink` hears of round ends.  Rules:

- **rounds**: a ``"full"`` round reads every CDT's fitted channels with ``BulkRead`` —
  channel n = (module - 1) x 3 + input; the fitted channels are covered by as few ranges of
  at most 48 channels as possible, each from a fitted channel to the last fitted channel it
  reaches, so a range with no fitted channel is never read (plus ``ReadAlarms`` and
  ``ReadCdtStatus`` when ``status_in_full``); a ``"status"`` round reads ``ReadAlarms`` +
  ``ReadCdtStatus`` of every CDT.  Full rounds run at ``Priority.SWEEP``, status rounds at
  ``Priority.STATUS``; commands (``Priority.COMMAND``) overtake both;
- **fairness**: a round's transactions are interleaved round-robin across CDTs (every
  CDT's first request, then every CDT's second ...), and at most ``window`` of them are in
  the master's queue at a time, so a command or a status poll never queues behind a sweep;
- **noise**: a bulk read that failed after the master's retries with corrupted replies
  (the CDT is there, the line is noisy) is read again at once as two tight halves, down
  to ranges of ``MIN_SPLIT`` channels: a shorter frame is likelier to pass the noise;
- **unreachable**: a CDT whose transaction fails after the master's retries
  (``TransactionTimeout``) has its remaining requests of the round skipped;
- **demotion**: a CDT whose last ``demote_after`` transactions met silence (the
  reachability's failure count) is tried only every 2^n rounds (n = failures beyond that,
  at most ``max_demotion``); any answer — in a round, a :meth:`Poller.read_now` or a
  command's read-back — restores it.  Transitions are logged once;
- **end of round**: ``on_round_done`` once every CDT not demoted has been tried; a round
  whose link is down (``LinkDown``) stops there and still reports ``on_round_done``;
- **schedule**: plans fire at their daily local times (``at``, via ``local_time``) and/or
  every ``every_s`` seconds (the first periodic round starts when the service starts); a
  plan whose previous round is still running when it is due again is skipped (logged).
  Only the injected clock is used;
- **read on connect**: with ``read_on_connect``, the link's first ``full`` plan also runs
  when the link first comes up while the service runs (a restarted supervisor has values
  within one round, not at the next 02:00), and when it comes back after at least
  ``full_read_after_outage_s`` down (the values are comm_fail and old by then).
"""

from __future__ import annotations

import typing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from st2000r.config.model import Cdt, Link
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.master import BusMaster, LinkDown, Priority, TransactionTimeout
from st2000r.drivers.st2000r.reachability import Purpose
from st2000r.drivers.st2000r.timing import hops_latency_s

if typing.TYPE_CHECKING:
    from st2000r.config.model import ReadingPlan

__all__ = ["PollSink", "Poller", "RoundResult", "RoundProgress", "CdtRead", "bulk_ranges", "KINDS"]

log = Logger()

KINDS: Final = ("full", "status")
MIN_SPLIT: Final = 4  # a noisy bulk read is split in halves while it has at least 2 x this
_DST_SLACK_S: Final = 1.0


class PollSink(typing.Protocol):
    """Who hears of round ends (the supervisor's point database); may not raise.  Times
    are ``clock.seconds()``.  Replies do not come this way (see the module docstring)."""

    def on_round_done(self, link: str, plan: str, kind: str, started: float, ended: float) -> None: ...


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What a round did.  Times in clock seconds; CDT addresses as ints.  ``aborted``:
    why the round stopped early (``"link down: …"``, ``"stopped"``) or None."""

    plan: str
    kind: str
    started: float
    ended: float
    tried: tuple[int, ...]
    unreachable: tuple[int, ...]
    demoted: tuple[int, ...]  # not tried this round because demoted
    aborted: str | None = None


@dataclass(frozen=True, slots=True)
class CdtRead:
    """The replies of an on-demand read of one CDT (they reach the point database as
    every reply does)."""

    cdt: int
    kind: str
    replies: tuple[m.Message, ...]


def bulk_ranges(cdt: Cdt) -> tuple[tuple[int, int], ...]:
    """``(first_channel, count)`` ranges of at most ``MAX_BULK`` channels covering every
    fitted channel of ``cdt`` with as few BulkReads as possible; each range starts and ends
    on a fitted channel."""
    fitted = sorted({m.channel_number(mod, inp) for mod, inp, _ in cdt.meters()})
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(fitted):
        first = fitted[i]
        last = first
        while i < len(fitted) and fitted[i] <= first + m.MAX_BULK - 1:
            last = fitted[i]
            i += 1
        out.append((first, last - first + 1))
    return tuple(out)


class _CdtPlan:
    __slots__ = ("address", "bcd", "latency_s", "ranges", "fitted")

    def __init__(self, link: Link, cdt: Cdt) -> None:
        self.address = cdt.address
        self.bcd = cdt.bcd_address
        self.latency_s = hops_latency_s(link, cdt.repeater)
        self.ranges = bulk_ranges(cdt)
        self.fitted = tuple(sorted({m.channel_number(mod, inp) for mod, inp, _ in cdt.meters()}))

    def halves(self, first: int, count: int) -> tuple[tuple[int, int], ...]:
        """The fitted channels of ``first .. first+count-1`` as two tight ranges (one if
        there is a single fitted channel)."""
        chans = [c for c in self.fitted if first <= c < first + count]
        if len(chans) < 2:
            return ((first, count),)
        mid = len(chans) // 2
        lo, hi = chans[:mid], chans[mid:]
        return ((lo[0], lo[-1] - lo[0] + 1), (hi[0], hi[-1] - hi[0] + 1))


@dataclass(frozen=True, slots=True)
class RoundProgress:
    """How far a round in progress is (``Poller.progress``): ``started`` in clock seconds."""

    plan: str
    kind: str
    started: float
    cdts_done: int
    cdts_total: int


class _Round:
    __slots__ = (
        "plan", "kind", "started", "jobs", "outstanding", "tried", "failed", "demoted",
        "aborted", "waiters", "calls", "priority",
    )  # fmt: skip

    def __init__(self, plan: str, kind: str, started: float, priority: Priority) -> None:
        self.plan = plan
        self.kind = kind
        self.started = started
        self.priority = priority
        self.jobs: deque[tuple[_CdtPlan, m.Message]] = deque()
        self.outstanding = 0
        self.tried: list[int] = []
        self.failed: set[int] = set()
        self.demoted: tuple[int, ...] = ()
        self.aborted: str | None = None
        self.waiters: list[defer.Deferred] = []
        self.calls: set[defer.Deferred] = set()


class Poller(Service):
    """Runs the reading plans of one link (see the module docstring).

    ``plans``: every plan of the configuration; those whose ``links`` do not name this link
    are ignored.  ``local_time(seconds) -> datetime``: local wall time of a clock instant
    (default ``datetime.fromtimestamp``).  ``window``: sweep transactions queued at once.
    ``demote_after`` (K) and ``max_demotion`` (n): see demotion.  Raises ``ValueError`` for a
    plan of an unknown kind.
    """

    def __init__(
        self,
        link: Link,
        master: BusMaster,
        clock: IReactorTime,
        sink: PollSink,
        plans: tuple[ReadingPlan, ...],
        *,
        local_time: Callable[[float], datetime] | None = None,
        window: int = 2,
        demote_after: int = 3,
        max_demotion: int = 4,
        status_in_full: bool = False,
        read_on_connect: bool = False,
        full_read_after_outage_s: float = 3600.0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.link = link
        self.name = f"poller {link.name}"
        self._master = master
        self._clock = clock
        self._sink = sink
        self._local = local_time or datetime.fromtimestamp
        self.window = window
        self.demote_after = max(1, demote_after)
        self.max_demotion = max(0, max_demotion)
        self.status_in_full = status_in_full
        for plan in plans:
            if plan.kind not in KINDS:
                raise ValueError(f"reading plan {plan.name!r}: kind must be 'full' or 'status', got {plan.kind!r}")
        self.plans = tuple(p for p in plans if p.links is None or link.name in p.links)
        self._di = m.DiOrder(link.di_order)
        self._cdts = {c.address: _CdtPlan(link, c) for c in link.cdts}
        self._rounds: dict[str, _Round] = {}
        self._calls: list[IDelayedCall] = []
        self._due: dict[str, float] = {}
        self._round_no = 0
        self._reach = master.reachability
        self._reach.add_listener(self._reach_changed)
        self._next_try: dict[int, int] = {}
        self.rounds_done = 0
        self.rounds_skipped = 0
        self.splits = 0
        self.read_on_connect = read_on_connect
        self.full_read_after_outage_s = full_read_after_outage_s
        self._connected_once = False
        self._down_since: float | None = None
        master.add_observer(self._link_event)

    # ---------------------------------------------------------------- service

    def startService(self) -> None:
        super().startService()
        if getattr(self._master, "connected", False):
            self._link_event("connected", {})
        now = self._clock.seconds()
        for plan in self.plans:
            if plan.every_s:
                self._due[plan.name] = now
                self._schedule(0.0, self._fire_every, plan)
            if plan.at:
                self._schedule_at(plan)

    def stopService(self):
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls.clear()
        for rnd in list(self._rounds.values()):
            rnd.aborted = "stopped"
            rnd.jobs.clear()
            for d in list(rnd.calls):
                d.cancel()
        return super().stopService()

    # ---------------------------------------------------------------- public API

    def read_now(self, cdt: int, *, kind: str = "full", priority: Priority = Priority.STATUS) -> defer.Deferred:
        """Read one CDT now (``kind`` "full": its bulk ranges; "status": alarms + status)
        at ``priority``.  Replies reach the point database as in a round (purpose
        ``READ_NOW``); the Deferred fires with a :class:`CdtRead`, or errbacks with the
        ``TransactionError`` of the first request that failed.  Raises
        ``ValueError`` for a CDT not on this link or an unknown kind."""
        plan = self._cdts.get(cdt)
        if plan is None:
            raise ValueError(f"link {self.link.name!r} has no CDT {cdt}")
        if kind not in KINDS:
            raise ValueError(f"read kind must be 'full' or 'status', got {kind!r}")
        requests = list(self._requests(plan, kind))
        replies: list[m.Message] = []
        result: defer.Deferred = defer.Deferred()

        def step(_=None) -> None:
            if not requests:
                result.callback(CdtRead(cdt, kind, tuple(replies)))
                return
            req = requests.pop(0)
            d = self._master.transact(req, priority=priority, hops_latency_s=plan.latency_s, purpose=Purpose.READ_NOW)
            d.addCallbacks(got, result.errback)

        def got(reply: m.Message) -> None:
            replies.append(reply)
            self._refused(plan, reply)
            step()

        step()
        return result

    def run_plan_now(self, plan_name: str) -> defer.Deferred:
        """Start a round of ``plan_name`` now (or join the one running); fires with its
        :class:`RoundResult` at the round's end.  Raises ``ValueError`` for a plan that is
        not configured for this link."""
        for plan in self.plans:
            if plan.name == plan_name:
                return self._start_round(plan)
        known = ", ".join(repr(p.name) for p in self.plans) or "none"
        raise ValueError(f"link {self.link.name!r} has no reading plan {plan_name!r} (plans: {known})")

    def demoted(self) -> frozenset[int]:
        """CDTs currently polled less often (``demote_after`` silent transactions running)."""
        return frozenset(a for a in self._cdts if self._reach.failures(a) >= self.demote_after)

    def active_rounds(self) -> frozenset[str]:
        """Names of the plans with a round in progress."""
        return frozenset(self._rounds)

    def progress(self) -> tuple[RoundProgress, ...]:
        """The rounds in progress: plan, kind, start (clock seconds), CDTs tried of all."""
        total = len(self._cdts)
        return tuple(RoundProgress(name, r.kind, r.started, min(total, len(r.tried)), total)
                     for name, r in self._rounds.items())

    # ---------------------------------------------------------------- schedule

    def _link_event(self, event: str, data: dict) -> None:
        now = self._clock.seconds()
        if event == "disconnected":
            if self._down_since is None:
                self._down_since = now
            return
        if event != "connected" or not self.running:
            return
        down, self._down_since = self._down_since, None
        first = not self._connected_once
        self._connected_once = True
        if not self.read_on_connect:
            return
        if first or (down is not None and now - down >= self.full_read_after_outage_s):
            plan = next((p for p in self.plans if p.kind == "full"), None)
            if plan is not None:
                why = "first connection" if first else f"back after {now - down:.0f} s down"
                log.info("link {link}: {why}: full round of {plan} now", link=self.link.name, why=why,
                         plan=plan.name)
                self._start_round(plan)

    def _schedule(self, delay: float, fn, *args) -> None:
        self._calls = [c for c in self._calls if c.active()]
        self._calls.append(self._clock.callLater(max(0.0, delay), fn, *args))

    def _fire_every(self, plan: ReadingPlan) -> None:
        now = self._clock.seconds()
        due = self._due[plan.name]
        while due <= now:
            due += plan.every_s
        self._due[plan.name] = due
        self._schedule(due - now, self._fire_every, plan)
        self._start_round(plan, scheduled=True)

    def _next_at(self, plan: ReadingPlan, local: datetime) -> datetime:
        best = None
        for t in plan.at:
            cand = local.replace(hour=t.hour, minute=t.minute, second=t.second, microsecond=0)
            if cand <= local:
                cand += timedelta(days=1)
            if best is None or cand < best:
                best = cand
        return best

    def _schedule_at(self, plan: ReadingPlan, target: datetime | None = None) -> None:
        local = self._local(self._clock.seconds())
        if target is None:
            target = self._next_at(plan, local)
        self._schedule((target - local).total_seconds(), self._fire_at, plan, target)

    def _fire_at(self, plan: ReadingPlan, target: datetime) -> None:
        local = self._local(self._clock.seconds())
        if (target - local).total_seconds() > _DST_SLACK_S:  # the wall clock moved (DST, NTP)
            self._schedule_at(plan, target)
            return
        self._schedule_at(plan)
        self._start_round(plan, scheduled=True)

    # ---------------------------------------------------------------- rounds

    def _requests(self, plan: _CdtPlan, kind: str):
        di = self._di
        if kind == "full":
            for first, count in plan.ranges:
                yield m.BulkRead(address=plan.bcd, first_channel=first, count=count, di_order=di)
        if kind == "status" or self.status_in_full:
            yield m.ReadAlarms(address=plan.bcd, di_order=di)
            yield m.ReadCdtStatus(address=plan.bcd, di_order=di)

    def _start_round(self, plan: ReadingPlan, scheduled: bool = False) -> defer.Deferred:
        waiter: defer.Deferred = defer.Deferred()
        running = self._rounds.get(plan.name)
        if running is not None:
            if scheduled:
                self.rounds_skipped += 1
                log.warn(
                    "link {link}: plan {plan} is due but its previous round is still running; skipped",
                    link=self.link.name, plan=plan.name,
                )  # fmt: skip
            running.waiters.append(waiter)
            return waiter
        now = self._clock.seconds()
        self._round_no += 1
        rnd = _Round(plan.name, plan.kind, now, Priority.SWEEP if plan.kind == "full" else Priority.STATUS)
        rnd.waiters.append(waiter)
        per_cdt: list[list[tuple[_CdtPlan, m.Message]]] = []
        demoted = []
        for cdt in self._cdts.values():
            if self._next_try.get(cdt.address, 0) > self._round_no and self._reach.failures(cdt.address):
                demoted.append(cdt.address)
                continue
            jobs = [(cdt, req) for req in self._requests(cdt, plan.kind)]
            if jobs:
                per_cdt.append(jobs)
                rnd.tried.append(cdt.address)
        rnd.demoted = tuple(demoted)
        depth = max((len(j) for j in per_cdt), default=0)
        for k in range(depth):  # round-robin across CDTs
            for jobs in per_cdt:
                if k < len(jobs):
                    rnd.jobs.append(jobs[k])
        self._rounds[plan.name] = rnd
        log.debug("link {link}: round of {plan} started", link=self.link.name, plan=plan.name)
        self._pump(rnd)
        return waiter

    def _pump(self, rnd: _Round) -> None:
        while rnd.outstanding < self.window and rnd.jobs and rnd.aborted is None:
            cdt, req = rnd.jobs.popleft()
            if cdt.address in rnd.failed:
                continue
            rnd.outstanding += 1
            d = self._master.transact(req, priority=rnd.priority, hops_latency_s=cdt.latency_s, purpose=Purpose.PLAN,
                                      plan=rnd.plan)
            rnd.calls.add(d)
            d.addBoth(self._round_reply, rnd, cdt, d, req)
        if rnd.outstanding == 0 and (not rnd.jobs or rnd.aborted is not None):
            self._finish(rnd)

    def _round_reply(self, result, rnd: _Round, cdt: _CdtPlan, d: defer.Deferred, req: m.Message) -> None:
        rnd.calls.discard(d)
        rnd.outstanding -= 1
        if isinstance(result, Failure):
            if result.check(TransactionTimeout) and self._split(rnd, cdt, req, result.value):
                pass
            elif result.check(TransactionTimeout):
                rnd.failed.add(cdt.address)
            elif result.check(LinkDown):
                if rnd.aborted is None:
                    rnd.aborted = f"link down: {result.getErrorMessage()}"
                    rnd.jobs.clear()
                    log.warn("link {link}: round of {plan} stopped: {why}", link=self.link.name,
                             plan=rnd.plan, why=rnd.aborted)  # fmt: skip
            elif not result.check(defer.CancelledError):
                log.failure("link {link}: request to CDT {cdt} failed", result, link=self.link.name, cdt=cdt.address)
        else:
            self._refused(cdt, result)
        self._pump(rnd)

    def _split(self, rnd: _Round, cdt: _CdtPlan, req: m.Message, error: TransactionTimeout) -> bool:
        """A bulk read spoiled by line noise (corrupted replies, not silence) is read again
        at once as two shorter ranges, each with a better chance to pass the noise."""
        if not isinstance(req, m.BulkRead) or not error.corrupted or req.count < 2 * MIN_SPLIT:
            return False
        if rnd.aborted is not None or cdt.address in rnd.failed:
            return False
        parts = cdt.halves(req.first_channel, req.count)
        if len(parts) < 2:
            return False
        for first, count in reversed(parts):
            rnd.jobs.appendleft((cdt, replace(req, first_channel=first, count=count)))
        self.splits += 1
        log.info("link {link}: CDT {cdt} channels {first}+{count}: corrupted replies; read as {parts}",
                 link=self.link.name, cdt=cdt.address, first=req.first_channel, count=req.count,
                 parts=parts)  # fmt: skip
        return True

    def _finish(self, rnd: _Round) -> None:
        if self._rounds.get(rnd.plan) is not rnd:
            return
        del self._rounds[rnd.plan]
        now = self._clock.seconds()
        if rnd.aborted is None or not rnd.aborted.startswith("link down"):
            for address in rnd.tried:
                if address in rnd.failed:
                    self._demote(address)
        if rnd.aborted != "stopped":
            self.rounds_done += 1
            log.info("link {link}: round of {plan} ({kind}) done in {seconds:.1f} s: {tried} CDTs tried, "
                     "{unreachable} unreachable{why}", link=self.link.name, plan=rnd.plan, kind=rnd.kind,
                     seconds=now - rnd.started, tried=len(rnd.tried), unreachable=len(rnd.failed),
                     why=f" ({rnd.aborted})" if rnd.aborted else "")  # fmt: skip
            self._call_sink("on_round_done", self.link.name, rnd.plan, rnd.kind, rnd.started, now)
        result = RoundResult(
            plan=rnd.plan,
            kind=rnd.kind,
            started=rnd.started,
            ended=now,
            tried=tuple(rnd.tried),
            unreachable=tuple(sorted(rnd.failed)),
            demoted=rnd.demoted,
            aborted=rnd.aborted,
        )
        for waiter in rnd.waiters:
            waiter.callback(result)

    # ---------------------------------------------------------------- results, demotion

    def _refused(self, cdt: _CdtPlan, reply: m.Message) -> None:
        if isinstance(reply, m.ErrorReply):
            log.info("link {link}: CDT {cdt} refused a request (status {status:02X}h)",
                     link=self.link.name, cdt=cdt.address, status=reply.status)  # fmt: skip

    def _demote(self, address: int) -> None:
        streak = self._reach.failures(address)
        if streak < self.demote_after:
            return
        level = min(streak - self.demote_after + 1, self.max_demotion)
        self._next_try[address] = self._round_no + 2**level
        if streak == self.demote_after:
            log.warn("link {link}: CDT {cdt} silent in {n} transactions running; demoted",
                     link=self.link.name, cdt=address, n=streak)  # fmt: skip

    def _reach_changed(self, link: str, address: int, answering: bool, at: float, reason: str) -> None:
        if answering and self._next_try.pop(address, None) is not None:
            log.info("link {link}: CDT {cdt} answers again; polled every round", link=self.link.name, cdt=address)

    def _call_sink(self, method: str, *args) -> None:
        try:
            getattr(self._sink, method)(*args)
        except Exception:
            log.failure("link {link}: poll sink {method} failed", link=self.link.name, method=method)
