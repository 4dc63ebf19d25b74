"""The one crossing between Twisted Deferreds and asyncio coroutines of the bridge.

pymodbus is asyncio; the supervisor is Twisted on the asyncio reactor (one loop).  A
coroutine becomes a Deferred through ``Deferred.fromFuture(asyncio.ensure_future(coro))``
(``Deferred.fromCoroutine`` cannot drive coroutines that await asyncio futures); a Deferred
is awaited inside asyncio code as ``d.asFuture(loop)``.  Nothing else in ``bridge/`` mixes the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from twisted.internet import defer

__all__ = ["deferred", "awaitable"]


def deferred(coro: Coroutine[Any, Any, Any]) -> defer.Deferred:
    """Run ``coro`` on the running loop; a Deferred of its result."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro))


def awaitable(d: defer.Deferred) -> asyncio.Future:
    """A future of ``d`` on the current loop, for ``await`` in asyncio code."""
    return d.asFuture(asyncio.get_event_loop())
