"""HTTP API: latency of a meter and of a filtered meters page at 24,576 meters with 50
concurrent clients, next to a bare twisted.web peer, and the delay of the event stream to
20 clients during a full round.

Roles, each a process of its own on 127.0.0.1 (2 cores shared by all):

- **server** (this process): the supervisor's point database, alarm manager, command
  dispatcher and ``ApiService`` for one link of 256 CDTs x 32 modules x 3 meters = 24,576
  meters, every meter read once, on Twisted's asyncio reactor; beside it, on another port,
  a **peer**: a bare twisted.web resource answering the same bytes as ``GET`` a meter with
  no routing, checks, login or JSON encoding -- what twisted.web alone costs;
- **load generator** (``bench_api.py load``): 50 keep-alive HTTP/1.1 connections on one
  asyncio loop, each with one request outstanding, for ``--seconds`` after a warm-up;
  latency of a request: from just before its write to the end of its answer; p50 and p99
  are nearest-rank percentiles of every request of the window;
- **stream clients** (``bench_api.py sse``): 20 ``GET /api/v1/events`` streams.

Measured: (1) ``GET /api/v1/meters/{id}`` of a random meter; (2) the filtered page
``GET /api/v1/meters?household=B2*&kind=gas&limit=100`` (households of CDTs 200-256: the
page scans the first ~19,000 meters of the index before its first match); (3) the peer
under the same load.  Printed: requests/s, p50, p99, the ratio of p99 to its bound (50 ms
for a meter, 100 ms for a page) and to the peer's p99.

(4) Fan-out: a full round's replies (512 bulk replies of 48 channels, every count new,
one reply every ``--round-seconds`` / 512) handed to the point database while 20 clients
stream; for every ``MeterChanged`` each client received: its arrival time minus the
event's ``at`` (when the point changed, the server's clock; same machine).  p50, p99, max
over all clients' events and the ratio of p99 to the 1 s bound (the console promises
updates within a second).

Usage: python bench/bench_api.py [--seconds 5] [--clients 50] [--sse 20] [--round-seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import sys
import time
from datetime import datetime

CDTS = 256
MODULES = 32
METERS = CDTS * MODULES * 3
PAGE = "/api/v1/meters?household=B2*&kind=gas&limit=100"
METER_BOUND_MS = 50.0
PAGE_BOUND_MS = 100.0
FANOUT_BOUND_MS = 1000.0


def topology_text() -> str:
    return f"""
