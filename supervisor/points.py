"""The point database: the supervisor's current picture of every meter, CDT and link.

:class:`PointDatabase` is fed by each link's bus master (:meth:`PointDatabase.attach_master`):
every reply from a configured CDT, whoever asked for it (a plan round, an on-demand read, a
command's read-back), arrives through the master's reachability (:meth:`on_reply`), and so
do the answering/silent transitions of the CDTs (:meth:`on_reachability`) and the link
state.  It also hears of round ends (the drivers' ``PollSink``).  Rules:

- **meters** (key :class:`~st2000r.supervisor.events.MeterId`): value in integer base
  units = ``meter.initial + count * meter.pulse_constant``; bulk channel ``n`` is module
  ``(n - 1) // 3 + 1``, input ``(n - 1) % 3 + 1``.  A channel the topology does not have is
  ignored and counted in ``stats.unexpected_channels`` (unless the CDT flags it not
  fitted); a configured channel the CDT flags not fitted becomes COMM_FAIL and is counted
  in ``stats.absent_channels``;
- **quality**: a meter never read is STALE with value None; a bulk reading makes it GOOD;
  the moment its CDT stops answering or its link goes down, it turns COMM_FAIL (keeping
  its last value), with ``quality_since`` the time that happened; staleness is a separate
  rule: a GOOD value not refreshed for ``stale_after_s`` becomes STALE — one periodic check
  every ``check_interval_s`` while the service runs (:meth:`check_stale`), never a timer
  per meter.  A value restored from the state folder (:meth:`restore`) is STALE until read;
- **readings**: every bulk reply publishes one ``ReadingBatch`` with every configured,
  fitted channel it carried — also when nothing changed (the historian's record);
- **CDTs**: ``online`` is the link reachability's *answering*; mains, battery, modules
  come from status replies;
- **links**: connected and signal from the link observers; statistics from the attached
  bus masters (:meth:`attach_master`);
- **events**: ``MeterChanged``, ``CdtChanged``, ``LinkChanged`` are published only when
  something changed — never for an identical re-read; ``ReadingBatch`` for every bulk
  reply; ``RoundDone`` for every round end;
- no ``PollSink`` method raises: a failure inside is logged and counted
  (``stats.sink_errors``).

Cost: a 48-channel bulk reply is one dict lookup and a loop of integer compares; a whole
12,288-meter sweep's worth of replies applies in a few tens of milliseconds (measured in
``docs/performance.md``, "Supervisor: point database").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from st2000r.config.model import Meter, ReadingPlan, Topology
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.drivers.st2000r.reachability import Outcome, Purpose
from st2000r.supervisor.events import (
    CdtChanged,
    EventBus,
    LinkChanged,
    LinkState,
    MeterChanged,
    MeterId,
    Quality,
    Reading,
    ReadingBatch,
    RoundDone,
    utc,
)
from st2000r.supervisor.point_types import CdtPoint, LinkPoint, MeterPoint, PointStats

__all__ = ["PointDatabase", "MeterPoint", "CdtPoint", "LinkPoint", "PointStats", "default_stale_after"]

log = Logger()

MIN_STALE_AFTER_S = 3600
DAY_S = 86_400


def _plan_period(plan: ReadingPlan) -> int:
    """The longest gap (s) between two consecutive rounds of ``plan``."""
    gaps = []
    if plan.every_s is not None:
        gaps.append(plan.every_s)
    if plan.at and plan.every_s is None:
        secs = sorted(t.hour * 3600 + t.minute * 60 + t.second for t in plan.at)
        gaps.append(max(b - a for a, b in zip(secs, secs[1:] + [secs[0] + DAY_S])))
    return max(gaps) if gaps else DAY_S


def default_stale_after(plans: tuple[ReadingPlan, ...]) -> int:
    """2 x the longest period of the ``full`` plans (of all plans if none is full), at
    least ``MIN_STALE_AFTER_S`` (1 h).  Seconds."""
    full = [p for p in plans if p.kind == "full"] or list(plans)
    longest = max((_plan_period(p) for p in full), default=0)
    return max(MIN_STALE_AFTER_S, 2 * longest)


# --------------------------------------------------------------------------- mutable state


_VALVES = tuple(Valve(i) for i in range(4))  # status bits -> member, without an enum call per channel
_FLAGS = tuple(AlarmFlag(i) for i in range(8))


class _Meter:
    __slots__ = ("id", "config", "value", "count", "quality", "since", "at", "valve", "alarms")

    def __init__(self, mid: MeterId, config: Meter) -> None:
        self.id = mid
        self.config = config
        self.value: int | None = None
        self.count: int | None = None
        self.quality = Quality.STALE
        self.since: float | None = None  # when the quality became what it is
        self.at: float | None = None  # when the value was read
        self.valve: Valve | None = None
        self.alarms = AlarmFlag.NONE

    def event(self, now: float, now_utc: datetime | None = None) -> MeterChanged:
        """The change event at clock time ``now`` (``now_utc``: the same as a datetime, when
        the caller converts it once for a whole reply — most events carry it three times)."""
        if now_utc is None:
            now_utc = utc(now)
        at, since = self.at, self.since
        return MeterChanged(self.id, self.value, self.count, self.quality,
                            now_utc if at == now else (utc(at) if at is not None else None), self.valve, self.alarms,
                            now_utc if since == now else (utc(since) if since is not None else None), now_utc)

    def point(self) -> MeterPoint:
        c = self.config
        return MeterPoint(self.id, c.kind.value, c.serial, c.household, c.kind.base_unit, self.value, self.count,
                          self.quality, utc(self.at) if self.at is not None else None, self.valve, self.alarms,
                          utc(self.since) if self.since is not None else None)

    def set_quality(self, quality: Quality, at: float) -> bool:
        if self.quality is quality:
            return False
        self.quality = quality
        self.since = at
        return True


class _Cdt:
    __slots__ = ("link", "config", "channels", "online", "mains", "battery_low", "battery_mv", "modules",
                 "last_seen")

    def __init__(self, link: str, config: Any) -> None:
        self.link = link
        self.config = config
        #: index n (1..96) -> _Meter or None
        self.channels: list[_Meter | None] = [None] * (m.MAX_CHANNELS + 1)
        self.online: bool | None = None
        self.mains: bool | None = None
        self.battery_low: bool | None = None
        self.battery_mv: int | None = None
        self.modules: frozenset[int] | None = None
        self.last_seen: float | None = None

    def event(self, at: float) -> CdtChanged:
        return CdtChanged(self.link, self.config.address, self.online, self.mains, self.battery_low,
                          self.battery_mv, self.modules, utc(at))

    def point(self) -> CdtPoint:
        c = self.config
        return CdtPoint(self.link, c.address, c.name, c.repeater, self.online, self.mains, self.battery_low,
                        self.battery_mv, self.modules, utc(self.last_seen) if self.last_seen is not None else None)


class _Link:
    __slots__ = ("config", "state", "signal", "since", "master")

    def __init__(self, config: Any) -> None:
        self.config = config
        self.state = LinkState.DISCONNECTED
        self.signal: int | None = None
        self.since: float | None = None
        self.master: Any = None


def _never_raises(method: Callable) -> Callable:
    @functools.wraps(method)
    def guarded(self: PointDatabase, *args: Any) -> None:
        try:
            method(self, *args)
        except Exception:
            self.stats.sink_errors += 1
            log.failure("point database: {method} failed", method=method.__name__)

    return guarded


# --------------------------------------------------------------------------- the database


class PointDatabase(Service):
    """Current state of every meter, CDT and link of ``topology`` (rules in the module
    docstring).  ``clock``: the injected time source; ``bus``: where change events go.
    ``stale_after_s``: default ``topology.settings.stale_after_s`` or
    :func:`default_stale_after`.  ``check_interval_s``: period of the stale check while the
    service runs (default: ``min(60, stale_after_s / 10)``)."""

    def __init__(self, topology: Topology, clock: IReactorTime, bus: EventBus, *,
                 stale_after_s: float | None = None, check_interval_s: float | None = None) -> None:
        self.topology = topology
        self.clock = clock
        self.bus = bus
        if stale_after_s is None:
            stale_after_s = topology.settings.stale_after_s or default_stale_after(topology.plans)
        self.stale_after_s = float(stale_after_s)
        self.check_interval_s = check_interval_s or min(60.0, self.stale_after_s / 10)
        self.stats = PointStats()
        self._links: dict[str, _Link] = {}
        self._cdts: dict[tuple[str, int], _Cdt] = {}
        self._meters: dict[MeterId, _Meter] = {}
        for link in topology.links():
            self._links[link.name] = _Link(link)
            for cdt in link.cdts:
                state = self._cdts[(link.name, cdt.address)] = _Cdt(link.name, cdt)
                for module_no, channel_no, meter in cdt.meters():
                    mid = MeterId(link.name, cdt.address, module_no, channel_no)
                    point = self._meters[mid] = _Meter(mid, meter)
                    state.channels[mid.channel_no] = point
        self._check: LoopingCall | None = None

    # ---------------------------------------------------------------- service

    def startService(self) -> None:
        super().startService()
        self._check = LoopingCall(self.check_stale)
        self._check.clock = self.clock
        self._check.start(self.check_interval_s, now=False)

    def stopService(self) -> None:
        if self._check is not None and self._check.running:
            self._check.stop()
        self._check = None
        return super().stopService()

    # ---------------------------------------------------------------- PollSink

    @_never_raises
    def on_reply(self, cdt: int, outcome: Outcome) -> None:
        """A reply of a configured CDT, from any transaction (the master's reachability
        calls this once per reply)."""
        reply = outcome.reply
        link = outcome.link
        if isinstance(reply, m.BulkReadReply):
            self.on_bulk(link, cdt, reply, outcome.at, outcome.purpose, outcome.plan)
        elif isinstance(reply, m.AlarmsReply):
            self.on_alarms(link, cdt, reply, outcome.at)
        elif isinstance(reply, m.CdtStatus):
            self.on_cdt_status(link, cdt, reply, outcome.at)
        else:
            self.stats.other_replies += 1

    @_never_raises
    def on_bulk(self, link: str, cdt: int, reply: m.BulkReadReply, at: float,
                source: Purpose = Purpose.PLAN, plan: str | None = None) -> None:
        """Apply a bulk read reply of CDT ``cdt`` on ``link`` received at clock time ``at``;
        publishes the changes and one ``ReadingBatch``."""
        state = self._cdt_state(link, cdt)
        if state is None:
            return
        self.stats.bulk_replies += 1
        state.last_seen = at
        channels = state.channels
        publish = self._publish
        readings: list[Reading] = []
        at_utc = utc(at)
        n = reply.first_channel
        for reading in reply.channels:
            point = channels[n] if n <= m.MAX_CHANNELS else None
            n += 1
            status = reading.status
            if point is None:
                if not status & 0x40:
                    self.stats.unexpected_channels += 1
                continue
            if status & 0x40:  # the CDT says nothing is fitted there
                self.stats.absent_channels += 1
                if point.set_quality(Quality.COMM_FAIL, at):
                    publish(point.event(at, at_utc))
                continue
            count = reading.count
            valve = _VALVES[status & 0x03]
            alarms = _FLAGS[(status >> 2) & 0x07]
            config = point.config
            value = config.initial + count * config.pulse_constant
            readings.append(Reading(point.id, value, count, valve, alarms))
            point.at = at
            if (count == point.count and point.quality is Quality.GOOD and valve is point.valve
                    and alarms == point.alarms):
                continue
            point.count = count
            point.value = value
            point.set_quality(Quality.GOOD, at)
            point.valve = valve
            point.alarms = alarms
            publish(point.event(at, at_utc))
        if readings:
            publish(ReadingBatch(link, cdt, at_utc, source, plan, tuple(readings)))

    @_never_raises
    def on_alarms(self, link: str, cdt: int, reply: m.AlarmsReply, at: float) -> None:
        """Apply the alarm flags of every channel of a CDT (channel 1 first)."""
        state = self._cdt_state(link, cdt)
        if state is None:
            return
        self.stats.alarm_replies += 1
        state.last_seen = at
        for n, flags in enumerate(reply.alarms, start=1):
            point = state.channels[n] if n <= m.MAX_CHANNELS else None
            if point is None:
                if flags:
                    self.stats.unexpected_channels += 1
                continue
            flags = AlarmFlag(flags)
            if flags != point.alarms:
                point.alarms = flags
                self._publish(point.event(at))

    @_never_raises
    def on_cdt_status(self, link: str, cdt: int, reply: m.CdtStatus, at: float) -> None:
        """Apply a CDT status reply (mains, battery, modules answering)."""
        state = self._cdt_state(link, cdt)
        if state is None:
            return
        self.stats.status_replies += 1
        state.last_seen = at
        new = (reply.mains, reply.battery_low, reply.battery_mv, frozenset(reply.modules))
        if new != (state.mains, state.battery_low, state.battery_mv, state.modules):
            state.mains, state.battery_low, state.battery_mv, state.modules = new
            self._publish(state.event(at))

    @_never_raises
    def on_reachability(self, link: str, cdt: int, answering: bool | None, at: float, reason: str = "") -> None:
        """The link's reachability says the CDT started or stopped answering at ``at``.
        Silent: the CDT is offline and its meters COMM_FAIL from ``at``; answering: online
        (its meters turn GOOD as they are read); None: unknown again (its link is back and
        it was silent only because the link was down; its meters stay COMM_FAIL until read)."""
        state = self._cdt_state(link, cdt)
        if state is None:
            return
        if answering is None:
            if state.online is not None:
                state.online = None
                self._publish(state.event(at))
            return
        if answering:
            if state.online is not True:
                state.online = True
                self._publish(state.event(at))
            return
        self.stats.unreachable += 1
        if state.online is not False:
            state.online = False
            self._publish(state.event(at))
        for point in state.channels:
            if point is not None and point.set_quality(Quality.COMM_FAIL, at):
                self._publish(point.event(at))

    @_never_raises
    def on_round_done(self, link: str, plan: str, kind: str, started: float, ended: float) -> None:
        """A poll round ended: forwarded as a ``RoundDone`` event (the alarm manager's cue)."""
        self.stats.rounds += 1
        self._publish(RoundDone(link, plan, kind, utc(started), utc(ended), utc(ended)))

    # ---------------------------------------------------------------- link observers

    @_never_raises
    def on_link_state(self, link: str, state: str, details: Mapping[str, Any] | None = None) -> None:
        """A link observer event: ``"connected"``, ``"disconnected"``, ``"stopped"`` (a
        deliberate stop, not a fault), ``"idle"`` (an on-demand call hung up between
        rounds, not a fault), ``"signal"`` (``details["csq"]``); others are ignored.  The CDTs' quality follows from the reachability, not from here."""
        entry = self._links.get(link)
        if entry is None:
            return
        details = details or {}
        now = self.clock.seconds()
        if state in ("connected", "disconnected", "stopped", "idle"):
            new = LinkState(state)
            if new is LinkState.DISCONNECTED and entry.state is LinkState.STOPPED:
                return  # the pipe closing after a deliberate stop
            if new is entry.state and entry.since is not None:
                return
            entry.state = new
            entry.since = now
        elif state == "signal":
            csq = details.get("csq")
            signal = csq if type(csq) is int else None
            if signal == entry.signal:
                return
            entry.signal = signal
        else:
            return
        self._publish(LinkChanged(link, entry.state, entry.signal, utc(now)))

    def link_observer(self, link: str) -> Callable[[str, dict], None]:
        """An ``(event, data)`` callable for ``BusMaster.add_observer`` / link services."""
        return lambda event, data: self.on_link_state(link, event, data)

    def attach_master(self, master: Any) -> None:
        """Take a bus master's replies and its CDTs' reachability (the one path for both),
        observe its link events and report its statistics in :meth:`links`.
        ``master.name`` must be a link of the topology (``KeyError`` otherwise)."""
        entry = self._links[master.name]
        entry.master = master
        master.reachability.add_reply_listener(self.on_reply)
        master.reachability.add_listener(self.on_reachability)
        master.add_observer(self.link_observer(master.name))
        if getattr(master, "connected", False):
            self.on_link_state(master.name, "connected", {})

    # ---------------------------------------------------------------- restart

    def restore(self, meters: Iterable[MeterPoint]) -> int:
        """Start from the points saved before a restart: value, count, read time, valve and
        alarms of each meter still in the topology come back STALE (``quality_since`` now)
        until read again; meters never read, unknown meters and meters already read in
        this run are skipped.  Publishes a ``MeterChanged`` per restored meter.  Returns
        how many were restored."""
        now = self.clock.seconds()
        restored = 0
        for saved in meters:
            point = self._meters.get(saved.id)
            if point is None or saved.value is None or saved.timestamp is None or point.at is not None:
                continue
            point.value = saved.value
            point.count = saved.count
            point.at = saved.timestamp.timestamp()
            point.valve = saved.valve
            point.alarms = saved.alarms
            point.quality = Quality.STALE
            point.since = now
            restored += 1
            self._publish(point.event(now))
        return restored

    # ---------------------------------------------------------------- stale check

    def check_stale(self) -> int:
        """Turn GOOD values older than ``stale_after_s`` STALE; returns how many changed."""
        now = self.clock.seconds()
        limit = now - self.stale_after_s
        changed = 0
        for point in self._meters.values():
            if point.quality is Quality.GOOD and point.at is not None and point.at < limit:
                point.set_quality(Quality.STALE, now)
                changed += 1
                self._publish(point.event(now))
        return changed

    # ---------------------------------------------------------------- queries

    def meter(self, mid: MeterId | str) -> MeterPoint:
        """The point of one meter (a ``MeterId`` or its string).  Raises ``KeyError`` for an
        unknown meter, ``ValueError`` for a malformed id string."""
        if isinstance(mid, str):
            mid = MeterId.parse(mid)
        try:
            return self._meters[mid].point()
        except KeyError:
            raise KeyError(f"no meter {mid}") from None

    def meter_config(self, mid: MeterId) -> Meter:
        """The configured meter at ``mid``; raises ``KeyError``."""
        try:
            return self._meters[mid].config
        except KeyError:
            raise KeyError(f"no meter {mid}") from None

    def meters(self, link: str | None = None) -> Iterator[MeterPoint]:
        """Every meter point (of one link), in link, CDT, module, channel order."""
        for mid, point in self._meters.items():
            if link is None or mid.link == link:
                yield point.point()

    def cdt(self, link: str, address: int) -> CdtPoint:
        """The point of one CDT; raises ``KeyError``."""
        try:
            return self._cdts[(link, address)].point()
        except KeyError:
            raise KeyError(f"no CDT {address} on link {link!r}") from None

    def cdts(self, link: str | None = None) -> Iterator[CdtPoint]:
        """Every CDT point (of one link), in topology order."""
        for (name, _), state in self._cdts.items():
            if link is None or name == link:
                yield state.point()

    def links(self) -> list[LinkPoint]:
        """Every link's point, in topology order."""
        out = []
        for name, entry in self._links.items():
            master = entry.master
            stats = master.stats.as_dict() if master is not None else {}
            out.append(LinkPoint(name, entry.config.kind, entry.state, entry.signal,
                                 utc(entry.since) if entry.since is not None else None, stats))
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything as JSON-ready data: ``{"links": [...], "cdts": [...], "meters": [...]}``."""
        return {
            "links": [p.as_dict() for p in self.links()],
            "cdts": [p.as_dict() for p in self.cdts()],
            "meters": [p.as_dict() for p in self.meters()],
        }

    # ---------------------------------------------------------------- internals

    def _cdt_state(self, link: str, cdt: int) -> _Cdt | None:
        state = self._cdts.get((link, cdt))
        if state is None:
            self.stats.unknown_cdts += 1
            log.debug("point database: reply from unknown CDT {cdt} on link {link}", link=link, cdt=cdt)
        return state

    def _publish(self, event: Any) -> None:
        self.stats.events += 1
        self.bus.publish(event)
