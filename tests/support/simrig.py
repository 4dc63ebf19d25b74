"""The supervisor's field-side parts against the simulator core, in memory on one Clock:
a real BusMaster and Poller, the point database and the bus, a SimulatedBus with physical
timing.  Deterministic: two rigs built alike run alike to the clock tick."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twisted.internet.task import Clock

from support.builders import T0, make_cdt, make_link, make_topology
from support.clock import run_until
from st2000r.config.model import ReadingPlan
from st2000r.drivers.st2000r.master import BusMaster
from st2000r.drivers.st2000r.poller import Poller
from st2000r.supervisor.eventbus import EventBus
from st2000r.supervisor.points import PointDatabase


@dataclass
class SimParts:
    clock: Clock
    bus: EventBus
    points: PointDatabase
    master: BusMaster
    poller: Poller
    world: Any
    sim: Any

    def drop(self, reason: str = "cable pulled") -> None:
        """The link's byte pipe goes away (the simulator stays)."""
        self.master.connection_lost(reason)

    def reconnect(self) -> None:
        self.master.connection_made(self.sim.data_received)

    def round_time(self, plan: str = "full") -> float:
        """Run one round of ``plan``; the clock seconds it took."""
        started = self.clock.seconds()
        result = run_until(self.clock, self.poller.run_plan_now(plan))
        assert result.aborted is None and result.unreachable == ()
        return self.clock.seconds() - started


def sim_supervisor_parts(cdts: int = 6, seed: int = 3) -> SimParts:
    from st2000r.simulation.bus import SimulatedBus
    from st2000r.simulation.world import World

    clock = Clock()
    clock.advance(T0)
    topology = make_topology(make_link(cdts=tuple(make_cdt(a, modules=3) for a in range(1, cdts + 1))))
    link = next(topology.links())
    bus = EventBus(clock)
    points = PointDatabase(topology, clock, bus)
    world = World(topology, clock, seed=seed, start=datetime(2026, 5, 28, 12, 0))
    sim = SimulatedBus(world, link.name, clock, physical_timing=True)
    master = BusMaster(link, clock)
    points.attach_master(master)
    sim.connect(master.data_received)
    master.connection_made(sim.data_received)
    poller = Poller(link, master, clock, points, (ReadingPlan("full", "full", (), None, None),))
    return SimParts(clock, bus, points, master, poller, world, sim)
