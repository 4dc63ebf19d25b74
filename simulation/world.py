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

Modules: this one holds the world (clock, links, ground truth, faults) and each link's
devices (:class:`LinkWorld`); ``world_cdt.py`` a CDT (:class:`CdtState`) and
``world_meter.py`` a meter (:class:`MeterState`).  Every name is importable from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from st2000r.config.model import Link, Topology
from st2000r.drivers.st2000r.messages import AlarmFlag, module_input
from st2000r.simulation import faults
from st2000r.simulation.meters import EPOCH, household
from st2000r.simulation.world_cdt import (
    BATTERY_EMPTY_MV,  # noqa: F401 (re-exported)
    BATTERY_FULL_MV,  # noqa: F401 (re-exported)
    BATTERY_HOURS_32,
    BATTERY_LOW_FRACTION,  # noqa: F401 (re-exported)
    FIRMWARE,  # noqa: F401 (re-exported)
    FLAG_OF_NAME,
    RECHARGE_S,  # noqa: F401 (re-exported)
    CdtState,
    alarm_names,
)
from st2000r.simulation.world_meter import METER_TYPES, VALVE_TRAVEL_S, MeterState, Months, abs_seconds

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


class LinkWorld:
    """One link's devices: CDTs by address, meters by serial, repeaters, wire faults."""

    def __init__(self, world: World, config: Link, seed: int, t0: float, months: Months) -> None:
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
        self._abs0 = abs_seconds(self.start)
        months = Months(self.start)
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
                    flags |= FLAG_OF_NAME[name]
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
