"""The simulator driven with the codec in the master role over real transports: a real
pseudo-terminal pair (the master opens the printed slave path) and real TCP on 127.0.0.1.

The world and the buses run on a ``Clock`` (so the truth does not move under the test and
replies come when the test advances time); the bytes travel through the real reactor.
Every fault kind is applied through the control HTTP interface and observed from the
master's side."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from support.configs import FLAT, site
from support.pty import Master, PtyMaster, poll
from st2000r.config.loader import loads
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import Frame
from st2000r.simulation.service import SimulatorOptions, SimulatorService

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")
START = datetime(2026, 3, 2, 6, 0)

TOPOLOGY = FLAT + site("Test Court", "1 Test Road") + """
[[sites.links]]
name = "ser"
kind = "serial"
device = "/dev/ttyUSB9"
baud = 9600
repeaters = [ { name = "R1", latency_ms = 5 } ]

[[sites.links.cdt_ranges]]
addresses = "1-2"
modules = "1-4"
template = "flat"
serial = "1{cdt:03}{module:02}{channel}"
initial = 1000

[[sites.links.cdt_ranges]]
addresses = "3"
repeater = "R1"
modules = "1-2"
template = "flat"
serial = "2{cdt:03}{module:02}{channel}"

[[sites.links]]
name = "net"
kind = "tcp"
host = "192.0.2.10"
port = 4001

[[sites.links.cdt_ranges]]
addresses = "7-9"
modules = "1-16"
template = "flat"
serial = "3{cdt:03}{module:02}{channel}"
"""


class TcpMaster(Master):
    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        self.transport.abortConnection()


class Sim:
    def __init__(self, **options) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000.0)
        opts = dict(physical_timing=False, control_port=0, start=START, tcp_base_port=0)
        opts.update(options)
        self.service = SimulatorService(loads(TOPOLOGY), SimulatorOptions(**opts), reactor, clock=self.clock)
        self.service.startService()
        self.clock.advance(6 * 3600.0)  # six hours of consumption: counts are not zero
        self.agent = Agent(reactor)

    def where(self, link: str) -> str:
        return next(e.where for e in self.service.endpoints() if e.link == link)

    async def tcp_master(self, link: str = "net") -> TcpMaster:
        host, port = self.where(link).rsplit(":", 1)
        master = TcpMaster()
        await connectProtocol(TCP4ClientEndpoint(reactor, host, int(port)), master)
        return master

    async def ask(self, master: Master, link: str, msg: m.Message, advance: float = 1.0) -> m.Message:
        """Send ``msg``, let the device answer (advance the clock), parse the reply."""
        bus = self.service.buses[link]
        before = bus.stats.requests
        master.send(m.encode(msg))
        await poll(lambda: bus.stats.requests > before)
        self.asked_truth = self.service.truth()  # the device answered at this instant
        self.clock.advance(advance)
        return m.parse(await master.frame())

    async def request_seen(self, master: Master, link: str, msg: m.Message) -> None:
        bus = self.service.buses[link]
        before = bus.stats.requests
        master.send(m.encode(msg))
        await poll(lambda: bus.stats.requests > before)

    async def http(self, method: str, path: str, body: dict | bytes | None = None) -> tuple[int, dict]:
        from io import BytesIO

        from twisted.web.client import FileBodyProducer

        raw = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        producer = None if raw is None else FileBodyProducer(BytesIO(raw))
        response = await self.agent.request(method.encode(), (self.service.control.url + path).encode(),
                                            Headers({b"content-type": [b"application/json"]}), producer)
        return response.code, json.loads(await readBody(response))

    def truth_cdt(self, link: str, address: int, *, asked: bool = False) -> dict:
        """The CDT's ground truth now, or (``asked``) when the last ``ask`` was answered."""
        truth = self.asked_truth if asked else self.service.truth()
        lw = next(x for x in truth["links"] if x["name"] == link)
        return next(c for c in lw["cdts"] if c["address"] == address)

    async def stop(self) -> None:
        await maybeDeferred(self.service.stopService)


@pytest_twisted.async_yield_fixture
async def sim():
    s = Sim()
    yield s
    await s.stop()


def bulk(address: int, first: int = 1, count: int = 48, ser: int = 0) -> m.BulkRead:
    return m.BulkRead(address=f"{address:014d}", first_channel=first, count=count, ser=ser)


def assert_bulk_equals_truth(reply: m.BulkReadReply, cdt_truth: dict) -> None:
    by_channel = {mt["channel"]: mt for mt in cdt_truth["meters"]}
    assert by_channel, "the CDT has meters"
    for i, reading in enumerate(reply.channels):
        ch = reply.first_channel + i
        meter = by_channel.get(ch)
        if meter is None:
            assert reading.absent
            continue
        assert not reading.absent
        assert reading.count == meter["count"], ch
        assert meter["reading"] == meter["initial"] + reading.count * meter["pulse_constant"]
        assert reading.valve.name.lower() == meter["valve"]
    assert sum(r.count for r in reply.channels) > 0


