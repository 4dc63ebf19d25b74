"""Queries for billing staff: consumption across meter replacements and counter rollovers,
suspicious readings, exports.

Blocking (run them on a connection, off the reactor).  Why the consumption is computed
from consecutive readings and not as "last minus first": a meter replaced in the period has
two counters (the old one's final reading, the new one's start reading), and a counter that
wraps at its top (:data:`ROLLOVER`) makes "last minus first" negative.  So, per installation
(``meter_installations``: which serial served the household at a place, from when to when)
overlapping the period:

- the value at the segment's start: the installation's last reading at or before it (its
  ``start_value`` when there is none, e.g. it was installed inside the period);
- the value at its end: ``final_value`` when it was removed inside the period, else its
  last reading at or before the end;
- consumption = sum of the steps between consecutive values; a step down from the top
  tenth of the counter into its bottom tenth is a rollover (``+ ROLLOVER``), any other step
  down is reverse flow (kept negative, counted in ``reversals``, flagged by
  :func:`suspicious`).

Where raw readings were purged (``[historian] keep_raw_days``), the part of a period before
the purge horizon is summed from the daily aggregates, which hold the same steps by the day
of their later value (``historian/aggregate_queries.py``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.engine import Connection

from st2000r.historian.schema import as_utc, installations, meters, readings

__all__ = ["ROLLOVER", "chain", "steps", "purge_horizon", "Segment", "Usage", "usage", "Suspicion", "suspicious", "export_readings",
           "installations_stmt", "value_before_stmt", "values_inside_stmt", "suspicious_stmt", "export_page_stmt"]

#: a register of 6 integer and 2 decimal digits of m³ or kWh wraps after 999999.99, i.e. at
#: 10^9 base units (L or Wh)
ROLLOVER = 10**9


@dataclass(frozen=True, slots=True)
class Segment:
    """One installation's share of a period.  Values in base units; times UTC."""

    meter_id: str
    serial: str
    kind: str
    base_unit: str
    start: datetime
    end: datetime
    start_value: int
    end_value: int
    consumption: int
    rollovers: int
    reversals: int


@dataclass(frozen=True, slots=True)
class Usage:
    """A household's consumption over ``[start, end]``: per kind (base units) and the
    segments it is made of."""

    household: str
    start: datetime
    end: datetime
    by_kind: dict[str, int]
    segments: tuple[Segment, ...]


def chain(before: int | None, start_value: int, inside: list[int], final: int | None) -> list[int]:
    """The values one installation's consumption over a span is summed over: the value
    before the span (its ``start_value`` when there is none), the readings inside, and its
    ``final`` value when it was removed inside.  ``historian/aggregates.py`` uses the same."""
    values = [before if before is not None else start_value, *inside]
    if final is not None:
        values.append(final)
    return values


def steps(values: list[int]) -> tuple[int, int, int]:
    """``(consumption, rollovers, reversals)`` of consecutive ``values`` (module docstring)."""
    return _steps(values)


def _steps(values: list[int]) -> tuple[int, int, int]:
    total = rollovers = reversals = 0
    for before, after in zip(values, values[1:]):
        step = after - before
        if step < 0 and before >= ROLLOVER * 9 // 10 and after < ROLLOVER // 10:
            step += ROLLOVER
            rollovers += 1
        elif step < 0:
            reversals += 1
        total += step
    return total, rollovers, reversals


# ---------------------------------------------------------------- statements
# Each SELECT the queries issue is built by one of these functions, so the tests can compile
# exactly what runs for SQL Server (tests/historian/test_hist_mssql.py).  Portable on
# purpose: comparisons, joins, ORDER BY and a row limit only (no database functions); a
# limit becomes LIMIT on SQLite and PostgreSQL and TOP on SQL Server.


