"""Modbus bridge: read throughput and p99 latency next to a stock pymodbus server, and the
point freshness of the register image as a Modbus TCP client sees it.

Every role is a process of its own on 127.0.0.1 (2 cores are shared by all of them):

- **bridge**: the supervisor's ``ModbusBridge`` (point database, event bus, register image,
  write policy) for the 12,288 meters of ``community.toml``, on Twisted's asyncio reactor;
- **stock**: a plain ``pymodbus`` ``ModbusTcpServer`` with a static ``SimDevice`` datastore
  of the same units and register ranges, no hooks;
- **load generator** (``bench/bridge_clients.py load``): raw sockets on one ``epoll``, so the
  client side costs less per request than either server and is not what is measured (its
  CPU time is printed beside each figure).

**Throughput and latency.**  For 1, 10 and 100 concurrent clients, each client has one
125-register read (function 04) outstanding, the next sent as soon as the answer is
complete, for ``--seconds`` after a warm-up; stock and bridge in turn, each with a fresh
load generator.  Latency of a request: from just before its ``send`` to the ``epoll``
wake-up that delivered its answer; p99: the nearest-rank 99th percentile of every request
of the window (all clients together).  Printed: requests/s and p99 of each, the ratios
bridge / stock, both processes' CPU use, and the 1-minute load average (the machine is
shared).  Goal: 2x stock at 100 clients with p99 <= 10 ms; floor: not slower than stock.
With 100 clients each waiting for its answer, p99 cannot be below about 100 x the
server's time per request.

**Freshness** (a fourth process, the bridge with its point database, driven over stdin): a
full-round burst of bulk read replies (128 CDTs x 2 replies of 48 channels = 12,288 meters,
every count new) handed to the point database either one reply per reactor turn, back to
back (as replies come off links), or the whole round in one turn (the worst case).  For
every meter: from ``time.monotonic()`` just before its reply is handed to the point
database (before any queueing of ours) to the ``epoll`` wake-up at which a Modbus TCP
client (``bridge_clients.py watch``, a process sweeping every meter's registers
continuously) first received the new value; p50, p99, max, and the ratio of p99 to the
50 ms bound.  Also printed: the same delay to the register being written in-process (the
image's consumer), the watcher's sweep period (a client cannot see a value sooner than its
next read), and, for the one-turn burst, how long the point database alone held the reactor
for the round before any consumer was attached (no consumer can show a value before that
turn ends).  Idle, and with 10 clients reading throughout.

With ``--variants`` a third server is measured in the same run: the bridge with pymodbus's
own PDU classes and encoder for the answers to register reads (``server.FAST_READS = False``).

Usage: python bench/bench_bridge.py [--seconds 2] [--variants] [--only throughput|freshness]
(about 60 s in all).  Exit status 1 when the floor (not slower than stock) is missed; the
goal and the freshness bound are reported as held or MISSED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    (``pymodbus_encoder``: answers to register reads by pymodbus's classes and encoder)."""
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
        reactor.addReader(_Stdin(reactor, lambda line: None))

    bridge.when_listening().addCallback(listening)
    reactor.run()


class _Stdin:
    """Lines from the parent on stdin, each handed to ``on_line``; the reactor stops at EOF."""

    def __init__(self, reactor, on_line) -> None:
        self.reactor = reactor
        self.on_line = on_line
        self.buf = b""

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "stdin"

    def doRead(self) -> None:
        data = os.read(0, 4096)
        if not data:
            self.reactor.removeReader(self)
            self.reactor.stop()
            return
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.on_line(line.decode())

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


def _burst(points, count: int) -> None:
    now = time.time()
    for link, cdt, reply in list(_replies(points, count)):
        points.on_bulk(link, cdt, reply, now)


