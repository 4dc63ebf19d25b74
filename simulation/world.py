"""The true state of a simulated ST2000R field: CDTs, modules, meters, valves, power.

Time.  The world clock runs ``speedup`` times faster than the injected ``IReactorTime``:
world time = ``start`` + (clock.seconds() - clock at construction) x ``speedup``.
Internally every instant is *world seconds after* :data:`~st2000r.simulation.meters.EPOCH`
(a float, "abs seconds"); :meth:`World.seconds` gives it.

Laziness.  Nothing runs on a timer.  A meter's pulse counter is a pure function of world
time (its household's consumption, see ``meters.py``) minus the periods its valve was shut;
the state is brought up to date only when the meter is observed or changed (``_catch_up``),
replaying the valve motor and the monthly settlement capture in time order.  A CDT's battery
charge is likewise linear between power events.  An idle world therefore costs no CPU.

Model rules (documented in docs/simulator.md, "World model"):

- count = pulses since commissioning; reading (base units) = initial + count x pulse_constant;
- a valve takes :data:`VALVE_TRAVEL_S` world seconds to move; it reports its old position
  while moving; water/gas stops when it is fully closed and resumes when fully open;
- a jammed valve reports ``Valve.FAULT``, does not move, and refuses commands; a valve
  jammed mid-travel stays where it was (flow unchanged);
- a CDT on battery drains in ``36 h x 32 / modules`` world hours (the brochure: 36 h for
  32 modules); battery_mv falls linearly from 12600 (full) to 10800 (empty); below 20 %
  it is "battery low"; empty, the CDT is silent until mains returns; mains recharges it
  fully in :data:`RECHARGE_S`;
- a failed repeater silences every CDT behind it, also behind its child repeater; each
  repeater on the path adds its ``latency_ms`` one way (the reply is late by twice the sum);
- pulse counting continues while a CDT is silent (the modules keep counting; the brochure
  keeps data ten years without power).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, Final

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from st2000r.config.model import Cdt, Link, Meter, MeterKind, Topology
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve, channel_number, module_input
from st2000r.simulation import faults
from st2000r.simulation.meters import EPOCH, Consumption, household

__all__ = [
    "World",
    "LinkWorld",
    "CdtState",
    "MeterState",
    "VALVE_TRAVEL_S",
    "BATTERY_HOURS_32",
    "METER_TYPES",
]

log = Logger()

VALVE_TRAVEL_S: Final = 6.0  # world seconds for a full open or close stroke
BATTERY_HOURS_32: Final = 36.0  # battery life with 32 modules (brochure)
RECHARGE_S: Final = 12 * 3600.0  # empty to full on mains, world seconds
BATTERY_FULL_MV: Final = 12_600
BATTERY_EMPTY_MV: Final = 10_800
BATTERY_LOW_FRACTION: Final = 0.20
FIRMWARE: Final = (2, 1)  # what CDTs report in CdtStatus

#: CJ/T 188 meter type byte of each kind
METER_TYPES: Final[dict[MeterKind, int]] = {
    MeterKind.WATER: 0x10,
    MeterKind.GAS: 0x30,
    MeterKind.ELECTRICITY: 0x40,
}

_FLAG_OF_NAME: Final = {"tamper": AlarmFlag.TAMPER, "short": AlarmFlag.SHORT, "open": AlarmFlag.OPEN}


def alarm_names(flags: AlarmFlag) -> list[str]:
    """``["tamper", "short", "open"]`` subset in that order."""
    return [name for name, flag in _FLAG_OF_NAME.items() if flags & flag]


def _abs_seconds(when: datetime) -> float:
    return (when.replace(tzinfo=None) - EPOCH).total_seconds()


class _Months:
    """Settlement boundaries (00:00 on the 1st of each month) after a start, in abs seconds,
    extended on demand and shared by every meter of a world."""

    __slots__ = ("_times", "_next")

    def __init__(self, start: datetime) -> None:
        first = start.replace(tzinfo=None, day=1, hour=0, minute=0, second=0, microsecond=0)
        self._next = first
        self._times: list[float] = []
        self._advance()  # the boundary at or before start is not "after" it
        start_abs = _abs_seconds(start)
        self._times = [t for t in self._times if t > start_abs]

    def _advance(self) -> None:
        n = self._next
        self._times.append(_abs_seconds(n))
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
        consumption: Consumption, months: _Months, t0: float,
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


class CdtState:
    """A CDT: power and battery, clock, alarms per channel, silence faults."""

    __slots__ = (
        "config", "link", "address", "bcd_address", "name", "path", "latency_s",
        "channels", "modules", "alarms", "no_answer", "late_ms", "clock_offset_s",
        "_mains", "_charge", "_charge_at", "_capacity_s",
    )  # fmt: skip

    def __init__(self, config: Cdt, link: LinkWorld, path: tuple[str, ...], latency_s: float, t0: float) -> None:
        self.config = config
        self.link = link
        self.address = config.address
        self.bcd_address = config.bcd_address
        self.name = config.name
        self.path = path  # repeater names from the CDT's own repeater up to the bus
        self.latency_s = latency_s  # one way, sum over the path
        self.channels: dict[int, MeterState] = {}
        self.modules = frozenset(m.number for m in config.modules)
        self.alarms: dict[int, AlarmFlag] = {}
        self.no_answer = False
        self.late_ms = 0
        self.clock_offset_s = 0.0
        self._mains = True
        self._charge = 1.0
        self._charge_at = t0
        self._capacity_s = BATTERY_HOURS_32 * 32 / max(1, len(self.modules)) * 3600.0

    # ---------------------------------------------------------------- power

    @property
    def mains(self) -> bool:
        return self._mains

    def charge(self, t: float) -> float:
        """Battery charge 0..1 at ``t``."""
        dt = t - self._charge_at
        if self._mains:
            return min(1.0, self._charge + dt / RECHARGE_S)
        return max(0.0, self._charge - dt / self._capacity_s)

    def battery_mv(self, t: float) -> int:
        return round(BATTERY_EMPTY_MV + (BATTERY_FULL_MV - BATTERY_EMPTY_MV) * self.charge(t))

    def battery_low(self, t: float) -> bool:
        return self.charge(t) < BATTERY_LOW_FRACTION

    def set_mains(self, t: float, mains: bool) -> None:
        self._charge = self.charge(t)
        self._charge_at = t
        self._mains = mains

    def battery_hours(self) -> float:
        """Full-battery life in world hours for this CDT's module count."""
        return self._capacity_s / 3600.0

    # ---------------------------------------------------------------- silence

    def silent_reason(self, t: float) -> str | None:
        """Why the CDT does not answer at ``t``: "repeater", "battery", "no_answer" or None."""
        failed = self.link.failed_repeaters
        if failed and any(name in failed for name in self.path):
            return "repeater"
        if not self._mains and self.charge(t) <= 0.0:
            return "battery"
        if self.no_answer:
            return "no_answer"
        return None

    def silent(self, t: float) -> bool:
        return self.silent_reason(t) is not None

    def alarm(self, channel: int) -> AlarmFlag:
        return self.alarms.get(channel, AlarmFlag.NONE)


