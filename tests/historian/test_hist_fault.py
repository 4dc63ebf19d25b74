"""Fault test with processes: a writer process on the local PostgreSQL behind a proxy of the
test's own; the proxy is cut for several stretches and comes back, and the writer is killed
with SIGKILL in the middle.  Afterwards every round the writer reported durable is in
``v_readings`` exactly once, with the values it had, in the order it was produced.

Rounds are deterministic (``hist_rig.batches``), so the expected readings are known without
asking the writer.  The first process writes rounds 1.., the second 1001..; rounds the first
published after its last ``durable`` line may be missing (they were never reported durable)
but, if present, are complete and correct.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import text

from hist_rig import PG_UPSTREAM, START, TOPOLOGY, TcpProxy, pg_url
from st2000r.historian import db

HERE = os.path.dirname(os.path.abspath(__file__))
DEADLINE_S = 30


class Child:
    def __init__(self, config, first, drain_after=None):
        args = [sys.executable, os.path.join(HERE, "hist_child.py"), str(config), str(first)]
        if drain_after is not None:
            args += ["--drain-after", str(drain_after)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue = queue.Queue()
        self.durable = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_for(self, predicate, what):
        """Read lines until ``predicate(line)``; bounded by DEADLINE_S."""
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            if line.startswith("durable "):
                self.durable = max(self.durable, int(line.split()[1]))
            if predicate(line):
                return
        raise AssertionError(f"no {what} within {DEADLINE_S} s; stderr: {self.stderr_now()}")

    def durable_at_least(self, n):
        self.wait_for(lambda line: self.durable >= n, f"durable round {n}")

    def stderr_now(self):
        if self.proc.poll() is None:
            return "(running)"
        return self.proc.stderr.read()[-2000:]


@pytest.mark.postgres
@pytest.mark.slow
def test_outages_and_a_sigkill_lose_nothing_and_duplicate_nothing(pg_database, pg_schema, tmp_path):
    direct = pg_url(pg_database, schema=pg_schema)
    engine = db.make_engine(direct)
    db.upgrade(engine)
    proxy = TcpProxy(PG_UPSTREAM)
    config = tmp_path / "site.toml"
    config.write_text(TOPOLOGY.replace("STATE", str(tmp_path / "state"))
                      + f'\n[historian]\nurl = "{pg_url(pg_database, port=proxy.port, schema=pg_schema)}"\n')
    children = []
    try:
        first = Child(config, 1)
        children.append(first)
        first.durable_at_least(5)
        for _ in range(3):  # three outages of ~10 rounds each
            proxy.cut()
            first.durable_at_least(first.durable + 10)
            proxy.restore()
            first.durable_at_least(first.durable + 5)
        proxy.cut()
        first.durable_at_least(first.durable + 10)
        first.proc.send_signal(signal.SIGKILL)  # in the middle of an outage, with rows in the spool
        first.proc.wait(10)
        durable_first = first.durable
        second = Child(config, 1001, drain_after=1015)
        children.append(second)
        second.durable_at_least(1010)  # still cut: the second process spools behind the first's rows
        proxy.restore()
        second.wait_for(lambda line: line == "drained", "an empty spool")
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(20) == 0, second.proc.stderr.read()
        durable_second = second.durable

        with engine.connect() as conn:
            got = conn.execute(text("SELECT meter_id, read_at, value FROM v_readings")).all()
            order = [r[0] for r in conn.execute(text("SELECT read_at FROM readings ORDER BY id"))]
        by_round = {}
        for meter_id, read_at, value in got:
            r = round((db_time(read_at) - START).total_seconds() / 60)
            by_round.setdefault(r, []).append((meter_id, value))
        expected_rounds = set(range(1, durable_first + 1)) | set(range(1001, durable_second + 1))
        assert expected_rounds <= set(by_round), sorted(expected_rounds - set(by_round))[:10]
        for r, rows in by_round.items():
            assert len(rows) == 12, (r, len(rows))  # every meter once, none twice
            for meter_id, value in rows:
                channel = int(meter_id.rsplit("/", 1)[1])
                pulse = {1: 10, 2: 1, 3: 10}[channel]
                assert value == 1000 + r * channel * pulse
        rounds_in_order = [round((db_time(t) - START).total_seconds() / 60) for t in order]
        assert rounds_in_order == sorted(rounds_in_order)  # stored in the order produced
        assert len(got) == 12 * len(by_round)
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(10)
        proxy.close()
        engine.dispose()


def db_time(value):
    from st2000r.historian.schema import as_utc

    return as_utc(value)


