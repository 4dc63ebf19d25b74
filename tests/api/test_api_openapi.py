"""The OpenAPI document is generated from the route table the dispatcher serves, and
docs/api.md (the contract clients code against) names every path with its least role."""

from __future__ import annotations

import re
from pathlib import Path

from st2000r.supervisor.api.openapi import document
from st2000r.supervisor.api.routes import ROUTES

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_every_route_is_in_the_document_with_its_least_role_and_parameters():
    doc = document(ROUTES)
    assert doc["openapi"] == "3.1.0"
    ops = {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert set(ops) == {(r.method, r.path) for r in ROUTES}
    for route in ROUTES:
        op = ops[(route.method, route.path)]
        assert op["x-least-role"] == (route.least_role.value if route.least_role else None)
        assert {p["name"] for p in op.get("parameters", [])} == {p.name for p in route.params}
        assert ("requestBody" in op) == (route.body is not None)
        if route.least_role is not None:
            assert "401" in op["responses"] and "403" in op["responses"]
        else:
            assert op["security"] == []
    assert len({op["operationId"] for op in ops.values()}) == len(ops)


def test_every_reference_resolves():
    doc = document(ROUTES)
    text = repr(doc)
    for name in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert name in doc["components"]["schemas"], name


def test_docs_api_md_names_every_path():
    text = DOC.read_text(encoding="utf-8")
    for route in ROUTES:
        short = route.path.removeprefix("/api/v1")
        generic = re.sub(r"\{\w+\}", "{", short)
        written = {re.sub(r"\{\w+\}", "{", m) for m in re.findall(r"`(?:[A-Z]+ )?(/[^`? ]*)", text)}
        assert generic in written or short in text, f"docs/api.md does not describe {route.method} {route.path}"