class LinkWorld:
    """One link's devices: CDTs by address, meters by serial, repeaters, wire faults."""

    def __init__(self, world: World, config: Link, seed: int, t0: float, months: _Months) -> None:
        self.world = world
        self.config = config
        self.name = config.name
        self.line = config.line
        self.turnaround_s = config.turnaround_ms / 1000.0
        self.repeaters = {r.name: r for r in config.repeaters}
        self.failed_repeaters: set[str] = set()
        self.bit_error_rate = 0.0
        self.drop_rate = 0.0
        self._drop_listeners: list[Callable[[float], None]] = []
        self.cdts: tuple[CdtState, ...] = ()
        self.cdt_by_address: dict[int, CdtState] = {}
        self.cdt_by_bcd: dict[str, CdtState] = {}
        self.meter_by_serial: dict[str, MeterState] = {}
        cdts = []
        name = config.name
        for cdt in config.cdts:
            path = self._path(cdt.repeater)
            latency = sum(self.repeaters[r].latency_ms for r in path) / 1000.0
            state = CdtState(cdt, self, path, latency, t0)
            for module_no, input_no, meter in cdt.meters():
                model = household(seed, name, cdt.address, module_no, input_no, meter.kind)
                ms = MeterState(meter, state, module_no, input_no, model, months, t0)
                state.channels[ms.channel] = ms
                self.meter_by_serial[ms.serial] = ms
            cdts.append(state)
            self.cdt_by_address[cdt.address] = state
            self.cdt_by_bcd[state.bcd_address] = state
        self.cdts = tuple(cdts)

    def _path(self, repeater: str | None) -> tuple[str, ...]:
        path = []
        while repeater is not None and repeater not in path:
            path.append(repeater)
            rep = self.repeaters.get(repeater)
            repeater = rep.parent if rep is not None else None
        return tuple(path)

    def seconds(self) -> float:
        """World abs seconds now (see :meth:`World.seconds`)."""
        return self.world.seconds()

    def meters(self) -> Iterator[MeterState]:
        for cdt in self.cdts:
            yield from cdt.channels.values()

    def cdt(self, address: int) -> CdtState:
        """The CDT with this address; raises FaultError naming the link if absent."""
        try:
            return self.cdt_by_address[address]
        except KeyError:
            raise faults.FaultError(f"link {self.name!r} has no CDT {address}") from None

    def rename_meter(self, meter: MeterState, new_serial: str) -> None:
        """WriteAddress: the meter answers to ``new_serial`` from now on.  Raises
        ValueError when another meter of the link already has it."""
        if new_serial in self.meter_by_serial and self.meter_by_serial[new_serial] is not meter:
            raise ValueError(f"serial {new_serial} is already used on link {self.name!r}")
        del self.meter_by_serial[meter.serial]
        meter.serial = new_serial
        self.meter_by_serial[new_serial] = meter

    def add_drop_listener(self, callback: Callable[[float], None]) -> None:
        """``callback(seconds)`` runs when a link_drop action applies to this link."""
        self._drop_listeners.append(callback)

    def remove_drop_listener(self, callback: Callable[[float], None]) -> None:
        if callback in self._drop_listeners:
            self._drop_listeners.remove(callback)

    def drop(self, seconds: float) -> None:
        for callback in list(self._drop_listeners):
            callback(seconds)

    def snapshot(self, t: float) -> dict[str, Any]:
        world = self.world
        return {
            "name": self.name,
            "kind": self.config.kind,
            "bit_error_rate": self.bit_error_rate,
            "drop_rate": self.drop_rate,
            "repeaters": [
                {"name": r.name, "parent": r.parent, "latency_ms": r.latency_ms,
                 "failed": r.name in self.failed_repeaters}
                for r in self.config.repeaters
            ],  # fmt: skip
            "cdts": [_cdt_snapshot(world, cdt, t) for cdt in self.cdts],
        }


