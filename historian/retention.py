"""Retention: raw readings older than ``[historian] keep_raw_days`` are deleted, in bounded
chunks, and only once their day is aggregated.

Blocking (the upkeep service's thread, or ``st2000r db purge``).  Why each rule:

- **the cutoff is a local midnight** of the aggregates' zone: the one that starts the day
  ``keep_raw_days`` days before today.  Every reading of those whole days and of today is
  kept; older days go whole (a day is ``(midnight, next midnight]``, so a reading taken at
  the cutoff itself belongs to the last purged day);
- **only aggregated readings**: a reading is deleted only when its key is below the
  aggregates' watermark (its day's row holds it), and the cutoff stops before the day of
  the earliest reading not yet aggregated: its day, and the days after, wait for the next
  purge.  Strictly below: the reading at the watermark stays, so SQLite never reuses a
  key the aggregates have passed (``historian/aggregates.py``);
- **the purge horizon moves first**: ``aggregate_state.purged_through`` is advanced in its
  own transaction before a row is deleted, so from then on the aggregator merges a late
  reading of those days into its row instead of recomputing the day from raw readings that
  are going away (an aggregator chunk computed across the move is rolled back and redone);
- **bounded transactions**: ``chunk`` readings per transaction, by key range, so the
  database (SQLite's single writer above all) is never held for long and the writer of new
  readings gets in between chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection, Engine

from st2000r.historian.aggregates import Zone, read_state
from st2000r.historian.schema import aggregate_state, as_utc, readings

__all__ = ["PURGE_CHUNK", "PurgeReport", "cutoff_for", "purge", "purge_ids_stmt", "purge_delete_stmt"]

#: readings deleted per transaction
PURGE_CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """``cutoff``: readings at or before it (UTC) were due; ``deleted`` of them in
    ``chunks`` transactions (with ``dry_run``: would be deleted); ``waiting``: due but kept
    (not aggregated yet, or the reading at the watermark); ``more``: ``max_chunks`` stopped
    it early."""

    cutoff: datetime
    deleted: int
    chunks: int
    waiting: int
    dry_run: bool
    more: bool = False


def cutoff_for(zone: Zone, keep_days: int, now: datetime) -> datetime:
    """The local midnight starting the day ``keep_days`` before ``now``'s local day, in UTC."""
    today = now.astimezone(zone.tz).date()
    return zone.midnight(today - timedelta(days=keep_days))


def purge_ids_stmt(cutoff: datetime, watermark: int, chunk: int) -> Any:
    """The keys of the next ``chunk`` readings due (oldest key first)."""
    r = readings
    return select(r.c.id).where(r.c.read_at <= cutoff, r.c.id < watermark).order_by(r.c.id).limit(chunk)


def purge_delete_stmt(first: int, last: int, cutoff: datetime, watermark: int) -> Any:
    """Delete the due readings with keys ``first..last`` (one chunk)."""
    r = readings
    return delete(r).where(r.c.id >= first, r.c.id <= last, r.c.read_at <= cutoff, r.c.id < watermark)


def _limit(conn: Connection, zone: Zone, cutoff: datetime, watermark: int) -> datetime:
    """``cutoff``, or earlier: the midnight starting the day of the earliest reading not yet
    aggregated, so the horizon never passes a day whose aggregate is not up to date."""
    r = readings
    earliest = conn.execute(select(func.min(r.c.read_at)).where(r.c.id > watermark)).scalar()
    if earliest is None:
        return cutoff
    return min(cutoff, zone.midnight(zone.day_of(as_utc(earliest))))


def _due(conn: Connection, cutoff: datetime, watermark: int | None = None) -> int:
    r = readings
    where = [r.c.read_at <= cutoff] + ([r.c.id < watermark] if watermark is not None else [])
    return conn.execute(select(func.count()).select_from(r).where(*where)).scalar_one()


def purge(engine: Engine, zone: str, keep_days: int, now: datetime, *, chunk: int = PURGE_CHUNK,
          dry_run: bool = False, max_chunks: int | None = None) -> PurgeReport:
    """Delete the raw readings ``keep_days`` (> 0) allow (module docstring); with
    ``dry_run`` count them and change nothing.  The report's ``cutoff`` is the one used:
    earlier than ``keep_days`` says while older readings wait for aggregation.  Raises
    ``aggregates.ZoneMismatch``."""
    if keep_days <= 0:
        raise ValueError("keep_days must be positive (0 keeps raw readings forever)")
    wanted = cutoff_for(Zone(zone), keep_days, now)
    if dry_run:
        with engine.connect() as conn:
            state = read_state(conn, zone, create=False)
            cutoff = _limit(conn, Zone(zone), wanted, state.watermark)
            due = _due(conn, cutoff, state.watermark)
            return PurgeReport(cutoff, due, 0, _due(conn, wanted) - due, True)
    s = aggregate_state
    with engine.begin() as conn:
        state = read_state(conn, zone)
        watermark = state.watermark
        cutoff = _limit(conn, Zone(zone), wanted, watermark)
        if state.purged_through is None or state.purged_through < cutoff:
            conn.execute(update(s).where(s.c.id == state.id).values(purged_through=cutoff, purged_at=now))
    deleted = chunks = 0
    more = False
    while True:
        if max_chunks is not None and chunks >= max_chunks:
            more = True
            break
        with engine.begin() as conn:
            ids = conn.execute(purge_ids_stmt(cutoff, watermark, chunk)).scalars().all()
            if not ids:
                break
            deleted += conn.execute(purge_delete_stmt(ids[0], ids[-1], cutoff, watermark)).rowcount
            chunks += 1
    with engine.connect() as conn:  # still due: not aggregated yet (or left by max_chunks)
        waiting = _due(conn, wanted)
    return PurgeReport(as_utc(cutoff), deleted, chunks, waiting, False, more)
