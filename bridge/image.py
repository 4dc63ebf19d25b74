"""The register image: the point database's state written into Modbus registers and coils.

Registers are kept **pre-encoded**: one ``bytearray`` of 65,536 big-endian registers per unit
(register ``a`` is bytes ``2a, 2a+1``), so the answer to a read is a slice of it (see
:meth:`RegisterImage.read`), never a list of ints packed again per request.  Every meter has
its place computed once (a tuple of ints: unit, byte offset, coil word and bit, age block,
base address; the garbage collector stops tracking such tuples, so 12,288 meters add no
work to its full collections), so a reading is one dictionary lookup and one
``struct.pack_into`` of the meter's seven registers (value, quality, age, alarms, valve), no
per-reading objects.

Fed by one queued consumer of the event bus (change events coalesce per point when it falls
behind, so a full-round burst never grows its queue beyond one entry per point; the bus
drains it in bounded slices per reactor turn) and filled from the point database's snapshots
at start.

Values are integers end to end: a reading above 4,294,967,295 base units shows 4294967295
with the quality flag ``SATURATED`` (never wrapped: a wrapped counter would look like a
plausible reading).  The age register is exact when read: a read first rewrites the ages of
the CDT blocks it touches whose ages may have ticked since they were written (each block
keeps the earliest instant one of its ages goes out of date), from each reading's own
timestamp and the injected clock, so no timer is needed and a read of an up-to-date block
costs two comparisons.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.interfaces import IReactorTime

from st2000r.bridge import layout as L
from st2000r.bridge.regmap import RegisterMap
from st2000r.supervisor.events import (
    CdtChanged,
    CommandChanged,
    CommandKind,
    HistorianChanged,
    LinkChanged,
    MeterChanged,
    MeterId,
    Quality,
    RoundDone,
)

__all__ = ["RegisterImage"]

_M = {name: spec[0] for name, spec in L.METER_POINTS.items()}
_C = {name: spec[0] + L.CDT_HEADER for name, spec in L.CDT_POINTS.items()}
_H = {name: spec[0] for name, spec in L.HEADER_POINTS.items()}

# value (uint32), quality, age (uint32), alarms, valve: the meter's first seven registers
assert (_M["value"], _M["quality"], _M["age"], _M["alarms"], _M["valve"]) == (0, 2, 3, 5, 6)
_METER = struct.Struct(">IHIHH")
_U16, _U32 = struct.Struct(">H"), struct.Struct(">I")
_AGE_OFFSET = 2 * _M["age"]
_QUALITY = {q: L.QUALITY_CODES[q.value] for q in Quality}
_QUALITY_BY_NAME = {q.value: q for q in Quality}
_STALE_CODE = L.QUALITY_CODES["stale"]
_COMM_FAIL = Quality.COMM_FAIL
_MAX_AGE = L.UNKNOWN32 - 1
_NEVER = float("inf")
_BLOCKS = 65536 // L.CDT_BLOCK + 1


def _flag(value: bool | None) -> int:
    return L.UNKNOWN16 if value is None else int(bool(value))


class RegisterImage:
    """Registers of every unit of ``regmap`` (layout in :mod:`~st2000r.bridge.layout`).

    ``regs[unit]``: input registers, a ``bytearray`` of 65,536 big-endian words (register
    ``a`` at bytes ``2a``, ``2a+1``); ``coils[unit]``: coils packed 16 per int (bit 0 first),
    index ``address // 16``.  ``clock``: ``seconds()`` for the age registers.
    """

    def __init__(self, regmap: RegisterMap, clock: IReactorTime) -> None:
        self.map = regmap
        self.clock = clock
        self.regs: dict[int, bytearray] = {u: bytearray(2 * 65536) for u in regmap.units}
        self.coils: dict[int, list[int]] = {u: [0] * 4096 for u in regmap.units}
        #: unit -> meter base -> reading time (POSIX seconds), for the age registers
        self.read_at: dict[int, dict[int, float]] = {u: {} for u in regmap.units}
        self._stale: dict[int, list[float]] = {u: [_NEVER] * _BLOCKS for u in regmap.units}
        self._block_meters: dict[int, list[list[int]]] = {u: [[] for _ in range(_BLOCKS)] for u in regmap.units}
        #: unit -> coil address -> meter id (the write path's lookup)
        self.coil_meters: dict[int, dict[int, str]] = {u: {} for u in regmap.units}
        #: meter -> (unit, byte offset, coil word, coil bit, age block, base address); keyed by the
        #: point database's own ids once :meth:`fill` ran (no second set of id objects)
        self._slots: dict[MeterId, tuple[int, int, int, int, int, int]] = {}
        self._slots_by_name: dict[str, tuple[int, int, int, int, int, int]] = {}
        for mid, (unit, base) in regmap.meters.items():
            self.coil_meters[unit][base] = mid
            slot = (unit, 2 * base, base // 16, 1 << (base % 16), base // L.CDT_BLOCK, base)
            self._slots[MeterId.parse(mid)] = self._slots_by_name[mid] = slot
            self._block_meters[unit][slot[4]].append(base)
        self._online: dict[str, dict[int, bool]] = {name: {} for name in regmap.links}
        self._rounds: dict[str, int] = dict.fromkeys(regmap.links, 0)
        self._apply = {MeterChanged: self._meter_changed, CdtChanged: self._cdt_changed,
                       LinkChanged: self._link_changed, CommandChanged: self._command_changed,
                       RoundDone: self._round_done, HistorianChanged: self._historian_changed}
        for unit in regmap.units:
            self._header(unit)

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

    def _header(self, unit: int) -> None:
        """The unit's constant registers and the initial state of its points."""
        link, bases = self.map.units[unit]
        lm = self.map.links[link]
        self.set16(unit, _H["map_version"], L.MAP_VERSION)
        self.set64(unit, _H["map_hash"], self.map.hash)
        self.set16(unit, _H["unit_index"], unit - lm.first_unit)
        self.set16(unit, _H["link_state"], L.LINK_STATE_CODES["disconnected"])
        self.set16(unit, _H["link_signal"], L.UNKNOWN16)
        self.set16(unit, _H["link_cdts"], len(lm.slots))
        self.set16(unit, _H["historian_state"], L.UNKNOWN16)
        for source, (u, base, slot) in self.map.cdts.items():
            if u == unit:
                for name in ("online", "mains", "battery_low", "battery_mv"):
                    self.set16(unit, base + _C[name], L.UNKNOWN16)
                self.set32(unit, base + _C["address"], int(source.rsplit("/", 1)[1]))
                self.set16(unit, base + _C["slot"], slot)
        for mid, (u, base) in self.map.meters.items():
            if u == unit:
                self.set16(unit, base + _M["quality"], L.NO_VALUE | _STALE_CODE)
                self.set32(unit, base + _M["age"], L.UNKNOWN32)
                self.set16(unit, base + _M["valve"], L.VALVE_UNKNOWN)

    def set16(self, unit: int, address: int, value: int) -> None:
        _U16.pack_into(self.regs[unit], 2 * address, value & 0xFFFF)

    def set32(self, unit: int, address: int, value: int) -> None:
        _U32.pack_into(self.regs[unit], 2 * address, value & 0xFFFFFFFF)

    def set64(self, unit: int, address: int, value: int) -> None:
        self.set32(unit, address, value >> 32)
        self.set32(unit, address + 2, value & 0xFFFFFFFF)

    def get16(self, unit: int, address: int) -> int:
        return _U16.unpack_from(self.regs[unit], 2 * address)[0]

    def get32(self, unit: int, address: int) -> int:
        return _U32.unpack_from(self.regs[unit], 2 * address)[0]

    def registers(self, unit: int, address: int, count: int) -> list[int]:
        """``count`` registers from ``address`` as ints, ages brought up to date (as :meth:`read`)."""
        return list(struct.unpack(f">{count}H", self.read(unit, address, count)))

    def read(self, unit: int, address: int, count: int) -> bytes:
        """``count`` registers from ``address`` of ``unit`` as the bytes of a Modbus answer
        (big-endian words), the ages of the CDT blocks they touch brought up to date first.
        The range is the caller's to check."""
        stale = self._stale[unit]
        first, last = address // L.CDT_BLOCK, (address + count - 1) // L.CDT_BLOCK
        now = self.clock.seconds()
        if now >= stale[first]:
            self._refresh_block(unit, first, now)
        if last != first and now >= stale[last]:
            self._refresh_block(unit, last, now)
        return bytes(self.regs[unit][2 * address:2 * (address + count)])

    def set_coil(self, unit: int, address: int, on: bool) -> None:
        i = address // 16
        bit = 1 << (address % 16)
        coils = self.coils[unit]
        coils[i] = (coils[i] | bit) if on else (coils[i] & ~bit)

    def coil(self, unit: int, address: int) -> bool:
        return bool(self.coils[unit][address // 16] & (1 << (address % 16)))

    # ---------------------------------------------------------------- points

    def meter(self, mid: str, value: int | None, quality: str, timestamp: Any, valve: Any, alarms: int) -> None:
        """Write one meter's point (``quality``: a ``Quality`` value spelling, an unknown one
        shows as stale; ``valve``: a ``Valve`` (int) or None; ``alarms``: AlarmFlag bits)."""
        slot = self._slots_by_name.get(mid)
        if slot is not None:
            self._write_meter(slot, value, _QUALITY_BY_NAME.get(quality, Quality.STALE),
                              None if timestamp is None else timestamp.timestamp(), valve, int(alarms))

    def _write_meter(self, slot: tuple[int, int, int, int, int, int], value: int | None, quality: Quality,
                     at: float | None, valve: Any, alarms: int) -> None:
        unit, offset, word, bit, block, base = slot
        code = _QUALITY[quality]
        if value is None:
            code |= L.NO_VALUE
            value = 0
        elif value > L.UNKNOWN32:
            code |= L.SATURATED
            value = L.UNKNOWN32
        elif value < 0:
            value = 0
        if at is None:
            self.read_at[unit].pop(base, None)
            age = L.UNKNOWN32
        else:
            self.read_at[unit][base] = at
            age = self.clock.seconds() - at
            age = 0 if age < 0 else (int(age) if age < _MAX_AGE else _MAX_AGE)
            next_tick = at + age + 1
            stale = self._stale[unit]
            if next_tick < stale[block]:
                stale[block] = next_tick
        bits = alarms & 0x7
        if quality is _COMM_FAIL:
            bits |= L.ALARM_COMM_FAIL
        if valve is None:
            valve_code = L.VALVE_UNKNOWN
        else:
            valve_code = int(valve)
            coils = self.coils[unit]
            coils[word] = (coils[word] | bit) if valve_code == 0 else (coils[word] & ~bit)  # Valve.OPEN
        _METER.pack_into(self.regs[unit], offset, value, code, age, bits, valve_code)

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

    def historian(self, state: str, spool_rows: int, spool_bytes: int, spool_max_bytes: int, oldest_age_s: float,
                  write_rate: float, quarantined: int) -> None:
        """The historian's status into every unit header (32-bit figures saturate at 4294967295)."""
        used = min(1000, spool_bytes * 1000 // spool_max_bytes) if spool_max_bytes > 0 else 0
        figures = ((16, "historian_state", L.HISTORIAN_STATE_CODES.get(state, L.UNKNOWN16)),
                   (32, "historian_spool_rows", spool_rows), (32, "historian_oldest_age", int(oldest_age_s)),
                   (32, "historian_write_rate", round(write_rate)), (16, "historian_spool_used", used),
                   (32, "historian_quarantined", quarantined))
        for unit in self.regs:
            for bits, point, value in figures:
                value = min(max(value, 0), L.UNKNOWN32)
                if bits == 16:
                    self.set16(unit, _H[point], value)
                else:
                    self.set32(unit, _H[point], value)

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
        """The event bus consumer: one change event into the registers (other types ignored)."""
        handler = self._apply.get(type(event))
        if handler is not None:
            handler(event)

    def _meter_changed(self, event: MeterChanged) -> None:
        slot = self._slots.get(event.meter)
        if slot is not None:
            timestamp = event.timestamp
            self._write_meter(slot, event.value, event.quality, None if timestamp is None else timestamp.timestamp(),
                              event.valve, int(event.alarms))

    def _cdt_changed(self, event: CdtChanged) -> None:
        self.cdt(event.link, event.cdt, event.online, event.mains, event.battery_low, event.battery_mv, event.modules)

    def _link_changed(self, event: LinkChanged) -> None:
        self.link(event.link, event.state.value, event.signal)

    def _command_changed(self, event: CommandChanged) -> None:
        if event.command.kind is CommandKind.VALVE:
            self.command(event.command.target, event.command.state.value)

    def _historian_changed(self, event: HistorianChanged) -> None:
        self.historian(event.state, event.spool_rows, event.spool_bytes, event.spool_max_bytes, event.oldest_age_s,
                       event.write_rate, event.quarantined)

    def _round_done(self, event: RoundDone) -> None:
        if event.link in self._rounds:
            self._rounds[event.link] += 1
            self._link_set32(event.link, "link_rounds", self._rounds[event.link])

    def fill(self, points: Any, commands: Any = None, historian: Any = None) -> None:
        """Everything the point database (and the command history, and the historian's
        ``status()``) holds now."""
        for mp in points.meters():
            slot = self._slots.pop(mp.id, None)
            if slot is not None:
                self._slots[mp.id] = slot  # keyed by the point database's id object from now on
                self._write_meter(slot, mp.value, mp.quality, None if mp.timestamp is None else mp.timestamp.timestamp(),
                                  mp.valve, int(mp.alarms))
        for cp in points.cdts():
            self.cdt(cp.link, cp.address, cp.online, cp.mains, cp.battery_low, cp.battery_mv, cp.modules)
        for lp in points.links():
            self.link(lp.name, lp.state.value, lp.signal)
            self.link_stats(lp.name, lp.stats)
        if commands is not None:
            for record in commands.history():
                if record.kind is CommandKind.VALVE:
                    self.command(record.target, record.state.value)
        if historian is not None:
            s = historian.status()
            self.historian(s.state, s.spool_rows, s.spool_bytes, s.spool_max_bytes, s.oldest_age_s, s.rate,
                           s.quarantined)

    # ---------------------------------------------------------------- ages

    def _refresh_block(self, unit: int, block: int, now: float) -> None:
        """Rewrite the age registers of the meters of ``block`` and when they next tick."""
        read_at, buf = self.read_at[unit], self.regs[unit]
        next_tick = _NEVER
        for base in self._block_meters[unit][block]:
            at = read_at.get(base)
            if at is None:
                continue
            age = now - at
            age = 0 if age < 0 else (int(age) if age < _MAX_AGE else _MAX_AGE)
            _U32.pack_into(buf, 2 * base + _AGE_OFFSET, age)
            if at + age + 1 < next_tick:
                next_tick = at + age + 1
        self._stale[unit][block] = next_tick
