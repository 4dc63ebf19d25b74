"""The state folder's ``state.sqlite``: what the supervisor knew, kept across a restart.

Why: after a restart (a clean SIGTERM, a crash, SIGKILL, a power cut) operators must not
see an empty point database until the next round, and alarms they acknowledged or shelved
must not come back as new.  :class:`StateStore` keeps

- every meter point that was read: value, count, read time, valve, alarm flags, quality
  (with the meter's kind, serial, unit, pulse constant and initial reading, so a meter that
  was replaced or reconfigured while the supervisor was down is not given the old value);
- the alarm list with its acknowledge and shelve state (an alarm leaving the list is
  deleted).

Rules:

- **fed by the event bus** as a queued consumer (``MeterChanged``, ``AlarmChanged``); only
  the latest state of a meter or an alarm matters, so changes coalesce in memory until the
  next flush;
- **written off the reactor**: one writer thread (a one-thread pool) runs every write;
  a flush every ``flush_interval_s`` (2 s) and a final one at stop, each **one SQLite
  transaction** in WAL mode with ``synchronous=FULL``: after SIGKILL or a power cut the file
  holds the last committed flush, never half of one.  A write that fails is logged once,
  its changes are kept and retried at the next flush.  With a clock that cannot run threads
  (a test's ``Clock``) writes run inline, on the caller's thread;
- **never silently loaded**: :meth:`StateStore.load` (once, at start, on the caller's
  thread: nothing else runs yet and the check takes milliseconds) checks the file (a
  SQLite database, ``PRAGMA integrity_check`` ``ok``, our application id, schema version
  :data:`SCHEMA_VERSION`, rows that decode).  A file that fails is logged as an error naming
  the file and the reason, moved aside to ``state.sqlite.corrupt-<UTC time>`` (with its
  ``-wal``/``-shm``), and the supervisor starts fresh;
- restoring (:meth:`StateStore.restore_into`) puts the alarms back first, then the meters
  (STALE until read; see ``PointDatabase.restore``): a restored meter's alarm flags then
  find their acknowledged alarm already in the list instead of raising a new one.

Times are stored as ISO 8601 UTC text (exact to the microsecond, readable by any tool);
quantities as integers.  Nothing reads the wall clock: ``clock`` is the time source.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from st2000r.config.model import Meter, Topology
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.supervisor.events import Alarm, AlarmChanged, EventBus, MeterChanged, MeterId, Quality, utc
from st2000r.supervisor.points import MeterPoint
from st2000r.supervisor.worker import SerialWorker

__all__ = ["FILE_NAME", "SCHEMA_VERSION", "SavedState", "StateStats", "StateStore", "check_state_dir"]

log = Logger()

FILE_NAME = "state.sqlite"
SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of our files ("S2KR"): tells our state file from any other SQLite file
APPLICATION_ID = 0x53324B52

_SCHEMA = (
    """CREATE TABLE meters (
        link TEXT NOT NULL, cdt INTEGER NOT NULL, module INTEGER NOT NULL, channel INTEGER NOT NULL,
        kind TEXT NOT NULL, serial TEXT NOT NULL, household TEXT, unit TEXT NOT NULL,
        pulse_constant INTEGER NOT NULL, initial INTEGER NOT NULL,
        value INTEGER NOT NULL, count INTEGER, quality TEXT NOT NULL, read_at TEXT NOT NULL,
        valve INTEGER, alarms INTEGER NOT NULL, quality_since TEXT, changed_at TEXT NOT NULL,
        PRIMARY KEY (link, cdt, module, channel))""",
    """CREATE TABLE alarms (
        id TEXT PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL,
        text TEXT NOT NULL, state TEXT NOT NULL, active INTEGER NOT NULL, raised_at TEXT NOT NULL,
        cleared_at TEXT, acked_by TEXT, acked_at TEXT, ack_note TEXT, shelved_by TEXT,
        shelved_reason TEXT, shelved_until TEXT)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_METER_COLUMNS = ("link, cdt, module, channel, kind, serial, household, unit, pulse_constant, initial, value, "
                  "count, quality, read_at, valve, alarms, quality_since, changed_at")
_ALARM_COLUMNS = ("id, source, kind, severity, text, state, active, raised_at, cleared_at, acked_by, acked_at, "
                  "ack_note, shelved_by, shelved_reason, shelved_until")


