"""Log lines that an outsider can make us repeat, rate-limited per kind.

A refused DTU registration, a forged frame, a port scan: each is worth a line, but an
attacker who repeats it 20,000 times must not be able to fill the disk (3.3 MB of identical
refusals was measured) or hide the one line that matters.  :class:`RateLimitedLog` lets
``burst`` lines of one key through per ``period_s``; the rest are counted, and the next
line of that key that is let through says how many were suppressed.  At most ``max_keys``
keys are remembered (the oldest is forgotten first), so the limiter is no table an
attacker can grow either.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["RateLimitedLog"]


class _Window:
    __slots__ = ("start", "emitted", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.emitted = 0
        self.suppressed = 0


class RateLimitedLog:
    """``emit(key, level, format, **fields)``: log through ``log`` unless ``key`` already
    had ``burst`` lines in the current ``period_s`` window."""

    def __init__(self, log: Logger, clock: IReactorTime, *, period_s: float = 60.0, burst: int = 5,
                 max_keys: int = 1000) -> None:
        self.log = log
        self.clock = clock
        self.period_s = period_s
        self.burst = burst
        self.max_keys = max_keys
        self._windows: OrderedDict[Any, _Window] = OrderedDict()
        self.suppressed = 0  # in total

    def emit(self, key: Any, level: str, fmt: str, **fields: Any) -> bool:
        """Log the line (True) or count it as suppressed (False)."""
        now = self.clock.seconds()
        window = self._windows.get(key)
        carried = 0
        if window is None or now - window.start >= self.period_s:
            carried = window.suppressed if window is not None else 0
            window = _Window(now)
            self._windows[key] = window
        self._windows.move_to_end(key)
        while len(self._windows) > self.max_keys:
            self._windows.popitem(last=False)
        if window.emitted >= self.burst:
            window.suppressed += 1
            self.suppressed += 1
            return False
        window.emitted += 1
        if carried:
            fmt += " ({suppressed} similar lines suppressed in the previous {period:g} s)"
            fields.update(suppressed=carried, period=self.period_s)
        elif window.emitted == self.burst:
            fmt += " (more like this in the next {period:g} s are counted, not logged)"
            fields.update(period=self.period_s)
        getattr(self.log, level)(fmt, **fields)
        return True