def installations_stmt(household: str, start: datetime, end: datetime) -> Select:
    """The installations of ``household`` overlapping ``[start, end]`` with their meter."""
    i, m = installations, meters
    return (select(i.c.id, i.c.meter, i.c.serial, i.c.installed_at, i.c.removed_at, i.c.start_value,
                   i.c.final_value, m.c.meter_id, m.c.kind, m.c.base_unit)
            .select_from(i.join(m, i.c.meter == m.c.id))
            .where(i.c.household == household, i.c.installed_at <= end,
                   or_(i.c.removed_at.is_(None), i.c.removed_at > start))
            .order_by(m.c.meter_id, i.c.installed_at))


def _in_installation(meter: int, installed: datetime, removed: datetime | None) -> list[Any]:
    r = readings
    where = [r.c.meter == meter, r.c.read_at >= installed]
    if removed is not None:
        where.append(r.c.read_at <= removed)
    return where


def value_before_stmt(meter: int, installed: datetime, removed: datetime | None, at: datetime) -> Select:
    """The installation's last reading at or before ``at`` (one row at most)."""
    r = readings
    return (select(r.c.value).where(*_in_installation(meter, installed, removed), r.c.read_at <= at)
            .order_by(r.c.read_at.desc(), r.c.id.desc()).limit(1))


def values_inside_stmt(meter: int, installed: datetime, removed: datetime | None, start: datetime,
                       end: datetime) -> Select:
    """The installation's readings in ``(start, end]``, in time order."""
    r = readings
    return (select(r.c.value).where(*_in_installation(meter, installed, removed), r.c.read_at > start,
                                    r.c.read_at <= end)
            .order_by(r.c.read_at, r.c.id))


def suspicious_stmt(start: datetime, end: datetime) -> Select:
    """Every reading of ``[start, end]`` per meter in time order."""
    r, m = readings, meters
    return (select(m.c.meter_id, r.c.read_at, r.c.value).select_from(r.join(m, r.c.meter == m.c.id))
            .where(r.c.read_at >= start, r.c.read_at <= end)
            .order_by(m.c.meter_id, r.c.read_at, r.c.id))


def export_page_stmt(start: datetime, end: datetime, after_id: int, page: int) -> Select:
    """One page of the export: up to ``page`` readings of ``[start, end)`` with a key above
    ``after_id``, by key (keyset paging: every page is an index range scan, however deep)."""
    r, m = readings, meters
    return (select(r.c.id, m.c.meter_id, m.c.household, m.c.kind, r.c.read_at, r.c.value, m.c.base_unit,
                   r.c.quality, r.c.source).select_from(r.join(m, r.c.meter == m.c.id))
            .where(and_(r.c.id > after_id, r.c.read_at >= start, r.c.read_at < end)).order_by(r.c.id).limit(page))


