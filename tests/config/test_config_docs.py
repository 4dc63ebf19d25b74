"""docs/configuration.md documents every schema key with its default, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from st2000r.config.loader import REQUIRED, SCHEMAS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _toml(value) -> str:
    if value is REQUIRED:
        return "required"
    if value is None:
        return "—"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value == []:
        return "`[]`"
    if value == {}:
        return "`{}`"
    return f"`{value}`"


def _documented(name: str) -> dict[str, str]:
    """key -> default column of the table after ``<!-- schema: NAME -->``."""
    text = DOCS.read_text(encoding="utf-8")
    marker = f"<!-- schema: {name} -->\n"
    assert marker in text, f"no table for {name} in {DOCS}"
    rows = {}
    for line in text.split(marker, 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        match = re.fullmatch(r"`([a-z_]+)`", cells[0])
        assert match, line
        rows[match.group(1)] = cells[2]
    return rows


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_key_and_default_is_documented(name):
    expected = {key: _toml(spec.default) for key, spec in SCHEMAS[name].items()}
    assert _documented(name) == expected
