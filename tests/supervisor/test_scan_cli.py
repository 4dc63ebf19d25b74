"""``st2000r scan`` end to end: the command over a real pseudo-terminal pair against the
simulator's pty endpoint (same process, real reactor), exit codes, reports, draft config."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime

import pytest
import pytest_twisted
from twisted.internet import defer

from st2000r.config.loader import load, loads
from st2000r.supervisor import scan

CONFIG = """
[[sites]]
name = "Pty Gardens"
address = "7 Serial Street"

[[sites.links]]
name = "bus"
kind = "serial"
device = "{device}"
baud = 9600
turnaround_ms = 10

[[sites.links.cdts]]
address = 1
name = "Block 1"
[[sites.links.cdts.modules]]
module = 1
channels = [
  {{ channel = 1, kind = "water", pulse_constant = 10, serial = "10000101", initial = 500, household = "A-1" }},
  {{ channel = 2, kind = "electricity", pulse_constant = 1, serial = "20000101", household = "A-1" }},
]
[[sites.links.cdts.modules]]
module = 2
channels = [ {{ channel = 3, kind = "gas", pulse_constant = 10, serial = "30000102" }} ]

[[sites.links.cdts]]
address = 2
[[sites.links.cdts.modules]]
module = 1
channels = [ {{ channel = 1, kind = "water", pulse_constant = 10, serial = "10000201" }} ]
"""

EXTRA_CDT = """
[[sites.links.cdts]]
address = 3
[[sites.links.cdts.modules]]
module = 4
channels = [ {{ channel = 2, kind = "electricity", pulse_constant = 1, serial = "20000402" }} ]
"""


def field_topology(text: str):
    return loads(text.format(device="/dev/null"), "<field>")


@pytest.fixture
def simulator(tmp_path):
    """Start the simulator for a field topology on a pty; yields a starter returning the
    config file path that names the pty (through the endpoint's symlink)."""
    from twisted.internet import reactor

    from st2000r.simulation.bus import SimulatedBus
    from st2000r.simulation.endpoints import PtyEndpoint
    from st2000r.simulation.world import World

    started = []

    def start(field_text: str, config_text: str = CONFIG) -> str:
        world = World(field_topology(field_text), reactor, seed=5, start=datetime(2026, 5, 1, 9, 0))
        bus = SimulatedBus(world, "bus", reactor)
        pty = PtyEndpoint("bus", bus, reactor, link_dir=str(tmp_path / "dev"))
        pty.startService()
        started.append(pty)
        path = tmp_path / "site.toml"
        path.write_text(config_text.format(device=pty.symlink))
        return str(path)

    yield start
    for pty in started:
        pty.stopService()


async def run(argv):
    from twisted.internet import reactor

    out, err = io.StringIO(), io.StringIO()
    d = defer.ensureDeferred(scan.run_scan(argv, reactor, stdout=out, stderr=err))
    d.addTimeout(30, reactor)  # bounded: a hang fails the test
    code = await d
    return code, out.getvalue(), err.getvalue()


@pytest_twisted.ensureDeferred
async def test_scan_over_a_pty_finds_the_missing_and_the_extra_cdt(simulator, tmp_path):
    field = CONFIG + EXTRA_CDT
    field = field.replace("[[sites.links.cdts]]\naddress = 2\n", "[[sites.links.cdts]]\naddress = 9\n")
    config = simulator(field)
    reports = tmp_path / "reports"
    code, out, err = await run([config, "--link", "bus", "--addresses", "1-4", "--report-dir", str(reports),
                                "--progress", "lines"])  # fmt: skip
    assert code == 1, err
    assert "RESULT: 2 differences from the configuration" in out
    assert "missing_cdt" in out and "configured CDT 2 does not answer" in out
    assert "unexpected_cdt" in out and "CDT 3 answers but is not configured" in out
    assert "Reply quality per device" in out and "00000000000001" in out
    # progress lines on stderr (not a TTY here): 0 % ... 100 %, with an estimate of time left
    lines = [ln for ln in err.splitlines() if ln.startswith("scan:") and "%" in ln]
    assert lines[0].startswith("scan:   0%") and lines[-1].startswith("scan: 100%")
    assert any("left" in ln for ln in lines)
    files = sorted(os.listdir(reports))
    assert len(files) == 2 and files[0].startswith("scan-bus-") and files[0].endswith(".json")
    doc = json.loads((reports / files[0]).read_text())
    assert doc["matches"] is False and doc["link"] == "bus"
    assert sorted((d["kind"], d["cdt"]) for d in doc["differences"]) == [("missing_cdt", 2), ("unexpected_cdt", 3)]
    assert (reports / files[1]).read_text() == out


@pytest_twisted.ensureDeferred
async def test_clean_bus_exits_0_and_the_draft_config_round_trips(simulator, tmp_path):
    config = simulator(CONFIG)
    draft = tmp_path / "draft.toml"
    code, out, err = await run([config, "--link", "bus", "--addresses", "1-3", "--json", "--meters",
                                "--progress", "none", "--write-config", str(draft)])  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["matches"] is True and doc["differences"] == []
    assert [c["address"] for c in doc["cdts"]] == [1, 2]
    assert [c["outcome"] for c in doc["meter_checks"]] == ["ok"] * 4
    assert err == f"st2000r scan: draft topology written to {draft}\n"
    # the draft loads and equals the configuration of what was found (here: all of it)
    drafted = load(str(draft))
    original = load(config)
    assert list(drafted.links()) == list(original.links())


@pytest_twisted.ensureDeferred
async def test_scan_through_a_device_override(simulator, tmp_path):
    config = simulator(CONFIG)
    device = load(config).link("bus").endpoint.device
    other = tmp_path / "other.toml"
    other.write_text(CONFIG.format(device="/dev/this-does-not-exist"))
    code, out, _ = await run([str(other), "--link", "bus", "--addresses", "1-2", "--device", device,
                              "--progress", "none", "--no-broadcast"])  # fmt: skip
    assert code == 0 and "matches the configuration" in out


# --------------------------------------------------------------------------- bad input: exit 2


def write(tmp_path, text, name="site.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--link", "nope"], "no link named 'nope'"),
        (["--link", "bus", "--addresses", "0-9"], "--addresses: range '0-9' must satisfy"),
        (["--link", "bus", "--tcp", "host"], "--tcp: expected HOST:PORT"),
        (["--link", "bus", "--baud", "7"], "--baud: 7 is not a plausible line speed"),
        (["--link", "bus", "--write-config", "/no/such/folder/x.toml", "--device", "/dev/null"], "does not exist"),
        ([], "the following arguments are required: --link"),
    ],
)
def test_bad_options_exit_2_with_a_reason(tmp_path, capsys, args, message):
    config = write(tmp_path, CONFIG.format(device="/dev/null"))
    assert scan.main([config, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("st2000r scan: ") and message in err and "Traceback" not in err


def test_config_error_and_unopenable_device_exit_2(tmp_path, capsys):
    bad = write(tmp_path, "[[sites]]\nname = 1\n", "bad.toml")
    assert scan.main([bad, "--link", "bus"]) == 2
    assert "configuration error" in capsys.readouterr().err
    missing = write(tmp_path, CONFIG.format(device=str(tmp_path / "ttyUSB9")))
    assert scan.main([missing, "--link", "bus"]) == 2
    err = capsys.readouterr().err
    assert "cannot open serial device" in err and "ttyUSB9" in err


def test_installed_command_exits_2_on_an_unknown_link(tmp_path):
    config = write(tmp_path, CONFIG.format(device="/dev/null"))
    proc = subprocess.run([sys.executable, "-m", "st2000r.supervisor.cli", "scan", config, "--link", "x"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2 and "no link named 'x'" in proc.stderr


@pytest_twisted.ensureDeferred
async def test_installed_command_scans_the_simulator_pty(simulator, tmp_path):
    """The real command in its own process (its own reactor) against the simulator's pty,
    served by this process's reactor meanwhile."""
    from twisted.internet import reactor
    from twisted.internet.utils import getProcessOutputAndValue

    config = simulator(CONFIG)
    d = getProcessOutputAndValue(
        sys.executable, ["-m", "st2000r.supervisor.cli", "scan", config, "--link", "bus", "--addresses", "1-3"],
        env=dict(os.environ), reactor=reactor,
    )  # fmt: skip
    d.addTimeout(30, reactor)
    out, err, code = await d
    assert code == 0, err.decode()
    assert b"RESULT: the bus matches the configuration" in out
    assert b"scan: 100%" in err and b"Traceback" not in err


@pytest_twisted.ensureDeferred
async def test_scan_over_tcp_to_the_simulated_serial_device_server(tmp_path):
    from twisted.internet import reactor

    from st2000r.simulation.bus import SimulatedBus
    from st2000r.simulation.endpoints import TcpListenerEndpoint
    from st2000r.simulation.world import World

    world = World(field_topology(CONFIG), reactor, seed=5, start=datetime(2026, 5, 1, 9, 0))
    server = TcpListenerEndpoint("bus", SimulatedBus(world, "bus", reactor), reactor, "127.0.0.1", 0)
    server.startService()
    try:
        config = write(tmp_path, CONFIG.format(device="/dev/null"))
        code, out, err = await run([config, "--link", "bus", "--addresses", "1-2", "--tcp", f"127.0.0.1:{server.port}",
                                    "--progress", "none"])  # fmt: skip
        assert code == 0, err
        assert "RESULT: the bus matches the configuration" in out
    finally:
        await defer.maybeDeferred(server.stopService)


@pytest_twisted.ensureDeferred
async def test_a_link_that_does_not_come_up_exits_2(tmp_path):
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    free = port.getHost().port
    await port.stopListening()  # nobody listens there now: connections are refused
    config = write(tmp_path, CONFIG.format(device="/dev/null"))
    code, out, err = await run([config, "--link", "bus", "--tcp", f"127.0.0.1:{free}", "--connect-timeout", "0.5"])
    assert code == 2 and out == ""
    assert err == "st2000r scan: link 'bus' did not come up within 0.5 s\n"
