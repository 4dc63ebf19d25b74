"""The register image: the point database's state written into Modbus registers and coils.

Fed by one queued consumer of the event bus (change events coalesce per point when it falls
behind, so a full-round burst never grows its queue beyond one entry per point) and filled
from the point database's snapshots at start.  It writes plain lists that the server serves
as they are (``bind``): an update is a few list stores, no coroutine per event.

Values are integers end to end: a reading above 4,294,967,295 base units shows 4294967295
with the quality flag ``SATURATED`` (never wrapped: a wrapped counter would look like a
plausible reading).  The age register is computed when it is read (:meth:`refresh_ages`),
from the reading's own timestamp and the injected clock, so it is exact without a timer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from st2000r.bridge import layout as L
from st2000r.bridge.regmap import RegisterMap
from st2000r.supervisor.events import CdtChanged, CommandChanged, CommandKind, LinkChanged, MeterChanged, RoundDone

__all__ = ["RegisterImage"]

_M = {name: spec[0] for name, spec in L.METER_POINTS.items()}
_C = {name: spec[0] + L.CDT_HEADER for name, spec in L.CDT_POINTS.items()}
_H = {name: spec[0] for name, spec in L.HEADER_POINTS.items()}


def _flag(value: bool | None) -> int:
    return L.UNKNOWN16 if value is None else int(bool(value))


class RegisterImage:
    """Registers of every unit of ``regmap`` (layout in :mod:`~st2000r.bridge.layout`).

    ``regs[unit]``: input registers, index ``address - reg_start[unit]``; ``coils[unit]``:
    coils packed 16 per int (bit 0 first), index ``address // 16 - coil_start[unit]``.
    Until :meth:`bind` gives it the server's lists it keeps its own (tests read those).
    """

    def __init__(self, regmap: RegisterMap, clock: IReactorTime) -> None:
        self.map = regmap
        self.clock = clock
        self.regs: dict[int, list[int]] = {}
        self.reg_start: dict[int, int] = {}
        self.coils: dict[int, list[int]] = {}
        self.coil_start: dict[int, int] = {}
        #: unit -> meter base -> reading time (POSIX seconds), for the age registers
        self.read_at: dict[int, dict[int, float]] = {u: {} for u in regmap.units}
        #: unit -> coil address -> meter id (the write path's lookup)
        self.coil_meters: dict[int, dict[int, str]] = {u: {} for u in regmap.units}
        for mid, (unit, base) in regmap.meters.items():
            self.coil_meters[unit][base] = mid
        self._online: dict[str, dict[int, bool]] = {name: {} for name in regmap.links}
        self._rounds: dict[str, int] = dict.fromkeys(regmap.links, 0)
        for unit in regmap.units:
            self.bind(unit, [0] * 65536, 0, [0] * 4096, 0)

    # ---------------------------------------------------------------- storage

    def input_ranges(self, unit: int) -> list[tuple[int, int]]:
        """``(start, count)`` of the valid input registers of ``unit``: header and CDT blocks."""
        return [(0, L.HEADER_SIZE)] + [(base, L.CDT_BLOCK) for base in self.map.units[unit][1]]

    def coil_range(self, unit: int) -> tuple[int, int] | None:
        """``(first, count)`` of the coil span of ``unit`` (16-aligned), or None without meters."""
        bases = list(self.coil_meters[unit])
        if not bases:
            return None
        first = min(bases) // 16 * 16
        return first, (max(bases) - first) // 16 * 16 + 16

    def bind(self, unit: int, regs: list[int], reg_start: int, coils: list[int], coil_start: int) -> None:
        """Serve from these lists from now on (the server's own); the header is (re)written."""
        self.regs[unit], self.reg_start[unit] = regs, reg_start
        self.coils[unit], self.coil_start[unit] = coils, coil_start
        link, bases = self.map.units[unit]
        lm = self.map.links[link]
        self.set16(unit, _H["map_version"], L.MAP_VERSION)
        self.set64(unit, _H["map_hash"], self.map.hash)
        self.set16(unit, _H["unit_index"], unit - lm.first_unit)
        self.set16(unit, _H["link_state"], L.LINK_STATE_CODES["disconnected"])
        self.set16(unit, _H["link_signal"], L.UNKNOWN16)
        self.set16(unit, _H["link_cdts"], len(lm.slots))
        for source, (u, base, slot) in self.map.cdts.items():
            if u == unit:
                for name in ("online", "mains", "battery_low", "battery_mv"):
                    self.set16(unit, base + _C[name], L.UNKNOWN16)
                self.set32(unit, base + _C["address"], int(source.rsplit("/", 1)[1]))
                self.set16(unit, base + _C["slot"], slot)
        for mid, (u, base) in self.map.meters.items():
            if u == unit:
                self.set16(unit, base + _M["quality"], L.NO_VALUE | L.QUALITY_CODES["stale"])
                self.set32(unit, base + _M["age"], L.UNKNOWN32)
                self.set16(unit, base + _M["valve"], L.VALVE_UNKNOWN)

    def set16(self, unit: int, address: int, value: int) -> None:
        self.regs[unit][address - self.reg_start[unit]] = value & 0xFFFF

    def set32(self, unit: int, address: int, value: int) -> None:
        i = address - self.reg_start[unit]
        regs = self.regs[unit]
        regs[i] = (value >> 16) & 0xFFFF
        regs[i + 1] = value & 0xFFFF

    def set64(self, unit: int, address: int, value: int) -> None:
        self.set32(unit, address, value >> 32)
        self.set32(unit, address + 2, value & 0xFFFFFFFF)

    def get16(self, unit: int, address: int) -> int:
        return self.regs[unit][address - self.reg_start[unit]]

    def get32(self, unit: int, address: int) -> int:
        i = address - self.reg_start[unit]
        return (self.regs[unit][i] << 16) | self.regs[unit][i + 1]

    def set_coil(self, unit: int, address: int, on: bool) -> None:
        i = address // 16 - self.coil_start[unit]
        bit = 1 << (address % 16)
        coils = self.coils[unit]
        coils[i] = (coils[i] | bit) if on else (coils[i] & ~bit)

    def coil(self, unit: int, address: int) -> bool:
        return bool(self.coils[unit][address // 16 - self.coil_start[unit]] & (1 << (address % 16)))

    # ---------------------------------------------------------------- points

    def meter(self, mid: str, value: int | None, quality: str, timestamp: Any, valve: Any, alarms: int) -> None:
        """Write one meter's point (``valve``: a ``Valve`` (int) or None; ``alarms``: AlarmFlag bits)."""
        where = self.map.meters.get(mid)
        if where is None:
            return
        unit, base = where
        code = L.QUALITY_CODES.get(quality, L.QUALITY_CODES["stale"])
        if value is None:
            code |= L.NO_VALUE
            value = 0
        elif value > L.UNKNOWN32:
            code |= L.SATURATED
            value = L.UNKNOWN32
        self.set32(unit, base + _M["value"], max(value, 0))
        self.set16(unit, base + _M["quality"], code)
        if timestamp is None:
            self.read_at[unit].pop(base, None)
            self.set32(unit, base + _M["age"], L.UNKNOWN32)
        else:
            self.read_at[unit][base] = timestamp.timestamp()
            self.set32(unit, base + _M["age"], self._age(timestamp.timestamp()))
        bits = int(alarms) & 0x7
        if quality == "comm_fail":
            bits |= L.ALARM_COMM_FAIL
        self.set16(unit, base + _M["alarms"], bits)
        if valve is None:
            self.set16(unit, base + _M["valve"], L.VALVE_UNKNOWN)
        else:
            self.set16(unit, base + _M["valve"], int(valve))
            self.set_coil(unit, base, int(valve) == 0)  # Valve.OPEN; closed, fault and none read 0

    def cdt(self, link: str, address: int, online: bool | None, mains: bool | None, battery_low: bool | None,
            battery_mv: int | None, modules: frozenset[int] | None) -> None:
        where = self.map.cdts.get(f"{link}/{address}")
        if where is None:
            return
        unit, base, _ = where
        self.set16(unit, base + _C["online"], _flag(online))
        self.set16(unit, base + _C["mains"], _flag(mains))
        self.set16(unit, base + _C["battery_low"], _flag(battery_low))
        self.set16(unit, base + _C["battery_mv"], L.UNKNOWN16 if battery_mv is None else min(battery_mv, 0xFFFE))
        self.set32(unit, base + _C["modules"], sum(1 << (n - 1) for n in modules or ()))
        online_map = self._online.get(link)
        if online_map is not None:
            online_map[address] = bool(online)
            self._link_set16(link, "link_cdts_online", sum(online_map.values()))

    def link(self, name: str, state: str, signal: int | None) -> None:
        self._link_set16(name, "link_state", L.LINK_STATE_CODES.get(state, 1))
        self._link_set16(name, "link_signal", L.UNKNOWN16 if signal is None else signal)

    def link_stats(self, name: str, stats: Any) -> None:
        """Counters of the link's bus master (``LinkStats.as_dict()``)."""
        for point, key in (("link_transactions", "requests"), ("link_timeouts", "timeouts"),
                           ("link_checksum_errors", "checksum_errors")):
            self._link_set32(name, point, int(stats.get(key, 0) or 0) & 0xFFFFFFFF)

    def command(self, target: str, state: str) -> None:
        where = self.map.meters.get(target)
        if where is not None:
            unit, base = where
            self.set16(unit, base + _M["command_status"], L.COMMAND_CODES.get(state, 0))

    def _link_units(self, name: str) -> list[int]:
        lm = self.map.links.get(name)
        return [u for u in lm.units() if u in self.regs] if lm is not None else []

    def _link_set16(self, name: str, point: str, value: int) -> None:
        for unit in self._link_units(name):
            self.set16(unit, _H[point], value)

    def _link_set32(self, name: str, point: str, value: int) -> None:
        for unit in self._link_units(name):
            self.set32(unit, _H[point], value)

    # ---------------------------------------------------------------- events and snapshots

    def apply(self, event: Any) -> None:
        """The event bus consumer: one change event into the registers."""
        t = type(event)
        if t is MeterChanged:
            self.meter(str(event.meter), event.value, event.quality.value, event.timestamp, event.valve,
                       int(event.alarms))
        elif t is CdtChanged:
            self.cdt(event.link, event.cdt, event.online, event.mains, event.battery_low, event.battery_mv,
                     event.modules)
        elif t is LinkChanged:
            self.link(event.link, event.state.value, event.signal)
        elif t is CommandChanged:
            if event.command.kind is CommandKind.VALVE:
                self.command(event.command.target, event.command.state.value)
        elif t is RoundDone and event.link in self._rounds:
            self._rounds[event.link] += 1
            self._link_set32(event.link, "link_rounds", self._rounds[event.link])

    def fill(self, points: Any, commands: Any = None) -> None:
        """Everything the point database (and the command history) holds now."""
        for mp in points.meters():
            self.meter(str(mp.id), mp.value, mp.quality.value, mp.timestamp, mp.valve, int(mp.alarms))
        for cp in points.cdts():
            self.cdt(cp.link, cp.address, cp.online, cp.mains, cp.battery_low, cp.battery_mv, cp.modules)
        for lp in points.links():
            self.link(lp.name, lp.state.value, lp.signal)
            self.link_stats(lp.name, lp.stats)
        if commands is not None:
            for record in commands.history():
                if record.kind is CommandKind.VALVE:
                    self.command(record.target, record.state.value)

    # ---------------------------------------------------------------- ages

    def _age(self, at: float) -> int:
        return min(max(int(self.clock.seconds() - at), 0), L.UNKNOWN32 - 1)

    def refresh_ages(self, unit: int, address: int, count: int) -> None:
        """Rewrite the age registers of the meters whose block overlaps ``[address, address+count)``."""
        read_at = self.read_at.get(unit)
        if not read_at:
            return
        now = self.clock.seconds()
        regs, start = self.regs[unit], self.reg_start[unit]
        first = (address - L.METER_STRIDE) // L.METER_STRIDE * L.METER_STRIDE
        for base in range(max(first, 0), address + count, L.METER_STRIDE):
            at = read_at.get(base)
            if at is not None:
                age = min(max(int(now - at), 0), L.UNKNOWN32 - 1)
                i = base + _M["age"] - start
                regs[i] = age >> 16
                regs[i + 1] = age & 0xFFFF
