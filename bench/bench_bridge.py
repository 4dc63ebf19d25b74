"""Modbus bridge: read throughput and p99 latency next to a stock pymodbus server, and the
point freshness of the register image.

Two servers, each a process of its own on 127.0.0.1, measured in the same run by the same
load generator (this process, one asyncio loop, raw Modbus TCP frames so the generator is
not what is measured):

- **bridge**: the supervisor's ``ModbusBridge`` (point database, event bus, register image,
  write policy) for the 12,288 meters of ``community.toml``;
- **stock**: a plain ``pymodbus`` ``ModbusTcpServer`` with a static ``SimDevice`` datastore
  of the same units and register ranges, no hooks.

For 1, 10 and 100 concurrent clients, each client sends a 125-register read (function 04)
as soon as the previous answer has arrived, for ``--seconds`` after a short warm-up.
Printed: requests/s and p99 latency of each, and the ratios bridge / stock (goal: 2x at 100
clients with p99 <= 10 ms; floor: not slower than stock).

**Freshness**: in a third process, the bridge with its point database; a full-round burst
of bulk read replies (128 CDTs x 96 channels = 12,288 meters) is fed to the point database
as fast as it takes them; for every meter, the delay from its reply being handed to the
point database to its registers holding the new value (the image consumer returns), p99
(bound 50 ms), idle and while 10 clients read.

With ``--variants`` a third server is measured in the same run: the bridge with pymodbus's
own encoder for the answers to register reads (``server.FAST_READS = False``), the price of
pymodbus doing every byte.

Usage: python bench/bench_bridge.py [--seconds 2] [--variants]     (about 30 s in all)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import subprocess
import sys
import time

COMMUNITY = "community.toml"
READ_COUNT = 125
CLIENTS = (1, 10, 100)
GOAL_RATIO = 2.0
GOAL_P99_MS = 10.0
FRESHNESS_BOUND_MS = 50.0


def _topology():
    from st2000r.config import example_path
    from st2000r.config.loader import loads

    text = example_path(COMMUNITY).read_text(encoding="utf-8")
    return loads(text + '\n[modbus]\ntcp = "127.0.0.1:0"\nmax_clients = 200\n')


def _bridge(reactor):
    from st2000r.bridge.service import ModbusBridge
    from st2000r.supervisor.eventbus import EventBus
    from st2000r.supervisor.points import PointDatabase

    topology = _topology()
    bus = EventBus(reactor)
    points = PointDatabase(topology, reactor, bus)
    return topology, bus, points, ModbusBridge(topology, reactor, bus, points, None)


# ------------------------------------------------------------------ servers (child processes)

def serve_stock() -> None:
    """A stock pymodbus TCP server, static datastore shaped like the bridge's."""
    import logging

    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    from st2000r.bridge.image import RegisterImage
    from st2000r.bridge.regmap import build_map

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    regmap, _ = build_map(_topology(), None)
    image = RegisterImage(regmap, None)
    devices = []
    for unit in sorted(regmap.units):
        inputs = [SimData(address=s, count=c, values=7, datatype=DataType.REGISTERS) for s, c in image.input_ranges(unit)]
        first, count = image.coil_range(unit)
        coils = [SimData(address=first, values=[False] * count, datatype=DataType.BITS)]
        discrete = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)]
        holding = [SimData(address=0, count=1, datatype=DataType.INVALID)]
        devices.append(SimDevice(id=unit, simdata=(coils, discrete, holding, inputs)))

    async def main() -> None:
        server = ModbusTcpServer(devices, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        print("port", server.transport.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.shutdown()

    asyncio.run(main())


def serve_bridge(pymodbus_encoder: bool = False) -> None:
    """The supervisor's bridge on Twisted's asyncio reactor, registers filled by one round
    (``pymodbus_encoder``: answers to register reads encoded by pymodbus's own encoder)."""
    from st2000r.simulation.cli import install_reactor

    reactor = install_reactor()
    if pymodbus_encoder:
        from st2000r.bridge import server

        server.FAST_READS = False
    _, _, points, bridge = _bridge(reactor)
    _burst(points, 1)
    bridge.startService()

    def listening(port: int) -> None:
        print("port", port, flush=True)
        reactor.addReader(_StdinClosed(reactor))

    bridge.when_listening().addCallback(listening)
    reactor.run()


class _StdinClosed:
    def __init__(self, reactor) -> None:
        self.reactor = reactor

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "stdin"

    def doRead(self) -> None:
        if not os.read(0, 4096):
            self.reactor.removeReader(self)
            self.reactor.stop()

    def connectionLost(self, reason) -> None:
        pass


def _replies(points, count: int):
    """``(link, cdt, BulkReadReply)`` for every CDT, counters ``count`` (two replies of 48)."""
    from st2000r.drivers.st2000r import messages as m

    for cp in points.cdts():
        for first in (1, 49):
            yield cp.link, cp.address, m.BulkReadReply(
                address=cp.address, first_channel=first,
                channels=tuple(m.ChannelReading(count + n) for n in range(48)))


def _burst(points, count: int, on_reply=None) -> None:
    now = time.time()
    for link, cdt, reply in list(_replies(points, count)):
        if on_reply is not None:
            on_reply(link, cdt, reply)
        points.on_bulk(link, cdt, reply, now)


def freshness() -> None:
    """The freshness run (its own process): p99 idle and under 10 reading clients."""
    from st2000r.simulation.cli import install_reactor

    reactor = install_reactor()
    from twisted.internet import defer

    from st2000r.bridge.aio import deferred
    from st2000r.bridge.image import RegisterImage

    _, _, points, bridge = _bridge(reactor)
    handed: dict[str, float] = {}
    delays: list[float] = []
    apply = bridge.image.apply

    def timed_apply(event) -> None:
        apply(event)
        t = handed.get(str(getattr(event, "meter", "")))
        if t is not None:
            delays.append(time.perf_counter() - t)

    bridge.image.apply = timed_apply
    assert isinstance(bridge.image, RegisterImage)
    _burst(points, 1)
    bridge.startService()

    def on_reply(link, cdt, reply) -> None:
        t = time.perf_counter()
        for n in range(reply.first_channel, reply.first_channel + len(reply.channels)):
            handed[f"{link}/{cdt}/{(n - 1) // 3 + 1}/{(n - 1) % 3 + 1}"] = t

    async def one(label: str, count: int, per_turn: bool) -> None:
        handed.clear()
        delays.clear()
        if per_turn:  # each reply its own reactor turn, back to back, as replies come off links
            for link, cdt, reply in list(_replies(points, count)):
                on_reply(link, cdt, reply)
                points.on_bulk(link, cdt, reply, time.time())
                await asyncio.sleep(0)
        else:  # the whole round handed over in one turn: the worst case
            _burst(points, count, on_reply)
        while len(delays) < len(handed):
            await asyncio.sleep(0.001)
        delays.sort()
        p99 = delays[int(len(delays) * 0.99)] * 1000
        print(f"freshness, {label}: {len(delays)} meters, p50 {delays[len(delays) // 2] * 1000:.1f} ms, "
              f"p99 {p99:.1f} ms, max {delays[-1] * 1000:.1f} ms (bound {FRESHNESS_BOUND_MS:.0f} ms, "
              f"ratio {p99 / FRESHNESS_BOUND_MS:.2f})", flush=True)

    async def main() -> None:
        port = await bridge.when_listening().asFuture(asyncio.get_running_loop())
        await one("one reply per turn, idle", 2, True)
        await one("whole round in one turn, idle", 3, False)
        stop = asyncio.Event()
        load = asyncio.ensure_future(_load(port, 10, 20.0, stop_event=stop))
        await asyncio.sleep(0.3)
        await one("one reply per turn, 10 clients reading", 4, True)
        await one("whole round in one turn, 10 clients reading", 5, False)
        stop.set()
        await load

    d = deferred(main())
    d.addErrback(lambda f: f.printTraceback())
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    defer.setDebugging(False)


# ------------------------------------------------------------------ load generator

class _Client(asyncio.Protocol):
    """One client: a 125-register read of unit 1, the next sent when the answer is complete."""

    def __init__(self, address: int, latencies: list[float], state: dict) -> None:
        self.request = struct.pack(">HHHBBHH", 0, 0, 6, 1, 4, address, READ_COUNT)
        self.answer_len = 9 + 2 * READ_COUNT
        self.latencies = latencies
        self.state = state
        self.buf = b""
        self.sent = 0.0
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) < self.answer_len:
            return
        if self.buf[7] != 4:
            raise RuntimeError(f"exception answer {self.buf!r}")
        self.buf = self.buf[self.answer_len:]
        if self.state["measuring"]:
            self.latencies.append(time.perf_counter() - self.sent)
        if not self.state["stop"]:
            self.send()

    def connection_lost(self, exc) -> None:
        self.state["lost"] += 1


async def _load(port: int, clients: int, seconds: float, warmup: float = 0.3,
                stop_event: asyncio.Event | None = None) -> tuple[float, float]:
    """``clients`` concurrent readers for ``seconds``: (requests/s, p99 latency in s)."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    state = {"measuring": False, "stop": False, "lost": 0}
    transports = []
    for i in range(clients):
        address = 1000 * (1 + i % 64)
        t, _ = await loop.create_connection(lambda a=address: _Client(a, latencies, state), "127.0.0.1", port)
        transports.append(t)
    await asyncio.sleep(warmup)
    state["measuring"] = True
    started = time.perf_counter()
    if stop_event is not None:
        await asyncio.wait_for(stop_event.wait(), seconds)
    else:
        await asyncio.sleep(seconds)
    state["measuring"] = False
    elapsed = time.perf_counter() - started
    state["stop"] = True
    for t in transports:
        t.close()
    if state["lost"] > 0 and len(latencies) == 0:
        raise RuntimeError("every client lost its connection")
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
    return len(latencies) / elapsed, p99


def _start(kind: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        raise RuntimeError(f"{kind} server did not start: {line!r}")
    return proc, int(line.split()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    parser.add_argument("--serve", choices=("stock", "bridge", "bridge-pymodbus-encoder"), help=argparse.SUPPRESS)
    parser.add_argument("--variants", action="store_true",
                        help="also measure the bridge with pymodbus's own encoder for register answers")
    parser.add_argument("--freshness-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "stock":
        serve_stock()
        return 0
    if args.serve in ("bridge", "bridge-pymodbus-encoder"):
        serve_bridge(args.serve == "bridge-pymodbus-encoder")
        return 0
    if args.freshness_only:
        freshness()
        return 0

    kinds = ("stock", "bridge") + (("bridge-pymodbus-encoder",) if args.variants else ())
    servers = {kind: _start(kind) for kind in kinds}
    ok = True
    try:
        for n in CLIENTS:
            figures = {}
            for kind, (_, port) in servers.items():
                figures[kind] = asyncio.run(_load(port, n, args.seconds))
            (s_rate, s_p99), (b_rate, b_p99) = figures["stock"], figures["bridge"]
            ratio = b_rate / s_rate
            line = (f"{n:3} clients: bridge {b_rate:8.0f} req/s p99 {b_p99 * 1000:6.2f} ms | "
                    f"stock {s_rate:8.0f} req/s p99 {s_p99 * 1000:6.2f} ms | "
                    f"throughput ratio {ratio:.2f}, p99 ratio {b_p99 / s_p99:.2f}")
            if n == CLIENTS[-1]:
                line += f" (goal {GOAL_RATIO:.1f} with p99 <= {GOAL_P99_MS:.0f} ms)"
            if args.variants:
                v_rate, v_p99 = figures["bridge-pymodbus-encoder"]
                line += (f"\n             bridge, pymodbus's encoder for register answers {v_rate:8.0f} req/s "
                         f"p99 {v_p99 * 1000:6.2f} ms | throughput ratio to stock {v_rate / s_rate:.2f}")
            print(line, flush=True)
            ok = ok and ratio >= 1.0
    finally:
        for proc, _ in servers.values():
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    fresh = subprocess.run([sys.executable, __file__, "--freshness-only"], capture_output=True, text=True,
                           timeout=60)
    sys.stdout.write(fresh.stdout)
    if fresh.returncode != 0:
        sys.stdout.write(fresh.stderr)
        return 1
    print("floor (bridge not slower than stock):", "held" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
