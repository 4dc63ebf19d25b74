"""BusMaster against a scripted fake bus on a deterministic Clock."""

from __future__ import annotations

import struct

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from engine_support import FakeBus, bulk_reply, make_cdt, make_link
from support.clock import advance
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.errors import CodecError
from st2000r.drivers.st2000r.frame import decode_frame
from st2000r.drivers.st2000r.links import LinkProtocol
from st2000r.drivers.st2000r.master import (
    BusMaster,
    LinkDown,
    Priority,
    RttHistogram,
    TransactionTimeout,
)
from st2000r.drivers.st2000r.timing import BusTiming, max_reply_size

CDT1 = "00000000000001"
CDT2 = "00000000000002"


def setup(baud=2400, **kw):
    clock = Clock()
    link = make_link([make_cdt(1), make_cdt(2)], baud=baud)
    master = BusMaster(link, clock, **kw)
    bus = FakeBus()
    master.connection_made(bus)
    advance(clock, 1)  # past the initial gap
    return clock, master, bus


def results(d):
    out = []
    d.addBoth(out.append)
    return out


def wire(msg: m.Message) -> bytes:
    return m.encode(msg, preamble=2)


def test_timing_model_of_a_link():
    link = make_link(baud=2400, turnaround_ms=30)
    t = BusTiming.for_link(link)
    bt = 11 / 2400
    assert t.gap_s == pytest.approx(3.5 * bt)
    assert t.wire_time(10) == pytest.approx(10 * bt)
    assert BusTiming.for_link(make_link(baud=115200)).gap_s == 0.005
    # bulk read of 48 channels: 13 + DI SER first count (5) + CRC (2) = 20 bytes + 2 FE
    req = m.BulkRead(address=CDT1, first_channel=1, count=48)
    assert len(m.encode(req)) == 22
    # reply: 4 FE + 13 + DI SER (3) + first count (2) + 48 x 4 + bitmap 6 + 48 status + CRC 2
    assert max_reply_size(req) == 4 + 13 + 3 + 2 + 192 + 6 + 48 + 2
    assert max_reply_size(m.ReadCdtStatus(address=CDT1)) == 4 + 13 + 3 + 16 + 2
    assert max_reply_size(m.ReadData(meter_type=0x10, address=CDT1)) == 4 + 13 + 3 + 19
    assert max_reply_size(m.ValveControl(meter_type=0x10, address=CDT1, open=True)) == 4 + 13 + 5
    model = (22 + 270) * bt + 0.030 + 2 * 0.012 + 3.5 * bt + 0.020
    assert t.reply_timeout(22, 270, 0.012) == pytest.approx(model)


def test_timeout_equals_the_model_and_fires_exactly_then():
    clock, master, bus = setup(retries=0)
    req = m.BulkRead(address=CDT1, first_channel=1, count=48)
    bt = 11 / 2400
    expected = (22 + 270) * bt + 0.020 + 3.5 * bt + 0.020  # turnaround 20 ms, no repeaters
    assert master.timeout_for(req) == pytest.approx(expected)
    out = results(master.transact(req))
    assert len(bus.writes) == 1
    advance(clock, expected - 1e-6)
    assert out == []
    advance(clock, 2e-6)
    assert out[0].check(TransactionTimeout)
    assert "after 1 attempts" in str(out[0].value)
    assert master.stats.timeouts == 1 and master.stats.failures == 1


def test_exactly_one_in_flight_then_gap_before_next():
    clock, master, bus = setup()
    reqs = [m.ReadCdtStatus(address=a) for a in (CDT1, CDT2, CDT1)]
    ds = [results(master.transact(r)) for r in reqs]
    assert len(bus.writes) == 1
    advance(clock, 0.2)
    assert len(bus.writes) == 1  # still waiting for the reply
    master.data_received(wire(m.CdtStatus(address=CDT1, ser=bus.last.ser, battery_mv=12000)))
    assert ds[0][0].battery_mv == 12000
    assert len(bus.writes) == 1  # the gap is honoured
    advance(clock, master.timing.gap_s - 1e-6)
    assert len(bus.writes) == 1
    advance(clock, 2e-6)
    assert len(bus.writes) == 2 and bus.last.address == CDT2