def serve_freshness() -> None:
    """The freshness server: the bridge and its point database.  ``burst COUNT MODE`` on
    stdin hands a full round to the point database (MODE ``turn``: one reply per reactor
    turn; ``round``: the whole round in one turn); ``report PATH``, once the image has taken
    it all, writes to PATH (then prints ``done``) per meter in map order when its reply was
    handed over and when the image wrote it (``time.monotonic()``), and how long the
    handing-over took.  Nothing is written during a burst, so the watcher is not delayed."""
    from st2000r.simulation.cli import install_reactor

    reactor = install_reactor()
    from twisted.internet import defer

    from st2000r.bridge.aio import deferred
    from st2000r.supervisor.events import MeterChanged, MeterId

    _, _, points, bridge = _bridge(reactor)
    regmap = bridge.map
    index = {mid: i for i, mid in enumerate(regmap.meters)}
    by_id = {MeterId.parse(mid): i for mid, i in index.items()}
    n = len(index)
    arrival: list[float | None] = [None] * n
    written: list[float | None] = [None] * n

    def prepared(count: int):
        out = []
        for link, cdt, reply in _replies(points, count):
            first = reply.first_channel
            out.append((link, cdt, reply, [index[f"{link}/{cdt}/{(c - 1) // 3 + 1}/{(c - 1) % 3 + 1}"]
                                           for c in range(first, first + len(reply.channels))]))
        return out

    _burst(points, 1)
    # the point database alone, the whole round in one turn, before the bridge is attached (median of 3)
    alone = []
    for count in (2, 3, 4):
        replies = prepared(count)
        t0 = time.monotonic()
        for link, cdt, reply, _ in replies:
            points.on_bulk(link, cdt, reply, time.time())
        alone.append((time.monotonic() - t0) * 1000)
    alone_ms = sorted(alone)[1]

    apply = bridge.image.apply

    def timed(event) -> None:  # the image's consumer, timed (a call and a monotonic() per event)
        apply(event)
        if type(event) is MeterChanged:
            i = by_id.get(event.meter)
            if i is not None:
                written[i] = time.monotonic()

    bridge.image.apply = timed  # before the service attaches the consumer
    bridge.startService()

    handed_ms = [0.0]

    async def burst(count: int, mode: str) -> None:
        for i in range(n):
            arrival[i] = written[i] = None
        replies = prepared(count)
        t_start = time.monotonic()
        for link, cdt, reply, meters in replies:
            t = time.monotonic()
            for i in meters:
                arrival[i] = t
            points.on_bulk(link, cdt, reply, time.time())
            if mode == "turn":
                await asyncio.sleep(0)
        handed_ms[0] = (time.monotonic() - t_start) * 1000

    async def report(path: str) -> None:
        await bridge._consumer.drained().asFuture(asyncio.get_running_loop())
        with open(path, "w") as f:
            json.dump({"arrival": arrival, "written": written, "handed_ms": handed_ms[0], "alone_ms": alone_ms}, f)
        print("done", flush=True)

    def on_line(line: str) -> None:
        command, *args = line.split()
        coro = burst(int(args[0]), args[1]) if command == "burst" else report(args[0])
        deferred(coro).addErrback(lambda f: f.printTraceback())

    def listening(port: int) -> None:
        print("port", port, flush=True)
        reactor.addReader(_Stdin(reactor, on_line))

    bridge.when_listening().addCallback(listening)
    reactor.run()
    defer.setDebugging(False)


# ------------------------------------------------------------------ the parent: processes and figures

CLIENTS_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bridge_clients.py")


def _start(kind: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        raise RuntimeError(f"{kind} server did not start: {line!r}")
    return proc, int(line.split()[1])


def p99(values: list[float]) -> float:
    """The nearest-rank 99th percentile: the smallest value with at least 99 % of the values
    at or below it."""
    ordered = sorted(values)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]


def _measure(proc: subprocess.Popen, port: int, clients: int, seconds: float) -> dict:
    """One load generator process against one server: rate, p99, CPU shares."""
    out = subprocess.run([sys.executable, CLIENTS_PY, "load", str(port), str(clients), str(seconds),
                          "--server-pid", str(proc.pid)], capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr}")
    result = json.loads(out.stdout)
    return {"rate": result["requests"] / result["seconds"], "p99": p99(result["latencies_us"]) / 1000,
            "server_cpu": result["server_cpu_s"] / result["seconds"], "client_cpu": result["cpu_s"] / result["seconds"]}


def throughput(seconds: float, variants: bool) -> bool:
    kinds = ("stock", "bridge") + (("bridge-pymodbus-encoder",) if variants else ())
    servers = {kind: _start(kind) for kind in kinds}
    ok = True
    try:
        for n in CLIENTS:
            f = {kind: _measure(proc, port, n, seconds) for kind, (proc, port) in servers.items()}
            s, b = f["stock"], f["bridge"]
            ratio = b["rate"] / s["rate"]
            line = (f"{n:3} clients: bridge {b['rate']:7.0f} req/s p99 {b['p99']:6.2f} ms | "
                    f"stock {s['rate']:7.0f} req/s p99 {s['p99']:6.2f} ms | throughput ratio {ratio:.2f}, "
                    f"p99 ratio {b['p99'] / s['p99']:.2f} | CPU bridge {b['server_cpu']:.2f} stock "
                    f"{s['server_cpu']:.2f} load generator {b['client_cpu']:.2f}/{s['client_cpu']:.2f} | "
                    f"load average {os.getloadavg()[0]:.2f}")
            if n == CLIENTS[-1]:
                held = ratio >= GOAL_RATIO and b["p99"] <= GOAL_P99_MS
                line += (f"\n             goal at {n} clients (2.0x stock, p99 <= {GOAL_P99_MS:.0f} ms): "
                         f"{'held' if held else 'MISSED'}")
            if variants:
                v = f["bridge-pymodbus-encoder"]
                line += (f"\n             bridge, pymodbus's classes and encoder for register answers "
                         f"{v['rate']:7.0f} req/s p99 {v['p99']:6.2f} ms | throughput ratio to stock "
                         f"{v['rate'] / s['rate']:.2f}")
            print(line, flush=True)
            ok = ok and ratio >= 1.0
    finally:
        for proc, _ in servers.values():
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return ok