def check_state_dir(path: str | os.PathLike[str]) -> str | None:
    """Why the state folder ``path`` cannot be used (created if missing, then written by a
    probe file, which is removed), or None when it can.  A real write, not ``os.access``:
    permissions are not the only reason a folder refuses files (read-only mounts, quotas),
    and root passes every permission check."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        return f"state folder {path}: not a folder"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return f"state folder {path}: cannot create it ({exc.strerror or exc})"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"state folder {path}: not writable ({exc.strerror or exc})"
    return None


@dataclass(frozen=True, slots=True)
class SavedState:
    """What :meth:`StateStore.load` found.  ``meters``/``alarms``: what can be restored into
    the current topology.  ``saved_at``: the last flush (None for a fresh start).
    ``set_aside``: where a damaged file was moved and ``problem`` why (None when the file was
    fine or absent).  ``unknown_meters``/``unknown_alarms``: saved for places no longer in
    the topology; ``reconfigured_meters``: the meter at that place changed (serial, kind,
    pulse constant or initial reading) — none of these are restored."""

    path: str
    meters: tuple[MeterPoint, ...] = ()
    alarms: tuple[Alarm, ...] = ()
    saved_at: datetime | None = None
    set_aside: str | None = None
    problem: str | None = None
    unknown_meters: int = 0
    reconfigured_meters: int = 0
    unknown_alarms: int = 0


@dataclass(slots=True)
class StateStats:
    """Counters of a :class:`StateStore`."""

    flushes: int = 0
    meters_written: int = 0
    alarms_written: int = 0
    alarms_deleted: int = 0
    write_errors: int = 0
    last_flush: datetime | None = None


class _Corrupt(Exception):
    """The state file cannot be trusted; the message says why."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected ISO 8601 text, got {value!r}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{what}: {value!r} has no UTC offset")
    return parsed


