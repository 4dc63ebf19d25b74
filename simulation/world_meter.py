"""One simulated pulse meter: counter, valve, settlement captures, consumption (no I/O).

:class:`MeterState` is lazy: its counter is a pure function of world time (its household's
consumption, ``meters.py``) minus the periods its valve was shut, brought up to date only
when the meter is observed or changed.  The model rules are in ``world.py``'s module
docstring; times are world abs seconds (seconds after ``meters.EPOCH``).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Final

from st2000r.config.model import Meter, MeterKind
from st2000r.drivers.st2000r.messages import Valve, channel_number
from st2000r.simulation.meters import EPOCH, Consumption

if TYPE_CHECKING:
    from st2000r.simulation.world_cdt import CdtState

__all__ = ["MeterState", "Months", "VALVE_TRAVEL_S", "METER_TYPES", "abs_seconds"]

VALVE_TRAVEL_S: Final = 6.0  # world seconds for a full open or close stroke

#: CJ/T 188 meter type byte of each kind
METER_TYPES: Final[dict[MeterKind, int]] = {
    MeterKind.WATER: 0x10,
    MeterKind.GAS: 0x30,
    MeterKind.ELECTRICITY: 0x40,
}


def abs_seconds(when: datetime) -> float:
    return (when.replace(tzinfo=None) - EPOCH).total_seconds()


class Months:
    """Settlement boundaries (00:00 on the 1st of each month) after a start, in abs seconds,
    extended on demand and shared by every meter of a world."""

    __slots__ = ("_times", "_next")

    def __init__(self, start: datetime) -> None:
        first = start.replace(tzinfo=None, day=1, hour=0, minute=0, second=0, microsecond=0)
        self._next = first
        self._times: list[float] = []
        self._advance()  # the boundary at or before start is not "after" it
        start_abs = abs_seconds(start)
        self._times = [t for t in self._times if t > start_abs]

    def _advance(self) -> None:
        n = self._next
        self._times.append(abs_seconds(n))
        self._next = n.replace(year=n.year + 1, month=1) if n.month == 12 else n.replace(month=n.month + 1)

    def __getitem__(self, i: int) -> float:
        while len(self._times) <= i:
            self._advance()
        return self._times[i]


class MeterState:
    """One pulse meter on a CDT channel: counter, valve, consumption.  Mutable; every
    method taking ``t`` wants world abs seconds and first catches the meter up to ``t``."""

    __slots__ = (
        "config", "cdt", "module", "input", "channel", "serial", "kind", "meter_type",
        "pulse_constant", "initial", "household", "consumption", "_months", "_f0",
        "_pos", "_target", "_end", "_jammed", "_stopped_at", "_excluded",
        "_base_count", "_base_pulses", "_settle_idx", "_settle_count",
    )  # fmt: skip

    def __init__(
        self, config: Meter, cdt: CdtState, module: int, input_no: int,
        consumption: Consumption, months: Months, t0: float,
    ) -> None:  # fmt: skip
        self.config = config
        self.cdt = cdt
        self.module = module
        self.input = input_no
        self.channel = channel_number(module, input_no)
        self.serial = config.serial
        self.kind = config.kind
        self.meter_type = METER_TYPES[config.kind]
        self.pulse_constant = config.pulse_constant
        self.initial = config.initial
        self.household = config.household
        self.consumption = consumption
        self._months = months
        self._f0 = consumption.cumulative(t0)
        self._pos = Valve.OPEN
        self._target: Valve | None = None
        self._end = 0.0
        self._jammed = False
        self._stopped_at: float | None = None
        self._excluded = 0.0
        self._base_count = 0
        self._base_pulses = 0
        self._settle_idx = 0
        self._settle_count = 0

    # ---------------------------------------------------------------- time keeping

    def _units_at(self, t: float) -> float:
        """Base units drawn through the valve from commissioning to ``t`` (no event between
        the last caught-up instant and ``t``)."""
        stop = self._stopped_at
        if stop is not None and stop < t:
            t = stop
        return self.consumption.cumulative(t) - self._f0 - self._excluded

    def _count_at(self, t: float) -> int:
        pulses = math.floor(self._units_at(t) / self.pulse_constant)
        return self._base_count + pulses - self._base_pulses

    def _catch_up(self, t: float) -> None:
        """Replay what happened up to ``t``: settlement captures and valve arrivals, in order."""
        months = self._months
        while True:
            boundary = months[self._settle_idx]
            moving = self._target is not None and self._end <= t
            if boundary <= t and (not moving or boundary <= self._end):
                self._settle_count = self._count_at(boundary)
                self._settle_idx += 1
                continue
            if moving:
                self._arrive(self._end)
                continue
            return

    def _arrive(self, when: float) -> None:
        target, self._target = self._target, None
        if target is Valve.CLOSED and self._pos is Valve.OPEN:
            self._stopped_at = when
        elif target is Valve.OPEN and self._pos is Valve.CLOSED:
            stop = self._stopped_at if self._stopped_at is not None else when
            self._excluded += self.consumption.cumulative(when) - self.consumption.cumulative(stop)
            self._stopped_at = None
        if target is not None:
            self._pos = target

    # ---------------------------------------------------------------- observation

    def count(self, t: float) -> int:
        """Pulses counted since commissioning (or since the last SetBase) at ``t``."""
        self._catch_up(t)
        return self._count_at(t)

    def reading(self, t: float) -> int:
        """Reading in base units (L or Wh): initial + count x pulse_constant."""
        return self.initial + self.count(t) * self.pulse_constant

    def settlement_reading(self, t: float) -> int:
        """Reading (base units) at the last monthly settlement (00:00 on the 1st) before
        ``t``; the commissioning reading until the first one."""
        self._catch_up(t)
        return self.initial + self._settle_count * self.pulse_constant

    def valve(self, t: float) -> Valve:
        """Valve as reported: FAULT when jammed, else the last position reached."""
        self._catch_up(t)
        return Valve.FAULT if self._jammed else self._pos

    def valve_name(self, t: float) -> str:
        """"open", "closed", "moving" or "fault"."""
        self._catch_up(t)
        if self._jammed:
            return "fault"
        if self._target is not None:
            return "moving"
        return "open" if self._pos is Valve.OPEN else "closed"

    @property
    def jammed(self) -> bool:
        return self._jammed

    # ---------------------------------------------------------------- changes

    def command_valve(self, t: float, open_: bool) -> bool:
        """Start the motor towards open/closed; False (nothing moves) when jammed."""
        self._catch_up(t)
        if self._jammed:
            return False
        target = Valve.OPEN if open_ else Valve.CLOSED
        if self._target is None and self._pos is target:
            return True
        if self._target is target:
            return True
        self._target = target
        self._end = t + VALVE_TRAVEL_S
        return True

    def set_jammed(self, t: float, jammed: bool) -> None:
        """Jam (motion stops where it is, flow unchanged) or free the valve."""
        self._catch_up(t)
        self._jammed = jammed
        if jammed:
            self._target = None

    def set_count(self, t: float, count: int) -> None:
        """SetBase: the counter holds ``count`` from ``t`` on (fractional progress kept)."""
        self._catch_up(t)
        self._base_pulses = math.floor(self._units_at(t) / self.pulse_constant)
        self._base_count = count

    def rate_per_hour(self, t: float) -> float:
        """Current draw, base units per world hour (0 while the valve is shut)."""
        self._catch_up(t)
        if self._stopped_at is not None and self._stopped_at <= t:
            return 0.0
        return self.consumption.rate_per_hour(t)
