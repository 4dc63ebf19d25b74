"""The event stream: supervisor events to HTTP clients as server-sent events.

One queued consumer of the event bus (so a slow HTTP client never delays the bus) turns
each streamed event into its SSE bytes once (``id:`` the event's ``seq``, ``event:`` its
type, ``data:`` the public JSON of ``events.to_json``), keeps the last ``buffer_size`` in a
ring, and hands them to every client whose type filter takes them.

Resume: a client that comes back with ``Last-Event-ID: N`` gets every buffered event after
``N`` first, then live ones.  It is told with an ``event: gap`` first when it has missed
something: events after ``N`` already fell out of the ring (``reason: evicted``: the ring
remembers the highest ``seq`` it evicted), or ``N`` is beyond this run's last ``seq``
(``reason: restart``: ``seq`` restarts with every run).  ``ReadingBatch`` is never streamed.

The events of one reactor turn (the bus hands a queued consumer up to 256 at a time) go to
each client as one write, so a full round costs a write per client per turn, not per event.
Each client has its own bounded backlog: writes go straight to its connection while the
connection takes them (twisted's producer protocol says when it does not); a client whose
backlog exceeds ``client_limit`` events is disconnected (it resumes with ``Last-Event-ID``).
A comment line is written every ``heartbeat_s`` so proxies keep the connection open.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from typing import Any

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from st2000r.supervisor.events import (AlarmChanged, CdtChanged, CommandChanged, LinkChanged, MeterChanged, RoundDone,
                                       to_json)

__all__ = ["EventStream", "STREAMED", "STREAMED_NAMES"]

log = Logger()

STREAMED: tuple[type, ...] = (MeterChanged, CdtChanged, LinkChanged, RoundDone, AlarmChanged, CommandChanged)
STREAMED_NAMES: dict[str, type] = {t.__name__: t for t in STREAMED}


def _frame(event: str, data: Any, seq: int | None = None) -> bytes:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {event}\ndata: {text}\n\n".encode()


@implementer(IPushProducer)
class _Client:
    """One open stream: its request, type filter and backlog while its connection is full."""

    def __init__(self, stream: EventStream, request: Any, types: frozenset[str], peer: str | None) -> None:
        self.stream = stream
        self.request = request
        self.types = types
        self.peer = peer
        self.paused = False
        self.backlog: deque[bytes] = deque()
        self.waiting = 0  # events in the backlog
        self.closed = False
        self.sent = 0

    def send(self, data: bytes, events: int = 1) -> None:
        if self.closed:
            return
        if self.paused or self.backlog:
            self.backlog.append(data)
            self.waiting += events
            if self.waiting > self.stream.client_limit:
                self.stream.dropped += 1
                log.warn("event stream to {peer}: more than {n} events waiting, disconnected", peer=self.peer,
                         n=self.stream.client_limit)
                self.close()
            return
        self.request.write(data)
        self.sent += 1

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.backlog and not self.closed:
            data = b"".join(self.backlog)
            self.backlog.clear()
            self.waiting = 0
            self.request.write(data)
            self.sent += 1

    def stopProducing(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.backlog.clear()
        self.waiting = 0
        self.stream._clients.discard(self)
        transport = getattr(self.request.channel, "transport", None)
        if transport is not None:
            transport.loseConnection()


class EventStream:
    """The SSE fan-out of ``bus`` (see the module docstring)."""

    def __init__(self, bus: Any, clock: IReactorTime, *, buffer_size: int = 4096, client_limit: int = 10_000,
                 max_clients: int = 32, heartbeat_s: float = 15.0) -> None:
        self.bus = bus
        self.clock = clock
        self.buffer_size = buffer_size
        self.client_limit = client_limit
        self.max_clients = max_clients
        self.heartbeat_s = heartbeat_s
        self._ring: deque[tuple[int, str, bytes]] = deque()
        self.evicted_seq = 0  # highest seq that fell out of the ring
        self._clients: set[_Client] = set()
        self._consumer: Any = None
        self._beat: task.LoopingCall | None = None
        self._turn: list[tuple[str, bytes]] = []  # frames of this reactor turn, not yet written
        self._flush_call: Any = None
        self.dropped = 0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._consumer = self.bus.attach(self._on_event, STREAMED, limit=50_000, name="api events")
        self._beat = task.LoopingCall(self._heartbeat)
        self._beat.clock = self.clock
        self._beat.start(self.heartbeat_s, now=False)

    def stop(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        for client in list(self._clients):
            client.close()

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def buffered(self) -> int:
        return len(self._ring)

    @property
    def oldest_seq(self) -> int:
        return self._ring[0][0] if self._ring else self.bus.seq

    @property
    def full(self) -> bool:
        return len(self._clients) >= self.max_clients

    # ---------------------------------------------------------------- events in

    def _on_event(self, event: Any) -> None:
        name = type(event).__name__
        data = _frame(name, to_json(event), event.seq)
        self._ring.append((event.seq, name, data))
        if len(self._ring) > self.buffer_size:
            self.evicted_seq = self._ring.popleft()[0]
        if self._clients:
            self._turn.append((name, data))
            if self._flush_call is None:
                self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        """One write per client of this turn's frames its filter takes."""
        self._flush_call = None
        frames, self._turn = self._turn, []
        everything = None
        for client in tuple(self._clients):
            if len(client.types) == len(STREAMED_NAMES):
                if everything is None:
                    everything = b"".join(data for _, data in frames)
                client.send(everything, len(frames))
                continue
            mine = [data for name, data in frames if name in client.types]
            if mine:
                client.send(b"".join(mine), len(mine))

    def _heartbeat(self) -> None:
        for client in tuple(self._clients):
            client.send(b": keepalive\n\n")

    # ---------------------------------------------------------------- clients

    def open(self, request: Any, types: Iterable[str], last_id: int | None, peer: str | None) -> _Client:
        """Start streaming to ``request`` (headers already set): hello, the gap notice if
        any, the buffered events after ``last_id``, then live events."""
        if self._flush_call is not None:  # the others get this turn's frames now: the ring is then all there is
            self._flush_call.cancel()
            self._flush()
        client = _Client(self, request, frozenset(types), peer)
        request.registerProducer(client, True)
        request.write(_frame("hello", {"run": self.bus.run_id, "seq": self.bus.seq, "oldest_seq": self.oldest_seq}))
        if last_id is not None:
            reason = None
            if last_id > self.bus.seq:
                reason = "restart"
            elif last_id < self.evicted_seq:
                reason = "evicted"
            if reason is not None:
                request.write(_frame("gap", {"last_event_id": last_id, "oldest_seq": self.oldest_seq,
                                             "run": self.bus.run_id, "reason": reason}))
            else:
                for seq, name, data in self._ring:
                    if seq > last_id and name in client.types:
                        client.send(data)
        self._clients.add(client)
        request.notifyFinish().addBoth(lambda _: self._gone(client))
        return client

    def _gone(self, client: _Client) -> None:
        client.closed = True
        client.backlog.clear()
        client.waiting = 0
        self._clients.discard(client)
