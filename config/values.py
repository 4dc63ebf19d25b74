"""Limits of the field, and the value checks and parsers the configuration schema uses.

Everything here is a pure function of one TOML value: a check returns a reason string for
a bad value (None when good), a parser returns ``(result, None)`` or ``(None, reason)``.
Nothing raises for any str or int input, so the loader can collect every problem of a
file in one pass.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import math
import re
import string
from collections.abc import Callable
from typing import Any

# --------------------------------------------------------------------------- limits

MAX_CDTS_PER_LINK = 256
MAX_CDTS_PER_REPEATER = 32
MAX_MODULES_PER_CDT = 32
MAX_CHANNELS_PER_MODULE = 3
MAX_REPEATER_LEVELS = 2
CDT_ADDRESS_MAX = 99_999_999
SERIAL_DIGITS = 14
BAUD_RATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
PULSE_CONSTANT_MAX = 65_535  # a CDT reports it in 16 bits (ChannelInfoReply)
PLAN_EVERY_RANGE = (10, 7 * 86_400)            # a plan period: 10 s .. 7 days
STALE_AFTER_RANGE = (60, 30 * 86_400)          # supervisor.stale_after: 1 min .. 30 days
COMMAND_TIMEOUT_RANGE = (5, 3600)              # supervisor.command_timeout: 5 s .. 1 h
REREAD_AFTER_OUTAGE_RANGE = (60, 30 * 86_400)  # supervisor.full_read_after_outage: 1 min .. 30 days
MAX_CLOSES_PER_MINUTE = 1000
MAX_RETRIES = 10
GAP_MS_MAX = 10_000              # link.gap_ms: 0 .. 10 s
MAX_METERS = 1_000_000          # meters per file, counted before any is built
MAX_CONFIG_BYTES = 8 * 1024 * 1024  # size of a configuration file read
MAX_ISSUES = 100                # issues kept per file; the rest are only counted

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_PHONE_RE = re.compile(r"\+?[0-9]{1,20}")
_SPAN_RE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")
_DIGIT_RUN_RE = re.compile(r"[0-9]+")
_DURATION_RE = re.compile(r"(?:([0-9]{1,7})d)?(?:([0-9]{1,7})h)?(?:([0-9]{1,7})m)?(?:([0-9]{1,9})s)?")
_TIME_RE = re.compile(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?")
_ENDPOINT_RE = re.compile(r"([a-z][a-z0-9]*):(\S+)")

_TYPE_NAMES = {
    str: "string",
    int: "integer",
    float: "float",
    bool: "boolean",
    list: "array",
    dict: "table",
    _dt.datetime: "datetime",
    _dt.date: "date",
    _dt.time: "time",
}


def type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def show(value: Any) -> str:
    """A short rendering of a TOML value for messages."""
    if isinstance(value, (dict, list)):
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(value)
    return " " + (text if len(text) <= 40 else text[:37] + "...")




def in_range(lo: int, hi: int | None = None) -> Callable[[Any], str | None]:
    def check(value: int) -> str | None:
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            return f"value {value} out of range {bound}"
        return None

    return check


def one_of(*choices: Any) -> Callable[[Any], str | None]:
    shown = ", ".join(repr(c) if isinstance(c, str) else str(c) for c in choices)

    def check(value: Any) -> str | None:
        if value not in choices:
            return f"value{show(value)} is not one of {shown}"
        return None

    return check


def check_name(value: str) -> str | None:
    if not _NAME_RE.fullmatch(value):
        return f"invalid name{show(value)}: use letters, digits, '_', '.', '-' only"
    return None


def check_text(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if not value.isprintable():
        return f"value{show(value)} must contain printable characters only (no tabs, newlines, controls)"
    return None


def check_token(value: str) -> str | None:
    """Non-empty, no whitespace or control characters (device paths, host names, ids)."""
    if not value:
        return "must not be empty"
    if any(c.isspace() or not c.isprintable() for c in value):
        return f"value{show(value)} must not contain whitespace or control characters"
    if len(value) > 255:
        return "longer than 255 characters"
    return None


def check_gap(value: float) -> str | None:
    """``gap_ms``: a finite number of milliseconds, 0 allowed (every device re-arms at once)."""
    if not math.isfinite(value) or value < 0 or value > GAP_MS_MAX:
        return f"value {value} out of range 0..{GAP_MS_MAX} ms (a finite number of milliseconds)"
    return None


#: a DTU secret: printable ASCII without spaces (it travels in a registration packet in
#: password mode), this many characters
SECRET_LEN = (8, 128)
#: challenge mode: the secret is never sent, but an eavesdropper who saw one challenge and
#: its answer can try guesses offline -- at least this long
CHALLENGE_SECRET_MIN = 16
#: networks per ``allow_from`` list
MAX_ALLOW_FROM = 256


def check_secret(value: str) -> str | None:
    """A DTU secret (never echoed in the reason: it may be a real one with a typo)."""
    lo, hi = SECRET_LEN
    if not (value.isascii() and value.isprintable()) or " " in value:
        return "a secret is printable ASCII without spaces (DTUs send it in a text registration)"
    if not lo <= len(value) <= hi:
        return f"a secret is {lo}..{hi} characters long, got {len(value)}"
    return None


def parse_network(value: str) -> tuple[str | None, str | None]:
    """``(normalised network, None)`` for an IPv4/IPv6 address or network in CIDR notation
    (``"10.0.0.0/8"``, ``"192.0.2.7"``), else ``(None, reason)``; host bits must be zero."""
    try:
        return str(ipaddress.ip_network(value, strict=True)), None
    except ValueError as exc:
        return None, f"not a network{show(value)}: {exc}; write an address or a network like \"10.0.0.0/8\""


def check_phone(value: str) -> str | None:
    if not _PHONE_RE.fullmatch(value):
        return f"value{show(value)} is not a phone number: digits only, optional leading '+', at most 20 digits"
    return None


def check_serial(value: str) -> str | None:
    if not (0 < len(value) <= SERIAL_DIGITS and value.isascii() and value.isdigit()):
        return f"value{show(value)} is not a meter serial: 1..{SERIAL_DIGITS} decimal digits expected"
    return None


def check_range_value(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        _, reason = parse_range(value, lo, hi)
        return reason

    return check


CDT_NAME_FIELDS = ("site_no", "link_no", "cdt")
METER_FIELDS = ("site_no", "link_no", "cdt", "module", "channel")


def check_format(fields: tuple[str, ...]) -> Callable[[Any], str | None]:
    allowed = ", ".join("{" + f + "}" for f in fields)

    def check(value: str) -> str | None:
        if not value:
            return "format must not be empty"
        if not value.isprintable():
            return f"format{show(value)} must contain printable characters only"
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            return f"malformed format{show(value)}: {exc}"
        for _, field, spec, conversion in parsed:
            if field is None:
                continue
            if field not in fields:
                shown = "{" + field + "}" if field else "{}"
                return f"unknown placeholder {shown} in format{show(value)} (allowed: {allowed})"
            if conversion is not None:
                return f"conversion !{conversion} not allowed in format{show(value)}"
            too_wide = any(len(run) > 4 or int(run) > 99 for run in _DIGIT_RUN_RE.findall(spec))
            if spec and ("{" in spec or too_wide or spec.endswith("c")):
                return (f"format spec {spec!r} not allowed in format{show(value)} "
                        "(no nested fields, no 'c' type, widths up to 99)")
        try:
            value.format_map(dict.fromkeys(fields, 1))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            return f"malformed format{show(value)}: {exc}"
        return None

    return check


# --------------------------------------------------------------------------- durations, times, endpoints


def parse_duration(value: Any) -> tuple[int | None, str | None]:
    """Parse a duration into whole seconds: an integer (seconds) or a string of
    ``<n>d``, ``<n>h``, ``<n>m``, ``<n>s`` parts in that order, e.g. ``"5m"``, ``"300s"``,
    ``"1h30m"``.  Returns ``(seconds, None)`` or ``(None, reason)``; never raises."""
    if type(value) is int:
        return value, None
    text = str(value)
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None:
        return None, (f"malformed duration{show(text)}: write a number of seconds or parts like "
                      "\"90s\", \"5m\", \"1h30m\", \"2d\" (units d, h, m, s, in that order)")
    d, h, m, sec = (int(g) if g else 0 for g in match.groups())
    return ((d * 24 + h) * 60 + m) * 60 + sec, None


def check_duration(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        seconds, reason = parse_duration(value)
        if reason is not None:
            return reason
        if seconds < lo or seconds > hi:
            return f"duration{show(value)} ({seconds} s) out of range {lo}..{hi} s"
        return None

    return check


def parse_time(value: Any) -> tuple[_dt.time | None, str | None]:
    """Parse a wall-clock time: ``"HH:MM"`` / ``"HH:MM:SS"`` (24 h) or a TOML local time.
    Returns ``(time, None)`` or ``(None, reason)``; never raises."""
    if type(value) is _dt.time:
        if value.tzinfo is not None:
            return None, f"time {value} must be a local time, without a UTC offset"
        return value.replace(microsecond=0), None
    if type(value) is not str:
        return None, f"wrong type: expected string \"HH:MM\", got {type_name(value)}{show(value)}"
    match = _TIME_RE.fullmatch(value)
    if match is None:
        return None, f"malformed time{show(value)}: write \"HH:MM\" or \"HH:MM:SS\", e.g. \"02:00\""
    h, m, sec = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
    if h > 23 or m > 59 or sec > 59:
        return None, f"invalid time{show(value)}: hours 0..23, minutes and seconds 0..59"
    return _dt.time(h, m, sec), None


def split_endpoint(value: str) -> tuple[str, list[str], dict[str, str]]:
    """A Twisted endpoint string as Twisted reads it: ``(type, positional args, keyword
    args)``.  ``:`` separates arguments, the first ``=`` of an argument makes it a keyword
    argument, ``\\`` escapes the next character (``tcp6:9000:interface=\\:\\:1``)."""
    parts: list[list[str]] = [[""]]
    chars = iter(value)
    for c in chars:
        if c == "\\":
            parts[-1][-1] += next(chars, "")
        elif c == ":":
            parts.append([""])
        elif c == "=" and len(parts[-1]) == 1:
            parts[-1].append("")
        else:
            parts[-1][-1] += c
    kind = parts[0][0] if len(parts[0]) == 1 else "=".join(parts[0])
    args = [p[0] for p in parts[1:] if len(p) == 1]
    kwargs = {p[0]: p[1] for p in parts[1:] if len(p) == 2}
    return kind, args, kwargs


#: endpoint types whose listening interface ``listen_interface`` knows: type -> index of
#: ``interface`` among Twisted's positional arguments
_INTERFACE_ARG = {"tcp": 1, "tcp6": 1, "ssl": 4}
#: the interface an endpoint of these types binds when the configuration names none
DEFAULT_INTERFACE = {"tcp": "127.0.0.1", "tcp6": "::1", "ssl": "127.0.0.1"}


def listen_interface(value: str) -> str | None:
    """The interface a TCP (``tcp``, ``tcp6``, ``ssl``) server endpoint string names, by
    keyword or position; ``""`` when it names none; None for another endpoint type."""
    kind, args, kwargs = split_endpoint(value)
    index = _INTERFACE_ARG.get(kind)
    if index is None:
        return None
    if "interface" in kwargs:
        return kwargs["interface"]
    return args[index] if len(args) > index else ""


def with_default_interface(value: str) -> str:
    """``value`` with the loopback interface added when it is a TCP server endpoint string
    that names no interface (``"tcp:9000"`` -> ``"tcp:9000:interface=127.0.0.1"``,
    ``tcp6`` -> ``::1``): nothing listens on every interface unless the configuration says
    ``interface=0.0.0.0`` (or ``::``).  Other strings are returned unchanged."""
    kind = split_endpoint(value)[0]
    if listen_interface(value) != "":
        return value
    return value + ":interface=" + DEFAULT_INTERFACE[kind].replace(":", "\\:")


def check_endpoint(value: str) -> str | None:
    """A Twisted server endpoint string, checked for shape only (config imports no Twisted);
    for ``tcp``/``tcp6``/``ssl`` also the port and the interface (an IP address of the
    endpoint's family; empty is refused -- write ``0.0.0.0`` or ``::`` for every interface)."""
    match = _ENDPOINT_RE.fullmatch(value)
    if match is None:
        return (f"value{show(value)} is not a server endpoint string: write TYPE:ARGS without spaces, "
                "e.g. \"tcp:9000\" or \"tcp:port=9000:interface=0.0.0.0\"")
    kind, args, kwargs = split_endpoint(value)
    if kind in _INTERFACE_ARG:
        port = kwargs.get("port", args[0] if args else "")
        if not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
            return f"value{show(value)}: port {port!r} is not a TCP port 0..65535"
        interface = listen_interface(value)
        if interface is None or ("interface" in kwargs and interface == ""):
            return (f"value{show(value)}: empty interface: name an IP address, e.g. interface=127.0.0.1, "
                    "or interface=0.0.0.0 to listen on every interface")
        if interface:
            family = ipaddress.IPv6Address if kind == "tcp6" else ipaddress.IPv4Address
            try:
                family(interface)
            except ValueError:
                version = "IPv6" if kind == "tcp6" else "IPv4"
                return f"value{show(value)}: interface {interface!r} is not an {version} address"
    return None


def check_hash(value: str) -> str | None:
    if not value.startswith("$argon2") or any(c.isspace() for c in value) or not value.isprintable():
        return "not an argon2 hash: expected a string starting with '$argon2' (e.g. from argon2-cffi), no spaces"
    return None

# --------------------------------------------------------------------------- paths and issues


def display(text: str) -> str:
    """``text`` with quotes, backslashes and non-printable characters escaped TOML-style."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
    return "".join(out)


def key_path(path: str, name: str) -> str:
    """``path.name``, the name quoted (and escaped) unless it is a bare TOML key."""
    if not _BARE_KEY_RE.fullmatch(name):
        name = '"' + display(name) + '"'
    return f"{path}.{name}" if path else name

# --------------------------------------------------------------------------- ranges


def parse_range(value: Any, lo: int, hi: int) -> tuple[list[tuple[int, int]] | None, str | None]:
    """Parse a range value into ascending, disjoint inclusive spans within ``lo..hi``.

    ``value``: an integer (one number) or a string of comma-separated numbers and ``N-M``
    spans, ascending and not overlapping, e.g. ``"1-6,8,10-128"``.  Returns
    ``(spans, None)`` or ``(None, reason)``; never raises for str or int input.
    """
    if type(value) is int:
        if value < lo or value > hi:
            return None, f"value {value} out of range {lo}..{hi}"
        return [(value, value)], None
    text = str(value)
    example = '"1-6,8,10-128"'
    spans: list[tuple[int, int]] = []
    if not text.strip():
        return None, (f"malformed range {text!r}: empty "
                      f"(expected numbers and N-M spans separated by commas, e.g. {example})")
    for item in text.split(","):
        match = _SPAN_RE.fullmatch(item)
        if match is None:
            return None, (
                f"malformed range {text!r}: {item.strip()!r} is not a number or N-M span "
                f"(expected numbers and N-M spans separated by commas, e.g. {example})"
            )
        first, last = match.group(1), match.group(2) or match.group(1)
        # digit strings longer than 12 are out of every range here; never int() them
        if len(first) > 12 or len(last) > 12:
            return None, f"range {text!r} out of range {lo}..{hi}"
        a, b = int(first), int(last)
        if a > b:
            return None, f"malformed range {text!r}: span {a}-{b} is descending"
        if spans and a <= spans[-1][1]:
            return None, (f"malformed range {text!r}: {item.strip()!r} overlaps or precedes the previous item "
                          "(write items ascending, without overlaps)")
        if a < lo or b > hi:
            return None, f"range {text!r} out of range {lo}..{hi}"
        spans.append((a, b))
    return spans, None


def span_count(spans: list[tuple[int, int]]) -> int:
    return sum(b - a + 1 for a, b in spans)


def span_values(spans: list[tuple[int, int]]) -> list[int]:
    return [n for a, b in spans for n in range(a, b + 1)]


def compact(numbers: list[int]) -> str:
    """Render sorted numbers as a range string: [1,2,3,7] -> "1-3,7"."""
    parts: list[str] = []
    start = prev = None
    for n in sorted(numbers):
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = n
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


