"""GPRS DTU: registration/heartbeat formats (sans-I/O tables) and the DtuClient against a
real TCP listener, with heartbeats, DDP acknowledgement and reconnection driven by a Clock."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from support.fakes import EchoBus as FakeBus
from support.pty import poll
from st2000r.simulation.dtu import (
    Data,
    DdpPacket,
    DtuClient,
    DtuFormat,
    DtuFormatError,
    DownlinkDecoder,
    Heartbeat,
    Registered,
    UplinkDecoder,
    ddp_ack,
    ddp_heartbeat,
    ddp_register,
    parse_ddp,
)

TIMEOUT = 5.0


# --------------------------------------------------------------------------- formats

def test_ddp_packets_byte_exact():
    assert ddp_register("13900000001", "10.1.2.3", 0x1F90) == (
        bytes.fromhex("7B 01 00 16") + b"13900000001" + bytes((10, 1, 2, 3)) + bytes.fromhex("1F 90 7B")
    )
    assert ddp_heartbeat("DTU1") == bytes.fromhex("7B 02 00 10") + b"DTU1" + bytes(7) + b"\x7b"
    assert ddp_ack("DTU1") == bytes.fromhex("7B 81 00 10") + b"DTU1" + bytes(7) + b"\x7b"
    assert len(ddp_register("X")) == 0x16 and len(ddp_heartbeat("X")) == 0x10


@pytest.mark.parametrize(
    "packet, parsed",
    [
        (ddp_register("13900000001", "192.168.0.9", 5000), DdpPacket(0x01, "13900000001", "192.168.0.9", 5000)),
        (ddp_heartbeat("A"), DdpPacket(0x02, "A")),
        (ddp_ack("A"), DdpPacket(0x81, "A")),
    ],
)
def test_parse_ddp_both_ways_and_prefixes(packet, parsed):
    assert parse_ddp(packet + b"tail") == (parsed, len(packet))
    for n in range(len(packet)):
        assert parse_ddp(packet[:n]) is None


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x68\x01", "must start with 7Bh"),
        (bytes.fromhex("7B 05 00 10") + bytes(12), "unknown DDP packet type 05h"),
        (bytes.fromhex("7B 02 00 16") + bytes(18), "must be 16 bytes long"),
        (bytes.fromhex("7B 02 00 10") + bytes(12), "must end with 7Bh"),
    ],
)
def test_parse_ddp_rejects_with_reason(data, reason):
    with pytest.raises(DtuFormatError, match=reason):
        parse_ddp(data)


def test_format_rules():
    with pytest.raises(DtuFormatError, match="1..11 ASCII"):
        DtuFormat("ddp", "123456789012")
    with pytest.raises(DtuFormatError, match="not one of"):
        DtuFormat("xml", "A")
    assert DtuFormat("plain", "DTU0001").registration_packet() == b"DTU0001"
    assert DtuFormat("plain", "DTU0001").heartbeat_packet() == b"DTU0001"
    assert DtuFormat("plain", "D", heartbeat=b"\x00HB").heartbeat_packet() == b"\x00HB"
    assert DtuFormat("usr", "USR-0007").registration_packet() == b"USR-0007\r\n"


FRAME = bytes.fromhex("FE FE 68 50 01 00 00 00 00 00 00 81 03 C0 1F 00 44 16")


@pytest.mark.parametrize("fmt", ["plain", "usr", "ddp"])
def test_uplink_decoder_any_split(fmt):
    """Registration, then frames with heartbeats between (and inside) them, fed in every
    split: the decoder returns the same events."""
    f = DtuFormat(fmt, "DTU0001")
    hb = f.heartbeat_packet()
    stream = f.registration_packet("127.0.0.1", 4000) + FRAME + hb + FRAME[:5] + hb + FRAME[5:] + hb
    for cut in range(1, len(stream)):
        dec = UplinkDecoder(fmt, known_ids=["DTU0001", "DTU00"] if fmt == "plain" else ())
        events = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert isinstance(events[0], Registered) and events[0].dtu_id == "DTU0001"
        data = b"".join(e.data for e in events if isinstance(e, Data))
        assert data == FRAME + FRAME, cut
        assert sum(isinstance(e, Heartbeat) for e in events) == 3


def test_uplink_decoder_rejects_wrong_registration():
    with pytest.raises(DtuFormatError, match="expected a DDP registration"):
        UplinkDecoder("ddp").feed(ddp_heartbeat("A"))
    with pytest.raises(DtuFormatError, match="unknown DTU identity .XYZ1."):
        UplinkDecoder("plain", known_ids=["DTU1"]).feed(b"XYZ1")


def test_downlink_decoder_strips_ack():
    dec = DownlinkDecoder(DtuFormat("ddp", "D1"))
    ack = ddp_ack("D1")
    assert dec.feed(ack[:7]) == (False, b"")
    assert dec.feed(ack[7:] + FRAME) == (True, FRAME)
    assert DownlinkDecoder(DtuFormat("plain", "D1")).feed(FRAME) == (True, FRAME)


# --------------------------------------------------------------------------- DtuClient over TCP

class _Conn(Protocol):
    def connectionMade(self) -> None:
        self.factory.conns.append(self)
        self.received = bytearray()
        self.factory.check()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.factory.check()

    def connectionLost(self, reason=None) -> None:
        self.factory.check()


class Server(Factory):
    """A supervisor-side test listener recording each connection's bytes."""

    protocol = _Conn

    def __init__(self) -> None:
        self.conns: list[_Conn] = []
        self.waiters: list = []

    def until(self, predicate) -> Deferred:
        d = Deferred()
        self.waiters.append((predicate, d))
        self.check()
        return d.addTimeout(TIMEOUT, reactor)

    def poll(self, predicate) -> Deferred:
        """Wait (bounded) for a condition on the other side of the socket."""
        return poll(lambda: predicate(self), TIMEOUT, interval=0.005).addCallback(lambda _: self)

    def check(self) -> None:
        for item in list(self.waiters):
            predicate, d = item
            if predicate(self):
                self.waiters.remove(item)
                d.callback(self)


