"""``st2000r simulate-ctl``: drive a running simulator through its control interface.

::

    st2000r simulate-ctl [--url URL] truth
    st2000r simulate-ctl [--url URL] stats
    st2000r simulate-ctl [--url URL] endpoints
    st2000r simulate-ctl [--url URL] fault ACTION key=value ...
    st2000r simulate-ctl [--url URL] ring [LINK]

``fault`` builds the action document ``{"action": ACTION, key: value, ...}``: a value is
read as JSON when it parses (``3``, ``true``, ``0.01``, ``["tamper"]``), else as text;
``flags`` is always a list (``flags=tamper,open``; ``flags=`` clears).  The answer is
printed as JSON.  The URL defaults to ``$ST2000R_SIM_URL`` or http://127.0.0.1:7188.
Exit status: 0 success; 2 with the simulator's one-line reason (or why it cannot be reached).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from st2000r.config.cliargs import ArgumentParser

__all__ = ["main", "action_doc", "request", "CtlError"]

PROG = "st2000r simulate-ctl"
DEFAULT_URL = "http://127.0.0.1:7188"
TIMEOUT_S = 10.0
LIST_KEYS = frozenset({"flags"})


class CtlError(Exception):
    """A request that failed; the message is the one line to print."""


def _value(key: str, text: str):
    if key in LIST_KEYS:
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise CtlError(f"{key}={text}: not a JSON list") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def action_doc(action: str, pairs: list[str]) -> dict:
    """The fault document for ``action`` and ``key=value`` strings; CtlError for a pair
    without ``=`` or a key given twice."""
    doc: dict = {"action": action}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise CtlError(f"expected key=value, got {pair!r}")
        if key in doc:
            raise CtlError(f"key {key!r} given twice")
        doc[key] = _value(key, text)
    return doc


def request(url: str, method: str, path: str, body: dict | None = None) -> dict:
    """One JSON request; the decoded answer.  CtlError with the simulator's reason."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    try:
        req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
    except ValueError as exc:
        raise CtlError(f"--url {url!r}: {exc} (expected http://HOST:PORT)") from None
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read().decode("utf-8")).get("error", exc.reason)
        except (ValueError, AttributeError):
            reason = exc.reason
        raise CtlError(f"{method} {path}: {exc.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CtlError(f"cannot reach the simulator at {url}: {reason} (is 'st2000r simulate' running? --url?)") from None
    except ValueError as exc:
        raise CtlError(f"{url} did not answer JSON: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Control a running ST2000R simulator.")
    p.add_argument("--url", default=os.environ.get("ST2000R_SIM_URL", DEFAULT_URL),
                   help=f"control interface URL (default $ST2000R_SIM_URL or {DEFAULT_URL})")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("truth", help="ground truth of every device (JSON)")
    sub.add_parser("stats", help="bus and endpoint counters")
    sub.add_parser("endpoints", help="where the supervisor connects")
    fault = sub.add_parser("fault", help="apply a fault now: ACTION key=value ...")
    fault.add_argument("action", help="alarm | valve_jam | cdt_power | repeater | no_answer | late | "
                       "bit_errors | drop_bytes | link_drop")
    fault.add_argument("pairs", nargs="*", metavar="key=value")
    ring = sub.add_parser("ring", help="RING on a GSM link's modem (incoming call)")
    ring.add_argument("link", nargs="?")
    return p


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(args_in)
    except SystemExit as exc:  # --help exits 0; a bad argument exits 2 after one line on stderr
        return int(exc.code or 0)
    try:
        if args.command == "fault":
            answer = request(args.url, "POST", "/fault", action_doc(args.action, args.pairs))
        elif args.command == "ring":
            answer = request(args.url, "POST", "/ring", {"link": args.link} if args.link else {})
        else:
            answer = request(args.url, "GET", "/" + args.command)
    except CtlError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        json.dump(answer, sys.stdout, indent=1, ensure_ascii=False)
        print(flush=True)
    except BrokenPipeError:  # e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
