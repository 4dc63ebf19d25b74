"""Master and poller against the real simulator core (World + SimulatedBus), in memory,
back to back through one deterministic Clock with physical bus timing."""

from __future__ import annotations

import pytest

from engine_support import (
    RecordingSink,
    Repeater,
    SimRig,
    make_cdt,
    make_link,
    plan,
    two_level_repeaters,
)
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import decode_frame
from st2000r.drivers.st2000r.master import Priority
from st2000r.drivers.st2000r.poller import Poller
from st2000r.simulation import faults


def community(baud=9600):
    """7 CDTs: full ones, sparse ones, one behind a first-level and one behind a
    second-level repeater."""
    cdts = [
        make_cdt(1, modules=range(1, 33)),  # 96 channels: two ranges of 48
        make_cdt(2, modules=(1, 2, 17)),  # channels 1-6, 49-51: two ranges
        make_cdt(3, modules=(5,), inputs=(2,)),  # one channel
        make_cdt(4, modules=range(1, 9), repeater="R1"),
        make_cdt(5, modules=range(10, 20), repeater="R2"),
        make_cdt(6, modules=(32,), repeater="R2"),
        make_cdt(7, modules=range(1, 33), repeater="R1"),
    ]
    return make_link(cdts, baud=baud, repeaters=two_level_repeaters())


def poller_for(rig, plans=(plan("full", "full"), plan("status", "status")), **kw):
    sink = RecordingSink.on(rig.master)
    poller = Poller(rig.link, rig.master, rig.clock, sink, tuple(plans), **kw)
    return poller, sink


def test_full_round_equals_ground_truth():
    rig = SimRig(community())
    poller, sink = poller_for(rig)
    result = rig.run_until(poller.run_plan_now("full"))
    truth = rig.truth()
    assert sink.counts() == {k: v for k, v in truth.items()}  # every fitted channel, nothing else read wrong
    assert len(truth) == 96 + 9 + 1 + 24 + 30 + 3 + 96
    assert any(v > 0 for v in truth.values())
    assert result.unreachable == () and result.aborted is None
    assert sink.rounds == [("bus", "full", "full", result.started, result.ended)]
    assert sink.unreachable == []
    # ranges: 2 + 2 + 1 + 1 + 1 + 1 + 2 bulk reads, all answered first time
    assert rig.master.stats.requests == 10 == rig.master.stats.replies
    assert rig.bus.stats.collisions == 0
    # fitted-but-not-flagged statuses come back clean; unfitted channels inside a range absent
    cdt2 = [r for _, c, r, _ in sink.bulk if c == 2]
    assert [(r.first_channel, len(r.channels)) for r in cdt2] == [(1, 6), (49, 3)]


def test_status_round_sees_an_injected_alarm():
    rig = SimRig(community())
    poller, sink = poller_for(rig)
    rig.world.apply(faults.Alarm(link="bus", cdt=4, channel=7, flags=("tamper", "open")))
    rig.world.apply(faults.CdtPower(link="bus", cdt=5, mains=False))
    rig.run_until(poller.run_plan_now("status"))
    alarms = {c: r for _, c, r, _ in sink.alarms}
    assert alarms[4].alarms[6] == m.AlarmFlag.TAMPER | m.AlarmFlag.OPEN
    assert all(a == m.AlarmFlag.NONE for c, r in alarms.items() for i, a in enumerate(r.alarms) if (c, i) != (4, 6))
    status = {c: r for _, c, r, _ in sink.status}
    assert status[5].mains is False and status[1].mains is True
    assert status[6].modules == frozenset({32})
    assert len(sink.rounds) == 1 and sink.rounds[0][2] == "status"


