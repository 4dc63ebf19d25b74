"""The command path: permissions, interlocks, send, read-back, outcomes, audit, busy.

Most tests drive a fake master whose ``transact`` returns Deferreds the test fires; two run
the real BusMaster against the simulator core (World + SimulatedBus) in memory.
"""

from __future__ import annotations

import json
from datetime import datetime

from twisted.internet import defer
from twisted.internet.task import Clock

from sup_support import T0, OPERATORS, Recorder, bulk, command_topology, status
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.master import LinkDown, Priority, TransactionTimeout
from st2000r.drivers.st2000r.messages import Valve
from st2000r.supervisor.commands import CommandDispatcher, ValveRequest
from st2000r.supervisor.events import CommandFinished, EventBus, MeterId
from st2000r.supervisor.points import PointDatabase


class FakeMaster:
    name = "bus"

    def __init__(self):
        self.calls: list[tuple[m.Message, Priority, defer.Deferred]] = []

    def transact(self, request, *, priority=Priority.SWEEP, retries=None, hops_latency_s=0.0):
        d = defer.Deferred()
        self.calls.append((request, priority, d))
        return d

    @property
    def last(self):
        return self.calls[-1]


class Rig:
    def __init__(self, tmp_path=None, **kw):
        self.clock = Clock()
        self.clock.advance(T0)
        self.bus = EventBus()
        self.rec = Recorder(self.bus)
        self.topology = command_topology(**{k: kw.pop(k) for k in ("max_closes", "protected") if k in kw})
        self.points = PointDatabase(self.topology, self.clock, self.bus)
        self.master = FakeMaster()
        self.audit = tmp_path / "state" / "audit.jsonl" if tmp_path is not None else None
        self.dispatcher = CommandDispatcher(self.topology, self.clock, {"bus": self.master}, self.points, self.bus,
                                            audit_path=self.audit, **kw)

    def submit(self, meter="bus/1/1/1", open_=False, who="alice", source="api", **kw):
        out = []
        self.dispatcher.submit(ValveRequest(meter, open_, who, source, kw.pop("reason", "unpaid bill"), **kw)
                               ).addCallback(out.append)
        return out

    def reply_valve(self, error_status=None):
        request, priority, d = self.master.last
        assert isinstance(request, m.ValveControl) and priority is Priority.COMMAND
        if error_status is not None:
            d.callback(m.ErrorReply(meter_type=request.meter_type, address=request.address, status=error_status))
        else:
            d.callback(m.ValveReply(meter_type=request.meter_type, address=request.address))

    def reply_read(self, valve):
        request, priority, d = self.master.last
        assert isinstance(request, m.BulkRead) and priority is Priority.COMMAND
        assert (request.first_channel, request.count) == (1, 1)
        d.callback(bulk(int(request.address), [42], first=request.first_channel, statuses=[status(valve)]))


# ---- checks


def test_permissions():
    rig = Rig()
    assert rig.submit(who="victor")[0].detail == ("permission denied: 'victor' is a viewer (operating valves needs "
                                                  "operator or above)")
    assert rig.submit(who="mallory")[0].detail == "permission denied: unknown user 'mallory'"
    assert rig.submit(who="")[0].detail == "no user given ('who' is empty)"
    assert rig.submit(source="telnet")[0].detail.startswith("unknown source 'telnet'")
    assert all(o.result == "rejected" for o in rig.dispatcher.recent())
    assert rig.master.calls == []
    assert rig.submit(who="erin", source="console") == []  # accepted: running
    assert rig.submit(meter="bus/1/1/2", who="scheduler", source="plan") == []
    assert rig.submit(meter="bus/1/1/3", who="modbus:unit7", source="modbus", peer="10.0.0.9") == []
    assert len(rig.master.calls) == 3


def test_modbus_needs_its_service_identity():
    rig = Rig(operators=tuple(o for o in OPERATORS if o.name != "modbus"))
    (outcome,) = rig.submit(who="scada", source="modbus")
    assert outcome.result == "rejected" and "service identity 'modbus'" in outcome.detail


def test_unknown_meter_and_malformed_id_are_rejected():
    rig = Rig()
    assert rig.submit(meter="bus/9/1/1")[0].detail == "no meter bus/9/1/1 in the configuration"
    assert rig.submit(meter="bus/1/x/1")[0].detail == "meter id 'bus/1/x/1': module 'x' is not a number"
    assert rig.submit(meter=MeterId("nolink", 1, 1, 1))[0].detail == "no meter nolink/1/1/1 in the configuration"


