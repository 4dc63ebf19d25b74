"""Serial and TCP links: reopen/reconnect back-off on a Clock, then the real thing -- the
bus master reading the simulator through a pseudo-terminal that disappears and comes back,
and through the simulator's serial-device server across a link drop."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.links import SerialLinkService, TcpLinkService, link_service
from st2000r.drivers.st2000r.master import BusMaster, Priority

TIMEOUT = 10.0


@pytest.fixture
def log_lines():
    lines: list[str] = []

    def observer(event):
        fmt = event.get("log_format")
        if fmt and event.get("log_namespace", "").startswith("st2000r.drivers.st2000r.links"):
            lines.append(fmt.format(**{k: v for k, v in event.items() if isinstance(k, str)}))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


class FakePort:
    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.transport = StringTransport()
        protocol.makeConnection(self.transport)
        self.closed = False

    def loseConnection(self) -> None:
        self.closed = True


def test_serial_reopens_with_backoff_and_logs_once_per_transition(kit, master, log_lines):
    link = kit.topology(['name = "s"\nkind = "serial"\ndevice = "/dev/ttyNOPE"']).link("s")
    clock = Clock()
    attempts: list[float] = []
    ports: list[FakePort] = []
    fail = [3]

    def open_port(protocol):
        attempts.append(clock.seconds())
        if fail[0]:
            fail[0] -= 1
            raise OSError(2, "No such file or directory: '/dev/ttyNOPE'")
        ports.append(FakePort(protocol))
        return ports[-1]

    svc = SerialLinkService(link, master, reactor, clock=clock, retry=lambda n: 2.0**n, open_port=open_port)
    seen = []
    svc.add_observer(lambda event, details: seen.append(event))
    svc.startService()
    clock.pump([1.0] * 20)
    assert attempts == [0.0, 2.0, 6.0, 14.0]  # 2, 4, 8 s back-off
    assert master.events == [("made",)] and svc.connected
    assert sum("cannot open" in line for line in log_lines) == 1
    assert sum("open again after 3 failed attempts" in line for line in log_lines) == 1
    master.write(b"\x68")
    assert ports[0].transport.value() == b"\x68"
    ports[0].protocol.dataReceived(b"\x16")
    assert master.received == bytearray(b"\x16")
    # the device disappears: master told, reopened after back-off
    ports[0].protocol.connectionLost(None)
    assert master.events[-1][0] == "lost" and not svc.connected
    clock.advance(2.0)
    assert len(ports) == 2 and master.count("made") == 2
    assert seen == ["connected", "disconnected", "connected"]
    svc.stopService()
    assert ports[1].closed and clock.getDelayedCalls() == []


def test_serial_stop_while_failing_cancels_the_retry(kit, master):
    link = kit.topology(['name = "s"\nkind = "serial"\ndevice = "/dev/ttyNOPE"']).link("s")
    clock = Clock()

    def open_port(protocol):
        raise OSError("nope")

    svc = SerialLinkService(link, master, reactor, clock=clock, retry=lambda n: 1.0, open_port=open_port)
    svc.startService()
    assert len(clock.getDelayedCalls()) == 1
    svc.stopService()
    assert clock.getDelayedCalls() == []


class FlakyEndpoint:
    """An IStreamClientEndpoint failing ``fail`` times, then connecting to StringTransports."""

    def __init__(self, clock: Clock, fail: int) -> None:
        self.clock = clock
        self.fail = fail
        self.attempts: list[float] = []
        self.protocols: list[Protocol] = []

    def connect(self, factory):
        self.attempts.append(self.clock.seconds())
        if self.fail:
            self.fail -= 1
            return defer.fail(ConnectionRefusedError("refused"))
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.protocols.append(proto)
        return defer.succeed(proto)


def test_tcp_reconnects_with_backoff(kit, master):
    link = kit.topology(['name = "t"\nkind = "tcp"\nhost = "127.0.0.1"\nport = 4001']).link("t")
    clock = Clock()
    ep = FlakyEndpoint(clock, fail=2)
    svc = TcpLinkService(link, master, reactor, clock=clock, retry=lambda n: 3.0 * n, endpoint=ep)
    svc.startService()
    clock.pump([0.5] * 40)
    assert ep.attempts == [0.0, 3.0, 9.0]
    assert master.events == [("made",)] and svc.connected
    ep.protocols[0].transport.loseConnection()
    ep.protocols[0].connectionLost(None)
    assert master.events[-1][0] == "lost" and not svc.connected
    clock.pump([0.5] * 20)
    assert master.count("made") == 2
    svc.stopService()


def test_link_service_picks_the_kind(kit, master):
    topo = kit.topology([
        'name = "s"\nkind = "serial"\ndevice = "/dev/ttyS9"',
        'name = "t"\nkind = "tcp"\nhost = "h"\nport = 1',
        'name = "g"\nkind = "gsm"\nmodem = "/dev/ttyS8"\nnumber = "+861380000"',
    ])  # fmt: skip
    from st2000r.drivers.st2000r.gsm import GsmLinkService

    assert isinstance(link_service(topo.link("s"), master, reactor), SerialLinkService)
    assert isinstance(link_service(topo.link("t"), master, reactor), TcpLinkService)
    assert isinstance(link_service(topo.link("g"), master, reactor), GsmLinkService)
    with pytest.raises(ValueError, match="serial endpoint"):
        SerialLinkService(topo.link("t"), master, reactor)


# --------------------------------------------------------------------------- against the simulator


def _sim(kit, body: str):
    from st2000r.simulation.bus import SimulatedBus
    from st2000r.simulation.world import World

    topo = kit.topology([body])
    link = next(topo.links())
    world = World(topo, reactor, seed=2)
    bus = SimulatedBus(world, link.name, reactor, physical_timing=False)
    return topo, link, world, bus


async def _status(master: BusMaster, link) -> m.Message:
    req = m.ReadCdtStatus(address=link.cdt(7).bcd_address)
    return await master.transact(req, priority=Priority.STATUS).addTimeout(TIMEOUT, reactor)


@pytest_twisted.ensureDeferred
async def test_serial_link_reads_the_simulator_over_a_pty_that_disappears_and_returns(kit, tmp_path):
    from st2000r.simulation.endpoints import PtyEndpoint

    device = tmp_path / "bus"
    topo, _, world, bus = _sim(kit, f'name = "bus"\nkind = "serial"\ndevice = "{device}"')
    link = topo.link("bus")
    pty = PtyEndpoint("bus", bus, reactor, link_dir=str(tmp_path))
    pty.startService()
    master = BusMaster(link, reactor, retries=2)
    svc = link_service(link, master, reactor, retry=lambda n: 0.05)
    assert isinstance(svc, SerialLinkService)
    events = []
    svc.add_observer(lambda e, d: events.append(e))
    svc.startService()
    try:
        assert os.path.islink(device)
        reply = await _status(master, link)
        assert isinstance(reply, m.CdtStatus) and reply.modules == frozenset({1})
        bulk = await master.transact(m.BulkRead(address=link.cdt(7).bcd_address, first_channel=1, count=3)).addTimeout(TIMEOUT, reactor)
        assert isinstance(bulk, m.BulkReadReply)
        pty.stopService()  # the device disappears (pty closed, symlink removed)
        lost: defer.Deferred = defer.Deferred()
        svc.add_observer(lambda e, d: e == "disconnected" and not lost.called and lost.callback(d))
        await lost.addTimeout(TIMEOUT, reactor)
        assert not master.connected and events[-1] == "disconnected"
        pty = PtyEndpoint("bus", bus, reactor, link_dir=str(tmp_path))
        pty.startService()  # a new pty behind the same path
        reply = await _status(master, link)  # queued until the link is back
        assert isinstance(reply, m.CdtStatus)
        assert events == ["connected", "disconnected", "connected"]
        assert master.stats.as_dict()["replies"] >= 3
    finally:
        svc.stopService()
        master.shutdown()
        pty.stopService()


@pytest_twisted.ensureDeferred
async def test_tcp_link_reads_the_simulator_across_a_link_drop(kit):
    from st2000r.simulation.endpoints import TcpListenerEndpoint
    from st2000r.simulation.faults import parse_action

    topo, link, world, bus = _sim(kit, 'name = "net"\nkind = "tcp"\nhost = "127.0.0.1"\nport = 1')
    listener = TcpListenerEndpoint("net", bus, reactor, "127.0.0.1", 0)
    listener.startService()
    from dataclasses import replace

    from st2000r.config.model import TcpEndpoint

    link = replace(link, endpoint=TcpEndpoint("127.0.0.1", listener.port))
    master = BusMaster(link, reactor, retries=3)
    svc = TcpLinkService(link, master, reactor, retry=lambda n: 0.05)
    svc.startService()
    try:
        reply = await _status(master, link)
        assert isinstance(reply, m.CdtStatus)
        world.apply(parse_action({"action": "link_drop", "link": "net", "seconds": 0.3}))
        reply = await _status(master, link)  # waits for the reconnection
        assert isinstance(reply, m.CdtStatus)
        assert svc.connections >= 2 and listener.connections >= 2
    finally:
        await svc.stopService()
        master.shutdown()
        await listener.stopService()