def _cdt_snapshot(world: World, cdt: CdtState, t: float) -> dict[str, Any]:
    reason = cdt.silent_reason(t)
    return {
        "address": cdt.address,
        "name": cdt.name,
        "repeater": cdt.config.repeater,
        "mains": cdt.mains,
        "battery_mv": cdt.battery_mv(t),
        "battery_low": cdt.battery_low(t),
        "online": reason is None,
        "silent": reason is not None,
        "silent_reason": reason,
        "no_answer": cdt.no_answer,
        "late_ms": cdt.late_ms,
        "clock": world.datetime_at(t + cdt.clock_offset_s).isoformat(),
        "modules": sorted(cdt.modules),
        "alarms": {str(ch): alarm_names(f) for ch, f in sorted(cdt.alarms.items()) if f},
        "meters": [
            {
                "channel": m.channel,
                "module": m.module,
                "input": m.input,
                "serial": m.serial,
                "kind": m.kind.value,
                "household": m.household,
                "pulse_constant": m.pulse_constant,
                "initial": m.initial,
                "count": m.count(t),
                "reading": m.reading(t),
                "base_unit": m.kind.base_unit,
                "settlement_reading": m.settlement_reading(t),
                "valve": m.valve_name(t),
                "alarms": alarm_names(cdt.alarm(m.channel)),
            }
            for m in cdt.channels.values()
        ],
    }