def test_priorities_fifo_within_priority_and_command_preempts_queue():
    clock, master, bus = setup()
    order = []
    for i in range(3):
        master.transact(m.BulkRead(address=CDT1, first_channel=1 + i, count=1), priority=Priority.SWEEP)
    master.transact(m.ReadAlarms(address=CDT1), priority=Priority.BACKFILL)
    master.transact(m.ReadCdtStatus(address=CDT2), priority=Priority.STATUS)
    master.transact(m.ValveControl(meter_type=0x10, address="00000000001011", open=False), priority=Priority.COMMAND)
    master.transact(m.ReadCdtStatus(address=CDT1), priority=Priority.STATUS)
    for _ in range(7):
        req = bus.last
        order.append(type(req).__name__ + (f"{req.first_channel}" if isinstance(req, m.BulkRead) else "") + req.address[-2:])
        if isinstance(req, m.BulkRead):
            master.data_received(wire(bulk_reply(req)))
        elif isinstance(req, m.ValveControl):
            master.data_received(wire(m.ValveReply(meter_type=0x10, address=req.address, ser=req.ser)))
        elif isinstance(req, m.ReadAlarms):
            master.data_received(wire(m.AlarmsReply(address=req.address, ser=req.ser)))
        else:
            master.data_received(wire(m.CdtStatus(address=req.address, ser=req.ser)))
        advance(clock, 0.1)
    assert order == [
        "BulkRead101",  # in flight when the others were queued
        "ValveControl11",
        "ReadCdtStatus02",
        "ReadCdtStatus01",
        "BulkRead201",
        "BulkRead301",
        "ReadAlarms01",
    ]
    assert master.queued == 0 and not master.busy


def test_retry_then_success_with_a_fresh_ser():
    clock, master, bus = setup(retries=2)
    req = m.BulkRead(address=CDT1, first_channel=1, count=4)
    out = results(master.transact(req))
    first_ser = bus.last.ser
    advance(clock, master.timeout_for(req) + 0.001)
    advance(clock, 0.1)  # gap + backoff
    assert len(bus.writes) == 2
    assert bus.last.ser != first_ser
    master.data_received(wire(bulk_reply(bus.last, [1, 2, 3, 4])))
    assert [c.count for c in out[0].channels] == [1, 2, 3, 4]
    s = master.stats
    assert (s.requests, s.replies, s.timeouts, s.retries, s.failures) == (2, 1, 1, 1, 0)
    d = master.device_stats(CDT1)
    assert (d.requests, d.replies, d.timeouts, d.retries) == (2, 1, 1, 1)


def test_retry_exhaustion_raises_transaction_timeout():
    clock, master, bus = setup(retries=2)
    req = m.ReadAlarms(address=CDT2)
    out = results(master.transact(req))
    for _ in range(3):
        advance(clock, master.timeout_for(req) + 0.1)
    assert len(bus.writes) == 3
    assert len({r.ser for r in bus.requests}) == 3
    assert out[0].check(TransactionTimeout)
    assert out[0].value.request is req
    assert master.stats.timeouts == 3 and master.stats.retries == 2 and master.stats.failures == 1
    assert master.device_stats(CDT2).failures == 1
    # a per-call retries override
    out2 = results(master.transact(req, retries=0))
    advance(clock, master.timeout_for(req) + 0.1)
    assert out2[0].check(TransactionTimeout) and len(bus.writes) == 4


