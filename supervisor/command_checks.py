"""The checks a command passes before anything is audited or sent, and the running
command's own state.  Kept apart from the dispatcher's send/confirm machinery: these are
the rules (who may, what exists, what is busy, the interlocks), that is the mechanism.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.messages import Valve
from st2000r.supervisor.authz import Source, authorize
from st2000r.supervisor.commands_model import (
    AlarmRequest,
    ReadNowRequest,
    Request,
    SetBaseRequest,
    ValveRequest,
)
from st2000r.supervisor.events import CommandRecord, MeterId

__all__ = ["CommandChecks", "WINDOW_S"]

WINDOW_S = 60.0  # the close-rate interlock's sliding window

_ERROR_NAMES = {
    m.ErrorReply.UNKNOWN_DI: "unknown data identifier",
    m.ErrorReply.BAD_PARAMETER: "bad parameter",
    m.ErrorReply.BUSY: "device busy",
    m.ErrorReply.NO_CHANNEL: "channel not fitted",
    m.ErrorReply.VALVE_FAULT: "valve fault",
}


def _error_text(reply: m.ErrorReply) -> str:
    return f"error status {reply.status:02X}h ({_ERROR_NAMES.get(reply.status, 'unknown status')})"


class _Command:
    """A command while it runs (the dispatcher's bookkeeping)."""

    __slots__ = ("id", "request", "kind", "target", "action", "record", "deferred", "mid", "link", "cdt",
                 "deadline", "send_timer", "call", "valve", "count", "attempts", "tx", "sent", "steps")

    def __init__(self, cid: str, request: Request, record: CommandRecord) -> None:
        self.id = cid
        self.request = request
        self.kind = record.kind
        self.target = record.target
        self.action = record.action
        self.record = record
        self.deferred: defer.Deferred = defer.Deferred()
        self.mid: MeterId | None = None
        self.link: Any = None
        self.cdt: Any = None
        self.deadline = 0.0
        self.send_timer: Any = None
        self.call: Any = None
        self.valve: Valve | None = None  # a valve command's target
        self.count: int | None = None  # a set-base command's pulse count
        self.attempts = 0
        self.tx: defer.Deferred | None = None
        self.sent = False
        self.steps: list[m.Message] = []



class CommandChecks:
    """The checks of :class:`~st2000r.supervisor.commands.CommandDispatcher` (a mixin: it
    reads the dispatcher's topology, points, masters, operators, interlocks and running
    commands).  Each returns None when the command may go on, else the reason in words."""

    topology: Any
    points: Any
    masters: Any
    operators: Any
    interlocks: Any
    clock: Any
    _running: dict
    _closes: dict

    # ---------------------------------------------------------------- checks

    def _check(self, command: _Command) -> str | None:
        request = command.request
        try:
            source = Source(request.source)
        except ValueError:
            return f"unknown source {request.source!r} (expected one of {', '.join(s.value for s in Source)})"
        if not request.who:
            return "no user given ('who' is empty)"
        why = authorize(self.operators, request.who, source, command.kind)
        if why is not None:
            return why
        if isinstance(request, AlarmRequest):
            return None if self.alarms is not None else "no alarm manager"
        if isinstance(request, (ValveRequest, SetBaseRequest)):
            why = self._resolve_meter(command, request.meter)
        elif isinstance(request, ReadNowRequest):
            why = self._resolve_meter(command, request.target) if request.target.count("/") == 3 else \
                self._resolve_cdt(command, request.target)
        else:
            why = self._resolve_cdt(command, f"{request.link}/{request.cdt}")
        if why is not None:
            return why
        if command.link.name not in self.masters:
            return f"link {command.link.name!r} has no bus master (not running)"
        if command.target in self._running:
            return f"busy: command {self._running[command.target].id} on {command.target} is still running"
        if isinstance(request, ValveRequest):
            return self._check_valve(command, request)
        if isinstance(request, SetBaseRequest):
            meter = self.points.meter_config(command.mid)
            steps, rest = divmod(request.value - meter.initial, meter.pulse_constant)
            if request.value < meter.initial or rest:
                return (f"base value {request.value} {meter.kind.base_unit} is not the meter's initial "
                        f"{meter.initial} plus a whole number of pulses of {meter.pulse_constant}")
            if steps > 0xFFFFFFFF:
                return f"base value {request.value} needs {steps} pulses, more than a CDT counter holds"
            command.count = steps
        return None

    def _resolve_meter(self, command: _Command, meter: MeterId | str) -> str | None:
        try:
            mid = meter if isinstance(meter, MeterId) else MeterId.parse(meter)
        except ValueError as exc:
            return str(exc)
        try:
            self.points.meter_config(mid)
        except KeyError:
            return f"no meter {mid} in the configuration"
        link = self.topology.link(mid.link)
        command.mid, command.link, command.cdt = mid, link, link.cdt(mid.cdt)
        command.target = str(mid)
        return None

    def _resolve_cdt(self, command: _Command, text: str) -> str | None:
        link_name, _, address = text.rpartition("/")
        if not link_name or not address.isdigit():
            return f"CDT {text!r}: expected LINK/CDT, e.g. 'bus1/3'"
        try:
            link = self.topology.link(link_name)
            cdt = link.cdt(int(address))
        except (KeyError, ValueError):
            return f"no CDT {text} in the configuration"
        command.link, command.cdt = link, cdt
        command.target = f"{link.name}/{cdt.address}"
        return None

    def _check_valve(self, command: _Command, request: ValveRequest) -> str | None:
        mid = command.mid
        point = self.points.meter(mid)
        if point.valve is Valve.NONE:
            return f"meter {mid} reports no valve fitted"
        command.valve = Valve.OPEN if request.open else Valve.CLOSED
        if request.open:
            return None
        meter = self.points.meter_config(mid)
        if meter.household is not None and meter.household in self.interlocks.protected_households:
            return f"interlock: household {meter.household!r} is protected (its meters are never closed)"
        limit = self.interlocks.max_closes_per_minute
        if limit == 0:
            return "interlock: closing valves is disabled (max_closes_per_minute = 0)"
        window = self._closes.setdefault(mid.link, deque())
        horizon = self.clock.seconds() - WINDOW_S
        while window and window[0] <= horizon:
            window.popleft()
        if len(window) >= limit:
            return f"interlock: {len(window)} closes on link {mid.link!r} in the last minute (limit {limit} per minute)"
        return None

