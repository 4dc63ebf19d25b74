"""Bus timing, half-duplex collisions and wire faults, all under a deterministic Clock."""

from __future__ import annotations

import pytest

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import FrameDecoder
from st2000r.simulation import faults
from st2000r.simulation.bus import SimulatedBus

from test_sim_core_helpers import Master, cdt_addr, make_cdt, make_link, make_topology, make_world, repeater_topology

LINK = "bus-1"
EPS = 1e-6


def _reply_len(world, msg) -> int:
    from st2000r.simulation.devices import answer
    from st2000r.drivers.st2000r.frame import decode_frame

    (reply,) = answer(world.link(LINK), decode_frame(m.encode(msg))[0])
    return len(reply.wire)


def _delivery_time(world, clock, bus, msg) -> tuple[float, bytes]:
    """Send ``msg`` at t0 and find the instant of delivery to within EPS by bisection-free
    stepping: advance to just before the model time, then just after."""
    got: list[tuple[float, bytes]] = []
    bus.connect(lambda data: got.append((clock.seconds(), data)))
    wire = m.encode(msg)
    t0 = clock.seconds()
    bus.data_received(wire)
    return t0, wire, got


@pytest.mark.parametrize("baud, parity, bits", [(2400, "E", 11), (9600, "N", 10), (1200, "E", 11)])
def test_reply_arrives_exactly_when_the_wire_model_says(baud, parity, bits):
    world, clock = make_world(make_topology(make_link(baud=baud, parity=parity, turnaround_ms=35)))
    bus = SimulatedBus(world, LINK, clock)
    assert bus.byte_time == bits / baud
    msg = m.BulkRead(address=cdt_addr(2), first_channel=1, count=6)
    n_rep = _reply_len(world, msg)
    t0, wire, got = _delivery_time(world, clock, bus, msg)
    model = len(wire) * bits / baud + 0.035 + n_rep * bits / baud
    assert bus.reply_time(len(wire), n_rep) == pytest.approx(model, abs=1e-12)
    clock.advance(model - EPS)
    assert got == []
    clock.advance(2 * EPS)
    assert len(got) == 1 and len(got[0][1]) == n_rep
    assert isinstance(m.parse(FrameDecoder().frames(got[0][1])[0]), m.BulkReadReply)


def test_request_written_in_chunks_is_timed_from_its_last_byte_on_the_wire():
    world, clock = make_world()
    bus = SimulatedBus(world, LINK, clock)
    got = []
    bus.connect(lambda data: got.append((clock.seconds(), data)))
    msg = m.ReadCdtStatus(address=cdt_addr(1))
    wire = m.encode(msg)
    bt = bus.byte_time
    for b in wire:  # one byte per byte-time, as a real UART would deliver them
        bus.data_received(bytes([b]))
        clock.advance(bt)
    n_rep = _reply_len(world, msg)
    # the last byte was written at (n-1)*bt and left the wire at n*bt
    remaining = 0.020 + n_rep * bt
    clock.advance(remaining - EPS)
    assert got == []
    clock.advance(2 * EPS)
    assert len(got) == 1


def test_repeater_latency_and_late_fault_add_to_the_delay():
    world, clock = make_world(repeater_topology())
    bus = SimulatedBus(world, LINK, clock)
    bt = bus.byte_time
    for cdt, extra in ((1, 0.0), (4, 2 * 0.050), (5, 2 * 0.010)):
        msg = m.ReadCdtStatus(address=cdt_addr(cdt))
        n_rep = _reply_len(world, msg)
        t0, wire, got = _delivery_time(world, clock, bus, msg)
        model = (len(wire) + n_rep) * bt + 0.020 + extra
        assert bus.reply_time(len(wire), n_rep, cdt) == pytest.approx(model, abs=1e-12)
        clock.advance(model - EPS)
        assert got == [], cdt
        clock.advance(2 * EPS)
        assert len(got) == 1, cdt
        clock.advance(1)
    world.apply(faults.Late(link=LINK, cdt=5, ms=400))
    msg = m.ReadCdtStatus(address=cdt_addr(5))
    t0, wire, got = _delivery_time(world, clock, bus, msg)
    model = (len(wire) + _reply_len(world, msg)) * bt + 0.020 + 0.020 + 0.400
    clock.advance(model - EPS)
    assert got == []
    clock.advance(2 * EPS)
    assert len(got) == 1