def test_bad_checksum_reply_is_retried_never_returned_and_counted():
    clock, master, bus = setup()
    req = m.BulkRead(address=CDT1, first_channel=1, count=8)
    out = results(master.transact(req))
    good = bytearray(wire(bulk_reply(bus.last)))
    good[-2] ^= 0x01  # checksum byte
    master.data_received(bytes(good))
    assert out == []
    assert master.stats.checksum_errors >= 1 and master.stats.junk_bytes > 0
    # the attempt is given up once the line is quiet, well before the timeout
    advance(clock, master.quiet_s + master.timing.gap_s + master.backoff_s + 1e-3)
    assert len(bus.writes) == 2
    assert master.quiet_s + 0.1 < master.timeout_for(req)
    master.data_received(wire(bulk_reply(bus.last, list(range(8)))))
    assert [c.count for c in out[0].channels] == list(range(8))
    assert master.device_stats(CDT1).checksum_errors >= 1
    assert master.stats.retries == 1 and master.stats.timeouts == 0


def test_compensating_double_error_passes_checksum_fails_crc():
    clock, master, bus = setup()
    req = m.BulkRead(address=CDT1, first_channel=1, count=2)
    out = results(master.transact(req))
    raw = bytearray(wire(bulk_reply(bus.last, [0x10, 0x20])))
    # counts start after FE FE 68 T A0..A6 C L DI DI SER first n: offset 2 + 11 + 3 + 2
    at = 2 + 11 + 3 + 2
    assert struct.unpack_from("<I", raw, at)[0] == 0x10
    raw[at] += 1  # +1 here ...
    raw[at + 4] -= 1  # ... -1 there: the additive checksum still matches
    frame_sum = sum(raw[2:-2]) & 0xFF
    assert frame_sum == raw[-2]
    master.data_received(bytes(raw))
    assert out == []
    assert master.stats.crc_errors == 1 and master.stats.checksum_errors == 0
    assert master.device_stats(CDT1).crc_errors == 1
    advance(clock, master.quiet_s + master.timing.gap_s + master.backoff_s + 1e-3)
    assert len(bus.writes) == 2
    master.data_received(wire(bulk_reply(bus.last, [0x10, 0x20])))
    assert [c.count for c in out[0].channels] == [0x10, 0x20]


def test_only_corrupted_replies_end_in_timeout_error_naming_them():
    clock, master, bus = setup(retries=1)
    out = results(master.transact(m.ReadCdtStatus(address=CDT1)))
    for _ in range(2):
        raw = bytearray(wire(m.CdtStatus(address=CDT1, ser=bus.last.ser)))
        raw[20] ^= 0xFF
        master.data_received(bytes(raw))
        advance(clock, master.quiet_s + master.timing.gap_s + master.backoff_s + 1e-3)
    assert out[0].check(TransactionTimeout)
    assert "2 corrupted" in str(out[0].value)


def test_late_reply_to_an_old_ser_is_dropped_and_counted():
    clock, master, bus = setup(retries=1)
    req = m.ReadCdtStatus(address=CDT1)
    out = results(master.transact(req))
    old = bus.last
    advance(clock, master.timeout_for(req) + 0.001)
    advance(clock, 0.1)
    assert len(bus.writes) == 2
    new = bus.last
    master.data_received(wire(m.CdtStatus(address=CDT1, ser=old.ser, battery_mv=1)))
    assert out == []
    assert master.stats.unexpected_replies == 1 and master.stats.late_replies == 1
    master.data_received(wire(m.CdtStatus(address=CDT1, ser=new.ser, battery_mv=2)))
    assert out[0].battery_mv == 2


def test_reply_from_another_device_or_di_is_unexpected():
    clock, master, bus = setup()
    out = results(master.transact(m.ReadCdtStatus(address=CDT1)))
    ser = bus.last.ser
    master.data_received(wire(m.CdtStatus(address=CDT2, ser=ser)))
    master.data_received(wire(m.AlarmsReply(address=CDT1, ser=ser)))
    master.data_received(m.encode(m.ReadCdtStatus(address=CDT1, ser=ser)))  # an echo: ignored
    assert out == [] and master.stats.unexpected_replies == 2
    master.data_received(wire(m.CdtStatus(address=CDT1, ser=ser)))
    assert isinstance(out[0], m.CdtStatus)