def test_valve_command_mid_sweep_waits_one_in_flight_transaction_only():
    rig = SimRig(community(baud=2400))
    poller, sink = poller_for(rig)
    timing = rig.master.timing
    serial = rig.link.cdt(7).module(3).channels[0].meter.serial  # water meter behind R1
    cmd_at = []
    done = []

    original = rig.master._write

    def write(data):
        original(data)
        # right after the 6th sweep request went on the wire: the worst moment
        if len(rig.written) == 6 and not cmd_at:
            cmd_at.append(rig.clock.seconds())
            d = rig.master.transact(m.ValveControl(meter_type=0x10, address=serial, open=False),
                                    priority=Priority.COMMAND, hops_latency_s=0.005)  # fmt: skip
            d.addCallback(lambda r: done.append((rig.clock.seconds(), r)))

    rig.master._write = write
    rig.run_until(poller.run_plan_now("full"))
    t_done, reply = done[0]
    assert isinstance(reply, m.ValveReply)
    # the 7th write is the command: nothing of the sweep went in between
    assert m.parse(decode_frame(rig.written[6][1])[0]).address == serial
    # bound: the in-flight bulk read (its wire time both ways, turnaround, repeater), a gap,
    # then the command's own round trip
    in_flight = m.parse(decode_frame(rig.written[5][1])[0])
    cdt = int(in_flight.address)
    bulk_reply_len = 2 + 13 + 3 + 2 + 4 * in_flight.count + (in_flight.count + 7) // 8 + 2
    bulk_rt = rig.bus.reply_time(len(rig.written[5][1]), bulk_reply_len, cdt)
    valve_rt = rig.bus.reply_time(len(rig.written[6][1]), 2 + 13 + 5, 7)
    waited = t_done - cmd_at[0]
    assert waited <= bulk_rt + timing.gap_s + valve_rt + 1e-6
    assert waited >= valve_rt  # and it was real work, not a shortcut
    # the sweep still read everything right (the closed valve does not change counts here)
    assert sink.counts() == rig.truth()


def test_bit_errors_and_bursts_values_end_correct_and_errors_are_counted():
    rig = SimRig(community(), retries=4)
    poller, sink = poller_for(rig)
    # random byte errors at 1e-3 (one flipped bit per 1000 bytes), plus bursts of 2 %
    base = 1e-3 / 8
    rig.world.apply(faults.BitErrors(link="bus", rate=base))

    def burst(on):
        rig.world.apply(faults.BitErrors(link="bus", rate=0.02 if on else base))
        rig.clock.callLater(0.15 if on else 0.6, burst, not on)

    rig.clock.callLater(0.3, burst, True)
    truth = rig.truth()
    wrong = []
    for _ in range(4):
        start = len(sink.bulk)
        rig.run_until(poller.run_plan_now("full"))
        for _, cdt, reply, _ in sink.bulk[start:]:  # no corrupted reply is ever accepted
            for k, ch in enumerate(reply.channels):
                key = (cdt, reply.first_channel + k)
                if key in truth and ch.count != truth[key]:
                    wrong.append(key)
        if set(sink.counts()) >= set(truth):
            break
    for call in rig.clock.getDelayedCalls():
        call.cancel()
    assert wrong == []
    assert sink.counts() == truth  # every value ends correct
    s = rig.master.stats
    assert rig.bus.stats.flipped_bits > 0
    assert s.checksum_errors + s.crc_errors + s.timeouts > 0
    assert s.retries > 0
    assert s.checksum_errors > 0


def test_compensating_errors_are_caught_by_the_crc():
    # bursts heavy enough that some corrupted vendor frames keep a valid additive checksum
    rig = SimRig(make_link([make_cdt(1, modules=range(1, 33))], baud=9600), retries=50)
    poller, sink = poller_for(rig)
    rig.world.apply(faults.BitErrors(link="bus", rate=0.004))
    truth = rig.truth()
    for _ in range(30):
        rig.run_until(poller.run_plan_now("full"))
        if rig.master.stats.crc_errors:
            break
    for _, cdt, reply, _ in sink.bulk:
        assert all(ch.count == truth[(cdt, reply.first_channel + k)] for k, ch in enumerate(reply.channels))
    assert rig.master.stats.crc_errors > 0