def usage(conn: Connection, household: str, start: datetime, end: datetime) -> Usage:
    """Consumption of ``household`` from ``start`` to ``end`` (aware datetimes; module
    docstring for the rules)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)  # SQLite compares UTC text
    rows = conn.execute(installations_stmt(household, start, end)).all()
    segments = []
    by_kind: dict[str, int] = {}
    horizon = purge_horizon(conn) if rows else None
    for row in rows:
        installed, removed = as_utc(row.installed_at), as_utc(row.removed_at)
        seg_start = max(start, installed)
        seg_end = min(end, removed) if removed is not None else end
        if horizon is not None:  # raw readings were purged: the value before may be gone too
            from st2000r.historian.aggregate_queries import purged_segment

            segment = purged_segment(conn, row, seg_start, seg_end, end, *horizon)
            segments.append(segment)
            by_kind[row.kind] = by_kind.get(row.kind, 0) + segment.consumption
            continue
        before = conn.execute(value_before_stmt(row.meter, installed, removed, seg_start)).scalar()
        inside = [v for (v,) in conn.execute(values_inside_stmt(row.meter, installed, removed, seg_start, seg_end))]
        final = row.final_value if removed is not None and removed <= end else None
        values = chain(before, row.start_value, inside, final)
        total, rollovers, reversals = _steps(values)
        segments.append(Segment(row.meter_id, row.serial, row.kind, row.base_unit, seg_start, seg_end, values[0],
                                values[-1], total, rollovers, reversals))
        by_kind[row.kind] = by_kind.get(row.kind, 0) + total
    return Usage(household, start, end, by_kind, tuple(segments))


def purge_horizon(conn: Connection) -> tuple[datetime, str] | None:
    """``(purged_through, time zone)`` when raw readings were purged (then usage before
    that instant comes from the daily aggregates), else None."""
    from sqlalchemy import inspect

    from st2000r.historian.schema import aggregate_state

    if not inspect(conn).has_table(aggregate_state.name):  # a database not yet upgraded
        return None
    row = conn.execute(select(aggregate_state.c.purged_through, aggregate_state.c.timezone)
                       .order_by(aggregate_state.c.id).limit(1)).first()
    if row is None or row.purged_through is None:
        return None
    return as_utc(row.purged_through), row.timezone


@dataclass(frozen=True, slots=True)
class Suspicion:
    """A meter whose readings look wrong.  ``rule``: ``zero`` (no consumption for
    ``days``), ``reverse`` (a reading below the one before, not a rollover), ``jump`` (a step
    over the threshold).  ``at``: when it was seen (the later reading); ``detail``: values."""

    meter_id: str
    rule: str
    at: datetime
    detail: str


def suspicious(conn: Connection, start: datetime, end: datetime, *, zero_days: int = 7,
               jump: int = 10_000_000) -> list[Suspicion]:
    """Readings in ``[start, end]`` that a billing clerk should look at, per meter in time
    order: reverse flow, jumps larger than ``jump`` base units, and meters whose value did
    not move for ``zero_days`` days or more."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    rows = conn.execute(suspicious_stmt(start, end)).all()
    out: list[Suspicion] = []
    last: dict[str, tuple[datetime, int]] = {}
    still_since: dict[str, datetime] = {}
    flagged_zero: set[str] = set()
    for meter_id, at, value in rows:
        at = as_utc(at)
        prev = last.get(meter_id)
        if prev is not None:
            step, rollovers, reversals = _steps([prev[1], value])
            if reversals:
                out.append(Suspicion(meter_id, "reverse", at, f"{prev[1]} -> {value}"))
            elif step > jump:
                out.append(Suspicion(meter_id, "jump", at, f"{prev[1]} -> {value} (+{step})"))
            if step == 0:
                since = still_since.setdefault(meter_id, prev[0])
                if (at - since).days >= zero_days and meter_id not in flagged_zero:
                    flagged_zero.add(meter_id)
                    out.append(Suspicion(meter_id, "zero", at, f"{value} unchanged since {since.isoformat()}"))
            else:
                still_since.pop(meter_id, None)
                flagged_zero.discard(meter_id)
        last[meter_id] = (at, value)
    return out


def export_readings(conn: Connection, start: datetime, end: datetime, path: str, *, encoding: str = "utf-8-sig",
                    page: int = 10_000) -> int:
    """Write readings of ``[start, end)`` to a CSV file (``encoding``: ``utf-8-sig`` -- UTF-8
    with BOM -- or ``gbk``, as Chinese billing systems expect); pages by key so a large
    export holds one page in memory.  Returns the rows written."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    n = 0
    with open(path, "w", encoding=encoding, newline="") as f:
        out = csv.writer(f)
        out.writerow(["meter_id", "household", "kind", "read_at", "value", "base_unit", "quality", "source"])
        for row in _pages(conn, start, end, page):
            out.writerow([row.meter_id, row.household or "", row.kind, as_utc(row.read_at).isoformat(), row.value,
                          row.base_unit, row.quality, row.source])
            n += 1
    return n


def _pages(conn: Connection, start: datetime, end: datetime, page: int) -> Iterator[Any]:
    last = 0
    while True:
        rows = conn.execute(export_page_stmt(start, end, last, page)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id
