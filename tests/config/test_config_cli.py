"""``st2000r config check``: exit status, summary, one line per issue."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from st2000r.config import example_path
from st2000r.config.cli import main


def test_check_prints_the_summary(capsys):
    assert main(["check", str(example_path("community.toml"))]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"{example_path('community.toml')}: OK"
    assert "  links      1 (serial 1)" in lines
    assert "  repeaters  4" in lines
    assert "  CDTs       128" in lines
    assert "  modules    4096" in lines
    assert "  meters     12288 (water 4096, electricity 4096, gas 4096)" in lines
    assert lines[-1] == ("  site 'Lakeside Gardens': 1 link (serial 1), 4 repeaters, 128 CDTs, 4096 modules, "
                         "12288 meters (water 4096, electricity 4096, gas 4096)")


def test_check_prints_one_line_per_site(capsys):
    assert main(["check", str(example_path("city.toml"))]) == 0
    out = capsys.readouterr().out
    assert "  links      6 (serial 1, tcp 1, gprs 3, gsm 1)" in out.splitlines()
    assert sum(line.startswith("  site ") for line in out.splitlines()) == 3


def test_check_json(capsys):
    assert main(["check", str(example_path("small.toml")), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is True
    assert document["summary"]["meters_by_kind"] == {"water": 4, "electricity": 2, "gas": 1}
    assert document["summary"]["links_by_kind"] == {"serial": 1, "tcp": 0, "gprs": 0, "gsm": 0}
    assert document["sites"][0]["name"] == "Garden Court" and document["sites"][0]["meters"] == 7


def test_check_bad_file_prints_every_issue_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('colour = "blue"\n[[sites]]\nname = ""\naddress = "x"\n', encoding="utf-8")
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}: colour: unknown key 'colour' (allowed: templates, sites, plans, interlocks, operators, supervisor, modbus, historian, api)",
        f"{path}: sites[0].name: must not be empty",
    ]
    assert main(["check", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert document["ok"] is False
    assert [e["path"] for e in document["errors"]] == ["colour", "sites[0].name"]
    assert len(err.splitlines()) == 2


def test_check_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert main(["check", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{missing}: cannot read file: No such file or directory\n")


def test_bad_arguments_exit_2(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["check"]) == 2
    assert main(["--help"]) == 0
    capsys.readouterr()


def test_through_the_st2000r_dispatcher():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run([sys.executable, "-m", "st2000r.supervisor.cli", "config", "check",
                         str(example_path("community.toml"))], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "  meters     12288 (water 4096, electricity 4096, gas 4096)" in ok.stdout.splitlines()
    bad = subprocess.run([sys.executable, "-m", "st2000r.supervisor.cli", "config", "check", "/nonexistent.toml"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == "/nonexistent.toml: cannot read file: No such file or directory\n"


def test_simulate_bad_start_and_bind_are_one_line_errors_naming_the_input(capsys):
    """``st2000r simulate`` options parsed by the shared ``config.cliargs`` base: a start the
    world's calendar cannot run from and a --bind that is not an IP address end in one line
    naming the input, exit 2, no traceback (and --bind is not blamed on --control)."""
    from st2000r.simulation.cli import main as simulate

    config = str(example_path("small.toml"))
    for args, words in (
        (["--start", "9999-12-31T23:59:59"], ("--start", "9999-12-31T23:59:59")),
        (["--start", "0001-01-01T00:00"], ("--start", "0001-01-01T00:00")),
        (["--bind", "garbage"], ("--bind", "'garbage'")),
    ):
        assert simulate([config, "--control", "0", *args]) == 2
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), err
        assert "Traceback" not in err and "--control" not in err
