"""The bridge's server in-process on the test's reactor: the client bound, Modbus/TCP
Security (TLS with client certificates) and the RTU slave on a pseudo-terminal pair.

The bridge is the real service (point database, event bus, register image, server) for
``small.toml`` with one round of readings fed to the point database; clients are real
(asyncio sockets speaking Modbus TCP frames, pymodbus's serial client).  Every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import struct
import subprocess
import time

import pytest
import pytest_twisted
from pymodbus.client import AsyncModbusTlsClient
from pymodbus.exceptions import ModbusIOException

from st2000r.bridge.aio import deferred
from st2000r.bridge.service import ModbusBridge
from st2000r.config import example_path
from st2000r.config.loader import loads
from st2000r.drivers.st2000r import messages as m
from st2000r.supervisor.eventbus import EventBus
from st2000r.supervisor.points import PointDatabase

UNIT = 1
METER = 1000  # garden-bus/1/1/1: CDT 1 in slot 0
WAIT = 5.0


def make_bridge(modbus: str) -> ModbusBridge:
    """A started bridge for small.toml with ``[modbus]`` body ``modbus``; meter m/c of CDT 1
    holds the count 1000 + 3(m-1) + c - 1 (pulse constants from the file)."""
    from twisted.internet import reactor

    topology = loads(example_path("small.toml").read_text(encoding="utf-8") + "\n[modbus]\n" + modbus)
    bus = EventBus(reactor)
    points = PointDatabase(topology, reactor, bus)
    reply = m.BulkReadReply(address=1, first_channel=1, channels=tuple(m.ChannelReading(1000 + n) for n in range(96)))
    points.on_bulk("garden-bus", 1, reply, time.time())
    bridge = ModbusBridge(topology, reactor, bus, points, None)
    bridge.startService()
    return bridge


def same_meter(regs: list[int], expected: list[int]) -> bool:
    """A meter's 8 registers equal, but for the age (computed when read: it may have ticked)."""
    return regs[:3] == expected[:3] and regs[5:8] == expected[5:8] and (regs[3] << 16 | regs[4]) < 10


def read_request(tid: int, address: int = METER, count: int = 2) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, UNIT, 4, address, count)


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tid: int) -> list[int]:
    """One read of two input registers; the registers."""
    writer.write(read_request(tid))
    head = await asyncio.wait_for(reader.readexactly(9), WAIT)
    assert struct.unpack(">H", head[:2])[0] == tid and head[7] == 4, head
    body = await asyncio.wait_for(reader.readexactly(head[8]), WAIT)
    return list(struct.unpack(f">{len(body) // 2}H", body))


@pytest_twisted.ensureDeferred
async def test_the_client_over_the_bound_is_refused_and_the_others_keep_being_served():
    bridge = make_bridge('tcp = "127.0.0.1:0"\nmax_clients = 3\n')
    try:
        port = await bridge.when_listening()
        expected = bridge.image.get16(UNIT, METER), bridge.image.get16(UNIT, METER + 1)

        async def scenario() -> None:
            clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            for i, (r, w) in enumerate(clients):
                assert tuple(await exchange(r, w, i)) == expected
            # the fourth: closed at once, without an answer, even to a request sent at once
            r4, w4 = await asyncio.open_connection("127.0.0.1", port)
            w4.write(read_request(99))
            assert await asyncio.wait_for(r4.read(), WAIT) == b""
            w4.close()
            assert bridge.stats.clients_refused == 1
            for round_ in range(20):  # the three keep being served
                for i, (r, w) in enumerate(clients):
                    assert tuple(await exchange(r, w, 100 + 3 * round_ + i)) == expected
            # a place freed is a place taken
            r0, w0 = clients.pop(0)
            w0.close()
            await w0.wait_closed()
            deadline = time.monotonic() + WAIT
            while len(bridge.server.connections) > 2:
                assert time.monotonic() < deadline, "the closed client is still counted"
                await asyncio.sleep(0.01)
            r5, w5 = await asyncio.open_connection("127.0.0.1", port)
            assert tuple(await exchange(r5, w5, 500)) == expected
            for _, w in clients + [(r5, w5)]:
                w.close()

        await deferred(scenario())
    finally:
        await bridge.stopService()