def _int(value: Any, what: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if type(value) is not int:
        raise ValueError(f"{what}: expected an integer, got {value!r}")
    return value


# --------------------------------------------------------------------------- blocking parts
# Everything below until the service runs on one thread at a time: at start on the caller's
# thread (load), later on the writer thread only.


#: SQLite result codes that mean the file's content is bad (SQLITE_CORRUPT, SQLITE_NOTADB);
#: anything else (locked, read-only, I/O, cannot open) is a fault of the moment, not of the file
_DAMAGE_CODES = frozenset({11, 26})


def _damage(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _DAMAGE_CODES


#: how long a statement waits for another connection's lock before failing (seconds)
BUSY_TIMEOUT_S = 2.0


def _connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)


def _inspect(conn: sqlite3.Connection) -> bool:
    """True for a file with nothing in it yet (a new or empty file); raises :class:`_Corrupt`."""
    try:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if tables == 0 and app == 0 and version == 0:
            return True
        check = [row[0] for row in conn.execute("PRAGMA integrity_check(5)")]
    except sqlite3.DatabaseError as exc:
        if not _damage(exc):
            raise
        raise _Corrupt(f"unreadable as a SQLite database ({exc})") from None
    if check != ["ok"]:
        problems = [line.strip() for c in check for line in str(c).splitlines() if line.strip()]
        raise _Corrupt("failed PRAGMA integrity_check: " + "; ".join(problems[:5]))
    if app != APPLICATION_ID:
        raise _Corrupt(f"not a state file of this supervisor (application id {app:#x})")
    if version != SCHEMA_VERSION:
        raise _Corrupt(f"schema version {version}, this supervisor reads version {SCHEMA_VERSION}")
    return False


def _create(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _meter_point(row: tuple) -> MeterPoint:
    (link, cdt, module, channel, kind, serial, household, unit, _pc, _initial, value, count, quality, read_at,
     valve, alarms, quality_since, _changed) = row
    mid = MeterId(str(link), _int(cdt, "cdt"), _int(module, "module"), _int(channel, "channel"))
    return MeterPoint(mid, str(kind), str(serial), household, str(unit), _int(value, f"{mid} value"),
                      _int(count, f"{mid} count", optional=True), Quality(quality), _time(read_at, f"{mid} read_at"),
                      Valve(valve) if valve is not None else None, AlarmFlag(_int(alarms, f"{mid} alarms")),
                      _time(quality_since, f"{mid} quality_since"))


def _alarm(row: tuple) -> Alarm:
    (aid, source, kind, severity, text, state, active, raised_at, cleared_at, acked_by, acked_at, ack_note,
     shelved_by, shelved_reason, shelved_until) = row
    return Alarm(id=str(aid), source=str(source), kind=str(kind), severity=str(severity), text=str(text),
                 state=str(state), active=bool(_int(active, f"alarm {aid} active")),
                 raised_at=_time(raised_at, f"alarm {aid} raised_at"),
                 cleared_at=_time(cleared_at, f"alarm {aid} cleared_at"), acked_by=acked_by,
                 acked_at=_time(acked_at, f"alarm {aid} acked_at"), ack_note=ack_note, shelved_by=shelved_by,
                 shelved_reason=shelved_reason, shelved_until=_time(shelved_until, f"alarm {aid} shelved_until"))


def _read(conn: sqlite3.Connection) -> tuple[list[tuple[MeterPoint, tuple]], list[Alarm], datetime | None]:
    """Every saved meter (with its config fingerprint), alarm and the last flush time."""
    try:
        meters = []
        for row in conn.execute(f"SELECT {_METER_COLUMNS} FROM meters"):
            point = _meter_point(row)
            meters.append((point, (row[4], row[5], row[7], row[8], row[9])))
        alarms = [_alarm(row) for row in conn.execute(f"SELECT {_ALARM_COLUMNS} FROM alarms")]
        saved = conn.execute("SELECT value FROM meta WHERE key = 'saved_at'").fetchone()
        saved_at = _time(saved[0], "saved_at") if saved else None
    except sqlite3.DatabaseError as exc:
        if _damage(exc) or "no such" in str(exc):  # damaged, or a table/column of our schema is missing
            raise _Corrupt(f"cannot read its tables ({exc})") from None
        raise
    except (ValueError, TypeError) as exc:
        raise _Corrupt(f"a saved row does not decode ({exc})") from None
    return meters, alarms, saved_at


def _set_aside(path: str, stamp: str) -> str:
    """Move ``path`` (and its ``-wal``/``-shm``) to ``path.corrupt-STAMP[-n]``; returns the new name."""
    target = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.exists(target):
        target = f"{path}.corrupt-{stamp}-{n}"
        n += 1
    if os.path.exists(path):
        os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, target + suffix)
    return target


def _fingerprint(meter: Meter) -> tuple:
    return (meter.kind.value, meter.serial, meter.kind.base_unit, meter.pulse_constant, meter.initial)


class _Writer:
    """The writer thread's connection; one batch per transaction."""

    def __init__(self, path: str, configs: dict[MeterId, Meter]) -> None:
        self.path = path
        self.configs = configs
        self.conn: sqlite3.Connection | None = None

    def write(self, meters: list[MeterChanged], alarms: list[Alarm], saved_at: datetime, run: str) -> tuple[int, int]:
        if self.conn is None:
            self.conn = _connect(self.path)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
        conn = self.conn
        rows = []
        for e in meters:
            c = self.configs[e.meter]
            rows.append((e.meter.link, e.meter.cdt, e.meter.module, e.meter.channel, c.kind.value, c.serial,
                         c.household, c.kind.base_unit, c.pulse_constant, c.initial, e.value, e.count,
                         e.quality.value, _iso(e.timestamp), int(e.valve) if e.valve is not None else None,
                         int(e.alarms), _iso(e.quality_since), _iso(e.at)))
        kept = [(a.id, a.source, a.kind, a.severity, a.text, a.state, int(a.active), _iso(a.raised_at),
                 _iso(a.cleared_at), a.acked_by, _iso(a.acked_at), a.ack_note, a.shelved_by, a.shelved_reason,
                 _iso(a.shelved_until)) for a in alarms if a.state != "removed"]
        removed = [(a.id,) for a in alarms if a.state == "removed"]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(f"INSERT OR REPLACE INTO meters ({_METER_COLUMNS}) VALUES ({', '.join('?' * 18)})",
                             rows)
            conn.executemany(f"INSERT OR REPLACE INTO alarms ({_ALARM_COLUMNS}) VALUES ({', '.join('?' * 15)})",
                             kept)
            conn.executemany("DELETE FROM alarms WHERE id = ?", removed)
            conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             [("saved_at", saved_at.isoformat()), ("run", run)])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return len(rows), len(removed)

    def close(self) -> None:
        """Fold the WAL into the file (one file left behind) and close."""
        if self.conn is not None:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self.conn.close()
                self.conn = None


