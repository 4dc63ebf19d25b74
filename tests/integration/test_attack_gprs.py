"""The field side under attack, end to end on real loopback TCP.

(a) An impostor that knows a DTU's id but not its secret connects to the supervisor's GPRS
    server (SupervisorService, ``gprs_listen = "tcp:0"``: loopback by default) while the
    simulator's DTU holds the link: it is refused and counted, the real DTU keeps its
    session, and none of its forged replies (a valve "closed", a CDT status) reaches a
    point or a command outcome -- a valve command is confirmed by the field alone.
(b) A flood of 200,000 forged, unrequested reply frames over a TCP link (a rogue serial-
    device server) leaves the supervisor's memory flat (the master's tables and the number
    of live objects, before/after) and another link's round time within 20 % of its round time
    before the flood, both measured in this run with ``time.perf_counter``.
"""

from __future__ import annotations

import gc
import random
import socket
import statistics
import subprocess
import sys
import time

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from e2e_support import for_supervisor, load_text, truth_meter, within
from st2000r.config.model import Operator
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.registration import DtuFormat
from st2000r.simulation.bus import SimulatedBus
from st2000r.simulation.dtu import DtuClient
from st2000r.simulation.world import World
from st2000r.supervisor.commands import ValveRequest
from st2000r.supervisor.events import CommandState
from st2000r.supervisor.service import SupervisorService

SECRET = "attack-test-secret-of-the-dtu"

GPRS_TEXT = f"""
[[sites]]
name = "Village"
address = "county road"
[[sites.links]]
name = "air"
kind = "gprs"
dtu_id = "DTU-AIR-1"
registration = "usr"
heartbeat_s = 60
baud = 9600
secret = "{SECRET}"
[[sites.links.cdts]]
address = 7
[[sites.links.cdts.modules]]
module = 1
channels = [ {{ channel = 1, kind = "water", pulse_constant = 10, serial = "70101" }} ]
"""


class Impostor(Protocol):
    def __init__(self, packet: bytes) -> None:
        self.packet = packet
        self.closed: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.packet)

    def connectionLost(self, reason=None) -> None:
        self.closed.callback(None)


def until(predicate, seconds: float = 10.0) -> defer.Deferred:
    """Fires once ``predicate()`` is true (checked every 20 ms), or fails after ``seconds``."""
    d: defer.Deferred = defer.Deferred()
    deadline = time.monotonic() + seconds

    def check() -> None:
        if predicate():
            d.callback(None)
        elif time.monotonic() > deadline:
            d.errback(AssertionError(f"condition not met within {seconds} s"))
        else:
            reactor.callLater(0.02, check)

    check()
    return d


