"""Master + poller over a REAL pseudo-terminal pair (Twisted SerialPort on the slave side,
the simulator's PtyEndpoint on the master side), physical timing in real time."""

from __future__ import annotations

from datetime import datetime

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.serialport import SerialPort
from twisted.internet.task import Clock

from engine_support import RecordingSink, make_cdt, make_link, make_topology, plan
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.links import LinkProtocol
from st2000r.drivers.st2000r.master import BusMaster, Priority
from st2000r.drivers.st2000r.poller import Poller
from st2000r.simulation.bus import SimulatedBus
from st2000r.simulation.endpoints import PtyEndpoint
from st2000r.simulation.world import World


@pytest_twisted.ensureDeferred
async def test_sweep_and_command_over_a_real_pty():
    link = make_link([make_cdt(1, modules=range(1, 33)), make_cdt(2, modules=(1, 2))], baud=38400)
    world_clock = Clock()
    world = World(make_topology(link), world_clock, seed=3, start=datetime(2026, 4, 1))
    world_clock.advance(20 * 86400)
    bus = SimulatedBus(world, link.name, reactor, physical_timing=True)
    endpoint = PtyEndpoint(link.name, bus, reactor)
    endpoint.startService()
    master = BusMaster(link, reactor)
    closed = defer.Deferred()

    class Proto(LinkProtocol):
        def connectionLost(self, reason=None):
            super().connectionLost(reason)
            closed.callback(None)

    port = SerialPort(Proto(master), endpoint.path, reactor, baudrate=38400)
    try:
        sink = RecordingSink.on(master)
        poller = Poller(link, master, reactor, sink, (plan("full"),))
        guard = reactor.callLater(20, lambda: d.cancel())
        d = poller.run_plan_now("full")
        serial = link.cdt(2).module(2).channels[0].meter.serial
        valve = master.transact(m.ValveControl(meter_type=0x10, address=serial, open=False), priority=Priority.COMMAND)
        result, reply = await defer.gatherResults([d, valve])
        guard.cancel()
        assert result.unreachable == () and isinstance(reply, m.ValveReply)
        truth = {}
        for lw in world.snapshot()["links"]:
            for c in lw["cdts"]:
                for meter in c["meters"]:
                    truth[(c["address"], meter["channel"])] = meter["count"]
        assert sink.counts() == truth
        assert master.stats.replies == 4 and master.stats.checksum_errors == 0
        assert master.stats.rtt_p99_s is not None and master.stats.rtt_p99_s < 1.0
    finally:
        port.loseConnection()
        await closed
        assert not master.connected
        endpoint.stopService()
