"""Builders shared by the simulator core tests (no tests here).

Topologies are made straight from the config dataclasses so that the tests do not depend on
the example files; ``community`` mirrors config/examples/community.toml's size.
"""

from __future__ import annotations

from datetime import datetime

from twisted.internet.task import Clock

from support.builders import build_cdt, build_link, build_topology
from st2000r.config.model import Cdt, Link, Repeater, Topology
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import FrameDecoder
from st2000r.simulation.world import World

START = datetime(2026, 3, 2, 6, 0, 0)  # a Monday morning


def meter_serial(link_no: int, cdt: int, module: int, channel: int) -> str:
    return f"{link_no:02d}{cdt:06d}{module:03d}{channel:03d}"


def make_cdt(address: int, modules: int = 2, repeater: str | None = None, link_no: int = 1, initial: int = 0) -> Cdt:
    return build_cdt(address, range(1, modules + 1), repeater=repeater, name=f"cdt-{address}",
                     serial=lambda a, mod, ch: meter_serial(link_no, a, mod, ch), initial=lambda ch: initial)


def make_link(
    name: str = "bus-1",
    cdts: tuple[Cdt, ...] | None = None,
    repeaters: tuple[Repeater, ...] = (),
    baud: int = 2400,
    turnaround_ms: int = 20,
    parity: str = "E",
) -> Link:
    if cdts is None:
        cdts = (make_cdt(1), make_cdt(2), make_cdt(3))
    return build_link(name, cdts, repeaters=repeaters, baud=baud, parity=parity, turnaround_ms=turnaround_ms)


def make_topology(*links: Link) -> Topology:
    return build_topology(links or (make_link(),))


def repeater_topology() -> Topology:
    """CDT 1 on the bus; 2, 3 behind r1; 4 behind r2 (child of r1); 5 behind r3."""
    reps = (Repeater("r1", None, 30), Repeater("r2", "r1", 20), Repeater("r3", None, 10))
    cdts = (make_cdt(1), make_cdt(2, repeater="r1"), make_cdt(3, repeater="r1"),
            make_cdt(4, repeater="r2"), make_cdt(5, repeater="r3"))  # fmt: skip
    return make_topology(make_link(cdts=cdts, repeaters=reps))


def community(cdts: int = 128, modules: int = 32) -> Topology:
    return make_topology(make_link(cdts=tuple(make_cdt(a, modules) for a in range(1, cdts + 1)), baud=9600))


def make_world(topology: Topology | None = None, *, seed: int = 7, speedup: float = 1.0, clock: Clock | None = None):
    clock = clock or Clock()
    return World(topology or make_topology(), clock, seed=seed, speedup=speedup, start=START), clock


def cdt_addr(address: int) -> str:
    return f"{address:014d}"


class Master:
    """The codec in the master role over a SimulatedBus, driven by a Clock."""

    def __init__(self, bus, clock: Clock) -> None:
        self.bus = bus
        self.clock = clock
        self.received = bytearray()
        self.writes: list[tuple[float, bytes]] = []
        bus.connect(self._on_reply)

    def _on_reply(self, data: bytes) -> None:
        self.writes.append((self.clock.seconds(), data))
        self.received += data

    def send(self, msg: m.Message) -> bytes:
        wire = m.encode(msg)
        self.bus.data_received(wire)
        return wire

    def ask(self, msg: m.Message, wait: float = 5.0, step: float = 0.01, world=None) -> list[m.Message]:
        """Send ``msg`` and advance the clock ``wait`` seconds; the parsed replies.

        With ``world`` (and a bus without physical timing, which answers at once) the
        ground truth at the instant the devices answered is kept in ``self.truth``."""
        self.received.clear()
        self.send(msg)
        if world is not None:
            self.truth = world.snapshot()
        steps = int(wait / step)
        for _ in range(steps):
            self.clock.advance(step)
        return [m.parse(f) for f in FrameDecoder().frames(bytes(self.received))]

    def one(self, msg: m.Message, wait: float = 5.0, world=None) -> m.Message:
        replies = self.ask(msg, wait, world=world)
        assert len(replies) == 1, replies
        return replies[0]
