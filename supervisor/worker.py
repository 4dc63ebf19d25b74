"""One thread for a service's blocking jobs (SQLite, PostgreSQL, fsync), run in order.

The state store, the historian's writer and its upkeep each own one: a job runs on the
worker's single thread and its result comes back to the reactor as a Deferred.  With a
clock that cannot take calls from threads (``task.Clock`` in tests) jobs run inline, so
the same code is tested deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads

__all__ = ["SerialWorker"]


class SerialWorker:
    """``run(fn, *args)`` -> Deferred of ``fn(*args)``: on the worker's thread between
    :meth:`start` and :meth:`stop`, inline otherwise.  ``stop`` is for an idle worker (its
    owner has waited for every job)."""

    def __init__(self, clock: Any, name: str) -> None:
        self.clock = clock
        self.name = name
        self._pool: Any = None

    @property
    def threaded(self) -> bool:
        """Whether jobs run on the worker's own thread now."""
        return self._pool is not None

    def start(self) -> None:
        if self._pool is None and IReactorFromThreads.providedBy(self.clock):
            from twisted.python.threadpool import ThreadPool

            self._pool = ThreadPool(minthreads=1, maxthreads=1, name=self.name)
            self._pool.start()

    def run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._pool is None:
            return defer.maybeDeferred(fn, *args)
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self.clock, self._pool, fn, *args)

    def stop(self, _: Any = None) -> None:
        """Stop the thread (later jobs run inline); as a callback it ends the chain with None."""
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
