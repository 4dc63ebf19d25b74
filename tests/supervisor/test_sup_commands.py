"""The command path: handles, checks, audit first, send deadline, read-back, late outcomes.

Most tests drive a fake master (shaped like the real one: tests/support) whose transactions
the test fires by hand; the last ones run the real BusMaster against the simulator core.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from support.builders import OPERATORS, T0, Recorder, bulk, command_topology, status
from support.clock import fired
from support.fakes import FakeMaster
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.master import LinkDown, Priority, TransactionTimeout
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.drivers.st2000r.reachability import Purpose
from st2000r.supervisor.alarms import AlarmManager
from st2000r.supervisor.audit import AuditLog, read_records
from st2000r.supervisor.authz import Source
from st2000r.supervisor.commands import (
    AUDIT_ALARM,
    AlarmRequest,
    CommandDispatcher,
    ReadNowRequest,
    SetBaseRequest,
    TimeSyncRequest,
    ValveRequest,
)
from st2000r.supervisor.events import CommandChanged, CommandKind, CommandState, EventBus, MeterId
from st2000r.supervisor.points import PointDatabase

S = CommandState


class Rig:
    def __init__(self, audit=None, auto_send=True, **kw):
        self.clock = Clock()
        self.clock.advance(T0)
        self.bus = EventBus(self.clock)
        self.rec = Recorder(self.bus)
        self.topology = command_topology(**{k: kw.pop(k) for k in ("max_closes", "protected") if k in kw})
        self.points = PointDatabase(self.topology, self.clock, self.bus)
        self.alarms = AlarmManager(self.topology, self.clock, self.bus)
        self.master = FakeMaster(next(self.topology.links()), auto_send=auto_send)
        self.dispatcher = CommandDispatcher(self.topology, self.clock, {"bus": self.master}, self.points, self.bus,
                                            audit=audit, alarms=self.alarms, **kw)

    def valve(self, meter="bus/1/1/1", open_=False, who="alice", source="api", **kw):
        handle = self.dispatcher.submit(ValveRequest(meter, open_, who, source, kw.pop("reason", "unpaid bill"),
                                                     **kw))
        out = []
        handle.outcome.addCallback(out.append)
        return handle, out

    def refused(self, **kw):
        handle, out = self.valve(**kw)
        assert out and out[0].state is S.REFUSED, out
        return out[0].detail

    def reply_valve(self, error_status=None):
        call = self.master.last
        assert isinstance(call.request, m.ValveControl) and call.priority is Priority.COMMAND
        r = call.request
        if error_status is not None:
            call.deferred.callback(m.ErrorReply(meter_type=r.meter_type, address=r.address, status=error_status))
        else:
            call.deferred.callback(m.ValveReply(meter_type=r.meter_type, address=r.address))

    def reply_read(self, valve, count=42):
        """Answer the pending read-back the way the real master does: the reply reaches the
        point database through the reachability first, then the caller."""
        call = self.master.last
        r = call.request
        assert isinstance(r, m.BulkRead) and call.priority is Priority.COMMAND and call.purpose is Purpose.READ_BACK
        reply = bulk(int(r.address), [count], first=r.first_channel, statuses=[status(valve)])
        self.deliver(call, reply)

    def deliver(self, call, reply):
        from st2000r.drivers.st2000r.reachability import Outcome

        self.points.on_reply(int(call.request.address), Outcome("bus", call.request.address, call.request, reply,
                                                                 None, self.clock.seconds(), call.purpose))
        call.deferred.callback(reply)


# ---- handles and checks


def test_submit_returns_a_handle_at_once_and_records_can_be_looked_up():
    rig = Rig()
    handle, out = rig.valve(peer="192.0.2.7")
    record = rig.dispatcher.get(handle.id)
    assert out == [] and record.state is S.SENT and record.kind is CommandKind.VALVE
    assert rig.dispatcher.last_for("bus/1/1/1") == record and rig.dispatcher.last_for(MeterId("bus", 1, 1, 1))
    assert [e.command.state for e in rig.rec.of(CommandChanged)] == [S.PENDING, S.SENT]
    assert [e.command.id for e in rig.rec.of(CommandChanged)] == [handle.id] * 2
    with pytest.raises(KeyError):
        rig.dispatcher.get("nope")


def test_permissions_by_role_and_source():
    rig = Rig()
    assert rig.refused(who="victor") == "permission denied: 'victor' is a viewer (valve needs operator or above)"
    assert rig.refused(who="mallory") == "permission denied: unknown user 'mallory'"
    assert rig.refused(who="") == "no user given ('who' is empty)"
    assert rig.refused(source="telnet").startswith("unknown source 'telnet'")
    assert rig.master.calls == []
    assert all(r.state is S.REFUSED for r in rig.dispatcher.history())
    assert rig.valve(who="erin", source="console")[1] == []  # accepted: running
    assert rig.valve(meter="bus/1/1/2", who="scheduler", source=Source.PLAN)[1] == []
    assert rig.valve(meter="bus/1/1/3", who="modbus:unit7", source="modbus", peer="10.0.0.9")[1] == []
    assert len(rig.master.calls) == 3


def test_engineer_kinds_refuse_an_operator():
    rig = Rig()
    out = []
    rig.dispatcher.submit(TimeSyncRequest("bus", 1, "alice", "api")).outcome.addCallback(out.append)
    rig.dispatcher.submit(SetBaseRequest("bus/1/1/1", 1000, "alice", "api")).outcome.addCallback(out.append)
    assert [(r.state, r.detail) for r in out] == [
        (S.REFUSED, "permission denied: 'alice' is a operator (time sync needs engineer or above)"),
        (S.REFUSED, "permission denied: 'alice' is a operator (set base needs engineer or above)")]


def test_modbus_needs_its_service_identity():
    rig = Rig(operators=tuple(o for o in OPERATORS if o.name != "modbus"))
    assert "service identity 'modbus'" in rig.refused(who="scada", source="modbus")


def test_unknown_meter_and_malformed_id_are_refused():
    rig = Rig()
    assert rig.refused(meter="bus/9/1/1") == "no meter bus/9/1/1 in the configuration"
    assert rig.refused(meter="bus/1/x/1") == "meter id 'bus/1/x/1': module 'x' is not a number"
    assert rig.refused(meter=MeterId("nolink", 1, 1, 1)) == "no meter nolink/1/1/1 in the configuration"


def test_protected_household_is_never_closed_but_may_be_opened():
    rig = Rig()
    assert rig.refused(meter="bus/2/1/1") == "interlock: household 'H2-1' is protected (its meters are never closed)"
    assert rig.valve(meter="bus/2/1/1", open_=True)[1] == []
    assert rig.master.last.request.open is True


def test_close_rate_limit_is_a_sliding_minute_per_link():
    rig = Rig(max_closes=2)
    assert rig.valve(meter="bus/1/1/1")[1] == []
    rig.clock.advance(30)
    assert rig.valve(meter="bus/1/1/2")[1] == []
    assert rig.refused(meter="bus/1/1/3") == "interlock: 2 closes on link 'bus' in the last minute (limit 2 per minute)"
    assert rig.valve(meter="bus/1/1/3", open_=True)[1] == []  # opening is never limited
    rig.clock.advance(30)  # the first close leaves the window
    assert rig.valve(meter="bus/1/2/1")[1] == []
    assert Rig(max_closes=0).refused().startswith("interlock: closing valves is disabled")


def test_busy_while_a_command_for_the_meter_runs():
    rig = Rig()
    handle, _ = rig.valve()
    assert rig.refused(open_=True) == f"busy: command {handle.id} on bus/1/1/1 is still running"
    assert rig.dispatcher.running() == ("bus/1/1/1",)


def test_a_target_spelled_differently_is_one_target():
    rig = Rig()
    handle, out = rig.valve(meter="bus/01/1/1")
    assert rig.dispatcher.get(handle.id).target == "bus/1/1/1" and rig.dispatcher.running() == ("bus/1/1/1",)
    assert rig.refused(meter="bus/1/1/1", open_=True).startswith("busy: ")
    rig.reply_valve()
    rig.reply_read(Valve.CLOSED)
    assert out[0].state is S.SUCCEEDED


def test_meter_without_valve_is_refused():
    rig = Rig()
    rig.points.on_bulk("bus", 1, bulk(1, [1], statuses=[status(Valve.NONE)]), T0)
    assert rig.refused() == "meter bus/1/1/1 reports no valve fitted"


# ---- send and confirm


def test_success_confirmed_by_read_back_through_the_one_reply_path():
    rig = Rig()
    handle, out = rig.valve()
    request = rig.master.last.request
    assert (request.meter_type, request.address, request.open) == (0x10, "00000001001001", False)
    rig.reply_valve()
    rig.reply_read(Valve.OPEN)  # the motor is still running
    assert out == [] and len(rig.master.calls) == 2
    rig.clock.advance(3)
    rig.reply_read(Valve.CLOSED)
    (record,) = out
    assert (record.state, record.detail) == (S.SUCCEEDED, "valve closed (confirmed by read-back 2)")
    assert record.sent_at is not None and record.finished_at >= record.sent_at
    assert rig.points.meter("bus/1/1/1").valve is Valve.CLOSED
    assert [e.command.state for e in rig.rec.of(CommandChanged)] == [S.PENDING, S.SENT, S.SUCCEEDED]
    assert rig.dispatcher.running() == () and rig.clock.getDelayedCalls() == []


def test_fault_and_error_reply_fail_with_the_reason():
    rig = Rig()
    _, out = rig.valve()
    rig.reply_valve()
    rig.reply_read(Valve.FAULT)
    assert (out[0].state, out[0].detail) == (S.FAILED, "valve reports FAULT (jammed motor?)")
    _, out = rig.valve(open_=True)
    rig.reply_valve(error_status=m.ErrorReply.VALVE_FAULT)
    assert (out[0].state, out[0].detail) == (S.FAILED, "refused by the field: error status 05h (valve fault)")


def test_no_confirmation_before_the_deadline_times_out():
    rig = Rig(timeout_s=10, confirm_interval_s=3)
    _, out = rig.valve()
    rig.reply_valve()
    for _ in range(3):
        rig.reply_read(Valve.OPEN)
        rig.clock.advance(3)
    rig.reply_read(Valve.OPEN)
    assert (out[0].state, out[0].detail) == (S.TIMED_OUT, "not confirmed within 10 s: valve still open")


def test_a_late_confirmation_revises_the_outcome_and_is_audited():
    rig = Rig(timeout_s=10, confirm_interval_s=3)
    handle, out = rig.valve()
    rig.reply_valve()
    for _ in range(4):
        rig.reply_read(Valve.OPEN)
        rig.clock.advance(3)
    assert out[0].state is S.TIMED_OUT
    rig.clock.advance(10)  # one more read-back is made after the timeout
    assert rig.master.last.purpose is Purpose.READ_BACK
    rig.reply_read(Valve.CLOSED)
    record = rig.dispatcher.get(handle.id)
    assert (record.state, record.late) == (S.SUCCEEDED, True)
    assert record.detail.startswith("confirmed late: valve closed read at ")
    assert [e.command.state for e in rig.rec.of(CommandChanged)][-2:] == [S.TIMED_OUT, S.SUCCEEDED]
    assert "meter:bus/1/1/1:valve_moved" not in {a.id for a in rig.alarms.alarms()}


def test_transaction_timeout_and_link_down():
    rig = Rig()
    _, out = rig.valve()
    rig.master.last.deferred.errback(TransactionTimeout("no reply after 3 attempts", rig.master.last.request))
    assert out[0].state is S.TIMED_OUT and "no reply after 3 attempts" in out[0].detail
    _, out = rig.valve(open_=True)
    rig.master.last.deferred.errback(LinkDown("link bus: connection lost", rig.master.last.request))
    assert (out[0].state, out[0].detail) == (S.FAILED, "link down, delivery unknown: link bus: connection lost")


def test_a_command_not_sent_within_its_deadline_fails_and_is_withdrawn():
    """The issue's case: a close queued while the link is down must not be sent when the link
    returns minutes later, and must not be audited as a timeout of a valve that moved."""
    rig = Rig(auto_send=False, timeout_s=30)
    _, out = rig.valve()
    assert rig.dispatcher.get(rig.dispatcher.history()[-1].id).state is S.PENDING
    rig.clock.advance(30)
    assert (out[0].state, out[0].sent_at) == (S.FAILED, None)
    assert out[0].detail.startswith("not sent within 30 s")
    assert rig.master.last.cancelled  # withdrawn from the master's queue


def test_the_timeout_counts_from_the_send():
    rig = Rig(auto_send=False, timeout_s=30, confirm_interval_s=3)
    _, out = rig.valve()
    rig.clock.advance(25)
    rig.master.send()  # the link came back: the frame goes out 25 s after the request
    rig.reply_valve()
    for _ in range(8):  # 24 s of read-backs: past the request's 30 s, within the send's
        rig.reply_read(Valve.OPEN)
        rig.clock.advance(3)
    assert out == []
    rig.reply_read(Valve.CLOSED)
    assert out[0].state is S.SUCCEEDED


def test_read_back_timeouts_are_retried_until_the_deadline():
    rig = Rig(timeout_s=20, confirm_interval_s=5)
    _, out = rig.valve()
    rig.reply_valve()
    rig.master.last.deferred.errback(TransactionTimeout("no reply", rig.master.last.request))
    assert out == []
    rig.clock.advance(5)
    rig.reply_read(Valve.CLOSED)
    assert out[0].state is S.SUCCEEDED


def test_shutdown_interrupts_running_commands():
    rig = Rig()
    _, out = rig.valve()
    rig.reply_valve()
    rig.reply_read(Valve.OPEN)
    rig.dispatcher.shutdown()
    assert out[0].state is S.INTERRUPTED and rig.clock.getDelayedCalls() == []


# ---- other kinds


def test_read_now_of_a_cdt_reads_its_ranges_alarms_and_status():
    rig = Rig()
    out = []
    handle = rig.dispatcher.submit(ReadNowRequest("bus/1", "alice", "console"))
    handle.outcome.addCallback(out.append)
    kinds = []
    while not out:
        assert len(kinds) < 10, f"read-now not done after answering {[k[0] for k in kinds]}"
        call = rig.master.last
        kinds.append((type(call.request).__name__, call.purpose, call.priority))
        r = call.request
        if isinstance(r, m.BulkRead):
            reply = bulk(1, [7] * r.count, first=r.first_channel)
        elif isinstance(r, m.ReadAlarms):
            reply = m.AlarmsReply(meter_type=m.CDT_TYPE, address=r.address, alarms=(AlarmFlag.NONE,) * 96)
        else:
            from support.builders import cdt_status
            reply = cdt_status(1)
        rig.deliver(call, reply)
    assert [k[0] for k in kinds] == ["BulkRead", "ReadAlarms", "ReadCdtStatus"]
    assert {k[1] for k in kinds} == {Purpose.READ_NOW} and {k[2] for k in kinds} == {Priority.STATUS}
    assert out[0].state is S.SUCCEEDED and rig.points.meter("bus/1/2/3").count == 7


def test_set_base_and_time_sync():
    rig = Rig()
    out = []
    rig.dispatcher.submit(SetBaseRequest("bus/1/1/1", 1000 + 5 * 10, "erin", "api", "meter replaced")
                          ).outcome.addCallback(out.append)
    call = rig.master.last
    assert (type(call.request), call.request.channel, call.request.count) == (m.SetBase, 1, 5)
    call.deferred.callback(m.SetBaseReply(meter_type=m.CDT_TYPE, address=call.request.address, channel=1, count=5))
    assert out[0].state is S.SUCCEEDED
    assert rig.master.last.purpose is Purpose.READ_BACK  # the point is refreshed
    out.clear()
    rig.dispatcher.submit(SetBaseRequest("bus/1/1/1", 1003, "erin", "api")).outcome.addCallback(out.append)
    assert out[0].state is S.REFUSED and "whole number of pulses of 10" in out[0].detail
    out.clear()
    rig.dispatcher.submit(TimeSyncRequest("bus", 2, "erin", "api")).outcome.addCallback(out.append)
    call = rig.master.last
    assert isinstance(call.request, m.TimeSync) and call.request.address == "00000000000002"
    call.deferred.callback(m.TimeSyncReply(meter_type=m.CDT_TYPE, address=call.request.address,
                                           time=call.request.time))
    assert out[0].state is S.SUCCEEDED and out[0].target == "bus/2"


def test_alarm_operations_are_authorised_and_audited():
    rig = Rig()
    rig.points.on_bulk("bus", 1, bulk(1, [5], statuses=[status(alarms=AlarmFlag.TAMPER)]), T0)
    aid = "meter:bus/1/1/1:tamper"
    out = []
    rig.dispatcher.submit(AlarmRequest(aid, CommandKind.ALARM_ACK, "victor", "console")).outcome.addCallback(
        out.append)
    assert out[-1].state is S.REFUSED and rig.alarms.alarm(aid).state == "active-unacked"
    rig.dispatcher.submit(AlarmRequest(aid, CommandKind.ALARM_ACK, "alice", "console", "on it")).outcome.addCallback(
        out.append)
    assert out[-1].state is S.SUCCEEDED and rig.alarms.alarm(aid).acked_by == "alice"
    rig.dispatcher.submit(AlarmRequest(aid, CommandKind.ALARM_SHELVE, "alice", "console", "", duration_s=600)
                          ).outcome.addCallback(out.append)
    assert out[-1].state is S.REFUSED and "reason" in out[-1].detail
    rig.dispatcher.submit(AlarmRequest(aid, CommandKind.ALARM_SHELVE, "alice", "console", "maintenance",
                                       duration_s=600)).outcome.addCallback(out.append)
    assert out[-1].state is S.SUCCEEDED and rig.alarms.alarm(aid).state == "shelved"
    assert [r.kind for r in rig.dispatcher.audit.records] == [CommandKind.ALARM_ACK] * 2 + [
        CommandKind.ALARM_SHELVE] * 2


def test_a_valve_that_moves_without_a_command_raises_an_alarm():
    rig = Rig()
    rig.points.on_bulk("bus", 1, bulk(1, [5]), T0)  # open
    rig.points.on_bulk("bus", 1, bulk(1, [5], statuses=[status(Valve.CLOSED)]), T0 + 60)
    alarm = rig.alarms.alarm("meter:bus/1/1/1:valve_moved")
    assert (alarm.state, alarm.kind) == ("cleared-unacked", "valve_moved")
    assert "no command of ours" in alarm.text


# ---- the audit log on disk


@pytest_twisted.ensureDeferred
async def test_audit_line_is_on_disk_before_the_frame_goes_out(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, reactor.callFromThread)
    rig = Rig(audit=audit)
    handle, out = rig.valve()
    assert rig.master.calls == []  # waiting for the sync
    await _until(lambda: rig.master.calls)
    line = path.read_text(encoding="utf-8").splitlines()[0]  # written and synced before transact()
    assert (json.loads(line)["id"], json.loads(line)["state"]) == (handle.id, "pending")
    rig.reply_valve()
    rig.reply_read(Valve.CLOSED)
    await audit.close()
    states = [json.loads(x)["state"] for x in path.read_text(encoding="utf-8").splitlines()]
    assert states == ["pending", "sent", "succeeded"]
    assert read_records(path).records[0].state is S.SUCCEEDED


@pytest_twisted.ensureDeferred
async def test_an_unwritable_audit_log_refuses_commands_and_raises_an_alarm(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, reactor.callFromThread)
    rig = Rig(audit=audit)
    audit._file.close()  # the disk went away under us
    handle, out = rig.valve()
    await _until(lambda: out)
    assert out[0].state is S.REFUSED and "audit log cannot be written" in out[0].detail
    assert rig.master.calls == []
    assert rig.alarms.alarm(AUDIT_ALARM).severity == "critical"


def test_a_torn_last_line_is_set_aside_not_appended_to(tmp_path):
    path = tmp_path / "audit.jsonl"
    good = '{"id":"a-1","kind":"valve","target":"bus/1/1/1","action":"close","who":"alice","source":"api",' \
           '"peer":null,"reason":"","requested_at":"2026-05-28T20:26:40+00:00","state":"sent","detail":"x"}\n'
    path.write_text(good + '{"id":"a-2","ki', encoding="utf-8")
    report = read_records(path)
    assert [r.id for r in report.records] == ["a-1"] and report.bad_lines[0][0] == len(good)
    audit = AuditLog(path, reactor.callFromThread)
    assert path.read_text(encoding="utf-8") == good and (tmp_path / "audit.jsonl.torn-1").read_text() == \
        '{"id":"a-2","ki'
    audit._file.close()


def test_recover_closes_a_command_cut_off_by_a_crash_after_reading_the_valve():
    rig = Rig()
    from st2000r.supervisor.audit import record_from_json

    cut = record_from_json({"id": "old-000001", "kind": "valve", "target": "bus/1/1/1", "action": "close",
                            "who": "alice", "source": "api", "peer": None, "reason": "", "state": "sent",
                            "requested_at": "2026-05-28T20:00:00+00:00", "detail": "frame on the wire"})
    assert rig.dispatcher.recover([cut]) == 1
    assert rig.master.last.purpose is Purpose.READ_BACK
    rig.reply_read(Valve.CLOSED)
    record = rig.dispatcher.get("old-000001")
    assert record.state is S.INTERRUPTED and "valve read back closed" in record.detail and "reached" in record.detail


def test_command_ids_are_unique_across_runs():
    a, b = Rig(), Rig()
    assert a.valve()[0].id != b.valve()[0].id


async def _until(predicate, limit=5.0):
    end = reactor.seconds() + limit
    while not predicate():
        assert reactor.seconds() < end, "condition not reached"
        d = defer.Deferred()
        reactor.callLater(0.005, d.callback, None)
        await d


# ---- against the simulator core


class SimRig:
    """Real BusMaster <-> real SimulatedBus/World, one Clock, in memory."""

    def __init__(self):
        from st2000r.drivers.st2000r.master import BusMaster
        from st2000r.simulation.bus import SimulatedBus
        from st2000r.simulation.world import World

        self.clock = Clock()
        self.clock.advance(T0)
        self.bus = EventBus(self.clock)
        self.topology = command_topology()
        self.points = PointDatabase(self.topology, self.clock, self.bus)
        link = next(self.topology.links())
        self.world = World(self.topology, self.clock, seed=5, start=datetime(2026, 5, 28, 12, 0))
        self.sim = SimulatedBus(self.world, link.name, self.clock, physical_timing=True)
        self.master = BusMaster(link, self.clock)
        self.points.attach_master(self.master)
        self.sim.connect(self.master.data_received)
        self.master.connection_made(self.sim.data_received)
        self.dispatcher = CommandDispatcher(self.topology, self.clock, {link.name: self.master}, self.points,
                                            self.bus)

    def run(self, handle, limit=120.0):
        return fired(self.clock, handle.outcome, limit, "the command")

    def truth_valve(self, cdt, channel):
        for lw in self.world.snapshot()["links"]:
            for c in lw["cdts"]:
                if c["address"] == cdt:
                    return next(mt["valve"] for mt in c["meters"] if mt["channel"] == channel)


def test_every_kind_against_the_simulator():
    rig = SimRig()
    record = rig.run(rig.dispatcher.submit(ValveRequest("bus/1/1/1", False, "alice", "api", "test")))
    assert record.state is S.SUCCEEDED, record.detail
    assert rig.truth_valve(1, 1) == "closed" and rig.points.meter("bus/1/1/1").valve is Valve.CLOSED
    record = rig.run(rig.dispatcher.submit(ReadNowRequest("bus/2", "alice", "console")))
    assert record.state is S.SUCCEEDED and rig.points.meter("bus/2/2/3").count is not None
    assert rig.points.cdt("bus", 2).online is True
    record = rig.run(rig.dispatcher.submit(SetBaseRequest("bus/2/1/1", 2000 + 10 * 3, "erin", "api", "new meter")))
    assert record.state is S.SUCCEEDED, record.detail
    record = rig.run(rig.dispatcher.submit(TimeSyncRequest("bus", 1, "erin", "api")))
    assert record.state is S.SUCCEEDED, record.detail


def test_jammed_valve_against_the_simulator_fails():
    from st2000r.simulation.faults import parse_action

    rig = SimRig()
    rig.world.apply(parse_action({"action": "valve_jam", "link": "bus", "cdt": 1, "channel": 2, "jammed": True}))
    record = rig.run(rig.dispatcher.submit(ValveRequest("bus/1/1/2", False, "alice", "api", "test")))
    assert record.state is S.FAILED
    assert "valve fault" in record.detail.lower(), record.detail


def test_a_read_back_from_a_demoted_cdt_brings_it_back_everywhere():
    """One reachability: a CDT driven silent until the poller demotes it, then answering a
    command's read-back only — poller, points and alarms agree it is back."""
    from st2000r.drivers.st2000r.poller import Poller
    from st2000r.simulation.faults import parse_action
    from st2000r.config.model import ReadingPlan

    rig = SimRig()
    alarms = AlarmManager(rig.topology, rig.clock, rig.bus)
    link = next(rig.topology.links())
    poller = Poller(link, rig.master, rig.clock, rig.points, (ReadingPlan("full", "full", (), None, None),),
                    demote_after=2)
    rig.world.apply(parse_action({"action": "no_answer", "link": "bus", "cdt": 1, "on": True}))
    for _ in range(3):
        d = poller.run_plan_now("full")
        rig.run(type("H", (), {"outcome": d})())
    assert poller.demoted() == {1} and rig.points.cdt("bus", 1).online is False
    assert "cdt:bus/1:offline" in {a.id for a in alarms.alarms()}
    assert rig.points.meter("bus/1/1/1").quality.value == "comm_fail"
    rig.world.apply(parse_action({"action": "no_answer", "link": "bus", "cdt": 1, "on": False}))
    rig.points.on_bulk("bus", 1, bulk(1, [1], statuses=[status(Valve.OPEN)]), T0)  # knows a valve is there
    record = rig.run(rig.dispatcher.submit(ValveRequest("bus/1/1/1", False, "alice", "api", "test")))
    assert record.state is S.SUCCEEDED
    assert poller.demoted() == frozenset() and rig.points.cdt("bus", 1).online is True
    assert rig.master.reachability.answering(1) is True
    d = poller.run_plan_now("full")
    result = rig.run(type("H", (), {"outcome": d})())
    assert 1 in result.tried and "cdt:bus/1:offline" not in {a.id for a in alarms.alarms() if a.active}
