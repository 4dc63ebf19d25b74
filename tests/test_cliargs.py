"""The shared command-line base: one-line errors with exit 2, and number types that refuse
non-finite and out-of-range values -- in every subcommand that uses them."""

from __future__ import annotations

import argparse

import pytest

from st2000r.config import cliargs
from st2000r.config.cliargs import ArgumentParser


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="st2000r x")
    p.add_argument("--for", dest="duration", type=cliargs.seconds)
    sub = p.add_subparsers(dest="command")
    sub.add_parser("go").add_argument("--port", type=cliargs.port)
    return p


def test_an_error_is_one_line_naming_the_program_and_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["--for", "inf"])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("st2000r x: argument --for: expected seconds > 0 and at most 3.1536e+08, got 'inf' "
                   "(see 'st2000r x --help')\n")


def test_subcommand_parsers_share_the_contract(capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["go", "--port", "70000"])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("st2000r x go: argument --port: expected a port 0..65535, got '70000' "
                                       "(see 'st2000r x go --help')\n")


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["--help"])
    assert info.value.code == 0 and "usage: st2000r x" in capsys.readouterr().out


@pytest.mark.parametrize("convert", [cliargs.seconds, cliargs.positive, cliargs.non_negative, cliargs.number])
@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e999", "Infinity", "x", ""])
def test_no_number_type_accepts_a_non_finite_value(convert, text):
    with pytest.raises(argparse.ArgumentTypeError):
        convert(text)


@pytest.mark.parametrize(("convert", "good", "bad"), [
    (cliargs.seconds, ["0.5", "3600", "315360000"], ["0", "-1", "1e308", "315360001"]),
    (cliargs.seconds_up_to(3600), ["3600"], ["3600.5"]),
    (cliargs.positive, ["1e-9", "1e9"], ["0", "-0.0", "1e308", "1000000001"]),
    (cliargs.non_negative, ["0", "1e9"], ["-1e-9", "1e308"]),
    (cliargs.count, ["0", "8"], ["-1", "1.5", "x", "1" * 19]),
    (cliargs.integer, ["0x10", "16", "-3"], ["0x", "ten", "1" * 5000]),
    (cliargs.integer_in(0, 4), ["0", "4"], ["5", "-1"]),
    (cliargs.port, ["0", "65535"], ["65536", "-1", "http", "1" * 6]),
    (cliargs.baud, ["300", "2400", "921600"], ["299", "921601", "9600.0"]),
    (cliargs.host_port, ["h:1", "[::1]:65535"], ["h", ":80", "h:0", "h:65536", "h:x"]),
])
def test_ranges_at_their_boundaries(convert, good, bad):
    for text in good:
        convert(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            convert(text)


def test_host_port_strips_brackets():
    assert cliargs.host_port("[::1]:4001") == ("::1", 4001)


@pytest.mark.parametrize("module", [
    "st2000r.config.cli",
    "st2000r.drivers.st2000r.cli",
    "st2000r.simulation.cli",
    "st2000r.simulation.ctl",
    "st2000r.supervisor.run",
    "st2000r.supervisor.scan",
])
def test_every_subcommand_uses_the_shared_base(module):
    import importlib

    mod = importlib.import_module(module)
    build = getattr(mod, "build_parser", None) or getattr(mod, "_parser")
    assert isinstance(build(), ArgumentParser)


@pytest.mark.parametrize(("main", "argv", "line"), [
    ("st2000r.simulation.cli", ["small.toml", "--for", "inf"], "st2000r simulate: argument --for: expected seconds"),
    ("st2000r.simulation.cli", ["small.toml", "--speedup", "inf"], "st2000r simulate: argument --speedup: "
                                                                    "expected a finite number, got 'inf'"),
    ("st2000r.simulation.cli", ["small.toml", "--speedup", "1e308"], "st2000r simulate: argument --speedup: "
                                                                      "must be at most 1e+09, got '1e308'"),
    ("st2000r.supervisor.run", ["small.toml", "--duration", "1e308"], "st2000r run: argument --duration: "),
    ("st2000r.supervisor.scan", ["small.toml", "--link", "x", "--sample", "-1"], "st2000r scan: argument --sample"),
    ("st2000r.simulation.ctl", ["explode"], "st2000r simulate-ctl: argument command: invalid choice"),
    ("st2000r.config.cli", ["check"], "st2000r config check: the following arguments are required: FILE"),
    ("st2000r.drivers.st2000r.cli", ["encode", "read", "-a", "1", "--preamble", "99999999999"],
     "st2000r frame encode read: argument --preamble: expected 0..4"),
])
def test_bad_arguments_end_in_one_line_and_status_2(capsys, main, argv, line):
    import importlib

    assert importlib.import_module(main).main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(line) and err.count("\n") == 1, err
