"""The supervisor's events: typed, frozen, numbered, with one public JSON form.

Producers (the point database, the alarm manager, the command dispatcher) publish events
on the :class:`~st2000r.supervisor.eventbus.EventBus`; consumers subscribe by type.  Every
event carries

- ``seq``: strictly increasing over all event types within one run of the process, and
  ``run``: the id of that run (both stamped by the bus when it is published), so a
  consumer that resumes (``seq`` > last seen, same ``run``) misses nothing and one that
  sees a new ``run`` knows to resynchronise;
- ``at``: the time the event itself happened (UTC), e.g. when a CDT stopped answering,
  not when its meters were last read.

:func:`to_json` is the one serializer (documented with examples in ``docs/events.md``).
Quantities are integers of the meter's base unit (L or Wh); nothing here is a float.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from st2000r.drivers.st2000r.messages import AlarmFlag, Valve, channel_number
from st2000r.drivers.st2000r.reachability import Purpose

__all__ = [
    "MeterId",
    "Quality",
    "Purpose",
    "EventBase",
    "Reading",
    "ReadingBatch",
    "MeterChanged",
    "CdtChanged",
    "LinkState",
    "LinkChanged",
    "RoundDone",
    "Alarm",
    "AlarmChanged",
    "CommandKind",
    "CommandState",
    "CommandRecord",
    "CommandChanged",
    "HistorianChanged",
    "Event",
    "EVENT_TYPES",
    "COALESCING",
    "coalesce_key",
    "to_json",
    "jsonable",
    "utc",
    "alarm_names",
    "EventBus",
]


def utc(seconds: float) -> datetime:
    """The UTC datetime of a clock instant (``IReactorTime.seconds()``, POSIX seconds)."""
    return datetime.fromtimestamp(seconds, UTC)


def alarm_names(flags: AlarmFlag) -> list[str]:
    """Channel alarm flags as names, in bit order: ``["tamper", "short", "open"]`` subsets."""
    return [name for name, flag in (("tamper", AlarmFlag.TAMPER), ("short", AlarmFlag.SHORT),
                                    ("open", AlarmFlag.OPEN)) if flags & flag]


@dataclass(frozen=True, slots=True, order=True)
class MeterId:
    """Where a meter is wired: link name, CDT address, module 1..32, channel (input) 1..3.

    ``str()`` is ``"link/cdt/module/channel"``; :meth:`parse` reads it back.
    """

    link: str
    cdt: int
    module: int
    channel: int

    def __str__(self) -> str:
        return f"{self.link}/{self.cdt}/{self.module}/{self.channel}"

    @property
    def channel_no(self) -> int:
        """The CDT-wide channel number 1..96."""
        return channel_number(self.module, self.channel)

    @classmethod
    def parse(cls, text: str) -> MeterId:
        """Read ``"link/cdt/module/channel"``.  Raises ``ValueError`` naming what is wrong
        (not four parts, a number that is not a decimal integer, module outside 1..32,
        channel outside 1..3, CDT outside 1..99999999)."""
        parts = str(text).split("/")
        if len(parts) != 4 or not parts[0]:
            raise ValueError(f"meter id {text!r}: expected LINK/CDT/MODULE/CHANNEL, e.g. 'bus1/3/2/1'")
        link, *numbers = parts
        values = []
        for name, raw, lo, hi in zip(("CDT", "module", "channel"), numbers, (1, 1, 1), (99_999_999, 32, 3)):
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 8):
                raise ValueError(f"meter id {text!r}: {name} {raw!r} is not a number")
            value = int(raw)
            if not lo <= value <= hi:
                raise ValueError(f"meter id {text!r}: {name} {value} outside {lo}..{hi}")
            values.append(value)
        return cls(link, *values)


class Quality(enum.Enum):
    """How far a meter's value can be trusted.  ``value`` is the JSON spelling.

    GOOD: read, and its CDT answers.  STALE: not refreshed for ``stale_after_s``, or
    restored from the state folder after a restart and not read since.  COMM_FAIL: its
    link is down or its CDT stopped answering (the value is the last good one).
    ESTIMATED: computed, not read.  SUBSTITUTED: entered by an operator.
    """

    GOOD = "good"
    STALE = "stale"
    COMM_FAIL = "comm_fail"
    ESTIMATED = "estimated"
    SUBSTITUTED = "substituted"



@dataclass(frozen=True, slots=True, kw_only=True)
class EventBase:
    """What every event carries besides its own fields; ``seq`` and ``run`` are 0 and ""
    until the bus publishes it."""

    seq: int = 0
    run: str = ""


@dataclass(frozen=True, slots=True)
class Reading:
    """One meter's value as one reply reported it.  ``value``: base units
    (``initial + count * pulse_constant``); ``count``: pulses."""

    meter: MeterId
    value: int
    count: int
    valve: Valve
    alarms: AlarmFlag


@dataclass(frozen=True, slots=True)
class ReadingBatch(EventBase):
    """Every configured, fitted meter of one reply that carries readings (a bulk read of a
    plan round, an on-demand read or a command read-back), whether or not a value changed:
    the record a historian stores.  ``source``: why it was read; ``plan``: the reading
    plan's name for ``source`` PLAN."""

    link: str
    cdt: int
    at: datetime
    source: Purpose
    plan: str | None
    readings: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class MeterChanged(EventBase):
    """A meter's point changed (value, count, quality, valve or alarms; never a mere
    re-read of identical data).  ``timestamp``: when the value was read (None while never
    read); ``quality_since``: when the quality became what it is; ``at``: when this change
    happened."""

    meter: MeterId
    value: int | None
    count: int | None
    quality: Quality
    timestamp: datetime | None
    valve: Valve | None
    alarms: AlarmFlag
    quality_since: datetime | None
    at: datetime


