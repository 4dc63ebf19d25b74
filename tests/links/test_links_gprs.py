"""GprsServer: registration, heartbeat filtering, dead-DTU detection and takeover driven by
a Clock over StringTransports; then real TCP on 127.0.0.1 against the simulator's DTU
(polled through a drop and a reconnection) and a storm of 300 DTUs connecting at once."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import DeferredList, gatherResults
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import NEED_DATA, Frame, FrameDecoder
from st2000r.drivers.st2000r.gprs import GprsServer
from st2000r.drivers.st2000r.links import link_service
from st2000r.drivers.st2000r.registration import ddp_ack, ddp_heartbeat, ddp_register

TIMEOUT = 10.0

LINKS = [
    'name = "plain-link"\nkind = "gprs"\ndtu_id = "RVS-SOUTH-02"\nheartbeat_s = 60\nauth = "none"',
    'name = "usr-link"\nkind = "gprs"\ndtu_id = "USR-0007"\nregistration = "usr"\nheartbeat_s = 30\nauth = "none"',
    'name = "ddp-link"\nkind = "gprs"\ndtu_id = "13900000001"\nregistration = "ddp"\nheartbeat_s = 120\nauth = "none"',
]


@pytest.fixture
def rig(kit):
    """A server on a Clock with the three links, each with its own recording master."""
    topo = kit.topology(LINKS)
    clock = Clock()
    server = GprsServer("tcp:0", reactor, clock=clock, registration_timeout_s=30, hold_s=0.5)
    masters = {}
    services = {}
    for link in topo.links():
        masters[link.name] = kit.Master()
        services[link.name] = link_service(link, masters[link.name], reactor, gprs_server=server)
        services[link.name].startService()
    factory = server.factory()
    port = [40000]

    def connect():
        port[0] += 1
        proto = factory.buildProtocol(None)
        tr = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", port[0]))
        proto.makeConnection(tr)
        return proto, tr

    class Rig:
        pass

    rg = Rig()
    rg.__dict__.update(topo=topo, clock=clock, server=server, masters=masters, services=services, connect=connect)
    return rg


FRAME = m.encode(m.ReadCdtStatus(address="00000000000007"))


def test_plain_registration_byte_by_byte_then_bus_bytes_both_ways(rig):
    proto, tr = rig.connect()
    master = rig.masters["plain-link"]
    for b in b"RVS-SOUTH-02":
        assert not master.connected
        proto.dataReceived(bytes((b,)))
    assert master.events == [("made",)]
    master.write(b"\xfe\xfe\x68")
    assert tr.value() == b"\xfe\xfe\x68"  # no acknowledgement for plain
    # a heartbeat in the middle of a reply is cut out; the frame arrives whole
    proto.dataReceived(FRAME[:5] + b"RVS-SOUTH-02" + FRAME[5:])
    assert bytes(master.received) == FRAME
    info = rig.server.sessions()["RVS-SOUTH-02"]
    assert (info.link, info.peer, info.heartbeats, info.bytes_in) == ("plain-link", "10.0.0.9:40001", 1, len(FRAME))
    assert rig.services["plain-link"].connected


def test_ddp_is_acknowledged_and_a_repeated_registration_acknowledged_again(rig):
    proto, tr = rig.connect()
    reg = ddp_register("13900000001", "10.1.1.1", 4000)
    proto.dataReceived(reg)
    assert tr.value() == ddp_ack("13900000001")
    master = rig.masters["ddp-link"]
    assert master.events == [("made",)]
    tr.clear()
    proto.dataReceived(reg + FRAME[:2] + ddp_heartbeat("13900000001") + FRAME[2:])
    assert tr.value() == ddp_ack("13900000001")
    assert bytes(master.received) == FRAME
    assert rig.server.stats.heartbeats == 1


def test_registration_and_bus_bytes_in_one_chunk(rig):
    proto, _ = rig.connect()
    proto.dataReceived(b"USR-0007\r\n" + FRAME)
    assert bytes(rig.masters["usr-link"].received) == FRAME


def test_unknown_identity_is_closed_and_counted(rig):
    proto, tr = rig.connect()
    proto.dataReceived(b"STRANGER\r\n")
    assert tr.disconnecting
    assert rig.server.stats.unknown == 1
    assert all(not mm.events for mm in rig.masters.values())
    proto.dataReceived(b"RVS-SOUTH-02")  # ignored after refusal
    assert not rig.masters["plain-link"].events


def test_malformed_registration_is_refused(rig):
    proto, tr = rig.connect()
    proto.dataReceived(b"\x7b\x09")
    assert tr.disconnecting and rig.server.stats.refused == 1


def test_registration_timeout_closes_a_silent_connection(rig):
    proto, tr = rig.connect()
    rig.clock.advance(29.9)
    assert not tr.disconnecting
    rig.clock.advance(0.2)
    assert tr.disconnecting
    assert rig.server.stats.registration_timeouts == 1


def test_dead_dtu_is_dropped_after_n_heartbeat_intervals(rig):
    proto, tr = rig.connect()
    proto.dataReceived(b"USR-0007\r\n")  # heartbeat_s = 30, dead after 3 x 30 s
    master = rig.masters["usr-link"]
    rig.clock.advance(80)
    proto.dataReceived(b"USR-0007\r\n")  # a heartbeat keeps it alive
    rig.clock.advance(80)
    assert not tr.disconnecting and master.connected
    rig.clock.advance(10.5)  # 90.5 s since the heartbeat
    assert tr.disconnecting
    assert master.events[-1][0] == "lost" and "dead DTU" in master.events[-1][1]
    proto.connectionLost(None)  # the aborted connection reports later: no second loss
    assert master.count("lost") == 1
    assert rig.server.stats.dead == 1
    assert rig.clock.getDelayedCalls() == []


def test_new_registration_takes_over_the_old_session(rig):
    old, old_tr = rig.connect()
    old.dataReceived(b"RVS-SOUTH-02")
    new, new_tr = rig.connect()
    new.dataReceived(b"RVS-SOUTH-02")
    master = rig.masters["plain-link"]
    assert old_tr.disconnecting and not new_tr.disconnecting
    assert [e[0] for e in master.events] == ["made", "lost", "made"]
    assert "taken over" in master.events[1][1]
    old.connectionLost(None)
    assert [e[0] for e in master.events] == ["made", "lost", "made"]
    master.write(b"x")
    assert new_tr.value() == b"x" and old_tr.value() == b""
    old.dataReceived(FRAME)  # a late byte from the old connection goes nowhere
    assert master.received == bytearray()
    assert rig.server.sessions()["RVS-SOUTH-02"].peer == "10.0.0.9:40002"
    assert rig.server.stats.takeovers == 1


def test_held_heartbeat_prefix_is_released_after_hold_time(rig):
    proto, _ = rig.connect()
    proto.dataReceived(b"RVS-SOUTH-02")
    master = rig.masters["plain-link"]
    proto.dataReceived(b"\x01RVS")
    assert bytes(master.received) == b"\x01"
    rig.clock.advance(0.6)
    assert bytes(master.received) == b"\x01RVS"


def test_observers_and_stopping_the_link_service(rig):
    seen = []
    svc = rig.services["ddp-link"]
    svc.add_observer(lambda event, details: seen.append((event, details.get("reason", details.get("peer")))))
    proto, tr = rig.connect()
    proto.dataReceived(ddp_register("13900000001"))
    svc.stopService()
    assert tr.disconnecting
    assert seen == [("connected", "10.0.0.9:40001"), ("disconnected", "link service stopped")]


def test_remove_link_closes_its_session_and_refuses_its_dtu(rig):
    proto, tr = rig.connect()
    late, late_tr = rig.connect()  # connected before the removal, registers after it
    proto.dataReceived(b"RVS-SOUTH-02")
    rig.server.remove_link("RVS-SOUTH-02")
    master = rig.masters["plain-link"]
    assert tr.disconnecting and [e[0] for e in master.events] == ["made", "lost"]
    late.dataReceived(b"RVS-SOUTH-02")
    assert late_tr.disconnecting and rig.server.stats.unknown == 1
    assert master.count("made") == 1


def test_add_link_refusals(kit):
    topo = kit.topology(LINKS + ['name = "s"\nkind = "serial"\ndevice = "/dev/null"'])
    server = GprsServer("tcp:0", reactor, formats=("plain", "usr"))
    server.add_link(topo.link("plain-link"), kit.Master())
    with pytest.raises(ValueError, match="already served"):
        server.add_link(topo.link("plain-link"), kit.Master())
    with pytest.raises(ValueError, match="'ddp' is not accepted"):
        server.add_link(topo.link("ddp-link"), kit.Master())
    with pytest.raises(ValueError, match="not a GPRS link"):
        server.add_link(topo.link("s"), kit.Master())
    with pytest.raises(ValueError, match="no GPRS server is configured"):
        link_service(topo.link("usr-link"), kit.Master(), reactor)
    with pytest.raises(ValueError, match="not one of"):
        GprsServer("tcp:0", reactor, formats=("xml",))


# --------------------------------------------------------------------------- real TCP


@pytest_twisted.ensureDeferred
async def test_simulated_dtu_is_polled_drops_reconnects_and_is_polled_again(kit):
    from st2000r.simulation.bus import SimulatedBus
    from st2000r.simulation.dtu import DtuClient
    from st2000r.simulation.faults import parse_action
    from st2000r.simulation.world import World

    topo = kit.topology([LINKS[2]])
    link = topo.link("ddp-link")
    world = World(topo, reactor, seed=1)
    bus = SimulatedBus(world, "ddp-link", reactor, physical_timing=False)
    server = GprsServer("tcp:0:interface=127.0.0.1", reactor)
    master = kit.Master()
    svc = link_service(link, master, reactor, gprs_server=server)
    server.startService()
    svc.startService()
    port = await server.when_listening()
    dtu = DtuClient(
        "ddp-link", bus, reactor, dtu_id="13900000001", registration="ddp", heartbeat_s=1,
        host="127.0.0.1", port=port.getHost().port, retry=lambda attempt: 0.05,
    )  # fmt: skip
    dtu.startService()
    try:
        await master.when(lambda: master.connected).addTimeout(TIMEOUT, reactor)
        # poll back to back until heartbeats (the simulator's floor: one per second) have
        # interleaved with the replies
        deadline = reactor.seconds() + TIMEOUT
        polls = 0
        while server.stats.heartbeats < 2 and reactor.seconds() < deadline:
            reply = await master.request(kit.read_status(link)).addTimeout(TIMEOUT, reactor)
            assert isinstance(reply, m.CdtStatus) and reply.modules == frozenset({1})
            polls += 1
        assert server.stats.heartbeats >= 2 and polls > 10
        world.apply(parse_action({"action": "link_drop", "link": "ddp-link", "seconds": 0.2}))
        await master.when(lambda: master.count("lost") == 1).addTimeout(TIMEOUT, reactor)
        await master.when(lambda: master.connected).addTimeout(TIMEOUT, reactor)
        reply = await master.request(kit.read_status(link)).addTimeout(TIMEOUT, reactor)
        assert isinstance(reply, m.CdtStatus)
        assert server.stats.registrations == 2
        # no heartbeat or DDP byte reached the master: its stream is frames and nothing else
        decoder = FrameDecoder()
        decoder.feed(bytes(master.received))
        events = []
        while (event := decoder.next_event()) is not NEED_DATA:
            events.append(event)
        assert events and all(isinstance(e, Frame) for e in events)
        assert len(events) == len(master.replies) == polls + 1
    finally:
        await dtu.stopService()
        svc.stopService()
        await server.stopService()


class EchoBus:
    """A bus that answers every chunk with b"R:" + chunk (BusLike for DtuClient)."""

    def __init__(self) -> None:
        self.write = None

    def connect(self, write) -> None:
        self.write = write

    def disconnect(self) -> None:
        self.write = None

    def data_received(self, data: bytes) -> None:
        if self.write is not None:
            self.write(b"R:" + data)

    def on_link_drop(self, callback) -> None:
        pass


STORM = 300


@pytest_twisted.ensureDeferred
async def test_storm_of_300_dtus_all_register_and_answer(kit):
    from st2000r.config.model import GprsEndpoint, Link, LineSettings

    from st2000r.simulation.dtu import DtuClient

    fmts = ("plain", "usr", "ddp")
    links = [
        Link(name=f"g{i}", kind="gprs", endpoint=GprsEndpoint(f"D{i:05d}", fmts[i % 3], 60),
             line=LineSettings(2400, 8, "E", 1), turnaround_ms=20, di_order="901F", repeaters=(), cdts=())
        for i in range(STORM)
    ]
    server = GprsServer("tcp:0:interface=127.0.0.1:backlog=1024", reactor)
    masters = [kit.Master() for _ in links]
    services = [link_service(link, mm, reactor, gprs_server=server) for link, mm in zip(links, masters)]
    server.startService()
    port = (await server.when_listening()).getHost().port
    dtus = [
        DtuClient(
            link.name, EchoBus(), reactor, dtu_id=link.endpoint.dtu_id, registration=link.endpoint.registration,
            heartbeat_s=30, host="127.0.0.1", port=port, retry=lambda attempt: 0.2,
        )  # fmt: skip
        for link in links
    ]
    t0 = time.perf_counter()
    try:
        for dtu in dtus:
            dtu.startService()
        await gatherResults([mm.when(lambda mm=mm: mm.connected) for mm in masters]).addTimeout(20, reactor)
        registered = time.perf_counter() - t0
        for mm in masters:
            mm.write(b"ping")
        await gatherResults([mm.when(lambda mm=mm: bytes(mm.received) == b"R:ping") for mm in masters]).addTimeout(10, reactor)
        print(f"\n{STORM} DTUs registered in {registered:.2f} s; all answered in {time.perf_counter() - t0:.2f} s")
        assert len(server.sessions()) == STORM
        assert server.stats.registrations == STORM and server.stats.refused == 0
    finally:
        await DeferredList([d.stopService() for d in dtus])
        for svc in services:
            svc.stopService()
        await server.stopService()


@pytest_twisted.ensureDeferred
async def test_duplicate_registration_over_tcp_takes_over_and_closes_the_old_connection(kit):
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    class Dtu(Protocol):
        def __init__(self) -> None:
            self.received = bytearray()
            self.closed: Deferred = Deferred()

        def connectionMade(self) -> None:
            self.transport.write(b"USR-0007\r\n")

        def dataReceived(self, data: bytes) -> None:
            self.received += data

        def connectionLost(self, reason=None) -> None:
            self.closed.callback(None)

    link = kit.topology([LINKS[1]]).link("usr-link")
    server = GprsServer("tcp:0:interface=127.0.0.1", reactor)
    master = kit.Master()
    svc = link_service(link, master, reactor, gprs_server=server)
    server.startService()
    port = (await server.when_listening()).getHost().port
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    try:
        first = await connectProtocol(ep, Dtu())
        await master.when(lambda: master.connected).addTimeout(TIMEOUT, reactor)
        second = await connectProtocol(ep, Dtu())
        await first.closed.addTimeout(TIMEOUT, reactor)  # the server closed the old session
        await master.when(lambda: master.count("made") == 2).addTimeout(TIMEOUT, reactor)
        assert [e[0] for e in master.events] == ["made", "lost", "made"]
        second.transport.write(b"from-new")
        await master.when(lambda: bytes(master.received) == b"from-new").addTimeout(TIMEOUT, reactor)
        assert server.stats.takeovers == 1 and bytes(first.received) == b""
        second.transport.loseConnection()
        await second.closed.addTimeout(TIMEOUT, reactor)
        await master.when(lambda: master.count("lost") == 2).addTimeout(TIMEOUT, reactor)
        assert server.sessions() == {}
    finally:
        svc.stopService()
        await server.stopService()


@pytest_twisted.ensureDeferred
async def test_100_simulated_dtus_polled_dropped_reconnected_polled_again(kit):
    """The issue's GPRS criterion with the real BusMaster: 100 simulated DTUs register, are
    polled, drop (link_drop), reconnect and are polled again."""
    from st2000r.drivers.st2000r.master import BusMaster
    from st2000r.simulation.bus import SimulatedBus
    from st2000r.simulation.dtu import DtuClient
    from st2000r.simulation.faults import parse_action
    from st2000r.simulation.world import World

    n = 100
    fmts = ("plain", "usr", "ddp")
    bodies = [
        f'name = "g{i}"\nkind = "gprs"\ndtu_id = "DTU{i:04d}"\nregistration = "{fmts[i % 3]}"\nheartbeat_s = 1\n'
        f'secret = "secret-of-dtu-{i:04d}"'
        for i in range(n)
    ]
    topo = kit.topology(bodies)
    links = list(topo.links())
    world = World(topo, reactor, seed=5)
    server = GprsServer("tcp:0:interface=127.0.0.1:backlog=512", reactor)
    masters = [BusMaster(link, reactor, retries=2, queue_timeout_s=20) for link in links]
    services = [link_service(link, mm, reactor, gprs_server=server) for link, mm in zip(links, masters)]
    server.startService()
    port = (await server.when_listening()).getHost().port
    buses = [SimulatedBus(world, link.name, reactor, physical_timing=False) for link in links]
    dtus = [  # every DTU answers the server's challenge with its own secret
        DtuClient.for_link(link, bus, reactor, host="127.0.0.1", port=port, retry=lambda attempt: 0.1)
        for link, bus in zip(links, buses)
    ]

    async def poll_all():
        ds = [
            mm.transact(kit.read_status(link)).addTimeout(TIMEOUT, reactor)
            for mm, link in zip(masters, links)
        ]
        replies = await gatherResults(ds)
        assert all(isinstance(r, m.CdtStatus) for r in replies)

    t0 = time.perf_counter()
    try:
        for dtu in dtus:
            dtu.startService()
        await poll_all()  # requests wait for their link to register
        first = time.perf_counter() - t0
        for link in links:
            world.apply(parse_action({"action": "link_drop", "link": link.name, "seconds": 0.3}))
        t1 = time.perf_counter()
        await poll_all()  # queued until each DTU is back
        again = time.perf_counter() - t1
        print(f"\n{n} DTUs: registered and polled in {first:.2f} s; dropped, back and polled again in {again:.2f} s")
        assert server.stats.registrations >= 2 * n
        assert all(mm.stats.disconnects >= 1 for mm in masters)
        assert all(d.stats.challenges >= 2 for d in dtus) and server.stats.auth_failed == 0
    finally:
        await DeferredList([d.stopService() for d in dtus])
        for svc in services:
            svc.stopService()
        for mm in masters:
            mm.shutdown()
        await server.stopService()