# --------------------------------------------------------------------------- the service


class StateStore(Service):
    """``STATE_DIR/state.sqlite`` of ``topology`` (rules in the module docstring).

    ``clock``: time source, and the reactor the writer thread reports back to when it
    provides ``IReactorFromThreads`` (else writes run inline).  ``bus``: where
    ``MeterChanged``/``AlarmChanged`` come from (it needs a clock: ``EventBus(clock)``).
    Start: :meth:`load` (if not done yet), then listen and flush every ``flush_interval_s``.
    Stop: waits until the bus queue is drained and the final flush is committed.
    """

    def __init__(self, state_dir: str | os.PathLike[str], clock: IReactorTime, bus: EventBus, topology: Topology,
                 *, flush_interval_s: float = 2.0, file_name: str = FILE_NAME) -> None:
        self.path = os.path.join(os.fspath(state_dir), file_name)
        self.clock = clock
        self.bus = bus
        self.topology = topology
        self.flush_interval_s = flush_interval_s
        self.stats = StateStats()
        self.saved: SavedState | None = None
        self._configs: dict[MeterId, Meter] = {}
        self._sources: set[str] = set()
        for link in topology.links():
            self._sources.add(link.name)
            self._sources.update(f"{link.name}/{r.name}" for r in link.repeaters)
            for cdt in link.cdts:
                self._sources.add(f"{link.name}/{cdt.address}")
                for module_no, channel_no, meter in cdt.meters():
                    mid = MeterId(link.name, cdt.address, module_no, channel_no)
                    self._configs[mid] = meter
                    self._sources.add(str(mid))
        self._meters: dict[MeterId, MeterChanged] = {}
        self._alarms: dict[str, Alarm] = {}
        self._writer = _Writer(self.path, self._configs)
        self.worker = SerialWorker(clock, "st2000r-state-writer")
        self._run = self.worker.run
        self._consumer: Any = None
        self._loop: LoopingCall | None = None
        self._last: defer.Deferred | None = None  # the newest write
        self._failing = False

    # ---------------------------------------------------------------- load

    def load(self) -> SavedState:
        """Check and read the file (once; later calls return the same answer).  A damaged
        file is logged, moved aside and an empty state returned; a missing one is created.
        Raises ``OSError``/``sqlite3.Error`` -- and moves nothing -- when the file cannot be
        opened, written, created or set aside for a reason that is not its content (a folder
        or file that is not writable, a file another supervisor holds locked)."""
        if self.saved is not None:
            return self.saved
        set_aside = problem = None
        meters: list[tuple[MeterPoint, tuple]] = []
        alarms: list[Alarm] = []
        saved_at = None
        conn = _connect(self.path) if os.path.exists(self.path) else None
        if conn is None and os.path.exists(self.path + "-wal"):
            # a log without its database cannot be trusted, nor left for a new file to replay
            problem = "the database file is missing but its write-ahead log is there"
        elif conn is not None:
            try:
                fresh = _inspect(conn)
                if fresh:
                    _create(conn)
                else:
                    meters, alarms, saved_at = _read(conn)
                    conn.execute("BEGIN IMMEDIATE")  # writable? (else: an error at start, not at every flush)
                    conn.execute("ROLLBACK")
            except _Corrupt as exc:
                problem = str(exc)
            finally:
                conn.close()
        if problem is not None:
            set_aside = _set_aside(self.path, utc(self.clock.seconds()).strftime("%Y%m%dT%H%M%SZ"))
            log.error("state file {path} is damaged: {problem}; moved aside to {aside}, starting without saved "
                      "state", path=self.path, problem=problem, aside=set_aside)
            meters, alarms = [], []
        if conn is None or problem is not None:
            conn = _connect(self.path)
            try:
                _create(conn)
            finally:
                conn.close()
        kept, unknown, reconfigured = [], 0, 0
        for point, fingerprint in meters:
            config = self._configs.get(point.id)
            if config is None:
                unknown += 1
            elif _fingerprint(config) != fingerprint:
                reconfigured += 1
            else:
                kept.append(point)
        known = [a for a in alarms if a.source in self._sources]
        self.saved = SavedState(self.path, tuple(kept), tuple(known), saved_at, set_aside, problem, unknown,
                                reconfigured, len(alarms) - len(known))
        if unknown or reconfigured or len(alarms) > len(known):
            log.warn("state file {path}: not restored: {unknown} meter point(s) and {alarms} alarm(s) of places no "
                     "longer configured, {reconfigured} meter point(s) whose meter was replaced or reconfigured",
                     path=self.path, unknown=unknown, alarms=len(alarms) - len(known), reconfigured=reconfigured)
        return self.saved

    def restore_into(self, points: Any, alarms: Any) -> tuple[int, int]:
        """Load and put the saved state back: ``alarms.restore`` first, then
        ``points.restore`` (why in the module docstring).  Logs one line; returns
        ``(meters, alarms)`` restored."""
        saved = self.load()
        n_alarms = alarms.restore(saved.alarms)
        n_meters = points.restore(saved.meters)
        log.info("restored {meters} meter points (stale until read) and {alarms} alarms from {path}"
                 "{saved_at}", meters=n_meters, alarms=n_alarms, path=self.path,
                 saved_at=f" (saved {saved.saved_at.isoformat()})" if saved.saved_at else "")
        return n_meters, n_alarms

    # ---------------------------------------------------------------- service

    def startService(self) -> None:
        self.load()
        super().startService()
        self.worker.start()
        self._consumer = self.bus.attach(self._on_event, (MeterChanged, AlarmChanged), name="state store")
        self._loop = LoopingCall(self.flush)
        self._loop.clock = self.clock
        self._loop.start(self.flush_interval_s, now=False)

    def stopService(self) -> defer.Deferred:
        """Drain the bus queue, flush, close the file; fires when the final flush is on disk."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        d = self._drained()
        d.addCallback(lambda _: self._detach())
        d.addCallback(lambda _: self.flush())
        d.addCallback(lambda _: self._run(self._writer.close))
        d.addErrback(lambda f: log.failure("state file {path}: closing failed", f, path=self.path))
        d.addBoth(self.worker.stop)
        return d

    def _drained(self) -> defer.Deferred:
        return self._consumer.drained() if self._consumer is not None else defer.succeed(None)

    def _detach(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        self._consumer = None

    # ---------------------------------------------------------------- feeding and flushing

    def _on_event(self, event: Any) -> None:
        if type(event) is MeterChanged:
            if event.value is not None and event.timestamp is not None and event.meter in self._configs:
                self._meters[event.meter] = event
        elif type(event) is AlarmChanged:
            self._alarms[event.alarm.id] = event.alarm

    @property
    def dirty(self) -> int:
        """Changes waiting for the next flush (meters + alarms)."""
        return len(self._meters) + len(self._alarms)

    def flush(self) -> defer.Deferred:
        """Write every change since the last flush in one transaction (off the reactor).
        Fires (never fails) when this and every earlier flush is done: True when the last
        write committed, False when it failed (its changes are kept for the next flush).
        Writes finish in the order they were asked for (one writer thread)."""
        if self._meters or self._alarms:
            meters, alarms = self._meters, self._alarms
            self._meters, self._alarms = {}, {}
            d = self._run(self._writer.write, list(meters.values()), list(alarms.values()),
                          utc(self.clock.seconds()), self.bus.run_id)
            d.addCallbacks(self._written, self._failed, callbackArgs=(len(alarms),), errbackArgs=(meters, alarms))
            self._last = d
        if self._last is None:
            return defer.succeed(True)
        out: defer.Deferred = defer.Deferred()

        def fire(result: Any) -> Any:
            out.callback(result)
            return result

        self._last.addBoth(fire)
        return out

    def _written(self, counts: tuple[int, int], n_alarms: int) -> bool:
        written, deleted = counts
        stats = self.stats
        stats.flushes += 1
        stats.meters_written += written
        stats.alarms_written += n_alarms - deleted
        stats.alarms_deleted += deleted
        stats.last_flush = utc(self.clock.seconds())
        if self._failing:
            self._failing = False
            log.info("state file {path}: saving again", path=self.path)
        return True

    def _failed(self, failure: Any, meters: dict, alarms: dict) -> bool:
        self.stats.write_errors += 1
        for key, value in meters.items():  # newer changes that arrived meanwhile win
            self._meters.setdefault(key, value)
        for key, value in alarms.items():
            self._alarms.setdefault(key, value)
        if not self._failing:
            self._failing = True
            log.error("state file {path}: cannot save ({error}); keeping {n} change(s) in memory and retrying",
                      path=self.path, error=failure.getErrorMessage(), n=len(meters) + len(alarms))
        return False