def test_error_reply_is_a_reply():
    clock, master, bus = setup()
    out = results(master.transact(m.ValveControl(meter_type=0x10, address="00000000001011", open=False)))
    req = bus.last
    master.data_received(
        wire(m.ErrorReply(meter_type=0x10, address=req.address, ser=req.ser, function=0x04,
                          status=m.ErrorReply.VALVE_FAULT, di=m.ValveControl.DI))
    )  # fmt: skip
    assert isinstance(out[0], m.ErrorReply) and out[0].status == m.ErrorReply.VALVE_FAULT


def test_reply_in_one_byte_chunks():
    clock, master, bus = setup()
    out = results(master.transact(m.BulkRead(address=CDT1, first_channel=7, count=3)))
    for b in wire(bulk_reply(bus.last, [5, 6, 7])):
        master.data_received(bytes((b,)))
        advance(clock, 0.001)
    assert [c.count for c in out[0].channels] == [5, 6, 7]
    assert master.stats.checksum_errors == 0


def test_link_down_after_queue_timeout_when_not_connected():
    clock = Clock()
    master = BusMaster(make_link([make_cdt(1)]), clock, queue_timeout_s=30)
    out = results(master.transact(m.ReadAlarms(address=CDT1)))
    advance(clock, 29.9)
    assert out == []
    advance(clock, 0.2)
    assert out[0].check(LinkDown) and "not connected within 30 s" in str(out[0].value)
    # connecting in time sends it
    out2 = results(master.transact(m.ReadAlarms(address=CDT1)))
    advance(clock, 10)
    bus = FakeBus()
    master.connection_made(bus)
    advance(clock, master.timing.gap_s)
    assert len(bus.writes) == 1
    advance(clock, 40)  # the queue timer was cancelled by the connection
    assert out2[0].check(TransactionTimeout)  # it was sent (and not answered), never LinkDown
    assert len(bus.writes) == 3


def test_connection_lost_in_flight_retries_after_reconnect():
    clock, master, bus = setup(retries=1)
    events = []
    master.add_observer(lambda e, d: events.append(e))
    out = results(master.transact(m.ReadAlarms(address=CDT1)))
    master.connection_lost("cable pulled")
    assert out == [] and not master.connected
    bus2 = FakeBus()
    advance(clock, 5)
    master.connection_made(bus2)
    advance(clock, master.timing.gap_s + 0.01)
    assert len(bus2.writes) == 1
    master.connection_lost("again")
    assert out[0].check(LinkDown)
    assert events == ["disconnected", "connected", "disconnected"]
    assert master.stats.disconnects == 2


def test_cancel_a_queued_request_and_shutdown():
    clock, master, bus = setup()
    a = results(master.transact(m.ReadAlarms(address=CDT1)))
    d = master.transact(m.ReadAlarms(address=CDT2))
    b = results(d)
    c = results(master.transact(m.ReadCdtStatus(address=CDT2)))
    d.cancel()
    assert b[0].check(CancelledError) and master.queued == 1
    master.shutdown()
    assert a[0].check(LinkDown) and c[0].check(LinkDown)
    assert clock.getDelayedCalls() == []


def test_unencodable_request_fails_at_once():
    clock, master, bus = setup()
    out = results(master.transact(m.BulkRead(address=CDT1, first_channel=90, count=48)))
    assert out[0].check(CodecError) and "past channel 96" in str(out[0].value)
    out = results(master.transact("BulkRead please"))
    assert out[0].check(TypeError) and "needs a messages.Message, got str" in str(out[0].value)
    assert bus.writes == []


