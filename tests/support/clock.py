"""Driving a ``twisted.internet.task.Clock``: every wait is bounded, so a regression fails
with a message instead of hanging the run."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock


def advance(clock: Clock, seconds: float) -> None:
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


def run_until(clock: Clock, d: defer.Deferred, limit: float = 3600.0) -> Any:
    """Run scheduled calls until ``d`` fires (at most ``limit`` clock seconds); its result,
    or the exception it failed with raised here."""
    out: list[Any] = []
    d.addBoth(out.append)
    end = clock.seconds() + limit
    while not out:
        calls = [c.getTime() for c in clock.getDelayedCalls()]
        assert calls, "nothing scheduled and the Deferred has not fired"
        nxt = min(calls)
        assert nxt <= end, f"not done within {limit:g} clock seconds"
        clock.advance(max(0.0, nxt - clock.seconds()))
    result = out[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result
