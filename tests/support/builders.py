"""Topology builders shared by the test folders (no tests here): ``build_*`` take every
convention as an argument; ``make_*`` are the supervisor tests' conventions."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from st2000r.config.model import (
    Cdt,
    Channel,
    Interlocks,
    LineSettings,
    Link,
    Meter,
    MeterKind,
    Module,
    Operator,
    Repeater,
    SerialEndpoint,
    Site,
    Topology,
)
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.supervisor.events import EventBus

KINDS = (MeterKind.WATER, MeterKind.ELECTRICITY, MeterKind.GAS)
PULSE = {MeterKind.WATER: 10, MeterKind.ELECTRICITY: 1, MeterKind.GAS: 10}
T0 = 1_780_000_000.0  # 2026-05-28, a clock instant the tests start from


def build_cdt(address: int, modules: Iterable[int], *, serial: Callable[[int, int, int], str],
              initial: Callable[[int], int], name: str, repeater: str | None = None, inputs: Iterable[int] = (1, 2, 3),
              household: str = "H{cdt}-{module}") -> Cdt:
    """A CDT with ``modules``, each with the flat's meters on ``inputs`` (1 water, 2
    electricity, 3 gas); ``serial(cdt, module, input)`` and ``initial(input)`` give each
    meter's serial and count, ``household`` is formatted with ``cdt`` and ``module``."""
    mods = []
    for mod in modules:
        chans = tuple(
            Channel(ch, Meter(KINDS[ch - 1], PULSE[KINDS[ch - 1]], serial(address, mod, ch), initial(ch),
                              household.format(cdt=address, module=mod)))
            for ch in inputs
        )
        mods.append(Module(mod, chans))
    return Cdt(address, name, repeater, tuple(mods))


def build_link(name: str, cdts: Iterable[Cdt], *, device: str = "/dev/null", baud: int = 9600, parity: str = "E",
               turnaround_ms: int = 20, di_order: str = "901F", repeaters: Iterable[Repeater] = ()) -> Link:
    """A serial link on ``device`` (8 data bits, 1 stop bit) with ``cdts`` in the order given."""
    return Link(name=name, kind="serial", endpoint=SerialEndpoint(device), line=LineSettings(baud, 8, parity, 1),
                turnaround_ms=turnaround_ms, di_order=di_order, repeaters=tuple(repeaters), cdts=tuple(cdts))


def build_topology(links: Iterable[Link], *, site: str = "test site", address: str = "nowhere", **extra) -> Topology:
    """One site with ``links``; ``extra``: the other ``Topology`` fields (plans, operators, ...)."""
    return Topology(sites=(Site(site, address, tuple(links)),), source="<test>", **extra)


def make_cdt(address: int, modules: int = 2, repeater: str | None = None, initial: int = 1000) -> Cdt:
    return build_cdt(address, range(1, modules + 1), repeater=repeater, name=f"cdt-{address}",
                     serial=lambda a, mod, ch: f"{a:06d}{mod:03d}{ch:03d}".zfill(14), initial=lambda ch: initial * ch)


def make_link(name: str = "bus", cdts: tuple[Cdt, ...] | None = None, repeaters: tuple[Repeater, ...] = (),
              baud: int = 9600) -> Link:
    if cdts is None:
        cdts = (make_cdt(1), make_cdt(2))
    return build_link(name, cdts, repeaters=repeaters, baud=baud)


def make_topology(*links: Link, **extra) -> Topology:
    return build_topology(links or (make_link(),), **extra)


def repeater_topology() -> Topology:
    """CDTs 1, 2 on the bus; 3, 4 behind R1; 5, 6 behind R2 (child of R1); 7, 8 behind R3."""
    reps = (Repeater("R1", None, 5), Repeater("R2", "R1", 5), Repeater("R3", None, 5))
    cdts = (make_cdt(1), make_cdt(2), make_cdt(3, repeater="R1"), make_cdt(4, repeater="R1"),
            make_cdt(5, repeater="R2"), make_cdt(6, repeater="R2"), make_cdt(7, repeater="R3"),
            make_cdt(8, repeater="R3"))
    return make_topology(make_link(cdts=cdts, repeaters=reps))


OPERATORS = (Operator("alice", "operator", None), Operator("victor", "viewer", None),
             Operator("erin", "engineer", None), Operator("modbus", "operator", None))


def command_topology(max_closes: int = 10, protected=("H2-1",)) -> Topology:
    return make_topology(make_link(), operators=OPERATORS,
                         interlocks=Interlocks(frozenset(protected), max_closes))


def bulk(cdt: int, counts, first: int = 1, statuses=None) -> m.BulkReadReply:
    statuses = statuses or [0] * len(counts)
    return m.BulkReadReply(meter_type=m.CDT_TYPE, address=f"{cdt:014d}", first_channel=first,
                           channels=tuple(m.ChannelReading(c, s) for c, s in zip(counts, statuses, strict=True)))


def status(valve: Valve = Valve.OPEN, alarms: AlarmFlag = AlarmFlag.NONE, absent: bool = False) -> int:
    return m.ChannelReading.status_of(valve, alarms, absent)


def cdt_status(cdt: int, mains: bool = True, battery_low: bool = False, mv: int = 3600,
               modules=(1, 2)) -> m.CdtStatus:
    return m.CdtStatus(meter_type=m.CDT_TYPE, address=f"{cdt:014d}", mains=mains, battery_low=battery_low,
                       battery_mv=mv, modules=frozenset(modules))


class Recorder:
    """Subscribes to an EventBus and keeps every event."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list = []
        bus.subscribe(self.events.append)

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def clear(self) -> None:
        self.events.clear()
