"""Command-line parsing shared by every ``st2000r`` subcommand.

Every room may import ``config`` and nothing of ours is below it, so the one argparse base
lives here.  Its contract, the same for every subcommand:

- a bad argument ends in **one line** on stderr, ``PROG: message (see 'PROG --help')``, and
  exit status 2 (``SystemExit(2)``) -- never argparse's usage block, never a traceback;
- ``--help`` prints the help and exits 0 (``SystemExit(0)``), as argparse does.

A ``main(argv) -> int`` therefore parses with::

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)

The typed argument parsers below reject what the rest of the program cannot use: every
number must be finite (``inf``, ``nan`` and ``1e308`` would otherwise become a timer that
never fires or an overflow far from the option that caused it) and within its range.  They
raise ``argparse.ArgumentTypeError``, which argparse turns into
``argument --for: expected seconds > 0, got 'inf'``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "ArgumentParser",
    "fail",
    "number",
    "seconds",
    "seconds_up_to",
    "positive",
    "non_negative",
    "count",
    "integer",
    "integer_in",
    "port",
    "baud",
    "host_port",
    "MAX_SECONDS",
    "MAX_NUMBER",
]

#: the longest duration an option may give: ten years (a timer further out is a mistake)
MAX_SECONDS = 10 * 365 * 86_400.0
#: the largest plain number an option may give (speed-ups, factors)
MAX_NUMBER = 1e9
BAUD_RANGE = (300, 921_600)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line and exit status 2.

    Sub-command parsers made through ``add_subparsers`` are of the same class, so their
    errors follow the same contract (``PROG`` is then e.g. ``st2000r frame encode read``).
    """

    def add_subparsers(self, **kwargs):  # type: ignore[override]
        kwargs.setdefault("parser_class", type(self))
        return super().add_subparsers(**kwargs)

    def error(self, message: str):  # type: ignore[override]
        """Print ``PROG: message (see 'PROG --help')`` on stderr; raise ``SystemExit(2)``."""
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def fail(prog: str, message: str, status: int = 2) -> int:
    """Print ``PROG: message`` on stderr; return ``status`` (for errors found after parsing)."""
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    return status


def number(text: str) -> float:
    """A finite decimal number (``inf``, ``nan`` and overflows such as ``1e999`` refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def seconds_up_to(limit: float) -> Callable[[str], float]:
    """A parser of a duration in seconds: finite, > 0 and <= ``limit``."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not (math.isfinite(value) and 0 < value <= limit):
            raise argparse.ArgumentTypeError(f"expected seconds > 0 and at most {limit:g}, got {text!r}")
        return value

    return seconds


#: a duration in seconds: finite, > 0, at most ``MAX_SECONDS``
seconds = seconds_up_to(MAX_SECONDS)


def positive(text: str) -> float:
    """A finite number > 0 and at most ``MAX_NUMBER``."""
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    if value > MAX_NUMBER:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_NUMBER:g}, got {text!r}")
    return value


def non_negative(text: str) -> float:
    """A finite number >= 0 and at most ``MAX_NUMBER``."""
    value = number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    if value > MAX_NUMBER:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_NUMBER:g}, got {text!r}")
    return value


def count(text: str) -> int:
    """A whole number >= 0 in decimal (a count of things)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def integer(text: str) -> int:
    """An integer in decimal or with a ``0x``/``0o``/``0b`` prefix; the range is the caller's."""
    try:
        return int(text, 0)
    except ValueError:  # also for more than 4300 digits
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (decimal or 0x hex)") from None


def integer_in(lo: int, hi: int) -> Callable[[str], int]:
    """A parser of an ``integer`` within ``lo..hi``."""

    def parse(text: str) -> int:
        value = integer(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {lo}..{hi}, got {text!r}")
        return value

    return parse


def port(text: str) -> int:
    """A TCP port 0..65535 (0: any free port)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text!r}")
    return int(text)


def baud(text: str) -> int:
    """A serial line speed in bit/s, 300..921600."""
    lo, hi = BAUD_RANGE
    if not (text.isascii() and text.isdigit() and len(text) <= 7 and lo <= int(text) <= hi):
        raise argparse.ArgumentTypeError(f"{text} is not a plausible line speed (expected a baud rate {lo}..{hi})")
    return int(text)


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` with a port 1..65535; ``[::1]:80`` gives ``("::1", 80)``."""
    host, sep, port_text = text.rpartition(":")
    if not (sep and host and port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
            and 0 < int(port_text) <= 65535):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port 1..65535, got {text!r}")
    return host.strip("[]"), int(port_text)


def load_topology(path: str) -> Any:
    """The topology in ``path``, or None after printing every issue on stderr, one a line,
    as ``st2000r config check`` prints them (the caller exits 2)."""
    from st2000r.config.errors import ConfigError
    from st2000r.config.loader import load

    try:
        return load(path)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        return None
