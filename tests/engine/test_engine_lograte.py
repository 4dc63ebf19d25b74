"""Rate-limited log lines: a flood of one kind is a few lines and a count, never 20,000."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from st2000r.drivers.st2000r.lograte import RateLimitedLog


def rig(**kw):
    lines = []
    clock = Clock()
    log = Logger(observer=lambda event: lines.append(formatEvent(event)))
    return RateLimitedLog(log, clock, **kw), clock, lines


def test_a_flood_of_one_kind_is_a_burst_then_a_count():
    limited, clock, lines = rig(period_s=60, burst=3)
    for i in range(20_000):
        limited.emit(("refused", "198.51.100.7"), "warn", "refused registration from {peer}", peer="198.51.100.7")
    assert len(lines) == 3 and limited.suppressed == 19_997
    assert "counted, not logged" in lines[-1]
    limited.emit(("refused", "other"), "warn", "refused registration from {peer}", peer="other")
    assert len(lines) == 4  # another key has its own budget
    clock.advance(60)
    limited.emit(("refused", "198.51.100.7"), "warn", "refused registration from {peer}", peer="198.51.100.7")
    assert lines[-1] == ("refused registration from 198.51.100.7 (19997 similar lines suppressed in the previous "
                         "60 s)")


def test_the_key_table_is_bounded():
    limited, _, lines = rig(burst=1, max_keys=100)
    for i in range(10_000):
        limited.emit(i, "info", "line {i}", i=i)
    assert len(limited._windows) == 100 and len(lines) == 10_000