def _percentiles(delays: list[float]) -> tuple[float, float, float]:
    ordered = sorted(delays)
    return ordered[len(ordered) // 2], p99(ordered), ordered[-1]


def freshness() -> bool:
    """The four freshness figures; whether p99 <= the bound in each."""
    import tempfile

    server, port = _start("freshness")
    report = os.path.join(tempfile.mkdtemp(prefix="bench-bridge-"), "timing.json")
    held = {}
    count = 5
    try:
        for loaded in (False, True):
            load = None
            if loaded:
                load = subprocess.Popen([sys.executable, CLIENTS_PY, "load", str(port), "10", "600"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                for mode, label in (("turn", "one reply per turn"), ("round", "whole round in one turn")):
                    watcher = subprocess.Popen([sys.executable, CLIENTS_PY, "watch", str(port)],
                                               stdout=subprocess.PIPE, text=True)
                    if watcher.stdout.readline().strip() != "ready":
                        raise RuntimeError("the watcher did not start")
                    server.stdin.write(f"burst {count} {mode}\n")
                    server.stdin.flush()
                    count += 1
                    seen = json.loads(watcher.stdout.readline())
                    watcher.wait(30)
                    server.stdin.write(f"report {report}\n")
                    server.stdin.flush()
                    if server.stdout.readline().strip() != "done":
                        raise RuntimeError("the freshness server did not report")
                    with open(report) as f:
                        timing = json.load(f)
                    arrival, written = timing["arrival"], timing["written"]
                    missing = sum(t is None for t in seen["seen"])
                    delays = [(t - a) * 1000 for t, a in zip(seen["seen"], arrival) if t is not None]
                    inside = [(w - a) * 1000 for w, a in zip(written, arrival) if w is not None]
                    p50, p99_, top = _percentiles(delays)
                    sweeps = sorted(seen["sweeps_ms"])
                    name = f"{label}, {'10 clients reading' if loaded else 'idle'}"
                    print(f"freshness, {name}: {len(delays)} meters seen by a Modbus TCP client"
                          f"{f' ({missing} NEVER SEEN)' if missing else ''}: p50 {p50:.1f} ms, p99 {p99_:.1f} ms, "
                          f"max {top:.1f} ms (bound {FRESHNESS_BOUND_MS:.0f} ms, ratio {p99_ / FRESHNESS_BOUND_MS:.2f})"
                          f"\n    register written in-process: p50 {_percentiles(inside)[0]:.1f} ms, p99 "
                          f"{p99(inside):.1f} ms; the client's sweep of all meters: p50 {sweeps[len(sweeps) // 2]:.1f} "
                          f"ms, max {sweeps[-1]:.1f} ms; round handed over in {timing['handed_ms']:.0f} ms"
                          + (f" (the point database alone, no consumer attached: {timing['alone_ms']:.0f} ms in one "
                             "turn, median of 3)" if mode == "round" else "")
                          + f"; load average {os.getloadavg()[0]:.2f}", flush=True)
                    held[name] = not missing and p99_ <= FRESHNESS_BOUND_MS
            finally:
                if load is not None:
                    load.terminate()
                    load.wait(10)
    finally:
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    for name, ok in held.items():
        print(f"freshness bound ({FRESHNESS_BOUND_MS:.0f} ms p99), {name}: {'held' if ok else 'MISSED'}")
    return all(held.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    parser.add_argument("--serve", choices=("stock", "bridge", "bridge-pymodbus-encoder", "freshness"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--variants", action="store_true",
                        help="also measure the bridge with pymodbus's classes and encoder for register answers")
    parser.add_argument("--only", choices=("throughput", "freshness"), help="measure only one of the two")
    args = parser.parse_args()
    if args.serve == "stock":
        serve_stock()
        return 0
    if args.serve in ("bridge", "bridge-pymodbus-encoder"):
        serve_bridge(args.serve == "bridge-pymodbus-encoder")
        return 0
    if args.serve == "freshness":
        serve_freshness()
        return 0
    ok = True
    if args.only != "freshness":
        ok = throughput(args.seconds, args.variants)
        print("floor (bridge not slower than stock):", "held" if ok else "MISSED", flush=True)
    if args.only != "throughput":
        freshness()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
