"""Remote links assembled by the SimulatorService: a GSM link (the supervisor's modem on a
real pty: AT dialogue, dial, then frames to the field bus) and a GPRS link (a DTU dialling
a test listener on 127.0.0.1, registering in DDP format, carrying frames)."""

from __future__ import annotations

import json

import pytest
from datetime import datetime

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock

from support.pty import Master, PtyMaster, poll
from st2000r.config.loader import loads
from st2000r.drivers.st2000r import messages as m
from st2000r.simulation.dtu import UplinkDecoder, Registered, Heartbeat, Data, ddp_ack
from st2000r.simulation.modem import ModemState
from st2000r.simulation.service import SimulatorOptions, SimulatorService

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")

TOPOLOGY = """
[templates.flat]
channels = [ { channel = 1, kind = "water", pulse_constant = 10 }, { channel = 2, kind = "electricity", pulse_constant = 1 } ]

[[sites]]
name = "Remote"
address = "far away"

[[sites.links]]
name = "call"
kind = "gsm"
modem = "/dev/ttyACM9"
number = "13800000001"

[[sites.links.cdt_ranges]]
addresses = "1-2"
modules = "1-2"
template = "flat"
serial = "1{cdt:03}{module:02}{channel}"

[[sites.links]]
name = "air"
kind = "gprs"
dtu_id = "13900000001"
registration = "ddp"
heartbeat_s = 60
auth = "none"

[[sites.links.cdt_ranges]]
addresses = "5"
modules = "1-3"
template = "flat"
serial = "2{cdt:03}{module:02}{channel}"
"""


async def post(url: str, body: bytes) -> tuple[int, dict]:
    from io import BytesIO

    from twisted.web.client import Agent, FileBodyProducer, readBody

    response = await Agent(reactor).request(b"POST", url.encode(), None, FileBodyProducer(BytesIO(body)))
    return response.code, json.loads(await readBody(response))


class DtuServer(Factory):
    """The supervisor's GPRS listener in miniature, using the shared uplink decoder."""

    def __init__(self) -> None:
        self.masters: list = []

    def buildProtocol(self, addr):
        server = self

        class Conn(Master):
            def connectionMade(self) -> None:
                self.uplink = UplinkDecoder("ddp")
                self.registered: list = []
                self.heartbeats = 0
                server.masters.append(self)

            def dataReceived(self, data: bytes) -> None:
                for event in self.uplink.feed(data):
                    if isinstance(event, Registered):
                        self.registered.append(event)
                        self.transport.write(ddp_ack(event.dtu_id))
                    elif isinstance(event, Heartbeat):
                        self.heartbeats += 1
                    elif isinstance(event, Data):
                        Master.dataReceived(self, event.data)
                self._check()

            def send(self, data: bytes) -> None:
                self.transport.write(data)

        return Conn()


@pytest_twisted.ensureDeferred
async def test_gsm_modem_dial_then_bulk_read_and_gprs_dtu_ddp():
    server = DtuServer()
    listening = reactor.listenTCP(0, server, interface="127.0.0.1")
    clock = Clock()
    options = SimulatorOptions(
        physical_timing=False, control_port=0, start=datetime(2026, 3, 2, 6, 0),
        supervisor=("127.0.0.1", listening.getHost().port), modem_dial_s=4.0,
    )
    sim = SimulatorService(loads(TOPOLOGY), options, reactor, clock=clock)
    sim.startService()
    clock.advance(7200.0)
    port = None
    try:
        # --- GSM: the AT dialogue on the printed pty, then frames
        modem = sim.modems["call"]
        path = next(e.where for e in sim.endpoints() if e.link == "call")
        assert path == modem.path
        port = PtyMaster(path)
        port.events.clear()
        for command, answer in ((b"ATZ\r", b"OK\r\n"), (b"ATE0\r", b"OK\r\n"), (b"AT+CSQ\r", b"+CSQ: 23,0\r\n\r\nOK\r\n")):
            port.raw.clear()
            port.send(command)
            await port.until(lambda: answer in port.raw)
        port.raw.clear()
        port.send(b"ATD13800000001\r")
        await poll(lambda: modem.machine.state is ModemState.DIALING)
        clock.advance(4.0)
        await port.until(lambda: b"CONNECT 9600\r\n" in port.raw)
        port.decoder.clear()
        port.events.clear()
        bus = sim.buses["call"]
        port.send(m.encode(m.BulkRead(address=f"{2:014d}", first_channel=1, count=6)))
        await poll(lambda: bus.stats.requests == 1)
        truth = sim.truth()
        clock.advance(1.0)
        reply = m.parse(await port.frame())
        cdt = next(c for c in truth["links"][0]["cdts"] if c["address"] == 2)
        counts = {x["channel"]: x["count"] for x in cdt["meters"]}
        assert [r.count for r in reply.channels] == [counts.get(ch, 0) for ch in range(1, 7)]
        assert sum(counts.values()) > 0

        # escape with guard time, hang up, then an incoming call rung through the control API
        clock.advance(2.0)
        port.raw.clear()
        port.send(b"+++")
        await poll(lambda: modem.machine._plus == 3)
        clock.advance(1.0)
        await port.until(lambda: b"OK\r\n" in port.raw)
        port.raw.clear()
        port.send(b"ATH\r")
        await port.until(lambda: b"OK\r\n" in port.raw)
        assert modem.machine.state is ModemState.COMMAND
        code, answer = await post(sim.control.url + "/ring", b'{"link": "call"}')
        assert code == 200 and answer == {"rang": ["call"]}
        await port.until(lambda: b"RING\r\n" in port.raw)
        code, answer = await post(sim.control.url + "/ring", b'{"link": "air"}')
        assert code == 400 and "not a served GSM link" in answer["error"]
        port.raw.clear()
        port.send(b"ATA\r")
        await poll(lambda: modem.machine.state is ModemState.DIALING)
        clock.advance(4.0)
        await port.until(lambda: b"CONNECT 9600" in port.raw)

        # --- GPRS: the DTU registered with the listener (DDP), acknowledged, carries frames
        await poll(lambda: server.masters and server.masters[0].registered)
        conn = server.masters[0]
        assert conn.registered[0].dtu_id == "13900000001"
        dtu = sim.dtus["air"]
        await poll(lambda: dtu.stats.acknowledged == 1)
        air = sim.buses["air"]
        conn.send(m.encode(m.ReadCdtStatus(address=f"{5:014d}")))
        await poll(lambda: air.stats.requests == 1)
        clock.advance(1.0)
        status = m.parse(await conn.frame())
        assert isinstance(status, m.CdtStatus) and status.modules == frozenset({1, 2, 3})
        clock.advance(60.0)
        await poll(lambda: conn.heartbeats == 1)
    finally:
        if port is not None:
            port.close()
        await maybeDeferred(sim.stopService)
        for c in server.masters:
            c.transport.abortConnection()
        await listening.stopListening()
