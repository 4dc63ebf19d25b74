"""The supervisor's event stream: typed, frozen events and the bus that delivers them.

Producers (the point database, the alarm manager, the command dispatcher) ``publish``
events; consumers (the alarm manager, the bridge, the historian, the API) ``subscribe``.
Nothing polls.  Rules of :class:`EventBus`:

- delivery is synchronous, in publish order, to every subscriber in subscription order;
- an event published *while* events are being delivered (a subscriber reacting) is queued
  and delivered after the current one has reached every subscriber, so all subscribers see
  one and the same order;
- a subscriber that raises is logged (once per failure) and skipped for that event; the
  other subscribers and the publisher are unaffected;
- ``subscribe`` returns a callable that unsubscribes (idempotent).

Timestamps are timezone-aware UTC ``datetime`` values made from the injected clock's
``seconds()`` (:func:`utc`).  Quantities are integers of the meter's base unit (L or Wh).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twisted.logger import Logger

from st2000r.drivers.st2000r.messages import AlarmFlag, Valve

__all__ = [
    "MeterId",
    "Quality",
    "MeterChanged",
    "CdtChanged",
    "LinkChanged",
    "RoundDone",
    "Alarm",
    "AlarmChanged",
    "AuditRecord",
    "CommandFinished",
    "Event",
    "EventBus",
    "utc",
    "alarm_names",
]

log = Logger()


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
        """The CDT-wide channel number 1..96: ``(module - 1) * 3 + channel``."""
        return (self.module - 1) * 3 + self.channel

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

    GOOD: read in the last ``stale_after_s``.  STALE: not refreshed for ``stale_after_s``.
    COMM_FAIL: the last attempt to read it failed (value is the last good one).  ESTIMATED:
    computed, not read.  SUBSTITUTED: entered by an operator.
    """

    GOOD = "good"
    STALE = "stale"
    COMM_FAIL = "comm_fail"
    ESTIMATED = "estimated"
    SUBSTITUTED = "substituted"


@dataclass(frozen=True, slots=True)
class MeterChanged:
    """A meter's point changed (value, count, quality, valve or alarms; never a mere
    re-read of identical data).  ``value``: base units (``initial + count *
    pulse_constant``); ``value``/``count`` None and ``valve`` None while never read.
    ``timestamp``: when the value was read (UTC), None while never read."""

    meter: MeterId
    value: int | None
    count: int | None
    quality: Quality
    timestamp: datetime | None
    valve: Valve | None
    alarms: AlarmFlag


@dataclass(frozen=True, slots=True)
class CdtChanged:
    """A CDT's point changed.  ``online``: answered its last poll.  ``mains``/``battery_low``
    /``battery_mv``/``modules``: from its last status reply (None until one arrived).
    ``timestamp``: when the change was observed (UTC)."""

    link: str
    cdt: int
    online: bool
    mains: bool | None
    battery_low: bool | None
    battery_mv: int | None
    modules: frozenset[int] | None
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class LinkChanged:
    """A link's connection state or signal quality changed.  ``signal``: GSM CSQ 0..31
    (99 unknown) or None for links without one."""

    link: str
    connected: bool
    signal: int | None
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class RoundDone:
    """A poll round of ``plan`` (``kind`` ``"full"``/``"status"``) ended on ``link``: every
    CDT not demoted was tried once.  Times UTC."""

    link: str
    plan: str
    kind: str
    started: datetime
    ended: datetime


@dataclass(frozen=True, slots=True)
class Alarm:
    """A snapshot of one alarm (see ``st2000r.supervisor.alarms`` for the rules).

    ``id``: stable, e.g. ``"meter:bus1/3/2/1:tamper"``, ``"cdt:bus1/3:offline"``.
    ``source``: what it is about (``"bus1/3/2/1"``, ``"bus1/3"``, ``"bus1/R1"``, ``"bus1"``).
    ``kind``: ``tamper short open valve_fault offline mains battery_low suspected
    disconnected no_answer``.  ``severity``: ``critical major minor warning``.  ``state``:
    ``active-unacked``, ``active-acked``, ``cleared-unacked``, ``shelved`` or ``removed``
    (the last snapshot of an alarm leaving the list).  ``active``: the condition is present.
    Times UTC.  ``shelved_until``: UTC time the shelf ends.
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
        return {name: _jsonable(getattr(self, name)) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class AlarmChanged:
    """An alarm was raised, cleared, re-raised, acknowledged, shelved, unshelved or removed."""

    alarm: Alarm


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One valve command, as written to the audit log (one JSON line each).

    ``action``: ``"open"`` / ``"close"``.  ``source``: ``api modbus console plan cli``.
    ``result``: ``succeeded failed timed_out rejected``, or ``pending`` for the line written
    when a command is sent (its final line, same ``id``, follows).  ``meter``: the meter id
    string as given.  Times UTC; ``finished_at`` None while pending.
    """

    id: str
    who: str
    source: str
    peer: str | None
    reason: str
    meter: str
    action: str
    requested_at: datetime
    finished_at: datetime | None
    result: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601 strings."""
        return {name: _jsonable(getattr(self, name)) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class CommandFinished:
    """A valve command reached its outcome (``record.result`` is never ``pending``)."""

    record: AuditRecord


Event = MeterChanged | CdtChanged | LinkChanged | RoundDone | AlarmChanged | CommandFinished


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value if not isinstance(value, enum.IntFlag) else int(value)
    if isinstance(value, frozenset):
        return sorted(value)
    return value


class EventBus:
    """Synchronous fan-out of events to subscribers (rules in the module docstring)."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Any], None]] = []
        self._queue: deque[Any] = deque()
        self._delivering = False
        self.published = 0
        self.failures = 0

    def subscribe(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Deliver every later event to ``callback(event)``; returns the unsubscribe callable."""
        entry = [callback]  # a unique object per subscription, so one callback may subscribe twice

        def deliver(event: Any) -> None:
            entry[0](event)

        self._subscribers.append(deliver)

        def unsubscribe() -> None:
            try:
                self._subscribers.remove(deliver)
            except ValueError:
                pass

        return unsubscribe

    @property
    def subscribers(self) -> int:
        """How many subscriptions are active."""
        return len(self._subscribers)

    def publish(self, event: Any) -> None:
        """Deliver ``event`` to every subscriber (queued if a delivery is in progress).
        Never raises because of a subscriber."""
        self.published += 1
        self._queue.append(event)
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._queue:
                current = self._queue.popleft()
                for deliver in tuple(self._subscribers):
                    try:
                        deliver(current)
                    except Exception:
                        self.failures += 1
                        log.failure("event subscriber failed on {event_type}",
                                    event_type=type(current).__name__)
        finally:
            self._delivering = False
