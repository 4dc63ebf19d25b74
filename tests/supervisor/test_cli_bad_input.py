"""Bad command-line input gets a clear one-line error, never a traceback or a hang.

Regressions found in review: each test failed before its fix.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ST = [sys.executable, "-m", "st2000r.supervisor.cli"]
SMALL = str(Path(__file__).parents[2] / "config" / "examples" / "small.toml")
SERIAL = 'kind = "serial"                # serial | tcp | gprs | gsm\ndevice = "/dev/ttyUSB0"        # the USB/RS232 -> RS485 converter'


def cfg(tmp_path, endpoint, extra=""):
    text = open(SMALL).read()
    assert SERIAL in text
    p = tmp_path / "site.toml"
    p.write_text(text.replace(SERIAL, endpoint) + extra)
    return str(p)


def sh(*args, timeout=30):
    return subprocess.run([*ST, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_run_bad_duration_is_rejected_not_a_traceback(tmp_path, value):
    c = cfg(tmp_path, 'kind = "gsm"\nmodem = "/dev/ttyNOPE"\nnumber = "+123456"',
            f'\n[supervisor]\nstate_dir = "{tmp_path}"\n')
    r = sh("run", c, "--duration", value)
    assert "Traceback" not in r.stderr, r.stderr[-400:]
    assert r.returncode == 2


def test_simulate_ctl_bad_url_is_a_one_line_error():
    r = sh("simulate-ctl", "--url", "simulator", "truth")
    assert "Traceback" not in r.stderr, r.stderr[-300:]
    assert r.returncode == 2 and "expected http://HOST:PORT" in r.stderr


def test_simulate_extra_tcp_listener_for_a_tcp_link(tmp_path):
    c = cfg(tmp_path, 'kind = "tcp"\nhost = "127.0.0.1"\nport = 4999')
    r = sh("simulate", c, "--for", "1", "--control", "0", "--tcp", "garden-bus=0")
    assert "Traceback" not in r.stderr, r.stderr[-300:]
    assert r.returncode == 0  # --tcp moves the TCP link's own listener
    r = sh("simulate", c, "--for", "1", "--control", "0", "--tcp", "garden-bus=0", "--tcp", "garden-bus=0")
    assert r.returncode == 2 and "given twice" in r.stderr


def test_scan_gprs_port_taken_says_so(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        c = cfg(tmp_path, 'kind = "gprs"\ndtu_id = "13900000001"\nauth = "none"',
                f'\n[supervisor]\ngprs_listen = "tcp:port={port}:interface=127.0.0.1"\n')
        r = sh("scan", c, "--link", "garden-bus", "--connect-timeout", "1")
    finally:
        s.close()
    assert r.returncode == 2
    assert "cannot listen for GPRS DTUs" in r.stderr and f"127.0.0.1:{port}" in r.stderr, r.stderr  # the port taken


def test_scan_connect_timeout_inf_is_rejected_not_a_hang(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # refused
    c = cfg(tmp_path, 'kind = "tcp"\nhost = "127.0.0.1"\nport = 4999')
    try:
        r = sh("scan", c, "--link", "garden-bus", "--tcp", f"127.0.0.1:{port}", "--connect-timeout", "inf", timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("st2000r scan --connect-timeout inf hangs")
    assert r.returncode == 2 and "--connect-timeout" in r.stderr


def test_scan_refuses_a_device_that_is_not_a_terminal(tmp_path):
    c = cfg(tmp_path, 'kind = "tcp"\nhost = "127.0.0.1"\nport = 4999')
    r = sh("scan", c, "--link", "garden-bus", "--device", "/dev/null", "--connect-timeout", "1")
    assert r.returncode == 2 and "/dev/null is not a serial device" in r.stderr


# ---- inputs that are not configuration files: one line naming the input, exit 2, bounded


@pytest.mark.parametrize(("command", "path"), [
    (["config", "check"], "/dev/zero"),
    (["run"], "/dev/urandom"),
    (["simulate"], "/dev/zero"),
    (["scan"], "/dev/zero"),
])
def test_a_device_as_the_configuration_is_one_line_not_memory(command, path):
    extra = ["--link", "x"] if command == ["scan"] else []
    r = sh(*command, path, *extra, timeout=20)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-300:]
    assert "a device, not a regular file" in r.stderr and path in r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr


@pytest.mark.parametrize("command", [["config", "check"], ["run"]])
def test_a_fifo_as_the_configuration_does_not_hang(tmp_path, command):
    fifo = tmp_path / "site.toml"
    os.mkfifo(fifo)
    try:
        r = sh(*command, str(fifo), timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"st2000r {' '.join(command)} FIFO hangs")
    assert r.returncode == 2 and r.stderr == f"{fifo}: cannot read file: a FIFO, not a regular file\n"


def test_a_scenario_from_a_device_is_refused(tmp_path):
    r = sh("simulate", SMALL, "--control", "0", "--scenario", "/dev/zero", timeout=20)
    assert r.returncode == 2 and "/dev/zero: cannot read scenario file: a device, not a regular file" in r.stderr


def test_an_unbounded_simulate_duration_is_refused():
    r = sh("simulate", SMALL, "--for", "inf")
    assert r.returncode == 2 and r.stderr.startswith("st2000r simulate: argument --for: expected seconds")


def test_many_unknown_keys_print_a_bounded_list(tmp_path):
    p = tmp_path / "keys.toml"
    p.write_text("".join(f"k{i} = 1\n" for i in range(300_000)) + open(SMALL).read())
    r = sh("config", "check", str(p), timeout=60)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 101
    assert lines[-1] == f"{p}: ... and 299900 more problems (only the first 100 are listed)"
