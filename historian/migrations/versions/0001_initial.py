"""The first historian schema: topology, readings, alarm and command history, health
samples, and the four documented views.

Revision ID: 0001
Revises:
Create Date: 2026-11-30

This first revision builds from the model module (``historian/schema.py`` as of version 1);
every later revision must spell its changes out with ``op.*`` and never use the live model,
so that an old database always upgrades through the same steps.
"""

from alembic import op

from st2000r.historian.schema import metadata
from st2000r.historian.views import create_views, drop_views

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

#: what version 1 had: later tables and views come from later revisions
TABLES = ("sites", "links", "cdts", "households", "meters", "meter_installations", "readings", "alarm_events",
          "command_events", "health_samples")
VIEWS = ("v_readings", "v_latest_readings", "v_alarm_history", "v_command_history")


def upgrade() -> None:
    bind = op.get_bind()
    metadata.create_all(bind, tables=[metadata.tables[name] for name in TABLES])
    create_views(bind, VIEWS)


def downgrade() -> None:
    bind = op.get_bind()
    drop_views(bind, VIEWS)
    metadata.drop_all(bind, tables=[metadata.tables[name] for name in TABLES])
