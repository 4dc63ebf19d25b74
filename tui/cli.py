"""``st2000r console [--url URL] [--ca FILE] [--lang en|zh]``: the operators' console in this terminal.

Lands on the login screen of the supervisor at URL (default ``$ST2000R_URL`` or
``http://127.0.0.1:8080``).  Exit status 0 on quit, 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import os
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8080"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="st2000r console", description="the operators' console in this terminal, a client of the supervisor's HTTP API")
    parser.add_argument("--url", default=os.environ.get("ST2000R_URL", DEFAULT_URL),
                        help="the supervisor's API, e.g. http://127.0.0.1:8080 (default: $ST2000R_URL or %(default)s)")
    parser.add_argument("--ca", metavar="FILE", default=None,
                        help="for https: the CA certificate(s) that signed the supervisor's certificate "
                             "(default: the system's trusted CAs)")
    parser.add_argument("--lang", choices=("en", "zh"), default=None,
                        help="language at start (default: from LC_ALL / LC_MESSAGES / LANG; F9 switches)")
    return parser.parse_args(argv)


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be the supervisor's address, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"--url {url!r}: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--url {url!r}: expected http://HOST:PORT or https://HOST:PORT"
    return None


def check_ca(path: str) -> str | None:
    """Why ``path`` cannot be used as the CA file, or None."""
    import ssl

    try:
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        return f"--ca {path!r}: no such file"
    except (ssl.SSLError, OSError) as exc:
        return f"--ca {path!r}: not a PEM certificate file ({exc})"
    return None


def main(argv: list[str]) -> int:
    args = parse(argv)
    problem = check_url(args.url)
    if problem is None and args.ca is not None:
        problem = check_ca(args.ca)
    if problem:
        import sys

        print(f"st2000r console: {problem}", file=sys.stderr)
        return 2
    from st2000r.tui.app import ConsoleApp

    ConsoleApp(args.url, language=args.lang, ca_file=args.ca).run()
    return 0
