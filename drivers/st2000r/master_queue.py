"""The bus master's queue: priorities, transaction errors, the records of queued and
in-flight requests, and the priority queue itself (sans-I/O: no Twisted, no clock).

:class:`~st2000r.drivers.st2000r.master.BusMaster` (``master.py``) owns one
:class:`RequestQueue`; the timers and Deferreds a record carries are the master's, typed
loosely here so this module stays free of Twisted.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any

from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.reachability import Purpose

__all__ = ["Priority", "TransactionError", "TransactionTimeout", "LinkDown", "Pending", "Attempt", "RequestQueue"]


class Priority(enum.IntEnum):
    """Queue priority; lower runs first."""

    COMMAND = 0
    STATUS = 1
    SWEEP = 2
    BACKFILL = 3


class TransactionError(Exception):
    """A transaction failed; ``request`` is the message as given to ``transact``."""

    def __init__(self, message: str, request: m.Message) -> None:
        super().__init__(message)
        self.request = request


class TransactionTimeout(TransactionError):
    """No valid reply after all retries (silence or only corrupted replies).
    ``attempts``: frames sent; ``corrupted``: attempts spoiled by a corrupted reply (the
    device is there, the line is noisy) rather than silence."""

    def __init__(self, message: str, request: m.Message, attempts: int = 0, corrupted: int = 0) -> None:
        super().__init__(message, request)
        self.attempts = attempts
        self.corrupted = corrupted


class LinkDown(TransactionError):
    """The link was not connected within ``queue_timeout_s``, or was lost with the request
    in flight and no retry left, or the master was shut down."""


# --------------------------------------------------------------------------- queue items


class Pending:
    __slots__ = (
        "request", "priority", "retries_left", "latency_s", "deferred", "timer", "dead",
        "cancelled", "attempts", "corrupted", "purpose", "plan", "on_sent",
    )  # fmt: skip

    def __init__(self, request: m.Message, priority: Priority, retries: int, latency_s: float,
                 purpose: Purpose = Purpose.OTHER, plan: str | None = None) -> None:
        self.request = request
        self.purpose = purpose
        self.plan = plan
        self.on_sent: Callable[[], None] | None = None
        self.priority = priority
        self.retries_left = retries
        self.latency_s = latency_s
        self.deferred: Any = None  # the caller's Deferred
        self.timer: Any = None  # queue timeout while disconnected (a delayed call)
        self.dead = False  # removed from the queue (lazy heap deletion)
        self.cancelled = False
        self.attempts = 0
        self.corrupted = 0  # attempts spoiled by corrupted replies


class Attempt:
    __slots__ = ("pending", "msg", "sent_at", "model", "timeout", "timer", "quiet", "broken")

    def __init__(self, pending: Pending, msg: m.Message, sent_at: float, model: float, timeout: float) -> None:
        self.pending = pending
        self.msg = msg
        self.sent_at = sent_at
        self.model = model
        self.timeout = timeout
        self.timer: Any = None  # the attempt timeout (a delayed call)
        self.quiet: Any = None  # the line-quiet timer after a corrupted reply
        self.broken = False


# --------------------------------------------------------------------------- the queue


class RequestQueue:
    """Requests waiting for the bus: lowest :class:`Priority` first, FIFO within a
    priority; a retried request goes back in front of its priority.  Removal is lazy (a
    record marked ``dead`` stays in the heap until popped); ``len()`` counts live ones."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Pending]] = []
        self._live = 0
        self._seq = itertools.count()
        self._front = itertools.count(-1, -1)

    def __len__(self) -> int:
        return self._live

    def __iter__(self) -> Iterator[Pending]:
        """Every record in the heap, dead ones included, in heap order."""
        return (pending for _, _, pending in self._heap)

    def push(self, pending: Pending) -> None:
        """Queue behind the requests of the same priority."""
        self._push(pending, next(self._seq))

    def push_front(self, pending: Pending) -> None:
        """Queue ahead of the requests of the same priority (a retry)."""
        self._push(pending, next(self._front))

    def _push(self, pending: Pending, seq: int) -> None:
        pending.dead = False
        heapq.heappush(self._heap, (int(pending.priority), seq, pending))
        self._live += 1

    def pop(self) -> Pending | None:
        """The next live request (marked ``dead``: it left the queue), or None."""
        while self._heap:
            _, _, pending = heapq.heappop(self._heap)
            if not pending.dead:
                self._live -= 1
                pending.dead = True
                return pending
        return None

    def discard(self, pending: Pending) -> None:
        """Take ``pending`` out of the queue (no-op if it already left)."""
        if not pending.dead:
            pending.dead = True
            self._live -= 1

    def drain(self) -> list[Pending]:
        """Empty the queue; every record it held, dead ones included, in heap order."""
        heap, self._heap, self._live = self._heap, [], 0
        return [pending for _, _, pending in heap]
