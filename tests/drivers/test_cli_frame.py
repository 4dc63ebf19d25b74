"""``st2000r frame decode|encode``: JSON out, hex out, one-line reasons and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from st2000r.drivers.st2000r import cli
from st2000r.drivers.st2000r import messages as m

REPLY = (
    "FE FE 68 10 01 00 00 00 00 00 00 81 16 90 1F 00 56 34 12 00 2C 00 00 10 00 2C "
    "00 00 13 25 11 26 20 01 00 53 16"
)


def run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_decode_prints_json_with_units_and_status(capsys):
    status, out, err = run(capsys, "decode", REPLY)
    assert status == 0 and err == ""
    doc = json.loads(out)
    assert doc["protocol"] == "CJ/T 188-2004"
    assert doc["address"] == "00000000000001"
    assert doc["di"] == "901F" and doc["di_order"] == "90 1F"
    assert doc["control"]["direction"] == "reply"
    assert doc["values"]["total"] == {
        "value": "1234.56", "unit": "m³", "base_value": "1234560", "base_unit": "L",
    }  # fmt: skip
    assert doc["values"]["time"] == "2026-11-25 13:00:00"
    assert doc["values"]["status"]["valve"] == "closed"


def test_decode_accepts_one_argument_per_byte_and_several_frames(capsys):
    req = cli.parse_hex("FE FE 68 10 01 00 00 00 00 00 00 01 03 90 1F 00 2C 16")
    status, out, _ = run(capsys, "decode", "--compact", *req.hex(" ").split(), *REPLY.split())
    assert status == 0
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["command"] for d in docs] == ["ReadData", "CurrentData"]


@pytest.mark.parametrize(
    "hexdata, message",
    [
        (REPLY.replace("53 16", "54 16"), "byte 35: checksum expected 53h, got 54h"),
        ("68 10 01", "byte 3: frame ends after 3 bytes"),
        ("FE FE 69", "byte 2: expected start byte 68h"),
        ("68 1G", "'G' is not a hex digit"),
        (REPLY[:-3], "L=16h needs 35 bytes"),
    ],
)
def test_bad_frames_exit_2_with_one_line(capsys, hexdata, message):
    status, out, err = run(capsys, "decode", hexdata)
    assert status == 2 and out == ""
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, cls",
    [
        (["read", "-a", "12345678"], m.ReadData),
        (["read-address"], m.ReadAddress),
        (["valve-open", "-a", "1"], m.ValveControl),
        (["valve-close", "-a", "1", "--alt"], m.ValveControl),
        (["write-address", "-a", "1", "--new-address", "2"], m.WriteAddress),
        (["bulk-read", "-a", "7", "--first", "49"], m.BulkRead),
        (["alarms", "-a", "7"], m.ReadAlarms),
        (["cdt-status", "-a", "7"], m.ReadCdtStatus),
        (["channel-info", "-a", "7", "--first", "25", "--count", "24"], m.ReadChannelInfo),
        (["set-base", "-a", "7", "--channel", "5", "--value", "1000"], m.SetBase),
        (["time-sync", "-a", "7", "--time", "2026-11-25T13:45:00"], m.TimeSync),
    ],
)
def test_encode_builds_each_request(capsys, argv, cls):
    status, out, err = run(capsys, "encode", *argv)
    assert status == 0, err
    frames = cli.decode_all(cli.parse_hex(out))
    assert len(frames) == 1
    msg = frames[0][1]
    assert type(msg) is cls
    if cls is m.ValveControl:
        assert msg.open == (argv[0] == "valve-open") and msg.alt == ("--alt" in argv)
    if cls is m.SetBase:
        assert (msg.channel, msg.count) == (5, 1000)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["encode", "set-base", "-a", "7", "--channel", "97"], "first channel 97 is outside 1..96"),
        (["encode", "read"], "--address is required"),
        (["encode", "read", "-a", "x" * 20], "is not an address"),
        (["encode", "bulk-read", "-a", "1", "--count", "49"], "outside 1..48"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_encode_errors_exit_2(capsys, argv, message):
    status, _, err = run(capsys, *argv)
    assert status == 2 and message in err


def test_the_installed_command_runs_the_same(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "st2000r.supervisor.cli", "frame", "encode", "read", "-a", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0
    assert proc.stdout.strip() == "FE FE 68 10 01 00 00 00 00 00 00 01 03 90 1F 00 2C 16"
