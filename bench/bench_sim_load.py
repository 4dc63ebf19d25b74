"""Simulator load: CPU used while serving big networks in real time.

Two runs, each a separate ``st2000r simulate`` process measured from outside (its user +
system CPU time from /proc/<pid>/stat over the polling window, divided by the wall time of
that window; process start-up and topology loading are excluded):

1. one TCP link with 256 CDTs x 32 modules x 3 meters = 24,576 meters, physical timing at
   2400 baud 8E1, polled back-to-back by this script (bulk reads of 48 channels, each sent
   when the previous reply has arrived), then the same at 19200 baud;
2. 100 GPRS links of 32 CDTs each (3,200 CDTs, 307,200 meters), every DTU dialling this
   script's TCP listener, registering (plain, usr and DDP in turn), heartbeating every 10 s
   and polled back-to-back over its link.

Bound: less than 0.5 of one core.  Run:  python bench/bench_sim_load.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from st2000r.simulation.cli import install_reactor

reactor = install_reactor()

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402

from st2000r.drivers.st2000r import messages as m  # noqa: E402
from st2000r.drivers.st2000r.frame import Frame, FrameDecoder, NEED_DATA  # noqa: E402
from st2000r.simulation.dtu import Data, Heartbeat, Registered, UplinkDecoder, ddp_ack  # noqa: E402

BOUND = 0.5
TICK = os.sysconf("SC_CLK_TCK")

TEMPLATE = """
[templates.flat]
channels = [
  { channel = 1, kind = "water",       pulse_constant = 10 },
  { channel = 2, kind = "electricity", pulse_constant = 1 },
  { channel = 3, kind = "gas",         pulse_constant = 10 },
]

[[sites]]
name = "Bench"
address = "1 Bench Road"
"""


def big_link_toml(baud: int) -> str:
    return TEMPLATE + f"""
[[sites.links]]
name = "big"
kind = "tcp"
host = "127.0.0.1"
port = 4001
baud = {baud}

[[sites.links.cdt_ranges]]
addresses = "1-256"
modules = "1-32"
template = "flat"
serial = "{{cdt:03}}{{module:02}}{{channel}}"
"""


def dtu_links_toml(n_links: int, cdts: int) -> str:
    out = [TEMPLATE]
    formats = ("plain", "usr", "ddp")
    for i in range(1, n_links + 1):
        out.append(f"""
[[sites.links]]
name = "g{i:03}"
kind = "gprs"
dtu_id = "DTU{i:03}"
registration = "{formats[i % 3]}"
heartbeat_s = 10
auth = "none"