def test_protected_household_is_never_closed_but_may_be_opened():
    rig = Rig()
    (outcome,) = rig.submit(meter="bus/2/1/1", open_=False)  # household H2-1
    assert (outcome.result, outcome.detail) == ("rejected", "interlock: household 'H2-1' is protected (its meters "
                                                            "are never closed)")
    assert rig.submit(meter="bus/2/1/1", open_=True) == []
    assert isinstance(rig.master.last[0], m.ValveControl) and rig.master.last[0].open is True


def test_close_rate_limit_is_a_sliding_minute_per_link():
    rig = Rig(max_closes=2)
    assert rig.submit(meter="bus/1/1/1") == []
    rig.clock.advance(30)
    assert rig.submit(meter="bus/1/1/2") == []
    (outcome,) = rig.submit(meter="bus/1/1/3")
    assert outcome.detail == "interlock: 2 closes on link 'bus' in the last minute (limit 2 per minute)"
    assert rig.submit(meter="bus/1/1/3", open_=True) == []  # opening is never limited
    rig.clock.advance(30)  # the first close leaves the window
    assert rig.submit(meter="bus/1/2/1") == []
    assert Rig(max_closes=0).submit()[0].detail.startswith("interlock: closing valves is disabled")


def test_busy_while_a_command_for_the_meter_runs():
    rig = Rig()
    assert rig.submit() == []
    (outcome,) = rig.submit(open_=True)
    assert outcome.result == "rejected" and outcome.detail.startswith("busy: command ")
    assert rig.dispatcher.running() == (MeterId("bus", 1, 1, 1),)


def test_meter_without_valve_is_rejected():
    rig = Rig()
    rig.points.on_bulk("bus", 1, bulk(1, [1], statuses=[status(Valve.NONE)]), T0)
    assert rig.submit()[0].detail == "meter bus/1/1/1 reports no valve fitted"


# ---- send and confirm


def test_success_confirmed_by_read_back(tmp_path):
    rig = Rig(tmp_path)
    out = rig.submit(peer="192.0.2.7")
    request = rig.master.last[0]
    assert (request.meter_type, request.address, request.open) == (0x10, "00000001001001", False)
    rig.reply_valve()
    rig.reply_read(Valve.OPEN)  # the motor is still running
    assert out == [] and len(rig.master.calls) == 2
    rig.clock.advance(3)
    rig.reply_read(Valve.CLOSED)
    (outcome,) = out
    assert (outcome.result, outcome.detail) == ("succeeded", "valve closed (confirmed by read-back 2)")
    assert rig.points.meter("bus/1/1/1").valve is Valve.CLOSED  # the read-back updated the point
    assert rig.rec.of(CommandFinished)[0].record == outcome.record
    lines = [json.loads(line) for line in rig.audit.read_text(encoding="utf-8").splitlines()]
    assert [line["result"] for line in lines] == ["pending", "succeeded"]
    assert lines[0]["id"] == lines[1]["id"] == outcome.record.id
    assert {k: lines[1][k] for k in ("who", "source", "peer", "reason", "meter", "action")} == {
        "who": "alice", "source": "api", "peer": "192.0.2.7", "reason": "unpaid bill", "meter": "bus/1/1/1",
        "action": "close"}
    assert datetime.fromisoformat(lines[1]["finished_at"]) > datetime.fromisoformat(lines[1]["requested_at"])
    assert rig.dispatcher.running() == () and rig.clock.getDelayedCalls() == []


def test_rejected_submissions_are_audited_too(tmp_path):
    rig = Rig(tmp_path)
    rig.submit(who="victor")
    (line,) = [json.loads(x) for x in rig.audit.read_text(encoding="utf-8").splitlines()]
    assert (line["result"], line["who"], line["finished_at"] is not None) == ("rejected", "victor", True)


def test_fault_on_read_back_fails():
    rig = Rig()
    out = rig.submit()
    rig.reply_valve()
    rig.reply_read(Valve.FAULT)
    assert (out[0].result, out[0].detail) == ("failed", "valve reports FAULT (jammed motor?)")


def test_error_reply_to_the_command_fails_with_its_status():
    rig = Rig()
    out = rig.submit()
    rig.reply_valve(error_status=m.ErrorReply.VALVE_FAULT)
    assert (out[0].result, out[0].detail) == ("failed", "valve command refused: error status 05h (valve fault)")


def test_no_confirmation_before_the_deadline_times_out():
    rig = Rig(timeout_s=10, confirm_interval_s=3)
    out = rig.submit()
    rig.reply_valve()
    for _ in range(3):
        rig.reply_read(Valve.OPEN)
        rig.clock.advance(3)
    rig.reply_read(Valve.OPEN)
    assert (out[0].result, out[0].detail) == ("timed_out", "not confirmed within 10 s: valve still open")
    assert rig.clock.getDelayedCalls() == []