# --------------------------------------------------------------------------- pty


@pytest_twisted.ensureDeferred
async def test_bulk_read_over_a_real_pty_equals_ground_truth(sim):
    path = sim.where("ser")
    assert path.startswith("/dev/pts/") and os.path.exists(path)
    master = PtyMaster(path)
    try:
        reply = await sim.ask(master, "ser", bulk(1, ser=7))
        assert isinstance(reply, m.BulkReadReply) and reply.ser == 7 and len(reply.channels) == 48
        assert_bulk_equals_truth(reply, sim.truth_cdt("ser", 1, asked=True))
        # the path stays valid when the master closes and reopens it
        master.close()
        master = PtyMaster(path)
        reply = await sim.ask(master, "ser", bulk(2, first=4, count=9))
        assert reply.first_channel == 4 and len(reply.channels) == 9
        assert_bulk_equals_truth(reply, sim.truth_cdt("ser", 2, asked=True))
    finally:
        master.close()


@pytest_twisted.ensureDeferred
async def test_valve_command_over_pty_changes_ground_truth(sim):
    master = PtyMaster(sim.where("ser"))
    try:
        serial = "00000001001011"  # CDT 1, module 1, channel 1: water
        meter = lambda: next(x for x in sim.truth_cdt("ser", 1)["meters"] if x["serial"] == serial)  # noqa: E731
        assert meter()["valve"] == "open"
        reply = await sim.ask(master, "ser", m.ValveControl(meter_type=0x10, address=serial, open=False))
        assert isinstance(reply, m.ValveReply)
        sim.clock.advance(600.0)  # the motor has long finished
        assert meter()["valve"] == "closed"
        count = meter()["count"]
        sim.clock.advance(3600.0)
        assert meter()["count"] == count  # a closed valve stops consumption
        data = await sim.ask(master, "ser", m.ReadData(meter_type=0x10, address=serial))
        assert isinstance(data, m.CurrentData) and data.status.valve is m.Valve.CLOSED
    finally:
        master.close()


# --------------------------------------------------------------------------- TCP


@pytest_twisted.ensureDeferred
async def test_bulk_read_over_tcp_and_newest_connection_wins(sim):
    first = await sim.tcp_master()
    reply = await sim.ask(first, "net", bulk(8, first=1, count=48))
    assert_bulk_equals_truth(reply, sim.truth_cdt("net", 8, asked=True))
    second = await sim.tcp_master()
    await first.closed  # replaced
    reply = await sim.ask(second, "net", bulk(9, first=49, count=48))
    assert reply.first_channel == 49 and all(r.absent for r in reply.channels)
    reply = await sim.ask(second, "net", m.ReadCdtStatus(address=f"{9:014d}"))
    assert isinstance(reply, m.CdtStatus) and reply.mains and reply.modules == frozenset(range(1, 17))
    second.close()


# --------------------------------------------------------------------------- faults via control


@pytest_twisted.ensureDeferred
async def test_control_truth_endpoints_and_bad_input(sim):
    code, truth = await sim.http("GET", "/truth")
    assert code == 200 and [lw["name"] for lw in truth["links"]] == ["ser", "net"]
    code, eps = await sim.http("GET", "/endpoints")
    assert code == 200 and {e["link"]: e["kind"] for e in eps["endpoints"]} == {"ser": "pty", "net": "tcp"}
    code, stats = await sim.http("GET", "/stats")
    assert code == 200 and set(stats["links"]) == {"ser", "net"}
    for body, reason in (
        ({"action": "alarm", "link": "net", "cdt": 7, "channel": 2, "flags": ["fire"]}, "fire"),
        ({"action": "explode", "link": "net"}, "explode"),
        ({"action": "alarm", "link": "nope", "cdt": 7, "channel": 2, "flags": []}, "nope"),
        ({"action": "no_answer", "link": "net", "cdt": 99, "on": True}, "99"),
    ):
        code, answer = await sim.http("POST", "/fault", body)
        assert code == 400 and reason in answer["error"], answer
    for raw, reason in ((b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"", "empty")):
        code, answer = await sim.http("POST", "/fault", raw)
        assert code == 400 and reason in answer["error"], answer
    code, answer = await sim.http("GET", "/fault")
    assert code == 405
    code, answer = await sim.http("GET", "/nothing")
    assert code == 404 and "/truth" in answer["error"]
    code, answer = await sim.http("POST", "/ring", {})
    assert code == 400 and "no GSM link" in answer["error"]


async def fault(sim, **doc) -> None:
    code, answer = await sim.http("POST", "/fault", doc)
    assert code == 200, answer


