"""What the console knows of the supervisor: frozen records parsed from the API's JSON.

Parsing is strict about what the console relies on (a meter's id, a command's state) and
names the field when the supervisor sends something else (``BadAnswer``), so a changed API
shows as a clear message, never a traceback.  Fields the console only displays are
optional.  Quantities stay integers of the meter's base unit, as the API sends them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COMMAND_FINAL = frozenset({"succeeded", "failed", "timed_out", "refused", "interrupted"})
KINDS = ("water", "electricity", "gas")
QUALITIES = ("good", "stale", "comm_fail", "estimated", "substituted")
ALARM_KINDS = ("tamper", "short", "open")


class BadAnswer(ValueError):
    """The supervisor answered with JSON the console cannot use; says where and why."""


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str, *, optional: bool = False) -> Any:
    if not isinstance(obj, Mapping):
        raise BadAnswer(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise BadAnswer(f"{where}: field {key!r} is missing")
    value = obj[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadAnswer(f"{where}: field {key!r} should be {names}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in operator: the bearer token and when it expires (ISO 8601 text)."""

    name: str
    token: str
    expires_at: str | None
    role: str | None = None

    @classmethod
    def from_json(cls, name: str, obj: Any) -> Session:
        token = _field(obj, "token", str, "login")
        return cls(name, token, _field(obj, "expires_at", str, "login", optional=True),
                   _field(obj, "role", str, "login", optional=True))


@dataclass(frozen=True, slots=True)
class Meter:
    """A meter's live point; ``value`` in ``base_unit``, ``quality`` as the API spells it."""

    id: str
    household: str | None
    kind: str | None
    value: int | None
    base_unit: str | None
    quality: str | None
    read_at: str | None
    alarms: tuple[str, ...]
    valve: str | None

    @classmethod
    def from_json(cls, obj: Any, where: str = "meter") -> Meter:
        mid = _field(obj, "id", str, where)
        where = f"{where} {mid}"
        alarms = _field(obj, "alarms", list, where, optional=True) or []
        return cls(
            id=mid,
            household=_field(obj, "household", str, where, optional=True),
            kind=_field(obj, "kind", str, where, optional=True),
            value=_field(obj, "value", int, where, optional=True),
            base_unit=_field(obj, "base_unit", str, where, optional=True),
            quality=_field(obj, "quality", str, where, optional=True),
            read_at=_field(obj, "read_at", str, where, optional=True),
            alarms=tuple(str(a) for a in alarms),
            valve=_field(obj, "valve", str, where, optional=True),
        )

    def changed(self, event: Mapping[str, Any]) -> Meter:
        """This meter after a ``MeterChanged`` event (docs/events.md)."""
        get = event.get  # positional construction: dataclasses.replace costs 3x as much per event
        return Meter(self.id, self.household, self.kind, get("value", self.value), self.base_unit,
                     get("quality", self.quality), get("timestamp", self.read_at),
                     tuple(get("alarms", self.alarms) or ()), get("valve", self.valve))


@dataclass(frozen=True, slots=True)
class MeterPage:
    items: tuple[Meter, ...]
    next: str | None

    @classmethod
    def from_json(cls, obj: Any) -> MeterPage:
        items = _field(obj, "items", list, "meters page")
        nxt = _field(obj, "next", str, "meters page", optional=True)
        return cls(tuple(Meter.from_json(i, f"meters page item {n}") for n, i in enumerate(items)), nxt)


@dataclass(frozen=True, slots=True)
class Command:
    """A command's state as ``GET /api/v1/commands/{id}`` or a ``CommandChanged`` event gives it."""

    id: str
    kind: str
    state: str
    detail: str | None = None
    target: str | None = None
    url: str | None = None

    @property
    def final(self) -> bool:
        return self.state in COMMAND_FINAL

    @classmethod
    def from_json(cls, obj: Any, where: str = "command") -> Command:
        return cls(
            id=str(_field(obj, "id", (str, int), where)),
            kind=_field(obj, "kind", str, where, optional=True) or "",
            state=_field(obj, "state", str, where),
            detail=_field(obj, "detail", str, where, optional=True),
            target=_field(obj, "target", str, where, optional=True) or _field(obj, "meter", str, where, optional=True),
            url=_field(obj, "url", str, where, optional=True),
        )


