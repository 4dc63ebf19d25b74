"""The store-and-forward writer: events from the bus into the database, nothing lost.

Why this shape (the issue's rules, and how each is kept):

- **fed by the event bus** as a queued consumer of ``ReadingBatch``, ``AlarmChanged``,
  ``CommandChanged``, ``CdtChanged`` and ``LinkChanged``; the consumer only turns an event
  into rows in memory, so it never makes the bus wait, and its ``overflow`` takes the same
  path: a ``ReadingBatch`` is never dropped;
- **spooled soon, written in batches**: every ``spool_delay_s`` (0.1 s; and as soon as
  ``batch_rows`` rows wait) the rows in memory go to the writer thread and into the spool;
  the database is written every ``max_delay_s`` (0.5 s) or as soon as ``batch_rows`` rows
  wait in the spool.  The spool interval is the window a SIGKILL or a power cut can take
  readings from (``docs/historian.md``, "What a crash can lose"), the database interval
  sets the size of its transactions;
- **write-ahead spool**: on the writer thread a batch is first appended to the
  :class:`~st2000r.historian.spool.Spool` (fsync'd, checksummed), then the oldest spooled
  batches go to the database, several per transaction, in order; a batch leaves the spool
  only after its commit.  So the database sees rows in the order they were produced,
  whether it was reachable or away for days, and a crash between the commit and the
  acknowledgement replays a batch that the idempotent inserts then skip;
- **unreachable database**: a connection error leaves the spool as it is; the writer tries
  again after a back-off (1 s doubling to ``retry_max_s``), logging the transition once;
- **schema**: at the first contact the schema revision is checked; an older one stops
  writing (rows keep going to the spool), raises the alarm ``historian:schema`` and logs the
  command that fixes it; it is checked again at every retry;
- **quarantine**: a batch the database rejects (integrity or data errors: not a connection
  fault) is written row by row; rows that still fail, and readings of meters no longer
  configured, go to ``quarantine.jsonl`` beside the spool with the reason (``st2000r db
  quarantine`` lists, exports and retries them) -- never silently dropped;
- **bounded**: the spool is bounded (``spool_max_bytes``); at 80 % the alarm
  ``historian:spool`` is raised; when full, batches wait in memory (logged) rather than be
  dropped;
- **visible**: :meth:`Historian.status` gives spool depth (rows, bytes), the oldest row's
  age, rows written and the write rate, the database state and quarantined rows; the same
  figures go on the bus as ``HistorianChanged`` (for Modbus, the API and the console) at
  once when the state changes and, while they move, at most every ``status_every_s``; while
  rows wait in the spool (the database is away, or a backlog is draining) the same figures
  are logged once a minute (``BACKLOG_LOG_S``), the first time after a minute of backlog,
  so the batches every flush spools and writes at once never log.

With a clock that cannot run threads (a test's ``Clock``) the blocking work runs inline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exc as sa_exc
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from st2000r.config.model import Topology
from st2000r.historian import db, store
from st2000r.historian.spool import Spool, SpoolFull
from st2000r.supervisor.events import (AlarmChanged, CdtChanged, CommandChanged, HistorianChanged, LinkChanged,
                                       ReadingBatch, utc)
from st2000r.supervisor.worker import SerialWorker

__all__ = ["Historian", "HistorianStatus", "QUARANTINE_FILE", "STORED_EVENTS", "for_topology", "check_at_start"]

log = Logger()

QUARANTINE_FILE = "quarantine.jsonl"
#: while the spool holds rows, its depth, oldest age and the write rate are logged this often
BACKLOG_LOG_S = 60.0
STORED_EVENTS = (ReadingBatch, AlarmChanged, CommandChanged, CdtChanged, LinkChanged)
#: errors that mean "the database cannot be used now" (retry later), not "this row is bad"
_UNREACHABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
                sa_exc.ProgrammingError, sa_exc.InternalError, sa_exc.TimeoutError)
_REJECTED = (sa_exc.IntegrityError, sa_exc.DataError)


@dataclass(frozen=True, slots=True)
class HistorianStatus:
    """What the historian is doing.  ``state``: ``starting`` | ``connected`` |
    ``unreachable`` | ``schema`` (refusing to write: see ``problem``).  ``spool_rows``/
    ``spool_bytes``: not yet committed; ``oldest_age_s``: age of the oldest of them (0 when
    none); ``written``: rows committed since start; ``rate``: rows/s over the last
    minute-ish; ``quarantined``: rows set aside since start; ``memory_rows``: rows waiting
    in memory (the next batch, or every batch while the spool is full)."""

    state: str
    problem: str | None
    spool_rows: int
    spool_bytes: int
    spool_max_bytes: int
    oldest_age_s: float
    written: int
    rate: float
    quarantined: int
    memory_rows: int


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, _UNREACHABLE) and not isinstance(exc, _REJECTED)


class Historian(Service):
    """The writer for ``topology`` into ``url`` (module docstring).  ``spool_dir``: the spool
    folder; ``config_name``: the file named in the upgrade hint; ``alarms``: an object with
    ``raise_alarm``/``clear_alarm`` (the AlarmManager) or None."""

    name = "historian"

    def __init__(self, topology: Topology, url: str, clock: IReactorTime, bus: Any, spool_dir: str, *,
                 batch_rows: int = 2000, max_delay_s: float = 0.5, spool_delay_s: float = 0.1,
                 spool_max_bytes: int = 1 << 30,
                 records_per_transaction: int = 16, retry_max_s: float = 30.0, config_name: str = "CONFIG",
                 alarms: Any = None, engine_factory: Callable[[str], Any] = db.make_engine,
                 auto_upgrade: bool = False, status_every_s: float = 5.0) -> None:
        self.topology = topology
        self.url = url
        self.clock = clock
        self.bus = bus
        self.spool_dir = spool_dir
        self.batch_rows = batch_rows
        self.max_delay_s = max_delay_s
        self.spool_delay_s = min(spool_delay_s, max_delay_s)
        self._db_at = float("-inf")  # when the database was last tried
        self.spool_max_bytes = spool_max_bytes
        self.records_per_transaction = records_per_transaction
        self.retry_max_s = retry_max_s
        self.config_name = config_name
        self.alarms = alarms
        self._engine_factory = engine_factory
        self.auto_upgrade = auto_upgrade
        self._engine: Any = None
        self._meter_keys: dict[str, int] | None = None
        self.spool: Spool | None = None
        self._buffer: dict[str, list[Any]] = {k: [] for k in store.KINDS}
        self._buffered = 0
        self._held: list[dict[str, Any]] = []  # batches the full spool could not take
        self.worker = SerialWorker(clock, "st2000r-historian-writer")
        self._run = self.worker.run
        self._consumer: Any = None
        self._loop: LoopingCall | None = None
        self._last: defer.Deferred = defer.succeed(None)
        self._state = "starting"
        self._problem: str | None = None
        self._retry_at = 0.0
        self._backoff = 1.0
        self.written = 0
        self.quarantined = 0
        self._rate_marks: list[tuple[float, int]] = []
        self._spool_alarm = False
        self._backlog_mark: float | None = None  # when the backlog was first seen or last logged
        self.status_every_s = status_every_s
        self._published: tuple | None = None  # the figures of the last HistorianChanged
        self._published_at = 0.0

    # ---------------------------------------------------------------- service

    def startService(self) -> None:
        # The first contact with a database is the heaviest Python work the writer does
        # (Alembic's imports and migrations, the topology's rows).  Done on the writer thread
        # while the links come up, it starves the reactor of the interpreter lock long enough
        # for bus transactions to time out (100 GPRS DTUs polled at start failed that way).
        # So: the imports always, and for the embedded file all of it, here, before the
        # reactor serves anything; a remote database that does not answer is not waited for.
        import alembic.command  # noqa: F401
        import alembic.runtime.migration  # noqa: F401
        import alembic.script  # noqa: F401

        if self.auto_upgrade:
            try:
                self._thd_prepare()
            except Exception:
                log.failure("historian {url}: preparing the embedded database failed; the writer will retry",
                            url=db.describe_url(self.url))
        self.spool = Spool(self.spool_dir, self.spool_max_bytes)
        for problem in self.spool.problems:
            log.error("historian spool: {problem}", problem=problem)
        if self.spool.rows:
            log.info("historian spool {dir}: {rows} row(s) of an earlier run to replay", dir=self.spool_dir,
                     rows=self.spool.rows)
        super().startService()
        self.worker.start()
        self._consumer = self.bus.attach(self._on_event, STORED_EVENTS, limit=10_000, overflow=self._on_event,
                                         name="historian")
        self._loop = LoopingCall(self.flush)
        self._loop.clock = self.clock
        self._loop.start(self.spool_delay_s, now=True)

    def stopService(self) -> defer.Deferred:
        """Drain the bus queue, flush to the spool (always) and to the database (when it
        answers), close; fires when done."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        d = self._drained()
        d.addCallback(lambda _: self._detach())
        d.addCallback(lambda _: self.flush(final=True))
        d.addErrback(lambda f: log.failure("historian: final flush failed", f))
        d.addBoth(lambda _: self._run(self._thd_close))
        d.addBoth(self.worker.stop)
        return d

    def _drained(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()

        def check() -> None:
            if self._consumer is None or self._consumer.depth == 0:
                d.callback(None)
            else:
                self.clock.callLater(0, check)

        check()
        return d

    def _detach(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        self._consumer = None

    # ---------------------------------------------------------------- feeding (reactor thread)

    def _on_event(self, event: Any) -> None:
        found = store.event_rows(event)
        if found is None:
            return
        kind, rows = found
        self._buffer[kind].extend(rows)
        self._buffered += len(rows)
        if self._buffered >= self.batch_rows:
            self.flush()

    def flush(self, final: bool = False) -> defer.Deferred:
        """Hand the rows in memory to the writer thread: into the spool, and into the database
        when that is due (``max_delay_s`` since the last try, ``batch_rows`` rows in the spool,
        or ``final``) and no back-off holds it; fires when this and every earlier write is
        done.  Never fails."""
        self._log_backlog()
        self._publish_status()
        batch = None
        if self._buffered:  # "n" and "at" first: the spool reads them without decoding the batch
            batch = {"n": self._buffered, "at": self.clock.seconds()}
            batch.update((k, v) for k, v in self._buffer.items() if v)
            self._buffer = {k: [] for k in store.KINDS}
            self._buffered = 0
        now = self.clock.seconds()
        spooled = (self.spool.rows if self.spool is not None else 0) + (batch["n"] if batch else 0)
        due = final or spooled >= self.batch_rows or now - self._db_at >= self.max_delay_s - 1e-6
        try_db = due and now >= self._retry_at and (not final or self._state != "unreachable")
        if batch is None and not self._held and not (try_db and self.spool is not None and self.spool.rows):
            return self._when_done()
        if try_db:
            self._db_at = now
        d = self._last.addBoth(lambda _: self._run(self._thd_write, batch, try_db))
        d.addCallbacks(self._written, self._crashed)
        self._last = d
        return self._when_done()

    def _when_done(self) -> defer.Deferred:
        out: defer.Deferred = defer.Deferred()

        def fire(result: Any) -> Any:
            out.callback(None)
            return result

        self._last.addBoth(fire)
        return out

    # ---------------------------------------------------------------- writer thread

    def _thd_write(self, batch: dict[str, Any] | None, try_db: bool) -> tuple[str, str | None, int, int] | None:
        """Spool ``batch`` (and any held ones), then (``try_db``) move spooled batches into the
        database.  Returns ``(state, problem, rows committed, rows quarantined)``, or None when
        the database was not tried (its state and back-off stay as they are)."""
        assert self.spool is not None
        if batch is not None:
            self._held.append(batch)
        while self._held:
            try:
                self.spool.append(self._held[0])
            except SpoolFull:
                break
            self._held.pop(0)
        if not try_db:
            return None
        return self._thd_drain()

    def _thd_drain(self) -> tuple[str, str | None, int, int]:
        assert self.spool is not None
        committed = quarantined = 0
        try:
            problem = self._thd_prepare()
            if problem is not None:
                return "schema", problem, 0, 0
            while self.spool.rows:
                records = self.spool.head(self.records_per_transaction)
                rejected: list[tuple] = []
                payloads = [self.spool.load(record) for record in records]
                # one statement a table for the whole transaction (a backlog drains in
                # records_per_transaction batches at a time); each table keeps the spool's order
                merged = payloads[0] if len(payloads) == 1 else {
                    kind: [row for payload in payloads for row in payload.get(kind, ())] for kind in store.KINDS}
                try:
                    with self._engine.begin() as conn:
                        rejected.extend(store.write_batch(conn, merged, self._meter_keys))
                except _REJECTED:
                    rejected = self._thd_one_by_one(records)
                self._thd_quarantine(rejected)
                self.spool.ack(records[-1])
                committed += sum(r.rows for r in records) - len(rejected)
                quarantined += len(rejected)
        except Exception as exc:
            if self._engine is not None:
                self._engine.dispose()
            self._meter_keys = None
            if not _unreachable(exc) and not isinstance(exc, (OSError, sa_exc.SQLAlchemyError)):
                raise
            return "unreachable", str(exc).splitlines()[0] if str(exc) else type(exc).__name__, committed, quarantined
        return "connected", None, committed, quarantined

    def _thd_prepare(self) -> str | None:
        """Engine, schema check (and upgrade of the embedded file), the topology's rows; the
        schema problem in words, or None.  Raises what connecting raises."""
        if self._engine is None:
            self._engine = self._engine_factory(self.url)
        if self._meter_keys is None:
            with self._engine.connect() as conn:
                status = db.schema_status(conn)
            if not status.ok and self.auto_upgrade and not status.newer:
                status = db.upgrade(self._engine)
            problem = status.problem(self.config_name)
            if problem is not None:
                return problem
            with self._engine.begin() as conn:
                self._meter_keys = store.sync_topology(conn, self.topology, datetime.now(UTC))
        return None

    def _thd_one_by_one(self, records: list[Any]) -> list[tuple]:
        """Each row in its own transaction; the ones the database rejects come back."""
        rejected: list[tuple] = []
        assert self._meter_keys is not None
        for record in records:
            for kind in store.KINDS:
                for row in self.spool.load(record).get(kind, ()):
                    try:
                        with self._engine.begin() as conn:
                            rejected.extend(store.write_one(conn, kind, row, self._meter_keys))
                    except _REJECTED as exc:
                        rejected.append(([kind, row], str(exc.orig if hasattr(exc, "orig") else exc).splitlines()[0]))
        return rejected

    def _thd_quarantine(self, rejected: list[tuple]) -> None:
        if not rejected:
            return
        path = os.path.join(self.spool_dir, QUARANTINE_FILE)
        with open(path, "a", encoding="utf-8") as f:
            for (kind_row, reason) in rejected:
                kind, row = kind_row
                f.write(json.dumps({"kind": kind, "row": row, "reason": reason}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _thd_close(self) -> None:
        if self.spool is not None:
            self.spool.close()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # ---------------------------------------------------------------- results (reactor thread)

    def _written(self, result: tuple[str, str | None, int, int] | None) -> None:
        if result is None:  # only spooled: a retry is not due yet, and this was none
            self._check_spool()
            self._publish_status()
            return
        state, problem, committed, quarantined = result
        now = self.clock.seconds()
        self.written += committed
        self.quarantined += quarantined
        if quarantined:
            log.error("historian: {n} row(s) rejected by the database set aside to {file} "
                      "(st2000r db quarantine lists and retries them)", n=quarantined,
                      file=os.path.join(self.spool_dir, QUARANTINE_FILE))
        self._rate_marks.append((now, self.written))
        while len(self._rate_marks) > 2 and now - self._rate_marks[1][0] >= 60:
            self._rate_marks.pop(0)
        if state != self._state or problem != self._problem:
            self._transition(state, problem)
        if state == "connected":
            self._backoff = 1.0
            self._retry_at = 0.0
        elif state in ("unreachable", "schema"):
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, self.retry_max_s)
        self._check_spool()
        self._publish_status()

    def _crashed(self, failure: Any) -> None:
        log.failure("historian: writer failed (rows stay in the spool and are retried)", failure)
        self._retry_at = self.clock.seconds() + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max_s)

    def _transition(self, state: str, problem: str | None) -> None:
        where = db.describe_url(self.url)
        if state == "connected":
            log.info("historian {url}: writing", url=where)
        elif state == "unreachable":
            log.warn("historian {url}: unreachable ({problem}); spooling to {dir}", url=where, problem=problem,
                     dir=self.spool_dir)
        elif state == "schema":
            log.error("historian {url}: {problem}; spooling to {dir} until then", url=where, problem=problem,
                      dir=self.spool_dir)
        if self.alarms is not None:
            if state == "schema":
                self.alarms.raise_alarm("historian:schema", "historian", "historian", problem or "schema")
            elif self._state == "schema":
                self.alarms.clear_alarm("historian:schema", "schema upgraded")
        self._state, self._problem = state, problem

    def _check_spool(self) -> None:
        if self.spool is None:
            return
        high = self.spool.bytes >= 0.8 * self.spool_max_bytes
        if high and not self._spool_alarm:
            text = (f"historian spool {self.spool_dir} at {self.spool.bytes * 100 // self.spool_max_bytes} % of "
                    f"{self.spool_max_bytes:,} bytes")
            log.error("{text}", text=text)
            if self.alarms is not None:
                self.alarms.raise_alarm("historian:spool", "historian", "historian", text)
        elif not high and self._spool_alarm and self.alarms is not None:
            self.alarms.clear_alarm("historian:spool", "spool drained")
        self._spool_alarm = high

    # ---------------------------------------------------------------- visibility

    def _log_backlog(self) -> None:
        """Log the spool's figures once a minute while it keeps holding rows (module docstring)."""
        if self.spool is None or not self.spool.rows:
            self._backlog_mark = None
            return
        now = self.clock.seconds()
        if self._backlog_mark is None:
            self._backlog_mark = now
            return
        if now - self._backlog_mark < BACKLOG_LOG_S:
            return
        self._backlog_mark = now
        s = self.status()
        log.info("historian backlog: {rows} row(s), {bytes:,} bytes in the spool ({percent:.0f} % of its bound), "
                 "the oldest {age:.0f} s old; writing {rate:.0f} rows/s ({state}{problem})", rows=s.spool_rows,
                 bytes=s.spool_bytes, percent=100 * s.spool_bytes / max(1, s.spool_max_bytes), age=s.oldest_age_s,
                 rate=s.rate, state=s.state, problem=f": {s.problem}" if s.problem else "", status=s)

    def _publish_status(self) -> None:
        """``HistorianChanged`` on the bus: at once when the state or its problem changed,
        else when a figure changed and ``status_every_s`` passed since the last one."""
        s = self.status()
        figures = (s.state, s.problem, s.spool_rows, s.spool_bytes, s.spool_max_bytes, int(s.oldest_age_s),
                   round(s.rate), s.written, s.quarantined)
        if figures == self._published:
            return
        now = self.clock.seconds()
        if (self._published is not None and figures[:2] == self._published[:2]
                and now - self._published_at < self.status_every_s):
            return
        self._published, self._published_at = figures, now
        self.bus.publish(HistorianChanged(*figures, at=utc(now)))

    def status(self) -> HistorianStatus:
        spool = self.spool
        oldest = 0.0
        if spool is not None:
            first = spool.oldest()  # read from the reactor while the writer thread may ack
            if first is not None:
                oldest = max(0.0, self.clock.seconds() - (first.at if first.at is not None else self.clock.seconds()))
        rate = 0.0
        if len(self._rate_marks) >= 2:
            (t0, n0), (t1, n1) = self._rate_marks[0], self._rate_marks[-1]
            rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        return HistorianStatus(self._state, self._problem, spool.rows if spool else 0, spool.bytes if spool else 0,
                               self.spool_max_bytes, oldest, self.written, rate, self.quarantined,
                               self._buffered + sum(b["n"] for b in self._held))


def for_topology(topology: Topology, clock: IReactorTime, bus: Any, *, alarms: Any = None) -> Historian:
    """The historian a topology asks for: ``[historian] url``, or the embedded default
    (``historian.sqlite`` in the state folder), which -- being the supervisor's own file, like
    ``state.sqlite`` -- it creates and upgrades itself; a configured database is only ever
    changed by ``st2000r db upgrade``."""
    settings = topology.historian
    url = settings.url or db.default_url(topology.settings.state_dir)
    return Historian(topology, url, clock, bus, os.path.join(topology.settings.state_dir, "historian-spool"),
                     spool_max_bytes=settings.spool_max_mb * 1024 * 1024, config_name=topology.source,
                     alarms=alarms, auto_upgrade=settings.url is None)


def check_at_start(topology: Topology) -> str | None:
    """Why ``st2000r run`` must not start (a reachable database with an older or newer
    schema; the message names the command that fixes it), or None.  An unreachable database
    is no reason: the writer spools and checks again once it answers.  Blocking."""
    settings = topology.historian
    if not settings.enabled or settings.url is None:
        return None
    try:
        engine = db.make_engine(settings.url)
    except (sa_exc.ArgumentError, ModuleNotFoundError) as exc:
        return f"[historian] url {db.describe_url(settings.url)}: {exc}"
    try:
        with engine.connect() as conn:
            status = db.schema_status(conn)
    except sa_exc.SQLAlchemyError as exc:
        log.warn("historian {url} does not answer ({why}); starting anyway, spooling until it does",
                 url=db.describe_url(settings.url), why=str(exc).splitlines()[0])
        return None
    finally:
        engine.dispose()
    problem = status.problem(topology.source)
    return f"historian {db.describe_url(settings.url)}: {problem}" if problem else None
