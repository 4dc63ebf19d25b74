"""The historian's fault test with the installed commands as processes: ``st2000r run``
records readings from ``st2000r simulate`` into a throwaway PostgreSQL database reached
through a TCP proxy of the test's own; the proxy is cut for several rounds, the supervisor
is SIGKILLed in the middle of a round while the database is away, restarted on the same
state folder, the proxy restored; afterwards ``v_readings`` is checked against the
simulator's ground truth.

What the test knows from outside, and so what it asserts:

- **rounds the supervisor logged as done** (``round of fast (full) done``): every meter was
  read once in each, so each such round is in ``v_readings`` once per meter -- also the
  round read while the database was away and the one the killed process read;
- **what was durable at the SIGKILL**: the rows in the database plus the spool on disk
  (read with ``spool.read_pending`` between the kill and the restart).  The round cut off
  by the kill is in ``v_readings`` exactly as far as the spool held it -- no more, no less;
  the readings of its last replies that were published but not yet spooled when the kill
  came are the loss window ``docs/historian.md`` states (the test prints the lag between
  the kill and the newest spooled reading);
- **the ground truth**: the test samples the simulator's ``/truth`` twice a second; every
  stored value lies between the truth sampled before its read and the truth sampled after
  it (meter readings never decrease), each meter's values never decrease in read order,
  and rows were stored in the order they were read.

Rounds: 8 CDTs, 768 meters at 9600 baud (about 4.4 s a round), one plan every 10 s.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
import subprocess
import threading
import time
import urllib.request
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from hist_rig import PG_UPSTREAM, TcpProxy, pg_url
from support.process import ST2000R, Lines
from support.process import stop as _stop
from support.truth import readings as truth_readings
from st2000r.drivers.st2000r.messages import MAX_BULK
from st2000r.historian import db
from st2000r.historian.schema import as_utc
from st2000r.historian.spool import read_pending

LINK = "lakeside-bus"
METERS = 768
DONE = r"round of fast \(full\) done in [\d.]+ s: 8 CDTs tried, 0 unreachable"
#: a bulk read's request and reply take well under this on the wire: a truth sample received
#: this long before a reading's reply arrived was taken before the simulator sampled the meter
READ_MARGIN_S = 2.0


class Truth:
    """The simulator's ground truth sampled every ``every`` s on a thread of the test:
    ``(sent, received, {meter_id: reading})``, wall-clock seconds."""

    def __init__(self, url: str, every: float = 0.5) -> None:
        self.url = url
        self.every = every
        self.samples: list[tuple[float, float, dict[str, int]]] = []
        self._stop = threading.Event()
        self.sample()  # the first at once: a reading's lower bound needs a sample before it
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        sent = time.time()
        with urllib.request.urlopen(self.url + "/truth", timeout=10) as answer:
            snapshot = json.load(answer)
        self.samples.append((sent, time.time(), truth_readings(_World(snapshot))))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.sample()
            except OSError:
                pass  # the final sample (taken on the test's thread) must succeed; these may not

    def close(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def bracket(self, meter: str, read_at: float) -> tuple[int, int]:
        """The truth of ``meter`` received before ``read_at - READ_MARGIN_S`` (latest) and
        requested after ``read_at`` (earliest)."""
        low = [s for s in self.samples if s[1] < read_at - READ_MARGIN_S]
        high = [s for s in self.samples if s[0] > read_at]
        assert low and high, f"no truth sample around {meter} read at {read_at}"
        return max(low)[2][meter], min(high)[2][meter]


class _World:
    def __init__(self, snapshot: dict) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> dict:
        return self._snapshot


FIELD = """
[templates.flat]
channels = [
  { channel = 1, kind = "water",       pulse_constant = 10 },
  { channel = 2, kind = "electricity", pulse_constant = 1 },
  { channel = 3, kind = "gas",         pulse_constant = 10 },
]

[[sites]]
name = "Lakeside Gardens"
address = "88 Lakeside Avenue"

[[sites.links]]
name = "lakeside-bus"
kind = "serial"
device = "/dev/ttyUSB0"
baud = 9600
parity = "N"
turnaround_ms = 1
repeaters = [ { name = "R1" }, { name = "R2" } ]

[[sites.links.cdt_ranges]]
addresses = "1-4"
repeater = "R1"
modules = "1-32"
template = "flat"
serial = "{cdt:03}{module:02}{channel}"
household = "B{cdt:03}-{module:02}"

