"""Shared helpers of the engine tests: topology builders and a scripted fake bus."""

from __future__ import annotations

from dataclasses import dataclass, field

from st2000r.config.model import (
    Cdt,
    Channel,
    LineSettings,
    Link,
    Meter,
    MeterKind,
    Module,
    Repeater,
    SerialEndpoint,
    Site,
    Topology,
)
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import FrameDecoder

KINDS = (MeterKind.WATER, MeterKind.ELECTRICITY, MeterKind.GAS)


def make_cdt(address: int, modules=range(1, 4), repeater: str | None = None, inputs=(1, 2, 3)) -> Cdt:
    mods = []
    for mod in modules:
        chans = tuple(
            Channel(i, Meter(KINDS[i - 1], 10 if i != 2 else 1, f"{address:03}{mod:02}{i}".zfill(14), 1000 * i, f"H{address}-{mod}"))
            for i in inputs
        )
        mods.append(Module(mod, chans))
    return Cdt(address, f"CDT {address}", repeater, tuple(mods))


def make_link(
    cdts=(), *, baud=9600, turnaround_ms=20, repeaters=(), name="bus", parity="E", di_order="901F"
) -> Link:
    return Link(
        name=name,
        kind="serial",
        endpoint=SerialEndpoint("/dev/null"),
        line=LineSettings(baud, 8, parity, 1),
        turnaround_ms=turnaround_ms,
        di_order=di_order,
        repeaters=tuple(repeaters),
        cdts=tuple(sorted(cdts, key=lambda c: c.address)),
    )


def make_topology(*links: Link) -> Topology:
    return Topology(sites=(Site("Test site", "1 Test Road", tuple(links)),), source="<test>")


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


def advance(clock, seconds: float) -> None:
    """Advance ``clock`` by ``seconds`` one scheduled call at a time, so every call runs at
    its own time (``Clock.advance`` alone jumps to the end before running what is due)."""
    end = clock.seconds() + seconds
    while True:
        calls = [c.getTime() for c in clock.getDelayedCalls()]
        nxt = min(calls) if calls else None
        if nxt is None or nxt > end:
            break
        clock.advance(max(0.0, nxt - clock.seconds()))
    clock.advance(max(0.0, end - clock.seconds()))
