"""What can be asked of the command path: the request types and the handle a caller gets.

Every request names ``who`` asks, through which ``source`` (a
:class:`~st2000r.supervisor.authz.Source` or its spelling), why (``reason``, free text for
the audit log) and from where (``peer``: an API client's or Modbus master's address).
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer

from st2000r.config.model import MeterKind
from st2000r.supervisor.authz import Source
from st2000r.supervisor.events import CommandKind, MeterId

__all__ = [
    "ValveRequest",
    "ReadNowRequest",
    "SetBaseRequest",
    "TimeSyncRequest",
    "AlarmRequest",
    "Request",
    "CommandHandle",
    "describe",
    "METER_TYPES",
]

#: CJ/T 188 meter type of a valve command by meter kind
METER_TYPES: dict[MeterKind, int] = {MeterKind.WATER: 0x10, MeterKind.GAS: 0x30, MeterKind.ELECTRICITY: 0x40}


@dataclass(frozen=True, slots=True)
class ValveRequest:
    """Open (``open=True``) or close a meter's valve."""

    meter: MeterId | str
    open: bool
    who: str
    source: Source | str
    reason: str = ""
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class ReadNowRequest:
    """Read now: ``target`` is a CDT (``"link/cdt"``: every fitted channel, its alarms and
    status) or one meter (``"link/cdt/module/channel"``)."""

    target: str
    who: str
    source: Source | str
    reason: str = ""
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class SetBaseRequest:
    """Set a meter's reading to ``value`` (base units; e.g. the new meter's register after a
    replacement, usually its ``initial``): the CDT's pulse counter is set to
    ``(value - initial) / pulse_constant``."""

    meter: MeterId | str
    value: int
    who: str
    source: Source | str
    reason: str = ""
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class TimeSyncRequest:
    """Set the clock of CDT ``cdt`` on ``link`` to the supervisor's local time."""

    link: str
    cdt: int
    who: str
    source: Source | str
    reason: str = ""
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class AlarmRequest:
    """Acknowledge, shelve (for ``duration_s``; ``reason`` required) or unshelve an alarm.
    ``op``: ``CommandKind.ALARM_ACK`` / ``ALARM_SHELVE`` / ``ALARM_UNSHELVE``."""

    alarm: str
    op: CommandKind
    who: str
    source: Source | str
    reason: str = ""
    peer: str | None = None
    duration_s: float | None = None


Request = ValveRequest | ReadNowRequest | SetBaseRequest | TimeSyncRequest | AlarmRequest


@dataclass(frozen=True, slots=True)
class CommandHandle:
    """What :meth:`CommandDispatcher.submit` returns at once: the command's id (look it up
    with ``get``) and ``outcome``, a Deferred that fires with its final record (never
    errbacks)."""

    id: str
    outcome: defer.Deferred


def describe(request: Request) -> tuple[CommandKind, str, str]:
    """``(kind, target, action)`` of a request, as the audit log spells them."""
    match request:
        case ValveRequest():
            return CommandKind.VALVE, str(request.meter), "open" if request.open else "close"
        case ReadNowRequest():
            return CommandKind.READ_NOW, str(request.target), "read"
        case SetBaseRequest():
            return CommandKind.SET_BASE, str(request.meter), f"set base {request.value}"
        case TimeSyncRequest():
            return CommandKind.TIME_SYNC, f"{request.link}/{request.cdt}", "sync clock"
        case AlarmRequest():
            op = request.op if isinstance(request.op, CommandKind) else CommandKind(request.op)
            action = {CommandKind.ALARM_ACK: "acknowledge", CommandKind.ALARM_SHELVE: "shelve",
                      CommandKind.ALARM_UNSHELVE: "unshelve"}.get(op)
            if action is None:
                raise ValueError(f"not an alarm operation: {op}")
            return op, request.alarm, action
    raise TypeError(f"not a command request: {type(request).__name__}")
