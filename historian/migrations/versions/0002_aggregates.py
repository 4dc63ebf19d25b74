"""Daily and monthly aggregates per meter, their bookkeeping row, and the views
``v_daily_consumption`` and ``v_monthly_consumption``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Spelled out with ``op.*`` and frozen copies of the tables (never the live model), so an
old database upgrades through the same steps whatever later versions change;
``tests/historian/test_hist_aggregate_schema.py`` checks that the result equals the model.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mssql

from st2000r.historian.schema import aggregate_view_selects
from st2000r.historian.views import compile_view

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
QTY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTCTIME = sa.DateTime(timezone=True)
DAY = sa.Date().with_variant(mssql.DATE(), "mssql")
QUALITIES = ("good", "stale", "comm_fail", "estimated", "substituted")
VIEWS = ("v_daily_consumption", "v_monthly_consumption")


def _columns(period: str) -> list[sa.Column]:
    return [
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("meter", ID, nullable=False),
        sa.Column(period, DAY, nullable=False),
        sa.Column("first_at", UTCTIME),
        sa.Column("first_value", QTY),
        sa.Column("last_at", UTCTIME),
        sa.Column("last_value", QTY),
        sa.Column("consumption", QTY, nullable=False),
        sa.Column("rollovers", sa.Integer(), nullable=False),
        sa.Column("reversals", sa.Integer(), nullable=False),
        sa.Column("n_readings", sa.Integer(), nullable=False),
        *[sa.Column(f"n_{q}", sa.Integer(), nullable=False) for q in QUALITIES],
        sa.Column("n_other", sa.Integer(), nullable=False),
    ]


def _frozen_views() -> dict:
    """The two views over lightweight copies of the tables as this revision has them."""
    def light(name: str, period: str) -> sa.TableClause:
        return sa.table(name, *[sa.column(c.name) for c in _columns(period)])

    meters = sa.table("meters", sa.column("id"), sa.column("meter_id"), sa.column("household"), sa.column("kind"),
                      sa.column("base_unit"))
    return aggregate_view_selects(light("daily_aggregates", "day"), light("monthly_aggregates", "month"), meters)


def upgrade() -> None:
    for name, period in (("daily_aggregates", "day"), ("monthly_aggregates", "month")):
        op.create_table(
            name, *_columns(period),
            sa.PrimaryKeyConstraint("id", name=f"pk_{name}"),
            sa.ForeignKeyConstraint(["meter"], ["meters.id"], name=f"fk_{name}_meter_meters"),
            sa.UniqueConstraint("meter", period, name=f"uq_{name}_meter_{period}"),
        )
        op.create_index(f"ix_{name}_{period}", name, [period])
    op.create_table(
        "aggregate_state",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("watermark", QTY, nullable=False),
        sa.Column("installation_mark", QTY, nullable=False),
        sa.Column("timezone", sa.Unicode(64), nullable=False),
        sa.Column("purged_through", UTCTIME),
        sa.Column("aggregated_at", UTCTIME),
        sa.Column("purged_at", UTCTIME),
        sa.PrimaryKeyConstraint("id", name="pk_aggregate_state"),
    )
    bind = op.get_bind()
    for name, select in _frozen_views().items():
        op.execute(sa.text(compile_view(name, select, bind.dialect)))


def downgrade() -> None:
    bind = op.get_bind()
    for name in reversed(VIEWS):
        op.execute(sa.text(f"DROP VIEW {bind.dialect.identifier_preparer.quote(name)}"))
    op.drop_table("aggregate_state")
    for name, period in (("monthly_aggregates", "month"), ("daily_aggregates", "day")):
        op.drop_index(f"ix_{name}_{period}", table_name=name)
        op.drop_table(name)