[[sites.links.cdt_ranges]]
addresses = "5-8"
repeater = "R2"
modules = "1-32"
template = "flat"
serial = "{cdt:03}{module:02}{channel}"
household = "B{cdt:03}-{module:02}"
"""


def _configs(tmp_path, url):
    text_ = FIELD
    field = tmp_path / "field.toml"
    field.write_text(text_, encoding="utf-8")
    ptys, state = tmp_path / "pty", tmp_path / "state"
    site = tmp_path / "site.toml"
    site.write_text(text_.replace("/dev/ttyUSB0", str(ptys / LINK))
                    + '\n[[plans]]\nname = "fast"\nkind = "full"\nevery = 10\n'
                    + f'\n[supervisor]\nstate_dir = "{state}"\n\n[historian]\nurl = "{url}"\n', encoding="utf-8")
    return field, site, ptys, state


def _replies(control: str) -> int:
    """Replies the simulator has written on the link so far."""
    with urllib.request.urlopen(control + "/stats", timeout=10) as answer:
        return json.load(answer)["links"][LINK]["bus"]["replies"]


def _spooled(state) -> list[list]:
    """The reading rows in the spool now (read-only)."""
    return [row for record in read_pending(state / "historian-spool") for row in record.payload.get("readings", ())]


def _rounds(times: list[float]) -> list[list[float]]:
    """``times`` (sorted) split where more than 3 s pass without a reading: the rounds."""
    out: list[list[float]] = []
    for t in times:
        if not out or t - out[-1][-1] > 3:
            out.append([])
        out[-1].append(t)
    return out


def _wait(condition, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(interval)
    return value


@pytest.mark.postgres
@pytest.mark.slow
def test_run_records_simulate_through_outages_and_a_sigkill_every_round_once_in_order(pg_database, pg_schema,
                                                                                     tmp_path):
    direct = db.make_engine(pg_url(pg_database, schema=pg_schema))
    proxy = TcpProxy(PG_UPSTREAM)
    field, site, ptys, state = _configs(tmp_path, pg_url(pg_database, port=proxy.port, schema=pg_schema))
    procs: list[subprocess.Popen] = []
    truth = None

    def start(*args):
        with open(tmp_path / f"stderr-{len(procs)}.txt", "wb") as err:  # a file: a full pipe would stall it
            proc = subprocess.Popen([ST2000R, *args], stdout=subprocess.PIPE, stderr=err)
        procs.append(proc)
        return proc, Lines(proc)

    def stored() -> int:
        with direct.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM readings")).scalar()

    try:
        sim, sim_out = start("simulate", str(field), "--control", "0", "--pty-dir", str(ptys), "--speedup", "60")
        control = sim_out.until(r"^control: (http://\S+)", 20).group(1)
        sim_out.until(r"^ready", 20)
        truth = Truth(control)
        # a reading is bracketed by a sample received READ_MARGIN_S before it: on a quick machine
        # the first round can start sooner than that after the first sample
        _wait(lambda: time.time() - truth.samples[0][1] > READ_MARGIN_S, 10, "a truth sample older than the margin")
        upgrade = subprocess.run([ST2000R, "db", "upgrade", str(site)], capture_output=True, text=True, timeout=60)
        assert upgrade.returncode == 0, upgrade.stderr

        # ---- run A: round 1 straight into the database
        first, out = start("run", str(site))
        out.until(r"supervising .* 8 CDTs, 768 meters", 30)
        out.until_count(DONE, 1, 30)
        replies_1 = _replies(control)
        _wait(lambda: stored() == METERS, 10, "round 1 in the database")

        # ---- the database goes away: round 2 and part of round 3 go to the spool
        proxy.cut()
        out.until(r"historian .*: unreachable", 15)
        out.until_count(DONE, 2, 20)
        replies_2 = _replies(control)
        others = (replies_2 - replies_1) - METERS // MAX_BULK  # replies of a round that carry no readings
        _wait(lambda: len(_spooled(state)) > METERS, 15, "round 3 begun in the spool")
        # kill while a bulk reply is written beyond what the spool holds (published, or on its way)
        _wait(lambda: _replies(control) - replies_2 - others >= (len(_spooled(state)) - METERS) // MAX_BULK + 1,
              15, "round 3 ahead of the spool", interval=0.01)
        first.send_signal(signal.SIGKILL)
        killed_at = time.time()
        assert first.wait(10) == -signal.SIGKILL
        replies_3 = _replies(control) - replies_2  # written before the kill, the last perhaps not yet read
        out.rest(10)
        assert out.count(DONE) == 2, "round 3 ended before the kill: make it longer"
        durable_a = {(row[0], row[1]) for row in _spooled(state)}  # what the spool holds after the kill
        spooled_rounds = _rounds(sorted(datetime.fromisoformat(at).timestamp() for _, at in durable_a))
        assert [len(r) for r in spooled_rounds][:1] == [METERS] and len(spooled_rounds) == 2
        assert 0 < len(spooled_rounds[1]) < METERS  # round 3: cut off by the kill
        # the loss window: what round 3 had published but not yet spooled is lost; what the
        # spool holds of it is whole replies (a batch is appended whole or, torn, not at all)
        per_reply = MAX_BULK  # readings of one bulk reply
        in_round_3 = [m for m, at in durable_a if datetime.fromisoformat(at).timestamp() >= spooled_rounds[1][0]]
        assert set(Counter(at for _, at in durable_a if datetime.fromisoformat(at).timestamp()
                           >= spooled_rounds[1][0]).values()) == {per_reply}
        lost = (replies_3 - others - 1) * per_reply - len(in_round_3), replies_3 * per_reply - len(in_round_3)
        print(f"\nSIGKILL {killed_at - spooled_rounds[1][-1]:.3f} s after the newest spooled reply of round 3; "
              f"{len(in_round_3)} of its readings spooled; the simulator had written {replies_3} replies of "
              f"{per_reply} readings: {max(0, lost[0])}-{lost[1]} readings published or in flight, not spooled")
        assert stored() == METERS  # nothing of rounds 2-3 reached the database

        # ---- run B on the same state folder: its round 1 spools behind A's rows, then the database returns
        second, out2 = start("run", str(site))
        out2.until(r"supervising ", 30)
        out2.until_count(DONE, 1, 30)
        proxy.restore()
        out2.until(r"historian .*: writing", 40)
        out2.until_count(DONE, 2, 30)
        _wait(lambda: not _spooled(state) and stored() == 2 * METERS + len(durable_a) + METERS, 15,
              "an empty spool")
        second.send_signal(signal.SIGTERM)  # between rounds: B's rounds are whole
        out2.rest(30)
        assert second.returncode == 0
        assert out2.count(DONE) == 2
        truth.close()
        truth.sample()  # after the last reading

        with direct.connect() as conn:
            view = conn.execute(text("SELECT meter_id, read_at, value, source FROM v_readings")).all()
            rows = conn.execute(text(
                "SELECT m.meter_id, r.read_at, r.value, r.run, r.id FROM readings r JOIN meters m ON m.id = r.meter "
                "ORDER BY r.id")).all()
    finally:
        if truth is not None:
            truth.close()
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            _stop(proc)
        proxy.close()
        direct.dispose()

    # the billing view shows the same rows as the table, every one from a plan
    assert sorted((m, as_utc(t), v) for m, t, v, _ in view) == sorted((m, as_utc(t), v) for m, t, v, _, _ in rows)
    assert {s for *_, s in view} == {"plan"}
    runs = sorted({r[3] for r in rows}, key=lambda run: min(as_utc(r[1]) for r in rows if r[3] == run))
    assert len(runs) == 2
    run_a, run_b = runs
    # run A: rounds 1 and 2 whole, round 3 exactly as far as the spool held it at the kill
    by_meter: dict[str, list] = {}
    for meter, at, value, run, _ in rows:
        by_meter.setdefault(meter, []).append((as_utc(at), value, run))
    assert len(by_meter) == METERS
    a_spooled = {(m, datetime.fromisoformat(at)) for m, at in durable_a}
    spooled_per_meter = Counter(m for m, _ in a_spooled)  # 1 of round 2, and 0 or 1 of round 3
    for meter, got in by_meter.items():
        runs_of = [run for _, _, run in got]
        assert runs_of.count(run_a) == 1 + spooled_per_meter[meter], (meter, got)
        assert runs_of.count(run_b) == 2, (meter, got)
    a_rows = {(m, as_utc(t)) for m, t, _, run, _ in rows if run == run_a}
    assert a_spooled <= a_rows and len(a_rows - a_spooled) == METERS  # round 1 went straight in
    # each reading once (the key would refuse a second), in the order read, and true
    assert len({(m, as_utc(t)) for m, t, *_ in rows}) == len(rows)
    times = [as_utc(t) for _, t, *_ in rows]
    assert times == sorted(times)
    for meter, got in by_meter.items():
        values = [v for _, v, _ in sorted(got)]
        assert values == sorted(values), (meter, values)
        for at, value, _ in got:
            low, high = truth.bracket(meter, at.timestamp())
            assert low <= value <= high, (meter, at, value, low, high)
    moved = sum(1 for got in by_meter.values() if len({v for _, v, _ in got}) > 1)
    assert moved > METERS // 4  # the world moved between rounds: the values tell rounds apart
    assert {r[0] for r in rows} == set(truth.samples[-1][2])
    assert datetime.now(UTC) > max(times)
