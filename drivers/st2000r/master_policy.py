"""The bus master's reply policy: which reply answers a request, and how much longer than
the timing model to wait for one (sans-I/O: no Twisted, no clock; the caller passes times).

The adaptive allowance learns from observed round trips (replies, and late replies to a
timed-out SER): the p99 of (round trip - model), with head-room, clamped to
``[0, 2 x model + 1 s]`` (the rule in ``master.py``'s module docstring).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import BROADCAST
from st2000r.drivers.st2000r.master_queue import Attempt
from st2000r.drivers.st2000r.stats import RttHistogram

__all__ = ["matches", "AdaptiveAllowance"]

_STALE_KEEP: Final = 32  # timed-out SERs remembered to recognise late replies
_ADAPT_WINDOW: Final = 256  # excess samples before the adaptive histogram decays by half
_ADAPT_MIN_SAMPLES: Final = 1
_ADAPT_FACTOR: Final = 1.25  # head-room over the observed p99 excess


def matches(req: m.Message, reply: m.Message) -> bool:
    """Is ``reply`` the answer to ``req`` (same SER, device, function and DI)?"""
    if reply.ser != req.ser:
        return False
    if req.address != BROADCAST and reply.address != req.address:
        return False
    if isinstance(reply, m.ErrorReply):
        return (reply.control & 0x3F) == (req.control & 0x3F) and reply.di in (None, req.DI)
    if req.meter_type not in (0xAA, reply.meter_type):
        return False
    return type(reply).DI == req.DI and reply.control == (req.control | 0x80)


class AdaptiveAllowance:
    """What the attempt timeout adds to the timing model, learnt from round trips; it
    remembers the last timed-out attempts so a late reply to one still teaches it."""

    def __init__(self) -> None:
        self.excess = RttHistogram()  # (round trip - model) samples, s
        self._stale: OrderedDict[int, Attempt] = OrderedDict()

    def allowance(self, model: float) -> float:
        """Seconds to add to a timeout of ``model`` seconds."""
        if self.excess.count >= _ADAPT_MIN_SAMPLES:
            p99 = self.excess.percentile(0.99) or 0.0
            return min(_ADAPT_FACTOR * p99 if p99 > 1e-3 else 0.0, 2 * model + 1.0)
        return 0.0

    def learn(self, excess: float) -> None:
        """One round trip took ``excess`` seconds more than its model."""
        self.excess.add(excess)
        if self.excess.count >= 2 * _ADAPT_WINDOW:
            self.excess.halve()

    def timed_out(self, attempt: Attempt) -> None:
        """``attempt`` got no reply in time: remember its SER for a late reply."""
        self._stale[attempt.msg.ser] = attempt
        while len(self._stale) > _STALE_KEEP:
            self._stale.popitem(last=False)

    def late_reply(self, reply: m.Message, now: float) -> bool:
        """True if ``reply`` answers a remembered timed-out attempt (learnt from, then
        forgotten)."""
        old = self._stale.pop(reply.ser, None)
        if old is not None and matches(old.msg, reply):
            self.learn(now - old.sent_at - old.model)
            return True
        return False