def test_without_physical_timing_the_reply_comes_after_turnaround_only():
    world, clock = make_world(repeater_topology())
    bus = SimulatedBus(world, LINK, clock, physical_timing=False)
    t0, wire, got = _delivery_time(world, clock, bus, m.ReadCdtStatus(address=cdt_addr(4)))
    assert got == []  # still via callLater
    clock.advance(0.020 - EPS)
    assert got == []
    clock.advance(2 * EPS)
    assert len(got) == 1


def test_master_talking_over_a_reply_corrupts_both():
    world, clock = make_world()
    bus = SimulatedBus(world, LINK, clock)
    master = Master(bus, clock)
    msg = m.BulkRead(address=cdt_addr(1), first_channel=1, count=6)
    wire = master.send(msg)
    n_rep = _reply_len(world, msg)
    bt = bus.byte_time
    # the reply is on the wire from len(wire)*bt + 20 ms; interrupt it half-way
    clock.advance(len(wire) * bt + 0.020 + n_rep * bt / 2)
    second = master.send(m.ReadCdtStatus(address=cdt_addr(2)))
    clock.advance(5)
    assert bus.stats.collisions == 1
    assert bus.stats.corrupted_bytes > 0
    assert len(master.received) == n_rep  # the reply still arrives, garbled
    frames = FrameDecoder().frames(bytes(master.received))
    assert frames == []  # its tail was overwritten
    assert bus.stats.requests == 1  # the second request was lost in the collision
    # an idle bus afterwards works again
    assert isinstance(master.one(m.ReadCdtStatus(address=cdt_addr(2))), m.CdtStatus)
    assert len(second) > 0


def test_back_to_back_requests_without_waiting_collide_with_the_first_reply():
    world, clock = make_world(make_topology(make_link(turnaround_ms=0)))
    bus = SimulatedBus(world, LINK, clock)
    master = Master(bus, clock)
    first = m.encode(m.BulkRead(address=cdt_addr(1), first_channel=1, count=6))
    second = m.encode(m.BulkRead(address=cdt_addr(2), first_channel=1, count=6))
    # the second request queues on the wire behind the first and overlaps the reply
    bus.data_received(first + second)
    clock.advance(5)
    assert bus.stats.collisions == 1
    assert bus.stats.requests == 1  # the device was talking: it never heard the second one
    assert FrameDecoder().frames(bytes(master.received)) == []  # its reply's head was hit


def test_bit_errors_flip_about_rate_times_bits():
    world, clock = make_world(make_topology(make_link(baud=9600)))
    bus = SimulatedBus(world, LINK, clock)
    master = Master(bus, clock)
    rate = 0.002
    world.apply(faults.BitErrors(link=LINK, rate=rate))
    msg = m.BulkRead(address=cdt_addr(1), first_channel=1, count=6)
    for _ in range(400):
        master.send(msg)
        clock.advance(0.5)
    bits = 8 * (bus.stats.bytes_in + bus.stats.bytes_out)
    flipped = bus.stats.flipped_bits
    assert 0.7 * rate * bits < flipped < 1.3 * rate * bits, (flipped, rate * bits)
    # corrupted requests go unanswered, corrupted replies fail their checksum
    good = [f for f in FrameDecoder().frames(bytes(master.received))]
    assert 0 < len(good) < 400
    world.apply(faults.BitErrors(link=LINK, rate=0.0))
    assert isinstance(master.one(msg), m.BulkReadReply)


