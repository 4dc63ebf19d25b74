"""The historian's upkeep: daily and monthly aggregates and the retention purge, on a timer,
off the ingest path.

Why a service of its own and not part of the writer: the writer's batches are compared
with a bare executemany (``bench/``), so nothing is added to them; the aggregates follow
the readings table by its keys (``historian/aggregates.py``) whenever this runs.  Every
``interval_s`` of the injected clock it aggregates what arrived, a chunk per thread call
(one transaction each, the reactor gets its turn in between), then, with
``keep_raw_days``, purges in bounded chunks (``historian/retention.py``).  Work runs on a
thread of its own with its own engine (SQLite's writer lock is taken per chunk, briefly);
with a clock that cannot run threads (a test's ``Clock``) it runs inline.

Problems are logged once when they start and once when they end: a database that does not
answer (the writer spools meanwhile), a schema older than this version (``st2000r db
upgrade``), aggregates built in another time zone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exc as sa_exc
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from st2000r.historian import db
from st2000r.historian.aggregates import CHUNK, AggregateReport, Conflict, ZoneMismatch, aggregate
from st2000r.historian.retention import PURGE_CHUNK, PurgeReport, purge
from st2000r.supervisor.worker import SerialWorker

__all__ = ["Upkeep", "for_topology", "INTERVAL_S"]

log = Logger()

#: how often the aggregates catch up (and the purge runs)
INTERVAL_S = 300.0
#: purge chunks per thread call
PURGE_CHUNKS_PER_CALL = 20


class Upkeep(Service):
    """Aggregates and retention of the historian at ``url`` (module docstring).
    ``keep_raw_days``: 0 keeps raw readings forever.  ``clock``: timer and "now"."""

    name = "historian-upkeep"

    def __init__(self, url: str, clock: IReactorTime, *, zone: str = "UTC", keep_raw_days: int = 0,
                 interval_s: float = INTERVAL_S, chunk: int = CHUNK, purge_chunk: int = PURGE_CHUNK,
                 config_name: str = "CONFIG", engine_factory: Callable[[str], Any] = db.make_engine) -> None:
        self.url = url
        self.config_name = config_name
        self.clock = clock
        self.zone = zone
        self.keep_raw_days = keep_raw_days
        self.interval_s = interval_s
        self.chunk = chunk
        self.purge_chunk = purge_chunk
        self._engine_factory = engine_factory
        self._engine: Any = None
        self._schema_ok = False
        self.worker = SerialWorker(clock, "st2000r-historian-upkeep")
        self._run = self.worker.run
        self._loop: LoopingCall | None = None
        self._busy: defer.Deferred | None = None
        self._problem: str | None = None
        #: totals since start (for status and tests)
        self.aggregated = 0
        self.purged = 0
        self.rounds = 0

    def startService(self) -> None:
        super().startService()
        self.worker.start()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval_s, now=False)

    def stopService(self) -> defer.Deferred:
        """Stop the timer, let a running round finish its chunk, close; fires when done."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        d = self._busy if self._busy is not None else defer.succeed(None)
        out: defer.Deferred = defer.Deferred()
        d.addBoth(lambda _: None)
        d.addBoth(lambda _: self._run(self._thd_close)).addBoth(self.worker.stop).addBoth(out.callback)
        return out

    # ---------------------------------------------------------------- rounds (reactor thread)

    def tick(self) -> defer.Deferred:
        """One round: aggregate everything new, then purge; fires when done (at once when a
        round is still running)."""
        if self._busy is not None:
            return defer.succeed(None)
        self._busy = d = defer.Deferred()
        self._aggregate_step()
        return d

    def _finish(self, problem: str | None) -> None:
        if problem != self._problem:
            where = db.describe_url(self.url)
            if problem is None:
                log.info("historian {url}: aggregates and retention running again", url=where)
            else:
                log.warn("historian {url}: aggregates and retention wait: {problem}", url=where, problem=problem)
            self._problem = problem
        self.rounds += 1
        d, self._busy = self._busy, None
        if d is not None:
            d.callback(None)

    def _aggregate_step(self) -> None:
        if not self.running:
            return self._finish(self._problem)
        d = self._run(self._thd_aggregate)

        def done(report: AggregateReport | str) -> None:
            if isinstance(report, str):
                return self._finish(report)
            self.aggregated += report.readings
            if report.more:  # the rest in the next reactor turn: the reactor is served in between
                self.clock.callLater(0, self._aggregate_step)
            elif self.keep_raw_days > 0:
                self._purge_step()
            else:
                self._finish(None)

        d.addCallbacks(done, self._failed)

    def _purge_step(self) -> None:
        if not self.running:
            return self._finish(self._problem)
        d = self._run(self._thd_purge, datetime.fromtimestamp(self.clock.seconds(), UTC))

        def done(report: PurgeReport | str) -> None:
            if isinstance(report, str):
                return self._finish(report)
            self.purged += report.deleted
            if report.deleted:
                log.info("historian: {n} raw reading(s) up to {cutoff} purged ({days} day(s) kept; daily and monthly "
                         "aggregates keep them)", n=report.deleted, cutoff=report.cutoff.isoformat(),
                         days=self.keep_raw_days)
            if report.more:
                self.clock.callLater(0, self._purge_step)
            else:
                self._finish(None)

        d.addCallbacks(done, self._failed)

    def _failed(self, failure: Any) -> None:
        log.failure("historian upkeep failed; retried in {s} s", failure, s=self.interval_s)
        self._finish(f"{failure.type.__name__}: {failure.getErrorMessage()}")

    # ---------------------------------------------------------------- thread

    def _ready(self) -> str | None:
        """Open the engine and check the schema once; the problem in words, or None."""
        if self._engine is None:
            self._engine = self._engine_factory(self.url)
        if not self._schema_ok:
            with self._engine.connect() as conn:
                status = db.schema_status(conn)
            if not status.ok:
                return status.problem(self.config_name)
            self._schema_ok = True
        return None

    def _guard(self, work: Callable[[], Any]) -> Any:
        try:
            problem = self._ready()
            return problem if problem is not None else work()
        except Conflict as exc:
            return f"{exc} (taken again next round)"
        except ZoneMismatch as exc:
            return str(exc)
        except sa_exc.SQLAlchemyError as exc:
            self._schema_ok = False
            if self._engine is not None:
                self._engine.dispose()
            return str(exc).splitlines()[0] or type(exc).__name__

    def _thd_aggregate(self) -> AggregateReport | str:
        return self._guard(lambda: aggregate(self._engine, self.zone, chunk=self.chunk, max_chunks=1))

    def _thd_purge(self, now: datetime) -> PurgeReport | str:
        return self._guard(lambda: purge(self._engine, self.zone, self.keep_raw_days, now, chunk=self.purge_chunk,
                                         max_chunks=PURGE_CHUNKS_PER_CALL))

    def _thd_close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def for_topology(topology: Any, clock: IReactorTime, url: str | None = None) -> Upkeep:
    """The upkeep a topology asks for (``[historian]`` ``url`` or the embedded default,
    ``keep_raw_days``, ``aggregate_timezone``)."""
    settings = topology.historian
    if url is None:
        url = settings.url or db.default_url(os.fspath(topology.settings.state_dir))
    return Upkeep(url, clock, zone=settings.aggregate_timezone, keep_raw_days=settings.keep_raw_days,
                  config_name=topology.source)
