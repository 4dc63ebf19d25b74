"""The register map of a topology: slots, unit ids, the lock file, and every register as a row.

Why a lock file: a CDT's registers must never move once a SCADA has imported them, but CDT
addresses are sparse and files get edited anywhere.  So a CDT's *slot* (its register block,
:mod:`st2000r.bridge.layout`) is either written in the configuration (``slot = N``) or assigned
the first time the map is made and recorded in a lock file beside the configuration
(``NAME.modbus-lock.json``, like a package lock file).  The same holds for a link's first unit
id (``[modbus] units`` or the lock).  Rules of :func:`assign`:

- an explicit ``slot`` / ``units`` entry wins; a locked one is kept; a new CDT (link) takes the
  lowest slot (unit block) that is neither explicit nor locked;
- a locked slot of a CDT that left the configuration stays reserved (it comes back to the
  same registers, and nothing else takes them);
- a conflict (an explicit slot held in the lock by another CDT still configured, a link with
  more than 256 slots in use) is a :class:`MapError` naming both: nothing is repaired silently.

:func:`build_map` returns the :class:`RegisterMap` (lookups for the register image) and the
new lock content; the rows (:meth:`RegisterMap.rows`) are what ``st2000r registers export``
writes and what the map hash covers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from st2000r.bridge import layout as L
from st2000r.config.model import Topology

__all__ = ["MapError", "Row", "LinkMap", "RegisterMap", "assign", "build_map", "lock_path", "read_lock",
           "write_lock", "load_map"]

LOCK_FORMAT = 1


class MapError(Exception):
    """The map cannot be made as configured (conflict, lock file unreadable); says why."""


@dataclass(frozen=True, slots=True)
class Row:
    """One register (or coil) of the map, as exported.  ``address``: 0-based protocol address;
    ``port``: the TCP port serving it (None without a TCP server)."""

    unit: int
    port: int | None
    table: str
    address: int
    type: str
    word_order: str
    point: str
    source: str
    unit_of_measure: str
    description: str
    description_zh: str

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class LinkMap:
    """A link on the map: its first unit id and ``slots`` (CDT address -> slot) of the CDTs
    configured now (the lock may reserve more)."""

    name: str
    first_unit: int
    slots: dict[int, int]

    def units(self) -> range:
        return range(self.first_unit, self.first_unit + L.UNITS_PER_LINK)


# ---------------------------------------------------------------- the lock file

def lock_path(topology: Topology) -> str | None:
    """Where the lock file of ``topology`` lives: ``[modbus] map_lock`` (relative to the
    configuration's folder), else ``NAME.modbus-lock.json`` beside it; None for a topology
    not read from a file (then the map is made fresh, in memory only)."""
    settings = topology.modbus
    source = topology.source
    if settings is not None and settings.map_lock is not None:
        base = os.path.dirname(source) if os.path.isfile(source) else ""
        return os.path.join(base, settings.map_lock)
    if not os.path.isfile(source):
        return None
    stem, _ = os.path.splitext(source)
    return stem + ".modbus-lock.json"


def read_lock(path: str | None) -> dict[str, Any]:
    """The lock content (``{"format": 1, "links": {name: {"first_unit": n, "slots": {addr: slot}}}}``);
    an absent file is an empty lock.  Raises ``MapError`` for a file that is not a lock."""
    empty: dict[str, Any] = {"format": LOCK_FORMAT, "links": {}}
    if path is None or not os.path.exists(path):
        return empty
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise MapError(f"map lock file {path}: cannot be read: {exc}") from None
    problem = _lock_problem(data)
    if problem:
        raise MapError(f"map lock file {path}: {problem} (fix or remove it; removing it may move registers)")
    return data


def _lock_problem(data: Any) -> str | None:
    if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT or not isinstance(data.get("links"), dict):
        return f"not a map lock of format {LOCK_FORMAT}"
    for name, entry in data["links"].items():
        if not isinstance(entry, dict) or type(entry.get("first_unit")) is not int \
                or not isinstance(entry.get("slots"), dict):
            return f"link {name!r}: expected first_unit and slots"
        for addr, slot in entry["slots"].items():
            if not (addr.isdigit() and type(slot) is int and 0 <= slot < L.SLOTS_PER_LINK):
                return f"link {name!r}: bad slot entry {addr!r}: {slot!r}"
    return None


def write_lock(path: str, lock: dict[str, Any]) -> None:
    """Write the lock atomically (temporary file, then rename).  Raises ``MapError``."""
    text = json.dumps(lock, indent=1, sort_keys=True) + "\n"
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise MapError(f"map lock file {path}: cannot be written: {exc}") from None


# ---------------------------------------------------------------- assignment

def assign(topology: Topology, lock: dict[str, Any]) -> tuple[list[LinkMap], dict[str, Any]]:
    """Slots and unit ids for every link (rules in the module docstring); the new lock."""
    settings = topology.modbus
    explicit_units = dict(settings.units) if settings is not None else {}
    old = lock.get("links", {})
    links = list(topology.links())
    names = {link.name for link in links}
    new_links: dict[str, Any] = {name: dict(entry) for name, entry in old.items()}
    # unit blocks: explicit, then locked (unless the link is explicit), then the lowest free
    taken: dict[int, str] = {}
    first: dict[str, int] = {}
    for name, unit in explicit_units.items():
        first[name] = unit
        for u in range(unit, unit + L.UNITS_PER_LINK):
            taken[u] = name
    for name, entry in old.items():
        if name in first:
            continue
        unit = entry["first_unit"]
        clash = next((taken[u] for u in range(unit, unit + L.UNITS_PER_LINK) if u in taken), None)
        if clash is not None:
            if name in names:
                raise MapError(f"link {name!r} holds unit ids {unit}..{unit + L.UNITS_PER_LINK - 1} in the map "
                               f"lock, but [modbus] units gives them to link {clash!r}")
            del new_links[name]  # a departed link's block given away explicitly
            continue
        first[name] = unit
        for u in range(unit, unit + L.UNITS_PER_LINK):
            taken[u] = name
    for link in links:
        if link.name in first:
            continue
        unit = 1
        while any(u in taken for u in range(unit, unit + L.UNITS_PER_LINK)):
            unit += L.UNITS_PER_LINK
        if unit + L.UNITS_PER_LINK - 1 > 247:
            raise MapError(f"link {link.name!r}: no free unit ids left (each link takes {L.UNITS_PER_LINK})")
        first[link.name] = unit
        for u in range(unit, unit + L.UNITS_PER_LINK):
            taken[u] = link.name
    maps = []
    for link in links:
        locked = {int(a): s for a, s in old.get(link.name, {}).get("slots", {}).items()}
        configured = {cdt.address for cdt in link.cdts}
        explicit = {cdt.address: cdt.slot for cdt in link.cdts if cdt.slot is not None}
        owner = {s: a for a, s in locked.items()}
        for address, slot in explicit.items():
            holder = owner.get(slot)
            if holder is not None and holder != address and holder in configured and holder not in explicit:
                raise MapError(f"link {link.name!r}: CDT {address} has slot = {slot}, but the map lock gives slot "
                               f"{slot} to CDT {holder}; give CDT {holder} its own slot, or remove its entry from "
                               f"the lock file (its registers would move)")
        slots = dict(locked)
        for address, slot in explicit.items():  # an explicit slot takes over (a deliberate move)
            for a, s in list(slots.items()):
                if s == slot and a != address:
                    del slots[a]
            slots[address] = slot
        used = set(slots.values())
        free = (s for s in range(L.SLOTS_PER_LINK) if s not in used)
        for cdt in link.cdts:
            if cdt.address not in slots:
                slot = next(free, None)
                if slot is None:
                    raise MapError(f"link {link.name!r}: more than {L.SLOTS_PER_LINK} slots in use (the lock "
                                   "reserves the slots of removed CDTs: remove those entries to free them)")
                slots[cdt.address] = slot
        new_links[link.name] = {"first_unit": first[link.name],
                                "slots": {str(a): s for a, s in sorted(slots.items())}}
        maps.append(LinkMap(link.name, first[link.name], {a: slots[a] for a in sorted(configured)}))
    return maps, {"format": LOCK_FORMAT, "links": new_links}


# ---------------------------------------------------------------- the map

class RegisterMap:
    """Where each point of ``topology`` is (see :mod:`~st2000r.bridge.layout`).

    ``meters``: meter id string -> ``(unit, base address)``; ``cdts``: ``"link/cdt"`` ->
    ``(unit, base, slot)``; ``links``: link name -> :class:`LinkMap`; ``units``: unit id ->
    ``(link name, [CDT bases in that unit])``; ``hash``: 64-bit hash of every row's place.
    """

    def __init__(self, topology: Topology, links: list[LinkMap]) -> None:
        self.topology = topology
        self.port = topology.modbus.tcp[1] if topology.modbus is not None and topology.modbus.tcp else None
        self.links = {lm.name: lm for lm in links}
        self.meters: dict[str, tuple[int, int]] = {}
        self.meter_units: dict[str, str] = {}
        self.cdts: dict[str, tuple[int, int, int]] = {}
        self.units: dict[int, tuple[str, list[int]]] = {}
        for link in topology.links():
            lm = self.links[link.name]
            for cdt in link.cdts:
                slot = lm.slots[cdt.address]
                unit = L.unit_of_slot(lm.first_unit, slot)
                base = L.cdt_base(slot)
                self.cdts[f"{link.name}/{cdt.address}"] = (unit, base, slot)
                self.units.setdefault(unit, (link.name, []))[1].append(base)
                for module, channel, meter in cdt.meters():
                    mid = f"{link.name}/{cdt.address}/{module}/{channel}"
                    self.meters[mid] = (unit, L.meter_base(slot, module, channel))
                    self.meter_units[mid] = meter.kind.base_unit
            if not link.cdts:  # a link with no CDT still shows its header on its first unit
                self.units.setdefault(lm.first_unit, (link.name, []))
        for _, bases in self.units.values():
            bases.sort()
        digest = hashlib.sha256()
        for row in self.rows(with_hash=False):
            digest.update(f"{row.unit},{row.table},{row.address},{row.type},{row.point},{row.source}\n".encode())
        self.hash = int.from_bytes(digest.digest()[:8], "big")

    def rows(self, *, with_hash: bool = True) -> Iterator[Row]:
        """Every register and coil, by unit then table then address."""
        port = self.port

        def row(unit: int, table: str, address: int, point: str, source: str,
                spec: tuple[int, str, str, str, str], uom: str = "") -> Row:
            _, typ, spec_uom, text, text_zh = spec
            return Row(unit, port, table, address, typ if table != "coil" else "bit", "big", point, source,
                       uom or spec_uom, text, text_zh)

        meters_by_unit: dict[int, list[tuple[int, str]]] = {}
        for mid, (unit, base) in self.meters.items():
            meters_by_unit.setdefault(unit, []).append((base, mid))
        cdts_by_unit: dict[int, list[tuple[int, str]]] = {}
        for source, (unit, base, _) in self.cdts.items():
            cdts_by_unit.setdefault(unit, []).append((base, source))
        for unit in sorted(self.units):
            link = self.units[unit][0]
            for point, spec in L.HEADER_POINTS.items():
                if point == "map_hash" and not with_hash:
                    continue
                source = link if point.startswith("link_") else "historian" if point.startswith("historian_") else "map"
                yield row(unit, "input", spec[0], point, source, spec)
            entries: list[tuple[int, int, str, str, tuple]] = []
            for base, source in cdts_by_unit.get(unit, []):
                for point, spec in L.CDT_POINTS.items():
                    entries.append((base + L.CDT_HEADER + spec[0], 0, point, source, spec))
            for base, mid in meters_by_unit.get(unit, []):
                for point, spec in L.METER_POINTS.items():
                    entries.append((base + spec[0], 0, point, mid, spec))
            entries.sort()
            for address, _, point, source, spec in entries:
                uom = self.meter_units.get(source, "") if point == "value" else ""
                yield row(unit, "input", address, point, source, spec, uom)
            for base, mid in sorted(meters_by_unit.get(unit, [])):
                yield row(unit, "coil", base, "valve_open", mid,
                          (0, "bit", "", "valve confirmed open (1) / closed (0); write 1 to open, 0 to close",
                           "阀门开（1）/关（0）；写 1 开阀，写 0 关阀"))


def build_map(topology: Topology, lock: dict[str, Any] | None = None) -> tuple[RegisterMap, dict[str, Any]]:
    """The map of ``topology`` under ``lock`` (default: empty) and the lock to keep."""
    links, new_lock = assign(topology, lock or {"format": LOCK_FORMAT, "links": {}})
    return RegisterMap(topology, links), new_lock


def load_map(topology: Topology, *, write: bool = True) -> RegisterMap:
    """The map of ``topology`` with its lock file read and, when it changed, written back
    (``write``).  Raises ``MapError``."""
    path = lock_path(topology)
    lock = read_lock(path)
    regmap, new_lock = build_map(topology, lock)
    if write and path is not None and new_lock != lock:
        write_lock(path, new_lock)
    return regmap