@pytest_twisted.async_yield_fixture
async def server():
    srv = Server()
    port = reactor.listenTCP(0, srv, interface="127.0.0.1")
    srv.port = port.getHost().port
    yield srv
    for c in srv.conns:
        c.transport.abortConnection()
    await port.stopListening()


def _client(srv, fmt, clock, bus, heartbeat_s=30):
    dtu = DtuClient("g1", bus, reactor, dtu_id="DTU0001", registration=fmt, heartbeat_s=heartbeat_s,
                    host="127.0.0.1", port=srv.port, clock=clock, speedup=1.0)
    dtu.startService()
    return dtu


@pytest.mark.parametrize("fmt", ["plain", "usr"])
@pytest_twisted.ensureDeferred
async def test_dtu_registers_heartbeats_carries_and_reconnects(server, fmt):
    clock, bus = Clock(), FakeBus()
    dtu = _client(server, fmt, clock, bus, heartbeat_s=30)
    try:
        f = DtuFormat(fmt, "DTU0001")
        reg = f.registration_packet()
        await server.until(lambda s: s.conns and bytes(s.conns[0].received) == reg)
        first = server.conns[0]
        clock.advance(29.9)
        assert bytes(first.received) == reg  # no heartbeat before its time
        clock.advance(0.1)
        await server.until(lambda s: bytes(first.received) == reg + f.heartbeat_packet())
        first.transport.write(FRAME)  # the supervisor polls through the DTU
        await server.until(lambda s: bytes(first.received).endswith(b"R:" + FRAME))
        assert bytes(bus.received) == FRAME
        assert dtu.stats.heartbeats == 1 and dtu.stats.connections == 1

        first.transport.loseConnection()  # the carrier drops the session
        await server.poll(lambda s: not dtu.stats.connected)
        assert len(server.conns) == 1
        clock.advance(3.0)  # default back-off after a first drop: 2 s + jitter (< 1 s)
        await server.until(lambda s: len(s.conns) == 2 and bytes(s.conns[1].received) == reg)
        assert dtu.stats.connections == 2 and dtu.stats.registrations == 2
    finally:
        await dtu.stopService()


@pytest_twisted.ensureDeferred
async def test_dtu_ddp_waits_for_ack_then_heartbeats(server):
    clock, bus = Clock(), FakeBus()
    dtu = _client(server, "ddp", clock, bus, heartbeat_s=60)
    try:
        await server.until(lambda s: s.conns and len(s.conns[0].received) >= 0x16)
        conn = server.conns[0]
        packet, used = parse_ddp(bytes(conn.received))
        assert packet.kind == 0x01 and packet.dtu_id == "DTU0001"
        assert packet.ip == "127.0.0.1" and packet.port == conn.transport.getPeer().port
        conn.transport.write(FRAME)  # before the ack the DTU is not online: nothing reaches the bus
        clock.advance(10.0)  # no ack: the registration is sent again
        await server.until(lambda s: len(conn.received) == 2 * 0x16)
        assert bytes(bus.received) == b""
        conn.transport.write(ddp_ack("DTU0001") + FRAME)
        await server.until(lambda s: bytes(conn.received).endswith(b"R:" + FRAME))
        clock.advance(60.0)
        await server.until(lambda s: bytes(conn.received).endswith(ddp_heartbeat("DTU0001")))
        assert dtu.stats.acknowledged == 1
    finally:
        await dtu.stopService()


@pytest_twisted.ensureDeferred
async def test_dtu_link_drop_stays_offline_then_redials(server):
    clock, bus = Clock(), FakeBus()
    dtu = _client(server, "plain", clock, bus)
    try:
        await server.until(lambda s: s.conns and bytes(s.conns[0].received) == b"DTU0001")
        for callback in bus.drops:
            callback(20.0)
        await server.poll(lambda s: not dtu.stats.connected)
        clock.advance(19.0)
        assert len(server.conns) == 1
        clock.advance(1.0)
        await server.until(lambda s: len(s.conns) == 2 and bytes(s.conns[1].received) == b"DTU0001")
    finally:
        await dtu.stopService()
