"""Every table and view of the historian, in one place, with the conventions they share.

Conventions (why: one schema must mean the same on SQLite, PostgreSQL and SQL Server, and
a billing system reads it directly):

- **types are portable**: text is ``Unicode`` (NVARCHAR on SQL Server, so household names
  in Chinese survive), times are ``DateTime(timezone=True)`` and always UTC (SQLite keeps
  them as text without offset: :func:`as_utc` puts the offset back on reading), quantities
  are integers of the meter's base unit (``BigInteger``: a 9-digit electricity counter in
  Wh outgrows 32 bits), flags are ``Boolean``;
- **surrogate keys** are ``BigInteger`` with ``.with_variant(Integer, "sqlite")``: SQLite
  autoincrements only an ``INTEGER PRIMARY KEY``;
- **natural keys are unique constraints**: a meter is its physical place
  ``link/cdt/module/channel`` (``meters.meter_id``, DESIGN: addresses are stable); a
  reading is (meter, read time, source) -- the idempotent key that makes a replay of the
  spool after a crash insert nothing twice; an alarm or command event is (run, seq);
- **no foreign key from the time series to anything but ``meters``**: events of a link
  or command are kept as text so a topology change never rejects history;
- **aggregates** (``daily_aggregates``, ``monthly_aggregates``: one row per meter and
  local day or month of ``aggregate_state.timezone``) are kept forever, raw readings only
  ``keep_raw_days``; a day is ``(midnight, next midnight]`` so the days of a period add up
  to its usage (``historian/aggregates.py`` says why); ``aggregate_state`` is their one
  row of bookkeeping (the readings key aggregated up to, the purge horizon);
- **views** (``v_readings``, ``v_latest_readings``, ``v_alarm_history``,
  ``v_command_history``, ``v_daily_consumption``, ``v_monthly_consumption``) are the
  documented interface for billing systems (``docs/historian.md``); they are built from
  :func:`view_selects` compiled for the database at hand, so the three databases get the
  same columns.

Alembic revisions (``historian/migrations``) create exactly this; a test compares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    UniqueConstraint,
    Unicode,
    func,
    select,
)
from sqlalchemy.dialects import mssql

__all__ = ["metadata", "sites", "links", "cdts", "households", "meters", "installations", "readings",
           "alarm_events", "command_events", "health_samples", "daily_aggregates", "monthly_aggregates",
           "aggregate_state", "QUALITIES", "VIEWS", "view_selects", "as_utc", "ID"]

#: a local date (DATE; spelled out for SQL Server, whose dialect compiles a plain Date as
#: DATETIME until it has seen a server)
DAY = Date().with_variant(mssql.DATE(), "mssql")
#: surrogate key type: BIGINT everywhere, INTEGER on SQLite (its autoincrementing rowid alias)
ID = BigInteger().with_variant(Integer, "sqlite")
#: a quantity in base units (L, Wh)
QTY = BigInteger().with_variant(Integer, "sqlite")
UTCTIME = DateTime(timezone=True)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

sites = Table(
    "sites", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("name", Unicode(200), nullable=False, unique=True),
    Column("address", Unicode(400), nullable=False),
)

links = Table(
    "links", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("site_id", ID, ForeignKey("sites.id"), nullable=False),
    Column("name", Unicode(64), nullable=False, unique=True),
    Column("kind", Unicode(16), nullable=False),
)

cdts = Table(
    "cdts", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("link", Unicode(64), nullable=False),
    Column("address", Integer, nullable=False),
    Column("name", Unicode(200)),
    UniqueConstraint("link", "address"),
)

households = Table(
    "households", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("ref", Unicode(200), nullable=False, unique=True),
    Column("site", Unicode(200)),
)

meters = Table(
    "meters", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("meter_id", Unicode(96), nullable=False, unique=True),  # "link/cdt/module/channel"
    Column("link", Unicode(64), nullable=False),
    Column("cdt", Integer, nullable=False),
    Column("module", Integer, nullable=False),
    Column("channel", Integer, nullable=False),
    Column("kind", Unicode(16), nullable=False),
    Column("base_unit", Unicode(8), nullable=False),
    Column("pulse_constant", Integer, nullable=False),
    Column("serial", Unicode(14), nullable=False),
    Column("household", Unicode(200)),  # the household it bills to now (history: installations)
)

installations = Table(
    "meter_installations", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("meter", ID, ForeignKey("meters.id"), nullable=False),
    Column("serial", Unicode(14), nullable=False),
    Column("household", Unicode(200)),
    Column("installed_at", UTCTIME, nullable=False),
    Column("removed_at", UTCTIME),
    Column("start_value", QTY, nullable=False),
    Column("final_value", QTY),
    Index(None, "meter", "installed_at"),
    Index(None, "household", "installed_at"),
)

readings = Table(
    "readings", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("meter", ID, ForeignKey("meters.id"), nullable=False),
    Column("read_at", UTCTIME, nullable=False),
    Column("source", Unicode(16), nullable=False),  # plan | read_now | read_back
    Column("value", QTY, nullable=False),
    Column("count", QTY),
    Column("quality", Unicode(16), nullable=False),
    Column("valve", Unicode(8)),
    Column("alarms", Integer, nullable=False),
    Column("plan", Unicode(64)),
    Column("run", Unicode(32), nullable=False),
    Column("seq", QTY, nullable=False),
    UniqueConstraint("meter", "read_at", "source"),  # the idempotent key (see the module docstring)
    Index(None, "read_at"),
)

alarm_events = Table(
    "alarm_events", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("run", Unicode(32), nullable=False),
    Column("seq", QTY, nullable=False),
    Column("at", UTCTIME, nullable=False),
    Column("alarm_id", Unicode(200), nullable=False),
    Column("source", Unicode(96), nullable=False),
    Column("kind", Unicode(32), nullable=False),
    Column("severity", Unicode(16), nullable=False),
    Column("state", Unicode(24), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("text", Unicode(400), nullable=False),
    Column("raised_at", UTCTIME, nullable=False),
    Column("cleared_at", UTCTIME),
    Column("acked_by", Unicode(64)),
    Column("acked_at", UTCTIME),
    Column("ack_note", Unicode(400)),
    Column("shelved_by", Unicode(64)),
    Column("shelved_reason", Unicode(400)),
    Column("shelved_until", UTCTIME),
    UniqueConstraint("run", "seq"),
    Index(None, "at"),
    Index(None, "source", "at"),
)

command_events = Table(
    "command_events", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("run", Unicode(32), nullable=False),
    Column("seq", QTY, nullable=False),
    Column("at", UTCTIME, nullable=False),
    Column("command_id", Unicode(64), nullable=False),
    Column("kind", Unicode(24), nullable=False),
    Column("target", Unicode(200), nullable=False),
    Column("action", Unicode(200), nullable=False),
    Column("who", Unicode(64), nullable=False),
    Column("via", Unicode(32), nullable=False),  # the command's source: modbus | api | console | plan ...
    Column("peer", Unicode(200)),
    Column("reason", Unicode(400), nullable=False),
    Column("requested_at", UTCTIME, nullable=False),
    Column("state", Unicode(16), nullable=False),
    Column("detail", Unicode(400), nullable=False),
    Column("sent_at", UTCTIME),
    Column("finished_at", UTCTIME),
    Column("late", Boolean, nullable=False),
    UniqueConstraint("run", "seq"),
    Index(None, "at"),
    Index(None, "who", "at"),
    Index(None, "target", "at"),
)

health_samples = Table(
    "health_samples", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("run", Unicode(32), nullable=False),
    Column("seq", QTY, nullable=False),
    Column("at", UTCTIME, nullable=False),
    Column("link", Unicode(64), nullable=False),
    Column("cdt", Integer),  # None: a sample of the link itself
    Column("state", Unicode(16)),  # link: connected | disconnected | stopped | idle
    Column("online", Boolean),  # CDT
    Column("mains", Boolean),
    Column("battery_low", Boolean),
    Column("signal", Integer),
    UniqueConstraint("run", "seq"),
    Index(None, "link", "at"),
)

#: the qualities counted per day and month (``n_<quality>``); any other is ``n_other``
QUALITIES = ("good", "stale", "comm_fail", "estimated", "substituted")


def _aggregate(name: str, period: str) -> Table:
    """A table of per-meter aggregates over ``period`` (``day``: the local date; ``month``:
    the local date of its first day).  ``first_*``/``last_*``: the period's first and last
    reading (null only in a row that records just a meter's removal); ``consumption``: base
    units, the usage rule of ``historian/queries.py`` over the period; ``n_*``: readings."""
    return Table(
        name, metadata,
        Column("id", ID, primary_key=True, autoincrement=True),
        Column("meter", ID, ForeignKey("meters.id"), nullable=False),
        Column(period, DAY, nullable=False),
        Column("first_at", UTCTIME),
        Column("first_value", QTY),
        Column("last_at", UTCTIME),
        Column("last_value", QTY),
        Column("consumption", QTY, nullable=False),
        Column("rollovers", Integer, nullable=False),
        Column("reversals", Integer, nullable=False),
        Column("n_readings", Integer, nullable=False),
        *[Column(f"n_{q}", Integer, nullable=False) for q in QUALITIES],
        Column("n_other", Integer, nullable=False),
        UniqueConstraint("meter", period),
        Index(None, period),
    )


daily_aggregates = _aggregate("daily_aggregates", "day")
monthly_aggregates = _aggregate("monthly_aggregates", "month")

aggregate_state = Table(
    "aggregate_state", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),  # one row, id 1
    Column("watermark", QTY, nullable=False),  # readings.id up to which the aggregates hold every reading
    Column("installation_mark", QTY, nullable=False),  # meter_installations.id seen (replacements)
    Column("timezone", Unicode(64), nullable=False),  # the IANA zone of the days and months
    Column("purged_through", UTCTIME),  # raw readings at or before this were purged (a local midnight)
    Column("aggregated_at", UTCTIME),
    Column("purged_at", UTCTIME),
)


def view_selects() -> dict[str, Any]:
    """The documented views as Core selects: name -> select (compiled per dialect when the
    views are created).  Columns and their meaning: ``docs/historian.md``."""
    r, m = readings, meters
    v_readings = select(
        m.c.meter_id, r.c.read_at, r.c.value, m.c.base_unit, r.c.quality, r.c.source,
    ).select_from(r.join(m, r.c.meter == m.c.id))
    ranked = select(
        r.c.meter, r.c.value, r.c.quality, r.c.read_at,
        func.row_number().over(partition_by=r.c.meter, order_by=(r.c.read_at.desc(), r.c.id.desc())).label("rn"),
    ).subquery("ranked")
    v_latest = select(
        m.c.meter_id, m.c.household, m.c.kind, ranked.c.value, m.c.base_unit, ranked.c.quality, ranked.c.read_at,
    ).select_from(ranked.join(m, ranked.c.meter == m.c.id)).where(ranked.c.rn == 1)
    a = alarm_events
    v_alarms = select(a.c.at, a.c.alarm_id, a.c.source, a.c.kind, a.c.severity, a.c.state, a.c.active, a.c.text,
                      a.c.raised_at, a.c.cleared_at, a.c.acked_by, a.c.acked_at, a.c.ack_note, a.c.shelved_by,
                      a.c.shelved_reason, a.c.shelved_until)
    c = command_events
    v_commands = select(c.c.at, c.c.command_id, c.c.kind, c.c.target, c.c.action, c.c.who, c.c.via, c.c.peer,
                        c.c.reason, c.c.requested_at, c.c.state, c.c.detail, c.c.sent_at, c.c.finished_at,
                        c.c.late)
    return {"v_readings": v_readings, "v_latest_readings": v_latest, "v_alarm_history": v_alarms,
            "v_command_history": v_commands, **aggregate_view_selects(daily_aggregates, monthly_aggregates, meters)}


def aggregate_view_selects(daily: Any, monthly: Any, m: Any) -> dict[str, Any]:
    """``v_daily_consumption`` and ``v_monthly_consumption`` over the given tables (the
    model's, or a migration's frozen copies of them)."""
    out = {}
    for name, t, period in (("v_daily_consumption", daily, "day"), ("v_monthly_consumption", monthly, "month")):
        out[name] = select(
            m.c.meter_id, m.c.household, m.c.kind, t.c[period], t.c.first_at, t.c.first_value, t.c.last_at,
            t.c.last_value, t.c.consumption, m.c.base_unit, t.c.rollovers, t.c.reversals, t.c.n_readings,
            *[t.c[f"n_{q}"] for q in QUALITIES], t.c.n_other,
        ).select_from(t.join(m, t.c.meter == m.c.id))
    return out


VIEWS: tuple[str, ...] = ("v_readings", "v_latest_readings", "v_alarm_history", "v_command_history",
                          "v_daily_consumption", "v_monthly_consumption")


def as_utc(value: datetime | None) -> datetime | None:
    """A time read back from any of the databases as an aware UTC datetime (SQLite returns
    naive UTC; PostgreSQL and SQL Server an aware one)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
