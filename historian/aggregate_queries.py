"""Billing over periods whose raw readings were purged: the daily aggregates stand in.

Blocking.  Why it adds up: a day's ``consumption`` is the sum of the steps between
consecutive values of the meter whose later value lies in the day (``(midnight, next
midnight]``, ``historian/aggregates.py``), so the days whose end lies in a span hold
exactly the steps ``queries.usage`` sums for it when the span starts and ends at local
midnights of the aggregates' zone.  One installation's segment of a period is then:

- **before the purge horizon** (``purged_through``): the days whose end lies in
  ``(segment start, min(segment end, horizon)]``.  A day belongs to the installation whose
  segment holds the day's end, so on the day of a meter replacement the whole day (the old
  meter's last steps and its final value, the new meter's first steps) counts for the new
  installation -- once, for the household the new meter serves; a removal without a
  successor keeps its day;
- **after it**: the raw readings, exactly as ``queries.usage`` sums them, from the value at
  or before the horizon -- the later of the last raw reading and the last aggregated one.

A period bound inside a purged day is rounded to that day's end (the day counts when its
end is inside the period).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from st2000r.historian.aggregates import Zone
from st2000r.historian.queries import Segment, chain, steps, values_inside_stmt
from st2000r.historian.schema import as_utc, daily_aggregates, installations, readings

__all__ = ["purged_segment", "days_stmt", "aggregate_before_stmt", "reading_before_stmt", "successor_stmt"]


def days_stmt(meter: int, first: date, last: date) -> Any:
    """The meter's daily aggregates from ``first`` to ``last`` (dates, inclusive), in order."""
    d = daily_aggregates
    return (select(d.c.day, d.c.consumption, d.c.rollovers, d.c.reversals, d.c.last_value)
            .where(d.c.meter == meter, d.c.day >= first, d.c.day <= last).order_by(d.c.day))


def aggregate_before_stmt(meter: int, installed: datetime, at: datetime) -> Any:
    """The last aggregated reading of ``meter`` at or before ``at`` since ``installed``."""
    d = daily_aggregates
    return (select(d.c.last_at, d.c.last_value)
            .where(d.c.meter == meter, d.c.last_at <= at, d.c.last_at >= installed)
            .order_by(d.c.last_at.desc()).limit(1))


def reading_before_stmt(meter: int, installed: datetime, removed: datetime | None, at: datetime) -> Any:
    """The last raw reading of the installation at or before ``at``, with its time."""
    r = readings
    where = [r.c.meter == meter, r.c.read_at >= installed, r.c.read_at <= at]
    if removed is not None:
        where.append(r.c.read_at <= removed)
    return select(r.c.read_at, r.c.value).where(*where).order_by(r.c.read_at.desc(), r.c.id.desc()).limit(1)


def successor_stmt(meter: int, removed: datetime) -> Any:
    """An installation at the same place from ``removed`` on (one row at most)."""
    i = installations
    return select(i.c.id).where(i.c.meter == meter, i.c.installed_at >= removed).limit(1)


def _is_midnight(zone: Zone, at: datetime) -> bool:
    return zone.midnight(zone.day_of(at) + timedelta(days=1)) == at


def _days_ending_in(zone: Zone, start: datetime, end: datetime) -> tuple[date, date]:
    """``(first, last)`` day whose end (its closing midnight) lies in ``(start, end]``."""
    first = zone.day_of(start) + timedelta(days=1 if _is_midnight(zone, start) else 0)
    last = zone.day_of(end) - timedelta(days=0 if _is_midnight(zone, end) else 1)
    return first, last


def _before(conn: Connection, meter: int, installed: datetime, removed: datetime | None,
            at: datetime) -> int | None:
    """The value at or before ``at``: the later of the last raw and last aggregated reading."""
    raw = conn.execute(reading_before_stmt(meter, installed, removed, at)).first()
    agg = conn.execute(aggregate_before_stmt(meter, installed, at)).first()
    if agg is not None and (raw is None or as_utc(agg.last_at) > as_utc(raw.read_at)):
        return agg.last_value
    return raw.value if raw is not None else None


def purged_segment(conn: Connection, row: Any, seg_start: datetime, seg_end: datetime, end: datetime,
                   horizon: datetime, zone_name: str) -> Segment:
    """The :class:`~st2000r.historian.queries.Segment` of installation ``row`` (a row of
    ``queries.installations_stmt``) over ``[seg_start, seg_end]`` once raw readings up to
    ``horizon`` were purged (module docstring); ``end``: the period's end."""
    zone = Zone(zone_name)
    installed, removed = as_utc(row.installed_at), as_utc(row.removed_at)
    first, last = _days_ending_in(zone, seg_start, min(seg_end, horizon))
    if removed is not None and removed <= horizon and conn.execute(successor_stmt(row.meter, removed)).first() is None:
        last = max(last, zone.day_of(removed))  # nobody else takes the removal's day
    total = rollovers = reversals = 0
    end_value = None
    for day in conn.execute(days_stmt(row.meter, first, last)):
        total += day.consumption
        rollovers += day.rollovers
        reversals += day.reversals
        if day.last_value is not None:
            end_value = day.last_value
    start_before = _before(conn, row.meter, installed, removed, seg_start)
    start_value = start_before if start_before is not None else row.start_value
    if seg_end > horizon:
        after = max(seg_start, horizon)
        before = _before(conn, row.meter, installed, removed, after)
        inside = [v for (v,) in conn.execute(values_inside_stmt(row.meter, installed, removed, after, seg_end))]
        final = row.final_value if removed is not None and removed <= end else None
        values = chain(before, row.start_value, inside, final)
        b_total, b_rollovers, b_reversals = steps(values)
        total, rollovers, reversals = total + b_total, rollovers + b_rollovers, reversals + b_reversals
        end_value = values[-1]
    elif removed is not None and removed <= end and row.final_value is not None:
        end_value = row.final_value
    return Segment(row.meter_id, row.serial, row.kind, row.base_unit, seg_start, seg_end, start_value,
                   end_value if end_value is not None else start_value, total, rollovers, reversals)
