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
- **views** (``v_readings``, ``v_latest_readings``, ``v_alarm_history``,
  ``v_command_history``) are the documented interface for billing systems
  (``docs/historian.md``); they are built from :func:`view_selects` compiled for the
  database at hand, so the three databases get the same columns.

Alembic revisions (``historian/migrations``) create exactly this; a test compares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
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

__all__ = ["metadata", "sites", "links", "cdts", "households", "meters", "installations", "readings",
           "alarm_events", "command_events", "health_samples", "VIEWS", "view_selects", "as_utc", "ID"]

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
            "v_command_history": v_commands}


VIEWS: tuple[str, ...] = ("v_readings", "v_latest_readings", "v_alarm_history", "v_command_history")


def as_utc(value: datetime | None) -> datetime | None:
    """A time read back from any of the databases as an aware UTC datetime (SQLite returns
    naive UTC; PostgreSQL and SQL Server an aware one)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