class World:
    """The true state of every simulated device of a topology.  Lazy: consumption is
    computed when observed, so an idle world costs no CPU.

    ``clock``: any ``IReactorTime`` (tests: ``task.Clock``).  ``seed``: households and wire
    noise are deterministic from it.  ``speedup``: world seconds per clock second (> 0).
    ``start``: world time at construction (naive local time; default: the clock's time).
    """

    def __init__(
        self,
        topology: Topology,
        clock: IReactorTime,
        *,
        seed: int = 0,
        speedup: float = 1.0,
        start: datetime | None = None,
    ) -> None:
        if not speedup > 0:
            raise ValueError(f"speedup must be > 0, got {speedup!r}")
        self.topology = topology
        self.clock = clock
        self.seed = seed
        self.speedup = float(speedup)
        if start is None:
            start = datetime.fromtimestamp(clock.seconds()).replace(microsecond=0)
        self.start = start.replace(tzinfo=None)  # any date; before EPOCH gives negative seconds
        self._clock0 = clock.seconds()
        self._abs0 = _abs_seconds(self.start)
        months = _Months(self.start)
        self._links: dict[str, LinkWorld] = {}
        for link in topology.links():
            self._links[link.name] = LinkWorld(self, link, seed, self._abs0, months)

    # ---------------------------------------------------------------- time

    def seconds(self) -> float:
        """World time now as abs seconds (seconds after meters.EPOCH, speedup applied)."""
        return self._abs0 + (self.clock.seconds() - self._clock0) * self.speedup

    def elapsed(self) -> float:
        """World seconds since construction."""
        return (self.clock.seconds() - self._clock0) * self.speedup

    def now(self) -> datetime:
        """World clock (speedup applied), naive local time."""
        return self.datetime_at(self.seconds())

    def datetime_at(self, t: float) -> datetime:
        """The datetime of world abs seconds ``t``."""
        return EPOCH + timedelta(seconds=t)

    # ---------------------------------------------------------------- structure

    def link(self, name: str) -> LinkWorld:
        """The link's world; raises FaultError (a ValueError) naming the known links."""
        try:
            return self._links[name]
        except KeyError:
            known = ", ".join(map(repr, self._links)) or "none"
            raise faults.FaultError(f"no link {name!r} (links: {known})") from None

    def links(self) -> tuple[LinkWorld, ...]:
        return tuple(self._links.values())

    # ---------------------------------------------------------------- ground truth

    def snapshot(self) -> dict[str, Any]:
        """Ground truth now, JSON-ready (schema in docs/simulator.md, "Ground truth")."""
        t = self.seconds()
        return {
            "time": self.datetime_at(t).isoformat(),
            "elapsed_s": round(self.elapsed(), 6),
            "seed": self.seed,
            "speedup": self.speedup,
            "links": [lw.snapshot(t) for lw in self._links.values()],
        }

    # ---------------------------------------------------------------- faults

    def check(self, action: faults.Action) -> None:
        """Raise FaultError if ``action`` names a link, CDT, channel or repeater that does
        not exist (or a channel without a meter for valve_jam); change nothing."""
        self._target(action)

    def _target(self, action: faults.Action) -> Any:
        lw = self.link(action.link)
        if isinstance(action, faults.RepeaterFault):
            if action.name not in lw.repeaters:
                known = ", ".join(map(repr, lw.repeaters)) or "none"
                raise faults.FaultError(
                    f"link {lw.name!r} has no repeater {action.name!r} (repeaters: {known})"
                )
            return lw
        cdt_address = getattr(action, "cdt", None)
        if cdt_address is None:
            return lw
        cdt = lw.cdt(cdt_address)
        channel = getattr(action, "channel", None)
        if channel is None:
            return cdt
        if isinstance(action, faults.ValveJam):
            meter = cdt.channels.get(channel)
            if meter is None:
                raise faults.FaultError(f"link {lw.name!r} CDT {cdt.address} has no meter on channel {channel}")
            return meter
        module, _ = module_input(channel)
        if module not in cdt.modules:
            raise faults.FaultError(
                f"link {lw.name!r} CDT {cdt.address} has no module {module} (channel {channel})"
            )
        return cdt

    def apply(self, action: faults.Action) -> None:
        """Make ``action`` true now.  Raises FaultError for an unknown link, CDT, channel
        or repeater (nothing changes then)."""
        target = self._target(action)
        t = self.seconds()
        where = f"{action.link}"
        match action:
            case faults.Alarm():
                flags = AlarmFlag.NONE
                for name in action.flags:
                    flags |= _FLAG_OF_NAME[name]
                target.alarms[action.channel] = flags
                log.info("{where} CDT {cdt} channel {channel}: alarms {flags}", where=where,
                         cdt=action.cdt, channel=action.channel, flags=list(action.flags) or "cleared")  # fmt: skip
            case faults.ValveJam():
                target.set_jammed(t, action.jammed)
                log.info("{where} CDT {cdt} channel {channel}: valve {state}", where=where, cdt=action.cdt,
                         channel=action.channel, state="jammed" if action.jammed else "freed")  # fmt: skip
            case faults.CdtPower():
                target.set_mains(t, action.mains)
                log.info("{where} CDT {cdt}: mains {state}", where=where, cdt=action.cdt,
                         state="restored" if action.mains else "lost")  # fmt: skip
            case faults.RepeaterFault():
                if action.failed:
                    target.failed_repeaters.add(action.name)
                else:
                    target.failed_repeaters.discard(action.name)
                log.info("{where} repeater {name}: {state}", where=where, name=action.name,
                         state="failed" if action.failed else "repaired")  # fmt: skip
            case faults.NoAnswer():
                target.no_answer = action.on
                log.info("{where} CDT {cdt}: no_answer {on}", where=where, cdt=action.cdt, on=action.on)
            case faults.Late():
                target.late_ms = action.ms
                log.info("{where} CDT {cdt}: answers {ms} ms late", where=where, cdt=action.cdt, ms=action.ms)
            case faults.BitErrors():
                target.bit_error_rate = action.rate
                log.info("{where}: bit error rate {rate}", where=where, rate=action.rate)
            case faults.DropBytes():
                target.drop_rate = action.rate
                log.info("{where}: byte drop rate {rate}", where=where, rate=action.rate)
            case faults.LinkDrop():
                log.info("{where}: link drops for {seconds} s", where=where, seconds=action.seconds)
                target.drop(action.seconds)
            case _:
                raise faults.FaultError(f"unsupported action {type(action).__name__}")
