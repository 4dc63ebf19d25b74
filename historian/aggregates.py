"""Daily and monthly aggregates per meter: kept forever, maintained incrementally, off the
ingest path.

Blocking (the upkeep service's thread, or ``st2000r db purge``).  Why each rule:

- **a day is the local day of ``[historian] aggregate_timezone``, as the interval
  (midnight, next midnight]**: a reading taken at exactly midnight closes the day before,
  as a meter's daily frozen value does.  That is the interval ``historian.queries.usage``
  uses for a period (from the value at or before its start to the value at or before its
  end), so the days of a period add up to its usage exactly; a month is its days;
- **consumption is the usage rule, not a second one**: for each installation of the
  meter overlapping the day, :func:`~st2000r.historian.queries.chain` of the value before
  the day (the last reading of the meter's latest earlier aggregate, when it belongs to
  the installation; its ``start_value`` otherwise), the readings of the day and the final
  value of a removal inside the day, summed by :func:`~st2000r.historian.queries.steps`
  (rollovers and reverse flow as usage counts them).  So each step between consecutive
  values counts in the day of its later value;
- **incremental**: readings above the watermark (``aggregate_state.watermark``, a
  ``readings.id``) mark their (meter, day) as touched, and only those rows change.  The
  common case -- readings after the row's last one, one installation over the whole day
  -- extends the row by the steps from its last value (steps add pair by pair), without
  reading the day again; any other is recomputed from the day's raw readings, so a late
  reading (a spool replayed hours later) corrects the day it belongs to, whenever it
  arrives.  When a day's last reading changes, the
  meter's next aggregated day is recomputed too (its first step starts there).
  Installations newer than ``installation_mark`` touch the day of the replacement and any
  aggregated day of the meter after it.
  Months change by the difference between each day's new and old row;
- **one transaction per chunk** (``CHUNK`` readings): the rows, the months and the
  watermark commit together, so a crash repeats a chunk or nothing, and running again
  changes nothing.  The state row is updated with a condition on what was read: when
  another aggregator (the service and ``st2000r db purge``) or a purge moved it in
  between, the chunk is rolled back (:class:`Conflict`) and taken again later;
- **purged days** (``purged_through``: their raw readings are gone) cannot be recomputed:
  a reading that arrives for one is added to its readings, quality counts and first/last;
  its consumption stays as counted (the steps around a value inserted between two others
  add up to the same total), so sums over periods stay right.

SQLite's keys: the purge never deletes the reading at the watermark itself, so the largest
key never goes away and SQLite never hands out a key below the watermark again.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine

from st2000r.historian.aggregate_sql import (
    day_ends_stmt,
    day_installations_stmt,
    day_readings_stmt,
    earlier_day_stmt,
    later_days_stmt,
    new_readings_stmt,
    next_days_stmt,
    rows_stmt,
    upsert,
)
from st2000r.historian.queries import chain, steps
from st2000r.historian.schema import (
    QUALITIES,
    aggregate_state,
    as_utc,
    daily_aggregates,
    installations,
    monthly_aggregates,
)

__all__ = ["CHUNK", "IN_BATCH", "COUNTS", "Zone", "State", "AggregateReport", "ZoneMismatch", "Conflict",
           "read_state", "aggregate", "aggregate_chunk"]

#: readings per transaction
CHUNK = 10_000
#: meters in one ``IN (...)`` list at most (SQL Server takes 2,100 parameters a statement);
#: for more, one statement without a list (``aggregate_sql``)
IN_BATCH = 500
#: the additive columns of an aggregate row
COUNTS = ("consumption", "rollovers", "reversals", "n_readings", *[f"n_{q}" for q in QUALITIES], "n_other")
_ENDS = ("first_at", "first_value", "last_at", "last_value")


class ZoneMismatch(Exception):
    """The aggregates were built in another time zone than the configured one."""


class Conflict(Exception):
    """Another aggregator or a purge moved the state while a chunk was computed."""


@dataclass(frozen=True, slots=True)
class Zone:
    """Local days and months of an IANA time zone (module docstring: a day is
    ``(midnight, next midnight]``)."""

    name: str

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.name)

    def day_of(self, at: datetime) -> date:
        local = at.astimezone(self.tz)
        if local.time() == time(0):
            return local.date() - timedelta(days=1)
        return local.date()

    def midnight(self, day: date) -> datetime:
        """The UTC instant of the local midnight that starts ``day``."""
        return datetime.combine(day, time(0), tzinfo=self.tz).astimezone(UTC)

    def bounds(self, day: date) -> tuple[datetime, datetime]:
        """``(start, end)`` in UTC: the day holds readings with ``start < read_at <= end``."""
        return self.midnight(day), self.midnight(day + timedelta(days=1))

    @staticmethod
    def month_of(day: date) -> date:
        return day.replace(day=1)


@dataclass(frozen=True, slots=True)
class State:
    """``aggregate_state``: aggregates hold every reading with ``id <= watermark``."""

    id: int
    watermark: int
    installation_mark: int
    timezone: str
    purged_through: datetime | None


@dataclass(frozen=True, slots=True)
class AggregateReport:
    """One call of :func:`aggregate`: ``readings`` taken, daily and monthly ``rows``
    written, the ``watermark`` after, and whether ``more`` readings wait."""

    readings: int
    days: int
    months: int
    watermark: int
    more: bool


# ---------------------------------------------------------------- state


def read_state(conn: Connection, zone: str, *, create: bool = True) -> State:
    """The bookkeeping row (made on the first call; with ``create`` False a fresh state is
    returned instead).  Raises :class:`ZoneMismatch` when the aggregates were built in
    another zone."""
    s = aggregate_state
    row = conn.execute(select(s).order_by(s.c.id).limit(1)).first()
    if row is None and not create:
        return State(0, 0, 0, zone, None)
    if row is None:
        conn.execute(s.insert().values(watermark=0, installation_mark=0, timezone=zone))
        row = conn.execute(select(s).order_by(s.c.id).limit(1)).one()
    if row.timezone != zone:
        raise ZoneMismatch(f"the aggregates were built in time zone {row.timezone!r}, the configuration says "
                           f"{zone!r}: set [historian] aggregate_timezone = \"{row.timezone}\" (they are not rebuilt)")
    return State(row.id, row.watermark, row.installation_mark, row.timezone, as_utc(row.purged_through))


def _claim(conn: Connection, state: State, **values: Any) -> None:
    """Update the state row if nobody moved it since ``state`` was read; else :class:`Conflict`."""
    s = aggregate_state
    where = [s.c.id == state.id, s.c.watermark == state.watermark, s.c.installation_mark == state.installation_mark]
    where.append(s.c.purged_through.is_(None) if state.purged_through is None
                 else s.c.purged_through == state.purged_through)
    if conn.execute(update(s).where(*where).values(**values)).rowcount != 1:
        raise Conflict("the aggregate state moved while a chunk was computed")


# ---------------------------------------------------------------- the job


def aggregate(engine: Engine, zone: str, *, chunk: int = CHUNK, max_chunks: int | None = None) -> AggregateReport:
    """Aggregate every reading above the watermark, a chunk per transaction (all of them,
    or ``max_chunks``); returns the totals."""
    n = days = months = chunks = 0
    while True:
        with engine.begin() as conn:
            report = aggregate_chunk(conn, Zone(zone), chunk=chunk)
        n, days, months, chunks = n + report.readings, days + report.days, months + report.months, chunks + 1
        if not report.more or (max_chunks is not None and chunks >= max_chunks):
            return AggregateReport(n, days, months, report.watermark, report.more)


def _row(row: Any) -> dict[str, Any]:
    """A stored aggregate row as plain values (times aware UTC)."""
    out = dict(row._mapping)
    out.pop("id", None)
    for k in ("first_at", "last_at"):
        out[k] = as_utc(out[k])
    return out


def aggregate_chunk(conn: Connection, zone: Zone, *, chunk: int = CHUNK) -> AggregateReport:
    """One chunk inside the caller's transaction (module docstring)."""
    state = read_state(conn, zone.name)
    new = conn.execute(new_readings_stmt(state.watermark, chunk)).all()
    inst = conn.execute(select(installations.c.id, installations.c.meter, installations.c.installed_at)
                        .where(installations.c.id > state.installation_mark).order_by(installations.c.id)).all()
    if not new and not inst:
        return AggregateReport(0, 0, 0, state.watermark, False)
    job = _Job(conn, zone, state.purged_through)
    for row in new:
        day = zone.day_of(as_utc(row.read_at))
        job.touch(row.meter, day)
        job.arrived[(row.meter, day)].append(row)
    for row in inst:  # a replacement: its day, and any aggregated day after it (installed in the past)
        first = zone.day_of(as_utc(row.installed_at))
        job.touch(row.meter, first, forced=True)
        for (day,) in conn.execute(later_days_stmt(row.meter, first)):
            job.touch(row.meter, day, forced=True)
    job.run()
    watermark = new[-1].id if new else state.watermark
    _claim(conn, state, watermark=watermark, installation_mark=inst[-1].id if inst else state.installation_mark,
           aggregated_at=datetime.now(UTC))
    upsert(conn, daily_aggregates, ("meter", "day"), job.daily_rows())
    month_rows = job.month_rows()
    upsert(conn, monthly_aggregates, ("meter", "month"), month_rows)
    return AggregateReport(len(new), len(job.changed), len(month_rows), watermark, len(new) == chunk)


