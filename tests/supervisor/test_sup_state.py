"""The state store: what survives a restart, and what a damaged state file does.

Most tests run on a ``Clock`` (writes inline); the writer thread is tested on the real
reactor.  A "kill" is a store that is never stopped: only what its flushes committed is in
the file, as after SIGKILL.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import pytest_twisted
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from support.configs import FLAT, braced, site
from st2000r.config.loader import loads
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.messages import AlarmFlag, Valve
from st2000r.supervisor.alarms import AlarmManager
from st2000r.supervisor.events import EventBus, MeterId, Quality, utc
from st2000r.supervisor.points import PointDatabase
from st2000r.supervisor.run import main as run_main
from st2000r.supervisor.state import SCHEMA_VERSION, StateStore, check_state_dir

T0 = 1_780_000_000.0  # 2026-05-28

SITE = braced(FLAT + site("Test Court", "1 Test Road")) + """
[[sites.links]]
name = "bus"
kind = "serial"
device = "/dev/null"

[[sites.links.cdt_ranges]]
addresses = "1-2"
modules = "1-2"
template = "flat"
serial = "{serial}{{cdt:03}}{{module:02}}{{channel}}"
household = "H{{cdt}}-{{module}}"

[supervisor]
state_dir = "{state_dir}"
"""


def topology(state_dir, serial="9"):
    return loads(SITE.format(state_dir=state_dir, serial=serial), "<state test>")


def bulk(cdt, counts, statuses=None):
    statuses = statuses or [0] * len(counts)
    return m.BulkReadReply(meter_type=m.CDT_TYPE, address=f"{cdt:014d}", first_channel=1,
                           channels=tuple(m.ChannelReading(c, s) for c, s in zip(counts, statuses, strict=True)))


TAMPER = m.ChannelReading.status_of(Valve.CLOSED, AlarmFlag.TAMPER, False)


class Rig:
    """Points, alarms and a state store on one bus, as the supervisor wires them."""

    def __init__(self, state_dir, clock=None, *, serial="9", flush_interval_s=2.0):
        self.clock = clock or Clock()
        if clock is None:
            self.clock.advance(T0)
        self.topology = topology(state_dir, serial)
        self.bus = EventBus(self.clock)
        self.points = PointDatabase(self.topology, self.clock, self.bus)
        self.alarms = AlarmManager(self.topology, self.clock, self.bus)
        self.store = StateStore(state_dir, self.clock, self.bus, self.topology, flush_interval_s=flush_interval_s)
        self.path = self.store.path

    def start(self):
        self.store.startService()
        return self.store.restore_into(self.points, self.alarms)

    def turn(self, seconds=0.0):
        """Let the bus drain its queues (and advance the clock)."""
        for _ in range(10):
            self.clock.advance(0)
        if seconds:
            self.clock.advance(seconds)

    def stop(self):
        self.alarms.stopService()  # cancels its shelf timers
        out = []
        self.store.stopService().addBoth(out.append)
        self.turn()
        assert out == [None]
        assert self.clock.getDelayedCalls() == []

    def read_cdt1(self, counts=(100, 200, 300, 110, 210, 310), statuses=None):
        self.points.on_bulk("bus", 1, bulk(1, list(counts), statuses), self.clock.seconds())


def rows(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


M111 = MeterId("bus", 1, 1, 1)


# --------------------------------------------------------------------------- saving and restoring


def test_values_come_back_stale_with_their_last_value_count_and_read_time(tmp_path):
    first = Rig(tmp_path)
    assert first.start() == (0, 0)
    first.read_cdt1(statuses=[0, 0, TAMPER, 0, 0, 0])
    read_at = utc(first.clock.seconds())
    first.turn(2.0)  # one flush
    assert first.store.stats.flushes == 1
    first.stop()
    assert os.listdir(tmp_path) == ["state.sqlite"]  # the WAL folded into the file at stop

    second = Rig(tmp_path)
    second.clock.advance(3600)
    assert second.start() == (6, 1)  # the tamper alarm of bus/1/1/3
    point = second.points.meter(M111)
    assert (point.value, point.count, point.timestamp, point.quality) == (1000, 100, read_at, Quality.STALE)
    assert point.quality_since == utc(second.clock.seconds())
    gas = second.points.meter("bus/1/1/3")
    assert (gas.valve, gas.alarms) == (Valve.CLOSED, AlarmFlag.TAMPER)
    assert second.points.meter("bus/2/1/1").value is None  # never read: nothing to restore
    second.turn(2.0)
    assert rows(second.path, "SELECT quality, count(*) FROM meters GROUP BY quality") == [("stale", 6)]
    second.stop()


def test_an_acknowledged_alarm_stays_acknowledged_and_a_shelf_keeps_its_end(tmp_path):
    first = Rig(tmp_path)
    first.start()
    first.read_cdt1(statuses=[TAMPER, 0, 0, 0, 0, TAMPER])
    first.alarms.acknowledge("meter:bus/1/1/1:tamper", "alice", "seen on site")
    until = first.clock.seconds() + 7200
    first.alarms.shelve("meter:bus/1/2/3:tamper", "erin", "sensor being replaced", until)
    first.alarms.raise_alarm("cdt:bus/2:mains", "bus/2", "mains", "CDT 2: mains lost")
    first.alarms.raise_alarm("cdt:bus/1:mains", "bus/1", "mains", "CDT 1: mains lost")
    first.alarms.clear_alarm("cdt:bus/1:mains")
    first.alarms.acknowledge("cdt:bus/1:mains", "alice")  # cleared + acknowledged: leaves the list
    first.turn(2.0)
    assert {r[0] for r in rows(first.path, "SELECT id FROM alarms")} == {
        "meter:bus/1/1/1:tamper", "meter:bus/1/2/3:tamper", "cdt:bus/2:mains"}
    first.stop()

    second = Rig(tmp_path)
    second.clock.advance(600)
    assert second.start() == (6, 3)
    acked = second.alarms.alarm("meter:bus/1/1/1:tamper")
    assert (acked.state, acked.acked_by, acked.ack_note) == ("active-acked", "alice", "seen on site")
    shelved = second.alarms.alarm("meter:bus/1/2/3:tamper")
    assert (shelved.state, shelved.shelved_by, shelved.shelved_until) == ("shelved", "erin", utc(until))
    assert second.alarms.alarm("cdt:bus/2:mains").state == "active-unacked"
    # the meter's restored tamper flag did not raise the acknowledged alarm again
    assert [a.id for a in second.alarms.alarms() if a.state == "active-unacked"] == ["cdt:bus/2:mains"]
    second.turn(7200 - 600)  # the shelf ends at its saved end
    assert second.alarms.alarm("meter:bus/1/2/3:tamper").state == "active-unacked"
    second.stop()


def test_after_a_kill_only_what_was_flushed_is_there_and_nothing_is_half_written(tmp_path):
    first = Rig(tmp_path)
    first.start()
    first.read_cdt1()
    first.alarms.raise_alarm("cdt:bus/2:mains", "bus/2", "mains", "CDT 2: mains lost")
    first.alarms.acknowledge("cdt:bus/2:mains", "alice")
    first.turn(2.0)
    first.read_cdt1(counts=(101, 201, 301, 111, 211, 311))  # after the last flush: lost with the kill
    first.turn()
    assert first.store.dirty == 6
    # killed: never stopped, its connection still open

    second = Rig(tmp_path)
    assert second.start() == (6, 1)
    assert second.points.meter(M111).count == 100
    assert second.alarms.alarm("cdt:bus/2:mains").state == "active-acked"
    second.stop()


def test_changes_coalesce_and_each_flush_is_one_transaction(tmp_path):
    rig = Rig(tmp_path)
    rig.start()
    for n in range(5):
        rig.read_cdt1(counts=(100 + n, 200, 300, 110, 210, 310))
    rig.turn()
    assert rig.store.dirty == 6
    rig.turn(2.0)
    assert (rig.store.stats.flushes, rig.store.stats.meters_written) == (1, 6)
    assert rows(rig.path, "SELECT count FROM meters WHERE cdt = 1 AND module = 1 AND channel = 1") == [(104,)]
    rig.turn(2.0)
    assert rig.store.stats.flushes == 1  # nothing changed: nothing written
    rig.stop()
    assert rows(rig.path, "PRAGMA journal_mode") == [("wal",)]


def test_a_replaced_meter_does_not_get_the_old_value(tmp_path):
    first = Rig(tmp_path)
    first.start()
    first.read_cdt1()
    first.turn(2.0)
    first.stop()
    with capturedLogs() as events:
        second = Rig(tmp_path, serial="8")  # every meter has a new serial
        assert second.start() == (0, 0)
    assert second.store.saved.reconfigured_meters == 6
    assert any("6 meter point(s) whose meter was replaced or reconfigured" in formatEvent(e) for e in events)
    second.stop()


def test_a_failed_write_is_reported_once_kept_and_retried(tmp_path):
    rig = Rig(tmp_path)
    rig.start()
    real = rig.store._writer.write
    failures = [sqlite3.OperationalError("disk I/O error")] * 2

    def flaky(*args):
        if failures:
            raise failures.pop()
        return real(*args)

    rig.store._writer.write = flaky
    rig.read_cdt1()
    with capturedLogs() as events:
        rig.turn(2.0)
        rig.turn(2.0)
        assert rig.store.stats.write_errors == 2 and rig.store.dirty == 6
        rig.turn(2.0)
    assert rig.store.stats.write_errors == 2 and rig.store.dirty == 0
    assert rows(rig.path, "SELECT count(*) FROM meters") == [(6,)]
    texts = [formatEvent(e) for e in events]
    assert sum("cannot save (disk I/O error)" in t for t in texts) == 1
    assert sum("saving again" in t for t in texts) == 1
    rig.stop()


# --------------------------------------------------------------------------- damaged files


def saved_file(tmp_path):
    rig = Rig(tmp_path)
    rig.start()
    rig.read_cdt1()
    rig.points.on_bulk("bus", 2, bulk(2, list(range(400, 406))), rig.clock.seconds())
    rig.turn(2.0)
    rig.stop()
    return rig.path


def truncate_in_the_middle(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def garbage(path):
    with open(path, "wb") as f:
        f.write(b"this is not a database, it is what a torn copy left behind\n" * 200)


def flip_a_key(path):
    """A row of the meters table (page 2) no longer matches its primary-key index: every
    page still parses, only the integrity check can tell."""
    with open(path, "r+b") as f:
        f.seek(4096)
        page = f.read(4096)
        f.seek(4096 + page.index(b"bus"))
        f.write(b"bux")


def wrong_version(path):
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()


def foreign_file(path):
    os.unlink(path)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.close()


@pytest.mark.parametrize(("damage", "reason"), [
    (truncate_in_the_middle, "unreadable as a SQLite database (database disk image is malformed)"),
    (garbage, "unreadable as a SQLite database (file is not a database)"),
    (flip_a_key, "failed PRAGMA integrity_check: row 12 missing from index sqlite_autoindex_meters_1"),
    (wrong_version, f"schema version {SCHEMA_VERSION + 1}, this supervisor reads version {SCHEMA_VERSION}"),
    (foreign_file, "not a state file of this supervisor (application id 0x0)"),
])
def test_a_damaged_file_is_reported_set_aside_and_the_start_is_fresh(tmp_path, damage, reason):
    path = saved_file(tmp_path)
    damage(path)
    damaged = Path(path).read_bytes()
    with capturedLogs() as events:
        rig = Rig(tmp_path)
        rig.clock.advance(60)
        assert rig.start() == (0, 0)
    saved = rig.store.saved
    aside = str(tmp_path / "state.sqlite.corrupt-20260528T202740Z")
    assert saved.problem.startswith(reason) and saved.set_aside == aside
    assert Path(aside).read_bytes() == damaged  # kept for a post-mortem, byte for byte
    errors = [e for e in events if e["log_level"].name == "error"]
    assert len(errors) == 1
    text = formatEvent(errors[0])
    assert text.startswith(f"state file {path} is damaged: {reason}")
    assert text.endswith(f"moved aside to {aside}, starting without saved state")
    assert rig.points.meter(M111).value is None
    # the fresh file works: the next reads are saved and restored
    rig.read_cdt1()
    rig.turn(2.0)
    rig.stop()
    again = Rig(tmp_path)
    assert again.start() == (6, 0)
    assert again.store.saved.problem is None
    again.stop()


def test_a_second_damaged_file_in_the_same_second_gets_its_own_name(tmp_path):
    garbage(saved_file(tmp_path))
    Rig(tmp_path).store.load()
    garbage(str(tmp_path / "state.sqlite"))
    assert Rig(tmp_path).store.load().set_aside.endswith(".corrupt-20260528T202640Z-1")


def test_an_empty_file_is_a_fresh_start_not_damage(tmp_path):
    (tmp_path / "state.sqlite").write_bytes(b"")
    rig = Rig(tmp_path)
    assert rig.start() == (0, 0)
    assert rig.store.saved.problem is None and sorted(os.listdir(tmp_path)) == ["state.sqlite"]
    rig.stop()


def test_a_write_ahead_log_without_its_database_is_set_aside(tmp_path):
    (tmp_path / "state.sqlite-wal").write_bytes(b"x" * 100)
    saved = Rig(tmp_path).store.load()
    assert saved.problem == "the database file is missing but its write-ahead log is there"
    assert sorted(os.listdir(tmp_path)) == ["state.sqlite", "state.sqlite.corrupt-20260528T202640Z-wal"]


# --------------------------------------------------------------------------- the writer thread (real reactor)


@pytest_twisted.ensureDeferred
async def test_writes_run_on_one_thread_off_the_reactor_and_stop_waits_for_the_final_flush(tmp_path):
    rig = Rig(tmp_path, clock=reactor, flush_interval_s=3600)
    threads = set()
    real = rig.store._writer.write

    def write(*args):
        threads.add(threading.get_ident())
        return real(*args)

    rig.store._writer.write = write
    rig.start()
    try:
        rig.read_cdt1()
        await rig.store._drained()
        assert await rig.store.flush() is True
        rig.read_cdt1(counts=(1, 2, 3, 4, 5, 6))
    finally:
        await rig.store.stopService()  # drains the bus queue, flushes, closes
    assert threads and threading.get_ident() not in threads and len(threads) == 1
    assert rig.store.stats.flushes == 2 and not rig.store.worker.threaded
    assert rows(rig.path, "SELECT count FROM meters ORDER BY cdt, module, channel") == [(n,) for n in range(1, 7)]
    assert not os.path.exists(rig.path + "-wal") or os.path.getsize(rig.path + "-wal") == 0


# --------------------------------------------------------------------------- the state folder


def test_check_state_dir_names_the_folder_and_the_reason(tmp_path):
    assert check_state_dir(tmp_path / "new" / "folder") is None and (tmp_path / "new" / "folder").is_dir()
    assert os.listdir(tmp_path / "new" / "folder") == []  # the probe is gone
    (tmp_path / "file").write_text("x")
    assert check_state_dir(tmp_path / "file") == f"state folder {tmp_path / 'file'}: not a folder"
    assert check_state_dir(tmp_path / "file" / "sub") == \
        f"state folder {tmp_path / 'file' / 'sub'}: cannot create it ({os.strerror(errno.ENOTDIR)})"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_state_dir_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    try:
        assert check_state_dir(folder) == f"state folder {folder}: not writable ({os.strerror(errno.EACCES)})"
    finally:
        folder.chmod(0o700)


def test_run_refuses_a_state_folder_it_cannot_use_with_exit_2_and_one_line(tmp_path, capsys):
    config = tmp_path / "site.toml"
    config.write_text(SITE.format(state_dir=tmp_path, serial="9"), encoding="utf-8")
    (tmp_path / "file").write_text("x")
    assert run_main([str(config), "--state-dir", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"st2000r run: state folder {tmp_path / 'file'}: not a folder"]
    assert run_main([str(config), "--state-dir", str(tmp_path / "file" / "state")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"st2000r run: state folder {tmp_path / 'file' / 'state'}: cannot create it ({os.strerror(errno.ENOTDIR)})"]


def test_times_round_trip_exactly(tmp_path):
    """ISO text keeps microseconds: a restored read time equals the one that was saved."""
    rig = Rig(tmp_path)
    rig.clock.advance(0.123456)
    rig.start()
    rig.read_cdt1()
    expected = utc(rig.clock.seconds())
    rig.turn(2.0)
    rig.stop()
    point = next(p for p in Rig(tmp_path).store.load().meters if p.id == M111)
    assert point.timestamp == expected and point.timestamp - expected == timedelta(0)
    assert isinstance(point.timestamp, datetime)


# --------------------------------------------------------------------------- in the assembled supervisor


class NoField(Service):
    """A link service with nothing behind it: these tests feed the point database directly."""


def supervisor(state_dir):
    from st2000r.supervisor.service import SupervisorService

    clock = Clock()
    clock.advance(T0)
    service = SupervisorService(topology(state_dir), clock, link_factory=lambda *a, **k: NoField(),
                                audit_path=False)  # the audit log writes through a real reactor
    return service, clock


def settle(clock, d=None, limit=30.0):
    """Advance ``clock`` call by call until ``d`` fired (or, without ``d``, by ``limit`` s)."""
    out = []
    if d is not None:
        d.addBoth(out.append)
    end = clock.seconds() + limit
    while not out and clock.getDelayedCalls():
        step = max(0.0, min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds())
        if clock.seconds() + step > end:
            break
        clock.advance(step)
    return out


def stopped(clock, service):
    """Stop ``service``; True once its Deferred fired without a failure."""
    out = settle(clock, service.stopService())
    return len(out) == 1 and not isinstance(out[0], Failure)


@pytest.mark.parametrize("clean_stop", [True, False], ids=["stopped cleanly", "killed"])
def test_a_second_supervisor_on_the_same_folder_restores_points_and_acknowledged_alarms(tmp_path, clean_stop):
    first, clock = supervisor(tmp_path)
    first.startService()
    first.points.on_bulk("bus", 1, bulk(1, [100, 200, 300, 110, 210, 310], [TAMPER] + [0] * 5), clock.seconds())
    first.alarms.acknowledge("meter:bus/1/1/1:tamper", "alice", "magnet removed on site")
    settle(clock, limit=2.0)  # the first periodic flush
    assert first.state.stats.flushes == 1
    read_at = utc(clock.seconds())
    first.points.on_bulk("bus", 2, bulk(2, [400, 401, 402, 403, 404, 405]), clock.seconds())  # after that flush
    if clean_stop:
        assert stopped(clock, first)
        assert clock.getDelayedCalls() == []
    # else: killed -- never stopped, nothing more reaches the file

    second, clock2 = supervisor(tmp_path)
    clock2.advance(clock.seconds() - T0 + 60)
    second.startService()
    try:
        acked = second.alarms.alarm("meter:bus/1/1/1:tamper")
        assert (acked.state, acked.acked_by, acked.ack_note) == ("active-acked", "alice", "magnet removed on site")
        assert [a.id for a in second.alarms.alarms()] == ["meter:bus/1/1/1:tamper"]
        first_cdt = second.points.meter("bus/1/1/1")
        assert (first_cdt.value, first_cdt.quality) == (1000, Quality.STALE)
        second_cdt = second.points.meter("bus/2/1/1")
        if clean_stop:  # the final flush saved what came after the last periodic one
            assert (second_cdt.value, second_cdt.timestamp, second_cdt.quality) == (4000, read_at, Quality.STALE)
        else:
            assert second_cdt.value is None
    finally:
        assert stopped(clock2, second)
    assert clock2.getDelayedCalls() == []


def test_a_file_locked_by_another_writer_is_an_error_at_start_not_damage(tmp_path, monkeypatch):
    """A second supervisor on the same folder must not take the first one's file for damaged."""
    from st2000r.supervisor import state

    path = saved_file(tmp_path)
    before = Path(path).read_bytes()
    monkeypatch.setattr(state, "BUSY_TIMEOUT_S", 0.0)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            Rig(tmp_path).store.load()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert sorted(os.listdir(tmp_path)) == ["state.sqlite"] and Path(path).read_bytes() == before