@pytest_twisted.ensureDeferred
async def test_an_impostor_without_the_secret_is_refused_and_believed_in_nothing(tmp_path):
    topology = for_supervisor(load_text(GPRS_TEXT), str(tmp_path), gprs_listen="tcp:0",
                              operators=(Operator("alice", "operator", None),))
    link = topology.link("air")
    service = SupervisorService(topology, reactor)
    events: list[tuple[str, dict]] = []
    service.gprs_server.add_observer(lambda e, d: events.append((e, d)))
    service.startService()
    port = await within(service.gprs_server.when_listening())
    assert port.getHost().host == "127.0.0.1"  # no interface configured: loopback only
    world = World(topology, reactor, seed=2)
    dtu = DtuClient.for_link(link, SimulatedBus(world, "air", reactor, physical_timing=False), reactor,
                             host="127.0.0.1", port=port.getHost().port, retry=lambda attempt: 0.1)
    dtu.startService()
    try:
        master = service.masters["air"]
        await until(lambda: master.connected)
        result = await within(service.pollers["air"].run_plan_now("full"), 30)
        assert result.unreachable == ()
        meter = service.points.meter("air/7/1/1")
        before = (meter.value, meter.valve, meter.timestamp, meter.alarms)
        real_peer = service.gprs_server.sessions()["DTU-AIR-1"].peer
        master_stats = master.stats.as_dict()

        # forged replies: "valve closed" for the meter, a CDT status -- each with every SER
        serial = link.cdt(7).module(1).channels[0].meter.serial.rjust(14, "0")
        closed = m.MeterStatus(raw=0x01)
        forged = b"".join(
            m.encode(m.ValveReply(meter_type=0x10, address=serial, ser=ser, status=closed))
            + m.encode(m.CdtStatus(meter_type=m.CDT_TYPE, address=link.cdt(7).bcd_address, ser=ser, mains=False))
            for ser in range(256)
        )
        fmt = DtuFormat("usr", "DTU-AIR-1")
        for attempt in range(3):
            impostor = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                                             Impostor(fmt.registration_packet() + forged))
            await within(impostor.closed)
        stats = service.gprs_server.stats
        assert (stats.auth_failed, stats.auth_failed_by_dtu, stats.takeovers) == (3, {"DTU-AIR-1": 3}, 0)
        assert [e for e, _ in events] == ["refused"] * 3
        assert service.gprs_server.sessions()["DTU-AIR-1"].peer == real_peer  # the real DTU kept its session
        # the operator hears of it once, however often the impostor tries
        (alarm,) = [a for a in service.alarms.alarms() if a.kind == "auth_failed"]
        assert (alarm.id, alarm.state, alarm.severity) == ("link:air:auth_failed", "cleared-unacked", "major")
        assert master.stats.as_dict() == master_stats  # not one forged byte reached the bus master
        meter = service.points.meter("air/7/1/1")
        assert (meter.value, meter.valve, meter.timestamp, meter.alarms) == before

        # a valve command goes to the real field, and its outcome is the field's
        handle = service.commands.submit(ValveRequest("air/7/1/1", False, "alice", "api", "attack test"))
        record = await within(handle.outcome, 30)
        assert record.state is CommandState.SUCCEEDED, record.detail
        truth = truth_meter(world, "air", 7, 1)
        assert truth["valve"] == "closed", truth
        assert service.points.meter("air/7/1/1").valve.name.lower() == "closed"
    finally:
        await within(dtu.stopService())
        await within(service.stopService())


# --------------------------------------------------------------------------- (b) flood

FLOOD = 200_000

FLOOD_TEXT = """
[templates.flat]
channels = [ { channel = 1, kind = "water", pulse_constant = 10 } ]
[[sites]]
name = "Town"
address = "main street"
[[sites.links]]
name = "rogue"
kind = "tcp"
host = "127.0.0.1"
port = ROGUE_PORT
baud = 9600
[[sites.links.cdts]]
address = 7
[[sites.links.cdts.modules]]
module = 1
channels = [ { channel = 1, kind = "water", pulse_constant = 10, serial = "70101" } ]
[[sites.links]]
name = "other"
kind = "tcp"
host = "127.0.0.1"
port = OTHER_PORT
baud = 19200
[[sites.links.cdt_ranges]]
addresses = "1-6"
modules = "1-2"
template = "flat"
serial = "9{cdt:02}{module:02}{channel}"
"""

#: a rogue device server: listens on 127.0.0.1, sends the frames file to its first client in
#: chunks at a fixed pace, prints "port N", then "sent N" when done
ROGUE = r"""
import socket, sys, time
data = open(sys.argv[1], "rb").read()
chunk, pause = int(sys.argv[2]), float(sys.argv[3])
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print("port", s.getsockname()[1], flush=True)
c, _ = s.accept()
assert sys.stdin.readline().strip() == "go"
t0 = time.perf_counter()
for i in range(0, len(data), chunk):
    c.sendall(data[i:i + chunk])
    time.sleep(pause)
print("sent", len(data), round(time.perf_counter() - t0, 2), flush=True)
sys.stdin.readline()
"""


def forged_frames(n: int, seed: int = 7) -> bytes:
    """``n`` valid reply frames nobody asked for: random addresses (and the rogue link's own
    CDT 7), functions and SERs."""
    rnd = random.Random(seed)
    out = bytearray()
    for i in range(n):
        ser = rnd.randrange(256)
        address = "00000000000007" if i % 4 == 0 else f"{rnd.randrange(10 ** 14):014d}"
        if i % 2:
            msg = m.ValveReply(meter_type=0x10, address=address, ser=ser, status=m.MeterStatus(raw=1))
        else:
            msg = m.CdtStatus(meter_type=m.CDT_TYPE, address=address, ser=ser, mains=False, battery_low=True)
        out += m.encode(msg)
    return bytes(out)


