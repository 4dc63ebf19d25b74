"""Shared helpers of the engine tests: topology builders and a scripted fake bus."""

from __future__ import annotations

from dataclasses import dataclass, field

from st2000r.config.model import Cdt, Link, Repeater, Topology
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import FrameDecoder
from support.builders import build_cdt, build_link, build_topology
from support.clock import advance, fired


def make_cdt(address: int, modules=range(1, 4), repeater: str | None = None, inputs=(1, 2, 3)) -> Cdt:
    return build_cdt(address, modules, repeater=repeater, inputs=inputs, name=f"CDT {address}",
                     serial=lambda a, mod, i: f"{a:03}{mod:02}{i}".zfill(14), initial=lambda i: 1000 * i)


def make_link(
    cdts=(), *, baud=9600, turnaround_ms=20, repeaters=(), name="bus", parity="E", di_order="901F"
) -> Link:
    return build_link(name, sorted(cdts, key=lambda c: c.address), baud=baud, parity=parity,
                      turnaround_ms=turnaround_ms, di_order=di_order, repeaters=repeaters)


def make_topology(*links: Link) -> Topology:
    return build_topology(links, site="Test site", address="1 Test Road")


def two_level_repeaters() -> tuple[Repeater, ...]:
    return (Repeater("R1", None, 5), Repeater("R2", "R1", 7))


@dataclass
class FakeBus:
    """The master's ``write``: records every request frame, decoded."""

    writes: list[bytes] = field(default_factory=list)
    requests: list[m.Message] = field(default_factory=list)

    def __call__(self, data: bytes) -> None:
        self.writes.append(data)
        self.requests.extend(m.parse(f) for f in FrameDecoder().frames(data))

    @property
    def last(self) -> m.Message:
        return self.requests[-1]


def bulk_reply(req: m.BulkRead, counts=None, ser: int | None = None) -> m.BulkReadReply:
    counts = counts if counts is not None else [100 + i for i in range(req.count)]
    return m.BulkReadReply(
        address=req.address,
        ser=req.ser if ser is None else ser,
        first_channel=req.first_channel,
        channels=tuple(m.ChannelReading(c) for c in counts),
        di_order=req.di_order,
    )


# --------------------------------------------------------------------------- plans

try:
    from st2000r.config.model import ReadingPlan  # lands with the supervisor config sections
except ImportError:  # pragma: no cover - until config/ has it

    @dataclass(frozen=True, slots=True)
    class ReadingPlan:  # same fields as config.model.ReadingPlan
        name: str
        kind: str
        at: tuple = ()
        every_s: int | None = None
        links: tuple[str, ...] | None = None


def plan(name="full", kind="full", at=(), every_s=None, links=None) -> ReadingPlan:
    return ReadingPlan(name, kind, tuple(at), every_s, links)


# --------------------------------------------------------------------------- sink


@dataclass
class RecordingSink:
    """Records what a poller's link produced: the replies the master's reachability hands
    on (the point database's feed), the CDTs it reports silent, and the round ends."""

    bulk: list = field(default_factory=list)
    alarms: list = field(default_factory=list)
    status: list = field(default_factory=list)
    unreachable: list = field(default_factory=list)
    rounds: list = field(default_factory=list)
    outcomes: list = field(default_factory=list)

    @classmethod
    def on(cls, master) -> "RecordingSink":
        """A sink fed by ``master``'s reachability (replies of configured CDTs, silences)."""
        sink = cls()
        master.reachability.add_reply_listener(sink.on_reply)
        master.reachability.add_listener(sink.on_reachability)
        return sink

    def on_reply(self, cdt, outcome):
        self.outcomes.append(outcome)
        entry = (outcome.link, cdt, outcome.reply, outcome.at)
        if isinstance(outcome.reply, m.BulkReadReply):
            self.bulk.append(entry)
        elif isinstance(outcome.reply, m.AlarmsReply):
            self.alarms.append(entry)
        elif isinstance(outcome.reply, m.CdtStatus):
            self.status.append(entry)

    def on_reachability(self, link, cdt, answering, at, reason):
        if answering is False:
            self.unreachable.append((link, cdt, at))

    def on_round_done(self, link, plan, kind, started, ended):
        self.rounds.append((link, plan, kind, started, ended))

    def counts(self) -> dict[tuple[int, int], int]:
        """(cdt, channel) -> last count read."""
        out = {}
        for _, cdt, reply, _ in self.bulk:
            for k, ch in enumerate(reply.channels):
                out[(cdt, reply.first_channel + k)] = ch.count
        return out


# --------------------------------------------------------------------------- simulator rig


class SimRig:
    """The master wired back to back to the real simulator core (World + SimulatedBus)
    through one Clock.  The world keeps its own clock (``world_clock``), aged by
    :meth:`age` and frozen otherwise, so the ground truth does not move under a round."""

    def __init__(self, link: Link, *, seed=1, retries=2, physical_timing=True, age_days=30, **master_kw):
        from datetime import datetime

        from twisted.internet.task import Clock

        from st2000r.drivers.st2000r.master import BusMaster
        from st2000r.simulation.bus import SimulatedBus
        from st2000r.simulation.world import World

        self.link = link
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.world_clock = Clock()
        self.world = World(make_topology(link), self.world_clock, seed=seed,
                           start=datetime(2026, 3, 10, 12, 0))  # fmt: skip
        self.age(age_days * 86400)
        self.bus = SimulatedBus(self.world, link.name, self.clock, physical_timing=physical_timing)
        self.master = BusMaster(link, self.clock, retries=retries, **master_kw)
        self.written: list[tuple[float, bytes]] = []

        def write(data: bytes) -> None:
            self.written.append((self.clock.seconds(), data))
            self.bus.data_received(data)

        self.bus.connect(self.master.data_received)
        self.master.connection_made(write)

    def age(self, seconds: float) -> None:
        """Let ``seconds`` of world time pass at once (meters count on)."""
        self.world_clock.advance(seconds)

    def truth(self) -> dict[tuple[int, int], int]:
        """(cdt, channel) -> count from the world's ground truth."""
        snap = self.world.snapshot()
        out = {}
        for lw in snap["links"]:
            if lw["name"] != self.link.name:
                continue
            for cdt in lw["cdts"]:
                for meter in cdt["meters"]:
                    out[(cdt["address"], meter["channel"])] = meter["count"]
        return out

    def run(self, seconds: float) -> None:
        advance(self.clock, seconds)

    def run_until(self, d, limit: float = 3600.0):
        """Advance until Deferred ``d`` has fired (at most ``limit`` s); what it fired with."""
        return fired(self.clock, d, limit)