@dataclass(frozen=True, slots=True)
class CdtChanged(EventBase):
    """A CDT's point changed.  ``online``: it answers (from the link's reachability); None:
    not known (never tried, or its link just came back); ``mains``/``battery_low``/
    ``battery_mv``/``modules``: from its last status reply (None until one arrived).
    ``at``: when the change happened."""

    link: str
    cdt: int
    online: bool | None
    mains: bool | None
    battery_low: bool | None
    battery_mv: int | None
    modules: frozenset[int] | None
    at: datetime


class LinkState(enum.Enum):
    """A link's byte pipe.  STOPPED: the supervisor stopped it on purpose; IDLE: an
    on-demand link (a GSM data call) hung up between rounds.  Neither is a fault."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    STOPPED = "stopped"
    IDLE = "idle"


@dataclass(frozen=True, slots=True)
class LinkChanged(EventBase):
    """A link's state or signal quality changed.  ``signal``: GSM CSQ 0..31 (99 unknown)
    or None for links without one."""

    link: str
    state: LinkState
    signal: int | None
    at: datetime

    @property
    def connected(self) -> bool:
        return self.state is LinkState.CONNECTED


@dataclass(frozen=True, slots=True)
class RoundDone(EventBase):
    """A poll round of ``plan`` (``kind`` ``"full"``/``"status"``) ended on ``link``: every
    CDT not demoted was tried once.  ``at`` is ``ended``."""

    link: str
    plan: str
    kind: str
    started: datetime
    ended: datetime
    at: datetime


@dataclass(frozen=True, slots=True)
class Alarm:
    """A snapshot of one alarm (see ``st2000r.supervisor.alarms`` for the rules).

    ``id``: stable, e.g. ``"meter:bus1/3/2/1:tamper"``, ``"cdt:bus1/3:offline"``.
    ``source``: what it is about (``"bus1/3/2/1"``, ``"bus1/3"``, ``"bus1/R1"``, ``"bus1"``).
    ``kind``: ``tamper short open valve_fault valve_moved offline mains battery_low
    suspected disconnected no_answer audit``.  ``severity``: ``critical major minor
    warning``.  ``state``: ``active-unacked``, ``active-acked``, ``cleared-unacked``,
    ``shelved`` or ``removed`` (the last snapshot of an alarm leaving the list).
    ``active``: the condition is present.  Times UTC.
    """

    id: str
    source: str
    kind: str
    severity: str
    text: str
    state: str
    active: bool
    raised_at: datetime
    cleared_at: datetime | None = None
    acked_by: str | None = None
    acked_at: datetime | None = None
    ack_note: str | None = None
    shelved_by: str | None = None
    shelved_reason: str | None = None
    shelved_until: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601 strings."""
        return jsonable(self)


@dataclass(frozen=True, slots=True)
class AlarmChanged(EventBase):
    """An alarm was raised, cleared, re-raised, acknowledged, shelved, unshelved or removed."""

    alarm: Alarm
    at: datetime


class CommandKind(enum.Enum):
    """What a command does.  The alarm operations go through the same authorisation and
    audit as the field commands."""

    VALVE = "valve"
    READ_NOW = "read_now"
    SET_BASE = "set_base"
    TIME_SYNC = "time_sync"
    ALARM_ACK = "alarm_ack"
    ALARM_SHELVE = "alarm_shelve"
    ALARM_UNSHELVE = "alarm_unshelve"


