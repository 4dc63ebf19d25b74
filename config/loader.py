"""Load a TOML topology file, validate it as a whole, expand it into the typed model.

``load(path)`` and ``loads(text)`` return a ``st2000r.config.model.Topology`` or raise one
``st2000r.config.errors.ConfigError`` listing every problem found (unknown keys, wrong
types, values out of range, duplicates, limits, dangling references, malformed ranges and
formats, TOML syntax) -- the first ``MAX_ISSUES`` of them, then one line counting the rest.
They raise nothing else for any input text.  Nothing is repaired.

The work is split by responsibility:

- ``files``: reading the file -- regular files only, at most ``MAX_CONFIG_BYTES``, UTF-8;
- ``values``: the field's limits, and pure checks and parsers of single values (ranges
  ``"1-6,8-128"``, durations, times);
- ``schema``: one schema table (``dict[str, Key]``) per kind of TOML table;
- ``validation``: the run's ``Context`` and ``check_table``, which checks a table against
  its schema (unknown keys, missing keys, types, values);
- ``budget``: the meters the file would expand to, counted before anything is built
  (at most ``MAX_METERS``);
- ``links`` and ``expand``: templates, sites, links, and the expansion of ranges and
  templates into CDTs, modules and channels -- every physical position and meter serial
  defined exactly once per link;
- ``sections``: ``[[plans]]``, ``[interlocks]``, ``[[operators]]``, ``[supervisor]``.

Top-level sections are listed in ``SECTIONS`` (name -> checking function), run in that
order.  To add a section: write its schema table, a function ``(ctx, value, path)`` that
checks it and stores its result on the ``Context``, and add both here.

A 12,288-meter link loads in a few tens of milliseconds (``bench/bench_config_load.py``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from typing import Any

from st2000r.config.budget import count_meters
from st2000r.config.errors import ConfigError, ConfigIssue
from st2000r.config.files import InputFileError, read_text
from st2000r.config.links import sites_section, templates_section
from st2000r.config.model import Topology
from st2000r.config.schema import (
    CDT_RANGE_SCHEMA,
    CDT_SCHEMA,
    CHANNEL_SCHEMA,
    INTERLOCKS_SCHEMA,
    LINK_COMMON_SCHEMA,
    LINK_KIND_SCHEMAS,
    MODULE_RANGE_SCHEMA,
    MODULE_SCHEMA,
    OPERATOR_SCHEMA,
    PLAN_SCHEMA,
    REPEATER_SCHEMA,
    REQUIRED,
    SCHEMAS,
    SITE_SCHEMA,
    SUPERVISOR_SCHEMA,
    TEMPLATE_CHANNEL_SCHEMA,
    TEMPLATE_SCHEMA,
    TOP_SCHEMA,
    Key,
)
from st2000r.config.sections import (
    historian_section,
    api_section,
    interlocks_section,
    modbus_section,
    operators_section,
    plans_section,
    supervisor_section,
)
from st2000r.config.validation import Context
from st2000r.config.values import (
    MAX_CDTS_PER_LINK,
    MAX_CONFIG_BYTES,
    MAX_ISSUES,
    MAX_METERS,
    key_path,
    parse_duration,
    parse_range,
    parse_time,
)

__all__ = [
    "load", "loads", "parse_range", "parse_duration", "parse_time", "SECTIONS", "SCHEMAS", "Key", "REQUIRED",
    "MAX_METERS", "MAX_CONFIG_BYTES", "MAX_ISSUES", "MAX_CDTS_PER_LINK",
    "TOP_SCHEMA", "TEMPLATE_SCHEMA", "TEMPLATE_CHANNEL_SCHEMA", "SITE_SCHEMA", "LINK_COMMON_SCHEMA",
    "LINK_KIND_SCHEMAS", "REPEATER_SCHEMA", "CDT_RANGE_SCHEMA", "CDT_SCHEMA", "MODULE_RANGE_SCHEMA",
    "MODULE_SCHEMA", "CHANNEL_SCHEMA", "PLAN_SCHEMA", "INTERLOCKS_SCHEMA", "OPERATOR_SCHEMA", "SUPERVISOR_SCHEMA",
]

#: top-level sections in processing order: name -> function(ctx, value, path)
SECTIONS: dict[str, Callable[[Context, Any, str], None]] = {
    "templates": templates_section,
    "sites": sites_section,
    # after "sites": plans and interlocks refer to link names and households
    "plans": plans_section,
    "interlocks": interlocks_section,
    "operators": operators_section,
    "supervisor": supervisor_section,
    "modbus": modbus_section,
    "historian": historian_section,
    "api": api_section,
}


def _validate(ctx: Context, data: dict[str, Any]) -> None:
    for name in data:
        if name not in SECTIONS:
            ctx.error(key_path("", name), f"unknown key {name!r} (allowed: {', '.join(SECTIONS)})")
    for name, section in SECTIONS.items():
        if name in data:
            section(ctx, data[name], name)
        elif TOP_SCHEMA[name].default is REQUIRED:
            ctx.error(name, f"missing required key {name!r}")


_POSITION_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def loads(text: str, source: str = "<string>") -> Topology:
    """Parse and validate TOML ``text``; ``source`` names it in issues and ``Topology.source``.

    Raises ``ConfigError`` with every issue found (at most ``MAX_ISSUES``, then a count), or
    with the one issue that the file expands to more than ``MAX_METERS`` meters; nothing
    else for any ``str`` input.
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
    meters = count_meters(data)
    if meters > MAX_METERS:
        raise ConfigError([ConfigIssue(source, "sites", f"the templates and ranges expand to {meters:,} meters, more "
                                                        f"than the limit of {MAX_METERS:,} meters per file")])
    ctx = Context(source)
    _validate(ctx, data)
    if ctx.issues:
        raise ctx.failure()
    return Topology(sites=tuple(ctx.sites), source=source, plans=ctx.plans, interlocks=ctx.interlocks,
                    operators=ctx.operators, settings=ctx.settings, modbus=ctx.modbus,
                    historian=ctx.historian, api=ctx.api)


def load(path: str | os.PathLike[str]) -> Topology:
    """Read the UTF-8 TOML file at ``path`` (a leading BOM is allowed) and validate it.

    Raises ``ConfigError``: one issue if the file cannot be read (missing, not a regular
    file, larger than ``MAX_CONFIG_BYTES``, not UTF-8), else every issue of its content.
    ``Topology.source`` is ``str(path)``.
    """
    source = os.fspath(path)
    try:
        text = read_text(source, limit=MAX_CONFIG_BYTES)
    except InputFileError as exc:
        raise ConfigError([ConfigIssue(source, "", str(exc))]) from None
    return loads(text, source)