@dataclass(frozen=True, slots=True)
class Alarm:
    id: str
    source: str
    kind: str
    severity: str | None
    state: str
    raised_at: str | None
    acked_by: str | None
    shelved_reason: str | None

    @classmethod
    def from_json(cls, obj: Any, where: str = "alarm") -> Alarm:
        aid = _field(obj, "id", str, where)
        where = f"{where} {aid}"
        return cls(aid, _field(obj, "source", str, where), _field(obj, "kind", str, where),
                   _field(obj, "severity", str, where, optional=True), _field(obj, "state", str, where),
                   _field(obj, "raised_at", str, where, optional=True),
                   _field(obj, "acked_by", str, where, optional=True),
                   _field(obj, "shelved_reason", str, where, optional=True))


def _int(src: Any, key: str) -> int | None:
    value = src.get(key) if isinstance(src, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """A link as ``GET /links`` describes it: state, size, bus counters, the running round."""

    name: str
    kind: str | None
    state: str | None
    cdts: int | None
    meters: int | None
    requests: int | None
    timeouts: int | None
    rtt_p99_ms: int | None
    sessions: int | None
    round_done: int | None
    round_total: int | None

    @classmethod
    def from_json(cls, obj: Any, where: str = "link") -> LinkInfo:
        name = _field(obj, "name", str, where)
        where = f"{where} {name}"
        stats = obj.get("stats")
        rnd = obj.get("round")
        sessions = obj.get("sessions")
        return cls(
            name=name,
            kind=_field(obj, "kind", str, where, optional=True),
            state=_field(obj, "state", str, where, optional=True),
            cdts=_int(obj, "cdts"),
            meters=_int(obj, "meters"),
            requests=_int(stats, "requests") if _int(stats, "requests") is not None else _int(stats, "transactions"),
            timeouts=_int(stats, "timeouts"),
            rtt_p99_ms=round(stats["rtt_p99_s"] * 1000) if isinstance(stats, Mapping) and isinstance(
                stats.get("rtt_p99_s"), (int, float)) and not isinstance(stats.get("rtt_p99_s"), bool) else None,
            sessions=len(sessions) if isinstance(sessions, list) else None,
            round_done=_int(rnd, "cdts_done"),
            round_total=_int(rnd, "cdts_total"),
        )


@dataclass(frozen=True, slots=True)
class Summary:
    """``GET /summary``: the dashboard's counts."""

    meters_total: int
    meters_good: int
    alarms_by_state: Mapping[str, int]
    round_done: int
    round_total: int
    rounds: int
    spool_rows: int | None
    spool_age_s: float | None
    historian_state: str | None

    @classmethod
    def from_json(cls, obj: Any) -> Summary:
        meters = _field(obj, "meters", dict, "summary")
        alarms = _field(obj, "alarms", dict, "summary")
        rounds = _field(obj, "rounds", list, "summary", optional=True) or []
        hist = _field(obj, "historian", dict, "summary", optional=True)
        by_quality = meters.get("by_quality") or {}
        age = hist.get("oldest_age_s") if hist else None
        return cls(
            meters_total=_int(meters, "total") or 0,
            meters_good=_int(by_quality, "good") or 0,
            alarms_by_state={str(k): v for k, v in (alarms.get("by_state") or {}).items() if isinstance(v, int)},
            round_done=sum(_int(r, "cdts_done") or 0 for r in rounds),
            round_total=sum(_int(r, "cdts_total") or 0 for r in rounds),
            rounds=len(rounds),
            spool_rows=_int(hist, "spool_rows") if hist else None,
            spool_age_s=float(age) if isinstance(age, (int, float)) and not isinstance(age, bool) else None,
            historian_state=hist.get("state") if hist else None,
        )


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One day of a meter's history: the day (``YYYY-MM-DD``) and its consumption."""

    day: str
    usage: int


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    role: str

    @classmethod
    def from_json(cls, obj: Any) -> Operator:
        return cls(_field(obj, "name", str, "operator"), _field(obj, "role", str, "operator"))


@dataclass(frozen=True, slots=True)
class MeterFilter:
    """The filters of ``GET /api/v1/meters``; ``None`` means any."""

    link: str | None = None
    cdt: int | None = None
    household: str | None = None
    kind: str | None = None
    quality: str | None = None
    alarm: str | None = None

    def params(self) -> dict[str, str]:
        out = {}
        for key in ("link", "cdt", "household", "kind", "quality", "alarm"):
            value = getattr(self, key)
            if value is not None and value != "":
                out[key] = str(value)
        return out

    @property
    def empty(self) -> bool:
        return not self.params()
