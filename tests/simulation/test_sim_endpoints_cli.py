"""The command lines: ``st2000r simulate`` (bad input -> exit 2), ``st2000r demo`` end to
end in a subprocess (a real bulk read over its TCP port, ``simulate-ctl`` against it), and
``st2000r simulate-ctl`` argument handling."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from support.process import lines_until
from st2000r.drivers.st2000r import messages as m
from st2000r.drivers.st2000r.frame import Frame, FrameDecoder, NEED_DATA
from st2000r.simulation import cli, ctl

SMALL = os.path.join(os.path.dirname(__file__), "..", "..", "config", "examples", "small.toml")


def test_simulate_bad_config_exits_2_with_the_reason(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[sites]]\nname = "x"\naddress = "y"\n[[sites.links]]\nname = "a"\nkind = "carrier-pigeon"\n')
    assert cli.main([str(bad), "--control", "0"]) == 2
    err = capsys.readouterr().err
    assert "carrier-pigeon" in err and "Traceback" not in err
    assert cli.main([str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err


@pytest.mark.parametrize("args, reason", [
    (["--speedup", "0"], "must be > 0"),
    (["--supervisor", "nohost"], "HOST:PORT"),
    (["--link", "nosuch"], "no link named 'nosuch'"),
    (["--tcp", "garden-bus"], "LINK=VALUE"),
    (["--device", "nosuch=/dev/null"], "not served"),
])
def test_simulate_bad_options_exit_2(capsys, args, reason):
    assert cli.main([SMALL, "--control", "0", *args]) == 2
    err = capsys.readouterr().err
    assert reason in err and "Traceback" not in err


def test_simulate_bad_scenario_exits_2(tmp_path, capsys):
    scenario = tmp_path / "s.toml"
    scenario.write_text("this is not toml = = =\n")
    assert cli.main([SMALL, "--control", "0", "--scenario", str(scenario)]) == 2
    err = capsys.readouterr().err
    assert "s.toml" in err and "Traceback" not in err


def test_ctl_errors_exit_2(capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert ctl.main(["--url", f"http://127.0.0.1:{port}", "truth"]) == 2
    assert "cannot reach the simulator" in capsys.readouterr().err
    assert ctl.main(["fault", "alarm", "cdt"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert ctl.main(["explode"]) == 2


def test_ctl_action_document():
    assert ctl.action_doc("alarm", ["link=a", "cdt=3", "channel=2", "flags=tamper,open"]) == {
        "action": "alarm", "link": "a", "cdt": 3, "channel": 2, "flags": ["tamper", "open"]}
    assert ctl.action_doc("alarm", ["flags="])["flags"] == []
    assert ctl.action_doc("cdt_power", ["mains=false"])["mains"] is False
    assert ctl.action_doc("bit_errors", ["rate=0.01"])["rate"] == 0.01


def _exchange(host: str, port: int, request: bytes, deadline: float) -> Frame:
    dec = FrameDecoder()
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(request)
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            data = s.recv(4096)
            assert data, "connection closed before a reply"
            dec.feed(data)
            while (event := dec.next_event()) is not NEED_DATA:
                if isinstance(event, Frame):
                    return event
    raise AssertionError("no reply in time")


@pytest.mark.slow
def test_demo_runs_end_to_end(capsys):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "st2000r.supervisor.cli", "demo", "--simulator-only", "--for", "600", "--control", "0",
         "--tcp-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, bufsize=0,
    )
    try:
        deadline = time.monotonic() + 30
        lines = lines_until(proc, r"^ready", deadline)
        text = "\n".join(lines)
        pty = re.search(r"^endpoint: lakeside-bus -> pty (/dev/pts/\d+)", text, re.M).group(1)
        host, port = re.search(r"^endpoint: lakeside-bus -> tcp ([\d.]+):(\d+)", text, re.M).groups()
        url = re.search(r"^control: (http://\S+)", text, re.M).group(1)
        assert os.path.exists(pty)
        assert "st2000r frame encode bulk-read -a 1" in text
        request = m.encode(m.BulkRead(address=f"{5:014d}", first_channel=1, count=6))
        reply = m.parse(_exchange(host, int(port), request, time.monotonic() + 10))
        assert isinstance(reply, m.BulkReadReply) and reply.address == f"{5:014d}" and len(reply.channels) == 6
        capsys.readouterr()
        assert ctl.main(["--url", url, "endpoints"]) == 0
        endpoints = json.loads(capsys.readouterr().out)["endpoints"]
        assert {e["kind"] for e in endpoints} == {"pty", "tcp"}
        assert ctl.main(["--url", url, "fault", "alarm", "link=lakeside-bus", "cdt=5", "channel=2", "flags=short"]) == 0
        capsys.readouterr()
        assert ctl.main(["--url", url, "truth"]) == 0
        truth = json.loads(capsys.readouterr().out)
        cdt5 = next(c for c in truth["links"][0]["cdts"] if c["address"] == 5)
        assert cdt5["alarms"] == {"2": ["short"]}
        assert ctl.main(["--url", url, "fault", "alarm", "link=lakeside-bus", "cdt=500", "channel=2", "flags=short"]) == 2
        assert "500" in capsys.readouterr().err
        proc.send_signal(signal.SIGTERM)  # a stop by signal ends as cleanly as --for running out
        out, _ = proc.communicate(timeout=30)
        out = out.decode("utf-8", "replace")
        assert proc.returncode == 0, out
        assert out.rstrip().endswith("stopped")
        assert "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
