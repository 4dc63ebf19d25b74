"""Load a TOML topology file, validate it as a whole, expand it into the typed model.

``load(path)`` and ``loads(text)`` return a ``st2000r.config.model.Topology`` or raise one
``st2000r.config.errors.ConfigError`` listing every problem found (unknown keys, wrong
types, values out of range, duplicates, limits, dangling references, malformed ranges and
formats, TOML syntax).  They raise nothing else for any input text.  Nothing is repaired.

How it is organised:

- every table of the file has a *schema table* (``dict[str, Key]``) below: key name ->
  accepted TOML types, default (or required), value check, one-line doc.  ``_table``
  checks a TOML table against it: unknown keys, missing keys, types, values.
- top-level sections are listed in ``SECTIONS`` (name -> schema-checking function), run in
  that order.  To add a section (``[supervisor]``, ``[modbus]`` ...): write its schema
  table, a function ``(ctx, value, path)`` that checks it and stores its result on the
  ``_Context``, and add both to ``SECTIONS``.  Any other top-level key is an error.
- ranges (``"1-6,8-128"``) and templates are expanded into explicit CDTs, modules and
  channels; every physical position (CDT address, module, channel) and every meter serial
  must be defined exactly once per link -- a second definition is an error, never an
  override.

Expansion cost is one ``str.format_map`` and three dataclass constructions per meter; a
12,288-meter link loads in a few tens of milliseconds (``bench/bench_config_load.py``).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import string
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from st2000r.config.errors import ConfigError, ConfigIssue
from st2000r.config.model import (
    Cdt,
    Channel,
    GprsEndpoint,
    GsmEndpoint,
    LineSettings,
    Link,
    Meter,
    MeterKind,
    Module,
    Repeater,
    SerialEndpoint,
    Site,
    TcpEndpoint,
    DEFAULT_PLANS,
    PLAN_KINDS,
    ROLES,
    Interlocks,
    Operator,
    ReadingPlan,
    SupervisorSettings,
    Topology,
)

__all__ = ["load", "loads", "parse_range", "parse_duration", "parse_time", "SECTIONS", "SCHEMAS", "Key", "REQUIRED"]

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
MAX_CLOSES_PER_MINUTE = 1000
MAX_RETRIES = 10

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_PHONE_RE = re.compile(r"\+?[0-9]{1,20}")
_SPAN_RE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")
_DIGIT_RUN_RE = re.compile(r"[0-9]+")
_DURATION_RE = re.compile(r"(?:([0-9]{1,7})d)?(?:([0-9]{1,7})h)?(?:([0-9]{1,7})m)?(?:([0-9]{1,9})s)?")
_TIME_RE = re.compile(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?")
_ENDPOINT_RE = re.compile(r"([a-z][a-z0-9]*):(\S+)")

# --------------------------------------------------------------------------- schema machinery

REQUIRED: Any = object()
"""Sentinel default of a key that must be present."""

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


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
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


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a schema table.

    ``types``: accepted TOML type names (``"string"``, ``"integer"``, ``"array"``,
    ``"table"`` ...).  ``default``: value when absent, or ``REQUIRED``.  ``check``: returns
    a reason string when the (well-typed) value is bad, else None.  ``doc``: one line for
    the reference.  ``hint``: appended to a wrong-type message.
    """

    types: tuple[str, ...]
    default: Any = REQUIRED
    check: Callable[[Any], str | None] | None = None
    doc: str = ""
    hint: str = ""


Schema = dict[str, Key]


def _in_range(lo: int, hi: int | None = None) -> Callable[[Any], str | None]:
    def check(value: int) -> str | None:
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            return f"value {value} out of range {bound}"
        return None

    return check


def _one_of(*choices: Any) -> Callable[[Any], str | None]:
    shown = ", ".join(repr(c) if isinstance(c, str) else str(c) for c in choices)

    def check(value: Any) -> str | None:
        if value not in choices:
            return f"value{_show(value)} is not one of {shown}"
        return None

    return check


def _check_name(value: str) -> str | None:
    if not _NAME_RE.fullmatch(value):
        return f"invalid name{_show(value)}: use letters, digits, '_', '.', '-' only"
    return None


