"""``st2000r operators hash``: the ``password_hash = "$argon2id$..."`` line of an operator.

On a terminal the password is asked twice without echo; otherwise one line is read from
standard input (so ``echo "$PW" | st2000r operators hash`` works in a provisioning script).
Exit status 0, or 2 with a one-line reason (empty password, the two entries differ).
"""

from __future__ import annotations

import argparse
import getpass
import sys

__all__ = ["main"]

PROG = "st2000r operators"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Operators of [[operators]].")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("hash", help="read a password and print its password_hash line for [[operators]]",
                   description="Read a password (without echo on a terminal, else one line from standard input) "
                               "and print the line to paste into the operator's [[operators]] table.")
    return parser


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first and getpass.getpass("again: ") != first:
            raise ValueError("the two passwords differ")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def main(argv: list[str] | None = None) -> int:
    try:
        _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and 2
    try:
        password = _read_password()
    except (ValueError, EOFError, KeyboardInterrupt) as exc:
        print(f"{PROG}: {exc or 'no password given'}", file=sys.stderr)
        return 2
    password = password.rstrip("\r")
    if not password:
        print(f"{PROG}: empty password", file=sys.stderr)
        return 2
    from st2000r.supervisor.api.sessions import hash_password

    print(f'password_hash = "{hash_password(password)}"')
    return 0
