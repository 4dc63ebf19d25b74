"""The point database's snapshots: what a query returns, frozen, each with its JSON form.

Kept apart from the database's mutable state so consumers (the API, the state store, the
register image) import the shapes without the machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.supervisor.events import LinkState, MeterId, Quality, alarm_names

__all__ = ["MeterPoint", "CdtPoint", "LinkPoint", "PointStats"]


@dataclass(frozen=True, slots=True)
class MeterPoint:
    """A meter's current point.  ``value``/``count``/``timestamp``/``valve`` are None until
    it was first read.  ``unit``: ``"L"`` or ``"Wh"``."""

    id: MeterId
    kind: str
    serial: str
    household: str | None
    unit: str
    value: int | None
    count: int | None
    quality: Quality
    timestamp: datetime | None
    valve: Valve | None
    alarms: AlarmFlag
    quality_since: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": str(self.id), "link": self.id.link, "cdt": self.id.cdt, "module": self.id.module,
            "channel": self.id.channel, "kind": self.kind, "serial": self.serial, "household": self.household,
            "unit": self.unit, "value": self.value, "count": self.count, "quality": self.quality.value,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "quality_since": self.quality_since.isoformat() if self.quality_since else None,
            "valve": self.valve.name.lower() if self.valve is not None else None,
            "alarms": alarm_names(self.alarms),
        }


@dataclass(frozen=True, slots=True)
class CdtPoint:
    """A CDT's current point; status fields None until a status reply arrived, ``online``
    None until it was first polled."""

    link: str
    address: int
    name: str | None
    repeater: str | None
    online: bool | None
    mains: bool | None
    battery_low: bool | None
    battery_mv: int | None
    modules: frozenset[int] | None
    last_seen: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "link": self.link, "address": self.address, "name": self.name, "repeater": self.repeater,
            "online": self.online, "mains": self.mains, "battery_low": self.battery_low,
            "battery_mv": self.battery_mv, "modules": sorted(self.modules) if self.modules is not None else None,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
        }


@dataclass(frozen=True, slots=True)
class LinkPoint:
    """A link's current point.  ``stats``: the bus master's ``LinkStats.as_dict()`` (empty
    without an attached master)."""

    name: str
    kind: str
    state: LinkState
    signal: int | None
    since: datetime | None
    stats: Mapping[str, Any]

    @property
    def connected(self) -> bool:
        return self.state is LinkState.CONNECTED

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "state": self.state.value, "connected": self.connected,
                "signal": self.signal, "since": self.since.isoformat() if self.since else None,
                "stats": dict(self.stats)}


@dataclass(slots=True)
class PointStats:
    """Counters of what the database was fed."""

    bulk_replies: int = 0
    alarm_replies: int = 0
    status_replies: int = 0
    other_replies: int = 0
    unreachable: int = 0
    rounds: int = 0
    unexpected_channels: int = 0
    absent_channels: int = 0
    unknown_cdts: int = 0
    sink_errors: int = 0
    events: int = 0