class _Job:
    """The touched (meter, day) pairs of one chunk, computed day by day in time order."""

    def __init__(self, conn: Connection, zone: Zone, purged_through: datetime | None) -> None:
        self.conn, self.zone, self.purged_through = conn, zone, purged_through
        self.touched: dict[date, set[int]] = defaultdict(set)
        self.heap: list[date] = []
        self.meter_days: dict[int, set[date]] = defaultdict(set)
        self.arrived: dict[tuple[int, date], list[Any]] = defaultdict(list)
        self.old: dict[tuple[int, date], dict[str, Any] | None] = {}
        self.changed: dict[tuple[int, date], dict[str, Any]] = {}  # rows to write
        self.latest: dict[int, dict[date, dict[str, Any]]] = defaultdict(dict)  # this chunk's rows by meter
        self.forced: set[tuple[int, date]] = set()

    def touch(self, meter: int, day: date, *, forced: bool = False) -> None:
        """Mark (meter, day) for this chunk; ``forced``: for another reason than readings
        that arrived (a replacement, an earlier day's last reading that moved)."""
        if day not in self.touched:
            heapq.heappush(self.heap, day)
        self.touched[day].add(meter)
        self.meter_days[meter].add(day)
        if forced:
            self.forced.add((meter, day))

    def run(self) -> None:
        while self.heap:
            day = heapq.heappop(self.heap)
            meters = self.touched.pop(day)
            start, end = self.zone.bounds(day)
            for row in self._each(lambda m: rows_stmt(daily_aggregates, "day", m, day), meters):
                self.old[(row.meter, day)] = _row(row)
            ordered = sorted(meters)
            if self.purged_through is not None and end <= self.purged_through:
                self._merge(ordered, day)
            else:
                self._recompute(ordered, day, start, end)

    def _each(self, build: Any, meters: Iterable[int]) -> Iterator[Any]:
        """The rows of ``build(meter list)`` for ``meters``: one IN list for a few, or for
        more than ``IN_BATCH`` one statement without a list (``build(None)``: its day or
        month narrows it), filtered here -- PostgreSQL plans a long IN list slowly."""
        wanted = set(meters)
        if len(wanted) <= IN_BATCH:
            if wanted:
                yield from self.conn.execute(build(sorted(wanted)))
            return
        for row in self.conn.execute(build(None)):
            if row.meter in wanted:
                yield row

    # -- a day whose raw readings are kept: recomputed from them

    def _recompute(self, meters: list[int], day: date, start: datetime, end: datetime) -> None:
        installs: dict[int, list[Any]] = defaultdict(list)
        for row in self._each(lambda m: day_installations_stmt(m, start, end), meters):
            installs[row.meter].append(row)
        moved, slow = [], []
        for meter in meters:
            new = self._extended(meter, day, start, end, installs.get(meter, []))
            if new is None:
                slow.append(meter)
            else:
                self._result(meter, day, new, moved)
        by_meter: dict[int, list[Any]] = defaultdict(list)
        for row in self._each(lambda m: day_readings_stmt(m, start, end), slow):
            by_meter[row.meter].append(row)
        before = self._before(slow, day)
        for meter in slow:
            new = _day_row(meter, day, start, end, by_meter.get(meter, []), installs.get(meter, []),
                           before.get(meter))
            if new is not None:
                self._result(meter, day, new, moved)
        if moved and self.conn.execute(select(daily_aggregates.c.id).where(daily_aggregates.c.day > day)
                                       .limit(1)).first() is None:
            moved = []  # the newest day anywhere: no later day to correct (the common case)
        for row in self._each(lambda m: next_days_stmt(m, day), moved):
            if not any(day < d < row.day for d in self.meter_days[row.meter]):
                self.touch(row.meter, row.day, forced=True)

    def _result(self, meter: int, day: date, new: dict[str, Any], moved: list[int]) -> None:
        old = self.old.get((meter, day))
        self.latest[meter][day] = new
        if old != new:
            self.changed[(meter, day)] = new
        if old is None or (old["last_at"], old["last_value"]) != (new["last_at"], new["last_value"]):
            moved.append(meter)

    def _extended(self, meter: int, day: date, start: datetime, end: datetime,
                  installs: list[Any]) -> dict[str, Any] | None:
        """The common case without reading the day again: readings that arrived after the
        stored row's last one, one installation over the whole day -- the row goes on by the
        steps from its last value (the usage rule sums steps pair by pair).  None: recompute."""
        old, arrived = self.old.get((meter, day)), self.arrived.get((meter, day))
        if (meter, day) in self.forced or old is None or old["last_at"] is None or not arrived or len(installs) != 1:
            return None
        inst = installs[0]
        if as_utc(inst.installed_at) > start or (inst.removed_at is not None and as_utc(inst.removed_at) <= end):
            return None
        new_rows = sorted(arrived, key=lambda r: (as_utc(r.read_at), r.id))
        if as_utc(new_rows[0].read_at) <= old["last_at"]:
            return None  # a late reading inside the day (or one the row already holds): recompute
        row = dict(old)
        total, rollovers, reversals = steps([old["last_value"], *[r.value for r in new_rows]])
        row["consumption"] += total
        row["rollovers"] += rollovers
        row["reversals"] += reversals
        for r in new_rows:
            _count(row, r.quality)
        row["last_at"], row["last_value"] = as_utc(new_rows[-1].read_at), new_rows[-1].value
        return row

    def _before(self, meters: list[int], day: date) -> dict[int, tuple[datetime, int]]:
        """Each meter's last reading before ``day`` as aggregated: ``(time, value)`` (this
        chunk's rows, else the day before in one query, else the latest earlier day)."""
        out: dict[int, tuple[datetime, int]] = {}
        best: dict[int, date] = {}
        for meter in meters:
            mine = [d for d, row in self.latest[meter].items() if d < day and row["last_at"] is not None]
            if mine:
                best[meter] = max(mine)
                row = self.latest[meter][best[meter]]
                out[meter] = row["last_at"], row["last_value"]
        yesterday = day - timedelta(days=1)
        ask = [m for m in meters if best.get(m) != yesterday]
        for row in self._each(lambda m: day_ends_stmt(m, yesterday), ask):
            best[row.meter], out[row.meter] = yesterday, (as_utc(row.last_at), row.last_value)
        for meter in ask:
            if best.get(meter) == yesterday:
                continue
            found = self.conn.execute(earlier_day_stmt(meter, day)).first()
            if found is not None and (meter not in best or found.day > best[meter]):
                out[meter] = as_utc(found.last_at), found.last_value
        return out

    # -- a day whose raw readings were purged: the new readings merged in

    def _merge(self, meters: list[int], day: date) -> None:
        for meter in meters:
            arrived = self.arrived.get((meter, day))
            old = self.old.get((meter, day))
            if not arrived:
                continue
            row = dict(old) if old is not None else {"meter": meter, "day": day, **{k: None for k in _ENDS},
                                                     **{k: 0 for k in COUNTS}}
            for r in arrived:
                at = as_utc(r.read_at)
                _count(row, r.quality)
                if row["first_at"] is None or at < row["first_at"]:
                    row["first_at"], row["first_value"] = at, r.value
                if row["last_at"] is None or at >= row["last_at"]:
                    row["last_at"], row["last_value"] = at, r.value
            self.changed[(meter, day)] = self.latest[meter][day] = row

    # -- results

    def daily_rows(self) -> list[dict[str, Any]]:
        return list(self.changed.values())

    def month_rows(self) -> list[dict[str, Any]]:
        """Each touched month: its stored row changed by the difference of its days."""
        deltas: dict[tuple[int, date], dict[str, Any]] = {}
        for (meter, day), new in self.changed.items():
            old = self.old.get((meter, day))
            key = (meter, Zone.month_of(day))
            delta = deltas.setdefault(key, {"meter": meter, "month": key[1], **{k: None for k in _ENDS},
                                            **{k: 0 for k in COUNTS}})
            for k in COUNTS:
                delta[k] += new[k] - (old[k] if old is not None else 0)
            _widen(delta, new)
        out = []
        by_month: dict[date, list[int]] = defaultdict(list)
        for meter, month in deltas:
            by_month[month].append(meter)
        for month, meters in by_month.items():
            stored = {row.meter: _row(row)
                      for row in self._each(lambda m: rows_stmt(monthly_aggregates, "month", m, month), meters)}
            for meter in meters:
                delta = deltas[(meter, month)]
                row = stored.get(meter)
                if row is None:
                    out.append(delta)
                    continue
                for k in COUNTS:
                    row[k] += delta[k]
                _widen(row, delta)
                out.append(row)
        return out


