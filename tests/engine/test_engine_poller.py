"""Poller scheduling, ranges, window and error paths (simulator core on a Clock)."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pytest

from engine_support import RecordingSink, SimRig, make_cdt, make_link, plan
from support.clock import advance
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import decode_frame
from st2000r.drivers.st2000r.master import Priority
from st2000r.drivers.st2000r.poller import Poller, bulk_ranges
from st2000r.simulation import faults


def small_link(baud=9600, n=4):
    return make_link([make_cdt(a, modules=range(1, 5)) for a in range(1, n + 1)], baud=baud)


def test_bulk_ranges_cover_fitted_channels_with_fewest_reads():
    assert bulk_ranges(make_cdt(1, modules=range(1, 33))) == ((1, 48), (49, 48))
    assert bulk_ranges(make_cdt(1, modules=(1,), inputs=(1,))) == ((1, 1),)
    assert bulk_ranges(make_cdt(1, modules=(2, 30), inputs=(3,))) == ((6, 1), (90, 1))
    assert bulk_ranges(make_cdt(1, modules=(1, 16, 17))) == ((1, 48), (49, 3))
    assert bulk_ranges(make_cdt(1, modules=())) == ()
    # channel n = (module - 1) * 3 + input
    assert bulk_ranges(make_cdt(1, modules=(11,), inputs=(2, 3))) == ((32, 2),)


def test_plan_of_unknown_kind_and_unknown_plan_name_are_clear_errors():
    rig = SimRig(small_link())
    with pytest.raises(ValueError, match="kind must be 'full' or 'status'"):
        Poller(rig.link, rig.master, rig.clock, RecordingSink.on(rig.master), (plan("x", "everything"),))
    poller = Poller(rig.link, rig.master, rig.clock, RecordingSink.on(rig.master), (plan("full"),))
    with pytest.raises(ValueError, match="no reading plan 'nightly'.*'full'"):
        poller.run_plan_now("nightly")


def test_plans_for_other_links_are_ignored():
    rig = SimRig(small_link())
    plans = (plan("a", links=("bus",)), plan("b", links=("other",)), plan("c"))
    poller = Poller(rig.link, rig.master, rig.clock, RecordingSink.on(rig.master), plans)
    assert [p.name for p in poller.plans] == ["a", "c"]


def test_periodic_plan_runs_every_interval_and_skips_when_still_running():
    rig = SimRig(small_link(baud=1200, n=8))
    sink = RecordingSink.on(rig.master)
    poller = Poller(rig.link, rig.master, rig.clock, sink, (plan("status", "status", every_s=4),))
    t0 = rig.clock.seconds()
    poller.startService()
    advance(rig.clock, 0.001)
    assert poller.active_rounds() == {"status"}  # first round at start
    advance(rig.clock, 60)
    poller.stopService()
    starts = [r[3] - t0 for r in sink.rounds]
    # a status round of 8 CDTs at 1200 baud takes longer than 4 s: due times in between are skipped
    durations = [r[4] - r[3] for r in sink.rounds]
    assert len(sink.rounds) >= 3 and all(d > 4 for d in durations)
    assert poller.rounds_skipped >= len(sink.rounds) - 1 > 0
    assert all(abs(s / 4 - round(s / 4)) < 1e-9 for s in starts)  # rounds start on the 4 s grid
    assert all(b - a >= 8 for a, b in zip(starts, starts[1:]))
    pending = [c for c in rig.clock.getDelayedCalls() if getattr(c.func, "__self__", None) is poller]
    assert pending == []


def test_daily_plan_fires_at_local_time():
    rig = SimRig(small_link())
    sink = RecordingSink.on(rig.master)
    base = rig.clock.seconds()
    epoch = datetime(2026, 5, 1, 1, 59, 0)  # clock base is 01:59 local

    def local_time(s):
        return epoch + timedelta(seconds=s - base)

    plans = (plan("daily-full", "full", at=(time(2, 0), time(14, 30))),)
    poller = Poller(rig.link, rig.master, rig.clock, sink, plans, local_time=local_time)
    poller.startService()
    advance(rig.clock, 59.9)
    assert sink.rounds == []
    advance(rig.clock, 5)
    assert len(sink.rounds) == 1
    assert local_time(sink.rounds[0][3]) == datetime(2026, 5, 1, 2, 0)
    advance(rig.clock, 86400)
    assert [local_time(r[3]) for r in sink.rounds] == [
        datetime(2026, 5, 1, 2, 0), datetime(2026, 5, 1, 14, 30), datetime(2026, 5, 2, 2, 0),
    ]  # fmt: skip
    poller.stopService()


def test_daily_plan_waits_when_the_wall_clock_jumps_back():
    rig = SimRig(small_link())
    sink = RecordingSink.on(rig.master)
    base = rig.clock.seconds()
    offset = [0.0]

    def local_time(s):  # wall clock that is set back one hour at 01:30 (DST end)
        return datetime(2026, 10, 25, 1, 0) + timedelta(seconds=s - base + offset[0])

    poller = Poller(rig.link, rig.master, rig.clock, sink, (plan("d", at=(time(2, 0),)),), local_time=local_time)
    poller.startService()
    advance(rig.clock, 1800)
    offset[0] = -3600
    advance(rig.clock, 1800 + 10)  # the original delay ran out, but it is 01:00 again
    assert sink.rounds == []
    advance(rig.clock, 3600)
    assert len(sink.rounds) == 1 and local_time(sink.rounds[0][3]) == datetime(2026, 10, 25, 2, 0)
    poller.stopService()


def test_window_keeps_the_queue_short_and_status_overtakes_sweep():
    rig = SimRig(make_link([make_cdt(a, modules=range(1, 33)) for a in range(1, 9)], baud=2400))
    sink = RecordingSink.on(rig.master)
    poller = Poller(rig.link, rig.master, rig.clock, sink, (plan("full"), plan("status", "status")))
    depth = []
    orig = rig.master._write

    def write(data):
        depth.append(rig.master.queued)
        orig(data)

    rig.master._write = write
    full = poller.run_plan_now("full")
    advance(rig.clock, 3)  # mid-sweep
    n_before = len(rig.written)
    status = poller.run_plan_now("status")
    result = rig.run_until(status)
    assert max(depth) <= 2 + 2  # sweep window + status window
    assert poller.active_rounds() == {"full"}  # the status round finished first
    kinds = [type(m.parse(decode_frame(w)[0])).__name__ for _, w in rig.written[n_before:]]
    # after the sweep request in flight, only status requests until the status round ended
    assert kinds[:16] == ["ReadAlarms"] * 8 + ["ReadCdtStatus"] * 8 or kinds[1:17] == ["ReadAlarms"] * 8 + ["ReadCdtStatus"] * 8
    assert len(sink.status) == 8 and result.unreachable == ()
    rig.run_until(full)
    assert sink.counts() == rig.truth()


def test_round_robin_interleaves_cdts():
    rig = SimRig(make_link([make_cdt(a, modules=range(1, 33)) for a in range(1, 4)]))
    poller = Poller(rig.link, rig.master, rig.clock, RecordingSink.on(rig.master), (plan("full"),))
    rig.run_until(poller.run_plan_now("full"))
    seq = [(int(r.address), r.first_channel) for r in (m.parse(decode_frame(w)[0]) for _, w in rig.written)]
    assert seq == [(1, 1), (2, 1), (3, 1), (1, 49), (2, 49), (3, 49)]


def test_link_down_stops_the_round_and_it_still_reports():
    rig = SimRig(small_link(n=6), queue_timeout_s=5)
    sink = RecordingSink.on(rig.master)
    poller = Poller(rig.link, rig.master, rig.clock, sink, (plan("full"),))
    d = poller.run_plan_now("full")
    advance(rig.clock, 0.05)
    rig.master.connection_lost("serial server gone")
    result = rig.run_until(d)
    assert result.aborted and result.aborted.startswith("link down")
    assert len(sink.rounds) == 1
    # a lost link makes every CDT silent at once (their meters turn comm_fail), but it is
    # no fault of theirs: nobody is demoted
    assert poller.demoted() == frozenset()
    assert sorted(c for _, c, _ in sink.unreachable) == [1, 2, 3, 4, 5, 6]
    assert {rig.master.reachability.state(c).reason for c in range(1, 7)} == {"link down"}


def test_a_raising_sink_does_not_break_the_round():
    rig = SimRig(small_link())

    class Bad(RecordingSink):
        def on_bulk(self, *a):
            raise RuntimeError("sink bug")

    sink = Bad()
    poller = Poller(rig.link, rig.master, rig.clock, sink, (plan("full"),))
    result = rig.run_until(poller.run_plan_now("full"))
    assert len(sink.rounds) == 1 and result.unreachable == ()


def test_status_in_full_and_error_replies_count_as_answers():
    link = small_link(n=2)
    rig = SimRig(link)
    sink = RecordingSink.on(rig.master)
    poller = Poller(link, rig.master, rig.clock, sink, (plan("full"),), status_in_full=True)
    rig.run_until(poller.run_plan_now("full"))
    assert len(sink.alarms) == 2 and len(sink.status) == 2 and len(sink.bulk) == 2
    rig.world.apply(faults.ValveJam(link="bus", cdt=1, channel=1, jammed=True))
    serial = link.cdt(1).module(1).channels[0].meter.serial
    reply = rig.run_until(rig.master.transact(m.ValveControl(meter_type=0x10, address=serial, open=False),
                                              priority=Priority.COMMAND))  # fmt: skip
    assert isinstance(reply, m.ErrorReply) and reply.status == m.ErrorReply.VALVE_FAULT


def test_stop_service_cancels_schedule_and_round():
    rig = SimRig(small_link(n=8, baud=1200))
    sink = RecordingSink.on(rig.master)
    poller = Poller(rig.link, rig.master, rig.clock, sink, (plan("s", "status", every_s=60), plan("d", at=(time(3, 0),))))
    poller.startService()
    advance(rig.clock, 0.5)
    assert poller.active_rounds() == {"s"}
    poller.stopService()
    advance(rig.clock, 5)
    assert poller.active_rounds() == frozenset()
    assert sink.rounds == []  # a stopped round is not reported as done
    advance(rig.clock, 200_000)
    assert rig.master.queued == 0 and not rig.master.busy


def _noon(rig):
    """Local time: noon at the rig's start, so a 02:00 plan is 14 h away."""
    t0 = rig.clock.seconds()
    return lambda seconds: datetime(2026, 3, 10, 12, 0) + timedelta(seconds=seconds - t0)