@pytest_twisted.ensureDeferred
async def test_alarm_valve_jam_and_power_faults_seen_by_the_master(sim):
    master = await sim.tcp_master()
    try:
        await fault(sim, action="alarm", link="net", cdt=7, channel=2, flags=["tamper", "open"])
        reply = await sim.ask(master, "net", bulk(7, first=1, count=3))
        assert reply.channels[1].alarms == m.AlarmFlag.TAMPER | m.AlarmFlag.OPEN
        alarms = await sim.ask(master, "net", m.ReadAlarms(address=f"{7:014d}"))
        assert alarms.alarms[1] == m.AlarmFlag.TAMPER | m.AlarmFlag.OPEN and alarms.alarms[0] == m.AlarmFlag.NONE

        await fault(sim, action="valve_jam", link="net", cdt=7, channel=1, jammed=True)
        reply = await sim.ask(master, "net", bulk(7, first=1, count=3))
        assert reply.channels[0].valve is m.Valve.FAULT
        answer = await sim.ask(master, "net", m.ValveControl(meter_type=0x10, address="00000003007011", open=False))
        assert isinstance(answer, m.ErrorReply) or answer.status.valve is m.Valve.FAULT

        await fault(sim, action="cdt_power", link="net", cdt=8, mains=False)
        status = await sim.ask(master, "net", m.ReadCdtStatus(address=f"{8:014d}"))
        assert status.mains is False
        assert sim.truth_cdt("net", 8)["mains"] is False
    finally:
        master.close()


@pytest_twisted.ensureDeferred
async def test_silence_faults_no_answer_and_repeater(sim):
    master = PtyMaster(sim.where("ser"))
    try:
        await fault(sim, action="no_answer", link="ser", cdt=1, on=True)
        await sim.request_seen(master, "ser", bulk(1, count=3))
        sim.clock.advance(5.0)
        # the next answer the master hears is CDT 2's: CDT 1 stayed silent
        reply = await sim.ask(master, "ser", bulk(2, count=3))
        assert reply.address == f"{2:014d}" and master.events == []
        await fault(sim, action="repeater", link="ser", name="R1", failed=True)
        await sim.request_seen(master, "ser", bulk(3, count=3))
        sim.clock.advance(5.0)
        reply = await sim.ask(master, "ser", bulk(2, count=3))
        assert reply.address == f"{2:014d}" and master.events == []
        await fault(sim, action="repeater", link="ser", name="R1", failed=False)
        reply = await sim.ask(master, "ser", bulk(3, count=3))
        assert reply.address == f"{3:014d}"
    finally:
        master.close()


@pytest_twisted.ensureDeferred
async def test_late_answer_seen_by_the_master(sim):
    master = await sim.tcp_master()
    try:
        await fault(sim, action="late", link="net", cdt=9, ms=1500)
        bus = sim.service.buses["net"]
        await sim.request_seen(master, "net", bulk(9, count=3))
        sim.clock.advance(1.0)  # turnaround passed, the late device has not answered yet
        assert bus.stats.replies == 0
        sim.clock.advance(0.6)
        frame = await master.frame()
        assert m.parse(frame).address == f"{9:014d}"
    finally:
        master.close()


@pytest.mark.parametrize("doc", [
    {"action": "bit_errors", "rate": 0.05},
    {"action": "drop_bytes", "rate": 0.3},
])
@pytest_twisted.ensureDeferred
async def test_wire_faults_corrupt_what_the_master_receives(sim, doc):
    master = await sim.tcp_master()
    try:
        await fault(sim, link="net", **doc)
        bus = sim.service.buses["net"]
        for i in range(5):
            request = m.encode(bulk(8, count=48, ser=i))
            before = bus.stats.bytes_in
            master.send(request)
            await poll(lambda: bus.stats.bytes_in >= before + len(request))
            sim.clock.advance(1.0)
        await poll(lambda: len(master.raw) >= bus.stats.bytes_out)  # all that was sent has arrived
        intact = [e for e in master.events if isinstance(e, Frame)]
        assert len(intact) < 5  # at these rates 48-channel exchanges do not all survive
        assert bus.stats.corrupted_bytes + bus.stats.dropped_bytes > 0
        await fault(sim, link="net", **(doc | {"rate": 0.0}))
        master.events.clear()
        reply = await sim.ask(master, "net", bulk(8, count=3, ser=99))
        assert reply.ser == 99
    finally:
        master.close()


@pytest_twisted.ensureDeferred
async def test_link_drop_closes_tcp_and_refuses_until_over(sim):
    master = await sim.tcp_master()
    await fault(sim, action="link_drop", link="net", seconds=30)
    await master.closed
    refused = await sim.tcp_master()
    await refused.closed  # accepted and closed at once while the drop lasts
    sim.clock.advance(30.0)
    again = await sim.tcp_master()
    reply = await sim.ask(again, "net", bulk(7, count=3))
    assert reply.address == f"{7:014d}"
    again.close()
