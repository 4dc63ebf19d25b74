"""Fault actions: the typed things a scenario or the control interface can do to the world.

Every action is a frozen dataclass naming its target by *link name* and, where it applies,
CDT address (int, 1..99999999), channel (1..96, channel ``n`` is module ``(n-1)//3+1``,
input ``(n-1)%3+1``) or repeater name.  The document form (TOML table or JSON object) is
``{"action": <kind>, <fields>...}`` with the field names below; :func:`parse_action` checks
it strictly (unknown keys, missing keys, types, ranges) and raises :class:`FaultError`
listing every problem with its key.  Whether the link, CDT or channel exists is checked by
``World.apply`` / ``World.check`` against the topology.

=============  ==========================================  ===================================
kind           fields                                      effect
=============  ==========================================  ===================================
alarm          link, cdt, channel, flags                   set the channel's alarm flags
               (list of "tamper" "short" "open"; [] clears)
valve_jam      link, cdt, channel, jammed (bool)           the valve motor jams (Valve.FAULT)
cdt_power      link, cdt, mains (bool)                     mains lost (battery) / restored
repeater       link, name, failed (bool)                   repeater fails: CDTs behind go silent
no_answer      link, cdt, on (bool)                        the CDT stops answering
late           link, cdt, ms (int >= 0)                    the CDT answers ``ms`` later
bit_errors     link, rate (0 <= float <= 0.5, per bit)     flip data bits on the wire
drop_bytes     link, rate (0 <= float <= 1, per byte)      lose bytes on the wire
link_drop      link, seconds (float > 0, real seconds)     the endpoint drops the connection
=============  ==========================================  ===================================
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

__all__ = [
    "FaultError",
    "Action",
    "Alarm",
    "ValveJam",
    "CdtPower",
    "RepeaterFault",
    "NoAnswer",
    "Late",
    "BitErrors",
    "DropBytes",
    "LinkDrop",
    "ACTIONS",
    "ALARM_NAMES",
    "parse_action",
]


class FaultError(ValueError):
    """A bad action document, scenario file or target.  ``issues`` lists every problem as
    ``"<where>: <reason>"``; ``str()`` joins them one per line."""

    def __init__(self, issues: str | list[str] | tuple[str, ...]) -> None:
        self.issues = (issues,) if isinstance(issues, str) else tuple(issues)
        super().__init__("\n".join(self.issues))


#: alarm flag names in documents, in AlarmFlag bit order (tamper=1, short=2, open=4)
ALARM_NAMES: tuple[str, ...] = ("tamper", "short", "open")


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """Base of every action; ``KIND`` is its name in documents."""

    KIND: ClassVar[str] = ""
    link: str

    def to_doc(self) -> dict[str, Any]:
        """The JSON/TOML-ready document form (inverse of :func:`parse_action`)."""
        doc: dict[str, Any] = {"action": self.KIND}
        for f in fields(self):
            value = getattr(self, f.name)
            doc[f.name] = list(value) if isinstance(value, tuple) else value
        return doc


@dataclass(frozen=True, slots=True, kw_only=True)
class Alarm(Action):
    KIND: ClassVar[str] = "alarm"
    cdt: int
    channel: int
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ValveJam(Action):
    KIND: ClassVar[str] = "valve_jam"
    cdt: int
    channel: int
    jammed: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class CdtPower(Action):
    KIND: ClassVar[str] = "cdt_power"
    cdt: int
    mains: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RepeaterFault(Action):
    KIND: ClassVar[str] = "repeater"
    name: str
    failed: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class NoAnswer(Action):
    KIND: ClassVar[str] = "no_answer"
    cdt: int
    on: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Late(Action):
    KIND: ClassVar[str] = "late"
    cdt: int
    ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BitErrors(Action):
    KIND: ClassVar[str] = "bit_errors"
    rate: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DropBytes(Action):
    KIND: ClassVar[str] = "drop_bytes"
    rate: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDrop(Action):
    KIND: ClassVar[str] = "link_drop"
    seconds: float


ACTIONS: dict[str, type[Action]] = {
    cls.KIND: cls
    for cls in (Alarm, ValveJam, CdtPower, RepeaterFault, NoAnswer, Late, BitErrors, DropBytes, LinkDrop)
}

# --------------------------------------------------------------------------- checking


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _name(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return "must be a non-empty string"
    return None


def _cdt(v: Any) -> str | None:
    if not _is_int(v) or not 1 <= v <= 99_999_999:
        return f"must be a CDT address, an integer 1..99999999 (got {v!r})"
    return None


def _channel(v: Any) -> str | None:
    if not _is_int(v) or not 1 <= v <= 96:
        return f"must be a channel number, an integer 1..96 (got {v!r})"
    return None


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false (got {v!r})"


def _flags(v: Any) -> str | None:
    if not isinstance(v, (list, tuple)):
        return f'must be a list of "tamper", "short", "open" (got {v!r})'
    bad = [f for f in v if f not in ALARM_NAMES]
    if bad:
        return f'unknown alarm flag(s) {", ".join(map(repr, bad))}; known: "tamper", "short", "open"'
    if len(set(v)) != len(v):
        return "lists a flag twice"
    return None


def _ms(v: Any) -> str | None:
    if not _is_int(v) or not 0 <= v <= 600_000:
        return f"must be whole milliseconds 0..600000 (got {v!r})"
    return None


def _bit_rate(v: Any) -> str | None:
    if not _is_num(v) or not 0 <= v <= 0.5:
        return f"must be a rate per bit between 0 and 0.5 (got {v!r})"
    return None


def _byte_rate(v: Any) -> str | None:
    if not _is_num(v) or not 0 <= v <= 1:
        return f"must be a rate per byte between 0 and 1 (got {v!r})"
    return None


def _seconds(v: Any) -> str | None:
    if not _is_num(v) or not 0 < v <= 86_400:
        return f"must be seconds, a number > 0 and <= 86400 (got {v!r})"
    return None


# field -> (check, required)
_SCHEMA: dict[str, dict[str, tuple[Any, bool]]] = {
    "alarm": {"cdt": (_cdt, True), "channel": (_channel, True), "flags": (_flags, True)},
    "valve_jam": {"cdt": (_cdt, True), "channel": (_channel, True), "jammed": (_bool, False)},
    "cdt_power": {"cdt": (_cdt, True), "mains": (_bool, True)},
    "repeater": {"name": (_name, True), "failed": (_bool, False)},
    "no_answer": {"cdt": (_cdt, True), "on": (_bool, False)},
    "late": {"cdt": (_cdt, True), "ms": (_ms, True)},
    "bit_errors": {"rate": (_bit_rate, True)},
    "drop_bytes": {"rate": (_byte_rate, True)},
    "link_drop": {"seconds": (_seconds, True)},
}


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def parse_action(doc: Any, where: str = "", ignore: tuple[str, ...] = ()) -> Action:
    """The :class:`Action` described by ``doc`` (a dict from JSON or TOML).

    ``where`` prefixes key paths in messages (e.g. ``"scenario.toml: event[2]"``); keys in
    ``ignore`` are skipped (a scenario's ``at``).  Raises :class:`FaultError` listing every
    problem: not a table, missing or unknown ``action``, missing or unknown keys, bad values.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(doc, dict):
        raise FaultError(f"{prefix}an action must be a table/object, got {type(doc).__name__}")
    kind = doc.get("action")
    if kind is None:
        raise FaultError(f"{prefix}missing key 'action' (one of {', '.join(ACTIONS)})")
    if kind not in ACTIONS:
        raise FaultError(f"{prefix}key 'action': unknown action {kind!r}; known: {', '.join(ACTIONS)}")
    schema = _SCHEMA[kind]
    issues: list[str] = []
    values: dict[str, Any] = {}
    link = doc.get("link")
    if link is None:
        issues.append(f"{prefix}missing key 'link' (the link name)")
    elif (problem := _name(link)) is not None:
        issues.append(f"{prefix}key 'link': {problem}")
    else:
        values["link"] = link
    for key, value in doc.items():
        if key in ("action", "link") or key in ignore:
            continue
        if key not in schema:
            known = ", ".join(["action", "link", *schema])
            issues.append(f"{prefix}unknown key {key!r} for action {kind!r} (known: {known})")
            continue
        problem = schema[key][0](value)
        if problem is not None:
            issues.append(f"{prefix}key {key!r}: {problem}")
        else:
            values[key] = tuple(value) if key == "flags" else value
    for key, (_, required) in schema.items():
        if required and key not in doc:
            issues.append(f"{prefix}missing key {key!r} for action {kind!r}")
    if issues:
        raise FaultError(issues)
    if "rate" in values:
        values["rate"] = float(values["rate"])
    if "seconds" in values:
        values["seconds"] = float(values["seconds"])
    return ACTIONS[kind](**values)
