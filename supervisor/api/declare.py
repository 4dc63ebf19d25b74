"""Route declarations and the checks of what a client sends, from JSON Schema.

A :class:`Route` says everything about one operation: method, path template, least role,
query and path parameters (:class:`Param`), the request body's JSON Schema and the
response schemas.  The dispatcher (``resource``) matches and checks requests with it; the
OpenAPI document (``openapi``) is generated from it; so the document cannot drift from
what is served.

Schemas are JSON Schema 2020-12 (as OpenAPI 3.1 uses), restricted to the keywords
:func:`check` knows: ``type`` (a name or a list), ``enum``, ``const``, ``minimum``,
``maximum``, ``minLength``, ``maxLength``, ``pattern``, ``format: date-time``,
``properties``, ``required``, ``additionalProperties: false``, ``items``, ``maxItems``, and
``oneOf`` with a ``discriminator`` (the branch is chosen by that property's ``const``).
Every failure raises :class:`~st2000r.supervisor.api.errors.ApiError` 400 naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from st2000r.supervisor.api.errors import invalid
from st2000r.supervisor.authz import Role

__all__ = ["Param", "Route", "check", "parse_param", "parse_time", "MAX_TEXT"]

#: longest free text accepted anywhere (reasons, notes)
MAX_TEXT = 400

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_PATTERNS: dict[str, re.Pattern[str]] = {}


@dataclass(frozen=True, slots=True)
class Param:
    """A query (``where="query"``) or path parameter.  ``schema``: JSON Schema of its value
    (``string``, ``integer`` or ``boolean``; query text is converted before checking)."""

    name: str
    schema: Mapping[str, Any]
    doc: str = ""
    required: bool = False
    where: str = "query"


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """One operation.  ``least_role`` None: no login needed.  ``handler(call)`` returns the
    JSON body (or ``(status, body)``), possibly through a Deferred.  ``responses``: status ->
    schema of the body (None: no body).  ``stream``: the handler writes the response itself."""

    method: str
    path: str
    handler: Callable[..., Any]
    summary: str
    least_role: Role | None
    tag: str
    params: tuple[Param, ...] = ()
    body: Mapping[str, Any] | None = None
    responses: Mapping[int, Mapping[str, Any] | None] = field(default_factory=dict)
    description: str = ""
    stream: bool = False
    operation_id: str = ""

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.strip("/").split("/"))

    def path_params(self) -> dict[str, Param]:
        return {p.name: p for p in self.params if p.where == "path"}

    def query_params(self) -> dict[str, Param]:
        return {p.name: p for p in self.params if p.where == "query"}


def _type_ok(value: Any, types: Any) -> bool:
    names = types if isinstance(types, list) else [types]
    return any(_TYPES[name](value) for name in names)


def _describe(types: Any) -> str:
    names = types if isinstance(types, list) else [types]
    return " or ".join(names)


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](value):
            return name
    return type(value).__name__


def check(value: Any, schema: Mapping[str, Any], where: str) -> None:
    """Check ``value`` against ``schema``; raise ApiError 400 naming ``where`` (a dotted key
    path) and the reason."""
    if "oneOf" in schema:
        _check_one_of(value, schema, where)
        return
    types = schema.get("type")
    if types is not None and not _type_ok(value, types):
        raise invalid(where, f"expected {_describe(types)}, got {_json_type(value)}")
    if "const" in schema and value != schema["const"]:
        raise invalid(where, f"must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise invalid(where, f"{_show(value)} is not one of {', '.join(repr(v) for v in schema['enum'])}")
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(where, f"{value} is not a finite number")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise invalid(where, f"{value} out of range {lo if lo is not None else ''}..{hi if hi is not None else ''}")
    if isinstance(value, str):
        _check_text(value, schema, where)
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise invalid(where, f"at most {schema['maxItems']} items, got {len(value)}")
        for i, item in enumerate(value):
            check(item, schema.get("items", {}), f"{where}[{i}]")
    if isinstance(value, dict):
        _check_object(value, schema, where)


def _check_text(value: str, schema: Mapping[str, Any], where: str) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        raise invalid(where, "must not be empty" if schema["minLength"] == 1 else
                      f"at least {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise invalid(where, f"at most {schema['maxLength']} characters, got {len(value)}")
    if "pattern" in schema:
        pattern = _PATTERNS.get(schema["pattern"])
        if pattern is None:
            pattern = _PATTERNS[schema["pattern"]] = re.compile(schema["pattern"])
        if not pattern.search(value):
            raise invalid(where, f"{_show(value)} does not match {schema['pattern']}")
    if schema.get("format") == "date-time":
        parse_time(value, where)


def _check_object(value: dict, schema: Mapping[str, Any], where: str) -> None:
    props = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            raise invalid(_join(where, name), "missing")
    if schema.get("additionalProperties") is False:
        for name in value:
            if name not in props:
                allowed = ", ".join(props) or "none"
                raise invalid(_join(where, name), f"unknown key (allowed: {allowed})")
    for name, sub in props.items():
        if name in value:
            check(value[name], sub, _join(where, name))


def _check_one_of(value: Any, schema: Mapping[str, Any], where: str) -> None:
    key = schema["discriminator"]["propertyName"]
    if not isinstance(value, dict):
        raise invalid(where or None, f"expected object, got {_json_type(value)}")
    kinds = {branch["properties"][key]["const"]: branch for branch in schema["oneOf"]}
    kind = value.get(key)
    if key not in value:
        raise invalid(_join(where, key), f"missing (one of {', '.join(map(repr, kinds))})")
    if not isinstance(kind, str) or kind not in kinds:
        raise invalid(_join(where, key), f"{_show(kind)} is not one of {', '.join(map(repr, kinds))}")
    check(value, kinds[kind], where)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_INT_RE = re.compile(r"-?[0-9]{1,18}")


def parse_param(param: Param, text: str) -> Any:
    """A parameter's value from its text, checked against its schema."""
    kind = param.schema.get("type", "string")
    if kind == "integer":
        if not _INT_RE.fullmatch(text):
            raise invalid(param.name, f"expected an integer, got {_show(text)}")
        value: Any = int(text)
    elif kind == "boolean":
        if text not in ("true", "false"):
            raise invalid(param.name, f"expected true or false, got {_show(text)}")
        value = text == "true"
    else:
        value = text
    check(value, param.schema, param.name)
    return value


def parse_time(text: str, where: str) -> datetime:
    """An ISO 8601 time with a UTC offset (``Z`` allowed)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise invalid(where, f"{_show(text)} is not an ISO 8601 time, e.g. 2026-11-30T02:00:00+00:00") from None
    if value.tzinfo is None:
        raise invalid(where, f"{_show(text)} has no UTC offset (add +00:00 or Z)")
    return value
