"""The one command path: every write to the field and every alarm operation goes through here.

:meth:`CommandDispatcher.submit` takes a request and returns at once a
:class:`CommandHandle` — the command id, and a Deferred that fires with the final
:class:`~st2000r.supervisor.events.CommandRecord` (it never errbacks).  Commands can be
looked up by id (:meth:`~CommandDispatcher.get`) and by target
(:meth:`~CommandDispatcher.last_for`); every state change is published as a
``CommandChanged`` event and written to the audit log.  Only this module builds write
frames (a layer test says so); the bridge and the API use the dispatcher, never a master.

Kinds (:class:`~st2000r.supervisor.events.CommandKind`): valve open/close, read now (a CDT
or one meter), set base reading (the pulse counter of a replaced meter), CDT time sync, and
alarm acknowledge / shelve / unshelve.  Steps of a field command:

1. **checks** (any failure -> REFUSED with the reason; nothing is sent): the source and
   the caller's role (:mod:`st2000r.supervisor.authz`); the target exists and its link runs;
   no other command runs on the same target (``busy``); valve: the meter reports a valve;
   close: the household is not protected and the link had fewer than
   ``max_closes_per_minute`` accepted closes in the last 60 s; set base: the value is
   ``initial + k x pulse_constant``;
2. **audit first**: the PENDING record is written and synced; only then may the frame go
   on the wire.  An audit log that cannot be written refuses the command (and raises the
   ``system:audit:unwritable`` alarm until a write succeeds again);
3. **send within the deadline**: the frame is queued at ``Priority.COMMAND``; if it has not
   gone on the wire ``timeout_s`` after the request (link down, bus stuck) the command
   FAILS as "not sent" and is withdrawn — it is never sent later.  When the frame is
   written the command is SENT, and its own timeout starts then;
4. **confirm**: valve — read back the channel every ``confirm_interval_s`` until it shows
   the target (SUCCEEDED) or FAULT (FAILED), or ``timeout_s`` after the send (TIMED_OUT);
   set base — the CDT's reply must echo the count; time sync — the CDT's reply; read now —
   every reply.  Read-backs are ordinary transactions (purpose ``READ_BACK``): their
   replies reach the point database by the one path every reply takes.

**The audit never contradicts the field.**  After a valve command TIMED_OUT the meter is
watched for ``late_window_s``: a later reading (one more read-back is made after
``timeout_s``, and every plan round counts) that shows the target revises the outcome to
SUCCEEDED with ``late`` set, audited as a late confirmation.  A valve that changes state
with no command of ours running or watching raises ``meter:<id>:valve_moved`` (a second
master on the bus, a hand on the valve).  A command cut off by a crash (its last audit
line PENDING or SENT) is closed at the next start by :meth:`~CommandDispatcher.recover` as
INTERRUPTED, after a read-back of its valve.  Ids are unique across restarts (run id prefix).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from st2000r.config.model import Interlocks, Operator, Topology
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.master import LinkDown, Priority, TransactionError, TransactionTimeout
from st2000r.drivers.st2000r.messages import DiOrder, Valve
from st2000r.drivers.st2000r.poller import bulk_ranges
from st2000r.drivers.st2000r.reachability import Purpose
from st2000r.drivers.st2000r.timing import hops_latency_s
from st2000r.supervisor.audit import MemoryAudit
from st2000r.supervisor.authz import Source
from st2000r.supervisor.command_checks import CommandChecks, _Command, _error_text
from st2000r.supervisor.commands_model import (
    AlarmRequest,
    CommandHandle,
    ReadNowRequest,
    Request,
    SetBaseRequest,
    TimeSyncRequest,
    ValveRequest,
    METER_TYPES,
    describe,
)
from st2000r.supervisor.events import (
    CommandChanged,
    CommandKind,
    CommandRecord,
    CommandState,
    EventBus,
    MeterChanged,
    MeterId,
    utc,
)

__all__ = [
    "CommandDispatcher",
    "CommandHandle",
    "ValveRequest",
    "ReadNowRequest",
    "SetBaseRequest",
    "TimeSyncRequest",
    "AlarmRequest",
    "METER_TYPES",
    "AUDIT_ALARM",
]

log = Logger()

AUDIT_ALARM = "system:audit:unwritable"


class CommandDispatcher(CommandChecks):
    """Runs commands (rules in the module docstring).

    ``masters``: link name -> bus master.  ``points``: the point database (``meter``,
    ``meter_config``).  ``audit``: an ``AuditLog`` (default: in memory only).  ``alarms``:
    the alarm manager (alarm operations, the audit and valve-moved alarms).  ``timeout_s``:
    default ``topology.settings.command_timeout_s``.  ``local_time(seconds) -> datetime``:
    the wall time a time sync sets.  ``run_id``: prefix of this run's command ids.
    """

    def __init__(
        self,
        topology: Topology,
        clock: IReactorTime,
        masters: Mapping[str, Any],
        points: Any,
        bus: EventBus,
        *,
        audit: Any = None,
        alarms: Any = None,
        operators: tuple[Operator, ...] | None = None,
        interlocks: Interlocks | None = None,
        timeout_s: float | None = None,
        confirm_interval_s: float = 3.0,
        late_window_s: float = 3600.0,
        history_size: int = 10_000,
        local_time: Callable[[float], datetime] | None = None,
        run_id: str | None = None,
    ) -> None:
        self.topology = topology
        self.clock = clock
        self.masters = masters
        self.points = points
        self.bus = bus
        self.audit = audit if audit is not None else MemoryAudit()
        self.alarms = alarms
        self.operators = {o.name: o for o in (topology.operators if operators is None else operators)}
        self.interlocks = topology.interlocks if interlocks is None else interlocks
        self.timeout_s = float(topology.settings.command_timeout_s if timeout_s is None else timeout_s)
        self.confirm_interval_s = confirm_interval_s
        self.late_window_s = late_window_s
        self.local_time = local_time or datetime.fromtimestamp
        self.audit_failed: str | None = None
        self._history: OrderedDict[str, CommandRecord] = OrderedDict()
        self._history_size = history_size
        self._last: dict[str, str] = {}
        self._running: dict[str, _Command] = {}
        self._late: dict[MeterId, tuple[_Command, Any]] = {}
        self._valves: dict[MeterId, Valve] = {}
        self._closes: dict[str, deque[float]] = {}
        self._seq = itertools.count(1)
        self._prefix = (run_id or bus.run_id)[:8]
        self._unsubscribe = bus.subscribe(self._on_meter, MeterChanged)

    # ---------------------------------------------------------------- public API

    def submit(self, request: Request) -> CommandHandle:
        """Run ``request``; returns its handle at once (see the module docstring)."""
        now = self.clock.seconds()
        cid = f"{self._prefix}-{next(self._seq):06d}"
        kind, target, action = describe(request)
        source = request.source.value if isinstance(request.source, Source) else str(request.source)
        record = CommandRecord(id=cid, kind=kind, target=target, action=action, who=request.who, source=source,
                               peer=request.peer, reason=request.reason, requested_at=utc(now),
                               state=CommandState.PENDING, detail="accepted")
        command = _Command(cid, request, record)
        try:
            why = self._check(command)
        except Exception as exc:  # a check must never take the caller down
            log.failure("command {id}: check failed", id=cid)
            why = f"internal error while checking: {exc}"
        if why is not None:
            self._finish(command, CommandState.REFUSED, why)
            return CommandHandle(cid, command.deferred)
        if command.target != target:  # normalised by the checks (e.g. a MeterId)
            command.record = record = replace(record, target=command.target)
        if kind in (CommandKind.ALARM_ACK, CommandKind.ALARM_SHELVE, CommandKind.ALARM_UNSHELVE):
            self._alarm_op(command)
            return CommandHandle(cid, command.deferred)
        self._running[command.target] = command
        if kind is CommandKind.VALVE and not command.request.open:
            self._closes.setdefault(command.mid.link, deque()).append(now)
        self._store(record)
        self._publish(record)
        log.info("command {id}: {action} {target} by {who} via {source} ({reason})", id=cid, action=action,
                 target=command.target, who=request.who, source=source,
                 reason=request.reason or "no reason given")
        d = self._write_audit(record)
        d.addCallbacks(lambda _: self._start(command),
                       lambda f: self._finish(command, CommandState.REFUSED,
                                              f"the audit log cannot be written, so nothing is sent: "
                                              f"{f.getErrorMessage()}"))
        return CommandHandle(cid, command.deferred)

    def get(self, command_id: str) -> CommandRecord:
        """The current record of a command of this run or a recent one; ``KeyError``."""
        try:
            return self._history[command_id]
        except KeyError:
            raise KeyError(f"no command {command_id!r}") from None

    def last_for(self, target: str | MeterId) -> CommandRecord | None:
        """The newest command on ``target`` (a meter id, ``link/cdt`` or an alarm id)."""
        cid = self._last.get(str(target))
        return self._history.get(cid) if cid is not None else None

    def history(self, n: int | None = None) -> list[CommandRecord]:
        """The newest ``n`` (all kept) commands, oldest first, each as it is now."""
        items = list(self._history.values())
        return items if n is None else items[-n:]

    def running(self) -> tuple[str, ...]:
        """Targets with a command in progress."""
        return tuple(self._running)

    def shutdown(self) -> None:
        """Close every running command as INTERRUPTED (the supervisor is stopping)."""
        for command in list(self._running.values()):
            if command.tx is not None and not command.tx.called:
                command.tx.cancel()
            self._finish(command, CommandState.INTERRUPTED, "the supervisor stopped before the outcome was known")
        for _, timer in self._late.values():
            if timer.active():
                timer.cancel()
        self._late.clear()
        self._unsubscribe()

    def recover(self, records: Iterable[CommandRecord]) -> int:
        """Load the audit log's records of earlier runs into the history and close those cut
        off by a crash (last state PENDING or SENT) as INTERRUPTED — valve commands after
        reading the valve back.  Returns how many were closed."""
        closed = 0
        for record in records:
            self._store(record)
            if record.state.final:
                continue
            closed += 1
            command = _Command(record.id, ValveRequest(record.target, True, record.who, record.source), record)
            if (record.kind is CommandKind.VALVE and self._resolve_meter(command, record.target) is None
                    and command.link.name in self.masters):
                self._running.setdefault(record.target, command)
                command.valve = Valve.CLOSED if record.action == "close" else Valve.OPEN
                self._interrupted_read_back(command)
            else:
                self._finish(command, CommandState.INTERRUPTED, "cut off by a restart of the supervisor")
        return closed

    # ---------------------------------------------------------------- alarm operations

    def _alarm_op(self, command: _Command) -> None:
        from st2000r.supervisor.alarms import AlarmError

        request: AlarmRequest = command.request
        try:
            if command.kind is CommandKind.ALARM_ACK:
                self.alarms.acknowledge(request.alarm, request.who, request.reason)
                detail = "acknowledged"
            elif command.kind is CommandKind.ALARM_SHELVE:
                if request.duration_s is None:
                    raise AlarmError("shelve: a duration is required")
                until = self.clock.seconds() + request.duration_s
                self.alarms.shelve(request.alarm, request.who, request.reason, until)
                detail = f"shelved for {request.duration_s:g} s"
            else:
                self.alarms.unshelve(request.alarm, request.who)
                detail = "unshelved"
        except AlarmError as exc:
            self._finish(command, CommandState.REFUSED, str(exc))
            return
        self._finish(command, CommandState.SUCCEEDED, detail)

    # ---------------------------------------------------------------- field commands

    def _start(self, command: _Command) -> None:
        if not self._is_live(command):
            return
        remaining = command.record.requested_at.timestamp() + self.timeout_s - self.clock.seconds()
        if remaining <= 0:
            self._finish(command, CommandState.FAILED, f"not sent within {self.timeout_s:g} s; it will not be sent")
            return
        command.send_timer = self.clock.callLater(remaining, self._send_expired, command)
        link, cdt = command.link, command.cdt
        di = DiOrder(link.di_order)
        if command.kind is CommandKind.VALVE:
            meter = self.points.meter_config(command.mid)
            first = m.ValveControl(meter_type=METER_TYPES[meter.kind], address=meter.serial, di_order=di,
                                   open=command.request.open)
        elif command.kind is CommandKind.SET_BASE:
            first = m.SetBase(address=cdt.bcd_address, di_order=di, channel=command.mid.channel_no,
                              count=command.count)
        elif command.kind is CommandKind.TIME_SYNC:
            first = m.TimeSync(address=cdt.bcd_address, di_order=di,
                               time=self.local_time(self.clock.seconds()).replace(microsecond=0, tzinfo=None))
        else:
            ranges = ((command.mid.channel_no, 1),) if command.mid is not None else bulk_ranges(cdt)
            command.steps = [m.BulkRead(address=cdt.bcd_address, di_order=di, first_channel=f, count=c)
                             for f, c in ranges]
            if command.mid is None:
                command.steps += [m.ReadAlarms(address=cdt.bcd_address, di_order=di),
                                  m.ReadCdtStatus(address=cdt.bcd_address, di_order=di)]
            first = command.steps.pop(0)
        purpose = Purpose.READ_NOW if command.kind is CommandKind.READ_NOW else Purpose.COMMAND
        self._transact(command, first, purpose, self._replied)

    def _transact(self, command: _Command, request: m.Message, purpose: Purpose, on_reply: Callable,
                  on_error: Callable | None = None) -> None:
        priority = Priority.STATUS if command.kind is CommandKind.READ_NOW else Priority.COMMAND
        try:
            d = self.masters[command.link.name].transact(
                request, priority=priority, hops_latency_s=hops_latency_s(command.link, command.cdt.repeater),
                purpose=purpose, on_sent=lambda: self._on_sent(command))
        except Exception as exc:
            d = defer.fail(exc)
        command.tx = d
        d.addCallbacks(on_reply, on_error or self._tx_failed, callbackArgs=(command,), errbackArgs=(command,))
        d.addErrback(self._internal, command)

    def _on_sent(self, command: _Command) -> None:
        if command.sent or not self._is_live(command):
            return
        command.sent = True
        if command.send_timer is not None and command.send_timer.active():
            command.send_timer.cancel()
        command.send_timer = None
        now = self.clock.seconds()
        command.deadline = now + self.timeout_s
        self._update(command, CommandState.SENT, "frame on the wire", sent_at=utc(now))

    def _send_expired(self, command: _Command) -> None:
        command.send_timer = None
        if command.sent or not self._is_live(command):
            return
        tx = command.tx
        self._finish(command, CommandState.FAILED,
                     f"not sent within {self.timeout_s:g} s (link down or bus busy); withdrawn, it will not be sent")
        if tx is not None and not tx.called:
            tx.cancel()

    def _replied(self, reply: Any, command: _Command) -> None:
        if not self._is_live(command):
            return
        if isinstance(reply, m.ErrorReply):
            self._finish(command, CommandState.FAILED, f"refused by the field: {_error_text(reply)}")
        elif command.kind is CommandKind.VALVE:
            if not isinstance(reply, m.ValveReply):
                self._finish(command, CommandState.FAILED, f"unexpected reply: {type(reply).__name__}")
            else:
                self._read_back(command)
        elif command.kind is CommandKind.SET_BASE:
            if not isinstance(reply, m.SetBaseReply) or reply.count != command.count:
                got = getattr(reply, "count", type(reply).__name__)
                self._finish(command, CommandState.FAILED, f"the CDT did not confirm count {command.count} "
                                                           f"(it answered {got})")
            else:
                self._finish(command, CommandState.SUCCEEDED, f"pulse counter set to {command.count} "
                                                              "(confirmed by the CDT)")
                self._refresh(command)
        elif command.kind is CommandKind.TIME_SYNC:
            when = getattr(reply, "time", None)
            self._finish(command, CommandState.SUCCEEDED,
                         f"CDT clock set to {when.isoformat() if when else 'an unreadable time'}")
        elif command.steps:
            self._transact(command, command.steps.pop(0), Purpose.READ_NOW, self._replied)
        else:
            self._finish(command, CommandState.SUCCEEDED, "read")

    def _tx_failed(self, failure: Failure, command: _Command) -> None:
        if not self._is_live(command):
            return
        exc = failure.value
        if isinstance(exc, TransactionTimeout):
            self._finish(command, CommandState.TIMED_OUT, f"no reply: {exc}")
        elif isinstance(exc, LinkDown):
            state = CommandState.FAILED
            self._finish(command, state, f"link down, {'delivery unknown' if command.sent else 'not sent'}: {exc}")
        elif isinstance(exc, TransactionError):
            self._finish(command, CommandState.FAILED, f"failed: {exc}")
        elif isinstance(exc, defer.CancelledError):
            self._finish(command, CommandState.FAILED, "withdrawn before it was sent")
        else:
            self._finish(command, CommandState.FAILED, f"could not be sent: {exc!r}")

    def _read_back_request(self, command: _Command) -> m.BulkRead:
        return m.BulkRead(meter_type=m.CDT_TYPE, address=command.cdt.bcd_address,
                          di_order=DiOrder(command.link.di_order), first_channel=command.mid.channel_no, count=1)

    def _read_back(self, command: _Command) -> None:
        command.call = None
        if not self._is_live(command):
            return
        command.attempts += 1
        self._transact(command, self._read_back_request(command), Purpose.READ_BACK, self._read, self._read_failed)

    def _read_failed(self, failure: Failure, command: _Command) -> None:
        if not self._is_live(command):
            return
        if failure.check(TransactionTimeout):
            self._again(command, f"read-back got no reply: {failure.getErrorMessage()}")
        else:
            self._tx_failed(failure, command)

    def _read(self, reply: Any, command: _Command) -> None:
        if not self._is_live(command):
            return
        if isinstance(reply, m.ErrorReply):
            self._finish(command, CommandState.FAILED, f"read-back refused: {_error_text(reply)}")
            return
        if not isinstance(reply, m.BulkReadReply) or not reply.channels:
            self._finish(command, CommandState.FAILED, f"unexpected read-back reply: {type(reply).__name__}")
            return
        valve = reply.channels[0].valve
        if valve is command.valve:
            self._finish(command, CommandState.SUCCEEDED,
                         f"valve {valve.name.lower()} (confirmed by read-back {command.attempts})")
        elif valve is Valve.FAULT:
            self._finish(command, CommandState.FAILED, "valve reports FAULT (jammed motor?)")
        elif valve is Valve.NONE:
            self._finish(command, CommandState.FAILED, "the channel reports no valve fitted")
        else:
            self._again(command, f"valve still {valve.name.lower()}")

    def _again(self, command: _Command, state: str) -> None:
        if self.clock.seconds() + self.confirm_interval_s > command.deadline:
            self._finish(command, CommandState.TIMED_OUT, f"not confirmed within {self.timeout_s:g} s: {state}")
            return
        command.call = self.clock.callLater(self.confirm_interval_s, self._read_back, command)

    def _refresh(self, command: _Command) -> None:
        """One more read of the meter so the point database shows the result (fire and forget)."""
        try:
            d = self.masters[command.link.name].transact(
                self._read_back_request(command), priority=Priority.COMMAND,
                hops_latency_s=hops_latency_s(command.link, command.cdt.repeater), purpose=Purpose.READ_BACK)
            d.addErrback(lambda f: None)
        except Exception:
            log.failure("command {id}: refresh read failed", id=command.id)

    def _internal(self, failure: Failure, command: _Command) -> None:
        log.failure("command {id}: internal error", failure, id=command.id)
        if self._is_live(command):
            self._finish(command, CommandState.FAILED, f"internal error: {failure.getErrorMessage()}")

    # ---------------------------------------------------------------- late outcomes, foreign moves, recovery

    def _watch_late(self, command: _Command) -> None:
        old = self._late.pop(command.mid, None)
        if old is not None and old[1].active():
            old[1].cancel()
        timer = self.clock.callLater(self.late_window_s, self._late.pop, command.mid, None)
        self._late[command.mid] = (command, timer)
        self._refresh_later(command)

    def _refresh_later(self, command: _Command) -> None:
        call = self.clock.callLater(self.timeout_s, self._refresh, command)
        command.call = call

    def _on_meter(self, event: MeterChanged) -> None:
        mid, valve = event.meter, event.valve
        if valve is None:
            return
        before = self._valves.get(mid)
        self._valves[mid] = valve
        watched = self._late.get(mid)
        if watched is not None and valve is watched[0].valve:
            command, timer = self._late.pop(mid)
            if timer.active():
                timer.cancel()
            self._revise_late(command, event)
            return
        if (before in (Valve.OPEN, Valve.CLOSED) and valve in (Valve.OPEN, Valve.CLOSED) and valve is not before
                and str(mid) not in self._running and watched is None and self.alarms is not None):
            aid = f"meter:{mid}:valve_moved"
            self.alarms.raise_alarm(aid, str(mid), "valve_moved",
                                    f"meter {mid}: valve went {valve.name.lower()} with no command of ours "
                                    "(another master on the bus? a hand on the valve?)", "major")
            self.alarms.clear_alarm(aid, "an event: acknowledge it")

    def _revise_late(self, command: _Command, event: MeterChanged) -> None:
        record = self._history.get(command.id, command.record)
        when = event.timestamp.isoformat() if event.timestamp else "now"
        revised = replace(record, state=CommandState.SUCCEEDED, late=True, finished_at=event.at,
                          detail=f"confirmed late: valve {event.valve.name.lower()} read at {when} "
                                 f"(was: {record.state.value}: {record.detail})")
        log.info("command {id}: {action} {target} confirmed late", id=command.id, action=command.action,
                 target=command.target)
        self._store(revised)
        self._write_audit(revised).addErrback(lambda f: None)  # reported by _audit_failed
        self._publish(revised)

    def _interrupted_read_back(self, command: _Command) -> None:
        def read(reply: Any, command: _Command) -> None:
            valve = reply.channels[0].valve if isinstance(reply, m.BulkReadReply) and reply.channels else None
            seen = valve.name.lower() if valve is not None else f"unreadable ({type(reply).__name__})"
            reached = "reached" if valve is command.valve else "not reached"
            self._finish(command, CommandState.INTERRUPTED,
                         f"cut off by a restart; valve read back {seen} after the restart (target {reached})")

        def failed(failure: Failure, command: _Command) -> None:
            self._finish(command, CommandState.INTERRUPTED,
                         f"cut off by a restart; the valve could not be read back: {failure.getErrorMessage()}")

        d = self.masters[command.link.name].transact(
            self._read_back_request(command), priority=Priority.COMMAND,
            hops_latency_s=hops_latency_s(command.link, command.cdt.repeater), purpose=Purpose.READ_BACK)
        d.addCallbacks(read, failed, callbackArgs=(command,), errbackArgs=(command,))
        d.addErrback(self._internal, command)

    # ---------------------------------------------------------------- records

    def _is_live(self, command: _Command) -> bool:
        return self._running.get(command.target) is command

    def _store(self, record: CommandRecord) -> None:
        self._history[record.id] = record
        self._history.move_to_end(record.id)
        self._last[record.target] = record.id
        while len(self._history) > self._history_size:
            old_id, old = self._history.popitem(last=False)
            if self._last.get(old.target) == old_id:
                del self._last[old.target]

    def _publish(self, record: CommandRecord) -> None:
        self.bus.publish(CommandChanged(record, utc(self.clock.seconds())))

    def _update(self, command: _Command, state: CommandState, detail: str, **changes: Any) -> None:
        command.record = replace(command.record, state=state, detail=detail, **changes)
        self._store(command.record)
        self._write_audit(command.record).addErrback(lambda f: None)  # reported by _audit_failed
        self._publish(command.record)

    def _finish(self, command: _Command, state: CommandState, detail: str) -> None:
        if self._running.get(command.target) is command:
            del self._running[command.target]
        for name in ("call", "send_timer"):
            call = getattr(command, name)
            if call is not None and call.active():
                call.cancel()
            setattr(command, name, None)
        self._update(command, state, detail, finished_at=utc(self.clock.seconds()))
        record = command.record
        (log.info if state is CommandState.SUCCEEDED else log.warn)(
            "command {id}: {action} {target} {state}: {detail}", id=command.id, action=command.action,
            target=command.target, state=state.value, detail=detail)
        if state is CommandState.TIMED_OUT and command.kind is CommandKind.VALVE and command.sent:
            self._watch_late(command)
        if not command.deferred.called:
            command.deferred.callback(record)

    def _write_audit(self, record: CommandRecord) -> defer.Deferred:
        d = self.audit.append(record)
        d.addCallbacks(self._audit_ok, self._audit_failed, errbackArgs=(record,))
        return d

    def _audit_ok(self, result: Any) -> Any:
        if self.audit_failed is not None:
            self.audit_failed = None
            log.info("audit log writable again")
            if self.alarms is not None:
                self.alarms.clear_alarm(AUDIT_ALARM, "a record was written")
        return result

    def _audit_failed(self, failure: Failure, record: CommandRecord) -> Failure:
        why = failure.getErrorMessage()
        if self.audit_failed is None:
            log.error("audit log: record {id} not written: {why}; commands are refused until it is writable",
                      id=record.id, why=why)
            if self.alarms is not None:
                self.alarms.raise_alarm(AUDIT_ALARM, "system", "audit",
                                        f"the audit log cannot be written ({why}): commands are refused", "critical")
        self.audit_failed = why
        return failure
