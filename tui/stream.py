"""Follows the supervisor's event stream for as long as the console runs.

Reconnects by itself with a capped back-off and resumes with ``Last-Event-ID`` (the last
``seq`` seen), so no buffered event is missed.  The console resynchronises (reloads what
it shows) when the supervisor says events were lost (an SSE event named ``gap``,
``missed``, ``reset`` or ``resync``) or when the ``run`` id changes (the supervisor
restarted).  The waiting function is injected so tests never sleep.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from st2000r.tui.client import ApiClient, ApiError, Unauthorized, Unreachable
from st2000r.tui.model import BadAnswer

RESYNC_EVENTS = frozenset({"gap", "missed", "reset", "resync"})


@dataclass(frozen=True, slots=True)
class StreamHandlers:
    """What the follower tells the console; every callback is plain (no awaiting)."""

    events: Callable[[list[dict[str, Any]]], None]
    state: Callable[[bool, str | None], None]  # (connected, reason when not)
    resync: Callable[[], None]
    expired: Callable[[], None]


def backoff(attempt: int, *, first: float = 0.5, cap: float = 5.0) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): 0.5, 1, 2, 4, 5, 5…"""
    return min(cap, first * (2 ** min(attempt, 16)))  # bounded exponent: no overflow after hours down


class EventFollower:
    def __init__(self, client: ApiClient, handlers: StreamHandlers, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.client, self.handlers, self.sleep = client, handlers, sleep
        self.last_id: str | None = None
        self.run: str | None = None
        self.connected = False
        self.reconnects = 0

    async def run_forever(self) -> None:
        attempt = 0
        while True:
            try:
                async for batch in self.client.events(self.last_id):
                    if not self.connected:
                        self.connected = True
                        attempt = 0
                        self.handlers.state(True, None)
                    self._deliver(batch)
                reason = "the supervisor closed the event stream"
            except Unauthorized:
                self.connected = False
                self.handlers.expired()
                return
            except (Unreachable, ApiError, BadAnswer) as exc:
                reason = getattr(exc, "reason", None) or str(exc)
            if self.connected or attempt == 0:
                self.connected = False
                self.handlers.state(False, reason)
            await self.sleep(backoff(attempt))
            attempt += 1
            self.reconnects += 1

    def _deliver(self, batch) -> None:
        events: list[dict[str, Any]] = []
        resync = False
        for sse in batch:
            if sse.id is not None:
                self.last_id = sse.id
            if sse.event in RESYNC_EVENTS:
                resync = True
                continue
            try:
                obj = json.loads(sse.data)
            except ValueError:
                continue  # not ours to show; the stream goes on
            if not isinstance(obj, dict):
                continue
            obj.setdefault("type", sse.event)
            run = obj.get("run")
            if isinstance(run, str):
                if self.run is not None and run != self.run:
                    resync = True
                self.run = run
            events.append(obj)
        if resync:
            self.handlers.resync()
        if events:
            self.handlers.events(events)
