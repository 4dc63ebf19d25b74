"""Device role: the codec in the master role reads and commands the simulated field."""

from __future__ import annotations

import struct

import pytest

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.crc import crc16
from st2000r.drivers.st2000r.frame import BROADCAST, Frame, FrameDecoder, decode_frame, encode_frame
from st2000r.drivers.st2000r.units import KWH, M3
from st2000r.simulation import faults
from st2000r.simulation.bus import SimulatedBus
from st2000r.simulation.devices import answer
from st2000r.simulation.world import VALVE_TRAVEL_S

from support.truth import cdt_of, meter_of
from test_sim_core_helpers import (
    Master,
    cdt_addr,
    make_cdt,
    make_link,
    make_topology,
    make_world,
    meter_serial,
    repeater_topology,
)

LINK = "bus-1"
HOUR = 3600.0


@pytest.fixture
def field():
    world, clock = make_world()
    clock.advance(3 * HOUR)  # 09:00, meters have counted something
    bus = SimulatedBus(world, LINK, clock, physical_timing=False)
    return world, clock, Master(bus, clock)


def test_bulk_read_returns_ground_truth(field):
    world, clock, master = field
    for address in (1, 2, 3):
        reply = master.one(m.BulkRead(address=cdt_addr(address), first_channel=1, count=9), world=world)
        assert isinstance(reply, m.BulkReadReply) and reply.address == cdt_addr(address)
        truth = cdt_of(master.truth, LINK, address)
        for meter in truth["meters"]:
            ch = reply.channels[meter["channel"] - 1]
            assert ch.count == meter["count"]
            assert ch.valve is m.Valve.OPEN and ch.alarms == m.AlarmFlag.NONE and not ch.absent
        # channels 7..9: module 3 is not fitted
        assert all(ch.absent and ch.count == 0 for ch in reply.channels[6:9])
    assert sum(c.count for c in reply.channels) > 0


def test_901f_total_equals_the_reading(field):
    world, clock, master = field
    for channel, unit in ((1, M3), (2, KWH), (3, M3)):
        serial = meter_serial(1, 2, 1, channel)
        mtype = {1: 0x10, 2: 0x40, 3: 0x30}[channel]
        reply = master.one(m.ReadData(meter_type=mtype, address=serial, ser=7), world=world)
        assert isinstance(reply, m.CurrentData) and reply.ser == 7 and reply.address == serial
        truth = meter_of(master.truth, LINK, 2, channel)
        assert reply.total.unit == unit
        assert reply.total.value == truth["reading"] // 10  # m³ or kWh with 2 decimals
        assert reply.status.valve is m.Valve.OPEN
        assert reply.time.isoformat() == master.truth["time"][:19]


def test_replies_echo_ser_and_di_order(field):
    _, _, master = field
    reply = master.one(m.ReadData(meter_type=0x10, address=meter_serial(1, 1, 1, 1), ser=200, di_order=m.DiOrder.LOW_FIRST))
    assert (reply.ser, reply.di_order) == (200, m.DiOrder.LOW_FIRST)
    reply = master.one(m.ReadCdtStatus(address=cdt_addr(1), ser=9, di_order=m.DiOrder.LOW_FIRST))
    assert (reply.ser, reply.di_order) == (9, m.DiOrder.LOW_FIRST)


def test_valve_command_changes_ground_truth(field):
    world, clock, master = field
    serial = meter_serial(1, 1, 1, 1)
    reply = master.one(m.ValveControl(meter_type=0x10, address=serial, open=False), wait=0.5)
    assert isinstance(reply, m.ValveReply) and reply.status.valve is m.Valve.OPEN  # motor started
    assert meter_of(world.snapshot(), LINK, 1, 1)["valve"] == "moving"
    clock.advance(VALVE_TRAVEL_S)
    assert master.one(m.ReadData(meter_type=0x10, address=serial)).status.valve is m.Valve.CLOSED
    bulk = master.one(m.BulkRead(address=cdt_addr(1), first_channel=1, count=3))
    assert bulk.channels[0].valve is m.Valve.CLOSED
    assert meter_of(world.snapshot(), LINK, 1, 1)["valve"] == "closed"
    # the vendor 2Ah form opens it again, answered in kind (AAh)
    reply = master.one(m.ValveControl(meter_type=0x10, address=serial, open=True, alt=True))
    assert reply.alt
    clock.advance(VALVE_TRAVEL_S)
    assert meter_of(world.snapshot(), LINK, 1, 1)["valve"] == "open"