[templates.flat]
channels = [
  {{ channel = 1, kind = "water",       pulse_constant = 10 }},
  {{ channel = 2, kind = "electricity", pulse_constant = 1 }},
  {{ channel = 3, kind = "gas",         pulse_constant = 10 }},
]
[[sites]]
name = "Bench Gardens"
address = "1 Bench Road"
[[sites.links]]
name = "bus"
kind = "serial"
device = "/dev/null"
[[sites.links.cdt_ranges]]
addresses = "1-{CDTS}"
modules = "1-{MODULES}"
template = "flat"
serial = "{{cdt:03}}{{module:02}}{{channel}}"
household = "B{{cdt:03}}-{{module:02}}"
[api]
listen = "127.0.0.1:0"
max_clients = 200
max_sse_clients = 64
"""


# --------------------------------------------------------------------------- clients


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * p / 100 + 0.999999) - 1))]


async def _one_client(port: int, paths: list[str], token: str, until: float, warm: float, out: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = random.Random(port ^ id(out))
    try:
        while time.monotonic() < until:
            path = paths[rng.randrange(len(paths))]
            start = time.monotonic()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"content-length: *(\d+)", head, re.I)
            if match is None:
                raise RuntimeError(f"no Content-Length in {head[:200]!r}")
            await reader.readexactly(int(match.group(1)))
            end = time.monotonic()
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(f"answer {head[:100]!r} to {path}")
            if start >= warm:
                out.append(end - start)
    finally:
        writer.close()


def load(port: int, clients: int, seconds: float, token: str, paths: list[str]) -> None:
    """The load generator: prints one JSON line of figures."""
    async def main() -> dict:
        lat: list[float] = []
        now = time.monotonic()
        warm, until = now + 1.0, now + 1.0 + seconds
        await asyncio.gather(*(_one_client(port, paths, token, until, warm, lat) for _ in range(clients)))
        return {"n": len(lat), "rps": len(lat) / seconds, "p50_ms": _percentile(lat, 50) * 1000,
                "p99_ms": _percentile(lat, 99) * 1000, "cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime}

    print(json.dumps(asyncio.run(main())), flush=True)


_AT = re.compile(r'"at":"([^"]+)"')


async def _stream(port: int, token: str, delays: list[float], counts: list[int], done: asyncio.Event,
                  expected: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/v1/events?types=MeterChanged HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n"
                 f"\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    counts[0] += 1
    seen = 0
    buf = b""
    while seen < expected:
        chunk = await reader.read(65536)
        if not chunk:
            break
        now = time.time()
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.startswith(b"data: {\"type\":\"MeterChanged\""):
                m = _AT.search(line.decode())
                delays.append(now - datetime.fromisoformat(m.group(1)).timestamp())
                seen += 1
    writer.close()
    counts[1] += 1
    if counts[1] == counts[2]:
        done.set()


def sse(port: int, clients: int, token: str, expected: int, timeout: float) -> None:
    """The stream clients: print ``connected`` once all are in, then one JSON line."""
    async def main() -> dict:
        delays: list[float] = []
        counts = [0, 0, clients]
        done = asyncio.Event()
        tasks = [asyncio.create_task(_stream(port, token, delays, counts, done, expected)) for _ in range(clients)]
        while counts[0] < clients:
            await asyncio.sleep(0.01)
        print("connected", flush=True)
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        for t in tasks:
            t.cancel()
        return {"events": len(delays), "expected": expected * clients, "p50_ms": _percentile(delays, 50) * 1000,
                "p99_ms": _percentile(delays, 99) * 1000, "max_ms": max(delays, default=float("nan")) * 1000,
                "cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime}

    print(json.dumps(asyncio.run(main())), flush=True)


# --------------------------------------------------------------------------- server


def serve(args: argparse.Namespace) -> int:
    from st2000r.supervisor.reactor import install_reactor

    reactor = install_reactor()
    from twisted.internet import defer, protocol
    from twisted.web import resource as web_resource, server as web_server

    from st2000r.config.loader import loads
    from st2000r.config.model import Operator
    from st2000r.drivers.st2000r import messages as m
    from st2000r.supervisor.alarms import AlarmManager
    from st2000r.supervisor.api.service import ApiService
    from st2000r.supervisor.api.sessions import hash_password
    from st2000r.supervisor.commands import CommandDispatcher
    from st2000r.supervisor.eventbus import EventBus
    from st2000r.supervisor.points import PointDatabase

    topology = loads(topology_text(), "<bench>")
    from dataclasses import replace

    topology = replace(topology, operators=(Operator("bench", "viewer", hash_password("bench")),))

    class Parts:
        pass

    parts = Parts()
    parts.bus = EventBus(reactor)
    parts.points = PointDatabase(topology, reactor, parts.bus)
    parts.alarms = AlarmManager(topology, reactor, parts.bus)
    parts.commands = CommandDispatcher(topology, reactor, {}, parts.points, parts.bus, alarms=parts.alarms)
    parts.historian = None
    api = ApiService(topology, reactor, parts)
    parts.points.startService()
    parts.alarms.startService()
    parts.points.on_link_state("bus", "connected")
    generation = [0]

    def replies():
        generation[0] += 1
        g = generation[0]
        for cdt in range(1, CDTS + 1):
            for first in (1, 49):
                yield cdt, m.BulkReadReply(meter_type=m.CDT_TYPE, address=f"{cdt:014d}", first_channel=first,
                                           channels=tuple(m.ChannelReading(g * 1000 + first + i, 0)
                                                          for i in range(48)))

    for cdt, reply in replies():  # every meter read once
        parts.points.on_bulk("bus", cdt, reply, reactor.seconds())
    api.startService()
    meter_paths = [f"/api/v1/meters/bus/{random.Random(i).randint(1, CDTS)}/{random.Random(-i).randint(1, MODULES)}/"
                   f"{i % 3 + 1}" for i in range(500)]
    sample = json.dumps(__import__("st2000r.supervisor.api.shapes", fromlist=["x"]).meter_json(
        parts.points.meter("bus/128/16/2"))).encode()

    class Peer(web_resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            return sample

    peer_port = reactor.listenTCP(0, web_server.Site(Peer()), interface="127.0.0.1").getHost().port
    results: dict[str, dict] = {}

    async def child(*argv: str) -> bytes:
        from twisted.internet import utils

        out, err, code = await utils.getProcessOutputAndValue(sys.executable, [__file__, *argv], env=None)
        if code != 0:
            raise RuntimeError(f"{argv[0]} child failed ({code}): {err.decode()[-2000:]}")
        return out

    class Lines(protocol.ProcessProtocol):
        def __init__(self) -> None:
            self.buf = b""
            self.ready = defer.Deferred()
            self.finished = defer.Deferred()
            self.last = b""

        def outReceived(self, data: bytes) -> None:
            self.buf += data
            if b"connected\n" in self.buf and not self.ready.called:
                self.ready.callback(None)

        def processEnded(self, reason) -> None:
            self.finished.callback(self.buf.decode().strip().splitlines()[-1])

    async def run() -> None:
        session = await api.sessions.login("bench", "bench", None)
        token = session.token
        common = [str(args.clients), str(args.seconds), token]
        for name, port, paths in (("meter", api.port, meter_paths), ("page", api.port, [PAGE]),
                                  ("peer", peer_port, ["/x"])):
            out = await child("load", str(port), *common, json.dumps(paths))
            results[name] = json.loads(out.decode().strip().splitlines()[-1])
        expected = CDTS * MODULES * 3
        proto = Lines()
        reactor.spawnProcess(proto, sys.executable, [sys.executable, __file__, "sse", str(api.port), str(args.sse),
                                                     token, str(expected), str(args.round_seconds + 60)], env=None)
        await proto.ready
        step = args.round_seconds / (CDTS * 2)
        start = reactor.seconds()
        for i, (cdt, reply) in enumerate(replies()):
            delay = start + i * step - reactor.seconds()
            if delay > 0:
                await deferLater(delay)
            parts.points.on_bulk("bus", cdt, reply, reactor.seconds())
        results["fanout"] = json.loads(await proto.finished)

    def deferLater(delay: float) -> defer.Deferred:
        from twisted.internet import task

        return task.deferLater(reactor, delay, lambda: None)

    status = [0]

    def done(result):
        if isinstance(result, __import__("twisted.python.failure", fromlist=["Failure"]).Failure):
            result.printTraceback(file=sys.stderr)
            sys.stderr.flush()
            status[0] = 1
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()).addBoth(done))
    reactor.run()
    if status[0]:
        return 1
    report(results, args)
    return 0


def report(r: dict[str, dict], args: argparse.Namespace) -> None:
    peer = r["peer"]
    print(f"{METERS:,} meters, {args.clients} concurrent clients, {args.seconds:g} s per measure "
          f"(1-minute load average {open('/proc/loadavg').read().split()[0]})")
    print(f"  peer (bare twisted.web, same bytes):  {peer['rps']:7.0f} req/s  p50 {peer['p50_ms']:6.1f} ms  "
          f"p99 {peer['p99_ms']:6.1f} ms")
    for name, bound, label in (("meter", METER_BOUND_MS, "GET a meter"),
                               ("page", PAGE_BOUND_MS, "GET a filtered page")):
        x = r[name]
        print(f"  {label + ':':37} {x['rps']:7.0f} req/s  p50 {x['p50_ms']:6.1f} ms  p99 {x['p99_ms']:6.1f} ms  "
              f"p99/bound {x['p99_ms'] / bound:.2f} (bound {bound:g} ms)  p99/peer {x['p99_ms'] / peer['p99_ms']:.2f}")
    f = r["fanout"]
    print(f"  event fan-out to {args.sse} streams during a full round in {args.round_seconds:g} s: "
          f"{f['events']:,}/{f['expected']:,} MeterChanged received; delay p50 {f['p50_ms']:.1f} ms  "
          f"p99 {f['p99_ms']:.1f} ms  max {f['max_ms']:.1f} ms  p99/bound {f['p99_ms'] / FANOUT_BOUND_MS:.2f} "
          f"(bound {FANOUT_BOUND_MS:g} ms)")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        port, clients, seconds, token, paths = sys.argv[2:7]
        load(int(port), int(clients), float(seconds), token, json.loads(paths))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "sse":
        port, clients, token, expected, timeout = sys.argv[2:7]
        sse(int(port), int(clients), token, int(expected), float(timeout))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--sse", type=int, default=20)
    p.add_argument("--round-seconds", type=float, default=10.0)
    return serve(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
