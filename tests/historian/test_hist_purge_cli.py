"""``st2000r db purge CONFIG [--dry-run]`` as a user runs it (a process), on SQLite and
PostgreSQL: the dry run changes nothing, the purge aggregates first and deletes only what
is due, and ``st2000r history usage`` says the same before and after."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text

from agg_rig import install, meter, read
from hist_rig import TOPOLOGY
from st2000r.historian import db
from st2000r.historian.schema import readings


def _st2000r(*args):
    return subprocess.run([sys.executable, "-m", "st2000r.supervisor.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _config(tmp_path, url, extra=""):
    path = tmp_path / "site.toml"
    path.write_text(TOPOLOGY.replace("STATE", str(tmp_path / "state")) + f'\n[historian]\nurl = "{url}"\n{extra}')
    return path


def _count(engine):
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(readings)).scalar()


def test_purge_from_the_command_line(db_url, tmp_path):
    engine = db.make_engine(db_url)
    try:
        plain = _config(tmp_path, db_url)
        old = _st2000r("db", "purge", str(plain))
        assert old.returncode == 1 and "run 'st2000r db upgrade" in old.stderr  # no schema yet
        db.upgrade(engine)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start = today - timedelta(days=30)
        with engine.begin() as c:
            key = meter(c, "bus/9/1/1", household="H9")
            install(c, key, "S1", start, 100, household="H9")
            for n in range(30 * 4):  # every 6 hours for 30 days, up to today's midnight
                read(c, key, start + timedelta(hours=6 * (n + 1)), 100 + 7 * n)
        forever = _st2000r("db", "purge", str(plain))
        assert forever.returncode == 0 and "keep_raw_days is 0" in forever.stdout
        config = _config(tmp_path, db_url, "keep_raw_days = 10\n")
        period = ["--household", "H9", "--from", start.date().isoformat(), "--to", today.date().isoformat()]
        before = _st2000r("history", "usage", str(config), *period)
        assert before.returncode == 0 and "water: 833 L" in before.stdout  # 7 x 119 steps
        dry = _st2000r("db", "purge", str(config), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        # nothing aggregated yet: nothing would go, 20 days x 4 readings are due once aggregated
        assert "0 raw reading(s)" in dry.stdout and "80 more are due once aggregated" in dry.stdout
        assert _count(engine) == 120
        done = _st2000r("db", "purge", str(config))
        assert done.returncode == 0, done.stderr
        assert "120 reading(s) aggregated" in done.stdout
        cutoff = (today - timedelta(days=10)).isoformat()
        assert f"80 raw reading(s) at or before {cutoff} deleted" in done.stdout
        assert _count(engine) == 40
        after = _st2000r("history", "usage", str(config), *period)
        assert after.stdout == before.stdout
        with engine.connect() as c:
            assert c.execute(text("SELECT SUM(consumption) FROM v_daily_consumption")).scalar() == 833
        shanghai = _config(tmp_path, db_url, 'keep_raw_days = 10\naggregate_timezone = "Asia/Shanghai"\n')
        refused = _st2000r("db", "purge", str(shanghai))
        assert refused.returncode == 1 and "built in time zone 'UTC'" in refused.stderr
    finally:
        engine.dispose()