def test_read_on_connect_runs_a_full_round_at_start_and_after_a_long_outage_only():
    """With the default daily plans a restarted supervisor would show nothing read until
    02:00: the first connection, and a return after a long outage, start a full round."""
    rig = SimRig(small_link(n=3))
    sink = RecordingSink.on(rig.master)
    daily = plan("daily", "full", at=[time(2, 0)])
    poller = Poller(rig.link, rig.master, rig.clock, sink, (plan("status", "status", at=[time(3, 0)]), daily),
                    local_time=_noon(rig), read_on_connect=True, full_read_after_outage_s=600)
    poller.startService()
    advance(rig.clock, 30)
    assert [r[1] for r in sink.rounds] == ["daily"] and len(sink.bulk) == 3  # at once, not at 02:00
    write = rig.master._write
    rig.master.connection_lost("cable pulled")
    advance(rig.clock, 60)
    rig.master.connection_made(write)  # a short outage: the plans carry on, no extra round
    advance(rig.clock, 30)
    assert [r[1] for r in sink.rounds] == ["daily"]
    rig.master.connection_lost("cable pulled")
    advance(rig.clock, 600)
    rig.master.connection_made(write)
    advance(rig.clock, 30)
    assert [r[1] for r in sink.rounds] == ["daily", "daily"] and len(sink.bulk) == 6
    poller.stopService()


def test_without_read_on_connect_nothing_is_read_before_the_plan_is_due():
    rig = SimRig(small_link(n=3))
    sink = RecordingSink.on(rig.master)
    poller = Poller(rig.link, rig.master, rig.clock, sink, (plan("daily", "full", at=[time(2, 0)]),),
                    local_time=_noon(rig))
    poller.startService()
    advance(rig.clock, 30)
    assert sink.rounds == [] and sink.bulk == []
    poller.stopService()