def _widen(row: dict[str, Any], other: dict[str, Any]) -> None:
    """Extend ``row``'s first and last reading by ``other``'s (a day only ever gains readings)."""
    if other["first_at"] is not None and (row["first_at"] is None or other["first_at"] < row["first_at"]):
        row["first_at"], row["first_value"] = other["first_at"], other["first_value"]
    if other["last_at"] is not None and (row["last_at"] is None or other["last_at"] > row["last_at"]):
        row["last_at"], row["last_value"] = other["last_at"], other["last_value"]


def _count(row: dict[str, Any], quality: str) -> None:
    row["n_readings"] += 1
    key = f"n_{quality}"
    row[key if quality in QUALITIES else "n_other"] += 1


def _day_row(meter: int, day: date, start: datetime, end: datetime, rows: list[Any], installs: list[Any],
             prev: tuple[datetime, int] | None) -> dict[str, Any] | None:
    """The aggregate of ``meter`` over ``(start, end]`` from its readings there (time order),
    its installations overlapping it and its last aggregated reading before (module
    docstring); None when the day has neither a reading nor a removal."""
    times = [as_utc(r.read_at) for r in rows]
    row: dict[str, Any] = {"meter": meter, "day": day, **{k: None for k in _ENDS}, **{k: 0 for k in COUNTS}}
    removal = False
    for inst in installs:
        installed, removed = as_utc(inst.installed_at), as_utc(inst.removed_at)
        seg_start = max(start, installed)
        seg_end = min(end, removed) if removed is not None else end
        if installed <= start:
            before = prev[1] if prev is not None and prev[0] >= installed else None
        else:  # installed inside the day: a reading at the very instant (usage: "at or before" the start)
            before = next((r.value for t, r in reversed(list(zip(times, rows))) if t == installed), None)
        inside = [r.value for t, r in zip(times, rows) if seg_start < t <= seg_end]
        final = inst.final_value if removed is not None and removed <= end else None
        if not inside and final is None:
            continue
        removal = removal or final is not None
        total, rollovers, reversals = steps(chain(before, inst.start_value, inside, final))
        row["consumption"] += total
        row["rollovers"] += rollovers
        row["reversals"] += reversals
    if not rows and not removal:
        return None
    for r in rows:
        _count(row, r.quality)
    if rows:
        row["first_at"], row["first_value"] = times[0], rows[0].value
        row["last_at"], row["last_value"] = times[-1], rows[-1].value
    return row
