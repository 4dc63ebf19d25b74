"""Alarms: lifecycle (raise, ack, clear, shelve, unshelve) and flood suppression by topology."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from support.builders import T0, Recorder, bulk, cdt_status, make_link, make_topology, repeater_topology, status
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.supervisor.alarms import AlarmError, AlarmManager
from st2000r.supervisor.events import AlarmChanged, EventBus
from st2000r.supervisor.points import PointDatabase


class Rig:
    def __init__(self, topology=None):
        self.clock = Clock()
        self.clock.advance(T0)
        self.bus = EventBus()
        self.topology = topology or make_topology()
        self.points = PointDatabase(self.topology, self.clock, self.bus)
        self.alarms = AlarmManager(self.topology, self.clock, self.bus)
        self.rec = Recorder(self.bus)

    def ids(self):
        return {a.id for a in self.alarms.alarms()}

    def changes(self):
        return [(e.alarm.id, e.alarm.state) for e in self.rec.of(AlarmChanged)]

    def round(self, offline=(), online=(), link="bus"):
        """One round: ``offline`` CDTs unreachable, ``online`` CDTs answer; then RoundDone."""
        t = self.clock.seconds()
        for cdt in online:
            self.points.on_reachability(link, cdt, True, t)
            self.points.on_cdt_status(link, cdt, cdt_status(cdt), t)
        for cdt in offline:
            self.points.on_reachability(link, cdt, False, t, "no answer")
        self.points.on_round_done(link, "status", "status", t, t)


# ---- lifecycle


def test_raise_ack_clear_removes():
    rig = Rig()
    rig.points.on_bulk("bus", 1, bulk(1, [5], statuses=[status(alarms=AlarmFlag.TAMPER)]), T0)
    a = rig.alarms.alarm("meter:bus/1/1/1:tamper")
    assert (a.state, a.severity, a.kind, a.source, a.active) == ("active-unacked", "major", "tamper", "bus/1/1/1",
                                                                 True)
    a = rig.alarms.acknowledge("meter:bus/1/1/1:tamper", "alice", "sent a technician")
    assert (a.state, a.acked_by, a.ack_note) == ("active-acked", "alice", "sent a technician")
    rig.clock.advance(10)
    rig.points.on_bulk("bus", 1, bulk(1, [6]), T0 + 10)
    assert rig.ids() == set()
    assert rig.changes() == [("meter:bus/1/1/1:tamper", "active-unacked"), ("meter:bus/1/1/1:tamper", "active-acked"),
                             ("meter:bus/1/1/1:tamper", "removed")]


def test_clear_then_ack_removes_and_reraise_from_cleared():
    rig = Rig()
    rig.points.on_bulk("bus", 1, bulk(1, [5], statuses=[status(alarms=AlarmFlag.OPEN)]), T0)
    rig.points.on_bulk("bus", 1, bulk(1, [5]), T0 + 1)
    a = rig.alarms.alarm("meter:bus/1/1/1:open")
    assert (a.state, a.active, a.severity) == ("cleared-unacked", False, "minor")
    assert a.cleared_at is not None
    rig.points.on_bulk("bus", 1, bulk(1, [5], statuses=[status(alarms=AlarmFlag.OPEN)]), T0 + 2)
    assert rig.alarms.alarm("meter:bus/1/1/1:open").state == "active-unacked"
    rig.points.on_bulk("bus", 1, bulk(1, [5]), T0 + 3)
    assert rig.alarms.acknowledge("meter:bus/1/1/1:open", "alice").state == "removed"
    assert rig.ids() == set()
    with pytest.raises(AlarmError, match="no alarm"):
        rig.alarms.acknowledge("meter:bus/1/1/1:open", "alice")


def test_valve_fault_mains_and_battery_alarms():
    rig = Rig()
    rig.points.on_bulk("bus", 1, bulk(1, [5], statuses=[status(Valve.FAULT)]), T0)
    rig.points.on_cdt_status("bus", 2, cdt_status(2, mains=False, battery_low=True, mv=3100), T0)
    assert rig.ids() == {"meter:bus/1/1/1:valve_fault", "cdt:bus/2:mains", "cdt:bus/2:battery_low"}
    assert [a.severity for a in rig.alarms.alarms()] == ["major", "major", "minor"]  # most severe first
    rig.points.on_cdt_status("bus", 2, cdt_status(2, mains=True), T0 + 1)
    rig.points.on_bulk("bus", 1, bulk(1, [5], statuses=[status(Valve.CLOSED)]), T0 + 1)
    assert {a.id: a.state for a in rig.alarms.alarms()} == {
        "meter:bus/1/1/1:valve_fault": "cleared-unacked", "cdt:bus/2:mains": "cleared-unacked",
        "cdt:bus/2:battery_low": "cleared-unacked"}


def test_shelve_hides_changes_and_unshelve_reannounces():
    rig = Rig()
    rig.points.on_bulk("bus", 1, bulk(1, [5], statuses=[status(alarms=AlarmFlag.SHORT)]), T0)
    aid = "meter:bus/1/1/1:short"
    with pytest.raises(AlarmError, match="reason is required"):
        rig.alarms.shelve(aid, "alice", " ", T0 + 3600)
    with pytest.raises(AlarmError, match="after now"):
        rig.alarms.shelve(aid, "alice", "known faulty sensor", T0 - 1)
    with pytest.raises(AlarmError, match="not shelved"):
        rig.alarms.unshelve(aid, "alice")
    a = rig.alarms.shelve(aid, "alice", "known faulty sensor", T0 + 3600)
    assert (a.state, a.shelved_by, a.shelved_reason) == ("shelved", "alice", "known faulty sensor")
    assert rig.alarms.alarms(include_shelved=False) == []
    rig.rec.clear()
    rig.points.on_bulk("bus", 1, bulk(1, [5]), T0 + 1)  # clears while shelved: not announced
    rig.points.on_bulk("bus", 1, bulk(1, [5], statuses=[status(alarms=AlarmFlag.SHORT)]), T0 + 2)
    # still "shelved" to everyone; the snapshots follow the field for whoever keeps the list
    assert rig.changes() == [(aid, "shelved"), (aid, "shelved")]
    assert [e.alarm.active for e in rig.rec.of(AlarmChanged)] == [False, True]
    a = rig.alarms.unshelve(aid, "bob")
    assert (a.state, a.active) == ("active-unacked", True)
    assert rig.clock.getDelayedCalls() == []  # the shelf timer is gone


def test_shelf_expires_on_the_clock_and_a_cleared_alarm_leaves():
    rig = Rig()
    rig.points.on_bulk("bus", 1, bulk(1, [5], statuses=[status(alarms=AlarmFlag.SHORT)]), T0)
    aid = "meter:bus/1/1/1:short"
    rig.alarms.shelve(aid, "alice", "maintenance", T0 + 600)
    rig.points.on_bulk("bus", 1, bulk(1, [5]), T0 + 1)
    rig.clock.advance(599)
    assert rig.alarms.alarm(aid).state == "shelved"
    rig.clock.advance(1)
    assert rig.ids() == set() and rig.changes()[-1] == (aid, "removed")


def test_shelf_expiry_with_the_condition_present_reannounces():
    rig = Rig()
    rig.points.on_bulk("bus", 1, bulk(1, [5], statuses=[status(alarms=AlarmFlag.SHORT)]), T0)
    aid = "meter:bus/1/1/1:short"
    rig.alarms.acknowledge(aid, "alice")
    rig.alarms.shelve(aid, "alice", "maintenance", T0 + 60)
    rig.clock.advance(60)
    assert rig.alarms.alarm(aid).state == "active-unacked"


def test_stop_cancels_shelf_timers_and_unsubscribes():
    rig = Rig()
    rig.points.on_bulk("bus", 1, bulk(1, [5], statuses=[status(alarms=AlarmFlag.SHORT)]), T0)
    rig.alarms.startService()
    rig.alarms.shelve("meter:bus/1/1/1:short", "alice", "x", T0 + 60)
    rig.alarms.stopService()
    assert rig.clock.getDelayedCalls() == []
    rig.points.on_bulk("bus", 2, bulk(2, [5], statuses=[status(alarms=AlarmFlag.SHORT)]), T0)
    assert "meter:bus/2/1/1:short" not in rig.ids()


# ---- offline and flood suppression


def test_offline_alarm_only_at_round_end_and_clears_when_it_answers():
    rig = Rig(repeater_topology())
    rig.points.on_reachability("bus", 1, False, T0, "no answer")
    assert rig.ids() == set()  # not before the round is over
    rig.round(offline=[1], online=[2, 3, 4, 5, 6, 7, 8])
    assert rig.ids() == {"cdt:bus/1:offline"}
    assert rig.alarms.alarm("cdt:bus/1:offline").text == "CDT 1 (cdt-1) on link bus: does not answer"
    rig.round(offline=[1])
    assert len(rig.rec.of(AlarmChanged)) == 1  # a repeat is not a transition
    rig.points.on_reachability("bus", 1, True, T0)
    assert rig.alarms.alarm("cdt:bus/1:offline").state == "cleared-unacked"


def test_repeater_failure_is_one_alarm_not_one_per_cdt():
    rig = Rig(repeater_topology())
    rig.round(offline=[3, 4, 5, 6], online=[1, 2, 7, 8])  # everything behind R1 (and its child R2)
    assert rig.ids() == {"repeater:bus/R1:suspected"}
    a = rig.alarms.alarm("repeater:bus/R1:suspected")
    assert (a.severity, a.source, a.kind) == ("critical", "bus/R1", "suspected")
    assert "all 4 CDTs behind it" in a.text


def test_nested_child_repeater_alone_is_suspected():
    rig = Rig(repeater_topology())
    rig.round(offline=[5, 6], online=[1, 2, 3, 4, 7, 8])
    assert rig.ids() == {"repeater:bus/R2:suspected"}
    rig.round(offline=[3, 4, 5, 6])  # now the parent's own CDTs too: the parent stands for all
    assert {a.id: a.state for a in rig.alarms.alarms()} == {"repeater:bus/R1:suspected": "active-unacked",
                                                            "repeater:bus/R2:suspected": "cleared-unacked"}


def test_partial_recovery_brings_the_cdt_alarms_back_individually():
    rig = Rig(repeater_topology())
    rig.round(offline=[3, 4, 5, 6], online=[1, 2, 7, 8])
    rig.alarms.acknowledge("repeater:bus/R1:suspected", "alice")
    rig.points.on_reachability("bus", 3, True, T0)  # CDT 3 answers: R1 works after all
    assert rig.ids() == set()  # the acked repeater alarm cleared and left; no CDT alarm mid-round
    rig.round(offline=[4, 5, 6], online=[3])
    assert rig.ids() == {"cdt:bus/4:offline", "repeater:bus/R2:suspected"}


def test_cdt_alarms_raised_earlier_clear_when_the_repeater_covers_them():
    rig = Rig(repeater_topology())
    rig.round(offline=[7], online=[1, 2, 3, 4, 5, 6, 8])
    assert rig.ids() == {"cdt:bus/7:offline"}
    rig.round(offline=[7, 8])
    assert {a.id: a.state for a in rig.alarms.alarms()} == {"repeater:bus/R3:suspected": "active-unacked",
                                                            "cdt:bus/7:offline": "cleared-unacked"}


def test_whole_link_silent_is_one_link_alarm_and_disconnected_link_raises_no_offline():
    rig = Rig(repeater_topology())
    rig.round(offline=range(1, 9))
    assert rig.ids() == {"link:bus:no_answer"}
    rig2 = Rig(repeater_topology())
    rig2.points.on_link_state("bus", "connected", {})
    rig2.points.on_link_state("bus", "disconnected", {"reason": "cable cut"})
    rig2.round(offline=[1])
    rig2.clock.advance(30)
    assert rig2.ids() == {"link:bus:disconnected"}
    assert rig2.alarms.alarm("link:bus:disconnected").severity == "critical"
    rig2.points.on_link_state("bus", "connected", {})
    rig2.round(offline=[1])
    rig2.clock.advance(30)
    assert {a.id: a.state for a in rig2.alarms.alarms()} == {"link:bus:disconnected": "cleared-unacked",
                                                             "cdt:bus/1:offline": "active-unacked"}


def test_a_flapping_link_is_one_alarm_raised_late_and_cleared_late():
    """36 connect-then-drop cycles in 90 s were 36 alarms: now the alarm waits for 30 s
    down without a break, and clears after 30 s up without a break."""
    rig = Rig()
    rig.points.on_link_state("bus", "connected", {})
    for _ in range(36):  # up 1.5 s, down 1 s, for 90 s
        rig.points.on_link_state("bus", "disconnected", {"reason": "dropped"})
        rig.clock.advance(1)
        rig.points.on_link_state("bus", "connected", {})
        rig.clock.advance(1.5)
    assert rig.changes() == []
    rig.points.on_link_state("bus", "disconnected", {"reason": "dropped"})
    rig.clock.advance(29)
    assert rig.changes() == []
    rig.clock.advance(1)
    assert rig.changes() == [("link:bus:disconnected", "active-unacked")]
    for _ in range(10):  # flapping back: the alarm neither clears nor repeats
        rig.points.on_link_state("bus", "connected", {})
        rig.clock.advance(5)
        rig.points.on_link_state("bus", "disconnected", {"reason": "dropped"})
        rig.clock.advance(1)
    assert rig.changes() == [("link:bus:disconnected", "active-unacked")]
    rig.points.on_link_state("bus", "connected", {})
    rig.clock.advance(30)
    assert rig.changes()[-1] == ("link:bus:disconnected", "cleared-unacked")
    rig.points.on_link_state("bus", "disconnected", {"reason": "dropped"})
    rig.points.on_link_state("bus", "stopped", {})  # a deliberate stop: no alarm comes
    rig.clock.advance(60)
    assert rig.changes()[-1] == ("link:bus:disconnected", "cleared-unacked")


def test_a_link_that_never_connects_is_alarmed_after_the_grace_time():
    rig = Rig(make_topology(make_link(), make_link("other", cdts=())))
    rig.alarms.startService()
    rig.points.on_link_state("bus", "connected", {})
    rig.clock.advance(59)
    assert rig.ids() == set()
    rig.clock.advance(1)
    assert rig.ids() == {"link:other:disconnected"}
    assert rig.alarms.alarm("link:other:disconnected").text == "link other: not connected 60 s after start"
    rig.points.on_link_state("other", "connected", {})
    rig.clock.advance(30)  # up long enough: cleared
    assert rig.alarms.alarm("link:other:disconnected").state == "cleared-unacked"
    rig.alarms.stopService()
    assert rig.clock.getDelayedCalls() == []


def test_recovery_after_a_link_outage_raises_no_cdt_offline_alarms():
    """A 30 s outage in the middle of a round, then the link is back: the CDTs were silent
    only because the link was down — the next rounds raise no offline alarm for them."""
    from support.clock import advance
    from support.simrig import sim_supervisor_parts

    parts = sim_supervisor_parts()
    alarms = AlarmManager(parts.points.topology, parts.clock, parts.bus)
    parts.points.on_link_state("bus", "connected")
    parts.round_time()
    d = parts.poller.run_plan_now("full")
    advance(parts.clock, 0.2)
    parts.drop()
    assert all(not c.online for c in parts.points.cdts())  # comm_fail at once
    advance(parts.clock, 30)
    parts.reconnect()
    advance(parts.clock, 60)
    assert d.called
    parts.round_time()
    assert [a.id for a in alarms.alarms() if a.kind == "offline"] == []
    assert all(c.online for c in parts.points.cdts())


def test_security_events_are_one_alarm_each_until_acknowledged():
    rig = Rig()
    observe = rig.alarms.link_observer("bus")
    for _ in range(1000):  # an attacker repeating a refused registration
        observe("auth_failed", {"dtu": "DTU1", "peer": "198.51.100.7:5000", "reason": "wrong proof"})
    observe("takeover", {"dtu": "DTU1", "peer": "198.51.100.8:1", "old_peer": "198.51.100.7:2"})
    observe("connected", {})  # not a security event: ignored here
    rig.alarms.on_gprs_server_event("throttled", {"source": "198.51.100.7", "seconds": 60, "failures": 5})
    assert {a.id: (a.state, a.severity) for a in rig.alarms.alarms()} == {
        "link:bus:auth_failed": ("cleared-unacked", "major"), "link:bus:takeover": ("cleared-unacked", "major"),
        "gprs:throttled": ("cleared-unacked", "warning")}
    assert len(rig.changes()) == 6  # raised and cleared once each, not once per attempt
    rig.alarms.acknowledge("link:bus:auth_failed", "alice")
    observe("auth_failed", {"dtu": "DTU1", "peer": "198.51.100.7:5001", "reason": "wrong proof"})
    assert rig.alarms.alarm("link:bus:auth_failed").state == "cleared-unacked"  # a new one after the ack