[[sites.links.cdt_ranges]]
addresses = "1-{cdts}"
modules = "1-32"
template = "flat"
serial = "{i:03}{{cdt:03}}{{module:02}}{{channel}}"
""")
    return "".join(out)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


class Simulator:
    """An ``st2000r simulate`` child process."""

    def __init__(self, toml: str, *extra: str) -> None:
        self.dir = tempfile.TemporaryDirectory()
        path = os.path.join(self.dir.name, "bench.toml")
        with open(path, "w") as f:
            f.write(toml)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "st2000r.supervisor.cli", "simulate", path, "--control", "0", "--quiet", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
        )
        self.lines: list[str] = []

    def wait_ready(self, timeout: float = 120.0) -> list[str]:
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise SystemExit("simulator exited:\n" + buf.decode())
            buf += chunk
            if b"\nready" in buf:
                self.lines = buf.decode().splitlines()
                return self.lines
        raise SystemExit("simulator not ready in time")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.dir.cleanup()


class Poller(Protocol):
    """Sends bulk reads back to back over one byte stream: each when the previous reply
    arrived (or after ``timeout`` s without one)."""

    def __init__(self, cdts: int, timeout: float = 5.0) -> None:
        self.cdts = cdts
        self.timeout = timeout
        self.decoder = FrameDecoder()
        self.i = 0
        self.replies = 0
        self.timeouts = 0
        self.pending = None
        self.running = False

    def start(self) -> None:
        self.running = True
        self.send_next()

    def stop(self) -> None:
        self.running = False
        if self.pending is not None and self.pending.active():
            self.pending.cancel()

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def send_next(self) -> None:
        if not self.running:
            return
        cdt = self.i // 2 % self.cdts + 1
        first = 1 if self.i % 2 == 0 else 49
        self.i += 1
        self.write(m.encode(m.BulkRead(address=f"{cdt:014d}", first_channel=first, count=48, ser=self.i & 0xFF)))
        self.pending = reactor.callLater(self.timeout, self.expired)

    def expired(self) -> None:
        self.timeouts += 1
        self.decoder.clear()
        self.send_next()

    def bus_bytes(self, data: bytes) -> None:
        self.decoder.feed(data)
        while (event := self.decoder.next_event()) is not NEED_DATA:
            if isinstance(event, Frame) and self.running:
                self.replies += 1
                if self.pending is not None and self.pending.active():
                    self.pending.cancel()
                self.send_next()

    def dataReceived(self, data: bytes) -> None:
        self.bus_bytes(data)


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


async def measure(sim: Simulator, pollers, seconds: float) -> tuple[float, float, int, int]:
    """Poll for ``seconds`` after a 1 s settling time; the simulator's CPU seconds, the
    wall seconds, and the replies and heartbeats received within that window."""
    for p in pollers:
        p.start()
    await sleep(1.0)  # settle
    r0 = sum(p.replies for p in pollers)
    h0 = sum(getattr(p, "heartbeats", 0) for p in pollers)
    c0, w0 = cpu_seconds(sim.proc.pid), time.monotonic()
    await sleep(seconds)
    c1, w1 = cpu_seconds(sim.proc.pid), time.monotonic()
    r1 = sum(p.replies for p in pollers)
    h1 = sum(getattr(p, "heartbeats", 0) for p in pollers)
    for p in pollers:
        p.stop()
    return c1 - c0, w1 - w0, r1 - r0, h1 - h0


async def run_big_link(baud: int, seconds: float) -> float:
    sim = Simulator(big_link_toml(baud), "--tcp-base-port", "0")
    try:
        lines = sim.wait_ready()
        host, port = re.search(r"^endpoint: big -> tcp ([\d.]+):(\d+)", "\n".join(lines), re.M).groups()
        poller = Poller(256)
        await connectProtocol(TCP4ClientEndpoint(reactor, host, int(port)), poller)
        cpu, wall, exchanges, _ = await measure(sim, [poller], seconds)
        frac = cpu / wall
        print(f"256 CDTs / 24,576 meters, {baud} baud 8E1, physical timing: {exchanges} bulk reads "
              f"({exchanges / wall:.2f}/s, {poller.timeouts} timeouts) in {wall:.1f} s; "
              f"simulator CPU {cpu:.2f} s = {frac:.3f} core (bound {BOUND})")
        poller.transport.loseConnection()
        return frac
    finally:
        sim.stop()


class DtuConnection(Poller):
    def __init__(self, bench) -> None:
        super().__init__(bench.cdts)
        self.bench = bench
        self.heartbeats = 0
        self.uplink = None
        self.dtu_id = None

    def connectionMade(self) -> None:
        self.buf = b""

    def dataReceived(self, data: bytes) -> None:
        if self.uplink is None:
            self.buf += data
            fmt = "ddp" if self.buf[:1] == b"\x7b" else "usr" if b"\r\n" in self.buf else "plain"
            if fmt == "plain" and len(self.buf) < 6:
                return
            self.uplink = UplinkDecoder(fmt, known_ids=self.bench.ids if fmt == "plain" else ())
            data, self.buf = self.buf, b""
        for event in self.uplink.feed(data):
            if isinstance(event, Registered):
                self.dtu_id = event.dtu_id
                self.bench.registered.add(event.dtu_id)
                if self.uplink.fmt == "ddp":
                    self.transport.write(ddp_ack(event.dtu_id))
                self.bench.connections.append(self)
            elif isinstance(event, Heartbeat):
                self.heartbeats += 1
            elif isinstance(event, Data):
                self.bus_bytes(event.data)


class DtuBench(Factory):
    def __init__(self, n: int, cdts: int) -> None:
        self.cdts = cdts
        self.ids = [f"DTU{i:03}" for i in range(1, n + 1)]
        self.registered: set[str] = set()
        self.connections: list[DtuConnection] = []

    def buildProtocol(self, addr):
        return DtuConnection(self)


async def run_dtus(n: int, cdts: int, seconds: float) -> float:
    bench = DtuBench(n, cdts)
    listening = reactor.listenTCP(0, bench, interface="127.0.0.1", backlog=256)
    sim = Simulator(dtu_links_toml(n, cdts), "--supervisor", f"127.0.0.1:{listening.getHost().port}")
    try:
        sim.wait_ready()
        deadline = time.monotonic() + 30
        while len(bench.registered) < n and time.monotonic() < deadline:
            await sleep(0.1)
        if len(bench.registered) < n:
            raise SystemExit(f"only {len(bench.registered)} of {n} DTUs registered")
        cpu, wall, replies, heartbeats = await measure(sim, bench.connections, seconds)
        frac = cpu / wall
        print(f"{n} GPRS DTU links x {cdts} CDTs ({n * cdts * 96:,} meters), all registered, "
              f"{heartbeats} heartbeats, {replies} bulk reads ({replies / wall:.1f}/s) in {wall:.1f} s; "
              f"simulator CPU {cpu:.2f} s = {frac:.3f} core (bound {BOUND})")
        return frac
    finally:
        sim.stop()
        await listening.stopListening()


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window per run (default 20)")
    ap.add_argument("--links", type=int, default=100)
    ap.add_argument("--cdts", type=int, default=32)
    args = ap.parse_args(argv)
    worst = 0.0
    for baud in (2400, 19200):
        worst = max(worst, await run_big_link(baud, args.seconds))
    worst = max(worst, await run_dtus(args.links, args.cdts, args.seconds))
    verdict = "OK" if worst < BOUND else "OVER THE BOUND"
    print(f"worst: {worst:.3f} core = {worst / BOUND:.2f} x the {BOUND} bound: {verdict}")
    return 0 if worst < BOUND else 1


if __name__ == "__main__":
    result: list[int] = []

    def done(value):
        result.append(value)
        reactor.stop()

    def failed(failure):
        failure.printTraceback()
        result.append(1)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main(sys.argv[1:])).addCallbacks(done, failed))
    reactor.run()
    sys.exit(result[0] if result else 1)