def test_round_trip_statistics_p50_p99():
    clock, master, bus = setup(baud=9600)
    for i in range(100):
        d = results(master.transact(m.ReadAlarms(address=CDT1)))
        advance(clock, 0.050 if i % 10 else 0.080)  # 90 % at 50 ms, 10 % at 80 ms
        master.data_received(wire(m.AlarmsReply(address=CDT1, ser=bus.last.ser)))
        assert isinstance(d[0], m.AlarmsReply)
        advance(clock, 0.01)
    s = master.stats
    assert s.replies == 100
    assert 0.050 <= s.rtt_p50_s <= 0.050 * 1.13
    assert 0.080 <= s.rtt_p99_s <= 0.080 * 1.13
    assert master.device_stats(CDT1).rtt_p99_s == s.rtt_p99_s
    assert s.as_dict()["rtt_p50_s"] == s.rtt_p50_s and s.as_dict()["replies"] == 100


def test_histogram_is_bounded_and_conservative():
    h = RttHistogram()
    assert h.percentile(0.5) is None
    for i in range(1, 100_001):
        h.add(i / 1000)
    assert len(h._counts) < 200
    assert 50 <= h.percentile(0.5) <= 50 * 1.13
    assert 99 <= h.percentile(0.99) <= 100
    h.halve()
    assert h.count == sum(h._counts) and 49 <= h.percentile(0.5) <= 57


def test_timeout_adapts_to_late_replies_within_bounds():
    clock, master, bus = setup(baud=9600, retries=2)
    req = m.ReadCdtStatus(address=CDT1)
    model = master.timeout_for(req)
    out = results(master.transact(req))
    first = bus.last
    advance(clock, model + 0.001)  # attempt 1 times out
    advance(clock, 0.3)  # its reply arrives 0.3 s late, during the retry's gap/flight
    master.data_received(wire(m.CdtStatus(address=CDT1, ser=first.ser)))
    assert master.stats.late_replies == 1
    assert model < master.timeout_for(req) <= 3 * model + 1.0
    # an absurdly late reply is bounded by 3 x model + 1 s
    advance(clock, master.timeout_for(req) + 0.1)
    second = bus.requests[-1]
    advance(clock, 100)
    master.data_received(wire(m.CdtStatus(address=CDT1, ser=second.ser)))
    assert master.timeout_for(req) == pytest.approx(3 * model + 1.0)
    assert out and out[0].check(TransactionTimeout)


def test_bus_protocol_adapter_over_string_transport():
    clock = Clock()
    master = BusMaster(make_link([make_cdt(1)]), clock)
    proto = LinkProtocol(master)
    transport = StringTransport()
    proto.makeConnection(transport)
    assert master.connected
    out = results(master.transact(m.ReadAlarms(address=CDT1)))
    advance(clock, 0.01)
    sent = m.parse(decode_frame(transport.value())[0])
    proto.dataReceived(wire(m.AlarmsReply(address=CDT1, ser=sent.ser)))
    assert isinstance(out[0], m.AlarmsReply)
    proto.connectionLost(None)
    assert not master.connected


def test_a_deliberate_close_is_idle_not_a_silence_of_the_cdts():
    """An on-demand GSM call hung up between rounds: the CDTs are not asked, not silent —
    their meters must not turn comm_fail and no link alarm may follow."""
    clock = Clock()
    master = BusMaster(make_link([make_cdt(1)]), clock)
    events = []
    master.add_observer(lambda event, data: events.append(event))
    bus = FakeBus()
    master.connection_made(bus)
    d = master.transact(m.ReadAlarms(address=CDT1))
    advance(clock, 0.01)
    master.data_received(m.encode(m.AlarmsReply(address=CDT1, ser=bus.last.ser, alarms=(m.AlarmFlag.NONE,) * 96)))
    assert d.called and master.reachability.answering(1) is True
    master.connection_lost("GSM call down: hang up", deliberate=True)
    assert events == ["connected", "idle"] and master.reachability.answering(1) is True
    master.connection_made(bus)
    master.connection_lost("carrier lost")
    assert events[-1] == "disconnected" and master.reachability.answering(1) is False