def test_jammed_valve_answers_valve_fault(field):
    world, _, master = field
    world.apply(faults.ValveJam(link=LINK, cdt=1, channel=2))
    serial = meter_serial(1, 1, 1, 2)
    reply = master.one(m.ValveControl(meter_type=0x40, address=serial, open=False))
    assert isinstance(reply, m.ErrorReply) and reply.status == m.ErrorReply.VALVE_FAULT and reply.di == 0xA017
    assert master.one(m.ReadData(meter_type=0x40, address=serial)).status.valve is m.Valve.FAULT
    bulk = master.one(m.BulkRead(address=cdt_addr(1), first_channel=1, count=3))
    assert bulk.channels[1].valve is m.Valve.FAULT


def test_alarms_visible_in_alarms_reply_and_bulk_status(field):
    world, _, master = field
    world.apply(faults.Alarm(link=LINK, cdt=2, channel=4, flags=("tamper",)))
    world.apply(faults.Alarm(link=LINK, cdt=2, channel=6, flags=("short", "open")))
    reply = master.one(m.ReadAlarms(address=cdt_addr(2)))
    assert len(reply.alarms) == 96
    assert reply.alarms[3] == m.AlarmFlag.TAMPER
    assert reply.alarms[5] == m.AlarmFlag.SHORT | m.AlarmFlag.OPEN
    assert sum(1 for a in reply.alarms if a) == 2
    bulk = master.one(m.BulkRead(address=cdt_addr(2), first_channel=4, count=3))
    assert [c.alarms for c in bulk.channels] == [m.AlarmFlag.TAMPER, m.AlarmFlag.NONE, m.AlarmFlag.SHORT | m.AlarmFlag.OPEN]


def test_cdt_status_follows_power(field):
    world, clock, master = field
    status = master.one(m.ReadCdtStatus(address=cdt_addr(1)))
    assert (status.mains, status.battery_low, status.battery_mv, status.modules) == (True, False, 12600, frozenset({1, 2}))
    world.apply(faults.CdtPower(link=LINK, cdt=1, mains=False))
    clock.advance(470 * HOUR)
    status = master.one(m.ReadCdtStatus(address=cdt_addr(1)))
    assert not status.mains and status.battery_low and status.battery_mv < 11160
    reply = master.one(m.ReadData(meter_type=0x10, address=meter_serial(1, 1, 1, 1)))
    assert reply.status.battery_low
    clock.advance(110 * HOUR)
    assert master.ask(m.ReadCdtStatus(address=cdt_addr(1))) == []  # battery empty: silent
    assert master.ask(m.ReadData(meter_type=0x10, address=meter_serial(1, 1, 1, 1))) == []
    world.apply(faults.CdtPower(link=LINK, cdt=1, mains=True))
    assert master.one(m.ReadCdtStatus(address=cdt_addr(1))).mains


def test_repeater_failure_silences_behind_it_from_the_master_side():
    world, clock = make_world(repeater_topology())
    master = Master(SimulatedBus(world, LINK, clock, physical_timing=False), clock)
    world.apply(faults.RepeaterFault(link=LINK, name="r1"))
    answering = {a for a in range(1, 6) if master.ask(m.ReadCdtStatus(address=cdt_addr(a)), wait=0.5)}
    assert answering == {1, 5}


def test_channel_info_reports_meters_and_empty_channels(field):
    _, _, master = field
    reply = master.one(m.ReadChannelInfo(address=cdt_addr(3), first_channel=1, count=8))
    assert [c.meter_type for c in reply.channels] == [0x10, 0x40, 0x30, 0x10, 0x40, 0x30, 0, 0]
    assert reply.channels[0].serial == meter_serial(1, 3, 1, 1)
    assert [c.pulse_constant for c in reply.channels[:3]] == [10, 1, 10]


