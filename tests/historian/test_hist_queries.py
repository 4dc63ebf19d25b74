"""Billing queries on SQLite and PostgreSQL with hand-computed expected values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from st2000r.historian import db
from st2000r.historian.queries import ROLLOVER, export_readings, suspicious, usage
from st2000r.historian.schema import installations, meters, readings


def day(n: int) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=n)


@pytest.fixture
def conn(db_url):
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    with engine.begin() as c:
        yield c
    engine.dispose()


def meter(c, meter_id, kind="water", household="H1", serial="00000000000001"):
    link, cdt, module, channel = meter_id.split("/")
    return c.execute(meters.insert().values(meter_id=meter_id, link=link, cdt=int(cdt), module=int(module),
                                            channel=int(channel), kind=kind, base_unit="Wh" if kind == "electricity"
                                            else "L", pulse_constant=10, serial=serial, household=household)
                     ).inserted_primary_key[0]


def install(c, key, serial, installed, start_value, household="H1", removed=None, final_value=None):
    c.execute(installations.insert().values(meter=key, serial=serial, household=household, installed_at=installed,
                                            removed_at=removed, start_value=start_value, final_value=final_value))


def read(c, key, at, value, source="plan"):
    c.execute(readings.insert().values(meter=key, read_at=at, source=source, value=value, count=None, quality="good",
                                       valve=None, alarms=0, plan=None, run="r", seq=0))


def test_consumption_across_a_meter_replacement(conn):
    """Old meter S1 (start 1000) read 1100 on day 1 and 1300 on day 3, removed on day 5 with
    a final reading of 1500; new meter S2 installed on day 5 at 0, read 50 on day 6 and 200
    on day 8.  Days 2..9: S1 1100 -> 1300 -> 1500 = 400, S2 0 -> 50 -> 200 = 200; 600 L."""
    key = meter(conn, "bus/1/1/1")
    install(conn, key, "S1", day(0), 1000, removed=day(5), final_value=1500)
    install(conn, key, "S2", day(5), 0)
    for at, value in ((day(1), 1100), (day(3), 1300), (day(6), 50), (day(8), 200)):
        read(conn, key, at, value)
    result = usage(conn, "H1", day(2), day(9))
    assert result.by_kind == {"water": 600}
    assert [(s.serial, s.start_value, s.end_value, s.consumption) for s in result.segments] == [
        ("S1", 1100, 1500, 400), ("S2", 0, 200, 200)]
    # only the new meter's part: day 7..9 -> 50 -> 200
    assert usage(conn, "H1", day(7), day(9)).by_kind == {"water": 150}
    # only the old meter's part: day 0..4 -> 1000 -> 1100 -> 1300
    assert usage(conn, "H1", day(0), day(4)).by_kind == {"water": 300}


def test_consumption_across_a_counter_rollover(conn):
    """999,999,000 -> 999,999,900 -> 400 (wrapped at 10^9) -> 2,400:
    900 + (10^9 - 999,999,900 + 400 = 500) + 2,000 = 3,400 Wh."""
    key = meter(conn, "bus/1/1/2", kind="electricity")
    install(conn, key, "E1", day(0), 999_999_000)
    for n, value in ((1, 999_999_900), (2, 400), (3, 2_400)):
        read(conn, key, day(n), value)
    result = usage(conn, "H1", day(0), day(4))
    assert ROLLOVER == 10**9
    assert result.by_kind == {"electricity": 3_400}
    assert result.segments[0].rollovers == 1 and result.segments[0].reversals == 0


def test_suspicious_readings(conn):
    """Meter A: 100 on days 0..8 (no consumption for 8 days -> zero, flagged once, on day 7);
    meter B: 500 -> 450 on day 1 (reverse flow) -> 20,000,450 on day 2 (a jump of 20,000,000
    over the 10,000,000 threshold)."""
    a, b = meter(conn, "bus/1/1/1", household="A"), meter(conn, "bus/1/1/3", household="B", kind="gas")
    for n in range(9):
        read(conn, a, day(n), 100)
    for n, value in ((0, 500), (1, 450), (2, 20_000_450)):
        read(conn, b, day(n), value)
    found = [(s.meter_id, s.rule, s.at) for s in suspicious(conn, day(0), day(10), zero_days=7)]
    assert found == [("bus/1/1/1", "zero", day(7)), ("bus/1/1/3", "reverse", day(1)),
                     ("bus/1/1/3", "jump", day(2))]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "gbk"])
def test_export_pages_through_every_reading(conn, tmp_path, encoding):
    key = meter(conn, "bus/1/1/1", household="一号楼-101")
    for n in range(25):
        read(conn, key, day(0) + timedelta(hours=n), 1000 + n)
    path = tmp_path / "out.csv"
    assert export_readings(conn, day(0), day(1), str(path), encoding=encoding, page=7) == 24
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") == (encoding == "utf-8-sig")
    lines = data.decode(encoding).splitlines()
    assert lines[0] == "meter_id,household,kind,read_at,value,base_unit,quality,source"
    assert lines[1] == "bus/1/1/1,一号楼-101,water,2026-01-01T00:00:00+00:00,1000,L,good,plan"
    assert len(lines) == 25


def test_history_usage_and_export_from_the_command_line(tmp_path):
    import subprocess
    import sys

    from hist_rig import TOPOLOGY

    config = tmp_path / "site.toml"
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    config.write_text(TOPOLOGY.replace("STATE", str(tmp_path / "state")) + f'\n[historian]\nurl = "{url}"\n')
    engine = db.make_engine(url)
    db.upgrade(engine)
    with engine.begin() as c:
        key = meter(c, "bus/1/1/1")
        install(c, key, "S1", day(0), 1000, removed=day(5), final_value=1500)
        install(c, key, "S2", day(5), 0)
        for at, value in ((day(1), 1100), (day(3), 1300), (day(6), 50), (day(8), 200)):
            read(c, key, at, value)
    engine.dispose()

    def st2000r(*args):
        return subprocess.run([sys.executable, "-m", "st2000r.supervisor.cli", "history", *args],
                              capture_output=True, text=True, timeout=60)

    out = st2000r("usage", str(config), "--household", "H1", "--from", "2026-01-03", "--to", "2026-01-10")
    assert out.returncode == 0, out.stderr
    assert "  water: 600 L" in out.stdout
    assert "bus/1/1/1 serial S1: 1100 -> 1500 = 400 L" in out.stdout
    csv_path = tmp_path / "r.csv"
    out = st2000r("export", str(config), "--from", "2026-01-01", "--to", "2026-02-01", "--output", str(csv_path))
    assert out.returncode == 0 and "4 reading(s)" in out.stdout
