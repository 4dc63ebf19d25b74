"""Statistics of a field bus: round-trip histograms and per-device / per-link counters.

Constant memory per device: a log-spaced histogram instead of a list of samples, so a link
that runs for years keeps its p50/p99 without growing.  The bus master keeps one
:class:`DeviceStats` per address it sent to and one :class:`LinkStats` for the link.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["RttHistogram", "DeviceStats", "LinkStats"]


class RttHistogram:
    """Fixed log-spaced histogram of durations (s): 20 buckets per decade from 0.1 ms to
    1000 s (each bucket 12 % wide), an underflow bucket below; constant memory.
    :meth:`percentile` returns the upper edge of the bucket holding that rank, never more
    than the largest value seen (so it over-estimates by at most one bucket width)."""

    PER_DECADE: Final = 20
    LOW: Final = 1e-4
    DECADES: Final = 7

    __slots__ = ("_counts", "count", "max", "sum")

    _EDGES: Final = tuple(1e-4 * 10 ** (i / 20) for i in range(0, 7 * 20 + 1))

    def __init__(self) -> None:
        self._counts = [0] * (len(self._EDGES) + 1)  # [underflow, buckets..., overflow]
        self.count = 0
        self.max = 0.0
        self.sum = 0.0

    def add(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self._counts[bisect.bisect_left(self._EDGES, seconds)] += 1
        self.count += 1
        self.sum += seconds
        if seconds > self.max:
            self.max = seconds

    def percentile(self, q: float) -> float | None:
        """Upper bound (s) of the ``q`` quantile (0 < q <= 1); None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, n in enumerate(self._counts):
            seen += n
            if seen >= rank:
                edge = self._EDGES[i] if i < len(self._EDGES) else self.max
                return min(edge, self.max)
        return self.max  # pragma: no cover - counts always add up

    def halve(self) -> None:
        """Age the samples: every bucket keeps half (rounded down) of its count, so a lone
        outlier ages out instead of holding the p99 up for good."""
        self._counts = [n // 2 for n in self._counts]
        self.count = sum(self._counts)
        self.sum /= 2


@dataclass(slots=True)
class DeviceStats:
    """Counters of one device (or of a whole link in :class:`LinkStats`).

    ``requests``: frames sent (every attempt); ``replies``: valid matching replies;
    ``timeouts``: attempts that got no valid reply in time; ``retries``: attempts after the
    first; ``failures``: transactions that failed after all retries; ``checksum_errors``:
    decoder junk events (bad checksum, noise, truncated frames); ``crc_errors``: frames
    rejected by ``messages.parse`` (vendor CRC-16, field errors); ``unexpected_replies``:
    valid frames that did not match the request in flight (late SER, other device);
    round trips are from writing the request to its reply, in seconds.
    """

    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    retries: int = 0
    failures: int = 0
    checksum_errors: int = 0
    crc_errors: int = 0
    unexpected_replies: int = 0
    rtt: RttHistogram = field(default_factory=RttHistogram)

    @property
    def rtt_p50_s(self) -> float | None:
        return self.rtt.percentile(0.50)

    @property
    def rtt_p99_s(self) -> float | None:
        return self.rtt.percentile(0.99)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters plus ``rtt_p50_s`` / ``rtt_p99_s`` (None before a reply)."""
        out: dict[str, Any] = {
            "requests": self.requests,
            "replies": self.replies,
            "timeouts": self.timeouts,
            "retries": self.retries,
            "failures": self.failures,
            "checksum_errors": self.checksum_errors,
            "crc_errors": self.crc_errors,
            "unexpected_replies": self.unexpected_replies,
        }
        out["rtt_p50_s"] = self.rtt_p50_s
        out["rtt_p99_s"] = self.rtt_p99_s
        return out


@dataclass(slots=True)
class LinkStats(DeviceStats):
    """Link totals: the device counters summed, plus ``junk_bytes`` (bytes the decoder
    threw away), ``late_replies`` (replies to a timed-out SER), connects and disconnects."""

    junk_bytes: int = 0
    late_replies: int = 0
    connects: int = 0
    disconnects: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = DeviceStats.as_dict(self)
        out.update(
            junk_bytes=self.junk_bytes,
            late_replies=self.late_replies,
            connects=self.connects,
            disconnects=self.disconnects,
        )
        return out