def test_bit_errors_are_deterministic_from_the_seed():
    def run(seed):
        world, clock = make_world(seed=seed)
        bus = SimulatedBus(world, LINK, clock)
        master = Master(bus, clock)
        world.apply(faults.BitErrors(link=LINK, rate=0.01))
        for _ in range(20):
            master.send(m.ReadCdtStatus(address=cdt_addr(1)))
            clock.advance(0.5)
        return bytes(master.received), bus.stats.flipped_bits

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_dropped_bytes_at_a_rate():
    world, clock = make_world(make_topology(make_link(baud=9600)))
    bus = SimulatedBus(world, LINK, clock)
    master = Master(bus, clock)
    world.apply(faults.DropBytes(link=LINK, rate=0.01))
    for _ in range(300):
        master.send(m.ReadCdtStatus(address=cdt_addr(1)))
        clock.advance(0.2)
    total = bus.stats.bytes_in + bus.stats.bytes_out + bus.stats.dropped_bytes
    assert 0.6 * 0.01 * total < bus.stats.dropped_bytes < 1.4 * 0.01 * total
    assert bus.stats.replies < 300


def test_no_answer_and_silence_count():
    world, clock = make_world()
    bus = SimulatedBus(world, LINK, clock)
    master = Master(bus, clock)
    world.apply(faults.NoAnswer(link=LINK, cdt=2))
    assert master.ask(m.ReadCdtStatus(address=cdt_addr(2)), wait=1) == []
    assert bus.stats.silent == 1
    assert len(master.ask(m.ReadCdtStatus(address=cdt_addr(3)), wait=1)) == 1


def test_link_drop_calls_back_discards_and_goes_deaf():
    world, clock = make_world()
    bus = SimulatedBus(world, LINK, clock)
    master = Master(bus, clock)
    drops = []
    bus.on_link_drop(drops.append)
    master.send(m.ReadCdtStatus(address=cdt_addr(1)))
    clock.advance(0.05)
    world.apply(faults.LinkDrop(link=LINK, seconds=30))
    assert drops == [30.0]
    clock.advance(5)
    assert master.received == bytearray()  # the pending reply was lost
    assert master.ask(m.ReadCdtStatus(address=cdt_addr(1)), wait=1) == []  # deaf
    clock.advance(30)
    assert len(master.ask(m.ReadCdtStatus(address=cdt_addr(1)), wait=1)) == 1
    assert bus.stats.link_drops == 1


def test_disconnect_loses_replies_and_close_unregisters():
    world, clock = make_world()
    bus = SimulatedBus(world, LINK, clock)
    master = Master(bus, clock)
    master.send(m.ReadCdtStatus(address=cdt_addr(1)))
    clock.advance(0.05)
    bus.disconnect()
    clock.advance(5)
    assert master.received == bytearray()
    assert clock.getDelayedCalls() == []
    bus.close()
    drops = []
    bus.on_link_drop(drops.append)
    world.apply(faults.LinkDrop(link=LINK, seconds=1))
    assert drops == []


def test_unknown_link_is_a_clear_error():
    world, clock = make_world()
    with pytest.raises(faults.FaultError, match="no link 'x'"):
        SimulatedBus(world, "x", clock)


def test_a_256_cdt_link_answers_every_cdt():
    """The full-size link of the issue: 256 CDTs x 32 modules = 24,576 meters."""
    world, clock = make_world(make_topology(make_link(cdts=tuple(make_cdt(a, 32) for a in range(1, 257)), baud=9600)))
    bus = SimulatedBus(world, LINK, clock)
    master = Master(bus, clock)
    seen = 0
    for address in range(1, 257, 15):
        reply = master.one(m.BulkRead(address=cdt_addr(address), first_channel=49, count=48), wait=0.5)
        seen += len(reply.channels)
    assert seen == 18 * 48
    assert clock.getDelayedCalls() == []
