"""The historian inside the supervisor, and ``st2000r run`` / ``st2000r db`` around it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import text
from twisted.application.service import Service
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from hist_rig import TOPOLOGY, batches, topology
from st2000r.historian import db
from st2000r.supervisor.service import SupervisorService

T0 = 1_780_000_000.0


def settle(clock, d):
    out = []
    d.addBoth(out.append)
    for _ in range(10_000):
        if out or not clock.getDelayedCalls():
            break
        clock.advance(max(0.0, min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds()))
    return out


def test_the_supervisor_writes_to_the_embedded_sqlite_historian_by_default(tmp_path):
    topo = topology(str(tmp_path))
    clock = Clock()
    clock.advance(T0)
    service = SupervisorService(topo, clock, link_factory=lambda *a, **k: Service(), audit_path=False)
    assert service.historian is not None
    service.startService()
    for event in batches(topo, 1):
        service.bus.publish(event)
    service.alarms.raise_alarm("meter:bus/1/1/1:tamper", "bus/1/1/1", "tamper", "magnet")
    out = settle(clock, service.stopService())
    assert len(out) == 1 and not isinstance(out[0], Failure)
    assert service.historian.status().state == "connected", service.historian.status()
    engine = db.make_engine(db.default_url(str(tmp_path)))  # created and upgraded by the supervisor itself
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM v_readings")).scalar() == 12
        assert conn.execute(text("SELECT alarm_id, state FROM v_alarm_history")).all() == [
            ("meter:bus/1/1/1:tamper", "active-unacked")]
    engine.dispose()


def test_no_historian_without_state_or_when_disabled(tmp_path):
    factory = lambda *a, **k: Service()  # noqa: E731
    assert SupervisorService(topology(str(tmp_path)), Clock(), link_factory=factory, audit_path=False,
                             state=False).historian is None
    off = topology(str(tmp_path), "\n[historian]\nenabled = false\n")
    assert SupervisorService(off, Clock(), link_factory=factory, audit_path=False).historian is None


def _st2000r(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "st2000r.supervisor.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _config(tmp_path, url):
    path = tmp_path / "site.toml"
    path.write_text(TOPOLOGY.replace("STATE", str(tmp_path / "state")) + f'\n[historian]\nurl = "{url}"\n')
    return path


def test_run_refuses_an_older_schema_and_names_the_command(db_url, tmp_path):
    config = _config(tmp_path, db_url)
    proc = _st2000r("run", str(config), "--duration", "1")
    assert proc.returncode == 2
    assert f"run 'st2000r db upgrade {config}'" in proc.stderr
    up = _st2000r("db", "upgrade", str(config))
    assert up.returncode == 0, up.stderr
    head = db.head_revision()
    assert f"schema none -> {head}" in up.stdout
    status = _st2000r("db", "status", str(config))
    assert f"schema {head} (this version: {head})" in status.stdout


def test_run_starts_when_the_database_does_not_answer(tmp_path):
    config = _config(tmp_path, "postgresql+psycopg://nobody@127.0.0.1:1/none")  # a port nothing answers
    proc = _st2000r("run", str(config), "--duration", "2")
    assert proc.returncode == 0, proc.stderr
    assert "does not answer" in proc.stdout and "spooling" in proc.stdout
