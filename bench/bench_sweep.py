"""Full-sweep time of a community link against the simulator over a real pseudo-terminal.

    python bench/bench_sweep.py [--baud 2400 9600] [--cdts 128] [--config FILE] [--link NAME]

For each baud rate: the simulator core (World + SimulatedBus, physical timing, real time)
serves the link on a pseudo-terminal pair (``simulation.endpoints.PtyEndpoint``); the
supervisor side opens the slave path with Twisted's ``SerialPort`` and runs ``BusMaster`` +
``Poller`` (one full round).  Printed per baud rate:

- sweep time (wall clock, from the round's start to ``on_round_done``);
- the wire bound: bytes actually on the wire both ways x bits per byte / baud, plus the
  mandated gap before every request, the configured turnaround and the repeater latency
  (both ways) of every transaction — nothing a master could avoid;
- the ratio sweep / bound (target <= 1.15);
- whether every value read equals the simulator's ground truth (the world's clock is held
  still during the sweep so that the truth does not move).

Then the bytes on the wire per meter for a full read, computed from encoded frames:
ST2000R bulk reads versus one CJ/T 188 ReadData per meter.

At 2400 baud a 128-CDT sweep takes about five minutes: ``--cdts N`` sweeps N CDTs spread
over the link's repeaters (the output says so).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.serialport import SerialPort

from st2000r.config.loader import load
from st2000r.config.model import Link, Site, Topology
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.master import BusMaster, BusProtocol
from st2000r.drivers.st2000r.poller import Poller, bulk_ranges
from st2000r.drivers.st2000r.timing import hops_latency_s
from st2000r.drivers.st2000r.units import M3, Quantity
from st2000r.simulation.bus import SimulatedBus
from st2000r.simulation.endpoints import PtyEndpoint
from st2000r.simulation.world import World

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class _Plan:  # the fields of config.model.ReadingPlan the poller reads
    name: str
    kind: str
    at: tuple = ()
    every_s: int | None = None
    links: tuple[str, ...] | None = None


class _Sink:
    def __init__(self) -> None:
        self.counts: dict[tuple[int, int], int] = {}
        self.unreachable: list[int] = []
        self.done: list[tuple[float, float]] = []

    def on_bulk(self, link, cdt, reply, at):
        for k, ch in enumerate(reply.channels):
            self.counts[(cdt, reply.first_channel + k)] = ch.count

    def on_alarms(self, *a):
        pass

    def on_cdt_status(self, *a):
        pass

    def on_cdt_unreachable(self, link, cdt, at):
        self.unreachable.append(cdt)

    def on_round_done(self, link, plan, kind, started, ended):
        self.done.append((started, ended))


class _FrozenClock:
    """The world's clock: set 30 days after commissioning, then standing still."""

    def __init__(self) -> None:
        self.t = 0.0

    def seconds(self) -> float:
        return self.t


def subset(link: Link, n: int) -> Link:
    """``n`` CDTs spread evenly over the link (all of them when n >= its CDT count)."""
    cdts = link.cdts
    if n >= len(cdts):
        return link
    step = len(cdts) / n
    return replace(link, cdts=tuple(cdts[math.floor(i * step)] for i in range(n)))


def bytes_per_meter(link: Link) -> tuple[float, float]:
    """(ST2000R bulk, CJ/T 188 per-meter) bytes on the wire per meter for a full read,
    request and reply both with 2 wake-up bytes, all channels quiet."""
    bulk = 0
    meters = 0
    for cdt in link.cdts:
        for first, count in bulk_ranges(cdt):
            req = m.BulkRead(address=cdt.bcd_address, first_channel=first, count=count)
            rep = m.BulkReadReply(address=cdt.bcd_address, first_channel=first,
                                  channels=tuple(m.ChannelReading(123456) for _ in range(count)))  # fmt: skip
            bulk += len(m.encode(req)) + len(m.encode(rep))
        meters += sum(1 for _ in cdt.meters())
    q = Quantity(12345678, M3)
    req = m.ReadData(meter_type=0x10, address="00000000012345")
    rep = m.CurrentData(meter_type=0x10, address="00000000012345", total=q, settlement=q,
                        time=datetime(2026, 3, 1, 12, 0), status=m.MeterStatus.of())  # fmt: skip
    cjt = len(m.encode(req)) + len(m.encode(rep))
    return bulk / meters, float(cjt)


