"""Alarms: raise, clear, acknowledge, shelve; severities; flood suppression by topology.

:class:`AlarmManager` keeps the alarm list.  It is fed by the event bus (``MeterChanged``
channel alarm flags and valve faults, ``CdtChanged`` mains/battery/online, ``LinkChanged``,
``RoundDone``) and publishes an ``AlarmChanged`` snapshot for every transition.

Alarm ids are stable strings (``SOURCE`` is ``link/cdt/module/channel``, ``link/cdt``,
``link/repeater`` or ``link``):

=============================  ===========  ========  ===========================================
id                             kind         severity  condition
=============================  ===========  ========  ===========================================
meter:SOURCE:tamper            tamper       major     magnetic tamper flag of the channel
meter:SOURCE:short             short        minor     sensor line short circuit
meter:SOURCE:open              open         minor     sensor line open circuit
meter:SOURCE:valve_fault       valve_fault  major     the valve reports FAULT (jammed motor)
cdt:SOURCE:offline             offline      major     the CDT did not answer in a round
cdt:SOURCE:mains               mains        minor     mains lost, the CDT runs on battery
cdt:SOURCE:battery_low         battery_low  major     backup battery low (the CDT will stop)
repeater:SOURCE:suspected      suspected    critical  every CDT behind the repeater is offline
link:SOURCE:no_answer          no_answer    critical  every CDT of the link is offline (>= 2 CDTs)
link:SOURCE:disconnected       disconnected critical  the link's byte pipe is down
=============================  ===========  ========  ===========================================

State table (ISA-18.2 style; ``shelved`` overlays any state)::

    state            condition on        condition off        acknowledge      shelve
    (none)           -> active-unacked   -                    error            error
    active-unacked   -                   -> cleared-unacked   -> active-acked  -> shelved
    active-acked     -                   -> removed           no-op            -> shelved
    cleared-unacked  -> active-unacked   -                    -> removed       -> shelved
    shelved          (tracked silently)  (tracked silently)   recorded         -> extended

While shelved, a change of the condition is published (state stays ``shelved``, ``active``
follows the field) but not logged or announced, so the state folder and the consoles keep
an accurate list.

Unshelve (by an operator or when ``until`` passes): the alarm is removed if its condition
is off, else it comes back ``active-unacked`` (announced again).  Shelving needs a reason.
``removed`` is only ever seen as the last ``AlarmChanged`` of an alarm.

Flood suppression: CDT ``offline`` alarms are decided at the end of a round (``RoundDone``)
from the CDTs' online states.  When every CDT behind a repeater — including those behind
its child repeater — is offline, one ``repeater ... suspected`` alarm stands for them (the
outermost such repeater only: a child whose parent is suspected is not alarmed itself);
when every CDT of a link (two or more) is offline, one ``link ... no_answer``.  CDT alarms
already raised for CDTs now covered are cleared.  When a CDT answers again, the alarms
covering it clear at once; CDTs still offline come back as individual alarms at the next
round end.  While a link is disconnected no offline alarm is raised on it (the link alarm
says it all).  A link that has not connected ``connect_grace_s`` (60 s) after the service
started gets its ``disconnected`` alarm then.  Transitions are logged once, never repeats.

Link alarms are debounced, so a link that connects and drops again and again (a DTU on a
weak cell, a serial server rebooting) is one alarm, not one per drop: ``disconnected`` is
raised once the link has been down ``link_raise_after_s`` (default 30 s) without a break,
and cleared once it has been up ``link_clear_after_s`` (default 30 s) without a break.  A
link stopped on purpose (``LinkState.STOPPED``) raises nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from st2000r.config.model import Link, Topology
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.supervisor.events import (
    Alarm,
    AlarmChanged,
    CdtChanged,
    EventBus,
    LinkChanged,
    LinkState,
    MeterChanged,
    MeterId,
    RoundDone,
    utc,
)

__all__ = ["AlarmManager", "AlarmError", "SEVERITY", "SEVERITIES", "MAX_SHELVE_S"]

log = Logger()

#: severities, most severe first
SEVERITIES: tuple[str, ...] = ("critical", "major", "minor", "warning")

#: severity of each alarm kind
SEVERITY: dict[str, str] = {
    "tamper": "major",
    "short": "minor",
    "open": "minor",
    "valve_fault": "major",
    "offline": "major",
    "mains": "minor",
    "battery_low": "major",
    "suspected": "critical",
    "no_answer": "critical",
    "disconnected": "critical",
}

#: the longest shelf, seconds (7 days)
MAX_SHELVE_S = 7 * 86_400

_FLAGS = (("tamper", AlarmFlag.TAMPER), ("short", AlarmFlag.SHORT), ("open", AlarmFlag.OPEN))
_METER_KINDS = tuple(name for name, _ in _FLAGS) + ("valve_fault",)


class AlarmError(ValueError):
    """A bad alarm operation: unknown alarm id, missing reason, bad shelf time ..."""


class _Alarm:
    __slots__ = ("id", "source", "kind", "severity", "text", "active", "acked", "raised_at", "cleared_at",
                 "acked_by", "acked_at", "ack_note", "shelved_by", "shelved_reason", "shelved_until", "shelf")

    def __init__(self, aid: str, source: str, kind: str, severity: str, text: str, now: float) -> None:
        self.id = aid
        self.source = source
        self.kind = kind
        self.severity = severity
        self.text = text
        self.active = True
        self.acked = False
        self.raised_at = now
        self.cleared_at: float | None = None
        self.acked_by: str | None = None
        self.acked_at: float | None = None
        self.ack_note: str | None = None
        self.shelved_by: str | None = None
        self.shelved_reason: str | None = None
        self.shelved_until: float | None = None
        self.shelf: IDelayedCall | None = None

    @property
    def state(self) -> str:
        if self.shelved_by is not None:
            return "shelved"
        if self.active:
            return "active-acked" if self.acked else "active-unacked"
        return "removed" if self.acked else "cleared-unacked"

    def snapshot(self, state: str | None = None) -> Alarm:
        t = (lambda s: utc(s) if s is not None else None)
        return Alarm(
            id=self.id, source=self.source, kind=self.kind, severity=self.severity, text=self.text,
            state=state or self.state, active=self.active, raised_at=utc(self.raised_at),
            cleared_at=t(self.cleared_at), acked_by=self.acked_by, acked_at=t(self.acked_at),
            ack_note=self.ack_note, shelved_by=self.shelved_by, shelved_reason=self.shelved_reason,
            shelved_until=t(self.shelved_until),
        )


@dataclass(frozen=True, slots=True)
class _LinkShape:
    """Static topology facts of one link for suppression."""

    cdts: frozenset[int]
    names: dict[int, str | None]
    behind: dict[str, frozenset[int]]  # repeater -> CDTs behind it, child repeaters included
    parent: dict[str, str | None]


def _shape(link: Link) -> _LinkShape:
    parent = {r.name: r.parent for r in link.repeaters}
    behind: dict[str, set[int]] = {r.name: set() for r in link.repeaters}
    for cdt in link.cdts:
        rep = cdt.repeater
        seen: set[str] = set()
        while rep is not None and rep in behind and rep not in seen:
            seen.add(rep)
            behind[rep].add(cdt.address)
            rep = parent.get(rep)
    return _LinkShape(frozenset(c.address for c in link.cdts), {c.address: c.name for c in link.cdts},
                      {k: frozenset(v) for k, v in behind.items()}, parent)


class AlarmManager(Service):
    """The alarm list of ``topology`` (rules in the module docstring).  Subscribes to
    ``bus`` on construction (so no event is missed before the service starts); stopping the
    service unsubscribes and cancels the shelf timers."""

    def __init__(self, topology: Topology, clock: IReactorTime, bus: EventBus, *,
                 connect_grace_s: float = 60.0, link_raise_after_s: float = 30.0,
                 link_clear_after_s: float = 30.0) -> None:
        self.topology = topology
        self.connect_grace_s = connect_grace_s
        self.link_raise_after_s = link_raise_after_s
        self.link_clear_after_s = link_clear_after_s
        self._link_timers: dict[str, IDelayedCall] = {}
        self.clock = clock
        self.bus = bus
        self._alarms: dict[str, _Alarm] = {}
        self._shapes = {link.name: _shape(link) for link in topology.links()}
        self._offline: dict[str, set[int]] = {name: set() for name in self._shapes}
        self._disconnected: set[str] = set()
        self._connected: set[str] = set()
        self._grace: IDelayedCall | None = None
        self._meters_alarmed: set[MeterId] = set()
        self._unsubscribe = bus.subscribe(self._on_event, (MeterChanged, CdtChanged, RoundDone, LinkChanged))

    def startService(self) -> None:
        super().startService()
        self._grace = self.clock.callLater(self.connect_grace_s, self._never_connected)

    def stopService(self) -> Any:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        for timer in self._link_timers.values():
            if timer.active():
                timer.cancel()
        self._link_timers.clear()
        self._unsubscribe()
        for alarm in self._alarms.values():
            if alarm.shelf is not None and alarm.shelf.active():
                alarm.shelf.cancel()
            alarm.shelf = None
        return super().stopService()

    # ---------------------------------------------------------------- queries

    def alarms(self, *, include_shelved: bool = True) -> list[Alarm]:
        """Every alarm in the list (not removed), most severe first, then oldest first."""
        items = [a for a in self._alarms.values() if include_shelved or a.shelved_by is None]
        items.sort(key=lambda a: (SEVERITIES.index(a.severity), a.raised_at, a.id))
        return [a.snapshot() for a in items]

    def alarm(self, alarm_id: str) -> Alarm:
        """One alarm's snapshot; raises :class:`AlarmError` if it is not in the list."""
        return self._get(alarm_id).snapshot()

    def offline(self, link: str) -> frozenset[int]:
        """CDTs of ``link`` currently known offline."""
        return frozenset(self._offline.get(link, ()))

    # ---------------------------------------------------------------- operator actions

    def acknowledge(self, alarm_id: str, who: str, note: str = "") -> Alarm:
        """``who`` acknowledges; a cleared alarm is then removed.  Acknowledging an
        acknowledged alarm changes nothing.  Raises :class:`AlarmError` (unknown id, no
        ``who``).  Returns the new snapshot."""
        if not who:
            raise AlarmError("acknowledge: who is acknowledging? ('who' must not be empty)")
        alarm = self._get(alarm_id)
        if alarm.acked:
            return alarm.snapshot()
        alarm.acked = True
        alarm.acked_by = who
        alarm.acked_at = self.clock.seconds()
        alarm.ack_note = note or None
        log.info("alarm {id}: acknowledged by {who}", id=alarm.id, who=who)
        self._changed(alarm)
        return alarm.snapshot("removed") if alarm.id not in self._alarms else alarm.snapshot()

    def shelve(self, alarm_id: str, who: str, reason: str, until_s: float) -> Alarm:
        """Hide an alarm until clock time ``until_s`` (``clock.seconds()`` timebase; at most
        ``MAX_SHELVE_S`` ahead).  Shelving a shelved alarm moves its end.  Raises
        :class:`AlarmError` for an unknown id, an empty ``who`` or ``reason``, or an end in
        the past / too far ahead."""
        alarm = self._get(alarm_id)
        if not who:
            raise AlarmError("shelve: 'who' must not be empty")
        if not reason or not reason.strip():
            raise AlarmError("shelve: a reason is required")
        now = self.clock.seconds()
        if not (now < until_s <= now + MAX_SHELVE_S):
            raise AlarmError(f"shelve: the end must be after now and at most {MAX_SHELVE_S} s ahead "
                             f"(got {until_s - now:+.0f} s from now)")
        if alarm.shelf is not None and alarm.shelf.active():
            alarm.shelf.cancel()
        alarm.shelved_by = who
        alarm.shelved_reason = reason
        alarm.shelved_until = until_s
        alarm.shelf = self.clock.callLater(until_s - now, self._shelf_ends, alarm.id)
        log.info("alarm {id}: shelved by {who} until {until} ({reason})", id=alarm.id, who=who,
                 until=utc(until_s).isoformat(), reason=reason)
        self._publish(alarm.snapshot())
        return alarm.snapshot()

    def unshelve(self, alarm_id: str, who: str) -> Alarm:
        """End a shelf now.  Raises :class:`AlarmError` if the alarm is not shelved."""
        alarm = self._get(alarm_id)
        if alarm.shelved_by is None:
            raise AlarmError(f"alarm {alarm_id!r} is not shelved")
        return self._unshelve(alarm, who)

    # ---------------------------------------------------------------- security events

    def link_observer(self, link: str) -> Callable[[str, dict], None]:
        """An ``(event, data)`` callable for a link service: its security events
        (``takeover``, ``auth_failed``) become alarms; other events are ignored."""
        return lambda event, data: self.on_link_security(link, event, data or {})

    def on_link_security(self, link: str, event: str, data: Mapping[str, Any]) -> None:
        if event == "takeover":
            self._note(f"link:{link}:takeover", link, "takeover",
                       f"link {link}: DTU {data.get('dtu')} session taken over from {data.get('old_peer')} by "
                       f"{data.get('peer')} (it proved its identity: a moved SIM or a leaked secret?)", "major")
        elif event == "auth_failed":
            self._note(f"link:{link}:auth_failed", link, "auth_failed",
                       f"link {link}: a registration as DTU {data.get('dtu')} from {data.get('peer')} failed its "
                       f"proof of identity ({data.get('reason')})", "major")

    def on_gprs_server_event(self, event: str, data: Mapping[str, Any]) -> None:
        """The GPRS server's own events: an address blocked after failed registrations."""
        if event == "throttled":
            self._note("gprs:throttled", "gprs", "throttled",
                       f"GPRS server: {data.get('source')} blocked for {data.get('seconds')} s after "
                       f"{data.get('failures')} failed registrations", "warning")

    def on_api_login_event(self, event: str, data: Mapping[str, Any]) -> None:
        """The HTTP API's logins: an address throttled after a burst of failed logins (the
        text names no operator: a name as typed may be a password)."""
        if event == "throttled":
            self._note("api:login:throttled", "api", "login_throttled",
                       f"HTTP API: {data.get('failures')} failed logins from {data.get('peer')} within "
                       f"{data.get('window_s', 0):.0f} s: its logins refused for {data.get('seconds')} s "
                       "(password guessing?)", "major")

    def _note(self, alarm_id: str, source: str, kind: str, text: str, severity: str) -> None:
        """An event, not a condition: raised and cleared at once, so it waits in the list
        for an acknowledgement.  While it waits, repeats change nothing (an attacker who
        repeats a refused registration gets one alarm and one log line, not thousands)."""
        if alarm_id in self._alarms:
            return
        self.raise_alarm(alarm_id, source, kind, text, severity)
        self.clear_alarm(alarm_id, "an event: acknowledge it")

    # ---------------------------------------------------------------- restart

    def restore(self, alarms: Iterable[Alarm]) -> int:
        """Start from the alarm list saved before a restart (snapshots as published), so an
        acknowledged alarm stays acknowledged and a shelf keeps its end (a shelf that ended
        while the supervisor was down ends now).  The conditions themselves are re-evaluated
        as the field is read: an alarm whose condition is gone clears then.  Alarms already
        in the list are kept as they are.  Returns how many were restored."""
        now = self.clock.seconds()
        restored = 0
        for snap in alarms:
            if snap.id in self._alarms or snap.state == "removed":
                continue
            alarm = _Alarm(snap.id, snap.source, snap.kind, snap.severity, snap.text, snap.raised_at.timestamp())
            alarm.active = snap.active
            alarm.cleared_at = snap.cleared_at.timestamp() if snap.cleared_at else None
            alarm.acked = snap.acked_by is not None or snap.state in ("active-acked",)
            alarm.acked_by = snap.acked_by
            alarm.acked_at = snap.acked_at.timestamp() if snap.acked_at else None
            alarm.ack_note = snap.ack_note
            self._alarms[snap.id] = alarm
            if snap.shelved_by is not None and snap.shelved_until is not None:
                alarm.shelved_by = snap.shelved_by
                alarm.shelved_reason = snap.shelved_reason
                alarm.shelved_until = snap.shelved_until.timestamp()
                alarm.shelf = self.clock.callLater(max(0.0, alarm.shelved_until - now), self._shelf_ends, snap.id)
            if alarm.kind in _METER_KINDS and alarm.active:
                try:
                    self._meters_alarmed.add(MeterId.parse(alarm.source))
                except ValueError:
                    pass
            restored += 1
            self._publish(alarm.snapshot())
        return restored

    # ---------------------------------------------------------------- conditions

    def raise_alarm(self, alarm_id: str, source: str, kind: str, text: str, severity: str | None = None) -> None:
        """The condition of ``alarm_id`` is present (idempotent).  ``severity`` defaults to
        ``SEVERITY[kind]`` (``"major"`` for unknown kinds)."""
        alarm = self._alarms.get(alarm_id)
        now = self.clock.seconds()
        if alarm is None:
            alarm = _Alarm(alarm_id, source, kind, severity or SEVERITY.get(kind, "major"), text, now)
            self._alarms[alarm_id] = alarm
            log.warn("alarm {id} raised ({severity}): {text}", id=alarm_id, severity=alarm.severity, text=text)
            self._publish(alarm.snapshot())
            return
        if alarm.active:
            return
        alarm.active = True
        alarm.acked = False
        alarm.acked_by = alarm.acked_at = alarm.ack_note = None
        alarm.raised_at = now
        alarm.cleared_at = None
        alarm.text = text
        if alarm.shelved_by is None:
            log.warn("alarm {id} raised again ({severity}): {text}", id=alarm_id, severity=alarm.severity, text=text)
        self._publish(alarm.snapshot())  # shelved: still "shelved", but whoever keeps the list sees the condition

    def clear_alarm(self, alarm_id: str, why: str = "") -> None:
        """The condition of ``alarm_id`` is gone (idempotent; unknown ids are ignored)."""
        alarm = self._alarms.get(alarm_id)
        if alarm is None or not alarm.active:
            return
        alarm.active = False
        alarm.cleared_at = self.clock.seconds()
        if alarm.shelved_by is not None:
            self._publish(alarm.snapshot())  # not announced (no log line); the list's keepers stay right
            return
        log.info("alarm {id} cleared{why}", id=alarm_id, why=f" ({why})" if why else "")
        self._changed(alarm)

    # ---------------------------------------------------------------- feeds

    def _on_event(self, event: Any) -> None:
        if isinstance(event, MeterChanged):
            self._on_meter(event)
        elif isinstance(event, CdtChanged):
            self._on_cdt(event)
        elif isinstance(event, RoundDone):
            self._evaluate(event.link, allow_raise=True)
        elif isinstance(event, LinkChanged):
            self._on_link(event)

    def _on_meter(self, event: MeterChanged) -> None:
        mid = event.meter
        fault = event.valve is Valve.FAULT
        if not event.alarms and not fault and mid not in self._meters_alarmed:
            return  # the common case: nothing to raise, nothing to clear
        source = str(mid)
        for name, flag in _FLAGS:
            aid = f"meter:{source}:{name}"
            if event.alarms & flag:
                self.raise_alarm(aid, source, name, f"meter {source}: {name} alarm on the channel")
            else:
                self.clear_alarm(aid)
        aid = f"meter:{source}:valve_fault"
        if fault:
            self.raise_alarm(aid, source, "valve_fault", f"meter {source}: valve reports a fault (jammed motor?)")
        elif event.valve is not None:
            self.clear_alarm(aid)
        if any(f"meter:{source}:{k}" in self._alarms and self._alarms[f"meter:{source}:{k}"].active
               for k in _METER_KINDS):
            self._meters_alarmed.add(mid)
        else:
            self._meters_alarmed.discard(mid)

    def _on_cdt(self, event: CdtChanged) -> None:
        source = f"{event.link}/{event.cdt}"
        what = self._cdt_text(event.link, event.cdt)
        if event.mains is False:
            self.raise_alarm(f"cdt:{source}:mains", source, "mains", f"{what}: mains lost, running on battery")
        elif event.mains is True:
            self.clear_alarm(f"cdt:{source}:mains")
        if event.battery_low is True:
            self.raise_alarm(f"cdt:{source}:battery_low", source, "battery_low",
                             f"{what}: backup battery low ({event.battery_mv} mV)")
        elif event.battery_low is False:
            self.clear_alarm(f"cdt:{source}:battery_low")
        offline = self._offline.get(event.link)
        if offline is None:
            return
        if event.online is False:
            offline.add(event.cdt)  # decided at the end of the round
        elif event.cdt in offline:  # answers, or unknown again (its link is back)
            offline.discard(event.cdt)
            self._evaluate(event.link, allow_raise=False)

    def _never_connected(self) -> None:
        """``connect_grace_s`` after start: a link that never reported a connection is as
        good as disconnected (wrong device path, DTU never registered ...)."""
        self._grace = None
        for link in self._shapes:
            if link not in self._connected and link not in self._disconnected:
                self._disconnected.add(link)
                self.raise_alarm(f"link:{link}:disconnected", link, "disconnected",
                                 f"link {link}: not connected {self.connect_grace_s:g} s after start")

    def _on_link(self, event: LinkChanged) -> None:
        link = event.link
        timer = self._link_timers.pop(link, None)
        if timer is not None and timer.active():
            timer.cancel()
        if event.state in (LinkState.STOPPED, LinkState.IDLE):
            return  # stopped on purpose, or an on-demand call hung up: not a fault
        if not event.connected and link not in self._connected and self._grace is not None:
            # not connected yet (a GSM modem reports its signal before it dials): the
            # connect grace decides, so a healthy start raises nothing
            return
        if event.connected:
            self._connected.add(link)
            self._disconnected.discard(link)
            if f"link:{link}:disconnected" in self._alarms:
                self._link_timers[link] = self.clock.callLater(self.link_clear_after_s, self._link_up, link)
        else:
            self._connected.discard(link)
            self._disconnected.add(link)
            self._link_timers[link] = self.clock.callLater(self.link_raise_after_s, self._link_down, link)

    def _link_down(self, link: str) -> None:
        self._link_timers.pop(link, None)
        self.raise_alarm(f"link:{link}:disconnected", link, "disconnected",
                         f"link {link}: disconnected for {self.link_raise_after_s:g} s or more")

    def _link_up(self, link: str) -> None:
        self._link_timers.pop(link, None)
        self.clear_alarm(f"link:{link}:disconnected", f"up for {self.link_clear_after_s:g} s")

    def _evaluate(self, link: str, *, allow_raise: bool) -> None:
        """Reconcile the offline / suspected / no_answer alarms of ``link`` with the CDTs'
        online states (see flood suppression in the module docstring)."""
        shape = self._shapes.get(link)
        if shape is None:
            return
        offline = self._offline[link]
        allow_raise = allow_raise and link not in self._disconnected
        whole = len(shape.cdts) >= 2 and offline >= shape.cdts
        suspected = {r for r, cdts in shape.behind.items() if cdts and cdts <= offline}
        top = set() if whole else {r for r in suspected if shape.parent.get(r) not in suspected}
        covered: set[int] = set(shape.cdts) if whole else set()
        for r in top:
            covered |= shape.behind[r]
        aid = f"link:{link}:no_answer"
        if whole:
            if allow_raise:
                self.raise_alarm(aid, link, "no_answer", f"link {link}: none of its {len(shape.cdts)} CDTs answers")
        else:
            self.clear_alarm(aid, "a CDT answers")
        for r, cdts in shape.behind.items():
            aid = f"repeater:{link}/{r}:suspected"
            if r in top:
                if allow_raise:
                    self.raise_alarm(aid, f"{link}/{r}", "suspected",
                                     f"repeater {r} on link {link} suspected: all {len(cdts)} CDTs behind it "
                                     "are silent")
            else:
                self.clear_alarm(aid, "not every CDT behind it is silent")
        for address in sorted(shape.cdts):
            aid = f"cdt:{link}/{address}:offline"
            if address in offline and address not in covered:
                if allow_raise:
                    self.raise_alarm(aid, f"{link}/{address}", "offline",
                                     f"{self._cdt_text(link, address)}: does not answer")
            elif address in covered:
                self.clear_alarm(aid, "covered by a repeater or link alarm")
            else:
                self.clear_alarm(aid, "answers again")

    # ---------------------------------------------------------------- internals

    def _cdt_text(self, link: str, address: int) -> str:
        shape = self._shapes.get(link)
        name = shape.names.get(address) if shape is not None else None
        return f"CDT {address}{f' ({name})' if name else ''} on link {link}"

    def _get(self, alarm_id: str) -> _Alarm:
        alarm = self._alarms.get(alarm_id)
        if alarm is None:
            raise AlarmError(f"no alarm {alarm_id!r} in the list")
        return alarm

    def _shelf_ends(self, alarm_id: str) -> None:
        alarm = self._alarms.get(alarm_id)
        if alarm is not None and alarm.shelved_by is not None:
            alarm.shelf = None
            self._unshelve(alarm, "(shelf expired)")

    def _unshelve(self, alarm: _Alarm, who: str) -> Alarm:
        if alarm.shelf is not None and alarm.shelf.active():
            alarm.shelf.cancel()
        alarm.shelf = None
        alarm.shelved_by = alarm.shelved_reason = alarm.shelved_until = None
        log.info("alarm {id}: unshelved by {who}", id=alarm.id, who=who)
        if not alarm.active:
            alarm.acked = True  # nothing left to act on: it leaves the list
        else:
            alarm.acked = False
            alarm.acked_by = alarm.acked_at = alarm.ack_note = None
        self._changed(alarm)
        return alarm.snapshot()

    def _changed(self, alarm: _Alarm) -> None:
        """Publish the alarm's new state; drop it from the list when it is removed."""
        if alarm.state == "removed":
            self._alarms.pop(alarm.id, None)
            if alarm.shelf is not None and alarm.shelf.active():
                alarm.shelf.cancel()
        self._publish(alarm.snapshot())

    def _publish(self, snapshot: Alarm) -> None:
        self.bus.publish(AlarmChanged(snapshot, utc(self.clock.seconds())))

    def ids(self) -> Iterable[str]:
        """Ids of the alarms in the list."""
        return tuple(self._alarms)
