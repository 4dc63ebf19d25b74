"""Driving a ``twisted.internet.task.Clock``: every wait is bounded, so a regression fails
with a message instead of hanging the run.

Two bounds: clock seconds (``limit``), and ``STALL`` calls run at one instant without the
clock moving on (a call that keeps rescheduling itself with no delay would otherwise spin
for ever)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

#: calls run at one clock instant before a wait fails as stalled
STALL = 100_000


class _Steps:
    """Counts the calls run at one instant; fails once there are ``STALL`` of them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.at = clock.seconds()
        self.count = 0

    def step_to(self, when: float) -> None:
        now = self.clock.seconds()
        if when > now:
            self.at, self.count = when, 0
        else:
            self.count += 1
            assert self.count < STALL, f"{STALL} calls at clock {now:g} without time moving on"
        self.clock.advance(max(0.0, when - now))


def _next_call(clock: Clock) -> float | None:
    calls = [c.getTime() for c in clock.getDelayedCalls()]
    return min(calls) if calls else None


def advance(clock: Clock, seconds: float) -> None:
    """Advance ``clock`` by ``seconds`` one scheduled call at a time, so every call runs at
    its own time (``Clock.advance`` alone jumps to the end before running what is due)."""
    end = clock.seconds() + seconds
    steps = _Steps(clock)
    while (nxt := _next_call(clock)) is not None and nxt <= end:
        steps.step_to(nxt)
    clock.advance(max(0.0, end - clock.seconds()))


def fired(clock: Clock, d: defer.Deferred, limit: float = 3600.0, what: str = "the Deferred") -> Any:
    """Run scheduled calls until ``d`` fires (at most ``limit`` clock seconds); what it fired
    with: its result, or the ``Failure`` it failed with (returned, not raised).  Fails,
    naming ``what``, when nothing is left scheduled or ``limit`` has passed first."""
    out: list[Any] = []
    d.addBoth(out.append)
    end = clock.seconds() + limit
    steps = _Steps(clock)
    while not out:
        nxt = _next_call(clock)
        assert nxt is not None, f"{what} has not fired and nothing is scheduled"
        assert nxt <= end, f"{what} has not fired within {limit:g} clock seconds"
        steps.step_to(nxt)
    return out[0]


def run_until(clock: Clock, d: defer.Deferred, limit: float = 3600.0, what: str = "the Deferred") -> Any:
    """Like :func:`fired`, but a failure of ``d`` is raised here."""
    result = fired(clock, d, limit, what)
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def step_until(clock: Clock, condition: Callable[[], Any], limit: float, what: str, step: float = 0.001) -> Any:
    """Advance ``clock`` by ``step`` until ``condition()`` is true (its value); fails, naming
    ``what``, when ``limit`` clock seconds have passed first."""
    end = clock.seconds() + limit
    while not (value := condition()):
        assert clock.seconds() < end, f"no {what} within {limit:g} clock seconds"
        clock.advance(step)
    return value