def test_transaction_timeout_and_link_down():
    rig = Rig()
    out = rig.submit()
    rig.master.last[2].errback(TransactionTimeout("no reply after 3 attempts", rig.master.last[0]))
    assert out[0].result == "timed_out" and "no reply after 3 attempts" in out[0].detail
    out = rig.submit(open_=True)
    rig.master.last[2].errback(LinkDown("link bus: not connected", rig.master.last[0]))
    assert (out[0].result, out[0].detail) == ("failed", "link down, valve command not delivered: link bus: not "
                                                        "connected")


def test_read_back_timeouts_are_retried_until_the_deadline():
    rig = Rig(timeout_s=20, confirm_interval_s=5)
    out = rig.submit()
    rig.reply_valve()
    request, _, d = rig.master.last
    d.errback(TransactionTimeout("no reply", request))
    assert out == []
    rig.clock.advance(5)
    rig.reply_read(Valve.CLOSED)
    assert out[0].result == "succeeded"


def test_audit_write_error_is_counted_not_raised(tmp_path):
    (tmp_path / "state").write_text("a file where the folder should be")
    rig = Rig(tmp_path)
    (outcome,) = rig.submit(who="victor")
    assert outcome.result == "rejected" and rig.dispatcher.audit_errors == 1
    assert rig.dispatcher.recent()[-1] == outcome.record


def test_shutdown_finishes_running_commands():
    rig = Rig()
    out = rig.submit()
    rig.reply_valve()
    rig.reply_read(Valve.OPEN)
    rig.dispatcher.shutdown()
    assert out[0].result == "failed" and rig.clock.getDelayedCalls() == []


# ---- against the simulator core


class SimRig:
    """Real BusMaster <-> real SimulatedBus/World, one Clock, in memory."""

    def __init__(self, tmp_path):
        from st2000r.drivers.st2000r.master import BusMaster
        from st2000r.simulation.bus import SimulatedBus
        from st2000r.simulation.world import World

        self.clock = Clock()
        self.clock.advance(T0)
        self.bus = EventBus()
        self.topology = command_topology()
        self.points = PointDatabase(self.topology, self.clock, self.bus)
        link = next(self.topology.links())
        self.world = World(self.topology, self.clock, seed=5, start=datetime(2026, 5, 28, 12, 0))
        self.sim = SimulatedBus(self.world, link.name, self.clock, physical_timing=True)
        self.master = BusMaster(link, self.clock)
        self.sim.connect(self.master.data_received)
        self.master.connection_made(self.sim.data_received)
        self.dispatcher = CommandDispatcher(self.topology, self.clock, {link.name: self.master}, self.points,
                                            self.bus, audit_path=tmp_path / "audit.jsonl")

    def run(self, d, limit=120.0):
        out = []
        d.addBoth(out.append)
        end = self.clock.seconds() + limit
        while not out and self.clock.seconds() < end:
            calls = [c.getTime() for c in self.clock.getDelayedCalls()]
            if not calls:
                break
            self.clock.advance(max(0.0, min(calls) - self.clock.seconds()))
        assert out, "the command did not finish"
        return out[0]

    def truth_valve(self, cdt, channel):
        for lw in self.world.snapshot()["links"]:
            for c in lw["cdts"]:
                if c["address"] == cdt:
                    return next(mt["valve"] for mt in c["meters"] if mt["channel"] == channel)


def test_close_against_the_simulator_succeeds(tmp_path):
    rig = SimRig(tmp_path)
    d = rig.dispatcher.submit(ValveRequest("bus/1/1/1", False, "alice", "api", "test"))
    outcome = rig.run(d)
    assert outcome.result == "succeeded", outcome.detail
    assert rig.truth_valve(1, 1) == "closed"
    assert rig.points.meter("bus/1/1/1").valve is Valve.CLOSED


def test_jammed_valve_against_the_simulator_fails(tmp_path):
    from st2000r.simulation.faults import parse_action

    rig = SimRig(tmp_path)
    rig.world.apply(parse_action({"action": "valve_jam", "link": "bus", "cdt": 1, "channel": 2, "jammed": True}))
    outcome = rig.run(rig.dispatcher.submit(ValveRequest("bus/1/1/2", False, "alice", "api", "test")))
    assert outcome.result == "failed"
    assert "valve fault" in outcome.detail.lower(), outcome.detail