@defer.inlineCallbacks
def sweep(reactor, link: Link, baud: int, seed: int):
    link = replace(link, line=replace(link.line, baud=baud))
    topo = Topology(sites=(Site("bench", "", (link,)),), source="<bench>")
    world_clock = _FrozenClock()
    world = World(topo, world_clock, seed=seed, start=datetime(2026, 3, 1, 0, 0))
    world_clock.t = 30 * 86400.0  # a month of consumption, then the truth holds still
    bus = SimulatedBus(world, link.name, reactor, physical_timing=True)
    endpoint = PtyEndpoint(link.name, bus, reactor)
    endpoint.startService()
    master = BusMaster(link, reactor)
    port = SerialPort(BusProtocol(master), endpoint.path, reactor, baudrate=baud)
    sink = _Sink()
    poller = Poller(link, master, reactor, sink, (_Plan("full", "full"),))
    # let the port settle
    yield task.deferLater(reactor, 0.2, lambda: None)
    cpu0 = time.process_time()
    result = yield poller.run_plan_now("full")
    cpu = time.process_time() - cpu0
    port.loseConnection()
    endpoint.stopService()
    elapsed = result.ended - result.started
    t = master.timing
    nbytes = bus.stats.bytes_in + bus.stats.bytes_out
    requests = master.stats.requests
    latency = 0.0
    for cdt in link.cdts:
        latency += 2 * hops_latency_s(link, cdt.repeater) * len(bulk_ranges(cdt))
    bound = t.wire_time(nbytes) + requests * (t.gap_s + t.turnaround_s) + latency
    truth = {}
    for lw in world.snapshot()["links"]:
        for c in lw["cdts"]:
            for meter in c["meters"]:
                truth[(c["address"], meter["channel"])] = meter["count"]
    correct = sum(1 for k, v in truth.items() if sink.counts.get(k) == v)
    return {
        "baud": baud,
        "cdts": len(link.cdts),
        "meters": len(truth),
        "elapsed": elapsed,
        "bound": bound,
        "wire": t.wire_time(nbytes),
        "gaps": requests * t.gap_s,
        "turnaround": requests * t.turnaround_s,
        "latency": latency,
        "bytes": nbytes,
        "requests": requests,
        "replies": master.stats.replies,
        "retries": master.stats.retries,
        "correct": correct,
        "unreachable": len(sink.unreachable),
        "cpu": cpu,
    }


@defer.inlineCallbacks
def main(reactor, argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baud", type=int, nargs="+", default=[2400, 9600])
    ap.add_argument("--cdts", type=int, default=128, help="CDTs to sweep, spread over the link (default 128)")
    ap.add_argument("--config", default=str(ROOT / "config" / "examples" / "community.toml"))
    ap.add_argument("--link", default=None, help="link name (default: the first link)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    topo = load(args.config)
    full = topo.link(args.link) if args.link else next(topo.links())
    link = subset(full, args.cdts)
    meters = link.meter_count()
    note = "" if len(link.cdts) == len(full.cdts) else f" (subset: {len(link.cdts)} of {len(full.cdts)} CDTs, spread over the repeaters)"
    print(f"link {full.name} of {args.config}: {len(link.cdts)} CDTs, {meters} meters{note}")
    print(f"line {full.line.bytesize}{full.line.parity}{full.line.stopbits} ({full.line.bits_per_byte} bits/byte), "
          f"turnaround {full.turnaround_ms} ms, repeaters {', '.join(f'{r.name}={r.latency_ms} ms' for r in full.repeaters) or 'none'}")  # fmt: skip
    print()
    print(f"{'baud':>6} {'sweep s':>9} {'bound s':>9} {'ratio':>6}  {'wire':>8} {'gaps':>6} {'turn':>6} {'rep.lat':>7}  {'bytes':>8} {'req':>5} {'retry':>5}  values")
    for baud in args.baud:
        r = yield sweep(reactor, link, baud, args.seed)
        ok = "all correct" if r["correct"] == r["meters"] else f"{r['correct']}/{r['meters']} correct"
        print(
            f"{r['baud']:>6} {r['elapsed']:>9.2f} {r['bound']:>9.2f} {r['elapsed'] / r['bound']:>6.3f}  "
            f"{r['wire']:>8.2f} {r['gaps']:>6.2f} {r['turnaround']:>6.2f} {r['latency']:>7.2f}  "
            f"{r['bytes']:>8} {r['requests']:>5} {r['retries']:>5}  {ok}"
            + (f", {r['unreachable']} CDTs unreachable" if r["unreachable"] else "")
            + f"  (cpu {r['cpu']:.1f} s)"
        )
        if len(link.cdts) < len(full.cdts):
            est = r["elapsed"] * len(full.cdts) / len(link.cdts)
            print(f"{'':>6} ~{est:.0f} s for all {len(full.cdts)} CDTs at this ratio (extrapolated, not measured)")
    bulk, cjt = bytes_per_meter(full)
    print()
    print(f"bytes on the wire per meter, full read of {full.name} ({full.meter_count()} meters):")
    print(f"  ST2000R BulkRead (ranges of <= 48 channels): {bulk:6.2f}")
    print(f"  CJ/T 188 ReadData, one per meter:            {cjt:6.2f}   ({cjt / bulk:.1f}x)")


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
