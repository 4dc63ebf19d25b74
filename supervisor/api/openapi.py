"""The OpenAPI 3.1 document, generated from the route table (never written by hand)."""

from __future__ import annotations

from typing import Any

from st2000r.supervisor.api.declare import Route
from st2000r.supervisor.api.shapes import SCHEMAS, ref

__all__ = ["document"]

_REASONS = {200: "OK", 202: "Accepted", 204: "No content", 400: "Bad input (the error names the field)",
            401: "No, unknown or expired token", 403: "The caller's role may not do this", 404: "Not found",
            405: "Method not allowed", 409: "Cannot be done now", 413: "Body too large",
            429: "Too many failed logins", 503: "Unavailable now"}


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.operation_id or _op_id(route),
        "summary": route.summary,
        "tags": [route.tag],
        "x-least-role": route.least_role.value if route.least_role is not None else None,
    }
    if route.description:
        op["description"] = route.description
    if route.least_role is None:
        op["security"] = []
    params = [{"name": p.name, "in": p.where, "required": p.required or p.where == "path",
               "description": p.doc, "schema": dict(p.schema)} for p in route.params]
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
    responses: dict[str, Any] = {}
    for status, schema in route.responses.items():
        if route.stream:
            responses[str(status)] = {"description": "text/event-stream",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}}
        elif schema is None:
            responses[str(status)] = {"description": _REASONS.get(status, "")}
        else:
            responses[str(status)] = {"description": _REASONS.get(status, ""),
                                      "content": {"application/json": {"schema": schema}}}
    errors = [400, 404, 405, 413]
    if route.least_role is not None:
        errors += [401, 403]
    if route.path.endswith("/login"):
        errors += [401, 429]
    if route.stream:
        errors.append(503)
    if route.path.endswith("/history"):
        errors.append(503)
    for status in errors:
        responses.setdefault(str(status), {"description": _REASONS[status],
                                           "content": {"application/json": {"schema": ref("Error")}}})
    op["responses"] = responses
    return op


def _op_id(route: Route) -> str:
    parts = [p for p in route.segments[2:] if not p.startswith("{")] or ["root"]
    suffix = "_one" if route.segments[-1].startswith("{") else ""
    return f"{route.method.lower()}_{'_'.join(parts).replace('.', '_')}{suffix}"


def document(routes: tuple[Route, ...]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "ST2000R supervisor API", "version": "1",
                 "description": "Meters, links, CDTs, alarms, commands and events of an ST2000R supervisor. "
                                "Roles: viewer < operator < engineer < admin (x-least-role per operation)."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
