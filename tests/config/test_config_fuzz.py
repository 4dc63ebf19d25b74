"""Fuzzing ``loads``: random TOML documents and mutations of the examples.

Whatever the text, ``loads`` returns a ``Topology`` that keeps the model's invariants or
raises ``ConfigError`` with one single-line issue per error -- never anything else.
"""

from __future__ import annotations

import copy
import math
import re
import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from st2000r.config import example_path
from st2000r.config.errors import ConfigError
from st2000r.config.loader import SCHEMAS, loads
from st2000r.config.model import Topology

EXAMPLES = {name: example_path(name).read_text(encoding="utf-8") for name in ("small.toml", "community.toml", "city.toml")}
# small and city are cheap; community (12,288 meters) is drawn less often to keep the run short
EXAMPLE_NAMES = ["small.toml", "small.toml", "city.toml", "city.toml", "community.toml"]
KEYS = sorted({key for schema in SCHEMAS.values() for key in schema} | {"sites", "links", "templates", "flat"})

# ---------------------------------------------------------------- a tiny TOML writer (inline tables only)


def _string(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_string(k)} = {_value(v)}" for k, v in value.items()) + "}"
    return value.isoformat()  # dates and times


def dumps(document: dict) -> str:
    return "".join(f"{_string(k)} = {_value(v)}\n" for k, v in document.items())


# ---------------------------------------------------------------- the property


def check(text: str) -> None:
    try:
        topology = loads(text, source="fuzz.toml")
    except ConfigError as exc:
        assert exc.errors
        assert all(issue.file == "fuzz.toml" and issue.reason for issue in exc.errors)
        assert len(str(exc).splitlines()) == len(exc.errors)
        return
    assert isinstance(topology, Topology)
    names = [link.name for link in topology.links()]
    assert len(names) == len(set(names))
    for link in topology.links():
        addresses = [cdt.address for cdt in link.cdts]
        assert addresses == sorted(set(addresses)) and len(addresses) <= 256
        assert all(1 <= a <= 99_999_999 for a in addresses)
        serials = [meter.serial for *_, meter in link.meters()]
        assert len(serials) == len(set(serials))
        assert all(len(s) == 14 and s.isascii() and s.isdigit() for s in serials)
        for cdt in link.cdts:
            numbers = [m.number for m in cdt.modules]
            assert numbers == sorted(set(numbers)) and all(1 <= n <= 32 for n in numbers)
            for module in cdt.modules:
                channels = [c.number for c in module.channels]
                assert channels == sorted(set(channels)) and all(1 <= n <= 3 for n in channels)
                assert all(c.meter.pulse_constant >= 1 and c.meter.initial >= 0 for c in module.channels)
        behind: dict[str, int] = {}
        for cdt in link.cdts:
            if cdt.repeater is not None:
                behind[cdt.repeater] = behind.get(cdt.repeater, 0) + 1
        assert all(n <= 32 for n in behind.values())
        parents = {r.name: r.parent for r in link.repeaters}
        assert all(p is None or parents[p] is None for p in parents.values())


# ---------------------------------------------------------------- random documents

scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-3, max_value=300),
    st.text(max_size=12),
    st.sampled_from(["serial", "tcp", "gprs", "gsm", "water", "gas", "electricity", "flat", "1-4", "1-300",
                     "{cdt}{module}{channel}", "{cdt:x}", "R1", "901F", "E", "/dev/ttyS0", "ddp"]),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=4))
def test_random_documents(document):
    check(dumps(document))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text(text):
    check(text)


# ---------------------------------------------------------------- mutations of the examples


def _paths(node, prefix=()):
    """Every (container, key) pair in a parsed document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield node, k
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield node, i
            yield from _paths(v, prefix + (i,))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLE_NAMES), st.data())
def test_structured_mutations_of_examples(name, data):
    document = copy.deepcopy(tomllib.loads(EXAMPLES[name]))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        places = list(_paths(document))
        if not places:
            break
        container, key = data.draw(st.sampled_from(places), label="place")
        action = data.draw(st.sampled_from(["replace", "delete", "add", "duplicate"]), label="action")
        if action == "replace":
            container[key] = data.draw(values, label="value")
        elif action == "delete":
            del container[key]
        elif action == "add" and isinstance(container, dict):
            container[data.draw(keys, label="key")] = data.draw(values, label="value")
        elif action == "duplicate" and isinstance(container, list):
            container.append(copy.deepcopy(container[key]))
    check(dumps(document))


NUMBER = re.compile(r"(?<![\w.])-?\d+(?![\w.])")
STRING = re.compile(r'"[^"\n]*"')


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLE_NAMES), st.data())
def test_text_mutations_of_examples(name, data):
    text = EXAMPLES[name]
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        lines = text.splitlines(keepends=True)
        action = data.draw(st.sampled_from(["number", "string", "drop", "dup", "insert", "byte"]), label="action")
        if action in ("number", "string"):
            matches = list((NUMBER if action == "number" else STRING).finditer(text))
            if not matches:
                continue
            m = data.draw(st.sampled_from(matches), label="token")
            if action == "number":
                new = str(data.draw(st.integers(-(2**40), 2**40) | st.integers(-2, 300), label="number"))
            else:
                new = _string(data.draw(st.text(max_size=10) | st.sampled_from(
                    ["", "1-300", "{cdt}", "{module}{channel}", "R9", "tcp", "gas", "1-4,2"]), label="string"))
            text = text[: m.start()] + new + text[m.end():]
        elif action == "drop":
            del lines[data.draw(st.integers(0, len(lines) - 1), label="line")]
            text = "".join(lines)
        elif action == "dup":
            i = data.draw(st.integers(0, len(lines) - 1), label="line")
            lines.insert(i, lines[i])
            text = "".join(lines)
        elif action == "insert":
            i = data.draw(st.integers(0, len(lines)), label="line")
            key = data.draw(st.sampled_from(KEYS), label="key")
            lines.insert(i, f"{key} = {_value(data.draw(values, label='value'))}\n")
            text = "".join(lines)
        else:
            i = data.draw(st.integers(0, len(text)), label="at")
            text = text[:i] + data.draw(st.text(max_size=3), label="chars") + text[i:]
    check(text)
