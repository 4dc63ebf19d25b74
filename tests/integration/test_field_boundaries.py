"""Boundaries of the field side, end to end in memory: the supervisor (``SupervisorService``)
against the simulator core (World + SimulatedBus) with physical bus timing, on one Clock.

- a valve command submitted through the command path while a whole full sweep is queued
  on the link's real ``BusMaster`` is the next frame on the wire: it overtakes every queued
  sweep transaction (only the one already in flight finishes first);
- a CDT made unreachable with the simulator's fault actions turns its meters ``comm_fail``
  in the point database, and only its meters; answering again, they are good again.

APIs used: ``SupervisorService(topology, clock, link_factory=..., audit_path=False,
state=False, poller_options={"window": n})``, its ``pollers[link].run_plan_now(plan)``,
``commands.submit(ValveRequest(meter, open, who, source, reason))`` (a handle whose
``outcome`` Deferred fires with the final record: ``.state``, ``CommandState``),
``points.meter(id).quality`` with ``Quality``; ``BusMaster.connection_made(write)``,
``.data_received``, ``.connection_lost`` and ``.queued``; the config loader; the simulator's
``World``, ``SimulatedBus`` and ``faults.parse_action``.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from twisted.application.service import Service
from twisted.internet.task import Clock

from support.configs import FLAT, site
from support.clock import fired as run_until  # a failure of the Deferred is returned, not raised
from st2000r.config.loader import loads
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import FrameDecoder
from st2000r.simulation.bus import SimulatedBus
from st2000r.simulation.faults import parse_action
from st2000r.simulation.world import World
from st2000r.supervisor.commands import ValveRequest
from st2000r.supervisor.events import CommandState, Quality
from st2000r.supervisor.service import SupervisorService

T0 = 1_780_000_000.0  # 2026-05-28 UTC; the daily plan below is never due within a test

TOPOLOGY = FLAT + site("Boundary Court", "1 Test Road") + """
[[sites.links]]
name = "bus"
kind = "serial"
device = "/dev/ttyS0"
baud = 9600

[[sites.links.cdt_ranges]]
addresses = "1-6"
modules = "1-20"
template = "flat"
serial = "{cdt:03}{module:02}{channel}"
household = "H{cdt}-{module}"

[[plans]]
name = "full"
kind = "full"
at = ["02:30"]

[[operators]]
name = "alice"
role = "operator"

[supervisor]
state_dir = "STATE_DIR"
"""


class SimLink(Service):
    """The link service: the master's byte pipe to the simulated bus, every frame the
    master writes recorded in order."""

    def __init__(self, sim_bus: SimulatedBus, master, written: list[bytes]) -> None:
        self.sim_bus = sim_bus
        self.master = master
        self.written = written

    def _write(self, data: bytes) -> None:
        self.written.append(data)
        self.sim_bus.data_received(data)

    def startService(self) -> None:
        super().startService()
        self.sim_bus.connect(self.master.data_received)
        self.master.connection_made(self._write)

    def stopService(self):
        self.master.connection_lost("stopped")
        self.sim_bus.disconnect()
        return super().stopService()


@pytest.fixture
def field(tmp_path):
    topology = loads(TOPOLOGY.replace("STATE_DIR", str(tmp_path)), "<test>")
    clock = Clock()
    clock.advance(T0)
    world = World(topology, clock, seed=5, start=datetime(2026, 5, 28, 12, 0))
    written: list[bytes] = []

    def factory(link, master, reactor, gprs_server=None):
        return SimLink(SimulatedBus(world, link.name, clock, physical_timing=True), master, written)

    # window: the poller hands the master a whole round at once, so a full sweep is queued
    service = SupervisorService(topology, clock, link_factory=factory, audit_path=False, state=False,
                                poller_options={"window": 1000})  # fmt: skip
    service.startService()
    run_until(clock, service.pollers["bus"].run_plan_now("full"))  # valves and values known
    yield service, clock, world, written
    run_until(clock, service.stopService())


def requests(frames: list[bytes]) -> list[m.Message]:
    decoder = FrameDecoder()
    return [m.parse(f) for data in frames for f in decoder.frames(data)]


def test_a_valve_command_goes_ahead_of_every_queued_sweep_transaction(field):
    service, clock, world, written = field
    meter = "bus/6/20/1"  # the last CDT's last module: its sweep reads come last
    serial = service.topology.link("bus").cdt(6).module(20).channels[0].meter.serial
    written.clear()
    sweep = service.pollers["bus"].run_plan_now("full")
    clock.advance(0)  # whatever the master sends at once goes on the wire now
    in_flight = len(written)
    queued = service.masters["bus"].queued
    assert in_flight <= 1 and queued >= 10  # 6 CDTs x 60 channels: 12 bulk reads queued

    handle = service.commands.submit(ValveRequest(meter, False, "alice", "api", "boundary test"))
    record = run_until(clock, handle.outcome)
    assert record.state is CommandState.SUCCEEDED, record.detail
    run_until(clock, sweep)

    sent = requests(written)
    valve = [i for i, r in enumerate(sent) if isinstance(r, m.ValveControl)]
    assert valve == [in_flight], "the valve command waited behind queued sweep requests"
    assert sent[in_flight].address == serial and sent[in_flight].open is False
    sweep_reads = [r for r in sent if isinstance(r, m.BulkRead) and r.count > 1]
    assert len(sweep_reads) == in_flight + queued  # the whole sweep still ran, after it
    assert all(isinstance(r, m.BulkRead) for r in sent[:in_flight])


def test_an_unreachable_cdt_turns_its_meters_comm_fail_end_to_end(field):
    service, clock, world, _ = field
    ids = {cdt: [f"bus/{cdt}/{mod}/{ch}" for mod in (1, 20) for ch in (1, 2, 3)] for cdt in (3, 4)}
    assert all(service.points.meter(i).quality is Quality.GOOD for cdt in ids for i in ids[cdt])

    world.apply(parse_action({"action": "no_answer", "link": "bus", "cdt": 3, "on": True}))
    run_until(clock, service.pollers["bus"].run_plan_now("full"))
    assert {service.points.meter(i).quality for i in ids[3]} == {Quality.COMM_FAIL}
    assert {service.points.meter(i).quality for i in ids[4]} == {Quality.GOOD}

    world.apply(parse_action({"action": "no_answer", "link": "bus", "cdt": 3, "on": False}))
    run_until(clock, service.pollers["bus"].run_plan_now("full"))
    assert {service.points.meter(i).quality for i in ids[3]} == {Quality.GOOD}
