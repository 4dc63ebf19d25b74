"""The supervisor sections: [[plans]], [interlocks], [[operators]], [supervisor].

Each bad value is rejected with the exact key path and reason, all problems at once; a file
without the sections gets the documented defaults.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from st2000r.config import example_path
from st2000r.config.cli import main
from st2000r.config.errors import ConfigError
from st2000r.config.loader import (
    INTERLOCKS_SCHEMA,
    OPERATOR_SCHEMA,
    PLAN_SCHEMA,
    SUPERVISOR_SCHEMA,
    load,
    loads,
    parse_duration,
    parse_time,
)
from st2000r.config.model import (
    DEFAULT_PLANS,
    Interlocks,
    Operator,
    ReadingPlan,
    SupervisorSettings,
    Topology,
)

BASE = """
[[sites]]
name = "North"
address = "1 North Road"

[[sites.links]]
name = "bus"
kind = "serial"
device = "/dev/ttyUSB0"

[[sites.links.cdts]]
address = 1

[[sites.links.cdts.modules]]
module = 1
channels = [
  { channel = 1, kind = "water", pulse_constant = 10, serial = "101", household = "A-101" },
  { channel = 2, kind = "gas", pulse_constant = 10, serial = "102", household = "A-102" },
]

[[sites.links]]
name = "dtu"
kind = "gprs"
dtu_id = "13900000001"
auth = "none"
"""


def issues(extra: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        loads(BASE + extra, source="t.toml")
    assert all(i.file == "t.toml" for i in info.value.errors)
    return [(i.path, i.reason) for i in info.value.errors]


# ---- defaults and good values


def test_defaults_without_the_sections():
    topology = loads(BASE)
    assert topology.plans == DEFAULT_PLANS
    assert topology.plans[0] == ReadingPlan("daily-full", "full", (dt.time(2, 0),), None, None)
    assert topology.plans[1] == ReadingPlan("status", "status", (), 300, None)
    assert topology.interlocks == Interlocks(frozenset(), 10)
    assert topology.operators == ()
    assert topology.settings == SupervisorSettings(gprs_listen=None, retries=2, log_format="text", state_dir="var",
                                                   stale_after_s=None, command_timeout_s=60)


def test_topology_built_directly_keeps_working():
    topology = Topology(sites=(), source="x")
    assert topology.plans == DEFAULT_PLANS and topology.settings.retries == 2


def test_every_section_read_into_the_model():
    topology = loads(BASE + """
[[plans]]
name = "night"
kind = "full"
at = ["03:30", "02:00", 23:15:00]
links = ["bus"]

[[plans]]
name = "alarms"
kind = "status"
every = "1h30m"

[[plans]]
name = "fast"
kind = "status"
every = 60
at = ["12:00:30"]

[interlocks]
protected_households = ["A-101"]
max_closes_per_minute = 3

[[operators]]
name = "li.wei"
role = "operator"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"

[[operators]]
name = "modbus"
role = "engineer"