def test_set_base_and_time_sync(field):
    world, clock, master = field
    reply = master.one(m.SetBase(address=cdt_addr(1), channel=2, count=500), world=world)
    assert isinstance(reply, m.SetBaseReply) and (reply.channel, reply.count) == (2, 500)
    assert meter_of(master.truth, LINK, 1, 2)["count"] == 500
    err = master.one(m.SetBase(address=cdt_addr(1), channel=40, count=0))
    assert isinstance(err, m.ErrorReply) and err.status == m.ErrorReply.NO_CHANNEL
    when = world.now().replace(microsecond=0).replace(year=2030)
    assert master.one(m.TimeSync(address=cdt_addr(1), time=when), wait=0.1).time == when
    clock.advance(60)
    later = master.one(m.ReadCdtStatus(address=cdt_addr(1)), wait=0.1).time
    assert (later - when).total_seconds() == 60  # the CDT clock runs on from the set time
    assert master.one(m.ReadCdtStatus(address=cdt_addr(2))).time.year == 2026


def test_broadcast_time_sync_sets_every_clock_without_reply(field):
    world, _, master = field
    when = world.now().replace(microsecond=0, year=2031)
    assert master.ask(m.TimeSync(address=BROADCAST, time=when)) == []
    for a in (1, 2, 3):
        assert master.one(m.ReadCdtStatus(address=cdt_addr(a))).time.year == 2031


def test_write_address_moves_the_meter(field):
    world, _, master = field
    old = meter_serial(1, 1, 1, 1)
    reply = master.one(m.WriteAddress(meter_type=0x10, address=old, new_address="00000000123456"))
    assert isinstance(reply, m.WriteAddressReply) and reply.address == "00000000123456"
    assert master.ask(m.ReadData(meter_type=0x10, address=old)) == []
    assert master.one(m.ReadData(meter_type=0x10, address="00000000123456")).address == "00000000123456"
    assert meter_of(world.snapshot(), LINK, 1, 1)["serial"] == "00000000123456"
    clash = master.one(m.WriteAddress(meter_type=0x10, address="00000000123456", new_address=meter_serial(1, 1, 1, 2)))
    assert isinstance(clash, m.ErrorReply) and clash.status == m.ErrorReply.BAD_PARAMETER


def test_read_address_broadcast_single_device_answers_many_collide():
    world, clock = make_world(make_topology(make_link(cdts=(make_cdt(1, modules=1),))))
    master = Master(SimulatedBus(world, LINK, clock, physical_timing=False), clock)
    reply = master.one(m.ReadAddress(meter_type=0x10, address=BROADCAST))  # one water meter
    assert reply.address == meter_serial(1, 1, 1, 1)
    reply = master.one(m.ReadAddress(meter_type=m.CDT_TYPE, address=BROADCAST))  # one CDT
    assert reply.address == cdt_addr(1)
    master.ask(m.ReadAddress(meter_type=0xAA, address=BROADCAST))  # 3 meters + the CDT talk at once
    assert master.bus.stats.collisions == 1
    assert master.ask(m.ReadAddress(meter_type=0xAA, address=BROADCAST)) == []  # garbled


def test_broadcast_writes_are_ignored(field):
    world, clock, master = field
    assert master.ask(m.ValveControl(meter_type=0x10, address=BROADCAST, open=False)) == []
    clock.advance(10)
    assert meter_of(world.snapshot(), LINK, 1, 1)["valve"] == "open"


def _frame(mtype: int, address: str, control: int, di: bytes, payload: bytes = b"", ser: int = 1, vendor: bool = False) -> Frame:
    data = di + bytes((ser,)) + payload
    if vendor:
        from st2000r.drivers.st2000r.frame import START, address_bytes

        header = bytes((START, mtype)) + address_bytes(address) + bytes((control, len(data) + 2))
        data += struct.pack("<H", crc16(header + data))
    return Frame(mtype, address, control, data)