@pytest_twisted.ensureDeferred
async def test_a_flood_of_unrequested_replies_leaves_memory_flat_and_another_link_on_time(tmp_path):
    frames_file = tmp_path / "forged.bin"
    frames = forged_frames(FLOOD)
    frames_file.write_bytes(frames)
    script = tmp_path / "rogue.py"
    script.write_text(ROGUE)
    # 200,000 frames (~5.6 MB) in 4 KB chunks every 8 ms: ~18,000 frames/s, ~0.5 MB/s -- a
    # hundred times what a 19200-baud bus carries.  (The master spends ~26 us per forged frame:
    # a rogue sending faster than ~35,000 frames/s saturates the reactor; see docs/security.md.)
    rogue = subprocess.Popen([sys.executable, str(script), str(frames_file), "4096", "0.008"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        rogue_port = int(rogue.stdout.readline().split()[1])
        # the other link: `st2000r simulate` in its own process, bytes at their wire time
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            other_port = s.getsockname()[1]
        text = FLOOD_TEXT.replace("ROGUE_PORT", str(rogue_port)).replace("OTHER_PORT", str(other_port))
        config = tmp_path / "flood.toml"
        config.write_text(text)
        sim = subprocess.Popen([sys.executable, "-m", "st2000r.supervisor.cli", "simulate", str(config), "--link", "other",
                                "--control", "0", "--quiet"], stdout=subprocess.PIPE, text=True)
        listener = sim
        deadline = time.monotonic() + 30
        while "ready" not in sim.stdout.readline():
            assert sim.poll() is None and time.monotonic() < deadline, "the simulator did not start"
        topology = for_supervisor(load_text(text), str(tmp_path))
        service = SupervisorService(topology, reactor)
        service.startService()
        rogue_master, other = service.masters["rogue"], service.masters["other"]
        try:
            await until(lambda: rogue_master.connected and other.connected)

            async def round_time() -> float:
                t0 = time.perf_counter()
                result = await within(service.pollers["other"].run_plan_now("status"), 30)
                assert result.unreachable == () and result.aborted is None
                return time.perf_counter() - t0

            await round_time()  # warm up
            baseline = [await round_time() for _ in range(5)]
            # memory: the master's tables and the number of live objects, before and after
            # (tracemalloc would slow every allocation several times over and skew the timing)
            gc.collect()
            objects_before = len(gc.get_objects())
            tables_before = (len(rogue_master.devices()), len(list(service.points.meters("rogue"))))
            rogue_point = service.points.meter("rogue/7/1/1")
            point_before = (rogue_point.value, rogue_point.valve, rogue_point.timestamp, rogue_point.alarms)
            rogue.stdin.write("go\n")
            rogue.stdin.flush()
            during = []
            while rogue_master.stats.unexpected_replies < FLOOD:
                during.append(await round_time())
                assert len(during) < 400, "the flood never arrived"
            gc.collect()
            objects_grown = len(gc.get_objects()) - objects_before
            stats = rogue_master.stats
            assert stats.unexpected_replies == FLOOD and stats.replies == 0
            assert (len(rogue_master.devices()), len(list(service.points.meters("rogue")))) == tables_before
            rogue_point = service.points.meter("rogue/7/1/1")
            assert (rogue_point.value, rogue_point.valve, rogue_point.timestamp, rogue_point.alarms) == point_before
            assert objects_grown < 20_000, f"{objects_grown} more objects after {FLOOD} forged frames"
            ratio = statistics.median(during) / statistics.median(baseline)  # one noisy round is not the flood
            print(f"\nflood of {FLOOD} frames: {len(during)} rounds of the other link during it, "
                  f"round time ratio {ratio:.3f} (baseline {min(baseline):.3f} s); objects {objects_grown:+d}")
            assert ratio < 1.2, f"the other link's round time grew by {100 * (ratio - 1):.0f} % under the flood"
        finally:
            await within(service.stopService())
            listener.terminate()
            listener.wait(10)
    finally:
        if rogue.stdin:
            rogue.stdin.close()
        rogue.kill()
        rogue.wait(10)
