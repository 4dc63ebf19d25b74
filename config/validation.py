"""The validation run: its context (issues found, what sections produced) and the
table-checking machinery every section uses.

``check_table`` checks one TOML table against its schema and records an issue per problem
with its key path; nothing raises, so one run reports every problem of a file.  Issues are
kept up to ``MAX_ISSUES``; beyond that they are only counted (a file of 300,000 unknown
keys must not print 300,000 lines).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from st2000r.config.errors import ConfigError, ConfigIssue
from st2000r.config.model import (
    DEFAULT_PLANS,
    ApiSettings,
    HistorianSettings,
    Interlocks,
    MeterKind,
    ModbusSettings,
    Operator,
    ReadingPlan,
    Site,
    SupervisorSettings,
)
from st2000r.config.schema import REQUIRED, Schema
from st2000r.config.values import MAX_ISSUES, key_path, show, type_name

__all__ = ["Context", "check_table", "indexed", "string_list", "unique"]


class Context:
    """State of one validation run: the issues found and what sections produced."""

    __slots__ = ("file", "issues", "omitted", "meters", "templates", "sites", "link_names", "dtu_ids", "devices", "endpoints",
                 "plans", "interlocks", "operators", "settings", "modbus", "historian", "api")

    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[ConfigIssue] = []
        #: issues found beyond ``MAX_ISSUES``: counted, not kept (bounded memory and output)
        self.omitted = 0
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
        self.settings = SupervisorSettings(gprs_listen=None, retries=2, log_format="text", state_dir="var")
        self.modbus: ModbusSettings | None = None
        self.historian = HistorianSettings()
        self.api: ApiSettings | None = None

    def error(self, path: str, reason: str) -> None:
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(ConfigIssue(self.file, path, reason))
        else:
            self.omitted += 1

    def failure(self) -> ConfigError:
        """The ``ConfigError`` for the issues found: at most ``MAX_ISSUES`` of them, then one
        line saying how many more there were."""
        issues = list(self.issues)
        if self.omitted:
            issues.append(ConfigIssue(self.file, "", f"... and {self.omitted} more problems "
                                                     f"(only the first {MAX_ISSUES} are listed)"))
        return ConfigError(issues)


def check_table(ctx: Context, value: Any, path: str, schema: Schema, what: str = "") -> dict[str, Any] | None:
    """Check a TOML table against ``schema``.

    Returns the table's values with defaults filled in; a key whose value is missing,
    mistyped or out of range is left out (the issue is recorded).  Returns None if
    ``value`` is not a table at all.
    """
    if type(value) is not dict:
        ctx.error(path, f"wrong type: expected table, got {type_name(value)}{show(value)}")
        return None
    for name in value:
        if name not in schema:
            allowed = ", ".join(schema)
            ctx.error(key_path(path, name), f"unknown key {name!r}{what} (allowed: {allowed})")
    out: dict[str, Any] = {}
    for name, key in schema.items():
        if name not in value:
            if key.default is REQUIRED:
                ctx.error(key_path(path, name), f"missing required key {name!r}{what}")
            else:
                out[name] = key.default
            continue
        item = value[name]
        tname = type_name(item)
        if tname not in key.types:
            expected = " or ".join(key.types)
            hint = f" ({key.hint})" if key.hint else ""
            ctx.error(key_path(path, name), f"wrong type: expected {expected}, got {tname}{show(item)}{hint}")
            continue
        if key.check is not None:
            reason = key.check(item)
            if reason is not None:
                ctx.error(key_path(path, name), reason)
                continue
        out[name] = item
    return out


def indexed(value: list[Any], path: str) -> Iterable[tuple[int, str, Any]]:
    """Yield ``(index, path, item)`` for each element; non-tables are reported by ``check_table``."""
    for i, item in enumerate(value):
        yield i, f"{path}[{i}]", item


def string_list(ctx: Context, value: list[Any], path: str, what: str,
                 check: Callable[[str], str | None] | None = None) -> list[str] | None:
    """The unique strings of an array, or None after recording every bad or repeated item."""
    seen: dict[str, str] = {}
    ok = True
    for _, ipath, item in indexed(value, path):
        if type(item) is not str:
            ctx.error(ipath, f"wrong type: expected string ({what}), got {type_name(item)}{show(item)}")
            ok = False
            continue
        reason = check(item) if check is not None else None
        if reason is not None:
            ctx.error(ipath, reason)
            ok = False
        elif item in seen:
            ctx.error(ipath, f"duplicate {what}{show(item)} (already listed at {seen[item]})")
            ok = False
        else:
            seen[item] = ipath
    return list(seen) if ok else None


def unique(ctx: Context, seen: dict[Any, str], value: Any, path: str, what: str) -> bool:
    """Record ``value`` as used at ``path``; False (and an issue) if it was used before."""
    if value in seen:
        ctx.error(path, f"duplicate {what} {value!r} (already used at {seen[value]})" if isinstance(value, str)
                  else f"duplicate {what} (already used at {seen[value]})")
        return False
    seen[value] = path
    return True


