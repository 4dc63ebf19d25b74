"""Scenario timelines: fault actions at world times, from a TOML file.

File format (every key is checked; unknown keys are errors)::

    name = "power cut"                 # optional
    description = "..."                # optional

    [[event]]
    at = "90s"                         # world time after start: number of seconds, or a
    action = "cdt_power"               #   string of <number><unit> parts, units ms s m min
    link = "bus-1"                     #   h d, e.g. "90s", "2h", "1h30m", "1.5h"
    cdt = 3
    mains = false

The remaining keys of an event are those of its action (``faults.py``).  Errors name the
file, the key path (``event[2].flags``) and the reason, all of them at once, as one
:class:`~st2000r.simulation.faults.FaultError`.

:class:`ScenarioRunner` applies the events in time order; ``at`` is world time, so with
``World(speedup=N)`` an event at ``"2h"`` fires after 7200/N clock seconds.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from st2000r.config.files import InputFileError, read_text
from st2000r.simulation.faults import Action, FaultError, parse_action
from st2000r.simulation.world import World

__all__ = ["ScheduledAction", "Scenario", "ScenarioRunner", "parse_duration"]

log = Logger()

#: the largest scenario file read: a timeline of faults is a few kilobytes
MAX_SCENARIO_BYTES = 1024 * 1024

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_PART: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|min|s|m|h|d)")
_TOP_KEYS: Final = ("name", "description", "event")
MAX_AT_S: Final = 366 * 86400.0


def parse_duration(value: Any) -> float:
    """Seconds of ``value``: a number of seconds (>= 0) or a string like "90s", "2h",
    "1h30m", "500ms", "1.5d".  Raises ValueError with the reason."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f'must be seconds or a duration string like "90s" or "2h" (got {value!r})')
    if isinstance(value, str):
        text = value.strip()
        pos, total = 0, 0.0
        while pos < len(text):
            match = _PART.match(text, pos)
            if match is None:
                raise ValueError(
                    f'{value!r} is not a duration: use <number><unit> parts with units ms s m min h d, '
                    f'e.g. "90s", "2h", "1h30m"'
                )
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if not text:
            raise ValueError("is an empty string, expected a duration like \"90s\"")
        seconds = total
    else:
        seconds = float(value)
    if not 0 <= seconds <= MAX_AT_S:
        raise ValueError(f"{value!r} is outside 0 s .. 366 d")
    return seconds


@dataclass(frozen=True, slots=True)
class ScheduledAction:
    """``action`` to apply ``at_s`` world seconds after the scenario starts."""

    at_s: float
    action: Action


@dataclass(frozen=True, slots=True)
class Scenario:
    """A checked timeline, events sorted by time (file order kept for equal times)."""

    events: tuple[ScheduledAction, ...]
    name: str = ""
    description: str = ""
    source: str = "<string>"

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read and check a scenario file; FaultError naming the file for any problem."""
        try:
            text = read_text(path, limit=MAX_SCENARIO_BYTES, what="scenario file")
        except InputFileError as e:  # missing, a device or FIFO, too large, not UTF-8
            raise FaultError(f"{path}: {e}") from None
        return cls.loads(text, str(path))

    @classmethod
    def loads(cls, text: str, source: str = "<string>") -> Scenario:
        """Parse scenario TOML ``text``; FaultError lists every issue as
        ``<source>: <key path>: <reason>``."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise FaultError(f"{source}: TOML syntax: {e}") from None
        issues: list[str] = []
        for key in doc:
            if key not in _TOP_KEYS:
                issues.append(f"{source}: unknown key {key!r} (known: name, description, event)")
        name = doc.get("name", "")
        description = doc.get("description", "")
        for key, value in (("name", name), ("description", description)):
            if not isinstance(value, str):
                issues.append(f"{source}: key {key!r}: must be a string")
        raw = doc.get("event", [])
        if not isinstance(raw, list):
            issues.append(f"{source}: key 'event': must be an array of tables ([[event]])")
            raw = []
        events: list[ScheduledAction] = []
        for i, item in enumerate(raw):
            where = f"{source}: event[{i}]"
            if not isinstance(item, dict):
                issues.append(f"{where}: must be a table")
                continue
            at: float | None = None
            if "at" not in item:
                issues.append(f"{where}: missing key 'at' (world time after start, e.g. \"90s\")")
            else:
                try:
                    at = parse_duration(item["at"])
                except ValueError as e:
                    issues.append(f"{where}.at: {e}")
            try:
                action = parse_action(item, where, ignore=("at",))
            except FaultError as e:
                issues.extend(_keyed(e.issues, where))
                continue
            if at is not None:
                events.append(ScheduledAction(at, action))
        if issues:
            raise FaultError(issues)
        events.sort(key=lambda e: e.at_s)
        return cls(tuple(events), name if isinstance(name, str) else "", description if isinstance(description, str) else "", source)

    def check(self, world: World) -> None:
        """Raise FaultError naming every event whose link, CDT, channel or repeater does
        not exist in ``world``'s topology."""
        issues = []
        for i, event in enumerate(self.events):
            try:
                world.check(event.action)
            except FaultError as e:
                issues.extend(f"{self.source}: event at {event.at_s:g} s ({event.action.KIND}): {x}" for x in e.issues)
        if issues:
            raise FaultError(issues)


def _keyed(issues: tuple[str, ...], where: str) -> list[str]:
    """Turn ``"<where>: key 'flags': reason"`` into ``"<where>.flags: reason"``."""
    out = []
    prefix = f"{where}: key "
    for issue in issues:
        if issue.startswith(prefix):
            rest = issue[len(prefix):]
            match = re.match(r"'([^']*)': (.*)", rest, re.S)
            if match:
                out.append(f"{where}.{match.group(1)}: {match.group(2)}")
                continue
        out.append(issue)
    return out


class ScenarioRunner(Service):
    """Applies a scenario's events to a world at their world times, counted from
    ``startService`` (clock delay = ``at_s / world.speedup``).  One pending ``callLater``
    at a time.  An event that fails to apply is logged, never raised.  ``applied`` counts
    the events applied so far.  Construction checks every target (FaultError)."""

    name = "scenario"

    def __init__(self, world: World, scenario: Scenario, clock: IReactorTime) -> None:
        scenario.check(world)
        self.world = world
        self.scenario = scenario
        self.clock = clock
        self.applied = 0
        self._next = 0
        self._t0 = 0.0
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._t0 = self.clock.seconds()
        self._next = 0
        self.applied = 0
        log.info("scenario {name!r}: {n} events from {source}", name=self.scenario.name,
                 n=len(self.scenario.events), source=self.scenario.source)  # fmt: skip
        self._schedule()

    def stopService(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return super().stopService()

    def _schedule(self) -> None:
        events = self.scenario.events
        if self._next >= len(events):
            self._call = None
            return
        due = self._t0 + events[self._next].at_s / self.world.speedup
        self._call = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        events = self.scenario.events
        now = self.clock.seconds()
        while self._next < len(events) and self._t0 + events[self._next].at_s / self.world.speedup <= now:
            event = events[self._next]
            self._next += 1
            try:
                self.world.apply(event.action)
                self.applied += 1
            except Exception as e:
                log.error("scenario event at {at} s ({kind}) not applied: {error}",
                          at=event.at_s, kind=event.action.KIND, error=e)  # fmt: skip
        self._schedule()

