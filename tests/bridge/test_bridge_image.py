"""The register image on a ``Clock``: what a meter's change writes (value, quality and its
flags, age, alarm bits, valve register and coil), and ages that are exact whenever they are
read although a block's ages are rewritten only when one of them may have ticked (checked
against a model over a random walk of writes, clock steps and reads)."""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime

from twisted.internet.task import Clock

from support.builders import T0, make_cdt, make_link, make_topology
from st2000r.bridge import layout as L
from st2000r.bridge.image import RegisterImage
from st2000r.bridge.regmap import build_map
from st2000r.config.model import ModbusSettings
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.supervisor.events import MeterChanged, MeterId, Quality


def make_image(cdts: int = 3) -> tuple[RegisterImage, Clock]:
    """CDTs 1..``cdts`` (2 modules, 6 meters each) on one link: slots 0.. -> blocks 1000, 2000, ..."""
    topology = make_topology(make_link(cdts=tuple(make_cdt(a) for a in range(1, cdts + 1))),
                             modbus=ModbusSettings(tcp=None))
    regmap, _ = build_map(topology, None)
    clock = Clock()
    clock.advance(T0)
    return RegisterImage(regmap, clock), clock


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def changed(cdt: int, module: int, channel: int, value, quality=Quality.GOOD, at: float | None = T0,
            valve=Valve.OPEN, alarms=AlarmFlag.NONE) -> MeterChanged:
    ts = None if at is None else utc(at)
    return MeterChanged(MeterId("bus", cdt, module, channel), value, value, quality, ts, valve, alarms, ts, utc(T0))


def meter_registers(image: RegisterImage, base: int) -> tuple[int, ...]:
    """value (32), quality, age (32), alarms, valve, command status of the meter at ``base`` of unit 1."""
    regs = image.registers(1, base, 8)
    return regs[0] << 16 | regs[1], regs[2], regs[3] << 16 | regs[4], regs[5], regs[6], regs[7]


def test_what_a_change_writes():
    image, clock = make_image()
    base = 1000  # CDT 1, module 1, channel 1
    assert meter_registers(image, base) == (0, L.NO_VALUE | 1, L.UNKNOWN32, 0, L.VALVE_UNKNOWN, 0)  # never read
    image.apply(changed(1, 1, 1, 123_456_789, at=T0 - 2.5, alarms=AlarmFlag.TAMPER | AlarmFlag.OPEN))
    assert meter_registers(image, base) == (123_456_789, 0, 2, 0b101, 0, 0)
    assert image.coil(1, base) is True  # open
    image.apply(changed(1, 1, 1, 2**32 + 5, quality=Quality.COMM_FAIL, valve=Valve.CLOSED))
    assert meter_registers(image, base) == (L.UNKNOWN32, L.SATURATED | 2, 0, L.ALARM_COMM_FAIL, 1, 0)
    assert image.coil(1, base) is False
    image.apply(changed(1, 1, 1, None, quality=Quality.STALE, at=None, valve=None))
    assert meter_registers(image, base) == (0, L.NO_VALUE | 1, L.UNKNOWN32, 0, L.VALVE_UNKNOWN, 0)
    assert image.coil(1, base) is False  # an unknown valve leaves the coil as it was
    # the neighbours did not move, and the bytes are big-endian words
    assert meter_registers(image, base + 10) == (0, L.NO_VALUE | 1, L.UNKNOWN32, 0, L.VALVE_UNKNOWN, 0)
    image.apply(changed(1, 2, 3, 0x01020304, at=T0))
    assert image.read(1, 1050, 2) == b"\x01\x02\x03\x04"


def test_ages_are_exact_whenever_read():
    image, clock = make_image()
    meters = [(cdt, module, channel) for cdt in (1, 2, 3) for module in (1, 2) for channel in (1, 2, 3)]
    base = {m: 1000 * m[0] + 30 * (m[1] - 1) + 10 * (m[2] - 1) for m in meters}
    read_at: dict[tuple[int, int, int], float] = {}
    rnd = random.Random(7)
    checked = ticked = 0
    for _ in range(3000):
        step = rnd.random()
        if step < 0.3:
            m = rnd.choice(meters)
            at = clock.seconds() + rnd.uniform(-4.0, 0.5)  # mostly in the past, sometimes ahead of the clock
            image.apply(changed(*m, value=rnd.randrange(10**6), at=at))
            read_at[m] = at
        elif step < 0.6:
            clock.advance(rnd.choice((0.001, 0.05, 0.3, 0.999, 1.0, 2.7)))
        else:  # a read anywhere over the blocks, across a block's end too
            start = rnd.choice((1000, 2000, 3000)) + rnd.randrange(-20, 60)
            count = rnd.randint(1, 125)
            regs = image.registers(1, start, count)
            for m, b in base.items():
                if start <= b + 3 and b + 4 < start + count:
                    age = regs[b + 3 - start] << 16 | regs[b + 4 - start]
                    expected = max(int(clock.seconds() - read_at[m]), 0) if m in read_at else L.UNKNOWN32
                    assert age == expected, (m, clock.seconds(), read_at.get(m))
                    checked += 1
                    ticked += 0 < age < L.UNKNOWN32
    assert checked > 2000 and ticked > 500