def _check_text(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if not value.isprintable():
        return f"value{_show(value)} must contain printable characters only (no tabs, newlines, controls)"
    return None


def _check_token(value: str) -> str | None:
    """Non-empty, no whitespace or control characters (device paths, host names, ids)."""
    if not value:
        return "must not be empty"
    if any(c.isspace() or not c.isprintable() for c in value):
        return f"value{_show(value)} must not contain whitespace or control characters"
    if len(value) > 255:
        return "longer than 255 characters"
    return None


def _check_phone(value: str) -> str | None:
    if not _PHONE_RE.fullmatch(value):
        return f"value{_show(value)} is not a phone number: digits only, optional leading '+', at most 20 digits"
    return None


def _check_serial(value: str) -> str | None:
    if not (0 < len(value) <= SERIAL_DIGITS and value.isascii() and value.isdigit()):
        return f"value{_show(value)} is not a meter serial: 1..{SERIAL_DIGITS} decimal digits expected"
    return None


def _check_range_value(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        _, reason = parse_range(value, lo, hi)
        return reason

    return check


CDT_NAME_FIELDS = ("site_no", "link_no", "cdt")
METER_FIELDS = ("site_no", "link_no", "cdt", "module", "channel")


def _check_format(fields: tuple[str, ...]) -> Callable[[Any], str | None]:
    allowed = ", ".join("{" + f + "}" for f in fields)

    def check(value: str) -> str | None:
        if not value:
            return "format must not be empty"
        if not value.isprintable():
            return f"format{_show(value)} must contain printable characters only"
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            return f"malformed format{_show(value)}: {exc}"
        for _, field, spec, conversion in parsed:
            if field is None:
                continue
            if field not in fields:
                shown = "{" + field + "}" if field else "{}"
                return f"unknown placeholder {shown} in format{_show(value)} (allowed: {allowed})"
            if conversion is not None:
                return f"conversion !{conversion} not allowed in format{_show(value)}"
            too_wide = any(len(run) > 4 or int(run) > 99 for run in _DIGIT_RUN_RE.findall(spec))
            if spec and ("{" in spec or too_wide or spec.endswith("c")):
                return (f"format spec {spec!r} not allowed in format{_show(value)} "
                        "(no nested fields, no 'c' type, widths up to 99)")
        try:
            value.format_map(dict.fromkeys(fields, 1))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            return f"malformed format{_show(value)}: {exc}"
        return None

    return check


STR = ("string",)
INT = ("integer",)
ARRAY = ("array",)
TABLE = ("table",)
RANGE = ("string", "integer")

# --------------------------------------------------------------------------- schema tables
# One table per kind of TOML table.  docs/configuration.md documents every key listed here
# (tests/config/test_config_docs.py checks it).

TOP_SCHEMA: Schema = {
    "templates": Key(TABLE, {}, doc="module templates by name: [templates.NAME]"),
    "sites": Key(ARRAY, REQUIRED, doc="the communities: [[sites]]"),
    "plans": Key(ARRAY, None, doc="reading plans: [[plans]] (default: daily-full and status)"),
    "interlocks": Key(TABLE, {}, doc="command interlocks: [interlocks]"),
    "operators": Key(ARRAY, [], doc="people and services: [[operators]]"),
    "supervisor": Key(TABLE, {}, doc="process settings: [supervisor]"),
}

TEMPLATE_SCHEMA: Schema = {
    "description": Key(STR, None, doc="free text"),
    "channels": Key(ARRAY, REQUIRED, doc="the channels of a module built from this template"),
}

TEMPLATE_CHANNEL_SCHEMA: Schema = {
    "channel": Key(INT, REQUIRED, _in_range(1, MAX_CHANNELS_PER_MODULE), "channel number 1..3"),
    "kind": Key(STR, REQUIRED, _one_of(*(k.value for k in MeterKind)), "water | electricity | gas"),
    "pulse_constant": Key(INT, REQUIRED, _in_range(1, PULSE_CONSTANT_MAX), "base units per pulse"),
}

SITE_SCHEMA: Schema = {
    "name": Key(STR, REQUIRED, _check_text, "community name, unique in the file"),
    "address": Key(STR, REQUIRED, _check_text, "postal address"),
    "links": Key(ARRAY, [], doc="field links: [[sites.links]]"),
}

LINK_COMMON_SCHEMA: Schema = {
    "name": Key(STR, REQUIRED, _check_name, "link name, unique in the file"),
    "kind": Key(STR, REQUIRED, _one_of("serial", "tcp", "gprs", "gsm"), "serial | tcp | gprs | gsm"),
    "baud": Key(INT, 2400, _one_of(*BAUD_RATES), "bus baud rate"),
    "bytesize": Key(INT, 8, _one_of(7, 8), "data bits"),
    "parity": Key(STR, "E", _one_of("N", "E", "O"), "N | E | O"),
    "stopbits": Key(INT, 1, _one_of(1, 2), "stop bits"),
    "turnaround_ms": Key(INT, 20, _in_range(0, 2000), "device turnaround, ms"),
    "di_order": Key(STR, "901F", _one_of("901F", "1F90"), "DI byte order when sending"),
    "repeaters": Key(ARRAY, [], doc="repeaters on this link"),
    "cdt_ranges": Key(ARRAY, [], doc="CDTs generated from ranges: [[sites.links.cdt_ranges]]"),
    "cdts": Key(ARRAY, [], doc="CDTs written out: [[sites.links.cdts]]"),
}

LINK_KIND_SCHEMAS: dict[str, Schema] = {
    "serial": {
        "device": Key(STR, REQUIRED, _check_token, "serial device path"),
    },
    "tcp": {
        "host": Key(STR, REQUIRED, _check_token, "serial-device server host name or IP"),
        "port": Key(INT, REQUIRED, _in_range(1, 65535), "TCP port"),
    },
    "gprs": {
        "dtu_id": Key(STR, REQUIRED, _check_token, "identity the DTU registers with, unique in the file"),
        "registration": Key(STR, "plain", _one_of("plain", "ddp", "usr"), "registration packet format"),
        "heartbeat_s": Key(INT, 60, _in_range(1, 3600), "heartbeat interval, s"),
    },
    "gsm": {
        "modem": Key(STR, REQUIRED, _check_token, "serial device of the local modem"),
        "number": Key(STR, REQUIRED, _check_phone, "phone number to dial"),
        "modem_baud": Key(INT, 19200, _one_of(*BAUD_RATES), "modem port baud rate"),
    },
}

REPEATER_SCHEMA: Schema = {
    "name": Key(STR, REQUIRED, _check_name, "repeater name, unique per link"),
    "parent": Key(STR, None, doc="name of the first-level repeater this one hangs behind"),
    "latency_ms": Key(INT, 5, _in_range(0, 1000), "added one-way delay, ms"),
}

_METER_FORMAT = _check_format(METER_FIELDS)

CDT_RANGE_SCHEMA: Schema = {
    "addresses": Key(RANGE, REQUIRED, _check_range_value(1, CDT_ADDRESS_MAX), "CDT addresses, e.g. \"1-128\""),
    "name": Key(STR, None, _check_format(CDT_NAME_FIELDS), "CDT name format"),
    "repeater": Key(STR, None, doc="repeater every CDT of the range sits behind"),
    "modules": Key(RANGE, REQUIRED, _check_range_value(1, MAX_MODULES_PER_CDT), "module numbers, e.g. \"1-32\""),
    "template": Key(STR, REQUIRED, doc="module template name"),
    "serial": Key(STR, REQUIRED, _METER_FORMAT, "meter serial format"),
    "household": Key(STR, None, _METER_FORMAT, "household reference format"),
    "initial": Key(INT, 0, _in_range(0), "initial reading of every meter, base units"),
}

CDT_SCHEMA: Schema = {
    "address": Key(INT, REQUIRED, _in_range(1, CDT_ADDRESS_MAX), "CDT address"),
    "name": Key(STR, None, _check_text, "CDT name"),
    "repeater": Key(STR, None, doc="repeater the CDT sits behind"),
    "modules": Key(ARRAY, [], doc="modules written out: [[sites.links.cdts.modules]]"),
    "module_ranges": Key(ARRAY, [], doc="modules generated from a range and a template"),
}

MODULE_RANGE_SCHEMA: Schema = {
    "modules": Key(RANGE, REQUIRED, _check_range_value(1, MAX_MODULES_PER_CDT), "module numbers"),
    "template": Key(STR, REQUIRED, doc="module template name"),
    "serial": Key(STR, REQUIRED, _METER_FORMAT, "meter serial format"),
    "household": Key(STR, None, _METER_FORMAT, "household reference format"),
    "initial": Key(INT, 0, _in_range(0), "initial reading, base units"),
}

MODULE_SCHEMA: Schema = {
    "module": Key(INT, REQUIRED, _in_range(1, MAX_MODULES_PER_CDT), "module number 1..32"),
    "channels": Key(ARRAY, None, doc="channels written out (or use template)"),
    "template": Key(STR, None, doc="module template name (or use channels)"),
    "serial": Key(STR, None, _METER_FORMAT, "meter serial format (with template)"),
    "household": Key(STR, None, _METER_FORMAT, "household reference format (with template)"),
    "initial": Key(INT, None, _in_range(0), "initial reading, base units (with template; default 0)"),
}

CHANNEL_SCHEMA: Schema = {
    "channel": Key(INT, REQUIRED, _in_range(1, MAX_CHANNELS_PER_MODULE), "channel number 1..3"),
    "kind": Key(STR, REQUIRED, _one_of(*(k.value for k in MeterKind)), "water | electricity | gas"),
    "pulse_constant": Key(INT, REQUIRED, _in_range(1, PULSE_CONSTANT_MAX), "base units per pulse"),
    "serial": Key(STR, REQUIRED, _check_serial, "meter serial, 1..14 digits",
                  hint="write serials in quotes, e.g. serial = \"00012345\""),
    "initial": Key(INT, 0, _in_range(0), "initial reading, base units"),
    "household": Key(STR, None, _check_text, "household reference"),
}

# ---- supervisor sections: [[plans]], [interlocks], [[operators]], [supervisor]


def parse_duration(value: Any) -> tuple[int | None, str | None]:
    """Parse a duration into whole seconds: an integer (seconds) or a string of
    ``<n>d``, ``<n>h``, ``<n>m``, ``<n>s`` parts in that order, e.g. ``"5m"``, ``"300s"``,
    ``"1h30m"``.  Returns ``(seconds, None)`` or ``(None, reason)``; never raises."""
    if type(value) is int:
        return value, None
    text = str(value)
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None:
        return None, (f"malformed duration{_show(text)}: write a number of seconds or parts like "
                      "\"90s\", \"5m\", \"1h30m\", \"2d\" (units d, h, m, s, in that order)")
    d, h, m, sec = (int(g) if g else 0 for g in match.groups())
    return ((d * 24 + h) * 60 + m) * 60 + sec, None


def _check_duration(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        seconds, reason = parse_duration(value)
        if reason is not None:
            return reason
        if seconds < lo or seconds > hi:
            return f"duration{_show(value)} ({seconds} s) out of range {lo}..{hi} s"
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
        return None, f"wrong type: expected string \"HH:MM\", got {_type_name(value)}{_show(value)}"
    match = _TIME_RE.fullmatch(value)
    if match is None:
        return None, f"malformed time{_show(value)}: write \"HH:MM\" or \"HH:MM:SS\", e.g. \"02:00\""
    h, m, sec = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
    if h > 23 or m > 59 or sec > 59:
        return None, f"invalid time{_show(value)}: hours 0..23, minutes and seconds 0..59"
    return _dt.time(h, m, sec), None


def _check_endpoint(value: str) -> str | None:
    """A Twisted server endpoint string, checked for shape only (config imports no Twisted)."""
    match = _ENDPOINT_RE.fullmatch(value)
    if match is None:
        return (f"value{_show(value)} is not a server endpoint string: write TYPE:ARGS without spaces, "
                "e.g. \"tcp:9000\" or \"tcp:port=9000:interface=0.0.0.0\"")
    kind, args = match.groups()
    if kind in ("tcp", "tcp6", "ssl"):
        port = next((a.split("=", 1)[1] for a in args.split(":") if a.startswith("port=")), args.split(":")[0])
        if not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
            return f"value{_show(value)}: port {port!r} is not a TCP port 0..65535"
    return None


def _check_hash(value: str) -> str | None:
    if not value.startswith("$argon2") or any(c.isspace() for c in value) or not value.isprintable():
        return "not an argon2 hash: expected a string starting with '$argon2' (e.g. from argon2-cffi), no spaces"
    return None


PLAN_SCHEMA: Schema = {
    "name": Key(STR, REQUIRED, _check_name, "plan name, unique in the file"),
    "kind": Key(STR, REQUIRED, _one_of(*PLAN_KINDS), "full | status"),
    "at": Key(ARRAY, [], doc="daily local times, \"HH:MM\""),
    "every": Key(("string", "integer"), None, _check_duration(*PLAN_EVERY_RANGE), "period: \"5m\", \"1h\", seconds"),
    "links": Key(ARRAY, None, doc="names of the links the plan applies to (default: every link)"),
}

INTERLOCKS_SCHEMA: Schema = {
    "protected_households": Key(ARRAY, [], doc="households whose meters are never closed"),
    "max_closes_per_minute": Key(INT, 10, _in_range(0, MAX_CLOSES_PER_MINUTE), "valve closes per link per minute"),
}

OPERATOR_SCHEMA: Schema = {
    "name": Key(STR, REQUIRED, _check_name, "login name, unique in the file"),
    "role": Key(STR, REQUIRED, _one_of(*ROLES), "viewer | operator | engineer | admin"),
    "password_hash": Key(STR, None, _check_hash, "argon2 hash of the password"),
}

SUPERVISOR_SCHEMA: Schema = {
    "gprs_listen": Key(STR, None, _check_endpoint, "GPRS DTU server endpoint, e.g. \"tcp:9000\""),
    "retries": Key(INT, 2, _in_range(0, MAX_RETRIES), "bus retries per transaction"),
    "log_format": Key(STR, "text", _one_of("text", "json"), "text | json"),
    "state_dir": Key(STR, "var", _check_token, "folder for state files (audit log)"),
    "stale_after": Key(("string", "integer"), None, _check_duration(*STALE_AFTER_RANGE), "reading age that is STALE"),
    "command_timeout": Key(("string", "integer"), 60, _check_duration(*COMMAND_TIMEOUT_RANGE),
                           "valve read-back deadline"),
}

#: every schema table by the name docs/configuration.md gives it
SCHEMAS: dict[str, Schema] = {
    "top level": TOP_SCHEMA,
    "templates.NAME": TEMPLATE_SCHEMA,
    "templates.NAME.channels[]": TEMPLATE_CHANNEL_SCHEMA,
    "sites[]": SITE_SCHEMA,
    "sites.links[]": LINK_COMMON_SCHEMA,
    **{f"sites.links[] kind={kind}": schema for kind, schema in LINK_KIND_SCHEMAS.items()},
    "sites.links.repeaters[]": REPEATER_SCHEMA,
    "sites.links.cdt_ranges[]": CDT_RANGE_SCHEMA,
    "sites.links.cdts[]": CDT_SCHEMA,
    "sites.links.cdts.module_ranges[]": MODULE_RANGE_SCHEMA,
    "sites.links.cdts.modules[]": MODULE_SCHEMA,
    "sites.links.cdts.modules.channels[]": CHANNEL_SCHEMA,
    "plans[]": PLAN_SCHEMA,
    "interlocks": INTERLOCKS_SCHEMA,
    "operators[]": OPERATOR_SCHEMA,
    "supervisor": SUPERVISOR_SCHEMA,
}

# --------------------------------------------------------------------------- paths and issues


def _display(text: str) -> str:
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


def _key(path: str, name: str) -> str:
    """``path.name``, the name quoted (and escaped) unless it is a bare TOML key."""
    if not _BARE_KEY_RE.fullmatch(name):
        name = '"' + _display(name) + '"'
    return f"{path}.{name}" if path else name


class _Context:
    """State of one validation run: the issues found and what sections produced."""

    __slots__ = ("file", "issues", "templates", "sites", "link_names", "dtu_ids", "devices", "endpoints",
                 "plans", "interlocks", "operators", "settings")

    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[ConfigIssue] = []
        #: template name -> compiled channels ((number, kind, pulse_constant), ...) or None if invalid
        self.templates: dict[str, tuple[tuple[int, MeterKind, int], ...] | None] = {}
        self.sites: list[Site] = []
        self.link_names: dict[str, str] = {}
        self.dtu_ids: dict[str, str] = {}
        self.devices: dict[str, str] = {}
        self.endpoints: dict[tuple[str, int], str] = {}
        self.plans: tuple[ReadingPlan, ...] = DEFAULT_PLANS
        self.interlocks = Interlocks(frozenset(), 10)
        self.operators: tuple[Operator, ...] = ()
        self.settings = SupervisorSettings(None, 2, "text", "var")

    def error(self, path: str, reason: str) -> None:
        self.issues.append(ConfigIssue(self.file, path, reason))


def _table(ctx: _Context, value: Any, path: str, schema: Schema, what: str = "") -> dict[str, Any] | None:
    """Check a TOML table against ``schema``.

    Returns the table's values with defaults filled in; a key whose value is missing,
    mistyped or out of range is left out (the issue is recorded).  Returns None if
    ``value`` is not a table at all.
    """
    if type(value) is not dict:
        ctx.error(path, f"wrong type: expected table, got {_type_name(value)}{_show(value)}")
        return None
    for name in value:
        if name not in schema:
            allowed = ", ".join(schema)
            ctx.error(_key(path, name), f"unknown key {name!r}{what} (allowed: {allowed})")
    out: dict[str, Any] = {}
    for name, key in schema.items():
        if name not in value:
            if key.default is REQUIRED:
                ctx.error(_key(path, name), f"missing required key {name!r}{what}")
            else:
                out[name] = key.default
            continue
        item = value[name]
        tname = _type_name(item)
        if tname not in key.types:
            expected = " or ".join(key.types)
            hint = f" ({key.hint})" if key.hint else ""
            ctx.error(_key(path, name), f"wrong type: expected {expected}, got {tname}{_show(item)}{hint}")
            continue
        if key.check is not None:
            reason = key.check(item)
            if reason is not None:
                ctx.error(_key(path, name), reason)
                continue
        out[name] = item
    return out


def _items(value: list[Any], path: str) -> Iterable[tuple[int, str, Any]]:
    """Yield ``(index, path, item)`` for each element; non-tables are reported by ``_table``."""
    for i, item in enumerate(value):
        yield i, f"{path}[{i}]", item


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


def _span_count(spans: list[tuple[int, int]]) -> int:
    return sum(b - a + 1 for a, b in spans)


def _span_values(spans: list[tuple[int, int]]) -> list[int]:
    return [n for a, b in spans for n in range(a, b + 1)]


def _compact(numbers: list[int]) -> str:
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


# --------------------------------------------------------------------------- templates


def _templates_section(ctx: _Context, value: Any, path: str) -> None:
    if type(value) is not dict:
        ctx.error(path, f"wrong type: expected table, got {_type_name(value)}{_show(value)}")
        return
    for name, body in value.items():
        tpath = _key(path, name)
        reason = _check_name(name)
        if reason is not None:
            ctx.error(tpath, f"template {reason}")
        ctx.templates[name] = _template(ctx, body, tpath)


def _template(ctx: _Context, body: Any, path: str) -> tuple[tuple[int, MeterKind, int], ...] | None:
    values = _table(ctx, body, path, TEMPLATE_SCHEMA)
    if values is None or "channels" not in values:
        return None
    cpath = _key(path, "channels")
    channels = values["channels"]
    ok = True
    if not channels:
        ctx.error(cpath, "a template needs at least one channel")
        ok = False
    if len(channels) > MAX_CHANNELS_PER_MODULE:
        ctx.error(cpath, f"{len(channels)} channels exceed the limit of {MAX_CHANNELS_PER_MODULE} per module")
        ok = False
    seen: dict[int, str] = {}
    compiled = []
    for _, chpath, item in _items(channels, cpath):
        ch = _table(ctx, item, chpath, TEMPLATE_CHANNEL_SCHEMA)
        if ch is None or len(ch) != len(TEMPLATE_CHANNEL_SCHEMA):
            ok = False
            continue
        number = ch["channel"]
        if number in seen:
            ctx.error(_key(chpath, "channel"), f"duplicate channel {number} (already defined at {seen[number]})")
            ok = False
            continue
        seen[number] = _key(chpath, "channel")
        compiled.append((number, MeterKind(ch["kind"]), ch["pulse_constant"]))
    if not ok:
        return None
    compiled.sort()
    return tuple(compiled)


# --------------------------------------------------------------------------- sites and links


def _sites_section(ctx: _Context, value: Any, path: str) -> None:
    if type(value) is not list:
        ctx.error(path, f"wrong type: expected array of tables ([[sites]]), got {_type_name(value)}{_show(value)}")
        return
    if not value:
        ctx.error(path, "at least one site is required")
        return
    names: dict[str, str] = {}
    for site_no, (_, spath, item) in enumerate(_items(value, path), start=1):
        values = _table(ctx, item, spath, SITE_SCHEMA)
        if values is None:
            continue
        name = values.get("name")
        if name is not None:
            if name in names:
                ctx.error(_key(spath, "name"), f"duplicate site name {name!r} (already used at {names[name]})")
            else:
                names[name] = _key(spath, "name")
        links = []
        lpath = _key(spath, "links")
        for link_no, (_, linkpath, litem) in enumerate(_items(values.get("links", []), lpath), start=1):
            link = _link(ctx, litem, linkpath, site_no, link_no)
            if link is not None:
                links.append(link)
        if "name" in values and "address" in values:
            ctx.sites.append(Site(name=values["name"], address=values["address"], links=tuple(links)))


def _link(ctx: _Context, item: Any, path: str, site_no: int, link_no: int) -> Link | None:
    kind = item.get("kind") if type(item) is dict else None
    if type(kind) is str and kind in LINK_KIND_SCHEMAS:
        schema = {**LINK_COMMON_SCHEMA, **LINK_KIND_SCHEMAS[kind]}
        what = f" for a {kind} link"
    else:
        # kind missing or wrong (reported by _table): accept any kind's keys, required or not
        schema = dict(LINK_COMMON_SCHEMA)
        for kind_schema in LINK_KIND_SCHEMAS.values():
            for name, key in kind_schema.items():
                schema[name] = Key(key.types, None, key.check, key.doc, key.hint)
        what = ""
    values = _table(ctx, item, path, schema, what)
    if values is None:
        return None
    ok = len(values) == len(schema) and type(kind) is str and kind in LINK_KIND_SCHEMAS

    name = values.get("name")
    if name is not None:
        if name in ctx.link_names:
            ctx.error(_key(path, "name"), f"duplicate link name {name!r} (already used at {ctx.link_names[name]})")
            ok = False
        else:
            ctx.link_names[name] = _key(path, "name")

    # uniqueness across the file is checked whenever the keys involved are valid
    if kind == "serial" and "device" in values:
        ok &= _unique(ctx, ctx.devices, values["device"], _key(path, "device"), "serial device")
    elif kind == "tcp" and "host" in values and "port" in values:
        ok &= _unique(ctx, ctx.endpoints, (values["host"], values["port"]), _key(path, "port"),
                      f"TCP endpoint {values['host']}:{values['port']}")
    elif kind == "gprs" and "dtu_id" in values:
        ok &= _unique(ctx, ctx.dtu_ids, values["dtu_id"], _key(path, "dtu_id"), "DTU id")
        dtu, registration = values["dtu_id"], values.get("registration")
        if registration == "ddp" and not (dtu.isascii() and len(dtu) <= 11):
            ctx.error(_key(path, "dtu_id"), f"a DDP identity is 1..11 ASCII characters, got {dtu!r}")
            ok = False
        elif registration in ("plain", "usr") and dtu.startswith("{"):
            ctx.error(_key(path, "dtu_id"), "a plain or usr identity must not start with '{' (7Bh starts a DDP packet)")
            ok = False

    endpoint: Any = None
    if ok:
        if kind == "serial":
            endpoint = SerialEndpoint(device=values["device"])
        elif kind == "tcp":
            endpoint = TcpEndpoint(host=values["host"], port=values["port"])
        elif kind == "gprs":
            endpoint = GprsEndpoint(dtu_id=values["dtu_id"], registration=values["registration"],
                                    heartbeat_s=values["heartbeat_s"])
        else:
            endpoint = GsmEndpoint(modem=values["modem"], number=values["number"], modem_baud=values["modem_baud"])

    build = _LinkBuild(ctx, path, site_no, link_no)
    build.repeaters(values.get("repeaters", []))
    rpath = _key(path, "cdt_ranges")
    for _, p, entry in _items(values.get("cdt_ranges", []), rpath):
        build.cdt_range(entry, p)
    cpath = _key(path, "cdts")
    for _, p, entry in _items(values.get("cdts", []), cpath):
        build.cdt(entry, p)
    cdts = build.finish()
    if not ok or cdts is None:
        return None
    return Link(
        name=values["name"],
        kind=kind,
        endpoint=endpoint,
        line=LineSettings(baud=values["baud"], bytesize=values["bytesize"], parity=values["parity"],
                          stopbits=values["stopbits"]),
        turnaround_ms=values["turnaround_ms"],
        di_order=values["di_order"],
        repeaters=build.repeater_tuple,
        cdts=cdts,
    )


def _unique(ctx: _Context, seen: dict[Any, str], value: Any, path: str, what: str) -> bool:
    if value in seen:
        ctx.error(path, f"duplicate {what} {value!r} (already used at {seen[value]})" if isinstance(value, str)
                  else f"duplicate {what} (already used at {seen[value]})")
        return False
    seen[value] = path
    return True


class _LinkBuild:
    """Collects one link's repeaters, CDTs, modules and meters; checks uniqueness and limits.

    ``cdts``: address -> [name, repeater, {module number: Module}, origin path].
    ``serials``: 14-digit serial -> (origin path, cdt, module, channel).
    """

    __slots__ = ("ctx", "path", "site_no", "link_no", "ok", "repeater_tuple", "repeater_paths",
                 "cdts", "serials", "behind")

    def __init__(self, ctx: _Context, path: str, site_no: int, link_no: int) -> None:
        self.ctx = ctx
        self.path = path
        self.site_no = site_no
        self.link_no = link_no
        self.ok = True
        self.repeater_tuple: tuple[Repeater, ...] = ()
        self.repeater_paths: dict[str, str] = {}
        self.cdts: dict[int, list[Any]] = {}
        self.serials: dict[str, tuple[str, int, int, int]] = {}
        #: repeater name -> number of CDTs naming it
        self.behind: dict[str, int] = {}

    def error(self, path: str, reason: str) -> None:
        self.ok = False
        self.ctx.error(path, reason)

    # ---- repeaters

    def repeaters(self, items: list[Any]) -> None:
        rpath = _key(self.path, "repeaters")
        # a repeater with a valid name is known to references even if its other keys are bad
        parsed: list[tuple[str, dict[str, Any], bool]] = []
        for _, p, item in _items(items, rpath):
            values = _table(self.ctx, item, p, REPEATER_SCHEMA)
            if values is None:
                self.ok = False
                continue
            complete = len(values) == len(REPEATER_SCHEMA)
            self.ok &= complete
            name = values.get("name")
            if name is None:
                continue
            if name in self.repeater_paths:
                self.error(_key(p, "name"),
                           f"duplicate repeater name {name!r} on this link "
                           f"(already defined at {self.repeater_paths[name]})")
                continue
            self.repeater_paths[name] = p
            parsed.append((p, values, complete))
        parents = {values["name"]: values.get("parent") for _, values, _ in parsed}
        reported_cycles: set[str] = set()
        result = []
        for p, values, complete in parsed:
            name, parent = values["name"], values.get("parent")
            if parent is not None:
                if parent not in parents:
                    self.error(_key(p, "parent"), f"unknown repeater {parent!r} (repeaters on this link: "
                                                  f"{', '.join(parents) or 'none'})")
                    continue
                chain = [name]
                node: str | None = parent
                while node is not None and node not in chain and node in parents:
                    chain.append(node)
                    node = parents[node]
                if node == name:
                    if name not in reported_cycles:
                        reported_cycles.update(chain)
                        self.error(_key(p, "parent"), "repeater cycle: " + " -> ".join(chain + [name]))
                    continue
                if parents[parent] is not None:
                    self.error(_key(p, "parent"),
                               f"repeater nesting exceeds {MAX_REPEATER_LEVELS} levels: {name!r} -> {parent!r} -> "
                               f"{parents[parent]!r} (a parent repeater must not have a parent itself)")
                    continue
            if complete:
                result.append(Repeater(name=name, parent=parent, latency_ms=values["latency_ms"]))
        self.repeater_tuple = tuple(result)

    def _repeater_ref(self, values: dict[str, Any], path: str, count: int) -> bool:
        repeater = values.get("repeater")
        if repeater is None:
            return True
        if repeater not in self.repeater_paths:
            self.error(_key(path, "repeater"), f"unknown repeater {repeater!r} (repeaters on this link: "
                                               f"{', '.join(self.repeater_paths) or 'none'})")
            return False
        self.behind[repeater] = self.behind.get(repeater, 0) + count
        return True

    # ---- templates

    def _template(self, values: dict[str, Any], path: str) -> tuple[tuple[int, MeterKind, int], ...] | None:
        name = values.get("template")
        if name is None:
            return None
        templates = self.ctx.templates
        if name not in templates:
            self.error(_key(path, "template"),
                       f"unknown template {name!r} "
                       f"(defined: {', '.join(map(_display, templates)) or 'no templates are defined'})")
            return None
        compiled = templates[name]
        if compiled is None:  # the template itself is invalid and already reported
            self.ok = False
        return compiled

    # ---- CDTs

    def _add_cdt(self, address: int, name: str | None, repeater: str | None, origin: str) -> list[Any]:
        """Register a new CDT (the caller has checked the address is free); its entry."""
        entry = [name, repeater, {}, origin]
        self.cdts[address] = entry
        return entry

    def cdt_range(self, item: Any, path: str) -> None:
        ctx = self.ctx
        values = _table(ctx, item, path, CDT_RANGE_SCHEMA)
        if values is None:
            self.ok = False
            return
        complete = len(values) == len(CDT_RANGE_SCHEMA)
        self.ok &= complete
        addr_spans, _ = parse_range(values["addresses"], 1, CDT_ADDRESS_MAX) if "addresses" in values else (None, None)
        if addr_spans is None:
            return
        count = _span_count(addr_spans)
        apath = _key(path, "addresses")
        if count > MAX_CDTS_PER_LINK:
            self.error(apath, f"range gives {count} CDTs, more than the limit of {MAX_CDTS_PER_LINK} per link")
            return
        repeater_ok = self._repeater_ref(values, path, count)
        template = self._template(values, path)
        mod_spans = None
        if "modules" in values:
            mod_spans, _ = parse_range(values["modules"], 1, MAX_MODULES_PER_CDT)
        name_fmt = values.get("name")
        fields = {"site_no": self.site_no, "link_no": self.link_no, "cdt": 0}
        duplicates: dict[str, list[int]] = {}
        new: list[tuple[int, list[Any]]] = []
        for address in _span_values(addr_spans):
            if address in self.cdts:
                duplicates.setdefault(self.cdts[address][3], []).append(address)
                continue
            fields["cdt"] = address
            try:
                name = name_fmt.format_map(fields) if name_fmt is not None else None
            except (ValueError, OverflowError) as exc:
                self.error(_key(path, "name"), f"format {name_fmt!r} fails for CDT {address}: {exc}")
                name_fmt = name = None
            new.append((address, self._add_cdt(address, name, values.get("repeater"), apath)))
        for origin, addresses in duplicates.items():
            self.error(apath, f"duplicate CDT address{'es' if len(addresses) > 1 else ''} {_compact(addresses)} "
                              f"(already defined at {origin})")
        if not (complete and repeater_ok and template and mod_spans and self._room()):
            return
        modules = _span_values(mod_spans)
        self._expand(path, [(a, e[2]) for a, e in new], modules, template, values)

    def cdt(self, item: Any, path: str) -> None:
        ctx = self.ctx
        values = _table(ctx, item, path, CDT_SCHEMA)
        if values is None:
            self.ok = False
            return
        self.ok &= len(values) == len(CDT_SCHEMA)
        entry = None
        if "address" in values:
            address = values["address"]
            apath = _key(path, "address")
            if address in self.cdts:
                self.error(apath, f"duplicate CDT address {address} (already defined at {self.cdts[address][3]})")
            else:
                entry = self._add_cdt(address, values.get("name"), values.get("repeater"), apath)
        self._repeater_ref(values, path, 1)
        modules: dict[int, Module] = {}
        origins: dict[int, str] = {}
        mpath = _key(path, "modules")
        mod_items = values.get("modules", [])
        if len(mod_items) > MAX_MODULES_PER_CDT:
            self.error(mpath, f"{len(mod_items)} modules exceed the limit of {MAX_MODULES_PER_CDT} per CDT")
        address = values.get("address", 0)
        expand = entry is not None and self._room()
        for _, p, mitem in _items(mod_items, mpath):
            self._module(mitem, p, address, modules, origins, expand)
        rpath = _key(path, "module_ranges")
        for _, p, ritem in _items(values.get("module_ranges", []), rpath):
            self._module_range(ritem, p, address, modules, origins, expand)
        if entry is not None:
            entry[2] = modules

    def _room(self) -> bool:
        """False once the link has more CDTs than allowed: stop generating meters for it."""
        return len(self.cdts) <= MAX_CDTS_PER_LINK

    def _claim_module(self, number: int, path: str, address: int, origins: dict[int, str]) -> bool:
        if number in origins:
            self.error(path, f"duplicate module number {number} in CDT {address} "
                             f"(already defined at {origins[number]})")
            return False
        origins[number] = path
        return True

    def _module_range(self, item: Any, path: str, address: int, modules: dict[int, Module],
                      origins: dict[int, str], expand: bool) -> None:
        values = _table(self.ctx, item, path, MODULE_RANGE_SCHEMA)
        if values is None:
            self.ok = False
            return
        complete = len(values) == len(MODULE_RANGE_SCHEMA)
        self.ok &= complete
        template = self._template(values, path)
        if "modules" not in values:
            return
        spans, _ = parse_range(values["modules"], 1, MAX_MODULES_PER_CDT)
        mpath = _key(path, "modules")
        numbers = [n for n in _span_values(spans or []) if self._claim_module(n, mpath, address, origins)]
        if complete and template and expand:
            self._expand(path, [(address, modules)], numbers, template, values)

    def _module(self, item: Any, path: str, address: int, modules: dict[int, Module],
                origins: dict[int, str], expand: bool) -> None:
        ctx = self.ctx
        values = _table(ctx, item, path, MODULE_SCHEMA)
        if values is None:
            self.ok = False
            return
        complete = "module" in values and len(values) == len(MODULE_SCHEMA)
        self.ok &= complete
        number = values.get("module")
        if number is not None and not self._claim_module(number, _key(path, "module"), address, origins):
            complete = False
        has_template = type(item.get("template")) is str or "template" in item
        has_channels = "channels" in item
        if has_template and has_channels:
            self.error(path, "give either 'template' or 'channels', not both")
            return
        if not has_template and not has_channels:
            self.error(path, "missing 'template' or 'channels': a module needs one of them")
            return
        if has_template:
            if "serial" not in item:
                self.error(_key(path, "serial"), "missing required key 'serial' (a module built from a template "
                                                 "needs a serial format)")
                return
            template = self._template(values, path)
            if complete and template and expand:
                values = dict(values)
                if values["initial"] is None:
                    values["initial"] = 0
                self._expand(path, [(address, modules)], [number], template, values)
            return
        for key in ("serial", "household", "initial"):
            if key in item:
                self.error(_key(path, key), f"{key!r} applies only with 'template'; with 'channels' give each "
                                            f"channel its own {key!r}")
                complete = False
        cpath = _key(path, "channels")
        channels_raw = values.get("channels")
        if channels_raw is None:
            return
        if len(channels_raw) > MAX_CHANNELS_PER_MODULE:
            self.error(cpath, f"{len(channels_raw)} channels exceed the limit of {MAX_CHANNELS_PER_MODULE} per module")
            complete = False
        channels: dict[int, Channel] = {}
        channel_paths: dict[int, str] = {}
        for _, p, citem in _items(channels_raw, cpath):
            ch = _table(ctx, citem, p, CHANNEL_SCHEMA)
            if ch is None or len(ch) != len(CHANNEL_SCHEMA):
                self.ok = complete = False
                continue
            cno = ch["channel"]
            if cno in channel_paths:
                self.error(_key(p, "channel"), f"duplicate channel {cno} in module {number} of CDT {address} "
                                               f"(already defined at {channel_paths[cno]})")
                complete = False
                continue
            channel_paths[cno] = _key(p, "channel")
            serial = ch["serial"].zfill(SERIAL_DIGITS)
            spath = _key(p, "serial")
            if serial in self.serials:
                self.error(spath, f"duplicate meter serial {serial} ({self._describe(self.serials[serial])})")
                complete = False
                continue
            self.serials[serial] = (spath, address, number or 0, cno)
            meter = Meter(MeterKind(ch["kind"]), ch["pulse_constant"], serial, ch["initial"], ch["household"])
            channels[cno] = Channel(cno, meter)
        if complete and expand:
            modules[number] = Module(number, tuple(channels[n] for n in sorted(channels)))

    @staticmethod
    def _describe(first: tuple[str, int, int, int]) -> str:
        origin, cdt, module, channel = first
        return f"already used by CDT {cdt} module {module} channel {channel}, from {origin}"

    # ---- expansion

    def _expand(self, path: str, targets: list[tuple[int, dict[int, Module]]], module_numbers: list[int],
                template: tuple[tuple[int, MeterKind, int], ...], values: dict[str, Any]) -> None:
        """Build modules ``module_numbers`` from ``template`` into each target CDT's module dict."""
        serial_fmt: str = values["serial"]
        household_fmt: str | None = values["household"]
        initial: int = values["initial"]
        spath = _key(path, "serial")
        serials = self.serials
        fields = {"site_no": self.site_no, "link_no": self.link_no, "cdt": 0, "module": 0, "channel": 0}
        fmt = serial_fmt.format_map
        hfmt = household_fmt.format_map if household_fmt is not None else None
        bad_first: str | None = None
        bad_count = 0
        dup_first: str | None = None
        dup_count = 0
        for address, modules in targets:
            fields["cdt"] = address
            for number in module_numbers:
                fields["module"] = number
                channels = []
                for cno, kind, pulse_constant in template:
                    fields["channel"] = cno
                    try:
                        serial = fmt(fields)
                        household = hfmt(fields) if hfmt is not None else None
                    except (ValueError, OverflowError) as exc:  # e.g. a spec valid for 1 but not for this value
                        serial = household = f"<{exc}>"
                    if not (len(serial) <= SERIAL_DIGITS and serial.isdigit() and serial.isascii()):
                        bad_count += 1
                        if bad_first is None:
                            bad_first = (f"format {serial_fmt!r} gives {serial!r} for CDT {address} module {number} "
                                         f"channel {cno}: a meter serial must be 1..{SERIAL_DIGITS} decimal digits")
                        continue
                    serial = serial.zfill(SERIAL_DIGITS)
                    if serial in serials:
                        dup_count += 1
                        if dup_first is None:
                            dup_first = (f"format {serial_fmt!r} gives duplicate meter serial {serial} for CDT "
                                         f"{address} module {number} channel {cno} ({self._describe(serials[serial])})")
                        continue
                    serials[serial] = (spath, address, number, cno)
                    channels.append(Channel(cno, Meter(kind, pulse_constant, serial, initial, household)))
                modules[number] = Module(number, tuple(channels))
        if bad_first is not None:
            more = f"; {bad_count} bad serials from this entry in all" if bad_count > 1 else ""
            self.error(spath, bad_first + more)
        if dup_first is not None:
            more = f"; {dup_count} duplicates from this entry in all" if dup_count > 1 else ""
            self.error(spath, dup_first + more)

    # ---- limits and result

    def finish(self) -> tuple[Cdt, ...] | None:
        """Check the link-wide limits; the sorted CDTs, or None if anything on the link failed."""
        if len(self.cdts) > MAX_CDTS_PER_LINK:
            self.error(self.path, f"{len(self.cdts)} CDTs exceed the limit of {MAX_CDTS_PER_LINK} per link")
        for name, count in self.behind.items():
            if count > MAX_CDTS_PER_REPEATER:
                self.error(self.repeater_paths[name], f"{count} CDTs behind repeater {name!r} exceed the limit of "
                                                      f"{MAX_CDTS_PER_REPEATER} per repeater")
        if not self.ok:
            return None
        result = []
        for address in sorted(self.cdts):
            name, repeater, modules, _ = self.cdts[address]
            result.append(Cdt(address, name, repeater, tuple(modules[n] for n in sorted(modules))))
        return tuple(result)


# --------------------------------------------------------------------------- supervisor sections


def _string_list(ctx: _Context, value: list[Any], path: str, what: str,
                 check: Callable[[str], str | None] | None = None) -> list[str] | None:
    """The unique strings of an array, or None after recording every bad or repeated item."""
    seen: dict[str, str] = {}
    ok = True
    for _, ipath, item in _items(value, path):
        if type(item) is not str:
            ctx.error(ipath, f"wrong type: expected string ({what}), got {_type_name(item)}{_show(item)}")
            ok = False
            continue
        reason = check(item) if check is not None else None
        if reason is not None:
            ctx.error(ipath, reason)
            ok = False
        elif item in seen:
            ctx.error(ipath, f"duplicate {what}{_show(item)} (already listed at {seen[item]})")
            ok = False
        else:
            seen[item] = ipath
    return list(seen) if ok else None


def _plans_section(ctx: _Context, value: Any, path: str) -> None:
    if type(value) is not list:
        ctx.error(path, f"wrong type: expected array of tables ([[plans]]), got {_type_name(value)}{_show(value)}")
        return
    names: dict[str, str] = {}
    plans: list[ReadingPlan] = []
    ok = True
    for _, ppath, item in _items(value, path):
        values = _table(ctx, item, ppath, PLAN_SCHEMA)
        if values is None:
            ok = False
            continue
        good = len(values) == len(PLAN_SCHEMA)
        name = values.get("name")
        if name is not None:
            if name in names:
                ctx.error(_key(ppath, "name"), f"duplicate plan name {name!r} (already used at {names[name]})")
                good = False
            else:
                names[name] = _key(ppath, "name")
        times: list[_dt.time] = []
        tpath = _key(ppath, "at")
        seen: dict[_dt.time, str] = {}
        for _, ipath, raw in _items(values.get("at", []), tpath):
            parsed, reason = parse_time(raw)
            if reason is not None:
                ctx.error(ipath, reason)
                good = False
            elif parsed in seen:
                ctx.error(ipath, f"duplicate time {parsed:%H:%M:%S} (already listed at {seen[parsed]})")
                good = False
            else:
                seen[parsed] = ipath
                times.append(parsed)
        every = values.get("every")
        every_s = parse_duration(every)[0] if every is not None else None
        if "at" in values and "every" in values and not values["at"] and every is None:
            ctx.error(ppath, "a plan needs 'at' (daily times), 'every' (a period), or both")
            good = False
        links = values.get("links")
        if links is not None:
            lpath = _key(ppath, "links")
            if not links:
                ctx.error(lpath, "empty list: name at least one link, or leave 'links' out for every link")
                good = False
            names_ok = _string_list(ctx, links, lpath, "link name")
            if names_ok is None:
                good = False
            else:
                for i, link in enumerate(links):
                    if link not in ctx.link_names:
                        known = ", ".join(ctx.link_names) or "none"
                        ctx.error(f"{lpath}[{i}]", f"unknown link {link!r} (links in this file: {known})")
                        good = False
        if good:
            plans.append(ReadingPlan(name, values["kind"], tuple(sorted(times)), every_s,
                                     tuple(links) if links is not None else None))
        ok &= good
    if ok:
        ctx.plans = tuple(plans)


def _interlocks_section(ctx: _Context, value: Any, path: str) -> None:
    values = _table(ctx, value, path, INTERLOCKS_SCHEMA)
    if values is None:
        return
    hpath = _key(path, "protected_households")
    households = _string_list(ctx, values.get("protected_households", []), hpath, "household", _check_text)
    if households is not None and households:
        # a typo here would let a protected household be closed: every name must bill a meter,
        # checked only when the sites themselves loaded cleanly (no cascade of false reports)
        if not any(i.path.startswith(("sites", "templates")) for i in ctx.issues):
            known = {meter.household for site in ctx.sites for link in site.links
                     for _, _, _, meter in link.meters()}
            for i, household in enumerate(households):
                if household not in known:
                    ctx.error(f"{hpath}[{i}]", f"unknown household {household!r} (no meter in the file bills to it)")
                    households = None
    if households is not None and "max_closes_per_minute" in values:
        ctx.interlocks = Interlocks(frozenset(households), values["max_closes_per_minute"])


def _operators_section(ctx: _Context, value: Any, path: str) -> None:
    if type(value) is not list:
        ctx.error(path, f"wrong type: expected array of tables ([[operators]]), got {_type_name(value)}{_show(value)}")
        return
    names: dict[str, str] = {}
    operators: list[Operator] = []
    for _, opath, item in _items(value, path):
        values = _table(ctx, item, opath, OPERATOR_SCHEMA)
        if values is None:
            continue
        name = values.get("name")
        if name is not None:
            if name in names:
                ctx.error(_key(opath, "name"), f"duplicate operator name {name!r} (already used at {names[name]})")
                continue
            names[name] = _key(opath, "name")
        if len(values) == len(OPERATOR_SCHEMA):
            operators.append(Operator(values["name"], values["role"], values["password_hash"]))
    ctx.operators = tuple(operators)


def _supervisor_section(ctx: _Context, value: Any, path: str) -> None:
    values = _table(ctx, value, path, SUPERVISOR_SCHEMA)
    if values is None or len(values) != len(SUPERVISOR_SCHEMA):
        return
    stale = values["stale_after"]
    ctx.settings = SupervisorSettings(
        gprs_listen=values["gprs_listen"],
        retries=values["retries"],
        log_format=values["log_format"],
        state_dir=values["state_dir"],
        stale_after_s=parse_duration(stale)[0] if stale is not None else None,
        command_timeout_s=parse_duration(values["command_timeout"])[0],
    )


# --------------------------------------------------------------------------- entry points

#: top-level sections in processing order: name -> function(ctx, value, path)
SECTIONS: dict[str, Callable[[_Context, Any, str], None]] = {
    "templates": _templates_section,
    "sites": _sites_section,
    # after "sites": plans and interlocks refer to link names and households
    "plans": _plans_section,
    "interlocks": _interlocks_section,
    "operators": _operators_section,
    "supervisor": _supervisor_section,
}


def _validate(ctx: _Context, data: dict[str, Any]) -> None:
    for name in data:
        if name not in SECTIONS:
            ctx.error(_key("", name), f"unknown key {name!r} (allowed: {', '.join(SECTIONS)})")
    for name, section in SECTIONS.items():
        if name in data:
            section(ctx, data[name], name)
        elif TOP_SCHEMA.get(name, Key(TABLE, None)).default is REQUIRED:
            ctx.error(name, f"missing required key {name!r}")


_POSITION_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def loads(text: str, source: str = "<string>") -> Topology:
    """Parse and validate TOML ``text``; ``source`` names it in issues and ``Topology.source``.

    Raises ``ConfigError`` with every issue found; nothing else for any ``str`` input.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _POSITION_RE.search(message)
        if match:
            issue = ConfigIssue(source, "", "TOML syntax error: " + message[: match.start()],
                                int(match.group(1)), int(match.group(2)))
        else:
            issue = ConfigIssue(source, "", "TOML syntax error: " + message)
        raise ConfigError([issue]) from None
    except RecursionError:
        raise ConfigError([ConfigIssue(source, "", "TOML syntax error: arrays or tables nested too deeply")]) from None
    ctx = _Context(source)
    _validate(ctx, data)
    if ctx.issues:
        raise ConfigError(ctx.issues)
    return Topology(sites=tuple(ctx.sites), source=source, plans=ctx.plans, interlocks=ctx.interlocks,
                    operators=ctx.operators, settings=ctx.settings)


def load(path: str | os.PathLike[str]) -> Topology:
    """Read the UTF-8 TOML file at ``path`` (a leading BOM is allowed) and validate it.

    Raises ``ConfigError``: one issue if the file cannot be read or decoded, else every
    issue of its content.  ``Topology.source`` is ``str(path)``.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError([ConfigIssue(source, "", f"cannot read file: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(source, "", f"not UTF-8 text (byte {exc.start}: {exc.reason})")]) from None
    return loads(text, source)