class CommandState(enum.Enum):
    """Where a command is.  PENDING: accepted, audited, waiting for the bus; SENT: its
    frame went on the wire; the rest are final.  REFUSED: failed a check, nothing was
    sent.  INTERRUPTED: the supervisor stopped or crashed before the outcome was known
    (closed at the next start, after a read-back where there is something to read)."""

    PENDING = "pending"
    SENT = "sent"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    REFUSED = "refused"
    INTERRUPTED = "interrupted"

    @property
    def final(self) -> bool:
        return self not in (CommandState.PENDING, CommandState.SENT)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandRecord:
    """One command as the audit log and the event stream see it.  ``target``: a meter id
    (``link/cdt/module/channel``), a CDT (``link/cdt``) or an alarm id; ``action``: what
    was asked in words (``close``, ``open``, ``read``, ``set base 123456 L``, ``sync``,
    ``acknowledge`` …).  Times UTC; ``sent_at`` None until the frame went on the wire;
    ``finished_at`` None until final.  ``late``: a final outcome revised by a later
    read-back (the audit never contradicts the field)."""

    id: str
    kind: CommandKind
    target: str
    action: str
    who: str
    source: str
    peer: str | None
    reason: str
    requested_at: datetime
    state: CommandState
    detail: str
    sent_at: datetime | None = None
    finished_at: datetime | None = None
    late: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (one audit-log line)."""
        return jsonable(self)


@dataclass(frozen=True, slots=True)
class CommandChanged(EventBase):
    """A command changed state (accepted, sent, finished, or revised late)."""

    command: CommandRecord
    at: datetime


@dataclass(frozen=True, slots=True)
class HistorianChanged(EventBase):
    """The historian's writer and its backlog, for the Modbus status registers, the API and
    the console.  Published when ``state`` (or ``problem``) changes, and while the figures
    move at most every few seconds (``Historian.status_every_s``).  ``state``:
    ``starting`` | ``connected`` | ``unreachable`` | ``schema`` (refusing to write an older
    schema; ``problem`` says which command fixes it); ``spool_rows``/``spool_bytes``: rows
    not yet committed to the database; ``spool_max_bytes``: the spool's bound (an alarm at
    80 %); ``oldest_age_s``: whole seconds since the oldest of them was spooled (0: none);
    ``write_rate``: rows committed per second over about the last minute, rounded;
    ``written``/``quarantined``: rows committed / set aside since the start."""

    state: str
    problem: str | None
    spool_rows: int
    spool_bytes: int
    spool_max_bytes: int
    oldest_age_s: int
    write_rate: int
    written: int
    quarantined: int
    at: datetime


Event = (ReadingBatch | MeterChanged | CdtChanged | LinkChanged | RoundDone | AlarmChanged | CommandChanged
         | HistorianChanged)
EVENT_TYPES: tuple[type, ...] = (ReadingBatch, MeterChanged, CdtChanged, LinkChanged, RoundDone, AlarmChanged,
                                 CommandChanged, HistorianChanged)
#: change events a bounded consumer queue may coalesce (only the newest state of a point matters)
COALESCING: tuple[type, ...] = (MeterChanged, CdtChanged, LinkChanged, HistorianChanged)


def coalesce_key(event: Any) -> Any:
    """The point a change event is about (None for events that are never coalesced)."""
    t = type(event)
    if t is MeterChanged:
        return event.meter
    if t is CdtChanged:
        return (CdtChanged, event.link, event.cdt)
    if t is LinkChanged:
        return (LinkChanged, event.link)
    if t is HistorianChanged:
        return HistorianChanged
    return None


def jsonable(value: Any) -> Any:
    """JSON-ready data of any value that appears in an event: datetimes as ISO 8601,
    meter ids as ``"link/cdt/module/channel"``, alarm flags as a list of names, valves as
    ``"open"``/``"closed"``/``"fault"``/``"none"``, other enums by value, sets sorted,
    dataclasses as objects."""
    if value is None or isinstance(value, (bool, int, str)) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, MeterId):
        return str(value)
    if isinstance(value, AlarmFlag):
        return alarm_names(value)
    if isinstance(value, Valve):
        return value.name.lower()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (frozenset, set)):
        return sorted(value)
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, float):
        return value
    raise TypeError(f"cannot make {type(value).__name__} JSON-ready")


def to_json(event: Any) -> dict[str, Any]:
    """The documented JSON form of an event: ``{"type": "MeterChanged", "seq": …,
    "run": …, "at": …, <its fields>}``."""
    out: dict[str, Any] = {"type": type(event).__name__}
    out.update(jsonable(event))
    return out


def __getattr__(name: str) -> Any:
    """``EventBus`` is re-exported from :mod:`~st2000r.supervisor.eventbus`, lazily: that module
    imports the types above, so either module may be imported first."""
    if name == "EventBus":
        from st2000r.supervisor.eventbus import EventBus

        return EventBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