def test_a_read_of_an_up_to_date_block_rewrites_nothing():
    image, clock = make_image(1)
    image.apply(changed(1, 1, 1, 7, at=T0 - 0.5))
    image.read(1, 1000, 10)
    before = bytes(image.regs[1])
    image.regs[1][2 * 1003:2 * 1005] = struct.pack(">I", 99)  # an age the image would not write itself
    clock.advance(0.4)  # the age is still 0 until T0 + 0.5
    image.read(1, 1000, 10)
    assert image.get32(1, 1003) == 99  # not rewritten: nothing in the block could have ticked
    clock.advance(0.1)  # now it ticks: the block is rewritten
    assert image.registers(1, 1003, 2) == [0, 1]
    assert bytes(image.regs[1])[:2 * 1003] == before[:2 * 1003]


def test_the_historian_status_goes_to_every_unit_header():
    from types import SimpleNamespace

    from support.builders import make_link
    from st2000r.supervisor.events import HistorianChanged

    topology = make_topology(make_link(cdts=tuple(make_cdt(a) for a in range(1, 66))),  # 65 CDTs: units 1 and 2
                             make_link("north", cdts=(make_cdt(1),)), modbus=ModbusSettings(tcp=None))
    regmap, _ = build_map(topology, None)
    image = RegisterImage(regmap, Clock())
    units = sorted(regmap.units)
    assert len(units) == 3

    def header(unit: int) -> tuple[int, ...]:
        r = image.registers(unit, 30, 10)
        return r[0], r[1] << 16 | r[2], r[3] << 16 | r[4], r[5] << 16 | r[6], r[7], r[8] << 16 | r[9]

    assert {header(u) for u in units} == {(L.UNKNOWN16, 0, 0, 0, 0, 0)}  # no status yet
    image.apply(HistorianChanged("unreachable", "connection refused", 70_000, 600 * 2**20, 1000 * 2**20, 3725, 0,
                                 12, 3, utc(T0)))
    assert {header(u) for u in units} == {(2, 70_000, 3725, 0, 600, 3)}
    image.apply(HistorianChanged("connected", None, 2**40, 2**41, 2**40, 2**33, 812.6, 10**9, 2**32 + 1, utc(T0)))
    assert {header(u) for u in units} == {(0, L.UNKNOWN32, L.UNKNOWN32, 813, 1000, L.UNKNOWN32)}  # saturated
    image.apply(HistorianChanged("weird", None, 0, 0, 0, 0, 0, 0, 0, utc(T0)))  # unknown state, no bound
    assert {header(u) for u in units} == {(L.UNKNOWN16, 0, 0, 0, 0, 0)}
    status = SimpleNamespace(state="starting", spool_rows=5, spool_bytes=10, spool_max_bytes=100, oldest_age_s=1.9,
                             rate=0.4, quarantined=0)
    image.fill(SimpleNamespace(meters=list, cdts=list, links=list), None, SimpleNamespace(status=lambda: status))
    assert {header(u) for u in units} == {(1, 5, 1, 0, 100, 0)}
    assert image.get16(units[0], 0) == L.MAP_VERSION == 2


def test_meter_by_name_with_a_quality_spelling():
    image, clock = make_image(1)
    image.meter("bus/1/1/2", 42, "comm_fail", utc(T0 - 3), Valve.CLOSED, AlarmFlag.SHORT)
    assert meter_registers(image, 1010) == (42, 2, 3, 0b1010, 1, 0)
    image.meter("bus/1/1/2", 42, "no such quality", None, None, 0)  # shown as stale, never a traceback
    assert meter_registers(image, 1010) == (42, 1, L.UNKNOWN32, 0, L.VALVE_UNKNOWN, 0)
    image.meter("bus/9/1/1", 1, "good", None, None, 0)  # not on the map: nothing written
