"""Bus timing: wire time, the mandated inter-frame gap and the response-timeout model.

All times are seconds (float).  One byte on an asynchronous serial line takes
``bits_per_byte / baud`` (8E1 = 11 bits: start, 8 data, parity, stop).

**Inter-frame gap** (``gap_s``): before every request the master leaves the bus idle for
``max(3.5 character times, 5 ms)``.  3.5 character times is the silent interval by which
RS485 devices of the Modbus-RTU family recognise the end of a frame and re-arm their
receivers; it also covers the direction switch of the RS232->RS485 converter and of the
device's transceiver after it sent its last byte.  The 5 ms floor: at 9600 baud and above
3.5 characters is under 4 ms, below what USB serial converters (1 ms USB frames, latency
timers) and a general-purpose OS timer can hold reliably.

**Response timeout model** (:meth:`BusTiming.reply_timeout`) for a request of ``q`` bytes
whose reply is at most ``r`` bytes, through repeaters adding ``h`` seconds one way::

    timeout = (q + r) x byte_time + turnaround_s + 2 x h + gap_s + JITTER_S

measured from the master's write of the request: the request's own wire time, the device
turnaround, the repeaters both ways, the longest possible reply, one gap of tolerance for
inter-character pauses, and :data:`JITTER_S` for the host's scheduling and the transport
(pty, USB, serial server).  ``r`` comes from :func:`max_reply_size` (worst case, 4 wake-up
bytes included), so the model is an upper bound for a healthy device.  The bus master adapts
on top of this (observed p99 of round trips minus the model, bounded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from st2000r.config.model import Link
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import OVERHEAD

__all__ = [
    "BusTiming",
    "max_reply_size",
    "hops_latency_s",
    "JITTER_S",
    "MIN_GAP_S",
    "REPLY_PREAMBLE",
]

JITTER_S: Final = 0.020  # host scheduling + transport slack added to every timeout
MIN_GAP_S: Final = 0.005  # floor of the inter-frame gap
GAP_CHARS: Final = 3.5  # inter-frame gap in character times
REPLY_PREAMBLE: Final = 4  # wake-up bytes a device may send before a reply (CJ/T 188: 0-4)
_HEAT_TYPES: Final = range(0x20, 0x2A)  # CJ/T 188 heat meters: 43-byte 901F payload
_ANY_TYPE: Final = 0xAA
_ERROR_DATA: Final = 5  # DI + SER + ST of an abnormal reply


@dataclass(frozen=True, slots=True)
class BusTiming:
    """Timing of one field bus.  ``baud`` bit/s; ``bits_per_byte`` wire bits per byte;
    ``turnaround_s`` device turnaround; ``gap_s`` mandated idle time before each request."""

    baud: int
    bits_per_byte: int
    turnaround_s: float
    gap_s: float

    @classmethod
    def for_link(cls, link: Link) -> BusTiming:
        """Timing of ``link`` from its line settings and ``turnaround_ms``; the gap is
        ``max(3.5 character times, 5 ms)`` (see the module docstring for why)."""
        bits = link.line.bits_per_byte
        baud = link.line.baud
        return cls(
            baud=baud,
            bits_per_byte=bits,
            turnaround_s=link.turnaround_ms / 1000.0,
            gap_s=max(GAP_CHARS * bits / baud, MIN_GAP_S),
        )

    @property
    def byte_time(self) -> float:
        """Seconds one byte occupies the wire."""
        return self.bits_per_byte / self.baud

    def wire_time(self, nbytes: int) -> float:
        """Seconds ``nbytes`` occupy the wire."""
        return nbytes * self.bits_per_byte / self.baud

    def reply_timeout(
        self, request_bytes: int, reply_bytes_max: int, hops_latency_s: float = 0.0
    ) -> float:
        """The model timeout (s) from writing a request of ``request_bytes`` (wake-up bytes
        included) to the last byte of a reply of at most ``reply_bytes_max`` bytes, through
        repeaters adding ``hops_latency_s`` one way (counted both ways)."""
        return (
            self.wire_time(request_bytes + reply_bytes_max)
            + self.turnaround_s
            + 2.0 * hops_latency_s
            + self.gap_s
            + JITTER_S
        )


def hops_latency_s(link: Link, repeater: str | None) -> float:
    """One-way latency (s) of the repeater chain from ``repeater`` (a CDT's
    ``Cdt.repeater``) up to the bus: the sum of ``latency_ms`` along the parents.
    ``None`` (the CDT is on the link's own segment) is 0.  Unknown names count 0."""
    by_name = {r.name: r for r in link.repeaters}
    total = 0
    seen: set[str] = set()
    while repeater is not None and repeater not in seen:
        seen.add(repeater)
        rep = by_name.get(repeater)
        if rep is None:
            break
        total += rep.latency_ms
        repeater = rep.parent
    return total / 1000.0


def _reply_data_max(request: m.Message) -> int:
    """Worst-case DATA length (DI + SER + payload + vendor CRC) of the reply."""
    match request:
        case m.BulkRead(count=n):
            n = max(1, min(n, m.MAX_BULK))
            return 3 + 2 + 4 * n + (n + 7) // 8 + n + 2
        case m.ReadAlarms():
            return 3 + 1 + 3 * ((m.MAX_CHANNELS + 7) // 8) + 2
        case m.ReadCdtStatus():
            return 3 + m.CdtStatus.SIZE + 2
        case m.ReadChannelInfo(count=n):
            n = max(1, min(n, m.MAX_INFO))
            return 3 + 2 + 10 * n + 2
        case m.SetBase():
            return 3 + 5 + 2
        case m.TimeSync():
            return 3 + 7 + 2
        case m.ReadData(meter_type=t):
            heat = t in _HEAT_TYPES or t == _ANY_TYPE
            return 3 + (m.HeatData.SIZE if heat else m.CurrentData.SIZE)
        case m.ReadAddress():
            return 3 + 7
        case m.ValveControl():
            return 3 + 2
        case m.WriteAddress():
            return 3
    return 255


def max_reply_size(request: m.Message) -> int:
    """Worst-case bytes of the reply to ``request`` on the wire, 4 wake-up bytes included
    (an abnormal reply is never longer than the normal one for these commands)."""
    return REPLY_PREAMBLE + OVERHEAD + max(_reply_data_max(request), _ERROR_DATA)
