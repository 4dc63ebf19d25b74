"""GPRS end to end: the supervisor (SupervisorService with ``[supervisor] gprs_listen``, its
GprsServer, 100 BusMasters and Pollers) and the simulator (SimulatorService with 100
DtuClients dialling in over real TCP on 127.0.0.1).  The DTUs register and answer the
server's challenge, are polled, drop (link_drop), reconnect and are polled again; a
duplicate registration without the secret is refused and takes nothing over."""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from e2e_support import Events, for_supervisor, load_text, within
from st2000r.drivers.st2000r.registration import DtuFormat
from st2000r.simulation.faults import parse_action
from st2000r.simulation.service import SimulatorOptions, SimulatorService
from st2000r.supervisor.events import LinkChanged
from st2000r.supervisor.service import SupervisorService

N = 100
FORMATS = ("plain", "usr", "ddp")


def gprs_text(n: int) -> str:
    out = ['[templates.flat]\nchannels = [ { channel = 1, kind = "water", pulse_constant = 10 },'
           ' { channel = 2, kind = "electricity", pulse_constant = 1 } ]\n'
           '[[sites]]\nname = "Rural villages"\naddress = "county road"\n']
    for i in range(n):
        out.append(
            f'[[sites.links]]\nname = "v{i:03d}"\nkind = "gprs"\ndtu_id = "1390000{i:04d}"\n'
            f'registration = "{FORMATS[i % 3]}"\nheartbeat_s = 60\nbaud = 9600\nsecret = "{secret(i)}"\n'
            f'[[sites.links.cdt_ranges]]\naddresses = "1-2"\nmodules = "1-4"\ntemplate = "flat"\n'
            f'serial = "9{i:03d}{{cdt:02}}{{module:02}}{{channel}}"\n'
        )
    return "\n".join(out)


def secret(i: int) -> str:
    return f"e2e-secret-of-dtu-{i:04d}"


class Impostor(Protocol):
    """A second connection registering with an existing DTU's identity."""

    def __init__(self, packet: bytes) -> None:
        self.packet = packet
        self.received = bytearray()
        self.closed: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.packet)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_100_dtus_prove_themselves_are_polled_drop_reconnect_are_polled_again_and_an_impostor_takes_nothing(tmp_path):
    topology = load_text(gprs_text(N))
    names = [link.name for link in topology.links()]
    service = SupervisorService(
        # 100 links and their simulator share one process here: under a loaded machine the event
        # loop's delay exceeds a 9600-baud timeout several times in a row before the adaptive
        # allowance has learnt it; the test is about identity and reconnection, not timeouts
        for_supervisor(topology, str(tmp_path), gprs_listen="tcp:0:interface=127.0.0.1:backlog=512", retries=6),
        reactor)
    state = {name: [] for name in names}  # connected flags in order, per link (before Events sees them)
    service.bus.subscribe(lambda e: state[e.link].append(e.connected) if isinstance(e, LinkChanged) else None)
    events = Events(service.bus)
    service.startService()
    port = (await within(service.gprs_server.when_listening())).getHost().port
    sim = SimulatorService(topology, SimulatorOptions(supervisor=("127.0.0.1", port), control_port=None), reactor)
    # each simulated DTU proves itself with its link's secret, as a configured DTU does
    assert all(sim.dtus[n].secret == secret(i).encode() for i, n in enumerate(names))

    def all_connected(times: int) -> defer.Deferred:
        return events.until(lambda: all(sum(state[n]) >= times and state[n][-1] for n in names))

    async def poll_all() -> float:
        t0 = time.perf_counter()
        results = await within(defer.gatherResults([service.pollers[n].run_plan_now("status") for n in names]), 60)
        assert all(r.unreachable == () and r.aborted is None for r in results), [r for r in results if r.unreachable or r.aborted][:3]
        assert all(c.online for c in service.points.cdts()), [(c.link, c.address, c.online) for c in service.points.cdts() if not c.online][:5]
        return time.perf_counter() - t0

    sim.startService()
    try:
        t0 = time.perf_counter()
        await all_connected(1)
        registered = time.perf_counter() - t0
        first = await poll_all()
        assert service.gprs_server.stats.registrations == N
        # every DTU drops (the simulator's link_drop) and dials in again
        for name in names:
            sim.world.apply(parse_action({"action": "link_drop", "link": name, "seconds": 0.5}))
        t1 = time.perf_counter()
        await all_connected(2)
        back = time.perf_counter() - t1
        again = await poll_all()
        assert service.gprs_server.stats.registrations == 2 * N
        assert all(state[n] == [True, False, True] for n in names)
        # a duplicate registration of v001 without the secret gets a challenge it cannot
        # answer: refused, counted, and the simulated DTU keeps its session
        victim = topology.link("v001")
        fmt = DtuFormat(victim.endpoint.registration, victim.endpoint.dtu_id)
        impostor = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                                         Impostor(fmt.registration_packet("127.0.0.1", 40001) + b"\x68forged"))
        await within(impostor.closed)
        stats = service.gprs_server.stats
        assert (stats.takeovers, stats.auth_failed, stats.auth_failed_by_dtu) == (0, 1, {victim.endpoint.dtu_id: 1})
        assert state["v001"] == [True, False, True]
        assert len(impostor.received) <= 21 and bytes(impostor.received)[:2] in (b"", b"\x7b\x83")  # no bus byte
        result = await within(service.pollers["v001"].run_plan_now("full"), 30)
        assert result.unreachable == ()
    finally:
        await within(sim.stopService())
        await within(service.stopService())
    print(f"\n{N} DTUs: registered in {registered:.2f} s, polled in {first:.2f} s; dropped, back in {back:.2f} s, "
          f"polled again in {again:.2f} s; takeovers {service.gprs_server.stats.takeovers}")
