"""What ``st2000r demo`` measures the supervisor against: the simulator's ground truth and
the wire's bound.

**The read window.**  A meter's value is sampled by the simulator while its bulk read is on
the bus: after the master wrote the request, before the reply reached the supervisor.  The
demo fetches ground truth before the round, every ``--truth-every`` seconds during it and
after it; a reading counts as equal when the simulator's reading in the latest snapshot
received *before the request was written* (before the previous reply on the link arrived:
the bus is half-duplex, one transaction at a time) is <= the value <= the reading in the
first snapshot requested *after the reply arrived*.  Meter readings never decrease, so the
check is exact whatever the world does between the two snapshots; its window is the time
between them (the summary gives the widest: up to about twice ``--truth-every``).  A
snapshot costs the simulator about a second of CPU (4.5 MB of JSON), during which a reply on
its bus comes late: the summary counts the snapshots taken during the round and the master's
errors while one was being taken; ``--truth-every 0`` fetches only before and after the
round (the window is then the round).

The wire bound (:func:`wire_bound_s`) is the least time a full round can take: every bulk
read's request and full-length reply on the wire, the mandated gap and turnaround per
transaction and the repeaters' latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "MeterKey",
    "Snapshot",
    "TruthCheck",
    "bytes_per_meter_cjt188",
    "truth_table",
    "unread_by_range",
    "wire_bound_s",
]

MISMATCHES_SHOWN = 5

# --------------------------------------------------------------------------- wire figures


def wire_bound_s(link: Any) -> tuple[float, int, int, float]:
    """``(seconds, bytes, transactions, latency_s)`` of a full round of ``link`` at the least:
    every bulk read's request and full-length reply (2 wake-up bytes each) on the wire, plus
    the mandated gap and the turnaround per transaction, plus ``latency_s``, the repeater
    latency both ways summed over the transactions."""
    from st2000r.drivers.st2000r import messages as m
    from st2000r.drivers.st2000r.poller import bulk_ranges
    from st2000r.drivers.st2000r.timing import BusTiming, hops_latency_s

    timing = BusTiming.for_link(link)
    seconds_ = latency = 0.0
    nbytes = transactions = 0
    for cdt in link.cdts:
        hops = hops_latency_s(link, cdt.repeater)
        for first, count in bulk_ranges(cdt):
            req = m.BulkRead(address=cdt.bcd_address, first_channel=first, count=count)
            rep = m.BulkReadReply(address=cdt.bcd_address, first_channel=first,
                                  channels=tuple(m.ChannelReading(0) for _ in range(count)))
            size = len(m.encode(req)) + len(m.encode(rep))
            nbytes += size
            transactions += 1
            latency += 2 * hops
            seconds_ += timing.wire_time(size) + timing.gap_s + timing.turnaround_s + 2 * hops
    return seconds_, nbytes, transactions, latency


def bytes_per_meter_cjt188() -> int:
    """Bytes on the wire to read one meter with CJ/T 188 ReadData (request + reply)."""
    from st2000r.drivers.st2000r import messages as m
    from st2000r.drivers.st2000r.units import M3, Quantity

    q = Quantity(12345678, M3)
    req = m.ReadData(meter_type=0x10, address="00000000012345")
    rep = m.CurrentData(meter_type=0x10, address="00000000012345", total=q, settlement=q,
                        time=datetime(2026, 3, 1, 12, 0), status=m.MeterStatus.of())
    return len(m.encode(req)) + len(m.encode(rep))



def unread_by_range(link: Any) -> dict[tuple[int, int], set[tuple[int, int]]]:
    """``(cdt, first channel) -> {(cdt, channel), ...}``: the meters of each bulk range."""
    from st2000r.drivers.st2000r.messages import channel_number
    from st2000r.drivers.st2000r.poller import bulk_ranges

    out: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for cdt in link.cdts:
        ranges = bulk_ranges(cdt)
        for module, channel, _ in cdt.meters():
            number = channel_number(module, channel)
            first = next(f for f, count in ranges if f <= number < f + count)
            out.setdefault((cdt.address, first), set()).add((cdt.address, number))
    return out


# --------------------------------------------------------------------------- ground truth


MeterKey = tuple[str, int, int]  # link, CDT address, CDT channel 1..96


def truth_table(doc: dict) -> dict[MeterKey, int]:
    """``(link, cdt, channel) -> reading`` (base units) of a ``/truth`` answer."""
    out: dict[MeterKey, int] = {}
    for lw in doc["links"]:
        name = lw["name"]
        for cdt in lw["cdts"]:
            address = cdt["address"]
            for meter in cdt["meters"]:
                out[(name, address, meter["channel"])] = meter["reading"]
    return out


@dataclass(slots=True)
class Snapshot:
    """One ``/truth``: requested at ``sent``, answered at ``received`` (the demo's clock);
    the simulator took it somewhere between."""

    sent: float
    received: float
    table: dict[MeterKey, int]


@dataclass(slots=True)
class _Pending:
    before: Snapshot
    arrived: float
    readings: tuple


@dataclass(slots=True)
class TruthCheck:
    """Readings checked against ground truth snapshots that bracket their read (see the
    module docstring).  Feed it :meth:`snapshot` (in the order they were received) and
    :meth:`batch` (each bulk reply, with the time the previous reply on its link arrived);
    readings wait until a snapshot requested after their reply arrives."""

    snapshots: list[Snapshot] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    verdict: dict[Any, bool] = field(default_factory=dict)  # meter id -> its last reading was within
    mismatches: list[str] = field(default_factory=list)
    widest: float = 0.0
    unbracketed: int = 0  # readings with no snapshot received before their request

    def snapshot(self, snap: Snapshot) -> None:
        self.snapshots.append(snap)
        keep = []
        for p in self.pending:
            if p.arrived <= snap.sent:
                self._check(p, snap)
            else:
                keep.append(p)
        self.pending = keep

    def batch(self, readings: tuple, arrived: float, not_before: float) -> None:
        """``readings`` of one reply that arrived at ``arrived``; its request was written
        after ``not_before`` (the previous reply on the link, or the round's start)."""
        before = None
        for snap in self.snapshots:
            if snap.received <= not_before:
                before = snap
        if before is None:
            self.unbracketed += len(readings)
            return
        # snapshots older than ``before`` can no longer be anyone's "before"
        self.snapshots = [s for s in self.snapshots if s is before or s.received > before.received]
        self.pending.append(_Pending(before, arrived, readings))

    def _check(self, p: _Pending, after: Snapshot) -> None:
        self.widest = max(self.widest, after.received - p.before.sent)
        for r in p.readings:
            mid = r.meter
            key = (mid.link, mid.cdt, mid.channel_no)
            low, high = p.before.table.get(key), after.table.get(key)
            ok = low is not None and high is not None and low <= r.value <= high
            self.verdict[mid] = ok
            if not ok and len(self.mismatches) < MISMATCHES_SHOWN:
                self.mismatches.append(f"{mid}: read {r.value}, ground truth {low}..{high}")

    @property
    def unchecked(self) -> int:
        return sum(len(p.readings) for p in self.pending) + self.unbracketed