def test_unknown_di_and_bad_parameter_get_error_replies(field):
    world, _, master = field
    lw = world.link(LINK)
    serial = meter_serial(1, 1, 1, 1)
    (reply,) = answer(lw, _frame(0x10, serial, 0x01, b"\x90\x2f"))
    err = m.parse(decode_frame(reply.wire)[0])
    assert isinstance(err, m.ErrorReply) and err.status == m.ErrorReply.UNKNOWN_DI and err.ser == 1
    # a vendor DI sent to a meter is unknown to it
    (reply,) = answer(lw, _frame(0x10, serial, 0x01, b"\xc0\x1f", b"\x01\x03"))
    assert m.parse(decode_frame(reply.wire)[0]).status == m.ErrorReply.UNKNOWN_DI
    # valve code 42h is neither open nor close
    (reply,) = answer(lw, _frame(0x10, serial, 0x04, b"\xa0\x17", b"\x42"))
    err = m.parse(decode_frame(reply.wire)[0])
    assert err.status == m.ErrorReply.BAD_PARAMETER and err.di == 0xA017
    # bulk read of 60 channels (max 48), CRC right
    (reply,) = answer(lw, _frame(m.CDT_TYPE, cdt_addr(1), 0x01, b"\xc0\x1f", b"\x01\x3c", vendor=True))
    err = m.parse(decode_frame(reply.wire)[0])
    assert err.status == m.ErrorReply.BAD_PARAMETER and err.address == cdt_addr(1)


@pytest.mark.parametrize(
    "frame",
    [
        _frame(m.CDT_TYPE, cdt_addr(1), 0x01, b"\xc0\x1f", b"\x01\x03\x00\x00"),  # bad CRC
        _frame(m.CDT_TYPE, cdt_addr(9), 0x01, b"\xc0\x1f", b"\x01\x03", vendor=True),  # no such CDT
        _frame(0x10, "99999999999999", 0x01, b"\x90\x1f"),  # no such meter
        _frame(0x30, meter_serial(1, 1, 1, 1), 0x01, b"\x90\x1f"),  # wrong meter type
        Frame(0x10, meter_serial(1, 1, 1, 1), 0x01, b"\x90"),  # too short for DI+SER
        Frame(0x10, meter_serial(1, 1, 1, 1), 0x81, b"\x90\x1f\x00"),  # a reply, not a request
    ],
)
def test_malformed_or_unknown_is_silence(field, frame):
    world, _, _ = field
    assert answer(world.link(LINK), frame) == ()


def test_garbage_on_the_bus_never_crashes_and_reads_still_work(field):
    world, clock, master = field
    import random

    rng = random.Random(4)
    for _ in range(300):
        master.bus.data_received(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
        master.bus.data_received(b"\x68" + bytes(rng.randrange(256) for _ in range(rng.randrange(10, 30))) + b"\x16")
    clock.advance(1)
    master.bus._decoder.clear()
    master.bus.data_received(b"\x16" * 300)  # flush any pending false start
    assert isinstance(master.one(m.ReadCdtStatus(address=cdt_addr(2))), m.CdtStatus)
    assert master.bus.stats.junk_bytes > 0


def test_frames_encoded_by_hand_match_the_codec(field):
    _, _, master = field
    wire = encode_frame(_frame(0x10, meter_serial(1, 2, 2, 1), 0x01, b"\x1f\x90"))
    master.received.clear()
    master.bus.data_received(wire)
    master.clock.advance(1)
    (reply,) = [m.parse(f) for f in FrameDecoder().frames(bytes(master.received))]
    assert reply.di_order is m.DiOrder.LOW_FIRST and reply.ser == 1


def test_fuzzed_requests_to_real_addresses_never_raise(field):
    """Random payloads behind every known control/DI, valid vendor CRC: the device model
    itself (not only its safety net) must not raise."""
    import random

    from st2000r.simulation import devices

    world, _, _ = field
    lw = world.link(LINK)
    rng = random.Random(99)
    targets = [(m.CDT_TYPE, cdt_addr(1), True), (0x10, meter_serial(1, 1, 1, 1), False), (0xAA, meter_serial(1, 1, 1, 2), False)]
    keys = sorted(devices._CDT_REQUESTS | devices._METER_REQUESTS) + [(0x01, 0x1234), (0x04, 0xC0A1)]
    replies = 0
    for _ in range(3000):
        mtype, address, vendor = rng.choice(targets)
        if rng.random() < 0.1:
            address = BROADCAST
        control, di = rng.choice(keys)
        di_bytes = di.to_bytes(2, "big") if rng.random() < 0.5 else di.to_bytes(2, "little")
        payload = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 2, 5, 7, 9))))
        frame = _frame(mtype, address, control, di_bytes, payload, ser=rng.randrange(256), vendor=vendor and di >> 12 == 0xC)
        out = devices._answer(lw, frame, world.seconds())
        for reply in out:
            decode_frame(reply.wire)  # every reply is a well-formed frame
        replies += len(out)
    assert replies > 1000