[supervisor]
gprs_listen = "tcp:port=9000:interface=0.0.0.0"
retries = 3
log_format = "json"
state_dir = "/var/lib/st2000r"
stale_after = "2d"
command_timeout = "2m"
""")
    assert topology.plans == (
        ReadingPlan("night", "full", (dt.time(2, 0), dt.time(3, 30), dt.time(23, 15)), None, ("bus",)),
        ReadingPlan("alarms", "status", (), 5400, None),
        ReadingPlan("fast", "status", (dt.time(12, 0, 30),), 60, None),
    )
    assert topology.plans[0].applies_to("bus") and not topology.plans[0].applies_to("dtu")
    assert topology.plans[0].describe() == "full at 02:00, 03:30, 23:15 on bus"
    assert topology.interlocks == Interlocks(frozenset({"A-101"}), 3)
    assert topology.operators == (
        Operator("li.wei", "operator", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"),
        Operator("modbus", "engineer", None),
    )
    assert topology.operator("modbus").role == "engineer"
    with pytest.raises(KeyError):
        topology.operator("nobody")
    assert topology.settings == SupervisorSettings(gprs_listen="tcp:port=9000:interface=0.0.0.0", retries=3,
                                                   log_format="json", state_dir="/var/lib/st2000r",
                                                   stale_after_s=172800, command_timeout_s=120)


def test_empty_plans_means_no_scheduled_polling():
    assert loads("plans = []\n" + BASE).plans == ()


@pytest.mark.parametrize("text, seconds", [
    (300, 300), ("300s", 300), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2d", 172800), ("1d2h3m4s", 93784),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == (seconds, None)


@pytest.mark.parametrize("text", ["", "5", "5x", "m5", "1m1h", "1.5h", " 5m", "5 m", "-5m"])
def test_parse_duration_rejects(text):
    value, reason = parse_duration(text)
    assert value is None and reason.startswith("malformed duration")


@pytest.mark.parametrize("text, expected", [
    ("02:00", dt.time(2, 0)), ("2:00", dt.time(2, 0)), ("23:59:59", dt.time(23, 59, 59)),
    (dt.time(1, 2, 3, 400), dt.time(1, 2, 3)),
])
def test_parse_time(text, expected):
    assert parse_time(text) == (expected, None)


# ---- plans


def test_bad_times():
    assert issues('[[plans]]\nname = "p"\nkind = "full"\nat = ["25:00", "02:60", "2am", 7, "02:00", "2:00"]\n') == [
        ("plans[0].at[0]", "invalid time '25:00': hours 0..23, minutes and seconds 0..59"),
        ("plans[0].at[1]", "invalid time '02:60': hours 0..23, minutes and seconds 0..59"),
        ("plans[0].at[2]", "malformed time '2am': write \"HH:MM\" or \"HH:MM:SS\", e.g. \"02:00\""),
        ("plans[0].at[3]", "wrong type: expected string \"HH:MM\", got integer 7"),
        ("plans[0].at[5]", "duplicate time 02:00:00 (already listed at plans[0].at[4])"),
    ]


def test_bad_durations():
    assert issues('[[plans]]\nname = "a"\nkind = "status"\nevery = "5 min"\n'
                  '[[plans]]\nname = "b"\nkind = "status"\nevery = 5\n'
                  '[[plans]]\nname = "c"\nkind = "status"\nevery = "8d"\n'
                  '[[plans]]\nname = "d"\nkind = "status"\nevery = 1.5\n') == [
        ("plans[0].every", "malformed duration '5 min': write a number of seconds or parts like \"90s\", \"5m\", "
                           "\"1h30m\", \"2d\" (units d, h, m, s, in that order)"),
        ("plans[1].every", "duration 5 (5 s) out of range 10..604800 s"),
        ("plans[2].every", "duration '8d' (691200 s) out of range 10..604800 s"),
        ("plans[3].every", "wrong type: expected string or integer, got float 1.5"),
    ]


def test_plan_needs_a_time_or_a_period():
    assert issues('[[plans]]\nname = "p"\nkind = "full"\n') == [
        ("plans[0]", "a plan needs 'at' (daily times), 'every' (a period), or both"),
    ]


def test_unknown_and_duplicate_links_in_a_plan():
    assert issues('[[plans]]\nname = "p"\nkind = "full"\nevery = "1h"\nlinks = ["bus", "Bus", "dtu", "bus"]\n') == [
        ("plans[0].links[3]", "duplicate link name 'bus' (already listed at plans[0].links[0])"),
    ]
    assert issues('[[plans]]\nname = "p"\nkind = "full"\nevery = "1h"\nlinks = ["bus", "Bus"]\n') == [
        ("plans[0].links[1]", "unknown link 'Bus' (links in this file: bus, dtu)"),
    ]
    assert issues('[[plans]]\nname = "p"\nkind = "full"\nevery = "1h"\nlinks = []\n') == [
        ("plans[0].links", "empty list: name at least one link, or leave 'links' out for every link"),
    ]
    assert issues('[[plans]]\nname = "p"\nkind = "full"\nevery = "1h"\nlinks = [1]\n') == [
        ("plans[0].links[0]", "wrong type: expected string (link name), got integer 1"),
    ]


def test_duplicate_plan_names_unknown_keys_kinds():
    assert issues('[[plans]]\nname = "p"\nkind = "full"\nevery = "1h"\n'
                  '[[plans]]\nname = "p"\nkind = "sweep"\nevery = "1h"\nperiod = 3\n') == [
        ("plans[1].period", "unknown key 'period' (allowed: name, kind, at, every, links)"),
        ("plans[1].kind", "value 'sweep' is not one of 'full', 'status'"),
        ("plans[1].name", "duplicate plan name 'p' (already used at plans[0].name)"),
    ]
    assert issues('[[plans]]\nkind = "full"\nevery = "1h"\nname = "bad name"\n') == [
        ("plans[0].name", "invalid name 'bad name': use letters, digits, '_', '.', '-' only"),
    ]


def test_plans_must_be_an_array_of_tables():
    with pytest.raises(ConfigError) as info:
        loads('plans = "daily"\n' + BASE, source="t.toml")
    assert [(i.path, i.reason) for i in info.value.errors] == [
        ("plans", "wrong type: expected array of tables ([[plans]]), got string 'daily'"),
    ]


# ---- interlocks


def test_interlocks_errors():
    assert issues('[interlocks]\nprotected_households = ["A-101", "Z-9", "A-101", 3, ""]\n'
                  'max_closes_per_minute = 1001\nmax_opens = 1\n') == [
        ("interlocks.max_opens", "unknown key 'max_opens' (allowed: protected_households, max_closes_per_minute)"),
        ("interlocks.max_closes_per_minute", "value 1001 out of range 0..1000"),
        ("interlocks.protected_households[2]", "duplicate household 'A-101' (already listed at "
                                               "interlocks.protected_households[0])"),
        ("interlocks.protected_households[3]", "wrong type: expected string (household), got integer 3"),
        ("interlocks.protected_households[4]", "must not be empty"),
    ]
    assert issues('[interlocks]\nprotected_households = ["A-101", "Z-9"]\n') == [
        ("interlocks.protected_households[1]", "unknown household 'Z-9' (no meter in the file bills to it)"),
    ]
    with pytest.raises(ConfigError) as info:
        loads("interlocks = 3\n" + BASE)
    assert [(i.path, i.reason) for i in info.value.errors] == [
        ("interlocks", "wrong type: expected table, got integer 3")]


def test_unknown_household_not_reported_when_the_sites_are_broken():
    text = BASE.replace('serial = "102"', 'serial = "x"') + '[interlocks]\nprotected_households = ["A-102"]\n'
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert [i.path for i in info.value.errors] == ["sites[0].links[0].cdts[0].modules[0].channels[1].serial"]


# ---- operators


def test_operators_errors():
    assert issues('[[operators]]\nname = "li"\nrole = "boss"\n'
                  '[[operators]]\nname = "li"\nrole = "viewer"\n'
                  '[[operators]]\nname = "wang"\nrole = "admin"\npassword_hash = "secret"\n'
                  '[[operators]]\nrole = "admin"\nemail = "x"\n') == [
        ("operators[0].role", "value 'boss' is not one of 'viewer', 'operator', 'engineer', 'admin'"),
        ("operators[1].name", "duplicate operator name 'li' (already used at operators[0].name)"),
        ("operators[2].password_hash", "not an argon2 hash: expected a string starting with '$argon2' "
                                       "(e.g. from argon2-cffi), no spaces"),
        ("operators[3].email", "unknown key 'email' (allowed: name, role, password_hash)"),
        ("operators[3].name", "missing required key 'name'"),
    ]


# ---- supervisor


def test_supervisor_errors():
    assert issues('[supervisor]\ngprs_listen = "9000"\nretries = 11\nlog_format = "xml"\nstate_dir = "my dir"\n'
                  'stale_after = "10s"\ncommand_timeout = "2h"\nport = 1\n') == [
        ("supervisor.port", "unknown key 'port' (allowed: gprs_listen, retries, log_format, state_dir, "
                            "stale_after, command_timeout, read_on_connect, full_read_after_outage)"),
        ("supervisor.gprs_listen", "value '9000' is not a server endpoint string: write TYPE:ARGS without spaces, "
                                   "e.g. \"tcp:9000\" or \"tcp:port=9000:interface=0.0.0.0\""),
        ("supervisor.retries", "value 11 out of range 0..10"),
        ("supervisor.log_format", "value 'xml' is not one of 'text', 'json'"),
        ("supervisor.state_dir", "value 'my dir' must not contain whitespace or control characters"),
        ("supervisor.stale_after", "duration '10s' (10 s) out of range 60..2592000 s"),
        ("supervisor.command_timeout", "duration '2h' (7200 s) out of range 5..3600 s"),
    ]
    assert issues('[supervisor]\ngprs_listen = "tcp:port=70000"\n') == [
        ("supervisor.gprs_listen", "value 'tcp:port=70000': port '70000' is not a TCP port 0..65535"),
    ]


@pytest.mark.parametrize("endpoint", ["tcp:9000", "tcp:0", "tcp6:port=9000:interface=\\\\:\\\\:", "unix:/run/dtu"])
def test_supervisor_endpoints_accepted(endpoint):
    assert loads(BASE + f'[supervisor]\ngprs_listen = "{endpoint}"\n').settings.gprs_listen == endpoint.replace(
        "\\\\", "\\")


def test_all_sections_report_together():
    found = issues('[[plans]]\nname = "p"\nkind = "full"\nat = ["24:00"]\n'
                   '[interlocks]\nmax_closes_per_minute = "5"\n'
                   '[[operators]]\nname = "a"\nrole = "root"\n'
                   '[supervisor]\nlog_format = "XML"\n')
    assert [path for path, _ in found] == ["plans[0].at[0]", "interlocks.max_closes_per_minute",
                                           "operators[0].role", "supervisor.log_format"]


# ---- the CLI and the examples


def test_config_check_prints_the_plans(capsys, tmp_path):
    assert main(["check", str(example_path("small.toml"))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  plans      daily-full (full at 02:00); status (status every 300 s)" in lines
    path = tmp_path / "p.toml"
    path.write_text(BASE + '[[plans]]\nname = "n"\nkind = "full"\nat = ["01:00"]\nlinks = ["dtu"]\n', encoding="utf-8")
    assert main(["check", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"plans": [' in out and '"at": [\n        "01:00:00"\n      ]' in out


@pytest.mark.parametrize("name", ["small.toml", "community.toml", "city.toml"])
def test_examples_still_load(name):
    assert load(example_path(name)).plans


# ---- fuzz: any values in the supervisor sections give a Topology or a ConfigError, nothing else

_SCALARS = st.one_of(
    st.integers(min_value=-10**12, max_value=10**12),
    st.sampled_from(["", "5m", "1h30m", "02:00", "25:00", "tcp:9000", "tcp:port=x", "full", "status", "bus", "dtu",
                     "A-101", "viewer", "admin", "$argon2id$x", "json", "9" * 30, "1d" * 5, "\x00", "p"]),
    st.text(max_size=12),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=4))


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _table(schema, draw_values) -> str:
    return "".join(f"{key} = {_toml(value)}\n" for key, value in draw_values.items() if key in schema or key == "x")


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([*PLAN_SCHEMA, "x"]), _VALUES),
       st.dictionaries(st.sampled_from([*INTERLOCKS_SCHEMA, "x"]), _VALUES),
       st.dictionaries(st.sampled_from([*OPERATOR_SCHEMA, "x"]), _VALUES),
       st.dictionaries(st.sampled_from([*SUPERVISOR_SCHEMA, "x"]), _VALUES))
def test_fuzz_supervisor_sections(plan, interlocks, operator, supervisor):
    text = (BASE + "[[plans]]\n" + _table(PLAN_SCHEMA, plan) + "[interlocks]\n" + _table(INTERLOCKS_SCHEMA, interlocks)
            + "[[operators]]\n" + _table(OPERATOR_SCHEMA, operator) + "[supervisor]\n"
            + _table(SUPERVISOR_SCHEMA, supervisor))
    try:
        topology = loads(text)
    except ConfigError as exc:
        assert all("\n" not in str(issue) for issue in exc.errors)
    else:
        assert all(p.every_s is None or p.every_s >= 10 for p in topology.plans)
        assert topology.interlocks.max_closes_per_minute >= 0
