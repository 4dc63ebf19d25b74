"""Failed GPRS registrations per source address, and the blocks they earn (sans-I/O).

The GPRS server (``gprs.py``) asks :class:`SourceThrottle` before it reads a byte of a new
connection and tells it of every refused registration; kept apart so the policy is tested
with plain numbers for time and imports nothing of Twisted.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["SourceThrottle"]


@dataclass(slots=True)
class _Source:
    failures: list[float] = field(default_factory=list)  # times within the window, oldest first
    blocked_until: float = 0.0
    blocks: int = 0  # blocks so far (the next lasts block_s x 2**blocks)
    last: float = 0.0


class SourceThrottle:
    """Failed registrations per source address (sans-I/O: the caller passes the time).

    ``max_failures`` failures within ``window_s`` block the source for ``block_s``
    seconds, doubled for each further block (at most ``max_block_s``); a source quiet for
    ``max_block_s`` starts again from ``block_s``.  At most ``max_sources`` addresses are
    remembered, least recently seen evicted first.
    """

    def __init__(self, *, max_failures: int = 5, window_s: float = 60.0, block_s: float = 60.0,
                 max_block_s: float = 3600.0, max_sources: int = 10_000) -> None:
        if max_failures < 1 or window_s <= 0 or block_s <= 0 or max_block_s < block_s or max_sources < 1:
            raise ValueError("SourceThrottle: max_failures >= 1, window_s > 0, 0 < block_s <= max_block_s, "
                             "max_sources >= 1")
        self.max_failures = max_failures
        self.window_s = window_s
        self.block_s = block_s
        self.max_block_s = max_block_s
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def blocked(self, source: str, now: float) -> float:
        """Seconds ``source`` is still refused (0 when it is not)."""
        entry = self._sources.get(source)
        if entry is None or entry.blocked_until <= now:
            return 0.0
        return entry.blocked_until - now

    def failure(self, source: str, now: float) -> float:
        """Record a failed registration from ``source``; the seconds of the block it starts,
        or 0 when it starts none."""
        entry = self._sources.pop(source, None)
        if entry is None:
            entry = _Source()
            while len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)
        elif now - entry.last > self.max_block_s and entry.blocked_until <= now:
            entry.blocks = 0  # quiet for long: forgiven
        self._sources[source] = entry
        entry.last = now
        if entry.blocked_until > now:
            return 0.0  # already blocked (a connection that was open before the block)
        entry.failures = [t for t in entry.failures if now - t < self.window_s][-(self.max_failures - 1):] + [now] \
            if self.max_failures > 1 else [now]
        if len(entry.failures) < self.max_failures:
            return 0.0
        seconds = min(self.block_s * 2 ** min(entry.blocks, 32), self.max_block_s)
        entry.blocks += 1
        entry.blocked_until = now + seconds
        entry.failures = []
        return seconds
