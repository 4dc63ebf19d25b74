"""The schema tables: every key of every table of a topology file.

Each kind of TOML table has a ``Schema`` (``dict[str, Key]``): key name -> accepted TOML
types, default (or ``REQUIRED``), value check, one-line doc.  ``SCHEMAS`` lists them by the
name docs/configuration.md gives them; a test checks the reference documents every key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from st2000r.config.model import AUTH_MODES, PLAN_KINDS, ROLES, MeterKind
from st2000r.config.modbus import MAX_CLIENTS, check_listen
from st2000r.config.values import (
    BAUD_RATES,
    CDT_ADDRESS_MAX,
    CDT_NAME_FIELDS,
    COMMAND_TIMEOUT_RANGE,
    REREAD_AFTER_OUTAGE_RANGE,
    MAX_CHANNELS_PER_MODULE,
    MAX_CLOSES_PER_MINUTE,
    MAX_MODULES_PER_CDT,
    MAX_RETRIES,
    METER_FIELDS,
    PLAN_EVERY_RANGE,
    PULSE_CONSTANT_MAX,
    STALE_AFTER_RANGE,
    check_duration,
    check_endpoint,
    check_format,
    check_gap,
    check_hash,
    check_name,
    check_phone,
    check_range_value,
    check_secret,
    check_serial,
    check_text,
    check_token,
    in_range,
    one_of,
)

__all__ = [
    "REQUIRED", "Key", "Schema", "SCHEMAS", "TOP_SCHEMA", "TEMPLATE_SCHEMA", "TEMPLATE_CHANNEL_SCHEMA",
    "SITE_SCHEMA", "LINK_COMMON_SCHEMA", "LINK_KIND_SCHEMAS", "REPEATER_SCHEMA", "CDT_RANGE_SCHEMA",
    "CDT_SCHEMA", "MODULE_RANGE_SCHEMA", "MODULE_SCHEMA", "CHANNEL_SCHEMA", "PLAN_SCHEMA",
    "INTERLOCKS_SCHEMA", "OPERATOR_SCHEMA", "SUPERVISOR_SCHEMA", "MODBUS_SCHEMA",
    "MODBUS_TLS_SCHEMA", "MODBUS_RTU_SCHEMA", "API_SCHEMA", "API_TLS_SCHEMA",
]

REQUIRED: Any = object()
"""Sentinel default of a key that must be present."""


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

STR = ("string",)
INT = ("integer",)
ARRAY = ("array",)
TABLE = ("table",)
RANGE = ("string", "integer")
NUMBER = ("integer", "float")

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
    "modbus": Key(TABLE, None, doc="the Modbus bridge: [modbus] (absent: no bridge)"),
    "historian": Key(TABLE, {}, doc="the historian database: [historian]"),
    "api": Key(TABLE, None, doc="the HTTP API: [api] (absent: no API)"),
}

TEMPLATE_SCHEMA: Schema = {
    "description": Key(STR, None, doc="free text"),
    "channels": Key(ARRAY, REQUIRED, doc="the channels of a module built from this template"),
}

TEMPLATE_CHANNEL_SCHEMA: Schema = {
    "channel": Key(INT, REQUIRED, in_range(1, MAX_CHANNELS_PER_MODULE), "channel number 1..3"),
    "kind": Key(STR, REQUIRED, one_of(*(k.value for k in MeterKind)), "water | electricity | gas"),
    "pulse_constant": Key(INT, REQUIRED, in_range(1, PULSE_CONSTANT_MAX), "base units per pulse"),
}

SITE_SCHEMA: Schema = {
    "name": Key(STR, REQUIRED, check_text, "community name, unique in the file"),
    "address": Key(STR, REQUIRED, check_text, "postal address"),
    "links": Key(ARRAY, [], doc="field links: [[sites.links]]"),
}

LINK_COMMON_SCHEMA: Schema = {
    "name": Key(STR, REQUIRED, check_name, "link name, unique in the file"),
    "kind": Key(STR, REQUIRED, one_of("serial", "tcp", "gprs", "gsm"), "serial | tcp | gprs | gsm"),
    "baud": Key(INT, 2400, one_of(*BAUD_RATES), "bus baud rate"),
    "bytesize": Key(INT, 8, one_of(7, 8), "data bits"),
    "parity": Key(STR, "E", one_of("N", "E", "O"), "N | E | O"),
    "stopbits": Key(INT, 1, one_of(1, 2), "stop bits"),
    "turnaround_ms": Key(INT, 20, in_range(0, 2000), "device turnaround, ms"),
    "gap_ms": Key(NUMBER, None, check_gap, "bus idle time before each request, ms (default: automatic)"),
    "di_order": Key(STR, "901F", one_of("901F", "1F90"), "DI byte order when sending"),
    "repeaters": Key(ARRAY, [], doc="repeaters on this link"),
    "cdt_ranges": Key(ARRAY, [], doc="CDTs generated from ranges: [[sites.links.cdt_ranges]]"),
    "cdts": Key(ARRAY, [], doc="CDTs written out: [[sites.links.cdts]]"),
}

LINK_KIND_SCHEMAS: dict[str, Schema] = {
    "serial": {
        "device": Key(STR, REQUIRED, check_token, "serial device path"),
    },
    "tcp": {
        "host": Key(STR, REQUIRED, check_token, "serial-device server host name or IP"),
        "port": Key(INT, REQUIRED, in_range(1, 65535), "TCP port"),
    },
    "gprs": {
        "dtu_id": Key(STR, REQUIRED, check_token, "identity the DTU registers with, unique in the file"),
        "registration": Key(STR, "plain", one_of("plain", "ddp", "usr"), "registration packet format"),
        "heartbeat_s": Key(INT, 60, in_range(1, 3600), "heartbeat interval, s"),
        "auth": Key(STR, None, one_of(*AUTH_MODES), "challenge | password | none (default: challenge with a "
                                                     "secret, none with only allow_from)"),
        "secret": Key(STR, None, check_secret, "the DTU's shared secret (challenge key or registration password)"),
        "allow_from": Key(ARRAY, [], doc="source networks the DTU may connect from, e.g. [\"10.0.0.0/8\"]"),
    },
    "gsm": {
        "modem": Key(STR, REQUIRED, check_token, "serial device of the local modem"),
        "number": Key(STR, REQUIRED, check_phone, "phone number to dial"),
        "modem_baud": Key(INT, 19200, one_of(*BAUD_RATES), "modem port baud rate"),
    },
}

REPEATER_SCHEMA: Schema = {
    "name": Key(STR, REQUIRED, check_name, "repeater name, unique per link"),
    "parent": Key(STR, None, doc="name of the first-level repeater this one hangs behind"),
    "latency_ms": Key(INT, 5, in_range(0, 1000), "added one-way delay, ms"),
}

_METER_FORMAT = check_format(METER_FIELDS)

CDT_RANGE_SCHEMA: Schema = {
    "addresses": Key(RANGE, REQUIRED, check_range_value(1, CDT_ADDRESS_MAX), "CDT addresses, e.g. \"1-128\""),
    "name": Key(STR, None, check_format(CDT_NAME_FIELDS), "CDT name format"),
    "repeater": Key(STR, None, doc="repeater every CDT of the range sits behind"),
    "modules": Key(RANGE, REQUIRED, check_range_value(1, MAX_MODULES_PER_CDT), "module numbers, e.g. \"1-32\""),
    "template": Key(STR, REQUIRED, doc="module template name"),
    "serial": Key(STR, REQUIRED, _METER_FORMAT, "meter serial format"),
    "household": Key(STR, None, _METER_FORMAT, "household reference format"),
    "initial": Key(INT, 0, in_range(0), "initial reading of every meter, base units"),
}

CDT_SCHEMA: Schema = {
    "address": Key(INT, REQUIRED, in_range(1, CDT_ADDRESS_MAX), "CDT address"),
    "name": Key(STR, None, check_text, "CDT name"),
    "repeater": Key(STR, None, doc="repeater the CDT sits behind"),
    "modules": Key(ARRAY, [], doc="modules written out: [[sites.links.cdts.modules]]"),
    "module_ranges": Key(ARRAY, [], doc="modules generated from a range and a template"),
    "slot": Key(INT, None, in_range(0, 255), "the CDT's register block on the Modbus map, unique per link"),
}

MODULE_RANGE_SCHEMA: Schema = {
    "modules": Key(RANGE, REQUIRED, check_range_value(1, MAX_MODULES_PER_CDT), "module numbers"),
    "template": Key(STR, REQUIRED, doc="module template name"),
    "serial": Key(STR, REQUIRED, _METER_FORMAT, "meter serial format"),
    "household": Key(STR, None, _METER_FORMAT, "household reference format"),
    "initial": Key(INT, 0, in_range(0), "initial reading, base units"),
}

MODULE_SCHEMA: Schema = {
    "module": Key(INT, REQUIRED, in_range(1, MAX_MODULES_PER_CDT), "module number 1..32"),
    "channels": Key(ARRAY, None, doc="channels written out (or use template)"),
    "template": Key(STR, None, doc="module template name (or use channels)"),
    "serial": Key(STR, None, _METER_FORMAT, "meter serial format (with template)"),
    "household": Key(STR, None, _METER_FORMAT, "household reference format (with template)"),
    "initial": Key(INT, None, in_range(0), "initial reading, base units (with template; default 0)"),
}

CHANNEL_SCHEMA: Schema = {
    "channel": Key(INT, REQUIRED, in_range(1, MAX_CHANNELS_PER_MODULE), "channel number 1..3"),
    "kind": Key(STR, REQUIRED, one_of(*(k.value for k in MeterKind)), "water | electricity | gas"),
    "pulse_constant": Key(INT, REQUIRED, in_range(1, PULSE_CONSTANT_MAX), "base units per pulse"),
    "serial": Key(STR, REQUIRED, check_serial, "meter serial, 1..14 digits",
                  hint="write serials in quotes, e.g. serial = \"00012345\""),
    "initial": Key(INT, 0, in_range(0), "initial reading, base units"),
    "household": Key(STR, None, check_text, "household reference"),
}


PLAN_SCHEMA: Schema = {
    "name": Key(STR, REQUIRED, check_name, "plan name, unique in the file"),
    "kind": Key(STR, REQUIRED, one_of(*PLAN_KINDS), "full | status"),
    "at": Key(ARRAY, [], doc="daily local times, \"HH:MM\""),
    "every": Key(("string", "integer"), None, check_duration(*PLAN_EVERY_RANGE), "period: \"5m\", \"1h\", seconds"),
    "links": Key(ARRAY, None, doc="names of the links the plan applies to (default: every link)"),
}

INTERLOCKS_SCHEMA: Schema = {
    "protected_households": Key(ARRAY, [], doc="households whose meters are never closed"),
    "max_closes_per_minute": Key(INT, 10, in_range(0, MAX_CLOSES_PER_MINUTE), "valve closes per link per minute"),
}

OPERATOR_SCHEMA: Schema = {
    "name": Key(STR, REQUIRED, check_name, "login name, unique in the file"),
    "role": Key(STR, REQUIRED, one_of(*ROLES), "viewer | operator | engineer | admin"),
    "password_hash": Key(STR, None, check_hash, "argon2 hash of the password"),
}

SUPERVISOR_SCHEMA: Schema = {
    "gprs_listen": Key(STR, None, check_endpoint, "GPRS DTU server endpoint, e.g. \"tcp:9000\" (127.0.0.1 unless interface= is given)"),
    "retries": Key(INT, 2, in_range(0, MAX_RETRIES), "bus retries per transaction"),
    "log_format": Key(STR, "text", one_of("text", "json"), "text | json"),
    "state_dir": Key(STR, "var", check_token, "folder for state files (audit log)"),
    "stale_after": Key(("string", "integer"), None, check_duration(*STALE_AFTER_RANGE), "reading age that is STALE"),
    "command_timeout": Key(("string", "integer"), 60, check_duration(*COMMAND_TIMEOUT_RANGE),
                           "valve read-back deadline"),
    "read_on_connect": Key(("boolean",), True, None, "a full round when a link first comes up"),
    "full_read_after_outage": Key(("string", "integer"), 3600, check_duration(*REREAD_AFTER_OUTAGE_RANGE),
                                  "a full round when a link returns after this long down"),
}

MODBUS_SCHEMA: Schema = {
    "tcp": Key(STR, None, check_listen, "Modbus TCP listen address \"IP:PORT\" (absent: no TCP server)"),
    "write_allow": Key(ARRAY, [], doc="client addresses or networks allowed to write (empty: read-only)"),
    "max_clients": Key(INT, 16, in_range(1, MAX_CLIENTS), "concurrent Modbus TCP clients"),
    "units": Key(TABLE, {}, doc="first unit id per link name (default: assigned in the map lock file)"),
    "map_lock": Key(STR, None, check_token, "the map lock file (default: beside the configuration)"),
    "tls": Key(TABLE, None, doc="Modbus/TCP Security on the tcp listener: [modbus.tls] (absent: plain TCP)"),
    "rtu": Key(TABLE, None, doc="the Modbus RTU slave: [modbus.rtu] (absent: none)"),
}

MODBUS_TLS_SCHEMA: Schema = {
    "cert": Key(STR, REQUIRED, check_token, "the server's certificate (PEM), relative to the configuration's folder"),
    "key": Key(STR, REQUIRED, check_token, "the server's private key (PEM)"),
    "ca": Key(STR, REQUIRED, check_token, "CA certificates (PEM) a client's certificate must chain to"),
}

MODBUS_RTU_SCHEMA: Schema = {
    "device": Key(STR, REQUIRED, check_token, "serial device of the RTU slave"),
    "baud": Key(INT, 19200, one_of(*BAUD_RATES), "line speed"),
    "parity": Key(STR, "E", one_of("N", "E", "O"), "N | E | O (N: two stop bits)"),
    "unit": Key(INT, None, in_range(1, 247), "the one unit id answered (absent: every unit id of the map)"),
}


def check_zone(value: str) -> str | None:
    """An IANA time zone name the system knows (``UTC``, ``Asia/Shanghai``)."""
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(value)
    except (ValueError, OSError, LookupError):
        return f"unknown time zone {value!r} (an IANA name such as \"Asia/Shanghai\" or \"UTC\")"
    return None


HISTORIAN_SCHEMA: Schema = {
    "url": Key(STR, None, check_text, "SQLAlchemy database URL (default: historian.sqlite in state_dir)"),
    "enabled": Key(("boolean",), True, None, "store readings, alarms and commands"),
    "spool_max_mb": Key(INT, 1024, in_range(1, 1_048_576), "bound of the local spool, MiB"),
    "keep_raw_days": Key(INT, 0, in_range(0, 36_500), "days raw readings are kept (0: forever); aggregates are kept"),
    "aggregate_timezone": Key(STR, "UTC", check_zone, "IANA time zone of the aggregates' days and months"),
}


API_SCHEMA: Schema = {
    "listen": Key(STR, REQUIRED, check_listen, "HTTP listen address \"IP:PORT\", e.g. \"127.0.0.1:8080\""),
    "token_ttl": Key(("string", "integer"), 28_800, check_duration(60, 30 * 86_400),
                     "lifetime of a login token (60 s .. 30 d)"),
    "max_clients": Key(INT, 64, in_range(1, MAX_CLIENTS), "HTTP connections served at once"),
    "max_sse_clients": Key(INT, 32, in_range(1, MAX_CLIENTS), "event streams (GET /api/v1/events) at once"),
    "tls": Key(TABLE, None, doc="HTTPS: [api.tls] (absent: plain HTTP)"),
}

API_TLS_SCHEMA: Schema = {
    "cert": Key(STR, REQUIRED, check_token, "the server's certificate chain (PEM), relative to the configuration's folder"),
    "key": Key(STR, REQUIRED, check_token, "the server's private key (PEM)"),
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
    "modbus": MODBUS_SCHEMA,
    "modbus.tls": MODBUS_TLS_SCHEMA,
    "modbus.rtu": MODBUS_RTU_SCHEMA,
    "historian": HISTORIAN_SCHEMA,
    "api": API_SCHEMA,
    "api.tls": API_TLS_SCHEMA,
}

