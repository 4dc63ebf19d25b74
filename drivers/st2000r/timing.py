"""Bus timing: wire time, the inter-frame gap, the physical bound and the response-timeout model.

All times are seconds (float).  One byte on an asynchronous serial line takes
``bits_per_byte / baud`` (8E1 = 11 bits: start, 8 data, parity, stop).

**Inter-frame gap** (``gap_s``): before every request the master leaves the bus idle for
``gap_s``.  Why a master waits at all, although only it ever starts a transaction:

- *receivers re-arming*: a device that has just sent its reply, or has heard another
  device's reply (every device hears the whole bus), must get its receive state machine
  back to "waiting for a frame" before our first byte arrives, or it misses the request's
  head;
- *direction switch*: RS485 is half-duplex.  The device's transceiver must release the
  line after its last stop bit, and the RS232->RS485 protocol converter must turn its own
  driver on; automatic-direction converters hold the line for about one character after
  the last byte they saw.  A request started earlier collides with that tail;
- *end of frame by silence*: devices of the Modbus-RTU family, and CJ/T 188 meters that
  reset a half-received frame on an inter-byte timeout, find the end of a frame by a
  silent interval (3.5 character times in Modbus RTU).  A device that heard line noise or
  a foreign frame only resynchronises after such a silence.

``gap_ms`` on the link (``config.model.Link.gap_ms``, read with ``getattr`` so links without
the attribute behave as ``None``) sets it: ``None`` is the automatic
``max(3.5 character times, 5 ms)`` (:attr:`BusTiming.auto_gap_s`) — the 5 ms floor
because at 9600 baud and above 3.5 characters is under 4 ms, below what USB serial
converters (1 ms USB frames, latency timers) and a general-purpose OS timer hold reliably.
``0`` is allowed: the next request is written as soon as the previous reply is complete.
That is safe when every device on the bus delimits frames by their own structure (68 ...
L ... CS 16, as the CDTs and CJ/T 188 meters do) rather than by silence, re-arms its
receiver as soon as it has sent its last byte, and the converter switches direction
within the master's wake-up bytes (the FE bytes the master sends before each request are
there to be lost to a slow direction switch or a sleeping receiver).  On a network link
(TCP serial server, GPRS DTU) the host's pause does not reach the wire reliably anyway:
the device server paces the serial side.  Check a bus with ``gap_ms = 0`` before relying
on it: a sweep with no retries and no checksum errors at the link's baud rate.

**Physical bound** (:meth:`BusTiming.physical_time`): the least time one transaction
occupies the bus, whoever the master is: the bytes of the request and of the reply at
``bits_per_byte / baud``, the device's turnaround and the repeaters' delay both ways.
It contains nothing the master chooses: no gap, no wake-up bytes of its own (callers pass
the request frame from 68 to 16 — the number of FE bytes a master sends is its choice,
0-4 by the standard), no jitter allowance, no timeout.  The reply is counted as the device
sends it, its own wake-up bytes included (the master cannot shorten it).  A sweep's bound
is the sum over its transactions; a master can only come close to it, never beat it.

**Response timeout model** (:meth:`BusTiming.reply_timeout`) for a request of ``q`` bytes
whose reply is at most ``r`` bytes, through repeaters adding ``h`` seconds one way::

    timeout = (q + r) x byte_time + turnaround_s + 2 x h + auto_gap_s + JITTER_S

measured from the master's write of the request: the request's own wire time, the device
turnaround, the repeaters both ways, the longest possible reply, the automatic gap as
tolerance for inter-character pauses (whatever ``gap_s`` is configured: a 0 gap does not
make a device answer faster), and :data:`JITTER_S` for the host's scheduling and the
transport (pty, USB, serial server).  ``r`` comes from :func:`max_reply_size` (worst case,
4 wake-up bytes included), so the model is an upper bound for a healthy device.  The bus
master adapts on top of this (observed p99 of round trips minus the model, bounded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from st2000r.config.model import Link
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import OVERHEAD

__all__ = [
    "BusTiming",
    "auto_gap_s",
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
    ``turnaround_s`` device turnaround; ``gap_s`` idle time the master leaves before each
    request (>= 0; see the module docstring)."""

    baud: int
    bits_per_byte: int
    turnaround_s: float
    gap_s: float

    @classmethod
    def for_link(cls, link: Link) -> BusTiming:
        """Timing of ``link`` from its line settings, ``turnaround_ms`` and ``gap_ms``:
        ``gap_ms`` None (or no such attribute) gives the automatic gap
        ``max(3.5 character times, 5 ms)``, a number (0 allowed) that many milliseconds.
        Raises ``ValueError`` for a negative or non-finite ``gap_ms``."""
        bits = link.line.bits_per_byte
        baud = link.line.baud
        gap_ms = getattr(link, "gap_ms", None)
        if gap_ms is None:
            gap_s = auto_gap_s(bits, baud)
        elif isinstance(gap_ms, bool) or not (isinstance(gap_ms, (int, float)) and math.isfinite(gap_ms) and gap_ms >= 0):
            raise ValueError(f"link {link.name!r}: gap_ms must be None or a finite number >= 0, got {gap_ms!r}")
        else:
            gap_s = gap_ms / 1000.0
        return cls(baud=baud, bits_per_byte=bits, turnaround_s=link.turnaround_ms / 1000.0, gap_s=gap_s)

    @property
    def byte_time(self) -> float:
        """Seconds one byte occupies the wire."""
        return self.bits_per_byte / self.baud

    @property
    def auto_gap_s(self) -> float:
        """The automatic gap of this line, ``max(3.5 character times, 5 ms)``, whatever
        ``gap_s`` is configured (also the inter-character slack of :meth:`reply_timeout`)."""
        return auto_gap_s(self.bits_per_byte, self.baud)

    def wire_time(self, nbytes: int) -> float:
        """Seconds ``nbytes`` occupy the wire."""
        return nbytes * self.bits_per_byte / self.baud

    def physical_time(self, request_bytes: int, reply_bytes: int, hops_latency_s: float = 0.0) -> float:
        """The physical bound (s) of one transaction: ``(request_bytes + reply_bytes) x
        bits_per_byte / baud + turnaround_s + 2 x hops_latency_s``.

        ``request_bytes``: the request frame from 68 to 16, *without* the master's wake-up
        bytes (their number is the master's choice); ``reply_bytes``: the reply as the
        device sends it, its wake-up bytes included; ``hops_latency_s``: one-way repeater
        latency to the device (:func:`hops_latency_s`), counted both ways.  No gap, no
        jitter, no timeout: the least time the transaction holds the bus, whoever the
        master is."""
        return self.wire_time(request_bytes + reply_bytes) + self.turnaround_s + 2.0 * hops_latency_s

    def reply_timeout(
        self, request_bytes: int, reply_bytes_max: int, hops_latency_s: float = 0.0
    ) -> float:
        """The model timeout (s) from writing a request of ``request_bytes`` (wake-up bytes
        included) to the last byte of a reply of at most ``reply_bytes_max`` bytes, through
        repeaters adding ``hops_latency_s`` one way (counted both ways), plus
        :attr:`auto_gap_s` and :data:`JITTER_S` of slack (independent of ``gap_s``)."""
        return (
            self.wire_time(request_bytes + reply_bytes_max)
            + self.turnaround_s
            + 2.0 * hops_latency_s
            + self.auto_gap_s
            + JITTER_S
        )


def auto_gap_s(bits_per_byte: int, baud: int) -> float:
    """The automatic inter-frame gap (s) of a line: ``max(3.5 x bits_per_byte / baud,
    MIN_GAP_S)`` — 16.0 ms at 2400 baud 8E1, the 5 ms floor at 9600 and above."""
    return max(GAP_CHARS * bits_per_byte / baud, MIN_GAP_S)


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
