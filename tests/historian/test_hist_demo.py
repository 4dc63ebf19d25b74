"""``st2000r demo`` writes to the embedded SQLite historian and prints a query that works."""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_writes_the_historian_and_prints_a_query_to_paste(tmp_path):
    path = tmp_path / "demo-historian.sqlite"
    proc = subprocess.run([sys.executable, "-m", "st2000r.supervisor.cli", "demo", "--baud", "115200", "--for", "8",
                           "--tcp-port", "0", "--control", "0", "--modbus", "0", "--no-scenario", "--truth-every", "0",
                           "--historian", str(path)],
                          capture_output=True, text=True, timeout=90, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("sqlite3 "))
    argv = shlex.split(line)
    assert argv[:3] == ["sqlite3", "-header", "-column"] and argv[3] == str(path)
    sql = argv[4]
    assert re.fullmatch(r"SELECT meter_id, household, kind, value, base_unit, quality, read_at FROM "
                        r"v_latest_readings .*;", sql)
    with sqlite3.connect(path) as conn:  # the same query, as a user would paste it
        rows = conn.execute(sql).fetchall()
        read = conn.execute("SELECT count(*) FROM v_readings").fetchone()[0]
    assert len(rows) == 20 and read > 1000
    assert all(r[0].startswith("lakeside-bus/") and r[4] in ("L", "Wh") and r[5] == "good" for r in rows)