# ---------------------------------------------------------------- Modbus/TCP Security

def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(folder) -> None:
    """A throwaway CA, a server certificate for 127.0.0.1, a client certificate from the CA,
    and a client certificate from another (unknown) CA; EC P-256 keys, valid for a day."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "1",
                 "-subj", f"/CN={ca}", cwd=folder)
    for name, ca, ext in (("server", "ca", "server.ext"), ("client", "ca", "client.ext"),
                          ("rogue", "rogue-ca", "client.ext")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", ext, cwd=folder)


def client_context(folder, cert: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(folder / "ca.pem"))
    if cert is not None:
        context.load_cert_chain(str(folder / f"{cert}.pem"), str(folder / f"{cert}.key"))
    return context


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest_twisted.ensureDeferred
async def test_tls_a_client_with_a_certificate_reads_one_without_or_from_another_ca_is_refused(tmp_path):
    make_pki(tmp_path)
    bridge = make_bridge(f'tcp = "127.0.0.1:0"\ntls = {{ cert = "{tmp_path}/server.pem", '
                         f'key = "{tmp_path}/server.key", ca = "{tmp_path}/ca.pem" }}\n')
    try:
        port = await bridge.when_listening()
        expected = [bridge.image.get16(UNIT, METER + i) for i in range(8)]
        assert expected[2] == 0 and expected[0:2] != [0, 0]  # good quality, a value

        async def scenario() -> None:
            client = AsyncModbusTlsClient("127.0.0.1", port=port, sslctx=client_context(tmp_path, "client"),
                                          timeout=WAIT, retries=0)
            assert await client.connect()
            try:
                result = await client.read_input_registers(METER, count=8, device_id=UNIT)
                assert same_meter(result.registers, expected)
            finally:
                client.close()
            for cert in (None, "rogue"):
                answer = b""
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(
                        "127.0.0.1", port, ssl=client_context(tmp_path, cert), server_hostname="127.0.0.1"), WAIT)
                    writer.write(read_request(1))
                    answer = await asyncio.wait_for(reader.read(), WAIT)
                    writer.close()
                except (ssl.SSLError, ConnectionError):
                    pass  # refused in the handshake
                assert answer == b"", (cert, answer)  # no Modbus answer, whatever the TLS version

        await deferred(scenario())
        assert len(bridge.server.connections) <= 1 and bridge.stats.requests == 1
    finally:
        await bridge.stopService()


# ---------------------------------------------------------------- RTU slave

@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
@pytest_twisted.ensureDeferred
async def test_rtu_slave_on_a_pty_pair_answers_pymodbus_and_mbpoll_and_stays_silent_for_others(tmp_path):
    from pymodbus.client import AsyncModbusSerialClient

    from support.pty import poll

    slave_end, master_end = tmp_path / "slave", tmp_path / "master"
    socat = subprocess.Popen(["socat", f"pty,raw,echo=0,link={slave_end}", f"pty,raw,echo=0,link={master_end}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bridge = None
    try:
        await poll(lambda: slave_end.exists() and master_end.exists(), WAIT)
        bridge = make_bridge(f'rtu = {{ device = "{slave_end}", baud = 19200, parity = "E", unit = 1 }}\n')
        assert bridge.rtu is not None
        expected = [bridge.image.get16(UNIT, METER + i) for i in range(8)]
        assert expected[2] == 0 and expected[0:2] != [0, 0]

        async def scenario() -> None:
            # a pty carries no parity bit, and Linux refuses a second tcsetattr with PARENB on a pty
            # (pyserial applies settings again on every change): the master side says "N"
            client = AsyncModbusSerialClient(str(master_end), baudrate=19200, parity="N", stopbits=1, bytesize=8,
                                             timeout=1, retries=0)
            assert await client.connect()
            try:
                assert same_meter((await client.read_input_registers(METER, count=8, device_id=UNIT)).registers, expected)
                header = await client.read_input_registers(0, count=6, device_id=UNIT)
                assert header.registers[0] == 2  # map version
                bad = await client.read_input_registers(900, count=2, device_id=UNIT)  # between header and block
                assert bad.isError() and bad.exception_code == 2
                refused = await client.write_coil(METER, False, device_id=UNIT)  # no address to allow: 01
                assert refused.isError() and refused.exception_code == 1
                before = bridge.rtu.frames
                with pytest.raises(ModbusIOException):  # another slave's address: silence
                    await client.read_input_registers(METER, count=2, device_id=7)
                assert bridge.rtu.frames == before
                assert (await client.read_input_registers(METER, count=2, device_id=UNIT)).registers == expected[:2]
            finally:
                client.close()
            if shutil.which("mbpoll"):
                proc = await asyncio.create_subprocess_exec(
                    "mbpoll", "-m", "rtu", "-b", "19200", "-P", "none", "-a", "1", "-t", "3", "-0", "-r", str(METER),
                    "-c", "8", "-1", "-o", "1", str(master_end), stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(proc.communicate(), 10)
                assert proc.returncode == 0, out + err
                values = {int(a): int(v.split()[0]) for a, v in
                          (line[1:].split("]:", 1) for line in out.decode().splitlines() if line.startswith("["))}
                assert same_meter([values[METER + i] & 0xFFFF for i in range(8)], expected)

        await deferred(scenario())
    finally:
        if bridge is not None:
            await bridge.stopService()
        socat.terminate()
        socat.wait(10)


def test_rtu_framing_on_a_clock():
    """Split requests, damaged frames and unknown functions on the slave's framing, time
    from a Clock: a known request is answered as soon as it is complete; a damaged one is
    dropped once the line is silent for 3.5 characters; an unknown function answers 01 then."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from st2000r.bridge.rtu import RtuSlave, crc16
    from st2000r.bridge.server import Responder, WritePolicy

    bridge = ModbusBridge(loads(example_path("small.toml").read_text(encoding="utf-8") + '\n[modbus]\n'),
                          Clock(), EventBus(Clock()), None, None)
    clock = Clock()
    slave = RtuSlave(Responder(bridge.image, WritePolicy((), None, bridge.stats)), clock, 19200)
    wire = StringTransport()
    slave.makeConnection(wire)

    def framed(body: bytes) -> bytes:
        return body + crc16(body).to_bytes(2, "little")

    request = framed(struct.pack(">BBHH", UNIT, 4, 0, 1))
    slave.dataReceived(request[:3])
    assert wire.value() == b""
    slave.dataReceived(request[3:])
    assert wire.value() == framed(bytes((UNIT, 4, 2, 0, 2)))  # map version 2, at once
    wire.clear()
    slave.dataReceived(request[:-1] + bytes((request[-1] ^ 0xFF,)))  # bad CRC
    clock.advance(0.01)
    assert wire.value() == b"" and slave.dropped == 1
    slave.dataReceived(framed(bytes((UNIT, 8, 0, 1, 0x12, 0x34))))  # diagnostics: length unknown
    assert wire.value() == b""
    clock.advance(3.5 * 11 / 19200)
    assert wire.value() == framed(bytes((UNIT, 0x88, 1)))
    wire.clear()
    slave.dataReceived(framed(struct.pack(">BBHH", 0, 4, 0, 1)) + framed(struct.pack(">BBHH", 9, 4, 0, 1)))
    clock.advance(0.01)
    assert wire.value() == b""  # broadcast and another slave: silence