def test_repeater_failure_makes_cdts_behind_it_unreachable_and_the_round_ends():
    rig = SimRig(community())
    poller, sink = poller_for(rig)
    rig.world.apply(faults.RepeaterFault(link="bus", name="R1", failed=True))
    result = rig.run_until(poller.run_plan_now("full"))
    behind = {4, 5, 6, 7}  # R2 hangs behind R1
    assert {c for _, c, _ in sink.unreachable} == behind
    assert set(result.unreachable) == behind
    assert len(sink.unreachable) == 4  # once per CDT, not once per range
    assert sink.rounds and sink.rounds[0][1] == "full"
    read = {c for (c, _) in sink.counts()}
    assert read == {1, 2, 3}
    truth = rig.truth()
    assert all(truth[k] == v for k, v in sink.counts().items())
    # each unreachable CDT cost one failed transaction of 3 attempts, its second range skipped
    assert rig.master.stats.failures == 4 and rig.master.stats.timeouts == 12


def test_demotion_and_recovery():
    rig = SimRig(community())
    poller, sink = poller_for(rig, demote_after=2, max_demotion=2)
    rig.world.apply(faults.NoAnswer(link="bus", cdt=3, on=True))
    tried = []
    for i in range(8):
        r = rig.run_until(poller.run_plan_now("status"))
        tried.append(3 in r.tried)
        assert len(sink.rounds) == i + 1
    # rounds 1-2 fail -> demoted: level 1 (every 2nd round), then level 2 (every 4th)
    assert tried == [True, True, False, True, False, False, False, True]
    assert poller.demoted() == {3}
    rig.world.apply(faults.NoAnswer(link="bus", cdt=3, on=False))
    rounds = []
    for _ in range(4):
        r = rig.run_until(poller.run_plan_now("status"))
        rounds.append(3 in r.tried)
        if poller.demoted() == frozenset():
            break
    assert poller.demoted() == frozenset()
    r = rig.run_until(poller.run_plan_now("status"))
    assert 3 in r.tried and r.unreachable == ()


def test_read_now_one_cdt_and_recovery_through_it():
    rig = SimRig(community())
    poller, sink = poller_for(rig, demote_after=1)
    rig.world.apply(faults.NoAnswer(link="bus", cdt=2, on=True))
    rig.run_until(poller.run_plan_now("status"))
    assert poller.demoted() == {2}
    failure = rig.run_until(poller.read_now(2))
    assert failure.check(Exception) and "no valid reply" in str(failure.value)
    rig.world.apply(faults.NoAnswer(link="bus", cdt=2, on=False))
    read = rig.run_until(poller.read_now(2, kind="full", priority=Priority.COMMAND))
    assert [type(r).__name__ for r in read.replies] == ["BulkReadReply", "BulkReadReply"]
    assert poller.demoted() == frozenset()
    truth = rig.truth()
    assert all(truth[k] == v for k, v in sink.counts().items() if k[0] == 2)
    status = rig.run_until(poller.read_now(2, kind="status"))
    assert [type(r).__name__ for r in status.replies] == ["AlarmsReply", "CdtStatus"]
    with pytest.raises(ValueError, match="no CDT 99"):
        poller.read_now(99)
    with pytest.raises(ValueError, match="kind"):
        poller.read_now(2, kind="everything")


def test_low_first_di_order_link():
    link = make_link([make_cdt(1), make_cdt(2)], di_order="1F90", repeaters=[Repeater("R1", None, 0)])
    rig = SimRig(link)
    poller, sink = poller_for(rig)
    rig.run_until(poller.run_plan_now("full"))
    assert sink.counts() == rig.truth()
    assert all(r.di_order is m.DiOrder.LOW_FIRST for _, _, r, _ in sink.bulk)


def test_heavy_bit_errors_split_noisy_bulk_reads_and_values_end_correct():
    # 1e-3 per *bit*: a 220-byte bulk reply passes only ~17 % of the time
    rig = SimRig(community())
    poller, sink = poller_for(rig)
    rig.world.apply(faults.BitErrors(link="bus", rate=1e-3))
    truth = rig.truth()
    rounds = 0
    while set(sink.counts()) != set(truth) and rounds < 3:
        rig.run_until(poller.run_plan_now("full"))
        rounds += 1
    assert sink.counts() == truth
    assert poller.splits > 0
    assert rig.master.stats.checksum_errors > 0 and rig.master.stats.timeouts > 0
    # every reply handed to the sink was right, not only the last ones
    for _, cdt, reply, _ in sink.bulk:
        assert all(ch.count == truth[(cdt, reply.first_channel + k)] for k, ch in enumerate(reply.channels))
