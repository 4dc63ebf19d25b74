"""The event bus: numbered events to in-process subscribers and to queued consumers.

Two ways to listen, because consumers differ:

- :meth:`EventBus.subscribe` — **synchronous**, for in-process state that must stay in step
  with the point database (the alarm manager, the demo's counters): called during
  ``publish``, in publish order, cheap and non-blocking by contract;
- :meth:`EventBus.attach` — **queued**, for consumers that do I/O (the historian, the
  register image, the state store, API streams): ``publish`` only appends to the
  consumer's own bounded queue; the queue is drained later, off the publish path, one
  event at a time, at most ``batch`` events per reactor turn (so a burst never holds the
  reactor for long).  A consumer may return a Deferred: the next event waits until it fires,
  so a slow consumer slows only itself, never the reactor, the poller or anyone else.

Queue policy when a queued consumer falls behind (``limit`` events waiting):

- change events (:data:`~st2000r.supervisor.events.COALESCING`: ``MeterChanged``,
  ``CdtChanged``, ``LinkChanged``, ``HistorianChanged``) **coalesce per point**: a newer change replaces the
  one of the same point still waiting (in its place), counted in ``coalesced``; so the
  queue holds at most ``limit`` + one change per point;
- every other event (``ReadingBatch``, alarms, commands, round ends) is **never dropped**:
  with an ``overflow`` callable (the historian's spool) it is handed there at once and
  counted in ``overflowed``; without one it waits in the queue beyond ``limit``, counted in
  ``over_limit``.

Rules common to both: ``seq`` is stamped on each event as it is published (strictly
increasing across all types; the event object handed to ``publish`` is fresh and not
shared before, so it is stamped in place); an event published while another is being
delivered synchronously is queued behind it, so every subscriber sees one order; a
subscriber or consumer that raises (or whose Deferred fails) is logged, counted and
skipped for that event.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from st2000r.supervisor.events import COALESCING, EventBase, coalesce_key

__all__ = ["EventBus", "QueuedConsumer", "ConsumerStats"]

log = Logger()

DRAIN_BATCH = 256  # events a queued consumer takes per reactor turn before yielding
_COALESCING = frozenset(COALESCING)


def _type_filter(types: type | Iterable[type] | None) -> tuple[type, ...] | None:
    if types is None:
        return None
    if isinstance(types, type):
        return (types,)
    return tuple(types)


@dataclass(slots=True)
class ConsumerStats:
    """Counters of one queued consumer (see the module docstring for the policy)."""

    name: str
    queued: int = 0  # events taken into the queue
    delivered: int = 0
    coalesced: int = 0
    overflowed: int = 0
    over_limit: int = 0
    failures: int = 0
    depth: int = 0  # waiting now
    max_depth: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class QueuedConsumer:
    """One queued consumer of an :class:`EventBus` (made by :meth:`EventBus.attach`).

    The coalescing index (point -> its change still queued) exists only while the queue is
    at its limit: it is built from the queue (one pass) the first time an event arrives at a
    full queue and dropped when the queue empties, so a consumer that keeps up pays no
    dictionary work per event."""

    def __init__(self, bus: EventBus, consumer: Callable[[Any], Any], types: tuple[type, ...] | None,
                 clock: IReactorTime, limit: int, overflow: Callable[[Any], Any] | None, name: str,
                 batch: int | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.batch = DRAIN_BATCH if batch is None else batch
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self._bus = bus
        self._consumer = consumer
        self.types = types
        self._clock = clock
        self.limit = limit
        self._overflow = overflow
        self.stats = ConsumerStats(name or getattr(consumer, "__qualname__", "consumer"))
        self._queue: deque[list[Any]] = deque()  # [event] cells, so a coalesced change keeps its place
        self._waiting: dict[Any, list[Any]] | None = None  # coalesce key -> cell still queued (at the limit only)
        self._accepts: dict[type, bool] = {}  # event type -> of ``types``
        self._call: Any = None
        self._busy = False
        self.closed = False
        self._drain_waiters: list[defer.Deferred] = []

    # ---------------------------------------------------------------- feeding

    def offer(self, event: Any) -> None:
        if self.closed:
            return
        t = type(event)
        accepted = self._accepts.get(t)
        if accepted is None:
            accepted = self._accepts[t] = self.types is None or issubclass(t, self.types)
        if not accepted:
            return
        stats = self.stats
        queue = self._queue
        cell = [event]
        if len(queue) >= self.limit:
            key = coalesce_key(event) if t in _COALESCING else None
            waiting = self._waiting
            if waiting is None:
                waiting = self._waiting = self._index()
            if key is not None:
                queued = waiting.get(key)
                if queued is not None:
                    queued[0] = event
                    stats.coalesced += 1
                    return
                waiting[key] = cell
            elif self._overflow is not None:
                stats.overflowed += 1
                try:
                    self._overflow(event)
                except Exception:
                    stats.failures += 1
                    log.failure("event consumer {name}: overflow failed", name=stats.name)
                return
            else:
                stats.over_limit += 1
        elif self._waiting is not None and t in _COALESCING:
            self._waiting[coalesce_key(event)] = cell
        queue.append(cell)
        stats.queued += 1
        depth = stats.depth = len(queue)
        if depth > stats.max_depth:
            stats.max_depth = depth
        if self._call is None and not self._busy:
            self._call = self._clock.callLater(0, self._drain)

    def _index(self) -> dict[Any, list[Any]]:
        """The coalescing index of the queue as it is (the last cell of each point)."""
        waiting = {}
        for cell in self._queue:
            event = cell[0]
            if type(event) in _COALESCING:
                waiting[coalesce_key(event)] = cell
        return waiting

    @property
    def depth(self) -> int:
        return len(self._queue)

    def drained(self) -> defer.Deferred:
        """Fires once every event queued so far has been delivered and the consumer is not
        busy with one (a writer's stop waits for this before its final flush)."""
        d: defer.Deferred = defer.Deferred()
        if self.closed or (not self._queue and not self._busy):
            d.callback(None)
        else:
            self._drain_waiters.append(d)
        return d

    def _notify_drained(self) -> None:
        if self._queue or self._busy or not self._drain_waiters:
            return
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.callback(None)

    def close(self) -> None:
        """Stop receiving; events still queued are not delivered."""
        self.closed = True
        self._bus._detach(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._queue.clear()
        self._waiting = None
        self.stats.depth = 0
        self._notify_drained()

    # ---------------------------------------------------------------- draining

    def _schedule(self) -> None:
        if self._busy or self.closed or self._call is not None:
            return
        self._call = self._clock.callLater(0, self._drain)

    def _drain(self) -> None:
        """Deliver up to ``batch`` events, then yield the reactor (the rest next turn)."""
        self._call = None
        queue, stats, consumer = self._queue, self.stats, self._consumer
        for _ in range(self.batch):
            if self._busy or self.closed or not queue:
                break
            cell = queue.popleft()
            event = cell[0]
            waiting = self._waiting
            if waiting is not None:
                if not queue:
                    self._waiting = None  # empty: no index until the limit is reached again
                elif type(event) in _COALESCING:
                    key = coalesce_key(event)
                    if waiting.get(key) is cell:
                        del waiting[key]
            stats.depth = len(queue)
            try:
                result = consumer(event)
            except Exception:
                stats.failures += 1
                log.failure("event consumer {name} failed on {type}", name=stats.name, type=type(event).__name__)
                continue
            stats.delivered += 1
            if result is not None and isinstance(result, defer.Deferred):
                if not result.called:
                    self._busy = True
                    result.addErrback(self._failed, event)
                    result.addBoth(self._resume)
                    return
                result.addErrback(self._failed, event)  # already fired: consume a failure
        if queue and not self.closed:
            self._schedule()
        else:
            self._notify_drained()

    def _failed(self, failure: Any, event: Any) -> None:
        self.stats.failures += 1
        log.failure("event consumer {name} failed on {type}", failure, name=self.stats.name,
                    type=type(event).__name__)

    def _resume(self, _: Any) -> None:
        self._busy = False
        self._schedule()
        self._notify_drained()


class EventBus:
    """Numbered fan-out of events (rules in the module docstring).  ``clock``: for the
    queued consumers' draining (needed only by :meth:`attach`); ``run_id``: this run's id
    (default: a fresh random one)."""

    def __init__(self, clock: IReactorTime | None = None, *, run_id: str | None = None) -> None:
        self.clock = clock
        self.run_id = run_id or uuid.uuid4().hex[:16]
        self.seq = 0  # of the last event published
        self._subscribers: list[tuple[tuple[type, ...] | None, Callable[[Any], None]]] = []
        self._consumers: list[QueuedConsumer] = []
        # what publish iterates: rebuilt when a subscriber or consumer comes or goes
        self._subscribed: tuple[tuple[tuple[type, ...] | None, Callable[[Any], None]], ...] = ()
        self._offers: tuple[Callable[[Any], None], ...] = ()
        self._queue: deque[Any] = deque()
        self._delivering = False
        self.published = 0
        self.failures = 0

    def subscribe(self, callback: Callable[[Any], None], types: type | Iterable[type] | None = None
                  ) -> Callable[[], None]:
        """Call ``callback(event)`` synchronously for every later event (of ``types``, a type
        or an iterable of types; all when None); returns the unsubscribe callable."""
        entry = (_type_filter(types), callback)  # a new tuple per subscription: one callback may subscribe twice

        self._subscribers.append(entry)
        self._subscribed = tuple(self._subscribers)

        def unsubscribe() -> None:
            try:
                self._subscribers.remove(entry)
            except ValueError:
                pass
            self._subscribed = tuple(self._subscribers)

        return unsubscribe

    def attach(self, consumer: Callable[[Any], Any], types: type | Iterable[type] | None = None, *,
               limit: int = 10_000, overflow: Callable[[Any], Any] | None = None, name: str = "",
               batch: int | None = None) -> QueuedConsumer:
        """A queued consumer of later events (see the module docstring); ``close()`` it to stop.
        ``batch``: events delivered per reactor turn at most (default ``DRAIN_BATCH``): a
        consumer that takes a microsecond or two per event may take more per turn."""
        if self.clock is None:
            raise ValueError("EventBus.attach needs the bus to have a clock")
        queued = QueuedConsumer(self, consumer, _type_filter(types), self.clock, limit, overflow, name, batch)
        self._consumers.append(queued)
        self._offers = tuple(c.offer for c in self._consumers)
        return queued

    def consumers(self) -> list[QueuedConsumer]:
        """The queued consumers attached now (for diagnostics: depths and counters)."""
        return list(self._consumers)

    @property
    def subscribers(self) -> int:
        """How many synchronous subscriptions are active."""
        return len(self._subscribers)

    def publish(self, event: Any) -> Any:
        """Stamp ``event`` with the next ``seq`` and this run's id, and deliver it (queued if
        a delivery is in progress).  Returns the event.  Never raises because of a
        subscriber."""
        self.published += 1
        if isinstance(event, EventBase):
            self.seq += 1
            object.__setattr__(event, "seq", self.seq)  # fresh and unshared: see the module docstring
            object.__setattr__(event, "run", self.run_id)
        for offer in self._offers:
            offer(event)
        if self._delivering:
            self._queue.append(event)
            return event
        if not self._subscribed:
            return event
        self._queue.append(event)
        self._delivering = True
        try:
            while self._queue:
                current = self._queue.popleft()
                for types, callback in self._subscribed:
                    if types is not None and not isinstance(current, types):
                        continue
                    try:
                        callback(current)
                    except Exception:
                        self.failures += 1
                        log.failure("event subscriber failed on {event_type}",
                                    event_type=type(current).__name__)
        finally:
            self._delivering = False
        return event

    def _detach(self, queued: QueuedConsumer) -> None:
        try:
            self._consumers.remove(queued)
        except ValueError:
            pass
        self._offers = tuple(c.offer for c in self._consumers)
