"""The assembly (SupervisorService) against the simulator core in memory, and ``st2000r run``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime

import pytest
from twisted.application.service import Service
from twisted.internet.task import Clock

from datetime import time

from support.builders import OPERATORS, T0, make_cdt, make_link, make_topology
from support.truth import readings as truth
from support.clock import fired as run_until  # a failure of the Deferred is returned, not raised
from st2000r.config import example_path
from st2000r.config.model import ReadingPlan, Repeater, SupervisorSettings
from st2000r.supervisor.commands import ValveRequest
from st2000r.supervisor.events import Quality, RoundDone
from st2000r.supervisor.run import main
from st2000r.supervisor.service import SupervisorError, SupervisorService


class SimLinkService(Service):
    """A link service that wires the master to the simulator's bus in memory."""

    def __init__(self, sim_bus, master):
        self.sim_bus = sim_bus
        self.master = master

    def startService(self):
        super().startService()
        self.sim_bus.connect(self.master.data_received)
        self.master.connection_made(self.sim_bus.data_received)

    def stopService(self):
        self.master.connection_lost("stopped")
        self.sim_bus.disconnect()
        return super().stopService()


@pytest.fixture
def rig(tmp_path):
    from st2000r.simulation.bus import SimulatedBus
    from st2000r.simulation.world import World

    reps = (Repeater("R1", None, 5), Repeater("R2", "R1", 5))
    cdts = (make_cdt(1), make_cdt(2), make_cdt(3, repeater="R1"), make_cdt(4, repeater="R2"),
            make_cdt(5, repeater="R2"))
    plans = (ReadingPlan("full", "full", (time(2, 0),), None, None),
             ReadingPlan("status", "status", (time(3, 0),), None, None))
    topology = make_topology(make_link(cdts=cdts, repeaters=reps), plans=plans, operators=OPERATORS,
                             settings=SupervisorSettings(gprs_listen=None, retries=2, log_format="text", state_dir=str(tmp_path)))
    clock = Clock()
    clock.advance(T0)
    world = World(topology, clock, seed=2, start=datetime(2026, 5, 28, 12, 0))
    sims = {}

    def factory(link, master, reactor, gprs_server=None):
        sims[link.name] = SimulatedBus(world, link.name, clock, physical_timing=True)
        return SimLinkService(sims[link.name], master)

    service = SupervisorService(topology, clock, link_factory=factory, audit_path=False)
    service.startService()
    yield service, clock, world
    run_until(clock, service.stopService())
    assert clock.getDelayedCalls() == []


def test_a_full_round_makes_every_value_equal_the_ground_truth(rig):
    service, clock, world = rig
    run_until(clock, service.pollers["bus"].run_plan_now("full"))
    points = {str(p.id): p for p in service.points.meters()}
    expected = truth(world)
    assert {k: p.value for k, p in points.items()} == expected
    assert all(p.quality is Quality.GOOD for p in points.values())
    assert service.points.links()[0].connected and service.points.links()[0].stats["replies"] > 0


def test_a_started_supervisor_reads_every_meter_at_once_not_at_the_next_plan_time(rig):
    """The plans of the rig run at 02:00 and 03:00; the service started at 20:26 local time.
    Without read on connect every meter would wait ~6 h; it is read within the first round."""
    from support.clock import advance

    service, clock, world = rig
    done = []
    service.bus.subscribe(done.append, RoundDone)
    advance(clock, 120)
    assert [(e.plan, e.kind) for e in done] == [("full", "full")]
    assert all(p.quality is Quality.GOOD for p in service.points.meters())


def test_a_failed_repeater_yields_one_alarm_and_a_command_succeeds(rig):
    from st2000r.simulation.faults import parse_action

    service, clock, world = rig
    world.apply(parse_action({"action": "repeater", "link": "bus", "name": "R1", "failed": True}))
    run_until(clock, service.pollers["bus"].run_plan_now("status"))
    assert [a.id for a in service.alarms.alarms()] == ["repeater:bus/R1:suspected"]
    handle = service.commands.submit(ValveRequest("bus/1/1/1", False, "alice", "api", "test"))
    record = run_until(clock, handle.outcome)
    assert record.state.value == "succeeded", record.detail
    assert [r.state.value for r in service.audit.records] == ["pending", "sent", "succeeded"]
    assert service.commands.last_for("bus/1/1/1") == record


def test_gprs_link_without_a_server_is_a_clear_error():
    from st2000r.config.model import GprsEndpoint, Link

    link = make_link()
    gprs = Link(name="dtu", kind="gprs", endpoint=GprsEndpoint("139", "plain", 60), line=link.line, turnaround_ms=20,
                di_order="901F", repeaters=(), cdts=(make_cdt(1),))
    with pytest.raises(SupervisorError, match=r"GPRS link\(s\) dtu need a GPRS server: set \[supervisor\] gprs_listen"):
        SupervisorService(make_topology(gprs), Clock())


# ---- st2000r run


def test_run_with_a_bad_config_exits_2_with_every_issue(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[[sites]]\nname = ""\naddress = "x"\n[supervisor]\nlog_format = "xml"\n', encoding="utf-8")
    assert main([str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: sites[0].name: must not be empty",
        f"{path}: supervisor.log_format: value 'xml' is not one of 'text', 'json'",
    ]
    assert main([str(tmp_path / "missing.toml")]) == 2
    assert "cannot read file" in capsys.readouterr().err
    assert main([]) == 2
    assert "CONFIG" in capsys.readouterr().err


def test_run_logs_json_and_stops_cleanly_on_sigterm(tmp_path):
    """A real process on a real (unopenable) serial device: it starts, logs JSON lines,
    keeps running while the port cannot be opened, and exits 0 on SIGTERM."""
    config = tmp_path / "site.toml"
    text = example_path("small.toml").read_text(encoding="utf-8").replace("/dev/ttyUSB0",
                                                                           str(tmp_path / "no-such-tty"))
    config.write_text(text + f'\n[supervisor]\nlog_format = "json"\nstate_dir = "{tmp_path}"\n', encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "st2000r.supervisor.run", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(json.loads(line))
            if "supervising" in lines[-1].get("log_format", ""):
                break
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert any("supervising" in entry.get("log_format", "") for entry in lines)
    assert json.loads(rest.splitlines()[-1])["log_format"] == "stopped"


def test_gprs_links_share_one_server_on_gprs_listen(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    from st2000r.config.model import GprsEndpoint, Link

    line = make_link().line
    links = [Link(name=f"dtu{i}", kind="gprs", endpoint=GprsEndpoint(f"1390000000{i}", "plain", 60), line=line,
                  turnaround_ms=20, di_order="901F", repeaters=(), cdts=(make_cdt(1),)) for i in (1, 2)]
    reactor = MemoryReactorClock()
    reactor.advance(T0)
    topology = make_topology(*links, settings=SupervisorSettings(gprs_listen="tcp:9000", retries=2, log_format="text", state_dir=str(tmp_path)))
    service = SupervisorService(topology, reactor, audit_path=False)
    service.startService()
    assert [port for port, *_ in reactor.tcpServers] == [9000]
    assert set(service.gprs_server.sessions()) == set()  # no DTU registered yet
    assert {lk.name: lk.connected for lk in service.points.links()} == {"dtu1": False, "dtu2": False}
    service.stopService()
