"""Wire time of a bulk read over a real pseudo-terminal against the baud-rate model.

The simulator runs in this process with physical timing; the master side opens the printed
pty path, writes a 48-channel BulkRead and times (``time.perf_counter``) from its write to
the last byte of the BulkReadReply.  The model for an idle bus is

    (request bytes + reply bytes) x bits_per_byte / baud + turnaround

(8E1 = 11 bits per byte; no repeater on the path).  A pty moves bytes instantly, so the
measured time is the simulator's modelled wire time plus scheduling overhead.  Target:
measured / model within 1 +- 0.10.  Run:  python bench/bench_sim_wire_time.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import tty

from st2000r.simulation.cli import install_reactor

reactor = install_reactor()

from twisted.internet import defer  # noqa: E402

from st2000r.config.loader import loads  # noqa: E402
from st2000r.drivers.st2000r import messages as m  # noqa: E402
from st2000r.drivers.st2000r.frame import Frame, FrameDecoder, NEED_DATA  # noqa: E402
from st2000r.simulation.service import SimulatorOptions, SimulatorService  # noqa: E402

TARGET = 0.10
RUNS = ((2400, 5), (9600, 8), (19200, 8))

TOML = """
[templates.flat]
channels = [
  {{ channel = 1, kind = "water",       pulse_constant = 10 }},
  {{ channel = 2, kind = "electricity", pulse_constant = 1 }},
  {{ channel = 3, kind = "gas",         pulse_constant = 10 }},
]

[[sites]]
name = "Wire"
address = "1 Wire Road"

[[sites.links]]
name = "wire"
kind = "serial"
device = "/dev/ttyUSB0"
baud = {baud}
turnaround_ms = 20

[[sites.links.cdt_ranges]]
addresses = "1"
modules = "1-32"
template = "flat"
serial = "{{cdt:03}}{{module:02}}{{channel}}"
"""


class PtyMaster:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.decoder = FrameDecoder()
        self.waiter: defer.Deferred | None = None
        self.received = 0
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "bench-master"

    def connectionLost(self, reason) -> None:
        pass

    def doRead(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        now = time.perf_counter()
        self.received += len(data)
        self.decoder.feed(data)
        while (event := self.decoder.next_event()) is not NEED_DATA:
            if isinstance(event, Frame) and self.waiter is not None:
                d, self.waiter = self.waiter, None
                d.callback((now, event))

    async def exchange(self, request: bytes) -> tuple[float, Frame]:
        self.waiter = defer.Deferred()
        self.waiter.addTimeout(10, reactor)
        t0 = time.perf_counter()
        os.write(self.fd, request)
        t1, frame = await self.waiter
        return t1 - t0, frame

    def close(self) -> None:
        reactor.removeReader(self)
        os.close(self.fd)


async def run(baud: int, n: int) -> float:
    topology = loads(TOML.format(baud=baud))
    sim = SimulatorService(topology, SimulatorOptions(control_port=None, physical_timing=True), reactor)
    sim.startService()
    master = PtyMaster(sim.endpoint_services[0].path)
    try:
        link = topology.link("wire")
        request = m.encode(m.BulkRead(address=f"{1:014d}", first_channel=1, count=48))
        times, sizes = [], []
        for i in range(n + 1):
            before = master.received
            seconds, frame = await master.exchange(request)
            if i:  # the first exchange warms up
                times.append(seconds)
                sizes.append(master.received - before)
            assert isinstance(m.parse(frame), m.BulkReadReply)
        reply_bytes = statistics.mode(sizes)
        model = (len(request) + reply_bytes) * link.line.bits_per_byte / link.line.baud + link.turnaround_ms / 1000
        measured = statistics.median(times)
        ratio = measured / model
        verdict = "OK" if abs(ratio - 1) <= TARGET else "OFF TARGET"
        print(f"{baud:>6} baud 8E1: request {len(request)} B + reply {reply_bytes} B; model {model * 1000:8.1f} ms, "
              f"measured median {measured * 1000:8.1f} ms (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}, n={len(times)}); "
              f"ratio {ratio:.3f} {verdict}")
        return ratio
    finally:
        master.close()
        await defer.maybeDeferred(sim.stopService)


async def main() -> int:
    worst = 0.0
    for baud, n in RUNS:
        ratio = await run(baud, n)
        worst = max(worst, abs(ratio - 1))
    print(f"worst deviation from the model: {worst * 100:.1f} % (target {TARGET * 100:.0f} %)")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    result: list[int] = []

    def done(value):
        result.append(value)
        reactor.stop()

    def failed(failure):
        failure.printTraceback()
        result.append(1)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addCallbacks(done, failed))
    reactor.run()
    sys.exit(result[0] if result else 1)
