"""The one write path: every valve command, from any source, goes through here.

:meth:`CommandDispatcher.submit` takes a :class:`ValveRequest` and returns a Deferred that
always fires (never errbacks) with a :class:`CommandOutcome` whose ``result`` is one of
``succeeded``, ``failed``, ``timed_out``, ``rejected``.  Steps, in order:

1. **checks** (any failure -> ``rejected`` with the reason; nothing is sent):
   the source is known; the caller may operate valves (below); the meter exists; no other
   command for the same meter is running (``busy``); the meter reports a valve (not
   ``Valve.NONE``); for a close: the household is not protected, and the link has had fewer
   than ``max_closes_per_minute`` accepted closes in the last 60 s (sliding window);
2. **send** ``ValveControl`` (meter type by kind: water 10h, gas 30h, electricity 40h;
   address = the meter serial; the link's DI order) at ``Priority.COMMAND``.  A
   ``ValveReply`` continues; an ``ErrorReply`` -> ``failed`` (status named);
   ``TransactionTimeout`` -> ``timed_out``; ``LinkDown`` -> ``failed``;
3. **confirm by read-back**: ``BulkRead(first_channel=n, count=1)`` of the meter's CDT at
   ``Priority.COMMAND``, repeated every ``confirm_interval_s`` until the channel's valve is
   the target (``succeeded``) or ``FAULT`` (``failed``), or ``timeout_s`` after the send
   (``timed_out``; the motor takes seconds).  A read-back that times out is tried again
   until the deadline; an ``ErrorReply`` or ``LinkDown`` -> ``failed``.  Read-backs are
   also handed to the point database (``points.on_bulk``).

Permissions: sources ``api``, ``console`` and ``cli`` act as the operator named ``who``,
who must be in ``operators`` with role ``operator``, ``engineer`` or ``admin`` (a
``viewer`` is refused, an unknown name is refused).  Source ``modbus`` (the bridge, whose
masters have no login) acts as the configured operator named ``"modbus"`` — Modbus writes
are refused unless that service identity is configured with a role that may operate;
``who`` is still recorded.  Source ``plan`` is the supervisor's own scheduler and acts with
the ``operator`` role.

Audit: every submission — rejected ones too — gets an :class:`AuditRecord` in an in-memory
ring (``ring_size`` newest) and, with ``audit_path``, one JSON line per record appended to
that file (opened, written, flushed, fsynced and closed per record, so a crash loses
nothing written).  A command that is sent first writes a ``pending`` line, then its final
line with the same ``id``.  A write error is logged and counted, never raised.
``CommandFinished`` is published on the event bus for every outcome.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from st2000r.config.model import Interlocks, MeterKind, Operator, Topology
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.master import LinkDown, Priority, TransactionError, TransactionTimeout
from st2000r.drivers.st2000r.messages import DiOrder, Valve
from st2000r.drivers.st2000r.timing import hops_latency_s
from st2000r.supervisor.events import AuditRecord, CommandFinished, EventBus, MeterId, utc

__all__ = [
    "CommandDispatcher",
    "ValveRequest",
    "CommandOutcome",
    "SOURCES",
    "RESULTS",
    "OPERATING_ROLES",
    "METER_TYPES",
]

log = Logger()

SOURCES: tuple[str, ...] = ("api", "modbus", "console", "plan", "cli")
RESULTS: tuple[str, ...] = ("succeeded", "failed", "timed_out", "rejected")
#: roles that may operate valves
OPERATING_ROLES: frozenset[str] = frozenset({"operator", "engineer", "admin"})
#: CJ/T 188 meter type of a valve command by meter kind
METER_TYPES: dict[MeterKind, int] = {MeterKind.WATER: 0x10, MeterKind.GAS: 0x30, MeterKind.ELECTRICITY: 0x40}
MODBUS_IDENTITY = "modbus"
WINDOW_S = 60.0

_ERROR_NAMES = {
    m.ErrorReply.UNKNOWN_DI: "unknown data identifier",
    m.ErrorReply.BAD_PARAMETER: "bad parameter",
    m.ErrorReply.BUSY: "device busy",
    m.ErrorReply.NO_CHANNEL: "channel not fitted",
    m.ErrorReply.VALVE_FAULT: "valve fault",
}


@dataclass(frozen=True, slots=True)
class ValveRequest:
    """Open (``open=True``) or close a meter's valve.  ``who``: the operator (or service)
    asking; ``source``: one of ``SOURCES``; ``reason``: free text for the audit log;
    ``peer``: where the request came from (address of an API client, Modbus master ...)."""

    meter: MeterId | str
    open: bool
    who: str
    source: str
    reason: str = ""
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """The definite outcome of one request.  ``result``: one of ``RESULTS``; ``detail``: why,
    in words; ``record``: the final audit record."""

    result: str
    detail: str
    record: AuditRecord


class _Command:
    __slots__ = ("id", "request", "mid", "action", "requested_at", "deferred", "deadline", "call", "target",
                 "attempts")

    def __init__(self, cid: str, request: ValveRequest, action: str, requested_at: float) -> None:
        self.id = cid
        self.request = request
        self.mid: MeterId | None = None
        self.action = action
        self.requested_at = requested_at
        self.deferred: defer.Deferred = defer.Deferred()
        self.deadline = 0.0
        self.call: Any = None
        self.target = Valve.OPEN if request.open else Valve.CLOSED
        self.attempts = 0


class CommandDispatcher:
    """Runs valve commands (rules in the module docstring).

    ``masters``: link name -> bus master (anything with ``transact(request, *, priority,
    hops_latency_s) -> Deferred``).  ``points``: the point database (``meter(id)`` for the
    last known valve, ``on_bulk`` for read-backs).  ``operators``/``interlocks`` default to
    the topology's.  ``timeout_s``: read-back deadline after the send (default
    ``topology.settings.command_timeout_s``).  ``confirm_interval_s``: time between
    read-backs.
    """

    def __init__(
        self,
        topology: Topology,
        clock: IReactorTime,
        masters: Mapping[str, Any],
        points: Any,
        bus: EventBus,
        *,
        audit_path: str | os.PathLike[str] | None = None,
        operators: tuple[Operator, ...] | None = None,
        interlocks: Interlocks | None = None,
        timeout_s: float | None = None,
        confirm_interval_s: float = 3.0,
        ring_size: int = 1000,
    ) -> None:
        self.topology = topology
        self.clock = clock
        self.masters = masters
        self.points = points
        self.bus = bus
        self.audit_path = os.fspath(audit_path) if audit_path is not None else None
        self.operators = {o.name: o for o in (topology.operators if operators is None else operators)}
        self.interlocks = topology.interlocks if interlocks is None else interlocks
        self.timeout_s = float(topology.settings.command_timeout_s if timeout_s is None else timeout_s)
        self.confirm_interval_s = confirm_interval_s
        self.audit: deque[AuditRecord] = deque(maxlen=ring_size)
        self.audit_errors = 0
        self._running: dict[MeterId, _Command] = {}
        self._closes: dict[str, deque[float]] = {}
        self._seq = itertools.count(1)
        self._boot = f"{int(clock.seconds()):x}"

    # ---------------------------------------------------------------- public API

    def submit(self, request: ValveRequest) -> defer.Deferred:
        """Run ``request``; the Deferred fires with a :class:`CommandOutcome` (never errbacks)."""
        now = self.clock.seconds()
        action = "open" if request.open else "close"
        command = _Command(f"{self._boot}-{next(self._seq)}", request, action, now)
        try:
            reason = self._check(command)
        except Exception as exc:  # a check must never take the caller down
            log.failure("command {id}: check failed", id=command.id)
            reason = f"internal error while checking: {exc}"
        if reason is not None:
            self._finish(command, "rejected", reason)
            return command.deferred
        mid = command.mid
        self._running[mid] = command
        if not request.open:
            self._closes.setdefault(mid.link, deque()).append(now)
        self._write_audit(self._record(command, "pending", "sent", finished=False))
        log.info("command {id}: {action} {meter} by {who} via {source} ({reason})", id=command.id, action=action,
                 meter=str(mid), who=request.who, source=request.source, reason=request.reason or "no reason given")
        self._send(command)
        return command.deferred

    def running(self) -> tuple[MeterId, ...]:
        """Meters with a command in progress."""
        return tuple(self._running)

    def recent(self, n: int | None = None) -> list[AuditRecord]:
        """The newest ``n`` (all) audit records of the ring, oldest first."""
        items = list(self.audit)
        return items if n is None else items[-n:]

    def shutdown(self) -> None:
        """Finish every running command as ``failed`` ("supervisor stopping")."""
        for command in list(self._running.values()):
            if command.call is not None and command.call.active():
                command.call.cancel()
            self._finish(command, "failed", "supervisor stopping before the command was confirmed")

    # ---------------------------------------------------------------- checks

    def _check(self, command: _Command) -> str | None:
        request = command.request
        if request.source not in SOURCES:
            return f"unknown source {request.source!r} (expected one of {', '.join(SOURCES)})"
        if not request.who:
            return "no user given ('who' is empty)"
        reason = self._permission(request)
        if reason is not None:
            return reason
        if isinstance(request.meter, MeterId):
            mid = request.meter
        else:
            try:
                mid = MeterId.parse(request.meter)
            except ValueError as exc:
                return str(exc)
        try:
            meter = self.points.meter_config(mid)
            point = self.points.meter(mid)
        except KeyError:
            return f"no meter {mid} in the configuration"
        command.mid = mid
        if mid.link not in self.masters:
            return f"link {mid.link!r} has no bus master (not running)"
        if mid in self._running:
            return f"busy: command {self._running[mid].id} for meter {mid} is still running"
        if point.valve is Valve.NONE:
            return f"meter {mid} reports no valve fitted"
        if not request.open:
            if meter.household is not None and meter.household in self.interlocks.protected_households:
                return f"interlock: household {meter.household!r} is protected (its meters are never closed)"
            limit = self.interlocks.max_closes_per_minute
            window = self._closes.setdefault(mid.link, deque())
            horizon = self.clock.seconds() - WINDOW_S
            while window and window[0] <= horizon:
                window.popleft()
            if limit == 0:
                return "interlock: closing valves is disabled (max_closes_per_minute = 0)"
            if len(window) >= limit:
                return (f"interlock: {len(window)} closes on link {mid.link!r} in the last minute "
                        f"(limit {limit} per minute)")
        return None

    def _permission(self, request: ValveRequest) -> str | None:
        if request.source == "plan":
            return None
        name = MODBUS_IDENTITY if request.source == "modbus" else request.who
        operator = self.operators.get(name)
        if operator is None:
            if request.source == "modbus":
                return ("permission denied: Modbus writes need the service identity 'modbus' in [[operators]] "
                        "with role operator, engineer or admin")
            return f"permission denied: unknown user {name!r}"
        if operator.role not in OPERATING_ROLES:
            return f"permission denied: {name!r} is a {operator.role} (operating valves needs operator or above)"
        return None

    # ---------------------------------------------------------------- send and confirm

    def _meter_and_cdt(self, command: _Command) -> tuple[Any, Any, Any]:
        mid = command.mid
        link = self.topology.link(mid.link)
        cdt = link.cdt(mid.cdt)
        return link, cdt, self.points.meter_config(mid)

    def _send(self, command: _Command) -> None:
        link, cdt, meter = self._meter_and_cdt(command)
        request = m.ValveControl(meter_type=METER_TYPES[meter.kind], address=meter.serial,
                                 di_order=DiOrder(link.di_order), open=command.request.open)
        hops = hops_latency_s(link, cdt.repeater)
        command.deadline = self.clock.seconds() + self.timeout_s
        d = self._transact(command.mid.link, request, hops)
        d.addCallbacks(self._sent, self._send_failed, callbackArgs=(command,), errbackArgs=(command,))
        d.addErrback(self._internal, command)

    def _transact(self, link: str, request: m.Message, hops: float) -> defer.Deferred:
        try:
            return defer.maybeDeferred(self.masters[link].transact, request, priority=Priority.COMMAND,
                                       hops_latency_s=hops)
        except Exception as exc:  # maybeDeferred catches; this is belt and braces
            return defer.fail(exc)

    def _sent(self, reply: Any, command: _Command) -> None:
        if not self._is_live(command):
            return
        if isinstance(reply, m.ErrorReply):
            self._finish(command, "failed", f"valve command refused: {self._error_text(reply)}")
            return
        if not isinstance(reply, m.ValveReply):
            self._finish(command, "failed", f"unexpected reply to the valve command: {type(reply).__name__}")
            return
        self._read_back(command)

    def _send_failed(self, failure: Failure, command: _Command) -> None:
        if not self._is_live(command):
            return
        exc = failure.value
        if isinstance(exc, TransactionTimeout):
            self._finish(command, "timed_out", f"no reply to the valve command: {exc}")
        elif isinstance(exc, LinkDown):
            self._finish(command, "failed", f"link down, valve command not delivered: {exc}")
        elif isinstance(exc, TransactionError):
            self._finish(command, "failed", f"valve command failed: {exc}")
        else:
            self._finish(command, "failed", f"valve command could not be sent: {exc!r}")

    def _read_back(self, command: _Command) -> None:
        command.call = None
        if not self._is_live(command):
            return
        link, cdt, _ = self._meter_and_cdt(command)
        n = command.mid.channel_no
        request = m.BulkRead(meter_type=m.CDT_TYPE, address=cdt.bcd_address, di_order=DiOrder(link.di_order),
                             first_channel=n, count=1)
        command.attempts += 1
        d = self._transact(link.name, request, hops_latency_s(link, cdt.repeater))
        d.addCallbacks(self._read, self._read_failed, callbackArgs=(command,), errbackArgs=(command,))
        d.addErrback(self._internal, command)

    def _read(self, reply: Any, command: _Command) -> None:
        if not self._is_live(command):
            return
        if isinstance(reply, m.ErrorReply):
            self._finish(command, "failed", f"read-back refused: {self._error_text(reply)}")
            return
        if not isinstance(reply, m.BulkReadReply) or not reply.channels:
            self._finish(command, "failed", f"unexpected read-back reply: {type(reply).__name__}")
            return
        self.points.on_bulk(command.mid.link, command.mid.cdt, reply, self.clock.seconds())
        valve = reply.channels[0].valve
        if valve is command.target:
            self._finish(command, "succeeded", f"valve {valve.name.lower()} (confirmed by read-back "
                                               f"{command.attempts})")
        elif valve is Valve.FAULT:
            self._finish(command, "failed", "valve reports FAULT (jammed motor?)")
        elif valve is Valve.NONE:
            self._finish(command, "failed", "the channel reports no valve fitted")
        else:
            self._again(command, f"valve still {valve.name.lower()}")

    def _read_failed(self, failure: Failure, command: _Command) -> None:
        if not self._is_live(command):
            return
        exc = failure.value
        if isinstance(exc, TransactionTimeout):
            self._again(command, f"read-back got no reply: {exc}")
        elif isinstance(exc, TransactionError):
            self._finish(command, "failed", f"read-back failed: {exc}")
        else:
            self._finish(command, "failed", f"read-back could not be sent: {exc!r}")

    def _again(self, command: _Command, state: str) -> None:
        now = self.clock.seconds()
        if now + self.confirm_interval_s > command.deadline:
            self._finish(command, "timed_out", f"not confirmed within {self.timeout_s:g} s: {state}")
            return
        command.call = self.clock.callLater(self.confirm_interval_s, self._read_back, command)

    def _internal(self, failure: Failure, command: _Command) -> None:
        log.failure("command {id}: internal error", failure, id=command.id)
        if self._is_live(command):
            self._finish(command, "failed", f"internal error: {failure.getErrorMessage()}")

    # ---------------------------------------------------------------- outcome and audit

    def _is_live(self, command: _Command) -> bool:
        return command.mid is not None and self._running.get(command.mid) is command

    @staticmethod
    def _error_text(reply: m.ErrorReply) -> str:
        name = _ERROR_NAMES.get(reply.status, "unknown status")
        return f"error status {reply.status:02X}h ({name})"

    def _record(self, command: _Command, result: str, detail: str, *, finished: bool = True) -> AuditRecord:
        request = command.request
        return AuditRecord(
            id=command.id, who=request.who, source=request.source, peer=request.peer, reason=request.reason,
            meter=str(command.mid if command.mid is not None else request.meter), action=command.action,
            requested_at=utc(command.requested_at), finished_at=utc(self.clock.seconds()) if finished else None,
            result=result, detail=detail,
        )

    def _finish(self, command: _Command, result: str, detail: str) -> None:
        if command.mid is not None and self._running.get(command.mid) is command:
            del self._running[command.mid]
        if command.call is not None and command.call.active():
            command.call.cancel()
        command.call = None
        record = self._record(command, result, detail)
        self.audit.append(record)
        self._write_audit(record)
        log_fn = log.info if result == "succeeded" else log.warn
        log_fn("command {id}: {action} {meter} {result}: {detail}", id=command.id, action=command.action,
               meter=record.meter, result=result, detail=detail)
        outcome = CommandOutcome(result, detail, record)
        try:
            self.bus.publish(CommandFinished(record))
        finally:
            if not command.deferred.called:
                command.deferred.callback(outcome)

    def _write_audit(self, record: AuditRecord) -> None:
        if self.audit_path is None:
            return
        line = json.dumps(record.as_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            directory = os.path.dirname(self.audit_path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            with open(self.audit_path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            self.audit_errors += 1
            log.error("audit log {path}: cannot write record {id}: {error}", path=self.audit_path, id=record.id,
                      error=exc)
